//! systemd socket activation: listening sockets handed over in
//! `LISTEN_PID`/`LISTEN_FDS`/`LISTEN_FDNAMES` (sd_listen_fds(3)), taken
//! by name instead of binding.
//!
//! | name      | what                       | must be                        |
//! |-----------|----------------------------|--------------------------------|
//! | `nbd`     | the NBD Unix socket        | a listening AF_UNIX stream     |
//! | `control` | the control socket         | a listening AF_UNIX stream     |
//! | `nbd-tcp` | NBD over TCP (optional)    | a listening AF_INET/6 stream   |
//!
//! `umpathd.socket` names its sockets with `FileDescriptorName=`;
//! `systemd-socket-activate -l PATH --fdname=nbd umpath daemon` does the
//! same by hand. A socket of another kind (datagram, not listening, the
//! wrong address family, not a socket) or a name umpath does not know is
//! an error that names the descriptor, so a wrong `.socket` unit fails at
//! start instead of serving something odd. Sockets not handed over are
//! bound as usual (`--nbd-socket`, `--control-socket`, `--nbd-listen`).
//! Activated socket files belong to systemd: umpath never removes them.
//!
//! The parsing is pure ([`parse`]); [`from_env`] reads the environment,
//! checks each descriptor and takes ownership of it.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{getsockname, getsockopt, sockopt, AddressFamily, SockType, SockaddrLike};

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

/// The socket names umpath takes.
pub const NBD: &str = "nbd";
pub const CONTROL: &str = "control";
pub const NBD_TCP: &str = "nbd-tcp";

/// Sockets handed over by the service manager.
#[derive(Debug, Default)]
pub struct Activated {
    pub nbd: Option<std::os::unix::net::UnixListener>,
    pub control: Option<std::os::unix::net::UnixListener>,
    pub nbd_tcp: Option<std::net::TcpListener>,
}

impl Activated {
    pub fn is_empty(&self) -> bool {
        self.nbd.is_none() && self.control.is_none() && self.nbd_tcp.is_none()
    }
}

/// Socket activation that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error("socket activation: {0}")]
    Env(String),
    #[error("socket activation: descriptor {fd} (named {name:?}): {why}")]
    Socket {
        fd: RawFd,
        name: String,
        why: String,
    },
}

/// Parses the activation environment: the descriptors passed to process
/// `me`, with their names. `None` for `pid` or `fds` (or another process's
/// pid): nothing was passed. Names are `:`-separated, one per descriptor;
/// without `LISTEN_FDNAMES` every descriptor is named `unknown`, as
/// sd_listen_fds_with_names(3) does.
pub fn parse(
    pid: Option<&str>,
    fds: Option<&str>,
    names: Option<&str>,
    me: u32,
) -> Result<Vec<(RawFd, String)>, ActivationError> {
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(Vec::new());
    };
    let pid: u32 = pid
        .trim()
        .parse()
        .map_err(|_| ActivationError::Env(format!("LISTEN_PID={pid:?} is not a process id")))?;
    if pid != me {
        return Ok(Vec::new());
    }
    let n: RawFd = fds
        .trim()
        .parse()
        .ok()
        .filter(|n| (0..=4096).contains(n))
        .ok_or_else(|| ActivationError::Env(format!("LISTEN_FDS={fds:?} is not a count")))?;
    let names: Vec<String> = match names {
        Some(s) => s.split(':').map(str::to_string).collect(),
        None => vec!["unknown".to_string(); n as usize],
    };
    if names.len() != n as usize {
        return Err(ActivationError::Env(format!(
            "LISTEN_FDNAMES has {} name(s) for {n} descriptor(s)",
            names.len()
        )));
    }
    Ok((LISTEN_FDS_START..LISTEN_FDS_START + n)
        .zip(names)
        .collect())
}

/// What a named socket must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Unix,
    Tcp,
}

