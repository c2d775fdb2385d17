//! `umpath probe`: what SCSI discovery sees and what the configuration
//! makes of it, without starting anything.

use std::path::PathBuf;
use std::process::ExitCode;

use serde::Serialize;

use crate::config::{Config, PathIdentity};
use crate::daemon::assemble::{map_name, scsi_skip_reason};
use crate::daemon::DEFAULT_CONFIG;
use crate::discovery::{self, DiscoverOptions, Discovery, ScsiDevice};

#[derive(Debug, Clone, clap::Args)]
pub struct ProbeArgs {
    /// An iSCSI portal or target to probe instead of the local SCSI
    /// disks: `iscsi://[USER[%SECRET]@]HOST[:PORT][/IQN[/LUN]]` (libiscsi's
    /// form). Without an IQN: the targets and portals (SendTargets); with
    /// one: each LUN's identity, size, SCSIid, device rule and map.
    #[arg(value_name = "ISCSI_URL")]
    pub url: Option<String>,
    /// The CHAP secret for the URL's user, read from this file (root
    /// only, first line) rather than written in the URL.
    #[arg(long, requires = "url")]
    pub chap_secret_file: Option<PathBuf>,
    /// Mutual CHAP: the name the target answers with.
    #[arg(long, requires = "mutual_secret_file")]
    pub mutual_user: Option<String>,
    /// Mutual CHAP: the target's secret, read from this file.
    #[arg(long, requires = "mutual_user")]
    pub mutual_secret_file: Option<PathBuf>,
    /// The initiator name to log in with (default: open-iscsi's
    /// /etc/iscsi/initiatorname.iscsi, else one generated from the
    /// machine id).
    #[arg(long, requires = "url")]
    pub initiator_name: Option<String>,
    /// sysfs root to read.
    #[arg(long, default_value = "/sys")]
    pub sysfs: PathBuf,
    /// multipath.conf to apply (if the default is missing, built-in
    /// settings are used).
    #[arg(long, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Where the device nodes are.
    #[arg(long, default_value = "/dev")]
    pub dev_dir: PathBuf,
    /// Never send INQUIRY over SG_IO for VPD pages sysfs lacks.
    #[arg(long)]
    pub no_sgio: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// One discovered device and what the configuration makes of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbeRow {
    #[serde(flatten)]
    pub device: ScsiDevice,
    /// The strongest matching device entry, e.g. `built-in hwtable vendor
    /// "OSNEXUS" product "QUANTASTOR"` or `/etc/multipath.conf:12 vendor
    /// ...`; `None`: defaults only.
    pub device_rule: Option<String>,
    /// The map (alias or WWID) the device is a path of; `None` when it is
    /// not used.
    pub map: Option<String>,
    /// Why the device is not used (blacklist rule, no WWID, ...).
    pub blacklisted: Option<String>,
}

/// The rows for `found` under `cfg`.
pub fn rows(cfg: &Config, found: &Discovery) -> Vec<ProbeRow> {
    found
        .devices
        .iter()
        .map(|d| {
            let id: PathIdentity<'_> = d.identity();
            let device_rule = cfg.matching_devices(&id).first().map(|e| {
                if e.builtin {
                    format!("built-in hwtable {}", e.describe())
                } else {
                    format!("{} {}", e.span, e.describe())
                }
            });
            let blacklisted = scsi_skip_reason(cfg, d);
            let map = blacklisted.is_none().then(|| map_name(cfg, &id));
            ProbeRow {
                device: d.clone(),
                device_rule,
                map,
                blacklisted,
            }
        })
        .collect()
}

