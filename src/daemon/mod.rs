//! The daemon: start-up, the supervisor and its messages, the published
//! snapshot, stopping.
//!
//! ```text
//!  signals ─┐  uevents ─┐   control (reconfigure) ─┐
//!           ▼           ▼                          ▼
//!        Supervisor (one task; owns every MapRuntime) ── publishes ──▶ Published
//!           │ per map: MapRuntime = MapEngine + paths    (ArcSwap)       │
//!           │   per path: device, settings cell, checker task           │
//!           ▼                                                            ▼
//!   slow work on other tasks:                  show, fail/reinstate/fault/switch,
//!   load, discovery, callouts,                 the tick, the NBD export list:
//!   open + first check (lifecycle)             read the snapshot, never wait
//! ```
//!
//! Start-up: load the configuration, let the supervisor bring up the maps
//! (a map whose paths cannot tell the LUN's size yet waits and is exported
//! as soon as one can), serve NBD and the control socket, then tell
//! systemd READY=1. SIGHUP or `reconfigure` re-read the configuration and
//! edit the live maps in place (a bad file is rejected and the running
//! configuration stays). SIGTERM/SIGINT or `shutdown`: stop accepting
//! clients, fail IO held by no_path_retry (unless `queue_without_daemon
//! yes`), let in-flight IO finish within [`DRAIN_BOUND`], flush every
//! path, exit.

pub mod activation;
pub mod assemble;
pub mod bindings;
pub mod hotplug;
pub mod iscsi;
pub mod kernel;
pub mod lifecycle;
pub mod metrics;
pub mod reconcile;
pub mod resize;
pub mod runtime;
pub mod show;
pub mod supervisor;
pub mod watchdog;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::config::{self, Config};
use crate::control::{self, Command, Response, ShowWhat};
use crate::discovery::DiscoverOptions;
use crate::engine::{Clock, MapEngine, MapSnapshot};
use crate::export::{Export, ExportSet};
use crate::nbd::server::{fd_reserve_for, Limits, NbdServer, ServerConfig};
use crate::nbd::tls::{Security, TlsError, TlsOptions};
use crate::transport::fault::FaultSpec;
use runtime::MapRuntime;
use supervisor::{Msg, Published, Supervisor};

pub use lifecycle::DEFAULT_CHECKER_TIMEOUT;

/// Default locations.
pub const DEFAULT_CONFIG: &str = "/etc/multipath.conf";
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/umpath/control.sock";
pub const DEFAULT_NBD_SOCKET: &str = "/run/umpath/nbd.sock";

/// How long a stop lets in-flight IO finish before it gives up on it
/// (well inside systemd's default TimeoutStopSec of 90 s and the unit's 60 s).
pub const DRAIN_BOUND: Duration = Duration::from_secs(5);

/// How long a stop waits for the final flush of all paths.
pub const FLUSH_BOUND: Duration = Duration::from_secs(3);

/// How the daemon is started.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub config: PathBuf,
    pub nbd_socket: Option<PathBuf>,
    pub nbd_listen: Option<String>,
    /// TLS for NBD on TCP and per-export allow-lists (files read at start).
    pub nbd_tls: TlsOptions,
    pub control_socket: PathBuf,
    /// Discover SCSI disks (sysfs) and use each as a path, in addition to
    /// the declared ones; `None`: declared paths only.
    pub scsi: Option<DiscoverOptions>,
    /// Groups for changes and NBD sessions (flags; the `defaults`
    /// keywords apply when a flag is not given).
    pub access: crate::access::AccessOptions,
    /// Bounds of the control socket.
    pub control: control::server::Bounds,
    /// Serve Prometheus metrics on this TCP address (a bare port binds
    /// 127.0.0.1); `None`: `umpath_metrics_listen` from the config, if set.
    pub metrics_listen: Option<String>,
    /// A metrics address that cannot be bound stops the start (otherwise
    /// the daemon starts without metrics).
    pub metrics_required: bool,
    /// NBD server limits given on the command line (they override the
    /// `defaults` keywords).
    pub nbd_limits: NbdLimitOptions,
}

/// `umpath daemon` flags for the NBD server's limits; `None`: the
/// configuration's `nbd_*` keyword, else its default.
#[derive(Debug, Clone, Default)]
pub struct NbdLimitOptions {
    /// Seconds a client has to reach transmission (`nbd_handshake_timeout`, 10).
    pub handshake_timeout: Option<u32>,
    /// Seconds a client may stall mid-payload or leave a reply unread
    /// (`nbd_payload_timeout`, 30).
    pub payload_timeout: Option<u32>,
    /// Connections at once (`nbd_max_connections`, 1024).
    pub max_connections: Option<u32>,
    /// Connections at once per uid (`nbd_max_connections_per_uid`, 128).
    pub max_connections_per_uid: Option<u32>,
    /// MiB of payloads and replies in flight (`nbd_memory_budget`, 256).
    pub memory_budget_mib: Option<u32>,
}

impl NbdLimitOptions {
    /// The server's settings: these flags, else the configuration.
    fn server_config(&self, cfg: &Config, paths: usize) -> ServerConfig {
        let pick = |flag: Option<u32>, kw: &str, default: u32| {
            flag.unwrap_or_else(|| cfg.defaults_uint(kw, default))
        };
        let secs = |s: u32| Duration::from_secs(u64::from(s.max(1)));
        let d = ServerConfig::default();
        ServerConfig {
            limits: Limits {
                handshake_timeout: secs(pick(self.handshake_timeout, "nbd_handshake_timeout", 10)),
                payload_timeout: secs(pick(self.payload_timeout, "nbd_payload_timeout", 30)),
                memory_budget: (pick(self.memory_budget_mib, "nbd_memory_budget", 256).max(1)
                    as usize)
                    << 20,
                ..Limits::default()
            },
            max_connections: pick(
                self.max_connections,
                "nbd_max_connections",
                d.max_connections as u32,
            ) as usize,
            max_connections_per_uid: pick(
                self.max_connections_per_uid,
                "nbd_max_connections_per_uid",
                d.max_connections_per_uid as u32,
            ) as usize,
            fd_reserve: Arc::new(AtomicUsize::new(fd_reserve_for(paths))),
            ..d
        }
    }
}

