//! CRC32C (Castagnoli), the iSCSI header and data digest (RFC 7143 §13.1,
//! test vectors from RFC 3720 appendix B.4).
//!
//! The digest is the reflected CRC-32C with the usual initial value and
//! final complement; on the wire it is stored least significant byte
//! first ([`crc32c_bytes`]): 32 zero bytes give `0x8a9136aa`, sent as
//! `aa 36 91 8a`.

/// Which digests a connection uses (negotiated at login; both off during
/// login itself).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Digests {
    /// A CRC32C follows the BHS and AHS.
    pub header: bool,
    /// A CRC32C follows the (padded) data segment, when there is one.
    pub data: bool,
}

impl Digests {
    /// No digests (the login phase, and `HeaderDigest=None,DataDigest=None`).
    pub const NONE: Digests = Digests {
        header: false,
        data: false,
    };
    /// Both digests on.
    pub const BOTH: Digests = Digests {
        header: true,
        data: true,
    };
}

/// Length of one digest on the wire.
pub const DIGEST_LEN: usize = 4;

const POLY: u32 = 0x82f6_3b78; // Castagnoli, reflected

const TABLE: [u32; 256] = make_table();

const fn make_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut k = 0;
        while k < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ POLY
            } else {
                crc >> 1
            };
            k += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

/// A running CRC32C over several slices (a header digest over BHS + AHS,
/// a data digest over data + padding).
#[derive(Debug, Clone, Copy)]
pub struct Crc32c(u32);

impl Default for Crc32c {
    fn default() -> Self {
        Self::new()
    }
}

impl Crc32c {
    /// A fresh CRC.
    pub fn new() -> Self {
        Crc32c(0xffff_ffff)
    }

    /// Adds `data`.
    pub fn update(&mut self, data: &[u8]) {
        let mut crc = self.0;
        for &b in data {
            crc = TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
        }
        self.0 = crc;
    }

    /// The CRC of everything added.
    pub fn finish(&self) -> u32 {
        !self.0
    }
}

/// CRC32C of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut c = Crc32c::new();
    c.update(data);
    c.finish()
}

/// A CRC32C as it goes on the wire (least significant byte first).
pub fn crc32c_bytes(crc: u32) -> [u8; DIGEST_LEN] {
    crc.to_le_bytes()
}

/// The header digest over a BHS and its AHS, as wire bytes.
pub fn header_digest(bhs: &[u8], ahs: &[u8]) -> [u8; DIGEST_LEN] {
    let mut c = Crc32c::new();
    c.update(bhs);
    c.update(ahs);
    crc32c_bytes(c.finish())
}

/// The data digest over a data segment and its padding, as wire bytes.
pub fn data_digest(data: &[u8]) -> [u8; DIGEST_LEN] {
    let mut c = Crc32c::new();
    c.update(data);
    c.update(&[0u8; 3][..pad_len(data.len())]);
    crc32c_bytes(c.finish())
}

/// Bytes of zero padding after a data segment of `len` bytes.
pub fn pad_len(len: usize) -> usize {
    (4 - len % 4) % 4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3720_vectors() {
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c_bytes(crc32c(&[0u8; 32])), [0xaa, 0x36, 0x91, 0x8a]);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62a8_ab43);
        let inc: Vec<u8> = (0u8..32).collect();
        assert_eq!(crc32c(&inc), 0x46dd_794e);
        let dec: Vec<u8> = (0u8..32).rev().collect();
        assert_eq!(crc32c(&dec), 0x113f_db5c);
        // An iSCSI SCSI Read (10) command PDU.
        let read: [u8; 48] = [
            0x01, 0xc0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x14,
            0x00, 0x00, 0x00, 0x18, 0x28, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        ];
        assert_eq!(crc32c(&read), 0xd996_3a56);
        assert_eq!(
            header_digest(&read[..20], &read[20..]),
            0xd996_3a56u32.to_le_bytes()
        );
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn data_digest_covers_padding() {
        assert_eq!(data_digest(b"abcde"), crc32c_bytes(crc32c(b"abcde\0\0\0")));
        assert_eq!(data_digest(b"abcd"), crc32c_bytes(crc32c(b"abcd")));
        assert_eq!(pad_len(0), 0);
        assert_eq!(pad_len(1), 3);
        assert_eq!(pad_len(7), 1);
    }
}
