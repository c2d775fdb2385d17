//! A multipath map: the paths to one LUN, split into path groups, one of
//! which is current. All state changes go through methods that return the
//! [`MapEvent`]s they caused; the engine logs them and acts on them (for
//! example re-dispatching held IO on [`MapEvent::Resumed`]).

#[cfg(test)]
use super::path::PathInfo;
use std::time::Duration;

use super::path::{CheckState, DmState, Path};
use crate::policy::failback::{self, FailbackState, GroupView, NewUp, Trigger};
use crate::policy::grouping::{group_paths, group_prio, GroupKey};
use crate::policy::no_path_retry::{Disposition, NoPathPolicy, NoPathState, Transition};
use crate::policy::selector::{PathView, Selector};
use crate::policy::{Failback, GroupingPolicy, NoPathRetry, RrWeight, SelectorKind};
use crate::units::{PathId, Prio, Time};

/// The policy settings a map runs with (resolved from multipath.conf).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapPolicy {
    pub grouping: GroupingPolicy,
    pub selector: SelectorKind,
    /// Round-robin repeat count (see [`crate::policy::selector`]).
    pub repeat: u32,
    pub rr_weight: RrWeight,
    pub failback: Failback,
    pub no_path_retry: NoPathRetry,
    /// How often paths are checked; the unit of `no_path_retry N`.
    pub polling_interval: Duration,
}

/// A path group's status, as `multipath -ll` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupStatus {
    /// The group IO goes to.
    Active,
    /// A group that could take IO.
    Enabled,
    /// A group with no usable path.
    Disabled,
}

impl GroupStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupStatus::Active => "active",
            GroupStatus::Enabled => "enabled",
            GroupStatus::Disabled => "disabled",
        }
    }
}

/// A path group with its own selector instance.
#[derive(Debug, Clone)]
pub struct PathGroup {
    pub members: Vec<PathId>,
    /// Average priority of the group's usable paths (0 if none), as
    /// multipathd computes it ([`crate::policy::grouping::group_prio`]).
    pub prio: Prio,
    pub status: GroupStatus,
    /// A group of marginal paths (`marginal_pathgroups on`): after every
    /// normal group, used only when no normal group can be.
    pub marginal: bool,
    selector: Selector,
}

/// Why the current group changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchReason {
    /// The old group had no usable path left.
    Failover,
    /// A better group became usable (per `failback`).
    Failback,
    /// The map was (re)built.
    Assembled,
    /// An admin asked.
    Admin,
}

/// Something that changed in a map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapEvent {
    /// The path no longer carries IO.
    PathFailed { path: PathId, reason: String },
    /// The path carries IO again.
    PathReinstated { path: PathId },
    /// The checker's verdict changed.
    CheckerChanged {
        path: PathId,
        from: CheckState,
        to: CheckState,
    },
    /// IO now goes to another group.
    GroupSwitched {
        from: Option<usize>,
        to: Option<usize>,
        reason: SwitchReason,
    },
    /// No usable path: IO is held until `deadline` (None: forever).
    QueueingStarted { deadline: Option<Time> },
    /// Held IO must fail now, and new IO fails until a path returns.
    QueueExhausted,
    /// No usable path and no_path_retry is `fail`: IO fails.
    FailingStarted,
    /// A path is usable again after none was: re-dispatch held IO.
    Resumed,
    /// A path's priority changed (its prioritizer said so).
    PrioChanged { path: PathId, from: Prio, to: Prio },
    /// The paths were grouped anew (group_by_prio with failback immediate
    /// after a priority change: multipathd reloads the map). Group indexes
    /// before this event no longer name the same groups; `groups` is the
    /// new number of groups. A [`MapEvent::GroupSwitched`] follows if the
    /// current group's index changed.
    Regrouped { groups: usize },
    /// The path was marked marginal (`marginal_pathgroups on`) or no
    /// longer is; a [`MapEvent::Regrouped`] follows.
    MarginalChanged { path: PathId, marginal: bool },
}

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Path(PathId),
    /// No usable path: hold the request or fail it.
    NoPath(Disposition),
}

/// Per-path load, as the engine counts it, and the time of the routing.
pub trait LoadView {
    fn in_flight(&self, id: PathId) -> u32;
    fn in_flight_bytes(&self, id: PathId) -> u64;
    /// Now, since the engine's epoch, at nanosecond resolution (the clock
    /// [`Map::io_done`] times are on).
    fn now(&self) -> Duration;
}

/// A load view for callers that do not track load (its time is always
/// the epoch).
pub struct NoLoad;

impl LoadView for NoLoad {
    fn in_flight(&self, _: PathId) -> u32 {
        0
    }
    fn in_flight_bytes(&self, _: PathId) -> u64 {
        0
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

/// One multipath map.
#[derive(Debug, Clone)]
pub struct Map {
    pub name: String,
    pub wwid: String,
    paths: Vec<Path>,
    groups: Vec<PathGroup>,
    current: Option<usize>,
    policy: MapPolicy,
    failback_state: FailbackState,
    no_path: NoPathPolicy,
}

struct View<'a, L> {
    paths: &'a [Path],
    load: &'a L,
}

impl<L: LoadView> PathView for View<'_, L> {
    #[inline]
    fn usable(&self, id: PathId) -> bool {
        self.paths.get(id.index()).is_some_and(Path::usable)
    }
    fn prio(&self, id: PathId) -> Prio {
        self.paths.get(id.index()).map_or(Prio::DEFAULT, |p| p.prio)
    }
    fn in_flight(&self, id: PathId) -> u32 {
        self.load.in_flight(id)
    }
    fn in_flight_bytes(&self, id: PathId) -> u64 {
        self.load.in_flight_bytes(id)
    }
    fn now(&self) -> Duration {
        self.load.now()
    }
}

impl Map {
    /// Assembles a map from its paths. Paths whose initial check says they
    /// do not work start failed.
    pub fn new(
        name: String,
        wwid: String,
        paths: Vec<Path>,
        policy: MapPolicy,
        now: Time,
    ) -> (Map, Vec<MapEvent>) {
        let no_path = NoPathPolicy::new(policy.no_path_retry, policy.polling_interval);
        let mut map = Map {
            name,
            wwid,
            paths,
            groups: Vec::new(),
            current: None,
            policy,
            failback_state: FailbackState::Idle,
            no_path,
        };
        map.regroup();
        let mut events = Vec::new();
        map.reselect(
            Trigger::Assembled,
            SwitchReason::Assembled,
            now,
            &mut events,
        );
        map.update_no_path(now, &mut events);
        (map, events)
    }

    /// Every path, tombstones of removed ones included, in id order
    /// (`paths()[i]` has id `PathId::new(i)`; prefer [`Map::iter_paths`]).
    pub fn paths(&self) -> &[Path] {
        &self.paths
    }

    /// Every path with its id, tombstones of removed ones included.
    pub fn iter_paths(&self) -> impl Iterator<Item = (PathId, &Path)> {
        self.paths
            .iter()
            .enumerate()
            .map(|(i, p)| (PathId::new(i), p))
    }

    pub fn path(&self, id: PathId) -> Option<&Path> {
        self.paths.get(id.index())
    }

    pub fn groups(&self) -> &[PathGroup] {
        &self.groups
    }

    pub fn current_group(&self) -> Option<usize> {
        self.current
    }

    pub fn policy(&self) -> &MapPolicy {
        &self.policy
    }

    pub fn no_path_state(&self) -> NoPathState {
        self.no_path.state()
    }

    /// Number of paths that can carry IO.
    pub fn usable_paths(&self) -> usize {
        self.paths.iter().filter(|p| p.usable()).count()
    }

