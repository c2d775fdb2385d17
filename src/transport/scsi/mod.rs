//! The `scsi` transport: a kernel SCSI disk (`/dev/sdX`) reached as one
//! path of a multipath map.
//!
//! * Data: `pread`/`pwrite` with `O_DIRECT` on the block device node (see
//!   "SCSI paths" in docs/ARCHITECTURE.md for why not SG_IO). O_DIRECT
//!   needs the offset, the length and the memory aligned; request
//!   buffers ([`crate::export::IoBuf`]) are 4 KiB aligned, so an aligned
//!   request is read or written in place. Anything else goes through a
//!   per-thread aligned bounce buffer ([`bounce`]) in chunks of at most
//!   [`CHUNK`] bytes. Offsets and lengths that are not
//!   multiples of the logical block size (the engine advertises it as the
//!   export's minimum block size, so clients should not send them) are
//!   read through the covering blocks; writes read-modify-write the
//!   partial blocks.
//! * FUA is a write followed by `fdatasync`; flush is `fdatasync` (the
//!   kernel sends SYNCHRONIZE CACHE); trim is `BLKDISCARD`; write-zeroes
//!   is `fallocate` (the kernel's zero-out, WRITE SAME / unmap).
//! * Checks: TEST UNIT READY over SG_IO on a descriptor of its own
//!   ([`ScsiTransport::tur`]), or an O_DIRECT read of the first block(s)
//!   ([`ScsiTransport::probe`]).
//! * Errors are classified by errno the way dm-multipath classifies block
//!   status codes ([`classify`]): medium, target, reservation, protection
//!   and out-of-space errors belong to the LUN; everything else may be the
//!   path.

pub mod sgio;

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;

use super::bounce;
use super::file::{self, blk_sector_size, blk_size, errno_error, read_full, write_full};
use super::{ErrorClass, IoOp, Probe, Revalidated, TransportCaps, TransportError};
use crate::prio::{AluaFacts, SysfsAlua};
use crate::scsi::tur::{self, TurResult};

pub use super::bounce::{CHUNK, MEM_ALIGN};

/// The error class of a failed operation on a SCSI disk, from the errno
/// the block layer turned the SCSI outcome into (`blk_status_to_errno`),
/// following dm-multipath's `blk_path_error()`:
///
/// * `ENODATA` (medium error), `EREMOTEIO` (target error, e.g. ILLEGAL
///   REQUEST or write protected), `EBADE` (reservation conflict),
///   `EILSEQ` (protection information), `ENOSPC` (thin pool full),
///   `EINVAL` (a request the device cannot take, e.g. misaligned),
///   `EROFS` (write protected) and
///   `EOPNOTSUPP` outside trim/write-zeroes: [`ErrorClass::Lun`].
/// * `EOPNOTSUPP` / `ENOTSUP` from trim or write-zeroes:
///   [`ErrorClass::Unsupported`].
/// * Anything else (`EIO`, `ENOLINK` transport failure, `ETIMEDOUT`,
///   `ENXIO`/`ENODEV` device gone or offline, ...): [`ErrorClass::Path`].
pub fn classify(op: IoOp, errno: Option<i32>) -> ErrorClass {
    let Some(n) = errno else {
        return ErrorClass::Path;
    };
    let notsup = n == libc::EOPNOTSUPP || n == libc::ENOTSUP;
    if notsup && matches!(op, IoOp::Trim | IoOp::WriteZeroes) {
        return ErrorClass::Unsupported;
    }
    if notsup
        || [
            libc::ENODATA,
            libc::EREMOTEIO,
            libc::EBADE,
            libc::EILSEQ,
            libc::ENOSPC,
            libc::EINVAL,
            libc::EROFS,
        ]
        .contains(&n)
    {
        ErrorClass::Lun
    } else {
        ErrorClass::Path
    }
}

/// An open IO handle.
#[derive(Debug)]
pub(crate) struct Opened {
    file: File,
    blkdev: bool,
    /// Opened read-only (the device is write protected).
    read_only: bool,
    rdev: u64,
    ino: u64,
    failed: AtomicBool,
    /// What the disk can do, found at open.
    caps: TransportCaps,
    /// The disk's size in bytes at open.
    size_at_open: u64,
}

