//! The NBD server: listeners on a Unix socket and/or TCP, one task per
//! client (the private `conn` module is the protocol side), graceful shutdown.
//!
//! Admission: a client is accepted, then closed at once with a log line
//! (at most one per peer and reason every 10 s) when the server has
//! [`ServerConfig::max_connections`] connections, when its uid has
//! [`ServerConfig::max_connections_per_uid`] (Unix socket, SO_PEERCRED), or
//! when the open descriptors reach the soft `RLIMIT_NOFILE` minus
//! [`ServerConfig::fd_reserve`] (kept for paths, checkers, the control
//! socket and logs). Open descriptors are estimated from a count of
//! /proc/self/fd at most once a second plus the connections opened and
//! closed since.
//!
//! ```no_run
//! # async fn demo(exports: std::sync::Arc<dyn umpath::export::ExportSet>) -> std::io::Result<()> {
//! use umpath::nbd::{NbdServer, ServerConfig};
//! let cfg = ServerConfig {
//!     unix: Some("/run/umpath/nbd.sock".into()),
//!     tcp: Some("127.0.0.1:10809".into()),
//!     ..ServerConfig::default()
//! };
//! let server = NbdServer::bind(&cfg, exports).await?;
//! let (stop, stopped) = tokio::sync::watch::channel(false);
//! let task = tokio::spawn(server.serve(stopped));
//! // ... later:
//! stop.send(true).ok();
//! task.await.ok();
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, info_span, warn, Instrument};

use super::budget::Budget;
pub use super::conn::Limits;
use super::conn::{self, shutdown_requested, ConnEnv};
use super::ratelog::RateLog;
use super::tls::{Security, TlsMode};
use crate::export::ExportSet;

/// Default cap on connections, all peers together.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default cap on connections of one uid (Unix socket).
pub const DEFAULT_MAX_CONNECTIONS_PER_UID: usize = 128;
/// Descriptors kept free for the daemon's own use when nothing else is
/// said: 64 + 2 per path. A path's open handles are already in the count
/// of open descriptors; the reserve covers what a path opens for a while
/// on top of them: its checker's probe handle and, during a reopen, the
/// new handle beside the old one. (With 4 per path, 1000 maps of 4 paths
/// under a 20,000 hard limit left no room for a single NBD client.)
pub fn fd_reserve_for(paths: usize) -> usize {
    64 + 2 * paths
}

/// Where to listen, and the admission limits.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// A Unix socket path. A stale socket file there is removed; a live
    /// one (something accepts connections) or a non-socket is an error.
    pub unix: Option<PathBuf>,
    /// A TCP `HOST:PORT` (the caller supplies the default host, e.g.
    /// `127.0.0.1`). Port 0 picks a free port; see
    /// [`NbdServer::local_addr`].
    pub tcp: Option<String>,
    pub limits: Limits,
    /// Connections at once, all peers together.
    pub max_connections: usize,
    /// Connections at once per peer uid (Unix socket).
    pub max_connections_per_uid: usize,
    /// Descriptors new clients must leave free (the owner may update it,
    /// e.g. when paths are added).
    pub fd_reserve: Arc<AtomicUsize>,
    /// TLS and per-export allow-lists. Binding a TCP address other than
    /// loopback fails unless TLS is required ([`Security::tcp_mode`]).
    pub security: Security,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            unix: None,
            tcp: None,
            limits: Limits::default(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_uid: DEFAULT_MAX_CONNECTIONS_PER_UID,
            fd_reserve: Arc::new(AtomicUsize::new(fd_reserve_for(0))),
            security: Security::default(),
        }
    }
}

/// A bound, not yet serving, NBD server.
pub struct NbdServer {
    exports: Arc<dyn ExportSet>,
    unix: Option<(UnixListener, SocketFile)>,
    tcp: Option<TcpListener>,
    limits: Limits,
    /// Who may open sessions on the Unix socket; `None`: its mode decides.
    unix_access: Option<Arc<UnixAccess>>,
    gate: Arc<Gate>,
    budget: Arc<Budget>,
    notices: Arc<RateLog>,
    security: Arc<Security>,
    tcp_mode: TlsMode,
}

/// Who may connect now: connection counts and the descriptor budget.
struct Gate {
    max_conns: usize,
    max_per_uid: usize,
    fd_limit: usize,
    fd_reserve: Arc<AtomicUsize>,
    st: Mutex<GateState>,
}

