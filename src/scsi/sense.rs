//! Sense data (SPC-4 4.5): fixed (response codes 0x70/0x71) and descriptor
//! (0x72/0x73) formats.

use std::fmt;

use super::ScsiError;

/// A sense key (SPC-4 table 54).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SenseKey(pub u8);

impl SenseKey {
    pub const NO_SENSE: SenseKey = SenseKey(0x0);
    pub const RECOVERED_ERROR: SenseKey = SenseKey(0x1);
    pub const NOT_READY: SenseKey = SenseKey(0x2);
    pub const MEDIUM_ERROR: SenseKey = SenseKey(0x3);
    pub const HARDWARE_ERROR: SenseKey = SenseKey(0x4);
    pub const ILLEGAL_REQUEST: SenseKey = SenseKey(0x5);
    pub const UNIT_ATTENTION: SenseKey = SenseKey(0x6);
    pub const DATA_PROTECT: SenseKey = SenseKey(0x7);
    pub const BLANK_CHECK: SenseKey = SenseKey(0x8);
    pub const VENDOR_SPECIFIC: SenseKey = SenseKey(0x9);
    pub const COPY_ABORTED: SenseKey = SenseKey(0xa);
    pub const ABORTED_COMMAND: SenseKey = SenseKey(0xb);
    pub const VOLUME_OVERFLOW: SenseKey = SenseKey(0xd);
    pub const MISCOMPARE: SenseKey = SenseKey(0xe);
    pub const COMPLETED: SenseKey = SenseKey(0xf);

    pub fn name(self) -> &'static str {
        match self.0 {
            0x0 => "NO SENSE",
            0x1 => "RECOVERED ERROR",
            0x2 => "NOT READY",
            0x3 => "MEDIUM ERROR",
            0x4 => "HARDWARE ERROR",
            0x5 => "ILLEGAL REQUEST",
            0x6 => "UNIT ATTENTION",
            0x7 => "DATA PROTECT",
            0x8 => "BLANK CHECK",
            0x9 => "VENDOR SPECIFIC",
            0xa => "COPY ABORTED",
            0xb => "ABORTED COMMAND",
            0xd => "VOLUME OVERFLOW",
            0xe => "MISCOMPARE",
            0xf => "COMPLETED",
            _ => "RESERVED",
        }
    }
}

impl fmt::Display for SenseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Decoded sense data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    /// 0x70..=0x73.
    pub response_code: u8,
    pub key: SenseKey,
    pub asc: u8,
    pub ascq: u8,
    /// The information field (e.g. the failing LBA of a medium error), if
    /// the device marked it valid.
    pub information: Option<u64>,
}

impl Sense {
    /// Decodes sense data as SG_IO returns it (`sb_len_wr` bytes).
    ///
    /// Fixed format needs 14 bytes for ASC/ASCQ; with fewer (but at least
    /// 3) the key is decoded and ASC/ASCQ are 0. Descriptor format needs 4
    /// bytes.
    pub fn parse(b: &[u8]) -> Result<Sense, ScsiError> {
        let Some(&first) = b.first() else {
            return Err(ScsiError::short("sense data", 0, 1));
        };
        let response_code = first & 0x7f;
        match response_code {
            0x70 | 0x71 => {
                if b.len() < 3 {
                    return Err(ScsiError::short("fixed format sense data", b.len(), 3));
                }
                let (asc, ascq) = match (b.get(12), b.get(13)) {
                    (Some(&a), Some(&q)) => (a, q),
                    _ => (0, 0),
                };
                let information = match b.get(3..7) {
                    Some(i) if first & 0x80 != 0 => {
                        Some(u64::from(u32::from_be_bytes([i[0], i[1], i[2], i[3]])))
                    }
                    _ => None,
                };
                Ok(Sense {
                    response_code,
                    key: SenseKey(b[2] & 0x0f),
                    asc,
                    ascq,
                    information,
                })
            }
            0x72 | 0x73 => {
                if b.len() < 4 {
                    return Err(ScsiError::short("descriptor format sense data", b.len(), 4));
                }
                Ok(Sense {
                    response_code,
                    key: SenseKey(b[1] & 0x0f),
                    asc: b[2],
                    ascq: b[3],
                    information: descriptor_information(b),
                })
            }
            other => Err(ScsiError::malformed(
                "sense data",
                format!("response code 0x{other:02x} is neither fixed nor descriptor format"),
            )),
        }
    }

    /// Descriptor format (0x72/0x73).
    pub fn is_descriptor(&self) -> bool {
        matches!(self.response_code, 0x72 | 0x73)
    }

    /// Deferred error (0x71/0x73): about an earlier command.
    pub fn is_deferred(&self) -> bool {
        matches!(self.response_code, 0x71 | 0x73)
    }

