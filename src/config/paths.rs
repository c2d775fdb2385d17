//! umpath's own `paths` section: the paths the daemon opens itself.
//!
//! ```text
//! paths {
//!     path {
//!         name      p0
//!         transport file
//!         file      /var/lib/umpath/lun0.img
//!         vendor    "OSNEXUS"
//!         product   "QUANTASTOR"
//!         revision  "0001"
//!         wwid      "36000c29abcdef001"
//!         serial    "QS0001"
//!         direct    no
//!     }
//!     path {
//!         name          q0
//!         transport     iscsi
//!         portal        127.0.0.1:3260
//!         target        iqn.2026-11.com.example:lun0
//!         lun           1
//!         chap_user     tecmint
//!         chap_secret   "tecmint_chap12"   # or chap_secret_file /etc/umpath/q0.secret
//!     }
//! }
//! ```
//!
//! An `iscsi` path declares where the LUN is, not what it is: vendor,
//! product and WWID come from the LUN's INQUIRY and VPD page 0x83 once
//! the path logs in ([`IscsiDecl`]).

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::diag::Span;
use super::sections::PathIdentity;

/// Transports umpath knows, with the extra keywords each one takes (kept
/// in [`PathDecl::extra`]).
///
/// `node_name` (the target's name, for `group_by_node_name`) and `tpg`
/// (the path's ALUA target port group, 0 to 65535, for `group_by_tpg`)
/// declare what a SCSI path would report. `direct yes|no` (default no)
/// opens a `file` path's IO handle with O_DIRECT.
pub const TRANSPORTS: &[(&str, &[&str])] = &[
    ("file", &["fault", "node_name", "tpg", "direct"]),
    ("nbd", &["uri", "fault", "node_name", "tpg"]),
    (
        "iscsi",
        &[
            "portal",
            "target",
            "lun",
            "chap_user",
            "chap_secret",
            "chap_secret_file",
            "mutual_user",
            "mutual_secret",
            "mutual_secret_file",
            "initiator_name",
            "digest",
            "fault",
            "node_name",
            "tpg",
        ],
    ),
];

/// Path keywords whose values are secrets: never printed (`show config`
/// masks them) and never quoted in a diagnostic.
pub const SECRET_KEYS: &[&str] = &["chap_secret", "mutual_secret"];

/// What `show config` prints instead of a secret.
pub const MASKED: &str = "<hidden>";

/// True for a keyword whose value is a secret ([`SECRET_KEYS`]).
pub fn is_secret(key: &str) -> bool {
    SECRET_KEYS.contains(&key)
}

/// The iSCSI port when a portal names none (RFC 7143).
pub const ISCSI_PORT: u16 = 3260;

/// An iSCSI portal: host (a name, IPv4 or IPv6 address) and TCP port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Portal {
    pub host: String,
    pub port: u16,
}

impl Portal {
    /// Parses `host`, `host:port`, `[v6]` or `[v6]:port` (the port
    /// defaults to 3260).
    pub fn parse(s: &str) -> Result<Portal, String> {
        let s = s.trim();
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("portal {s:?}: '[' without ']'"))?;
            match after {
                "" => (host, None),
                p => (
                    host,
                    Some(
                        p.strip_prefix(':')
                            .ok_or_else(|| format!("portal {s:?}: expected ':port' after ']'"))?,
                    ),
                ),
            }
        } else if s.matches(':').count() > 1 {
            return Err(format!(
                "portal {s:?}: write an IPv6 address in brackets, e.g. [::1]:3260"
            ));
        } else {
            match s.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (s, None),
            }
        };
        if host.is_empty() {
            return Err(format!("portal {s:?} has no host"));
        }
        let port = match port {
            None => ISCSI_PORT,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("portal {s:?}: port {p:?} is not 1 to 65535"))?,
        };
        Ok(Portal {
            host: host.to_string(),
            port,
        })
    }
}

impl std::fmt::Display for Portal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Where a CHAP secret comes from. Debug never shows an inline secret.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// Written in the configuration.
    Inline(String),
    /// A file readable by root only (checked when it is read).
    File(PathBuf),
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::Inline(_) => f.write_str("Inline(<hidden>)"),
            SecretSource::File(p) => f.debug_tuple("File").field(p).finish(),
        }
    }
}

/// A CHAP user name and where its secret is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChapDecl {
    pub user: String,
    pub secret: SecretSource,
}

