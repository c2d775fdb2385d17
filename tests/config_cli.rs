//! Configuration commands end to end: `check-config` (conf.d included,
//! every diagnostic printed), `explain`, `show config` (the merged
//! configuration shaped like `multipath -t`), `show path NAME config`,
//! reconfigure with conf.d, and user_friendly_names bindings.

// A test crate: a failed unwrap, expect or panic is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::*;

fn umpath(args: &[&str]) -> std::process::Output {
    run(Command::new(BIN).args(args))
}

#[test]
fn check_config_reads_conf_d_and_prints_every_diagnostic() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("multipath.conf");
    std::fs::write(&main, "defaults {\n    verbosity 9\n    frob 1\n}\n").unwrap();
    let confd = dir.path().join("multipath/conf.d");
    std::fs::create_dir_all(&confd).unwrap();
    std::fs::write(
        confd.join("10-a.conf"),
        "devices {\n device {\n  vendor \"a(\"\n  product X\n }\n}\n",
    )
    .unwrap();
    std::fs::write(
        confd.join("20-b.conf"),
        "overrides {\n  no_path_retry forever\n",
    )
    .unwrap();
    std::fs::write(confd.join("notes.txt"), "garbage {\n").unwrap();
    let m = main.to_str().unwrap();
    let out = umpath(&["check-config", "--config", m]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let a = confd.join("10-a.conf").display().to_string();
    let b = confd.join("20-b.conf").display().to_string();
    for want in [
        format!("{m}:2: error: value 9 is out of range"),
        format!("{m}:3: warning: unknown keyword 'frob'"),
        format!("{a}:3: error: invalid regular expression \"a(\""),
        format!("{b}:2: error: invalid value 'forever' for 'no_path_retry'"),
        format!("{b}:1: error: section 'overrides' is not closed"),
        format!("{m}: 4 errors; configuration rejected"),
    ] {
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }
    assert!(!err.contains("notes.txt"), "{err}");

    // Fixed: ok, and the conf.d files are named.
    std::fs::write(&main, "defaults {\n    verbosity 2\n}\n").unwrap();
    std::fs::write(
        confd.join("10-a.conf"),
        "devices {\n device {\n  vendor A\n  product X\n }\n}\n",
    )
    .unwrap();
    std::fs::write(
        confd.join("20-b.conf"),
        "overrides {\n  no_path_retry 3\n}\n",
    )
    .unwrap();
    let out = umpath(&["check-config", "--config", m]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&b) && stdout.ends_with(": ok\n"),
        "{stdout}"
    );
}

