//! Transports: how a path reaches its LUN.
//!
//! A [`Transport`] is one of a fixed set of engines (an enum, not a trait
//! object): [`file::FileTransport`] (a regular file or a block device),
//! [`scsi::ScsiTransport`], [`nbd::NbdTransport`], and
//! [`memory::MemoryTransport`] (a LUN in memory with scriptable failures,
//! for tests); iSCSI comes later. Every method is
//! synchronous and takes `&self`: IO worker threads and the path checker
//! call them concurrently, so each may block in a syscall but none holds a
//! lock across one.
//!
//! Nobody calls a transport directly: the engine and the checker go
//! through a [`PathDev`], which runs every IO and check past the path's
//! fault hook ([`fault::Faults`]) first.
//!
//! Errors are [`TransportError`]s: what was attempted where, the OS error,
//! and an [`ErrorClass`] telling the engine whether to fail the path and
//! retry elsewhere, or hand the error to the client.

pub mod bounce;
pub mod fault;
pub mod file;
pub mod iscsi;
pub mod memory;
pub mod nbd;
pub mod scsi;

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::export::IoError;

pub use crate::scsi::tur::TurResult;
pub use fault::{
    Fault, FaultError, FaultParseError, FaultSpec, FaultTargets, Faults, IoKindForFault,
};
pub use file::FileTransport;
pub use memory::{MemLun, MemScript, MemoryTransport};
pub use scsi::{ScsiTarget, ScsiTransport};

/// The operation a [`TransportError`] happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IoOp {
    Open,
    Size,
    Read,
    Write,
    Flush,
    Trim,
    WriteZeroes,
    /// The checker's probe read.
    Check,
}

impl IoOp {
    pub fn as_str(self) -> &'static str {
        match self {
            IoOp::Open => "open",
            IoOp::Size => "size",
            IoOp::Read => "read",
            IoOp::Write => "write",
            IoOp::Flush => "flush",
            IoOp::Trim => "trim",
            IoOp::WriteZeroes => "write zeroes",
            IoOp::Check => "check",
        }
    }
}

impl fmt::Display for IoOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who is to blame for a failed operation, which decides what the engine
/// does with it.
///
/// Classification by transport:
///
/// * `file`: a file has no way to tell a broken path from a broken LUN,
///   so every error is [`ErrorClass::Path`] (including a short read at end
///   of file and a transport that is not open), except `ENOTSUP` /
///   `EOPNOTSUPP` from trim or write-zeroes, which is
///   [`ErrorClass::Unsupported`], as is a fast-only write-zeroes the file
///   cannot do quickly.
/// * `scsi`: by the errno the block layer returns for direct IO, as
///   dm-multipath classifies block status codes: medium, target,
///   reservation, protection and out-of-space errors are
///   [`ErrorClass::Lun`], everything else [`ErrorClass::Path`] (see
///   [`scsi::classify`]).
/// * Injected faults ([`fault::Faults`]) are always [`ErrorClass::Path`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The path is broken: fail it and retry the IO on another path.
    Path,
    /// The LUN itself answered with an error (e.g. a medium error): return
    /// it to the client, don't fail the path.
    Lun,
    /// The operation is not supported here (e.g. fast zero): return
    /// "not supported" to the client, don't fail the path.
    Unsupported,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Path => "path",
            ErrorClass::Lun => "lun",
            ErrorClass::Unsupported => "unsupported",
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed transport operation, with where and what.
///
/// Displays as `"<target>: <op> of <len> bytes at offset <offset>: <os
/// error>"` (the range is left out for operations without one), e.g.
/// `"/x/lun0.img: read of 4096 bytes at offset 0: not open: No such file or
/// directory (os error 2)"`.
#[derive(Debug, thiserror::Error)]
pub struct TransportError {
    pub op: IoOp,
    pub offset: u64,
    pub len: u64,
    /// What the transport talks to (for a file: its path).
    pub target: String,
    pub class: ErrorClass,
    #[source]
    pub source: io::Error,
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.target, self.op)?;
        if self.len > 0 {
            write!(f, " of {} bytes at offset {}", self.len, self.offset)?;
        }
        write!(f, ": {}", self.source)
    }
}

