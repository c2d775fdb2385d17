//! Operating umpath (issue 10): Prometheus metrics, `umpath top`, the
//! demo's failover drill, judged from outside with the real binary.
//!
//! - `/metrics` (set by `umpath_metrics_listen`) passes `promtool check
//!   metrics` (Debian's prometheus package), its IO counters grow with
//!   qemu-io's IO, a failed path shows as `dm_state="failed"`, OpenMetrics
//!   is served to clients that ask for it;
//! - a metrics port in use: the daemon starts anyway and says which
//!   address; with `--metrics-required` it refuses to start;
//! - a scrape storm (many parallel scrapes, idle connections) leaves the
//!   daemon serving IO and metrics;
//! - `umpath top` over a pipe prints one table with the map and its paths;
//! - `umpath demo --drill` fails a path within ~6 s, then brings it back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn need_promtool() {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("promtool").is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "promtool is not installed: run ./scripts/test.sh, or apt-get install prometheus"
    );
}

/// A daemon on two file paths to one image, with metrics on a free port.
fn daemon_with_metrics() -> (Daemon, String) {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("lun0.img");
    make_image(&img, 64 << 20);
    let cfg = seed_config(
        "    polling_interval 1\n    umpath_metrics_listen 127.0.0.1:0",
        &[file_path("p0", &img), file_path("p1", &img)],
    );
    let d = Daemon::start_in(dir, &cfg);
    let log = d.log_text();
    let addr = log
        .lines()
        .find_map(|l| l.split("metrics on http://").nth(1))
        .and_then(|r| r.split('/').next())
        .unwrap_or_else(|| panic!("no metrics address in the log:\n{log}"))
        .to_string();
    (d, addr)
}

/// One HTTP GET; returns (status line, headers, body).
fn get(addr: &str, path: &str, accept: Option<&str>) -> (String, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_string(), headers.to_string(), body.to_string())
}

/// A scrape newer than the renderer's one-second cache.
fn scrape(addr: &str) -> String {
    std::thread::sleep(Duration::from_millis(1100));
    let (status, headers, body) = get(addr, "/metrics", None);
    assert!(status.contains("200"), "{status}\n{headers}\n{body}");
    assert!(headers.contains("text/plain; version=0.0.4"), "{headers}");
    body
}

/// The value of the sample whose line starts with `series` (name and labels).
fn value(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no sample {series} in:\n{body}"))
        .trim()
        .parse()
        .unwrap()
}

