//! The engine: one [`MapEngine`] per multipath map, turning client
//! requests into IO on paths.
//!
//! ```text
//!  NBD reader ──submit──▶ MapEngine::route (map lock, no syscall)
//!                              │ Route::Path(p)          │ Route::NoPath(Queue)
//!                              ▼                         ▼
//!                    path p's IO workers            held queue (map lock)
//!                    (crossbeam channel,            re-dispatched on Resumed,
//!                     N threads per path)           failed on QueueExhausted
//!                              │ ok → Completion to the connection's writer
//!                              │ path error → fail path, route again
//!                              ▼ LUN error → Completion with the error
//! ```
//!
//! Each path has its own worker threads so that a hung path ties up only
//! its own workers. The map lock is held only to pick a path or change
//! state, never across a syscall or an await.

mod clock;
pub mod histogram;
mod inflight;
#[cfg(test)]
mod tests;
pub mod uring;

pub use clock::Clock;
use histogram::{Histogram, HistogramSnapshot};
use inflight::{Finish, Inflight, Ticket};

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver, Sender};
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::export::{BlockSizes, Export, ExportCaps, IoError, Op, Request};
use crate::model::{CheckState, LoadView, Map, MapEvent, MapPolicy, Path, Route, SwitchReason};
use crate::policy::no_path_retry::Disposition;
use crate::transport::{ErrorClass, IoOp, PathDev, TransportCaps, TransportError};
use crate::units::{duration_ms, PathId, Prio, Time};

/// IO worker threads per path, at most.
pub const WORKERS_PER_PATH: usize = 4;

/// An IO thread with nothing to do for this long exits (a new one starts
/// with the next request that needs it).
pub const WORKER_IDLE: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads up to this size whose data is cached, and buffered writes up to
/// this size the page cache takes at once, complete on the submitting
/// thread (it must not be held up long: it is a connection's task).
const INLINE_MAX: u32 = 128 * 1024;

/// Reads and writes completed in the page cache on the submitting thread
/// since the process started (see [`page_cache_counts`]).
static PAGE_CACHE_READS: AtomicU64 = AtomicU64::new(0);
static PAGE_CACHE_WRITES: AtomicU64 = AtomicU64::new(0);

/// How many reads and writes completed in the page cache, without going
/// to a ring or an IO thread, for `show status`.
pub fn page_cache_counts() -> (u64, u64) {
    (
        PAGE_CACHE_READS.load(Ordering::Relaxed),
        PAGE_CACHE_WRITES.load(Ordering::Relaxed),
    )
}

/// Default io_timeout: the usual SCSI command timeout.
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(30);

/// A request is retried on other paths at most this many times before the
/// client sees EIO (a safety net; each retry has failed a path first).
const MAX_ATTEMPTS: u32 = 64;

/// A path as the engine runs it.
pub struct PathRt {
    pub name: String,
    pub dev: Arc<PathDev>,
    /// The way to the path's IO threads; `None` once the path is removed
    /// or the map closed: the threads then exit when their queue is empty.
    tx: RwLock<Option<Sender<Job>>>,
    in_flight: AtomicU32,
    in_flight_bytes: AtomicU64,
    /// Requests this path completed successfully.
    ios: AtomicU64,
    /// Requests that failed on this path, by [`ErrorClass`] (path, LUN,
    /// unsupported).
    errors: [AtomicU64; 3],
    /// Bytes of successful reads and writes.
    read_bytes: AtomicU64,
    written_bytes: AtomicU64,
    /// How long requests took on this path (dispatch to completion).
    io_latency: Histogram,
    /// How long the path's checks took.
    check_latency: Histogram,
    /// Times the path was reinstated.
    reinstatements: AtomicU64,
    /// Times the path's priority changed.
    prio_changes: AtomicU64,
    /// Rate limit of the log lines a priority change causes.
    prio_log: Mutex<LogLimit>,
    /// What the IO threads are working on, for the io_timeout watchdog.
    inflight: Inflight,
    /// IO threads are started when requests need them (up to
    /// [`WORKERS_PER_PATH`]) and retire after [`WORKER_IDLE`] without work,
    /// so an idle path costs no thread.
    workers: Workers,
}

/// What starting an IO thread of a path needs.
struct Workers {
    running: Arc<AtomicUsize>,
    rx: Receiver<Job>,
    map: Weak<Inner>,
    map_name: String,
}

impl PathRt {
    pub fn ios(&self) -> u64 {
        self.ios.load(Ordering::Relaxed)
    }
    pub fn errors(&self) -> u64 {
        self.errors.iter().map(|e| e.load(Ordering::Relaxed)).sum()
    }
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Lets the IO threads exit once they have done the jobs queued so
    /// far (no new job can reach them).
    fn release_workers(&self) {
        self.tx.write().take();
    }
}

struct Job {
    req: Request,
    id: PathId,
    path: Arc<PathRt>,
    attempts: u32,
    ticket: Ticket,
    /// When the request was handed to the path (for its latency).
    started: Instant,
}

/// How many recent events a map keeps for `show stats` (and `umpath top`).
const RECENT_EVENTS: usize = 32;

/// A state change of a map, as logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    pub at: Time,
    /// The path it is about, if any.
    pub path: Option<PathId>,
    pub text: String,
}

struct State {
    map: Map,
    paths: Vec<Arc<PathRt>>,
    /// Requests held while no path is usable (no_path_retry queue / N).
    held: VecDeque<Request>,
    /// [`MapEngine::close`] was called: nothing is routed any more.
    closed: bool,
    /// The last [`RECENT_EVENTS`] events, oldest first.
    events: VecDeque<EventRecord>,
    /// Times IO moved to another path group.
    group_switches: u64,
    /// multipathd's map statistics (`show maps stats`).
    stats: MapStats,
    /// Since when the map queues with no usable path.
    queueing_since: Option<Time>,
}

/// multipathd's per-map statistics, as `show maps stats` prints them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MapStats {
    /// Loads of the map's table: the assembly, each reconfigure and each
    /// regroup (multipathd's `map_loads`).
    pub map_loads: u64,
    /// Times the map lost its last usable path (`failures`).
    pub map_failures: u64,
    /// Time spent queueing with no usable path (`total_q_time`), the
    /// current stretch included.
    pub total_q_time: Duration,
    /// Times no_path_retry N ran out and queued IO failed (`q_timeouts`).
    pub q_timeouts: u64,
}

impl State {
    /// Statistics at `now` (an ongoing queueing stretch counted so far).
    fn stats_at(&self, now: Time) -> MapStats {
        let mut s = self.stats;
        if let Some(since) = self.queueing_since {
            s.total_q_time += Duration::from_millis(now.0.saturating_sub(since.0));
        }
        s
    }

