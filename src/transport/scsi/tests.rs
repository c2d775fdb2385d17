use super::*;
use crate::model::CheckState;

/// A regular file stands in for the disk: O_DIRECT, alignment and the
/// bounce buffer behave the same on ext4/xfs.
fn disk(len: usize, block: u32) -> (tempfile::TempDir, PathBuf, ScsiTransport) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sdz");
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    std::fs::write(&p, data).unwrap();
    let t = ScsiTransport::new(ScsiTarget {
        devnode: p.clone(),
        hctl: "9:0:0:1".into(),
        block_size: Some(block),
        timeout: Some(Duration::from_secs(7)),
    });
    (dir, p, t)
}

fn pattern(at: u64, n: usize) -> Vec<u8> {
    (0..n).map(|i| ((at as usize + i) % 251) as u8).collect()
}

#[test]
fn classification_follows_dm_multipath() {
    for n in [
        libc::EIO,
        libc::ENOLINK,
        libc::ETIMEDOUT,
        libc::ENXIO,
        libc::ENODEV,
        libc::EAGAIN,
    ] {
        assert_eq!(classify(IoOp::Read, Some(n)), ErrorClass::Path, "{n}");
    }
    for n in [
        libc::ENODATA,
        libc::EREMOTEIO,
        libc::EBADE,
        libc::EILSEQ,
        libc::ENOSPC,
        libc::EROFS,
    ] {
        assert_eq!(classify(IoOp::Write, Some(n)), ErrorClass::Lun, "{n}");
    }
    assert_eq!(
        classify(IoOp::Trim, Some(libc::EOPNOTSUPP)),
        ErrorClass::Unsupported
    );
    assert_eq!(
        classify(IoOp::WriteZeroes, Some(libc::EOPNOTSUPP)),
        ErrorClass::Unsupported
    );
    assert_eq!(
        classify(IoOp::Read, Some(libc::EOPNOTSUPP)),
        ErrorClass::Lun
    );
    assert_eq!(classify(IoOp::Read, None), ErrorClass::Path);
}

#[test]
fn describes_itself_and_its_block_size() {
    let (_d, p, t) = disk(64 * 1024, 4096);
    assert_eq!(t.describe(), format!("scsi {} 9:0:0:1", p.display()));
    assert_eq!(t.block_size(), 4096);
    assert_eq!(t.default_timeout(), Some(Duration::from_secs(7)));
    assert_eq!(t.size().unwrap(), 64 * 1024);
    let tr = Transport::Scsi(t);
    assert_eq!(tr.block_size(), 4096);
    assert_eq!(tr.default_timeout(), Some(Duration::from_secs(7)));
}

use crate::transport::Transport;

#[test]
fn reads_any_buffer_and_range() {
    let (_d, _p, t) = disk(4 << 20, 512);
    // Aligned range, unaligned memory (offset 1 into a Vec).
    let mut v = vec![0u8; 8192 + 1];
    t.read_at(&mut v[1..], 4096).unwrap();
    assert_eq!(&v[1..], &pattern(4096, 8192)[..]);
    // Unaligned offset and length.
    let mut b = vec![0u8; 1000];
    t.read_at(&mut b, 777).unwrap();
    assert_eq!(b, pattern(777, 1000));
    // Larger than the bounce chunk, unaligned.
    let mut big = vec![0u8; (3 << 20) + 5];
    t.read_at(&mut big, 3).unwrap();
    assert_eq!(big, pattern(3, (3 << 20) + 5));
    // Empty reads are fine.
    t.read_at(&mut [], 0).unwrap();
}

#[test]
fn writes_any_buffer_and_range() {
    let (_d, p, t) = disk(4 << 20, 512);
    let data = vec![0xabu8; 4096 + 1];
    t.write_at(&data[1..], 8192, false).unwrap();
    // Unaligned: read-modify-write keeps the neighbours.
    t.write_at(&[1, 2, 3], 1023, true).unwrap();
    let big: Vec<u8> = (0..(2 << 20) + 100).map(|i| (i % 7) as u8).collect();
    t.write_at(&big, 100_001, false).unwrap();
    t.flush().unwrap();
    let f = std::fs::read(&p).unwrap();
    assert_eq!(&f[8192..8192 + 4096], &data[1..]);
    assert_eq!(
        &f[1020..1028],
        &[f[1020], f[1021], f[1022], 1, 2, 3, f[1026], f[1027]]
    );
    assert_eq!(f[1022], pattern(1022, 1)[0]);
    assert_eq!(f[1026], pattern(1026, 1)[0]);
    assert_eq!(&f[100_001..100_001 + big.len()], &big[..]);
    assert_eq!(f[100_000], pattern(100_000, 1)[0]);
    assert_eq!(
        f[100_001 + big.len()],
        pattern(100_001 + big.len() as u64, 1)[0]
    );
}

