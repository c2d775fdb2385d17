//! The full Debian 12 guest of `tests/vm_debian.rs`: systemd, udev,
//! multipath-tools, nbd-client, fio, the cloud kernel; built once by
//! `scripts/vm-debian.sh` (debootstrap, cached under ~/.cache/umpath).
//!
//! Each boot runs on a qcow2 overlay of the cached root image, so the
//! cache is never written and a guest can be rebooted (QEMU exits on the
//! guest's reboot, [`Guest::reboot`] starts it again on the same overlay).
//! Beside the root disk the guest gets
//!
//! * a read-only staging disk (virtio serial `umstage`, mounted at
//!   /mnt/stage by the guest's fstab) laid out like the source tree:
//!   `target/release/umpath` (the binary under test), `systemd/`,
//!   `README.md`, so the README's install commands run there as written;
//! * the LUN of the busybox VM tests: one raw image behind two virtio-scsi
//!   HBAs (vendor OSNEXUS, product QUANTASTOR, the same WWN);
//! * the command channel: QEMU's guest agent (`qemu-ga`, from Debian) on a
//!   virtio-serial port; [`Guest::sh`] is `guest-exec` with captured
//!   output, so a command needs no shell protocol of ours and no serial
//!   line discipline (the busybox guest's serial channel stalls now and
//!   then).
//!
//! Every wait has a bound; QEMU is killed when the [`Guest`] is dropped.
//! Console logs: TARGET/vm-runs/NAME/console-N.log (one per boot).

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{b64, connect_retry, env_secs, kvm_usable, need_qemu, repo, target_dir, Output, Qmp};

/// What `scripts/vm-debian.sh` built.
pub struct DebianAssets {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub image: PathBuf,
    pub kver: String,
}

/// Builds (or finds in the cache) the Debian guest.
pub fn setup() -> DebianAssets {
    let out = Command::new(repo().join("scripts/vm-debian.sh"))
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/vm-debian.sh");
    assert!(
        out.status.success(),
        "scripts/vm-debian.sh failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let env_file = PathBuf::from(stdout.lines().last().expect("guest.env").trim());
    let text = fs::read_to_string(&env_file).expect("read guest.env");
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(|v| v.trim_matches('\'').to_string())
            .unwrap_or_else(|| panic!("{k} missing in {}", env_file.display()))
    };
    DebianAssets {
        kernel: PathBuf::from(get("DEB_KERNEL")),
        initrd: PathBuf::from(get("DEB_INITRD")),
        image: PathBuf::from(get("DEB_IMAGE")),
        kver: get("DEB_KVER"),
    }
}

/// How to boot.
#[derive(Default)]
pub struct GuestOptions {
    /// Names the run directory TARGET/vm-runs/NAME.
    pub name: String,
    /// Size of the LUN's raw image.
    pub lun_size: u64,
    /// Host services the guest may reach (none by default: the guest then
    /// has no NIC at all). With any, the guest gets a QEMU user-mode NIC
    /// with `restrict=on` (no route to the host or beyond) whose only way
    /// out is one `guestfwd` per entry; the test configures the guest's
    /// interface itself (see [`Guest::net_up`]).
    pub guestfwd: Vec<GuestFwd>,
}

/// A QEMU `guestfwd`: TCP connections the guest opens to `guest` are
/// relayed to `host` (one relay process per connection, so the guest can
/// connect any number of times, one after another or at once).
#[derive(Clone, Debug)]
pub struct GuestFwd {
    /// The address the guest connects to, in QEMU's user network
    /// 10.0.2.0/24 (e.g. 10.0.2.100:3260; not .2, .3 or .15).
    pub guest: std::net::SocketAddrV4,
    /// Where QEMU connects on the host.
    pub host: std::net::SocketAddrV4,
}

/// The guest's address on the user-mode network.
pub const GUEST_IP: &str = "10.0.2.15";

/// A running Debian guest; QEMU is killed on drop.
pub struct Guest {
    child: Child,
    pub dir: PathBuf,
    assets: DebianAssets,
    /// The console of the current boot.
    pub console_log: PathBuf,
    /// Boots so far (1 after [`Guest::boot`]).
    pub boots: u32,
    /// How long the last boot took until `systemctl is-system-running`
    /// answered.
    pub boot_time: Duration,
    qga: Mutex<Qga>,
    qmp: Mutex<Qmp>,
    guestfwd: Vec<GuestFwd>,
}

