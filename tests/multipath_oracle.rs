//! multipath-tools as the oracle: for the built-in table and for user
//! configurations (overlapping device entries, regular expressions,
//! overrides, multipaths, merging, conf.d), the configuration umpath
//! renders (`Config::render_multipath_t`, what `umpath show config`
//! prints) agrees with `multipath -t` section by section, entry by entry
//! and keyword by keyword.
//!
//! `multipath -t` only reads /etc/multipath.conf and /etc/multipath/conf.d,
//! so it runs in a private mount namespace (`unshare -m`, needs root)
//! whose /etc is a directory of symlinks to the real /etc (bind-mounted
//! aside) plus the test's own multipath.conf and conf.d. The machine's
//! /etc is never touched.

// A test crate: a failed unwrap, expect or panic is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

use umpath::config::parse::{self, Block, Item};

/// Keywords whose `multipath -t` value is set by the multipath command
/// itself (it forces `force_sync yes` and `retrigger_tries 0` for its own
/// run, whatever the file says); umpath prints the configured value.
const SET_BY_MULTIPATH_COMMAND: &[&str] = &["force_sync", "retrigger_tries"];

fn multipath_bin() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/sbin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join("multipath"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "multipath (multipath-tools) is not installed; it is the oracle for these tests: \
                 run ./scripts/test.sh or apt-get install multipath-tools"
            )
        })
}

/// Runs `multipath -t` with `main` as /etc/multipath.conf and `conf_d`
/// as /etc/multipath/conf.d, in a private mount namespace.
fn multipath_t(main: Option<&str>, conf_d: &[(&str, &str)]) -> String {
    let bin = multipath_bin();
    let t = tempfile::tempdir().expect("tempdir");
    let orig = t.path().join("orig");
    let etc = t.path().join("etc");
    std::fs::create_dir(&orig).unwrap();
    std::fs::create_dir(&etc).unwrap();
    for e in std::fs::read_dir("/etc").expect("read /etc") {
        let name = e.unwrap().file_name();
        if name == "multipath.conf" || name == "multipath" {
            continue;
        }
        std::os::unix::fs::symlink(orig.join(&name), etc.join(&name)).unwrap();
    }
    let mp = etc.join("multipath");
    std::fs::create_dir_all(mp.join("conf.d")).unwrap();
    if let Some(text) = main {
        std::fs::write(etc.join("multipath.conf"), text).unwrap();
    }
    for (name, text) in conf_d {
        std::fs::write(mp.join("conf.d").join(name), text).unwrap();
    }
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount --bind /etc "$1/orig" && mount --bind "$1/etc" /etc && exec "$2" -t"#)
        .arg("sh")
        .arg(t.path())
        .arg(&bin)
        .output()
        .expect("run unshare (util-linux)");
    assert!(
        out.status.success(),
        "multipath -t in a private mount namespace failed ({}); these tests need root \
         (unshare -m, mount --bind):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("multipath -t prints UTF-8")
}

/// umpath's rendering of the same files, read by `umpath::config::load`
/// from a scratch directory laid out like /etc (main file, then
/// `multipath/conf.d`). The bindings file umpath prints follows the
/// configuration's location (`DIR/multipath/bindings`); it is spelled as
/// /etc's here.
fn umpath_t(main: Option<&str>, conf_d: &[(&str, &str)]) -> String {
    let t = tempfile::tempdir().expect("tempdir");
    let conf = t.path().join("multipath.conf");
    std::fs::write(&conf, main.unwrap_or("")).unwrap();
    let dir = t.path().join("multipath/conf.d");
    std::fs::create_dir_all(&dir).unwrap();
    for (n, text) in conf_d {
        std::fs::write(dir.join(n), text).unwrap();
    }
    match umpath::config::load(&conf) {
        Ok(cfg) => cfg.render_multipath_t().replace(
            &format!("\"{}\"", t.path().join("multipath/bindings").display()),
            "\"/etc/multipath/bindings\"",
        ),
        Err(e) => panic!("umpath rejects the configuration:\n{e}"),
    }
}

fn show(v: &parse::Value) -> String {
    if v.quoted {
        format!("\"{}\"", v.text)
    } else {
        v.text.clone()
    }
}

/// Attributes of a block, in order, as (keyword, printed value).
fn attrs(b: &Block) -> Vec<(String, String)> {
    b.items
        .iter()
        .filter_map(|i| match i {
            Item::Attr(a) => Some((a.key.clone(), show(&a.value))),
            Item::Block(_) => None,
        })
        .collect()
}

fn blocks<'a>(b: &'a Block, name: &str) -> Vec<&'a Block> {
    b.items
        .iter()
        .filter_map(|i| match i {
            Item::Block(s) if s.name == name => Some(s),
            _ => None,
        })
        .collect()
}

