#!/usr/bin/env bash
# The failover stall as a benchmark, on the host (issue 13, item 6): fio's
# worst completion latency and the IOPS dip when the path carrying IO
# starts failing, hangs or disappears, for `file` paths and `nbd` paths.
#
#   benches/stall.sh
#
# Each cell is a fresh 2-path map (lun0) served by the release `umpath`
# daemon, read by fio's nbd engine over a Unix socket for RUNTIME seconds;
# FAULT_AT seconds in, the fault hits the path that has served the most IO
# so far (with the default `failover` grouping, the one carrying all of it).
# Jobs: 4k randread QD1 and 4k randwrite QD8 (no verify), fio logging IOPS
# per 100 ms (--write_iops_log --log_avg_msec=100, unix-epoch stamps) and
# its worst completion latency; --continue_on_error=all, so an error
# reaching fio is counted rather than ending the job.
#
# Cases (each transport has a control row, `-none`: the same run with no
# fault, showing the dips the machine makes on its own):
#   file-eio      `fault path P error` (every IO and check fails with EIO)
#   file-hang     `fault path P hang`; io_timeout 2 s. RELEASE_AFTER
#                 seconds later the hang turns into EIO (`fault path P
#                 error`), as a SCSI command timeout would end it: writes
#                 stuck on the hung path are held until then (the
#                 write-hold rule), reads are reissued after io_timeout.
#   file-removed  the path's file name is unlinked (each path has its own
#                 hard link to the image): IO on the open handle still
#                 works, the next check cannot open it and fails the path.
#   nbd-kill      two nbdkit servers (file plugin, error filter) in front
#                 of the image; the active one gets SIGKILL.
#   nbd-stop      the active nbdkit gets SIGSTOP (a hung upstream; the
#                 socket timeout is checker_timeout, 2 s, as io_timeout).
#   nbd-error     the active nbdkit's error filter is turned on
#                 (error-rate=100%, EIO on every request).
#
# Output: a markdown table (case, job, IOPS before = median 100 ms IOPS
# over the FAULT_AT-1 s before the fault, lowest 100 ms IOPS after it,
# longest time under 50% of before, worst latency, errors) on stdout and
# in $OUT/stall.md, the series and path states in $OUT/stall.json (OUT
# defaults to target/bench). Exits non-zero if any error reached fio.
#
# Environment:
#   RUNTIME=10         seconds per cell
#   FAULT_AT=4         when the fault is applied (seconds into the run)
#   RELEASE_AFTER=4    file-hang: seconds until the hang becomes EIO
#   IO_TIMEOUT=2       umpath's io_timeout (and checker_timeout) in seconds
#   POLICY=failover    path_grouping_policy (failover or multibus)
#   ONLY=a,b           run only these cases (e.g. file-hang,nbd-stop)
#   BENCH_DIR=/tmp     scratch directory (256 MiB image, sockets)
#   UMPATH=PATH        use this umpath binary (default: release build here)
#   KEEP=1             keep the scratch directory (daemon and fio logs)
# Needs: python3, fio (with the nbd engine), nbdkit (for the nbd cases).
set -euo pipefail
cd "$(dirname "$0")/.."

for b in python3 fio; do
  command -v "$b" >/dev/null || { echo "missing: $b (apt-get install $b)" >&2; exit 1; }
done
if ! fio --enghelp=nbd 2>/dev/null | grep -q uri; then
  echo "fio has no nbd engine (Debian's fio has it; built from source it needs libnbd-dev)" >&2
  exit 1
fi
if ! command -v nbdkit >/dev/null; then
  echo "missing: nbdkit (apt-get install nbdkit); the nbd cases are skipped" >&2
fi
if [ -z "${UMPATH:-}" ]; then
  cargo build --release --quiet --bin umpath
  UMPATH=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/umpath
fi
export UMPATH OUT=${OUT:-$PWD/target/bench}
mkdir -p "$OUT"

exec python3 - <<'PY'
import json, os, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

UMPATH = os.environ["UMPATH"]
OUT = os.environ["OUT"]
RUNTIME = float(os.environ.get("RUNTIME", "10"))
FAULT_AT = float(os.environ.get("FAULT_AT", "4"))
RELEASE_AFTER = float(os.environ.get("RELEASE_AFTER", "4"))
IO_TIMEOUT = int(os.environ.get("IO_TIMEOUT", "2"))
POLICY = os.environ.get("POLICY", "failover")
ONLY = [c for c in os.environ.get("ONLY", "").split(",") if c]
KEEP = os.environ.get("KEEP") == "1"
SIZE = 256 << 20
BUCKET_MS = 100
HAVE_NBDKIT = shutil.which("nbdkit") is not None