impl TransportError {
    pub fn new(
        op: IoOp,
        offset: u64,
        len: u64,
        target: impl Into<String>,
        class: ErrorClass,
        source: io::Error,
    ) -> Self {
        TransportError {
            op,
            offset,
            len,
            target: target.into(),
            class,
            source,
        }
    }

    /// The error number behind the error: the OS error, EIO for an
    /// injected fault, or the last open's error for a transport that is
    /// not open.
    pub fn errno(&self) -> Option<i32> {
        if let Some(n) = self.source.raw_os_error() {
            return Some(n);
        }
        let inner = self.source.get_ref()?;
        if let Some(f) = inner.downcast_ref::<FaultError>() {
            return Some(f.errno());
        }
        inner.downcast_ref::<file::NotOpen>().and_then(|n| n.errno)
    }

    /// True if the engine should fail the path and retry elsewhere.
    pub fn is_path_failure(&self) -> bool {
        self.class == ErrorClass::Path
    }

    /// What the client sees if this error ends up being its answer.
    ///
    /// * [`ErrorClass::Unsupported`] → [`IoError::NotSup`].
    /// * [`ErrorClass::Lun`] → the nearest NBD error to the OS error
    ///   (`ENOSPC` → `NoSpc`, `EROFS`/`EPERM`/`EACCES` → `Perm`, ...),
    ///   else [`IoError::Io`].
    /// * [`ErrorClass::Path`] → [`IoError::Io`]: the path failed, and the
    ///   client only sees that when no other path could serve the IO
    ///   either (as with dm-multipath).
    pub fn client_error(&self) -> IoError {
        match self.class {
            ErrorClass::Unsupported => IoError::NotSup,
            ErrorClass::Path => IoError::Io,
            ErrorClass::Lun => match self.errno() {
                Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG) => IoError::NoSpc,
                Some(libc::EROFS) | Some(libc::EPERM) | Some(libc::EACCES) => IoError::Perm,
                Some(libc::ENOMEM) => IoError::NoMem,
                Some(libc::EINVAL) => IoError::Inval,
                Some(libc::EOVERFLOW) => IoError::Overflow,
                Some(libc::EOPNOTSUPP) => IoError::NotSup,
                Some(libc::ESHUTDOWN) => IoError::Shutdown,
                _ => IoError::Io,
            },
        }
    }
}

/// What a transport is and what it can do: the one source the checker
/// (which probe to run) and the engine (what an export advertises) ask.
///
/// Each transport computes it from what it knows of its LUN, without a
/// syscall (facts are gathered when the transport opens or connects):
///
/// * `file`, regular file: flush and FUA (`fdatasync`) with the page
///   cache as the volatile cache; trim and fast zeroing if the
///   filesystem punches holes (probed at open, and learned from a trim
///   that answers "not supported").
/// * `file` on a block device and `scsi`: from the queue's sysfs limits
///   (`discard_max_bytes` for trim, `write_zeroes_max_bytes` for fast
///   zeroing, `write_cache` for the cache); `scsi` has a SCSI target.
/// * `nbd`: from the server's transmission flags at the last handshake,
///   so they may change when the path reconnects (to a restarted or
///   different server). Before the first connection only what umpath can
///   always do (flush, FUA, write-zeroes by writing zeroes) is claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportCaps {
    /// A SCSI target answers commands (TEST UNIT READY) on this path.
    pub scsi_target: bool,
    /// The LUN refuses writes.
    pub read_only: bool,
    /// A flush is accepted (a no-op where nothing is cached).
    pub flush: bool,
    /// Completed writes may sit in a volatile cache until a flush (or
    /// FUA) makes them stable.
    pub volatile_cache: bool,
    /// A write can be made stable before it completes (natively or by a
    /// flush after it).
    pub fua: bool,
    /// Discard is passed on to the LUN.
    pub trim: bool,
    /// Write-zeroes is accepted (done by writing zeroes if nothing faster).
    pub write_zeroes: bool,
    /// Write-zeroes can be fast (no data written), so a request that asks
    /// for fast zeroing only may succeed; it fails with
    /// [`ErrorClass::Unsupported`] when it would be slow.
    pub fast_zero: bool,
}

