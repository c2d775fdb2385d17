//! umpath: a userspace multipath engine.
//!
//! The crate is split the way the data flows (see docs/ARCHITECTURE.md):
//!
//! * **Pure core** (no tokio, nix or libc; unit-tested without IO):
//!   [`config`] (multipath.conf parsing, hardware table, property selection
//!   with origins), [`model`] (paths, path groups, maps and their state
//!   machines) and [`policy`] (path selectors, grouping, failback,
//!   no_path_retry), over the leaf value types of [`units`] (`Time`,
//!   `PathId`, `Prio`). Time is always passed in, never read.
//! * **Edges**: [`transport`] (file, later SCSI/NBD/iSCSI) behind one small
//!   IO interface, [`checker`] (path probes), [`engine`] (per-map IO
//!   dispatch with retry on another path), [`nbd`] (pure protocol codec plus
//!   a tokio server), [`control`] (control socket protocol, server, client).
//! * [`daemon`] is the only module that sees everything: it loads the
//!   configuration, assembles maps, runs checkers, serves NBD and the
//!   control socket, handles signals, sd_notify and reload.
//!
//! [`export`] is the narrow boundary between front-ends (NBD) and the
//! engine: a request goes in, a completion comes back.

pub mod access;
pub mod bounded_regex;
pub mod checker;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod discovery;
pub mod engine;
pub mod error;
pub mod export;
pub mod iobuf;
pub mod iscsi;
pub mod kernel;
pub mod model;
pub mod nbd;
pub mod policy;
pub mod prio;
pub mod resources;
pub mod scsi;
pub mod sim;
pub mod transport;
pub mod units;
pub mod unixsock;
