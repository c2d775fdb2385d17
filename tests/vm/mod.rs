//! The VM harness behind `tests/vm_scsi.rs`: boots a Debian cloud kernel
//! in QEMU with two virtio-scsi HBAs presenting one raw image as two SCSI
//! disks, runs `umpath daemon` inside, and gives the test
//!
//! * [`Vm::sh`]: run a shell script in the guest (over a virtio-serial port
//!   bound to a host unix socket; see `tests/vm/init` for the protocol),
//! * [`Vm::qmp`]: QMP commands (`device_del`, `device_add`, ...),
//! * [`Vm::uri`]: the guest's NBD export, forwarded to 127.0.0.1 on the host.
//!
//! Every wait has a timeout; QEMU is killed when the [`Vm`] is dropped
//! (also on panic); the serial console is saved under
//! `TARGET/vm-runs/NAME/console.log` and its tail printed when a test fails.
//!
//! Environment: `UMPATH_VM_ACCEL` (`tcg`, the default, or `kvm`), `UMPATH_VM_CACHE` (the download cache),
//! `UMPATH_VM_BOOT_TIMEOUT` (seconds, default 150).
#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub mod debian;
pub mod fio;
pub mod lio;

/// The LUN's identity as QEMU presents it on both HBAs.
pub const VENDOR: &str = "OSNEXUS";
pub const PRODUCT: &str = "QUANTASTOR";
pub const SERIAL: &str = "QS0001";
pub const WWN: u64 = 0x5000_c500_15ea_71ac;
/// What `scsi_id -g -u` (VPD page 0x83, NAA type 3) makes of [`WWN`].
pub const WWID: &str = "35000c50015ea71ac";
/// The guest's NBD port.
pub const GUEST_NBD_PORT: u16 = 10809;

/// The directory cargo builds into (the umpath binary is TARGET/PROFILE/umpath).
pub fn target_dir() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_umpath"));
    bin.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .expect("CARGO_BIN_EXE_umpath is TARGET/PROFILE/umpath")
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn env_secs(name: &str, default: u64) -> Duration {
    Duration::from_secs(
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}

/// Fails (not skips) with an install hint when QEMU is missing.
pub fn need_qemu() {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("qemu-system-x86_64").is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "qemu-system-x86_64 is not installed: run ./scripts/test.sh, or apt-get install qemu-system-x86 cpio"
    );
}

/// What `scripts/vm-setup.sh` fetched: kernel, module tree, busybox.
pub struct Assets {
    pub env_file: PathBuf,
    pub kernel: PathBuf,
    pub kver: String,
}

/// Runs `scripts/vm-setup.sh` (cached after the first run).
pub fn setup() -> Assets {
    let cache = std::env::var_os("UMPATH_VM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("vm-cache"));
    let out = Command::new(repo().join("scripts/vm-setup.sh"))
        .arg(&cache)
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/vm-setup.sh");
    assert!(
        out.status.success(),
        "scripts/vm-setup.sh failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let env_file = PathBuf::from(
        stdout
            .lines()
            .last()
            .expect("vm-setup.sh prints vm.env")
            .trim(),
    );
    let text = fs::read_to_string(&env_file).expect("read vm.env");
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(|v| v.trim_matches('\'').to_string())
            .unwrap_or_else(|| panic!("{k} missing in {}", env_file.display()))
    };
    Assets {
        kernel: PathBuf::from(get("KERNEL")),
        kver: get("KVER"),
        env_file,
    }
}

/// How to boot.
pub struct VmOptions {
    /// Names the run directory TARGET/vm-runs/NAME (console log, sockets, image).
    pub name: String,
    /// The guest's /etc/multipath.conf.
    pub multipath_conf: String,
    /// Size of the raw image both HBAs present.
    pub image_size: u64,
    /// Runs on the (sparse, zeroed) image before QEMU opens it.
    pub prepare_image: fn(&Path),
    /// Extra kernel command line words (`vm.log=debug`, ...).
    pub append: String,
    /// Kernel modules loaded besides the default set (with their
    /// dependencies), e.g. `"target_core_iblock tcm_loop"`.
    pub extra_modules: &'static str,
}

