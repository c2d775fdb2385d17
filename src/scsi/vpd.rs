//! Vital product data pages (SPC-4 7.8): 0x00 supported pages, 0x80 unit
//! serial number, 0x83 device identification.

use std::fmt;

use super::{hex, ScsiError};

pub const PAGE_SUPPORTED: u8 = 0x00;
pub const PAGE_UNIT_SERIAL: u8 = 0x80;
pub const PAGE_DEVICE_ID: u8 = 0x83;

/// The 4-byte header of every VPD page.
const HEADER: usize = 4;

/// The payload of a VPD page after its header, checked against the page
/// code asked for. `wide_len`: the page length is bytes 2..4 (page 0x83
/// and most others); otherwise only byte 3 (pages 0x00 and 0x80, where
/// byte 2 is reserved, as `scsi_id` reads them). A page claiming more bytes
/// than present is cut to what is present.
fn payload(b: &[u8], page: u8, wide_len: bool) -> Result<&[u8], ScsiError> {
    if b.len() < HEADER {
        return Err(ScsiError::short("VPD page header", b.len(), HEADER));
    }
    if b[1] != page {
        return Err(ScsiError::WrongPage {
            want: page,
            got: b[1],
        });
    }
    let len = if wide_len {
        usize::from(u16::from_be_bytes([b[2], b[3]]))
    } else {
        usize::from(b[3])
    };
    let end = (HEADER + len).min(b.len());
    Ok(&b[HEADER..end])
}

/// Page 0x00: the VPD page codes the device supports.
pub fn supported_pages(b: &[u8]) -> Result<Vec<u8>, ScsiError> {
    Ok(payload(b, PAGE_SUPPORTED, false)?.to_vec())
}

/// Page 0x80: the unit serial number, as sent (cut at the first NUL; not
/// trimmed: `scsi_id` keeps the padding, and so does the WWID built from
/// it before whitespace replacement).
pub fn unit_serial_raw(b: &[u8]) -> Result<&[u8], ScsiError> {
    let p = payload(b, PAGE_UNIT_SERIAL, false)?;
    let end = p.iter().position(|&c| c == 0).unwrap_or(p.len());
    Ok(&p[..end])
}

/// Page 0x80 as text with leading and trailing spaces removed (the
/// `serial` multipath-tools shows).
pub fn unit_serial(b: &[u8]) -> Result<String, ScsiError> {
    let raw = unit_serial_raw(b)?;
    let s: String = raw.iter().map(|&c| char::from(c)).collect();
    Ok(s.trim().to_string())
}

/// Code set of a designator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeSet {
    Binary,
    Ascii,
    Utf8,
    Reserved(u8),
}

impl CodeSet {
    pub fn from_bits(v: u8) -> CodeSet {
        match v & 0x0f {
            1 => CodeSet::Binary,
            2 => CodeSet::Ascii,
            3 => CodeSet::Utf8,
            n => CodeSet::Reserved(n),
        }
    }

    pub fn bits(self) -> u8 {
        match self {
            CodeSet::Binary => 1,
            CodeSet::Ascii => 2,
            CodeSet::Utf8 => 3,
            CodeSet::Reserved(n) => n,
        }
    }
}

/// What a designator designates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Association {
    /// The logical unit (the only one a WWID is taken from).
    Lun,
    /// The target port the command came through.
    TargetPort,
    /// The SCSI target device.
    TargetDevice,
    Reserved,
}

impl Association {
    pub fn from_bits(v: u8) -> Association {
        match v & 0x03 {
            0 => Association::Lun,
            1 => Association::TargetPort,
            2 => Association::TargetDevice,
            _ => Association::Reserved,
        }
    }

    pub fn bits(self) -> u8 {
        match self {
            Association::Lun => 0,
            Association::TargetPort => 1,
            Association::TargetDevice => 2,
            Association::Reserved => 3,
        }
    }
}

