#!/usr/bin/env bash
# umpath's iSCSI initiator against qemu's libiscsi driver, in one run
# (issue 14, item 5). One target (Debian's tgtd, one daemon per portal on
# loopback, a 1 GiB image of random data, a CHAP account) reached:
#   - through umpath: two `iscsi` paths (one per portal, the QuantaStor
#     stanza: round-robin over both), exported over NBD;
#   - through qemu's libiscsi driver on one portal: qemu-storage-daemon
#     with an `iscsi` blockdev exported over NBD, so both are driven the
#     same way (fio's nbd engine, one connection);
#   - and `qemu-img bench` (libiscsi, sequential only) for the 1M read.
# Jobs: 4k randread QD32, 4k randwrite QD32, 1M sequential read QD8.
#
#   benches/iscsi_vs_libiscsi.sh
#
# Output: a markdown table (IOPS, MiB/s for 1M, umpath / libiscsi) on
# stdout and in $OUT/iscsi.md and $OUT/iscsi.json (OUT: target/bench).
# Environment: RUNTIME=5 (seconds per cell), UMPATH=PATH (default: the
# release build, built here), KEEP=1 (keep the scratch directory).
# Needs: python3, fio (nbd engine), tgt, qemu-storage-daemon and
# qemu-img with the iscsi driver (qemu-block-extra).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for b in python3 fio tgtd tgtadm qemu-storage-daemon qemu-img setpriv; do
  command -v "$b" >/dev/null || [ -x "/usr/sbin/$b" ] || missing+=("$b")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "missing: ${missing[*]}; install with: apt-get install python3 fio tgt qemu-utils qemu-block-extra util-linux" >&2
  exit 1
fi
if ! qemu-img --help 2>/dev/null | grep -qw iscsi; then
  echo "qemu-img has no iscsi driver: apt-get install qemu-block-extra (the version of qemu-utils)" >&2
  exit 1
fi
if [ -z "${UMPATH:-}" ]; then
  cargo build --release --quiet
  UMPATH=target/release/umpath
fi
export UMPATH OUT="${OUT:-target/bench}" RUNTIME="${RUNTIME:-5}"
mkdir -p "$OUT"
exec python3 - <<'PY'
import json, os, random, shutil, signal, socket, subprocess, sys, tempfile, time

UMPATH = os.path.abspath(os.environ["UMPATH"])
OUT = os.environ["OUT"]
RUNTIME = int(os.environ["RUNTIME"])
IQN = "iqn.2026-11.com.example:bench"
USER, SECRET = "bench", "bench_chap_secret"
SCSI_ID = "6000c29abcdef0010000000000000042"
WWID = "3" + SCSI_ID
JOBS = [("4k-randread-qd32", "4k randread QD32", "randread", "4k", 32),
        ("4k-randwrite-qd32", "4k randwrite QD32", "randwrite", "4k", 32),
        ("1m-read-qd8", "1M seq read QD8", "read", "1M", 8)]
procs = []

def log(m):
    print(m, file=sys.stderr, flush=True)

def free_addr():
    for _ in range(100):
        ip = f"127.{random.randint(64, 127)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
        s = socket.socket()
        try:
            s.bind((ip, 3260))
            return ip
        except OSError:
            pass
        finally:
            s.close()
    sys.exit("no free loopback address for a portal")