/// The result of a guest command.
#[derive(Debug)]
pub struct Output {
    pub rc: i32,
    pub out: String,
}

/// A running VM; QEMU is killed on drop.
pub struct Vm {
    child: Child,
    pub dir: PathBuf,
    pub console_log: PathBuf,
    pub image: PathBuf,
    pub nbd_port: u16,
    pub boot_time: Duration,
    chan: Mutex<Chan>,
    qmp: Mutex<Qmp>,
    /// Remove the image on a clean drop (not when retrying a start).
    remove_image: bool,
}

/// The scsi-hd properties that make both disks the same QuantaStor LUN.
pub fn scsi_hd_props(id: &str, hba: &str, drive: &str) -> Value {
    json!({
        "driver": "scsi-hd", "id": id, "bus": format!("{hba}.0"), "drive": drive,
        "channel": 0, "scsi-id": 0, "lun": 0, "share-rw": true,
        "vendor": VENDOR, "product": PRODUCT, "serial": SERIAL, "wwn": WWN,
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

fn kvm_usable() -> bool {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

impl Vm {
    /// Fetches the kernel (cached), builds the initramfs from the umpath
    /// under test, boots, and waits until the command channel answers and
    /// (unless `vm.nodaemon`) the daemon's control socket does.
    pub fn boot(opts: VmOptions) -> Vm {
        need_qemu();
        let t0 = Instant::now();
        let assets = setup();
        let dir = target_dir().join("vm-runs").join(&opts.name);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the VM run dir");
        let conf = dir.join("multipath.conf");
        fs::write(&conf, &opts.multipath_conf).expect("write multipath.conf");
        // NBD over TCP off loopback needs TLS: the guest serves with a
        // server certificate made here, the host's clients trust its CA.
        let tls = dir.join("tls");
        make_tls(&tls);
        let initrd = dir.join("initrd.gz");
        let out = Command::new(repo().join("tests/vm/mkinitramfs.sh"))
            .arg("--env")
            .arg(&assets.env_file)
            .arg("--umpath")
            .arg(env!("CARGO_BIN_EXE_umpath"))
            .arg("--out")
            .arg(&initrd)
            .arg("--extra-modules")
            .arg(opts.extra_modules)
            .arg("--file")
            .arg(format!("/etc/vm/multipath.conf={}", conf.display()))
            .arg("--file")
            .arg(format!(
                "/etc/vm/tls/server-cert.pem={}",
                tls.join("server-cert.pem").display()
            ))
            .arg("--file")
            .arg(format!(
                "/etc/vm/tls/server-key.pem={}",
                tls.join("server-key.pem").display()
            ))
            .stdin(Stdio::null())
            .output()
            .expect("run tests/vm/mkinitramfs.sh");
        assert!(
            out.status.success(),
            "tests/vm/mkinitramfs.sh failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let image = dir.join("lun.img");
        fs::File::create(&image)
            .and_then(|f| f.set_len(opts.image_size))
            .expect("create the raw image");
        (opts.prepare_image)(&image);
        eprintln!(
            "vm {}: kernel {}, assets and initramfs ready in {:.1?}",
            opts.name,
            assets.kver,
            t0.elapsed()
        );
        // A port picked here can be taken before QEMU binds it: retry.
        let mut last = String::new();
        for _ in 0..3 {
            match Self::start(&opts, &assets, &dir, &initrd, &image) {
                Ok(vm) => return vm,
                Err(e) => last = e,
            }
        }
        panic!("VM did not start: {last}");
    }

    fn start(
        opts: &VmOptions,
        assets: &Assets,
        dir: &Path,
        initrd: &Path,
        image: &Path,
    ) -> Result<Vm, String> {
        let console_log = dir.join("console.log");
        let qemu_log = dir.join("qemu.log");
        let cmd_sock = dir.join("cmd.sock");
        let qmp_sock = dir.join("qmp.sock");
        for p in [&console_log, &cmd_sock, &qmp_sock] {
            let _ = fs::remove_file(p);
        }
        let port = free_port();
        // TCG by default: CI has no KVM, and a /dev/kvm that opens can
        // still be a nested KVM that cannot boot this guest.
        let accel = std::env::var("UMPATH_VM_ACCEL").unwrap_or_else(|_| "tcg".to_string());
        assert!(
            accel != "kvm" || kvm_usable(),
            "UMPATH_VM_ACCEL=kvm but /dev/kvm cannot be opened"
        );
        let img = image.display().to_string();
        let mut args: Vec<String> = vec![
            "-accel".into(),
            accel.clone(),
            "-m".into(),
            "512".into(),
            "-smp".into(),
            "1".into(),
            "-nographic".into(),
            "-no-reboot".into(),
            "-monitor".into(),
            "none".into(),
            "-kernel".into(),
            assets.kernel.display().to_string(),
            "-initrd".into(),
            initrd.display().to_string(),
            "-append".into(),
            format!("console=ttyS0 panic=-1 {}", opts.append),
            // ttyS0: the console, to a file; the command channel is a
            // virtio-serial port (no tty line discipline in the way).
            "-serial".into(),
            format!("file:{}", console_log.display()),
            "-chardev".into(),
            format!(
                "socket,id=cmd,path={},server=on,wait=off",
                cmd_sock.display()
            ),
            "-device".into(),
            "virtio-serial-pci,id=vser0,addr=0x7".into(),
            "-device".into(),
            "virtserialport,bus=vser0.0,chardev=cmd,name=umpath.cmd".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", qmp_sock.display()),
            "-netdev".into(),
            format!("user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:{GUEST_NBD_PORT}"),
            "-device".into(),
            "virtio-net-pci,netdev=net0,romfile=,addr=0x6".into(),
        ];
        args.extend(lun_args(&img));
        fs::write(
            dir.join("qemu.cmdline"),
            format!("qemu-system-x86_64 '{}'\n", args.join("' '")),
        )
        .expect("write qemu.cmdline");
        let log = fs::File::create(&qemu_log).expect("qemu.log");
        let t0 = Instant::now();
        let child =
            spawn_qemu(&args, &log).map_err(|e| format!("cannot start qemu-system-x86_64: {e}"))?;
        let mut vm = Vm {
            child,
            dir: dir.to_path_buf(),
            console_log,
            image: image.to_path_buf(),
            nbd_port: port,
            boot_time: Duration::ZERO,
            chan: Mutex::new(Chan::default()),
            qmp: Mutex::new(Qmp::default()),
            remove_image: true,
        };
        let boot_timeout = env_secs("UMPATH_VM_BOOT_TIMEOUT", 150);
        let deadline = t0 + boot_timeout;
        // 1. The guest's /init says "ready" on the console.
        loop {
            if let Ok(Some(st)) = vm.child.try_wait() {
                let qlog = fs::read_to_string(&qemu_log).unwrap_or_default();
                let err = format!("qemu exited ({st}): {qlog}\n{}", vm.console_tail(60));
                if qlog.contains("hostfwd") || qlog.contains("forwarding rule") {
                    vm.remove_image = false;
                    return Err(err);
                }
                panic!("{err}");
            }
            if vm.console().contains("umpath-vm: ready") {
                break;
            }
            if Instant::now() > deadline {
                panic!(
                    "VM not ready after {boot_timeout:?} (accel {accel})\n{}",
                    vm.console_tail(80)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // 2. The sockets, then the command channel.
        *vm.qmp.lock().unwrap() = Qmp::connect(&qmp_sock, deadline)
            .unwrap_or_else(|e| panic!("QMP: {e}\n{}", vm.console_tail(40)));
        *vm.chan.lock().unwrap() = Chan::connect(&cmd_sock, deadline)
            .unwrap_or_else(|e| panic!("command channel: {e}\n{}", vm.console_tail(40)));
        loop {
            match vm.try_sh("echo pong", Duration::from_secs(5)) {
                Ok(o) if o.out.trim() == "pong" => break,
                Ok(o) => panic!("command channel: unexpected reply {o:?}"),
                Err(e) if Instant::now() > deadline => {
                    panic!("command channel: {e}\n{}", vm.console_tail(60))
                }
                Err(_) => {}
            }
        }
        vm.boot_time = t0.elapsed();
        eprintln!(
            "vm {}: booted ({accel}) in {:.1?}; NBD at 127.0.0.1:{port}; console {}",
            opts.name,
            vm.boot_time,
            vm.console_log.display()
        );
        // 3. The daemon answers (unless told not to start it).
        if !opts.append.split_whitespace().any(|w| w == "vm.nodaemon") {
            vm.wait_for(
                "umpath control socket answering",
                Duration::from_secs(60),
                || vm.sh("umpath show status").rc == 0,
            );
        }
        Ok(vm)
    }

    /// The serial console so far.
    pub fn console(&self) -> String {
        read_console(&self.console_log)
    }

    /// The last `n` lines of the console, headed by the log's path.
    pub fn console_tail(&self, n: usize) -> String {
        console_tail(&self.console_log, n)
    }

    /// Runs `script` in the guest (sh, stdin /dev/null, 30 s limit).
    pub fn sh(&self, script: &str) -> Output {
        self.sh_timeout(script, Duration::from_secs(30))
    }

    pub fn sh_timeout(&self, script: &str, timeout: Duration) -> Output {
        self.try_sh(script, timeout)
            .unwrap_or_else(|e| panic!("guest command {script:?}: {e}\n{}", self.console_tail(60)))
    }

    /// Runs `script`, which must exit 0; returns its output.
    pub fn sh_ok(&self, script: &str) -> String {
        let o = self.sh(script);
        assert_eq!(
            o.rc,
            0,
            "guest command {script:?} failed (rc {}):\n{}\n{}",
            o.rc,
            o.out,
            self.console_tail(40)
        );
        o.out
    }

    fn try_sh(&self, script: &str, timeout: Duration) -> Result<Output, String> {
        let mut chan = self.chan.lock().unwrap_or_else(|e| e.into_inner());
        chan.run(script, timeout)
    }

    /// `umpath ARGS --json` in the guest, parsed.
    pub fn umpath_json(&self, args: &str) -> Value {
        let out = self.sh_ok(&format!(
            "umpath {args} --json 2>/tmp/umpath.err || {{ cat /tmp/umpath.err; exit 1; }}"
        ));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("umpath {args} --json: {e}: {out}"))
    }

    /// `show paths --json`, as a vector.
    pub fn paths(&self) -> Vec<Value> {
        self.umpath_json("show paths")
            .as_array()
            .cloned()
            .expect("show paths --json is an array")
    }

    pub fn path(&self, name: &str) -> Value {
        self.paths()
            .into_iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no path {name} in show paths"))
    }

    /// Polls `pred` every 200 ms until it holds or `timeout` passes (panics).
    pub fn wait_for(&self, what: &str, timeout: Duration, mut pred: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if pred() {
                return;
            }
            if Instant::now() > deadline {
                let log = self.sh("tail -n 40 /run/umpath.log").out;
                panic!(
                    "{what}: not reached in {timeout:?}\n--- guest /run/umpath.log ---\n{log}\n{}",
                    self.console_tail(60)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until path `name`'s `show paths` JSON satisfies `pred`.
    pub fn wait_path(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) {
        let mut last = Value::Null;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(p) = self.paths().into_iter().find(|p| p["name"] == name) {
                if pred(&p) {
                    return;
                }
                last = p;
            }
            if Instant::now() > deadline {
                panic!(
                    "path {name}: {what} not reached in {timeout:?}; now {last}\n--- guest /run/umpath.log ---\n{}\n{}",
                    self.sh("tail -n 40 /run/umpath.log").out,
                    self.console_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// An NBD URI for `export` on the host side of the port forward.
    pub fn uri(&self, export: &str) -> String {
        format!(
            "nbds://127.0.0.1:{}/{export}?tls-certificates={}",
            self.nbd_port,
            self.dir.join("tls").display()
        )
    }

    /// The export's URI for fio's nbd engine. fio's libnbd handle refuses
    /// URI parameters that name local files (`tls-certificates`), so fio
    /// connects over TLS without verifying the server; [`Vm::uri`] (used
    /// by nbdinfo in every test's first step) verifies it against the
    /// test CA.
    pub fn fio_uri(&self, export: &str) -> String {
        format!(
            "nbds://127.0.0.1:{}/{export}?tls-verify=false",
            self.nbd_port
        )
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

    /// The QEMU device id (disk0/disk1) behind guest disk `sdX`: the HBAs
    /// sit at fixed PCI slots (hba0 at 00:04.0, hba1 at 00:05.0).
    pub fn qdev_of(&self, disk: &str) -> (String, String, String) {
        qdev_of_sysfs(disk, &self.sh_ok(&format!("readlink -f /sys/block/{disk}")))
    }

    /// Stops QEMU (also done on drop).
    pub fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("{}", self.console_tail(150));
            eprintln!("VM files kept in {}", self.dir.display());
        } else if self.remove_image {
            let _ = fs::remove_file(&self.image);
        }
    }
}

/// How long the host waits for guest output before nudging the channel.
const NUDGE: Duration = Duration::from_secs(2);

/// The host end of the guest's command channel (virtio-serial port umpath.cmd).
#[derive(Default)]
struct Chan {
    stream: Option<UnixStream>,
    pending: Vec<u8>,
    next_id: u64,
}

fn connect_retry(path: &Path, deadline: Instant) -> Result<UnixStream, String> {
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() > deadline => {
                return Err(format!("connect {}: {e}", path.display()))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

impl Chan {
    fn connect(path: &Path, deadline: Instant) -> Result<Chan, String> {
        Ok(Chan {
            stream: Some(connect_retry(path, deadline)?),
            pending: Vec::new(),
            next_id: 1,
        })
    }

    /// Reads one line (without the newline) before `deadline`. Every
    /// [`NUDGE`] without data it sends an empty line, which the guest
    /// ignores: should a UART interrupt ever be lost, the next one (this
    /// byte's) gets the guest's 8250 driver moving again in both directions.
    fn read_line(&mut self, deadline: Instant) -> Result<String, String> {
        let stream = self.stream.as_mut().ok_or("not connected")?;
        loop {
            if let Some(i) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=i).collect();
                return Ok(String::from_utf8_lossy(&line)
                    .trim_end_matches(['\n', '\r'])
                    .to_string());
            }
            let left = deadline
                .checked_duration_since(Instant::now())
                .ok_or("timed out")?;
            stream
                .set_read_timeout(Some(left.clamp(Duration::from_millis(10), NUDGE)))
                .map_err(|e| e.to_string())?;
            let mut buf = [0u8; 8192];
            match stream.read(&mut buf) {
                Ok(0) => return Err("channel closed (QEMU gone?)".into()),
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    stream.write_all(b"\n").map_err(|e| format!("write: {e}"))?;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    fn run(&mut self, script: &str, timeout: Duration) -> Result<Output, String> {
        let id = format!("c{}", self.next_id);
        self.next_id += 1;
        let secs = timeout.as_secs().max(1);
        let line = format!("{id} {secs} {}\n", b64::encode(script.as_bytes()));
        self.stream
            .as_mut()
            .ok_or("not connected")?
            .write_all(line.as_bytes())
            .map_err(|e| format!("write: {e}"))?;
        // The guest kills the script after `secs`; allow for a slow guest.
        let deadline = Instant::now() + timeout + Duration::from_secs(15);
        let mut body = String::new();
        let mut inside = false;
        loop {
            let l = self
                .read_line(deadline)
                .map_err(|e| format!("{e} (waiting for the reply to {id})"))?;
            if l == format!("@@BEGIN {id}") {
                inside = true;
                body.clear();
            } else if let Some(rest) = l.strip_prefix(&format!("@@END {id} ")) {
                let rc: i32 = rest
                    .trim()
                    .parse()
                    .map_err(|_| format!("bad end line {l:?}"))?;
                let out = b64::decode(&body).map_err(|e| format!("bad reply: {e}"))?;
                let out = String::from_utf8_lossy(&out).into_owned();
                if rc == 137 {
                    return Err(format!(
                        "timed out after {secs} s in the guest; output: {out}"
                    ));
                }
                return Ok(Output { rc, out });
            } else if inside {
                body.push_str(l.trim());
            }
            // Anything else: an echo before the guest's stty, or the tail of
            // an earlier command's reply; skip it.
        }
    }
}

/// A minimal QMP client.
#[derive(Default)]
struct Qmp {
    reader: Option<BufReader<UnixStream>>,
    writer: Option<UnixStream>,
    events: Vec<Value>,
}

impl Qmp {
    fn connect(path: &Path, deadline: Instant) -> Result<Qmp, String> {
        let s = connect_retry(path, deadline)?;
        let mut q = Qmp {
            writer: Some(s.try_clone().map_err(|e| e.to_string())?),
            reader: Some(BufReader::new(s)),
            events: Vec::new(),
        };
        let greeting = q.read(Duration::from_secs(20))?;
        if greeting.get("QMP").is_none() {
            return Err(format!("unexpected greeting {greeting}"));
        }
        q.execute("qmp_capabilities", json!({}), Duration::from_secs(20))?;
        Ok(q)
    }

    fn read(&mut self, timeout: Duration) -> Result<Value, String> {
        let r = self.reader.as_mut().ok_or("not connected")?;
        r.get_ref()
            .set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) => Err("QMP socket closed".into()),
            Ok(_) => serde_json::from_str(&line).map_err(|e| format!("{e}: {line}")),
            Err(e) => Err(format!("QMP read: {e}")),
        }
    }

    fn execute(&mut self, cmd: &str, args: Value, timeout: Duration) -> Result<Value, String> {
        let msg = json!({"execute": cmd, "arguments": args});
        let w = self.writer.as_mut().ok_or("not connected")?;
        w.write_all(format!("{msg}\n").as_bytes())
            .map_err(|e| format!("QMP write: {e}"))?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline
                .checked_duration_since(Instant::now())
                .ok_or_else(|| format!("no reply to {cmd} in {timeout:?}"))?;
            let v = self.read(left)?;
            if v.get("event").is_some() {
                self.events.push(v);
            } else if let Some(e) = v.get("error") {
                return Err(format!("{cmd}: {e}"));
            } else if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
        }
    }

    fn wait_event(
        &mut self,
        name: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value, String> {
        let matches = |v: &Value| v["event"] == name && pred(&v["data"]);
        if let Some(i) = self.events.iter().position(matches) {
            return Ok(self.events.remove(i));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline
                .checked_duration_since(Instant::now())
                .ok_or_else(|| format!("no {name} event in {timeout:?}"))?;
            let v = self.read(left)?;
            if matches(&v) {
                return Ok(v);
            }
            if v.get("event").is_some() {
                self.events.push(v);
            }
        }
    }
}

/// Standard base64 (the guest uses busybox's `base64`).
mod b64 {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn encode(data: &[u8]) -> String {
        let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
        for chunk in data.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    pub fn decode(text: &str) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(text.len() / 4 * 3);
        let mut acc = 0u32;
        let mut bits = 0;
        for c in text.bytes() {
            let v = match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                b'=' | b'\n' | b'\r' | b' ' => continue,
                _ => return Err(format!("invalid base64 byte {c:#x}")),
            };
            acc = (acc << 6) | u32::from(v);
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
                acc &= (1 << bits) - 1;
            }
        }
        Ok(out)
    }

    #[test]
    fn round_trip() {
        for s in [
            "",
            "a",
            "ab",
            "abc",
            "abcd",
            "show paths --json\n\u{1}\u{ff}",
        ] {
            assert_eq!(decode(&encode(s.as_bytes())).unwrap(), s.as_bytes());
        }
        assert_eq!(encode(b"pong\n"), "cG9uZwo=");
    }
}

/// A CA (ca-cert.pem, as libnbd's `tls-certificates` directory expects)
/// and a server certificate for 127.0.0.1 signed by it, in `dir`.
fn make_tls(dir: &Path) {
    assert!(
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("openssl").is_file())),
        "openssl is not installed (it makes the VM's NBD TLS certificates): apt-get install openssl"
    );
    fs::create_dir_all(dir).expect("create the TLS dir");
    let script = r#"set -e
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout ca-key.pem -out ca-cert.pem -days 2 -subj /CN=umpath-vm-ca \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n' > server.ext
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout server-key.pem -out server.csr -subj /CN=umpath-vm
openssl x509 -req -in server.csr -CA ca-cert.pem -CAkey ca-key.pem -set_serial 1 \
  -days 2 -out server-cert.pem -extfile server.ext
"#;
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "making the VM's TLS certificates failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A console log so far.
fn read_console(log: &Path) -> String {
    fs::read(log)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The last `n` lines of a console log, headed by its path.
fn console_tail(log: &Path, n: usize) -> String {
    let text = read_console(log);
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(n);
    format!(
        "--- serial console ({}), last {} lines ---\n{}\n--- end of console ---",
        log.display(),
        lines.len() - from,
        lines[from..].join("\n")
    )
}

/// The QEMU ids (device, HBA, drive) of guest disk `disk`, from its sysfs
/// path (`readlink -f /sys/block/DISK`): the HBAs sit at PCI slots 4 and 5.
fn qdev_of_sysfs(disk: &str, path: &str) -> (String, String, String) {
    if path.contains("0000:00:04.0") {
        ("disk0".into(), "hba0".into(), "drive0".into())
    } else if path.contains("0000:00:05.0") {
        ("disk1".into(), "hba1".into(), "drive1".into())
    } else {
        panic!("{disk} is on neither HBA: {path}")
    }
}

/// The LUN: two virtio-scsi HBAs at PCI slots 4 and 5, each with a
/// scsi-hd of the same raw image `lun` (one block node per path, no image
/// locking) and the same QuantaStor identity.
fn lun_args(lun: &str) -> Vec<String> {
    let mut args = Vec::new();
    for (i, hba) in ["hba0", "hba1"].iter().enumerate() {
        args.push("-device".into());
        args.push(format!("virtio-scsi-pci,id={hba},addr={:#x}", 4 + i));
        args.push("-blockdev".into());
        args.push(format!(
            "driver=file,node-name=file{i},filename={lun},locking=off"
        ));
        args.push("-blockdev".into());
        args.push(format!("driver=raw,node-name=drive{i},file=file{i}"));
        args.push("-device".into());
        args.push(format!(
            "scsi-hd,id=disk{i},bus={hba}.0,channel=0,scsi-id=0,lun=0,drive=drive{i},share-rw=on,vendor={VENDOR},product={PRODUCT},serial={SERIAL},wwn={WWN:#x}"
        ));
    }
    args
}

/// Starts QEMU with `args`, its output to `log`; QEMU dies with the test
/// thread that started it.
fn spawn_qemu(args: &[String], log: &fs::File) -> std::io::Result<Child> {
    let mut cmd = Command::new("qemu-system-x86_64");
    // SAFETY: prctl(2) is async-signal-safe; QEMU dies with the test
    // thread that started it even if the test process is SIGKILLed.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log.try_clone()?)
        .spawn()
}