impl Guest {
    /// Builds the guest (cached), the staging disk and the LUN, boots and
    /// waits until systemd has finished starting up.
    pub fn boot(opts: GuestOptions) -> Guest {
        need_qemu();
        let assets = setup();
        let dir = target_dir().join("vm-runs").join(&opts.name);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the VM run dir");
        let overlay = dir.join("root.qcow2");
        run_ok(
            Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                .arg(&assets.image)
                .arg(&overlay),
            "qemu-img create (the root overlay)",
        );
        make_stage(&dir);
        let lun = dir.join("lun.img");
        fs::File::create(&lun)
            .and_then(|f| f.set_len(opts.lun_size))
            .expect("create the LUN image");
        let (child, console_log) = start_qemu(&dir, &assets, 1, &opts.guestfwd);
        let mut g = Guest {
            child,
            dir,
            assets,
            console_log,
            boots: 1,
            boot_time: Duration::ZERO,
            qga: Mutex::new(Qga::default()),
            qmp: Mutex::new(Qmp::default()),
            guestfwd: opts.guestfwd,
        };
        g.connect(&opts.name);
        g
    }

    fn connect(&mut self, name: &str) {
        let t0 = Instant::now();
        let timeout = env_secs("UMPATH_VM_BOOT_TIMEOUT", 240);
        let deadline = t0 + timeout;
        let qmp = Qmp::connect(&self.dir.join("qmp.sock"), deadline).unwrap_or_else(|e| {
            panic!(
                "QMP: {e}\n--- qemu's output ---\n{}\n{}",
                fs::read_to_string(self.dir.join(format!("qemu-{}.log", self.boots)))
                    .unwrap_or_default(),
                self.console_tail(40)
            )
        });
        *self.qmp.lock().unwrap() = qmp;
        let qga = Qga::connect(&self.dir.join("qga.sock"), deadline, || {
            self.exited()
                .map(|st| format!("qemu exited ({st}) during boot"))
        })
        .unwrap_or_else(|e| panic!("guest agent: {e}\n{}", self.console_tail(60)));
        *self.qga.lock().unwrap() = qga;
        let state = self.sh_timeout(
            "systemctl is-system-running --wait",
            deadline.saturating_duration_since(Instant::now()),
        );
        // Startup is finished (running, or degraded when a unit failed: the
        // test looks at what it needs).
        assert!(
            ["running", "degraded"].contains(&state.out.trim()),
            "systemd did not finish starting: {state:?}\n{}",
            self.console_tail(60)
        );
        self.boot_time = t0.elapsed();
        eprintln!(
            "debian guest {name}: boot {} up in {:.1?} ({}), kernel {}; console {}",
            self.boots,
            self.boot_time,
            state.out.trim(),
            self.assets.kver,
            self.console_log.display()
        );
    }

    fn exited(&self) -> Option<String> {
        // try_wait needs &mut; a zero-timeout waitpid through /proc.
        let pid = self.child.id();
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Field 3 is the state; Z: exited, not yet reaped.
        let state = stat.rsplit(')').next()?.split_whitespace().next()?;
        (state == "Z").then(|| "exited".to_string())
    }

    /// Reboots the guest: `systemctl reboot`, QEMU exits (`-no-reboot`),
    /// then starts again on the same disks. Returns the console of the
    /// boot that ended (its shutdown messages).
    pub fn reboot(&mut self) -> String {
        let old = self.shutdown("reboot");
        self.boots += 1;
        let (child, console_log) = start_qemu(&self.dir, &self.assets, self.boots, &self.guestfwd);
        self.child = child;
        self.console_log = console_log;
        let name = self
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.connect(&name);
        old
    }

    /// `systemctl poweroff`; waits for QEMU to exit (status 0) and returns
    /// the console of the boot that ended.
    pub fn poweroff(&mut self) -> String {
        self.shutdown("poweroff")
    }

    fn shutdown(&mut self, verb: &str) -> String {
        // The agent dies with the guest: start the command, do not wait.
        {
            let mut q = self.qga.lock().unwrap_or_else(|e| e.into_inner());
            let _ = q.call(
                "guest-exec",
                json!({"path": "/bin/systemctl", "arg": [verb]}),
                Duration::from_secs(10),
            );
        }
        let deadline = Instant::now() + Duration::from_secs(180);
        let status = loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                break st;
            }
            assert!(
                Instant::now() < deadline,
                "the guest did not {verb} in 180 s\n{}",
                self.console_tail(60)
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        assert!(
            status.success(),
            "qemu exited with {status} on {verb}\n{}",
            self.console_tail(60)
        );
        self.console()
    }

