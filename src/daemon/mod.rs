//! The daemon: the only module that sees everything.
//!
//! Start-up: load the configuration, plan maps ([`assemble`]), open each
//! path and run a first check, start a [`MapEngine`] per map, start one
//! checker task per path, serve NBD and the control socket, then tell
//! systemd READY=1. SIGHUP or `reconfigure` re-reads the configuration
//! (a bad file is rejected and the running configuration stays);
//! SIGTERM/SIGINT or `shutdown` stop accepting clients, let in-flight IO
//! finish, flush every map and exit.

pub mod assemble;
pub mod bindings;
pub mod hotplug;
pub mod show;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde_json::json;
use tokio::sync::{watch, Mutex as AsyncMutex};
use tokio::task::JoinHandle;
use tracing::{error, info, info_span, warn, Instrument};

use crate::checker::{CheckResult, PathChecker};
use crate::config::{self, Config, PathSettings};
use crate::control::{self, Command, Response, ShowWhat};
use crate::discovery::{self, DiscoverOptions, ScsiDevice};
use crate::engine::{Clock, MapEngine, MapInfo, MapSnapshot};
use crate::export::{Export, ExportSet};
use crate::model::{CheckState, Map, Path as ModelPath, PathId};
use crate::nbd::server::{Limits, NbdServer, ServerConfig};
use crate::nbd::uri::NbdUri;
use crate::transport::fault::FaultSpec;
use crate::transport::nbd::NbdTransport;
use crate::transport::{PathDev, Transport};
use assemble::{MapPlan, PathPlan};

/// Default locations.
pub const DEFAULT_CONFIG: &str = "/etc/multipath.conf";
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/umpath/control.sock";
pub const DEFAULT_NBD_SOCKET: &str = "/run/umpath/nbd.sock";

/// Default check timeout when neither the config nor the device says.
const DEFAULT_CHECKER_TIMEOUT: Duration = Duration::from_secs(30);

/// How the daemon is started.
#[derive(Debug, Clone)]
pub struct Options {
    pub config: PathBuf,
    pub nbd_socket: Option<PathBuf>,
    pub nbd_listen: Option<String>,
    pub control_socket: PathBuf,
    /// Discover SCSI disks (sysfs) and use each as a path, in addition to
    /// the declared ones; `None`: declared paths only.
    pub scsi: Option<DiscoverOptions>,
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
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}

/// A path at work: its device, checker and resolved settings.
struct PathRt {
    map: String,
    id: PathId,
    dev: Arc<PathDev>,
    settings: PathSettings,
    checker: JoinHandle<()>,
}

/// A map at work.
struct MapRt {
    engine: MapEngine,
    plan: MapPlan,
}

/// Everything the running daemon knows.
struct State {
    config: Arc<Config>,
    maps: Vec<MapRt>,
    paths: HashMap<String, PathRt>,
}

/// The running daemon.
pub struct Daemon {
    opts: Options,
    clock: Clock,
    state: AsyncMutex<State>,
    exports: Arc<Exports>,
    shutdown_tx: watch::Sender<bool>,
}

/// The export set the NBD server sees; swapped on reconfigure.
#[derive(Default)]
pub struct Exports {
    list: ArcSwap<Vec<Arc<dyn Export>>>,
}

impl ExportSet for Exports {
    fn list(&self) -> Vec<Arc<dyn Export>> {
        self.list.load().as_ref().clone()
    }
}

/// Runs the daemon until a signal or `shutdown` stops it.
pub fn run(opts: Options) -> Result<(), DaemonError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("umpath")
        .build()
        .map_err(DaemonError::Runtime)?;
    rt.block_on(async move {
        let (daemon, servers) = Daemon::start(opts).await?;
        daemon.wait(servers).await;
        Ok(())
    })
}

/// Server tasks to wait for at shutdown.
pub struct Servers {
    tasks: Vec<JoinHandle<()>>,
}