/// A table with one line per device (and the errors after it).
pub fn table(rows: &[ProbeRow], errors: &[discovery::DiscoveryError]) -> String {
    let head = [
        "NAME",
        "H:C:T:L",
        "VENDOR",
        "PRODUCT",
        "REV",
        "DEVNODE",
        "STATE",
        "WWID",
        "MAP",
        "DEVICE RULE",
    ];
    let mut lines: Vec<Vec<String>> = vec![head.iter().map(|s| s.to_string()).collect()];
    for r in rows {
        let d = &r.device;
        let map = match (&r.map, &r.blacklisted) {
            (Some(m), _) => m.clone(),
            (None, Some(_)) => "-".to_string(),
            (None, None) => String::new(),
        };
        let wwid = if d.wwid.is_empty() { "-" } else { &d.wwid };
        lines.push(vec![
            d.name.clone(),
            d.hctl.clone(),
            d.vendor.clone(),
            d.product.clone(),
            d.revision.clone(),
            d.devnode.display().to_string(),
            if d.state.is_empty() {
                "-".into()
            } else {
                d.state.clone()
            },
            wwid.to_string(),
            map,
            r.device_rule.clone().unwrap_or_else(|| "defaults".into()),
        ]);
    }
    let mut out = crate::daemon::show::columns(&lines, 2);
    for r in rows {
        if let Some(why) = &r.blacklisted {
            out.push_str(&format!("{}: not used: {why}\n", r.device.name));
        }
    }
    for e in errors {
        out.push_str(&format!("error: {e}\n"));
    }
    if rows.is_empty() && errors.is_empty() {
        out.push_str("(no SCSI disks found)\n");
    }
    out
}

/// `{"devices": [...], "errors": [...]}`.
pub fn json(rows: &[ProbeRow], errors: &[discovery::DiscoveryError]) -> serde_json::Value {
    serde_json::json!({ "devices": rows, "errors": errors })
}

