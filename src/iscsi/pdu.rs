//! The iSCSI PDU codec (RFC 7143 §11): the 48-byte Basic Header Segment
//! (BHS), one typed struct per PDU and [`Pdu`] over them.
//!
//! Sending: [`Pdu::encode_header`] gives the BHS for a data segment of a
//! given length (the payload need not be in the struct: a driver writes
//! BHS, [`Framing::header_digest`], its payload, [`padding`] and
//! [`Framing::data_digest`] with one vectored write, see [`framing`]);
//! [`Pdu::encode`] gives the whole PDU in one buffer for small PDUs.
//!
//! Receiving: read [`BHS_LEN`] bytes, ask [`frame_len`] how long the whole
//! PDU is (this checks the opcode and the data segment length against the
//! negotiated limit before anything is allocated), read the rest, then
//! [`Pdu::decode`] it. Decoding never panics and allocates at most the
//! input's length.
//!
//! Reserved fields are written as zero and ignored when read. AHS are
//! skipped on decode (an extended CDB is not supported); they count in
//! the header digest.

use thiserror::Error;

use super::digest::{self, Digests, DIGEST_LEN};

/// Length of the Basic Header Segment.
pub const BHS_LEN: usize = 48;
/// The largest DataSegmentLength the 24-bit field can carry.
pub const MAX_DATA_SEGMENT: u32 = (1 << 24) - 1;
/// The reserved Initiator/Target Task Tag value (unsolicited PDUs).
pub const RESERVED_TAG: u32 = 0xffff_ffff;

/// PDU opcodes (RFC 7143 §11.2.1.2), initiator and target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Opcode {
    /// NOP-Out (initiator).
    NopOut = 0x00,
    /// SCSI Command (initiator).
    ScsiCommand = 0x01,
    /// SCSI Task Management Function Request (initiator).
    TaskMgmtRequest = 0x02,
    /// Login Request (initiator).
    LoginRequest = 0x03,
    /// Text Request (initiator).
    TextRequest = 0x04,
    /// SCSI Data-Out (initiator).
    DataOut = 0x05,
    /// Logout Request (initiator).
    LogoutRequest = 0x06,
    /// SNACK Request (initiator).
    Snack = 0x10,
    /// NOP-In (target).
    NopIn = 0x20,
    /// SCSI Response (target).
    ScsiResponse = 0x21,
    /// SCSI Task Management Function Response (target).
    TaskMgmtResponse = 0x22,
    /// Login Response (target).
    LoginResponse = 0x23,
    /// Text Response (target).
    TextResponse = 0x24,
    /// SCSI Data-In (target).
    DataIn = 0x25,
    /// Logout Response (target).
    LogoutResponse = 0x26,
    /// Ready To Transfer (target).
    R2t = 0x31,
    /// Asynchronous Message (target).
    AsyncMessage = 0x32,
    /// Reject (target).
    Reject = 0x3f,
}

impl Opcode {
    /// The opcode in the low six bits of a BHS's first byte.
    pub fn from_byte(b: u8) -> Option<Opcode> {
        use Opcode::*;
        Some(match b & 0x3f {
            0x00 => NopOut,
            0x01 => ScsiCommand,
            0x02 => TaskMgmtRequest,
            0x03 => LoginRequest,
            0x04 => TextRequest,
            0x05 => DataOut,
            0x06 => LogoutRequest,
            0x10 => Snack,
            0x20 => NopIn,
            0x21 => ScsiResponse,
            0x22 => TaskMgmtResponse,
            0x23 => LoginResponse,
            0x24 => TextResponse,
            0x25 => DataIn,
            0x26 => LogoutResponse,
            0x31 => R2t,
            0x32 => AsyncMessage,
            0x3f => Reject,
            _ => return None,
        })
    }
}

/// What is wrong with bytes that should be a PDU.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PduError {
    /// Fewer bytes than the PDU needs.
    #[error("truncated PDU: {needed} bytes needed, {got} received")]
    Truncated {
        /// Bytes the PDU needs.
        needed: usize,
        /// Bytes there are.
        got: usize,
    },
    /// More bytes than one PDU.
    #[error("{got} bytes given for a PDU of {expected}")]
    TrailingBytes {
        /// The PDU's length.
        expected: usize,
        /// Bytes given.
        got: usize,
    },
    /// An opcode RFC 7143 does not define.
    #[error("unknown iSCSI opcode 0x{0:02x}")]
    UnknownOpcode(u8),
    /// DataSegmentLength beyond the negotiated MaxRecvDataSegmentLength.
    #[error("data segment of {len} bytes exceeds the limit of {max} (MaxRecvDataSegmentLength)")]
    DataSegmentTooLong {
        /// The PDU's DataSegmentLength.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// TotalAHSLength claims more bytes than the PDU has.
    #[error("additional header segments of {ahs_len} bytes do not fit in the {available} bytes after the BHS")]
    AhsDoesNotFit {
        /// TotalAHSLength in bytes.
        ahs_len: usize,
        /// Bytes after the BHS.
        available: usize,
    },
    /// The header digest does not match.
    #[error("header digest mismatch: computed 0x{computed:08x}, received 0x{received:08x}")]
    HeaderDigest {
        /// The CRC32C of the header.
        computed: u32,
        /// The digest in the PDU.
        received: u32,
    },
    /// The data digest does not match.
    #[error("data digest mismatch: computed 0x{computed:08x}, received 0x{received:08x}")]
    DataDigest {
        /// The CRC32C of the data segment.
        computed: u32,
        /// The digest in the PDU.
        received: u32,
    },
    /// A field holds a value its PDU does not allow.
    #[error("{opcode:?}: invalid {field} {value}")]
    BadField {
        /// The PDU.
        opcode: Opcode,
        /// The field.
        field: &'static str,
        /// Its value.
        value: u32,
    },
}

/// Login stages (CSG/NSG, RFC 7143 §11.12.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// SecurityNegotiation (0).
    Security = 0,
    /// LoginOperationalNegotiation (1).
    Operational = 1,
    /// FullFeaturePhase (3).
    FullFeature = 3,
}

impl Stage {
    fn from_bits(op: Opcode, field: &'static str, v: u8) -> Result<Stage, PduError> {
        match v & 3 {
            0 => Ok(Stage::Security),
            1 => Ok(Stage::Operational),
            3 => Ok(Stage::FullFeature),
            other => Err(PduError::BadField {
                opcode: op,
                field,
                value: u32::from(other),
            }),
        }
    }
}

/// A LUN number (0..16383) in SAM form: peripheral addressing below 256,
/// flat space addressing above.
pub fn lun_from_number(n: u16) -> u64 {
    let n = u64::from(n & 0x3fff);
    if n < 256 {
        n << 48
    } else {
        (0x4000 | n) << 48
    }
}

/// The LUN number of a SAM LUN in peripheral or flat space addressing
/// (single level); `None` for other forms.
pub fn lun_to_number(lun: u64) -> Option<u16> {
    if lun & 0x0000_ffff_ffff_ffff != 0 {
        return None;
    }
    let first = (lun >> 48) as u16;
    match first >> 14 {
        0 if first >> 8 == 0 => Some(first),
        1 => Some(first & 0x3fff),
        _ => None,
    }
}

/// A random-type ISID (RFC 7143 §11.12.5: T=10b "random", A=0, B and C
/// from `random`, qualifier D=0).
pub fn random_isid(random: [u8; 3]) -> [u8; 6] {
    [0x80, random[0], random[1], random[2], 0, 0]
}

// ---------------------------------------------------------------------------
// Typed PDUs
// ---------------------------------------------------------------------------

/// NOP-Out (§11.18): a ping, or the answer to a target's NOP-In.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NopOut {
    /// Immediate delivery (I bit).
    pub immediate: bool,
    /// LUN (SAM form), when answering a NOP-In that carried one.
    pub lun: u64,
    /// Initiator Task Tag ([`RESERVED_TAG`] when answering a NOP-In).
    pub itt: u32,
    /// Target Transfer Tag (the NOP-In's, or [`RESERVED_TAG`]).
    pub ttt: u32,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// Ping data.
    pub data: Vec<u8>,
}

