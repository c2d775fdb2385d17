//! Shaky and marginal paths: whether a path that passes its check may
//! carry IO again, or is held out because it has been failing.
//!
//! Two detectors, as multipathd 0.9.x has them (at most one is on for a
//! map: when the marginal_path one is configured, san_path_err is off):
//!
//! * **san_path_err** (`san_path_err_threshold`, `_forget_rate`,
//!   `_recovery_time`; or the deprecated `delay_watch_checks` and
//!   `delay_wait_checks` mapped onto them, see [`ShakyConfig::from_keywords`]).
//!   Every time a path comes back from a failure, a failure is counted;
//!   every `forget_rate` good checks of a working path forget one. When a
//!   path comes back with more than `threshold` failures counted, it is
//!   held failed ("shaky") until it has passed its checks for
//!   `recovery_time`; a check that fails meanwhile starts that time again.
//! * **marginal_path** (`marginal_path_double_failed_time`,
//!   `_err_sample_time`, `_err_rate_threshold`, `_err_recheck_gap_time`).
//!   A path that fails twice within `double_failed_time` is suspected:
//!   when it comes back it is not reinstated but its IO errors are sampled
//!   for `sample_time`; an error rate (per thousand reads) above
//!   `rate_threshold` makes it marginal, and it is sampled again
//!   `recheck_gap_time` after that; a rate at or below the threshold
//!   clears it.
//!
//! With `marginal_pathgroups on` a path either detector holds out is not
//! held: it carries IO but is marked marginal (the map puts it in a group
//! of its own, after the others). Either way, a path is let back early
//! when the map has no other usable path.
//!
//! [`PathHealth`] is the per-path state machine. Time is an argument; each
//! input returns what it decided ([`Verdict`]) and what changed
//! ([`Change`]), so the caller logs transitions once.

use std::fmt;
use std::time::Duration;

use crate::units::Time;

/// multipathd's minimum `marginal_path_err_sample_time` (2 × its 60 s IO
/// timeout); smaller values are raised to it.
pub const MIN_SAMPLE_TIME: Duration = Duration::from_secs(120);

/// How many failures within `double_failed_time` make a path suspect
/// (multipathd's `FLAKY_PATHFAIL_THRESHOLD`).
pub const DOUBLE_FAILED: u32 = 2;

/// The san_path_err settings (all three set, each > 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SanPathErr {
    /// Failures (counted when a path comes back) beyond which it is held.
    pub threshold: u32,
    /// Good checks that forget one counted failure.
    pub forget_rate: u32,
    /// How long a held path must keep passing its checks.
    pub recovery_time: Duration,
}

/// The marginal_path settings (all four set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarginalPath {
    /// Two failures closer than this make a path suspect.
    pub double_failed_time: Duration,
    /// How long IO errors are sampled (at least [`MIN_SAMPLE_TIME`]).
    pub sample_time: Duration,
    /// Error rate, per thousand reads, above which the path is marginal.
    pub rate_threshold: u32,
    /// How long a marginal path waits before it is sampled again.
    pub recheck_gap_time: Duration,
}

/// What to do with a path a detector would hold out (`marginal_pathgroups`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MarginalPathgroups {
    /// Held failed (not reinstated) until released.
    #[default]
    Off,
    /// Kept usable, in a path group of its own after the normal ones.
    On,
}

/// A map's shaky/marginal settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShakyConfig {
    pub san_path_err: Option<SanPathErr>,
    pub marginal: Option<MarginalPath>,
    pub pathgroups: MarginalPathgroups,
}

/// The keyword values a [`ShakyConfig`] is made from (`None`: unset or
/// `no`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShakyKeywords {
    pub san_path_err_threshold: Option<u32>,
    pub san_path_err_forget_rate: Option<u32>,
    pub san_path_err_recovery_time: Option<u32>,
    pub marginal_path_err_sample_time: Option<u32>,
    pub marginal_path_err_rate_threshold: Option<u32>,
    pub marginal_path_err_recheck_gap_time: Option<u32>,
    pub marginal_path_double_failed_time: Option<u32>,
    pub delay_watch_checks: Option<u32>,
    pub delay_wait_checks: Option<u32>,
}