    fn end_queueing(&mut self, now: Time) {
        self.stats = self.stats_at(now);
        self.queueing_since = None;
    }

    /// Counts an event (reinstatements, group switches) and keeps it
    /// among the recent ones.
    fn note_event(&mut self, e: &MapEvent, text: &str, now: Time) {
        let path = match e {
            MapEvent::PathReinstated { path } => {
                if let Some(p) = self.paths.get(path.index()) {
                    p.reinstatements.fetch_add(1, Ordering::Relaxed);
                }
                Some(*path)
            }
            MapEvent::PathFailed { path, .. } | MapEvent::CheckerChanged { path, .. } => {
                Some(*path)
            }
            MapEvent::PrioChanged { path, .. } => {
                if let Some(p) = self.paths.get(path.index()) {
                    p.prio_changes.fetch_add(1, Ordering::Relaxed);
                }
                Some(*path)
            }
            MapEvent::MarginalChanged { path, .. } => Some(*path),
            MapEvent::Regrouped { .. } => {
                self.stats.map_loads += 1;
                None
            }
            MapEvent::QueueingStarted { .. } => {
                self.stats.map_failures += 1;
                self.queueing_since.get_or_insert(now);
                None
            }
            MapEvent::FailingStarted => {
                self.stats.map_failures += 1;
                self.end_queueing(now);
                None
            }
            MapEvent::QueueExhausted => {
                self.stats.q_timeouts += 1;
                self.end_queueing(now);
                None
            }
            MapEvent::Resumed => {
                self.end_queueing(now);
                None
            }
            MapEvent::GroupSwitched { from, to, .. } => {
                if from.is_some() && to.is_some() {
                    self.group_switches += 1;
                }
                None
            }
        };
        if self.events.len() >= RECENT_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(EventRecord {
            at: now,
            path,
            text: text.to_string(),
        });
    }

    /// The intersection of the capabilities of the paths that are not
    /// removed: the usable ones, or all of them if none is usable.
    fn path_caps(&self) -> TransportCaps {
        let st = self;
        let live = || {
            st.map
                .paths()
                .iter()
                .zip(&st.paths)
                .filter(|(p, _)| !p.removed)
        };
        let any_usable = live().any(|(p, _)| p.usable());
        live()
            .filter(|(p, _)| p.usable() || !any_usable)
            .map(|(_, rt)| rt.dev.caps())
            .reduce(TransportCaps::intersect)
            .unwrap_or(TransportCaps::BASIC)
    }

    /// A trim or a fast zero the paths can no longer do: a connection
    /// keeps the capabilities it negotiated, so such a request is "not
    /// supported", never a path failure.
    fn refuses(&self, op: Op) -> bool {
        match op {
            Op::Trim => !self.path_caps().trim,
            Op::WriteZeroes { fast: true, .. } => !self.path_caps().fast_zero,
            _ => false,
        }
    }
}

/// The paths' load and the time of the routing (since [`Inner::epoch`]).
struct PathsLoad<'a>(&'a [Arc<PathRt>], Duration);

impl LoadView for PathsLoad<'_> {
    #[inline]
    fn now(&self) -> Duration {
        self.1
    }
    #[inline]
    fn in_flight(&self, id: PathId) -> u32 {
        self.0
            .get(id.index())
            .map_or(0, |p| p.in_flight.load(Ordering::Relaxed))
    }
    #[inline]
    fn in_flight_bytes(&self, id: PathId) -> u64 {
        self.0
            .get(id.index())
            .map_or(0, |p| p.in_flight_bytes.load(Ordering::Relaxed))
    }
}

/// Static facts about a map the front-end advertises.
#[derive(Debug, Clone)]
pub struct MapInfo {
    /// Export name: the alias, else the WWID.
    pub name: String,
    pub wwid: String,
    pub vendor: String,
    pub product: String,
    /// The LUN's size in bytes. In [`MapEngine::info`] it is the size the
    /// map started with; [`MapEngine::size`] and snapshots give the size
    /// now (`resize map` changes it).
    pub size: u64,
}

struct Inner {
    info: MapInfo,
    /// The map's size now in bytes (`resize map`, `auto_resize`).
    size: AtomicU64,
    /// The largest logical block size of the map's paths: the export's
    /// minimum block size.
    block_size: u32,
    clock: Clock,
    /// The epoch of the nanosecond times a selector learning from
    /// completions (historical-service-time) is given.
    epoch: Instant,
    /// The map's selector learns from completions
    /// ([`Map::wants_completions`]): each one is reported under the lock.
    learns: AtomicBool,
    state: Mutex<State>,
    /// Milliseconds a request may stay on a path before the path fails
    /// (0: no limit). See [`inflight`] for what happens to the request.
    io_timeout_ms: AtomicU64,
    /// Turns true when the map is closed ([`MapEngine::close`]).
    closed_tx: watch::Sender<bool>,
}

/// One multipath map at work. Cheap to clone.
#[derive(Clone)]
pub struct MapEngine {
    inner: Arc<Inner>,
}

/// A snapshot of a map for `show` commands.
#[derive(Debug, Clone)]
pub struct MapSnapshot {
    pub info: MapInfo,
    pub map: Map,
    /// Counters of every path, by id (`paths[id.index()]`); prefer
    /// [`MapSnapshot::path`] and [`MapSnapshot::live_paths`].
    pub paths: Vec<PathCounters>,
    pub held: usize,
    /// Times IO moved to another path group.
    pub group_switches: u64,
    /// multipathd's map statistics.
    pub stats: MapStats,
    /// Recent events, oldest first.
    pub events: Vec<EventRecord>,
}

impl MapSnapshot {
    /// Path `id` with its counters.
    pub fn path(&self, id: PathId) -> Option<(&Path, &PathCounters)> {
        Some((self.map.path(id)?, self.paths.get(id.index())?))
    }

    /// The paths that are part of the map (tombstones of removed paths
    /// left out), with their ids and counters, in id order.
    pub fn live_paths(&self) -> impl Iterator<Item = (PathId, &Path, &PathCounters)> {
        self.map
            .iter_paths()
            .zip(&self.paths)
            .filter(|((_, p), _)| !p.removed)
            .map(|((id, p), c)| (id, p, c))
    }
}

/// A path's counters for `show` commands.
#[derive(Debug, Clone)]
pub struct PathCounters {
    pub ios: u64,
    pub errors: u64,
    /// Errors by class: path, LUN, unsupported (sum: `errors`).
    pub errors_by_class: [u64; 3],
    pub read_bytes: u64,
    pub written_bytes: u64,
    pub io_latency: HistogramSnapshot,
    pub check_latency: HistogramSnapshot,
    pub reinstatements: u64,
    /// Times the path's priority changed.
    pub prio_changes: u64,
    pub in_flight: u32,
    /// Requests past io_timeout whose original has not ended yet.
    pub stuck: usize,
    pub fault: Option<String>,
    pub transport: String,
}

