//! The supervisor: the one owner of "what runs". It holds the running
//! maps ([`MapRuntime`]s) and the maps still waiting for a path, and takes
//! messages: reconfigure, kernel uevents, a waiting map that became ready.
//! It handles one message at a time, so reconfigures and hotplug never
//! race; slow work (loading the files, discovery, callouts, opening
//! devices and first checks) runs on other tasks and threads while it
//! waits, and committing a change is a short synchronous step. After
//! every commit it publishes a [`Published`] snapshot, which `show`, the
//! control commands that act on one path, the tick and the NBD server
//! read without ever waiting for the supervisor.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

use super::assemble::{self, MapPlan, PathPlan};
use super::hotplug::Uevent;
use super::kernel::{Devices, KernelSettings};
use super::lifecycle::{self, First, Polling, Prepared, TaskGuard, JOIN_WAIT};
use super::reconcile::{self, MapChange, Running, Summary};
use super::runtime::{self, Env, MapRuntime};
use super::{bindings, Exports, Options};
use crate::config::{self, Config};
use crate::discovery::{self, ScsiDevice};
use crate::engine::MapEngine;
use crate::export::Export;
use crate::model::PathId;
use crate::transport::PathDev;

/// What the supervisor is asked to do.
pub enum Msg {
    /// Re-read the configuration; the answer says what changed.
    Reconfigure(oneshot::Sender<Result<String, String>>),
    /// A kernel uevent for a SCSI disk.
    Uevent(Uevent),
    /// A waiting map has a path that told the LUN's size.
    MapReady {
        wwid: String,
        gen: u64,
        prepared: Vec<Prepared>,
    },
    /// Are you there? Answered at once, also while a slow message is
    /// being handled (for at most [`BUSY_GRACE`]); the systemd watchdog is
    /// fed only on an answer.
    Ping(oneshot::Sender<()>),
    /// `attach MAP [/dev/nbdN]`: give the map a kernel NBD device.
    Attach {
        map: String,
        device: Option<u32>,
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// `detach MAP [--force]`: flush and disconnect its device.
    Detach {
        map: String,
        force: bool,
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// `resize map NAME` changed a map's size: its kernel NBD device
    /// gets the new size too.
    KernelResize {
        map: String,
        size: u64,
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// `add path NAME`.
    AddPath {
        path: String,
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// `del path NAME`.
    DelPath {
        path: String,
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// `shutdown --detach`: detach every device (then the daemon stops).
    DetachAll(oneshot::Sender<Vec<String>>),
    /// A connection of a kernel NBD device ended unasked.
    KernelConnLost { map: String, gen: u64 },
    /// An `iscsi` path that could not log in at planning has now.
    IscsiUp(assemble::IscsiLogin),
}

/// How long the supervisor keeps answering pings while it handles one
/// message. Handling is bounded (path preparation waits at most
/// `JOIN_WAIT`), so a message still in hand after this long means the
/// loop is stuck (a callout or a discovery that never returns): the
/// watchdog starves and systemd restarts the daemon.
pub const BUSY_GRACE: Duration = Duration::from_secs(300);

/// A path as the published snapshot shows it.
#[derive(Clone)]
pub struct PublishedPath {
    pub name: String,
    pub id: PathId,
    pub dev: Arc<PathDev>,
    /// `H:C:T:L` and `major:minor` of a discovered SCSI disk.
    pub scsi: Option<(String, String)>,
    /// The path's settings as they are now (checker, prio, ...).
    pub settings: Arc<arc_swap::ArcSwap<crate::config::PathSettings>>,
}

/// A running map as the published snapshot shows it.
#[derive(Clone)]
pub struct PublishedMap {
    pub engine: MapEngine,
    pub paths: Vec<PublishedPath>,
    /// The policy the configuration gives the map (the live one may
    /// differ: `disablequeueing`).
    pub configured: crate::model::MapPolicy,
}

/// A map waiting for a path that can tell its size.
#[derive(Clone, Debug)]
pub struct PendingView {
    pub name: String,
    pub wwid: String,
    pub paths: Vec<String>,
}

/// What is running, as of the last commit.
pub struct Published {
    pub config: Arc<Config>,
    pub maps: Vec<PublishedMap>,
    pub pending: Vec<PendingView>,
    /// Kernel NBD devices: map name → /dev/nbdN index.
    pub nbd_devices: std::collections::BTreeMap<String, u32>,
}

impl Published {
    pub fn empty(config: Arc<Config>) -> Published {
        Published {
            config,
            maps: Vec::new(),
            pending: Vec::new(),
            nbd_devices: Default::default(),
        }
    }

    /// The engine, id and device of the path called `name`.
    pub fn path(&self, name: &str) -> Option<(&MapEngine, &PublishedPath)> {
        self.maps.iter().find_map(|m| {
            m.paths
                .iter()
                .find(|p| p.name == name)
                .map(|p| (&m.engine, p))
        })
    }

    pub fn path_names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .maps
            .iter()
            .flat_map(|m| m.paths.iter().map(|p| p.name.as_str()))
            .collect();
        v.sort_unstable();
        v
    }
}

struct PendingMap {
    plan: MapPlan,
    gen: u64,
    _task: TaskGuard,
}

pub struct Supervisor {
    opts: Options,
    env: Env,
    config: Arc<Config>,
    maps: Vec<MapRuntime>,
    pending: Vec<PendingMap>,
    next_gen: u64,
    published: Arc<ArcSwap<Published>>,
    exports: Arc<Exports>,
    tx: mpsc::UnboundedSender<Msg>,
    kernel: Devices,
    /// [`BUSY_GRACE`]; shorter in tests.
    busy_grace: Duration,
    /// Retries the logins of `iscsi` paths that could not log in yet.
    iscsi_retry: Option<TaskGuard>,
}

/// The map plan and path plan of path `name` among `plans`, or why it is
/// not used (its `skipped` reason, else "not used").
fn planned_path(
    plans: Vec<MapPlan>,
    skipped: &[assemble::Skipped],
    name: &str,
) -> Result<(MapPlan, PathPlan), String> {
    plans
        .into_iter()
        .find_map(|m| {
            let p = m.paths.iter().find(|p| p.decl.name == name).cloned();
            p.map(|p| (m, p))
        })
        .ok_or_else(|| {
            skipped
                .iter()
                .find(|s| s.path == name)
                .map_or("not used".to_string(), |s| s.reason.clone())
        })
}

/// Where to discover SCSI disks: `--scsi`'s options, else the real
/// sysfs when the configuration says `umpath_scsi_discovery yes`; `None`:
/// declared paths only.
pub fn scsi_options(opts: &Options, cfg: &Config) -> Option<discovery::DiscoverOptions> {
    opts.scsi.clone().or_else(|| {
        cfg.scsi_discovery()
            .then(discovery::DiscoverOptions::default)
    })
}

/// io_timeout from the config (`None`: no limit).
fn io_timeout(cfg: &Config) -> Option<Duration> {
    match cfg.io_timeout() {
        0 => None,
        s => Some(Duration::from_secs(u64::from(s))),
    }
}

impl Supervisor {
    pub fn new(
        opts: Options,
        config: Arc<Config>,
        clock: crate::engine::Clock,
        shutdown: watch::Receiver<bool>,
        published: Arc<ArcSwap<Published>>,
        exports: Arc<Exports>,
        tx: mpsc::UnboundedSender<Msg>,
    ) -> Supervisor {
        let env = Env {
            clock,
            polling: Arc::new(ArcSwap::from_pointee(Polling::from_config(&config))),
            shutdown,
            io_timeout: io_timeout(&config),
        };
        let lost_tx = tx.clone();
        let kernel = Devices::new(
            &opts.control_socket,
            Arc::new(move |map, gen| {
                let _ = lost_tx.send(Msg::KernelConnLost { map, gen });
            }),
        );
        Supervisor {
            kernel,
            opts,
            env,
            config,
            maps: Vec::new(),
            pending: Vec::new(),
            next_gen: 1,
            published,
            exports,
            tx,
            busy_grace: BUSY_GRACE,
            iscsi_retry: None,
        }
    }

    /// Takes messages until shutdown; then hands the maps back for the
    /// stop sequence.
    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) -> Vec<MapRuntime> {
        let mut shutdown = self.env.shutdown.clone();
        // Messages that arrived while another one was handled.
        let mut backlog = std::collections::VecDeque::new();
        'messages: loop {
            if *shutdown.borrow_and_update() {
                break;
            }
            let msg = match backlog.pop_front() {
                Some(m) => m,
                None => tokio::select! {
                    biased;
                    _ = shutdown.changed() => break,
                    m = rx.recv() => match m { Some(m) => m, None => break },
                },
            };
            if let Msg::Ping(reply) = msg {
                let _ = reply.send(());
                continue;
            }
            // A reconfigure or a hotplug is abandoned if the daemon stops
            // while it prepares (nothing is committed yet then). Pings are
            // answered meanwhile, for BUSY_GRACE; other messages wait.
            let mut stop = self.env.shutdown.clone();
            let grace = self.busy_grace;
            let busy_until = tokio::time::Instant::now() + grace;
            let handling = self.handle(msg);
            tokio::pin!(handling);
            let mut answering = true;
            loop {
                tokio::select! {
                    biased;
                    _ = stop.changed() => break 'messages,
                    () = &mut handling => break,
                    () = tokio::time::sleep_until(busy_until), if answering => {
                        warn!(
                            "a message has been in hand for {} s; no longer answering watchdog pings",
                            grace.as_secs()
                        );
                        answering = false;
                    }
                    m = rx.recv(), if answering => match m {
                        Some(Msg::Ping(reply)) => { let _ = reply.send(()); }
                        Some(m) => backlog.push_back(m),
                        None => answering = false,
                    },
                }
            }
        }
        self.pending.clear();
        self.maps
    }

    async fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Reconfigure(reply) => {
                let r = self.reconfigure().await;
                if r.is_ok() {
                    let maps = self.running_exports();
                    let settings = KernelSettings::from_config(&self.config);
                    self.kernel.restore_orphans(&maps, settings).await;
                    self.attach_configured().await;
                    self.publish();
                }
                let _ = reply.send(r);
            }
            Msg::Uevent(ev) => self.hotplug(ev).await,
            Msg::Ping(reply) => {
                let _ = reply.send(());
            }
            Msg::MapReady {
                wwid,
                gen,
                prepared,
            } => {
                let Some(i) = self
                    .pending
                    .iter()
                    .position(|p| p.wwid_is(&wwid) && p.gen == gen)
                else {
                    return; // superseded by a reconfigure
                };
                let p = self.pending.remove(i);
                let Some(size) = lun_size(&p.plan, &prepared) else {
                    return;
                };
                // (Separate page caches were warned about when it began to wait.)
                info!(map = %p.plan.name, size, "a path told the LUN's size: exporting the map");
                self.maps
                    .push(MapRuntime::start(p.plan, prepared, size, &self.env));
                // Its device from before a restart first, then the config.
                let maps = self.running_exports();
                let settings = KernelSettings::from_config(&self.config);
                self.kernel.restore_orphans(&maps, settings).await;
                self.attach_configured().await;
                self.publish();
            }
            Msg::Attach { map, device, reply } => {
                let r = self.attach(&map, device).await;
                self.publish();
                let _ = reply.send(r.map(|i| format!("ok: map {map} is /dev/nbd{i}\n")));
            }
            Msg::Detach { map, force, reply } => {
                let r = self.kernel.detach(&map, force).await;
                self.publish();
                let _ = reply.send(r.map(|i| format!("ok: /dev/nbd{i} of map {map} detached\n")));
            }
            Msg::KernelConnLost { map, gen } => {
                let export = self
                    .maps
                    .iter()
                    .find(|m| m.plan.name == map)
                    .map(|m| Arc::new(m.engine.clone()) as Arc<dyn Export>);
                let settings = KernelSettings::from_config(&self.config);
                self.kernel.conn_lost(&map, gen, export, settings).await;
                self.publish();
            }
            Msg::AddPath { path, reply } => {
                let r = self.add_path(&path).await;
                let _ = reply.send(r);
            }
            Msg::DelPath { path, reply } => {
                let r = self.del_path(&path);
                let _ = reply.send(r);
            }
            Msg::KernelResize { map, size, reply } => {
                let r = self.kernel.resize(&map, size).await;
                let _ = reply.send(r);
            }
            Msg::DetachAll(reply) => {
                let errors = self.kernel.detach_all(false).await;
                self.publish();
                let _ = reply.send(errors);
            }
            Msg::IscsiUp(login) => self.iscsi_up(login).await,
        }
    }