impl TransportCaps {
    /// What a transport that knows nothing of its LUN yet can still do.
    pub const BASIC: TransportCaps = TransportCaps {
        scsi_target: false,
        read_only: false,
        flush: true,
        volatile_cache: true,
        fua: true,
        trim: false,
        write_zeroes: true,
        fast_zero: false,
    };

    /// What both can do: a feature only if both have it; read-only or a
    /// volatile cache if either has it.
    pub fn intersect(self, other: TransportCaps) -> TransportCaps {
        TransportCaps {
            scsi_target: self.scsi_target && other.scsi_target,
            read_only: self.read_only || other.read_only,
            flush: self.flush && other.flush,
            volatile_cache: self.volatile_cache || other.volatile_cache,
            fua: self.fua && other.fua,
            trim: self.trim && other.trim,
            write_zeroes: self.write_zeroes && other.write_zeroes,
            fast_zero: self.fast_zero && other.fast_zero,
        }
    }

    /// What paths with these capabilities, together, let an export
    /// advertise. `multi_conn`: every connection goes through one engine
    /// to one LUN, and a flush on any path reaches the LUN's cache.
    pub fn export_caps(self) -> crate::export::ExportCaps {
        crate::export::ExportCaps {
            read_only: self.read_only,
            flush: self.flush,
            fua: self.fua,
            trim: self.trim,
            write_zeroes: self.write_zeroes,
            fast_zero: self.write_zeroes && self.fast_zero,
            multi_conn: true,
        }
    }
}

/// The result of a checker's probe read ([`Transport::probe`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// Bytes actually read (less than asked for if the LUN is smaller).
    pub bytes: usize,
    /// True if the read bypassed the page cache (O_DIRECT).
    pub direct: bool,
    /// Something worth telling the admin (e.g. why O_DIRECT was not used).
    pub note: Option<String>,
}

/// What [`Transport::revalidate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revalidated {
    /// The IO handle was fine and kept.
    Unchanged,
    /// The IO handle was (re)opened, for the reason given.
    Reopened(String),
}

/// One way to reach a LUN. See the module docs.
#[derive(Debug)]
pub enum Transport {
    File(file::FileTransport),
    Nbd(nbd::NbdTransport),
    Scsi(scsi::ScsiTransport),
    /// For tests: see [`memory`].
    Memory(memory::MemoryTransport),
    /// An iSCSI LUN through umpath's own initiator (see [`iscsi`]).
    Iscsi(std::sync::Arc<iscsi::IscsiTransport>),
}

impl Transport {
    /// A `file` transport for a regular file or block device; opened now if
    /// possible, else left "not open" (see [`file::FileTransport::new`]).
    pub fn file(path: impl Into<std::path::PathBuf>) -> Transport {
        Transport::File(file::FileTransport::new(path))
    }

    /// A `file` transport with `direct yes`: its IO handle uses O_DIRECT
    /// (see [`file::FileTransport::with_direct`]).
    pub fn file_direct(path: impl Into<std::path::PathBuf>) -> Transport {
        Transport::File(file::FileTransport::with_direct(path, true))
    }

    /// The LUN's size in bytes.
    pub fn size(&self) -> Result<u64, TransportError> {
        match self {
            Transport::File(t) => t.size(),
            Transport::Nbd(t) => t.size(),
            Transport::Scsi(t) => t.size(),
            Transport::Memory(t) => t.size(),
            Transport::Iscsi(t) => t.size(),
        }
    }

