//! One client connection: the fixed newstyle handshake, then a reader that
//! decodes requests and submits them to the export, and a writer that turns
//! completions into replies.
//!
//! Each request in flight holds one slot of a fixed table; the export sees
//! the slot number as the request cookie, and the writer finds the client's
//! cookie, offset and length there. The table bounds a connection's
//! requests and buffer bytes: when it is full the reader stops reading, so
//! a client that never reads its replies cannot grow server memory.
//! Request memory also counts against the server-wide [`Budget`]: a read's
//! buffer when it is admitted, a write's payload chunk by chunk as it
//! arrives (a header alone reserves nothing large).
//!
//! Deadlines: the handshake must reach transmission within
//! [`Limits::handshake_timeout`]; in transmission an idle client is kept
//! for ever, but one that stops sending mid-payload, or stops reading a
//! reply, for [`Limits::payload_timeout`] is closed (sooner, after
//! [`HOG_STALL`], if it holds more than its fair share while others wait
//! for the memory budget).
//!
//! Buffers come back with completions and are pooled at their grown
//! length, a few per connection and within the budget's pool limit;
//! bigger ones are freed.

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{self, MsgFlags};
use parking_lot::Mutex;
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
    ReadHalf, WriteHalf,
};
use tokio::net::{tcp, unix, TcpStream, UnixStream};
use tokio::sync::mpsc::{self, UnboundedReceiver};
use tokio::sync::{watch, Notify};
use tokio_rustls::server::TlsStream;
use tracing::{debug, error, info, warn, Instrument, Span};

use super::budget::{Budget, Held};
use super::proto::{self, *};
use super::ratelog::RateLog;
use super::tls::{HandshakeError, Identity, Peer, Security, TlsMode};
use super::unaligned::Unaligned;
use super::wire::{self, Batch};
use crate::export::{
    Completion, DirectReply, Export, ExportSet, IoBuf, IoError, Op, ReplySender, Request,
};

/// Socket read buffer (request headers and small write payloads; big
/// payloads bypass it).
const READ_BUF: usize = 64 * 1024;
/// Write payloads are read (the buffer grown) this much at a time; the
/// budget is charged the whole payload once its first bytes arrive.
const PAYLOAD_CHUNK: usize = 256 * 1024;
/// Buffers kept per connection for reuse...
const POOL_COUNT: usize = 16;
/// ... and their bytes; larger buffers are freed, not pooled.
const POOL_BYTES: usize = 8 * 1024 * 1024;
const POOL_MAX_BUF: usize = 4 * 1024 * 1024;
/// A client whose replies stay unread this long while it holds more than
/// its fair share of an exhausted memory budget is closed.
pub const HOG_STALL: Duration = Duration::from_secs(2);

/// Per-connection resource bounds and deadlines (and the size of the
/// server-wide memory budget).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Requests in flight per connection; the reader stops reading new
    /// requests when this many are unanswered.
    pub max_inflight: usize,
    /// Buffer bytes (read and write payloads) in flight per connection. A
    /// single request larger than this is still admitted, alone.
    pub max_inflight_bytes: usize,
    /// A client must reach transmission within this time.
    pub handshake_timeout: Duration,
    /// A client that stops sending a request's payload, or stops reading
    /// a reply, for this long is closed. Idle clients are kept.
    pub payload_timeout: Duration,
    /// Request payloads and replies in flight, all connections together.
    pub memory_budget: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_inflight: 128,
            max_inflight_bytes: 64 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
            payload_timeout: Duration::from_secs(30),
            memory_budget: 256 * 1024 * 1024,
        }
    }
}

/// Everything a connection needs from its server.
pub(crate) struct ConnEnv {
    pub exports: Arc<dyn ExportSet>,
    pub limits: Limits,
    pub shutdown: watch::Receiver<bool>,
    pub span: Span,
    /// The server-wide memory budget.
    pub budget: Arc<Budget>,
    /// Rate limit for lines about dropped clients.
    pub notices: Arc<RateLog>,
    /// Who the peer is, for those lines (`uid=U` or an IP address).
    pub peer_key: String,
    /// TLS and allow-list settings.
    pub security: Arc<Security>,
    /// What this connection must do about TLS (`Off` on the Unix socket).
    pub tls_mode: TlsMode,
    /// The TCP peer's address; `None` on the Unix socket.
    pub peer_addr: Option<IpAddr>,
}

/// Resolves once shutdown is requested (the value turns true, or the
/// sender is dropped).
pub(crate) async fn shutdown_requested(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Resolves once the export closes (its map was removed); never for an
/// export that does not close by itself.
async fn export_closed(rx: &mut Option<watch::Receiver<bool>>) {
    match rx {
        Some(rx) => shutdown_requested(rx).await,
        None => std::future::pending().await,
    }
}

/// A non-blocking check: has the export closed?
fn export_closed_now(rx: &Option<watch::Receiver<bool>>) -> bool {
    rx.as_ref()
        .is_some_and(|r| *r.borrow() || r.has_changed().is_err())
}

/// A non-blocking check for a shutdown request.
fn shutdown_now(rx: &mut watch::Receiver<bool>) -> bool {
    match rx.has_changed() {
        Ok(false) => false,
        Ok(true) => *rx.borrow_and_update(),
        Err(_) => true,
    }
}

/// A client's byte stream, split into owned halves for transmission.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    type Read: AsyncRead + Unpin + Send + 'static;
    type Write: AsyncWrite + Unpin + Send + 'static;
    fn into_halves(self) -> (Self::Read, Self::Write);
    /// The socket, when replies can be written to it as they are (no
    /// TLS): IO threads then write replies themselves ([`Direct`]).
    fn plain_fd(&self) -> Option<RawFd>;
}

impl Stream for UnixStream {
    type Read = unix::OwnedReadHalf;
    type Write = unix::OwnedWriteHalf;
    fn into_halves(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
    fn plain_fd(&self) -> Option<RawFd> {
        Some(self.as_raw_fd())
    }
}

impl Stream for TcpStream {
    type Read = tcp::OwnedReadHalf;
    type Write = tcp::OwnedWriteHalf;
    fn into_halves(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
    fn plain_fd(&self) -> Option<RawFd> {
        Some(self.as_raw_fd())
    }
}

impl<S: Stream> Stream for TlsStream<S> {
    type Read = ReadHalf<TlsStream<S>>;
    type Write = WriteHalf<TlsStream<S>>;
    fn into_halves(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self)
    }
    fn plain_fd(&self) -> Option<RawFd> {
        None
    }
}

/// What the handshake ended with, on the stream it ended on.
enum Negotiated<S: Stream> {
    Plain(BufReader<S>, Session),
    Tls(Box<BufReader<TlsStream<S>>>, Session),
}

/// Serve one client until it disconnects, misbehaves or the server shuts
/// down.
pub(crate) async fn serve<S: Stream>(stream: S, env: ConnEnv) {
    let mut shutdown = env.shutdown.clone();
    let deadline = env.limits.handshake_timeout;
    let result = tokio::select! {
        biased;
        _ = shutdown_requested(&mut shutdown) => {
            debug!("server shutting down during handshake");
            return;
        }
        r = tokio::time::timeout(deadline, handshake(stream, &env)) => match r {
            Ok(r) => r,
            Err(_) => {
                if let Some(suppressed) = env.notices.allow("handshake", &env.peer_key) {
                    warn!(
                        peer = %env.peer_key,
                        suppressed,
                        "no NBD handshake within {} s; closing",
                        deadline.as_secs_f32()
                    );
                }
                return;
            }
        },
    };
    match result {
        Ok(Some(Negotiated::Plain(rd, s))) => enter(rd, s, env, false).await,
        Ok(Some(Negotiated::Tls(rd, s))) => enter(*rd, s, env, true).await,
        Ok(None) => debug!("client ended the handshake"),
        Err(NegoError::Io(e)) if is_disconnect(&e) => {
            debug!(error = %e, "client went away during the handshake");
        }
        Err(e) => warn!(error = %e, "handshake failed; closing"),
    }
}

/// Start transmission on what the handshake left: bytes the client sent
/// early stay in front of the rest.
async fn enter<S: Stream>(rd: BufReader<S>, session: Session, env: ConnEnv, tls: bool) {
    env.span.record("export", session.export.name());
    info!(
        size = session.params.size,
        flags = format_args!("{:#x}", session.params.flags),
        structured = session.structured,
        block_size_agreed = session.params.block_size_agreed,
        tls,
        "transmission started"
    );
    let early = rd.buffer().to_vec();
    let fd = rd.get_ref().plain_fd();
    let (r, w) = rd.into_inner().into_halves();
    let reader = BufReader::with_capacity(READ_BUF, io::Cursor::new(early).chain(r));
    transmission(reader, w, fd, session, env).await;
}

/// Serve one session that is already in transmission: the kernel's NBD
/// client attached through netlink does no handshake, it was told the
/// size and flags of `export` with `NBD_CMD_CONNECT`. Simple replies, no
/// agreed block sizes (the server copes with misalignment), the same
/// reader, writer and bounds as [`serve`].
pub async fn serve_negotiated(
    stream: tokio::net::UnixStream,
    export: Arc<dyn Export>,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
) {
    struct NoExports;
    impl ExportSet for NoExports {
        fn list(&self) -> Vec<Arc<dyn Export>> {
            Vec::new()
        }
    }
    let fd = stream.as_raw_fd();
    let (r, w) = stream.into_split();
    let s = session(export, false, false);
    // The kernel is one trusted client per device: a budget of its own
    // (its requests are bounded by its queue limits), no TLS.
    let env = ConnEnv {
        exports: Arc::new(NoExports),
        limits,
        shutdown,
        span: Span::current(),
        budget: Arc::new(Budget::new(limits.memory_budget)),
        notices: Arc::new(RateLog::default()),
        peer_key: "kernel".to_string(),
        security: Arc::new(Security::default()),
        tls_mode: TlsMode::Off,
        peer_addr: None,
    };
    transmission(BufReader::with_capacity(READ_BUF, r), w, Some(fd), s, env).await;
}

fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}