/// Start-up failures.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Config(#[from] config::ConfigError),
    #[error("cannot listen on {what} {addr}: {source}")]
    Listen {
        what: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot serve NBD on {0}")]
    NbdListen(std::io::Error),
    #[error("NBD TLS: {0}")]
    NbdTls(#[from] TlsError),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("IO engine: {0}")]
    IoEngine(String),
    #[error("{0}")]
    Access(String),
    #[error("{0}")]
    Activation(#[from] activation::ActivationError),
}

/// Loads the configuration. A missing /etc/multipath.conf (the default
/// path) means built-in defaults, as multipathd does; any other missing
/// file is an error.
pub fn load_config(path: &std::path::Path) -> Result<Config, config::ConfigError> {
    if path == std::path::Path::new(DEFAULT_CONFIG) && !path.exists() {
        info!(
            "{DEFAULT_CONFIG} does not exist: using built-in defaults (and /etc/multipath/conf.d, if any); \
             create it to declare paths or to set `umpath_scsi_discovery yes`"
        );
        return config::load_or_empty(path);
    }
    config::load(path)
}

/// The running daemon: a handle to the supervisor and the published
/// snapshot. Cheap to share.
pub struct Daemon {
    opts: Options,
    clock: Clock,
    published: Arc<ArcSwap<Published>>,
    tx: mpsc::UnboundedSender<Msg>,
    shutdown_tx: watch::Sender<bool>,
    /// Daemon-wide counters (reloads, start time) for the metrics.
    stats: Arc<metrics::Stats>,
}

/// The export set the NBD server sees; swapped on every commit.
#[derive(Default)]
pub struct Exports {
    list: ArcSwap<Vec<Arc<dyn Export>>>,
}

impl Exports {
    fn set(&self, list: Vec<Arc<dyn Export>>) {
        self.list.store(Arc::new(list));
    }
}

impl ExportSet for Exports {
    fn list(&self) -> Vec<Arc<dyn Export>> {
        self.list.load().as_ref().clone()
    }
}

/// Runs the daemon until a signal or `shutdown` stops it.
pub fn run(opts: Options) -> Result<(), DaemonError> {
    // Before any thread: big buffers go back to the system when freed.
    if !crate::resources::tune_allocator() {
        debug!("allocator not tuned (not glibc)");
    }
    match crate::resources::raise_nofile_limit() {
        Ok((before, after)) => info!("descriptor limit (RLIMIT_NOFILE): {after} (was {before})"),
        Err(e) => warn!("cannot read or raise the descriptor limit: {e}"),
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("umpath")
        .build()
        .map_err(DaemonError::Runtime)?;
    // Ring completions are handled on this runtime (see engine::uring).
    crate::engine::uring::reap_on(rt.handle().clone());
    // The IO engine is chosen once, before any map: a forced io_uring
    // the kernel refuses stops the start here.
    let wish = crate::engine::uring::EngineWish::from_env().map_err(DaemonError::IoEngine)?;
    let engine = crate::engine::uring::io_engine();
    match engine {
        crate::engine::uring::EngineKind::Threads { why }
            if wish == crate::engine::uring::EngineWish::Uring =>
        {
            return Err(DaemonError::IoEngine(format!(
                "UMPATH_IO_ENGINE=uring, but {why}; unset it (or set threads) to run on IO threads"
            )));
        }
        crate::engine::uring::EngineKind::Threads { .. } => warn!("IO engine: {engine}"),
        crate::engine::uring::EngineKind::Uring { .. } => info!("IO engine: {engine}"),
    }
    let r = rt.block_on(async move {
        let (daemon, servers) = Daemon::start(opts).await?;
        daemon.wait(servers).await;
        Ok(())
    });
    // A check stuck in a device (a thread of the blocking pool) must not
    // keep the process from exiting.
    rt.shutdown_timeout(Duration::from_millis(200));
    r
}

/// Tasks to wait for at shutdown.
pub struct Servers {
    tasks: Vec<JoinHandle<()>>,
    supervisor: JoinHandle<Vec<MapRuntime>>,
}

impl Daemon {
    /// Loads the configuration, brings up the maps and starts serving.
    pub async fn start(opts: Options) -> Result<(Arc<Daemon>, Servers), DaemonError> {
        // TLS settings first: a bad file or plain TCP on a non-loopback
        // address stops the start before any map is set up.
        let security = Security::load(&opts.nbd_tls)?;
        if let Some(Ok(addr)) = opts
            .nbd_listen
            .as_deref()
            .map(|l| tcp_listen_addr(l).parse::<std::net::SocketAddr>())
        {
            security.tcp_mode(addr)?;
        }
        // Sockets handed over by systemd (umpathd.socket) are used as they
        // are, the others are bound below; a wrong one fails before any
        // map starts.
        let mut activated = activation::from_env()?;
        let path = opts.config.clone();
        let cfg = tokio::task::spawn_blocking(move || load_config(&path))
            .await
            .map_err(|e| DaemonError::Runtime(std::io::Error::other(e)))??;
        for w in cfg.warnings() {
            warn!("{w}");
        }
        let policy = access_policy(&opts.access, &cfg).map_err(DaemonError::Access)?;
        let cfg = Arc::new(cfg);
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (tx, rx) = mpsc::unbounded_channel();
        let clock = Clock::new();
        let published = Arc::new(ArcSwap::from_pointee(Published::empty(cfg.clone())));
        let exports = Arc::new(Exports::default());
        let mut sup = Supervisor::new(
            opts.clone(),
            cfg.clone(),
            clock.clone(),
            shutdown_rx.clone(),
            published.clone(),
            exports.clone(),
            tx.clone(),
        );
        let summary = sup.apply(cfg).await;
        info!("{}", summary.to_string().trim_end());
        // Devices a previous daemon attached get fresh connections before
        // READY; then the ones the configuration asks for are attached.
        sup.restore_kernel_devices().await;
        let daemon = Arc::new(Daemon {
            opts: opts.clone(),
            clock,
            published,
            tx,
            shutdown_tx,
            stats: Arc::new(metrics::Stats::default()),
        });

        let mut tasks = Vec::new();
        let nbd_socket = opts
            .nbd_socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_NBD_SOCKET));
        let export_set: Arc<dyn ExportSet> = exports;
        let paths = |p: &Published| {
            p.maps.iter().map(|m| m.paths.len()).sum::<usize>()
                + p.pending.iter().map(|m| m.paths.len()).sum::<usize>()
        };
        let server_cfg = ServerConfig {
            unix: Some(nbd_socket.clone()),
            tcp: opts.nbd_listen.as_deref().map(tcp_listen_addr),
            security,
            ..opts.nbd_limits.server_config(
                &daemon.published.load().config,
                paths(&daemon.published.load()),
            )
        };
        // The error names the address that failed.
        let fd_reserve = server_cfg.fd_reserve.clone();
        let mut server = if activated.nbd.is_some() || activated.nbd_tcp.is_some() {
            activated_nbd(&mut activated, &server_cfg, export_set)?
        } else {
            NbdServer::bind(&server_cfg, export_set)
                .await
                .map_err(DaemonError::NbdListen)?
        };
        server
            .restrict_unix(policy.clone())
            .map_err(DaemonError::NbdListen)?;
        let nbd_shutdown = shutdown_rx.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = server.serve(nbd_shutdown).await {
                error!("NBD server: {e}");
            }
        }));
        let (listener, control_path) = match activated.control.take() {
            Some(l) => {
                let addr = l.local_addr().ok();
                let shown = addr
                    .as_ref()
                    .and_then(|a| a.as_pathname())
                    .map_or_else(|| "?".to_string(), |p| p.display().to_string());
                info!(path = %shown, "control socket from systemd");
                let l = tokio::net::UnixListener::from_std(l).map_err(|source| {
                    DaemonError::Listen {
                        what: "control socket (socket-activated)",
                        addr: shown,
                        source,
                    }
                })?;
                // The socket file is systemd's: nothing to remove at exit
                // (the server removes the path it is given; none is).
                (l, PathBuf::new())
            }
            None => {
                let l = control::server::bind(&opts.control_socket).map_err(|source| {
                    DaemonError::Listen {
                        what: "control socket",
                        addr: opts.control_socket.display().to_string(),
                        source,
                    }
                })?;
                info!("control socket {}", opts.control_socket.display());
                (l, opts.control_socket.clone())
            }
        };
        tasks.push(tokio::spawn(control::server::serve(
            listener,
            control_path,
            daemon.clone(),
            control::server::ServeOptions {
                policy,
                bounds: opts.control,
            },
            shutdown_rx.clone(),
        )));
        if let Some(t) = daemon.start_metrics(shutdown_rx.clone()).await? {
            tasks.push(t);
        }

        // Time-driven policy: no_path_retry deadlines, deferred failback,
        // the io_timeout watchdog. Reads the snapshot; waits for nothing.
        let d = daemon.clone();
        let mut sd = shutdown_rx.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = sd.changed() => break,
                    _ = tick.tick() => {
                        let p = d.published.load();
                        for m in &p.maps { m.engine.tick(); }
                        // Descriptors kept from NBD clients follow the paths.
                        fd_reserve.store(fd_reserve_for(paths(&p)), Ordering::Relaxed);
                    }
                }
            }
        }));

        tasks.push(spawn_size_watch(daemon.clone(), shutdown_rx.clone()));
        tasks.push(spawn_signal_handler(daemon.clone()));
        if supervisor::scsi_options(&opts, &daemon.config()).is_some() {
            tasks.push(spawn_hotplug(daemon.clone()));
        }
        let supervisor = tokio::spawn(sup.run(rx));
        if let Some(every) = watchdog::from_env() {
            tasks.push(watchdog::spawn(daemon.clone(), every, shutdown_rx.clone()));
        }
        let n = daemon.published.load().maps.len();
        let _ = sd_notify::notify(
            false,
            &[
                sd_notify::NotifyState::Ready,
                sd_notify::NotifyState::Status(&format!("serving {n} map(s)")),
            ],
        );
        info!(maps = n, "umpath ready");
        Ok((daemon, Servers { tasks, supervisor }))
    }

    /// Waits for a stop request, then stops: no new clients, held IO
    /// failed (unless `queue_without_daemon yes`), in-flight IO given
    /// [`DRAIN_BOUND`] to finish, every path flushed (within
    /// [`FLUSH_BOUND`]).
    pub async fn wait(&self, servers: Servers) {
        let mut rx = self.shutdown_tx.subscribe();
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                break;
            }
        }
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        let t0 = std::time::Instant::now();
        let queue_without_daemon = self.published.load().config.queue_without_daemon();
        // IO held for a map with a kernel NBD device is never failed: an
        // error would reach the device's users, while a request left
        // unanswered is retried by the kernel on the next daemon's
        // connection (the device waits for it).
        let kernel_maps = self.published.load().nbd_devices.clone();
        let maps = match tokio::time::timeout(Duration::from_secs(2), servers.supervisor).await {
            Ok(Ok(m)) => m,
            _ => {
                warn!("the supervisor did not stop in time; stopping without it");
                Vec::new()
            }
        };
        let engines: Vec<MapEngine> = maps.iter().map(|m| m.engine.clone()).collect();
        let failable: Vec<MapEngine> = maps
            .iter()
            .filter(|m| !kernel_maps.contains_key(&m.plan.name))
            .map(|m| m.engine.clone())
            .collect();
        // Release IO stuck on an injected hang so it can drain.
        for m in &maps {
            for d in m.devs() {
                d.faults.clear();
            }
        }
        if !queue_without_daemon {
            fail_held(&failable);
        }
        info!(
            "stopping: draining in-flight IO (at most {} s)",
            DRAIN_BOUND.as_secs()
        );
        let deadline = tokio::time::Instant::now() + DRAIN_BOUND;
        loop {
            let left: usize = engines.iter().map(MapEngine::outstanding).sum();
            if left == 0 {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                warn!(requests = left, "stopping with IO still outstanding");
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Whatever is still held fails now (queue_without_daemon yes, or
        // queued meanwhile): nothing can answer it after we exit.
        fail_held(&failable);
        for t in servers.tasks {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let _ = tokio::time::timeout(left.max(Duration::from_millis(200)), t).await;
        }
        let flushes: Vec<_> = maps
            .iter()
            .flat_map(|m| m.devs().cloned())
            .map(|dev| {
                tokio::task::spawn_blocking(move || {
                    if let Err(e) = dev.flush() {
                        if dev.transport.is_open() {
                            warn!(path = %dev.describe(), "flush at shutdown failed: {e}");
                        }
                    }
                })
            })
            .collect();
        let flushed = tokio::time::timeout(FLUSH_BOUND, async {
            for f in flushes {
                let _ = f.await;
            }
        })
        .await;
        if flushed.is_err() {
            warn!(
                "a path did not finish its final flush within {} s",
                FLUSH_BOUND.as_secs()
            );
        }
        drop(maps);
        info!(
            elapsed_ms = t0.elapsed().as_millis() as u64,
            "umpath stopped"
        );
    }

    pub fn shutdown(&self) {
        let _ = self.shutdown_tx.send(true);
    }

    /// Re-reads the configuration (through the supervisor); a bad file
    /// leaves everything as it was.
    pub async fn reconfigure(&self) -> Result<String, String> {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Reloading]);
        let (reply, answer) = oneshot::channel();
        let r = if self.tx.send(Msg::Reconfigure(reply)).is_err() {
            Err("the daemon is stopping".to_string())
        } else {
            answer
                .await
                .unwrap_or_else(|_| Err("the daemon is stopping; reconfigure abandoned".into()))
        };
        self.stats.reloaded(r.is_ok());
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        r
    }

    /// Serves metrics if `--metrics-listen` or `umpath_metrics_listen`
    /// asks. An address that cannot be bound is an error only with
    /// `--metrics-required`; otherwise the daemon goes on without metrics.
    async fn start_metrics(
        &self,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Option<JoinHandle<()>>, DaemonError> {
        let cfg = self.config();
        let Some(listen) = self
            .opts
            .metrics_listen
            .as_deref()
            .or_else(|| cfg.metrics_listen())
        else {
            return Ok(None);
        };
        let addr = tcp_listen_addr(listen);
        match metrics::bind(&addr).await {
            Ok(listener) => {
                let shown = listener
                    .local_addr()
                    .map_or(addr.clone(), |a| a.to_string());
                info!("metrics on http://{shown}/metrics");
                let renderer = Arc::new(metrics::Renderer::new(
                    self.published.clone(),
                    self.stats.clone(),
                ));
                Ok(Some(tokio::spawn(metrics::serve(
                    listener, renderer, shutdown,
                ))))
            }
            Err(source) => {
                let e = DaemonError::Listen {
                    what: "metrics",
                    addr,
                    source,
                };
                if self.opts.metrics_required {
                    Err(e)
                } else {
                    error!("{e}; serving without metrics (--metrics-required makes this fatal)");
                    Ok(None)
                }
            }
        }
    }

    /// Sends the supervisor a message with a reply channel and answers
    /// with its reply.
    async fn ask(
        &self,
        msg: impl FnOnce(oneshot::Sender<Result<String, String>>) -> Msg,
    ) -> Response {
        let (reply, answer) = oneshot::channel();
        if self.tx.send(msg(reply)).is_err() {
            return Response::error("the daemon is stopping");
        }
        match answer.await {
            Ok(Ok(t)) => Response::text(t),
            Ok(Err(e)) => Response::error(e),
            Err(_) => Response::error("the daemon is stopping"),
        }
    }

    /// `resize map NAME` (`auto`: the `auto_resize` mode, which applies
    /// only the changes it allows and says nothing when there is none):
    /// reads the size of each usable path; they must agree. The map
    /// takes the new size, and so does its kernel NBD device, if any.
    pub async fn resize_map(
        &self,
        name: &str,
        auto: Option<config::AutoResize>,
    ) -> Result<String, String> {
        let (engine, usable, attached) = {
            let p = self.published.load();
            let Some(m) = p.maps.iter().find(|m| m.engine.info().name == name) else {
                return Err(if p.pending.iter().any(|w| w.name == name) {
                    format!("map {name} is waiting for a path that can tell its size")
                } else {
                    format!("no map named {name:?}")
                });
            };
            let snap = m.engine.snapshot();
            let usable: Vec<(String, Arc<crate::transport::PathDev>)> = m
                .paths
                .iter()
                .filter(|pp| {
                    snap.map
                        .path(pp.id)
                        .is_some_and(|x| !x.removed && x.usable())
                })
                .map(|pp| (pp.name.clone(), pp.dev.clone()))
                .collect();
            (m.engine.clone(), usable, p.nbd_devices.contains_key(name))
        };
        let sizes = resize::read_sizes(usable).await;
        let current = engine.size();
        let new = match auto {
            Some(mode) => match resize::auto_decision(mode, name, current, &sizes) {
                Some(n) => n,
                None => return Ok(String::new()),
            },
            None => resize::agreed_size(name, &sizes)?,
        };
        let old = engine.set_size(new);
        if old == new {
            return Ok(format!("ok: map {name}: size unchanged ({new} bytes)\n"));
        }
        info!(map = %name, "map resized from {old} to {new} bytes");
        let mut out = format!(
            "ok: map {name} resized from {old} to {new} bytes (new NBD connections see the new size)\n"
        );
        if attached {
            let (reply, answer) = oneshot::channel();
            let r = if self
                .tx
                .send(Msg::KernelResize {
                    map: name.to_string(),
                    size: new,
                    reply,
                })
                .is_err()
            {
                Err("the daemon is stopping".to_string())
            } else {
                answer
                    .await
                    .unwrap_or_else(|_| Err("the daemon is stopping".to_string()))
            };
            match r {
                Ok(t) => out.push_str(&t),
                Err(e) => {
                    warn!(map = %name, "kernel NBD device not resized: {e}");
                    return Err(format!(
                        "map {name} resized from {old} to {new} bytes, but its kernel NBD device was not: {e}"
                    ));
                }
            }
        }
        Ok(out)
    }

    /// The published snapshot.
    pub fn published(&self) -> Arc<Published> {
        self.published.load_full()
    }

    /// Sets a fault on a path (`fault path NAME SPEC`).
    pub async fn set_fault(&self, path: &str, spec: &str) -> Result<(), String> {
        let p = self.published.load();
        let (_, pp) = p
            .path(path)
            .ok_or_else(|| format!("no path named {path:?}"))?;
        for f in FaultSpec::parse_list(spec).map_err(|e| e.to_string())? {
            pp.dev.faults.apply(f);
        }
        Ok(())
    }

    /// The topology in `multipath -ll` shape.
    pub async fn topology_text(&self) -> String {
        show::topology_text(&self.snapshots().await, &self.extras())
    }

    pub async fn snapshots(&self) -> Vec<MapSnapshot> {
        self.published
            .load()
            .maps
            .iter()
            .map(|m| m.engine.snapshot())
            .collect()
    }

    fn config(&self) -> Arc<Config> {
        self.published.load().config.clone()
    }
}