    /// Picks where the next request goes. Runs once per IO: no allocation.
    #[inline]
    pub fn route<L: LoadView>(&mut self, load: &L) -> Route {
        if let Some(g) = self.current {
            if let Some(group) = self.groups.get_mut(g) {
                let view = View {
                    paths: &self.paths,
                    load,
                };
                if let Some(id) = group.selector.select(&group.members, &view) {
                    return Route::Path(id);
                }
            }
        }
        // The current group cannot take it; any other usable group can
        // (failover that the next state update will make official).
        for group in self.groups.iter_mut() {
            let view = View {
                paths: &self.paths,
                load,
            };
            if let Some(id) = group.selector.select(&group.members, &view) {
                return Route::Path(id);
            }
        }
        Route::NoPath(self.no_path.disposition())
    }

    /// True if the map's selectors learn from completions
    /// (`historical-service-time`): the engine then reports each one with
    /// [`Map::io_done`].
    pub fn wants_completions(&self) -> bool {
        matches!(self.policy.selector, SelectorKind::HistoricalServiceTime(_))
    }

    /// A request routed to `id` at `started` completed at `now` (both on
    /// the [`LoadView::now`] clock), successfully or not: the selector of
    /// the path's group learns its service time. Changes no state the
    /// map reports, so it returns no event.
    pub fn io_done(&mut self, id: PathId, started: Duration, now: Duration) {
        if let Some(g) = self.groups.iter_mut().find(|g| g.members.contains(&id)) {
            g.selector.io_done(id, started, now);
        }
    }

    /// An IO error on `id` (dm's fail_path). Idempotent.
    pub fn fail_path(&mut self, id: PathId, reason: &str, now: Time) -> Vec<MapEvent> {
        self.fail_by(id, reason, false, now)
    }

    /// Fails a path; `by_check`: a checker saw it go down.
    fn fail_by(&mut self, id: PathId, reason: &str, by_check: bool, now: Time) -> Vec<MapEvent> {
        let mut events = Vec::new();
        if let Some(p) = self.paths.get_mut(id.index()) {
            if p.dm == DmState::Active {
                p.dm = DmState::Failed;
                p.reason = Some(reason.to_string());
                p.since = now;
                p.failures += 1;
                events.push(MapEvent::PathFailed {
                    path: id,
                    reason: reason.to_string(),
                });
                self.after_change(Trigger::Failed { by_check }, now, &mut events);
            }
        }
        events
    }

    /// An admin fails the path; it stays failed until [`Map::admin_reinstate`].
    pub fn admin_fail(&mut self, id: PathId, now: Time) -> Vec<MapEvent> {
        if let Some(p) = self.paths.get_mut(id.index()) {
            p.admin_failed = true;
        }
        self.fail_path(id, "failed by admin", now)
    }

    /// An admin reinstates the path. It carries IO again at once unless its
    /// checker says it is down (then it comes back when a check passes).
    pub fn admin_reinstate(&mut self, id: PathId, now: Time) -> Vec<MapEvent> {
        let Some(p) = self.paths.get_mut(id.index()) else {
            return Vec::new();
        };
        p.admin_failed = false;
        if matches!(p.check, CheckState::Down | CheckState::Timeout) {
            return Vec::new();
        }
        self.reinstate(id, None, now)
    }

    /// A new path joins the map (hotplug); it is grouped at once.
    pub fn add_path(&mut self, path: Path, now: Time) -> (PathId, Vec<MapEvent>) {
        self.paths.push(path);
        let id = PathId::new(self.paths.len() - 1);
        self.regroup();
        self.current = None;
        let mut events = Vec::new();
        self.after_change(Trigger::Assembled, now, &mut events);
        (id, events)
    }

    /// The path's device went away (hotplug): it fails and leaves its group.
    pub fn remove_path(&mut self, id: PathId, now: Time) -> Vec<MapEvent> {
        let mut events = self.fail_path(id, "device removed", now);
        if let Some(p) = self.paths.get_mut(id.index()) {
            if p.removed {
                return events;
            }
            p.removed = true;
            p.reason = Some("device removed".to_string());
        }
        self.regroup();
        self.current = None;
        self.after_change(Trigger::Assembled, now, &mut events);
        events
    }

    /// A check found the path healthy but it must not carry IO yet (the
    /// engine has requests stuck on it past io_timeout): the checker's
    /// verdict is recorded and a failed path stays failed, with `why` as
    /// its reason. A path that is active (an admin reinstated it) stays
    /// active. For any other verdict this is [`Map::check_result`].
    pub fn check_held(
        &mut self,
        id: PathId,
        state: CheckState,
        why: &str,
        now: Time,
    ) -> Vec<MapEvent> {
        if !state.is_usable() {
            return self.check_result(id, state, why, now);
        }
        let mut events = Vec::new();
        if let Some(p) = self.record_check(id, state, &mut events) {
            if p.dm == DmState::Failed && !p.admin_failed {
                p.reason = Some(why.to_string());
            }
        }
        events
    }

    /// Records a checker verdict on a live path (an event if it changed);
    /// the path, unless it does not exist or was removed.
    fn record_check(
        &mut self,
        id: PathId,
        state: CheckState,
        events: &mut Vec<MapEvent>,
    ) -> Option<&mut Path> {
        let p = self.paths.get_mut(id.index()).filter(|p| !p.removed)?;
        let from = p.check;
        p.check = state;
        if from != state {
            events.push(MapEvent::CheckerChanged {
                path: id,
                from,
                to: state,
            });
        }
        Some(p)
    }

    /// A path check finished.
    pub fn check_result(
        &mut self,
        id: PathId,
        state: CheckState,
        reason: &str,
        now: Time,
    ) -> Vec<MapEvent> {
        let mut events = Vec::new();
        let from = self.paths.get(id.index()).map(|p| p.check);
        let Some(p) = self.record_check(id, state, &mut events) else {
            return events;
        };
        // multipathd's CHECK_PATH_NEW_UP: the verdict went from not usable
        // to usable.
        let new_up = state.is_usable() && !from.is_some_and(CheckState::is_usable);
        match state {
            s if s.is_usable() && p.dm == DmState::Failed && !p.admin_failed => {
                events.extend(self.reinstate(id, Some(new_up), now));
            }
            // A path held out (shaky or marginal) is failed like a down
            // one, with the reason saying why and until when.
            CheckState::Down | CheckState::Timeout | CheckState::Shaky | CheckState::Marginal => {
                if p.dm == DmState::Failed && !p.admin_failed {
                    // Still down: the reason shown is the latest one.
                    p.reason = Some(reason.to_string());
                }
                events.extend(self.fail_by(id, reason, true, now));
            }
            // A usable verdict on a path that carries IO (or stays failed
            // by an admin): multipathd reconsiders the group after every
            // check.
            s if s.is_usable() => {
                let carries_io = p.usable();
                let new_up = (new_up && carries_io).then(|| self.new_up(id)).flatten();
                self.reselect(
                    Trigger::Checked { new_up },
                    SwitchReason::Failback,
                    now,
                    &mut events,
                );
            }
            // Pending or unchecked: no verdict yet, nothing changes.
            _ => {}
        }
        events
    }

