//! A small in-memory [`Export`] and a mutable [`ExportSet`], for tests,
//! benchmarks and demos.
//!
//! [`MemExport`] keeps its bytes in a `Vec<u8>` behind a mutex and can
//! complete requests inline (inside `submit`), from a pool of worker
//! threads (completions arrive out of order), or in reversed batches
//! (deterministic reordering for protocol tests).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam::channel::{Receiver, Sender};
use parking_lot::{Mutex, RwLock};

use crate::export::{BlockSizes, Export, ExportCaps, ExportSet, IoError, Op, Request};

/// How a [`MemExport`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompletionMode {
    /// Complete inside `submit`, on the caller's thread.
    Inline,
    /// Hand requests to this many worker threads; completions race.
    Threaded(usize),
    /// One worker collects up to `batch` requests (waiting at most 2 ms for
    /// more) and completes each batch in reverse order of arrival.
    Reversed(usize),
}

/// Counters of what a [`MemExport`] did.
#[derive(Debug, Default)]
pub struct MemStats {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub flushes: AtomicU64,
    pub trims: AtomicU64,
    pub zeroes: AtomicU64,
    pub fua: AtomicU64,
}

struct Inner {
    data: Mutex<Vec<u8>>,
    caps: ExportCaps,
    stats: MemStats,
}

/// An export backed by memory.
pub struct MemExport {
    name: String,
    description: String,
    size: u64,
    block_sizes: BlockSizes,
    inner: Arc<Inner>,
    queue: Option<Sender<Request>>,
}

/// All features on, multi-connection safe.
pub const MEM_CAPS: ExportCaps = ExportCaps::ALL;

impl MemExport {
    /// A zero-filled export of `size` bytes with every capability,
    /// block sizes 1/4096/32 MiB, completing inline.
    pub fn new(name: &str, size: usize) -> MemExport {
        Self::builder(name, size).build()
    }

    pub fn builder(name: &str, size: usize) -> MemExportBuilder {
        MemExportBuilder {
            name: name.to_string(),
            description: format!("in-memory export {name}"),
            data: vec![0; size],
            caps: MEM_CAPS,
            block_sizes: BlockSizes {
                minimum: 1,
                preferred: 4096,
                maximum: 32 * 1024 * 1024,
            },
            mode: CompletionMode::Inline,
        }
    }

    /// A copy of the current contents.
    pub fn contents(&self) -> Vec<u8> {
        self.inner.data.lock().clone()
    }

    /// Overwrite part of the contents directly.
    pub fn fill(&self, offset: usize, bytes: &[u8]) {
        self.inner.data.lock()[offset..offset + bytes.len()].copy_from_slice(bytes);
    }

    pub fn stats(&self) -> &MemStats {
        &self.inner.stats
    }
}

/// Configures a [`MemExport`].
pub struct MemExportBuilder {
    name: String,
    description: String,
    data: Vec<u8>,
    caps: ExportCaps,
    block_sizes: BlockSizes,
    mode: CompletionMode,
}

impl MemExportBuilder {
    pub fn description(mut self, d: &str) -> Self {
        self.description = d.to_string();
        self
    }
    pub fn caps(mut self, caps: ExportCaps) -> Self {
        self.caps = caps;
        self
    }
    pub fn read_only(mut self) -> Self {
        self.caps.read_only = true;
        self
    }
    pub fn block_sizes(mut self, minimum: u32, preferred: u32, maximum: u32) -> Self {
        self.block_sizes = BlockSizes {
            minimum,
            preferred,
            maximum,
        };
        self
    }
    pub fn mode(mut self, mode: CompletionMode) -> Self {
        self.mode = mode;
        self
    }
    /// Initial contents (replaces the zero fill; sets the size).
    pub fn data(mut self, data: Vec<u8>) -> Self {
        self.data = data;
        self
    }

    pub fn build(self) -> MemExport {
        let size = self.data.len() as u64;
        let inner = Arc::new(Inner {
            data: Mutex::new(self.data),
            caps: self.caps,
            stats: MemStats::default(),
        });
        // A worker that cannot be spawned is logged; with no worker at all
        // the export completes inline.
        let spawn = |name: String, work: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name)
                .spawn(work)
                .map_err(|e| tracing::warn!("memexport: cannot spawn a worker: {e}; fewer workers"))
                .is_ok()
        };
        let queue = match self.mode {
            CompletionMode::Inline => None,
            CompletionMode::Threaded(n) => {
                let (tx, rx) = crossbeam::channel::unbounded::<Request>();
                let mut spawned = 0;
                for i in 0..n.max(1) {
                    let rx = rx.clone();
                    let inner = inner.clone();
                    let work = Box::new(move || {
                        for req in rx.iter() {
                            inner.serve(req);
                        }
                    });
                    spawned += usize::from(spawn(format!("memexport-{i}"), work));
                }
                (spawned > 0).then_some(tx)
            }
            CompletionMode::Reversed(batch) => {
                let (tx, rx) = crossbeam::channel::unbounded::<Request>();
                let inner = inner.clone();
                let work = Box::new(move || reverse_worker(&inner, &rx, batch.max(1)));
                spawn("memexport-rev".into(), work).then_some(tx)
            }
        };
        MemExport {
            name: self.name,
            description: self.description,
            size,
            block_sizes: self.block_sizes,
            inner,
            queue,
        }
    }
}

fn reverse_worker(inner: &Inner, rx: &Receiver<Request>, batch: usize) {
    let mut held = Vec::with_capacity(batch);
    while let Ok(first) = rx.recv() {
        held.push(first);
        while held.len() < batch {
            match rx.recv_timeout(Duration::from_millis(2)) {
                Ok(r) => held.push(r),
                Err(_) => break,
            }
        }
        while let Some(r) = held.pop() {
            inner.serve(r);
        }
    }
}

