//! `iscsi` paths: the LUN behind an iSCSI portal, reached by umpath's own
//! initiator (issue 14) — no open-iscsi, no kernel modules.
//!
//! One session (one TCP connection, [`conn::Conn`]) per path, made on the
//! first IO or check and again after it breaks: a restarted target comes
//! back with the next check. Only one caller connects at a time; the
//! others fail at once with a path error rather than wait for a login.
//!
//! Commands: READ(16)/WRITE(16) (FUA), SYNCHRONIZE CACHE(16), TEST UNIT
//! READY, INQUIRY (standard and VPD), READ CAPACITY(16), REPORT LUNS;
//! UNMAP and WRITE SAME(16) where the LUN's block limits page (0xB0) and
//! provisioning page (0xB2) advertise them.
//!
//! Error classes follow what dm-multipath does with the kernel's sense
//! handling: a lost or broken connection, a command past io_timeout, NOT
//! READY, ABORTED COMMAND, HARDWARE ERROR and BUSY fail the path; MEDIUM
//! ERROR, ILLEGAL REQUEST, DATA PROTECT and RESERVATION CONFLICT belong
//! to the LUN and go back to the client; UNIT ATTENTION is retried on the
//! same path (the command did not run).

pub mod conn;
pub mod local;

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use self::conn::{CmdError, Conn, ConnectError, Done, LoginTarget};
use super::{ErrorClass, IoOp, Probe, Revalidated, TransportCaps, TransportError};
use crate::iscsi::pdu::lun_from_number;
use crate::iscsi::session::{Command, Direction};
use crate::scsi::inquiry::StdInquiry;
use crate::scsi::sense::Sense;
use crate::scsi::tur::{TurOutcome, TurResult};

/// How long a login may take per step.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);
/// The most one READ/WRITE command carries; larger requests are split.
const MAX_TRANSFER: u32 = 4 << 20;
/// UNIT ATTENTION (and BUSY) retries on the same path.
const RETRIES: u32 = 3;

/// How a command started with [`IscsiTransport::start`] ended, judged
/// as the blocking calls judge it.
#[derive(Debug)]
pub enum Outcome {
    /// Done; for a read, its data.
    Done(Vec<u8>),
    /// The command did not run (UNIT ATTENTION, BUSY): do it again.
    Retry,
    Failed(TransportError),
}

/// A LUN number and what it is (or why that is not known).
pub type LunProbe = (u16, Result<LunInfo, TransportError>);

/// What a LUN is: its INQUIRY identity, WWID (scsi_id's rules) and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunInfo {
    pub vendor: String,
    pub product: String,
    pub revision: String,
    /// VPD 0x80, "" when absent.
    pub serial: String,
    /// `scsi_id --whitelisted --replace-whitespace`: the SCSIid.
    pub wwid: String,
    pub block_size: u32,
    pub blocks: u64,
    /// Peripheral device type (0: disk).
    pub device_type: u8,
    /// UNMAP is supported (VPD 0xB2 LBPU and a non-zero UNMAP limit).
    pub unmap: bool,
    /// WRITE SAME(16) with UNMAP is supported (VPD 0xB2 LBPWS).
    pub write_same: bool,
    /// The most blocks one UNMAP may name (VPD 0xB0), 0: no limit known.
    pub max_unmap_blocks: u32,
    /// Write cache enabled is unknown without MODE SENSE: assumed yes.
    pub read_only: bool,
}

impl LunInfo {
    /// The LUN's size in bytes.
    pub fn size(&self) -> u64 {
        self.blocks.saturating_mul(u64::from(self.block_size))
    }
}

/// An `iscsi` path's transport. See the module documentation.
pub struct IscsiTransport {
    target: LoginTarget,
    lun: u16,
    rt: tokio::runtime::Handle,
    io_timeout: Duration,
    conn: Mutex<Option<Arc<Conn>>>,
    connecting: AtomicBool,
    info: Mutex<Option<LunInfo>>,
    /// What the last failed connection attempt said.
    last_error: Mutex<Option<String>>,
}

impl std::fmt::Debug for IscsiTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IscsiTransport")
            .field("target", &self.describe())
            .finish_non_exhaustive()
    }
}

