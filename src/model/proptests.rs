//! Property test of the map state machine: random sequences of check
//! results, IO errors, priority changes, admin commands and time, checked
//! against a small reference model of dm-multipath's failover and
//! multipathd's (0.9.4) group selection, written here from the rules alone,
//! marginal paths (`marginal_pathgroups on`) included: marking or clearing
//! one regroups the map, marginal paths in groups after every normal group,
//! and a normal group with a usable path is always preferred.

use std::time::Duration;

use proptest::prelude::*;

use super::map::{Map, MapPolicy};
use super::path::{CheckState, Path, PathInfo};
use crate::policy::{Failback, GroupingPolicy, NoPathRetry, RrWeight, SelectorKind};
use crate::units::{PathId, Prio, Time};

#[derive(Debug, Clone)]
enum Op {
    Check(usize, bool),
    IoError(usize),
    SetPrio(usize, i32),
    AdminFail(usize),
    AdminReinstate(usize),
    Switch(usize),
    Advance(u64),
    Marginal(usize, bool),
}

fn op(n: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..n, any::<bool>()).prop_map(|(p, up)| Op::Check(p, up)),
        1 => (0..n).prop_map(Op::IoError),
        2 => (0..n, prop_oneof![Just(1), Just(10), Just(50)]).prop_map(|(p, v)| Op::SetPrio(p, v)),
        1 => (0..n).prop_map(Op::AdminFail),
        1 => (0..n).prop_map(Op::AdminReinstate),
        1 => (0..n).prop_map(Op::Switch),
        2 => (0u64..4000).prop_map(Op::Advance),
        1 => (0..n, any::<bool>()).prop_map(|(p, m)| Op::Marginal(p, m)),
    ]
}

/// One path in the reference model.
#[derive(Debug, Clone)]
struct RPath {
    up: bool,
    active: bool,
    admin: bool,
    prio: i32,
    /// The grouping key (serial, target port group).
    key: u8,
    marginal: bool,
}

/// The reference: the groups (formed anew when a path's marginal mark
/// changes, and under group_by_prio with failback immediate when a
/// priority changes or a path comes back into groups formed while it was
/// down: multipathd's reloads), the current group and the deferred
/// failback deadline.
struct Reference {
    failback: Failback,
    grouping: GroupingPolicy,
    paths: Vec<RPath>,
    groups: Vec<Vec<usize>>,
    current: Option<usize>,
    deadline: Option<u64>,
    now: u64,
}

impl Reference {
    /// (priority, usable paths) of group `g`.
    fn stats(&self, g: usize) -> (i32, usize) {
        let prios: Vec<i32> = self.groups[g]
            .iter()
            .filter(|&&p| self.paths[p].active)
            .map(|&p| self.paths[p].prio)
            .collect();
        if prios.is_empty() {
            (0, 0)
        } else {
            (prios.iter().sum::<i32>() / prios.len() as i32, prios.len())
        }
    }

    fn is_marginal(&self, g: usize) -> bool {
        self.groups[g].iter().any(|&p| self.paths[p].marginal)
    }

    /// group_paths with the marginal paths split out, then
    /// sort_pathgroups: normal groups first, each kind by priority, then
    /// usable paths, descending, ties in discovery order.
    fn regroup(&mut self) {
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for marginal in [false, true] {
            let members: Vec<usize> = (0..self.paths.len())
                .filter(|&p| self.paths[p].marginal == marginal)
                .collect();
            let mut part: Vec<Vec<usize>> = Vec::new();
            for p in members {
                let joins = match self.grouping {
                    GroupingPolicy::Failover => None,
                    GroupingPolicy::Multibus => (!part.is_empty()).then_some(0),
                    GroupingPolicy::GroupByPrio => part
                        .iter()
                        .position(|g| self.paths[g[0]].prio == self.paths[p].prio),
                    _ => part
                        .iter()
                        .position(|g| self.paths[g[0]].key == self.paths[p].key),
                };
                match joins {
                    Some(i) => part[i].push(p),
                    None => part.push(vec![p]),
                }
            }
            let first = groups.len();
            groups.extend(part);
            self.groups = groups.clone();
            let mut order: Vec<usize> = (first..groups.len()).collect();
            order.sort_by_key(|&g| {
                let (prio, n) = self.stats(g);
                (std::cmp::Reverse(prio), std::cmp::Reverse(n))
            });
            let sorted: Vec<Vec<usize>> = order.iter().map(|&g| groups[g].clone()).collect();
            groups.truncate(first);
            groups.extend(sorted);
        }
        self.groups = groups;
    }

