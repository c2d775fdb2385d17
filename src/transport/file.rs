//! The `file` transport: a path that is a regular file or a block device.
//!
//! * Opening is lazy and robust: [`FileTransport::new`] never fails. If the
//!   file cannot be opened (missing, permissions, ...), the transport is
//!   "not open" and every IO fails with an [`ErrorClass::Path`] error
//!   saying why (`"/x/lun0.img: read of 4096 bytes at offset 0: not open:
//!   No such file or directory (os error 2)"`). [`FileTransport::reopen`]
//!   (the checker calls it through [`FileTransport::revalidate`] once the
//!   path checks healthy) opens it.
//! * The IO handle lives in an [`ArcSwapOption`]: IO takes a reference
//!   without locking and keeps it across its syscalls, so a reopen never
//!   waits for IO and IO never waits for a reopen (IO in flight finishes on
//!   the old handle).
//! * IO is buffered (`pread`/`pwrite`), looping on short transfers. A read
//!   that hits end of file is an error, never silent zeroes.
//! * With `direct yes` ([`FileTransport::with_direct`]) the IO handle is
//!   opened with `O_DIRECT`: requests aligned to the logical block size
//!   (`BLKSSZGET` on a block device, statx's `STATX_DIOALIGN` on a file,
//!   else `st_blksize` within 512..=4096) go straight from the request's
//!   buffer (an aligned [`crate::export::IoBuf`]); others through an
//!   aligned bounce buffer ([`super::bounce`]). The page-cache read fast
//!   path ([`FileTransport::read_cached`]) is off. A filesystem that
//!   refuses `O_DIRECT` fails the open with a message saying so.
//! * FUA is a write followed by `fdatasync`; flush is `fdatasync`.
//! * Trim punches a hole (`fallocate(PUNCH_HOLE|KEEP_SIZE)`) in a regular
//!   file and issues `BLKDISCARD` on a block device.
//! * Write-zeroes: see [`FileTransport::write_zeroes`].
//! * Size: the file's length, or `BLKGETSIZE64` for a block device.
//!
//! Error classes: see [`ErrorClass`]; for files everything is a path error
//! except "not supported" from trim and write-zeroes and a full
//! filesystem (`ENOSPC`, `EDQUOT`) under a write, a LUN error.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use nix::fcntl::{fallocate, FallocateFlags};

use super::bounce;
use super::{ErrorClass, IoOp, Probe, Revalidated, TransportCaps, TransportError};

/// Block device ioctls (linux/fs.h).
mod ioctl {
    // BLKGETSIZE64 is _IOR(0x12, 114, size_t) but always stores a u64.
    nix::ioctl_read_bad!(
        blkgetsize64,
        nix::request_code_read!(0x12, 114, std::mem::size_of::<libc::size_t>()),
        u64
    );
    // BLKDISCARD is _IO(0x12, 119) taking a pointer to {start, len}.
    nix::ioctl_write_ptr_bad!(blkdiscard, nix::request_code_none!(0x12, 119), [u64; 2]);
    // BLKSSZGET is _IO(0x12, 104) storing an int: the logical block size.
    nix::ioctl_read_bad!(blksszget, nix::request_code_none!(0x12, 104), libc::c_int);
}

/// Alignment of the checker's O_DIRECT buffer (covers any logical block
/// size up to 4 KiB and the usual page size).
const DIRECT_ALIGN: usize = 4096;

/// Largest buffer used to write zeroes by hand.
const ZERO_CHUNK: u64 = 1 << 20;

/// An open IO handle and what it refers to.
#[derive(Debug)]
pub(crate) struct Opened {
    file: File,
    blkdev: bool,
    dev: u64,
    ino: u64,
    rdev: u64,
    /// Set when IO on this handle failed with a path error: the next
    /// successful check reopens it.
    failed: AtomicBool,
    /// What the file or device can do, found at open.
    caps: TransportCaps,
    /// Cleared when a trim answered "not supported".
    trim_ok: AtomicBool,
    /// Cleared when `preadv2(RWF_NOWAIT)` answered "not supported" (tmpfs,
    /// some network filesystems): cached reads are not tried again on
    /// this handle, where each try would cost a failed syscall.
    nowait_ok: AtomicBool,
    /// The same for `pwritev2(RWF_NOWAIT)`: buffered writes without
    /// blocking need the filesystem's support (ext4, xfs, btrfs and block
    /// devices have it; others answer EOPNOTSUPP).
    nowait_write_ok: AtomicBool,
    /// Opened with O_DIRECT.
    direct: bool,
    /// With `direct`: the alignment O_DIRECT needs for offsets and
    /// lengths (1 when not direct).
    block_size: usize,
}

/// Why the transport is not open: the last open error, kept in a form that
/// can be turned back into an [`io::Error`] for every failed IO.
#[derive(Debug)]
struct OpenFailure {
    errno: Option<i32>,
    kind: io::ErrorKind,
    message: String,
}

impl OpenFailure {
    fn from_io(e: &io::Error) -> Self {
        OpenFailure {
            errno: e.raw_os_error(),
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}

/// The source of an IO error on a transport that is not open.
#[derive(Debug, Clone, thiserror::Error)]
#[error("not open: {reason}")]
pub struct NotOpen {
    /// Why the last open failed.
    pub reason: String,
    /// The last open's error number, if it came from the OS.
    pub errno: Option<i32>,
}

/// A regular file or block device. See the module docs.
pub struct FileTransport {
    path: PathBuf,
    /// `path` as text, for error messages.
    target: String,
    io: ArcSwapOption<Opened>,
    last_open_error: ArcSwapOption<OpenFailure>,
    /// O_DIRECT was refused for the checker's probe; probe buffered.
    direct_refused: AtomicBool,
    /// `direct yes`: the IO handle uses O_DIRECT.
    direct: bool,
    /// The direct handle's logical block size, kept from the last open
    /// (512 before one); 1 when not direct.
    block_size: AtomicUsize,
}

impl fmt::Debug for FileTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileTransport")
            .field("path", &self.path)
            .field("open", &self.is_open())
            .finish_non_exhaustive()
    }
}

pub(crate) fn errno_error(errno: i32) -> io::Error {
    io::Error::from_raw_os_error(errno)
}

fn to_off(v: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(v).map_err(|_| errno_error(libc::EOVERFLOW))
}

/// "Not supported" from fallocate or an ioctl: try something else.
pub(crate) fn is_unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(n) if n == libc::EOPNOTSUPP || n == libc::ENOTSUP || n == libc::ENOSYS || n == libc::ENODEV || n == libc::ENOTTY)
}

