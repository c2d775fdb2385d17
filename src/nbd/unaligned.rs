//! Serving misaligned requests to clients that never agreed to the
//! export's minimum block size.
//!
//! The spec lets a client skip `NBD_INFO_BLOCK_SIZE` (or use
//! `NBD_OPT_EXPORT_NAME`); such a client may assume the defaults, i.e. a
//! minimum block size of 1. An [`Export`] is promised aligned requests, so
//! for those clients the server widens misaligned requests itself:
//!
//! * READ: read the covering aligned range, copy the wanted bytes out.
//! * WRITE: read-modify-write of the partial head and tail blocks, then a
//!   single write of the widened range.
//! * WRITE_ZEROES: read-modify-write of the partial edge blocks, and a real
//!   WRITE_ZEROES for the aligned interior. With `FAST_ZERO` it fails
//!   quickly with `ENOTSUP` (the spec allows the decision to depend on
//!   alignment).
//! * TRIM: trims only the aligned interior (the spec allows rounding in).
//!
//! Read-modify-write cycles on one export are serialised by an async mutex
//! shared by every connection to that export, so two clients writing
//! different bytes of the same block cannot lose each other's update.
//! This path allocates; it is not the hot path.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, Weak};

use tokio::sync::Mutex as AsyncMutex;

use super::proto::Action;
use crate::export::{Completion, Export, IoBuf, IoError, Op, ReplySender, Request};

type RmwLock = Arc<AsyncMutex<()>>;

/// The read-modify-write lock for `export`, shared by all connections.
fn rmw_lock(export: &Arc<dyn Export>) -> RmwLock {
    static LOCKS: OnceLock<parking_lot::Mutex<HashMap<usize, Weak<AsyncMutex<()>>>>> =
        OnceLock::new();
    // The address identifies the export while any connection (which holds
    // both the export and this lock) is alive.
    let key = Arc::as_ptr(export) as *const () as usize;
    let mut map = LOCKS.get_or_init(Default::default).lock();
    if let Some(l) = map.get(&key).and_then(Weak::upgrade) {
        return l;
    }
    map.retain(|_, w| w.strong_count() > 0);
    let l = Arc::new(AsyncMutex::new(()));
    map.insert(key, Arc::downgrade(&l));
    l
}

/// Per-connection emulation of the default minimum block size of 1.
#[derive(Clone)]
pub(crate) struct Unaligned {
    export: Arc<dyn Export>,
    lock: RmwLock,
    /// The export's minimum block size (a power of two, > 1).
    block: u64,
    size: u64,
}

/// A misaligned range split into partial edge blocks and aligned interior.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Split {
    /// The covering aligned range.
    ws: u64,
    we: u64,
    /// A partially covered first block [start, end).
    head: Option<(u64, u64)>,
    /// A partially covered last block, if different from `head`.
    tail: Option<(u64, u64)>,
    /// The fully covered blocks [start, end) (may be empty).
    inner: (u64, u64),
}

impl Unaligned {
    pub(crate) fn new(export: Arc<dyn Export>, block: u32, size: u64) -> Unaligned {
        Unaligned {
            lock: rmw_lock(&export),
            export,
            block: u64::from(block.max(1)),
            size,
        }
    }

    fn down(&self, x: u64) -> u64 {
        x & !(self.block - 1)
    }

    fn up(&self, x: u64) -> u64 {
        x.checked_add(self.block - 1)
            .map_or(self.size, |v| v & !(self.block - 1))
            .min(self.size)
    }

    fn block_end(&self, b: u64) -> u64 {
        b.saturating_add(self.block).min(self.size)
    }

    /// True if the export could not take this range as is.
    pub(crate) fn needed(&self, offset: u64, len: u32) -> bool {
        let end = offset + u64::from(len);
        len != 0 && (offset % self.block != 0 || (end % self.block != 0 && end != self.size))
    }

    /// `offset + len <= size` and `len > 0` must hold.
    fn split(&self, offset: u64, len: u32) -> Split {
        let end = offset + u64::from(len);
        let ws = self.down(offset);
        let we = self.up(end);
        let first = (ws, self.block_end(ws));
        let lb = self.down(end - 1);
        let last = (lb, self.block_end(lb));
        let head_partial = offset != first.0 || end < first.1;
        let tail_partial = end != last.1;
        let head = head_partial.then_some(first);
        let tail = (tail_partial && lb != ws).then_some(last);
        let is = if head_partial { first.1 } else { first.0 };
        let ie = if tail_partial { last.0 } else { last.1 };
        Split {
            ws,
            we,
            head,
            tail,
            inner: (is, ie.max(is)),
        }
    }

