//! The built-in hardware table and the built-in blacklist.
//!
//! Entries are data (vendor, product, revision regexes and keyword/value
//! pairs, as `multipath -t` prints them). They are checked with the same
//! keyword table as the user's file and compiled once on first use.
//! Matching device entries apply attribute by attribute: the user's
//! entries first (later before earlier), then these (later before
//! earlier).
//!
//! Only a few entries are here so far; the full table (~137 entries of
//! multipath-tools 0.9.x) is filled in later.

use std::sync::{Arc, OnceLock};

use super::diag::Span;
use super::keywords::{lookup, Assignment, Pattern, Section};
use super::sections::{AttrMap, Blacklist, BlacklistDevice, BlacklistEntry, DeviceEntry};

/// One built-in `device {}` entry as data.
#[derive(Debug, Clone, Copy)]
pub struct HwEntry {
    pub vendor: &'static str,
    pub product: &'static str,
    pub revision: Option<&'static str>,
    pub attrs: &'static [(&'static str, &'static str)],
}

const fn hw(
    vendor: &'static str,
    product: &'static str,
    attrs: &'static [(&'static str, &'static str)],
) -> HwEntry {
    HwEntry {
        vendor,
        product,
        revision: None,
        attrs,
    }
}

/// Built-in device entries, in multipath-tools order (later entries take
/// precedence over earlier ones). There is no entry for OSNEXUS.
pub static BUILTIN_HWTABLE: &[HwEntry] = &[
    hw(
        "APPLE",
        "Xserve RAID",
        &[("path_grouping_policy", "multibus")],
    ),
    hw(
        "3PARdata",
        "VV",
        &[
            ("path_grouping_policy", "group_by_prio"),
            ("hardware_handler", "1 alua"),
            ("prio", "alua"),
            ("failback", "immediate"),
            ("no_path_retry", "18"),
            ("fast_io_fail_tmo", "10"),
            ("dev_loss_tmo", "infinity"),
            ("vpd_vendor", "hp3par"),
        ],
    ),
    hw(
        "DELL",
        "^MD3",
        &[
            ("product_blacklist", "Universal Xport"),
            ("path_grouping_policy", "group_by_prio"),
            ("path_checker", "rdac"),
            ("features", "2 pg_init_retries 50"),
            ("hardware_handler", "1 rdac"),
            ("prio", "rdac"),
            ("failback", "immediate"),
            ("no_path_retry", "30"),
        ],
    ),
    hw(
        "HITACHI",
        "^DF",
        &[
            ("path_grouping_policy", "group_by_prio"),
            ("prio", "hds"),
            ("failback", "immediate"),
            ("no_path_retry", "queue"),
        ],
    ),
    hw(
        "HITACHI",
        "^DF600F",
        &[("path_grouping_policy", "multibus")],
    ),
    hw(
        "NETAPP",
        "LUN",
        &[
            ("path_grouping_policy", "group_by_prio"),
            ("features", "2 pg_init_retries 50"),
            ("prio", "ontap"),
            ("failback", "immediate"),
            ("no_path_retry", "queue"),
            ("flush_on_last_del", "yes"),
            ("dev_loss_tmo", "infinity"),
            ("user_friendly_names", "no"),
        ],
    ),
    hw(
        "PURE",
        "FlashArray",
        &[
            ("path_grouping_policy", "group_by_prio"),
            ("hardware_handler", "1 alua"),
            ("prio", "alua"),
            ("failback", "immediate"),
            ("fast_io_fail_tmo", "10"),
        ],
    ),
];

/// The built-in blacklist as data.
#[derive(Debug, Clone, Copy)]
pub struct BuiltinBlacklist {
    pub devnode: &'static [&'static str],
    pub wwid: &'static [&'static str],
    pub property: &'static [&'static str],
    pub protocol: &'static [&'static str],
    /// (vendor, product)
    pub device: &'static [(&'static str, &'static str)],
}

/// multipath-tools' built-in blacklist. The devnode entry excludes every
/// device node except sd*, dasd* and nvme*; it does not apply to umpath's
/// declared paths, which have no device node.
pub static BUILTIN_BLACKLIST: BuiltinBlacklist = BuiltinBlacklist {
    devnode: &["!^(sd[a-z]|dasd[a-z]|nvme[0-9])"],
    wwid: &[],
    property: &[],
    protocol: &[],
    device: &[
        ("SGI", "Universal Xport"),
        ("^DGC", "LUNZ"),
        ("EMC", "LUNZ"),
        ("DELL", "Universal Xport"),
        ("FUJITSU", "Universal Xport"),
        ("IBM", "Universal Xport"),
        ("IBM", "S/390"),
        ("LENOVO", "Universal Xport"),
        ("(NETAPP|LSI|ENGENIO)", "Universal Xport"),
        ("STK", "Universal Xport"),
        ("SUN", "Universal Xport"),
        ("(Intel|INTEL)", "VTrak V-LUN"),
        ("Promise", "VTrak V-LUN"),
        ("Promise", "Vess V-LUN"),
    ],
};

/// multipath-tools' built-in blacklist exceptions. The property entry only
/// concerns udev devices; it does not apply to declared paths.
pub static BUILTIN_BLACKLIST_EXCEPTIONS: BuiltinBlacklist = BuiltinBlacklist {
    devnode: &[],
    wwid: &[],
    property: &["(SCSI_IDENT_|ID_WWN)"],
    protocol: &[],
    device: &[],
};

