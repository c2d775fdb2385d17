//! The socket edge of generic netlink: a `NETLINK_GENERIC` socket, one
//! request at a time, answered by its messages and an ack or an errno.
//! Blocking (call it from a blocking thread); every receive has a timeout.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use super::netlink::{self, Reply};

/// How long one request may wait for its answer.
const RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// A generic netlink socket.
pub struct GenlSocket {
    fd: OwnedFd,
    seq: u32,
}

/// What the kernel said to one request.
#[derive(Debug)]
pub enum GenlError {
    /// The kernel answered with this errno.
    Errno(i32),
    Io(io::Error),
}

impl std::fmt::Display for GenlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GenlError::Errno(e) => write!(f, "{}", io::Error::from_raw_os_error(*e)),
            GenlError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl From<io::Error> for GenlError {
    fn from(e: io::Error) -> Self {
        GenlError::Io(e)
    }
}

impl GenlSocket {
    pub fn open() -> io::Result<GenlSocket> {
        // SAFETY: socket(2) with constant arguments; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_GENERIC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let tv = libc::timeval {
            tv_sec: RECV_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: fd is open; tv lives across the call and its size is given.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: an all-zero sockaddr_nl is valid (family set below; port
        // 0 lets the kernel choose).
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: fd is open; sa is a valid sockaddr_nl of the given size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(GenlSocket { fd, seq: 1 })
    }

    /// The next sequence number for a request.
    pub fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends one request (built with sequence number `seq`) and collects
    /// the generic netlink answers until its ack: `(cmd, attributes)`.
    pub fn request(&mut self, seq: u32, msg: &[u8]) -> Result<Vec<(u8, Vec<u8>)>, GenlError> {
        // SAFETY: fd is open; msg is a valid buffer of msg.len() bytes. The
        // socket is unconnected: the default destination is the kernel.
        let n = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error().into());
        }
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: fd is open; buf is writable for buf.len() bytes.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                if e.kind() == io::ErrorKind::WouldBlock {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the kernel did not answer the netlink request",
                    )
                    .into());
                }
                return Err(e.into());
            }
            let replies = netlink::parse_replies(&buf[..n as usize])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            for r in replies {
                if r.seq() != seq {
                    continue; // a stale answer
                }
                match r {
                    Reply::Ack { .. } | Reply::Done { .. } => return Ok(out),
                    Reply::Error { errno, .. } => return Err(GenlError::Errno(errno)),
                    Reply::Genl { cmd, attrs, .. } => out.push((cmd, attrs.to_vec())),
                    Reply::Other { .. } => {}
                }
            }
        }
    }

    /// Resolves a generic netlink family's id (`ENOENT`: not registered).
    pub fn family(&mut self, name: &str) -> Result<u16, GenlError> {
        let seq = self.next_seq();
        let answers = self.request(seq, &netlink::get_family(seq, name))?;
        for (_, attrs) in answers {
            if let Ok(id) = netlink::family_id(&attrs) {
                return Ok(id);
            }
        }
        Err(io::Error::new(io::ErrorKind::InvalidData, "no family id in the answer").into())
    }
}