    /// multipathd reloads the map on a priority change.
    fn reloads(&self) -> bool {
        self.grouping == GroupingPolicy::GroupByPrio && self.failback == Failback::Immediate
    }

    /// A reload: regroup and take the best group.
    fn reload(&mut self) {
        self.regroup();
        self.deadline = None;
        self.current = self.best();
    }

    /// select_path_group.
    fn best(&self) -> Option<usize> {
        let mut best: Option<usize> = None;
        for g in 0..self.groups.len() {
            let (prio, n) = self.stats(g);
            if n == 0 {
                continue;
            }
            let better = match best {
                None => true,
                Some(b) => {
                    let (bp, bn) = self.stats(b);
                    let (m, bm) = (self.is_marginal(g), self.is_marginal(b));
                    (bm && !m) || (m == bm && (prio > bp || (prio == bp && n > bn)))
                }
            };
            if better {
                best = Some(g);
            }
        }
        best
    }

    /// The kernel, then multipathd. `new_up`: (group, first in group) of a
    /// path a check brought up; `check_down`: a checker failed a path.
    fn evaluate(&mut self, new_up: Option<(usize, bool)>, check_down: bool) {
        if self.current.is_none_or(|c| self.stats(c).1 == 0) {
            self.current = (0..self.groups.len()).find(|&g| self.stats(g).1 > 0);
        }
        if check_down {
            self.deadline = None;
        }
        let best = self.best();
        let need = self.failback != Failback::Manual && best.is_some() && best != self.current;
        match self.failback {
            Failback::Manual => {}
            Failback::Immediate => {
                if need {
                    self.current = best;
                }
            }
            Failback::Followover => {
                if need && new_up.is_some_and(|(g, first)| first && Some(g) == best) {
                    self.current = best;
                }
            }
            Failback::DeferredSecs(n) => {
                if self.deadline.is_some_and(|at| self.now >= at) {
                    self.deadline = None;
                    if need {
                        self.current = best;
                    }
                    return;
                }
                if need && (new_up.is_some() || self.deadline.is_none()) {
                    self.deadline = Some(self.now + u64::from(n) * 1000);
                }
            }
        }
    }

    fn group_of(&self, p: usize) -> usize {
        self.groups.iter().position(|g| g.contains(&p)).unwrap_or(0)
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Check(p, true) => {
                let new_up = !self.paths[p].up;
                self.paths[p].up = true;
                if !self.paths[p].active && !self.paths[p].admin {
                    self.paths[p].active = true;
                    if self.reloads() {
                        let before = self.groups.clone();
                        self.regroup();
                        if self.groups != before {
                            self.deadline = None;
                            self.current = self.best();
                            return;
                        }
                    }
                }
                let up = (new_up && self.paths[p].active).then(|| {
                    let g = self.group_of(p);
                    let first = self.groups[g].iter().all(|&o| o == p || !self.paths[o].up);
                    (g, first)
                });
                self.evaluate(up, false);
            }
            Op::Check(p, false) => {
                self.paths[p].up = false;
                if self.paths[p].active {
                    self.paths[p].active = false;
                    self.evaluate(None, true);
                }
            }
            Op::IoError(p) => {
                if self.paths[p].active {
                    self.paths[p].active = false;
                    self.evaluate(None, false);
                }
            }
            Op::AdminFail(p) => {
                self.paths[p].admin = true;
                if self.paths[p].active {
                    self.paths[p].active = false;
                    self.evaluate(None, false);
                }
            }
            Op::AdminReinstate(p) => {
                self.paths[p].admin = false;
                if self.paths[p].up && !self.paths[p].active {
                    self.paths[p].active = true;
                    self.evaluate(None, false);
                }
            }
            Op::SetPrio(p, v) => {
                if self.paths[p].prio != v {
                    self.paths[p].prio = v;
                    if self.reloads() {
                        self.reload();
                    } else {
                        self.evaluate(None, false);
                    }
                }
            }
            Op::Switch(g) => {
                if g < self.groups.len() && self.stats(g).1 > 0 {
                    self.current = Some(g);
                }
            }
            Op::Advance(ms) => {
                self.now += ms;
                if self.deadline.is_some() {
                    self.evaluate(None, false);
                }
            }
            Op::Marginal(p, marginal) => {
                if self.paths[p].marginal != marginal {
                    self.paths[p].marginal = marginal;
                    self.reload();
                }
            }
        }
    }
}

