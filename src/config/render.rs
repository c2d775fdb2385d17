//! Printing the configuration in force, shaped like `multipath -t`
//! (multipath-tools 0.9.4): the same section order (defaults, blacklist,
//! blacklist_exceptions, devices, overrides, multipaths), keyword order,
//! value spelling and quoting (words and strings in double quotes,
//! numbers bare), one tab of indentation per level. umpath's `paths`
//! section follows when paths are declared.
//!
//! Also the per-path "explain" view: every effective property with where
//! it came from, like `multipath -v3`'s "(setting: ...)" notes.

use std::fmt::Write as _;

use crate::policy::{Failback, NoPathRetry};

use super::data::Config;
use super::keywords::{lookup, Section, Typed, KEYWORDS};
use super::parse::quote_value;
use super::propsel::{Origin, PathSettings};
use super::sections::{AttrMap, Blacklist, PathIdentity};

/// Keywords of the `defaults` section in print order, and whether they
/// are printed when unset (with their default). Keywords multipath-tools
/// accepts but never prints (deprecated and ignored) are absent.
const DEFAULTS: &[(&str, bool)] = &[
    ("verbosity", true),
    ("polling_interval", true),
    ("max_polling_interval", true),
    ("reassign_maps", true),
    ("path_selector", true),
    ("path_grouping_policy", true),
    ("uid_attrs", false),
    ("uid_attribute", true),
    ("prio", true),
    ("prio_args", true),
    ("features", true),
    ("path_checker", true),
    ("alias_prefix", true),
    ("failback", true),
    ("rr_min_io", true),
    ("rr_min_io_rq", true),
    ("max_fds", true),
    ("rr_weight", true),
    ("no_path_retry", false),
    ("queue_without_daemon", true),
    ("checker_timeout", false),
    ("allow_usb_devices", true),
    ("flush_on_last_del", true),
    ("user_friendly_names", true),
    ("mode", false),
    ("uid", false),
    ("gid", false),
    ("fast_io_fail_tmo", true),
    ("dev_loss_tmo", false),
    ("eh_deadline", false),
    ("bindings_file", true),
    ("wwids_file", true),
    ("prkeys_file", true),
    ("log_checker_err", true),
    ("reservation_key", false),
    ("all_tg_pt", true),
    ("retain_attached_hw_handler", true),
    ("detect_prio", true),
    ("detect_checker", true),
    ("force_sync", true),
    ("strict_timing", true),
    ("deferred_remove", true),
    ("partition_delimiter", false),
    ("delay_watch_checks", true),
    ("delay_wait_checks", true),
    ("san_path_err_threshold", true),
    ("san_path_err_forget_rate", true),
    ("san_path_err_recovery_time", true),
    ("marginal_path_err_sample_time", true),
    ("marginal_path_err_rate_threshold", true),
    ("marginal_path_err_recheck_gap_time", true),
    ("marginal_path_double_failed_time", true),
    ("find_multipaths", true),
    ("uxsock_timeout", true),
    ("retrigger_tries", true),
    ("retrigger_delay", true),
    ("missing_uev_wait_timeout", true),
    ("skip_kpartx", true),
    ("disable_changed_wwids", true),
    ("remove_retries", true),
    ("max_sectors_kb", false),
    ("ghost_delay", true),
    ("find_multipaths_timeout", true),
    ("enable_foreign", true),
    ("marginal_pathgroups", true),
    ("recheck_wwid", true),
];

/// `devices/device` keywords in print order (vendor, product and
/// revision come first and are not attributes).
const DEVICE: &[&str] = &[
    "product_blacklist",
    "path_grouping_policy",
    "uid_attribute",
    "path_selector",
    "path_checker",
    "alias_prefix",
    "features",
    "hardware_handler",
    "prio",
    "prio_args",
    "failback",
    "rr_weight",
    "no_path_retry",
    "rr_min_io",
    "rr_min_io_rq",
    "flush_on_last_del",
    "fast_io_fail_tmo",
    "dev_loss_tmo",
    "eh_deadline",
    "user_friendly_names",
    "retain_attached_hw_handler",
    "detect_prio",
    "detect_checker",
    "deferred_remove",
    "delay_watch_checks",
    "delay_wait_checks",
    "san_path_err_threshold",
    "san_path_err_forget_rate",
    "san_path_err_recovery_time",
    "marginal_path_err_sample_time",
    "marginal_path_err_rate_threshold",
    "marginal_path_err_recheck_gap_time",
    "marginal_path_double_failed_time",
    "skip_kpartx",
    "max_sectors_kb",
    "ghost_delay",
    "all_tg_pt",
    "vpd_vendor",
    "recheck_wwid",
];

