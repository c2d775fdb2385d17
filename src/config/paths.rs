//! umpath's own `paths` section: the paths the daemon opens itself.
//!
//! ```text
//! paths {
//!     path {
//!         name      p0
//!         transport file
//!         file      /var/lib/umpath/lun0.img
//!         vendor    "OSNEXUS"
//!         product   "QUANTASTOR"
//!         revision  "0001"
//!         wwid      "36000c29abcdef001"
//!         serial    "QS0001"
//!         direct    no
//!     }
//! }
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::diag::Span;
use super::sections::PathIdentity;

/// Transports umpath knows, with the extra keywords each one takes (kept
/// in [`PathDecl::extra`]).
///
/// `node_name` (the target's name, for `group_by_node_name`) and `tpg`
/// (the path's ALUA target port group, 0 to 65535, for `group_by_tpg`)
/// declare what a SCSI path would report. `direct yes|no` (default no)
/// opens a `file` path's IO handle with O_DIRECT.
pub const TRANSPORTS: &[(&str, &[&str])] = &[
    ("file", &["fault", "node_name", "tpg", "direct"]),
    ("nbd", &["uri", "fault", "node_name", "tpg"]),
];

/// The transport used when a path names none.
pub const DEFAULT_TRANSPORT: &str = "file";

/// The names of the known transports.
pub fn transport_names() -> Vec<&'static str> {
    TRANSPORTS.iter().map(|(n, _)| *n).collect()
}

/// One declared path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathDecl {
    /// Unique among the declared paths.
    pub name: String,
    /// One of [`TRANSPORTS`] (default [`DEFAULT_TRANSPORT`]).
    pub transport: String,
    /// The backing file (required for transport `file`).
    pub file: Option<PathBuf>,
    /// INQUIRY-style identity used for device matching ("" if absent).
    pub vendor: String,
    pub product: String,
    pub revision: String,
    /// Paths with the same WWID form one map. Required.
    pub wwid: String,
    pub serial: String,
    /// Keywords the core does not know, for transports that take more
    /// (e.g. a future `uri`): value and span.
    pub extra: BTreeMap<String, (String, Span)>,
    /// The `path {` line.
    pub span: Span,
}

impl PathDecl {
    /// The declared `node_name`, if any.
    pub fn node_name(&self) -> Option<&str> {
        self.extra.get("node_name").map(|(v, _)| v.as_str())
    }

    /// The declared `tpg`, if any and valid (the load rejects an invalid
    /// one with file:line).
    pub fn tpg(&self) -> Option<u16> {
        self.extra.get("tpg").and_then(|(v, _)| v.parse().ok())
    }

    /// `direct yes`: the path's IO bypasses the page cache (O_DIRECT).
    /// Default (absent, or `no`): buffered.
    pub fn direct(&self) -> bool {
        self.extra.get("direct").is_some_and(|(v, _)| v == "yes")
    }

    /// The identity used for property selection and blacklisting.
    pub fn identity(&self) -> PathIdentity<'_> {
        PathIdentity {
            vendor: &self.vendor,
            product: &self.product,
            revision: &self.revision,
            wwid: &self.wwid,
        }
    }
}