// ---------------------------------------------------------------------------
// Handshake
// ---------------------------------------------------------------------------

/// Read buffer while negotiating (options are small; a big one is read
/// past the buffer).
const HANDSHAKE_BUF: usize = 4096;

#[derive(Debug, thiserror::Error)]
enum NegoError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Proto(#[from] ProtoError),
    #[error("NBD_OPT_EXPORT_NAME for unknown export {0:?}")]
    UnknownExport(String),
    #[error("NBD_OPT_EXPORT_NAME before STARTTLS; TLS is required on this connection")]
    TlsRequired,
    #[error("{0} byte(s) sent after NBD_OPT_STARTTLS before the TLS handshake")]
    DataAfterStartTls(usize),
    #[error(transparent)]
    Tls(#[from] HandshakeError),
}

/// What the handshake settled on.
struct Session {
    export: Arc<dyn Export>,
    params: TransmissionParams,
    structured: bool,
}

/// How one round of option haggling ended.
enum NegoEnd {
    /// NBD_OPT_ABORT.
    Abort,
    /// NBD_OPT_STARTTLS was acknowledged: the TLS handshake comes next.
    StartTls,
    Enter(Session),
}

/// The greeting, the options, STARTTLS with its handshake and the options
/// again on TLS. `Ok(None)` means the client aborted.
async fn handshake<S: Stream>(
    stream: S,
    env: &ConnEnv,
) -> Result<Option<Negotiated<S>>, NegoError> {
    let mut rd = BufReader::with_capacity(HANDSHAKE_BUF, stream);
    rd.write_all(&encode_greeting(SERVER_HANDSHAKE_FLAGS))
        .await?;
    rd.flush().await?;
    let mut fb = [0u8; 4];
    rd.read_exact(&mut fb).await?;
    let client = decode_client_flags(&fb, SERVER_HANDSHAKE_FLAGS)?;
    debug!(
        fixed_newstyle = client.fixed_newstyle,
        no_zeroes = client.no_zeroes,
        "client flags"
    );
    let mut ctx = Nego {
        exports: &*env.exports,
        security: &env.security,
        mode: env.tls_mode,
        addr: env.peer_addr,
        client,
        tls: None,
    };
    match negotiate(&mut rd, &ctx).await? {
        NegoEnd::Abort => Ok(None),
        NegoEnd::Enter(s) => Ok(Some(Negotiated::Plain(rd, s))),
        NegoEnd::StartTls => {
            // Anything the client sent before our ACK would be plaintext
            // smuggled into the TLS session.
            if !rd.buffer().is_empty() {
                return Err(NegoError::DataAfterStartTls(rd.buffer().len()));
            }
            let Some(tls) = env.security.tls.as_ref() else {
                return Err(NegoError::Io(io::Error::other("TLS is not configured")));
            };
            let (t, id) = tls.accept(rd.into_inner()).await?;
            info!(
                version = id.version,
                client_cert = %id.names.join(","),
                "TLS established"
            );
            ctx.tls = Some(id);
            let mut rd = BufReader::with_capacity(HANDSHAKE_BUF, t);
            match negotiate(&mut rd, &ctx).await? {
                NegoEnd::Abort => Ok(None),
                NegoEnd::Enter(s) => Ok(Some(Negotiated::Tls(Box::new(rd), s))),
                // negotiate refuses a second STARTTLS.
                NegoEnd::StartTls => Err(NegoError::Io(io::Error::other("second STARTTLS"))),
            }
        }
    }
}

/// What option haggling needs to know about the connection.
struct Nego<'a> {
    exports: &'a dyn ExportSet,
    security: &'a Security,
    mode: TlsMode,
    /// The TCP peer (`None` on the Unix socket).
    addr: Option<IpAddr>,
    client: ClientFlags,
    /// Set once TLS is up.
    tls: Option<Identity>,
}

impl Nego<'_> {
    fn peer(&self) -> Peer<'_> {
        Peer {
            addr: self.addr,
            names: self.tls.as_ref().map_or(&[], |t| t.names.as_slice()),
        }
    }

    /// The export if it exists and this client may see it.
    fn export(&self, name: &str) -> Option<Arc<dyn Export>> {
        let e = self.exports.get(name)?;
        if self.security.allow.allows(e.name(), self.peer()) {
            Some(e)
        } else {
            warn!(
                export = e.name(),
                client_cert = %self.peer().names.join(","),
                "export refused: the client is not on its allow-list (answered as unknown)"
            );
            None
        }
    }
}