/// SCSI Command (§11.3).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScsiCommand {
    /// Immediate delivery (I bit).
    pub immediate: bool,
    /// F: no unsolicited Data-Out follows.
    pub final_flag: bool,
    /// R: data flows to the initiator.
    pub read: bool,
    /// W: data flows to the target.
    pub write: bool,
    /// Task attributes (ATTR, 3 bits: 0 untagged, 1 simple, 2 ordered,
    /// 3 head of queue, 4 ACA).
    pub task_attr: u8,
    /// LUN (SAM form).
    pub lun: u64,
    /// Initiator Task Tag.
    pub itt: u32,
    /// Expected Data Transfer Length.
    pub expected_length: u32,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// The CDB, zero padded.
    pub cdb: [u8; 16],
    /// Immediate data.
    pub data: Vec<u8>,
}

/// SCSI Response (§11.4).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScsiResponse {
    /// o: bidirectional read residual overflow.
    pub bidi_overflow: bool,
    /// u: bidirectional read residual underflow.
    pub bidi_underflow: bool,
    /// O: residual overflow.
    pub overflow: bool,
    /// U: residual underflow.
    pub underflow: bool,
    /// iSCSI service response (0 = command completed at target).
    pub response: u8,
    /// SCSI status (valid when `response` is 0).
    pub status: u8,
    /// Initiator Task Tag.
    pub itt: u32,
    /// SNACK Tag.
    pub snack_tag: u32,
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// ExpDataSN.
    pub exp_data_sn: u32,
    /// Bidirectional Read Residual Count.
    pub bidi_residual: u32,
    /// Residual Count.
    pub residual: u32,
    /// SenseLength (2 bytes) + sense data + response data.
    pub data: Vec<u8>,
}

impl ScsiResponse {
    /// The sense data, when the data segment carries some.
    pub fn sense(&self) -> Option<&[u8]> {
        let len = usize::from(u16::from_be_bytes([
            *self.data.first()?,
            *self.data.get(1)?,
        ]));
        self.data.get(2..2 + len).filter(|s| !s.is_empty())
    }
}

/// Task Management Function Request (§11.5).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskMgmtRequest {
    /// Immediate delivery (I bit).
    pub immediate: bool,
    /// Function (7 bits): 1 ABORT TASK, 2 ABORT TASK SET, 3 CLEAR ACA,
    /// 4 CLEAR TASK SET, 5 LOGICAL UNIT RESET, 6 TARGET WARM RESET, ...
    pub function: u8,
    /// LUN (SAM form).
    pub lun: u64,
    /// Initiator Task Tag of this request.
    pub itt: u32,
    /// Referenced Task Tag (the ITT to abort).
    pub referenced_task_tag: u32,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// RefCmdSN.
    pub ref_cmd_sn: u32,
    /// ExpDataSN.
    pub exp_data_sn: u32,
}

/// TMF function ABORT TASK.
pub const TMF_ABORT_TASK: u8 = 1;
/// TMF function LOGICAL UNIT RESET.
pub const TMF_LOGICAL_UNIT_RESET: u8 = 5;

/// Task Management Function Response (§11.6).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskMgmtResponse {
    /// Response: 0 complete, 1 task does not exist, 2 LUN does not
    /// exist, 3 task still allegiant, 4 reassignment unsupported, 5 not
    /// supported, 6 authorization failed, 255 rejected.
    pub response: u8,
    /// Initiator Task Tag.
    pub itt: u32,
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
}

/// SCSI Data-Out (§11.7).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DataOut {
    /// F: last PDU of the sequence.
    pub final_flag: bool,
    /// LUN (SAM form).
    pub lun: u64,
    /// Initiator Task Tag.
    pub itt: u32,
    /// Target Transfer Tag (the R2T's, or [`RESERVED_TAG`] for unsolicited data).
    pub ttt: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// DataSN.
    pub data_sn: u32,
    /// Buffer Offset.
    pub buffer_offset: u32,
    /// The data.
    pub data: Vec<u8>,
}

/// SCSI Data-In (§11.7).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DataIn {
    /// F: last PDU of the sequence.
    pub final_flag: bool,
    /// A: the target asks for a DataACK SNACK.
    pub acknowledge: bool,
    /// O: residual overflow (with status).
    pub overflow: bool,
    /// U: residual underflow (with status).
    pub underflow: bool,
    /// S bit and the SCSI status it makes valid.
    pub status: Option<u8>,
    /// LUN (SAM form).
    pub lun: u64,
    /// Initiator Task Tag.
    pub itt: u32,
    /// Target Transfer Tag.
    pub ttt: u32,
    /// StatSN (meaningful with status).
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// DataSN.
    pub data_sn: u32,
    /// Buffer Offset.
    pub buffer_offset: u32,
    /// Residual Count (with status).
    pub residual: u32,
    /// The data.
    pub data: Vec<u8>,
}

/// Ready To Transfer (§11.8).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct R2t {
    /// LUN (SAM form).
    pub lun: u64,
    /// Initiator Task Tag.
    pub itt: u32,
    /// Target Transfer Tag (to echo in the Data-Out PDUs).
    pub ttt: u32,
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// R2TSN.
    pub r2t_sn: u32,
    /// Buffer Offset.
    pub buffer_offset: u32,
    /// Desired Data Transfer Length.
    pub desired_length: u32,
}

/// Asynchronous Message (§11.9).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AsyncMessage {
    /// LUN (SAM form).
    pub lun: u64,
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// AsyncEvent: 0 SCSI event, 1 logout requested, 2 connection drop,
    /// 3 session drop, 4 renegotiate, 5 task termination, 255 vendor.
    pub event: u8,
    /// AsyncVCode.
    pub vcode: u8,
    /// Parameter1.
    pub parameter1: u16,
    /// Parameter2.
    pub parameter2: u16,
    /// Parameter3.
    pub parameter3: u16,
    /// SenseLength + sense data + iSCSI event data.
    pub data: Vec<u8>,
}

/// Text Request (§11.10).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TextRequest {
    /// Immediate delivery (I bit).
    pub immediate: bool,
    /// F: the last request of the exchange.
    pub final_flag: bool,
    /// C: the text continues in the next PDU.
    pub continue_flag: bool,
    /// LUN (SAM form; zero).
    pub lun: u64,
    /// Initiator Task Tag.
    pub itt: u32,
    /// Target Transfer Tag ([`RESERVED_TAG`], or the response's to continue).
    pub ttt: u32,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// `key=value\0` pairs.
    pub data: Vec<u8>,
}

/// Text Response (§11.11).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TextResponse {
    /// F: the last response of the exchange.
    pub final_flag: bool,
    /// C: the text continues in the next PDU.
    pub continue_flag: bool,
    /// LUN (SAM form).
    pub lun: u64,
    /// Initiator Task Tag.
    pub itt: u32,
    /// Target Transfer Tag (not reserved when more responses follow).
    pub ttt: u32,
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// `key=value\0` pairs.
    pub data: Vec<u8>,
}

/// Login Request (§11.12); always immediate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginRequest {
    /// T: the initiator is ready to go to `nsg`.
    pub transit: bool,
    /// C: the text continues in the next PDU.
    pub continue_flag: bool,
    /// Current stage.
    pub csg: Stage,
    /// Next stage (meaningful with T).
    pub nsg: Stage,
    /// Version-max.
    pub version_max: u8,
    /// Version-min.
    pub version_min: u8,
    /// ISID.
    pub isid: [u8; 6],
    /// TSIH (0 for a new session).
    pub tsih: u16,
    /// Initiator Task Tag.
    pub itt: u32,
    /// Connection ID.
    pub cid: u16,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// `key=value\0` pairs.
    pub data: Vec<u8>,
}

/// Login Response (§11.13).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginResponse {
    /// T: the target goes to `nsg`.
    pub transit: bool,
    /// C: the text continues in the next PDU.
    pub continue_flag: bool,
    /// Current stage.
    pub csg: Stage,
    /// Next stage (meaningful with T).
    pub nsg: Stage,
    /// Version-max.
    pub version_max: u8,
    /// Version-active.
    pub version_active: u8,
    /// ISID.
    pub isid: [u8; 6],
    /// TSIH (the session's, in the final response).
    pub tsih: u16,
    /// Initiator Task Tag.
    pub itt: u32,
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// Status-Class (0 success, 1 redirection, 2 initiator error, 3 target error).
    pub status_class: u8,
    /// Status-Detail.
    pub status_detail: u8,
    /// `key=value\0` pairs.
    pub data: Vec<u8>,
}

