//! iSCSI in userspace (issue 14): pure formats, no IO.

pub mod url;
