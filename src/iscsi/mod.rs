//! iSCSI (RFC 7143), the pure core: PDU codec, digests, text keys, CHAP,
//! the login state machine, the full feature phase of a session
//! ([`session`]) and `iscsi://` URLs ([`url`]). No IO, no clock, no randomness: random
//! bytes are arguments, so everything here is tested without a network.
//! A connection driver (TCP, tasks, timers) sits on top of this API:
//!
//! * [`pdu`]: receive with `read 48 bytes` → [`pdu::frame_len`] (checks the
//!   opcode and DataSegmentLength against our MaxRecvDataSegmentLength
//!   before anything is allocated) → read the rest → [`pdu::Pdu::decode`].
//!   Send small PDUs with [`pdu::Pdu::encode`]; for payloads in the
//!   caller's buffers, [`pdu::Pdu::encode_header`] plus [`pdu::framing`]
//!   give the BHS, digests and padding for one vectored write.
//! * [`digest`]: CRC32C and [`digest::Digests`] (which digests a
//!   connection uses: none during login, then [`login::SessionParams`]'s).
//! * [`text`]: `key=value` text, [`text::TextAccumulator`] for text
//!   continued over PDUs (C bit), SendTargets:
//!   [`text::send_targets_request`] then [`text::parse_send_targets`] over
//!   the pairs of every Text Response (answer a Text Response with F=0
//!   with an empty Text Request carrying its TTT).
//! * [`chap`]: CHAP digests and [`chap::Secret`], which never prints.
//! * [`login`]: [`login::Login::start`] gives the first Login Request;
//!   feed each Login Response to [`login::Login::on_response`], which
//!   answers [`login::Step::Send`] (the next request) or
//!   [`login::Step::Done`] with the [`login::Negotiated`] session
//!   (TSIH, sequence numbers, parameters). [`login::LoginError::Redirect`]
//!   names the portal to log in at instead; the driver follows it.

pub mod chap;
pub mod digest;
pub mod login;
pub mod pdu;
pub mod session;
pub mod text;
pub mod url;
