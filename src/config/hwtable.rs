//! The built-in hardware table and the built-in blacklist.
//!
//! Entries are data (vendor, product, revision regexes and keyword/value
//! pairs, as `multipath -t` prints them). They are checked with the same
//! keyword table as the user's file and compiled once on first use.
//! Matching device entries apply attribute by attribute: the user's
//! entries first (later before earlier), then these (later before
//! earlier).
//!
//! The built-in blacklist's `device` entries are not a table of their
//! own: as in multipath-tools, they are the (vendor, product_blacklist)
//! pairs of the hardware table (the user's entries included), see
//! [`crate::config::Config::effective_blacklist`].

use std::sync::{Arc, OnceLock};

use super::diag::Span;
use super::keywords::{lookup, Assignment, Pattern, Section};
use super::sections::{AttrMap, Blacklist, BlacklistDevice, BlacklistEntry, DeviceEntry};

/// One built-in `device {}` entry as data.
#[derive(Debug, Clone, Copy)]
pub struct HwEntry {
    pub vendor: &'static str,
    pub product: &'static str,
    pub revision: Option<&'static str>,
    pub attrs: &'static [(&'static str, &'static str)],
}

const fn hw(
    vendor: &'static str,
    product: &'static str,
    attrs: &'static [(&'static str, &'static str)],
) -> HwEntry {
    HwEntry {
        vendor,
        product,
        revision: None,
        attrs,
    }
}