impl MapEngine {
    /// Starts a map: `devs[i]` is the device of `map.paths()[i]` (the
    /// path with id `PathId::new(i)`). `clock` is the engine's only source
    /// of time ([`Clock::manual`] in tests).
    pub fn start(info: MapInfo, map: Map, devs: Vec<Arc<PathDev>>, clock: Clock) -> MapEngine {
        let block_size = devs
            .iter()
            .map(|d| d.transport.block_size())
            .max()
            .unwrap_or(1)
            .max(1);
        let inner = Arc::new_cyclic(|weak: &Weak<Inner>| {
            let paths = map
                .paths()
                .iter()
                .zip(devs)
                .map(|(p, dev)| spawn_path(weak.clone(), &info.name, &p.info.name, dev))
                .collect();
            Inner {
                size: AtomicU64::new(info.size),
                info,
                block_size,
                clock,
                epoch: Instant::now(),
                learns: AtomicBool::new(map.wants_completions()),
                io_timeout_ms: AtomicU64::new(duration_ms(DEFAULT_IO_TIMEOUT)),
                state: Mutex::new(State {
                    map,
                    paths,
                    held: VecDeque::new(),
                    closed: false,
                    events: VecDeque::new(),
                    group_switches: 0,
                    stats: MapStats {
                        map_loads: 1,
                        ..MapStats::default()
                    },
                    queueing_since: None,
                }),
                closed_tx: watch::Sender::new(false),
            }
        });
        MapEngine { inner }
    }

    pub fn info(&self) -> &MapInfo {
        &self.inner.info
    }

    /// The map's size in bytes now.
    pub fn size(&self) -> u64 {
        self.inner.size.load(Ordering::Acquire)
    }

    /// Changes the map's size (`resize map`); returns the size before.
    /// New NBD sessions are told the new size; IO past the end fails
    /// from now on (a write with `NoSpc`, anything else with `Inval`, as
    /// NBD asks), also for sessions that negotiated a larger size.
    pub fn set_size(&self, size: u64) -> u64 {
        let old = self.inner.size.swap(size, Ordering::AcqRel);
        if old != size {
            info!(map = %self.inner.info.name, "resized from {old} to {size} bytes");
        }
        old
    }

    pub fn now(&self) -> Time {
        self.inner.clock.now()
    }

    /// The engine's clock (shared with its clones).
    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    pub fn snapshot(&self) -> MapSnapshot {
        let st = self.inner.state.lock();
        MapSnapshot {
            info: MapInfo {
                size: self.size(),
                ..self.inner.info.clone()
            },
            map: st.map.clone(),
            held: st.held.len(),
            group_switches: st.group_switches,
            stats: st.stats_at(self.now()),
            events: st.events.iter().cloned().collect(),
            paths: st
                .paths
                .iter()
                .map(|p| PathCounters {
                    ios: p.ios(),
                    errors: p.errors(),
                    errors_by_class: [0, 1, 2].map(|i| p.errors[i].load(Ordering::Relaxed)),
                    read_bytes: p.read_bytes.load(Ordering::Relaxed),
                    written_bytes: p.written_bytes.load(Ordering::Relaxed),
                    io_latency: p.io_latency.snapshot(),
                    check_latency: p.check_latency.snapshot(),
                    reinstatements: p.reinstatements.load(Ordering::Relaxed),
                    prio_changes: p.prio_changes.load(Ordering::Relaxed),
                    in_flight: p.in_flight(),
                    stuck: p.inflight.stuck(),
                    fault: p.dev.faults.describe(),
                    transport: p.dev.describe(),
                })
                .collect(),
        }
    }

    /// A path check finished.
    ///
    /// A good check does not reinstate a path that still has requests
    /// stuck past io_timeout (their originals have not ended): the path
    /// stays failed, with a reason saying so, until they end; the next good
    /// check after that reinstates it.
    pub fn check_result(&self, path: PathId, state: CheckState, reason: &str) {
        let now = self.now();
        let map_name = &self.inner.info.name;
        // A path that passes its check but whose IO machinery cannot start
        // (a thread limit) stays down with that reason: never shown
        // healthy while its IO would fail. (Starting the thread is a
        // syscall: outside the map lock.)
        let no_thread = if state.is_usable() {
            let rt = self.inner.state.lock().paths.get(path.index()).cloned();
            // Under io_uring a path whose IO goes to the rings needs no
            // thread of its own: none is started for it here.
            rt.filter(|p| uring::rings().is_none() || p.dev.transport.raw_io(true).is_none())
                .and_then(|p| p.ensure_workers().err())
                .map(|e| format!("cannot start an IO thread: {e}"))
        } else {
            None
        };
        self.inner.apply_state(|st| {
            let rt = st.paths.get(path.index());
            let stuck = rt.map_or(0, |p| p.inflight.stuck());
            if let Some(why) = &no_thread {
                if let Some(p) = rt {
                    error!(map = %map_name, path = %p.name, "check passed, path kept down: {why}");
                }
                let mut ev = st.map.fail_path(path, why, now);
                ev.extend(st.map.check_held(path, state, why, now));
                ev
            } else if state.is_usable() && stuck > 0 {
                let why =
                    format!("{stuck} request(s) stuck past io_timeout; reinstated when they end");
                if let Some(p) = rt {
                    debug!(map = %map_name, path = %p.name, "check passed, not reinstated: {why}");
                }
                st.map.check_held(path, state, &why, now)
            } else {
                st.map.check_result(path, state, reason, now)
            }
        });
    }

    /// A path's prioritizer computed `prio` (on the checker's schedule):
    /// the model takes it ([`Map::set_path_prio`]: regroups under
    /// group_by_prio, may fail back), and the events are logged like a
    /// check's. An unchanged priority changes nothing.
    ///
    /// A priority that changes at every check (a flapping prioritizer)
    /// regroups and switches every time, as multipathd does, but its log
    /// lines are rate-limited per path: at info at most once per
    /// [`PRIO_LOG_EVERY`] (with how many were left out meanwhile), the
    /// others at debug. The events are all kept (`show stats`) and counted
    /// (`prio_changes`).
    pub fn set_path_prio(&self, path: PathId, prio: Prio) {
        let now = self.now();
        self.inner
            .apply_limited(Some(path), |st| st.map.set_path_prio(path, prio, now));
    }

