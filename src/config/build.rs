//! Turning the syntax tree into a typed [`Config`], with diagnostics.
//!
//! Rules (multipath-tools behaviour noted where umpath differs):
//!
//! * Unknown keywords and sections: warning, ignored (as multipath-tools).
//!   A known keyword in a section that does not accept it: warning,
//!   ignored.
//! * Invalid or out-of-range values: error (multipath-tools logs and keeps
//!   the previous value, or caps numbers; umpath refuses the file).
//! * A keyword repeated in one section: warning, the last value wins.
//!   multipath-tools silently keeps the last value (each handler replaces
//!   the previous one). Keywords that add entries (blacklist `devnode`,
//!   `wwid`, `property`, `protocol`, and `device`/`multipath`/`path`
//!   subsections) are not duplicates.
//! * A top-level section repeated: warning, both are used (as
//!   multipath-tools, which warns "duplicate keyword" and reads both).
//! * `devices`: an entry without vendor or product is dropped with a
//!   warning (as multipath-tools). Entries with identical vendor, product
//!   and revision strings are merged, the later one's attributes winning
//!   (as multipath-tools' factorize step); the merged entry sits at the
//!   later one's position. Like multipath-tools, a built-in entry with
//!   identical strings is folded into the user's entry too: it leaves the
//!   built-in list and fills the user entry's gaps (those attributes keep
//!   their built-in origin). Several files (main, then conf.d) behave as
//!   one; repeats across files are not warned about.
//! * `overrides { protocol {} }`: entries of one type are merged, later
//!   wins.
//! * `multipaths`: entries without wwid are dropped with a warning;
//!   entries with the same wwid are merged, later wins. Two WWIDs with the
//!   same alias: error.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use super::data::Config;
use super::defaults;
use super::diag::{Diags, Span};
use super::hwtable;
use super::keywords::{
    is_known, is_section_keyword, lookup, sections_of, Assignment, Checked, Effect, Keyword, Kind,
    Pattern, Section, Typed,
};
use super::parse::{Attr, Block, Document, Item};
use super::paths::{
    is_secret, transport_names, IscsiDecl, PathDecl, DEFAULT_TRANSPORT, MASKED, TRANSPORTS,
};
use crate::prio::{PrioConfigError, Prioritizer};

use super::sections::{
    AttrMap, Blacklist, BlacklistDevice, BlacklistEntry, DeviceEntry, MultipathEntry, ProtocolEntry,
};

enum AttrCheck {
    Ok(&'static Keyword, Assignment),
    Unknown,
    Rejected,
}

struct Builder<'d> {
    diags: &'d mut Diags,
    /// NoEffect keywords already reported.
    noted: BTreeSet<&'static str>,
    /// (keyword, value) pairs whose value warning was already reported
    /// (e.g. a hardware-specific checker repeated in many device entries).
    noted_values: BTreeSet<(&'static str, String)>,
    /// Compiled patterns by (negatable, text).
    regex_cache: HashMap<(bool, String), Pattern>,
    cfg: Config,
    devices: MergeList<(String, String, Option<String>), DeviceEntry>,
    multipaths: MergeList<String, MultipathEntry>,
    paths: Vec<PathDecl>,
    /// Path name to the span of its `path {` line.
    path_names: HashMap<String, Span>,
}

/// Entries in file order, where an entry whose key equals an earlier one's
/// takes the earlier one's place in the map but the later position in the
/// order. Linear time overall (configurations may be large).
struct MergeList<K, T> {
    slots: Vec<Option<T>>,
    index: HashMap<K, usize>,
}

impl<K: std::hash::Hash + Eq, T> MergeList<K, T> {
    fn new() -> Self {
        MergeList {
            slots: Vec::new(),
            index: HashMap::new(),
        }
    }

    /// Removes and returns the entry with `key`, if any.
    fn take(&mut self, key: &K) -> Option<T> {
        let i = self.index.remove(key)?;
        self.slots.get_mut(i)?.take()
    }

    fn push(&mut self, key: K, entry: T) {
        self.index.insert(key, self.slots.len());
        self.slots.push(Some(entry));
    }

    fn into_vec(self) -> Vec<T> {
        self.slots.into_iter().flatten().collect()
    }