fn want(name: &str) -> Option<Want> {
    match name {
        NBD | CONTROL => Some(Want::Unix),
        NBD_TCP => Some(Want::Tcp),
        _ => None,
    }
}

/// Reads the activation environment and takes the sockets named `nbd`,
/// `control` and `nbd-tcp`. Every passed descriptor is checked before any
/// is used; all are made close-on-exec (callouts must not inherit them).
/// The environment is left as it is (the pid check keeps children from
/// taking it for theirs).
pub fn from_env() -> Result<Activated, ActivationError> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let names = std::env::var("LISTEN_FDNAMES").ok();
    let passed = parse(
        pid.as_deref(),
        fds.as_deref(),
        names.as_deref(),
        std::process::id(),
    )?;
    take(passed)
}

fn take(passed: Vec<(RawFd, String)>) -> Result<Activated, ActivationError> {
    let mut seen: Vec<&str> = Vec::new();
    for (fd, name) in &passed {
        let err = |why: String| ActivationError::Socket {
            fd: *fd,
            name: name.clone(),
            why,
        };
        let Some(w) = want(name) else {
            return Err(err(format!(
                "umpath takes sockets named {NBD}, {CONTROL} and {NBD_TCP} (FileDescriptorName= in the .socket unit, --fdname= for systemd-socket-activate)"
            )));
        };
        if seen.contains(&name.as_str()) {
            return Err(err("a second socket with this name".into()));
        }
        seen.push(name);
        check(*fd, w).map_err(err)?;
    }
    let mut out = Activated::default();
    for (fd, name) in passed {
        // SAFETY: `fd` was passed to this process by the service manager
        // (LISTEN_PID is ours), `check` found it open and a socket, and
        // each descriptor appears once in `passed` (consecutive numbers
        // from LISTEN_FDS_START), so this is its only owner.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let nb = |e: std::io::Error| ActivationError::Socket {
            fd,
            name: name.clone(),
            why: format!("cannot make it non-blocking: {e}"),
        };
        match name.as_str() {
            NBD | CONTROL => {
                let l = std::os::unix::net::UnixListener::from(owned);
                l.set_nonblocking(true).map_err(nb)?;
                if name == NBD {
                    out.nbd = Some(l);
                } else {
                    out.control = Some(l);
                }
            }
            _ => {
                let l = std::net::TcpListener::from(owned);
                l.set_nonblocking(true).map_err(nb)?;
                out.nbd_tcp = Some(l);
            }
        }
    }
    Ok(out)
}

