//! From configuration to maps: which paths exist, which map each belongs
//! to (by WWID), what the map is called and which settings it runs with.
//! Pure: the daemon does the IO (opening devices, first checks, SCSI
//! discovery).
//!
//! Paths come from two places: the `paths {}` section (declared paths)
//! and, with [`plan_with`], the SCSI disks discovery found (one path per
//! `/dev/sdX`, named by its kernel name, transport `scsi`). Both are
//! grouped into maps by WWID, declared paths first.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Config, PathDecl, PathIdentity, PathSettings, Span};
use crate::discovery::ScsiDevice;
use crate::model::{MapPolicy, PathInfo};
use crate::prio::DetectFacts;
use crate::transport::iscsi::IscsiTransport;

/// A path to be set up.
#[derive(Debug, Clone)]
pub struct PathPlan {
    /// For a SCSI disk: a declaration made up from what discovery found
    /// (transport `scsi`, `file` = the device node, span `(sysfs):0`).
    pub decl: PathDecl,
    pub info: PathInfo,
    pub settings: PathSettings,
    /// Set for a discovered SCSI disk.
    pub scsi: Option<ScsiDevice>,
    /// Set for an `iscsi` path: its transport, logged in at planning.
    pub iscsi: Option<Arc<IscsiTransport>>,
    /// The configuration's io_timeout (`None`: no limit), which bounds an
    /// `nbd` path's socket timeout.
    pub io_timeout: Option<std::time::Duration>,
}

/// The transport name of discovered SCSI disks.
pub const SCSI_TRANSPORT: &str = "scsi";

/// The file name in the made-up declaration of a discovered disk.
pub const SYSFS_ORIGIN: &str = "(sysfs)";

/// The declaration standing for a discovered SCSI disk.
pub fn scsi_decl(d: &ScsiDevice) -> PathDecl {
    PathDecl {
        name: d.name.clone(),
        transport: SCSI_TRANSPORT.to_string(),
        file: Some(d.devnode.clone()),
        vendor: d.vendor.clone(),
        product: d.product.clone(),
        revision: d.revision.clone(),
        wwid: d.wwid.clone(),
        serial: d.serial.clone(),
        extra: Default::default(),
        span: Span::new(&Arc::from(SYSFS_ORIGIN), 0),
    }
}

/// Why a discovered SCSI disk is not used as a path (`None`: it is).
pub fn scsi_skip_reason(cfg: &Config, d: &ScsiDevice) -> Option<String> {
    if let Some(why) = cfg.blacklisted_dev(&d.identity(), Some(&d.name)) {
        return Some(why);
    }
    if d.wwid.is_empty() {
        return Some(format!(
            "no WWID ({})",
            d.wwid_error.as_deref().unwrap_or("unknown reason")
        ));
    }
    if cfg.path(&d.name).is_some() {
        return Some(format!("a declared path is already called {:?}", d.name));
    }
    None
}

/// A map to be assembled.
#[derive(Debug, Clone)]
pub struct MapPlan {
    /// Export name: the multipaths alias, else the WWID.
    pub name: String,
    pub wwid: String,
    pub vendor: String,
    pub product: String,
    pub policy: MapPolicy,
    pub paths: Vec<PathPlan>,
}

/// A declared path left out, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

/// The policy a map runs with: the settings resolved for its first path
/// (multipath-tools likewise selects map properties through the hardware
/// entry of the map's first path).
pub fn map_policy(cfg: &Config, s: &PathSettings) -> MapPolicy {
    MapPolicy {
        grouping: s.path_grouping_policy.value,
        selector: s.path_selector.value,
        repeat: s.repeat_count.value,
        rr_weight: s.rr_weight.value,
        failback: s.failback.value,
        no_path_retry: s.no_path_retry.value,
        polling_interval: std::time::Duration::from_secs(u64::from(cfg.polling_interval())),
    }
}

pub fn path_info(d: &PathDecl) -> PathInfo {
    PathInfo {
        name: d.name.clone(),
        vendor: d.vendor.clone(),
        product: d.product.clone(),
        revision: d.revision.clone(),
        wwid: d.wwid.clone(),
        serial: d.serial.clone(),
        node_name: d.node_name().map(str::to_string),
        tpg: d.tpg(),
        transport: match (&d.file, d.extra.get("uri")) {
            (Some(f), _) => format!("{} {}", d.transport, f.display()),
            (None, Some((uri, _))) => format!("{} {uri}", d.transport),
            (None, None) => d.transport.clone(),
        },
    }
}

