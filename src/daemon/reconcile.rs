//! What a reconfigure (or a hotplug event) changes: the running maps
//! compared with the newly planned ones. Pure: the supervisor carries the
//! result out.
//!
//! A map is identified by its WWID and its name (a renamed map is another
//! export, so it is stopped and started). A path is identified by what
//! reaches it ([`PathKey`]: name, transport, file, URI, identity, declared
//! faults), never by where it was written: a comment added at the top of
//! multipath.conf moves every `path {` line but changes nothing.

use std::collections::BTreeMap;
use std::fmt;

use super::assemble::{MapPlan, PathPlan};

/// What reaches a path; two plans with equal keys need no new device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathKey {
    name: String,
    transport: String,
    file: Option<std::path::PathBuf>,
    identity: [String; 5],
    /// Transport keywords (`uri`, `fault`, ...) without their spans.
    extra: BTreeMap<String, String>,
    /// A discovered SCSI disk: its node and H:C:T:L.
    scsi: Option<(std::path::PathBuf, String)>,
}

impl PathKey {
    pub fn of(p: &PathPlan) -> PathKey {
        let d = &p.decl;
        PathKey {
            name: d.name.clone(),
            transport: d.transport.clone(),
            file: d.file.clone(),
            identity: [
                d.vendor.clone(),
                d.product.clone(),
                d.revision.clone(),
                d.wwid.clone(),
                d.serial.clone(),
            ],
            extra: d
                .extra
                .iter()
                .map(|(k, (v, _))| (k.clone(), v.clone()))
                .collect(),
            scsi: p
                .scsi
                .as_ref()
                .map(|s| (s.devnode.clone(), s.hctl.to_string())),
        }
    }
}

/// A running map as the reconciler sees it.
#[derive(Debug, Clone)]
pub struct Running<'a> {
    pub name: &'a str,
    pub wwid: &'a str,
    pub plan: &'a MapPlan,
}

/// The changes to one running map that keeps running.
#[derive(Debug, Clone, Default)]
pub struct Edit {
    /// Paths to open and join (new, or changed and re-made).
    pub add: Vec<PathPlan>,
    /// Paths to take out, by name (gone, or changed and re-made).
    pub remove: Vec<String>,
    /// Paths that stay, with their (possibly new) settings.
    pub keep: Vec<PathPlan>,
    /// The map's policy differs from the running one.
    pub policy_changed: bool,
}

impl Edit {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty() && !self.policy_changed
    }
}

/// Everything a new plan changes.
#[derive(Debug, Default)]
pub struct Changes {
    /// Running maps that stay, by name, with their edits.
    pub edits: Vec<(String, MapPlan, Edit)>,
    /// Maps to start.
    pub start: Vec<MapPlan>,
    /// Running maps to stop, by name.
    pub stop: Vec<String>,
}

/// Compares the running maps with the planned ones.
pub fn reconcile(running: &[Running<'_>], plans: Vec<MapPlan>) -> Changes {
    let mut out = Changes::default();
    let mut matched = vec![false; running.len()];
    for plan in plans {
        let found = running
            .iter()
            .position(|r| r.wwid == plan.wwid && r.name == plan.name);
        let Some(i) = found else {
            out.start.push(plan);
            continue;
        };
        matched[i] = true;
        let old = running[i].plan;
        let mut edit = Edit {
            policy_changed: old.policy != plan.policy,
            ..Edit::default()
        };
        for p in &plan.paths {
            match old.paths.iter().find(|o| o.decl.name == p.decl.name) {
                Some(o) if PathKey::of(o) == PathKey::of(p) => edit.keep.push(p.clone()),
                Some(_) => {
                    edit.remove.push(p.decl.name.clone());
                    edit.add.push(p.clone());
                }
                None => edit.add.push(p.clone()),
            }
        }
        for o in &old.paths {
            if !plan.paths.iter().any(|p| p.decl.name == o.decl.name) {
                edit.remove.push(o.decl.name.clone());
            }
        }
        out.edits.push((running[i].name.to_string(), plan, edit));
    }
    for (r, m) in running.iter().zip(matched) {
        if !m {
            out.stop.push(r.name.to_string());
        }
    }
    out
}

/// What a reconfigure did to one map, for its answer and the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapChange {
    Started {
        paths: Vec<String>,
    },
    /// Waiting for a path that can tell the LUN's size.
    Pending {
        paths: Vec<String>,
    },
    Stopped,
    Edited {
        added: Vec<String>,
        removed: Vec<String>,
        policy: bool,
    },
}