impl Daemon {
    /// Loads the configuration, assembles maps and starts serving.
    pub async fn start(opts: Options) -> Result<(Arc<Daemon>, Servers), DaemonError> {
        let cfg = config::load(&opts.config)?;
        for w in cfg.warnings() {
            warn!("{w}");
        }
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let daemon = Arc::new(Daemon {
            opts: opts.clone(),
            clock: Clock::new(),
            state: AsyncMutex::new(State {
                config: Arc::new(cfg),
                maps: Vec::new(),
                paths: HashMap::new(),
            }),
            exports: Arc::new(Exports::default()),
            shutdown_tx,
        });
        {
            let mut st = daemon.state.lock().await;
            let cfg = st.config.clone();
            daemon.apply_config(&mut st, cfg).await;
        }

        let mut tasks = Vec::new();
        let nbd_socket = opts
            .nbd_socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_NBD_SOCKET));
        let exports: Arc<dyn ExportSet> = daemon.exports.clone();
        let server_cfg = ServerConfig {
            unix: Some(nbd_socket.clone()),
            tcp: opts.nbd_listen.as_deref().map(tcp_listen_addr),
            limits: Limits::default(),
        };
        let server = NbdServer::bind(&server_cfg, exports)
            .await
            .map_err(|source| DaemonError::Listen {
                what: "NBD",
                addr: match &server_cfg.tcp {
                    Some(t) => format!("unix:{} and tcp:{t}", nbd_socket.display()),
                    None => format!("unix:{}", nbd_socket.display()),
                },
                source,
            })?;
        let nbd_shutdown = shutdown_rx.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = server.serve(nbd_shutdown).await {
                error!("NBD server: {e}");
            }
        }));
        let listener =
            control::server::bind(&opts.control_socket).map_err(|source| DaemonError::Listen {
                what: "control socket",
                addr: opts.control_socket.display().to_string(),
                source,
            })?;
        tasks.push(tokio::spawn(control::server::serve(
            listener,
            opts.control_socket.clone(),
            daemon.clone(),
            shutdown_rx.clone(),
        )));
        info!("control socket {}", opts.control_socket.display());

        // Time-driven policy: no_path_retry deadlines, deferred failback.
        let d = daemon.clone();
        let mut sd = shutdown_rx.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tokio::select! {
                    _ = sd.changed() => break,
                    _ = tick.tick() => {
                        for e in d.engines().await { e.tick(); }
                    }
                }
            }
        }));

        tasks.push(spawn_signal_handler(daemon.clone()));
        if opts.scsi.is_some() {
            tasks.push(spawn_hotplug(daemon.clone()));
        }
        let n = daemon.exports.list().len();
        let _ = sd_notify::notify(
            false,
            &[
                sd_notify::NotifyState::Ready,
                sd_notify::NotifyState::Status(&format!("serving {n} map(s)")),
            ],
        );
        info!(maps = n, "umpath ready");
        Ok((daemon, Servers { tasks }))
    }

    /// Waits for the servers to stop (after [`Daemon::shutdown`]), then
    /// drains and flushes every map.
    pub async fn wait(&self, servers: Servers) {
        let mut rx = self.shutdown_tx.subscribe();
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                break;
            }
        }
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        info!("shutting down: draining in-flight IO");
        // Release IO stuck on an injected hang so it can drain.
        for p in self.state.lock().await.paths.values() {
            p.dev.faults.clear();
        }
        for t in servers.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
        }
        let st = self.state.lock().await;
        for m in &st.maps {
            for _ in 0..300 {
                if m.engine.outstanding() == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            m.engine.shutdown();
        }
        for p in st.paths.values() {
            p.checker.abort();
            if let Err(e) = p.dev.flush() {
                if p.dev.transport.is_open() {
                    warn!(path = %p.dev.describe(), "flush at shutdown failed: {e}");
                }
            }
        }
        info!("umpath stopped");
    }

    pub fn shutdown(&self) {
        let _ = self.shutdown_tx.send(true);
    }

    async fn engines(&self) -> Vec<MapEngine> {
        self.state
            .lock()
            .await
            .maps
            .iter()
            .map(|m| m.engine.clone())
            .collect()
    }

    /// Re-reads the configuration; a bad file leaves everything as it was.
    pub async fn reconfigure(self: &Arc<Self>) -> Result<String, String> {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Reloading]);
        let result = match config::load(&self.opts.config) {
            Err(e) => {
                error!("reconfigure rejected, keeping the running configuration:\n{e}");
                Err(format!(
                    "configuration rejected, the running one stays in force:\n{e}"
                ))
            }
            Ok(cfg) => {
                for w in cfg.warnings() {
                    warn!("{w}");
                }
                let mut st = self.state.lock().await;
                let summary = self.apply_config(&mut st, Arc::new(cfg)).await;
                info!("reconfigured: {summary}");
                Ok(summary)
            }
        };
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        result
    }

    /// Brings the running maps in line with `cfg`. Maps whose path set is
    /// unchanged keep running and take the new settings; new maps start;
    /// maps that are gone or whose paths changed are stopped (connections
    /// still using an old map keep it until they disconnect).
    async fn apply_config(self: &Arc<Self>, st: &mut State, cfg: Arc<Config>) -> String {
        let mut scsi = self.discover_scsi().await;
        // Callouts are programs: run them off the async workers' hot loop.
        tokio::task::block_in_place(|| discovery::apply_callouts(&cfg, &mut scsi));
        let friendly = bindings::friendly_names(&cfg);
        let (plans, skipped) = assemble::plan_with(&cfg, &friendly, &scsi);
        st.config = cfg.clone();
        let io_timeout = io_timeout(&cfg);
        for s in &skipped {
            info!(path = %s.path, "not used: {}", s.reason);
        }
        let mut kept = 0;
        let mut started = 0;
        let old_maps = std::mem::take(&mut st.maps);
        let mut old_by_wwid: HashMap<String, MapRt> = old_maps
            .into_iter()
            .map(|m| (m.plan.wwid.clone(), m))
            .collect();
        for plan in plans {
            match old_by_wwid.remove(&plan.wwid) {
                Some(old) if same_paths(&old.plan, &plan) && old.plan.name == plan.name => {
                    old.engine.reconfigure(plan.policy.clone());
                    old.engine.set_io_timeout(io_timeout);
                    for p in &plan.paths {
                        if let Some(rt) = st.paths.get_mut(&p.decl.name) {
                            rt.settings = p.settings.clone();
                        }
                    }
                    st.maps.push(MapRt {
                        engine: old.engine,
                        plan,
                    });
                    kept += 1;
                }
                other => {
                    if let Some(old) = other {
                        self.stop_map(st, old);
                    }
                    if let Some(m) = self.start_map(st, plan).await {
                        st.maps.push(m);
                        started += 1;
                    }
                }
            }
        }
        let stopped = old_by_wwid.len();
        for (_, old) in old_by_wwid {
            self.stop_map(st, old);
        }
        self.publish_exports(st);
        format!("{kept} map(s) kept, {started} started, {stopped} stopped")
    }

    /// Makes the running maps the NBD server's export list.
    fn publish_exports(&self, st: &State) {
        let list: Vec<Arc<dyn Export>> = st
            .maps
            .iter()
            .map(|m| Arc::new(m.engine.clone()) as Arc<dyn Export>)
            .collect();
        self.exports.list.store(Arc::new(list));
    }

    /// Acts on a SCSI disk's uevent: `add`/`change` (re)read the disk and
    /// join it to its map (a new map if its WWID is new); `remove` takes
    /// its path out. Running maps and their NBD connections stay up.
    async fn hotplug(self: &Arc<Self>, ev: hotplug::Uevent) {
        match ev.action.as_str() {
            "add" | "change" => self.hotplug_add(&ev.devname).await,
            "remove" => {
                let mut st = self.state.lock().await;
                self.remove_path_locked(&mut st, &ev.devname);
            }
            _ => {}
        }
    }

    fn remove_path_locked(&self, st: &mut State, name: &str) {
        let Some(rt) = st.paths.remove(name) else {
            return;
        };
        rt.checker.abort();
        if let Some(m) = st.maps.iter_mut().find(|m| m.plan.name == rt.map) {
            m.engine.remove_path(rt.id);
            m.plan.paths.retain(|p| p.decl.name != name);
        }
        info!(path = %name, map = %rt.map, "hotplug: path removed");
    }

    async fn hotplug_add(self: &Arc<Self>, name: &str) {
        let Some(opts) = self.opts.scsi.clone() else {
            return;
        };
        let n = name.to_string();
        let dev =
            match tokio::task::spawn_blocking(move || discovery::discover_block(&opts, &n)).await {
                Ok(Ok(Some(d))) => d,
                Ok(Ok(None)) | Err(_) => return,
                Ok(Err(e)) => {
                    warn!("hotplug: {e}");
                    return;
                }
            };
        let mut st = self.state.lock().await;
        let mut dev = dev;
        let cfg = st.config.clone();
        tokio::task::block_in_place(|| {
            discovery::apply_callouts(&cfg, std::slice::from_mut(&mut dev))
        });
        if let Some(old) = st.paths.get(name) {
            let same = st
                .maps
                .iter()
                .find(|m| m.plan.name == old.map)
                .is_some_and(|m| m.plan.wwid == dev.wwid);
            if same {
                return;
            }
            // Same name, another LUN: the old path goes first.
            self.remove_path_locked(&mut st, name);
        }
        let cfg = st.config.clone();
        let friendly = bindings::friendly_names(&cfg);
        let (plans, skipped) = assemble::plan_with(&cfg, &friendly, std::slice::from_ref(&dev));
        let found = plans.into_iter().find_map(|m| {
            let p = m.paths.iter().find(|p| p.decl.name == name).cloned();
            p.map(|p| (m, p))
        });
        let Some((mut mplan, pplan)) = found else {
            let why = skipped
                .iter()
                .find(|s| s.path == name)
                .map_or("not used".to_string(), |s| s.reason.clone());
            info!(path = %name, "hotplug: not used: {why}");
            return;
        };
        match st.maps.iter().position(|m| m.plan.wwid == pplan.decl.wwid) {
            Some(idx) => {
                let dev = Arc::new(open_path(&pplan));
                let timeout = checker_timeout(&pplan.settings, &dev);
                let CheckResult { state, message } =
                    PathChecker::new(dev.clone(), pplan.settings.path_checker.value)
                        .check(timeout)
                        .await;
                let reason = (!state.is_usable()).then_some(message);
                let path =
                    ModelPath::new_checked(pplan.info.clone(), state, reason, self.clock.now());
                let engine = st.maps[idx].engine.clone();
                let id = engine.add_path(path, dev.clone());
                let checker = spawn_checker(self.clone(), engine, id, &pplan, dev.clone());
                let map = st.maps[idx].plan.name.clone();
                info!(path = %name, map = %map, state = %state, "hotplug: path added");
                st.paths.insert(
                    name.to_string(),
                    PathRt {
                        map,
                        id,
                        dev,
                        settings: pplan.settings.clone(),
                        checker,
                    },
                );
                st.maps[idx].plan.paths.push(pplan);
            }
            None => {
                mplan.paths.retain(|p| p.decl.name == name);
                if let Some(m) = self.start_map(&mut st, mplan).await {
                    info!(path = %name, map = %m.plan.name, "hotplug: new map");
                    st.maps.push(m);
                    self.publish_exports(&st);
                }
            }
        }
    }

    /// The SCSI disks to use as paths (none unless enabled in
    /// [`Options::scsi`]); devices that cannot be read are logged.
    async fn discover_scsi(&self) -> Vec<ScsiDevice> {
        let Some(opts) = self.opts.scsi.clone() else {
            return Vec::new();
        };
        let found = tokio::task::spawn_blocking(move || discovery::discover(&opts))
            .await
            .unwrap_or_default();
        for e in &found.errors {
            warn!("{e}");
        }
        info!(devices = found.devices.len(), "SCSI discovery");
        found.devices
    }

    fn stop_map(&self, st: &mut State, old: MapRt) {
        info!(map = %old.plan.name, "stopping map");
        for p in &old.plan.paths {
            if let Some(rt) = st.paths.remove(&p.decl.name) {
                rt.checker.abort();
            }
        }
        old.engine.shutdown();
    }

    /// Opens a map's paths, runs their first checks and starts the engine.
    async fn start_map(self: &Arc<Self>, st: &mut State, plan: MapPlan) -> Option<MapRt> {
        let now = self.clock.now();
        let mut devs = Vec::new();
        let mut model_paths = Vec::new();
        let mut size: Option<u64> = None;
        // First checks of all paths at once: a hung path costs one
        // checker_timeout, not one per path.
        let checks: Vec<_> = plan
            .paths
            .iter()
            .map(|p| {
                let dev = Arc::new(open_path(p));
                let timeout = checker_timeout(&p.settings, &dev);
                let checker = PathChecker::new(dev.clone(), p.settings.path_checker.value);
                (
                    dev,
                    tokio::spawn(async move { checker.check(timeout).await }),
                )
            })
            .collect();
        for (p, (dev, check)) in plan.paths.iter().zip(checks) {
            let CheckResult { state, message } = check.await.unwrap_or_else(|e| CheckResult {
                state: CheckState::Down,
                message: format!("first check failed: {e}"),
            });
            match dev.size() {
                Ok(s) => match size {
                    None => size = Some(s),
                    Some(prev) if prev != s => {
                        warn!(map = %plan.name, path = %p.decl.name, "path size {s} differs from {prev}; using the smaller");
                        size = Some(prev.min(s));
                    }
                    _ => {}
                },
                Err(e) => warn!(map = %plan.name, path = %p.decl.name, "cannot read size: {e}"),
            }
            let reason = (!state.is_usable()).then(|| message.clone());
            info!(map = %plan.name, path = %p.decl.name, transport = %dev.describe(), "path {}{}", state, reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default());
            model_paths.push(ModelPath::new_checked(p.info.clone(), state, reason, now));
            devs.push(dev);
        }
        warn_separate_caches(&plan);
        let Some(size) = size else {
            error!(map = %plan.name, "no path could tell the size of the LUN; map not exported (it is retried on reconfigure)");
            return None;
        };
        let (map, events) = Map::new(
            plan.name.clone(),
            plan.wwid.clone(),
            model_paths,
            plan.policy.clone(),
            now,
        );
        for e in &events {
            tracing::debug!(map = %plan.name, "{e:?}");
        }
        let info = MapInfo {
            name: plan.name.clone(),
            wwid: plan.wwid.clone(),
            vendor: plan.vendor.clone(),
            product: plan.product.clone(),
            size,
        };
        let engine = MapEngine::start(info, map, devs.clone(), self.clock.clone());
        engine.set_io_timeout(io_timeout(&st.config));
        info!(map = %plan.name, wwid = %plan.wwid, size, paths = plan.paths.len(), policy = %plan.policy.grouping, selector = %plan.policy.selector, rr_min_io = plan.policy.repeat, "map assembled");
        for (i, (p, dev)) in plan.paths.iter().zip(devs).enumerate() {
            let id = PathId::new(i);
            let checker = spawn_checker(self.clone(), engine.clone(), id, p, dev.clone());
            st.paths.insert(
                p.decl.name.clone(),
                PathRt {
                    map: plan.name.clone(),
                    id,
                    dev,
                    settings: p.settings.clone(),
                    checker,
                },
            );
        }
        Some(MapRt { engine, plan })
    }

    /// Sets a fault on a path (`fault path NAME SPEC`).
    pub async fn set_fault(&self, path: &str, spec: &str) -> Result<(), String> {
        let dev = {
            let st = self.state.lock().await;
            st.paths
                .get(path)
                .map(|p| p.dev.clone())
                .ok_or_else(|| format!("no path named {path:?}"))?
        };
        for f in FaultSpec::parse_list(spec).map_err(|e| e.to_string())? {
            dev.faults.apply(f);
        }
        Ok(())
    }

    /// The topology in `multipath -ll` shape.
    pub async fn topology_text(&self) -> String {
        show::topology_text(&self.snapshots().await)
    }

    pub async fn snapshots(&self) -> Vec<MapSnapshot> {
        self.engines()
            .await
            .iter()
            .map(MapEngine::snapshot)
            .collect()
    }

    async fn find_path(
        &self,
        name: &str,
    ) -> Result<(MapEngine, PathId, Arc<PathDev>, PathSettings), Response> {
        let st = self.state.lock().await;
        let Some(p) = st.paths.get(name) else {
            let known: Vec<&str> = st.paths.keys().map(String::as_str).collect();
            return Err(Response::error(format!(
                "no path named {name:?} (paths: {})",
                known.join(", ")
            )));
        };
        let Some(m) = st.maps.iter().find(|m| m.plan.name == p.map) else {
            return Err(Response::error(format!("path {name:?} has no running map")));
        };
        Ok((m.engine.clone(), p.id, p.dev.clone(), p.settings.clone()))
    }
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