    /// Fill all of `buf` from `offset`. Reading past the end is an error.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), TransportError> {
        match self {
            Transport::File(t) => t.read_at(buf, offset),
            Transport::Nbd(t) => t.read_at(buf, offset),
            Transport::Scsi(t) => t.read_at(buf, offset),
            Transport::Memory(t) => t.read_at(buf, offset),
            Transport::Iscsi(t) => t.read_at(buf, offset),
        }
    }

    /// Fill `buf` only if that cannot block (data already cached); `None`
    /// means: read the normal way, on an IO thread.
    pub fn read_cached(&self, buf: &mut [u8], offset: u64) -> Option<()> {
        match self {
            Transport::File(t) => t.read_cached(buf, offset),
            // No page cache of ours in front of a server.
            Transport::Nbd(_) | Transport::Iscsi(_) => None,
            Transport::Scsi(t) => t.read_cached(buf, offset),
            // Always on the IO threads, so scripted hangs and errors apply.
            Transport::Memory(_) => None,
        }
    }

    /// Writes `buf` into a page cache without blocking if it can take all
    /// of it now (see [`FileTransport::write_cached`]); `None` means "write
    /// it the normal way".
    pub fn write_cached(&self, buf: &[u8], offset: u64) -> Option<()> {
        match self {
            Transport::File(t) => t.write_cached(buf, offset),
            Transport::Nbd(_) | Transport::Iscsi(_) => None,
            Transport::Scsi(t) => t.write_cached(buf, offset),
            Transport::Memory(_) => None,
        }
    }

    /// Write all of `buf` at `offset`; with `fua` the data is stable when
    /// this returns.
    pub fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> Result<(), TransportError> {
        match self {
            Transport::File(t) => t.write_at(buf, offset, fua),
            Transport::Nbd(t) => t.write_at(buf, offset, fua),
            Transport::Scsi(t) => t.write_at(buf, offset, fua),
            Transport::Memory(t) => t.write_at(buf, offset, fua),
            Transport::Iscsi(t) => t.write_at(buf, offset, fua),
        }
    }

    /// Make every completed write stable.
    pub fn flush(&self) -> Result<(), TransportError> {
        match self {
            Transport::File(t) => t.flush(),
            Transport::Nbd(t) => t.flush(),
            Transport::Scsi(t) => t.flush(),
            Transport::Memory(t) => t.flush(),
            Transport::Iscsi(t) => t.flush(),
        }
    }

    /// Discard a range (it may read back as anything afterwards).
    pub fn trim(&self, offset: u64, len: u64) -> Result<(), TransportError> {
        match self {
            Transport::File(t) => t.trim(offset, len),
            Transport::Nbd(t) => t.trim(offset, len),
            Transport::Scsi(t) => t.trim(offset, len),
            Transport::Memory(t) => t.trim(offset, len),
            Transport::Iscsi(t) => t.trim(offset, len),
        }
    }

    /// Make a range read back as zeroes. `may_unmap` allows deallocating
    /// it; `fast_only` asks for [`ErrorClass::Unsupported`] rather than
    /// writing zeroes slowly.
    pub fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        may_unmap: bool,
        fast_only: bool,
    ) -> Result<(), TransportError> {
        match self {
            Transport::File(t) => t.write_zeroes(offset, len, may_unmap, fast_only),
            Transport::Nbd(t) => t.write_zeroes(offset, len, may_unmap, fast_only),
            Transport::Scsi(t) => t.write_zeroes(offset, len, may_unmap, fast_only),
            Transport::Memory(t) => t.write_zeroes(offset, len),
            Transport::Iscsi(t) => t.write_zeroes(offset, len, may_unmap, fast_only),
        }
    }

    /// A `scsi` transport for a SCSI disk; opened now if possible.
    pub fn scsi(target: ScsiTarget) -> Transport {
        Transport::Scsi(scsi::ScsiTransport::new(target))
    }

    /// The logical block size: IO offsets and lengths should be multiples
    /// of it (the engine advertises the largest of its paths' as the
    /// export's minimum block size). 1 for files, but for `direct yes`
    /// ones.
    pub fn block_size(&self) -> u32 {
        match self {
            Transport::File(t) => u32::try_from(t.block_size()).unwrap_or(u32::MAX),
            Transport::Nbd(_) => 1,
            Transport::Scsi(t) => u32::try_from(t.block_size()).unwrap_or(u32::MAX),
            Transport::Memory(t) => t.lun().block_size(),
            Transport::Iscsi(t) => t.block_size(),
        }
    }

    /// The checker timeout the device itself suggests (a SCSI disk's
    /// command timeout), used when the configuration sets none.
    pub fn default_timeout(&self) -> Option<std::time::Duration> {
        match self {
            Transport::File(_) | Transport::Nbd(_) | Transport::Memory(_) => None,
            Transport::Iscsi(_) => None,
            Transport::Scsi(t) => t.default_timeout(),
        }
    }

    /// SCSI TEST UNIT READY, if the transport has a SCSI target to ask
    /// (`None` otherwise; see [`TransportCaps::scsi_target`]).
    pub fn tur(&self, timeout: std::time::Duration) -> Option<TurResult> {
        match self {
            Transport::File(_) | Transport::Nbd(_) | Transport::Memory(_) => None,
            Transport::Scsi(t) => Some(t.tur(timeout)),
            Transport::Iscsi(t) => Some(t.tur(timeout)),
        }
    }

    /// The IO handle as a raw descriptor, for transports whose reads,
    /// writes and flushes are plain file IO on one descriptor (`file`,
    /// `scsi`); `None` for the others and while not open.
    pub fn raw_io(&self, write: bool) -> Option<RawIo> {
        match self {
            Transport::File(t) => t.raw_io(),
            Transport::Scsi(t) => t.raw_io(write),
            Transport::Nbd(_) | Transport::Memory(_) | Transport::Iscsi(_) => None,
        }
    }

    /// The error for an IO on `raw` that failed with `e` (a negative
    /// result from the kernel, or a short transfer), classified as the
    /// transport's own IO would be.
    pub fn raw_error(
        &self,
        raw: &RawIo,
        op: IoOp,
        offset: u64,
        len: u64,
        e: io::Error,
    ) -> TransportError {
        match (self, &raw.handle) {
            (Transport::File(t), RawHandle::File(o)) => t.io_error(o, op, offset, len, e),
            (Transport::Scsi(t), RawHandle::Scsi(o)) => t.io_error(o, op, offset, len, e),
            _ => TransportError::new(op, offset, len, self.target(), ErrorClass::Path, e),
        }
    }

    /// A human description, e.g. `"file /var/lib/umpath/lun0.img"`.
    pub fn describe(&self) -> String {
        match self {
            Transport::File(t) => t.describe(),
            Transport::Nbd(t) => t.describe(),
            Transport::Scsi(t) => t.describe(),
            Transport::Memory(t) => t.describe(),
            Transport::Iscsi(t) => t.describe(),
        }
    }

    /// What the transport talks to, as [`TransportError::target`] names it.
    pub fn target(&self) -> String {
        match self {
            Transport::File(t) => t.path().display().to_string(),
            Transport::Nbd(t) => t.target().to_string(),
            Transport::Scsi(t) => t.target(),
            Transport::Memory(t) => t.name().to_string(),
            Transport::Iscsi(t) => t.target(),
        }
    }

    /// What the transport is and can do (see [`TransportCaps`]). Never
    /// blocks: IO routing may ask it.
    pub fn caps(&self) -> TransportCaps {
        match self {
            Transport::File(t) => t.caps(),
            Transport::Nbd(t) => t.caps(),
            Transport::Scsi(t) => t.caps(),
            Transport::Memory(t) => t.caps(),
            Transport::Iscsi(t) => t.caps(),
        }
    }

    /// True if the IO handle is open (IO may still fail).
    pub fn is_open(&self) -> bool {
        match self {
            Transport::File(t) => t.is_open(),
            Transport::Nbd(t) => t.is_open(),
            Transport::Scsi(t) => t.is_open(),
            Transport::Memory(t) => t.is_open(),
            Transport::Iscsi(t) => t.is_open(),
        }
    }

    /// Open the IO handle again (after the file came back). IO already in
    /// flight finishes on the old handle. On failure the old handle, if
    /// any, is kept.
    pub fn reopen(&self) -> Result<(), TransportError> {
        match self {
            Transport::File(t) => t.reopen(),
            Transport::Nbd(t) => t.revalidate().map(|_| ()),
            Transport::Scsi(t) => t.reopen(),
            Transport::Memory(t) => t.revalidate().map(|_| ()),
            Transport::Iscsi(t) => t.revalidate().map(|_| ()),
        }
    }

    /// Called after a successful check: reopen the IO handle if it is not
    /// open, has seen a path error since it was opened, or no longer refers
    /// to what the transport's name now refers to.
    pub fn revalidate(&self) -> Result<Revalidated, TransportError> {
        match self {
            Transport::File(t) => t.revalidate(),
            Transport::Nbd(t) => t.revalidate(),
            Transport::Scsi(t) => t.revalidate(),
            Transport::Memory(t) => t.revalidate(),
            Transport::Iscsi(t) => t.revalidate(),
        }
    }

    /// The checker's probe: read up to `len` bytes at offset 0, bypassing
    /// caches where possible, on a handle of its own.
    pub fn probe(&self, len: usize) -> Result<Probe, TransportError> {
        match self {
            Transport::File(t) => t.probe(len),
            Transport::Nbd(t) => t.probe(len),
            Transport::Scsi(t) => t.probe(len),
            Transport::Memory(t) => t.probe(len),
            Transport::Iscsi(t) => t.probe(len),
        }
    }
}