/// `overrides` keywords in print order (protocol entries follow).
const OVERRIDES: &[&str] = &[
    "path_grouping_policy",
    "uid_attribute",
    "path_selector",
    "path_checker",
    "alias_prefix",
    "features",
    "prio",
    "prio_args",
    "failback",
    "rr_weight",
    "no_path_retry",
    "rr_min_io",
    "rr_min_io_rq",
    "flush_on_last_del",
    "fast_io_fail_tmo",
    "dev_loss_tmo",
    "eh_deadline",
    "user_friendly_names",
    "retain_attached_hw_handler",
    "detect_prio",
    "detect_checker",
    "deferred_remove",
    "delay_watch_checks",
    "delay_wait_checks",
    "san_path_err_threshold",
    "san_path_err_forget_rate",
    "san_path_err_recovery_time",
    "marginal_path_err_sample_time",
    "marginal_path_err_rate_threshold",
    "marginal_path_err_recheck_gap_time",
    "marginal_path_double_failed_time",
    "skip_kpartx",
    "max_sectors_kb",
    "ghost_delay",
    "all_tg_pt",
    "recheck_wwid",
];

/// `overrides/protocol` keywords in print order.
const PROTOCOL: &[&str] = &["type", "fast_io_fail_tmo", "dev_loss_tmo", "eh_deadline"];

/// `multipaths/multipath` keywords in print order (wwid comes first).
const MULTIPATH: &[&str] = &[
    "alias",
    "path_grouping_policy",
    "path_selector",
    "prio",
    "prio_args",
    "failback",
    "rr_weight",
    "no_path_retry",
    "rr_min_io",
    "rr_min_io_rq",
    "flush_on_last_del",
    "features",
    "mode",
    "uid",
    "gid",
    "reservation_key",
    "user_friendly_names",
    "deferred_remove",
    "delay_watch_checks",
    "delay_wait_checks",
    "san_path_err_threshold",
    "san_path_err_forget_rate",
    "san_path_err_recovery_time",
    "marginal_path_err_sample_time",
    "marginal_path_err_rate_threshold",
    "marginal_path_err_recheck_gap_time",
    "marginal_path_double_failed_time",
    "skip_kpartx",
    "max_sectors_kb",
    "ghost_delay",
];

/// Keywords accepted for compatibility that multipath-tools ignores and
/// never prints (their values are recorded; see [`Config::explain`]).
const NEVER_PRINTED: &[&str] = &[
    "getuid_callout",
    "pg_timeout",
    "multipath_dir",
    "config_dir",
];

/// A value as `multipath -t` spells it: the text and whether it is quoted.
pub fn value_text(keyword: &str, value: &Typed) -> (String, bool) {
    match (keyword, value) {
        // Printed without quotes by multipath-tools.
        ("fast_io_fail_tmo" | "eh_deadline", Typed::Word(w)) => return (w.clone(), false),
        ("uid_attrs" | "reservation_key" | "uid" | "gid", Typed::Str(s)) => {
            return (s.clone(), false)
        }
        ("mode", Typed::Str(s)) => {
            let text = match u32::from_str_radix(s, 8) {
                Ok(m) => format!("0{m:o}"),
                Err(_) => s.clone(),
            };
            return (text, false);
        }
        _ => {}
    }
    match value {
        Typed::Grouping(g) => (g.as_str().to_string(), true),
        Typed::Selector(s) => (s.to_string(), true),
        Typed::Failback(Failback::DeferredSecs(n)) => (n.to_string(), false),
        Typed::Failback(f) => (f.to_string(), true),
        Typed::NoPathRetry(NoPathRetry::Retries(n)) => (n.to_string(), false),
        Typed::NoPathRetry(n) => (n.to_string(), true),
        Typed::RrWeight(w) => (w.as_str().to_string(), true),
        Typed::Checker { name, .. } => (name.clone(), true),
        Typed::UInt(v) => (v.to_string(), false),
        Typed::Int(v) => (v.to_string(), false),
        Typed::Bool(b) => ((if *b { "yes" } else { "no" }).to_string(), true),
        Typed::Word(w) => (normalize_word(keyword, w).to_string(), true),
        Typed::Str(s) => (s.clone(), true),
        Typed::Regex(p) => (p.as_str().to_string(), true),
    }
}

