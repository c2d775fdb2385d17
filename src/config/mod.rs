//! multipath.conf: parsing, the built-in hardware table and property
//! selection (with the origin of every value). Pure: reading the file is
//! the only IO, and it happens in [`load`] / [`Config::load`].
//!
//! * [`parse`]: lexer and parser to a syntax tree with spans, and a
//!   printer.
//! * [`keywords`]: the table of keywords (sections, value checks,
//!   defaults, effect in umpath).
//! * `build` (private): syntax tree to typed [`Config`], with diagnostics.
//! * [`hwtable`]: built-in device entries and blacklist.
//! * [`propsel`]: property selection for a path ([`Config::resolve`]) and
//!   blacklisting ([`Config::blacklisted`]).
//! * [`paths`]: umpath's own `paths` section ([`PathDecl`]).
//!
//! Errors (syntax, invalid values, invalid paths) make loading fail with a
//! [`ConfigError`] carrying every diagnostic; warnings (unknown keywords,
//! duplicates, keywords without effect, ...) are kept in
//! [`Config::warnings`] for the daemon to log.

pub mod bindings;
mod build;
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

pub use diag::{Diagnostic, Severity, Span};
pub use keywords::{Assignment, Pattern, Section, Typed};
pub use paths::PathDecl;
pub use propsel::{Origin, PathIdentity, PathSettings, Setting};
pub use sections::{
    AttrMap, Blacklist, BlacklistDevice, BlacklistEntry, DeviceEntry, MultipathEntry, ProtocolEntry,
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

/// A loaded configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) file: Arc<str>,
    pub(crate) defaults: AttrMap,
    pub(crate) overrides: AttrMap,
    pub(crate) protocols: Vec<ProtocolEntry>,
    /// The user's device entries (merged), in file order.
    pub(crate) devices: Vec<DeviceEntry>,
    pub(crate) multipaths: Vec<MultipathEntry>,
    pub(crate) blacklist: Blacklist,
    pub(crate) blacklist_exceptions: Blacklist,
    pub(crate) paths: Vec<PathDecl>,
    pub(crate) warnings: Vec<Diagnostic>,
    pub(crate) polling_interval: u32,
    pub(crate) max_polling_interval: u32,
    /// Indices into [`hwtable::builtin_devices`] of built-in entries that
    /// were merged into a user entry with identical strings.
    pub(crate) folded_builtins: Vec<usize>,
    /// The files read, main file first, then the conf.d files in order.
    pub(crate) files: Vec<String>,
    /// The conf.d directory (read or to be read).
    pub(crate) config_dir: PathBuf,
    /// Where user_friendly_names bindings are kept.
    pub(crate) bindings_file: PathBuf,
}

/// multipath-tools' main configuration file.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/multipath.conf";
/// multipath-tools' conf.d directory.
pub const DEFAULT_CONFIG_DIR: &str = "/etc/multipath/conf.d";
/// multipath-tools' bindings file.
pub const DEFAULT_BINDINGS_FILE: &str = "/etc/multipath/bindings";

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
    cfg.derive_paths(base);
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

impl Default for Config {
    /// The configuration of an empty file: built-in values only.
    fn default() -> Self {
        let mut cfg = Config::empty(Arc::from("(none)"));
        cfg.polling_interval = propsel::defaults::POLLING_INTERVAL;
        cfg.max_polling_interval = 4 * propsel::defaults::POLLING_INTERVAL;
        cfg
    }
}

impl Config {
    pub(crate) fn empty(file: Arc<str>) -> Self {
        Config {
            file,
            defaults: AttrMap::new(),
            overrides: AttrMap::new(),
            protocols: Vec::new(),
            devices: Vec::new(),
            multipaths: Vec::new(),
            blacklist: Blacklist::default(),
            blacklist_exceptions: Blacklist::default(),
            paths: Vec::new(),
            warnings: Vec::new(),
            polling_interval: propsel::defaults::POLLING_INTERVAL,
            max_polling_interval: 4 * propsel::defaults::POLLING_INTERVAL,
            folded_builtins: Vec::new(),
            files: Vec::new(),
            config_dir: PathBuf::from(DEFAULT_CONFIG_DIR),
            bindings_file: PathBuf::from(DEFAULT_BINDINGS_FILE),
        }
    }

