//! NBD: a pure protocol codec ([`proto`]) and a tokio server ([`server`]).
//!
//! Every multipath map is an NBD export ([`crate::export::Export`]); the
//! server speaks the fixed newstyle handshake (GO/INFO, EXPORT_NAME, LIST,
//! ABORT, STRUCTURED_REPLY, STARTTLS with [`tls`]) and answers READ, WRITE, FLUSH, TRIM,
//! WRITE_ZEROES and DISC, with simple or structured replies, out of order.
//! [`memexport`] is a small in-memory export for tests and benchmarks.
//!
//! Module dependencies run one way: `server` (listeners, accept loop)
//! uses `conn` (one connection: handshake, reader, writer, its
//! [`Limits`]), which uses `proto`, `tls` (TLS and per-export allow-lists),
//! `unaligned` and `wire` (replies batched into vectored writes); `proto`, `tls`, `uri` and `memexport` use nothing else in
//! `nbd`.

mod budget;
mod conn;
pub mod memexport;
pub mod proto;
mod ratelog;
pub mod server;
pub mod tls;
mod unaligned;
pub mod uri;
mod wire;

pub use conn::{serve_negotiated, Limits};
pub use server::{NbdServer, ServerConfig};
pub use tls::{Security, TlsMode, TlsOptions};