/// Designator type (SPC-4 table 459).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DesignatorType {
    VendorSpecific,
    T10VendorId,
    Eui64,
    Naa,
    RelativeTargetPort,
    TargetPortGroup,
    LogicalUnitGroup,
    Md5LogicalUnit,
    ScsiName,
    ProtocolSpecificPort,
    Uuid,
    Reserved(u8),
}

impl DesignatorType {
    pub fn from_bits(v: u8) -> DesignatorType {
        match v & 0x0f {
            0 => DesignatorType::VendorSpecific,
            1 => DesignatorType::T10VendorId,
            2 => DesignatorType::Eui64,
            3 => DesignatorType::Naa,
            4 => DesignatorType::RelativeTargetPort,
            5 => DesignatorType::TargetPortGroup,
            6 => DesignatorType::LogicalUnitGroup,
            7 => DesignatorType::Md5LogicalUnit,
            8 => DesignatorType::ScsiName,
            9 => DesignatorType::ProtocolSpecificPort,
            0xa => DesignatorType::Uuid,
            n => DesignatorType::Reserved(n),
        }
    }

    /// The 4-bit value; `scsi_id` uses it (as one hex digit) as the first
    /// character of the WWID.
    pub fn bits(self) -> u8 {
        match self {
            DesignatorType::VendorSpecific => 0,
            DesignatorType::T10VendorId => 1,
            DesignatorType::Eui64 => 2,
            DesignatorType::Naa => 3,
            DesignatorType::RelativeTargetPort => 4,
            DesignatorType::TargetPortGroup => 5,
            DesignatorType::LogicalUnitGroup => 6,
            DesignatorType::Md5LogicalUnit => 7,
            DesignatorType::ScsiName => 8,
            DesignatorType::ProtocolSpecificPort => 9,
            DesignatorType::Uuid => 0xa,
            DesignatorType::Reserved(n) => n,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DesignatorType::VendorSpecific => "vendor specific",
            DesignatorType::T10VendorId => "T10 vendor ID",
            DesignatorType::Eui64 => "EUI-64",
            DesignatorType::Naa => "NAA",
            DesignatorType::RelativeTargetPort => "relative target port",
            DesignatorType::TargetPortGroup => "target port group",
            DesignatorType::LogicalUnitGroup => "logical unit group",
            DesignatorType::Md5LogicalUnit => "MD5 logical unit",
            DesignatorType::ScsiName => "SCSI name string",
            DesignatorType::ProtocolSpecificPort => "protocol specific port",
            DesignatorType::Uuid => "UUID",
            DesignatorType::Reserved(_) => "reserved",
        }
    }
}

impl fmt::Display for DesignatorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One designation descriptor of page 0x83.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Designator {
    /// Protocol identifier (meaningful when `piv`).
    pub protocol: u8,
    pub code_set: CodeSet,
    pub piv: bool,
    pub association: Association,
    pub kind: DesignatorType,
    /// The designator bytes.
    pub id: Vec<u8>,
}

impl Designator {
    /// For an NAA designator: the NAA field (the high nibble of the first
    /// byte: 2 IEEE extended, 3 locally assigned, 5 IEEE registered, 6 IEEE
    /// registered extended).
    pub fn naa(&self) -> Option<u8> {
        (self.kind == DesignatorType::Naa)
            .then(|| self.id.first().map(|b| b >> 4))
            .flatten()
    }

    /// For a target port group or relative target port designator: the
    /// 16-bit value in its last two bytes.
    pub fn port_number(&self) -> Option<u16> {
        match self.kind {
            DesignatorType::TargetPortGroup | DesignatorType::RelativeTargetPort
                if self.id.len() >= 4 =>
            {
                Some(u16::from_be_bytes([self.id[2], self.id[3]]))
            }
            _ => None,
        }
    }