/// Logout Request (§11.14).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogoutRequest {
    /// Immediate delivery (I bit).
    pub immediate: bool,
    /// Reason code (7 bits): 0 close the session, 1 the connection,
    /// 2 remove the connection for recovery.
    pub reason: u8,
    /// Initiator Task Tag.
    pub itt: u32,
    /// CID (reasons 1 and 2).
    pub cid: u16,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
}

/// Logout Response (§11.15).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogoutResponse {
    /// Response: 0 closed, 1 CID not found, 2 recovery unsupported, 3 cleanup failed.
    pub response: u8,
    /// Initiator Task Tag.
    pub itt: u32,
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// Time2Wait.
    pub time2wait: u16,
    /// Time2Retain.
    pub time2retain: u16,
}

/// SNACK Request (§11.16).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snack {
    /// Type (4 bits): 0 Data/R2T, 1 status, 2 DataACK, 3 R-Data.
    pub snack_type: u8,
    /// LUN (SAM form).
    pub lun: u64,
    /// Initiator Task Tag.
    pub itt: u32,
    /// Target Transfer Tag or SNACK Tag.
    pub ttt: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// BegRun.
    pub beg_run: u32,
    /// RunLength.
    pub run_length: u32,
}

/// Reject (§11.17).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reject {
    /// Reason: 2 data digest error, 3 SNACK reject, 4 protocol error,
    /// 5 command not supported, 6 immediate command reject, 7 task in
    /// progress, 8 invalid data ACK, 9 invalid PDU field, 10 long op
    /// reject, 12 waiting for logout.
    pub reason: u8,
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// DataSN/R2TSN.
    pub data_sn: u32,
    /// The rejected PDU's header.
    pub data: Vec<u8>,
}

/// NOP-In (§11.19).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NopIn {
    /// LUN (SAM form).
    pub lun: u64,
    /// Initiator Task Tag (the NOP-Out's, or [`RESERVED_TAG`] for a target ping).
    pub itt: u32,
    /// Target Transfer Tag (not reserved: the target wants a NOP-Out back).
    pub ttt: u32,
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// Ping data.
    pub data: Vec<u8>,
}

/// Any PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pdu {
    /// NOP-Out.
    NopOut(NopOut),
    /// SCSI Command.
    ScsiCommand(ScsiCommand),
    /// Task Management Function Request.
    TaskMgmtRequest(TaskMgmtRequest),
    /// Login Request.
    LoginRequest(LoginRequest),
    /// Text Request.
    TextRequest(TextRequest),
    /// SCSI Data-Out.
    DataOut(DataOut),
    /// Logout Request.
    LogoutRequest(LogoutRequest),
    /// SNACK Request.
    Snack(Snack),
    /// NOP-In.
    NopIn(NopIn),
    /// SCSI Response.
    ScsiResponse(ScsiResponse),
    /// Task Management Function Response.
    TaskMgmtResponse(TaskMgmtResponse),
    /// Login Response.
    LoginResponse(LoginResponse),
    /// Text Response.
    TextResponse(TextResponse),
    /// SCSI Data-In.
    DataIn(DataIn),
    /// Logout Response.
    LogoutResponse(LogoutResponse),
    /// Ready To Transfer.
    R2t(R2t),
    /// Asynchronous Message.
    AsyncMessage(AsyncMessage),
    /// Reject.
    Reject(Reject),
}

// ---------------------------------------------------------------------------
// Byte helpers
// ---------------------------------------------------------------------------

struct Bhs([u8; BHS_LEN]);

impl Bhs {
    fn u16(&self, at: usize) -> u16 {
        u16::from_be_bytes([self.0[at], self.0[at + 1]])
    }
    fn u32(&self, at: usize) -> u32 {
        u32::from_be_bytes([self.0[at], self.0[at + 1], self.0[at + 2], self.0[at + 3]])
    }
    fn u64(&self, at: usize) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[at..at + 8]);
        u64::from_be_bytes(b)
    }
    fn bit(&self, at: usize, mask: u8) -> bool {
        self.0[at] & mask != 0
    }
    fn set_u16(&mut self, at: usize, v: u16) {
        self.0[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }
    fn set_u32(&mut self, at: usize, v: u32) {
        self.0[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }
    fn set_u64(&mut self, at: usize, v: u64) {
        self.0[at..at + 8].copy_from_slice(&v.to_be_bytes());
    }
    fn flag(&mut self, at: usize, mask: u8, on: bool) {
        if on {
            self.0[at] |= mask;
        }
    }
}

const F: u8 = 0x80;
const IMMEDIATE: u8 = 0x40;

/// The opcode of a BHS.
pub fn opcode(bhs: &[u8; BHS_LEN]) -> Result<Opcode, PduError> {
    Opcode::from_byte(bhs[0]).ok_or(PduError::UnknownOpcode(bhs[0] & 0x3f))
}

/// The DataSegmentLength of a BHS.
pub fn data_segment_length(bhs: &[u8; BHS_LEN]) -> u32 {
    u32::from_be_bytes([0, bhs[5], bhs[6], bhs[7]])
}

/// The TotalAHSLength of a BHS in bytes.
pub fn ahs_length(bhs: &[u8; BHS_LEN]) -> usize {
    usize::from(bhs[4]) * 4
}

/// The length of the whole PDU whose BHS this is: BHS, AHS, header
/// digest, padded data segment, data digest. Checks the opcode and that
/// DataSegmentLength is at most `max_data_segment` (the
/// MaxRecvDataSegmentLength we declared; during login 8192) before the
/// caller reads or allocates anything.
pub fn frame_len(
    bhs: &[u8; BHS_LEN],
    digests: Digests,
    max_data_segment: u32,
) -> Result<usize, PduError> {
    opcode(bhs)?;
    let dsl = data_segment_length(bhs);
    if dsl > max_data_segment {
        return Err(PduError::DataSegmentTooLong {
            len: dsl,
            max: max_data_segment,
        });
    }
    Ok(wire_len(ahs_length(bhs), dsl as usize, digests))
}

fn wire_len(ahs: usize, dsl: usize, digests: Digests) -> usize {
    let mut n = BHS_LEN + ahs;
    if digests.header {
        n += DIGEST_LEN;
    }
    if dsl > 0 {
        n += dsl + digest::pad_len(dsl);
        if digests.data {
            n += DIGEST_LEN;
        }
    }
    n
}

/// What follows a BHS on the wire besides the payload itself, for a
/// vectored write: BHS, `header_digest`, payload, `padding(len)`,
/// `data_digest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    /// The header digest, when negotiated.
    pub header_digest: Option<[u8; DIGEST_LEN]>,
    /// Zero bytes after the payload.
    pub padding: &'static [u8],
    /// The data digest, when negotiated and there is a payload.
    pub data_digest: Option<[u8; DIGEST_LEN]>,
}

/// Zero padding after a payload of `len` bytes.
pub fn padding(len: usize) -> &'static [u8] {
    &[0u8; 3][..digest::pad_len(len)]
}

/// Digests and padding for a BHS (from [`Pdu::encode_header`]) and its
/// payload.
pub fn framing(bhs: &[u8; BHS_LEN], payload: &[u8], digests: Digests) -> Framing {
    Framing {
        header_digest: digests.header.then(|| digest::header_digest(bhs, &[])),
        padding: padding(payload.len()),
        data_digest: (digests.data && !payload.is_empty()).then(|| digest::data_digest(payload)),
    }
}

