//! Failover while a client writes: no client error, data verified, and a
//! reinstated path carries IO again.

// A test crate: a failed unwrap, expect or panic is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;

fn daemon() -> Daemon {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("lun0.img");
    make_image(&img, 128 << 20);
    let cfg = seed_config(
        "    polling_interval 1\n    checker_timeout 5",
        &[file_path("p0", &img), file_path("p1", &img)],
    );
    Daemon::start_in(dir, &cfg)
}

/// fio writes 4k blocks at a limited rate (so the run lasts a few
/// seconds) and then verifies every block.
fn fio(d: &Daemon) -> std::process::Child {
    fio_verify(&d.uri("lun0"), "64M", "2000", 16, &[])
}

#[test]
fn admin_fail_during_writes_then_reinstate() {
    let d = daemon();
    let fio = fio(&d);
    std::thread::sleep(Duration::from_millis(1500));
    d.ctl_ok(&["fail", "path", "p0"]);
    let p0 = d.path_json("p0");
    assert_eq!(p0["dm_state"], "failed");
    let p1_before = d.ios("p1");
    std::thread::sleep(Duration::from_millis(1500));
    // While p0 is failed, all IO goes to p1 and none to p0.
    let p0_failed = d.ios("p0");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(d.ios("p0"), p0_failed, "a failed path carries no IO");
    assert!(d.ios("p1") > p1_before, "p1 carries the IO");
    // The checker alone must not reinstate an admin-failed path.
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(d.path_json("p0")["dm_state"], "failed");
    d.ctl_ok(&["reinstate", "path", "p0"]);
    assert_eq!(d.path_json("p0")["dm_state"], "active");
    d.wait_path(
        "p0",
        "ios growing after reinstate",
        Duration::from_secs(10),
        |p| p["ios"].as_u64().unwrap_or(0) > p0_failed,
    );
    fio_ok(fio, &d);
}

#[test]
fn io_errors_underneath_fail_the_path_and_it_comes_back_by_itself() {
    let d = daemon();
    let fio = fio(&d);
    std::thread::sleep(Duration::from_millis(1500));
    // The file transport's fault hook: every read, write and check of p1 fails.
    d.ctl_ok(&["fault", "path", "p1", "error"]);
    d.wait_path("p1", "failed by IO errors", Duration::from_secs(5), |p| {
        p["dm_state"] == "failed"
    });
    let p1 = d.path_json("p1");
    assert!(p1["fault"].as_str().unwrap_or("").contains("error"), "{p1}");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        d.path_json("p1")["dm_state"],
        "failed",
        "the checker sees the fault too"
    );
    let p1_ios = d.ios("p1");
    d.ctl_ok(&["fault", "path", "p1", "clear"]);
    // failback immediate: the checker reinstates it within a polling interval or two.
    d.wait_path(
        "p1",
        "reinstated by the checker",
        Duration::from_secs(5),
        |p| p["dm_state"] == "active" && p["state"] == "ready",
    );
    d.wait_path(
        "p1",
        "ios growing after recovery",
        Duration::from_secs(10),
        |p| p["ios"].as_u64().unwrap_or(0) > p1_ios,
    );
    fio_ok(fio, &d);
    assert!(d.log_text().contains("failed"), "the failure is logged");
}
