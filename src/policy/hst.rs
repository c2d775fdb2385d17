//! `historical-service-time`: the kernel's dm-ps-historical-service-time
//! selector, as a pure state machine (time is an argument).
//!
//! Per path the selector keeps a time-weighted exponential moving average
//! of its service time (the *history*, in nanoseconds with 10 fractional
//! bits) and, from the engine, the requests in flight on it. The next IO
//! goes to the path whose predicted completion, `(1 + in flight) ×
//! history`, is earliest, with these rules (the kernel's):
//!
//! * **Too similar to tell apart.** With a threshold multiplier `N`, two
//!   paths whose histories differ by less than a factor `N` are compared by
//!   requests in flight only (0 and 1 mean "always different").
//! * **Stale paths are probed.** A path is *stale* once it has completed
//!   nothing for `usable paths × history` after its last completion. An
//!   idle stale path is chosen (the stalest first), so a path that became
//!   fast again is noticed; among idle paths, the stalest wins.
//! * **A stale winner is limited** to equal use: if the path with the
//!   better prediction is stale, the two are compared by requests in
//!   flight instead.
//! * **Ties** go to the path chosen longest ago: the chosen path moves to
//!   the end of the list, and a path that becomes usable again joins it at
//!   the end.
//!
//! The history is updated on every completion ([`Hst::io_done`]): the
//! service time is measured from the request's start, or from the path's
//! previous completion if that is later (requests queued behind each other
//! count serially). The weight of the old history depends on how long the
//! request took: `base_weight^(k+1)` (10-bit fixed point) for a service
//! time in the k-th bucket of 2^24 ns (about 16.8 ms), and 0 from the 64th
//! bucket on (a request that took over a second replaces the history).
//!
//! Table arguments: `historical-service-time 0`, `historical-service-time
//! 1 <base_weight>` or `historical-service-time 2 <base_weight>
//! <threshold_multiplier>` ([`HstArgs`]). The per-path repeat count
//! multipath-tools appends is accepted by the kernel and not used in its
//! selection; umpath does the same (it has no per-path argument).

use std::fmt;
use std::time::Duration;

use super::selector::PathView;
use crate::units::PathId;

/// Fractional bits of the fixed-point numbers.
const FIXED_SHIFT: u32 = 10;
/// 1.0 in fixed point.
const FIXED_1: u64 = 1 << FIXED_SHIFT;
/// The largest service time (fixed point) the average takes in.
const FIXED_MAX: u64 = u64::MAX >> FIXED_SHIFT;
/// Above this many requests in flight the histories are compared without
/// their fractional bits, so the products cannot overflow.
const MAX_INFLIGHT: u64 = FIXED_1;
/// log2 of a weight bucket's width in nanoseconds (about 16.8 ms).
const BUCKET_SHIFT: u32 = 24;
/// Weight buckets; the last one has weight 0.
const WEIGHT_COUNT: usize = 64;

/// The arguments of `historical-service-time` as written in
/// `path_selector` (the kernel's selector arguments).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct HstArgs {
    /// Weight of the old history per bucket, 10-bit fixed point in
    /// `0..1024` (0 ignores history); `None`: not written, 972 (0.95).
    base_weight: Option<u16>,
    /// Histories differing by less than this factor count as equal; only
    /// written together with `base_weight`.
    threshold_multiplier: Option<u32>,
}

impl HstArgs {
    /// The default base weight: 972/1024, about 0.95.
    pub const DEFAULT_BASE_WEIGHT: u16 = 972;

    /// No arguments (`historical-service-time 0`).
    pub const DEFAULT: HstArgs = HstArgs {
        base_weight: None,
        threshold_multiplier: None,
    };

    /// Parses the words after the selector's name: the argument count,
    /// then that many arguments (`["0"]`, `["1", "900"]`, `["2", "900",
    /// "2"]`; an empty list is `0`). `None` if the count does not match,
    /// a number does not parse, or the base weight is 1024 or more (the
    /// kernel refuses the table then).
    pub fn parse(words: &[&str]) -> Option<Self> {
        let (count, args) = match words.split_first() {
            None => return Some(Self::DEFAULT),
            Some((count, args)) => (count.parse::<usize>().ok()?, args),
        };
        if count != args.len() || count > 2 {
            return None;
        }
        let mut out = Self::DEFAULT;
        if let Some(w) = args.first() {
            let w = w.parse::<u16>().ok()?;
            if u64::from(w) >= FIXED_1 {
                return None;
            }
            out.base_weight = Some(w);
        }
        if let Some(t) = args.get(1) {
            out.threshold_multiplier = Some(t.parse::<u32>().ok()?);
        }
        Some(out)
    }

