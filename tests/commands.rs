//! multipathd's commands (issue 12, item 6) against the real binary:
//! `switchgroup`, `disablequeueing`/`restorequeueing`, `show paths|maps
//! format`, `show maps stats`, `show daemon`, `show blacklist`, `show
//! devices`, and the features and hwhandler `show topology` prints.

// A test crate: a failed unwrap, expect or panic is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

/// One LUN, two file paths in two failover groups, failback manual,
/// no_path_retry queue, hardware_handler "1 alua".
fn daemon() -> Daemon {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("lun0.img");
    make_image(&img, 16 << 20);
    let cfg = format!(
        "defaults {{\n    polling_interval 1\n    checker_timeout 5\n}}\n\
         devices {{\n    device {{\n        vendor \"OSNEXUS\"\n        product \"QUANTASTOR\"\n\
         path_grouping_policy failover\n        failback manual\n        no_path_retry queue\n\
         hardware_handler \"1 alua\"\n        path_checker directio\n    }}\n}}\n\
         multipaths {{\n    multipath {{\n        wwid \"{WWID}\"\n        alias lun0\n    }}\n}}\n\
         paths {{\n{}{}}}\n",
        file_path("p0", &img),
        file_path("p1", &img)
    );
    Daemon::start_in(dir, &cfg)
}

fn maps(d: &Daemon) -> serde_json::Value {
    serde_json::from_str(&d.ctl_ok(&["show", "maps", "--json"])).unwrap()
}

fn topology(d: &Daemon) -> String {
    d.ctl_ok(&["show", "topology"])
}

#[test]
fn switchgroup_with_multipathd_spelling() {
    let d = daemon();
    let t = topology(&d);
    assert!(t.contains("hwhandler='1 alua'"), "{t}");
    assert!(t.contains("features='1 queue_if_no_path'"), "{t}");
    assert_eq!(maps(&d)[0]["current_group"], 1);
    d.ctl_ok(&["switchgroup", "map", "lun0", "group", "2"]);
    assert_eq!(maps(&d)[0]["current_group"], 2);
    // failback manual: it stays there.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(maps(&d)[0]["current_group"], 2);
    d.ctl_ok(&["switch", "map", "lun0", "group", "1"]);
    assert_eq!(maps(&d)[0]["current_group"], 1);
    let bad = d.ctl(&["switchgroup", "map", "nosuch", "group", "1"]);
    assert!(!bad.status.success());
}

