//! The io_uring IO engine: reads, writes and flushes on `file` and `scsi`
//! paths go to the kernel as io_uring submissions made on the submitting
//! thread (an NBD connection's task), and come back to a task on the
//! daemon's runtime (or a completion thread), without a hand-off to a
//! per-path IO thread.
//!
//! ```text
//!  dispatch (connection task) ──push SQE, io_uring_enter──▶ kernel
//!                                                             │ CQE
//!  Inner::finished ◀── reaper task (ring eventfd readable) ◀──┘
//!                      or, without a runtime: a completion thread per ring
//! ```
//!
//! * **Rings**: one per core (at most [`MAX_RINGS`]), made once per
//!   process. In the daemon ([`reap_on`]) each ring signals an eventfd the
//!   runtime's reactor waits on, and a task reaps it, so a completion and
//!   the reply it wakes run on one worker; elsewhere each ring has a
//!   completion thread. Either way the engine's threads are bounded by the
//!   cores, not by the paths. A request picks a ring round-robin.
//! * **A hung path holds no thread**: its requests sit in the kernel
//!   (the block layer for O_DIRECT, an io-wq kernel worker for buffered
//!   file IO) until they end; io_timeout and the write-hold rule work on
//!   them as on any request ([`super::inflight`]).
//! * **Short transfers** are continued where they stopped; a read that
//!   reaches the end of the file is an error, as
//!   [`crate::transport::file`] defines it.
//! * **Locks**: the submission queue's lock is held to push one entry,
//!   the completion queue's to copy the finished ones out; never across
//!   `io_uring_enter` or a completion's handling.
//! * **What stays on the IO threads** ([`super::WORKERS_PER_PATH`] per
//!   path): trim and write-zeroes (fallocate and ioctls), IO on paths of
//!   other transports (nbd, memory), IO on a path with a fault set (a
//!   fault must see every IO and may block it), O_DIRECT transfers that
//!   are not aligned (the transport's bounce buffer), and anything a
//!   full ring cannot take.
//!
//! The engine is chosen once per process ([`io_engine`]): io_uring unless
//! `UMPATH_IO_ENGINE=threads` asks otherwise or the kernel refuses it
//! (too old, `kernel.io_uring_disabled`, a seccomp filter); `show status`
//! says which and why.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::thread;

use io_uring::{opcode, squeue, types, IoUring};
use parking_lot::Mutex;
use tracing::{error, warn};

use super::{Inner, Job};
use crate::export::{IoError, Op};
use crate::transport::{IoOp, RawIo};

/// Rings (and completion threads) at most, whatever the core count.
pub const MAX_RINGS: usize = 4;

/// Submission queue entries per ring; the completion queue has twice
/// as many, and a ring takes at most that many requests at once.
pub const RING_ENTRIES: u32 = 512;

/// io-wq workers per ring for IO on regular files and block devices that
/// the kernel cannot do without blocking (buffered file IO).
pub const IOWQ_BOUNDED_WORKERS: u32 = 64;

/// The environment variable that picks the engine: `auto` (the default:
/// io_uring if the kernel allows it), `uring` (io_uring or fail at start)
/// or `threads`.
pub const ENGINE_ENV: &str = "UMPATH_IO_ENGINE";

/// Which IO engine this process runs, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineKind {
    /// io_uring, with this many rings; completions handled on the
    /// daemon's runtime (`on_runtime`) or on one thread per ring.
    Uring {
        rings: usize,
        entries: u32,
        on_runtime: bool,
    },
    /// Per-path IO threads only, for the reason given.
    Threads { why: String },
}

impl std::fmt::Display for EngineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EngineKind::Uring {
                rings,
                entries,
                on_runtime,
            } => write!(
                f,
                "io_uring ({rings} ring(s) of {entries} entries, completions {})",
                if *on_runtime {
                    "on the runtime"
                } else {
                    "on a thread per ring"
                }
            ),
            EngineKind::Threads { why } => write!(f, "threads ({why})"),
        }
    }
}

/// What the environment asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineWish {
    Auto,
    Uring,
    Threads,
}