#[test]
fn explain_names_the_origin_of_every_property() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("multipath.conf");
    std::fs::write(
        &main,
        format!(
            "defaults {{\n    polling_interval 2\n    checker_timeout 7\n}}\ndevices {{\n{SEED_STANZA}}}\nmultipaths {{\n    multipath {{\n        wwid \"{WWID}\"\n        alias lun0\n    }}\n}}\n"
        ),
    )
    .unwrap();
    let m = main.to_str().unwrap();
    let out = umpath(&[
        "explain",
        "--config",
        m,
        "OSNEXUS",
        "QUANTASTOR",
        "--wwid",
        WWID,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        format!("alias = lun0 (setting: multipath.conf multipaths section, {m}:"),
        format!("path_grouping_policy = multibus (setting: storage device configuration, {m}:11, vendor \"OSNEXUS\" product \"QUANTASTOR\")"),
        format!("checker_timeout = 7 (setting: multipath.conf defaults section, {m}:3)"),
        "prio = const (setting: multipath internal)".to_string(),
        "getuid_callout = /sbin/scsi_id -g -u -s /block/%n".to_string(),
        "repeat_count (umpath) = 100".to_string(),
    ] {
        assert!(text.contains(&want), "missing {want:?} in:\n{text}");
    }
    // A vendor of the built-in table, no configuration at all.
    std::fs::write(&main, "").unwrap();
    let out = umpath(&["explain", "--config", m, "3PARdata", "VV"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("path_grouping_policy = group_by_prio (setting: storage device configuration, built-in hwtable entry vendor \"3PARdata\" product \"VV\")"),
        "{text}"
    );
    assert!(text.contains("no_path_retry = 18 "), "{text}");
    // No configuration file at all: built-in values, as multipath-tools.
    let none = dir.path().join("none/multipath.conf");
    let out = umpath(&[
        "explain",
        "--config",
        none.to_str().unwrap(),
        "3PARdata",
        "VV",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("no_path_retry = 18 "));
    // Blacklisted by a built-in product_blacklist.
    let out = umpath(&[
        "explain",
        "--config",
        m,
        "DELL",
        "Universal Xport",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["blacklisted"]
            .as_str()
            .unwrap()
            .contains("product_blacklist"),
        "{v}"
    );
    assert!(v["properties"].as_array().unwrap().len() > 20);
}

#[test]
fn show_config_prints_the_merged_configuration_and_reconfigure_reads_conf_d() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("lun0.img");
    make_image(&img, 16 << 20);
    let confd = dir.path().join("multipath/conf.d");
    std::fs::create_dir_all(&confd).unwrap();
    std::fs::write(
        confd.join("50-ovr.conf"),
        "overrides {\n    no_path_retry 4\n}\n",
    )
    .unwrap();
    let cfg = seed_config(
        "    polling_interval 1",
        &[file_path("p0", &img), file_path("p1", &img)],
    );
    let d = Daemon::start_in(dir, &cfg);
    let text = d.ctl_ok(&["show", "config"]);
    // Parses back, with multipath -t's section order and our entries.
    let c = umpath::config::parse_str(&text, "shown").unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert!(
        text.starts_with("defaults {\n\tverbosity 2\n\tpolling_interval 1\n"),
        "{text}"
    );
    assert!(
        text.contains("\tdevice {\n\t\tvendor \"OSNEXUS\"\n\t\tproduct \"QUANTASTOR\"\n"),
        "{text}"
    );
    assert!(
        text.contains("overrides {\n\tno_path_retry 4\n}\n"),
        "{text}"
    );
    assert!(
        text.contains("\t\twwid \"36000c29abcdef001\"\n\t\talias \"lun0\"\n"),
        "{text}"
    );
    assert_eq!(c.paths().len(), 2);
    let sections: Vec<&str> = text
        .lines()
        .filter(|l| l.ends_with(" {") && !l.starts_with('\t'))
        .collect();
    assert_eq!(
        sections,
        [
            "defaults {",
            "blacklist {",
            "blacklist_exceptions {",
            "devices {",
            "overrides {",
            "multipaths {",
            "paths {"
        ]
    );
    let json: serde_json::Value =
        serde_json::from_str(&d.ctl_ok(&["show", "config", "--json"])).unwrap();
    assert!(json["p0"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["keyword"] == "no_path_retry"
            && e["value"] == "4"
            && e["origin"].as_str().unwrap().contains("overrides section")));
    // show path NAME config: the explain renderer.
    let p0 = d.ctl_ok(&["show", "path", "p0", "config"]);
    assert!(
        p0.contains("no_path_retry = 4 (setting: multipath.conf overrides section, "),
        "{p0}"
    );
    assert!(p0.contains("50-ovr.conf:2)"), "{p0}");

    // A bad conf.d file: rejected with its errors, the running one stays.
    std::fs::write(
        confd.join("60-bad.conf"),
        "defaults {\n    polling_interval 0\n}\n",
    )
    .unwrap();
    let out = d.ctl(&["reconfigure"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("60-bad.conf:2: error: value 0 is out of range"),
        "{err}"
    );
    assert!(d
        .ctl_ok(&["show", "config"])
        .contains("\tpolling_interval 1\n"));
    // Fixed: applied.
    std::fs::write(
        confd.join("60-bad.conf"),
        "overrides {\n    rr_min_io 9\n}\n",
    )
    .unwrap();
    d.ctl_ok(&["reconfigure"]);
    let maps: serde_json::Value =
        serde_json::from_str(&d.ctl_ok(&["show", "maps", "--json"])).unwrap();
    assert_eq!(maps[0]["rr_min_io"], 9);
}

#[test]
fn user_friendly_names_are_bound_once_and_kept_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.img");
    let b = dir.path().join("b.img");
    make_image(&a, 8 << 20);
    make_image(&b, 8 << 20);
    let path = |name: &str, file: &std::path::Path, wwid: &str| {
        format!(
            "    path {{\n        name {name}\n        file {}\n        vendor \"ACME\"\n        product \"DISK\"\n        wwid \"{wwid}\"\n    }}\n",
            file.display()
        )
    };
    let cfg = format!(
        "defaults {{\n    user_friendly_names yes\n    polling_interval 1\n}}\nmultipaths {{\n    multipath {{\n        wwid \"3600b\"\n        alias mpatha\n    }}\n}}\npaths {{\n{}{}}}\n",
        path("pa", &a, "3600a"),
        path("pb", &b, "3600b")
    );
    let mut d = Daemon::start_in(dir, &cfg);
    let names = |d: &Daemon| -> Vec<(String, String)> {
        let maps: serde_json::Value =
            serde_json::from_str(&d.ctl_ok(&["show", "maps", "--json"])).unwrap();
        maps.as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["wwid"].as_str().unwrap().to_string(),
                    m["name"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    // 3600b's alias wins and reserves "mpatha": 3600a gets mpathb.
    let first = names(&d);
    assert_eq!(
        first,
        [
            ("3600a".to_string(), "mpathb".to_string()),
            ("3600b".to_string(), "mpatha".to_string())
        ]
    );
    let bindings = d.dir.path().join("multipath/bindings");
    let text = std::fs::read_to_string(&bindings).unwrap();
    assert!(text.lines().any(|l| l == "mpathb 3600a"), "{text}");
    assert!(text.starts_with('#'), "{text}");
    assert!(d.stop().success());
    // Restart: same names, file unchanged.
    let dir = std::mem::replace(&mut d.dir, tempfile::tempdir().unwrap());
    drop(d);
    let d = Daemon::start_in(dir, &cfg);
    assert_eq!(names(&d), first);
    assert_eq!(std::fs::read_to_string(&bindings).unwrap(), text);
}
