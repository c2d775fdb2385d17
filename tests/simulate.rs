//! `umpath simulate`: the examples run clean against the real engine and
//! write their reports; a bad scenario is a clear error.

// A test crate: a failed unwrap, expect or panic is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::*;

#[test]
fn the_all_down_example_passes_and_writes_json_csv_and_svg() {
    let out = tempfile::tempdir().unwrap();
    let o = run(Command::new(BIN)
        .args([
            "simulate",
            concat!(env!("CARGO_MANIFEST_DIR"), "/examples/all-down.toml"),
            "--out",
        ])
        .arg(out.path()));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("PASS"), "{stdout}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("report.json")).unwrap())
            .unwrap();
    assert_eq!(r["passed"], true);
    assert_eq!(r["data_mismatches"], 0);
    assert_eq!(r["errors_while_a_path_was_usable"], 0);
    assert!(r["ios"].as_u64().unwrap() > 1000, "{}", r["ios"]);
    // Both paths failed and came back.
    assert_eq!(r["failovers"].as_array().unwrap().len(), 2);
    assert!(
        r["failbacks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["carrying_io_after_ms"].is_u64()),
        "{}",
        r["failbacks"]
    );
    let csv = std::fs::read_to_string(out.path().join("report.csv")).unwrap();
    assert!(csv.starts_with("t,iops,errors,p0,p1\n"));
    assert_eq!(csv.lines().count(), 1 + 12);
    let svg = std::fs::read_to_string(out.path().join("chart.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("PASS"));
}

#[test]
fn a_bad_scenario_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.toml");
    std::fs::write(
        &f,
        "duration = 5\n[[event]]\nat = 1\naction = \"fail\"\npath = \"p9\"\n",
    )
    .unwrap();
    let o = run(Command::new(BIN).arg("simulate").arg(&f));
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("bad.toml") && err.contains("p9"), "{err}");
}
