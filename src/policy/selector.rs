//! Path selectors: which path of the active group gets the next IO.
//!
//! A selector sees the group's members through [`PathView`] and keeps only
//! its own cursor; it allocates nothing per call, because it runs once per
//! IO under the map's lock.
//!
//! ## Round-robin and the repeat count
//!
//! dm-multipath's `round-robin 0` takes a *repeat count*: how many IOs a
//! path gets before the selector moves to the next one. multipath-tools
//! fills it from `rr_min_io` for bio-based maps and from `rr_min_io_rq` for
//! request-based ones, and current kernels ignore values above 1 for
//! request-based maps. umpath counts NBD requests and honours the count
//! the admin wrote; which keyword applies is decided by
//! [`crate::config`]'s `repeat_count` rule: an explicitly set `rr_min_io`
//! wins unless `rr_min_io_rq` is set with at least the same precedence.
//! With `rr_weight priorities` the count is multiplied by the path's
//! priority; with `uniform` it is not.

use std::time::Duration;

use super::hst::Hst;
use super::{RrWeight, SelectorKind};
use crate::units::{PathId, Prio};

/// What a selector may ask about the paths of a group.
pub trait PathView {
    /// May IO go down this path now?
    fn usable(&self, id: PathId) -> bool;
    /// The path's priority (from its prioritizer).
    fn prio(&self, id: PathId) -> Prio;
    /// Requests in flight on the path.
    fn in_flight(&self, id: PathId) -> u32;
    /// Bytes in flight on the path.
    fn in_flight_bytes(&self, id: PathId) -> u64;
    /// Now, since the engine's epoch (nanosecond resolution): the time
    /// `historical-service-time` compares staleness against.
    fn now(&self) -> Duration;
}

/// A path selector instance (one per path group, as in dm-multipath).
#[derive(Debug, Clone)]
pub enum Selector {
    RoundRobin(RoundRobin),
    /// Fewest requests in flight; ties go to the path after the last one
    /// chosen, so equal loads still rotate.
    QueueLength(Rotor),
    /// Fewest bytes in flight relative to the path's weight (dm's
    /// service-time with equal relative throughput).
    ServiceTime(Rotor),
    /// Earliest predicted completion from each path's service-time
    /// history (the kernel's historical-service-time, see
    /// [`super::hst`]).
    HistoricalServiceTime(Box<Hst>),
}

impl Selector {
    /// A selector of this kind. `repeat` is the round-robin repeat count.
    pub fn new(kind: SelectorKind, repeat: u32, weight: RrWeight) -> Self {
        match kind {
            SelectorKind::RoundRobin => Selector::RoundRobin(RoundRobin::new(repeat, weight)),
            SelectorKind::QueueLength => Selector::QueueLength(Rotor::default()),
            SelectorKind::ServiceTime => Selector::ServiceTime(Rotor::default()),
            SelectorKind::HistoricalServiceTime(args) => {
                Selector::HistoricalServiceTime(Box::new(Hst::new(args)))
            }
        }
    }

    /// Picks the path for the next IO among `members`, or `None` if no
    /// member is usable.
    #[inline]
    pub fn select<V: PathView>(&mut self, members: &[PathId], view: &V) -> Option<PathId> {
        match self {
            Selector::RoundRobin(rr) => rr.select(members, view),
            Selector::QueueLength(r) => {
                r.select_min(members, view, |v, id| u64::from(v.in_flight(id)))
            }
            Selector::ServiceTime(r) => r.select_min(members, view, |v, id| {
                // (bytes + 1) / weight, compared without division.
                (v.in_flight_bytes(id) + 1)
                    .saturating_mul(1_000_000 / u64::from(v.prio(id).weight()))
            }),
            Selector::HistoricalServiceTime(h) => h.select(members, view),
        }
    }

    /// A request started on `id` at `started` completed at `now` (both
    /// since the engine's epoch). Only `historical-service-time` learns
    /// from completions; the others ignore them.
    pub fn io_done(&mut self, id: PathId, started: Duration, now: Duration) {
        if let Selector::HistoricalServiceTime(h) = self {
            h.io_done(id, started, now);
        }
    }
}