fn apply_map(m: &mut Map, op: &Op, now: &mut u64) {
    let id = |p: usize| PathId::new(p);
    let t = Time(*now);
    match *op {
        Op::Check(p, up) => {
            let s = if up { CheckState::Up } else { CheckState::Down };
            m.check_result(id(p), s, "check", t);
        }
        Op::IoError(p) => {
            m.fail_path(id(p), "EIO", t);
        }
        Op::SetPrio(p, v) => {
            m.set_path_prio(id(p), Prio(v), t);
        }
        Op::AdminFail(p) => {
            m.admin_fail(id(p), t);
        }
        Op::AdminReinstate(p) => {
            m.admin_reinstate(id(p), t);
        }
        Op::Switch(g) => {
            m.switch_group(g);
        }
        Op::Advance(ms) => {
            *now += ms;
            m.tick(Time(*now));
        }
        Op::Marginal(p, marginal) => {
            m.set_marginal(id(p), marginal, t);
        }
    }
}

fn failback() -> impl Strategy<Value = Failback> {
    prop_oneof![
        Just(Failback::Immediate),
        Just(Failback::Manual),
        Just(Failback::Followover),
        (1u32..5).prop_map(Failback::DeferredSecs),
    ]
}

fn grouping() -> impl Strategy<Value = GroupingPolicy> {
    prop_oneof![
        Just(GroupingPolicy::Failover),
        Just(GroupingPolicy::Multibus),
        Just(GroupingPolicy::GroupBySerial),
        Just(GroupingPolicy::GroupByTpg),
        Just(GroupingPolicy::GroupByPrio),
    ]
}

type Setup = (Failback, GroupingPolicy, Vec<(i32, u8)>, Vec<Op>);

fn setup() -> impl Strategy<Value = Setup> {
    (2usize..5).prop_flat_map(|n| {
        (
            failback(),
            grouping(),
            proptest::collection::vec((prop_oneof![Just(1), Just(10), Just(50)], 0u8..3), n),
            proptest::collection::vec(op(n), 1..60),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn map_group_selection_matches_the_reference((fb, grouping, facts, ops) in setup()) {
        let paths: Vec<Path> = facts
            .iter()
            .enumerate()
            .map(|(i, &(prio, key))| {
                let mut p = Path::new_checked(
                    PathInfo {
                        name: format!("p{i}"),
                        serial: format!("s{key}"),
                        tpg: Some(u16::from(key)),
                        ..Default::default()
                    },
                    CheckState::Up,
                    None,
                    Time(0),
                );
                p.prio = Prio(prio);
                p
            })
            .collect();
        let policy = MapPolicy {
            grouping,
            selector: SelectorKind::RoundRobin,
            repeat: 1,
            rr_weight: RrWeight::Uniform,
            failback: fb,
            no_path_retry: NoPathRetry::Queue,
            polling_interval: Duration::from_secs(1),
        };
        let (mut m, _) = Map::new("m".into(), "w".into(), paths, policy, Time(0));
        let mut r = Reference {
            failback: fb,
            grouping,
            paths: facts
                .iter()
                .map(|&(prio, key)| RPath {
                    up: true,
                    active: true,
                    admin: false,
                    prio,
                    key,
                    marginal: false,
                })
                .collect(),
            groups: Vec::new(),
            current: None,
            deadline: None,
            now: 0,
        };
        r.regroup();
        r.current = r.best();
        prop_assert_eq!(m.current_group(), r.current);
        let mut now = 0;
        for (step, o) in ops.iter().enumerate() {
            apply_map(&mut m, o, &mut now);
            r.apply(o);
            let groups: Vec<Vec<usize>> = m
                .groups()
                .iter()
                .map(|g| g.members.iter().map(|id| id.index()).collect())
                .collect();
            prop_assert_eq!(&groups, &r.groups, "step {} {:?}", step, o);
            prop_assert_eq!(m.current_group(), r.current, "step {} {:?}", step, o);
            for (g, grp) in m.groups().iter().enumerate() {
                prop_assert_eq!(grp.prio.0, r.stats(g).0, "group {} prio", g);
                prop_assert_eq!(grp.marginal, r.is_marginal(g), "group {} marginal", g);
            }
            // The current group carries IO whenever some path can.
            let any = (0..r.groups.len()).any(|g| r.stats(g).1 > 0);
            prop_assert_eq!(m.current_group().is_some(), any);
        }
    }
}