    /// The logins of the running `iscsi` paths, to keep at a re-plan.
    fn known_iscsi(&self) -> Vec<assemble::IscsiLogin> {
        self.maps
            .iter()
            .flat_map(|m| m.plan.paths.iter())
            .filter_map(|p| {
                let t = p.iscsi.clone()?;
                Some(assemble::IscsiLogin {
                    name: p.decl.name.clone(),
                    keys: assemble::decl_keys(&p.decl),
                    lun: Ok(assemble::IscsiLun {
                        vendor: p.decl.vendor.clone(),
                        product: p.decl.product.clone(),
                        revision: p.decl.revision.clone(),
                        serial: p.decl.serial.clone(),
                        wwid: p.decl.wwid.clone(),
                        transport: t,
                    }),
                })
            })
            .collect()
    }

    /// An `iscsi` path logged in late: it joins its map (a new one if its
    /// WWID is new).
    async fn iscsi_up(&mut self, login: assemble::IscsiLogin) {
        let name = login.name.clone();
        if self.maps.iter().any(|m| m.paths.contains_key(&name)) {
            return;
        }
        let cfg = self.config.clone();
        let planned = tokio::task::spawn_blocking(move || {
            let friendly = bindings::friendly_names(&cfg);
            assemble::plan_found(&cfg, &friendly, &[], std::slice::from_ref(&login))
        })
        .await;
        let Ok((plans, skipped)) = planned else {
            return;
        };
        let (mplan, pplan) = match planned_path(plans, &skipped, &name) {
            Ok(x) => x,
            Err(why) => {
                info!(path = %name, "iSCSI path logged in but not used: {why}");
                return;
            }
        };
        let map = self.join_planned(mplan, pplan).await;
        info!(path = %name, map = %map, "iSCSI path logged in: joined its map");
        self.publish();
    }

