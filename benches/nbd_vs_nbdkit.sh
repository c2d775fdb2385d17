#!/usr/bin/env bash
# umpath (two file paths, seed stanza) vs nbdkit's file plugin, on one
# image, in one run, with fio's nbd engine. Prints IOPS and the ratio.
#
#   benches/nbd_vs_nbdkit.sh [RUNTIME_SECONDS]   (default 10 per workload)
#
# Needs: fio (with the nbd engine), nbdkit, a release build of umpath
# (built here if missing). benches/table.sh is the full table (more jobs,
# qemu-nbd, nbd-server, the local limit, CPU per IO); this is the quick check.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNTIME=${1:-10}
for b in fio nbdkit python3; do
  command -v "$b" >/dev/null || { echo "$b missing: apt-get install fio nbdkit" >&2; exit 1; }
done
cargo build --release --quiet --bin umpath
UMPATH=target/release/umpath

W=$(mktemp -d /tmp/umpath-bench.XXXXXX)
cleanup() {
  [ -n "${UPID:-}" ] && kill "$UPID" 2>/dev/null && wait "$UPID" 2>/dev/null || true
  [ -n "${KPID:-}" ] && kill "$KPID" 2>/dev/null && wait "$KPID" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT

IMG=$W/lun0.img
# 1 GiB of real data (not a hole), so both servers read the same page cache.
dd if=/dev/urandom of="$IMG" bs=1M count=1024 status=none

cat > "$W/multipath.conf" <<CONF
defaults {
    polling_interval 5
}
devices {
    device {
          vendor                  "OSNEXUS"
          product                 "QUANTASTOR"
          getuid_callout          "/sbin/scsi_id -g -u -s /block/%n"
          path_selector           "round-robin 0"
          path_grouping_policy    multibus
          failback                immediate
          rr_weight               uniform
          rr_min_io               100
          path_checker            tur
    }
}
multipaths {
    multipath {
        wwid "36000c29abcdef001"
        alias lun0
    }
}
paths {
    path {
        name p0
        transport file
        file $IMG
        vendor "OSNEXUS"
        product "QUANTASTOR"
        wwid "36000c29abcdef001"
    }
    path {
        name p1
        transport file
        file $IMG
        vendor "OSNEXUS"
        product "QUANTASTOR"
        wwid "36000c29abcdef001"
    }
}
CONF

UMPATH_LOG=warn "$UMPATH" --control-socket "$W/ctl.sock" daemon --config "$W/multipath.conf" --nbd-socket "$W/umpath.sock" 2>"$W/umpath.log" &
UPID=$!
nbdkit --foreground --unix "$W/nbdkit.sock" --exportname lun0 file "$IMG" 2>"$W/nbdkit.log" &
KPID=$!
for _ in $(seq 100); do [ -S "$W/umpath.sock" ] && [ -S "$W/nbdkit.sock" ] && break; sleep 0.1; done

run_fio() { # name uri rw bs qd
  fio --name="$1" --ioengine=nbd --uri="$2" --rw="$3" --bs="$4" --iodepth="$5" \
      --size=1G --time_based --runtime="$RUNTIME" --ramp_time=2 --norandommap \
      --output-format=json 2>/dev/null |
    python3 -c 'import json,sys; t=sys.stdin.read(); d=json.loads(t[t.index("{"):])["jobs"][0]; print(int(d["read"]["iops"]+d["write"]["iops"]))'

}

printf "%-22s %12s %12s %8s\n" workload umpath_iops nbdkit_iops ratio
for w in "4k-randread-qd32 randread 4k 32" "4k-randwrite-qd32 randwrite 4k 32" "1M-seqread-qd8 read 1M 8"; do
  set -- $w
  u=$(run_fio "$1" "nbd+unix:///lun0?socket=$W/umpath.sock" "$2" "$3" "$4")
  k=$(run_fio "$1" "nbd+unix:///lun0?socket=$W/nbdkit.sock" "$2" "$3" "$4")
  r=$(python3 -c "print(f'{$u/$k:.2f}' if $k else 'n/a')")
  printf "%-22s %12s %12s %7sx\n" "$1" "$u" "$k" "$r"
done
