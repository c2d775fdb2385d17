//! Text keys (RFC 7143 §6): `key=value\0` pairs in Login and Text PDUs,
//! their limits, binary values (`0x` hex, `0b` base64), the accumulator
//! for text that spans PDUs (the C bit) and SendTargets discovery.

use thiserror::Error;

use super::pdu::{TextRequest, RESERVED_TAG};

/// Longest key name.
pub const MAX_KEY_LEN: usize = 63;
/// Longest value, except binary CHAP values.
pub const MAX_VALUE_LEN: usize = 255;
/// Longest binary CHAP value (`CHAP_C`, `CHAP_R`) as text.
pub const MAX_BINARY_VALUE_LEN: usize = 8192;
/// Most pairs in one exchange.
pub const MAX_PAIRS: usize = 4096;
/// Default cap on the text of one exchange across PDUs.
pub const DEFAULT_TEXT_CAP: usize = 256 * 1024;
/// The iSCSI well-known port.
pub const DEFAULT_PORT: u16 = 3260;

/// What is wrong with a text segment.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TextError {
    /// A pair without `=`.
    #[error("text pair without '=' ({0} bytes)")]
    NoEquals(usize),
    /// An empty key, one too long or with a character keys may not have.
    #[error("invalid key {0:?}")]
    BadKey(String),
    /// A value longer than its limit.
    #[error("value of {key} is {len} bytes, more than {max}")]
    ValueTooLong {
        /// The key.
        key: String,
        /// The value's length.
        len: usize,
        /// Its limit.
        max: usize,
    },
    /// Text that is not UTF-8.
    #[error("text that is not UTF-8")]
    NotUtf8,
    /// The last pair lacks its terminating NUL.
    #[error("text does not end with a NUL")]
    Unterminated,
    /// Too many pairs.
    #[error("more than {0} text pairs")]
    TooManyPairs(usize),
    /// Text across PDUs beyond the cap.
    #[error("text of more than {0} bytes")]
    TooLong(usize),
    /// A binary value that is not valid hex or base64.
    #[error("invalid binary value for {0}")]
    BadBinary(&'static str),
    /// A TargetAddress that is not `host[:port][,tpgt]`.
    #[error("invalid TargetAddress {0:?}")]
    BadAddress(String),
    /// A TargetAddress before any TargetName.
    #[error("TargetAddress {0:?} before any TargetName")]
    AddressWithoutTarget(String),
}

fn key_ok(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= MAX_KEY_LEN
        && k.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'+' | b'@' | b'_'))
}

/// Whether `key` carries a binary value that may be up to
/// [`MAX_BINARY_VALUE_LEN`] bytes long.
pub fn is_long_binary_key(key: &str) -> bool {
    matches!(key, "CHAP_C" | "CHAP_R")
}

/// Parses a complete text segment (each pair ends with a NUL; empty
/// strings between NULs, as some targets pad, are skipped).
pub fn parse(data: &[u8]) -> Result<Vec<(String, String)>, TextError> {
    let mut out = Vec::new();
    if data.is_empty() {
        return Ok(out);
    }
    if data.last() != Some(&0) {
        return Err(TextError::Unterminated);
    }
    for raw in data[..data.len() - 1].split(|&b| b == 0) {
        if raw.is_empty() {
            continue;
        }
        if out.len() == MAX_PAIRS {
            return Err(TextError::TooManyPairs(MAX_PAIRS));
        }
        let s = std::str::from_utf8(raw).map_err(|_| TextError::NotUtf8)?;
        let (k, v) = s.split_once('=').ok_or(TextError::NoEquals(raw.len()))?;
        if !key_ok(k) {
            let shown: String = k.chars().take(MAX_KEY_LEN + 1).collect();
            return Err(TextError::BadKey(shown));
        }
        let max = if is_long_binary_key(k) {
            MAX_BINARY_VALUE_LEN
        } else {
            MAX_VALUE_LEN
        };
        if v.len() > max {
            return Err(TextError::ValueTooLong {
                key: k.to_string(),
                len: v.len(),
                max,
            });
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// Encodes pairs as `key=value\0...`.
pub fn encode<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref().as_bytes());
        out.push(b'=');
        out.extend_from_slice(v.as_ref().as_bytes());
        out.push(0);
    }
    out
}

