//! REPORT TARGET PORT GROUPS (SPC-4 6.36): the command block and a decoder
//! of its parameter data, the asymmetric access state of every target port
//! group of a logical unit (ALUA).
//!
//! The data is a 4-byte RETURN DATA LENGTH (the bytes that follow it),
//! then, in the extended format (byte 4's FORMAT TYPE is 001b), 4 more
//! header bytes with the implicit transition time, then one descriptor per
//! target port group: 8 bytes (PREF and the access state, the supported
//! states, the group number, a status code, a vendor byte and a port
//! count) and 4 bytes per target port (its relative target port
//! identifier in the last two).
//!
//! Decoding is strict about what the lengths say: a length field that
//! promises more bytes than were transferred, or a descriptor that runs
//! past the transferred bytes, is a [`ScsiError`] saying where, never a
//! panic and never a guess. Bytes after the return data (a larger
//! allocation than needed) are ignored, with one tolerance the kernel's
//! ALUA handler and multipath-tools share: a descriptor that *starts*
//! inside the return data is read whole from the transferred bytes. Linux
//! LIO (seen with 6.1) leaves the extended header's 4 bytes out of RETURN
//! DATA LENGTH, so its last descriptor ends 4 bytes past it. Like the Linux kernel's ALUA device handler,
//! the extended header is recognised by byte 4 alone (bits 6..4 = 001b);
//! in the length-only format those bits are reserved bits of the first
//! descriptor and otherwise ignored.

use std::fmt;

use super::ScsiError;

/// MAINTENANCE IN, the operation code of REPORT TARGET PORT GROUPS.
pub const OPCODE: u8 = 0xa3;
/// The service action of REPORT TARGET PORT GROUPS.
pub const SERVICE_ACTION: u8 = 0x0a;
/// The CDB's PARAMETER DATA FORMAT asking for the extended header.
const FORMAT_EXTENDED: u8 = 0x20;

const WHAT: &str = "REPORT TARGET PORT GROUPS data";
/// The RETURN DATA LENGTH field.
const LENGTH_FIELD: usize = 4;
/// The extended header after the length field.
const EXTENDED_HEADER: usize = 4;
/// A target port group descriptor without its target ports.
const DESCRIPTOR: usize = 8;
/// One target port descriptor.
const PORT: usize = 4;

/// The 12-byte REPORT TARGET PORT GROUPS command block asking for at most
/// `alloc_len` bytes, in the extended format when `extended` (a device
/// that does not know it answers in the length-only format, which
/// [`parse`] reads as well).
pub fn cdb(alloc_len: u32, extended: bool) -> [u8; 12] {
    let len = alloc_len.to_be_bytes();
    let format = if extended { FORMAT_EXTENDED } else { 0 };
    [
        OPCODE,
        format | SERVICE_ACTION,
        0,
        0,
        0,
        0,
        len[0],
        len[1],
        len[2],
        len[3],
        0,
        0,
    ]
}

/// How many bytes the whole parameter data takes (4 plus the RETURN DATA
/// LENGTH), once at least the length field was read; `None` before. An
/// edge whose buffer was smaller asks again with this many.
pub fn required_len(b: &[u8]) -> Option<usize> {
    let field: [u8; 4] = b.get(..LENGTH_FIELD)?.try_into().ok()?;
    usize::try_from(u32::from_be_bytes(field))
        .ok()?
        .checked_add(LENGTH_FIELD)
}

/// A target port group's asymmetric access state (SPC-4 table 169).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccessState {
    /// 0h: active/optimized.
    ActiveOptimized,
    /// 1h: active/non-optimized.
    ActiveNonOptimized,
    /// 2h: standby.
    Standby,
    /// 3h: unavailable.
    Unavailable,
    /// 4h: logical block dependent.
    LbaDependent,
    /// Eh: offline.
    Offline,
    /// Fh: transitioning between states.
    Transitioning,
    /// 5h..Dh: reserved values (an array bug).
    Reserved(u8),
}

impl AccessState {
    /// The state in the low 4 bits of `v`.
    pub fn from_bits(v: u8) -> AccessState {
        match v & 0x0f {
            0x0 => AccessState::ActiveOptimized,
            0x1 => AccessState::ActiveNonOptimized,
            0x2 => AccessState::Standby,
            0x3 => AccessState::Unavailable,
            0x4 => AccessState::LbaDependent,
            0xe => AccessState::Offline,
            0xf => AccessState::Transitioning,
            n => AccessState::Reserved(n),
        }
    }