    /// Run `action` (already checked against bounds) in a task and answer
    /// on `reply` with `cookie` and `buf`, like an export would.
    pub(crate) fn submit(&self, action: Action, cookie: u64, buf: IoBuf, reply: ReplySender) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut buf = buf;
            let result = this.run(action, &mut buf).await;
            let _ = reply.send(Completion {
                cookie,
                result,
                buf,
            });
        });
    }

    async fn run(&self, action: Action, buf: &mut [u8]) -> Result<(), IoError> {
        match action {
            Action::Read { offset, len, fua } => {
                let s = self.split(offset, len);
                let tmp = self
                    .call(
                        Op::Read,
                        s.ws,
                        s.we - s.ws,
                        fua,
                        IoBuf::zeroed((s.we - s.ws) as usize),
                    )
                    .await?;
                let at = (offset - s.ws) as usize;
                let want = tmp.get(at..at + len as usize).ok_or(IoError::Io)?;
                buf.get_mut(..len as usize)
                    .ok_or(IoError::Inval)?
                    .copy_from_slice(want);
                Ok(())
            }
            Action::Write { offset, len, fua } => {
                let s = self.split(offset, len);
                let _guard = self.lock.lock().await;
                let mut tmp = IoBuf::zeroed((s.we - s.ws) as usize);
                for (b, e) in [s.head, s.tail].into_iter().flatten() {
                    let n = (e - b) as usize;
                    let got = self
                        .call(Op::Read, b, e - b, false, IoBuf::zeroed(n))
                        .await?;
                    let at = (b - s.ws) as usize;
                    tmp[at..at + n].copy_from_slice(got.get(..n).ok_or(IoError::Io)?);
                }
                let at = (offset - s.ws) as usize;
                tmp[at..at + len as usize]
                    .copy_from_slice(buf.get(..len as usize).ok_or(IoError::Inval)?);
                self.call(Op::Write, s.ws, s.we - s.ws, fua, tmp).await?;
                Ok(())
            }
            Action::Trim { offset, len, fua } => {
                let s = self.split(offset, len);
                let (is, ie) = s.inner;
                if is < ie {
                    self.call(Op::Trim, is, ie - is, fua, IoBuf::new()).await?;
                }
                Ok(())
            }
            Action::WriteZeroes {
                offset,
                len,
                fua,
                no_hole,
                fast,
            } => {
                if fast {
                    return Err(IoError::NotSup);
                }
                let s = self.split(offset, len);
                let end = offset + u64::from(len);
                let _guard = self.lock.lock().await;
                for (b, e) in [s.head, s.tail].into_iter().flatten() {
                    let mut blk = self
                        .call(Op::Read, b, e - b, false, IoBuf::zeroed((e - b) as usize))
                        .await?;
                    let zs = (offset.max(b) - b) as usize;
                    let ze = (end.min(e) - b) as usize;
                    blk.get_mut(zs..ze).ok_or(IoError::Io)?.fill(0);
                    self.call(Op::Write, b, e - b, fua, blk).await?;
                }
                let (is, ie) = s.inner;
                if is < ie {
                    let op = Op::WriteZeroes {
                        no_hole,
                        fast: false,
                    };
                    self.call(op, is, ie - is, fua, IoBuf::new()).await?;
                }
                Ok(())
            }
            Action::Flush { .. } | Action::Disconnect => Ok(()),
        }
    }
}