/// Fails IO held by no_path_retry (multipath-tools turns queueing off
/// when multipathd stops unless `queue_without_daemon yes`).
fn fail_held(engines: &[MapEngine]) {
    for e in engines {
        e.shutdown();
    }
}

/// Who may do what: flags first, then the `defaults` keywords; the NBD
/// group defaults to the admin group. Group names are resolved now.
fn access_policy(
    opts: &crate::access::AccessOptions,
    cfg: &Config,
) -> Result<crate::access::Policy, String> {
    let admin = opts.admin_group.as_deref().or(cfg.admin_group());
    let nbd = opts.nbd_group.as_deref().or(cfg.nbd_group()).or(admin);
    let resolve = |name: Option<&str>, what: &str| {
        name.map(|n| crate::unixsock::resolve_group(n).map_err(|e| format!("{what} group: {e}")))
            .transpose()
    };
    let policy = crate::access::Policy {
        owner: nix::unistd::geteuid().as_raw(),
        admin: resolve(admin, "admin")?,
        nbd: resolve(nbd, "NBD")?,
    };
    let name = |g: &Option<crate::access::Group>| {
        g.as_ref()
            .map_or_else(|| "none".to_string(), |g| format!("{} ({})", g.name, g.gid))
    };
    info!(
        "access: changes for root and group {}; NBD sessions on the Unix socket for root and group {}",
        name(&policy.admin),
        name(&policy.nbd)
    );
    Ok(policy)
}

