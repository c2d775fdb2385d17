#!/usr/bin/env bash
# One benchmark table in one run (issue 13, item 4): umpath with two `file`
# paths on one 1 GiB image of real data, against nbdkit's file plugin,
# qemu-nbd and nbd-server serving the same image over Unix sockets, and
# the local limit (fio's psync and io_uring engines on the image itself,
# page cache warm, --invalidate=0). The servers are driven by fio's nbd
# engine (libnbd), one connection per fio job.
#
#   benches/table.sh
#
# Jobs (rows): 4k randread QD1 and QD32, 4k randwrite QD1 and QD32, 64k
# randrw 70/30 QD16, 1M sequential read and write QD8, 4k randread QD32
# over 4 connections (numjobs=4: each fio job opens its own connection;
# the local columns run 4 jobs on the file). psync is synchronous, so its
# "QD" is always 1 per job; the local limit is the better of psync and
# io_uring.
#
# Output: a markdown table of IOPS with the ratios umpath / best NBD
# server and umpath / local limit, and a second table of server CPU time
# per IO (utime+stime of the server and its children from /proc, measured
# after the ramp; `perf stat -e instructions` is used as well where the
# CPU exposes the counter). Written to stdout and to
# $OUT/table.md and $OUT/table.json (OUT defaults to target/bench).
#
# Environment:
#   RUNTIME=5          seconds per cell (after RAMP)
#   RAMP=1             fio ramp_time per cell
#   ROUNDS=3           each cell is run this many times; a round starts at
#                      another column (servers and local engines rotate)
#                      and `sync` runs before every cell, so no column always
#                      inherits the previous one's writeback; the table
#                      shows the median and the per-round ratio's range
#   BENCH_DIR=/tmp     where the scratch directory (image, sockets) goes;
#                      it needs 1 GiB free
#   ONLY=a,b           run only these job ids (e.g. 4k-randread-qd1)
#   UMPATH=PATH        use this umpath binary (default: release build here)
#   UMPATH_DIRECT_LINE a path keyword that makes a `file` path use O_DIRECT
#                      (default "direct yes"); if `umpath check-config`
#                      does not accept it, the O_DIRECT column is n/a
#   DIRECT_DIR=DIR     where the O_DIRECT column's image goes when BENCH_DIR
#                      is tmpfs or ramfs (no O_DIRECT, or one that is a
#                      page-cache copy): a copy of the image on this
#                      disk-backed directory (default: $OUT); the table
#                      says which directory and filesystem it used
#   ALLOW_MISSING=1    run without missing peers (their columns are n/a)
#   KEEP=1             keep the scratch directory
# Needs: python3, fio (with the nbd engine), nbdkit, qemu-nbd, nbd-server.
set -euo pipefail
cd "$(dirname "$0")/.."

# command -> Debian/Ubuntu package
declare -A PKG=([python3]=python3 [fio]=fio [nbdkit]=nbdkit [qemu-nbd]=qemu-utils [nbd-server]=nbd-server)
missing=()
for b in python3 fio nbdkit qemu-nbd nbd-server; do
  command -v "$b" >/dev/null || missing+=("$b")
done
if command -v fio >/dev/null && ! fio --enghelp=nbd 2>/dev/null | grep -q uri; then
  echo "fio has no nbd engine (Debian's fio has it; built from source it needs libnbd-dev)" >&2
  exit 1
