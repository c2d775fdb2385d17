//! Who may do what on the daemon's sockets, and the control socket's
//! bounds, judged from outside: the real binary started as root with
//! umask 000, and the user `nobody` (setpriv) running the umpath CLI,
//! nbdinfo and raw control clients, while a verifying fio job runs.
//!
//! - socket modes whatever the umask: control 0666, NBD 0600 (0660 and
//!   the NBD group's when there is one), their directory 0755;
//! - `show` for everyone; fail/reinstate/fault/switch/reconfigure/shutdown
//!   refused to nobody with a clear message, logged with uid and pid;
//! - NBD sessions refused to nobody even through a socket file anyone may
//!   open, allowed to root;
//! - with an admin group (`umpath_admin_group`), its members may change
//!   things and open NBD sessions;
//! - 100 control clients that never read their replies: refused beyond
//!   the caps, dropped after the deadline, RSS bounded, `show` from root
//!   answers in < 100 ms.
//!
//! Each test prints its figures (`--no-capture` to see them).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

const NOBODY: u32 = 65534;
/// `users` on Debian: the admin group of the group test.
const USERS_GID: u32 = 100;
/// The WWID of the many-paths map of the bounds test.
const WWID_BIG: &str = "36000c29abcdef0ff";

/// The system's Python (not a per-user shim nobody cannot run).
const PYTHON: &str = "/usr/bin/python3";

fn need_python() {
    assert!(
        Path::new(PYTHON).is_file(),
        "{PYTHON} is not installed: apt-get install python3"
    );
}

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "tests/access.rs starts the daemon as root and clients as nobody: run as root"
    );
    need("setpriv");
}

/// Starts `umpath daemon` as root with umask 000, its sockets under
/// DIR/run/umpath (created by the daemon), with `extra` daemon flags.
fn start(config_text: &str, dir: tempfile::TempDir, extra: &[&str]) -> Daemon {
    // Let nobody reach the sockets' directory.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    Daemon::start_with(
        dir,
        config_text,
        Launch {
            args: extra.iter().map(|a| a.to_string()).collect(),
            umask: Some(0),
            socket_dir: Some("run/umpath"),
            ..Launch::default()
        },
    )
}

fn two_paths(defaults: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("lun0.img");
    make_image(&img, 64 << 20);
    let cfg = seed_config(defaults, &[file_path("p0", &img), file_path("p1", &img)]);
    (dir, cfg)
}

/// `setpriv` as nobody: primary group nogroup, supplementary `groups`.
fn as_nobody(groups: &[u32], prog: &str) -> Command {
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"));
    if groups.is_empty() {
        c.arg("--clear-groups");
    } else {
        let g: Vec<String> = groups.iter().map(u32::to_string).collect();
        c.arg(format!("--groups={}", g.join(",")));
    }
    c.arg("--").arg(prog);
    c
}

/// `umpath ARGS` as nobody.
fn nobody_ctl(d: &Daemon, groups: &[u32], args: &[&str]) -> Output {
    run(as_nobody(groups, BIN)
        .arg("--control-socket")
        .arg(&d.control_socket)
        .args(args))
}

/// `nbdinfo` on lun0, as nobody (Some(groups)) or as root (None).
fn nbdinfo(d: &Daemon, nobody: Option<&[u32]>) -> Output {
    need("nbdinfo");
    let mut c = match nobody {
        Some(g) => as_nobody(g, "nbdinfo"),
        None => Command::new("nbdinfo"),
    };
    run(c.arg("--size").arg(d.uri("lun0")))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// The verifying fio job beside an attack (tests/common).
fn fio_lun0(d: &Daemon, size: &str, rate: &str) -> Child {
    fio_verify(&d.uri("lun0"), size, rate, 8, &[])
}

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// One raw control request from this (root) process: the answer and how
/// long it took.
fn timed_request(sock: &Path, line: &str) -> (serde_json::Value, Duration) {
    let t = Instant::now();
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("{line}\n").as_bytes()).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let took = t.elapsed();
    (serde_json::from_slice(&buf).expect("a JSON answer"), took)
}