    /// The path's priority changed (a prioritizer answered). With
    /// `group_by_prio` and failback immediate the paths are grouped anew
    /// and the best group is taken, as multipathd reloads the map then;
    /// otherwise group priorities are updated and failback decides (the
    /// groups keep their members, as in multipathd until a reload). An
    /// unchanged priority changes nothing.
    pub fn set_path_prio(&mut self, id: PathId, prio: Prio, now: Time) -> Vec<MapEvent> {
        let mut events = Vec::new();
        let Some(p) = self.paths.get_mut(id.index()).filter(|p| !p.removed) else {
            return events;
        };
        if p.prio == prio {
            return events;
        }
        let from = p.prio;
        p.prio = prio;
        events.push(MapEvent::PrioChanged {
            path: id,
            from,
            to: prio,
        });
        if self.reloads_on_prio() {
            self.reload(now, &mut events);
        } else {
            self.reselect(
                Trigger::PrioChanged,
                SwitchReason::Failback,
                now,
                &mut events,
            );
        }
        events
    }

    /// group_by_prio with failback immediate: multipathd reloads the map
    /// (groups formed anew) when a priority changes.
    fn reloads_on_prio(&self) -> bool {
        self.policy.grouping == GroupingPolicy::GroupByPrio
            && self.policy.failback == Failback::Immediate
    }

    /// Marks the path marginal (`marginal_pathgroups on`: the detectors
    /// hold something against it but it keeps carrying IO) or clears the
    /// mark. A change regroups the map (marginal paths go to groups after
    /// every normal group) and takes the best group, as multipathd reloads
    /// the map then; an unchanged mark changes nothing.
    pub fn set_marginal(&mut self, id: PathId, marginal: bool, now: Time) -> Vec<MapEvent> {
        let mut events = Vec::new();
        let Some(p) = self.paths.get_mut(id.index()).filter(|p| !p.removed) else {
            return events;
        };
        if p.marginal == marginal {
            return events;
        }
        p.marginal = marginal;
        events.push(MapEvent::MarginalChanged { path: id, marginal });
        self.reload(now, &mut events);
        events
    }

    /// Records until when the detectors hold something against the path
    /// (`None`: nothing); for display only, no event.
    pub fn set_held_until(&mut self, id: PathId, until: Option<Time>) {
        if let Some(p) = self.paths.get_mut(id.index()).filter(|p| !p.removed) {
            p.held_until = until;
        }
    }

    /// Groups the paths anew and takes the best group, as multipathd's
    /// map reload does: a [`MapEvent::Regrouped`], and a
    /// [`MapEvent::GroupSwitched`] (whose `from` is the old index) if the
    /// current group's index changed.
    fn reload(&mut self, now: Time, events: &mut Vec<MapEvent>) {
        let before = self.current;
        let start = events.len();
        self.regroup();
        self.current = None;
        events.push(MapEvent::Regrouped {
            groups: self.groups.len(),
        });
        self.reselect(Trigger::Assembled, SwitchReason::Failback, now, events);
        // Keep `from` meaningful: it names the old index.
        for e in &mut events[start..] {
            if let MapEvent::GroupSwitched { from, .. } = e {
                *from = before;
            }
        }
        if self.current == before {
            let tail: Vec<MapEvent> = events
                .drain(start..)
                .filter(|e| !matches!(e, MapEvent::GroupSwitched { .. }))
                .collect();
            events.extend(tail);
        }
    }

    /// The followover facts about a path a check just brought up.
    fn new_up(&self, id: PathId) -> Option<NewUp> {
        let group = self.groups.iter().position(|g| g.members.contains(&id))?;
        let first_in_group = self.groups[group].members.iter().all(|&m| {
            m == id
                || matches!(
                    self.paths[m.index()].check,
                    CheckState::Down | CheckState::Shaky | CheckState::Marginal
                )
        });
        Some(NewUp {
            group,
            first_in_group,
        })
    }

    /// Time passed: deferred failback and no_path_retry deadlines.
    pub fn tick(&mut self, now: Time) -> Vec<MapEvent> {
        let mut events = Vec::new();
        if let Some(t) = self.no_path.tick(now) {
            events.push(transition_event(t));
        }
        if matches!(self.failback_state, FailbackState::Deferred { .. }) {
            self.reselect(Trigger::Tick, SwitchReason::Failback, now, &mut events);
        }
        events
    }

    /// An admin switches to group `g` (multipathd's `switch group`).
    pub fn switch_group(&mut self, g: usize) -> Vec<MapEvent> {
        let usable = self.groups.get(g).is_some_and(|grp| {
            grp.members
                .iter()
                .any(|&id| self.paths[id.index()].usable())
        });
        if !usable || self.current == Some(g) {
            return Vec::new();
        }
        let from = self.current;
        self.current = Some(g);
        self.update_status();
        vec![MapEvent::GroupSwitched {
            from,
            to: Some(g),
            reason: SwitchReason::Admin,
        }]
    }

    /// Changes only no_path_retry (multipathd's `disablequeueing` /
    /// `restorequeueing`): groups and the current group stay. Switching
    /// queueing off while IO is held fails that IO (`QueueExhausted`);
    /// switching it back on while no path is usable starts queueing again
    /// from `now`, as multipathd's `set_no_path_retry` does.
    pub fn set_no_path_retry(&mut self, mode: NoPathRetry, now: Time) -> Vec<MapEvent> {
        let mut events = Vec::new();
        self.policy.no_path_retry = mode;
        if let Some(t) = self
            .no_path
            .reconfigure(mode, self.policy.polling_interval, now)
        {
            events.push(transition_event(t));
        }
        if self.no_path.state() == NoPathState::Failing && mode != NoPathRetry::Fail {
            self.no_path = NoPathPolicy::new(mode, self.policy.polling_interval);
            if let Some(t) = self.no_path.all_paths_down(now) {
                events.push(transition_event(t));
            }
        }
        events
    }

    /// Applies new settings (reconfigure): regroups and picks a group anew.
    pub fn reconfigure(&mut self, policy: MapPolicy, now: Time) -> Vec<MapEvent> {
        let mut events = Vec::new();
        if let Some(t) =
            self.no_path
                .reconfigure(policy.no_path_retry, policy.polling_interval, now)
        {
            events.push(transition_event(t));
        }
        if policy != self.policy {
            self.policy = policy;
            self.regroup();
            self.current = None;
            self.failback_state = FailbackState::Idle;
            self.reselect(
                Trigger::Assembled,
                SwitchReason::Assembled,
                now,
                &mut events,
            );
        }
        events
    }

    /// Reinstates a failed path. `check`: a check reinstates it, with
    /// whether its verdict went from not usable to usable (see
    /// [`Map::check_result`]); `None` for an admin's reinstate.
    fn reinstate(&mut self, id: PathId, check: Option<bool>, now: Time) -> Vec<MapEvent> {
        let mut events = Vec::new();
        let trigger = match check {
            Some(new_up) => Trigger::Checked {
                new_up: if new_up { self.new_up(id) } else { None },
            },
            None => Trigger::Changed,
        };
        let Some(p) = self.paths.get_mut(id.index()) else {
            return events;
        };
        if p.dm == DmState::Active {
            return events;
        }
        p.dm = DmState::Active;
        p.reason = None;
        p.since = now;
        events.push(MapEvent::PathReinstated { path: id });
        // A path a check brings back under group_by_prio + immediate: if
        // the groups were formed while it was down, their order is stale
        // (its group counted as priority 0). multipathd re-reads every
        // path's priority then and reloads if one changed; umpath, whose
        // priorities are already current, reloads when the grouping
        // would differ, so the order never depends on which path a
        // checker saw first.
        if check.is_some() && self.reloads_on_prio() && self.grouping_is_stale() {
            self.reload(now, &mut events);
            self.update_no_path(now, &mut events);
            return events;
        }
        self.after_change(trigger, now, &mut events);
        events
    }

