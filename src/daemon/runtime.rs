//! A map at work: its engine, its paths' devices, checker tasks and
//! settings. Owned by the supervisor; nothing else holds it. Every
//! method is short and synchronous (the slow part of a path's life,
//! [`super::lifecycle::prepare`], happens before it gets here), so the
//! supervisor never holds anything across an await.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tracing::{info, warn};

use super::assemble::{MapPlan, PathPlan};
use super::lifecycle::{self, CheckerCtx, First, Polling, Prepared, TaskGuard};
use crate::config::PathSettings;
use crate::engine::{Clock, MapEngine, MapInfo};
use crate::model::{DmState, Map, Path as ModelPath, PathId, Time};
use crate::transport::PathDev;

/// A path in a running map.
pub struct PathRuntime {
    pub id: PathId,
    pub plan: PathPlan,
    pub dev: Arc<PathDev>,
    pub settings: Arc<ArcSwap<PathSettings>>,
    _checker: TaskGuard,
}

/// A running map.
pub struct MapRuntime {
    pub engine: MapEngine,
    pub plan: MapPlan,
    pub paths: BTreeMap<String, PathRuntime>,
}

/// What the runtimes share with the supervisor.
#[derive(Clone)]
pub struct Env {
    pub clock: Clock,
    pub polling: Arc<ArcSwap<Polling>>,
    pub shutdown: watch::Receiver<bool>,
    pub io_timeout: Option<std::time::Duration>,
}

/// The model path a prepared path joins as: failed while its first check
/// has not said it works.
fn model_path(p: &Prepared, now: Time) -> ModelPath {
    let (state, reason) = p.join_state();
    let mut path = ModelPath::new_checked(p.plan.info.clone(), state, reason.clone(), now);
    if !state.is_usable() && path.dm == DmState::Active {
        path.dm = DmState::Failed;
        path.reason = reason;
    }
    path
}

impl MapRuntime {
    /// Starts a map from prepared paths; `size` is the LUN's size (the
    /// smallest any path reported).
    pub fn start(plan: MapPlan, prepared: Vec<Prepared>, size: u64, env: &Env) -> MapRuntime {
        let now = env.clock.now();
        let model_paths: Vec<ModelPath> = prepared.iter().map(|p| model_path(p, now)).collect();
        for (p, m) in prepared.iter().zip(&model_paths) {
            let reason = m
                .reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default();
            info!(map = %plan.name, path = %p.plan.decl.name, transport = %p.dev.describe(), "path {}{reason}", m.check);
        }
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
        let devs: Vec<Arc<PathDev>> = prepared.iter().map(|p| p.dev.clone()).collect();
        let engine = MapEngine::start(info, map, devs, env.clock.clone());
        engine.set_io_timeout(env.io_timeout);
        info!(map = %plan.name, wwid = %plan.wwid, size, paths = prepared.len(), policy = %plan.policy.grouping, selector = %plan.policy.selector, rr_min_io = plan.policy.repeat, "map assembled");
        let mut rt = MapRuntime {
            engine,
            plan: MapPlan {
                paths: Vec::new(),
                ..plan
            },
            paths: BTreeMap::new(),
        };
        for (i, p) in prepared.into_iter().enumerate() {
            let id = PathId::new(i);
            rt.track(id, p, env);
        }
        rt
    }

    /// Starts the checker of a path that is in the engine as `id`.
    fn track(&mut self, id: PathId, p: Prepared, env: &Env) {
        let Prepared {
            plan,
            dev,
            checker,
            first,
        } = p;
        let settings = Arc::new(ArcSwap::from_pointee(plan.settings.clone()));
        let running = match first {
            First::Running(h) => Some(h),
            First::Done(_) => None,
        };
        let guard = lifecycle::spawn_checker(
            CheckerCtx {
                engine: self.engine.clone(),
                id,
                name: plan.decl.name.clone(),
                checker,
                settings: settings.clone(),
                polling: env.polling.clone(),
                shutdown: env.shutdown.clone(),
                facts: lifecycle::static_facts(&plan),
            },
            running,
        );
        self.plan.paths.push(plan.clone());
        self.paths.insert(
            plan.decl.name.clone(),
            PathRuntime {
                id,
                plan,
                dev,
                settings,
                _checker: guard,
            },
        );
    }

    /// A prepared path joins the live map: its IO threads start, it is
    /// grouped at once, and its checker takes over.
    pub fn add_path(&mut self, p: Prepared, env: &Env) {
        let now = env.clock.now();
        let path = model_path(&p, now);
        let name = p.plan.decl.name.clone();
        let state = path.check;
        let id = self.engine.add_path(path, p.dev.clone());
        info!(map = %self.plan.name, path = %name, state = %state, "path joined");
        self.track(id, p, env);
    }

    /// A path leaves the live map: IO in flight on it finishes or fails
    /// over as usual; its checker stops; an injected hang is released so
    /// nothing stays stuck on a device nobody uses.
    pub fn remove_path(&mut self, name: &str) -> bool {
        let Some(rt) = self.paths.remove(name) else {
            return false;
        };
        self.engine.remove_path(rt.id);
        rt.dev.faults.clear();
        self.plan.paths.retain(|p| p.decl.name != name);
        info!(map = %self.plan.name, path = %name, "path left");
        true
    }

    /// New settings for paths that stay, and the map's new policy.
    pub fn update(&mut self, plan: &MapPlan, keep: &[PathPlan], env: &Env) {
        for k in keep {
            if let Some(rt) = self.paths.get_mut(&k.decl.name) {
                if **rt.settings.load() != k.settings {
                    rt.settings.store(Arc::new(k.settings.clone()));
                }
                rt.plan = k.clone();
            }
            if let Some(p) = self
                .plan
                .paths
                .iter_mut()
                .find(|p| p.decl.name == k.decl.name)
            {
                *p = k.clone();
            }
        }
        if self.plan.policy != plan.policy {
            self.engine.reconfigure(plan.policy.clone());
            self.plan.policy = plan.policy.clone();
        } else if self.engine.snapshot().map.policy().no_path_retry != plan.policy.no_path_retry {
            // `disablequeueing` lasts until a reconfigure.
            self.engine.set_no_path_retry(plan.policy.no_path_retry);
        }
        self.engine.set_io_timeout(env.io_timeout);
    }

    /// The map leaves: held and new IO fail, in-flight IO completes, and
    /// its clients are disconnected once answered. Checkers stop.
    pub fn stop(self) {
        info!(map = %self.plan.name, "stopping map");
        self.engine.close();
        for rt in self.paths.values() {
            rt.dev.faults.clear();
        }
    }

    /// Path devices, for the flush at shutdown.
    pub fn devs(&self) -> impl Iterator<Item = &Arc<PathDev>> {
        self.paths.values().map(|p| &p.dev)
    }
}

/// Warn when `file` paths of one map are different block devices.
pub fn warn_separate_caches(plan: &MapPlan) {
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
