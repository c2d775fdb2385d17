//! The keyword table: every keyword umpath understands, the sections that
//! accept it, how its value is checked, the multipath-tools default and
//! what umpath does with it.
//!
//! Keyword names, their sections and defaults follow multipath-tools 0.9.x
//! (`man multipath.conf`, `multipath -t`); a few newer keywords are
//! accepted too so that configurations written for later versions load.

use std::fmt;

use regex::Regex;

use crate::policy::{CheckerKind, Failback, GroupingPolicy, NoPathRetry, RrWeight, SelectorKind};
use crate::prio::{self, PrioConfigError, Prioritizer};

use super::diag::Span;

/// A section (or subsection) of the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Section {
    Defaults,
    Blacklist,
    BlacklistExceptions,
    /// `device {}` inside `blacklist` or `blacklist_exceptions`.
    BlacklistDevice,
    Devices,
    /// `device {}` inside `devices`.
    Device,
    Multipaths,
    /// `multipath {}` inside `multipaths`.
    Multipath,
    Overrides,
    /// `protocol {}` inside `overrides`.
    Protocol,
    /// umpath's own `paths` section.
    Paths,
    /// `path {}` inside `paths`.
    Path,
}

impl Section {
    /// Top-level sections, in the order `show config` prints them.
    pub const TOP: [Section; 7] = [
        Section::Defaults,
        Section::Blacklist,
        Section::BlacklistExceptions,
        Section::Devices,
        Section::Multipaths,
        Section::Overrides,
        Section::Paths,
    ];

    /// The name written in the file.
    pub fn name(self) -> &'static str {
        match self {
            Section::Defaults => "defaults",
            Section::Blacklist => "blacklist",
            Section::BlacklistExceptions => "blacklist_exceptions",
            Section::Devices => "devices",
            Section::BlacklistDevice | Section::Device => "device",
            Section::Multipaths => "multipaths",
            Section::Multipath => "multipath",
            Section::Overrides => "overrides",
            Section::Protocol => "protocol",
            Section::Paths => "paths",
            Section::Path => "path",
        }
    }

    /// A readable location such as `devices/device`.
    pub fn path(self) -> &'static str {
        match self {
            Section::BlacklistDevice => "blacklist/device",
            Section::Device => "devices/device",
            Section::Multipath => "multipaths/multipath",
            Section::Protocol => "overrides/protocol",
            Section::Path => "paths/path",
            s => s.name(),
        }
    }

    /// The top-level section called `name`.
    pub fn top(name: &str) -> Option<Section> {
        Self::TOP.into_iter().find(|s| s.name() == name)
    }

    /// The subsection of `self` called `name`.
    pub fn subsection(self, name: &str) -> Option<Section> {
        match (self, name) {
            (Section::Blacklist | Section::BlacklistExceptions, "device") => {
                Some(Section::BlacklistDevice)
            }
            (Section::Devices, "device") => Some(Section::Device),
            (Section::Multipaths, "multipath") => Some(Section::Multipath),
            (Section::Overrides, "protocol") => Some(Section::Protocol),
            (Section::Paths, "path") => Some(Section::Path),
            _ => None,
        }
    }
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.path())
    }
}

/// Names that always open a section, never carry a value (used by the
/// parser to say "missing '{'"). `protocol` is not here: it is a value
/// keyword in `blacklist` and a section in `overrides`.
pub fn is_section_keyword(name: &str) -> bool {
    matches!(
        name,
        "defaults"
            | "blacklist"
            | "blacklist_exceptions"
            | "devices"
            | "device"
            | "multipaths"
            | "multipath"
            | "overrides"
            | "paths"
            | "path"
    )
}

/// What umpath does with a keyword.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// umpath uses the value (or records it for a component that will).
    Supported,
    /// Accepted for compatibility, but it only configures something umpath
    /// does not have (the kernel device-mapper or SCSI layer, udev, ...).
    /// Reported once per configuration with the reason.
    NoEffect(&'static str),
    /// Deprecated in multipath-tools: accepted with a warning at every use;
    /// the value is recorded.
    Deprecated(&'static str),
}

/// How a keyword's value is checked and what it is turned into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Grouping,
    Selector,
    Failback,
    NoPathRetry,
    RrWeight,
    Checker,
    Prio,
    /// An unsigned integer in `min..=max`.
    UInt {
        min: u32,
        max: u32,
    },
    /// A signed integer in `min..=max`.
    Int {
        min: i64,
        max: i64,
    },
    /// An unsigned integer in `min..=max`, or one of `words`.
    UIntOr {
        min: u32,
        max: u32,
        words: &'static [&'static str],
    },
    /// `yes`/`no` (also `1`/`0`).
    YesNo,
    /// One of these words.
    OneOf(&'static [&'static str]),
    /// A device-mapper features string: a count, then that many words.
    Features,
    /// A POSIX extended regular expression (case sensitive, unanchored).
    Regex,
    /// A blacklist regular expression: a leading `!` inverts the match,
    /// `\!` stands for a literal leading `!`.
    BlacklistRegex,
    /// Any string.
    Str,
    /// A string that must not be empty.
    NonEmpty,
}