/// The NBD server on socket-activated listeners: `nbd` (Unix) and/or
/// `nbd-tcp`; `--nbd-listen` is bound here when no `nbd-tcp` was passed.
fn activated_nbd(
    activated: &mut activation::Activated,
    cfg: &ServerConfig,
    exports: Arc<dyn ExportSet>,
) -> Result<NbdServer, DaemonError> {
    let tcp = match (activated.nbd_tcp.take(), &cfg.tcp) {
        (Some(l), _) => Some(l),
        (None, Some(addr)) => {
            let l = std::net::TcpListener::bind(addr.as_str())
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(|source| DaemonError::Listen {
                    what: "NBD",
                    addr: format!("tcp:{addr}"),
                    source,
                })?;
            Some(l)
        }
        (None, None) => None,
    };
    let unix = activated.nbd.take();
    NbdServer::from_listeners(unix, tcp, cfg, exports).map_err(|source| DaemonError::Listen {
        what: "NBD (socket-activated)",
        addr: "the sockets systemd passed".into(),
        source,
    })
}

/// `--nbd-listen` value to a socket address: a bare port (or `:port`)
/// binds 127.0.0.1.
pub fn tcp_listen_addr(s: &str) -> String {
    if s.parse::<u16>().is_ok() {
        format!("127.0.0.1:{s}")
    } else if let Some(port) = s.strip_prefix(':') {
        format!("127.0.0.1:{port}")
    } else {
        s.to_string()
    }
}