#[derive(Default)]
struct GateState {
    live: usize,
    per_uid: HashMap<u32, usize>,
    /// Descriptors open at the last count, and live connections then.
    fds: usize,
    live_then: usize,
    counted: Option<Instant>,
}

/// Why a client was turned away.
enum Refusal {
    Fds {
        open: usize,
        limit: usize,
        reserve: usize,
    },
    Total(usize),
    Uid(u32, usize),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Fds {
                open,
                limit,
                reserve,
            } => write!(
                f,
                "{open} descriptors open, limit {limit} with {reserve} reserved for paths, checkers and the control socket"
            ),
            Refusal::Total(n) => write!(f, "the server has {n} connections (the maximum)"),
            Refusal::Uid(uid, n) => write!(f, "uid {uid} has {n} connections (the maximum per uid)"),
        }
    }
}

impl Refusal {
    fn kind(&self) -> &'static str {
        match self {
            Refusal::Fds { .. } => "refused:fds",
            Refusal::Total(_) => "refused:total",
            Refusal::Uid(..) => "refused:uid",
        }
    }
}

/// A live connection's place; given back when the connection ends.
struct Ticket {
    gate: Arc<Gate>,
    uid: Option<u32>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut st = self.gate.st.lock();
        st.live -= 1;
        if let Some(uid) = self.uid {
            if let Some(n) = st.per_uid.get_mut(&uid) {
                *n -= 1;
                if *n == 0 {
                    st.per_uid.remove(&uid);
                }
            }
        }
    }
}

impl Gate {
    fn admit(self: &Arc<Gate>, uid: Option<u32>) -> Result<Ticket, Refusal> {
        let mut st = self.st.lock();
        if st
            .counted
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            if let Ok(n) = crate::resources::open_fds() {
                st.fds = n;
                st.live_then = st.live;
                st.counted = Some(Instant::now());
            }
        }
        // The accepted socket is open already (counted, or one of `live`'s
        // successors).
        let open = (st.fds + st.live + 1).saturating_sub(st.live_then);
        let reserve = self.fd_reserve.load(Ordering::Relaxed);
        if open + reserve > self.fd_limit {
            return Err(Refusal::Fds {
                open,
                limit: self.fd_limit,
                reserve,
            });
        }
        if st.live >= self.max_conns {
            return Err(Refusal::Total(st.live));
        }
        if let Some(uid) = uid {
            let n = st.per_uid.get(&uid).copied().unwrap_or(0);
            if n >= self.max_per_uid {
                return Err(Refusal::Uid(uid, n));
            }
            st.per_uid.insert(uid, n + 1);
        }
        st.live += 1;
        Ok(Ticket {
            gate: self.clone(),
            uid,
        })
    }
}

/// The Unix socket's access policy and its refusal log's rate limit.
struct UnixAccess {
    policy: crate::access::Policy,
    log: parking_lot::Mutex<crate::access::Throttle>,
}

