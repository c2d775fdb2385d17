//! Unit tests of [`MapEngine`] on in-memory paths with a manual clock.
//!
//! Time never passes by itself: io_timeout and no_path_retry deadlines are
//! reached by advancing the clock and calling [`MapEngine::tick`]. The only
//! waiting is for the path's IO threads to finish a job (a completion
//! received with a timeout, or [`eventually`] for a counter), never for
//! logic to happen.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{self, error::TryRecvError, UnboundedReceiver};

use super::*;
use crate::export::{Completion, ReplySender};
use crate::model::{DmState, Path, PathInfo};
use crate::policy::{Failback, GroupingPolicy, NoPathRetry, RrWeight, SelectorKind};
use crate::transport::{MemLun, MemScript};
use crate::units::Prio;

/// How long a test waits for IO threads before it gives up (a failure,
/// not a timing assumption: everything normally ends in microseconds).
const PATIENCE: Duration = Duration::from_secs(10);
const BLOCK: u32 = 4096;

/// Waits for IO threads to reach a state (polls; fails after PATIENCE).
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn pid(i: usize) -> PathId {
    PathId::new(i)
}

struct Setup {
    grouping: GroupingPolicy,
    repeat: u32,
    failback: Failback,
    no_path_retry: NoPathRetry,
    prios: Vec<i32>,
}

impl Setup {
    fn multibus(paths: usize) -> Setup {
        Setup {
            grouping: GroupingPolicy::Multibus,
            repeat: 1,
            failback: Failback::Immediate,
            no_path_retry: NoPathRetry::Fail,
            prios: vec![1; paths],
        }
    }
    fn repeat(mut self, n: u32) -> Setup {
        self.repeat = n;
        self
    }
    fn no_path_retry(mut self, n: NoPathRetry) -> Setup {
        self.no_path_retry = n;
        self
    }
    fn start(self) -> Rig {
        let policy = MapPolicy {
            grouping: self.grouping,
            selector: SelectorKind::RoundRobin,
            repeat: self.repeat,
            rr_weight: RrWeight::Uniform,
            failback: self.failback,
            no_path_retry: self.no_path_retry,
            polling_interval: Duration::from_secs(1),
        };
        let clock = Clock::manual();
        let lun = MemLun::new(1 << 20, 512);
        let mut paths = Vec::new();
        let mut devs = Vec::new();
        let mut scripts = Vec::new();
        for (i, prio) in self.prios.iter().enumerate() {
            let name = format!("p{i}");
            let (dev, script) = PathDev::memory(&name, &lun);
            let mut p = Path::new_checked(
                PathInfo {
                    name,
                    ..Default::default()
                },
                CheckState::Up,
                None,
                clock.now(),
            );
            p.prio = Prio(*prio);
            paths.push(p);
            devs.push(dev);
            scripts.push(script);
        }
        let (map, _) = Map::new("m".into(), "w".into(), paths, policy, clock.now());
        let info = MapInfo {
            name: "m".into(),
            wwid: "w".into(),
            vendor: "UMPATH".into(),
            product: "MEMORY".into(),
            size: lun.size(),
        };
        let engine = MapEngine::start(info, map, devs.clone(), clock.clone());
        engine.set_io_timeout(Some(Duration::from_secs(1)));
        let (tx, rx) = mpsc::unbounded_channel();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a tokio runtime");
        Rig {
            engine,
            clock,
            lun,
            devs,
            scripts,
            tx: tx.into(),
            rx,
            rt,
            cookie: 0,
        }
    }
}

struct Rig {
    engine: MapEngine,
    clock: Clock,
    lun: MemLun,
    devs: Vec<Arc<PathDev>>,
    scripts: Vec<MemScript>,
    tx: ReplySender,
    rx: UnboundedReceiver<Completion>,
    rt: tokio::runtime::Runtime,
    cookie: u64,
}

impl Rig {
    fn submit(&mut self, op: Op, offset: u64, buf: Vec<u8>) -> u64 {
        self.cookie += 1;
        self.engine.submit(Request {
            op,
            offset,
            len: BLOCK,
            fua: false,
            cookie: self.cookie,
            buf: buf.into(),
            reply: self.tx.clone(),
        });
        self.cookie
    }

