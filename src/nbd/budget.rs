//! The server-wide memory budget for request payloads and replies in
//! flight, shared fairly by connections, plus the accounting of recycled
//! buffers kept idle in the connections' pools.
//!
//! A connection takes bytes as a request is admitted (a read: its length;
//! a write: each chunk of payload as it arrives) and gives them back when
//! the reply is written. Rules, all under one short lock:
//!
//! * nothing is taken beyond the budget, except by a connection that holds
//!   nothing while nobody holds anything (one oversized request, alone);
//! * a connection holding nothing is admitted whenever the budget has room
//!   (every connection can progress with one request);
//! * below half of the budget anyone may take; above it, a connection may
//!   only grow up to its fair share (budget / connections holding or
//!   waiting), so the last half is shared out instead of taken first come.
//!
//! Clients that hold their share and never read their replies are the
//! writer's business (`conn`): under pressure (someone waits) a connection
//! above its fair share whose replies stay unread is closed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::Notify;

/// One connection's bytes in the budget.
#[derive(Debug, Default)]
pub(crate) struct Held(AtomicUsize);

impl Held {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
struct State {
    used: usize,
    /// Connections holding more than nothing.
    holders: usize,
    /// Connections waiting for bytes.
    waiters: usize,
    /// Highest `used` since the last trim.
    peak: usize,
    last_busy: Option<Instant>,
}

#[derive(Debug)]
pub(crate) struct Budget {
    limit: usize,
    pool_limit: usize,
    pooled: AtomicUsize,
    st: Mutex<State>,
    freed: Notify,
}

/// Counts a waiter while alive (a cancelled wait uncounts itself).
struct Waiting<'a>(&'a Budget);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.st.lock().waiters -= 1;
    }
}

impl Budget {
    /// `limit` bytes in flight; idle pooled buffers up to `limit / 16`.
    pub fn new(limit: usize) -> Budget {
        let limit = limit.max(1);
        Budget {
            limit,
            pool_limit: limit / 16,
            pooled: AtomicUsize::new(0),
            st: Mutex::new(State::default()),
            freed: Notify::new(),
        }
    }

    #[cfg(test)]
    pub fn used(&self) -> usize {
        self.st.lock().used
    }

    /// Takes `n` bytes for the connection holding `held`, if the rules allow.
    pub fn try_take(&self, held: &Held, n: usize) -> bool {
        if n == 0 {
            return true;
        }
        // `held` changes only under this lock (reader and writer race).
        let mut st = self.st.lock();
        let h = held.get();
        let ok = if st.used + n <= self.limit {
            let sharers = (st.holders + st.waiters + usize::from(h == 0)).max(1);
            h == 0 || st.used + n <= self.limit / 2 || h + n <= self.limit / sharers
        } else {
            // An oversized request, alone.
            h == 0 && st.used == 0
        };
        if ok {
            if h == 0 {
                st.holders += 1;
            }
            st.used += n;
            st.peak = st.peak.max(st.used);
            held.0.store(h + n, Ordering::Relaxed);
        }
        ok
    }

    /// Waits until `n` bytes can be taken.
    pub async fn take(&self, held: &Held, n: usize) {
        if self.try_take(held, n) {
            return;
        }
        self.st.lock().waiters += 1;
        let _waiting = Waiting(self);
        loop {
            let notified = self.freed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.try_take(held, n) {
                return;
            }
            notified.await;
        }
    }

    /// Gives `n` bytes back.
    pub fn give(&self, held: &Held, n: usize) {
        if n == 0 {
            return;
        }
        let waiters = {
            let mut st = self.st.lock();
            let h = held.get();
            let n = n.min(h);
            if n == 0 {
                return;
            }
            held.0.store(h - n, Ordering::Relaxed);
            if h == n {
                st.holders = st.holders.saturating_sub(1);
            }
            st.used = st.used.saturating_sub(n);
            st.last_busy = Some(Instant::now());
            st.waiters
        };
        if waiters > 0 {
            self.freed.notify_waiters();
        }
    }