/// Synonyms multipath-tools stores as one value.
fn normalize_word<'a>(keyword: &str, w: &'a str) -> &'a str {
    match (keyword, w) {
        ("find_multipaths", "yes" | "1") => "on",
        ("find_multipaths", "no" | "0") => "off",
        ("marginal_pathgroups", "yes") => "on",
        ("marginal_pathgroups", "no") => "off",
        _ => w,
    }
}

fn printed(keyword: &str, value: &Typed) -> String {
    let (text, quoted) = value_text(keyword, value);
    quote_value(&text, quoted)
}

/// The default of `keyword` as a checked value (`None`: no default).
fn default_value(keyword: &str, section: Section) -> Option<Typed> {
    let kw = lookup(keyword, section)?;
    kw.check(kw.default?).ok().map(|(v, _)| v)
}

fn line(out: &mut String, depth: usize, keyword: &str, value: &str) {
    for _ in 0..depth {
        out.push('\t');
    }
    let _ = writeln!(out, "{keyword} {value}");
}

/// Prints the attributes of `attrs` in `order`, then any other set
/// keywords (newer ones multipath-tools 0.9.4 does not know) in name
/// order.
fn attrs_in_order(out: &mut String, depth: usize, attrs: &AttrMap, order: &[&str]) {
    for k in order {
        if let Some(a) = attrs.get(k) {
            line(out, depth, k, &printed(k, &a.value));
        }
    }
    for (k, a) in attrs {
        if !order.contains(k) && !NEVER_PRINTED.contains(k) {
            line(out, depth, k, &printed(k, &a.value));
        }
    }
}

fn blacklist(out: &mut String, name: &str, bl: &Blacklist) {
    let _ = writeln!(out, "{name} {{");
    for (kw, list) in [
        ("devnode", &bl.devnode),
        ("wwid", &bl.wwid),
        ("property", &bl.property),
        ("protocol", &bl.protocol),
    ] {
        for e in list {
            line(out, 1, kw, &quote_value(e.pattern.as_str(), true));
        }
    }
    for d in &bl.device {
        out.push_str("\tdevice {\n");
        if let Some(v) = &d.vendor {
            line(out, 2, "vendor", &quote_value(v.as_str(), true));
        }
        if let Some(p) = &d.product {
            line(out, 2, "product", &quote_value(p.as_str(), true));
        }
        out.push_str("\t}\n");
    }
    out.push_str("}\n");
}

/// One effective property of a path and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Explained {
    pub keyword: &'static str,
    /// The value as `multipath -t` spells it, without quotes.
    pub value: String,
    pub origin: Origin,
}