    fn read(&mut self, offset: u64) -> u64 {
        self.submit(Op::Read, offset, vec![0; BLOCK as usize])
    }

    fn write(&mut self, offset: u64, byte: u8) -> u64 {
        self.submit(Op::Write, offset, vec![byte; BLOCK as usize])
    }

    /// The next completion (fails the test if none comes).
    fn recv(&mut self) -> Completion {
        let rx = &mut self.rx;
        self.rt
            .block_on(async { tokio::time::timeout(PATIENCE, rx.recv()).await })
            .expect("a completion in time")
            .expect("the channel is open")
    }

    /// The completion of request `cookie`, which must be the next one.
    fn result(&mut self, cookie: u64) -> Result<Vec<u8>, IoError> {
        let c = self.recv();
        assert_eq!(c.cookie, cookie, "completions out of order");
        c.result.map(|()| c.buf.to_vec())
    }

    /// True if no completion is waiting.
    fn quiet(&mut self) -> bool {
        matches!(self.rx.try_recv(), Err(TryRecvError::Empty))
    }

    fn path(&self, i: usize) -> Path {
        self.engine
            .snapshot()
            .map
            .path(pid(i))
            .cloned()
            .expect("a path")
    }

    fn counters(&self, i: usize) -> PathCounters {
        self.engine.snapshot().paths[i].clone()
    }

    fn ios(&self) -> Vec<u64> {
        self.scripts.iter().map(MemScript::ios).collect()
    }

    /// Which path served each of `n` reads, issued one after the other.
    fn serving_paths(&mut self, n: usize) -> Vec<usize> {
        (0..n)
            .map(|_| {
                let before = self.ios();
                let c = self.read(0);
                self.result(c).expect("read ok");
                let after = self.ios();
                let served: Vec<usize> =
                    (0..after.len()).filter(|&i| after[i] > before[i]).collect();
                assert_eq!(served.len(), 1, "one path serves a read: {served:?}");
                served[0]
            })
            .collect()
    }

    fn advance_and_tick(&self, ms: u64) {
        self.clock.advance(Duration::from_millis(ms));
        self.engine.tick();
    }

    /// Waits until the IO threads of path `i` have nothing in flight and
    /// nothing stuck.
    fn drained(&self, i: usize) {
        eventually(&format!("p{i} to drain"), || {
            let c = self.counters(i);
            c.in_flight == 0 && c.stuck == 0
        });
    }

    /// Waits until path `i`'s IO threads have exited (each holds a
    /// reference to the device; the engine's tombstone keeps one).
    fn workers_gone(&self, i: usize) {
        eventually(&format!("p{i}'s IO threads to exit"), || {
            Arc::strong_count(&self.devs[i]) == 2
        });
    }
}

#[test]
fn the_engine_reads_time_from_its_clock() {
    let r = Setup::multibus(1).start();
    assert_eq!(r.engine.now(), Time(0));
    r.clock.advance(Duration::from_millis(1234));
    assert_eq!(r.engine.now(), Time(1234));
    assert!(r.engine.clock().is_manual());
}

#[test]
fn round_robin_gives_each_path_rr_min_io_requests_in_turn() {
    let mut r = Setup::multibus(2).repeat(2).start();
    assert_eq!(r.serving_paths(8), vec![0, 0, 1, 1, 0, 0, 1, 1]);
    let mut r = Setup::multibus(3).start();
    assert_eq!(r.serving_paths(6), vec![0, 1, 2, 0, 1, 2]);
}

#[test]
fn reads_and_writes_reach_the_shared_lun() {
    let mut r = Setup::multibus(2).start();
    let w = r.write(8192, 0x5a);
    r.result(w).expect("write ok");
    assert_eq!(r.lun.contents(8192, 4), vec![0x5a; 4]);
    // The next request goes to the other path, which sees the same LUN.
    let c = r.read(8192);
    assert_eq!(r.result(c).expect("read ok"), vec![0x5a; BLOCK as usize]);
    assert_eq!(r.ios(), vec![1, 1]);
}

