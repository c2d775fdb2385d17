//! Standard INQUIRY data (SPC-4 6.6.2).

use super::{ascii_field, ScsiError};

/// Bytes up to and including the revision field.
pub const STD_INQUIRY_MIN: usize = 36;

/// Peripheral device type 0: direct access block device (a disk).
pub const TYPE_DISK: u8 = 0x00;

/// Decoded standard INQUIRY data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StdInquiry {
    /// 0: a device is connected to this LUN; 1: none connected now; 3:
    /// no device can be connected to this LUN.
    pub qualifier: u8,
    /// Peripheral device type (0 = disk, 5 = CD/DVD, 0x0d = enclosure...).
    pub device_type: u8,
    pub removable: bool,
    /// Claimed standard (6 = SPC-4, 7 = SPC-5).
    pub version: u8,
    /// Target port group support (ALUA): 0 none, 1 implicit, 2 explicit,
    /// 3 both.
    pub tpgs: u8,
    /// The 8, 16 and 4 bytes as sent (space padded). `scsi_id` builds the
    /// page 0x80 and vendor-specific WWIDs from the padded vendor and
    /// product.
    pub raw_vendor: [u8; 8],
    pub raw_product: [u8; 16],
    pub raw_revision: [u8; 4],
    /// Trimmed like multipath-tools trims the sysfs attributes.
    pub vendor: String,
    pub product: String,
    pub revision: String,
}

impl StdInquiry {
    /// Decodes standard INQUIRY data (at least 36 bytes).
    pub fn parse(b: &[u8]) -> Result<StdInquiry, ScsiError> {
        if b.len() < STD_INQUIRY_MIN {
            return Err(ScsiError::short(
                "standard INQUIRY data",
                b.len(),
                STD_INQUIRY_MIN,
            ));
        }
        let mut raw_vendor = [0u8; 8];
        raw_vendor.copy_from_slice(&b[8..16]);
        let mut raw_product = [0u8; 16];
        raw_product.copy_from_slice(&b[16..32]);
        let mut raw_revision = [0u8; 4];
        raw_revision.copy_from_slice(&b[32..36]);
        Ok(StdInquiry {
            qualifier: b[0] >> 5,
            device_type: b[0] & 0x1f,
            removable: b[1] & 0x80 != 0,
            version: b[2],
            tpgs: (b[5] >> 4) & 0x03,
            vendor: ascii_field(&raw_vendor),
            product: ascii_field(&raw_product),
            revision: ascii_field(&raw_revision),
            raw_vendor,
            raw_product,
            raw_revision,
        })
    }

    /// Builds the identity from sysfs text attributes (`vendor`, `model`,
    /// `rev`), which the kernel prints as the padded fields: trailing
    /// newline removed, then padded with spaces (or cut) to 8/16/4 bytes.
    pub fn from_strings(vendor: &str, product: &str, revision: &str) -> StdInquiry {
        fn fixed<const N: usize>(s: &str) -> [u8; N] {
            let mut out = [b' '; N];
            let t = s.trim_end_matches(['\n', '\r']).as_bytes();
            let n = t.len().min(N);
            out[..n].copy_from_slice(&t[..n]);
            out
        }
        let raw_vendor = fixed::<8>(vendor);
        let raw_product = fixed::<16>(product);
        let raw_revision = fixed::<4>(revision);
        StdInquiry {
            qualifier: 0,
            device_type: TYPE_DISK,
            removable: false,
            version: 0,
            tpgs: 0,
            vendor: ascii_field(&raw_vendor),
            product: ascii_field(&raw_product),
            revision: ascii_field(&raw_revision),
            raw_vendor,
            raw_product,
            raw_revision,
        }
    }

    /// True if a device is connected at this LUN (qualifier 0).
    pub fn connected(&self) -> bool {
        self.qualifier == 0
    }

    /// The peripheral device type's name, as `lsscsi` prints it.
    pub fn type_name(&self) -> &'static str {
        device_type_name(self.device_type)
    }

    /// How the LUN supports asymmetric access (the TPGS field).
    pub fn alua_support(&self) -> Tpgs {
        Tpgs::from_bits(self.tpgs)
    }
}

/// Target port group support (the TPGS field of standard INQUIRY data,
/// byte 5 bits 5..4): whether and how the LUN does ALUA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tpgs {
    /// 00b: no asymmetric access.
    None,
    /// 01b: implicit only (the device changes states itself).
    Implicit,
    /// 10b: explicit only (SET TARGET PORT GROUPS).
    Explicit,
    /// 11b: both.
    Both,
}

impl Tpgs {
    /// The field in the low 2 bits of `v`.
    pub fn from_bits(v: u8) -> Tpgs {
        match v & 0x03 {
            0 => Tpgs::None,
            1 => Tpgs::Implicit,
            2 => Tpgs::Explicit,
            _ => Tpgs::Both,
        }
    }