impl Pdu {
    /// The PDU's opcode.
    pub fn opcode(&self) -> Opcode {
        match self {
            Pdu::NopOut(_) => Opcode::NopOut,
            Pdu::ScsiCommand(_) => Opcode::ScsiCommand,
            Pdu::TaskMgmtRequest(_) => Opcode::TaskMgmtRequest,
            Pdu::LoginRequest(_) => Opcode::LoginRequest,
            Pdu::TextRequest(_) => Opcode::TextRequest,
            Pdu::DataOut(_) => Opcode::DataOut,
            Pdu::LogoutRequest(_) => Opcode::LogoutRequest,
            Pdu::Snack(_) => Opcode::Snack,
            Pdu::NopIn(_) => Opcode::NopIn,
            Pdu::ScsiResponse(_) => Opcode::ScsiResponse,
            Pdu::TaskMgmtResponse(_) => Opcode::TaskMgmtResponse,
            Pdu::LoginResponse(_) => Opcode::LoginResponse,
            Pdu::TextResponse(_) => Opcode::TextResponse,
            Pdu::DataIn(_) => Opcode::DataIn,
            Pdu::LogoutResponse(_) => Opcode::LogoutResponse,
            Pdu::R2t(_) => Opcode::R2t,
            Pdu::AsyncMessage(_) => Opcode::AsyncMessage,
            Pdu::Reject(_) => Opcode::Reject,
        }
    }

    /// The Initiator Task Tag (the reserved tag for PDUs without one).
    pub fn itt(&self) -> u32 {
        match self {
            Pdu::NopOut(p) => p.itt,
            Pdu::ScsiCommand(p) => p.itt,
            Pdu::TaskMgmtRequest(p) => p.itt,
            Pdu::LoginRequest(p) => p.itt,
            Pdu::TextRequest(p) => p.itt,
            Pdu::DataOut(p) => p.itt,
            Pdu::LogoutRequest(p) => p.itt,
            Pdu::Snack(p) => p.itt,
            Pdu::NopIn(p) => p.itt,
            Pdu::ScsiResponse(p) => p.itt,
            Pdu::TaskMgmtResponse(p) => p.itt,
            Pdu::LoginResponse(p) => p.itt,
            Pdu::TextResponse(p) => p.itt,
            Pdu::DataIn(p) => p.itt,
            Pdu::LogoutResponse(p) => p.itt,
            Pdu::R2t(p) => p.itt,
            Pdu::AsyncMessage(_) | Pdu::Reject(_) => RESERVED_TAG,
        }
    }

    /// The data segment held in the struct (empty for PDUs without one).
    pub fn data(&self) -> &[u8] {
        match self {
            Pdu::NopOut(p) => &p.data,
            Pdu::ScsiCommand(p) => &p.data,
            Pdu::LoginRequest(p) => &p.data,
            Pdu::TextRequest(p) => &p.data,
            Pdu::DataOut(p) => &p.data,
            Pdu::NopIn(p) => &p.data,
            Pdu::ScsiResponse(p) => &p.data,
            Pdu::LoginResponse(p) => &p.data,
            Pdu::TextResponse(p) => &p.data,
            Pdu::DataIn(p) => &p.data,
            Pdu::AsyncMessage(p) => &p.data,
            Pdu::Reject(p) => &p.data,
            Pdu::TaskMgmtRequest(_)
            | Pdu::LogoutRequest(_)
            | Pdu::Snack(_)
            | Pdu::TaskMgmtResponse(_)
            | Pdu::LogoutResponse(_)
            | Pdu::R2t(_) => &[],
        }
    }

    /// The BHS for this PDU with a data segment of `data_len` bytes (the
    /// struct's own `data` is not looked at: the payload may live
    /// elsewhere). `data_len` is masked to 24 bits; no AHS.
    pub fn encode_header(&self, data_len: u32) -> [u8; BHS_LEN] {
        let mut b = Bhs([0u8; BHS_LEN]);
        b.0[0] = self.opcode() as u8;
        let dsl = (data_len & MAX_DATA_SEGMENT).to_be_bytes();
        b.0[5..8].copy_from_slice(&dsl[1..]);
        match self {
            Pdu::NopOut(p) => {
                b.flag(0, IMMEDIATE, p.immediate);
                b.0[1] = F;
                b.set_u64(8, p.lun);
                b.set_u32(16, p.itt);
                b.set_u32(20, p.ttt);
                b.set_u32(24, p.cmd_sn);
                b.set_u32(28, p.exp_stat_sn);
            }
            Pdu::ScsiCommand(p) => {
                b.flag(0, IMMEDIATE, p.immediate);
                b.0[1] = p.task_attr & 7;
                b.flag(1, F, p.final_flag);
                b.flag(1, 0x40, p.read);
                b.flag(1, 0x20, p.write);
                b.set_u64(8, p.lun);
                b.set_u32(16, p.itt);
                b.set_u32(20, p.expected_length);
                b.set_u32(24, p.cmd_sn);
                b.set_u32(28, p.exp_stat_sn);
                b.0[32..48].copy_from_slice(&p.cdb);
            }
            Pdu::TaskMgmtRequest(p) => {
                b.flag(0, IMMEDIATE, p.immediate);
                b.0[1] = F | (p.function & 0x7f);
                b.set_u64(8, p.lun);
                b.set_u32(16, p.itt);
                b.set_u32(20, p.referenced_task_tag);
                b.set_u32(24, p.cmd_sn);
                b.set_u32(28, p.exp_stat_sn);
                b.set_u32(32, p.ref_cmd_sn);
                b.set_u32(36, p.exp_data_sn);
            }
            Pdu::LoginRequest(p) => {
                b.0[0] |= IMMEDIATE;
                b.0[1] = ((p.csg as u8) << 2) | p.nsg as u8;
                b.flag(1, 0x80, p.transit);
                b.flag(1, 0x40, p.continue_flag);
                b.0[2] = p.version_max;
                b.0[3] = p.version_min;
                b.0[8..14].copy_from_slice(&p.isid);
                b.set_u16(14, p.tsih);
                b.set_u32(16, p.itt);
                b.set_u16(20, p.cid);
                b.set_u32(24, p.cmd_sn);
                b.set_u32(28, p.exp_stat_sn);
            }
            Pdu::TextRequest(p) => {
                b.flag(0, IMMEDIATE, p.immediate);
                b.flag(1, F, p.final_flag);
                b.flag(1, 0x40, p.continue_flag);
                b.set_u64(8, p.lun);
                b.set_u32(16, p.itt);
                b.set_u32(20, p.ttt);
                b.set_u32(24, p.cmd_sn);
                b.set_u32(28, p.exp_stat_sn);
            }
            Pdu::DataOut(p) => {
                b.flag(1, F, p.final_flag);
                b.set_u64(8, p.lun);
                b.set_u32(16, p.itt);
                b.set_u32(20, p.ttt);
                b.set_u32(28, p.exp_stat_sn);
                b.set_u32(36, p.data_sn);
                b.set_u32(40, p.buffer_offset);
            }
            Pdu::LogoutRequest(p) => {
                b.flag(0, IMMEDIATE, p.immediate);
                b.0[1] = F | (p.reason & 0x7f);
                b.set_u32(16, p.itt);
                b.set_u16(20, p.cid);
                b.set_u32(24, p.cmd_sn);
                b.set_u32(28, p.exp_stat_sn);
            }
            Pdu::Snack(p) => {
                b.0[1] = F | (p.snack_type & 0x0f);
                b.set_u64(8, p.lun);
                b.set_u32(16, p.itt);
                b.set_u32(20, p.ttt);
                b.set_u32(28, p.exp_stat_sn);
                b.set_u32(40, p.beg_run);
                b.set_u32(44, p.run_length);
            }
            Pdu::NopIn(p) => {
                b.0[1] = F;
                b.set_u64(8, p.lun);
                b.set_u32(16, p.itt);
                b.set_u32(20, p.ttt);
                b.set_u32(24, p.stat_sn);
                b.set_u32(28, p.exp_cmd_sn);
                b.set_u32(32, p.max_cmd_sn);
            }
            Pdu::ScsiResponse(p) => {
                b.0[1] = F;
                b.flag(1, 0x10, p.bidi_overflow);
                b.flag(1, 0x08, p.bidi_underflow);
                b.flag(1, 0x04, p.overflow);
                b.flag(1, 0x02, p.underflow);
                b.0[2] = p.response;
                b.0[3] = p.status;
                b.set_u32(16, p.itt);
                b.set_u32(20, p.snack_tag);
                b.set_u32(24, p.stat_sn);
                b.set_u32(28, p.exp_cmd_sn);
                b.set_u32(32, p.max_cmd_sn);
                b.set_u32(36, p.exp_data_sn);
                b.set_u32(40, p.bidi_residual);
                b.set_u32(44, p.residual);
            }
            Pdu::TaskMgmtResponse(p) => {
                b.0[1] = F;
                b.0[2] = p.response;
                b.set_u32(16, p.itt);
                b.set_u32(24, p.stat_sn);
                b.set_u32(28, p.exp_cmd_sn);
                b.set_u32(32, p.max_cmd_sn);
            }
            Pdu::LoginResponse(p) => {
                b.0[1] = ((p.csg as u8) << 2) | p.nsg as u8;
                b.flag(1, 0x80, p.transit);
                b.flag(1, 0x40, p.continue_flag);
                b.0[2] = p.version_max;
                b.0[3] = p.version_active;
                b.0[8..14].copy_from_slice(&p.isid);
                b.set_u16(14, p.tsih);
                b.set_u32(16, p.itt);
                b.set_u32(24, p.stat_sn);
                b.set_u32(28, p.exp_cmd_sn);
                b.set_u32(32, p.max_cmd_sn);
                b.0[36] = p.status_class;
                b.0[37] = p.status_detail;
            }
            Pdu::TextResponse(p) => {
                b.flag(1, F, p.final_flag);
                b.flag(1, 0x40, p.continue_flag);
                b.set_u64(8, p.lun);
                b.set_u32(16, p.itt);
                b.set_u32(20, p.ttt);
                b.set_u32(24, p.stat_sn);
                b.set_u32(28, p.exp_cmd_sn);
                b.set_u32(32, p.max_cmd_sn);
            }
            Pdu::DataIn(p) => {
                b.flag(1, F, p.final_flag);
                b.flag(1, 0x40, p.acknowledge);
                b.flag(1, 0x04, p.overflow);
                b.flag(1, 0x02, p.underflow);
                if let Some(status) = p.status {
                    b.0[1] |= 0x01;
                    b.0[3] = status;
                }
                b.set_u64(8, p.lun);
                b.set_u32(16, p.itt);
                b.set_u32(20, p.ttt);
                b.set_u32(24, p.stat_sn);
                b.set_u32(28, p.exp_cmd_sn);
                b.set_u32(32, p.max_cmd_sn);
                b.set_u32(36, p.data_sn);
                b.set_u32(40, p.buffer_offset);
                b.set_u32(44, p.residual);
            }
            Pdu::LogoutResponse(p) => {
                b.0[1] = F;
                b.0[2] = p.response;
                b.set_u32(16, p.itt);
                b.set_u32(24, p.stat_sn);
                b.set_u32(28, p.exp_cmd_sn);
                b.set_u32(32, p.max_cmd_sn);
                b.set_u16(40, p.time2wait);
                b.set_u16(42, p.time2retain);
            }
            Pdu::R2t(p) => {
                b.0[1] = F;
                b.set_u64(8, p.lun);
                b.set_u32(16, p.itt);
                b.set_u32(20, p.ttt);
                b.set_u32(24, p.stat_sn);
                b.set_u32(28, p.exp_cmd_sn);
                b.set_u32(32, p.max_cmd_sn);
                b.set_u32(36, p.r2t_sn);
                b.set_u32(40, p.buffer_offset);
                b.set_u32(44, p.desired_length);
            }
            Pdu::AsyncMessage(p) => {
                b.0[1] = F;
                b.set_u64(8, p.lun);
                b.set_u32(16, RESERVED_TAG);
                b.set_u32(24, p.stat_sn);
                b.set_u32(28, p.exp_cmd_sn);
                b.set_u32(32, p.max_cmd_sn);
                b.0[36] = p.event;
                b.0[37] = p.vcode;
                b.set_u16(38, p.parameter1);
                b.set_u16(40, p.parameter2);
                b.set_u16(42, p.parameter3);
            }
            Pdu::Reject(p) => {
                b.0[1] = F;
                b.0[2] = p.reason;
                b.set_u32(16, RESERVED_TAG);
                b.set_u32(24, p.stat_sn);
                b.set_u32(28, p.exp_cmd_sn);
                b.set_u32(32, p.max_cmd_sn);
                b.set_u32(36, p.data_sn);
            }
        }
        b.0
    }

