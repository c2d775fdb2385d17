#!/usr/bin/env bash
# Runs every cargo-fuzz target for a short while (a smoke test, not a
# fuzzing campaign). Installs cargo-fuzz if it is missing.
#
#   ./scripts/fuzz-smoke.sh            # each target for 20 seconds
#   ./scripts/fuzz-smoke.sh 300        # each target for 5 minutes
#
# cargo fuzz needs nightly compiler flags (-Zsanitizer=address). With a
# nightly toolchain installed, set FUZZ_TOOLCHAIN=nightly; by default the
# current toolchain is used with RUSTC_BOOTSTRAP=1, which makes a stable
# compiler accept them. New inputs go to a scratch directory, so the seed
# corpus in fuzz/corpus/TARGET stays as committed; crashes are written to
# fuzz/artifacts/TARGET and make the script fail.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-20}"
case "$secs" in
  ''|*[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;;
esac

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

# FUZZ_SANITIZER=none builds without ASAN (much faster; what the test
# command uses for its smoke run). FUZZ_TARGET_DIR keeps the fuzz build
# outside the work tree (cached across clones).
sanitizer=(-s "${FUZZ_SANITIZER:-address}")
# FUZZ_DEV=1 builds without optimisations (a smoke run wants the build
# fast, not the fuzzing).
if [ -n "${FUZZ_DEV:-}" ]; then
  sanitizer+=(--dev)
fi
if [ -n "${FUZZ_TARGET_DIR:-}" ]; then
  export CARGO_TARGET_DIR="$FUZZ_TARGET_DIR"
fi

toolchain=()
if [ -n "${FUZZ_TOOLCHAIN:-}" ]; then
  toolchain=("+$FUZZ_TOOLCHAIN")
else
  export RUSTC_BOOTSTRAP=1
fi

targets=$(cargo "${toolchain[@]}" fuzz list)
status=0
for t in $targets; do
  scratch=$(mktemp -d)
  echo "==> fuzzing $t for ${secs}s"
  start=$(date +%s)
  if ! cargo "${toolchain[@]}" fuzz run "${sanitizer[@]}" "$t" "$scratch" "fuzz/corpus/$t" -- \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1; then
    echo "==> $t FAILED (see fuzz/artifacts/$t)" >&2
    status=1
  fi
  echo "==> $t: $(( $(date +%s) - start ))s including the build"
  rm -rf "$scratch"
done
exit "$status"
