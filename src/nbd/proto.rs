//! The NBD wire protocol as pure data: constants, decoders and encoders.
//!
//! Nothing here does IO, allocates on the transmission hot path, or panics
//! on any input: every decoder takes bytes and returns a typed value or a
//! [`ProtoError`]. The server ([`super::server`]) owns the sockets; this
//! module owns the byte layouts and the rules for what a request may ask.
//!
//! Only the fixed newstyle handshake is spoken. Extended headers, TLS and
//! metadata contexts are recognised by number and answered with
//! `NBD_REP_ERR_UNSUP`.
//!
//! [`fuzz_option`] and [`fuzz_request`] are entry points for a cargo-fuzz
//! target: they drive every decoder (and the request checker) with
//! arbitrary bytes.

use crate::export::{BlockSizes, ExportCaps};

// ---------------------------------------------------------------------------
// Magic numbers
// ---------------------------------------------------------------------------

/// "NBDMAGIC": first 8 bytes the server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// "IHAVEOPT": newstyle handshake magic, also prefixes every option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Prefix of every option reply.
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Prefix of every (compact) transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Prefix of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Prefix of a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
/// Extended-header request magic (not negotiated by this server).
pub const EXTENDED_REQUEST_MAGIC: u32 = 0x21e4_1c71;

// ---------------------------------------------------------------------------
// Handshake flags
// ---------------------------------------------------------------------------

/// Handshake flag: the server speaks fixed newstyle.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag: the server can omit the 124 zero bytes.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag: the client speaks fixed newstyle.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: omit the 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

// ---------------------------------------------------------------------------
// Transmission flags
// ---------------------------------------------------------------------------

pub const FLAG_HAS_FLAGS: u16 = 1 << 0;
pub const FLAG_READ_ONLY: u16 = 1 << 1;
pub const FLAG_SEND_FLUSH: u16 = 1 << 2;
pub const FLAG_SEND_FUA: u16 = 1 << 3;
pub const FLAG_ROTATIONAL: u16 = 1 << 4;
pub const FLAG_SEND_TRIM: u16 = 1 << 5;
pub const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const FLAG_SEND_DF: u16 = 1 << 7;
pub const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;
pub const FLAG_SEND_RESIZE: u16 = 1 << 9;
pub const FLAG_SEND_CACHE: u16 = 1 << 10;
pub const FLAG_SEND_FAST_ZERO: u16 = 1 << 11;
pub const FLAG_BLOCK_STATUS_PAYLOAD: u16 = 1 << 12;

// ---------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------

pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_PEEK_EXPORT: u32 = 4;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;
pub const OPT_EXTENDED_HEADERS: u32 = 11;

// ---------------------------------------------------------------------------
// Option replies
// ---------------------------------------------------------------------------

pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
/// Bit set in every error reply type.
pub const REP_FLAG_ERROR: u32 = 1 << 31;
pub const REP_ERR_UNSUP: u32 = REP_FLAG_ERROR | 1;
pub const REP_ERR_POLICY: u32 = REP_FLAG_ERROR | 2;
pub const REP_ERR_INVALID: u32 = REP_FLAG_ERROR | 3;
pub const REP_ERR_PLATFORM: u32 = REP_FLAG_ERROR | 4;
pub const REP_ERR_TLS_REQD: u32 = REP_FLAG_ERROR | 5;
pub const REP_ERR_UNKNOWN: u32 = REP_FLAG_ERROR | 6;
pub const REP_ERR_SHUTDOWN: u32 = REP_FLAG_ERROR | 7;
pub const REP_ERR_BLOCK_SIZE_REQD: u32 = REP_FLAG_ERROR | 8;
pub const REP_ERR_TOO_BIG: u32 = REP_FLAG_ERROR | 9;
pub const REP_ERR_EXT_HEADER_REQD: u32 = REP_FLAG_ERROR | 10;

// ---------------------------------------------------------------------------
// Info types (NBD_REP_INFO payloads and NBD_OPT_INFO/GO requests)
// ---------------------------------------------------------------------------

pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

// ---------------------------------------------------------------------------
// Commands and command flags
// ---------------------------------------------------------------------------

pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_CACHE: u16 = 5;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;
pub const CMD_RESIZE: u16 = 8;

pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
pub const CMD_FLAG_DF: u16 = 1 << 2;
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;
pub const CMD_FLAG_PAYLOAD_LEN: u16 = 1 << 5;

// ---------------------------------------------------------------------------
// Structured replies
// ---------------------------------------------------------------------------

pub const REPLY_FLAG_DONE: u16 = 1 << 0;
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
/// Bit set in every error chunk type.
pub const REPLY_TYPE_FLAG_ERROR: u16 = 1 << 15;
pub const REPLY_TYPE_ERROR: u16 = REPLY_TYPE_FLAG_ERROR | 1;
pub const REPLY_TYPE_ERROR_OFFSET: u16 = REPLY_TYPE_FLAG_ERROR | 2;

// ---------------------------------------------------------------------------
// Error numbers
// ---------------------------------------------------------------------------

pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const ENOMEM: u32 = 12;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const EOVERFLOW: u32 = 75;
pub const ENOTSUP: u32 = 95;
pub const ESHUTDOWN: u32 = 108;

// ---------------------------------------------------------------------------
// Sizes and limits
// ---------------------------------------------------------------------------

/// Server greeting: NBDMAGIC, IHAVEOPT, handshake flags.
pub const GREETING_LEN: usize = 18;
/// Option request header: IHAVEOPT, option, length.
pub const OPTION_HEADER_LEN: usize = 16;
/// Option reply header: magic, option, reply type, length.
pub const OPTION_REPLY_HEADER_LEN: usize = 20;
/// Compact request header.
pub const REQUEST_HEADER_LEN: usize = 28;
/// Simple reply header.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Structured reply chunk header.
pub const CHUNK_HEADER_LEN: usize = 20;
/// Chunk header plus the 8-byte offset of an OFFSET_DATA chunk.
pub const OFFSET_DATA_HEADER_LEN: usize = CHUNK_HEADER_LEN + 8;
/// Chunk header plus error number and message length of an ERROR chunk.
pub const ERROR_CHUNK_HEADER_LEN: usize = CHUNK_HEADER_LEN + 6;
/// Size and flags (and zeroes) after `NBD_OPT_EXPORT_NAME`.
pub const EXPORT_NAME_REPLY_LEN: usize = 8 + 2 + 124;

/// Largest option payload accepted; larger is treated as denial of
/// service (hard disconnect). A GO with a maximal name needs ~4 KiB.
pub const MAX_OPTION_LEN: u32 = 64 * 1024;
/// Longest string (export name, description) the protocol allows.
pub const MAX_STRING_LEN: usize = 4096;
/// Largest READ/WRITE payload: the spec's interoperable default maximum,
/// which a server should never treat as abuse.
pub const MAX_PAYLOAD: u32 = 32 * 1024 * 1024;
/// Largest minimum block size the spec allows.
pub const MAX_MIN_BLOCK: u32 = 64 * 1024;

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why bytes could not be decoded. Any of these during the handshake or on
/// a request header means the stream cannot be resynchronised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("truncated message: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    #[error("bad magic {0:#x}")]
    BadMagic(u64),
    #[error("unknown client flags {0:#x}")]
    UnknownClientFlags(u32),
    #[error("option payload of {len} bytes exceeds the {max} byte limit")]
    OptionTooLong { len: u32, max: u32 },
    #[error("write payload of {len} bytes exceeds the {max} byte limit")]
    PayloadTooLong { len: u32, max: u32 },
    #[error("invalid option data: {0}")]
    InvalidOption(&'static str),
    #[error("unknown command {0}")]
    UnknownCommand(u16),
    #[error("malformed reply: {0}")]
    BadReply(&'static str),
}

// ---------------------------------------------------------------------------
// Little helpers (all bounds-checked; never panic)
// ---------------------------------------------------------------------------

fn take<const N: usize>(b: &[u8]) -> Result<&[u8; N], ProtoError> {
    b.get(..N)
        .and_then(|s| s.try_into().ok())
        .ok_or(ProtoError::Truncated {
            need: N,
            have: b.len(),
        })
}

fn be16(b: &[u8], at: usize) -> u16 {
    let mut a = [0u8; 2];
    if let Some(s) = b.get(at..at + 2) {
        a.copy_from_slice(s);
    }
    u16::from_be_bytes(a)
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_be_bytes(a)
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        a.copy_from_slice(s);
    }
    u64::from_be_bytes(a)
}

/// A forward-only reader over an option payload.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.rest.len() < n {
            return None;
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Some(head)
    }
    fn u16(&mut self) -> Option<u16> {
        self.bytes(2).map(|b| be16(b, 0))
    }
    fn u32(&mut self) -> Option<u32> {
        self.bytes(4).map(|b| be32(b, 0))
    }
}

