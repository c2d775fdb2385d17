//! Prioritizers, pure: a path's priority computed from facts an edge
//! gathered, as multipath-tools' prioritizers compute it.
//!
//! A [`Prioritizer`] is built once from the `prio` and `prio_args`
//! settings ([`Prioritizer::parse`], errors name the bad argument) and
//! asked for a path's priority with [`Prioritizer::score`], given a
//! [`PathFacts`]: what the checker's edge read from the path (device name,
//! H:C:T:L, serial, port names, REPORT TARGET PORT GROUPS data and the
//! path's own target port group, the kernel's `access_state` and
//! `preferred_path`, read latencies, a random number).
//! [`Prioritizer::needs`] says which facts to gather. Nothing here does IO
//! or reads a clock.
//!
//! [`detect`] and [`select`] are multipath-tools' `detect_prio` rule and
//! the ALUA fallback of `select_prio`, as pure functions.
//!
//! Where umpath differs from multipath-tools on purpose:
//!
//! * bad `prio_args` are errors at load (multipath-tools logs at run time
//!   and uses defaults, skips the bad regex, or reads a weight as 0);
//! * `alua` finds the path's group by its relative target port when the
//!   VPD page 0x83 has no target port group designator (multipath-tools
//!   gives up);
//! * a prioritizer that cannot compute (missing or malformed data) is an
//!   error the caller reports and handles (keeping the last priority),
//!   not a silent priority;
//! * REPORT TARGET PORT GROUPS data whose lengths do not add up is an
//!   error (multipath-tools walks the descriptors as far as the length
//!   says), and the extended header format is understood;
//! * `const`, `random`, `sysfs` and `alua` refuse arguments they do not
//!   know (multipath-tools ignores them).

pub mod latency;
pub mod weighted;

use std::fmt;
use std::time::Duration;

use crate::scsi::rtpg::{self, AccessState};
use crate::scsi::{ScsiError, Tpgs};
use crate::units::Prio;

pub use latency::PathLatency;
pub use weighted::{WeightedField, WeightedPath};

/// The prioritizers umpath implements, by their multipath.conf names.
pub const IMPLEMENTED: [&str; 6] = [
    "const",
    "random",
    "weightedpath",
    "path_latency",
    "sysfs",
    "alua",
];

/// Prioritizers multipath-tools has (or had) that umpath does not
/// implement: hardware specific ones that need vendor commands, `ana`
/// (NVMe) and two historical names.
pub const NOT_IMPLEMENTED: [&str; 10] = [
    "emc", "hp_sw", "hds", "ontap", "rdac", "iet", "ana", "datacore", "weighted", "none",
];

/// A prioritizer with its parsed arguments.
#[derive(Debug, Clone, PartialEq)]
pub enum Prioritizer {
    /// Every path 1.
    Const,
    /// 1 to 10, from [`PathFacts::random`].
    Random,
    /// The weight of the first regex matching a path's field, else 0.
    WeightedPath(WeightedPath),
    /// From the path's average read latency.
    PathLatency(PathLatency),
    /// From the kernel's `access_state` and `preferred_path` attributes.
    Sysfs {
        /// `exclusive_pref_bit`: the preferred bit adds 80 even to an
        /// active/optimized path.
        exclusive_pref: bool,
    },
    /// From REPORT TARGET PORT GROUPS data.
    Alua {
        /// `exclusive_pref_bit`, as for [`Prioritizer::Sysfs`].
        exclusive_pref: bool,
    },
}

/// Why `prio`/`prio_args` do not make a prioritizer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrioConfigError {
    #[error("unknown prioritizer '{name}' (umpath implements {})", IMPLEMENTED.join(", "))]
    Unknown { name: String },
    #[error(
        "prioritizer '{name}' is not implemented by umpath (it implements {})",
        IMPLEMENTED.join(", ")
    )]
    NotImplemented { name: String },
    /// `arg` is the offending argument as written ("" when one is
    /// missing).
    #[error("prio_args for '{prio}': {why}")]
    BadArg {
        prio: &'static str,
        arg: String,
        why: String,
    },
}