/// The value of `key` in `pairs` (the first).
pub fn get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Collects text that spans PDUs: segments with the C bit are held until
/// the one without it, then all are parsed together.
#[derive(Debug, Clone)]
pub struct TextAccumulator {
    buf: Vec<u8>,
    cap: usize,
}

impl TextAccumulator {
    /// An accumulator holding at most `cap` bytes.
    pub fn new(cap: usize) -> Self {
        TextAccumulator {
            buf: Vec::new(),
            cap,
        }
    }

    /// Adds a PDU's text; `Some(pairs)` when `continues` is false (the
    /// text is complete), `None` while more is to come.
    pub fn push(
        &mut self,
        data: &[u8],
        continues: bool,
    ) -> Result<Option<Vec<(String, String)>>, TextError> {
        if self.buf.len() + data.len() > self.cap {
            self.buf.clear();
            return Err(TextError::TooLong(self.cap));
        }
        self.buf.extend_from_slice(data);
        if continues {
            return Ok(None);
        }
        let text = std::mem::take(&mut self.buf);
        parse(&text).map(Some)
    }

    /// Whether text is held (a C-bit segment awaits its continuation).
    pub fn is_pending(&self) -> bool {
        !self.buf.is_empty()
    }
}

/// Decodes a binary value: `0x`/`0X` hex (an odd number of digits has an
/// implied leading zero), `0b`/`0B` base64. `key` names the value in errors.
pub fn decode_binary(key: &'static str, v: &str) -> Result<Vec<u8>, TextError> {
    let bad = || TextError::BadBinary(key);
    if let Some(hex) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        if hex.is_empty() {
            return Err(bad());
        }
        let digits: Vec<u8> = hex
            .bytes()
            .map(|c| (c as char).to_digit(16).map(|d| d as u8))
            .collect::<Option<_>>()
            .ok_or_else(bad)?;
        let mut out = Vec::with_capacity(digits.len() / 2 + 1);
        let mut rest = &digits[..];
        if digits.len() % 2 == 1 {
            out.push(digits[0]);
            rest = &digits[1..];
        }
        for pair in rest.chunks_exact(2) {
            out.push(pair[0] << 4 | pair[1]);
        }
        Ok(out)
    } else if let Some(b64) = v.strip_prefix("0b").or_else(|| v.strip_prefix("0B")) {
        decode_base64(b64).ok_or_else(bad)
    } else {
        Err(bad())
    }
}

/// Encodes bytes as `0x` lowercase hex.
pub fn encode_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 + bytes.len() * 2);
    s.push_str("0x");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let s = s.as_bytes();
    if s.is_empty() || s.len() % 4 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let chunks = s.len() / 4;
    for (i, chunk) in s.chunks_exact(4).enumerate() {
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && i + 1 != chunks) {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = n << 6 | val(c)?;
        }
        n <<= 6 * pad as u32;
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..4 - pad]);
    }
    Some(out)
}

/// A target portal: where a target listens, and its portal group tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Portal {
    /// Host name or IP address (IPv6 without brackets).
    pub address: String,
    /// TCP port.
    pub port: u16,
    /// Target Portal Group Tag (1 when the address does not give one).
    pub tpgt: u16,
}

impl std::fmt::Display for Portal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.address.contains(':') {
            write!(f, "[{}]:{},{}", self.address, self.port, self.tpgt)
        } else {
            write!(f, "{}:{},{}", self.address, self.port, self.tpgt)
        }
    }
}

