//! io_timeout: a request stuck on a path fails the path; reads are
//! reissued at once, writes only once their original has ended.

// A test crate: a failed unwrap, expect or panic is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

fn daemon() -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("lun0.img");
    make_image(&img, 16 << 20);
    // checker_timeout long so that the io_timeout watchdog, not the
    // checker, is what fails the path.
    Daemon::start_in(
        dir,
        &seed_config(
            "    polling_interval 1\n    checker_timeout 30\n    io_timeout 2",
            &[file_path("p0", &img), file_path("p1", &img)],
        ),
    )
}

#[test]
fn a_hung_read_is_reissued_on_another_path() {
    let d = daemon();
    run_ok(&mut qemu_io(&d, &["write -P 0x5e 0 1M", "flush"]));
    // Reads on p0 hang (which also keeps them off the cached fast path).
    d.ctl_ok(&["fault", "path", "p0", "hang", "read"]);
    let start = Instant::now();
    // rr_min_io 100: these reads go to p0 first.
    let out = run_ok(&mut qemu_io(
        &d,
        &["read -P 0x5e 0 64k", "read -P 0x5e 64k 64k"],
    ));
    let took = start.elapsed();
    assert!(!out.contains("failed"), "{out}");
    // The read hung on p0: after io_timeout the watchdog failed p0 and the
    // read completed on p1, while the original stays stuck.
    let p0 = d.path_json("p0");
    assert!(p0["failures"].as_u64().unwrap_or(0) >= 1, "{p0}");
    assert_eq!(p0["stuck"], 1, "the original read is still stuck: {p0}");
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    assert!(took < Duration::from_secs(20), "{took:?}");
    let log = d.log_text();
    assert!(
        log.contains("io_timeout") && log.contains("reissuing a timed-out request"),
        "{log}"
    );
    // Its late answer is dropped when it finally ends.
    d.ctl_ok(&["fault", "path", "p0", "clear"]);
    d.wait_path("p0", "the stuck read ended", Duration::from_secs(5), |p| {
        p["stuck"] == 0
    });
}

#[test]
fn a_hung_write_is_held_until_its_original_ends_and_never_clobbers_a_later_write() {
    let d = daemon();
    d.ctl_ok(&["fault", "path", "p0", "hang", "write"]);
    d.ctl_ok(&["fault", "path", "p1", "hang", "write"]);
    // W1: pattern 0xa1, stuck on whichever path it reaches.
    let mut w1 = qemu_io(&d, &["write -P 0xa1 0 64k"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    // io_timeout (2 s) has passed and the path failed, but W1 is NOT
    // acknowledged: its original may still land.
    assert!(
        w1.try_wait().unwrap().is_none(),
        "a write must not be acknowledged while its original may land"
    );
    let paths = d.paths_json();
    let stuck: u64 = paths.iter().map(|p| p["stuck"].as_u64().unwrap_or(0)).sum();
    assert_eq!(stuck, 1, "{paths:?}");
    let failures: u64 = paths
        .iter()
        .map(|p| p["failures"].as_u64().unwrap_or(0))
        .sum();
    assert!(failures >= 1, "io_timeout failed no path: {paths:?}");
    assert!(d.log_text().contains("held until its original ends"));
    // The hang ends in an error: the original is dead, so W1 is reissued
    // on the other path and acknowledged.
    d.ctl_ok(&["fault", "path", "p1", "clear"]);
    d.ctl_ok(&["fault", "path", "p0", "error", "write"]);
    let out = w1.wait_with_output().unwrap();
    d.ctl_ok(&["fault", "path", "p0", "clear"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && !text.contains("failed"), "{text}");
    // W2 after W1's acknowledgement: nothing stale may overwrite it.
    run_ok(&mut qemu_io(&d, &["write -P 0xb2 0 64k"]));
    std::thread::sleep(Duration::from_millis(1500));
    let out = run_ok(&mut qemu_io(&d, &["read -P 0xb2 0 64k"]));
    assert!(!out.contains("Pattern verification failed"), "{out}");
}