    /// Running maps by name: (WWID, export).
    fn running_exports(&self) -> std::collections::BTreeMap<String, (String, Arc<dyn Export>)> {
        self.maps
            .iter()
            .map(|m| {
                (
                    m.plan.name.clone(),
                    (
                        m.plan.wwid.clone(),
                        Arc::new(m.engine.clone()) as Arc<dyn Export>,
                    ),
                )
            })
            .collect()
    }

    /// Attaches a running map to a kernel NBD device.
    async fn attach(&mut self, map: &str, device: Option<u32>) -> Result<u32, String> {
        let Some(rt) = self.maps.iter().find(|m| m.plan.name == map) else {
            return Err(if self.pending.iter().any(|p| p.plan.name == map) {
                format!("map {map} is waiting for a path that can tell its size; attach it once it runs")
            } else {
                format!("no map named {map:?}")
            });
        };
        let export: Arc<dyn Export> = Arc::new(rt.engine.clone());
        let wwid = rt.plan.wwid.clone();
        let settings = KernelSettings::from_config(&self.config);
        self.kernel
            .attach(map, &wwid, export, device, settings)
            .await
    }

    /// Attaches the running maps whose configuration asks for a device
    /// (`nbd_device`, `umpath_nbd_device`) and that have none.
    pub async fn attach_configured(&mut self) {
        let wanted: Vec<(String, Option<u32>)> = self
            .maps
            .iter()
            .filter(|m| !self.kernel.attached.contains_key(&m.plan.name))
            .filter_map(|m| match self.config.nbd_device(&m.plan.wwid) {
                config::NbdDevice::No => None,
                config::NbdDevice::Auto => Some((m.plan.name.clone(), None)),
                config::NbdDevice::Index(i) => Some((m.plan.name.clone(), Some(i))),
            })
            .collect();
        for (map, device) in wanted {
            if let Err(e) = self.attach(&map, device).await {
                error!(map = %map, "cannot attach the kernel NBD device the configuration asks for: {e}");
            }
        }
    }