fn same_paths(a: &MapPlan, b: &MapPlan) -> bool {
    a.paths.len() == b.paths.len() && a.paths.iter().zip(&b.paths).all(|(x, y)| x.decl == y.decl)
}

/// The transport a declared path names. Config validation guarantees the
/// keys each transport needs; a missing one still yields a path that is
/// down with the reason, never a panic.
fn open_path(p: &PathPlan) -> PathDev {
    let d = &p.decl;
    let transport = match (&p.scsi, d.transport.as_str()) {
        (Some(s), _) => Transport::scsi(s.target()),
        (None, "nbd") => match d.extra.get("uri").map(|(u, _)| NbdUri::parse(u)) {
            Some(Ok(uri)) => Transport::Nbd(NbdTransport::new(
                uri,
                configured_checker_timeout(&p.settings).unwrap_or(DEFAULT_CHECKER_TIMEOUT),
            )),
            _ => Transport::file(PathBuf::new()),
        },
        (None, _) => Transport::file(d.file.clone().unwrap_or_default()),
    };
    let dev = PathDev::new(transport);
    // Faults declared in the config (validated at load) are set from the start.
    if let Some((spec, _)) = d.extra.get("fault") {
        for f in FaultSpec::parse_list(spec).unwrap_or_default() {
            dev.faults.apply(f);
        }
    }
    dev
}