/// An `iscsi` path's keywords, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IscsiDecl {
    pub portal: Portal,
    /// The target's name (iqn., eui. or naa. form).
    pub target: String,
    /// The LUN (default 0).
    pub lun: u64,
    /// One-way CHAP: the target authenticates us.
    pub chap: Option<ChapDecl>,
    /// Mutual CHAP: we authenticate the target too.
    pub mutual: Option<ChapDecl>,
    /// Our initiator name; `None`: /etc/iscsi/initiatorname.iscsi, else
    /// a generated one kept across restarts.
    pub initiator_name: Option<String>,
    /// `digest crc32c`: offer CRC32C header and data digests (the target
    /// may still refuse them); `digest none` (the default): none.
    pub digests: bool,
}

/// The largest LUN (SAM's flat and peripheral forms go to 16383).
pub const MAX_LUN: u64 = 16383;

/// Checks an iSCSI name (RFC 7143 §4.2.7): `iqn.YYYY-MM.reversed.domain[:…]`,
/// `eui.` + 16 hex digits, or `naa.` + 16 or 32 hex digits; at most 223
/// bytes, no spaces.
pub fn check_iscsi_name(name: &str) -> Result<(), String> {
    if name.len() > 223 {
        return Err(format!("{name:?} is longer than 223 bytes"));
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{name:?} contains white space"));
    }
    let lower = name.to_ascii_lowercase();
    let hex = |s: &str, lens: &[usize]| {
        lens.contains(&s.len()) && s.chars().all(|c| c.is_ascii_hexdigit())
    };
    if let Some(rest) = lower.strip_prefix("iqn.") {
        let date = rest.get(..7).unwrap_or("");
        let ok = date.len() == 7
            && date[..4].chars().all(|c| c.is_ascii_digit())
            && date.as_bytes()[4] == b'-'
            && date[5..].chars().all(|c| c.is_ascii_digit())
            && rest[7..].starts_with('.')
            && rest.len() > 8;
        if ok {
            return Ok(());
        }
        return Err(format!(
            "{name:?} is not an iqn. name (iqn.YYYY-MM.reversed.domain[:identifier])"
        ));
    }
    if let Some(rest) = lower.strip_prefix("eui.") {
        if hex(rest, &[16]) {
            return Ok(());
        }
        return Err(format!("{name:?}: eui. takes 16 hex digits"));
    }
    if let Some(rest) = lower.strip_prefix("naa.") {
        if hex(rest, &[16, 32]) {
            return Ok(());
        }
        return Err(format!("{name:?}: naa. takes 16 or 32 hex digits"));
    }
    Err(format!(
        "{name:?} is not an iSCSI name (iqn., eui. or naa.)"
    ))
}

impl IscsiDecl {
    /// Reads and checks an `iscsi` path's keywords; the error names the
    /// keyword at fault and what is wrong (never a secret's value).
    pub fn from_keys(
        keys: &BTreeMap<String, (String, Span)>,
    ) -> Result<IscsiDecl, (&'static str, String)> {
        let get = |k: &str| keys.get(k).map(|(v, _)| v.as_str());
        let portal = Portal::parse(get("portal").ok_or(("portal", "has no 'portal'".to_string()))?)
            .map_err(|e| ("portal", e))?;
        let target = get("target")
            .ok_or(("target", "has no 'target' (the target's IQN)".to_string()))?
            .to_string();
        check_iscsi_name(&target).map_err(|e| ("target", format!("target {e}")))?;
        let lun = match get("lun") {
            None => 0,
            Some(l) => l
                .parse::<u64>()
                .ok()
                .filter(|l| *l <= MAX_LUN)
                .ok_or(("lun", format!("lun {l:?} is not 0 to {MAX_LUN}")))?,
        };
        let chap = chap_decl(keys, "chap_user", "chap_secret", "chap_secret_file")?;
        let mutual = chap_decl(keys, "mutual_user", "mutual_secret", "mutual_secret_file")?;
        if mutual.is_some() && chap.is_none() {
            return Err((
                "mutual_user",
                "mutual CHAP needs one-way CHAP too (chap_user and chap_secret)".to_string(),
            ));
        }
        let initiator_name = match get("initiator_name") {
            None => None,
            Some(n) => {
                check_iscsi_name(n)
                    .map_err(|e| ("initiator_name", format!("initiator_name {e}")))?;
                Some(n.to_string())
            }
        };
        let digests = match get("digest") {
            None | Some("none") => false,
            Some("crc32c") => true,
            Some(other) => {
                return Err((
                    "digest",
                    format!("digest {other:?} is not 'none' or 'crc32c'"),
                ))
            }
        };
        Ok(IscsiDecl {
            portal,
            target,
            lun,
            chap,
            mutual,
            initiator_name,
            digests,
        })
    }
}