#[test]
fn a_shrunk_map_fails_io_past_its_new_end_as_nbd_asks() {
    let mut r = Setup::multibus(2).start();
    let size = r.engine.size();
    assert_eq!(r.engine.set_size(size / 2), size);
    assert_eq!(r.engine.size(), size / 2);
    assert_eq!(Export::size(&r.engine), size / 2);
    assert_eq!(r.engine.snapshot().info.size, size / 2);
    let end = size / 2;
    let w = r.write(end, 0x11);
    assert_eq!(r.result(w), Err(IoError::NoSpc));
    let c = r.read(end - u64::from(BLOCK) / 2);
    assert_eq!(r.result(c), Err(IoError::Inval));
    assert_eq!(r.ios(), vec![0, 0], "no path saw them");
    // Inside the new end, and past it again after growing back.
    let c = r.read(end - u64::from(BLOCK));
    r.result(c).expect("read inside");
    r.engine.set_size(size);
    let w = r.write(end, 0x22);
    r.result(w).expect("write after growing");
    assert_eq!(r.lun.contents(end, 2), vec![0x22, 0x22]);
}

#[test]
fn a_path_error_fails_the_path_and_the_request_succeeds_on_another() {
    let mut r = Setup::multibus(2).start();
    r.scripts[0].fail_next_path_error();
    let w = r.write(0, 0xab);
    r.result(w).expect("retried on p1");
    assert_eq!(r.lun.contents(0, 2), vec![0xab, 0xab]);
    let p0 = r.path(0);
    assert_eq!(p0.dm, DmState::Failed);
    assert!(
        p0.reason
            .as_deref()
            .is_some_and(|s| s.contains("Input/output error")),
        "{p0:?}"
    );
    assert_eq!(r.counters(0).errors, 1);
    assert_eq!(r.ios(), vec![0, 1]);
    // IO keeps going to p1 only.
    assert_eq!(r.serving_paths(3), vec![1, 1, 1]);
}

#[test]
fn a_lun_error_goes_to_the_client_and_leaves_the_path_up() {
    let mut r = Setup::multibus(2).start();
    r.scripts[0].fail_next_lun_error();
    let c = r.read(0);
    assert_eq!(r.result(c), Err(IoError::Io));
    assert_eq!(r.path(0).dm, DmState::Active);
    assert_eq!(r.counters(0).errors, 1);
    assert_eq!(r.ios(), vec![0, 0], "not retried elsewhere");
    assert_eq!(r.serving_paths(2), vec![1, 0]);
}

#[test]
fn no_path_retry_queue_holds_io_until_a_path_returns() {
    let mut r = Setup::multibus(1).no_path_retry(NoPathRetry::Queue).start();
    r.scripts[0].fail_next_path_error();
    let c = r.read(0);
    // The read failed p0, the only path: it is held.
    eventually("the read to be held", || r.engine.snapshot().held == 1);
    assert_eq!(r.path(0).dm, DmState::Failed);
    r.advance_and_tick(3_600_000);
    assert!(r.quiet(), "held forever with queue");
    let c2 = r.read(4096);
    assert_eq!(r.engine.snapshot().held, 2);
    assert_eq!(r.engine.outstanding(), 2);
    // A good check reinstates p0: the held requests go out, in order.
    r.engine.check_result(pid(0), CheckState::Up, "");
    assert_eq!(r.path(0).dm, DmState::Active);
    let mut done: Vec<(u64, bool)> = (0..2)
        .map(|_| r.recv())
        .map(|x| (x.cookie, x.result.is_ok()))
        .collect();
    done.sort();
    assert_eq!(done, vec![(c, true), (c2, true)]);
    assert_eq!(r.engine.snapshot().held, 0);
}

#[test]
fn no_path_retry_fail_fails_io_at_once() {
    let mut r = Setup::multibus(1).start();
    r.engine.admin_fail(pid(0));
    let c = r.read(0);
    // Answered during submit, no IO thread involved.
    assert_eq!(r.result(c), Err(IoError::Io));
    assert_eq!(r.engine.snapshot().held, 0);
}

