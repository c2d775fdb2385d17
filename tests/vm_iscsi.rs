//! The guest kernel's iSCSI initiator as the oracle for the SCSIid umpath's
//! own initiator reports (issue 14).
//!
//! On the host, Debian's tgtd (tests/common/tgt.rs) serves the fixture's
//! LUN behind a CHAP account, and `umpath probe iscsi://USER%SECRET@PORTAL/
//! IQN/1 --json` reads its SCSIid. The Debian guest (tests/vm/debian.rs)
//! gets a QEMU user-mode NIC with `restrict=on` whose only way out is a
//! `guestfwd` from 10.0.2.100:3260 to the tgtd portal (127.64.x.y:3260).
//! In the guest, open-iscsi (iscsid, iscsi_tcp) discovers the target
//! through SendTargets, logs in with the same CHAP account, and udev names
//! the new disk; the guest's `scsi_id -g -u` and its
//! /dev/disk/by-id/scsi-<WWID> link must equal umpath's SCSIid (and the
//! fixture's [`SCSI_ID_WWID`]). A wrong secret is refused first.
//!
//! Needs root (tgtd, and debootstrap for the guest image, cached),
//! qemu-system-x86_64 and tgt; see tests/vm/README.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod vm;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::Command;
use std::time::{Duration, Instant};

use common::tgt::{Chap, Tgt, TgtConfig, IQN, LUN, SCSI_ID_WWID};
use vm::debian::{Guest, GuestFwd, GuestOptions};

const USER: &str = "vmguest";
const SECRET: &str = "vm_iscsi_chap12";
/// Where the guest reaches the host's portal (QEMU's guestfwd).
const GUEST_PORTAL_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);

fn step(what: &str) {
    static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let t0 = T0.get_or_init(Instant::now);
    eprintln!("[{:6.1}s] {what}", t0.elapsed().as_secs_f64());
}

/// `umpath probe iscsi://...--json` on the host: the LUN's SCSIid.
fn umpath_scsi_id(t: &Tgt) -> String {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("multipath.conf");
    std::fs::write(&conf, "defaults {\n    user_friendly_names no\n}\n").unwrap();
    let o = Command::new(common::BIN)
        .arg("probe")
        .arg(format!(
            "iscsi://{USER}%{SECRET}@{}/{IQN}/{LUN}",
            t.portal(0)
        ))
        .arg("--json")
        .arg("--config")
        .arg(&conf)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "umpath probe failed ({}): {out}{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("umpath probe --json: {e}: {out}"));
    let luns = v["luns"]
        .as_array()
        .unwrap_or_else(|| panic!("no luns: {v}"));
    let lun = luns
        .iter()
        .find(|l| l["lun"] == LUN)
        .unwrap_or_else(|| panic!("LUN {LUN} not in the probe: {v}"));
    lun["scsi_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no scsi_id: {v}"))
        .to_string()
}