/// Round-robin with a repeat count (`rr_min_io`) and `rr_weight`.
#[derive(Debug, Clone)]
pub struct RoundRobin {
    repeat: u32,
    weight: RrWeight,
    /// Index into the member list of the path currently being repeated.
    pos: usize,
    /// IOs the current path still gets before the selector moves on.
    remaining: u32,
}

impl RoundRobin {
    pub fn new(repeat: u32, weight: RrWeight) -> Self {
        RoundRobin {
            repeat: repeat.max(1),
            weight,
            pos: usize::MAX,
            remaining: 0,
        }
    }

    pub fn repeat(&self) -> u32 {
        self.repeat
    }

    fn quota<V: PathView>(&self, id: PathId, view: &V) -> u32 {
        match self.weight {
            RrWeight::Uniform => self.repeat,
            RrWeight::Priorities => self.repeat.saturating_mul(view.prio(id).weight()),
        }
    }

    pub fn select<V: PathView>(&mut self, members: &[PathId], view: &V) -> Option<PathId> {
        let n = members.len();
        if n == 0 {
            return None;
        }
        if self.remaining > 0 && self.pos < n {
            let id = members[self.pos];
            if view.usable(id) {
                self.remaining -= 1;
                return Some(id);
            }
        }
        // Move on to the next usable member, wrapping around.
        let start = if self.pos < n { self.pos + 1 } else { 0 };
        for step in 0..n {
            let i = (start + step) % n;
            let id = members[i];
            if view.usable(id) {
                self.pos = i;
                self.remaining = self.quota(id, view) - 1;
                return Some(id);
            }
        }
        self.remaining = 0;
        None
    }
}

/// The tie-breaking cursor of the load-based selectors.
#[derive(Debug, Clone, Default)]
pub struct Rotor {
    last: usize,
}

