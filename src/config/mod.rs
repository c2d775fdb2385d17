//! multipath.conf: parsing, the built-in hardware table and property
//! selection (with the origin of every value). Pure: reading the file is
//! the only IO, and it happens in [`load`] / [`Config::load`].
//!
//! * [`parse`]: lexer and parser to a syntax tree with spans, and a
//!   printer.
//! * [`keywords`]: the table of keywords (sections, value checks,
//!   defaults, effect in umpath).
//! * [`defaults`]: built-in values and multipath-tools' file locations.
//! * [`sections`]: the typed section entries and [`PathIdentity`].
//! * [`hwtable`]: built-in device entries and blacklist.
//! * [`paths`]: umpath's own `paths` section ([`PathDecl`]).
//! * `data` (private): the [`Config`] type and its accessors.
//! * `build` (private): syntax tree to typed [`Config`], with diagnostics.
//! * [`propsel`]: property selection for a path ([`Config::resolve`]) and
//!   blacklisting ([`Config::blacklisted`]).
//! * [`render`]: `multipath -t`-shaped output and explain.
//! * [`bindings`]: user_friendly_names allocation.
//!
//! Dependencies run one way, down this order: `diag`, `defaults`,
//! `bindings` (leaves); `keywords`; `parse`, `sections`; `paths`,
//! `hwtable`; `data`; `build`, `propsel`; `render`. This file only
//! re-exports and loads; no submodule uses it.
//!
//! Errors (syntax, invalid values, invalid paths) make loading fail with a
//! [`ConfigError`] carrying every diagnostic; warnings (unknown keywords,
//! duplicates, keywords without effect, ...) are kept in
//! [`Config::warnings`] for the daemon to log.

pub mod bindings;
mod build;
mod data;
pub mod defaults;
pub mod diag;
pub mod hwtable;
pub mod keywords;
pub mod parse;
pub mod paths;
pub mod propsel;
pub mod render;
pub mod sections;

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use data::{AutoResize, Config, NbdDevice};
pub use defaults::{DEFAULT_BINDINGS_FILE, DEFAULT_CONFIG_DIR, DEFAULT_CONFIG_FILE};
pub use diag::{Diagnostic, Severity, Span};
pub use keywords::{Assignment, Pattern, Section, Typed};
pub use paths::{ChapDecl, IscsiDecl, PathDecl, Portal, SecretSource};
pub use propsel::{Origin, PathSettings, Setting};
pub use sections::{
    AttrMap, Blacklist, BlacklistDevice, BlacklistEntry, DeviceEntry, MultipathEntry, PathIdentity,
    ProtocolEntry,
};

use diag::Diags;

/// The QuantaStor device stanza exactly as OSNEXUS documents it for
/// XenServer's multipath.conf (a `device { }` entry for the `devices`
/// section). umpath must accept it verbatim; the demo and tests use it.
pub const QUANTASTOR_DEVICE: &str = r#"    device {
          vendor                  "OSNEXUS"
          product                 "QUANTASTOR"
          getuid_callout          "/sbin/scsi_id -g -u -s /block/%n"
          path_selector           "round-robin 0"
          path_grouping_policy    multibus
          failback                immediate
          rr_weight               uniform
          rr_min_io               100
          path_checker            tur
    }
"#;

/// Largest configuration file accepted.
pub const MAX_FILE_SIZE: u64 = 16 * 1024 * 1024;

/// Loading failed. Carries every diagnostic (errors and warnings);
/// displayed one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub diagnostics: Vec<Diagnostic>,
}

impl ConfigError {
    fn single(file: &str, message: String) -> Self {
        ConfigError {
            diagnostics: vec![Diagnostic {
                file: file.to_string(),
                line: 0,
                severity: Severity::Error,
                message,
            }],
        }
    }

