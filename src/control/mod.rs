//! The control socket: how `umpath show/fail/reinstate/...` talk to a
//! running daemon.
//!
//! One request per connection: the client sends one line of text in
//! multipathd's command vocabulary (`show paths`, `fail path p0`, ...) with
//! an optional trailing `--json`; the server answers with one JSON
//! [`Response`] and closes. [`proto`] is pure; [`server`] and [`client`]
//! do the IO.

pub mod client;
pub mod proto;
pub mod server;

pub use proto::{Command, FormatOf, Response, ShowWhat};
