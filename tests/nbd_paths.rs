//! Paths that are NBD servers (transport `nbd`): two nbdkit processes in
//! front of one image, as two controllers in front of one volume. Real
//! faulty peers: nbdkit's error filter, and killing/restarting nbdkit.

// A test crate: a failed unwrap, expect or panic is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::*;

fn nbd_path(name: &str, uri: &str) -> String {
    format!(
        "    path {{\n        name {name}\n        transport nbd\n        uri \"{uri}\"\n        vendor \"OSNEXUS\"\n        product \"QUANTASTOR\"\n        wwid \"{WWID}\"\n    }}\n"
    )
}

/// An nbdkit serving `image` on a Unix socket, with the error filter armed
/// by the existence of `trigger`.
struct Nbdkit {
    child: Child,
    socket: PathBuf,
    dead: bool,
    /// SIGTERM sent: the socket path is no longer ours (a new server may
    /// listen there).
    terminated: bool,
}

impl Nbdkit {
    fn start(socket: &Path, image: &Path, trigger: &Path) -> Nbdkit {
        Nbdkit::with_args(
            socket,
            &[
                "--filter=error".to_string(),
                "file".to_string(),
                image.display().to_string(),
                "error-rate=100%".to_string(),
                format!("error-file={}", trigger.display()),
            ],
        )
    }

    /// An nbdkit on `socket` with this plugin (and filters) and its
    /// parameters.
    fn with_args(socket: &Path, args: &[String]) -> Nbdkit {
        let _ = std::fs::remove_file(socket);
        let child = spawn_nbdkit(socket, args);
        wait_for_path(socket, "nbdkit");
        Nbdkit {
            child,
            socket: socket.to_path_buf(),
            dead: false,
            terminated: false,
        }
    }

