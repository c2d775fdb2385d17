//! NBD over TCP with TLS (NBD_OPT_STARTTLS) against the real daemon:
//! qemu-io, qemu-img and nbdinfo with X.509 client certificates, the
//! per-export allow-list, and the refusals (plain clients where TLS is
//! required, a certificate from another CA, a name not on the list, a
//! handshake that never finishes, garbage, plaintext smuggled after
//! STARTTLS), each while a verifying fio job runs on the Unix socket.
//!
//! Certificates are made here with `openssl`. The kernel client
//! (nbd-client's -certfile/-keyfile/-cacertfile) needs the nbd module: it
//! is tested in the VM (tests/vm_tls.rs).

// A test crate: a failed unwrap, expect or panic is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use umpath::nbd::proto;

// ---------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------

fn openssl(dir: &Path, args: &[&str]) {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("openssl").is_file()));
    assert!(
        found,
        "openssl is not installed (it makes the test certificates): apt-get install openssl"
    );
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

/// A self-signed CA in `dir` (ca-cert.pem, ca-key.pem).
fn make_ca(dir: &Path, cn: &str) {
    std::fs::create_dir_all(dir).unwrap();
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca-key.pem",
            "-out",
            "ca-cert.pem",
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

/// A certificate `name`-cert.pem / `name`-key.pem in `out`, signed by the
/// CA in `ca`.
fn make_cert(ca: &Path, out: &Path, name: &str, cn: &str, server: bool, serial: u32) {
    std::fs::create_dir_all(out).unwrap();
    let ext = out.join(format!("{name}.ext"));
    let usage = if server {
        "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
    } else {
        "extendedKeyUsage=clientAuth\n"
    };
    std::fs::write(
        &ext,
        format!(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n{usage}"
        ),
    )
    .unwrap();
    let key = out.join(format!("{name}-key.pem"));
    let csr = out.join(format!("{name}.csr"));
    let cert = out.join(format!("{name}-cert.pem"));
    openssl(
        out,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            csr.to_str().unwrap(),
            "-subj",
            &format!("/CN={cn}"),
        ],
    );
    openssl(
        out,
        &[
            "x509",
            "-req",
            "-in",
            csr.to_str().unwrap(),
            "-CA",
            ca.join("ca-cert.pem").to_str().unwrap(),
            "-CAkey",
            ca.join("ca-key.pem").to_str().unwrap(),
            "-set_serial",
            &serial.to_string(),
            "-days",
            "2",
            "-out",
            cert.to_str().unwrap(),
            "-extfile",
            ext.to_str().unwrap(),
        ],
    );
}

/// The test PKI: a CA with a server certificate for 127.0.0.1/localhost,
/// client directories (ca-cert.pem, client-cert.pem, client-key.pem, as
/// qemu and libnbd expect) for CN client1 and CN other, and `rogue`: a
/// client1 certificate from another CA.
struct Pki {
    ca: PathBuf,
    server: PathBuf,
    client1: PathBuf,
    other: PathBuf,
    rogue: PathBuf,
    rogue_qemu: PathBuf,
}

impl Pki {
    fn new(root: &Path) -> Pki {
        let ca = root.join("ca");
        make_ca(&ca, "umpath test CA");
        let server = root.join("server");
        make_cert(&ca, &server, "server", "localhost", true, 1);
        let client = |name: &str, cn: &str, ca_dir: &Path, serial| {
            let d = root.join(name);
            make_cert(ca_dir, &d, "client", cn, false, serial);
            // The client trusts the real CA (it verifies the server).
            std::fs::copy(ca.join("ca-cert.pem"), d.join("ca-cert.pem")).unwrap();
            d
        };
        let client1 = client("client1", "client1", &ca, 2);
        let other = client("other", "other", &ca, 3);
        let evil_ca = root.join("evil-ca");
        make_ca(&evil_ca, "another CA");
        let rogue = client("rogue", "client1", &evil_ca, 4);
        // qemu checks its own certificate against its ca-cert.pem: give
        // it both CAs so it gets as far as the server.
        let both = [ca.join("ca-cert.pem"), evil_ca.join("ca-cert.pem")]
            .map(|p| std::fs::read_to_string(p).unwrap())
            .concat();
        let rogue_qemu = root.join("rogue-qemu");
        std::fs::create_dir_all(&rogue_qemu).unwrap();
        for f in ["client-cert.pem", "client-key.pem"] {
            std::fs::copy(rogue.join(f), rogue_qemu.join(f)).unwrap();
        }
        std::fs::write(rogue_qemu.join("ca-cert.pem"), both).unwrap();
        Pki {
            server,
            client1,
            other,
            rogue,
            rogue_qemu,
            ca,
        }
    }