/// Built-in device entries, in multipath-tools order (later entries take
/// precedence over earlier ones): the `devices` section `multipath -t`
/// (multipath-tools 0.9.4) prints with an empty configuration, generated
/// by `scripts/hwtable-from-multipath-t.py`. There is no entry for
/// OSNEXUS.
#[rustfmt::skip]
pub static BUILTIN_HWTABLE: &[HwEntry] = &[
    // BEGIN generated
    hw("NVM[eE]", ".*", &[("path_grouping_policy", "group_by_prio"), ("uid_attribute", "ID_WWN"), ("path_checker", "none"), ("failback", "immediate")]),
    hw("APPLE", "Xserve RAID", &[("path_grouping_policy", "multibus")]),
    hw("3PARdata", "VV", &[("path_grouping_policy", "group_by_prio"), ("hardware_handler", "1 alua"), ("prio", "alua"), ("failback", "immediate"), ("no_path_retry", "18"), ("fast_io_fail_tmo", "10"), ("dev_loss_tmo", "infinity"), ("vpd_vendor", "hp3par")]),
    hw("NVME", "HPE Alletra", &[("no_path_retry", "queue")]),
    hw("DEC", "HSG80", &[("path_grouping_policy", "group_by_prio"), ("path_checker", "hp_sw"), ("hardware_handler", "1 hp_sw"), ("prio", "hp_sw"), ("no_path_retry", "queue")]),
    hw("HP", "A6189A", &[("path_grouping_policy", "multibus"), ("no_path_retry", "12")]),
    hw("(COMPAQ|HP)", "(MSA|HSV)1[01]0", &[("path_grouping_policy", "group_by_prio"), ("path_checker", "hp_sw"), ("hardware_handler", "1 hp_sw"), ("prio", "hp_sw"), ("no_path_retry", "12")]),
    hw("(COMPAQ|HP)", "MSA VOLUME", &[("path_grouping_policy", "group_by_prio"), ("prio", "alua"), ("failback", "immediate"), ("no_path_retry", "12")]),
    hw("(COMPAQ|HP)", "(HSV1[01]1|HSV2[01]0|HSV3[046]0|HSV4[05]0)", &[("path_grouping_policy", "group_by_prio"), ("prio", "alua"), ("failback", "immediate"), ("no_path_retry", "12")]),
    hw("HP", "(MSA2[02]12fc|MSA2012i)", &[("path_grouping_policy", "multibus"), ("no_path_retry", "18")]),
    hw("HP", "(MSA2012sa|MSA23(12|24)(fc|i|sa)|MSA2000s VOLUME)", &[("path_grouping_policy", "group_by_prio"), ("prio", "alua"), ("failback", "immediate"), ("no_path_retry", "18")]),
    hw("(HP|HPE)", "MSA [12]0[456]0 (SAN|SAS|FC|iSCSI)", &[("path_grouping_policy", "group_by_prio"), ("prio", "alua"), ("failback", "immediate"), ("no_path_retry", "18")]),
    hw("HP", "(HSVX700|HSVX740)", &[("path_grouping_policy", "group_by_prio"), ("hardware_handler", "1 alua"), ("prio", "alua"), ("failback", "immediate"), ("no_path_retry", "12")]),
    hw("HP", "LOGICAL VOLUME", &[("path_grouping_policy", "multibus"), ("no_path_retry", "12")]),
    hw("HP", "(P2000 G3 FC|P2000G3 FC/iSCSI|P2000 G3 SAS|P2000 G3 iSCSI)", &[("path_grouping_policy", "group_by_prio"), ("prio", "alua"), ("failback", "immediate"), ("no_path_retry", "18")]),
    hw("LEFTHAND", "(P4000|iSCSIDisk|FCDISK)", &[("path_grouping_policy", "group_by_prio"), ("prio", "alua"), ("failback", "immediate"), ("no_path_retry", "18")]),
    hw("Nimble", "Server", &[("path_grouping_policy", "group_by_prio"), ("hardware_handler", "1 alua"), ("prio", "alua"), ("failback", "immediate"), ("no_path_retry", "queue")]),
    hw("SGI", "TP9100", &[("path_grouping_policy", "multibus")]),
    hw("SGI", "TP9[3457]00", &[("product_blacklist", "Universal Xport"), ("path_grouping_policy", "group_by_prio"), ("path_checker", "rdac"), ("features", "2 pg_init_retries 50"), ("hardware_handler", "1 rdac"), ("prio", "rdac"), ("failback", "immediate"), ("no_path_retry", "30")]),
    hw("SGI", "IS", &[("product_blacklist", "Universal Xport"), ("path_grouping_policy", "group_by_prio"), ("path_checker", "rdac"), ("features", "2 pg_init_retries 50"), ("hardware_handler", "1 rdac"), ("prio", "rdac"), ("failback", "immediate"), ("no_path_retry", "30")]),
    hw("SGI", "^DD[46]A-", &[("path_grouping_policy", "group_by_prio"), ("prio", "alua"), ("failback", "immediate"), ("no_path_retry", "30")]),
    hw("DDN", "SAN DataDirector", &[("path_grouping_policy", "multibus")]),
    hw("DDN", "^EF3010", &[("path_grouping_policy", "multibus"), ("no_path_retry", "30")]),
    hw("DDN", "^(EF3015|S2A|SFA)", &[("path_grouping_policy", "group_by_prio"), ("prio", "alua"), ("failback", "immediate"), ("no_path_retry", "30")]),
    hw("NEXENTA", "COMSTAR", &[("path_grouping_policy", "group_by_serial"), ("no_path_retry", "30")]),
    hw("TEGILE", "(ZEBI-(FC|ISCSI)|INTELLIFLASH)", &[("path_grouping_policy", "group_by_prio"), ("hardware_handler", "1 alua"), ("prio", "alua"), ("failback", "immediate"), ("no_path_retry", "10")]),
    hw("EMC", "SYMMETRIX", &[("path_grouping_policy", "multibus"), ("no_path_retry", "6")]),
    hw("NVME", "EMC PowerMax", &[("no_path_retry", "queue")]),
    hw("^DGC", "^(RAID|DISK|VRAID)", &[("product_blacklist", "LUNZ"), ("path_grouping_policy", "group_by_prio"), ("path_checker", "emc_clariion"), ("hardware_handler", "1 emc"), ("prio", "emc"), ("failback", "immediate"), ("no_path_retry", "60"), ("detect_checker", "no")]),
    hw("EMC", "Invista", &[("product_blacklist", "LUNZ"), ("path_grouping_policy", "multibus"), ("no_path_retry", "5")]),
    hw("XtremIO", "XtremApp", &[("path_grouping_policy", "multibus")]),
    hw("COMPELNT", "Compellent Vol", &[("path_grouping_policy", "group_by_prio"), ("failback", "immediate"), ("no_path_retry", "queue")]),
    hw("DELL", "^MD3", &[("product_blacklist", "Universal Xport"), ("path_grouping_policy", "group_by_prio"), ("path_checker", "rdac"), ("features", "2 pg_init_retries 50"), ("hardware_handler", "1 rdac"), ("prio", "rdac"), ("failback", "immediate"), ("no_path_retry", "30")]),
    hw("DellEMC", "PowerStore", &[("path_grouping_policy", "group_by_prio"), ("hardware_handler", "1 alua"), ("prio", "alua"), ("failback", "immediate"), ("no_path_retry", "3"), ("fast_io_fail_tmo", "15")]),
    hw(".*", "dellemc-powerstore", &[("no_path_retry", "3")]),
    hw("DellEMC", "^ME", &[("path_grouping_policy", "group_by_prio"), ("hardware_handler", "1 alua"), ("prio", "alua"), ("failback", "immediate")]),
    hw("FSC", "CentricStor", &[("path_grouping_policy", "group_by_serial")]),
    hw("FUJITSU", "ETERNUS_DX(H|L|M|400|8000)", &[("path_grouping_policy", "group_by_prio"), ("prio", "alua"), ("failback", "immediate"), ("no_path_retry", "10")]),
    hw("(EUROLOGC|EuroLogc)", "FC2502", &[("path_grouping_policy", "multibus")]),
    hw("FUJITSU", "E[234]000", &[("path_grouping_policy", "group_by_prio"), ("prio", "alua"), ("failback", "immediate"), ("no_path_retry", "10")]),
    hw("FUJITSU", "E[68]000", &[("path_grouping_policy", "multibus"), ("no_path_retry", "10")]),
    hw("FUJITSU", "ETERNUS_AHB", &[("product_blacklist", "Universal Xport"), ("path_grouping_policy", "group_by_prio"), ("path_checker", "rdac"), ("features", "2 pg_init_retries 50"), ("hardware_handler", "1 rdac"), ("prio", "rdac"), ("failback", "immediate"), ("no_path_retry", "30")]),
    hw("(HITACHI|HP|HPE)", "^OPEN-", &[("path_grouping_policy", "multibus")]),
    hw("HITACHI", "^DF", &[("path_grouping_policy", "group_by_prio"), ("prio", "hds"), ("failback", "immediate"), ("no_path_retry", "queue")]),
    hw("HITACHI", "^DF600F", &[("path_grouping_policy", "multibus")]),
    hw("IBM", "ProFibre 4000R", &[("path_grouping_policy", "multibus")]),
    hw("IBM", "^1722-600", &[("product_blacklist", "Universal Xport"), ("path_grouping_policy", "group_by_prio"), ("path_checker", "rdac"), ("features", "2 pg_init_retries 50"), ("hardware_handler", "1 rdac"), ("prio", "rdac"), ("failback", "immediate"), ("no_path_retry", "30")]),
    hw("IBM", "^1724", &[("product_blacklist", "Universal Xport"), ("path_grouping_policy", "group_by_prio"), ("path_checker", "rdac"), ("features", "2 pg_init_retries 50"), ("hardware_handler", "1 rdac"), ("prio", "rdac"), ("failback", "immediate"), ("no_path_retry", "30")]),
    hw("IBM", "^1726", &[("product_blacklist", "Universal Xport"), ("path_grouping_policy", "group_by_prio"), ("path_checker", "rdac"), ("features", "2 pg_init_retries 50"), ("hardware_handler", "1 rdac"), ("prio", "rdac"), ("failback", "immediate"), ("no_path_retry", "30")]),
    hw("IBM", "^1742", &[("product_blacklist", "Universal Xport"), ("path_grouping_policy", "group_by_prio"), ("path_checker", "rdac"), ("features", "2 pg_init_retries 50"), ("hardware_handler", "1 rdac"), ("prio", "rdac"), ("failback", "immediate"), ("no_path_retry", "30")]),
    hw("IBM", "^1746", &[("product_blacklist", "Universal Xport"), ("path_grouping_policy", "group_by_prio"), ("path_checker", "rdac"), ("features", "2 pg_init_retries 50"), ("hardware_handler", "1 rdac"), ("prio", "rdac"), ("failback", "immediate"), ("no_path_retry", "30")]),
    hw("IBM", "^1813", &[("product_blacklist", "Universal Xport"), ("path_grouping_policy", "group_by_prio"), ("path_checker", "rdac"), ("features", "2 pg_init_retries 50"), ("hardware_handler", "1 rdac"), ("prio", "rdac"), ("failback", "immediate"), ("no_path_retry", "30")]),
    hw("IBM", "^1814", &[("product_blacklist", "Universal Xport"), ("path_grouping_policy", "group_by_prio"), ("path_checker", "rdac"), ("features", "2 pg_init_retries 50"), ("hardware_handler", "1 rdac"), ("prio", "rdac"), ("failback", "immediate"), ("no_path_retry", "30")]),
    hw("IBM", "^1815", &[("product_blacklist", "Universal Xport"), ("path_grouping_policy", "group_by_prio"), ("path_checker", "rdac"), ("features", "2 pg_init_retries 50"), ("hardware_handler", "1 rdac"), ("prio", "rdac"), ("failback", "immediate"), ("no_path_retry", "30")]),
    hw("IBM", "^1818", &[("product_blacklist", "Universal Xport"), ("path_grouping_policy", "group_by_prio"), ("path_checker", "rdac"), ("features", "2 pg_init_retries 50"), ("hardware_handler", "1 rdac"), ("prio", "rdac"), ("failback", "immediate"), ("no_path_retry", "30")]),
    hw("IBM", "^3526", &[("product_blacklist", "Universal Xport"), ("path_grouping_policy", "group_by_prio"), ("path_checker", "rdac"), ("features", "2 pg_init_retries 50"), ("hardware_handler", "1 rdac"), ("prio", "rdac"), ("failback", "immediate"), ("no_path_retry", "30")]),
    hw("IBM", "^(3542|3552)", &[("product_blacklist", "Universal Xport"), ("path_grouping_policy", "group_by_prio"), ("path_checker", "rdac"), ("features", "2 pg_init_retries 50"), ("hardware_handler", "1 rdac"), ("prio", "rdac"), ("failback", "immediate"), ("no_path_retry", "30")]),
    hw("IBM", "^2105", &[("path_grouping_policy", "multibus"), ("no_path_retry", "queue")]),
    hw("IBM", "^1750500", &[("path_grouping_policy", "group_by_prio"), ("prio", "alua"), ("failback", "immediate"), ("no_path_retry", "queue")]),
    hw("IBM", "^2107900", &[("path_grouping_policy", "group_by_prio"), ("failback", "immediate"), ("no_path_retry", "queue")]),
    hw("IBM", "^2145", &[("path_grouping_policy", "group_by_prio"), ("prio", "alua"), ("failback", "immediate"), ("no_path_retry", "queue")]),
    hw("NVME", "IBM[ ]+2145", &[("no_path_retry", "queue")]),
    hw("IBM", "S/390 DASD ECKD", &[("product_blacklist", "S/390"), ("path_grouping_policy", "multibus"), ("uid_attribute", "ID_UID"), ("path_checker", "directio"), ("no_path_retry", "queue")]),
    hw("IBM", "S/390 DASD FBA", &[("product_blacklist", "S/390"), ("path_grouping_policy", "multibus"), ("uid_attribute", "ID_UID"), ("path_checker", "directio"), ("no_path_retry", "queue")]),
    hw("IBM", "^IPR", &[("path_grouping_policy", "group_by_prio"), ("hardware_handler", "1 alua"), ("prio", "alua"), ("failback", "immediate"), ("no_path_retry", "queue")]),
    hw("IBM", "1820N00", &[("path_grouping_policy", "group_by_prio"), ("prio", "alua"), ("failback", "immediate"), ("no_path_retry", "queue")]),
    hw("(XIV|IBM)", "(NEXTRA|2810XIV)", &[("path_grouping_policy", "group_by_prio"), ("failback", "15"), ("no_path_retry", "queue")]),
    hw("(TMS|IBM)", "(RamSan|FlashSystem)", &[("path_grouping_policy", "multibus")]),
    hw("NVMe", "FlashSystem", &[("no_path_retry", "fail")]),
    hw("IBM", "^(DCS9900|2851)", &[("path_grouping_policy", "group_by_prio"), ("prio", "alua"), ("failback", "immediate"), ("no_path_retry", "30")]),
    hw("AIX", "VDASD", &[("path_grouping_policy", "multibus"), ("no_path_retry", "60")]),
    hw("IBM", "3303[ ]+NVDISK", &[("no_path_retry", "60")]),
    hw("AIX", "NVDISK", &[("path_grouping_policy", "group_by_prio"), ("hardware_handler", "1 alua"), ("prio", "alua"), ("failback", "immediate"), ("no_path_retry", "60")]),
    hw("LENOVO", "DE_Series", &[("product_blacklist", "Universal Xport"), ("path_grouping_policy", "group_by_prio"), ("path_checker", "rdac"), ("features", "2 pg_init_retries 50"), ("hardware_handler", "1 rdac"), ("prio", "rdac"), ("failback", "immediate"), ("no_path_retry", "30")]),
    hw("NETAPP", "LUN", &[("path_grouping_policy", "group_by_prio"), ("features", "2 pg_init_retries 50"), ("prio", "ontap"), ("failback", "immediate"), ("no_path_retry", "queue"), ("flush_on_last_del", "yes"), ("dev_loss_tmo", "infinity"), ("user_friendly_names", "no")]),
    hw("(NETAPP|LSI|ENGENIO)", "INF-01-00", &[("product_blacklist", "Universal Xport"), ("path_grouping_policy", "group_by_prio"), ("path_checker", "rdac"), ("features", "2 pg_init_retries 50"), ("hardware_handler", "1 rdac"), ("prio", "rdac"), ("failback", "immediate"), ("no_path_retry", "30")]),
    hw("SolidFir", "SSD SAN", &[("path_grouping_policy", "multibus"), ("no_path_retry", "24")]),
    hw("NVME", "^NetApp ONTAP Controller", &[("no_path_retry", "queue")]),
    hw("NEC", "DISK ARRAY", &[("path_grouping_policy", "group_by_prio"), ("hardware_handler", "1 alua"), ("prio", "alua"), ("failback", "immediate")]),
    hw("^Pillar", "^Axiom", &[("path_grouping_policy", "group_by_prio"), ("prio", "alua"), ("failback", "immediate")]),
    hw("^Oracle", "^Oracle FS", &[("path_grouping_policy", "group_by_prio"), ("prio", "alua"), ("failback", "immediate")]),
    hw("STK", "BladeCtlr", &[("product_blacklist", "Universal Xport"), ("path_grouping_policy", "group_by_prio"), ("path_checker", "rdac"), ("features", "2 pg_init_retries 50"), ("hardware_handler", "1 rdac"), ("prio", "rdac"), ("failback", "immediate"), ("no_path_retry", "30")]),
    hw("STK", "OPENstorage", &[("product_blacklist", "Universal Xport"), ("path_grouping_policy", "group_by_prio"), ("path_checker", "rdac"), ("features", "2 pg_init_retries 50"), ("hardware_handler", "1 rdac"), ("prio", "rdac"), ("failback", "immediate"), ("no_path_retry", "30")]),
    hw("STK", "FLEXLINE 380", &[("product_blacklist", "Universal Xport"), ("path_grouping_policy", "group_by_prio"), ("path_checker", "rdac"), ("features", "2 pg_init_retries 50"), ("hardware_handler", "1 rdac"), ("prio", "rdac"), ("failback", "immediate"), ("no_path_retry", "30")]),
    hw("SUN", "StorEdge 3", &[("path_grouping_policy", "multibus")]),
    hw("SUN", "STK6580_6780", &[("product_blacklist", "Universal Xport"), ("path_grouping_policy", "group_by_prio"), ("path_checker", "rdac"), ("features", "2 pg_init_retries 50"), ("hardware_handler", "1 rdac"), ("prio", "rdac"), ("failback", "immediate"), ("no_path_retry", "30")]),
    hw("SUN", "CSM[12]00_R", &[("product_blacklist", "Universal Xport"), ("path_grouping_policy", "group_by_prio"), ("path_checker", "rdac"), ("features", "2 pg_init_retries 50"), ("hardware_handler", "1 rdac"), ("prio", "rdac"), ("failback", "immediate"), ("no_path_retry", "30")]),
    hw("SUN", "LCSM100_[IEFS]", &[("product_blacklist", "Universal Xport"), ("path_grouping_policy", "group_by_prio"), ("path_checker", "rdac"), ("features", "2 pg_init_retries 50"), ("hardware_handler", "1 rdac"), ("prio", "rdac"), ("failback", "immediate"), ("no_path_retry", "30")]),
    hw("SUN", "SUN_6180", &[("product_blacklist", "Universal Xport"), ("path_grouping_policy", "group_by_prio"), ("path_checker", "rdac"), ("features", "2 pg_init_retries 50"), ("hardware_handler", "1 rdac"), ("prio", "rdac"), ("failback", "immediate"), ("no_path_retry", "30")]),
    hw("SUN", "ArrayStorage", &[("product_blacklist", "Universal Xport"), ("path_grouping_policy", "group_by_prio"), ("path_checker", "rdac"), ("features", "2 pg_init_retries 50"), ("hardware_handler", "1 rdac"), ("prio", "rdac"), ("failback", "immediate"), ("no_path_retry", "30")]),
    hw("SUN", "(Sun Storage|ZFS Storage|COMSTAR)", &[("path_grouping_policy", "group_by_prio"), ("prio", "alua"), ("failback", "immediate"), ("no_path_retry", "30")]),
    hw("PIVOT3", "RAIGE VOLUME", &[("path_grouping_policy", "multibus"), ("no_path_retry", "queue")]),
    hw("(NexGen|Pivot3)", "(TierStore|vSTAC)", &[("path_grouping_policy", "group_by_prio"), ("prio", "alua"), ("failback", "immediate"), ("no_path_retry", "queue")]),
    hw("(Intel|INTEL)", "Multi-Flex", &[("product_blacklist", "VTrak V-LUN"), ("path_grouping_policy", "group_by_prio"), ("hardware_handler", "1 alua"), ("prio", "alua"), ("failback", "immediate"), ("no_path_retry", "queue")]),
    hw("(LIO-ORG|SUSE)", ".*", &[("path_grouping_policy", "group_by_prio"), ("hardware_handler", "1 alua"), ("prio", "alua"), ("failback", "immediate"), ("no_path_retry", "12")]),
    hw("DataCore", "SANmelody", &[("path_grouping_policy", "group_by_prio"), ("prio", "alua"), ("failback", "immediate"), ("no_path_retry", "queue")]),
    hw("DataCore", "Virtual Disk", &[("path_grouping_policy", "group_by_prio"), ("prio", "alua"), ("failback", "immediate"), ("no_path_retry", "queue")]),
    hw("PURE", "FlashArray", &[("path_grouping_policy", "group_by_prio"), ("hardware_handler", "1 alua"), ("prio", "alua"), ("failback", "immediate"), ("fast_io_fail_tmo", "10")]),
    hw("NVME", "Pure Storage FlashArray", &[("no_path_retry", "10")]),
    hw("HUAWEI", "XSG1", &[("path_grouping_policy", "group_by_prio"), ("failback", "immediate"), ("no_path_retry", "15")]),
    hw("NVM[eE]", "Huawei-XSG1", &[("path_checker", "directio"), ("no_path_retry", "12")]),
    hw("KOVE", "XPD", &[("path_grouping_policy", "multibus")]),
    hw("NFINIDAT", "InfiniBox", &[("path_grouping_policy", "group_by_prio"), ("path_selector", "round-robin 0"), ("prio", "alua"), ("failback", "30"), ("rr_weight", "priorities"), ("no_path_retry", "fail"), ("rr_min_io", "1"), ("rr_min_io_rq", "1"), ("flush_on_last_del", "yes"), ("fast_io_fail_tmo", "15"), ("dev_loss_tmo", "15")]),
    hw("KMNRIO", "K2", &[("path_grouping_policy", "multibus")]),
    hw("NEXSAN", "NXS-B0", &[("path_grouping_policy", "group_by_prio"), ("prio", "alua"), ("failback", "immediate"), ("no_path_retry", "15")]),
    hw("NEXSAN", "SATAB", &[("path_grouping_policy", "group_by_prio"), ("prio", "alua"), ("failback", "immediate"), ("no_path_retry", "15")]),
    hw("Nexsan", "(NestOS|NST5000)", &[("path_grouping_policy", "group_by_prio"), ("hardware_handler", "1 alua"), ("prio", "alua"), ("failback", "immediate"), ("no_path_retry", "30")]),
    hw("VIOLIN", "SAN ARRAY$", &[("path_grouping_policy", "group_by_serial"), ("no_path_retry", "30")]),
    hw("VIOLIN", "SAN ARRAY ALUA", &[("path_grouping_policy", "group_by_prio"), ("hardware_handler", "1 alua"), ("prio", "alua"), ("failback", "immediate"), ("no_path_retry", "30")]),
    hw("VIOLIN", "CONCERTO ARRAY", &[("path_grouping_policy", "multibus"), ("no_path_retry", "30")]),
    hw("(XIOTECH|XIOtech)", "ISE", &[("path_grouping_policy", "multibus"), ("no_path_retry", "12")]),
    hw("(XIOTECH|XIOtech)", "IGLU DISK", &[("path_grouping_policy", "multibus"), ("no_path_retry", "30")]),
    hw("(XIOTECH|XIOtech)", "Magnitude", &[("path_grouping_policy", "multibus"), ("no_path_retry", "30")]),
    hw("Vexata", "VX", &[("path_grouping_policy", "multibus"), ("no_path_retry", "30")]),
    hw("Promise", "VTrak", &[("product_blacklist", "VTrak V-LUN"), ("path_grouping_policy", "group_by_prio"), ("hardware_handler", "1 alua"), ("prio", "alua"), ("failback", "immediate"), ("no_path_retry", "30")]),
    hw("Promise", "Vess", &[("product_blacklist", "Vess V-LUN"), ("path_grouping_policy", "group_by_prio"), ("hardware_handler", "1 alua"), ("prio", "alua"), ("failback", "immediate"), ("no_path_retry", "30")]),
    hw("^IFT", ".*", &[("path_grouping_policy", "group_by_prio"), ("prio", "alua"), ("failback", "immediate"), ("no_path_retry", "30")]),
    hw("DotHill", "SANnet", &[("path_grouping_policy", "multibus"), ("no_path_retry", "30")]),
    hw("DotHill", "R/Evo", &[("path_grouping_policy", "group_by_prio"), ("prio", "alua"), ("failback", "immediate"), ("no_path_retry", "30")]),
    hw("DotHill", "^DH", &[("path_grouping_policy", "group_by_prio"), ("prio", "alua"), ("failback", "immediate"), ("no_path_retry", "30")]),
    hw("AStor", "NeoSapphire", &[("path_grouping_policy", "multibus"), ("no_path_retry", "30")]),
    hw("INSPUR", "MCS", &[("path_grouping_policy", "group_by_prio"), ("prio", "alua"), ("failback", "immediate")]),
    hw("MacroSAN", "LU", &[("path_grouping_policy", "group_by_prio"), ("prio", "alua"), ("failback", "immediate"), ("no_path_retry", "30")]),
    // END generated
];

