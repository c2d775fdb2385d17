//! `resize map NAME` and `auto_resize` (issue 12, item 6) against the
//! real binary: file paths whose image is truncated larger or smaller.

// A test crate: a failed unwrap, expect or panic is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const MIB: u64 = 1 << 20;

/// One LUN with two file paths on `imgs` (one image each, or one image
/// twice), polling every second, `auto_resize` as given.
fn daemon(imgs: [&Path; 2], auto_resize: &str) -> Daemon {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = seed_config(
        &format!("    polling_interval 1\n    checker_timeout 5\n    auto_resize {auto_resize}"),
        &[file_path("p0", imgs[0]), file_path("p1", imgs[1])],
    );
    Daemon::start_in(dir, &cfg)
}

fn image(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = dir.join(name);
    make_image(&p, size);
    p
}

fn truncate(img: &Path, size: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(img)
        .expect("open image")
        .set_len(size)
        .expect("truncate image");
}

/// The size a new NBD connection is told (`nbdinfo --size`).
fn nbd_size(d: &Daemon) -> u64 {
    need("nbdinfo");
    run_ok(Command::new("nbdinfo").arg("--size").arg(d.uri("lun0")))
        .trim()
        .parse()
        .expect("nbdinfo --size prints a number")
}

fn map_size(d: &Daemon) -> u64 {
    let v: serde_json::Value =
        serde_json::from_str(&d.ctl_ok(&["show", "maps", "--json"])).unwrap();
    v[0]["size"].as_u64().unwrap()
}

/// Waits until the map has `size` bytes.
fn wait_size(d: &Daemon, size: u64, within: Duration) {
    let start = Instant::now();
    while map_size(d) != size {
        assert!(
            start.elapsed() < within,
            "map size {} after {within:?}, want {size}\n{}",
            map_size(d),
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn resize_map_grows_the_export() {
    let scratch = tempfile::tempdir().unwrap();
    let img = image(scratch.path(), "lun0.img", 16 * MIB);
    let d = daemon([&img, &img], "never");
    assert_eq!(nbd_size(&d), 16 * MIB);
    // Past the end: refused before the resize.
    let out = run(&mut qemu_io(&d, &["write -P 0x5a 20M 64k"]));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("wrote 65536"), "{text}");

    truncate(&img, 32 * MIB);
    // auto_resize never: the map stays as it is.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(map_size(&d), 16 * MIB);
    let out = d.ctl_ok(&["resize", "map", "lun0"]);
    assert!(out.contains("resized from 16777216 to 33554432"), "{out}");
    assert_eq!(map_size(&d), 32 * MIB);
    assert_eq!(nbd_size(&d), 32 * MIB);
    run_ok(&mut qemu_io(&d, &["write -P 0x5a 20M 64k"]));
    let out = run_ok(&mut qemu_io(&d, &["read -P 0x5a 20M 64k"]));
    assert!(out.contains("read 65536/65536"), "{out}");
    // Again: nothing to do.
    let out = d.ctl_ok(&["resize", "map", "lun0"]);
    assert!(out.contains("unchanged"), "{out}");
    // multipathd's spelling through the raw protocol too; an unknown map.
    let bad = d.ctl(&["resize", "map", "nosuch"]);
    assert!(!bad.status.success());
}

#[test]
fn resize_map_shrinks_and_io_past_the_new_end_fails() {
    let scratch = tempfile::tempdir().unwrap();
    let img = image(scratch.path(), "lun0.img", 16 * MIB);
    let d = daemon([&img, &img], "never");
    truncate(&img, 8 * MIB);
    let out = d.ctl_ok(&["resize", "map", "lun0"]);
    assert!(out.contains("to 8388608"), "{out}");
    assert_eq!(nbd_size(&d), 8 * MIB);
    let out = run(&mut qemu_io(&d, &["write -P 0x11 12M 64k"]));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("wrote 65536"), "{text}");
    // The image was not written past its new end.
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 8 * MIB);
    run_ok(&mut qemu_io(&d, &["write -P 0x11 1M 64k"]));
}

#[test]
fn paths_that_disagree_are_named() {
    let scratch = tempfile::tempdir().unwrap();
    let a = image(scratch.path(), "a.img", 16 * MIB);
    let b = image(scratch.path(), "b.img", 16 * MIB);
    let d = daemon([&a, &b], "grow_shrink");
    truncate(&b, 32 * MIB);
    let out = d.ctl(&["resize", "map", "lun0"]);
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("do not agree"), "{text}");
    assert!(text.contains("p0 16777216 bytes"), "{text}");
    assert!(text.contains("p1 33554432 bytes"), "{text}");
    // auto_resize does not apply a size the paths disagree on either.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(map_size(&d), 16 * MIB);
}

#[test]
fn auto_resize_grow_only_grows_but_does_not_shrink() {
    let scratch = tempfile::tempdir().unwrap();
    let img = image(scratch.path(), "lun0.img", 16 * MIB);
    let d = daemon([&img, &img], "grow_only");
    truncate(&img, 24 * MIB);
    wait_size(&d, 24 * MIB, Duration::from_secs(6));
    assert_eq!(nbd_size(&d), 24 * MIB);
    run_ok(&mut qemu_io(&d, &["write -P 0x33 20M 64k"]));
    let out = run_ok(&mut qemu_io(&d, &["read -P 0x33 20M 64k"]));
    assert!(out.contains("read 65536/65536"), "{out}");
    truncate(&img, 12 * MIB);
    std::thread::sleep(Duration::from_millis(3000));
    assert_eq!(map_size(&d), 24 * MIB);
    // The operator can still shrink it.
    d.ctl_ok(&["resize", "map", "lun0"]);
    assert_eq!(map_size(&d), 12 * MIB);
}

#[test]
fn auto_resize_grow_shrink_shrinks() {
    let scratch = tempfile::tempdir().unwrap();
    let img = image(scratch.path(), "lun0.img", 16 * MIB);
    let d = daemon([&img, &img], "grow_shrink");
    truncate(&img, 8 * MIB);
    wait_size(&d, 8 * MIB, Duration::from_secs(6));
    assert_eq!(nbd_size(&d), 8 * MIB);
    truncate(&img, 20 * MIB);
    wait_size(&d, 20 * MIB, Duration::from_secs(6));
}