impl Rotor {
    fn select_min<V: PathView>(
        &mut self,
        members: &[PathId],
        view: &V,
        cost: impl Fn(&V, PathId) -> u64,
    ) -> Option<PathId> {
        let n = members.len();
        let mut best: Option<(usize, u64)> = None;
        for step in 0..n {
            let i = (self.last + 1 + step) % n;
            let id = members[i];
            if !view.usable(id) {
                continue;
            }
            let c = cost(view, id);
            if best.is_none_or(|(_, bc)| c < bc) {
                best = Some((i, c));
            }
        }
        let (i, _) = best?;
        self.last = i;
        Some(members[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct View {
        usable: Vec<bool>,
        prio: Vec<i32>,
        inflight: Vec<u32>,
    }

    impl View {
        fn all_up(n: usize) -> Self {
            View {
                usable: vec![true; n],
                prio: vec![1; n],
                inflight: vec![0; n],
            }
        }
    }

    impl PathView for View {
        fn usable(&self, id: PathId) -> bool {
            self.usable[id.index()]
        }
        fn prio(&self, id: PathId) -> Prio {
            Prio(self.prio[id.index()])
        }
        fn in_flight(&self, id: PathId) -> u32 {
            self.inflight[id.index()]
        }
        fn in_flight_bytes(&self, id: PathId) -> u64 {
            u64::from(self.inflight[id.index()]) * 4096
        }
        fn now(&self) -> Duration {
            Duration::ZERO
        }
    }

    fn ids(members: &[usize]) -> Vec<PathId> {
        members.iter().copied().map(PathId::new).collect()
    }

    fn select(sel: &mut Selector, members: &[usize], view: &View) -> Option<usize> {
        sel.select(&ids(members), view).map(PathId::index)
    }

    fn run(sel: &mut Selector, members: &[usize], view: &View, n: usize) -> Vec<usize> {
        (0..n)
            .map(|_| select(sel, members, view).expect("a usable path"))
            .collect()
    }

    #[test]
    fn round_robin_repeat_one_alternates() {
        let mut s = Selector::new(SelectorKind::RoundRobin, 1, RrWeight::Uniform);
        let v = View::all_up(2);
        assert_eq!(run(&mut s, &[0, 1], &v, 6), vec![0, 1, 0, 1, 0, 1]);
    }

    #[test]
    fn round_robin_gives_each_path_rr_min_io_consecutive_ios() {
        let mut s = Selector::new(SelectorKind::RoundRobin, 100, RrWeight::Uniform);
        let v = View::all_up(2);
        let picks = run(&mut s, &[0, 1], &v, 400);
        assert!(picks[..100].iter().all(|&p| p == 0));
        assert!(picks[100..200].iter().all(|&p| p == 1));
        assert!(picks[200..300].iter().all(|&p| p == 0));
        assert!(picks[300..].iter().all(|&p| p == 1));
    }

    #[test]
    fn uniform_weight_ignores_priorities() {
        let mut s = Selector::new(SelectorKind::RoundRobin, 2, RrWeight::Uniform);
        let mut v = View::all_up(2);
        v.prio = vec![3, 1];
        assert_eq!(run(&mut s, &[0, 1], &v, 8), vec![0, 0, 1, 1, 0, 0, 1, 1]);
    }

    #[test]
    fn priorities_weight_multiplies_the_repeat_count() {
        let mut s = Selector::new(SelectorKind::RoundRobin, 2, RrWeight::Priorities);
        let mut v = View::all_up(2);
        v.prio = vec![3, 1];
        assert_eq!(
            run(&mut s, &[0, 1], &v, 16),
            vec![0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1]
        );
    }

    #[test]
    fn a_failed_path_is_skipped_at_once_even_mid_run() {
        let mut s = Selector::new(SelectorKind::RoundRobin, 10, RrWeight::Uniform);
        let mut v = View::all_up(3);
        assert_eq!(run(&mut s, &[0, 1, 2], &v, 3), vec![0, 0, 0]);
        v.usable[0] = false;
        let picks = run(&mut s, &[0, 1, 2], &v, 11);
        assert!(picks[..10].iter().all(|&p| p == 1));
        assert_eq!(picks[10], 2);
    }

    #[test]
    fn no_usable_path_gives_none() {
        let mut s = Selector::new(SelectorKind::RoundRobin, 1, RrWeight::Uniform);
        let mut v = View::all_up(2);
        v.usable = vec![false, false];
        assert_eq!(select(&mut s, &[0, 1], &v), None);
        assert_eq!(select(&mut s, &[], &v), None);
        v.usable[1] = true;
        assert_eq!(select(&mut s, &[0, 1], &v), Some(1));
    }

    #[test]
    fn members_can_be_a_subset_in_any_order() {
        let mut s = Selector::new(SelectorKind::RoundRobin, 1, RrWeight::Uniform);
        let v = View::all_up(5);
        assert_eq!(run(&mut s, &[4, 2], &v, 4), vec![4, 2, 4, 2]);
    }

    #[test]
    fn queue_length_prefers_the_least_loaded_and_rotates_ties() {
        let mut s = Selector::new(SelectorKind::QueueLength, 1, RrWeight::Uniform);
        let mut v = View::all_up(3);
        v.inflight = vec![5, 1, 3];
        assert_eq!(select(&mut s, &[0, 1, 2], &v), Some(1));
        v.inflight = vec![0, 0, 0];
        let picks = run(&mut s, &[0, 1, 2], &v, 3);
        let mut sorted = picks.clone();
        sorted.sort();
        assert_eq!(sorted, vec![0, 1, 2]);
    }

    #[test]
    fn service_time_prefers_fewer_bytes_in_flight() {
        let mut s = Selector::new(SelectorKind::ServiceTime, 1, RrWeight::Uniform);
        let mut v = View::all_up(2);
        v.inflight = vec![4, 2];
        assert_eq!(select(&mut s, &[0, 1], &v), Some(1));
        v.usable[1] = false;
        assert_eq!(select(&mut s, &[0, 1], &v), Some(0));
    }
}