/// Run one round of option haggling (all of it, or up to STARTTLS; after
/// STARTTLS everything negotiated before is forgotten, as proto.md asks).
async fn negotiate<S>(s: &mut S, ctx: &Nego<'_>) -> Result<NegoEnd, NegoError>
where
    S: AsyncBufRead + AsyncWrite + Unpin,
{
    let tls_active = ctx.tls.is_some();
    let mut told_tls_reqd = false;
    let mut structured = false;
    let mut out = Vec::with_capacity(512);
    let mut payload = Vec::new();
    loop {
        let mut hb = [0u8; OPTION_HEADER_LEN];
        s.read_exact(&mut hb).await?;
        let h = OptionHeader::decode(&hb, MAX_OPTION_LEN)?;
        payload.resize(h.len as usize, 0);
        s.read_exact(&mut payload).await?;
        out.clear();
        let opt = h.option;
        let mut enter: Option<Session> = None;
        if ctx.mode == TlsMode::Require && !tls_active && opt != OPT_STARTTLS && opt != OPT_ABORT {
            if opt == OPT_EXPORT_NAME {
                return Err(NegoError::TlsRequired);
            }
            if !told_tls_reqd {
                warn!(
                    option = opt,
                    "plain-text option refused: TLS is required on this connection"
                );
                told_tls_reqd = true;
            }
            encode_rep_error(
                &mut out,
                opt,
                REP_ERR_TLS_REQD,
                "TLS is required: send NBD_OPT_STARTTLS",
            );
            s.write_all(&out).await?;
            s.flush().await?;
            continue;
        }
        match parse_option(opt, &payload) {
            Ok(ClientOption::ExportName(name)) => {
                let export = ctx
                    .export(name)
                    .ok_or_else(|| NegoError::UnknownExport(name.to_string()))?;
                let sess = session(export, structured, false);
                encode_export_name_reply(
                    &mut out,
                    sess.params.size,
                    sess.params.flags,
                    ctx.client.no_zeroes,
                );
                enter = Some(sess);
            }
            Err(e) if opt == OPT_EXPORT_NAME => return Err(e.into()),
            Ok(ClientOption::Abort) => {
                encode_rep_ack(&mut out, opt);
                // The client may already have closed; that is fine.
                let _ = s.write_all(&out).await;
                let _ = s.flush().await;
                return Ok(NegoEnd::Abort);
            }
            Ok(ClientOption::StartTls) => {
                if tls_active {
                    encode_rep_error(&mut out, opt, REP_ERR_INVALID, "TLS is already active");
                } else if ctx.mode == TlsMode::Off {
                    let (rep, msg) = if !ctx.security.has_tls() {
                        (REP_ERR_UNSUP, "TLS is not configured")
                    } else if ctx.addr.is_none() {
                        (REP_ERR_POLICY, "TLS is offered on TCP connections only")
                    } else {
                        (REP_ERR_POLICY, "TLS is off on this listener")
                    };
                    encode_rep_error(&mut out, opt, rep, msg);
                } else {
                    encode_rep_ack(&mut out, opt);
                    s.write_all(&out).await?;
                    s.flush().await?;
                    return Ok(NegoEnd::StartTls);
                }
            }
            Ok(ClientOption::List) => {
                let peer = ctx.peer();
                for e in ctx.exports.list() {
                    if ctx.security.allow.allows(e.name(), peer) {
                        encode_rep_server(&mut out, e.name(), &e.description());
                    }
                }
                encode_rep_ack(&mut out, opt);
            }
            Ok(ClientOption::Info(req)) | Ok(ClientOption::Go(req)) => match ctx.export(req.name) {
                None => {
                    let msg = format!("unknown export {:?}", req.name);
                    encode_rep_error(&mut out, opt, REP_ERR_UNKNOWN, &msg);
                }
                Some(export) => {
                    // Only a GO that asked for block sizes binds the client.
                    let agreed = opt == OPT_GO && req.requests.block_size;
                    let sess = session(export, structured, agreed);
                    encode_info_export(&mut out, opt, sess.params.size, sess.params.flags);
                    if req.requests.name {
                        encode_info_name(&mut out, opt, sess.export.name());
                    }
                    if req.requests.description {
                        let d = sess.export.description();
                        if !d.is_empty() {
                            encode_info_description(&mut out, opt, &d);
                        }
                    }
                    if req.requests.block_size {
                        encode_info_block_size(&mut out, opt, sess.params.block_sizes);
                    }
                    encode_rep_ack(&mut out, opt);
                    if opt == OPT_GO {
                        enter = Some(sess);
                    }
                }
            },
            Ok(ClientOption::StructuredReply) => {
                structured = true;
                encode_rep_ack(&mut out, opt);
            }
            Ok(ClientOption::Unsupported(o)) => {
                debug!(option = o, "unsupported option");
                encode_rep_error(&mut out, opt, REP_ERR_UNSUP, "option not supported");
            }
            Err(e) => {
                debug!(option = opt, error = %e, "invalid option");
                encode_rep_error(&mut out, opt, REP_ERR_INVALID, &e.to_string());
            }
        }
        s.write_all(&out).await?;
        s.flush().await?;
        if let Some(sess) = enter {
            return Ok(NegoEnd::Enter(sess));
        }
    }
}

/// Snapshot what the client is told about `export`.
fn session(export: Arc<dyn Export>, structured: bool, agreed: bool) -> Session {
    let params = TransmissionParams {
        size: export.size(),
        flags: transmission_flags(&export.caps(), structured),
        block_sizes: sanitize_block_sizes(export.block_sizes()),
        block_size_agreed: agreed,
    };
    Session {
        export,
        params,
        structured,
    }
}

// ---------------------------------------------------------------------------
// In-flight table and buffer pool
// ---------------------------------------------------------------------------

/// What the writer needs to answer one request.
#[derive(Debug, Clone, Copy, Default)]
struct SlotInfo {
    active: bool,
    is_read: bool,
    cookie: u64,
    offset: u64,
    len: u32,
    /// Buffer bytes charged against the connection's budget.
    cost: usize,
    /// Bytes taken from the server-wide budget (a write's grow as its
    /// payload arrives).
    charged: usize,
    /// Message for a structured error reply of an early rejection.
    msg: &'static str,
}

/// Buffers at their grown length, for reuse: at most [`POOL_COUNT`] and
/// [`POOL_BYTES`] per connection, none above [`POOL_MAX_BUF`], and all
/// pools together within the budget's pool limit.
struct BufPool {
    bufs: Vec<IoBuf>,
    bytes: usize,
    budget: Arc<Budget>,
}

impl BufPool {
    fn new(budget: Arc<Budget>) -> BufPool {
        BufPool {
            bufs: Vec::new(),
            bytes: 0,
            budget,
        }
    }

    /// A buffer for `len` bytes: a pooled one big enough if there is one
    /// (else the biggest, to grow), else a new empty one.
    fn take(&mut self, len: usize) -> IoBuf {
        if len == 0 || self.bufs.is_empty() {
            return IoBuf::new();
        }
        let i = self
            .bufs
            .iter()
            .position(|b| b.capacity() >= len)
            .unwrap_or(self.bufs.len() - 1);
        let v = self.bufs.swap_remove(i);
        self.bytes -= v.capacity();
        self.budget.pool_take(v.capacity());
        v
    }

    fn put(&mut self, v: IoBuf) {
        let cap = v.capacity();
        if cap == 0
            || cap > POOL_MAX_BUF
            || self.bufs.len() >= POOL_COUNT
            || self.bytes + cap > POOL_BYTES
            || !self.budget.pool_put(cap)
        {
            return;
        }
        self.bytes += cap;
        self.bufs.push(v);
    }
}

impl Drop for BufPool {
    fn drop(&mut self) {
        self.budget.pool_take(self.bytes);
    }
}

struct Table {
    slots: Vec<SlotInfo>,
    free: Vec<u32>,
    bytes: usize,
    pool: BufPool,
}

/// State shared by a connection's reader and writer.
struct Shared {
    table: Mutex<Table>,
    max_bytes: usize,
    /// The server-wide memory budget and this connection's part of it.
    budget: Arc<Budget>,
    held: Held,
    /// The writer freed a slot.
    space: Notify,
    /// The writer failed (the client is gone).
    dead: Notify,
    is_dead: AtomicBool,
}

impl Shared {
    fn new(limits: Limits, budget: Arc<Budget>) -> Shared {
        let n = limits.max_inflight.clamp(1, u32::MAX as usize);
        Shared {
            table: Mutex::new(Table {
                slots: vec![SlotInfo::default(); n],
                free: (0..n as u32).rev().collect(),
                bytes: 0,
                pool: BufPool::new(budget.clone()),
            }),
            max_bytes: limits.max_inflight_bytes.max(1),
            budget,
            held: Held::default(),
            space: Notify::new(),
            dead: Notify::new(),
            is_dead: AtomicBool::new(false),
        }
    }

    /// Take a slot and a (possibly too short) buffer if the budget allows.
    /// A request bigger than the whole budget is admitted alone.
    fn try_admit(&self, info: SlotInfo) -> Option<(u32, IoBuf)> {
        let mut t = self.table.lock();
        let &idx = t.free.last()?;
        if t.bytes + info.cost > self.max_bytes && t.bytes != 0 {
            return None;
        }
        t.free.pop();
        t.bytes += info.cost;
        t.slots[idx as usize] = SlotInfo {
            active: true,
            ..info
        };
        let buf = t.pool.take(info.cost);
        Some((idx, buf))
    }

    /// Wait for a slot; `None` if the writer died.
    async fn admit(&self, info: SlotInfo) -> Option<(u32, IoBuf)> {
        loop {
            if self.is_dead.load(Ordering::Acquire) {
                return None;
            }
            if let Some(x) = self.try_admit(info) {
                return Some(x);
            }
            self.space.notified().await;
        }
    }

    /// Records what an admitted request took from the server budget.
    fn set_charged(&self, slot: u32, charged: usize) {
        if let Some(s) = self.table.lock().slots.get_mut(slot as usize) {
            s.charged = charged;
        }
    }

    fn lookup(&self, cookie: u64) -> Option<SlotInfo> {
        let t = self.table.lock();
        let s = t.slots.get(usize::try_from(cookie).ok()?)?;
        s.active.then_some(*s)
    }

    fn release(&self, cookie: u64, info: &SlotInfo, buf: IoBuf) {
        {
            let mut t = self.table.lock();
            let idx = cookie as usize;
            t.slots[idx].active = false;
            t.free.push(idx as u32);
            t.bytes -= info.cost;
            t.pool.put(buf);
        }
        self.budget.give(&self.held, info.charged);
        self.space.notify_one();
    }

    fn kill(&self) {
        self.is_dead.store(true, Ordering::Release);
        self.dead.notify_one();
        self.space.notify_one();
    }

    /// Takes `n` bytes of the server budget, waiting if needed; `false` if
    /// the connection ends meanwhile (writer gone or shutdown).
    async fn charge(
        &self,
        n: usize,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), ReaderEnd> {
        if self.budget.try_take(&self.held, n) {
            return Ok(());
        }
        tokio::select! {
            biased;
            _ = shutdown_requested(shutdown) => Err(ReaderEnd::Shutdown),
            _ = self.dead.notified() => Err(ReaderEnd::WriterGone),
            _ = self.budget.take(&self.held, n) => Ok(()),
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Whatever requests the connection left unanswered (a writer that
        // failed, a reader that stopped mid-payload) goes back.
        let h = self.held.get();
        self.budget.give(&self.held, h);
    }
}

// ---------------------------------------------------------------------------
// Transmission
// ---------------------------------------------------------------------------

/// Why the reader stopped.
#[derive(Debug)]
enum ReaderEnd {
    Disconnect,
    Eof,
    Shutdown,
    /// The export was closed (its map removed by a reconfigure).
    ExportClosed,
    WriterGone,
    Protocol(ProtoError),
    Io(io::Error),
    /// The client sent part of a payload, then nothing for the deadline.
    PayloadStall {
        got: usize,
        payload: usize,
    },
}

/// Serves one session in transmission. `fd` is the socket under `w` when
/// replies can be written to it raw (no TLS): IO threads then write the
/// replies of what they complete themselves ([`Direct`]).
async fn transmission<R, W>(reader: BufReader<R>, w: W, fd: Option<RawFd>, s: Session, env: ConnEnv)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let limits = env.limits;
    let shared = Arc::new(Shared::new(limits, env.budget.clone()));
    let (tx, rx) = mpsc::unbounded_channel();
    let direct = fd.map(|fd| Arc::new(Direct::new(fd, shared.clone(), s.structured)));
    let tx = match &direct {
        Some(d) => ReplySender::with_direct(tx, d.clone()),
        None => ReplySender::new(tx),
    };
    let sink = Sink { w, direct };
    let mut writer = AbortOnDrop(tokio::spawn(
        writer_loop(
            sink,
            rx,
            shared.clone(),
            s.structured,
            limits.payload_timeout,
        )
        .instrument(env.span.clone()),
    ));
    let mut requests = 0u64;
    let end = reader_loop(
        reader,
        &s,
        tx,
        &shared,
        env.shutdown,
        &mut requests,
        &limits,
    )
    .await;
    match &end {
        ReaderEnd::Protocol(e) => warn!(error = %e, "protocol violation; closing"),
        ReaderEnd::ExportClosed => {
            info!("the export was removed; ending the session once in-flight requests are answered")
        }
        ReaderEnd::Io(e) if !is_disconnect(e) => warn!(error = %e, "read failed; closing"),
        ReaderEnd::PayloadStall { got, payload } => {
            if let Some(suppressed) = env.notices.allow("payload-stall", &env.peer_key) {
                warn!(
                    peer = %env.peer_key,
                    suppressed,
                    "client sent {got} of {payload} payload bytes, then nothing for {} s; closing",
                    limits.payload_timeout.as_secs_f32()
                );
            }
        }
        other => debug!(reason = ?other, "reader finished"),
    }
    // The writer drains every request still in flight, then closes.
    match (&mut writer.0).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) if e.kind() == io::ErrorKind::TimedOut => {
            if let Some(suppressed) = env.notices.allow("reply-stall", &env.peer_key) {
                warn!(peer = %env.peer_key, suppressed, "{e}; closing");
            }
        }
        Ok(Err(e)) => debug!(error = %e, "writer stopped"),
        Err(e) => error!(error = %e, "writer task failed"),
    }
    info!(requests, "connection closed");
}

