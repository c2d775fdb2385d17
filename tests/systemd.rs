//! systemd integration: socket activation through `systemd-socket-activate`
//! (sockets named `nbd` and `control`, a wrong kind refused), the watchdog
//! through a fake NOTIFY_SOCKET, the units checked by `systemd-analyze
//! verify` and `systemd-analyze security`, the man page the units name.
//! Peers: systemd (systemd-socket-activate, systemd-analyze), libnbd-bin
//! (nbdinfo), man-db (man).

// A test crate: a failed unwrap, expect or panic is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn need_pkg(bin: &str, pkg: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{bin} is not installed: run ./scripts/test.sh, or apt-get install {pkg}"
    );
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn config_in(dir: &Path) -> PathBuf {
    let img = dir.join("lun0.img");
    make_image(&img, 16 << 20);
    let cfg = dir.join("multipath.conf");
    std::fs::write(
        &cfg,
        seed_config("    polling_interval 1", &[file_path("p0", &img)]),
    )
    .unwrap();
    cfg
}

/// Waits until `path` accepts connections (the activator listens before it
/// starts the daemon, so this is at once).
fn wait_socket(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(path).is_err() {
        assert!(
            Instant::now() < deadline,
            "{} never listened",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn socket_activation_serves_nbd_and_control_on_the_passed_sockets() {
    need_pkg("systemd-socket-activate", "systemd");
    need_pkg("nbdinfo", "libnbd-bin");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_in(dir.path());
    let nbd = dir.path().join("act-nbd.sock");
    let ctl = dir.path().join("act-ctl.sock");
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let mut child = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&nbd)
        .arg("-l")
        .arg(&ctl)
        .arg("--fdname=nbd:control")
        .arg(BIN)
        .arg("daemon")
        .arg("--config")
        .arg(&cfg)
        // Not used: the passed sockets win.
        .arg("--nbd-socket")
        .arg(dir.path().join("bound-nbd.sock"))
        .arg("--control-socket")
        .arg(dir.path().join("bound-ctl.sock"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_socket(&nbd);
    // The first connection starts the daemon; nbdinfo waits for it.
    let out = Command::new("nbdinfo")
        .arg(format!("nbd+unix:///lun0?socket={}", nbd.display()))
        .output()
        .unwrap();
    let logtext = || std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "nbdinfo: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        logtext()
    );
    let info = String::from_utf8_lossy(&out.stdout);
    assert!(info.contains("export-size: 16777216"), "{info}");
    let show = run(Command::new(BIN)
        .arg("--control-socket")
        .arg(&ctl)
        .args(["show", "maps"]));
    assert!(show.status.success(), "{}", logtext());
    assert!(String::from_utf8_lossy(&show.stdout).contains("lun0"));
    assert!(!dir.path().join("bound-nbd.sock").exists(), "{}", logtext());
    assert!(!dir.path().join("bound-ctl.sock").exists(), "{}", logtext());
    let bye = run(Command::new(BIN)
        .arg("--control-socket")
        .arg(&ctl)
        .arg("shutdown"));
    assert!(bye.status.success());
    assert!(child.wait().unwrap().success(), "{}", logtext());
    // The socket files are the activator's: left in place.
    assert!(nbd.exists() && ctl.exists());
    assert!(logtext().contains("NBD on a Unix socket from systemd"));
}

#[test]
fn socket_activation_refuses_a_datagram_socket() {
    need_pkg("systemd-socket-activate", "systemd");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_in(dir.path());
    let nbd = dir.path().join("dgram.sock");
    let child = Command::new("systemd-socket-activate")
        .arg("--datagram")
        .arg("-l")
        .arg(&nbd)
        .arg("--fdname=nbd")
        .arg(BIN)
        .arg("daemon")
        .arg("--config")
        .arg(&cfg)
        .arg("--nbd-socket")
        .arg(dir.path().join("bound-nbd.sock"))
        .arg("--control-socket")
        .arg(dir.path().join("bound-ctl.sock"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A datagram starts the daemon.
    let deadline = Instant::now() + Duration::from_secs(10);
    let s = UnixDatagram::unbound().unwrap();
    while s.send_to(b"x", &nbd).is_err() {
        assert!(Instant::now() < deadline, "the activator never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("descriptor 3 (named \"nbd\")") && err.contains("stream socket"),
        "{err}"
    );
    assert!(!dir.path().join("bound-nbd.sock").exists());
}

#[test]
fn watchdog_is_fed_while_the_supervisor_answers() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_in(dir.path());
    let notify = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut child = Command::new(BIN)
        .arg("--control-socket")
        .arg(dir.path().join("c.sock"))
        .arg("daemon")
        .arg("--config")
        .arg(&cfg)
        .arg("--nbd-socket")
        .arg(dir.path().join("nbd.sock"))
        .env("NOTIFY_SOCKET", &notify)
        // 400 ms: WATCHDOG=1 every 200 ms.
        .env("WATCHDOG_USEC", "400000")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 4096];
    let mut ready = false;
    let mut pats = Vec::new();
    let t0 = Instant::now();
    while pats.len() < 6 && t0.elapsed() < Duration::from_secs(15) {
        let Ok(n) = sock.recv(&mut buf) else { break };
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        ready |= msg.contains("READY=1");
        if msg.lines().any(|l| l == "WATCHDOG=1") {
            pats.push(Instant::now());
        }
    }
    assert!(ready, "READY=1 first");
    assert_eq!(pats.len(), 6, "WATCHDOG=1 keeps coming");
    // Every half interval, give or take scheduling.
    let span = pats[5] - pats[0];
    assert!(
        span >= Duration::from_millis(700) && span <= Duration::from_millis(2500),
        "5 intervals took {span:?}"
    );
    // A reconfigure keeps it fed.
    let r = run(Command::new(BIN)
        .arg("--control-socket")
        .arg(dir.path().join("c.sock"))
        .arg("reconfigure"));
    assert!(r.status.success());
    let mut after = 0;
    while after < 2 {
        let n = sock.recv(&mut buf).expect("WATCHDOG=1 after a reconfigure");
        if String::from_utf8_lossy(&buf[..n])
            .lines()
            .any(|l| l == "WATCHDOG=1")
        {
            after += 1;
        }
    }
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}

#[test]
fn scsi_discovery_can_be_switched_on_in_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("multipath.conf");
    std::fs::write(&cfg, "defaults {\n    umpath_scsi_discovery yes\n}\n").unwrap();
    let out = run(Command::new(BIN)
        .arg("check-config")
        .arg("--config")
        .arg(&cfg));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).is_empty(),
        "no warning for umpath's own keyword: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The daemon discovers (this machine's /sys; it may have no disks).
    let d = Daemon::start_in(dir, "defaults {\n    umpath_scsi_discovery yes\n}\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.log_text().contains("SCSI discovery") {
        assert!(Instant::now() < deadline, "{}", d.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The units as installed: `umpath` on the search path, the man page the
/// units name on MANPATH. `systemd-analyze verify` runs `man` for
/// Documentation= and checks the executables.
#[test]
fn units_verify_and_are_hardened() {
    need_pkg("systemd-analyze", "systemd");
    need_pkg("man", "man-db");
    let dir = tempfile::tempdir().unwrap();
    let man = dir.path().join("man/man8");
    let out = run(Command::new(BIN).args(["generate", "man"]).arg(&man));
    assert!(out.status.success());
    let units = dir.path().join("units");
    std::fs::create_dir_all(&units).unwrap();
    let names = [
        "umpathd.service",
        "umpathd.socket",
        "umpathd-control.socket",
    ];
    for n in names {
        let text = std::fs::read_to_string(repo().join("systemd").join(n)).unwrap();
        let text = text
            .replace("ExecStart=umpath ", &format!("ExecStart={BIN} "))
            .replace("ExecReload=umpath ", &format!("ExecReload={BIN} "));
        std::fs::write(units.join(n), text).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(names.map(|n| units.join(n)))
        .env("MANPATH", dir.path().join("man"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.trim().is_empty(), "{err}");

    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(repo().join("systemd/umpathd.service"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("{text}{}", String::from_utf8_lossy(&out.stderr)));
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    eprintln!("systemd-analyze security: {score}");
    assert!(score <= 4.0, "{line}");
}

#[test]
fn a_missing_etc_multipath_conf_means_built_in_defaults() {
    if Path::new("/etc/multipath.conf").exists() {
        eprintln!("/etc/multipath.conf exists on this machine: nothing to test");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut child = Command::new(BIN)
        .arg("--control-socket")
        .arg(dir.path().join("c.sock"))
        .arg("daemon")
        .arg("--nbd-socket")
        .arg(dir.path().join("nbd.sock"))
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("umpath ready") {
            assert!(
                text.contains("/etc/multipath.conf does not exist: using built-in defaults"),
                "{text}"
            );
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "{text}");
        assert!(Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}

/// Every file Cargo.toml's `[package.metadata.deb]` puts in the package
/// is in the repository, or is made by scripts/build-deb.sh (the release
/// binary, target/assets/...). Cheap; the real build is the next test.
#[test]
fn deb_assets_exist_or_are_generated() {
    let manifest: toml::Table = std::fs::read_to_string(repo().join("Cargo.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let assets = manifest["package"]["metadata"]["deb"]["assets"]
        .as_array()
        .unwrap();
    let script = std::fs::read_to_string(repo().join("scripts/build-deb.sh")).unwrap();
    let mut dests = Vec::new();
    for a in assets {
        let a = a.as_array().unwrap();
        let src = a[0].as_str().unwrap();
        dests.push(a[1].as_str().unwrap().to_string());
        if src == "target/release/umpath" {
            assert!(script.contains("cargo build --release"));
        } else if let Some(rest) = src.strip_prefix("target/assets/") {
            let (dir, file) = rest.split_once('/').unwrap();
            assert!(script.contains(&format!("\"$assets/{dir}")), "{src}");
            if file != "*.8" {
                assert!(script.contains(file), "{src} is not made by build-deb.sh");
            }
        } else {
            assert!(repo().join(src).is_file(), "{src} missing");
        }
    }
    for want in [
        "usr/bin/",
        "lib/systemd/system/",
        "usr/share/man/man8/",
        "usr/share/bash-completion/completions/umpath",
        "usr/share/zsh/vendor-completions/",
    ] {
        assert!(dests.iter().any(|d| d == want), "nothing goes to {want}");
    }
    // No multipath.conf: it would clash with the admin's and multipath-tools'.
    assert!(!dests.iter().any(|d| d.starts_with("etc/")), "{dests:?}");
}

/// Builds the package with scripts/build-deb.sh and checks what is in it.
/// A release build takes minutes on a small machine: only with
/// UMPATH_DEB_TEST=1 (the script installs cargo-deb if missing).
#[test]
fn deb_package_carries_binary_units_man_pages_and_completions() {
    if std::env::var_os("UMPATH_DEB_TEST").is_none_or(|v| v != "1") {
        eprintln!("skipped: set UMPATH_DEB_TEST=1 to build the .deb (release build)");
        return;
    }
    need_pkg("dpkg-deb", "dpkg");
    let out = Command::new(repo().join("scripts/build-deb.sh"))
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "build-deb.sh failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let deb = PathBuf::from(
        stdout
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap()
            .trim(),
    );
    assert!(
        deb.is_file() && deb.extension().is_some_and(|e| e == "deb"),
        "{stdout}"
    );
    let info = run(Command::new("dpkg-deb").arg("--info").arg(&deb));
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains("Package: umpath"), "{info}");
    assert!(info.contains("Section: admin"), "{info}");
    assert!(
        info.contains("Depends:") && info.contains("libc6"),
        "{info}"
    );
    assert!(!info.contains("postinst"), "no maintainer scripts: {info}");
    let contents = run(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    let contents = String::from_utf8_lossy(&contents.stdout);
    for f in [
        "./usr/bin/umpath",
        "./lib/systemd/system/umpathd.service",
        "./lib/systemd/system/umpathd.socket",
        "./lib/systemd/system/umpathd-control.socket",
        "./usr/share/man/man8/umpath.8",
        "./usr/share/man/man8/umpath-daemon.8",
        "./usr/share/bash-completion/completions/umpath",
        "./usr/share/zsh/vendor-completions/_umpath",
        "./usr/share/fish/vendor_completions.d/umpath.fish",
        "./usr/share/doc/umpath/README.md",
    ] {
        assert!(contents.contains(f), "{f} not in the package:\n{contents}");
    }
    assert!(!contents.contains("./etc/"), "{contents}");
    // The packaged binary runs.
    let root = tempfile::tempdir().unwrap();
    let x = run(Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(root.path()));
    assert!(x.status.success());
    let v = run(Command::new(root.path().join("usr/bin/umpath")).arg("--version"));
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("umpath "));
}
