//! Unix socket paths shared by the NBD and control servers.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Makes `path` ready to bind: creates its parent directory, removes a
/// stale socket file left by a dead process, and refuses to touch a socket
/// another process still answers on or a file that is not a socket.
pub fn prepare_socket_path(path: &Path) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent)?;
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
}