/// The built-in blacklist as data.
#[derive(Debug, Clone, Copy)]
pub struct BuiltinBlacklist {
    pub devnode: &'static [&'static str],
    pub wwid: &'static [&'static str],
    pub property: &'static [&'static str],
    pub protocol: &'static [&'static str],
    /// (vendor, product)
    pub device: &'static [(&'static str, &'static str)],
}

/// multipath-tools' built-in blacklist. The devnode entry excludes every
/// device node except sd*, dasd* and nvme*; it does not apply to umpath's
/// declared paths, which have no device node. Its `device` entries come
/// from the hardware table's `product_blacklist` values (see
/// [`Config::effective_blacklist`](crate::config::Config::effective_blacklist)).
pub static BUILTIN_BLACKLIST: BuiltinBlacklist = BuiltinBlacklist {
    devnode: &["!^(sd[a-z]|dasd[a-z]|nvme[0-9])"],
    wwid: &[],
    property: &[],
    protocol: &[],
    device: &[],
};

/// multipath-tools' built-in blacklist exceptions. The property entry only
/// concerns udev devices; it does not apply to declared paths.
pub static BUILTIN_BLACKLIST_EXCEPTIONS: BuiltinBlacklist = BuiltinBlacklist {
    devnode: &[],
    wwid: &[],
    property: &["(SCSI_IDENT_|ID_WWN)"],
    protocol: &[],
    device: &[],
};