/// The error class of a failed operation on a file (see [`ErrorClass`]).
fn classify(op: IoOp, e: &io::Error) -> ErrorClass {
    let notsup = matches!(e.raw_os_error(), Some(n) if n == libc::EOPNOTSUPP || n == libc::ENOTSUP);
    // A full filesystem (or quota) under a write is the LUN's state, as
    // BLK_STS_NOSPC is for dm-multipath: every path to the file sees it,
    // so failing the path would only turn ENOSPC into EIO or queueing.
    let nospace = matches!(e.raw_os_error(), Some(n) if n == libc::ENOSPC || n == libc::EDQUOT);
    let writes = matches!(
        op,
        IoOp::Write | IoOp::Flush | IoOp::WriteZeroes | IoOp::Trim
    );
    if notsup && matches!(op, IoOp::Trim | IoOp::WriteZeroes) {
        ErrorClass::Unsupported
    } else if nospace && writes {
        ErrorClass::Lun
    } else {
        ErrorClass::Path
    }
}

/// The error for a filesystem that refuses O_DIRECT at open (EINVAL),
/// naming the file; other errors are returned as they are.
fn direct_open_error(path: &Path, e: io::Error) -> io::Error {
    if e.raw_os_error() != Some(libc::EINVAL) {
        return e;
    }
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "{}: cannot open with O_DIRECT ({e}): direct yes needs a filesystem with \
             O_DIRECT (tmpfs has none)",
            path.display()
        ),
    )
}

/// Largest logical block size believed from a filesystem for O_DIRECT.
const MAX_DIRECT_BLOCK: usize = 64 * 1024;

/// The offset and length alignment O_DIRECT needs on a regular file:
/// statx's `STATX_DIOALIGN` (Linux 6.1+), else the filesystem's preferred
/// IO size (`st_blksize`) within 512..=4096 (a multiple of the real
/// requirement on the usual filesystems, so always accepted).
fn file_dio_align(file: &File, blksize: u64) -> usize {
    let fallback = usize::try_from(blksize).unwrap_or(4096).clamp(512, 4096);
    // SAFETY: `statx` is a plain C struct of integers, for which all
    // zero bytes are a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the fd is open for the lifetime of `file`; the path is an
    // empty NUL-terminated string, as AT_EMPTY_PATH asks; `stx` is a live,
    // writable statx the kernel fills.
    let r = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if r != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 || stx.stx_dio_offset_align == 0 {
        return fallback;
    }
    (stx.stx_dio_offset_align as usize)
        .next_power_of_two()
        .min(MAX_DIRECT_BLOCK)
}

fn open_io(path: &Path, direct: bool) -> io::Result<Opened> {
    let flags = libc::O_CLOEXEC | if direct { libc::O_DIRECT } else { 0 };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(flags)
        .open(path)
        .map_err(|e| {
            if direct {
                direct_open_error(path, e)
            } else {
                e
            }
        })?;
    let meta = file.metadata()?;
    let ft = meta.file_type();
    if !ft.is_file() && !ft.is_block_device() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file or block device",
        ));
    }
    let caps = if ft.is_block_device() {
        blockdev_caps(meta.rdev(), false)
    } else {
        regular_file_caps(&file, meta.len())
    };
    let block_size = match (direct, ft.is_block_device()) {
        (false, _) => 1,
        (true, true) => blk_sector_size(&file)?,
        (true, false) => file_dio_align(&file, meta.blksize()),
    };
    Ok(Opened {
        file,
        blkdev: ft.is_block_device(),
        dev: meta.dev(),
        ino: meta.ino(),
        rdev: meta.rdev(),
        failed: AtomicBool::new(false),
        trim_ok: AtomicBool::new(caps.trim),
        nowait_ok: AtomicBool::new(!direct),
        nowait_write_ok: AtomicBool::new(!direct),
        direct,
        block_size,
        caps,
    })
}

/// A regular file's capabilities: the page cache is its volatile cache;
/// trim and fast zeroing need hole punching, which is probed past the end
/// of the file (`KEEP_SIZE`: nothing is read, written or allocated).
fn regular_file_caps(file: &File, size: u64) -> TransportCaps {
    let at = size.div_ceil(4096).saturating_add(1).saturating_mul(4096);
    let punch = falloc(
        file,
        FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
        at,
        4096,
    );
    let holes = !matches!(&punch, Err(e) if is_unsupported(e));
    TransportCaps {
        trim: holes,
        fast_zero: holes,
        ..TransportCaps::BASIC
    }
}

/// What a block device's request queue says it can do (sysfs
/// `/sys/dev/block/MAJ:MIN/queue`, the whole disk's for a partition).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueLimits {
    /// `discard_max_bytes` > 0.
    pub discard: bool,
    /// `write_zeroes_max_bytes` > 0: zeroing without writing zeroes.
    pub write_zeroes: bool,
    /// `write_cache` is "write back".
    pub write_back: bool,
    /// The device's `ro` is 1.
    pub read_only: bool,
}

/// Reads the queue limits of block device `rdev`; `None` if sysfs does
/// not have them.
pub(crate) fn queue_limits(rdev: u64) -> Option<QueueLimits> {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    let dev = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    // A partition's directory sits in its disk's, which has the queue.
    let queue = if dev.join("partition").exists() {
        dev.join("../queue")
    } else {
        dev.join("queue")
    };
    let text = |p: PathBuf| std::fs::read_to_string(p).ok();
    let num = |f: &str| text(queue.join(f)).and_then(|t| t.trim().parse::<u64>().ok());
    let discard = num("discard_max_bytes")? > 0;
    Some(QueueLimits {
        discard,
        write_zeroes: num("write_zeroes_max_bytes").unwrap_or(0) > 0,
        write_back: text(queue.join("write_cache")).is_none_or(|t| t.trim() == "write back"),
        read_only: text(dev.join("ro")).is_some_and(|t| t.trim() == "1"),
    })
}

/// A block device's capabilities from its queue limits (all of them if
/// sysfs does not say).
pub(crate) fn blockdev_caps(rdev: u64, scsi_target: bool) -> TransportCaps {
    let q = queue_limits(rdev).unwrap_or(QueueLimits {
        discard: true,
        write_zeroes: true,
        write_back: true,
        read_only: false,
    });
    TransportCaps {
        scsi_target,
        read_only: q.read_only,
        volatile_cache: q.write_back,
        trim: q.discard,
        fast_zero: q.write_zeroes,
        ..TransportCaps::BASIC
    }
}