    fn iter(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().flatten()
    }
}

fn list_sections(secs: &[Section]) -> String {
    let names: Vec<String> = secs.iter().map(|s| format!("'{s}'")).collect();
    names.join(", ")
}

impl Builder<'_> {
    fn check_attr(&mut self, a: &Attr, section: Section) -> AttrCheck {
        let Some(kw) = lookup(&a.key, section) else {
            if is_known(&a.key) {
                self.diags.warning(
                    &a.span,
                    format!(
                        "keyword '{}' is not valid in section '{section}' (valid in {}); ignored",
                        a.key,
                        list_sections(&sections_of(&a.key))
                    ),
                );
                return AttrCheck::Rejected;
            }
            return AttrCheck::Unknown;
        };
        match self.check_value(kw, &a.value.text) {
            Err(msg) => {
                self.diags.error(&a.span, msg);
                AttrCheck::Rejected
            }
            Ok((value, warning)) => {
                if let Some(w) = warning {
                    if self.noted_values.insert((kw.name, a.value.text.clone())) {
                        self.diags.warning(&a.span, w);
                    }
                }
                match kw.effect {
                    Effect::Supported => {}
                    Effect::Deprecated(why) => self
                        .diags
                        .warning(&a.span, format!("keyword '{}' is deprecated: {why}", a.key)),
                    Effect::NoEffect(why) => {
                        if self.noted.insert(kw.name) {
                            self.diags.warning(
                                &a.span,
                                format!(
                                    "keyword '{}' has no effect in umpath: {why} (accepted; \
                                     reported once)",
                                    kw.name
                                ),
                            );
                        }
                    }
                }
                AttrCheck::Ok(
                    kw,
                    Assignment {
                        keyword: kw.name,
                        text: a.value.text.clone(),
                        value,
                        span: a.span.clone(),
                    },
                )
            }
        }
    }

    /// [`Keyword::check`], with compiled regular expressions shared between
    /// identical patterns (large files repeat them a lot).
    fn check_value(&mut self, kw: &'static Keyword, text: &str) -> Result<Checked, String> {
        let negatable = match kw.kind {
            Kind::Regex => false,
            Kind::BlacklistRegex => true,
            _ => return kw.check(text),
        };
        let key = (negatable, text.to_string());
        if let Some(p) = self.regex_cache.get(&key) {
            return Ok((Typed::Regex(p.clone()), None));
        }
        let builtin = if negatable {
            hwtable::builtin_blacklist_pattern(text)
        } else {
            hwtable::builtin_pattern(text)
        };
        if let Some(p) = builtin {
            return Ok((Typed::Regex(p), None));
        }
        let checked = kw.check(text)?;
        if let (Typed::Regex(p), None) = &checked {
            self.regex_cache.insert(key, p.clone());
        }
        Ok(checked)
    }

    fn unknown_keyword(&mut self, a: &Attr, section: Section) {
        self.diags.warning(
            &a.span,
            format!(
                "unknown keyword '{}' in section '{section}'; ignored",
                a.key
            ),
        );
    }

    fn unknown_section(&mut self, b: &Block, section: Section) {
        let msg = if is_known(&b.name) && !is_section_keyword(&b.name) {
            format!(
                "'{}' is a keyword, not a section, in section '{section}'; ignored",
                b.name
            )
        } else {
            format!(
                "unknown section '{}' in section '{section}'; ignored",
                b.name
            )
        };
        self.diags.warning(&b.span, msg);
    }

    fn store(&mut self, map: &mut AttrMap, asg: Assignment, section: Section) {
        // A later file (conf.d) setting a keyword again is how conf.d is
        // meant to be used: no warning across files.
        if let Some(prev) = map
            .get(asg.keyword)
            .filter(|prev| prev.span.file == asg.span.file)
        {
            self.diags.warning(
                &asg.span,
                format!(
                    "duplicate keyword '{}' in section '{section}' (previous value \"{}\" at {}); \
                     the last value is used",
                    asg.keyword, prev.text, prev.span
                ),
            );
        }
        map.insert(asg.keyword, asg);
    }

