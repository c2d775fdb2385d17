//! SCSI data formats, pure: standard INQUIRY, VPD pages, sense data,
//! REPORT TARGET PORT GROUPS (ALUA states), the
//! WWID the way `scsi_id --whitelisted --replace-whitespace` computes it,
//! and the TEST UNIT READY verdict of multipath-tools' `tur` checker.
//!
//! Nothing here does IO (no nix, no libc): every parser takes the bytes a
//! device (or sysfs) returned and answers with a value or a [`ScsiError`],
//! never a panic. The edges that fetch the bytes are
//! `crate::transport::scsi` (SG_IO) and `crate::discovery` (sysfs).

pub mod inquiry;
pub mod rtpg;
pub mod sense;
pub mod tur;
pub mod vpd;
pub mod wwid;

pub use inquiry::{StdInquiry, Tpgs};
pub use rtpg::{AccessState, TargetPortGroups};
pub use sense::{Sense, SenseKey};
pub use tur::{TurOutcome, TurVerdict};
pub use vpd::{Association, CodeSet, Designator, DesignatorType};
pub use wwid::{Wwid, WwidSource};

/// SCSI status byte values (SAM-5), as SG_IO reports them in `status`.
pub mod status {
    pub const GOOD: u8 = 0x00;
    pub const CHECK_CONDITION: u8 = 0x02;
    pub const CONDITION_MET: u8 = 0x04;
    pub const BUSY: u8 = 0x08;
    pub const RESERVATION_CONFLICT: u8 = 0x18;
    pub const TASK_SET_FULL: u8 = 0x28;
    pub const ACA_ACTIVE: u8 = 0x30;
    pub const TASK_ABORTED: u8 = 0x40;
}

/// Linux host byte values (`DID_*`, include/scsi/scsi_status.h) as SG_IO
/// reports them in `host_status`.
pub mod host {
    pub const DID_OK: u16 = 0x00;
    pub const DID_NO_CONNECT: u16 = 0x01;
    pub const DID_BUS_BUSY: u16 = 0x02;
    pub const DID_TIME_OUT: u16 = 0x03;
    pub const DID_BAD_TARGET: u16 = 0x04;
    pub const DID_ABORT: u16 = 0x05;
    pub const DID_PARITY: u16 = 0x06;
    pub const DID_ERROR: u16 = 0x07;
    pub const DID_RESET: u16 = 0x08;
    pub const DID_BAD_INTR: u16 = 0x09;
    pub const DID_PASSTHROUGH: u16 = 0x0a;
    pub const DID_SOFT_ERROR: u16 = 0x0b;
    pub const DID_IMM_RETRY: u16 = 0x0c;
    pub const DID_REQUEUE: u16 = 0x0d;
    pub const DID_TRANSPORT_DISRUPTED: u16 = 0x0e;
    pub const DID_TRANSPORT_FAILFAST: u16 = 0x0f;

    /// The kernel's name for a host byte, for messages.
    pub fn name(h: u16) -> &'static str {
        match h {
            DID_OK => "DID_OK",
            DID_NO_CONNECT => "DID_NO_CONNECT",
            DID_BUS_BUSY => "DID_BUS_BUSY",
            DID_TIME_OUT => "DID_TIME_OUT",
            DID_BAD_TARGET => "DID_BAD_TARGET",
            DID_ABORT => "DID_ABORT",
            DID_PARITY => "DID_PARITY",
            DID_ERROR => "DID_ERROR",
            DID_RESET => "DID_RESET",
            DID_BAD_INTR => "DID_BAD_INTR",
            DID_PASSTHROUGH => "DID_PASSTHROUGH",
            DID_SOFT_ERROR => "DID_SOFT_ERROR",
            DID_IMM_RETRY => "DID_IMM_RETRY",
            DID_REQUEUE => "DID_REQUEUE",
            DID_TRANSPORT_DISRUPTED => "DID_TRANSPORT_DISRUPTED",
            DID_TRANSPORT_FAILFAST => "DID_TRANSPORT_FAILFAST",
            _ => "DID_(unknown)",
        }
    }
}

/// Why SCSI data could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScsiError {
    /// Fewer bytes than the format needs.
    #[error("{what}: {got} bytes, need at least {need}")]
    Short {
        what: &'static str,
        got: usize,
        need: usize,
    },
    /// A VPD page with another page code than asked for.
    #[error("VPD page 0x{want:02x} expected, got page 0x{got:02x}")]
    WrongPage { want: u8, got: u8 },
    /// Bytes that contradict the format.
    #[error("{what}: {why}")]
    Malformed { what: &'static str, why: String },
    /// The device answered, but not with what was asked for (e.g. no
    /// usable designator).
    #[error("{0}")]
    Absent(String),
}