pub fn run(args: &ProbeArgs) -> ExitCode {
    let cfg = if args.config == std::path::Path::new(DEFAULT_CONFIG) && !args.config.exists() {
        eprintln!(
            "umpath: {} does not exist; using built-in settings",
            args.config.display()
        );
        Config::default()
    } else {
        match crate::config::load(&args.config) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        }
    };
    if let Some(url) = &args.url {
        let a = super::probe_iscsi::IscsiProbeArgs {
            url: url.clone(),
            chap_secret_file: args.chap_secret_file.clone(),
            mutual_user: args.mutual_user.clone(),
            mutual_secret_file: args.mutual_secret_file.clone(),
            initiator_name: args.initiator_name.clone(),
            json: args.json,
        };
        return super::probe_iscsi::run(&a, &cfg);
    }
    let opts = DiscoverOptions {
        sysfs: args.sysfs.clone(),
        dev_dir: args.dev_dir.clone(),
        sgio_fallback: !args.no_sgio,
    };
    let mut found = discovery::discover(&opts);
    discovery::apply_callouts(&cfg, &mut found.devices);
    let rows = rows(&cfg, &found);
    if args.json {
        match serde_json::to_string_pretty(&json(&rows, &found.errors)) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("umpath: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", table(&rows, &found.errors));
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::tests::FakeDev;

    const CONF: &str = r#"devices {
    device {
          vendor                  "OSNEXUS"
          product                 "QUANTASTOR"
          path_grouping_policy    multibus
          rr_min_io               100
          path_checker            tur
    }
}
multipaths {
    multipath {
        wwid "35000c50015ea71ac"
        alias lun7
    }
}
blacklist {
    devnode "^sdz$"
}
"#;

    fn fake() -> (tempfile::TempDir, Discovery) {
        let root = tempfile::tempdir().unwrap();
        FakeDev::quantastor("2:0:0:1", "sdb").create(root.path());
        FakeDev::quantastor("3:0:0:1", "sdc").create(root.path());
        let mut cd = FakeDev::quantastor("0:0:0:0", "sr0");
        cd.vendor = "QEMU    ";
        cd.model = "QEMU DVD-ROM    ";
        cd.create(root.path());
        let mut other = FakeDev::quantastor("4:0:0:0", "sdz");
        other.vendor = "ACME    ";
        other.pg83 = None;
        other.pg80 = Some(crate::scsi::vpd::tests::pg80(b"Z9"));
        other.create(root.path());
        let mut nowwid = FakeDev::quantastor("5:0:0:0", "sdy");
        nowwid.pg83 = None;
        nowwid.pg80 = None;
        nowwid.create(root.path());
        let d = discovery::discover(&DiscoverOptions {
            sysfs: root.path().to_path_buf(),
            dev_dir: "/dev".into(),
            sgio_fallback: false,
        });
        (root, d)
    }

    #[test]
    fn rows_name_map_rule_and_blacklist() {
        let cfg = Config::parse_str(CONF, "multipath.conf").unwrap();
        let (_root, found) = fake();
        let rows = rows(&cfg, &found);
        let by = |n: &str| rows.iter().find(|r| r.device.name == n).unwrap();
        let sdb = by("sdb");
        assert_eq!(sdb.map.as_deref(), Some("lun7"));
        assert_eq!(
            sdb.device_rule.as_deref(),
            Some("multipath.conf:2 vendor \"OSNEXUS\" product \"QUANTASTOR\"")
        );
        assert_eq!(by("sdc").map.as_deref(), Some("lun7"));
        let sr0 = by("sr0");
        assert!(sr0.map.is_none());
        assert!(
            sr0.blacklisted
                .as_deref()
                .unwrap()
                .contains("built-in blacklist devnode"),
            "{sr0:?}"
        );
        let sdz = by("sdz");
        assert_eq!(
            sdz.blacklisted.as_deref(),
            Some("blacklisted by blacklist devnode \"^sdz$\" at multipath.conf:17")
        );
        assert_eq!(sdz.device_rule, None);
        assert!(by("sdy")
            .blacklisted
            .as_deref()
            .unwrap()
            .starts_with("no WWID"));

        let t = table(&rows, &found.errors);
        assert!(t.starts_with("NAME "), "{t}");
        assert!(t.contains("sdb   2:0:0:1"), "{t}");
        let line = t.lines().find(|l| l.starts_with("sdb ")).unwrap();
        assert!(
            line.contains(" 35000c50015ea71ac ") && line.contains(" lun7 "),
            "{t}"
        );
        assert!(
            t.contains("sdz: not used: blacklisted by blacklist devnode"),
            "{t}"
        );

        let j = json(&rows, &found.errors);
        let devs = j["devices"].as_array().unwrap();
        assert_eq!(devs.len(), 5);
        let sdb = devs.iter().find(|d| d["name"] == "sdb").unwrap();
        assert_eq!(sdb["wwid"], "35000c50015ea71ac");
        assert_eq!(sdb["map"], "lun7");
        assert_eq!(sdb["hctl"], "2:0:0:1");
        assert_eq!(sdb["devnode"], "/dev/sdb");
        assert!(sdb["blacklisted"].is_null());
    }

    #[test]
    fn assembly_makes_one_map_of_both_scsi_paths() {
        use crate::daemon::assemble::plan_with;
        use crate::policy::GroupingPolicy;
        let cfg = Config::parse_str(CONF, "multipath.conf").unwrap();
        let (_root, found) = fake();
        let (maps, skipped) = plan_with(&cfg, &std::collections::HashMap::new(), &found.devices);
        assert_eq!(maps.len(), 1, "{maps:?}");
        let m = &maps[0];
        assert_eq!(m.name, "lun7");
        assert_eq!(m.wwid, "35000c50015ea71ac");
        assert_eq!(m.policy.grouping, GroupingPolicy::Multibus);
        assert_eq!(m.policy.repeat, 100);
        let names: Vec<&str> = m.paths.iter().map(|p| p.decl.name.as_str()).collect();
        assert_eq!(names, ["sdb", "sdc"]);
        let p = &m.paths[0];
        assert_eq!(p.decl.transport, "scsi");
        assert_eq!(p.info.transport, "scsi /dev/sdb 2:0:0:1");
        assert_eq!(p.scsi.as_ref().unwrap().hctl, "2:0:0:1");
        let mut s: Vec<&str> = skipped.iter().map(|s| s.path.as_str()).collect();
        s.sort();
        assert_eq!(s, ["sdy", "sdz", "sr0"]);
    }
}