/// File name used in spans of built-in hwtable data.
pub const BUILTIN_HWTABLE_FILE: &str = "(built-in hwtable)";
/// File name used in spans of built-in blacklist data.
pub const BUILTIN_BLACKLIST_FILE: &str = "(built-in blacklist)";

/// Problems found while compiling built-in data (a bug in the table; the
/// tests keep this empty). Entries with problems are skipped.
fn compile_entry(e: &HwEntry, span: &Span) -> Result<DeviceEntry, String> {
    let vendor = Pattern::new(e.vendor)?;
    let product = Pattern::new(e.product)?;
    let revision = e.revision.map(Pattern::new).transpose()?;
    let mut attrs = AttrMap::new();
    for (k, v) in e.attrs {
        let kw =
            lookup(k, Section::Device).ok_or_else(|| format!("unknown device keyword '{k}'"))?;
        // Warnings (e.g. a hardware-specific checker) are expected here and
        // only matter for the user's own entries.
        let (value, _warning) = kw.check(v)?;
        attrs.insert(
            kw.name,
            Assignment {
                keyword: kw.name,
                text: (*v).to_string(),
                value,
                span: span.clone(),
            },
        );
    }
    Ok(DeviceEntry {
        vendor,
        product,
        revision,
        attrs,
        span: span.clone(),
        builtin: true,
    })
}

fn compile_table(table: &[HwEntry]) -> (Vec<DeviceEntry>, Vec<String>) {
    let file: Arc<str> = Arc::from(BUILTIN_HWTABLE_FILE);
    let span = Span::new(&file, 0);
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for e in table {
        match compile_entry(e, &span) {
            Ok(d) => out.push(d),
            Err(msg) => problems.push(format!("{} {}: {msg}", e.vendor, e.product)),
        }
    }
    (out, problems)
}

/// The built-in device entries, compiled (once).
pub fn builtin_devices() -> &'static [DeviceEntry] {
    static CELL: OnceLock<Vec<DeviceEntry>> = OnceLock::new();
    CELL.get_or_init(|| compile_table(BUILTIN_HWTABLE).0)
}

fn compile_blacklist(b: &BuiltinBlacklist) -> Blacklist {
    let file: Arc<str> = Arc::from(BUILTIN_BLACKLIST_FILE);
    let span = Span::new(&file, 0);
    let entries = |list: &[&str]| -> Vec<BlacklistEntry> {
        list.iter()
            .filter_map(|t| Pattern::blacklist(t).ok())
            .map(|pattern| BlacklistEntry {
                pattern,
                span: span.clone(),
                builtin: true,
            })
            .collect()
    };
    Blacklist {
        devnode: entries(b.devnode),
        wwid: entries(b.wwid),
        property: entries(b.property),
        protocol: entries(b.protocol),
        device: b
            .device
            .iter()
            .filter_map(|(v, p)| {
                Some(BlacklistDevice {
                    vendor: Some(Pattern::blacklist(v).ok()?),
                    product: Some(Pattern::blacklist(p).ok()?),
                    span: span.clone(),
                    builtin: true,
                })
            })
            .collect(),
    }
}

/// The built-in blacklist, compiled (once).
pub fn builtin_blacklist() -> &'static Blacklist {
    static CELL: OnceLock<Blacklist> = OnceLock::new();
    CELL.get_or_init(|| compile_blacklist(&BUILTIN_BLACKLIST))
}

/// The built-in blacklist exceptions, compiled (once).
pub fn builtin_blacklist_exceptions() -> &'static Blacklist {
    static CELL: OnceLock<Blacklist> = OnceLock::new();
    CELL.get_or_init(|| compile_blacklist(&BUILTIN_BLACKLIST_EXCEPTIONS))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::keywords::Typed;
    use crate::config::propsel::PathIdentity;
    use crate::policy::CheckerKind;

    #[test]
    fn table_compiles_cleanly() {
        let (entries, problems) = compile_table(BUILTIN_HWTABLE);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(entries.len(), BUILTIN_HWTABLE.len());
        assert_eq!(builtin_devices().len(), BUILTIN_HWTABLE.len());
    }

    #[test]
    fn blacklists_compile_cleanly() {
        let b = builtin_blacklist();
        assert_eq!(b.devnode.len(), BUILTIN_BLACKLIST.devnode.len());
        assert_eq!(b.device.len(), BUILTIN_BLACKLIST.device.len());
        assert!(!b.devnode[0].pattern.is_match("sda"));
        assert!(b.devnode[0].pattern.is_match("loop0"));
        let e = builtin_blacklist_exceptions();
        assert_eq!(e.property.len(), 1);
    }

    #[test]
    fn hardware_checker_runs_as_tur() {
        let dell = builtin_devices()
            .iter()
            .find(|d| d.vendor.as_str() == "DELL")
            .unwrap();
        assert_eq!(
            dell.attrs["path_checker"].value,
            Typed::Checker {
                kind: CheckerKind::Tur,
                name: "rdac".into()
            }
        );
    }

    #[test]
    fn no_osnexus_entry() {
        let id = PathIdentity {
            vendor: "OSNEXUS",
            product: "QUANTASTOR",
            revision: "0001",
            wwid: "x",
        };
        assert!(!builtin_devices().iter().any(|d| d.matches(&id)));
    }
}