/// A user and exactly one of an inline secret or a secret file, or none
/// of the three.
fn chap_decl(
    keys: &BTreeMap<String, (String, Span)>,
    user: &'static str,
    secret: &'static str,
    file: &'static str,
) -> Result<Option<ChapDecl>, (&'static str, String)> {
    let get = |k: &str| keys.get(k).map(|(v, _)| v.as_str());
    let source = match (get(secret), get(file)) {
        (Some(_), Some(_)) => {
            return Err((file, format!("give '{secret}' or '{file}', not both")));
        }
        (Some(""), None) => {
            return Err((secret, format!("'{secret}' is empty")));
        }
        (Some(s), None) => Some(SecretSource::Inline(s.to_string())),
        (None, Some(f)) if !f.starts_with('/') => {
            return Err((file, format!("'{file}' {f:?} is not an absolute path")));
        }
        (None, Some(f)) => Some(SecretSource::File(PathBuf::from(f))),
        (None, None) => None,
    };
    match (get(user), source) {
        (None, None) => Ok(None),
        (Some(u), Some(secret)) if !u.is_empty() => Ok(Some(ChapDecl {
            user: u.to_string(),
            secret,
        })),
        (Some(_), Some(_)) => Err((user, format!("'{user}' is empty"))),
        (Some(_), None) => Err((user, format!("'{user}' without '{secret}' or '{file}'"))),
        (None, Some(_)) => Err((secret, format!("a secret without '{user}'"))),
    }
}

/// The transport used when a path names none.
pub const DEFAULT_TRANSPORT: &str = "file";

/// The names of the known transports.
pub fn transport_names() -> Vec<&'static str> {
    TRANSPORTS.iter().map(|(n, _)| *n).collect()
}

/// One declared path. Debug masks secrets ([`SECRET_KEYS`]).
#[derive(Clone, PartialEq, Eq)]
pub struct PathDecl {
    /// Unique among the declared paths.
    pub name: String,
    /// One of [`TRANSPORTS`] (default [`DEFAULT_TRANSPORT`]).
    pub transport: String,
    /// The backing file (required for transport `file`).
    pub file: Option<PathBuf>,
    /// INQUIRY-style identity used for device matching ("" if absent).
    pub vendor: String,
    pub product: String,
    pub revision: String,
    /// Paths with the same WWID form one map. Required.
    pub wwid: String,
    pub serial: String,
    /// Keywords the core does not know, for transports that take more
    /// (e.g. a future `uri`): value and span.
    pub extra: BTreeMap<String, (String, Span)>,
    /// The `path {` line.
    pub span: Span,
}

impl std::fmt::Debug for PathDecl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let extra: BTreeMap<&str, &str> = self
            .extra
            .iter()
            .map(|(k, (v, _))| (k.as_str(), if is_secret(k) { MASKED } else { v.as_str() }))
            .collect();
        f.debug_struct("PathDecl")
            .field("name", &self.name)
            .field("transport", &self.transport)
            .field("file", &self.file)
            .field("vendor", &self.vendor)
            .field("product", &self.product)
            .field("revision", &self.revision)
            .field("wwid", &self.wwid)
            .field("serial", &self.serial)
            .field("extra", &extra)
            .field("span", &self.span)
            .finish()
    }
}

impl PathDecl {
    /// The declared `node_name`, if any.
    pub fn node_name(&self) -> Option<&str> {
        self.extra.get("node_name").map(|(v, _)| v.as_str())
    }

    /// The declared `tpg`, if any and valid (the load rejects an invalid
    /// one with file:line).
    pub fn tpg(&self) -> Option<u16> {
        self.extra.get("tpg").and_then(|(v, _)| v.parse().ok())
    }

    /// An `iscsi` path's keywords (checked at load: `None` only for other
    /// transports).
    pub fn iscsi(&self) -> Option<IscsiDecl> {
        if self.transport != "iscsi" {
            return None;
        }
        IscsiDecl::from_keys(&self.extra).ok()
    }

    /// `direct yes`: the path's IO bypasses the page cache (O_DIRECT).
    /// Default (absent, or `no`): buffered.
    pub fn direct(&self) -> bool {
        self.extra.get("direct").is_some_and(|(v, _)| v == "yes")
    }

    /// The identity used for property selection and blacklisting.
    pub fn identity(&self) -> PathIdentity<'_> {
        PathIdentity {
            vendor: &self.vendor,
            product: &self.product,
            revision: &self.revision,
            wwid: &self.wwid,
        }
    }
}