/// The name of the map a path with this WWID falls in: the multipaths
/// alias, else the WWID.
pub fn map_name(cfg: &Config, id: &PathIdentity<'_>) -> String {
    cfg.resolve(id)
        .alias
        .map_or_else(|| id.wwid.to_string(), |a| a.value)
}

/// Groups the declared paths into maps by WWID, in declaration order.
/// A map is named by its multipaths `alias`, else its user_friendly_names
/// binding in `friendly` (WWID to name), else its WWID.
pub fn plan(cfg: &Config, friendly: &HashMap<String, String>) -> (Vec<MapPlan>, Vec<Skipped>) {
    plan_with(cfg, friendly, &[])
}

/// An `iscsi` path's login at planning time: what its LUN said (the
/// identity it joins a map by, and the logged-in transport), or why
/// there is none yet.
#[derive(Debug, Clone)]
pub struct IscsiLogin {
    pub name: String,
    /// The path's keywords when it logged in: a changed declaration
    /// logs in again.
    pub keys: std::collections::BTreeMap<String, String>,
    pub lun: Result<IscsiLun, String>,
}

/// A logged-in iSCSI LUN.
#[derive(Debug, Clone)]
pub struct IscsiLun {
    pub vendor: String,
    pub product: String,
    pub revision: String,
    pub serial: String,
    pub wwid: String,
    pub transport: Arc<IscsiTransport>,
}

/// The keywords of a declared path, for [`IscsiLogin::keys`].
pub fn decl_keys(d: &PathDecl) -> std::collections::BTreeMap<String, String> {
    d.extra
        .iter()
        .map(|(k, (v, _))| (k.clone(), v.clone()))
        .collect()
}

/// [`plan_found`] without iSCSI logins (`iscsi` paths are skipped).
pub fn plan_with(
    cfg: &Config,
    friendly: &HashMap<String, String>,
    scsi: &[ScsiDevice],
) -> (Vec<MapPlan>, Vec<Skipped>) {
    plan_found(cfg, friendly, scsi, &[])
}

/// Groups the declared paths, then the discovered SCSI disks (in the
/// order given), into maps by WWID. Blacklisted disks, disks without a
/// WWID and disks named like a declared path are skipped; so are `iscsi`
/// paths without a successful login in `iscsi`.
pub fn plan_found(
    cfg: &Config,
    friendly: &HashMap<String, String>,
    scsi: &[ScsiDevice],
    iscsi: &[IscsiLogin],
) -> (Vec<MapPlan>, Vec<Skipped>) {
    let mut maps: Vec<MapPlan> = Vec::new();
    let mut skipped = Vec::new();
    let declared = cfg.paths().iter().map(|d| (d.clone(), None));
    let mut discovered = Vec::new();
    for s in scsi {
        match scsi_skip_reason(cfg, s) {
            Some(reason) => skipped.push(Skipped {
                path: s.name.clone(),
                reason,
            }),
            None => discovered.push((scsi_decl(s), Some(s.clone()))),
        }
    }
    for (mut d, scsi) in declared.chain(discovered) {
        let mut iscsi_t = None;
        if d.transport == "iscsi" {
            // The identity comes from the LUN (INQUIRY, VPD 0x83).
            match iscsi.iter().find(|l| l.name == d.name).map(|l| &l.lun) {
                Some(Ok(lun)) => {
                    d.vendor = lun.vendor.clone();
                    d.product = lun.product.clone();
                    d.revision = lun.revision.clone();
                    d.serial = lun.serial.clone();
                    d.wwid = lun.wwid.clone();
                    iscsi_t = Some(lun.transport.clone());
                }
                Some(Err(why)) => {
                    skipped.push(Skipped {
                        path: d.name.clone(),
                        reason: format!("not logged in: {why}"),
                    });
                    continue;
                }
                None => {
                    skipped.push(Skipped {
                        path: d.name.clone(),
                        reason: "not logged in yet".to_string(),
                    });
                    continue;
                }
            }
        }
        let d = &d;
        let id = PathIdentity {
            vendor: &d.vendor,
            product: &d.product,
            revision: &d.revision,
            wwid: &d.wwid,
        };
        if let Some(reason) = cfg.blacklisted(&id) {
            skipped.push(Skipped {
                path: d.name.clone(),
                reason,
            });
            continue;
        }
        let mut settings = cfg.resolve(&id);
        // detect_prio: a declared path is no SCSI device, so only a
        // discovered disk can have its prioritizer detected.
        let facts = scsi
            .as_ref()
            .map_or(DECLARED_FACTS, ScsiDevice::detect_facts);
        settings.apply_detect_prio(&facts);
        let mut info = path_info(d);
        if let Some(s) = &scsi {
            info.transport = format!("{SCSI_TRANSPORT} {} {}", s.devnode.display(), s.hctl);
            info.tpg = s.tpg;
            info.node_name = s.node_name.clone();
        }
        if let Some(t) = &iscsi_t {
            info.transport = t.describe();
        }
        let path = PathPlan {
            decl: d.clone(),
            info,
            settings,
            scsi,
            iscsi: iscsi_t,
            io_timeout: match cfg.io_timeout() {
                0 => None,
                secs => Some(std::time::Duration::from_secs(u64::from(secs))),
            },
        };
        match maps.iter_mut().find(|m| m.wwid == d.wwid) {
            Some(m) => m.paths.push(path),
            None => {
                let name = match (&path.settings.alias, friendly.get(&d.wwid)) {
                    (Some(a), _) => a.value.clone(),
                    (None, Some(f)) => f.clone(),
                    (None, None) => d.wwid.clone(),
                };
                maps.push(MapPlan {
                    name,
                    wwid: d.wwid.clone(),
                    vendor: d.vendor.clone(),
                    product: d.product.clone(),
                    policy: map_policy(cfg, &path.settings),
                    paths: vec![path],
                });
            }
        }
    }
    for m in &mut maps {
        detect_pgpolicy(cfg, m);
    }
    (maps, skipped)
}

