//! The multipath model: paths, path groups and maps, with their state
//! machines. Pure: no IO and no clock (time is a [`Time`] argument).

pub mod map;
pub mod path;
#[cfg(test)]
mod proptests;

pub use crate::units::{PathId, Prio, Time};

pub use map::{
    GroupStatus, LoadView, Map, MapEvent, MapPolicy, NoLoad, PathGroup, Route, SwitchReason,
};
pub use path::{CheckState, DmState, Path, PathInfo};
