//! iSCSI (RFC 7143), the pure core: PDU codec, digests, text keys, CHAP
//! and the login state machine. No IO, no clock, no randomness: time and
//! random bytes are arguments, so everything here is tested without a
//! network.

pub mod chap;
pub mod digest;
pub mod pdu;
pub mod text;
