//! Fault injection: a hook every path's IO and checks go through (in the
//! spirit of dm-flakey and dm-dust), set from the configuration or at
//! runtime.
//!
//! A path has one [`Fault`] per target ([`FaultTargets`]: reads, writes,
//! checks). Writes cover everything that changes data or makes it stable:
//! write, flush, trim and write-zeroes. [`Faults::before_io`] is called
//! before each IO or check and applies the target's fault:
//!
//! * [`Fault::Error`]: fail with EIO ([`ErrorClass::Path`]).
//! * [`Fault::Delay`]: wait that long, then go ahead.
//! * [`Fault::Hang`]: block until the target's fault is changed or cleared,
//!   then apply the new fault (so `hang` followed by `error` fails the hung
//!   IO, and `clear` lets it through).
//! * [`Fault::Flaky`]: fail with EIO with the given probability, drawn from
//!   a small per-path generator (deterministic for a given seed).
//!
//! The text form, as the control socket and configuration take it, is
//! `<fault> [targets]`: `error`, `delay <ms>`, `hang`, `flaky <percent>`,
//! `clear` (or `none`), followed by any of `read`, `write`, `check` (or
//! `all`, the default), separated by spaces or commas: `error write`,
//! `delay 50 read`, `flaky 30 read,write`, `clear check`.
//!
//! A test hook of another kind overrides the path's priority instead of
//! failing IO: `prio N` (the prioritizer's answer is replaced by N) and
//! `prio flip A B` (A, then B, then A... at each priority query: a
//! prioritizer that flips at every check), until `clear`.
//!
//! The IO path reads the faults without locking (one [`ArcSwap`] load);
//! only hung or delayed IO and changes to the faults take a lock.

use std::fmt;
use std::io;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use parking_lot::{Condvar, Mutex};

use super::{ErrorClass, IoOp, TransportError};

/// What to do to IO on a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Fault {
    /// Nothing: IO goes through.
    #[default]
    None,
    /// Fail every IO with EIO.
    Error,
    /// Delay every IO by this long.
    Delay(Duration),
    /// Block every IO until the fault is changed or cleared.
    Hang,
    /// Fail IO with EIO with probability `percent`/100.
    Flaky { percent: u8 },
    /// Not an IO fault: override the path's priority ([`Faults::prio`]).
    Prio(PrioFault),
}

/// A priority override (`prio N`, `prio flip A B`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrioFault {
    /// Always this priority.
    Fixed(i32),
    /// The first, then the second, alternating at each query.
    Flip(i32, i32),
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::None => f.write_str("none"),
            Fault::Error => f.write_str("error"),
            Fault::Delay(d) => write!(f, "delay {}", d.as_millis()),
            Fault::Hang => f.write_str("hang"),
            Fault::Flaky { percent } => write!(f, "flaky {percent}"),
            Fault::Prio(PrioFault::Fixed(p)) => write!(f, "prio {p}"),
            Fault::Prio(PrioFault::Flip(a, b)) => write!(f, "prio flip {a} {b}"),
        }
    }
}

/// The kind of operation about to happen, as faults see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IoKindForFault {
    Read,
    /// Write, flush, trim and write-zeroes.
    Write,
    /// A path check.
    Check,
}

impl IoKindForFault {
    pub const ALL: [IoKindForFault; 3] = [
        IoKindForFault::Read,
        IoKindForFault::Write,
        IoKindForFault::Check,
    ];

    fn index(self) -> usize {
        match self {
            IoKindForFault::Read => 0,
            IoKindForFault::Write => 1,
            IoKindForFault::Check => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            IoKindForFault::Read => "read",
            IoKindForFault::Write => "write",
            IoKindForFault::Check => "check",
        }
    }
}

impl fmt::Display for IoKindForFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which operations a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FaultTargets {
    pub reads: bool,
    /// Writes, flushes, trims and write-zeroes.
    pub writes: bool,
    pub checks: bool,
}

impl FaultTargets {
    pub const NONE: FaultTargets = FaultTargets {
        reads: false,
        writes: false,
        checks: false,
    };
    pub const ALL: FaultTargets = FaultTargets {
        reads: true,
        writes: true,
        checks: true,
    };
    pub const READS: FaultTargets = FaultTargets {
        reads: true,
        ..FaultTargets::NONE
    };
    pub const WRITES: FaultTargets = FaultTargets {
        writes: true,
        ..FaultTargets::NONE
    };
    pub const CHECKS: FaultTargets = FaultTargets {
        checks: true,
        ..FaultTargets::NONE
    };

