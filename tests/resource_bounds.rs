//! The attacks of issue 9 on connections, memory and descriptors, against
//! the real daemon while a well-behaved fio verify job runs beside them:
//! idle sockets up to the descriptor limit, connection caps, WRITE headers
//! without payload, clients that never read their replies, and memory
//! after the burst. Each asserts zero fio errors, healthy paths, the
//! daemon's bounds (RSS, open descriptors) and a log line about the
//! attackers.

// A test crate: a failed unwrap, expect or panic is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use common::*;
use umpath::nbd::proto;

const MIB: u64 = 1024;

fn daemon(args: &[&str], nofile: Option<u64>) -> Daemon {
    two_path_daemon(Launch {
        args: args.iter().map(|s| s.to_string()).collect(),
        nofile,
        ..Launch::default()
    })
}

/// True once the server closes `s` (EOF or reset) within `within`.
fn closed_within(s: &mut UnixStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut b = [0u8; 4096];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

fn request(command: proto::Command, cookie: u64, offset: u64, len: u32) -> [u8; 28] {
    proto::RequestHeader {
        flags: 0,
        command,
        cookie,
        offset,
        len,
    }
    .encode()
}

/// The verifying fio job beside an attack (tests/common).
fn fio_lun0(d: &Daemon, size: &str, rate: &str) -> Child {
    fio_verify(&d.uri("lun0"), size, rate, 16, &[])
}

/// Waits until fio's IO reaches the paths (fio probes the export on a
/// connection of its own first, then connects for the job).
fn wait_fio_io(d: &Daemon) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.ios("p0") + d.ios("p1") < 100 {
        assert!(Instant::now() < deadline, "fio never got going");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn paths_healthy(d: &Daemon) {
    for p in d.paths_json() {
        assert!(
            p["state"] == "ready" && p["dm_state"] == "active",
            "path not healthy: {p}\n--- daemon log ---\n{}",
            d.log_text()
        );
    }
}

fn qemu_io_works(d: &Daemon) {
    run_ok(&mut qemu_io(
        d,
        &["write -P 0x77 0 1M", "read -P 0x77 0 1M"],
    ));
}

/// (a) A thousand connections that never send a byte, against a daemon
/// limited to 256 descriptors: it accepts what its descriptor budget
/// allows (the rest are refused at once), closes the silent ones at the
/// handshake deadline, and its paths and the fio client never notice.
#[test]
fn idle_sockets_up_to_the_descriptor_limit() {
    let d = daemon(
        &[
            "--nbd-handshake-timeout",
            "2",
            "--nbd-max-connections-per-uid",
            "5000",
            "--nbd-max-connections",
            "5000",
        ],
        Some(256),
    );
    let pid = d.child.id();
    let idle_fds = open_fds(pid);
    let fio = fio_lun0(&d, "24M", "1500");
    wait_fio_io(&d);
    let start = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..1000 {
        if let Ok(s) = UnixStream::connect(&d.nbd_socket) {
            idle.push(s);
        }
    }
    let mut max_fds = 0;
    while start.elapsed() < Duration::from_millis(1500) {
        max_fds = max_fds.max(open_fds(pid));
        std::thread::sleep(Duration::from_millis(50));
    }
    paths_healthy(&d);
    let log = d.log_text();
    assert!(
        log.contains("refusing NBD client") && log.contains("descriptors open"),
        "no refusal logged:\n{log}"
    );
    assert!(max_fds < 256, "daemon at {max_fds} descriptors");
    // The silent ones are closed at the deadline (2 s), not before.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !d
        .log_text()
        .contains("no NBD handshake within 2 s; closing")
    {
        assert!(Instant::now() < deadline, "no handshake deadline line");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let after_fds = open_fds(pid);
    let eof = idle
        .iter_mut()
        .map(|s| closed_within(s, Duration::from_millis(20)))
        .filter(|&c| c)
        .count();
    assert_eq!(eof, idle.len(), "every idle connection was closed");
    paths_healthy(&d);
    fio_ok(fio, &d);
    qemu_io_works(&d);
    eprintln!(
        "idle sockets: descriptors idle {idle_fds}, peak {max_fds} (limit 256), after {after_fds}"
    );
    assert!(after_fds <= idle_fds + 8, "descriptors after: {after_fds}");
    // One refusal line per interval, not one per client.
    let lines = d.log_text().matches("refusing NBD client").count();
    assert!(lines <= 3, "{lines} refusal lines");
}

/// The connection caps: per uid on the Unix socket, and global (TCP
/// connections have no uid).
#[test]
fn connection_caps_refuse_with_a_log_line() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let d = daemon(
        &[
            "--nbd-max-connections-per-uid",
            "2",
            "--nbd-max-connections",
            "3",
            "--nbd-listen",
            &port.to_string(),
        ],
        None,
    );
    let a = nbd_handshake(&d.nbd_socket);
    let b = nbd_handshake(&d.nbd_socket);
    let mut c = UnixStream::connect(&d.nbd_socket).unwrap();
    assert!(
        closed_within(&mut c, Duration::from_secs(5)),
        "3rd same-uid client kept"
    );
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    assert!(d.log_text().contains(&format!(
        "uid {uid} has 2 connections (the maximum per uid)"
    )));
    let t1 = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut g = [0u8; proto::GREETING_LEN];
    (&t1).read_exact(&mut g).unwrap();
    let mut t2 = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    t2.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(
        matches!(t2.read(&mut g), Ok(0) | Err(_)),
        "4th client over the global cap kept"
    );
    assert!(d
        .log_text()
        .contains("the server has 3 connections (the maximum)"));
    // Room again once a client leaves.
    drop((a, t1));
    std::thread::sleep(Duration::from_millis(200));
    let _c = nbd_handshake(&d.nbd_socket);
    drop(b);
}

/// (b) 32 clients send a 32 MiB WRITE header and no payload: the headers
/// reserve nothing, the clients are closed at the payload deadline.
#[test]
fn write_headers_without_payload() {
    let d = daemon(&["--nbd-payload-timeout", "3"], None);
    let pid = d.child.id();
    let idle = rss_kib(pid);
    let fio = fio_lun0(&d, "16M", "1500");
    wait_fio_io(&d);
    let mut stallers: Vec<UnixStream> = (0..32)
        .map(|i| {
            let mut s = nbd_handshake(&d.nbd_socket);
            s.write_all(&request(proto::Command::Write, i, 0, 32 << 20))
                .unwrap();
            s
        })
        .collect();
    let sent = Instant::now();
    let mut peak = 0;
    while sent.elapsed() < Duration::from_secs(2) {
        peak = peak.max(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(50));
    }
    paths_healthy(&d);
    for s in &mut stallers {
        assert!(
            closed_within(s, Duration::from_secs(8)),
            "a staller was kept"
        );
    }
    let closed_after = sent.elapsed();
    assert!(
        closed_after >= Duration::from_millis(2500),
        "closed before the deadline: {closed_after:?}"
    );
    let log = d.log_text();
    assert!(
        log.contains("client sent 0 of 33554432 payload bytes, then nothing for 3 s; closing"),
        "no stall line:\n{log}"
    );
    fio_ok(fio, &d);
    paths_healthy(&d);
    eprintln!(
        "32 MiB headers: RSS idle {} MiB, peak {} MiB, stallers closed after {closed_after:?}",
        idle / MIB,
        peak / MIB
    );
    assert!(
        peak < idle + 48 * MIB,
        "RSS {peak} KiB (idle {idle} KiB) under 32 write headers"
    );
}

/// A client that never reads its replies: it pipelines 1 MiB reads until
/// the server stops reading it.
struct Hog {
    s: UnixStream,
    out: Vec<u8>,
    at: usize,
}

impl Hog {
    fn new(socket: &Path, n: u64) -> Hog {
        let s = nbd_handshake(socket);
        s.set_nonblocking(true).unwrap();
        let mut out = Vec::new();
        for i in 0..2000u64 {
            out.extend_from_slice(&request(
                proto::Command::Read,
                i,
                ((i + n) % 63) << 20,
                1 << 20,
            ));
        }
        Hog { s, out, at: 0 }
    }

    /// Writes what the socket takes now.
    fn push(&mut self) {
        while self.at < self.out.len() {
            match self.s.write(&self.out[self.at..]) {
                Ok(n) if n > 0 => self.at += n,
                _ => return,
            }
        }
    }
}

/// (c) 64 clients that send many reads and never read their replies: the
/// daemon's memory stays within the global budget (64 MiB here) plus a
/// margin, fio runs clean beside them, the hogs are closed with a line;
/// (d) after the burst, resident memory returns near idle.
#[test]
fn clients_that_never_read_replies_and_memory_after() {
    let d = daemon(
        &["--nbd-memory-budget", "64", "--nbd-payload-timeout", "6"],
        None,
    );
    let pid = d.child.id();
    let idle = rss_kib(pid);
    let fio = fio_lun0(&d, "24M", "1500");
    wait_fio_io(&d);
    let mut hogs: Vec<Hog> = (0..64).map(|n| Hog::new(&d.nbd_socket, n)).collect();
    let start = Instant::now();
    let mut peak = 0;
    while start.elapsed() < Duration::from_secs(4) {
        for h in &mut hogs {
            h.push();
        }
        peak = peak.max(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(50));
    }
    paths_healthy(&d);
    fio_ok(fio, &d);
    let log = d.log_text();
    assert!(
        log.contains("the client read no reply for"),
        "no hog was closed:\n{log}"
    );
    drop(hogs);
    // The burst is over: freed memory goes back (pools bounded, big
    // buffers freed, heap trimmed a second after the budget is idle).
    let mut after = rss_kib(pid);
    let deadline = Instant::now() + Duration::from_secs(6);
    while after >= idle + 24 * MIB && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        after = rss_kib(pid);
    }
    eprintln!(
        "64 non-reading clients: RSS idle {} MiB, peak {} MiB (budget 64 MiB), after {} MiB",
        idle / MIB,
        peak / MIB,
        after / MIB
    );
    assert!(
        peak < idle + (64 + 64) * MIB,
        "RSS peak {peak} KiB (idle {idle} KiB) over budget + margin"
    );
    assert!(!d.log_text().contains("panicked"), "{}", d.log_text());
    assert!(
        after < idle + 24 * MIB,
        "RSS after the burst {after} KiB (idle {idle} KiB)"
    );
    qemu_io_works(&d);
}
