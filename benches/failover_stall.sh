#!/usr/bin/env bash
# The failover stall of umpath and dm-multipath side by side, in the Debian
# test guest (tests/vm_debian.rs, dm_multipath_side_by_side): the same LUN
# on two virtio-scsi HBAs, 4 KiB direct random reads, a path taken offline
# and then unplugged 5 s into a run, for umpath (/dev/umpath/WWID, the
# kernel NBD device) and then multipathd (/dev/mapper/WWID). Prints the
# figures (longest IO, mean, IOPS, errors) and the umpath/dm ratios.
# Needs root (the guest is built with debootstrap once, then cached).
#
#   benches/failover_stall.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin umpath
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
# The guest runs the release build (the test build is unoptimised).
UMPATH_VM_BIN="$target/release/umpath" \
  cargo nextest run --test vm_debian --no-capture --retries 0 dm_multipath_side_by_side >/dev/null
f=$target/vm-runs/debian-dm/stall.json
python3 - "$f" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(f"{'case':16} {'umpath max ms':>14} {'dm max ms':>10} {'ratio':>6} {'umpath IOPS':>12} {'dm IOPS':>8} {'ratio':>6}")
for case in ["no fault", "path offline", "path unplugged"]:
    u, m = d["umpath"][case], d["dm-multipath"][case]
    print(f"{case:16} {u['max_ms']:14.1f} {m['max_ms']:10.1f} {u['max_ms']/max(m['max_ms'],1e-9):6.2f} "
          f"{u['iops']:12.0f} {m['iops']:8.0f} {u['iops']/max(m['iops'],1e-9):6.2f}"
          + ("" if u["errors"] == 0 and m["errors"] == 0 else f"  errors umpath {u['errors']} dm {m['errors']}"))
PY