    /// The console of the current boot.
    pub fn console(&self) -> String {
        super::read_console(&self.console_log)
    }

    pub fn console_tail(&self, n: usize) -> String {
        super::console_tail(&self.console_log, n)
    }

    /// Runs `script` with `sh` in the guest (stdout and stderr together,
    /// 60 s limit). Background jobs must not keep the output open:
    /// `setsid -f CMD >LOG 2>&1 </dev/null`.
    pub fn sh(&self, script: &str) -> Output {
        self.sh_timeout(script, Duration::from_secs(60))
    }

    pub fn sh_timeout(&self, script: &str, timeout: Duration) -> Output {
        let mut q = self.qga.lock().unwrap_or_else(|e| e.into_inner());
        q.exec(script, timeout)
            .unwrap_or_else(|e| panic!("guest command {script:?}: {e}\n{}", self.console_tail(40)))
    }

    /// Runs `script`, which must exit 0; returns its output.
    pub fn sh_ok(&self, script: &str) -> String {
        self.sh_ok_timeout(script, Duration::from_secs(60))
    }

    pub fn sh_ok_timeout(&self, script: &str, timeout: Duration) -> String {
        let o = self.sh_timeout(script, timeout);
        assert_eq!(
            o.rc,
            0,
            "guest command {script:?} failed (rc {}):\n{}\n--- journal ---\n{}",
            o.rc,
            o.out,
            self.journal_tail()
        );
        o.out
    }

    /// The last lines of the guest's journal (for failure messages).
    pub fn journal_tail(&self) -> String {
        let mut q = self.qga.lock().unwrap_or_else(|e| e.into_inner());
        q.exec(
            "journalctl -b --no-pager -o short-monotonic | grep -v qemu-ga | tail -n 60",
            Duration::from_secs(20),
        )
        .map(|o| o.out)
        .unwrap_or_else(|e| format!("(journal not readable: {e})"))
    }

    /// `umpath ARGS --json` in the guest, parsed.
    pub fn umpath_json(&self, args: &str) -> Value {
        let out = self.sh_ok(&format!(
            "umpath {args} --json 2>/tmp/umpath.err || {{ cat /tmp/umpath.err; exit 1; }}"
        ));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("umpath {args} --json: {e}: {out}"))
    }

    /// Polls `pred` every 250 ms until it holds or `timeout` passes (panics
    /// with the guest's journal).
    pub fn wait_for(&self, what: &str, timeout: Duration, mut pred: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if pred() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{what}: not reached in {timeout:?}\n--- journal ---\n{}",
                    self.journal_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Runs a QMP command; panics on an error reply.
    pub fn qmp(&self, cmd: &str, args: Value) -> Value {
        let mut q = self.qmp.lock().unwrap_or_else(|e| e.into_inner());
        q.execute(cmd, args, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("QMP {cmd}: {e}\n{}", self.console_tail(30)))
    }

    /// Waits for a QMP event `name` whose `data` satisfies `pred`.
    pub fn qmp_event(&self, name: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let mut q = self.qmp.lock().unwrap_or_else(|e| e.into_inner());
        q.wait_event(name, timeout, pred)
            .unwrap_or_else(|e| panic!("QMP event {name}: {e}\n{}", self.console_tail(30)))
    }

    /// Brings up the guest's user-mode NIC (booted with
    /// [`GuestOptions::guestfwd`]): [`GUEST_IP`]/24 on the one interface
    /// that is not `lo`, set statically (no DHCP client in the image).
    /// Returns the interface's name.
    pub fn net_up(&self) -> String {
        assert!(
            !self.guestfwd.is_empty(),
            "Guest::net_up: the guest was booted without a NIC (GuestOptions::guestfwd is empty)"
        );
        let ifname = self
            .sh_ok("ls /sys/class/net | grep -vx lo")
            .trim()
            .to_string();
        assert!(
            !ifname.is_empty() && !ifname.contains(char::is_whitespace),
            "expected one network interface besides lo in the guest, found {ifname:?}"
        );
        self.sh_ok(&format!(
            "ip addr add {GUEST_IP}/24 dev {ifname} && ip link set {ifname} up"
        ));
        ifname
    }

    /// The QEMU ids (device, HBA, drive) behind guest disk `sdX`.
    pub fn qdev_of(&self, disk: &str) -> (String, String, String) {
        super::qdev_of_sysfs(disk, &self.sh_ok(&format!("readlink -f /sys/block/{disk}")))
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The journal is in the guest's memory: keep it for the failure.
            if let Ok(None) = self.child.try_wait() {
                let mut q = self.qga.lock().unwrap_or_else(|e| e.into_inner());
                if let Ok(o) = q.exec(
                    "journalctl -b --no-pager -o short-monotonic | grep -v qemu-ga",
                    Duration::from_secs(30),
                ) {
                    let file = self.dir.join(format!("journal-{}.log", self.boots));
                    let _ = fs::write(&file, o.out);
                    eprintln!("debian guest: journal saved in {}", file.display());
                }
            }
        }
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.console_tail(40));
            eprintln!("debian guest: run directory kept: {}", self.dir.display());
        } else {
            // The overlay and the LUN can be large; the logs stay.
            for f in ["root.qcow2", "lun.img", "stage.img"] {
                let _ = fs::remove_file(self.dir.join(f));
            }
        }
    }
}

