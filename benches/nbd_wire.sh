#!/usr/bin/env bash
# The NBD wire side by side: two umpath binaries (a baseline and this
# tree's release build) on the same two-file-path map, in one run, with
# fio's nbd engine; nbdkit's file plugin on the same image as a reference.
# Prints IOPS, the ratio new/baseline, and with strace the daemon's
# syscalls per IO (a separate, slower run: strace -c -f on the daemon).
#
#   benches/nbd_wire.sh BASELINE_BIN [RUNTIME_SECONDS] [NEW_BIN]
#
# BASELINE_BIN: e.g. a release build of the commit before the change.
# Needs: fio (nbd engine), python3; nbdkit and strace are optional.
# The image (256 MiB) goes to $TMPDIR.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${1:?usage: benches/nbd_wire.sh BASELINE_BIN [RUNTIME] [NEW_BIN]}
RUNTIME=${2:-5}
NEW=${3:-}
if [ -z "$NEW" ]; then
  cargo build --release --quiet --bin umpath
  NEW=${CARGO_TARGET_DIR:-target}/release/umpath
fi
for b in fio python3; do
  command -v "$b" >/dev/null || { echo "$b missing" >&2; exit 1; }
done

W=$(mktemp -d "${TMPDIR:-/tmp}/umpath-wire.XXXXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT

IMG=$W/lun0.img
dd if=/dev/urandom of="$IMG" bs=1M count=256 status=none

conf() { # dir
  mkdir -p "$1"
  cat > "$1/multipath.conf" <<CONF
defaults {
    polling_interval 5
    path_grouping_policy multibus
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
        wwid "36000c29abcdef001"
    }
    path {
        name p1
        transport file
        file $IMG
        wwid "36000c29abcdef001"
    }
}
CONF
}

start() { # name bin -> sets SPID
  conf "$W/$1"
  UMPATH_LOG=warn "$2" --control-socket "$W/$1/ctl.sock" daemon \
    --config "$W/$1/multipath.conf" --nbd-socket "$W/$1/nbd.sock" 2>"$W/$1/log" &
  SPID=$!
  PIDS+=("$SPID")
  for _ in $(seq 100); do [ -S "$W/$1/nbd.sock" ] && return; sleep 0.1; done
  echo "$1 did not start" >&2; cat "$W/$1/log" >&2; exit 1
}

start base "$BASE"; BPID=$SPID
start new "$NEW"; NPID=$SPID
HAVE_KIT=0
if command -v nbdkit >/dev/null; then
  nbdkit --foreground --unix "$W/kit.sock" --exportname lun0 file "$IMG" 2>"$W/kit.log" &
  PIDS+=("$!")
  for _ in $(seq 100); do [ -S "$W/kit.sock" ] && break; sleep 0.1; done
  HAVE_KIT=1
fi

fio_ios() { # uri rw bs qd runtime -> "iops total_ios"
  fio --name=w --ioengine=nbd --uri="$1" --rw="$2" --bs="$3" --iodepth="$4" \
      --size=256M --time_based --runtime="$5" --ramp_time=1 --norandommap \
      --output-format=json 2>/dev/null |
    python3 -c 'import json,sys; t=sys.stdin.read(); d=json.loads(t[t.index("{"):])["jobs"][0]; print(int(d["read"]["iops"]+d["write"]["iops"]), d["read"]["total_ios"]+d["write"]["total_ios"])'
}

# Syscalls per IO of the daemon `pid` serving `uri` (strace slows it down;
# the count per IO is what matters).
per_io() { # pid uri rw bs qd
  command -v strace >/dev/null || { echo n/a; return; }
  strace -c -f -p "$1" -o "$W/strace.out" 2>/dev/null &
  local s=$!
  sleep 0.5
  local r
  r=$(fio_ios "$2" "$3" "$4" "$5" 3)
  kill -INT "$s" 2>/dev/null; wait "$s" 2>/dev/null || true
  local calls
  calls=$(awk '$NF == "total" {print $(NF-2)}' "$W/strace.out")
  python3 -c "print(f'{${calls:-0}/max(1,${r#* }):.2f}')"
}

printf "%-18s %10s %10s %7s %10s %9s %9s\n" workload base_iops new_iops new/base nbdkit_iops sys/io_b sys/io_n
for w in "4k-randread-qd32 randread 4k 32" "4k-randwrite-qd32 randwrite 4k 32" "1M-seqread-qd8 read 1M 8" "1M-seqwrite-qd8 write 1M 8"; do
  set -- $w
  b=$(fio_ios "nbd+unix:///lun0?socket=$W/base/nbd.sock" "$2" "$3" "$4" "$RUNTIME"); b=${b% *}
  n=$(fio_ios "nbd+unix:///lun0?socket=$W/new/nbd.sock" "$2" "$3" "$4" "$RUNTIME"); n=${n% *}
  k=n/a
  if [ "$HAVE_KIT" = 1 ]; then
    k=$(fio_ios "nbd+unix:///lun0?socket=$W/kit.sock" "$2" "$3" "$4" "$RUNTIME"); k=${k% *}
  fi
  sb=$(per_io "$BPID" "nbd+unix:///lun0?socket=$W/base/nbd.sock" "$2" "$3" "$4")
  sn=$(per_io "$NPID" "nbd+unix:///lun0?socket=$W/new/nbd.sock" "$2" "$3" "$4")
  r=$(python3 -c "print(f'{$n/$b:.2f}' if $b else 'n/a')")
  printf "%-18s %10s %10s %6sx %10s %9s %9s\n" "$1" "$b" "$n" "$r" "$k" "$sb" "$sn"
done
