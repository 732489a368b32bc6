#!/usr/bin/env bash
# Runs each fuzz target of tests/it/fuzz.rs (proptest) for a bounded time, in rounds of
# WAHOOK_FUZZ_CASES fresh random cases, and fails on the first crash (proptest then keeps the
# shrunk input under proptest-regressions/: commit it, it becomes a regression case).
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 60)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
SECONDS_PER_TARGET=${1:-60}
export WAHOOK_FUZZ_CASES=${WAHOOK_FUZZ_CASES:-2000}
cargo test -q --test it --no-run
targets=$(cargo test -q --test it -- --list fuzz:: 2>/dev/null | sed -n 's/^\(fuzz::[a-z_]*\): test$/\1/p')
for target in $targets; do
  end=$((SECONDS + SECONDS_PER_TARGET))
  rounds=0
  while [ "$SECONDS" -lt "$end" ]; do
    cargo test -q --test it -- --exact "$target" >/dev/null 2>"${TMPDIR:-/tmp}/fuzz.err" || {
      cat "${TMPDIR:-/tmp}/fuzz.err" >&2
      echo "FAIL $target (round $((rounds + 1)))" >&2
      exit 1
    }
    rounds=$((rounds + 1))
  done
  echo "ok   $target: $rounds rounds × $WAHOOK_FUZZ_CASES cases in ${SECONDS_PER_TARGET} s"
done
