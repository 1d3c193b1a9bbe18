#!/usr/bin/env bash
# `make soak` (issue 22): runs the soak (tests/src/bin/soak) on the release binaries in
# BIN_DIR for SOAK_MINUTES (default 30) and puts its section in BENCHMARKS.md, replacing the
# previous "Soak" section, whatever the verdict: a failed soak's table is the evidence. Exits
# with the soak's status. Not part of CI: it takes half an hour and loads the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN_DIR=${1:-target/release}
section=$(mktemp)
status=0
TOLLGATE_BIN_DIR="$BIN_DIR" "$BIN_DIR/soak" > "$section" || status=$?
if [ -s "$section" ]; then
  out=$(mktemp)
  # Everything but the old section, then the new one at the end.
  awk '/^## Soak/{skip=1; next} /^## /{skip=0} !skip' BENCHMARKS.md > "$out"
  { echo; cat "$section"; } >> "$out"
  # No blank lines piling up where the old section was cut.
  cat -s "$out" > BENCHMARKS.md
  rm -f "$out"
  echo "wrote the Soak section of BENCHMARKS.md" >&2
fi
rm -f "$section"
exit "$status"