/// Removes our socket file when dropped, unless someone replaced it.
struct SocketFile {
    path: PathBuf,
    id: (u64, u64),
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if (m.dev(), m.ino()) == self.id {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

impl NbdServer {
    /// Bind the configured listeners. Must be called inside a tokio
    /// runtime. At least one of `unix` and `tcp` must be set.
    pub async fn bind(cfg: &ServerConfig, exports: Arc<dyn ExportSet>) -> io::Result<NbdServer> {
        if cfg.unix.is_none() && cfg.tcp.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no NBD listener configured",
            ));
        }
        let mut tcp_mode = TlsMode::Off;
        let tcp = match &cfg.tcp {
            Some(addr) => {
                let l = TcpListener::bind(addr.as_str())
                    .await
                    .map_err(|e| io::Error::new(e.kind(), format!("tcp {addr}: {e}")))?;
                let bound = l.local_addr()?;
                tcp_mode = cfg
                    .security
                    .tcp_mode(bound)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                info!(addr = %bound, tls = %tcp_mode, "NBD listening on TCP");
                Some(l)
            }
            None => None,
        };
        let unix = match &cfg.unix {
            Some(path) => {
                // Owner only until `restrict_unix` widens it to a group.
                let named = |e: io::Error| {
                    io::Error::new(e.kind(), format!("unix {}: {e}", path.display()))
                };
                let l = crate::unixsock::bind_listener(path, 0o600, None).map_err(named)?;
                l.set_nonblocking(true).map_err(named)?;
                let l = UnixListener::from_std(l).map_err(named)?;
                let m = std::fs::symlink_metadata(path)?;
                info!(path = %path.display(), "NBD listening on Unix socket");
                Some((
                    l,
                    SocketFile {
                        path: path.clone(),
                        id: (m.dev(), m.ino()),
                    },
                ))
            }
            None => None,
        };
        Self::assemble(cfg, exports, unix, tcp, tcp_mode)
    }

    /// The server around its listeners: admission gate, memory budget,
    /// TLS settings.
    fn assemble(
        cfg: &ServerConfig,
        exports: Arc<dyn ExportSet>,
        unix: Option<(UnixListener, SocketFile)>,
        tcp: Option<TcpListener>,
        tcp_mode: TlsMode,
    ) -> io::Result<NbdServer> {
        let fd_limit = match crate::resources::nofile_limit() {
            Ok((soft, _)) => usize::try_from(soft).unwrap_or(usize::MAX),
            Err(_) => 1024,
        };
        let reserve = cfg.fd_reserve.load(Ordering::Relaxed);
        let open = crate::resources::open_fds().unwrap_or(0);
        let fd_room = fd_limit.saturating_sub(reserve + open);
        info!(
            max_connections = cfg.max_connections,
            max_connections_per_uid = cfg.max_connections_per_uid,
            fd_limit,
            fd_reserve = reserve,
            fd_room,
            memory_budget_mib = cfg.limits.memory_budget >> 20,
            handshake_timeout_s = cfg.limits.handshake_timeout.as_secs_f32(),
            payload_timeout_s = cfg.limits.payload_timeout.as_secs_f32(),
            "NBD limits"
        );
        if fd_room < cfg.max_connections {
            warn!(
                "the descriptor limit ({fd_limit}, {reserve} reserved, {open} open) allows only {fd_room} NBD connections, fewer than max_connections {}",
                cfg.max_connections
            );
        }
        Ok(NbdServer {
            exports,
            unix,
            tcp,
            limits: cfg.limits,
            unix_access: None,
            gate: Arc::new(Gate {
                max_conns: cfg.max_connections.max(1),
                max_per_uid: cfg.max_connections_per_uid.max(1),
                fd_limit,
                fd_reserve: cfg.fd_reserve.clone(),
                st: Mutex::new(GateState::default()),
            }),
            budget: Arc::new(Budget::new(cfg.limits.memory_budget)),
            notices: Arc::new(RateLog::default()),
            security: Arc::new(cfg.security.clone()),
            tcp_mode,
        })
    }

    /// Unix socket clients are admitted by their credentials (SO_PEERCRED)
    /// per `policy` ([`crate::access`]): root, the daemon's user and the
    /// policy's NBD group; others are closed before the handshake, with
    /// a log line (rate limited). The socket file becomes mode 0660 and
    /// group-owned by the NBD group if there is one, 0600 otherwise.
    pub fn restrict_unix(&mut self, policy: crate::access::Policy) -> io::Result<()> {
        if let (Some((_, f)), Some(g)) = (&self.unix, &policy.nbd) {
            crate::unixsock::set_mode(&f.path, 0o660, Some(g.gid))?;
        }
        self.unix_access = Some(Arc::new(UnixAccess {
            policy,
            log: parking_lot::Mutex::new(crate::access::Throttle::new(Duration::from_secs(10), 5)),
        }));
        Ok(())
    }

    /// Serve on listeners bound by someone else (systemd socket
    /// activation). The Unix socket file is theirs: it is left in place
    /// at shutdown. At least one listener must be given.
    pub fn from_listeners(
        unix: Option<std::os::unix::net::UnixListener>,
        tcp: Option<std::net::TcpListener>,
        cfg: &ServerConfig,
        exports: Arc<dyn ExportSet>,
    ) -> io::Result<NbdServer> {
        if unix.is_none() && tcp.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no NBD listener given",
            ));
        }
        let mut tcp_mode = TlsMode::Off;
        let tcp = match tcp {
            Some(l) => {
                l.set_nonblocking(true)?;
                let l = TcpListener::from_std(l)?;
                let bound = l.local_addr()?;
                tcp_mode = cfg
                    .security
                    .tcp_mode(bound)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                info!(addr = %bound, tls = %tcp_mode, "NBD on a TCP socket from systemd");
                Some(l)
            }
            None => None,
        };
        let unix = match unix {
            Some(l) => {
                l.set_nonblocking(true)?;
                let path = l
                    .local_addr()?
                    .as_pathname()
                    .map(Path::to_path_buf)
                    .unwrap_or_default();
                info!(path = %path.display(), "NBD on a Unix socket from systemd");
                // No (dev, ino) matches (u64::MAX, u64::MAX): the file is
                // never removed.
                let file = SocketFile {
                    path,
                    id: (u64::MAX, u64::MAX),
                };
                Some((UnixListener::from_std(l)?, file))
            }
            None => None,
        };
        Self::assemble(cfg, exports, unix, tcp, tcp_mode)
    }

    /// The bound TCP address (useful with port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The Unix socket path.
    pub fn unix_path(&self) -> Option<&Path> {
        self.unix.as_ref().map(|(_, f)| f.path.as_path())
    }

    /// Accept and serve clients until `shutdown` becomes true (or its
    /// sender is dropped). Then stop accepting, remove the socket file,
    /// let every connection finish the requests it has in flight and
    /// answer them, close, and return. Connections still negotiating are
    /// closed at once; connections in transmission stop reading new
    /// requests (a request whose header was read but not yet admitted is
    /// dropped unanswered).
    ///
    /// Waiting is unbounded (a stuck export or a client that never reads
    /// its replies can hold it up): wrap the future in
    /// `tokio::time::timeout` to bound it. Dropping the future aborts every
    /// connection.
    pub async fn serve(self, mut shutdown: watch::Receiver<bool>) -> io::Result<()> {
        let NbdServer {
            exports,
            mut unix,
            mut tcp,
            limits,
            unix_access,
            gate,
            budget,
            notices,
            security,
            tcp_mode,
        } = self;
        let ctx = Ctx {
            exports,
            limits,
            budget,
            notices,
            shutdown: shutdown.clone(),
            security,
            tcp_mode,
        };
        let mut conns = JoinSet::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = shutdown_requested(&mut shutdown) => break,
                r = accept_unix(&unix) => match r {
                    Ok(s) => {
                        if let Some(a) = &unix_access {
                            if !unix_admitted(&s, a) {
                                continue;
                            }
                        }
                        let cred = s.peer_cred().ok();
                        let peer = unix_peer(cred.as_ref());
                        match gate.admit(cred.map(|c| c.uid())) {
                            Ok(t) => spawn_unix(&mut conns, s, peer, &ctx, t),
                            Err(why) => refuse(&ctx.notices, &peer, why),
                        }
                    }
                    Err(e) => accept_failed(e, &ctx.notices).await,
                },
                r = accept_tcp(&tcp) => match r {
                    Ok((s, peer)) => match gate.admit(None) {
                        Ok(t) => spawn_tcp(&mut conns, s, peer, &ctx, t),
                        Err(why) => refuse(&ctx.notices, &Peer::tcp(peer), why),
                    },
                    Err(e) => accept_failed(e, &ctx.notices).await,
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                _ = tick.tick() => {
                    // After a burst, hand the freed heap back to the system.
                    if ctx.budget.burst_over(TRIM_AFTER) {
                        crate::resources::trim_heap();
                        debug!(rss_kib = crate::resources::rss_kib(), "heap trimmed after a burst");
                    }
                }
            }
        }
        let open = conns.len();
        info!(connections = open, "NBD server shutting down");
        // Stop accepting; the socket file goes with the listener.
        unix.take();
        tcp.take();
        while conns.join_next().await.is_some() {}
        info!("NBD server stopped");
        Ok(())
    }
}

