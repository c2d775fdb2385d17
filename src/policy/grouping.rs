//! path_grouping_policy: how a map's paths are split into path groups, the
//! priority of a group and the order of the groups, as multipath-tools'
//! `pgpolicies.c` and `switchgroup.c` do it.
//!
//! * Every policy walks the paths in discovery order; a `group_by_*`
//!   policy opens a new group at the first path whose key no earlier group
//!   has, and puts each later path with the same key in it. Paths keep
//!   their discovery order inside a group.
//! * A group's priority is the **average** (integer division) of the
//!   priorities of its usable paths, 0 if none is usable
//!   (`path_group_prio_update`).
//! * Groups are then ordered best first (`sort_pathgroups`): higher
//!   priority first, on equal priority more usable paths first, and on a
//!   full tie the earlier group first (a stable sort).
//! * **Marginal paths** (`marginal_pathgroups on`, see
//!   [`super::shaky`]) are grouped apart: the normal paths are grouped by
//!   the policy and ordered, then the marginal ones likewise, and their
//!   groups come after every normal group, as multipathd's `group_paths`
//!   and `sort_pathgroups` do. A group is marginal when its paths are.
//! * An unknown key (no node name, no target port group) is a key like any
//!   other: all paths that do not know it share one group, as in
//!   multipathd where they compare equal as empty strings / ids.
//!
//! [`detect_pgpolicy`] is multipathd's `detect_pgpolicy`: when every path
//! of a map uses an ALUA prioritizer, the map is grouped by priority (or by
//! target port group with `detect_pgpolicy_use_tpg`) whatever was
//! configured.

use std::cmp::Reverse;

use super::GroupingPolicy;
use crate::units::{PathId, Prio};

/// What grouping needs to know about a path.
#[derive(Debug, Clone)]
pub struct GroupKey<'a> {
    pub id: PathId,
    pub prio: Prio,
    /// May IO go down the path now? (Counts toward the group's priority
    /// and its number of usable paths.)
    pub usable: bool,
    pub serial: &'a str,
    /// Target node name (FC WWNN, iSCSI target name or a declared key);
    /// `None` if unknown.
    pub node_name: Option<&'a str>,
    /// ALUA target port group; `None` if unknown.
    pub tpg: Option<u16>,
    /// The path is marginal (`marginal_pathgroups on`): it goes to a
    /// group after every normal group.
    pub marginal: bool,
}

/// A group [`group_paths`] formed: its members, and whether they are
/// marginal paths (such groups come after every normal group).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grouped {
    pub members: Vec<PathId>,
    pub marginal: bool,
}

/// A group's priority and usable paths, as multipathd's
/// `path_group_prio_update` computes them: the average priority of the
/// usable members (integer division), 0 if none is usable.
pub fn group_prio(members: impl IntoIterator<Item = (Prio, bool)>) -> (Prio, usize) {
    let usable: Vec<Prio> = members
        .into_iter()
        .filter_map(|(p, usable)| usable.then_some(p))
        .collect();
    (Prio::average(usable.iter().copied()), usable.len())
}

