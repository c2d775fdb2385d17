//! no_path_retry: what happens to IO while a map has no usable path.
//!
//! ```text
//!               all paths down                 N intervals pass
//!   Serving  ------------------->  Queueing  ------------------->  Failing
//!      ^   (mode queue or N)          |                               |
//!      |                              | a path returns                |
//!      +------------------------------+-------------------------------+
//! ```
//!
//! With `fail` the map goes straight from Serving to Failing. In Queueing,
//! new and retried requests are held; on the way to Failing every held
//! request fails with EIO, and so does every new one until a path returns.

use super::NoPathRetry;
use std::time::Duration;

use crate::units::Time;

/// Where the map stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoPathState {
    /// At least one path is usable.
    Serving,
    /// No usable path; IO is held. `deadline` is when held IO fails
    /// (`None` = queue forever).
    Queueing { since: Time, deadline: Option<Time> },
    /// No usable path and no more queueing: IO fails at once.
    Failing,
}

/// What to do with a request that found no usable path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Queue,
    Fail,
}

/// A change the caller must act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Started holding IO.
    QueueingStarted { deadline: Option<Time> },
    /// Held IO must now fail with EIO (retries exhausted, or queueing
    /// switched off by a reconfigure).
    QueueExhausted,
    /// Went to failing at once (mode `fail`).
    FailingStarted,
    /// A path is usable again: re-dispatch held IO.
    Resumed,
}

/// The no_path_retry state machine of one map.
#[derive(Debug, Clone)]
pub struct NoPathPolicy {
    mode: NoPathRetry,
    /// The unit of `no_path_retry N` (at least a second).
    interval: Duration,
    state: NoPathState,
}

/// polling_interval as the unit of `no_path_retry N`: at least a second,
/// as multipathd's polling_interval is.
fn unit(polling_interval: Duration) -> Duration {
    polling_interval.max(Duration::from_secs(1))
}

impl NoPathPolicy {
    /// `polling_interval` is the unit of `no_path_retry N`.
    pub fn new(mode: NoPathRetry, polling_interval: Duration) -> Self {
        NoPathPolicy {
            mode,
            interval: unit(polling_interval),
            state: NoPathState::Serving,
        }
    }

    pub fn state(&self) -> NoPathState {
        self.state
    }

    pub fn mode(&self) -> NoPathRetry {
        self.mode
    }

    /// True while IO is being held.
    pub fn is_queueing(&self) -> bool {
        matches!(self.state, NoPathState::Queueing { .. })
    }

    /// Where a request with no usable path goes.
    pub fn disposition(&self) -> Disposition {
        match self.state {
            NoPathState::Queueing { .. } => Disposition::Queue,
            NoPathState::Failing => Disposition::Fail,
            // Paths vanished but the map has not been told yet: decide from
            // the mode, as entering the state would.
            NoPathState::Serving => match self.mode {
                NoPathRetry::Fail => Disposition::Fail,
                NoPathRetry::Queue | NoPathRetry::Retries(_) => Disposition::Queue,
            },
        }
    }

    /// The last usable path went away.
    pub fn all_paths_down(&mut self, now: Time) -> Option<Transition> {
        if !matches!(self.state, NoPathState::Serving) {
            return None;
        }
        match self.mode {
            NoPathRetry::Fail => {
                self.state = NoPathState::Failing;
                Some(Transition::FailingStarted)
            }
            NoPathRetry::Queue => {
                self.state = NoPathState::Queueing {
                    since: now,
                    deadline: None,
                };
                Some(Transition::QueueingStarted { deadline: None })
            }
            NoPathRetry::Retries(n) => {
                let deadline = Some(now.plus(self.interval.saturating_mul(n)));
                self.state = NoPathState::Queueing {
                    since: now,
                    deadline,
                };
                Some(Transition::QueueingStarted { deadline })
            }
        }
    }

    /// A path became usable.
    pub fn path_restored(&mut self) -> Option<Transition> {
        match self.state {
            NoPathState::Serving => None,
            NoPathState::Queueing { .. } | NoPathState::Failing => {
                self.state = NoPathState::Serving;
                Some(Transition::Resumed)
            }
        }
    }

    /// Time passed.
    pub fn tick(&mut self, now: Time) -> Option<Transition> {
        match self.state {
            NoPathState::Queueing {
                deadline: Some(d), ..
            } if now >= d => {
                self.state = NoPathState::Failing;
                Some(Transition::QueueExhausted)
            }
            _ => None,
        }
    }

