//! Policy: the decisions multipath makes, as pure functions and small state
//! machines. No IO and no clock: time comes in as [`crate::units::Time`].
//!
//! * [`grouping`]: path_grouping_policy (multibus, failover, ...) turns a
//!   map's paths into path groups.
//! * [`selector`]: path selectors (round-robin with rr_min_io and rr_weight,
//!   queue-length, service-time, and [`hst`]: historical-service-time).
//! * [`failback`]: which path group a map should use, given failback.
//! * [`no_path_retry`]: what happens to IO when no path is usable.
//! * [`shaky`]: shaky (san_path_err) and marginal paths held out of IO.
//!
//! This module also defines the value vocabulary that multipath.conf
//! keywords parse into, so the config layer and the engine speak the same
//! types.

pub mod failback;
pub mod grouping;
pub mod hst;
pub mod no_path_retry;
pub mod selector;
pub mod shaky;

use std::fmt;

use hst::HstArgs;

/// `path_grouping_policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupingPolicy {
    /// One path per group.
    Failover,
    /// All paths in one group.
    Multibus,
    /// One group per target serial number.
    GroupBySerial,
    /// One group per path priority value.
    GroupByPrio,
    /// One group per node name (target port group).
    GroupByNodeName,
    /// One group per target port group (ALUA).
    GroupByTpg,
}

impl GroupingPolicy {
    pub const ALL: [GroupingPolicy; 6] = [
        GroupingPolicy::Failover,
        GroupingPolicy::Multibus,
        GroupingPolicy::GroupBySerial,
        GroupingPolicy::GroupByPrio,
        GroupingPolicy::GroupByNodeName,
        GroupingPolicy::GroupByTpg,
    ];

    /// The multipath.conf spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupingPolicy::Failover => "failover",
            GroupingPolicy::Multibus => "multibus",
            GroupingPolicy::GroupBySerial => "group_by_serial",
            GroupingPolicy::GroupByPrio => "group_by_prio",
            GroupingPolicy::GroupByNodeName => "group_by_node_name",
            GroupingPolicy::GroupByTpg => "group_by_tpg",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

impl fmt::Display for GroupingPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `path_selector`: the algorithm and its (kernel-style) arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SelectorKind {
    /// "round-robin 0"
    RoundRobin,
    /// "queue-length 0"
    QueueLength,
    /// "service-time 0"
    ServiceTime,
    /// "historical-service-time 0", or with a base weight and a threshold
    /// multiplier ("historical-service-time 2 972 0").
    HistoricalServiceTime(HstArgs),
}

impl SelectorKind {
    /// Every selector, with no arguments.
    pub const ALL: [SelectorKind; 4] = [
        SelectorKind::RoundRobin,
        SelectorKind::QueueLength,
        SelectorKind::ServiceTime,
        SelectorKind::HistoricalServiceTime(HstArgs::DEFAULT),
    ];

    /// The selector's name without its argument count.
    pub fn name(self) -> &'static str {
        match self {
            SelectorKind::RoundRobin => "round-robin",
            SelectorKind::QueueLength => "queue-length",
            SelectorKind::ServiceTime => "service-time",
            SelectorKind::HistoricalServiceTime(_) => "historical-service-time",
        }
    }

    /// Parses "round-robin 0": the name, then the argument count (optional
    /// when 0) and the arguments. Only historical-service-time takes
    /// arguments (as the kernel's selectors do); the others' count must
    /// be 0.
    pub fn parse(s: &str) -> Option<Self> {
        let mut words = s.split_whitespace();
        let name = words.next()?;
        let kind = Self::ALL.into_iter().find(|k| k.name() == name)?;
        if let SelectorKind::HistoricalServiceTime(_) = kind {
            let rest: Vec<&str> = words.collect();
            return HstArgs::parse(&rest).map(SelectorKind::HistoricalServiceTime);
        }
        match (words.next(), words.next()) {
            (None, None) | (Some("0"), None) => Some(kind),
            _ => None,
        }
    }
}

impl fmt::Display for SelectorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SelectorKind::HistoricalServiceTime(args) => write!(f, "{} {args}", self.name()),
            _ => write!(f, "{} 0", self.name()),
        }
    }
}

/// `rr_weight`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RrWeight {
    /// Every path gets the same repeat count.
    Uniform,
    /// The repeat count is multiplied by the path's priority.
    Priorities,
}

impl RrWeight {
    pub fn as_str(self) -> &'static str {
        match self {
            RrWeight::Uniform => "uniform",
            RrWeight::Priorities => "priorities",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "uniform" => Some(RrWeight::Uniform),
            "priorities" => Some(RrWeight::Priorities),
            _ => None,
        }
    }
}

impl fmt::Display for RrWeight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `failback`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Failback {
    /// Switch to the best group as soon as one of its paths is reinstated.
    Immediate,
    /// Stay on the current group until it has no usable path or an admin
    /// switches.
    Manual,
    /// Fail back only when the first path of a group comes back (and the
    /// current group has no usable path).
    Followover,
    /// Fail back this many seconds after the better group became usable.
    DeferredSecs(u32),
}

impl Failback {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "immediate" | "-2" => Some(Failback::Immediate),
            "manual" | "-1" => Some(Failback::Manual),
            "followover" | "-3" => Some(Failback::Followover),
            n => match n.parse::<u32>() {
                Ok(0) => Some(Failback::Manual),
                Ok(secs) => Some(Failback::DeferredSecs(secs)),
                Err(_) => None,
            },
        }
    }
}

impl fmt::Display for Failback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failback::Immediate => f.write_str("immediate"),
            Failback::Manual => f.write_str("manual"),
            Failback::Followover => f.write_str("followover"),
            Failback::DeferredSecs(s) => write!(f, "{s}"),
        }
    }
}

/// `no_path_retry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NoPathRetry {
    /// Fail IO at once when no path is usable.
    Fail,
    /// Hold IO until a path comes back, forever.
    Queue,
    /// Hold IO for this many polling intervals, then fail it.
    Retries(u32),
}

impl NoPathRetry {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "fail" | "-1" => Some(NoPathRetry::Fail),
            "queue" | "-2" => Some(NoPathRetry::Queue),
            n => match n.parse::<u32>() {
                Ok(0) => Some(NoPathRetry::Fail),
                Ok(k) => Some(NoPathRetry::Retries(k)),
                Err(_) => None,
            },
        }
    }
}

impl fmt::Display for NoPathRetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoPathRetry::Fail => f.write_str("fail"),
            NoPathRetry::Queue => f.write_str("queue"),
            NoPathRetry::Retries(n) => write!(f, "{n}"),
        }
    }
}

/// `path_checker`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckerKind {
    /// SCSI TEST UNIT READY (for a `file` path: a direct read, see
    /// [`CheckerKind::Directio`]).
    Tur,
    /// A direct (O_DIRECT) read of the first block.
    Directio,
    /// A read of sector 0 (through the page cache-bypassing path).
    Readsector0,
    /// No check: the path is always up.
    None,
}

impl CheckerKind {
    pub const ALL: [CheckerKind; 4] = [
        CheckerKind::Tur,
        CheckerKind::Directio,
        CheckerKind::Readsector0,
        CheckerKind::None,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            CheckerKind::Tur => "tur",
            CheckerKind::Directio => "directio",
            CheckerKind::Readsector0 => "readsector0",
            CheckerKind::None => "none",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for CheckerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