    /// Someone waits for bytes.
    pub fn under_pressure(&self) -> bool {
        self.st.lock().waiters > 0
    }

    /// What each connection holding or wanting bytes may hold now.
    pub fn fair_share(&self) -> usize {
        let st = self.st.lock();
        self.limit / (st.holders + st.waiters).max(1)
    }

    /// Accounts a buffer of `bytes` going idle into a pool; false: over the
    /// pool limit, free it instead.
    pub fn pool_put(&self, bytes: usize) -> bool {
        let mut cur = self.pooled.load(Ordering::Relaxed);
        loop {
            if cur + bytes > self.pool_limit {
                return false;
            }
            match self.pooled.compare_exchange_weak(
                cur,
                cur + bytes,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(c) => cur = c,
            }
        }
    }

    /// A pooled buffer of `bytes` left its pool (reused or freed).
    pub fn pool_take(&self, bytes: usize) {
        self.pooled.fetch_sub(bytes, Ordering::Relaxed);
    }

    #[cfg(test)]
    pub fn pooled(&self) -> usize {
        self.pooled.load(Ordering::Relaxed)
    }

    /// After a burst of at least `min_peak` bytes, once nothing is in flight
    /// and the budget has been quiet for a second: true once (the caller
    /// hands freed heap memory back to the system).
    pub fn burst_over(&self, min_peak: usize) -> bool {
        let mut st = self.st.lock();
        let quiet = st
            .last_busy
            .is_some_and(|t| t.elapsed() >= std::time::Duration::from_secs(1));
        if st.used == 0 && st.peak >= min_peak && quiet {
            st.peak = 0;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fair_share_above_half() {
        let b = Budget::new(100);
        let (x, y) = (Held::default(), Held::default());
        assert!(b.try_take(&x, 40));
        assert!(b.try_take(&x, 10), "below half anyone takes");
        // Above half: x (50) may only grow to its share, 100 / 2 holders.
        assert!(b.try_take(&y, 10));
        assert!(!b.try_take(&x, 10), "x is at its fair share");
        assert!(b.try_take(&y, 30), "y is below its share");
        assert!(!b.try_take(&y, 20), "over the budget");
        // A newcomer holding nothing gets in while there is room.
        let z = Held::default();
        assert!(b.try_take(&z, 10));
        assert_eq!(b.used(), 100);
        assert!(!b.try_take(&Held::default(), 1));
        b.give(&x, 50);
        assert_eq!((b.used(), x.get()), (50, 0));
        assert!(b.try_take(&Held::default(), 5));
    }

    #[test]
    fn oversized_only_alone() {
        let b = Budget::new(100);
        let (x, y) = (Held::default(), Held::default());
        assert!(b.try_take(&x, 1000));
        assert!(!b.try_take(&y, 1));
        b.give(&x, 1000);
        assert!(b.try_take(&y, 1));
        assert!(!b.try_take(&x, 1000));
    }

    #[test]
    fn pool_accounting_is_bounded() {
        let b = Budget::new(1600);
        assert!(b.pool_put(60));
        assert!(b.pool_put(40));
        assert!(!b.pool_put(1));
        b.pool_take(40);
        assert_eq!(b.pooled(), 60);
    }

    #[tokio::test]
    async fn take_waits_for_give() {
        let b = std::sync::Arc::new(Budget::new(100));
        let x = Held::default();
        assert!(b.try_take(&x, 100));
        let b2 = b.clone();
        let w = tokio::spawn(async move {
            let y = Held::default();
            b2.take(&y, 10).await;
            y.get()
        });
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(b.under_pressure());
        b.give(&x, 50);
        assert_eq!(w.await.unwrap(), 10);
        assert!(!b.under_pressure());
    }
}
