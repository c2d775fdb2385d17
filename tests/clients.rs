//! The map served over NBD, exercised by real clients: nbdinfo, qemu-io,
//! qemu-img and fio.

// A test crate: a failed unwrap, expect or panic is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::*;

fn two_path_daemon(size: u64) -> Daemon {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("lun0.img");
    make_image(&img, size);
    let cfg = seed_config(
        "    polling_interval 1\n    checker_timeout 5",
        &[file_path("p0", &img), file_path("p1", &img)],
    );
    Daemon::start_in(dir, &cfg)
}

#[test]
fn nbdinfo_lists_the_export_with_its_size_and_flags() {
    need("nbdinfo");
    let d = two_path_daemon(64 << 20);
    let list = run_ok(
        Command::new("nbdinfo")
            .arg("--list")
            .arg("--json")
            .arg(d.uri("")),
    );
    let v: serde_json::Value = serde_json::from_str(&list).expect("nbdinfo --json");
    let exports = v["exports"].as_array().expect("exports");
    assert_eq!(exports.len(), 1, "{list}");
    let e = &exports[0];
    assert_eq!(e["export-name"], "lun0");
    assert_eq!(e["export-size"], 64u64 << 20);
    assert!(
        e["description"].as_str().unwrap_or("").contains(WWID),
        "{list}"
    );
    for flag in [
        "can_flush",
        "can_fua",
        "can_trim",
        "can_zero",
        "can_fast_zero",
        "can_multi_conn",
    ] {
        assert_eq!(e[flag], true, "{flag} in {list}");
    }
    assert_eq!(e["is_read_only"], false);
    assert_eq!(e["block_size_preferred"], 4096);
}

#[test]
fn qemu_io_pattern_write_then_verified_read() {
    need("qemu-io");
    let d = two_path_daemon(64 << 20);
    let uri = d.uri("lun0");
    run_ok(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "write -P 0x5a 1M 4M",
        "-c",
        "write -P 0xa5 7M 123k",
        "-c",
        "flush",
        &uri,
    ]));
    let out = run_ok(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-r",
        "-c",
        "read -P 0x5a 1M 4M",
        "-c",
        "read -P 0xa5 7M 123k",
        "-c",
        "read -P 0 0 1M",
        &uri,
    ]));
    assert!(!out.contains("Pattern verification failed"), "{out}");
    // Zeroes and discard through the export.
    run_ok(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "write -z 1M 1M",
        "-c",
        "discard 2M 1M",
        &uri,
    ]));
    let out = run_ok(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-r",
        "-c",
        "read -P 0 1M 1M",
        "-c",
        "read -P 0x5a 3M 2M",
        &uri,
    ]));
    assert!(!out.contains("Pattern verification failed"), "{out}");
    // Both paths carried IO (multibus round-robin, rr_min_io 100).
    let total: u64 = ["p0", "p1"].iter().map(|p| d.ios(p)).sum();
    assert!(total > 0);
}

#[test]
fn qemu_img_convert_in_and_out_is_byte_identical() {
    need("qemu-img");
    let d = two_path_daemon(32 << 20);
    let src = d.dir.path().join("src.raw");
    // A recognisable, non-trivial image.
    let data: Vec<u8> = (0..(32u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&src, &data).expect("write src");
    let uri = d.uri("lun0");
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-n", "-f", "raw", "-O", "raw"])
            .arg(&src)
            .arg(&uri),
    );
    let back = d.dir.path().join("back.raw");
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw"])
            .arg(&uri)
            .arg(&back),
    );
    let got = std::fs::read(&back).expect("read back");
    assert!(
        got == data,
        "round trip through the export changed the data"
    );
    let cmp = run_ok(
        Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(&src)
            .arg(&uri),
    );
    assert!(cmp.contains("identical"), "{cmp}");
}

#[test]
fn fio_nbd_engine_random_writes_verify_crc32c() {
    need("fio");
    let d = two_path_daemon(64 << 20);
    let out = run_ok(Command::new("fio").args([
        "--name=verify",
        "--ioengine=nbd",
        &format!("--uri={}", d.uri("lun0")),
        "--rw=randwrite",
        "--bs=4k",
        "--iodepth=32",
        "--size=32M",
        "--verify=crc32c",
        "--verify_fatal=1",
        "--verify_state_save=0",
        "--do_verify=1",
        "--output-format=json",
    ]));
    let v: serde_json::Value =
        serde_json::from_str(&out[out.find('{').unwrap_or(0)..]).expect("fio json");
    assert_eq!(v["jobs"][0]["error"], 0, "{out}");
    assert!(d.ios("p0") > 0 && d.ios("p1") > 0, "both paths carry IO");
}
