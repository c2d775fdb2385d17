//! `direct yes` on `file` paths through the real binary: a map of two
//! O_DIRECT paths to one image (on the test directory's disk filesystem,
//! not tmpfs), aligned and unaligned IO with qemu-io, the data checked in
//! the image itself.

// A test crate: a failed unwrap, expect or panic is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;

/// A `file_path` entry with `direct yes`.
fn direct_path(name: &str, file: &std::path::Path) -> String {
    file_path(name, file).replace(
        "        transport file\n",
        "        transport file\n        direct yes\n",
    )
}

#[test]
fn a_two_path_direct_map_serves_aligned_and_unaligned_io() {
    need("qemu-io");
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("lun0.img");
    make_image(&img, 16 << 20);
    let d = Daemon::start_in(
        dir,
        &seed_config(
            "    polling_interval 1",
            &[direct_path("p0", &img), direct_path("p1", &img)],
        ),
    );
    let config = d.ctl_ok(&["show", "config"]);
    assert!(config.contains("direct \"yes\""), "{config}");
    run_ok(&mut qemu_io(
        &d,
        &[
            // Aligned, over both paths (round-robin).
            "write -P 0x3c 0 2M",
            "write -P 0x5a 4M 64k",
            // Unaligned head, tail and both, emulated by the server or
            // bounced by the path.
            "write -P 0x11 1000 3000",
            "write -P 0x22 8190 5",
            "write -P 0x33 1048577 70000",
            "read -P 0x3c 0 1000",
            "read -P 0x11 1000 3000",
            "read -P 0x3c 4000 4190",
            "read -P 0x22 8190 5",
            "read -P 0x33 1048577 70000",
            "read -P 0x5a 4M 64k",
            "flush",
        ],
    ));
    let disk = std::fs::read(&img).unwrap();
    let expect = |from: usize, to: usize, v: u8| {
        assert!(
            disk[from..to].iter().all(|&x| x == v),
            "{from}..{to} should be {v:#x}"
        );
    };
    expect(0, 1000, 0x3c);
    expect(1000, 4000, 0x11);
    expect(4000, 8190, 0x3c);
    expect(8190, 8195, 0x22);
    expect(8195, 1048577, 0x3c);
    expect(1048577, 1048577 + 70000, 0x33);
    expect(1048577 + 70000, 2 << 20, 0x3c);
    expect(2 << 20, 4 << 20, 0);
    expect(4 << 20, (4 << 20) + 65536, 0x5a);
    assert!(d.ios("p0") + d.ios("p1") > 0, "the paths carried the IO");
}
