//! umpath against a real ALUA target (issue 12, item 7).
//!
//! The guest (Debian's cloud kernel under QEMU, see tests/vm) runs LIO,
//! the kernel's SCSI target, configured through configfs: one `iblock`
//! backstore on the guest's first QEMU disk, exported through two
//! `tcm_loop` targets. Each target's LUN sits in its own target port
//! group (`tpg_a` id 1, `tpg_b` id 2), so the guest sees one LUN as two
//! SCSI disks whose ALUA states the test sets at runtime by writing
//! `alua_access_state`. The kernel has no SCSI device handlers
//! (CONFIG_SCSI_DH is off), so the sense data of a standby or unavailable
//! port reaches umpath as the target sent it.
//!
//! umpath discovers the two disks (`--scsi`), groups them by priority with
//! the `alua` prioritizer (multipath-tools' built-in LIO-ORG entry:
//! group_by_prio, prio alua, failback immediate), and serves the map over
//! NBD to fio on the host, which writes and verifies all along:
//!
//! 1. A active/optimized, B standby: two groups (50 and 1), B is a ghost
//!    and carries no IO.
//! 2. The optimized state moves to B (B first, then A to standby): the
//!    groups are re-formed, IO moves to B, with no client error.
//! 3. B unavailable, A active/non-optimized: IO moves to A.
//! 4. `failback manual` (reconfigure): B comes back optimized; as with
//!    multipathd the groups are not re-formed and IO stays on A's group
//!    until `umpath switchgroup map NAME group 2` moves it.
//! 5. Transitions that take 3 s (`implicit_trans_secs`): both ports pass
//!    through transitioning while IO runs on B; then A is optimized, B a
//!    ghost, IO on A.
//!
//! The QEMU disks (vendor OSNEXUS) are blacklisted.

// A test crate: a failed unwrap, expect or panic is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod vm;

use std::time::{Duration, Instant};

use vm::fio::{FioLoop, Load};
use vm::lio::{self, Alua};
use vm::{Vm, VmOptions};

const IMAGE_SIZE: u64 = 256 << 20;

fn conf(failback: &str) -> String {
    format!(
        "defaults {{\n    polling_interval 1\n}}\n\
         blacklist {{\n    device {{\n        vendor \"OSNEXUS\"\n        product \".*\"\n    }}\n}}\n\
         devices {{\n    device {{\n        vendor \"LIO-ORG\"\n        product \".*\"\n        \
         no_path_retry 30\n{failback}    }}\n}}\n"
    )
}

/// Logs a test step with the time since the test started.
fn step(what: &str) {
    static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let t0 = T0.get_or_init(Instant::now);
    eprintln!("[{:6.1}s] {what}", t0.elapsed().as_secs_f64());
}

/// Adds target `t`'s port (and the backstore on sda the first time);
/// returns the disk it makes.
fn add_target(vm: &Vm, t: char) -> String {
    let before = vm.sh_ok(lio::LIST_DISKS);
    vm.sh_ok(&lio::add_target_script("/dev/sda", t));
    let mut disk = String::new();
    vm.wait_for(
        &format!("the disk of target {t}"),
        Duration::from_secs(30),
        || match vm
            .sh_ok(lio::LIST_DISKS)
            .lines()
            .find(|d| !before.lines().any(|b| b == *d))
        {
            Some(d) => {
                disk = d.to_string();
                true
            }
            None => false,
        },
    );
    disk
}

fn set_state(vm: &Vm, group: char, state: Alua) {
    step(&format!("tpg_{group} -> {state:?}"));
    vm.sh_ok(&lio::set_state_script(group, state));
}

fn ios(vm: &Vm, path: &str) -> u64 {
    vm.path(path)["ios"].as_u64().expect("ios is a number")
}

/// The map's groups as (prio, status, paths).
fn groups(vm: &Vm, map: &str) -> Vec<(u64, String, Vec<String>)> {
    let maps = vm.umpath_json("show maps");
    let m = maps
        .as_array()
        .and_then(|a| a.iter().find(|m| m["name"] == map))
        .cloned()
        .unwrap_or_else(|| panic!("no map {map} in {maps}"));
    m["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| {
            (
                g["prio"].as_u64().unwrap_or(0),
                g["status"].as_str().unwrap_or("").to_string(),
                g["paths"]
                    .as_array()
                    .expect("paths")
                    .iter()
                    .map(|p| p.as_str().unwrap_or("").to_string())
                    .collect(),
            )
        })
        .collect()
}

/// Waits until the map's groups are exactly `want` (prio, paths), in order.
fn wait_groups(vm: &Vm, map: &str, want: &[(u64, &str)], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let g = groups(vm, map);
        let got: Vec<(u64, String)> = g.iter().map(|(p, _, m)| (*p, m.join(","))).collect();
        if got.len() == want.len()
            && got
                .iter()
                .zip(want)
                .all(|((p, m), (wp, wm))| p == wp && m == wm)
        {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "{what}: groups not {want:?} after 30 s; now {g:?}\n--- guest /run/umpath.log ---\n{}",
                vm.sh("tail -n 40 /run/umpath.log").out
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Waits until `busy` serves IO while `idle` serves none, over a window
/// in which `busy` grows. Fails with fio's error if a run failed.
fn wait_io_only_on(vm: &Vm, fio: &FioLoop, busy: &str, idle: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        fio.check(vm, what);
        let (b0, i0) = (ios(vm, busy), ios(vm, idle));
        std::thread::sleep(Duration::from_millis(1500));
        let (b1, i1) = (ios(vm, busy), ios(vm, idle));
        if b1 > b0 && i1 == i0 {
            step(&format!("{what}: {busy} +{} IOs, {idle} +0", b1 - b0));
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "{what}: IO not only on {busy} after 40 s ({busy} +{}, {idle} +{})\n{}\n--- guest /run/umpath.log ---\n{}",
                b1 - b0,
                i1 - i0,
                vm.sh("umpath show topology").out,
                vm.sh("tail -n 40 /run/umpath.log").out
            );
        }
    }
}

