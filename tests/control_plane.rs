//! The control plane as issue 8 demands it, judged from outside: the real
//! binary, real clients (fio, nbdkit, qemu-io, and a minimal NBD client
//! written here so a test can see exactly what one connection gets: data,
//! an NBD error, a disconnect, or nothing).
//!
//! - reconfigure edits path sets in place: connections opened before it
//!   obey the new paths, admin commands and queueing; its answer says what
//!   changed per map;
//! - a map whose servers start late is exported within two polling
//!   intervals, with no reconfigure;
//! - `show` never waits behind a hung check or a slow reconfigure;
//! - SIGTERM with queued IO exits fast, tells the client, exits 0;
//! - bad input: a reconfigure storm under fio, silent control clients,
//!   SIGTERM during a reconfigure, checks that hang forever;
//! - a map removed by reconfigure ends its connections after in-flight IO.
//!
//! Each test prints its figures (`--no-capture` to see them).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

/// The second LUN's WWID (the first is `common::WWID`).
const WWID1: &str = "36000c29abcdef002";

// ---------------------------------------------------------------------
// Control socket, raw: one line in, one JSON answer out, timed.
// ---------------------------------------------------------------------

/// What one control request got.
#[derive(Debug)]
#[allow(dead_code)] // the payloads are read through Debug, in messages
enum CtlAnswer {
    /// The JSON envelope (`ok`, `text`, `data`).
    Answer(serde_json::Value),
    /// Connected, but the connection ended without a (parsable) answer.
    NoAnswer(String),
    /// Could not connect (no daemon there).
    NoConnect(String),
    /// No answer within the timeout.
    Timeout,
}

impl CtlAnswer {
    fn ok(&self) -> bool {
        matches!(self, CtlAnswer::Answer(v) if v["ok"] == true)
    }
    fn text(&self) -> String {
        match self {
            CtlAnswer::Answer(v) => v["text"].as_str().unwrap_or("").to_string(),
            other => format!("{other:?}"),
        }
    }
}

/// Sends one command line on the control socket and waits up to
/// `timeout` for the answer; returns it and how long it took (connect
/// included).
fn ctl_raw(socket: &Path, line: &str, timeout: Duration) -> (CtlAnswer, Duration) {
    let start = Instant::now();
    let mut s = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => return (CtlAnswer::NoConnect(e.to_string()), start.elapsed()),
    };
    s.set_read_timeout(Some(timeout)).expect("read timeout");
    s.set_write_timeout(Some(timeout)).expect("write timeout");
    if let Err(e) = s.write_all(format!("{line}\n").as_bytes()) {
        return (CtlAnswer::NoAnswer(e.to_string()), start.elapsed());
    }
    let mut buf = Vec::new();
    let r = s.read_to_end(&mut buf);
    let took = start.elapsed();
    match r {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            (CtlAnswer::Timeout, took)
        }
        Err(e) => (CtlAnswer::NoAnswer(e.to_string()), took),
        Ok(_) => match serde_json::from_slice::<serde_json::Value>(&buf) {
            Ok(v) => (CtlAnswer::Answer(v), took),
            Err(e) => (
                CtlAnswer::NoAnswer(format!("{e}: {:?}", String::from_utf8_lossy(&buf))),
                took,
            ),
        },
    }
}

/// `reconfigure` that must be answered with ok; returns the answer text.
fn reconfigure_ok(d: &Daemon) -> String {
    let (a, took) = ctl_raw(&d.control_socket, "reconfigure", Duration::from_secs(30));
    assert!(
        a.ok(),
        "reconfigure not answered ok after {took:?}: {a:?}\n--- daemon log ---\n{}",
        d.log_text()
    );
    a.text()
}

/// Times `line` `n` times, `gap` apart; returns every latency.
fn time_ctl(d: &Daemon, line: &str, n: usize, gap: Duration) -> Vec<Duration> {
    (0..n)
        .map(|_| {
            let (a, took) = ctl_raw(&d.control_socket, line, Duration::from_secs(60));
            assert!(a.ok(), "{line}: {a:?}");
            std::thread::sleep(gap);
            took
        })
        .collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn summary(v: &[Duration]) -> String {
    let mut s: Vec<f64> = v.iter().map(|d| ms(*d)).collect();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return "no samples".into();
    }
    format!(
        "n={} min={:.1}ms median={:.1}ms max={:.1}ms",
        s.len(),
        s[0],
        s[s.len() / 2],
        s[s.len() - 1]
    )
}

// ---------------------------------------------------------------------
// A minimal NBD client (fixed newstyle, NBD_OPT_GO, simple replies).
// ---------------------------------------------------------------------

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;

/// What one NBD request got.
#[derive(Debug, PartialEq)]
enum Nbd {
    /// Success (the data for a read, empty for a write).
    Done(Vec<u8>),
    /// An NBD error reply (errno value, e.g. 5 = EIO).
    Error(u32),
    /// The server closed the connection (or it broke).
    Closed(String),
    /// Nothing within the timeout.
    Timeout,
}

struct NbdClient {
    s: UnixStream,
    handle: u64,
}

