//! path_grouping_policy: how a map's paths are split into path groups.
//!
//! Groups come out ordered best first (highest priority first, as
//! multipath-tools sorts them); paths keep their discovery order inside a
//! group.

use super::GroupingPolicy;
use crate::units::{PathId, Prio};

/// What grouping needs to know about a path.
#[derive(Debug, Clone)]
pub struct GroupKey<'a> {
    pub id: PathId,
    pub prio: Prio,
    pub serial: &'a str,
    /// Target node name (FC WWNN / iSCSI target name); empty if unknown.
    pub node_name: &'a str,
    /// ALUA target port group; `None` if unknown.
    pub tpg: Option<u32>,
}

/// Splits paths into groups per `policy`.
pub fn group_paths(policy: GroupingPolicy, paths: &[GroupKey<'_>]) -> Vec<Vec<PathId>> {
    let mut groups: Vec<Vec<PathId>> = match policy {
        GroupingPolicy::Multibus => {
            if paths.is_empty() {
                Vec::new()
            } else {
                vec![paths.iter().map(|p| p.id).collect()]
            }
        }
        GroupingPolicy::Failover => paths.iter().map(|p| vec![p.id]).collect(),
        GroupingPolicy::GroupBySerial => group_by(paths, |p| p.serial.to_string()),
        GroupingPolicy::GroupByNodeName => group_by(paths, |p| p.node_name.to_string()),
        GroupingPolicy::GroupByPrio => group_by(paths, |p| p.prio),
        GroupingPolicy::GroupByTpg => group_by(paths, |p| p.tpg),
    };
    // Best group first: highest average priority; stable for ties.
    let avg = |g: &Vec<PathId>| -> Prio {
        Prio::average(
            g.iter()
                .filter_map(|id| paths.iter().find(|p| p.id == *id))
                .map(|p| p.prio),
        )
    };
    groups.sort_by_key(|g| std::cmp::Reverse(avg(g)));
    groups
}

fn group_by<K: PartialEq>(
    paths: &[GroupKey<'_>],
    key: impl Fn(&GroupKey<'_>) -> K,
) -> Vec<Vec<PathId>> {
    let mut keys: Vec<K> = Vec::new();
    let mut groups: Vec<Vec<PathId>> = Vec::new();
    for p in paths {
        let k = key(p);
        match keys.iter().position(|existing| *existing == k) {
            Some(i) => groups[i].push(p.id),
            None => {
                keys.push(k);
                groups.push(vec![p.id]);
            }
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: usize, prio: i32, serial: &'static str) -> GroupKey<'static> {
        GroupKey {
            id: PathId::new(id),
            prio: Prio(prio),
            serial,
            node_name: "",
            tpg: None,
        }
    }

    fn groups(policy: GroupingPolicy, paths: &[GroupKey<'_>]) -> Vec<Vec<usize>> {
        group_paths(policy, paths)
            .into_iter()
            .map(|g| g.into_iter().map(PathId::index).collect())
            .collect()
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
        assert_eq!(
            groups(GroupingPolicy::GroupBySerial, &paths),
            vec![vec![0, 3], vec![1, 2]]
        );
    }
}