impl Opened {
    /// The disk's size now (a removed disk reads 0).
    fn current_size(&self) -> io::Result<u64> {
        if self.blkdev {
            blk_size(&self.file)
        } else {
            self.file.metadata().map(|m| m.len())
        }
    }
}

/// Static facts about the disk, from discovery.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScsiTarget {
    /// The device node, e.g. `/dev/sdb`.
    pub devnode: PathBuf,
    /// `H:C:T:L`.
    pub hctl: String,
    /// Logical block size if known (else asked of the device at open).
    pub block_size: Option<u32>,
    /// The SCSI layer's command timeout (sysfs `device/timeout`).
    pub timeout: Option<Duration>,
}

/// A SCSI disk. See the module docs.
pub struct ScsiTransport {
    target: ScsiTarget,
    name: String,
    io: ArcSwapOption<Opened>,
    last_open_error: ArcSwapOption<(Option<i32>, String)>,
    block_size: AtomicUsize,
}

impl fmt::Debug for ScsiTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScsiTransport")
            .field("target", &self.target)
            .field("open", &self.is_open())
            .finish_non_exhaustive()
    }
}

impl ScsiTransport {
    /// The O_DIRECT IO handle as a raw descriptor for an engine that
    /// submits IO itself ([`super::RawIo`]); `None` while not open, and
    /// for writes on a write-protected disk (the IO threads answer those).
    pub(crate) fn raw_io(&self, write: bool) -> Option<super::RawIo> {
        let o = self.io.load_full()?;
        if write && o.read_only {
            return None;
        }
        let bs = self.block_size();
        Some(super::RawIo {
            fd: std::os::fd::AsRawFd::as_raw_fd(&o.file),
            align: bs,
            mem_align: MEM_ALIGN.max(bs),
            handle: super::RawHandle::Scsi(o),
        })
    }

    /// A transport for the disk; opened now if possible, else "not open"
    /// until a check reopens it.
    pub fn new(target: ScsiTarget) -> ScsiTransport {
        let t = ScsiTransport {
            name: target.devnode.display().to_string(),
            block_size: AtomicUsize::new(target.block_size.map_or(512, |b| b as usize)),
            target,
            io: ArcSwapOption::empty(),
            last_open_error: ArcSwapOption::empty(),
        };
        if let Err(e) = t.reopen() {
            tracing::warn!(path = %t.name, "SCSI path not open: {e}");
        }
        t
    }

    pub fn target_info(&self) -> &ScsiTarget {
        &self.target
    }

    pub fn devnode(&self) -> &Path {
        &self.target.devnode
    }

    /// The logical block size (bytes; 512 until known).
    pub fn block_size(&self) -> usize {
        self.block_size.load(Ordering::Relaxed).max(1)
    }

    /// `"scsi /dev/sdb 2:0:0:1"`.
    pub fn describe(&self) -> String {
        if self.target.hctl.is_empty() {
            format!("scsi {}", self.name)
        } else {
            format!("scsi {} {}", self.name, self.target.hctl)
        }
    }

    pub fn target(&self) -> String {
        self.name.clone()
    }

    pub fn is_open(&self) -> bool {
        self.io.load().is_some()
    }

    /// Found at open from the disk's queue limits (see
    /// [`TransportCaps`]); a SCSI target either way.
    pub fn caps(&self) -> TransportCaps {
        match self.io.load().as_deref() {
            Some(o) => o.caps,
            None => TransportCaps {
                scsi_target: true,
                ..TransportCaps::BASIC
            },
        }
    }

    /// The SCSI layer's command timeout, the checker's default timeout.
    pub fn default_timeout(&self) -> Option<Duration> {
        self.target.timeout
    }

    fn error(&self, op: IoOp, offset: u64, len: u64, e: io::Error) -> TransportError {
        // A short transfer means the request went past the end of the
        // device: not the path's fault.
        let class = if matches!(
            e.kind(),
            io::ErrorKind::UnexpectedEof | io::ErrorKind::WriteZero
        ) {
            ErrorClass::Lun
        } else {
            classify(op, e.raw_os_error())
        };
        TransportError::new(op, offset, len, self.name.clone(), class, e)
    }