/// `show maps stats`: map_loads, failures, total_q_time, q_timeouts.
#[test]
fn map_statistics_count_loads_failures_queueing_time_and_timeouts() {
    let r = Setup::multibus(2)
        .no_path_retry(NoPathRetry::Retries(3))
        .start();
    let stats = || r.engine.snapshot().stats;
    assert_eq!(stats().map_loads, 1, "the assembly");
    assert_eq!(stats().total_q_time, Duration::ZERO);
    r.engine.admin_fail(pid(0));
    r.engine.admin_fail(pid(1));
    assert_eq!(stats().map_failures, 1);
    // Queueing so far counts while it lasts.
    r.advance_and_tick(2000);
    assert_eq!(stats().total_q_time, Duration::from_secs(2));
    r.advance_and_tick(1000);
    // The 3 intervals ran out.
    assert_eq!(stats().q_timeouts, 1);
    assert_eq!(stats().total_q_time, Duration::from_secs(3));
    r.advance_and_tick(5000);
    assert_eq!(stats().total_q_time, Duration::from_secs(3), "not queueing");
    r.engine.admin_reinstate(pid(1));
    r.engine.admin_fail(pid(1));
    assert_eq!(stats().map_failures, 2);
    r.advance_and_tick(1500);
    r.engine.admin_reinstate(pid(0));
    assert_eq!(stats().total_q_time, Duration::from_millis(4500));
    assert_eq!(stats().q_timeouts, 1);
    let policy = r.engine.snapshot().map.policy().clone();
    r.engine.reconfigure(policy);
    assert_eq!(stats().map_loads, 2, "a reconfigure loads the map");
}

#[test]
fn no_path_retry_n_holds_io_for_n_polling_intervals_then_fails_it() {
    let mut r = Setup::multibus(2)
        .no_path_retry(NoPathRetry::Retries(3))
        .start();
    r.engine.admin_fail(pid(0));
    r.engine.admin_fail(pid(1));
    let c = r.read(0);
    assert_eq!(r.engine.snapshot().held, 1);
    // 3 intervals of 1 s: still held 1 ms before the deadline.
    r.advance_and_tick(2999);
    assert!(r.quiet());
    assert_eq!(r.engine.snapshot().held, 1);
    r.advance_and_tick(1);
    assert_eq!(r.result(c), Err(IoError::Io));
    assert_eq!(r.engine.snapshot().held, 0);
    // Until a path returns, new IO fails at once.
    let c = r.read(0);
    assert_eq!(r.result(c), Err(IoError::Io));
    r.engine.admin_reinstate(pid(1));
    let c = r.read(0);
    r.result(c).expect("a path is back");
}

#[test]
fn io_timeout_reissues_a_hung_read_and_drops_the_late_answer() {
    let mut r = Setup::multibus(2).start();
    r.lun.fill(0, &[0x11; BLOCK as usize]);
    r.scripts[0].hang();
    let c = r.read(0);
    assert!(r.scripts[0].wait_hung(1, PATIENCE));
    r.advance_and_tick(999);
    assert!(r.quiet());
    assert_eq!(r.path(0).dm, DmState::Active);
    r.advance_and_tick(1);
    // p0 failed, the read reissued on p1 with a fresh buffer.
    assert_eq!(r.result(c).expect("reissued"), vec![0x11; BLOCK as usize]);
    assert_eq!(r.path(0).dm, DmState::Failed);
    assert_eq!(r.counters(0).stuck, 1);
    // The original ends late: its answer is dropped.
    r.scripts[0].release();
    r.drained(0);
    assert!(r.quiet(), "the late answer must be dropped");
    assert_eq!(r.counters(0).stuck, 0);
    // Ticks after that change nothing.
    r.advance_and_tick(10_000);
    assert!(r.quiet());
}

#[test]
fn io_timeout_holds_a_hung_write_until_it_ends_and_acknowledges_its_success() {
    let mut r = Setup::multibus(2).start();
    r.scripts[0].hang();
    let w = r.write(0, 0x22);
    assert!(r.scripts[0].wait_hung(1, PATIENCE));
    r.advance_and_tick(1000);
    // p0 failed, but the write is neither answered nor reissued.
    assert_eq!(r.path(0).dm, DmState::Failed);
    assert!(r.quiet());
    assert_eq!(r.ios(), vec![0, 0]);
    assert_eq!(r.counters(0).stuck, 1);
    r.advance_and_tick(60_000);
    assert!(r.quiet(), "still held");
    // The original lands: acknowledged as is.
    r.scripts[0].release();
    r.result(w).expect("the original succeeded");
    assert_eq!(r.ios(), vec![1, 0]);
    assert_eq!(r.lun.contents(0, 1), vec![0x22]);
}

