//! `nbd` paths: the LUN is behind an NBD server (a controller or gateway
//! in front of the volume), reached over a Unix socket or TCP.
//!
//! Each path keeps a small pool of connections; an IO takes one, does one
//! request (simple replies: the client never asks for structured ones),
//! and gives it back. The pool's lock is held only to take or return a
//! connection, never across a syscall. A connection that fails in any way
//! is dropped, and the next IO or check makes a new one, so a server that
//! restarts comes back by itself. A connection answered ESHUTDOWN (the
//! server is going away: nbdkit answers so for seconds after SIGTERM) is
//! dropped together with the idle ones, so the next check connects to the
//! restarted server instead of asking the dying one again.
//!
//! Capabilities ([`NbdTransport::caps`]) come from the transmission flags
//! of the last handshake, so they follow the server across reconnects.
//!
//! Error classes: a broken or timed-out connection, a refused connection
//! and a server-reported EIO/ESHUTDOWN fail the path (the controller may be
//! broken: try another); EINVAL, ENOSPC, EPERM and EOVERFLOW are about the
//! request or the volume and go back to the client; ENOTSUP on trim or
//! zeroing is Unsupported.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;

use super::{ErrorClass, IoOp, Probe, Revalidated, TransportCaps, TransportError};
use crate::nbd::proto::{self, Command, OptionReplyHeader, RequestHeader, SimpleReply};
use crate::nbd::uri::{Endpoint, NbdUri};

/// How long one request (or the handshake) may take before the connection
/// counts as broken and the path fails.
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections kept per path.
const POOL_MAX: usize = 8;
/// Largest request sent in one piece (the NBD limit servers honour).
const MAX_REQUEST: usize = 32 * 1024 * 1024;

/// What the handshake told us about the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ExportInfo {
    size: u64,
    flags: u16,
}

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Read for Stream {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(b),
            Stream::Tcp(s) => s.read(b),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(b),
            Stream::Tcp(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Conn {
    s: Stream,
    cookie: u64,
}

/// Why a request failed: the connection, or the server's answer.
enum ReqError {
    Conn(io::Error),
    Server(u32),
}

/// A path to an NBD server.
pub struct NbdTransport {
    uri: NbdUri,
    target: String,
    io_timeout: Duration,
    pool: Mutex<Vec<Conn>>,
    info: ArcSwapOption<ExportInfo>,
}

impl std::fmt::Debug for NbdTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdTransport")
            .field("uri", &self.target)
            .finish_non_exhaustive()
    }
}

