//! One path lifecycle, used alike by start-up, reconfigure and hotplug:
//!
//! ```text
//!  prepare ──▶ join ──▶ check (every polling_interval; healthy paths back
//!  (open the     │       off up to max_polling_interval) ──┐
//!   device, first│       a good check reopens the device   │
//!   check, size) │       (revalidate) and reinstates       │
//!                ▼                                          │
//!               leave ◀── reconfigure / uevent `remove` ────┘
//! ```
//!
//! [`prepare`] does the slow work (opening, the first check, asking the
//! size) on its own tasks, never under a lock. A first check that has not
//! answered within [`JOIN_WAIT`] does not hold up the join: the path joins
//! failed ("first check still running") and its checker task picks the
//! check up where it is. [`spawn_checker`] runs a path's checks for as
//! long as the path is in its map; it reads its settings from a cell the
//! supervisor swaps on reconfigure, and takes no lock.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, info_span, warn, Instrument};

use super::assemble::PathPlan;
use crate::checker::{CheckResult, PathChecker};
use crate::config::PathSettings;
use crate::engine::MapEngine;
use crate::model::{CheckState, PathId};
use crate::nbd::uri::NbdUri;
use crate::policy::shaky::{Change, PathHealth, Standing, Verdict};
use crate::prio::{PathFacts, Prioritizer};
use crate::transport::fault::FaultSpec;
use crate::transport::nbd::NbdTransport;
use crate::transport::{PathDev, Transport};
use crate::units::{Prio, Time};

/// Default check timeout when neither the config nor the device says.
pub const DEFAULT_CHECKER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a join waits for a path's first check before the path joins
/// failed and the check goes on in its checker task.
pub const JOIN_WAIT: Duration = Duration::from_secs(2);

/// How often paths are checked; daemon-wide, swapped on reconfigure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Polling {
    /// `polling_interval`: failed and changing paths.
    pub min: Duration,
    /// `max_polling_interval`: healthy paths back off up to this.
    pub max: Duration,
}

impl Polling {
    pub fn from_config(cfg: &crate::config::Config) -> Polling {
        let min = u64::from(cfg.polling_interval().max(1));
        let max = u64::from(cfg.max_polling_interval()).max(min);
        Polling {
            min: Duration::from_secs(min),
            max: Duration::from_secs(max),
        }
    }
}

/// A first check and the LUN size it could read.
#[derive(Debug, Clone)]
pub struct FirstCheck {
    pub result: CheckResult,
    pub size: Option<u64>,
}

/// A path made ready to join a map.
pub struct Prepared {
    pub plan: PathPlan,
    pub dev: Arc<PathDev>,
    pub checker: PathChecker,
    /// The first check's outcome, or the check still running.
    pub first: First,
}

pub enum First {
    Done(FirstCheck),
    Running(JoinHandle<FirstCheck>),
}

impl Prepared {
    /// The LUN size, if the first check finished and read it.
    pub fn size(&self) -> Option<u64> {
        match &self.first {
            First::Done(f) => f.size,
            First::Running(_) => None,
        }
    }

    /// The state and reason the path joins with.
    pub fn join_state(&self) -> (CheckState, Option<String>) {
        match &self.first {
            First::Done(f) => {
                let s = f.result.state;
                (s, (!s.is_usable()).then(|| f.result.message.clone()))
            }
            First::Running(_) => (
                CheckState::Pending,
                Some(format!(
                    "first check still running after {} ms",
                    JOIN_WAIT.as_millis()
                )),
            ),
        }
    }
}

/// Opens the device a plan names and runs its first check, waiting at
/// most `wait` for it (the check goes on afterwards if it takes longer).
pub async fn prepare(plan: PathPlan, wait: Duration) -> Prepared {
    let dev = Arc::new(open_path(&plan));
    let timeout = checker_timeout(&plan.settings, &dev);
    let checker = PathChecker::new(dev.clone(), plan.settings.path_checker.value);
    let mut task = tokio::spawn(first_check(checker.clone(), timeout));
    let first = match tokio::time::timeout(wait, &mut task).await {
        Ok(Ok(f)) => First::Done(f),
        Ok(Err(e)) => First::Done(FirstCheck {
            result: CheckResult::new(CheckState::Down, format!("first check failed: {e}")),
            size: None,
        }),
        Err(_) => First::Running(task),
    };
    Prepared {
        plan,
        dev,
        checker,
        first,
    }
}

