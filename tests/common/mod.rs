//! Shared helpers for integration tests: start the real `umpath` binary on
//! a scratch directory and talk to it with real clients.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod tgt;

pub const BIN: &str = env!("CARGO_BIN_EXE_umpath");
pub const WWID: &str = "36000c29abcdef001";

/// The QuantaStor stanza exactly as the vendor documents it.
pub const SEED_STANZA: &str = umpath::config::QUANTASTOR_DEVICE;

/// Fails the test with an install hint when a peer program is missing.
pub fn need(bin: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{bin} is not installed: run ./scripts/test.sh, or apt-get install nbdkit libnbd-bin nbdfuse fio qemu-utils multipath-tools"
    );
}

/// A `paths { }` entry for a file path with the seed's identity.
pub fn file_path(name: &str, file: &Path) -> String {
    format!(
        "    path {{\n        name {name}\n        transport file\n        file {}\n        vendor \"OSNEXUS\"\n        product \"QUANTASTOR\"\n        revision \"0001\"\n        wwid \"{WWID}\"\n        serial \"QS0001\"\n    }}\n",
        file.display()
    )
}

/// A config: defaults, the seed stanza, an alias `lun0` and the given paths.
pub fn seed_config(defaults: &str, paths: &[String]) -> String {
    format!(
        "defaults {{\n{defaults}\n}}\ndevices {{\n{SEED_STANZA}}}\nmultipaths {{\n    multipath {{\n        wwid \"{WWID}\"\n        alias lun0\n    }}\n}}\npaths {{\n{}}}\n",
        paths.concat()
    )
}

/// `nbdkit --foreground --exit-with-parent --unix SOCKET
/// --exportname=lun0 ARGS...` (plugin, filters, parameters), started with
/// its output discarded; it may not listen yet ([`wait_for_path`]).
pub fn spawn_nbdkit<S: AsRef<std::ffi::OsStr>>(socket: &Path, args: &[S]) -> Child {
    need("nbdkit");
    Command::new("nbdkit")
        .arg("--foreground")
        .arg("--exit-with-parent")
        .arg("--unix")
        .arg(socket)
        .arg("--exportname=lun0")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nbdkit")
}