    /// The groups [`Map::regroup`] would form now differ from the current
    /// ones (members or order).
    fn grouping_is_stale(&self) -> bool {
        let keys = self.group_keys();
        let fresh = group_paths(self.policy.grouping, &keys);
        fresh.len() != self.groups.len()
            || fresh
                .iter()
                .zip(&self.groups)
                .any(|(f, g)| f.members != g.members || f.marginal != g.marginal)
    }

    fn after_change(&mut self, trigger: Trigger, now: Time, events: &mut Vec<MapEvent>) {
        let reason = match trigger {
            Trigger::Failed { .. } => SwitchReason::Failover,
            Trigger::Assembled => SwitchReason::Assembled,
            _ => SwitchReason::Failback,
        };
        self.reselect(trigger, reason, now, events);
        self.update_no_path(now, events);
    }

    fn update_no_path(&mut self, now: Time, events: &mut Vec<MapEvent>) {
        let t = if self.usable_paths() == 0 {
            self.no_path.all_paths_down(now)
        } else {
            self.no_path.path_restored()
        };
        if let Some(t) = t {
            events.push(transition_event(t));
        }
    }

    fn group_views(&self) -> Vec<GroupView> {
        self.groups
            .iter()
            .map(|g| GroupView {
                prio: g.prio,
                marginal: g.marginal,
                usable: g
                    .members
                    .iter()
                    .filter(|&&id| self.paths[id.index()].usable())
                    .count(),
            })
            .collect()
    }

    fn reselect(
        &mut self,
        trigger: Trigger,
        reason: SwitchReason,
        now: Time,
        events: &mut Vec<MapEvent>,
    ) {
        self.update_prios();
        let views = self.group_views();
        let d = failback::decide(
            self.policy.failback,
            &views,
            self.current,
            self.failback_state,
            trigger,
            now,
        );
        self.failback_state = d.state;
        if d.group != self.current {
            let reason = if self
                .current
                .is_some_and(|c| views.get(c).is_some_and(|v| v.usable == 0))
            {
                SwitchReason::Failover
            } else {
                reason
            };
            events.push(MapEvent::GroupSwitched {
                from: self.current,
                to: d.group,
                reason,
            });
            self.current = d.group;
        }
        self.update_status();
    }

    fn update_prios(&mut self) {
        for g in &mut self.groups {
            g.prio = group_prio(
                g.members
                    .iter()
                    .map(|&id| &self.paths[id.index()])
                    .map(|p| (p.prio, p.usable())),
            )
            .0;
        }
    }

    fn update_status(&mut self) {
        for (i, g) in self.groups.iter_mut().enumerate() {
            let usable = g.members.iter().any(|&id| self.paths[id.index()].usable());
            g.status = if Some(i) == self.current {
                GroupStatus::Active
            } else if usable {
                GroupStatus::Enabled
            } else {
                GroupStatus::Disabled
            };
        }
    }

    fn group_keys(&self) -> Vec<GroupKey<'_>> {
        self.paths
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.removed)
            .map(|(i, p)| GroupKey {
                id: PathId::new(i),
                prio: p.prio,
                usable: p.usable(),
                serial: &p.info.serial,
                node_name: p.info.node_name.as_deref(),
                tpg: p.info.tpg,
                marginal: p.marginal,
            })
            .collect()
    }

    fn regroup(&mut self) {
        let keys = self.group_keys();
        let policy = &self.policy;
        self.groups = group_paths(policy.grouping, &keys)
            .into_iter()
            .map(|g| PathGroup {
                members: g.members,
                prio: Prio(0),
                status: GroupStatus::Enabled,
                marginal: g.marginal,
                selector: Selector::new(policy.selector, policy.repeat, policy.rr_weight),
            })
            .collect();
        self.update_prios();
    }
}

