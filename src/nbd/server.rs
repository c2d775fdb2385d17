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
                let l = TcpListener::bind(addr.as_str()).await?;
                info!(addr = %l.local_addr()?, "NBD listening on TCP");
                Some(l)
            }
            None => None,
        };
        let unix = match &cfg.unix {
            Some(path) => {
                crate::unixsock::prepare_socket_path(path)?;
                let l = UnixListener::bind(path)?;
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
        })
    }

    /// Serve on listeners bound by someone else (systemd socket
    /// activation). The Unix socket file is theirs: it is left in place
    /// at shutdown. At least one listener must be given.
    pub fn from_listeners(
        unix: Option<std::os::unix::net::UnixListener>,
        tcp: Option<std::net::TcpListener>,
        limits: Limits,
        exports: Arc<dyn ExportSet>,
    ) -> io::Result<NbdServer> {
        if unix.is_none() && tcp.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no NBD listener given",
            ));
        }
        let tcp = match tcp {
            Some(l) => {
                l.set_nonblocking(true)?;
                let l = TcpListener::from_std(l)?;
                info!(addr = %l.local_addr()?, "NBD on a TCP socket from systemd");
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
        Ok(NbdServer {
            exports,
            unix,
            tcp,
            limits,
        })
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
        } = self;
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                biased;
                _ = shutdown_requested(&mut shutdown) => break,
                r = accept_unix(&unix) => match r {
                    Ok(s) => spawn_unix(&mut conns, s, &exports, limits, &shutdown),
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
) {
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