fn cdb16(bytes: &[u8]) -> [u8; 16] {
    let mut c = [0u8; 16];
    let n = bytes.len().min(16);
    c[..n].copy_from_slice(&bytes[..n]);
    c
}

/// The CDB for READ(16) or WRITE(16).
fn rw16(write: bool, fua: bool, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = if write { 0x8a } else { 0x88 };
    if fua {
        c[1] = 0x08;
    }
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn inquiry_cdb(page: Option<u8>, alloc: u16) -> [u8; 16] {
    let a = alloc.to_be_bytes();
    cdb16(&[
        0x12,
        u8::from(page.is_some()),
        page.unwrap_or(0),
        a[0],
        a[1],
        0,
    ])
}

/// How a command's outcome is to be taken.
enum Verdict {
    Ok(Done),
    Retry(String),
    Fail(ErrorClass, io::Error),
}

fn judge(op: IoOp, r: Result<Done, CmdError>) -> Verdict {
    let d = match r {
        Ok(d) => d,
        Err(CmdError::TimedOut { .. }) => {
            return Verdict::Fail(
                ErrorClass::Path,
                io::Error::new(io::ErrorKind::TimedOut, r_text(&r)),
            )
        }
        Err(e) => {
            return Verdict::Fail(
                ErrorClass::Path,
                io::Error::new(io::ErrorKind::ConnectionAborted, e.to_string()),
            )
        }
    };
    let s = &d.status;
    if s.response != 0 {
        return Verdict::Fail(
            ErrorClass::Path,
            io::Error::other(format!("iSCSI service response {:#x}", s.response)),
        );
    }
    match s.status {
        0 => Verdict::Ok(d),
        // CHECK CONDITION.
        0x02 => sense_verdict(op, d),
        // BUSY, TASK SET FULL: the target is overloaded.
        0x08 | 0x28 => Verdict::Retry(format!("SCSI status {:#04x} (busy)", s.status)),
        // RESERVATION CONFLICT: another initiator holds the LUN.
        0x18 => Verdict::Fail(ErrorClass::Lun, io::Error::from_raw_os_error(libc::EBADE)),
        other => Verdict::Fail(
            ErrorClass::Path,
            io::Error::other(format!("SCSI status {other:#04x}")),
        ),
    }
}

fn r_text(r: &Result<Done, CmdError>) -> String {
    match r {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

fn sense_verdict(op: IoOp, d: Done) -> Verdict {
    let Ok(sense) = Sense::parse(&d.status.sense) else {
        return Verdict::Fail(
            ErrorClass::Path,
            io::Error::other("CHECK CONDITION without usable sense data"),
        );
    };
    let text = format!(
        "{} (asc {:#04x} ascq {:#04x}{})",
        sense.key.name(),
        sense.asc,
        sense.ascq,
        sense
            .asc_text()
            .map(|t| format!(": {t}"))
            .unwrap_or_default()
    );
    match sense.key.0 {
        // NO SENSE, RECOVERED ERROR: done (read data included).
        0x0 | 0x1 => Verdict::Ok(d),
        // UNIT ATTENTION: the command did not run; again.
        0x6 => Verdict::Retry(text),
        // MEDIUM ERROR, BLANK CHECK, MISCOMPARE: the LUN's data.
        0x3 | 0x8 | 0xe => Verdict::Fail(ErrorClass::Lun, io::Error::other(text)),
        // ILLEGAL REQUEST: not supported for trim and zeroing, else the
        // request is wrong.
        0x5 if matches!(op, IoOp::Trim | IoOp::WriteZeroes) => {
            Verdict::Fail(ErrorClass::Unsupported, io::Error::other(text))
        }
        0x5 => Verdict::Fail(
            ErrorClass::Lun,
            io::Error::new(io::ErrorKind::InvalidInput, text),
        ),
        // DATA PROTECT: write protected.
        0x7 => Verdict::Fail(ErrorClass::Lun, io::Error::from_raw_os_error(libc::EROFS)),
        // VOLUME OVERFLOW.
        0xd => Verdict::Fail(ErrorClass::Lun, io::Error::from_raw_os_error(libc::ENOSPC)),
        // NOT READY, HARDWARE ERROR, ABORTED COMMAND, others: this path.
        _ => Verdict::Fail(ErrorClass::Path, io::Error::other(text)),
    }
}

impl IscsiTransport {
    /// A transport for LUN `lun` of `target`; connects on first use, on
    /// `rt`'s threads. `io_timeout` bounds each command.
    pub fn new(
        target: LoginTarget,
        lun: u16,
        rt: tokio::runtime::Handle,
        io_timeout: Duration,
    ) -> IscsiTransport {
        IscsiTransport {
            target,
            lun,
            rt,
            io_timeout,
            conn: Mutex::new(None),
            connecting: AtomicBool::new(false),
            info: Mutex::new(None),
            last_error: Mutex::new(None),
        }
    }

    /// `iscsi://PORTAL/IQN/LUN` (never a secret).
    pub fn target(&self) -> String {
        format!(
            "iscsi://{}/{}/{}",
            self.target.portal,
            self.target.target.as_deref().unwrap_or(""),
            self.lun
        )
    }

    pub fn describe(&self) -> String {
        format!("iscsi {}", self.target())
    }

    /// What the live session negotiated, for logs: digests, burst and
    /// segment sizes, CHAP.
    pub fn session_text(&self) -> String {
        let Some(c) = self.conn.lock().clone() else {
            return "not connected".to_string();
        };
        let n = c.negotiated();
        let p = &n.params;
        let digest = |on: bool| if on { "CRC32C" } else { "None" };
        format!(
            "HeaderDigest={} DataDigest={} MaxRecvDataSegmentLength={}/{} MaxBurstLength={} \
             FirstBurstLength={} ImmediateData={} InitialR2T={} auth={:?}",
            digest(p.header_digest),
            digest(p.data_digest),
            p.max_send_data_segment_length,
            p.max_recv_data_segment_length,
            p.max_burst_length,
            p.first_burst_length,
            p.immediate_data,
            p.initial_r2t,
            n.auth
        )
    }

    /// What the LUN said at the last connection.
    pub fn info(&self) -> Option<LunInfo> {
        self.info.lock().clone()
    }

    fn err(
        &self,
        op: IoOp,
        offset: u64,
        len: u64,
        class: ErrorClass,
        e: io::Error,
    ) -> TransportError {
        TransportError::new(op, offset, len, self.target(), class, e)
    }

    /// The live connection, or a new one (logged in, the LUN identified).
    fn conn(&self, op: IoOp) -> Result<Arc<Conn>, TransportError> {
        if let Some(c) = self.conn.lock().clone() {
            if c.closed().is_none() {
                return Ok(c);
            }
        }
        if self.connecting.swap(true, Ordering::AcqRel) {
            let why = self
                .last_error
                .lock()
                .clone()
                .unwrap_or_else(|| "logging in".to_string());
            return Err(self.err(
                op,
                0,
                0,
                ErrorClass::Path,
                io::Error::new(
                    io::ErrorKind::NotConnected,
                    format!("not connected ({why})"),
                ),
            ));
        }
        let r = self.connect(op);
        self.connecting.store(false, Ordering::Release);
        r
    }

    fn connect(&self, op: IoOp) -> Result<Arc<Conn>, TransportError> {
        let c = match Conn::connect(&self.target, &self.rt, LOGIN_TIMEOUT) {
            Ok(c) => Arc::new(c),
            Err(e) => {
                *self.last_error.lock() = Some(e.to_string());
                let kind = match &e {
                    ConnectError::Unreachable { source, .. } | ConnectError::Io { source, .. } => {
                        source.kind()
                    }
                    _ => io::ErrorKind::PermissionDenied,
                };
                return Err(self.err(
                    op,
                    0,
                    0,
                    ErrorClass::Path,
                    io::Error::new(kind, e.to_string()),
                ));
            }
        };
        let info = self
            .identify_on(&c, self.lun)
            .inspect_err(|e| c.close(&e.to_string()))?;
        *self.info.lock() = Some(info);
        *self.last_error.lock() = None;
        *self.conn.lock() = Some(c.clone());
        Ok(c)
    }

    /// Starts a READ(16) of `len` bytes, or a WRITE(16) of `write`, at
    /// `offset` without waiting, on the live connection: `c` gets the end
    /// on the connection's task; [`IscsiTransport::outcome`] judges it.
    /// Gives `c` back when the command cannot start here and now (no live
    /// connection: connecting blocks; the command window is full; not
    /// aligned; larger than one command): do it the blocking way.
    pub fn start<C: conn::Completion>(
        &self,
        offset: u64,
        len: u32,
        write: Option<(Vec<u8>, bool)>,
        c: C,
    ) -> Result<(), C> {
        let Some(conn) = self.conn.lock().clone() else {
            return Err(c);
        };
        let bs = self.block_size();
        if len == 0 || len > MAX_TRANSFER || offset % u64::from(bs) != 0 || len % bs != 0 {
            return Err(c);
        }
        let blocks = len / bs;
        let lba = offset / u64::from(bs);
        let (cmd, data) = match write {
            None => (
                self.cmd(rw16(false, false, lba, blocks), Direction::Read, len),
                None,
            ),
            Some((buf, _)) if buf.len() != len as usize => return Err(c),
            Some((buf, fua)) => (
                self.cmd(rw16(true, fua, lba, blocks), Direction::Write, len),
                Some(Arc::new(buf)),
            ),
        };
        conn.submit(cmd, data, self.io_timeout, c)
    }

    /// Judges the end of a command started with [`IscsiTransport::start`].
    pub fn outcome(&self, op: IoOp, offset: u64, len: u64, r: Result<Done, CmdError>) -> Outcome {
        match judge(op, r) {
            Verdict::Retry(_) => Outcome::Retry,
            Verdict::Fail(class, e) => Outcome::Failed(self.err(op, offset, len, class, e)),
            Verdict::Ok(d) if op == IoOp::Read && (d.status.received as u64) < len => {
                Outcome::Failed(self.err(
                    op,
                    offset,
                    len,
                    ErrorClass::Path,
                    io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("short read: {} of {len} bytes", d.status.received),
                    ),
                ))
            }
            Verdict::Ok(d) => Outcome::Done(d.data),
        }
    }

    /// One command with UNIT ATTENTION and BUSY retried.
    fn run(
        &self,
        c: &Conn,
        op: IoOp,
        offset: u64,
        cmd: Command,
        write: Option<Arc<Vec<u8>>>,
    ) -> Result<Done, TransportError> {
        let len = u64::from(cmd.len);
        let mut tries = 0;
        loop {
            tries += 1;
            match judge(op, c.command(cmd, write.clone(), self.io_timeout)) {
                Verdict::Ok(d) => return Ok(d),
                Verdict::Retry(why) if tries < RETRIES => {
                    tracing::debug!(target = %self.target(), %why, "iSCSI command retried");
                    continue;
                }
                Verdict::Retry(why) => {
                    return Err(self.err(op, offset, len, ErrorClass::Path, io::Error::other(why)))
                }
                Verdict::Fail(class, e) => return Err(self.err(op, offset, len, class, e)),
            }
        }
    }

    fn lun_sam(&self) -> u64 {
        lun_from_number(self.lun)
    }

    fn cmd(&self, cdb: [u8; 16], dir: Direction, len: u32) -> Command {
        Command {
            lun: self.lun_sam(),
            cdb,
            dir,
            len,
        }
    }

    /// INQUIRY, the VPD pages, READ CAPACITY(16) of LUN `lun` on `c`.
    fn identify_on(&self, c: &Conn, lun: u16) -> Result<LunInfo, TransportError> {
        let op = IoOp::Check;
        let read = |cdb, len| {
            let cmd = Command {
                lun: lun_from_number(lun),
                cdb,
                dir: Direction::Read,
                len,
            };
            self.run(c, op, 0, cmd, None)
                .map(|d| d.data[..(d.status.received as usize).min(d.data.len())].to_vec())
        };
        let std = read(inquiry_cdb(None, 255), 255)?;
        let inq = StdInquiry::parse(&std).map_err(|e| {
            self.err(
                op,
                0,
                0,
                ErrorClass::Path,
                io::Error::other(format!("INQUIRY: {e}")),
            )
        })?;
        let device_type = inq.device_type;
        if device_type != 0 {
            return Err(self.err(
                op,
                0,
                0,
                ErrorClass::Unsupported,
                io::Error::other(format!(
                    "LUN {lun} is a {}, not a disk",
                    crate::scsi::inquiry::device_type_name(device_type)
                )),
            ));
        }
        if inq.qualifier != 0 {
            return Err(self.err(
                op,
                0,
                0,
                ErrorClass::Path,
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("LUN {lun} is not connected at this target"),
                ),
            ));
        }
        let pages = read(inquiry_cdb(Some(0), 255), 255)
            .ok()
            .and_then(|p| crate::scsi::vpd::supported_pages(&p).ok())
            .unwrap_or_default();
        let page = |n: u8| {
            if pages.contains(&n) {
                read(inquiry_cdb(Some(n), 254), 254).ok()
            } else {
                None
            }
        };
        let pg80 = page(0x80);
        let pg83 = page(0x83);
        let pgb0 = page(0xb0);
        let pgb2 = page(0xb2);
        let wwid = crate::scsi::wwid::scsi_id(&inq, pg83.as_deref(), pg80.as_deref())
            .map(|w| w.id)
            .map_err(|e| self.err(op, 0, 0, ErrorClass::Path, io::Error::other(e.to_string())))?;
        let serial = pg80
            .as_deref()
            .and_then(|p| crate::scsi::vpd::unit_serial(p).ok())
            .unwrap_or_default();
        let cap = read(
            cdb16(&[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0]),
            32,
        )?;
        if cap.len() < 12 {
            return Err(self.err(
                op,
                0,
                0,
                ErrorClass::Path,
                io::Error::other(format!("READ CAPACITY(16) returned {} bytes", cap.len())),
            ));
        }
        let last = u64::from_be_bytes([
            cap[0], cap[1], cap[2], cap[3], cap[4], cap[5], cap[6], cap[7],
        ]);
        let block_size = u32::from_be_bytes([cap[8], cap[9], cap[10], cap[11]]);
        if !(512..=65536).contains(&block_size) || !block_size.is_power_of_two() {
            return Err(self.err(
                op,
                0,
                0,
                ErrorClass::Path,
                io::Error::other(format!("READ CAPACITY(16): block size {block_size}")),
            ));
        }
        // VPD 0xB2: LBPU (bit 7) and LBPWS (bit 6) of byte 5.
        let b2 = pgb2.as_deref().and_then(|p| p.get(5)).copied().unwrap_or(0);
        // VPD 0xB0: MAXIMUM UNMAP LBA COUNT at bytes 20..24.
        let max_unmap_blocks = pgb0
            .as_deref()
            .and_then(|p| p.get(20..24))
            .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        Ok(LunInfo {
            vendor: inq.vendor.clone(),
            product: inq.product.clone(),
            revision: inq.revision.clone(),
            serial,
            wwid,
            block_size,
            blocks: last.saturating_add(1),
            device_type,
            unmap: b2 & 0x80 != 0 && max_unmap_blocks != 0,
            write_same: b2 & 0x40 != 0,
            max_unmap_blocks,
            read_only: false,
        })
    }

    /// Connects if needed and says what the LUN is.
    pub fn identify(&self) -> Result<LunInfo, TransportError> {
        let c = self.conn(IoOp::Check)?;
        let info = self.identify_on(&c, self.lun)?;
        *self.info.lock() = Some(info.clone());
        Ok(info)
    }

    pub fn size(&self) -> Result<u64, TransportError> {
        if let Some(size) = self.info.lock().as_ref().map(LunInfo::size) {
            return Ok(size);
        }
        self.identify().map(|i| i.size())
    }

    /// The logical block size (512 until the LUN has said).
    pub fn block_size(&self) -> u32 {
        self.info.lock().as_ref().map_or(512, |i| i.block_size)
    }

    pub fn caps(&self) -> TransportCaps {
        let info = self.info.lock();
        TransportCaps {
            scsi_target: true,
            read_only: false,
            flush: true,
            volatile_cache: true,
            fua: true,
            trim: info.as_ref().is_some_and(|i| i.unmap),
            write_zeroes: true,
            fast_zero: info.as_ref().is_some_and(|i| i.write_same),
        }
    }

    pub fn is_open(&self) -> bool {
        self.conn
            .lock()
            .as_ref()
            .is_some_and(|c| c.closed().is_none())
    }

    fn check_range(&self, op: IoOp, offset: u64, len: u64) -> Result<u32, TransportError> {
        let bs = self.block_size();
        if offset % u64::from(bs) != 0 || len % u64::from(bs) != 0 {
            return Err(self.err(
                op,
                offset,
                len,
                ErrorClass::Lun,
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("not aligned to the LUN's {bs}-byte blocks"),
                ),
            ));
        }
        Ok(bs)
    }

    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), TransportError> {
        let len = buf.len() as u64;
        let c = self.conn(IoOp::Read)?;
        let bs = self.check_range(IoOp::Read, offset, len)?;
        let mut done = 0usize;
        while done < buf.len() {
            let n = (buf.len() - done).min(MAX_TRANSFER as usize);
            let off = offset + done as u64;
            let cdb = rw16(false, false, off / u64::from(bs), (n / bs as usize) as u32);
            let d = self.run(
                &c,
                IoOp::Read,
                off,
                self.cmd(cdb, Direction::Read, n as u32),
                None,
            )?;
            if (d.status.received as usize) < n || d.data.len() < n {
                return Err(self.err(
                    IoOp::Read,
                    off,
                    n as u64,
                    ErrorClass::Path,
                    io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("short read: {} of {n} bytes", d.status.received),
                    ),
                ));
            }
            buf[done..done + n].copy_from_slice(&d.data[..n]);
            done += n;
        }
        Ok(())
    }

    pub fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> Result<(), TransportError> {
        let len = buf.len() as u64;
        let c = self.conn(IoOp::Write)?;
        let bs = self.check_range(IoOp::Write, offset, len)?;
        let mut done = 0usize;
        while done < buf.len() {
            let n = (buf.len() - done).min(MAX_TRANSFER as usize);
            let off = offset + done as u64;
            let cdb = rw16(true, fua, off / u64::from(bs), (n / bs as usize) as u32);
            let data = Arc::new(buf[done..done + n].to_vec());
            self.run(
                &c,
                IoOp::Write,
                off,
                self.cmd(cdb, Direction::Write, n as u32),
                Some(data),
            )?;
            done += n;
        }
        Ok(())
    }

    pub fn flush(&self) -> Result<(), TransportError> {
        let c = self.conn(IoOp::Flush)?;
        let cdb = cdb16(&[0x91]);
        self.run(&c, IoOp::Flush, 0, self.cmd(cdb, Direction::None, 0), None)
            .map(|_| ())
    }

    pub fn trim(&self, offset: u64, len: u64) -> Result<(), TransportError> {
        let info = self.info();
        if !info.as_ref().is_some_and(|i| i.unmap) {
            return Err(self.err(
                IoOp::Trim,
                offset,
                len,
                ErrorClass::Unsupported,
                io::Error::from_raw_os_error(libc::EOPNOTSUPP),
            ));
        }
        let c = self.conn(IoOp::Trim)?;
        let bs = u64::from(self.check_range(IoOp::Trim, offset, len)?);
        let max = info.map_or(0, |i| i.max_unmap_blocks).max(1);
        let mut lba = offset / bs;
        let end = (offset + len) / bs;
        while lba < end {
            let n = (end - lba).min(u64::from(max)) as u32;
            // Parameter list: 8-byte header, one 16-byte descriptor.
            let mut p = vec![0u8; 24];
            p[0..2].copy_from_slice(&22u16.to_be_bytes());
            p[2..4].copy_from_slice(&16u16.to_be_bytes());
            p[8..16].copy_from_slice(&lba.to_be_bytes());
            p[16..20].copy_from_slice(&n.to_be_bytes());
            let cdb = cdb16(&[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0]);
            self.run(
                &c,
                IoOp::Trim,
                lba * bs,
                self.cmd(cdb, Direction::Write, 24),
                Some(Arc::new(p)),
            )?;
            lba += u64::from(n);
        }
        Ok(())
    }

    /// Zeroes the range: WRITE SAME(16) of a zero block (with UNMAP when
    /// `may_trim` and the LUN can), else zeroes written (unless `fast`).
    pub fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        may_trim: bool,
        fast: bool,
    ) -> Result<(), TransportError> {
        let c = self.conn(IoOp::WriteZeroes)?;
        let bs = self.check_range(IoOp::WriteZeroes, offset, len)?;
        let write_same = self.info().is_some_and(|i| i.write_same);
        if write_same {
            let mut lba = offset / u64::from(bs);
            let end = (offset + len) / u64::from(bs);
            while lba < end {
                let n = (end - lba).min(65536) as u32;
                let mut cdb = rw16(false, false, lba, n);
                cdb[0] = 0x93;
                cdb[1] = if may_trim { 0x08 } else { 0 };
                self.run(
                    &c,
                    IoOp::WriteZeroes,
                    lba * u64::from(bs),
                    self.cmd(cdb, Direction::Write, bs),
                    Some(Arc::new(vec![0u8; bs as usize])),
                )?;
                lba += u64::from(n);
            }
            return Ok(());
        }
        if fast {
            return Err(self.err(
                IoOp::WriteZeroes,
                offset,
                len,
                ErrorClass::Unsupported,
                io::Error::from_raw_os_error(libc::EOPNOTSUPP),
            ));
        }
        let chunk = 1u64 << 20;
        let zeroes = vec![0u8; chunk as usize];
        let mut at = offset;
        while at < offset + len {
            let n = (offset + len - at).min(chunk);
            self.write_at(&zeroes[..n as usize], at, false)?;
            at += n;
        }
        Ok(())
    }

    /// TEST UNIT READY, judged as for a SCSI disk (`scsi::tur`).
    pub fn tur(&self, timeout: Duration) -> TurResult {
        let outcome = || match self.conn(IoOp::Check) {
            Err(e) => TurOutcome::IoctlFailed {
                not_supported: false,
                error: e.to_string(),
            },
            Ok(c) => match c.command(self.cmd([0u8; 16], Direction::None, 0), None, timeout) {
                Ok(d) if d.status.response == 0 && d.status.status == 0x02 => {
                    TurOutcome::check_condition(d.status.sense)
                }
                Ok(d) if d.status.response == 0 => TurOutcome::Completed {
                    status: d.status.status,
                    host_status: 0,
                    driver_status: 0,
                    info: u32::from(d.status.status != 0),
                    sense: Vec::new(),
                },
                Ok(d) => TurOutcome::IoctlFailed {
                    not_supported: false,
                    error: format!("iSCSI service response {:#x}", d.status.response),
                },
                Err(e) => TurOutcome::IoctlFailed {
                    not_supported: false,
                    error: e.to_string(),
                },
            },
        };
        let (state, message, _) = crate::scsi::tur::run(outcome);
        TurResult { state, message }
    }

    /// After a successful check: a fresh connection if the last one broke
    /// (the check made it), else nothing.
    pub fn revalidate(&self) -> Result<Revalidated, TransportError> {
        if self.is_open() {
            return Ok(Revalidated::Unchanged);
        }
        self.conn(IoOp::Check)?;
        Ok(Revalidated::Reopened("logged in again".to_string()))
    }

    /// The checker's probe: a read of up to `len` bytes at offset 0.
    pub fn probe(&self, len: usize) -> Result<Probe, TransportError> {
        let bs = self.block_size() as usize;
        let size = self.size()?;
        let n = (len.max(bs) / bs * bs).min(size as usize);
        let mut buf = vec![0u8; n];
        self.read_at(&mut buf, 0)?;
        Ok(Probe {
            bytes: n,
            direct: true,
            note: None,
        })
    }

    /// Every LUN the target reports (REPORT LUNS) and what each is, on a
    /// connection of its own (the probe; LUN 0 need not be a disk).
    pub fn luns(&self) -> Result<Vec<LunProbe>, TransportError> {
        let c = Conn::connect(&self.target, &self.rt, LOGIN_TIMEOUT).map_err(|e| {
            self.err(
                IoOp::Check,
                0,
                0,
                ErrorClass::Path,
                io::Error::other(e.to_string()),
            )
        })?;
        let alloc: u32 = 16 + 8 * 256;
        let mut cdb = [0u8; 16];
        cdb[0] = 0xa0;
        cdb[6..10].copy_from_slice(&alloc.to_be_bytes());
        let cmd = Command {
            lun: 0,
            cdb,
            dir: Direction::Read,
            len: alloc,
        };
        let d = self.run(&c, IoOp::Check, 0, cmd, None)?;
        let luns = report_luns(&d.data[..(d.status.received as usize).min(d.data.len())]);
        Ok(luns
            .into_iter()
            .map(|l| (l, self.identify_on(&c, l)))
            .collect())
    }
}

