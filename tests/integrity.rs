//! The promise, under failure: nothing acknowledged is lost, and no error
//! reaches a client while a path works.

// A test crate: a failed unwrap, expect or panic is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use umpath::nbd::uri::NbdUri;
use umpath::transport::nbd::NbdTransport;

fn daemon(size: u64, extra_defaults: &str) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("lun0.img");
    make_image(&img, size);
    let defaults = format!("    polling_interval 1\n    checker_timeout 5\n{extra_defaults}");
    Daemon::start_in(
        dir,
        &seed_config(&defaults, &[file_path("p0", &img), file_path("p1", &img)]),
    )
}

/// Fails and restores the two paths in turn, one step a second, until
/// `stop`; a path is failed only once the other one carries IO again.
fn flapper(d: &Daemon, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u32> {
    let ctl = d.control_socket.clone();
    std::thread::spawn(move || {
        let umpath = |args: &[&str]| {
            Command::new(BIN)
                .arg("--control-socket")
                .arg(&ctl)
                .args(args)
                .output()
                .expect("umpath")
        };
        let active = |name: &str| -> bool {
            let out = umpath(&["show", "paths", "--json"]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            v.as_array()
                .into_iter()
                .flatten()
                .any(|p| p["name"] == name && p["dm_state"] == "active")
        };
        let mut flips = 0;
        let mut i = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let (victim, other) = if i % 2 == 0 {
                ("p0", "p1")
            } else {
                ("p1", "p0")
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while !active(other) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            umpath(&["fault", "path", victim, "error"]);
            std::thread::sleep(Duration::from_millis(1000));
            umpath(&["fault", "path", victim, "clear"]);
            flips += 1;
            i += 1;
        }
        umpath(&["fault", "path", "p0", "clear"]);
        umpath(&["fault", "path", "p1", "clear"]);
        flips
    })
}

#[test]
fn fio_verify_while_paths_fail_and_recover_every_second_for_a_minute() {
    need("fio");
    let d = daemon(256 << 20, "    no_path_retry queue");
    let stop = Arc::new(AtomicBool::new(false));
    let flap = flapper(&d, stop.clone());
    let out = run(Command::new("fio").args([
        "--name=flap",
        "--ioengine=nbd",
        &format!("--uri={}", d.uri("lun0")),
        "--rw=randwrite",
        "--bs=4k",
        "--iodepth=16",
        "--size=128M",
        "--time_based",
        "--runtime=60",
        "--rate_iops=2000",
        "--verify=crc32c",
        "--verify_backlog=1024",
        "--verify_fatal=1",
        "--verify_state_save=0",
        "--output-format=json",
    ]));
    stop.store(true, Ordering::Relaxed);
    let flips = flap.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fio failed: {}\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log_text()
    );
    let v: serde_json::Value =
        serde_json::from_str(&stdout[stdout.find('{').unwrap_or(0)..]).unwrap();
    assert_eq!(v["jobs"][0]["error"], 0, "{stdout}");
    assert!(flips >= 20, "only {flips} path failures in a minute");
    let failures: u64 = d
        .paths_json()
        .iter()
        .map(|p| p["failures"].as_u64().unwrap_or(0))
        .sum();
    assert!(failures >= 20, "paths failed only {failures} times");
}

fn md5sum_tree(root: &Path) -> BTreeMap<PathBuf, String> {
    let out = run_ok(
        Command::new("sh")
            .arg("-c")
            .arg("find . -type f -print0 | sort -z | xargs -0 md5sum")
            .current_dir(root),
    );
    out.lines()
        .filter_map(|l| l.split_once("  "))
        .map(|(sum, name)| (PathBuf::from(name), sum.to_string()))
        .collect()
}

struct Cleanup(Vec<Command>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in self.0.iter_mut().rev() {
            let _ = c.stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
    }
}

#[test]
fn ext4_on_the_export_survives_failing_paths_and_fscks_clean() {
    for b in ["nbdfuse", "mkfs.ext4", "fsck.ext4", "losetup", "mount"] {
        need(b);
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "needs root for loop devices and mount (CI runs as root)"
    );
    let d = daemon(512 << 20, "    no_path_retry queue");
    let work = d.dir.path().to_path_buf();
    let fuse_dir = work.join("fuse");
    let mnt = work.join("mnt");
    let src = work.join("src");
    for p in [&fuse_dir, &mnt, &src] {
        std::fs::create_dir_all(p).unwrap();
    }
    // A tree of files to copy in: varied sizes, recognisable content.
    run_ok(Command::new("sh").arg("-c").arg(
        "for i in $(seq 1 120); do mkdir -p d$((i % 7)); head -c $((i * 2719 + (i % 5) * 65536)) /dev/urandom > d$((i % 7))/f$i; done",
    ).current_dir(&src));
    let mut fuse: Child = Command::new("nbdfuse")
        .arg(&fuse_dir)
        .arg(d.uri("lun0"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nbdfuse");
    let image = fuse_dir.join("nbd");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !image.exists() {
        assert!(
            Instant::now() < deadline,
            "nbdfuse did not expose {}",
            image.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut cleanup = Cleanup(vec![{
        let mut c = Command::new("fusermount3");
        c.arg("-u").arg(&fuse_dir);
        c
    }]);
    let lo = run_ok(
        Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&image),
    )
    .trim()
    .to_string();
    cleanup.0.push({
        let mut c = Command::new("losetup");
        c.args(["-d", &lo]);
        c
    });
    run_ok(Command::new("mkfs.ext4").args(["-q", "-F", &lo]));
    run_ok(Command::new("mount").arg(&lo).arg(&mnt));
    cleanup.0.push({
        let mut c = Command::new("umount");
        c.arg(&mnt);
        c
    });
    let stop = Arc::new(AtomicBool::new(false));
    let flap = flapper(&d, stop.clone());
    run_ok(
        Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", src.display()))
            .arg(&mnt),
    );
    run_ok(&mut Command::new("sync"));
    stop.store(true, Ordering::Relaxed);
    let flips = flap.join().unwrap();
    assert!(flips >= 1, "no path failed during the copy");
    run_ok(Command::new("umount").arg(&mnt));
    let fsck = run(Command::new("fsck.ext4").args(["-fn", &lo]));
    assert!(
        fsck.status.success(),
        "fsck: {}\n{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    run_ok(Command::new("mount").arg(&lo).arg(&mnt));
    assert_eq!(
        md5sum_tree(&src),
        md5sum_tree(&mnt),
        "file contents differ after failover"
    );
    drop(cleanup);
    let _ = fuse.kill();
    let _ = fuse.wait();
}

#[test]
fn ten_seconds_with_no_path_and_queue_stall_then_complete() {
    need("qemu-io");
    let d = daemon(16 << 20, "    no_path_retry queue");
    run_ok(Command::new("qemu-io").args(["-f", "raw", "-c", "write -P 0x21 0 1M", &d.uri("lun0")]));
    d.ctl_ok(&["fault", "path", "p0", "error"]);
    d.ctl_ok(&["fault", "path", "p1", "error"]);
    let mut child = Command::new("qemu-io")
        .args([
            "-f",
            "raw",
            "-c",
            "write -P 0x22 1M 1M",
            "-c",
            "read -P 0x21 0 1M",
            "-c",
            "read -P 0x22 1M 1M",
            &d.uri("lun0"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "IO finished while no path was usable"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    d.ctl_ok(&["fault", "path", "p0", "clear"]);
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && !text.contains("error") && !text.contains("failed"),
        "{text}"
    );
}

#[test]
fn sigkill_mid_write_loses_no_acknowledged_write() {
    let mut d = daemon(64 << 20, "");
    let client = NbdTransport::new(
        NbdUri::parse(&d.uri("lun0")).unwrap(),
        Duration::from_secs(10),
    );
    let acked = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let acked = acked.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            // Block n holds n in every byte position's u64 slot.
            for n in 0u64..16384 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let block: Vec<u8> = std::iter::repeat_n(n.to_le_bytes(), 512)
                    .flatten()
                    .collect();
                match client.write_at(&block, n * 4096, false) {
                    Ok(()) => acked.lock().unwrap().push(n),
                    Err(_) => break,
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(700));
    let pid = d.child.id() as i32;
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 100,
        "too few writes before the kill: {}",
        acked.len()
    );
    // The same configuration and image, a new daemon.
    d.restart();
    let reader = NbdTransport::new(
        NbdUri::parse(&d.uri("lun0")).unwrap(),
        Duration::from_secs(10),
    );
    let mut buf = vec![0u8; 4096];
    for n in acked {
        reader.read_at(&mut buf, n * 4096).unwrap();
        let expect: Vec<u8> = std::iter::repeat_n(n.to_le_bytes(), 512)
            .flatten()
            .collect();
        assert!(
            buf == expect,
            "acknowledged write of block {n} lost after SIGKILL"
        );
    }
}
