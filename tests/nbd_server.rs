//! NBD server integration tests: real clients (nbdinfo, qemu-io, qemu-img,
//! fio) and raw-socket protocol tests against in-memory exports, over a
//! temporary Unix socket and 127.0.0.1:0.
//!
//! Missing client binaries make the tests fail (never skip):
//! `apt-get install nbdkit libnbd-bin fio qemu-utils`.

// A test crate: a failed unwrap, expect or panic is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use umpath::nbd::proto::Command as Cmd;

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::watch;

use umpath::export::{BlockSizes, Export, ExportCaps, ExportSet, IoError, Op, Request};
use umpath::nbd::memexport::{CompletionMode, ExportList, MemExport, MEM_CAPS};
use umpath::nbd::proto::*;
use umpath::nbd::{Limits, NbdServer, ServerConfig};

const T: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

struct TestServer {
    rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
    sock: PathBuf,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<io::Result<()>>>,
    exports: Arc<ExportList>,
}

impl TestServer {
    fn start(exports: Vec<Arc<dyn Export>>) -> TestServer {
        Self::start_with(exports, Limits::default())
    }

    fn start_with(exports: Vec<Arc<dyn Export>>, limits: Limits) -> TestServer {
        let workers = std::env::var("UMPATH_TEST_WORKERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("nbd.sock");
        let list = Arc::new(ExportList::new(exports));
        let cfg = ServerConfig {
            unix: Some(sock.clone()),
            tcp: Some("127.0.0.1:0".into()),
            limits,
            security: Default::default(),
        };
        let set: Arc<dyn ExportSet> = list.clone();
        let server = rt.block_on(NbdServer::bind(&cfg, set)).unwrap();
        let addr = server.local_addr().unwrap();
        assert_eq!(server.unix_path(), Some(sock.as_path()));
        let (stop, stopped) = watch::channel(false);
        let task = rt.spawn(server.serve(stopped));
        TestServer {
            rt,
            _dir: dir,
            sock,
            addr,
            stop,
            task: Some(task),
            exports: list,
        }
    }

    fn unix_uri(&self, name: &str) -> String {
        format!("nbd+unix:///{name}?socket={}", self.sock.display())
    }

    fn tcp_uri(&self, name: &str) -> String {
        format!("nbd://{}/{name}", self.addr)
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(60), f).await })
            .expect("test timed out")
    }

    /// Request shutdown and wait for the server to stop.
    fn shutdown(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            self.rt
                .block_on(async { tokio::time::timeout(T, t).await })
                .expect("server did not stop")
                .unwrap()
                .unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            let _ = self.rt.block_on(async { tokio::time::timeout(T, t).await });
        }
    }
}

fn mem(name: &str, size: usize) -> Arc<MemExport> {
    Arc::new(MemExport::new(name, size))
}