/// `pread` until `buf` is full; end of file first is an error.
pub(crate) fn read_full(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0usize;
    while done < buf.len() {
        let at = offset
            .checked_add(done as u64)
            .ok_or_else(|| errno_error(libc::EOVERFLOW))?;
        match file.read_at(&mut buf[done..], at) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "short read: end of file at offset {at} after {done} of {} bytes",
                        buf.len()
                    ),
                ))
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Discards a range: BLKDISCARD on a block device, a hole punch on a file.
pub(crate) fn discard(file: &File, blkdev: bool, offset: u64, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    if blkdev {
        blk_discard(file, offset, len)
    } else {
        falloc(
            file,
            FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    }
}

/// How far the fast ways of zeroing got.
pub(crate) enum FastZero {
    Done,
    /// Not zeroed; why each fast way was not available.
    NotFast(Vec<String>),
}

/// The fast ways to make a range read back as zeroes, shared by the file
/// and SCSI transports: with `may_unmap` a hole punch (on a block device,
/// the kernel's zero-out that never falls back to writing zeroes), then
/// `FALLOC_FL_ZERO_RANGE` (fast on files; on a block device it may fall
/// back to writing zeroes, so not when `fast_only`).
pub(crate) fn zero_fast(
    file: &File,
    blkdev: bool,
    offset: u64,
    len: u64,
    may_unmap: bool,
    fast_only: bool,
) -> io::Result<FastZero> {
    let keep = FallocateFlags::FALLOC_FL_KEEP_SIZE;
    let mut why_not = Vec::new();
    if may_unmap {
        match falloc(
            file,
            FallocateFlags::FALLOC_FL_PUNCH_HOLE | keep,
            offset,
            len,
        ) {
            Ok(()) => return Ok(FastZero::Done),
            Err(e) if is_unsupported(&e) => why_not.push(format!("punch hole: {e}")),
            Err(e) => return Err(e),
        }
    }
    if !(blkdev && fast_only) {
        match falloc(
            file,
            FallocateFlags::FALLOC_FL_ZERO_RANGE | keep,
            offset,
            len,
        ) {
            Ok(()) => return Ok(FastZero::Done),
            Err(e) if is_unsupported(&e) => why_not.push(format!("zero range: {e}")),
            Err(e) => return Err(e),
        }
    }
    Ok(FastZero::NotFast(why_not))
}

/// The error for a FAST_ZERO request that cannot be fast.
pub(crate) fn cannot_zero_quickly(why_not: &[String]) -> io::Error {
    let reason = if why_not.is_empty() {
        "no fast zeroing without unmapping on a block device".to_string()
    } else {
        why_not.join("; ")
    };
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!("cannot zero quickly ({reason})"),
    )
}

/// `pwrite` until all of `buf` is written.
pub(crate) fn write_full(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    let mut done = 0usize;
    while done < buf.len() {
        let at = offset
            .checked_add(done as u64)
            .ok_or_else(|| errno_error(libc::EOVERFLOW))?;
        match file.write_at(&buf[done..], at) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!(
                        "short write: nothing written at offset {at} after {done} of {} bytes",
                        buf.len()
                    ),
                ))
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub(crate) fn falloc(file: &File, mode: FallocateFlags, offset: u64, len: u64) -> io::Result<()> {
    let (off, len) = (to_off(offset)?, to_off(len)?);
    loop {
        match fallocate(file.as_raw_fd(), mode, off, len) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => return r.map_err(io::Error::from),
        }
    }
}

pub(crate) fn blk_size(file: &File) -> io::Result<u64> {
    let mut size = 0u64;
    // SAFETY: the fd is open for the lifetime of `file`, and BLKGETSIZE64
    // writes exactly one u64 through the pointer, which points to a live,
    // writable u64.
    unsafe { ioctl::blkgetsize64(file.as_raw_fd(), &mut size) }.map_err(io::Error::from)?;
    Ok(size)
}

pub(crate) fn blk_sector_size(file: &File) -> io::Result<usize> {
    let mut size: libc::c_int = 0;
    // SAFETY: the fd is open for the lifetime of `file`, and BLKSSZGET
    // writes exactly one int through the pointer, which points to a live,
    // writable c_int.
    unsafe { ioctl::blksszget(file.as_raw_fd(), &mut size) }.map_err(io::Error::from)?;
    usize::try_from(size)
        .ok()
        .filter(|s| *s > 0)
        .ok_or_else(|| errno_error(libc::EINVAL))
}

pub(crate) fn blk_discard(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let range = [offset, len];
    // SAFETY: the fd is open for the lifetime of `file`, and BLKDISCARD
    // only reads two u64s (start, length) through the pointer, which
    // points to a live [u64; 2].
    unsafe { ioctl::blkdiscard(file.as_raw_fd(), &range) }.map_err(io::Error::from)?;
    Ok(())
}

impl FileTransport {
    /// The IO handle as a raw descriptor for an engine that submits IO
    /// itself ([`super::RawIo`]); `None` while not open.
    pub(crate) fn raw_io(&self) -> Option<super::RawIo> {
        let o = self.io.load_full()?;
        let (align, mem_align) = if o.direct {
            (o.block_size, bounce::MEM_ALIGN.max(o.block_size))
        } else {
            (1, 1)
        };
        Some(super::RawIo {
            fd: o.file.as_raw_fd(),
            align,
            mem_align,
            handle: super::RawHandle::File(o),
        })
    }

    /// A transport for `path`, opened now if possible. If the open fails,
    /// the transport is "not open" (IO fails saying why) until
    /// [`FileTransport::reopen`] succeeds.
    pub fn new(path: impl Into<PathBuf>) -> FileTransport {
        FileTransport::with_direct(path, false)
    }

    /// Like [`FileTransport::new`]; with `direct` the IO handle uses
    /// O_DIRECT (`direct yes`, see the module docs).
    pub fn with_direct(path: impl Into<PathBuf>, direct: bool) -> FileTransport {
        let t = FileTransport::unopened(path.into(), direct);
        if let Err(e) = t.reopen() {
            tracing::warn!(path = %t.target, "file path not open: {e}");
        }
        t
    }

    /// Like [`FileTransport::new`], but fails if the file cannot be opened.
    pub fn open(path: impl Into<PathBuf>) -> Result<FileTransport, TransportError> {
        FileTransport::open_with(path, false)
    }

    /// Like [`FileTransport::with_direct`], but fails if the file cannot
    /// be opened.
    pub fn open_with(
        path: impl Into<PathBuf>,
        direct: bool,
    ) -> Result<FileTransport, TransportError> {
        let t = FileTransport::unopened(path.into(), direct);
        t.reopen()?;
        Ok(t)
    }

    fn unopened(path: PathBuf, direct: bool) -> FileTransport {
        FileTransport {
            target: path.display().to_string(),
            path,
            io: ArcSwapOption::empty(),
            last_open_error: ArcSwapOption::empty(),
            direct_refused: AtomicBool::new(false),
            direct,
            block_size: AtomicUsize::new(if direct { 512 } else { 1 }),
        }
    }