/// Aborts the task when dropped, so a connection aborted from outside
/// (e.g. the server future dropped after a shutdown timeout) takes its
/// writer with it.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn errno_to_io(errno: u32) -> IoError {
    match errno {
        EPERM => IoError::Perm,
        EIO => IoError::Io,
        ENOMEM => IoError::NoMem,
        ENOSPC => IoError::NoSpc,
        EOVERFLOW => IoError::Overflow,
        ENOTSUP => IoError::NotSup,
        ESHUTDOWN => IoError::Shutdown,
        _ => IoError::Inval,
    }
}

fn io_error_message(e: IoError) -> &'static str {
    match e {
        IoError::Perm => "operation not permitted",
        IoError::Io => "input/output error",
        IoError::NoMem => "out of memory",
        IoError::Inval => "invalid argument",
        IoError::NoSpc => "no space left",
        IoError::Overflow => "value too large",
        IoError::NotSup => "operation not supported",
        IoError::Shutdown => "server is shutting down",
    }
}

/// Requests read but not yet handed to the export. The reader collects
/// the requests whose bytes are all buffered and hands them over together
/// under an engine [`Plug`](crate::engine::uring::Plug): one
/// `io_uring_enter` (one doorbell for the device) per batch rather than
/// per request. They are handed over before the reader awaits anything
/// (their slots and budget may be what it would wait for), at
/// [`BATCH_MAX`], and when the reader ends.
struct Pending<'a> {
    export: &'a Arc<dyn Export>,
    reqs: Vec<Request>,
}

/// At most this many requests wait in a [`Pending`] batch.
const BATCH_MAX: usize = 32;

