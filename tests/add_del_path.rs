//! `del path NAME` / `add path DEV` (issue 12, item 6) against the real
//! binary: declared file paths leave and rejoin their map under a
//! verifying fio load.

// A test crate: a failed unwrap, expect or panic is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;

fn daemon() -> Daemon {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("lun0.img");
    make_image(&img, 16 << 20);
    let cfg = seed_config(
        "    polling_interval 1\n    checker_timeout 5",
        &[file_path("p0", &img), file_path("p1", &img)],
    );
    Daemon::start_in(dir, &cfg)
}

fn names(d: &Daemon) -> Vec<String> {
    d.paths_json()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn del_path_moves_io_and_add_path_brings_it_back_under_fio_verify() {
    let d = daemon();
    let fio = fio_verify(&d.uri("lun0"), "8M", "600", 8, &[]);
    std::thread::sleep(Duration::from_millis(800));
    let out = d.ctl_ok(&["del", "path", "p0"]);
    assert!(out.contains("removed from map lun0"), "{out}");
    assert_eq!(names(&d), vec!["p1"]);
    let before = d.ios("p1");
    std::thread::sleep(Duration::from_millis(800));
    assert!(d.ios("p1") > before, "p1 carries the IO");
    // Twice: an error, nothing changes.
    assert!(!d.ctl(&["del", "path", "p0"]).status.success());
    let out = d.ctl_ok(&["add", "path", "p0"]);
    assert!(out.contains("added to map lun0"), "{out}");
    let mut now = names(&d);
    now.sort();
    assert_eq!(now, vec!["p0", "p1"]);
    d.wait_path(
        "p0",
        "IO on the re-added path",
        Duration::from_secs(5),
        |p| p["ios"].as_u64().unwrap_or(0) > 0,
    );
    // Already running: refused.
    let again = d.ctl(&["add", "path", "p0"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already in map lun0"));
    fio_ok(fio, &d);
}

#[test]
fn the_last_path_may_go_and_a_reconfigure_restores_the_config() {
    let d = daemon();
    run_ok(&mut qemu_io(&d, &["write -P 0x44 0 64k"]));
    d.ctl_ok(&["del", "path", "p0"]);
    d.ctl_ok(&["del", "path", "p1"]);
    assert!(names(&d).is_empty());
    let v: serde_json::Value =
        serde_json::from_str(&d.ctl_ok(&["show", "maps", "--json"])).unwrap();
    assert_eq!(v[0]["name"], "lun0", "the map stays with no path: {v}");
    // Unknown names are errors.
    let bad = d.ctl(&["add", "path", "nosuch"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no path named"));
    // The configuration's view comes back with a reconfigure.
    d.ctl_ok(&["reconfigure"]);
    let mut now = names(&d);
    now.sort();
    assert_eq!(now, vec!["p0", "p1"]);
    d.wait_path("p1", "ready", Duration::from_secs(5), |p| {
        p["state"] == "ready"
    });
    let out = run_ok(&mut qemu_io(&d, &["read -P 0x44 0 64k"]));
    assert!(out.contains("read 65536/65536"), "{out}");
}