/// One keyword definition.
#[derive(Debug, Clone, Copy)]
pub struct Keyword {
    pub name: &'static str,
    pub sections: &'static [Section],
    pub kind: Kind,
    /// The multipath-tools default as `multipath -t` prints it (`None`:
    /// unset, or derived from other settings).
    pub default: Option<&'static str>,
    pub effect: Effect,
    /// The keyword may appear many times in one section, each adding an
    /// entry (blacklist entries); otherwise a repeat replaces the value.
    pub multi: bool,
}

/// A compiled regular expression as written in the configuration.
#[derive(Clone, Debug)]
pub struct Pattern {
    text: String,
    matcher: Matcher,
    negated: bool,
}

/// A pattern without regex metacharacters is matched as a substring
/// (same result as the unanchored regex, and far cheaper to build when a
/// file has many entries).
#[derive(Clone, Debug)]
enum Matcher {
    Literal(String),
    Regex(Regex),
}

impl Matcher {
    fn new(expr: &str) -> Result<Self, String> {
        const META: &[char] = &[
            '.', '^', '$', '*', '+', '?', '(', ')', '[', ']', '{', '}', '|', '\\',
        ];
        if expr.contains(META) {
            compile_regex(expr).map(Matcher::Regex)
        } else {
            Ok(Matcher::Literal(expr.to_string()))
        }
    }

    fn is_match(&self, s: &str) -> bool {
        match self {
            Matcher::Literal(l) => s.contains(l.as_str()),
            Matcher::Regex(r) => r.is_match(s),
        }
    }
}

impl Pattern {
    /// A plain pattern (devices section).
    pub fn new(text: &str) -> Result<Self, String> {
        Ok(Pattern {
            text: text.to_string(),
            matcher: Matcher::new(text)?,
            negated: false,
        })
    }

    /// A blacklist pattern: a leading `!` inverts the match; `\!` at the
    /// start stands for a literal `!`.
    pub fn blacklist(text: &str) -> Result<Self, String> {
        let (negated, expr) = if let Some(rest) = text.strip_prefix('!') {
            (true, rest.to_string())
        } else if let Some(rest) = text.strip_prefix("\\!") {
            (false, format!("!{rest}"))
        } else {
            (false, text.to_string())
        };
        Ok(Pattern {
            text: text.to_string(),
            matcher: Matcher::new(&expr)?,
            negated,
        })
    }