fn promtool_check(body: &str) {
    need_promtool();
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}\n{}{}\n--- exposition ---\n{body}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn metrics_scrape_passes_promtool_and_follows_io_and_failures() {
    let (d, addr) = daemon_with_metrics();
    let before = scrape(&addr);
    promtool_check(&before);
    let ios0 = value(&before, "umpath_path_ios_total{map=\"lun0\",path=\"p0\"}")
        + value(&before, "umpath_path_ios_total{map=\"lun0\",path=\"p1\"}");

    run_ok(&mut qemu_io(
        &d,
        &["write -P 0x5a 0 4M", "read -P 0x5a 0 4M", "flush"],
    ));
    let after = scrape(&addr);
    promtool_check(&after);
    let ios1 = value(&after, "umpath_path_ios_total{map=\"lun0\",path=\"p0\"}")
        + value(&after, "umpath_path_ios_total{map=\"lun0\",path=\"p1\"}");
    assert!(ios1 > ios0, "IOs did not grow: {ios0} -> {ios1}");
    let written = value(
        &after,
        "umpath_path_written_bytes_total{map=\"lun0\",path=\"p0\"}",
    ) + value(
        &after,
        "umpath_path_written_bytes_total{map=\"lun0\",path=\"p1\"}",
    );
    assert!(written >= (4 << 20) as f64, "written bytes {written}");
    let lat_count = value(
        &after,
        "umpath_path_io_duration_seconds_count{map=\"lun0\",path=\"p0\"}",
    ) + value(
        &after,
        "umpath_path_io_duration_seconds_count{map=\"lun0\",path=\"p1\"}",
    );
    assert!(
        lat_count >= ios1 - ios0,
        "latency histogram counted {lat_count} of {ios1} IOs"
    );
    assert_eq!(
        value(
            &after,
            "umpath_map_paths{map=\"lun0\",wwid=\"36000c29abcdef001\"}"
        ),
        2.0
    );
    assert_eq!(value(&after, "umpath_build_info{version=\"0.1.0\"}"), 1.0);

    d.ctl_ok(&["fail", "path", "p1"]);
    let failed = scrape(&addr);
    promtool_check(&failed);
    assert_eq!(
        value(
            &failed,
            "umpath_path_dm_state{map=\"lun0\",path=\"p1\",state=\"failed\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &failed,
            "umpath_path_dm_state{map=\"lun0\",path=\"p1\",state=\"active\"}"
        ),
        0.0
    );
    assert_eq!(
        value(
            &failed,
            "umpath_path_admin_failed{map=\"lun0\",path=\"p1\"}"
        ),
        1.0
    );
    assert!(
        value(
            &failed,
            "umpath_path_failures_total{map=\"lun0\",path=\"p1\"}"
        ) >= 1.0
    );
    assert_eq!(
        value(
            &failed,
            "umpath_map_active_paths{map=\"lun0\",wwid=\"36000c29abcdef001\"}"
        ),
        1.0
    );
    assert!(
        value(
            &failed,
            "umpath_path_check_duration_seconds_count{map=\"lun0\",path=\"p0\"}"
        ) >= 1.0
    );

    d.ctl_ok(&["reinstate", "path", "p1"]);
    d.ctl_ok(&["reconfigure"]);
    let back = scrape(&addr);
    assert!(
        value(
            &back,
            "umpath_path_reinstatements_total{map=\"lun0\",path=\"p1\"}"
        ) >= 1.0
    );
    assert_eq!(
        value(&back, "umpath_config_reloads_total{result=\"success\"}"),
        1.0
    );

    // OpenMetrics for clients that ask (Prometheus does).
    let (status, headers, om) = get(
        &addr,
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
    );
    assert!(status.contains("200"), "{status}");
    assert!(
        headers.contains("application/openmetrics-text"),
        "{headers}"
    );
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(om.contains("# TYPE umpath_path_ios counter\n"), "{om}");
    // Every series the Grafana dashboard queries exists.
    let dash = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/grafana/umpath.json"
    ))
    .unwrap();
    serde_json::from_str::<serde_json::Value>(&dash).expect("the dashboard is JSON");
    for name in dash.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if name.starts_with("umpath_") {
            assert!(
                back.lines().any(|l| l.starts_with(name)),
                "the dashboard queries {name}, which /metrics does not have"
            );
        }
    }
    let (status, _, _) = get(&addr, "/nothing", None);
    assert!(status.contains("404"), "{status}");
    println!(
        "metrics: {} series, {} bytes; IOs {ios0} -> {ios1}",
        after.lines().filter(|l| !l.starts_with('#')).count(),
        after.len()
    );
}

#[test]
fn metrics_port_in_use_is_named_and_fatal_only_when_required() {
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("lun0.img");
    make_image(&img, 16 << 20);
    let cfg = seed_config(
        &format!("    polling_interval 1\n    umpath_metrics_listen {addr}"),
        &[file_path("p0", &img)],
    );
    // The keyword's address is taken: the daemon serves without metrics.
    let d = Daemon::start_in(dir, &cfg);
    let log = d.log_text();
    assert!(
        log.contains(&format!("cannot listen on metrics {addr}"))
            && log.contains("serving without metrics"),
        "{log}"
    );
    d.ctl_ok(&["show", "paths"]);

    // --metrics-required (and --metrics-listen over the keyword): refused.
    let out = Command::new(BIN)
        .arg("--control-socket")
        .arg(d.dir.path().join("control2.sock"))
        .arg("daemon")
        .arg("--config")
        .arg(&d.config)
        .arg("--nbd-socket")
        .arg(d.dir.path().join("nbd2.sock"))
        .args(["--metrics-listen", &addr, "--metrics-required"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "started with its metrics port taken:\n{err}"
    );
    assert!(
        err.contains(&format!("cannot listen on metrics {addr}")),
        "{err}"
    );
    drop(busy);
}

/// One scrape that may fail (connection refused, reset, 503): its status
/// line, or the error.
fn try_scrape(addr: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(15)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf);
    if text.starts_with("HTTP/1.1 200") && text.contains("umpath_path_ios_total") {
        Ok("200".into())
    } else {
        Err(text.lines().next().unwrap_or("empty answer").to_string())
    }
}

