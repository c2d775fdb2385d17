//! One client connection: the fixed newstyle handshake, then a reader that
//! decodes requests and submits them to the export, and a writer that turns
//! completions into replies.
//!
//! Each request in flight holds one slot of a fixed table; the export sees
//! the slot number as the request cookie, and the writer finds the client's
//! cookie, offset and length there. The table bounds a connection's
//! requests and buffer bytes: when it is full the reader stops reading, so
//! a client that never reads its replies cannot grow server memory.
//! Buffers come back with completions and are pooled at their grown length.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter,
};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::mpsc::{self, UnboundedReceiver};
use tokio::sync::{watch, Notify};
use tracing::{debug, error, info, warn, Instrument, Span};

use super::proto::{self, *};
use super::unaligned::Unaligned;
use crate::export::{Completion, Export, ExportSet, IoError, Op, ReplySender, Request};

/// Socket read buffer (request headers and small write payloads).
const READ_BUF: usize = 256 * 1024;
/// Reply write buffer (batched replies; big read payloads bypass it).
const WRITE_BUF: usize = 256 * 1024;
/// Pooled buffers up to this size are kept (up to the slot count).
const SMALL_BUF: usize = 256 * 1024;
/// Bytes of larger pooled buffers kept per connection.
const LARGE_POOL_BYTES: usize = 64 * 1024 * 1024;

/// Per-connection resource bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Requests in flight per connection; the reader stops reading new
    /// requests when this many are unanswered.
    pub max_inflight: usize,
    /// Buffer bytes (read and write payloads) in flight per connection. A
    /// single request larger than this is still admitted, alone.
    pub max_inflight_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_inflight: 128,
            max_inflight_bytes: 256 * 1024 * 1024,
        }
    }
}

/// Everything a connection needs from its server.
pub(crate) struct ConnEnv {
    pub exports: Arc<dyn ExportSet>,
    pub limits: Limits,
    pub shutdown: watch::Receiver<bool>,
    pub span: Span,
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

/// Serve one client until it disconnects, misbehaves or the server shuts
/// down.
pub(crate) async fn serve<R, W>(r: R, mut w: W, mut env: ConnEnv)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut reader = BufReader::with_capacity(READ_BUF, r);
    let result = tokio::select! {
        biased;
        _ = shutdown_requested(&mut env.shutdown) => {
            debug!("server shutting down during handshake");
            return;
        }
        r = negotiate(&mut reader, &mut w, &*env.exports) => r,
    };
    let session = match result {
        Ok(Some(s)) => s,
        Ok(None) => {
            debug!("client ended the handshake");
            return;
        }
        Err(NegoError::Io(e)) if is_disconnect(&e) => {
            debug!(error = %e, "client went away during the handshake");
            return;
        }
        Err(e) => {
            warn!(error = %e, "handshake failed; closing");
            return;
        }
    };
    env.span.record("export", session.export.name());
    info!(
        size = session.params.size,
        flags = format_args!("{:#x}", session.params.flags),
        structured = session.structured,
        block_size_agreed = session.params.block_size_agreed,
        "transmission started"
    );
    transmission(reader, w, session, env).await;
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
    let (r, w) = stream.into_split();
    let s = session(export, false, false);
    let env = ConnEnv {
        exports: Arc::new(NoExports),
        limits,
        shutdown,
        span: Span::current(),
    };
    transmission(BufReader::with_capacity(READ_BUF, r), w, s, env).await;
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

#[derive(Debug, thiserror::Error)]
enum NegoError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Proto(#[from] ProtoError),
    #[error("NBD_OPT_EXPORT_NAME for unknown export {0:?}")]
    UnknownExport(String),
}

/// What the handshake settled on.
struct Session {
    export: Arc<dyn Export>,
    params: TransmissionParams,
    structured: bool,
}

/// Run the option haggling. `Ok(None)` means the client aborted.
async fn negotiate<R, W>(
    r: &mut R,
    w: &mut W,
    exports: &dyn ExportSet,
) -> Result<Option<Session>, NegoError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    w.write_all(&encode_greeting(SERVER_HANDSHAKE_FLAGS))
        .await?;
    w.flush().await?;
    let mut fb = [0u8; 4];
    r.read_exact(&mut fb).await?;
    let client = decode_client_flags(&fb, SERVER_HANDSHAKE_FLAGS)?;
    debug!(
        fixed_newstyle = client.fixed_newstyle,
        no_zeroes = client.no_zeroes,
        "client flags"
    );

