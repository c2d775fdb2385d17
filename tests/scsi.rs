//! SCSI discovery end to end without SCSI hardware: a fake sysfs tree
//! whose device nodes are regular files. `umpath probe` reports the disks;
//! `umpath daemon --scsi` makes a map of the two paths to one WWID, checks
//! them (directio), and serves the map over NBD with the disks' logical
//! block size as the minimum block size. Real SCSI (TUR over SG_IO, sense
//! data) is proven in the VM harness.

// A test crate: a failed unwrap, expect or panic is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Page 0x83 of a QEMU scsi-hd with wwn=0x5000c50015ea71ac, serial QS0001.
fn pg83() -> Vec<u8> {
    let mut b = vec![0x00, 0x83, 0x00, 0x16, 0x02, 0x00, 0x00, 0x06];
    b.extend_from_slice(b"QS0001");
    b.extend_from_slice(&[
        0x01, 0x03, 0x00, 0x08, 0x50, 0x00, 0xc5, 0x00, 0x15, 0xea, 0x71, 0xac,
    ]);
    b
}

fn fake_disk(sysfs: &Path, hctl: &str, name: &str, sectors: u64) {
    let dir = sysfs.join("class/scsi_device").join(hctl).join("device");
    let b = dir.join("block").join(name);
    std::fs::create_dir_all(b.join("queue")).unwrap();
    for (f, v) in [
        ("vendor", "OSNEXUS \n"),
        ("model", "QUANTASTOR      \n"),
        ("rev", "2.5+\n"),
        ("type", "0\n"),
        ("state", "running\n"),
        ("timeout", "30\n"),
    ] {
        std::fs::write(dir.join(f), v).unwrap();
    }
    std::fs::write(b.join("size"), format!("{sectors}\n")).unwrap();
    std::fs::write(b.join("queue/logical_block_size"), "512\n").unwrap();
    std::fs::write(dir.join("vpd_pg83"), pg83()).unwrap();
}

const CONF: &str = r#"defaults {
    polling_interval 1
    path_checker directio
}
devices {
    device {
          vendor                  "OSNEXUS"
          product                 "QUANTASTOR"
          path_grouping_policy    multibus
          path_selector           "round-robin 0"
          rr_min_io               100
    }
}
multipaths {
    multipath {
        wwid "35000c50015ea71ac"
        alias lun7
    }
}
"#;

#[test]
fn probe_lists_fake_disks() {
    let dir = tempfile::tempdir().unwrap();
    let sysfs = dir.path().join("sys");
    fake_disk(&sysfs, "2:0:0:1", "sdb", 16384);
    fake_disk(&sysfs, "3:0:0:1", "sdc", 16384);
    let conf = dir.path().join("multipath.conf");
    std::fs::write(&conf, CONF).unwrap();
    let out = run_ok(
        Command::new(BIN)
            .arg("probe")
            .arg("--sysfs")
            .arg(&sysfs)
            .arg("--config")
            .arg(&conf)
            .arg("--json"),
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let devs = v["devices"].as_array().unwrap();
    assert_eq!(devs.len(), 2, "{out}");
    for d in devs {
        assert_eq!(d["wwid"], "35000c50015ea71ac", "{out}");
        assert_eq!(d["map"], "lun7", "{out}");
        assert_eq!(d["vendor"], "OSNEXUS", "{out}");
    }
    let text = run_ok(
        Command::new(BIN)
            .arg("probe")
            .arg("--sysfs")
            .arg(&sysfs)
            .arg("--config")
            .arg(&conf),
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("sdb ") && l.contains("lun7")),
        "{text}"
    );
}