/// Prepares many paths at once: a hung path costs one wait, not one per
/// path.
pub async fn prepare_all(plans: Vec<PathPlan>, wait: Duration) -> Vec<Prepared> {
    let tasks: Vec<_> = plans
        .into_iter()
        .map(|p| tokio::spawn(prepare(p, wait)))
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        if let Ok(p) = t.await {
            out.push(p);
        }
    }
    out
}

/// A check, then the size (asked only of a path that answered: a dead
/// device could hang the question).
pub async fn first_check(checker: PathChecker, timeout: Duration) -> FirstCheck {
    let result = checker.check(timeout).await;
    let size = if matches!(result.state, CheckState::Timeout | CheckState::Pending) {
        None
    } else {
        let dev = checker.dev().clone();
        let ask = tokio::task::spawn_blocking(move || dev.size().ok());
        match tokio::time::timeout(timeout, ask).await {
            Ok(Ok(s)) => s,
            _ => None,
        }
    };
    FirstCheck { result, size }
}

/// An `nbd` path's socket timeout: checker_timeout (else 30 s), and no
/// longer than io_timeout. A write stuck past io_timeout is held until
/// its original ends, which for an NBD request is this timeout: with 30 s
/// here and io_timeout 2, a stopped server would hold writes 30 s.
fn nbd_timeout(p: &PathPlan) -> Duration {
    let checker = configured_checker_timeout(&p.settings).unwrap_or(DEFAULT_CHECKER_TIMEOUT);
    p.io_timeout.map_or(checker, |io| checker.min(io))
}

