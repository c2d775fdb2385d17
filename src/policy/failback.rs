//! Path group selection and failback, as dm-multipath and multipathd
//! (multipath-tools 0.9.4, the version Debian 12 ships) decide them.
//!
//! Two actors choose the group IO goes to:
//!
//! * **The kernel** fails over: when the current group has no usable path
//!   left it takes the *first group in table order* that has one
//!   ([`first_usable`]), whatever the priorities.
//! * **multipathd** fails back: after each path check it computes the best
//!   group ([`best_group`], `select_path_group`) and, if that is not the
//!   current one, switches to it per `failback`:
//!
//! | failback    | switches to the best group                                 |
//! |-------------|------------------------------------------------------------|
//! | immediate   | at once                                                    |
//! | manual      | never (the kernel's failover and admin switches only)      |
//! | followover  | when a check brings up the first path of the best group    |
//! | N seconds   | N seconds after the need arose (the timer restarts when a  |
//! |             | path comes up or a check fails a path)                     |
//!
//! **The tie rule**: the best group is the first group in table order with
//! a usable path, replaced by a later group only if that one has a
//! strictly higher priority, or an equal priority and strictly more usable
//! paths. On a full tie the *earlier* group wins, not the current one: with
//! `path_grouping_policy failover` and equal priorities, a first path that
//! comes back takes IO back from the second (under immediate at once,
//! followover when its check brings it up, N seconds later under deferred).
//! A group is chosen deterministically from the state, so equal groups do
//! not flap.
//!
//! umpath evaluates multipathd's rule right after each event (a check, a
//! failure, a priority change) instead of once per checker round; with
//! failback immediate an admin's switch to a worse group is therefore
//! undone by the next check, as in multipathd.

use super::Failback;
use crate::units::{Prio, Time};

/// A path group as failback sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupView {
    /// Group priority (average priority of its usable paths).
    pub prio: Prio,
    /// Usable paths in the group.
    pub usable: usize,
    /// A group of marginal paths (`marginal_pathgroups on`).
    pub marginal: bool,
}

/// The best group (multipathd's `select_path_group`): the first group with
/// a usable path, replaced by a later one only with a strictly higher
/// priority, or an equal priority and strictly more usable paths. A
/// normal group with a usable path beats every marginal group, whatever
/// their priorities: marginal groups are used only when no normal group
/// can be.
pub fn best_group(groups: &[GroupView]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, g) in groups.iter().enumerate() {
        if g.usable == 0 {
            continue;
        }
        match best {
            None => best = Some(i),
            Some(b) => {
                let bg = groups[b];
                if (!g.marginal, g.prio, g.usable) > (!bg.marginal, bg.prio, bg.usable) {
                    best = Some(i);
                }
            }
        }
    }
    best
}

/// The group the kernel fails over to: the first, in table order, with a
/// usable path.
pub fn first_usable(groups: &[GroupView]) -> Option<usize> {
    groups.iter().position(|g| g.usable > 0)
}

/// A check brought a path up (multipathd's `CHECK_PATH_NEW_UP`: its
/// previous verdict was not usable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewUp {
    /// The group of the path.
    pub group: usize,
    /// Every other path of the group is down or shaky by its checker
    /// (followover's "first path of the group to come back").
    pub first_in_group: bool,
}

/// Why the group choice is being reconsidered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A path check finished with the path usable; `new_up` when it
    /// brought the path up.
    Checked { new_up: Option<NewUp> },
    /// A path failed. `by_check`: a checker saw it go down, which cancels a
    /// deferred failback (it restarts at once if still needed).
    Failed { by_check: bool },
    /// A path's priority changed.
    PrioChanged,
    /// Some other change (an admin failed or reinstated a path).
    Changed,
    /// Time passed (deferred failback).
    Tick,
    /// The map was (re)loaded: the best group is taken whatever `failback`
    /// says, as multipathd loads a table with the best group first to use.
    Assembled,
}

/// Deferred failback bookkeeping (multipathd's `failback_tick`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailbackState {
    #[default]
    Idle,
    /// At `at`, switch to the best group if it is not the current one.
    Deferred { at: Time },
}

/// The decision: which group to use now, and the new failback state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub group: Option<usize>,
    pub state: FailbackState,
}