    fn kill(&mut self) {
        if std::mem::replace(&mut self.dead, true) {
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.terminated {
            let _ = std::fs::remove_file(&self.socket);
        }
    }

    /// SIGTERM, as `systemctl stop` does: nbdkit stops listening at once
    /// but keeps its open connections for several seconds, answering
    /// every request with ESHUTDOWN. The process is reaped on drop.
    fn terminate(&mut self) {
        if self.dead || std::mem::replace(&mut self.terminated, true) {
            return;
        }
        let pid = self.child.id() as i32;
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for Nbdkit {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Setup {
    d: Daemon,
    kits: Vec<Nbdkit>,
    image: PathBuf,
    triggers: Vec<PathBuf>,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("lun0.img");
    make_image(&image, 64 << 20);
    let mut kits = Vec::new();
    let mut triggers = Vec::new();
    let mut paths = Vec::new();
    for i in 0..2 {
        let sock = dir.path().join(format!("kit{i}.sock"));
        let trigger = dir.path().join(format!("fail{i}"));
        kits.push(Nbdkit::start(&sock, &image, &trigger));
        paths.push(nbd_path(
            &format!("c{i}"),
            &format!("nbd+unix:///lun0?socket={}", sock.display()),
        ));
        triggers.push(trigger);
    }
    let d = Daemon::start_in(
        dir,
        &seed_config("    polling_interval 1\n    checker_timeout 5", &paths),
    );
    Setup {
        d,
        kits,
        image,
        triggers,
    }
}

fn fio(d: &Daemon, size: &str, rate: &str) -> Child {
    fio_with(d, size, rate, &[])
}

/// Unthrottled random writes for `secs` seconds, then their verification.
fn fio_for(d: &Daemon, secs: u32) -> Child {
    fio_with(
        d,
        "32M",
        "0",
        &["--time_based".to_string(), format!("--runtime={secs}")],
    )
}

fn fio_with(d: &Daemon, size: &str, rate: &str, extra: &[String]) -> Child {
    fio_verify(&d.uri("lun0"), size, rate, 8, extra)
}

#[test]
fn nbd_paths_form_one_map_and_serve_real_clients() {
    let s = setup();
    let paths = s.d.paths_json();
    assert_eq!(paths.len(), 2);
    for p in &paths {
        assert_eq!(p["state"], "ready", "{p}");
        assert!(
            p["transport"]
                .as_str()
                .unwrap()
                .starts_with("nbd nbd+unix:///lun0"),
            "{p}"
        );
    }
    let maps: serde_json::Value =
        serde_json::from_str(&s.d.ctl_ok(&["show", "maps", "--json"])).unwrap();
    assert_eq!(maps[0]["size"], 64u64 << 20);
    run_ok(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "write -P 0x61 0 8M",
        "-c",
        "flush",
        "-c",
        "read -P 0x61 0 8M",
        &s.d.uri("lun0"),
    ]));
    // The data is in the image behind both servers.
    let data = std::fs::read(&s.image).unwrap();
    assert!(data[..8 << 20].iter().all(|&b| b == 0x61));
}

#[test]
fn server_errors_fail_the_path_and_it_returns_when_they_stop() {
    let s = setup();
    let fio = fio(&s.d, "32M", "1500");
    std::thread::sleep(Duration::from_millis(1000));
    std::fs::write(&s.triggers[0], b"").unwrap();
    s.d.wait_path(
        "c0",
        "failed by server errors",
        Duration::from_secs(10),
        |p| p["dm_state"] == "failed",
    );
    let ios = s.d.ios("c0");
    std::fs::remove_file(&s.triggers[0]).unwrap();
    s.d.wait_path("c0", "reinstated", Duration::from_secs(10), |p| {
        p["dm_state"] == "active"
    });
    s.d.wait_path("c0", "carrying IO again", Duration::from_secs(15), |p| {
        p["ios"].as_u64().unwrap_or(0) > ios
    });
    fio_ok(fio, &s.d);
}

#[test]
fn a_killed_server_is_a_lost_path_and_a_restarted_one_comes_back() {
    let mut s = setup();
    let fio = fio(&s.d, "32M", "1500");
    std::thread::sleep(Duration::from_millis(1000));
    let sock = s.kits[1].socket.clone();
    s.kits[1].kill();
    s.d.wait_path("c1", "lost with its server", Duration::from_secs(10), |p| {
        p["dm_state"] == "failed"
    });
    std::thread::sleep(Duration::from_millis(1500));
    let ios = s.d.ios("c1");
    s.kits[1] = Nbdkit::start(&sock, &s.image, &s.triggers[1]);
    s.d.wait_path("c1", "reconnected", Duration::from_secs(10), |p| {
        p["dm_state"] == "active"
    });
    s.d.wait_path("c1", "carrying IO again", Duration::from_secs(15), |p| {
        p["ios"].as_u64().unwrap_or(0) > ios
    });
    fio_ok(fio, &s.d);
}

#[test]
fn a_bad_uri_is_a_config_error_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("m.conf");
    std::fs::write(&cfg, seed_config("", &[nbd_path("c0", "nbd+unix:///lun0")])).unwrap();
    let out = run(Command::new(BIN)
        .arg("check-config")
        .arg("--config")
        .arg(&cfg));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("m.conf:") && err.contains("socket="), "{err}");
}

