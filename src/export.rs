//! The boundary between front-ends (the NBD server) and the engine.
//!
//! A front-end turns each client command into a [`Request`] and hands it to
//! an [`Export`] with [`Export::submit`]. The export answers, from any
//! thread and at any later time, by sending a [`Completion`] on the
//! request's [`ReplySender`]. Buffers travel with the request and come back
//! with the completion, so a front-end can recycle them (no per-request
//! allocation on the hot path).

use std::cell::Cell;
use std::fmt;
use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;

pub use crate::iobuf::IoBuf;

/// Where completions go: one per client connection. A channel to the
/// connection's writer, and for plain sockets a [`DirectReply`] that lets
/// the thread finishing a request write its reply to the client itself
/// (see [`allow_direct_replies`]).
#[derive(Clone)]
pub struct ReplySender {
    tx: UnboundedSender<Completion>,
    direct: Option<Arc<dyn DirectReply>>,
}

impl ReplySender {
    /// Completions go through `tx` only.
    pub fn new(tx: UnboundedSender<Completion>) -> ReplySender {
        ReplySender { tx, direct: None }
    }

    /// Completions made on a thread that allows it are offered to `direct`
    /// first; what it does not take goes through `tx`.
    pub fn with_direct(
        tx: UnboundedSender<Completion>,
        direct: Arc<dyn DirectReply>,
    ) -> ReplySender {
        ReplySender {
            tx,
            direct: Some(direct),
        }
    }

    /// Sends `c` through the channel; gives it back if the receiver is
    /// gone.
    pub fn send(&self, c: Completion) -> Result<(), Completion> {
        self.tx.send(c).map_err(|e| e.0)
    }

    /// Answers with `c`: written to the client at once when the calling
    /// thread allows direct replies and the connection can take it without
    /// waiting, else sent through the channel. A closed channel means the
    /// client went away, which is not the sender's problem.
    pub fn answer(&self, c: Completion) {
        let c = match &self.direct {
            Some(d) if DIRECT_REPLIES.with(Cell::get) => match d.try_reply(c) {
                None => return,
                Some(c) => c,
            },
            _ => c,
        };
        let _ = self.send(c);
    }
}

impl From<UnboundedSender<Completion>> for ReplySender {
    fn from(tx: UnboundedSender<Completion>) -> ReplySender {
        ReplySender::new(tx)
    }
}

impl fmt::Debug for ReplySender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplySender")
            .field("direct", &self.direct.is_some())
            .finish_non_exhaustive()
    }
}

/// A connection that can take a reply from the thread that completed its
/// request, without a hand-off to the connection's writer.
pub trait DirectReply: Send + Sync + 'static {
    /// Writes the whole reply to `c` now, or takes responsibility for its
    /// rest, if that needs no waiting. Returns what the caller must send
    /// through the channel: `c` itself when nothing was written, or a
    /// completion of the front-end's own (a wake-up for its writer), or
    /// nothing. Must never block.
    fn try_reply(&self, c: Completion) -> Option<Completion>;
}

thread_local! {
    static DIRECT_REPLIES: Cell<bool> = const { Cell::new(false) };
}

/// Lets completions made on the calling thread be written to clients
/// directly ([`DirectReply`]), or not (the default). For threads that
/// exist to do blocking IO (the engine's per-path IO threads) when they
/// have nothing else queued: waking the connection's writer from there
/// costs a second thread hop per request. Under load the writer is
/// cheaper: it batches the replies that are ready together into one
/// write. Runtime threads keep the writer.
pub fn allow_direct_replies(allow: bool) {
    DIRECT_REPLIES.with(|d| d.set(allow));
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Read `len` bytes at `offset` into `buf[..len]`.
    Read,
    /// Write `buf[..len]` at `offset`.
    Write,
    /// Make every completed write stable.
    Flush,
    /// Discard (the range may read back as anything afterwards).
    Trim,
    /// Make the range read back as zeroes.
    WriteZeroes {
        /// The client forbids punching a hole (NBD_CMD_FLAG_NO_HOLE).
        no_hole: bool,
        /// Fail with [`IoError::NotSup`] rather than write zeroes slowly
        /// (NBD_CMD_FLAG_FAST_ZERO).
        fast: bool,
    },
}

impl Op {
    /// True for operations that change data.
    pub fn is_write(&self) -> bool {
        !matches!(self, Op::Read | Op::Flush)
    }
}