    /// Only the errors.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.is_error())
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

fn too_large(file: &str, size: u64) -> ConfigError {
    ConfigError::single(
        file,
        format!(
            "file too large ({size} bytes; the limit is {} MiB)",
            MAX_FILE_SIZE / (1024 * 1024)
        ),
    )
}

/// Parses configuration text; `file_name` is used in diagnostics and
/// origins. No conf.d directory is read.
pub fn parse_str(text: &str, file_name: &str) -> Result<Config, ConfigError> {
    parse_files(&[(file_name, text)])
}

/// Parses several files as one configuration: the main file first, then
/// the conf.d files in the order given (later files add entries and
/// override keywords of earlier ones). Every file's diagnostics are
/// reported; any error fails the whole.
pub fn parse_files(files: &[(&str, &str)]) -> Result<Config, ConfigError> {
    parse_files_with(files, Vec::new(), None)
}

fn parse_files_with(
    files: &[(&str, &str)],
    mut pre: Vec<Diagnostic>,
    base: Option<&Path>,
) -> Result<Config, ConfigError> {
    let mut diags = Diags::new();
    let mut docs = Vec::with_capacity(files.len());
    for (name, text) in files {
        if text.len() as u64 > MAX_FILE_SIZE {
            pre.extend(too_large(name, text.len() as u64).diagnostics);
            continue;
        }
        let file: Arc<str> = Arc::from(*name);
        docs.push(parse::parse_into(text, &file, &mut diags));
        if diags.full() {
            break;
        }
    }
    for d in pre {
        diags.push(d);
    }
    let mut cfg = build::build(&docs, &mut diags);
    derive_paths(&mut cfg, base);
    let failed = diags.has_errors();
    let mut all = diags.into_vec();
    // By file (in reading order), then line; file-level notes (line 0)
    // last within their file.
    let order: Vec<String> = files.iter().map(|(n, _)| n.to_string()).collect();
    all.sort_by_key(|d| {
        (
            order
                .iter()
                .position(|f| *f == d.file)
                .unwrap_or(usize::MAX),
            if d.line == 0 { u32::MAX } else { d.line },
        )
    });
    if failed {
        return Err(ConfigError { diagnostics: all });
    }
    cfg.warnings = all;
    Ok(cfg)
}

/// Reads one file as text. A missing or unreadable file is an error
/// naming the file and the OS reason; so is a file larger than
/// [`MAX_FILE_SIZE`]. Bytes that are not UTF-8 are replaced (they can
/// only matter inside comments or quoted values).
fn read_text(path: &Path) -> Result<String, ConfigError> {
    let name = path.display().to_string();
    let cannot = |e: std::io::Error| ConfigError::single(&name, format!("cannot read: {e}"));
    // Checked before opening: opening a FIFO would block.
    let meta = std::fs::metadata(path).map_err(cannot)?;
    if meta.is_dir() {
        return Err(ConfigError::single(
            &name,
            "cannot read: is a directory".into(),
        ));
    }
    if !meta.is_file() {
        return Err(ConfigError::single(
            &name,
            "cannot read: not a regular file".into(),
        ));
    }
    let file = std::fs::File::open(path).map_err(cannot)?;
    if meta.len() > MAX_FILE_SIZE {
        return Err(too_large(&name, meta.len()));
    }
    let mut buf = Vec::new();
    file.take(MAX_FILE_SIZE + 1)
        .read_to_end(&mut buf)
        .map_err(cannot)?;
    if buf.len() as u64 > MAX_FILE_SIZE {
        return Err(too_large(&name, buf.len() as u64));
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// The conf.d directory that goes with the main file `path` when
/// `config_dir` is not set: `multipath/conf.d` next to it, which for
/// `/etc/multipath.conf` is multipath-tools' `/etc/multipath/conf.d`.
pub fn default_config_dir(path: &Path) -> PathBuf {
    path.parent()
        .unwrap_or(Path::new("/"))
        .join("multipath/conf.d")
}

/// The bindings file that goes with the main file `path` when
/// `bindings_file` is not set: `multipath/bindings` next to it
/// (`/etc/multipath/bindings` for `/etc/multipath.conf`).
pub fn default_bindings_file(path: &Path) -> PathBuf {
    path.parent()
        .unwrap_or(Path::new("/"))
        .join("multipath/bindings")
}

/// The last `config_dir` set in a `defaults` section of `doc`.
fn config_dir_of(doc: &parse::Document) -> Option<String> {
    let mut found = None;
    for item in &doc.items {
        if let parse::Item::Block(b) = item {
            if b.name == "defaults" {
                for i in &b.items {
                    if let parse::Item::Attr(a) = i {
                        if a.key == "config_dir" {
                            found = Some(a.value.text.clone());
                        }
                    }
                }
            }
        }
    }
    found
}

/// The `*.conf` files of `dir` in alphabetical (byte) order, as
/// multipath-tools reads them. A missing directory has none.
pub fn conf_d_files(dir: &Path) -> Result<Vec<PathBuf>, std::io::Error> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names: Vec<std::ffi::OsString> = Vec::new();
    for entry in rd {
        let entry = entry?;
        let name = entry.file_name();
        let is_conf = name
            .to_str()
            .and_then(|n| n.rfind('.').map(|i| &n[i..] == ".conf"))
            .unwrap_or(false);
        if is_conf && !entry.path().is_dir() {
            names.push(name);
        }
    }
    names.sort_by(|a, b| a.as_encoded_bytes().cmp(b.as_encoded_bytes()));
    Ok(names.into_iter().map(|n| dir.join(n)).collect())
}

/// Reads and parses a configuration file and its conf.d directory
/// (`config_dir`, by default [`default_config_dir`]): every `*.conf`
/// file there, in alphabetical order, after the main file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_main(path, read_text(path)?)
}

/// Like [`load`], but a main file that does not exist counts as empty (as
/// multipath-tools treats a missing /etc/multipath.conf): built-in values
/// plus the conf.d files.
pub fn load_or_empty(path: &Path) -> Result<Config, ConfigError> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => load_main(path, String::new()),
        _ => load(path),
    }
}

