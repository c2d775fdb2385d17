//! Declared `node_name` and `tpg` keys on `file` paths group the map
//! with `group_by_node_name` and `group_by_tpg`, and `detect_prio` /
//! `detect_pgpolicy` leave declared paths alone (they report no target
//! port groups) and say where their settings came from.

// A test crate: a failed unwrap, expect or panic is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;

/// A `file` path of the seed identity with extra keys.
fn path_with(name: &str, img: &std::path::Path, extra: &str) -> String {
    file_path(name, img).replace(
        "        serial \"QS0001\"\n",
        &format!("        serial \"QS0001\"\n        {extra}\n"),
    )
}

/// The seed config with an `overrides` section.
fn config(overrides: &str, paths: &[String]) -> String {
    seed_config("    polling_interval 1", paths).replace(
        "multipaths {",
        &format!("overrides {{\n{overrides}\n}}\nmultipaths {{"),
    )
}

fn groups(d: &Daemon) -> Vec<serde_json::Value> {
    let maps: serde_json::Value =
        serde_json::from_str(&d.ctl_ok(&["show", "maps", "--json"])).unwrap();
    maps[0]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["paths"].clone())
        .collect()
}

#[test]
fn declared_keys_group_by_node_name_and_by_tpg() {
    for (policy, keys) in [
        (
            "group_by_node_name",
            [
                "node_name \"iqn.2003-01.org.example:a\"",
                "node_name \"iqn.2003-01.org.example:b\"",
            ],
        ),
        ("group_by_tpg", ["tpg 1", "tpg 2"]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("lun0.img");
        make_image(&img, 16 << 20);
        let paths = [
            path_with("p0", &img, keys[0]),
            path_with("p1", &img, keys[1]),
            path_with("p2", &img, keys[0]),
            path_with("p3", &img, keys[1]),
        ];
        let d = Daemon::start_in(
            dir,
            &config(&format!("    path_grouping_policy {policy}"), &paths),
        );
        assert_eq!(
            groups(&d),
            vec![
                serde_json::json!(["p0", "p2"]),
                serde_json::json!(["p1", "p3"])
            ],
            "{policy}\n{}",
            d.log_text()
        );
        let cfg = d.ctl_ok(&["show", "path", "p0", "config"]);
        assert!(
            cfg.contains(&format!(
                "path_grouping_policy = {policy} (setting: multipath.conf overrides section"
            )),
            "{cfg}"
        );
    }
}

#[test]
fn detect_prio_leaves_a_file_path_on_const_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("lun0.img");
    make_image(&img, 16 << 20);
    let d = Daemon::start_in(
        dir,
        &config(
            "    detect_prio yes\n    detect_pgpolicy yes",
            &[file_path("p0", &img), file_path("p1", &img)],
        ),
    );
    let cfg = d.ctl_ok(&["show", "path", "p0", "config"]);
    assert!(
        cfg.contains("prio = const (setting: multipath internal)"),
        "{cfg}"
    );
    assert!(
        cfg.contains("detect_prio = yes (setting: multipath.conf overrides section"),
        "{cfg}"
    );
    assert!(!cfg.contains("autodetected"), "{cfg}");
    // The seed stanza's multibus stays: no ALUA prioritizer, no detection.
    assert_eq!(groups(&d), vec![serde_json::json!(["p0", "p1"])]);
    assert_eq!(d.path_json("p0")["prio"], 1);
}