    /// The base weight in effect (10-bit fixed point).
    pub fn base_weight(self) -> u16 {
        self.base_weight.unwrap_or(Self::DEFAULT_BASE_WEIGHT)
    }

    /// The threshold multiplier in effect (0 when not written).
    pub fn threshold_multiplier(self) -> u32 {
        self.threshold_multiplier.unwrap_or(0)
    }
}

/// The arguments as written: count first (`0`, `1 900`, `2 900 2`).
impl fmt::Display for HstArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.base_weight, self.threshold_multiplier) {
            (None, _) => f.write_str("0"),
            (Some(w), None) => write!(f, "1 {w}"),
            (Some(w), Some(t)) => write!(f, "2 {w} {t}"),
        }
    }
}

/// What the selector knows about one path of its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PathHistory {
    id: PathId,
    /// Usable when last looked at (the kernel's valid list).
    valid: bool,
    /// Service time average, nanoseconds in fixed point.
    hst: u64,
    /// When the path last completed a request (ns since the epoch).
    last_finish: u64,
    /// The path is stale from this time on (ns since the epoch).
    stale_after: u64,
}

impl PathHistory {
    fn new(id: PathId) -> Self {
        PathHistory {
            id,
            valid: false,
            hst: FIXED_1,
            last_finish: 0,
            stale_after: 0,
        }
    }
}

/// A path's history as `show` may report it (the kernel's status info).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HstStatus {
    /// The service time average.
    pub service_time: Duration,
    /// Since the engine's epoch: from then on the path is stale.
    pub stale_after: Duration,
}

/// One group's `historical-service-time` selector.
#[derive(Debug, Clone)]
pub struct Hst {
    threshold: u32,
    /// `weights[k]`: weight of the old history for a service time in
    /// bucket k (fixed point).
    weights: [u64; WEIGHT_COUNT],
    /// The group's paths in the kernel's list order: among the usable
    /// ones, the one chosen longest ago first.
    paths: Vec<PathHistory>,
}

/// Nanoseconds in a duration, saturating.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// `x^n` in fixed point, squaring and multiplying with rounding at each
/// step (as the kernel's load-average helper does).
fn fixed_power(mut x: u64, mut n: u32) -> u64 {
    let half = 1u64 << (FIXED_SHIFT - 1);
    let mut result = FIXED_1;
    while n > 0 {
        if n & 1 == 1 {
            result = (result * x + half) >> FIXED_SHIFT;
        }
        n >>= 1;
        if n > 0 {
            x = (x * x + half) >> FIXED_SHIFT;
        }
    }
    result
}

/// The next moving average: `last × w + next × (1 − w)`, fixed point.
fn fixed_ema(last: u64, next: u64, weight: u64) -> u64 {
    let sum = u128::from(last) * u128::from(weight)
        + u128::from(next) * u128::from(FIXED_1 - weight)
        + (1u128 << (FIXED_SHIFT - 1));
    u64::try_from(sum >> FIXED_SHIFT).unwrap_or(u64::MAX)
}

impl Hst {
    /// A selector with these table arguments and no history.
    pub fn new(args: HstArgs) -> Self {
        let base = u64::from(args.base_weight());
        let mut weights = [0u64; WEIGHT_COUNT];
        for (k, w) in weights.iter_mut().enumerate().take(WEIGHT_COUNT - 1) {
            // k < 63: the exponent fits in u32.
            *w = fixed_power(base, k as u32 + 1);
        }
        Hst {
            threshold: args.threshold_multiplier(),
            weights,
            paths: Vec::new(),
        }
    }

