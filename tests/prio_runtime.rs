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
