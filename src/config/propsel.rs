//! Property selection: the value of each setting for a path, and where it
//! came from.
//!
//! Precedence, strongest first (as in multipath-tools):
//!
//! 1. `multipaths`: the `multipath {}` entries whose wwid equals the path's
//!    WWID (later entries before earlier ones);
//! 2. `overrides`;
//! 3. `devices`: every matching device entry, attribute by attribute, the
//!    user's entries first (later before earlier), then the built-in
//!    hardware table (later before earlier);
//! 4. `defaults`;
//! 5. the built-in default.
//!
//! A keyword only takes part at the levels whose sections accept it (e.g.
//! `path_checker` cannot be set per multipath).

use std::fmt;

use crate::policy::shaky::{MarginalPathgroups, ShakyConfig, ShakyKeywords};
use crate::policy::{CheckerKind, Failback, GroupingPolicy, NoPathRetry, RrWeight, SelectorKind};
use crate::prio::{DetectFacts, PrioConfigError, PrioSource, Prioritizer};

use super::data::Config;
use super::defaults;
use super::diag::Span;
use super::hwtable;
use super::keywords::{canonical, Assignment, Pattern, Typed};
use super::sections::{
    Blacklist, BlacklistDevice, BlacklistEntry, DeviceEntry, MultipathEntry, PathIdentity,
};

/// Where a setting's value came from. `file`/`line` point at the line
/// that set the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Multipath {
        file: String,
        line: u32,
    },
    Overrides {
        file: String,
        line: u32,
    },
    /// A device entry; for a built-in hwtable entry `builtin` is true,
    /// `file` is "(built-in hwtable)" and `line` is 0.
    Device {
        file: String,
        line: u32,
        vendor: String,
        product: String,
        builtin: bool,
    },
    Defaults {
        file: String,
        line: u32,
    },
    /// The built-in default.
    Builtin,
    /// Chosen from what the storage device reports (`detect_prio`,
    /// `detect_pgpolicy`), whatever the configuration said.
    Autodetected,
    /// The configured value cannot work on this device and multipath-tools'
    /// fallback replaced it; `why` is multipath-tools' wording.
    Fallback {
        why: &'static str,
    },
}

/// `why` of the `alua` prioritizer's fallback to `const`.
pub const ALUA_FALLBACK: &str = "alua failed";
/// `why` of `group_by_tpg`'s fallback to `failover`.
pub const TPG_FALLBACK: &str = "not all paths use alua prio";

impl fmt::Display for Origin {
    /// Like `multipath -v3`'s "(setting: ...)" notes, with file:line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Multipath { file, line } => {
                write!(
                    f,
                    "(setting: multipath.conf multipaths section, {file}:{line})"
                )
            }
            Origin::Overrides { file, line } => {
                write!(
                    f,
                    "(setting: multipath.conf overrides section, {file}:{line})"
                )
            }
            Origin::Device {
                vendor,
                product,
                builtin: true,
                ..
            } => write!(
                f,
                "(setting: storage device configuration, built-in hwtable entry \
                 vendor \"{vendor}\" product \"{product}\")"
            ),
            Origin::Device {
                file,
                line,
                vendor,
                product,
                builtin: false,
            } => write!(
                f,
                "(setting: storage device configuration, {file}:{line}, \
                 vendor \"{vendor}\" product \"{product}\")"
            ),
            Origin::Defaults { file, line } => {
                write!(
                    f,
                    "(setting: multipath.conf defaults section, {file}:{line})"
                )
            }
            Origin::Builtin => f.write_str("(setting: multipath internal)"),
            Origin::Autodetected => f.write_str("(setting: storage device autodetected)"),
            Origin::Fallback { why } => write!(f, "(setting: emergency fallback - {why})"),
        }
    }
}

/// A selected value and its origin.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting<T> {
    pub value: T,
    pub origin: Origin,
}

impl<T> Setting<T> {
    pub fn builtin(value: T) -> Self {
        Setting {
            value,
            origin: Origin::Builtin,
        }
    }
}

