//! SCSI disk discovery from sysfs (edge: reads files; SG_IO only as a
//! fallback for VPD pages sysfs does not show).
//!
//! For every `<sysfs>/class/scsi_device/H:C:T:L` whose `device/block/`
//! names a block device, [`discover`] reads the INQUIRY identity
//! (`vendor`, `model`, `rev`, and the raw `inquiry` data when the kernel
//! has it), `state`, `timeout`, `type`, the block device's `dev`, `size`
//! and `queue/logical_block_size`, and computes the WWID the way
//! `scsi_id` does ([`crate::scsi::wwid`]) from the `vpd_pg83` /
//! `vpd_pg80` binary attributes, else (optionally) from INQUIRY EVPD sent
//! over SG_IO. It also reads what grouping needs: the target port group
//! (the VPD page 0x83 designator), the LUN's TPGS field (raw INQUIRY) and
//! the target's node name as multipathd finds it ([`target_node_name`]).
//!
//! The sysfs root and the device directory are parameters, so tests run
//! on fake trees. A device whose attributes vanish while it is read (it
//! was removed) or hold garbage is reported as a [`DiscoveryError`] for
//! that device; the others are still discovered. Nothing here panics on
//! what sysfs holds.

pub mod callout;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::scsi::inquiry::{StdInquiry, Tpgs};
use crate::scsi::vpd;
use crate::scsi::wwid::{self, Wwid};
use crate::transport::ScsiTarget;

/// Where to look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoverOptions {
    /// Usually `/sys`.
    pub sysfs: PathBuf,
    /// Usually `/dev`: device nodes are `<dev_dir>/<kernel name>`.
    pub dev_dir: PathBuf,
    /// Ask the device (SG_IO INQUIRY EVPD) for VPD pages sysfs lacks.
    pub sgio_fallback: bool,
}

impl Default for DiscoverOptions {
    fn default() -> Self {
        DiscoverOptions {
            sysfs: PathBuf::from("/sys"),
            dev_dir: PathBuf::from("/dev"),
            sgio_fallback: true,
        }
    }
}

impl DiscoverOptions {
    /// Options for a sysfs root (device nodes in `/dev`, SG_IO fallback
    /// only for the real `/sys`).
    pub fn for_sysfs(sysfs: impl Into<PathBuf>) -> Self {
        let sysfs = sysfs.into();
        DiscoverOptions {
            sgio_fallback: sysfs == Path::new("/sys"),
            sysfs,
            dev_dir: PathBuf::from("/dev"),
        }
    }
}

/// One SCSI disk (one path, in multipath terms).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScsiDevice {
    /// The kernel name of the block device, e.g. `sdb`.
    pub name: String,
    /// `H:C:T:L`.
    pub hctl: String,
    pub devnode: PathBuf,
    /// `major:minor` of the block device ("" if unknown).
    pub dev: String,
    pub vendor: String,
    pub product: String,
    pub revision: String,
    /// Peripheral device type (0 = disk).
    pub device_type: u8,
    /// The SCSI device state (`running`, `offline`, `blocked`, ...; "" if
    /// unknown).
    pub state: String,
    /// The SCSI command timeout (sysfs `timeout`, seconds).
    pub timeout_secs: Option<u32>,
    pub size_bytes: Option<u64>,
    pub logical_block_size: Option<u32>,
    /// The unit serial number (VPD page 0x80), "" if unknown.
    pub serial: String,
    /// The WWID, "" if none could be found (see `wwid_error`).
    pub wwid: String,
    /// Where the WWID came from (e.g. "VPD 0x83 NAA 5").
    pub wwid_source: String,
    /// Why there is no WWID.
    pub wwid_error: Option<String>,
    /// The path's target port group (VPD page 0x83), if the page names
    /// one.
    pub tpg: Option<u16>,
    /// The LUN's target port group support (INQUIRY TPGS), `None` when
    /// the raw INQUIRY data could not be read.
    #[serde(skip)]
    pub tpgs: Option<Tpgs>,
    /// The kernel's `access_state` attribute of the device can be read
    /// (the kernel's ALUA device handler is attached).
    #[serde(skip)]
    pub sysfs_access_state: bool,
    /// The target's name ([`target_node_name`]): SAS address, FC node
    /// name or iSCSI target name.
    pub node_name: Option<String>,
    /// An FC path's port names ([`fc_port_names`]), what
    /// `weightedpath wwn` matches.
    pub wwn: Option<String>,
}

impl ScsiDevice {
    /// What the SCSI transport needs to know.
    pub fn target(&self) -> ScsiTarget {
        ScsiTarget {
            devnode: self.devnode.clone(),
            hctl: self.hctl.clone(),
            block_size: self.logical_block_size,
            timeout: self.timeout_secs.map(|s| Duration::from_secs(u64::from(s))),
        }
    }