impl ScsiError {
    pub(crate) fn short(what: &'static str, got: usize, need: usize) -> Self {
        ScsiError::Short { what, got, need }
    }

    pub(crate) fn malformed(what: &'static str, why: impl Into<String>) -> Self {
        ScsiError::Malformed {
            what,
            why: why.into(),
        }
    }
}

/// Lowercase hexadecimal of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// An ASCII field as multipath-tools sees it after reading the kernel's
/// sysfs attribute: cut at the first NUL, trailing whitespace removed.
/// Bytes above 0x7f are kept as Latin-1 characters, so nothing is lost.
pub fn ascii_field(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let s: String = bytes[..end].iter().map(|&b| char::from(b)).collect();
    s.trim_end_matches([' ', '\t', '\n', '\r']).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lowercase() {
        assert_eq!(hex(&[0x50, 0x00, 0xc5, 0xAB]), "5000c5ab");
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn ascii_field_trims_like_sysfs_readers() {
        assert_eq!(ascii_field(b"OSNEXUS "), "OSNEXUS");
        assert_eq!(ascii_field(b"QEMU\0\0\0\0"), "QEMU");
        assert_eq!(ascii_field(b"  A B  "), "  A B");
        assert_eq!(ascii_field(b""), "");
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn parsers_never_panic(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = StdInquiry::parse(&b);
            let _ = vpd::supported_pages(&b);
            let _ = vpd::unit_serial(&b);
            let _ = vpd::designators(&b);
            let _ = vpd::target_port_group(&b);
            let _ = vpd::relative_target_port(&b);
            let _ = Tpgs::from_inquiry(&b);
            let _ = rtpg::parse(&b);
            let _ = Sense::parse(&b);
            let inq = StdInquiry::from_strings("OSNEXUS", "QUANTASTOR", "0001");
            let _ = wwid::scsi_id(&inq, Some(&b), Some(&b));
            let _ = wwid::replace_chars(&b);
            let _ = tur::decide(&TurOutcome::check_condition(b.clone()), 1);
        }

        #[test]
        fn vpd_pages_with_valid_headers_never_panic(
            code in prop_oneof![Just(0x00u8), Just(0x80u8), Just(0x83u8)],
            body in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut b = vec![0u8, code];
            b.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
            b.extend_from_slice(&body);
            let _ = vpd::designators(&b);
            let inq = StdInquiry::from_strings("A", "B", "C");
            if let Ok(w) = wwid::scsi_id(&inq, Some(&b), Some(&b)) {
                prop_assert!(!w.id.is_empty());
                prop_assert!(w.id.len() < wwid::MAX_SERIAL_LEN);
                prop_assert!(!w.id.bytes().any(|c| c.is_ascii_whitespace() || c == 0x0b));
            }
        }

        #[test]
        fn rtpg_never_panics_and_agrees_with_its_lengths(
            descs in proptest::collection::vec(
                (any::<u8>(), any::<u16>(), proptest::collection::vec(any::<u16>(), 0..6)),
                0..6,
            ),
            ext in any::<bool>(),
            delta in -12i64..12,
            tail in proptest::collection::vec(any::<u8>(), 0..16),
        ) {
            let mut body = if ext { vec![0x10, 7, 0, 0] } else { Vec::new() };
            for (b0, id, ports) in &descs {
                // Length-only data: bits 6..4 of the first byte must not
                // read as the extended format type.
                let b0 = if !ext && body.is_empty() { b0 & 0x8f } else { *b0 };
                let d = rtpg::tests::desc(b0, *id, ports);
                body.extend(d);
            }
            let honest = body.len();
            let claimed = u32::try_from((honest as i64 + delta).max(0)).unwrap();
            let mut b = claimed.to_be_bytes().to_vec();
            b.extend_from_slice(&body);
            b.extend_from_slice(&tail);
            let r = rtpg::parse(&b);
            if delta == 0 {
                let t = r.unwrap();
                prop_assert_eq!(t.groups.len(), descs.len());
                for (g, (b0, id, ports)) in t.groups.iter().zip(&descs) {
                    prop_assert_eq!(g.id, *id);
                    prop_assert_eq!(&g.ports, ports);
                    prop_assert_eq!(g.preferred, b0 & 0x80 != 0);
                }
            } else if let Ok(t) = r {
                // Only a length that ends on a descriptor boundary (or
                // reaches into the tail) decodes.
                prop_assert!(t.groups.len() <= descs.len() + 16);
            }
        }
    }
}
