//! A path whose device really hangs (no fault injection: a file on a FUSE
//! mount whose NBD server is paused) holds no umpath IO thread under the
//! io_uring engine, while the IO thread engine parks a thread on it; in
//! both, reads move to the other path after io_timeout and the hung path
//! comes back when the device does (issue 13, item 2).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const SIZE: u64 = 16 << 20;

/// nbdkit (file plugin, pause filter) on the image, seen as a file through
/// nbdfuse; torn down on drop.
struct Fused {
    kit: Child,
    fuse: Child,
    dir: PathBuf,
    ctl: PathBuf,
}

impl Fused {
    fn start(work: &Path, image: &Path) -> Fused {
        for b in ["nbdkit", "nbdfuse", "fusermount3"] {
            need(b);
        }
        let sock = work.join("kit.sock");
        let ctl = work.join("pause.sock");
        let pause = format!("pause-control={}", ctl.display());
        let kit = spawn_nbdkit(
            &sock,
            &[
                "--filter=pause".as_ref(),
                "file".as_ref(),
                image.as_os_str(),
                pause.as_ref(),
            ],
        );
        wait_for_path(&sock, "nbdkit");
        let dir = work.join("fuse");
        std::fs::create_dir_all(&dir).unwrap();
        let fuse = Command::new("nbdfuse")
            .arg(&dir)
            .arg("--unix")
            .arg(&sock)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nbdfuse");
        wait_for_path(&dir.join("nbd"), "nbdfuse");
        Fused {
            kit,
            fuse,
            dir,
            ctl,
        }
    }

    fn file(&self) -> PathBuf {
        self.dir.join("nbd")
    }

    /// Sends a pause-filter command and waits for its answer. A pause is
    /// answered once the requests before it are done.
    fn control(&self, c: u8) {
        let mut s = UnixStream::connect(&self.ctl).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(&[c]).unwrap();
        let mut a = [0u8; 1];
        s.read_exact(&mut a).unwrap();
        assert_eq!(a[0], c.to_ascii_uppercase());
    }
}

impl Drop for Fused {
    fn drop(&mut self) {
        let _ = UnixStream::connect(&self.ctl).and_then(|mut s| s.write_all(b"r"));
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.dir)
            .status();
        let _ = self.fuse.kill();
        let _ = self.fuse.wait();
        let _ = self.kit.kill();
        let _ = self.kit.wait();
    }
}

/// Thread names of a process, with where each waits in the kernel
/// (`wchan`).
fn thread_names(pid: u32) -> Vec<(String, String)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| {
            let t = t.ok()?.path();
            let comm = std::fs::read_to_string(t.join("comm")).ok()?;
            let wchan = std::fs::read_to_string(t.join("wchan")).unwrap_or_default();
            Some((comm.trim().to_string(), wchan.trim().to_string()))
        })
        .collect()
}

/// Waiting on the paused device: a FUSE request, or a page it is reading.
fn in_fuse(wchan: &str) -> bool {
    wchan.contains("fuse") || wchan.contains("request_wait") || wchan.contains("folio")
}

struct Seen {
    /// umpath IO threads (`io-*`, `uring-*`) waiting on the hung device.
    stuck_threads: usize,
    /// Other umpath threads waiting on it: the runtime's blocking pool,
    /// where the path's checker probes (one check at a time per path).
    stuck_other: usize,
    /// Kernel io_uring workers waiting on it.
    stuck_kernel_workers: usize,
    /// The threads, for messages.
    names: Vec<(String, String)>,
}

/// Runs the scenario on one engine: p0 (the FUSE file) carries IO, its
/// device is paused, reads are verified through the export, then the
/// device resumes and p0 must come back.
fn scenario(engine: &str) -> Seen {
    need("qemu-io");
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().to_path_buf();
    let image = work.join("lun0.img");
    std::fs::write(&image, vec![0x5au8; SIZE as usize]).unwrap();
    let fused = Fused::start(&work, &image);
    let cfg = format!(
        "defaults {{\n    polling_interval 1\n    io_timeout 2\n    checker_timeout 2\n}}\ndevices {{\n{SEED_STANZA}}}\nmultipaths {{\n    multipath {{\n        wwid \"{WWID}\"\n        alias lun0\n        path_grouping_policy failover\n    }}\n}}\npaths {{\n{}{}}}\n",
        file_path("p0", &fused.file()),
        file_path("p1", &image)
    );
    let d = Daemon::start_with(
        dir,
        &cfg,
        Launch {
            env: vec![("UMPATH_IO_ENGINE".into(), engine.into())],
            ..Launch::default()
        },
    );
    // p0's group is the active one: reads go there first.
    run_ok(&mut qemu_io(&d, &["read -P 0x5a 0 1M"]));
    assert!(d.ios("p0") > 0, "p0 carries IO");
    fused.control(b'p');
    let pid = d.child.id();
    // Reads of data not yet cached anywhere: each waits on the hung p0
    // until io_timeout, then is reissued on p1.
    let reader = qemu_io(&d, &["read -P 0x5a 4M 64k", "read -P 0x5a 8M 1M"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The hung original stays hung until the device resumes (its read is
    // reissued elsewhere after io_timeout): wait until something waits
    // on the device, then look at who does.
    let deadline = Instant::now() + Duration::from_secs(10);
    let seen = loop {
        let names = thread_names(pid);
        let stuck = |prefixes: &[&str]| {
            names
                .iter()
                .filter(|(n, w)| prefixes.iter().any(|p| n.starts_with(p)) && in_fuse(w))
                .count()
        };
        let seen = Seen {
            stuck_threads: stuck(&["io-", "uring-"]),
            stuck_other: stuck(&["umpath"]),
            stuck_kernel_workers: stuck(&["iou-wrk"]),
            names: names.clone(),
        };
        if seen.stuck_threads + seen.stuck_kernel_workers > 0 || Instant::now() > deadline {
            break seen;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = reader.wait_with_output().unwrap();
    assert!(
        out.status.success()
            && !String::from_utf8_lossy(&out.stdout).contains("Pattern verification failed"),
        "reads through the export failed ({engine}): {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        d.log_text()
    );
    d.wait_path("p0", "failed", Duration::from_secs(10), |p| {
        p["dm_state"] == "failed"
    });
    assert!(
        d.log_text().contains("io_timeout"),
        "p0 failed by the io_timeout watchdog:\n{}",
        d.log_text()
    );
    fused.control(b'r');
    d.wait_path("p0", "active again", Duration::from_secs(15), |p| {
        p["dm_state"] == "active"
    });
    run_ok(&mut qemu_io(&d, &["read -P 0x5a 0 16M"]));
    drop(d);
    drop(fused);
    seen
}

#[test]
fn a_hung_device_holds_no_io_thread_under_io_uring() {
    let seen = scenario("uring");
    assert_eq!(
        seen.stuck_threads, 0,
        "no umpath thread waits on the hung device: {:?}",
        seen.names
    );
    // At most the path's checker (one probe at a time).
    assert!(seen.stuck_other <= 1, "{:?}", seen.names);
    // The kernel parks the hung read (buffered FUSE reads are punted to
    // io-wq): one worker per request in flight on the path.
    assert!(
        (1..=8).contains(&seen.stuck_kernel_workers),
        "{:?}",
        seen.names
    );
}

#[test]
fn the_thread_engine_parks_a_thread_on_a_hung_device() {
    let seen = scenario("threads");
    assert!(
        seen.stuck_threads >= 1,
        "the IO thread engine waits on the hung device in a thread of its own: {:?}",
        seen.names
    );
    assert_eq!(seen.stuck_kernel_workers, 0);
}
