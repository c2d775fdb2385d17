//! A path: one way to reach a LUN, with the checker's view of it and the
//! engine's (dm) view of it.
//!
//! Two independent state machines meet here:
//!
//! * [`CheckState`] is what the last path check said (multipathd's
//!   `chk_st`: ready, faulty, ghost, i/o pending, shaky, i/o timeout).
//! * [`DmState`] is whether the engine may send IO down the path (dm's
//!   `dm_st`: active or failed). IO errors and admins fail paths; checks
//!   that find a path healthy reinstate it, unless an admin failed it.

use std::fmt;

/// Index of a path inside its map.
pub type PathId = usize;

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
    /// The path works but has been unreliable ("shaky").
    Shaky,
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
            CheckState::Timeout => "i/o timeout",
        }
    }

    /// True if a check in this state means the path can carry IO.
    pub fn is_usable(self) -> bool {
        matches!(self, CheckState::Up | CheckState::Ghost | CheckState::Shaky)
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