    /// Brings the path list in line with the group and its paths' states:
    /// new members join with no history, paths that became usable move to
    /// the end. Allocates only when the membership changes.
    fn sync<V: PathView>(&mut self, members: &[PathId], view: &V) {
        if self.paths.len() != members.len() || self.paths.iter().any(|p| !members.contains(&p.id))
        {
            self.paths.retain(|p| members.contains(&p.id));
            for &id in members {
                if !self.paths.iter().any(|p| p.id == id) {
                    self.paths.push(PathHistory::new(id));
                }
            }
        }
        let mut i = 0;
        for _ in 0..self.paths.len() {
            let usable = view.usable(self.paths[i].id);
            if usable && !self.paths[i].valid {
                let mut p = self.paths.remove(i);
                p.valid = true;
                self.paths.push(p);
            } else {
                self.paths[i].valid = usable;
                i += 1;
            }
        }
    }

    /// Compares two paths for the next IO at `now` (ns): negative if `a`
    /// is better, positive if `b` is, 0 if neither.
    fn compare(&self, a: &PathHistory, out_a: u64, b: &PathHistory, out_b: u64, now: u64) -> i128 {
        let (mut hst_a, mut hst_b) = (a.hst, b.hst);
        let outstanding = || i128::from(out_a) - i128::from(out_b);
        let threshold = u64::from(self.threshold);
        let different = if hst_a > hst_b {
            hst_a > threshold.saturating_mul(hst_b)
        } else {
            hst_b > threshold.saturating_mul(hst_a)
        };
        if !different {
            return outstanding();
        }
        let stale_a = a.stale_after < now;
        let stale_b = b.stale_after < now;
        if (out_a == 0 && stale_a) || (out_b == 0 && stale_b) || (out_a == 0 && out_b == 0) {
            // An idle stale path is probed; among idle paths the stalest
            // (earliest stale_after) wins.
            let ka = if out_b == 0 {
                i128::from(a.stale_after)
            } else {
                0
            };
            let kb = if out_a == 0 {
                i128::from(b.stale_after)
            } else {
                0
            };
            return ka - kb;
        }
        let b_better = if out_a == out_b {
            hst_a > hst_b
        } else {
            if out_a >= MAX_INFLIGHT || out_b >= MAX_INFLIGHT {
                hst_a >>= FIXED_SHIFT;
                hst_b >>= FIXED_SHIFT;
            }
            u128::from(1 + out_a) * u128::from(hst_a) > u128::from(1 + out_b) * u128::from(hst_b)
        };
        match (b_better, stale_a, stale_b) {
            (true, _, true) | (false, true, _) => outstanding(),
            (true, _, false) => 1,
            (false, false, _) => -1,
        }
    }

    /// Picks the path for the next IO among `members` at `view.now()`, or
    /// `None` if no member is usable. The chosen path moves to the end of
    /// the tie order.
    pub fn select<V: PathView>(&mut self, members: &[PathId], view: &V) -> Option<PathId> {
        self.sync(members, view);
        let now = nanos(view.now());
        let mut best: Option<(usize, u64)> = None;
        for (i, p) in self.paths.iter().enumerate() {
            if !p.valid {
                continue;
            }
            let out = u64::from(view.in_flight(p.id));
            match best {
                Some((b, out_b)) if self.compare(p, out, &self.paths[b], out_b, now) >= 0 => {}
                _ => best = Some((i, out)),
            }
        }
        let (i, _) = best?;
        let p = self.paths.remove(i);
        self.paths.push(p);
        Some(p.id)
    }

    /// A request that was started on `id` at `started` completed at `now`
    /// (both since the engine's epoch): updates the path's history. A path
    /// that is not in the group is ignored.
    pub fn io_done(&mut self, id: PathId, started: Duration, now: Duration) {
        let valid = self.paths.iter().filter(|p| p.valid).count() as u64;
        let weights = self.weights;
        let Some(p) = self.paths.iter_mut().find(|p| p.id == id) else {
            return;
        };
        let now = nanos(now);
        let start = nanos(started).max(p.last_finish);
        p.last_finish = now;
        let st = now.saturating_sub(start);
        let bucket = usize::try_from(st >> BUCKET_SHIFT)
            .unwrap_or(usize::MAX)
            .min(WEIGHT_COUNT - 1);
        let sample = st.saturating_mul(FIXED_1).min(FIXED_MAX);
        p.hst = fixed_ema(p.hst, sample, weights[bucket]);
        p.stale_after = p
            .last_finish
            .saturating_add(valid.saturating_mul(p.hst >> FIXED_SHIFT));
    }