/// Check a protocol string: UTF-8, no NUL, at most [`MAX_STRING_LEN`].
pub fn check_string(b: &[u8]) -> Result<&str, ProtoError> {
    if b.len() > MAX_STRING_LEN {
        return Err(ProtoError::InvalidOption("string longer than 4096 bytes"));
    }
    let s = std::str::from_utf8(b).map_err(|_| ProtoError::InvalidOption("string is not UTF-8"))?;
    if s.contains('\0') {
        return Err(ProtoError::InvalidOption("string contains NUL"));
    }
    Ok(s)
}

/// Clip a string to at most `max` bytes on a character boundary.
fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

// ---------------------------------------------------------------------------
// Handshake: greeting and client flags
// ---------------------------------------------------------------------------

/// The handshake flags this server sends.
pub const SERVER_HANDSHAKE_FLAGS: u16 = FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES;

/// The server's first 18 bytes.
pub fn encode_greeting(handshake_flags: u16) -> [u8; GREETING_LEN] {
    let mut b = [0u8; GREETING_LEN];
    b[0..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    b[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    b[16..18].copy_from_slice(&handshake_flags.to_be_bytes());
    b
}

/// Decode the greeting (client side; used by tests and the fuzzer).
pub fn decode_greeting(b: &[u8]) -> Result<u16, ProtoError> {
    let b = take::<GREETING_LEN>(b)?;
    let m = be64(b, 0);
    if m != NBDMAGIC {
        return Err(ProtoError::BadMagic(m));
    }
    let m = be64(b, 8);
    if m != IHAVEOPT {
        return Err(ProtoError::BadMagic(m));
    }
    Ok(be16(b, 16))
}

/// What the client answered to the greeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientFlags {
    pub fixed_newstyle: bool,
    pub no_zeroes: bool,
}

impl ClientFlags {
    pub fn bits(self) -> u32 {
        (if self.fixed_newstyle {
            FLAG_C_FIXED_NEWSTYLE
        } else {
            0
        }) | (if self.no_zeroes { FLAG_C_NO_ZEROES } else { 0 })
    }
}

/// Decode the client's 32-bit flags. Bits the server did not offer are an
/// error: the spec requires the server to drop the connection.
pub fn decode_client_flags(b: &[u8], handshake_flags: u16) -> Result<ClientFlags, ProtoError> {
    let v = be32(take::<4>(b)?, 0);
    let mut allowed = FLAG_C_FIXED_NEWSTYLE;
    if handshake_flags & FLAG_NO_ZEROES != 0 {
        allowed |= FLAG_C_NO_ZEROES;
    }
    if v & !allowed != 0 {
        return Err(ProtoError::UnknownClientFlags(v));
    }
    Ok(ClientFlags {
        fixed_newstyle: v & FLAG_C_FIXED_NEWSTYLE != 0,
        no_zeroes: v & FLAG_C_NO_ZEROES != 0,
    })
}

// ---------------------------------------------------------------------------
// Option requests
// ---------------------------------------------------------------------------

/// The fixed 16-byte part of an option request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub len: u32,
}

impl OptionHeader {
    /// Decode and check the magic and the length cap.
    pub fn decode(b: &[u8], max_len: u32) -> Result<Self, ProtoError> {
        let b = take::<OPTION_HEADER_LEN>(b)?;
        let magic = be64(b, 0);
        if magic != IHAVEOPT {
            return Err(ProtoError::BadMagic(magic));
        }
        let h = OptionHeader {
            option: be32(b, 8),
            len: be32(b, 12),
        };
        if h.len > max_len {
            return Err(ProtoError::OptionTooLong {
                len: h.len,
                max: max_len,
            });
        }
        Ok(h)
    }

    pub fn encode(&self) -> [u8; OPTION_HEADER_LEN] {
        let mut b = [0u8; OPTION_HEADER_LEN];
        b[0..8].copy_from_slice(&IHAVEOPT.to_be_bytes());
        b[8..12].copy_from_slice(&self.option.to_be_bytes());
        b[12..16].copy_from_slice(&self.len.to_be_bytes());
        b
    }
}

/// Which `NBD_INFO_*` items a GO/INFO asked for (unknown ones are ignored,
/// as the spec requires).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InfoRequests {
    pub export: bool,
    pub name: bool,
    pub description: bool,
    pub block_size: bool,
}

/// The payload of `NBD_OPT_INFO` / `NBD_OPT_GO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InfoRequest<'a> {
    /// Empty means the default export.
    pub name: &'a str,
    pub requests: InfoRequests,
}

/// A decoded option request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientOption<'a> {
    /// Old-style end of negotiation; errors cannot be reported.
    ExportName(&'a str),
    Abort,
    List,
    Info(InfoRequest<'a>),
    Go(InfoRequest<'a>),
    StructuredReply,
    /// `NBD_OPT_STARTTLS`: upgrade to TLS after an `NBD_REP_ACK`.
    StartTls,
    /// Known or unknown but not implemented here: metadata contexts,
    /// extended headers, anything else. Answer `ERR_UNSUP`.
    Unsupported(u32),
}

/// Decode an option's payload. `Err(InvalidOption)` means answer
/// `NBD_REP_ERR_INVALID` (or, for `EXPORT_NAME`, which cannot report
/// errors, close the connection).
pub fn parse_option(option: u32, payload: &[u8]) -> Result<ClientOption<'_>, ProtoError> {
    match option {
        OPT_EXPORT_NAME => Ok(ClientOption::ExportName(check_string(payload)?)),
        // The spec asks servers to ignore any data sent with ABORT.
        OPT_ABORT => Ok(ClientOption::Abort),
        OPT_LIST => {
            if !payload.is_empty() {
                return Err(ProtoError::InvalidOption("NBD_OPT_LIST takes no data"));
            }
            Ok(ClientOption::List)
        }
        OPT_STRUCTURED_REPLY => {
            if !payload.is_empty() {
                return Err(ProtoError::InvalidOption(
                    "NBD_OPT_STRUCTURED_REPLY takes no data",
                ));
            }
            Ok(ClientOption::StructuredReply)
        }
        OPT_STARTTLS => {
            if !payload.is_empty() {
                return Err(ProtoError::InvalidOption("NBD_OPT_STARTTLS takes no data"));
            }
            Ok(ClientOption::StartTls)
        }
        OPT_INFO => Ok(ClientOption::Info(parse_info_request(payload)?)),
        OPT_GO => Ok(ClientOption::Go(parse_info_request(payload)?)),
        other => Ok(ClientOption::Unsupported(other)),
    }
}

fn parse_info_request(payload: &[u8]) -> Result<InfoRequest<'_>, ProtoError> {
    let mut c = Cursor { rest: payload };
    let short = ProtoError::InvalidOption("GO/INFO data too short");
    let name_len = c.u32().ok_or(short.clone())? as usize;
    // The name must leave room for the 16-bit count (length - 6 rule).
    if name_len > payload.len().saturating_sub(6) {
        return Err(ProtoError::InvalidOption("GO/INFO name length too large"));
    }
    let name = check_string(c.bytes(name_len).ok_or(short.clone())?)?;
    let count = c.u16().ok_or(short)? as usize;
    if c.rest.len() != count * 2 {
        return Err(ProtoError::InvalidOption(
            "GO/INFO request count does not match the data length",
        ));
    }
    let mut requests = InfoRequests::default();
    for _ in 0..count {
        match c.u16() {
            Some(INFO_EXPORT) => requests.export = true,
            Some(INFO_NAME) => requests.name = true,
            Some(INFO_DESCRIPTION) => requests.description = true,
            Some(INFO_BLOCK_SIZE) => requests.block_size = true,
            _ => {}
        }
    }
    Ok(InfoRequest { name, requests })
}

/// Encode a whole option request (client side: tests and tools).
pub fn encode_option(out: &mut Vec<u8>, option: u32, payload: &[u8]) {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&OptionHeader { option, len }.encode());
    out.extend_from_slice(payload);
}

/// Encode a GO or INFO request (client side).
pub fn encode_info_request(out: &mut Vec<u8>, option: u32, name: &str, infos: &[u16]) {
    let mut p = Vec::with_capacity(4 + name.len() + 2 + 2 * infos.len());
    p.extend_from_slice(&(name.len() as u32).to_be_bytes());
    p.extend_from_slice(name.as_bytes());
    p.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        p.extend_from_slice(&i.to_be_bytes());
    }
    encode_option(out, option, &p);
}

// ---------------------------------------------------------------------------
// Option replies
// ---------------------------------------------------------------------------