/// The answer to `reconfigure`: a line per map that changed.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub unchanged: usize,
    pub changes: Vec<(String, MapChange)>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count =
            |want: fn(&MapChange) -> bool| self.changes.iter().filter(|(_, c)| want(c)).count();
        writeln!(
            f,
            "{} map(s) unchanged, {} edited, {} started, {} pending, {} stopped",
            self.unchanged,
            count(|c| matches!(c, MapChange::Edited { .. })),
            count(|c| matches!(c, MapChange::Started { .. })),
            count(|c| matches!(c, MapChange::Pending { .. })),
            count(|c| matches!(c, MapChange::Stopped)),
        )?;
        for (name, c) in &self.changes {
            match c {
                MapChange::Started { paths } => {
                    writeln!(f, "map {name}: started with paths {}", paths.join(", "))?
                }
                MapChange::Pending { paths } => writeln!(
                    f,
                    "map {name}: waiting for a path that can tell the LUN's size ({})",
                    paths.join(", ")
                )?,
                MapChange::Stopped => writeln!(
                    f,
                    "map {name}: stopped (its NBD clients are disconnected once their IO is answered)"
                )?,
                MapChange::Edited {
                    added,
                    removed,
                    policy,
                } => {
                    let mut parts = Vec::new();
                    if !added.is_empty() {
                        parts.push(format!("paths added: {}", added.join(", ")));
                    }
                    if !removed.is_empty() {
                        parts.push(format!("paths removed: {}", removed.join(", ")));
                    }
                    if *policy {
                        parts.push("policy changed".to_string());
                    }
                    writeln!(f, "map {name}: {}", parts.join("; "))?
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::collections::HashMap;

    fn conf(extra_top: &str, paths: &[(&str, &str)], selector: &str) -> Config {
        let mut s = format!(
            "{extra_top}defaults {{\n  polling_interval 1\n  path_selector \"{selector}\"\n}}\nmultipaths {{\n multipath {{\n  wwid W1\n  alias lun0\n }}\n}}\npaths {{\n"
        );
        for (name, wwid) in paths {
            s.push_str(&format!(
                "  path {{\n    name {name}\n    file /tmp/{name}.img\n    wwid {wwid}\n  }}\n"
            ));
        }
        s.push_str("}\n");
        Config::parse_str(&s, "t.conf").expect("valid config")
    }

    fn plans(c: &Config) -> Vec<MapPlan> {
        super::super::assemble::plan(c, &HashMap::new()).0
    }

    fn running(p: &[MapPlan]) -> Vec<Running<'_>> {
        p.iter()
            .map(|m| Running {
                name: &m.name,
                wwid: &m.wwid,
                plan: m,
            })
            .collect()
    }

    #[test]
    fn a_comment_at_the_top_changes_nothing() {
        let old = plans(&conf("", &[("p0", "W1"), ("p1", "W1")], "round-robin 0"));
        let new = plans(&conf(
            "# a comment\n# another\n\n",
            &[("p0", "W1"), ("p1", "W1")],
            "round-robin 0",
        ));
        let ch = reconcile(&running(&old), new);
        assert!(ch.start.is_empty() && ch.stop.is_empty());
        assert_eq!(ch.edits.len(), 1);
        assert!(ch.edits[0].2.is_empty(), "{:?}", ch.edits[0].2);
        assert_eq!(ch.edits[0].2.keep.len(), 2);
    }

    #[test]
    fn path_set_changes_are_edits_of_the_live_map() {
        let old = plans(&conf("", &[("p0", "W1"), ("p1", "W1")], "round-robin 0"));
        let new = plans(&conf("", &[("p1", "W1"), ("p2", "W1")], "queue-length 0"));
        let ch = reconcile(&running(&old), new);
        assert!(ch.start.is_empty() && ch.stop.is_empty());
        let (name, _, e) = &ch.edits[0];
        assert_eq!(name, "lun0");
        assert_eq!(
            e.add
                .iter()
                .map(|p| p.decl.name.as_str())
                .collect::<Vec<_>>(),
            ["p2"]
        );
        assert_eq!(e.remove, ["p0"]);
        assert!(e.policy_changed);
    }

    #[test]
    fn new_and_removed_maps() {
        let old = plans(&conf("", &[("p0", "W1"), ("q0", "W2")], "round-robin 0"));
        let new = plans(&conf("", &[("p0", "W1"), ("r0", "W3")], "round-robin 0"));
        let ch = reconcile(&running(&old), new);
        assert_eq!(ch.stop, ["W2"]);
        assert_eq!(ch.start.len(), 1);
        assert_eq!(ch.start[0].name, "W3");
        let s = Summary {
            unchanged: 1,
            changes: vec![
                ("W2".into(), MapChange::Stopped),
                (
                    "lun0".into(),
                    MapChange::Edited {
                        added: vec!["p2".into()],
                        removed: vec!["p0".into()],
                        policy: false,
                    },
                ),
            ],
        }
        .to_string();
        assert!(
            s.contains("map lun0: paths added: p2; paths removed: p0"),
            "{s}"
        );
        assert!(s.contains("map W2: stopped"), "{s}");
    }
}