/// Splits paths into groups per `policy` and orders them best first:
/// the normal paths' groups, then the marginal paths' groups, each part
/// grouped and ordered by the policy on its own.
pub fn group_paths(policy: GroupingPolicy, paths: &[GroupKey<'_>]) -> Vec<Grouped> {
    let (marginal, normal): (Vec<GroupKey<'_>>, Vec<GroupKey<'_>>) =
        paths.iter().cloned().partition(|p| p.marginal);
    let mut out: Vec<Grouped> = group_part(policy, &normal)
        .into_iter()
        .map(|members| Grouped {
            members,
            marginal: false,
        })
        .collect();
    out.extend(
        group_part(policy, &marginal)
            .into_iter()
            .map(|members| Grouped {
                members,
                marginal: true,
            }),
    );
    out
}

/// Groups and orders paths of one kind (all normal or all marginal).
fn group_part(policy: GroupingPolicy, paths: &[GroupKey<'_>]) -> Vec<Vec<PathId>> {
    let groups: Vec<Vec<&GroupKey<'_>>> = match policy {
        GroupingPolicy::Multibus => {
            if paths.is_empty() {
                Vec::new()
            } else {
                vec![paths.iter().collect()]
            }
        }
        GroupingPolicy::Failover => paths.iter().map(|p| vec![p]).collect(),
        GroupingPolicy::GroupBySerial => group_by(paths, |p| p.serial),
        GroupingPolicy::GroupByNodeName => group_by(paths, |p| p.node_name),
        GroupingPolicy::GroupByPrio => group_by(paths, |p| p.prio),
        GroupingPolicy::GroupByTpg => group_by(paths, |p| p.tpg),
    };
    let mut ranked: Vec<((Prio, usize), Vec<PathId>)> = groups
        .into_iter()
        .map(|g| {
            (
                group_prio(g.iter().map(|p| (p.prio, p.usable))),
                g.iter().map(|p| p.id).collect(),
            )
        })
        .collect();
    // sort_pathgroups: priority, then usable paths, descending; stable.
    ranked.sort_by_key(|((prio, usable), _)| (Reverse(*prio), Reverse(*usable)));
    ranked.into_iter().map(|(_, g)| g).collect()
}

fn group_by<'k, 'a, K: PartialEq>(
    paths: &'k [GroupKey<'a>],
    key: impl Fn(&'k GroupKey<'a>) -> K,
) -> Vec<Vec<&'k GroupKey<'a>>> {
    let mut keys: Vec<K> = Vec::new();
    let mut groups: Vec<Vec<&GroupKey<'_>>> = Vec::new();
    for p in paths {
        let k = key(p);
        match keys.iter().position(|existing| *existing == k) {
            Some(i) => groups[i].push(p),
            None => {
                keys.push(k);
                groups.push(vec![p]);
            }
        }
    }
    groups
}