    /// Hands the devices a previous daemon attached fresh connections
    /// (before READY), then attaches what the configuration asks for.
    pub async fn restore_kernel_devices(&mut self) {
        let maps = self.running_exports();
        let settings = KernelSettings::from_config(&self.config);
        self.kernel.restore(&maps, settings).await;
        self.attach_configured().await;
        self.publish();
    }

    /// Loads the configuration and brings the maps in line with it (used
    /// at start-up too). A bad file changes nothing.
    pub async fn reconfigure(&mut self) -> Result<String, String> {
        let path = self.opts.config.clone();
        let loaded = tokio::task::spawn_blocking(move || super::load_config(&path))
            .await
            .map_err(|e| format!("cannot load the configuration: {e}"))?;
        let cfg = match loaded {
            Ok(c) => Arc::new(c),
            Err(e) => {
                error!("reconfigure rejected, keeping the running configuration:\n{e}");
                return Err(format!(
                    "configuration rejected, the running one stays in force:\n{e}"
                ));
            }
        };
        for w in cfg.warnings() {
            warn!("{w}");
        }
        let summary = self.apply(cfg).await;
        info!("configuration applied: {}", summary.to_string().trim_end());
        Ok(summary.to_string())
    }

    /// Brings the running maps in line with `cfg`.
    pub async fn apply(&mut self, cfg: Arc<Config>) -> Summary {
        let (plans, not_logged_in) = self.plan(cfg.clone()).await;
        self.iscsi_retry = (!not_logged_in.is_empty()).then(|| {
            TaskGuard(tokio::spawn(super::iscsi::retry(
                not_logged_in,
                cfg.clone(),
                self.tx.clone(),
                self.env.polling.clone(),
            )))
        });
        let running: Vec<Running<'_>> = self
            .maps
            .iter()
            .map(|m| Running {
                name: &m.plan.name,
                wwid: &m.plan.wwid,
                plan: &m.plan,
            })
            .collect();
        let changes = reconcile::reconcile(&running, plans);
        // Slow part: open and first-check every new path, all at once.
        let edit_preps: Vec<_> = changes
            .edits
            .iter()
            .map(|(_, _, e)| tokio::spawn(lifecycle::prepare_all(e.add.clone(), JOIN_WAIT)))
            .collect();
        let start_preps: Vec<_> = changes
            .start
            .iter()
            .map(|m| tokio::spawn(lifecycle::prepare_all(m.paths.clone(), JOIN_WAIT)))
            .collect();
        let mut edit_prepared = Vec::new();
        for t in edit_preps {
            edit_prepared.push(t.await.unwrap_or_default());
        }
        let mut start_prepared = Vec::new();
        for t in start_preps {
            start_prepared.push(t.await.unwrap_or_default());
        }

        // Commit: short and synchronous.
        self.config = cfg.clone();
        self.env.polling.store(Arc::new(Polling::from_config(&cfg)));
        self.env.io_timeout = io_timeout(&cfg);
        let mut summary = Summary::default();
        for name in changes.stop {
            if let Some(i) = self.maps.iter().position(|m| m.plan.name == name) {
                self.maps.remove(i).stop();
                summary.changes.push((name, MapChange::Stopped));
            }
        }
        for ((name, plan, edit), prepared) in changes.edits.into_iter().zip(edit_prepared) {
            let Some(rt) = self.maps.iter_mut().find(|m| m.plan.name == name) else {
                continue;
            };
            let added: Vec<String> = prepared.iter().map(|p| p.plan.decl.name.clone()).collect();
            // New paths join before old ones leave: the map never goes
            // without a path in between.
            let replaced: Vec<&String> = edit.remove.iter().filter(|r| added.contains(r)).collect();
            for r in &replaced {
                rt.remove_path(r);
            }
            for p in prepared {
                rt.add_path(p, &self.env);
            }
            for r in &edit.remove {
                if !added.contains(r) {
                    rt.remove_path(r);
                }
            }
            rt.update(&plan, &edit.keep, &self.env);
            if edit.is_empty() {
                summary.unchanged += 1;
            } else {
                summary.changes.push((
                    name,
                    MapChange::Edited {
                        added,
                        removed: edit.remove.clone(),
                        policy: edit.policy_changed,
                    },
                ));
            }
        }
        // Waiting maps are planned afresh.
        self.pending.clear();
        for (plan, prepared) in changes.start.into_iter().zip(start_prepared) {
            let name = plan.name.clone();
            let change = self.start_or_wait(plan, prepared);
            summary.changes.push((name, change));
        }
        self.publish();
        summary
    }

