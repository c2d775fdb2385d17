//! iSCSI (RFC 7143), the pure core: PDU codec, digests, text keys, CHAP,
//! the login state machine, the full feature phase of a session and
//! `iscsi://` URLs. No IO, no clock, no randomness: time and random bytes
//! are arguments, so everything here is tested without a network.

pub mod digest;
pub mod pdu;
pub mod session;
pub mod text;
pub mod url;
