use super::*;
use crate::scsi::vpd::tests::{page, pg80, qemu_pg83};
use std::fs;

/// A fake sysfs device: `class/scsi_device/<hctl>/device` with its block
/// device `<name>`.
pub(crate) struct FakeDev<'a> {
    pub hctl: &'a str,
    pub name: &'a str,
    pub vendor: &'a str,
    pub model: &'a str,
    pub pg83: Option<Vec<u8>>,
    pub pg80: Option<Vec<u8>>,
}

impl FakeDev<'_> {
    pub(crate) fn quantastor<'a>(hctl: &'a str, name: &'a str) -> FakeDev<'a> {
        FakeDev {
            hctl,
            name,
            vendor: "OSNEXUS ",
            model: "QUANTASTOR      ",
            pg83: Some(qemu_pg83()),
            pg80: Some(pg80(b"QS0001")),
        }
    }

    pub(crate) fn create(&self, root: &Path) -> PathBuf {
        let dir = root
            .join("class/scsi_device")
            .join(self.hctl)
            .join("device");
        let b = dir.join("block").join(self.name);
        fs::create_dir_all(b.join("queue")).unwrap();
        fs::write(dir.join("vendor"), format!("{}\n", self.vendor)).unwrap();
        fs::write(dir.join("model"), format!("{}\n", self.model)).unwrap();
        fs::write(dir.join("rev"), "2.5+\n").unwrap();
        // Standard INQUIRY as QEMU's scsi-hd sends it: SPC-3, TPGS 00b
        // (no ALUA), so detect_prio leaves the configured prioritizer.
        let mut inq = vec![0u8, 0, 5, 0x02, 31, 0, 0, 0x02];
        inq.extend_from_slice(format!("{:8.8}", self.vendor).as_bytes());
        inq.extend_from_slice(format!("{:16.16}", self.model).as_bytes());
        inq.extend_from_slice(b"2.5+");
        fs::write(dir.join("inquiry"), &inq).unwrap();
        fs::write(dir.join("type"), "0\n").unwrap();
        fs::write(dir.join("state"), "running\n").unwrap();
        fs::write(dir.join("timeout"), "30\n").unwrap();
        fs::write(b.join("dev"), "8:16\n").unwrap();
        fs::write(b.join("size"), "2097152\n").unwrap();
        fs::write(b.join("queue/logical_block_size"), "512\n").unwrap();
        if let Some(p) = &self.pg83 {
            fs::write(dir.join("vpd_pg83"), p).unwrap();
        }
        if let Some(p) = &self.pg80 {
            fs::write(dir.join("vpd_pg80"), p).unwrap();
        }
        dir
    }
}

fn opts(root: &Path) -> DiscoverOptions {
    DiscoverOptions {
        sysfs: root.to_path_buf(),
        dev_dir: PathBuf::from("/dev"),
        sgio_fallback: false,
    }
}

#[test]
fn two_paths_to_one_lun() {
    let root = tempfile::tempdir().unwrap();
    FakeDev::quantastor("10:0:0:1", "sdc").create(root.path());
    FakeDev::quantastor("2:0:0:1", "sdb").create(root.path());
    let d = discover(&opts(root.path()));
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    assert_eq!(d.devices.len(), 2);
    let a = &d.devices[0];
    assert_eq!(a.hctl, "2:0:0:1");
    assert_eq!(a.name, "sdb");
    assert_eq!(a.devnode, PathBuf::from("/dev/sdb"));
    assert_eq!(a.vendor, "OSNEXUS");
    assert_eq!(a.product, "QUANTASTOR");
    assert_eq!(a.revision, "2.5+");
    assert_eq!(a.wwid, "35000c50015ea71ac");
    assert_eq!(a.wwid_source, "VPD 0x83 NAA 5");
    assert_eq!(a.serial, "QS0001");
    assert_eq!(a.state, "running");
    assert_eq!(a.timeout_secs, Some(30));
    assert_eq!(a.size_bytes, Some(1 << 30));
    assert_eq!(a.logical_block_size, Some(512));
    assert_eq!(a.dev, "8:16");
    assert_eq!(d.devices[1].hctl, "10:0:0:1");
    assert_eq!(d.devices[1].wwid, a.wwid);
    let t = a.target();
    assert_eq!(t.timeout, Some(Duration::from_secs(30)));
    assert_eq!(t.block_size, Some(512));
}