impl EngineWish {
    /// Parses `UMPATH_IO_ENGINE`'s value.
    pub fn parse(s: &str) -> Result<EngineWish, String> {
        match s.trim() {
            "" | "auto" => Ok(EngineWish::Auto),
            "uring" | "io_uring" => Ok(EngineWish::Uring),
            "threads" => Ok(EngineWish::Threads),
            other => Err(format!(
                "{ENGINE_ENV}={other:?}: expected auto, uring or threads"
            )),
        }
    }

    /// From the environment (unset: auto).
    pub fn from_env() -> Result<EngineWish, String> {
        match std::env::var(ENGINE_ENV) {
            Ok(v) => EngineWish::parse(&v),
            Err(_) => Ok(EngineWish::Auto),
        }
    }
}

/// Requests the rings took, and requests that went to IO threads (on
/// either engine), since the process started.
static RING_REQUESTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static THREAD_REQUESTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many requests (continuations of short transfers not counted) went
/// to the rings and to IO threads since the process started, for `show
/// status`.
pub fn request_counts() -> (u64, u64) {
    (
        RING_REQUESTS.load(Ordering::Relaxed),
        THREAD_REQUESTS.load(Ordering::Relaxed),
    )
}

/// The `io_uring_enter` calls that submitted requests since the process
/// started (fewer than the requests when a [`Plug`] batched them).
static RING_SUBMIT_CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many `io_uring_enter` calls submitted requests, for `show status`.
pub fn submit_calls() -> u64 {
    RING_SUBMIT_CALLS.load(Ordering::Relaxed)
}

thread_local! {
    /// Set while a [`Plug`] is held on this thread.
    static PLUGGED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// The rings (a bit per ring index) with entries pushed under the
    /// plug and not yet handed to the kernel.
    static DEFERRED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Batches submissions: while a `Plug` is held, requests pushed to a ring
/// on this thread are not handed to the kernel one by one; dropping the
/// plug enters each ring that got some, once. One `io_uring_enter` for a
/// batch lets the block layer plug too, so a device sees one doorbell
/// for the batch (its notify is a VM exit in a guest).
///
/// The plug is per thread and must not be held across an `.await` (the
/// task could move to another thread and leave the entries unsubmitted):
/// hold it around synchronous code only, as
/// `{ let _plug = Plug::new(); for r in batch { export.submit(r) } }`.
/// Nested plugs enter at the outermost drop.
pub struct Plug {
    outer: bool,
}

impl Plug {
    /// Starts batching this thread's submissions.
    #[must_use = "the batch is submitted when the plug is dropped"]
    pub fn new() -> Plug {
        Plug {
            outer: !PLUGGED.with(|p| p.replace(true)),
        }
    }
}

impl Default for Plug {
    fn default() -> Self {
        Plug::new()
    }
}

impl Drop for Plug {
    fn drop(&mut self) {
        if !self.outer {
            return;
        }
        PLUGGED.with(|p| p.set(false));
        let mask = DEFERRED.with(|d| d.replace(0));
        if mask == 0 {
            return;
        }
        if let Some(rings) = rings() {
            for (i, ring) in rings.rings.iter().enumerate() {
                if mask & (1 << i) != 0 {
                    ring.enter();
                }
            }
        }
    }
}

/// Counts a request handed to IO threads.
pub(super) fn count_thread_request() {
    THREAD_REQUESTS.fetch_add(1, Ordering::Relaxed);
}

/// Requests started on an `iscsi` path's connection without a thread.
static ASYNC_REQUESTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub(super) fn count_async_request() {
    ASYNC_REQUESTS.fetch_add(1, Ordering::Relaxed);
}

/// How many requests went to iSCSI connections without a thread, for
/// `show status`.
pub fn async_requests() -> u64 {
    ASYNC_REQUESTS.load(Ordering::Relaxed)
}

/// The runtime whose tasks handle completions, if the process set one
/// ([`reap_on`]) before the engine was made.
static REAPER: OnceLock<tokio::runtime::Handle> = OnceLock::new();

/// Completions are to be handled by tasks on this runtime (the daemon's):
/// a ring signals an eventfd the runtime's reactor waits on, so a
/// completion and the reply it wakes run on one worker, without a
/// completion thread between them. Call before anything submits IO;
/// without it (tools, tests) each ring has a completion thread.
pub fn reap_on(handle: tokio::runtime::Handle) {
    let _ = REAPER.set(handle);
}

/// The process's engine: made on first use.
struct Engine {
    kind: EngineKind,
    rings: Option<Arc<Rings>>,
}

static ENGINE: OnceLock<Engine> = OnceLock::new();

fn engine() -> &'static Engine {
    ENGINE.get_or_init(|| {
        let wish = EngineWish::from_env().unwrap_or_else(|e| {
            warn!("{e}; using auto");
            EngineWish::Auto
        });
        if wish == EngineWish::Threads {
            return Engine {
                kind: EngineKind::Threads {
                    why: format!("{ENGINE_ENV}=threads"),
                },
                rings: None,
            };
        }
        match Rings::start() {
            Ok(r) => Engine {
                kind: EngineKind::Uring {
                    rings: r.rings.len(),
                    entries: RING_ENTRIES,
                    on_runtime: r.on_runtime,
                },
                rings: Some(Arc::new(r)),
            },
            Err(e) => Engine {
                kind: EngineKind::Threads {
                    why: format!("io_uring unavailable: {e}"),
                },
                rings: None,
            },
        }
    })
}