    pub fn contains(self, kind: IoKindForFault) -> bool {
        match kind {
            IoKindForFault::Read => self.reads,
            IoKindForFault::Write => self.writes,
            IoKindForFault::Check => self.checks,
        }
    }

    pub fn union(self, other: FaultTargets) -> FaultTargets {
        FaultTargets {
            reads: self.reads || other.reads,
            writes: self.writes || other.writes,
            checks: self.checks || other.checks,
        }
    }

    pub fn is_empty(self) -> bool {
        self == FaultTargets::NONE
    }

    fn with(self, kind: IoKindForFault) -> FaultTargets {
        self.union(match kind {
            IoKindForFault::Read => FaultTargets::READS,
            IoKindForFault::Write => FaultTargets::WRITES,
            IoKindForFault::Check => FaultTargets::CHECKS,
        })
    }
}

impl Default for FaultTargets {
    fn default() -> Self {
        FaultTargets::ALL
    }
}

impl fmt::Display for FaultTargets {
    /// `"all"`, or the targets joined by commas (`"read,check"`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == FaultTargets::ALL {
            return f.write_str("all");
        }
        let names: Vec<&str> = IoKindForFault::ALL
            .into_iter()
            .filter(|k| self.contains(*k))
            .map(IoKindForFault::as_str)
            .collect();
        f.write_str(&names.join(","))
    }
}

/// A parsed fault command: a fault and the targets it applies to.
/// `clear` parses as [`Fault::None`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FaultSpec {
    pub fault: Fault,
    pub targets: FaultTargets,
}

/// Why a fault command did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultParseError {
    #[error("empty fault command (expected error, delay <ms>, hang, flaky <percent> or clear)")]
    Empty,
    #[error("unknown fault {0:?} (expected error, delay <ms>, hang, flaky <percent>, prio <n>, prio flip <a> <b> or clear)")]
    UnknownFault(String),
    #[error("{fault} needs a number ({what})")]
    MissingNumber {
        fault: &'static str,
        what: &'static str,
    },
    #[error("{fault}: {value:?} is not a valid {what}")]
    BadNumber {
        fault: &'static str,
        what: &'static str,
        value: String,
    },
    #[error("unknown fault target {0:?} (expected read, write, check or all)")]
    UnknownTarget(String),
}

impl FaultSpec {
    /// Parse one command, e.g. `"delay 50 read"` (see the module docs).
    pub fn parse(s: &str) -> Result<FaultSpec, FaultParseError> {
        let mut words = s
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|w| !w.is_empty());
        let name = words.next().ok_or(FaultParseError::Empty)?;
        let fault = match name.to_ascii_lowercase().as_str() {
            "error" => Fault::Error,
            "hang" => Fault::Hang,
            "clear" | "none" => Fault::None,
            "delay" => {
                let v = words.next().ok_or(FaultParseError::MissingNumber {
                    fault: "delay",
                    what: "milliseconds",
                })?;
                let digits = v.strip_suffix("ms").unwrap_or(v);
                let ms = digits
                    .parse::<u64>()
                    .map_err(|_| FaultParseError::BadNumber {
                        fault: "delay",
                        what: "number of milliseconds",
                        value: v.to_string(),
                    })?;
                Fault::Delay(Duration::from_millis(ms))
            }
            "flaky" => {
                let v = words.next().ok_or(FaultParseError::MissingNumber {
                    fault: "flaky",
                    what: "percent",
                })?;
                let digits = v.strip_suffix('%').unwrap_or(v);
                let percent = digits
                    .parse::<u8>()
                    .ok()
                    .filter(|p| *p <= 100)
                    .ok_or_else(|| FaultParseError::BadNumber {
                        fault: "flaky",
                        what: "percentage (0-100)",
                        value: v.to_string(),
                    })?;
                Fault::Flaky { percent }
            }
            "prio" => {
                let number = |v: Option<&str>| {
                    let v = v.ok_or(FaultParseError::MissingNumber {
                        fault: "prio",
                        what: "priority",
                    })?;
                    v.parse::<i32>().map_err(|_| FaultParseError::BadNumber {
                        fault: "prio",
                        what: "priority",
                        value: v.to_string(),
                    })
                };
                let first = words.next();
                let prio = if first.is_some_and(|w| w.eq_ignore_ascii_case("flip")) {
                    PrioFault::Flip(number(words.next())?, number(words.next())?)
                } else {
                    PrioFault::Fixed(number(first)?)
                };
                if let Some(w) = words.next() {
                    return Err(FaultParseError::UnknownTarget(w.to_string()));
                }
                return Ok(FaultSpec {
                    fault: Fault::Prio(prio),
                    targets: FaultTargets::ALL,
                });
            }
            _ => return Err(FaultParseError::UnknownFault(name.to_string())),
        };
        let mut targets = FaultTargets::NONE;
        for w in words {
            targets = match w.to_ascii_lowercase().as_str() {
                "read" | "reads" => targets.with(IoKindForFault::Read),
                "write" | "writes" => targets.with(IoKindForFault::Write),
                "check" | "checks" => targets.with(IoKindForFault::Check),
                "all" => FaultTargets::ALL,
                _ => return Err(FaultParseError::UnknownTarget(w.to_string())),
            };
        }
        if targets.is_empty() {
            targets = FaultTargets::ALL;
        }
        Ok(FaultSpec { fault, targets })
    }

    /// Parse several commands separated by `;` (the form
    /// [`Faults::describe`] prints). Empty clauses are ignored.
    pub fn parse_list(s: &str) -> Result<Vec<FaultSpec>, FaultParseError> {
        s.split(';')
            .filter(|c| !c.trim().is_empty())
            .map(FaultSpec::parse)
            .collect()
    }
}