    /// A short transfer, or `ENOSPC` (what the block layer answers a write
    /// at or past a block device's end), for a request inside the disk as
    /// it was at open, while the disk is now smaller: the disk shrank or is
    /// going away (a hot-unplugged disk's capacity drops to 0 before its
    /// node goes). That is the path's failure, not the LUN's: another path
    /// still reaches the whole LUN. `ENOSPC` inside the disk's present size
    /// stays a LUN error (a thin pool out of space).
    fn shrank_under(&self, o: &Opened, offset: u64, len: u64, err: &TransportError) -> bool {
        let short = matches!(
            err.source.kind(),
            io::ErrorKind::UnexpectedEof | io::ErrorKind::WriteZero
        );
        if !short && err.errno() != Some(libc::ENOSPC) {
            return false;
        }
        let end = offset.saturating_add(len);
        end <= o.size_at_open && o.current_size().map_or(true, |now| end > now)
    }

    fn handle(&self, op: IoOp, offset: u64, len: u64) -> Result<Arc<Opened>, TransportError> {
        if let Some(o) = self.io.load_full() {
            return Ok(o);
        }
        let why = self.last_open_error.load_full();
        let (errno, reason) = why
            .as_deref()
            .cloned()
            .unwrap_or((None, "never opened".to_string()));
        Err(TransportError::new(
            op,
            offset,
            len,
            self.name.clone(),
            ErrorClass::Path,
            io::Error::new(
                io::ErrorKind::NotConnected,
                super::file::NotOpen { reason, errno },
            ),
        ))
    }

    pub(crate) fn io_error(
        &self,
        o: &Opened,
        op: IoOp,
        offset: u64,
        len: u64,
        e: io::Error,
    ) -> TransportError {
        let mut err = self.error(op, offset, len, e);
        if err.class == ErrorClass::Lun && self.shrank_under(o, offset, len, &err) {
            err.class = ErrorClass::Path;
        }
        if err.class == ErrorClass::Path {
            o.failed.store(true, Ordering::Relaxed);
        }
        err
    }

    /// Opens the IO handle: read-write with O_DIRECT, or read-only if the
    /// device is write protected (`EROFS`/`EACCES`); writes then fail as
    /// LUN errors (`EROFS`), not path errors.
    pub fn reopen(&self) -> Result<(), TransportError> {
        let open = |write: bool| {
            OpenOptions::new()
                .read(true)
                .write(write)
                .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
                .open(&self.target.devnode)
        };
        let r = match open(true) {
            Err(e) if matches!(e.raw_os_error(), Some(libc::EROFS) | Some(libc::EACCES)) => {
                open(false).map(|f| (f, true)).map_err(|_| e)
            }
            r => r.map(|f| (f, false)),
        }
        .and_then(|(file, read_only)| {
            let meta = file.metadata()?;
            let blkdev = meta.file_type().is_block_device();
            if blkdev {
                let bs = blk_sector_size(&file)?;
                self.block_size.store(bs, Ordering::Relaxed);
            }
            let size_at_open = if blkdev { blk_size(&file)? } else { meta.len() };
            let caps = if blkdev {
                file::blockdev_caps(meta.rdev(), true)
            } else {
                // A stand-in for a disk (tests): no queue to ask.
                TransportCaps {
                    scsi_target: true,
                    trim: true,
                    fast_zero: true,
                    ..TransportCaps::BASIC
                }
            };
            Ok(Opened {
                size_at_open,
                blkdev,
                read_only,
                rdev: meta.rdev(),
                ino: meta.ino(),
                file,
                failed: AtomicBool::new(false),
                caps: TransportCaps {
                    read_only: read_only || caps.read_only,
                    ..caps
                },
            })
        });
        match r {
            Ok(o) => {
                self.io.store(Some(Arc::new(o)));
                self.last_open_error.store(None);
                Ok(())
            }
            Err(e) => {
                self.last_open_error
                    .store(Some(Arc::new((e.raw_os_error(), e.to_string()))));
                Err(TransportError::new(
                    IoOp::Open,
                    0,
                    0,
                    self.name.clone(),
                    ErrorClass::Path,
                    e,
                ))
            }
        }
    }