    /// Reads the attributes of a section into `map`; subsections are
    /// handed to `sub` (or reported as unknown if it returns false).
    fn attrs(
        &mut self,
        block: &Block,
        section: Section,
        map: &mut AttrMap,
        mut sub: impl FnMut(&mut Self, &Block) -> bool,
    ) {
        for item in &block.items {
            match item {
                Item::Attr(a) => match self.check_attr(a, section) {
                    AttrCheck::Ok(_, asg) => self.store(map, asg, section),
                    AttrCheck::Unknown => self.unknown_keyword(a, section),
                    AttrCheck::Rejected => {}
                },
                Item::Block(b) => {
                    if !sub(self, b) {
                        self.unknown_section(b, section);
                    }
                }
            }
        }
    }

    fn top(&mut self, doc: &Document) {
        let mut seen: BTreeMap<Section, Span> = BTreeMap::new();
        for item in &doc.items {
            match item {
                Item::Attr(a) => {
                    let msg = if is_known(&a.key) {
                        format!(
                            "keyword '{}' outside any section; it belongs in {}; ignored",
                            a.key,
                            list_sections(&sections_of(&a.key))
                        )
                    } else {
                        format!("unknown keyword '{}' outside any section; ignored", a.key)
                    };
                    self.diags.warning(&a.span, msg);
                }
                Item::Block(b) => {
                    let Some(section) = Section::top(&b.name) else {
                        self.diags
                            .warning(&b.span, format!("unknown section '{}'; ignored", b.name));
                        continue;
                    };
                    if let Some(first) = seen.get(&section) {
                        self.diags.warning(
                            &b.span,
                            format!(
                                "duplicate section '{}' (first at {first}); both are used",
                                b.name
                            ),
                        );
                    } else {
                        seen.insert(section, b.span.clone());
                    }
                    self.section(b, section);
                }
            }
        }
    }

    fn section(&mut self, b: &Block, section: Section) {
        match section {
            Section::Defaults => {
                let mut map = std::mem::take(&mut self.cfg.defaults);
                self.attrs(b, section, &mut map, |_, _| false);
                self.cfg.defaults = map;
            }
            Section::Overrides => {
                let mut map = std::mem::take(&mut self.cfg.overrides);
                self.attrs(b, section, &mut map, |me, sub| {
                    if sub.name != "protocol" {
                        return false;
                    }
                    me.protocol(sub);
                    true
                });
                self.cfg.overrides = map;
            }
            Section::Devices => {
                self.container(b, section, "device", |me, sub| me.device(sub));
            }
            Section::Multipaths => {
                self.container(b, section, "multipath", |me, sub| me.multipath(sub));
            }
            Section::Paths => {
                // `iscsi_target { }` stands for a `path { }` per portal and
                // LUN; everything else is as in any container.
                let mut items = Vec::new();
                for item in &b.items {
                    match item {
                        Item::Block(sub) if sub.name == "iscsi_target" => {
                            match super::paths::expand_iscsi_target(sub) {
                                Ok(paths) => items.extend(paths.into_iter().map(Item::Block)),
                                Err((span, msg)) => self.diags.error(&span, msg),
                            }
                        }
                        other => items.push(other.clone()),
                    }
                }
                let b = Block { items, ..b.clone() };
                self.container(&b, section, "path", |me, sub| me.path(sub));
            }
            Section::Blacklist | Section::BlacklistExceptions => {
                let mut list = std::mem::take(if section == Section::Blacklist {
                    &mut self.cfg.blacklist
                } else {
                    &mut self.cfg.blacklist_exceptions
                });
                self.blacklist(b, section, &mut list);
                if section == Section::Blacklist {
                    self.cfg.blacklist = list;
                } else {
                    self.cfg.blacklist_exceptions = list;
                }
            }
            // Subsections never reach here.
            _ => self.unknown_section(b, section),
        }
    }

    /// A section that only holds `child {}` subsections.
    fn container(
        &mut self,
        b: &Block,
        section: Section,
        child: &str,
        mut each: impl FnMut(&mut Self, &Block),
    ) {
        for item in &b.items {
            match item {
                Item::Block(sub) if sub.name == child => each(self, sub),
                Item::Block(sub) => self.unknown_section(sub, section),
                Item::Attr(a) => {
                    let msg = if is_known(&a.key) {
                        format!(
                            "keyword '{}' cannot be set directly in section '{section}'; put it \
                             in a '{child} {{ }}' entry; ignored",
                            a.key
                        )
                    } else {
                        format!(
                            "unknown keyword '{}' in section '{section}'; ignored",
                            a.key
                        )
                    };
                    self.diags.warning(&a.span, msg);
                }
            }
        }
    }