/// The settings of one path (and of the map its WWID forms).
#[derive(Debug, Clone, PartialEq)]
pub struct PathSettings {
    pub path_grouping_policy: Setting<GroupingPolicy>,
    pub path_selector: Setting<SelectorKind>,
    pub rr_min_io: Setting<u32>,
    pub rr_min_io_rq: Setting<u32>,
    pub rr_weight: Setting<RrWeight>,
    pub failback: Setting<Failback>,
    /// A hardware-specific checker written in the file (e.g. `rdac`) runs
    /// as [`CheckerKind::Tur`].
    pub path_checker: Setting<CheckerKind>,
    /// Unset means fail. If unset everywhere and `features` contains
    /// `queue_if_no_path`, this is `Queue` with the origin of `features`
    /// (multipath-tools does the same; `queue_if_no_path` is deprecated).
    pub no_path_retry: Setting<NoPathRetry>,
    /// Seconds; `None`: the transport's own default.
    pub checker_timeout: Setting<Option<u32>>,
    pub prio: Setting<String>,
    /// The `prio_args` of the section that gave `prio` (see
    /// [`PathSettings::prioritizer`]).
    pub prio_args: Setting<String>,
    pub features: Setting<String>,
    pub user_friendly_names: Setting<bool>,
    pub alias_prefix: Setting<String>,
    pub uid_attribute: Setting<String>,
    /// From the `multipaths` entry for this WWID only.
    pub alias: Option<Setting<String>>,
    /// Deprecated keyword, recorded when set.
    pub getuid_callout: Option<Setting<String>>,
    /// How many consecutive requests the round-robin selector sends down a
    /// path before moving on.
    ///
    /// umpath counts NBD requests, so it honours the repeat count the admin
    /// wrote: this is `rr_min_io` if `rr_min_io` was set explicitly
    /// anywhere (its origin is not [`Origin::Builtin`]) and its origin has
    /// at least the precedence of `rr_min_io_rq`'s origin; otherwise it is
    /// `rr_min_io_rq` (default 1). So a device entry with `rr_min_io 100`
    /// gives 100, a bare configuration gives 1. (dm-multipath's
    /// request-based maps only use `rr_min_io_rq`, and current kernels
    /// ignore both; umpath honours them.)
    pub repeat_count: Setting<u32>,
    /// Shaky and marginal path detection, derived from the
    /// `san_path_err_*`, `marginal_path_*`, `delay_watch_checks`/
    /// `delay_wait_checks` keywords of this path (each selected by the
    /// usual precedence), `max_polling_interval` and `marginal_pathgroups`
    /// (see [`ShakyConfig::from_keywords`]).
    pub shaky: ShakyConfig,
    /// The shaky/marginal keywords as selected, for listing:
    /// `san_path_err_*`, `marginal_path_*` (value as written, "no" when
    /// unset) and `marginal_pathgroups` (defaults only).
    pub shaky_keywords: Vec<(&'static str, Setting<String>)>,
    /// Replace `prio` with the prioritizer the device reports support for
    /// (see [`PathSettings::apply_detect_prio`]).
    pub detect_prio: Setting<bool>,
    /// Group a map whose paths all use an ALUA prioritizer by priority
    /// (see [`PathSettings::apply_detect_pgpolicy`]).
    pub detect_pgpolicy: Setting<bool>,
    /// With `detect_pgpolicy`: group by target port group instead.
    pub detect_pgpolicy_use_tpg: Setting<bool>,
}

/// The shaky and marginal path keywords listed by
/// [`PathSettings::entries`], in `multipath -t` order.
pub const SHAKY_KEYWORDS: [&str; 7] = [
    "san_path_err_threshold",
    "san_path_err_forget_rate",
    "san_path_err_recovery_time",
    "marginal_path_err_sample_time",
    "marginal_path_err_rate_threshold",
    "marginal_path_err_recheck_gap_time",
    "marginal_path_double_failed_time",
];

/// Precedence of an origin: level (higher is stronger) and, within the
/// multipaths and devices levels, the position in precedence order (lower
/// index is stronger).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rank {
    level: u8,
    index: usize,
}

impl Rank {
    const BUILTIN: Rank = Rank { level: 0, index: 0 };

    /// `self` is at least as strong as `other`.
    fn at_least(self, other: Rank) -> bool {
        self.level > other.level || (self.level == other.level && self.index <= other.index)
    }
}

/// The entries that apply to one path, in precedence order.
pub(crate) struct Applicable<'a> {
    multipaths: Vec<&'a MultipathEntry>,
    devices: Vec<&'a DeviceEntry>,
}

/// One value found for a keyword.
struct Found<'a> {
    asg: &'a Assignment,
    origin: Origin,
    rank: Rank,
}