/// File name used in spans of built-in hwtable data.
pub const BUILTIN_HWTABLE_FILE: &str = "(built-in hwtable)";
/// File name used in spans of built-in blacklist data.
pub const BUILTIN_BLACKLIST_FILE: &str = "(built-in blacklist)";

/// Problems found while compiling built-in data (a bug in the table; the
/// tests keep this empty). Entries with problems are skipped.
fn compile_entry(e: &HwEntry, span: &Span) -> Result<DeviceEntry, String> {
    let vendor = Pattern::new(e.vendor)?;
    let product = Pattern::new(e.product)?;
    let revision = e.revision.map(Pattern::new).transpose()?;
    let mut attrs = AttrMap::new();
    for (k, v) in e.attrs {
        let kw =
            lookup(k, Section::Device).ok_or_else(|| format!("unknown device keyword '{k}'"))?;
        // Warnings (e.g. a hardware-specific checker) are expected here and
        // only matter for the user's own entries.
        let (value, _warning) = kw.check(v)?;
        attrs.insert(
            kw.name,
            Assignment {
                keyword: kw.name,
                text: (*v).to_string(),
                value,
                span: span.clone(),
            },
        );
    }
    Ok(DeviceEntry {
        vendor,
        product,
        revision,
        attrs,
        span: span.clone(),
        builtin: true,
    })
}

