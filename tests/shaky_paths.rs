//! Shaky paths at run time: a flapping path (`fault flaky`) under
//! san_path_err_* is held out instead of being reinstated at every good
//! check, `show paths` says so, and a client's IO stays error-free.

// A test crate: a failed unwrap, expect or panic is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn a_flaky_path_is_held_out_as_shaky_and_io_stays_clean() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("lun0.img");
    make_image(&img, 64 << 20);
    let cfg = seed_config(
        "    polling_interval 1\n    max_polling_interval 1",
        &[file_path("p0", &img), file_path("p1", &img)],
    )
    .replace(
        "multipaths {",
        "overrides {\n    path_grouping_policy multibus\n    san_path_err_threshold 3\n    san_path_err_forget_rate 30\n    san_path_err_recovery_time 60\n}\nmultipaths {",
    );
    let d = Daemon::start_in(dir, &cfg);
    d.wait_path("p1", "ready", Duration::from_secs(10), |p| {
        p["state"] == "ready"
    });
    let fio = fio_verify(
        &d.uri("lun0"),
        "8M",
        "200",
        4,
        &["--time_based".into(), "--runtime=14".into()],
    );
    d.ctl_ok(&["fault", "path", "p1", "flaky", "30"]);
    let start = Instant::now();
    // Flapping at 30 % per check and per request, the path comes back
    // and fails again a few times, then is held out.
    d.wait_path("p1", "shaky", Duration::from_secs(14), |p| {
        p["state"] == "shaky"
    });
    let held = d.path_json("p1");
    assert_eq!(held["dm_state"], "failed", "{held}");
    // Held until the end of the recovery time, on the monotonic clock.
    assert!(held["held_until_ms"].as_u64().is_some(), "{held}");
    assert_eq!(held["marginal"], false, "{held}");
    assert!(d.path_json("p0")["held_until_ms"].is_null());
    let reason = held["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("shaky") && reason.contains("held out until"),
        "{held}"
    );
    let failures_when_held = held["failures"].as_u64().unwrap();
    // From now on it stays out: the recovery time (60 s) restarts at
    // each failed check, so no more reinstatements.
    while start.elapsed() < Duration::from_secs(13) {
        let p = d.path_json("p1");
        assert_eq!(p["dm_state"], "failed", "reinstated while shaky: {p}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let p = d.path_json("p1");
    assert_eq!(p["failures"].as_u64().unwrap(), failures_when_held, "{p}");
    // At most threshold + 1 comebacks before the hold (plus one for a
    // failure by IO racing a check).
    assert!(failures_when_held <= 6, "{p}");
    fio_ok(fio, &d);
    let log = d.log_text();
    assert_eq!(
        log.matches("path is shaky").count(),
        1,
        "one warning per transition:\n{log}"
    );
    assert_eq!(d.path_json("p0")["state"], "ready");
    // The text listing shows it too whenever the last check passed (a
    // failed check shows `faulty` with its own reason).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = d.ctl_ok(&["show", "paths"]);
        if text.contains(" shaky ") && text.contains("held out until") {
            break;
        }
        assert!(Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn maps_json(d: &Daemon) -> serde_json::Value {
    serde_json::from_str(&d.ctl_ok(&["show", "maps", "--json"])).unwrap()
}

/// `marginal_pathgroups on`: a path that failed twice within
/// marginal_path_double_failed_time comes back marked marginal, in a
/// group of its own after the normal one; IO stays on the normal group
/// and the client sees no error.
#[test]
fn a_marginal_path_gets_its_own_group_under_marginal_pathgroups_on() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("lun0.img");
    make_image(&img, 64 << 20);
    let cfg = seed_config(
        "    polling_interval 1\n    max_polling_interval 1\n    marginal_pathgroups on",
        &[file_path("p0", &img), file_path("p1", &img)],
    )
    .replace(
        "multipaths {",
        "overrides {\n    path_grouping_policy multibus\n    marginal_path_double_failed_time 60\n    marginal_path_err_sample_time 120\n    marginal_path_err_rate_threshold 10\n    marginal_path_err_recheck_gap_time 300\n}\nmultipaths {",
    );
    let d = Daemon::start_in(dir, &cfg);
    let ready = |p: &serde_json::Value| p["state"] == "ready" && p["dm_state"] == "active";
    d.wait_path("p1", "ready", Duration::from_secs(10), ready);
    let m = maps_json(&d);
    assert_eq!(m[0]["groups"].as_array().map(Vec::len), Some(1), "{m}");
    let fio = fio_verify(
        &d.uri("lun0"),
        "8M",
        "200",
        4,
        &["--time_based".into(), "--runtime=10".into()],
    );
    for _ in 0..2 {
        d.ctl_ok(&["fault", "path", "p1", "error"]);
        d.wait_path("p1", "faulty", Duration::from_secs(10), |p| {
            p["dm_state"] == "failed"
        });
        d.ctl_ok(&["fault", "path", "p1", "clear"]);
        d.wait_path("p1", "back", Duration::from_secs(10), ready);
    }
    d.wait_path("p1", "marginal", Duration::from_secs(10), |p| {
        p["marginal"] == true
    });
    let p1 = d.path_json("p1");
    assert_eq!(p1["dm_state"], "active", "{p1}");
    assert!(p1["held_until_ms"].as_u64().is_some(), "{p1}");
    assert_eq!(p1["group"], 2, "{p1}");
    let m = maps_json(&d);
    let groups = m[0]["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "{m}");
    assert_eq!(groups[0]["marginal"], false, "{m}");
    assert_eq!(groups[0]["status"], "active", "{m}");
    assert_eq!(groups[0]["paths"], serde_json::json!(["p0"]), "{m}");
    assert_eq!(groups[1]["marginal"], true, "{m}");
    assert_eq!(groups[1]["status"], "enabled", "{m}");
    assert_eq!(groups[1]["paths"], serde_json::json!(["p1"]), "{m}");
    // IO stays on the normal group.
    let ios = d.ios("p1");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(d.ios("p1"), ios, "IO went to the marginal path");
    let topo = d.ctl_ok(&["show", "topology"]);
    assert_eq!(topo.matches("policy=").count(), 2, "{topo}");
    let fmt = d.ctl_ok(&["show", "paths", "format", "%d %M"]);
    let rows: Vec<Vec<&str>> = fmt
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(rows.contains(&vec!["p1", "marginal"]), "{fmt}");
    assert!(rows.contains(&vec!["p0", "normal"]), "{fmt}");
    fio_ok(fio, &d);
    assert_eq!(
        d.log_text()
            .matches("moved to a marginal path group")
            .count(),
        1
    );
}