/// Waits up to 10 s for `path` to exist (a server's socket, a FUSE file).
pub fn wait_for_path(path: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{what} did not create {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn make_image(path: &Path, size: u64) {
    let f = std::fs::File::create(path).expect("create image");
    f.set_len(size).expect("size image");
}

/// A running `umpath daemon`.
pub struct Daemon {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub nbd_socket: PathBuf,
    pub control_socket: PathBuf,
    pub log: PathBuf,
    /// Extra `umpath daemon` arguments and a descriptor limit (soft and
    /// hard) for the daemon process, kept for `restart`.
    pub launch: Launch,
}

/// How the daemon is started beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    pub args: Vec<String>,
    pub nofile: Option<u64>,
    /// The daemon's umask (e.g. 0, to show sockets get their modes anyway).
    pub umask: Option<u32>,
    /// Where the sockets go, relative to DIR (default DIR itself); the
    /// daemon creates the directory.
    pub socket_dir: Option<&'static str>,
    /// Extra environment for the daemon (e.g. `UMPATH_IO_ENGINE`).
    pub env: Vec<(String, String)>,
    /// A command line the daemon runs under (`unshare ... sh -c '...
    /// exec "$0" "$@"'`): the daemon's binary and arguments follow it.
    pub wrapper: Vec<String>,
    /// Forbid `io_uring_setup` (EPERM) with a seccomp filter, as a
    /// container's profile does (x86_64 only).
    pub deny_io_uring: bool,
}

impl Daemon {
    /// Starts the daemon on `config_text` (written to DIR/multipath.conf)
    /// and waits until its control socket answers.
    pub fn start_in(dir: tempfile::TempDir, config_text: &str) -> Daemon {
        Self::start_with(dir, config_text, Launch::default())
    }

    /// [`Daemon::start_in`] with extra daemon arguments and limits.
    pub fn start_with(dir: tempfile::TempDir, config_text: &str, launch: Launch) -> Daemon {
        let config = dir.path().join("multipath.conf");
        std::fs::write(&config, config_text).expect("write config");
        let sockets = dir.path().join(launch.socket_dir.unwrap_or(""));
        let nbd_socket = sockets.join("nbd.sock");
        let control_socket = sockets.join("control.sock");
        let log = dir.path().join("daemon.log");
        let child = Self::spawn(&config, &nbd_socket, &control_socket, &log, &launch);
        let mut d = Daemon {
            child,
            dir,
            config,
            nbd_socket,
            control_socket,
            log,
            launch,
        };
        d.wait_ready();
        d
    }

    fn spawn(
        config: &Path,
        nbd_socket: &Path,
        control_socket: &Path,
        log: &Path,
        launch: &Launch,
    ) -> Child {
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let mut cmd = match launch.wrapper.split_first() {
            Some((prog, rest)) => {
                let mut c = Command::new(prog);
                c.args(rest).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        cmd.envs(launch.env.iter().map(|(k, v)| (k, v)));
        cmd.arg("--control-socket")
            .arg(control_socket)
            .arg("daemon")
            .arg("--config")
            .arg(config)
            .arg("--nbd-socket")
            .arg(nbd_socket)
            .args(&launch.args)
            .env("UMPATH_LOG", "info")
            .stdout(Stdio::null())
            .stderr(logf);
        let (nofile, umask) = (launch.nofile, launch.umask);
        if launch.deny_io_uring {
            deny_io_uring(&mut cmd);
        }
        if nofile.is_some() || umask.is_some() {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit and umask are async-signal-safe; the
            // closure touches nothing but its copied arguments.
            unsafe {
                cmd.pre_exec(move || {
                    if let Some(n) = nofile {
                        let r = libc::rlimit {
                            rlim_cur: n as libc::rlim_t,
                            rlim_max: n as libc::rlim_t,
                        };
                        if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    if let Some(m) = umask {
                        libc::umask(m as libc::mode_t);
                    }
                    Ok(())
                });
            }
        }
        cmd.spawn().expect("start umpath daemon")
    }

    /// Starts the daemon again on the same files (after it died or was
    /// killed) and waits until it serves.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(
            &self.config,
            &self.nbd_socket,
            &self.control_socket,
            &self.log,
            &self.launch,
        );
        self.wait_ready();
    }

    pub fn start(config_text: &str) -> Daemon {
        Self::start_in(tempfile::tempdir().expect("tempdir"), config_text)
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "umpath daemon exited early ({status}):\n{}",
                    self.log_text()
                );
            }
            if self.nbd_socket.exists() && self.ctl(&["show", "status"]).status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("umpath daemon not ready after 20 s:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn uri(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.nbd_socket.display())
    }

    /// Runs `umpath --control-socket S ARGS...`.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--control-socket")
            .arg(&self.control_socket)
            .args(args)
            .output()
            .expect("run umpath")
    }

    /// Runs a control command that must succeed; returns its stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "umpath {args:?} failed: {}\n--- daemon log ---\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn paths_json(&self) -> Vec<serde_json::Value> {
        let out = self.ctl_ok(&["show", "paths", "--json"]);
        serde_json::from_str::<serde_json::Value>(&out)
            .expect("show paths --json is JSON")
            .as_array()
            .cloned()
            .expect("an array")
    }

    pub fn path_json(&self, name: &str) -> serde_json::Value {
        self.paths_json()
            .into_iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no path {name} in show paths"))
    }

    pub fn ios(&self, name: &str) -> u64 {
        self.path_json(name)["ios"]
            .as_u64()
            .expect("ios is a number")
    }

    /// Waits until `pred` holds for path `name`'s JSON, or panics.
    pub fn wait_path(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            let p = self.path_json(name);
            if pred(&p) {
                return;
            }
            if Instant::now() > deadline {
                panic!("path {name}: {what} not reached in {timeout:?}; now {p}\n--- daemon log ---\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id() as i32;
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "umpath daemon did not stop on SIGTERM within 30 s:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Makes `io_uring_setup` fail with EPERM in the command's process (a
/// seccomp filter installed before exec, with no_new_privs), the way a
/// container's seccomp profile forbids io_uring.
#[cfg(target_arch = "x86_64")]
pub fn deny_io_uring(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    const NR_IO_URING_SETUP: u32 = 425;
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jeq = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let ld = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let ret = libc::BPF_RET | libc::BPF_K;
    let filter = [
        stmt(ld, 4), // seccomp_data.arch
        jeq(AUDIT_ARCH_X86_64, 0, 3),
        stmt(ld, 0), // seccomp_data.nr
        jeq(NR_IO_URING_SETUP, 0, 1),
        stmt(ret, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        stmt(ret, libc::SECCOMP_RET_ALLOW),
    ];
    // SAFETY: prctl with a filter that lives in the closure (copied into
    // the child); both calls are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub fn deny_io_uring(_cmd: &mut Command) {
    panic!("deny_io_uring: only x86_64 has the seccomp filter here");
}

/// `qemu-io -f raw -c CMD... URI-of-lun0`, not started yet.
pub fn qemu_io(d: &Daemon, cmds: &[&str]) -> Command {
    need("qemu-io");
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]);
    for x in cmds {
        c.args(["-c", x]);
    }
    c.arg(d.uri("lun0"));
    c
}

/// Runs a command, returning its output; panics if it cannot start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs a command that must succeed.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Reads lines from a child's stdout until one satisfies `pred`.
pub fn read_until(
    child: &mut Child,
    timeout: Duration,
    pred: impl Fn(&str) -> bool,
) -> Vec<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + timeout;
    let mut lines = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) => {
                let done = pred(&l);
                lines.push(l);
                if done {
                    return lines;
                }
            }
            Err(_) => break,
        }
    }
    panic!(
        "expected output not seen in {timeout:?}; got:\n{}",
        lines.join("\n")
    );
}

