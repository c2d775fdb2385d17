//! The IO engine (issue 13): io_uring by default, IO threads on request
//! or where the kernel refuses io_uring, shown in `show status`; IO on
//! `file` paths under io_uring starts no per-path IO thread.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::*;

/// `show status --json`'s io_engine.
fn engine(d: &Daemon) -> serde_json::Value {
    let out = d.ctl_ok(&["show", "status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["io_engine"].clone()
}

/// The daemon's threads whose name starts with `prefix`.
fn threads_named(pid: u32, prefix: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| c.starts_with(prefix))
        .count()
}

/// Writes and verifies 8 MiB at QD 8 through the export.
fn verify(d: &Daemon) {
    let fio = fio_verify(&d.uri("lun0"), "8M", "0", 8, &[]);
    fio_ok(fio, d);
}

/// A map of two `direct yes` file paths (O_DIRECT on the image).
fn direct_daemon() -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("lun0.img");
    make_image(&img, 64 << 20);
    let direct = |name: &str| {
        file_path(name, &img).replace("        file ", "        direct yes\n        file ")
    };
    let cfg = seed_config("    polling_interval 1", &[direct("p0"), direct("p1")]);
    Daemon::start_in(dir, &cfg)
}

#[test]
fn direct_paths_run_on_io_uring_without_io_threads() {
    let d = direct_daemon();
    let e = engine(&d);
    assert_eq!(e["kind"], "io_uring", "{e}");
    assert!(e["rings"].as_u64().unwrap() >= 1, "{e}");
    verify(&d);
    let e = engine(&d);
    // 2048 writes and 2048 verify reads of 4 KiB, all on the rings.
    assert!(e["ring_requests"].as_u64().unwrap() >= 4096, "{e}");
    assert_eq!(e["thread_requests"], 0, "{e}");
    let pid = d.child.id();
    assert_eq!(threads_named(pid, "io-"), 0, "no per-path IO thread");
    assert!(e["completions_on_runtime"] == true, "{e}");
    let text = d.ctl_ok(&["show", "status"]);
    assert!(
        text.contains("io engine     io_uring (") && text.contains("request(s) on rings"),
        "{text}"
    );
    assert!(d.log_text().contains("IO engine: io_uring"));
}

/// Buffered file paths: writes the page cache cannot take without
/// blocking (all of them on ext4 or tmpfs, which refuse RWF_NOWAIT
/// writes) go to the path's IO threads (io_uring would punt each to an
/// io-wq worker, slower), uncached reads to rings.
#[test]
fn buffered_writes_go_to_io_threads_or_the_page_cache() {
    let d = two_path_daemon(Launch::default());
    verify(&d);
    let e = engine(&d);
    assert_eq!(e["kind"], "io_uring", "{e}");
    let n = |k: &str| e[k].as_u64().unwrap();
    assert!(n("thread_requests") + n("page_cache_writes") >= 2048, "{e}");
}

/// An xfs filesystem in a loop-mounted image; unmounted on drop.
struct Xfs {
    dir: tempfile::TempDir,
}

impl Xfs {
    fn new() -> Xfs {
        need("mkfs.xfs");
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("xfs.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(320 << 20)
            .unwrap();
        let out = Command::new("mkfs.xfs")
            .arg("-q")
            .arg(&img)
            .output()
            .unwrap();
        assert!(out.status.success(), "mkfs.xfs: {out:?}");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let out = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&mnt)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting an xfs image needs root and loop devices: {out:?}"
        );
        Xfs { dir }
    }

    fn mnt(&self) -> std::path::PathBuf {
        self.dir.path().join("mnt")
    }
}

impl Drop for Xfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.mnt()).status();
    }
}

/// On a filesystem that takes buffered writes without blocking (xfs),
/// they complete in the page cache on the connection's thread, with no
/// hand-off to an IO thread, and read back right.
#[test]
fn buffered_writes_complete_in_the_page_cache_where_the_filesystem_allows() {
    let xfs = Xfs::new();
    let img = xfs.mnt().join("lun0.img");
    make_image(&img, 64 << 20);
    let cfg = seed_config(
        "    polling_interval 1",
        &[file_path("p0", &img), file_path("p1", &img)],
    );
    let d = Daemon::start_in(tempfile::tempdir().unwrap(), &cfg);
    verify(&d);
    let e = engine(&d);
    let n = |k: &str| e[k].as_u64().unwrap();
    // fio's verify wrote 2048 blocks of 4 KiB.
    assert!(
        n("page_cache_writes") >= 1024,
        "most writes should complete in the page cache: {e}"
    );
    let text = d.ctl_ok(&["show", "status"]);
    assert!(text.contains("write(s) done in the page cache"), "{text}");
    drop(d);
    drop(xfs);
}

#[test]
fn threads_engine_when_asked() {
    let d = two_path_daemon(Launch {
        env: vec![("UMPATH_IO_ENGINE".into(), "threads".into())],
        ..Launch::default()
    });
    let e = engine(&d);
    assert_eq!(e["kind"], "threads", "{e}");
    assert_eq!(e["why"], "UMPATH_IO_ENGINE=threads", "{e}");
    verify(&d);
    let e = engine(&d);
    assert_eq!(e["ring_requests"], 0, "{e}");
    assert!(e["thread_requests"].as_u64().unwrap() > 0, "{e}");
}

