#!/usr/bin/env bash
# umpath beside dm-multipath on real SCSI paths (issue 13, item 5), in the
# Debian test guest (tests/vm_debian.rs, guest_throughput): two virtio-scsi
# HBAs to one LUN; 4 KiB direct random reads at QD1/8/32 and random writes
# at QD8, in one run, through
#   - umpath (the kernel NBD client on umpath's export, /dev/umpath/WWID),
#   - nbdkit's file plugin on one path behind the same kernel NBD client
#     (the cost of the NBD hop that any NBD server pays),
#   - dm-multipath (multipathd, /dev/mapper/WWID),
#   - one path's disk alone.
# Prints IOPS and the ratios umpath/dm-multipath and umpath/nbdkit.
# The guest runs the release build: the test build is unoptimised, which
# under TCG costs about a millisecond per request.
# Needs root (the guest is built with debootstrap once, then cached).
#
#   benches/guest_vs_dm.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin umpath
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
UMPATH_VM_BIN="$target/release/umpath" \
  cargo nextest run --test vm_debian --no-capture --retries 0 --run-ignored only guest_throughput >/dev/null
python3 - "$target/vm-runs/debian-bench/throughput.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
cols = ["umpath", "dm-multipath", "nbdkit", "one path (sda)"]
jobs = sorted(d["umpath"].keys(), key=lambda j: ("write" in j, int(j.split("QD")[1])))
print("| job | " + " | ".join(cols) + " | umpath / dm-multipath | umpath / nbdkit |")
print("|---|" + "---:|" * (len(cols) + 2))
for j in jobs:
    v = {c: d[c][j]["iops"] for c in cols}
    r = lambda a, b: f"{v[a] / v[b]:.2f}x" if v[b] else "-"
    print(f"| {j} | " + " | ".join(f"{v[c]:,.0f}" for c in cols)
          + f" | {r('umpath', 'dm-multipath')} | {r('umpath', 'nbdkit')} |")
PY