    /// Fills `config_dir` and `bindings_file` from the keywords, else from
    /// the main file's location (`base`), else multipath-tools' defaults.
    fn derive_paths(&mut self, base: Option<&Path>) {
        let set = |k: &str| self.defaults.get(k).map(|a| PathBuf::from(a.text.as_str()));
        self.config_dir = set("config_dir")
            .or_else(|| base.map(default_config_dir))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_DIR));
        self.bindings_file = set("bindings_file")
            .or_else(|| base.map(default_bindings_file))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_BINDINGS_FILE));
    }

    /// Every file read, main file first, then conf.d files in order.
    pub fn files(&self) -> &[String] {
        &self.files
    }

    /// The conf.d directory (`config_dir`).
    pub fn config_dir(&self) -> &Path {
        &self.config_dir
    }

    /// The user_friendly_names bindings file (`bindings_file`).
    pub fn bindings_file(&self) -> &Path {
        &self.bindings_file
    }

    /// The device entries in multipath-tools' table order: the built-in
    /// entries (without those merged into a user entry), then the user's
    /// (merged) entries. Later entries take precedence.
    pub fn hwtable(&self) -> impl DoubleEndedIterator<Item = &DeviceEntry> + '_ {
        hwtable::builtin_devices()
            .iter()
            .enumerate()
            .filter(|(i, _)| self.folded_builtins.binary_search(i).is_err())
            .map(|(_, d)| d)
            .chain(self.devices.iter())
    }

    /// See [`load`].
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        load(path)
    }

    /// See [`parse_str`].
    pub fn parse_str(text: &str, file_name: &str) -> Result<Config, ConfigError> {
        parse_str(text, file_name)
    }

    /// The file this configuration was read from.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// Seconds between path checks (default 5).
    pub fn polling_interval(&self) -> u32 {
        self.polling_interval
    }

    /// umpath's io_timeout in seconds (`defaults` only; 0: no limit;
    /// default 30, the usual SCSI command timeout).
    pub fn io_timeout(&self) -> u32 {
        match self.defaults.get("io_timeout") {
            Some(Assignment {
                value: Typed::UInt(v),
                ..
            }) => *v,
            _ => 30,
        }
    }

    /// `queue_without_daemon` (default no): keep IO held by no_path_retry
    /// queued while the daemon stops, until the stop's drain bound.
    pub fn queue_without_daemon(&self) -> bool {
        matches!(
            self.defaults.get("queue_without_daemon"),
            Some(Assignment {
                value: Typed::Bool(true),
                ..
            })
        )
    }

    /// Longest interval between checks of a healthy path (default
    /// 4 * polling_interval).
    pub fn max_polling_interval(&self) -> u32 {
        self.max_polling_interval
    }

    /// `verbosity` (0 to 6, default 2).
    pub fn verbosity(&self) -> u32 {
        match self.defaults.get("verbosity") {
            Some(Assignment {
                value: Typed::UInt(v),
                ..
            }) => *v,
            _ => propsel::defaults::VERBOSITY,
        }
    }

    /// The declared paths, in file order.
    pub fn paths(&self) -> &[PathDecl] {
        &self.paths
    }

    /// The declared path called `name`.
    pub fn path(&self, name: &str) -> Option<&PathDecl> {
        self.paths.iter().find(|p| p.name == name)
    }

    /// Warnings found while loading (errors make loading fail).
    pub fn warnings(&self) -> &[Diagnostic] {
        &self.warnings
    }

    /// The `defaults` section.
    pub fn defaults(&self) -> &AttrMap {
        &self.defaults
    }

    /// The `overrides` section (without protocol subsections).
    pub fn overrides(&self) -> &AttrMap {
        &self.overrides
    }

    /// `overrides { protocol {} }` entries.
    pub fn protocols(&self) -> &[ProtocolEntry] {
        &self.protocols
    }

    /// The user's device entries (after merging identical ones), in file
    /// order. Built-in ones: [`hwtable::builtin_devices`].
    pub fn devices(&self) -> &[DeviceEntry] {
        &self.devices
    }

    /// The `multipaths` entries (after merging), in file order.
    pub fn multipaths(&self) -> &[MultipathEntry] {
        &self.multipaths
    }

    /// The user's `blacklist` (built-in: [`hwtable::builtin_blacklist`]).
    pub fn blacklist(&self) -> &Blacklist {
        &self.blacklist
    }

    /// The user's `blacklist_exceptions`.
    pub fn blacklist_exceptions(&self) -> &Blacklist {
        &self.blacklist_exceptions
    }
}

#[cfg(test)]
mod tests;