# id, label, fio args
JOBS = [
    ("randread-qd1", "4k randread QD1", ["--rw=randread", "--bs=4k", "--iodepth=1"]),
    ("randwrite-qd8", "4k randwrite QD8", ["--rw=randwrite", "--bs=4k", "--iodepth=8"]),
]
# id, transport, label
CASES = [
    ("file-none", "file", "file: no fault (control)"),
    ("file-eio", "file", "file: EIO (`fault path error`)"),
    ("file-hang", "file", f"file: hang, io_timeout {IO_TIMEOUT} s (EIO {RELEASE_AFTER:g} s later)"),
    ("file-removed", "file", "file: path's file unlinked"),
    ("nbd-none", "nbd", "nbd: no fault (control)"),
    ("nbd-kill", "nbd", "nbd: upstream SIGKILL"),
    ("nbd-stop", "nbd", f"nbd: upstream SIGSTOP (timeouts {IO_TIMEOUT} s)"),
    ("nbd-error", "nbd", "nbd: upstream error filter on (EIO)"),
]
if ONLY:
    CASES = [c for c in CASES if c[0] in ONLY]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def wait_socket(path, proc, what, timeout=20):
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening")
        if os.path.exists(path):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                return
            except OSError:
                pass
            finally:
                s.close()
        time.sleep(0.05)
    raise RuntimeError(f"{what}: no listener on {path} after {timeout} s")


def umpath_config(paths):
    """paths: (name, transport, key line) per path."""
    body = "".join(f"""    path {{
        name {name}
        transport {transport}
        {key}
        vendor "OSNEXUS"
        product "QUANTASTOR"
        wwid "36000c29abcdef001"
    }}
""" for name, transport, key in paths)
    return f"""defaults {{
    polling_interval 1
    io_timeout {IO_TIMEOUT}
    checker_timeout {IO_TIMEOUT}
    no_path_retry queue
}}
devices {{
    device {{
          vendor                  "OSNEXUS"
          product                 "QUANTASTOR"
          path_selector           "round-robin 0"
          path_grouping_policy    {POLICY}
          failback                immediate
          rr_weight               uniform
          rr_min_io               100
          path_checker            tur
    }}
}}
multipaths {{
    multipath {{
        wwid "36000c29abcdef001"
        alias lun0
    }}
}}
paths {{
{body}}}
"""