    /// Marks the path marginal (`marginal_pathgroups on`) or clears the
    /// mark ([`Map::set_marginal`]: regroups, marginal groups last).
    pub fn set_marginal(&self, path: PathId, marginal: bool) {
        let now = self.now();
        self.inner.apply(|m| m.set_marginal(path, marginal, now));
    }

    /// Until when the shaky/marginal detectors hold something against the
    /// path, for `show paths` ([`Map::set_held_until`]).
    pub fn set_held_until(&self, path: PathId, until: Option<Time>) {
        self.inner.state.lock().map.set_held_until(path, until);
    }

    /// How long a check of the path took (for its check latency histogram).
    pub fn check_duration(&self, path: PathId, d: Duration) {
        let st = self.inner.state.lock();
        if let Some(p) = st.paths.get(path.index()) {
            p.check_latency.record(d);
        }
    }

    /// How many of the map's other paths can carry IO now (the shaky
    /// detectors never hold out a map's last usable path).
    pub fn usable_paths_besides(&self, path: PathId) -> usize {
        self.inner
            .state
            .lock()
            .map
            .iter_paths()
            .filter(|(id, p)| *id != path && !p.removed && p.usable())
            .count()
    }

    /// May IO go down this path now?
    pub fn path_is_active(&self, path: PathId) -> bool {
        self.inner
            .state
            .lock()
            .map
            .path(path)
            .is_some_and(|p| p.usable())
    }

    /// A path joins the running map (hotplug): its IO threads start and it
    /// is grouped at once. Returns its id.
    pub fn add_path(&self, path: Path, dev: Arc<PathDev>) -> PathId {
        let now = self.now();
        let weak = Arc::downgrade(&self.inner);
        let name = path.info.name.clone();
        let rt = spawn_path(weak, &self.inner.info.name, &name, dev);
        let mut id = PathId::new(0);
        self.inner.apply_state(|st| {
            if st.closed {
                rt.release_workers();
            }
            st.paths.push(rt);
            let (new_id, ev) = st.map.add_path(path, now);
            id = new_id;
            ev
        });
        id
    }

    /// The path's device went away (hotplug, reconfigure): it leaves its
    /// group; IO in flight on it finishes or fails over as usual, and its
    /// IO threads exit once the jobs queued to them are done. Its id stays
    /// taken (a tombstone in the map and the snapshot).
    pub fn remove_path(&self, path: PathId) {
        let now = self.now();
        self.inner.apply_state(|st| {
            let ev = st.map.remove_path(path, now);
            if let Some(p) = st.paths.get(path.index()) {
                p.release_workers();
            }
            ev
        });
    }

    /// `fail path NAME`: stays failed until reinstated by an admin.
    pub fn admin_fail(&self, path: PathId) {
        let now = self.now();
        self.inner.apply(|map| map.admin_fail(path, now));
    }

    /// `reinstate path NAME`.
    pub fn admin_reinstate(&self, path: PathId) {
        let now = self.now();
        self.inner.apply(|map| map.admin_reinstate(path, now));
    }

    /// `switch group N` (0-based).
    pub fn switch_group(&self, group: usize) -> bool {
        let mut changed = false;
        self.inner.apply(|map| {
            let ev = map.switch_group(group);
            changed = !ev.is_empty();
            ev
        });
        changed
    }

    /// Only no_path_retry changes (`disablequeueing`/`restorequeueing`):
    /// held IO fails when queueing stops; the groups stay.
    pub fn set_no_path_retry(&self, mode: crate::policy::NoPathRetry) {
        let now = self.now();
        self.inner.apply(|map| map.set_no_path_retry(mode, now));
    }

    /// New settings from a reconfigure.
    pub fn reconfigure(&self, policy: MapPolicy) {
        let now = self.now();
        let learns = &self.inner.learns;
        self.inner.apply_state(|st| {
            st.stats.map_loads += 1;
            let events = st.map.reconfigure(policy, now);
            learns.store(st.map.wants_completions(), Ordering::Relaxed);
            events
        });
    }

    /// Time passed: no_path_retry deadlines, deferred failback, and the
    /// io_timeout watchdog.
    pub fn tick(&self) {
        let now = self.now();
        self.inner.apply(|map| map.tick(now));
        self.inner.watchdog(now);
    }

    /// Sets io_timeout (`None`: no limit).
    pub fn set_io_timeout(&self, t: Option<Duration>) {
        let ms = t.map_or(0, |d| duration_ms(d).max(1));
        self.inner.io_timeout_ms.store(ms, Ordering::Relaxed);
    }

    /// The current io_timeout (`None`: no limit).
    pub fn io_timeout(&self) -> Option<Duration> {
        self.inner.io_timeout()
    }

    /// Stops the map: held requests fail with ESHUTDOWN and the path
    /// workers exit once their queues are drained.
    pub fn shutdown(&self) {
        let held: Vec<Request> = {
            let mut st = self.inner.state.lock();
            st.held.drain(..).collect()
        };
        for r in held {
            r.complete(Err(IoError::Shutdown));
        }
    }

    /// Closes the map (it was removed from the configuration): from now on
    /// new requests fail with [`IoError::Shutdown`], and so do held ones
    /// and any request that would need routing again (a retry after a
    /// path error, a reissue after io_timeout). IO already on a path
    /// completes normally; each path's IO threads exit once their queue is
    /// drained. [`Export::closed`] receivers see `true`. Idempotent.
    pub fn close(&self) {
        let held: Vec<Request> = {
            let mut st = self.inner.state.lock();
            if st.closed {
                return;
            }
            st.closed = true;
            for p in &st.paths {
                p.release_workers();
            }
            st.held.drain(..).collect()
        };
        info!(map = %self.inner.info.name, held = held.len(), "map closed");
        for r in held {
            r.complete(Err(IoError::Shutdown));
        }
        self.inner.closed_tx.send_replace(true);
    }

    /// True once [`MapEngine::close`] was called. Front-ends watch for it
    /// with [`Export::closed`].
    pub fn is_closed(&self) -> bool {
        *self.inner.closed_tx.borrow()
    }

    /// Requests in flight on any path, plus held ones.
    pub fn outstanding(&self) -> usize {
        let st = self.inner.state.lock();
        st.held.len()
            + st.paths
                .iter()
                .map(|p| p.in_flight() as usize)
                .sum::<usize>()
    }
}

impl Inner {
    /// Runs a state change under the map lock, then logs and acts on the
    /// events it returned (outside the lock).
    fn apply(&self, f: impl FnOnce(&mut Map) -> Vec<MapEvent>) {
        self.apply_state(|st| f(&mut st.map));
    }

    /// [`Inner::apply`] for changes that also touch the path runtimes.
    fn apply_state(&self, f: impl FnOnce(&mut State) -> Vec<MapEvent>) {
        self.apply_limited(None, f);
    }