    fn protocol(&mut self, b: &Block) {
        let mut attrs = AttrMap::new();
        self.attrs(b, Section::Protocol, &mut attrs, |_, _| false);
        let protocol_type = attrs.get("type").map(|a| a.text.clone());
        if protocol_type.is_none() {
            self.diags.warning(
                &b.span,
                "protocol entry without 'type' is ignored (as multipath-tools does)",
            );
            return;
        }
        // Entries for the same type are merged, the later one's values
        // winning, at the later one's place (as multipath-tools does).
        if let Some(i) = self
            .cfg
            .protocols
            .iter()
            .position(|p| p.protocol_type == protocol_type)
        {
            let earlier = self.cfg.protocols.remove(i);
            for (k, v) in earlier.attrs {
                attrs.entry(k).or_insert(v);
            }
        }
        self.cfg.protocols.push(ProtocolEntry {
            protocol_type,
            attrs,
            span: b.span.clone(),
        });
    }

    fn device(&mut self, b: &Block) {
        let mut attrs = AttrMap::new();
        self.attrs(b, Section::Device, &mut attrs, |_, _| false);
        let mut take = |k: &str| match attrs.remove(k) {
            Some(Assignment {
                value: Typed::Regex(p),
                ..
            }) => Some(p),
            _ => None,
        };
        let vendor = take("vendor");
        let product = take("product");
        let revision = take("revision");
        let (Some(vendor), Some(product)) = (vendor, product) else {
            let missing = |p: bool, n: &'static str| (!p).then_some(n);
            let what: Vec<&str> = [
                missing(b.items.iter().any(|i| is_attr(i, "vendor")), "vendor"),
                missing(b.items.iter().any(|i| is_attr(i, "product")), "product"),
            ]
            .into_iter()
            .flatten()
            .collect();
            if !what.is_empty() {
                self.diags.warning(
                    &b.span,
                    format!(
                        "device entry without {} is ignored (as multipath-tools does)",
                        what.join(" and ")
                    ),
                );
            }
            return;
        };
        let entry = DeviceEntry {
            vendor,
            product,
            revision,
            attrs,
            span: b.span.clone(),
            builtin: false,
        };
        let key = (
            entry.vendor.as_str().to_string(),
            entry.product.as_str().to_string(),
            entry.revision.as_ref().map(|r| r.as_str().to_string()),
        );
        if let Some(earlier) = self.devices.take(&key) {
            // Across files (conf.d) this is the intended way to amend an
            // entry: no warning.
            if earlier.span.file == entry.span.file {
                self.diags.warning(
                    &entry.span,
                    format!(
                        "duplicate device entry for {} (also at {}); the entries are merged and \
                         this one's settings win",
                        entry.describe(),
                        earlier.span
                    ),
                );
            }
            let mut merged = entry;
            for (k, v) in earlier.attrs {
                merged.attrs.entry(k).or_insert(v);
            }
            self.devices.push(key, merged);
        } else {
            self.devices.push(key, entry);
        }
    }

    fn multipath(&mut self, b: &Block) {
        let mut attrs = AttrMap::new();
        self.attrs(b, Section::Multipath, &mut attrs, |_, _| false);
        let Some(wwid) = attrs.remove("wwid") else {
            if !b.items.iter().any(|i| is_attr(i, "wwid")) {
                self.diags.warning(
                    &b.span,
                    "multipath entry without 'wwid' is ignored (as multipath-tools does)",
                );
            }
            return;
        };
        let entry = MultipathEntry {
            wwid: wwid.text,
            attrs,
            span: b.span.clone(),
        };
        let key = entry.wwid.clone();
        if let Some(earlier) = self.multipaths.take(&key) {
            if earlier.span.file == entry.span.file {
                self.diags.warning(
                    &entry.span,
                    format!(
                        "duplicate multipath entry for wwid \"{}\" (also at {}); the entries \
                         are merged and this one's settings win",
                        entry.wwid, earlier.span
                    ),
                );
            }
            let mut merged = entry;
            for (k, v) in earlier.attrs {
                merged.attrs.entry(k).or_insert(v);
            }
            self.multipaths.push(key, merged);
        } else {
            self.multipaths.push(key, entry);
        }
    }