#[test]
fn io_uring_refused_by_seccomp_falls_back_to_threads() {
    let d = two_path_daemon(Launch {
        deny_io_uring: true,
        ..Launch::default()
    });
    let e = engine(&d);
    assert_eq!(e["kind"], "threads", "{e}");
    let why = e["why"].as_str().unwrap();
    assert!(
        why.contains("io_uring unavailable") && why.contains("Operation not permitted"),
        "{why}"
    );
    verify(&d);
    let text = d.ctl_ok(&["show", "status"]);
    assert!(
        text.contains("io engine     threads (io_uring unavailable: io_uring_setup:"),
        "{text}"
    );
    // The fallback is a warning in the log, with the reason.
    assert!(d
        .log_text()
        .contains("IO engine: threads (io_uring unavailable"));
}

#[test]
fn a_forced_io_uring_that_is_refused_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("lun0.img");
    make_image(&img, 1 << 20);
    let cfg = dir.path().join("multipath.conf");
    std::fs::write(&cfg, seed_config("", &[file_path("p0", &img)])).unwrap();
    // The daemon with `engine` asked for, run to its exit (it must fail).
    let daemon = |engine: &str| {
        let mut cmd = Command::new(BIN);
        cmd.arg("--control-socket")
            .arg(dir.path().join("c.sock"))
            .arg("daemon")
            .arg("--config")
            .arg(&cfg)
            .arg("--nbd-socket")
            .arg(dir.path().join("n.sock"))
            .env("UMPATH_IO_ENGINE", engine);
        deny_io_uring(&mut cmd);
        let out = cmd.output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = daemon("uring");
    assert!(
        err.contains("IO engine: UMPATH_IO_ENGINE=uring, but io_uring unavailable"),
        "{err}"
    );
    // A value that means nothing is refused with the choices.
    let err = daemon("fast");
    assert!(err.contains("expected auto, uring or threads"), "{err}");
}

/// Sends `reqs` (type, cookie, offset, payload or read length) on `s` in
/// one write and returns the replies by cookie: (error, read data).
fn burst(
    s: &mut std::os::unix::net::UnixStream,
    reqs: &[(u16, u64, u64, Vec<u8>, u32)],
) -> std::collections::HashMap<u64, (u32, Vec<u8>)> {
    use std::io::{Read, Write};
    let mut out = Vec::new();
    for (ty, cookie, offset, payload, len) in reqs {
        out.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes());
        out.extend_from_slice(&ty.to_be_bytes());
        out.extend_from_slice(&cookie.to_be_bytes());
        out.extend_from_slice(&offset.to_be_bytes());
        let len = if *ty == 1 { payload.len() as u32 } else { *len };
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(payload);
    }
    s.write_all(&out).unwrap();
    let lens: std::collections::HashMap<u64, (u16, u32)> =
        reqs.iter().map(|r| (r.1, (r.0, r.4))).collect();
    let mut got = std::collections::HashMap::new();
    while got.len() < reqs.len() {
        let mut h = [0u8; 16];
        s.read_exact(&mut h).unwrap();
        assert_eq!(&h[..4], &0x6744_6698u32.to_be_bytes(), "a simple reply");
        let err = u32::from_be_bytes(h[4..8].try_into().unwrap());
        let cookie = u64::from_be_bytes(h[8..16].try_into().unwrap());
        let (ty, len) = lens[&cookie];
        let mut data = vec![0u8; if ty == 0 && err == 0 { len as usize } else { 0 }];
        s.read_exact(&mut data).unwrap();
        assert!(
            got.insert(cookie, (err, data)).is_none(),
            "cookie {cookie} twice"
        );
    }
    got
}

/// Requests that arrive together are submitted together: one
/// `io_uring_enter` per batch (at most 32 requests), not per request,
/// and every request still gets its own right answer.
#[test]
fn requests_that_arrive_together_share_a_submission() {
    let d = direct_daemon();
    let mut s = nbd_handshake(&d.nbd_socket);
    let pattern = |i: u64| vec![(i as u8).wrapping_mul(37) ^ 0x5a; 4096];
    // 24 writes of 4 KiB (all in the reader's buffer at once).
    let writes: Vec<_> = (0..24u64)
        .map(|i| (1u16, i, i * 8192, pattern(i), 0u32))
        .collect();
    let replies = burst(&mut s, &writes);
    assert!(replies.values().all(|(e, _)| *e == 0), "{replies:?}");
    let before = engine(&d);
    // 64 reads: the 24 written blocks and 40 untouched (zero) ones.
    let reads: Vec<_> = (0..64u64)
        .map(|i| (0u16, 100 + i, i * 8192, Vec::new(), 4096u32))
        .collect();
    let replies = burst(&mut s, &reads);
    let after = engine(&d);
    for i in 0..64u64 {
        let (err, data) = &replies[&(100 + i)];
        assert_eq!(*err, 0, "read {i}");
        let want = if i < 24 { pattern(i) } else { vec![0u8; 4096] };
        assert!(*data == want, "read {i} returned the wrong data");
    }
    let n = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap();
    let requests = n(&after, "ring_requests") - n(&before, "ring_requests");
    let calls = n(&after, "ring_submit_calls") - n(&before, "ring_submit_calls");
    assert_eq!(requests, 64, "{after}");
    assert!(
        calls <= 8,
        "64 reads that arrived together took {calls} submissions (batches of up to 32 expected)"
    );
    let text = d.ctl_ok(&["show", "status"]);
    assert!(text.contains("submission(s)"), "{text}");
}
