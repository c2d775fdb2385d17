//! The kernel NBD client with TLS: Debian's `nbd-client` (3.24, GnuTLS)
//! with `-certfile`/`-keyfile`/`-cacertfile`/`-tlshostname` against
//! `umpath daemon --nbd-tls require` inside the VM (the host kernel has no
//! nbd module; the guest loads Debian's nbd.ko). See tests/vm/mod.rs for
//! the harness and tests/tls.rs for the same server against qemu and
//! libnbd on the host.
//!
//! The host makes the certificates with `openssl` and writes them into the
//! guest over the command channel. The guest runs a second daemon of its
//! own (control socket /run/tls/control.sock) on a 64 MiB `file` path in
//! /tmp, listening on 127.0.0.1:10810 with TLS required, a CA for client
//! certificates and `--nbd-allow lun0=cn:client1`. Checked: client1
//! connects /dev/nbd1 and reads what the image holds, a write reads back
//! and lands in the image, `nbd-client -d` disconnects; a client without
//! TLS, one with a certificate from another CA and one with CN `other`
//! are refused, each with the daemon's log line.
//!
//! nbd-client does TLS in a userspace proxy (a forked process between a
//! socketpair handed to the kernel and the TCP socket; TLS 1.2 only). That
//! proxy is slow for large requests (about 0.2 MB/s here under TCG, against
//! about 9 MB/s for the same client on the Unix socket): the data check
//! reads a few MiB, not the whole device, and the test prints the rates.

// A test crate: a failed unwrap, expect or panic is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod vm;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use vm::{Vm, VmOptions};