/// A restarted upstream under load (fio unthrottled) is active again
/// within two polling intervals (polling_interval 1) of its return, stays
/// active, and fio sees no error. The old server is stopped with SIGTERM
/// and lingers, answering ESHUTDOWN on the connections it had, as nbdkit
/// does under `systemctl restart`.
#[test]
fn a_restarted_server_under_load_is_back_within_two_polling_intervals() {
    let mut s = setup();
    let fio = fio_for(&s.d, 16);
    std::thread::sleep(Duration::from_millis(1000));
    let sock = s.kits[1].socket.clone();
    s.kits[1].terminate();
    s.d.wait_path("c1", "lost with its server", Duration::from_secs(10), |p| {
        p["dm_state"] == "failed"
    });
    std::thread::sleep(Duration::from_millis(2500));
    let ios = s.d.ios("c1");
    // The old server still runs (reaped when the test ends).
    let _old = std::mem::replace(
        &mut s.kits[1],
        Nbdkit::start(&sock, &s.image, &s.triggers[1]),
    );
    let back = Instant::now();
    let mut active_after = None;
    let mut flaps = 0;
    let mut was_active = false;
    // Watch for a while after: it must come back once and stay.
    while back.elapsed() < Duration::from_secs(6) {
        let active = s.d.path_json("c1")["dm_state"] == "active";
        if active && active_after.is_none() {
            active_after = Some(back.elapsed());
        }
        if was_active && !active {
            flaps += 1;
        }
        was_active = active;
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("c1 active {active_after:?} after its server returned; flaps {flaps}");
    let took = active_after.unwrap_or_else(|| {
        panic!(
            "c1 not reinstated within 6 s of its server's return\n--- daemon log ---\n{}",
            s.d.log_text()
        )
    });
    assert!(
        took <= Duration::from_millis(2500),
        "c1 reinstated {took:?} after its server returned (want <= 2 polling intervals)\n--- daemon log ---\n{}",
        s.d.log_text()
    );
    assert_eq!(
        flaps,
        0,
        "c1 flapped after reinstatement\n--- daemon log ---\n{}",
        s.d.log_text()
    );
    assert!(s.d.ios("c1") > ios, "c1 carries IO again");
    fio_ok(fio, &s.d);
}

/// nbdinfo's view of the map's export.
fn export_flags(d: &Daemon) -> serde_json::Value {
    let out = run_ok(
        Command::new("nbdinfo")
            .arg("--list")
            .arg("--json")
            .arg(d.uri("")),
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("nbdinfo --json");
    v["exports"][0].clone()
}

/// The export advertises what every usable path can do: c0's server
/// cannot zero (so no fast zero), c1's cannot trim. With c1 failed the
/// map can trim again; a connection made then keeps trim, and its trim
/// after c1 is back is "not supported", never a path failure.
#[test]
fn a_map_advertises_what_all_its_usable_paths_can_do() {
    need("nbdinfo");
    need("qemu-io");
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("lun0.img");
    make_image(&image, 64 << 20);
    let img = image.display().to_string();
    let sock0 = dir.path().join("kit0.sock");
    let sock1 = dir.path().join("kit1.sock");
    let _kit0 = Nbdkit::with_args(
        &sock0,
        &[
            "--filter=nozero".to_string(),
            "file".to_string(),
            img.clone(),
        ],
    );
    let _kit1 = Nbdkit::with_args(
        &sock1,
        &[
            "eval".to_string(),
            format!("get_size=stat -c %s {img}"),
            format!("pread=dd if={img} skip=$4 count=$3 iflag=skip_bytes,count_bytes status=none"),
            format!("pwrite=dd of={img} seek=$4 oflag=seek_bytes conv=notrunc status=none"),
            "can_write=exit 0".to_string(),
            "can_trim=exit 3".to_string(),
        ],
    );
    let paths = [("c0", &sock0), ("c1", &sock1)]
        .map(|(n, sock)| nbd_path(n, &format!("nbd+unix:///lun0?socket={}", sock.display())));
    let d = Daemon::start_in(
        dir,
        &seed_config("    polling_interval 1\n    checker_timeout 5", &paths),
    );
    let e = export_flags(&d);
    assert_eq!(e["can_trim"], false, "{e}");
    assert_eq!(e["can_fast_zero"], false, "{e}");
    for flag in ["can_zero", "can_flush", "can_fua", "can_multi_conn"] {
        assert_eq!(e[flag], true, "{flag} in {e}");
    }
    assert_eq!(e["is_read_only"], false, "{e}");

    d.ctl_ok(&["fail", "path", "c1"]);
    let e = export_flags(&d);
    assert_eq!(e["can_trim"], true, "with c1 failed: {e}");
    assert_eq!(e["can_fast_zero"], false, "with c1 failed: {e}");

    // A client that negotiated trim while c1 was failed (umpath's own
    // NBD client keeps the flags of its handshake).
    let client = umpath::transport::nbd::NbdTransport::new(
        umpath::nbd::uri::NbdUri::parse(&d.uri("lun0")).unwrap(),
        Duration::from_secs(10),
    );
    assert_eq!(client.size().unwrap(), 64 << 20);
    assert!(client.caps().trim);
    client.trim(0, 65536).unwrap();
    d.ctl_ok(&["reinstate", "path", "c1"]);
    let e = export_flags(&d);
    assert_eq!(e["can_trim"], false, "with c1 back: {e}");
    let err = client.trim(65536, 65536).unwrap_err();
    assert_eq!(
        err.class,
        umpath::transport::ErrorClass::Unsupported,
        "{err}\n--- daemon log ---\n{}",
        d.log_text()
    );
    assert_eq!(err.errno(), Some(libc::ENOTSUP), "{err}");
    client.write_at(&[0x42; 4096], 0, false).unwrap();
    for p in d.paths_json() {
        assert_eq!(
            p["dm_state"],
            "active",
            "{p}\n--- daemon log ---\n{}",
            d.log_text()
        );
        assert_eq!(p["errors"], 0, "{p}");
    }
}