fn origin_line(a: &Assignment) -> (String, u32) {
    (a.span.file.to_string(), a.span.line)
}

impl Config {
    /// The user's device entries then the built-in ones, each in
    /// precedence order (later before earlier), that match `id`.
    pub fn matching_devices<'a>(&'a self, id: &PathIdentity<'_>) -> Vec<&'a DeviceEntry> {
        self.hwtable().rev().filter(|d| d.matches(id)).collect()
    }

    /// The `multipath {}` entries for `id.wwid`, later before earlier.
    pub fn matching_multipaths<'a>(&'a self, id: &PathIdentity<'_>) -> Vec<&'a MultipathEntry> {
        self.multipaths
            .iter()
            .rev()
            .filter(|m| m.wwid == id.wwid)
            .collect()
    }

    fn applicable<'a>(&'a self, id: &PathIdentity<'_>) -> Applicable<'a> {
        Applicable {
            multipaths: self.matching_multipaths(id),
            devices: self.matching_devices(id),
        }
    }

    fn find<'a>(&'a self, app: &Applicable<'a>, keyword: &str) -> Option<Found<'a>> {
        let keyword = canonical(keyword);
        for (i, m) in app.multipaths.iter().enumerate() {
            if let Some(asg) = m.attrs.get(keyword) {
                let (file, line) = origin_line(asg);
                return Some(Found {
                    asg,
                    origin: Origin::Multipath { file, line },
                    rank: Rank { level: 4, index: i },
                });
            }
        }
        if let Some(asg) = self.overrides.get(keyword) {
            let (file, line) = origin_line(asg);
            return Some(Found {
                asg,
                origin: Origin::Overrides { file, line },
                rank: Rank { level: 3, index: 0 },
            });
        }
        for (i, d) in app.devices.iter().enumerate() {
            if let Some(asg) = d.attrs.get(keyword) {
                let (file, line) = origin_line(asg);
                return Some(Found {
                    asg,
                    origin: Origin::Device {
                        file,
                        line,
                        vendor: d.vendor.as_str().to_string(),
                        product: d.product.as_str().to_string(),
                        builtin: d.builtin || is_builtin_span(asg),
                    },
                    rank: Rank { level: 2, index: i },
                });
            }
        }
        if let Some(asg) = self.defaults.get(keyword) {
            let (file, line) = origin_line(asg);
            return Some(Found {
                asg,
                origin: Origin::Defaults { file, line },
                rank: Rank { level: 1, index: 0 },
            });
        }
        None
    }

    /// The strongest assignment of `keyword` for `id` and its origin, or
    /// `None` if only the built-in default applies. Works for every
    /// keyword, including ones [`PathSettings`] does not carry.
    pub fn lookup(&self, id: &PathIdentity<'_>, keyword: &str) -> Option<(&Assignment, Origin)> {
        let app = self.applicable(id);
        self.find(&app, keyword).map(|f| (f.asg, f.origin))
    }

    fn select<T>(
        &self,
        app: &Applicable<'_>,
        keyword: &str,
        extract: impl Fn(&Typed) -> Option<T>,
        default: T,
    ) -> (Setting<T>, Rank) {
        if let Some(f) = self.find(app, keyword) {
            if let Some(value) = extract(&f.asg.value) {
                return (
                    Setting {
                        value,
                        origin: f.origin,
                    },
                    f.rank,
                );
            }
        }
        (Setting::builtin(default), Rank::BUILTIN)
    }

    /// `prio_args` goes with `prio`, as in multipath-tools: the one of
    /// the section that gave `prio` (for device entries: the first
    /// matching entry that has `prio_args`, whichever gave `prio`), else
    /// empty. `prio_args` in a stronger section without `prio` is not
    /// used.
    fn prio_args(&self, app: &Applicable<'_>, prio_rank: Rank) -> Setting<String> {
        let asg = match prio_rank.level {
            4 => app
                .multipaths
                .get(prio_rank.index)
                .and_then(|m| m.attrs.get("prio_args"))
                .map(|a| {
                    (
                        a,
                        Origin::Multipath {
                            file: a.span.file.to_string(),
                            line: a.span.line,
                        },
                    )
                }),
            3 => self.overrides.get("prio_args").map(|a| {
                (
                    a,
                    Origin::Overrides {
                        file: a.span.file.to_string(),
                        line: a.span.line,
                    },
                )
            }),
            2 => app.devices.iter().find_map(|d| {
                d.attrs.get("prio_args").map(|a| {
                    let (file, line) = origin_line(a);
                    let origin = Origin::Device {
                        file,
                        line,
                        vendor: d.vendor.as_str().to_string(),
                        product: d.product.as_str().to_string(),
                        builtin: d.builtin || is_builtin_span(a),
                    };
                    (a, origin)
                })
            }),
            1 => self.defaults.get("prio_args").map(|a| {
                (
                    a,
                    Origin::Defaults {
                        file: a.span.file.to_string(),
                        line: a.span.line,
                    },
                )
            }),
            _ => None,
        };
        match asg {
            Some((a, origin)) => Setting {
                value: a.text.clone(),
                origin,
            },
            None => Setting::builtin(defaults::PRIO_ARGS.into()),
        }
    }

