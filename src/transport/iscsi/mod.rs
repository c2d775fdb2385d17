//! `iscsi` paths: a userspace iSCSI initiator (issue 14, in progress).

pub mod conn;
pub mod local;