fn compile_table(table: &[HwEntry]) -> (Vec<DeviceEntry>, Vec<String>) {
    let file: Arc<str> = Arc::from(BUILTIN_HWTABLE_FILE);
    let span = Span::new(&file, 0);
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for e in table {
        match compile_entry(e, &span) {
            Ok(d) => out.push(d),
            Err(msg) => problems.push(format!("{} {}: {msg}", e.vendor, e.product)),
        }
    }
    (out, problems)
}

/// The compiled patterns of the built-in table by text (vendor, product,
/// revision and product_blacklist), so that a file repeating them (such
/// as `show config` output read back) does not compile them again.
pub fn builtin_pattern(text: &str) -> Option<Pattern> {
    static CELL: OnceLock<std::collections::HashMap<String, Pattern>> = OnceLock::new();
    CELL.get_or_init(|| {
        let mut m = std::collections::HashMap::new();
        for d in builtin_devices() {
            for p in [Some(&d.vendor), Some(&d.product), d.revision.as_ref()]
                .into_iter()
                .flatten()
            {
                m.entry(p.as_str().to_string()).or_insert_with(|| p.clone());
            }
            if let Some(Assignment {
                value: super::keywords::Typed::Regex(p),
                ..
            }) = d.attrs.get("product_blacklist")
            {
                m.entry(p.as_str().to_string()).or_insert_with(|| p.clone());
            }
        }
        m
    })
    .get(text)
    .cloned()
}

