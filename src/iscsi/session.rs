//! The full feature phase of one iSCSI session over one connection
//! (error recovery level 0), as a pure state machine.
//!
//! The driver (the connection's IO) calls [`Session::submit`] for a SCSI
//! command and writes the [`Send`]s it returns; it decodes every PDU the
//! target sends and gives it to [`Session::receive`], which answers with
//! [`Event`]s: data to copy into a command's buffer, a command done with
//! its status, PDUs to write (Data-Out for an R2T, the answer to a
//! target's ping). Payloads are not copied here: a [`Send`] names the
//! range of the command's own write buffer that goes with a header.
//!
//! What the session checks, because a target may be broken or hostile:
//! every response names a task that exists and fits it (Data-In only for
//! reads, in order, within the expected length; R2T only for writes,
//! within the length, for data not already sent unsolicited, at most
//! MaxBurstLength). Anything else is a [`ProtocolError`]: the connection
//! is not to be trusted any more, the driver drops it and fails its
//! commands as path errors.
//!
//! Sequence numbers use serial number arithmetic (RFC 1982, 32 bits):
//! CmdSN advances for every non-immediate command and stops at the
//! target's MaxCmdSN ([`Session::can_submit`]); ExpStatSN follows the
//! StatSN of responses that carry status.

use std::collections::HashMap;
use std::ops::Range;

use thiserror::Error;

use super::pdu::{
    DataOut, LogoutRequest, NopOut, Pdu, ScsiCommand, TaskMgmtRequest, TextRequest, RESERVED_TAG,
    TMF_ABORT_TASK,
};

/// What the login negotiated that the full feature phase obeys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionParams {
    /// The most data one PDU we send may carry: the target's
    /// MaxRecvDataSegmentLength.
    pub max_send_segment: u32,
    /// MaxBurstLength: the most data one R2T may ask for.
    pub max_burst: u32,
    /// FirstBurstLength: the most unsolicited data per command.
    pub first_burst: u32,
    /// ImmediateData: data may ride in the command PDU.
    pub immediate_data: bool,
    /// InitialR2T: no unsolicited Data-Out PDUs.
    pub initial_r2t: bool,
}

impl Default for SessionParams {
    /// RFC 7143's defaults.
    fn default() -> Self {
        SessionParams {
            max_send_segment: 8192,
            max_burst: 262_144,
            first_burst: 65_536,
            immediate_data: true,
            initial_r2t: true,
        }
    }
}

/// Where a command's data goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// No data (TEST UNIT READY, SYNCHRONIZE CACHE).
    None,
    /// From the target (READ, INQUIRY): `len` bytes at most.
    Read,
    /// To the target (WRITE, UNMAP): exactly `len` bytes.
    Write,
}

/// A SCSI command to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Command {
    /// The LUN in SAM form ([`super::pdu::lun_from_number`]).
    pub lun: u64,
    /// The CDB, zero padded to 16 bytes.
    pub cdb: [u8; 16],
    pub dir: Direction,
    /// Expected data transfer length in bytes.
    pub len: u32,
}

/// A PDU for the driver to write. `Command` and `DataOut` carry no
/// payload: the range names the bytes of the command's write buffer that
/// follow the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Send {
    /// A small PDU complete with its data.
    Pdu(Pdu),
    /// A SCSI Command and its immediate data.
    Command {
        header: ScsiCommand,
        immediate: Range<u32>,
    },
    /// A Data-Out PDU and its data.
    DataOut { header: DataOut, range: Range<u32> },
}

impl Send {
    /// The PDU header (with an empty data field) and the range of the
    /// write buffer that follows it (empty for [`Send::Pdu`]).
    pub fn parts(&self) -> (Pdu, Range<u32>) {
        match self {
            Send::Pdu(p) => (p.clone(), 0..0),
            Send::Command { header, immediate } => {
                (Pdu::ScsiCommand(header.clone()), immediate.clone())
            }
            Send::DataOut { header, range } => (Pdu::DataOut(header.clone()), range.clone()),
        }
    }
}

/// How a command ended at the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// iSCSI service response: 0 means the command completed at the
    /// target and `status` is its SCSI status.
    pub response: u8,
    /// SCSI status (0 GOOD, 2 CHECK CONDITION, 8 BUSY, 0x18 RESERVATION
    /// CONFLICT, 0x28 TASK SET FULL).
    pub status: u8,
    /// Sense data (with CHECK CONDITION).
    pub sense: Vec<u8>,
    /// Bytes of the expected length not transferred (underflow).
    pub residual_under: u32,
    /// Bytes the target had beyond the expected length (overflow).
    pub residual_over: u32,
    /// Bytes of read data received.
    pub received: u32,
}

impl Status {
    /// True when the command completed with GOOD status.
    pub fn good(&self) -> bool {
        self.response == 0 && self.status == 0
    }
}