fi
if [ ${#missing[@]} -gt 0 ]; then
  pk=$(for m in "${missing[@]}"; do printf '%s ' "${PKG[$m]}"; done)
  echo "missing: ${missing[*]}; install with: apt-get install ${pk% }" >&2
  for m in "${missing[@]}"; do
    case $m in python3 | fio) exit 1 ;; esac
  done
  [ "${ALLOW_MISSING:-0}" = 1 ] || { echo "(or ALLOW_MISSING=1 to leave their columns n/a)" >&2; exit 1; }
fi
if [ -z "${UMPATH:-}" ]; then
  cargo build --release --quiet --bin umpath
  UMPATH=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/umpath
fi
export UMPATH OUT=${OUT:-$PWD/target/bench}
mkdir -p "$OUT"

exec python3 - <<'PY'
import json, os, shutil, signal, socket, subprocess, sys, tempfile, time

UMPATH = os.environ["UMPATH"]
OUT = os.environ["OUT"]
RUNTIME = float(os.environ.get("RUNTIME", "5"))
RAMP = float(os.environ.get("RAMP", "1"))
ONLY = [j for j in os.environ.get("ONLY", "").split(",") if j]
DIRECT_LINE = os.environ.get("UMPATH_DIRECT_LINE", "direct yes")
KEEP = os.environ.get("KEEP") == "1"
ROUNDS = max(1, int(os.environ.get("ROUNDS", "3")))
TICK = os.sysconf("SC_CLK_TCK")
SIZE = 1 << 30

# id, label, fio rw, bs, iodepth, numjobs, extra fio args
JOBS = [
    ("4k-randread-qd1", "4k randread QD1", "randread", "4k", 1, 1, []),
    ("4k-randread-qd32", "4k randread QD32", "randread", "4k", 32, 1, []),
    ("4k-randwrite-qd1", "4k randwrite QD1", "randwrite", "4k", 1, 1, []),
    ("4k-randwrite-qd32", "4k randwrite QD32", "randwrite", "4k", 32, 1, []),
    ("64k-randrw-qd16", "64k randrw 70/30 QD16", "randrw", "64k", 16, 1, ["--rwmixread=70"]),
    ("1m-read-qd8", "1M seq read QD8", "read", "1M", 8, 1, []),
    ("1m-write-qd8", "1M seq write QD8", "write", "1M", 8, 1, []),
    ("4k-randread-qd32-4conn", "4k randread QD32 x 4 conns", "randread", "4k", 32, 4, []),
]
if ONLY:
    JOBS = [j for j in JOBS if j[0] in ONLY]
SERVERS = ["umpath", "umpath-threads", "umpath-direct", "nbdkit", "qemu-nbd", "nbd-server"]
PEERS = ["nbdkit", "qemu-nbd", "nbd-server"]
LOCAL = ["psync", "io_uring"]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def tree_cpu(pid):
    """CPU seconds of pid, its reaped children and its live descendants."""
    total = 0.0
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
            # utime stime cutime cstime: fields 14-17
            total += sum(int(x) for x in rest[11:15]) / TICK
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    stack.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def perf_instructions_supported():
    if not shutil.which("perf"):
        return False
    r = subprocess.run(["perf", "stat", "-x,", "-e", "instructions", "--", "true"],
                       capture_output=True, text=True)
    return r.returncode == 0 and any(l.split(",")[0].strip().isdigit() for l in r.stderr.splitlines())


PERF = perf_instructions_supported()


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


def umpath_config(img, extra):
    paths = "".join(
        f"""    path {{
        name p{i}
        transport file
        file {img}
{extra}        vendor "OSNEXUS"
        product "QUANTASTOR"
        wwid "36000c29abcdef001"
    }}
""" for i in range(2))
    return f"""defaults {{
    polling_interval 5
}}
devices {{
    device {{
          vendor                  "OSNEXUS"
          product                 "QUANTASTOR"
          getuid_callout          "/sbin/scsi_id -g -u -s /block/%n"
          path_selector           "round-robin 0"
          path_grouping_policy    multibus
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
{paths}}}
"""


class Server:
    def __init__(self, name, pid, sock, proc, note=""):
        self.name, self.pid, self.sock, self.proc, self.note = name, pid, sock, proc, note

    @property
    def uri(self):
        return f"nbd+unix:///lun0?socket={self.sock}"


def fs_type(path):
    r = subprocess.run(["stat", "-f", "-c", "%T", path], capture_output=True, text=True)
    return r.stdout.strip() or "unknown"


def direct_image(w, img):
    """The image the O_DIRECT column serves: `img` itself when its
    filesystem is disk-backed, else a copy under DIRECT_DIR (default OUT).
    Returns (path, note, scratch dir to remove or None)."""
    ft = fs_type(w)
    if ft not in ("tmpfs", "ramfs"):
        return img, f"the same image, on {ft}", None
    base = os.environ.get("DIRECT_DIR", OUT)
    dft = fs_type(base)
    if dft in ("tmpfs", "ramfs"):
        return None, f"n/a (BENCH_DIR and DIRECT_DIR {base} are {dft})", None
    d = tempfile.mkdtemp(prefix="umpath-table-direct.", dir=base)
    dimg = os.path.join(d, "lun0.img")
    log(f"BENCH_DIR is {ft}: copying the image to {d} ({dft}) for the O_DIRECT column")
    shutil.copyfile(img, dimg)
    return dimg, f"a copy of the image in {base} ({dft}; BENCH_DIR is {ft})", d


def start_servers(w, img, direct_img):
    servers = {}
    notes = {}

    def umpath(name, extra, img=img, engine=None):
        if img is None:
            notes[name] = "n/a: no disk-backed directory for the O_DIRECT image"
            return
        cfg = os.path.join(w, f"{name}.conf")
        with open(cfg, "w") as f:
            f.write(umpath_config(img, extra))
        if extra:
            r = subprocess.run([UMPATH, "check-config", "--config", cfg], capture_output=True, text=True)
            # A keyword umpath does not know is a warning naming it in quotes.
            word = DIRECT_LINE.split()[0]
            said = r.stdout + r.stderr
            if r.returncode != 0 or f"'{word}'" in said:
                notes[name] = (f"n/a: `file` paths have no O_DIRECT option "
                               f"(`{DIRECT_LINE}` refused by check-config)")
                log(f"{name}: {notes[name]}: {said.strip()[:300]}")
                return
        sock = os.path.join(w, f"{name}.sock")
        ctl = os.path.join(w, f"{name}.ctl")
        env = dict(os.environ, UMPATH_LOG=os.environ.get("UMPATH_LOG", "warn"))
        if engine:
            env["UMPATH_IO_ENGINE"] = engine
        p = subprocess.Popen([UMPATH, "--control-socket", ctl, "daemon", "--config", cfg,
                              "--nbd-socket", sock], env=env, stdout=subprocess.DEVNULL,
                             stderr=open(os.path.join(w, f"{name}.log"), "wb"))
        wait_socket(sock, p, name)
        servers[name] = Server(name, p.pid, sock, p)

    umpath("umpath", "")
    # The same map on the IO thread engine (the fallback), side by side.
    umpath("umpath-threads", "", engine="threads")
    umpath("umpath-direct", f"        {DIRECT_LINE}\n", direct_img)

    if shutil.which("nbdkit"):
        sock = os.path.join(w, "nbdkit.sock")
        p = subprocess.Popen(["nbdkit", "--foreground", "--unix", sock, "--exportname", "lun0",
                              "file", img], stderr=open(os.path.join(w, "nbdkit.log"), "wb"))
        wait_socket(sock, p, "nbdkit")
        servers["nbdkit"] = Server("nbdkit", p.pid, sock, p)
    if shutil.which("qemu-nbd"):
        sock = os.path.join(w, "qemu-nbd.sock")
        # -t: stay up after a client leaves; -e 8: several connections.
        p = subprocess.Popen(["qemu-nbd", "-k", sock, "-x", "lun0", "-f", "raw", "-t", "-e", "8",
                              "--cache=writeback", img],
                             stderr=open(os.path.join(w, "qemu-nbd.log"), "wb"))
        wait_socket(sock, p, "qemu-nbd")
        servers["qemu-nbd"] = Server("qemu-nbd", p.pid, sock, p)
    if shutil.which("nbd-server"):
        sock = os.path.join(w, "nbd-server.sock")
        cfg = os.path.join(w, "nbd-server.conf")
        pidf = os.path.join(w, "nbd-server.pid")
        with open(cfg, "w") as f:
            f.write(f"[generic]\nunixsock = {sock}\n[lun0]\nexportname = {img}\n")
        # nbd-server forks a process per client, so it runs as a daemon
        # (-d would serve one client at a time); -p gives us its pid.
        r = subprocess.run(["nbd-server", "-C", cfg, "-p", pidf],
                           stderr=open(os.path.join(w, "nbd-server.log"), "wb"))
        if r.returncode != 0:
            raise RuntimeError(f"nbd-server exited with {r.returncode}; log in {w}")
        wait_socket(sock, None, "nbd-server")
        for _ in range(100):
            if os.path.exists(pidf) and open(pidf).read().strip():
                break
            time.sleep(0.05)
        servers["nbd-server"] = Server("nbd-server", int(open(pidf).read().split()[0]), sock, None)
    return servers, notes


def fio_json(text):
    return json.loads(text[text.index("{"):])


def run_fio(args, pid=None):
    """Run fio; with pid, measure that process tree's CPU after the ramp."""
    cmd = ["fio", "--output-format=json", "--time_based", f"--runtime={RUNTIME:g}",
           f"--ramp_time={RAMP:g}", "--norandommap", "--randrepeat=0", "--group_reporting",
           f"--size={SIZE}"] + args
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cpu0 = perf = None
    if pid is not None:
        time.sleep(RAMP + 0.1)
        cpu0 = tree_cpu(pid)
        if PERF:
            perf = subprocess.Popen(["perf", "stat", "-x,", "-e", "instructions", "-p", str(pid)],
                                    stderr=subprocess.PIPE, text=True)
    out, err = p.communicate()
    instr = None
    if perf is not None:
        perf.send_signal(signal.SIGINT)
        _, perr = perf.communicate()
        for l in perr.splitlines():
            f = l.split(",")
            if len(f) > 2 and f[2] == "instructions" and f[0].strip().isdigit():
                instr = int(f[0])
    if p.returncode != 0:
        raise RuntimeError(f"fio {' '.join(args)}: exit {p.returncode}: {err.strip()[-400:]}")
    time.sleep(0.2)  # let a per-connection child be reaped into cutime
    cpu1 = tree_cpu(pid) if pid is not None else None
    d = fio_json(out)["jobs"][0]
    ios = d["read"]["total_ios"] + d["write"]["total_ios"]
    r = {
        "iops": d["read"]["iops"] + d["write"]["iops"],
        "mib_s": (d["read"]["bw_bytes"] + d["write"]["bw_bytes"]) / (1 << 20),
        "ios": ios,
        "clat_p99_us": max(d[k]["clat_ns"].get("percentile", {}).get("99.000000", 0) for k in ("read", "write")) / 1000,
        "errors": d.get("error", 0),
    }
    if pid is not None and ios:
        r["cpu_us_per_io"] = (cpu1 - cpu0) * 1e6 / ios
        if instr is not None:
            r["instructions_per_io"] = instr / ios
    return r


def median_cell(cells):
    """The round whose IOPS is the median (an error if any round failed),
    with every round's IOPS beside it."""
    if any(c is None for c in cells):
        return None
    bad = [c for c in cells if "error" in c]
    if bad:
        return bad[0]
    ordered = sorted(cells, key=lambda c: c["iops"])
    mid = dict(ordered[(len(ordered) - 1) // 2])
    mid["rounds_iops"] = [c["iops"] for c in cells]
    return mid


def round_ratios(runs):
    """umpath / best NBD server in each round (same round, same state)."""
    out = []
    for i, u in enumerate(runs.get("umpath", [])):
        peers = [runs[p][i]["iops"] for p in PEERS
                 if runs.get(p) and runs[p][i] and "iops" in runs[p][i]]
        if u and "iops" in u and peers and max(peers) > 0:
            out.append(u["iops"] / max(peers))
    return out


def fmt_int(v):
    return f"{v:,.0f}" if isinstance(v, (int, float)) else str(v)


def ratio(a, b):
    return f"{a / b:.2f}x" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else "n/a"


def main():
    w = tempfile.mkdtemp(prefix="umpath-table.", dir=os.environ.get("BENCH_DIR", "/tmp"))
    img = os.path.join(w, "lun0.img")
    servers = {}
    direct_dir = None
    try:
        log(f"writing a 1 GiB image of random data in {w}")
        with open(img, "wb") as f:
            for _ in range(SIZE >> 24):
                f.write(os.urandom(1 << 24))
        direct_img, direct_note, direct_dir = direct_image(w, img)
        servers, notes = start_servers(w, img, direct_img)
        notes.setdefault("direct-image", direct_note)
        with open(img, "rb") as f:  # warm the page cache
            while f.read(1 << 24):
                pass
        results = {}
        rounds = {}
        cols = [c for c in SERVERS] + LOCAL
        for jid, label, rw, bs, qd, nj, extra in JOBS:
            base = [f"--name={jid}", f"--rw={rw}", f"--bs={bs}", f"--iodepth={qd}",
                    f"--numjobs={nj}"] + extra
            runs = {c: [] for c in cols}
            for r in range(ROUNDS):
                # Each round starts at another column, so no server always
                # runs right after the same one; writeback of the previous
                # cell's dirty pages is finished (sync) before each cell.
                order = cols[r % len(cols):] + cols[:r % len(cols)]
                for c in order:
                    if c in SERVERS and c not in servers:
                        runs[c].append(None)
                        continue
                    os.sync()
                    try:
                        if c in SERVERS:
                            srv = servers[c]
                            cell = run_fio(base + ["--ioengine=nbd", f"--uri={srv.uri}"], srv.pid)
                        else:
                            cell = run_fio(base + [f"--ioengine={c}", f"--filename={img}",
                                                   "--invalidate=0"])
                    except Exception as e:  # report the cell and go on
                        log(f"{jid} {c}: {e}")
                        cell = {"error": str(e)}
                    runs[c].append(cell)
                    log(f"{jid} round {r + 1} {c}: {cell}")
            results[jid] = {c: median_cell(v) for c, v in runs.items()}
            rounds[jid] = runs
        return results, rounds, notes, servers
    finally:
        for s in servers.values():
            try:
                os.kill(s.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            if s.proc is not None:
                try:
                    s.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    s.proc.kill()
                    s.proc.wait()
        if KEEP:
            log(f"kept {w}")
        else:
            shutil.rmtree(w, ignore_errors=True)
            if direct_dir:
                shutil.rmtree(direct_dir, ignore_errors=True)


results, rounds, notes, servers = main()


def iops(row, k):
    c = row.get(k)
    if not c:
        return "n/a"
    return c.get("iops", "error")


have_direct = "umpath-direct" in servers
cols = ["umpath", "umpath-threads"] + (["umpath-direct"] if have_direct else []) + PEERS + LOCAL
NAMES = {"umpath": "umpath (io_uring)", "umpath-threads": "umpath (threads)",
         "umpath-direct": "umpath O_DIRECT"}
head = (["job"] + [(NAMES[c] if c in NAMES else f"local {c}" if c in LOCAL else c)
                   for c in cols] + ["umpath / best NBD server", "same, per round (min-max)",
                                     "umpath / local limit"])
if have_direct:
    head += ["umpath O_DIRECT / best NBD server"]
lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
summary = {}
for jid, label, *_ in JOBS:
    row = results[jid]
    vals = {c: iops(row, c) for c in cols}
    peers = [vals[p] for p in PEERS if isinstance(vals[p], float)]
    best = max(peers) if peers else None
    local = [vals[l] for l in LOCAL if isinstance(vals[l], float)]
    limit = max(local) if local else None
    r_peer, r_local = ratio(vals["umpath"], best), ratio(vals["umpath"], limit)
    rr = round_ratios(rounds[jid])
    spread = f"{min(rr):.2f}-{max(rr):.2f}x" if rr else "n/a"
    cells = [label] + [fmt_int(vals[c]) for c in cols] + [r_peer, spread, r_local]
    if have_direct:
        cells.append(ratio(vals["umpath-direct"], best))
    lines.append("| " + " | ".join(cells) + " |")
    summary[jid] = {"umpath_vs_best_server": r_peer, "umpath_vs_local_limit": r_local,
                    "umpath_vs_best_server_per_round": [round(x, 3) for x in rr]}

cpu_cols = [c for c in ["umpath", "umpath-threads"] + (["umpath-direct"] if have_direct else []) + PEERS if c in servers]
instr = any("instructions_per_io" in (results[j[0]].get(c) or {}) for j in JOBS for c in cpu_cols)
cpu_lines = ["| job | " + " | ".join(f"{c} CPU µs/IO" for c in cpu_cols) + " | umpath / nbdkit |"
             + (" umpath / nbdkit (instructions) |" if instr else ""),
             "|---" + "|---:" * (len(cpu_cols) + 1 + (1 if instr else 0)) + "|"]
for jid, label, *_ in JOBS:
    row = results[jid]
    v = {c: (row.get(c) or {}).get("cpu_us_per_io", "n/a") for c in cpu_cols}
    cells = [label] + [f"{v[c]:.2f}" if isinstance(v[c], float) else "n/a" for c in cpu_cols]
    cells.append(ratio(v.get("umpath"), v.get("nbdkit")))
    if instr:
        ins = {c: (row.get(c) or {}).get("instructions_per_io") for c in ("umpath", "nbdkit")}
        cells.append(ratio(ins["umpath"], ins["nbdkit"]))
    cpu_lines.append("| " + " | ".join(cells) + " |")

md = ["IOPS (fio; servers through its nbd engine over a Unix socket; "
      f"{RUNTIME:g} s per cell after a {RAMP:g} s ramp; 1 GiB image in the page cache; "
      f"the median of {ROUNDS} round(s), each starting at another column, sync before each cell):", ""]
md += lines
md += ["", "Server CPU time per IO (utime+stime from /proc after the ramp, children included; "
       "lower is better; umpath / nbdkit below 1 means umpath is cheaper):", ""]
md += cpu_lines
if not PERF:
    md += ["", "(`perf stat -e instructions` not available here: CPU time only.)"]
# Multi-connection scaling: 4 connections at QD32 against one.
scaling = {}
for c in ("umpath", "umpath-threads", "nbdkit"):
    one = iops(results.get("4k-randread-qd32", {}), c)
    four = iops(results.get("4k-randread-qd32-4conn", {}), c)
    if isinstance(one, float) and isinstance(four, float) and one > 0:
        scaling[c] = round(four / one, 2)
if scaling:
    md += ["", "4k randread QD32, 4 connections / 1 connection: "
           + ", ".join(f"{NAMES.get(c, c)} {v:.2f}x" for c, v in scaling.items())
           + f" ({os.cpu_count()} CPUs shared by fio and the server)."]
for n in notes.values():
    md += ["", f"umpath O_DIRECT: {n}"]
text = "\n".join(md) + "\n"
print(text)
with open(os.path.join(OUT, "table.md"), "w") as f:
    f.write(text)
with open(os.path.join(OUT, "table.json"), "w") as f:
    json.dump({"runtime_s": RUNTIME, "ramp_s": RAMP, "date": time.strftime("%Y-%m-%d"),
               "cpus": os.cpu_count(), "perf_instructions": PERF, "notes": notes,
               "four_conn_scaling": scaling,
               "jobs": {j[0]: {"label": j[1], "results": results[j[0]], **summary[j[0]]} for j in JOBS}},
              f, indent=2)
log(f"written {OUT}/table.md and {OUT}/table.json")
errs = [(j, c) for j in results for c, v in results[j].items() if v and "error" in v]
if errs:
    log(f"cells that failed: {errs}")
    sys.exit(1)
PY