fn transition_event(t: Transition) -> MapEvent {
    match t {
        Transition::QueueingStarted { deadline } => MapEvent::QueueingStarted { deadline },
        Transition::QueueExhausted => MapEvent::QueueExhausted,
        Transition::FailingStarted => MapEvent::FailingStarted,
        Transition::Resumed => MapEvent::Resumed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(i: usize) -> PathId {
        PathId::new(i)
    }

    fn policy(grouping: GroupingPolicy, failback: Failback, npr: NoPathRetry) -> MapPolicy {
        MapPolicy {
            grouping,
            selector: SelectorKind::RoundRobin,
            repeat: 1,
            rr_weight: RrWeight::Uniform,
            failback,
            no_path_retry: npr,
            polling_interval: Duration::from_secs(1),
        }
    }

    fn paths(n: usize) -> Vec<Path> {
        (0..n)
            .map(|i| {
                let mut p = Path::new(PathInfo {
                    name: format!("p{i}"),
                    ..Default::default()
                });
                p.check = CheckState::Up;
                p
            })
            .collect()
    }

    fn route_n(m: &mut Map, n: usize) -> Vec<Route> {
        (0..n).map(|_| m.route(&NoLoad)).collect()
    }

    const T0: Time = Time(0);

    /// A load view with a clock and in-flight counts.
    struct Load {
        now: Duration,
        inflight: Vec<u32>,
    }

    impl LoadView for Load {
        fn in_flight(&self, id: PathId) -> u32 {
            self.inflight[id.index()]
        }
        fn in_flight_bytes(&self, id: PathId) -> u64 {
            u64::from(self.inflight[id.index()]) * 4096
        }
        fn now(&self) -> Duration {
            self.now
        }
    }

    #[test]
    fn historical_service_time_learns_from_completions() {
        let mut pol = policy(
            GroupingPolicy::Multibus,
            Failback::Immediate,
            NoPathRetry::Fail,
        );
        pol.selector = SelectorKind::parse("historical-service-time 1 0").unwrap();
        let (mut m, _) = Map::new("m".into(), "w".into(), paths(2), pol, T0);
        assert!(m.wants_completions());
        let ms = Duration::from_millis;
        let mut load = Load {
            now: ms(0),
            inflight: vec![0, 0],
        };
        assert_eq!(m.route(&load), Route::Path(pid(0)));
        assert_eq!(m.route(&load), Route::Path(pid(1)));
        // Path 0 answers in 1 ms, path 1 in 50 ms (path 0 is fresh: it
        // completed within its history times the usable paths).
        m.io_done(pid(0), ms(49), ms(50));
        m.io_done(pid(1), ms(0), ms(50));
        load.now = ms(51);
        load.inflight = vec![1, 1];
        let picks: Vec<Route> = (0..4).map(|_| m.route(&load)).collect();
        assert!(picks.iter().all(|r| *r == Route::Path(pid(0))), "{picks:?}");
        // A map on another selector ignores completions.
        let (mut rr, _) = Map::new(
            "r".into(),
            "w".into(),
            paths(2),
            policy(
                GroupingPolicy::Multibus,
                Failback::Immediate,
                NoPathRetry::Fail,
            ),
            T0,
        );
        assert!(!rr.wants_completions());
        rr.io_done(pid(0), ms(0), ms(1));
        assert_eq!(rr.route(&load), Route::Path(pid(0)));
    }

    #[test]
    fn a_held_out_check_keeps_a_failed_path_failed_and_fails_an_active_one() {
        let (mut m, _) = Map::new(
            "m".into(),
            "w".into(),
            paths(2),
            policy(
                GroupingPolicy::Multibus,
                Failback::Immediate,
                NoPathRetry::Fail,
            ),
            T0,
        );
        m.check_result(pid(1), CheckState::Down, "tur: EIO", T0);
        assert!(!m.path(pid(1)).unwrap().usable());
        m.check_result(pid(1), CheckState::Shaky, "shaky: held out", T0);
        let p = m.path(pid(1)).unwrap();
        assert!(!p.usable());
        assert_eq!(p.check.as_str(), "shaky");
        assert_eq!(p.reason.as_deref(), Some("shaky: held out"));
        // An active path a detector holds out is failed.
        let ev = m.check_result(pid(0), CheckState::Marginal, "marginal: sampling", T0);
        assert!(ev
            .iter()
            .any(|e| matches!(e, MapEvent::PathFailed { path, .. } if *path == pid(0))));
        // The next check that is let through reinstates it.
        m.check_result(pid(1), CheckState::Up, "", T0);
        assert!(m.path(pid(1)).unwrap().usable());
    }

    #[test]
    fn multibus_map_round_robins_over_both_paths() {
        let (mut m, ev) = Map::new(
            "m".into(),
            "w".into(),
            paths(2),
            policy(
                GroupingPolicy::Multibus,
                Failback::Immediate,
                NoPathRetry::Fail,
            ),
            T0,
        );
        assert_eq!(m.groups().len(), 1);
        assert_eq!(m.current_group(), Some(0));
        assert_eq!(m.groups()[0].status, GroupStatus::Active);
        assert!(matches!(
            ev[0],
            MapEvent::GroupSwitched {
                from: None,
                to: Some(0),
                ..
            }
        ));
        assert_eq!(
            route_n(&mut m, 4),
            vec![
                Route::Path(pid(0)),
                Route::Path(pid(1)),
                Route::Path(pid(0)),
                Route::Path(pid(1))
            ]
        );
    }

    #[test]
    fn io_error_fails_the_path_and_io_continues_on_the_other() {
        let (mut m, _) = Map::new(
            "m".into(),
            "w".into(),
            paths(2),
            policy(
                GroupingPolicy::Multibus,
                Failback::Immediate,
                NoPathRetry::Fail,
            ),
            T0,
        );
        let ev = m.fail_path(pid(0), "EIO", T0);
        assert_eq!(
            ev,
            vec![MapEvent::PathFailed {
                path: pid(0),
                reason: "EIO".into()
            }]
        );
        assert_eq!(route_n(&mut m, 3), vec![Route::Path(pid(1)); 3]);
        // A second failure report is a no-op.
        assert!(m.fail_path(pid(0), "EIO", T0).is_empty());
        // The checker finds it healthy again: reinstated.
        let ev = m.check_result(pid(0), CheckState::Up, "", Time(1000));
        assert_eq!(ev, vec![MapEvent::PathReinstated { path: pid(0) }]);
        assert!(route_n(&mut m, 2).contains(&Route::Path(pid(0))));
    }

    #[test]
    fn failover_group_switch_and_immediate_failback() {
        let mut ps = paths(2);
        ps[0].prio = Prio(50);
        ps[1].prio = Prio(10);
        let (mut m, _) = Map::new(
            "m".into(),
            "w".into(),
            ps,
            policy(
                GroupingPolicy::Failover,
                Failback::Immediate,
                NoPathRetry::Fail,
            ),
            T0,
        );
        assert_eq!(m.groups().len(), 2);
        assert_eq!(m.current_group(), Some(0));
        assert_eq!(m.route(&NoLoad), Route::Path(pid(0)));
        let ev = m.fail_path(pid(0), "EIO", T0);
        assert!(ev.contains(&MapEvent::GroupSwitched {
            from: Some(0),
            to: Some(1),
            reason: SwitchReason::Failover
        }));
        assert_eq!(m.route(&NoLoad), Route::Path(pid(1)));
        assert_eq!(m.groups()[0].status, GroupStatus::Disabled);
        let ev = m.check_result(pid(0), CheckState::Up, "", Time(5000));
        assert!(ev.contains(&MapEvent::GroupSwitched {
            from: Some(1),
            to: Some(0),
            reason: SwitchReason::Failback
        }));
        assert_eq!(m.route(&NoLoad), Route::Path(pid(0)));
    }

    #[test]
    fn manual_failback_stays_on_the_working_group() {
        let mut ps = paths(2);
        ps[0].prio = Prio(50);
        ps[1].prio = Prio(10);
        let (mut m, _) = Map::new(
            "m".into(),
            "w".into(),
            ps,
            policy(
                GroupingPolicy::Failover,
                Failback::Manual,
                NoPathRetry::Fail,
            ),
            T0,
        );
        m.fail_path(pid(0), "EIO", T0);
        m.check_result(pid(0), CheckState::Up, "", Time(5000));
        assert_eq!(m.current_group(), Some(1));
        assert_eq!(m.route(&NoLoad), Route::Path(pid(1)));
        assert!(!m.switch_group(0).is_empty());
        assert_eq!(m.route(&NoLoad), Route::Path(pid(0)));
    }

    #[test]
    fn all_paths_down_queues_then_resumes() {
        let (mut m, _) = Map::new(
            "m".into(),
            "w".into(),
            paths(2),
            policy(
                GroupingPolicy::Multibus,
                Failback::Immediate,
                NoPathRetry::Queue,
            ),
            T0,
        );
        m.fail_path(pid(0), "EIO", T0);
        let ev = m.fail_path(pid(1), "EIO", T0);
        assert!(ev.contains(&MapEvent::QueueingStarted { deadline: None }));
        assert_eq!(m.route(&NoLoad), Route::NoPath(Disposition::Queue));
        let ev = m.check_result(pid(1), CheckState::Up, "", Time(1000));
        assert!(ev.contains(&MapEvent::Resumed));
        assert_eq!(m.route(&NoLoad), Route::Path(pid(1)));
    }

    #[test]
    fn no_path_retry_n_fails_after_n_intervals() {
        let (mut m, _) = Map::new(
            "m".into(),
            "w".into(),
            paths(1),
            policy(
                GroupingPolicy::Multibus,
                Failback::Immediate,
                NoPathRetry::Retries(3),
            ),
            T0,
        );
        m.fail_path(pid(0), "EIO", T0);
        assert_eq!(m.route(&NoLoad), Route::NoPath(Disposition::Queue));
        assert!(m.tick(Time(2999)).is_empty());
        assert_eq!(m.tick(Time(3000)), vec![MapEvent::QueueExhausted]);
        assert_eq!(m.route(&NoLoad), Route::NoPath(Disposition::Fail));
    }

    #[test]
    fn disable_and_restore_queueing_keep_the_groups() {
        let (mut m, _) = Map::new(
            "m".into(),
            "w".into(),
            paths(2),
            policy(
                GroupingPolicy::Failover,
                Failback::Manual,
                NoPathRetry::Queue,
            ),
            T0,
        );
        assert!(!m.switch_group(1).is_empty());
        // Disabling while serving: no event, the admin's group stays.
        assert!(m.set_no_path_retry(NoPathRetry::Fail, T0).is_empty());
        assert_eq!(m.current_group(), Some(1));
        assert_eq!(m.policy().no_path_retry, NoPathRetry::Fail);
        m.fail_path(pid(0), "EIO", T0);
        m.fail_path(pid(1), "EIO", T0);
        assert_eq!(m.route(&NoLoad), Route::NoPath(Disposition::Fail));
        // Restoring while no path is usable queues again.
        let ev = m.set_no_path_retry(NoPathRetry::Queue, Time(10));
        assert!(
            ev.iter()
                .any(|e| matches!(e, MapEvent::QueueingStarted { .. })),
            "{ev:?}"
        );
        assert_eq!(m.route(&NoLoad), Route::NoPath(Disposition::Queue));
        // Disabling while queueing fails the held IO.
        assert_eq!(
            m.set_no_path_retry(NoPathRetry::Fail, Time(20)),
            vec![MapEvent::QueueExhausted]
        );
        assert_eq!(m.route(&NoLoad), Route::NoPath(Disposition::Fail));
    }

    #[test]
    fn no_path_retry_fail_fails_at_once() {
        let (mut m, _) = Map::new(
            "m".into(),
            "w".into(),
            paths(1),
            policy(
                GroupingPolicy::Multibus,
                Failback::Immediate,
                NoPathRetry::Fail,
            ),
            T0,
        );
        let ev = m.fail_path(pid(0), "EIO", T0);
        assert!(ev.contains(&MapEvent::FailingStarted));
        assert_eq!(m.route(&NoLoad), Route::NoPath(Disposition::Fail));
    }

    #[test]
    fn admin_failed_path_stays_failed_until_reinstated() {
        let (mut m, _) = Map::new(
            "m".into(),
            "w".into(),
            paths(2),
            policy(
                GroupingPolicy::Multibus,
                Failback::Immediate,
                NoPathRetry::Fail,
            ),
            T0,
        );
        m.admin_fail(pid(0), T0);
        assert!(m
            .check_result(pid(0), CheckState::Up, "", Time(1000))
            .is_empty());
        assert_eq!(m.paths()[0].dm, DmState::Failed);
        let ev = m.admin_reinstate(pid(0), Time(2000));
        assert_eq!(ev, vec![MapEvent::PathReinstated { path: pid(0) }]);
    }

    #[test]
    fn a_path_that_starts_down_starts_failed() {
        let mut ps = paths(2);
        ps[1] = Path::new_checked(
            ps[1].info.clone(),
            CheckState::Down,
            Some("no such file".into()),
            T0,
        );
        let (mut m, _) = Map::new(
            "m".into(),
            "w".into(),
            ps,
            policy(
                GroupingPolicy::Multibus,
                Failback::Immediate,
                NoPathRetry::Fail,
            ),
            T0,
        );
        assert_eq!(m.paths()[1].dm, DmState::Failed);
        assert_eq!(route_n(&mut m, 3), vec![Route::Path(pid(0)); 3]);
    }

    #[test]
    fn timeout_fails_the_path_pending_changes_nothing() {
        let (mut m, _) = Map::new(
            "m".into(),
            "w".into(),
            paths(2),
            policy(
                GroupingPolicy::Multibus,
                Failback::Immediate,
                NoPathRetry::Fail,
            ),
            T0,
        );
        assert!(m
            .check_result(pid(0), CheckState::Pending, "", T0)
            .iter()
            .all(|e| matches!(e, MapEvent::CheckerChanged { .. })));
        assert_eq!(m.paths()[0].dm, DmState::Active);
        let ev = m.check_result(pid(0), CheckState::Timeout, "check timed out", T0);
        assert!(ev.contains(&MapEvent::PathFailed {
            path: pid(0),
            reason: "check timed out".into()
        }));
    }

    #[test]
    fn a_failed_paths_reason_follows_the_latest_check() {
        let (mut m, _) = Map::new(
            "m".into(),
            "w".into(),
            paths(2),
            policy(
                GroupingPolicy::Multibus,
                Failback::Immediate,
                NoPathRetry::Fail,
            ),
            T0,
        );
        m.fail_path(pid(0), "EIO on write", T0);
        m.check_result(pid(0), CheckState::Down, "connection refused", Time(1000));
        assert_eq!(m.paths()[0].reason.as_deref(), Some("connection refused"));
        // An admin's reason is kept.
        m.admin_fail(pid(1), T0);
        m.check_result(pid(1), CheckState::Down, "whatever", Time(1000));
        assert_eq!(m.paths()[1].reason.as_deref(), Some("failed by admin"));
    }

    #[test]
    fn hotplug_adds_and_removes_paths_without_renumbering() {
        let (mut m, _) = Map::new(
            "m".into(),
            "w".into(),
            paths(2),
            policy(
                GroupingPolicy::Multibus,
                Failback::Immediate,
                NoPathRetry::Queue,
            ),
            T0,
        );
        let ev = m.remove_path(pid(1), T0);
        assert!(ev.contains(&MapEvent::PathFailed {
            path: pid(1),
            reason: "device removed".into()
        }));
        assert_eq!(m.groups()[0].members, vec![pid(0)]);
        assert_eq!(route_n(&mut m, 3), vec![Route::Path(pid(0)); 3]);
        // Checks of a removed path change nothing.
        assert!(m.check_result(pid(1), CheckState::Up, "", T0).is_empty());
        let mut p = Path::new(PathInfo {
            name: "p2".into(),
            ..Default::default()
        });
        p.check = CheckState::Up;
        let (id, _) = m.add_path(p, T0);
        assert_eq!(id, pid(2));
        assert_eq!(m.groups()[0].members, vec![pid(0), pid(2)]);
        assert!(route_n(&mut m, 4).contains(&Route::Path(pid(2))));
        // The last path leaving: queueing starts.
        m.remove_path(pid(0), T0);
        let ev = m.remove_path(pid(2), T0);
        assert!(
            ev.contains(&MapEvent::QueueingStarted { deadline: None }),
            "{ev:?}"
        );
    }

    #[test]
    fn reconfigure_regroups() {
        let (mut m, _) = Map::new(
            "m".into(),
            "w".into(),
            paths(2),
            policy(
                GroupingPolicy::Multibus,
                Failback::Immediate,
                NoPathRetry::Fail,
            ),
            T0,
        );
        m.reconfigure(
            policy(
                GroupingPolicy::Failover,
                Failback::Immediate,
                NoPathRetry::Fail,
            ),
            T0,
        );
        assert_eq!(m.groups().len(), 2);
        assert!(m.current_group().is_some());
    }

    fn members(m: &Map) -> Vec<Vec<usize>> {
        m.groups()
            .iter()
            .map(|g| g.members.iter().map(|id| id.index()).collect())
            .collect()
    }

    /// The bug of issue 12: with `failover` grouping and equal priorities
    /// the first path, back, takes IO back (ties go to the earlier group),
    /// per failback mode.
    #[test]
    fn failover_policy_fails_back_to_the_first_path_per_failback_mode() {
        for (fb, back) in [
            (Failback::Immediate, Some(0)),
            (Failback::Followover, Some(0)),
            (Failback::DeferredSecs(5), Some(1)),
            (Failback::Manual, Some(1)),
        ] {
            let (mut m, _) = Map::new(
                "m".into(),
                "w".into(),
                paths(2),
                policy(GroupingPolicy::Failover, fb, NoPathRetry::Fail),
                T0,
            );
            assert_eq!(m.current_group(), Some(0));
            m.check_result(pid(0), CheckState::Down, "gone", Time(1000));
            assert_eq!(m.current_group(), Some(1), "{fb:?}");
            let ev = m.check_result(pid(0), CheckState::Up, "", Time(2000));
            assert_eq!(m.current_group(), back, "{fb:?}: {ev:?}");
            if back == Some(0) {
                assert!(ev.contains(&MapEvent::GroupSwitched {
                    from: Some(1),
                    to: Some(0),
                    reason: SwitchReason::Failback
                }));
            }
            // Deferred: five seconds later.
            m.tick(Time(6999));
            let ev = m.tick(Time(7000));
            let want = if fb == Failback::DeferredSecs(5) {
                Some(0)
            } else {
                back
            };
            assert_eq!(m.current_group(), want, "{fb:?}: {ev:?}");
        }
    }

    #[test]
    fn followover_ignores_a_path_whose_checker_never_saw_it_down() {
        let (mut m, _) = Map::new(
            "m".into(),
            "w".into(),
            paths(2),
            policy(
                GroupingPolicy::Failover,
                Failback::Followover,
                NoPathRetry::Fail,
            ),
            T0,
        );
        // An IO error, not a check: the checker still says ready.
        m.fail_path(pid(0), "EIO", T0);
        assert_eq!(m.current_group(), Some(1));
        m.check_result(pid(0), CheckState::Up, "", Time(1000));
        assert_eq!(m.paths()[0].dm, DmState::Active);
        assert_eq!(m.current_group(), Some(1));
    }

    #[test]
    fn immediate_failback_undoes_an_admin_switch_at_the_next_check() {
        let mut ps = paths(2);
        ps[0].prio = Prio(50);
        let (mut m, _) = Map::new(
            "m".into(),
            "w".into(),
            ps,
            policy(
                GroupingPolicy::Failover,
                Failback::Immediate,
                NoPathRetry::Fail,
            ),
            T0,
        );
        m.switch_group(1);
        assert_eq!(m.current_group(), Some(1));
        m.check_result(pid(1), CheckState::Up, "", Time(1000));
        assert_eq!(m.current_group(), Some(0));
    }

    fn alua_paths() -> Vec<Path> {
        let mut ps = paths(4);
        for (i, p) in ps.iter_mut().enumerate() {
            p.prio = Prio(if i < 2 { 50 } else { 10 });
            p.info.tpg = Some(if i < 2 { 1 } else { 2 });
        }
        ps
    }

    #[test]
    fn group_by_prio_regroups_when_priorities_change_under_immediate() {
        let (mut m, _) = Map::new(
            "m".into(),
            "w".into(),
            alua_paths(),
            policy(
                GroupingPolicy::GroupByPrio,
                Failback::Immediate,
                NoPathRetry::Fail,
            ),
            T0,
        );
        assert_eq!(members(&m), vec![vec![0, 1], vec![2, 3]]);
        assert_eq!(m.groups()[0].prio, Prio(50));
        // The array moves the optimized state to the other port group.
        let ev = m.set_path_prio(pid(0), Prio(10), T0);
        assert_eq!(
            ev[0],
            MapEvent::PrioChanged {
                path: pid(0),
                from: Prio(50),
                to: Prio(10)
            }
        );
        assert!(ev.contains(&MapEvent::Regrouped { groups: 2 }));
        assert_eq!(members(&m), vec![vec![1], vec![0, 2, 3]]);
        assert_eq!(m.current_group(), Some(0));
        m.set_path_prio(pid(1), Prio(10), T0);
        m.set_path_prio(pid(2), Prio(50), T0);
        m.set_path_prio(pid(3), Prio(50), T0);
        assert_eq!(members(&m), vec![vec![2, 3], vec![0, 1]]);
        assert_eq!(m.current_group(), Some(0));
        let mut seen = route_n(&mut m, 4);
        seen.sort_by_key(|r| format!("{r:?}"));
        seen.dedup();
        assert_eq!(seen, vec![Route::Path(pid(2)), Route::Path(pid(3))]);
        // Same priority again: nothing.
        assert!(m.set_path_prio(pid(3), Prio(50), T0).is_empty());
    }

    /// Seen with LIO and multipathd as the oracle (tests/vm_debian.rs):
    /// groups formed while a path was down rank it last; when a check
    /// brings it back the map is reloaded in priority order.
    #[test]
    fn group_by_prio_reloads_when_a_path_formed_down_comes_back() {
        let mut ps = paths(2);
        ps[0].prio = Prio(50);
        ps[1].prio = Prio(50);
        let (mut m, _) = Map::new(
            "m".into(),
            "w".into(),
            ps,
            policy(
                GroupingPolicy::GroupByPrio,
                Failback::Immediate,
                NoPathRetry::Fail,
            ),
            T0,
        );
        assert_eq!(members(&m), vec![vec![0, 1]]);
        m.check_result(pid(1), CheckState::Down, "unavailable", Time(1000));
        // Path 0 goes standby while path 1 is down: [0] (1), [1] (0).
        m.set_path_prio(pid(0), Prio(1), Time(2000));
        assert_eq!(members(&m), vec![vec![0], vec![1]]);
        assert_eq!(m.current_group(), Some(0));
        // Path 1 comes back optimized: reloaded, its group first.
        let ev = m.check_result(pid(1), CheckState::Up, "", Time(3000));
        assert!(
            ev.contains(&MapEvent::PathReinstated { path: pid(1) }),
            "{ev:?}"
        );
        assert!(ev.contains(&MapEvent::Regrouped { groups: 2 }), "{ev:?}");
        assert_eq!(members(&m), vec![vec![1], vec![0]]);
        assert_eq!(m.groups()[0].prio, Prio(50));
        assert_eq!(m.current_group(), Some(0));
        assert_eq!(route_n(&mut m, 3), vec![Route::Path(pid(1)); 3]);
        // A path coming back into groups still in order: no reload.
        m.check_result(pid(0), CheckState::Down, "x", Time(4000));
        let ev = m.check_result(pid(0), CheckState::Ghost, "", Time(5000));
        assert!(
            !ev.iter().any(|e| matches!(e, MapEvent::Regrouped { .. })),
            "{ev:?}"
        );
    }

    #[test]
    fn group_by_prio_under_manual_keeps_groups_until_switchgroup() {
        let (mut m, _) = Map::new(
            "m".into(),
            "w".into(),
            alua_paths(),
            policy(
                GroupingPolicy::GroupByPrio,
                Failback::Manual,
                NoPathRetry::Fail,
            ),
            T0,
        );
        for (i, prio) in [10, 10, 50, 50].into_iter().enumerate() {
            let ev = m.set_path_prio(pid(i), Prio(prio), T0);
            assert!(!ev.iter().any(|e| matches!(
                e,
                MapEvent::Regrouped { .. } | MapEvent::GroupSwitched { .. }
            )));
        }
        assert_eq!(members(&m), vec![vec![0, 1], vec![2, 3]]);
        assert_eq!(m.groups()[0].prio, Prio(10));
        assert_eq!(m.groups()[1].prio, Prio(50));
        assert_eq!(m.current_group(), Some(0));
        m.switch_group(1);
        assert_eq!(m.current_group(), Some(1));
    }

    #[test]
    fn group_by_prio_under_deferred_switches_later_without_regrouping() {
        let (mut m, _) = Map::new(
            "m".into(),
            "w".into(),
            alua_paths(),
            policy(
                GroupingPolicy::GroupByPrio,
                Failback::DeferredSecs(3),
                NoPathRetry::Fail,
            ),
            T0,
        );
        for (i, prio) in [10, 10, 50, 50].into_iter().enumerate() {
            m.set_path_prio(pid(i), Prio(prio), T0);
        }
        assert_eq!(m.current_group(), Some(0));
        assert!(m.tick(Time(2999)).is_empty());
        let ev = m.tick(Time(3000));
        assert_eq!(m.current_group(), Some(1), "{ev:?}");
        assert_eq!(members(&m), vec![vec![0, 1], vec![2, 3]]);
    }

    #[test]
    fn group_by_tpg_and_node_name_use_the_path_facts() {
        let mut ps = alua_paths();
        ps[0].info.node_name = Some("iqn.a".into());
        ps[1].info.node_name = Some("iqn.b".into());
        ps[2].info.node_name = Some("iqn.a".into());
        ps[3].info.node_name = Some("iqn.b".into());
        let (m, _) = Map::new(
            "m".into(),
            "w".into(),
            ps.clone(),
            policy(
                GroupingPolicy::GroupByTpg,
                Failback::Immediate,
                NoPathRetry::Fail,
            ),
            T0,
        );
        assert_eq!(members(&m), vec![vec![0, 1], vec![2, 3]]);
        let (m, _) = Map::new(
            "m".into(),
            "w".into(),
            ps,
            policy(
                GroupingPolicy::GroupByNodeName,
                Failback::Immediate,
                NoPathRetry::Fail,
            ),
            T0,
        );
        assert_eq!(members(&m), vec![vec![0, 2], vec![1, 3]]);
    }

    #[test]
    fn rr_weight_priorities_weights_round_robin_by_priority() {
        let mut ps = paths(2);
        ps[0].prio = Prio(3);
        let mut pol = policy(
            GroupingPolicy::Multibus,
            Failback::Immediate,
            NoPathRetry::Fail,
        );
        pol.rr_weight = RrWeight::Priorities;
        let (mut m, _) = Map::new("m".into(), "w".into(), ps, pol, T0);
        let routes = route_n(&mut m, 8);
        let on0 = routes.iter().filter(|r| **r == Route::Path(pid(0))).count();
        assert_eq!(on0, 6, "{routes:?}");
        // A new priority is a new weight.
        m.set_path_prio(pid(0), Prio(1), T0);
        let routes = route_n(&mut m, 8);
        let on0 = routes.iter().filter(|r| **r == Route::Path(pid(0))).count();
        assert_eq!(on0, 4, "{routes:?}");
    }

    fn routes(m: &mut Map, n: usize) -> Vec<PathId> {
        (0..n)
            .map(|_| match m.route(&NoLoad) {
                Route::Path(p) => p,
                r => panic!("no path: {r:?}"),
            })
            .collect()
    }

    #[test]
    fn marginal_paths_get_their_own_groups_last() {
        let (mut m, _) = Map::new(
            "m".into(),
            "w".into(),
            paths(3),
            policy(
                GroupingPolicy::Multibus,
                Failback::Manual,
                NoPathRetry::Fail,
            ),
            T0,
        );
        assert_eq!(m.groups().len(), 1);
        let ev = m.set_marginal(pid(0), true, T0);
        assert_eq!(
            ev[..2],
            [
                MapEvent::MarginalChanged {
                    path: pid(0),
                    marginal: true
                },
                MapEvent::Regrouped { groups: 2 }
            ]
        );
        assert!(m.path(pid(0)).unwrap().marginal);
        let g = m.groups();
        assert_eq!(g[0].members, vec![pid(1), pid(2)]);
        assert!(!g[0].marginal);
        assert_eq!(g[1].members, vec![pid(0)]);
        assert!(g[1].marginal);
        assert_eq!(m.current_group(), Some(0));
        assert_eq!(g[1].status, GroupStatus::Enabled);
        // IO stays off the marginal path while a normal one is usable.
        assert!(routes(&mut m, 10).iter().all(|&p| p != pid(0)));
        // Unchanged: nothing.
        assert!(m.set_marginal(pid(0), true, T0).is_empty());
        // No normal path usable: the marginal group carries IO.
        m.fail_path(pid(1), "EIO", T0);
        m.fail_path(pid(2), "EIO", T0);
        assert_eq!(m.current_group(), Some(1));
        assert_eq!(routes(&mut m, 3), vec![pid(0); 3]);
        // A normal path back: IO leaves the marginal group (failback
        // manual keeps it there, as the kernel does)...
        m.check_result(pid(1), CheckState::Up, "", T0);
        assert_eq!(m.current_group(), Some(1));
        // ... until the mark is cleared: the map reloads with one group.
        let ev = m.set_marginal(pid(0), false, T0);
        assert!(ev.contains(&MapEvent::Regrouped { groups: 1 }));
        assert_eq!(m.groups().len(), 1);
        assert!(!m.groups()[0].marginal);
        assert_eq!(m.current_group(), Some(0));
        // Removed or unknown paths: nothing.
        assert!(m.set_marginal(pid(9), true, T0).is_empty());
    }

    #[test]
    fn marginal_group_ranks_below_a_worse_normal_group_under_immediate() {
        let mut ps = paths(2);
        ps[0].prio = Prio(50);
        ps[1].prio = Prio(1);
        let (mut m, _) = Map::new(
            "m".into(),
            "w".into(),
            ps,
            policy(
                GroupingPolicy::GroupByPrio,
                Failback::Immediate,
                NoPathRetry::Fail,
            ),
            T0,
        );
        assert_eq!(m.groups()[0].members, vec![pid(0)]);
        m.set_marginal(pid(0), true, T0);
        assert_eq!(m.groups()[0].members, vec![pid(1)]);
        assert_eq!(m.groups()[1].members, vec![pid(0)]);
        assert_eq!(m.current_group(), Some(0));
        // A check of the marginal path does not fail back to it.
        m.check_result(pid(0), CheckState::Up, "", T0);
        assert_eq!(m.current_group(), Some(0));
        assert_eq!(routes(&mut m, 4), vec![pid(1); 4]);
        m.set_held_until(pid(0), Some(Time(5000)));
        assert_eq!(m.path(pid(0)).unwrap().held_until, Some(Time(5000)));
        m.set_held_until(pid(0), None);
        assert_eq!(m.path(pid(0)).unwrap().held_until, None);
    }

    /// A path whose priority flips 50/1 at every check, under
    /// group_by_prio + failback immediate: the map regroups and switches
    /// at every flip (as multipathd reloads), every request still goes to
    /// a usable path, and each flip causes a bounded number of events.
    #[test]
    fn a_priority_flipping_every_check_keeps_io_on_usable_paths() {
        let mut ps = paths(3);
        for p in &mut ps {
            p.prio = Prio(10);
        }
        let (mut m, _) = Map::new(
            "m".into(),
            "w".into(),
            ps,
            policy(
                GroupingPolicy::GroupByPrio,
                Failback::Immediate,
                NoPathRetry::Queue,
            ),
            T0,
        );
        let mut events = 0usize;
        let mut switches = 0usize;
        for i in 0..1000u64 {
            let now = Time(i * 1000);
            let prio = if i % 2 == 0 { Prio(50) } else { Prio(1) };
            // The path's check passes, then its prioritizer answers.
            let mut ev = m.check_result(pid(0), CheckState::Up, "", now);
            ev.extend(m.set_path_prio(pid(0), prio, now));
            // Another path fails and comes back now and then.
            if i % 97 == 0 {
                ev.extend(m.fail_path(pid(1), "EIO", now));
            }
            if i % 97 == 3 {
                ev.extend(m.check_result(pid(1), CheckState::Up, "", now));
            }
            assert!(ev.len() <= 6, "check {i}: {ev:?}");
            assert!(!ev.iter().any(|e| matches!(
                e,
                MapEvent::QueueingStarted { .. }
                    | MapEvent::QueueExhausted
                    | MapEvent::FailingStarted
            )));
            events += ev.len();
            let mut on_flipper = 0;
            for _ in 0..8 {
                match m.route(&NoLoad) {
                    Route::Path(p) => {
                        assert!(m.path(p).unwrap().usable(), "check {i}");
                        on_flipper += usize::from(p == pid(0));
                    }
                    r => panic!("check {i}: {r:?}"),
                }
            }
            // IO follows the priority: all on the flipping path while it
            // is the best, none while it is the worst.
            if prio == Prio(50) {
                assert_eq!(on_flipper, 8, "check {i}");
                switches += 1;
            } else {
                assert_eq!(on_flipper, 0, "check {i}");
            }
            // The group IO goes to is the best one.
            let cur = m.current_group().unwrap();
            assert!(m.groups().iter().all(|g| g.prio <= m.groups()[cur].prio));
        }
        // A priority change and a regroup per flip, a few more around
        // the path failures.
        assert!(events <= 1000 * 3 + 60, "{events}");
        assert_eq!(switches, 500);
    }
}
