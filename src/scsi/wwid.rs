//! The WWID of a SCSI device exactly as
//! `scsi_id --whitelisted --replace-whitespace` (systemd's udev helper,
//! which XenServer's `xe sr-probe` reports as SCSIid and multipath-tools
//! uses through udev's ID_SERIAL) computes it.
//!
//! The rules, as a list (the facts are systemd's `scsi_serial.c`):
//!
//! 1. Page 0x83 is used if present. `scsi_id` reads at most 254 bytes of
//!    it. If byte 6 is not zero, the page is taken to be in the old SCSI-2
//!    format (some EMC Symmetrix): the WWID is `3` followed by the hex of
//!    the bytes after the 4-byte header (at most 126 bytes).
//! 2. Otherwise the designators are searched in this preference order,
//!    each pass over all designators in page order, and the first match
//!    wins. Only designators associated with the logical unit count, and
//!    only the binary (1) and ASCII (2) code sets:
//!    NAA 6 (binary, then ASCII), NAA 5 (binary, ASCII), any other NAA
//!    (binary, ASCII), EUI-64 (binary, ASCII), T10 vendor ID (binary,
//!    ASCII), vendor specific (binary, ASCII). SCSI name strings (type 8),
//!    UUIDs and the port designators are never used.
//! 3. The WWID is the designator type as one hex digit (`3` NAA, `2`
//!    EUI-64, `1` T10 vendor ID, `0` vendor specific), then the designator:
//!    binary ones as lowercase hex, ASCII ones as they are. A vendor
//!    specific designator gets the INQUIRY vendor (8 bytes) and product (16
//!    bytes, both space padded) between the digit and the value.
//! 4. Without a usable page 0x83 designator, page 0x80: `S`, the padded
//!    vendor and product, then the serial number bytes.
//! 5. `--replace-whitespace`: leading and trailing whitespace removed,
//!    every run of whitespace inside replaced by one `_`; then every byte
//!    that is not a letter, digit, one of `#+-.:=@_`, part of a `\x`
//!    escape or of a valid multibyte UTF-8 character becomes `_`.
//!
//! So a QEMU disk with `wwn=0x5000c50015ea71ac` has WWID
//! `35000c50015ea71ac`, and an OSNEXUS QUANTASTOR LUN known only by its
//! serial `QS0001` has `SOSNEXUS_QUANTASTOR_QS0001`.

use std::fmt;

use super::inquiry::StdInquiry;
use super::vpd::{self, CodeSet, DesignatorType};
use super::{hex, ScsiError};

/// `scsi_id` reads VPD pages into a buffer of this many bytes.
pub const SCSI_ID_BUFFER: usize = 254;
/// `scsi_id`'s serial buffer; the longest WWID is one less.
pub const MAX_SERIAL_LEN: usize = 256;

/// Where a WWID came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WwidSource {
    /// A page 0x83 designator.
    Designator {
        kind: DesignatorType,
        code_set: CodeSet,
        /// The NAA field for NAA designators.
        naa: Option<u8>,
    },
    /// Page 0x83 in the SCSI-2 format.
    PreSpc3,
    /// Page 0x80 (unit serial number).
    UnitSerial,
}

impl fmt::Display for WwidSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WwidSource::Designator {
                kind, naa: Some(n), ..
            } => write!(f, "VPD 0x83 {kind} {n:x}"),
            WwidSource::Designator { kind, code_set, .. } => {
                let cs = if *code_set == CodeSet::Ascii {
                    " (ASCII)"
                } else {
                    ""
                };
                write!(f, "VPD 0x83 {kind}{cs}")
            }
            WwidSource::PreSpc3 => f.write_str("VPD 0x83 (SCSI-2 format)"),
            WwidSource::UnitSerial => f.write_str("VPD 0x80 serial"),
        }
    }
}

/// A WWID and its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wwid {
    pub id: String,
    pub source: WwidSource,
}

/// One entry of `scsi_id`'s search list.
struct Want {
    kind: DesignatorType,
    naa: Option<u8>,
    code_set: CodeSet,
}