#[test]
fn daemon_serves_discovered_disks() {
    need("nbdinfo");
    let dir = tempfile::tempdir().unwrap();
    let sysfs = dir.path().join("sys");
    let devdir = dir.path().join("dev");
    std::fs::create_dir_all(&devdir).unwrap();
    // Both "paths" reach the same "LUN": one 8 MiB file, two names.
    make_image(&devdir.join("sdb"), 8 << 20);
    std::fs::hard_link(devdir.join("sdb"), devdir.join("sdc")).unwrap();
    fake_disk(&sysfs, "2:0:0:1", "sdb", 16384);
    fake_disk(&sysfs, "3:0:0:1", "sdc", 16384);
    let conf = dir.path().join("multipath.conf");
    std::fs::write(&conf, CONF).unwrap();
    let nbd = dir.path().join("nbd.sock");
    let ctl = dir.path().join("control.sock");
    let log = dir.path().join("daemon.log");
    let mut child = Command::new(BIN)
        .arg("--control-socket")
        .arg(&ctl)
        .arg("daemon")
        .arg("--config")
        .arg(&conf)
        .arg("--nbd-socket")
        .arg(&nbd)
        .arg("--scsi")
        .arg("--sysfs")
        .arg(&sysfs)
        .arg("--dev-dir")
        .arg(&devdir)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let show = |what: &str| {
        Command::new(BIN)
            .arg("--control-socket")
            .arg(&ctl)
            .args(["show", what, "--json"])
            .output()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let paths = loop {
        let out = show("paths");
        if out.status.success() && nbd.exists() {
            break serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap();
        }
        assert!(
            Instant::now() < deadline && child.try_wait().unwrap().is_none(),
            "daemon not ready:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let paths = paths.as_array().unwrap().clone();
    assert_eq!(paths.len(), 2, "{paths:?}\n{}", log_text());
    for p in &paths {
        assert_eq!(p["map"], "lun7");
        assert_eq!(p["state"], "ready", "{p}\n{}", log_text());
    }
    let info =
        run_ok(Command::new("nbdinfo").arg(format!("nbd+unix:///lun7?socket={}", nbd.display())));
    assert!(info.contains("export-size: 8388608"), "{info}");
    assert!(info.contains("block_size_minimum: 512"), "{info}");
    // IO through the map, at an offset and length that are not multiples
    // of the block size: lands in the "disk" and reads back.
    need("qemu-io");
    let uri = format!("nbd+unix:///lun7?socket={}", nbd.display());
    run_ok(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "write -P 0xab 1000 3000",
        "-c",
        "read -P 0xab 1000 3000",
        &uri,
    ]));
    let data = std::fs::read(devdir.join("sdb")).unwrap();
    assert!(data[1000..4000].iter().all(|&b| b == 0xab));
    assert_eq!(data[999], 0);
    assert_eq!(data[4000], 0);
    // SIGTERM.
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("daemon did not stop:\n{}", log_text());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn getuid_callout_scsi_id_keeps_the_computed_wwid_and_others_run() {
    let dir = tempfile::tempdir().unwrap();
    let sysfs = dir.path().join("sys");
    let devd = dir.path().join("dev");
    std::fs::create_dir_all(&devd).unwrap();
    fake_disk(&sysfs, "0:0:0:0", "sda", 2048);
    let probe = |callout: &str| -> serde_json::Value {
        let cfg = dir.path().join("m.conf");
        std::fs::write(
            &cfg,
            format!("devices {{\n    device {{\n        vendor \"OSNEXUS\"\n        product \"QUANTASTOR\"\n        getuid_callout \"{callout}\"\n    }}\n}}\n"),
        )
        .unwrap();
        let out = run(Command::new(BIN)
            .args(["probe", "--json", "--no-sgio", "--sysfs"])
            .arg(&sysfs)
            .arg("--dev-dir")
            .arg(&devd)
            .arg("--config")
            .arg(&cfg));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    // XenServer's callout names scsi_id: the same identifier, nothing run.
    let v = probe("/sbin/scsi_id -g -u -s /block/%n");
    assert_eq!(v["devices"][0]["wwid"], "35000c50015ea71ac", "{v}");
    // Any other callout runs with %n replaced.
    let v = probe("/bin/echo 3600custom-%n");
    assert_eq!(v["devices"][0]["wwid"], "3600custom-sda", "{v}");
}
