#!/usr/bin/env bash
# Builds the full Debian 12 guest of the Debian VM tests (tests/vm_debian.rs):
# a debootstrap'ed root (systemd, udev, nbd-client, open-iscsi,
# multipath-tools, fio, e2fsprogs, nbdkit (the guest benchmark's NBD peer),
# qemu-guest-agent, the cloud kernel and its
# initramfs) in an ext4 disk image, plus the kernel and initramfs to boot it.
# Needs root (debootstrap chroots) and Debian's archive.
#
#   scripts/vm-debian.sh [CACHE_DIR]   # default: ${XDG_CACHE_HOME:-~/.cache}/umpath/vm-debian
#
# Cached: the image is keyed by a hash of this script, so editing the
# package list or the guest's configuration below builds a new one; an
# unchanged script reuses the last build (about 75 s to build, 0 to reuse).
# The debs are kept in CACHE_DIR/debs for rebuilds. On success the last line
# of stdout is the path of an env file with
#   DEB_KVER     kernel release
#   DEB_KERNEL   the guest's vmlinuz
#   DEB_INITRD   the guest's initramfs (initramfs-tools, root=LABEL=umroot)
#   DEB_IMAGE    the root file system image (raw, ext4, label umroot); tests
#                boot a qcow2 overlay on it and never write it
set -euo pipefail

die() { echo "vm-debian: $*" >&2; exit 1; }
say() { echo "vm-debian: $*" >&2; }

repo="$(cd "$(dirname "$0")/.." && pwd)"
cache="${1:-${UMPATH_VM_DEBIAN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/umpath/vm-debian}}"
mkdir -p "$cache"
cache="$(cd "$cache" && pwd)"
exec 9> "$cache/.lock"
command -v flock >/dev/null && flock -w 900 9

key="$(sha256sum "$repo/scripts/vm-debian.sh" | cut -c1-12)"
out="$cache/bookworm-$key"
env_file="$out/guest.env"

cached_ok() {
  [ -f "$env_file" ] || return 1
  # shellcheck disable=SC1090
  ( . "$env_file" && [ -s "$DEB_KERNEL" ] && [ -s "$DEB_INITRD" ] && [ -s "$DEB_IMAGE" ] )
}
if cached_ok; then
  say "cached: $out"
  echo "$env_file"
  exit 0
fi

[ "$(id -u)" -eq 0 ] || die "building the Debian guest needs root (debootstrap chroots): run ./scripts/test.sh as root, or sudo $0"
for t in debootstrap mkfs.ext4 chroot; do
  command -v "$t" >/dev/null || [ -x "/usr/sbin/$t" ] || die "$t not found: apt-get install debootstrap e2fsprogs"
done

# The host's Debian mirror (deb822 or one-line sources), else deb.debian.org.
mirror="${UMPATH_DEBIAN_MIRROR:-}"
if [ -z "$mirror" ]; then
  mirror="$(awk '/^URIs:/ && $2 ~ /\/debian\/?$/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)"
fi
if [ -z "$mirror" ]; then
  mirror="$(awk '$1=="deb" && $2 ~ /\/debian\/?$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)"
fi
mirror="${mirror:-http://deb.debian.org/debian}"

PACKAGES=(
  systemd systemd-sysv udev kmod iproute2 procps util-linux
  nbd-client open-iscsi multipath-tools fio e2fsprogs nbdkit
  qemu-guest-agent initramfs-tools linux-image-cloud-amd64 man-db
)

rm -rf "$out.tmp"
mkdir -p "$out.tmp" "$cache/debs"
root="$out.tmp/root"
say "debootstrap bookworm from $mirror (log: $out.tmp/debootstrap.log)"
if ! debootstrap --variant=minbase --cache-dir="$cache/debs" \
    --include="$(IFS=,; echo "${PACKAGES[*]}")" \
    bookworm "$root" "$mirror" >"$out.tmp/debootstrap.log" 2>&1; then
  tail -n 30 "$out.tmp/debootstrap.log" >&2
  grep -h -A3 -iE 'error|fail' "$root/debootstrap/debootstrap.log" 2>/dev/null | tail -n 30 >&2 || true
  die "debootstrap failed (is $mirror reachable? set UMPATH_DEBIAN_MIRROR to use another mirror)"