/// Reads kernel uevents on a thread of its own and hands SCSI disk events
/// to the daemon, until shutdown.
fn spawn_hotplug(daemon: Arc<Daemon>) -> JoinHandle<()> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let listener_stop = stop.clone();
    let spawned = std::thread::Builder::new()
        .name("uevents".into())
        .spawn(move || {
            if let Err(e) = hotplug::listen(tx, listener_stop) {
                error!("hotplug: cannot read kernel uevents: {e}; new disks are found on reconfigure only");
            }
        });
    if let Err(e) = spawned {
        error!("hotplug: cannot start the uevent thread: {e}");
    }
    let mut shutdown = daemon.shutdown_tx.subscribe();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                ev = rx.recv() => match ev {
                    Some(ev) => {
                        info!(action = %ev.action, dev = %ev.devname, "uevent");
                        if daemon.tx.send(Msg::Uevent(ev)).is_err() { break; }
                    }
                    None => break,
                },
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    })
}

/// Installs the signal handlers now (so a signal right after READY=1 is
/// handled, not fatal), then serves them on a task.
/// `auto_resize`: every `polling_interval`, each running map's usable
/// paths are asked their size; a new size they all report is applied if
/// the keyword allows it ([`resize`]). Does nothing under `never`.
fn spawn_size_watch(daemon: Arc<Daemon>, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let cfg = daemon.config();
            let every = Duration::from_secs(u64::from(cfg.polling_interval().max(1)));
            tokio::select! {
                _ = shutdown.changed() => break,
                () = tokio::time::sleep(every) => {}
            }
            let mode = cfg.auto_resize();
            if mode == config::AutoResize::Never {
                continue;
            }
            let names: Vec<String> = daemon
                .published
                .load()
                .maps
                .iter()
                .map(|m| m.engine.info().name.clone())
                .collect();
            for name in names {
                if let Err(e) = daemon.resize_map(&name, Some(mode)).await {
                    warn!(map = %name, "auto_resize: {e}");
                }
            }
        }
    })
}

