#!/usr/bin/env bash
# Installs what umpath's tests need (Debian packages) and runs the whole
# suite: formatting, clippy, unit and integration tests.
#
#   ./scripts/test.sh            # everything
#   ./scripts/test.sh --no-lint  # skip fmt/clippy
#
# Needs a Rust toolchain (cargo) and root or sudo for apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."

lint=1
for a in "$@"; do
  case "$a" in
    --no-lint) lint=0 ;;
    *) echo "usage: $0 [--no-lint]" >&2; exit 2 ;;
  esac
done

# Debian packages the tests talk to (real peers, not mocks):
#   nbdkit, libnbd-bin (nbdinfo, nbdfuse), fio, qemu-utils (qemu-io, qemu-img),
#   multipath-tools (the oracle for multipath.conf semantics),
#   e2fsprogs (mkfs.ext4, fsck.ext4), util-linux (losetup), fuse3.
PKGS=(nbdkit libnbd-bin nbdfuse fio qemu-utils multipath-tools e2fsprogs util-linux fuse3 iproute2 procps)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "need root or sudo to install: ${missing[*]}" >&2; exit 1; }
    SUDO=sudo
  fi
  echo "==> installing test dependencies: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # multipath-tools must not start a multipathd on the test machine.
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

command -v cargo >/dev/null || { echo "cargo not found: install a Rust toolchain (https://rustup.rs)" >&2; exit 1; }

if [ "$lint" = 1 ]; then
  echo "==> cargo fmt --check"
  cargo fmt --all -- --check
  echo "==> cargo clippy"
  cargo clippy --all-targets --quiet -- -D warnings
fi

echo "==> building"
cargo build --release --quiet --bins
cargo build --quiet --all-targets

echo "==> tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --no-fail-fast --test-threads 2
else
  cargo test --no-fail-fast -- --test-threads 2
fi
