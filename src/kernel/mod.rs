//! The kernel's NBD client, driven the way `nbd-client`'s netlink mode
//! drives it: [`netlink`] is the pure codec, [`genl`] the socket, [`Nbd`]
//! the four commands with clear errors, [`state`] the record of what this
//! daemon attached (so a restarted daemon finds its devices), [`links`]
//! the stable names.
//!
//! Kernel requirements: the `nbd` module (netlink interface since Linux
//! 4.12; `NBD_ATTR_BACKEND_IDENTIFIER` since 5.19, left out when the kernel
//! refuses it) and CAP_SYS_ADMIN.

pub mod genl;
pub mod links;
pub mod netlink;
pub mod state;

use std::io;
use std::path::Path;

use genl::{GenlError, GenlSocket};
pub use netlink::{Connect, DeviceStatus};

/// What went wrong talking to the kernel's NBD driver.
#[derive(Debug, thiserror::Error)]
pub enum KernelNbdError {
    #[error("the nbd kernel module is not loaded (modprobe nbd)")]
    NotLoaded,
    #[error("/dev/nbd{0} is in use")]
    InUse(u32),
    #[error(
        "no free /dev/nbdN device (load the nbd module with a larger nbds_max, or name a device)"
    )]
    NoFreeDevice,
    #[error("attaching kernel NBD devices needs CAP_SYS_ADMIN, which the daemon does not have (run it as root; under systemd, CapabilityBoundingSet= must keep CAP_SYS_ADMIN)")]
    Permission,
    #[error("/dev/nbd{0} is not configured")]
    NotConfigured(u32),
    #[error("kernel nbd {what}: {err}")]
    Kernel { what: &'static str, err: String },
    #[error("netlink: {0}")]
    Io(#[from] io::Error),
}

/// A netlink connection to the kernel's `nbd` family.
pub struct Nbd {
    sock: GenlSocket,
    family: u16,
}

fn kernel(what: &'static str, e: GenlError) -> KernelNbdError {
    match e {
        GenlError::Errno(libc::EPERM) => KernelNbdError::Permission,
        GenlError::Io(e) => KernelNbdError::Io(e),
        e => KernelNbdError::Kernel {
            what,
            err: e.to_string(),
        },
    }
}

impl Nbd {
    /// Opens a netlink socket and resolves the `nbd` family.
    pub fn open() -> Result<Nbd, KernelNbdError> {
        let mut sock = GenlSocket::open()?;
        let family = match sock.family(netlink::NBD_GENL_FAMILY_NAME) {
            Ok(f) => f,
            Err(GenlError::Errno(libc::ENOENT)) => return Err(KernelNbdError::NotLoaded),
            Err(e) => return Err(kernel("family lookup", e)),
        };
        Ok(Nbd { sock, family })
    }

    /// `NBD_CMD_CONNECT`; the answer is the device index.
    pub fn connect(&mut self, c: &Connect) -> Result<u32, KernelNbdError> {
        let seq = self.sock.next_seq();
        let r = self
            .sock
            .request(seq, &netlink::connect(self.family, seq, c));
        let r = match r {
            // Kernels before 5.19 do not know the backend identifier.
            Err(GenlError::Errno(libc::EINVAL)) if c.backend.is_some() => {
                let c = Connect {
                    backend: None,
                    ..c.clone()
                };
                let seq = self.sock.next_seq();
                self.sock
                    .request(seq, &netlink::connect(self.family, seq, &c))
            }
            r => r,
        };
        match r {
            Ok(answers) => answers
                .iter()
                .find_map(|(_, a)| netlink::connect_index(a).ok())
                .or(c.index)
                .ok_or_else(|| KernelNbdError::Kernel {
                    what: "connect",
                    err: "no device index in the answer".into(),
                }),
            Err(GenlError::Errno(libc::EBUSY)) => match c.index {
                Some(i) => Err(KernelNbdError::InUse(i)),
                None => Err(KernelNbdError::NoFreeDevice),
            },
            Err(GenlError::Errno(libc::ENODEV)) if c.index.is_none() => {
                Err(KernelNbdError::NoFreeDevice)
            }
            Err(e) => Err(kernel("connect", e)),
        }
    }

    /// `NBD_CMD_RECONFIGURE`: the sockets replace dead connections.
    /// `backend` must be the identifier the device was connected with (it
    /// is left out when the kernel does not know the attribute). `ENOSPC`
    /// (no dead connection to replace) comes back as `Kernel`.
    pub fn reconfigure(
        &mut self,
        index: u32,
        fds: &[i32],
        dead_conn_timeout: Option<u64>,
        backend: Option<&str>,
    ) -> Result<(), KernelNbdError> {
        let seq = self.sock.next_seq();
        let msg = netlink::reconfigure(self.family, seq, index, fds, dead_conn_timeout, backend);
        let mut r = self.sock.request(seq, &msg);
        if matches!(r, Err(GenlError::Errno(libc::EINVAL))) && backend.is_some() {
            let seq = self.sock.next_seq();
            let msg = netlink::reconfigure(self.family, seq, index, fds, dead_conn_timeout, None);
            r = self.sock.request(seq, &msg);
        }
        match r {
            Ok(_) => Ok(()),
            Err(GenlError::Errno(libc::EINVAL)) => Err(KernelNbdError::NotConfigured(index)),
            Err(e) => Err(kernel("reconfigure", e)),
        }
    }

    /// `NBD_CMD_RECONFIGURE` with a new size: the device's capacity
    /// changes (the kernel tells its users with a uevent). `backend` as
    /// for [`Nbd::reconfigure`].
    pub fn resize(
        &mut self,
        index: u32,
        size: u64,
        backend: Option<&str>,
    ) -> Result<(), KernelNbdError> {
        let seq = self.sock.next_seq();
        let mut r = self.sock.request(
            seq,
            &netlink::resize(self.family, seq, index, size, backend),
        );
        if matches!(r, Err(GenlError::Errno(libc::EINVAL))) && backend.is_some() {
            let seq = self.sock.next_seq();
            r = self
                .sock
                .request(seq, &netlink::resize(self.family, seq, index, size, None));
        }
        match r {
            Ok(_) => Ok(()),
            Err(GenlError::Errno(libc::EINVAL)) => Err(KernelNbdError::NotConfigured(index)),
            Err(e) => Err(kernel("resize", e)),
        }
    }

    /// `NBD_CMD_DISCONNECT`.
    pub fn disconnect(&mut self, index: u32) -> Result<(), KernelNbdError> {
        let seq = self.sock.next_seq();
        match self
            .sock
            .request(seq, &netlink::disconnect(self.family, seq, index))
        {
            Ok(_) => Ok(()),
            Err(e) => Err(kernel("disconnect", e)),
        }
    }

    /// `NBD_CMD_STATUS` of one device (`None`: every device).
    pub fn status(&mut self, index: Option<u32>) -> Result<Vec<DeviceStatus>, KernelNbdError> {
        let seq = self.sock.next_seq();
        let answers = self
            .sock
            .request(seq, &netlink::status(self.family, seq, index))
            .map_err(|e| kernel("status", e))?;
        let mut out = Vec::new();
        for (_, a) in answers {
            out.extend(
                netlink::status_devices(&a)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?,
            );
        }
        Ok(out)
    }
}

/// The size in bytes of `/dev/nbdN` as sysfs tells it (`None`: no such
/// device).
pub fn sysfs_size(sys: &Path, index: u32) -> Option<u64> {
    let s = std::fs::read_to_string(sys.join(format!("block/nbd{index}/size"))).ok()?;
    s.trim().parse::<u64>().ok().map(|sectors| sectors * 512)
}

/// Parses `/dev/nbdN` or `nbdN` or `N`.
pub fn parse_device(s: &str) -> Option<u32> {
    let t = s.strip_prefix("/dev/").unwrap_or(s);
    let t = t.strip_prefix("nbd").unwrap_or(t);
    t.parse().ok()
}

/// The kernel's logical block size for an export: a power of two in
/// 512..=4096 (the kernel refuses others), at least the export's minimum.
pub fn block_size(minimum: u32) -> u64 {
    u64::from(minimum.clamp(512, 4096).next_power_of_two().min(4096))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names() {
        assert_eq!(parse_device("/dev/nbd3"), Some(3));
        assert_eq!(parse_device("nbd12"), Some(12));
        assert_eq!(parse_device("0"), Some(0));
        assert_eq!(parse_device("/dev/sda"), None);
        assert_eq!(parse_device("nbdx"), None);
    }

    #[test]
    fn block_sizes_the_kernel_accepts() {
        assert_eq!(block_size(1), 512);
        assert_eq!(block_size(512), 512);
        assert_eq!(block_size(4096), 4096);
        assert_eq!(block_size(1000), 1024);
        assert_eq!(block_size(65536), 4096);
    }

    #[test]
    fn errors_read_clearly() {
        assert_eq!(
            KernelNbdError::NotLoaded.to_string(),
            "the nbd kernel module is not loaded (modprobe nbd)"
        );
        assert_eq!(KernelNbdError::InUse(0).to_string(), "/dev/nbd0 is in use");
    }
}