    fn server_args(&self) -> Vec<String> {
        vec![
            "--nbd-tls-cert".into(),
            self.server.join("server-cert.pem").display().to_string(),
            "--nbd-tls-key".into(),
            self.server.join("server-key.pem").display().to_string(),
            "--nbd-tls-ca".into(),
            self.ca.join("ca-cert.pem").display().to_string(),
        ]
    }
}

// ---------------------------------------------------------------------------
// The daemon with TCP
// ---------------------------------------------------------------------------

const IMG_SIZE: u64 = 64 << 20;

/// Starts the daemon on a two-path lun0 with `--nbd-listen 127.0.0.1:0`
/// and `extra` flags; returns it and the TCP port it bound.
fn start(dir: tempfile::TempDir, extra: &[String]) -> (Daemon, u16) {
    let img = dir.path().join("lun0.img");
    make_image(&img, IMG_SIZE);
    let cfg = seed_config(
        "    polling_interval 1",
        &[file_path("p0", &img), file_path("p1", &img)],
    );
    let mut args = vec!["--nbd-listen".to_string(), "127.0.0.1:0".to_string()];
    args.extend(extra.iter().cloned());
    let d = Daemon::start_with(
        dir,
        &cfg,
        Launch {
            args,
            ..Launch::default()
        },
    );
    let log = d.log_text();
    let port = log
        .lines()
        .find(|l| l.contains("NBD listening on TCP"))
        .and_then(|l| l.split("addr=127.0.0.1:").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no TCP port in the log:\n{log}"));
    (d, port)
}

/// `--object tls-creds-x509,...` and the image options of lun0 over TLS.
fn qemu_tls_args(port: u16, creds: &Path) -> [String; 4] {
    [
        "--object".into(),
        format!(
            "tls-creds-x509,id=tls0,dir={},endpoint=client",
            creds.display()
        ),
        "--image-opts".into(),
        format!("driver=nbd,host=127.0.0.1,port={port},export=lun0,tls-creds=tls0"),
    ]
}

fn nbds(port: u16, export: &str, creds: &Path) -> String {
    format!(
        "nbds://127.0.0.1:{port}/{export}?tls-certificates={}",
        creds.display()
    )
}

/// fio's nbd engine on the Unix socket (it cannot do TLS): 4k random
/// writes over [32M, 48M) at a bounded rate, then a crc32c verify.
fn fio_beside(d: &Daemon) -> Child {
    need("fio");
    Command::new("fio")
        .args([
            "--name=beside",
            "--ioengine=nbd",
            &format!("--uri={}", d.uri("lun0")),
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=16",
            "--offset=32M",
            "--size=16M",
            "--rate_iops=1500",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--verify_state_save=0",
            "--do_verify=1",
            "--output-format=json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start fio")
}

/// Waits for fio and asserts it finished with zero errors.
fn fio_ok(child: Child) {
    let out = child.wait_with_output().expect("fio");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fio failed ({}): {}\n{stdout}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(&stdout[stdout.find('{').unwrap_or(0)..]).expect("fio json");
    assert_eq!(v["jobs"][0]["error"], 0, "fio errors: {stdout}");
    assert!(
        v["jobs"][0]["write"]["io_bytes"].as_u64().unwrap_or(0) > 0,
        "fio wrote nothing"
    );
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Waits until the log has `needle`, or fails with the log.
fn wait_log(d: &Daemon, needle: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if d.log_text().contains(needle) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no {needle:?} in the daemon log:\n{}", d.log_text());
}

/// A raw TCP client: greeting, fixed newstyle flags.
fn raw(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut g = [0u8; proto::GREETING_LEN];
    s.read_exact(&mut g).unwrap();
    proto::decode_greeting(&g).unwrap();
    s.write_all(&(proto::FLAG_C_FIXED_NEWSTYLE | proto::FLAG_C_NO_ZEROES).to_be_bytes())
        .unwrap();
    s
}

/// Sends one option and reads one reply: (reply type, message).
fn option(s: &mut (impl Read + Write), opt: u32, payload: &[u8]) -> (u32, String) {
    let mut out = Vec::new();
    proto::encode_option(&mut out, opt, payload);
    s.write_all(&out).unwrap();
    s.flush().unwrap();
    let mut h = [0u8; proto::OPTION_REPLY_HEADER_LEN];
    s.read_exact(&mut h).unwrap();
    let h = proto::OptionReplyHeader::decode(&h).unwrap();
    let mut p = vec![0u8; h.len as usize];
    s.read_exact(&mut p).unwrap();
    assert_eq!(h.option, opt);
    (h.reply, String::from_utf8_lossy(&p).into_owned())
}

/// Sends one option and reads its replies up to the ACK or an error.
fn replies(s: &mut (impl Read + Write), opt: u32, payload: &[u8]) -> Vec<(u32, String)> {
    let mut v = vec![option(s, opt, payload)];
    while v
        .last()
        .is_some_and(|(r, _)| *r == proto::REP_SERVER || *r == proto::REP_INFO)
    {
        let mut h = [0u8; proto::OPTION_REPLY_HEADER_LEN];
        s.read_exact(&mut h).unwrap();
        let h = proto::OptionReplyHeader::decode(&h).unwrap();
        let mut p = vec![0u8; h.len as usize];
        s.read_exact(&mut p).unwrap();
        v.push((h.reply, String::from_utf8_lossy(&p).into_owned()));
    }
    v
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS client in Rust (rustls): STARTTLS, then a handshake with the
/// certificate in `dir` (client-cert.pem, client-key.pem), trusting its
/// ca-cert.pem. It always sends its certificate, whatever CA names the
/// server hints (GnuTLS clients send none that does not fit the hints).
fn tls_client(port: u16, dir: &Path) -> Tls {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut s = raw(port);
    assert_eq!(option(&mut s, proto::OPT_STARTTLS, b"").0, proto::REP_ACK);
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(dir.join("ca-cert.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let chain: Vec<_> = CertificateDer::pem_file_iter(dir.join("client-cert.pem"))
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("client-key.pem")).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let conn = rustls::ClientConnection::new(
        std::sync::Arc::new(cfg),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    rustls::StreamOwned::new(conn, s)
}

/// Reads until EOF or error; true if the peer closed within `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut b = [0u8; 4096];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// qemu-io, qemu-img and nbdinfo read and write over TLS with client1's
/// certificate while fio verifies on the Unix socket.
#[test]
fn qemu_and_nbdinfo_over_tls() {
    need("qemu-io");
    need("qemu-img");
    need("nbdinfo");
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"));
    let mut args = pki.server_args();
    args.extend(["--nbd-allow".into(), "lun0=cn:client1".into()]);
    let (d, port) = start(dir, &args);
    let fio = fio_beside(&d);

    // qemu-io writes a pattern over TLS and reads it back.
    let t0 = Instant::now();
    let mut c = Command::new("qemu-io");
    c.args(qemu_tls_args(port, &pki.client1)).args([
        "-c",
        "write -P 0xa5 1M 2M",
        "-c",
        "read -P 0xa5 1M 2M",
    ]);
    let out = run_ok(&mut c);
    assert!(!out.contains("Pattern verification failed"), "{out}");
    let qemu_io_time = t0.elapsed();

    // qemu-img writes a local image into the export over TLS ...
    let src = d.dir.path().join("pattern.img");
    std::fs::write(&src, vec![0x5au8; 4 << 20]).unwrap();
    let tls = qemu_tls_args(port, &pki.client1);
    run_ok(Command::new("qemu-img").args([
        "convert",
        "-n",
        "-f",
        "raw",
        "--object",
        &tls[1],
        "--target-image-opts",
        src.to_str().unwrap(),
        &tls[3],
    ]));
    // ... which qemu-io reads back over TLS, and qemu-img info sees.
    let mut c = Command::new("qemu-io");
    c.args(qemu_tls_args(port, &pki.client1))
        .args(["-c", "read -P 0x5a 0 4M"]);
    let out = run_ok(&mut c);
    assert!(!out.contains("Pattern verification failed"), "{out}");
    let info = run_ok(Command::new("qemu-img").args([
        "info",
        "--object",
        &tls[1],
        "--image-opts",
        &tls[3],
    ]));
    assert!(info.contains("64 MiB"), "{info}");

    // nbdinfo with an nbds:// URI.
    let out = run_ok(Command::new("nbdinfo").arg(nbds(port, "lun0", &pki.client1)));
    assert!(out.contains(&format!("export-size: {IMG_SIZE}")), "{out}");
    let out = run_ok(
        Command::new("nbdinfo")
            .arg("--list")
            .arg(nbds(port, "", &pki.client1)),
    );
    assert!(out.contains("export=\"lun0\""), "{out}");
    let out = run_ok(
        Command::new("nbdinfo")
            .arg("--size")
            .arg(nbds(port, "lun0", &pki.client1)),
    );
    assert_eq!(out.trim(), IMG_SIZE.to_string());

    fio_ok(fio);
    let log = d.log_text();
    assert!(log.contains("TLS established"), "{log}");
    assert!(log.contains("client_cert=client1"), "{log}");
    // qemu-io twice, qemu-img convert and info, nbdinfo twice (and a
    // list, which never enters transmission).
    let tls_sessions = log.matches("tls=true").count();
    assert!(tls_sessions >= 6, "{tls_sessions} TLS sessions:\n{log}");
    assert!(log.matches("TLS established").count() >= 7, "{log}");
    eprintln!("qemu-io write+read 2 MiB over TLS: {qemu_io_time:?}");
}

/// TLS required on TCP: plain clients, a certificate from another CA, a
/// client not on the allow-list, a handshake that never finishes, garbage
/// and smuggled plaintext are each refused with a log line; fio on the
/// Unix socket sees no error and the daemon's fds and memory stay put.
#[test]
fn refusals_while_fio_verifies() {
    need("qemu-io");
    need("nbdinfo");
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"));
    let mut args = pki.server_args();
    args.extend([
        "--nbd-tls".into(),
        "require".into(),
        "--nbd-tls-timeout".into(),
        "2".into(),
        "--nbd-allow".into(),
        "lun0=cn:client1".into(),
    ]);
    let (d, port) = start(dir, &args);
    let pid = d.child.id();
    let fds0 = open_fds(pid);
    let rss0 = rss_kib(pid);
    let fio = fio_beside(&d);

    // A plain nbdinfo and a plain qemu-io are told TLS is required.
    let o = run(Command::new("nbdinfo").arg(format!("nbd://127.0.0.1:{port}/lun0")));
    assert!(!o.status.success(), "plain nbdinfo got in: {}", text(&o));
    let o = run(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "read 0 4k",
        &format!("nbd://127.0.0.1:{port}/lun0"),
    ]));
    assert!(
        !o.status.success() || String::from_utf8_lossy(&o.stdout).contains("failed"),
        "plain qemu-io got in: {}",
        text(&o)
    );
    wait_log(
        &d,
        "plain-text option refused: TLS is required",
        Duration::from_secs(5),
    );

    // Raw: options before STARTTLS get ERR_TLS_REQD; EXPORT_NAME closes.
    let mut s = raw(port);
    assert_eq!(
        option(&mut s, proto::OPT_LIST, b"").0,
        proto::REP_ERR_TLS_REQD
    );
    let mut go = Vec::new();
    proto::encode_info_request(&mut go, proto::OPT_GO, "lun0", &[]);
    assert_eq!(
        option(&mut s, proto::OPT_GO, &go[proto::OPTION_HEADER_LEN..]).0,
        proto::REP_ERR_TLS_REQD
    );
    let mut out = Vec::new();
    proto::encode_option(&mut out, proto::OPT_EXPORT_NAME, b"lun0");
    s.write_all(&out).unwrap();
    assert!(
        closed_within(&mut s, Duration::from_secs(5)),
        "EXPORT_NAME before TLS must close"
    );
    wait_log(
        &d,
        "NBD_OPT_EXPORT_NAME before STARTTLS",
        Duration::from_secs(5),
    );

    // A client1 certificate from another CA fails the handshake.
    let o = run(Command::new("nbdinfo").arg(nbds(port, "lun0", &pki.rogue)));
    assert!(!o.status.success(), "rogue CA got in: {}", text(&o));
    let o = run(Command::new("qemu-io")
        .args(qemu_tls_args(port, &pki.rogue_qemu))
        .args(["-c", "read 0 4k"]));
    assert!(!o.status.success(), "rogue CA got in (qemu): {}", text(&o));
    // A client that sends its certificate anyway is rejected by the
    // server's verification.
    let mut t = tls_client(port, &pki.rogue);
    let mut out = Vec::new();
    proto::encode_option(&mut out, proto::OPT_LIST, b"");
    let _ = t.write_all(&out).and_then(|_| t.flush());
    let mut b = [0u8; 1];
    assert!(
        !matches!(t.read(&mut b), Ok(n) if n > 0),
        "a certificate from another CA was accepted"
    );
    wait_log(&d, "invalid peer certificate", Duration::from_secs(5));
    let failed = d.log_text().matches("TLS handshake failed").count();
    assert!(
        failed >= 3,
        "{failed} failed handshakes logged:\n{}",
        d.log_text()
    );

    // CN other is not on lun0's list: it sees no export and cannot open it.
    let o = run_ok(
        Command::new("nbdinfo")
            .arg("--list")
            .arg(nbds(port, "", &pki.other)),
    );
    assert!(!o.contains("lun0"), "other sees lun0: {o}");
    let o = run(Command::new("nbdinfo").arg(nbds(port, "lun0", &pki.other)));
    assert!(!o.status.success(), "other opened lun0: {}", text(&o));
    let o = run(Command::new("qemu-io")
        .args(qemu_tls_args(port, &pki.other))
        .args(["-c", "read 0 4k"]));
    assert!(
        !o.status.success(),
        "other opened lun0 (qemu): {}",
        text(&o)
    );
    wait_log(
        &d,
        "export refused: the client is not on its allow-list",
        Duration::from_secs(5),
    );

    // STARTTLS, then nothing: closed at the 2 s deadline.
    let mut stalled = Vec::new();
    for _ in 0..8 {
        let mut s = raw(port);
        assert_eq!(option(&mut s, proto::OPT_STARTTLS, b"").0, proto::REP_ACK);
        stalled.push(s);
    }
    let t0 = Instant::now();
    for s in &mut stalled {
        assert!(
            closed_within(s, Duration::from_secs(6)),
            "stalled handshake kept open"
        );
    }
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(5),
        "closed after {waited:?}, deadline 2 s"
    );
    wait_log(
        &d,
        "TLS handshake not finished within 2s",
        Duration::from_secs(5),
    );

    // STARTTLS then garbage instead of a ClientHello.
    let mut s = raw(port);
    assert_eq!(option(&mut s, proto::OPT_STARTTLS, b"").0, proto::REP_ACK);
    s.write_all(&[0x42; 512]).unwrap();
    assert!(
        closed_within(&mut s, Duration::from_secs(5)),
        "garbage kept open"
    );

    // Plaintext smuggled behind STARTTLS (sent before the ACK) closes.
    let mut s = raw(port);
    let mut out = Vec::new();
    proto::encode_option(&mut out, proto::OPT_STARTTLS, b"");
    proto::encode_option(&mut out, proto::OPT_LIST, b"");
    s.write_all(&out).unwrap();
    assert!(
        closed_within(&mut s, Duration::from_secs(5)),
        "smuggled option kept open"
    );
    wait_log(&d, "sent after NBD_OPT_STARTTLS", Duration::from_secs(5));

    // Inside TLS: a second STARTTLS is invalid, options work again, lun0
    // is listed for client1, and GO enters transmission.
    let mut t = tls_client(port, &pki.client1);
    assert_eq!(
        option(&mut t, proto::OPT_STARTTLS, b"").0,
        proto::REP_ERR_INVALID
    );
    let list = replies(&mut t, proto::OPT_LIST, b"");
    assert!(
        list.iter()
            .any(|(r, p)| *r == proto::REP_SERVER && p.contains("lun0")),
        "{list:?}"
    );
    let mut go = Vec::new();
    proto::encode_info_request(&mut go, proto::OPT_GO, "", &[]);
    let r = replies(&mut t, proto::OPT_GO, &go[proto::OPTION_HEADER_LEN..]);
    assert_eq!(
        r.last().map(|x| x.0),
        Some(proto::REP_ACK),
        "GO over TLS: {r:?}"
    );
    // Transmission: a 4 KiB read answered with a simple reply.
    let req = proto::RequestHeader {
        flags: 0,
        command: proto::Command::Read,
        cookie: 7,
        offset: 0,
        len: 4096,
    };
    t.write_all(&req.encode()).unwrap();
    t.flush().unwrap();
    let mut reply = vec![0u8; proto::SIMPLE_REPLY_LEN + 4096];
    t.read_exact(&mut reply).unwrap();
    assert_eq!(&reply[..4], &proto::SIMPLE_REPLY_MAGIC.to_be_bytes());
    assert_eq!(&reply[4..8], &[0, 0, 0, 0], "read error over TLS");
    drop(t);

    // The good TLS client still gets in after all that.
    let out = run_ok(
        Command::new("nbdinfo")
            .arg("--size")
            .arg(nbds(port, "lun0", &pki.client1)),
    );
    assert_eq!(out.trim(), IMG_SIZE.to_string());

    fio_ok(fio);
    // Bounds: every refused connection was closed; memory did not grow.
    std::thread::sleep(Duration::from_millis(300));
    let fds1 = open_fds(pid);
    let rss1 = rss_kib(pid);
    assert!(fds1 <= fds0 + 4, "fds {fds0} -> {fds1}");
    assert!(rss1 < rss0 + 256 * 1024, "RSS {rss0} KiB -> {rss1} KiB");
    eprintln!("fds {fds0} -> {fds1}, RSS {rss0} KiB -> {rss1} KiB, stalled handshakes closed after {waited:?}");
}

/// Optional TLS on loopback (the default with a certificate): plain and
/// TLS clients both work; an address rule lets a plain loopback client in.
#[test]
fn optional_on_loopback_and_address_rules() {
    need("nbdinfo");
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"));
    let mut args = pki.server_args();
    args.extend([
        "--nbd-allow".into(),
        "lun0=cn:other+addr:10.0.0.0/8,addr:127.0.0.1".into(),
    ]);
    let (d, port) = start(dir, &args);
    wait_log(&d, "tls=optional", Duration::from_secs(1));
    let plain = format!("nbd://127.0.0.1:{port}/lun0");
    let out = run_ok(Command::new("nbdinfo").arg("--size").arg(&plain));
    assert_eq!(out.trim(), IMG_SIZE.to_string());
    // TLS clients from 127.0.0.1 match addr:127.0.0.1 whatever their name;
    // `other` alone would need 10.0.0.0/8.
    let out = run_ok(
        Command::new("nbdinfo")
            .arg("--size")
            .arg(nbds(port, "lun0", &pki.other)),
    );
    assert_eq!(out.trim(), IMG_SIZE.to_string());
    // qemu-io writes over plain loopback TCP too.
    need("qemu-io");
    run_ok(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "write -P 0x11 0 64k",
        "-c",
        "read -P 0x11 0 64k",
        &plain,
    ]));
}

/// The daemon refuses to start with plain TCP on a non-loopback address,
/// with `--nbd-tls optional` there, or with unusable files, and says why.
#[test]
fn start_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"));
    let img = dir.path().join("lun0.img");
    make_image(&img, 1 << 20);
    let config = dir.path().join("multipath.conf");
    std::fs::write(&config, seed_config("", &[file_path("p0", &img)])).unwrap();
    let attempt = |extra: &[&str]| -> String {
        let mut c = Command::new(BIN);
        c.arg("--control-socket")
            .arg(dir.path().join("c.sock"))
            .arg("daemon")
            .arg("--config")
            .arg(&config)
            .arg("--nbd-socket")
            .arg(dir.path().join("n.sock"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                let mut e = String::new();
                child.stderr.take().unwrap().read_to_string(&mut e).unwrap();
                assert!(!st.success(), "{extra:?} started:\n{e}");
                return e;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{extra:?}: the daemon started");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let cert = pki.server.join("server-cert.pem");
    let key = pki.server.join("server-key.pem");
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let e = attempt(&["--nbd-listen", "0.0.0.0:0"]);
    assert!(e.contains("requires TLS"), "{e}");
    let e = attempt(&[
        "--nbd-listen",
        "0.0.0.0:0",
        "--nbd-tls-cert",
        cert,
        "--nbd-tls-key",
        key,
        "--nbd-tls",
        "optional",
    ]);
    assert!(e.contains("requires --nbd-tls require"), "{e}");
    let e = attempt(&["--nbd-listen", "127.0.0.1:0", "--nbd-tls", "require"]);
    assert!(e.contains("needs a server certificate"), "{e}");
    let e = attempt(&[
        "--nbd-listen",
        "127.0.0.1:0",
        "--nbd-allow",
        "lun0=cn:client1",
    ]);
    assert!(e.contains("--nbd-tls-ca"), "{e}");
    // A key file that is not a key: the error names the file, not its bytes.
    let e = attempt(&[
        "--nbd-listen",
        "127.0.0.1:0",
        "--nbd-tls-cert",
        cert,
        "--nbd-tls-key",
        cert,
    ]);
    assert!(e.contains("no usable PEM private key"), "{e}");
    assert!(!e.contains("BEGIN"), "{e}");
    let e = attempt(&[
        "--nbd-listen",
        "127.0.0.1:0",
        "--nbd-tls-cert",
        key,
        "--nbd-tls-key",
        key,
    ]);
    assert!(e.contains("no PEM certificate"), "{e}");
}
