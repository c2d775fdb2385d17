//! iSCSI paths through umpath's own initiator (issue 14), against a real
//! target: Debian's tgtd (tests/common/tgt.rs), with libiscsi's tools as
//! the oracle for what the LUN is.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::tgt::*;
use common::*;

const USER: &str = "tecmint";
const SECRET: &str = "tecmint_chap12";

fn chap_target(portals: usize) -> Tgt {
    Tgt::start_with(TgtConfig {
        portals,
        chap: Some(Chap::new(USER, SECRET)),
        ..TgtConfig::default()
    })
}

/// A configuration with the seed's QuantaStor stanza and an alias for the
/// fixture's LUN.
fn seed_conf(dir: &std::path::Path, defaults: &str, paths: &str) -> std::path::PathBuf {
    let text = format!(
        "defaults {{\n{defaults}\n}}\ndevices {{\n{SEED_STANZA}}}\nmultipaths {{\n    multipath {{\n        wwid \"{SCSI_ID_WWID}\"\n        alias qs0\n    }}\n}}\npaths {{\n{paths}}}\n"
    );
    let p = dir.join("multipath.conf");
    std::fs::write(&p, text).unwrap();
    p
}

/// A daemon with the seed's stanza, `defaults` and `paths`, once the
/// paths named in `ready` are ready.
fn daemon(defaults: &str, paths: &str, ready: &[&str]) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let conf = seed_conf(dir.path(), defaults, paths);
    let text = std::fs::read_to_string(&conf).unwrap();
    let d = Daemon::start_in(dir, &text);
    for q in ready {
        d.wait_path(q, "ready", Duration::from_secs(20), |p| {
            p["state"] == "ready"
        });
    }
    d
}

fn iscsi_path(name: &str, portal: &str, extra: &str) -> String {
    format!(
        "    path {{\n        name {name}\n        transport iscsi\n        portal {portal}\n        target {IQN}\n        lun {LUN}\n        chap_user {USER}\n        chap_secret \"{SECRET}\"\n{extra}    }}\n"
    )
}