/// Append one option reply with its payload.
pub fn encode_option_reply(out: &mut Vec<u8>, option: u32, reply: u32, payload: &[u8]) {
    out.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

/// `NBD_REP_ACK`.
pub fn encode_rep_ack(out: &mut Vec<u8>, option: u32) {
    encode_option_reply(out, option, REP_ACK, &[]);
}

/// An error reply with a human-readable message (clipped to 4096 bytes).
pub fn encode_rep_error(out: &mut Vec<u8>, option: u32, reply: u32, msg: &str) {
    encode_option_reply(out, option, reply, clip(msg, MAX_STRING_LEN).as_bytes());
}

/// `NBD_REP_SERVER` for `NBD_OPT_LIST`: name, then the description as the
/// free-form trailing text.
pub fn encode_rep_server(out: &mut Vec<u8>, name: &str, description: &str) {
    let name = clip(name, MAX_STRING_LEN);
    let description = clip(description, MAX_STRING_LEN);
    let mut p = Vec::with_capacity(4 + name.len() + description.len());
    p.extend_from_slice(&(name.len() as u32).to_be_bytes());
    p.extend_from_slice(name.as_bytes());
    p.extend_from_slice(description.as_bytes());
    encode_option_reply(out, OPT_LIST, REP_SERVER, &p);
}

/// `NBD_REP_INFO` / `NBD_INFO_EXPORT`.
pub fn encode_info_export(out: &mut Vec<u8>, option: u32, size: u64, flags: u16) {
    let mut p = [0u8; 12];
    p[0..2].copy_from_slice(&INFO_EXPORT.to_be_bytes());
    p[2..10].copy_from_slice(&size.to_be_bytes());
    p[10..12].copy_from_slice(&flags.to_be_bytes());
    encode_option_reply(out, option, REP_INFO, &p);
}

fn encode_info_string(out: &mut Vec<u8>, option: u32, info: u16, s: &str) {
    let s = clip(s, MAX_STRING_LEN);
    let mut p = Vec::with_capacity(2 + s.len());
    p.extend_from_slice(&info.to_be_bytes());
    p.extend_from_slice(s.as_bytes());
    encode_option_reply(out, option, REP_INFO, &p);
}

/// `NBD_REP_INFO` / `NBD_INFO_NAME`.
pub fn encode_info_name(out: &mut Vec<u8>, option: u32, name: &str) {
    encode_info_string(out, option, INFO_NAME, name);
}

/// `NBD_REP_INFO` / `NBD_INFO_DESCRIPTION`.
pub fn encode_info_description(out: &mut Vec<u8>, option: u32, description: &str) {
    encode_info_string(out, option, INFO_DESCRIPTION, description);
}

/// `NBD_REP_INFO` / `NBD_INFO_BLOCK_SIZE`.
pub fn encode_info_block_size(out: &mut Vec<u8>, option: u32, bs: BlockSizes) {
    let mut p = [0u8; 14];
    p[0..2].copy_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    p[2..6].copy_from_slice(&bs.minimum.to_be_bytes());
    p[6..10].copy_from_slice(&bs.preferred.to_be_bytes());
    p[10..14].copy_from_slice(&bs.maximum.to_be_bytes());
    encode_option_reply(out, option, REP_INFO, &p);
}

/// The reply to `NBD_OPT_EXPORT_NAME`: size, flags and (unless the client
/// set `NBD_FLAG_C_NO_ZEROES`) 124 zero bytes.
pub fn encode_export_name_reply(out: &mut Vec<u8>, size: u64, flags: u16, no_zeroes: bool) {
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    if !no_zeroes {
        out.extend_from_slice(&[0u8; 124]);
    }
}

/// The fixed part of an option reply (client side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionReplyHeader {
    pub option: u32,
    pub reply: u32,
    pub len: u32,
}

impl OptionReplyHeader {
    pub fn decode(b: &[u8]) -> Result<Self, ProtoError> {
        let b = take::<OPTION_REPLY_HEADER_LEN>(b)?;
        let magic = be64(b, 0);
        if magic != OPT_REPLY_MAGIC {
            return Err(ProtoError::BadMagic(magic));
        }
        Ok(OptionReplyHeader {
            option: be32(b, 8),
            reply: be32(b, 12),
            len: be32(b, 16),
        })
    }

    pub fn is_error(&self) -> bool {
        self.reply & REP_FLAG_ERROR != 0
    }
}

/// A decoded `NBD_REP_INFO` payload (client side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InfoReply<'a> {
    Export { size: u64, flags: u16 },
    Name(&'a str),
    Description(&'a str),
    BlockSize(BlockSizes),
    Unknown(u16),
}

/// Decode the payload of an `NBD_REP_INFO` reply.
pub fn decode_info_reply(p: &[u8]) -> Result<InfoReply<'_>, ProtoError> {
    let bad = ProtoError::BadReply("bad NBD_REP_INFO length");
    if p.len() < 2 {
        return Err(bad);
    }
    let ty = be16(p, 0);
    let body = &p[2..];
    match ty {
        INFO_EXPORT if body.len() == 10 => Ok(InfoReply::Export {
            size: be64(body, 0),
            flags: be16(body, 8),
        }),
        INFO_NAME => Ok(InfoReply::Name(
            std::str::from_utf8(body).map_err(|_| ProtoError::BadReply("name not UTF-8"))?,
        )),
        INFO_DESCRIPTION => Ok(InfoReply::Description(
            std::str::from_utf8(body).map_err(|_| ProtoError::BadReply("description not UTF-8"))?,
        )),
        INFO_BLOCK_SIZE if body.len() == 12 => Ok(InfoReply::BlockSize(BlockSizes {
            minimum: be32(body, 0),
            preferred: be32(body, 4),
            maximum: be32(body, 8),
        })),
        INFO_EXPORT | INFO_BLOCK_SIZE => Err(bad),
        other => Ok(InfoReply::Unknown(other)),
    }
}

/// Decode an `NBD_REP_SERVER` payload into (name, description).
pub fn decode_rep_server(p: &[u8]) -> Result<(&str, &str), ProtoError> {
    let mut c = Cursor { rest: p };
    let n = c
        .u32()
        .ok_or(ProtoError::BadReply("NBD_REP_SERVER too short"))? as usize;
    let name = c
        .bytes(n)
        .ok_or(ProtoError::BadReply("NBD_REP_SERVER name too long"))?;
    let name = std::str::from_utf8(name).map_err(|_| ProtoError::BadReply("name not UTF-8"))?;
    let desc =
        std::str::from_utf8(c.rest).map_err(|_| ProtoError::BadReply("details not UTF-8"))?;
    Ok((name, desc))
}

// ---------------------------------------------------------------------------
// Transmission flags and block sizes
// ---------------------------------------------------------------------------

/// The transmission flags for an export with `caps`. Write-related
/// features are not advertised on read-only exports. `NBD_FLAG_SEND_DF` is
/// set only with structured replies (the server never fragments reads).
pub fn transmission_flags(caps: &ExportCaps, structured: bool) -> u16 {
    let mut f = FLAG_HAS_FLAGS;
    if caps.read_only {
        f |= FLAG_READ_ONLY;
    }
    if caps.flush {
        f |= FLAG_SEND_FLUSH;
    }
    if !caps.read_only {
        if caps.fua {
            f |= FLAG_SEND_FUA;
        }
        if caps.trim {
            f |= FLAG_SEND_TRIM;
        }
        if caps.write_zeroes {
            f |= FLAG_SEND_WRITE_ZEROES;
            if caps.fast_zero {
                f |= FLAG_SEND_FAST_ZERO;
            }
        }
    }
    if caps.multi_conn {
        f |= FLAG_CAN_MULTI_CONN;
    }
    if structured {
        f |= FLAG_SEND_DF;
    }
    f
}

/// Make an export's block sizes legal for `NBD_INFO_BLOCK_SIZE`: minimum a
/// power of two in 1..=64 KiB; preferred a power of two at least
/// max(minimum, 512); maximum between preferred and [`MAX_PAYLOAD`] (the
/// server never accepts more than that in one request).
pub fn sanitize_block_sizes(bs: BlockSizes) -> BlockSizes {
    let minimum = bs.minimum.clamp(1, MAX_MIN_BLOCK).next_power_of_two();
    let preferred = bs
        .preferred
        .clamp(minimum.max(512), MAX_PAYLOAD)
        .checked_next_power_of_two()
        .unwrap_or(MAX_PAYLOAD)
        .min(MAX_PAYLOAD);
    let maximum = bs.maximum.clamp(preferred, MAX_PAYLOAD);
    BlockSizes {
        minimum,
        preferred,
        maximum,
    }
}

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

/// A request's command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Read,
    Write,
    Disc,
    Flush,
    Trim,
    Cache,
    WriteZeroes,
    BlockStatus,
    /// Anything else, including `NBD_CMD_RESIZE`; carries no payload.
    Other(u16),
}

impl Command {
    pub fn from_u16(v: u16) -> Command {
        match v {
            CMD_READ => Command::Read,
            CMD_WRITE => Command::Write,
            CMD_DISC => Command::Disc,
            CMD_FLUSH => Command::Flush,
            CMD_TRIM => Command::Trim,
            CMD_CACHE => Command::Cache,
            CMD_WRITE_ZEROES => Command::WriteZeroes,
            CMD_BLOCK_STATUS => Command::BlockStatus,
            other => Command::Other(other),
        }
    }

