//! The typed contents of the sections: attribute maps, device entries,
//! multipath entries and blacklists, and the [`PathIdentity`] that entries
//! match against.

use std::collections::BTreeMap;

use super::diag::Span;
use super::keywords::{Assignment, Pattern};

/// What a path is, as far as configuration is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathIdentity<'a> {
    pub vendor: &'a str,
    pub product: &'a str,
    pub revision: &'a str,
    pub wwid: &'a str,
}

/// The attributes set in one section, by canonical keyword name.
pub type AttrMap = BTreeMap<&'static str, Assignment>;

/// A `device {}` entry of the `devices` section, or of the built-in
/// hardware table.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceEntry {
    pub vendor: Pattern,
    pub product: Pattern,
    /// Absent: any revision matches.
    pub revision: Option<Pattern>,
    /// Every other attribute (vendor, product and revision are not here).
    pub attrs: AttrMap,
    /// The `device {` line; for built-in entries a `(built-in hwtable)`
    /// span with line 0.
    pub span: Span,
    pub builtin: bool,
}

impl DeviceEntry {
    /// Whether this entry applies to a device: vendor, product and
    /// revision are unanchored, case-sensitive regular expressions.
    pub fn matches(&self, id: &PathIdentity<'_>) -> bool {
        self.vendor.is_match(id.vendor)
            && self.product.is_match(id.product)
            && self
                .revision
                .as_ref()
                .is_none_or(|r| r.is_match(id.revision))
    }

    /// Whether two entries name the same device with identical strings
    /// (multipath-tools merges such entries).
    pub fn same_strings(&self, other: &DeviceEntry) -> bool {
        self.vendor.as_str() == other.vendor.as_str()
            && self.product.as_str() == other.product.as_str()
            && self.revision.as_ref().map(Pattern::as_str)
                == other.revision.as_ref().map(Pattern::as_str)
    }

    /// [`DeviceEntry::describe`] followed by where the entry is (file:line,
    /// or "built-in hwtable").
    pub fn describe_with_origin(&self) -> String {
        if self.builtin {
            format!("{} (built-in hwtable)", self.describe())
        } else {
            format!("{} ({})", self.describe(), self.span)
        }
    }

    /// `vendor "V" product "P"` (and revision if set), for messages.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "vendor \"{}\" product \"{}\"",
            self.vendor.as_str(),
            self.product.as_str()
        );
        if let Some(r) = &self.revision {
            s.push_str(&format!(" revision \"{}\"", r.as_str()));
        }
        s
    }
}

/// A `multipath {}` entry of the `multipaths` section.
#[derive(Debug, Clone, PartialEq)]
pub struct MultipathEntry {
    /// Matched exactly (not a regular expression).
    pub wwid: String,
    /// Every attribute except wwid (alias is here).
    pub attrs: AttrMap,
    pub span: Span,
}

/// An `overrides { protocol {} }` entry. Recorded only (its keywords
/// configure the SCSI transport layer).
#[derive(Debug, Clone, PartialEq)]
pub struct ProtocolEntry {
    pub protocol_type: Option<String>,
    pub attrs: AttrMap,
    pub span: Span,
}

/// One regular-expression entry of a blacklist (devnode, wwid, property
/// or protocol).
#[derive(Debug, Clone, PartialEq)]
pub struct BlacklistEntry {
    pub pattern: Pattern,
    pub span: Span,
    pub builtin: bool,
}

/// A `device {}` entry of a blacklist. An absent field matches anything.
#[derive(Debug, Clone, PartialEq)]
pub struct BlacklistDevice {
    pub vendor: Option<Pattern>,
    pub product: Option<Pattern>,
    pub span: Span,
    pub builtin: bool,
    /// Made from a device entry's `product_blacklist` (not written in a
    /// blacklist section).
    pub from_product_blacklist: bool,
}

impl BlacklistDevice {
    pub fn matches(&self, vendor: &str, product: &str) -> bool {
        self.vendor.as_ref().is_none_or(|p| p.is_match(vendor))
            && self.product.as_ref().is_none_or(|p| p.is_match(product))
    }

    pub fn describe(&self) -> String {
        let v = self.vendor.as_ref().map_or(".*", Pattern::as_str);
        let p = self.product.as_ref().map_or(".*", Pattern::as_str);
        format!("vendor \"{v}\" product \"{p}\"")
    }
}

/// The `blacklist` or `blacklist_exceptions` section.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Blacklist {
    pub devnode: Vec<BlacklistEntry>,
    pub wwid: Vec<BlacklistEntry>,
    pub property: Vec<BlacklistEntry>,
    pub protocol: Vec<BlacklistEntry>,
    pub device: Vec<BlacklistDevice>,
}

impl Blacklist {
    pub fn is_empty(&self) -> bool {
        self.devnode.is_empty()
            && self.wwid.is_empty()
            && self.property.is_empty()
            && self.protocol.is_empty()
            && self.device.is_empty()
    }
}
