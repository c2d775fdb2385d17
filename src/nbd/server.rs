//! The NBD server: listeners on a Unix socket and/or TCP, one task per
//! client (the private `conn` module is the protocol side), graceful shutdown.
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

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, info_span, warn, Instrument};

pub use super::conn::Limits;
use super::conn::{self, shutdown_requested, ConnEnv};
use crate::export::ExportSet;

/// Where to listen.
#[derive(Debug, Clone, Default)]
pub struct ServerConfig {
    /// A Unix socket path. A stale socket file there is removed; a live
    /// one (something accepts connections) or a non-socket is an error.
    pub unix: Option<PathBuf>,
    /// A TCP `HOST:PORT` (the caller supplies the default host, e.g.
    /// `127.0.0.1`). Port 0 picks a free port; see
    /// [`NbdServer::local_addr`].
    pub tcp: Option<String>,
    pub limits: Limits,
}

/// A bound, not yet serving, NBD server.
pub struct NbdServer {
    exports: Arc<dyn ExportSet>,
    unix: Option<(UnixListener, SocketFile)>,
    tcp: Option<TcpListener>,
    limits: Limits,
    /// Who may open sessions on the Unix socket; `None`: its mode decides.
    unix_access: Option<Arc<UnixAccess>>,
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
        let tcp = match &cfg.tcp {
            Some(addr) => {
                let l = TcpListener::bind(addr.as_str())
                    .await
                    .map_err(|e| io::Error::new(e.kind(), format!("tcp {addr}: {e}")))?;
                info!(addr = %l.local_addr()?, "NBD listening on TCP");
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
        Ok(NbdServer {
            exports,
            unix,
            tcp,
            limits: cfg.limits,
            unix_access: None,
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
        } = self;
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                biased;
                _ = shutdown_requested(&mut shutdown) => break,
                r = accept_unix(&unix) => match r {
                    Ok(s) => spawn_unix(&mut conns, s, &exports, limits, &shutdown, &unix_access),
                    Err(e) => accept_failed(e).await,
                },
                r = accept_tcp(&tcp) => match r {
                    Ok((s, peer)) => spawn_tcp(&mut conns, s, peer, &exports, limits, &shutdown),
                    Err(e) => accept_failed(e).await,
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
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
async fn accept_failed(e: io::Error) {
    warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

fn env(
    exports: &Arc<dyn ExportSet>,
    limits: Limits,
    shutdown: &watch::Receiver<bool>,
    peer: &str,
) -> ConnEnv {
    let id = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
    let span = info_span!("nbd", conn = id, peer, export = tracing::field::Empty);
    ConnEnv {
        exports: exports.clone(),
        limits,
        shutdown: shutdown.clone(),
        span,
    }
}

fn spawn_unix(
    conns: &mut JoinSet<()>,
    s: UnixStream,
    exports: &Arc<dyn ExportSet>,
    limits: Limits,
    shutdown: &watch::Receiver<bool>,
    access: &Option<Arc<UnixAccess>>,
) {
    if let Some(a) = access {
        if !unix_admitted(&s, a) {
            return;
        }
    }
    let peer = match s.peer_cred().ok().and_then(|c| c.pid()) {
        Some(pid) => format!("unix:pid={pid}"),
        None => "unix".to_string(),
    };
    let env = env(exports, limits, shutdown, &peer);
    let span = env.span.clone();
    let (r, w) = s.into_split();
    conns.spawn(
        async move {
            debug!("accepted");
            conn::serve(r, w, env).await
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

fn spawn_tcp(
    conns: &mut JoinSet<()>,
    s: TcpStream,
    peer: SocketAddr,
    exports: &Arc<dyn ExportSet>,
    limits: Limits,
    shutdown: &watch::Receiver<bool>,
) {
    let env = env(exports, limits, shutdown, &peer.to_string());
    let span = env.span.clone();
    if let Err(e) = s.set_nodelay(true) {
        debug!(parent: &span, error = %e, "TCP_NODELAY failed");
    }
    let (r, w) = s.into_split();
    conns.spawn(
        async move {
            debug!("accepted");
            conn::serve(r, w, env).await
        }
        .instrument(span),
    );
}