/// The keywords of an `iscsi_target { }` entry besides those its paths
/// share (every `iscsi` path keyword but these four).
const ISCSI_TARGET_OWN: &[&str] = &["name", "portal", "portals", "luns"];
const ISCSI_PATH_ONLY: &[&str] = &["lun", "fault", "node_name", "tpg"];

/// The keywords an `iscsi_target { }` entry takes: `name` (the prefix of
/// its paths' names), `portal` (repeated) or `portals` (a quoted list),
/// `luns` (a quoted list of LUN numbers, e.g. `luns "1 2"`), and the
/// `iscsi` path keywords every one of its paths takes alike (`target`,
/// CHAP, `initiator_name`, `digest`).
pub fn iscsi_target_keys() -> Vec<&'static str> {
    let path_keys = TRANSPORTS
        .iter()
        .find(|(t, _)| *t == "iscsi")
        .map_or(&[][..], |(_, keys)| *keys);
    ISCSI_TARGET_OWN
        .iter()
        .chain(path_keys.iter().filter(|k| !ISCSI_PATH_ONLY.contains(k)))
        .copied()
        .collect()
}

/// An `iscsi_target { }` entry as the `path { }` entries it stands for:
/// one per portal and LUN, named `NAME-pI-lL` (I the portal's index in
/// the order written, L the LUN), each with the entry's shared keywords
/// (their lines are the entry's, so a mistake is reported where it was
/// written). The error names the line and what is wrong.
pub fn expand_iscsi_target(
    b: &super::parse::Block,
) -> Result<Vec<super::parse::Block>, (Span, String)> {
    use super::parse::{Attr, Block, Item, Value};
    let mut name: Option<&Attr> = None;
    let mut portals: Vec<(String, Span)> = Vec::new();
    let mut luns: Option<&Attr> = None;
    let mut shared: Vec<&Attr> = Vec::new();
    let keys = iscsi_target_keys();
    for item in &b.items {
        let a = match item {
            Item::Attr(a) => a,
            Item::Block(sub) => {
                return Err((
                    sub.span.clone(),
                    format!(
                        "section '{}' is not allowed in an iscsi_target entry",
                        sub.name
                    ),
                ))
            }
        };
        match a.key.as_str() {
            "name" => name = Some(a),
            "portal" => portals.push((a.value.text.clone(), a.span.clone())),
            "portals" => portals.extend(
                a.value
                    .text
                    .split_whitespace()
                    .map(|p| (p.to_string(), a.span.clone())),
            ),
            "luns" => luns = Some(a),
            k if keys.contains(&k) => shared.push(a),
            k => {
                return Err((
                    a.span.clone(),
                    format!(
                        "unknown keyword '{k}' in an iscsi_target entry (it takes: {})",
                        keys.join(", ")
                    ),
                ))
            }
        }
    }
    let Some(name) = name else {
        return Err((
            b.span.clone(),
            "iscsi_target entry has no 'name'".to_string(),
        ));
    };
    if portals.is_empty() {
        return Err((
            b.span.clone(),
            format!(
                "iscsi_target '{}' has no 'portal' or 'portals'",
                name.value.text
            ),
        ));
    }
    let Some(luns) = luns else {
        return Err((
            b.span.clone(),
            format!(
                "iscsi_target '{}' has no 'luns' (the LUN numbers to use, e.g. `luns \"1 2\"`)",
                name.value.text
            ),
        ));
    };
    let numbers: Vec<&str> = luns.value.text.split_whitespace().collect();
    if numbers.is_empty() {
        return Err((luns.span.clone(), "'luns' is empty".to_string()));
    }
    let attr = |key: &str, text: String, span: &Span| {
        Item::Attr(Attr {
            key: key.to_string(),
            value: Value {
                text,
                quoted: false,
            },
            span: span.clone(),
        })
    };
    let mut out = Vec::new();
    for (i, (portal, pspan)) in portals.iter().enumerate() {
        for lun in &numbers {
            let mut items = vec![
                attr(
                    "name",
                    format!("{}-p{i}-l{lun}", name.value.text),
                    &name.span,
                ),
                attr("transport", "iscsi".to_string(), &b.span),
                attr("portal", portal.clone(), pspan),
                attr("lun", (*lun).to_string(), &luns.span),
            ];
            items.extend(shared.iter().map(|a| Item::Attr((*a).clone())));
            out.push(Block {
                name: "path".to_string(),
                items,
                span: b.span.clone(),
                end_line: b.end_line,
            });
        }
    }
    Ok(out)
}
