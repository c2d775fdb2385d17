//! umpath attaches the kernel's NBD client itself (issue 11, items 1–3),
//! in the busybox VM of `tests/vm_scsi.rs` (Debian's cloud kernel, nbd.ko
//! loaded by the guest's /init): one LUN over two virtio-scsi paths,
//! discovered by `umpath daemon --scsi`, named `lun0` by a multipaths
//! alias.
//!
//! One boot, in order: `umpath attach lun0` → /dev/nbd0 with the LUN's
//! size and the /dev/umpath/lun0 link; a pattern written with dd and read
//! back by md5; a reader loop running while umpath is stopped with SIGTERM
//! and started again (the device waits within its dead-connection timeout,
//! the new daemon reconnects it before READY): no error, data intact; a
//! path taken offline under dd: no error; `umpath detach lun0` refused
//! while an ext2 filesystem on it is mounted; after umount the device is
//! gone.

// A test crate: a failed unwrap, expect or panic is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod vm;

use std::time::{Duration, Instant};

use vm::{Vm, VmOptions, WWID};

const IMAGE_SIZE: u64 = 256 << 20;

fn conf() -> String {
    format!(
        "defaults {{\n    polling_interval 1\n    umpath_nbd_dead_conn_timeout 60\n    umpath_nbd_connections 2\n}}\n\
         devices {{\n{}}}\n\
         multipaths {{\n    multipath {{\n        wwid {WWID}\n        alias lun0\n    }}\n}}\n",
        umpath::config::QUANTASTOR_DEVICE
    )
}

fn step(what: &str) {
    static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let t0 = T0.get_or_init(Instant::now);
    eprintln!("[{:6.1}s] {what}", t0.elapsed().as_secs_f64());
}

fn map_device(vm: &Vm) -> serde_json::Value {
    let maps = vm.umpath_json("show maps");
    maps.as_array()
        .and_then(|a| a.iter().find(|m| m["name"] == "lun0").cloned())
        .unwrap_or_else(|| panic!("no map lun0: {maps}"))["nbd_device"]
        .clone()
}

/// The md5 of the first 16 MiB of /dev/nbd0 read past the page cache
/// (busybox dd has iflag=direct).
const READ_MD5: &str =
    "dd if=/dev/nbd0 bs=1M count=16 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1";

/// A reader loop in the guest (in the background, past the command's
/// end): reads the pattern again and again, logs `ok`, `BAD` (wrong data)
/// or `ERR` (a read error) per round to /tmp/reader.log until /tmp/stop.
fn start_reader(vm: &Vm, sum: &str) {
    vm.sh_ok(&format!(
        "cat > /tmp/reader.sh <<'EOF'\n\
         while [ ! -f /tmp/stop ]; do\n\
           if ! dd if=/dev/nbd0 of=/tmp/rd bs=1M count=16 iflag=direct 2>/tmp/rd.err; then echo ERR >> /tmp/reader.log; cat /tmp/rd.err >> /tmp/reader.log; continue; fi\n\
           if [ \"$(md5sum < /tmp/rd | cut -d' ' -f1)\" = {sum} ]; then echo ok >> /tmp/reader.log; else echo BAD >> /tmp/reader.log; fi\n\
         done\n\
         echo done >> /tmp/reader.log\n\
         EOF\n\
         rm -f /tmp/stop /tmp/reader.log; : > /tmp/reader.log\n\
         setsid sh /tmp/reader.sh < /dev/null > /dev/null 2>&1 &"
    ));
}

/// Shell function for guest scripts: `wait_rounds N SECS` waits until the
/// reader logged N good rounds (fails after SECS).
const WAIT_ROUNDS: &str = "wait_rounds() { n=0; until [ $(grep -c ^ok /tmp/reader.log) -ge $1 ]; do sleep 0.5; n=$((n+1)); [ $n -lt $(($2 * 2)) ] || return 1; done; }";

