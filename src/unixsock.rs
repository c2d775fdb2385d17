//! Unix sockets shared by the NBD and control servers: their paths, their
//! modes whatever the umask, and their peers' credentials.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};
use nix::sys::stat::Mode;

use crate::access::Cred;

/// Mode of the socket directories umpath creates (e.g. `/run/umpath`).
pub const DIR_MODE: u32 = 0o755;

/// Makes `path` ready to bind: creates its parent directory (mode
/// [`DIR_MODE`] whatever the umask; an existing directory is left as it
/// is), removes a stale socket file left by a dead process, and refuses to
/// touch a socket another process still answers on or a file that is not
/// a socket.
pub fn prepare_socket_path(path: &Path) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() {
            create_dirs(parent)?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(md) if md.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is in use by a running server", path.display()),
            )),
            // Nobody listens: a socket file left by a dead process.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path),
            Err(e) => Err(e),
        },
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        )),
    }
}

/// Creates `dir` and its missing ancestors with mode [`DIR_MODE`]. The
/// umask can only narrow the mode `mkdir` gives, and the `chmod` that
/// follows sets it exactly.
fn create_dirs(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        if !parent.as_os_str().is_empty() {
            create_dirs(parent)?;
        }
    }
    match std::fs::DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE)),
        // Someone else made it meanwhile: theirs, leave its mode alone.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Binds a listening Unix socket at `path` whose file has exactly `mode`
/// (and group `gid`, when given), whatever the process umask.
///
/// There is no moment at which the socket file has a mode the umask chose:
/// the socket's inode is `fchmod`ed to `mode` before `bind`, and Linux
/// creates the file with that mode minus the umask, so never wider than
/// `mode`; a `chmod` then sets it exactly (it can only widen what the umask
/// narrowed, up to `mode`), and `chown` gives it its group. Only then does
/// `listen` start accepting: until that moment a `connect` is refused
/// whatever the file's mode. We do not change the umask around `bind`: the
/// umask is per process and the daemon is multi-threaded, so another
/// thread's files would get it. Any failure removes the file.
pub fn bind_listener(path: &Path, mode: u32, gid: Option<u32>) -> io::Result<UnixListener> {
    prepare_socket_path(path)?;
    let fd: OwnedFd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let perm = Mode::from_bits_truncate(mode);
    nix::sys::stat::fchmod(fd.as_raw_fd(), perm)?;
    socket::bind(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    let finish = || -> io::Result<()> {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        if let Some(g) = gid {
            nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(g)))?;
        }
        socket::listen(&fd.as_fd(), Backlog::MAXCONN)?;
        Ok(())
    };
    if let Err(e) = finish() {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(UnixListener::from(fd))
}

/// Sets the mode and group of a socket file bound by [`bind_listener`]
/// (e.g. to widen 0600 to 0660 for a group once it is known).
pub fn set_mode(path: &Path, mode: u32, gid: Option<u32>) -> io::Result<()> {
    if let Some(g) = gid {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(g)))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// The peer's credentials (SO_PEERCRED: as they were when it connected),
/// or `None` if they cannot be read.
pub fn peer_cred(s: &tokio::net::UnixStream) -> Option<Cred> {
    let c = s.peer_cred().ok()?;
    Some(Cred {
        uid: c.uid(),
        gid: c.gid(),
        // 0: the peer is in a pid namespace we cannot see.
        pid: c.pid().filter(|p| *p > 0),
    })
}

/// The supplementary groups of process `pid` (`Groups:` in
/// `/proc/PID/status`), or `None` if they cannot be read. They are read
/// now, not as they were at connect time; a peer that exited (and whose pid
/// was reused) could be misjudged, which is why a policy asks for them only
/// after uid and gid did not decide.
pub fn peer_groups(pid: Option<i32>) -> Option<Vec<u32>> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    crate::access::groups_from_status(&status)
}

/// A group by name or number, with its gid.
pub fn resolve_group(name: &str) -> Result<crate::access::Group, String> {
    if let Ok(gid) = name.parse::<u32>() {
        let name = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
            .ok()
            .flatten()
            .map_or_else(|| gid.to_string(), |g| g.name);
        return Ok(crate::access::Group { name, gid });
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(crate::access::Group {
            name: g.name,
            gid: g.gid.as_raw(),
        }),
        Ok(None) => Err(format!("no group named {name:?}")),
        Err(e) => Err(format!("cannot look up group {name:?}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_socket_handling() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/s.sock");
        assert!(prepare_socket_path(&p).is_ok());
        assert!(p.parent().unwrap().is_dir());
        // A live socket is refused.
        let live = std::os::unix::net::UnixListener::bind(&p).unwrap();
        let e = prepare_socket_path(&p).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        // A dead one is removed.
        drop(live);
        prepare_socket_path(&p).unwrap();
        assert!(!p.exists());
        // A regular file is refused and left alone.
        std::fs::write(&p, b"x").unwrap();
        assert!(prepare_socket_path(&p).is_err());
        assert!(p.exists());
    }

    #[test]
    fn sockets_and_dirs_get_their_modes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("run/umpath/s.sock");
        let gid = nix::unistd::getegid().as_raw();
        for mode in [0o600, 0o660, 0o666] {
            let l = bind_listener(&p, mode, Some(gid)).unwrap();
            let md = std::fs::symlink_metadata(&p).unwrap();
            assert!(md.file_type().is_socket());
            assert_eq!(md.permissions().mode() & 0o7777, mode);
            assert_eq!(std::os::unix::fs::MetadataExt::gid(&md), gid);
            // It accepts.
            let _c = UnixStream::connect(&p).unwrap();
            l.accept().unwrap();
            drop(l);
            std::fs::remove_file(&p).unwrap();
        }
        let md = std::fs::metadata(p.parent().unwrap()).unwrap();
        assert_eq!(md.permissions().mode() & 0o7777, DIR_MODE);
        let md = std::fs::metadata(dir.path().join("run")).unwrap();
        assert_eq!(md.permissions().mode() & 0o7777, DIR_MODE);
    }

    #[test]
    fn own_credentials() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (a, _b) = tokio::net::UnixStream::pair().unwrap();
            let c = peer_cred(&a).unwrap();
            assert_eq!(c.uid, nix::unistd::geteuid().as_raw());
            assert_eq!(c.pid, Some(std::process::id() as i32));
            let groups = peer_groups(c.pid).unwrap();
            let mine: Vec<u32> = nix::unistd::getgroups()
                .unwrap()
                .iter()
                .map(|g| g.as_raw())
                .collect();
            assert_eq!(groups, mine);
            assert_eq!(peer_groups(None), None);
        });
    }
}
