//! Log lines about refused or dropped clients, at most once per peer and
//! kind per interval: a flood of connections costs a line, not a flood
//! of lines. The next line tells how many were not logged.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How often a peer's refusals of one kind are logged.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Entries kept before old ones are pruned.
const MAX_ENTRIES: usize = 4096;

/// Per (kind, peer): when the last line was logged, and events since.
type Seen = HashMap<(&'static str, String), (Instant, u64)>;

#[derive(Debug)]
pub(crate) struct RateLog {
    interval: Duration,
    seen: Mutex<Seen>,
}

impl Default for RateLog {
    fn default() -> Self {
        RateLog::new(LOG_INTERVAL)
    }
}

impl RateLog {
    pub fn new(interval: Duration) -> RateLog {
        RateLog {
            interval,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(suppressed)` if this event should be logged now, with the
    /// number of events of this kind from this peer not logged since the
    /// last line; `None` to stay quiet.
    pub fn allow(&self, kind: &'static str, peer: &str) -> Option<u64> {
        let now = Instant::now();
        let mut seen = self.seen.lock();
        if seen.len() >= MAX_ENTRIES {
            let iv = self.interval;
            seen.retain(|_, (t, _)| now.duration_since(*t) < iv);
        }
        match seen.get_mut(&(kind, peer.to_string())) {
            Some((t, n)) if now.duration_since(*t) < self.interval => {
                *n += 1;
                None
            }
            Some((t, n)) => {
                let s = *n;
                *t = now;
                *n = 0;
                Some(s)
            }
            None => {
                if seen.len() < MAX_ENTRIES {
                    seen.insert((kind, peer.to_string()), (now, 0));
                }
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_interval_per_peer() {
        let r = RateLog::new(Duration::from_millis(50));
        assert_eq!(r.allow("cap", "uid=1"), Some(0));
        assert_eq!(r.allow("cap", "uid=1"), None);
        assert_eq!(r.allow("cap", "uid=1"), None);
        assert_eq!(r.allow("cap", "uid=2"), Some(0));
        assert_eq!(r.allow("fd", "uid=1"), Some(0));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(r.allow("cap", "uid=1"), Some(2));
    }
}
