//! Value types shared by [`crate::model`], [`crate::policy`] and
//! [`crate::engine`]: a monotonic instant ([`Time`]), a path's id inside
//! its map ([`PathId`]) and a path or group priority ([`Prio`]).
//!
//! This module is a leaf: it depends on nothing else in the crate, so
//! policy and model can both use it without depending on each other in a
//! cycle (model depends on policy, never the reverse).

use std::fmt;
use std::time::Duration;

/// Monotonic time in milliseconds since an arbitrary epoch (the daemon's
/// start). Passed into every time-dependent decision so logic can be
/// tested without sleeping; only `engine::Clock` reads a real clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Time(pub u64);

/// Milliseconds in a duration, saturating.
pub fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Time {
    pub fn from_secs(s: u64) -> Self {
        Time(s.saturating_mul(1000))
    }
    pub fn plus_ms(self, ms: u64) -> Self {
        Time(self.0.saturating_add(ms))
    }
    pub fn plus_secs(self, s: u64) -> Self {
        self.plus_ms(s.saturating_mul(1000))
    }
    /// `self` plus a duration (millisecond resolution, saturating).
    pub fn plus(self, d: Duration) -> Self {
        self.plus_ms(duration_ms(d))
    }
    /// Milliseconds from `earlier` to `self` (0 if `earlier` is later).
    pub fn since(self, earlier: Time) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
    /// The time from `earlier` to `self` (zero if `earlier` is later).
    pub fn elapsed_since(self, earlier: Time) -> Duration {
        Duration::from_millis(self.since(earlier))
    }
}

/// A path's id inside its map: stable for the map's life (a removed path
/// leaves a tombstone, so ids are never reused or renumbered).
///
/// Ids are given out in order: the paths a map is built with get ids 0,
/// 1, ... in that order, and each path added later the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PathId(usize);

impl PathId {
    /// The id of the `index`-th path of a map (counting from 0, in the
    /// order the paths joined it).
    pub const fn new(index: usize) -> Self {
        PathId(index)
    }

    /// The position of the path in its map's path list.
    #[inline]
    pub const fn index(self) -> usize {
        self.0
    }
}

impl fmt::Display for PathId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A priority, of a path (its prioritizer's answer) or of a path group
/// (the average of its usable paths'). Higher is better. Path
/// priorities are small non-negative numbers; a group with no usable path
/// has priority 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Prio(pub i32);

impl Prio {
    /// A path's priority when no prioritizer says otherwise (`const`).
    pub const DEFAULT: Prio = Prio(1);

    /// The priority as a weight for `rr_weight priorities` and the
    /// service-time selector: at least 1.
    #[inline]
    pub fn weight(self) -> u32 {
        u32::try_from(self.0.max(1)).unwrap_or(1)
    }

    /// The average of some priorities (0 for none).
    pub fn average(prios: impl IntoIterator<Item = Prio>) -> Prio {
        let (sum, n) = prios
            .into_iter()
            .fold((0i64, 0i64), |(s, n), p| (s + i64::from(p.0), n + 1));
        if n == 0 {
            return Prio(0);
        }
        // The mean of i32 values is an i32.
        Prio(i32::try_from(sum / n).unwrap_or(0))
    }
}

impl fmt::Display for Prio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl serde::Serialize for Prio {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i32(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prio_average_and_weight() {
        assert_eq!(Prio::average([]), Prio(0));
        assert_eq!(Prio::average([Prio(50), Prio(10)]), Prio(30));
        assert_eq!(
            Prio::average([Prio(i32::MAX), Prio(i32::MAX)]),
            Prio(i32::MAX)
        );
        assert_eq!(Prio(0).weight(), 1);
        assert_eq!(Prio(-1).weight(), 1);
        assert_eq!(Prio(7).weight(), 7);
    }

    #[test]
    fn time_and_durations() {
        let t = Time(1000).plus(Duration::from_millis(1500));
        assert_eq!(t, Time(2500));
        assert_eq!(t.elapsed_since(Time(500)), Duration::from_secs(2));
        assert_eq!(Time(1).elapsed_since(Time(5)), Duration::ZERO);
        assert_eq!(PathId::new(3).index(), 3);
    }
}