#[test]
fn serial_only_and_raw_inquiry() {
    let root = tempfile::tempdir().unwrap();
    let mut f = FakeDev::quantastor("0:0:0:0", "sda");
    f.pg83 = None;
    f.create(root.path());
    let d = discover(&opts(root.path()));
    assert_eq!(d.devices[0].wwid, "SOSNEXUS_QUANTASTOR_QS0001");
    assert_eq!(d.devices[0].wwid_source, "VPD 0x80 serial");
    // The raw inquiry attribute wins over the text ones.
    let dir = root.path().join("class/scsi_device/0:0:0:0/device");
    fs::write(
        dir.join("inquiry"),
        crate::scsi::inquiry::tests::quantastor(),
    )
    .unwrap();
    fs::write(dir.join("vendor"), "garbage\n").unwrap();
    let d = discover(&opts(root.path()));
    assert_eq!(d.devices[0].vendor, "OSNEXUS");
    assert_eq!(d.devices[0].wwid, "SOSNEXUS_QUANTASTOR_QS0001");
}

#[test]
fn devices_without_block_device_are_skipped() {
    let root = tempfile::tempdir().unwrap();
    let enc = root.path().join("class/scsi_device/3:0:0:0/device");
    fs::create_dir_all(&enc).unwrap();
    fs::write(enc.join("vendor"), "ENCL\n").unwrap();
    FakeDev::quantastor("2:0:0:1", "sdb").create(root.path());
    let d = discover(&opts(root.path()));
    assert_eq!(d.devices.len(), 1);
    assert!(d.errors.is_empty());
}

#[test]
fn vanished_attributes_are_per_device_errors() {
    let root = tempfile::tempdir().unwrap();
    let gone = FakeDev::quantastor("2:0:0:1", "sdb").create(root.path());
    FakeDev::quantastor("2:0:0:2", "sdc").create(root.path());
    fs::remove_file(gone.join("model")).unwrap();
    // A scsi_device entry whose device directory is gone.
    fs::create_dir_all(root.path().join("class/scsi_device/4:0:0:0")).unwrap();
    let d = discover(&opts(root.path()));
    assert_eq!(d.devices.len(), 1);
    assert_eq!(d.devices[0].name, "sdc");
    assert_eq!(d.errors.len(), 2);
    let e = d.errors.iter().find(|e| e.device == "2:0:0:1").unwrap();
    assert!(e.to_string().contains("model"), "{e}");
    assert!(e.why.contains("vanished"), "{e}");
    assert!(d.errors.iter().any(|e| e.device == "4:0:0:0"));
}

#[test]
fn malformed_vpd_and_attributes() {
    let root = tempfile::tempdir().unwrap();
    // Garbage page 0x83: falls back to page 0x80.
    let mut f = FakeDev::quantastor("1:0:0:0", "sda");
    f.pg83 = Some(vec![0xde, 0xad]);
    f.create(root.path());
    // Both garbage: no WWID, with the reasons.
    let mut g = FakeDev::quantastor("1:0:0:1", "sdb");
    g.pg83 = Some(page(0x80, b"wrong page"));
    g.pg80 = Some(vec![0x00]);
    g.create(root.path());
    // No VPD at all and no SG_IO fallback.
    let mut h = FakeDev::quantastor("1:0:0:2", "sdc");
    h.pg83 = None;
    h.pg80 = None;
    h.create(root.path());
    // A timeout that is not a number is an error for the device.
    let bad = FakeDev::quantastor("1:0:0:3", "sdd").create(root.path());
    fs::write(bad.join("timeout"), "soon\n").unwrap();
    // An empty VPD file counts as absent.
    let mut e = FakeDev::quantastor("1:0:0:4", "sde");
    e.pg83 = Some(Vec::new());
    e.create(root.path());

    let d = discover(&opts(root.path()));
    let by = |n: &str| d.devices.iter().find(|x| x.name == n).unwrap();
    assert_eq!(by("sda").wwid, "SOSNEXUS_QUANTASTOR_QS0001");
    assert_eq!(by("sdb").wwid, "");
    let why = by("sdb").wwid_error.clone().unwrap();
    assert!(why.contains("expected"), "{why}");
    assert!(by("sdc")
        .wwid_error
        .as_ref()
        .unwrap()
        .contains("no VPD page 0x83"));
    assert_eq!(by("sde").wwid, "SOSNEXUS_QUANTASTOR_QS0001");
    assert_eq!(d.errors.len(), 1);
    assert!(d.errors[0].why.contains("not a number"), "{}", d.errors[0]);
}