#[test]
fn io_timeout_reissues_a_held_write_once_the_original_failed() {
    let mut r = Setup::multibus(2).start();
    r.scripts[0].hang();
    let w = r.write(4096, 0x33);
    assert!(r.scripts[0].wait_hung(1, PATIENCE));
    r.advance_and_tick(1000);
    assert!(r.quiet());
    // The original ends with an error: now it is safe to reissue.
    r.scripts[0].fail_next_path_error();
    r.scripts[0].release();
    r.result(w).expect("reissued on p1");
    assert_eq!(r.ios(), vec![0, 1]);
    assert_eq!(r.lun.contents(4096, 1), vec![0x33]);
}

#[test]
fn a_path_with_requests_stuck_past_io_timeout_is_not_reinstated_until_they_end() {
    let mut r = Setup::multibus(2).start();
    r.scripts[0].hang();
    let c = r.read(0);
    assert!(r.scripts[0].wait_hung(1, PATIENCE));
    r.advance_and_tick(1000);
    r.result(c).expect("reissued");
    // The checker finds p0 fine (its IO hangs, its checks do not).
    r.engine.check_result(pid(0), CheckState::Up, "");
    let p0 = r.path(0);
    assert_eq!((p0.dm, p0.check), (DmState::Failed, CheckState::Up));
    assert_eq!(
        p0.reason.as_deref(),
        Some("1 request(s) stuck past io_timeout; reinstated when they end")
    );
    assert_eq!(r.serving_paths(2), vec![1, 1]);
    // A bad check still says why it is bad.
    r.engine
        .check_result(pid(0), CheckState::Down, "connection refused");
    assert_eq!(r.path(0).reason.as_deref(), Some("connection refused"));
    // The stuck read ends; the next good check reinstates p0.
    r.scripts[0].release();
    r.drained(0);
    r.engine.check_result(pid(0), CheckState::Up, "");
    assert_eq!(r.path(0).dm, DmState::Active);
    assert!(r.serving_paths(2).contains(&0));
}

#[test]
fn a_reinstated_path_carries_io_again() {
    let mut r = Setup::multibus(2).start();
    r.scripts[1].fail_next_path_error();
    assert_eq!(r.serving_paths(4), vec![0, 0, 0, 0]);
    assert_eq!(r.path(1).dm, DmState::Failed);
    r.engine.check_result(pid(1), CheckState::Up, "");
    let served = r.serving_paths(4);
    assert_eq!(served.iter().filter(|&&p| p == 1).count(), 2, "{served:?}");
}

#[test]
fn failback_immediate_returns_to_the_better_group() {
    let mut r = Setup {
        grouping: GroupingPolicy::Failover,
        prios: vec![50, 10],
        ..Setup::multibus(2)
    }
    .start();
    assert_eq!(r.serving_paths(2), vec![0, 0]);
    r.scripts[0].fail_next_path_error();
    assert_eq!(r.serving_paths(3), vec![1, 1, 1], "failed over");
    assert_eq!(r.engine.snapshot().map.current_group(), Some(1));
    r.engine.check_result(pid(0), CheckState::Up, "");
    assert_eq!(r.engine.snapshot().map.current_group(), Some(0));
    assert_eq!(r.serving_paths(2), vec![0, 0], "failed back");
}

#[test]
fn set_path_prio_changes_the_priority_regroups_and_fails_over_to_the_better_group() {
    let mut r = Setup {
        grouping: GroupingPolicy::GroupByPrio,
        prios: vec![1, 1],
        ..Setup::multibus(2)
    }
    .start();
    let snap = r.engine.snapshot();
    assert_eq!(snap.map.groups().len(), 1, "equal priorities: one group");
    r.engine.set_path_prio(pid(1), Prio(50));
    assert_eq!(r.path(1).prio, Prio(50));
    let snap = r.engine.snapshot();
    let groups = snap.map.groups();
    assert_eq!(groups.len(), 2, "two priorities: two groups");
    assert_eq!(groups[0].members, vec![pid(1)]);
    assert_eq!(groups[0].prio, Prio(50));
    assert_eq!(snap.map.current_group(), Some(0));
    assert_eq!(r.serving_paths(2), vec![1, 1], "IO goes to the better path");
    // The same priority again changes nothing.
    r.engine.set_path_prio(pid(1), Prio(50));
    assert_eq!(r.engine.snapshot().map.groups().len(), 2);
    r.engine.set_path_prio(pid(1), Prio(1));
    assert_eq!(r.engine.snapshot().map.groups().len(), 1, "equal again");
}

