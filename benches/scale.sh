#!/usr/bin/env bash
# Scale benchmark (issue 8, item 8): N maps of 4 `file` paths each (one
# sparse image per map, 1 MiB..64 MiB), polling_interval 5, release build.
# For each N it measures
#   - start-up to READY=1 (a NOTIFY_SOCKET datagram socket, as systemd's),
#   - daemon CPU while idle over IDLE_SECONDS (utime+stime from
#     /proc/PID/stat; % of one core),
#   - RSS (VmRSS) and thread count (Threads) from /proc/PID/status,
#   - `show paths --json` latency (control socket, median of 5; and size),
#   - threads under IO: fio 4k random writes at depth 4 on IO_MAPS maps at
#     once (default 64) for IO_SECONDS (default 5), the most threads seen,
#   - a reconfigure that changes one map (adds a 5th path to map 0),
#   - SIGTERM to exit,
# and prints a markdown table on stdout (progress on stderr).
#
#   benches/scale.sh [N ...]            (default: 10 100 1000)
#
# Environment: IDLE_SECONDS (default 30), READY_TIMEOUT (seconds to wait
# for READY=1 per N, default 600), KEEP=1 keeps the scratch directories,
# DIRECT=1 declares the paths `direct yes` (O_DIRECT: all IO on io_uring's
# rings), UMPATH_IO_ENGINE=threads runs the IO thread engine.
# Needs: python3, a Rust toolchain (the release binary is built here).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v python3 >/dev/null || { echo "python3 missing" >&2; exit 1; }
cargo build --release --quiet --bin umpath
UMPATH=$PWD/target/release/umpath
[ $# -gt 0 ] || set -- 10 100 1000

exec python3 - "$UMPATH" "$@" <<'PY'
import json, os, signal, socket, statistics, subprocess, sys, tempfile, time, shutil

UMPATH = sys.argv[1]
NS = [int(x) for x in sys.argv[2:]]
IDLE = float(os.environ.get("IDLE_SECONDS", "30"))
READY_TIMEOUT = float(os.environ.get("READY_TIMEOUT", "600"))
KEEP = os.environ.get("KEEP") == "1"
# Paths with O_DIRECT (`direct yes`): all their IO on io_uring's rings.
DIRECT = os.environ.get("DIRECT") == "1"
# Threads under IO: fio writes to this many maps at once, for this long.
IO_MAPS = int(os.environ.get("IO_MAPS", "64"))
IO_SECONDS = float(os.environ.get("IO_SECONDS", "5"))
TICK = os.sysconf("SC_CLK_TCK")

STANZA = """    device {
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
"""

def raise_nofile():
    # 4 paths per map reserve 4 descriptors each (IO handle, checker,
    # reopen, slack): 1000 maps need more than a 20,000 hard limit leaves
    # for NBD clients. Root may raise the hard limit; others keep theirs.
    import resource
    want = 262144
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
    except (ValueError, OSError):
        pass

def log(*a):
    print(*a, file=sys.stderr, flush=True)

def wwid(i):
    return "36000c29a%08x" % i

def path_entry(name, img, i):
    direct = "        direct yes\n" if DIRECT else ""
    return (f"    path {{\n        name {name}\n        transport file\n{direct}        file {img}\n"
            f"        vendor \"OSNEXUS\"\n        product \"QUANTASTOR\"\n        revision \"0001\"\n"
            f"        wwid \"{wwid(i)}\"\n        serial \"S{i:08x}\"\n    }}\n")

def config(w, n, extra_path_for_map0=False):
    out = ["defaults {\n    polling_interval 5\n}\n", "devices {\n", STANZA, "}\n", "multipaths {\n"]
    for i in range(n):
        out.append(f"    multipath {{\n        wwid \"{wwid(i)}\"\n        alias m{i:04d}\n    }}\n")
    out.append("}\npaths {\n")
    for i in range(n):
        img = os.path.join(w, f"m{i:04d}.img")
        for p in range(4):
            out.append(path_entry(f"m{i:04d}p{p}", img, i))
        if i == 0 and extra_path_for_map0:
            out.append(path_entry(f"m{i:04d}p4", img, i))
    out.append("}\n")
    return "".join(out)

def ctl(sock, line, timeout=600):
    t = time.monotonic()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(sock)
    s.sendall((line + "\n").encode())
    buf = b""
    while True:
        b = s.recv(1 << 20)
        if not b:
            break
        buf += b
    s.close()
    took = time.monotonic() - t
    return json.loads(buf), took, len(buf)

def proc_cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    # fields 14 and 15 (utime, stime) are rest[11], rest[12]
    return (int(rest[11]) + int(rest[12])) / TICK

def proc_status(pid):
    d = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            d[k] = v.strip()
    return d

def one(n):
    w = tempfile.mkdtemp(prefix=f"umpath-scale-{n}-")
    row = {"n": n, "paths": 4 * n}
    proc = None
    try:
        for i in range(n):
            size = (1 << 20) << (i % 7)          # 1, 2, 4, ..., 64 MiB, sparse
            with open(os.path.join(w, f"m{i:04d}.img"), "wb") as f:
                f.truncate(size)
        cfg = os.path.join(w, "multipath.conf")
        with open(cfg, "w") as f:
            f.write(config(w, n))
        ctl_sock = os.path.join(w, "ctl.sock")
        nbd_sock = os.path.join(w, "nbd.sock")
        notify = os.path.join(w, "notify.sock")
        ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        ns.bind(notify)
        env = dict(os.environ, NOTIFY_SOCKET=notify, UMPATH_LOG=os.environ.get("UMPATH_LOG", "warn"))
        logf = open(os.path.join(w, "daemon.log"), "wb")
        t0 = time.monotonic()
        proc = subprocess.Popen([UMPATH, "--control-socket", ctl_sock, "daemon", "--config", cfg,
                                 "--nbd-socket", nbd_sock], env=env, stdout=subprocess.DEVNULL, stderr=logf,
                                preexec_fn=raise_nofile)
        ready = None
        ns.settimeout(1.0)
        while time.monotonic() - t0 < READY_TIMEOUT:
            if proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {proc.returncode} before READY=1; log in {w}/daemon.log")
            try:
                msg = ns.recv(4096).decode(errors="replace")
            except socket.timeout:
                continue
            if "READY=1" in msg:
                ready = time.monotonic() - t0
                break
        if ready is None:
            st = proc_status(proc.pid)
            row["ready_s"] = f"> {READY_TIMEOUT:.0f}"
            row["threads"] = st.get("Threads")
            row["rss_mib"] = "%.0f" % (int(st["VmRSS"].split()[0]) / 1024)
            row["note"] = "no READY=1 in time"
            return row
        row["ready_s"] = "%.2f" % ready
        log(f"N={n}: READY after {ready:.2f} s; idle for {IDLE:.0f} s")
        # Let start-up transients settle (first checks), then measure idle.
        time.sleep(2)
        c0 = proc_cpu(proc.pid)
        t = time.monotonic()
        time.sleep(IDLE)
        c1 = proc_cpu(proc.pid)
        row["idle_cpu_pct"] = "%.2f" % (100.0 * (c1 - c0) / (time.monotonic() - t))
        st = proc_status(proc.pid)
        row["rss_mib"] = "%.1f" % (int(st["VmRSS"].split()[0]) / 1024)
        row["threads"] = st.get("Threads")
        # Threads under IO: 4k random writes at depth 4 on IO_MAPS maps at
        # once (one fio job, one NBD connection, per map).
        if IO_MAPS > 0 and shutil.which("fio"):
            k = min(n, IO_MAPS)
            args = ["fio", "--ioengine=nbd", "--rw=randwrite", "--bs=4k", "--iodepth=4",
                    "--size=1M", "--time_based", f"--runtime={IO_SECONDS:g}",
                    "--group_reporting", "--output-format=json"]
            for i in range(k):
                args += [f"--name=m{i:04d}", f"--uri=nbd+unix:///m{i:04d}?socket={nbd_sock}"]
            fio = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            most = 0
            while fio.poll() is None:
                most = max(most, int(proc_status(proc.pid).get("Threads", "0")))
                time.sleep(0.2)
            out, err = fio.communicate()
            try:
                j = json.loads(out[out.index("{"):])["jobs"][0]
                row["io"] = f"{k} maps, {j['write']['iops']:,.0f} IOPS, {j['error']} errors"
                if j["write"]["iops"] == 0:
                    log(f"fio did no IO: {err.strip()[:500]}")
            except (ValueError, KeyError, IndexError):
                row["io"] = f"fio failed: {err.strip()[:200]}"
            row["threads_io"] = str(most)
            log(f"N={n}: threads under IO on {k} maps: {most} ({row['io']})")
        lat = []
        size = 0
        for _ in range(5):
            r, took, size = ctl(ctl_sock, "show paths --json")
            assert r.get("ok"), r
            lat.append(took)
        row["show_paths_ms"] = "%.1f" % (1000 * statistics.median(lat))
        row["show_paths_kib"] = "%.0f" % (size / 1024)
        r, took, _ = ctl(ctl_sock, "show maps --json")
        row["show_maps_ms"] = "%.1f" % (1000 * took)
        with open(cfg, "w") as f:
            f.write(config(w, n, extra_path_for_map0=True))
        r, took, _ = ctl(ctl_sock, "reconfigure")
        row["reconfigure_ms"] = "%.1f" % (1000 * took) + ("" if r.get("ok") else " (refused)")
        log(f"N={n}: reconfigure answered {took*1000:.1f} ms: {r.get('text','').strip()[:200]}")
        st = proc_status(proc.pid)
        row["threads_after_reconf"] = st.get("Threads")
        t = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=90)
            row["sigterm_s"] = "%.2f" % (time.monotonic() - t) + ("" if rc == 0 else f" (exit {rc})")
        except subprocess.TimeoutExpired:
            row["sigterm_s"] = "> 90 (killed)"
            proc.kill()
            proc.wait()
        return row
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if KEEP:
            log(f"kept {w}")
        else:
            shutil.rmtree(w, ignore_errors=True)

COLS = [("n", "maps"), ("paths", "paths"), ("ready_s", "start-up to READY (s)"),
        ("idle_cpu_pct", "idle CPU (% of a core)"), ("rss_mib", "RSS (MiB)"),
        ("threads", "threads"), ("threads_io", "threads under IO (most)"), ("io", "IO"),
        ("show_paths_ms", "show paths --json (ms, median of 5)"),
        ("show_paths_kib", "its size (KiB)"), ("show_maps_ms", "show maps --json (ms)"),
        ("reconfigure_ms", "reconfigure changing one map (ms)"),
        ("threads_after_reconf", "threads after it"), ("sigterm_s", "SIGTERM to exit (s)"),
        ("note", "note")]

rows = []
for n in NS:
    log(f"N={n}: {4*n} paths ...")
    try:
        rows.append(one(n))
    except Exception as e:  # report and go on with the next N
        rows.append({"n": n, "paths": 4 * n, "note": f"error: {e}"})
    log(json.dumps(rows[-1]))

print("| " + " | ".join(h for _, h in COLS) + " |")
print("|" + "|".join("---:" for _ in COLS) + "|")
for r in rows:
    print("| " + " | ".join(str(r.get(k, "")) for k, _ in COLS) + " |")
PY