    /// True for `direct yes` (the IO handle uses O_DIRECT).
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// The alignment of offsets and lengths IO goes straight to the file
    /// with: the logical block size for a direct handle (from its last
    /// open), 1 for buffered IO.
    pub fn block_size(&self) -> usize {
        self.block_size.load(Ordering::Relaxed).max(1)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `"file <path>"` (`"file <path> (direct)"` with O_DIRECT).
    pub fn describe(&self) -> String {
        if self.direct {
            format!("file {} (direct)", self.target)
        } else {
            format!("file {}", self.target)
        }
    }

    pub fn is_open(&self) -> bool {
        self.io.load().is_some()
    }

    /// True if the open IO handle is a block device (false if not open).
    pub fn is_block_device(&self) -> bool {
        self.io.load().as_ref().is_some_and(|o| o.blkdev)
    }

    /// Found at open (see [`TransportCaps`]); [`TransportCaps::BASIC`]
    /// while not open.
    pub fn caps(&self) -> TransportCaps {
        match self.io.load().as_deref() {
            Some(o) => TransportCaps {
                trim: o.caps.trim && o.trim_ok.load(Ordering::Relaxed),
                ..o.caps
            },
            None => TransportCaps::BASIC,
        }
    }

    fn error(
        &self,
        op: IoOp,
        offset: u64,
        len: u64,
        class: ErrorClass,
        e: io::Error,
    ) -> TransportError {
        TransportError::new(op, offset, len, self.target.clone(), class, e)
    }

    /// The IO handle, or the path error for IO on a transport not open.
    fn handle(&self, op: IoOp, offset: u64, len: u64) -> Result<Arc<Opened>, TransportError> {
        if let Some(o) = self.io.load_full() {
            return Ok(o);
        }
        let why = self.last_open_error.load_full();
        let (kind, not_open) = match why.as_deref() {
            Some(f) => (
                f.kind,
                NotOpen {
                    reason: f.message.clone(),
                    errno: f.errno,
                },
            ),
            None => (
                io::ErrorKind::NotFound,
                NotOpen {
                    reason: "never opened".to_string(),
                    errno: None,
                },
            ),
        };
        Err(self.error(
            op,
            offset,
            len,
            ErrorClass::Path,
            io::Error::new(kind, not_open),
        ))
    }

    /// Turn an IO error on `o` into a [`TransportError`], marking the
    /// handle for reopening if it is a path error.
    pub(crate) fn io_error(
        &self,
        o: &Opened,
        op: IoOp,
        offset: u64,
        len: u64,
        e: io::Error,
    ) -> TransportError {
        let class = classify(op, &e);
        if class == ErrorClass::Path {
            o.failed.store(true, Ordering::Relaxed);
        }
        self.error(op, offset, len, class, e)
    }

    pub fn size(&self) -> Result<u64, TransportError> {
        let o = self.handle(IoOp::Size, 0, 0)?;
        let r = if o.blkdev {
            blk_size(&o.file)
        } else {
            o.file.metadata().map(|m| m.len())
        };
        r.map_err(|e| self.io_error(&o, IoOp::Size, 0, 0, e))
    }

    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), TransportError> {
        let len = buf.len() as u64;
        let o = self.handle(IoOp::Read, offset, len)?;
        let r = if !o.direct
            || bounce::aligned(buf.as_ptr() as usize, buf.len(), offset, o.block_size)
        {
            read_full(&o.file, buf, offset)
        } else {
            bounce::read(&o.file, buf, offset, o.block_size)
        };
        r.map_err(|e| self.io_error(&o, IoOp::Read, offset, len, e))
    }

    /// Reads `buf` from the page cache without blocking, if all of it is
    /// there: `Some(())` when done, `None` when the read would have to
    /// wait for the device (or anything else is off: not open, partial,
    /// an error), so the caller reads the normal way on an IO thread,
    /// where errors are classified. Always `None` on a direct handle.
    pub fn read_cached(&self, buf: &mut [u8], offset: u64) -> Option<()> {
        let o = self.io.load();
        let o = o.as_ref()?;
        if o.direct || o.failed.load(Ordering::Relaxed) || !o.nowait_ok.load(Ordering::Relaxed) {
            return None;
        }
        let off = libc::off_t::try_from(offset).ok()?;
        let iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: `iov` describes `buf`, which is valid for writes of
        // `buf.len()` bytes and outlives the call; the fd is open for as
        // long as `o` (an Arc of the handle) lives.
        let n = unsafe { libc::preadv2(o.file.as_raw_fd(), &iov, 1, off, libc::RWF_NOWAIT) };
        if n < 0 {
            let errno = io::Error::last_os_error().raw_os_error();
            if matches!(errno, Some(libc::EOPNOTSUPP) | Some(libc::EINVAL)) {
                o.nowait_ok.store(false, Ordering::Relaxed);
            }
            return None;
        }
        (usize::try_from(n).ok()? == buf.len()).then_some(())
    }