#[test]
fn alua_groups_follow_the_target() {
    vm::need_qemu();
    common::need("fio");
    let vm = Vm::boot(VmOptions {
        name: "alua".to_string(),
        multipath_conf: conf(""),
        image_size: IMAGE_SIZE,
        prepare_image: |_| {},
        append: "vm.scsi vm.nodaemon".to_string(),
        extra_modules: "target_core_mod target_core_iblock tcm_loop",
    });

    step("LIO: backstore on sda, targets a and b");
    let a = add_target(&vm, 'a');
    let b = add_target(&vm, 'b');
    set_state(&vm, 'a', Alua::Optimized);
    set_state(&vm, 'b', Alua::Standby);
    step(&format!(
        "target a is {a}, target b is {b}; starting umpath"
    ));
    vm.sh_ok("umpath-start");
    vm.wait_for("umpath control socket", Duration::from_secs(60), || {
        vm.sh("umpath show status").rc == 0
    });
    let maps = vm.umpath_json("show maps");
    let map = maps
        .as_array()
        .and_then(|a| a.first())
        .map(|m| m["name"].as_str().unwrap_or("").to_string())
        .unwrap_or_else(|| panic!("no map: {maps}"));
    assert_eq!(maps.as_array().map(Vec::len), Some(1), "{maps}");
    assert_eq!(map, lio::WWID, "the map is named by the LUN's WWID");
    eprintln!("{}", vm.sh_ok("umpath show topology"));

    // 1. A optimized, B standby.
    wait_groups(&vm, &map, &[(50, &a), (1, &b)], "A optimized, B standby");
    vm.wait_path(&b, "a ghost", Duration::from_secs(15), |p| {
        p["state"] == "ghost"
    });
    assert_eq!(vm.path(&a)["prio"], 50);
    let fio = FioLoop::start_sized(vm.fio_uri(&map), Load::WriteVerify, IMAGE_SIZE, 1 << 20);
    wait_io_only_on(&vm, &fio, &a, &b, "IO on the optimized group only");

    // 2. The optimized state moves to B: failback immediate follows it.
    set_state(&vm, 'b', Alua::Optimized);
    set_state(&vm, 'a', Alua::Standby);
    wait_groups(&vm, &map, &[(50, &b), (1, &a)], "B optimized, A standby");
    wait_io_only_on(&vm, &fio, &b, &a, "IO follows the optimized state to B");
    vm.wait_path(&a, "a ghost", Duration::from_secs(15), |p| {
        p["state"] == "ghost"
    });

    // 3. B unavailable, A non-optimized: IO on A.
    set_state(&vm, 'a', Alua::NonOptimized);
    set_state(&vm, 'b', Alua::Unavailable);
    vm.wait_path(
        &b,
        "failed while unavailable",
        Duration::from_secs(15),
        |p| p["dm_state"] == "failed",
    );
    wait_io_only_on(&vm, &fio, &a, &b, "IO on the non-optimized path");
    assert_eq!(vm.path(&a)["prio"], 10);

    // 4. failback manual: B comes back optimized, IO stays on A until
    //    switchgroup.
    step("reconfigure: failback manual");
    vm.sh_ok(&format!(
        "cat > /etc/multipath.conf <<'EOF'\n{}EOF\numpath reconfigure",
        conf("        failback manual\n")
    ));
    set_state(&vm, 'b', Alua::Optimized);
    // As multipathd: under failback manual a priority change does not
    // re-form the groups (it reloads the map only for failback
    // immediate); B's group now has the higher priority but IO stays.
    wait_groups(&vm, &map, &[(10, &a), (50, &b)], "B back optimized");
    vm.wait_path(&b, "reinstated", Duration::from_secs(15), |p| {
        p["dm_state"] == "active" && p["state"] == "ready"
    });
    wait_io_only_on(&vm, &fio, &a, &b, "failback manual: IO stays on A");
    std::thread::sleep(Duration::from_secs(3));
    wait_io_only_on(&vm, &fio, &a, &b, "failback manual: still on A");
    step(&format!("umpath switchgroup map {map} group 2"));
    vm.sh_ok(&format!("umpath switchgroup map {map} group 2"));
    wait_io_only_on(&vm, &fio, &b, &a, "switchgroup moved IO to B");

    // 5. Transitions that take 3 s: B (IO's group) and A both pass
    //    through transitioning (IO and TUR get NOT READY 04/0A), then A
    //    is optimized and B standby. IO waits (no_path_retry queues) or
    //    moves; fio sees no error.
    step("transitions take 3 s; A -> optimized, B -> standby");
    vm.sh_ok(&lio::set_transition_script(3000));
    let t = Instant::now();
    vm.sh_ok(&lio::set_states_script(Alua::Optimized, Alua::Standby));
    step(&format!("both ports transitioned in {:.1?}", t.elapsed()));
    vm.wait_path(
        &b,
        "a ghost after its transition",
        Duration::from_secs(30),
        |p| p["state"] == "ghost",
    );
    wait_io_only_on(&vm, &fio, &a, &b, "after the transitions: IO on A");

    let runs = fio.finish(&vm);
    step(&format!("{runs} fio runs, all verified"));
    let topo = vm.sh_ok("umpath show topology");
    eprintln!("{topo}");
    let log = vm.sh_ok("cat /run/umpath.log");
    assert!(!log.contains("panicked"), "{log}");
}