    /// Applies a new configuration (reconfigure). Switching queueing off
    /// while IO is held fails that IO; a new retry count restarts the
    /// count from `now`.
    pub fn reconfigure(
        &mut self,
        mode: NoPathRetry,
        polling_interval: Duration,
        now: Time,
    ) -> Option<Transition> {
        self.mode = mode;
        self.interval = unit(polling_interval);
        match (self.state, mode) {
            (NoPathState::Queueing { .. }, NoPathRetry::Fail) => {
                self.state = NoPathState::Failing;
                Some(Transition::QueueExhausted)
            }
            (NoPathState::Queueing { since, .. }, NoPathRetry::Queue) => {
                self.state = NoPathState::Queueing {
                    since,
                    deadline: None,
                };
                None
            }
            (NoPathState::Queueing { since, .. }, NoPathRetry::Retries(n)) => {
                let deadline = Some(now.plus(self.interval.saturating_mul(n)));
                self.state = NoPathState::Queueing { since, deadline };
                None
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn fail_mode_fails_at_once() {
        let mut p = NoPathPolicy::new(NoPathRetry::Fail, secs(5));
        assert_eq!(p.disposition(), Disposition::Fail);
        assert_eq!(p.all_paths_down(Time(0)), Some(Transition::FailingStarted));
        assert_eq!(p.disposition(), Disposition::Fail);
        assert_eq!(p.path_restored(), Some(Transition::Resumed));
        assert_eq!(p.state(), NoPathState::Serving);
    }

    #[test]
    fn queue_mode_holds_forever() {
        let mut p = NoPathPolicy::new(NoPathRetry::Queue, secs(5));
        assert_eq!(
            p.all_paths_down(Time(0)),
            Some(Transition::QueueingStarted { deadline: None })
        );
        assert_eq!(p.tick(Time::from_secs(1_000_000)), None);
        assert_eq!(p.disposition(), Disposition::Queue);
        assert_eq!(p.path_restored(), Some(Transition::Resumed));
    }

    #[test]
    fn retries_hold_for_n_polling_intervals_then_fail() {
        let mut p = NoPathPolicy::new(NoPathRetry::Retries(3), secs(5));
        let t0 = Time::from_secs(100);
        assert_eq!(
            p.all_paths_down(t0),
            Some(Transition::QueueingStarted {
                deadline: Some(Time::from_secs(115))
            })
        );
        assert_eq!(p.tick(Time::from_secs(114)), None);
        assert_eq!(p.disposition(), Disposition::Queue);
        assert_eq!(
            p.tick(Time::from_secs(115)),
            Some(Transition::QueueExhausted)
        );
        assert_eq!(p.disposition(), Disposition::Fail);
        assert_eq!(p.tick(Time::from_secs(200)), None);
        // A returning path resets everything; the next outage counts anew.
        assert_eq!(p.path_restored(), Some(Transition::Resumed));
        assert!(p.all_paths_down(Time::from_secs(300)).is_some());
        assert_eq!(p.tick(Time::from_secs(310)), None);
    }

    #[test]
    fn a_second_down_report_changes_nothing() {
        let mut p = NoPathPolicy::new(NoPathRetry::Retries(1), secs(1));
        assert!(p.all_paths_down(Time(0)).is_some());
        assert_eq!(p.all_paths_down(Time(500)), None);
        assert_eq!(p.path_restored(), Some(Transition::Resumed));
        assert_eq!(p.path_restored(), None);
    }

    #[test]
    fn reconfigure_to_fail_releases_held_io_as_errors() {
        let mut p = NoPathPolicy::new(NoPathRetry::Queue, secs(5));
        p.all_paths_down(Time(0));
        assert_eq!(
            p.reconfigure(NoPathRetry::Fail, secs(5), Time(10)),
            Some(Transition::QueueExhausted)
        );
        assert_eq!(p.disposition(), Disposition::Fail);
    }

    #[test]
    fn reconfigure_to_retries_starts_the_count_now() {
        let mut p = NoPathPolicy::new(NoPathRetry::Queue, secs(5));
        p.all_paths_down(Time(0));
        assert_eq!(
            p.reconfigure(NoPathRetry::Retries(2), secs(1), Time::from_secs(50)),
            None
        );
        assert_eq!(p.tick(Time::from_secs(51)), None);
        assert_eq!(
            p.tick(Time::from_secs(52)),
            Some(Transition::QueueExhausted)
        );
    }
}