    /// Starts a map if a path told its size, else keeps it waiting.
    fn start_or_wait(&mut self, plan: MapPlan, prepared: Vec<Prepared>) -> MapChange {
        let paths: Vec<String> = plan.paths.iter().map(|p| p.decl.name.clone()).collect();
        runtime::warn_separate_caches(&plan);
        match lun_size(&plan, &prepared) {
            Some(size) => {
                self.maps
                    .push(MapRuntime::start(plan, prepared, size, &self.env));
                MapChange::Started { paths }
            }
            None => {
                warn!(map = %plan.name, "no path can tell the size of the LUN yet; the map is exported as soon as one can (checked every polling_interval)");
                let gen = self.next_gen;
                self.next_gen += 1;
                let task = tokio::spawn(wait_for_size(
                    plan.wwid.clone(),
                    gen,
                    prepared,
                    self.env.polling.clone(),
                    self.tx.clone(),
                ));
                self.pending.push(PendingMap {
                    plan,
                    gen,
                    _task: TaskGuard(task),
                });
                MapChange::Pending { paths }
            }
        }
    }

    /// Discovery, iSCSI logins, callouts and grouping (blocking work, on
    /// its own thread); also the `iscsi` paths that did not log in.
    async fn plan(&self, cfg: Arc<Config>) -> (Vec<MapPlan>, Vec<String>) {
        let scsi = scsi_options(&self.opts, &cfg);
        let known = self.known_iscsi();
        let rt = tokio::runtime::Handle::current();
        let r = tokio::task::spawn_blocking(move || {
            let mut devs: Vec<ScsiDevice> = match &scsi {
                Some(opts) => {
                    let found = discovery::discover(opts);
                    for e in &found.errors {
                        warn!("{e}");
                    }
                    info!(devices = found.devices.len(), "SCSI discovery");
                    found.devices
                }
                None => Vec::new(),
            };
            discovery::apply_callouts(&cfg, &mut devs);
            let logins = super::iscsi::login_all(&cfg, &rt, &known);
            let failed: Vec<String> = logins
                .iter()
                .filter(|l| l.lun.is_err())
                .map(|l| l.name.clone())
                .collect();
            let friendly = bindings::friendly_names(&cfg);
            let (plans, skipped) = assemble::plan_found(&cfg, &friendly, &devs, &logins);
            for s in &skipped {
                info!(path = %s.path, "not used: {}", s.reason);
            }
            (plans, failed)
        })
        .await;
        r.unwrap_or_else(|e| {
            error!("planning maps failed: {e}");
            (Vec::new(), Vec::new())
        })
    }

