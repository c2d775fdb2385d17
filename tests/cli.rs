//! The command line and the control socket: bad input gets clear errors,
//! `show` has the documented shapes, `demo` works, reconfigure keeps a
//! good configuration when the new one is bad.

// A test crate: a failed unwrap, expect or panic is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

#[test]
fn missing_config_file_is_named() {
    let out = run(Command::new(BIN).args([
        "daemon",
        "--config",
        "/nonexistent/multipath.conf",
        "--nbd-socket",
        "/tmp/x-umpath-test.sock",
        "--control-socket",
        "/tmp/x-umpath-ctl.sock",
    ]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/multipath.conf"), "{err}");
}

#[test]
fn syntax_error_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.conf");
    std::fs::write(&cfg, "defaults {\n    polling_interval 5\n\ndevices {\n").unwrap();
    let out = run(Command::new(BIN)
        .arg("check-config")
        .arg("--config")
        .arg(&cfg));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:", cfg.display())), "{err}");
    assert!(err.contains("error"), "{err}");
    let out = run(Command::new(BIN)
        .arg("daemon")
        .arg("--config")
        .arg(&cfg)
        .arg("--nbd-socket")
        .arg(dir.path().join("n.sock"))
        .arg("--control-socket")
        .arg(dir.path().join("c.sock")));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("{}:", cfg.display())));
}

#[test]
fn unknown_keyword_is_a_warning_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("warn.conf");
    std::fs::write(
        &cfg,
        "defaults {\n    polling_interval 5\n    no_such_keyword 1\n}\n",
    )
    .unwrap();
    let out = run(Command::new(BIN)
        .arg("check-config")
        .arg("--config")
        .arg(&cfg));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:3", cfg.display())), "{err}");
    assert!(err.contains("no_such_keyword"), "{err}");
}

#[test]
fn show_json_shapes_and_topology() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("lun0.img");
    make_image(&img, 16 << 20);
    let cfg = seed_config(
        "    polling_interval 1",
        &[file_path("p0", &img), file_path("p1", &img)],
    );
    let d = Daemon::start_in(dir, &cfg);
    // `show status` is a table unless --json.
    let status = d.ctl_ok(&["show", "status"]);
    assert!(
        status.contains("maps          1") && status.contains("uptime"),
        "{status}"
    );
    let status: serde_json::Value =
        serde_json::from_str(&d.ctl_ok(&["show", "status", "--json"])).unwrap();
    assert_eq!(status["paths"], 2);
    let paths = d.paths_json();
    assert_eq!(paths.len(), 2);
    for p in &paths {
        for k in ["name", "map", "state", "dm_state", "ios"] {
            assert!(p.get(k).is_some(), "{k} missing in {p}");
        }
        assert_eq!(p["map"], "lun0");
        assert_eq!(p["state"], "ready");
        assert_eq!(p["dm_state"], "active");
    }
    let maps: serde_json::Value =
        serde_json::from_str(&d.ctl_ok(&["show", "maps", "--json"])).unwrap();
    let m = &maps[0];
    assert_eq!(m["name"], "lun0");
    assert_eq!(m["wwid"], WWID);
    assert_eq!(m["size"], 16u64 << 20);
    assert_eq!(m["rr_min_io"], 100);
    let groups = m["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "multibus: one group");
    assert_eq!(groups[0]["policy"], "round-robin 0");
    assert_eq!(groups[0]["status"], "active");
    assert_eq!(groups[0]["paths"], serde_json::json!(["p0", "p1"]));
    assert!(groups[0].get("prio").is_some());
    let topo = d.ctl_ok(&["show", "topology"]);
    assert!(topo.starts_with(&format!("lun0 ({WWID})")), "{topo}");
    assert!(topo.contains("OSNEXUS,QUANTASTOR"), "{topo}");
    assert!(topo.contains("size=16M"), "{topo}");
    assert!(
        topo.contains("`-+- policy='round-robin 0' prio=1 status=active"),
        "{topo}"
    );
    assert!(topo.contains("|- p0 ") && topo.contains("`- p1 "), "{topo}");
    // Unknown path names are clear errors.
    let out = d.ctl(&["fail", "path", "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no path named \"nope\""));
    let out = d.ctl(&["fault", "path", "p0", "explode"]);
    assert!(!out.status.success());
}