/// The transport a declared path names. Config validation guarantees the
/// keys each transport needs; a missing one still yields a path that is
/// down with the reason, never a panic. Opening is lazy: the first check
/// opens the device.
pub fn open_path(p: &PathPlan) -> PathDev {
    let d = &p.decl;
    let transport = match (&p.scsi, d.transport.as_str()) {
        (Some(s), _) => Transport::scsi(s.target()),
        (None, "nbd") => match d.extra.get("uri").map(|(u, _)| NbdUri::parse(u)) {
            Some(Ok(uri)) => Transport::Nbd(NbdTransport::new(uri, nbd_timeout(p))),
            _ => Transport::file(PathBuf::new()),
        },
        (None, "iscsi") => match &p.iscsi {
            Some(t) => Transport::Iscsi(t.clone()),
            None => Transport::file(PathBuf::new()),
        },
        (None, _) if d.direct() => Transport::file_direct(d.file.clone().unwrap_or_default()),
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

/// `checker_timeout` as the configuration sets it, if it does.
pub fn configured_checker_timeout(s: &PathSettings) -> Option<Duration> {
    s.checker_timeout
        .value
        .map(|secs| Duration::from_secs(u64::from(secs.max(1))))
}

/// `checker_timeout` from the configuration, else the device's own (a
/// SCSI disk's sysfs `timeout`, as multipathd uses), else 30 s.
pub fn checker_timeout(s: &PathSettings, dev: &PathDev) -> Duration {
    configured_checker_timeout(s)
        .or_else(|| dev.transport.default_timeout())
        .unwrap_or(DEFAULT_CHECKER_TIMEOUT)
}

/// What a path's checker task needs; it holds no daemon state.
pub struct CheckerCtx {
    pub engine: MapEngine,
    pub id: PathId,
    pub name: String,
    pub checker: PathChecker,
    pub settings: Arc<ArcSwap<PathSettings>>,
    pub polling: Arc<ArcSwap<Polling>>,
    pub shutdown: watch::Receiver<bool>,
    /// What the path's prioritizer may read that does not change while
    /// the path lives (device name, H:C:T:L, serial); the rest is
    /// gathered at each check ([`gather_facts`]).
    pub facts: PathFacts,
}

/// Aborts a task when dropped: a path's checker ends with the path.
pub struct TaskGuard(pub JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One task per path: check every polling_interval (healthy paths back
/// off up to max_polling_interval, like multipathd), report results to
/// the engine. A path that is not carrying IO (failed by IO, by a check,
/// or waiting for its first check) is checked every polling_interval, and
/// the first good check reinstates it.
pub fn spawn_checker(ctx: CheckerCtx, first: Option<JoinHandle<FirstCheck>>) -> TaskGuard {
    let span = info_span!("path", map = %ctx.engine.info().name, path = %ctx.name);
    TaskGuard(tokio::spawn(checker_loop(ctx, first).instrument(span)))
}

async fn checker_loop(ctx: CheckerCtx, first: Option<JoinHandle<FirstCheck>>) {
    let CheckerCtx {
        engine,
        id,
        name,
        checker,
        settings,
        polling,
        mut shutdown,
        facts,
    } = ctx;
    let mut prio = PrioTracker::default();
    let mut health = HealthTracker::default();
    let mut last = CheckState::Unchecked;
    // A path that joined with its first check done carries IO from the
    // start: an IO failure before its next check counts for the detectors.
    health.carried = first.is_none() && engine.path_is_active(id);
    if let Some(task) = first {
        let f = tokio::select! {
            _ = shutdown.changed() => return,
            f = task => f,
        };
        if let Ok(f) = f {
            health.report(
                &engine,
                id,
                &name,
                checker.dev(),
                &settings.load(),
                f.result.state,
                &f.result.message,
            );
            last = f.result.state;
            let timeout = checker_timeout(&settings.load(), checker.dev());
            prio.update(
                &engine,
                id,
                f.result.state,
                &name,
                &checker,
                &settings.load(),
                &facts,
                timeout,
            )
            .await;
        }
    }
    let mut interval = Duration::ZERO;
    loop {
        let p = **polling.load();
        if interval.is_zero() || !engine.path_is_active(id) {
            interval = p.min;
        }
        interval = interval.clamp(p.min, p.max);
        // Sleep in polling_interval slices: a path that IO errors fail
        // meanwhile is checked at the next slice.
        let mut slept = Duration::ZERO;
        while slept < interval {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(p.min) => {}
            }
            slept += p.min;
            if !engine.path_is_active(id) {
                break;
            }
        }
        let timeout = checker_timeout(&settings.load(), checker.dev());
        health
            .before_check(&engine, id, &name, &settings.load())
            .await;
        // A healthy check also (re)opens the device if needed.
        let started = std::time::Instant::now();
        let CheckResult { state, message } = tokio::select! {
            _ = shutdown.changed() => return,
            r = checker.check(timeout) => r,
        };
        engine.check_duration(id, started.elapsed());
        health.report(
            &engine,
            id,
            &name,
            checker.dev(),
            &settings.load(),
            state,
            &message,
        );
        prio.update(
            &engine,
            id,
            state,
            &name,
            &checker,
            &settings.load(),
            &facts,
            timeout,
        )
        .await;
        // Healthy and unchanged: check less often, up to the max.
        interval = if state == CheckState::Up && last == CheckState::Up {
            interval.saturating_mul(2).min(p.max)
        } else {
            p.min
        };
        last = state;
    }
}

/// A path's shaky/marginal standing ([`PathHealth`]) between the checker
/// and the engine: a check that passes on a path the detectors hold out
/// is reported as `shaky` or `marginal` (the path stays failed, its reason
/// says why and until when); transitions are logged at warn once. A path
/// suspected marginal has its IO errors sampled on a blocking thread:
/// direct reads of its first block every [`SAMPLE_EVERY`] for
/// `marginal_path_err_sample_time`, as multipathd's io_err_stat does.
#[derive(Debug, Default)]
struct HealthTracker {
    health: PathHealth,
    /// The last check's verdict let the path carry IO.
    carried: bool,
    sampler: Option<Sampler>,
    /// Whether the path was last marked marginal in the map
    /// (`marginal_pathgroups on`); `None` before the first verdict (a
    /// checker restarted on a map that already has the mark sets it anew).
    marked: Option<bool>,
    /// The `held_until` last handed to the engine (`None`: nothing yet).
    shown_until: Option<Option<Time>>,
}

/// An IO-error sample running on a blocking thread.
#[derive(Debug)]
struct Sampler {
    task: JoinHandle<(u64, u64)>,
    stop: Arc<AtomicBool>,
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// How often a marginal-path sample reads from the path.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);

impl HealthTracker {
    /// Before a check: a path that carried IO and is failed now was
    /// failed by IO errors (a failure for the detectors, as multipathd
    /// counts dm's path-failed events); a finished sample is judged.
    async fn before_check(&mut self, engine: &MapEngine, id: PathId, name: &str, s: &PathSettings) {
        let now = engine.now();
        if self.carried && !engine.path_is_active(id) {
            self.carried = false;
            let c = self.health.failed(&s.shaky, now);
            log_change(name, c);
        }
        if self.sampler.as_ref().is_some_and(|t| t.task.is_finished()) {
            if let Some(mut t) = self.sampler.take() {
                // Finished: this does not wait.
                let (errors, reads) = (&mut t.task).await.unwrap_or((0, 0));
                let c = self.health.sampled(&s.shaky, now, errors, reads);
                log_change(name, c);
            }
        }
        self.show_until(engine, id);
    }

    /// Hands the standing's "held until" to the engine for `show paths`
    /// when it changed.
    fn show_until(&mut self, engine: &MapEngine, id: PathId) {
        let until = self.health.standing().held_until();
        if self.shown_until != Some(until) {
            self.shown_until = Some(until);
            engine.set_held_until(id, until);
        }
    }

    /// Marks the path marginal in the map (its own group, after the
    /// normal ones) or clears the mark, when that changes.
    fn mark(&mut self, engine: &MapEngine, id: PathId, marginal: bool) {
        if self.marked != Some(marginal) {
            self.marked = Some(marginal);
            engine.set_marginal(id, marginal);
        }
    }

    /// Hands a check result to the engine, holding the path out if the
    /// detectors say so.
    #[allow(clippy::too_many_arguments)]
    fn report(
        &mut self,
        engine: &MapEngine,
        id: PathId,
        name: &str,
        dev: &Arc<PathDev>,
        s: &PathSettings,
        state: CheckState,
        message: &str,
    ) {
        let cfg = &s.shaky;
        let now = engine.now();
        if !state.is_usable() {
            if matches!(state, CheckState::Down | CheckState::Timeout) {
                self.carried = false;
                let c = self.health.failed(cfg, now);
                log_change(name, c);
            }
            engine.check_result(id, state, message);
            return;
        }
        let others = if cfg.enabled() || self.health.is_held() {
            engine.usable_paths_besides(id)
        } else {
            0
        };
        let (verdict, change) = self.health.passed(cfg, now, others);
        if let Some(Change::StartSampling { until }) = change {
            self.sampler = Some(start_sampler(dev.clone(), until.elapsed_since(now)));
        }
        log_change(name, change);
        self.show_until(engine, id);
        match verdict {
            Verdict::Pass | Verdict::PassMarginal => {
                self.carried = true;
                // Marked before the check is reported, so that a path
                // coming back marginal lands in a marginal group at once.
                self.mark(engine, id, verdict == Verdict::PassMarginal);
                engine.check_result(id, state, message);
            }
            Verdict::Hold => {
                self.carried = false;
                self.mark(engine, id, false);
                let standing = self.health.standing();
                let held = if matches!(standing, Standing::Shaky { .. }) {
                    CheckState::Shaky
                } else {
                    CheckState::Marginal
                };
                engine.check_result(id, held, &standing.to_string());
            }
        }
    }
}

fn log_change(name: &str, change: Option<Change>) {
    match change {
        Some(c @ Change::Released { .. }) => info!(path = %name, "{c}"),
        Some(c) => warn!(path = %name, "{c}"),
        None => {}
    }
}

/// Reads the path's first block every [`SAMPLE_EVERY`] for `length`,
/// counting the reads that fail: (errors, reads).
fn start_sampler(dev: Arc<PathDev>, length: Duration) -> Sampler {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let task = tokio::task::spawn_blocking(move || {
        let end = std::time::Instant::now() + length;
        let mut buf = vec![0u8; dev.transport.block_size().max(512) as usize];
        let (mut errors, mut reads) = (0u64, 0u64);
        while std::time::Instant::now() < end && !flag.load(Ordering::Relaxed) {
            reads += 1;
            if dev.read_at(&mut buf, 0).is_err() {
                errors += 1;
            }
            std::thread::sleep(SAMPLE_EVERY);
        }
        (errors, reads)
    });
    Sampler { task, stop }
}

/// A path's priority, computed after each check by its prioritizer (the
/// `prio`/`prio_args` settings as they are now). Remembers what it last
/// reported so that a prioritizer that cannot compute, or a transport
/// that cannot give what it needs, is logged once per change, not at
/// every check; the path then keeps its last priority (1 if it never had
/// one computed).
#[derive(Debug, Default)]
struct PrioTracker {
    /// Why the priority was last not computed ("" when it was).
    last_problem: String,
    /// A fact-gathering that outlived its timeout (a device stuck in
    /// SG_IO): no other starts until it ends, so a hung path holds at
    /// most one blocking thread for its priority.
    stuck: Option<tokio::task::JoinHandle<Result<PathFacts, String>>>,
    /// The prioritizer parsed from `(prio, prio_args)`, kept while the
    /// settings say the same (parsing compiles weightedpath's regexes).
    parsed: Option<((String, String), Prioritizer)>,
}

impl PrioTracker {
    #[allow(clippy::too_many_arguments)]
    async fn update(
        &mut self,
        engine: &MapEngine,
        id: PathId,
        state: CheckState,
        name: &str,
        checker: &PathChecker,
        settings: &PathSettings,
        facts: &PathFacts,
        timeout: Duration,
    ) {
        // As multipathd: only a path that is up (or a ghost) is asked;
        // a down path keeps its last priority.
        if !matches!(state, CheckState::Up | CheckState::Ghost) {
            return;
        }
        // A `fault path NAME prio ...` test hook replaces the prioritizer.
        if let Some(p) = checker.dev().faults.prio() {
            engine.set_path_prio(id, Prio(p));
            return;
        }
        if let Some(h) = &self.stuck {
            if !h.is_finished() {
                return self.problem(
                    name,
                    "the last priority query is still stuck in the device; priority kept"
                        .to_string(),
                );
            }
            self.stuck = None;
        }
        let key = (
            settings.prio.value.clone(),
            settings.prio_args.value.clone(),
        );
        let prioritizer = match &self.parsed {
            Some((k, p)) if *k == key => p.clone(),
            _ => match settings.prioritizer() {
                Ok(p) => {
                    self.parsed = Some((key, p.clone()));
                    p
                }
                Err(e) => return self.problem(name, format!("{e}; priority kept")),
            },
        };
        if prioritizer == Prioritizer::Const {
            self.last_problem.clear();
            engine.set_path_prio(id, Prio::DEFAULT);
            return;
        }
        let needs = prioritizer.needs();
        let dev = checker.dev().clone();
        let is_scsi = matches!(dev.transport, Transport::Scsi(_));
        if needs.scsi() && !is_scsi {
            engine.set_path_prio(id, Prio::DEFAULT);
            return self.problem(
                name,
                format!(
                    "prioritizer '{}' needs a SCSI device, and this path is {}; priority stays 1",
                    prioritizer.name(),
                    dev.describe()
                ),
            );
        }
        let base = facts.clone();
        let mut gather =
            tokio::task::spawn_blocking(move || gather_facts(&dev, base, needs, timeout));
        let score = match tokio::time::timeout(timeout, &mut gather).await {
            Ok(Ok(Ok(f))) => prioritizer.score(&f).map_err(|e| e.to_string()),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(e)) => Err(format!("gathering the facts failed: {e}")),
            Err(_) => {
                self.stuck = Some(gather);
                Err(format!(
                    "gathering the facts took longer than {} ms",
                    timeout.as_millis()
                ))
            }
        };
        match score {
            Ok(p) => {
                if !self.last_problem.is_empty() {
                    info!(path = %name, prio = %p, "priority computed again");
                    self.last_problem.clear();
                }
                engine.set_path_prio(id, p);
            }
            Err(e) => self.problem(name, format!("{e}; priority kept")),
        }
    }

    /// Logs `why` unless it is what was logged last.
    fn problem(&mut self, name: &str, why: String) {
        if self.last_problem != why {
            warn!(path = %name, "priority not computed: {why}");
            self.last_problem = why;
        }
    }
}

/// The facts `needs` names that are read at each check (blocking: SCSI
/// commands and sysfs reads), added to `facts`. A fact that cannot be
/// read stays `None`, and the prioritizer says it is missing; an `alua`
/// command that fails is the error returned.
fn gather_facts(
    dev: &PathDev,
    mut facts: PathFacts,
    needs: crate::prio::Needs,
    timeout: Duration,
) -> Result<PathFacts, String> {
    if let Transport::Scsi(s) = &dev.transport {
        if needs.sysfs {
            facts.sysfs = s.sysfs_alua();
        }
        if needs.alua {
            facts.alua = Some(s.alua_facts(timeout)?);
        }
    }
    if let Some(n) = needs.latency_reads {
        let reads = dev
            .timed_reads(n, timeout)
            .map_err(|e| format!("path_latency measurement: {e}"))?;
        facts.latencies = Some(reads);
    }
    if needs.random {
        use std::hash::{BuildHasher, Hasher};
        let h = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        facts.random = Some((h >> 32) as u32);
    }
    Ok(facts)
}

/// The facts of a path that do not change while it lives. A path that is
/// not a kernel disk (`file`, `nbd`, `memory`) is known by its declared
/// name, which `weightedpath devname` matches.
pub fn static_facts(plan: &PathPlan) -> PathFacts {
    PathFacts {
        devname: Some(
            plan.scsi
                .as_ref()
                .map_or_else(|| plan.decl.name.clone(), |s| s.name.clone()),
        ),
        hbtl: plan.scsi.as_ref().map(|s| s.hctl.clone()),
        serial: Some(plan.info.serial.clone()).filter(|s| !s.is_empty()),
        wwn: plan.scsi.as_ref().and_then(|s| s.wwn.clone()),
        ..PathFacts::default()
    }
}