    /// Unanchored, case-sensitive match (inverted for `!` patterns).
    pub fn is_match(&self, s: &str) -> bool {
        self.matcher.is_match(s) != self.negated
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text && self.negated == other.negated
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn compile_regex(expr: &str) -> Result<Regex, String> {
    crate::bounded_regex::compile(expr)
        .map_err(|e| format!("invalid regular expression \"{expr}\": {e}"))
}

/// A checked value.
#[derive(Debug, Clone, PartialEq)]
pub enum Typed {
    Grouping(GroupingPolicy),
    Selector(SelectorKind),
    Failback(Failback),
    NoPathRetry(NoPathRetry),
    RrWeight(RrWeight),
    /// `kind` is what umpath runs; `name` is what was written (a
    /// hardware-specific checker such as `rdac` runs as `tur`).
    Checker {
        kind: CheckerKind,
        name: String,
    },
    UInt(u32),
    Int(i64),
    Bool(bool),
    /// A keyword value such as `infinity`, `off`, `strict`.
    Word(String),
    Str(String),
    Regex(Pattern),
}

/// One keyword set in one section: its value as written, checked, and
/// where.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    /// The canonical keyword name (`checker` is stored as `path_checker`).
    pub keyword: &'static str,
    /// The value as written (unquoted).
    pub text: String,
    pub value: Typed,
    pub span: Span,
}

/// A checked value plus an optional warning about it.
pub type Checked = (Typed, Option<String>);

const HW_CHECKERS: [&str; 4] = ["emc_clariion", "hp_sw", "rdac", "cciss_tur"];

fn list(words: &[&str]) -> String {
    match words {
        [] => String::new(),
        [one] => one.to_string(),
        [init @ .., last] => format!("{} or {}", init.join(", "), last),
    }
}

/// Parses an integer; `Err(true)` means "digits, but too large for i64".
fn parse_int(text: &str) -> Result<i64, bool> {
    let t = text.trim();
    match t.parse::<i64>() {
        Ok(v) => Ok(v),
        Err(_) => {
            let digits = t.strip_prefix(['-', '+']).unwrap_or(t);
            Err(!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        }
    }
}

fn uint_in(name: &str, text: &str, min: u32, max: u32) -> Result<u32, String> {
    let range = || format!("'{name}' must be between {min} and {max}");
    match parse_int(text) {
        Ok(v) if v >= i64::from(min) && v <= i64::from(max) => Ok(v as u32),
        Ok(v) => Err(format!("value {v} is out of range: {}", range())),
        Err(true) => Err(format!("value {text} is out of range: {}", range())),
        Err(false) => Err(format!(
            "invalid value '{text}' for '{name}': expected an integer between {min} and {max}"
        )),
    }
}

impl Keyword {
    /// Checks `text` against this keyword's kind. `Err` is the error
    /// message; a warning may come with an accepted value.
    pub fn check(&self, text: &str) -> Result<Checked, String> {
        let name = self.name;
        let bad =
            |expected: &str| format!("invalid value '{text}' for '{name}': expected {expected}");
        match self.kind {
            Kind::Grouping => GroupingPolicy::parse(text)
                .map(|g| (Typed::Grouping(g), None))
                .ok_or_else(|| {
                    let all: Vec<&str> = GroupingPolicy::ALL.iter().map(|g| g.as_str()).collect();
                    bad(&list(&all))
                }),
            Kind::Selector => SelectorKind::parse(text)
                .map(|s| (Typed::Selector(s), None))
                .ok_or_else(|| {
                    let all: Vec<String> = SelectorKind::ALL
                        .iter()
                        .map(|s| format!("\"{s}\""))
                        .collect();
                    let all: Vec<&str> = all.iter().map(String::as_str).collect();
                    bad(&list(&all))
                }),
            Kind::Failback => Failback::parse(text)
                .map(|f| (Typed::Failback(f), None))
                .ok_or_else(|| bad("immediate, manual, followover or a number of seconds")),
            Kind::NoPathRetry => NoPathRetry::parse(text)
                .map(|n| (Typed::NoPathRetry(n), None))
                .ok_or_else(|| bad("fail, queue or a number of retries")),
            Kind::RrWeight => RrWeight::parse(text)
                .map(|w| (Typed::RrWeight(w), None))
                .ok_or_else(|| bad("uniform or priorities")),
            Kind::Checker => {
                if let Some(kind) = CheckerKind::parse(text) {
                    Ok((
                        Typed::Checker {
                            kind,
                            name: text.to_string(),
                        },
                        None,
                    ))
                } else if HW_CHECKERS.contains(&text) {
                    Ok((
                        Typed::Checker {
                            kind: CheckerKind::Tur,
                            name: text.to_string(),
                        },
                        Some(format!(
                            "path checker '{text}' is hardware specific and not implemented by \
                             umpath; 'tur' is used instead"
                        )),
                    ))
                } else {
                    let mut all: Vec<&str> = CheckerKind::ALL.iter().map(|c| c.as_str()).collect();
                    all.extend(HW_CHECKERS);
                    Err(bad(&list(&all)))
                }
            }
            Kind::Prio => {
                let warning = match Prioritizer::parse(text, "") {
                    Err(e @ PrioConfigError::NotImplemented { .. }) => Some(e.to_string()),
                    Err(PrioConfigError::Unknown { .. }) => {
                        let mut known: Vec<&str> = prio::IMPLEMENTED.to_vec();
                        known.extend(prio::NOT_IMPLEMENTED);
                        Some(format!(
                            "unknown prioritizer '{text}' for '{name}' (known: {})",
                            list(&known)
                        ))
                    }
                    // Arguments are checked with the section's prio_args.
                    Ok(_) | Err(PrioConfigError::BadArg { .. }) => None,
                };
                Ok((Typed::Str(text.to_string()), warning))
            }
            Kind::UInt { min, max } => {
                uint_in(name, text, min, max).map(|v| (Typed::UInt(v), None))
            }
            Kind::Int { min, max } => match parse_int(text) {
                Ok(v) if (min..=max).contains(&v) => Ok((Typed::Int(v), None)),
                Ok(_) | Err(true) => Err(format!(
                    "value {text} is out of range: '{name}' must be between {min} and {max}"
                )),
                Err(false) => Err(bad(&format!("an integer between {min} and {max}"))),
            },
            Kind::UIntOr { min, max, words } => {
                if words.contains(&text) {
                    Ok((Typed::Word(text.to_string()), None))
                } else if parse_int(text).is_ok() || parse_int(text) == Err(true) {
                    uint_in(name, text, min, max).map(|v| (Typed::UInt(v), None))
                } else {
                    Err(bad(&format!(
                        "{} or an integer between {min} and {max}",
                        list(words)
                    )))
                }
            }
            Kind::YesNo => match text {
                "yes" | "1" => Ok((Typed::Bool(true), None)),
                "no" | "0" => Ok((Typed::Bool(false), None)),
                _ => Err(bad("yes or no")),
            },
            Kind::OneOf(words) => {
                if words.contains(&text) {
                    Ok((Typed::Word(text.to_string()), None))
                } else {
                    Err(bad(&list(words)))
                }
            }
            Kind::Features => check_features(name, text),
            Kind::Regex => Pattern::new(text).map(|p| (Typed::Regex(p), None)),
            Kind::BlacklistRegex => Pattern::blacklist(text).map(|p| (Typed::Regex(p), None)),
            Kind::Str => Ok((Typed::Str(text.to_string()), None)),
            Kind::NonEmpty => {
                if text.is_empty() {
                    Err(format!("'{name}' must not be empty"))
                } else {
                    Ok((Typed::Str(text.to_string()), None))
                }
            }
        }
    }
}

/// `features "N word..."`: N (0 to 8) must count the words that follow.
fn check_features(name: &str, text: &str) -> Result<Checked, String> {
    let mut words = text.split_whitespace();
    let count = words.next().unwrap_or("");
    let n = match count.parse::<u32>() {
        Ok(n) if n <= 8 => n,
        _ => {
            return Err(format!(
                "invalid value '{text}' for '{name}': expected a feature count (0 to 8) \
                 followed by that many words, e.g. \"1 queue_if_no_path\""
            ))
        }
    };
    let actual = words.count();
    let warning = (actual != n as usize)
        .then(|| format!("'{name}' \"{text}\" announces {n} words but has {actual}"));
    Ok((Typed::Str(text.to_string()), warning))
}

use Section::{
    Blacklist as BL, BlacklistDevice as BLD, BlacklistExceptions as BLE, Defaults as D,
    Device as H, Multipath as M, Overrides as O, Path as P, Protocol as PC,
};

const DHOM: &[Section] = &[D, H, O, M];
const DHO: &[Section] = &[D, H, O];
const DEF: &[Section] = &[D];
const DM: &[Section] = &[D, M];
const DHOPC: &[Section] = &[D, H, O, PC];
const BLS: &[Section] = &[BL, BLE];

const INT_MAX: u32 = i32::MAX as u32;
const DAY: u32 = 86_400;

const KERNEL: &str =
    "it configures the kernel device-mapper multipath target, which umpath does not use";
const SCSI: &str = "it configures the kernel SCSI/FC transport layer, which umpath does not use";
const UDEV: &str = "it concerns udev, systemd or device nodes, which umpath does not use";
const DAEMON: &str = "it tunes a multipathd mechanism that umpath does not have";
const NOT_YET: &str = "umpath does not implement it yet";
const IGNORED: &str = "multipath-tools ignores it";

const fn kw(
    name: &'static str,
    sections: &'static [Section],
    kind: Kind,
    default: Option<&'static str>,
    effect: Effect,
) -> Keyword {
    Keyword {
        name,
        sections,
        kind,
        default,
        effect,
        multi: false,
    }
}

const fn multi(name: &'static str, sections: &'static [Section], kind: Kind) -> Keyword {
    Keyword {
        name,
        sections,
        kind,
        default: None,
        effect: Effect::Supported,
        multi: true,
    }
}

use Effect::{Deprecated as Dep, NoEffect as No, Supported as Sup};

const UINT: Kind = Kind::UInt {
    min: 0,
    max: INT_MAX,
};
const NO_OR_UINT: Kind = Kind::UIntOr {
    min: 1,
    max: INT_MAX,
    words: &["no"],
};

/// Every keyword. A name may appear more than once with disjoint
/// sections (e.g. `vendor` is a regex in `devices` but a literal string
/// in `paths`).
pub static KEYWORDS: &[Keyword] = &[
    // --- map and path policy (defaults, devices, overrides, multipaths) ---
    kw("path_grouping_policy", DHOM, Kind::Grouping, Some("failover"), Sup),
    kw("path_selector", DHOM, Kind::Selector, Some("service-time 0"), Sup),
    kw("rr_min_io", DHOM, Kind::UInt { min: 1, max: INT_MAX }, Some("1000"), Sup),
    kw("rr_min_io_rq", DHOM, Kind::UInt { min: 1, max: INT_MAX }, Some("1"), Sup),
    kw("rr_weight", DHOM, Kind::RrWeight, Some("uniform"), Sup),
    kw("failback", DHOM, Kind::Failback, Some("manual"), Sup),
    // Unset means "fail" (multipath-tools prints nothing).
    kw("no_path_retry", DHOM, Kind::NoPathRetry, None, Sup),
    kw("path_checker", DHO, Kind::Checker, Some("tur"), Sup),
    kw("prio", DHOM, Kind::Prio, Some("const"), Sup),
    kw("prio_args", DHOM, Kind::Str, Some(""), Sup),
    kw("features", DHOM, Kind::Features, Some("0"), Sup),
    kw("user_friendly_names", DHOM, Kind::YesNo, Some("no"), Sup),
    kw("alias_prefix", DHO, Kind::NonEmpty, Some("mpath"), Sup),
    kw("uid_attribute", DHO, Kind::Str, Some("ID_SERIAL"), Sup),
    // Deprecated by multipath-tools (which ignores it), but umpath honours
    // it for SCSI paths: a scsi_id callout yields the computed identifier,
    // others run (see discovery::callout). Declared paths state their WWID.
    kw("getuid_callout", DHO, Kind::Str, None, Sup),
    kw("flush_on_last_del", DHOM, Kind::OneOf(&["yes", "no", "always", "unused", "never"]), Some("no"), No(NOT_YET)),
    kw("deferred_remove", DHOM, Kind::YesNo, Some("no"), No(KERNEL)),
    kw("skip_kpartx", DHOM, Kind::YesNo, Some("no"), No(UDEV)),
    kw("max_sectors_kb", DHOM, UINT, None, No(KERNEL)),
    kw("ghost_delay", DHOM, NO_OR_UINT, Some("no"), No(NOT_YET)),
    kw("san_path_err_threshold", DHOM, NO_OR_UINT, Some("no"), Sup),
    kw("san_path_err_forget_rate", DHOM, NO_OR_UINT, Some("no"), Sup),
    kw("san_path_err_recovery_time", DHOM, NO_OR_UINT, Some("no"), Sup),
    kw("marginal_path_err_sample_time", DHOM, NO_OR_UINT, Some("no"), Sup),
    // Per thousand reads; 0 is valid (any error makes the path marginal).
    kw("marginal_path_err_rate_threshold", DHOM, Kind::UIntOr { min: 0, max: 1000, words: &["no"] }, Some("no"), Sup),
    kw("marginal_path_err_recheck_gap_time", DHOM, NO_OR_UINT, Some("no"), Sup),
    kw("marginal_path_double_failed_time", DHOM, NO_OR_UINT, Some("no"), Sup),
    kw("delay_watch_checks", DHOM, NO_OR_UINT, Some("no"), Dep("mapped, as by multipath-tools, onto san_path_err_threshold 1 and san_path_err_forget_rate when delay_wait_checks is set too and no san_path_err keyword is")),
    kw("delay_wait_checks", DHOM, NO_OR_UINT, Some("no"), Dep("mapped, as by multipath-tools, onto san_path_err_recovery_time (delay_wait_checks × max_polling_interval) when delay_watch_checks is set too and no san_path_err keyword is")),
    kw("purge_disconnected", DHOM, Kind::YesNo, Some("no"), No(SCSI)),
    kw("pg_timeout", &[D, H, M], Kind::Str, None, Dep(IGNORED)),
    // --- SCSI transport (also in overrides/protocol) ---
    kw("fast_io_fail_tmo", DHOPC, Kind::UIntOr { min: 0, max: INT_MAX, words: &["off"] }, Some("5"), No(SCSI)),
    kw("dev_loss_tmo", DHOPC, Kind::UIntOr { min: 0, max: u32::MAX, words: &["infinity"] }, None, No(SCSI)),
    kw("eh_deadline", DHOPC, Kind::UIntOr { min: 0, max: INT_MAX, words: &["off"] }, None, No(SCSI)),
    kw("type", &[PC], Kind::NonEmpty, None, No(SCSI)),
    // --- devices, overrides, defaults ---
    kw("retain_attached_hw_handler", DHO, Kind::YesNo, Some("yes"), No(KERNEL)),
    kw("detect_prio", DHO, Kind::YesNo, Some("yes"), Sup),
    kw("detect_checker", DHO, Kind::YesNo, Some("yes"), No(NOT_YET)),
    kw("detect_pgpolicy", DHO, Kind::YesNo, Some("yes"), Sup),
    kw("detect_pgpolicy_use_tpg", DHO, Kind::YesNo, Some("no"), Sup),
    kw("all_tg_pt", DHO, Kind::YesNo, Some("no"), No(NOT_YET)),
    kw("recheck_wwid", DHO, Kind::YesNo, Some("no"), No(NOT_YET)),
    // --- defaults only ---
    kw("verbosity", DEF, Kind::UInt { min: 0, max: 6 }, Some("2"), Sup),
    kw("polling_interval", DEF, Kind::UInt { min: 1, max: DAY }, Some("5"), Sup),
    // Default: 4 * polling_interval.
    kw("max_polling_interval", DEF, Kind::UInt { min: 1, max: DAY }, None, Sup),
    // 0 (multipath-tools: use the device's SCSI timeout) means "unset".
    kw("checker_timeout", DEF, Kind::UInt { min: 0, max: DAY }, None, Sup),
    // umpath: seconds a request may stay on a path before the path fails
    // and the request is handled per the io_timeout rule (0: no limit).
    kw("io_timeout", DEF, Kind::UInt { min: 0, max: DAY }, Some("30"), Sup),
    // umpath: serve Prometheus metrics on HOST:PORT (a bare PORT binds
    // 127.0.0.1); `umpath daemon --metrics-listen` takes precedence. Read
    // at start.
    kw("umpath_metrics_listen", DEF, Kind::NonEmpty, None, Sup),
    // umpath: NBD server limits (read at start; `umpath daemon` flags
    // override them).
    kw("nbd_handshake_timeout", DEF, Kind::UInt { min: 1, max: DAY }, Some("10"), Sup),
    kw("nbd_payload_timeout", DEF, Kind::UInt { min: 1, max: DAY }, Some("30"), Sup),
    kw("nbd_max_connections", DEF, Kind::UInt { min: 1, max: INT_MAX }, Some("1024"), Sup),
    kw("nbd_max_connections_per_uid", DEF, Kind::UInt { min: 1, max: INT_MAX }, Some("128"), Sup),
    // MiB of request payloads and replies in flight, all clients together.
    kw("nbd_memory_budget", DEF, Kind::UInt { min: 1, max: 1 << 20 }, Some("256"), Sup),
    kw("find_multipaths", DEF, Kind::OneOf(&["yes", "no", "strict", "greedy", "smart", "on", "off", "1", "0"]), Some("strict"), Sup),
    kw("reassign_maps", DEF, Kind::YesNo, Some("no"), No(KERNEL)),
    kw("uid_attrs", DEF, Kind::Str, None, No(UDEV)),
    kw("max_fds", DEF, Kind::UIntOr { min: 0, max: INT_MAX, words: &["max"] }, Some("max"), No(DAEMON)),
    // umpath: whether IO held by no_path_retry keeps waiting while the
    // daemon stops (no: it fails at once, as dm-multipath's queueing is
    // turned off when multipathd stops).
    kw("queue_without_daemon", DEF, Kind::YesNo, Some("no"), Sup),
    // umpath: the group whose members may change things through the
    // control socket (fail, reinstate, fault, switch, reconfigure,
    // shutdown) besides root; `umpath daemon --admin-group` wins.
    kw("umpath_admin_group", DEF, Kind::NonEmpty, None, Sup),
    // umpath: the group whose members may open NBD sessions on the Unix
    // socket besides root (default: umpath_admin_group); `--nbd-group` wins.
    kw("umpath_nbd_group", DEF, Kind::NonEmpty, None, Sup),
    // umpath: use every SCSI disk found in sysfs as a path (as multipathd
    // does), in addition to the declared ones; `umpath daemon --scsi`
    // turns it on too.
    kw("umpath_scsi_discovery", DEF, Kind::YesNo, Some("no"), Sup),
    // umpath: attach every map to a kernel NBD device (`auto`: the first
    // free /dev/nbdN; `no`); a multipaths entry's `nbd_device` wins.
    kw("umpath_nbd_device", DEF, Kind::OneOf(&["auto", "no"]), Some("no"), Sup),
    // umpath: connections per kernel NBD device (0: one per CPU). 1 by
    // default: the kernel serves each connection's replies with a work
    // item of one workqueue, and when a worker is slow to start that item
    // lands on the workqueue's rescuer thread, where it never ends; the
    // next connection's replies then wait for the kernel's request
    // timeout (30 s). Seen at boot in the Debian guest (tests/vm_debian.rs).
    kw("umpath_nbd_connections", DEF, Kind::UInt { min: 0, max: 64 }, Some("1"), Sup),
    // umpath: seconds the kernel holds IO for a device whose connections
    // are all gone (the daemon restarting) before it fails it.
    kw("umpath_nbd_dead_conn_timeout", DEF, Kind::UInt { min: 1, max: DAY }, Some("60"), Sup),
    // umpath: the kernel's per-request timeout (0: the kernel's default,
    // 30 s). A request not answered in time is requeued on another
    // connection and its connection dropped (umpath replaces it); with 0
    // and one connection the kernel only warns.
    kw("umpath_nbd_timeout", DEF, Kind::UInt { min: 0, max: DAY }, Some("0"), Sup),
    kw("allow_usb_devices", DEF, Kind::YesNo, Some("no"), No(UDEV)),
    kw("mode", DM, Kind::Str, None, No(UDEV)),
    kw("uid", DM, Kind::Str, None, No(UDEV)),
    kw("gid", DM, Kind::Str, None, No(UDEV)),
    kw("max_retries", DEF, UINT, None, No(SCSI)),
    kw("bindings_file", DEF, Kind::NonEmpty, Some("/etc/multipath/bindings"), Dep("multipath-tools plans to remove it; umpath uses it for user_friendly_names")),
    kw("wwids_file", DEF, Kind::Str, Some("/etc/multipath/wwids"), Dep("multipath-tools will remove it")),
    kw("prkeys_file", DEF, Kind::Str, Some("/etc/multipath/prkeys"), Dep("multipath-tools will remove it")),
    kw("multipath_dir", DEF, Kind::Str, None, Dep(IGNORED)),
    kw("config_dir", DEF, Kind::NonEmpty, None, Dep("multipath-tools 0.9 ignores it and always reads /etc/multipath/conf.d; umpath reads the directory it names")),
    kw("disable_changed_wwids", DEF, Kind::Str, None, Dep(IGNORED)),
    kw("log_checker_err", DEF, Kind::OneOf(&["once", "always"]), Some("always"), No(NOT_YET)),
    kw("reservation_key", DM, Kind::Str, None, No(NOT_YET)),
    kw("force_sync", DEF, Kind::YesNo, Some("no"), No(DAEMON)),
    kw("strict_timing", DEF, Kind::YesNo, Some("no"), No(DAEMON)),
    kw("partition_delimiter", DEF, Kind::Str, None, No(UDEV)),
    kw("uxsock_timeout", DEF, UINT, Some("4000"), No(DAEMON)),
    kw("retrigger_tries", DEF, UINT, Some("3"), No(UDEV)),
    kw("retrigger_delay", DEF, UINT, Some("10"), No(UDEV)),
    kw("missing_uev_wait_timeout", DEF, UINT, Some("30"), No(UDEV)),
    kw("remove_retries", DEF, UINT, Some("0"), No(KERNEL)),
    kw("find_multipaths_timeout", DEF, Kind::Int { min: i32::MIN as i64, max: i32::MAX as i64 }, Some("-10"), No(UDEV)),
    kw("enable_foreign", DEF, Kind::Str, Some("NONE"), No(DAEMON)),
    // `fpin` (FC Fabric Performance Impact Notifications) is accepted and
    // warned about: umpath receives no FPIN events, so it acts as `off`.
    kw("marginal_pathgroups", DEF, Kind::OneOf(&["on", "off", "fpin", "yes", "no"]), Some("off"), Sup),
    // Applied by the daemon's size watch (every polling_interval).
    kw("auto_resize", DEF, Kind::OneOf(&["never", "grow_only", "grow_shrink"]), Some("never"), Sup),
    // --- devices/device ---
    kw("vendor", &[H], Kind::Regex, None, Sup),
    kw("product", &[H], Kind::Regex, None, Sup),
    kw("revision", &[H], Kind::Regex, None, Sup),
    kw("product_blacklist", &[H], Kind::Regex, None, Sup),
    kw("hardware_handler", &[H], Kind::Str, Some("0"), No(KERNEL)),
    kw("vpd_vendor", &[H], Kind::Str, None, No(SCSI)),
    // --- multipaths/multipath ---
    kw("wwid", &[M], Kind::NonEmpty, None, Sup),
    kw("alias", &[M], Kind::NonEmpty, None, Sup),
    // umpath: this map's kernel NBD device: `auto`, an index N
    // (/dev/nbdN) or `no`.
    kw("nbd_device", &[M], Kind::UIntOr { min: 0, max: 65535, words: &["auto", "no"] }, None, Sup),
    // --- blacklist, blacklist_exceptions ---
    multi("devnode", BLS, Kind::BlacklistRegex),
    multi("wwid", BLS, Kind::BlacklistRegex),
    multi("property", BLS, Kind::BlacklistRegex),
    multi("protocol", BLS, Kind::BlacklistRegex),
    kw("vendor", &[BLD], Kind::BlacklistRegex, None, Sup),
    kw("product", &[BLD], Kind::BlacklistRegex, None, Sup),
    // --- umpath paths/path ---
    kw("name", &[P], Kind::NonEmpty, None, Sup),
    kw("transport", &[P], Kind::NonEmpty, Some("file"), Sup),
    kw("file", &[P], Kind::NonEmpty, None, Sup),
    kw("vendor", &[P], Kind::Str, Some(""), Sup),
    kw("product", &[P], Kind::Str, Some(""), Sup),
    kw("revision", &[P], Kind::Str, Some(""), Sup),
    kw("wwid", &[P], Kind::NonEmpty, None, Sup),
    kw("serial", &[P], Kind::Str, Some(""), Sup),
];

/// Alternative spellings, mapped to the canonical keyword name.
pub fn canonical(name: &str) -> &str {
    match name {
        "checker" => "path_checker",
        other => other,
    }
}

/// The definition of `name` (after [`canonical`]) in `section`.
pub fn lookup(name: &str, section: Section) -> Option<&'static Keyword> {
    let name = canonical(name);
    KEYWORDS
        .iter()
        .find(|k| k.name == name && k.sections.contains(&section))
}

/// Whether `name` is a keyword in any section.
pub fn is_known(name: &str) -> bool {
    let name = canonical(name);
    KEYWORDS.iter().any(|k| k.name == name)
}

/// The sections that accept `name`, for "not valid here" messages.
pub fn sections_of(name: &str) -> Vec<Section> {
    let name = canonical(name);
    let mut v: Vec<Section> = KEYWORDS
        .iter()
        .filter(|k| k.name == name)
        .flat_map(|k| k.sections.iter().copied())
        .collect();
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(name: &str, s: Section) -> &'static Keyword {
        lookup(name, s).unwrap_or_else(|| panic!("{name} in {s}"))
    }