impl Pending<'_> {
    fn push(&mut self, req: Request) {
        self.reqs.push(req);
        if self.reqs.len() >= BATCH_MAX {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.reqs.is_empty() {
            return;
        }
        let _plug = crate::engine::uring::Plug::new();
        for req in self.reqs.drain(..) {
            self.export.submit(req);
        }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

/// True if the next request (header and any write payload) is already in
/// `buf`, so reading it needs no await.
fn next_request_buffered(buf: &[u8]) -> bool {
    let Some(h) = buf.get(..REQUEST_HEADER_LEN) else {
        return false;
    };
    // type at 6..8, length at 24..28 (big-endian); only a write carries
    // a payload.
    let is_write = u16::from_be_bytes([h[6], h[7]]) == 1;
    let len = u32::from_be_bytes([h[24], h[25], h[26], h[27]]) as usize;
    !is_write || buf.len() >= REQUEST_HEADER_LEN + len
}

async fn reader_loop<R: AsyncRead + Unpin>(
    mut rd: BufReader<R>,
    s: &Session,
    tx: ReplySender,
    sh: &Shared,
    mut shutdown: watch::Receiver<bool>,
    requests: &mut u64,
    limits: &Limits,
) -> ReaderEnd {
    let p = &s.params;
    let unaligned = (!p.block_size_agreed && p.block_sizes.minimum > 1)
        .then(|| Unaligned::new(s.export.clone(), p.block_sizes.minimum, p.size));
    let mut hb = [0u8; REQUEST_HEADER_LEN];
    let mut closed = s.export.closed();
    let mut pending = Pending {
        export: &s.export,
        reqs: Vec::new(),
    };
    loop {
        if !next_request_buffered(rd.buffer()) {
            pending.flush();
        }
        if shutdown_now(&mut shutdown) {
            return ReaderEnd::Shutdown;
        }
        if export_closed_now(&closed) {
            return ReaderEnd::ExportClosed;
        }
        if sh.is_dead.load(Ordering::Acquire) {
            return ReaderEnd::WriterGone;
        }
        // A whole header is often buffered already: no await needed.
        if rd.buffer().len() >= REQUEST_HEADER_LEN {
            hb.copy_from_slice(&rd.buffer()[..REQUEST_HEADER_LEN]);
            rd.consume(REQUEST_HEADER_LEN);
        } else {
            tokio::select! {
                biased;
                _ = shutdown_requested(&mut shutdown) => return ReaderEnd::Shutdown,
                _ = export_closed(&mut closed) => return ReaderEnd::ExportClosed,
                _ = sh.dead.notified() => return ReaderEnd::WriterGone,
                r = rd.read_exact(&mut hb) => match r {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return ReaderEnd::Eof,
                    Err(e) => return ReaderEnd::Io(e),
                },
            }
        }
        let h = match RequestHeader::decode(&hb, MAX_PAYLOAD) {
            Ok(h) => h,
            Err(e) => return ReaderEnd::Protocol(e),
        };
        *requests += 1;
        let checked = proto::check_request(&h, p);
        if checked == Ok(Action::Disconnect) {
            return ReaderEnd::Disconnect;
        }
        let payload = h.payload_len() as usize;
        let buf_len = match checked {
            Ok(Action::Read { len, .. }) => len as usize,
            _ => payload,
        };
        let info = SlotInfo {
            active: true,
            is_read: h.command == Command::Read,
            cookie: h.cookie,
            offset: h.offset,
            len: h.len,
            cost: buf_len,
            charged: 0,
            msg: checked.err().map_or("", |e| e.msg),
        };
        let (slot, mut buf) = match sh.try_admit(info) {
            Some(x) => x,
            None => {
                pending.flush();
                tokio::select! {
                biased;
                _ = shutdown_requested(&mut shutdown) => return ReaderEnd::Shutdown,
                r = sh.admit(info) => match r {
                    Some(x) => x,
                    None => return ReaderEnd::WriterGone,
                },
                }
            }
        };
        // The server budget: a read's buffer now, a write's payload as it
        // arrives. (A stop here leaves the slot taken: the connection is
        // ending and `Shared` gives its bytes back.)
        let mut charged = 0;
        if payload > 0 && rd.buffer().len() >= payload && sh.budget.try_take(&sh.held, payload) {
            // All of it is here: no await.
            grow(&mut buf, payload, payload);
            buf[..payload].copy_from_slice(&rd.buffer()[..payload]);
            rd.consume(payload);
            charged = payload;
        } else if payload > 0 {
            pending.flush();
            let r = read_payload(
                &mut rd,
                &mut buf,
                payload,
                sh,
                limits.payload_timeout,
                &mut shutdown,
                &mut charged,
            )
            .await;
            if let Err(end) = r {
                drop(buf);
                sh.budget.give(&sh.held, charged);
                return end;
            }
        } else if buf_len > 0 {
            if !sh.budget.try_take(&sh.held, buf_len) {
                pending.flush();
                if let Err(end) = sh.charge(buf_len, &mut shutdown).await {
                    return end;
                }
            }
            charged = buf_len;
            if buf.len() < buf_len {
                buf.resize(buf_len, 0);
            }
        }
        sh.set_charged(slot, charged);
        let cookie = u64::from(slot);
        let action = match checked {
            Ok(a) => a,
            Err(e) => {
                complete(&tx, cookie, Err(errno_to_io(e.errno)), buf);
                continue;
            }
        };
        let (op, offset, len, fua) = match action {
            Action::Read { offset, len, fua } => (Op::Read, offset, len, fua),
            Action::Write { offset, len, fua } => (Op::Write, offset, len, fua),
            Action::Flush { fua } => (Op::Flush, 0, 0, fua),
            Action::Trim { offset, len, fua } => (Op::Trim, offset, len, fua),
            Action::WriteZeroes {
                offset,
                len,
                fua,
                no_hole,
                fast,
            } => (Op::WriteZeroes { no_hole, fast }, offset, len, fua),
            Action::Disconnect => return ReaderEnd::Disconnect,
        };
        if len == 0 && op != Op::Flush {
            // Nothing to do; the spec leaves it unspecified but says not
            // to disconnect.
            complete(&tx, cookie, Ok(()), buf);
            continue;
        }
        if let Some(u) = &unaligned {
            if u.needed(offset, len) {
                pending.flush();
                u.submit(action, cookie, buf, tx.clone());
                continue;
            }
        }
        pending.push(Request {
            op,
            offset,
            len,
            fua,
            cookie,
            buf,
            reply: tx.clone(),
        });
    }
}

/// Reads a `payload` of bytes into `buf`, growing it and charging the
/// server budget a chunk at a time as the bytes arrive. Each read must
/// make progress within `deadline`.
async fn read_payload<R: AsyncRead + Unpin>(
    rd: &mut BufReader<R>,
    buf: &mut IoBuf,
    payload: usize,
    sh: &Shared,
    deadline: Duration,
    shutdown: &mut watch::Receiver<bool>,
    charged: &mut usize,
) -> Result<(), ReaderEnd> {
    let mut got = 0;
    while got < payload {
        let end = payload.min(got + PAYLOAD_CHUNK);
        if got == 0 {
            // A header alone takes nothing: wait for the first bytes.
            let r = tokio::select! {
                biased;
                _ = sh.dead.notified() => return Err(ReaderEnd::WriterGone),
                r = tokio::time::timeout(deadline, rd.fill_buf()) => r,
            };
            match r {
                Err(_) => return Err(ReaderEnd::PayloadStall { got, payload }),
                Ok(Ok([])) => return Err(ReaderEnd::Eof),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(ReaderEnd::Io(e)),
            }
        }
        // The whole payload at once: payloads charged a chunk at a time
        // could share the budget out among many half-read writes, none of
        // which could finish (found by tests/limits.rs, 16 clients of
        // 4 MiB writes on a 32 MiB budget).
        if *charged < payload {
            sh.charge(payload - *charged, shutdown).await?;
            *charged = payload;
        }
        grow(buf, end, payload);
        while got < end {
            let r = tokio::select! {
                biased;
                _ = sh.dead.notified() => return Err(ReaderEnd::WriterGone),
                r = tokio::time::timeout(deadline, rd.read(&mut buf[got..end])) => r,
            };
            match r {
                Err(_) => return Err(ReaderEnd::PayloadStall { got, payload }),
                Ok(Ok(0)) => return Err(ReaderEnd::Eof),
                Ok(Ok(n)) => got += n,
                Ok(Err(e)) => return Err(ReaderEnd::Io(e)),
            }
        }
    }
    Ok(())
}

/// Makes `buf` at least `need` long, growing its capacity geometrically
/// but never beyond `max`.
fn grow(buf: &mut IoBuf, need: usize, max: usize) {
    if buf.len() >= need {
        return;
    }
    if buf.capacity() < need {
        let target = buf.capacity().saturating_mul(2).clamp(need, max.max(need));
        buf.reserve_exact(target - buf.len());
    }
    buf.resize(need, 0);
}

fn complete(tx: &ReplySender, cookie: u64, result: Result<(), IoError>, buf: IoBuf) {
    let _ = tx.send(Completion {
        cookie,
        result,
        buf,
    });
}

// ---------------------------------------------------------------------------
// Direct replies
// ---------------------------------------------------------------------------

/// Replies written by the thread that completed the request (an engine IO
/// thread), on plain sockets: one thread hop per request instead of two
/// (IO thread, then the writer task). The writer task and such threads
/// share the socket:
///
/// - A direct reply is written under `state`'s lock with one non-blocking
///   `sendmsg`, only while the writer is idle and nothing is left over
///   from an earlier direct reply; otherwise (or when the socket takes
///   nothing) it goes through the channel as before. The lock is never
///   held across an await or a blocking call.
/// - A reply the socket took only part of becomes the [`Rest`]: no direct
///   reply is written after it, the writer is woken (a completion with
///   [`WAKE_COOKIE`] through the channel) and writes it first,
///   before any batch, so bytes of two replies never interleave.
/// - The writer marks itself busy (under the lock) before it writes and
///   idle after; it marks the connection closed before its write half
///   goes away ([`Sink`]'s drop), so no byte is written to a socket that
///   was shut or to a descriptor that was closed (and maybe reused).
/// - A direct reply does what the writer does for one: encodes it
///   (structured or simple), then frees the slot, the pooled buffer and
///   the budget ([`Shared::release`]) once every byte is written.
struct Direct {
    fd: RawFd,
    sh: Arc<Shared>,
    structured: bool,
    state: Mutex<DirectState>,
}

/// The cookie of the completion a short direct write sends through the
/// channel to wake the writer for its [`Rest`] (slot numbers are `u32`).
const WAKE_COOKIE: u64 = u64::MAX;

#[derive(Default)]
struct DirectState {
    /// The writer is writing: direct replies go through the channel.
    busy: bool,
    /// The connection's write side is gone: nothing more is written.
    closed: bool,
    /// The unwritten end of a direct reply; the writer writes it first.
    rest: Option<Rest>,
    /// Header bytes of the reply being written (reused).
    head: Vec<u8>,
}

/// What a short direct write left: `head[head_done..]`, then
/// `buf[payload_done..payload]`.
struct Rest {
    head: Vec<u8>,
    head_done: usize,
    buf: IoBuf,
    payload: usize,
    payload_done: usize,
    cookie: u64,
    info: SlotInfo,
}

impl Direct {
    fn new(fd: RawFd, sh: Arc<Shared>, structured: bool) -> Direct {
        Direct {
            fd,
            sh,
            structured,
            state: Mutex::new(DirectState::default()),
        }
    }

    /// The writer is about to write: direct replies wait in the channel
    /// from now on; returns what a short direct write left, to write first.
    fn begin(&self) -> Option<Rest> {
        let mut st = self.state.lock();
        st.busy = true;
        st.rest.take()
    }

    /// The writer is idle again.
    fn end(&self) {
        self.state.lock().busy = false;
    }

    /// Nothing more may be written (the writer failed, shut the socket or
    /// is going away); what a short direct write left is dropped and its
    /// slot released.
    fn close(&self) {
        let rest = {
            let mut st = self.state.lock();
            st.closed = true;
            st.busy = true;
            st.rest.take()
        };
        if let Some(r) = rest {
            self.sh.release(r.cookie, &r.info, r.buf);
        }
    }
}

impl DirectReply for Direct {
    fn try_reply(&self, c: Completion) -> Option<Completion> {
        let mut st = self.state.lock();
        if st.closed || st.busy || st.rest.is_some() {
            return Some(c);
        }
        // Unknown cookies are the writer's to report.
        let Some(info) = self.sh.lookup(c.cookie) else {
            return Some(c);
        };
        let mut head = std::mem::take(&mut st.head);
        head.clear();
        let payload = encode_reply(&mut head, &info, &c, self.structured);
        let iov = [
            io::IoSlice::new(&head),
            io::IoSlice::new(c.buf.get(..payload).unwrap_or_default()),
        ];
        let total = head.len() + payload;
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
        let sent = loop {
            match socket::sendmsg::<()>(self.fd, &iov, &[], flags, None) {
                Err(Errno::EINTR) => continue,
                r => break r,
            }
        };
        match sent {
            // Nothing written (full socket, or an error the writer will
            // meet and handle): the writer sends it.
            Err(_) | Ok(0) => {
                st.head = head;
                Some(c)
            }
            Ok(n) if n >= total => {
                st.head = head;
                drop(st);
                self.sh.release(c.cookie, &info, c.buf);
                None
            }
            Ok(n) => {
                let head_done = n.min(head.len());
                st.rest = Some(Rest {
                    head,
                    head_done,
                    buf: c.buf,
                    payload,
                    payload_done: n - head_done,
                    cookie: c.cookie,
                    info,
                });
                // The writer takes the rest when this wakes it, if it has
                // not taken it before.
                Some(Completion {
                    cookie: WAKE_COOKIE,
                    result: Ok(()),
                    buf: IoBuf::new(),
                })
            }
        }
    }
}

/// The writer's half of the socket; marks the connection closed for
/// direct replies before the half is dropped (whatever drops it: the end
/// of the writer, an error, an aborted task).
struct Sink<W> {
    w: W,
    direct: Option<Arc<Direct>>,
}

impl<W> Drop for Sink<W> {
    fn drop(&mut self) {
        if let Some(d) = &self.direct {
            d.close();
        }
    }
}

/// Turns completions into replies: waits for one, takes every other one
/// already queued (up to a [`Batch`]'s bounds), writes them all with one
/// vectored write straight from the request buffers, then frees their
/// slots. With direct replies ([`Direct`]) it first writes what a short
/// direct write left. On a write error it closes the connection and only
/// gives back what the requests still in flight hold.
async fn writer_loop<W: AsyncWrite + Unpin>(
    mut sink: Sink<W>,
    mut rx: UnboundedReceiver<Completion>,
    sh: Arc<Shared>,
    structured: bool,
    stall: Duration,
) -> io::Result<()> {
    let mut batch: Batch<(u64, SlotInfo)> = Batch::default();
    let mut staging = Vec::new();
    let direct = sink.direct.clone();
    let r = async {
        loop {
            let next = rx.recv().await;
            if let Some(rest) = direct.as_ref().and_then(|d| d.begin()) {
                let r = {
                    let mut slices = [
                        io::IoSlice::new(&rest.head[rest.head_done..]),
                        io::IoSlice::new(&rest.buf[rest.payload_done..rest.payload]),
                    ];
                    guarded(
                        wire::write_all(&mut sink.w, &mut slices, &mut staging),
                        &sh,
                        stall,
                    )
                    .await
                };
                sh.release(rest.cookie, &rest.info, rest.buf);
                r?;
            }
            let Some(c) = next else {
                break;
            };
            add_reply(&mut batch, &sh, c, structured);
            while !batch.is_full() {
                match rx.try_recv() {
                    Ok(c) => add_reply(&mut batch, &sh, c, structured),
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                let r = {
                    let mut slices = batch.slices();
                    guarded(
                        wire::write_all(&mut sink.w, &mut slices, &mut staging),
                        &sh,
                        stall,
                    )
                    .await
                };
                for ((cookie, info), buf) in batch.drain() {
                    sh.release(cookie, &info, buf);
                }
                r?;
            }
            if let Some(d) = &direct {
                d.end();
            }
        }
        // Every request is answered (no sender is left): nothing more is
        // written directly, and the socket is shut.
        if let Some(d) = &direct {
            d.close();
        }
        guarded(sink.w.shutdown(), &sh, stall).await
    }
    .await;
    if r.is_err() {
        sh.kill();
        // Close our half now; answer nothing more, but give back what the
        // requests still in flight hold as they complete.
        drop(sink);
        while let Some(c) = rx.recv().await {
            if let Some(info) = sh.lookup(c.cookie) {
                sh.release(c.cookie, &info, IoBuf::new());
            }
        }
    }
    r
}

/// Adds the reply to one completion to `batch` (nothing for a cookie that
/// is not in flight).
fn add_reply(batch: &mut Batch<(u64, SlotInfo)>, sh: &Shared, c: Completion, structured: bool) {
    if c.cookie == WAKE_COOKIE {
        // Only woke the writer for a direct reply's rest (written first).
        return;
    }
    let Some(info) = sh.lookup(c.cookie) else {
        error!(cookie = c.cookie, "export completed an unknown request");
        return;
    };
    let payload = encode_reply(batch.heads_mut(), &info, &c, structured);
    batch.push((c.cookie, info), c.buf, payload);
}

/// Runs a write to the client, failing with `TimedOut` if it does not
/// complete within `stall` (the client stopped reading its replies), or
/// within [`HOG_STALL`] while the connection holds more than its fair
/// share of a memory budget others wait for.
async fn guarded<F: Future<Output = io::Result<()>>>(
    f: F,
    sh: &Shared,
    stall: Duration,
) -> io::Result<()> {
    let mut f = std::pin::pin!(f);
    // Most writes only fill the buffer: no timer for them.
    if let Poll::Ready(r) = std::future::poll_fn(|cx| Poll::Ready(f.as_mut().poll(cx))).await {
        return r;
    }
    let start = tokio::time::Instant::now();
    loop {
        tokio::select! {
            biased;
            r = &mut f => return r,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        let waited = start.elapsed();
        if waited >= stall {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the client read no reply for {} s",
                    waited.as_secs_f32().round()
                ),
            ));
        }
        let held = sh.held.get();
        if waited >= HOG_STALL && sh.budget.under_pressure() && held > sh.budget.fair_share() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the client read no reply for {} s while holding {} MiB, more than its share of the exhausted NBD memory budget",
                    waited.as_secs_f32().round(),
                    held >> 20
                ),
            ));
        }
    }
}