/// `file` paths on different block-device nodes of one LUN read through
/// separate page caches, so a read on one may miss a write made on the
/// other. Say so loudly: such LUNs belong to `--scsi` discovery (O_DIRECT).
fn warn_separate_caches(plan: &MapPlan) {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut nodes: Vec<(u64, &str)> = Vec::new();
    for p in &plan.paths {
        if p.scsi.is_some() || p.decl.transport != "file" {
            continue;
        }
        if let Some(md) = p.decl.file.as_ref().and_then(|f| std::fs::metadata(f).ok()) {
            if md.file_type().is_block_device() && !nodes.iter().any(|(r, _)| *r == md.rdev()) {
                nodes.push((md.rdev(), &p.decl.name));
            }
        }
    }
    if nodes.len() > 1 {
        let names: Vec<&str> = nodes.iter().map(|(_, n)| *n).collect();
        warn!(map = %plan.name, "file paths {} are different block devices with separate page caches: reads can miss writes made through another path; use `umpath daemon --scsi` (O_DIRECT SCSI paths) for such LUNs", names.join(", "));
    }
}

/// io_timeout from the config (`None`: no limit).
fn io_timeout(cfg: &Config) -> Option<Duration> {
    match cfg.io_timeout() {
        0 => None,
        s => Some(Duration::from_secs(u64::from(s))),
    }
}