impl Config {
    /// The configuration in force in multipath.conf syntax, shaped like
    /// `multipath -t` (see the module documentation), so that the two can
    /// be compared line by line. Parsing the output gives the same
    /// configuration, except CHAP secrets, which are never printed (they
    /// read `<hidden>`).
    pub fn render_multipath_t(&self) -> String {
        let mut out = String::new();

        out.push_str("defaults {\n");
        for &(k, always) in DEFAULTS {
            let text = match (k, self.defaults.get(k)) {
                ("polling_interval", _) => self.polling_interval.to_string(),
                ("max_polling_interval", _) => self.max_polling_interval.to_string(),
                ("disable_changed_wwids", _) => quote_value("ignored", true),
                ("bindings_file", None) => {
                    quote_value(&self.bindings_file.display().to_string(), true)
                }
                (_, Some(a)) => printed(k, &a.value),
                (_, None) if always => match default_value(k, Section::Defaults) {
                    Some(v) => printed(k, &v),
                    None => continue,
                },
                (_, None) => continue,
            };
            line(&mut out, 1, k, &text);
        }
        let order: Vec<&str> = DEFAULTS.iter().map(|(k, _)| *k).collect();
        for (k, a) in &self.defaults {
            if !order.contains(k) && !NEVER_PRINTED.contains(k) {
                line(&mut out, 1, k, &printed(k, &a.value));
            }
        }
        out.push_str("}\n");

        blacklist(&mut out, "blacklist", &self.effective_blacklist());
        blacklist(
            &mut out,
            "blacklist_exceptions",
            &self.effective_exceptions(),
        );

        out.push_str("devices {\n");
        for d in self.hwtable() {
            out.push_str("\tdevice {\n");
            line(&mut out, 2, "vendor", &quote_value(d.vendor.as_str(), true));
            line(
                &mut out,
                2,
                "product",
                &quote_value(d.product.as_str(), true),
            );
            if let Some(r) = &d.revision {
                line(&mut out, 2, "revision", &quote_value(r.as_str(), true));
            }
            attrs_in_order(&mut out, 2, &d.attrs, DEVICE);
            out.push_str("\t}\n");
        }
        out.push_str("}\n");

        out.push_str("overrides {\n");
        attrs_in_order(&mut out, 1, &self.overrides, OVERRIDES);
        for p in &self.protocols {
            out.push_str("\tprotocol {\n");
            attrs_in_order(&mut out, 2, &p.attrs, PROTOCOL);
            out.push_str("\t}\n");
        }
        out.push_str("}\n");

        if !self.multipaths.is_empty() {
            let mut mps: Vec<_> = self.multipaths.iter().collect();
            mps.sort_by(|a, b| a.wwid.as_bytes().cmp(b.wwid.as_bytes()));
            out.push_str("multipaths {\n");
            for m in mps {
                out.push_str("\tmultipath {\n");
                line(&mut out, 2, "wwid", &quote_value(&m.wwid, true));
                attrs_in_order(&mut out, 2, &m.attrs, MULTIPATH);
                out.push_str("\t}\n");
            }
            out.push_str("}\n");
        }

        if !self.paths.is_empty() {
            out.push_str("paths {\n");
            for p in &self.paths {
                out.push_str("\tpath {\n");
                line(&mut out, 2, "name", &quote_value(&p.name, false));
                line(&mut out, 2, "transport", &quote_value(&p.transport, false));
                if let Some(f) = &p.file {
                    line(
                        &mut out,
                        2,
                        "file",
                        &quote_value(&f.display().to_string(), true),
                    );
                }
                for (k, v) in [
                    ("vendor", &p.vendor),
                    ("product", &p.product),
                    ("revision", &p.revision),
                    ("wwid", &p.wwid),
                    ("serial", &p.serial),
                ] {
                    if !v.is_empty() {
                        line(&mut out, 2, k, &quote_value(v, true));
                    }
                }
                for (k, (v, _)) in &p.extra {
                    let v = if super::paths::is_secret(k) {
                        super::paths::MASKED
                    } else {
                        v
                    };
                    line(&mut out, 2, k, &quote_value(v, true));
                }
                out.push_str("\t}\n");
            }
            out.push_str("}\n");
        }
        out
    }