const fn want(kind: DesignatorType, naa: Option<u8>, code_set: CodeSet) -> Want {
    Want {
        kind,
        naa,
        code_set,
    }
}

/// The preference order of step 2 (see the module docs).
const SEARCH: [Want; 12] = [
    want(DesignatorType::Naa, Some(6), CodeSet::Binary),
    want(DesignatorType::Naa, Some(6), CodeSet::Ascii),
    want(DesignatorType::Naa, Some(5), CodeSet::Binary),
    want(DesignatorType::Naa, Some(5), CodeSet::Ascii),
    want(DesignatorType::Naa, None, CodeSet::Binary),
    want(DesignatorType::Naa, None, CodeSet::Ascii),
    want(DesignatorType::Eui64, None, CodeSet::Binary),
    want(DesignatorType::Eui64, None, CodeSet::Ascii),
    want(DesignatorType::T10VendorId, None, CodeSet::Binary),
    want(DesignatorType::T10VendorId, None, CodeSet::Ascii),
    want(DesignatorType::VendorSpecific, None, CodeSet::Binary),
    want(DesignatorType::VendorSpecific, None, CodeSet::Ascii),
];

/// The padded vendor and product, or `None` if either holds a NUL
/// (`scsi_id` refuses to use them then).
fn vendor_product(inq: &StdInquiry) -> Option<Vec<u8>> {
    if inq.raw_vendor.contains(&0) || inq.raw_product.contains(&0) {
        return None;
    }
    let mut v = inq.raw_vendor.to_vec();
    v.extend_from_slice(&inq.raw_product);
    Some(v)
}

/// The raw (not yet whitespace-replaced) identifier from page 0x83.
fn from_page83(inq: &StdInquiry, page: &[u8]) -> Result<(Vec<u8>, WwidSource), ScsiError> {
    let page = &page[..page.len().min(SCSI_ID_BUFFER)];
    if page.len() < 4 {
        return Err(ScsiError::short("VPD page 0x83", page.len(), 4));
    }
    if page[1] != vpd::PAGE_DEVICE_ID {
        return Err(ScsiError::WrongPage {
            want: vpd::PAGE_DEVICE_ID,
            got: page[1],
        });
    }
    if page.get(6).is_some_and(|&b| b != 0) {
        let n = usize::from(page[3]).min(126);
        let bytes = page.get(4..(4 + n).min(page.len())).unwrap_or_default();
        let mut s = b"3".to_vec();
        s.extend_from_slice(hex(bytes).as_bytes());
        return Ok((s, WwidSource::PreSpc3));
    }
    let ds = vpd::designators(page)?;
    for w in &SEARCH {
        for d in &ds {
            if d.association != vpd::Association::Lun
                || d.kind != w.kind
                || d.code_set != w.code_set
            {
                continue;
            }
            if let Some(naa) = w.naa {
                if d.id.first().map(|b| b >> 4) != Some(naa) {
                    continue;
                }
            }
            let mut need = match d.code_set {
                CodeSet::Ascii => d.id.len(),
                _ => d.id.len() * 2,
            } + 2;
            if d.kind == DesignatorType::VendorSpecific {
                need += 24;
            }
            if need > MAX_SERIAL_LEN {
                continue;
            }
            let mut s = vec![hex(&[d.kind.bits()]).as_bytes()[1]];
            if d.kind == DesignatorType::VendorSpecific {
                let Some(vp) = vendor_product(inq) else {
                    continue;
                };
                s.extend_from_slice(&vp);
            }
            match d.code_set {
                CodeSet::Ascii => s.extend_from_slice(&d.id),
                _ => s.extend_from_slice(hex(&d.id).as_bytes()),
            }
            let naa = (d.kind == DesignatorType::Naa).then(|| d.naa()).flatten();
            return Ok((
                s,
                WwidSource::Designator {
                    kind: d.kind,
                    code_set: d.code_set,
                    naa,
                },
            ));
        }
    }
    Err(ScsiError::Absent(
        "VPD page 0x83 has no designator scsi_id uses".into(),
    ))
}