    #[test]
    fn no_duplicate_definitions_per_section() {
        for (i, a) in KEYWORDS.iter().enumerate() {
            for b in &KEYWORDS[i + 1..] {
                if a.name == b.name {
                    for s in a.sections {
                        assert!(!b.sections.contains(s), "{} twice in {s}", a.name);
                    }
                }
            }
        }
    }

    #[test]
    fn defaults_are_valid_values() {
        for k in KEYWORDS {
            if let Some(d) = k.default {
                if k.kind == Kind::NonEmpty && d.is_empty() {
                    continue;
                }
                let r = k.check(d);
                assert!(r.is_ok(), "default {d:?} of {}: {r:?}", k.name);
                assert!(r.unwrap().1.is_none(), "default of {} warns", k.name);
            }
        }
    }

    #[test]
    fn checker_alias() {
        assert_eq!(def("checker", Section::Device).name, "path_checker");
        assert!(lookup("checker", Section::Multipath).is_none());
    }

    #[test]
    fn grouping_all_six() {
        let k = def("path_grouping_policy", Section::Defaults);
        for g in GroupingPolicy::ALL {
            assert_eq!(k.check(g.as_str()).unwrap().0, Typed::Grouping(g));
        }
        let e = k.check("foo").unwrap_err();
        assert!(e.contains("'foo'") && e.contains("multibus"), "{e}");
    }