class Cell:
    """One fresh map (and its nbdkit servers) for one case and job."""

    def __init__(self, w, img, case, transport):
        self.w = os.path.join(w, case)
        os.makedirs(self.w, exist_ok=True)
        self.img = img
        self.kits = {}
        self.triggers = {}
        self.files = {}
        self.daemon = None
        paths = []
        for i in range(2):
            name = f"p{i}"
            if transport == "file":
                link = os.path.join(self.w, f"{name}.img")
                if os.path.exists(link):
                    os.unlink(link)
                os.link(img, link)
                self.files[name] = link
                paths.append((name, "file", f"file {link}"))
            else:
                sock = os.path.join(self.w, f"kit{i}.sock")
                trig = os.path.join(self.w, f"fail{i}")
                for f in (sock, trig):
                    if os.path.exists(f):
                        os.unlink(f)
                p = subprocess.Popen(
                    ["nbdkit", "--foreground", "--exit-with-parent", "--unix", sock,
                     "--exportname=lun0", "--filter=error", "file", img, "error-rate=100%",
                     f"error-file={trig}"],
                    stdout=subprocess.DEVNULL,
                    stderr=open(os.path.join(self.w, f"kit{i}.log"), "ab"))
                self.kits[name] = p
                self.triggers[name] = trig
                wait_socket(sock, p, f"nbdkit {name}")
                paths.append((name, "nbd", f'uri "nbd+unix:///lun0?socket={sock}"'))
        cfg = os.path.join(self.w, "umpath.conf")
        with open(cfg, "w") as f:
            f.write(umpath_config(paths))
        self.sock = os.path.join(self.w, "nbd.sock")
        self.ctl = os.path.join(self.w, "ctl.sock")
        for f in (self.sock, self.ctl):
            if os.path.exists(f):
                os.unlink(f)
        env = dict(os.environ, UMPATH_LOG=os.environ.get("UMPATH_LOG", "info"))
        self.daemon = subprocess.Popen(
            [UMPATH, "--control-socket", self.ctl, "daemon", "--config", cfg,
             "--nbd-socket", self.sock], env=env, stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(self.w, "umpath.log"), "ab"))
        wait_socket(self.sock, self.daemon, "umpath")
        # Both paths up before the run.
        deadline = time.monotonic() + 10
        while True:
            ps = self.paths()
            if len(ps) == 2 and all(p.get("state") == "ready" for p in ps):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"paths not ready: {ps}")
            time.sleep(0.1)

    @property
    def uri(self):
        return f"nbd+unix:///lun0?socket={self.sock}"

    def ctl_cmd(self, *args):
        r = subprocess.run([UMPATH, "--control-socket", self.ctl, *args],
                           capture_output=True, text=True, timeout=20)
        if r.returncode != 0:
            raise RuntimeError(f"umpath {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout

    def paths(self):
        return json.loads(self.ctl_cmd("show", "paths", "--json"))

    def busiest(self):
        return max(self.paths(), key=lambda p: p.get("ios", 0))["name"]

    def close(self):
        for p in [self.daemon, *self.kits.values()]:
            if p is None or p.poll() is not None:
                continue
            try:
                p.send_signal(signal.SIGCONT)
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def apply_fault(cell, case, path, timeline):
    """Apply the case's fault to `path`; later steps go to `timeline`."""
    if case.endswith("-none"):
        pass
    elif case == "file-eio":
        cell.ctl_cmd("fault", "path", path, "error")
    elif case == "file-hang":
        cell.ctl_cmd("fault", "path", path, "hang")
        timeline.append((RELEASE_AFTER, lambda: cell.ctl_cmd("fault", "path", path, "error")))
    elif case == "file-removed":
        os.unlink(cell.files[path])
    elif case == "nbd-kill":
        cell.kits[path].send_signal(signal.SIGKILL)
    elif case == "nbd-stop":
        cell.kits[path].send_signal(signal.SIGSTOP)
    elif case == "nbd-error":
        open(cell.triggers[path], "w").close()
    else:
        raise ValueError(case)


def read_iops_log(prefix):
    """(unix ms, IOPS) per 100 ms window, read and write summed."""
    by_t = {}
    fn = f"{prefix}_iops.1.log"
    if os.path.exists(fn):
        for line in open(fn):
            f = [x.strip() for x in line.split(",")]
            if len(f) >= 2 and f[0].isdigit():
                t = int(f[0])
                by_t[t] = by_t.get(t, 0) + int(f[1])
    return sorted(by_t.items())


def analyse(series, fault_ms, end_ms):
    """IOPS before, lowest 100 ms bucket after, longest time under 50%."""
    before = [v for t, v in series if fault_ms - (FAULT_AT - 1) * 1000 <= t <= fault_ms]
    base = statistics.median(before) if before else 0
    # Windows ending after the fault, but not the last (partial) one; a
    # gap between stamps longer than 1.5 windows counts as zero IOPS.
    after = []
    prev = None
    for t, v in series:
        if prev is not None and t > fault_ms and t <= end_ms - BUCKET_MS:
            if t - prev > 1.5 * BUCKET_MS:
                after.append((prev, prev + (t - prev - BUCKET_MS), 0))
                after.append((t - BUCKET_MS, t, v))
            else:
                after.append((prev, t, v))
        prev = t
    low = min((v for _, _, v in after), default=None)
    longest = cur = 0.0
    for s, e, v in after:
        if v < base / 2:
            cur += e - s
            longest = max(longest, cur)
        else:
            cur = 0.0
    return base, low, longest


def run_cell(w, img, case, transport, job):
    jid, _, args = job
    cell = Cell(w, img, case, transport)
    prefix = os.path.join(cell.w, jid)
    try:
        cmd = ["fio", "--output-format=json", f"--name={jid}", "--ioengine=nbd",
               f"--uri={cell.uri}", "--time_based", f"--runtime={RUNTIME:g}",
               f"--size={SIZE}", "--norandommap", "--randrepeat=0",
               "--continue_on_error=all", f"--write_iops_log={prefix}",
               f"--log_avg_msec={BUCKET_MS}", "--log_unix_epoch=1"] + args
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        t0 = time.time()
        time.sleep(FAULT_AT - 0.5)
        path = cell.busiest()
        time.sleep(max(0.0, t0 + FAULT_AT - time.time()))
        fault_wall = time.time()
        timeline = []
        apply_fault(cell, case, path, timeline)
        for after, step in timeline:
            time.sleep(max(0.0, fault_wall + after - time.time()))
            if p.poll() is None:
                step()
        try:
            out, err = p.communicate(timeout=RUNTIME + 60)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            raise RuntimeError(f"fio did not end within {RUNTIME + 60:g} s")
        end_wall = time.time()
        paths = cell.paths()
    finally:
        cell.close()
    if p.returncode != 0 and "{" not in out:
        raise RuntimeError(f"fio exit {p.returncode}: {err.strip()[-400:]}")
    d = json.loads(out[out.index("{"):])["jobs"][0]
    errors = d.get("total_err", 0) or 0
    if d.get("error", 0) and not errors:
        errors = 1
    worst_ms = max(d[k]["lat_ns"]["max"] for k in ("read", "write")) / 1e6
    series = read_iops_log(prefix)
    fault_ms = int(fault_wall * 1000)
    base, low, under = analyse(series, fault_ms, int(end_wall * 1000))
    return {
        "path": path,
        "iops_before": base,
        "iops_low_after": low,
        "under_half_ms": under,
        "worst_latency_ms": worst_ms,
        "errors": errors,
        "iops_total": d["read"]["iops"] + d["write"]["iops"],
        "fio_stderr": err.strip()[-400:],
        "series": [[t - fault_ms, v] for t, v in series],
        "paths_after": [{k: q.get(k) for k in ("name", "state", "dm_state", "ios", "errors",
                                                "failures", "stuck", "reason")} for q in paths],
    }


def main():
    w = tempfile.mkdtemp(prefix="umpath-stall.", dir=os.environ.get("BENCH_DIR", "/tmp"))
    img = os.path.join(w, "lun0.img")
    results = {}
    try:
        with open(img, "wb") as f:
            for _ in range(SIZE >> 24):
                f.write(os.urandom(1 << 24))
        for case, transport, _ in CASES:
            if transport == "nbd" and not HAVE_NBDKIT:
                continue
            for job in JOBS:
                try:
                    r = run_cell(w, img, case, transport, job)
                except Exception as e:  # report the cell and go on
                    r = {"failed": str(e)}
                log(f"{case} {job[0]}: " + json.dumps({k: v for k, v in r.items()
                                                        if k not in ("series", "paths_after")}))
                results.setdefault(case, {})[job[0]] = r
    finally:
        if KEEP:
            log(f"kept {w}")
        else:
            shutil.rmtree(w, ignore_errors=True)
    return results


results = main()


def ms(v):
    if v is None:
        return "n/a"
    return f"{v / 1000:.2f} s" if v >= 1000 else f"{v:.0f} ms"


lines = ["| case | job | IOPS before | lowest 100 ms IOPS after | time under 50% | worst latency | errors |",
         "|---|---|---:|---:|---:|---:|---:|"]
for case, _, label in CASES:
    for jid, jlabel, _ in JOBS:
        r = results.get(case, {}).get(jid)
        if r is None:
            continue
        if "failed" in r:
            lines.append(f"| {label} | {jlabel} | failed: {r['failed'][:80]} | | | | |")
            continue
        lines.append(f"| {label} | {jlabel} | {r['iops_before']:,.0f} | "
                     f"{r['iops_low_after'] if r['iops_low_after'] is not None else 'n/a':,} | "
                     f"{ms(r['under_half_ms'])} | {ms(r['worst_latency_ms'])} | {r['errors']} |")
md = [f"Failover stall (fio nbd engine; {RUNTIME:g} s per cell, the fault {FAULT_AT:g} s in, on the "
      f"path that carried the IO; `path_grouping_policy {POLICY}`, io_timeout {IO_TIMEOUT} s, "
      "polling_interval 1; IOPS per 100 ms):", ""] + lines
text = "\n".join(md) + "\n"
print(text)
with open(os.path.join(OUT, "stall.md"), "w") as f:
    f.write(text)
with open(os.path.join(OUT, "stall.json"), "w") as f:
    json.dump({"runtime_s": RUNTIME, "fault_at_s": FAULT_AT, "release_after_s": RELEASE_AFTER,
               "io_timeout_s": IO_TIMEOUT, "policy": POLICY, "bucket_ms": BUCKET_MS,
               "date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(),
               "cases": {c: {"label": l, "jobs": results.get(c, {})} for c, _, l in CASES}},
              f, indent=1)
log(f"written {OUT}/stall.md and {OUT}/stall.json")
bad = [(c, j) for c, js in results.items() for j, r in js.items() if "failed" in r or r["errors"]]
if bad:
    log(f"cells with errors or failures: {bad}")
    sys.exit(1)
PY