#[test]
fn failback_manual_stays_on_the_working_group() {
    let mut r = Setup {
        grouping: GroupingPolicy::Failover,
        failback: Failback::Manual,
        prios: vec![50, 10],
        ..Setup::multibus(2)
    }
    .start();
    r.scripts[0].fail_next_path_error();
    assert_eq!(r.serving_paths(2), vec![1, 1]);
    r.engine.check_result(pid(0), CheckState::Up, "");
    assert_eq!(r.path(0).dm, DmState::Active);
    assert_eq!(r.serving_paths(2), vec![1, 1]);
    assert!(r.engine.switch_group(0));
    assert_eq!(r.serving_paths(2), vec![0, 0]);
}

#[test]
fn a_removed_path_releases_its_io_threads_and_keeps_its_id() {
    let mut r = Setup::multibus(2).start();
    // IO threads start on demand: none before the first request.
    assert_eq!(Arc::strong_count(&r.devs[1]), 2);
    r.serving_paths(4);
    let threads = Arc::strong_count(&r.devs[1]) - 2;
    assert!((1..=WORKERS_PER_PATH).contains(&threads), "{threads}");
    r.engine.remove_path(pid(1));
    r.workers_gone(1);
    assert!(r.path(1).removed);
    assert_eq!(r.serving_paths(3), vec![0, 0, 0]);
    // A new path gets a new id; the tombstone stays.
    let (dev, script) = PathDev::memory("p2", &r.lun);
    let mut p = Path::new(PathInfo {
        name: "p2".into(),
        ..Default::default()
    });
    p.check = CheckState::Up;
    let id = r.engine.add_path(p, dev);
    assert_eq!(id, pid(2));
    r.scripts.push(script);
    let served = r.serving_paths(4);
    assert!(served.contains(&2) && !served.contains(&1), "{served:?}");
    let snap = r.engine.snapshot();
    let live: Vec<PathId> = snap.live_paths().map(|(id, _, _)| id).collect();
    assert_eq!(live, vec![pid(0), pid(2)]);
    assert!(snap.path(pid(1)).is_some_and(|(p, _)| p.removed));
}

#[test]
fn close_fails_new_and_held_io_lets_in_flight_io_finish_and_ends_the_workers() {
    let mut r = Setup::multibus(2).no_path_retry(NoPathRetry::Queue).start();
    let mut closed = r.engine.closed().expect("a map engine can close");
    assert!(!*closed.borrow_and_update());
    // One read in flight on p0 (hung), one held (no usable path).
    r.scripts[0].hang();
    let in_flight = r.read(0);
    assert!(r.scripts[0].wait_hung(1, PATIENCE));
    r.engine.admin_fail(pid(0));
    r.engine.admin_fail(pid(1));
    let held = r.read(4096);
    assert_eq!(r.engine.outstanding(), 2);

    r.engine.close();
    assert!(r.engine.is_closed());
    assert!(closed.has_changed().expect("the sender lives") && *closed.borrow());
    assert_eq!(r.result(held), Err(IoError::Shutdown));
    let c = r.read(0);
    assert_eq!(r.result(c), Err(IoError::Shutdown));
    // Reinstating a path changes nothing: the map is closed.
    r.engine.admin_reinstate(pid(1));
    let c = r.read(0);
    assert_eq!(r.result(c), Err(IoError::Shutdown));
    // The read in flight completes normally, then the workers exit.
    r.scripts[0].release();
    r.result(in_flight).expect("in-flight IO completes");
    r.workers_gone(0);
    r.workers_gone(1);
    assert_eq!(r.engine.outstanding(), 0);
    r.engine.close();
}

