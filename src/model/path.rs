//! A path: one way to reach a LUN, with the checker's view of it and the
//! engine's (dm) view of it.
//!
//! Two independent state machines meet here:
//!
//! * [`CheckState`] is what the last path check said (multipathd's
//!   `chk_st`: ready, faulty, ghost, i/o pending, i/o timeout; and
//!   shaky or marginal for a path [`crate::policy::shaky`] holds out).
//! * [`DmState`] is whether the engine may send IO down the path (dm's
//!   `dm_st`: active or failed). IO errors and admins fail paths; checks
//!   that find a path healthy reinstate it, unless an admin failed it.

use std::fmt;

use crate::units::{Prio, Time};

/// What the path checker last concluded (multipathd's `chk_st`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckState {
    /// Not checked yet.
    Unchecked,
    /// The path works ("ready").
    Up,
    /// The path does not work ("faulty").
    Down,
    /// The path works but is a standby port: usable only when nothing
    /// better is ("ghost").
    Ghost,
    /// The check has not finished yet ("i/o pending").
    Pending,
    /// The check passed but the path is held out of IO: it failed too
    /// often (san_path_err, "shaky"; multipathd's "delayed").
    Shaky,
    /// The check passed but the path is held out of IO: its IO errors
    /// are being sampled or were above marginal_path_err_rate_threshold
    /// ("marginal").
    Marginal,
    /// The check did not finish within checker_timeout ("i/o timeout").
    Timeout,
}

impl CheckState {
    /// multipathd's spelling, as `show paths` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckState::Unchecked => "undef",
            CheckState::Up => "ready",
            CheckState::Down => "faulty",
            CheckState::Ghost => "ghost",
            CheckState::Pending => "i/o pending",
            CheckState::Shaky => "shaky",
            CheckState::Marginal => "marginal",
            CheckState::Timeout => "i/o timeout",
        }
    }

    /// True if a check in this state means the path can carry IO.
    pub fn is_usable(self) -> bool {
        matches!(self, CheckState::Up | CheckState::Ghost)
    }
}

impl fmt::Display for CheckState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the engine sends IO down the path (dm's `dm_st`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DmState {
    Active,
    Failed,
}

impl DmState {
    pub fn as_str(self) -> &'static str {
        match self {
            DmState::Active => "active",
            DmState::Failed => "failed",
        }
    }
}

impl fmt::Display for DmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a path is, as discovery or the config declared it: the role of
/// SCSI INQUIRY and VPD data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathInfo {
    pub name: String,
    pub vendor: String,
    pub product: String,
    pub revision: String,
    pub wwid: String,
    pub serial: String,
    /// Target node name, for group_by_node_name: the FC node name
    /// (WWNN), the iSCSI target name or a key the configuration declares;
    /// `None` if unknown (all such paths share one group).
    pub node_name: Option<String>,
    /// ALUA target port group id (from VPD page 0x83), for group_by_tpg;
    /// `None` if unknown.
    pub tpg: Option<u16>,
    /// How the path is reached, for display ("file /var/lib/...").
    pub transport: String,
}

/// A path's state inside a map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    pub info: PathInfo,
    pub check: CheckState,
    pub dm: DmState,
    /// Failed by an admin: checks do not reinstate it.
    pub admin_failed: bool,
    pub prio: Prio,
    /// Why the path is failed (None while active).
    pub reason: Option<String>,
    /// When `dm` last changed.
    pub since: Time,
    /// How many times the path has failed.
    pub failures: u64,
    /// The device went away (hotplug): the path is a tombstone that keeps
    /// its id, carries no IO and is left out of groups and listings.
    pub removed: bool,
    /// Marginal under `marginal_pathgroups on`: the path carries IO but
    /// sits in a group after every normal group
    /// ([`crate::model::Map::set_marginal`]).
    pub marginal: bool,
    /// Until when the shaky/marginal detectors hold something against the
    /// path (shaky until, sampled until, marginal until its recheck);
    /// `None` when nothing is held. Shown by `show paths`; steers nothing.
    pub held_until: Option<Time>,
}

impl Path {
    /// A path not checked yet: active until something says otherwise.
    pub fn new(info: PathInfo) -> Self {
        Path {
            info,
            check: CheckState::Unchecked,
            dm: DmState::Active,
            admin_failed: false,
            prio: Prio::DEFAULT,
            reason: None,
            since: Time(0),
            failures: 0,
            removed: false,
            marginal: false,
            held_until: None,
        }
    }

    /// A path with a first check result: failed if the check says it
    /// cannot carry IO.
    pub fn new_checked(
        info: PathInfo,
        check: CheckState,
        reason: Option<String>,
        now: Time,
    ) -> Self {
        let mut p = Path::new(info);
        p.check = check;
        p.since = now;
        if matches!(check, CheckState::Down | CheckState::Timeout) {
            p.dm = DmState::Failed;
            p.reason = reason;
        }
        p
    }

    /// May IO go down this path?
    #[inline]
    pub fn usable(&self) -> bool {
        self.dm == DmState::Active
    }
}