#[test]
fn a_path_whose_file_is_missing_is_down_with_the_reason_and_the_map_serves() {
    need("qemu-io");
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("lun0.img");
    let missing = dir.path().join("gone.img");
    make_image(&img, 16 << 20);
    let cfg = seed_config(
        "    polling_interval 1",
        &[file_path("p0", &img), file_path("p1", &missing)],
    );
    let d = Daemon::start_in(dir, &cfg);
    let p1 = d.path_json("p1");
    assert_eq!(p1["state"], "faulty", "{p1}");
    assert_eq!(p1["dm_state"], "failed", "{p1}");
    assert!(
        p1["reason"].as_str().unwrap_or("").contains("gone.img"),
        "{p1}"
    );
    run_ok(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "write -P 7 0 1M",
        "-c",
        "read -P 7 0 1M",
        &d.uri("lun0"),
    ]));
    // The file appears: the checker opens it and reinstates the path.
    std::fs::hard_link(&img, &missing).unwrap();
    d.wait_path(
        "p1",
        "reinstated once its file exists",
        Duration::from_secs(10),
        |p| p["dm_state"] == "active",
    );
    // With p0 out of the way, the reinstated path must carry the IO.
    d.ctl_ok(&["fail", "path", "p0"]);
    let before = d.ios("p1");
    run_ok(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "write -P 8 0 4M",
        "-c",
        "read -P 8 0 4M",
        &d.uri("lun0"),
    ]));
    assert!(
        d.ios("p1") > before,
        "{:?}\n{}",
        d.paths_json(),
        d.log_text()
    );
}

#[test]
fn reconfigure_applies_a_good_file_and_rejects_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("lun0.img");
    make_image(&img, 16 << 20);
    let paths = [file_path("p0", &img), file_path("p1", &img)];
    let d = Daemon::start_in(dir, &seed_config("    polling_interval 1", &paths));
    // A broken file: rejected, the running configuration stays.
    std::fs::write(&d.config, "defaults {\n  polling_interval\n").unwrap();
    let out = d.ctl(&["reconfigure"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("multipath.conf:"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(d.paths_json().len(), 2);
    // A good one with another policy: applied to the running map.
    let cfg = seed_config("    polling_interval 1", &paths)
        .replace("rr_min_io               100", "rr_min_io               7");
    std::fs::write(&d.config, cfg).unwrap();
    d.ctl_ok(&["reconfigure"]);
    let maps: serde_json::Value =
        serde_json::from_str(&d.ctl_ok(&["show", "maps", "--json"])).unwrap();
    assert_eq!(maps[0]["rr_min_io"], 7);
    // SIGHUP does the same.
    std::fs::write(&d.config, seed_config("    polling_interval 1", &paths)).unwrap();
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(d.child.id() as i32, libc::SIGHUP) };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let maps: serde_json::Value =
            serde_json::from_str(&d.ctl_ok(&["show", "maps", "--json"])).unwrap();
        if maps[0]["rr_min_io"] == 100 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP did not reconfigure"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sigterm_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("lun0.img");
    make_image(&img, 16 << 20);
    let mut d = Daemon::start_in(
        dir,
        &seed_config("    polling_interval 1", &[file_path("p0", &img)]),
    );
    let status = d.stop();
    assert!(status.success(), "{status}\n{}", d.log_text());
    assert!(!d.control_socket.exists(), "control socket removed at exit");
}

#[test]
fn control_commands_without_a_daemon_say_what_to_do() {
    let out =
        run(Command::new(BIN).args(["--control-socket", "/nonexistent/ctl.sock", "show", "paths"]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/ctl.sock") && err.contains("umpath daemon"),
        "{err}"
    );
}

#[test]
fn demo_serves_the_embedded_default_and_cleans_up() {
    need("nbdinfo");
    let dir = tempfile::tempdir().unwrap();
    let demo_dir = dir.path().join("demo");
    let mut child = Command::new(BIN)
        .args(["demo", "--size", "67108864", "--dir"])
        .arg(&demo_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start demo");
    let lines = read_until(&mut child, Duration::from_secs(20), |l| {
        l.starts_with("Serving until Ctrl-C")
    });
    let uri = lines
        .iter()
        .find(|l| l.starts_with("nbd+unix:///"))
        .expect("a URI line")
        .clone();
    assert!(uri.starts_with("nbd+unix:///lun0?socket="), "{uri}");
    assert!(
        lines.iter().any(|l| l.contains("policy='round-robin 0'")),
        "{lines:?}"
    );
    let size = run_ok(Command::new("nbdinfo").arg("--size").arg(&uri));
    assert_eq!(size.trim(), "67108864");
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn tells_systemd_ready_once_serving_and_stopping_at_exit() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("lun0.img");
    make_image(&img, 16 << 20);
    let cfg = dir.path().join("multipath.conf");
    std::fs::write(
        &cfg,
        seed_config("    polling_interval 1", &[file_path("p0", &img)]),
    )
    .unwrap();
    let notify = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let nbd = dir.path().join("nbd.sock");
    let mut child = Command::new(BIN)
        .arg("--control-socket")
        .arg(dir.path().join("c.sock"))
        .arg("daemon")
        .arg("--config")
        .arg(&cfg)
        .arg("--nbd-socket")
        .arg(&nbd)
        .env("NOTIFY_SOCKET", &notify)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("a notification from the daemon");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.contains("READY=1"), "{msg}");
    // READY=1 means maps are assembled and NBD is listening.
    assert!(nbd.exists(), "NBD socket exists when READY=1 is sent");
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut stopping = false;
    while let Ok(n) = sock.recv(&mut buf) {
        if String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1") {
            stopping = true;
            break;
        }
    }
    assert!(stopping, "STOPPING=1 sent on SIGTERM");
    assert!(child.wait().unwrap().success());
}

#[test]
fn faults_can_be_declared_in_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("lun0.img");
    make_image(&img, 16 << 20);
    let p1 = file_path("p1", &img).replace(
        "        serial",
        "        fault \"delay 5 read; error check\"\n        serial",
    );
    let d = Daemon::start_in(
        dir,
        &seed_config("    polling_interval 1", &[file_path("p0", &img), p1]),
    );
    let p1 = d.path_json("p1");
    let fault = p1["fault"].as_str().unwrap_or("");
    assert!(
        fault.contains("delay 5") && fault.contains("error check"),
        "{p1}"
    );
    assert_eq!(
        p1["state"], "faulty",
        "the check fault applies from the start: {p1}"
    );
    // A bad fault spec is a config error with its line.
    let bad = d.dir.path().join("bad.conf");
    let text = std::fs::read_to_string(&d.config)
        .unwrap()
        .replace("delay 5 read; error check", "explode");
    std::fs::write(&bad, text).unwrap();
    let out = run(Command::new(BIN)
        .arg("check-config")
        .arg("--config")
        .arg(&bad));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.conf:") && err.contains("explode"),
        "{err}"
    );
}