    /// Every setting for a path with identity `id`.
    pub fn resolve(&self, id: &PathIdentity<'_>) -> PathSettings {
        let app = self.applicable(id);
        let string = |t: &Typed| match t {
            Typed::Str(s) | Typed::Word(s) => Some(s.clone()),
            _ => None,
        };
        let uint = |t: &Typed| match t {
            Typed::UInt(v) => Some(*v),
            _ => None,
        };
        let (path_grouping_policy, _) = self.select(
            &app,
            "path_grouping_policy",
            |t| match t {
                Typed::Grouping(g) => Some(*g),
                _ => None,
            },
            defaults::PATH_GROUPING_POLICY,
        );
        let (path_selector, _) = self.select(
            &app,
            "path_selector",
            |t| match t {
                Typed::Selector(s) => Some(*s),
                _ => None,
            },
            defaults::PATH_SELECTOR,
        );
        let (rr_min_io, rr_rank) = self.select(&app, "rr_min_io", uint, defaults::RR_MIN_IO);
        let (rr_min_io_rq, rq_rank) =
            self.select(&app, "rr_min_io_rq", uint, defaults::RR_MIN_IO_RQ);
        let (rr_weight, _) = self.select(
            &app,
            "rr_weight",
            |t| match t {
                Typed::RrWeight(w) => Some(*w),
                _ => None,
            },
            defaults::RR_WEIGHT,
        );
        let (failback, _) = self.select(
            &app,
            "failback",
            |t| match t {
                Typed::Failback(f) => Some(*f),
                _ => None,
            },
            defaults::FAILBACK,
        );
        let (path_checker, _) = self.select(
            &app,
            "path_checker",
            |t| match t {
                Typed::Checker { kind, .. } => Some(*kind),
                _ => None,
            },
            defaults::PATH_CHECKER,
        );
        let (features, _) = self.select(&app, "features", string, defaults::FEATURES.into());
        let (mut no_path_retry, _) = self.select(
            &app,
            "no_path_retry",
            |t| match t {
                Typed::NoPathRetry(n) => Some(*n),
                _ => None,
            },
            defaults::NO_PATH_RETRY,
        );
        if no_path_retry.origin == Origin::Builtin
            && features
                .value
                .split_whitespace()
                .any(|w| w == "queue_if_no_path")
        {
            no_path_retry = Setting {
                value: NoPathRetry::Queue,
                origin: features.origin.clone(),
            };
        }
        let (checker_timeout, _) = self.select(
            &app,
            "checker_timeout",
            |t| match t {
                Typed::UInt(0) => Some(None),
                Typed::UInt(v) => Some(Some(*v)),
                _ => None,
            },
            None,
        );
        let (prio, prio_rank) = self.select(&app, "prio", string, defaults::PRIO.into());
        let prio_args = self.prio_args(&app, prio_rank);
        let (user_friendly_names, _) = self.select(
            &app,
            "user_friendly_names",
            |t| match t {
                Typed::Bool(b) => Some(*b),
                _ => None,
            },
            defaults::USER_FRIENDLY_NAMES,
        );
        let (alias_prefix, _) =
            self.select(&app, "alias_prefix", string, defaults::ALIAS_PREFIX.into());
        let (uid_attribute, _) = self.select(
            &app,
            "uid_attribute",
            string,
            defaults::UID_ATTRIBUTE.into(),
        );
        let optional = |keyword: &str| {
            self.find(&app, keyword).and_then(|f| {
                string(&f.asg.value).map(|value| Setting {
                    value,
                    origin: f.origin,
                })
            })
        };
        let alias = optional("alias");
        let getuid_callout = optional("getuid_callout");

        // `rr_min_io 1000` in defaults is multipath-tools' default as
        // `multipath -t` (and `umpath show config`) print it: it does not
        // count as set, so that a printed configuration reads back the same.
        let rr_set = match rr_min_io.origin {
            Origin::Builtin => false,
            Origin::Defaults { .. } => rr_min_io.value != defaults::RR_MIN_IO,
            _ => true,
        };
        let repeat_count = if rr_set && rr_rank.at_least(rq_rank) {
            rr_min_io.clone()
        } else {
            rr_min_io_rq.clone()
        };

        let no_or_uint = |keyword: &str| {
            self.find(&app, keyword).and_then(|f| match f.asg.value {
                Typed::UInt(v) => Some(v),
                _ => None,
            })
        };
        let shaky = ShakyConfig::from_keywords(
            &ShakyKeywords {
                san_path_err_threshold: no_or_uint("san_path_err_threshold"),
                san_path_err_forget_rate: no_or_uint("san_path_err_forget_rate"),
                san_path_err_recovery_time: no_or_uint("san_path_err_recovery_time"),
                marginal_path_err_sample_time: no_or_uint("marginal_path_err_sample_time"),
                marginal_path_err_rate_threshold: no_or_uint("marginal_path_err_rate_threshold"),
                marginal_path_err_recheck_gap_time: no_or_uint(
                    "marginal_path_err_recheck_gap_time",
                ),
                marginal_path_double_failed_time: no_or_uint("marginal_path_double_failed_time"),
                delay_watch_checks: no_or_uint("delay_watch_checks"),
                delay_wait_checks: no_or_uint("delay_wait_checks"),
            },
            std::time::Duration::from_secs(u64::from(self.max_polling_interval)),
            self.marginal_pathgroups(),
        );

        let boolean = |t: &Typed| match t {
            Typed::Bool(b) => Some(*b),
            _ => None,
        };
        let (detect_prio, _) = self.select(&app, "detect_prio", boolean, defaults::DETECT_PRIO);
        let (detect_pgpolicy, _) =
            self.select(&app, "detect_pgpolicy", boolean, defaults::DETECT_PGPOLICY);
        let (detect_pgpolicy_use_tpg, _) = self.select(
            &app,
            "detect_pgpolicy_use_tpg",
            boolean,
            defaults::DETECT_PGPOLICY_USE_TPG,
        );
        let mut shaky_keywords: Vec<(&'static str, Setting<String>)> = SHAKY_KEYWORDS
            .iter()
            .map(|&k| {
                let s = match self.find(&app, k) {
                    Some(f) => Setting {
                        value: super::render::value_text(k, &f.asg.value).0,
                        origin: f.origin,
                    },
                    None => Setting::builtin("no".to_string()),
                };
                (k, s)
            })
            .collect();
        shaky_keywords.push((
            "marginal_pathgroups",
            match self.defaults.get("marginal_pathgroups") {
                Some(a) => Setting {
                    value: a.text.clone(),
                    origin: Origin::Defaults {
                        file: a.span.file.to_string(),
                        line: a.span.line,
                    },
                },
                None => Setting::builtin("off".to_string()),
            },
        ));

        PathSettings {
            shaky,
            shaky_keywords,
            detect_prio,
            detect_pgpolicy,
            detect_pgpolicy_use_tpg,
            path_grouping_policy,
            path_selector,
            rr_min_io,
            rr_min_io_rq,
            rr_weight,
            failback,
            path_checker,
            no_path_retry,
            checker_timeout,
            prio,
            prio_args,
            features,
            user_friendly_names,
            alias_prefix,
            uid_attribute,
            alias,
            getuid_callout,
            repeat_count,
        }
    }

    /// The blacklist in force, as multipath-tools assembles it: the
    /// user's entries, then the built-in `devnode` entry, then one
    /// `device` entry per (vendor, product_blacklist) pair of the hardware
    /// table (built-in and user entries); entries with identical strings
    /// are kept once (the first).
    pub fn effective_blacklist(&self) -> Blacklist {
        let mut bl = self.blacklist.clone();
        let builtin = hwtable::builtin_blacklist();
        bl.devnode.extend(builtin.devnode.iter().cloned());
        bl.wwid.extend(builtin.wwid.iter().cloned());
        bl.property.extend(builtin.property.iter().cloned());
        bl.protocol.extend(builtin.protocol.iter().cloned());
        for d in self.hwtable() {
            let Some(Assignment {
                value: Typed::Regex(p),
                span,
                ..
            }) = d.attrs.get("product_blacklist")
            else {
                continue;
            };
            let dup = bl.device.iter().any(|b| {
                b.vendor.as_ref().map(Pattern::as_str) == Some(d.vendor.as_str())
                    && b.product.as_ref().map(Pattern::as_str) == Some(p.as_str())
            });
            if dup {
                continue;
            }
            let compile = |t: &str| {
                hwtable::builtin_blacklist_pattern(t).map_or_else(|| Pattern::blacklist(t), Ok)
            };
            let (Ok(vendor), Ok(product)) = (compile(d.vendor.as_str()), compile(p.as_str()))
            else {
                continue;
            };
            bl.device.push(BlacklistDevice {
                vendor: Some(vendor),
                product: Some(product),
                span: span.clone(),
                builtin: d.builtin || is_builtin_span_of(span),
                from_product_blacklist: true,
            });
        }
        dedup_blacklist(&mut bl);
        bl
    }

    /// The blacklist exceptions in force: the user's, then the built-in
    /// `property` exception; identical strings kept once.
    pub fn effective_exceptions(&self) -> Blacklist {
        let mut ex = self.blacklist_exceptions.clone();
        let builtin = hwtable::builtin_blacklist_exceptions();
        ex.devnode.extend(builtin.devnode.iter().cloned());
        ex.wwid.extend(builtin.wwid.iter().cloned());
        ex.property.extend(builtin.property.iter().cloned());
        ex.protocol.extend(builtin.protocol.iter().cloned());
        ex.device.extend(builtin.device.iter().cloned());
        dedup_blacklist(&mut ex);
        ex
    }

    /// Why a path with identity `id` is blacklisted (with file:line), or
    /// `None` if it is not.
    ///
    /// multipath-tools checks property, devnode, device, protocol and wwid
    /// in that order, an exception beating a blacklist entry of the same
    /// kind. Declared paths have no udev properties, device node or
    /// protocol, so only `device` entries (including those made from
    /// `product_blacklist` of device entries) and `wwid` entries apply.
    pub fn blacklisted(&self, id: &PathIdentity<'_>) -> Option<String> {
        self.blacklisted_dev(id, None)
    }

    /// [`Config::blacklisted`] for a path that has a kernel device node
    /// (`devnode`, e.g. `"sdb"`): `devnode` entries (the user's, then the
    /// built-in `!^(sd[a-z]|dasd[a-z]|nvme[0-9])`, with their exceptions)
    /// are checked first, as multipath-tools does. `property` entries are
    /// still not checked: umpath reads no udev database.
    pub fn blacklisted_dev(&self, id: &PathIdentity<'_>, devnode: Option<&str>) -> Option<String> {
        let bl = self.effective_blacklist();
        let ex = self.effective_exceptions();

        // devnode
        if let Some(node) = devnode {
            let excepted = ex.devnode.iter().any(|e| e.pattern.is_match(node));
            if !excepted {
                if let Some(e) = bl.devnode.iter().find(|e| e.pattern.is_match(node)) {
                    return Some(describe_entry_hit("devnode", e));
                }
            }
        }

        // device
        let excepted_device = ex.device.iter().any(|d| d.matches(id.vendor, id.product));
        if !excepted_device {
            if let Some(d) = bl.device.iter().find(|d| d.matches(id.vendor, id.product)) {
                return Some(describe_device_hit(d));
            }
        }

        // wwid
        let excepted_wwid = ex.wwid.iter().any(|e| e.pattern.is_match(id.wwid));
        if !excepted_wwid {
            if let Some(e) = bl.wwid.iter().find(|e| e.pattern.is_match(id.wwid)) {
                return Some(describe_entry_hit("wwid", e));
            }
        }
        None
    }
}

fn is_builtin_span_of(span: &Span) -> bool {
    span.line == 0 && &*span.file == hwtable::BUILTIN_HWTABLE_FILE
}

fn is_builtin_span(a: &Assignment) -> bool {
    is_builtin_span_of(&a.span)
}

/// Drops later entries whose strings equal an earlier one's (as
/// multipath-tools' blacklist merge does; protocol entries are kept).
fn dedup_blacklist(bl: &mut Blacklist) {
    fn simple(v: &mut Vec<BlacklistEntry>) {
        let mut seen = std::collections::HashSet::new();
        v.retain(|e| seen.insert(e.pattern.as_str().to_string()));
    }
    simple(&mut bl.devnode);
    simple(&mut bl.wwid);
    simple(&mut bl.property);
    let mut seen = std::collections::HashSet::new();
    bl.device.retain(|d| {
        seen.insert((
            d.vendor.as_ref().map(|p| p.as_str().to_string()),
            d.product.as_ref().map(|p| p.as_str().to_string()),
        ))
    });
}

fn describe_device_hit(d: &BlacklistDevice) -> String {
    if d.from_product_blacklist {
        let place = if d.builtin {
            "a built-in hwtable entry".to_string()
        } else {
            format!("the device entry at {}", d.span)
        };
        return format!(
            "blacklisted by product_blacklist \"{}\" (vendor \"{}\") of {place}",
            d.product.as_ref().map_or("", Pattern::as_str),
            d.vendor.as_ref().map_or("", Pattern::as_str),
        );
    }
    if d.builtin {
        format!(
            "blacklisted by built-in blacklist device entry ({})",
            d.describe()
        )
    } else {
        format!(
            "blacklisted by blacklist device entry at {} ({})",
            d.span,
            d.describe()
        )
    }
}

fn describe_entry_hit(kind: &str, e: &BlacklistEntry) -> String {
    if e.builtin {
        format!("blacklisted by built-in blacklist {kind} \"{}\"", e.pattern)
    } else {
        format!(
            "blacklisted by blacklist {kind} \"{}\" at {}",
            e.pattern, e.span
        )
    }
}

impl Config {
    /// `marginal_pathgroups` (defaults only): `on`/`yes` keep marginal
    /// paths usable in groups of their own; `off`/`no` and `fpin` (umpath
    /// receives no FC FPIN events; the load warns) hold them out.
    pub fn marginal_pathgroups(&self) -> MarginalPathgroups {
        match self.defaults.get("marginal_pathgroups") {
            Some(a) if matches!(&a.value, Typed::Word(w) | Typed::Str(w) if w == "on" || w == "yes") => {
                MarginalPathgroups::On
            }
            _ => MarginalPathgroups::Off,
        }
    }
}

impl PathSettings {
    /// The prioritizer `prio` and `prio_args` make (the load reported
    /// any error with file:line already).
    pub fn prioritizer(&self) -> Result<Prioritizer, PrioConfigError> {
        Prioritizer::parse(&self.prio.value, &self.prio_args.value)
    }