/// Like [`builtin_pattern`], for blacklist patterns (a leading `!`
/// negates): the built-in blacklist's and those made from the table's
/// vendor and product_blacklist strings.
pub fn builtin_blacklist_pattern(text: &str) -> Option<Pattern> {
    static CELL: OnceLock<std::collections::HashMap<String, Pattern>> = OnceLock::new();
    CELL.get_or_init(|| {
        let mut texts: Vec<&str> = Vec::new();
        for b in [&BUILTIN_BLACKLIST, &BUILTIN_BLACKLIST_EXCEPTIONS] {
            texts.extend(
                b.devnode
                    .iter()
                    .chain(b.wwid)
                    .chain(b.property)
                    .chain(b.protocol),
            );
        }
        for e in BUILTIN_HWTABLE {
            if let Some((_, p)) = e.attrs.iter().find(|(k, _)| *k == "product_blacklist") {
                texts.push(e.vendor);
                texts.push(p);
            }
        }
        texts
            .into_iter()
            .filter_map(|t| Some((t.to_string(), Pattern::blacklist(t).ok()?)))
            .collect()
    })
    .get(text)
    .cloned()
}

/// The built-in device entries, compiled (once).
pub fn builtin_devices() -> &'static [DeviceEntry] {
    static CELL: OnceLock<Vec<DeviceEntry>> = OnceLock::new();
    CELL.get_or_init(|| compile_table(BUILTIN_HWTABLE).0)
}