    /// Reopens the IO handle if it is not open, IO failed on it with a
    /// path error, or the device node now names another device.
    pub fn revalidate(&self) -> Result<Revalidated, TransportError> {
        let reason = match self.io.load_full() {
            None => Some("was not open"),
            Some(o) if o.failed.load(Ordering::Relaxed) => Some("IO failed on the old handle"),
            Some(o) => {
                let meta = std::fs::metadata(&self.target.devnode).map_err(|e| {
                    TransportError::new(IoOp::Open, 0, 0, self.name.clone(), ErrorClass::Path, e)
                })?;
                let now = if o.blkdev { meta.rdev() } else { meta.ino() };
                let was = if o.blkdev { o.rdev } else { o.ino };
                (now != was).then_some("the device node now names another device")
            }
        };
        match reason {
            None => Ok(Revalidated::Unchanged),
            Some(reason) => {
                self.reopen()?;
                tracing::info!(path = %self.name, "reopened: {reason}");
                Ok(Revalidated::Reopened(reason.to_string()))
            }
        }
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

    /// Direct reads are never served from a cache.
    pub fn read_cached(&self, _buf: &mut [u8], _offset: u64) -> Option<()> {
        None
    }

    /// Direct writes never complete in a cache.
    pub fn write_cached(&self, _buf: &[u8], _offset: u64) -> Option<()> {
        None
    }

    fn aligned(&self, buf_addr: usize, len: usize, offset: u64) -> bool {
        bounce::aligned(buf_addr, len, offset, self.block_size())
    }

    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), TransportError> {
        let len = buf.len() as u64;
        let o = self.handle(IoOp::Read, offset, len)?;
        if buf.is_empty() {
            return Ok(());
        }
        let r = if self.aligned(buf.as_ptr() as usize, buf.len(), offset) {
            read_full(&o.file, buf, offset)
        } else {
            bounce::read(&o.file, buf, offset, self.block_size())
        };
        r.map_err(|e| self.io_error(&o, IoOp::Read, offset, len, e))
    }

    /// A write on a read-only handle: the LUN is write protected.
    fn check_writable(
        &self,
        o: &Opened,
        op: IoOp,
        offset: u64,
        len: u64,
    ) -> Result<(), TransportError> {
        if o.read_only {
            return Err(self.error(op, offset, len, errno_error(libc::EROFS)));
        }
        Ok(())
    }

    pub fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> Result<(), TransportError> {
        let len = buf.len() as u64;
        let o = self.handle(IoOp::Write, offset, len)?;
        self.check_writable(&o, IoOp::Write, offset, len)?;
        if buf.is_empty() {
            return Ok(());
        }
        let r = if self.aligned(buf.as_ptr() as usize, buf.len(), offset) {
            write_full(&o.file, buf, offset)
        } else {
            bounce::write(&o.file, buf, offset, self.block_size())
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
        self.check_writable(&o, IoOp::Trim, offset, len)?;
        file::discard(&o.file, o.blkdev, offset, len)
            .map_err(|e| self.io_error(&o, IoOp::Trim, offset, len, e))
    }

    /// Zeroes a range: with `may_unmap` a hole punch (on a block device the
    /// kernel's zero-out without fallback, which may unmap), else
    /// `FALLOC_FL_ZERO_RANGE` (the kernel's zero-out, falling back to
    /// writing zeroes, so not when `fast_only`), else zero buffers.
    pub fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        may_unmap: bool,
        fast_only: bool,
    ) -> Result<(), TransportError> {
        let op = IoOp::WriteZeroes;
        let o = self.handle(op, offset, len)?;
        self.check_writable(&o, op, offset, len)?;
        if len == 0 {
            return Ok(());
        }
        match file::zero_fast(&o.file, o.blkdev, offset, len, may_unmap, fast_only) {
            Ok(file::FastZero::Done) => return Ok(()),
            Ok(file::FastZero::NotFast(why)) if fast_only => {
                return Err(TransportError::new(
                    op,
                    offset,
                    len,
                    self.name.clone(),
                    ErrorClass::Unsupported,
                    file::cannot_zero_quickly(&why),
                ))
            }
            Ok(file::FastZero::NotFast(_)) => {}
            Err(e) => return Err(self.io_error(&o, op, offset, len, e)),
        }
        let mut at = offset;
        let end = offset.saturating_add(len);
        let zeroes = vec![0u8; CHUNK];
        while at < end {
            let n = (end - at).min(CHUNK as u64) as usize;
            if let Err(e) = self.write_at(&zeroes[..n], at, false) {
                return Err(self.io_error(&o, op, offset, len, e.source));
            }
            at += n as u64;
        }
        Ok(())
    }