impl ShakyConfig {
    /// The settings as multipathd 0.9.x derives them:
    ///
    /// * marginal_path is on when all four of its keywords are set
    ///   (`sample_time` raised to [`MIN_SAMPLE_TIME`]); then san_path_err
    ///   is off.
    /// * san_path_err is on when its three keywords are set (> 0).
    /// * Otherwise, when `delay_watch_checks` and `delay_wait_checks` are
    ///   both set and no san_path_err keyword is: threshold 1,
    ///   forget_rate = delay_watch_checks, recovery_time =
    ///   delay_wait_checks × `max_polling_interval`.
    pub fn from_keywords(
        k: &ShakyKeywords,
        max_polling_interval: Duration,
        pathgroups: MarginalPathgroups,
    ) -> ShakyConfig {
        let secs = |s: u32| Duration::from_secs(u64::from(s));
        let marginal = match (
            k.marginal_path_double_failed_time,
            k.marginal_path_err_sample_time,
            k.marginal_path_err_rate_threshold,
            k.marginal_path_err_recheck_gap_time,
        ) {
            (Some(d), Some(s), Some(r), Some(g)) if d > 0 && s > 0 && g > 0 => Some(MarginalPath {
                double_failed_time: secs(d),
                sample_time: secs(s).max(MIN_SAMPLE_TIME),
                rate_threshold: r,
                recheck_gap_time: secs(g),
            }),
            _ => None,
        };
        let san = match (
            k.san_path_err_threshold,
            k.san_path_err_forget_rate,
            k.san_path_err_recovery_time,
        ) {
            _ if marginal.is_some() => None,
            (Some(t), Some(f), Some(r)) if t > 0 && f > 0 && r > 0 => Some(SanPathErr {
                threshold: t,
                forget_rate: f,
                recovery_time: secs(r),
            }),
            (None, None, None) => match (k.delay_watch_checks, k.delay_wait_checks) {
                (Some(watch), Some(wait)) if watch > 0 && wait > 0 => Some(SanPathErr {
                    threshold: 1,
                    forget_rate: watch,
                    recovery_time: max_polling_interval.saturating_mul(wait),
                }),
                _ => None,
            },
            _ => None,
        };
        ShakyConfig {
            san_path_err: san,
            marginal,
            pathgroups,
        }
    }

    /// Whether either detector is on.
    pub fn enabled(&self) -> bool {
        self.san_path_err.is_some() || self.marginal.is_some()
    }
}

/// What the last check (or IO) said about the path, as the detectors
/// need it (multipathd's "previous state").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Last {
    /// Nothing yet.
    Unknown,
    /// Passed and carried IO (or was allowed to).
    Good,
    /// Failed (check or IO).
    Bad,
    /// Passed but held out.
    Held,
}

/// Where a path stands with the detectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Nothing held against the path.
    Normal,
    /// san_path_err: held since `since` (restarted by a failed check)
    /// until `until`.
    Shaky {
        failures: u32,
        since: Time,
        until: Time,
    },
    /// marginal_path: failed twice within double_failed_time; sampled
    /// when it next passes a check.
    Suspect,
    /// marginal_path: IO errors being sampled until `until`.
    Sampling { until: Time },
    /// marginal_path: the last sample's error rate (per thousand) was
    /// above the threshold; sampled again at `recheck_at`.
    Marginal { rate: u32, recheck_at: Time },
}

