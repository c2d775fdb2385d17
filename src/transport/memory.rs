//! `memory`: a LUN held in memory, for tests.
//!
//! A [`MemLun`] is a byte store with a size and a logical block size,
//! shared in an `Arc`: several path devices can reach one LUN, as real
//! paths do. A [`MemoryTransport`] is one path to it, with a [`MemScript`]
//! handle a test keeps to script what the path does next:
//!
//! * [`MemScript::fail_next_path_error`]: the next IO fails with EIO,
//!   [`ErrorClass::Path`] (the engine fails the path and retries elsewhere);
//! * [`MemScript::fail_next_lun_error`]: the next IO fails with ENODATA
//!   (a medium error), [`ErrorClass::Lun`] (the client gets the error, the
//!   path stays up);
//! * [`MemScript::hang`]: every IO blocks until [`MemScript::release`];
//!   [`MemScript::wait_hung`] waits until some IO is blocked, so a test
//!   knows the IO reached the path;
//! * [`MemScript::set_offline`]: every IO and check fails with a path error
//!   until the path is put back online.
//!
//! Scripted outcomes apply to IO in the order it reaches the path: a hung
//! IO released after `fail_next_path_error` fails. Checks ([`Transport::probe`])
//! see only `set_offline`, never the IO script. Like every transport, it
//! is used through a [`PathDev`], so `fault` specs apply to it as well.
//!
//! IO outside the LUN fails with EINVAL ([`ErrorClass::Lun`]). Offsets
//! and lengths need not be block-aligned (the block size is only
//! advertised). There is no cache: [`Transport::read_cached`] always says
//! no, so every IO goes through the engine's IO threads.
//!
//! [`Transport::probe`]: super::Transport::probe
//! [`Transport::read_cached`]: super::Transport::read_cached
//! [`PathDev`]: super::PathDev

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};

use super::{ErrorClass, IoOp, Probe, Revalidated, TransportCaps, TransportError};

/// A LUN in memory. Cheap to clone; clones are the same LUN.
#[derive(Debug, Clone)]
pub struct MemLun {
    inner: Arc<LunInner>,
}

#[derive(Debug)]
struct LunInner {
    data: RwLock<Vec<u8>>,
    block_size: u32,
}

impl MemLun {
    /// A LUN of `size` zero bytes with this logical block size (at least 1).
    pub fn new(size: usize, block_size: u32) -> MemLun {
        MemLun {
            inner: Arc::new(LunInner {
                data: RwLock::new(vec![0; size]),
                block_size: block_size.max(1),
            }),
        }
    }

    pub fn size(&self) -> u64 {
        self.inner.data.read().len() as u64
    }

    pub fn block_size(&self) -> u32 {
        self.inner.block_size
    }

    /// The LUN's bytes in a range (clipped to the LUN), for tests to check.
    pub fn contents(&self, offset: u64, len: usize) -> Vec<u8> {
        let data = self.inner.data.read();
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let end = start.saturating_add(len).min(data.len());
        data[start..end].to_vec()
    }

    /// Writes bytes straight to the LUN (no path, no script), for test
    /// set-up. Bytes past the end are dropped.
    pub fn fill(&self, offset: u64, bytes: &[u8]) {
        let mut data = self.inner.data.write();
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let n = bytes.len().min(data.len() - start);
        data[start..start + n].copy_from_slice(&bytes[..n]);
    }
}

/// What a path does with the next IO, when scripted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scripted {
    PathError,
    LunError,
}

#[derive(Debug, Default)]
struct ScriptState {
    next: VecDeque<Scripted>,
    hang: bool,
    /// IOs blocked by `hang` right now.
    hung: usize,
    offline: bool,
    /// IOs that succeeded.
    ios: u64,
}

#[derive(Debug, Default)]
struct ScriptInner {
    state: Mutex<ScriptState>,
    changed: Condvar,
}

/// A test's handle on a memory path's behaviour. Cheap to clone; clones
/// script the same path. See the module docs.
#[derive(Debug, Clone, Default)]
pub struct MemScript {
    inner: Arc<ScriptInner>,
}

impl MemScript {
    /// The next IO on the path fails with a path error (EIO).
    pub fn fail_next_path_error(&self) {
        self.inner.state.lock().next.push_back(Scripted::PathError);
    }

    /// The next IO on the path fails with a LUN error (ENODATA, a medium
    /// error).
    pub fn fail_next_lun_error(&self) {
        self.inner.state.lock().next.push_back(Scripted::LunError);
    }

    /// From now on, IO on the path blocks until [`MemScript::release`].
    pub fn hang(&self) {
        self.inner.state.lock().hang = true;
    }

    /// Lets blocked IO go on (each then takes the next scripted outcome,
    /// if any), and new IO no longer blocks.
    pub fn release(&self) {
        self.inner.state.lock().hang = false;
        self.inner.changed.notify_all();
    }

