//! `file` paths on real block devices (loop devices, 512- and 4096-byte
//! sectors): size, IO, FUA, discard, write-zeroes and the direct-IO probe.
//! Needs root for losetup (CI runs as root).

// A test crate: a failed unwrap, expect or panic is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use umpath::transport::{ErrorClass, FileTransport};

struct Loop(PathBuf);

impl Loop {
    fn new(image: &std::path::Path, sector: u32) -> Loop {
        need("losetup");
        assert!(
            nix_is_root(),
            "this test needs root to create loop devices (CI runs as root; run with sudo)"
        );
        let out = run_ok(
            Command::new("losetup")
                .args(["--find", "--show", "--sector-size", &sector.to_string()])
                .arg(image),
        );
        Loop(PathBuf::from(out.trim()))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn file_transport_on_loop_devices() {
    for sector in [512u32, 4096] {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        make_image(&img, 8 << 20);
        let dev = Loop::new(&img, sector);
        let t = FileTransport::open(dev.0.clone()).expect("open loop device");
        assert!(t.is_block_device());
        let size = t.size().unwrap();
        assert_eq!(size, 8 << 20);
        let data = vec![0x5au8; 8192];
        t.write_at(&data, 0, true).unwrap();
        t.flush().unwrap();
        let mut buf = vec![0u8; 8192];
        t.read_at(&mut buf, 0).unwrap();
        assert_eq!(buf, data);
        match t.trim(0, 4096) {
            Ok(()) => {}
            Err(e) => assert_eq!(e.class, ErrorClass::Unsupported, "{e}"),
        }
        for (may_unmap, fast_only) in [(false, false), (true, false), (true, true), (false, true)] {
            t.write_at(&data, 0, false).unwrap();
            match t.write_zeroes(0, 8192, may_unmap, fast_only) {
                Ok(()) => {
                    t.read_at(&mut buf, 0).unwrap();
                    assert!(
                        buf.iter().all(|b| *b == 0),
                        "{sector} {may_unmap} {fast_only}"
                    );
                }
                Err(e) if fast_only => assert_eq!(e.class, ErrorClass::Unsupported, "{e}"),
                Err(e) => panic!("{e}"),
            }
        }
        for len in [512, 4096] {
            let p = t.probe(len).unwrap();
            assert!(p.direct, "{p:?}");
            assert!(p.bytes >= len, "{p:?}");
        }
        let e = t.read_at(&mut buf, size - 4096).unwrap_err();
        assert_eq!(e.source.kind(), std::io::ErrorKind::UnexpectedEof);
    }
}

#[test]
fn a_map_on_a_loop_device_serves_with_its_size() {
    need("qemu-io");
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    make_image(&img, 16 << 20);
    let dev = Loop::new(&img, 512);
    let d = Daemon::start(&seed_config(
        "    polling_interval 1",
        &[file_path("p0", &dev.0), file_path("p1", &dev.0)],
    ));
    let maps: serde_json::Value =
        serde_json::from_str(&d.ctl_ok(&["show", "maps", "--json"])).unwrap();
    assert_eq!(maps[0]["size"], 16u64 << 20);
    run_ok(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "write -P 0x3c 0 2M",
        "-c",
        "read -P 0x3c 0 2M",
        &d.uri("lun0"),
    ]));
}