impl Standing {
    /// Until when something is held against the path: the end of a shaky
    /// path's recovery time, of an IO-error sample, or a marginal path's
    /// next sample; `None` when nothing is, or when it waits for its next
    /// passing check (suspect).
    pub fn held_until(&self) -> Option<Time> {
        match *self {
            Standing::Shaky { until, .. } | Standing::Sampling { until } => Some(until),
            Standing::Marginal { recheck_at, .. } => Some(recheck_at),
            Standing::Normal | Standing::Suspect => None,
        }
    }

    /// A short word for `show paths`: `shaky`, `marginal` or `normal`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Standing::Normal => "normal",
            Standing::Shaky { .. } => "shaky",
            Standing::Suspect | Standing::Sampling { .. } | Standing::Marginal { .. } => "marginal",
        }
    }
}

impl fmt::Display for Standing {
    /// Why the path is held, with the times in the clock's milliseconds.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Standing::Normal => f.write_str("normal"),
            Standing::Shaky {
                failures, until, ..
            } => write!(
                f,
                "shaky: {failures} failures counted (san_path_err_threshold exceeded); \
                 held out until t={}s if its checks keep passing",
                until.0 / 1000
            ),
            Standing::Suspect => f.write_str(
                "marginal: failed twice within marginal_path_double_failed_time; \
                 IO errors are sampled when it passes a check",
            ),
            Standing::Sampling { until } => write!(
                f,
                "marginal: sampling IO errors until t={}s",
                until.0 / 1000
            ),
            Standing::Marginal { rate, recheck_at } => write!(
                f,
                "marginal: {rate}/1000 reads failed (above marginal_path_err_rate_threshold); \
                 sampled again at t={}s",
                recheck_at.0 / 1000
            ),
        }
    }
}

/// What the caller does with a check that passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Report the check as it is: the path may carry IO.
    Pass,
    /// The path may carry IO but is marginal (`marginal_pathgroups on`).
    PassMarginal,
    /// Keep the path failed; [`PathHealth::standing`] says why.
    Hold,
}

/// What changed, to be logged once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// san_path_err: held out until `until` (if its checks keep passing).
    HeldOut { failures: u32, until: Time },
    /// A failed check restarted a held path's recovery time.
    HoldRestarted { until: Time },
    /// marginal_path: the path failed twice within double_failed_time.
    Suspected,
    /// marginal_path: start reading from the path to count IO errors,
    /// until `until`; report with [`PathHealth::sampled`].
    StartSampling { until: Time },
    /// marginal_path: the sample's error rate was above the threshold.
    Marginal { rate: u32, recheck_at: Time },
    /// Nothing is held against the path any more.
    Released { why: Release },
}

/// Why a path was released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// It passed its checks for san_path_err_recovery_time.
    Recovered,
    /// Its sampled error rate was at or below the threshold.
    SampleClean { rate: u32 },
    /// The map had no other usable path.
    NoOtherPath,
    /// The detectors were turned off (reconfigure).
    Disabled,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Change::HeldOut { failures, until } => write!(
                f,
                "path is shaky ({failures} failures, above san_path_err_threshold): \
                 held out until t={}s",
                until.0 / 1000
            ),
            Change::HoldRestarted { until } => write!(
                f,
                "shaky path failed again: recovery time restarted, held out until t={}s",
                until.0 / 1000
            ),
            Change::Suspected => f.write_str(
                "path failed twice within marginal_path_double_failed_time: \
                 its IO errors will be sampled",
            ),
            Change::StartSampling { until } => {
                write!(f, "sampling IO errors until t={}s", until.0 / 1000)
            }
            Change::Marginal { rate, recheck_at } => write!(
                f,
                "path is marginal ({rate}/1000 reads failed): sampled again at t={}s",
                recheck_at.0 / 1000
            ),
            Change::Released { why } => match why {
                Release::Recovered => f.write_str(
                    "path is no longer shaky: it passed its checks for san_path_err_recovery_time",
                ),
                Release::SampleClean { rate } => write!(
                    f,
                    "path is no longer marginal: {rate}/1000 reads failed, within the threshold"
                ),
                Release::NoOtherPath => {
                    f.write_str("path released early: the map has no other usable path")
                }
                Release::Disabled => f.write_str("path released: shaky/marginal checks are off"),
            },
        }
    }
}