impl PrioConfigError {
    pub(crate) fn bad(prio: &'static str, arg: &str, why: impl Into<String>) -> Self {
        PrioConfigError::BadArg {
            prio,
            arg: arg.to_string(),
            why: why.into(),
        }
    }
}

/// Why a prioritizer could not compute a path's priority.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrioError {
    /// The edge did not gather a fact the prioritizer needs (see
    /// [`Prioritizer::needs`]), or the path has no such thing.
    #[error("prioritizer '{prio}' needs the path's {fact}, which was not available")]
    Missing {
        prio: &'static str,
        fact: &'static str,
    },
    /// The REPORT TARGET PORT GROUPS data did not decode.
    #[error("alua: {0}")]
    Rtpg(#[from] ScsiError),
    /// The path's group is not in the REPORT TARGET PORT GROUPS data.
    #[error("alua: target port group {tpg} is not in the REPORT TARGET PORT GROUPS data")]
    GroupNotFound { tpg: u16 },
    /// No target port group designator, and the relative target port is
    /// unknown or in no group.
    #[error("alua: the path's target port group is unknown (no target port group designator{})",
        .rel_port.map_or_else(String::new, |p| format!(", relative target port {p} in no group")))]
    NoOwnGroup { rel_port: Option<u16> },
}

/// The kernel's ALUA attributes of a SCSI device (`access_state`,
/// `preferred_path` in `/sys/class/scsi_device/H:C:T:L/device/`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SysfsAlua {
    /// `access_state` as read (e.g. "active/optimized").
    pub access_state: String,
    /// `preferred_path` as a number: `None` when unreadable or not a
    /// number (multipath-tools then counts the path as not preferred).
    pub preferred: Option<u64>,
}

/// What the ALUA prioritizer needs from a path.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AluaFacts {
    /// REPORT TARGET PORT GROUPS parameter data, as transferred.
    pub rtpg: Vec<u8>,
    /// The path's target port group ([`crate::scsi::vpd::target_port_group`]).
    pub tpg: Option<u16>,
    /// The path's relative target port
    /// ([`crate::scsi::vpd::relative_target_port`]), used when `tpg` is
    /// unknown.
    pub rel_port: Option<u16>,
}

/// Everything an edge may have gathered about a path for its prioritizer.
/// A prioritizer reads only what [`Prioritizer::needs`] names.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PathFacts {
    /// Kernel device name ("sdb").
    pub devname: Option<String>,
    /// "H:C:T:L", decimal.
    pub hbtl: Option<String>,
    /// The path's serial (VPD page 0x80, trimmed).
    pub serial: Option<String>,
    /// "host_wwnn:host_wwpn:target_wwnn:target_wwpn" as multipath-tools
    /// builds it for `weightedpath wwn`.
    pub wwn: Option<String>,
    pub alua: Option<AluaFacts>,
    pub sysfs: Option<SysfsAlua>,
    /// Latencies of the direct reads of one measurement (`io_num` of them).
    pub latencies: Option<Vec<Duration>>,
    /// A uniformly random number.
    pub random: Option<u32>,
}

/// Which facts a prioritizer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Needs {
    pub devname: bool,
    pub hbtl: bool,
    pub serial: bool,
    pub wwn: bool,
    /// REPORT TARGET PORT GROUPS and the VPD page 0x83 (SCSI only).
    pub alua: bool,
    /// The kernel's `access_state`/`preferred_path` (SCSI disks only).
    pub sysfs: bool,
    /// This many timed direct reads of one block.
    pub latency_reads: Option<u32>,
    pub random: bool,
}

impl Needs {
    /// The prioritizer needs a SCSI device (a `file` or `nbd` path cannot
    /// give what it reads).
    pub fn scsi(&self) -> bool {
        self.alua || self.sysfs || self.hbtl || self.wwn
    }
}