/// Logs a test step with the time since the test started.
fn step(what: &str) {
    static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let t0 = T0.get_or_init(Instant::now);
    eprintln!("[{:6.1}s] {what}", t0.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------
// Certificates (as tests/tls.rs makes them)

fn openssl(dir: &Path, args: &[&str]) {
    common::need("openssl");
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed CA: `name`-cert.pem, `name`-key.pem.
fn make_ca(dir: &Path, name: &str, cn: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}-key.pem"),
            "-out",
            &format!("{name}-cert.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={cn}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// `name`-cert.pem / `name`-key.pem with CN `cn`, signed by CA `ca`.
fn make_cert(dir: &Path, ca: &str, name: &str, cn: &str, server: bool, serial: u32) {
    let usage = if server {
        "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
    } else {
        "extendedKeyUsage=clientAuth\n"
    };
    std::fs::write(
        dir.join(format!("{name}.ext")),
        format!(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n{usage}"
        ),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}-key.pem"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={cn}"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}-cert.pem"),
            "-CAkey",
            &format!("{ca}-key.pem"),
            "-set_serial",
            &serial.to_string(),
            "-days",
            "2",
            "-out",
            &format!("{name}-cert.pem"),
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

/// The files the guest gets, in /etc/tls.
const PKI_FILES: [&str; 9] = [
    "ca-cert.pem",
    "server-cert.pem",
    "server-key.pem",
    "client1-cert.pem",
    "client1-key.pem",
    "other-cert.pem",
    "other-key.pem",
    "rogue-cert.pem",
    "rogue-key.pem",
];

/// CA `ca`; server (127.0.0.1, localhost); clients client1 and other;
/// `rogue`: CN client1 from another CA.
fn make_pki(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    make_ca(dir, "ca", "umpath test CA");
    make_ca(dir, "evil", "another CA");
    make_cert(dir, "ca", "server", "localhost", true, 1);
    make_cert(dir, "ca", "client1", "client1", false, 2);
    make_cert(dir, "ca", "other", "other", false, 3);
    make_cert(dir, "evil", "rogue", "client1", false, 4);
}

// ---------------------------------------------------------------------------
// The guest side

const PORT: u16 = 10810;
const IMG_MIB: u64 = 64;
/// What the data check reads through /dev/nbd1 (the TLS proxy is slow).
const READ_MIB: u64 = 4;
const CTL: &str = "umpath --control-socket /run/tls/control.sock";
const WWID: &str = "36001405000000000000000000000a001";

fn guest_conf() -> String {
    format!(
        "defaults {{\n    polling_interval 1\n}}\nmultipaths {{\n    multipath {{\n        wwid \"{WWID}\"\n        alias lun0\n    }}\n}}\npaths {{\n    path {{\n        name p0\n        transport file\n        file /tmp/tls.img\n        vendor \"OSNEXUS\"\n        product \"QUANTASTOR\"\n        serial \"QS00TLS\"\n        wwid \"{WWID}\"\n    }}\n}}\n"
    )
}

fn b64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// Writes `data` to `dest` in the guest (base64 over the command channel).
fn put_file(vm: &Vm, dest: &str, data: &[u8]) {
    let b64 = b64(data);
    vm.sh_ok(&format!(
        "mkdir -p \"$(dirname {dest})\" && echo '{b64}' | base64 -d > {dest} && chmod 600 {dest}"
    ));
}

/// `nbd-client` to 127.0.0.1:PORT for `lun0` on `dev` with `tls` options;
/// fd 3 (the command channel) is not handed to its proxy.
fn nbd_client(vm: &Vm, dev: &str, tls: &str) -> (vm::Output, Duration) {
    let t = Instant::now();
    let o = vm.sh_timeout(
        &format!("exec 3>&-; cd /etc/tls && nbd-client 127.0.0.1 {PORT} {dev} -N lun0 {tls} 2>&1"),
        Duration::from_secs(60),
    );
    (o, t.elapsed())
}

fn tls_opts(cert: &str) -> String {
    format!(
        "-certfile {cert}-cert.pem -keyfile {cert}-key.pem -cacertfile ca-cert.pem -tlshostname 127.0.0.1"
    )
}

fn daemon_log(vm: &Vm) -> String {
    vm.sh("cat /run/tls/umpath.log").out
}

fn wait_log(vm: &Vm, needle: &str) {
    vm.wait_for(
        &format!("guest daemon log: {needle:?}"),
        Duration::from_secs(20),
        || daemon_log(vm).contains(needle),
    );
}

fn device_sectors(vm: &Vm, dev: &str) -> u64 {
    vm.sh_ok(&format!("cat /sys/block/{dev}/size"))
        .trim()
        .parse()
        .expect("a sector count")
}

/// A refused client: non-zero exit, the device left unconfigured, no
/// nbd-client process left behind.
fn assert_refused(vm: &Vm, what: &str, o: &vm::Output) {
    assert_ne!(o.rc, 0, "{what}: nbd-client succeeded:\n{}", o.out);
    assert_eq!(device_sectors(vm, "nbd0"), 0, "{what}: nbd0 configured");
    vm.wait_for(
        &format!("{what}: no nbd-client left"),
        Duration::from_secs(10),
        || vm.sh("pidof nbd-client").rc != 0,
    );
}

#[test]
fn vm_nbd_client_certificate_options() {
    vm::need_qemu();
    let pki = vm::target_dir().join("vm-runs").join("tls-pki");
    let _ = std::fs::remove_dir_all(&pki);
    make_pki(&pki);
    step("certificates made");

    // No SCSI daemon: this test runs its own TLS daemon.
    let vm = Vm::boot(VmOptions {
        name: "nbd-client-tls".into(),
        multipath_conf: String::new(),
        image_size: 1 << 20,
        prepare_image: |_| {},
        append: "vm.nodaemon".into(),
        extra_modules: "",
    });
    step(&format!("booted in {:.1?}", vm.boot_time));
    let help = vm.sh("nbd-client -h 2>&1").out;
    for o in ["-certfile", "-keyfile", "-cacertfile", "-tlshostname"] {
        assert!(help.contains(o), "nbd-client -h lacks {o}:\n{help}");
    }

    for f in PKI_FILES {
        put_file(
            &vm,
            &format!("/etc/tls/{f}"),
            &std::fs::read(pki.join(f)).unwrap(),
        );
    }
    put_file(&vm, "/run/tls/multipath.conf", guest_conf().as_bytes());
    let t = Instant::now();
    vm.sh_ok(&format!(
        "dd if=/dev/urandom of=/tmp/tls.img bs=1M count={IMG_MIB} 2>/dev/null
         exec 3>&-
         NO_COLOR=1 UMPATH_LOG=info setsid {CTL} daemon --config /run/tls/multipath.conf \
           --nbd-socket /run/tls/nbd.sock --nbd-listen 127.0.0.1:{PORT} --nbd-tls require \
           --nbd-tls-cert /etc/tls/server-cert.pem --nbd-tls-key /etc/tls/server-key.pem \
           --nbd-tls-ca /etc/tls/ca-cert.pem --nbd-allow lun0=cn:client1 \
           > /run/tls/umpath.log 2>&1 < /dev/null &"
    ));
    vm.wait_for("TLS daemon ready", Duration::from_secs(60), || {
        daemon_log(&vm).contains("umpath ready")
    });
    assert!(
        daemon_log(&vm).contains(&format!(
            "NBD listening on TCP addr=127.0.0.1:{PORT} tls=require"
        )),
        "{}",
        daemon_log(&vm)
    );
    step(&format!("TLS daemon up in {:.1?}", t.elapsed()));

    // Refusals first (on nbd0).
    let (o, d) = nbd_client(&vm, "/dev/nbd0", "");
    assert_refused(&vm, "no TLS", &o);
    assert!(o.out.contains("TLS is required"), "{}", o.out);
    wait_log(&vm, "plain-text option refused: TLS is required");
    step(&format!("no TLS: refused in {d:.1?}: {}", o.out.trim()));

    // GnuTLS sends no certificate the server's CA list does not name:
    // the handshake fails for want of one.
    let (o, d) = nbd_client(&vm, "/dev/nbd0", &tls_opts("rogue"));
    assert_refused(&vm, "certificate from another CA", &o);
    wait_log(&vm, "TLS handshake failed");
    step(&format!("another CA: refused in {d:.1?}: {}", o.out.trim()));

    let (o, d) = nbd_client(&vm, "/dev/nbd0", &tls_opts("other"));
    assert_refused(&vm, "CN other", &o);
    assert!(o.out.contains("unknown export"), "{}", o.out);
    wait_log(&vm, "export refused: the client is not on its allow-list");
    assert!(daemon_log(&vm).contains("client_cert=other"));
    step(&format!("CN other: refused in {d:.1?}: {}", o.out.trim()));

    // client1 gets in.
    let (o, d) = nbd_client(&vm, "/dev/nbd1", &tls_opts("client1"));
    assert_eq!(o.rc, 0, "client1: {}\n{}", o.out, daemon_log(&vm));
    assert!(o.out.contains("Connected /dev/nbd1"), "{}", o.out);
    assert_eq!(device_sectors(&vm, "nbd1"), IMG_MIB << 11);
    let log = daemon_log(&vm);
    assert!(log.contains("client_cert=client1"), "{log}");
    assert!(log.contains("tls=true"), "{log}");
    step(&format!("client1 connected /dev/nbd1 in {d:.1?}"));

    // Read: the device holds what the image does.
    let t = Instant::now();
    let md5 = vm.sh_timeout(
        &format!(
            "dd if=/dev/nbd1 bs=1M count={READ_MIB} 2>/dev/null | md5sum; \
             dd if=/tmp/tls.img bs=1M count={READ_MIB} 2>/dev/null | md5sum; \
             dd if=/dev/nbd1 bs=4k count=1 skip=$(({IMG_MIB} * 256 - 1)) iflag=direct 2>/dev/null | md5sum; \
             dd if=/tmp/tls.img bs=4k count=1 skip=$(({IMG_MIB} * 256 - 1)) 2>/dev/null | md5sum"
        ),
        Duration::from_secs(240),
    );
    let took = t.elapsed();
    assert_eq!(md5.rc, 0, "{}", md5.out);
    let sums: Vec<&str> = md5
        .out
        .lines()
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(sums.len(), 4, "{}", md5.out);
    assert_eq!(sums[0], sums[1], "first {READ_MIB} MiB differ");
    assert_eq!(sums[2], sums[3], "last 4 KiB differ");
    step(&format!(
        "read {READ_MIB} MiB + the last 4 KiB through TLS in {took:.1?} ({:.2} MB/s); md5 matches the image",
        (READ_MIB << 20) as f64 / took.as_secs_f64() / 1e6
    ));

    // Write 64 KiB at 8 MiB (O_DIRECT), read it back, find it in the image.
    let t = Instant::now();
    let w = vm.sh_timeout(
        "dd if=/dev/urandom of=/tmp/blk bs=64k count=1 2>/dev/null
         dd if=/tmp/blk of=/dev/nbd1 bs=64k seek=128 count=1 oflag=direct conv=fsync 2>&1 || exit 1
         md5sum < /tmp/blk
         dd if=/dev/nbd1 bs=64k skip=128 count=1 iflag=direct 2>/dev/null | md5sum
         dd if=/tmp/tls.img bs=64k skip=128 count=1 2>/dev/null | md5sum",
        Duration::from_secs(120),
    );
    let took = t.elapsed();
    assert_eq!(w.rc, 0, "{}", w.out);
    let sums: Vec<&str> = w
        .out
        .lines()
        .filter(|l| l.len() >= 32 && l.chars().take(32).all(|c| c.is_ascii_hexdigit()))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(sums.len(), 3, "{}", w.out);
    assert_eq!(
        sums[0], sums[1],
        "64 KiB written at 8 MiB reads back different"
    );
    assert_eq!(
        sums[0], sums[2],
        "64 KiB written at 8 MiB is not in the image"
    );
    let st = vm.sh_ok(&format!("{CTL} show stats"));
    step(&format!(
        "wrote 64 KiB, read it back, found it in the image in {took:.1?}\n{st}"
    ));

    // Disconnect: the device goes, the proxy exits, the daemon sees it.
    let t = Instant::now();
    let o = vm.sh("exec 3>&-; nbd-client -d /dev/nbd1 2>&1");
    assert_eq!(o.rc, 0, "nbd-client -d: {}", o.out);
    vm.wait_for("nbd1 disconnected", Duration::from_secs(20), || {
        device_sectors(&vm, "nbd1") == 0 && vm.sh("pidof nbd-client").rc != 0
    });
    wait_log(&vm, "connection closed");
    step(&format!(
        "nbd-client -d: disconnected in {:.1?}",
        t.elapsed()
    ));

    let log = daemon_log(&vm);
    assert!(!log.contains("ERROR"), "{log}");
    assert!(
        !log.contains("-----BEGIN"),
        "key material in the log:\n{log}"
    );
}