    #[test]
    fn numbers() {
        let k = def("rr_min_io", Section::Device);
        assert_eq!(k.check("100").unwrap().0, Typed::UInt(100));
        assert!(k.check("abc").unwrap_err().contains("expected an integer"));
        assert!(k.check("0").unwrap_err().contains("out of range"));
        assert!(k
            .check("99999999999999999999999")
            .unwrap_err()
            .contains("out of range"));
        assert!(k.check("-3").unwrap_err().contains("out of range"));
        let v = def("verbosity", Section::Defaults);
        assert!(v.check("7").unwrap_err().contains("between 0 and 6"));
        let dl = def("dev_loss_tmo", Section::Device);
        assert_eq!(
            dl.check("infinity").unwrap().0,
            Typed::Word("infinity".into())
        );
        assert_eq!(dl.check("600").unwrap().0, Typed::UInt(600));
        assert!(dl.check("forever").is_err());
        let fmt = def("find_multipaths_timeout", Section::Defaults);
        assert_eq!(fmt.check("-10").unwrap().0, Typed::Int(-10));
    }

    #[test]
    fn failback_and_no_path_retry() {
        let f = def("failback", Section::Overrides);
        assert_eq!(
            f.check("immediate").unwrap().0,
            Typed::Failback(Failback::Immediate)
        );
        assert_eq!(
            f.check("15").unwrap().0,
            Typed::Failback(Failback::DeferredSecs(15))
        );
        assert!(f.check("sometimes").unwrap_err().contains("'sometimes'"));
        let n = def("no_path_retry", Section::Multipath);
        assert_eq!(
            n.check("queue").unwrap().0,
            Typed::NoPathRetry(NoPathRetry::Queue)
        );
        assert_eq!(
            n.check("12").unwrap().0,
            Typed::NoPathRetry(NoPathRetry::Retries(12))
        );
        assert!(n.check("forever").is_err());
    }