    /// [`Inner::apply_state`]; with `limit`, the events' log lines count
    /// against that path's [`LogLimit`].
    fn apply_limited(&self, limit: Option<PathId>, f: impl FnOnce(&mut State) -> Vec<MapEvent>) {
        let (events, redispatch, fail, loud) = {
            let mut st = self.state.lock();
            let events = f(&mut st);
            let mut redispatch = Vec::new();
            let mut fail = Vec::new();
            for e in &events {
                match e {
                    MapEvent::Resumed => redispatch.extend(st.held.drain(..)),
                    MapEvent::QueueExhausted | MapEvent::FailingStarted => {
                        fail.extend(st.held.drain(..))
                    }
                    _ => {}
                }
            }
            let names: Vec<String> = events.iter().map(|e| describe_event(e, &st.map)).collect();
            let mut loud = Loud::Yes;
            if !events.is_empty() {
                let now = self.clock.now();
                for (e, text) in events.iter().zip(&names) {
                    st.note_event(e, text, now);
                }
                if let Some(rt) = limit.and_then(|p| st.paths.get(p.index())) {
                    loud = rt.prio_log.lock().admit(now);
                }
            }
            (names, redispatch, fail, loud)
        };
        for e in &events {
            match loud {
                Loud::Yes => info!(map = %self.info.name, "{e}"),
                Loud::AfterSuppressed(n) => {
                    info!(map = %self.info.name, "{e} ({n} similar line(s) left out in the last {} s)", PRIO_LOG_EVERY.as_secs())
                }
                Loud::No => debug!(map = %self.info.name, "{e}"),
            }
        }
        if !fail.is_empty() {
            warn!(map = %self.info.name, requests = fail.len(), "failing held IO with EIO: no usable path");
        }
        for r in fail {
            r.complete(Err(IoError::Io));
        }
        if !redispatch.is_empty() {
            info!(map = %self.info.name, requests = redispatch.len(), "re-dispatching held IO");
        }
        for r in redispatch {
            self.dispatch(r, 0);
        }
    }