    /// A short text for the additional sense code, for the few codes that
    /// matter to multipath; `None` for the rest.
    pub fn asc_text(&self) -> Option<&'static str> {
        Some(match (self.asc, self.ascq) {
            (0x04, 0x01) => "logical unit is in process of becoming ready",
            (0x04, 0x02) => "logical unit not ready, initializing command required",
            (0x04, 0x03) => "logical unit not ready, manual intervention required",
            (0x04, 0x0a) => "logical unit not accessible, asymmetric access state transition",
            (0x04, 0x0b) => "logical unit not accessible, target port in standby state",
            (0x04, 0x0c) => "logical unit not accessible, target port in unavailable state",
            (0x04, _) => "logical unit not ready",
            (0x11, _) => "unrecovered read error",
            (0x20, 0x00) => "invalid command operation code",
            (0x21, 0x00) => "logical block address out of range",
            (0x24, 0x00) => "invalid field in CDB",
            (0x25, 0x00) => "logical unit not supported",
            (0x27, _) => "write protected",
            (0x28, 0x00) => "not ready to ready change, medium may have changed",
            (0x29, _) => "power on, reset, or bus device reset occurred",
            (0x2a, 0x06) => "asymmetric access state changed",
            (0x3a, _) => "medium not present",
            (0x3f, 0x0e) => "reported LUNs data has changed",
            _ => return None,
        })
    }
}

/// The information descriptor (type 0) of descriptor format sense data.
fn descriptor_information(b: &[u8]) -> Option<u64> {
    let add_len = usize::from(*b.get(7)?);
    let mut d = b.get(8..(8 + add_len).min(b.len()))?;
    while d.len() >= 2 {
        let len = usize::from(d[1]);
        let body = d.get(2..2 + len)?;
        if d[0] == 0x00 && len >= 0x0a && body[0] & 0x80 != 0 {
            let mut v = [0u8; 8];
            v.copy_from_slice(&body[2..10]);
            return Some(u64::from_be_bytes(v));
        }
        d = &d[2 + len..];
    }
    None
}

impl fmt::Display for Sense {
    /// E.g. `"NOT READY, ASC/ASCQ 04/0b (logical unit not accessible,
    /// target port in standby state)"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}, ASC/ASCQ {:02x}/{:02x}",
            self.key, self.asc, self.ascq
        )?;
        if let Some(t) = self.asc_text() {
            write!(f, " ({t})")?;
        }
        if let Some(i) = self.information {
            write!(f, ", information 0x{i:x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn fixed(key: u8, asc: u8, ascq: u8) -> Vec<u8> {
        let mut b = vec![0u8; 18];
        b[0] = 0x70;
        b[2] = key;
        b[7] = 10;
        b[12] = asc;
        b[13] = ascq;
        b
    }

    pub(crate) fn descriptor(key: u8, asc: u8, ascq: u8) -> Vec<u8> {
        vec![0x72, key, asc, ascq, 0, 0, 0, 0]
    }

    #[test]
    fn fixed_format() {
        let s = Sense::parse(&fixed(0x2, 0x04, 0x0b)).unwrap();
        assert_eq!(s.key, SenseKey::NOT_READY);
        assert_eq!((s.asc, s.ascq), (0x04, 0x0b));
        assert!(!s.is_descriptor());
        assert_eq!(
            s.to_string(),
            "NOT READY, ASC/ASCQ 04/0b (logical unit not accessible, target port in standby state)"
        );
    }

    #[test]
    fn fixed_with_information() {
        let mut b = fixed(0x3, 0x11, 0x00);
        b[0] = 0xf0;
        b[3..7].copy_from_slice(&0x1234u32.to_be_bytes());
        let s = Sense::parse(&b).unwrap();
        assert_eq!(s.key, SenseKey::MEDIUM_ERROR);
        assert_eq!(s.information, Some(0x1234));
        assert!(s.to_string().contains("information 0x1234"));
    }

    #[test]
    fn short_fixed_has_key_only() {
        let s = Sense::parse(&[0x70, 0, 0x06]).unwrap();
        assert_eq!(s.key, SenseKey::UNIT_ATTENTION);
        assert_eq!((s.asc, s.ascq), (0, 0));
    }

    #[test]
    fn descriptor_format() {
        let s = Sense::parse(&descriptor(0x5, 0x25, 0x00)).unwrap();
        assert!(s.is_descriptor());
        assert_eq!(s.key, SenseKey::ILLEGAL_REQUEST);
        assert_eq!(s.asc_text(), Some("logical unit not supported"));
        let mut d = descriptor(0x3, 0x11, 0x00);
        d[7] = 12;
        d.extend_from_slice(&[0x00, 0x0a, 0x80, 0, 0, 0, 0, 0, 0, 0, 0x10, 0x00]);
        assert_eq!(Sense::parse(&d).unwrap().information, Some(0x1000));
        let s = Sense::parse(&[0x73, 0x06, 0x29, 0x00]).unwrap();
        assert!(s.is_deferred());
    }

    #[test]
    fn bad_sense() {
        assert!(Sense::parse(&[]).is_err());
        assert!(Sense::parse(&[0x70, 0]).is_err());
        assert!(Sense::parse(&[0x72, 0, 0]).is_err());
        assert!(matches!(
            Sense::parse(&[0x7f, 0, 0, 0]),
            Err(ScsiError::Malformed { .. })
        ));
    }
}