fn compile_blacklist(b: &BuiltinBlacklist) -> Blacklist {
    let file: Arc<str> = Arc::from(BUILTIN_BLACKLIST_FILE);
    let span = Span::new(&file, 0);
    let entries = |list: &[&str]| -> Vec<BlacklistEntry> {
        list.iter()
            .filter_map(|t| Pattern::blacklist(t).ok())
            .map(|pattern| BlacklistEntry {
                pattern,
                span: span.clone(),
                builtin: true,
            })
            .collect()
    };
    Blacklist {
        devnode: entries(b.devnode),
        wwid: entries(b.wwid),
        property: entries(b.property),
        protocol: entries(b.protocol),
        device: b
            .device
            .iter()
            .filter_map(|(v, p)| {
                Some(BlacklistDevice {
                    vendor: Some(Pattern::blacklist(v).ok()?),
                    product: Some(Pattern::blacklist(p).ok()?),
                    span: span.clone(),
                    builtin: true,
                    from_product_blacklist: false,
                })
            })
            .collect(),
    }
}

/// The built-in blacklist, compiled (once).
pub fn builtin_blacklist() -> &'static Blacklist {
    static CELL: OnceLock<Blacklist> = OnceLock::new();
    CELL.get_or_init(|| compile_blacklist(&BUILTIN_BLACKLIST))
}

