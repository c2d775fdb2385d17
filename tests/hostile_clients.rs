//! Hostile and broken NBD clients against the real daemon: each affects
//! only its own connection, memory stays bounded, others keep working.

// A test crate: a failed unwrap, expect or panic is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use umpath::nbd::proto;

fn daemon() -> Daemon {
    daemon_with(&[])
}

fn daemon_with(args: &[&str]) -> Daemon {
    two_path_daemon(Launch {
        args: args.iter().map(|s| s.to_string()).collect(),
        ..Launch::default()
    })
}

fn read_request(cookie: u64, offset: u64, len: u32) -> [u8; proto::REQUEST_HEADER_LEN] {
    proto::RequestHeader {
        flags: 0,
        command: proto::Command::Read,
        cookie,
        offset,
        len,
    }
    .encode()
}

fn qemu_io_works(d: &Daemon) {
    run_ok(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "write -P 0x77 0 1M",
        "-c",
        "read -P 0x77 0 1M",
        &d.uri("lun0"),
    ]));
}

#[test]
fn five_hundred_concurrent_connections() {
    need("qemu-io");
    // One uid opens them all: lift the per-uid cap (default 128).
    let d = daemon_with(&["--nbd-max-connections-per-uid", "1000"]);
    let mut conns: Vec<UnixStream> = (0..500).map(|_| nbd_handshake(&d.nbd_socket)).collect();
    qemu_io_works(&d);
    // Every connection reads, and gets its answer.
    for (i, s) in conns.iter_mut().enumerate() {
        s.write_all(&read_request(i as u64, (i as u64 % 64) << 20, 4096))
            .unwrap();
    }
    let mut data = vec![0u8; 4096];
    for (i, s) in conns.iter_mut().enumerate() {
        let mut r = [0u8; proto::SIMPLE_REPLY_LEN];
        s.read_exact(&mut r).unwrap();
        let r = proto::SimpleReply::decode(&r).unwrap();
        assert_eq!((r.errno, r.cookie), (0, i as u64));
        s.read_exact(&mut data).unwrap();
    }
    let rss = rss_kib(d.child.id());
    assert!(
        rss < 512 * 1024,
        "daemon RSS {rss} KiB with 500 connections"
    );
    drop(conns);
    qemu_io_works(&d);
}

#[test]
fn a_client_that_never_reads_its_replies_hurts_only_itself() {
    need("qemu-io");
    let d = daemon();
    let mut hog = nbd_handshake(&d.nbd_socket);
    hog.set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // Thousands of 1 MiB reads, no reply ever read: the server must stop
    // reading this connection once its in-flight bound is hit.
    let mut sent = 0u64;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if hog
            .write_all(&read_request(sent, (sent % 63) << 20, 1 << 20))
            .is_err()
        {
            break;
        }
        sent += 1;
    }
    assert!(sent < 100_000, "the server kept reading requests: {sent}");
    let rss = rss_kib(d.child.id());
    assert!(rss < 768 * 1024, "daemon RSS {rss} KiB under a hog");
    // Another client still gets through, again and again.
    for _ in 0..5 {
        qemu_io_works(&d);
    }
    // Garbage on a third connection closes only that one.
    let mut junk = nbd_handshake(&d.nbd_socket);
    junk.write_all(&[0xde; 28]).unwrap();
    let mut b = [0u8; 1];
    assert!(
        matches!(junk.read(&mut b), Ok(0) | Err(_)),
        "garbage must close the connection"
    );
    qemu_io_works(&d);
    drop(hog);
    qemu_io_works(&d);
    assert!(d.ctl(&["show", "status"]).status.success());
}

#[test]
fn truncated_handshakes_and_wrong_magic_do_not_disturb_the_daemon() {
    need("qemu-io");
    let d = daemon();
    for junk in [&b""[..], b"\x00", b"IHAVEOPT", &[0xffu8; 64]] {
        let mut s = UnixStream::connect(&d.nbd_socket).unwrap();
        let mut g = [0u8; proto::GREETING_LEN];
        s.read_exact(&mut g).unwrap();
        let _ = s.write_all(junk);
        drop(s);
    }
    qemu_io_works(&d);
}