    /// IOs blocked by [`MemScript::hang`] right now.
    pub fn hung(&self) -> usize {
        self.inner.state.lock().hung
    }

    /// Waits until at least `n` IOs are blocked by [`MemScript::hang`];
    /// false if that did not happen within `timeout`.
    pub fn wait_hung(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.inner.state.lock();
        while st.hung < n {
            if self.inner.changed.wait_until(&mut st, deadline).timed_out() {
                return st.hung >= n;
            }
        }
        true
    }

    /// While offline, every IO and check on the path fails with a path
    /// error (EIO), and the transport reports itself not open.
    pub fn set_offline(&self, offline: bool) {
        self.inner.state.lock().offline = offline;
    }

    fn is_offline(&self) -> bool {
        self.inner.state.lock().offline
    }

    /// IOs the path completed successfully (reads, writes, flushes, trims,
    /// write-zeroes; not checks).
    pub fn ios(&self) -> u64 {
        self.inner.state.lock().ios
    }

    /// Applies the script to an IO about to start: blocks while hung, then
    /// the offline state, then the next scripted outcome.
    fn before_io(&self) -> Result<(), Scripted> {
        let mut st = self.inner.state.lock();
        if st.hang {
            st.hung += 1;
            self.inner.changed.notify_all();
            while st.hang {
                self.inner.changed.wait(&mut st);
            }
            st.hung -= 1;
        }
        if st.offline {
            return Err(Scripted::PathError);
        }
        match st.next.pop_front() {
            Some(s) => Err(s),
            None => Ok(()),
        }
    }

    fn served(&self) {
        self.inner.state.lock().ios += 1;
    }
}

/// One path to a [`MemLun`].
#[derive(Debug)]
pub struct MemoryTransport {
    name: String,
    lun: MemLun,
    script: MemScript,
}

impl MemoryTransport {
    /// A path called `name` (as errors and `describe` show it) to `lun`.
    pub fn new(name: impl Into<String>, lun: &MemLun) -> MemoryTransport {
        MemoryTransport {
            name: name.into(),
            lun: lun.clone(),
            script: MemScript::default(),
        }
    }

    /// The handle that scripts this path.
    pub fn script(&self) -> MemScript {
        self.script.clone()
    }

    pub fn lun(&self) -> &MemLun {
        &self.lun
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn error(
        &self,
        op: IoOp,
        offset: u64,
        len: u64,
        class: ErrorClass,
        errno: i32,
    ) -> TransportError {
        TransportError::new(
            op,
            offset,
            len,
            self.name.clone(),
            class,
            io::Error::from_raw_os_error(errno),
        )
    }

    /// Runs the script, then `f` on the LUN's bytes `[offset, offset+len)`.
    fn io<T>(
        &self,
        op: IoOp,
        offset: u64,
        len: u64,
        f: impl FnOnce(&MemLun, usize, usize) -> T,
    ) -> Result<T, TransportError> {
        match self.script.before_io() {
            Ok(()) => {}
            Err(Scripted::PathError) => {
                return Err(self.error(op, offset, len, ErrorClass::Path, libc::EIO))
            }
            Err(Scripted::LunError) => {
                return Err(self.error(op, offset, len, ErrorClass::Lun, libc::ENODATA))
            }
        }
        let size = self.lun.size();
        let end = offset.checked_add(len).filter(|&e| e <= size);
        let (Some(end), Ok(start)) = (end, usize::try_from(offset)) else {
            return Err(self.error(op, offset, len, ErrorClass::Lun, libc::EINVAL));
        };
        let end = usize::try_from(end).unwrap_or(usize::MAX);
        let out = f(&self.lun, start, end);
        self.script.served();
        Ok(out)
    }

    pub fn size(&self) -> Result<u64, TransportError> {
        Ok(self.lun.size())
    }

    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), TransportError> {
        self.io(IoOp::Read, offset, buf.len() as u64, |lun, s, e| {
            buf.copy_from_slice(&lun.inner.data.read()[s..e]);
        })
    }

    pub fn write_at(&self, buf: &[u8], offset: u64, _fua: bool) -> Result<(), TransportError> {
        self.io(IoOp::Write, offset, buf.len() as u64, |lun, s, e| {
            lun.inner.data.write()[s..e].copy_from_slice(buf);
        })
    }

    pub fn flush(&self) -> Result<(), TransportError> {
        self.io(IoOp::Flush, 0, 0, |_, _, _| ())
    }

    /// Zeroes the range (a trimmed range may read back as anything).
    pub fn trim(&self, offset: u64, len: u64) -> Result<(), TransportError> {
        self.io(IoOp::Trim, offset, len, |lun, s, e| {
            lun.inner.data.write()[s..e].fill(0);
        })
    }