#[test]
fn no_scsi_at_all() {
    let root = tempfile::tempdir().unwrap();
    let d = discover(&opts(root.path()));
    assert!(d.devices.is_empty() && d.errors.is_empty());
}

#[test]
fn by_block_device_name() {
    let root = tempfile::tempdir().unwrap();
    let dir = FakeDev::quantastor("2:0:0:1", "sdb").create(root.path());
    let b = root.path().join("block/sdb");
    fs::create_dir_all(&b).unwrap();
    std::os::unix::fs::symlink(&dir, b.join("device")).unwrap();
    // Real sysfs: block/sdb/device points at the H:C:T:L directory.
    let hctl_dir = root.path().join("devices/2:0:0:1");
    fs::create_dir_all(root.path().join("devices")).unwrap();
    fs::rename(&dir, &hctl_dir).unwrap();
    fs::remove_file(b.join("device")).unwrap();
    std::os::unix::fs::symlink(&hctl_dir, b.join("device")).unwrap();
    let d = discover_block(&opts(root.path()), "sdb").unwrap().unwrap();
    assert_eq!(d.hctl, "2:0:0:1");
    assert_eq!(d.wwid, "35000c50015ea71ac");
    assert!(discover_block(&opts(root.path()), "sdx").unwrap().is_none());
}

#[test]
fn hctl_parsing() {
    assert_eq!(parse_hctl("2:0:0:1"), Some([2, 0, 0, 1]));
    assert_eq!(parse_hctl("2:0:0"), None);
    assert_eq!(parse_hctl("2:0:0:1:5"), None);
    assert_eq!(parse_hctl("a:0:0:1"), None);
}

/// Moves a fake device's directory to `devices/<parents>/<hctl>` and
/// makes `class/scsi_device/<hctl>/device` a link to it, as sysfs does.
fn reparent(root: &Path, hctl: &str, parents: &str) -> PathBuf {
    let link = root.join("class/scsi_device").join(hctl).join("device");
    let real = root.join("devices").join(parents).join(hctl);
    fs::create_dir_all(real.parent().unwrap()).unwrap();
    fs::rename(&link, &real).unwrap();
    std::os::unix::fs::symlink(&real, &link).unwrap();
    real
}