impl FromStr for FaultSpec {
    type Err = FaultParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FaultSpec::parse(s)
    }
}

impl fmt::Display for FaultSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = if self.fault == Fault::None {
            "clear".to_string()
        } else {
            self.fault.to_string()
        };
        if self.targets == FaultTargets::ALL {
            f.write_str(&name)
        } else {
            write!(f, "{name} {}", self.targets)
        }
    }
}

/// An IO or check failed by an injected fault. It means EIO, and the
/// path's fault ([`ErrorClass::Path`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("injected fault `{fault}` on {kind} (EIO)")]
pub struct FaultError {
    pub kind: IoKindForFault,
    pub fault: Fault,
}

impl FaultError {
    /// The error number the fault stands for.
    pub fn errno(&self) -> i32 {
        libc::EIO
    }

    /// As a [`TransportError`] of class [`ErrorClass::Path`].
    pub fn into_transport_error(
        self,
        op: IoOp,
        offset: u64,
        len: u64,
        target: impl Into<String>,
    ) -> TransportError {
        TransportError::new(
            op,
            offset,
            len,
            target,
            ErrorClass::Path,
            io::Error::other(self),
        )
    }
}

/// A path's faults. Thread-safe; reading them on the IO path takes no lock.
pub struct Faults {
    /// The fault per [`IoKindForFault::index`].
    state: ArcSwap<[Fault; 3]>,
    /// Bumped (under the lock) on every change; hung and delayed IO wait
    /// on `changed` for it.
    generation: Mutex<u64>,
    changed: Condvar,
    /// splitmix64 state for [`Fault::Flaky`].
    rng: AtomicU64,
    /// The priority override and how many times it was asked.
    prio: Mutex<Option<(PrioFault, u64)>>,
}

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Faults")
            .field("state", &**self.state.load())
            .finish_non_exhaustive()
    }
}

impl Default for Faults {
    fn default() -> Self {
        Faults::new(0)
    }
}

/// What a wait for a fault change ended with.
enum Waited {
    Changed,
    TimedOut,
}

const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

impl Faults {
    /// No faults; `seed` seeds the flaky-fault generator.
    pub fn new(seed: u64) -> Faults {
        Faults {
            state: ArcSwap::from_pointee([Fault::None; 3]),
            generation: Mutex::new(0),
            changed: Condvar::new(),
            rng: AtomicU64::new(seed),
            prio: Mutex::new(None),
        }
    }

    /// Set `fault` on every target in `targets`; other targets keep
    /// theirs. IO hung or delayed on a changed target re-evaluates.
    pub fn set(&self, targets: FaultTargets, fault: Fault) {
        let mut generation = self.generation.lock();
        let mut next = **self.state.load();
        for kind in IoKindForFault::ALL {
            if targets.contains(kind) {
                next[kind.index()] = fault;
            }
        }
        self.state.store(Arc::new(next));
        *generation = generation.wrapping_add(1);
        self.changed.notify_all();
    }

    /// Apply a parsed command. `clear` on every target also removes a
    /// priority override.
    pub fn apply(&self, spec: FaultSpec) {
        match spec.fault {
            Fault::Prio(p) => *self.prio.lock() = Some((p, 0)),
            fault => {
                if fault == Fault::None && spec.targets == FaultTargets::ALL {
                    *self.prio.lock() = None;
                }
                self.set(spec.targets, fault);
            }
        }
    }

