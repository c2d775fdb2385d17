//! The [`Config`] type: what a loaded configuration holds, and its plain
//! accessors. Building one is [`super::build`]'s job (reached through
//! [`super::load`]); property selection and rendering add their methods in
//! [`super::propsel`] and [`super::render`], which depend on this module
//! and not the reverse.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::defaults::{self, DEFAULT_BINDINGS_FILE, DEFAULT_CONFIG_DIR};
use super::diag::Diagnostic;
use super::hwtable;
use super::keywords::{Assignment, Typed};
use super::paths::PathDecl;
use super::sections::{AttrMap, Blacklist, DeviceEntry, MultipathEntry, ProtocolEntry};

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

impl Default for Config {
    /// The configuration of an empty file: built-in values only.
    fn default() -> Self {
        let mut cfg = Config::empty(Arc::from("(none)"));
        cfg.polling_interval = defaults::POLLING_INTERVAL;
        cfg.max_polling_interval = 4 * defaults::POLLING_INTERVAL;
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
            polling_interval: defaults::POLLING_INTERVAL,
            max_polling_interval: 4 * defaults::POLLING_INTERVAL,
            folded_builtins: Vec::new(),
            files: Vec::new(),
            config_dir: PathBuf::from(DEFAULT_CONFIG_DIR),
            bindings_file: PathBuf::from(DEFAULT_BINDINGS_FILE),
        }
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

    /// `umpath_metrics_listen` (`defaults` only): where to serve
    /// Prometheus metrics, if set.
    pub fn metrics_listen(&self) -> Option<&str> {
        match self.defaults.get("umpath_metrics_listen") {
            Some(Assignment {
                value: Typed::Str(v),
                ..
            }) => Some(v.as_str()),
            _ => None,
        }
    }

    /// A umpath number in `defaults` (the NBD limits), or `default`.
    pub fn defaults_uint(&self, keyword: &str, default: u32) -> u32 {
        match self.defaults.get(keyword) {
            Some(Assignment {
                value: Typed::UInt(v),
                ..
            }) => *v,
            _ => default,
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

    /// `umpath_admin_group`: the group (name or gid) whose members may
    /// change things through the control socket.
    pub fn admin_group(&self) -> Option<&str> {
        self.defaults_str("umpath_admin_group")
    }

    /// `umpath_nbd_group`: the group (name or gid) whose members may open
    /// NBD sessions on the Unix socket (default: the admin group).
    pub fn nbd_group(&self) -> Option<&str> {
        self.defaults_str("umpath_nbd_group")
    }

    /// The kernel NBD device a map asks for: its multipaths entry's
    /// `nbd_device`, else `umpath_nbd_device` in defaults (default no).
    pub fn nbd_device(&self, wwid: &str) -> NbdDevice {
        let entry = self
            .multipaths
            .iter()
            .rev()
            .find(|m| m.wwid == wwid)
            .and_then(|m| m.attrs.get("nbd_device"));
        match entry.or_else(|| self.defaults.get("umpath_nbd_device")) {
            Some(Assignment {
                value: Typed::UInt(n),
                ..
            }) => NbdDevice::Index(*n),
            Some(Assignment {
                value: Typed::Word(w),
                ..
            }) if w == "auto" => NbdDevice::Auto,
            _ => NbdDevice::No,
        }
    }

    /// `umpath_nbd_connections` (default 1; 0: one per CPU).
    pub fn nbd_connections(&self) -> u32 {
        self.defaults_uint("umpath_nbd_connections", 1)
    }

    /// `umpath_nbd_dead_conn_timeout` in seconds (default 60).
    pub fn nbd_dead_conn_timeout(&self) -> u32 {
        self.defaults_uint("umpath_nbd_dead_conn_timeout", 60)
    }

    /// `umpath_nbd_timeout` in seconds (default 0: the kernel's default).
    pub fn nbd_timeout(&self) -> u32 {
        self.defaults_uint("umpath_nbd_timeout", 0)
    }

    /// `auto_resize` (`defaults` only; default never): whether a size
    /// change every usable path reports resizes the map by itself.
    pub fn auto_resize(&self) -> AutoResize {
        match self.defaults.get("auto_resize") {
            Some(Assignment {
                value: Typed::Word(w),
                ..
            }) => match w.as_str() {
                "grow_only" => AutoResize::GrowOnly,
                "grow_shrink" => AutoResize::GrowShrink,
                _ => AutoResize::Never,
            },
            _ => AutoResize::Never,
        }
    }

    fn defaults_str(&self, key: &str) -> Option<&str> {
        match self.defaults.get(key) {
            Some(Assignment {
                value: Typed::Str(v),
                ..
            }) => Some(v.as_str()),
            _ => None,
        }
    }

    /// `umpath_scsi_discovery` (default no): SCSI disks found in sysfs
    /// are paths, as with `umpath daemon --scsi`.
    pub fn scsi_discovery(&self) -> bool {
        matches!(
            self.defaults.get("umpath_scsi_discovery"),
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
            _ => defaults::VERBOSITY,
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

/// `auto_resize`: which size changes the paths report resize a map
/// without an operator's `resize map`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AutoResize {
    /// Only `resize map` resizes.
    #[default]
    Never,
    /// A larger size is applied, a smaller one is not.
    GrowOnly,
    /// Any new size is applied.
    GrowShrink,
}

impl AutoResize {
    /// Whether a map of `current` bytes is resized to `new` by itself.
    pub fn allows(self, current: u64, new: u64) -> bool {
        match self {
            AutoResize::Never => false,
            AutoResize::GrowOnly => new > current,
            AutoResize::GrowShrink => new != current,
        }
    }
}

/// Whether and where a map gets a kernel NBD device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NbdDevice {
    No,
    /// The first free /dev/nbdN.
    Auto,
    /// /dev/nbdN.
    Index(u32),
}
