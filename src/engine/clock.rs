//! The engine's clock: the one place time is read. Everything below takes
//! [`Time`] as an argument.
//!
//! A clock is either **real** (monotonic, from [`Instant`]) or **manual**
//! (a shared counter that only moves when someone calls
//! [`Clock::advance`] or [`Clock::set`]), so tests drive time instead of
//! sleeping. Clones share the same time source.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::units::{duration_ms, Time};

/// Monotonic milliseconds since the clock was made (real), or as set
/// (manual). Cheap to clone; clones read the same time.
#[derive(Debug, Clone)]
pub struct Clock {
    source: Source,
}

#[derive(Debug, Clone)]
enum Source {
    Real(Instant),
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// A real clock, starting at `Time(0)` now.
    pub fn new() -> Self {
        Clock {
            source: Source::Real(Instant::now()),
        }
    }

    /// A manual clock at `Time(0)`: time moves only with
    /// [`Clock::advance`] and [`Clock::set`].
    pub fn manual() -> Self {
        Clock {
            source: Source::Manual(Arc::new(AtomicU64::new(0))),
        }
    }

    /// True for a clock made by [`Clock::manual`].
    pub fn is_manual(&self) -> bool {
        matches!(self.source, Source::Manual(_))
    }

    pub fn now(&self) -> Time {
        match &self.source {
            Source::Real(start) => Time(duration_ms(start.elapsed())),
            Source::Manual(ms) => Time(ms.load(Ordering::SeqCst)),
        }
    }

    /// Moves a manual clock forward (no effect on a real clock).
    pub fn advance(&self, d: Duration) {
        if let Source::Manual(ms) = &self.source {
            let step = duration_ms(d);
            // fetch_update never fails with a closure that always returns Some.
            let _ = ms.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                Some(t.saturating_add(step))
            });
        }
    }

    /// Sets a manual clock to `t` (no effect on a real clock). Time may
    /// go backwards this way; the engine's logic treats that as no time
    /// having passed.
    pub fn set(&self, t: Time) {
        if let Source::Manual(ms) = &self.source {
            ms.store(t.0, Ordering::SeqCst);
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told_and_clones_share_it() {
        let c = Clock::manual();
        let c2 = c.clone();
        assert!(c.is_manual());
        assert_eq!(c.now(), Time(0));
        c.advance(Duration::from_millis(1500));
        assert_eq!(c2.now(), Time(1500));
        c2.set(Time(10));
        assert_eq!(c.now(), Time(10));
    }

    #[test]
    fn real_clock_ignores_advance() {
        let c = Clock::new();
        assert!(!c.is_manual());
        c.advance(Duration::from_secs(3600));
        assert!(c.now() < Time::from_secs(3600));
    }
}