    pub fn to_u16(self) -> u16 {
        match self {
            Command::Read => CMD_READ,
            Command::Write => CMD_WRITE,
            Command::Disc => CMD_DISC,
            Command::Flush => CMD_FLUSH,
            Command::Trim => CMD_TRIM,
            Command::Cache => CMD_CACHE,
            Command::WriteZeroes => CMD_WRITE_ZEROES,
            Command::BlockStatus => CMD_BLOCK_STATUS,
            Command::Other(v) => v,
        }
    }
}

/// A decoded 28-byte request header. The cookie (formerly "handle") is
/// opaque and echoed in the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    pub flags: u16,
    pub command: Command,
    pub cookie: u64,
    pub offset: u64,
    pub len: u32,
}

impl RequestHeader {
    /// Decode a header. Errors are framing errors after which the stream
    /// cannot be resynchronised: a bad magic, or a WRITE whose payload is
    /// larger than `max_write_payload` (the server cannot afford to read
    /// it, and cannot skip it). Unknown commands decode as
    /// [`Command::Other`] and are rejected by [`check_request`].
    pub fn decode(
        b: &[u8; REQUEST_HEADER_LEN],
        max_write_payload: u32,
    ) -> Result<Self, ProtoError> {
        let magic = be32(b, 0);
        if magic != REQUEST_MAGIC {
            return Err(ProtoError::BadMagic(magic as u64));
        }
        let h = RequestHeader {
            flags: be16(b, 4),
            command: Command::from_u16(be16(b, 6)),
            cookie: be64(b, 8),
            offset: be64(b, 16),
            len: be32(b, 24),
        };
        if h.command == Command::Write && h.len > max_write_payload {
            return Err(ProtoError::PayloadTooLong {
                len: h.len,
                max: max_write_payload,
            });
        }
        Ok(h)
    }

    /// [`RequestHeader::decode`] from a slice of any length.
    pub fn decode_slice(b: &[u8], max_write_payload: u32) -> Result<Self, ProtoError> {
        Self::decode(take::<REQUEST_HEADER_LEN>(b)?, max_write_payload)
    }

    pub fn encode(&self) -> [u8; REQUEST_HEADER_LEN] {
        let mut b = [0u8; REQUEST_HEADER_LEN];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.command.to_u16().to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.len.to_be_bytes());
        b
    }

    /// Bytes of payload following the header on the wire.
    pub fn payload_len(&self) -> u32 {
        if self.command == Command::Write {
            self.len
        } else {
            0
        }
    }
}

/// What the transmission phase of one connection allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransmissionParams {
    pub size: u64,
    /// The transmission flags sent to the client.
    pub flags: u16,
    /// Advertised (sanitised) block sizes.
    pub block_sizes: BlockSizes,
    /// The client asked for `NBD_INFO_BLOCK_SIZE` with `NBD_OPT_GO`, so it
    /// promised to honour `block_sizes`; misaligned or oversized requests
    /// are errors. Otherwise the defaults apply (minimum 1, maximum
    /// [`MAX_PAYLOAD`]) and the server copes with misalignment itself.
    pub block_size_agreed: bool,
}

impl TransmissionParams {
    /// The minimum block size the client must honour.
    pub fn required_alignment(&self) -> u32 {
        if self.block_size_agreed {
            self.block_sizes.minimum.max(1)
        } else {
            1
        }
    }

    /// The largest READ/WRITE payload the client may ask for.
    pub fn max_payload(&self) -> u32 {
        if self.block_size_agreed {
            self.block_sizes.maximum.min(MAX_PAYLOAD)
        } else {
            MAX_PAYLOAD
        }
    }

    /// True if `offset` and `len` are multiples of `align`, where a range
    /// that ends exactly at the (possibly unaligned) export size counts as
    /// aligned at its end.
    pub fn is_aligned_to(&self, align: u32, offset: u64, len: u32) -> bool {
        let a = u64::from(align.max(1));
        let end = offset.saturating_add(u64::from(len));
        offset % a == 0 && (end % a == 0 || end == self.size)
    }
}

/// A request that passed [`check_request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Read {
        offset: u64,
        len: u32,
        fua: bool,
    },
    Write {
        offset: u64,
        len: u32,
        fua: bool,
    },
    Flush {
        fua: bool,
    },
    Trim {
        offset: u64,
        len: u32,
        fua: bool,
    },
    WriteZeroes {
        offset: u64,
        len: u32,
        fua: bool,
        no_hole: bool,
        fast: bool,
    },
    Disconnect,
}

impl Action {
    /// The byte range touched, if any.
    pub fn range(&self) -> Option<(u64, u32)> {
        match *self {
            Action::Read { offset, len, .. }
            | Action::Write { offset, len, .. }
            | Action::Trim { offset, len, .. }
            | Action::WriteZeroes { offset, len, .. } => Some((offset, len)),
            Action::Flush { .. } | Action::Disconnect => None,
        }
    }
}

/// Why a request is refused: the NBD error number and a short message for
/// structured error chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestError {
    pub errno: u32,
    pub msg: &'static str,
}

const fn rerr(errno: u32, msg: &'static str) -> RequestError {
    RequestError { errno, msg }
}

/// Apply the spec's rules to a request, in this order:
///
/// 1. unknown or unadvertised command → `EINVAL` (write commands on a
///    read-only export → `EPERM` first);
/// 2. command flags not valid for the command or not negotiated →
///    `EINVAL` (`FUA` needs `SEND_FUA`; `DF` only on READ with
///    `SEND_DF`; `NO_HOLE` and `FAST_ZERO` only on WRITE_ZEROES, the
///    latter with `SEND_FAST_ZERO`);
/// 3. READ/WRITE longer than the maximum payload → `EINVAL`;
/// 4. offset + length overflowing or past the end → `ENOSPC` for WRITE
///    and WRITE_ZEROES, `EINVAL` otherwise (overflow is always `EINVAL`);
/// 5. misaligned with the agreed minimum block size → `EINVAL`.
///
/// FLUSH ignores its (reserved) offset and length; DISC ignores flags.
/// Zero-length requests pass (the caller answers them without IO).
pub fn check_request(h: &RequestHeader, p: &TransmissionParams) -> Result<Action, RequestError> {
    let ro = p.flags & FLAG_READ_ONLY != 0;
    let has = |f: u16| p.flags & f != 0;
    // 1. command
    match h.command {
        Command::Disc => return Ok(Action::Disconnect),
        Command::Read => {}
        Command::Write if ro => return Err(rerr(EPERM, "export is read-only")),
        Command::Write => {}
        Command::Flush if has(FLAG_SEND_FLUSH) => {}
        Command::Trim if ro => return Err(rerr(EPERM, "export is read-only")),
        Command::Trim if has(FLAG_SEND_TRIM) => {}
        Command::WriteZeroes if ro => return Err(rerr(EPERM, "export is read-only")),
        Command::WriteZeroes if has(FLAG_SEND_WRITE_ZEROES) => {}
        Command::Flush | Command::Trim | Command::WriteZeroes => {
            return Err(rerr(EINVAL, "command not advertised"))
        }
        Command::Cache | Command::BlockStatus | Command::Other(_) => {
            return Err(rerr(EINVAL, "unsupported command"))
        }
    }
    // 2. flags
    let mut allowed = 0u16;
    if has(FLAG_SEND_FUA) {
        allowed |= CMD_FLAG_FUA;
    }
    match h.command {
        Command::Read if has(FLAG_SEND_DF) => allowed |= CMD_FLAG_DF,
        Command::WriteZeroes => {
            allowed |= CMD_FLAG_NO_HOLE;
            if has(FLAG_SEND_FAST_ZERO) {
                allowed |= CMD_FLAG_FAST_ZERO;
            }
        }
        _ => {}
    }
    if h.flags & !allowed != 0 {
        return Err(rerr(EINVAL, "invalid command flags"));
    }
    let fua = h.flags & CMD_FLAG_FUA != 0;
    if h.command == Command::Flush {
        return Ok(Action::Flush { fua });
    }
    // 3. payload size
    if matches!(h.command, Command::Read | Command::Write) && h.len > p.max_payload() {
        return Err(rerr(EINVAL, "request length exceeds the maximum payload"));
    }
    // 4. bounds
    let is_write = matches!(h.command, Command::Write | Command::WriteZeroes);
    match h.offset.checked_add(u64::from(h.len)) {
        None => return Err(rerr(EINVAL, "offset + length overflows")),
        Some(end) if end > p.size => {
            return Err(if is_write {
                rerr(ENOSPC, "write beyond the end of the export")
            } else {
                rerr(EINVAL, "request beyond the end of the export")
            })
        }
        Some(_) => {}
    }
    // 5. alignment
    if !p.is_aligned_to(p.required_alignment(), h.offset, h.len) {
        return Err(rerr(
            EINVAL,
            "request not aligned to the minimum block size",
        ));
    }
    let (offset, len) = (h.offset, h.len);
    Ok(match h.command {
        Command::Read => Action::Read { offset, len, fua },
        Command::Write => Action::Write { offset, len, fua },
        Command::Trim => Action::Trim { offset, len, fua },
        _ => Action::WriteZeroes {
            offset,
            len,
            fua,
            no_hole: h.flags & CMD_FLAG_NO_HOLE != 0,
            fast: h.flags & CMD_FLAG_FAST_ZERO != 0,
        },
    })
}