    #[test]
    fn checkers() {
        let c = def("path_checker", Section::Defaults);
        for k in CheckerKind::ALL {
            let (v, w) = c.check(k.as_str()).unwrap();
            assert!(w.is_none());
            assert_eq!(
                v,
                Typed::Checker {
                    kind: k,
                    name: k.as_str().into()
                }
            );
        }
        let (v, w) = c.check("rdac").unwrap();
        assert!(matches!(
            v,
            Typed::Checker {
                kind: CheckerKind::Tur,
                ..
            }
        ));
        assert!(w.unwrap().contains("rdac"));
        assert!(c.check("bogus").is_err());
    }

    #[test]
    fn selector_and_features() {
        let s = def("path_selector", Section::Device);
        assert_eq!(
            s.check("round-robin 0").unwrap().0,
            Typed::Selector(SelectorKind::RoundRobin)
        );
        assert!(s.check("round-robin 1").is_err());
        let hst = s.check("historical-service-time 2 900 2").unwrap().0;
        assert_eq!(
            hst,
            Typed::Selector(SelectorKind::parse("historical-service-time 2 900 2").unwrap())
        );
        assert!(s.check("historical-service-time 0").is_ok());
        assert!(s.check("historical-service-time 1 1024").is_err());
        assert!(s.check("historical-service-time 2 900").is_err());
        let f = def("features", Section::Device);
        assert!(f.check("1 queue_if_no_path").unwrap().1.is_none());
        assert!(f.check("2 queue_if_no_path").unwrap().1.is_some());
        assert!(f.check("queue_if_no_path").is_err());
    }