fn proto_err(e: proto::ProtoError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

fn server_errno(e: u32) -> i32 {
    match e {
        proto::EPERM => libc::EPERM,
        proto::ENOMEM => libc::ENOMEM,
        proto::EINVAL => libc::EINVAL,
        proto::ENOSPC => libc::ENOSPC,
        proto::EOVERFLOW => libc::EOVERFLOW,
        proto::ENOTSUP => libc::ENOTSUP,
        proto::ESHUTDOWN => libc::ESHUTDOWN,
        _ => libc::EIO,
    }
}

impl NbdTransport {
    /// A transport for `uri`; nothing is connected until first use.
    pub fn new(uri: NbdUri, io_timeout: Duration) -> NbdTransport {
        NbdTransport {
            target: uri.to_string(),
            uri,
            io_timeout,
            pool: Mutex::new(Vec::new()),
            info: ArcSwapOption::empty(),
        }
    }

    pub fn target(&self) -> &str {
        &self.target
    }

    pub fn describe(&self) -> String {
        format!("nbd {}", self.target)
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

    fn open_stream(&self) -> io::Result<Stream> {
        let s = match &self.uri.endpoint {
            Endpoint::Unix(p) => {
                let s = UnixStream::connect(p)?;
                s.set_read_timeout(Some(self.io_timeout))?;
                s.set_write_timeout(Some(self.io_timeout))?;
                Stream::Unix(s)
            }
            Endpoint::Tcp { host, port } => {
                let mut last =
                    io::Error::new(io::ErrorKind::NotFound, format!("{host}: no address"));
                let mut found = None;
                for addr in (host.as_str(), *port).to_socket_addrs()? {
                    match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                        Ok(s) => {
                            found = Some(s);
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                let s = found.ok_or(last)?;
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(self.io_timeout))?;
                s.set_write_timeout(Some(self.io_timeout))?;
                Stream::Tcp(s)
            }
        };
        Ok(s)
    }

    /// Connects and negotiates (fixed newstyle, NBD_OPT_GO).
    fn connect(&self) -> io::Result<(Conn, ExportInfo)> {
        let mut s = self.open_stream()?;
        let mut greeting = [0u8; proto::GREETING_LEN];
        s.read_exact(&mut greeting)?;
        let hflags = proto::decode_greeting(&greeting).map_err(proto_err)?;
        if hflags & proto::FLAG_FIXED_NEWSTYLE == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "server does not speak fixed newstyle",
            ));
        }
        let mut cflags = proto::FLAG_C_FIXED_NEWSTYLE;
        if hflags & proto::FLAG_NO_ZEROES != 0 {
            cflags |= proto::FLAG_C_NO_ZEROES;
        }
        let mut out = cflags.to_be_bytes().to_vec();
        proto::encode_info_request(&mut out, proto::OPT_GO, &self.uri.export, &[]);
        s.write_all(&out)?;
        let mut info = None;
        loop {
            let mut h = [0u8; proto::OPTION_REPLY_HEADER_LEN];
            s.read_exact(&mut h)?;
            let h = OptionReplyHeader::decode(&h).map_err(proto_err)?;
            if h.len > proto::MAX_OPTION_LEN {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "option reply too long",
                ));
            }
            let mut payload = vec![0u8; h.len as usize];
            s.read_exact(&mut payload)?;
            if h.is_error() {
                let msg = String::from_utf8_lossy(&payload);
                let what = if h.reply == proto::REP_ERR_UNKNOWN {
                    format!("the server has no export {:?}", self.uri.export)
                } else {
                    format!(
                        "the server refused export {:?} (reply {:#x})",
                        self.uri.export, h.reply
                    )
                };
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{what}: {msg}"),
                ));
            }
            match h.reply {
                proto::REP_INFO => {
                    if let Ok(proto::InfoReply::Export { size, flags }) =
                        proto::decode_info_reply(&payload)
                    {
                        info = Some(ExportInfo { size, flags });
                    }
                }
                proto::REP_ACK => break,
                _ => {}
            }
        }
        let info = info.ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "server sent no export info")
        })?;
        Ok((Conn { s, cookie: 1 }, info))
    }

    /// A connection from the pool, or a new one.
    fn take(&self, op: IoOp, offset: u64, len: u64) -> Result<(Conn, ExportInfo), TransportError> {
        let pooled = self.pool.lock().pop();
        if let (Some(c), Some(info)) = (pooled, self.info.load_full()) {
            return Ok((c, *info));
        }
        let (c, info) = self
            .connect()
            .map_err(|e| self.error(op, offset, len, ErrorClass::Path, e))?;
        self.info.store(Some(std::sync::Arc::new(info)));
        Ok((c, info))
    }

    fn give_back(&self, c: Conn) {
        let mut pool = self.pool.lock();
        if pool.len() < POOL_MAX {
            pool.push(c);
        }
    }

    /// One request on one connection. `data` is the write payload or the
    /// read buffer.
    fn request(
        c: &mut Conn,
        cmd: Command,
        flags: u16,
        offset: u64,
        len: u32,
        data: Data<'_>,
    ) -> Result<(), ReqError> {
        let cookie = c.cookie;
        c.cookie = c.cookie.wrapping_add(1);
        let h = RequestHeader {
            flags,
            command: cmd,
            cookie,
            offset,
            len,
        };
        let hdr = h.encode();
        match &data {
            Data::Out(payload) => {
                let mut v = Vec::with_capacity(hdr.len() + payload.len());
                v.extend_from_slice(&hdr);
                v.extend_from_slice(payload);
                c.s.write_all(&v).map_err(ReqError::Conn)?;
            }
            _ => c.s.write_all(&hdr).map_err(ReqError::Conn)?,
        }
        let mut r = [0u8; proto::SIMPLE_REPLY_LEN];
        c.s.read_exact(&mut r).map_err(ReqError::Conn)?;
        let reply = SimpleReply::decode(&r).map_err(|e| ReqError::Conn(proto_err(e)))?;
        if reply.cookie != cookie {
            return Err(ReqError::Conn(io::Error::new(
                io::ErrorKind::InvalidData,
                "reply for another request",
            )));
        }
        if reply.errno != 0 {
            return Err(ReqError::Server(reply.errno));
        }
        if let Data::In(buf) = data {
            c.s.read_exact(buf).map_err(ReqError::Conn)?;
        }
        Ok(())
    }

    /// Runs one request with a pooled connection and classifies failures.
    fn run(
        &self,
        op: IoOp,
        cmd: Command,
        flags: u16,
        offset: u64,
        len: u64,
        data: Data<'_>,
    ) -> Result<(), TransportError> {
        let (mut c, _) = self.take(op, offset, len)?;
        let len32 = u32::try_from(len).map_err(|_| {
            self.error(
                op,
                offset,
                len,
                ErrorClass::Lun,
                io::Error::from_raw_os_error(libc::EINVAL),
            )
        })?;
        match Self::request(&mut c, cmd, flags, offset, len32, data) {
            Ok(()) => {
                self.give_back(c);
                Ok(())
            }
            // The connection is in an unknown state: drop it, and the idle
            // ones too (made to the same server, likely broken alike), so
            // the next check reconnects at once. They close outside the lock.
            Err(ReqError::Conn(e)) => {
                let stale = std::mem::take(&mut *self.pool.lock());
                drop(stale);
                Err(self.error(op, offset, len, ErrorClass::Path, e))
            }
            // The server is shutting down (e.g. nbdkit after SIGTERM keeps
            // its connections open for a while, answering ESHUTDOWN to
            // every request): this connection and the idle ones are to a
            // server that is going away, and a restarted server listens
            // anew. Drop them all, so the next check connects to it.
            Err(ReqError::Server(proto::ESHUTDOWN)) => {
                drop(c);
                let stale = std::mem::take(&mut *self.pool.lock());
                drop(stale);
                Err(self.error(
                    op,
                    offset,
                    len,
                    ErrorClass::Path,
                    io::Error::from_raw_os_error(libc::ESHUTDOWN),
                ))
            }
            Err(ReqError::Server(errno)) => {
                // Any other server error leaves the stream in sync: keep it.
                self.give_back(c);
                let os = server_errno(errno);
                let class = match os {
                    libc::EINVAL | libc::ENOSPC | libc::EPERM | libc::EOVERFLOW => ErrorClass::Lun,
                    libc::ENOTSUP if matches!(op, IoOp::Trim | IoOp::WriteZeroes) => {
                        ErrorClass::Unsupported
                    }
                    _ => ErrorClass::Path,
                };
                Err(self.error(op, offset, len, class, io::Error::from_raw_os_error(os)))
            }
        }
    }

    fn info(&self, op: IoOp) -> Result<ExportInfo, TransportError> {
        if let Some(i) = self.info.load_full() {
            return Ok(*i);
        }
        let (c, info) = self.take(op, 0, 0)?;
        self.give_back(c);
        Ok(info)
    }

    pub fn size(&self) -> Result<u64, TransportError> {
        Ok(self.info(IoOp::Size)?.size)
    }

    /// From the transmission flags of the last handshake (so they follow
    /// the server across reconnects); [`TransportCaps::BASIC`] before the
    /// first. Flush and FUA are always possible (a flush without a server
    /// cache is a no-op, FUA without server support a flush after the
    /// write), as is write-zeroes (by writing zeroes).
    pub fn caps(&self) -> TransportCaps {
        match self.info.load().as_deref() {
            Some(i) => caps_from_flags(i.flags),
            None => TransportCaps::BASIC,
        }
    }

    pub fn is_open(&self) -> bool {
        !self.pool.lock().is_empty()
    }

    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), TransportError> {
        let mut done = 0;
        while done < buf.len() {
            let n = (buf.len() - done).min(MAX_REQUEST);
            let at = offset + done as u64;
            self.run(
                IoOp::Read,
                Command::Read,
                0,
                at,
                n as u64,
                Data::In(&mut buf[done..done + n]),
            )?;
            done += n;
        }
        Ok(())
    }

    pub fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> Result<(), TransportError> {
        let info = self.info(IoOp::Write)?;
        let server_fua = info.flags & proto::FLAG_SEND_FUA != 0;
        let mut done = 0;
        while done < buf.len() {
            let n = (buf.len() - done).min(MAX_REQUEST);
            let flags = if fua && server_fua {
                proto::CMD_FLAG_FUA
            } else {
                0
            };
            let at = offset + done as u64;
            self.run(
                IoOp::Write,
                Command::Write,
                flags,
                at,
                n as u64,
                Data::Out(&buf[done..done + n]),
            )?;
            done += n;
        }
        if fua && !server_fua {
            self.flush()?;
        }
        Ok(())
    }

    pub fn flush(&self) -> Result<(), TransportError> {
        let info = self.info(IoOp::Flush)?;
        if info.flags & proto::FLAG_SEND_FLUSH == 0 {
            // The server has no cache to flush (writes are stable).
            return Ok(());
        }
        self.run(IoOp::Flush, Command::Flush, 0, 0, 0, Data::None)
    }

    pub fn trim(&self, offset: u64, len: u64) -> Result<(), TransportError> {
        let info = self.info(IoOp::Trim)?;
        if info.flags & proto::FLAG_SEND_TRIM == 0 || len == 0 {
            // Discard is advisory.
            return Ok(());
        }
        for (at, n) in chunks(offset, len) {
            self.run(IoOp::Trim, Command::Trim, 0, at, n, Data::None)?;
        }
        Ok(())
    }

    pub fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        may_unmap: bool,
        fast_only: bool,
    ) -> Result<(), TransportError> {
        let info = self.info(IoOp::WriteZeroes)?;
        let op = IoOp::WriteZeroes;
        if info.flags & proto::FLAG_SEND_WRITE_ZEROES != 0
            && (!fast_only || info.flags & proto::FLAG_SEND_FAST_ZERO != 0)
        {
            let mut flags = 0;
            if !may_unmap {
                flags |= proto::CMD_FLAG_NO_HOLE;
            }
            if fast_only {
                flags |= proto::CMD_FLAG_FAST_ZERO;
            }
            for (at, n) in chunks(offset, len) {
                self.run(op, Command::WriteZeroes, flags, at, n, Data::None)?;
            }
            return Ok(());
        }
        if fast_only {
            return Err(self.error(
                op,
                offset,
                len,
                ErrorClass::Unsupported,
                io::Error::from_raw_os_error(libc::ENOTSUP),
            ));
        }
        let zeroes = vec![0u8; MAX_REQUEST.min(usize::try_from(len).unwrap_or(MAX_REQUEST))];
        for (at, n) in chunks(offset, len) {
            let mut done = 0u64;
            while done < n {
                let k = (n - done).min(zeroes.len() as u64);
                self.run(
                    op,
                    Command::Write,
                    0,
                    at + done,
                    k,
                    Data::Out(&zeroes[..k as usize]),
                )?;
                done += k;
            }
        }
        Ok(())
    }

    /// Ensures a working connection: makes one if none is idle.
    pub fn revalidate(&self) -> Result<Revalidated, TransportError> {
        if self.is_open() {
            return Ok(Revalidated::Unchanged);
        }
        let (c, info) = self
            .connect()
            .map_err(|e| self.error(IoOp::Open, 0, 0, ErrorClass::Path, e))?;
        self.info.store(Some(std::sync::Arc::new(info)));
        self.give_back(c);
        Ok(Revalidated::Reopened("connected".to_string()))
    }

    /// The checker's probe: a small read at offset 0 on a pooled (or new)
    /// connection, under the socket timeouts.
    pub fn probe(&self, len: usize) -> Result<Probe, TransportError> {
        let size = self.size()?;
        let n = usize::try_from(size).unwrap_or(usize::MAX).min(len);
        let mut buf = vec![0u8; n];
        self.run(
            IoOp::Check,
            Command::Read,
            0,
            0,
            n as u64,
            Data::In(&mut buf),
        )?;
        Ok(Probe {
            bytes: n,
            direct: false,
            note: None,
        })
    }
}