/// Appends the reply's header (and a structured error's message) to
/// `out`; returns how many bytes of the completion's buffer follow it as
/// the payload.
fn encode_reply(out: &mut Vec<u8>, info: &SlotInfo, c: &Completion, structured: bool) -> usize {
    let len = info.len as usize;
    let mut result = c.result;
    // An export must hand back at least `len` bytes for a read.
    if info.is_read && result.is_ok() && c.buf.len() < len {
        error!(cookie = info.cookie, "export returned a short read buffer");
        result = Err(IoError::Io);
    }
    match result {
        Ok(()) if info.is_read && len > 0 => {
            if structured {
                let hdr = encode_offset_data_header(info.cookie, info.offset, info.len, true);
                out.extend_from_slice(&hdr);
            } else {
                out.extend_from_slice(&encode_simple_reply(0, info.cookie));
            }
            len
        }
        Ok(()) => {
            if structured {
                out.extend_from_slice(&encode_none_chunk(info.cookie));
            } else {
                out.extend_from_slice(&encode_simple_reply(0, info.cookie));
            }
            0
        }
        Err(e) => {
            let errno = e.nbd_errno();
            if structured {
                let msg = if info.msg.is_empty() {
                    io_error_message(e)
                } else {
                    info.msg
                };
                let msg = error_message(msg);
                let hdr = encode_error_chunk_header(info.cookie, errno, msg.len() as u16);
                out.extend_from_slice(&hdr);
                out.extend_from_slice(msg.as_bytes());
            } else {
                out.extend_from_slice(&encode_simple_reply(errno, info.cookie));
            }
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(n: usize, bytes: usize) -> Limits {
        Limits {
            max_inflight: n,
            max_inflight_bytes: bytes,
            ..Limits::default()
        }
    }

    fn shared(n: usize, bytes: usize) -> Shared {
        Shared::new(limits(n, bytes), Arc::new(Budget::new(1 << 30)))
    }

    fn info(cost: usize) -> SlotInfo {
        SlotInfo {
            cost,
            ..SlotInfo::default()
        }
    }

    #[test]
    fn admission_bounds_count_and_bytes() {
        let sh = shared(2, 1000);
        let (a, _) = sh.try_admit(info(600)).unwrap();
        assert!(sh.try_admit(info(600)).is_none(), "byte budget");
        let (b, _) = sh.try_admit(info(100)).unwrap();
        assert!(sh.try_admit(info(0)).is_none(), "slot budget");
        assert_ne!(a, b);
        assert!(sh.lookup(u64::from(a)).is_some());
        sh.release(u64::from(a), &info(600), IoBuf::from(vec![0; 600]));
        assert!(sh.lookup(u64::from(a)).is_none());
        assert!(sh.lookup(99).is_none());
        // The released buffer is reused at its grown length.
        let (_, buf) = sh.try_admit(info(10)).unwrap();
        assert_eq!(buf.len(), 600);
    }

    #[test]
    fn oversized_request_admitted_alone() {
        let sh = shared(4, 100);
        let (a, _) = sh.try_admit(info(1000)).unwrap();
        assert!(sh.try_admit(info(1)).is_none());
        sh.release(u64::from(a), &info(1000), IoBuf::new());
        assert!(sh.try_admit(info(1)).is_some());
    }

    #[test]
    fn release_gives_the_server_budget_back() {
        let budget = Arc::new(Budget::new(1 << 20));
        let sh = Shared::new(limits(4, 1 << 20), budget.clone());
        let (a, _) = sh.try_admit(info(1000)).unwrap();
        assert!(sh.budget.try_take(&sh.held, 1000));
        sh.set_charged(a, 1000);
        assert_eq!(budget.used(), 1000);
        let i = sh.lookup(u64::from(a)).unwrap();
        sh.release(u64::from(a), &i, IoBuf::new());
        assert_eq!(budget.used(), 0);
        // What a connection still holds when it ends goes back too.
        assert!(sh.budget.try_take(&sh.held, 500));
        drop(sh);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn pool_is_bounded_and_frees_big_buffers() {
        let budget = Arc::new(Budget::new(1 << 30));
        let mut p = BufPool::new(budget.clone());
        for _ in 0..(POOL_COUNT + 4) {
            p.put(IoBuf::from(vec![0; 10]));
        }
        assert_eq!(p.bufs.len(), POOL_COUNT);
        let mut p = BufPool::new(budget.clone());
        p.put(IoBuf::from(vec![0; POOL_MAX_BUF + 1]));
        assert!(p.bufs.is_empty(), "big buffers are freed");
        for _ in 0..4 {
            p.put(IoBuf::from(vec![0; POOL_MAX_BUF]));
        }
        assert_eq!(p.bytes, POOL_BYTES);
        assert_eq!(p.bufs.len(), POOL_BYTES / POOL_MAX_BUF);
        assert_eq!(p.take(100).len(), POOL_MAX_BUF);
        assert_eq!(p.take(0).capacity(), 0);
        drop(p);
        assert_eq!(budget.pooled(), 16 * 10);
    }

    #[test]
    fn pools_together_stay_within_the_budget_pool_limit() {
        let budget = Arc::new(Budget::new(16 * 1024 * 1024)); // pool limit 1 MiB
        let mut a = BufPool::new(budget.clone());
        let mut b = BufPool::new(budget.clone());
        a.put(IoBuf::from(vec![0; 768 * 1024]));
        b.put(IoBuf::from(vec![0; 512 * 1024]));
        assert_eq!((a.bufs.len(), b.bufs.len()), (1, 0));
        drop(a);
        b.put(IoBuf::from(vec![0; 512 * 1024]));
        assert_eq!(b.bufs.len(), 1);
    }

    #[test]
    fn grow_is_geometric_and_capped() {
        let mut v = IoBuf::new();
        grow(&mut v, 10, 100);
        assert_eq!(v.len(), 10);
        grow(&mut v, 30, 100);
        assert!(v.capacity() >= 30 && v.capacity() <= 100);
        grow(&mut v, 100, 100);
        assert_eq!((v.len(), v.capacity()), (100, 100));
    }

    /// Runs the writer over `reads` ready read completions of `len` bytes
    /// each (payload byte = index) and returns the fake stream.
    async fn write_ready_reads(reads: usize, len: u32, structured: bool) -> wire::testing::Trickle {
        let sh = Arc::new(shared(256, 1 << 30));
        let (tx, rx) = mpsc::unbounded_channel();
        let tx = ReplySender::new(tx);
        for i in 0..reads {
            let (slot, _) = sh
                .try_admit(SlotInfo {
                    is_read: true,
                    cookie: 1000 + i as u64,
                    offset: 4096 * i as u64,
                    len,
                    cost: len as usize,
                    ..SlotInfo::default()
                })
                .unwrap();
            complete(
                &tx,
                u64::from(slot),
                Ok(()),
                IoBuf::from(vec![i as u8; len as usize]),
            );
        }
        drop(tx);
        let mut w = wire::testing::Trickle::new(usize::MAX, true);
        let sink = Sink {
            w: &mut w,
            direct: None,
        };
        writer_loop(sink, rx, sh.clone(), structured, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(sh.table.lock().bytes, 0, "every slot released");
        w
    }

    #[tokio::test]
    async fn ready_replies_go_out_in_one_write() {
        let w = write_ready_reads(20, 4096, false).await;
        assert_eq!(w.calls, 1);
        let mut rest = &w.out[..];
        for i in 0..20u8 {
            let r = SimpleReply::decode(&rest[..SIMPLE_REPLY_LEN]).unwrap();
            assert_eq!((r.errno, r.cookie), (0, 1000 + u64::from(i)));
            let data = &rest[SIMPLE_REPLY_LEN..SIMPLE_REPLY_LEN + 4096];
            assert!(data.iter().all(|&b| b == i));
            rest = &rest[SIMPLE_REPLY_LEN + 4096..];
        }
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn batches_are_bounded_by_count_and_bytes() {
        let w = write_ready_reads(100, 4096, true).await;
        assert_eq!(w.calls, 2, "64 replies, then 36");
        assert_eq!(w.out.len(), 100 * (OFFSET_DATA_HEADER_LEN + 4096));
        let w = write_ready_reads(8, 1 << 20, false).await;
        assert_eq!(w.calls, 2, "4 MiB per write");
        assert_eq!(w.out.len(), 8 * (SIMPLE_REPLY_LEN + (1 << 20)));
    }

    #[tokio::test]
    async fn writer_survives_a_trickling_client() {
        let sh = Arc::new(shared(8, 1 << 30));
        let (tx, rx) = mpsc::unbounded_channel();
        let tx = ReplySender::new(tx);
        let (a, _) = sh
            .try_admit(SlotInfo {
                is_read: true,
                cookie: 7,
                len: 3,
                cost: 3,
                ..SlotInfo::default()
            })
            .unwrap();
        let (b, _) = sh
            .try_admit(SlotInfo {
                cookie: 8,
                msg: "bad offset",
                ..SlotInfo::default()
            })
            .unwrap();
        complete(&tx, u64::from(a), Ok(()), IoBuf::from(vec![1, 2, 3]));
        complete(&tx, u64::from(b), Err(IoError::Inval), IoBuf::new());
        drop(tx);
        let mut w = wire::testing::Trickle::new(5, true);
        let sink = Sink {
            w: &mut w,
            direct: None,
        };
        writer_loop(sink, rx, sh, true, Duration::from_secs(5))
            .await
            .unwrap();
        let mut want = encode_offset_data_header(7, 0, 3, true).to_vec();
        want.extend_from_slice(&[1, 2, 3]);
        want.extend_from_slice(&encode_error_chunk_header(8, 22, 10));
        want.extend_from_slice(b"bad offset");
        assert_eq!(w.out, want);
        assert_eq!(w.calls, want.len().div_ceil(5));
    }

    #[tokio::test]
    async fn admit_waits_for_release() {
        let sh = Arc::new(shared(1, 1 << 20));
        let (a, _) = sh.try_admit(info(1)).unwrap();
        let sh2 = sh.clone();
        let waiter = tokio::spawn(async move { sh2.admit(info(1)).await.map(|x| x.0) });
        tokio::task::yield_now().await;
        sh.release(u64::from(a), &info(1), IoBuf::new());
        assert_eq!(waiter.await.unwrap(), Some(a));
        let sh3 = sh.clone();
        let waiter = tokio::spawn(async move { sh3.admit(info(1)).await.map(|x| x.0) });
        tokio::task::yield_now().await;
        sh.kill();
        assert_eq!(waiter.await.unwrap(), None);
    }

    /// Admits `n` reads of varied lengths (cookie 1000 + i), each charged
    /// against the server budget as the reader would.
    fn admit_reads(sh: &Shared, n: usize) -> Vec<(u32, u32)> {
        (0..n)
            .map(|i| {
                let len = 1000 + (i as u32 * 977) % 100_000;
                let (slot, _) = sh
                    .try_admit(SlotInfo {
                        is_read: true,
                        cookie: 1000 + i as u64,
                        offset: 0,
                        len,
                        cost: len as usize,
                        ..SlotInfo::default()
                    })
                    .unwrap();
                assert!(sh.budget.try_take(&sh.held, len as usize));
                sh.set_charged(slot, len as usize);
                (slot, len)
            })
            .collect()
    }

    /// A socket pair whose server side sends through a small buffer, so
    /// that replies are written in pieces.
    fn small_pair() -> (UnixStream, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        nix::sys::socket::setsockopt(&a, nix::sys::socket::sockopt::SndBuf, &32768).unwrap();
        (a, b)
    }

    /// A writer task with direct replies on the server end of a
    /// [`small_pair`]; `b` is the client end.
    struct DirectWriter {
        b: UnixStream,
        direct: Arc<Direct>,
        tx: ReplySender,
        writer: tokio::task::JoinHandle<io::Result<()>>,
        _r: tokio::net::unix::OwnedReadHalf,
    }

    fn direct_writer(sh: &Arc<Shared>, structured: bool) -> DirectWriter {
        let (a, b) = small_pair();
        let direct = Arc::new(Direct::new(a.as_raw_fd(), sh.clone(), structured));
        let (_r, w) = a.into_split();
        let (tx, rx) = mpsc::unbounded_channel();
        let tx = ReplySender::with_direct(tx, direct.clone());
        let writer = tokio::spawn(writer_loop(
            Sink {
                w,
                direct: Some(direct.clone()),
            },
            rx,
            sh.clone(),
            structured,
            Duration::from_secs(10),
        ));
        DirectWriter {
            b,
            direct,
            tx,
            writer,
            _r,
        }
    }

    /// Completes `reads` from 4 threads (the first `direct` of them
    /// allowed to reply directly), payload byte = the read's index.
    fn complete_from_threads(
        tx: ReplySender,
        reads: Vec<(u32, u32)>,
        direct: usize,
    ) -> Vec<std::thread::JoinHandle<()>> {
        let reads = Arc::new(reads);
        (0..4)
            .map(|t| {
                let tx = tx.clone();
                let reads = reads.clone();
                std::thread::spawn(move || {
                    crate::export::allow_direct_replies(t < direct);
                    for (i, &(slot, len)) in reads.iter().enumerate().skip(t).step_by(4) {
                        tx.answer(Completion {
                            cookie: u64::from(slot),
                            result: Ok(()),
                            buf: IoBuf::from(vec![i as u8; len as usize]),
                        });
                        // Paced, so the writer is idle now and then.
                        std::thread::sleep(Duration::from_micros(200));
                    }
                })
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn direct_replies_never_interleave_on_short_writes() {
        // A short direct write is rare in a round (the writer then holds
        // the socket until the client reads): several rounds.
        for _ in 0..8 {
            interleave_round().await;
        }
    }

    /// 200 reads, up to 100 KiB each (bigger than the socket buffer),
    /// completed from threads, three of four replying directly, to a
    /// client that reads with pauses: every reply arrives once and whole.
    async fn interleave_round() {
        const N: usize = 200;
        let sh = Arc::new(shared(256, 1 << 30));
        let reads = admit_reads(&sh, N);
        let DirectWriter {
            mut b,
            direct: _direct,
            tx,
            writer,
            _r,
        } = direct_writer(&sh, false);
        let threads = complete_from_threads(tx, reads.clone(), 3);
        // Replies are bigger than the socket buffer: direct writes come
        // short. Reading pauses now and then, so the writer is sometimes
        // stuck on a full socket while threads complete.
        let mut out = Vec::new();
        let mut chunk = vec![0u8; 1 << 16];
        let mut reads_done = 0;
        loop {
            let n = b.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&chunk[..n]);
            reads_done += 1;
            if reads_done % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        for t in threads {
            t.join().unwrap();
        }
        writer.await.unwrap().unwrap();
        let mut seen = [false; N];
        let mut rest = &out[..];
        while !rest.is_empty() {
            let r = SimpleReply::decode(&rest[..SIMPLE_REPLY_LEN]).unwrap();
            assert_eq!(r.errno, 0);
            let i = (r.cookie - 1000) as usize;
            assert!(!seen[i], "reply {i} twice");
            seen[i] = true;
            let len = reads[i].1 as usize;
            let data = &rest[SIMPLE_REPLY_LEN..SIMPLE_REPLY_LEN + len];
            assert!(data.iter().all(|&x| x == i as u8), "reply {i} interleaved");
            rest = &rest[SIMPLE_REPLY_LEN + len..];
        }
        assert!(seen.iter().all(|&x| x), "every reply arrived");
        assert_eq!(sh.table.lock().bytes, 0, "every slot released");
        assert_eq!(sh.budget.used(), 0, "the budget given back");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_gone_mid_stream_gets_nothing_and_leaks_nothing() {
        const N: usize = 200;
        let sh = Arc::new(shared(256, 1 << 30));
        let reads = admit_reads(&sh, N);
        let DirectWriter {
            mut b,
            direct,
            tx,
            writer,
            _r,
        } = direct_writer(&sh, true);
        // The client reads a little, then goes away mid-reply.
        let threads = complete_from_threads(tx, reads, 2);
        let mut chunk = [0u8; 5000];
        let _ = b.read(&mut chunk).await.unwrap();
        drop(b);
        for t in threads {
            t.join().unwrap();
        }
        assert!(
            writer.await.unwrap().is_err(),
            "the writer saw the client go"
        );
        assert!(direct.state.lock().closed, "no direct reply after that");
        assert!(direct.state.lock().rest.is_none());
        assert_eq!(sh.table.lock().bytes, 0, "every slot released");
        assert_eq!(sh.budget.used(), 0, "the budget given back");
    }
}
