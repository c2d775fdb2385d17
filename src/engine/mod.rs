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
mod inflight;

pub use clock::Clock;
use inflight::{Finish, Inflight, Ticket};

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread;

use crossbeam::channel::{self, Receiver, Sender};
use parking_lot::Mutex;
use tracing::{debug, error, info, warn};

use crate::export::{BlockSizes, Export, ExportCaps, IoError, Op, Request};
use crate::model::{
    CheckState, LoadView, Map, MapEvent, MapPolicy, PathId, Route, SwitchReason, Time,
};
use crate::policy::no_path_retry::Disposition;
use crate::transport::{ErrorClass, IoOp, PathDev, TransportCaps, TransportError};

/// IO worker threads per path.
pub const WORKERS_PER_PATH: usize = 4;

/// Reads up to this size whose data is cached complete on the submitting
/// thread (it must not be held up long: it is a connection's task).
const INLINE_READ_MAX: u32 = 128 * 1024;

/// Default io_timeout: the usual SCSI command timeout.
pub const DEFAULT_IO_TIMEOUT_MS: u64 = 30_000;

/// A request is retried on other paths at most this many times before the
/// client sees EIO (a safety net; each retry has failed a path first).
const MAX_ATTEMPTS: u32 = 64;

/// A path as the engine runs it.
pub struct PathRt {
    pub name: String,
    pub dev: Arc<PathDev>,
    tx: Sender<Job>,
    in_flight: AtomicU32,
    in_flight_bytes: AtomicU64,
    /// Requests this path completed successfully.
    ios: AtomicU64,
    /// Requests that failed on this path.
    errors: AtomicU64,
    /// What the IO threads are working on, for the io_timeout watchdog.
    inflight: Inflight,
}

impl PathRt {
    pub fn ios(&self) -> u64 {
        self.ios.load(Ordering::Relaxed)
    }
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

struct Job {
    req: Request,
    id: PathId,
    path: Arc<PathRt>,
    attempts: u32,
    ticket: Ticket,
}

struct State {
    map: Map,
    paths: Vec<Arc<PathRt>>,
    /// Requests held while no path is usable (no_path_retry queue / N).
    held: VecDeque<Request>,
}

struct PathsLoad<'a>(&'a [Arc<PathRt>]);

impl LoadView for PathsLoad<'_> {
    #[inline]
    fn in_flight(&self, id: PathId) -> u32 {
        self.0
            .get(id)
            .map_or(0, |p| p.in_flight.load(Ordering::Relaxed))
    }
    #[inline]
    fn in_flight_bytes(&self, id: PathId) -> u64 {
        self.0
            .get(id)
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
    pub size: u64,
}

struct Inner {
    info: MapInfo,
    /// The largest logical block size of the map's paths: the export's
    /// minimum block size.
    block_size: u32,
    clock: Clock,
    state: Mutex<State>,
    /// Milliseconds a request may stay on a path before the path fails
    /// (0: no limit). See [`inflight`] for what happens to the request.
    io_timeout_ms: AtomicU64,
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
    pub paths: Vec<PathCounters>,
    pub held: usize,
}

/// A path's counters for `show` commands.
#[derive(Debug, Clone)]
pub struct PathCounters {
    pub ios: u64,
    pub errors: u64,
    pub in_flight: u32,
    /// Requests past io_timeout whose original has not ended yet.
    pub stuck: usize,
    pub fault: Option<String>,
    pub transport: String,
}