    /// Always fast.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), TransportError> {
        self.io(IoOp::WriteZeroes, offset, len, |lun, s, e| {
            lun.inner.data.write()[s..e].fill(0);
        })
    }

    pub fn describe(&self) -> String {
        format!("memory {}", self.name)
    }

    pub fn caps(&self) -> TransportCaps {
        TransportCaps {
            scsi_target: false,
            read_only: false,
            volatile_cache: false,
            flush: true,
            fua: true,
            trim: true,
            write_zeroes: true,
            fast_zero: true,
        }
    }

    /// False while the path is offline.
    pub fn is_open(&self) -> bool {
        !self.script.is_offline()
    }

    /// Fails while the path is offline.
    pub fn revalidate(&self) -> Result<Revalidated, TransportError> {
        if self.script.is_offline() {
            return Err(self.error(IoOp::Open, 0, 0, ErrorClass::Path, libc::ENXIO));
        }
        Ok(Revalidated::Unchanged)
    }

    /// Reads up to `len` bytes at 0; fails while the path is offline. The
    /// IO script (next outcomes, hang) does not apply to checks.
    pub fn probe(&self, len: usize) -> Result<Probe, TransportError> {
        if self.script.is_offline() {
            return Err(self.error(IoOp::Check, 0, len as u64, ErrorClass::Path, libc::EIO));
        }
        let bytes = self.lun.contents(0, len).len();
        Ok(Probe {
            bytes,
            direct: true,
            note: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{FaultSpec, PathDev, Transport};

    fn two_paths() -> (MemLun, Arc<PathDev>, MemScript, Arc<PathDev>, MemScript) {
        let lun = MemLun::new(64 * 1024, 512);
        let a = MemoryTransport::new("a", &lun);
        let b = MemoryTransport::new("b", &lun);
        let (sa, sb) = (a.script(), b.script());
        (
            lun,
            Arc::new(PathDev::new(Transport::Memory(a))),
            sa,
            Arc::new(PathDev::new(Transport::Memory(b))),
            sb,
        )
    }

    #[test]
    fn paths_share_the_lun() {
        let (lun, a, sa, b, _) = two_paths();
        a.write_at(&[7; 512], 4096, false).expect("write");
        let mut buf = [0u8; 512];
        b.read_at(&mut buf, 4096).expect("read");
        assert_eq!(buf, [7; 512]);
        assert_eq!(lun.contents(4096, 2), vec![7, 7]);
        assert_eq!(sa.ios(), 1);
        assert_eq!(a.size().expect("size"), 64 * 1024);
        assert_eq!(a.transport.block_size(), 512);
        assert_eq!(a.describe(), "memory a");
        assert!(a.read_cached(&mut buf, 0).is_none());
    }

    #[test]
    fn scripted_errors_apply_once_in_order() {
        let (_, a, sa, _, _) = two_paths();
        sa.fail_next_path_error();
        sa.fail_next_lun_error();
        let mut buf = [0u8; 512];
        let e = a.read_at(&mut buf, 0).expect_err("path error");
        assert_eq!(e.class, ErrorClass::Path);
        let e = a.write_at(&buf, 0, false).expect_err("lun error");
        assert_eq!(e.class, ErrorClass::Lun);
        assert_eq!(e.errno(), Some(libc::ENODATA));
        a.read_at(&mut buf, 0).expect("then fine");
        let e = a
            .read_at(&mut buf, 64 * 1024 - 1)
            .expect_err("past the end");
        assert_eq!((e.class, e.errno()), (ErrorClass::Lun, Some(libc::EINVAL)));
    }

    #[test]
    fn hang_blocks_until_released() {
        let (_, a, sa, _, _) = two_paths();
        sa.hang();
        let a2 = a.clone();
        let t = std::thread::spawn(move || a2.flush());
        assert!(sa.wait_hung(1, Duration::from_secs(10)));
        sa.fail_next_path_error();
        sa.release();
        let r = t.join().expect("thread");
        assert_eq!(r.expect_err("scripted").class, ErrorClass::Path);
        assert_eq!(sa.hung(), 0);
    }

    #[test]
    fn offline_fails_io_and_checks_and_faults_apply() {
        let (_, a, sa, _, _) = two_paths();
        sa.set_offline(true);
        assert!(!a.transport.is_open());
        assert!(a.probe(512).is_err());
        assert!(a.transport.revalidate().is_err());
        sa.set_offline(false);
        assert_eq!(a.probe(512).expect("probe").bytes, 512);
        // The PathDev fault hook runs before the transport.
        let spec: FaultSpec = "error read".parse().expect("spec");
        a.faults.apply(spec);
        let mut buf = [0u8; 16];
        assert!(a.read_at(&mut buf, 0).is_err());
        assert_eq!(sa.ios(), 0);
        a.write_at(&buf, 0, false).expect("writes are not faulted");
    }
}