    /// Writes `buf` into the page cache without blocking, if the kernel
    /// can take all of it now: `Some(())` when done, `None` when the write
    /// would have to wait (dirty-page throttling, a page to read first, a
    /// lock) or anything else is off (not open, partial, an error), so the
    /// caller writes the normal way, where errors are classified. A
    /// partial write is harmless: the normal way writes the same bytes
    /// again. Always `None` on a direct handle. Not stable storage: the
    /// caller keeps FUA writes off this path.
    pub fn write_cached(&self, buf: &[u8], offset: u64) -> Option<()> {
        let o = self.io.load();
        let o = o.as_ref()?;
        if o.direct
            || o.failed.load(Ordering::Relaxed)
            || !o.nowait_write_ok.load(Ordering::Relaxed)
        {
            return None;
        }
        let off = libc::off_t::try_from(offset).ok()?;
        let iov = libc::iovec {
            iov_base: buf.as_ptr().cast_mut().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: `iov` describes `buf`, which is valid for reads of
        // `buf.len()` bytes and outlives the call (the kernel only reads
        // through it); the fd is open for as long as `o` lives.
        let n = unsafe { libc::pwritev2(o.file.as_raw_fd(), &iov, 1, off, libc::RWF_NOWAIT) };
        if n < 0 {
            let errno = io::Error::last_os_error().raw_os_error();
            if matches!(errno, Some(libc::EOPNOTSUPP) | Some(libc::EINVAL)) {
                o.nowait_write_ok.store(false, Ordering::Relaxed);
            }
            return None;
        }
        (usize::try_from(n).ok()? == buf.len()).then_some(())
    }

    pub fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> Result<(), TransportError> {
        let len = buf.len() as u64;

        let o = self.handle(IoOp::Write, offset, len)?;
        let r = if !o.direct
            || bounce::aligned(buf.as_ptr() as usize, buf.len(), offset, o.block_size)
        {
            write_full(&o.file, buf, offset)
        } else {
            bounce::write(&o.file, buf, offset, o.block_size)
        };
        r.and_then(|()| if fua { o.file.sync_data() } else { Ok(()) })
            .map_err(|e| self.io_error(&o, IoOp::Write, offset, len, e))
    }

    pub fn flush(&self) -> Result<(), TransportError> {
        let o = self.handle(IoOp::Flush, 0, 0)?;
        o.file
            .sync_data()
            .map_err(|e| self.io_error(&o, IoOp::Flush, 0, 0, e))
    }

    pub fn trim(&self, offset: u64, len: u64) -> Result<(), TransportError> {
        let o = self.handle(IoOp::Trim, offset, len)?;
        discard(&o.file, o.blkdev, offset, len).map_err(|e| {
            let e = self.io_error(&o, IoOp::Trim, offset, len, e);
            if e.class == ErrorClass::Unsupported {
                o.trim_ok.store(false, Ordering::Relaxed);
            }
            e
        })
    }

    /// Make `len` bytes at `offset` read back as zeroes.
    ///
    /// * With `may_unmap`, first punch a hole (`fallocate(PUNCH_HOLE)`;
    ///   on a block device the kernel turns it into a zero-out that never
    ///   falls back to writing zeroes, and may unmap).
    /// * Then `fallocate(ZERO_RANGE)`: on a regular file this allocates
    ///   zeroed extents (fast); on a block device the kernel may fall back
    ///   to writing zeroes, so it is skipped when `fast_only`.
    /// * Last, write zero buffers, unless `fast_only`: then the result is
    ///   an [`ErrorClass::Unsupported`] error.
    pub fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        may_unmap: bool,
        fast_only: bool,
    ) -> Result<(), TransportError> {
        let op = IoOp::WriteZeroes;
        let o = self.handle(op, offset, len)?;
        if len == 0 {
            return Ok(());
        }
        match zero_fast(&o.file, o.blkdev, offset, len, may_unmap, fast_only) {
            Ok(FastZero::Done) => return Ok(()),
            Ok(FastZero::NotFast(why)) if fast_only => {
                return Err(self.error(
                    op,
                    offset,
                    len,
                    ErrorClass::Unsupported,
                    cannot_zero_quickly(&why),
                ))
            }
            Ok(FastZero::NotFast(_)) => {}
            Err(e) => return Err(self.io_error(&o, op, offset, len, e)),
        }
        self.write_zero_buffers(&o, offset, len)
            .map_err(|e| self.io_error(&o, op, offset, len, e))
    }