    /// The identity used for property selection and blacklisting.
    pub fn identity(&self) -> crate::config::PathIdentity<'_> {
        crate::config::PathIdentity {
            vendor: &self.vendor,
            product: &self.product,
            revision: &self.revision,
            wwid: &self.wwid,
        }
    }

    /// What `detect_prio` looks at ([`crate::prio::detect`]). umpath
    /// does not read VPD page 0xc9, so an RDAC array is not recognised
    /// (it then gets `sysfs` rather than `alua` when `access_state` is
    /// readable).
    pub fn detect_facts(&self) -> crate::prio::DetectFacts {
        crate::prio::DetectFacts {
            scsi: true,
            tpgs: self.tpgs,
            rdac: false,
            sysfs_access_state: self.sysfs_access_state,
        }
    }

    /// True if the kernel says the device can take commands.
    pub fn is_running(&self) -> bool {
        self.state.is_empty() || self.state == "running"
    }
}

/// A device that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
pub struct DiscoveryError {
    /// `H:C:T:L` (or the block device name).
    pub device: String,
    /// The file that could not be read.
    pub path: PathBuf,
    pub why: String,
}

impl fmt::Display for DiscoveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SCSI device {}: {}: {}",
            self.device,
            self.path.display(),
            self.why
        )
    }
}

/// What [`discover`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Discovery {
    /// Sorted by H:C:T:L.
    pub devices: Vec<ScsiDevice>,
    pub errors: Vec<DiscoveryError>,
}

/// `H:C:T:L` as numbers, for sorting (None if it is not one).
pub fn parse_hctl(s: &str) -> Option<[u64; 4]> {
    let mut out = [0u64; 4];
    let mut it = s.split(':');
    for v in &mut out {
        *v = it.next()?.parse().ok()?;
    }
    it.next().is_none().then_some(out)
}

fn err(device: &str, path: &Path, why: impl Into<String>) -> DiscoveryError {
    DiscoveryError {
        device: device.to_string(),
        path: path.to_path_buf(),
        why: why.into(),
    }
}

fn io_why(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => format!("vanished (device removed?): {e}"),
        _ => e.to_string(),
    }
}

/// A text attribute, trailing newline removed. Missing: `Ok(None)`.
fn text_opt(device: &str, path: &Path) -> Result<Option<String>, DiscoveryError> {
    match std::fs::read(path) {
        Ok(b) => {
            let s = String::from_utf8_lossy(&b);
            Ok(Some(s.trim_end_matches(['\n', '\r']).to_string()))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(err(device, path, io_why(&e))),
    }
}

/// A text attribute that must be there.
fn text(device: &str, path: &Path) -> Result<String, DiscoveryError> {
    match std::fs::read(path) {
        Ok(b) => Ok(String::from_utf8_lossy(&b)
            .trim_end_matches(['\n', '\r'])
            .to_string()),
        Err(e) => Err(err(device, path, io_why(&e))),
    }
}

/// A numeric attribute; missing is `None`, garbage is an error.
fn number<T: std::str::FromStr>(device: &str, path: &Path) -> Result<Option<T>, DiscoveryError> {
    match text_opt(device, path)? {
        None => Ok(None),
        Some(s) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| err(device, path, format!("not a number: {s:?}"))),
    }
}

/// A binary attribute (VPD page, INQUIRY data). Missing, empty or
/// unreadable because the device has no such page (ENXIO, EINVAL, EIO):
/// `None`.
fn binary_opt(path: &Path) -> Option<Vec<u8>> {
    match std::fs::read(path) {
        Ok(b) if !b.is_empty() => Some(b),
        _ => None,
    }
}

/// Discovers every SCSI device with a block device under `opts.sysfs`.
/// No `class/scsi_device` directory means no devices (no SCSI at all).
pub fn discover(opts: &DiscoverOptions) -> Discovery {
    let class = opts.sysfs.join("class/scsi_device");
    let mut out = Discovery::default();
    let entries = match std::fs::read_dir(&class) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return out,
        Err(e) => {
            out.errors.push(err("*", &class, e.to_string()));
            return out;
        }
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort_by_key(|n| (parse_hctl(n).unwrap_or([u64::MAX; 4]), n.clone()));
    for hctl in names {
        let dir = class.join(&hctl).join("device");
        match read_device(opts, &hctl, &dir) {
            Ok(Some(d)) => out.devices.push(d),
            Ok(None) => {}
            Err(e) => out.errors.push(e),
        }
    }
    out
}