/// What `detect_prio` knows of a declared (`file`, `nbd`) path.
const DECLARED_FACTS: DetectFacts = DetectFacts {
    scsi: false,
    tpgs: None,
    rdac: false,
    sysfs_access_state: false,
};

/// `detect_pgpolicy` on an assembled map: when every path uses an ALUA
/// prioritizer, each path's `path_grouping_policy` becomes
/// `group_by_prio` (or `group_by_tpg`), "storage device autodetected";
/// `group_by_tpg` on a map that is neither all ALUA nor all declared
/// paths with a `tpg` falls back to `failover`. The map's grouping
/// follows its first path, as [`map_policy`] does.
pub fn detect_pgpolicy(cfg: &Config, m: &mut MapPlan) {
    // A declared path cannot run an ALUA prioritizer whatever it says.
    let all_alua = !m.paths.is_empty()
        && m.paths
            .iter()
            .all(|p| p.scsi.is_some() && p.settings.uses_alua_prio());
    let tpg_declared = !m.paths.is_empty()
        && m.paths
            .iter()
            .all(|p| p.scsi.is_none() && p.info.tpg.is_some());
    for p in &mut m.paths {
        p.settings.apply_detect_pgpolicy(all_alua, tpg_declared);
    }
    if let Some(first) = m.paths.first() {
        m.policy = map_policy(cfg, &first.settings);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Failback, GroupingPolicy, SelectorKind};

    /// The QuantaStor stanza (verbatim), then the rest of the test config.
    fn seed() -> String {
        format!(
            "defaults {{\n    polling_interval 2\n}}\ndevices {{\n{}}}\n{SEED_REST}",
            crate::config::QUANTASTOR_DEVICE
        )
    }

    const SEED_REST: &str = r#"
multipaths {
    multipath {
        wwid "36000c29abcdef001"
        alias lun0
    }
}
blacklist {
    wwid "3600blacklisted"
}
paths {
    path {
        name p0
        transport file
        file /tmp/a.img
        vendor "OSNEXUS"
        product "QUANTASTOR"
        wwid "36000c29abcdef001"
        serial "QS1"
    }
    path {
        name p1
        transport file
        file /tmp/a.img
        vendor "OSNEXUS"
        product "QUANTASTOR"
        wwid "36000c29abcdef001"
        serial "QS1"
    }
    path {
        name other
        transport file
        file /tmp/b.img
        vendor "ACME"
        product "DISK"
        wwid "36000c29other"
    }
    path {
        name hidden
        transport file
        file /tmp/c.img
        vendor "ACME"
        product "DISK"
        wwid "3600blacklisted"
    }
}
"#;

    #[test]
    fn the_seed_stanza_gives_one_multibus_round_robin_map_per_wwid() {
        let cfg = Config::parse_str(&seed(), "test.conf").expect("valid config");
        let (maps, skipped) = plan(&cfg, &HashMap::new());
        assert_eq!(maps.len(), 2);
        let m = &maps[0];
        assert_eq!(m.name, "lun0");
        assert_eq!(m.paths.len(), 2);
        assert_eq!(m.policy.grouping, GroupingPolicy::Multibus);
        assert_eq!(m.policy.selector, SelectorKind::RoundRobin);
        assert_eq!(m.policy.repeat, 100);
        assert_eq!(m.policy.failback, Failback::Immediate);
        assert_eq!(m.policy.polling_interval, std::time::Duration::from_secs(2));
        // No device entry, no alias: multipath-tools defaults, named by WWID.
        let o = &maps[1];
        assert_eq!(o.name, "36000c29other");
        assert_eq!(o.policy.grouping, GroupingPolicy::Failover);
        assert_eq!(o.policy.selector, SelectorKind::ServiceTime);
        assert_eq!(o.policy.repeat, 1);
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].path, "hidden");
    }

    /// A discovered disk of LUN `wwid` with target port group support
    /// `tpgs`.
    fn disk(name: &str, wwid: &str, tpgs: Option<crate::scsi::Tpgs>) -> ScsiDevice {
        ScsiDevice {
            name: name.to_string(),
            hctl: "1:0:0:1".to_string(),
            devnode: std::path::PathBuf::from(format!("/dev/{name}")),
            dev: String::new(),
            vendor: "ACME".to_string(),
            product: "disk".to_string(),
            revision: "4.0".to_string(),
            device_type: 0,
            state: "running".to_string(),
            timeout_secs: None,
            size_bytes: None,
            logical_block_size: None,
            serial: String::new(),
            wwid: wwid.to_string(),
            wwid_source: String::new(),
            wwid_error: None,
            tpg: Some(1),
            tpgs,
            sysfs_access_state: false,
            node_name: None,
            wwn: None,
        }
    }

    #[test]
    fn detect_prio_and_detect_pgpolicy_on_discovered_alua_disks() {
        use crate::config::Origin;
        use crate::scsi::Tpgs;
        let cfg = Config::parse_str("defaults {\n path_grouping_policy multibus\n}\n", "t.conf")
            .expect("valid config");
        let devs = [
            disk("sdb", "3600alua", Some(Tpgs::Implicit)),
            disk("sdc", "3600alua", Some(Tpgs::Explicit)),
            disk("sdd", "3600plain", Some(Tpgs::None)),
        ];
        let (maps, _) = plan_with(&cfg, &HashMap::new(), &devs);
        let alua = maps
            .iter()
            .find(|m| m.wwid == "3600alua")
            .expect("alua map");
        assert_eq!(alua.policy.grouping, GroupingPolicy::GroupByPrio);
        for p in &alua.paths {
            assert_eq!(p.settings.prio.value, "alua");
            assert_eq!(p.settings.prio.origin, Origin::Autodetected);
            assert_eq!(p.settings.path_grouping_policy.origin, Origin::Autodetected);
        }
        let plain = maps
            .iter()
            .find(|m| m.wwid == "3600plain")
            .expect("plain map");
        assert_eq!(plain.policy.grouping, GroupingPolicy::Multibus);
        assert_eq!(plain.paths[0].settings.prio.value, "const");
        assert!(matches!(
            plain.paths[0].settings.path_grouping_policy.origin,
            Origin::Defaults { line: 2, .. }
        ));
    }

    #[test]
    fn alua_from_the_hwtable_falls_back_to_const_without_tpgs() {
        let cfg = Config::parse_str("", "t.conf").expect("valid config");
        let mut d = disk("sdb", "3600lio", Some(crate::scsi::Tpgs::None));
        d.vendor = "LIO-ORG".to_string();
        let (maps, _) = plan_with(&cfg, &HashMap::new(), &[d]);
        let s = &maps[0].paths[0].settings;
        assert_eq!(s.prio.value, "const");
        assert_eq!(
            s.prio.origin.to_string(),
            "(setting: emergency fallback - alua failed)"
        );
    }

    #[test]
    fn declared_node_name_and_tpg_reach_path_info() {
        let cfg = Config::parse_str(
            "paths {\n path {\n  name p0\n  file /tmp/x\n  wwid w\n  node_name n1\n  tpg 3\n }\n}\n",
            "t.conf",
        )
        .expect("valid config");
        let (maps, _) = plan(&cfg, &HashMap::new());
        let info = &maps[0].paths[0].info;
        assert_eq!((info.node_name.as_deref(), info.tpg), (Some("n1"), Some(3)));
    }
}