fn spawn_signal_handler(daemon: Arc<Daemon>) -> JoinHandle<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    );
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = handlers else {
            error!("cannot install signal handlers");
            return;
        };
        let mut shutdown = daemon.shutdown_tx.subscribe();
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = term.recv() => { info!("SIGTERM: shutting down"); daemon.shutdown(); }
                _ = int.recv() => { info!("SIGINT: shutting down"); daemon.shutdown(); }
                _ = hup.recv() => {
                    info!("SIGHUP: reconfiguring");
                    let _ = daemon.reconfigure().await;
                }
            }
        }
    })
}

impl Daemon {
    /// The path called `name`: its engine, id and device.
    fn find_path(
        &self,
        name: &str,
    ) -> Result<
        (
            MapEngine,
            crate::model::PathId,
            Arc<crate::transport::PathDev>,
        ),
        Response,
    > {
        let p = self.published.load();
        match p.path(name) {
            Some((engine, pp)) => Ok((engine.clone(), pp.id, pp.dev.clone())),
            None => Err(Response::error(format!(
                "no path named {name:?} (paths: {})",
                p.path_names().join(", ")
            ))),
        }
    }
}

/// A rendered `show` as a response.
fn rendered(r: show::Rendered) -> Response {
    match r {
        show::Rendered::Text(t) => Response::text(t),
        show::Rendered::Json(v) => Response::json(v),
    }
}

/// multipathd's features string of a map: the configured `features`
/// without `queue_if_no_path`, plus `queue_if_no_path` while the map
/// queues when no path is usable (no_path_retry `queue` or N, not yet
/// exhausted and not disabled).
fn features_string(configured: &str, queues: bool) -> String {
    let mut words: Vec<&str> = configured
        .split_whitespace()
        .skip(1)
        .filter(|w| *w != "queue_if_no_path")
        .collect();
    if queues {
        words.insert(0, "queue_if_no_path");
    }
    if words.is_empty() {
        "0".to_string()
    } else {
        format!("{} {}", words.len(), words.join(" "))
    }
}

impl Daemon {
    /// What `show` needs per map beyond the engine snapshots.
    fn extras(&self) -> std::collections::BTreeMap<String, show::MapExtra> {
        use crate::policy::no_path_retry::NoPathState;
        use crate::policy::NoPathRetry;
        let p = self.published.load();
        p.maps
            .iter()
            .map(|m| {
                let name = m.engine.info().name.clone();
                let snap = m.engine.snapshot();
                let live = snap.map.policy().no_path_retry;
                let queues =
                    live != NoPathRetry::Fail && snap.map.no_path_state() != NoPathState::Failing;
                let first = m.paths.first().map(|pp| pp.settings.load_full());
                let features = features_string(
                    first.as_ref().map_or("0", |s| s.features.value.as_str()),
                    queues,
                );
                let hwhandler = snap
                    .map
                    .paths()
                    .iter()
                    .find(|x| !x.removed)
                    .map(|x| {
                        let i = &x.info;
                        let ident = crate::config::PathIdentity {
                            vendor: &i.vendor,
                            product: &i.product,
                            revision: &i.revision,
                            wwid: &i.wwid,
                        };
                        p.config
                            .explain(&ident)
                            .into_iter()
                            .find(|e| e.keyword == "hardware_handler")
                            .map_or_else(|| "0".to_string(), |e| e.value)
                    })
                    .unwrap_or_else(|| "0".to_string());
                let paths = m
                    .paths
                    .iter()
                    .map(|pp| {
                        (
                            pp.name.clone(),
                            show::PathExtra {
                                hcil: pp.scsi.as_ref().map(|s| s.0.clone()),
                                dev_t: pp
                                    .scsi
                                    .as_ref()
                                    .map(|s| s.1.clone())
                                    .filter(|d| !d.is_empty()),
                                checker: pp.settings.load().path_checker.value.to_string(),
                            },
                        )
                    })
                    .collect();
                let extra = show::MapExtra {
                    features,
                    hwhandler,
                    queueing_disabled: live == NoPathRetry::Fail
                        && m.configured.no_path_retry != NoPathRetry::Fail,
                    nbd_device: p.nbd_devices.get(&name).copied(),
                    paths,
                };
                (name, extra)
            })
            .collect()
    }

    /// `disablequeueing` (`restore` false) or `restorequeueing` of one map
    /// or (`None`) all.
    fn set_queueing(&self, map: Option<&str>, restore: bool) -> Response {
        use crate::policy::NoPathRetry;
        let p = self.published.load();
        let targets: Vec<&supervisor::PublishedMap> = match map {
            Some(name) => match p.maps.iter().find(|m| m.engine.info().name == name) {
                Some(m) => vec![m],
                None => return Response::error(format!("no map named {name:?}")),
            },
            None => p.maps.iter().collect(),
        };
        let mut out = String::new();
        for m in targets {
            let name = &m.engine.info().name;
            let live = m.engine.snapshot().map.policy().no_path_retry;
            if restore {
                if live == m.configured.no_path_retry {
                    out.push_str(&format!("{name}: queueing not disabled, nothing to do\n"));
                } else {
                    m.engine.set_no_path_retry(m.configured.no_path_retry);
                    info!(map = %name, "queueing restored (operator): no_path_retry {}", m.configured.no_path_retry);
                    out.push_str(&format!(
                        "ok: {name}: queueing restored (no_path_retry {})\n",
                        m.configured.no_path_retry
                    ));
                }
            } else {
                m.engine.set_no_path_retry(NoPathRetry::Fail);
                info!(map = %name, "queueing disabled (operator)");
                out.push_str(&format!(
                    "ok: {name}: queueing disabled until restorequeueing or reconfigure\n"
                ));
            }
        }
        Response::text(out)
    }
}