    /// The history of a path of the group, if it has one.
    pub fn status(&self, id: PathId) -> Option<HstStatus> {
        self.paths.iter().find(|p| p.id == id).map(|p| HstStatus {
            service_time: Duration::from_nanos(p.hst >> FIXED_SHIFT),
            stale_after: Duration::from_nanos(p.stale_after),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::Prio;
    use std::collections::VecDeque;

    #[test]
    fn args_parse_as_the_kernel_accepts_them() {
        assert_eq!(HstArgs::parse(&[]), Some(HstArgs::DEFAULT));
        assert_eq!(HstArgs::parse(&["0"]), Some(HstArgs::DEFAULT));
        let one = HstArgs::parse(&["1", "900"]).unwrap();
        assert_eq!((one.base_weight(), one.threshold_multiplier()), (900, 0));
        assert_eq!(one.to_string(), "1 900");
        let two = HstArgs::parse(&["2", "0", "3"]).unwrap();
        assert_eq!((two.base_weight(), two.threshold_multiplier()), (0, 3));
        assert_eq!(two.to_string(), "2 0 3");
        assert_eq!(HstArgs::DEFAULT.to_string(), "0");
        assert_eq!(HstArgs::DEFAULT.base_weight(), 972);
        for bad in [
            &["1"][..],
            &["0", "5"],
            &["1", "1024"],
            &["1", "-1"],
            &["1", "x"],
            &["2", "5", "y"],
            &["3", "1", "2", "3"],
            &["one"],
        ] {
            assert_eq!(HstArgs::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn path_selector_spelling_round_trips() {
        use crate::policy::SelectorKind;
        for text in [
            "historical-service-time 0",
            "historical-service-time 1 900",
            "historical-service-time 2 972 4",
        ] {
            let kind = SelectorKind::parse(text).unwrap();
            assert_eq!(kind.to_string(), text);
        }
        assert_eq!(
            SelectorKind::parse("historical-service-time"),
            Some(SelectorKind::HistoricalServiceTime(HstArgs::DEFAULT))
        );
        assert_eq!(SelectorKind::parse("service-time 1 900"), None);
        assert_eq!(SelectorKind::parse("historical-service-time 1"), None);
    }

    #[test]
    fn weights_are_powers_of_the_base_and_the_last_is_zero() {
        let h = Hst::new(HstArgs::DEFAULT);
        assert_eq!(h.weights[0], 972);
        assert_eq!(h.weights[1], (972 * 972 + 512) >> 10);
        assert!(h.weights.windows(2).all(|w| w[0] >= w[1]));
        assert_eq!(h.weights[WEIGHT_COUNT - 1], 0);
        let none = Hst::new(HstArgs::parse(&["1", "0"]).unwrap());
        assert!(none.weights.iter().all(|&w| w == 0));
        assert_eq!(fixed_power(512, 0), FIXED_1);
        assert_eq!(fixed_power(512, 3), 128);
    }

    #[test]
    fn the_average_moves_toward_the_samples() {
        let mut h = Hst::new(HstArgs::DEFAULT);
        let v = View::new(1);
        h.select(&ids(1), &v);
        let ms = Duration::from_millis;
        h.io_done(PathId::new(0), ms(0), ms(1));
        let first = h.status(PathId::new(0)).unwrap().service_time;
        // 1 ms with weight 0.95: about 5% of 1 ms.
        assert!(first > Duration::from_micros(40) && first < Duration::from_micros(60));
        for k in 1..200 {
            h.io_done(PathId::new(0), ms(k), ms(k + 1));
        }
        let settled = h.status(PathId::new(0)).unwrap().service_time;
        assert!(
            settled > Duration::from_micros(990) && settled <= ms(1),
            "{settled:?}"
        );
        // One request over a second replaces the history.
        h.io_done(PathId::new(0), ms(1000), ms(3000));
        assert_eq!(h.status(PathId::new(0)).unwrap().service_time, ms(2000));
    }

    #[test]
    fn overlapping_requests_count_serially() {
        let mut h = Hst::new(HstArgs::parse(&["1", "0"]).unwrap());
        let v = View::new(1);
        h.select(&ids(1), &v);
        let ms = Duration::from_millis;
        h.io_done(PathId::new(0), ms(0), ms(10));
        // Started at 0 too, but queued behind the first: 2 ms of service.
        h.io_done(PathId::new(0), ms(0), ms(12));
        assert_eq!(h.status(PathId::new(0)).unwrap().service_time, ms(2));
        // A single usable path: stale one history after its last finish.
        assert_eq!(h.status(PathId::new(0)).unwrap().stale_after, ms(14));
    }

    /// Paths as a selector sees them, with a clock.
    struct View {
        usable: Vec<bool>,
        inflight: Vec<u32>,
        now: Duration,
    }

    impl View {
        fn new(n: usize) -> Self {
            View {
                usable: vec![true; n],
                inflight: vec![0; n],
                now: Duration::ZERO,
            }
        }
    }

    impl PathView for View {
        fn usable(&self, id: PathId) -> bool {
            self.usable[id.index()]
        }
        fn prio(&self, _: PathId) -> Prio {
            Prio(1)
        }
        fn in_flight(&self, id: PathId) -> u32 {
            self.inflight[id.index()]
        }
        fn in_flight_bytes(&self, id: PathId) -> u64 {
            u64::from(self.inflight[id.index()]) * 4096
        }
        fn now(&self) -> Duration {
            self.now
        }
    }

    fn ids(n: usize) -> Vec<PathId> {
        (0..n).map(PathId::new).collect()
    }

    /// A closed-loop load: `depth` requests always outstanding, each path
    /// serving its requests one after another in `latency[path]`. Runs
    /// `ios` requests and returns how many each path got; `change(i,
    /// latency)` may change latencies before request i.
    struct Sim {
        hst: Hst,
        view: View,
        latency: Vec<Duration>,
        /// Per path: (start, finish) of its queued requests, in order.
        queues: Vec<VecDeque<(Duration, Duration)>>,
    }

    impl Sim {
        fn new(args: HstArgs, latency: &[u64]) -> Self {
            let n = latency.len();
            Sim {
                hst: Hst::new(args),
                view: View::new(n),
                latency: latency
                    .iter()
                    .map(|&ms| Duration::from_millis(ms))
                    .collect(),
                queues: vec![VecDeque::new(); n],
            }
        }

        fn submit(&mut self) -> usize {
            let n = self.latency.len();
            let id = self.hst.select(&ids(n), &self.view).unwrap();
            let i = id.index();
            let begin = self.queues[i]
                .back()
                .map_or(self.view.now, |&(_, f)| f.max(self.view.now));
            self.queues[i].push_back((self.view.now, begin + self.latency[i]));
            self.view.inflight[i] += 1;
            i
        }

        /// Completes the earliest request; time moves to its finish.
        fn complete_one(&mut self) {
            let (i, _) = self
                .queues
                .iter()
                .enumerate()
                .filter_map(|(i, q)| q.front().map(|&(_, f)| (i, f)))
                .min_by_key(|&(_, f)| f)
                .unwrap();
            let (start, finish) = self.queues[i].pop_front().unwrap();
            self.view.now = finish;
            self.view.inflight[i] -= 1;
            self.hst.io_done(PathId::new(i), start, finish);
        }

        /// `ios` requests with `depth` outstanding; picks per path.
        fn run(&mut self, depth: usize, ios: usize) -> Vec<usize> {
            let mut picks = vec![0; self.latency.len()];
            while self.queues.iter().map(VecDeque::len).sum::<usize>() < depth {
                picks[self.submit()] += 1;
            }
            for _ in depth..ios {
                self.complete_one();
                picks[self.submit()] += 1;
            }
            picks
        }
    }

    #[test]
    fn the_fast_path_gets_most_io() {
        let mut sim = Sim::new(HstArgs::DEFAULT, &[1, 10]);
        let picks = sim.run(4, 2000);
        assert!(picks[0] > 1700, "{picks:?}");
        // The slow path is still probed now and then.
        assert!(picks[1] > 0, "{picks:?}");
    }

    #[test]
    fn a_path_that_becomes_slow_loses_io() {
        let mut sim = Sim::new(HstArgs::DEFAULT, &[1, 2]);
        let before = sim.run(4, 2000);
        assert!(before[0] > before[1], "{before:?}");
        sim.latency[0] = Duration::from_millis(20);
        let _transition = sim.run(4, 500);
        let after = sim.run(4, 2000);
        assert!(after[1] > 3 * after[0], "{before:?} then {after:?}");
    }

    #[test]
    fn equal_paths_share_evenly() {
        let mut sim = Sim::new(HstArgs::DEFAULT, &[2, 2, 2]);
        let picks = sim.run(6, 3000);
        for p in &picks {
            assert!((900..=1100).contains(p), "{picks:?}");
        }
    }

    #[test]
    fn ties_go_to_the_path_chosen_longest_ago() {
        let mut h = Hst::new(HstArgs::DEFAULT);
        let mut v = View::new(3);
        v.now = Duration::from_millis(5);
        // No history, nothing in flight: every pick is a tie.
        let picks: Vec<usize> = (0..6)
            .map(|_| h.select(&ids(3), &v).unwrap().index())
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
        // A path that comes back joins the end of the order.
        v.usable[0] = false;
        assert_eq!(h.select(&ids(3), &v).unwrap().index(), 1);
        v.usable[0] = true;
        let picks: Vec<usize> = (0..3)
            .map(|_| h.select(&ids(3), &v).unwrap().index())
            .collect();
        assert_eq!(picks, vec![2, 1, 0]);
    }

    #[test]
    fn similar_histories_compare_by_load_under_a_threshold() {
        // Path 0 is 1.5x slower than path 1: with threshold 2 that is
        // "the same", so the less loaded path 0 wins.
        let mut h = Hst::new(HstArgs::parse(&["2", "0", "2"]).unwrap());
        let mut v = View::new(2);
        h.select(&ids(2), &v);
        let ms = Duration::from_millis;
        h.io_done(PathId::new(0), ms(0), ms(3));
        h.io_done(PathId::new(1), ms(0), ms(2));
        v.now = ms(4);
        v.inflight = vec![1, 2];
        assert_eq!(h.select(&ids(2), &v), Some(PathId::new(0)));
        // Without the threshold the prediction decides: path 1 is faster.
        v.now = ms(2);
        let mut plain = Hst::new(HstArgs::parse(&["1", "0"]).unwrap());
        plain.select(&ids(2), &v);
        plain.io_done(PathId::new(0), ms(0), ms(3));
        plain.io_done(PathId::new(1), ms(0), ms(1));
        v.inflight = vec![1, 1];
        assert_eq!(plain.select(&ids(2), &v), Some(PathId::new(1)));
    }

    #[test]
    fn an_idle_stale_path_is_probed() {
        let mut h = Hst::new(HstArgs::parse(&["1", "0"]).unwrap());
        let mut v = View::new(2);
        h.select(&ids(2), &v);
        let ms = Duration::from_millis;
        h.io_done(PathId::new(0), ms(0), ms(1));
        h.io_done(PathId::new(1), ms(0), ms(100));
        // Both idle: the stalest (earliest stale_after) wins.
        v.now = ms(101);
        assert_eq!(h.select(&ids(2), &v), Some(PathId::new(0)));
        // Path 0 busy and fresh, path 1 idle but not stale yet (stale
        // after 100 + 2×100 ms): the prediction says path 0.
        h.io_done(PathId::new(0), ms(100), ms(101));
        v.inflight = vec![1, 0];
        v.now = ms(102);
        assert_eq!(h.select(&ids(2), &v), Some(PathId::new(0)));
        // Once path 1 is stale and idle, it is probed.
        v.now = ms(301);
        assert_eq!(h.select(&ids(2), &v), Some(PathId::new(1)));
    }

    #[test]
    fn unusable_and_removed_paths_are_not_chosen() {
        let mut h = Hst::new(HstArgs::DEFAULT);
        let mut v = View::new(3);
        v.usable = vec![false, false, false];
        assert_eq!(h.select(&ids(3), &v), None);
        v.usable[2] = true;
        assert_eq!(h.select(&ids(3), &v), Some(PathId::new(2)));
        let members = [PathId::new(0), PathId::new(1)];
        v.usable = vec![true, true, true];
        for _ in 0..4 {
            assert_ne!(h.select(&members, &v), Some(PathId::new(2)));
        }
        assert_eq!(h.status(PathId::new(2)), None);
        assert_eq!(h.select(&[], &v), None);
    }
}