    /// The 4-bit code.
    pub fn bits(self) -> u8 {
        match self {
            AccessState::ActiveOptimized => 0x0,
            AccessState::ActiveNonOptimized => 0x1,
            AccessState::Standby => 0x2,
            AccessState::Unavailable => 0x3,
            AccessState::LbaDependent => 0x4,
            AccessState::Offline => 0xe,
            AccessState::Transitioning => 0xf,
            AccessState::Reserved(n) => n & 0x0f,
        }
    }

    /// The name multipath-tools and the kernel's `access_state` attribute
    /// use.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessState::ActiveOptimized => "active/optimized",
            AccessState::ActiveNonOptimized => "active/non-optimized",
            AccessState::Standby => "standby",
            AccessState::Unavailable => "unavailable",
            AccessState::LbaDependent => "lba-dependent",
            AccessState::Offline => "offline",
            AccessState::Transitioning => "transitioning",
            AccessState::Reserved(_) => "reserved",
        }
    }
}

impl fmt::Display for AccessState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AccessState::Reserved(n) => write!(f, "reserved (0x{n:x})"),
            s => f.write_str(s.as_str()),
        }
    }
}

/// One target port group descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortGroup {
    /// The target port group number.
    pub id: u16,
    pub state: AccessState,
    /// PREF: the group is a preferred target port group.
    pub preferred: bool,
    /// Byte 1 as sent: the states the group supports (T_SUP, O_SUP,
    /// LBD_SUP, U_SUP, S_SUP, AN_SUP, AO_SUP from bit 7 down, bit 5
    /// reserved).
    pub supported: u8,
    /// Why the state is what it is (0 none, 1 set by SET TARGET PORT
    /// GROUPS, 2 implicit change).
    pub status: u8,
    /// The relative target port identifiers of the group's ports.
    pub ports: Vec<u16>,
}

/// The header format of the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderFormat {
    /// Only the RETURN DATA LENGTH.
    LengthOnly,
    /// The extended header, with the implicit transition time in seconds
    /// (0: not specified).
    Extended { implicit_transition_secs: u8 },
}

/// Decoded REPORT TARGET PORT GROUPS data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetPortGroups {
    pub format: HeaderFormat,
    /// The descriptors in the order sent.
    pub groups: Vec<PortGroup>,
}

impl TargetPortGroups {
    /// The first descriptor of group `id` (multipath-tools uses the first
    /// when an array repeats one).
    pub fn group(&self, id: u16) -> Option<&PortGroup> {
        self.groups.iter().find(|g| g.id == id)
    }

    /// The first group that lists the relative target port `port`.
    pub fn group_of_port(&self, port: u16) -> Option<&PortGroup> {
        self.groups.iter().find(|g| g.ports.contains(&port))
    }
}