/// One path's shaky/marginal state machine (see the module docs).
#[derive(Debug, Clone)]
pub struct PathHealth {
    standing: Standing,
    last: Last,
    /// san_path_err: failures counted.
    failures: u32,
    /// san_path_err: good checks left before one failure is forgotten.
    forget_left: u32,
    /// marginal_path: failures in the current double_failed_time window
    /// and when that window started.
    pathfails: u32,
    window_start: Time,
}

impl Default for PathHealth {
    fn default() -> Self {
        PathHealth::new()
    }
}

impl PathHealth {
    /// A path with nothing held against it.
    pub fn new() -> PathHealth {
        PathHealth {
            standing: Standing::Normal,
            last: Last::Unknown,
            failures: 0,
            forget_left: 0,
            pathfails: 0,
            window_start: Time(0),
        }
    }

    /// Where the path stands.
    pub fn standing(&self) -> Standing {
        self.standing
    }

    /// Whether something is held against the path (it is shaky, suspect,
    /// being sampled or marginal).
    pub fn is_held(&self) -> bool {
        self.standing != Standing::Normal
    }

    /// san_path_err failures currently counted.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The path failed: a check failed, or IO failed it. Counts towards
    /// double_failed_time only on a change from good (repeated failed
    /// checks are one failure); restarts a shaky path's recovery time.
    pub fn failed(&mut self, cfg: &ShakyConfig, now: Time) -> Option<Change> {
        let was = self.last;
        self.last = Last::Bad;
        if !cfg.enabled() {
            return self.disable();
        }
        if let Standing::Shaky { failures, .. } = self.standing {
            let recovery = cfg.san_path_err.map_or(Duration::ZERO, |s| s.recovery_time);
            let until = now.plus(recovery);
            self.standing = Standing::Shaky {
                failures,
                since: now,
                until,
            };
            // Logged once per failure, not at every failed check.
            return (was != Last::Bad).then_some(Change::HoldRestarted { until });
        }
        let m = cfg.marginal?;
        if matches!(was, Last::Bad) || self.standing != Standing::Normal {
            return None;
        }
        if self.pathfails == 0 || now.elapsed_since(self.window_start) > m.double_failed_time {
            self.pathfails = 0;
            self.window_start = now;
        }
        self.pathfails += 1;
        if self.pathfails >= DOUBLE_FAILED {
            self.pathfails = 0;
            self.standing = Standing::Suspect;
            return Some(Change::Suspected);
        }
        None
    }

    /// A check passed. `others_usable`: how many other paths of the map
    /// carry IO now. Returns what to do with the path and what changed.
    pub fn passed(
        &mut self,
        cfg: &ShakyConfig,
        now: Time,
        others_usable: usize,
    ) -> (Verdict, Option<Change>) {
        let was = self.last;
        if !cfg.enabled() {
            self.last = Last::Good;
            return (Verdict::Pass, self.disable());
        }
        let (hold, change) = if cfg.marginal.is_some() {
            self.marginal_check(cfg, now, others_usable)
        } else {
            self.san_check(cfg, now, was, others_usable)
        };
        if !hold {
            self.last = Last::Good;
            return (Verdict::Pass, change);
        }
        match cfg.pathgroups {
            MarginalPathgroups::On => {
                self.last = Last::Good;
                (Verdict::PassMarginal, change)
            }
            MarginalPathgroups::Off => {
                self.last = Last::Held;
                (Verdict::Hold, change)
            }
        }
    }