/// The engine this process runs (chosen on first use: see the module
/// docs). The daemon asks at start, logs it and fails if
/// `UMPATH_IO_ENGINE=uring` could not be honoured.
pub fn io_engine() -> &'static EngineKind {
    &engine().kind
}

/// The rings, if the engine is io_uring.
pub(super) fn rings() -> Option<&'static Arc<Rings>> {
    engine().rings.as_ref()
}

/// Why a ring could not be made: what the kernel said.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("io_uring_setup: {0}")]
    Setup(io::Error),
    #[error("the kernel's io_uring lacks {0} (too old)")]
    Missing(&'static str),
    #[error("cannot start a completion thread: {0}")]
    Thread(io::Error),
}

/// The process's rings.
pub(super) struct Rings {
    rings: Vec<Arc<Ring>>,
    next: AtomicUsize,
    /// Completions are handled by tasks on [`REAPER`]'s runtime.
    on_runtime: bool,
}

struct Ring {
    uring: IoUring,
    /// Guards pushing to the submission queue.
    sq: Mutex<()>,
    /// Guards popping from the completion queue.
    cq: Mutex<()>,
    /// Requests submitted and not yet completed.
    in_flight: AtomicUsize,
    /// At most this many at once (the completion queue's size).
    cap: usize,
    /// A submission failed (EBUSY): entries wait in the queue for the
    /// next `io_uring_enter` (the completion thread's wait does one; the
    /// runtime's task does one when this is set).
    needs_enter: std::sync::atomic::AtomicBool,
}

/// One request on a ring: the job, the handle it runs on, how far it got.
pub(super) struct RingOp {
    pub(super) job: Job,
    pub(super) raw: RawIo,
    pub(super) map: Weak<Inner>,
    /// Bytes transferred so far (a short transfer is continued).
    done: usize,
}

impl RingOp {
    pub(super) fn new(job: Job, raw: RawIo, map: Weak<Inner>) -> Box<RingOp> {
        Box::new(RingOp {
            job,
            raw,
            map,
            done: 0,
        })
    }

    /// The submission entry for what is left of the request.
    fn entry(&mut self) -> Option<squeue::Entry> {
        let fd = types::Fd(self.raw.fd());
        let req = &mut self.job.req;
        let len = req.len as usize;
        let rest = u32::try_from(len.checked_sub(self.done)?).ok()?;
        let offset = req.offset.checked_add(self.done as u64)?;
        let e = match req.op {
            Op::Read => {
                let ptr = req.buf.get_mut(self.done..len)?.as_mut_ptr();
                opcode::Read::new(fd, ptr, rest).offset(offset).build()
            }
            Op::Write => {
                let ptr = req.buf.get(self.done..len)?.as_ptr();
                let flags = if req.fua { libc::RWF_DSYNC } else { 0 };
                opcode::Write::new(fd, ptr, rest)
                    .offset(offset)
                    .rw_flags(flags)
                    .build()
            }
            Op::Flush => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            Op::Trim | Op::WriteZeroes { .. } => return None,
        };
        Some(e)
    }
}