/// The built-in blacklist exceptions, compiled (once).
pub fn builtin_blacklist_exceptions() -> &'static Blacklist {
    static CELL: OnceLock<Blacklist> = OnceLock::new();
    CELL.get_or_init(|| compile_blacklist(&BUILTIN_BLACKLIST_EXCEPTIONS))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::keywords::Typed;
    use crate::config::sections::PathIdentity;
    use crate::policy::CheckerKind;

    #[test]
    fn table_compiles_cleanly() {
        let (entries, problems) = compile_table(BUILTIN_HWTABLE);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(entries.len(), BUILTIN_HWTABLE.len());
        assert_eq!(builtin_devices().len(), BUILTIN_HWTABLE.len());
    }

    #[test]
    fn blacklists_compile_cleanly() {
        let b = builtin_blacklist();
        assert_eq!(b.devnode.len(), BUILTIN_BLACKLIST.devnode.len());
        assert_eq!(b.device.len(), BUILTIN_BLACKLIST.device.len());
        assert!(!b.devnode[0].pattern.is_match("sda"));
        assert!(b.devnode[0].pattern.is_match("loop0"));
        let e = builtin_blacklist_exceptions();
        assert_eq!(e.property.len(), 1);
    }

    #[test]
    fn hardware_checker_runs_as_tur() {
        let dell = builtin_devices()
            .iter()
            .find(|d| d.vendor.as_str() == "DELL")
            .unwrap();
        assert_eq!(
            dell.attrs["path_checker"].value,
            Typed::Checker {
                kind: CheckerKind::Tur,
                name: "rdac".into()
            }
        );
    }

    #[test]
    fn no_osnexus_entry() {
        let id = PathIdentity {
            vendor: "OSNEXUS",
            product: "QUANTASTOR",
            revision: "0001",
            wwid: "x",
        };
        assert!(!builtin_devices().iter().any(|d| d.matches(&id)));
    }
}