/// Chooses the group to use.
pub fn decide(
    failback: Failback,
    groups: &[GroupView],
    current: Option<usize>,
    state: FailbackState,
    trigger: Trigger,
    now: Time,
) -> Decision {
    let best = best_group(groups);
    if trigger == Trigger::Assembled {
        return Decision {
            group: best,
            state: FailbackState::Idle,
        };
    }
    // The kernel: the current group must have a usable path.
    let usable = |g: &usize| groups.get(*g).is_some_and(|v| v.usable > 0);
    let mut group = current.filter(usable).or_else(|| first_usable(groups));
    let mut state = state;
    if trigger == (Trigger::Failed { by_check: true }) {
        state = FailbackState::Idle;
    }
    // multipathd: need_switch_pathgroup.
    let need_switch = failback != Failback::Manual && best.is_some() && best != group;
    match failback {
        Failback::Manual => {}
        Failback::Immediate => {
            if need_switch {
                group = best;
            }
        }
        Failback::Followover => {
            if let Trigger::Checked {
                new_up:
                    Some(NewUp {
                        group: g,
                        first_in_group: true,
                    }),
            } = trigger
            {
                if need_switch && Some(g) == best {
                    group = best;
                }
            }
        }
        Failback::DeferredSecs(secs) => {
            if let FailbackState::Deferred { at } = state {
                if now >= at {
                    state = FailbackState::Idle;
                    if need_switch {
                        group = best;
                    }
                    return Decision { group, state };
                }
            }
            let new_up = matches!(trigger, Trigger::Checked { new_up: Some(_) });
            if need_switch && (new_up || state == FailbackState::Idle) {
                state = FailbackState::Deferred {
                    at: now.plus_secs(u64::from(secs)),
                };
            }
        }
    }
    Decision { group, state }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(prio: i32, usable: usize) -> GroupView {
        GroupView {
            prio: Prio(prio),
            usable,
            marginal: false,
        }
    }

    #[test]
    fn a_usable_normal_group_beats_any_marginal_group() {
        let mut m = g(50, 2);
        m.marginal = true;
        assert_eq!(best_group(&[m, g(1, 1)]), Some(1));
        assert_eq!(best_group(&[g(1, 1), m]), Some(0));
        assert_eq!(best_group(&[g(1, 0), m]), Some(1));
        let mut m2 = g(10, 1);
        m2.marginal = true;
        assert_eq!(best_group(&[g(1, 0), m2, m]), Some(2));
    }

    const T0: Time = Time(0);
    const CHECKED: Trigger = Trigger::Checked { new_up: None };

    fn up(group: usize, first_in_group: bool) -> Trigger {
        Trigger::Checked {
            new_up: Some(NewUp {
                group,
                first_in_group,
            }),
        }
    }

    fn idle(fb: Failback, groups: &[GroupView], cur: usize, t: Trigger) -> Option<usize> {
        decide(fb, groups, Some(cur), FailbackState::Idle, t, T0).group
    }

    #[test]
    fn best_group_prefers_priority_then_usable_count_then_order() {
        assert_eq!(best_group(&[g(1, 1), g(50, 1), g(50, 2)]), Some(2));
        assert_eq!(best_group(&[g(1, 0), g(0, 1)]), Some(1));
        assert_eq!(best_group(&[g(10, 1), g(10, 1)]), Some(0));
        assert_eq!(best_group(&[g(1, 0)]), None);
        assert_eq!(best_group(&[]), None);
    }

    #[test]
    fn the_kernel_fails_over_to_the_first_usable_group_in_order() {
        // Manual: no failback, so the kernel's choice stands.
        let groups = [g(0, 0), g(10, 1), g(50, 1)];
        let d = decide(
            Failback::Manual,
            &groups,
            Some(0),
            FailbackState::Idle,
            Trigger::Failed { by_check: false },
            T0,
        );
        assert_eq!(d.group, Some(1));
        // Immediate: multipathd then takes the best.
        assert_eq!(
            idle(
                Failback::Immediate,
                &groups,
                0,
                Trigger::Failed { by_check: false }
            ),
            Some(2)
        );
    }

    #[test]
    fn failover_happens_whatever_the_failback_mode() {
        for fb in [
            Failback::Immediate,
            Failback::Manual,
            Failback::Followover,
            Failback::DeferredSecs(30),
        ] {
            let d = idle(
                fb,
                &[g(50, 0), g(10, 1)],
                0,
                Trigger::Failed { by_check: true },
            );
            assert_eq!(d, Some(1), "{fb:?}");
        }
    }

    #[test]
    fn no_usable_group_means_none() {
        assert_eq!(
            idle(
                Failback::Immediate,
                &[g(50, 0)],
                0,
                Trigger::Failed { by_check: true }
            ),
            None
        );
    }

    #[test]
    fn immediate_fails_back_as_soon_as_the_better_group_returns() {
        let groups = [g(50, 1), g(10, 1)];
        assert_eq!(idle(Failback::Immediate, &groups, 1, up(0, true)), Some(0));
        assert_eq!(idle(Failback::Immediate, &groups, 1, CHECKED), Some(0));
    }

    #[test]
    fn manual_stays_until_told_but_a_reload_takes_the_best() {
        let groups = [g(50, 1), g(10, 1)];
        assert_eq!(idle(Failback::Manual, &groups, 1, up(0, true)), Some(1));
        assert_eq!(
            idle(Failback::Manual, &groups, 1, Trigger::Assembled),
            Some(0)
        );
    }

    #[test]
    fn followover_only_on_the_first_path_of_the_best_group() {
        let groups = [g(50, 2), g(10, 1)];
        assert_eq!(idle(Failback::Followover, &groups, 1, up(0, true)), Some(0));
        assert_eq!(
            idle(Failback::Followover, &groups, 1, up(0, false)),
            Some(1)
        );
        assert_eq!(idle(Failback::Followover, &groups, 1, CHECKED), Some(1));
        // A path of a group that is not the best does not count.
        let groups = [g(50, 1), g(10, 1), g(30, 1)];
        assert_eq!(idle(Failback::Followover, &groups, 1, up(2, true)), Some(1));
    }

    #[test]
    fn deferred_failback_waits_its_seconds() {
        let fb = Failback::DeferredSecs(10);
        let groups = [g(50, 1), g(10, 1)];
        let d = decide(fb, &groups, Some(1), FailbackState::Idle, up(0, true), T0);
        assert_eq!(d.group, Some(1));
        let armed = FailbackState::Deferred {
            at: Time::from_secs(10),
        };
        assert_eq!(d.state, armed);
        // A check without a new path does not restart the timer.
        let d = decide(fb, &groups, Some(1), d.state, CHECKED, Time::from_secs(5));
        assert_eq!(d.state, armed);
        let d2 = decide(
            fb,
            &groups,
            Some(1),
            d.state,
            Trigger::Tick,
            Time::from_secs(9),
        );
        assert_eq!(d2.group, Some(1));
        let d3 = decide(
            fb,
            &groups,
            Some(1),
            d2.state,
            Trigger::Tick,
            Time::from_secs(10),
        );
        assert_eq!(d3.group, Some(0));
        assert_eq!(d3.state, FailbackState::Idle);
    }

    #[test]
    fn deferred_restarts_on_a_new_path_and_on_a_checked_failure() {
        let fb = Failback::DeferredSecs(10);
        let groups = [g(50, 1), g(10, 1), g(5, 1)];
        let armed = FailbackState::Deferred {
            at: Time::from_secs(10),
        };
        let d = decide(fb, &groups, Some(1), armed, up(2, true), Time::from_secs(4));
        assert_eq!(
            d.state,
            FailbackState::Deferred {
                at: Time::from_secs(14)
            }
        );
        let d = decide(
            fb,
            &groups,
            Some(1),
            armed,
            Trigger::Failed { by_check: true },
            Time::from_secs(6),
        );
        assert_eq!(
            d.state,
            FailbackState::Deferred {
                at: Time::from_secs(16)
            }
        );
        // An IO error does not touch the timer.
        let d = decide(
            fb,
            &groups,
            Some(1),
            armed,
            Trigger::Failed { by_check: false },
            Time::from_secs(6),
        );
        assert_eq!(d.state, armed);
    }

    #[test]
    fn on_a_tie_the_earlier_group_wins_and_the_choice_is_stable() {
        // failover policy, equal priorities: the first path is back.
        let groups = [g(1, 1), g(1, 1)];
        assert_eq!(idle(Failback::Immediate, &groups, 1, up(0, true)), Some(0));
        assert_eq!(idle(Failback::Followover, &groups, 1, up(0, true)), Some(0));
        assert_eq!(idle(Failback::Manual, &groups, 1, up(0, true)), Some(1));
        // Once there, nothing moves it.
        assert_eq!(idle(Failback::Immediate, &groups, 0, CHECKED), Some(0));
        // Equal priority, more usable paths: that group wins.
        let groups = [g(10, 1), g(10, 2)];
        assert_eq!(idle(Failback::Immediate, &groups, 0, CHECKED), Some(1));
    }
}