/// Whether the ring engine can run this request as it is on `raw`.
///
/// Writes and flushes on a buffered handle are not: the kernel cannot
/// write to the page cache of most filesystems without blocking (ext4
/// and tmpfs refuse `RWF_NOWAIT` writes), so io_uring punts each one to
/// an io-wq worker, which measured 1.8x slower than the per-path IO
/// threads at 4k QD32 (`benches/table.sh`). Such a path's writes keep
/// its own IO threads (at most [`super::WORKERS_PER_PATH`], started on
/// demand), so a hung one still holds only its own.
pub(super) fn eligible(job: &Job, raw: &RawIo) -> bool {
    let req = &job.req;
    let len = req.len as usize;
    if raw.buffered() && req.op != Op::Read {
        return false;
    }
    match req.op {
        Op::Read | Op::Write => {
            len > 0
                && req.buf.len() >= len
                && raw.accepts(req.buf.as_ptr() as usize, len, req.offset)
        }
        Op::Flush => true,
        Op::Trim | Op::WriteZeroes { .. } => false,
    }
}

impl Rings {
    fn start() -> Result<Rings, RingError> {
        let cores = thread::available_parallelism().map_or(1, |n| n.get());
        let count = cores.clamp(1, MAX_RINGS);
        let mut rings = Vec::with_capacity(count);
        let mut on_runtime = REAPER.get().is_some();
        for i in 0..count {
            let ring = Arc::new(Ring::new()?);
            if on_runtime {
                match ring.clone().reap_on_runtime() {
                    Ok(()) => {
                        rings.push(ring);
                        continue;
                    }
                    Err(e) if i == 0 => {
                        warn!("io_uring: completions on a thread per ring ({e})");
                        on_runtime = false;
                    }
                    Err(e) => return Err(RingError::Setup(e)),
                }
            }
            let r = ring.clone();
            thread::Builder::new()
                .name(format!("uring-{i}"))
                .spawn(move || r.complete_forever())
                .map_err(RingError::Thread)?;
            rings.push(ring);
        }
        Ok(Rings {
            rings,
            next: AtomicUsize::new(0),
            on_runtime,
        })
    }

    /// Submits `op` to a ring with room; gives it back if none has
    /// (the caller runs it on the path's IO threads).
    pub(super) fn submit(&self, op: Box<RingOp>) -> Result<(), Box<RingOp>> {
        let n = self.rings.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut op = op;
        for i in 0..n {
            let idx = (start + i) % n;
            let ring = &self.rings[idx];
            match ring.push(op) {
                Ok(()) => {
                    RING_REQUESTS.fetch_add(1, Ordering::Relaxed);
                    if PLUGGED.with(|p| p.get()) {
                        DEFERRED.with(|d| d.set(d.get() | 1 << idx));
                    } else {
                        ring.enter();
                    }
                    return Ok(());
                }
                Err(back) => op = back,
            }
        }
        Err(op)
    }
}