fn run_ok(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The umpath binary the guest installs: the test build, or the one
/// `UMPATH_VM_BIN` names (benches/failover_stall.sh passes the release
/// build: the test build is unoptimised, which under TCG costs
/// milliseconds per request).
fn umpath_under_test() -> PathBuf {
    std::env::var_os("UMPATH_VM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_umpath")))
}

/// The staging disk: an ext4 image (`mkfs.ext4 -d`, no mount needed)
/// laid out like the source tree, with the umpath under test (stripped)
/// as `target/release/umpath`.
fn make_stage(dir: &Path) {
    let stage = dir.join("stage");
    let _ = fs::remove_dir_all(&stage);
    fs::create_dir_all(stage.join("target/release")).expect("stage dir");
    run_ok(
        Command::new("strip")
            .arg("-o")
            .arg(stage.join("target/release/umpath"))
            .arg(umpath_under_test()),
        "strip umpath (binutils)",
    );
    for sub in ["systemd", "udev"] {
        fs::create_dir_all(stage.join(sub)).expect("stage dir");
        for f in fs::read_dir(repo().join(sub)).expect("read a source dir") {
            let f = f.expect("a source dir entry").path();
            if let Some(name) = f.file_name() {
                fs::copy(&f, stage.join(sub).join(name)).expect("copy into the stage");
            }
        }
    }
    fs::copy(repo().join("README.md"), stage.join("README.md")).expect("copy README.md");
    let bytes: u64 = fs::metadata(stage.join("target/release/umpath"))
        .map(|m| m.len())
        .unwrap_or(0);
    let size_mib = bytes / (1 << 20) + 32;
    run_ok(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "umstage", "-d"])
            .arg(&stage)
            .arg(dir.join("stage.img"))
            .arg(format!("{size_mib}M")),
        "mkfs.ext4 -d (the staging disk)",
    );
}