fi

# --- The guest's configuration ---
echo umpath-guest > "$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 umpath-guest\n' > "$root/etc/hosts"
printf 'LABEL=umroot / ext4 rw,errors=remount-ro 0 1\n' > "$root/etc/fstab"
chroot "$root" passwd -d root >/dev/null
# The journal in memory: no writes to the root disk, nothing to flush.
mkdir -p "$root/etc/systemd/journald.conf.d"
printf '[Journal]\nStorage=volatile\nRuntimeMaxUse=32M\n' > "$root/etc/systemd/journald.conf.d/umpath-vm.conf"
# Nothing runs in the background but what a test starts: multipathd and
# iscsid are started by the tests that want them (umpathd conflicts with
# multipathd), timers would compete for the one emulated CPU.
for u in multipathd.service multipathd.socket iscsid.socket iscsid.service open-iscsi.service \
    apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer \
    man-db.timer dpkg-db-backup.timer systemd-tmpfiles-clean.timer; do
  chroot "$root" systemctl disable "$u" >/dev/null 2>&1 || true
done
# The guest agent (the tests' command channel) logs every command at
# info level; keep the journal for what is tested.
mkdir -p "$root/etc/systemd/system/qemu-guest-agent.service.d"
printf '[Service]\nLogLevelMax=warning\n' > "$root/etc/systemd/system/qemu-guest-agent.service.d/quiet.conf"
chroot "$root" systemctl mask systemd-timesyncd.service >/dev/null 2>&1 || true
# Kernel messages on the console only from warnings up.
mkdir -p "$root/etc/sysctl.d"
echo 'kernel.printk = 4 4 1 7' > "$root/etc/sysctl.d/10-umpath-vm.conf"
# The staging disk (the umpath under test and the tests' files) comes as a
# virtio disk with serial "umstage".
mkdir -p "$root/mnt/stage"
printf '/dev/disk/by-id/virtio-umstage /mnt/stage ext4 ro,nofail,x-systemd.device-timeout=10s 0 0\n' >> "$root/etc/fstab"
rm -f "$root"/etc/ssh/ssh_host_* 2>/dev/null || true
: > "$root/etc/machine-id"

kver="$(basename "$(ls -d "$root"/lib/modules/* | sort -V | tail -n1)")"
[ -s "$root/boot/vmlinuz-$kver" ] || die "no kernel in the guest root (boot/vmlinuz-$kver)"
# initramfs-tools ran during the install; run it again now that fstab
# names the root, to be sure the initramfs matches the installed modules.
chroot "$root" update-initramfs -u -k "$kver" >/dev/null 2>&1 || die "update-initramfs failed in the guest root"
cp "$root/boot/vmlinuz-$kver" "$out.tmp/vmlinuz"
cp "$root/boot/initrd.img-$kver" "$out.tmp/initrd.img"
chroot "$root" apt-get clean >/dev/null 2>&1 || true

say "making the root file system image"
mkfs.ext4 -q -F -L umroot -d "$root" "$out.tmp/root.img" 3G
rm -rf "$root"

cat > "$out.tmp/guest.env" <<EOF
DEB_KVER='$kver'
DEB_KERNEL='$out/vmlinuz'
DEB_INITRD='$out/initrd.img'
DEB_IMAGE='$out/root.img'
EOF
rm -rf "$out"
mv "$out.tmp" "$out"
# Older builds are of no use any more.
for d in "$cache"/bookworm-*; do
  [ "$d" = "$out" ] || rm -rf "$d"
done
say "guest: kernel $kver, image $out/root.img"
echo "$env_file"