/// The arguments of `sysfs` and `alua`: only `exclusive_pref_bit`.
fn exclusive_pref(prio: &'static str, args: &str) -> Result<bool, PrioConfigError> {
    let mut exclusive = false;
    for w in args.split_whitespace() {
        if w == "exclusive_pref_bit" {
            exclusive = true;
        } else {
            return Err(PrioConfigError::bad(
                prio,
                w,
                format!("unknown argument '{w}' (the only one is exclusive_pref_bit)"),
            ));
        }
    }
    Ok(exclusive)
}

fn no_args(prio: &'static str, args: &str) -> Result<(), PrioConfigError> {
    match args.split_whitespace().next() {
        None => Ok(()),
        Some(w) => Err(PrioConfigError::bad(
            prio,
            w,
            format!("'{prio}' takes no arguments, got '{w}'"),
        )),
    }
}

impl Prioritizer {
    /// The prioritizer `name` with arguments `args` (the `prio` and
    /// `prio_args` settings).
    pub fn parse(name: &str, args: &str) -> Result<Prioritizer, PrioConfigError> {
        match name {
            "const" => no_args("const", args).map(|()| Prioritizer::Const),
            "random" => no_args("random", args).map(|()| Prioritizer::Random),
            "weightedpath" => WeightedPath::parse(args).map(Prioritizer::WeightedPath),
            "path_latency" => PathLatency::parse(args).map(Prioritizer::PathLatency),
            "sysfs" => Ok(Prioritizer::Sysfs {
                exclusive_pref: exclusive_pref("sysfs", args)?,
            }),
            "alua" => Ok(Prioritizer::Alua {
                exclusive_pref: exclusive_pref("alua", args)?,
            }),
            n if NOT_IMPLEMENTED.contains(&n) => Err(PrioConfigError::NotImplemented {
                name: n.to_string(),
            }),
            n => Err(PrioConfigError::Unknown {
                name: n.to_string(),
            }),
        }
    }

    /// The multipath.conf name.
    pub fn name(&self) -> &'static str {
        match self {
            Prioritizer::Const => "const",
            Prioritizer::Random => "random",
            Prioritizer::WeightedPath(_) => "weightedpath",
            Prioritizer::PathLatency(_) => "path_latency",
            Prioritizer::Sysfs { .. } => "sysfs",
            Prioritizer::Alua { .. } => "alua",
        }
    }

    /// The arguments, normalised (what [`Prioritizer::parse`] reads back
    /// to the same prioritizer).
    pub fn args(&self) -> String {
        match self {
            Prioritizer::Const | Prioritizer::Random => String::new(),
            Prioritizer::WeightedPath(w) => w.to_string(),
            Prioritizer::PathLatency(l) => l.to_string(),
            Prioritizer::Sysfs { exclusive_pref } | Prioritizer::Alua { exclusive_pref } => {
                if *exclusive_pref {
                    "exclusive_pref_bit".to_string()
                } else {
                    String::new()
                }
            }
        }
    }

    /// The facts [`Prioritizer::score`] reads.
    pub fn needs(&self) -> Needs {
        let mut n = Needs::default();
        match self {
            Prioritizer::Const => {}
            Prioritizer::Random => n.random = true,
            Prioritizer::WeightedPath(w) => match w.field {
                WeightedField::Hbtl => n.hbtl = true,
                WeightedField::Devname => n.devname = true,
                WeightedField::Serial => n.serial = true,
                WeightedField::Wwn => n.wwn = true,
            },
            Prioritizer::PathLatency(l) => n.latency_reads = Some(l.io_num),
            Prioritizer::Sysfs { .. } => n.sysfs = true,
            Prioritizer::Alua { .. } => n.alua = true,
        }
        n
    }

    /// The path's priority from `facts`.
    pub fn score(&self, facts: &PathFacts) -> Result<Prio, PrioError> {
        let missing = |fact| PrioError::Missing {
            prio: self.name(),
            fact,
        };
        match self {
            Prioritizer::Const => Ok(Prio::DEFAULT),
            Prioritizer::Random => {
                let r = facts.random.ok_or_else(|| missing("random number"))?;
                Ok(random_prio(r))
            }
            Prioritizer::WeightedPath(w) => {
                let (value, fact) = match w.field {
                    WeightedField::Hbtl => (&facts.hbtl, "H:C:T:L"),
                    WeightedField::Devname => (&facts.devname, "device name"),
                    WeightedField::Serial => (&facts.serial, "serial"),
                    WeightedField::Wwn => (&facts.wwn, "port names"),
                };
                let value = value.as_deref().ok_or_else(|| missing(fact))?;
                Ok(w.score(value))
            }
            Prioritizer::PathLatency(l) => {
                let samples = facts
                    .latencies
                    .as_deref()
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| missing("read latencies"))?;
                Ok(l.score(samples))
            }
            Prioritizer::Sysfs { exclusive_pref } => {
                let s = facts
                    .sysfs
                    .as_ref()
                    .ok_or_else(|| missing("access_state"))?;
                Ok(sysfs_prio(
                    &s.access_state,
                    s.preferred.is_some_and(|p| p != 0),
                    *exclusive_pref,
                ))
            }
            Prioritizer::Alua { exclusive_pref } => {
                let a = facts
                    .alua
                    .as_ref()
                    .ok_or_else(|| missing("REPORT TARGET PORT GROUPS data"))?;
                let (state, preferred) = alua_state(a)?;
                Ok(alua_prio(state, preferred, *exclusive_pref))
            }
        }
    }
}