    /// The checker's read: open the device afresh (read-only, O_DIRECT)
    /// and read `len` bytes (rounded up to the logical block size) at
    /// offset 0.
    pub fn probe(&self, len: usize) -> Result<Probe, TransportError> {
        let fail =
            |op, e| TransportError::new(op, 0, len as u64, self.name.clone(), ErrorClass::Path, e);
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(&self.target.devnode)
            .map_err(|e| fail(IoOp::Open, e))?;
        let bs = if file
            .metadata()
            .map_err(|e| fail(IoOp::Open, e))?
            .file_type()
            .is_block_device()
        {
            blk_sector_size(&file).map_err(|e| fail(IoOp::Check, e))?
        } else {
            self.block_size()
        };
        let n = len.max(1).div_ceil(bs) * bs;
        let bytes = bounce::with(n, MEM_ALIGN.max(bs), |b| loop {
            use std::os::unix::fs::FileExt;
            match file.read_at(&mut b[..n], 0) {
                Ok(got) => return Ok(got),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        })
        .map_err(|e| fail(IoOp::Check, e))?;
        Ok(Probe {
            bytes,
            direct: true,
            note: None,
        })
    }

    /// The kernel name of the disk ("sdb"): the device node's file name.
    pub fn devname(&self) -> Option<String> {
        self.target
            .devnode
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
    }

    /// What the `alua` prioritizer reads, asked of the device over SG_IO
    /// on a descriptor of its own: INQUIRY VPD page 0x83 (the path's
    /// target port group and relative target port) and REPORT TARGET PORT
    /// GROUPS. Each command is bounded by `timeout`.
    pub fn alua_facts(&self, timeout: Duration) -> Result<AluaFacts, String> {
        let file = sgio::open_for_commands(&self.target.devnode)
            .map_err(|e| format!("cannot open {}: {e}", self.name))?;
        let vpd =
            sgio::inquiry(&file, &self.name, Some(0x83), timeout).map_err(|e| e.to_string())?;
        let tpg = crate::scsi::vpd::target_port_group(&vpd).map_err(|e| e.to_string())?;
        let rel_port = crate::scsi::vpd::relative_target_port(&vpd).map_err(|e| e.to_string())?;
        let rtpg = sgio::report_target_port_groups(&file, &self.name, timeout)
            .map_err(|e| e.to_string())?;
        Ok(AluaFacts {
            rtpg,
            tpg,
            rel_port,
        })
    }

    /// The kernel's `access_state` and `preferred_path` of the disk
    /// (`/sys/block/DEV/device/`); `None` when `access_state` cannot be
    /// read (no ALUA device handler attached).
    pub fn sysfs_alua(&self) -> Option<SysfsAlua> {
        let dir = PathBuf::from("/sys/block")
            .join(self.devname()?)
            .join("device");
        let access_state = std::fs::read_to_string(dir.join("access_state")).ok()?;
        let preferred = std::fs::read_to_string(dir.join("preferred_path"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        Some(SysfsAlua {
            access_state: access_state.trim().to_string(),
            preferred,
        })
    }

    /// TEST UNIT READY over SG_IO on a descriptor of its own, retried and
    /// decided like multipath-tools' `tur` checker
    /// ([`crate::scsi::tur`]).
    pub fn tur(&self, timeout: Duration) -> TurResult {
        let file = match sgio::open_for_commands(&self.target.devnode) {
            Ok(f) => f,
            Err(e) => {
                return TurResult {
                    state: crate::model::CheckState::Down,
                    message: format!("tur: cannot open {}: {e}", self.name),
                }
            }
        };
        let (state, why, tries) = tur::run(|| sgio::test_unit_ready(&file, timeout));
        let mut message = why;
        if tries > 1 {
            message.push_str(&format!(" after {tries} commands"));
        }
        TurResult { state, message }
    }
}

#[cfg(test)]
mod tests;