/// What a server with these transmission flags lets a path do.
fn caps_from_flags(f: u16) -> TransportCaps {
    let has = |bit: u16| f & bit != 0;
    TransportCaps {
        scsi_target: false,
        read_only: has(proto::FLAG_READ_ONLY),
        flush: true,
        volatile_cache: has(proto::FLAG_SEND_FLUSH),
        fua: true,
        trim: has(proto::FLAG_SEND_TRIM),
        write_zeroes: true,
        fast_zero: has(proto::FLAG_SEND_WRITE_ZEROES) && has(proto::FLAG_SEND_FAST_ZERO),
    }
}

enum Data<'a> {
    None,
    In(&'a mut [u8]),
    Out(&'a [u8]),
}

/// Splits a range into pieces a server accepts.
fn chunks(offset: u64, len: u64) -> impl Iterator<Item = (u64, u64)> {
    let step = MAX_REQUEST as u64;
    (0..len.div_ceil(step)).map(move |i| {
        let at = i * step;
        (offset + at, (len - at).min(step))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_range() {
        let v: Vec<_> = chunks(10, 2 * MAX_REQUEST as u64 + 5).collect();
        assert_eq!(v.len(), 3);
        assert_eq!(v[0], (10, MAX_REQUEST as u64));
        assert_eq!(v[2], (10 + 2 * MAX_REQUEST as u64, 5));
        assert_eq!(chunks(0, 0).count(), 0);
    }

    #[test]
    fn caps_follow_the_transmission_flags() {
        let c = caps_from_flags(proto::FLAG_HAS_FLAGS);
        assert!(!c.trim && !c.fast_zero && !c.volatile_cache && !c.read_only);
        assert!(c.flush && c.fua && c.write_zeroes && !c.scsi_target);
        let c = caps_from_flags(
            proto::FLAG_HAS_FLAGS
                | proto::FLAG_SEND_FLUSH
                | proto::FLAG_SEND_TRIM
                | proto::FLAG_SEND_WRITE_ZEROES
                | proto::FLAG_SEND_FAST_ZERO
                | proto::FLAG_READ_ONLY,
        );
        assert!(c.trim && c.fast_zero && c.volatile_cache && c.read_only);
        // Fast zero means nothing without write-zeroes.
        assert!(!caps_from_flags(proto::FLAG_SEND_FAST_ZERO).fast_zero);
    }

    #[test]
    fn unreachable_server_is_a_path_error_naming_the_uri() {
        let t = NbdTransport::new(
            NbdUri::parse("nbd+unix:///x?socket=/nonexistent/s.sock").unwrap(),
            Duration::from_secs(1),
        );
        let e = t.size().unwrap_err();
        assert_eq!(e.class, ErrorClass::Path);
        assert!(e.to_string().contains("/nonexistent/s.sock"), "{e}");
    }
}