/// A path's open IO handle as a raw descriptor, for an engine that hands
/// reads, writes and flushes to the kernel itself (the io_uring engine)
/// instead of calling [`Transport::read_at`] on a thread. It keeps the
/// handle open while it lives, so IO in flight on it survives a reopen.
pub struct RawIo {
    fd: std::os::fd::RawFd,
    /// Offsets and lengths must be multiples of this (O_DIRECT: the
    /// logical block size; 1 for buffered IO).
    align: usize,
    /// Buffer addresses must be multiples of this.
    mem_align: usize,
    handle: RawHandle,
}

enum RawHandle {
    File(Arc<file::Opened>),
    Scsi(Arc<scsi::Opened>),
}

impl fmt::Debug for RawIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawIo")
            .field("fd", &self.fd)
            .field("align", &self.align)
            .finish_non_exhaustive()
    }
}

impl RawIo {
    /// The descriptor; open for as long as `self` lives.
    pub fn fd(&self) -> std::os::fd::RawFd {
        self.fd
    }

    /// True for a buffered handle (no O_DIRECT): its IO goes through the
    /// page cache.
    pub fn buffered(&self) -> bool {
        self.align == 1
    }

    /// Whether a transfer of `len` bytes at `offset` from memory at
    /// `addr` can go to the handle as it is (O_DIRECT alignment); if not,
    /// the transport's own read/write (with its bounce buffer) must do it.
    pub fn accepts(&self, addr: usize, len: usize, offset: u64) -> bool {
        addr % self.mem_align == 0 && len % self.align == 0 && offset % self.align as u64 == 0
    }
}