impl NbdClient {
    /// Connects to `export` on `socket`; an unknown export is an error.
    fn connect(socket: &Path, export: &str) -> io::Result<NbdClient> {
        let mut s = UnixStream::connect(socket)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut hello = [0u8; 18];
        s.read_exact(&mut hello)?;
        let magic = u64::from_be_bytes(hello[0..8].try_into().unwrap());
        let opt = u64::from_be_bytes(hello[8..16].try_into().unwrap());
        if magic != NBDMAGIC || opt != IHAVEOPT {
            return Err(io::Error::other("not an NBD newstyle server"));
        }
        let hflags = u16::from_be_bytes([hello[16], hello[17]]);
        // FIXED_NEWSTYLE, and NO_ZEROES when offered.
        let cflags: u32 = 1 | if hflags & 2 != 0 { 2 } else { 0 };
        s.write_all(&cflags.to_be_bytes())?;
        let mut payload = Vec::new();
        payload.extend_from_slice(&(export.len() as u32).to_be_bytes());
        payload.extend_from_slice(export.as_bytes());
        payload.extend_from_slice(&0u16.to_be_bytes());
        let mut opt = Vec::new();
        opt.extend_from_slice(&IHAVEOPT.to_be_bytes());
        opt.extend_from_slice(&OPT_GO.to_be_bytes());
        opt.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        opt.extend_from_slice(&payload);
        s.write_all(&opt)?;
        loop {
            let mut h = [0u8; 20];
            s.read_exact(&mut h)?;
            if u64::from_be_bytes(h[0..8].try_into().unwrap()) != OPT_REPLY_MAGIC {
                return Err(io::Error::other("bad option reply magic"));
            }
            let typ = u32::from_be_bytes(h[12..16].try_into().unwrap());
            let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
            let mut data = vec![0u8; len];
            s.read_exact(&mut data)?;
            if typ == REP_ACK {
                break;
            }
            if typ & 0x8000_0000 != 0 {
                return Err(io::Error::other(format!(
                    "NBD_OPT_GO {export:?} refused: 0x{typ:x} {}",
                    String::from_utf8_lossy(&data)
                )));
            }
        }
        Ok(NbdClient { s, handle: 1 })
    }

    fn request(&mut self, cmd: u16, offset: u64, len: u32, data: &[u8], timeout: Duration) -> Nbd {
        self.handle += 1;
        let mut r = Vec::with_capacity(28 + data.len());
        r.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        r.extend_from_slice(&0u16.to_be_bytes());
        r.extend_from_slice(&cmd.to_be_bytes());
        r.extend_from_slice(&self.handle.to_be_bytes());
        r.extend_from_slice(&offset.to_be_bytes());
        r.extend_from_slice(&len.to_be_bytes());
        r.extend_from_slice(data);
        if let Err(e) = self.s.write_all(&r) {
            return Nbd::Closed(format!("send: {e}"));
        }
        let _ = self.s.set_read_timeout(Some(timeout));
        let mut h = [0u8; 16];
        if let Err(e) = self.s.read_exact(&mut h) {
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Nbd::Timeout,
                _ => Nbd::Closed(format!("reply: {e}")),
            };
        }
        let magic = u32::from_be_bytes(h[0..4].try_into().unwrap());
        let err = u32::from_be_bytes(h[4..8].try_into().unwrap());
        let handle = u64::from_be_bytes(h[8..16].try_into().unwrap());
        if magic != SIMPLE_REPLY_MAGIC || handle != self.handle {
            return Nbd::Closed(format!("unexpected reply magic {magic:x} handle {handle}"));
        }
        if err != 0 {
            return Nbd::Error(err);
        }
        if cmd != CMD_READ {
            return Nbd::Done(Vec::new());
        }
        let mut buf = vec![0u8; len as usize];
        match self.s.read_exact(&mut buf) {
            Ok(()) => Nbd::Done(buf),
            Err(e) => Nbd::Closed(format!("read payload: {e}")),
        }
    }

    fn read(&mut self, offset: u64, len: u32, timeout: Duration) -> Nbd {
        self.request(CMD_READ, offset, len, &[], timeout)
    }

    fn write(&mut self, offset: u64, data: &[u8], timeout: Duration) -> Nbd {
        self.request(CMD_WRITE, offset, data.len() as u32, data, timeout)
    }
}

/// Connects, panicking with the daemon log on failure.
fn nbd_connect(d: &Daemon, export: &str) -> NbdClient {
    NbdClient::connect(&d.nbd_socket, export).unwrap_or_else(|e| {
        panic!(
            "NBD connect to {export}: {e}\n--- daemon log ---\n{}",
            d.log_text()
        )
    })
}

/// Runs `f` on `c` in a thread; the answer comes back with the client.
fn in_thread(
    mut c: NbdClient,
    f: impl FnOnce(&mut NbdClient) -> Nbd + Send + 'static,
) -> mpsc::Receiver<(NbdClient, Nbd, Instant)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = f(&mut c);
        let _ = tx.send((c, r, Instant::now()));
    });
    rx
}

// ---------------------------------------------------------------------
// Configs, fio, signals.
// ---------------------------------------------------------------------

