//! The multipath model: paths, path groups and maps, with their state
//! machines. Pure: no IO and no clock (time is a [`Time`] argument).

pub mod map;
pub mod path;

/// Monotonic time in milliseconds since an arbitrary epoch (the daemon's
/// start). Passed into every time-dependent decision so logic can be
/// tested without sleeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Time(pub u64);

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
    /// Milliseconds from `earlier` to `self` (0 if `earlier` is later).
    pub fn since(self, earlier: Time) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

pub use map::{
    GroupStatus, LoadView, Map, MapEvent, MapPolicy, NoLoad, PathGroup, Route, SwitchReason,
};
pub use path::{CheckState, DmState, Path, PathId, PathInfo};