fn start_qemu(
    dir: &Path,
    assets: &DebianAssets,
    boot: u32,
    guestfwd: &[GuestFwd],
) -> (Child, PathBuf) {
    let console_log = dir.join(format!("console-{boot}.log"));
    for s in ["qga.sock", "qmp.sock"] {
        let _ = fs::remove_file(dir.join(s));
    }
    let accel = std::env::var("UMPATH_VM_ACCEL").unwrap_or_else(|_| "tcg".to_string());
    assert!(
        accel != "kvm" || kvm_usable(),
        "UMPATH_VM_ACCEL=kvm but /dev/kvm cannot be opened"
    );
    let d = |f: &str| dir.join(f).display().to_string();
    let mut args: Vec<String> = [
        "-accel",
        &accel,
        "-m",
        "1024",
        "-smp",
        "2",
        "-nographic",
        // A guest reboot ends QEMU; Guest::reboot starts it again.
        "-no-reboot",
        "-monitor",
        "none",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if guestfwd.is_empty() {
        args.extend(["-nic".into(), "none".into()]);
    }
    // The LUN's HBAs first, at the PCI slots qdev_of knows (the virtio
    // disks below take the next free ones).
    args.extend(super::lun_args(&d("lun.img")));
    args.extend([
        "-kernel".into(),
        assets.kernel.display().to_string(),
        "-initrd".into(),
        assets.initrd.display().to_string(),
        "-append".into(),
        "root=LABEL=umroot rw console=ttyS0 panic=-1 quiet systemd.show_status=error".into(),
        "-serial".into(),
        format!("file:{}", console_log.display()),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", d("qmp.sock")),
        "-drive".into(),
        format!(
            "file={},if=virtio,format=qcow2,cache=writeback,discard=unmap",
            d("root.qcow2")
        ),
        "-blockdev".into(),
        format!(
            "driver=file,node-name=stagefile,filename={},read-only=on",
            d("stage.img")
        ),
        "-blockdev".into(),
        "driver=raw,node-name=stage,file=stagefile,read-only=on".into(),
        "-device".into(),
        "virtio-blk-pci,drive=stage,serial=umstage".into(),
        "-device".into(),
        "virtio-serial-pci,id=vser0".into(),
        "-chardev".into(),
        format!("socket,id=qga,path={},server=on,wait=off", d("qga.sock")),
        "-device".into(),
        "virtserialport,bus=vser0.0,chardev=qga,name=org.qemu.guest_agent.0".into(),
    ]);
    if !guestfwd.is_empty() {
        // Last, so the other devices keep their PCI slots.
        args.extend(user_net_args(dir, guestfwd));
    }
    fs::write(
        dir.join(format!("qemu-{boot}.cmdline")),
        format!("qemu-system-x86_64 '{}'\n", args.join("' '")),
    )
    .expect("write the qemu command line");
    let log = fs::File::create(dir.join(format!("qemu-{boot}.log"))).expect("qemu log");
    let child = super::spawn_qemu(&args, &log)
        .unwrap_or_else(|e| panic!("cannot start qemu-system-x86_64: {e}"));
    (child, console_log)
}

/// The relay QEMU runs for each guest connection of a `guestfwd`
/// (`cmd:` form): stdin and stdout are the guest's connection, the
/// arguments the host address and port. bash's /dev/tcp, so it needs
/// nothing that a Debian host lacks. Ends (closing both sides) as soon as
/// either side closes.
const RELAY: &str = r#"#!/bin/bash
# QEMU guestfwd relay (tests/vm/debian.rs): guest connection <-> $1:$2.
exec 3<>"/dev/tcp/$1/$2" || exit 1
exec 4<&0
cat <&3 & a=$!
cat <&4 >&3 & b=$!
wait -n
kill "$a" "$b" 2>/dev/null
"#;

/// `-netdev user,restrict=on,guestfwd=...` and its virtio NIC.
///
/// QEMU's chardev form (`guestfwd=tcp:G:P-tcp:H:P`) connects to the host
/// once, when QEMU starts, and carries a single stream: an iSCSI
/// discovery session followed by a login (two TCP connections) cannot go
/// through it. The `cmd:` form runs a program per guest connection.
fn user_net_args(dir: &Path, guestfwd: &[GuestFwd]) -> Vec<String> {
    let relay = dir.join("guestfwd-relay.sh");
    fs::write(&relay, RELAY).expect("write the guestfwd relay");
    let relay = relay.display().to_string();
    assert!(
        !relay.contains([',', ' ', '\'', '"']),
        "the run directory's path {relay} has a comma, space or quote: QEMU's -netdev option cannot carry it"
    );
    let mut netdev = "user,id=net0,restrict=on,net=10.0.2.0/24".to_string();
    for f in guestfwd {
        netdev.push_str(&format!(
            ",guestfwd=tcp:{}-cmd:/bin/bash {relay} {} {}",
            f.guest,
            f.host.ip(),
            f.host.port()
        ));
    }
    vec![
        "-netdev".into(),
        netdev,
        "-device".into(),
        "virtio-net-pci,netdev=net0,romfile=".into(),
    ]
}

/// A client of QEMU's guest agent (one JSON object per line each way;
/// only `guest-sync` replies carry an id, so the stream is re-synchronised
/// with one after connecting).
#[derive(Default)]
struct Qga {
    reader: Option<BufReader<UnixStream>>,
    writer: Option<UnixStream>,
    next_id: u64,
}

impl Qga {
    /// Connects and synchronises; the agent starts late in the guest's
    /// boot, so `guest-sync` is repeated until one is answered. `dead`
    /// says why to stop early (QEMU gone).
    fn connect(
        path: &Path,
        deadline: Instant,
        dead: impl Fn() -> Option<String>,
    ) -> Result<Qga, String> {
        let s = connect_retry(path, deadline)?;
        let mut q = Qga {
            writer: Some(s.try_clone().map_err(|e| e.to_string())?),
            reader: Some(BufReader::new(s)),
            next_id: std::process::id() as u64 * 1000,
        };
        loop {
            if let Some(why) = dead() {
                return Err(why);
            }
            match q.sync(Duration::from_secs(3)) {
                Ok(()) => return Ok(q),
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("no answer to guest-sync: {e}"))
                }
                Err(_) => {}
            }
        }
    }

    fn send(&mut self, msg: &Value) -> Result<(), String> {
        let w = self.writer.as_mut().ok_or("not connected")?;
        w.write_all(format!("{msg}\n").as_bytes())
            .map_err(|e| format!("guest agent write: {e}"))
    }

    fn read(&mut self, timeout: Duration) -> Result<Value, String> {
        let r = self.reader.as_mut().ok_or("not connected")?;
        r.get_ref()
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) => Err("guest agent socket closed".into()),
            // A 0xff from guest-sync-delimited or a blank line: skip.
            Ok(_)
                if line
                    .trim_matches(|c: char| c.is_whitespace() || c == '\u{fffd}')
                    .is_empty() =>
            {
                Ok(Value::Null)
            }
            Ok(_) => serde_json::from_str(line.trim_start_matches('\u{fffd}'))
                .map_err(|e| format!("{e}: {line}")),
            Err(e) => Err(format!("guest agent read: {e}")),
        }
    }

    /// `guest-sync` with a fresh id; everything before its answer is an
    /// answer to an earlier request and is dropped.
    fn sync(&mut self, timeout: Duration) -> Result<(), String> {
        self.next_id += 1;
        let id = self.next_id;
        self.send(&json!({"execute": "guest-sync", "arguments": {"id": id}}))?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline
                .checked_duration_since(Instant::now())
                .ok_or("no guest-sync answer")?;
            let v = self.read(left)?;
            if v["return"] == json!(id) {
                return Ok(());
            }
        }
    }

    fn call(&mut self, cmd: &str, args: Value, timeout: Duration) -> Result<Value, String> {
        self.send(&json!({"execute": cmd, "arguments": args}))?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline
                .checked_duration_since(Instant::now())
                .ok_or_else(|| format!("no answer to {cmd} in {timeout:?}"))?;
            let v = self.read(left)?;
            if let Some(e) = v.get("error") {
                return Err(format!("{cmd}: {e}"));
            }
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
        }
    }

    /// `sh -c SCRIPT` under `timeout -s KILL` (rc 137 when killed),
    /// stdout and stderr in one stream.
    fn exec(&mut self, script: &str, timeout: Duration) -> Result<Output, String> {
        let secs = timeout.as_secs().max(1).to_string();
        let script = format!("exec 2>&1 </dev/null\n{script}");
        let r = self.call(
            "guest-exec",
            json!({
                "path": "/usr/bin/timeout",
                "arg": ["-s", "KILL", secs, "/bin/sh", "-c", script],
                "capture-output": true,
            }),
            Duration::from_secs(20),
        );
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                // Resynchronise so that a late answer cannot be taken for
                // the next command's.
                let _ = self.sync(Duration::from_secs(10));
                return Err(e);
            }
        };
        let pid = r["pid"].clone();
        let deadline = Instant::now() + timeout + Duration::from_secs(15);
        let mut pause = Duration::from_millis(20);
        loop {
            let st = self.call(
                "guest-exec-status",
                json!({"pid": pid}),
                Duration::from_secs(20),
            )?;
            if st["exited"] == json!(true) {
                let mut out = Vec::new();
                for k in ["out-data", "err-data"] {
                    if let Some(s) = st[k].as_str() {
                        out.extend(b64::decode(s)?);
                    }
                }
                let rc = st["exitcode"]
                    .as_i64()
                    .or_else(|| st["signal"].as_i64().map(|s| 128 + s))
                    .unwrap_or(-1) as i32;
                return Ok(Output {
                    rc,
                    out: String::from_utf8_lossy(&out).into_owned(),
                });
            }
            if Instant::now() > deadline {
                return Err(format!("still running after {timeout:?} + 15 s"));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }
}