impl Inner {
    fn serve(&self, mut req: Request) {
        let result = self.apply(&mut req);
        req.complete(result);
    }

    fn apply(&self, req: &mut Request) -> Result<(), IoError> {
        let off = usize::try_from(req.offset).map_err(|_| IoError::Inval)?;
        let len = req.len as usize;
        let s = &self.stats;
        if req.fua {
            s.fua.fetch_add(1, Ordering::Relaxed);
        }
        let mut data = self.data.lock();
        let end = off.checked_add(len).ok_or(IoError::Inval)?;
        if !matches!(req.op, Op::Flush) && end > data.len() {
            return Err(IoError::Inval);
        }
        if req.op.is_write() && self.caps.read_only {
            return Err(IoError::Perm);
        }
        match req.op {
            Op::Read => {
                s.reads.fetch_add(1, Ordering::Relaxed);
                let buf = req.buf.get_mut(..len).ok_or(IoError::Inval)?;
                buf.copy_from_slice(&data[off..end]);
            }
            Op::Write => {
                s.writes.fetch_add(1, Ordering::Relaxed);
                let buf = req.buf.get(..len).ok_or(IoError::Inval)?;
                data[off..end].copy_from_slice(buf);
            }
            Op::Flush => {
                s.flushes.fetch_add(1, Ordering::Relaxed);
            }
            Op::Trim => {
                s.trims.fetch_add(1, Ordering::Relaxed);
                data[off..end].fill(0);
            }
            Op::WriteZeroes { fast, .. } => {
                if fast && !self.caps.fast_zero {
                    return Err(IoError::NotSup);
                }
                s.zeroes.fetch_add(1, Ordering::Relaxed);
                data[off..end].fill(0);
            }
        }
        Ok(())
    }
}

impl Export for MemExport {
    fn name(&self) -> &str {
        &self.name
    }
    fn description(&self) -> String {
        self.description.clone()
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn caps(&self) -> ExportCaps {
        self.inner.caps
    }
    fn block_sizes(&self) -> BlockSizes {
        self.block_sizes
    }
    fn submit(&self, req: Request) {
        match &self.queue {
            None => self.inner.serve(req),
            Some(q) => {
                if let Err(e) = q.send(req) {
                    e.into_inner().complete(Err(IoError::Shutdown));
                }
            }
        }
    }
}

/// A list of exports that can be replaced at run time (reconfigure).
#[derive(Default)]
pub struct ExportList {
    exports: RwLock<Vec<Arc<dyn Export>>>,
}

impl ExportList {
    pub fn new(exports: Vec<Arc<dyn Export>>) -> ExportList {
        ExportList {
            exports: RwLock::new(exports),
        }
    }

    /// Replace every export; connections already open keep theirs.
    pub fn replace(&self, exports: Vec<Arc<dyn Export>>) {
        *self.exports.write() = exports;
    }
}

impl ExportSet for ExportList {
    fn list(&self) -> Vec<Arc<dyn Export>> {
        self.exports.read().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::Completion;

    fn request(
        op: Op,
        offset: u64,
        len: u32,
        buf: Vec<u8>,
        tx: &tokio::sync::mpsc::UnboundedSender<Completion>,
        cookie: u64,
    ) -> Request {
        Request {
            op,
            offset,
            len,
            fua: false,
            cookie,
            buf: buf.into(),
            reply: tx.clone().into(),
        }
    }

    fn drain(
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<Completion>,
        n: usize,
    ) -> Vec<Completion> {
        (0..n)
            .map(|_| loop {
                if let Ok(c) = rx.try_recv() {
                    break c;
                }
                std::thread::sleep(Duration::from_millis(1));
            })
            .collect()
    }

    #[test]
    fn inline_read_write() {
        let e = MemExport::new("m", 8192);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        e.submit(request(Op::Write, 100, 3, vec![1, 2, 3, 9], &tx, 1));
        e.submit(request(Op::Read, 99, 5, vec![7; 8], &tx, 2));
        let c = drain(&mut rx, 2);
        assert_eq!(c[0].cookie, 1);
        assert!(c[0].result.is_ok());
        assert_eq!(&c[1].buf[..5], &[0, 1, 2, 3, 0]);
        e.submit(request(Op::Read, 8190, 4, vec![0; 4], &tx, 3));
        assert_eq!(drain(&mut rx, 1)[0].result, Err(IoError::Inval));
        assert_eq!(e.stats().writes.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn reversed_completions() {
        let e = MemExport::builder("m", 4096)
            .mode(CompletionMode::Reversed(4))
            .build();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..4 {
            e.submit(request(Op::Read, 0, 1, vec![0], &tx, i));
        }
        let order: Vec<u64> = drain(&mut rx, 4).iter().map(|c| c.cookie).collect();
        assert_eq!(order, vec![3, 2, 1, 0]);
    }

    #[test]
    fn threaded_and_read_only() {
        let e = MemExport::builder("m", 4096)
            .read_only()
            .mode(CompletionMode::Threaded(3))
            .build();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        e.submit(request(Op::Write, 0, 1, vec![1], &tx, 1));
        assert_eq!(drain(&mut rx, 1)[0].result, Err(IoError::Perm));
        let set = ExportList::new(vec![Arc::new(e)]);
        assert_eq!(set.get("").unwrap().name(), "m");
        assert!(set.get("x").is_none());
        set.replace(vec![]);
        assert!(set.get("").is_none());
    }
}