#[test]
fn nobody_may_show_but_not_change_and_gets_no_nbd_session() {
    require_root();
    let (dir, cfg) = two_paths("    polling_interval 1");
    let mut d = start(&cfg, dir, &[]);
    let fio = fio_lun0(&d, "16M", "1500");

    // Modes whatever the umask (000).
    let run = d.control_socket.parent().unwrap();
    assert_eq!(mode(run), 0o755, "socket directory");
    assert_eq!(mode(&d.control_socket), 0o666, "control socket");
    assert_eq!(
        mode(&d.nbd_socket),
        0o600,
        "NBD socket without an NBD group"
    );
    assert_eq!(std::fs::metadata(&d.nbd_socket).unwrap().uid(), 0);
    println!(
        "modes under umask 000: dir {:o}, control {:o}, nbd {:o}",
        mode(run),
        mode(&d.control_socket),
        mode(&d.nbd_socket)
    );

    // show is for everyone.
    for what in [
        &["show", "paths"][..],
        &["show", "config", "--json"],
        &["show", "path", "p0", "config"],
    ] {
        let o = nobody_ctl(&d, &[], what);
        assert!(o.status.success(), "nobody {what:?}: {}", text(&o));
    }
    assert!(text(&nobody_ctl(&d, &[], &["show", "paths"])).contains("p0"));

    // Every change is refused, with the message.
    for (args, line) in [
        (&["fail", "path", "p0"][..], "fail path p0"),
        (&["reinstate", "path", "p0"], "reinstate path p0"),
        (&["fault", "path", "p0", "error"], "fault path p0 error"),
        (
            &["switch", "map", "lun0", "group", "1"],
            "switch map lun0 group 1",
        ),
        (&["reconfigure"], "reconfigure"),
        (&["shutdown"], "shutdown"),
    ] {
        let o = nobody_ctl(&d, &[], args);
        let t = text(&o);
        assert!(!o.status.success(), "nobody {args:?} succeeded: {t}");
        let want = format!("permission denied: `{line}` needs root; you are uid {NOBODY}");
        assert!(t.contains(&want), "nobody {args:?}: {t}\nwanted: {want}");
    }
    let log = d.log_text();
    assert!(
        log.contains("control command refused")
            && log.contains(&format!("uid={NOBODY}"))
            && log.contains("pid="),
        "refusals are logged with uid and pid:\n{log}"
    );
    // Nothing changed: the daemon runs and both paths carry IO.
    assert!(d.child.try_wait().unwrap().is_none(), "the daemon stopped");
    for p in ["p0", "p1"] {
        assert_eq!(
            d.path_json(p)["dm_state"],
            "active",
            "{p}: {}",
            d.path_json(p)
        );
    }
    // Root may.
    d.ctl_ok(&["fail", "path", "p1"]);
    d.ctl_ok(&["reinstate", "path", "p1"]);

    // NBD: the socket file keeps nobody out (0600) ...
    let o = nbdinfo(&d, Some(&[]));
    assert!(
        !o.status.success(),
        "nobody got an NBD session: {}",
        text(&o)
    );
    // ... and so do the credentials when the file would let anyone in.
    std::fs::set_permissions(&d.nbd_socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let o = nbdinfo(&d, Some(&[]));
    assert!(
        !o.status.success(),
        "nobody got an NBD session: {}",
        text(&o)
    );
    let log = d.log_text();
    let refused = log
        .lines()
        .find(|l| l.contains("NBD connection refused"))
        .unwrap_or_else(|| panic!("no NBD refusal logged:\n{log}"));
    assert!(
        refused.contains(&format!("uid={NOBODY}")) && refused.contains("pid="),
        "{refused}"
    );
    println!("logged: {}", refused.trim());
    // A flood of refused NBD connections is logged a few times, not each.
    need_python();
    let flood = as_nobody(&[], PYTHON)
        .args([
            "-c",
            "import socket,sys\nfor _ in range(50): socket.socket(socket.AF_UNIX).connect(sys.argv[1])",
        ])
        .arg(&d.nbd_socket)
        .status()
        .unwrap();
    assert!(flood.success());
    std::thread::sleep(Duration::from_millis(300));
    let lines = d
        .log_text()
        .lines()
        .filter(|l| l.contains("NBD connection refused"))
        .count();
    println!("51 refused NBD connections, {lines} log lines");
    assert!((1..=5).contains(&lines), "{lines} NBD refusal lines");
    // Root's session works.
    let o = nbdinfo(&d, None);
    assert!(o.status.success(), "root's nbdinfo: {}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        (64u64 << 20).to_string()
    );

    fio_ok(fio, &d);
}

#[test]
fn members_of_the_admin_group_may_change_things_and_open_sessions() {
    require_root();
    // The keyword (no flag); the NBD group defaults to the admin group.
    let (dir, cfg) = two_paths("    polling_interval 1\n    umpath_admin_group users");
    let d = start(&cfg, dir, &[]);
    let fio = fio_lun0(&d, "8M", "1500");
    assert_eq!(mode(&d.nbd_socket), 0o660, "NBD socket with an NBD group");
    assert_eq!(std::fs::metadata(&d.nbd_socket).unwrap().gid(), USERS_GID);

    // A supplementary group.
    let o = nobody_ctl(&d, &[USERS_GID], &["fail", "path", "p0"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(d.path_json("p0")["dm_state"], "failed");
    let o = nobody_ctl(&d, &[USERS_GID], &["reinstate", "path", "p0"]);
    assert!(o.status.success(), "{}", text(&o));
    // The primary group.
    let o = run(Command::new("setpriv")
        .arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={USERS_GID}"))
        .arg("--clear-groups")
        .arg(BIN)
        .arg("--control-socket")
        .arg(&d.control_socket)
        .args(["fault", "path", "p1", "clear"]));
    assert!(o.status.success(), "{}", text(&o));
    // Without the group: refused, and the message names the group.
    let o = nobody_ctl(&d, &[], &["fail", "path", "p0"]);
    assert!(
        text(&o).contains(&format!(
            "`fail path p0` needs root or group users; you are uid {NOBODY}"
        )),
        "{}",
        text(&o)
    );
    let log = d.log_text();
    assert!(
        log.contains(&format!("uid={NOBODY}")) && log.contains("control: fail path p0"),
        "allowed changes are logged with the peer:\n{log}"
    );

    // NBD sessions for the group, not for others.
    let o = nbdinfo(&d, Some(&[USERS_GID]));
    assert!(o.status.success(), "nobody in users: {}", text(&o));
    let o = nbdinfo(&d, Some(&[]));
    assert!(!o.status.success(), "nobody: {}", text(&o));

    fio_ok(fio, &d);

    // The flag wins over the keyword; an unknown group stops the start.
    let (dir, cfg) = two_paths("    umpath_admin_group users");
    let cfg_path = dir.path().join("multipath.conf");
    std::fs::write(&cfg_path, &cfg).unwrap();
    let o = run(Command::new(BIN)
        .arg("--control-socket")
        .arg(dir.path().join("c.sock"))
        .arg("daemon")
        .arg("--config")
        .arg(&cfg_path)
        .arg("--nbd-socket")
        .arg(dir.path().join("n.sock"))
        .args(["--admin-group", "no-such-group-umpath"]));
    assert!(!o.status.success());
    assert!(
        text(&o).contains("admin group: no group named \"no-such-group-umpath\""),
        "{}",
        text(&o)
    );
}

/// A `paths {}` entry for the many-paths map (no IO goes there).
fn big_path(i: usize, file: &Path) -> String {
    format!(
        "    path {{\n        name q{i}\n        transport file\n        file {}\n        vendor \"OSNEXUS\"\n        product \"QUANTASTOR\"\n        revision \"0001\"\n        wwid \"{WWID_BIG}\"\n        serial \"QS{i:04}\"\n    }}\n",
        file.display()
    )
}

/// Opens `n` control connections as `uid`, sends `show config --json` on
/// each and never reads. Prints "ready" once all are sent; lives `secs`.
fn non_readers(d: &Daemon, uid: u32, n: usize, secs: u32) -> Child {
    need_python();
    let script = r#"
import socket, sys, time
path, n, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
socks = []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        s.sendall(b"show config --json\n")
    except OSError:
        pass
    socks.append(s)
print("ready", flush=True)
time.sleep(secs)
"#;
    Command::new(PYTHON)
        .args(["-c", script])
        .arg(&d.control_socket)
        .arg(n.to_string())
        .arg(secs.to_string())
        .uid(uid)
        .gid(uid)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3")
}

#[test]
fn a_hundred_control_clients_that_never_read_are_bounded() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("lun0.img");
    let big = dir.path().join("big.img");
    make_image(&img, 64 << 20);
    make_image(&big, 1 << 20);
    let mut paths = vec![file_path("p0", &img), file_path("p1", &img)];
    paths.extend((0..70).map(|i| big_path(i, &big)));
    let d = start(
        &seed_config("    polling_interval 5", &paths),
        dir,
        &["--control-timeout", "2"],
    );
    let pid = d.child.id();
    let (v, took) = timed_request(&d.control_socket, "show config --json");
    let reply = serde_json::to_vec(&v).unwrap().len();
    println!("show config --json: {reply} bytes in {took:?}");
    assert!(
        reply > 256 * 1024,
        "the reply must not fit a socket buffer for this test ({reply} bytes)"
    );
    let fio = fio_lun0(&d, "16M", "1000");
    std::thread::sleep(Duration::from_millis(500));
    let rss0 = status_kib(pid, "VmRSS:");
    let fds0 = open_fds(pid);

    // 100 clients from 5 users (20 each): at most 16 per uid and 64 in
    // all are admitted, the rest closed at once.
    let t0 = Instant::now();
    let mut attackers: Vec<Child> = (0..5).map(|i| non_readers(&d, 60000 + i, 20, 30)).collect();
    for a in &mut attackers {
        let mut l = String::new();
        BufReader::new(a.stdout.as_mut().unwrap())
            .read_line(&mut l)
            .unwrap();
        assert_eq!(l.trim(), "ready");
    }
    std::thread::sleep(Duration::from_millis(300));
    let fds_attack = open_fds(pid);
    // A well-behaved client still gets its answer at once.
    let mut worst = Duration::ZERO;
    for line in [
        "show status",
        "show paths --json",
        "show maps",
        "show status",
    ] {
        let (v, took) = timed_request(&d.control_socket, line);
        assert_eq!(v["ok"], true, "{line}: {v}");
        worst = worst.max(took);
    }
    // The expensive one is not queued behind the attackers' copies.
    let (v, took_big) = timed_request(&d.control_socket, "show config --json");
    assert_eq!(v["ok"], true);
    println!("show config --json under attack: {took_big:?} (idle {took:?})");
    // Queued behind the 64 admitted copies it would take 64 times as long.
    assert!(
        took_big < took * 10,
        "show config --json took {took_big:?} under attack, {took:?} idle"
    );
    let rss_attack = status_kib(pid, "VmRSS:");
    println!(
        "under attack: {} KiB RSS (idle {rss0}), {fds_attack} fds (idle {fds0}), slowest show {worst:?}",
        rss_attack
    );
    assert!(worst < Duration::from_millis(100), "show took {worst:?}");
    assert!(
        rss_attack < rss0 + 100 * 1024,
        "RSS {rss_attack} KiB under 100 non-reading control clients (idle {rss0})"
    );
    assert!(
        fds_attack <= fds0 + 64 + 8,
        "{fds_attack} fds under attack (idle {fds0}): the caps did not hold"
    );

    // After the deadline the admitted ones are dropped.
    let deadline = t0 + Duration::from_secs(6);
    loop {
        let n = open_fds(pid);
        if n <= fds0 + 4 {
            println!("dropped after {:?}: {n} fds", t0.elapsed());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{n} fds {:?} after the attack began (idle {fds0})\n{}",
            t0.elapsed(),
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = d.log_text();
    assert!(
        log.contains("control client did not read its reply within 2 s; dropped"),
        "{log}"
    );
    assert!(log.contains("control connection refused"), "{log}");
    // Refusals name the peer: per uid (16 each) and in all (64; the 80
    // the per-uid caps allow are cut to 64, see the fds above). One rate
    // limit covers both kinds.
    let refused = log
        .lines()
        .find(|l| l.contains("control connection refused"))
        .unwrap();
    assert!(
        refused.contains("uid=600")
            && refused.contains("pid=")
            && (refused.contains("has 16 control connections open")
                || refused.contains("64 control connections are open")),
        "{refused}"
    );
    let refusals = log
        .lines()
        .filter(|l| l.contains("control connection refused"))
        .count();
    println!("refusal lines logged: {refusals} (rate limited)");
    assert!(refusals <= 10, "refusals flood the log: {refusals} lines");

    for mut a in attackers {
        let _ = a.kill();
        let _ = a.wait();
    }
    let rss1 = status_kib(pid, "VmRSS:");
    println!("after: {rss1} KiB RSS, {} fds", open_fds(pid));
    fio_ok(fio, &d);
    assert!(d.ctl(&["show", "status"]).status.success());
}