    /// io_timeout, `None` for no limit.
    fn io_timeout(&self) -> Option<Duration> {
        match self.io_timeout_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// The intersection of the capabilities of the map's paths that are
    /// not removed: the usable ones, or all of them if none is usable.
    fn path_caps(&self) -> TransportCaps {
        self.state.lock().path_caps()
    }

    /// Routes a request to a path, holds it, or fails it.
    fn dispatch(&self, mut req: Request, attempts: u32) {
        if let Some(e) = past_end(&req, self.size.load(Ordering::Acquire)) {
            req.complete(Err(e));
            return;
        }
        let now = if self.learns.load(Ordering::Relaxed) {
            self.epoch.elapsed()
        } else {
            Duration::ZERO
        };
        let target = {
            let mut st = self.state.lock();
            let st = &mut *st;
            if st.closed {
                Err(IoError::Shutdown)
            } else if st.refuses(req.op) {
                Err(IoError::NotSup)
            } else {
                match st.map.route(&PathsLoad(&st.paths, now)) {
                    Route::Path(id) => st
                        .paths
                        .get(id.index())
                        .map(|p| (id, p.clone()))
                        .ok_or(IoError::Io),
                    Route::NoPath(Disposition::Queue) => {
                        st.held.push_back(req);
                        return;
                    }
                    Route::NoPath(Disposition::Fail) => Err(IoError::Io),
                }
            }
        };
        let (id, path) = match target {
            Ok(t) => t,
            Err(e) => {
                req.complete(Err(e));
                return;
            }
        };
        // Fast path: a read whose data is in the page cache, or a write the
        // page cache takes at once, completes here, without a hand-off to
        // the path's IO threads (preadv2/pwritev2 RWF_NOWAIT never wait
        // for the device). FUA writes need the device, so they never do.
        let started = Instant::now();
        if req.len <= INLINE_MAX {
            let len = req.len as usize;
            let done = match req.op {
                Op::Read => req
                    .buf
                    .get_mut(..len)
                    .and_then(|buf| path.dev.read_cached(buf, req.offset))
                    .map(|()| (&path.read_bytes, &PAGE_CACHE_READS)),
                Op::Write if !req.fua => req
                    .buf
                    .get(..len)
                    .and_then(|buf| path.dev.write_cached(buf, req.offset))
                    .map(|()| (&path.written_bytes, &PAGE_CACHE_WRITES)),
                _ => None,
            };
            if let Some((bytes, count)) = done {
                count.fetch_add(1, Ordering::Relaxed);
                path.ios.fetch_add(1, Ordering::Relaxed);
                bytes.fetch_add(u64::from(req.len), Ordering::Relaxed);
                path.io_latency.record(started.elapsed());
                req.complete(Ok(()));
                return;
            }
        }

        path.in_flight.fetch_add(1, Ordering::Relaxed);
        path.in_flight_bytes
            .fetch_add(u64::from(req.len), Ordering::Relaxed);
        let ticket = path.inflight.register(&req, self.clock.now());
        let job = Job {
            req,
            id,
            path,
            attempts,
            ticket,
            started,
        };
        if let Some(job) = self.try_ring(job) {
            if let Some(job) = self.try_iscsi(job) {
                self.to_workers(job);
            }
        }
    }

    /// Starts a read or write on an `iscsi` path's live connection
    /// without a thread (its end comes back on the connection's task);
    /// gives the job back when that cannot be done now (no live
    /// connection, a fault set on the path, another operation).
    fn try_iscsi(&self, job: Job) -> Option<Job> {
        let crate::transport::Transport::Iscsi(t) = &job.path.dev.transport else {
            return Some(job);
        };
        let kind = match job.req.op {
            Op::Read => crate::transport::IoKindForFault::Read,
            Op::Write => crate::transport::IoKindForFault::Write,
            _ => return Some(job),
        };
        if !job.path.dev.fault_free(kind) {
            return Some(job);
        }
        let t = t.clone();
        let (offset, len) = (job.req.offset, job.req.len);
        let c = IscsiJob {
            map: job.path.workers.map.clone(),
            t: t.clone(),
            job,
        };
        let started = if c.job.req.op == Op::Write {
            let data = c.job.req.buf.get(..len as usize).map(<[u8]>::to_vec);
            match data {
                Some(d) => {
                    let fua = c.job.req.fua;
                    t.start(offset, len, Some((d, fua)), c)
                }
                None => Err(c),
            }
        } else {
            t.start(offset, len, None, c)
        };
        match started {
            Ok(()) => {
                uring::count_async_request();
                None
            }
            Err(c) => Some(c.job),
        }
    }

    /// Hands a job to the io_uring engine if it runs and can take it;
    /// gives it back otherwise (see [`uring`] for what stays on threads).
    fn try_ring(&self, job: Job) -> Option<Job> {
        let Some(rings) = uring::rings() else {
            return Some(job);
        };
        let Some(raw) = job.path.dev.raw_io(job.req.op != Op::Read) else {
            return Some(job);
        };
        if !uring::eligible(&job, &raw) {
            return Some(job);
        }
        let map = job.path.workers.map.clone();
        match rings.submit(uring::RingOp::new(job, raw, map)) {
            Ok(()) => None,
            Err(op) => Some(op.job),
        }
    }

    /// Queues a job to its path's IO threads (starting one if needed).
    fn to_workers(&self, job: Job) {
        uring::count_thread_request();
        let path = job.path.clone();
        let id = job.id;
        let attempts = job.attempts;
        let unsent = match &*path.tx.read() {
            Some(tx) => tx.send(job).err().map(|e| e.into_inner()),
            None => Some(job),
        };
        if unsent.is_none() {
            if let Err(e) = path.ensure_workers() {
                self.no_workers(&path, id, e);
            }
        }
        if let Some(job) = unsent {
            // The path was removed (or the map closed) after it was chosen:
            // route again (a closed map fails the request).
            job.path.inflight.finish(job.ticket);
            job.path.in_flight.fetch_sub(1, Ordering::Relaxed);
            job.path
                .in_flight_bytes
                .fetch_sub(u64::from(job.req.len), Ordering::Relaxed);
            if attempts + 1 >= MAX_ATTEMPTS {
                job.req.complete(Err(IoError::Io));
            } else {
                self.dispatch(job.req, attempts + 1);
            }
        }
    }

    /// True if the path is failed (or gone) now.
    fn path_failed(&self, id: PathId) -> bool {
        !self
            .state
            .lock()
            .map
            .path(id)
            .is_some_and(|p| p.usable() && !p.removed)
    }

    /// A worker finished a job.
    fn finished(&self, job: Job, result: Result<(), TransportError>) {
        let Job {
            req,
            id,
            path,
            attempts,
            ticket,
            started,
        } = job;
        path.in_flight.fetch_sub(1, Ordering::Relaxed);
        path.in_flight_bytes
            .fetch_sub(u64::from(req.len), Ordering::Relaxed);
        if self.learns.load(Ordering::Relaxed) {
            let start = started.saturating_duration_since(self.epoch);
            let end = self.epoch.elapsed();
            self.state.lock().map.io_done(id, start, end);
        }
        match path.inflight.finish(ticket) {
            Finish::Normal => {}
            Finish::Reissued => {
                debug!(map = %self.info.name, path = %path.name, op = ?req.op, offset = req.offset, "late answer of a reissued request dropped");
                return;
            }
            Finish::HeldWrite => {
                info!(map = %self.info.name, path = %path.name, op = ?req.op, offset = req.offset, ok = result.is_ok(), "a timed-out write ended on its path");
                if let Err(e) = &result {
                    // The original is dead: reissuing is safe now.
                    warn!(map = %self.info.name, path = %path.name, "reissuing the timed-out write elsewhere: {e}");
                    self.dispatch(req, attempts + 1);
                    return;
                }
            }
        }
        path.io_latency.record(started.elapsed());
        let e = match result {
            Ok(()) => {
                path.ios.fetch_add(1, Ordering::Relaxed);
                let bytes = match req.op {
                    Op::Read => Some(&path.read_bytes),
                    Op::Write => Some(&path.written_bytes),
                    _ => None,
                };
                if let Some(b) = bytes {
                    b.fetch_add(u64::from(req.len), Ordering::Relaxed);
                }
                req.complete(Ok(()));
                return;
            }
            Err(e) => e,
        };
        let class = match e.class {
            ErrorClass::Path => 0,
            ErrorClass::Lun => 1,
            ErrorClass::Unsupported => 2,
        };
        path.errors[class].fetch_add(1, Ordering::Relaxed);
        match e.class {
            ErrorClass::Path => {
                let now = self.clock.now();
                let reason = e.to_string();
                let mut failed_it = false;
                self.apply(|map| {
                    let ev = map.fail_path(id, &reason, now);
                    failed_it = !ev.is_empty();
                    ev
                });
                // One warning per failure, not one per request in flight.
                if failed_it {
                    warn!(map = %self.info.name, path = %path.name, op = ?req.op, offset = req.offset, "IO error, failing path and retrying elsewhere: {e}");
                } else {
                    debug!(map = %self.info.name, path = %path.name, op = ?req.op, offset = req.offset, "IO error on a failed path, retrying elsewhere: {e}");
                }
                if attempts + 1 >= MAX_ATTEMPTS {
                    error!(map = %self.info.name, "request failed on {MAX_ATTEMPTS} attempts; returning EIO");
                    req.complete(Err(IoError::Io));
                } else {
                    self.dispatch(req, attempts + 1);
                }
            }
            ErrorClass::Lun | ErrorClass::Unsupported => {
                warn!(map = %self.info.name, path = %path.name, op = ?req.op, offset = req.offset, "error from the LUN, returned to the client: {e}");
                req.complete(Err(e.client_error()));
            }
        }
    }
}

impl Inner {
    /// Fails paths with a request outstanding longer than io_timeout and
    /// reissues their reads (see [`inflight`] for writes).
    fn watchdog(&self, now: Time) {
        let Some(timeout) = self.io_timeout() else {
            return;
        };
        let paths: Vec<(PathId, Arc<PathRt>)> = {
            let st = self.state.lock();
            st.paths
                .iter()
                .cloned()
                .enumerate()
                .map(|(i, p)| (PathId::new(i), p))
                .collect()
        };
        for (id, path) in paths {
            let expired = path.inflight.expire(now, timeout);
            if expired.is_empty() {
                continue;
            }
            let reason = format!(
                "{} request(s) outstanding for more than {} ms (io_timeout)",
                expired.len(),
                timeout.as_millis()
            );
            warn!(map = %self.info.name, path = %path.name, "{reason}: failing the path");
            self.apply(|map| map.fail_path(id, &reason, now));
            for e in expired {
                match e.reissue {
                    Some(req) => {
                        info!(map = %self.info.name, path = %path.name, op = ?e.op, offset = e.offset, "reissuing a timed-out request on another path");
                        self.dispatch(req, 1);
                    }
                    None => {
                        warn!(map = %self.info.name, path = %path.name, op = ?e.op, offset = e.offset, "a timed-out write is held until its original ends (never reissued while it may still land)");
                    }
                }
            }
        }
    }
}

fn describe_event(e: &MapEvent, map: &Map) -> String {
    let pname = |id: PathId| {
        map.path(id)
            .map_or("?", |p| p.info.name.as_str())
            .to_string()
    };
    match e {
        MapEvent::PathFailed { path, reason } => format!("path {} failed: {reason}", pname(*path)),
        MapEvent::PathReinstated { path } => format!("path {} reinstated", pname(*path)),
        MapEvent::CheckerChanged { path, from, to } => {
            format!("path {} checker: {from} -> {to}", pname(*path))
        }
        MapEvent::GroupSwitched { from, to, reason } => {
            let g = |x: &Option<usize>| x.map_or("none".to_string(), |g| (g + 1).to_string());
            let why = match reason {
                SwitchReason::Failover => "failover",
                SwitchReason::Failback => "failback",
                SwitchReason::Assembled => "assembled",
                SwitchReason::Admin => "admin",
            };
            format!("path group {} -> {} ({why})", g(from), g(to))
        }
        MapEvent::QueueingStarted { deadline: None } => {
            "no usable path: queueing IO (no_path_retry queue)".to_string()
        }
        MapEvent::QueueingStarted { deadline: Some(d) } => {
            format!(
                "no usable path: queueing IO until t={}ms (no_path_retry)",
                d.0
            )
        }
        MapEvent::QueueExhausted => "no_path_retry exhausted: failing IO".to_string(),
        MapEvent::FailingStarted => "no usable path: failing IO (no_path_retry fail)".to_string(),
        MapEvent::Resumed => "a path is usable again: resuming IO".to_string(),
        MapEvent::PrioChanged { path, from, to } => {
            format!("path {} priority: {from} -> {to}", pname(*path))
        }
        MapEvent::Regrouped { groups } => format!("paths regrouped into {groups} group(s)"),
        MapEvent::MarginalChanged {
            path,
            marginal: true,
        } => format!(
            "path {} is marginal: moved to a marginal path group",
            pname(*path)
        ),
        MapEvent::MarginalChanged {
            path,
            marginal: false,
        } => format!(
            "path {} is no longer marginal: back in a normal path group",
            pname(*path)
        ),
    }
}

/// How often a path's priority changes are logged at info at most
/// ([`MapEngine::set_path_prio`]).
pub const PRIO_LOG_EVERY: Duration = Duration::from_secs(30);

/// Whether a batch of log lines goes out at info.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loud {
    /// Yes.
    Yes,
    /// Yes, saying that this many batches were left out before it.
    AfterSuppressed(u64),
    /// No: at debug.
    No,
}

