#!/usr/bin/env bash
# Builds fuzz/'s targets (cargo fuzz, on the stable toolchain: no sanitizer, since
# AddressSanitizer needs nightly's -Zsanitizer) and runs each for FUZZ_SECONDS (default 30),
# one after the other: `make fuzz-smoke`. `scripts/fuzz.sh TARGET…` runs only those.
#
# Each run starts from the committed seed corpus (fuzz/corpus/TARGET) and writes what it
# finds to a scratch corpus, never into the checkout; a crash stops the script, its input
# kept under $FUZZ_WORK/artifacts/TARGET/ to turn into a regression test. At the end a table
# gives each target's executions, coverage (libFuzzer's cov and ft) and CPU seconds.
#
# FUZZ_TARGET_DIR: where cargo fuzz builds (default fuzz/target, apart from the main
# workspace's target/: the instrumented builds would otherwise evict its artifacts).
# FUZZ_WORK: scratch corpora, logs and crashes (default a fresh temporary directory).
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO=${CARGO:-cargo}
FUZZ_SECONDS=${FUZZ_SECONDS:-30}
FUZZ_TARGET_DIR=${FUZZ_TARGET_DIR:-$PWD/fuzz/target}
FUZZ_WORK=${FUZZ_WORK:-$(mktemp -d -t tollgate-fuzz.XXXXXX)}
# FUZZ_PROFILE: release (default; many more executions a second, for long runs) or dev
# (`make fuzz-smoke`: unoptimised, with overflow checks, and a cold build a fraction as long,
# which is what lets a clean CI machine afford it).
FUZZ_PROFILE=${FUZZ_PROFILE:-release}
case "$FUZZ_PROFILE" in
  release) BUILD_FLAGS=(--release --codegen-units 16); PROFILE_DIR=release ;;
  dev) BUILD_FLAGS=(--dev); PROFILE_DIR=debug ;;
  *) echo "fuzz: FUZZ_PROFILE is release or dev, not $FUZZ_PROFILE" >&2; exit 2 ;;
esac
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
ALL_TARGETS=(routes_yaml ratelimit_dropin jwt_verify jwks check_request ratelimit_request grpc_framing)
if [ $# -gt 0 ]; then TARGETS=("$@"); else TARGETS=("${ALL_TARGETS[@]}"); fi
TIMEFORMAT='%U %S'

if ! "$CARGO" fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz" >&2
  "$CARGO" install --locked cargo-fuzz
fi

started=$(date +%s)
# In release, 16 codegen units instead of cargo fuzz's 1: a few minutes less to build on a
# small machine, for somewhat fewer executions a second.
(cd fuzz && "$CARGO" fuzz build -s none "${BUILD_FLAGS[@]}" --target-dir "$FUZZ_TARGET_DIR")
built=$(date +%s)
echo "fuzz: built in $((built - started)) s" >&2

mkdir -p "$FUZZ_WORK"
summary="$FUZZ_WORK/summary.md"
printf '| target | seconds | executions | exec/s | cov | ft | corpus | CPU s |\n|---|---|---|---|---|---|---|---|\n' > "$summary"
for target in "${TARGETS[@]}"; do
  corpus="$FUZZ_WORK/corpus/$target"
  artifacts="$FUZZ_WORK/artifacts/$target/"
  log="$FUZZ_WORK/$target.log"
  mkdir -p "$corpus" "$artifacts"
  echo "fuzz: $target for ${FUZZ_SECONDS} s" >&2
  status=0
  # New inputs go to the first corpus directory (scratch); the seeds are only read.
  { time "$FUZZ_TARGET_DIR/$TRIPLE/$PROFILE_DIR/$target" "$corpus" "fuzz/corpus/$target" \
      -max_total_time="$FUZZ_SECONDS" -print_final_stats=1 -artifact_prefix="$artifacts" \
      -rss_limit_mb=2048 -timeout=20 >"$log" 2>&1; } 2>"$FUZZ_WORK/$target.time" || status=$?
  if [ "$status" -ne 0 ]; then
    echo "fuzz: $target failed (exit $status); its input is in $artifacts:" >&2
    grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" >&2 || tail -30 "$log" >&2
    exit 1
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  last=$(grep -E '^#[0-9]+' "$log" | tail -1)
  cov=$(sed -n 's/.*cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.*ft: \([0-9]*\).*/\1/p' <<<"$last")
  units=$(sed -n 's/.*corp: \([0-9]*\).*/\1/p' <<<"$last")
  cpu=$(awk '{printf "%.0f", $1 + $2}' "$FUZZ_WORK/$target.time")
  printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' \
    "$target" "$FUZZ_SECONDS" "$execs" "$rate" "$cov" "$ft" "$units" "$cpu" >> "$summary"
done
cat "$summary"
echo "fuzz: done in $(($(date +%s) - started)) s (build $((built - started)) s); logs and corpora in $FUZZ_WORK" >&2