    /// Remove every fault (releasing hung IO) and the priority override.
    pub fn clear(&self) {
        *self.prio.lock() = None;
        self.set(FaultTargets::ALL, Fault::None);
    }

    /// The priority the path must report instead of its prioritizer's, if
    /// a `prio` fault is set; a `prio flip` alternates at each call.
    pub fn prio(&self) -> Option<i32> {
        let mut slot = self.prio.lock();
        let (fault, asked) = slot.as_mut()?;
        *asked += 1;
        Some(match *fault {
            PrioFault::Fixed(p) => p,
            PrioFault::Flip(a, b) => {
                if *asked % 2 == 1 {
                    a
                } else {
                    b
                }
            }
        })
    }

    /// The fault currently set for `kind`.
    pub fn get(&self, kind: IoKindForFault) -> Fault {
        self.state.load()[kind.index()]
    }

    /// The faults in their text form, for `show paths`, e.g.
    /// `"error write; delay 50 read"`, or `None` if there are none. The
    /// text parses back with [`FaultSpec::parse_list`].
    pub fn describe(&self) -> Option<String> {
        let state = **self.state.load();
        let mut specs: Vec<FaultSpec> = Vec::new();
        for kind in IoKindForFault::ALL {
            let fault = state[kind.index()];
            if fault == Fault::None {
                continue;
            }
            match specs.iter_mut().find(|s| s.fault == fault) {
                Some(spec) => spec.targets = spec.targets.with(kind),
                None => specs.push(FaultSpec {
                    fault,
                    targets: FaultTargets::NONE.with(kind),
                }),
            }
        }
        if let Some((p, _)) = *self.prio.lock() {
            specs.push(FaultSpec {
                fault: Fault::Prio(p),
                targets: FaultTargets::ALL,
            });
        }
        if specs.is_empty() {
            return None;
        }
        let parts: Vec<String> = specs.iter().map(FaultSpec::to_string).collect();
        Some(parts.join("; "))
    }

    /// Apply the fault for `kind`: called before each IO or check. May
    /// sleep ([`Fault::Delay`]) or block ([`Fault::Hang`]).
    pub fn before_io(&self, kind: IoKindForFault) -> Result<(), FaultError> {
        loop {
            let fault = self.get(kind);
            match fault {
                // Priority overrides are never set on a target.
                Fault::None | Fault::Prio(_) => return Ok(()),
                Fault::Error => return Err(FaultError { kind, fault }),
                Fault::Flaky { percent } => {
                    return if self.roll(percent) {
                        Err(FaultError { kind, fault })
                    } else {
                        Ok(())
                    };
                }
                Fault::Delay(d) => {
                    let deadline = Instant::now().checked_add(d);
                    match self.wait_for_change(kind, fault, deadline) {
                        Waited::TimedOut => return Ok(()),
                        Waited::Changed => continue,
                    }
                }
                Fault::Hang => {
                    // Without a deadline the wait only ends on a change.
                    self.wait_for_change(kind, fault, None);
                }
            }
        }
    }

    /// Block until `kind`'s fault is no longer `fault`, or until
    /// `deadline` (if any).
    fn wait_for_change(
        &self,
        kind: IoKindForFault,
        fault: Fault,
        deadline: Option<Instant>,
    ) -> Waited {
        let mut generation = self.generation.lock();
        // `set` changes the state under this lock, so checking it here
        // cannot miss a change.
        while self.get(kind) == fault {
            match deadline {
                Some(deadline) => {
                    if self
                        .changed
                        .wait_until(&mut generation, deadline)
                        .timed_out()
                    {
                        return if self.get(kind) == fault {
                            Waited::TimedOut
                        } else {
                            Waited::Changed
                        };
                    }
                }
                None => self.changed.wait(&mut generation),
            }
        }
        Waited::Changed
    }

    /// True with probability `percent`/100.
    fn roll(&self, percent: u8) -> bool {
        match percent {
            0 => false,
            100.. => true,
            p => {
                let x = self.next_random();
                // Scale the top 32 bits to 0..100 without modulo bias.
                ((x >> 32) * 100) >> 32 < u64::from(p)
            }
        }
    }