    fn blacklist(&mut self, b: &Block, section: Section, list: &mut Blacklist) {
        for item in &b.items {
            match item {
                Item::Attr(a) => match self.check_attr(a, section) {
                    AttrCheck::Ok(kw, asg) => {
                        let Typed::Regex(pattern) = asg.value else {
                            continue;
                        };
                        let entry = BlacklistEntry {
                            pattern,
                            span: asg.span,
                            builtin: false,
                        };
                        match kw.name {
                            "devnode" => list.devnode.push(entry),
                            "wwid" => list.wwid.push(entry),
                            "property" => list.property.push(entry),
                            _ => list.protocol.push(entry),
                        }
                    }
                    AttrCheck::Unknown => self.unknown_keyword(a, section),
                    AttrCheck::Rejected => {}
                },
                Item::Block(sub) if sub.name == "device" => {
                    let mut attrs = AttrMap::new();
                    self.attrs(sub, Section::BlacklistDevice, &mut attrs, |_, _| false);
                    let mut take = |k: &str| match attrs.remove(k) {
                        Some(Assignment {
                            value: Typed::Regex(p),
                            ..
                        }) => Some(p),
                        _ => None,
                    };
                    let vendor = take("vendor");
                    let product = take("product");
                    if vendor.is_none() && product.is_none() {
                        if !sub
                            .items
                            .iter()
                            .any(|i| is_attr(i, "vendor") || is_attr(i, "product"))
                        {
                            self.diags.warning(
                                &sub.span,
                                format!(
                                    "{} device entry without vendor or product is ignored",
                                    section.name()
                                ),
                            );
                        }
                        continue;
                    }
                    list.device.push(BlacklistDevice {
                        vendor,
                        product,
                        span: sub.span.clone(),
                        builtin: false,
                        from_product_blacklist: false,
                    });
                }
                Item::Block(sub) => self.unknown_section(sub, section),
            }
        }
    }