    let mut structured = false;
    let mut out = Vec::with_capacity(512);
    let mut payload = Vec::new();
    loop {
        let mut hb = [0u8; OPTION_HEADER_LEN];
        r.read_exact(&mut hb).await?;
        let h = OptionHeader::decode(&hb, MAX_OPTION_LEN)?;
        payload.resize(h.len as usize, 0);
        r.read_exact(&mut payload).await?;
        out.clear();
        let opt = h.option;
        let mut enter: Option<Session> = None;
        match parse_option(opt, &payload) {
            Ok(ClientOption::ExportName(name)) => {
                let export = exports
                    .get(name)
                    .ok_or_else(|| NegoError::UnknownExport(name.to_string()))?;
                let s = session(export, structured, false);
                encode_export_name_reply(&mut out, s.params.size, s.params.flags, client.no_zeroes);
                enter = Some(s);
            }
            Err(e) if opt == OPT_EXPORT_NAME => return Err(e.into()),
            Ok(ClientOption::Abort) => {
                encode_rep_ack(&mut out, opt);
                // The client may already have closed; that is fine.
                let _ = w.write_all(&out).await;
                let _ = w.flush().await;
                return Ok(None);
            }
            Ok(ClientOption::List) => {
                for e in exports.list() {
                    encode_rep_server(&mut out, e.name(), &e.description());
                }
                encode_rep_ack(&mut out, opt);
            }
            Ok(ClientOption::Info(req)) | Ok(ClientOption::Go(req)) => {
                match exports.get(req.name) {
                    None => {
                        let msg = format!("unknown export {:?}", req.name);
                        encode_rep_error(&mut out, opt, REP_ERR_UNKNOWN, &msg);
                    }
                    Some(export) => {
                        // Only a GO that asked for block sizes binds the client.
                        let agreed = opt == OPT_GO && req.requests.block_size;
                        let s = session(export, structured, agreed);
                        encode_info_export(&mut out, opt, s.params.size, s.params.flags);
                        if req.requests.name {
                            encode_info_name(&mut out, opt, s.export.name());
                        }
                        if req.requests.description {
                            let d = s.export.description();
                            if !d.is_empty() {
                                encode_info_description(&mut out, opt, &d);
                            }
                        }
                        if req.requests.block_size {
                            encode_info_block_size(&mut out, opt, s.params.block_sizes);
                        }
                        encode_rep_ack(&mut out, opt);
                        if opt == OPT_GO {
                            enter = Some(s);
                        }
                    }
                }
            }
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
        w.write_all(&out).await?;
        w.flush().await?;
        if enter.is_some() {
            return Ok(enter);
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
    /// Message for a structured error reply of an early rejection.
    msg: &'static str,
}

/// Buffers at their grown length, for reuse.
struct BufPool {
    small: Vec<Vec<u8>>,
    max_small: usize,
    large: Vec<Vec<u8>>,
    large_bytes: usize,
}

impl BufPool {
    fn take(&mut self, len: usize) -> Vec<u8> {
        if len == 0 {
            return Vec::new();
        }
        let v = if len <= SMALL_BUF {
            self.small.pop()
        } else {
            self.large.pop().inspect(|v| self.large_bytes -= v.len())
        };
        v.unwrap_or_default()
    }

    fn put(&mut self, v: Vec<u8>) {
        if v.capacity() == 0 {
            return;
        }
        if v.len() <= SMALL_BUF {
            if self.small.len() < self.max_small {
                self.small.push(v);
            }
        } else if self.large_bytes + v.len() <= LARGE_POOL_BYTES {
            self.large_bytes += v.len();
            self.large.push(v);
        }
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
    /// The writer freed a slot.
    space: Notify,
    /// The writer failed (the client is gone).
    dead: Notify,
    is_dead: AtomicBool,
}

impl Shared {
    fn new(limits: Limits) -> Shared {
        let n = limits.max_inflight.clamp(1, u32::MAX as usize);
        Shared {
            table: Mutex::new(Table {
                slots: vec![SlotInfo::default(); n],
                free: (0..n as u32).rev().collect(),
                bytes: 0,
                pool: BufPool {
                    small: Vec::with_capacity(n),
                    max_small: n,
                    large: Vec::new(),
                    large_bytes: 0,
                },
            }),
            max_bytes: limits.max_inflight_bytes.max(1),
            space: Notify::new(),
            dead: Notify::new(),
            is_dead: AtomicBool::new(false),
        }
    }

    /// Take a slot and a (possibly too short) buffer if the budget allows.
    /// A request bigger than the whole budget is admitted alone.
    fn try_admit(&self, info: SlotInfo) -> Option<(u32, Vec<u8>)> {
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
    async fn admit(&self, info: SlotInfo) -> Option<(u32, Vec<u8>)> {
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

    fn lookup(&self, cookie: u64) -> Option<SlotInfo> {
        let t = self.table.lock();
        let s = t.slots.get(usize::try_from(cookie).ok()?)?;
        s.active.then_some(*s)
    }

    fn release(&self, cookie: u64, cost: usize, buf: Vec<u8>) {
        {
            let mut t = self.table.lock();
            let idx = cookie as usize;
            t.slots[idx].active = false;
            t.free.push(idx as u32);
            t.bytes -= cost;
            t.pool.put(buf);
        }
        self.space.notify_one();
    }

    fn kill(&self) {
        self.is_dead.store(true, Ordering::Release);
        self.dead.notify_one();
        self.space.notify_one();
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
}

async fn transmission<R, W>(reader: BufReader<R>, w: W, s: Session, env: ConnEnv)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let shared = Arc::new(Shared::new(env.limits));
    let (tx, rx) = mpsc::unbounded_channel();
    let mut writer = AbortOnDrop(tokio::spawn(
        writer_loop(w, rx, shared.clone(), s.structured).instrument(env.span.clone()),
    ));
    let mut requests = 0u64;
    let end = reader_loop(reader, &s, tx, &shared, env.shutdown, &mut requests).await;
    match &end {
        ReaderEnd::Protocol(e) => warn!(error = %e, "protocol violation; closing"),
        ReaderEnd::ExportClosed => {
            info!("the export was removed; ending the session once in-flight requests are answered")
        }
        ReaderEnd::Io(e) if !is_disconnect(e) => warn!(error = %e, "read failed; closing"),
        other => debug!(reason = ?other, "reader finished"),
    }
    // The writer drains every request still in flight, then closes.
    match (&mut writer.0).await {
        Ok(Ok(())) => {}
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

async fn reader_loop<R: AsyncRead + Unpin>(
    mut rd: BufReader<R>,
    s: &Session,
    tx: ReplySender,
    sh: &Shared,
    mut shutdown: watch::Receiver<bool>,
    requests: &mut u64,
) -> ReaderEnd {
    let p = &s.params;
    let unaligned = (!p.block_size_agreed && p.block_sizes.minimum > 1)
        .then(|| Unaligned::new(s.export.clone(), p.block_sizes.minimum, p.size));
    let mut hb = [0u8; REQUEST_HEADER_LEN];
    let mut closed = s.export.closed();
    loop {
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
            msg: checked.err().map_or("", |e| e.msg),
        };
        let (slot, mut buf) = match sh.try_admit(info) {
            Some(x) => x,
            None => tokio::select! {
                biased;
                _ = shutdown_requested(&mut shutdown) => return ReaderEnd::Shutdown,
                r = sh.admit(info) => match r {
                    Some(x) => x,
                    None => return ReaderEnd::WriterGone,
                },
            },
        };
        if buf.len() < buf_len {
            buf.resize(buf_len, 0);
        }
        if payload > 0 {
            if let Err(e) = rd.read_exact(&mut buf[..payload]).await {
                return if e.kind() == io::ErrorKind::UnexpectedEof {
                    ReaderEnd::Eof
                } else {
                    ReaderEnd::Io(e)
                };
            }
        }
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
                u.submit(action, cookie, buf, tx.clone());
                continue;
            }
        }
        s.export.submit(Request {
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

fn complete(tx: &ReplySender, cookie: u64, result: Result<(), IoError>, buf: Vec<u8>) {
    let _ = tx.send(Completion {
        cookie,
        result,
        buf,
    });
}

async fn writer_loop<W: AsyncWrite + Unpin>(
    w: W,
    mut rx: UnboundedReceiver<Completion>,
    sh: Arc<Shared>,
    structured: bool,
) -> io::Result<()> {
    let mut w = BufWriter::with_capacity(WRITE_BUF, w);
    let r = async {
        loop {
            let c = match rx.try_recv() {
                Ok(c) => c,
                Err(TryRecvError::Empty) => {
                    // Nothing more queued right now: push out what we have.
                    w.flush().await?;
                    match rx.recv().await {
                        Some(c) => c,
                        None => break,
                    }
                }
                Err(TryRecvError::Disconnected) => break,
            };
            let Some(info) = sh.lookup(c.cookie) else {
                error!(cookie = c.cookie, "export completed an unknown request");
                continue;
            };
            write_reply(&mut w, &info, &c, structured).await?;
            sh.release(c.cookie, info.cost, c.buf);
        }
        w.flush().await?;
        w.shutdown().await
    }
    .await;
    if r.is_err() {
        sh.kill();
    }
    r
}

async fn write_reply<W: AsyncWrite + Unpin>(
    w: &mut BufWriter<W>,
    info: &SlotInfo,
    c: &Completion,
    structured: bool,
) -> io::Result<()> {
    let len = info.len as usize;
    let mut result = c.result;
    // An export must hand back at least `len` bytes for a read.
    if info.is_read && result.is_ok() && c.buf.len() < len {
        error!(cookie = info.cookie, "export returned a short read buffer");
        result = Err(IoError::Io);
    }
    match result {
        Ok(()) if info.is_read && len > 0 => {
            let data = &c.buf[..len];
            if structured {
                let hdr = encode_offset_data_header(info.cookie, info.offset, info.len, true);
                w.write_all(&hdr).await?;
            } else {
                w.write_all(&encode_simple_reply(0, info.cookie)).await?;
            }
            w.write_all(data).await
        }
        Ok(()) => {
            if structured {
                w.write_all(&encode_none_chunk(info.cookie)).await
            } else {
                w.write_all(&encode_simple_reply(0, info.cookie)).await
            }
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
                w.write_all(&hdr).await?;
                w.write_all(msg.as_bytes()).await
            } else {
                w.write_all(&encode_simple_reply(errno, info.cookie)).await
            }
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
        }
    }

    fn info(cost: usize) -> SlotInfo {
        SlotInfo {
            cost,
            ..SlotInfo::default()
        }
    }

    #[test]
    fn admission_bounds_count_and_bytes() {
        let sh = Shared::new(limits(2, 1000));
        let (a, _) = sh.try_admit(info(600)).unwrap();
        assert!(sh.try_admit(info(600)).is_none(), "byte budget");
        let (b, _) = sh.try_admit(info(100)).unwrap();
        assert!(sh.try_admit(info(0)).is_none(), "slot budget");
        assert_ne!(a, b);
        assert!(sh.lookup(u64::from(a)).is_some());
        sh.release(u64::from(a), 600, vec![0; 600]);
        assert!(sh.lookup(u64::from(a)).is_none());
        assert!(sh.lookup(99).is_none());
        // The released buffer is reused at its grown length.
        let (_, buf) = sh.try_admit(info(10)).unwrap();
        assert_eq!(buf.len(), 600);
    }

    #[test]
    fn oversized_request_admitted_alone() {
        let sh = Shared::new(limits(4, 100));
        let (a, _) = sh.try_admit(info(1000)).unwrap();
        assert!(sh.try_admit(info(1)).is_none());
        sh.release(u64::from(a), 1000, Vec::new());
        assert!(sh.try_admit(info(1)).is_some());
    }

    #[test]
    fn pool_keeps_bounded_large_buffers() {
        let mut p = BufPool {
            small: Vec::new(),
            max_small: 1,
            large: Vec::new(),
            large_bytes: 0,
        };
        p.put(vec![0; 10]);
        p.put(vec![0; 10]);
        assert_eq!(p.small.len(), 1);
        for _ in 0..3 {
            p.put(vec![0; 32 * 1024 * 1024]);
        }
        assert_eq!(p.large.len(), 2);
        assert_eq!(p.take(SMALL_BUF + 1).len(), 32 * 1024 * 1024);
        assert_eq!(p.large_bytes, 32 * 1024 * 1024);
        assert_eq!(p.take(0).capacity(), 0);
    }

    #[tokio::test]
    async fn admit_waits_for_release() {
        let sh = Arc::new(Shared::new(limits(1, 1 << 20)));
        let (a, _) = sh.try_admit(info(1)).unwrap();
        let sh2 = sh.clone();
        let waiter = tokio::spawn(async move { sh2.admit(info(1)).await.map(|x| x.0) });
        tokio::task::yield_now().await;
        sh.release(u64::from(a), 1, Vec::new());
        assert_eq!(waiter.await.unwrap(), Some(a));
        let sh3 = sh.clone();
        let waiter = tokio::spawn(async move { sh3.admit(info(1)).await.map(|x| x.0) });
        tokio::task::yield_now().await;
        sh.kill();
        assert_eq!(waiter.await.unwrap(), None);
    }
}