    /// splitmix64: one atomic add per draw, so concurrent IO never locks.
    fn next_random(&self) -> u64 {
        let mut z = self
            .rng
            .fetch_add(GOLDEN_GAMMA, Ordering::Relaxed)
            .wrapping_add(GOLDEN_GAMMA);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::thread;

    fn spec(s: &str) -> FaultSpec {
        FaultSpec::parse(s).unwrap()
    }

    #[test]
    fn parse_faults_and_targets() {
        assert_eq!(
            spec("error"),
            FaultSpec {
                fault: Fault::Error,
                targets: FaultTargets::ALL
            }
        );
        assert_eq!(
            spec("error write"),
            FaultSpec {
                fault: Fault::Error,
                targets: FaultTargets::WRITES
            }
        );
        assert_eq!(
            spec("delay 50 read"),
            FaultSpec {
                fault: Fault::Delay(Duration::from_millis(50)),
                targets: FaultTargets::READS
            }
        );
        assert_eq!(
            spec("delay 200ms").fault,
            Fault::Delay(Duration::from_millis(200))
        );
        assert_eq!(spec("hang check").fault, Fault::Hang);
        assert_eq!(spec("hang check").targets, FaultTargets::CHECKS);
        assert_eq!(spec("flaky 30").fault, Fault::Flaky { percent: 30 });
        assert_eq!(spec("prio 50").fault, Fault::Prio(PrioFault::Fixed(50)));
        assert_eq!(
            spec("prio flip 50 1").fault,
            Fault::Prio(PrioFault::Flip(50, 1))
        );
        assert!(FaultSpec::parse("prio").is_err());
        assert!(FaultSpec::parse("prio flip 50").is_err());
        assert!(FaultSpec::parse("prio x").is_err());
        assert!(FaultSpec::parse("prio 5 read").is_err());
        assert_eq!(
            spec("  flaky 30 read,write ").targets,
            FaultTargets::READS.union(FaultTargets::WRITES)
        );
        assert_eq!(
            spec("flaky 30 read write").targets,
            spec("flaky 30 read,write").targets
        );
        assert_eq!(
            spec("clear"),
            FaultSpec {
                fault: Fault::None,
                targets: FaultTargets::ALL
            }
        );
        assert_eq!(spec("clear check").targets, FaultTargets::CHECKS);
        assert_eq!(spec("ERROR all").targets, FaultTargets::ALL);
    }

    #[test]
    fn parse_errors() {
        assert_eq!(FaultSpec::parse(""), Err(FaultParseError::Empty));
        assert!(matches!(
            FaultSpec::parse("explode"),
            Err(FaultParseError::UnknownFault(_))
        ));
        assert!(matches!(
            FaultSpec::parse("delay"),
            Err(FaultParseError::MissingNumber { .. })
        ));
        assert!(matches!(
            FaultSpec::parse("delay soon"),
            Err(FaultParseError::BadNumber { .. })
        ));
        assert!(matches!(
            FaultSpec::parse("flaky 101"),
            Err(FaultParseError::BadNumber { .. })
        ));
        assert!(matches!(
            FaultSpec::parse("flaky -1"),
            Err(FaultParseError::BadNumber { .. })
        ));
        assert!(matches!(
            FaultSpec::parse("error reed"),
            Err(FaultParseError::UnknownTarget(_))
        ));
        let msg = FaultSpec::parse("error reed").unwrap_err().to_string();
        assert!(msg.contains("reed"), "{msg}");
    }

    #[test]
    fn describe_round_trips() {
        let f = Faults::new(1);
        assert_eq!(f.describe(), None);
        f.apply(spec("error write"));
        assert_eq!(f.describe().as_deref(), Some("error write"));
        f.apply(spec("delay 50 read,check"));
        assert_eq!(
            f.describe().as_deref(),
            Some("delay 50 read,check; error write")
        );
        let g = Faults::new(2);
        for s in FaultSpec::parse_list(&f.describe().unwrap()).unwrap() {
            g.apply(s);
        }
        assert_eq!(g.describe(), f.describe());
        f.apply(spec("hang"));
        assert_eq!(f.describe().as_deref(), Some("hang"));
        f.apply(spec("clear read"));
        assert_eq!(f.describe().as_deref(), Some("hang write,check"));
        f.clear();
        assert_eq!(f.describe(), None);
    }

    #[test]
    fn error_hits_only_its_targets() {
        let f = Faults::new(1);
        f.apply(spec("error write"));
        let e = f.before_io(IoKindForFault::Write).unwrap_err();
        assert_eq!(e.kind, IoKindForFault::Write);
        assert_eq!(e.errno(), libc::EIO);
        assert!(f.before_io(IoKindForFault::Read).is_ok());
        assert!(f.before_io(IoKindForFault::Check).is_ok());
        let te = e.into_transport_error(IoOp::Flush, 0, 0, "/x/lun0.img");
        assert_eq!(te.class, ErrorClass::Path);
        assert_eq!(te.errno(), Some(libc::EIO));
        assert!(
            te.to_string().contains("injected fault `error` on write"),
            "{te}"
        );
        f.clear();
        assert!(f.before_io(IoKindForFault::Write).is_ok());
    }

    #[test]
    fn delay_delays() {
        let f = Faults::new(1);
        f.apply(spec("delay 100 read"));
        let start = Instant::now();
        f.before_io(IoKindForFault::Read).unwrap();
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(100), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        let start = Instant::now();
        f.before_io(IoKindForFault::Write).unwrap();
        assert!(start.elapsed() < Duration::from_millis(100));
    }

    #[test]
    fn long_delay_ends_when_cleared() {
        let f = Arc::new(Faults::new(1));
        f.apply(spec("delay 600000"));
        let (tx, rx) = mpsc::channel();
        let f2 = Arc::clone(&f);
        let t = thread::spawn(move || tx.send(f2.before_io(IoKindForFault::Read)).unwrap());
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
        f.clear();
        let r = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("delay not cut short");
        assert!(r.is_ok());
        t.join().unwrap();
    }

    #[test]
    fn hang_until_cleared_from_another_thread() {
        let f = Arc::new(Faults::new(1));
        f.apply(spec("hang read"));
        let (tx, rx) = mpsc::channel();
        let f2 = Arc::clone(&f);
        let t = thread::spawn(move || tx.send(f2.before_io(IoKindForFault::Read)).unwrap());
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "hang did not block"
        );
        // A change to another target does not release it.
        f.apply(spec("error write"));
        assert!(
            rx.recv_timeout(Duration::from_millis(100)).is_err(),
            "woken by unrelated change"
        );
        f.apply(spec("clear read"));
        let r = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("hang not released");
        assert!(r.is_ok());
        t.join().unwrap();
    }