    #[test]
    fn patterns() {
        let p = Pattern::new("^DGC").unwrap();
        assert!(p.is_match("DGC"));
        assert!(!p.is_match("xDGC"));
        let q = Pattern::new("bar").unwrap();
        assert!(q.is_match("rhabarber") && !q.is_match("Bar"));
        let n = Pattern::blacklist("!^sd[a-z]").unwrap();
        assert!(!n.is_match("sda") && n.is_match("loop0"));
        let lit = Pattern::blacklist("\\!x").unwrap();
        assert!(lit.is_match("a!x") && !lit.is_match("x"));
        let e = Pattern::new("a(b").unwrap_err();
        assert!(e.starts_with("invalid regular expression \"a(b\""), "{e}");
        assert!(!e.contains('\n'));
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The literal fast path agrees with the regex engine.
        #[test]
        fn literal_patterns_match_like_regexes(
            pat in "[a-cA-C0-9 _/:#&~!<>=,;'\"%@-]{0,4}",
            text in "[a-cA-C0-9 _/:#&~!<>=,;'\"%@-]{0,8}",
        ) {
            let p = Pattern::new(&pat).unwrap();
            let r = Regex::new(&pat).unwrap();
            prop_assert_eq!(p.is_match(&text), r.is_match(&text));
        }
    }
}