/// What a received PDU means to the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Write this.
    Send(Send),
    /// Read data for command `itt`, to copy at `offset` of its buffer
    /// (checked: within its expected length).
    Data {
        itt: u32,
        offset: u32,
        data: Vec<u8>,
    },
    /// Command `itt` ended.
    Done { itt: u32, status: Status },
    /// The target rejected command `itt` (Reject PDU): it did not run.
    Rejected { itt: u32, reason: u8 },
    /// The abort of command `itt` was answered (`response` 0: aborted;
    /// 1: the task did not exist any more; either way it has ended).
    /// The task is gone from the session; other responses mean it may
    /// still run.
    Aborted { itt: u32, response: u8 },
    /// Our LOGICAL UNIT RESET of `lun` was answered: with `response` 0
    /// the tasks `ended` (every one of the LUN's) are gone; otherwise
    /// nothing ended.
    LunReset {
        lun: u64,
        response: u8,
        ended: Vec<u32>,
    },
    /// Our ping `itt` came back.
    Pong { itt: u32 },
    /// Text response for request `itt`.
    Text {
        itt: u32,
        ttt: u32,
        final_flag: bool,
        continue_flag: bool,
        data: Vec<u8>,
    },
    /// The target ends the session or asks us to: 1 logout requested,
    /// 2 connection dropped, 3 session dropped, 4 renegotiate (RFC 7143
    /// §11.9.1). The driver logs out or reconnects.
    Async { event: u8, time2wait: u16 },
    /// Our logout was answered.
    LoggedOut { response: u8 },
}