fn load_main(path: &Path, main: String) -> Result<Config, ConfigError> {
    let name = path.display().to_string();
    let (doc, _) = parse::parse(&main, &name);
    let dir = config_dir_of(&doc).map_or_else(|| default_config_dir(path), PathBuf::from);
    let mut pre = Vec::new();
    let mut texts: Vec<(String, String)> = vec![(name.clone(), main)];
    if dir.is_absolute() {
        match conf_d_files(&dir) {
            Ok(files) => {
                for f in files {
                    let text = read_text(&f)?;
                    texts.push((f.display().to_string(), text));
                }
            }
            Err(e) => pre.push(Diagnostic {
                file: dir.display().to_string(),
                line: 0,
                severity: Severity::Warning,
                message: format!("cannot read configuration directory: {e}; skipped"),
            }),
        }
    } else {
        pre.push(Diagnostic {
            file: name.clone(),
            line: 0,
            severity: Severity::Warning,
            message: format!(
                "config_dir \"{}\" is not an absolute path; no conf.d files are read",
                dir.display()
            ),
        });
    }
    let refs: Vec<(&str, &str)> = texts
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    let mut cfg = parse_files_with(&refs, pre, Some(path))?;
    cfg.config_dir = dir;
    Ok(cfg)
}

/// Fills `config_dir` and `bindings_file` from the keywords, else from
/// the main file's location (`base`), else multipath-tools' defaults.
fn derive_paths(cfg: &mut Config, base: Option<&Path>) {
    let set = |k: &str| cfg.defaults.get(k).map(|a| PathBuf::from(a.text.as_str()));
    cfg.config_dir = set("config_dir")
        .or_else(|| base.map(default_config_dir))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_DIR));
    cfg.bindings_file = set("bindings_file")
        .or_else(|| base.map(default_bindings_file))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_BINDINGS_FILE));
}

impl Config {
    /// See [`load`].
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        load(path)
    }

    /// See [`parse_str`].
    pub fn parse_str(text: &str, file_name: &str) -> Result<Config, ConfigError> {
        parse_str(text, file_name)
    }
}

#[cfg(test)]
mod tests;
