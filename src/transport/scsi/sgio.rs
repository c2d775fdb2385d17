//! SG_IO: SCSI commands through the block device (or sg) node.
//!
//! Commands are sent on a descriptor of their own, opened
//! `O_RDONLY | O_NONBLOCK` ([`open_for_commands`]): TEST UNIT READY and
//! INQUIRY need no write access, and `O_NONBLOCK` keeps the open from
//! waiting for a device that is not ready (as `sg_inq` and `scsi_id` do).
//! Every failure comes back as an [`SgError`] naming the command and the
//! device; nothing here panics on what a device returns.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use crate::scsi::host;
use crate::scsi::rtpg;
use crate::scsi::sense::Sense;
use crate::scsi::tur::{TurOutcome, SG_INFO_CHECK};

/// `struct sg_io_hdr` of `<scsi/sg.h>` (interface 'S').
#[repr(C)]
#[derive(Debug)]
struct SgIoHdr {
    interface_id: libc::c_int,
    dxfer_direction: libc::c_int,
    cmd_len: libc::c_uchar,
    mx_sb_len: libc::c_uchar,
    iovec_count: libc::c_ushort,
    dxfer_len: libc::c_uint,
    dxferp: *mut libc::c_void,
    cmdp: *const libc::c_uchar,
    sbp: *mut libc::c_uchar,
    timeout: libc::c_uint,
    flags: libc::c_uint,
    pack_id: libc::c_int,
    usr_ptr: *mut libc::c_void,
    status: libc::c_uchar,
    masked_status: libc::c_uchar,
    msg_status: libc::c_uchar,
    sb_len_wr: libc::c_uchar,
    host_status: libc::c_ushort,
    driver_status: libc::c_ushort,
    resid: libc::c_int,
    duration: libc::c_uint,
    info: libc::c_uint,
}

const SG_DXFER_NONE: libc::c_int = -1;
const SG_DXFER_TO_DEV: libc::c_int = -2;
const SG_DXFER_FROM_DEV: libc::c_int = -3;

/// Sense buffer size (as multipath-tools and scsi_id use).
pub const SENSE_LEN: usize = 32;

mod ioctl {
    // SG_IO is 0x2285, an old-style number without direction or size.
    nix::ioctl_readwrite_bad!(sg_io, 0x2285, super::SgIoHdr);
}

/// Where the data of a command goes.
#[derive(Debug)]
pub enum Data<'a> {
    None,
    FromDevice(&'a mut [u8]),
    ToDevice(&'a [u8]),
}

/// How a command completed (the ioctl itself succeeded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SgResult {
    pub status: u8,
    pub host_status: u16,
    pub driver_status: u16,
    pub info: u32,
    /// Bytes asked for but not transferred.
    pub resid: i32,
    /// The sense bytes the device wrote.
    pub sense: Vec<u8>,
    pub duration_ms: u32,
}

impl SgResult {
    /// Nothing went wrong.
    pub fn ok(&self) -> bool {
        self.info & SG_INFO_CHECK == 0
    }

    /// Decoded sense data, if any came back.
    pub fn sense(&self) -> Option<Sense> {
        Sense::parse(&self.sense).ok()
    }

    /// For messages: status, host byte, driver byte and sense.
    pub fn describe(&self) -> String {
        let mut s = format!("status 0x{:02x}", self.status);
        if self.host_status != 0 {
            s.push_str(&format!(
                ", host byte {} (0x{:02x})",
                host::name(self.host_status),
                self.host_status
            ));
        }
        if self.driver_status != 0 {
            s.push_str(&format!(", driver byte 0x{:02x}", self.driver_status));
        }
        if let Some(sense) = self.sense() {
            s.push_str(&format!(", sense: {sense}"));
        }
        s
    }
}

/// A failed SCSI command.
#[derive(Debug, thiserror::Error)]
pub enum SgError {
    #[error("{device}: {command}: SG_IO failed: {source}")]
    Ioctl {
        device: String,
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("{device}: {command}: {}", result.describe())]
    Failed {
        device: String,
        command: String,
        result: SgResult,
    },
    #[error("{device}: {command}: {why}")]
    BadData {
        device: String,
        command: String,
        why: String,
    },
}