    /// `detect_prio` (multipath-tools' `select_prio`): with `facts` about
    /// the device, `prio` and `prio_args` become what
    /// [`crate::prio::select`] picks, with origin [`Origin::Autodetected`]
    /// when detection chose them, or `const` with
    /// [`Origin::Fallback`] when `alua` meets a SCSI LUN without target
    /// port groups. Returns true if the settings changed.
    ///
    /// Left alone: a `prio`/`prio_args` that does not parse (the load
    /// reported it), and `alua` on a path that is not SCSI (the load and
    /// `check-config` report it with file:line, and the path keeps
    /// priority 1 with a warning, rather than falling back silently).
    pub fn apply_detect_prio(&mut self, facts: &DetectFacts) -> bool {
        let Ok(configured) = self.prioritizer() else {
            return false;
        };
        let (p, source) = crate::prio::select(configured, self.detect_prio.value, facts);
        let origin = match source {
            PrioSource::Configured => return false,
            PrioSource::AluaFallback if !facts.scsi => return false,
            PrioSource::AluaFallback => Origin::Fallback { why: ALUA_FALLBACK },
            PrioSource::Autodetected => Origin::Autodetected,
        };
        self.prio = Setting {
            value: p.name().to_string(),
            origin: origin.clone(),
        };
        self.prio_args = Setting {
            value: p.args(),
            origin,
        };
        true
    }