    /// Acts on a SCSI disk's uevent: `add`/`change` (re)read the disk and
    /// join it to its map (a new map if its WWID is new); `remove` takes
    /// its path out. Running maps and their NBD connections stay up.
    async fn hotplug(&mut self, ev: Uevent) {
        match ev.action.as_str() {
            "add" | "change" => self.hotplug_add(&ev.devname).await,
            "remove" if self.remove_path(&ev.devname) => {
                info!(path = %ev.devname, "hotplug: path removed");
                self.publish();
            }
            _ => {}
        }
    }

    fn remove_path(&mut self, name: &str) -> bool {
        self.maps.iter_mut().any(|m| m.remove_path(name))
    }

    async fn hotplug_add(&mut self, name: &str) {
        let Some(opts) = scsi_options(&self.opts, &self.config) else {
            return;
        };
        let cfg = self.config.clone();
        let n = name.to_string();
        let found = tokio::task::spawn_blocking(move || {
            let mut dev = match discovery::discover_block(&opts, &n) {
                Ok(Some(d)) => d,
                Ok(None) => return Ok(None),
                Err(e) => return Err(e.to_string()),
            };
            discovery::apply_callouts(&cfg, std::slice::from_mut(&mut dev));
            let friendly = bindings::friendly_names(&cfg);
            Ok(Some((
                dev.clone(),
                assemble::plan_with(&cfg, &friendly, &[dev]),
            )))
        })
        .await;
        let (dev, (plans, skipped)) = match found {
            Ok(Ok(Some(x))) => x,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                warn!("hotplug: {e}");
                return;
            }
            Err(e) => {
                warn!("hotplug: {e}");
                return;
            }
        };
        if let Some(m) = self.maps.iter().find(|m| m.paths.contains_key(name)) {
            if m.plan.wwid == dev.wwid {
                return;
            }
            // Same name, another LUN: the old path goes first.
            self.remove_path(name);
        }
        let (mplan, pplan) = match planned_path(plans, &skipped, name) {
            Ok(x) => x,
            Err(why) => {
                info!(path = %name, "hotplug: not used: {why}");
                self.publish();
                return;
            }
        };
        self.join_planned(mplan, pplan).await;
        self.publish();
    }

    /// Prepares a planned path and joins it to its map by WWID: the
    /// running map, a waiting one (which starts over with it), or a new
    /// map of this path alone. Returns the map's name.
    async fn join_planned(&mut self, mut mplan: MapPlan, pplan: PathPlan) -> String {
        let name = pplan.decl.name.clone();
        let prepared = lifecycle::prepare(pplan.clone(), JOIN_WAIT).await;
        if let Some(rt) = self
            .maps
            .iter_mut()
            .find(|m| m.plan.wwid == pplan.decl.wwid)
        {
            rt.add_path(prepared, &self.env);
            rt.plan.name.clone()
        } else if let Some(i) = self
            .pending
            .iter()
            .position(|p| p.wwid_is(&pplan.decl.wwid))
        {
            // A waiting map: start over with the new path too.
            let mut plan = self.pending.remove(i).plan;
            let map = plan.name.clone();
            plan.paths.push(pplan);
            let paths = plan.paths.clone();
            let prepared = lifecycle::prepare_all(paths, JOIN_WAIT).await;
            self.start_or_wait(plan, prepared);
            map
        } else {
            mplan.paths.retain(|p| p.decl.name == name);
            info!(path = %name, map = %mplan.name, "new map");
            let map = mplan.name.clone();
            self.start_or_wait(mplan, vec![prepared]);
            map
        }
    }

    /// `add path NAME`: a path declared in the configuration that is not
    /// running (`del path`), or a SCSI disk (with SCSI discovery on),
    /// joins its map as hotplug would. The blacklist applies.
    async fn add_path(&mut self, name: &str) -> Result<String, String> {
        if let Some(m) = self.maps.iter().find(|m| m.paths.contains_key(name)) {
            return Err(format!("path {name} is already in map {}", m.plan.name));
        }
        if let Some(m) = self
            .pending
            .iter()
            .find(|m| m.plan.paths.iter().any(|p| p.decl.name == name))
        {
            return Err(format!(
                "path {name} is already in map {}, which waits for its size",
                m.plan.name
            ));
        }
        if self.config.path(name).is_none() {
            if scsi_options(&self.opts, &self.config).is_none() {
                return Err(format!(
                    "no path named {name:?} in the configuration's paths section \
                     (and SCSI discovery is off)"
                ));
            }
            self.hotplug_add(name).await;
            return match self.maps.iter().find(|m| m.paths.contains_key(name)) {
                Some(m) => Ok(format!("ok: path {name} added to map {}\n", m.plan.name)),
                None if self
                    .pending
                    .iter()
                    .any(|m| m.plan.paths.iter().any(|p| p.decl.name == name)) =>
                {
                    Ok(format!(
                        "ok: path {name} added; its map waits for its size\n"
                    ))
                }
                None => Err(format!(
                    "path {name} not added: not a usable SCSI disk, or blacklisted (see the log)"
                )),
            };
        }
        let cfg = self.config.clone();
        let rt = tokio::runtime::Handle::current();
        let path = name.to_string();
        let planned = tokio::task::spawn_blocking(move || {
            let friendly = bindings::friendly_names(&cfg);
            // An `iscsi` path logs in first: its map is its LUN's.
            let logins: Vec<assemble::IscsiLogin> = cfg
                .path(&path)
                .filter(|d| d.transport == "iscsi")
                .map(|d| super::iscsi::login(d, &rt, io_timeout(&cfg)))
                .into_iter()
                .collect();
            assemble::plan_found(&cfg, &friendly, &[], &logins)
        })
        .await
        .map_err(|e| format!("planning failed: {e}"))?;
        let (plans, skipped) = planned;
        let (mplan, pplan) = match planned_path(plans, &skipped, name) {
            Ok(x) => x,
            Err(why) => return Err(format!("path {name} not added: {why}")),
        };
        let map = self.join_planned(mplan, pplan).await;
        self.publish();
        info!(path = %name, map = %map, "path added (operator)");
        Ok(format!("ok: path {name} added to map {map}\n"))
    }

    /// `del path NAME`: the path leaves its map (IO moves to the others;
    /// the last path may go, and the map then follows no_path_retry).
    fn del_path(&mut self, name: &str) -> Result<String, String> {
        let Some(m) = self.maps.iter_mut().find(|m| m.paths.contains_key(name)) else {
            return Err(format!("no running path named {name:?}"));
        };
        let map = m.plan.name.clone();
        m.remove_path(name);
        self.publish();
        info!(path = %name, map = %map, "path deleted (operator)");
        Ok(format!(
            "ok: path {name} removed from map {map} (until `add path {name}` or a reconfigure)\n"
        ))
    }

    /// Makes the current maps what `show`, control commands and the NBD
    /// server see.
    fn publish(&self) {
        let maps: Vec<PublishedMap> = self
            .maps
            .iter()
            .map(|m| PublishedMap {
                engine: m.engine.clone(),
                paths: m
                    .paths
                    .iter()
                    .map(|(name, p)| PublishedPath {
                        name: name.clone(),
                        id: p.id,
                        dev: p.dev.clone(),
                        scsi: p
                            .plan
                            .scsi
                            .as_ref()
                            .map(|d| (d.hctl.clone(), d.dev.clone())),
                        settings: p.settings.clone(),
                    })
                    .collect(),
                configured: m.plan.policy.clone(),
            })
            .collect();
        let exports: Vec<Arc<dyn Export>> = maps
            .iter()
            .map(|m| Arc::new(m.engine.clone()) as Arc<dyn Export>)
            .collect();
        let pending = self
            .pending
            .iter()
            .map(|p| PendingView {
                name: p.plan.name.clone(),
                wwid: p.plan.wwid.clone(),
                paths: p.plan.paths.iter().map(|x| x.decl.name.clone()).collect(),
            })
            .collect();
        self.published.store(Arc::new(Published {
            config: self.config.clone(),
            maps,
            pending,
            nbd_devices: self.kernel.indexes(),
        }));
        self.exports.set(exports);
    }
}