// ---------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------

/// A simple reply header (the READ data, if any, follows).
pub fn encode_simple_reply(errno: u32, cookie: u64) -> [u8; SIMPLE_REPLY_LEN] {
    let mut b = [0u8; SIMPLE_REPLY_LEN];
    b[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&errno.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b
}

/// A decoded simple reply header (client side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimpleReply {
    pub errno: u32,
    pub cookie: u64,
}

impl SimpleReply {
    pub fn decode(b: &[u8]) -> Result<Self, ProtoError> {
        let b = take::<SIMPLE_REPLY_LEN>(b)?;
        let magic = be32(b, 0);
        if magic != SIMPLE_REPLY_MAGIC {
            return Err(ProtoError::BadMagic(magic as u64));
        }
        Ok(SimpleReply {
            errno: be32(b, 4),
            cookie: be64(b, 8),
        })
    }
}

/// A structured reply chunk header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    pub flags: u16,
    pub ty: u16,
    pub cookie: u64,
    pub len: u32,
}

impl ChunkHeader {
    pub fn encode(&self) -> [u8; CHUNK_HEADER_LEN] {
        let mut b = [0u8; CHUNK_HEADER_LEN];
        b[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.ty.to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..20].copy_from_slice(&self.len.to_be_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, ProtoError> {
        let b = take::<CHUNK_HEADER_LEN>(b)?;
        let magic = be32(b, 0);
        if magic != STRUCTURED_REPLY_MAGIC {
            return Err(ProtoError::BadMagic(magic as u64));
        }
        Ok(ChunkHeader {
            flags: be16(b, 4),
            ty: be16(b, 6),
            cookie: be64(b, 8),
            len: be32(b, 16),
        })
    }

    pub fn is_done(&self) -> bool {
        self.flags & REPLY_FLAG_DONE != 0
    }
}

/// `NBD_REPLY_TYPE_NONE` with `DONE`: success without data.
pub fn encode_none_chunk(cookie: u64) -> [u8; CHUNK_HEADER_LEN] {
    ChunkHeader {
        flags: REPLY_FLAG_DONE,
        ty: REPLY_TYPE_NONE,
        cookie,
        len: 0,
    }
    .encode()
}

/// Header of an `NBD_REPLY_TYPE_OFFSET_DATA` chunk (the `data_len` bytes of
/// data follow). `data_len` must be at least 1 and at most 2^32 - 9.
pub fn encode_offset_data_header(
    cookie: u64,
    offset: u64,
    data_len: u32,
    done: bool,
) -> [u8; OFFSET_DATA_HEADER_LEN] {
    let mut b = [0u8; OFFSET_DATA_HEADER_LEN];
    let h = ChunkHeader {
        flags: if done { REPLY_FLAG_DONE } else { 0 },
        ty: REPLY_TYPE_OFFSET_DATA,
        cookie,
        len: data_len.saturating_add(8),
    };
    b[..CHUNK_HEADER_LEN].copy_from_slice(&h.encode());
    b[CHUNK_HEADER_LEN..].copy_from_slice(&offset.to_be_bytes());
    b
}

/// Header of an `NBD_REPLY_TYPE_ERROR` chunk with `DONE`; the `msg_len`
/// bytes of message follow. Use [`error_message`] to pick a legal message.
pub fn encode_error_chunk_header(
    cookie: u64,
    errno: u32,
    msg_len: u16,
) -> [u8; ERROR_CHUNK_HEADER_LEN] {
    let mut b = [0u8; ERROR_CHUNK_HEADER_LEN];
    let h = ChunkHeader {
        flags: REPLY_FLAG_DONE,
        ty: REPLY_TYPE_ERROR,
        cookie,
        len: 6 + u32::from(msg_len),
    };
    b[..CHUNK_HEADER_LEN].copy_from_slice(&h.encode());
    b[CHUNK_HEADER_LEN..CHUNK_HEADER_LEN + 4].copy_from_slice(&errno.to_be_bytes());
    b[CHUNK_HEADER_LEN + 4..].copy_from_slice(&msg_len.to_be_bytes());
    b
}

/// A message clipped to what an error chunk may carry.
pub fn error_message(msg: &str) -> &str {
    clip(msg, MAX_STRING_LEN)
}

/// Decode an `NBD_REPLY_TYPE_ERROR` payload into (errno, message).
pub fn decode_error_payload(p: &[u8]) -> Result<(u32, &str), ProtoError> {
    if p.len() < 6 {
        return Err(ProtoError::BadReply("error chunk too short"));
    }
    let errno = be32(p, 0);
    let n = be16(p, 4) as usize;
    let msg = p
        .get(6..6 + n)
        .ok_or(ProtoError::BadReply("error message longer than the chunk"))?;
    let msg = std::str::from_utf8(msg).map_err(|_| ProtoError::BadReply("message not UTF-8"))?;
    Ok((errno, msg))
}

// ---------------------------------------------------------------------------
// Fuzzing entry points
// ---------------------------------------------------------------------------

/// Drive the handshake decoders with arbitrary bytes: client flags, then a
/// sequence of option headers and payloads, each parsed and answered into a
/// scratch buffer. Never panics.
pub fn fuzz_option(data: &[u8]) {
    let _ = decode_greeting(data);
    let _ = decode_client_flags(data, SERVER_HANDSHAKE_FLAGS);
    let mut rest = data.get(4..).unwrap_or(&[]);
    let mut out = Vec::new();
    while let Ok(h) = OptionHeader::decode(rest, MAX_OPTION_LEN) {
        rest = &rest[OPTION_HEADER_LEN..];
        let n = (h.len as usize).min(rest.len());
        let (payload, tail) = rest.split_at(n);
        rest = tail;
        out.clear();
        match parse_option(h.option, payload) {
            Ok(ClientOption::ExportName(name)) => {
                encode_export_name_reply(&mut out, name.len() as u64, FLAG_HAS_FLAGS, false)
            }
            Ok(ClientOption::Info(r)) | Ok(ClientOption::Go(r)) => {
                encode_info_export(&mut out, h.option, 0, FLAG_HAS_FLAGS);
                encode_info_name(&mut out, h.option, r.name);
                encode_info_description(&mut out, h.option, r.name);
                encode_rep_server(&mut out, r.name, r.name);
            }
            Ok(_) => encode_rep_ack(&mut out, h.option),
            Err(_) => encode_rep_error(&mut out, h.option, REP_ERR_INVALID, "invalid"),
        }
        let _ = OptionReplyHeader::decode(&out);
        let _ = decode_info_reply(payload);
        let _ = decode_rep_server(payload);
    }
}

/// Drive the request decoder and checker with arbitrary bytes: a 28-byte
/// header, then bytes that pick the connection parameters. Also decodes
/// the same bytes as replies. Never panics.
pub fn fuzz_request(data: &[u8]) {
    let _ = SimpleReply::decode(data);
    let _ = ChunkHeader::decode(data);
    let _ = decode_error_payload(data);
    let Ok(h) = RequestHeader::decode_slice(data, MAX_PAYLOAD) else {
        return;
    };
    let p = data.get(REQUEST_HEADER_LEN..).unwrap_or(&[]);
    let bs = sanitize_block_sizes(BlockSizes {
        minimum: be32(p, 10),
        preferred: be32(p, 14),
        maximum: be32(p, 18),
    });
    let params = TransmissionParams {
        size: be64(p, 0),
        flags: be16(p, 8),
        block_sizes: bs,
        block_size_agreed: p.get(22).is_some_and(|b| b & 1 != 0),
    };
    if let Ok(a) = check_request(&h, &params) {
        if let Some((off, len)) = a.range() {
            debug_assert!(off
                .checked_add(u64::from(len))
                .is_some_and(|e| e <= params.size));
        }
    }
    let _ = h.encode();
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn caps_all() -> ExportCaps {
        ExportCaps::ALL
    }

    fn params(size: u64, flags: u16, min: u32, agreed: bool) -> TransmissionParams {
        TransmissionParams {
            size,
            flags,
            block_sizes: sanitize_block_sizes(BlockSizes {
                minimum: min,
                preferred: 4096,
                maximum: MAX_PAYLOAD,
            }),
            block_size_agreed: agreed,
        }
    }

    fn req(command: Command, flags: u16, offset: u64, len: u32) -> RequestHeader {
        RequestHeader {
            flags,
            command,
            cookie: 0xdead_beef_0000_0001,
            offset,
            len,
        }
    }

    #[test]
    fn greeting_roundtrip() {
        let g = encode_greeting(SERVER_HANDSHAKE_FLAGS);
        assert_eq!(&g[..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], b"IHAVEOPT");
        assert_eq!(decode_greeting(&g), Ok(3));
        assert!(matches!(
            decode_greeting(&g[..10]),
            Err(ProtoError::Truncated { need: 18, have: 10 })
        ));
        let mut bad = g;
        bad[0] = b'X';
        assert!(matches!(
            decode_greeting(&bad),
            Err(ProtoError::BadMagic(_))
        ));
    }

    #[test]
    fn client_flags() {
        let f = decode_client_flags(&3u32.to_be_bytes(), SERVER_HANDSHAKE_FLAGS).unwrap();
        assert!(f.fixed_newstyle && f.no_zeroes);
        assert_eq!(f.bits(), 3);
        let f = decode_client_flags(&1u32.to_be_bytes(), SERVER_HANDSHAKE_FLAGS).unwrap();
        assert!(f.fixed_newstyle && !f.no_zeroes);
        let f = decode_client_flags(&0u32.to_be_bytes(), SERVER_HANDSHAKE_FLAGS).unwrap();
        assert_eq!(f, ClientFlags::default());
        assert_eq!(
            decode_client_flags(&4u32.to_be_bytes(), SERVER_HANDSHAKE_FLAGS),
            Err(ProtoError::UnknownClientFlags(4))
        );
        // NO_ZEROES is only allowed if the server offered it.
        assert_eq!(
            decode_client_flags(&2u32.to_be_bytes(), FLAG_FIXED_NEWSTYLE),
            Err(ProtoError::UnknownClientFlags(2))
        );
        assert!(decode_client_flags(&[0, 0], SERVER_HANDSHAKE_FLAGS).is_err());
    }

    #[test]
    fn option_header() {
        let h = OptionHeader {
            option: OPT_GO,
            len: 12,
        };
        let b = h.encode();
        assert_eq!(OptionHeader::decode(&b, MAX_OPTION_LEN), Ok(h));
        let big = OptionHeader {
            option: OPT_GO,
            len: MAX_OPTION_LEN + 1,
        }
        .encode();
        assert_eq!(
            OptionHeader::decode(&big, MAX_OPTION_LEN),
            Err(ProtoError::OptionTooLong {
                len: MAX_OPTION_LEN + 1,
                max: MAX_OPTION_LEN
            })
        );
        let mut bad = b;
        bad[3] ^= 1;
        assert!(matches!(
            OptionHeader::decode(&bad, MAX_OPTION_LEN),
            Err(ProtoError::BadMagic(_))
        ));
        assert!(matches!(
            OptionHeader::decode(&b[..15], MAX_OPTION_LEN),
            Err(ProtoError::Truncated { .. })
        ));
    }

    fn option_payload(option: u32, name: &str, infos: &[u16]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_info_request(&mut out, option, name, infos);
        out.split_off(OPTION_HEADER_LEN)
    }

    #[test]
    fn parse_go_and_info() {
        let p = option_payload(OPT_GO, "disk0", &[INFO_NAME, INFO_BLOCK_SIZE, 77]);
        assert_eq!(
            parse_option(OPT_GO, &p),
            Ok(ClientOption::Go(InfoRequest {
                name: "disk0",
                requests: InfoRequests {
                    export: false,
                    name: true,
                    description: false,
                    block_size: true
                }
            }))
        );
        let p = option_payload(OPT_INFO, "", &[]);
        assert_eq!(
            parse_option(OPT_INFO, &p),
            Ok(ClientOption::Info(InfoRequest {
                name: "",
                requests: InfoRequests::default()
            }))
        );
        let p = option_payload(OPT_INFO, "x", &[INFO_DESCRIPTION, INFO_EXPORT]);
        let Ok(ClientOption::Info(r)) = parse_option(OPT_INFO, &p) else {
            panic!()
        };
        assert!(r.requests.description && r.requests.export);
    }

    #[test]
    fn parse_go_invalid() {
        // Too short.
        assert!(matches!(
            parse_option(OPT_GO, &[0, 0, 0]),
            Err(ProtoError::InvalidOption(_))
        ));
        // Name length beyond the data.
        let mut p = option_payload(OPT_GO, "abc", &[]);
        p[3] = 200;
        assert!(matches!(
            parse_option(OPT_GO, &p),
            Err(ProtoError::InvalidOption(_))
        ));
        // Count does not match the trailing data.
        let mut p = option_payload(OPT_GO, "abc", &[INFO_NAME]);
        p.push(0);
        assert!(parse_option(OPT_GO, &p).is_err());
        let mut p = option_payload(OPT_GO, "abc", &[INFO_NAME]);
        p.pop();
        assert!(parse_option(OPT_GO, &p).is_err());
        // NUL and non-UTF-8 names.
        let p = option_payload(OPT_GO, "a\0b", &[]);
        assert!(parse_option(OPT_GO, &p).is_err());
        let mut p = option_payload(OPT_GO, "ab", &[]);
        p[4] = 0xff;
        assert!(parse_option(OPT_GO, &p).is_err());
        // Over-long name.
        let long = "n".repeat(MAX_STRING_LEN + 1);
        let p = option_payload(OPT_GO, &long, &[]);
        assert!(parse_option(OPT_GO, &p).is_err());
    }

    #[test]
    fn parse_simple_options() {
        assert_eq!(
            parse_option(OPT_EXPORT_NAME, b"disk"),
            Ok(ClientOption::ExportName("disk"))
        );
        assert_eq!(
            parse_option(OPT_EXPORT_NAME, b""),
            Ok(ClientOption::ExportName(""))
        );
        assert!(parse_option(OPT_EXPORT_NAME, b"a\0").is_err());
        assert_eq!(parse_option(OPT_ABORT, b""), Ok(ClientOption::Abort));
        assert_eq!(parse_option(OPT_ABORT, b"junk"), Ok(ClientOption::Abort));
        assert_eq!(parse_option(OPT_LIST, b""), Ok(ClientOption::List));
        assert!(parse_option(OPT_LIST, b"x").is_err());
        assert_eq!(
            parse_option(OPT_STRUCTURED_REPLY, b""),
            Ok(ClientOption::StructuredReply)
        );
        assert!(parse_option(OPT_STRUCTURED_REPLY, b"x").is_err());
        assert_eq!(parse_option(OPT_STARTTLS, b""), Ok(ClientOption::StartTls));
        assert!(parse_option(OPT_STARTTLS, b"x").is_err());
        for o in [
            OPT_PEEK_EXPORT,
            OPT_LIST_META_CONTEXT,
            OPT_SET_META_CONTEXT,
            OPT_EXTENDED_HEADERS,
            0,
            12345,
        ] {
            assert_eq!(parse_option(o, b"xyz"), Ok(ClientOption::Unsupported(o)));
        }
    }

    #[test]
    fn option_replies() {
        let mut out = Vec::new();
        encode_rep_ack(&mut out, OPT_ABORT);
        let h = OptionReplyHeader::decode(&out).unwrap();
        assert_eq!((h.option, h.reply, h.len), (OPT_ABORT, REP_ACK, 0));
        assert!(!h.is_error());
        assert_eq!(out.len(), OPTION_REPLY_HEADER_LEN);

        out.clear();
        encode_rep_server(&mut out, "disk0", "a disk");
        let h = OptionReplyHeader::decode(&out).unwrap();
        assert_eq!((h.option, h.reply), (OPT_LIST, REP_SERVER));
        assert_eq!(
            decode_rep_server(&out[OPTION_REPLY_HEADER_LEN..]),
            Ok(("disk0", "a disk"))
        );

        out.clear();
        encode_info_export(&mut out, OPT_GO, 1 << 40, 0x1234);
        let h = OptionReplyHeader::decode(&out).unwrap();
        assert_eq!((h.reply, h.len), (REP_INFO, 12));
        assert_eq!(
            decode_info_reply(&out[OPTION_REPLY_HEADER_LEN..]),
            Ok(InfoReply::Export {
                size: 1 << 40,
                flags: 0x1234
            })
        );

        for (enc, want) in [
            (
                encode_info_name as fn(&mut Vec<u8>, u32, &str),
                InfoReply::Name("nm"),
            ),
            (encode_info_description, InfoReply::Description("nm")),
        ] {
            out.clear();
            enc(&mut out, OPT_INFO, "nm");
            assert_eq!(decode_info_reply(&out[OPTION_REPLY_HEADER_LEN..]), Ok(want));
        }

        out.clear();
        let bs = BlockSizes {
            minimum: 512,
            preferred: 4096,
            maximum: MAX_PAYLOAD,
        };
        encode_info_block_size(&mut out, OPT_GO, bs);
        let h = OptionReplyHeader::decode(&out).unwrap();
        assert_eq!(h.len, 14);
        assert_eq!(
            decode_info_reply(&out[OPTION_REPLY_HEADER_LEN..]),
            Ok(InfoReply::BlockSize(bs))
        );

        out.clear();
        encode_rep_error(&mut out, OPT_GO, REP_ERR_UNKNOWN, "no such export");
        let h = OptionReplyHeader::decode(&out).unwrap();
        assert!(h.is_error());
        assert_eq!(h.reply, REP_ERR_UNKNOWN);
        assert_eq!(&out[OPTION_REPLY_HEADER_LEN..], b"no such export");

        out.clear();
        encode_rep_error(&mut out, OPT_GO, REP_ERR_INVALID, &"é".repeat(3000));
        let h = OptionReplyHeader::decode(&out).unwrap();
        assert!(h.len as usize <= MAX_STRING_LEN);
        assert!(std::str::from_utf8(&out[OPTION_REPLY_HEADER_LEN..]).is_ok());
    }

    #[test]
    fn export_name_reply() {
        let mut out = Vec::new();
        encode_export_name_reply(&mut out, 4096, 0x3, false);
        assert_eq!(out.len(), EXPORT_NAME_REPLY_LEN);
        assert_eq!(&out[..8], &4096u64.to_be_bytes());
        assert_eq!(&out[8..10], &3u16.to_be_bytes());
        assert!(out[10..].iter().all(|&b| b == 0));
        out.clear();
        encode_export_name_reply(&mut out, 4096, 0x3, true);
        assert_eq!(out.len(), 10);
    }

    #[test]
    fn flags_from_caps() {
        let c = caps_all();
        let f = transmission_flags(&c, false);
        assert_eq!(
            f,
            FLAG_HAS_FLAGS
                | FLAG_SEND_FLUSH
                | FLAG_SEND_FUA
                | FLAG_SEND_TRIM
                | FLAG_SEND_WRITE_ZEROES
                | FLAG_SEND_FAST_ZERO
                | FLAG_CAN_MULTI_CONN
        );
        assert_eq!(transmission_flags(&c, true), f | FLAG_SEND_DF);
        let ro = ExportCaps {
            read_only: true,
            ..c
        };
        assert_eq!(
            transmission_flags(&ro, false),
            FLAG_HAS_FLAGS | FLAG_READ_ONLY | FLAG_SEND_FLUSH | FLAG_CAN_MULTI_CONN
        );
        let no_wz = ExportCaps {
            write_zeroes: false,
            ..c
        };
        let f = transmission_flags(&no_wz, false);
        assert_eq!(f & (FLAG_SEND_WRITE_ZEROES | FLAG_SEND_FAST_ZERO), 0);
    }

    #[test]
    fn block_size_sanitizing() {
        let s = sanitize_block_sizes(BlockSizes {
            minimum: 0,
            preferred: 0,
            maximum: 0,
        });
        assert_eq!((s.minimum, s.preferred, s.maximum), (1, 512, 512));
        let s = sanitize_block_sizes(BlockSizes {
            minimum: 3000,
            preferred: 5000,
            maximum: u32::MAX,
        });
        assert_eq!(
            (s.minimum, s.preferred, s.maximum),
            (4096, 8192, MAX_PAYLOAD)
        );
        let s = sanitize_block_sizes(BlockSizes {
            minimum: 1 << 20,
            preferred: u32::MAX,
            maximum: 1,
        });
        assert_eq!(
            (s.minimum, s.preferred, s.maximum),
            (MAX_MIN_BLOCK, MAX_PAYLOAD, MAX_PAYLOAD)
        );
    }

    #[test]
    fn request_header_roundtrip() {
        let h = req(Command::Write, CMD_FLAG_FUA, 1 << 33, 4096);
        let b = h.encode();
        assert_eq!(RequestHeader::decode(&b, MAX_PAYLOAD), Ok(h));
        assert_eq!(h.payload_len(), 4096);
        assert_eq!(req(Command::Read, 0, 0, 4096).payload_len(), 0);
        let mut bad = b;
        bad[0] = 0;
        assert!(matches!(
            RequestHeader::decode(&bad, MAX_PAYLOAD),
            Err(ProtoError::BadMagic(_))
        ));
        let big = req(Command::Write, 0, 0, MAX_PAYLOAD + 1).encode();
        assert_eq!(
            RequestHeader::decode(&big, MAX_PAYLOAD),
            Err(ProtoError::PayloadTooLong {
                len: MAX_PAYLOAD + 1,
                max: MAX_PAYLOAD
            })
        );
        // A huge READ is not a framing error (no payload follows).
        let big_read = req(Command::Read, 0, 0, u32::MAX).encode();
        assert!(RequestHeader::decode(&big_read, MAX_PAYLOAD).is_ok());
        let odd = req(Command::Other(99), 0, 0, 0).encode();
        assert_eq!(
            RequestHeader::decode(&odd, MAX_PAYLOAD).unwrap().command,
            Command::Other(99)
        );
        assert!(RequestHeader::decode_slice(&b[..27], MAX_PAYLOAD).is_err());
        for v in 0..=9u16 {
            assert_eq!(Command::from_u16(v).to_u16(), v);
        }
    }

    #[test]
    fn check_commands() {
        let p = params(1 << 20, transmission_flags(&caps_all(), true), 1, false);
        assert_eq!(
            check_request(&req(Command::Read, 0, 0, 512), &p),
            Ok(Action::Read {
                offset: 0,
                len: 512,
                fua: false
            })
        );
        assert_eq!(
            check_request(&req(Command::Write, CMD_FLAG_FUA, 512, 512), &p),
            Ok(Action::Write {
                offset: 512,
                len: 512,
                fua: true
            })
        );
        // FLUSH ignores its reserved fields.
        assert_eq!(
            check_request(&req(Command::Flush, 0, 7, 7), &p),
            Ok(Action::Flush { fua: false })
        );
        assert_eq!(
            check_request(&req(Command::Disc, 0xffff, 1, 1), &p),
            Ok(Action::Disconnect)
        );
        assert_eq!(
            check_request(
                &req(
                    Command::WriteZeroes,
                    CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
                    0,
                    4096
                ),
                &p
            ),
            Ok(Action::WriteZeroes {
                offset: 0,
                len: 4096,
                fua: false,
                no_hole: true,
                fast: true
            })
        );
        assert_eq!(
            check_request(&req(Command::Read, CMD_FLAG_DF, 0, 1), &p),
            Ok(Action::Read {
                offset: 0,
                len: 1,
                fua: false
            })
        );
        for c in [Command::Cache, Command::BlockStatus, Command::Other(42)] {
            assert_eq!(
                check_request(&req(c, 0, 0, 0), &p).unwrap_err().errno,
                EINVAL
            );
        }
        // Zero-length requests pass.
        assert!(check_request(&req(Command::Trim, 0, 1 << 20, 0), &p).is_ok());
    }

    #[test]
    fn check_flags() {
        let flags = transmission_flags(&caps_all(), false);
        let p = params(1 << 20, flags, 1, false);
        let e = |c, f| check_request(&req(c, f, 0, 512), &p).unwrap_err().errno;
        // DF without SEND_DF (no structured replies).
        assert_eq!(e(Command::Read, CMD_FLAG_DF), EINVAL);
        assert_eq!(e(Command::Write, CMD_FLAG_NO_HOLE), EINVAL);
        assert_eq!(e(Command::Trim, CMD_FLAG_FAST_ZERO), EINVAL);
        assert_eq!(e(Command::Read, 1 << 9), EINVAL);
        assert_eq!(e(Command::Write, CMD_FLAG_PAYLOAD_LEN), EINVAL);
        // FUA is valid on every command once negotiated.
        assert!(check_request(&req(Command::Read, CMD_FLAG_FUA, 0, 512), &p).is_ok());
        // No FUA / FAST_ZERO when not advertised.
        let caps = ExportCaps {
            fua: false,
            fast_zero: false,
            ..caps_all()
        };
        let p = params(1 << 20, transmission_flags(&caps, false), 1, false);
        assert_eq!(
            check_request(&req(Command::Write, CMD_FLAG_FUA, 0, 512), &p)
                .unwrap_err()
                .errno,
            EINVAL
        );
        assert_eq!(
            check_request(&req(Command::WriteZeroes, CMD_FLAG_FAST_ZERO, 0, 512), &p)
                .unwrap_err()
                .errno,
            EINVAL
        );
    }

    #[test]
    fn check_unadvertised_and_read_only() {
        let caps = ExportCaps {
            flush: false,
            trim: false,
            write_zeroes: false,
            ..caps_all()
        };
        let p = params(1 << 20, transmission_flags(&caps, false), 1, false);
        for c in [Command::Flush, Command::Trim, Command::WriteZeroes] {
            assert_eq!(
                check_request(&req(c, 0, 0, 0), &p).unwrap_err().errno,
                EINVAL
            );
        }
        let ro = ExportCaps {
            read_only: true,
            ..caps_all()
        };
        let p = params(1 << 20, transmission_flags(&ro, false), 1, false);
        for c in [Command::Write, Command::Trim, Command::WriteZeroes] {
            assert_eq!(
                check_request(&req(c, 0, 0, 512), &p).unwrap_err().errno,
                EPERM
            );
        }
        assert!(check_request(&req(Command::Read, 0, 0, 512), &p).is_ok());
        assert!(check_request(&req(Command::Flush, 0, 0, 0), &p).is_ok());
    }

    #[test]
    fn check_bounds() {
        let p = params(1 << 20, transmission_flags(&caps_all(), false), 1, false);
        let e = |c, off, len| {
            check_request(&req(c, 0, off, len), &p)
                .map(|_| ())
                .map_err(|e| e.errno)
        };
        assert_eq!(e(Command::Read, (1 << 20) - 512, 512), Ok(()));
        assert_eq!(e(Command::Read, (1 << 20) - 511, 512), Err(EINVAL));
        assert_eq!(e(Command::Trim, (1 << 20) - 511, 512), Err(EINVAL));
        assert_eq!(e(Command::Write, (1 << 20) - 511, 512), Err(ENOSPC));
        assert_eq!(e(Command::WriteZeroes, 1 << 20, 1), Err(ENOSPC));
        assert_eq!(e(Command::Read, (1 << 20) + 1, 0), Err(EINVAL));
        assert_eq!(e(Command::Write, u64::MAX, 2), Err(EINVAL));
        assert_eq!(e(Command::Read, u64::MAX, 0), Err(EINVAL));
        // Payload caps.
        let big = params(1 << 40, transmission_flags(&caps_all(), false), 1, false);
        assert_eq!(
            check_request(&req(Command::Read, 0, 0, MAX_PAYLOAD + 1), &big)
                .unwrap_err()
                .errno,
            EINVAL
        );
        assert!(check_request(&req(Command::Read, 0, 0, MAX_PAYLOAD), &big).is_ok());
        // TRIM and WRITE_ZEROES may exceed the payload limit.
        assert!(check_request(&req(Command::Trim, 0, 0, u32::MAX), &big).is_ok());
    }

    #[test]
    fn check_alignment() {
        let flags = transmission_flags(&caps_all(), false);
        // Agreed: misalignment is EINVAL.
        let p = params(1 << 20, flags, 512, true);
        assert_eq!(
            check_request(&req(Command::Read, 0, 1, 512), &p)
                .unwrap_err()
                .errno,
            EINVAL
        );
        assert_eq!(
            check_request(&req(Command::Write, 0, 0, 100), &p)
                .unwrap_err()
                .errno,
            EINVAL
        );
        assert!(check_request(&req(Command::Write, 0, 512, 1024), &p).is_ok());
        // Not agreed: the default minimum of 1 applies.
        let p = params(1 << 20, flags, 512, false);
        assert!(check_request(&req(Command::Write, 0, 1, 100), &p).is_ok());
        assert!(p.is_aligned_to(1, 3, 5));
        assert!(!p.is_aligned_to(512, 3, 5));
        // An unaligned export tail is reachable.
        let p = params(1000, flags, 512, true);
        assert!(check_request(&req(Command::Read, 0, 512, 488), &p).is_ok());
        // Agreed maximum payload.
        let mut p = params(1 << 30, flags, 512, true);
        p.block_sizes.maximum = 1 << 20;
        assert_eq!(p.max_payload(), 1 << 20);
        assert!(check_request(&req(Command::Read, 0, 0, (1 << 20) + 512), &p).is_err());
        assert!(check_request(&req(Command::Trim, 0, 0, 1 << 24), &p).is_ok());
    }

    #[test]
    fn replies() {
        let r = encode_simple_reply(EIO, 77);
        assert_eq!(
            SimpleReply::decode(&r),
            Ok(SimpleReply {
                errno: EIO,
                cookie: 77
            })
        );
        assert!(SimpleReply::decode(&r[..15]).is_err());

        let n = encode_none_chunk(9);
        let h = ChunkHeader::decode(&n).unwrap();
        assert_eq!((h.ty, h.cookie, h.len), (REPLY_TYPE_NONE, 9, 0));
        assert!(h.is_done());

        let d = encode_offset_data_header(5, 4096, 512, true);
        let h = ChunkHeader::decode(&d).unwrap();
        assert_eq!((h.ty, h.cookie, h.len), (REPLY_TYPE_OFFSET_DATA, 5, 520));
        assert!(h.is_done());
        assert_eq!(&d[CHUNK_HEADER_LEN..], &4096u64.to_be_bytes());

        let msg = error_message("boom");
        let e = encode_error_chunk_header(6, EINVAL, msg.len() as u16);
        let h = ChunkHeader::decode(&e).unwrap();
        assert_eq!((h.ty, h.len), (REPLY_TYPE_ERROR, 10));
        let mut payload = e[CHUNK_HEADER_LEN..].to_vec();
        payload.extend_from_slice(msg.as_bytes());
        assert_eq!(decode_error_payload(&payload), Ok((EINVAL, "boom")));
        assert!(decode_error_payload(&payload[..8]).is_err());
    }

    #[test]
    fn fuzz_entry_points_smoke() {
        fuzz_option(&[]);
        fuzz_request(&[]);
        let mut stream = 3u32.to_be_bytes().to_vec();
        encode_info_request(&mut stream, OPT_GO, "a", &[INFO_NAME]);
        encode_option(&mut stream, OPT_LIST, &[]);
        encode_option(&mut stream, OPT_EXPORT_NAME, b"zz");
        fuzz_option(&stream);
        let mut r = req(Command::Write, 0, 0, 10).encode().to_vec();
        r.extend_from_slice(&[0xff; 32]);
        fuzz_request(&r);
    }

    proptest! {
        #[test]
        fn decoders_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            fuzz_option(&data);
            fuzz_request(&data);
            let _ = parse_option(OPT_GO, &data);
            let _ = parse_option(OPT_INFO, &data);
            let _ = parse_option(OPT_EXPORT_NAME, &data);
            let _ = decode_info_reply(&data);
            let _ = decode_rep_server(&data);
            let _ = OptionReplyHeader::decode(&data);
        }

        #[test]
        fn option_stream_never_panics(
            opts in proptest::collection::vec(
                (0u32..14, proptest::collection::vec(any::<u8>(), 0..64)), 0..8)
        ) {
            let mut s = 1u32.to_be_bytes().to_vec();
            for (o, p) in &opts {
                encode_option(&mut s, *o, p);
            }
            fuzz_option(&s);
        }

        #[test]
        fn request_roundtrip(flags in any::<u16>(), cmd in any::<u16>(), cookie in any::<u64>(),
                             offset in any::<u64>(), len in any::<u32>()) {
            let h = RequestHeader { flags, command: Command::from_u16(cmd), cookie, offset, len };
            match RequestHeader::decode(&h.encode(), MAX_PAYLOAD) {
                Ok(d) => prop_assert_eq!(d, h),
                Err(ProtoError::PayloadTooLong { .. }) => {
                    prop_assert!(h.command == Command::Write && len > MAX_PAYLOAD)
                }
                Err(e) => prop_assert!(false, "unexpected {e}"),
            }
        }

        #[test]
        fn checked_requests_are_in_bounds(flags in any::<u16>(), cmd in 0u16..10,
                                          offset in any::<u64>(), len in any::<u32>(),
                                          size in any::<u64>(), min_shift in 0u32..17,
                                          agreed in any::<bool>(), tflags in any::<u16>()) {
            let h = RequestHeader { flags, command: Command::from_u16(cmd), cookie: 1, offset, len };
            let p = TransmissionParams {
                size,
                flags: tflags | FLAG_HAS_FLAGS,
                block_sizes: sanitize_block_sizes(BlockSizes {
                    minimum: 1 << min_shift, preferred: 4096, maximum: MAX_PAYLOAD }),
                block_size_agreed: agreed,
            };
            if let Ok(a) = check_request(&h, &p) {
                if let Some((o, l)) = a.range() {
                    prop_assert!(o.checked_add(u64::from(l)).is_some_and(|e| e <= size));
                    prop_assert!(p.is_aligned_to(p.required_alignment(), o, l));
                    if matches!(a, Action::Write { .. } | Action::Trim { .. } | Action::WriteZeroes { .. }) {
                        prop_assert!(tflags & FLAG_READ_ONLY == 0);
                    }
                }
            }
        }

        #[test]
        fn go_roundtrip(name in "[a-z0-9._-]{0,64}", infos in proptest::collection::vec(0u16..6, 0..6)) {
            let mut out = Vec::new();
            encode_info_request(&mut out, OPT_GO, &name, &infos);
            let Ok(ClientOption::Go(r)) = parse_option(OPT_GO, &out[OPTION_HEADER_LEN..]) else {
                return Err(TestCaseError::fail("GO did not parse"));
            };
            prop_assert_eq!(r.name, name.as_str());
            prop_assert_eq!(r.requests.block_size, infos.contains(&INFO_BLOCK_SIZE));
            prop_assert_eq!(r.requests.name, infos.contains(&INFO_NAME));
        }
    }
}