/// Parses a TargetAddress: `host[:port][,tpgt]` or `[v6][:port][,tpgt]`
/// (a bare IPv6 address without brackets is taken whole); the port
/// defaults to 3260 and the tag to 1.
pub fn parse_target_address(s: &str) -> Result<Portal, TextError> {
    let bad = || TextError::BadAddress(s.chars().take(MAX_VALUE_LEN).collect());
    let (hostport, tpgt) = match s.rsplit_once(',') {
        Some((hp, t)) => (hp, t.parse::<u16>().map_err(|_| bad())?),
        None => (s, 1),
    };
    let (address, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let (addr, after) = rest.split_once(']').ok_or_else(bad)?;
        let port = match after {
            "" => DEFAULT_PORT,
            p => p
                .strip_prefix(':')
                .and_then(|p| p.parse().ok())
                .ok_or_else(bad)?,
        };
        (addr, port)
    } else if hostport.matches(':').count() > 1 {
        (hostport, DEFAULT_PORT)
    } else if let Some((h, p)) = hostport.split_once(':') {
        (h, p.parse().map_err(|_| bad())?)
    } else {
        (hostport, DEFAULT_PORT)
    };
    if address.is_empty()
        || address.contains(|c: char| c.is_whitespace() || matches!(c, '/' | '[' | ']'))
    {
        return Err(bad());
    }
    Ok(Portal {
        address: address.to_string(),
        port,
        tpgt,
    })
}

/// One target from SendTargets: its name and the portals it gave.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TargetRecord {
    /// The target's iSCSI name.
    pub name: String,
    /// Its portals (none: reach it on the portal asked).
    pub portals: Vec<Portal>,
}

/// The Text Request asking for `SendTargets=All` (immediate, F set, LUN 0).
pub fn send_targets_request(itt: u32, cmd_sn: u32, exp_stat_sn: u32) -> TextRequest {
    TextRequest {
        immediate: true,
        final_flag: true,
        continue_flag: false,
        lun: 0,
        itt,
        ttt: RESERVED_TAG,
        cmd_sn,
        exp_stat_sn,
        data: encode(&[("SendTargets", "All")]),
    }
}