    fn write_zero_buffers(&self, o: &Opened, offset: u64, len: u64) -> io::Result<()> {
        let chunk = len.min(ZERO_CHUNK);
        // `chunk` is at most ZERO_CHUNK, so it fits in usize; aligned
        // memory for a direct handle.
        let zeroes = crate::export::IoBuf::zeroed(chunk as usize);
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(chunk) as usize;
            let at = offset
                .checked_add(done)
                .ok_or_else(|| errno_error(libc::EOVERFLOW))?;
            if o.direct && !bounce::aligned(zeroes.as_ptr() as usize, n, at, o.block_size) {
                bounce::write(&o.file, &zeroes[..n], at, o.block_size)?;
            } else {
                write_full(&o.file, &zeroes[..n], at)?;
            }
            done += n as u64;
        }
        Ok(())
    }

    /// Open the file again and swap the new handle in. On failure the old
    /// handle (if any) is kept and the error is remembered for IO on a
    /// transport that is not open.
    pub fn reopen(&self) -> Result<(), TransportError> {
        match open_io(&self.path, self.direct) {
            Ok(o) => {
                if self.direct {
                    self.block_size.store(o.block_size, Ordering::Relaxed);
                }
                self.io.store(Some(Arc::new(o)));
                self.last_open_error.store(None);
                Ok(())
            }
            Err(e) => {
                self.last_open_error
                    .store(Some(Arc::new(OpenFailure::from_io(&e))));
                Err(self.error(IoOp::Open, 0, 0, ErrorClass::Path, e))
            }
        }
    }

    /// Reopen if not open, if IO on the handle failed with a path error, or
    /// if the path now names a different file (deleted and recreated, or a
    /// block device that came back as a new node).
    pub fn revalidate(&self) -> Result<Revalidated, TransportError> {
        let reason = match self.io.load_full() {
            None => Some("was not open"),
            Some(o) if o.failed.load(Ordering::Relaxed) => Some("IO failed on the old handle"),
            Some(o) => {
                let meta = std::fs::metadata(&self.path)
                    .map_err(|e| self.error(IoOp::Open, 0, 0, ErrorClass::Path, e))?;
                if (meta.dev(), meta.ino(), meta.rdev()) != (o.dev, o.ino, o.rdev) {
                    Some("the path now names a different file")
                } else {
                    None
                }
            }
        };
        match reason {
            None => Ok(Revalidated::Unchanged),
            Some(reason) => {
                self.reopen()?;
                tracing::info!(path = %self.target, "reopened: {reason}");
                Ok(Revalidated::Reopened(reason.to_string()))
            }
        }
    }

    /// The checker's probe: open the path afresh (read-only, O_DIRECT
    /// unless the filesystem refused it before) and read up to `len`
    /// bytes at offset 0 into an aligned buffer. On a block device the
    /// length is rounded up to the logical block size. If O_DIRECT is
    /// refused with EINVAL (e.g. by some filesystems), fall back to a
    /// buffered read; the first probe that does says so in its note.
    pub fn probe(&self, len: usize) -> Result<Probe, TransportError> {
        let len = len.max(1);
        let mut note = None;
        if !self.direct_refused.load(Ordering::Relaxed) {
            match self.probe_once(len, true) {
                Err((op, e)) if e.raw_os_error() == Some(libc::EINVAL) => {
                    self.direct_refused.store(true, Ordering::Relaxed);
                    let msg = format!("O_DIRECT refused ({op}: {e}); using buffered reads");
                    tracing::warn!(path = %self.target, "{msg}");
                    note = Some(msg);
                }
                Err((op, e)) => return Err(self.error(op, 0, len as u64, ErrorClass::Path, e)),
                Ok(bytes) => {
                    return Ok(Probe {
                        bytes,
                        direct: true,
                        note: None,
                    })
                }
            }
        }
        match self.probe_once(len, false) {
            Ok(bytes) => Ok(Probe {
                bytes,
                direct: false,
                note,
            }),
            Err((op, e)) => Err(self.error(op, 0, len as u64, ErrorClass::Path, e)),
        }
    }

    /// One probe read; the error says which step failed.
    fn probe_once(&self, len: usize, direct: bool) -> Result<usize, (IoOp, io::Error)> {
        let flags = libc::O_CLOEXEC | if direct { libc::O_DIRECT } else { 0 };
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(flags)
            .open(&self.path)
            .map_err(|e| (IoOp::Open, e))?;
        let is_blk = file
            .metadata()
            .map_err(|e| (IoOp::Open, e))?
            .file_type()
            .is_block_device();
        let len = if is_blk {
            let sector = blk_sector_size(&file).map_err(|e| (IoOp::Check, e))?;
            len.div_ceil(sector) * sector
        } else {
            len
        };
        // Over-allocate and slice at an aligned offset: O_DIRECT needs an
        // aligned buffer, and this gets one without unsafe code.
        let mut raw = vec![0u8; len + DIRECT_ALIGN];
        let start = raw.as_ptr().align_offset(DIRECT_ALIGN).min(DIRECT_ALIGN);
        let buf = &mut raw[start..start + len];
        loop {
            match file.read_at(buf, 0) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err((IoOp::Check, e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    fn image(len: usize) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lun0.img");
        let mut f = File::create(&path).unwrap();
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        (dir, path)
    }

    /// tmpfs answers RWF_NOWAIT with EOPNOTSUPP: one try, then cached
    /// reads are not attempted on that handle (reads still work).
    #[test]
    fn cached_reads_stop_trying_where_nowait_is_not_supported() {
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let path = dir.path().join("lun0.img");
        std::fs::write(&path, vec![7u8; 8192]).unwrap();
        let t = FileTransport::open(&path).unwrap();
        let mut buf = vec![0u8; 4096];
        let first = t.read_cached(&mut buf, 0);
        let nowait =
            t.io.load()
                .as_ref()
                .map(|o| o.nowait_ok.load(Ordering::Relaxed));
        if first.is_none() {
            assert_eq!(nowait, Some(false), "an unsupported NOWAIT is remembered");
            assert_eq!(t.read_cached(&mut buf, 0), None);
        }
        t.read_at(&mut buf, 4096).unwrap();
        assert_eq!(buf, vec![7u8; 4096]);
        // A regular file on a filesystem that supports it keeps trying.
        let (_d, disk) = image(8192);
        let t = FileTransport::open(&disk).unwrap();
        let _ = t.read_cached(&mut buf, 0);
        let nowait =
            t.io.load()
                .as_ref()
                .map(|o| o.nowait_ok.load(Ordering::Relaxed));
        assert_ne!(nowait, None);
    }

    /// A buffered write the page cache takes at once completes without
    /// blocking where the filesystem supports RWF_NOWAIT writes (xfs,
    /// btrfs); elsewhere (ext4, tmpfs) the first try answers "not
    /// supported", which is remembered, and writes go the normal way.
    #[test]
    fn cached_writes_land_or_stop_trying() {
        for dir in [
            tempfile::tempdir().unwrap(),
            tempfile::tempdir_in("/dev/shm").unwrap(),
        ] {
            let path = dir.path().join("lun0.img");
            std::fs::write(&path, vec![0u8; 16384]).unwrap();
            let t = FileTransport::open(&path).unwrap();
            let flag = || {
                t.io.load()
                    .as_ref()
                    .map(|o| o.nowait_write_ok.load(Ordering::Relaxed))
            };
            match t.write_cached(&[5u8; 4096], 4096) {
                Some(()) => {
                    assert_eq!(flag(), Some(true));
                    let mut buf = vec![0u8; 4096];
                    t.read_at(&mut buf, 4096).unwrap();
                    assert_eq!(buf, vec![5u8; 4096], "a cached write reads back");
                }
                None => {
                    assert_eq!(flag(), Some(false), "an unsupported NOWAIT is remembered");
                    assert_eq!(t.write_cached(&[5u8; 4096], 4096), None);
                }
            }
            t.write_at(&[6u8; 4096], 8192, false).unwrap();
            let mut buf = vec![0u8; 4096];
            t.read_at(&mut buf, 8192).unwrap();
            assert_eq!(buf, vec![6u8; 4096]);
        }
        // Never on a direct handle.
        let (_d, disk) = image(8192);
        if let Ok(t) = FileTransport::open_with(&disk, true) {
            assert_eq!(t.write_cached(&[1u8; 4096], 0), None);
        }
    }

    #[test]
    fn read_write_flush_round_trip() {
        let (_d, path) = image(64 * 1024);
        let t = FileTransport::open(&path).unwrap();
        assert!(t.is_open());
        assert!(!t.is_block_device());
        assert_eq!(t.size().unwrap(), 64 * 1024);
        assert_eq!(t.describe(), format!("file {}", path.display()));

        let mut buf = vec![0u8; 4096];
        t.read_at(&mut buf, 8192).unwrap();
        assert_eq!(buf[0], (8192 % 251) as u8);

        let data = vec![0xabu8; 4096];
        t.write_at(&data, 4096, false).unwrap();
        t.write_at(&data[..512], 60 * 1024, true).unwrap();
        t.flush().unwrap();
        t.read_at(&mut buf, 4096).unwrap();
        assert_eq!(buf, data);
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(&on_disk[4096..8192], &data[..]);
        assert_eq!(&on_disk[60 * 1024..60 * 1024 + 512], &data[..512]);
    }

    #[test]
    fn trim_and_write_zeroes_read_back_zero() {
        let (_d, path) = image(5 * 64 * 1024);
        let t = FileTransport::open(&path).unwrap();
        let mut buf = vec![0xffu8; 64 * 1024];

        t.trim(0, 64 * 1024).unwrap();
        t.read_at(&mut buf, 0).unwrap();
        assert!(
            buf.iter().all(|b| *b == 0),
            "trim did not zero (punch hole)"
        );

        for (i, (may_unmap, fast_only)) in
            [(true, false), (false, false), (true, true), (false, true)]
                .into_iter()
                .enumerate()
        {
            let off = (i as u64 + 1) * 64 * 1024;
            match t.write_zeroes(off, 64 * 1024, may_unmap, fast_only) {
                Ok(()) => {}
                // Fast zeroing without unmap may be unsupported here.
                Err(e) if fast_only && e.class == ErrorClass::Unsupported => continue,
                Err(e) => panic!("{e}"),
            }
            buf.fill(0xff);
            t.read_at(&mut buf, off).unwrap();
            assert!(
                buf.iter().all(|b| *b == 0),
                "write_zeroes({may_unmap}, {fast_only})"
            );
        }
        assert_eq!(t.size().unwrap(), 5 * 64 * 1024, "size changed");
        // Zero-length requests are no-ops.
        t.trim(0, 0).unwrap();
        t.write_zeroes(0, 0, false, false).unwrap();
    }

    #[test]
    fn write_zero_buffers_fallback() {
        let (_d, path) = image(3 * 1024 * 1024);
        let t = FileTransport::open(&path).unwrap();
        let o = t.io.load_full().unwrap();
        let off = 1000;
        let len = ZERO_CHUNK * 2 + 123;
        t.write_zero_buffers(&o, off, len).unwrap();
        let on_disk = std::fs::read(&path).unwrap();
        assert!(on_disk[off as usize..(off + len) as usize]
            .iter()
            .all(|b| *b == 0));
        assert_ne!(on_disk[off as usize - 1], 0);
        assert_ne!(on_disk[(off + len) as usize], 0);
    }

    #[test]
    fn short_read_at_eof_is_an_error() {
        let (_d, path) = image(6000);
        let t = FileTransport::open(&path).unwrap();
        let mut buf = vec![0u8; 4096];
        let e = t.read_at(&mut buf, 4096).unwrap_err();
        assert_eq!(e.op, IoOp::Read);
        assert_eq!(e.class, ErrorClass::Path);
        assert_eq!((e.offset, e.len), (4096, 4096));
        assert_eq!(e.source.kind(), io::ErrorKind::UnexpectedEof);
        let msg = e.to_string();
        assert!(
            msg.contains("short read") && msg.contains("1904 of 4096"),
            "{msg}"
        );
    }

    #[test]
    fn missing_file_fails_with_path_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lun0.img");
        let t = FileTransport::new(&path);
        assert!(!t.is_open());
        let mut buf = [0u8; 512];
        let e = t.read_at(&mut buf, 0).unwrap_err();
        assert_eq!(e.class, ErrorClass::Path);
        assert_eq!(e.op, IoOp::Read);
        let msg = e.to_string();
        assert!(msg.starts_with(&path.display().to_string()), "{msg}");
        assert!(msg.contains("No such file or directory"), "{msg}");
        assert!(t.write_at(&buf, 0, true).unwrap_err().is_path_failure());
        assert!(t.size().is_err());
        assert!(FileTransport::open(&path).is_err());
    }

    #[test]
    fn reopen_after_the_file_appears() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lun0.img");
        let t = FileTransport::new(&path);
        let e = t.reopen().unwrap_err();
        assert_eq!(e.op, IoOp::Open);
        std::fs::write(&path, vec![7u8; 4096]).unwrap();
        assert_eq!(
            t.revalidate().unwrap(),
            Revalidated::Reopened("was not open".into())
        );
        let mut buf = [0u8; 16];
        t.read_at(&mut buf, 0).unwrap();
        assert_eq!(buf, [7u8; 16]);
        assert_eq!(t.revalidate().unwrap(), Revalidated::Unchanged);
    }

    #[test]
    fn revalidate_notices_a_replaced_file_and_failed_io() {
        let (dir, path) = image(4096);
        let t = FileTransport::open(&path).unwrap();
        // Replace the file: the old handle still works but is stale.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(dir.path().join("new"), vec![9u8; 4096]).unwrap();
        std::fs::rename(dir.path().join("new"), &path).unwrap();
        assert!(matches!(t.revalidate().unwrap(), Revalidated::Reopened(_)));
        let mut buf = [0u8; 4];
        t.read_at(&mut buf, 0).unwrap();
        assert_eq!(buf, [9u8; 4]);
        // A path error marks the handle for reopening.
        assert!(t.read_at(&mut buf, 4095).is_err());
        assert_eq!(
            t.revalidate().unwrap(),
            Revalidated::Reopened("IO failed on the old handle".into())
        );
        assert_eq!(t.revalidate().unwrap(), Revalidated::Unchanged);
    }

    #[test]
    fn failed_reopen_keeps_the_old_handle() {
        let (_d, path) = image(4096);
        let t = FileTransport::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(t.reopen().is_err());
        assert!(t.is_open());
        let mut buf = [0u8; 4];
        t.read_at(&mut buf, 0).unwrap();
    }

    #[test]
    fn probe_reads_the_first_block() {
        let (_d, path) = image(8192);
        let t = FileTransport::open(&path).unwrap();
        let p = t.probe(4096).unwrap();
        assert_eq!(p.bytes, 4096);
        let p = t.probe(512).unwrap();
        assert_eq!(p.bytes, 512);
        // A LUN smaller than the probe is fine.
        let (_d2, small) = image(100);
        let p = FileTransport::new(&small).probe(4096).unwrap();
        assert_eq!(p.bytes, 100);
    }

    #[test]
    fn probe_of_missing_file_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let t = FileTransport::new(dir.path().join("gone.img"));
        let e = t.probe(4096).unwrap_err();
        assert_eq!(e.op, IoOp::Open);
        assert!(e.to_string().contains("No such file or directory"), "{e}");
    }

    #[test]
    fn unreadable_file_is_not_open() {
        if nix::unistd::geteuid().is_root() {
            return; // root ignores permissions
        }
        let (_d, path) = image(4096);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
        let t = FileTransport::new(&path);
        assert!(!t.is_open());
        let e = t.read_at(&mut [0u8; 1], 0).unwrap_err();
        assert!(e.to_string().contains("Permission denied"), "{e}");
    }

    #[test]
    fn classification() {
        let notsup = || errno_error(libc::EOPNOTSUPP);
        assert_eq!(classify(IoOp::Trim, &notsup()), ErrorClass::Unsupported);
        assert_eq!(
            classify(IoOp::WriteZeroes, &notsup()),
            ErrorClass::Unsupported
        );
        assert_eq!(classify(IoOp::Write, &notsup()), ErrorClass::Path);
        assert_eq!(
            classify(IoOp::Trim, &errno_error(libc::EIO)),
            ErrorClass::Path
        );
        assert_eq!(
            classify(IoOp::Read, &errno_error(libc::ENOSPC)),
            ErrorClass::Path
        );
        for op in [IoOp::Write, IoOp::Flush, IoOp::WriteZeroes, IoOp::Trim] {
            for errno in [libc::ENOSPC, libc::EDQUOT] {
                assert_eq!(classify(op, &errno_error(errno)), ErrorClass::Lun);
            }
        }
    }

    #[test]
    fn caps_of_a_regular_file() {
        let (_d, path) = image(8192);
        let t = FileTransport::open(&path).unwrap();
        let c = t.caps();
        assert!(!c.scsi_target && !c.read_only);
        assert!(c.flush && c.fua && c.volatile_cache && c.write_zeroes);
        // Temporary directories are on filesystems that punch holes.
        assert!(c.trim && c.fast_zero, "{c:?}");
        // The hole probe past the end left the file alone.
        let data = std::fs::read(&path).unwrap();
        assert_eq!(data.len(), 8192);
        assert!(data.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
        let gone = FileTransport::new(path.with_extension("missing"));
        assert_eq!(gone.caps(), TransportCaps::BASIC);
    }

    #[test]
    fn directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let t = FileTransport::new(dir.path());
        assert!(!t.is_open());
    }
}

