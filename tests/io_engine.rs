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

/// Buffered file paths: writes go to the path's IO threads (io_uring
/// would punt each to an io-wq worker, slower), uncached reads to rings.
#[test]
fn buffered_writes_stay_on_io_threads() {
    let d = two_path_daemon(Launch::default());
    verify(&d);
    let e = engine(&d);
    assert_eq!(e["kind"], "io_uring", "{e}");
    assert!(e["thread_requests"].as_u64().unwrap() >= 2048, "{e}");
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
