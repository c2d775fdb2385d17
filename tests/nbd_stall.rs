//! The failover stall on `nbd` paths when the upstream hangs (SIGSTOP):
//! found by `benches/stall.sh` (issue 13, item 6).

// A test crate: a failed unwrap, expect or panic is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// An nbdkit (file plugin) on a Unix socket, killed on drop.
struct Kit(Child);

impl Kit {
    fn start(socket: &Path, image: &Path) -> Kit {
        let child = spawn_nbdkit(socket, &[Path::new("file"), image]);
        wait_for_path(socket, "nbdkit");
        Kit(child)
    }

    fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.0.id() as i32, sig);
        }
    }
}

impl Drop for Kit {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Writes at depth 8 on a `failover` map of two nbd paths; the active
/// upstream is stopped. Writes stuck on it are held until their socket
/// times out (checker_timeout, 2 s, as io_timeout) and are then reissued
/// on the other path: no write should wait much longer than that.
///
/// Found by the bench: the worst write took two timeouts (about 4 s),
/// because the requests queued to the path's IO threads behind the stuck
/// ones were still sent to the stopped server after the path failed, and
/// waited a timeout of their own. An IO thread now routes a queued job
/// elsewhere when its path has failed.
#[test]
fn a_stopped_upstream_stalls_writes_one_timeout_not_two() {
    stopped_upstream(2);
}

/// The same with checker_timeout 30 (its default) and io_timeout 2: an
/// `nbd` path's socket timeout is the smaller of the two, so held writes
/// are released after io_timeout, not after 30 s.
#[test]
fn io_timeout_bounds_an_nbd_paths_socket_timeout() {
    stopped_upstream(30);
}

fn stopped_upstream(checker_timeout: u32) {
    need("fio");
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("lun0.img");
    make_image(&image, 64 << 20);
    let mut kits = Vec::new();
    let mut paths = String::new();
    for i in 0..2 {
        let sock = dir.path().join(format!("kit{i}.sock"));
        kits.push(Kit::start(&sock, &image));
        paths += &format!(
            "    path {{\n        name p{i}\n        transport nbd\n        uri \"nbd+unix:///lun0?socket={}\"\n        vendor \"OSNEXUS\"\n        product \"QUANTASTOR\"\n        wwid \"{WWID}\"\n    }}\n",
            sock.display()
        );
    }
    let config = format!(
        "defaults {{\n    polling_interval 1\n    io_timeout 2\n    checker_timeout {checker_timeout}\n}}\ndevices {{\n{SEED_STANZA}}}\nmultipaths {{\n    multipath {{\n        wwid \"{WWID}\"\n        alias lun0\n        path_grouping_policy failover\n    }}\n}}\npaths {{\n{paths}}}\n"
    );
    let d = Daemon::start_in(dir, &config);
    let fio = Command::new("fio")
        .args([
            "--name=w",
            "--ioengine=nbd",
            &format!("--uri={}", d.uri("lun0")),
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=8",
            "--size=64M",
            "--time_based",
            "--runtime=8",
            "--norandommap",
            "--continue_on_error=all",
            "--output-format=json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start fio");
    std::thread::sleep(Duration::from_secs(2));
    let active = if d.ios("p0") >= d.ios("p1") { 0 } else { 1 };
    kits[active].signal(libc::SIGSTOP);
    let out = fio.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value =
        serde_json::from_str(&text[text.find('{').expect("fio JSON")..]).unwrap();
    let job = &json["jobs"][0];
    assert_eq!(job["total_err"], 0, "errors reached fio: {job}");
    let worst_s = job["write"]["lat_ns"]["max"].as_f64().unwrap() / 1e9;
    // One timeout (2 s) plus the 250 ms watchdog tick and scheduling slack.
    assert!(
        worst_s < 3.5,
        "worst write took {worst_s:.2} s with a 2 s timeout\n{}",
        d.log_text()
    );
}