/// Guest script tail: stop the reader, print its log.
const STOP_READER: &str = "touch /tmp/stop; n=0; until grep -q done /tmp/reader.log; do sleep 0.2; n=$((n+1)); [ $n -lt 300 ] || exit 16; done; echo rounds=$(grep -c ^ok /tmp/reader.log); cat /tmp/reader.log";

/// Runs a guest script that must succeed within `secs`; its output.
fn guest_script(vm: &Vm, script: &str, secs: u64) -> String {
    let o = vm.sh_timeout(script, Duration::from_secs(secs));
    assert_eq!(
        o.rc,
        0,
        "guest script failed (rc {}):\n{}\n--- reader ---\n{}\n--- umpath.log ---\n{}",
        o.rc,
        o.out,
        vm.sh("cat /tmp/reader.log").out,
        vm.sh("tail -n 30 /run/umpath.log").out
    );
    o.out
}

/// The reader's log (in `out`) has only good rounds.
fn check_reader(vm: &Vm, out: &str, what: &str) {
    let bad: Vec<&str> = out
        .lines()
        .filter(|l| *l == "BAD" || *l == "ERR" || l.contains("rror"))
        .collect();
    assert!(bad.is_empty(), "{what}: the reader saw errors: {out}");
    let facts: Vec<&str> = out.lines().filter(|l| l.contains('=')).collect();
    eprintln!("{what}: {}, no error", facts.join(", "));
    let _ = vm;
}