    /// The field from standard INQUIRY data, which needs only its first 6
    /// bytes (what a short INQUIRY or the sysfs `inquiry` attribute gives).
    pub fn from_inquiry(b: &[u8]) -> Result<Tpgs, ScsiError> {
        match b.get(5) {
            Some(b5) => Ok(Tpgs::from_bits(b5 >> 4)),
            None => Err(ScsiError::short("standard INQUIRY data", b.len(), 6)),
        }
    }

    /// The LUN reports target port groups (any value but `None`).
    pub fn supported(self) -> bool {
        self != Tpgs::None
    }

    /// Explicit transitions are supported (`Explicit` or `Both`).
    pub fn explicit(self) -> bool {
        matches!(self, Tpgs::Explicit | Tpgs::Both)
    }
}

/// The name of a peripheral device type.
pub fn device_type_name(t: u8) -> &'static str {
    match t {
        0x00 => "disk",
        0x01 => "tape",
        0x02 => "printer",
        0x03 => "process",
        0x04 => "worm",
        0x05 => "cd/dvd",
        0x06 => "scanner",
        0x07 => "optical",
        0x08 => "mediumx",
        0x09 => "comms",
        0x0c => "storage",
        0x0d => "enclosu",
        0x0e => "sim dsk",
        0x0f => "opti rd",
        0x10 => "bridge",
        0x11 => "osd",
        0x12 => "adi",
        0x14 => "zbc",
        0x1e => "wlun",
        0x1f => "no dev",
        _ => "unknown",
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Standard INQUIRY of a QEMU scsi-hd with vendor OSNEXUS, product
    /// QUANTASTOR, version 2.5+ (SPC-3, additional length 0x1f).
    pub(crate) fn quantastor() -> Vec<u8> {
        let mut b = vec![0x00, 0x00, 0x05, 0x12, 0x1f, 0x00, 0x00, 0x12];
        b.extend_from_slice(b"OSNEXUS ");
        b.extend_from_slice(b"QUANTASTOR      ");
        b.extend_from_slice(b"2.5+");
        b
    }

    #[test]
    fn quantastor_inquiry() {
        let q = StdInquiry::parse(&quantastor()).unwrap();
        assert_eq!(q.vendor, "OSNEXUS");
        assert_eq!(q.product, "QUANTASTOR");
        assert_eq!(q.revision, "2.5+");
        assert_eq!(&q.raw_vendor, b"OSNEXUS ");
        assert_eq!(q.device_type, TYPE_DISK);
        assert_eq!(q.type_name(), "disk");
        assert!(q.connected());
        assert!(!q.removable);
        assert_eq!(q.version, 5);
    }

    #[test]
    fn qualifier_type_removable_tpgs() {
        let mut b = quantastor();
        b[0] = 0x7f; // qualifier 3, type 0x1f: no device
        b[1] = 0x80;
        b[5] = 0x30;
        let q = StdInquiry::parse(&b).unwrap();
        assert_eq!(q.qualifier, 3);
        assert_eq!(q.device_type, 0x1f);
        assert!(!q.connected());
        assert!(q.removable);
        assert_eq!(q.tpgs, 3);
        assert_eq!(q.alua_support(), Tpgs::Both);
    }

    #[test]
    fn nul_padded_fields_are_cut() {
        let mut b = quantastor();
        b[8..16].copy_from_slice(b"QEMU\0\0\0\0");
        assert_eq!(StdInquiry::parse(&b).unwrap().vendor, "QEMU");
    }

    #[test]
    fn short_data_is_an_error() {
        let b = quantastor();
        for n in [0, 1, 5, 35] {
            assert!(matches!(
                StdInquiry::parse(&b[..n]),
                Err(ScsiError::Short { need: 36, .. })
            ));
        }
        // Longer data (vendor specific bytes follow) is fine.
        let mut long = b.clone();
        long.extend_from_slice(&[0u8; 60]);
        assert!(StdInquiry::parse(&long).is_ok());
    }

    #[test]
    fn from_sysfs_strings_pads() {
        let q = StdInquiry::from_strings("OSNEXUS \n", "QUANTASTOR      \n", "2.5+\n");
        assert_eq!(&q.raw_product, b"QUANTASTOR      ");
        assert_eq!(q.product, "QUANTASTOR");
        let q = StdInquiry::from_strings("AB", "C", "");
        assert_eq!(&q.raw_vendor, b"AB      ");
        assert_eq!(q.revision, "");
    }

    #[test]
    fn tpgs_from_short_inquiry() {
        assert_eq!(
            Tpgs::from_inquiry(&[0, 0, 6, 2, 31, 0x10]),
            Ok(Tpgs::Implicit)
        );
        assert_eq!(
            Tpgs::from_inquiry(&[0, 0, 6, 2, 31, 0x20]),
            Ok(Tpgs::Explicit)
        );
        assert_eq!(Tpgs::from_inquiry(&[0, 0, 6, 2, 31, 0x0f]), Ok(Tpgs::None));
        assert!(Tpgs::from_inquiry(&[0, 0, 6]).is_err());
        assert!(Tpgs::Both.explicit() && Tpgs::Both.supported());
        assert!(!Tpgs::Implicit.explicit() && !Tpgs::None.supported());
    }
}