#[test]
fn counters_for_metrics_bytes_errors_by_class_latency_reinstatements_switches_events() {
    let mut r = Setup {
        grouping: GroupingPolicy::Failover,
        prios: vec![50, 10],
        ..Setup::multibus(2)
    }
    .start();
    let w = r.write(0, 0x11);
    r.result(w).expect("write ok");
    let c = r.read(0);
    r.result(c).expect("read ok");
    let p0 = r.counters(0);
    assert_eq!(
        (p0.read_bytes, p0.written_bytes),
        (u64::from(BLOCK), u64::from(BLOCK))
    );
    assert_eq!(p0.io_latency.count(), 2, "every completed request is timed");
    r.scripts[0].fail_next_lun_error();
    let c = r.read(0);
    assert_eq!(r.result(c), Err(IoError::Io));
    assert_eq!(r.counters(0).errors_by_class, [0, 1, 0]);
    // A path error: p0 fails, IO fails over to group 2, then fails back.
    r.scripts[0].fail_next_path_error();
    assert_eq!(r.serving_paths(1), vec![1]);
    assert_eq!(r.counters(0).errors_by_class, [1, 1, 0]);
    assert_eq!(r.engine.snapshot().group_switches, 1);
    r.engine.check_result(pid(0), CheckState::Up, "");
    let s = r.engine.snapshot();
    assert_eq!(s.group_switches, 2, "failover and failback");
    assert_eq!(s.paths[0].reinstatements, 1);
    assert_eq!(s.map.path(pid(0)).map(|p| p.failures), Some(1));
    let texts: Vec<(Option<PathId>, &str)> =
        s.events.iter().map(|e| (e.path, e.text.as_str())).collect();
    assert!(
        texts
            .iter()
            .any(|(p, t)| *p == Some(pid(0)) && t.contains("p0 failed")),
        "{texts:?}"
    );
    assert!(
        texts
            .iter()
            .any(|(p, t)| *p == Some(pid(0)) && t.contains("p0 reinstated")),
        "{texts:?}"
    );
    r.engine.check_duration(pid(1), Duration::from_millis(3));
    assert_eq!(r.counters(1).check_latency.count(), 1);
}

/// A priority that flips 50/1 at every check under group_by_prio and
/// failback immediate: the map regroups each time, IO with requests in
/// flight across the flips never fails, every change is counted, and the
/// log lines are limited to one batch per path per `PRIO_LOG_EVERY`.
#[test]
fn a_priority_flipping_at_every_check_loses_no_io() {
    let mut r = Setup {
        grouping: GroupingPolicy::GroupByPrio,
        prios: vec![10, 10, 10],
        ..Setup::multibus(3)
    }
    .start();
    for i in 0..400u64 {
        let prio = if i % 2 == 0 { Prio(50) } else { Prio(1) };
        let w = r.write((i % 64) * u64::from(BLOCK), (i % 251) as u8);
        let rd = r.read(((i + 7) % 64) * u64::from(BLOCK));
        r.engine.set_path_prio(pid(0), prio);
        r.clock.advance(Duration::from_millis(500));
        let mut got = [r.recv(), r.recv()];
        got.sort_by_key(|c| c.cookie);
        assert_eq!(got[0].cookie, w);
        assert_eq!(got[1].cookie, rd);
        assert!(got.iter().all(|c| c.result.is_ok()), "flip {i}");
    }
    let snap = r.engine.snapshot();
    assert_eq!(snap.paths[0].prio_changes, 400);
    assert!(snap.paths.iter().all(|c| c.errors == 0));
    // 400 flips half a second apart (t = 0 .. 199.5 s): logged at info
    // at 0, 30, ..., 180 s; the 39 flips since are counted, not logged.
    {
        let st = r.engine.inner.state.lock();
        let l = st.paths[0].prio_log.lock();
        assert_eq!(l.last, Some(Time(180_000)));
        assert_eq!(l.suppressed, 39);
    }
    // IO follows the last priority (1): away from path 0.
    assert!(!r.serving_paths(4).contains(&0));
}

#[test]
fn log_limit_admits_one_batch_per_interval_and_counts_the_rest() {
    let mut l = LogLimit::default();
    let s = |x: u64| Time(x * 1000);
    assert_eq!(l.admit(s(0)), Loud::Yes);
    assert_eq!(l.admit(s(1)), Loud::No);
    assert_eq!(l.admit(s(29)), Loud::No);
    assert_eq!(l.admit(s(30)), Loud::AfterSuppressed(2));
    assert_eq!(l.admit(s(100)), Loud::Yes);
}