    /// The prioritizer is ALUA-aware (`alua` or `sysfs`), which is what
    /// `detect_pgpolicy` asks of every path of a map.
    pub fn uses_alua_prio(&self) -> bool {
        matches!(
            self.prioritizer(),
            Ok(Prioritizer::Alua { .. } | Prioritizer::Sysfs { .. })
        )
    }

    /// `detect_pgpolicy` and `detect_pgpolicy_use_tpg` (multipath-tools'
    /// `select_pgpolicy`), `all_alua` being true when every path of the
    /// map [uses an ALUA prioritizer](PathSettings::uses_alua_prio):
    /// `group_by_prio` (or `group_by_tpg`) with [`Origin::Autodetected`];
    /// `group_by_tpg` on a map that is not all ALUA falls back to
    /// `failover` ([`Origin::Fallback`]), unless `tpg_declared` (every
    /// path is a declared one with a `tpg` key: umpath groups those by
    /// the declared groups). Returns true if the setting changed.
    pub fn apply_detect_pgpolicy(&mut self, all_alua: bool, tpg_declared: bool) -> bool {
        let configured = self.path_grouping_policy.value;
        let detect = self.detect_pgpolicy.value && all_alua;
        let value = crate::policy::grouping::detect_pgpolicy(
            configured,
            detect,
            self.detect_pgpolicy_use_tpg.value,
            all_alua || tpg_declared,
        );
        let origin = if detect {
            Origin::Autodetected
        } else if value != configured {
            Origin::Fallback { why: TPG_FALLBACK }
        } else {
            return false;
        };
        let new = Setting { value, origin };
        let changed = new != self.path_grouping_policy;
        self.path_grouping_policy = new;
        changed
    }