fn describe(b: &Block) -> String {
    let a = attrs(b);
    let get = |k: &str| {
        a.iter()
            .find(|(x, _)| x == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    match b.name.as_str() {
        "multipath" => format!("wwid {}", get("wwid")),
        "protocol" => format!("type {}", get("type")),
        _ => format!("vendor {} product {}", get("vendor"), get("product")),
    }
}

/// Compares two attribute lists keyword by keyword (order included). A
/// keyword that occurs several times (blacklist entries) is compared
/// occurrence by occurrence.
fn diff_attrs(
    out: &mut Vec<String>,
    place: &str,
    ours: &[(String, String)],
    theirs: &[(String, String)],
    skip: &[&str],
) {
    // (keyword, occurrence) -> value
    fn keyed(v: &[(String, String)], skip: &[&str]) -> Vec<((String, usize), String)> {
        let mut out: Vec<((String, usize), String)> = Vec::new();
        for (k, val) in v {
            if skip.contains(&k.as_str()) {
                continue;
            }
            let n = out.iter().filter(|((ok, _), _)| ok == k).count();
            out.push(((k.clone(), n), val.clone()));
        }
        out
    }
    let ours = keyed(ours, skip);
    let theirs = keyed(theirs, skip);
    let before = out.len();
    let name = |(k, n): &(String, usize)| {
        if *n == 0 {
            format!("'{k}'")
        } else {
            format!("'{k}' (occurrence {})", n + 1)
        }
    };
    for (k, v) in &theirs {
        match ours.iter().find(|(ok, _)| ok == k) {
            None => out.push(format!(
                "{place}: keyword {} missing in umpath (multipath: {v})",
                name(k)
            )),
            Some((_, ov)) if ov != v => out.push(format!(
                "{place}: keyword {}: umpath {ov}, multipath {v}",
                name(k)
            )),
            _ => {}
        }
    }
    for (k, v) in &ours {
        if !theirs.iter().any(|(tk, _)| tk == k) {
            out.push(format!("{place}: keyword {} only in umpath ({v})", name(k)));
        }
    }
    let ok: Vec<&String> = ours.iter().map(|((k, _), _)| k).collect();
    let tk: Vec<&String> = theirs.iter().map(|((k, _), _)| k).collect();
    if out.len() == before && ok != tk {
        out.push(format!(
            "{place}: keyword order differs: umpath {ok:?}, multipath {tk:?}"
        ));
    }
}

fn diff_entries(out: &mut Vec<String>, place: &str, ours: &[&Block], theirs: &[&Block]) {
    if ours.len() != theirs.len() {
        out.push(format!(
            "{place}: umpath has {} entries, multipath {}",
            ours.len(),
            theirs.len()
        ));
    }
    for (i, (o, t)) in ours.iter().zip(theirs).enumerate() {
        let mut d = Vec::new();
        let place = format!("{place} entry #{} ({})", i + 1, describe(t));
        diff_attrs(&mut d, &place, &attrs(o), &attrs(t), &[]);
        diff_entries(
            &mut d,
            &place,
            &blocks(o, "protocol"),
            &blocks(t, "protocol"),
        );
        out.extend(d);
    }
    if ours.len() != theirs.len() {
        let n = ours.len().min(theirs.len());
        for o in &ours[n..] {
            out.push(format!("{place}: only in umpath: {}", describe(o)));
        }
        for t in &theirs[n..] {
            out.push(format!("{place}: only in multipath: {}", describe(t)));
        }
    }
}

/// Every difference between umpath's and multipath's output, precisely.
fn differences(ours: &str, theirs: &str) -> Vec<String> {
    let (o, od) = parse::parse(ours, "umpath");
    let (t, td) = parse::parse(theirs, "multipath -t");
    let mut out = Vec::new();
    for d in od.iter().chain(&td) {
        out.push(format!("syntax: {d}"));
    }
    let top = |d: &parse::Document| -> Vec<Block> {
        d.items
            .iter()
            .filter_map(|i| match i {
                Item::Block(b) if b.name != "paths" => Some(b.clone()),
                _ => None,
            })
            .collect()
    };
    let (ot, tt) = (top(&o), top(&t));
    let names = |v: &[Block]| v.iter().map(|b| b.name.clone()).collect::<Vec<_>>();
    if names(&ot) != names(&tt) {
        out.push(format!(
            "sections: umpath {:?}, multipath {:?}",
            names(&ot),
            names(&tt)
        ));
    }
    for t in &tt {
        let Some(o) = ot.iter().find(|b| b.name == t.name) else {
            continue;
        };
        match t.name.as_str() {
            "defaults" => diff_attrs(
                &mut out,
                "defaults",
                &attrs(o),
                &attrs(t),
                SET_BY_MULTIPATH_COMMAND,
            ),
            "blacklist" | "blacklist_exceptions" | "overrides" => {
                diff_attrs(&mut out, &t.name, &attrs(o), &attrs(t), &[]);
                let sub = if t.name == "overrides" {
                    "protocol"
                } else {
                    "device"
                };
                diff_entries(&mut out, &t.name, &blocks(o, sub), &blocks(t, sub));
            }
            "devices" => diff_entries(
                &mut out,
                "devices",
                &blocks(o, "device"),
                &blocks(t, "device"),
            ),
            "multipaths" => diff_entries(
                &mut out,
                "multipaths",
                &blocks(o, "multipath"),
                &blocks(t, "multipath"),
            ),
            other => out.push(format!("unexpected section '{other}' from multipath -t")),
        }
    }
    out
}

fn agree(name: &str, main: Option<&str>, conf_d: &[(&str, &str)]) {
    let theirs = multipath_t(main, conf_d);
    let ours = umpath_t(main, conf_d);
    let diffs = differences(&ours, &theirs);
    if !diffs.is_empty() {
        let dir = std::env::temp_dir().join(format!("umpath-oracle-{name}"));
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(dir.join("umpath.txt"), &ours);
        let _ = std::fs::write(dir.join("multipath.txt"), &theirs);
        let mut msg = format!(
            "{name}: umpath and multipath -t differ ({} differences; full outputs in {}):\n",
            diffs.len(),
            dir.display()
        );
        for d in diffs.iter().take(60) {
            let _ = writeln!(msg, "  {d}");
        }
        panic!("{msg}");
    }
}

#[test]
fn builtin_table_and_blacklist_without_a_config_file() {
    agree("builtin", None, &[]);
    let t = multipath_t(None, &[]);
    let (doc, _) = parse::parse(&t, "multipath -t");
    let devices = doc
        .items
        .iter()
        .find_map(|i| match i {
            Item::Block(b) if b.name == "devices" => Some(b),
            _ => None,
        })
        .expect("devices section");
    assert_eq!(
        blocks(devices, "device").len(),
        umpath::config::hwtable::BUILTIN_HWTABLE.len()
    );
}

#[test]
fn empty_file_and_quantastor_stanza() {
    agree("empty", Some(""), &[]);
    let text = format!("devices {{\n{}}}\n", umpath::config::QUANTASTOR_DEVICE);
    agree("quantastor", Some(&text), &[]);
}

const OVERLAP: &str = r#"
defaults {
    polling_interval 10
    user_friendly_names yes
    path_selector "round-robin 0"
    checker_timeout 20
    no_path_retry 12
    fast_io_fail_tmo off
    dev_loss_tmo 600
    max_sectors_kb 512
    find_multipaths yes
    failback 30
    uid_attrs "sd:ID_SERIAL"
}
devices {
    # Identical strings to a built-in entry: merged into it.
    device {
        vendor "NETAPP"
        product "LUN"
        no_path_retry 5
        rr_min_io 32
    }
    # Regular expressions overlapping built-in entries.
    device {
        vendor "(HP|HPE)"
        product ".*"
        path_checker directio
        prio const
    }
    device {
        vendor "^DGC"
        product "^(RAID|DISK|VRAID)"
        revision "^05"
        failback manual
    }
    # Two entries with identical strings in one file: merged.
    device {
        vendor "ACME"
        product "Box[0-9]+"
        path_grouping_policy multibus
        rr_weight priorities
    }
    device {
        vendor "ACME"
        product "Box[0-9]+"
        path_grouping_policy group_by_serial
        product_blacklist "Ctl"
        hardware_handler "1 alua"
    }
    device {
        vendor "OSNEXUS"
        product "QUANTASTOR"
        path_selector "round-robin 0"
        path_grouping_policy multibus
        failback immediate
        rr_weight uniform
        rr_min_io 100
        path_checker tur
        dev_loss_tmo infinity
        eh_deadline 30
        user_friendly_names no
        alias_prefix "qs"
        ghost_delay 5
        skip_kpartx yes
    }
}
"#;

#[test]
fn overlapping_device_entries_regexes_and_merging() {
    agree("overlap", Some(OVERLAP), &[]);
}

const OVERRIDES_MULTIPATHS: &str = r#"
blacklist {
    devnode "^loop[0-9]*"
    wwid "3600dead"
    wwid "3600dead"
    property "ID_ATA"
    protocol "scsi:sas"
    device {
        vendor "ACME"
        product "Hidden"
    }
}
blacklist_exceptions {
    wwid "3600deadbeef"
    property "ID_WWN"
    device {
        vendor "SGI"
        product "Universal Xport"
    }
}
overrides {
    no_path_retry queue
    path_checker readsector0
    features "1 queue_if_no_path"
    user_friendly_names yes
    flush_on_last_del yes
    san_path_err_threshold 5
    protocol {
        type "scsi:fcp"
        fast_io_fail_tmo 8
        dev_loss_tmo 120
    }
    protocol {
        type "scsi:iscsi"
        eh_deadline off
    }
    protocol {
        type "scsi:fcp"
        fast_io_fail_tmo 9
        eh_deadline 20
    }
}
multipaths {
    multipath {
        wwid "36000c29zz"
        alias last
        rr_min_io_rq 4
    }
    multipath {
        wwid "36000c29aa"
        alias first
        path_grouping_policy failover
        failback followover
        no_path_retry 3
        prio_args "x"
    }
    multipath {
        wwid "36000c29zz"
        path_selector "queue-length 0"
        reservation_key "0x123abc"
    }
}
"#;

#[test]
fn overrides_multipaths_blacklists() {
    agree("overrides", Some(OVERRIDES_MULTIPATHS), &[]);
}

#[test]
fn conf_d_files_are_read_in_order_after_the_main_file() {
    let main = r#"
defaults {
    polling_interval 7
    user_friendly_names yes
}
devices {
    device {
        vendor "ACME"
        product "Box"
        rr_min_io 10
        no_path_retry 4
    }
}
"#;
    let a = r#"
defaults {
    user_friendly_names no
    max_polling_interval 60
}
devices {
    device {
        vendor "ACME"
        product "Box"
        rr_min_io 20
    }
    device {
        vendor "IBM"
        product "^2145"
        no_path_retry fail
    }
}
"#;
    let b = r#"
overrides {
    rr_weight priorities
}
multipaths {
    multipath {
        wwid "3600b"
        alias b
    }
}
"#;
    agree(
        "confd",
        Some(main),
        &[
            ("20-b.conf", b),
            ("10-a.conf", a),
            ("ignored.txt", "defaults {\n verbosity 4\n}\n"),
        ],
    );
}