/// A path's device: its transport behind its fault hook. This is what the
/// engine's IO workers and the checker call. `Send + Sync`; share it in an
/// `Arc`.
#[derive(Debug)]
pub struct PathDev {
    pub transport: Transport,
    pub faults: Faults,
}

/// Distinct default fault seeds for paths created in one process.
static SEED_COUNTER: AtomicU64 = AtomicU64::new(0);

impl PathDev {
    /// A device with no faults set; the flaky-fault generator is seeded
    /// from the transport's description (and a per-process counter).
    pub fn new(transport: Transport) -> Self {
        use std::hash::{DefaultHasher, Hash, Hasher};
        let mut h = DefaultHasher::new();
        transport.describe().hash(&mut h);
        SEED_COUNTER.fetch_add(1, Ordering::Relaxed).hash(&mut h);
        PathDev {
            transport,
            faults: Faults::new(h.finish()),
        }
    }

    pub fn with_faults(transport: Transport, faults: Faults) -> Self {
        PathDev { transport, faults }
    }

    /// A path called `name` to an in-memory LUN, with the handle that
    /// scripts it (see [`memory`]).
    pub fn memory(name: &str, lun: &MemLun) -> (Arc<PathDev>, MemScript) {
        let t = MemoryTransport::new(name, lun);
        let script = t.script();
        (Arc::new(PathDev::new(Transport::Memory(t))), script)
    }

    /// Shorthand for `Arc::new(PathDev::new(Transport::file(path)))`.
    pub fn file(path: impl Into<std::path::PathBuf>) -> Arc<PathDev> {
        Arc::new(PathDev::new(Transport::file(path)))
    }

    fn fault(
        &self,
        kind: IoKindForFault,
        op: IoOp,
        offset: u64,
        len: u64,
    ) -> Result<(), TransportError> {
        self.faults
            .before_io(kind)
            .map_err(|e| e.into_transport_error(op, offset, len, self.transport.target()))
    }