fn probe(args: &[&str], config: &std::path::Path) -> Output {
    Command::new(BIN)
        .arg("probe")
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn libiscsi(tool: &str, args: &[&str], url: &str) -> String {
    need_libiscsi();
    let o = Command::new(tool).args(args).arg(url).output().unwrap();
    assert!(o.status.success(), "{tool}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `umpath probe iscsi://` gives what `xe sr-probe` gives: the target
/// without an IQN, then the LUN's identity, size and SCSIid with one;
/// libiscsi's tools say the same of the same LUN.
#[test]
fn probe_finds_the_target_and_the_lun_like_libiscsi() {
    let t = chap_target(2);
    let dir = tempfile::tempdir().unwrap();
    let conf = seed_conf(dir.path(), "    polling_interval 1", "");
    let portal = t.portal(0);

    let o = probe(&[&format!("iscsi://{USER}%{SECRET}@{portal}")], &conf);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains(IQN) && out.contains(&format!("{portal},1")),
        "{out}"
    );
    // The oracle: iscsi-ls lists the same target and portal group.
    let ls = libiscsi("iscsi-ls", &[], &t.discovery_url(0));
    assert!(
        ls.contains(&format!("Target:{IQN} Portal:{portal},1")),
        "{ls}"
    );

    let o = probe(
        &[&format!("iscsi://{USER}%{SECRET}@{portal}/{IQN}"), "--json"],
        &conf,
    );
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let luns = v["luns"].as_array().unwrap();
    assert_eq!(luns.len(), 1, "LUN 0 is tgtd's controller, not a disk: {v}");
    let l = &luns[0];
    assert_eq!(l["lun"], LUN);
    assert_eq!(l["vendor"], VENDOR);
    assert_eq!(l["product"], PRODUCT);
    assert_eq!(l["serial"], SERIAL);
    assert_eq!(l["scsi_id"], SCSI_ID_WWID, "{v}");
    assert_eq!(l["size"], 64 << 20);
    assert_eq!(l["map"], "qs0", "the multipaths alias applies: {v}");
    assert!(
        l["device_rule"].as_str().unwrap().contains("QUANTASTOR"),
        "the seed's stanza applies: {v}"
    );
    // The oracle: libiscsi reads the same identity and size.
    let inq = libiscsi("iscsi-inq", &[], &t.url(0, LUN));
    assert!(
        inq.contains(&format!("Vendor:{VENDOR}")) && inq.contains(&format!("Product:{PRODUCT}"))
    );
    let sn = libiscsi("iscsi-inq", &["--evpd=1", "--pagecode=128"], &t.url(0, LUN));
    assert!(sn.contains(SERIAL), "{sn}");
    let cap = libiscsi("iscsi-readcapacity16", &[], &t.url(0, LUN));
    assert!(
        cap.contains(&format!("Total size:{}", 64u64 << 20)),
        "{cap}"
    );

    // The table form, through the other portal, the secret from a file.
    let secret = dir.path().join("q1.secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = probe(
        &[
            &format!("iscsi://{USER}@{}/{IQN}/{LUN}", t.portal(1)),
            "--chap-secret-file",
            secret.to_str().unwrap(),
        ],
        &conf,
    );
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains(SCSI_ID_WWID) && out.contains("qs0"), "{out}");
    assert!(!out.contains(SECRET));
}

/// Wrong secrets, unknown targets, unreachable portals and exposed
/// secret files each say so, and name the portal.
#[test]
fn probe_errors_say_what_is_wrong() {
    let t = chap_target(1);
    let dir = tempfile::tempdir().unwrap();
    let conf = seed_conf(dir.path(), "", "");
    let portal = t.portal(0);
    let fails = |args: &[&str]| {
        let o = probe(args, &conf);
        assert!(!o.status.success(), "{args:?} succeeded: {}", text(&o));
        let out = text(&o);
        assert!(
            !out.contains("wrong_secret") && !out.contains(SECRET),
            "{out}"
        );
        out
    };
    let out = fails(&[&format!("iscsi://{USER}%wrong_secret@{portal}/{IQN}/1")]);
    assert!(
        out.contains(&format!("CHAP authentication failed at {portal}")),
        "{out}"
    );
    let out = fails(&[&format!("iscsi://{portal}/{IQN}/1")]);
    assert!(
        out.contains(&format!("CHAP authentication failed at {portal}")),
        "{out}"
    );
    let out = fails(&[&format!(
        "iscsi://{USER}%{SECRET}@{portal}/iqn.2026-11.com.example:nosuch/1"
    )]);
    assert!(out.contains("target not found"), "{out}");
    // A loopback address nothing listens on.
    let out = fails(&["iscsi://127.0.0.1:1/"]);
    assert!(out.contains("127.0.0.1:1 is unreachable"), "{out}");
    let secret = dir.path().join("s");
    std::fs::write(&secret, SECRET).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = fails(&[
        &format!("iscsi://{USER}@{portal}/{IQN}/1"),
        "--chap-secret-file",
        secret.to_str().unwrap(),
    ]);
    assert!(out.contains("chmod 600"), "{out}");
    let out = fails(&["iscsi://host/not-an-iqn"]);
    assert!(out.contains("not an iSCSI name"), "{out}");
}

/// Mutual CHAP: the target proves it knows its secret; a wrong one
/// (either side) fails the login.
#[test]
fn mutual_chap_both_ways() {
    let t = Tgt::start_with(TgtConfig {
        portals: 1,
        chap: Some(Chap::new(USER, SECRET)),
        mutual: Some(Chap::new("target_user", "target_secret_1")),
        ..TgtConfig::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let conf = seed_conf(dir.path(), "", "");
    let file = |name: &str, s: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, s).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p.to_str().unwrap().to_string()
    };
    let right = file("right", "target_secret_1");
    let wrong = file("wrong", "target_secret_2");
    let url = format!("iscsi://{USER}%{SECRET}@{}/{IQN}/1", t.portal(0));
    let o = probe(
        &[
            &url,
            "--mutual-user",
            "target_user",
            "--mutual-secret-file",
            &right,
        ],
        &conf,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains(SCSI_ID_WWID));
    let o = probe(
        &[
            &url,
            "--mutual-user",
            "target_user",
            "--mutual-secret-file",
            &wrong,
        ],
        &conf,
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("mutual CHAP failed"), "{}", text(&o));
    let bad_ours = format!("iscsi://{USER}%nope@{}/{IQN}/1", t.portal(0));
    let o = probe(
        &[
            &bad_ours,
            "--mutual-user",
            "target_user",
            "--mutual-secret-file",
            &right,
        ],
        &conf,
    );
    assert!(!o.status.success());
    assert!(
        text(&o).contains("CHAP authentication failed"),
        "{}",
        text(&o)
    );
}

/// The seed's stanza over two portals: one map (named by the LUN's
/// SCSIid's alias); fio verify runs through a portal stopped past
/// io_timeout, then killed and restarted, with no error; the path comes
/// back within two polling intervals of the portal's return.
#[test]
fn two_portals_one_map_through_a_stopped_killed_and_restarted_portal() {
    let mut t = chap_target(2);
    let paths = iscsi_path("q0", &t.portal(0), "") + &iscsi_path("q1", &t.portal(1), "");
    let d = daemon(
        "    polling_interval 1\n    io_timeout 3",
        &paths,
        &["q0", "q1"],
    );
    let topo = d.ctl_ok(&["show", "topology"]);
    assert!(topo.starts_with(&format!("qs0 ({SCSI_ID_WWID})")), "{topo}");
    assert!(topo.contains("OSNEXUS,QUANTASTOR"), "{topo}");
    let fio = fio_verify(
        &d.uri("qs0"),
        "16M",
        "400",
        8,
        &["--time_based".into(), "--runtime=18".into()],
    );
    std::thread::sleep(Duration::from_secs(3));
    // Stopped: its commands time out, the path fails, IO goes on.
    t.stop(0);
    d.wait_path("q0", "failed", Duration::from_secs(15), |p| {
        p["state"] != "ready"
    });
    std::thread::sleep(Duration::from_secs(2));
    t.cont(0);
    d.wait_path("q0", "back after SIGCONT", Duration::from_secs(15), |p| {
        p["state"] == "ready"
    });
    // Killed: the connection drops; restarted: it logs in again.
    t.kill(0);
    d.wait_path("q0", "failed", Duration::from_secs(15), |p| {
        p["state"] != "ready"
    });
    t.restart(0);
    let back = Instant::now();
    d.wait_path("q0", "back after a restart", Duration::from_secs(15), |p| {
        p["state"] == "ready"
    });
    // polling_interval 1: within two intervals (the login included).
    eprintln!("q0 back {:?} after its tgtd restarted", back.elapsed());
    assert!(
        back.elapsed() < Duration::from_secs(2),
        "q0 took {:?} to come back",
        back.elapsed()
    );
    fio_ok(fio, &d);
    assert!(d.ios("q0") > 0 && d.ios("q1") > 0);
    assert!(!d.log_text().contains(SECRET), "a secret reached the log");
    let shown = d.ctl_ok(&["show", "config"]);
    assert!(!shown.contains(SECRET), "{shown}");
}

/// A "target" that answers a login with garbage: the path fails with a
/// reason, the other path serves, nothing panics.
#[test]
fn a_target_that_answers_garbage_fails_its_path_cleanly() {
    let t = chap_target(1);
    let bad = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let bad_addr = bad.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for s in bad.incoming() {
            let Ok(mut s) = s else { break };
            let mut req = [0u8; 48];
            let _ = s.read_exact(&mut req);
            // An opcode no target sends, and a huge data segment length.
            let mut junk = [0xffu8; 48];
            junk[0] = 0x3d;
            let _ = s.write_all(&junk);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let conf = seed_conf(dir.path(), "", "");
    let o = probe(&[&format!("iscsi://{bad_addr}/{IQN}/1")], &conf);
    assert!(!o.status.success());
    let out = text(&o);
    assert!(out.contains("opcode") || out.contains("PDU"), "{out}");

    let paths = iscsi_path("q0", &bad_addr, "") + &iscsi_path("q1", &t.portal(0), "");
    let d = daemon("    polling_interval 1", &paths, &["q1"]);
    let log = d.log_text();
    assert!(log.contains("q0") && log.contains("not logged in"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    let fio = fio_verify(&d.uri("qs0"), "4M", "0", 4, &[]);
    fio_ok(fio, &d);
}

/// A portal whose network is cut (packets lost, nothing reset): its
/// commands time out and the pings find the connection dead, the path
/// fails, fio verify goes on with no error through the other portal; when
/// the network returns, the path logs in again.
#[test]
fn a_portal_whose_network_is_cut_fails_and_comes_back() {
    let t = Tgt::start_with(TgtConfig {
        portals: 2,
        chap: Some(Chap::new(USER, SECRET)),
        netns: true,
        ..TgtConfig::default()
    });
    let paths = iscsi_path("q0", &t.portal(0), "") + &iscsi_path("q1", &t.portal(1), "");
    let d = daemon(
        "    polling_interval 1\n    io_timeout 3",
        &paths,
        &["q0", "q1"],
    );
    let fio = fio_verify(
        &d.uri("qs0"),
        "16M",
        "400",
        8,
        &["--time_based".into(), "--runtime=16".into()],
    );
    std::thread::sleep(Duration::from_secs(3));
    t.cut(0);
    d.wait_path("q0", "failed", Duration::from_secs(20), |p| {
        p["state"] != "ready"
    });
    std::thread::sleep(Duration::from_secs(2));
    t.restore(0);
    d.wait_path(
        "q0",
        "back after the network returned",
        Duration::from_secs(20),
        |p| p["state"] == "ready",
    );
    fio_ok(fio, &d);
    assert!(d.ios("q1") > 0);
}

/// A thin-provisioned LUN (tgtd's `thin_provisioning=1`: VPD 0xB2 LBPU
/// and LBPWS): NBD trim becomes UNMAP and write-zeroes WRITE SAME(16);
/// the ranges read back as zeroes and the target's image loses their
/// blocks.
#[test]
fn trim_and_zeroing_reach_a_thin_lun_as_unmap_and_write_same() {
    let t = chap_target(1);
    t.update_lun(0, "thin_provisioning=1");
    let d = daemon(
        "    polling_interval 1",
        &iscsi_path("q0", &t.portal(0), ""),
        &["q0"],
    );
    let uri = d.uri("qs0");
    let io = |cmds: &[&str]| {
        let mut c = Command::new("qemu-io");
        c.args(["-f", "raw"]);
        for x in cmds {
            c.args(["-c", x]);
        }
        run_ok(c.arg(&uri))
    };
    io(&["write -P 0x5a 0 4M"]);
    let used = || {
        std::fs::metadata(t.image()).map(|m| {
            use std::os::unix::fs::MetadataExt;
            m.blocks() * 512
        })
    };
    let before = used().unwrap();
    io(&["discard 0 2M", "write -z 2M 1M"]);
    let out = io(&["read -P 0 0 3M", "read -P 0x5a 3M 1M"]);
    assert!(
        out.contains("read 3145728/3145728") && out.contains("read 1048576/1048576"),
        "{out}"
    );
    let after = used().unwrap();
    assert!(
        after + (2 << 20) <= before,
        "the image kept its blocks: {before} then {after} bytes allocated"
    );
}

/// `digest crc32c`: header and data digests negotiated with tgtd, and IO
/// verifies through them.
#[test]
fn crc32c_digests_when_asked() {
    let t = chap_target(1);
    // tgtd answers None unless the target allows CRC32C.
    for key in ["HeaderDigest", "DataDigest"] {
        t.update_target(0, key, "CRC32C,None");
    }
    let d = daemon(
        "    polling_interval 1",
        &iscsi_path("q0", &t.portal(0), "        digest crc32c\n"),
        &["q0"],
    );
    let log = d.log_text();
    assert!(
        log.contains("HeaderDigest=CRC32C DataDigest=CRC32C"),
        "{log}"
    );
    let fio = fio_verify(&d.uri("qs0"), "8M", "0", 8, &["--bsrange=4k-256k".into()]);
    fio_ok(fio, &d);
}

/// `del path` and `add path` on an iSCSI path: it leaves its map and
/// logs in again to rejoin it; a reconfigure with the same paths keeps
/// the map running.
#[test]
fn del_add_and_reconfigure_keep_iscsi_paths() {
    let t = chap_target(2);
    let paths = iscsi_path("q0", &t.portal(0), "") + &iscsi_path("q1", &t.portal(1), "");
    let d = daemon("    polling_interval 1", &paths, &["q0", "q1"]);
    d.ctl_ok(&["del", "path", "q0"]);
    let out = d.ctl_ok(&["add", "path", "q0"]);
    assert!(out.contains("added to map qs0"), "{out}");
    d.wait_path("q0", "ready again", Duration::from_secs(10), |p| {
        p["state"] == "ready"
    });
    let out = d.ctl_ok(&["reconfigure"]);
    assert!(out.contains("1 map(s) unchanged"), "{out}");
    let fio = fio_verify(&d.uri("qs0"), "4M", "0", 4, &[]);
    fio_ok(fio, &d);
    assert!(d.ios("q0") > 0 && d.ios("q1") > 0);
}

/// One `iscsi_target` entry for the target's two portals: two paths, one
/// map, IO on both.
#[test]
fn an_iscsi_target_entry_makes_a_path_per_portal() {
    let t = chap_target(2);
    let entry = format!(
        "    iscsi_target {{\n        name qs\n        portals \"{} {}\"\n        target {IQN}\n        luns {LUN}\n        chap_user {USER}\n        chap_secret \"{SECRET}\"\n    }}\n",
        t.portal(0),
        t.portal(1)
    );
    let d = daemon("    polling_interval 1", &entry, &["qs-p0-l1", "qs-p1-l1"]);
    let topo = d.ctl_ok(&["show", "topology"]);
    assert!(topo.starts_with(&format!("qs0 ({SCSI_ID_WWID})")), "{topo}");
    let fio = fio_verify(&d.uri("qs0"), "4M", "0", 4, &[]);
    fio_ok(fio, &d);
    assert!(d.ios("qs-p0-l1") > 0 && d.ios("qs-p1-l1") > 0);
}