impl fmt::Display for Prioritizer {
    /// `name` or `name args`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let args = self.args();
        if args.is_empty() {
            f.write_str(self.name())
        } else {
            write!(f, "{} {args}", self.name())
        }
    }
}

/// `random`: 1 to 10, spread evenly over the u32 range.
pub fn random_prio(r: u32) -> Prio {
    let tenth = (u64::from(r) * 10) >> 32;
    Prio(1 + i32::try_from(tenth).unwrap_or(0))
}

/// The priority of an asymmetric access state, as multipath-tools scores
/// it: active/optimized 50, active/non-optimized 10, lba-dependent 5,
/// standby 1, anything else 0; a preferred path gets 80 more, unless it
/// is active/optimized and `exclusive_pref` is off.
pub fn alua_prio(state: AccessState, preferred: bool, exclusive_pref: bool) -> Prio {
    let base = match state {
        AccessState::ActiveOptimized => 50,
        AccessState::ActiveNonOptimized => 10,
        AccessState::LbaDependent => 5,
        AccessState::Standby => 1,
        AccessState::Unavailable
        | AccessState::Offline
        | AccessState::Transitioning
        | AccessState::Reserved(_) => 0,
    };
    let bonus = preferred && (state != AccessState::ActiveOptimized || exclusive_pref);
    Prio(if bonus { base + 80 } else { base })
}

/// The `sysfs` prioritizer: `access_state` read by its prefix
/// ("active/optimized", "active/non-optimized", "lba-dependent",
/// "standby"; anything else 0), then the preferred bonus as in
/// [`alua_prio`].
pub fn sysfs_prio(access_state: &str, preferred: bool, exclusive_pref: bool) -> Prio {
    const STATES: [(&str, AccessState); 4] = [
        ("active/optimized", AccessState::ActiveOptimized),
        ("active/non-optimized", AccessState::ActiveNonOptimized),
        ("lba-dependent", AccessState::LbaDependent),
        ("standby", AccessState::Standby),
    ];
    let state = STATES
        .iter()
        .find(|(name, _)| access_state.starts_with(name))
        .map_or(AccessState::Unavailable, |(_, s)| *s);
    alua_prio(state, preferred, exclusive_pref)
}

