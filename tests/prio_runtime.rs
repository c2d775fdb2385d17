//! Path priorities computed at run time: the checker asks each path's
//! prioritizer after every check, and the map regroups by priority.

// A test crate: a failed unwrap, expect or panic is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;

/// The config of `seed_config` with an `overrides` section (it beats the
/// seed's device stanza, which says multibus).
fn config_with_overrides(overrides: &str, paths: &[String]) -> String {
    seed_config("    polling_interval 1", paths).replace(
        "multipaths {",
        &format!("overrides {{\n{overrides}\n}}\nmultipaths {{"),
    )
}

fn prios(d: &Daemon) -> (serde_json::Value, serde_json::Value) {
    (
        d.path_json("p0")["prio"].clone(),
        d.path_json("p1")["prio"].clone(),
    )
}

#[test]
fn weightedpath_by_devname_gives_file_paths_their_priorities_and_two_groups() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("lun0.img");
    make_image(&img, 16 << 20);
    let cfg = config_with_overrides(
        "    path_grouping_policy group_by_prio\n    failback immediate\n    prio weightedpath\n    prio_args \"devname p1 5 p0 20\"",
        &[file_path("p0", &img), file_path("p1", &img)],
    );
    let d = Daemon::start_in(dir, &cfg);
    let deadline = Instant::now() + Duration::from_secs(15);
    while prios(&d) != (serde_json::json!(20), serde_json::json!(5)) {
        assert!(
            Instant::now() < deadline,
            "priorities not computed: {:?}\n{}",
            prios(&d),
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let maps: serde_json::Value =
        serde_json::from_str(&d.ctl_ok(&["show", "maps", "--json"])).unwrap();
    let groups = maps[0]["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "{groups:?}");
    assert_eq!(groups[0]["paths"], serde_json::json!(["p0"]));
    assert_eq!(groups[0]["prio"], 20);
    assert_eq!(groups[0]["status"], "active");
    assert_eq!(groups[1]["paths"], serde_json::json!(["p1"]));
    assert_eq!(groups[1]["prio"], 5);
}

#[test]
fn alua_on_a_file_path_keeps_priority_1_and_says_so_once() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("lun0.img");
    make_image(&img, 16 << 20);
    let cfg = config_with_overrides("    prio alua", &[file_path("p0", &img)]);
    let d = Daemon::start_in(dir, &cfg);
    let deadline = Instant::now() + Duration::from_secs(15);
    let warning = "prioritizer 'alua' needs a SCSI device";
    while !d.log_text().contains(warning) {
        assert!(Instant::now() < deadline, "no warning:\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    // A few more checks: still one warning.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(d.log_text().matches(warning).count(), 1, "{}", d.log_text());
    assert_eq!(d.path_json("p0")["prio"], 1);
}

/// Bad input: a path whose priority flips 50/1 at every check (the
/// `fault path NAME prio flip A B` test hook), under group_by_prio and
/// failback immediate. The map regroups and moves IO at every flip, as
/// multipathd reloads it; a verifying client sees no error, and the log
/// says it once instead of at every check (the changes are counted).
#[test]
fn a_priority_flipping_at_every_check_loses_no_io_and_logs_once() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("lun0.img");
    make_image(&img, 64 << 20);
    let cfg = seed_config(
        "    polling_interval 1\n    max_polling_interval 1",
        &[
            file_path("p0", &img),
            file_path("p1", &img),
            file_path("p2", &img),
        ],
    )
    .replace(
        "multipaths {",
        "overrides {\n    path_grouping_policy group_by_prio\n    failback immediate\n}\nmultipaths {",
    );
    let d = Daemon::start_in(dir, &cfg);
    d.wait_path("p2", "ready", Duration::from_secs(10), |p| {
        p["state"] == "ready"
    });
    let fio = fio_verify(
        &d.uri("lun0"),
        "8M",
        "300",
        4,
        &["--time_based".into(), "--runtime=9".into()],
    );
    d.ctl_ok(&["fault", "path", "p0", "prio", "flip", "50", "1"]);
    assert_eq!(d.path_json("p0")["fault"], "prio flip 50 1");
    d.wait_path("p0", "flipping", Duration::from_secs(15), |p| {
        p["prio_changes"].as_u64().unwrap_or(0) >= 6
    });
    let ios0 = d.ios("p0");
    let ios1 = d.ios("p1");
    fio_ok(fio, &d);
    assert!(ios0 > 0 && ios1 > 0, "IO moves with the priority");
    for p in d.paths_json() {
        assert_eq!(p["errors"], 0, "{p}");
    }
    let log = d.log_text();
    assert!(
        log.matches("path p0 priority:").count() <= 1,
        "priority changes logged once per 30 s:\n{log}"
    );
    assert!(
        log.matches("paths regrouped").count() <= 1,
        "regroups logged once per 30 s:\n{log}"
    );
    // Cleared: the prioritizer (const) answers again.
    d.ctl_ok(&["fault", "path", "p0", "clear"]);
    d.wait_path("p0", "const again", Duration::from_secs(5), |p| {
        p["prio"] == 1 && p["fault"].is_null()
    });
}