/// A `file` path entry of LUN `wwid`, with extra lines (e.g. a fault).
fn lun_path(name: &str, file: &Path, wwid: &str, extra: &str) -> String {
    format!(
        "    path {{\n        name {name}\n        transport file\n        file {}\n        vendor \"OSNEXUS\"\n        product \"QUANTASTOR\"\n        revision \"0001\"\n        wwid \"{wwid}\"\n        serial \"S{wwid}\"\n{extra}    }}\n",
        file.display()
    )
}

/// Two maps: `lun0` (WWID) and `lun1` (WWID1), with the given paths.
fn two_map_config(defaults: &str, paths: &[String]) -> String {
    format!(
        "defaults {{\n{defaults}\n}}\ndevices {{\n{SEED_STANZA}}}\nmultipaths {{\n    multipath {{\n        wwid \"{WWID}\"\n        alias lun0\n    }}\n    multipath {{\n        wwid \"{WWID1}\"\n        alias lun1\n    }}\n}}\npaths {{\n{}}}\n",
        paths.concat()
    )
}

fn maps_json(d: &Daemon) -> Vec<serde_json::Value> {
    serde_json::from_str::<serde_json::Value>(&d.ctl_ok(&["show", "maps", "--json"]))
        .expect("show maps --json is JSON")
        .as_array()
        .cloned()
        .expect("an array")
}

fn path_names(d: &Daemon) -> Vec<String> {
    d.paths_json()
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_string))
        .collect()
}

/// The common verifying fio job against lun0.
fn fio_lun0(d: &Daemon, size: &str, rate: &str) -> Child {
    fio_verify(&d.uri("lun0"), size, rate, 16, &[])
}

fn sigterm(d: &Daemon) {
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe {
        libc::kill(d.child.id() as i32, libc::SIGTERM);
    }
}