/// Checks that `fd` is an open, listening stream socket of the family
/// `w` needs, and sets close-on-exec on it.
fn check(fd: RawFd, w: Want) -> Result<(), String> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let flags = fcntl(fd, FcntlArg::F_GETFD).map_err(|e| format!("not an open descriptor: {e}"))?;
    let flags = FdFlag::from_bits_truncate(flags) | FdFlag::FD_CLOEXEC;
    fcntl(fd, FcntlArg::F_SETFD(flags)).map_err(|e| format!("cannot set close-on-exec: {e}"))?;
    // SAFETY: `fd` is open (F_GETFD succeeded) and is only borrowed for
    // the duration of these calls; ownership stays with the caller.
    let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let ty = getsockopt(&b, sockopt::SockType).map_err(|e| match e {
        nix::errno::Errno::ENOTSOCK => "not a socket".to_string(),
        e => format!("cannot read its socket type: {e}"),
    })?;
    if ty != SockType::Stream {
        return Err(format!(
            "a {ty:?} socket; umpath needs a stream socket (ListenStream=, not ListenDatagram= or ListenSequentialPacket=)"
        ));
    }
    let listening = getsockopt(&b, sockopt::AcceptConn)
        .map_err(|e| format!("cannot tell whether it listens: {e}"))?;
    if !listening {
        return Err(
            "not a listening socket (Accept=no and a ListenStream= socket are needed)".into(),
        );
    }
    let addr: nix::sys::socket::SockaddrStorage =
        getsockname(fd).map_err(|e| format!("cannot read its address: {e}"))?;
    let family = addr.family();
    let ok = match w {
        Want::Unix => family == Some(AddressFamily::Unix),
        Want::Tcp => matches!(family, Some(AddressFamily::Inet | AddressFamily::Inet6)),
    };
    if !ok {
        let need = match w {
            Want::Unix => "a Unix socket (ListenStream=/a/path)",
            Want::Tcp => "a TCP socket (ListenStream=[HOST:]PORT)",
        };
        return Err(format!(
            "address family {}; umpath needs {need}",
            family.map_or_else(|| "unknown".to_string(), |f| format!("{f:?}"))
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, IntoRawFd};

    #[test]
    fn parse_follows_sd_listen_fds() {
        assert!(parse(None, None, None, 7).unwrap().is_empty());
        assert!(parse(Some("7"), None, None, 7).unwrap().is_empty());
        // Another process's descriptors.
        assert!(parse(Some("8"), Some("2"), None, 7).unwrap().is_empty());
        assert_eq!(
            parse(Some("7"), Some("2"), Some("nbd:control"), 7).unwrap(),
            vec![(3, "nbd".to_string()), (4, "control".to_string())]
        );
        assert_eq!(
            parse(Some("7"), Some("1"), None, 7).unwrap(),
            vec![(3, "unknown".to_string())]
        );
        assert!(parse(Some("7"), Some("0"), None, 7).unwrap().is_empty());
        let e = parse(Some("7"), Some("2"), Some("nbd"), 7).unwrap_err();
        assert!(e.to_string().contains("1 name(s) for 2"), "{e}");
        assert!(parse(Some("x"), Some("1"), None, 7).is_err());
        assert!(parse(Some("7"), Some("-1"), None, 7).is_err());
        assert!(parse(Some("7"), Some("lots"), None, 7).is_err());
    }

    #[test]
    fn wrong_kinds_are_named() {
        let dir = tempfile::tempdir().unwrap();
        // A listening Unix stream socket is right for nbd, wrong for nbd-tcp.
        let l = std::os::unix::net::UnixListener::bind(dir.path().join("s")).unwrap();
        check(l.as_raw_fd(), Want::Unix).unwrap();
        let e = check(l.as_raw_fd(), Want::Tcp).unwrap_err();
        assert!(e.contains("TCP socket"), "{e}");
        // A datagram socket.
        let d = std::os::unix::net::UnixDatagram::bind(dir.path().join("d")).unwrap();
        let e = check(d.as_raw_fd(), Want::Unix).unwrap_err();
        assert!(e.contains("stream socket"), "{e}");
        // A TCP listener is wrong for nbd.
        let t = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        check(t.as_raw_fd(), Want::Tcp).unwrap();
        let e = check(t.as_raw_fd(), Want::Unix).unwrap_err();
        assert!(e.contains("Unix socket"), "{e}");
        // Not a socket.
        let f = std::fs::File::open("/dev/null").unwrap();
        let e = check(f.as_raw_fd(), Want::Unix).unwrap_err();
        assert_eq!(e, "not a socket");
        // An unknown name fails before anything is taken.
        let fd = std::os::unix::net::UnixListener::bind(dir.path().join("u"))
            .unwrap()
            .into_raw_fd();
        let e = take(vec![(fd, "web".into())]).unwrap_err();
        assert!(e.to_string().contains("named \"web\""), "{e}");
        // SAFETY: `fd` came from into_raw_fd above and was not taken.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
        // The right kind is taken.
        let fd = std::os::unix::net::UnixListener::bind(dir.path().join("n"))
            .unwrap()
            .into_raw_fd();
        let a = take(vec![(fd, NBD.into())]).unwrap();
        assert!(a.nbd.is_some() && a.control.is_none() && !a.is_empty());
    }
}