/// A verifying fio job over NBD: 4k random writes at a bounded rate, then
/// a crc32c verify of every block. `size` and the rate set how long it
/// runs; `extra` adds fio options (e.g. `--time_based --runtime=16`).
pub fn fio_verify(uri: &str, size: &str, rate_iops: &str, iodepth: u32, extra: &[String]) -> Child {
    need("fio");
    Command::new("fio")
        .args(extra)
        .args([
            "--name=verify",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            "--rw=randwrite",
            "--bs=4k",
            &format!("--iodepth={iodepth}"),
            &format!("--size={size}"),
            &format!("--rate_iops={rate_iops}"),
            "--verify=crc32c",
            "--verify_fatal=1",
            "--verify_state_save=0",
            "--do_verify=1",
            "--output-format=json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start fio")
}

/// Waits for a [`fio_verify`] job; `Err` says what went wrong (exit
/// status, the error fio counted, its output).
pub fn fio_result(child: Child) -> Result<(), String> {
    let out = child.wait_with_output().expect("fio");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!("fio failed ({}): {stderr}\n{stdout}", out.status));
    }
    let v: serde_json::Value = serde_json::from_str(&stdout[stdout.find('{').unwrap_or(0)..])
        .map_err(|e| format!("fio json: {e}\n{stdout}"))?;
    if v["jobs"][0]["error"] != 0 {
        return Err(format!(
            "fio reported error {}: {stderr}",
            v["jobs"][0]["error"]
        ));
    }
    Ok(())
}

/// [`fio_result`], failing the test with the daemon's log.
pub fn fio_ok(child: Child, d: &Daemon) {
    if let Err(e) = fio_result(child) {
        panic!("{e}\n--- daemon log ---\n{}", d.log_text());
    }
}

/// Resident memory of a process, KiB (0 if it cannot be read).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Open descriptors of a process (0 if they cannot be listed).
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Connects to an NBD Unix socket and negotiates export `lun0` (fixed
/// newstyle, GO, simple replies); the stream is ready for transmission.
pub fn nbd_handshake(socket: &Path) -> std::os::unix::net::UnixStream {
    use std::io::{Read, Write};
    use umpath::nbd::proto;
    let mut s = std::os::unix::net::UnixStream::connect(socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut g = [0u8; proto::GREETING_LEN];
    s.read_exact(&mut g).unwrap();
    proto::decode_greeting(&g).unwrap();
    let mut out = (proto::FLAG_C_FIXED_NEWSTYLE | proto::FLAG_C_NO_ZEROES)
        .to_be_bytes()
        .to_vec();
    proto::encode_info_request(&mut out, proto::OPT_GO, "lun0", &[]);
    s.write_all(&out).unwrap();
    loop {
        let mut h = [0u8; proto::OPTION_REPLY_HEADER_LEN];
        s.read_exact(&mut h).unwrap();
        let h = proto::OptionReplyHeader::decode(&h).unwrap();
        let mut p = vec![0u8; h.len as usize];
        s.read_exact(&mut p).unwrap();
        assert!(!h.is_error(), "GO refused");
        if h.reply == proto::REP_ACK {
            return s;
        }
    }
}

/// A daemon with one 64 MiB LUN reached by two file paths, p0 and p1
/// (the QuantaStor stanza, polling_interval 1), started with `launch`.
pub fn two_path_daemon(launch: Launch) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("lun0.img");
    make_image(&img, 64 << 20);
    let cfg = seed_config(
        "    polling_interval 1",
        &[file_path("p0", &img), file_path("p1", &img)],
    );
    Daemon::start_with(dir, &cfg, launch)
}