/// A per-path rate limit of log lines: the first batch, then at most one
/// per [`PRIO_LOG_EVERY`]; the batches in between are counted.
#[derive(Debug, Default)]
pub struct LogLimit {
    last: Option<Time>,
    suppressed: u64,
}

impl LogLimit {
    /// Whether a batch at `now` is logged at info.
    pub fn admit(&mut self, now: Time) -> Loud {
        let due = self
            .last
            .is_none_or(|t| now.elapsed_since(t) >= PRIO_LOG_EVERY);
        if !due {
            self.suppressed += 1;
            return Loud::No;
        }
        self.last = Some(now);
        match std::mem::take(&mut self.suppressed) {
            0 => Loud::Yes,
            n => Loud::AfterSuppressed(n),
        }
    }
}

fn spawn_path(map: Weak<Inner>, map_name: &str, name: &str, dev: Arc<PathDev>) -> Arc<PathRt> {
    let (tx, rx) = channel::unbounded::<Job>();
    Arc::new(PathRt {
        name: name.to_string(),
        dev,
        tx: RwLock::new(Some(tx)),
        in_flight: AtomicU32::new(0),
        in_flight_bytes: AtomicU64::new(0),
        ios: AtomicU64::new(0),
        errors: Default::default(),
        read_bytes: AtomicU64::new(0),
        written_bytes: AtomicU64::new(0),
        io_latency: Histogram::default(),
        check_latency: Histogram::default(),
        reinstatements: AtomicU64::new(0),
        prio_changes: AtomicU64::new(0),
        prio_log: Mutex::new(LogLimit::default()),
        inflight: Inflight::default(),
        workers: Workers {
            running: Arc::new(AtomicUsize::new(0)),
            rx,
            map,
            map_name: map_name.to_string(),
        },
    })
}