    #[test]
    fn hang_then_error_fails_the_hung_io() {
        let f = Arc::new(Faults::new(1));
        f.apply(spec("hang"));
        let f2 = Arc::clone(&f);
        let t = thread::spawn(move || f2.before_io(IoKindForFault::Check));
        thread::sleep(Duration::from_millis(50));
        f.apply(spec("error"));
        let r = t.join().unwrap();
        assert_eq!(r.unwrap_err().fault, Fault::Error);
    }

    #[test]
    fn flaky_proportion() {
        let f = Faults::new(42);
        f.apply(spec("flaky 30"));
        let failed = (0..1000)
            .filter(|_| f.before_io(IoKindForFault::Read).is_err())
            .count();
        assert!((230..=370).contains(&failed), "{failed} of 1000 failed");
        f.apply(spec("flaky 0"));
        assert!((0..100).all(|_| f.before_io(IoKindForFault::Read).is_ok()));
        f.apply(spec("flaky 100"));
        assert!((0..100).all(|_| f.before_io(IoKindForFault::Read).is_err()));
    }

    #[test]
    fn flaky_is_deterministic_per_seed() {
        let run = |seed| {
            let f = Faults::new(seed);
            f.apply(spec("flaky 50"));
            (0..64)
                .map(|_| f.before_io(IoKindForFault::Write).is_err())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn prio_override_flips_and_clears() {
        let f = Faults::new(1);
        assert_eq!(f.prio(), None);
        f.apply(FaultSpec::parse("prio flip 50 1").unwrap());
        assert_eq!(f.get(IoKindForFault::Read), Fault::None);
        assert_eq!(f.describe().as_deref(), Some("prio flip 50 1"));
        let got: Vec<i32> = (0..4).filter_map(|_| f.prio()).collect();
        assert_eq!(got, vec![50, 1, 50, 1]);
        assert!(f.before_io(IoKindForFault::Check).is_ok());
        f.apply(FaultSpec::parse("prio 7").unwrap());
        assert_eq!((f.prio(), f.prio()), (Some(7), Some(7)));
        // Clearing one target keeps it; `clear` removes it.
        f.apply(FaultSpec::parse("clear read").unwrap());
        assert_eq!(f.prio(), Some(7));
        f.apply(FaultSpec::parse("clear").unwrap());
        assert_eq!(f.prio(), None);
        assert_eq!(f.describe(), None);
    }
}