/// The state and preferred bit of the path's own group in its REPORT
/// TARGET PORT GROUPS data.
pub fn alua_state(a: &AluaFacts) -> Result<(AccessState, bool), PrioError> {
    let t = rtpg::parse(&a.rtpg)?;
    let group = match (a.tpg, a.rel_port) {
        (Some(tpg), _) => t.group(tpg).ok_or(PrioError::GroupNotFound { tpg })?,
        (None, Some(port)) => t.group_of_port(port).ok_or(PrioError::NoOwnGroup {
            rel_port: Some(port),
        })?,
        (None, None) => return Err(PrioError::NoOwnGroup { rel_port: None }),
    };
    Ok((group.state, group.preferred))
}

/// What `detect_prio` looks at on a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetectFacts {
    /// The path is a SCSI device (multipath-tools also detects `ana` on
    /// NVMe, which umpath does not have).
    pub scsi: bool,
    /// The LUN's target port group support as the edge established it:
    /// the INQUIRY TPGS field, but `Tpgs::None` when the LUN claims TPGS
    /// yet has no usable target port group or RTPG answer while the path
    /// is up (as multipath-tools' `detect_alua` decides); `None` when
    /// INQUIRY could not be read.
    pub tpgs: Option<Tpgs>,
    /// VPD page 0xc9 says "vac1" (an RDAC array, which prefers RTPG).
    pub rdac: bool,
    /// The kernel's `access_state` attribute can be read.
    pub sysfs_access_state: bool,
}

/// multipath-tools' `detect_prio`: on a SCSI LUN with target port groups,
/// `sysfs` when the kernel's `access_state` is readable and the LUN does
/// explicit ALUA or is not an RDAC array, else `alua` (both without
/// arguments); `None` (keep the configured prioritizer) otherwise. An
/// unknown TPGS field counts as "has target port groups", as in
/// multipath-tools.
pub fn detect(f: &DetectFacts) -> Option<Prioritizer> {
    if !f.scsi || f.tpgs == Some(Tpgs::None) {
        return None;
    }
    let explicit = f.tpgs.is_some_and(Tpgs::explicit);
    if (explicit || !f.rdac) && f.sysfs_access_state {
        Some(Prioritizer::Sysfs {
            exclusive_pref: false,
        })
    } else {
        Some(Prioritizer::Alua {
            exclusive_pref: false,
        })
    }
}

/// Where the prioritizer a path runs came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrioSource {
    /// The `prio`/`prio_args` settings (their own origin applies).
    Configured,
    /// `detect_prio` chose it ("storage device autodetected").
    Autodetected,
    /// `alua` on a LUN without target port groups: `const` instead
    /// ("emergency fallback - alua failed").
    AluaFallback,
}

impl fmt::Display for PrioSource {
    /// Like multipath-tools' origin notes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PrioSource::Configured => "(setting: configured)",
            PrioSource::Autodetected => "(setting: storage device autodetected)",
            PrioSource::AluaFallback => "(setting: emergency fallback - alua failed)",
        })
    }
}

/// multipath-tools' `select_prio` once the configured prioritizer is
/// known: `detect_prio` first when on, then `alua` on a path that is not
/// SCSI or whose LUN's TPGS is known to be none falls back to `const`.
pub fn select(
    configured: Prioritizer,
    detect_prio: bool,
    f: &DetectFacts,
) -> (Prioritizer, PrioSource) {
    let (p, source) = match detect_prio.then(|| detect(f)).flatten() {
        Some(p) => (p, PrioSource::Autodetected),
        None => (configured, PrioSource::Configured),
    };
    let no_tpgs = !f.scsi || f.tpgs == Some(Tpgs::None);
    if matches!(p, Prioritizer::Alua { .. }) && no_tpgs {
        return (Prioritizer::Const, PrioSource::AluaFallback);
    }
    (p, source)
}

#[cfg(test)]
mod tests;