    /// The designator as text: binary as lowercase hex, ASCII/UTF-8 as
    /// text (cut at the first NUL).
    pub fn text(&self) -> String {
        match self.code_set {
            CodeSet::Ascii | CodeSet::Utf8 => {
                let end = self
                    .id
                    .iter()
                    .position(|&c| c == 0)
                    .unwrap_or(self.id.len());
                String::from_utf8_lossy(&self.id[..end]).into_owned()
            }
            _ => hex(&self.id),
        }
    }
}

impl fmt::Display for Designator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.text())
    }
}

/// Page 0x83: every complete designation descriptor, in page order. A
/// descriptor running past the end of the page ends the list (the ones
/// before it are kept).
pub fn designators(b: &[u8]) -> Result<Vec<Designator>, ScsiError> {
    let mut p = payload(b, PAGE_DEVICE_ID, true)?;
    let mut out = Vec::new();
    while p.len() >= 4 {
        let len = usize::from(p[3]);
        let Some(id) = p.get(4..4 + len) else {
            break;
        };
        out.push(Designator {
            protocol: p[0] >> 4,
            code_set: CodeSet::from_bits(p[0]),
            piv: p[1] & 0x80 != 0,
            association: Association::from_bits(p[1] >> 4),
            kind: DesignatorType::from_bits(p[1]),
            id: id.to_vec(),
        });
        p = &p[4 + len..];
    }
    Ok(out)
}

/// Page 0x83: the number in the first designator of type `kind` (target
/// port group or relative target port: 4 bytes, the number in the last
/// two), `None` when the page has none.
fn port_designator(b: &[u8], kind: DesignatorType) -> Result<Option<u16>, ScsiError> {
    let Some(d) = designators(b)?.into_iter().find(|d| d.kind == kind) else {
        return Ok(None);
    };
    match d.port_number() {
        Some(n) => Ok(Some(n)),
        None => Err(ScsiError::malformed(
            "VPD page 0x83",
            format!("{kind} designator of {} bytes, need 4", d.id.len()),
        )),
    }
}

/// Page 0x83 read through a path: the target port group of the port it
/// came through (what the ALUA prioritizer looks up in REPORT TARGET PORT
/// GROUPS data). The first such designator counts, as in multipath-tools.
pub fn target_port_group(b: &[u8]) -> Result<Option<u16>, ScsiError> {
    port_designator(b, DesignatorType::TargetPortGroup)
}