/// Decodes REPORT TARGET PORT GROUPS parameter data, in either header
/// format. `b` is what the device transferred (it may be longer than the
/// data: the rest is ignored).
pub fn parse(b: &[u8]) -> Result<TargetPortGroups, ScsiError> {
    let Some(total) = required_len(b) else {
        return Err(ScsiError::short(WHAT, b.len(), LENGTH_FIELD));
    };
    let Some(data) = b.get(LENGTH_FIELD..total) else {
        return Err(ScsiError::short(WHAT, b.len(), total));
    };
    let (format, mut rest, mut offset) = match data.first() {
        Some(&b4) if b4 & 0x70 == 0x10 => {
            let Some(after) = data.get(EXTENDED_HEADER..) else {
                return Err(ScsiError::malformed(
                    WHAT,
                    format!(
                        "the extended header needs {EXTENDED_HEADER} bytes but the return data \
                         length is {}",
                        data.len()
                    ),
                ));
            };
            (
                HeaderFormat::Extended {
                    implicit_transition_secs: data[1],
                },
                after,
                LENGTH_FIELD + EXTENDED_HEADER,
            )
        }
        _ => (HeaderFormat::LengthOnly, data, LENGTH_FIELD),
    };
    // Descriptors start inside the return data; they are read from what
    // was transferred (see the module's note on LIO).
    let end = total;
    let transferred = b.get(offset..).unwrap_or_default();
    debug_assert!(rest.len() <= transferred.len());
    rest = transferred;
    let mut groups = Vec::new();
    while offset < end {
        let n = groups.len() + 1;
        let Some(head) = rest.get(..DESCRIPTOR) else {
            return Err(ScsiError::malformed(
                WHAT,
                format!(
                    "target port group descriptor {n} at byte {offset} needs {DESCRIPTOR} bytes, \
                     only {} remain in the data transferred",
                    rest.len()
                ),
            ));
        };
        let id = u16::from_be_bytes([head[2], head[3]]);
        let count = usize::from(head[7]);
        let len = DESCRIPTOR + count * PORT;
        let Some(desc) = rest.get(..len) else {
            return Err(ScsiError::malformed(
                WHAT,
                format!(
                    "target port group descriptor {n} at byte {offset} (group {id}) lists \
                     {count} ports ({len} bytes), only {} remain in the data transferred",
                    rest.len()
                ),
            ));
        };
        let ports = desc[DESCRIPTOR..]
            .chunks_exact(PORT)
            .map(|p| u16::from_be_bytes([p[2], p[3]]))
            .collect();
        groups.push(PortGroup {
            id,
            state: AccessState::from_bits(head[0]),
            preferred: head[0] & 0x80 != 0,
            supported: head[1],
            status: head[5],
            ports,
        });
        rest = &rest[len..];
        offset += len;
    }
    Ok(TargetPortGroups { format, groups })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A descriptor: state byte (PREF | AAS), group, ports.
    pub(crate) fn desc(b0: u8, id: u16, ports: &[u16]) -> Vec<u8> {
        let id = id.to_be_bytes();
        let mut d = vec![b0, 0x8f, id[0], id[1], 0, 0x02, 0, ports.len() as u8];
        for p in ports {
            let p = p.to_be_bytes();
            d.extend_from_slice(&[0, 0, p[0], p[1]]);
        }
        d
    }

    /// Length-only data with `descs`.
    pub(crate) fn data(descs: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = descs.concat();
        let mut b = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
        b.extend_from_slice(&body);
        b
    }

    fn extended(secs: u8, descs: &[Vec<u8>]) -> Vec<u8> {
        let mut body = vec![0x10, secs, 0, 0];
        body.extend(descs.concat());
        let mut b = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
        b.extend_from_slice(&body);
        b
    }

    #[test]
    fn cdb_layout() {
        let c = cdb(0x0001_0203, false);
        assert_eq!(c, [0xa3, 0x0a, 0, 0, 0, 0, 0x00, 0x01, 0x02, 0x03, 0, 0]);
        assert_eq!(cdb(4096, true)[1], 0x2a);
    }

    #[test]
    fn two_groups_length_only() {
        let b = data(&[desc(0x80, 1, &[1, 3]), desc(0x01, 2, &[2])]);
        let t = parse(&b).unwrap();
        assert_eq!(t.format, HeaderFormat::LengthOnly);
        assert_eq!(t.groups.len(), 2);
        let g1 = t.group(1).unwrap();
        assert_eq!(g1.state, AccessState::ActiveOptimized);
        assert!(g1.preferred);
        assert_eq!(g1.ports, vec![1, 3]);
        assert_eq!(g1.supported, 0x8f);
        assert_eq!(g1.status, 2);
        let g2 = t.group(2).unwrap();
        assert_eq!(g2.state, AccessState::ActiveNonOptimized);
        assert!(!g2.preferred);
        assert_eq!(t.group_of_port(3).map(|g| g.id), Some(1));
        assert_eq!(t.group_of_port(2).map(|g| g.id), Some(2));
        assert!(t.group(9).is_none());
        assert!(t.group_of_port(9).is_none());
    }

    #[test]
    fn extended_header() {
        let b = extended(60, &[desc(0x02, 0x0102, &[7]), desc(0x0f, 3, &[])]);
        let t = parse(&b).unwrap();
        assert_eq!(
            t.format,
            HeaderFormat::Extended {
                implicit_transition_secs: 60
            }
        );
        assert_eq!(t.group(0x0102).unwrap().state, AccessState::Standby);
        assert_eq!(t.group(3).unwrap().state, AccessState::Transitioning);
        // An extended header alone: no groups.
        assert_eq!(parse(&extended(0, &[])).unwrap().groups, vec![]);
        // Return data shorter than the extended header it announces.
        let e = parse(&[0, 0, 0, 2, 0x10, 5]).unwrap_err();
        assert!(e.to_string().contains("extended header"), "{e}");
    }

    #[test]
    fn every_state_decodes() {
        for (bits, s) in [
            (0x0, AccessState::ActiveOptimized),
            (0x1, AccessState::ActiveNonOptimized),
            (0x2, AccessState::Standby),
            (0x3, AccessState::Unavailable),
            (0x4, AccessState::LbaDependent),
            (0xe, AccessState::Offline),
            (0xf, AccessState::Transitioning),
            (0x7, AccessState::Reserved(7)),
        ] {
            assert_eq!(AccessState::from_bits(bits), s);
            assert_eq!(s.bits(), bits);
        }
        assert_eq!(AccessState::Reserved(7).to_string(), "reserved (0x7)");
        assert_eq!(AccessState::Standby.to_string(), "standby");
    }

    #[test]
    fn empty_and_extra_bytes() {
        assert!(parse(&[0, 0, 0, 0]).unwrap().groups.is_empty());
        // An allocation larger than the data: the rest is ignored.
        let mut b = data(&[desc(0x00, 5, &[1])]);
        b.extend_from_slice(&[0xff; 64]);
        assert_eq!(parse(&b).unwrap().groups.len(), 1);
    }

    #[test]
    fn truncated_data_says_how_much_is_needed() {
        let b = data(&[desc(0x00, 1, &[1]), desc(0x01, 2, &[2])]);
        let cut = &b[..b.len() - 5];
        assert_eq!(required_len(cut), Some(b.len()));
        assert_eq!(
            parse(cut),
            Err(ScsiError::Short {
                what: WHAT,
                got: cut.len(),
                need: b.len()
            })
        );
        assert!(matches!(
            parse(&[0, 0]),
            Err(ScsiError::Short { need: 4, .. })
        ));
        assert_eq!(required_len(&[0, 0]), None);
        assert_eq!(
            required_len(&[0xff, 0xff, 0xff, 0xff]),
            Some(0xffff_ffff + 4)
        );
    }

    /// What LIO (Linux 6.1, two tcm_loop ports in two groups) sent: in the
    /// extended format, a RETURN DATA LENGTH without the header's 4 bytes.
    #[test]
    fn lio_extended_length_without_its_header_is_read_whole() {
        let mut b = extended(0, &[desc(0x80, 1, &[1]), desc(0x02, 2, &[2])]);
        b[3] -= 4;
        let t = parse(&b).unwrap();
        assert_eq!(t.groups.len(), 2);
        assert_eq!(t.groups[1].id, 2);
        assert_eq!(t.groups[1].state, AccessState::Standby);
        assert_eq!(t.groups[1].ports, vec![2]);
        // A descriptor starting at or after the end of the return data is
        // not read, even when bytes follow (a larger allocation).
        let mut b = data(&[desc(0x00, 1, &[])]);
        b.extend(desc(0x00, 2, &[]));
        assert_eq!(parse(&b).unwrap().groups.len(), 1);
    }

    #[test]
    fn lying_lengths_are_errors_with_context() {
        // The port count promises more ports than the return data holds.
        let mut d = desc(0x00, 4, &[1]);
        d[7] = 9;
        let b = data(&[d]);
        let e = parse(&b).unwrap_err().to_string();
        assert!(
            e.contains("descriptor 1 at byte 4 (group 4) lists 9 ports (44 bytes), only 12 remain"),
            "{e}"
        );
        // The return data length and the transfer cut a descriptor header.
        let mut b = data(&[desc(0x00, 1, &[]), desc(0x00, 2, &[])]);
        b[3] = 12;
        b.truncate(16);
        let e = parse(&b).unwrap_err().to_string();
        assert!(
            e.contains("descriptor 2 at byte 12 needs 8 bytes, only 4 remain"),
            "{e}"
        );
        // A huge length field with few bytes: Short, no allocation.
        assert!(matches!(
            parse(&[0x7f, 0xff, 0xff, 0xff, 0, 0]),
            Err(ScsiError::Short { .. })
        ));
    }
}
