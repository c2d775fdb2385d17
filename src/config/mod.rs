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

mod build;
pub mod diag;
pub mod hwtable;
pub mod keywords;
pub mod parse;
pub mod paths;
pub mod propsel;
pub mod sections;

use std::fmt;
use std::io::Read;
use std::path::Path;
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
}

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
/// origins.
pub fn parse_str(text: &str, file_name: &str) -> Result<Config, ConfigError> {
    if text.len() as u64 > MAX_FILE_SIZE {
        return Err(too_large(file_name, text.len() as u64));
    }
    let file: Arc<str> = Arc::from(file_name);
    let mut diags = Diags::new();
    let doc = parse::parse_into(text, &file, &mut diags);
    let mut cfg = build::build(&doc, &mut diags);
    let failed = diags.has_errors();
    let mut all = diags.into_vec();
    // By line; file-level notes (line 0, e.g. "N more warnings") last.
    all.sort_by_key(|d| if d.line == 0 { u32::MAX } else { d.line });
    if failed {
        return Err(ConfigError { diagnostics: all });
    }
    cfg.warnings = all;
    Ok(cfg)
}

/// Reads and parses a configuration file. A missing or unreadable file is
/// an error naming the file and the OS reason; so is a file larger than
/// [`MAX_FILE_SIZE`]. Bytes that are not UTF-8 are replaced (they can
/// only matter inside comments or quoted values).
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let name = path.display().to_string();
    let cannot = |e: std::io::Error| ConfigError::single(&name, format!("cannot read: {e}"));
    let file = std::fs::File::open(path).map_err(cannot)?;
    let meta = file.metadata().map_err(cannot)?;
    if meta.is_dir() {
        return Err(ConfigError::single(
            &name,
            "cannot read: is a directory".into(),
        ));
    }
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
    let text = String::from_utf8_lossy(&buf);
    parse_str(&text, &name)
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
        }
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