    fn path(&mut self, b: &Block) {
        let mut attrs = AttrMap::new();
        let mut extra: BTreeMap<String, (String, Span)> = BTreeMap::new();
        for item in &b.items {
            match item {
                Item::Attr(a) => match self.check_attr(a, Section::Path) {
                    AttrCheck::Ok(_, asg) => self.store(&mut attrs, asg, Section::Path),
                    AttrCheck::Unknown => {
                        if let Some((prev, span)) = extra.get(&a.key) {
                            let prev = if is_secret(&a.key) { MASKED } else { prev };
                            self.diags.warning(
                                &a.span,
                                format!(
                                    "duplicate keyword '{}' in section 'paths/path' (previous \
                                     value \"{prev}\" at {span}); the last value is used",
                                    a.key
                                ),
                            );
                        }
                        extra.insert(a.key.clone(), (a.value.text.clone(), a.span.clone()));
                    }
                    AttrCheck::Rejected => {}
                },
                Item::Block(sub) => self.unknown_section(sub, Section::Path),
            }
        }
        let text = |k: &str| attrs.get(k).map(|a| a.text.clone());
        let Some(name) = text("name") else {
            if !b.items.iter().any(|i| is_attr(i, "name")) {
                self.diags.error(&b.span, "path entry has no 'name'");
            }
            return;
        };
        let mut ok = true;
        let transport = text("transport").unwrap_or_else(|| DEFAULT_TRANSPORT.to_string());
        let known = TRANSPORTS.iter().find(|(t, _)| *t == transport);
        if known.is_none() {
            let span = attrs.get("transport").map_or(&b.span, |a| &a.span);
            self.diags.error(
                span,
                format!(
                    "unknown transport '{transport}' for path '{name}' (known transports: {})",
                    transport_names().join(", ")
                ),
            );
            ok = false;
        }
        let iscsi = transport == "iscsi";
        let wwid = if iscsi {
            for k in ["wwid", "vendor", "product", "revision", "serial"] {
                if let Some(a) = attrs.get(k) {
                    self.diags.warning(
                        &a.span,
                        format!(
                            "path '{name}': '{k}' is ignored for an iscsi path (it comes from \
                             the LUN's INQUIRY and VPD page 0x83)"
                        ),
                    );
                }
            }
            match IscsiDecl::from_keys(&extra) {
                Ok(_) => {}
                Err((key, msg)) => {
                    let span = extra.get(key).map_or(&b.span, |(_, s)| s);
                    self.diags.error(span, format!("path '{name}' {msg}"));
                    ok = false;
                }
            }
            Some(String::new())
        } else {
            text("wwid")
        };
        if wwid.is_none() && !b.items.iter().any(|i| is_attr(i, "wwid")) {
            self.diags
                .error(&b.span, format!("path '{name}' has no 'wwid'"));
            ok = false;
        }
        let file = text("file").map(PathBuf::from);
        if transport == "file" && file.is_none() && !b.items.iter().any(|i| is_attr(i, "file")) {
            self.diags.error(
                &b.span,
                format!("path '{name}' uses transport 'file' but has no 'file'"),
            );
            ok = false;
        }
        if let Some((spec, span)) = extra.get("fault") {
            if let Err(e) = crate::transport::fault::FaultSpec::parse_list(spec) {
                self.diags
                    .error(span, format!("path '{name}': fault {spec:?}: {e}"));
                ok = false;
            }
        }
        if let Some((tpg, span)) = extra.get("tpg") {
            if tpg.parse::<u16>().is_err() {
                self.diags.error(
                    span,
                    format!("path '{name}': tpg {tpg:?} is not a target port group (0 to 65535)"),
                );
                ok = false;
            }
        }
        if let Some((direct, span)) = extra.get("direct") {
            if !matches!(direct.as_str(), "yes" | "no") {
                self.diags.error(
                    span,
                    format!("path '{name}': direct {direct:?} is not 'yes' or 'no'"),
                );
                ok = false;
            }
        }
        if let Some((node, span)) = extra.get("node_name") {
            if node.trim().is_empty() {
                self.diags
                    .error(span, format!("path '{name}': node_name is empty"));
                ok = false;
            }
        }
        if transport == "nbd" {
            match extra.get("uri") {
                None => {
                    self.diags.error(
                        &b.span,
                        format!("path '{name}' uses transport 'nbd' but has no 'uri'"),
                    );
                    ok = false;
                }
                Some((uri, span)) => {
                    if let Err(e) = crate::nbd::uri::NbdUri::parse(uri) {
                        self.diags.error(span, format!("path '{name}': {e}"));
                        ok = false;
                    }
                }
            }
        }
        for k in ["vendor", "product"] {
            if !iscsi && !attrs.contains_key(k) {
                self.diags.warning(
                    &b.span,
                    format!(
                        "path '{name}' has no '{k}'; using \"\" (device entries will not match \
                         it)"
                    ),
                );
            }
        }
        if let Some((t, keys)) = known {
            for (k, (_, span)) in &extra {
                if !keys.contains(&k.as_str()) {
                    self.diags.warning(
                        span,
                        format!(
                            "unknown keyword '{k}' in section 'paths/path' (not used by \
                             transport '{t}'); ignored"
                        ),
                    );
                }
            }
        }
        if !ok {
            return;
        }
        let Some(wwid) = wwid else { return };
        if let Some(first) = self.path_names.get(&name) {
            let first = first.clone();
            let span = attrs.get("name").map_or(&b.span, |a| &a.span);
            self.diags.error(
                span,
                format!("duplicate path name '{name}' (first declared at {first})"),
            );
            return;
        }
        self.path_names.insert(name.clone(), b.span.clone());
        self.paths.push(PathDecl {
            name,
            transport,
            file,
            vendor: text("vendor").filter(|_| !iscsi).unwrap_or_default(),
            product: text("product").filter(|_| !iscsi).unwrap_or_default(),
            revision: text("revision").filter(|_| !iscsi).unwrap_or_default(),
            wwid,
            serial: text("serial").filter(|_| !iscsi).unwrap_or_default(),
            extra,
            span: b.span.clone(),
        });
    }