/// The targets and portals in a SendTargets answer (all its Text
/// Responses' pairs, in order). Other keys are ignored.
pub fn parse_send_targets(pairs: &[(String, String)]) -> Result<Vec<TargetRecord>, TextError> {
    let mut out: Vec<TargetRecord> = Vec::new();
    for (k, v) in pairs {
        match k.as_str() {
            "TargetName" => out.push(TargetRecord {
                name: v.clone(),
                portals: Vec::new(),
            }),
            "TargetAddress" => {
                let portal = parse_target_address(v)?;
                match out.last_mut() {
                    Some(t) => t.portals.push(portal),
                    None => return Err(TextError::AddressWithoutTarget(v.clone())),
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(k: &str, v: &str) -> (String, String) {
        (k.to_string(), v.to_string())
    }

    #[test]
    fn parse_and_encode() {
        let data = encode(&[("HeaderDigest", "None"), ("MaxBurstLength", "262144")]);
        assert_eq!(data, b"HeaderDigest=None\0MaxBurstLength=262144\0");
        assert_eq!(
            parse(&data).unwrap(),
            vec![p("HeaderDigest", "None"), p("MaxBurstLength", "262144")]
        );
        assert_eq!(parse(b"A=\0\0\0").unwrap(), vec![p("A", "")]);
        assert_eq!(parse(b"").unwrap(), vec![]);
        assert_eq!(parse(b"A=1"), Err(TextError::Unterminated));
        assert_eq!(parse(b"A1\0"), Err(TextError::NoEquals(2)));
        assert!(matches!(parse(b"=1\0"), Err(TextError::BadKey(_))));
        assert!(matches!(parse(b"A B=1\0"), Err(TextError::BadKey(_))));
        let long_key = format!("{}=1\0", "K".repeat(64));
        assert!(matches!(
            parse(long_key.as_bytes()),
            Err(TextError::BadKey(_))
        ));
        let long_val = format!("K={}\0", "v".repeat(256));
        assert!(matches!(
            parse(long_val.as_bytes()),
            Err(TextError::ValueTooLong { .. })
        ));
        let chap = format!("CHAP_C=0x{}\0", "ab".repeat(1024));
        assert_eq!(parse(chap.as_bytes()).unwrap().len(), 1);
        let many: Vec<u8> = (0..=MAX_PAIRS)
            .flat_map(|_| b"A=1\0".iter().copied())
            .collect();
        assert_eq!(parse(&many), Err(TextError::TooManyPairs(MAX_PAIRS)));
        assert_eq!(parse(b"A=\xff\0"), Err(TextError::NotUtf8));
    }

    #[test]
    fn accumulator_joins_continued_text() {
        let mut acc = TextAccumulator::new(64);
        assert_eq!(acc.push(b"TargetName=iqn.2026-", true).unwrap(), None);
        assert!(acc.is_pending());
        assert_eq!(acc.push(b"11.com.example:lun0\0", true).unwrap(), None);
        assert_eq!(
            acc.push(b"TargetAddress=10.0.0.1\0", false).unwrap(),
            Some(vec![
                p("TargetName", "iqn.2026-11.com.example:lun0"),
                p("TargetAddress", "10.0.0.1")
            ])
        );
        assert!(!acc.is_pending());
        assert_eq!(acc.push(&[b'a'; 65], true), Err(TextError::TooLong(64)));
        assert!(!acc.is_pending());
    }

    #[test]
    fn binary_values() {
        assert_eq!(decode_binary("k", "0x00ff10").unwrap(), [0, 0xff, 0x10]);
        assert_eq!(decode_binary("k", "0XABC").unwrap(), [0x0a, 0xbc]);
        assert_eq!(decode_binary("k", "0x1").unwrap(), [1]);
        assert!(decode_binary("k", "0x").is_err());
        assert!(decode_binary("k", "0xzz").is_err());
        assert!(decode_binary("k", "1234").is_err());
        assert_eq!(decode_binary("k", "0bAAEC").unwrap(), [0, 1, 2]);
        assert_eq!(decode_binary("k", "0bAAE=").unwrap(), [0, 1]);
        assert_eq!(decode_binary("k", "0BAA==").unwrap(), [0]);
        assert_eq!(decode_binary("k", "0baGVsbG8=").unwrap(), b"hello");
        assert!(decode_binary("k", "0bAA=A").is_err());
        assert!(decode_binary("k", "0bAAA").is_err());
        assert!(decode_binary("k", "0b").is_err());
        assert_eq!(encode_hex(&[0, 0xab, 0x10]), "0x00ab10");
    }

    #[test]
    fn target_addresses() {
        let a = |s| parse_target_address(s).unwrap();
        let portal = |h: &str, port, tpgt| Portal {
            address: h.to_string(),
            port,
            tpgt,
        };
        assert_eq!(a("10.0.0.1:3261,2"), portal("10.0.0.1", 3261, 2));
        assert_eq!(a("10.0.0.1,2"), portal("10.0.0.1", 3260, 2));
        assert_eq!(a("san.example.com"), portal("san.example.com", 3260, 1));
        assert_eq!(a("[fe80::1]:3262,5"), portal("fe80::1", 3262, 5));
        assert_eq!(a("[::1],1"), portal("::1", 3260, 1));
        assert_eq!(a("fd00::5,1"), portal("fd00::5", 3260, 1));
        assert_eq!(a("[::1]:3260,1").to_string(), "[::1]:3260,1");
        for bad in [
            "", "[[::1]", "a]:1", "h:x,1", "h:1,x", "[::1", "[::1]x,1", "h:70000", ":3260",
        ] {
            assert!(parse_target_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn send_targets() {
        let req = send_targets_request(5, 1, 2);
        assert_eq!(req.data, b"SendTargets=All\0");
        assert!(req.final_flag && req.immediate);
        let text = b"TargetName=iqn.2026-11.com.example:lun0\0\
TargetAddress=127.0.0.1:3260,1\0\
TargetAddress=[fd00::2]:3261,2\0\
TargetName=iqn.2026-11.com.example:other\0";
        let targets = parse_send_targets(&parse(text).unwrap()).unwrap();
        assert_eq!(
            targets,
            vec![
                TargetRecord {
                    name: "iqn.2026-11.com.example:lun0".into(),
                    portals: vec![
                        Portal {
                            address: "127.0.0.1".into(),
                            port: 3260,
                            tpgt: 1
                        },
                        Portal {
                            address: "fd00::2".into(),
                            port: 3261,
                            tpgt: 2
                        },
                    ],
                },
                TargetRecord {
                    name: "iqn.2026-11.com.example:other".into(),
                    portals: vec![]
                },
            ]
        );
        assert!(matches!(
            parse_send_targets(&[p("TargetAddress", "1.2.3.4")]),
            Err(TextError::AddressWithoutTarget(_))
        ));
    }
}