/// The LUN numbers in REPORT LUNS parameter data.
fn report_luns(data: &[u8]) -> Vec<u16> {
    let list_len = data
        .get(0..4)
        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize);
    data.get(8..)
        .unwrap_or_default()
        .chunks_exact(8)
        .take(list_len / 8)
        .filter_map(|e| {
            let mut b = [0u8; 8];
            b.copy_from_slice(e);
            crate::iscsi::pdu::lun_to_number(u64::from_be_bytes(b))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::session::Status;

    fn status(status: u8, sense: &[u8]) -> Result<Done, CmdError> {
        Ok(Done {
            status: Status {
                response: 0,
                status,
                sense: sense.to_vec(),
                residual_under: 0,
                residual_over: 0,
                received: 0,
            },
            data: Vec::new(),
        })
    }

    fn fixed_sense(key: u8, asc: u8) -> Vec<u8> {
        let mut s = vec![0u8; 18];
        s[0] = 0x70;
        s[2] = key;
        s[7] = 10;
        s[12] = asc;
        s
    }

    fn class(v: Verdict) -> Option<ErrorClass> {
        match v {
            Verdict::Fail(c, _) => Some(c),
            _ => None,
        }
    }

    #[test]
    fn sense_is_classified_as_dm_multipath_does() {
        let j = |op, key| class(judge(op, status(2, &fixed_sense(key, 0x11))));
        assert_eq!(j(IoOp::Read, 0x3), Some(ErrorClass::Lun), "medium error");
        assert_eq!(j(IoOp::Write, 0x7), Some(ErrorClass::Lun), "data protect");
        assert_eq!(j(IoOp::Read, 0x5), Some(ErrorClass::Lun), "illegal request");
        assert_eq!(j(IoOp::Trim, 0x5), Some(ErrorClass::Unsupported));
        assert_eq!(j(IoOp::Read, 0x2), Some(ErrorClass::Path), "not ready");
        assert_eq!(
            j(IoOp::Read, 0xb),
            Some(ErrorClass::Path),
            "aborted command"
        );
        assert!(matches!(
            judge(IoOp::Read, status(2, &fixed_sense(0x6, 0x29))),
            Verdict::Retry(_)
        ));
        assert!(matches!(
            judge(IoOp::Read, status(0x08, &[])),
            Verdict::Retry(_)
        ));
        assert_eq!(
            class(judge(IoOp::Write, status(0x18, &[]))),
            Some(ErrorClass::Lun)
        );
        assert!(matches!(judge(IoOp::Read, status(0, &[])), Verdict::Ok(_)));
        assert_eq!(
            class(judge(IoOp::Read, Err(CmdError::Closed("reset".into())))),
            Some(ErrorClass::Path)
        );
        assert_eq!(
            class(judge(
                IoOp::Write,
                Err(CmdError::TimedOut {
                    timeout: Duration::from_secs(1),
                    aborted: true
                })
            )),
            Some(ErrorClass::Path)
        );
        // CHECK CONDITION with garbage sense fails the path.
        assert_eq!(
            class(judge(IoOp::Read, status(2, &[1, 2]))),
            Some(ErrorClass::Path)
        );
    }

    #[test]
    fn report_luns_parses_what_fits() {
        let mut d = vec![0, 0, 0, 16, 0, 0, 0, 0];
        d.extend_from_slice(&lun_from_number(0).to_be_bytes());
        d.extend_from_slice(&lun_from_number(300).to_be_bytes());
        assert_eq!(report_luns(&d), vec![0, 300]);
        // A list length beyond the data is cut to the data.
        d[3] = 200;
        assert_eq!(report_luns(&d), vec![0, 300]);
        assert!(report_luns(&[0, 0]).is_empty());
    }

    #[test]
    fn cdbs() {
        let c = rw16(true, true, 0x0102_0304_0506_0708, 8);
        assert_eq!(c[0], 0x8a);
        assert_eq!(c[1], 0x08);
        assert_eq!(&c[2..10], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&c[10..14], &[0, 0, 0, 8]);
        assert_eq!(
            &inquiry_cdb(Some(0x83), 254)[..6],
            &[0x12, 1, 0x83, 0, 254, 0]
        );
        assert_eq!(&inquiry_cdb(None, 255)[..6], &[0x12, 0, 0, 0, 255, 0]);
    }
}