    fn check_aliases(&mut self) {
        let mut seen: BTreeMap<String, (String, Span)> = BTreeMap::new();
        for m in self.multipaths.iter() {
            let Some(alias) = m.attrs.get("alias") else {
                continue;
            };
            if let Some((wwid, span)) = seen.get(&alias.text) {
                self.diags.error(
                    &alias.span,
                    format!(
                        "alias '{}' for wwid \"{}\" is already used for wwid \"{wwid}\" at {span}",
                        alias.text, m.wwid
                    ),
                );
            } else {
                seen.insert(alias.text.clone(), (m.wwid.clone(), alias.span.clone()));
            }
        }
    }

    /// polling_interval / max_polling_interval, as multipath-tools derives
    /// them: max defaults to 4 * polling_interval; with only max set,
    /// polling_interval is max / 4 (at least 1); a polling_interval above
    /// max is lowered to max.
    fn intervals(&mut self) {
        let get = |k: &str| match self.cfg.defaults.get(k) {
            Some(Assignment {
                value: Typed::UInt(v),
                span,
                ..
            }) => Some((*v, span.clone())),
            _ => None,
        };
        let pi = get("polling_interval");
        let max = get("max_polling_interval");
        let (p, m) = match (pi, max) {
            (p, None) => {
                let p = p.map_or(defaults::POLLING_INTERVAL, |(v, _)| v);
                (p, p.saturating_mul(4))
            }
            (None, Some((m, _))) => ((m / 4).max(1), m),
            (Some((p, _)), Some((m, span))) => {
                if p > m {
                    self.diags.warning(
                        &span,
                        format!(
                            "max_polling_interval {m} is smaller than polling_interval {p}; \
                             polling_interval {m} is used"
                        ),
                    );
                    (m, m)
                } else {
                    (p, m)
                }
            }
        };
        self.cfg.polling_interval = p;
        self.cfg.max_polling_interval = m;
    }

    /// `prio` with the `prio_args` of its own section (they are selected
    /// together): bad arguments are errors at the `prio_args` line (or
    /// the `prio` line when the section has none). A device entry without
    /// `prio_args` is not checked here: it may take them from another
    /// matching entry. `prio_args` without `prio` in `defaults`,
    /// `overrides` or a `multipath` entry is never used: a warning.
    fn check_prio_args(&mut self) {
        let mut errors = Vec::new();
        let mut unused = Vec::new();
        let mut check =
            |attrs: &AttrMap, device: bool| match (attrs.get("prio"), attrs.get("prio_args")) {
                (Some(prio), args) if !(device && args.is_none()) => {
                    let text = args.map_or("", |a| a.text.as_str());
                    if let Err(e @ PrioConfigError::BadArg { .. }) =
                        Prioritizer::parse(&prio.text, text)
                    {
                        let span = args.map_or(&prio.span, |a| &a.span);
                        errors.push((span.clone(), e.to_string()));
                    }
                }
                (None, Some(args)) if !device => unused.push(args.span.clone()),
                _ => {}
            };
        check(&self.cfg.defaults, false);
        check(&self.cfg.overrides, false);
        for d in self.cfg.devices.iter().filter(|d| !d.builtin) {
            check(&d.attrs, true);
        }
        for m in &self.cfg.multipaths {
            check(&m.attrs, false);
        }
        for (span, msg) in errors {
            self.diags.error(&span, msg);
        }
        for span in unused {
            self.diags.warning(
                &span,
                "prio_args without prio in the same section is not used (prio_args goes with \
                 the prio of its section)",
            );
        }
    }

    /// `marginal_pathgroups fpin` needs FC Fabric Performance Impact
    /// Notifications, which umpath does not receive: said at its line.
    fn check_marginal_pathgroups(&mut self) {
        if let Some(a) = self.cfg.defaults.get("marginal_pathgroups") {
            if a.text == "fpin" {
                let span = a.span.clone();
                self.diags.warning(
                    &span,
                    "marginal_pathgroups fpin needs FC FPIN events, which umpath does not \
                     receive: it acts as off (marginal paths are held out); use on for \
                     marginal path groups",
                );
            }
        }
    }

    fn report_blacklisted_paths(&mut self) {
        let mut found = Vec::new();
        for p in &self.cfg.paths {
            if let Some(reason) = self.cfg.blacklisted(&p.identity()) {
                found.push((p.span.clone(), p.name.clone(), reason));
            }
        }
        for (span, name, reason) in found {
            self.diags.warning(
                &span,
                format!("path '{name}' is {reason}; it will not be used"),
            );
        }
    }
}

