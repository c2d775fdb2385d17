//! A real iSCSI target for the tests: Debian's `tgtd` (package `tgt`),
//! one daemon per portal, every portal serving the same target, LUN and
//! image, so a test can stop, kill and restart one portal alone.
//!
//! What [`Tgt::start`] makes:
//! - a scratch directory with a sparse image (`lun.img`) and one log per
//!   tgtd (`tgtd-I.log`, its foreground output);
//! - per portal a `tgtd -f -C CTL --iscsi portal=ADDR:3260`, where ADDR is
//!   a random loopback address in 127.64.0.0/10 (checked free by binding
//!   it first) and CTL a control port in 10000..32767 (tgtd accepts
//!   0..32767; its socket is /var/run/tgtd/socket.CTL, locked through
//!   socket.CTL.lock, and a second tgtd on a taken CTL exits with
//!   "another tgtd is using ...": the fixture then takes another). So
//!   parallel tests (threads or processes) never share a daemon;
//! - on each: target tid 1 named [`IQN`], LUN 1 on the image with tgtd's
//!   default `rdwr` store (pread/pwrite through the page cache, which the
//!   daemons share: a write through one portal reads back through the
//!   other without `bsoflags=direct`), vendor [`VENDOR`], product
//!   [`PRODUCT`], serial [`SERIAL`], `scsi_id=`[`SCSI_ID`]; the target
//!   bound to every initiator (`-I ALL`); the optional CHAP accounts.
//!
//! tgtd ignores SIGTERM, so every daemon is ended with SIGKILL: by
//! [`Tgt::kill`], by Drop (which also removes the control socket files),
//! and, should the test process itself be killed, by the kernel: each
//! tgtd runs under `setpriv --pdeathsig KILL`, so it dies with the thread
//! that spawned it (start and restart a `Tgt` from the test's thread).
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The target every portal serves.
pub const IQN: &str = "iqn.2026-11.com.example:lun0";
/// Standard INQUIRY vendor (8 characters at most).
pub const VENDOR: &str = "OSNEXUS";
/// Standard INQUIRY product.
pub const PRODUCT: &str = "QUANTASTOR";
/// VPD 0x80 unit serial number (tgtd right-aligns it in 36 spaces).
pub const SERIAL: &str = "QS0001";
/// tgtd's `scsi_id=`: reported as the T10 vendor ID designator of VPD
/// 0x83 and, read as hexadecimal digits (right-aligned in 128 bits, first
/// nibble forced to 6), as its NAA IEEE Registered Extended designator.
/// 32 hex digits starting with 6 make that designator these very digits,
/// so scsi_id's rules (NAA type 6 first, prefix "3") give [`SCSI_ID_WWID`].
pub const SCSI_ID: &str = "6000c29abcdef0010000000000000001";
/// The SCSIid (WWID) a kernel initiator's scsi_id reports: the guest's
/// open-iscsi login in tests/vm_iscsi.rs confirms it (`scsi_id -g -u` and
/// /dev/disk/by-id/scsi-<WWID>).
pub const SCSI_ID_WWID: &str = "36000c29abcdef0010000000000000001";
/// The LUN the image is served as (LUN 0 is tgtd's controller).
pub const LUN: u32 = 1;

/// A CHAP account (user name and secret).
#[derive(Clone)]
pub struct Chap {
    pub user: String,
    pub secret: String,
}

impl Chap {
    pub fn new(user: &str, secret: &str) -> Chap {
        Chap {
            user: user.into(),
            secret: secret.into(),
        }
    }
}

impl std::fmt::Debug for Chap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chap")
            .field("user", &self.user)
            .field("secret", &"<hidden>")
            .finish()
    }
}

