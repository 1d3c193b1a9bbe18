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
# FUZZ_CPU_SECONDS: when set, each target runs until its process has used that many CPU
# seconds (user + system) instead of FUZZ_SECONDS of wall time, so a long run at low priority
# beside other work still gets its full budget (issue 22 asks 1,800 per target).
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO=${CARGO:-cargo}
FUZZ_SECONDS=${FUZZ_SECONDS:-30}
FUZZ_CPU_SECONDS=${FUZZ_CPU_SECONDS:-}
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

# Runs a fuzz target until it has used FUZZ_CPU_SECONDS of CPU, then interrupts it (libFuzzer
# prints its final stats on SIGINT and exits 72), writing the CPU used to $FUZZ_WORK/$target.time
# as `time` would (user, system) and the wall seconds to $FUZZ_WORK/$target.wall.
run_on_cpu_budget() {
  local ticks pid used wall_start
  ticks=$(getconf CLK_TCK)
  wall_start=$(date +%s)
  "$@" &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    # Fields 14 and 15 of /proc/PID/stat: user and system time in clock ticks.
    used=$(awk -v t="$ticks" '{printf "%d", ($14 + $15) / t}' "/proc/$pid/stat" 2>/dev/null || echo 0)
    if [ "$used" -ge "$FUZZ_CPU_SECONDS" ]; then
      awk -v t="$ticks" '{printf "%.2f %.2f\n", $14 / t, $15 / t}' "/proc/$pid/stat" \
        >"$FUZZ_WORK/$target.time" 2>/dev/null || true
      kill -INT "$pid"
      break
    fi
    sleep 5
  done
  local status=0
  wait "$pid" || status=$?
  echo $(($(date +%s) - wall_start)) >"$FUZZ_WORK/$target.wall"
  return "$status"
}

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
  echo "fuzz: $target for ${FUZZ_CPU_SECONDS:-$FUZZ_SECONDS} ${FUZZ_CPU_SECONDS:+CPU }s" >&2
  status=0
  # New inputs go to the first corpus directory (scratch); the seeds are only read.
  binary="$FUZZ_TARGET_DIR/$TRIPLE/$PROFILE_DIR/$target"
  flags=(-print_final_stats=1 -artifact_prefix="$artifacts" -rss_limit_mb=2048 -timeout=20)
  if [ -n "$FUZZ_CPU_SECONDS" ]; then
    run_on_cpu_budget "$binary" "$corpus" "fuzz/corpus/$target" "${flags[@]}" \
      >"$log" 2>&1 || status=$?
    # The budget's end is libFuzzer's interrupt (exit 72), after it printed its final stats.
    [ "$status" -eq 72 ] && status=0
  else
    { time "$binary" "$corpus" "fuzz/corpus/$target" -max_total_time="$FUZZ_SECONDS" \
        "${flags[@]}" >"$log" 2>&1; } 2>"$FUZZ_WORK/$target.time" || status=$?
  fi
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
  seconds=$FUZZ_SECONDS
  [ -n "$FUZZ_CPU_SECONDS" ] && seconds=$(cat "$FUZZ_WORK/$target.wall")
  printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' \
    "$target" "$seconds" "$execs" "$rate" "$cov" "$ft" "$units" "$cpu" >> "$summary"
done
cat "$summary"
echo "fuzz: done in $(($(date +%s) - started)) s (build $((built - started)) s); logs and corpora in $FUZZ_WORK" >&2