    /// Every effective property as (keyword, value, origin), in the order
    /// `multipath -t` prints them.
    pub fn entries(&self) -> Vec<(&'static str, String, &Origin)> {
        fn e<'a, T: ToString>(
            k: &'static str,
            s: &'a Setting<T>,
        ) -> (&'static str, String, &'a Origin) {
            (k, s.value.to_string(), &s.origin)
        }
        let mut v = vec![
            e("path_grouping_policy", &self.path_grouping_policy),
            e("path_selector", &self.path_selector),
            e("rr_min_io", &self.rr_min_io),
            e("rr_min_io_rq", &self.rr_min_io_rq),
            e("rr_weight", &self.rr_weight),
            e("failback", &self.failback),
            e("path_checker", &self.path_checker),
            e("no_path_retry", &self.no_path_retry),
            (
                "checker_timeout",
                self.checker_timeout
                    .value
                    .map_or_else(|| "unset".to_string(), |t| t.to_string()),
                &self.checker_timeout.origin,
            ),
            e("prio", &self.prio),
            e("prio_args", &self.prio_args),
            yes_no("detect_prio", &self.detect_prio),
            yes_no("detect_pgpolicy", &self.detect_pgpolicy),
            yes_no("detect_pgpolicy_use_tpg", &self.detect_pgpolicy_use_tpg),
            e("features", &self.features),
            e("user_friendly_names", &self.user_friendly_names),
            e("alias_prefix", &self.alias_prefix),
            e("uid_attribute", &self.uid_attribute),
        ];
        for (k, s) in &self.shaky_keywords {
            v.push(e(k, s));
        }
        if let Some(a) = &self.alias {
            v.push(e("alias", a));
        }
        if let Some(g) = &self.getuid_callout {
            v.push(e("getuid_callout", g));
        }
        v.push(e("repeat_count (umpath)", &self.repeat_count));
        v
    }

    /// The entries of [`PathSettings::entries`] whose origin is a
    /// detection or a fallback (what the device, not the configuration,
    /// decided), for [`Config::explain_live`].
    pub fn detected(&self) -> Vec<(&'static str, String, &Origin)> {
        self.entries()
            .into_iter()
            .filter(|(_, _, o)| matches!(o, Origin::Autodetected | Origin::Fallback { .. }))
            .collect()
    }

    /// The entries as JSON objects with `keyword`, `value` and `origin`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Array(
            self.entries()
                .into_iter()
                .map(|(k, v, o)| serde_json::json!({ "keyword": k, "value": v, "origin": o.to_string() }))
                .collect(),
        )
    }
}

/// A yes/no setting as an entry, written as multipath.conf writes it.
fn yes_no<'a>(k: &'static str, s: &'a Setting<bool>) -> (&'static str, String, &'a Origin) {
    let v = if s.value { "yes" } else { "no" };
    (k, v.to_string(), &s.origin)
}

impl fmt::Display for PathSettings {
    /// One line per property: `keyword value (setting: ...)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (k, v, o) in self.entries() {
            writeln!(f, "{k} = {v} {o}")?;
        }
        Ok(())
    }
}