impl MapEngine {
    /// Starts a map: `devs[i]` is the device of `map.paths()[i]`.
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
                info,
                block_size,
                clock,
                io_timeout_ms: AtomicU64::new(DEFAULT_IO_TIMEOUT_MS),
                state: Mutex::new(State {
                    map,
                    paths,
                    held: VecDeque::new(),
                }),
            }
        });
        MapEngine { inner }
    }

    pub fn info(&self) -> &MapInfo {
        &self.inner.info
    }

    pub fn now(&self) -> Time {
        self.inner.clock.now()
    }

    pub fn snapshot(&self) -> MapSnapshot {
        let st = self.inner.state.lock();
        MapSnapshot {
            info: self.inner.info.clone(),
            map: st.map.clone(),
            held: st.held.len(),
            paths: st
                .paths
                .iter()
                .map(|p| PathCounters {
                    ios: p.ios(),
                    errors: p.errors(),
                    in_flight: p.in_flight(),
                    stuck: p.inflight.stuck(),
                    fault: p.dev.faults.describe(),
                    transport: p.dev.describe(),
                })
                .collect(),
        }
    }

    /// A path check finished.
    pub fn check_result(&self, path: PathId, state: CheckState, reason: &str) {
        let now = self.now();
        self.inner
            .apply(|map| map.check_result(path, state, reason, now));
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
    pub fn add_path(&self, path: crate::model::Path, dev: Arc<PathDev>) -> PathId {
        let now = self.now();
        let weak = Arc::downgrade(&self.inner);
        let name = path.info.name.clone();
        let rt = spawn_path(weak, &self.inner.info.name, &name, dev);
        let mut id = 0;
        self.inner.apply_state(|st| {
            st.paths.push(rt);
            let (new_id, ev) = st.map.add_path(path, now);
            id = new_id;
            ev
        });
        id
    }

    /// The path's device went away (hotplug): it leaves its group; IO in
    /// flight on it finishes or fails over as usual.
    pub fn remove_path(&self, path: PathId) {
        let now = self.now();
        self.inner.apply(|map| map.remove_path(path, now));
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

    /// New settings from a reconfigure.
    pub fn reconfigure(&self, policy: MapPolicy) {
        let now = self.now();
        self.inner.apply(|map| map.reconfigure(policy, now));
    }

    /// Time passed: no_path_retry deadlines, deferred failback, and the
    /// io_timeout watchdog.
    pub fn tick(&self) {
        let now = self.now();
        self.inner.apply(|map| map.tick(now));
        self.inner.watchdog(now);
    }

    /// Sets io_timeout (`None`: no limit).
    pub fn set_io_timeout(&self, t: Option<std::time::Duration>) {
        let ms = t.map_or(0, |d| {
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
        });
        self.inner.io_timeout_ms.store(ms, Ordering::Relaxed);
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
        let (events, redispatch, fail) = {
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
            (names, redispatch, fail)
        };
        for e in &events {
            info!(map = %self.info.name, "{e}");
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

    /// The intersection of the capabilities of the map's paths that are
    /// not removed: the usable ones, or all of them if none is usable.
    fn path_caps(&self) -> TransportCaps {
        let st = self.state.lock();
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

    /// Routes a request to a path, holds it, or fails it.
    fn dispatch(&self, mut req: Request, attempts: u32) {
        // A connection keeps the capabilities it negotiated; a trim or a
        // fast zero the map's paths can no longer do is "not supported",
        // never a path failure.
        let refused = match req.op {
            Op::Trim => !self.path_caps().trim,
            Op::WriteZeroes { fast: true, .. } => !self.path_caps().fast_zero,
            _ => false,
        };
        if refused {
            req.complete(Err(IoError::NotSup));
            return;
        }
        let target = {
            let mut st = self.state.lock();
            let st = &mut *st;
            match st.map.route(&PathsLoad(&st.paths)) {
                Route::Path(id) => st.paths.get(id).map(|p| (id, p.clone())),
                Route::NoPath(Disposition::Queue) => {
                    st.held.push_back(req);
                    return;
                }
                Route::NoPath(Disposition::Fail) => None,
            }
        };
        let Some((id, path)) = target else {
            req.complete(Err(IoError::Io));
            return;
        };
        // Fast path: a read whose data is in the page cache completes here,
        // without a hand-off to the path's IO threads (preadv2 RWF_NOWAIT
        // never waits for the device).
        if req.op == Op::Read && req.len <= INLINE_READ_MAX {
            let len = req.len as usize;
            let hit = req
                .buf
                .get_mut(..len)
                .and_then(|buf| path.dev.read_cached(buf, req.offset));
            if hit.is_some() {
                path.ios.fetch_add(1, Ordering::Relaxed);
                req.complete(Ok(()));
                return;
            }
        }

        path.in_flight.fetch_add(1, Ordering::Relaxed);
        path.in_flight_bytes
            .fetch_add(u64::from(req.len), Ordering::Relaxed);
        let ticket = path.inflight.register(&req, self.clock.now());
        let tx = path.tx.clone();
        if let Err(e) = tx.send(Job {
            req,
            id,
            path,
            attempts,
            ticket,
        }) {
            // The path's workers are gone (map shutting down).
            let job = e.into_inner();
            job.path.inflight.finish(job.ticket);
            job.path.in_flight.fetch_sub(1, Ordering::Relaxed);
            job.path
                .in_flight_bytes
                .fetch_sub(u64::from(job.req.len), Ordering::Relaxed);
            job.req.complete(Err(IoError::Shutdown));
        }
    }

    /// A worker finished a job.
    fn finished(&self, job: Job, result: Result<(), TransportError>) {
        let Job {
            req,
            id,
            path,
            attempts,
            ticket,
        } = job;
        path.in_flight.fetch_sub(1, Ordering::Relaxed);
        path.in_flight_bytes
            .fetch_sub(u64::from(req.len), Ordering::Relaxed);
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
        let e = match result {
            Ok(()) => {
                path.ios.fetch_add(1, Ordering::Relaxed);
                req.complete(Ok(()));
                return;
            }
            Err(e) => e,
        };
        path.errors.fetch_add(1, Ordering::Relaxed);
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
                debug!(map = %self.info.name, path = %path.name, "error from the LUN, returned to the client: {e}");
                req.complete(Err(e.client_error()));
            }
        }
    }
}

impl Inner {
    /// Fails paths with a request outstanding longer than io_timeout and
    /// reissues their reads (see [`inflight`] for writes).
    fn watchdog(&self, now: Time) {
        let timeout = self.io_timeout_ms.load(Ordering::Relaxed);
        if timeout == 0 {
            return;
        }
        let paths: Vec<(PathId, Arc<PathRt>)> = {
            let st = self.state.lock();
            st.paths.iter().cloned().enumerate().collect()
        };
        for (id, path) in paths {
            let expired = path.inflight.expire(now, timeout);
            if expired.is_empty() {
                continue;
            }
            let reason = format!(
                "{} request(s) outstanding for more than {} ms (io_timeout)",
                expired.len(),
                timeout
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
    }
}

fn spawn_path(map: Weak<Inner>, map_name: &str, name: &str, dev: Arc<PathDev>) -> Arc<PathRt> {
    let (tx, rx) = channel::unbounded::<Job>();
    for i in 0..WORKERS_PER_PATH {
        let rx: Receiver<Job> = rx.clone();
        let map = map.clone();
        let dev = dev.clone();
        let res = thread::Builder::new()
            .name(format!("io-{name}-{i}"))
            .spawn(move || worker(map, dev, rx));
        if let Err(e) = res {
            error!(map = %map_name, path = %name, "cannot start IO thread: {e}");
        }
    }
    Arc::new(PathRt {
        name: name.to_string(),
        dev,
        tx,
        in_flight: AtomicU32::new(0),
        in_flight_bytes: AtomicU64::new(0),
        ios: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        inflight: Inflight::default(),
    })
}

fn worker(map: Weak<Inner>, dev: Arc<PathDev>, rx: Receiver<Job>) {
    while let Ok(mut job) = rx.recv() {
        let result = do_io(&dev, &mut job.req);
        match map.upgrade() {
            Some(inner) => inner.finished(job, result),
            None => job.req.complete(Err(IoError::Shutdown)),
        }
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

impl Export for MapEngine {
    fn name(&self) -> &str {
        &self.inner.info.name
    }

    fn description(&self) -> String {
        let i = &self.inner.info;
        format!("umpath map {} ({},{})", i.wwid, i.vendor, i.product)
    }

    fn size(&self) -> u64 {
        self.inner.info.size
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
}