    /// The IO-error sample started by [`Change::StartSampling`] ended:
    /// `errors` of `reads` failed.
    pub fn sampled(
        &mut self,
        cfg: &ShakyConfig,
        now: Time,
        errors: u64,
        reads: u64,
    ) -> Option<Change> {
        if !matches!(self.standing, Standing::Sampling { .. }) {
            return None;
        }
        let Some(m) = cfg.marginal else {
            return self.disable();
        };
        // No read at all counts as all failed.
        let rate = errors
            .saturating_mul(1000)
            .checked_div(reads)
            .map_or(1000, |r| u32::try_from(r).unwrap_or(1000));
        if rate <= m.rate_threshold {
            self.standing = Standing::Normal;
            Some(Change::Released {
                why: Release::SampleClean { rate },
            })
        } else {
            let recheck_at = now.plus(m.recheck_gap_time);
            self.standing = Standing::Marginal { rate, recheck_at };
            Some(Change::Marginal { rate, recheck_at })
        }
    }

    /// The configuration no longer asks for the detectors: forget all.
    fn disable(&mut self) -> Option<Change> {
        let held = self.is_held();
        let last = self.last;
        *self = PathHealth::new();
        self.last = last;
        held.then_some(Change::Released {
            why: Release::Disabled,
        })
    }

    /// multipathd's check_path_reinstate_state: (hold, change).
    fn san_check(
        &mut self,
        cfg: &ShakyConfig,
        now: Time,
        was: Last,
        others_usable: usize,
    ) -> (bool, Option<Change>) {
        let Some(s) = cfg.san_path_err else {
            return (false, self.disable());
        };
        if let Standing::Shaky { until, .. } = self.standing {
            if others_usable == 0 {
                return (false, Some(self.release(Release::NoOtherPath)));
            }
            if now >= until {
                return (false, Some(self.release(Release::Recovered)));
            }
            return (true, None);
        }
        match was {
            // A working path: forget one failure every forget_rate checks.
            Last::Good | Last::Held => {
                if self.failures > 0 {
                    if self.forget_left > 0 {
                        self.forget_left -= 1;
                    } else {
                        self.failures -= 1;
                        self.forget_left = s.forget_rate;
                    }
                }
                (false, None)
            }
            Last::Unknown => (false, None),
            // Back from a failure: count it.
            Last::Bad => {
                if self.failures == 0 {
                    self.forget_left = s.forget_rate;
                }
                self.failures += 1;
                if self.failures > s.threshold && others_usable > 0 {
                    let until = now.plus(s.recovery_time);
                    self.standing = Standing::Shaky {
                        failures: self.failures,
                        since: now,
                        until,
                    };
                    (
                        true,
                        Some(Change::HeldOut {
                            failures: self.failures,
                            until,
                        }),
                    )
                } else {
                    (false, None)
                }
            }
        }
    }

    /// multipathd's need_io_err_check, for a suspect or marginal path.
    fn marginal_check(
        &mut self,
        cfg: &ShakyConfig,
        now: Time,
        others_usable: usize,
    ) -> (bool, Option<Change>) {
        let Some(m) = cfg.marginal else {
            return (false, self.disable());
        };
        if self.standing == Standing::Normal {
            return (false, None);
        }
        if others_usable == 0 {
            return (false, Some(self.release(Release::NoOtherPath)));
        }
        match self.standing {
            Standing::Suspect => {
                let until = now.plus(m.sample_time);
                self.standing = Standing::Sampling { until };
                (true, Some(Change::StartSampling { until }))
            }
            Standing::Marginal { recheck_at, .. } if now >= recheck_at => {
                let until = now.plus(m.sample_time);
                self.standing = Standing::Sampling { until };
                (true, Some(Change::StartSampling { until }))
            }
            _ => (true, None),
        }
    }