/// One IO request from a client.
#[derive(Debug)]
pub struct Request {
    pub op: Op,
    pub offset: u64,
    pub len: u32,
    /// Force unit access: the data must be stable before the completion.
    pub fua: bool,
    /// Opaque to the export; echoed in the completion.
    pub cookie: u64,
    /// For reads the export fills `buf[..len]`; for writes it holds the
    /// payload in `buf[..len]`. `buf.len() >= len` always holds for reads
    /// and writes; other operations may pass an empty buffer. Its memory
    /// is aligned ([`IoBuf`]), so O_DIRECT paths use it without a copy.
    pub buf: IoBuf,
    pub reply: ReplySender,
}

impl Request {
    /// Answer this request. A closed channel means the client went away,
    /// which is not the export's problem.
    pub fn complete(self, result: Result<(), IoError>) {
        let Request {
            cookie, buf, reply, ..
        } = self;
        reply.answer(Completion {
            cookie,
            result,
            buf,
        });
    }
}

/// The answer to a [`Request`].
#[derive(Debug)]
pub struct Completion {
    pub cookie: u64,
    pub result: Result<(), IoError>,
    /// The request's buffer, returned for reuse (and carrying read data).
    pub buf: IoBuf,
}

/// Errors a client can see; they map one to one onto NBD error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IoError {
    #[error("operation not permitted (read-only export)")]
    Perm,
    #[error("input/output error")]
    Io,
    #[error("out of memory")]
    NoMem,
    #[error("invalid argument")]
    Inval,
    #[error("no space left (write past the end)")]
    NoSpc,
    #[error("value too large")]
    Overflow,
    #[error("operation not supported")]
    NotSup,
    #[error("server is shutting down")]
    Shutdown,
}

impl IoError {
    /// The NBD protocol's error number for this error.
    pub fn nbd_errno(self) -> u32 {
        match self {
            IoError::Perm => 1,
            IoError::Io => 5,
            IoError::NoMem => 12,
            IoError::Inval => 22,
            IoError::NoSpc => 28,
            IoError::Overflow => 75,
            IoError::NotSup => 95,
            IoError::Shutdown => 108,
        }
    }
}

/// What an export can do, advertised to clients as transmission flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportCaps {
    pub read_only: bool,
    pub flush: bool,
    pub fua: bool,
    pub trim: bool,
    pub write_zeroes: bool,
    pub fast_zero: bool,
    /// Every connection sees every other connection's completed writes,
    /// and a flush on one covers writes completed on all of them.
    pub multi_conn: bool,
}

impl ExportCaps {
    /// Every capability on, writable, multi-connection safe.
    pub const ALL: ExportCaps = ExportCaps {
        read_only: false,
        flush: true,
        fua: true,
        trim: true,
        write_zeroes: true,
        fast_zero: true,
        multi_conn: true,
    };
}

/// Block size constraints (NBD_INFO_BLOCK_SIZE).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSizes {
    pub minimum: u32,
    pub preferred: u32,
    pub maximum: u32,
}

/// Something clients can connect to: one multipath map.
pub trait Export: Send + Sync + 'static {
    /// The export name clients ask for (the map's alias, else its WWID).
    fn name(&self) -> &str;
    /// A human description (shown by `nbdinfo`).
    fn description(&self) -> String;
    /// Size in bytes.
    fn size(&self) -> u64;
    fn caps(&self) -> ExportCaps;
    fn block_sizes(&self) -> BlockSizes;
    /// Start a request. The export must answer every request exactly once
    /// through [`Request::complete`], possibly from another thread. The
    /// front-end has already checked alignment, and bounds against the
    /// size its session was told (an export whose size can change checks
    /// again against its size now).
    fn submit(&self, req: Request);
    /// Tells front-ends when the export goes away for good (its map was
    /// removed from the configuration): the value turns `true`, and from
    /// then on every request fails with [`IoError::Shutdown`]. A front-end
    /// should end its sessions on the export then (after answering what
    /// is in flight). A dropped sender (`changed()` fails) means the same.
    /// `None` (the default): the export never closes by itself.
    fn closed(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        None
    }
}

/// The set of exports a front-end serves; it changes on reconfigure.
pub trait ExportSet: Send + Sync + 'static {
    /// All exports, in a stable order (for NBD_OPT_LIST).
    fn list(&self) -> Vec<Arc<dyn Export>>;
    /// The export with this name; the empty name means the default export
    /// (the first in [`ExportSet::list`]).
    fn get(&self, name: &str) -> Option<Arc<dyn Export>> {
        let all = self.list();
        if name.is_empty() {
            return all.into_iter().next();
        }
        all.into_iter().find(|e| e.name() == name)
    }
}