/// Waits up to `limit` for the daemon to exit; kills it if it does not.
/// Returns the exit status (None: it had to be killed) and the time.
fn wait_exit(d: &mut Daemon, since: Instant, limit: Duration) -> (Option<ExitStatus>, Duration) {
    loop {
        if let Ok(Some(s)) = d.child.try_wait() {
            return (Some(s), since.elapsed());
        }
        if since.elapsed() > limit {
            let _ = d.child.kill();
            let _ = d.child.wait();
            return (None, since.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Collects failed expectations so one run reports all of them.
#[derive(Default)]
struct Checks(Vec<String>);

impl Checks {
    fn check(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            let w = what.into();
            eprintln!("CHECK FAILED: {w}");
            self.0.push(w);
        }
    }
    fn finish(self, d: &Daemon) {
        assert!(
            self.0.is_empty(),
            "{} expectation(s) failed:\n- {}\n--- daemon log (tail) ---\n{}",
            self.0.len(),
            self.0.join("\n- "),
            tail(&d.log_text(), 60)
        );
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Polls `pred` every 50 ms until it holds or `timeout` passes.
fn wait_until(timeout: Duration, mut pred: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if pred() {
            return Some(start.elapsed());
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pattern(byte: u8, len: usize) -> Vec<u8> {
    vec![byte; len]
}

// ---------------------------------------------------------------------
// a. Reconfigure under fio verify with path-set changes.
// ---------------------------------------------------------------------

#[test]
fn reconfigure_edits_path_sets_in_place_and_old_connections_obey_it() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("lun0.img");
    make_image(&img, 64 << 20);
    let defaults = "    polling_interval 1\n    checker_timeout 5\n    no_path_retry queue";
    let p = |n: &str| file_path(n, &img);
    let d = Daemon::start_in(dir, &seed_config(defaults, &[p("p0"), p("p1")]));
    let mut checks = Checks::default();

    // A connection opened before any reconfigure, with known data.
    let mut before = nbd_connect(&d, "lun0");
    assert_eq!(
        before.write(48 << 20, &pattern(0x5a, 4096), Duration::from_secs(10)),
        Nbd::Done(vec![])
    );

    let fio = fio_lun0(&d, "32M", "1500");
    std::thread::sleep(Duration::from_millis(1000));

    // 1: add p2.
    std::fs::write(
        &d.config,
        seed_config(defaults, &[p("p0"), p("p1"), p("p2")]),
    )
    .unwrap();
    let r1 = reconfigure_ok(&d);
    eprintln!("reconfigure (add p2): {r1:?}");
    checks.check(
        r1.contains("lun0") && r1.contains("p2"),
        format!("the answer to a reconfigure that adds p2 to lun0 names lun0 and p2: {r1:?}"),
    );
    // fio's connections were opened before the reconfigure: the new path
    // must carry their IO.
    let p2_busy = wait_until(Duration::from_secs(4), || {
        d.paths_json()
            .iter()
            .any(|p| p["name"] == "p2" && p["ios"].as_u64().unwrap_or(0) > 0)
    });
    eprintln!("p2 carries IO after {p2_busy:?}");
    checks.check(
        p2_busy.is_some(),
        format!(
            "p2 (added by reconfigure) carries IO of connections opened before it within 4 s: {:?}",
            d.paths_json()
        ),
    );

    // 2: remove p0.
    std::fs::write(&d.config, seed_config(defaults, &[p("p1"), p("p2")])).unwrap();
    let r2 = reconfigure_ok(&d);
    eprintln!("reconfigure (remove p0): {r2:?}");
    checks.check(
        r2.contains("lun0") && r2.contains("p0"),
        format!("the answer to a reconfigure that removes p0 from lun0 names lun0 and p0: {r2:?}"),
    );
    checks.check(
        !path_names(&d).contains(&"p0".to_string()),
        format!("p0 is gone from show paths: {:?}", path_names(&d)),
    );

    // 3, 4: the same paths, with a comment at the top (lines shift).
    std::thread::sleep(Duration::from_millis(500));
    let cfg = seed_config(defaults, &[p("p1"), p("p2")]);
    std::fs::write(&d.config, format!("# edited by the test\n{cfg}")).unwrap();
    let r3 = reconfigure_ok(&d);
    eprintln!("reconfigure (comment added): {r3:?}");
    std::fs::write(&d.config, format!("# edited\n# twice\n\n{cfg}")).unwrap();
    let r4 = reconfigure_ok(&d);
    eprintln!("reconfigure (two comments): {r4:?}");

    // After the last reconfigure, p2 still grows under fio.
    let p2_ios = d.ios("p2");
    let grew = wait_until(Duration::from_secs(3), || d.ios("p2") > p2_ios);
    checks.check(
        grew.is_some(),
        format!(
            "p2's ios grow under fio after the last reconfigure: {:?}",
            d.paths_json()
        ),
    );

    if let Err(e) = fio_result(fio) {
        checks.check(false, format!("fio through 4 reconfigures: {e}"));
    }

    // The connection opened before every reconfigure obeys admin
    // commands: every current path failed -> its read is held
    // (no_path_retry queue) ...
    d.ctl_ok(&["fail", "path", "p1"]);
    d.ctl_ok(&["fail", "path", "p2"]);
    let rx = in_thread(before, |c| c.read(48 << 20, 4096, Duration::from_secs(20)));
    match rx.recv_timeout(Duration::from_secs(2)) {
        Ok((_, r, _)) => {
            checks.check(
                false,
                format!(
                    "with every path admin-failed and no_path_retry queue, a read on a \
                     connection opened before the reconfigures must stall; it got {}",
                    match &r {
                        Nbd::Done(v) => format!("data ({} bytes)", v.len()),
                        other => format!("{other:?}"),
                    }
                ),
            );
            let _ = d.ctl(&["reinstate", "path", "p1"]);
            let _ = d.ctl(&["reinstate", "path", "p2"]);
            checks.finish(&d);
            return;
        }
        Err(_) => {
            let held: u64 = maps_json(&d)
                .iter()
                .map(|m| m["held_requests"].as_u64().unwrap_or(0))
                .sum();
            checks.check(held >= 1, format!("show maps counts the held read: {held}"));
        }
    }
    // ... and `reinstate path` lets it through, on p2.
    let p2_before = d.ios("p2");
    let t = Instant::now();
    d.ctl_ok(&["reinstate", "path", "p2"]);
    match rx.recv_timeout(Duration::from_secs(5)) {
        Ok((_, Nbd::Done(data), _)) => {
            eprintln!("held read resumed {:?} after reinstate", t.elapsed());
            checks.check(
                data == pattern(0x5a, 4096),
                "the held read returns the data written before",
            );
            checks.check(d.ios("p2") > p2_before, "the resumed read went through p2");
        }
        Ok((_, other, _)) => checks.check(false, format!("held read after reinstate: {other:?}")),
        Err(_) => checks.check(
            false,
            "held read not resumed within 5 s of `reinstate path p2`",
        ),
    }
    d.ctl_ok(&["reinstate", "path", "p1"]);
    checks.finish(&d);
}

// ---------------------------------------------------------------------
// b. Servers that start after the daemon.
// ---------------------------------------------------------------------

fn nbd_path(name: &str, socket: &Path) -> String {
    format!(
        "    path {{\n        name {name}\n        transport nbd\n        uri \"nbd+unix:///lun0?socket={}\"\n        vendor \"OSNEXUS\"\n        product \"QUANTASTOR\"\n        wwid \"{WWID}\"\n    }}\n",
        socket.display()
    )
}

struct Nbdkit(Child);

impl Nbdkit {
    fn spawn(socket: &Path, image: &Path) -> Nbdkit {
        Nbdkit(spawn_nbdkit(socket, &[Path::new("file"), image]))
    }
}

impl Drop for Nbdkit {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_map_whose_servers_start_late_is_exported_within_two_polling_intervals() {
    need("nbdkit");
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("lun0.img");
    make_image(&image, 64 << 20);
    let socks: Vec<PathBuf> = (0..2)
        .map(|i| dir.path().join(format!("kit{i}.sock")))
        .collect();
    let paths = [nbd_path("c0", &socks[0]), nbd_path("c1", &socks[1])];
    let cfg = seed_config("    polling_interval 1\n    checker_timeout 5", &paths);
    let started = Instant::now();
    let d = Daemon::start_in(dir, &cfg);
    eprintln!("daemon serving after {:?}", started.elapsed());
    let mut checks = Checks::default();
    checks.check(
        NbdClient::connect(&d.nbd_socket, "lun0").is_err(),
        "lun0 is not exported while no server is up",
    );
    // The servers start 2 s after the daemon.
    if let Some(left) = Duration::from_secs(2).checked_sub(started.elapsed()) {
        std::thread::sleep(left);
    }
    let _kits: Vec<Nbdkit> = socks.iter().map(|s| Nbdkit::spawn(s, &image)).collect();
    let up = wait_until(Duration::from_secs(10), || socks.iter().all(|s| s.exists()))
        .expect("nbdkit sockets appear");
    let t0 = Instant::now();
    eprintln!("servers listening {up:?} after spawn");
    let exported = wait_until(Duration::from_secs(8), || {
        NbdClient::connect(&d.nbd_socket, "lun0").is_ok()
    });
    eprintln!("lun0 exported {exported:?} after its servers listen (polling_interval 1)");
    // Two polling intervals, plus 500 ms for a loaded 2-core machine.
    let bound = Duration::from_millis(2500);
    checks.check(
        exported.is_some_and(|t| t <= bound),
        format!(
            "lun0 exported within 2 x polling_interval of its servers starting, with no \
             reconfigure: took {exported:?} (bound {bound:?})"
        ),
    );
    if exported.is_some() {
        let both = wait_until(Duration::from_secs(3).saturating_sub(t0.elapsed()), || {
            d.paths_json()
                .iter()
                .filter(|p| p["dm_state"] == "active" && p["state"] == "ready")
                .count()
                == 2
        });
        checks.check(
            both.is_some(),
            format!("both paths active within 3 s: {:?}", d.paths_json()),
        );
        let maps = maps_json(&d);
        checks.check(
            maps.iter()
                .any(|m| m["name"] == "lun0" && m["size"] == 64u64 << 20),
            format!("lun0 has the LUN's size: {maps:?}"),
        );
        let out = run(&mut qemu_io(
            &d,
            &["write -P 0x3c 0 1M", "flush", "read -P 0x3c 0 1M"],
        ));
        checks.check(
            out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("failed"),
            format!(
                "qemu-io through the late map: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        );
    }
    checks.finish(&d);
}

// ---------------------------------------------------------------------
// d. show answers while another map's check hangs, and during a
//    reconfigure that adds a path whose check hangs.
// ---------------------------------------------------------------------

#[test]
fn show_maps_answers_fast_while_another_maps_check_hangs() {
    let dir = tempfile::tempdir().unwrap();
    let img0 = dir.path().join("lun0.img");
    let img1 = dir.path().join("lun1.img");
    make_image(&img0, 16 << 20);
    make_image(&img1, 16 << 20);
    let defaults = "    polling_interval 1\n    checker_timeout 3";
    let base = vec![
        lun_path("a0", &img0, WWID, ""),
        lun_path("a1", &img0, WWID, ""),
        lun_path("b0", &img1, WWID1, ""),
        lun_path("b1", &img1, WWID1, ""),
    ];
    let d = Daemon::start_in(dir, &two_map_config(defaults, &base));
    let mut checks = Checks::default();
    let limit = Duration::from_millis(100);

    // 1. b0's checks hang (checker_timeout 3): sample across a timeout.
    d.ctl_ok(&["fault", "path", "b0", "hang", "check"]);
    let hung = time_ctl(&d, "show maps", 25, Duration::from_millis(150));
    eprintln!("show maps while b0's check hangs: {}", summary(&hung));
    let slow: Vec<_> = hung.iter().filter(|t| **t >= limit).collect();
    checks.check(
        slow.is_empty(),
        format!(
            "show maps < 100 ms while lun1's path b0 hangs in its check: {}",
            summary(&hung)
        ),
    );
    d.ctl_ok(&["fault", "path", "b0", "clear"]);

    // 2. A reconfigure adds b2, declared with a check that hangs.
    let mut paths = base.clone();
    paths.push(lun_path(
        "b2",
        &img1,
        WWID1,
        "        fault \"hang check\"\n",
    ));
    std::fs::write(&d.config, two_map_config(defaults, &paths)).unwrap();
    let sock = d.control_socket.clone();
    let reconf = std::thread::spawn(move || ctl_raw(&sock, "reconfigure", Duration::from_secs(60)));
    std::thread::sleep(Duration::from_millis(50));
    let mut during = Vec::new();
    let start = Instant::now();
    while !reconf.is_finished() || start.elapsed() < Duration::from_millis(2000) {
        let (a, took) = ctl_raw(&d.control_socket, "show maps", Duration::from_secs(60));
        checks.check(a.ok(), format!("show maps during reconfigure: {a:?}"));
        during.push(took);
        std::thread::sleep(Duration::from_millis(100));
        if start.elapsed() > Duration::from_secs(40) {
            break;
        }
    }
    let (ans, reconf_took) = reconf.join().unwrap();
    eprintln!(
        "reconfigure adding a hung-check path answered after {reconf_took:?}: {}",
        ans.text()
    );
    eprintln!("show maps during that reconfigure: {}", summary(&during));
    checks.check(ans.ok(), format!("the reconfigure is answered ok: {ans:?}"));
    checks.check(
        during.iter().all(|t| *t < limit),
        format!(
            "show maps < 100 ms while a reconfigure adds a path whose check hangs: {}",
            summary(&during)
        ),
    );
    checks.check(
        path_names(&d).contains(&"b2".to_string()),
        format!("b2 is in show paths: {:?}", path_names(&d)),
    );
    // lun0 is untouched: it serves.
    let mut c = nbd_connect(&d, "lun0");
    checks.check(
        c.write(0, &pattern(1, 4096), Duration::from_secs(5)) == Nbd::Done(vec![]),
        "lun0 serves IO after the reconfigure",
    );
    let _ = d.ctl(&["fault", "path", "b2", "clear"]);
    checks.finish(&d);
}

// ---------------------------------------------------------------------
// e. SIGTERM with IO held by no_path_retry queue.
// ---------------------------------------------------------------------

#[test]
fn sigterm_with_queued_io_exits_within_10s_and_fails_the_held_io() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("lun0.img");
    make_image(&img, 16 << 20);
    let mut d = Daemon::start_in(
        dir,
        &seed_config(
            "    polling_interval 1\n    checker_timeout 5\n    no_path_retry queue",
            &[file_path("p0", &img), file_path("p1", &img)],
        ),
    );
    let mut checks = Checks::default();
    let mut c = nbd_connect(&d, "lun0");
    assert_eq!(
        c.write(0, &pattern(0x77, 4096), Duration::from_secs(5)),
        Nbd::Done(vec![])
    );
    d.ctl_ok(&["fail", "path", "p0"]);
    d.ctl_ok(&["fail", "path", "p1"]);
    let rx = in_thread(c, |c| c.read(0, 4096, Duration::from_secs(25)));
    assert!(
        rx.recv_timeout(Duration::from_millis(1500)).is_err(),
        "the read must be held while every path is failed (no_path_retry queue)"
    );
    let held: u64 = maps_json(&d)
        .iter()
        .map(|m| m["held_requests"].as_u64().unwrap_or(0))
        .sum();
    assert!(held >= 1, "show maps counts the held read");

    let t = Instant::now();
    sigterm(&d);
    let (status, took) = wait_exit(&mut d, t, Duration::from_secs(15));
    eprintln!("SIGTERM with a held read: exit {status:?} after {took:?}");
    checks.check(
        status.is_some() && took < Duration::from_secs(10),
        format!("the daemon exits within 10 s of SIGTERM: {status:?} after {took:?}"),
    );
    checks.check(
        status.is_some_and(|s| s.success()),
        format!("exit status 0: {status:?}"),
    );
    match rx.recv_timeout(Duration::from_secs(1)) {
        Ok((_, r, at)) => {
            eprintln!(
                "held read answered {:?} after SIGTERM: {r:?}",
                at.duration_since(t)
            );
            checks.check(
                matches!(r, Nbd::Error(_) | Nbd::Closed(_)),
                format!("the held read gets an error (not data, not a hang): {r:?}"),
            );
            checks.check(
                at.duration_since(t) < Duration::from_secs(10),
                "the held read is answered within 10 s of SIGTERM",
            );
        }
        Err(_) => checks.check(false, "the held read got no answer (hang)"),
    }
    checks.finish(&d);
}

// ---------------------------------------------------------------------
// f. Bad input.
// ---------------------------------------------------------------------

#[test]
fn a_reconfigure_storm_under_fio_verify_loses_nothing() {
    need("fio");
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("lun0.img");
    make_image(&img, 64 << 20);
    let defaults = "    polling_interval 1\n    checker_timeout 5\n    no_path_retry queue";
    let p = |n: &str| file_path(n, &img);
    let set_a = seed_config(defaults, &[p("p0"), p("p1")]);
    let set_b = seed_config(defaults, &[p("p1"), p("p2")]);
    let d = Daemon::start_in(dir, &set_a);
    let mut checks = Checks::default();
    // Writes verified as they go (verify_backlog) for a fixed time, so the
    // storm runs while IO does.
    let runtime = 15;
    let mut fio = Command::new("fio")
        .args([
            "--name=storm",
            "--ioengine=nbd",
            &format!("--uri={}", d.uri("lun0")),
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=16",
            "--size=32M",
            "--time_based",
            &format!("--runtime={runtime}"),
            "--rate_iops=1500",
            "--verify=crc32c",
            "--verify_backlog=512",
            "--verify_fatal=1",
            "--verify_state_save=0",
            "--output-format=json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start fio");
    std::thread::sleep(Duration::from_millis(1000));
    let mut took = Vec::new();
    let start = Instant::now();
    for i in 0..50 {
        std::fs::write(&d.config, if i % 2 == 0 { &set_b } else { &set_a }).unwrap();
        let (a, t) = ctl_raw(&d.control_socket, "reconfigure", Duration::from_secs(30));
        took.push(t);
        checks.check(a.ok(), format!("reconfigure #{i} answered ok: {a:?}"));
        std::thread::sleep(Duration::from_millis(60));
    }
    let storm = start.elapsed();
    eprintln!("50 reconfigures in {storm:?}: {}", summary(&took));
    checks.check(
        fio.try_wait().expect("fio").is_none(),
        format!("the storm ({storm:?}) ran while fio ({runtime} s) did"),
    );
    if let Err(e) = fio_result(fio) {
        checks.check(false, format!("fio through 50 reconfigures: {e}"));
    }
    // The last set written was set_a (i = 49).
    let mut names = path_names(&d);
    names.sort();
    checks.check(
        names == ["p0", "p1"],
        format!("the last path set is live: {names:?}"),
    );
    checks.finish(&d);
}

#[test]
fn silent_control_clients_do_not_block_other_commands() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("lun0.img");
    make_image(&img, 16 << 20);
    let d = Daemon::start_in(
        dir,
        &seed_config(
            "    polling_interval 1",
            &[file_path("p0", &img), file_path("p1", &img)],
        ),
    );
    let mut checks = Checks::default();
    let silent: Vec<UnixStream> = (0..20)
        .map(|_| UnixStream::connect(&d.control_socket).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let lat = time_ctl(&d, "show maps", 15, Duration::from_millis(50));
    eprintln!(
        "show maps with 20 silent control clients: {}",
        summary(&lat)
    );
    checks.check(
        lat.iter().all(|t| *t < Duration::from_millis(100)),
        format!(
            "show maps < 100 ms with 20 silent clients: {}",
            summary(&lat)
        ),
    );
    for line in ["fail path p0", "reinstate path p0", "reconfigure"] {
        let (a, t) = ctl_raw(&d.control_socket, line, Duration::from_secs(10));
        checks.check(
            a.ok(),
            format!("{line} with 20 silent clients: {a:?} after {t:?}"),
        );
    }
    drop(silent);
    checks.finish(&d);
}

#[test]
fn sigterm_during_a_reconfigure_exits_cleanly_and_answers_it() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("lun0.img");
    make_image(&img, 16 << 20);
    // checker_timeout 3 and a new path whose check hangs: a reconfigure
    // that has slow work to do.
    let defaults = "    polling_interval 1\n    checker_timeout 3";
    let mut d = Daemon::start_in(
        dir,
        &seed_config(defaults, &[file_path("p0", &img), file_path("p1", &img)]),
    );
    let mut checks = Checks::default();
    let p2 = file_path("p2", &img).replace(
        "        serial",
        "        fault \"hang check\"\n        serial",
    );
    std::fs::write(
        &d.config,
        seed_config(
            defaults,
            &[file_path("p0", &img), file_path("p1", &img), p2],
        ),
    )
    .unwrap();
    let sock = d.control_socket.clone();
    let reconf = std::thread::spawn(move || ctl_raw(&sock, "reconfigure", Duration::from_secs(30)));
    std::thread::sleep(Duration::from_millis(300));
    let pending = !reconf.is_finished();
    eprintln!("reconfigure still pending at SIGTERM: {pending}");
    let t = Instant::now();
    sigterm(&d);
    let (status, took) = wait_exit(&mut d, t, Duration::from_secs(15));
    eprintln!("SIGTERM during a reconfigure: exit {status:?} after {took:?}");
    checks.check(
        status.is_some() && took < Duration::from_secs(10),
        format!("exits within 10 s of SIGTERM during a reconfigure: {status:?} after {took:?}"),
    );
    checks.check(
        status.is_some_and(|s| s.success()),
        format!("exit status 0: {status:?}"),
    );
    let (ans, _) = reconf.join().unwrap();
    eprintln!("the reconfigure got: {ans:?}");
    if pending {
        checks.check(
            matches!(ans, CtlAnswer::Answer(_)),
            format!("a reconfigure in progress at SIGTERM is answered or refused with a reason: {ans:?}"),
        );
    }
    checks.finish(&d);
}

#[test]
fn a_check_that_hangs_forever_does_not_stop_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("lun0.img");
    make_image(&img, 16 << 20);
    let mut d = Daemon::start_in(
        dir,
        &seed_config(
            "    polling_interval 1\n    checker_timeout 2",
            &[file_path("p0", &img), file_path("p1", &img)],
        ),
    );
    let mut checks = Checks::default();
    d.ctl_ok(&["fault", "path", "p1", "hang", "check"]);
    // Let a check get stuck, and time out at least once.
    d.wait_path("p1", "a check timed out", Duration::from_secs(10), |p| {
        p["dm_state"] == "failed"
    });
    let t = Instant::now();
    sigterm(&d);
    let (status, took) = wait_exit(&mut d, t, Duration::from_secs(15));
    eprintln!("SIGTERM with a hung check: exit {status:?} after {took:?}");
    checks.check(
        status.is_some() && took < Duration::from_secs(10),
        format!("exits within 10 s of SIGTERM with a check hung: {status:?} after {took:?}"),
    );
    checks.check(
        status.is_some_and(|s| s.success()),
        format!("exit status 0: {status:?}"),
    );
    checks.finish(&d);
}

#[test]
fn a_hung_check_on_a_path_removed_by_reconfigure_does_not_stop_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("lun0.img");
    make_image(&img, 16 << 20);
    let defaults = "    polling_interval 1\n    checker_timeout 2";
    let p1 = file_path("p1", &img).replace(
        "        serial",
        "        fault \"hang check\"\n        serial",
    );
    let mut d = Daemon::start_in(dir, &seed_config(defaults, &[file_path("p0", &img), p1]));
    let mut checks = Checks::default();
    d.wait_path("p1", "its check hung", Duration::from_secs(10), |p| {
        p["dm_state"] == "failed"
    });
    std::fs::write(&d.config, seed_config(defaults, &[file_path("p0", &img)])).unwrap();
    let r = reconfigure_ok(&d);
    eprintln!("reconfigure removing p1: {r:?}");
    checks.check(
        path_names(&d) == ["p0"],
        format!("only p0 is left: {:?}", path_names(&d)),
    );
    let t = Instant::now();
    sigterm(&d);
    let (status, took) = wait_exit(&mut d, t, Duration::from_secs(15));
    eprintln!("SIGTERM after removing a path with a hung check: exit {status:?} after {took:?}");
    checks.check(
        status.is_some() && took < Duration::from_secs(10),
        format!(
            "exits within 10 s of SIGTERM though a removed path's check hangs forever: \
             {status:?} after {took:?}"
        ),
    );
    checks.check(
        status.is_some_and(|s| s.success()),
        format!("exit status 0: {status:?}"),
    );
    checks.finish(&d);
}

// ---------------------------------------------------------------------
// g. A map removed by reconfigure.
// ---------------------------------------------------------------------

#[test]
fn a_map_removed_by_reconfigure_ends_its_connections_after_inflight_io() {
    let dir = tempfile::tempdir().unwrap();
    let img0 = dir.path().join("lun0.img");
    let img1 = dir.path().join("lun1.img");
    make_image(&img0, 16 << 20);
    make_image(&img1, 16 << 20);
    let defaults = "    polling_interval 1\n    checker_timeout 5";
    let lun0 = [
        lun_path("a0", &img0, WWID, ""),
        lun_path("a1", &img0, WWID, ""),
    ];
    let lun1 = vec![
        lun_path("b0", &img1, WWID1, ""),
        lun_path("b1", &img1, WWID1, ""),
    ];
    let all: Vec<String> = lun0.iter().chain(&lun1).cloned().collect();
    let d = Daemon::start_in(dir, &two_map_config(defaults, &all));
    let mut checks = Checks::default();
    let mut c0 = nbd_connect(&d, "lun0");
    let mut c1 = nbd_connect(&d, "lun1");
    let t = Duration::from_secs(5);
    assert_eq!(c0.write(0, &pattern(0xa0, 4096), t), Nbd::Done(vec![]));
    assert_eq!(c1.write(0, &pattern(0xb1, 4096), t), Nbd::Done(vec![]));

    // A read of lun0 in flight (1.5 s on either path) when lun0 goes.
    d.ctl_ok(&["fault", "path", "a0", "delay", "1500", "read"]);
    d.ctl_ok(&["fault", "path", "a1", "delay", "1500", "read"]);
    let inflight = in_thread(c0, |c| c.read(0, 4096, Duration::from_secs(20)));
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(&d.config, two_map_config(defaults, &lun1)).unwrap();
    let sock = d.control_socket.clone();
    let reconf = std::thread::spawn(move || ctl_raw(&sock, "reconfigure", Duration::from_secs(30)));

    match inflight.recv_timeout(Duration::from_secs(10)) {
        Ok((mut c0, r, _)) => {
            checks.check(
                r == Nbd::Done(pattern(0xa0, 4096)),
                format!("the read in flight when lun0 was removed completes with its data: {r:?}"),
            );
            let (ans, took) = reconf.join().unwrap();
            eprintln!(
                "reconfigure removing lun0 answered after {took:?}: {}",
                ans.text()
            );
            checks.check(ans.ok(), format!("reconfigure answered ok: {ans:?}"));
            checks.check(
                ans.text().contains("lun0"),
                format!(
                    "the reconfigure answer names the removed map lun0: {:?}",
                    ans.text()
                ),
            );
            // The connection to the removed map ends with an error.
            let next = c0.read(0, 4096, Duration::from_secs(5));
            eprintln!("lun0 connection after its map was removed: {next:?}");
            checks.check(
                matches!(next, Nbd::Error(_) | Nbd::Closed(_)),
                format!(
                    "a connection to a removed map gets an NBD error or is closed \
                     (not served, not hung): {}",
                    match &next {
                        Nbd::Done(v) => format!("served {} bytes", v.len()),
                        other => format!("{other:?}"),
                    }
                ),
            );
        }
        Err(_) => checks.check(false, "the in-flight read of lun0 never completed"),
    }
    // lun1's connection, opened before, is untouched.
    checks.check(
        c1.read(0, 4096, t) == Nbd::Done(pattern(0xb1, 4096)),
        "lun1's connection still reads its data",
    );
    checks.check(
        c1.write(4096, &pattern(0xb2, 4096), t) == Nbd::Done(vec![]),
        "lun1's connection still writes",
    );
    let names: Vec<String> = maps_json(&d)
        .iter()
        .filter_map(|m| m["name"].as_str().map(str::to_string))
        .collect();
    checks.check(names == ["lun1"], format!("only lun1 is left: {names:?}"));
    checks.check(
        NbdClient::connect(&d.nbd_socket, "lun0").is_err(),
        "lun0 is no longer exported",
    );
    checks.finish(&d);
}