/// The target broke the protocol; the connection must be dropped.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtocolError {
    #[error("{pdu} for task {itt:#x}, which was never sent or has ended")]
    UnknownTask { pdu: &'static str, itt: u32 },
    #[error("Data-In for task {itt:#x}, which is not a read")]
    DataInForWrite { itt: u32 },
    #[error("Data-In for task {itt:#x} at offset {offset} (+{len}), expected offset {expected} within {total} bytes")]
    DataInOutOfPlace {
        itt: u32,
        offset: u32,
        len: usize,
        expected: u32,
        total: u32,
    },
    #[error("R2T for task {itt:#x}, which is not a write")]
    R2tForRead { itt: u32 },
    #[error("R2T for task {itt:#x} asks for bytes {offset}..+{len} of a {total}-byte write{why}")]
    R2tOutOfRange {
        itt: u32,
        offset: u32,
        len: u32,
        total: u32,
        why: &'static str,
    },
    #[error("a target sent a {0} PDU, which only an initiator sends")]
    InitiatorPdu(&'static str),
    #[error("a {0} PDU in the full feature phase")]
    OutOfPhase(&'static str),
}

/// A task management request of ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tmf {
    /// ABORT TASK of this ITT.
    Abort(u32),
    /// LOGICAL UNIT RESET of this LUN.
    LunReset(u64),
}

/// A command the session waits for.
#[derive(Debug, Clone)]
struct Task {
    dir: Direction,
    len: u32,
    lun: u64,
    cmd_sn: u32,
    /// Read data received so far (in order).
    received: u32,
    /// The Data-In DataSN expected next.
    next_data_sn: u32,
    /// Write data sent without an R2T (immediate and unsolicited).
    unsolicited: u32,
}

/// One session's full feature phase. See the module documentation.
#[derive(Debug)]
pub struct Session {
    params: SessionParams,
    /// The CmdSN the next non-immediate command gets.
    cmd_sn: u32,
    exp_cmd_sn: u32,
    max_cmd_sn: u32,
    exp_stat_sn: u32,
    next_itt: u32,
    tasks: HashMap<u32, Task>,
    /// Our task management requests by their ITT.
    aborts: HashMap<u32, Tmf>,
    /// Our pings in flight.
    pings: Vec<u32>,
    /// Our text requests in flight.
    texts: Vec<u32>,
}

/// `a < b` in 32-bit serial number arithmetic.
fn sn_lt(a: u32, b: u32) -> bool {
    a != b && b.wrapping_sub(a) < 0x8000_0000
}

/// `a <= b` in serial number arithmetic.
fn sn_le(a: u32, b: u32) -> bool {
    a == b || sn_lt(a, b)
}

impl Session {
    /// The session after a successful login: the CmdSN of the first
    /// command (the target's ExpCmdSN), the ExpStatSN to send (its last
    /// StatSN + 1) and its MaxCmdSN.
    pub fn new(params: SessionParams, cmd_sn: u32, exp_stat_sn: u32, max_cmd_sn: u32) -> Session {
        Session {
            params: SessionParams {
                max_send_segment: params.max_send_segment.max(512),
                max_burst: params.max_burst.max(512),
                first_burst: params.first_burst.min(params.max_burst.max(512)),
                ..params
            },
            cmd_sn,
            exp_cmd_sn: cmd_sn,
            max_cmd_sn,
            exp_stat_sn,
            next_itt: 1,
            tasks: HashMap::new(),
            aborts: HashMap::new(),
            pings: Vec::new(),
            texts: Vec::new(),
        }
    }

    /// The parameters in force.
    pub fn params(&self) -> SessionParams {
        self.params
    }

    /// True when the target's command window has room for another
    /// command (CmdSN ≤ MaxCmdSN).
    pub fn can_submit(&self) -> bool {
        sn_le(self.cmd_sn, self.max_cmd_sn)
    }

    /// Commands waiting for their status.
    pub fn in_flight(&self) -> usize {
        self.tasks.len()
    }

    /// The ITTs of the commands waiting for their status.
    pub fn tasks(&self) -> Vec<u32> {
        self.tasks.keys().copied().collect()
    }

    fn itt(&mut self) -> u32 {
        loop {
            let itt = self.next_itt;
            self.next_itt = self.next_itt.wrapping_add(1);
            if itt != RESERVED_TAG
                && !self.tasks.contains_key(&itt)
                && !self.aborts.contains_key(&itt)
                && !self.pings.contains(&itt)
                && !self.texts.contains(&itt)
            {
                return itt;
            }
        }
    }

    /// Sends a command: its ITT and the PDUs to write (the command with
    /// any immediate data, then unsolicited Data-Out). `None` when the
    /// command window is closed ([`Session::can_submit`]): try again
    /// after the next response.
    pub fn submit(&mut self, cmd: Command) -> Option<(u32, Vec<Send>)> {
        if !self.can_submit() {
            return None;
        }
        let itt = self.itt();
        let cmd_sn = self.cmd_sn;
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        let p = self.params;
        let (immediate, unsolicited) = match cmd.dir {
            Direction::Write => {
                let burst = cmd.len.min(p.first_burst);
                let imm = if p.immediate_data {
                    burst.min(p.max_send_segment)
                } else {
                    0
                };
                (imm, if p.initial_r2t { imm } else { burst })
            }
            _ => (0, 0),
        };
        let header = ScsiCommand {
            immediate: false,
            final_flag: unsolicited == immediate,
            read: cmd.dir == Direction::Read,
            write: cmd.dir == Direction::Write,
            task_attr: 1,
            lun: cmd.lun,
            itt,
            expected_length: if cmd.dir == Direction::None {
                0
            } else {
                cmd.len
            },
            cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            cdb: cmd.cdb,
            data: Vec::new(),
        };
        let mut sends = vec![Send::Command {
            header,
            immediate: 0..immediate,
        }];
        self.data_out(
            &mut sends,
            cmd.lun,
            itt,
            RESERVED_TAG,
            immediate..unsolicited,
        );
        self.tasks.insert(
            itt,
            Task {
                dir: cmd.dir,
                len: cmd.len,
                lun: cmd.lun,
                cmd_sn,
                received: 0,
                next_data_sn: 0,
                unsolicited,
            },
        );
        Some((itt, sends))
    }

    /// Data-Out PDUs for `range` of a write, each at most the target's
    /// segment size, DataSN from 0, F on the last.
    fn data_out(&self, sends: &mut Vec<Send>, lun: u64, itt: u32, ttt: u32, range: Range<u32>) {
        let seg = self.params.max_send_segment;
        let mut at = range.start;
        let mut data_sn = 0;
        while at < range.end {
            let end = at.saturating_add(seg).min(range.end);
            sends.push(Send::DataOut {
                header: DataOut {
                    final_flag: end == range.end,
                    lun,
                    itt,
                    ttt,
                    exp_stat_sn: self.exp_stat_sn,
                    data_sn,
                    buffer_offset: at,
                    data: Vec::new(),
                },
                range: at..end,
            });
            data_sn += 1;
            at = end;
        }
    }

    /// ABORT TASK for command `itt` (immediate): the PDU to write, or
    /// `None` if the command has ended already. The command stays in the
    /// session until [`Event::Aborted`] or its own status.
    pub fn abort(&mut self, itt: u32) -> Option<Send> {
        let task = self.tasks.get(&itt)?.clone();
        let tmf = self.itt();
        self.aborts.insert(tmf, Tmf::Abort(itt));
        Some(Send::Pdu(Pdu::TaskMgmtRequest(TaskMgmtRequest {
            immediate: true,
            function: TMF_ABORT_TASK,
            lun: task.lun,
            itt: tmf,
            referenced_task_tag: itt,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            ref_cmd_sn: task.cmd_sn,
            exp_data_sn: task.next_data_sn,
        })))
    }

    /// LOGICAL UNIT RESET of `lun` (immediate): every task of the LUN
    /// ends; [`Event::LunReset`] says which, once the target confirms.
    pub fn lun_reset(&mut self, lun: u64) -> Send {
        let tmf = self.itt();
        self.aborts.insert(tmf, Tmf::LunReset(lun));
        Send::Pdu(Pdu::TaskMgmtRequest(TaskMgmtRequest {
            immediate: true,
            function: super::pdu::TMF_LOGICAL_UNIT_RESET,
            lun,
            itt: tmf,
            referenced_task_tag: RESERVED_TAG,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            ref_cmd_sn: 0,
            exp_data_sn: 0,
        }))
    }

    /// Forgets command `itt` without telling the target (the driver gave
    /// up on it and drops the connection).
    pub fn forget(&mut self, itt: u32) {
        self.tasks.remove(&itt);
    }

    /// A NOP-Out ping (immediate); its ITT comes back in [`Event::Pong`].
    pub fn ping(&mut self) -> (u32, Send) {
        let itt = self.itt();
        self.pings.push(itt);
        (
            itt,
            Send::Pdu(Pdu::NopOut(NopOut {
                immediate: true,
                lun: 0,
                itt,
                ttt: RESERVED_TAG,
                cmd_sn: self.cmd_sn,
                exp_stat_sn: self.exp_stat_sn,
                data: Vec::new(),
            })),
        )
    }

    /// A Text Request carrying `data` (`key=value\0` pairs), or the
    /// continuation of an exchange (`ttt` from the last response, empty
    /// data). `None` when the command window is closed.
    pub fn text(&mut self, data: Vec<u8>, ttt: u32, itt: Option<u32>) -> Option<(u32, Send)> {
        if !self.can_submit() {
            return None;
        }
        let itt = match itt {
            Some(i) => i,
            None => {
                let i = self.itt();
                self.texts.push(i);
                i
            }
        };
        let cmd_sn = self.cmd_sn;
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        Some((
            itt,
            Send::Pdu(Pdu::TextRequest(TextRequest {
                immediate: false,
                final_flag: true,
                continue_flag: false,
                lun: 0,
                itt,
                ttt,
                cmd_sn,
                exp_stat_sn: self.exp_stat_sn,
                data,
            })),
        ))
    }

    /// A Logout Request closing the session (immediate).
    pub fn logout(&mut self) -> Send {
        let itt = self.itt();
        Send::Pdu(Pdu::LogoutRequest(LogoutRequest {
            immediate: true,
            reason: 0,
            itt,
            cid: 0,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
        }))
    }

    /// Follows the target's window (ignored when MaxCmdSN < ExpCmdSN - 1,
    /// as RFC 7143 §4.2.2.1 says; never moves back).
    fn window(&mut self, exp_cmd_sn: u32, max_cmd_sn: u32) {
        if sn_lt(max_cmd_sn, exp_cmd_sn.wrapping_sub(1)) {
            return;
        }
        if sn_lt(self.exp_cmd_sn, exp_cmd_sn) {
            self.exp_cmd_sn = exp_cmd_sn;
        }
        if sn_lt(self.max_cmd_sn, max_cmd_sn) {
            self.max_cmd_sn = max_cmd_sn;
        }
    }

    /// A response carrying status advanced StatSN.
    fn status_sn(&mut self, stat_sn: u32) {
        let next = stat_sn.wrapping_add(1);
        if sn_lt(self.exp_stat_sn, next) {
            self.exp_stat_sn = next;
        }
    }

    /// A Data-In whose data segment is `len` bytes: `d.data` holds them,
    /// or is empty when the driver puts them in place itself (then the
    /// events carry no [`Event::Data`]; the checks are the same, and the
    /// driver may read the data to `d.buffer_offset` of the command's
    /// buffer once this returns `Ok`).
    pub fn data_in(
        &mut self,
        d: super::pdu::DataIn,
        len: usize,
    ) -> Result<Vec<Event>, ProtocolError> {
        let mut events = Vec::new();
        self.window(d.exp_cmd_sn, d.max_cmd_sn);
        let itt = d.itt;
        let task = self.tasks.get_mut(&itt).ok_or(ProtocolError::UnknownTask {
            pdu: "Data-In",
            itt,
        })?;
        if task.dir != Direction::Read && len != 0 {
            return Err(ProtocolError::DataInForWrite { itt });
        }
        let fits = u32::try_from(len)
            .ok()
            .and_then(|l| d.buffer_offset.checked_add(l))
            .is_some_and(|end| end <= task.len);
        if d.buffer_offset != task.received || !fits {
            return Err(ProtocolError::DataInOutOfPlace {
                itt,
                offset: d.buffer_offset,
                len,
                expected: task.received,
                total: task.len,
            });
        }
        task.received += len as u32;
        task.next_data_sn = d.data_sn.wrapping_add(1);
        let received = task.received;
        if !d.data.is_empty() {
            events.push(Event::Data {
                itt,
                offset: d.buffer_offset,
                data: d.data,
            });
        }
        if let Some(status) = d.status {
            self.status_sn(d.stat_sn);
            self.tasks.remove(&itt);
            events.push(Event::Done {
                itt,
                status: Status {
                    response: 0,
                    status,
                    sense: Vec::new(),
                    residual_under: if d.underflow { d.residual } else { 0 },
                    residual_over: if d.overflow { d.residual } else { 0 },
                    received,
                },
            });
        }
        Ok(events)
    }

    /// What a PDU from the target means. An error means the connection
    /// is broken (see the module documentation).
    pub fn receive(&mut self, pdu: Pdu) -> Result<Vec<Event>, ProtocolError> {
        let mut events = Vec::new();
        match pdu {
            Pdu::DataIn(d) => {
                let len = d.data.len();
                return self.data_in(d, len);
            }
            Pdu::ScsiResponse(r) => {
                self.window(r.exp_cmd_sn, r.max_cmd_sn);
                self.status_sn(r.stat_sn);
                let task = self
                    .tasks
                    .remove(&r.itt)
                    .ok_or(ProtocolError::UnknownTask {
                        pdu: "SCSI Response",
                        itt: r.itt,
                    })?;
                let sense = r.sense().map(<[u8]>::to_vec).unwrap_or_default();
                events.push(Event::Done {
                    itt: r.itt,
                    status: Status {
                        response: r.response,
                        status: r.status,
                        sense,
                        residual_under: if r.underflow { r.residual } else { 0 },
                        residual_over: if r.overflow { r.residual } else { 0 },
                        received: task.received,
                    },
                });
            }
            Pdu::R2t(r) => {
                self.window(r.exp_cmd_sn, r.max_cmd_sn);
                let itt = r.itt;
                let task = self
                    .tasks
                    .get(&itt)
                    .ok_or(ProtocolError::UnknownTask { pdu: "R2T", itt })?;
                if task.dir != Direction::Write {
                    return Err(ProtocolError::R2tForRead { itt });
                }
                let out_of_range = |why| ProtocolError::R2tOutOfRange {
                    itt,
                    offset: r.buffer_offset,
                    len: r.desired_length,
                    total: task.len,
                    why,
                };
                let end = r
                    .buffer_offset
                    .checked_add(r.desired_length)
                    .filter(|e| *e <= task.len)
                    .ok_or_else(|| out_of_range(""))?;
                if r.desired_length == 0 {
                    return Err(out_of_range(" (nothing)"));
                }
                if r.desired_length > self.params.max_burst {
                    return Err(out_of_range(" (more than MaxBurstLength)"));
                }
                if r.buffer_offset < task.unsolicited {
                    return Err(out_of_range(" (data already sent unsolicited)"));
                }
                let lun = task.lun;
                let mut sends = Vec::new();
                self.data_out(&mut sends, lun, itt, r.ttt, r.buffer_offset..end);
                events.extend(sends.into_iter().map(Event::Send));
            }
            Pdu::NopIn(n) => {
                self.window(n.exp_cmd_sn, n.max_cmd_sn);
                if n.itt != RESERVED_TAG {
                    self.status_sn(n.stat_sn);
                    if let Some(i) = self.pings.iter().position(|p| *p == n.itt) {
                        self.pings.swap_remove(i);
                        events.push(Event::Pong { itt: n.itt });
                    } else {
                        return Err(ProtocolError::UnknownTask {
                            pdu: "NOP-In",
                            itt: n.itt,
                        });
                    }
                } else if n.ttt != RESERVED_TAG {
                    // The target pings us: answer with its TTT.
                    events.push(Event::Send(Send::Pdu(Pdu::NopOut(NopOut {
                        immediate: true,
                        lun: n.lun,
                        itt: RESERVED_TAG,
                        ttt: n.ttt,
                        cmd_sn: self.cmd_sn,
                        exp_stat_sn: self.exp_stat_sn,
                        data: Vec::new(),
                    }))));
                }
            }
            Pdu::TaskMgmtResponse(t) => {
                self.window(t.exp_cmd_sn, t.max_cmd_sn);
                self.status_sn(t.stat_sn);
                let tmf = self
                    .aborts
                    .remove(&t.itt)
                    .ok_or(ProtocolError::UnknownTask {
                        pdu: "Task Management Response",
                        itt: t.itt,
                    })?;
                match tmf {
                    Tmf::Abort(aborted) => {
                        // 0: aborted; 1: the task does not exist (it ended).
                        if t.response <= 1 {
                            self.tasks.remove(&aborted);
                        }
                        events.push(Event::Aborted {
                            itt: aborted,
                            response: t.response,
                        });
                    }
                    Tmf::LunReset(lun) => {
                        let ended = if t.response == 0 {
                            let mut ended: Vec<u32> = self
                                .tasks
                                .iter()
                                .filter(|(_, task)| task.lun == lun)
                                .map(|(itt, _)| *itt)
                                .collect();
                            ended.sort_unstable();
                            for itt in &ended {
                                self.tasks.remove(itt);
                            }
                            ended
                        } else {
                            Vec::new()
                        };
                        events.push(Event::LunReset {
                            lun,
                            response: t.response,
                            ended,
                        });
                    }
                }
            }
            Pdu::TextResponse(t) => {
                self.window(t.exp_cmd_sn, t.max_cmd_sn);
                self.status_sn(t.stat_sn);
                if !self.texts.contains(&t.itt) {
                    return Err(ProtocolError::UnknownTask {
                        pdu: "Text Response",
                        itt: t.itt,
                    });
                }
                if t.final_flag {
                    self.texts.retain(|i| *i != t.itt);
                }
                events.push(Event::Text {
                    itt: t.itt,
                    ttt: t.ttt,
                    final_flag: t.final_flag,
                    continue_flag: t.continue_flag,
                    data: t.data,
                });
            }
            Pdu::Reject(r) => {
                self.window(r.exp_cmd_sn, r.max_cmd_sn);
                self.status_sn(r.stat_sn);
                // The rejected PDU's header: its ITT at bytes 16..20.
                let itt = r
                    .data
                    .get(16..20)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                if let Some(itt) = itt.filter(|i| self.tasks.contains_key(i)) {
                    self.tasks.remove(&itt);
                    events.push(Event::Rejected {
                        itt,
                        reason: r.reason,
                    });
                } else if let Some(itt) = itt {
                    self.pings.retain(|p| *p != itt);
                    self.texts.retain(|p| *p != itt);
                    match self.aborts.remove(&itt) {
                        Some(Tmf::Abort(aborted)) => events.push(Event::Aborted {
                            itt: aborted,
                            response: 255,
                        }),
                        Some(Tmf::LunReset(lun)) => events.push(Event::LunReset {
                            lun,
                            response: 255,
                            ended: Vec::new(),
                        }),
                        None => {}
                    }
                }
            }
            Pdu::AsyncMessage(a) => {
                self.window(a.exp_cmd_sn, a.max_cmd_sn);
                self.status_sn(a.stat_sn);
                // SCSI events (0) and vendor codes need nothing from us.
                if matches!(a.event, 1..=4) {
                    events.push(Event::Async {
                        event: a.event,
                        time2wait: a.parameter2,
                    });
                }
            }
            Pdu::LogoutResponse(l) => {
                self.window(l.exp_cmd_sn, l.max_cmd_sn);
                self.status_sn(l.stat_sn);
                events.push(Event::LoggedOut {
                    response: l.response,
                });
            }
            Pdu::LoginResponse(_) => return Err(ProtocolError::OutOfPhase("Login Response")),
            Pdu::NopOut(_) => return Err(ProtocolError::InitiatorPdu("NOP-Out")),
            Pdu::ScsiCommand(_) => return Err(ProtocolError::InitiatorPdu("SCSI Command")),
            Pdu::TaskMgmtRequest(_) => {
                return Err(ProtocolError::InitiatorPdu("Task Management Request"))
            }
            Pdu::LoginRequest(_) => return Err(ProtocolError::InitiatorPdu("Login Request")),
            Pdu::TextRequest(_) => return Err(ProtocolError::InitiatorPdu("Text Request")),
            Pdu::DataOut(_) => return Err(ProtocolError::InitiatorPdu("SCSI Data-Out")),
            Pdu::LogoutRequest(_) => return Err(ProtocolError::InitiatorPdu("Logout Request")),
            Pdu::Snack(_) => return Err(ProtocolError::InitiatorPdu("SNACK")),
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::pdu::{
        AsyncMessage, DataIn, NopIn, R2t, Reject, ScsiResponse, TaskMgmtResponse,
    };

    const LUN1: u64 = 1 << 48;

    fn session(p: SessionParams) -> Session {
        Session::new(p, 5, 101, 20)
    }

    fn read(len: u32) -> Command {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x88;
        Command {
            lun: LUN1,
            cdb,
            dir: Direction::Read,
            len,
        }
    }

    fn write(len: u32) -> Command {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x8a;
        Command {
            lun: LUN1,
            cdb,
            dir: Direction::Write,
            len,
        }
    }

    fn data_in(itt: u32, offset: u32, len: usize, status: Option<u8>) -> Pdu {
        Pdu::DataIn(DataIn {
            final_flag: status.is_some(),
            status,
            itt,
            ttt: RESERVED_TAG,
            stat_sn: 100,
            exp_cmd_sn: 6,
            max_cmd_sn: 21,
            buffer_offset: offset,
            data: vec![7u8; len],
            ..DataIn::default()
        })
    }

    fn response(itt: u32, stat_sn: u32, status: u8, sense: &[u8]) -> Pdu {
        let mut data = Vec::new();
        if !sense.is_empty() {
            data.extend_from_slice(&(sense.len() as u16).to_be_bytes());
            data.extend_from_slice(sense);
        }
        Pdu::ScsiResponse(ScsiResponse {
            status,
            itt,
            stat_sn,
            exp_cmd_sn: 6,
            max_cmd_sn: 21,
            data,
            ..ScsiResponse::default()
        })
    }

    fn ranges(sends: &[Send]) -> Vec<(bool, u32, Range<u32>, bool)> {
        sends
            .iter()
            .map(|s| match s {
                Send::Command { header, immediate } => {
                    (true, header.cmd_sn, immediate.clone(), header.final_flag)
                }
                Send::DataOut { header, range } => {
                    (false, header.data_sn, range.clone(), header.final_flag)
                }
                Send::Pdu(p) => panic!("unexpected {p:?}"),
            })
            .collect()
    }

    #[test]
    fn a_read_gets_its_data_in_order_then_its_status() {
        let mut s = session(SessionParams::default());
        let (itt, sends) = s.submit(read(8192)).unwrap();
        let Send::Command { header, immediate } = &sends[0] else {
            panic!()
        };
        assert!(header.read && !header.write && header.final_flag);
        assert_eq!(
            (header.cmd_sn, header.exp_stat_sn, header.expected_length),
            (5, 101, 8192)
        );
        assert_eq!(immediate, &(0..0));
        let ev = s.receive(data_in(itt, 0, 4096, None)).unwrap();
        assert_eq!(ev.len(), 1);
        assert!(matches!(&ev[0], Event::Data { offset: 0, data, .. } if data.len() == 4096));
        let ev = s.receive(data_in(itt, 4096, 4096, Some(0))).unwrap();
        assert!(
            matches!(&ev[1], Event::Done { status, .. } if status.good() && status.received == 8192)
        );
        assert_eq!(s.in_flight(), 0);
        assert_eq!(s.exp_stat_sn, 101);
    }

    #[test]
    fn data_in_out_of_place_or_for_unknown_tasks_breaks_the_connection() {
        let mut s = session(SessionParams::default());
        let (itt, _) = s.submit(read(4096)).unwrap();
        assert!(matches!(
            s.receive(data_in(itt, 512, 512, None)),
            Err(ProtocolError::DataInOutOfPlace { .. })
        ));
        assert!(matches!(
            s.receive(data_in(itt, 0, 8192, None)),
            Err(ProtocolError::DataInOutOfPlace { .. })
        ));
        assert!(matches!(
            s.receive(data_in(itt + 9, 0, 512, None)),
            Err(ProtocolError::UnknownTask { .. })
        ));
        let (w, _) = s.submit(write(4096)).unwrap();
        assert_eq!(
            s.receive(data_in(w, 0, 512, None)),
            Err(ProtocolError::DataInForWrite { itt: w })
        );
        assert!(matches!(
            s.receive(response(77, 100, 0, &[])),
            Err(ProtocolError::UnknownTask { .. })
        ));
    }

    #[test]
    fn writes_send_immediate_data_then_answer_r2ts() {
        // tgtd's usual terms: ImmediateData=Yes, InitialR2T=Yes.
        let p = SessionParams {
            max_send_segment: 8192,
            max_burst: 65536,
            first_burst: 16384,
            immediate_data: true,
            initial_r2t: true,
        };
        let mut s = session(p);
        let (itt, sends) = s.submit(write(40960)).unwrap();
        assert_eq!(ranges(&sends), vec![(true, 5, 0..8192, true)]);
        let r2t = Pdu::R2t(R2t {
            lun: LUN1,
            itt,
            ttt: 0x55,
            exp_cmd_sn: 6,
            max_cmd_sn: 21,
            r2t_sn: 0,
            buffer_offset: 8192,
            desired_length: 32768,
            ..R2t::default()
        });
        let ev = s.receive(r2t).unwrap();
        let sends: Vec<Send> = ev
            .into_iter()
            .map(|e| match e {
                Event::Send(s) => s,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            ranges(&sends),
            vec![
                (false, 0, 8192..16384, false),
                (false, 1, 16384..24576, false),
                (false, 2, 24576..32768, false),
                (false, 3, 32768..40960, true),
            ]
        );
        assert!(sends
            .iter()
            .all(|s| matches!(s, Send::DataOut { header, .. } if header.ttt == 0x55)));
        // An R2T for data sent as immediate data, past the end, or
        // beyond MaxBurstLength is refused.
        for (off, len) in [(0, 4096), (36864, 8192), (8192, 0), (0, 70000)] {
            let bad = Pdu::R2t(R2t {
                itt,
                buffer_offset: off,
                desired_length: len,
                ..R2t::default()
            });
            assert!(
                matches!(s.receive(bad), Err(ProtocolError::R2tOutOfRange { .. })),
                "{off}+{len}"
            );
        }
        let ev = s.receive(response(itt, 100, 0, &[])).unwrap();
        assert!(matches!(&ev[0], Event::Done { status, .. } if status.good()));
    }

    #[test]
    fn unsolicited_data_fills_the_first_burst_when_initial_r2t_is_off() {
        let p = SessionParams {
            max_send_segment: 4096,
            max_burst: 65536,
            first_burst: 12288,
            immediate_data: true,
            initial_r2t: false,
        };
        let mut s = session(p);
        let (_, sends) = s.submit(write(20480)).unwrap();
        assert_eq!(
            ranges(&sends),
            vec![
                (true, 5, 0..4096, false),
                (false, 0, 4096..8192, false),
                (false, 1, 8192..12288, true),
            ]
        );
        // Without immediate data, all of the first burst goes as Data-Out.
        let mut s = session(SessionParams {
            immediate_data: false,
            ..p
        });
        let (_, sends) = s.submit(write(4096)).unwrap();
        assert_eq!(
            ranges(&sends),
            vec![(true, 5, 0..0, false), (false, 0, 0..4096, true)]
        );
        // A small write under InitialR2T=Yes, ImmediateData=Yes is one PDU.
        let mut s = session(SessionParams::default());
        let (_, sends) = s.submit(write(4096)).unwrap();
        assert_eq!(ranges(&sends), vec![(true, 5, 0..4096, true)]);
    }

    #[test]
    fn the_command_window_closes_at_max_cmd_sn_and_reopens() {
        let mut s = Session::new(SessionParams::default(), 1, 1, 2);
        assert!(s.submit(read(512)).is_some());
        let (itt, _) = s.submit(read(512)).unwrap();
        assert!(!s.can_submit());
        assert!(s.submit(read(512)).is_none());
        // The response opens the window to 10.
        let mut r = response(itt, 0, 0, &[]);
        if let Pdu::ScsiResponse(ref mut x) = r {
            x.exp_cmd_sn = 3;
            x.max_cmd_sn = 10;
        }
        s.receive(r).unwrap();
        assert!(s.can_submit());
        // A window that would move back, or is invalid, is ignored.
        s.window(2, 5);
        assert_eq!(s.max_cmd_sn, 10);
        s.window(20, 5);
        assert_eq!(s.max_cmd_sn, 10);
        // Serial arithmetic across the wrap.
        assert!(sn_lt(u32::MAX, 0) && !sn_lt(0, u32::MAX) && sn_le(5, 5));
    }

    #[test]
    fn check_condition_carries_its_sense() {
        let mut s = session(SessionParams::default());
        let (itt, _) = s.submit(read(512)).unwrap();
        let sense = [0x70, 0, 0x03, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x11, 0];
        let ev = s.receive(response(itt, 100, 2, &sense)).unwrap();
        let Event::Done { status, .. } = &ev[0] else {
            panic!()
        };
        assert!(!status.good());
        assert_eq!((status.status, status.sense.as_slice()), (2, &sense[..]));
    }

    #[test]
    fn aborts_pings_and_target_pings() {
        let mut s = session(SessionParams::default());
        let (itt, _) = s.submit(write(4096)).unwrap();
        let Some(Send::Pdu(Pdu::TaskMgmtRequest(t))) = s.abort(itt) else {
            panic!()
        };
        assert!(t.immediate);
        assert_eq!(
            (t.function, t.referenced_task_tag, t.ref_cmd_sn),
            (TMF_ABORT_TASK, itt, 5)
        );
        let ev = s
            .receive(Pdu::TaskMgmtResponse(TaskMgmtResponse {
                response: 0,
                itt: t.itt,
                stat_sn: 100,
                exp_cmd_sn: 6,
                max_cmd_sn: 21,
            }))
            .unwrap();
        assert_eq!(ev, vec![Event::Aborted { itt, response: 0 }]);
        assert_eq!(s.in_flight(), 0);
        assert!(s.abort(itt).is_none());

        let (p, _) = s.ping();
        let ev = s
            .receive(Pdu::NopIn(NopIn {
                itt: p,
                ttt: RESERVED_TAG,
                stat_sn: 101,
                ..NopIn::default()
            }))
            .unwrap();
        assert_eq!(ev, vec![Event::Pong { itt: p }]);
        // The target pings: we answer with its TTT.
        let ev = s
            .receive(Pdu::NopIn(NopIn {
                itt: RESERVED_TAG,
                ttt: 0x42,
                ..NopIn::default()
            }))
            .unwrap();
        assert!(
            matches!(&ev[0], Event::Send(Send::Pdu(Pdu::NopOut(n))) if n.ttt == 0x42 && n.itt == RESERVED_TAG)
        );
        // A pong nobody asked for is a protocol error.
        assert!(s
            .receive(Pdu::NopIn(NopIn {
                itt: 999,
                ..NopIn::default()
            }))
            .is_err());
    }

    #[test]
    fn a_lun_reset_ends_every_task_of_the_lun() {
        let mut s = session(SessionParams::default());
        let (a, _) = s.submit(read(512)).unwrap();
        let (b, _) = s.submit(write(512)).unwrap();
        let mut other = read(512);
        other.lun = 2 << 48;
        let (c, _) = s.submit(other).unwrap();
        let Send::Pdu(Pdu::TaskMgmtRequest(t)) = s.lun_reset(LUN1) else {
            panic!()
        };
        assert_eq!(
            (t.function, t.lun, t.referenced_task_tag),
            (5, LUN1, RESERVED_TAG)
        );
        let ev = s
            .receive(Pdu::TaskMgmtResponse(TaskMgmtResponse {
                response: 0,
                itt: t.itt,
                ..TaskMgmtResponse::default()
            }))
            .unwrap();
        let mut ended = vec![a, b];
        ended.sort_unstable();
        assert_eq!(
            ev,
            vec![Event::LunReset {
                lun: LUN1,
                response: 0,
                ended
            }]
        );
        assert_eq!(s.tasks(), vec![c], "another LUN's task stays");
        // A refused reset ends nothing.
        let Send::Pdu(Pdu::TaskMgmtRequest(t)) = s.lun_reset(2 << 48) else {
            panic!()
        };
        let ev = s
            .receive(Pdu::TaskMgmtResponse(TaskMgmtResponse {
                response: 5,
                itt: t.itt,
                ..TaskMgmtResponse::default()
            }))
            .unwrap();
        assert!(matches!(&ev[0], Event::LunReset { response: 5, ended, .. } if ended.is_empty()));
        assert_eq!(s.in_flight(), 1);
    }

    #[test]
    fn rejects_async_events_and_initiator_pdus() {
        let mut s = session(SessionParams::default());
        let (itt, sends) = s.submit(read(512)).unwrap();
        let (hdr, _) = sends[0].parts();
        let ev = s
            .receive(Pdu::Reject(Reject {
                reason: 5,
                data: hdr.encode_header(0).to_vec(),
                ..Reject::default()
            }))
            .unwrap();
        assert_eq!(ev, vec![Event::Rejected { itt, reason: 5 }]);
        let ev = s
            .receive(Pdu::AsyncMessage(AsyncMessage {
                event: 1,
                parameter2: 2,
                ..AsyncMessage::default()
            }))
            .unwrap();
        assert_eq!(
            ev,
            vec![Event::Async {
                event: 1,
                time2wait: 2
            }]
        );
        assert!(matches!(
            s.receive(Pdu::ScsiCommand(ScsiCommand::default())),
            Err(ProtocolError::InitiatorPdu(_))
        ));
    }

    #[test]
    fn itts_skip_the_reserved_tag_and_live_tasks() {
        let mut s = session(SessionParams::default());
        s.next_itt = u32::MAX;
        let (a, _) = s.submit(read(512)).unwrap();
        assert_eq!(a, 0);
        s.next_itt = 0;
        let (b, _) = s.submit(read(512)).unwrap();
        assert_eq!(b, 1, "0 is taken");
    }
}