/// Commands that change something are answered after the change; `show`
/// reads the published snapshot and never waits for the supervisor.
impl control::server::Handler for Daemon {
    async fn handle(self: Arc<Self>, cmd: Command) -> Response {
        match cmd {
            Command::Show { what, json } => {
                let snaps = self.snapshots().await;
                match (what, json) {
                    (ShowWhat::Paths, true) => Response::json(show::paths_json(&snaps)),
                    (ShowWhat::Paths, false) => Response::text(show::paths_text(&snaps)),
                    (ShowWhat::Maps, true) | (ShowWhat::Topology, true) => {
                        let mut v = show::maps_json(&snaps, &self.extras());
                        if let serde_json::Value::Array(list) = &mut v {
                            list.extend(self.published.load().pending.iter().map(|p| {
                                json!({
                                    "name": p.name,
                                    "wwid": p.wwid,
                                    "state": "waiting",
                                    "reason": "no path can tell the LUN's size yet",
                                    "paths": p.paths,
                                })
                            }));
                        }
                        Response::json(v)
                    }
                    (ShowWhat::Maps, false) => {
                        let mut t = show::maps_text(&snaps, &self.extras());
                        for p in &self.published.load().pending {
                            t.push_str(&format!(
                                "{} waiting: no path can tell the LUN's size yet (paths {})\n",
                                p.name,
                                p.paths.join(", ")
                            ));
                        }
                        Response::text(t)
                    }
                    (ShowWhat::Topology, false) => {
                        Response::text(show::topology_text(&snaps, &self.extras()))
                    }
                    (ShowWhat::MapsStats, json) => rendered(show::maps_format(
                        &snaps,
                        &self.extras(),
                        show::MAP_STATS_FORMAT,
                        false,
                        json,
                        self.clock.now(),
                    )),
                    (ShowWhat::Daemon, json) => {
                        let pid = std::process::id();
                        if json {
                            Response::json(json!({ "pid": pid, "status": "running" }))
                        } else {
                            Response::text(format!("pid {pid} running\n"))
                        }
                    }
                    (ShowWhat::Blacklist, json) => {
                        let cfg = self.config();
                        if json {
                            Response::json(show::blacklist_json(&cfg))
                        } else {
                            Response::text(show::blacklist_text(&cfg))
                        }
                    }
                    (ShowWhat::Devices, json) => {
                        let known: Vec<String> = snaps
                            .iter()
                            .flat_map(|s| s.live_paths().map(|(_, p, _)| p.info.name.clone()))
                            .collect();
                        let r = show::devices(&known);
                        if json {
                            Response::json(r.0)
                        } else {
                            Response::text(r.1)
                        }
                    }
                    (ShowWhat::Config, true) => {
                        // Each path's effective settings with their origins.
                        let p = self.published.load();
                        let v: serde_json::Map<String, serde_json::Value> = p
                            .path_names()
                            .into_iter()
                            .filter_map(|n| {
                                let d = p.config.path(n)?;
                                let live = p.path(n).map(|(_, pp)| pp.settings.load_full());
                                let v = match live {
                                    Some(l) => p.config.explain_live_json(&d.identity(), &l),
                                    None => p.config.explain_json(&d.identity()),
                                };
                                Some((n.to_string(), v))
                            })
                            .collect();
                        Response::json(serde_json::Value::Object(v))
                    }
                    (ShowWhat::Config, false) => {
                        // The merged configuration, shaped like `multipath -t`.
                        Response::text(self.config().render_multipath_t())
                    }
                    (ShowWhat::Stats, true) => {
                        Response::json(show::stats_json(&snaps, self.clock.now().0))
                    }
                    (ShowWhat::Stats, false) => Response::text(show::stats_text(&snaps)),
                    (ShowWhat::Status, json) => {
                        let p = self.published.load();
                        let paths: usize = p.maps.iter().map(|m| m.paths.len()).sum();
                        let uptime_ms = self.clock.now().0;
                        if json {
                            Response::json(json!({
                                "config": self.opts.config.display().to_string(),
                                "maps": p.maps.len(),
                                "waiting_maps": p.pending.len(),
                                "paths": paths,
                                "uptime_ms": uptime_ms,
                                "io_engine": engine_json(),
                            }))
                        } else {
                            Response::text(format!(
                                "config        {}\nmaps          {}\nwaiting maps  {}\npaths         {}\nuptime        {}\nio engine     {}\n",
                                self.opts.config.display(),
                                p.maps.len(),
                                p.pending.len(),
                                paths,
                                show::human_duration(Duration::from_millis(uptime_ms)),
                                engine_text(),
                            ))
                        }
                    }
                }
            }
            Command::ShowFormat {
                of,
                format,
                raw,
                json,
            } => {
                let snaps = self.snapshots().await;
                let extras = self.extras();
                rendered(match of {
                    control::FormatOf::Paths => {
                        show::paths_format(&snaps, &extras, &format, raw, json)
                    }
                    control::FormatOf::Maps => {
                        show::maps_format(&snaps, &extras, &format, raw, json, self.clock.now())
                    }
                })
            }
            Command::DisableQueueing { map } => self.set_queueing(map.as_deref(), false),
            Command::RestoreQueueing { map } => self.set_queueing(map.as_deref(), true),
            Command::ShowPathConfig { path, json } => match self.find_path(&path) {
                Err(r) => r,
                Ok((engine, id, _)) => {
                    // The same renderer as `umpath explain`, for the live
                    // path's identity (declared or discovered).
                    let snap = engine.snapshot();
                    let Some(p) = snap.map.path(id) else {
                        return Response::error(format!("no path named {path:?}"));
                    };
                    let i = &p.info;
                    let ident = crate::config::PathIdentity {
                        vendor: &i.vendor,
                        product: &i.product,
                        revision: &i.revision,
                        wwid: &i.wwid,
                    };
                    let cfg = self.config();
                    // What the device decided (detect_prio,
                    // detect_pgpolicy) is shown as the path runs it.
                    let live = self
                        .published
                        .load()
                        .path(&path)
                        .map(|(_, pp)| pp.settings.load_full());
                    match (live, json) {
                        (Some(l), true) => Response::json(cfg.explain_live_json(&ident, &l)),
                        (Some(l), false) => Response::text(cfg.explain_live_text(&ident, &l)),
                        (None, true) => Response::json(cfg.explain_json(&ident)),
                        (None, false) => Response::text(cfg.explain_text(&ident)),
                    }
                }
            },
            Command::FailPath { path } => match self.find_path(&path) {
                Err(r) => r,
                Ok((engine, id, _)) => {
                    engine.admin_fail(id);
                    Response::text(format!(
                        "ok: path {path} failed (it stays failed until `reinstate path {path}`)\n"
                    ))
                }
            },
            Command::ReinstatePath { path } => match self.find_path(&path) {
                Err(r) => r,
                Ok((engine, id, _)) => {
                    engine.admin_reinstate(id);
                    Response::text(format!("ok: path {path} reinstated\n"))
                }
            },
            Command::FaultPath { path, spec } => match self.find_path(&path) {
                Err(r) => r,
                Ok((_, _, dev)) => match FaultSpec::parse(&spec) {
                    Err(e) => Response::error(e.to_string()),
                    Ok(spec) => {
                        dev.faults.apply(spec);
                        let now = dev.faults.describe().unwrap_or_else(|| "none".into());
                        info!(path = %path, "fault set: {now}");
                        Response::text(format!("ok: path {path} fault: {now}\n"))
                    }
                },
            },
            Command::SwitchGroup { map, group } => {
                let p = self.published.load();
                match p.maps.iter().find(|m| m.engine.info().name == map) {
                    None => Response::error(format!("no map named {map:?}")),
                    Some(m) => {
                        if m.engine.switch_group(group - 1) {
                            Response::text(format!("ok: map {map} switched to group {group}\n"))
                        } else {
                            Response::error(format!("map {map}: group {group} does not exist, has no usable path, or is already active"))
                        }
                    }
                }
            }
            Command::ResizeMap { map } => match self.resize_map(&map, None).await {
                Ok(t) => Response::text(t),
                Err(e) => Response::error(e),
            },
            Command::AddPath { path } => self.ask(|reply| Msg::AddPath { path, reply }).await,
            Command::DelPath { path } => self.ask(|reply| Msg::DelPath { path, reply }).await,
            Command::Reconfigure => match self.reconfigure().await {
                Ok(summary) => Response::text(format!("ok: {summary}")),
                Err(e) => Response::error(e),
            },
            Command::Shutdown => {
                self.shutdown();
                Response::text("ok: shutting down\n")
            }
            Command::ShutdownDetach => {
                let (reply, answer) = oneshot::channel();
                let errors = if self.tx.send(Msg::DetachAll(reply)).is_ok() {
                    answer.await.unwrap_or_default()
                } else {
                    Vec::new()
                };
                self.shutdown();
                if errors.is_empty() {
                    Response::text("ok: devices detached; shutting down\n")
                } else {
                    Response::error(format!(
                        "shutting down; not detached: {}",
                        errors.join("; ")
                    ))
                }
            }
            Command::Attach { map, device } => {
                self.ask(|reply| Msg::Attach { map, device, reply }).await
            }
            Command::Detach { map, force } => {
                self.ask(|reply| Msg::Detach { map, force, reply }).await
            }
        }
    }
}