    /// The whole PDU in one buffer: BHS (for the struct's own data),
    /// digests as negotiated, data and padding. Data beyond
    /// [`MAX_DATA_SEGMENT`] bytes is cut there (the caller splits larger
    /// transfers into several PDUs anyway).
    pub fn encode(&self, digests: Digests) -> Vec<u8> {
        let data = self.data();
        let data = &data[..data.len().min(MAX_DATA_SEGMENT as usize)];
        let bhs = self.encode_header(data.len() as u32);
        let fr = framing(&bhs, data, digests);
        let mut out = Vec::with_capacity(wire_len(0, data.len(), digests));
        out.extend_from_slice(&bhs);
        if let Some(d) = fr.header_digest {
            out.extend_from_slice(&d);
        }
        if !data.is_empty() {
            out.extend_from_slice(data);
            out.extend_from_slice(fr.padding);
            if let Some(d) = fr.data_digest {
                out.extend_from_slice(&d);
            }
        }
        out
    }

    /// Decodes exactly one PDU (as long as [`frame_len`] said), checking
    /// digests when negotiated.
    pub fn decode(buf: &[u8], digests: Digests) -> Result<Pdu, PduError> {
        let Some(head) = buf.get(..BHS_LEN) else {
            return Err(PduError::Truncated {
                needed: BHS_LEN,
                got: buf.len(),
            });
        };
        let mut arr = [0u8; BHS_LEN];
        arr.copy_from_slice(head);
        let op = opcode(&arr)?;
        let ahs = ahs_length(&arr);
        let hd = if digests.header { DIGEST_LEN } else { 0 };
        let available = buf.len() - BHS_LEN;
        if ahs > available {
            return Err(PduError::AhsDoesNotFit {
                ahs_len: ahs,
                available,
            });
        }
        let dsl = data_segment_length(&arr) as usize;
        let total = wire_len(ahs, dsl, digests);
        if buf.len() < total {
            return Err(PduError::Truncated {
                needed: total,
                got: buf.len(),
            });
        }
        if buf.len() > total {
            return Err(PduError::TrailingBytes {
                expected: total,
                got: buf.len(),
            });
        }
        let header_end = BHS_LEN + ahs;
        if digests.header {
            let computed = digest::crc32c(&buf[..header_end]);
            let received = le32(&buf[header_end..header_end + DIGEST_LEN]);
            if computed != received {
                return Err(PduError::HeaderDigest { computed, received });
            }
        }
        let data_start = header_end + hd;
        let data = &buf[data_start..data_start + dsl];
        if digests.data && dsl > 0 {
            let padded_end = data_start + dsl + digest::pad_len(dsl);
            let computed = digest::crc32c(&buf[data_start..padded_end]);
            let received = le32(&buf[padded_end..padded_end + DIGEST_LEN]);
            if computed != received {
                return Err(PduError::DataDigest { computed, received });
            }
        }
        Self::from_parts(op, &Bhs(arr), data)
    }