#[test]
fn guest_open_iscsi_sees_umpaths_scsi_id() {
    step("tgtd with a CHAP account, umpath probe");
    let t = Tgt::start_with(TgtConfig {
        portals: 1,
        chap: Some(Chap::new(USER, SECRET)),
        ..TgtConfig::default()
    });
    let ours = umpath_scsi_id(&t);
    eprintln!("umpath probe: SCSIid {ours}");
    assert_eq!(ours, SCSI_ID_WWID, "umpath's SCSIid against the fixture's");

    step("boot the Debian guest with a guestfwd to the portal");
    let g = Guest::boot(GuestOptions {
        name: "debian-iscsi".into(),
        lun_size: 64 << 20,
        guestfwd: vec![GuestFwd {
            guest: SocketAddrV4::new(GUEST_PORTAL_IP, 3260),
            host: t.addr(0),
        }],
    });
    let ifname = g.net_up();
    eprintln!("guest NIC {ifname} up");

    step("iscsid, SendTargets discovery");
    g.sh_ok("modprobe iscsi_tcp && systemctl start iscsid.service");
    let portal = format!("{GUEST_PORTAL_IP}:3260");
    let disc = g.sh_ok(&format!("iscsiadm -m discovery -t st -p {portal}"));
    // tgtd names the address the connection reached: the host side.
    assert!(
        disc.contains(IQN) && disc.contains(&t.portal(0)),
        "SendTargets through the guestfwd should name {IQN} at {}:\n{disc}",
        t.portal(0)
    );
    // That address is the host's loopback: the guest logs in through the
    // forwarded one, with a node record of its own.
    let node = format!("-m node -T {IQN} -p {portal}");
    g.sh_ok(&format!(
        "iscsiadm -m node -o delete || true; iscsiadm {node} -o new >/dev/null"
    ));
    let set = |k: &str, v: &str| {
        g.sh_ok(&format!("iscsiadm {node} -o update -n {k} -v '{v}'"));
    };
    set("node.session.auth.authmethod", "CHAP");
    set("node.session.auth.username", USER);

    step("a wrong secret is refused");
    set("node.session.auth.password", "not_the_secret1");
    let bad = g.sh_timeout(&format!("iscsiadm {node} --login"), Duration::from_secs(60));
    assert_ne!(
        bad.rc, 0,
        "login with a wrong CHAP secret succeeded:\n{}",
        bad.out
    );
    assert!(
        bad.out.to_lowercase().contains("auth"),
        "iscsiadm should say the login failed on authorization:\n{}",
        bad.out
    );

    step("login with the account");
    set("node.session.auth.password", SECRET);
    g.sh_ok_timeout(&format!("iscsiadm {node} --login"), Duration::from_secs(90));
    let by_path = format!("/dev/disk/by-path/ip-{portal}-iscsi-{IQN}-lun-{LUN}");
    g.wait_for(
        "the iSCSI disk's by-path link",
        Duration::from_secs(60),
        || g.sh(&format!("test -b {by_path}")).rc == 0,
    );
    g.sh_ok("udevadm settle -t 30");
    let dev = g
        .sh_ok(&format!("readlink -f {by_path}"))
        .trim()
        .to_string();
    assert!(dev.starts_with("/dev/sd"), "{by_path} -> {dev}");
    let sessions = g.sh_ok("iscsiadm -m session");
    assert!(sessions.contains(IQN), "{sessions}");

    step("the guest's scsi_id and by-id link");
    let scsi_id = g
        .sh_ok(&format!(
            "for s in /usr/lib/udev/scsi_id /lib/udev/scsi_id; do \
               [ -x $s ] && exec $s -g -u -d {dev}; done; echo 'no scsi_id in the guest' >&2; exit 1"
        ))
        .trim()
        .to_string();
    eprintln!("guest: {dev} scsi_id {scsi_id}");
    assert_eq!(
        scsi_id, ours,
        "the guest kernel's initiator and umpath disagree on the SCSIid"
    );
    assert_eq!(scsi_id, SCSI_ID_WWID, "the fixture's SCSI_ID_WWID is wrong");
    let link = format!("/dev/disk/by-id/scsi-{ours}");
    let target = g.sh_ok(&format!("readlink -f {link}")).trim().to_string();
    assert_eq!(
        target,
        dev,
        "{link} should name the iSCSI disk:\n{}",
        g.sh("ls -l /dev/disk/by-id").out
    );
    // The disk answers: its size is the fixture's.
    let bytes = g.sh_ok(&format!("blockdev --getsize64 {dev}"));
    assert_eq!(bytes.trim(), (64u64 << 20).to_string());

    step("logout");
    g.sh_ok_timeout(
        &format!("iscsiadm {node} --logout"),
        Duration::from_secs(60),
    );
    g.wait_for(
        "the disk gone after logout",
        Duration::from_secs(30),
        || g.sh(&format!("test -e {by_path}")).rc != 0,
    );
    step("done");
}