/// A burst that took at least this much of the memory budget is followed
/// by `malloc_trim` once it is over.
const TRIM_AFTER: usize = 16 * 1024 * 1024;

/// What every connection gets from its server.
struct Ctx {
    exports: Arc<dyn ExportSet>,
    limits: Limits,
    budget: Arc<Budget>,
    notices: Arc<RateLog>,
    shutdown: watch::Receiver<bool>,
    security: Arc<Security>,
    /// What TCP clients must do about TLS.
    tcp_mode: TlsMode,
}

/// A client as logs name it: `key` groups its lines (uid or address),
/// `label` is what a line says.
struct Peer {
    key: String,
    label: String,
}

impl Peer {
    fn tcp(a: SocketAddr) -> Peer {
        Peer {
            key: a.ip().to_string(),
            label: a.to_string(),
        }
    }
}

fn unix_peer(cred: Option<&tokio::net::unix::UCred>) -> Peer {
    match cred {
        Some(c) => Peer {
            key: format!("uid={}", c.uid()),
            label: match c.pid() {
                Some(pid) => format!("unix:uid={},pid={pid}", c.uid()),
                None => format!("unix:uid={}", c.uid()),
            },
        },
        None => Peer {
            key: "unix".into(),
            label: "unix".into(),
        },
    }
}

