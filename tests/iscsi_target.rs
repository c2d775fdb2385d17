//! The tgtd fixture (`tests/common/tgt.rs`) checked with libiscsi's tools
//! and qemu's libiscsi driver: the oracle facts later iSCSI tests compare
//! umpath against (issue 14).

// A test crate: a failed unwrap, expect or panic is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::tgt::*;

fn out_text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs a libiscsi tool on `url` with `args`, returning its output.
fn iscsi(tool: &str, args: &[&str], url: &str) -> Output {
    need_libiscsi();
    Command::new(tool)
        .args(args)
        .arg(url)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"))
}

/// Like [`iscsi`], which must succeed; returns stdout.
fn iscsi_ok(tool: &str, args: &[&str], url: &str) -> String {
    let o = iscsi(tool, args, url);
    assert!(
        o.status.success(),
        "{tool} {args:?} failed ({}): {}",
        o.status,
        out_text(&o)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `qemu-io -f raw -c CMD URL`, which must succeed.
fn qemu_io_url(cmd: &str, url: &str) {
    need_qemu_iscsi();
    let o = Command::new("qemu-io")
        .args(["-f", "raw", "-c", cmd, url])
        .output()
        .expect("run qemu-io");
    let text = out_text(&o);
    assert!(
        o.status.success() && !text.contains("Pattern verification failed"),
        "qemu-io -c {cmd:?} failed ({}): {text}",
        o.status
    );
}

/// The lines of `iscsi-ls -s` about the target: "Target:... Portal:...",
/// "Lun:...".
fn ls(t: &Tgt, i: usize) -> String {
    iscsi_ok("iscsi-ls", &["-s"], &t.discovery_url(i))
}

#[test]
fn two_portals_one_target_one_identity() {
    let t = Tgt::start(2);
    for i in 0..2 {
        let out = ls(&t, i);
        assert!(
            out.contains(&format!("Target:{IQN} Portal:{},1", t.portal(i))),
            "portal {i}: {out}"
        );
        assert!(
            out.contains("Lun:1    Type:DIRECT_ACCESS (Size:63M)"),
            "{out}"
        );
    }
    // Long options only: this libiscsi's popt takes "-e 1" as a URL.
    let inq = |i: usize, page: &str| {
        let args = ["--evpd=1", &format!("--pagecode={page}")];
        iscsi_ok("iscsi-inq", &args, &t.url(i, LUN))
    };
    let std0 = iscsi_ok("iscsi-inq", &[], &t.url(0, LUN));
    assert!(std0.contains(&format!("Vendor:{VENDOR}")), "{std0}");
    assert!(std0.contains(&format!("Product:{PRODUCT}")), "{std0}");
    assert_eq!(std0, iscsi_ok("iscsi-inq", &[], &t.url(1, LUN)));
    let pages = inq(0, "0");
    for p in ["0x80", "0x83", "0xb0", "0xb1", "0xb2"] {
        assert!(pages.contains(&format!("Page:{p}")), "VPD {p}: {pages}");
    }
    let sn = inq(0, "128");
    assert!(
        sn.contains(&format!("Unit Serial Number:[{SERIAL:>36}]")),
        "{sn}"
    );
    assert_eq!(sn, inq(1, "128"));
    let id = inq(0, "131");
    assert!(
        id.contains(&format!("Designator:[{SCSI_ID}]")),
        "T10 vendor id designator: {id}"
    );
    assert!(id.contains("Designator Type:(3) NAA"), "{id}");
    // libiscsi prints binary designators as C strings, so this compares
    // the NAA ones only up to their first zero byte (see the README).
    assert_eq!(id, inq(1, "131"), "VPD 0x83 differs between portals");
    let cap = iscsi_ok("iscsi-readcapacity16", &[], &t.url(1, LUN));
    assert!(cap.contains("Total size:67108864"), "{cap}");
}

#[test]
fn chap_right_wrong_and_mutual() {
    let chap = Chap::new("tecmint", "tecmint_chap12");
    let mutual = Chap::new("target1", "target_secret1");
    let t = Tgt::start_with(TgtConfig {
        portals: 1,
        chap: Some(chap.clone()),
        mutual: Some(mutual.clone()),
        ..TgtConfig::default()
    });
    // The right secret lists the LUN (discovery itself is open in tgtd).
    let out = ls(&t, 0);
    assert!(out.contains("Lun:1"), "{out}");
    // Mutual CHAP both ways on the target session.
    let inq = iscsi_ok("iscsi-inq", &[], &t.url(0, LUN));
    assert!(inq.contains(&format!("Vendor:{VENDOR}")), "{inq}");

    let auth_failed = "Failed to log in to target. Status: Authentication failure(513)";
    // A wrong secret: discovery answers, the LUN listing fails.
    let wrong = Chap::new("tecmint", "not_the_secret");
    let o = iscsi("iscsi-ls", &["-s"], &t.url_as(0, None, Some(&wrong), None));
    assert!(!o.status.success(), "{}", out_text(&o));
    assert!(out_text(&o).contains(auth_failed), "{}", out_text(&o));
    // No account at all.
    let o = iscsi("iscsi-inq", &[], &t.url_as(0, Some(LUN), None, None));
    assert!(!o.status.success() && out_text(&o).contains(auth_failed));
    // The target proves a wrong mutual secret, or another name.
    let bad = Chap::new("target1", "not_the_target_secret");
    let o = iscsi(
        "iscsi-inq",
        &[],
        &t.url_as(0, Some(LUN), Some(&chap), Some(&bad)),
    );
    assert!(
        !o.status.success()
            && out_text(&o)
                .contains("Authentication failed. Invalid CHAP_R response from the target"),
        "{}",
        out_text(&o)
    );
    let other = Chap::new("someone_else", "target_secret1");
    let o = iscsi(
        "iscsi-inq",
        &[],
        &t.url_as(0, Some(LUN), Some(&chap), Some(&other)),
    );
    assert!(
        out_text(&o).contains("Wrong CHAP targetname received: target1"),
        "{}",
        out_text(&o)
    );
    // tgtd does no mutual CHAP on discovery: iscsi-ls asked for it fails.
    let o = iscsi(
        "iscsi-ls",
        &["-s"],
        &t.url_as(0, None, Some(&chap), Some(&mutual)),
    );
    assert!(
        out_text(&o).contains("did not return CHAP_N during SECNEG"),
        "{}",
        out_text(&o)
    );
}

#[test]
fn a_write_on_one_portal_reads_back_on_the_other_across_a_restart() {
    need_qemu_iscsi();
    let mut t = Tgt::start(2);
    qemu_io_url("write -P 0x5a 0 1M", &t.url(0, LUN));
    qemu_io_url("read -P 0x5a 0 1M", &t.url(1, LUN));
    t.kill(0);
    assert!(
        std::net::TcpStream::connect(t.addr(0)).is_err(),
        "a killed portal refuses connections"
    );
    t.restart(0);
    qemu_io_url("read -P 0x5a 0 1M", &t.url(0, LUN));
    qemu_io_url("write -P 0xa5 1M 1M", &t.url(0, LUN));
    qemu_io_url("read -P 0xa5 1M 1M", &t.url(1, LUN));
    qemu_io_url("read -P 0x5a 0 1M", &t.url(1, LUN));
}

#[test]
fn a_stopped_portal_hangs_its_clients_until_continued() {
    need_libiscsi();
    let t = Tgt::start(2);
    t.stop(0);
    // The kernel still accepts the TCP connection; the login is never
    // answered, and libiscsi has no login timeout of its own.
    let mut c = Command::new("iscsi-inq")
        .arg(t.url(0, LUN))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start iscsi-inq");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        c.try_wait().unwrap().is_none(),
        "iscsi-inq finished against a stopped tgtd"
    );
    // The other portal serves meanwhile.
    let inq = iscsi_ok("iscsi-inq", &[], &t.url(1, LUN));
    assert!(inq.contains(&format!("Vendor:{VENDOR}")), "{inq}");
    t.cont(0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "iscsi-inq still hangs after SIGCONT"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = c.wait_with_output().unwrap();
    assert!(
        o.status.success() && out_text(&o).contains(&format!("Vendor:{VENDOR}")),
        "{}",
        out_text(&o)
    );
}

#[test]
fn drop_kills_every_tgtd() {
    let t = Tgt::start(2);
    t.stop(1);
    let pids: Vec<u32> = (0..2).filter_map(|i| t.pid(i)).collect();
    let ctl = t.control_port(0);
    drop(t);
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        assert!(status.is_empty(), "tgtd {pid} still there: {status}");
    }
    assert!(!std::path::Path::new(&format!("/var/run/tgtd/socket.{ctl}")).exists());
}
