//! From configuration to maps: which paths exist, which map each belongs
//! to (by WWID), what the map is called and which settings it runs with.
//! Pure: the daemon does the IO (opening devices, first checks).

use std::collections::HashMap;

use crate::config::{Config, PathDecl, PathIdentity, PathSettings};
use crate::model::{MapPolicy, PathInfo};

/// A path to be set up.
#[derive(Debug, Clone)]
pub struct PathPlan {
    pub decl: PathDecl,
    pub info: PathInfo,
    pub settings: PathSettings,
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
        polling_interval: cfg.polling_interval(),
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
        node_name: String::new(),
        transport: match &d.file {
            Some(f) => format!("{} {}", d.transport, f.display()),
            None => d.transport.clone(),
        },
    }
}

/// Groups the declared paths into maps by WWID, in declaration order.
/// A map is named by its multipaths `alias`, else its user_friendly_names
/// binding in `friendly` (WWID to name), else its WWID.
pub fn plan(cfg: &Config, friendly: &HashMap<String, String>) -> (Vec<MapPlan>, Vec<Skipped>) {
    let mut maps: Vec<MapPlan> = Vec::new();
    let mut skipped = Vec::new();
    for d in cfg.paths() {
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
        let settings = cfg.resolve(&id);
        let path = PathPlan {
            decl: d.clone(),
            info: path_info(d),
            settings,
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
    (maps, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Failback, GroupingPolicy, SelectorKind};

    const SEED: &str = r#"
defaults {
    polling_interval 2
}
devices {
    device {
          vendor                  "OSNEXUS"
          product                 "QUANTASTOR"
          getuid_callout          "/sbin/scsi_id -g -u -s /block/%n"
          path_selector           "round-robin 0"
          path_grouping_policy    multibus
          failback                immediate
          rr_weight               uniform
          rr_min_io               100
          path_checker            tur
    }
}
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
        let cfg = Config::parse_str(SEED, "test.conf").expect("valid config");
        let (maps, skipped) = plan(&cfg, &HashMap::new());
        assert_eq!(maps.len(), 2);
        let m = &maps[0];
        assert_eq!(m.name, "lun0");
        assert_eq!(m.paths.len(), 2);
        assert_eq!(m.policy.grouping, GroupingPolicy::Multibus);
        assert_eq!(m.policy.selector, SelectorKind::RoundRobin);
        assert_eq!(m.policy.repeat, 100);
        assert_eq!(m.policy.failback, Failback::Immediate);
        assert_eq!(m.policy.polling_interval, 2);
        // No device entry, no alias: multipath-tools defaults, named by WWID.
        let o = &maps[1];
        assert_eq!(o.name, "36000c29other");
        assert_eq!(o.policy.grouping, GroupingPolicy::Failover);
        assert_eq!(o.policy.selector, SelectorKind::ServiceTime);
        assert_eq!(o.policy.repeat, 1);
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].path, "hidden");
    }
}