/// Reads the block device `name` (e.g. `sdb`) through
/// `<sysfs>/block/<name>/device`, e.g. after a hotplug event. `Ok(None)`:
/// not a SCSI device.
pub fn discover_block(
    opts: &DiscoverOptions,
    name: &str,
) -> Result<Option<ScsiDevice>, DiscoveryError> {
    let link = opts.sysfs.join("block").join(name).join("device");
    let dir = match std::fs::canonicalize(&link) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(name, &link, io_why(&e))),
    };
    let hctl = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if parse_hctl(&hctl).is_none() {
        return Ok(None);
    }
    read_device(opts, &hctl, &dir)
}

/// Reads one SCSI device directory. `Ok(None)`: it has no block device
/// (an enclosure, a tape, ...).
pub fn read_device(
    opts: &DiscoverOptions,
    hctl: &str,
    dir: &Path,
) -> Result<Option<ScsiDevice>, DiscoveryError> {
    if !dir.is_dir() {
        return Err(err(hctl, dir, "vanished (device removed?)"));
    }
    let block_dir = dir.join("block");
    let name = match std::fs::read_dir(&block_dir) {
        Ok(entries) => {
            let mut names: Vec<String> = entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            match names.into_iter().next() {
                Some(n) => n,
                None => return Ok(None),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(hctl, &block_dir, e.to_string())),
    };
    let bdev = block_dir.join(&name);

    let vendor_s = text(hctl, &dir.join("vendor"))?;
    let model_s = text(hctl, &dir.join("model"))?;
    let rev_s = text(hctl, &dir.join("rev"))?;
    let device_type: u8 = number(hctl, &dir.join("type"))?.unwrap_or(0);
    let state = text_opt(hctl, &dir.join("state"))?.unwrap_or_default();
    let timeout_secs = number(hctl, &dir.join("timeout"))?;
    let dev = text_opt(hctl, &bdev.join("dev"))?.unwrap_or_default();
    let size_bytes = number::<u64>(hctl, &bdev.join("size"))?.map(|s| s.saturating_mul(512));
    let logical_block_size = number(hctl, &bdev.join("queue/logical_block_size"))?;

    // The raw INQUIRY data keeps the fields exactly as sent (NULs
    // included), which is what scsi_id builds its identifiers from.
    let raw_inq = binary_opt(&dir.join("inquiry")).and_then(|b| StdInquiry::parse(&b).ok());
    let tpgs = raw_inq.as_ref().map(StdInquiry::alua_support);
    let inq = raw_inq.unwrap_or_else(|| StdInquiry::from_strings(&vendor_s, &model_s, &rev_s));
    let devnode = opts.dev_dir.join(&name);

    let mut pg83 = binary_opt(&dir.join("vpd_pg83"));
    let mut pg80 = binary_opt(&dir.join("vpd_pg80"));
    let mut fallback_note = None;
    if pg83.is_none() && pg80.is_none() && opts.sgio_fallback {
        match vpd_over_sgio(&devnode) {
            Ok((p83, p80)) => {
                pg83 = p83;
                pg80 = p80;
            }
            Err(e) => fallback_note = Some(e),
        }
    }
    // A malformed page has no group to give (the WWID code says why).
    let tpg = pg83
        .as_deref()
        .and_then(|p| vpd::target_port_group(p).ok().flatten());
    let node_name = target_node_name(&opts.sysfs, hctl, dir);
    let wwn = fc_port_names(&opts.sysfs, hctl);
    let sysfs_access_state = std::fs::read_to_string(dir.join("access_state")).is_ok();
    let serial = pg80
        .as_deref()
        .and_then(|p| vpd::unit_serial(p).ok())
        .unwrap_or_default();
    let (wwid, wwid_source, wwid_error) =
        match wwid::scsi_id(&inq, pg83.as_deref(), pg80.as_deref()) {
            Ok(Wwid { id, source }) => (id, source.to_string(), None),
            Err(e) => {
                let mut why = e.to_string();
                if let Some(n) = fallback_note {
                    why.push_str(&format!("; SG_IO: {n}"));
                }
                (String::new(), String::new(), Some(why))
            }
        };

    // Reading many files is not atomic: if the device went away meanwhile,
    // say so rather than report a half-read device.
    if !dir.join("vendor").exists() {
        return Err(err(
            hctl,
            dir,
            "vanished while being read (device removed?)",
        ));
    }

    Ok(Some(ScsiDevice {
        name,
        hctl: hctl.to_string(),
        devnode,
        dev,
        vendor: inq.vendor,
        product: inq.product,
        revision: inq.revision,
        device_type,
        state,
        timeout_secs,
        size_bytes,
        logical_block_size,
        serial,
        wwid,
        wwid_source,
        wwid_error,
        tpg,
        tpgs,
        sysfs_access_state,
        node_name,
        wwn,
    }))
}

/// The first line of a sysfs attribute, trimmed; `None` if it cannot be
/// read or is empty.
fn attr(path: &Path) -> Option<String> {
    let s = std::fs::read_to_string(path).ok()?;
    let s = s.lines().next().unwrap_or("").trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// The name of the target a SCSI device `hctl` (sysfs directory `dir`)
/// belongs to, looked for as multipathd does, in this order:
///
/// * SAS: a parent directory `end_device-*` names the device whose
///   `<sysfs>/class/sas_device/<name>/sas_address` is the name;
/// * Fibre Channel: `<sysfs>/class/fc_transport/targetH:C:T/node_name`;
/// * iSCSI: a parent directory `sessionN` names the session whose
///   `<sysfs>/class/iscsi_session/sessionN/targetname` is the name.
///
/// `None` for other transports (and when nothing can be read).
pub fn target_node_name(sysfs: &Path, hctl: &str, dir: &Path) -> Option<String> {
    let real = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let parents: Vec<String> = real
        .ancestors()
        .skip(1)
        .filter_map(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    if let Some(end) = parents.iter().find(|n| n.starts_with("end_device-")) {
        if let Some(a) = attr(&sysfs.join("class/sas_device").join(end).join("sas_address")) {
            return Some(a);
        }
    }
    if let Some([h, c, t, _]) = parse_hctl(hctl) {
        let target = format!("target{h}:{c}:{t}");
        if let Some(n) = attr(
            &sysfs
                .join("class/fc_transport")
                .join(target)
                .join("node_name"),
        ) {
            return Some(n);
        }
    }
    let session = parents.iter().find(|n| {
        n.strip_prefix("session")
            .is_some_and(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()))
    })?;
    attr(
        &sysfs
            .join("class/iscsi_session")
            .join(session)
            .join("targetname"),
    )
}

/// An FC path's port names as multipath-tools' `weightedpath wwn` matches
/// them: `host_wwnn:host_wwpn:target_wwnn:target_wwpn`, from
/// `/sys/class/fc_host/hostH/{node_name,port_name}` and
/// `/sys/class/fc_transport/targetH:C:T/{node_name,port_name}`. `None` for
/// a path that is not on an FC host.
pub fn fc_port_names(sysfs: &Path, hctl: &str) -> Option<String> {
    let [h, c, t, _] = parse_hctl(hctl)?;
    let host = sysfs.join("class/fc_host").join(format!("host{h}"));
    let target = sysfs
        .join("class/fc_transport")
        .join(format!("target{h}:{c}:{t}"));
    Some(format!(
        "{}:{}:{}:{}",
        attr(&host.join("node_name"))?,
        attr(&host.join("port_name"))?,
        attr(&target.join("node_name"))?,
        attr(&target.join("port_name"))?
    ))
}

/// Pages 0x83 and 0x80, each if the device has it.
type VpdPages = (Option<Vec<u8>>, Option<Vec<u8>>);

/// VPD pages 0x83 and 0x80 over SG_IO, as page 0x00 lists them.
fn vpd_over_sgio(devnode: &Path) -> Result<VpdPages, String> {
    use crate::transport::scsi::sgio;
    let t = Duration::from_secs(5);
    let name = devnode.display().to_string();
    let f = sgio::open_for_commands(devnode).map_err(|e| format!("cannot open {name}: {e}"))?;
    let p0 = sgio::inquiry(&f, &name, Some(vpd::PAGE_SUPPORTED), t).map_err(|e| e.to_string())?;
    let pages = vpd::supported_pages(&p0).map_err(|e| e.to_string())?;
    let get = |p: u8| {
        pages
            .contains(&p)
            .then(|| sgio::inquiry(&f, &name, Some(p), t).ok())
            .flatten()
    };
    Ok((get(vpd::PAGE_DEVICE_ID), get(vpd::PAGE_UNIT_SERIAL)))
}

/// Applies each device's `getuid_callout`, if its settings have one:
/// scsi_id callouts keep the computed WWID (the same identifier), others
/// run and their output becomes the WWID; a failing callout leaves the
/// device without a WWID and says why (so it is not used).
pub fn apply_callouts(cfg: &crate::config::Config, devices: &mut [ScsiDevice]) {
    for d in devices.iter_mut() {
        let Some(g) = cfg.resolve(&d.identity()).getuid_callout else {
            continue;
        };
        match callout::run(&g.value, &d.name, callout::CALLOUT_TIMEOUT) {
            Ok(None) => {
                d.wwid_source = format!(
                    "{} (getuid_callout names scsi_id: same identifier, not run)",
                    d.wwid_source
                )
            }
            Ok(Some(id)) => {
                d.wwid = id;
                d.wwid_source = format!("getuid_callout {:?}", g.value);
            }
            Err(e) => {
                d.wwid.clear();
                d.wwid_error = Some(e);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