    fn from_parts(op: Opcode, b: &Bhs, data: &[u8]) -> Result<Pdu, PduError> {
        let imm = b.bit(0, IMMEDIATE);
        let data = data.to_vec();
        Ok(match op {
            Opcode::NopOut => Pdu::NopOut(NopOut {
                immediate: imm,
                lun: b.u64(8),
                itt: b.u32(16),
                ttt: b.u32(20),
                cmd_sn: b.u32(24),
                exp_stat_sn: b.u32(28),
                data,
            }),
            Opcode::ScsiCommand => {
                let mut cdb = [0u8; 16];
                cdb.copy_from_slice(&b.0[32..48]);
                Pdu::ScsiCommand(ScsiCommand {
                    immediate: imm,
                    final_flag: b.bit(1, F),
                    read: b.bit(1, 0x40),
                    write: b.bit(1, 0x20),
                    task_attr: b.0[1] & 7,
                    lun: b.u64(8),
                    itt: b.u32(16),
                    expected_length: b.u32(20),
                    cmd_sn: b.u32(24),
                    exp_stat_sn: b.u32(28),
                    cdb,
                    data,
                })
            }
            Opcode::TaskMgmtRequest => Pdu::TaskMgmtRequest(TaskMgmtRequest {
                immediate: imm,
                function: b.0[1] & 0x7f,
                lun: b.u64(8),
                itt: b.u32(16),
                referenced_task_tag: b.u32(20),
                cmd_sn: b.u32(24),
                exp_stat_sn: b.u32(28),
                ref_cmd_sn: b.u32(32),
                exp_data_sn: b.u32(36),
            }),
            Opcode::LoginRequest => {
                let mut isid = [0u8; 6];
                isid.copy_from_slice(&b.0[8..14]);
                Pdu::LoginRequest(LoginRequest {
                    transit: b.bit(1, 0x80),
                    continue_flag: b.bit(1, 0x40),
                    csg: Stage::from_bits(op, "CSG", b.0[1] >> 2)?,
                    nsg: Stage::from_bits(op, "NSG", b.0[1])?,
                    version_max: b.0[2],
                    version_min: b.0[3],
                    isid,
                    tsih: b.u16(14),
                    itt: b.u32(16),
                    cid: b.u16(20),
                    cmd_sn: b.u32(24),
                    exp_stat_sn: b.u32(28),
                    data,
                })
            }
            Opcode::TextRequest => Pdu::TextRequest(TextRequest {
                immediate: imm,
                final_flag: b.bit(1, F),
                continue_flag: b.bit(1, 0x40),
                lun: b.u64(8),
                itt: b.u32(16),
                ttt: b.u32(20),
                cmd_sn: b.u32(24),
                exp_stat_sn: b.u32(28),
                data,
            }),
            Opcode::DataOut => Pdu::DataOut(DataOut {
                final_flag: b.bit(1, F),
                lun: b.u64(8),
                itt: b.u32(16),
                ttt: b.u32(20),
                exp_stat_sn: b.u32(28),
                data_sn: b.u32(36),
                buffer_offset: b.u32(40),
                data,
            }),
            Opcode::LogoutRequest => Pdu::LogoutRequest(LogoutRequest {
                immediate: imm,
                reason: b.0[1] & 0x7f,
                itt: b.u32(16),
                cid: b.u16(20),
                cmd_sn: b.u32(24),
                exp_stat_sn: b.u32(28),
            }),
            Opcode::Snack => Pdu::Snack(Snack {
                snack_type: b.0[1] & 0x0f,
                lun: b.u64(8),
                itt: b.u32(16),
                ttt: b.u32(20),
                exp_stat_sn: b.u32(28),
                beg_run: b.u32(40),
                run_length: b.u32(44),
            }),
            Opcode::NopIn => Pdu::NopIn(NopIn {
                lun: b.u64(8),
                itt: b.u32(16),
                ttt: b.u32(20),
                stat_sn: b.u32(24),
                exp_cmd_sn: b.u32(28),
                max_cmd_sn: b.u32(32),
                data,
            }),
            Opcode::ScsiResponse => Pdu::ScsiResponse(ScsiResponse {
                bidi_overflow: b.bit(1, 0x10),
                bidi_underflow: b.bit(1, 0x08),
                overflow: b.bit(1, 0x04),
                underflow: b.bit(1, 0x02),
                response: b.0[2],
                status: b.0[3],
                itt: b.u32(16),
                snack_tag: b.u32(20),
                stat_sn: b.u32(24),
                exp_cmd_sn: b.u32(28),
                max_cmd_sn: b.u32(32),
                exp_data_sn: b.u32(36),
                bidi_residual: b.u32(40),
                residual: b.u32(44),
                data,
            }),
            Opcode::TaskMgmtResponse => Pdu::TaskMgmtResponse(TaskMgmtResponse {
                response: b.0[2],
                itt: b.u32(16),
                stat_sn: b.u32(24),
                exp_cmd_sn: b.u32(28),
                max_cmd_sn: b.u32(32),
            }),
            Opcode::LoginResponse => {
                let mut isid = [0u8; 6];
                isid.copy_from_slice(&b.0[8..14]);
                Pdu::LoginResponse(LoginResponse {
                    transit: b.bit(1, 0x80),
                    continue_flag: b.bit(1, 0x40),
                    csg: Stage::from_bits(op, "CSG", b.0[1] >> 2)?,
                    nsg: Stage::from_bits(op, "NSG", b.0[1])?,
                    version_max: b.0[2],
                    version_active: b.0[3],
                    isid,
                    tsih: b.u16(14),
                    itt: b.u32(16),
                    stat_sn: b.u32(24),
                    exp_cmd_sn: b.u32(28),
                    max_cmd_sn: b.u32(32),
                    status_class: b.0[36],
                    status_detail: b.0[37],
                    data,
                })
            }
            Opcode::TextResponse => Pdu::TextResponse(TextResponse {
                final_flag: b.bit(1, F),
                continue_flag: b.bit(1, 0x40),
                lun: b.u64(8),
                itt: b.u32(16),
                ttt: b.u32(20),
                stat_sn: b.u32(24),
                exp_cmd_sn: b.u32(28),
                max_cmd_sn: b.u32(32),
                data,
            }),
            Opcode::DataIn => Pdu::DataIn(DataIn {
                final_flag: b.bit(1, F),
                acknowledge: b.bit(1, 0x40),
                overflow: b.bit(1, 0x04),
                underflow: b.bit(1, 0x02),
                status: b.bit(1, 0x01).then_some(b.0[3]),
                lun: b.u64(8),
                itt: b.u32(16),
                ttt: b.u32(20),
                stat_sn: b.u32(24),
                exp_cmd_sn: b.u32(28),
                max_cmd_sn: b.u32(32),
                data_sn: b.u32(36),
                buffer_offset: b.u32(40),
                residual: b.u32(44),
                data,
            }),
            Opcode::LogoutResponse => Pdu::LogoutResponse(LogoutResponse {
                response: b.0[2],
                itt: b.u32(16),
                stat_sn: b.u32(24),
                exp_cmd_sn: b.u32(28),
                max_cmd_sn: b.u32(32),
                time2wait: b.u16(40),
                time2retain: b.u16(42),
            }),
            Opcode::R2t => Pdu::R2t(R2t {
                lun: b.u64(8),
                itt: b.u32(16),
                ttt: b.u32(20),
                stat_sn: b.u32(24),
                exp_cmd_sn: b.u32(28),
                max_cmd_sn: b.u32(32),
                r2t_sn: b.u32(36),
                buffer_offset: b.u32(40),
                desired_length: b.u32(44),
            }),
            Opcode::AsyncMessage => Pdu::AsyncMessage(AsyncMessage {
                lun: b.u64(8),
                stat_sn: b.u32(24),
                exp_cmd_sn: b.u32(28),
                max_cmd_sn: b.u32(32),
                event: b.0[36],
                vcode: b.0[37],
                parameter1: b.u16(38),
                parameter2: b.u16(40),
                parameter3: b.u16(42),
                data,
            }),
            Opcode::Reject => Pdu::Reject(Reject {
                reason: b.0[2],
                stat_sn: b.u32(24),
                exp_cmd_sn: b.u32(28),
                max_cmd_sn: b.u32(32),
                data_sn: b.u32(36),
                data,
            }),
        })
    }
}