#[test]
fn vm_kernel_nbd_attach_restart_failover_detach() {
    let t0 = Instant::now();
    step("boot");
    let vm = Vm::boot(VmOptions {
        name: "kernel-nbd".to_string(),
        multipath_conf: conf(),
        image_size: IMAGE_SIZE,
        prepare_image: |_| {},
        append: "vm.scsi".to_string(),
        extra_modules: "",
    });
    for p in ["sda", "sdb"] {
        vm.wait_path(p, "ready and active", Duration::from_secs(30), |p| {
            p["dm_state"] == "active" && p["state"] == "ready"
        });
    }
    assert_eq!(map_device(&vm), serde_json::Value::Null, "no device yet");
    // Keep kernel chatter (info, notices, warnings) off the serial console;
    // errors and worse still show.
    vm.sh_ok("dmesg -n 4");

    step("attach");
    let out = vm.sh_ok("umpath attach lun0 2>&1");
    assert!(out.contains("/dev/nbd0"), "{out}");
    let size: u64 = vm.sh_ok("cat /sys/block/nbd0/size").trim().parse().unwrap();
    assert_eq!(size * 512, IMAGE_SIZE, "the device has the LUN's size");
    assert_eq!(vm.sh_ok("readlink /dev/umpath/lun0").trim(), "../nbd0");
    assert_eq!(
        vm.sh_ok(&format!("readlink /dev/disk/by-id/umpath-mpath-{WWID}"))
            .trim(),
        "../../nbd0"
    );
    assert_eq!(map_device(&vm), "/dev/nbd0");
    let text = vm.sh_ok("umpath show maps");
    assert!(text.contains("/dev/nbd0"), "{text}");
    // A second attach of the same map, and a device in use, are refused.
    let again = vm.sh("umpath attach lun0 2>&1");
    assert_ne!(again.rc, 0, "{}", again.out);
    assert!(again.out.contains("already attached"), "{}", again.out);
    let state = vm.sh_ok("cat /run/umpath/nbd-devices.json");
    assert!(
        state.contains("\"lun0\"") && state.contains(WWID),
        "{state}"
    );
    let backend = vm.sh("cat /sys/block/nbd0/backend 2>/dev/null").out;
    eprintln!("backend: {}", backend.trim());
    let conns = vm.sh_ok("ls /sys/block/nbd0/ 2>&1; cat /sys/block/nbd0/pid");
    eprintln!("sysfs: {}", conns.replace('\n', " "));

    step("write a pattern through /dev/umpath/lun0, read it back");
    // 1 MiB of random bytes (urandom is slow under TCG), 16 copies each
    // shifted by a different prefix: no two MiB of the pattern are alike.
    let pat = vm.sh_timeout(
        "dd if=/dev/urandom of=/tmp/r bs=64k count=16 2>/dev/null && \
         for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17; do echo \"block $i\"; cat /tmp/r; done | head -c 16777216 > /tmp/pat && \
         md5sum < /tmp/pat | cut -d' ' -f1",
        Duration::from_secs(120),
    );
    assert_eq!(pat.rc, 0, "{}", pat.out);
    let sum = pat.out.trim().to_string();
    vm.sh_ok("dd if=/tmp/pat of=/dev/umpath/lun0 bs=1M conv=fsync 2>&1");
    assert_eq!(vm.sh_ok(READ_MD5).trim(), sum, "read back through nbd0");
    // And on the LUN itself, through one of its SCSI paths.
    assert_eq!(
        vm.sh_ok("dd if=/dev/sda bs=1M count=16 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1")
            .trim(),
        sum,
        "the data reached the LUN"
    );

    // The restart and crash steps run as one guest script each: few
    // commands on the serial channel while the guest is busy (see
    // tests/vm/README.md, "Known flake").
    step("large requests, discard");
    // Requests up to 4 MiB (the kernel's own limit is 32 MiB).
    let out = vm.sh_ok(
        "cat /sys/block/nbd0/queue/max_hw_sectors_kb && echo 4096 > /sys/block/nbd0/queue/max_sectors_kb && \
         dd if=/tmp/pat of=/dev/nbd0 bs=4M seek=16 oflag=direct conv=fsync 2>&1 && \
         dd if=/dev/nbd0 bs=4M skip=16 count=4 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1",
    );
    assert_eq!(out.lines().last().unwrap_or("").trim(), sum, "{out}");
    // Discard, if the map's paths can (the kernel is told SEND_TRIM only
    // then, and the queue advertises it).
    let discard: u64 = vm
        .sh_ok("cat /sys/block/nbd0/queue/discard_max_bytes")
        .trim()
        .parse()
        .unwrap();
    let d = vm.sh("blkdiscard -o 67108864 -l 16777216 /dev/nbd0 2>&1");
    eprintln!(
        "discard_max_bytes {discard}; blkdiscard rc {} {}",
        d.rc,
        d.out.trim()
    );
    if discard > 0 {
        assert_eq!(d.rc, 0, "blkdiscard: {}", d.out);
    }
    assert!(
        vm.sh_ok("grep -c 'connections=2' /run/umpath.log").trim() != "0",
        "two connections"
    );

    step("restart umpath (SIGTERM) under a reader loop");
    start_reader(&vm, &sum);
    let out = guest_script(
        &vm,
        &format!(
            "{WAIT_ROUNDS}\n\
             wait_rounds 2 30 || exit 11\n\
             t0=$(date +%s)\n\
             pid=$(cat /run/umpath.pid); kill -TERM $pid\n\
             n=0; while kill -0 $pid 2>/dev/null; do sleep 0.1; n=$((n+1)); [ $n -lt 200 ] || exit 12; done\n\
             echo stopped_after=$(( $(date +%s) - t0 ))\n\
             [ \"$(cat /sys/block/nbd0/size)\" = {sectors} ] || exit 13\n\
             sleep 2\n\
             before=$(grep -c ^ok /tmp/reader.log)\n\
             /bin/umpath-start\n\
             n=0; until umpath show maps --json 2>/dev/null | grep -q /dev/nbd0; do sleep 0.5; n=$((n+1)); [ $n -lt 60 ] || exit 14; done\n\
             echo away=$(( $(date +%s) - t0 ))\n\
             wait_rounds $((before + 3)) 60 || exit 15\n\
             {STOP_READER}",
            sectors = IMAGE_SIZE / 512
        ),
        150,
    );
    check_reader(&vm, &out, "SIGTERM");
    assert!(
        vm.sh_ok("cat /run/umpath.log")
            .contains("reconnected the kernel NBD device"),
        "{}",
        vm.sh_ok("tail -n 30 /run/umpath.log")
    );
    assert_eq!(vm.sh_ok(READ_MD5).trim(), sum, "data intact after restart");

    step("SIGKILL umpath under the reader loop, start it again");
    start_reader(&vm, &sum);
    // A request the killed daemon had read but not answered is retried by
    // the kernel on the new connection when its timer fires (30 s).
    let out = guest_script(
        &vm,
        &format!(
            "{WAIT_ROUNDS}\n\
             wait_rounds 2 30 || exit 11\n\
             t0=$(date +%s)\n\
             kill -KILL $(cat /run/umpath.pid)\n\
             sleep 1\n\
             before=$(grep -c ^ok /tmp/reader.log)\n\
             /bin/umpath-start\n\
             n=0; until umpath show maps --json 2>/dev/null | grep -q /dev/nbd0; do sleep 0.5; n=$((n+1)); [ $n -lt 60 ] || exit 14; done\n\
             wait_rounds $((before + 2)) 80 || exit 15\n\
             echo resumed_after=$(( $(date +%s) - t0 ))\n\
             {STOP_READER}"
        ),
        170,
    );
    check_reader(&vm, &out, "SIGKILL");
    assert_eq!(
        vm.sh_ok(READ_MD5).trim(),
        sum,
        "data intact after the crash"
    );

    step("a path goes offline under dd");
    let out = guest_script(
        &vm,
        "cat > /tmp/writer.sh <<'EOF'\n\
         while [ ! -f /tmp/wstop ]; do\n\
           if dd if=/tmp/pat of=/dev/nbd0 bs=1M seek=32 oflag=direct conv=fsync 2>/tmp/wr.err; then echo ok >> /tmp/writer.log; else echo ERR >> /tmp/writer.log; cat /tmp/wr.err >> /tmp/writer.log; fi\n\
         done\n\
         echo done >> /tmp/writer.log\n\
         EOF\n\
         rm -f /tmp/wstop; : > /tmp/writer.log\n\
         setsid sh /tmp/writer.sh < /dev/null > /dev/null 2>&1 &\n\
         rounds() { grep -c ^ok /tmp/writer.log; }\n\
         n=0; until [ $(rounds) -ge 1 ]; do sleep 0.5; n=$((n+1)); [ $n -lt 60 ] || exit 11; done\n\
         echo offline > /sys/block/sdb/device/state\n\
         n=0; until umpath show paths | grep sdb | grep -q failed; do sleep 0.5; n=$((n+1)); [ $n -lt 40 ] || exit 12; done\n\
         r=$(rounds); n=0; until [ $(rounds) -ge $((r + 2)) ]; do sleep 0.5; n=$((n+1)); [ $n -lt 120 ] || exit 13; done\n\
         echo running > /sys/block/sdb/device/state\n\
         touch /tmp/wstop; n=0; until grep -q done /tmp/writer.log; do sleep 0.2; n=$((n+1)); [ $n -lt 300 ] || exit 14; done\n\
         echo writes=$(rounds)\n\
         cat /tmp/writer.log",
        150,
    );
    assert!(!out.contains("ERR"), "writer saw errors: {out}");
    vm.wait_path("sdb", "reinstated", Duration::from_secs(20), |p| {
        p["dm_state"] == "active" && p["state"] == "ready"
    });
    assert_eq!(
        vm.sh_ok(
            "dd if=/dev/nbd0 bs=1M skip=32 count=16 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1"
        )
        .trim(),
        sum,
        "data written while a path was offline"
    );

    step("a filesystem on /dev/umpath/lun0; detach refused while mounted");
    vm.sh_ok(
        "mke2fs -q /dev/umpath/lun0 2>&1 && mkdir -p /mnt/lun0 && mount /dev/umpath/lun0 /mnt/lun0 && \
         cp /tmp/pat /mnt/lun0/pat && sync",
    );
    let refused = vm.sh("umpath detach lun0 2>&1");
    assert_ne!(refused.rc, 0, "{}", refused.out);
    assert!(refused.out.contains("in use"), "{}", refused.out);
    vm.sh_ok("umount /mnt/lun0 && mount /dev/umpath/lun0 /mnt/lun0");
    assert_eq!(
        vm.sh_ok("md5sum < /mnt/lun0/pat | cut -d' ' -f1").trim(),
        sum,
        "a file on the filesystem"
    );
    vm.sh_ok("umount /mnt/lun0");

    step("the LUN grows: resize map lun0 grows nbd0");
    let grown = IMAGE_SIZE + (64 << 20);
    for node in ["drive0", "drive1"] {
        vm.qmp(
            "block_resize",
            serde_json::json!({ "node-name": node, "size": grown }),
        );
    }
    vm.sh_ok("for d in /sys/block/sd*/device/rescan; do echo 1 > $d; done");
    vm.wait_for("the disks' new size", Duration::from_secs(15), || {
        vm.sh_ok("cat /sys/block/sda/size /sys/block/sdb/size")
            .lines()
            .all(|l| l.trim() == (grown / 512).to_string())
    });
    let out = vm.sh_ok("umpath resize map lun0 2>&1");
    eprintln!("{out}");
    assert_eq!(
        vm.sh_ok("cat /sys/block/nbd0/size").trim(),
        (grown / 512).to_string(),
        "the kernel device has the new size: {out}"
    );
    // Past the old end, through the kernel device, and back.
    let tail_sum = vm.sh_ok(&format!(
        "dd if=/tmp/pat of=/dev/umpath/lun0 bs=1M count=1 seek={} oflag=direct conv=fsync status=none && \
         dd if=/dev/umpath/lun0 bs=1M count=1 skip={} iflag=direct status=none | md5sum | cut -d' ' -f1",
        IMAGE_SIZE >> 20,
        IMAGE_SIZE >> 20
    ));
    assert_eq!(
        tail_sum.trim(),
        vm.sh_ok("head -c 1048576 /tmp/pat | md5sum | cut -d' ' -f1")
            .trim(),
        "data past the old end"
    );

    step("detach");
    let out = vm.sh_ok("umpath detach lun0 2>&1");
    assert!(out.contains("detached"), "{out}");
    vm.wait_for("nbd0 empty", Duration::from_secs(10), || {
        vm.sh_ok("cat /sys/block/nbd0/size").trim() == "0"
    });
    assert_ne!(vm.sh("test -e /dev/umpath/lun0").rc, 0, "link removed");
    assert_ne!(
        vm.sh("test -e /run/umpath/nbd-devices.json").rc,
        0,
        "record removed"
    );
    assert_eq!(map_device(&vm), serde_json::Value::Null);
    let again = vm.sh("umpath detach lun0 2>&1");
    assert_ne!(again.rc, 0, "{}", again.out);

    step("umpath_nbd_device auto + reconfigure attaches; shutdown --detach");
    vm.sh_ok(
        "awk '{ print } /^defaults/ { print \"    umpath_nbd_device auto\" }' /etc/multipath.conf > /tmp/mp.conf && \
         cp /tmp/mp.conf /etc/multipath.conf && umpath reconfigure",
    );
    vm.wait_for(
        "nbd0 attached by the config",
        Duration::from_secs(15),
        || vm.sh_ok("cat /sys/block/nbd0/size").trim() == (grown / 512).to_string(),
    );
    assert_eq!(map_device(&vm), "/dev/nbd0");
    let out = vm.sh_ok("umpath shutdown --detach 2>&1");
    assert!(out.contains("detached"), "{out}");
    vm.sh_ok("pid=$(cat /run/umpath.pid); n=0; while kill -0 $pid 2>/dev/null && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done");
    assert_eq!(vm.sh_ok("cat /sys/block/nbd0/size").trim(), "0");
    assert_ne!(vm.sh("test -e /dev/umpath/lun0").rc, 0, "link removed");
    eprintln!(
        "vm kernel-nbd: boot {:.1?}, total {:.1?}",
        vm.boot_time,
        t0.elapsed()
    );
}