def tgtd(w, i, img):
    ip = free_addr()
    for _ in range(20):
        ctl = random.randint(10000, 32767)
        p = subprocess.Popen(["setpriv", "--pdeathsig", "KILL", "tgtd", "-f", "-C", str(ctl),
                              "--iscsi", f"portal={ip}:3260"],
                             stdout=open(os.path.join(w, f"tgtd{i}.log"), "wb"), stderr=subprocess.STDOUT)
        time.sleep(0.5)
        if p.poll() is None:
            break
    procs.append(p)
    def adm(*a):
        subprocess.run(["tgtadm", "-C", str(ctl), "--lld", "iscsi", *a], check=True)
    for _ in range(50):
        if subprocess.run(["tgtadm", "-C", str(ctl), "--lld", "iscsi", "--op", "show", "--mode", "target"],
                          capture_output=True).returncode == 0:
            break
        time.sleep(0.1)
    adm("--op", "new", "--mode", "target", "--tid", "1", "-T", IQN)
    adm("--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "-b", img)
    adm("--op", "update", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "--params",
        f"vendor_id=OSNEXUS,product_id=QUANTASTOR,scsi_sn=QS0042,scsi_id={SCSI_ID}")
    adm("--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL")
    adm("--op", "new", "--mode", "account", "--user", USER, "--password", SECRET)
    adm("--op", "bind", "--mode", "account", "--tid", "1", "--user", USER)
    return ip

def wait_socket(path, p, what):
    for _ in range(300):
        if os.path.exists(path):
            return
        if p.poll() is not None:
            sys.exit(f"{what} exited ({p.returncode})")
        time.sleep(0.1)
    sys.exit(f"{what} did not open {path}")

def fio(uri, rw, bs, qd):
    out = subprocess.run(["fio", "--name=j", "--ioengine=nbd", f"--uri={uri}", f"--rw={rw}", f"--bs={bs}",
                          f"--iodepth={qd}", "--time_based", f"--runtime={RUNTIME}", "--ramp_time=1",
                          "--output-format=json"], capture_output=True, text=True, check=True).stdout
    j = json.loads(out[out.index("{"):])["jobs"][0]
    part = j["read"] if "read" in rw else j["write"]
    return {"iops": part["iops"], "mib_s": part["bw_bytes"] / (1 << 20)}

def main():
    w = tempfile.mkdtemp(prefix="umpath-iscsi.")
    try:
        img = os.path.join(w, "lun.img")
        log(f"writing a 1 GiB image of random data in {w}")
        with open(img, "wb") as f:
            for _ in range(64):
                f.write(os.urandom(1 << 24))
        ips = [tgtd(w, i, img) for i in range(2)]
        def conf_for(name, ips):
          paths = "".join(f"""    path {{
        name q{i}
        transport iscsi
        portal {ip}:3260
        target {IQN}
        lun 1
        chap_user {USER}
        chap_secret "{SECRET}"
    }}
""" for i, ip in enumerate(ips))
          conf = os.path.join(w, f"{name}.conf")
          with open(conf, "w") as f:
            f.write(f"""defaults {{
    polling_interval 5
}}
devices {{
    device {{
          vendor                  "OSNEXUS"
          product                 "QUANTASTOR"
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
        wwid "{WWID}"
        alias qs0
    }}
}}
paths {{
{paths}}}
""")
          return conf
        def umpath(name, ips):
            sock = os.path.join(w, f"{name}.sock")
            p = subprocess.Popen([UMPATH, "--control-socket", os.path.join(w, f"{name}.ctl"), "daemon",
                                  "--config", conf_for(name, ips), "--nbd-socket", sock],
                                 env=dict(os.environ, UMPATH_LOG="warn"), stdout=subprocess.DEVNULL,
                                 stderr=open(os.path.join(w, f"{name}.log"), "wb"))
            procs.append(p)
            wait_socket(sock, p, name)
            return sock
        sock = umpath("umpath", ips)
        sock1 = umpath("umpath1", ips[:1])
        qsock = os.path.join(w, "qsd.sock")
        q = subprocess.Popen(["qemu-storage-daemon", "--object", f"secret,id=s0,data={SECRET}",
                              "--blockdev", f"driver=iscsi,node-name=d0,transport=tcp,portal={ips[0]}:3260,"
                              f"target={IQN},lun=1,user={USER},password-secret=s0,"
                              "initiator-name=iqn.2026-11.org.umpath:libiscsi-bench",
                              "--nbd-server", f"addr.type=unix,addr.path={qsock}",
                              "--export", "type=nbd,id=e0,node-name=d0,name=lun0,writable=on"],
                             stdout=subprocess.DEVNULL, stderr=open(os.path.join(w, "qsd.log"), "wb"))
        procs.append(q)
        wait_socket(qsock, q, "qemu-storage-daemon")
        servers = {"umpath": f"nbd+unix:///qs0?socket={sock}", "umpath1": f"nbd+unix:///qs0?socket={sock1}",
                   "libiscsi": f"nbd+unix:///lun0?socket={qsock}"}
        rows = {}
        for jid, label, rw, bs, qd in JOBS:
            for name, uri in servers.items():
                rows.setdefault(jid, {})[name] = fio(uri, rw, bs, qd)
                log(f"{jid} {name}: {rows[jid][name]}")
        # qemu-img bench: libiscsi alone, no NBD hop (sequential 1M reads).
        t0 = time.monotonic()
        n = 2000
        subprocess.run(["qemu-img", "bench", "-f", "raw", "-t", "none", "-c", str(n), "-d", "8", "-s", "1M",
                        f"iscsi://{USER}%{SECRET}@{ips[0]}:3260/{IQN}/1"], check=True, capture_output=True)
        bench = n / (time.monotonic() - t0)
        lines = ["| job | umpath, 2 iSCSI paths | umpath, 1 path | qemu libiscsi, 1 path | umpath 2 paths / libiscsi | umpath 1 path / libiscsi |",
                 "|---|---:|---:|---:|---:|---:|"]
        for jid, label, rw, bs, qd in JOBS:
            u, u1, l = rows[jid]["umpath"], rows[jid]["umpath1"], rows[jid]["libiscsi"]
            unit = "mib_s" if bs == "1M" else "iops"
            fmt = (lambda v: f"{v:,.0f} MiB/s") if unit == "mib_s" else (lambda v: f"{v:,.0f}")
            lines.append(f"| {label} | {fmt(u[unit])} | {fmt(u1[unit])} | {fmt(l[unit])} | "
                         f"{u[unit] / l[unit]:.2f}x | {u1[unit] / l[unit]:.2f}x |")
        u, u1 = rows["1m-read-qd8"]["umpath"]["mib_s"], rows["1m-read-qd8"]["umpath1"]["mib_s"]
        lines.append(f"| 1M seq read QD8 against `qemu-img bench` (libiscsi without the NBD hop) | {u:,.0f} MiB/s | "
                     f"{u1:,.0f} MiB/s | {bench:,.0f} MiB/s | {u / bench:.2f}x | {u1 / bench:.2f}x |")
        md = "\n".join(lines) + "\n"
        print(md)
        with open(os.path.join(OUT, "iscsi.md"), "w") as f:
            f.write(md)
        with open(os.path.join(OUT, "iscsi.json"), "w") as f:
            json.dump({"fio": rows, "qemu_img_bench_1m_read_mib_s": bench}, f, indent=1)
    finally:
        for p in reversed(procs):
            try:
                p.send_signal(signal.SIGKILL if p.args[0] == "setpriv" else signal.SIGTERM)
                p.wait(timeout=10)
            except Exception:
                p.kill()
        if os.environ.get("KEEP"):
            log(f"kept {w}")
        else:
            shutil.rmtree(w, ignore_errors=True)

main()
PY