/// Page 0x83 read through a path: the relative target port identifier of
/// the port it came through (found in a group's port list when a device
/// sends no target port group designator).
pub fn relative_target_port(b: &[u8]) -> Result<Option<u16>, ScsiError> {
    port_designator(b, DesignatorType::RelativeTargetPort)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Page 0x83 of a QEMU scsi-hd with `wwn=0x5000c50015ea71ac` and
    /// `serial=QS0001`: an ASCII vendor specific designator with the
    /// serial (QEMU sends it first), then the NAA 5 designator.
    pub(crate) fn qemu_pg83() -> Vec<u8> {
        let mut d = vec![0x02, 0x00, 0x00, 0x06];
        d.extend_from_slice(b"QS0001");
        d.extend_from_slice(&[0x01, 0x03, 0x00, 0x08]);
        d.extend_from_slice(&[0x50, 0x00, 0xc5, 0x00, 0x15, 0xea, 0x71, 0xac]);
        page(PAGE_DEVICE_ID, &d)
    }

    pub(crate) fn page(code: u8, payload: &[u8]) -> Vec<u8> {
        let len = u16::try_from(payload.len()).unwrap().to_be_bytes();
        let mut b = vec![0x00, code, len[0], len[1]];
        b.extend_from_slice(payload);
        b
    }

    pub(crate) fn pg80(serial: &[u8]) -> Vec<u8> {
        page(PAGE_UNIT_SERIAL, serial)
    }

    #[test]
    fn qemu_designators() {
        let ds = designators(&qemu_pg83()).unwrap();
        assert_eq!(ds.len(), 2);
        assert_eq!(ds[0].kind, DesignatorType::VendorSpecific);
        assert_eq!(ds[0].code_set, CodeSet::Ascii);
        assert_eq!(ds[0].text(), "QS0001");
        assert_eq!(ds[1].kind, DesignatorType::Naa);
        assert_eq!(ds[1].code_set, CodeSet::Binary);
        assert_eq!(ds[1].association, Association::Lun);
        assert_eq!(ds[1].naa(), Some(5));
        assert_eq!(ds[1].text(), "5000c50015ea71ac");
        assert_eq!(ds[1].to_string(), "NAA: 5000c50015ea71ac");
        assert_eq!(ds[0].naa(), None);
    }

    #[test]
    fn port_group_and_association() {
        // Target port group 2, associated with the target port, PIV set.
        let b = page(
            PAGE_DEVICE_ID,
            &[0x61, 0x95, 0x00, 0x04, 0x00, 0x00, 0x00, 0x02],
        );
        let ds = designators(&b).unwrap();
        assert_eq!(ds[0].kind, DesignatorType::TargetPortGroup);
        assert_eq!(ds[0].association, Association::TargetPort);
        assert!(ds[0].piv);
        assert_eq!(ds[0].protocol, 6);
        assert_eq!(ds[0].port_number(), Some(2));
    }

    #[test]
    fn truncated_descriptor_ends_the_list() {
        let mut b = qemu_pg83();
        b.truncate(b.len() - 3);
        let ds = designators(&b).unwrap();
        assert_eq!(ds.len(), 1);
        // The page length claims more than there is: cut, not an error.
        let mut b = qemu_pg83();
        b[3] = 0xff;
        assert_eq!(designators(&b).unwrap().len(), 2);
    }

    #[test]
    fn wrong_page_and_short_header() {
        assert_eq!(
            designators(&pg80(b"X")),
            Err(ScsiError::WrongPage {
                want: 0x83,
                got: 0x80
            })
        );
        assert!(matches!(
            designators(&[0, 0x83]),
            Err(ScsiError::Short { .. })
        ));
        assert!(supported_pages(&[]).is_err());
    }

    #[test]
    fn supported_pages_list() {
        let b = [0x00, 0x00, 0x00, 0x04, 0x00, 0x80, 0x83, 0xb0];
        assert_eq!(supported_pages(&b).unwrap(), vec![0x00, 0x80, 0x83, 0xb0]);
    }

    #[test]
    fn unit_serial_trims_and_cuts_at_nul() {
        assert_eq!(unit_serial(&pg80(b"  QS0001  ")).unwrap(), "QS0001");
        assert_eq!(unit_serial_raw(&pg80(b"QS0001  ")).unwrap(), b"QS0001  ");
        assert_eq!(unit_serial(&pg80(b"AB\0CD")).unwrap(), "AB");
        assert_eq!(unit_serial(&pg80(b"")).unwrap(), "");
    }

    #[test]
    fn own_port_group_and_relative_port() {
        let b = page(
            PAGE_DEVICE_ID,
            &[
                0x61, 0x94, 0x00, 0x04, 0x00, 0x00, 0x00, 0x03, // relative port 3
                0x61, 0x95, 0x00, 0x04, 0x00, 0x00, 0x00, 0x02, // group 2
                0x61, 0x95, 0x00, 0x04, 0x00, 0x00, 0x00, 0x07, // a second group: ignored
            ],
        );
        assert_eq!(target_port_group(&b), Ok(Some(2)));
        assert_eq!(relative_target_port(&b), Ok(Some(3)));
        assert_eq!(target_port_group(&qemu_pg83()), Ok(None));
        assert_eq!(relative_target_port(&qemu_pg83()), Ok(None));
        // A target port group designator of 2 bytes.
        let short = page(PAGE_DEVICE_ID, &[0x01, 0x15, 0x00, 0x02, 0x00, 0x02]);
        let e = target_port_group(&short).unwrap_err().to_string();
        assert!(e.contains("target port group designator of 2 bytes"), "{e}");
        assert!(target_port_group(&pg80(b"x")).is_err());
    }
}