#[test]
fn disablequeueing_fails_held_io_until_restore_or_reconfigure() {
    let d = daemon();
    run_ok(&mut qemu_io(&d, &["write -P 0x22 0 64k"]));
    d.ctl_ok(&["fault", "path", "p0", "error"]);
    d.ctl_ok(&["fault", "path", "p1", "error"]);
    let child = qemu_io(&d, &["read -P 0x22 0 64k"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-io");
    let start = Instant::now();
    while maps(&d)[0]["held_requests"].as_u64().unwrap_or(0) == 0 {
        assert!(start.elapsed() < Duration::from_secs(10), "{}", maps(&d));
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = d.ctl_ok(&["disablequeueing", "map", "lun0"]);
    assert!(out.contains("queueing disabled"), "{out}");
    let done = Instant::now();
    let out = child.wait_with_output().expect("qemu-io");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Input/output error"), "{text}");
    assert!(done.elapsed() < Duration::from_secs(5));
    let m = maps(&d);
    assert_eq!(m[0]["queueing_disabled"], true, "{m}");
    assert_eq!(m[0]["features"], "0", "{m}");
    assert!(topology(&d).contains("features='0'"));
    assert!(d
        .ctl_ok(&["show", "maps", "format", "%n %Q"])
        .contains("lun0 off"));
    assert!(d.ctl_ok(&["show", "maps"]).contains("(queueing disabled)"));

    // Restore: queueing again, shown.
    let out = d.ctl_ok(&["restorequeueing", "map", "lun0"]);
    assert!(out.contains("restored"), "{out}");
    let m = maps(&d);
    assert_eq!(m[0]["queueing_disabled"], false, "{m}");
    assert_eq!(m[0]["queueing"], "queueing", "{m}");
    assert!(topology(&d).contains("features='1 queue_if_no_path'"));
    let out = d.ctl_ok(&["restorequeueing", "maps"]);
    assert!(out.contains("nothing to do"), "{out}");

    // All maps, then a reconfigure restores the configured no_path_retry.
    d.ctl_ok(&["disablequeueing", "maps"]);
    assert_eq!(maps(&d)[0]["queueing_disabled"], true);
    d.ctl_ok(&["reconfigure"]);
    assert_eq!(maps(&d)[0]["queueing_disabled"], false);
    assert!(d.ctl(&["disablequeueing", "map"]).status.code() == Some(2));
}

#[test]
fn show_format_like_multipathd() {
    let d = daemon();
    let out = d.ctl_ok(&["show", "paths", "format", "%d|%T|%p|%m|%i|%c|%y|%s"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    // Header from the wildcard names, columns padded to the widest value;
    // %y is unknown and vanishes (the text around it stays).
    assert_eq!(
        lines[0],
        "dev|chk_st|pri|multipath|hcil   |checker ||vend/prod/rev          "
    );
    assert_eq!(
        lines[1],
        "p0 |ready |1  |lun0     |#:#:#:#|directio||OSNEXUS,QUANTASTOR,0001"
    );
    let raw = d.ctl_ok(&["show", "paths", "raw", "format", "%d %w"]);
    assert_eq!(raw, format!("p0 {WWID}\np1 {WWID}\n"));
    let j: serde_json::Value =
        serde_json::from_str(&d.ctl_ok(&["show", "paths", "format", "%d %T", "--json"])).unwrap();
    assert_eq!(j[0]["dev"], "p0", "{j}");
    assert_eq!(j[1]["chk_st"], "ready", "{j}");

    let out = d.ctl_ok(&["show", "maps", "format", "%n %w %Q %F %N %h %f %S"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        format!(
            "name uuid{} queueing failback paths hwhandler features           size",
            " ".repeat(WWID.len() - 4)
        )
    );
    assert_eq!(
        lines[1],
        format!("lun0 {WWID} on       manual   2     1 alua    1 queue_if_no_path 16M ")
    );

    let stats = d.ctl_ok(&["show", "maps", "stats"]);
    let lines: Vec<&str> = stats.lines().collect();
    assert_eq!(
        lines[0],
        "name path_faults switch_grp map_loads total_q_time q_timeouts"
    );
    assert!(lines[1].starts_with("lun0 0           0"), "{stats}");
    // `show stats` (umpath top) keeps its shape.
    let j: serde_json::Value =
        serde_json::from_str(&d.ctl_ok(&["show", "stats", "--json"])).unwrap();
    assert!(j["uptime_ms"].is_u64(), "{j}");
}

#[test]
fn show_daemon_blacklist_devices() {
    let d = daemon();
    let out = d.ctl_ok(&["show", "daemon"]);
    assert_eq!(out, format!("pid {} running\n", d.child.id()));
    assert!(d.ctl_ok(&["show", "status"]).contains("uptime"));
    let bl = d.ctl_ok(&["show", "blacklist"]);
    assert!(bl.starts_with("device node rules:\n- blacklist:\n"), "{bl}");
    assert!(bl.contains("(default rule)"), "{bl}");
    assert!(bl.contains("device rules:"), "{bl}");
    let j: serde_json::Value =
        serde_json::from_str(&d.ctl_ok(&["show", "blacklist", "--json"])).unwrap();
    assert!(j["devnode"]["blacklist"].is_array(), "{j}");
    let dev = d.ctl_ok(&["show", "devices"]);
    assert!(
        dev.contains("    p0  devnode whitelisted, monitored"),
        "{dev}"
    );
}