/// Runs the demo with stderr to a file until it serves, runs `check` on
/// its printed lines, then stops it and returns the log.
fn demo_log(extra: &[&str], check: impl FnOnce(&[String])) -> String {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("demo.log");
    let mut child = Command::new(BIN)
        .args(extra)
        .args(["demo", "--size", "64M", "--dir"])
        .arg(dir.path().join("demo"))
        .env_remove("JOURNAL_STREAM")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start demo");
    let lines = read_until(&mut child, Duration::from_secs(20), |l| {
        l.starts_with("Serving until Ctrl-C")
    });
    check(&lines);
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    std::fs::read_to_string(&log).unwrap()
}

#[test]
fn logs_in_a_file_are_plain_and_the_demo_has_no_warning() {
    let log = demo_log(&[], |lines| {
        // The printed commands name this binary, so they run as printed.
        let me = std::fs::canonicalize(BIN).unwrap();
        assert!(
            lines
                .iter()
                .any(|l| l.contains(&format!("{} --control-socket", me.display()))),
            "{lines:?}"
        );
        assert!(lines.iter().any(|l| l.contains("libnbd-bin")), "{lines:?}");
    });
    assert!(!log.contains('\x1b'), "escape codes in a log file:\n{log}");
    assert!(log.contains("umpath ready"), "{log}");
    assert!(!log.contains("WARN"), "the demo's own config warns:\n{log}");
}

#[test]
fn log_format_json_writes_one_object_per_line() {
    let log = demo_log(&["--log-format", "json"], |_| {});
    let mut n = 0;
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
        n += 1;
    }
    assert!(n > 3, "{log}");
    assert!(log.contains(r#""map":"lun0""#), "{log}");
}

#[test]
fn a_closed_pipe_ends_a_command_quietly_and_sizes_take_suffixes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("multipath.conf");
    std::fs::write(&cfg, "defaults {\n    polling_interval 2\n}\n").unwrap();
    // A large answer into a pipe nobody reads.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{BIN} --config {} explain OSNEXUS QUANTASTOR --json | true; echo rc=${{PIPESTATUS:-x}}",
            cfg.display()
        ))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "{err}"
    );
    let bad = Command::new(BIN)
        .args(["demo", "--size", "lots"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("is not a size"),
        "{bad:?}"
    );
}

#[test]
fn every_positional_argument_has_help() {
    for (cmd, want) in [
        (&["fail", "--help"][..], "The path's name"),
        (&["fault", "--help"][..], "error | delay MS"),
        (&["switch", "--help"][..], "numbered from 1"),
        (&["explain", "--help"][..], "The device's vendor"),
        (&["simulate", "--help"][..], "The scenario file"),
        (&["demo", "--help"][..], "64M"),
    ] {
        let out = Command::new(BIN).args(cmd).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(want), "{cmd:?}: {text}");
    }
}

/// Without the nbd module, `attach` says so; `detach` of a map with no
/// device and `attach` of an unknown map are clear errors too. (Skipped
/// where the nbd module is loaded: this test must not attach a device on
/// the host; the VM test `vm_kernel_nbd` does that.)
#[test]
fn attach_without_the_nbd_module_is_a_clear_error() {
    if Path::new("/sys/module/nbd").exists() {
        eprintln!("skipped: the nbd module is loaded on this host");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("lun0.img");
    make_image(&img, 16 << 20);
    let cfg = seed_config("    polling_interval 1", &[file_path("p0", &img)]);
    let d = Daemon::start_in(dir, &cfg);
    let out = d.ctl(&["attach", "lun0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the nbd kernel module is not loaded (modprobe nbd)"),
        "{err}"
    );
    let out = d.ctl(&["attach", "nosuch"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no map named"));
    let out = d.ctl(&["detach", "lun0"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no kernel NBD device"));
    let maps = d.ctl_ok(&["show", "maps"]);
    assert!(maps.contains("device"), "{maps}");
}
