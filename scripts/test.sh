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

# The tests talk to real peers, not mocks. scripts/vm-setup.sh downloads
# the VM tests' kernel and busybox-static into target/vm-cache without
# installing them.
# Commands the tests run, each with the Debian package that brings it.
# What is present is not reinstalled, so a user with everything installed
# needs no root. (Checking commands, not package names: nbdfuse, for one,
# is a virtual package that libnbd-bin provides.)
NEEDS=(
  nbdkit:nbdkit nbdinfo:libnbd-bin nbdfuse:libnbd-bin fio:fio
  qemu-io:qemu-utils qemu-img:qemu-utils multipath:multipath-tools
  mkfs.ext4:e2fsprogs fsck.ext4:e2fsprogs mkfs.xfs:xfsprogs losetup:util-linux
  fusermount3:fuse3 ip:iproute2 pgrep:procps setpriv:util-linux python3:python3
  cpio:cpio gzip:gzip depmod:kmod strip:binutils promtool:prometheus openssl:openssl
  systemd-analyze:systemd man:man-db debootstrap:debootstrap kill:procps
  tgtd:tgt tgtadm:tgt iscsi-ls:libiscsi-bin iscsi-inq:libiscsi-bin
  iscsi-readcapacity16:libiscsi-bin
)
# Packages checked by name (no single command to look for).
PKGS=()

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }
missing=()
for pair in "${NEEDS[@]}"; do
  cmd="${pair%%:*}" pkg="${pair#*:}"
  have "$cmd" || missing+=("$pkg")
done
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
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
# qemu's iSCSI driver (tests/iscsi_target.rs) is a module in
# qemu-block-extra, which must match qemu-utils' version just the same.
qemu_pkgs=()
have qemu-system-x86_64 || qemu_pkgs+=(qemu-system-x86)
dpkg-query -W -f='${Status}' qemu-block-extra 2>/dev/null | grep -q "install ok installed" \
  || qemu_pkgs+=(qemu-block-extra)
if [ ${#qemu_pkgs[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  qver="$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)"
  echo "==> installing ${qemu_pkgs[*]} (VM and iSCSI tests; qemu-utils ${qver:-not installed})"
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
        -t "${VERSION_CODENAME}-backports" "${qemu_pkgs[@]}" >/dev/null
      rm -rf "$apt_tmp"
      ;;
    *)
      $SUDO apt-get install -y -qq --no-install-recommends --no-remove "${qemu_pkgs[@]}" >/dev/null
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
cargo build --quiet --all-targets

echo "==> VM test assets (kernel, busybox; cached)"
./scripts/vm-setup.sh >/dev/null
echo "==> Debian test guest (debootstrap once, about 90 s; cached in ~/.cache/umpath/vm-debian)"
./scripts/vm-debian.sh >/dev/null

status=0
# Fuzz smoke: every cargo-fuzz target for a few seconds (no ASAN, no
# optimisation: the build is most of its time; cached outside the work
# tree). UMPATH_FUZZ_SECONDS=0 skips it.
secs="${UMPATH_FUZZ_SECONDS:-5}"
if [ "$secs" != 0 ]; then
  fuzz_log=target/fuzz-smoke.log
  mkdir -p target
  echo "==> fuzz smoke (${secs}s per target; libFuzzer output in $fuzz_log)"
  if ! FUZZ_SANITIZER=none FUZZ_DEV=1 FUZZ_TARGET_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/umpath/fuzz-target" \
    ./scripts/fuzz-smoke.sh "$secs" >"$fuzz_log" 2>&1; then
    status=1
    tail -n 40 "$fuzz_log"
  fi
  grep '^==>' "$fuzz_log" | sed 's/^==>/   /' || true
fi

echo "==> tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --no-fail-fast --test-threads 2 || status=$?
else
  cargo test --no-fail-fast -- --test-threads 2 || status=$?
fi

exit "$status"