fn write(path: PathBuf, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

#[test]
fn target_port_group_and_tpgs() {
    let root = tempfile::tempdir().unwrap();
    let mut d = FakeDev::quantastor("3:0:0:1", "sdd");
    let mut p = qemu_pg83()[4..].to_vec();
    p.extend_from_slice(&[0x61, 0x95, 0x00, 0x04, 0x00, 0x00, 0x00, 0x02]);
    d.pg83 = Some(page(0x83, &p));
    let dir = d.create(root.path());
    // Standard INQUIRY with TPGS = 01b (implicit).
    let mut inq = vec![0u8; 36];
    inq[4] = 31;
    inq[5] = 0x10;
    inq[8..16].copy_from_slice(b"OSNEXUS ");
    inq[16..32].copy_from_slice(b"QUANTASTOR      ");
    inq[32..36].copy_from_slice(b"2.5+");
    fs::write(dir.join("inquiry"), &inq).unwrap();
    let plain = FakeDev::quantastor("4:0:0:1", "sde").create(root.path());
    fs::remove_file(plain.join("inquiry")).unwrap();
    let found = discover(&opts(root.path()));
    assert!(found.errors.is_empty(), "{:?}", found.errors);
    let (a, b) = (&found.devices[0], &found.devices[1]);
    assert_eq!(
        (a.tpg, a.tpgs),
        (Some(2), Some(crate::scsi::Tpgs::Implicit))
    );
    assert_eq!(a.wwid, b.wwid);
    // No group designator, no raw INQUIRY: both unknown.
    assert_eq!((b.tpg, b.tpgs, b.node_name.as_deref()), (None, None, None));
}

#[test]
fn node_name_from_fc_iscsi_and_sas() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    // Fibre Channel: the fc_transport target of H:C:T.
    FakeDev::quantastor("1:0:2:1", "sdb").create(r);
    reparent(r, "1:0:2:1", "pci0/host1/rport-1:0-0/target1:0:2");
    write(
        r.join("class/fc_transport/target1:0:2/node_name"),
        "0x50060e8016b3c100\n",
    );
    // iSCSI: the session the device hangs under.
    FakeDev::quantastor("2:0:0:1", "sdc").create(r);
    reparent(r, "2:0:0:1", "platform/host2/session7/target2:0:0");
    write(
        r.join("class/iscsi_session/session7/targetname"),
        "iqn.2003-01.org.linux-iscsi.target:one\n",
    );
    // SAS: the end device's address.
    FakeDev::quantastor("0:0:5:0", "sdd").create(r);
    reparent(
        r,
        "0:0:5:0",
        "pci0/host0/port-0:0/end_device-0:0/target0:0:5",
    );
    write(
        r.join("class/sas_device/end_device-0:0/sas_address"),
        "0x5000c500a1b2c3d4\n",
    );
    // Nothing to go by (a virtio-scsi disk).
    FakeDev::quantastor("5:0:0:0", "sde").create(r);
    let found = discover(&opts(r));
    assert!(found.errors.is_empty(), "{:?}", found.errors);
    let names: Vec<(&str, Option<&str>)> = found
        .devices
        .iter()
        .map(|d| (d.name.as_str(), d.node_name.as_deref()))
        .collect();
    assert_eq!(
        names,
        vec![
            ("sdd", Some("0x5000c500a1b2c3d4")),
            ("sdb", Some("0x50060e8016b3c100")),
            ("sdc", Some("iqn.2003-01.org.linux-iscsi.target:one")),
            ("sde", None),
        ]
    );
    // weightedpath wwn: only the FC path, once the host's and the
    // target's port names are all there.
    assert!(found.devices.iter().all(|d| d.wwn.is_none()));
    write(
        r.join("class/fc_transport/target1:0:2/port_name"),
        "0x50060e8016b3c110
",
    );
    write(
        r.join("class/fc_host/host1/node_name"),
        "0x20000024ff3a0001
",
    );
    assert_eq!(fc_port_names(r, "1:0:2:1"), None, "no host port name yet");
    write(
        r.join("class/fc_host/host1/port_name"),
        "0x21000024ff3a0001
",
    );
    let found = discover(&opts(r));
    let wwn: Vec<(&str, Option<&str>)> = found
        .devices
        .iter()
        .map(|d| (d.name.as_str(), d.wwn.as_deref()))
        .collect();
    assert_eq!(
        wwn,
        vec![
            ("sdd", None),
            (
                "sdb",
                Some("0x20000024ff3a0001:0x21000024ff3a0001:0x50060e8016b3c100:0x50060e8016b3c110")
            ),
            ("sdc", None),
            ("sde", None),
        ]
    );
    // An empty attribute is no name.
    write(r.join("class/fc_transport/target1:0:2/node_name"), "\n");
    assert_eq!(
        target_node_name(r, "1:0:2:1", &r.join("class/scsi_device/1:0:2:1/device")),
        None
    );
}