#[test]
fn a_disk_that_shrinks_under_a_request_fails_the_path() {
    // A hot-unplugged disk's capacity drops to 0 while IO still reaches
    // its node: a read comes back short, a write with ENOSPC. Not the
    // LUN's end: another path reaches all of it.
    let (_d, p, t) = disk(8192, 512);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(0)
        .unwrap();
    let mut b = vec![0u8; 4096];
    let e = t.read_at(&mut b, 0).unwrap_err();
    assert_eq!(e.class, ErrorClass::Path, "{e}");
}

#[test]
fn past_the_end_is_a_lun_error() {
    let (_d, _p, t) = disk(8192, 512);
    let mut b = vec![0u8; 4096];
    let e = t.read_at(&mut b, 6144).unwrap_err();
    assert_eq!(e.class, ErrorClass::Lun, "{e}");
    // The handle is not marked failed for it.
    assert_eq!(t.revalidate().unwrap(), Revalidated::Unchanged);
}

#[test]
fn missing_device_is_a_path_error_until_it_appears() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sdq");
    let t = ScsiTransport::new(ScsiTarget {
        devnode: p.clone(),
        ..Default::default()
    });
    assert!(!t.is_open());
    let mut b = [0u8; 512];
    let e = t.read_at(&mut b, 0).unwrap_err();
    assert_eq!(e.class, ErrorClass::Path);
    assert_eq!(e.errno(), Some(libc::ENOENT));
    assert!(e.to_string().contains("not open"), "{e}");
    let e = t.probe(512).unwrap_err();
    assert_eq!(e.class, ErrorClass::Path);
    let r = t.tur(Duration::from_secs(1));
    assert_eq!(r.state, CheckState::Down);
    assert!(r.message.contains("cannot open"), "{}", r.message);
    std::fs::write(&p, vec![3u8; 4096]).unwrap();
    assert!(matches!(t.revalidate().unwrap(), Revalidated::Reopened(_)));
    t.read_at(&mut b, 0).unwrap();
    assert_eq!(b, [3u8; 512]);
}

#[test]
fn replaced_node_is_reopened() {
    let (d, p, t) = disk(8192, 512);
    assert_eq!(t.revalidate().unwrap(), Revalidated::Unchanged);
    std::fs::remove_file(&p).unwrap();
    std::fs::write(d.path().join("new"), vec![9u8; 8192]).unwrap();
    std::fs::rename(d.path().join("new"), &p).unwrap();
    assert!(matches!(t.revalidate().unwrap(), Revalidated::Reopened(_)));
    let mut b = [0u8; 512];
    t.read_at(&mut b, 0).unwrap();
    assert_eq!(b, [9u8; 512]);
}

#[test]
fn probe_and_tur_on_a_file() {
    let (_d, _p, t) = disk(8192, 512);
    let pr = t.probe(100).unwrap();
    assert_eq!(pr.bytes, 512);
    assert!(pr.direct);
    // A regular file takes no SCSI commands.
    let r = t.tur(Duration::from_secs(1));
    assert_eq!(r.state, CheckState::Down);
    assert!(
        r.message.contains("does not support SG_IO"),
        "{}",
        r.message
    );
}

#[test]
fn trim_and_zeroes() {
    let (_d, p, t) = disk(64 * 1024, 512);
    t.write_zeroes(4096, 4096, false, false).unwrap();
    t.write_zeroes(16384, 4096, true, true).unwrap();
    // Backed by a regular file here, where FALLOC_FL_ZERO_RANGE is fast:
    // fast zeroing without unmapping works. (On a block device it would
    // be Unsupported: see the loop-device test in tests/blockdev.rs.)
    t.write_zeroes(0, 4096, false, true).unwrap();
    t.trim(32768, 4096).unwrap();
    let f = std::fs::read(&p).unwrap();
    assert!(f[4096..8192].iter().all(|&b| b == 0));
    assert!(f[16384..20480].iter().all(|&b| b == 0));
    assert!(f[..4096].iter().all(|&b| b == 0));
    // Untouched data stays.
    assert_eq!(f[8193], (8193 % 251) as u8);
}

#[test]
fn write_protected_disk_is_read_only_and_writes_are_lun_errors() {
    let (_d, p, t) = disk(8192, 512);
    drop(t);
    let mut perms = std::fs::metadata(&p).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o444);
    std::fs::set_permissions(&p, perms).unwrap();
    // Root ignores file modes; only check when the open really fails.
    if OpenOptions::new().write(true).open(&p).is_ok() {
        return;
    }
    let t = ScsiTransport::new(ScsiTarget {
        devnode: p,
        ..Default::default()
    });
    assert!(t.is_open());
    let mut b = [0u8; 512];
    t.read_at(&mut b, 0).unwrap();
    let e = t.write_at(&b, 0, false).unwrap_err();
    assert_eq!(e.class, ErrorClass::Lun);
    assert_eq!(e.errno(), Some(libc::EROFS));
    assert_eq!(e.client_error(), crate::export::IoError::Perm);
}
