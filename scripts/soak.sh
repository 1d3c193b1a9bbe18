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
  # Everything but the old section (and the blank lines that ended it, when it was last),
  # then the new one at the end, after one blank line.
  awk '/^## Soak/{skip=1; next} /^## /{skip=0} !skip' BENCHMARKS.md \
    | sed -e ':a' -e '/^\n*$/{$d;N;ba' -e '}' > "$out"
  { echo; cat "$section"; } >> "$out"
  mv "$out" BENCHMARKS.md
  echo "wrote the Soak section of BENCHMARKS.md" >&2
fi
rm -f "$section"
exit "$status"