/// `direct yes`: the file transport's contract (what every transport
/// does: sized reads and writes, FUA, flush, trim, write-zeroes, errors
/// past the end) over an O_DIRECT handle, on the test directory's
/// filesystem (ext4/xfs under /tmp), aligned and through the bounce.
#[cfg(test)]
mod direct_tests {
    use super::*;
    use crate::transport::Transport;

    fn pattern(at: u64, n: usize) -> Vec<u8> {
        (0..n).map(|i| ((at as usize + i) % 251) as u8).collect()
    }

    fn direct_image(len: usize) -> (tempfile::TempDir, PathBuf, FileTransport) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lun0.img");
        std::fs::write(&path, pattern(0, len)).unwrap();
        let t = FileTransport::open_with(&path, true).unwrap();
        (dir, path, t)
    }

    #[test]
    fn opens_direct_with_a_block_size() {
        let (_d, path, t) = direct_image(1 << 20);
        assert!(t.is_direct());
        let bs = t.block_size();
        assert!(
            bs.is_power_of_two() && (512..=MAX_DIRECT_BLOCK).contains(&bs),
            "{bs}"
        );
        assert!(t.describe().ends_with("(direct)"));
        assert_eq!(Transport::File(t).block_size() as usize, bs);
        let buffered = FileTransport::open(&path).unwrap();
        assert_eq!((buffered.is_direct(), buffered.block_size()), (false, 1));
    }

    #[test]
    fn aligned_and_unaligned_reads_and_writes() {
        let len = 3 << 20;
        let (_d, path, t) = direct_image(len);
        let bs = t.block_size() as u64;
        // Aligned, straight from an aligned request buffer.
        let mut b = crate::export::IoBuf::zeroed(8192);
        t.read_at(&mut b, 4096).unwrap();
        assert_eq!(b.to_vec(), pattern(4096, 8192));
        // Unaligned offset, length and memory; one larger than a chunk.
        for (at, n) in [
            (1u64, 100usize),
            (bs - 3, 7),
            (12_345, 70_000),
            (bs, 1 + (1 << 20)),
            (100, (2 << 20) + 300),
        ] {
            let mut buf = vec![0u8; n + 1];
            t.read_at(&mut buf[1..], at).unwrap();
            assert_eq!(&buf[1..], &pattern(at, n)[..], "read {at}+{n}");
        }
        for (at, n, v) in [(5u64, 10usize, 0xa1u8), (bs * 3 + 1, 1 << 20, 0xb2)] {
            let data = vec![v; n + 1];
            t.write_at(&data[1..], at, false).unwrap();
            let mut back = vec![0u8; n + 2];
            t.read_at(&mut back, at - 1).unwrap();
            assert_eq!(back[0], pattern(at - 1, 1)[0], "byte before {at}");
            assert!(back[1..=n].iter().all(|&x| x == v), "written {at}+{n}");
            assert_eq!(back[n + 1], pattern(at + n as u64, 1)[0], "byte after");
        }
        // Aligned write with FUA, read back through the page cache.
        let mut w = crate::export::IoBuf::zeroed(4096);
        w.fill(0x5c);
        t.write_at(&w, 8192, true).unwrap();
        t.flush().unwrap();
        let disk = std::fs::read(&path).unwrap();
        assert!(disk[8192..12288].iter().all(|&x| x == 0x5c));
        assert!(disk[5..15].iter().all(|&x| x == 0xa1));
    }

    #[test]
    fn no_cached_reads_and_zeroes_and_trim_work() {
        let (_d, _p, t) = direct_image(1 << 20);
        let mut b = crate::export::IoBuf::zeroed(4096);
        assert_eq!(
            t.read_cached(&mut b, 0),
            None,
            "direct handles never read cached"
        );
        // Slow zeroes (no unmap, and then the zero buffers) and fast ones.
        t.write_zeroes(10, 9000, false, false).unwrap();
        t.write_zeroes(65536, 65536, true, false).unwrap();
        let mut back = vec![0u8; 1 << 20];
        t.read_at(&mut back, 0).unwrap();
        assert_eq!(&back[..10], &pattern(0, 10)[..]);
        assert!(back[10..9010].iter().all(|&x| x == 0));
        assert_eq!(back[9010], pattern(9010, 1)[0]);
        assert!(back[65536..131072].iter().all(|&x| x == 0));
        if t.caps().trim {
            t.trim(0, 4096).unwrap();
        }
        // Past the end: an error, never silent zeroes.
        let mut b = vec![0u8; 4096];
        let e = t.read_at(&mut b, (1 << 20) - 100).unwrap_err();
        assert_eq!(e.class, ErrorClass::Path);
    }

    #[test]
    fn write_zero_buffers_bounce_unaligned_ranges() {
        let (_d, _p, t) = direct_image(1 << 20);
        let o = t.io.load_full().unwrap();
        t.write_zero_buffers(&o, 3, 5000).unwrap();
        let mut back = vec![0u8; 8192];
        t.read_at(&mut back, 0).unwrap();
        assert_eq!(&back[..3], &pattern(0, 3)[..]);
        assert!(back[3..5003].iter().all(|&x| x == 0));
        assert_eq!(&back[5003..], &pattern(5003, 8192 - 5003)[..]);
    }

    #[test]
    fn a_refused_o_direct_names_the_file_and_the_filesystem() {
        let p = Path::new("/srv/x/lun0.img");
        let e = direct_open_error(p, errno_error(libc::EINVAL));
        assert_eq!(
            e.to_string(),
            "/srv/x/lun0.img: cannot open with O_DIRECT (Invalid argument (os error 22)): \
             direct yes needs a filesystem with O_DIRECT (tmpfs has none)"
        );
        // Other errors pass through unchanged.
        let e = direct_open_error(p, errno_error(libc::ENOENT));
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        // On a filesystem that refuses it (tmpfs before Linux 6.6) the
        // transport stays "not open" and IO says why.
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let path = dir.path().join("lun0.img");
        std::fs::write(&path, vec![0u8; 8192]).unwrap();
        let t = FileTransport::with_direct(&path, true);
        if !t.is_open() {
            let mut b = vec![0u8; 512];
            let msg = t.read_at(&mut b, 0).unwrap_err().to_string();
            assert!(
                msg.contains("direct yes needs a filesystem with O_DIRECT"),
                "{msg}"
            );
            assert!(msg.contains(&path.display().to_string()), "{msg}");
        }
    }
}
