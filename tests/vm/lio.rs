//! LIO, the guest kernel's SCSI target, as an ALUA array for the VM tests:
//! shell scripts that build it through configfs (no targetcli needed).
//!
//! One `iblock` backstore on a guest block device, two port groups
//! (`tpg_a` id 1, `tpg_b` id 2, implicit ALUA so their states can be set),
//! and per target (`a`, `b`) a `tcm_loop` port in its group whose I_T
//! nexus makes one SCSI disk: one LUN, two paths, states set at runtime.
//! Needs the modules `target_core_mod target_core_iblock tcm_loop`.

/// The backstore's configfs directory.
pub const BACKSTORE: &str = "/sys/kernel/config/target/core/iblock_0/lun0";
/// The unit serial LIO derives VPD 0x80 and the NAA designator from.
pub const UNIT_SERIAL: &str = "0e5a1a7e-a1ua-4b1d-9c0d-000000000001";
/// The WWID `scsi_id` (and umpath, and multipathd) make of it.
pub const WWID: &str = "360014050e5a1a7ea1a4b1d9c0d000000";

/// ALUA access states as LIO's `alua_access_state` takes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alua {
    Optimized = 0,
    NonOptimized = 1,
    Standby = 2,
    Unavailable = 3,
}

/// Script: the backstore on `dev` and both port groups (once), then
/// target `t`'s port, linked to the LUN after its nexus (linking makes
/// tcm_loop scan it).
pub fn add_target_script(dev: &str, t: char) -> String {
    format!(
        r#"set -e
T=/sys/kernel/config/target
D={BACKSTORE}
grep -q configfs /proc/mounts || mount -t configfs none /sys/kernel/config
[ -d $T ] || {{ echo "no $T: target_core_mod not loaded"; exit 1; }}
if [ ! -d $D ]; then
  mkdir -p $D
  echo "udev_path={dev}" > $D/control
  echo {UNIT_SERIAL} > $D/wwn/vpd_unit_serial
  echo 1 > $D/enable
  for g in a:1 b:2; do
    mkdir $D/alua/tpg_${{g%:*}}
    echo ${{g#*:}} > $D/alua/tpg_${{g%:*}}/tg_pt_gp_id
    echo 1 > $D/alua/tpg_${{g%:*}}/alua_access_type
  done
fi
P=$T/loopback/naa.50014050000000{t}1/tpgt_1
mkdir -p $P
echo naa.50014050000000{t}2 > $P/nexus
mkdir $P/lun/lun_0
ln -s $D $P/lun/lun_0/backstore
echo tpg_{t} > $P/lun/lun_0/alua_tg_pt_gp
"#
    )
}

/// Script printing the guest's LIO disks (vendor LIO-ORG), one per line.
pub const LIST_DISKS: &str =
    "for d in /sys/block/sd*; do grep -q LIO-ORG $d/device/vendor 2>/dev/null && echo ${d##*/}; done | sort";

/// Script setting port group `group`'s (`a` or `b`) state.
pub fn set_state_script(group: char, state: Alua) -> String {
    format!(
        "echo {} > {BACKSTORE}/alua/tpg_{group}/alua_access_state",
        state as u8
    )
}

/// Script making state changes of both port groups pass through
/// transitioning for `ms` milliseconds (LIO's `trans_delay_msecs`, with
/// `implicit_trans_secs` reported to initiators to match): IO and TEST
/// UNIT READY get NOT READY, ASC/ASCQ 04/0A meanwhile. A state write
/// then blocks for that long.
pub fn set_transition_script(ms: u32) -> String {
    format!(
        "for g in a b; do echo {ms} > {BACKSTORE}/alua/tpg_$g/trans_delay_msecs && \
         echo {} > {BACKSTORE}/alua/tpg_$g/implicit_trans_secs; done",
        ms.div_ceil(1000)
    )
}

/// Script setting both groups' states at once (each write in the
/// background, as a transition delay makes it block).
pub fn set_states_script(a: Alua, b: Alua) -> String {
    format!(
        "echo {} > {BACKSTORE}/alua/tpg_a/alua_access_state & \
         echo {} > {BACKSTORE}/alua/tpg_b/alua_access_state & wait",
        a as u8, b as u8
    )
}
