//! user_friendly_names bindings: the `bindings_file` (default
//! /etc/multipath/bindings) maps aliases to WWIDs, one `ALIAS WWID` pair
//! per line, `#` starting a comment, as multipath-tools writes it.
//!
//! Pure: parsing, choosing the next free alias and printing. Reading and
//! (atomically) writing the file is the daemon's job.

use std::collections::BTreeSet;
use std::fmt::Write as _;

/// The parsed bindings file, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bindings {
    /// (alias, wwid)
    entries: Vec<(String, String)>,
}

/// The text that starts a bindings file umpath writes.
pub const HEADER: &str = "# Multipath bindings (user_friendly_names), written by umpath.\n\
# Format: ALIAS WWID, one per line; '#' starts a comment.\n\
# Editing by hand is possible while umpath is not running.\n";

impl Bindings {
    /// Parses a bindings file. Lines that are not `ALIAS WWID` (extra
    /// words after the WWID are ignored), and lines that reuse an alias
    /// or a WWID of an earlier line, are skipped with a warning
    /// `(line, message)`: one name never stands for two WWIDs.
    pub fn parse(text: &str) -> (Bindings, Vec<(u32, String)>) {
        let mut b = Bindings::default();
        let mut warnings = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line_no = u32::try_from(i + 1).unwrap_or(u32::MAX);
            let line = raw.split('#').next().unwrap_or("");
            let mut words = line.split_whitespace();
            let Some(alias) = words.next() else { continue };
            let Some(wwid) = words.next() else {
                warnings.push((line_no, format!("alias '{alias}' has no WWID; ignored")));
                continue;
            };
            if let Some(w) = b.wwid_of(alias) {
                warnings.push((
                    line_no,
                    format!("alias '{alias}' is already bound to WWID {w}; ignored"),
                ));
                continue;
            }
            if let Some(a) = b.alias_of(wwid) {
                warnings.push((
                    line_no,
                    format!("WWID {wwid} is already bound to alias '{a}'; ignored"),
                ));
                continue;
            }
            b.entries.push((alias.to_string(), wwid.to_string()));
        }
        (b, warnings)
    }

    /// The alias bound to `wwid`.
    pub fn alias_of(&self, wwid: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(_, w)| w == wwid)
            .map(|(a, _)| a.as_str())
    }

    /// The WWID bound to `alias`.
    pub fn wwid_of(&self, alias: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(a, _)| a == alias)
            .map(|(_, w)| w.as_str())
    }

    /// The bindings, in file order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(a, w)| (a.as_str(), w.as_str()))
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The alias for `wwid`: its existing binding if that name is not
    /// `reserved` (an `alias` given to another WWID in the multipaths
    /// section), else a new one, `prefix` followed by the first free
    /// suffix (a..z, aa..az, ...); the new binding is added. Returns the
    /// alias and whether the bindings changed.
    pub fn assign(
        &mut self,
        wwid: &str,
        prefix: &str,
        reserved: &BTreeSet<String>,
    ) -> (String, bool) {
        if let Some(a) = self.alias_of(wwid) {
            if !reserved.contains(a) {
                return (a.to_string(), false);
            }
        }
        let taken: BTreeSet<&str> = self.entries.iter().map(|(a, _)| a.as_str()).collect();
        let mut n = 1u64;
        let alias = loop {
            let candidate = format!("{prefix}{}", alias_suffix(n));
            if !taken.contains(candidate.as_str()) && !reserved.contains(&candidate) {
                break candidate;
            }
            n += 1;
        };
        // A WWID whose binding clashed with a reserved alias is re-bound.
        self.entries.retain(|(_, w)| w != wwid);
        self.entries.push((alias.clone(), wwid.to_string()));
        (alias, true)
    }

    /// The file text: [`HEADER`], then one `ALIAS WWID` line per binding.
    pub fn render(&self) -> String {
        let mut out = String::from(HEADER);
        for (a, w) in &self.entries {
            let _ = writeln!(out, "{a} {w}");
        }
        out
    }
}

/// The suffix of the `n`th alias (1-based), as multipath-tools numbers
/// them: 1 → a, 26 → z, 27 → aa, 28 → ab, 702 → zz, 703 → aaa.
pub fn alias_suffix(mut n: u64) -> String {
    let mut out = Vec::new();
    while n > 0 {
        n -= 1;
        out.push(b'a' + (n % 26) as u8);
        n /= 26;
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_like_multipath_tools() {
        assert_eq!(alias_suffix(1), "a");
        assert_eq!(alias_suffix(26), "z");
        assert_eq!(alias_suffix(27), "aa");
        assert_eq!(alias_suffix(28), "ab");
        assert_eq!(alias_suffix(52), "az");
        assert_eq!(alias_suffix(53), "ba");
        assert_eq!(alias_suffix(702), "zz");
        assert_eq!(alias_suffix(703), "aaa");
    }

    #[test]
    fn parse_skips_comments_and_conflicts() {
        let text = "# header\n\nmpatha 3600a\nmpathb 3600b # trailing\nmpatha 3600c\nmpathc 3600a\nlonely\n";
        let (b, w) = Bindings::parse(text);
        assert_eq!(
            b.entries().collect::<Vec<_>>(),
            vec![("mpatha", "3600a"), ("mpathb", "3600b")]
        );
        assert_eq!(w.len(), 3, "{w:?}");
        assert_eq!(w[0].0, 5);
        assert_eq!(w[1].0, 6);
        assert_eq!(w[2].0, 7);
    }

    #[test]
    fn assign_is_stable_and_fills_gaps() {
        let (mut b, _) = Bindings::parse("mpatha 3600a\nmpathc 3600c\n");
        let none = BTreeSet::new();
        assert_eq!(b.assign("3600c", "mpath", &none), ("mpathc".into(), false));
        assert_eq!(b.assign("3600x", "mpath", &none), ("mpathb".into(), true));
        assert_eq!(b.assign("3600y", "mpath", &none), ("mpathd".into(), true));
        assert_eq!(b.assign("3600z", "disk", &none), ("diska".into(), true));
        let (again, _) = Bindings::parse(&b.render());
        assert_eq!(again, b);
    }

    #[test]
    fn reserved_aliases_are_never_shared() {
        let (mut b, _) = Bindings::parse("mpatha 3600a\n");
        let reserved: BTreeSet<String> = ["mpatha".to_string(), "mpathb".to_string()].into();
        // 3600a's old name is now some other WWID's alias: re-bound.
        assert_eq!(
            b.assign("3600a", "mpath", &reserved),
            ("mpathc".into(), true)
        );
        assert_eq!(b.wwid_of("mpatha"), None);
        assert_eq!(
            b.assign("3600d", "mpath", &reserved),
            ("mpathd".into(), true)
        );
    }

    #[test]
    fn many_aliases() {
        let mut b = Bindings::default();
        let none = BTreeSet::new();
        for i in 0..30 {
            b.assign(&format!("w{i}"), "mpath", &none);
        }
        assert_eq!(b.alias_of("w26"), Some("mpathaa"));
        assert_eq!(b.alias_of("w29"), Some("mpathad"));
    }
}
