//! Requests handed to a path's IO threads, so a watchdog can find the ones
//! that hang (`io_timeout`).
//!
//! The rule for a request outstanding longer than io_timeout:
//!
//! * its path is failed, so no new IO goes there;
//! * a **read** (or flush, which changes no data) is reissued on another
//!   path at once, and the late answer, whenever it comes, is dropped;
//! * a **write** (also trim and write-zeroes) is *not* reissued while the
//!   original may still land. It is answered only when the original ends:
//!   success is acknowledged as is; an error makes it safe to reissue on
//!   another path (the original is dead). So a write is acknowledged only
//!   after the last copy of it has stopped, and a write the client sends
//!   after that acknowledgement can never be overwritten by a stale copy
//!   landing late. The cost: a client's write stalls while its path hangs.

use std::time::Duration;

use parking_lot::Mutex;

use crate::export::{IoBuf, Op, ReplySender, Request};
use crate::units::Time;

/// Where a registered request sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ticket {
    slot: usize,
    gen: u64,
}

struct Entry {
    started: Time,
    op: Op,
    offset: u64,
    len: u32,
    fua: bool,
    cookie: u64,
    reply: ReplySender,
    timed_out: bool,
}

#[derive(Default)]
struct Slots {
    entries: Vec<(u64, Option<Entry>)>,
    free: Vec<usize>,
    next_gen: u64,
}

/// The requests in flight on one path.
#[derive(Default)]
pub(super) struct Inflight {
    slots: Mutex<Slots>,
}

/// How a finished IO must be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Finish {
    /// Answer it as usual.
    Normal,
    /// It timed out and was reissued elsewhere: drop this late answer.
    Reissued,
    /// A write that timed out and was held: answer success as is; on an
    /// error, reissue it elsewhere (safe now: the original has ended).
    HeldWrite,
}

/// A request the watchdog found outstanding too long.
pub(super) struct Expired {
    /// A new request to reissue (reads and flushes), with a fresh buffer.
    pub reissue: Option<Request>,
    pub op: Op,
    pub offset: u64,
}

fn reissuable(op: Op) -> bool {
    matches!(op, Op::Read | Op::Flush)
}

impl Inflight {
    pub(super) fn register(&self, req: &Request, now: Time) -> Ticket {
        let entry = Entry {
            started: now,
            op: req.op,
            offset: req.offset,
            len: req.len,
            fua: req.fua,
            cookie: req.cookie,
            reply: req.reply.clone(),
            timed_out: false,
        };
        let mut s = self.slots.lock();
        s.next_gen += 1;
        let gen = s.next_gen;
        let slot = match s.free.pop() {
            Some(i) => {
                s.entries[i] = (gen, Some(entry));
                i
            }
            None => {
                s.entries.push((gen, Some(entry)));
                s.entries.len() - 1
            }
        };
        Ticket { slot, gen }
    }

    pub(super) fn finish(&self, t: Ticket) -> Finish {
        let mut s = self.slots.lock();
        let entry = match s.entries.get_mut(t.slot) {
            Some((gen, e)) if *gen == t.gen => e.take(),
            _ => return Finish::Normal,
        };
        s.free.push(t.slot);
        match entry {
            Some(e) if e.timed_out && reissuable(e.op) => Finish::Reissued,
            Some(e) if e.timed_out => Finish::HeldWrite,
            _ => Finish::Normal,
        }
    }

    /// Marks requests outstanding for `timeout` or longer as timed out
    /// (once each) and returns them, reads and flushes with a request to
    /// reissue.
    pub(super) fn expire(&self, now: Time, timeout: Duration) -> Vec<Expired> {
        let mut out = Vec::new();
        let mut s = self.slots.lock();
        for (_, e) in s.entries.iter_mut() {
            let Some(e) = e else { continue };
            if e.timed_out || now.elapsed_since(e.started) < timeout {
                continue;
            }
            e.timed_out = true;
            let reissue = reissuable(e.op).then(|| Request {
                op: e.op,
                offset: e.offset,
                len: e.len,
                fua: e.fua,
                cookie: e.cookie,
                buf: IoBuf::zeroed(if e.op == Op::Read { e.len as usize } else { 0 }),
                reply: e.reply.clone(),
            });
            out.push(Expired {
                reissue,
                op: e.op,
                offset: e.offset,
            });
        }
        out
    }

    /// Requests that timed out and whose original has not ended yet.
    pub(super) fn stuck(&self) -> usize {
        self.slots
            .lock()
            .entries
            .iter()
            .filter(|(_, e)| e.as_ref().is_some_and(|e| e.timed_out))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn req(op: Op, tx: &tokio::sync::mpsc::UnboundedSender<crate::export::Completion>) -> Request {
        Request {
            op,
            offset: 4096,
            len: 512,
            fua: false,
            cookie: 7,
            buf: IoBuf::zeroed(512),
            reply: tx.clone().into(),
        }
    }

    #[test]
    fn reads_are_reissued_and_their_late_answer_dropped() {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let f = Inflight::default();
        let t = f.register(&req(Op::Read, &tx), Time(0));
        assert!(f.expire(Time(999), SEC).is_empty());
        let ex = f.expire(Time(1000), SEC);
        assert_eq!(ex.len(), 1);
        let r = ex[0].reissue.as_ref().expect("a read is reissued");
        assert_eq!(
            (r.cookie, r.offset, r.len, r.buf.len()),
            (7, 4096, 512, 512)
        );
        // Once only.
        assert!(f.expire(Time(5000), SEC).is_empty());
        assert_eq!(f.stuck(), 1);
        assert_eq!(f.finish(t), Finish::Reissued);
        assert_eq!(f.stuck(), 0);
    }

    #[test]
    fn writes_are_held_not_reissued() {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let f = Inflight::default();
        for op in [
            Op::Write,
            Op::Trim,
            Op::WriteZeroes {
                no_hole: false,
                fast: false,
            },
        ] {
            let t = f.register(&req(op, &tx), Time(0));
            let ex = f.expire(Time(2000), SEC);
            assert_eq!(ex.len(), 1);
            assert!(
                ex[0].reissue.is_none(),
                "{op:?} must not be reissued while it may land"
            );
            assert_eq!(f.finish(t), Finish::HeldWrite);
        }
    }

    #[test]
    fn slots_are_reused_and_stale_tickets_are_harmless() {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let f = Inflight::default();
        let a = f.register(&req(Op::Read, &tx), Time(0));
        assert_eq!(f.finish(a), Finish::Normal);
        let b = f.register(&req(Op::Write, &tx), Time(0));
        assert_eq!(a.slot, b.slot);
        assert_eq!(f.finish(b), Finish::Normal);
    }
}
