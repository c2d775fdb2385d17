#!/usr/bin/env bash
# Builds the VM tests' initramfs (cpio newc, gzip): static busybox, the
# umpath binary with the shared libraries ldd names, nbd-client (when
# VM_ENV names one) with its libraries, the kernel modules the
# guest needs (with their dependencies, in load order), tests/vm/init as
# /init, and any extra files.
#
#   tests/vm/mkinitramfs.sh --env VM_ENV --umpath BIN --out FILE.cpio.gz \
#       [--init FILE] [--modules "virtio_pci virtio_scsi ..."]
#       [--extra-modules "tcm_loop ..."] [--file DEST=SRC]...
#
# VM_ENV is the vm.env scripts/vm-setup.sh prints. Modules built into the
# kernel (modules.builtin) are skipped; the rest are listed, dependencies
# first (from modules.dep), in /etc/vm/modules for /init to insmod.
set -euo pipefail

die() { echo "mkinitramfs: $*" >&2; exit 1; }

here="$(cd "$(dirname "$0")" && pwd)"
env_file="" umpath="" out="" init="$here/init"
modules="virtio_pci virtio_scsi scsi_mod sd_mod sg virtio_net virtio_console nbd"
files=()
while [ $# -gt 0 ]; do
  case "$1" in
    --env) env_file="$2"; shift 2 ;;
    --umpath) umpath="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --init) init="$2"; shift 2 ;;
    --modules) modules="$2"; shift 2 ;;
    --extra-modules) modules="$modules $2"; shift 2 ;;
    --file) files+=("$2"); shift 2 ;;
    *) die "unknown argument $1" ;;
  esac
done
[ -n "$env_file" ] && [ -n "$umpath" ] && [ -n "$out" ] || die "usage: $0 --env VM_ENV --umpath BIN --out FILE [--init FILE] [--modules LIST] [--file DEST=SRC]..."
[ -f "$env_file" ] || die "$env_file missing (run scripts/vm-setup.sh)"
# shellcheck disable=SC1090
. "$env_file"
[ -x "$umpath" ] || die "$umpath is not an executable"
for t in cpio gzip ldd; do command -v "$t" >/dev/null || die "$t not found (apt-get install cpio gzip libc-bin)"; done

moddir="$MODROOT/lib/modules/$KVER"
[ -s "$moddir/modules.dep" ] || die "$moddir/modules.dep missing (run scripts/vm-setup.sh)"

stage="$(mktemp -d "${out}.stage.XXXXXX")"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,sbin,etc/vm,proc,sys,dev,run,tmp,root,mnt,lib/modules/"$KVER"}

# busybox and its applets
# (/init runs `busybox --install -s /bin` for the other applets)
cp "$BUSYBOX" "$stage/bin/busybox"
ln -s busybox "$stage/bin/sh"

# umpath (stripped when possible: a debug build is tens of MB) and its libraries
if command -v strip >/dev/null; then
  strip -o "$stage/bin/umpath" "$umpath"
else
  cp "$umpath" "$stage/bin/umpath"
fi
ldd "$umpath" | awk '/=> \// {print $3} /^[[:space:]]*\// {print $1}' | while read -r lib; do
  mkdir -p "$stage$(dirname "$lib")"
  cp -L "$lib" "$stage$lib"
done

# nbd-client (tests/vm_tls.rs) and its libraries: those from vm-setup.sh's
# NBD_CLIENT_ROOT (libnl) go where the package puts them, the rest (GnuTLS,
# libc) are the host's
if [ -n "${NBD_CLIENT:-}" ]; then
  [ -x "$NBD_CLIENT" ] || die "$NBD_CLIENT missing (run scripts/vm-setup.sh)"
  cp "$NBD_CLIENT" "$stage/sbin/nbd-client"
  nbd_libs="$(find "$NBD_CLIENT_ROOT" -name '*.so*' -printf '%h\n' | sort -u | paste -sd:)"
  nbd_ldd="$(LD_LIBRARY_PATH="$nbd_libs" ldd "$NBD_CLIENT")"
  if echo "$nbd_ldd" | grep -q 'not found'; then
    die "nbd-client: libraries not found on this host: $(echo "$nbd_ldd" | grep 'not found' | tr '\n' ' ')"
  fi
  echo "$nbd_ldd" | awk '/=> \// {print $3} /^[[:space:]]*\// {print $1}' | while read -r lib; do
    dest="${lib#"$NBD_CLIENT_ROOT"}"
    mkdir -p "$stage$(dirname "$dest")"
    cp -L "$lib" "$stage$dest"
  done
fi

# modules: resolve names (- and _ alike) to paths, dependencies first
declare -A dep_of=() path_of=() builtin=() added=()
while IFS= read -r line; do
  p="${line%%:*}"
  dep_of["$p"]="${line#*:}"
  n="${p##*/}"; n="${n%%.ko*}"; path_of["${n//-/_}"]="$p"
done < "$moddir/modules.dep"
while IFS= read -r p; do
  n="${p##*/}"; n="${n%%.ko*}"; builtin["${n//-/_}"]=1
done < "$moddir/modules.builtin"
order=()
add_path() {
  local p="$1" d
  [ -z "${added[$p]:-}" ] || return 0
  added["$p"]=1
  for d in ${dep_of[$p]}; do add_path "$d"; done
  order+=("$p")
}
for m in $modules; do
  k="${m//-/_}"
  if [ -n "${builtin[$k]:-}" ]; then
    echo "mkinitramfs: $m is built into $KVER" >&2
  elif [ -n "${path_of[$k]:-}" ]; then
    add_path "${path_of[$k]}"
  else
    die "module $m is neither built into $KVER nor in its modules.dep"
  fi
done
: > "$stage/etc/vm/modules"
for p in "${order[@]}"; do
  mkdir -p "$stage/lib/modules/$KVER/$(dirname "$p")"
  case "$p" in
    *.ko) cp "$moddir/$p" "$stage/lib/modules/$KVER/$p"; q="$p" ;;
    *.ko.xz) q="${p%.xz}"; xz -dc "$moddir/$p" > "$stage/lib/modules/$KVER/$q" ;;
    *.ko.zst) q="${p%.zst}"; zstd -qdc "$moddir/$p" > "$stage/lib/modules/$KVER/$q" ;;
    *.ko.gz) q="${p%.gz}"; gzip -dc "$moddir/$p" > "$stage/lib/modules/$KVER/$q" ;;
    *) die "unexpected module file $p" ;;
  esac
  echo "/lib/modules/$KVER/$q" >> "$stage/etc/vm/modules"
done
echo "$KVER" > "$stage/etc/vm/kver"

cp "$init" "$stage/init"
chmod 755 "$stage/init"
for f in "${files[@]}"; do
  dest="${f%%=*}" src="${f#*=}"
  mkdir -p "$stage$(dirname "$dest")"
  cp "$src" "$stage$dest"
done

(cd "$stage" && find . -print0 | LC_ALL=C sort -z | cpio -o -0 -H newc -R 0:0 --quiet) | gzip -1 > "$out.tmp"
mv "$out.tmp" "$out"
echo "mkinitramfs: $out ($(du -h "$out" | cut -f1); modules: $(tr '\n' ' ' < "$stage/etc/vm/modules"))" >&2