impl Unaligned {
    /// Submit one aligned request and wait for its completion.
    async fn call(
        &self,
        op: Op,
        offset: u64,
        len: u64,
        fua: bool,
        buf: IoBuf,
    ) -> Result<IoBuf, IoError> {
        let len = u32::try_from(len).map_err(|_| IoError::Inval)?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        self.export.submit(Request {
            op,
            offset,
            len,
            fua,
            cookie: 0,
            buf,
            reply: tx.into(),
        });
        match rx.recv().await {
            Some(c) => c.result.map(|()| c.buf),
            None => Err(IoError::Io),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nbd::memexport::MemExport;

    fn em(block: u32, size: usize) -> (Arc<MemExport>, Unaligned) {
        let m = Arc::new(MemExport::new("u", size));
        let e: Arc<dyn Export> = m.clone();
        (m, Unaligned::new(e, block, size as u64))
    }

    #[test]
    fn split_geometry() {
        let (_, u) = em(512, 4096);
        assert!(!u.needed(512, 1024));
        assert!(u.needed(1, 511));
        assert!(u.needed(0, 100));
        assert!(!u.needed(3, 0));
        let s = u.split(100, 50);
        assert_eq!((s.ws, s.we, s.head, s.tail), (0, 512, Some((0, 512)), None));
        assert_eq!(s.inner.0, s.inner.1);
        let s = u.split(100, 1000);
        assert_eq!(
            (s.ws, s.we, s.head, s.tail, s.inner),
            (0, 1536, Some((0, 512)), Some((1024, 1536)), (512, 1024))
        );
        let s = u.split(512, 600);
        assert_eq!(
            (s.head, s.tail, s.inner),
            (None, Some((1024, 1536)), (512, 1024))
        );
        let s = u.split(0, 4096);
        assert_eq!((s.head, s.tail, s.inner), (None, None, (0, 4096)));
        // Unaligned export size: the last short block is whole at EOF.
        let (_, u) = em(512, 1000);
        assert!(!u.needed(512, 488));
        let s = u.split(600, 400);
        assert_eq!(
            (s.ws, s.we, s.head, s.tail),
            (512, 1000, Some((512, 1000)), None)
        );
    }

    #[tokio::test]
    async fn emulated_ops() {
        let (m, u) = em(512, 4096);
        m.fill(0, &[0xaa; 4096]);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let w = Action::Write {
            offset: 500,
            len: 600,
            fua: false,
        };
        u.submit(w, 7, IoBuf::from(vec![0x11; 600]), tx.clone().into());
        let c = rx.recv().await.unwrap();
        assert_eq!((c.cookie, c.result), (7, Ok(())));
        let d = m.contents();
        assert!(d[..500].iter().all(|&b| b == 0xaa));
        assert!(d[500..1100].iter().all(|&b| b == 0x11));
        assert!(d[1100..].iter().all(|&b| b == 0xaa));

        u.submit(
            Action::Read {
                offset: 498,
                len: 4,
                fua: false,
            },
            8,
            IoBuf::zeroed(4),
            tx.clone().into(),
        );
        let c = rx.recv().await.unwrap();
        assert_eq!(&c.buf[..], &[0xaa, 0xaa, 0x11, 0x11]);

        let z = Action::WriteZeroes {
            offset: 10,
            len: 2000,
            fua: false,
            no_hole: false,
            fast: false,
        };
        u.submit(z, 9, IoBuf::new(), tx.clone().into());
        assert_eq!(rx.recv().await.unwrap().result, Ok(()));
        let d = m.contents();
        assert!(d[..10].iter().all(|&b| b == 0xaa));
        assert!(d[10..2010].iter().all(|&b| b == 0));
        assert!(d[2010..].iter().all(|&b| b == 0xaa));

        let fz = Action::WriteZeroes {
            offset: 10,
            len: 20,
            fua: false,
            no_hole: false,
            fast: true,
        };
        u.submit(fz, 10, IoBuf::new(), tx.clone().into());
        assert_eq!(rx.recv().await.unwrap().result, Err(IoError::NotSup));

        m.fill(0, &[0xbb; 4096]);
        let t = Action::Trim {
            offset: 100,
            len: 1000,
            fua: false,
        };
        u.submit(t, 11, IoBuf::new(), tx.into());
        assert_eq!(rx.recv().await.unwrap().result, Ok(()));
        let d = m.contents();
        assert!(d[..512].iter().all(|&b| b == 0xbb));
        assert!(d[512..1024].iter().all(|&b| b == 0));
        assert!(d[1024..].iter().all(|&b| b == 0xbb));
    }

    #[test]
    fn lock_is_shared_per_export() {
        let m: Arc<dyn Export> = Arc::new(MemExport::new("a", 512));
        let n: Arc<dyn Export> = Arc::new(MemExport::new("b", 512));
        let (a1, a2, b) = (rmw_lock(&m), rmw_lock(&m), rmw_lock(&n));
        assert!(Arc::ptr_eq(&a1, &a2));
        assert!(!Arc::ptr_eq(&a1, &b));
    }
}
