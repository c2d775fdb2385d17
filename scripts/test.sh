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
#   e2fsprogs (mkfs.ext4, fsck.ext4), util-linux (losetup), fuse3,
#   for the VM tests (tests/vm_scsi.rs): qemu-system-x86 (installed below,
#   matched to qemu-utils), cpio and gzip (the initramfs), kmod (depmod on
#   the downloaded kernel), binutils (strip). scripts/vm-setup.sh downloads
#   the kernel and busybox-static into target/vm-cache without installing them.
PKGS=(nbdkit libnbd-bin nbdfuse fio qemu-utils multipath-tools e2fsprogs util-linux fuse3 iproute2 procps systemd man-db
  cpio gzip kmod binutils)

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
  $SUDO apt-get install -y -qq --no-install-recommends --no-remove "${missing[@]}" >/dev/null
fi

# qemu-system-x86 must come from the same QEMU release as qemu-utils: apt
# would remove a backported qemu-utils to install the release's QEMU, so
# take qemu-system-x86 from backports then (a private apt state; the
# system's sources and lists are not changed).
if ! dpkg-query -W -f='${Status}' qemu-system-x86 2>/dev/null | grep -q "install ok installed"; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  qver="$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)"
  echo "==> installing qemu-system-x86 (VM tests; qemu-utils ${qver:-not installed})"
  case "$qver" in
    *bpo*)
      . /etc/os-release
      apt_tmp="$(mktemp -d)"
      mkdir -p "$apt_tmp/lists/partial"
      { cat /etc/apt/sources.list 2>/dev/null || true
        echo "deb http://deb.debian.org/debian ${VERSION_CODENAME}-backports main"; } > "$apt_tmp/sources.list"
      apt_opts=(-o "Dir::Etc::sourcelist=$apt_tmp/sources.list" -o "Dir::State::lists=$apt_tmp/lists")
      $SUDO apt-get "${apt_opts[@]}" update -qq
      $SUDO apt-get "${apt_opts[@]}" install -y -qq --no-install-recommends --no-remove \
        -t "${VERSION_CODENAME}-backports" qemu-system-x86 >/dev/null
      rm -rf "$apt_tmp"
      ;;
    *)
      $SUDO apt-get install -y -qq --no-install-recommends --no-remove qemu-system-x86 >/dev/null
      ;;
  esac
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

echo "==> VM test assets (kernel, busybox; cached)"
./scripts/vm-setup.sh >/dev/null

status=0
# Fuzz smoke: every cargo-fuzz target for a few seconds (no ASAN, the build
# cached outside the work tree). UMPATH_FUZZ_SECONDS=0 skips it.
secs="${UMPATH_FUZZ_SECONDS:-10}"
if [ "$secs" != 0 ]; then
  echo "==> fuzz smoke (${secs}s per target)"
  FUZZ_SANITIZER=none FUZZ_TARGET_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/umpath/fuzz-target" \
    ./scripts/fuzz-smoke.sh "$secs" || status=1
fi

echo "==> tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --no-fail-fast --test-threads 2 || status=$?
else
  cargo test --no-fail-fast -- --test-threads 2 || status=$?
fi

exit "$status"