/// Logs a refusal, at most once per peer and reason per interval; the
/// socket closes when the caller drops it.
fn refuse(notices: &RateLog, peer: &Peer, why: Refusal) {
    if let Some(suppressed) = notices.allow(why.kind(), &peer.key) {
        warn!(
            peer = %peer.label,
            suppressed,
            "refusing NBD client: {why}"
        );
    }
}

async fn accept_unix(l: &Option<(UnixListener, SocketFile)>) -> io::Result<UnixStream> {
    match l {
        Some((l, _)) => l.accept().await.map(|(s, _)| s),
        None => std::future::pending().await,
    }
}

async fn accept_tcp(l: &Option<TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match l {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Back off briefly (e.g. out of file descriptors) instead of spinning.
async fn accept_failed(e: io::Error, notices: &RateLog) {
    if let Some(suppressed) = notices.allow("accept", "-") {
        warn!(error = %e, suppressed, "accept failed");
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
}

fn env(ctx: &Ctx, peer: Peer, tcp: Option<SocketAddr>) -> ConnEnv {
    let id = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
    let span = info_span!(
        "nbd",
        conn = id,
        peer = %peer.label,
        export = tracing::field::Empty
    );
    ConnEnv {
        exports: ctx.exports.clone(),
        limits: ctx.limits,
        shutdown: ctx.shutdown.clone(),
        span,
        budget: ctx.budget.clone(),
        notices: ctx.notices.clone(),
        peer_key: peer.key,
        security: ctx.security.clone(),
        tls_mode: if tcp.is_some() {
            ctx.tcp_mode
        } else {
            TlsMode::Off
        },
        peer_addr: tcp.map(|a| a.ip().to_canonical()),
    }
}

fn spawn_unix(conns: &mut JoinSet<()>, s: UnixStream, peer: Peer, ctx: &Ctx, ticket: Ticket) {
    let env = env(ctx, peer, None);
    let span = env.span.clone();
    conns.spawn(
        async move {
            let _ticket = ticket;
            debug!("accepted");
            conn::serve(s, env).await
        }
        .instrument(span),
    );
}

/// Whether the Unix socket's peer may open a session; a refused one is
/// dropped (closed before the handshake) and logged, rate limited.
fn unix_admitted(s: &UnixStream, a: &UnixAccess) -> bool {
    let cred = crate::unixsock::peer_cred(s);
    let verdict = a
        .policy
        .check(crate::access::Need::Nbd, cred, crate::unixsock::peer_groups);
    let Err(msg) = verdict else { return true };
    let admitted = a.log.lock().admit(std::time::Instant::now());
    if let Some(skipped) = admitted {
        let uid = cred.map_or_else(|| "unknown".into(), |c| c.uid.to_string());
        let pid = cred
            .and_then(|c| c.pid)
            .map_or_else(|| "unknown".into(), |p| p.to_string());
        warn!(uid = %uid, pid = %pid, skipped, "NBD connection refused: {msg}");
    }
    false
}

fn spawn_tcp(conns: &mut JoinSet<()>, s: TcpStream, peer: SocketAddr, ctx: &Ctx, ticket: Ticket) {
    let env = env(ctx, Peer::tcp(peer), Some(peer));
    let span = env.span.clone();
    if let Err(e) = s.set_nodelay(true) {
        debug!(parent: &span, error = %e, "TCP_NODELAY failed");
    }
    conns.spawn(
        async move {
            let _ticket = ticket;
            debug!("accepted");
            conn::serve(s, env).await
        }
        .instrument(span),
    );
}
