//! Path group selection and failback.
//!
//! Failover always happens: when the current group has no usable path the
//! map moves to the best group that has one. *Failback* is the other way:
//! moving back to a better group while the current one still works.
//!
//! | failback    | moves to a better group                                  |
//! |-------------|----------------------------------------------------------|
//! | immediate   | as soon as it has a usable path                          |
//! | manual      | never by itself (only on failover or an admin switch)    |
//! | followover  | when the first path of that group comes back             |
//! | N seconds   | N seconds after it became better, if it still is         |

use super::Failback;
use crate::units::{Prio, Time};

/// A path group as failback sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupView {
    /// Group priority (average priority of its usable paths).
    pub prio: Prio,
    /// Usable paths in the group.
    pub usable: usize,
}

/// The best group: the highest priority among groups with a usable path;
/// ties go to the group with more usable paths, then the earlier group.
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
                if (g.prio, g.usable) > (bg.prio, bg.usable) {
                    best = Some(i);
                }
            }
        }
    }
    best
}

/// Why the group choice is being reconsidered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A path was reinstated; `first_in_group` is true when its group had no
    /// usable path before.
    Reinstated { group: usize, first_in_group: bool },
    /// A path failed.
    Failed,
    /// Time passed (deferred failback).
    Tick,
    /// The map was (re)assembled.
    Assembled,
}

/// Deferred failback bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailbackState {
    #[default]
    Idle,
    /// Fail back to `group` at `at`, if it is still better then.
    Deferred { group: usize, at: Time },
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
    let current_usable = current
        .and_then(|c| groups.get(c))
        .is_some_and(|g| g.usable > 0);

    // Failover (or first choice): the current group cannot carry IO.
    if !current_usable {
        return Decision {
            group: best,
            state: FailbackState::Idle,
        };
    }
    let Some(cur) = current else {
        return Decision {
            group: best,
            state: FailbackState::Idle,
        };
    };
    let stay = Decision {
        group: Some(cur),
        state: FailbackState::Idle,
    };
    let Some(b) = best else { return stay };
    if b == cur || groups[b].prio <= groups[cur].prio {
        return stay;
    }
    // A strictly better group than the current, working one exists.
    let switch = Decision {
        group: Some(b),
        state: FailbackState::Idle,
    };
    match failback {
        Failback::Immediate => switch,
        Failback::Manual => stay,
        Failback::Followover => match trigger {
            Trigger::Reinstated {
                group,
                first_in_group: true,
            } if group == b => switch,
            _ => stay,
        },
        Failback::DeferredSecs(secs) => match state {
            FailbackState::Deferred { group, at } if group == b => {
                if now >= at {
                    switch
                } else {
                    Decision {
                        group: Some(cur),
                        state,
                    }
                }
            }
            _ => Decision {
                group: Some(cur),
                state: FailbackState::Deferred {
                    group: b,
                    at: now.plus_secs(u64::from(secs)),
                },
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(prio: i32, usable: usize) -> GroupView {
        GroupView {
            prio: Prio(prio),
            usable,
        }
    }

    const T0: Time = Time(0);

    #[test]
    fn best_group_prefers_priority_then_usable_count() {
        assert_eq!(best_group(&[g(1, 1), g(50, 1), g(50, 2)]), Some(2));
        assert_eq!(best_group(&[g(1, 0), g(0, 1)]), Some(1));
        assert_eq!(best_group(&[g(1, 0)]), None);
        assert_eq!(best_group(&[]), None);
    }

    #[test]
    fn failover_happens_whatever_the_failback_mode() {
        for fb in [
            Failback::Immediate,
            Failback::Manual,
            Failback::Followover,
            Failback::DeferredSecs(30),
        ] {
            let d = decide(
                fb,
                &[g(50, 0), g(10, 1)],
                Some(0),
                FailbackState::Idle,
                Trigger::Failed,
                T0,
            );
            assert_eq!(d.group, Some(1), "{fb:?}");
        }
    }

    #[test]
    fn no_usable_group_means_none() {
        let d = decide(
            Failback::Immediate,
            &[g(50, 0)],
            Some(0),
            FailbackState::Idle,
            Trigger::Failed,
            T0,
        );
        assert_eq!(d.group, None);
    }

    #[test]
    fn immediate_fails_back_as_soon_as_the_better_group_returns() {
        let groups = [g(50, 1), g(10, 1)];
        let d = decide(
            Failback::Immediate,
            &groups,
            Some(1),
            FailbackState::Idle,
            Trigger::Reinstated {
                group: 0,
                first_in_group: true,
            },
            T0,
        );
        assert_eq!(d.group, Some(0));
    }

    #[test]
    fn manual_stays_until_told() {
        let groups = [g(50, 1), g(10, 1)];
        let d = decide(
            Failback::Manual,
            &groups,
            Some(1),
            FailbackState::Idle,
            Trigger::Reinstated {
                group: 0,
                first_in_group: true,
            },
            T0,
        );
        assert_eq!(d.group, Some(1));
    }

    #[test]
    fn followover_only_on_the_first_path_of_the_group() {
        let groups = [g(50, 2), g(10, 1)];
        let first = Trigger::Reinstated {
            group: 0,
            first_in_group: true,
        };
        let second = Trigger::Reinstated {
            group: 0,
            first_in_group: false,
        };
        assert_eq!(
            decide(
                Failback::Followover,
                &groups,
                Some(1),
                FailbackState::Idle,
                first,
                T0
            )
            .group,
            Some(0)
        );
        assert_eq!(
            decide(
                Failback::Followover,
                &groups,
                Some(1),
                FailbackState::Idle,
                second,
                T0
            )
            .group,
            Some(1)
        );
    }

    #[test]
    fn deferred_failback_waits_its_seconds() {
        let groups = [g(50, 1), g(10, 1)];
        let trig = Trigger::Reinstated {
            group: 0,
            first_in_group: true,
        };
        let d = decide(
            Failback::DeferredSecs(10),
            &groups,
            Some(1),
            FailbackState::Idle,
            trig,
            T0,
        );
        assert_eq!(d.group, Some(1));
        assert_eq!(
            d.state,
            FailbackState::Deferred {
                group: 0,
                at: Time::from_secs(10)
            }
        );
        let d2 = decide(
            Failback::DeferredSecs(10),
            &groups,
            Some(1),
            d.state,
            Trigger::Tick,
            Time::from_secs(9),
        );
        assert_eq!(d2.group, Some(1));
        let d3 = decide(
            Failback::DeferredSecs(10),
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
    fn equal_priority_groups_do_not_flap() {
        let groups = [g(10, 1), g(10, 1)];
        let d = decide(
            Failback::Immediate,
            &groups,
            Some(1),
            FailbackState::Idle,
            Trigger::Tick,
            T0,
        );
        assert_eq!(d.group, Some(1));
    }
}