/// The raw identifier from page 0x80.
fn from_page80(inq: &StdInquiry, page: &[u8]) -> Result<Vec<u8>, ScsiError> {
    let page = &page[..page.len().min(SCSI_ID_BUFFER)];
    if page.len() < 4 {
        return Err(ScsiError::short("VPD page 0x80", page.len(), 4));
    }
    if page[1] != vpd::PAGE_UNIT_SERIAL {
        return Err(ScsiError::WrongPage {
            want: vpd::PAGE_UNIT_SERIAL,
            got: page[1],
        });
    }
    let len = usize::from(page[3]);
    if 1 + 24 + len > MAX_SERIAL_LEN {
        return Err(ScsiError::malformed(
            "VPD page 0x80",
            format!("serial number of {len} bytes is too long"),
        ));
    }
    let vp = vendor_product(inq)
        .ok_or_else(|| ScsiError::malformed("standard INQUIRY data", "NUL in vendor or product"))?;
    let mut s = b"S".to_vec();
    s.extend_from_slice(&vp);
    // Bytes past the end of what the device sent read as zeroes in
    // scsi_id's buffer, ending the string.
    s.extend_from_slice(page.get(4..(4 + len).min(page.len())).unwrap_or_default());
    Ok(s)
}

/// The WWID from the standard INQUIRY data and the VPD pages the device
/// has (`None`: the page is not supported / not available). Page 0x83 is
/// tried first, then page 0x80, as `scsi_id` does when page 0x00 lists
/// both. The error says why neither gave an identifier.
pub fn scsi_id(
    inq: &StdInquiry,
    pg83: Option<&[u8]>,
    pg80: Option<&[u8]>,
) -> Result<Wwid, ScsiError> {
    let mut why = Vec::new();
    if let Some(p) = pg83 {
        match from_page83(inq, p) {
            Ok((raw, source)) => {
                if let Some(id) = finish(&raw) {
                    return Ok(Wwid { id, source });
                }
                why.push("page 0x83 identifier is empty".to_string());
            }
            Err(e) => why.push(e.to_string()),
        }
    } else {
        why.push("no VPD page 0x83".to_string());
    }
    if let Some(p) = pg80 {
        match from_page80(inq, p) {
            Ok(raw) => {
                if let Some(id) = finish(&raw) {
                    return Ok(Wwid {
                        id,
                        source: WwidSource::UnitSerial,
                    });
                }
                why.push("page 0x80 serial is empty".to_string());
            }
            Err(e) => why.push(e.to_string()),
        }
    } else {
        why.push("no VPD page 0x80".to_string());
    }
    Err(ScsiError::Absent(format!("no WWID: {}", why.join("; "))))
}

/// C string semantics (cut at NUL, at most 255 bytes), then
/// [`replace_whitespace`] and [`replace_chars`]. `None` if nothing is left.
fn finish(raw: &[u8]) -> Option<String> {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let s = &raw[..end.min(MAX_SERIAL_LEN - 1)];
    let s = replace_chars(&replace_whitespace(s));
    (!s.is_empty()).then_some(s)
}

fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// udev's whitespace rule: strip leading space/tab/newline/return and
/// trailing whitespace, and replace each run of whitespace inside by one
/// underscore.
pub fn replace_whitespace(s: &[u8]) -> Vec<u8> {
    let start = s
        .iter()
        .position(|&b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .unwrap_or(s.len());
    let end = s.iter().rposition(|&b| !is_c_space(b)).map_or(0, |i| i + 1);
    let mut out = Vec::with_capacity(s.len());
    let mut in_space = false;
    for &b in s.get(start..end).unwrap_or_default() {
        if is_c_space(b) {
            in_space = true;
        } else {
            if in_space {
                out.push(b'_');
                in_space = false;
            }
            out.push(b);
        }
    }
    out
}

/// Length of the valid multibyte UTF-8 character at the start of `s`
/// (0 if there is none): no overlong forms, surrogates, code points above
/// U+10FFFF or non-characters ending in FFFE/FFFF.
fn utf8_char_len(s: &[u8]) -> usize {
    let n = match s.first() {
        Some(b) if b & 0xe0 == 0xc0 => 2,
        Some(b) if b & 0xf0 == 0xe0 => 3,
        Some(b) if b & 0xf8 == 0xf0 => 4,
        _ => return 0,
    };
    match s.get(..n).and_then(|c| std::str::from_utf8(c).ok()) {
        Some(c) => match c.chars().next() {
            Some(ch) if (u32::from(ch) & 0xfffe) != 0xfffe => n,
            _ => 0,
        },
        None => 0,
    }
}

/// udev's character rule for identifiers: keep ASCII letters and digits,
/// `#+-.:=@_`, `\x` escapes and valid multibyte UTF-8; replace every other
/// byte with `_`.
pub fn replace_chars(s: &[u8]) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let b = s[i];
        if b.is_ascii_alphanumeric() || b"#+-.:=@_".contains(&b) {
            out.push(b);
            i += 1;
        } else if b == b'\\' && s.get(i + 1) == Some(&b'x') {
            out.extend_from_slice(b"\\x");
            i += 2;
        } else {
            let n = utf8_char_len(&s[i..]);
            if n > 1 {
                out.extend_from_slice(&s[i..i + n]);
                i += n;
            } else {
                out.push(b'_');
                i += 1;
            }
        }
    }
    // Only ASCII and complete valid UTF-8 sequences were copied.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::inquiry::tests::quantastor;
    use crate::scsi::vpd::tests::{page, pg80, qemu_pg83};

    fn inq() -> StdInquiry {
        StdInquiry::parse(&quantastor()).unwrap()
    }

    fn desc(code_set: u8, piv_assoc_type: u8, id: &[u8]) -> Vec<u8> {
        let mut d = vec![code_set, piv_assoc_type, 0, u8::try_from(id.len()).unwrap()];
        d.extend_from_slice(id);
        d
    }

    #[test]
    fn qemu_wwn_gives_naa_wwid() {
        let w = scsi_id(&inq(), Some(&qemu_pg83()), Some(&pg80(b"QS0001"))).unwrap();
        assert_eq!(w.id, "35000c50015ea71ac");
        assert_eq!(
            w.source,
            WwidSource::Designator {
                kind: DesignatorType::Naa,
                code_set: CodeSet::Binary,
                naa: Some(5)
            }
        );
        assert_eq!(w.source.to_string(), "VPD 0x83 NAA 5");
    }

    #[test]
    fn serial_only_gives_s_wwid() {
        let w = scsi_id(&inq(), None, Some(&pg80(b"QS0001"))).unwrap();
        assert_eq!(w.id, "SOSNEXUS_QUANTASTOR_QS0001");
        assert_eq!(w.source, WwidSource::UnitSerial);
        // Padding inside the serial collapses too.
        let w = scsi_id(&inq(), None, Some(&pg80(b"  QS 0001  "))).unwrap();
        assert_eq!(w.id, "SOSNEXUS_QUANTASTOR_QS_0001");
    }

    #[test]
    fn qemu_without_wwn_uses_vendor_specific_with_vendor_and_product() {
        // QEMU without wwn: only the ASCII vendor specific designator.
        let p = page(0x83, &desc(0x02, 0x00, b"QS0001"));
        let w = scsi_id(&inq(), Some(&p), Some(&pg80(b"QS0001"))).unwrap();
        assert_eq!(w.id, "0OSNEXUS_QUANTASTOR_QS0001");
    }

    #[test]
    fn preference_order() {
        let naa6 = desc(
            0x01,
            0x03,
            &[0x60, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
        );
        let naa5 = desc(0x01, 0x03, &[0x50, 0, 0xc5, 0, 0x15, 0xea, 0x71, 0xac]);
        let naa3 = desc(0x01, 0x03, &[0x30, 0, 0, 0, 0, 0, 0, 1]);
        let eui = desc(
            0x01,
            0x02,
            &[0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff, 0x00, 0x11],
        );
        let t10 = desc(0x02, 0x01, b"LIO-ORG block1 1234");
        let vs = desc(0x01, 0x00, &[0xde, 0xad]);
        let name = desc(0x03, 0x08, b"iqn.2003-01.org.x:t1,t,0x1");
        let run = |ds: &[&Vec<u8>]| {
            let p = page(
                0x83,
                &ds.iter()
                    .flat_map(|d| d.iter().copied())
                    .collect::<Vec<_>>(),
            );
            scsi_id(&inq(), Some(&p), None).map(|w| w.id)
        };
        assert_eq!(
            run(&[&vs, &t10, &eui, &naa3, &naa5, &naa6]).unwrap(),
            "3600102030405060708090a0b0c0d0e0f"
        );
        assert_eq!(run(&[&naa3, &naa5]).unwrap(), "35000c50015ea71ac");
        assert_eq!(run(&[&eui, &naa3]).unwrap(), "33000000000000001");
        assert_eq!(run(&[&t10, &eui]).unwrap(), "2aabbccddeeff0011");
        assert_eq!(run(&[&vs, &t10]).unwrap(), "1LIO-ORG_block1_1234");
        assert_eq!(run(&[&vs]).unwrap(), "0OSNEXUS_QUANTASTOR_dead");
        // A SCSI name string alone is not used; without page 0x80 there
        // is no WWID.
        assert!(matches!(run(&[&name]), Err(ScsiError::Absent(_))));
    }

    #[test]
    fn only_lun_association_counts() {
        // NAA associated with the target port (0x13): skipped.
        let port = desc(0x01, 0x93, &[0x50, 1, 2, 3, 4, 5, 6, 7]);
        let lun = desc(0x02, 0x01, b"ACME    LUN7");
        let mut both = port.clone();
        both.extend_from_slice(&lun);
        let w = scsi_id(&inq(), Some(&page(0x83, &both)), None).unwrap();
        assert_eq!(w.id, "1ACME_LUN7");
    }

    #[test]
    fn utf8_code_set_is_not_used() {
        let d = desc(0x03, 0x01, b"ACME LUN");
        let w = scsi_id(&inq(), Some(&page(0x83, &d)), Some(&pg80(b"X1")));
        assert_eq!(w.unwrap().id, "SOSNEXUS_QUANTASTOR_X1");
    }

    #[test]
    fn pre_spc3_page() {
        // EMC Symmetrix SCSI-2 format: 16 bytes of WWN right after the
        // header; byte 6 is not zero.
        let p = page(
            0x83,
            &[
                0x60, 0x06, 0x04, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x42,
            ],
        );
        let w = scsi_id(&inq(), Some(&p), None).unwrap();
        assert_eq!(w.id, "360060480000000000000000000000042");
        assert_eq!(w.source, WwidSource::PreSpc3);
    }

    #[test]
    fn fallbacks_and_errors() {
        let e = scsi_id(&inq(), None, None).unwrap_err().to_string();
        assert!(e.contains("no VPD page 0x83"), "{e}");
        // A broken page 0x83 falls back to page 0x80.
        let w = scsi_id(&inq(), Some(&[0, 0x83]), Some(&pg80(b"Z"))).unwrap();
        assert_eq!(w.id, "SOSNEXUS_QUANTASTOR_Z");
        // A NUL in the vendor rules out the 'S' form.
        let mut raw = quantastor();
        raw[12] = 0;
        let q = StdInquiry::parse(&raw).unwrap();
        assert!(scsi_id(&q, None, Some(&pg80(b"Z"))).is_err());
        // All-space identifiers are empty after whitespace removal.
        let p = page(0x83, &desc(0x02, 0x01, b"        "));
        let w = scsi_id(&inq(), Some(&p), None).unwrap();
        assert_eq!(w.id, "1");
    }

    #[test]
    fn whitespace_and_chars() {
        assert_eq!(replace_whitespace(b"  hoge  hoge  "), b"hoge_hoge");
        assert_eq!(replace_whitespace(b"     "), b"");
        assert_eq!(replace_whitespace(b"a\t\x0bb"), b"a_b");
        assert_eq!(replace_chars(b"a/b*c"), "a_b_c");
        assert_eq!(replace_chars(b"x\\x20y"), "x\\x20y");
        assert_eq!(replace_chars("é".as_bytes()), "é");
        assert_eq!(replace_chars(&[0xff, b'a', 0xc3]), "_a_");
        assert_eq!(replace_chars(b"#+-.:=@_"), "#+-.:=@_");
    }
}