#[test]
fn scrape_storm_leaves_io_and_metrics_working() {
    let (d, addr) = daemon_with_metrics();
    // Idle connections that never send a request (more than the server's
    // connection limit), then parallel scrapers while IO runs.
    let idle: Vec<TcpStream> = (0..32)
        .filter_map(|_| TcpStream::connect(&addr).ok())
        .collect();
    let t0 = Instant::now();
    let scrapers: Vec<_> = (0..16)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let (mut ok, mut refused) = (0, 0);
                let end = Instant::now() + Duration::from_secs(5);
                while Instant::now() < end {
                    match try_scrape(&addr) {
                        Ok(_) => ok += 1,
                        Err(_) => refused += 1,
                    }
                }
                (ok, refused)
            })
        })
        .collect();
    let io_start = Instant::now();
    run_ok(&mut qemu_io(
        &d,
        &["write -P 0x11 0 8M", "read -P 0x11 0 8M"],
    ));
    let io_time = io_start.elapsed();
    let (ok, refused) = scrapers
        .into_iter()
        .map(|t| t.join().unwrap())
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    let storm = t0.elapsed();
    assert!(
        io_time < Duration::from_secs(10),
        "IO took {io_time:?} during the storm"
    );
    // The idle connections are dropped by the server after its head
    // timeout, so scrapes get through while they are still open.
    assert!(
        ok > 0,
        "no scrape answered in {storm:?} ({refused} refused)"
    );
    try_scrape(&addr).unwrap_or_else(|e| panic!("a scrape after the storm: {e}"));
    drop(idle);
    d.ctl_ok(&["show", "paths"]);
    println!("scrape storm: {ok} scrapes answered, {refused} refused (503 or reset) in {storm:?} by 16 scrapers next to 32 idle connections; 16 MiB of IO took {io_time:?}");
}

#[test]
fn top_over_a_pipe_prints_one_table() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("lun0.img");
    make_image(&img, 16 << 20);
    let cfg = seed_config(
        "    polling_interval 1",
        &[file_path("p0", &img), file_path("p1", &img)],
    );
    let d = Daemon::start_in(dir, &cfg);
    d.ctl_ok(&["fail", "path", "p1"]);
    let t0 = Instant::now();
    let out = d.ctl_ok(&["top"]);
    let took = t0.elapsed();
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.len() == 5, "{out}");
    assert!(
        lines[0].starts_with("umpath top - 1 map(s), 2 path(s)"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("MAP/PATH")
            && lines[1].contains("IOPS")
            && lines[1].contains("LAST EVENT"),
        "{out}"
    );
    assert!(
        lines[2].starts_with("lun0 ") && lines[2].contains("1/2 active"),
        "{out}"
    );
    assert!(
        lines[3].starts_with("  p0 ") && lines[3].contains("active ready"),
        "{out}"
    );
    assert!(
        lines[4].starts_with("  p1 ")
            && lines[4].contains("offline")
            && lines[4].contains("path p1 failed: failed by admin"),
        "{out}"
    );
    assert!(!out.contains('\x1b'), "escape codes on a pipe: {out:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "took {took:?}"
    );
}

#[test]
fn demo_drill_fails_and_restores_paths() {
    let dir = tempfile::tempdir().unwrap();
    let demo_dir = dir.path().join("demo");
    let mut child = Command::new(BIN)
        .args(["demo", "--drill", "--size", "16777216", "--dir"])
        .arg(&demo_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let banner = read_until(&mut child, Duration::from_secs(20), |l| {
        l.starts_with("Serving until")
    });
    let mut child = Kill(child);
    let banner = banner.join("\n");
    assert!(
        banner.contains("Failover drill") && banner.contains(" top"),
        "{banner}"
    );
    let sock = demo_dir.join("control.sock");
    let states = || -> Vec<(String, String)> {
        let out = Command::new(BIN)
            .arg("--control-socket")
            .arg(&sock)
            .args(["show", "paths", "--json"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|p| {
                        (
                            p["name"].as_str().unwrap_or("").to_string(),
                            p["dm_state"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let t0 = Instant::now();
    let failed_at = loop {
        if states().iter().any(|(_, s)| s == "failed") {
            break t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(7),
            "no path failed within 7 s: {:?}",
            states()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // The next step reinstates it: all paths active again.
    loop {
        if states().iter().all(|(_, s)| s == "active") {
            break;
        }
        assert!(
            t0.elapsed() < failed_at + Duration::from_secs(7),
            "the drill did not reinstate: {:?}",
            states()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The drill's load reaches the paths.
    let top = Command::new(BIN)
        .arg("--control-socket")
        .arg(&sock)
        .arg("top")
        .output()
        .unwrap();
    let top = String::from_utf8_lossy(&top.stdout);
    let iops: f64 = top
        .lines()
        .find(|l| l.starts_with("lun0 "))
        .and_then(|l| l.split_whitespace().nth(5))
        .and_then(|v| v.trim_end_matches('k').parse().ok())
        .unwrap_or(0.0);
    assert!(iops > 0.0, "no drill load in top:\n{top}");
    let _ = child.0.kill();
    println!("drill: first path failed after {failed_at:?}; top:\n{top}");
}
