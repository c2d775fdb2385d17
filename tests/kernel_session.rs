//! `nbd::serve_negotiated` as the kernel's NBD client sees it in netlink
//! mode (issue 11, item 3), on the host, without the kernel: no handshake,
//! simple replies, requests as drivers/block/nbd.c builds them (type and
//! command flags in one big-endian word, the cookie's bytes echoed),
//! pipelined on two connections at once, FUA, FLUSH, TRIM, WRITE_ZEROES,
//! 32 MiB requests, and NBD_CMD_DISC. The real kernel is exercised in the
//! VM (`tests/vm_kernel_nbd.rs`).

// A test crate: a failed unwrap, expect or panic is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use umpath::export::Export;
use umpath::nbd::memexport::MemExport;
use umpath::nbd::proto::{
    SimpleReply, CMD_DISC, CMD_FLUSH, CMD_READ, CMD_TRIM, CMD_WRITE, CMD_WRITE_ZEROES,
    REQUEST_MAGIC, SIMPLE_REPLY_LEN,
};
use umpath::nbd::{serve_negotiated, Limits};

/// NBD_CMD_FLAG_FUA as the kernel puts it: in the upper half of `type`.
const KERNEL_FUA: u32 = 1 << 16;

fn request(ty: u32, cookie: u64, from: u64, len: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(28);
    v.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
    v.extend_from_slice(&ty.to_be_bytes());
    // The kernel memcpy()s its u64 handle in and out: the 8 bytes only
    // have to come back as they went (big-endian here to compare easily).
    v.extend_from_slice(&cookie.to_be_bytes());
    v.extend_from_slice(&from.to_be_bytes());
    v.extend_from_slice(&len.to_be_bytes());
    v
}

fn reply(s: &mut UnixStream) -> SimpleReply {
    let mut b = [0u8; SIMPLE_REPLY_LEN];
    s.read_exact(&mut b).unwrap();
    SimpleReply::decode(&b).unwrap()
}

fn spawn(export: &Arc<dyn Export>) -> (UnixStream, tokio::task::JoinHandle<()>) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let stream = tokio::net::UnixStream::from_std(ours).unwrap();
    // Never set: the session ends when the "kernel" sends DISC.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let export = export.clone();
    let task = tokio::spawn(async move {
        let _stop = stop;
        serve_negotiated(stream, export, Limits::default(), stopped).await;
    });
    (theirs, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_already_in_transmission_serves_the_kernels_requests() {
    let export: Arc<dyn Export> = Arc::new(MemExport::new("lun0", 64 << 20));
    let (a, ta) = spawn(&export);
    let (b, tb) = spawn(&export);
    let r = tokio::task::spawn_blocking(move || {
        let (mut a, mut b) = (a, b);
        // Pipelined writes on both connections, FUA on some.
        let blk = |i: u8| vec![i; 1 << 20];
        for i in 0..4u8 {
            let (s, flags) = if i % 2 == 0 {
                (&mut a, 0)
            } else {
                (&mut b, KERNEL_FUA)
            };
            let mut m = request(
                u32::from(CMD_WRITE) | flags,
                0x1_0000_0000 + u64::from(i),
                u64::from(i) << 20,
                1 << 20,
            );
            m.extend_from_slice(&blk(i + 1));
            s.write_all(&m).unwrap();
        }
        for s in [&mut a, &mut b] {
            let mut cookies = vec![reply(s), reply(s)];
            cookies.sort_by_key(|r| r.cookie);
            assert!(cookies.iter().all(|r| r.errno == 0), "{cookies:?}");
        }
        // FLUSH (no offset, no length), then a read of everything on a.
        a.write_all(&request(u32::from(CMD_FLUSH), 7, 0, 0))
            .unwrap();
        let f = reply(&mut a);
        assert_eq!((f.errno, f.cookie), (0, 7));
        for i in 0..4u8 {
            a.write_all(&request(
                u32::from(CMD_READ),
                100 + u64::from(i),
                u64::from(i) << 20,
                1 << 20,
            ))
            .unwrap();
            let r = reply(&mut a);
            assert_eq!((r.errno, r.cookie), (0, 100 + u64::from(i)));
            let mut data = vec![0u8; 1 << 20];
            a.read_exact(&mut data).unwrap();
            assert!(data.iter().all(|&x| x == i + 1), "block {i}");
        }
        // TRIM and WRITE_ZEROES, then read zeroes back.
        b.write_all(&request(u32::from(CMD_TRIM), 8, 0, 1 << 20))
            .unwrap();
        assert_eq!(reply(&mut b).errno, 0);
        b.write_all(&request(u32::from(CMD_WRITE_ZEROES), 9, 1 << 20, 1 << 20))
            .unwrap();
        assert_eq!(reply(&mut b).errno, 0);
        b.write_all(&request(u32::from(CMD_READ), 10, 1 << 20, 4096))
            .unwrap();
        assert_eq!(reply(&mut b).errno, 0);
        let mut z = vec![1u8; 4096];
        b.read_exact(&mut z).unwrap();
        assert!(z.iter().all(|&x| x == 0));
        // The kernel's largest request: 32 MiB (max_hw_sectors 65536).
        let big = vec![0x5au8; 32 << 20];
        let mut m = request(u32::from(CMD_WRITE), 11, 16 << 20, 32 << 20);
        m.extend_from_slice(&big);
        a.write_all(&m).unwrap();
        assert_eq!(reply(&mut a).errno, 0);
        a.write_all(&request(u32::from(CMD_READ), 12, 16 << 20, 32 << 20))
            .unwrap();
        assert_eq!(reply(&mut a).errno, 0);
        let mut back = vec![0u8; 32 << 20];
        a.read_exact(&mut back).unwrap();
        assert!(back == big);
        // A read past the end is an error, not a dropped connection.
        a.write_all(&request(u32::from(CMD_READ), 13, 64 << 20, 4096))
            .unwrap();
        assert_ne!(reply(&mut a).errno, 0);
        // Detach: the kernel sends DISC on every connection.
        for s in [&mut a, &mut b] {
            s.write_all(&request(u32::from(CMD_DISC), 0, 0, 0)).unwrap();
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).unwrap();
            assert!(rest.is_empty());
        }
    })
    .await;
    r.unwrap();
    ta.await.unwrap();
    tb.await.unwrap();
}