impl Ring {
    fn new() -> Result<Ring, RingError> {
        let uring = IoUring::builder()
            .setup_cqsize(RING_ENTRIES * 2)
            .build(RING_ENTRIES)
            .map_err(RingError::Setup)?;
        let mut probe = io_uring::Probe::new();
        uring
            .submitter()
            .register_probe(&mut probe)
            .map_err(RingError::Setup)?;
        for (code, name) in [
            (opcode::Read::CODE, "IORING_OP_READ"),
            (opcode::Write::CODE, "IORING_OP_WRITE"),
            (opcode::Fsync::CODE, "IORING_OP_FSYNC"),
        ] {
            if !probe.is_supported(code) {
                return Err(RingError::Missing(name));
            }
        }
        // Buffered file IO the kernel cannot do without blocking runs on
        // io-wq workers; a hung device parks one per request in flight
        // on it. Room for that beside the healthy paths' IO (the default
        // is 4 per core); workers start on demand and retire when idle.
        let mut max = [IOWQ_BOUNDED_WORKERS, 0];
        if let Err(e) = uring.submitter().register_iowq_max_workers(&mut max) {
            tracing::debug!(
                "io_uring: io-wq worker limit not set ({e}); the kernel's default holds"
            );
        }
        let cap = uring.params().cq_entries() as usize;
        Ok(Ring {
            uring,
            sq: Mutex::new(()),
            cq: Mutex::new(()),
            in_flight: AtomicUsize::new(0),
            cap,
            needs_enter: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Pushes `op` and hands it to the kernel.
    fn submit(&self, op: Box<RingOp>) -> Result<(), Box<RingOp>> {
        self.push(op)?;
        self.enter();
        Ok(())
    }

    /// Pushes `op` to the submission queue; the caller enters the ring.
    fn push(&self, mut op: Box<RingOp>) -> Result<(), Box<RingOp>> {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= self.cap {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(op);
        }
        let Some(entry) = op.entry() else {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(op);
        };
        let ptr = Box::into_raw(op);
        let entry = entry.user_data(ptr as u64);
        let pushed = {
            let _g = self.sq.lock();
            // SAFETY: the submission queue is only ever touched under
            // `self.sq`, so this is its only user now. The entry's buffer
            // and descriptor belong to the op behind `ptr`, which stays
            // alive (leaked) until its completion is reaped.
            unsafe {
                let mut sq = self.uring.submission_shared();
                sq.push(&entry).is_ok()
            }
        };
        if !pushed {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            // SAFETY: `ptr` came from `Box::into_raw` above and was not
            // pushed, so nobody else has it.
            return Err(unsafe { Box::from_raw(ptr) });
        }
        Ok(())
    }

    /// Hands pushed entries to the kernel. An error leaves them in the
    /// queue for the next `io_uring_enter` of whoever reaps the ring (a
    /// completion thread's wait submits too; the reaper task enters when
    /// `needs_enter` is set), which completions wake: EBUSY means some
    /// are waiting.
    fn enter(&self) {
        RING_SUBMIT_CALLS.fetch_add(1, Ordering::Relaxed);
        loop {
            match self.uring.submit() {
                Ok(_) => return,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => {
                    if !matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::EAGAIN)) {
                        warn!("io_uring submit: {e}");
                    }
                    self.needs_enter.store(true, Ordering::Release);
                    return;
                }
            }
        }
    }

    /// The completion thread: waits for completions and handles them.
    fn complete_forever(&self) {
        let mut done: Vec<(u64, i32)> = Vec::with_capacity(64);
        loop {
            match self.uring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN)
                    ) => {}
                Err(e) => {
                    error!("io_uring wait: {e}");
                    thread::sleep(std::time::Duration::from_millis(10));
                }
            }
            self.reap(&mut done);
        }
    }

    /// Registers an eventfd the ring signals on each completion and
    /// starts the task on [`REAPER`]'s runtime that waits on it.
    fn reap_on_runtime(self: Arc<Self>) -> io::Result<()> {
        use nix::sys::eventfd::{EfdFlags, EventFd};
        let handle = REAPER
            .get()
            .ok_or_else(|| io::Error::other("no runtime set"))?;
        let efd = EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
            .map_err(io::Error::from)?;
        self.uring
            .submitter()
            .register_eventfd(std::os::fd::AsRawFd::as_raw_fd(&efd))?;
        let afd = {
            let _rt = handle.enter();
            // SAFETY: the EventFd owns its descriptor, which stays open
            // and the same for as long as the AsyncFd holds it.
            unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(efd, tokio::io::Interest::READABLE)
            }
            .map_err(|e| io::Error::other(e.to_string()))?
        };
        handle.spawn(async move {
            let mut done: Vec<(u64, i32)> = Vec::with_capacity(64);
            loop {
                let mut ready = match afd.readable().await {
                    Ok(r) => r,
                    Err(e) => {
                        error!("io_uring: waiting for completions: {e}");
                        return;
                    }
                };
                // Consume the signal before reaping: a completion posted
                // after the reap signals again.
                let _ = afd.get_ref().read();
                ready.clear_ready();
                self.reap(&mut done);
                if self.needs_enter.swap(false, Ordering::AcqRel) {
                    self.enter();
                }
            }
        });
        Ok(())
    }

    /// Takes the finished entries off the completion queue and handles
    /// them (outside the queue's lock).
    fn reap(&self, done: &mut Vec<(u64, i32)>) {
        {
            let _g = self.cq.lock();
            // SAFETY: the completion queue is only ever touched under
            // `self.cq`.
            let cq = unsafe { self.uring.completion_shared() };
            done.extend(cq.map(|c| (c.user_data(), c.result())));
        }
        for (user_data, res) in done.drain(..) {
            if user_data == 0 {
                continue;
            }
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            // SAFETY: every entry submitted carries a pointer from
            // `Box::into_raw` of a `RingOp`, and each completes once.
            let op = unsafe { Box::from_raw(user_data as *mut RingOp) };
            self.completed(op, res);
        }
    }

    /// One completion: done, continued (a short transfer), or failed.
    fn completed(&self, mut op: Box<RingOp>, res: i32) {
        let req = &op.job.req;
        // Only reads, writes and flushes reach a ring ([`eligible`]).
        let io_op = super::io_op(req.op);
        let len = if io_op == IoOp::Flush {
            0
        } else {
            req.len as usize
        };
        let result = if res < 0 {
            let e = io::Error::from_raw_os_error(-res);
            if matches!(-res, libc::EINTR | libc::EAGAIN) {
                return self.resubmit(op);
            }
            Err(e)
        } else {
            let n = res as usize;
            if io_op == IoOp::Flush || op.done + n >= len {
                Ok(())
            } else if n == 0 {
                let at = req.offset + op.done as u64;
                Err(if io_op == IoOp::Read {
                    io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "short read: end of file at offset {at} after {} of {len} bytes",
                            op.done
                        ),
                    )
                } else {
                    io::Error::new(
                        io::ErrorKind::WriteZero,
                        format!("short write: nothing written at offset {at}"),
                    )
                })
            } else {
                op.done += n;
                return self.resubmit(op);
            }
        };
        let RingOp { job, raw, map, .. } = *op;
        let result = result.map_err(|e| {
            let (offset, len) = if io_op == IoOp::Flush {
                (0, 0)
            } else {
                (job.req.offset, u64::from(job.req.len))
            };
            job.path
                .dev
                .transport
                .raw_error(&raw, io_op, offset, len, e)
        });
        drop(raw);
        match map.upgrade() {
            Some(inner) => inner.finished(job, result),
            None => job.req.complete(Err(IoError::Shutdown)),
        }
    }

    /// Continues a request (after a short transfer) on this ring, or on
    /// its path's IO threads if the ring is full.
    fn resubmit(&self, op: Box<RingOp>) {
        if let Err(op) = self.submit(op) {
            let RingOp { job, map, .. } = *op;
            match map.upgrade() {
                Some(inner) => inner.to_workers(job),
                None => job.req.complete(Err(IoError::Shutdown)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wish_parses() {
        assert_eq!(EngineWish::parse("").unwrap(), EngineWish::Auto);
        assert_eq!(EngineWish::parse("auto").unwrap(), EngineWish::Auto);
        assert_eq!(EngineWish::parse("uring").unwrap(), EngineWish::Uring);
        assert_eq!(EngineWish::parse("io_uring").unwrap(), EngineWish::Uring);
        assert_eq!(EngineWish::parse("threads").unwrap(), EngineWish::Threads);
        let e = EngineWish::parse("fast").unwrap_err();
        assert!(
            e.contains("UMPATH_IO_ENGINE") && e.contains("threads"),
            "{e}"
        );
    }

    #[test]
    fn kind_displays_what_and_why() {
        let k = EngineKind::Uring {
            rings: 2,
            entries: 512,
            on_runtime: true,
        };
        assert!(k.to_string().starts_with("io_uring (2 ring(s)"), "{k}");
        assert!(k.to_string().contains("completions on the runtime"), "{k}");
        let k = EngineKind::Threads {
            why: "UMPATH_IO_ENGINE=threads".into(),
        };
        assert_eq!(k.to_string(), "threads (UMPATH_IO_ENGINE=threads)");
    }
}