impl SgError {
    /// The ioctl's errno, if the ioctl failed.
    pub fn errno(&self) -> Option<i32> {
        match self {
            SgError::Ioctl { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Opens a device node for commands: `O_RDONLY | O_NONBLOCK | O_CLOEXEC`.
pub fn open_for_commands(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
}

/// Sends one command. `Err` only when the ioctl fails; a command the
/// device or transport failed is an `Ok` with the status bytes set.
pub fn sg_io(file: &File, cdb: &[u8], data: Data<'_>, timeout: Duration) -> io::Result<SgResult> {
    if cdb.is_empty() || cdb.len() > 32 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("CDB of {} bytes", cdb.len()),
        ));
    }
    let mut sense = [0u8; SENSE_LEN];
    let (dir, ptr, len): (libc::c_int, *mut libc::c_void, usize) = match data {
        Data::None => (SG_DXFER_NONE, std::ptr::null_mut(), 0),
        Data::FromDevice(b) => (SG_DXFER_FROM_DEV, b.as_mut_ptr().cast(), b.len()),
        // The kernel only reads a TO_DEV buffer; the pointer type is shared.
        Data::ToDevice(b) => (SG_DXFER_TO_DEV, b.as_ptr().cast_mut().cast(), b.len()),
    };
    let dxfer_len = libc::c_uint::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "transfer too large"))?;
    let timeout_ms =
        libc::c_uint::try_from(timeout.as_millis().max(1)).unwrap_or(libc::c_uint::MAX);
    let mut hdr = SgIoHdr {
        interface_id: libc::c_int::from(b'S'),
        dxfer_direction: dir,
        // At most 32 (checked above).
        cmd_len: cdb.len() as libc::c_uchar,
        mx_sb_len: SENSE_LEN as libc::c_uchar,
        iovec_count: 0,
        dxfer_len,
        dxferp: ptr,
        cmdp: cdb.as_ptr(),
        sbp: sense.as_mut_ptr(),
        timeout: timeout_ms,
        flags: 0,
        pack_id: 0,
        usr_ptr: std::ptr::null_mut(),
        status: 0,
        masked_status: 0,
        msg_status: 0,
        sb_len_wr: 0,
        host_status: 0,
        driver_status: 0,
        resid: 0,
        duration: 0,
        info: 0,
    };
    loop {
        // SAFETY: `hdr` is a correctly laid out sg_io_hdr (interface 'S');
        // `cmdp` points to `cdb` (cmd_len bytes, read only), `sbp` to the
        // `sense` array (mx_sb_len bytes), and `dxferp` to the caller's
        // buffer of exactly `dxfer_len` bytes (null with length 0 when
        // there is no data). All of them outlive the synchronous ioctl, and
        // the fd is open for the lifetime of `file`.
        match unsafe { ioctl::sg_io(file.as_raw_fd(), &mut hdr) } {
            Ok(_) => break,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(io::Error::from(e)),
        }
    }
    let n = usize::from(hdr.sb_len_wr).min(SENSE_LEN);
    Ok(SgResult {
        status: hdr.status,
        host_status: hdr.host_status,
        driver_status: hdr.driver_status,
        info: hdr.info,
        resid: hdr.resid,
        sense: sense[..n].to_vec(),
        duration_ms: hdr.duration,
    })
}

/// One TEST UNIT READY, as the pure decision in [`crate::scsi::tur`]
/// takes it.
pub fn test_unit_ready(file: &File, timeout: Duration) -> TurOutcome {
    match sg_io(file, &[0u8; 6], Data::None, timeout) {
        Ok(r) => TurOutcome::Completed {
            status: r.status,
            host_status: r.host_status,
            driver_status: r.driver_status,
            info: r.info,
            sense: r.sense,
        },
        Err(e) => TurOutcome::IoctlFailed {
            not_supported: e.raw_os_error() == Some(libc::ENOTTY),
            error: e.to_string(),
        },
    }
}

/// Largest allocation length INQUIRY can ask for.
pub const INQUIRY_MAX: usize = 0xffff;

/// INQUIRY: standard data (`page` None) or a VPD page. Returns the bytes
/// transferred. A short VPD answer whose header announces more is asked
/// again with the announced length.
pub fn inquiry(
    file: &File,
    device: &str,
    page: Option<u8>,
    timeout: Duration,
) -> Result<Vec<u8>, SgError> {
    let command = match page {
        None => "INQUIRY".to_string(),
        Some(p) => format!("INQUIRY VPD page 0x{p:02x}"),
    };
    let mut alloc: usize = if page.is_some() { 255 } else { 96 };
    for _ in 0..2 {
        let mut buf = vec![0u8; alloc];
        // Allocation length fits in 16 bits (alloc <= INQUIRY_MAX).
        let al = (alloc as u16).to_be_bytes();
        let cdb = [
            0x12,
            u8::from(page.is_some()),
            page.unwrap_or(0),
            al[0],
            al[1],
            0,
        ];
        let r = sg_io(file, &cdb, Data::FromDevice(&mut buf), timeout).map_err(|source| {
            SgError::Ioctl {
                device: device.to_string(),
                command: command.clone(),
                source,
            }
        })?;
        let recovered = r
            .sense()
            .is_some_and(|x| x.key == crate::scsi::SenseKey::RECOVERED_ERROR);
        if !r.ok() && !recovered {
            return Err(SgError::Failed {
                device: device.to_string(),
                command,
                result: r,
            });
        }
        let got = alloc.saturating_sub(usize::try_from(r.resid.max(0)).unwrap_or(0));
        buf.truncate(got);
        let want = match page {
            Some(_) if buf.len() >= 4 => 4 + usize::from(u16::from_be_bytes([buf[2], buf[3]])),
            None if buf.len() >= 5 => 5 + usize::from(buf[4]),
            _ => 0,
        };
        if want > alloc && alloc < INQUIRY_MAX {
            alloc = want.min(INQUIRY_MAX);
            continue;
        }
        if let (Some(p), Some(&got_page)) = (page, buf.get(1)) {
            if got_page != p {
                return Err(SgError::BadData {
                    device: device.to_string(),
                    command,
                    why: format!("the device answered with page 0x{got_page:02x}"),
                });
            }
        }
        return Ok(buf);
    }
    Err(SgError::BadData {
        device: device.to_string(),
        command,
        why: "the page keeps growing".to_string(),
    })
}