impl PathRt {
    /// Starts IO threads while queued requests outnumber them (up to
    /// [`WORKERS_PER_PATH`]). Called after a job was queued.
    fn ensure_workers(&self) -> std::io::Result<()> {
        let w = &self.workers;
        loop {
            let running = w.running.load(Ordering::SeqCst);
            let wanted = (self.in_flight.load(Ordering::SeqCst) as usize).min(WORKERS_PER_PATH);
            if running >= wanted.max(1) {
                return Ok(());
            }
            if w.running
                .compare_exchange(running, running + 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
            {
                continue;
            }
            let rx = w.rx.clone();
            let map = w.map.clone();
            let dev = self.dev.clone();
            let count = w.running.clone();
            let spawned = thread::Builder::new()
                .name(format!("io-{}", self.name))
                .spawn(move || worker(map, dev, rx, count));
            if let Err(e) = spawned {
                w.running.fetch_sub(1, Ordering::SeqCst);
                if running == 0 {
                    return Err(e);
                }
                // Fewer threads than wanted, but some: they will get to it.
                debug!(map = %w.map_name, path = %self.name, "cannot start another IO thread: {e}");
                return Ok(());
            }
        }
    }

    /// IO threads of this path running now.
    pub fn workers(&self) -> usize {
        self.workers.running.load(Ordering::Relaxed)
    }
}

impl Inner {
    /// A path has no IO thread and none can start: the path fails with
    /// that reason and its queued requests go elsewhere.
    fn no_workers(&self, path: &Arc<PathRt>, id: PathId, e: std::io::Error) {
        let reason = format!("cannot start an IO thread: {e}");
        error!(map = %self.info.name, path = %path.name, "{reason}; failing the path");
        while let Ok(job) = path.workers.rx.try_recv() {
            let err = TransportError::new(
                IoOp::Read,
                job.req.offset,
                u64::from(job.req.len),
                path.name.clone(),
                ErrorClass::Path,
                std::io::Error::other(reason.clone()),
            );
            self.finished(job, Err(err));
        }
        let now = self.clock.now();
        self.apply(|map| map.fail_path(id, &reason, now));
    }
}

fn worker(map: Weak<Inner>, dev: Arc<PathDev>, rx: Receiver<Job>, running: Arc<AtomicUsize>) {
    loop {
        match rx.recv_timeout(WORKER_IDLE) {
            Ok(mut job) => {
                // With nothing else queued, this thread writes the reply
                // of the job itself where the connection allows, rather
                // than waking the connection's writer task; with more
                // queued, the writer batches the replies.
                crate::export::allow_direct_replies(rx.is_empty());
                // A job queued behind others on a path that failed
                // meanwhile (its IO hung or errored) is not sent down
                // it: it goes elsewhere as after a path error, without
                // waiting for the path's own timeout a second time.
                let failed = map.upgrade().map(|inner| inner.path_failed(job.id));
                let result = match failed {
                    Some(true) => Err(not_sent(&dev, &job.req)),
                    _ => do_io(&dev, &mut job.req),
                };
                match map.upgrade() {
                    Some(inner) => inner.finished(job, result),
                    None => job.req.complete(Err(IoError::Shutdown)),
                }
            }
            Err(channel::RecvTimeoutError::Timeout) => {
                running.fetch_sub(1, Ordering::SeqCst);
                // A job queued while we retired (its sender saw us still
                // running and started no thread): take it after all.
                if rx.is_empty() {
                    return;
                }
                running.fetch_add(1, Ordering::SeqCst);
            }
            Err(channel::RecvTimeoutError::Disconnected) => {
                running.fetch_sub(1, Ordering::SeqCst);
                return;
            }
        }
    }
}

/// A job running on an `iscsi` path's connection: its end comes back
/// on the connection's task, and goes where an IO thread's would.
struct IscsiJob {
    job: Job,
    map: Weak<Inner>,
    t: Arc<crate::transport::iscsi::IscsiTransport>,
}

impl crate::transport::iscsi::conn::Completion for IscsiJob {
    fn done(
        self: Box<Self>,
        r: Result<crate::transport::iscsi::conn::Done, crate::transport::iscsi::conn::CmdError>,
    ) {
        use crate::transport::iscsi::Outcome;
        let IscsiJob { mut job, map, t } = *self;
        let op = io_op(job.req.op);
        let len = job.req.len as usize;
        let result = match t.outcome(op, job.req.offset, len as u64, r) {
            Outcome::Done(data) => {
                if op == IoOp::Read {
                    match (job.req.buf.get_mut(..len), data.get(..len)) {
                        (Some(dst), Some(src)) => {
                            dst.copy_from_slice(src);
                            Ok(())
                        }
                        _ => Err(short_buffer(op, &job.req)),
                    }
                } else {
                    Ok(())
                }
            }
            // The command did not run (UNIT ATTENTION, BUSY): the IO
            // threads run it again, with their retries.
            Outcome::Retry => {
                match map.upgrade() {
                    Some(inner) => inner.to_workers(job),
                    None => job.req.complete(Err(IoError::Shutdown)),
                }
                return;
            }
            Outcome::Failed(e) => Err(e),
        };
        match map.upgrade() {
            Some(inner) => inner.finished(job, result),
            None => job.req.complete(Err(IoError::Shutdown)),
        }
    }
}

/// The error of a job its path's IO thread did not send because the path
/// had failed since the job was queued (a path error: it is routed again).
fn not_sent(dev: &PathDev, req: &Request) -> TransportError {
    let op = io_op(req.op);
    TransportError::new(
        op,
        req.offset,
        u64::from(req.len),
        dev.transport.target(),
        ErrorClass::Path,
        std::io::Error::other("not sent: the path failed while the request was queued"),
    )
}

/// The transport operation a request is.
fn io_op(op: Op) -> IoOp {
    match op {
        Op::Read => IoOp::Read,
        Op::Write => IoOp::Write,
        Op::Flush => IoOp::Flush,
        Op::Trim => IoOp::Trim,
        Op::WriteZeroes { .. } => IoOp::WriteZeroes,
    }
}

/// A front-end handed over a buffer shorter than its request (a bug, not
/// a path failure): the client gets EINVAL.
fn short_buffer(op: IoOp, req: &Request) -> TransportError {
    TransportError::new(
        op,
        req.offset,
        u64::from(req.len),
        "request",
        ErrorClass::Lun,
        std::io::Error::from_raw_os_error(libc::EINVAL),
    )
}

fn do_io(dev: &PathDev, req: &mut Request) -> Result<(), TransportError> {
    let len = req.len as usize;
    match req.op {
        Op::Read => match req.buf.get_mut(..len) {
            Some(buf) => dev.read_at(buf, req.offset),
            None => Err(short_buffer(IoOp::Read, req)),
        },
        Op::Write => match req.buf.get(..len) {
            Some(buf) => dev.write_at(buf, req.offset, req.fua),
            None => Err(short_buffer(IoOp::Write, req)),
        },
        Op::Flush => dev.flush(),
        Op::Trim => {
            dev.trim(req.offset, u64::from(req.len))?;
            if req.fua {
                dev.flush()?;
            }
            Ok(())
        }
        Op::WriteZeroes { no_hole, fast } => {
            dev.write_zeroes(req.offset, u64::from(req.len), !no_hole, fast)?;
            if req.fua {
                dev.flush()?;
            }
            Ok(())
        }
    }
}

/// The error for a request that reaches past the map's end (`size`):
/// NBD's ENOSPC for writes, EINVAL for the rest. A session negotiated
/// before a shrink still sends such requests; its own bound check only
/// knows the size it was told.
fn past_end(req: &Request, size: u64) -> Option<IoError> {
    if req.op == Op::Flush {
        return None;
    }
    match req.offset.checked_add(u64::from(req.len)) {
        Some(end) if end <= size => None,
        _ if req.op.is_write() => Some(IoError::NoSpc),
        _ => Some(IoError::Inval),
    }
}

impl Export for MapEngine {
    fn name(&self) -> &str {
        &self.inner.info.name
    }

    fn description(&self) -> String {
        let i = &self.inner.info;
        format!("umpath map {} ({},{})", i.wwid, i.vendor, i.product)
    }

    fn size(&self) -> u64 {
        MapEngine::size(self)
    }

    /// What all of the map's usable paths can do (all of its paths when
    /// none is usable), asked of the transports now: it follows the path
    /// set and paths that reconnect with other capabilities.
    fn caps(&self) -> ExportCaps {
        self.inner.path_caps().export_caps()
    }

    fn block_sizes(&self) -> BlockSizes {
        let minimum = self.inner.block_size;
        BlockSizes {
            minimum,
            preferred: minimum.max(4096),
            maximum: 32 * 1024 * 1024,
        }
    }

    fn submit(&self, req: Request) {
        self.inner.dispatch(req, 0);
    }

    /// Turns `true` on [`MapEngine::close`]; fails (`changed()`) if the
    /// engine is dropped, which means the same.
    fn closed(&self) -> Option<watch::Receiver<bool>> {
        Some(self.inner.closed_tx.subscribe())
    }
}