    /// Not subject to faults (it is asked while assembling maps).
    pub fn size(&self) -> Result<u64, TransportError> {
        self.transport.size()
    }

    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), TransportError> {
        self.fault(IoKindForFault::Read, IoOp::Read, offset, buf.len() as u64)?;
        self.transport.read_at(buf, offset)
    }

    /// A read that completes without blocking or nothing: `None` while a
    /// read fault is set (faults must keep their timing) or when the data
    /// is not cached.
    pub fn read_cached(&self, buf: &mut [u8], offset: u64) -> Option<()> {
        if !matches!(self.faults.get(IoKindForFault::Read), Fault::None) {
            return None;
        }
        self.transport.read_cached(buf, offset)
    }

    /// True when no fault is set for `kind` (IO may then bypass
    /// [`PathDev`]'s blocking calls, which is where faults apply).
    pub fn fault_free(&self, kind: IoKindForFault) -> bool {
        matches!(self.faults.get(kind), Fault::None)
    }

    pub fn write_cached(&self, buf: &[u8], offset: u64) -> Option<()> {
        if !matches!(self.faults.get(IoKindForFault::Write), Fault::None) {
            return None;
        }
        self.transport.write_cached(buf, offset)
    }

    pub fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> Result<(), TransportError> {
        self.fault(IoKindForFault::Write, IoOp::Write, offset, buf.len() as u64)?;
        self.transport.write_at(buf, offset, fua)
    }

    /// The raw IO handle for a read (`write` false) or a write or flush,
    /// if no fault is set for that kind of IO (a fault must see every IO,
    /// so such IO goes through [`PathDev::read_at`] and friends).
    pub fn raw_io(&self, write: bool) -> Option<RawIo> {
        let kind = if write {
            IoKindForFault::Write
        } else {
            IoKindForFault::Read
        };
        if !matches!(self.faults.get(kind), Fault::None | Fault::Prio(_)) {
            return None;
        }
        self.transport.raw_io(write)
    }

    /// Counts as a write for faults.
    pub fn flush(&self) -> Result<(), TransportError> {
        self.fault(IoKindForFault::Write, IoOp::Flush, 0, 0)?;
        self.transport.flush()
    }

    /// Counts as a write for faults.
    pub fn trim(&self, offset: u64, len: u64) -> Result<(), TransportError> {
        self.fault(IoKindForFault::Write, IoOp::Trim, offset, len)?;
        self.transport.trim(offset, len)
    }

    /// Counts as a write for faults.
    pub fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        may_unmap: bool,
        fast_only: bool,
    ) -> Result<(), TransportError> {
        self.fault(IoKindForFault::Write, IoOp::WriteZeroes, offset, len)?;
        self.transport
            .write_zeroes(offset, len, may_unmap, fast_only)
    }

    /// What the path's transport is and can do.
    pub fn caps(&self) -> TransportCaps {
        self.transport.caps()
    }

    /// TEST UNIT READY behind the `checks` fault target. A path without a
    /// SCSI target ([`TransportCaps::scsi_target`]) answers with an
    /// [`ErrorClass::Unsupported`] error; the checker asks only paths that
    /// have one. A check runs either this or [`PathDev::probe`], so a
    /// check fault applies once per check.
    pub fn tur(&self, timeout: std::time::Duration) -> Result<TurResult, TransportError> {
        self.fault(IoKindForFault::Check, IoOp::Check, 0, 0)?;
        self.transport.tur(timeout).ok_or_else(|| {
            TransportError::new(
                IoOp::Check,
                0,
                0,
                self.transport.target(),
                ErrorClass::Unsupported,
                io::Error::new(io::ErrorKind::Unsupported, "no SCSI target on this path"),
            )
        })
    }

    /// The checker's probe, behind the `checks` fault target.
    pub fn probe(&self, len: usize) -> Result<Probe, TransportError> {
        self.fault(IoKindForFault::Check, IoOp::Check, 0, len as u64)?;
        self.transport.probe(len)
    }

    /// `path_latency`'s measurement: `count` reads of one block at
    /// offset 0 through [`PathDev::probe`] (direct where the transport can,
    /// on the checker's handle, behind the `checks` fault target), each
    /// timed. The first failed read ends the measurement with its error;
    /// so does running past `budget` (the measurement must fit in the
    /// checker's timeout), as an [`ErrorClass::Path`] timeout.
    pub fn timed_reads(
        &self,
        count: u32,
        budget: std::time::Duration,
    ) -> Result<Vec<std::time::Duration>, TransportError> {
        let len = self.transport.block_size().max(512) as usize;
        let begun = std::time::Instant::now();
        let mut out = Vec::with_capacity(count as usize);
        for _ in 0..count {
            if begun.elapsed() > budget {
                return Err(TransportError::new(
                    IoOp::Check,
                    0,
                    len as u64,
                    self.transport.target(),
                    ErrorClass::Path,
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "{} of {count} latency reads done in {} ms",
                            out.len(),
                            budget.as_millis()
                        ),
                    ),
                ));
            }
            let start = std::time::Instant::now();
            self.probe(len)?;
            out.push(start.elapsed());
        }
        Ok(out)
    }

    pub fn describe(&self) -> String {
        self.transport.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(class: ErrorClass, errno: i32) -> TransportError {
        TransportError::new(
            IoOp::Write,
            4096,
            512,
            "/x/lun0.img",
            class,
            io::Error::from_raw_os_error(errno),
        )
    }

    #[test]
    fn timed_reads_time_each_read_within_a_budget() {
        use std::time::Duration;
        let lun = MemLun::new(64 * 1024, 512);
        let (dev, _script) = PathDev::memory("m0", &lun);
        let lat = dev.timed_reads(5, Duration::from_secs(10)).unwrap();
        assert_eq!(lat.len(), 5);
        // Past its budget the measurement stops: a path timeout.
        let e = dev.timed_reads(1000, Duration::from_nanos(1)).unwrap_err();
        assert_eq!(e.class, ErrorClass::Path);
        assert!(e.to_string().contains("latency reads done"), "{e}");
    }

    #[test]
    fn client_error_by_class() {
        assert_eq!(
            err(ErrorClass::Path, libc::ENOSPC).client_error(),
            IoError::Io
        );
        assert_eq!(
            err(ErrorClass::Unsupported, libc::EIO).client_error(),
            IoError::NotSup
        );
        assert_eq!(
            err(ErrorClass::Lun, libc::ENOSPC).client_error(),
            IoError::NoSpc
        );
        assert_eq!(
            err(ErrorClass::Lun, libc::EROFS).client_error(),
            IoError::Perm
        );
        assert_eq!(err(ErrorClass::Lun, libc::EIO).client_error(), IoError::Io);
        assert_eq!(
            err(ErrorClass::Lun, libc::EOPNOTSUPP).client_error(),
            IoError::NotSup
        );
    }

    #[test]
    fn display_names_target_op_and_range() {
        let e = err(ErrorClass::Path, libc::EIO);
        let s = e.to_string();
        assert!(
            s.starts_with("/x/lun0.img: write of 512 bytes at offset 4096: "),
            "{s}"
        );
        assert!(s.contains("Input/output error"), "{s}");
        let e = TransportError::new(
            IoOp::Flush,
            0,
            0,
            "/x",
            ErrorClass::Path,
            io::Error::from_raw_os_error(libc::EIO),
        );
        assert!(e.to_string().starts_with("/x: flush: "), "{e}");
    }

    #[test]
    fn caps_intersect_and_advertise() {
        let all = TransportCaps {
            scsi_target: true,
            read_only: false,
            flush: true,
            volatile_cache: false,
            fua: true,
            trim: true,
            write_zeroes: true,
            fast_zero: true,
        };
        let nbd = TransportCaps {
            read_only: true,
            volatile_cache: true,
            ..TransportCaps::BASIC
        };
        let both = all.intersect(nbd);
        assert!(!both.scsi_target && !both.trim && !both.fast_zero);
        assert!(both.read_only && both.volatile_cache && both.flush && both.write_zeroes);
        assert_eq!(all.intersect(all), all);
        let e = all.export_caps();
        assert!(e.trim && e.fast_zero && e.multi_conn && !e.read_only);
        let e = both.export_caps();
        assert!(!e.trim && !e.fast_zero && e.read_only && e.write_zeroes);
        // No fast zero without write-zeroes.
        let no_wz = TransportCaps {
            write_zeroes: false,
            ..all
        };
        assert!(!no_wz.export_caps().fast_zero);
    }

    #[test]
    fn types_are_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<Transport>();
        check::<PathDev>();
        check::<TransportError>();
    }
}