/// `show status`'s IO engine line: which engine, why, and where the
/// requests went.
fn engine_text() -> String {
    let (ring, threads) = crate::engine::uring::request_counts();
    let calls = crate::engine::uring::submit_calls();
    let (reads, writes) = crate::engine::page_cache_counts();
    format!(
        "{}; {ring} request(s) on rings in {calls} submission(s), {threads} on IO threads, \
         {reads} read(s) and {writes} write(s) done in the page cache, {iscsi} on iSCSI \
         connections",
        crate::engine::uring::io_engine(),
        iscsi = crate::engine::uring::async_requests(),
    )
}

/// `show status --json`'s `io_engine`.
fn engine_json() -> serde_json::Value {
    use crate::engine::uring::EngineKind;
    let (ring, threads) = crate::engine::uring::request_counts();
    let (cache_reads, cache_writes) = crate::engine::page_cache_counts();
    match crate::engine::uring::io_engine() {
        EngineKind::Uring {
            rings,
            entries,
            on_runtime,
        } => json!({
            "kind": "io_uring",
            "rings": rings,
            "completions_on_runtime": on_runtime,
            "ring_entries": entries,
            "ring_requests": ring,
            "ring_submit_calls": crate::engine::uring::submit_calls(),
            "thread_requests": threads,
            "page_cache_reads": cache_reads,
            "page_cache_writes": cache_writes,
            "iscsi_requests": crate::engine::uring::async_requests(),
        }),
        EngineKind::Threads { why } => json!({
            "kind": "threads",
            "why": why,
            "ring_requests": ring,
            "thread_requests": threads,
            "page_cache_reads": cache_reads,
            "page_cache_writes": cache_writes,
            "iscsi_requests": crate::engine::uring::async_requests(),
        }),
    }
}