impl PendingMap {
    fn wwid_is(&self, wwid: &str) -> bool {
        self.plan.wwid == wwid
    }
}

/// The LUN's size: the smallest any prepared path reported (a warning if
/// they differ); `None` if no path could tell.
fn lun_size(plan: &MapPlan, prepared: &[Prepared]) -> Option<u64> {
    let sizes: Vec<(u64, &str)> = prepared
        .iter()
        .filter_map(|p| p.size().map(|s| (s, p.plan.decl.name.as_str())))
        .collect();
    let min = sizes.iter().map(|(s, _)| *s).min()?;
    for (s, name) in &sizes {
        if *s != min {
            warn!(map = %plan.name, path = %name, "path size {s} differs from {min}; using the smaller");
        }
    }
    Some(min)
}

/// A waiting map's task: checks its paths every polling_interval until
/// one tells the LUN's size, then hands them to the supervisor. Each
/// path keeps its one checker, so a hung device never has more than one
/// check outstanding.
async fn wait_for_size(
    wwid: String,
    gen: u64,
    mut prepared: Vec<Prepared>,
    polling: Arc<ArcSwap<Polling>>,
    tx: mpsc::UnboundedSender<Msg>,
) {
    loop {
        let interval = polling.load().min;
        let started = tokio::time::Instant::now();
        for p in &mut prepared {
            let timeout = lifecycle::checker_timeout(&p.plan.settings, &p.dev);
            let task = match std::mem::replace(
                &mut p.first,
                First::Done(lifecycle::FirstCheck {
                    result: crate::checker::CheckResult::new(
                        crate::model::CheckState::Pending,
                        "checking",
                    ),
                    size: None,
                }),
            ) {
                First::Running(h) => h,
                First::Done(_) => tokio::spawn(lifecycle::first_check(p.checker.clone(), timeout)),
            };
            p.first = First::Running(task);
        }
        for p in &mut prepared {
            if let First::Running(h) = &mut p.first {
                let left = JOIN_WAIT.saturating_sub(started.elapsed());
                if let Ok(r) = tokio::time::timeout(left, &mut *h).await {
                    p.first = First::Done(r.unwrap_or_else(|e| lifecycle::FirstCheck {
                        result: crate::checker::CheckResult::new(
                            crate::model::CheckState::Down,
                            format!("check failed: {e}"),
                        ),
                        size: None,
                    }));
                }
            }
        }
        if prepared.iter().any(|p| p.size().is_some()) {
            let _ = tx.send(Msg::MapReady {
                wwid,
                gen,
                prepared,
            });
            return;
        }
        tokio::time::sleep(interval.saturating_sub(started.elapsed())).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn ping(tx: &mpsc::UnboundedSender<Msg>) -> bool {
        let (reply, answer) = oneshot::channel();
        tx.send(Msg::Ping(reply)).unwrap();
        tokio::time::timeout(Duration::from_millis(500), answer)
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Pings are answered when idle and while a message is in hand, until
    /// the grace runs out: then the watchdog starves.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pings_are_answered_until_a_message_is_stuck_too_long() {
        let dir = tempfile::tempdir().unwrap();
        // A path whose first check takes 3 s: the reconfigure waits
        // JOIN_WAIT (2 s) for it, longer than the grace.
        let img = dir.path().join("lun.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let conf = dir.path().join("multipath.conf");
        std::fs::write(
            &conf,
            format!(
                "paths {{\n path {{\n name p0\n transport file\n file {}\n fault \"delay 3000 check\"\n \
                 vendor \"OSNEXUS\"\n product \"QUANTASTOR\"\n wwid \"36000c29abcdef001\"\n }}\n}}\n",
                img.display()
            ),
        )
        .unwrap();
        let cfg = Arc::new(Config::default());
        let (stop, shutdown) = watch::channel(false);
        let (tx, rx) = mpsc::unbounded_channel();
        let opts = Options {
            config: conf.clone(),
            nbd_socket: None,
            nbd_listen: None,
            control_socket: dir.path().join("c.sock"),
            scsi: None,
            ..Options::default()
        };
        let mut sup = Supervisor::new(
            opts,
            cfg.clone(),
            crate::engine::Clock::new(),
            shutdown,
            Arc::new(ArcSwap::from_pointee(Published::empty(cfg))),
            Arc::new(Exports::default()),
            tx.clone(),
        );
        sup.busy_grace = Duration::from_millis(300);
        let task = tokio::spawn(sup.run(rx));
        assert!(ping(&tx).await, "idle: answered");
        let t0 = tokio::time::Instant::now();
        let (reply, mut answer) = oneshot::channel();
        tx.send(Msg::Reconfigure(reply)).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(ping(&tx).await, "busy within the grace: answered");
        tokio::time::sleep_until(t0 + Duration::from_millis(500)).await;
        assert!(!ping(&tx).await, "in hand past the grace: not answered");
        assert!(
            answer.try_recv().is_err(),
            "the reconfigure is still at work"
        );
        let r = tokio::time::timeout(Duration::from_secs(5), answer).await;
        assert!(matches!(r, Ok(Ok(Ok(_)))), "{r:?}");
        assert!(ping(&tx).await, "answered again");
        stop.send(true).unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
}