impl Builder<'_> {
    /// A declared (`file`, `nbd`) path whose prioritizer needs a SCSI
    /// device (`alua`, `sysfs`, `weightedpath hbtl|wwn`): a warning at the
    /// path, naming where `prio` was set. The path runs with priority 1
    /// (multipath-tools would fall back to `const` silently for `alua`;
    /// `detect_prio` never applies to a declared path).
    fn report_scsi_prio_on_declared_paths(&mut self) {
        let mut found = Vec::new();
        for p in &self.cfg.paths {
            let id = p.identity();
            if self.cfg.blacklisted(&id).is_some() {
                continue;
            }
            let s = self.cfg.resolve(&id);
            if let Ok(prio) = s.prioritizer() {
                if prio.needs().scsi() {
                    found.push((
                        p.span.clone(),
                        p.name.clone(),
                        p.transport.clone(),
                        prio,
                        s.prio.origin,
                    ));
                }
            }
        }
        for (span, name, transport, prio, origin) in found {
            self.diags.warning(
                &span,
                format!(
                    "path '{name}': prioritizer '{prio}' {origin} needs a SCSI device, and this \
                     path is transport {transport}; its priority stays 1"
                ),
            );
        }
    }
}

fn is_attr(item: &Item, key: &str) -> bool {
    matches!(item, Item::Attr(a) if a.key == key)
}

/// Builds the typed configuration from parsed documents: the main file
/// first, then the conf.d files in order. Later files add entries and
/// override keywords of earlier ones, as in multipath-tools.
pub(crate) fn build(docs: &[Document], diags: &mut Diags) -> Config {
    let file = docs
        .first()
        .map_or_else(|| Arc::from("(none)"), |d| Arc::clone(&d.file));
    let mut b = Builder {
        diags,
        noted: BTreeSet::new(),
        noted_values: BTreeSet::new(),
        regex_cache: HashMap::new(),
        cfg: Config::empty(file),
        devices: MergeList::new(),
        multipaths: MergeList::new(),
        paths: Vec::new(),
        path_names: HashMap::new(),
    };
    for doc in docs {
        b.top(doc);
    }
    b.check_aliases();
    b.cfg.devices = std::mem::replace(&mut b.devices, MergeList::new()).into_vec();
    b.cfg.folded_builtins = fold_builtins(&mut b.cfg.devices);
    b.cfg.multipaths = std::mem::replace(&mut b.multipaths, MergeList::new()).into_vec();
    b.cfg.paths = std::mem::take(&mut b.paths);
    b.cfg.files = docs.iter().map(|d| d.file.to_string()).collect();
    b.intervals();
    b.check_prio_args();
    b.check_marginal_pathgroups();
    b.report_blacklisted_paths();
    b.report_scsi_prio_on_declared_paths();
    b.cfg
}

/// multipath-tools merges a built-in entry whose vendor, product and
/// revision strings equal those of a user entry into the user entry (the
/// user's attributes win, the built-in ones fill the gaps and keep their
/// built-in origin) and drops it from the built-in list. Returns the
/// indices of the dropped built-in entries.
fn fold_builtins(devices: &mut [DeviceEntry]) -> Vec<usize> {
    type Key = (String, String, Option<String>);
    fn key(d: &DeviceEntry) -> Key {
        (
            d.vendor.as_str().to_string(),
            d.product.as_str().to_string(),
            d.revision.as_ref().map(|r| r.as_str().to_string()),
        )
    }
    let builtin = hwtable::builtin_devices();
    let mut index: HashMap<Key, usize> = HashMap::new();
    for (i, hw) in builtin.iter().enumerate() {
        // The first of identical built-in entries (there are none today).
        index.entry(key(hw)).or_insert(i);
    }
    let mut folded = Vec::new();
    for d in devices.iter_mut() {
        let Some(i) = index.remove(&key(d)) else {
            continue;
        };
        for (k, v) in &builtin[i].attrs {
            d.attrs.entry(k).or_insert_with(|| v.clone());
        }
        folded.push(i);
    }
    folded.sort_unstable();
    folded
}