/// Fail (never skip) when a client binary is missing.
fn need(bin: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{bin}` not found in PATH; install the NBD test peers with: \
         apt-get install nbdkit libnbd-bin fio qemu-utils"
    );
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ ((i >> 8) as u8))
        .collect()
}

// ---------------------------------------------------------------------------
// A raw protocol client
// ---------------------------------------------------------------------------

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send> Stream for S {}

struct Raw {
    s: Box<dyn Stream>,
}

impl Raw {
    async fn unix(p: &Path) -> Raw {
        Raw {
            s: Box::new(UnixStream::connect(p).await.unwrap()),
        }
    }

    async fn tcp(a: SocketAddr) -> Raw {
        Raw {
            s: Box::new(TcpStream::connect(a).await.unwrap()),
        }
    }

    async fn read_n(&mut self, n: usize) -> Vec<u8> {
        let mut b = vec![0; n];
        tokio::time::timeout(T, self.s.read_exact(&mut b))
            .await
            .expect("read timed out")
            .expect("read failed");
        b
    }

    async fn send(&mut self, b: &[u8]) {
        self.s.write_all(b).await.unwrap();
        self.s.flush().await.unwrap();
    }

    /// Read the greeting and answer with `flags`.
    async fn hello(&mut self, flags: u32) -> u16 {
        let g = self.read_n(GREETING_LEN).await;
        let hf = decode_greeting(&g).unwrap();
        self.send(&flags.to_be_bytes()).await;
        hf
    }

    async fn option(&mut self, option: u32, payload: &[u8]) {
        let mut b = Vec::new();
        encode_option(&mut b, option, payload);
        self.send(&b).await;
    }

    async fn opt_reply(&mut self) -> (OptionReplyHeader, Vec<u8>) {
        let h = OptionReplyHeader::decode(&self.read_n(OPTION_REPLY_HEADER_LEN).await).unwrap();
        let p = self.read_n(h.len as usize).await;
        (h, p)
    }

    /// INFO or GO; returns the INFO replies and the final reply type.
    async fn info(&mut self, option: u32, name: &str, infos: &[u16]) -> (Vec<Vec<u8>>, u32) {
        let mut b = Vec::new();
        encode_info_request(&mut b, option, name, infos);
        self.send(&b).await;
        let mut got = Vec::new();
        loop {
            let (h, p) = self.opt_reply().await;
            assert_eq!(h.option, option);
            if h.reply == REP_INFO {
                got.push(p);
            } else {
                return (got, h.reply);
            }
        }
    }

    /// Full handshake ending in GO; returns (size, flags).
    async fn connect(&mut self, name: &str, structured: bool, block_size: bool) -> (u64, u16) {
        self.hello(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).await;
        if structured {
            self.option(OPT_STRUCTURED_REPLY, &[]).await;
            assert_eq!(self.opt_reply().await.0.reply, REP_ACK);
        }
        let infos: &[u16] = if block_size { &[INFO_BLOCK_SIZE] } else { &[] };
        let (replies, fin) = self.info(OPT_GO, name, infos).await;
        assert_eq!(fin, REP_ACK);
        for r in &replies {
            if let InfoReply::Export { size, flags } = decode_info_reply(r).unwrap() {
                return (size, flags);
            }
        }
        panic!("no NBD_INFO_EXPORT");
    }

    async fn request(&mut self, command: u16, flags: u16, cookie: u64, offset: u64, len: u32) {
        let h = RequestHeader {
            flags,
            command: Cmd::from_u16(command),
            cookie,
            offset,
            len,
        };
        self.send(&h.encode()).await;
    }

    async fn write(&mut self, cookie: u64, offset: u64, data: &[u8]) {
        let h = RequestHeader {
            flags: 0,
            command: Cmd::Write,
            cookie,
            offset,
            len: data.len() as u32,
        };
        let mut b = h.encode().to_vec();
        b.extend_from_slice(data);
        self.send(&b).await;
    }

    async fn simple(&mut self) -> SimpleReply {
        SimpleReply::decode(&self.read_n(SIMPLE_REPLY_LEN).await).unwrap()
    }

    async fn chunk(&mut self) -> (ChunkHeader, Vec<u8>) {
        let h = ChunkHeader::decode(&self.read_n(CHUNK_HEADER_LEN).await).unwrap();
        let p = self.read_n(h.len as usize).await;
        (h, p)
    }

    /// Simple-reply READ.
    async fn read(&mut self, cookie: u64, offset: u64, len: u32) -> Result<Vec<u8>, u32> {
        self.request(CMD_READ, 0, cookie, offset, len).await;
        let r = self.simple().await;
        assert_eq!(r.cookie, cookie);
        if r.errno != 0 {
            return Err(r.errno);
        }
        Ok(self.read_n(len as usize).await)
    }

    /// True if the server closes the connection (EOF or reset).
    async fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        match tokio::time::timeout(T, self.s.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(_)) => false,
            Err(_) => panic!("connection neither closed nor sent data"),
        }
    }
}

/// Poll until `f` holds (or fail after a while).
async fn until(mut f: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached");
}

/// An export that holds requests until released.
struct Held {
    size: u64,
    held: Mutex<Vec<Request>>,
    submitted: AtomicUsize,
}

impl Held {
    fn new(size: u64) -> Arc<Held> {
        Arc::new(Held {
            size,
            held: Mutex::new(Vec::new()),
            submitted: AtomicUsize::new(0),
        })
    }

    fn release(&self) -> usize {
        let reqs: Vec<Request> = std::mem::take(&mut *self.held.lock());
        let n = reqs.len();
        for r in reqs {
            r.complete(Ok(()));
        }
        n
    }
}

impl Export for Held {
    fn name(&self) -> &str {
        "held"
    }
    fn description(&self) -> String {
        String::new()
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn caps(&self) -> ExportCaps {
        MEM_CAPS
    }
    fn block_sizes(&self) -> BlockSizes {
        BlockSizes {
            minimum: 1,
            preferred: 4096,
            maximum: 32 << 20,
        }
    }
    fn submit(&self, req: Request) {
        self.submitted.fetch_add(1, Ordering::SeqCst);
        self.held.lock().push(req);
    }
}

// ---------------------------------------------------------------------------
// Real clients
// ---------------------------------------------------------------------------

#[test]
fn nbdinfo_list_shows_exports() {
    need("nbdinfo");
    let a = Arc::new(
        MemExport::builder("alpha", 1 << 20)
            .description("first disk")
            .build(),
    );
    let b = Arc::new(MemExport::builder("beta", 2 << 20).read_only().build());
    let srv = TestServer::start(vec![a, b]);
    let out = run(Command::new("nbdinfo")
        .arg("--list")
        .arg("--json")
        .arg(srv.unix_uri("")));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ex = v["exports"].as_array().unwrap();
    assert_eq!(ex.len(), 2, "{v}");
    assert_eq!(ex[0]["export-name"], "alpha");
    assert_eq!(ex[0]["description"], "first disk");
    assert_eq!(ex[0]["export-size"], 1 << 20);
    assert_eq!(ex[1]["export-name"], "beta");
    assert_eq!(ex[1]["is_read_only"], true);
    assert_eq!(ex[1]["export-size"], 2 << 20);
}

#[test]
fn nbdinfo_json_details() {
    need("nbdinfo");
    let e = Arc::new(
        MemExport::builder("disk0", 8 << 20)
            .description("an in-memory disk")
            .block_sizes(512, 4096, 1 << 20)
            .build(),
    );
    let ro = Arc::new(
        MemExport::builder("ro", 1 << 20)
            .caps(ExportCaps {
                multi_conn: false,
                ..MEM_CAPS
            })
            .read_only()
            .build(),
    );
    let srv = TestServer::start(vec![e, ro]);
    for uri in [srv.unix_uri("disk0"), srv.tcp_uri("disk0")] {
        let out = run(Command::new("nbdinfo").arg("--json").arg(&uri));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["protocol"], "newstyle-fixed");
        assert_eq!(v["structured"], true);
        let x = &v["exports"][0];
        assert_eq!(x["export-name"], "disk0", "{v}");
        assert_eq!(x["description"], "an in-memory disk");
        assert_eq!(x["export-size"], 8 << 20);
        assert_eq!(x["block_size_minimum"], 512);
        assert_eq!(x["block_size_preferred"], 4096);
        assert_eq!(x["block_size_maximum"], 1 << 20);
        for k in [
            "can_flush",
            "can_fua",
            "can_trim",
            "can_zero",
            "can_fast_zero",
            "can_multi_conn",
            "can_df",
        ] {
            assert_eq!(x[k], true, "{k} in {x}");
        }
        assert_eq!(x["is_read_only"], false);
        assert_eq!(x["can_cache"], false);
    }
    let out = run(Command::new("nbdinfo")
        .arg("--json")
        .arg(srv.unix_uri("ro")));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let x = &v["exports"][0];
    assert_eq!(x["is_read_only"], true);
    assert_eq!(x["can_multi_conn"], false);
    assert_eq!(x["can_trim"], false);
    assert_eq!(x["can_zero"], false);
    assert_eq!(x["can_flush"], true);
    // The default export is the first one.
    let out = run(Command::new("nbdinfo").arg("--size").arg(srv.unix_uri("")));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "8388608");
    // An unknown export fails cleanly.
    let out = Command::new("nbdinfo")
        .arg(srv.unix_uri("nope"))
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn qemu_io_pattern_roundtrip() {
    need("qemu-io");
    for mode in [CompletionMode::Inline, CompletionMode::Threaded(4)] {
        let e = Arc::new(
            MemExport::builder("vol", 16 << 20)
                .block_sizes(512, 4096, 32 << 20)
                .mode(mode)
                .build(),
        );
        let srv = TestServer::start(vec![e.clone()]);
        for (uri, p) in [(srv.unix_uri("vol"), "0xab"), (srv.tcp_uri("vol"), "0x5c")] {
            run(Command::new("qemu-io")
                .args(["-f", "raw", &uri])
                .args(["-c", &format!("write -P {p} 0 1M")])
                .args(["-c", &format!("write -P {p} 4M 64k")])
                .args(["-c", "write -z 8M 1M"])
                .args(["-c", "flush"])
                .args(["-c", &format!("read -P {p} 0 1M")])
                .args(["-c", &format!("read -P {p} 4M 64k")])
                .args(["-c", "read -P 0 8M 1M"])
                .args(["-c", "discard 12M 1M"])
                .args(["-c", "aio_write -P 0x11 2M 4k"])
                .args(["-c", "aio_write -P 0x22 3M 4k"])
                .args(["-c", "aio_flush"])
                .args(["-c", "read -P 0x11 2M 4k"])
                .args(["-c", "read -P 0x22 3M 4k"]));
            let d = e.contents();
            let want = u8::from_str_radix(&p[2..], 16).unwrap();
            assert!(d[..1 << 20].iter().all(|&b| b == want));
        }
        // A failed verification must fail the command (sanity check).
        let out = Command::new("qemu-io")
            .args(["-f", "raw", &srv.unix_uri("vol")])
            .args(["-c", "read -P 0x99 0 4k"])
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("Pattern verification failed"));
    }
}

#[test]
fn qemu_img_convert_in_and_out() {
    need("qemu-img");
    let size = 8 << 20;
    let e = Arc::new(
        MemExport::builder("img", size)
            .mode(CompletionMode::Threaded(3))
            .build(),
    );
    let srv = TestServer::start(vec![e.clone()]);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    let back = dir.path().join("back.img");
    let mut data = pattern(size, 7);
    data[3 << 20..4 << 20].fill(0); // a hole-ish region
    std::fs::write(&src, &data).unwrap();
    run(Command::new("qemu-img")
        .args(["convert", "-n", "-f", "raw", "-O", "raw"])
        .arg(&src)
        .arg(srv.tcp_uri("img")));
    assert!(e.contents() == data, "export differs after convert in");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw"])
        .arg(srv.unix_uri("img"))
        .arg(&back));
    run(Command::new("cmp").arg(&src).arg(&back));
}

fn fio(uri: &str, extra: &[&str]) {
    run(Command::new("fio")
        .args(["--name=t", "--ioengine=nbd", "--output-format=terse"])
        // Do not leave verify state files in the working directory.
        .arg("--verify_state_save=0")
        .arg(format!("--uri={uri}"))
        .args(extra));
}

#[test]
fn fio_verify_crc32c() {
    need("fio");
    let e = Arc::new(
        MemExport::builder("f", 64 << 20)
            .mode(CompletionMode::Threaded(4))
            .build(),
    );
    let srv = TestServer::start(vec![e]);
    fio(
        &srv.unix_uri("f"),
        &[
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=32",
            "--size=32M",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            "--verify_state_save=0",
        ],
    );
    fio(
        &srv.tcp_uri("f"),
        &[
            "--rw=write",
            "--bs=1M",
            "--iodepth=8",
            "--size=64M",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            "--verify_state_save=0",
        ],
    );
    fio(
        &srv.unix_uri("f"),
        &[
            "--rw=randrw",
            "--bsrange=512-128k",
            "--iodepth=16",
            "--size=16M",
            "--io_size=32M",
        ],
    );
}

// ---------------------------------------------------------------------------
// Raw protocol tests: handshake
// ---------------------------------------------------------------------------

#[test]
fn raw_bad_client_flags_close() {
    let srv = TestServer::start(vec![mem("a", 4096)]);
    srv.block_on(async {
        let mut c = Raw::unix(&srv.sock).await;
        assert_eq!(c.hello(0x80).await, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        assert!(c.closed().await);
    });
}

#[test]
fn raw_wrong_option_magic_closes() {
    let srv = TestServer::start(vec![mem("a", 4096)]);
    srv.block_on(async {
        let mut c = Raw::unix(&srv.sock).await;
        c.hello(FLAG_C_FIXED_NEWSTYLE).await;
        c.send(&[0x55; 16]).await;
        assert!(c.closed().await);
        // Request magic garbage in transmission closes too.
        let mut c = Raw::tcp(srv.addr).await;
        c.connect("a", false, false).await;
        c.send(&[0x77; 28]).await;
        assert!(c.closed().await);
    });
}

#[test]
fn raw_truncated_handshake_then_good_client() {
    let srv = TestServer::start(vec![mem("a", 4096)]);
    srv.block_on(async {
        let mut c = Raw::unix(&srv.sock).await;
        c.read_n(GREETING_LEN).await;
        c.send(&[0, 0]).await;
        drop(c);
        let mut c = Raw::unix(&srv.sock).await;
        c.hello(FLAG_C_FIXED_NEWSTYLE).await;
        c.send(&IHAVEOPT.to_be_bytes()).await;
        drop(c);
        let mut c = Raw::tcp(srv.addr).await;
        let (size, _) = c.connect("a", false, false).await;
        assert_eq!(size, 4096);
        assert_eq!(c.read(1, 0, 16).await.unwrap(), vec![0; 16]);
    });
}

#[test]
fn raw_unknown_options_are_unsupported() {
    let srv = TestServer::start(vec![mem("a", 4096)]);
    srv.block_on(async {
        let mut c = Raw::unix(&srv.sock).await;
        c.hello(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).await;
        for (o, p) in [
            (999u32, &b"payload"[..]),
            (OPT_STARTTLS, b""),
            (OPT_SET_META_CONTEXT, b"\0\0\0\0\0\0\0\0"),
            (OPT_EXTENDED_HEADERS, b""),
        ] {
            c.option(o, p).await;
            let (h, _) = c.opt_reply().await;
            assert_eq!((h.option, h.reply), (o, REP_ERR_UNSUP));
        }
        // Syntactically bad known options are ERR_INVALID.
        c.option(OPT_LIST, b"x").await;
        assert_eq!(c.opt_reply().await.0.reply, REP_ERR_INVALID);
        c.option(OPT_GO, &[0, 0, 0, 9, 1]).await;
        assert_eq!(c.opt_reply().await.0.reply, REP_ERR_INVALID);
        // The session continues normally.
        let (_, fin) = c.info(OPT_GO, "a", &[]).await;
        assert_eq!(fin, REP_ACK);
        assert!(c.read(5, 0, 1).await.is_ok());
    });
}

#[test]
fn raw_oversized_option_closes() {
    let srv = TestServer::start(vec![mem("a", 4096)]);
    srv.block_on(async {
        let mut c = Raw::unix(&srv.sock).await;
        c.hello(FLAG_C_FIXED_NEWSTYLE).await;
        let h = OptionHeader {
            option: OPT_GO,
            len: 1 << 20,
        };
        c.send(&h.encode()).await;
        assert!(c.closed().await);
    });
}

#[test]
fn raw_info_go_list_abort() {
    let a = Arc::new(
        MemExport::builder("alpha", 1 << 20)
            .description("the A disk")
            .block_sizes(4096, 4096, 1 << 20)
            .build(),
    );
    let srv = TestServer::start(vec![a, mem("beta", 4096)]);
    srv.block_on(async {
        let mut c = Raw::unix(&srv.sock).await;
        c.hello(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).await;
        // LIST
        c.option(OPT_LIST, &[]).await;
        let mut names = Vec::new();
        loop {
            let (h, p) = c.opt_reply().await;
            if h.reply == REP_ACK {
                break;
            }
            assert_eq!(h.reply, REP_SERVER);
            let (n, d) = decode_rep_server(&p).unwrap();
            names.push((n.to_string(), d.to_string()));
        }
        assert_eq!(names[0], ("alpha".into(), "the A disk".into()));
        assert_eq!(names[1].0, "beta");
        // Unknown export
        let (infos, fin) = c.info(OPT_INFO, "gamma", &[]).await;
        assert!(infos.is_empty());
        assert_eq!(fin, REP_ERR_UNKNOWN);
        let (_, fin) = c.info(OPT_GO, "gamma", &[]).await;
        assert_eq!(fin, REP_ERR_UNKNOWN);
        // INFO with everything, via the default name.
        let (infos, fin) = c
            .info(
                OPT_INFO,
                "",
                &[INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE, 4242],
            )
            .await;
        assert_eq!(fin, REP_ACK);
        let got: Vec<InfoReply<'_>> = infos
            .iter()
            .map(|p| decode_info_reply(p).unwrap())
            .collect();
        assert!(got.contains(&InfoReply::Name("alpha")));
        assert!(got.contains(&InfoReply::Description("the A disk")));
        assert!(got.contains(&InfoReply::BlockSize(BlockSizes {
            minimum: 4096,
            preferred: 4096,
            maximum: 1 << 20
        })));
        let Some(InfoReply::Export { size, flags }) = got.first().cloned() else {
            panic!("{got:?}")
        };
        assert_eq!(size, 1 << 20);
        assert_eq!(flags & FLAG_SEND_DF, 0, "no DF without structured replies");
        // Without requests only INFO_EXPORT comes back.
        let (infos, _) = c.info(OPT_INFO, "beta", &[]).await;
        assert_eq!(infos.len(), 1);
        // ABORT: ACK, then close.
        c.option(OPT_ABORT, &[]).await;
        assert_eq!(c.opt_reply().await.0.reply, REP_ACK);
        assert!(c.closed().await);
    });
}

#[test]
fn raw_export_name_old_style() {
    let e = mem("disk", 8192);
    e.fill(100, b"hello");
    let srv = TestServer::start(vec![e]);
    srv.block_on(async {
        for no_zeroes in [false, true] {
            let mut c = Raw::unix(&srv.sock).await;
            let flags = FLAG_C_FIXED_NEWSTYLE | if no_zeroes { FLAG_C_NO_ZEROES } else { 0 };
            c.hello(flags).await;
            c.option(OPT_EXPORT_NAME, b"disk").await;
            let r = c
                .read_n(if no_zeroes { 10 } else { EXPORT_NAME_REPLY_LEN })
                .await;
            assert_eq!(&r[..8], &8192u64.to_be_bytes());
            let flags = u16::from_be_bytes([r[8], r[9]]);
            assert_ne!(flags & FLAG_HAS_FLAGS, 0);
            assert_eq!(c.read(3, 100, 5).await.unwrap(), b"hello");
        }
        // A client without fixed newstyle is still served.
        let mut c = Raw::unix(&srv.sock).await;
        c.hello(0).await;
        c.option(OPT_EXPORT_NAME, b"").await;
        c.read_n(EXPORT_NAME_REPLY_LEN).await;
        assert!(c.read(4, 0, 1).await.is_ok());
        // Unknown name: no way to report an error, so the server closes.
        let mut c = Raw::unix(&srv.sock).await;
        c.hello(FLAG_C_FIXED_NEWSTYLE).await;
        c.option(OPT_EXPORT_NAME, b"missing").await;
        assert!(c.closed().await);
    });
}

// ---------------------------------------------------------------------------
// Raw protocol tests: transmission
// ---------------------------------------------------------------------------

#[test]
fn raw_command_validation_simple_replies() {
    let srv = TestServer::start(vec![mem("a", 1 << 20)]);
    srv.block_on(async {
        let mut c = Raw::unix(&srv.sock).await;
        c.connect("a", false, false).await;
        // Unknown commands.
        for (i, cmd) in [99u16, CMD_CACHE, CMD_BLOCK_STATUS, CMD_RESIZE]
            .into_iter()
            .enumerate()
        {
            c.request(cmd, 0, 10 + i as u64, 0, 512).await;
            let r = c.simple().await;
            assert_eq!((r.cookie, r.errno), (10 + i as u64, EINVAL));
        }
        // Read past the end / overflowing.
        assert_eq!(c.read(20, (1 << 20) - 10, 11).await, Err(EINVAL));
        assert_eq!(c.read(21, u64::MAX - 1, 4).await, Err(EINVAL));
        // Reads over 32 MiB.
        assert_eq!(c.read(22, 0, (32 << 20) + 1).await, Err(EINVAL));
        // Write past the end: ENOSPC (payload consumed, stream in sync).
        c.write(23, (1 << 20) - 2, &[1, 2, 3, 4]).await;
        assert_eq!(c.simple().await.errno, ENOSPC);
        // Bad flags: DF without structured replies, NO_HOLE on WRITE.
        c.request(CMD_READ, CMD_FLAG_DF, 24, 0, 8).await;
        assert_eq!(c.simple().await.errno, EINVAL);
        let h = RequestHeader {
            flags: CMD_FLAG_NO_HOLE,
            command: Cmd::Write,
            cookie: 25,
            offset: 0,
            len: 3,
        };
        let mut b = h.encode().to_vec();
        b.extend_from_slice(b"xyz");
        c.send(&b).await;
        assert_eq!(c.simple().await.errno, EINVAL);
        // Zero-length requests succeed without IO.
        c.request(CMD_TRIM, 0, 26, 4096, 0).await;
        assert_eq!(c.simple().await.errno, 0);
        assert_eq!(c.read(27, 0, 0).await, Ok(vec![]));
        // FLUSH, TRIM, WRITE_ZEROES with flags.
        c.write(28, 0, &[9; 4096]).await;
        assert_eq!(c.simple().await.errno, 0);
        c.request(CMD_FLUSH, CMD_FLAG_FUA, 29, 0, 0).await;
        assert_eq!(c.simple().await.errno, 0);
        c.request(
            CMD_WRITE_ZEROES,
            CMD_FLAG_NO_HOLE | CMD_FLAG_FUA,
            30,
            0,
            100,
        )
        .await;
        assert_eq!(c.simple().await.errno, 0);
        assert_eq!(c.read(31, 98, 4).await.unwrap(), vec![0, 0, 9, 9]);
        c.request(CMD_TRIM, 0, 32, 0, 4096).await;
        assert_eq!(c.simple().await.errno, 0);
        // DISC: the server closes.
        c.request(CMD_DISC, 0, 33, 0, 0).await;
        assert!(c.closed().await);
    });
}

#[test]
fn raw_structured_replies() {
    let e = mem("a", 1 << 20);
    e.fill(0, &pattern(4096, 3));
    let srv = TestServer::start(vec![e]);
    srv.block_on(async {
        let mut c = Raw::tcp(srv.addr).await;
        let (_, flags) = c.connect("a", true, false).await;
        assert_ne!(flags & FLAG_SEND_DF, 0);
        c.request(CMD_READ, CMD_FLAG_DF, 1, 100, 1000).await;
        let (h, p) = c.chunk().await;
        assert_eq!(
            (h.ty, h.cookie, h.is_done()),
            (REPLY_TYPE_OFFSET_DATA, 1, true)
        );
        assert_eq!(&p[..8], &100u64.to_be_bytes());
        assert_eq!(&p[8..], &pattern(4096, 3)[100..1100]);
        // Errors come as ERROR chunks with a message.
        c.request(CMD_READ, 0, 2, 1 << 20, 1).await;
        let (h, p) = c.chunk().await;
        assert_eq!((h.ty, h.cookie, h.is_done()), (REPLY_TYPE_ERROR, 2, true));
        let (errno, msg) = decode_error_payload(&p).unwrap();
        assert_eq!(errno, EINVAL);
        assert!(msg.contains("end"), "{msg}");
        // Other commands get a NONE chunk.
        c.write(3, 0, b"abc").await;
        let (h, p) = c.chunk().await;
        assert_eq!(
            (h.ty, h.cookie, h.is_done(), p.len()),
            (REPLY_TYPE_NONE, 3, true, 0)
        );
        // A zero-length read is a NONE chunk.
        c.request(CMD_READ, 0, 4, 0, 0).await;
        assert_eq!(c.chunk().await.0.ty, REPLY_TYPE_NONE);
        c.request(99, 0, 5, 0, 0).await;
        let (h, p) = c.chunk().await;
        assert_eq!(h.ty, REPLY_TYPE_ERROR);
        assert_eq!(decode_error_payload(&p).unwrap().0, EINVAL);
    });
}

#[test]
fn raw_read_only_export_eperm() {
    let ro = Arc::new(MemExport::builder("ro", 65536).read_only().build());
    let srv = TestServer::start(vec![ro]);
    srv.block_on(async {
        let mut c = Raw::unix(&srv.sock).await;
        let (_, flags) = c.connect("ro", false, false).await;
        assert_ne!(flags & FLAG_READ_ONLY, 0);
        assert_eq!(
            flags & (FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES | FLAG_SEND_FUA),
            0
        );
        c.write(1, 0, &[1; 512]).await;
        assert_eq!(c.simple().await.errno, EPERM);
        c.request(CMD_TRIM, 0, 2, 0, 512).await;
        assert_eq!(c.simple().await.errno, EPERM);
        c.request(CMD_WRITE_ZEROES, 0, 3, 0, 512).await;
        assert_eq!(c.simple().await.errno, EPERM);
        assert_eq!(c.read(4, 0, 512).await.unwrap(), vec![0; 512]);
    });
}

#[test]
fn raw_fast_zero_only_when_advertised() {
    let caps = ExportCaps {
        fast_zero: false,
        ..MEM_CAPS
    };
    let e = Arc::new(MemExport::builder("z", 65536).caps(caps).build());
    let srv = TestServer::start(vec![e]);
    srv.block_on(async {
        let mut c = Raw::unix(&srv.sock).await;
        let (_, flags) = c.connect("z", false, false).await;
        assert_eq!(flags & FLAG_SEND_FAST_ZERO, 0);
        c.request(CMD_WRITE_ZEROES, CMD_FLAG_FAST_ZERO, 1, 0, 512)
            .await;
        assert_eq!(c.simple().await.errno, EINVAL);
        c.request(CMD_WRITE_ZEROES, 0, 2, 0, 512).await;
        assert_eq!(c.simple().await.errno, 0);
    });
}

#[test]
fn raw_oversized_write_payload_closes() {
    let srv = TestServer::start(vec![mem("a", 4096)]);
    srv.block_on(async {
        let mut c = Raw::unix(&srv.sock).await;
        c.connect("a", false, false).await;
        c.request(CMD_WRITE, 0, 1, 0, (32 << 20) + 1).await;
        assert!(c.closed().await);
    });
}

#[test]
fn raw_disconnect_mid_payload_spares_other_clients() {
    let e = mem("a", 1 << 20);
    let srv = TestServer::start(vec![e.clone()]);
    srv.block_on(async {
        let mut good = Raw::unix(&srv.sock).await;
        good.connect("a", false, false).await;
        let mut bad = Raw::tcp(srv.addr).await;
        bad.connect("a", false, false).await;
        bad.request(CMD_WRITE, 0, 1, 0, 65536).await;
        bad.send(&[0xee; 1000]).await;
        drop(bad);
        good.write(2, 4096, b"still here").await;
        assert_eq!(good.simple().await.errno, 0);
        assert_eq!(good.read(3, 4096, 10).await.unwrap(), b"still here");
        // The partial write never reached the export.
        assert!(e.contents()[..1000].iter().all(|&b| b == 0));
        let mut again = Raw::unix(&srv.sock).await;
        again.connect("a", false, false).await;
        assert_eq!(again.read(4, 4096, 10).await.unwrap(), b"still here");
    });
}

#[test]
fn raw_out_of_order_replies() {
    let e = Arc::new(
        MemExport::builder("r", 1 << 20)
            .mode(CompletionMode::Reversed(4))
            .build(),
    );
    e.fill(0, &pattern(1 << 20, 9));
    let srv = TestServer::start(vec![e]);
    srv.block_on(async {
        let mut c = Raw::unix(&srv.sock).await;
        c.connect("r", false, false).await;
        let mut b = Vec::new();
        for i in 1..=4u64 {
            let h = RequestHeader {
                flags: 0,
                command: Cmd::Read,
                cookie: i,
                offset: i * 1000,
                len: 100 * i as u32,
            };
            b.extend_from_slice(&h.encode());
        }
        c.send(&b).await;
        let want = pattern(1 << 20, 9);
        let mut order = Vec::new();
        for _ in 0..4 {
            let r = c.simple().await;
            assert_eq!(r.errno, 0);
            let i = r.cookie;
            let data = c.read_n(100 * i as usize).await;
            assert_eq!(
                data,
                &want[(i * 1000) as usize..(i * 1000 + 100 * i) as usize]
            );
            order.push(i);
        }
        assert_eq!(order, vec![4, 3, 2, 1]);
    });
}

#[test]
fn raw_inflight_bound_stops_reading() {
    let held = Held::new(1 << 20);
    let limits = Limits {
        max_inflight: 4,
        ..Limits::default()
    };
    let srv = TestServer::start_with(vec![held.clone()], limits);
    srv.block_on(async {
        let mut c = Raw::unix(&srv.sock).await;
        c.connect("held", false, false).await;
        for i in 0..10u64 {
            c.write(i, i * 4096, &[i as u8; 4096]).await;
        }
        until(|| held.submitted.load(Ordering::SeqCst) >= 4).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(held.submitted.load(Ordering::SeqCst), 4);
        let mut got = Vec::new();
        while got.len() < 10 {
            held.release();
            let r = tokio::time::timeout(Duration::from_millis(50), c.simple()).await;
            if let Ok(r) = r {
                assert_eq!(r.errno, 0);
                got.push(r.cookie);
            }
        }
        got.sort();
        assert_eq!(got, (0..10).collect::<Vec<_>>());
    });
}

#[test]
fn raw_disc_answers_inflight_first() {
    let held = Held::new(1 << 20);
    let srv = TestServer::start(vec![held.clone()]);
    srv.block_on(async {
        let mut c = Raw::unix(&srv.sock).await;
        c.connect("held", false, false).await;
        c.write(7, 0, &[1; 512]).await;
        c.request(CMD_DISC, 0, 8, 0, 0).await;
        until(|| held.submitted.load(Ordering::SeqCst) == 1).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(held.release(), 1);
        let r = c.simple().await;
        assert_eq!((r.cookie, r.errno), (7, 0));
        assert!(c.closed().await);
    });
}

#[test]
fn raw_block_size_rules() {
    // An export that needs 512-byte alignment.
    let e = Arc::new(
        MemExport::builder("b", 4 << 20)
            .block_sizes(512, 4096, 1 << 20)
            .mode(CompletionMode::Threaded(2))
            .build(),
    );
    e.fill(0, &[0xaa; 2048]);
    let srv = TestServer::start(vec![e.clone()]);
    srv.block_on(async {
        // Agreed via GO + NBD_INFO_BLOCK_SIZE: misalignment is EINVAL.
        let mut c = Raw::unix(&srv.sock).await;
        c.connect("b", false, true).await;
        assert_eq!(c.read(1, 1, 512).await, Err(EINVAL));
        assert_eq!(c.read(2, 0, 100).await, Err(EINVAL));
        c.write(3, 512, &[1; 100]).await;
        assert_eq!(c.simple().await.errno, EINVAL);
        // The agreed maximum payload holds for reads and writes.
        assert_eq!(c.read(4, 0, (1 << 20) + 512).await, Err(EINVAL));
        assert!(c.read(5, 512, 512).await.is_ok());

        // GO without NBD_INFO_BLOCK_SIZE: the defaults (minimum 1) apply,
        // so the server handles misaligned requests itself.
        let mut c = Raw::unix(&srv.sock).await;
        c.connect("b", false, false).await;
        c.write(6, 510, b"WXYZ").await;
        assert_eq!(c.simple().await.errno, 0);
        assert_eq!(c.read(7, 508, 8).await.unwrap(), b"\xaa\xaaWXYZ\xaa\xaa");
        c.request(CMD_WRITE_ZEROES, 0, 8, 1000, 100).await;
        assert_eq!(c.simple().await.errno, 0);
        c.request(CMD_WRITE_ZEROES, CMD_FLAG_FAST_ZERO, 9, 1000, 100)
            .await;
        assert_eq!(c.simple().await.errno, ENOTSUP);
        c.request(CMD_TRIM, 0, 10, 3, 5).await;
        assert_eq!(c.simple().await.errno, 0);
        let d = e.contents();
        assert_eq!(&d[508..516], b"\xaa\xaaWXYZ\xaa\xaa");
        assert!(d[1000..1100].iter().all(|&b| b == 0));
        assert_eq!(d[999], 0xaa);
        assert_eq!(d[1100], 0xaa);
        assert!(d[..8].iter().all(|&b| b == 0xaa), "trim rounded inwards");
        // Old-style EXPORT_NAME clients also get the defaults.
        let mut c = Raw::unix(&srv.sock).await;
        c.hello(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).await;
        c.option(OPT_EXPORT_NAME, b"b").await;
        c.read_n(10).await;
        assert_eq!(c.read(11, 509, 3).await.unwrap(), b"\xaaWX");
    });
}

#[test]
fn raw_many_unaligned_writers_do_not_lose_updates() {
    let e = Arc::new(
        MemExport::builder("b", 65536)
            .block_sizes(4096, 4096, 1 << 20)
            .mode(CompletionMode::Threaded(4))
            .build(),
    );
    let srv = TestServer::start(vec![e.clone()]);
    srv.block_on(async {
        // Four connections each write their own bytes of the same blocks.
        let mut tasks = Vec::new();
        for k in 0..4u8 {
            let sock = srv.sock.clone();
            tasks.push(tokio::spawn(async move {
                let mut c = Raw::unix(&sock).await;
                c.connect("b", false, false).await;
                for i in 0..64u64 {
                    let off = i * 97 * 4 + u64::from(k) * 97;
                    c.write(i, off, &[k + 1; 97]).await;
                }
                for _ in 0..64 {
                    assert_eq!(c.simple().await.errno, 0);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let d = e.contents();
    for i in 0..64usize {
        for k in 0..4usize {
            let off = i * 97 * 4 + k * 97;
            assert!(
                d[off..off + 97].iter().all(|&b| b == k as u8 + 1),
                "lost update at {off}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Lifecycle
// ---------------------------------------------------------------------------

#[test]
fn graceful_shutdown_answers_inflight() {
    let held = Held::new(1 << 20);
    let mut srv = TestServer::start(vec![held.clone()]);
    let sock = srv.sock.clone();
    let mut c = srv.block_on(async {
        let mut c = Raw::unix(&sock).await;
        c.connect("held", true, false).await;
        c.request(CMD_READ, 0, 42, 0, 4096).await;
        // Another client still negotiating.
        let mut idle = Raw::unix(&sock).await;
        idle.read_n(GREETING_LEN).await;
        until(|| held.submitted.load(Ordering::SeqCst) == 1).await;
        (c, idle)
    });
    srv.stop.send(true).unwrap();
    let task = srv.task.take().unwrap();
    srv.block_on(async {
        assert!(c.1.closed().await, "negotiating client is closed");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!task.is_finished(), "must wait for the request in flight");
        assert!(!sock.exists(), "socket file removed once accepting stops");
        assert!(UnixStream::connect(&sock).await.is_err());
        assert_eq!(held.release(), 1);
        let (h, p) = c.0.chunk().await;
        assert_eq!(
            (h.cookie, h.ty, p.len()),
            (42, REPLY_TYPE_OFFSET_DATA, 4096 + 8)
        );
        assert!(c.0.closed().await);
        tokio::time::timeout(T, task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    });
    srv.shutdown();
}

#[test]
fn dropping_serve_aborts_connections() {
    let held = Held::new(1 << 20);
    let mut srv = TestServer::start(vec![held.clone()]);
    let task = srv.task.take().unwrap();
    srv.block_on(async {
        let mut c = Raw::unix(&srv.sock).await;
        c.connect("held", false, false).await;
        c.request(CMD_READ, 0, 1, 0, 512).await;
        until(|| held.submitted.load(Ordering::SeqCst) == 1).await;
        // As after a shutdown timeout: the serve future goes away.
        task.abort();
        assert!(c.closed().await);
    });
    // The stuck request completes later into a closed connection.
    assert_eq!(held.release(), 1);
}

#[test]
fn reconfigure_keeps_open_connections() {
    let a = mem("a", 65536);
    a.fill(0, b"data");
    let srv = TestServer::start(vec![a]);
    srv.block_on(async {
        let mut c = Raw::unix(&srv.sock).await;
        c.connect("a", false, false).await;
        srv.exports.replace(vec![mem("b", 4096)]);
        assert_eq!(c.read(1, 0, 4).await.unwrap(), b"data");
        let mut d = Raw::unix(&srv.sock).await;
        d.hello(FLAG_C_FIXED_NEWSTYLE).await;
        assert_eq!(d.info(OPT_GO, "a", &[]).await.1, REP_ERR_UNKNOWN);
        assert_eq!(d.info(OPT_GO, "b", &[]).await.1, REP_ACK);
    });
}

#[test]
fn socket_path_rules() {
    let srv = TestServer::start(vec![mem("a", 4096)]);
    let cfg = ServerConfig {
        unix: Some(srv.sock.clone()),
        ..ServerConfig::default()
    };
    let set: Arc<dyn ExportSet> = Arc::new(ExportList::default());
    let err = srv
        .block_on(NbdServer::bind(&cfg, set.clone()))
        .err()
        .expect("a live socket must be refused");
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    // No listener at all is an error.
    let none = ServerConfig::default();
    assert!(srv.block_on(NbdServer::bind(&none, set)).is_err());
}

/// An export whose every request fails, to check error mapping.
struct Failing;

impl Export for Failing {
    fn name(&self) -> &str {
        "fail"
    }
    fn description(&self) -> String {
        "always fails".into()
    }
    fn size(&self) -> u64 {
        1 << 20
    }
    fn caps(&self) -> ExportCaps {
        MEM_CAPS
    }
    fn block_sizes(&self) -> BlockSizes {
        BlockSizes {
            minimum: 1,
            preferred: 4096,
            maximum: 1 << 20,
        }
    }
    fn submit(&self, req: Request) {
        let e = match req.op {
            Op::Read => IoError::Io,
            Op::Write => IoError::NoSpc,
            Op::Flush => IoError::Shutdown,
            _ => IoError::NotSup,
        };
        std::thread::spawn(move || req.complete(Err(e)));
    }
}

#[test]
fn export_errors_reach_the_client() {
    let srv = TestServer::start(vec![Arc::new(Failing)]);
    srv.block_on(async {
        let mut c = Raw::unix(&srv.sock).await;
        c.connect("fail", false, false).await;
        assert_eq!(c.read(1, 0, 4096).await, Err(EIO));
        c.write(2, 0, &[0; 10]).await;
        assert_eq!(c.simple().await.errno, ENOSPC);
        c.request(CMD_FLUSH, 0, 3, 0, 0).await;
        assert_eq!(c.simple().await.errno, ESHUTDOWN);
        let mut s = Raw::tcp(srv.addr).await;
        s.connect("fail", true, false).await;
        s.request(CMD_READ, 0, 4, 0, 4096).await;
        let (h, p) = s.chunk().await;
        assert_eq!((h.ty, h.cookie), (REPLY_TYPE_ERROR, 4));
        assert_eq!(decode_error_payload(&p).unwrap().0, EIO);
    });
}

// ---------------------------------------------------------------------------
// Benchmark against nbdkit (run explicitly:
//   cargo test --release --test nbd_server -- --ignored --nocapture bench)
// ---------------------------------------------------------------------------

/// Run one fio job; returns (IOPS, I/Os completed).
fn fio_iops(uri: &str, job: &[&str]) -> (f64, f64) {
    let out = run(Command::new("fio")
        .args(["--name=b", "--ioengine=nbd", "--output-format=json"])
        .args(["--time_based", "--runtime=4"])
        .arg(format!("--uri={uri}"))
        .args(job));
    // fio prints a banner line before the JSON.
    let start = out.stdout.iter().position(|&b| b == b'{').unwrap_or(0);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout[start..]).unwrap();
    let j = &v["jobs"][0];
    let f = |d: &str, k: &str| j[d][k].as_f64().unwrap();
    (
        f("read", "iops") + f("write", "iops"),
        f("read", "total_ios") + f("write", "total_ios"),
    )
}

/// CPU seconds used by this process (the in-process server; fio is a
/// child and not counted).
fn self_cpu() -> f64 {
    // SAFETY: rusage is plain integers and timevals; all zeroes is valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes the struct we pass.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// CPU seconds used by another process.
fn proc_cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    // SAFETY: sysconf(3) has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ticks / hz as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[test]
#[ignore]
fn bench_vs_nbdkit() {
    need("fio");
    need("nbdkit");
    let size = 1usize << 30;
    let srv = TestServer::start(vec![mem("m", size)]);
    let dir = tempfile::tempdir().unwrap();
    let ksock = dir.path().join("k.sock");
    let mut kit = Command::new("nbdkit")
        .args(["-f", "--exit-with-parent", "-U"])
        .arg(&ksock)
        .args(["memory", &size.to_string()])
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if ksock.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let kuri = format!("nbd+unix:///?socket={}", ksock.display());
    let ours = srv.unix_uri("m");
    // Fill both so reads hit allocated memory.
    for u in [&ours, &kuri] {
        fio(u, &["--rw=write", "--bs=1M", "--iodepth=8", "--size=1G"]);
    }
    let jobs: [(&str, &[&str]); 3] = [
        (
            "4k randread QD32",
            &["--rw=randread", "--bs=4k", "--iodepth=32"],
        ),
        (
            "4k randwrite QD32",
            &["--rw=randwrite", "--bs=4k", "--iodepth=32"],
        ),
        ("1M seqread QD8", &["--rw=read", "--bs=1M", "--iodepth=8"]),
    ];
    // UMPATH_BENCH=<substring> runs only matching jobs; UMPATH_BENCH_ONLY=1
    // skips nbdkit (for profiling the server alone).
    let filter = std::env::var("UMPATH_BENCH").unwrap_or_default();
    let only = std::env::var_os("UMPATH_BENCH_ONLY").is_some();
    let rounds: usize = std::env::var("UMPATH_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let kpid = kit.id();
    for (name, job) in jobs {
        if !name.contains(filter.as_str()) {
            continue;
        }
        // Interleave runs so background load hits both servers alike, and
        // also report server CPU time per I/O, which the load distorts less.
        let (mut k, mut o, mut kc, mut oc) = (vec![], vec![], vec![], vec![]);
        for _ in 0..rounds {
            if !only {
                let c0 = proc_cpu(kpid);
                let (iops, ios) = fio_iops(&kuri, job);
                k.push(iops);
                kc.push((proc_cpu(kpid) - c0) / ios * 1e6);
            }
            let c0 = self_cpu();
            let (iops, ios) = fio_iops(&ours, job);
            o.push(iops);
            oc.push((self_cpu() - c0) / ios * 1e6);
        }
        let ki = if only { 1.0 } else { median(k.clone()) };
        let kcpu = if only { 0.0 } else { median(kc) };
        let (oi, ocpu) = (median(o.clone()), median(oc));
        println!(
            "{name:18} nbdkit {ki:>7.0} IOPS {kcpu:>6.2} us/IO | umpath {oi:>7.0} IOPS {ocpu:>6.2} us/IO | IOPS ratio {:.2}  (runs: nbdkit {k:.0?} umpath {o:.0?})",
            oi / ki
        );
    }
    let _ = kit.kill();
    let _ = kit.wait();
}