fn le32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_pdus() -> Vec<Pdu> {
        let data = b"hello".to_vec();
        vec![
            Pdu::NopOut(NopOut {
                immediate: true,
                lun: lun_from_number(3),
                itt: 1,
                ttt: RESERVED_TAG,
                cmd_sn: 2,
                exp_stat_sn: 3,
                data: data.clone(),
            }),
            Pdu::ScsiCommand(ScsiCommand {
                immediate: false,
                final_flag: false,
                read: false,
                write: true,
                task_attr: 1,
                lun: lun_from_number(300),
                itt: 7,
                expected_length: 4096,
                cmd_sn: 9,
                exp_stat_sn: 10,
                cdb: [0x8a; 16],
                data: vec![1; 513],
            }),
            Pdu::TaskMgmtRequest(TaskMgmtRequest {
                immediate: true,
                function: TMF_ABORT_TASK,
                lun: 1 << 48,
                itt: 11,
                referenced_task_tag: 7,
                cmd_sn: 12,
                exp_stat_sn: 13,
                ref_cmd_sn: 9,
                exp_data_sn: 0,
            }),
            Pdu::LoginRequest(LoginRequest {
                transit: true,
                continue_flag: false,
                csg: Stage::Operational,
                nsg: Stage::FullFeature,
                version_max: 0,
                version_min: 0,
                isid: random_isid([1, 2, 3]),
                tsih: 0,
                itt: 0,
                cid: 1,
                cmd_sn: 1,
                exp_stat_sn: 0,
                data: b"A=B\0".to_vec(),
            }),
            Pdu::TextRequest(TextRequest {
                immediate: true,
                final_flag: true,
                continue_flag: false,
                lun: 0,
                itt: 5,
                ttt: RESERVED_TAG,
                cmd_sn: 1,
                exp_stat_sn: 2,
                data: b"SendTargets=All\0".to_vec(),
            }),
            Pdu::DataOut(DataOut {
                final_flag: true,
                lun: 0,
                itt: 7,
                ttt: 99,
                exp_stat_sn: 4,
                data_sn: 1,
                buffer_offset: 8192,
                data: vec![0x5a; 1000],
            }),
            Pdu::LogoutRequest(LogoutRequest {
                immediate: true,
                reason: 0,
                itt: 8,
                cid: 1,
                cmd_sn: 20,
                exp_stat_sn: 21,
            }),
            Pdu::Snack(Snack {
                snack_type: 1,
                lun: 0,
                itt: 4,
                ttt: 0,
                exp_stat_sn: 6,
                beg_run: 2,
                run_length: 3,
            }),
            Pdu::NopIn(NopIn {
                lun: 0,
                itt: RESERVED_TAG,
                ttt: 17,
                stat_sn: 5,
                exp_cmd_sn: 6,
                max_cmd_sn: 70,
                data: data.clone(),
            }),
            Pdu::ScsiResponse(ScsiResponse {
                bidi_overflow: false,
                bidi_underflow: true,
                overflow: false,
                underflow: true,
                response: 0,
                status: 2,
                itt: 7,
                snack_tag: 0,
                stat_sn: 8,
                exp_cmd_sn: 9,
                max_cmd_sn: 40,
                exp_data_sn: 1,
                bidi_residual: 0,
                residual: 512,
                data: vec![0, 3, 0x70, 0, 3],
            }),
            Pdu::TaskMgmtResponse(TaskMgmtResponse {
                response: 1,
                itt: 11,
                stat_sn: 3,
                exp_cmd_sn: 4,
                max_cmd_sn: 5,
            }),
            Pdu::LoginResponse(LoginResponse {
                transit: false,
                continue_flag: true,
                csg: Stage::Security,
                nsg: Stage::Operational,
                version_max: 0,
                version_active: 0,
                isid: [0x80, 1, 2, 3, 0, 0],
                tsih: 0x1234,
                itt: 0,
                stat_sn: 1,
                exp_cmd_sn: 1,
                max_cmd_sn: 1,
                status_class: 2,
                status_detail: 1,
                data: b"AuthMethod=CHAP\0".to_vec(),
            }),
            Pdu::TextResponse(TextResponse {
                final_flag: false,
                continue_flag: true,
                lun: 0,
                itt: 5,
                ttt: 0x44,
                stat_sn: 1,
                exp_cmd_sn: 2,
                max_cmd_sn: 3,
                data: b"TargetName=iqn.x".to_vec(),
            }),
            Pdu::DataIn(DataIn {
                final_flag: true,
                acknowledge: false,
                overflow: false,
                underflow: true,
                status: Some(0),
                lun: 0,
                itt: 7,
                ttt: RESERVED_TAG,
                stat_sn: 9,
                exp_cmd_sn: 10,
                max_cmd_sn: 42,
                data_sn: 0,
                buffer_offset: 0,
                residual: 3,
                data: vec![9; 4093],
            }),
            Pdu::LogoutResponse(LogoutResponse {
                response: 0,
                itt: 8,
                stat_sn: 30,
                exp_cmd_sn: 21,
                max_cmd_sn: 50,
                time2wait: 2,
                time2retain: 20,
            }),
            Pdu::R2t(R2t {
                lun: 0,
                itt: 7,
                ttt: 99,
                stat_sn: 4,
                exp_cmd_sn: 5,
                max_cmd_sn: 6,
                r2t_sn: 0,
                buffer_offset: 65536,
                desired_length: 262144,
            }),
            Pdu::AsyncMessage(AsyncMessage {
                lun: 0,
                stat_sn: 1,
                exp_cmd_sn: 2,
                max_cmd_sn: 3,
                event: 1,
                vcode: 0,
                parameter1: 0,
                parameter2: 0,
                parameter3: 2,
                data: vec![],
            }),
            Pdu::Reject(Reject {
                reason: 9,
                stat_sn: 1,
                exp_cmd_sn: 2,
                max_cmd_sn: 3,
                data_sn: 0,
                data: vec![0x01; 48],
            }),
        ]
    }

    #[test]
    fn every_pdu_round_trips_with_and_without_digests() {
        for digests in [
            Digests::NONE,
            Digests::BOTH,
            Digests {
                header: true,
                data: false,
            },
        ] {
            for pdu in all_pdus() {
                let wire = pdu.encode(digests);
                let mut bhs = [0u8; BHS_LEN];
                bhs.copy_from_slice(&wire[..BHS_LEN]);
                assert_eq!(
                    frame_len(&bhs, digests, MAX_DATA_SEGMENT).unwrap(),
                    wire.len()
                );
                assert_eq!(Pdu::decode(&wire, digests).unwrap(), pdu, "{digests:?}");
            }
        }
    }

    #[test]
    fn header_plus_framing_equals_encode() {
        for pdu in all_pdus() {
            let data = pdu.data();
            let bhs = pdu.encode_header(data.len() as u32);
            let fr = framing(&bhs, data, Digests::BOTH);
            let mut v = bhs.to_vec();
            v.extend(fr.header_digest.unwrap());
            v.extend_from_slice(data);
            v.extend_from_slice(fr.padding);
            v.extend(fr.data_digest.iter().flatten());
            assert_eq!(v, pdu.encode(Digests::BOTH));
        }
    }

    #[test]
    fn login_request_bytes() {
        let pdu = Pdu::LoginRequest(LoginRequest {
            transit: true,
            continue_flag: false,
            csg: Stage::Security,
            nsg: Stage::Operational,
            version_max: 0,
            version_min: 0,
            isid: [0x80, 0x12, 0x34, 0x56, 0, 0],
            tsih: 0,
            itt: 0x0102_0304,
            cid: 0x0001,
            cmd_sn: 0x0a0b_0c0d,
            exp_stat_sn: 0,
            data: b"AuthMethod=None\0".to_vec(),
        });
        let mut want = [0u8; 48];
        want[0] = 0x43; // I + Login Request
        want[1] = 0x81; // T, CSG=0, NSG=1
        want[7] = 16; // DataSegmentLength
        want[8..14].copy_from_slice(&[0x80, 0x12, 0x34, 0x56, 0, 0]);
        want[16..20].copy_from_slice(&[1, 2, 3, 4]);
        want[20..22].copy_from_slice(&[0, 1]);
        want[24..28].copy_from_slice(&[0x0a, 0x0b, 0x0c, 0x0d]);
        let wire = pdu.encode(Digests::NONE);
        assert_eq!(wire[..48], want);
        assert_eq!(&wire[48..], b"AuthMethod=None\0");

        // Operational -> full feature: CSG=1, NSG=3.
        let Pdu::LoginRequest(mut r) = pdu else {
            unreachable!()
        };
        r.csg = Stage::Operational;
        r.nsg = Stage::FullFeature;
        r.transit = false;
        r.continue_flag = true;
        assert_eq!(Pdu::LoginRequest(r).encode_header(0)[1], 0x47);
    }

    #[test]
    fn scsi_command_read16_bytes() {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x88; // READ(16)
        cdb[2..10].copy_from_slice(&0x1000u64.to_be_bytes());
        cdb[10..14].copy_from_slice(&8u32.to_be_bytes());
        let pdu = Pdu::ScsiCommand(ScsiCommand {
            immediate: false,
            final_flag: true,
            read: true,
            write: false,
            task_attr: 1,
            lun: lun_from_number(1),
            itt: 0x10,
            expected_length: 4096,
            cmd_sn: 5,
            exp_stat_sn: 6,
            cdb,
            data: vec![],
        });
        let mut want = [0u8; 48];
        want[0] = 0x01;
        want[1] = 0xc1; // F, R, ATTR=simple
        want[8] = 0x00;
        want[9] = 0x01; // LUN 1, peripheral addressing
        want[16..20].copy_from_slice(&0x10u32.to_be_bytes());
        want[20..24].copy_from_slice(&4096u32.to_be_bytes());
        want[24..28].copy_from_slice(&5u32.to_be_bytes());
        want[28..32].copy_from_slice(&6u32.to_be_bytes());
        want[32..48].copy_from_slice(&cdb);
        assert_eq!(pdu.encode(Digests::NONE), want.to_vec());
        // A write with W and no F (unsolicited data follows).
        let Pdu::ScsiCommand(mut w) = pdu else {
            unreachable!()
        };
        w.read = false;
        w.write = true;
        w.final_flag = false;
        assert_eq!(Pdu::ScsiCommand(w).encode_header(0)[1], 0x21);
    }

    #[test]
    fn data_in_with_status_bytes() {
        let mut bhs = [0u8; 48];
        bhs[0] = 0x25;
        bhs[1] = 0x83; // F, U, S
        bhs[3] = 0x00; // GOOD
        bhs[7] = 4;
        bhs[16..20].copy_from_slice(&7u32.to_be_bytes());
        bhs[20..24].copy_from_slice(&RESERVED_TAG.to_be_bytes());
        bhs[24..28].copy_from_slice(&100u32.to_be_bytes());
        bhs[28..32].copy_from_slice(&8u32.to_be_bytes());
        bhs[32..36].copy_from_slice(&40u32.to_be_bytes());
        bhs[36..40].copy_from_slice(&2u32.to_be_bytes());
        bhs[40..44].copy_from_slice(&8192u32.to_be_bytes());
        bhs[44..48].copy_from_slice(&508u32.to_be_bytes());
        let mut wire = bhs.to_vec();
        wire.extend_from_slice(&[1, 2, 3, 4]);
        let pdu = Pdu::decode(&wire, Digests::NONE).unwrap();
        let Pdu::DataIn(d) = &pdu else {
            panic!("{pdu:?}")
        };
        assert!(d.final_flag && d.underflow && !d.overflow && !d.acknowledge);
        assert_eq!(d.status, Some(0));
        assert_eq!((d.itt, d.ttt, d.stat_sn), (7, RESERVED_TAG, 100));
        assert_eq!((d.exp_cmd_sn, d.max_cmd_sn, d.data_sn), (8, 40, 2));
        assert_eq!((d.buffer_offset, d.residual), (8192, 508));
        assert_eq!(d.data, [1, 2, 3, 4]);
        assert_eq!(pdu.encode(Digests::NONE), wire);
        // Without S the status byte is not a status.
        wire[1] = 0x00;
        wire[3] = 0x02;
        let Pdu::DataIn(d) = Pdu::decode(&wire, Digests::NONE).unwrap() else {
            panic!()
        };
        assert_eq!(d.status, None);
    }

    #[test]
    fn r2t_bytes() {
        let mut want = [0u8; 48];
        want[0] = 0x31;
        want[1] = 0x80;
        want[9] = 2;
        want[16..20].copy_from_slice(&7u32.to_be_bytes());
        want[20..24].copy_from_slice(&0x99u32.to_be_bytes());
        want[24..28].copy_from_slice(&11u32.to_be_bytes());
        want[28..32].copy_from_slice(&12u32.to_be_bytes());
        want[32..36].copy_from_slice(&13u32.to_be_bytes());
        want[36..40].copy_from_slice(&1u32.to_be_bytes());
        want[40..44].copy_from_slice(&65536u32.to_be_bytes());
        want[44..48].copy_from_slice(&262144u32.to_be_bytes());
        let pdu = Pdu::decode(&want, Digests::NONE).unwrap();
        assert_eq!(
            pdu,
            Pdu::R2t(R2t {
                lun: lun_from_number(2),
                itt: 7,
                ttt: 0x99,
                stat_sn: 11,
                exp_cmd_sn: 12,
                max_cmd_sn: 13,
                r2t_sn: 1,
                buffer_offset: 65536,
                desired_length: 262144,
            })
        );
        assert_eq!(pdu.encode(Digests::NONE), want.to_vec());
    }

    #[test]
    fn bad_input_gives_distinct_errors() {
        let good = all_pdus()[0].encode(Digests::BOTH);
        let mut bhs = [0u8; 48];
        bhs.copy_from_slice(&good[..48]);

        assert_eq!(
            Pdu::decode(&good[..20], Digests::BOTH),
            Err(PduError::Truncated {
                needed: 48,
                got: 20
            })
        );
        assert!(matches!(
            Pdu::decode(&good[..good.len() - 1], Digests::BOTH),
            Err(PduError::Truncated { .. })
        ));
        let mut long = good.clone();
        long.push(0);
        assert!(matches!(
            Pdu::decode(&long, Digests::BOTH),
            Err(PduError::TrailingBytes { .. })
        ));

        let mut unknown = bhs;
        unknown[0] = 0x1c;
        assert_eq!(
            Pdu::decode(&unknown, Digests::NONE),
            Err(PduError::UnknownOpcode(0x1c))
        );
        assert_eq!(
            frame_len(&unknown, Digests::NONE, 8192),
            Err(PduError::UnknownOpcode(0x1c))
        );

        let mut big = bhs;
        big[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
        assert_eq!(
            frame_len(&big, Digests::NONE, 8192),
            Err(PduError::DataSegmentTooLong {
                len: MAX_DATA_SEGMENT,
                max: 8192
            })
        );

        let mut ahs = bhs;
        ahs[4] = 255;
        ahs[5..8].copy_from_slice(&[0, 0, 0]);
        assert_eq!(
            Pdu::decode(&ahs, Digests::NONE),
            Err(PduError::AhsDoesNotFit {
                ahs_len: 1020,
                available: 0
            })
        );
        // AHS that fit are skipped (and covered by the header digest).
        let mut with_ahs = bhs.to_vec();
        with_ahs[4] = 1;
        with_ahs[5..8].copy_from_slice(&[0, 0, 0]);
        with_ahs.extend_from_slice(&[0, 1, 2, 0]);
        let Pdu::NopOut(n) = Pdu::decode(&with_ahs, Digests::NONE).unwrap() else {
            panic!()
        };
        assert!(n.data.is_empty());

        let mut bad_hd = good.clone();
        bad_hd[48] ^= 1;
        assert!(matches!(
            Pdu::decode(&bad_hd, Digests::BOTH),
            Err(PduError::HeaderDigest { .. })
        ));
        let mut bad_dd = good.clone();
        let n = bad_dd.len();
        bad_dd[n - 1] ^= 1;
        assert!(matches!(
            Pdu::decode(&bad_dd, Digests::BOTH),
            Err(PduError::DataDigest { .. })
        ));
        let mut bad_data = good;
        bad_data[52] ^= 1;
        assert!(matches!(
            Pdu::decode(&bad_data, Digests::BOTH),
            Err(PduError::DataDigest { .. })
        ));

        let mut stage = all_pdus()[3].encode(Digests::NONE);
        stage[1] = 0x89; // CSG=2
        assert!(matches!(
            Pdu::decode(&stage, Digests::NONE),
            Err(PduError::BadField { .. })
        ));
    }

    #[test]
    fn luns() {
        assert_eq!(lun_from_number(0), 0);
        assert_eq!(lun_from_number(1), 0x0001_0000_0000_0000);
        assert_eq!(lun_from_number(256), 0x4100_0000_0000_0000);
        for n in [0, 1, 255, 256, 16383] {
            assert_eq!(lun_to_number(lun_from_number(n)), Some(n));
        }
        assert_eq!(lun_to_number(1), None);
    }

    #[test]
    fn sense_from_response() {
        let r = ScsiResponse {
            data: vec![0, 2, 0x70, 0x00, 9],
            ..Default::default()
        };
        assert_eq!(r.sense(), Some(&[0x70, 0x00][..]));
        let r = ScsiResponse {
            data: vec![0, 9, 1],
            ..Default::default()
        };
        assert_eq!(r.sense(), None);
    }
}