/// `checker_timeout` as the configuration sets it, if it does.
fn configured_checker_timeout(s: &PathSettings) -> Option<Duration> {
    s.checker_timeout
        .value
        .map(|secs| Duration::from_secs(u64::from(secs.max(1))))
}

/// `checker_timeout` from the configuration, else the device's own (a
/// SCSI disk's sysfs `timeout`, as multipathd uses), else 30 s.
fn checker_timeout(s: &PathSettings, dev: &PathDev) -> Duration {
    configured_checker_timeout(s)
        .or_else(|| dev.transport.default_timeout())
        .unwrap_or(DEFAULT_CHECKER_TIMEOUT)
}

/// One task per path: check every polling_interval (healthy paths back
/// off up to max_polling_interval, like multipathd), report results to the
/// engine, reopen a path whose device came back.
fn spawn_checker(
    daemon: Arc<Daemon>,
    engine: MapEngine,
    id: PathId,
    p: &PathPlan,
    dev: Arc<PathDev>,
) -> JoinHandle<()> {
    let span = info_span!("path", map = %engine.info().name, path = %p.decl.name);
    let checker = PathChecker::new(dev.clone(), p.settings.path_checker.value);
    let name = p.decl.name.clone();
    let mut shutdown = daemon.shutdown_tx.subscribe();
    tokio::spawn(
        async move {
            let mut interval_s = 0u64;
            let mut last = CheckState::Unchecked;
            loop {
                let (min_s, max_s, timeout) = {
                    let st = daemon.state.lock().await;
                    let settings = st.paths.get(&name).map(|rt| rt.settings.clone());
                    let min = u64::from(st.config.polling_interval().max(1));
                    let max = u64::from(
                        st.config
                            .max_polling_interval()
                            .max(st.config.polling_interval())
                            .max(1),
                    );
                    (
                        min,
                        max,
                        settings
                            .as_ref()
                            .map_or(DEFAULT_CHECKER_TIMEOUT, |s| checker_timeout(s, &dev)),
                    )
                };
                // A path failed by IO errors is checked at the shortest
                // interval, so it comes back as soon as it works.
                if !engine.path_is_active(id) {
                    interval_s = min_s;
                }
                interval_s = if interval_s == 0 {
                    min_s
                } else {
                    interval_s.clamp(min_s, max_s)
                };
                // Sleep in polling_interval slices: a path that IO errors
                // fail meanwhile is checked at the next slice.
                let mut slept = 0;
                let mut stop = false;
                while slept < interval_s {
                    tokio::select! {
                        _ = shutdown.changed() => { stop = true; break; }
                        _ = tokio::time::sleep(Duration::from_secs(min_s)) => {}
                    }
                    slept += min_s;
                    if !engine.path_is_active(id) {
                        break;
                    }
                }
                if stop {
                    break;
                }
                // A healthy check also (re)opens the device if needed.
                let CheckResult { state, message } = checker.check(timeout).await;
                engine.check_result(id, state, &message);
                // Healthy and unchanged: check less often, up to the max.
                interval_s = if state == CheckState::Up && last == CheckState::Up {
                    (interval_s * 2).min(max_s)
                } else {
                    min_s
                };
                last = state;
            }
        }
        .instrument(span),
    )
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
                        daemon.hotplug(ev).await;
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

impl control::server::Handler for Daemon {
    async fn handle(self: Arc<Self>, cmd: Command) -> Response {
        match cmd {
            Command::Show { what, json } => {
                let snaps = self.snapshots().await;
                match (what, json) {
                    (ShowWhat::Paths, true) => Response::json(show::paths_json(&snaps)),
                    (ShowWhat::Paths, false) => Response::text(show::paths_text(&snaps)),
                    (ShowWhat::Maps, true) | (ShowWhat::Topology, true) => {
                        Response::json(show::maps_json(&snaps))
                    }
                    (ShowWhat::Maps, false) => Response::text(show::maps_text(&snaps)),
                    (ShowWhat::Topology, false) => Response::text(show::topology_text(&snaps)),
                    (ShowWhat::Config, true) => {
                        // Each path's effective settings with their origins.
                        let st = self.state.lock().await;
                        let mut names: Vec<&String> = st.paths.keys().collect();
                        names.sort();
                        let v: serde_json::Map<String, serde_json::Value> = names
                            .iter()
                            .filter_map(|n| {
                                let d = st.config.path(n)?;
                                Some(((*n).clone(), st.config.explain_json(&d.identity())))
                            })
                            .collect();
                        Response::json(serde_json::Value::Object(v))
                    }
                    (ShowWhat::Config, false) => {
                        // The merged configuration, shaped like `multipath -t`.
                        let st = self.state.lock().await;
                        Response::text(st.config.render_multipath_t())
                    }
                    (ShowWhat::Status, _) => {
                        let st = self.state.lock().await;
                        Response::json(json!({
                            "config": self.opts.config.display().to_string(),
                            "maps": st.maps.len(),
                            "paths": st.paths.len(),
                            "uptime_ms": self.clock.now().0,
                        }))
                    }
                }
            }
            Command::ShowPathConfig { path, json } => match self.find_path(&path).await {
                Err(r) => r,
                Ok((engine, id, _, _)) => {
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
                    let st = self.state.lock().await;
                    if json {
                        Response::json(st.config.explain_json(&ident))
                    } else {
                        Response::text(st.config.explain_text(&ident))
                    }
                }
            },
            Command::FailPath { path } => {
                match self.find_path(&path).await {
                    Err(r) => r,
                    Ok((engine, id, _, _)) => {
                        engine.admin_fail(id);
                        Response::text(format!("ok: path {path} failed (it stays failed until `reinstate path {path}`)\n"))
                    }
                }
            }
            Command::ReinstatePath { path } => match self.find_path(&path).await {
                Err(r) => r,
                Ok((engine, id, _, _)) => {
                    engine.admin_reinstate(id);
                    Response::text(format!("ok: path {path} reinstated\n"))
                }
            },
            Command::FaultPath { path, spec } => match self.find_path(&path).await {
                Err(r) => r,
                Ok((_, _, dev, _)) => match FaultSpec::parse(&spec) {
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
                let engines = self.engines().await;
                match engines.iter().find(|e| e.info().name == map) {
                    None => Response::error(format!("no map named {map:?}")),
                    Some(e) => {
                        if e.switch_group(group - 1) {
                            Response::text(format!("ok: map {map} switched to group {group}\n"))
                        } else {
                            Response::error(format!("map {map}: group {group} does not exist, has no usable path, or is already active"))
                        }
                    }
                }
            }
            Command::Reconfigure => match self.reconfigure().await {
                Ok(summary) => Response::text(format!("ok: {summary}\n")),
                Err(e) => Response::error(e),
            },
            Command::Shutdown => {
                self.shutdown();
                Response::text("ok: shutting down\n")
            }
        }
    }
}
