//! Built-in defaults (multipath-tools 0.9.x, `multipath -t`) and
//! multipath-tools' file locations. A leaf: the rest of the config module
//! reads these, they depend on nothing in it.

use crate::policy::{CheckerKind, Failback, GroupingPolicy, NoPathRetry, RrWeight, SelectorKind};

/// `path_grouping_policy`.
pub const PATH_GROUPING_POLICY: GroupingPolicy = GroupingPolicy::Failover;
/// `path_selector` (`service-time 0`).
pub const PATH_SELECTOR: SelectorKind = SelectorKind::ServiceTime;
/// `rr_min_io`.
pub const RR_MIN_IO: u32 = 1000;
/// `rr_min_io_rq`.
pub const RR_MIN_IO_RQ: u32 = 1;
/// `rr_weight`.
pub const RR_WEIGHT: RrWeight = RrWeight::Uniform;
/// `failback`.
pub const FAILBACK: Failback = Failback::Manual;
/// `path_checker`.
pub const PATH_CHECKER: CheckerKind = CheckerKind::Tur;
/// `no_path_retry` (unset: fail).
pub const NO_PATH_RETRY: NoPathRetry = NoPathRetry::Fail;
/// `prio`.
pub const PRIO: &str = "const";
/// `prio_args`.
pub const PRIO_ARGS: &str = "";
/// `detect_prio yes`.
pub const DETECT_PRIO: bool = true;
/// `detect_pgpolicy yes`.
pub const DETECT_PGPOLICY: bool = true;
/// `detect_pgpolicy_use_tpg no`.
pub const DETECT_PGPOLICY_USE_TPG: bool = false;
/// `features`.
pub const FEATURES: &str = "0";
/// `user_friendly_names`.
pub const USER_FRIENDLY_NAMES: bool = false;
/// `alias_prefix`.
pub const ALIAS_PREFIX: &str = "mpath";
/// `uid_attribute`.
pub const UID_ATTRIBUTE: &str = "ID_SERIAL";
/// `polling_interval`, seconds.
pub const POLLING_INTERVAL: u32 = 5;
/// `verbosity`.
pub const VERBOSITY: u32 = 2;

/// multipath-tools' main configuration file.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/multipath.conf";
/// multipath-tools' conf.d directory.
pub const DEFAULT_CONFIG_DIR: &str = "/etc/multipath/conf.d";
/// multipath-tools' bindings file.
pub const DEFAULT_BINDINGS_FILE: &str = "/etc/multipath/bindings";
