//! All paths down: no_path_retry fail / queue / N, seen by a real client.

// A test crate: a failed unwrap, expect or panic is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

fn daemon(no_path_retry: &str) -> Daemon {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("lun0.img");
    make_image(&img, 16 << 20);
    let defaults =
        format!("    polling_interval 1\n    checker_timeout 5\n    no_path_retry {no_path_retry}");
    Daemon::start_in(
        dir,
        &seed_config(&defaults, &[file_path("p0", &img), file_path("p1", &img)]),
    )
}

fn all_paths_down(d: &Daemon) {
    d.ctl_ok(&["fault", "path", "p0", "error"]);
    d.ctl_ok(&["fault", "path", "p1", "error"]);
}

#[test]
fn fail_returns_eio_at_once_and_recovers() {
    let d = daemon("fail");
    run_ok(&mut qemu_io(&d, &["write -P 0x11 0 1M"]));
    all_paths_down(&d);
    let out = run(&mut qemu_io(&d, &["read -P 0x11 0 64k"]));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("Input/output error"),
        "expected EIO, got: {text}"
    );
    d.ctl_ok(&["fault", "path", "p0", "clear"]);
    d.wait_path("p0", "reinstated", Duration::from_secs(5), |p| {
        p["dm_state"] == "active"
    });
    run_ok(&mut qemu_io(&d, &["read -P 0x11 0 1M"]));
}

#[test]
fn queue_holds_io_until_a_path_returns() {
    let d = daemon("queue");
    run_ok(&mut qemu_io(&d, &["write -P 0x22 0 1M"]));
    all_paths_down(&d);
    let mut child = qemu_io(
        &d,
        &[
            "write -P 0x33 1M 1M",
            "read -P 0x22 0 1M",
            "read -P 0x33 1M 1M",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("qemu-io");
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        child.try_wait().expect("wait").is_none(),
        "IO must stall while no path is usable"
    );
    let maps: serde_json::Value =
        serde_json::from_str(&d.ctl_ok(&["show", "maps", "--json"])).unwrap();
    assert!(
        maps[0]["held_requests"].as_u64().unwrap_or(0) >= 1,
        "{maps}"
    );
    assert_eq!(maps[0]["queueing"], "queueing", "{maps}");
    d.ctl_ok(&["fault", "path", "p1", "clear"]);
    let out = child.wait_with_output().expect("qemu-io");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && !text.contains("error") && !text.contains("failed"),
        "{text}"
    );
}

#[test]
fn retries_fail_held_io_after_n_polling_intervals_and_keep_old_data() {
    let d = daemon("2");
    run_ok(&mut qemu_io(&d, &["write -P 0x44 0 1M"]));
    all_paths_down(&d);
    let start = Instant::now();
    let out = run(&mut qemu_io(&d, &["read -P 0x44 0 64k"]));
    let waited = start.elapsed();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("Input/output error"),
        "expected EIO after retries, got: {text}"
    );
    // Two polling intervals of 1 s: held, then failed (loose bounds).
    assert!(
        waited >= Duration::from_millis(1500),
        "failed too early: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(15),
        "failed too late: {waited:?}"
    );
    d.ctl_ok(&["fault", "path", "p0", "clear"]);
    d.ctl_ok(&["fault", "path", "p1", "clear"]);
    d.wait_path("p0", "reinstated", Duration::from_secs(5), |p| {
        p["dm_state"] == "active"
    });
    run_ok(&mut qemu_io(&d, &["read -P 0x44 0 1M"]));
}