    fn release(&mut self, why: Release) -> Change {
        self.standing = Standing::Normal;
        self.failures = 0;
        self.forget_left = 0;
        self.pathfails = 0;
        Change::Released { why }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn san(threshold: u32, forget_rate: u32, recovery: u64) -> ShakyConfig {
        ShakyConfig {
            san_path_err: Some(SanPathErr {
                threshold,
                forget_rate,
                recovery_time: Duration::from_secs(recovery),
            }),
            ..ShakyConfig::default()
        }
    }

    fn marginal(pathgroups: MarginalPathgroups) -> ShakyConfig {
        ShakyConfig {
            marginal: Some(MarginalPath {
                double_failed_time: Duration::from_secs(60),
                sample_time: MIN_SAMPLE_TIME,
                rate_threshold: 10,
                recheck_gap_time: Duration::from_secs(300),
            }),
            pathgroups,
            ..ShakyConfig::default()
        }
    }

    fn t(s: u64) -> Time {
        Time::from_secs(s)
    }

    /// One flap: fail at `s`, pass at `s + 1`.
    fn flap(h: &mut PathHealth, cfg: &ShakyConfig, s: u64) -> (Verdict, Option<Change>) {
        h.failed(cfg, t(s));
        h.passed(cfg, t(s + 1), 1)
    }

    #[test]
    fn disabled_passes_everything() {
        let cfg = ShakyConfig::default();
        let mut h = PathHealth::new();
        for s in 0..20 {
            assert_eq!(flap(&mut h, &cfg, s * 2), (Verdict::Pass, None));
        }
        assert!(!h.is_held());
    }

    #[test]
    fn san_path_err_holds_after_threshold_and_recovers() {
        let cfg = san(3, 5, 30);
        let mut h = PathHealth::new();
        h.passed(&cfg, t(0), 1);
        for i in 0..3 {
            assert_eq!(flap(&mut h, &cfg, 10 + i * 2), (Verdict::Pass, None));
        }
        assert_eq!(h.failures(), 3);
        let (v, c) = flap(&mut h, &cfg, 20);
        assert_eq!(v, Verdict::Hold);
        assert_eq!(
            c,
            Some(Change::HeldOut {
                failures: 4,
                until: t(51)
            })
        );
        assert_eq!(h.standing().as_str(), "shaky");
        // Still held while the recovery time runs.
        assert_eq!(h.passed(&cfg, t(40), 1), (Verdict::Hold, None));
        // A failure restarts it.
        assert_eq!(
            h.failed(&cfg, t(45)),
            Some(Change::HoldRestarted { until: t(75) })
        );
        assert_eq!(h.passed(&cfg, t(60), 1), (Verdict::Hold, None));
        assert_eq!(
            h.passed(&cfg, t(75), 1),
            (
                Verdict::Pass,
                Some(Change::Released {
                    why: Release::Recovered
                })
            )
        );
        assert_eq!(h.failures(), 0);
        assert!(!h.is_held());
    }

    #[test]
    fn san_path_err_forgets_one_failure_every_forget_rate_checks() {
        let cfg = san(2, 3, 30);
        let mut h = PathHealth::new();
        h.passed(&cfg, t(0), 1);
        flap(&mut h, &cfg, 1);
        flap(&mut h, &cfg, 3);
        assert_eq!(h.failures(), 2);
        // forget_rate good checks, then the next forgets one.
        for s in 0..3 {
            h.passed(&cfg, t(10 + s), 1);
            assert_eq!(h.failures(), 2);
        }
        h.passed(&cfg, t(13), 1);
        assert_eq!(h.failures(), 1);
        // Now a flap brings it to 2: not above the threshold.
        assert_eq!(flap(&mut h, &cfg, 20).0, Verdict::Pass);
        assert_eq!(flap(&mut h, &cfg, 22).0, Verdict::Hold);
    }

    #[test]
    fn repeated_failed_checks_are_one_failure() {
        let cfg = san(1, 10, 30);
        let mut h = PathHealth::new();
        h.passed(&cfg, t(0), 1);
        for s in 1..10 {
            h.failed(&cfg, t(s));
        }
        assert_eq!(h.passed(&cfg, t(10), 1).0, Verdict::Pass);
        assert_eq!(h.failures(), 1);
    }

    #[test]
    fn shaky_path_released_early_when_no_other_path_is_usable() {
        let cfg = san(1, 10, 30);
        let mut h = PathHealth::new();
        h.passed(&cfg, t(0), 1);
        flap(&mut h, &cfg, 1);
        assert_eq!(flap(&mut h, &cfg, 3).0, Verdict::Hold);
        assert_eq!(
            h.passed(&cfg, t(6), 0),
            (
                Verdict::Pass,
                Some(Change::Released {
                    why: Release::NoOtherPath
                })
            )
        );
        // And a last path is never held in the first place.
        let mut h = PathHealth::new();
        h.passed(&cfg, t(0), 0);
        h.failed(&cfg, t(1));
        h.passed(&cfg, t(2), 0);
        h.failed(&cfg, t(3));
        assert_eq!(h.passed(&cfg, t(4), 0).0, Verdict::Pass);
    }

    #[test]
    fn delay_checks_map_onto_san_path_err() {
        let max = Duration::from_secs(20);
        let k = ShakyKeywords {
            delay_watch_checks: Some(12),
            delay_wait_checks: Some(3),
            ..ShakyKeywords::default()
        };
        let cfg = ShakyConfig::from_keywords(&k, max, MarginalPathgroups::Off);
        assert_eq!(
            cfg.san_path_err,
            Some(SanPathErr {
                threshold: 1,
                forget_rate: 12,
                recovery_time: Duration::from_secs(60)
            })
        );
        // Only one of them: nothing.
        let k1 = ShakyKeywords {
            delay_watch_checks: Some(12),
            ..ShakyKeywords::default()
        };
        assert!(!ShakyConfig::from_keywords(&k1, max, MarginalPathgroups::Off).enabled());
        // A san_path_err keyword set: the delay ones are ignored, and an
        // incomplete san_path_err set is off.
        let k2 = ShakyKeywords {
            san_path_err_threshold: Some(5),
            ..k
        };
        assert!(!ShakyConfig::from_keywords(&k2, max, MarginalPathgroups::Off).enabled());
        let k3 = ShakyKeywords {
            san_path_err_threshold: Some(5),
            san_path_err_forget_rate: Some(7),
            san_path_err_recovery_time: Some(9),
            ..k
        };
        assert_eq!(
            ShakyConfig::from_keywords(&k3, max, MarginalPathgroups::Off).san_path_err,
            Some(SanPathErr {
                threshold: 5,
                forget_rate: 7,
                recovery_time: Duration::from_secs(9)
            })
        );
    }

    #[test]
    fn marginal_keywords_turn_san_path_err_off_and_sample_time_has_a_floor() {
        let k = ShakyKeywords {
            san_path_err_threshold: Some(5),
            san_path_err_forget_rate: Some(7),
            san_path_err_recovery_time: Some(9),
            marginal_path_double_failed_time: Some(60),
            marginal_path_err_sample_time: Some(30),
            marginal_path_err_rate_threshold: Some(0),
            marginal_path_err_recheck_gap_time: Some(600),
            ..ShakyKeywords::default()
        };
        let cfg = ShakyConfig::from_keywords(&k, Duration::from_secs(20), MarginalPathgroups::On);
        assert_eq!(cfg.san_path_err, None);
        let m = cfg.marginal.unwrap();
        assert_eq!(m.sample_time, MIN_SAMPLE_TIME);
        assert_eq!(m.rate_threshold, 0);
        assert_eq!(cfg.pathgroups, MarginalPathgroups::On);
    }

    #[test]
    fn marginal_path_is_sampled_after_a_double_failure_and_rechecked() {
        let cfg = marginal(MarginalPathgroups::Off);
        let mut h = PathHealth::new();
        h.passed(&cfg, t(0), 1);
        // Two failures far apart: no suspicion.
        assert_eq!(h.failed(&cfg, t(10)), None);
        assert_eq!(h.passed(&cfg, t(11), 1), (Verdict::Pass, None));
        assert_eq!(h.failed(&cfg, t(100)), None);
        assert_eq!(h.passed(&cfg, t(101), 1), (Verdict::Pass, None));
        // A second one within double_failed_time.
        assert_eq!(h.failed(&cfg, t(130)), Some(Change::Suspected));
        assert_eq!(h.standing().as_str(), "marginal");
        // Back up: held, and sampled.
        assert_eq!(
            h.passed(&cfg, t(131), 1),
            (Verdict::Hold, Some(Change::StartSampling { until: t(251) }))
        );
        assert_eq!(h.passed(&cfg, t(140), 1), (Verdict::Hold, None));
        // 50 of 1000 reads failed: above 10/1000.
        assert_eq!(
            h.sampled(&cfg, t(251), 50, 1000),
            Some(Change::Marginal {
                rate: 50,
                recheck_at: t(551)
            })
        );
        assert_eq!(h.passed(&cfg, t(400), 1), (Verdict::Hold, None));
        assert_eq!(
            h.passed(&cfg, t(551), 1),
            (Verdict::Hold, Some(Change::StartSampling { until: t(671) }))
        );
        assert_eq!(
            h.sampled(&cfg, t(671), 5, 1000),
            Some(Change::Released {
                why: Release::SampleClean { rate: 5 }
            })
        );
        assert_eq!(h.passed(&cfg, t(672), 1), (Verdict::Pass, None));
    }

    #[test]
    fn marginal_pathgroups_on_keeps_the_path_usable_but_marginal() {
        let cfg = marginal(MarginalPathgroups::On);
        let mut h = PathHealth::new();
        h.passed(&cfg, t(0), 1);
        h.failed(&cfg, t(1));
        h.passed(&cfg, t(2), 1);
        assert_eq!(h.failed(&cfg, t(3)), Some(Change::Suspected));
        assert_eq!(
            h.passed(&cfg, t(4), 1),
            (
                Verdict::PassMarginal,
                Some(Change::StartSampling { until: t(124) })
            )
        );
        assert_eq!(h.passed(&cfg, t(5), 1), (Verdict::PassMarginal, None));
        assert_eq!(h.standing().held_until(), Some(t(124)));
        // No reads at all counts as all failed.
        assert!(matches!(
            h.sampled(&cfg, t(124), 0, 0),
            Some(Change::Marginal { rate: 1000, .. })
        ));
        assert!(h.standing().held_until().is_some_and(|r| r > t(124)));
        assert_eq!(Standing::Normal.held_until(), None);
        assert_eq!(Standing::Suspect.held_until(), None);
    }

    #[test]
    fn turning_the_detectors_off_releases_a_held_path() {
        let cfg = san(1, 10, 30);
        let mut h = PathHealth::new();
        h.passed(&cfg, t(0), 1);
        flap(&mut h, &cfg, 1);
        assert_eq!(flap(&mut h, &cfg, 3).0, Verdict::Hold);
        assert_eq!(
            h.passed(&ShakyConfig::default(), t(5), 1),
            (
                Verdict::Pass,
                Some(Change::Released {
                    why: Release::Disabled
                })
            )
        );
    }

    #[test]
    fn a_flapping_path_is_held_most_of_the_time() {
        // A path whose check fails every other time, checked every
        // second, for 10 minutes: with san_path_err it is reinstated
        // a handful of times, not 300.
        let cfg = san(3, 5, 30);
        let mut h = PathHealth::new();
        let mut reinstated = 0;
        let mut carrying = false;
        for s in 0..600 {
            if s % 2 == 0 {
                h.failed(&cfg, t(s));
                carrying = false;
            } else {
                let (v, _) = h.passed(&cfg, t(s), 1);
                if v == Verdict::Pass && !carrying {
                    reinstated += 1;
                    carrying = true;
                }
            }
        }
        assert!(reinstated <= 4, "reinstated {reinstated} times");
    }
}