    /// Every effective property of a path with identity `id` (map-level
    /// properties included), with its origin: the multipaths entry for
    /// its WWID, overrides, a device entry (the user's or built-in),
    /// defaults, or the built-in default. Keywords with no value anywhere
    /// are left out; deprecated keywords are listed when set.
    pub fn explain(&self, id: &PathIdentity<'_>) -> Vec<Explained> {
        let settings = self.resolve(id);
        let mut names: Vec<&'static str> = Vec::new();
        for k in MULTIPATH.iter().chain(DEVICE).chain(OVERRIDES) {
            if let Some(kw) = KEYWORDS.iter().find(|kw| kw.name == *k) {
                if !names.contains(&kw.name) {
                    names.push(kw.name);
                }
            }
        }
        for kw in KEYWORDS {
            let per_path = kw
                .sections
                .iter()
                .any(|s| matches!(s, Section::Device | Section::Multipath | Section::Overrides));
            if per_path && !names.contains(&kw.name) {
                names.push(kw.name);
            }
        }
        names.retain(|k| !matches!(*k, "product_blacklist" | "vpd_vendor" | "type"));
        names.push("checker_timeout");
        let mut out = Vec::new();
        for k in names {
            let found = self.lookup(id, k);
            let (value, origin) = match (k, found) {
                ("no_path_retry", _) => (
                    settings.no_path_retry.value.to_string(),
                    settings.no_path_retry.origin.clone(),
                ),
                ("checker_timeout", None) => (
                    "unset (30 seconds for file paths)".to_string(),
                    Origin::Builtin,
                ),
                (_, Some((a, origin))) => (value_text(k, &a.value).0, origin),
                (_, None) => {
                    let default = [Section::Defaults, Section::Device, Section::Multipath]
                        .into_iter()
                        .find_map(|s| default_value(k, s));
                    match default {
                        Some(v) => (value_text(k, &v).0, Origin::Builtin),
                        None => continue,
                    }
                }
            };
            out.push(Explained {
                keyword: k,
                value,
                origin,
            });
        }
        out.push(Explained {
            keyword: "repeat_count (umpath)",
            value: settings.repeat_count.value.to_string(),
            origin: settings.repeat_count.origin.clone(),
        });
        out
    }

    /// [`Config::explain`] for a live path: the properties the device
    /// decided (`detect_prio`, `detect_pgpolicy` and their fallbacks,
    /// see [`PathSettings::detected`]) are shown as `live` has them, with
    /// their "storage device autodetected" or "emergency fallback"
    /// origin.
    pub fn explain_live(&self, id: &PathIdentity<'_>, live: &PathSettings) -> Vec<Explained> {
        let mut out = self.explain(id);
        for (k, v, o) in live.detected() {
            match out.iter_mut().find(|e| e.keyword == k) {
                Some(e) => {
                    e.value = v;
                    e.origin = o.clone();
                }
                None => out.push(Explained {
                    keyword: k,
                    value: v,
                    origin: o.clone(),
                }),
            }
        }
        out
    }

    /// [`Config::explain`] as text: `keyword = value (setting: ...)` per
    /// line.
    pub fn explain_text(&self, id: &PathIdentity<'_>) -> String {
        explained_text(&self.explain(id))
    }

    /// [`Config::explain_live`] as text.
    pub fn explain_live_text(&self, id: &PathIdentity<'_>, live: &PathSettings) -> String {
        explained_text(&self.explain_live(id, live))
    }

    /// [`Config::explain_live`] as JSON.
    pub fn explain_live_json(
        &self,
        id: &PathIdentity<'_>,
        live: &PathSettings,
    ) -> serde_json::Value {
        explained_json(self.explain_live(id, live))
    }

    /// [`Config::explain`] as JSON: an array of objects with `keyword`,
    /// `value` and `origin`.
    pub fn explain_json(&self, id: &PathIdentity<'_>) -> serde_json::Value {
        explained_json(self.explain(id))
    }
}

fn explained_text(list: &[Explained]) -> String {
    let mut out = String::new();
    for e in list {
        let _ = writeln!(out, "{} = {} {}", e.keyword, e.value, e.origin);
    }
    out
}

fn explained_json(list: Vec<Explained>) -> serde_json::Value {
    serde_json::Value::Array(
        list.into_iter()
            .map(|e| {
                serde_json::json!({
                    "keyword": e.keyword,
                    "value": e.value,
                    "origin": e.origin.to_string(),
                })
            })
            .collect(),
    )
}
