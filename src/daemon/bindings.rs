//! The bindings file's IO: read it, let `config::bindings` pick names for
//! the maps that want user-friendly names, and write it back atomically
//! (temporary file, fsync, rename, fsync of the directory) when it
//! changed.

use std::collections::{BTreeSet, HashMap};
use std::io::Write as _;
use std::path::Path;

use tracing::{info, warn};

use crate::config::bindings::Bindings;
use crate::config::Config;

/// user_friendly_names aliases for the maps `cfg` assembles, by WWID: one
/// for each map whose (first) path resolves `user_friendly_names yes` and
/// has no `alias` in the multipaths section. New bindings are saved to
/// `cfg.bindings_file()`; if that fails the maps are named by WWID
/// (as multipath-tools does) and the error is logged.
pub fn friendly_names(cfg: &Config) -> HashMap<String, String> {
    let mut wanted: Vec<(String, String)> = Vec::new();
    for d in cfg.paths() {
        let id = d.identity();
        if wanted.iter().any(|(w, _)| *w == d.wwid) || cfg.blacklisted(&id).is_some() {
            continue;
        }
        let s = cfg.resolve(&id);
        if s.user_friendly_names.value && s.alias.is_none() {
            wanted.push((d.wwid.clone(), s.alias_prefix.value.clone()));
        }
    }
    if wanted.is_empty() {
        return HashMap::new();
    }
    let path = cfg.bindings_file();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            warn!(file = %path.display(), "cannot read the bindings file: {e}; maps are named by WWID");
            return HashMap::new();
        }
    };
    let (mut bindings, problems) = Bindings::parse(&text);
    for (line, msg) in problems {
        warn!("{}:{line}: {msg}", path.display());
    }
    let reserved: BTreeSet<String> = cfg
        .multipaths()
        .iter()
        .filter_map(|m| m.attrs.get("alias").map(|a| a.text.clone()))
        .collect();
    let mut names = HashMap::new();
    let mut changed = false;
    for (wwid, prefix) in wanted {
        let (alias, new) = bindings.assign(&wwid, &prefix, &reserved);
        changed |= new;
        names.insert(wwid, alias);
    }
    if changed {
        if let Err(e) = write_atomically(path, &bindings.render()) {
            warn!(file = %path.display(), "cannot write the bindings file: {e}; maps are named by WWID");
            return HashMap::new();
        }
        info!(file = %path.display(), "bindings updated");
    }
    names
}

/// Writes `text` to `path` so that readers see the old or the new file,
/// never a partial one, and the new one survives a crash once this
/// returns.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bindings".into());
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &Path, extra: &str) -> Config {
        let text = format!(
            "defaults {{\n user_friendly_names yes\n bindings_file \"{}\"\n}}\n{extra}paths {{\n path {{\n  name a\n  file /x\n  vendor V\n  product P\n  wwid \"3600a\"\n }}\n path {{\n  name b\n  file /x\n  vendor V\n  product P\n  wwid \"3600b\"\n }}\n path {{\n  name c\n  file /x\n  vendor V\n  product P\n  wwid \"3600c\"\n }}\n}}\n",
            dir.join("bindings").display()
        );
        crate::config::parse_str(&text, "t.conf").unwrap()
    }

    #[test]
    fn names_are_stable_across_restarts_and_aliases_win() {
        let dir = tempfile::tempdir().unwrap();
        let mp = "multipaths {\n multipath {\n  wwid \"3600b\"\n  alias mpathb\n }\n}\n";
        let c = cfg(dir.path(), mp);
        let names = friendly_names(&c);
        assert_eq!(names.get("3600a").map(String::as_str), Some("mpatha"));
        assert_eq!(names.get("3600b"), None, "alias wins");
        // mpathb is reserved by the alias: never shared.
        assert_eq!(names.get("3600c").map(String::as_str), Some("mpathc"));
        let text = std::fs::read_to_string(dir.path().join("bindings")).unwrap();
        assert!(
            text.contains("mpatha 3600a\n") && text.contains("mpathc 3600c\n"),
            "{text}"
        );
        // A restart with paths in another order keeps the names.
        let again = friendly_names(&cfg(dir.path(), mp));
        assert_eq!(again, names);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    }
}