/// What to start.
#[derive(Debug, Clone)]
pub struct TgtConfig {
    /// How many portals (tgtd processes).
    pub portals: usize,
    /// Image size, bytes.
    pub size: u64,
    /// Incoming CHAP: the initiator must log in with this account.
    pub chap: Option<Chap>,
    /// Outgoing (mutual) CHAP: the target answers the initiator's
    /// challenge as this account.
    pub mutual: Option<Chap>,
    /// Each tgtd in a network namespace of its own, reached through a
    /// veth pair (198.18.0.0/15, the benchmarking range: host side .1,
    /// tgtd's side .2 of a /30), so [`Tgt::cut`] can take its network
    /// away without a reset.
    pub netns: bool,
}

impl Default for TgtConfig {
    fn default() -> Self {
        TgtConfig {
            portals: 2,
            size: 64 << 20,
            chap: None,
            mutual: None,
            netns: false,
        }
    }
}

struct Portal {
    addr: SocketAddrV4,
    ctl: u16,
    child: Option<Child>,
    log: PathBuf,
    /// The namespace and the host's end of the veth pair.
    netns: Option<(String, String)>,
}

/// `ip ARGS`, which must succeed.
fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        o.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A namespace with a veth pair to it: (namespace, host's veth, portal).
fn make_netns() -> (String, String, SocketAddrV4) {
    super::need("ip");
    let r = random();
    let tag = format!("{:08x}", r as u32);
    let ns = format!("umt{tag}");
    let (host, inner) = (format!("uh{tag}"), format!("un{tag}"));
    let (b, c) = (18 + ((r >> 32) & 1) as u8, (r >> 40) as u8);
    let d = 4 * (1 + ((r >> 48) % 63) as u8);
    let host_ip = format!("198.{b}.{c}.{}/30", d + 1);
    let ns_ip = Ipv4Addr::new(198, b, c, d + 2);
    ip(&["netns", "add", &ns]);
    ip(&["link", "add", &host, "type", "veth", "peer", "name", &inner]);
    ip(&["link", "set", &inner, "netns", &ns]);
    ip(&["addr", "add", &host_ip, "dev", &host]);
    ip(&["link", "set", &host, "up"]);
    ip(&[
        "-n",
        &ns,
        "addr",
        "add",
        &format!("{ns_ip}/30"),
        "dev",
        &inner,
    ]);
    ip(&["-n", &ns, "link", "set", &inner, "up"]);
    ip(&["-n", &ns, "link", "set", "lo", "up"]);
    (ns, host, SocketAddrV4::new(ns_ip, 3260))
}

/// Running tgtd daemons, one per portal, killed on drop.
pub struct Tgt {
    pub dir: tempfile::TempDir,
    pub image: PathBuf,
    pub config: TgtConfig,
    portals: Vec<Portal>,
}

/// Fails the test with an install hint when tgtd is missing.
pub fn need_tgt() {
    for bin in ["tgtd", "tgtadm"] {
        assert!(
            which(bin).is_some(),
            "{bin} is not installed: run ./scripts/test.sh, or apt-get install tgt"
        );
    }
    super::need("setpriv");
}

/// Fails the test with an install hint when libiscsi's tools are missing.
pub fn need_libiscsi() {
    for bin in ["iscsi-ls", "iscsi-inq", "iscsi-readcapacity16"] {
        assert!(
            which(bin).is_some(),
            "{bin} is not installed: run ./scripts/test.sh, or apt-get install libiscsi-bin"
        );
    }
}

/// Fails the test with an install hint when qemu lacks its iSCSI driver.
pub fn need_qemu_iscsi() {
    super::need("qemu-io");
    let out = Command::new("qemu-img").arg("--help").output();
    let formats = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    assert!(
        formats.split_whitespace().any(|w| w == "iscsi"),
        "qemu has no iscsi block driver: run ./scripts/test.sh, or apt-get install \
         qemu-block-extra (the same version as qemu-utils)"
    );
}

/// `bin` on PATH or in /usr/sbin, /sbin.
fn which(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

/// A random number (std's hasher keys are random per process and call).
fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// A free loopback portal: a random 127.64.0.0/10 address, port 3260.
fn free_portal() -> SocketAddrV4 {
    for _ in 0..100 {
        let r = random();
        let ip = Ipv4Addr::new(
            127,
            64 + (r & 63) as u8,
            (r >> 8) as u8,
            1 + ((r >> 16) % 254) as u8,
        );
        let addr = SocketAddrV4::new(ip, 3260);
        if TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
    panic!("no free loopback address for a tgtd portal in 100 tries");
}

impl Tgt {
    /// `portals` portals, no CHAP, a 64 MiB image.
    pub fn start(portals: usize) -> Tgt {
        Self::start_with(TgtConfig {
            portals,
            ..TgtConfig::default()
        })
    }

    /// Starts one tgtd per portal and configures each the same way.
    pub fn start_with(config: TgtConfig) -> Tgt {
        need_tgt();
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("lun.img");
        super::make_image(&image, config.size);
        let mut t = Tgt {
            portals: Vec::new(),
            image,
            config,
            dir,
        };
        for i in 0..t.config.portals {
            let log = t.dir.path().join(format!("tgtd-{i}.log"));
            let (addr, netns) = if t.config.netns {
                let (ns, host, addr) = make_netns();
                (addr, Some((ns, host)))
            } else {
                (free_portal(), None)
            };
            t.portals.push(Portal {
                addr,
                ctl: 0,
                child: None,
                log,
                netns,
            });
            t.launch(i, true);
        }
        t
    }

    /// Spawns portal `i`'s tgtd (a new control port if `new_ctl`), waits
    /// until it answers on its control socket and its portal, then
    /// configures the target.
    fn launch(&mut self, i: usize, new_ctl: bool) {
        let mut tries = 0;
        loop {
            tries += 1;
            if new_ctl {
                self.portals[i].ctl = 10_000 + (random() % 22_768) as u16;
            }
            let p = &self.portals[i];
            let log = std::fs::File::create(&p.log).expect("tgtd log");
            let err = log.try_clone().expect("tgtd log");
            let mut cmd = match &p.netns {
                Some((ns, _)) => {
                    let mut c = Command::new("ip");
                    c.args(["netns", "exec", ns, "setpriv"]);
                    c
                }
                None => Command::new("setpriv"),
            };
            let mut child = cmd
                .args(["--pdeathsig", "KILL", "--"])
                .arg(which("tgtd").expect("tgtd"))
                .args(["-f", "-C", &p.ctl.to_string(), "--iscsi"])
                .arg(format!("portal={}", p.addr))
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(err)
                .spawn()
                .expect("start tgtd");
            match self.wait_up(i, &mut child) {
                Ok(()) => {
                    self.portals[i].child = Some(child);
                    break;
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    assert!(
                        new_ctl && e.contains("another tgtd") && tries < 20,
                        "tgtd for portal {} (control port {}) did not start: {e}",
                        self.portals[i].addr,
                        self.portals[i].ctl
                    );
                }
            }
        }
        self.configure(i);
    }

    /// Waits up to 10 s for tgtd to answer on its control socket and
    /// portal; `Err` carries its log.
    fn wait_up(&self, i: usize, child: &mut Child) -> Result<(), String> {
        let p = &self.portals[i];
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("exited ({status}): {}", self.log(i)));
            }
            let log = self.log(i);
            if log.contains("failed to create/bind to portal") {
                return Err(format!("portal taken: {log}"));
            }
            let ctl_ok = Command::new("tgtadm")
                .args(["-C", &p.ctl.to_string(), "--op", "show", "--mode", "sys"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ctl_ok
                && TcpStream::connect_timeout(&p.addr.into(), Duration::from_secs(1)).is_ok()
                && matches!(child.try_wait(), Ok(None))
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("not up after 10 s: {log}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The target, LUN, identity, accounts and ACL on portal `i`'s tgtd.
    fn configure(&self, i: usize) {
        let image = self.image.display().to_string();
        self.tgtadm(
            i,
            &["--op", "new", "--mode", "target", "--tid", "1", "-T", IQN],
        );
        self.tgtadm(
            i,
            &[
                "--op",
                "new",
                "--mode",
                "logicalunit",
                "--tid",
                "1",
                "--lun",
                &LUN.to_string(),
                "-b",
                &image,
            ],
        );
        self.update_lun(
            i,
            &format!("vendor_id={VENDOR},product_id={PRODUCT},scsi_sn={SERIAL},scsi_id={SCSI_ID}"),
        );
        let accounts = [(&self.config.chap, false), (&self.config.mutual, true)];
        for (chap, outgoing) in accounts {
            if let Some(c) = chap {
                self.account(i, c, outgoing);
            }
        }
        self.tgtadm(
            i,
            &[
                "--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL",
            ],
        );
    }

    /// Sets LUN parameters on portal `i`'s tgtd (`tgtadm --params`, e.g.
    /// `thin_provisioning=1`).
    pub fn update_lun(&self, i: usize, params: &str) {
        let lun = LUN.to_string();
        self.tgtadm(
            i,
            &[
                "--op",
                "update",
                "--mode",
                "logicalunit",
                "--tid",
                "1",
                "--lun",
                &lun,
                "--params",
                params,
            ],
        );
    }

    /// Sets a target parameter on portal `i`'s tgtd (e.g. `HeaderDigest`
    /// to `CRC32C,None`).
    pub fn update_target(&self, i: usize, name: &str, value: &str) {
        self.tgtadm(
            i,
            &[
                "--op", "update", "--mode", "target", "--tid", "1", "--name", name, "--value",
                value,
            ],
        );
    }

    /// Adds account `c` to portal `i`'s tgtd and binds it to the target,
    /// as its outgoing (mutual) account if `outgoing`.
    pub fn account(&self, i: usize, c: &Chap, outgoing: bool) {
        self.tgtadm_secret(
            i,
            &[
                "--op",
                "new",
                "--mode",
                "account",
                "--user",
                &c.user,
                "--password",
                &c.secret,
            ],
        );
        let mut bind = vec![
            "--op", "bind", "--mode", "account", "--tid", "1", "--user", &c.user,
        ];
        if outgoing {
            bind.push("--outgoing");
        }
        self.tgtadm(i, &bind);
    }

    /// Runs `tgtadm -C CTL --lld iscsi ARGS...` against portal `i`'s
    /// tgtd; panics with its message if it fails. Returns stdout.
    pub fn tgtadm(&self, i: usize, args: &[&str]) -> String {
        self.tgtadm_inner(i, args, false)
    }

    /// [`Tgt::tgtadm`] for arguments holding a secret: a failure shows
    /// them masked.
    fn tgtadm_secret(&self, i: usize, args: &[&str]) -> String {
        self.tgtadm_inner(i, args, true)
    }

    fn tgtadm_inner(&self, i: usize, args: &[&str], secret: bool) -> String {
        let ctl = self.portals[i].ctl.to_string();
        let out = Command::new("tgtadm")
            .args(["-C", &ctl, "--lld", "iscsi"])
            .args(args)
            .output()
            .expect("run tgtadm");
        if !out.status.success() {
            let shown: Vec<&str> = if secret {
                args.iter()
                    .scan(false, |after_pw, a| {
                        let s = if *after_pw { "<hidden>" } else { *a };
                        *after_pw = *a == "--password";
                        Some(s)
                    })
                    .collect()
            } else {
                args.to_vec()
            };
            panic!(
                "tgtadm -C {ctl} {shown:?} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// How many portals.
    pub fn len(&self) -> usize {
        self.portals.len()
    }

    /// Portal `i` as "127.x.y.z:3260".
    pub fn portal(&self, i: usize) -> String {
        self.portals[i].addr.to_string()
    }

    /// Portal `i`'s address.
    pub fn addr(&self, i: usize) -> SocketAddrV4 {
        self.portals[i].addr
    }

    /// Portal `i`'s tgtd control port (`tgtadm -C`).
    pub fn control_port(&self, i: usize) -> u16 {
        self.portals[i].ctl
    }

    /// The target's IQN.
    pub fn iqn(&self) -> &str {
        IQN
    }

    /// The backing image.
    pub fn image(&self) -> &Path {
        &self.image
    }

    /// libiscsi's URL of `lun` on portal `i` with the configured accounts:
    /// `iscsi://[user%secret@]host:port/iqn/lun[?target_user=..&target_password=..]`.
    pub fn url(&self, i: usize, lun: u32) -> String {
        self.url_as(
            i,
            Some(lun),
            self.config.chap.as_ref(),
            self.config.mutual.as_ref(),
        )
    }

    /// The portal URL for discovery (`iscsi-ls`), with the incoming
    /// account only: tgtd does no mutual CHAP on discovery sessions.
    pub fn discovery_url(&self, i: usize) -> String {
        self.url_as(i, None, self.config.chap.as_ref(), None)
    }

    /// libiscsi's URL with the given accounts; without `lun`, the portal
    /// alone (discovery). libiscsi takes the mutual account as the URL
    /// arguments `target_user` and `target_password`.
    pub fn url_as(
        &self,
        i: usize,
        lun: Option<u32>,
        chap: Option<&Chap>,
        mutual: Option<&Chap>,
    ) -> String {
        let mut u = String::from("iscsi://");
        if let Some(c) = chap {
            u += &format!("{}%{}@", c.user, c.secret);
        }
        u += &self.portal(i);
        if let Some(lun) = lun {
            u += &format!("/{IQN}/{lun}");
        }
        if let Some(m) = mutual {
            u += &format!("?target_user={}&target_password={}", m.user, m.secret);
        }
        u
    }

    /// Portal `i`'s tgtd pid, if running.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.portals[i].child.as_ref().map(|c| c.id())
    }

    fn signal(&self, i: usize, sig: &str) {
        let pid = self
            .pid(i)
            .unwrap_or_else(|| panic!("portal {i}'s tgtd is not running"));
        let st = Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -{sig} {pid} failed");
    }

    /// SIGSTOP portal `i`'s tgtd: connections stay open, nothing answers.
    pub fn stop(&self, i: usize) {
        self.signal(i, "STOP");
    }

    /// SIGCONT portal `i`'s tgtd.
    pub fn cont(&self, i: usize) {
        self.signal(i, "CONT");
    }

    /// SIGKILL portal `i`'s tgtd and reap it: its connections reset, its
    /// portal refuses connections.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.portals[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills portal `i`'s tgtd if running and starts it again: same
    /// portal, control port, target, LUN, image and accounts.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.launch(i, false);
    }

    /// Takes portal `i`'s network away (its host-side link goes down):
    /// packets are lost, nothing is reset. Needs [`TgtConfig::netns`].
    pub fn cut(&self, i: usize) {
        let (_, host) = self.portals[i].netns.as_ref().expect("a netns portal");
        ip(&["link", "set", host, "down"]);
    }

    /// Gives portal `i` its network back.
    pub fn restore(&self, i: usize) {
        let (_, host) = self.portals[i].netns.as_ref().expect("a netns portal");
        ip(&["link", "set", host, "up"]);
    }

    /// Portal `i`'s tgtd output (this run's).
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.portals[i].log).unwrap_or_default()
    }
}

impl Drop for Tgt {
    fn drop(&mut self) {
        for i in 0..self.portals.len() {
            // A stopped process dies of SIGKILL all the same.
            self.kill(i);
            let sock = format!("/var/run/tgtd/socket.{}", self.portals[i].ctl);
            let _ = std::fs::remove_file(&sock);
            let _ = std::fs::remove_file(format!("{sock}.lock"));
            if let Some((ns, host)) = &self.portals[i].netns {
                let _ = Command::new("ip").args(["link", "del", host]).status();
                let _ = Command::new("ip").args(["netns", "del", ns]).status();
            }
        }
    }
}
