#!/usr/bin/env bash
# Builds a statically linked umpath (glibc, crt-static) for a busybox
# initramfs or VM image: no shared libraries needed at run time.
# Output: $CARGO_TARGET_DIR (default ./target)/x86_64-unknown-linux-gnu/release/umpath
set -euo pipefail
cd "$(dirname "$0")/.."
target="$(rustc -vV | sed -n 's/^host: //p')"
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --release --locked --target "$target" --bin umpath
out="${CARGO_TARGET_DIR:-target}/$target/release/umpath"
file "$out" 2>/dev/null || true
echo "$out"