/// The largest REPORT TARGET PORT GROUPS answer asked for (multipath-tools
/// caps it alike).
pub const RTPG_MAX: usize = 0xffff;

/// REPORT TARGET PORT GROUPS (MAINTENANCE IN, service action 0x0A):
/// the parameter data transferred. A short answer whose length field
/// announces more ([`rtpg::required_len`]) is asked again with that many
/// bytes (at most [`RTPG_MAX`]).
pub fn report_target_port_groups(
    file: &File,
    device: &str,
    timeout: Duration,
) -> Result<Vec<u8>, SgError> {
    let command = "REPORT TARGET PORT GROUPS".to_string();
    let mut alloc: usize = 128;
    for _ in 0..2 {
        let mut buf = vec![0u8; alloc];
        // alloc <= RTPG_MAX fits in 32 bits.
        let cdb = rtpg::cdb(alloc as u32, true);
        let r = sg_io(file, &cdb, Data::FromDevice(&mut buf), timeout).map_err(|source| {
            SgError::Ioctl {
                device: device.to_string(),
                command: command.clone(),
                source,
            }
        })?;
        if !r.ok() {
            return Err(SgError::Failed {
                device: device.to_string(),
                command,
                result: r,
            });
        }
        let got = alloc.saturating_sub(usize::try_from(r.resid.max(0)).unwrap_or(0));
        // LIO (seen with Linux 6.1) leaves the extended header's 4 bytes
        // out of both RETURN DATA LENGTH and the transfer length, while
        // its descriptors are whole in the buffer; the kernel's ALUA
        // handler and multipath-tools read the buffer past the length.
        // Keep those 4 bytes (zeroed if a device wrote nothing there).
        let lio = got > 4 && buf[4] & 0x70 == 0x10 && rtpg::required_len(&buf[..got]) == Some(got);
        buf.truncate(if lio { (got + 4).min(alloc) } else { got });
        match rtpg::required_len(&buf) {
            Some(want) if want > alloc && alloc < RTPG_MAX => {
                // 4 more: LIO leaves the extended header out of the
                // length (see crate::scsi::rtpg).
                alloc = want.saturating_add(4).min(RTPG_MAX);
            }
            _ => return Ok(buf),
        }
    }
    Err(SgError::BadData {
        device: device.to_string(),
        command,
        why: "the answer keeps growing".to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_matches_the_kernel() {
        // sizeof(struct sg_io_hdr) on 64-bit Linux is 88 bytes.
        #[cfg(target_pointer_width = "64")]
        assert_eq!(std::mem::size_of::<SgIoHdr>(), 88);
        #[cfg(target_pointer_width = "32")]
        assert_eq!(std::mem::size_of::<SgIoHdr>(), 64);
    }

    #[test]
    fn sg_io_on_a_regular_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"x").unwrap();
        let f = open_for_commands(&p).unwrap();
        match test_unit_ready(&f, Duration::from_secs(1)) {
            TurOutcome::IoctlFailed { not_supported, .. } => assert!(not_supported),
            other => panic!("{other:?}"),
        }
        let e = inquiry(&f, "f", Some(0x83), Duration::from_secs(1)).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("f: INQUIRY VPD page 0x83: SG_IO failed"),
            "{e}"
        );
        assert_eq!(e.errno(), Some(libc::ENOTTY));
        assert!(sg_io(&f, &[], Data::None, Duration::from_secs(1)).is_err());
        let e = report_target_port_groups(&f, "f", Duration::from_secs(1)).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("f: REPORT TARGET PORT GROUPS: SG_IO failed"),
            "{e}"
        );
    }
}