/// `detect_pgpolicy` and `detect_pgpolicy_use_tpg` (multipath-tools'
/// `select_pgpolicy`): the policy a map is grouped with.
///
/// `all_alua` is true when the map has paths and every one of them uses an
/// ALUA-aware prioritizer (`alua` or `sysfs`), the fact the prioritizer
/// layer supplies. Then, with `detect` on, the map is grouped by priority
/// (by target port group with `use_tpg`) whatever was configured.
/// `group_by_tpg` configured on a map whose paths are not all ALUA falls
/// back to `failover`, multipathd's "emergency fallback".
pub fn detect_pgpolicy(
    configured: GroupingPolicy,
    detect: bool,
    use_tpg: bool,
    all_alua: bool,
) -> GroupingPolicy {
    if detect && all_alua {
        if use_tpg {
            GroupingPolicy::GroupByTpg
        } else {
            GroupingPolicy::GroupByPrio
        }
    } else if configured == GroupingPolicy::GroupByTpg && !all_alua {
        GroupingPolicy::Failover
    } else {
        configured
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: usize, prio: i32, serial: &'static str) -> GroupKey<'static> {
        GroupKey {
            id: PathId::new(id),
            prio: Prio(prio),
            usable: true,
            serial,
            node_name: None,
            tpg: None,
            marginal: false,
        }
    }

    fn groups(policy: GroupingPolicy, paths: &[GroupKey<'_>]) -> Vec<Vec<usize>> {
        group_paths(policy, paths)
            .into_iter()
            .map(|g| g.members.into_iter().map(PathId::index).collect())
            .collect()
    }

    #[test]
    fn marginal_paths_get_groups_after_every_normal_group() {
        let mut paths = [
            key(0, 50, "a"),
            key(1, 10, "a"),
            key(2, 50, "a"),
            key(3, 10, "a"),
            key(4, 1, "a"),
        ];
        paths[0].marginal = true;
        paths[2].marginal = true;
        paths[1].marginal = true;
        let g = group_paths(GroupingPolicy::GroupByPrio, &paths);
        let shape: Vec<(Vec<usize>, bool)> = g
            .iter()
            .map(|g| (g.members.iter().map(|p| p.index()).collect(), g.marginal))
            .collect();
        // Normal: 10 (path 3) then 1 (path 4); marginal: 50 (0, 2) then 10 (1).
        assert_eq!(
            shape,
            vec![
                (vec![3], false),
                (vec![4], false),
                (vec![0, 2], true),
                (vec![1], true),
            ]
        );
        // Multibus: one group of each kind.
        assert_eq!(
            groups(GroupingPolicy::Multibus, &paths),
            vec![vec![3, 4], vec![0, 1, 2]]
        );
        // All marginal: only marginal groups.
        for p in &mut paths {
            p.marginal = true;
        }
        let g = group_paths(GroupingPolicy::Multibus, &paths);
        assert_eq!(g.len(), 1);
        assert!(g[0].marginal);
    }

    #[test]
    fn multibus_puts_every_path_in_one_group() {
        let paths = [key(0, 1, "a"), key(1, 1, "b"), key(2, 1, "c")];
        assert_eq!(
            groups(GroupingPolicy::Multibus, &paths),
            vec![vec![0, 1, 2]]
        );
        assert!(group_paths(GroupingPolicy::Multibus, &[]).is_empty());
    }

    #[test]
    fn failover_gives_one_path_per_group_best_first() {
        let paths = [key(0, 1, "a"), key(1, 50, "a"), key(2, 1, "a")];
        assert_eq!(
            groups(GroupingPolicy::Failover, &paths),
            vec![vec![1], vec![0], vec![2]]
        );
    }

    #[test]
    fn failover_puts_failed_paths_last() {
        let mut paths = [key(0, 1, "a"), key(1, 1, "a"), key(2, 1, "a")];
        paths[0].usable = false;
        assert_eq!(
            groups(GroupingPolicy::Failover, &paths),
            vec![vec![1], vec![2], vec![0]]
        );
    }

    #[test]
    fn group_by_prio_and_serial() {
        let paths = [
            key(0, 10, "x"),
            key(1, 50, "y"),
            key(2, 10, "y"),
            key(3, 50, "x"),
        ];
        assert_eq!(
            groups(GroupingPolicy::GroupByPrio, &paths),
            vec![vec![1, 3], vec![0, 2]]
        );
        // Both serial groups average 30: discovery order.
        assert_eq!(
            groups(GroupingPolicy::GroupBySerial, &paths),
            vec![vec![0, 3], vec![1, 2]]
        );
    }

    #[test]
    fn group_priority_is_the_average_of_usable_paths() {
        assert_eq!(
            group_prio([(Prio(50), true), (Prio(10), true)]),
            (Prio(30), 2)
        );
        assert_eq!(
            group_prio([(Prio(50), false), (Prio(10), true)]),
            (Prio(10), 1)
        );
        assert_eq!(group_prio([(Prio(50), false)]), (Prio(0), 0));
        // Integer division, as multipathd.
        assert_eq!(
            group_prio([(Prio(50), true), (Prio(1), true)]),
            (Prio(25), 2)
        );
    }

    #[test]
    fn equal_priority_orders_by_usable_paths_then_discovery() {
        let mut paths = [
            key(0, 10, "a"),
            key(1, 10, "b"),
            key(2, 10, "b"),
            key(3, 10, "c"),
            key(4, 10, "c"),
        ];
        assert_eq!(
            groups(GroupingPolicy::GroupBySerial, &paths),
            vec![vec![1, 2], vec![3, 4], vec![0]]
        );
        paths[1].usable = false;
        assert_eq!(
            groups(GroupingPolicy::GroupBySerial, &paths),
            vec![vec![3, 4], vec![0], vec![1, 2]]
        );
    }

    #[test]
    fn group_by_node_name_and_tpg() {
        let mut paths = [
            key(0, 1, "s"),
            key(1, 1, "s"),
            key(2, 1, "s"),
            key(3, 1, "s"),
        ];
        paths[0].node_name = Some("iqn.a");
        paths[1].node_name = Some("iqn.b");
        paths[2].node_name = Some("iqn.a");
        paths[0].tpg = Some(1);
        paths[1].tpg = Some(2);
        paths[2].tpg = Some(2);
        assert_eq!(
            groups(GroupingPolicy::GroupByNodeName, &paths),
            vec![vec![0, 2], vec![1], vec![3]]
        );
        assert_eq!(
            groups(GroupingPolicy::GroupByTpg, &paths),
            vec![vec![1, 2], vec![0], vec![3]]
        );
    }

    #[test]
    fn detect_pgpolicy_follows_alua() {
        use GroupingPolicy::*;
        assert_eq!(detect_pgpolicy(Multibus, true, false, true), GroupByPrio);
        assert_eq!(detect_pgpolicy(Multibus, true, true, true), GroupByTpg);
        assert_eq!(detect_pgpolicy(Multibus, true, false, false), Multibus);
        assert_eq!(detect_pgpolicy(Multibus, false, false, true), Multibus);
        assert_eq!(detect_pgpolicy(GroupByTpg, false, false, false), Failover);
        assert_eq!(detect_pgpolicy(GroupByTpg, false, false, true), GroupByTpg);
    }
}
