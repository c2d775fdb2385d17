//! Hotplug: kernel uevents read from a netlink socket (no udevd needed).
//! The parser is pure; the listener is a blocking thread feeding the
//! daemon, which adds, re-reads or removes SCSI paths in running maps.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;

/// A kernel uevent, reduced to what path handling needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uevent {
    pub action: String,
    pub subsystem: String,
    pub devtype: String,
    pub devname: String,
}

impl Uevent {
    /// A whole SCSI-style disk (`sdX`), not a partition.
    pub fn is_scsi_disk(&self) -> bool {
        self.subsystem == "block"
            && self.devtype == "disk"
            && self.devname.starts_with("sd")
            && !self.devname.contains('/')
    }
}

/// Parses a kernel uevent: `ACTION@DEVPATH\0KEY=VALUE\0...`. Messages
/// from udev's own netlink group (a `libudev` header) are not kernel
/// events and give `None`, as does anything malformed.
pub fn parse(buf: &[u8]) -> Option<Uevent> {
    let mut fields = buf.split(|&b| b == 0).filter(|f| !f.is_empty());
    let head = std::str::from_utf8(fields.next()?).ok()?;
    let (action, _devpath) = head.split_once('@')?;
    let mut ev = Uevent {
        action: action.to_string(),
        subsystem: String::new(),
        devtype: String::new(),
        devname: String::new(),
    };
    for f in fields {
        let Ok(kv) = std::str::from_utf8(f) else {
            continue;
        };
        match kv.split_once('=') {
            Some(("ACTION", v)) => ev.action = v.to_string(),
            Some(("SUBSYSTEM", v)) => ev.subsystem = v.to_string(),
            Some(("DEVTYPE", v)) => ev.devtype = v.to_string(),
            Some(("DEVNAME", v)) => ev.devname = v.trim_start_matches("/dev/").to_string(),
            _ => {}
        }
    }
    Some(ev)
}

/// Listens for kernel uevents until `stop`, sending SCSI disk events.
/// Blocking: run it on a thread of its own.
pub fn listen(tx: UnboundedSender<Uevent>, stop: Arc<AtomicBool>) -> io::Result<()> {
    use nix::sys::socket::{
        bind, recv, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag,
        SockProtocol, SockType,
    };
    use std::os::fd::AsRawFd;
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkKObjectUEvent,
    )
    .map_err(io::Error::from)?;
    // Group 1: the kernel's own events.
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 1)).map_err(io::Error::from)?;
    setsockopt(
        &fd,
        sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(1, 0),
    )
    .map_err(io::Error::from)?;
    let _ = setsockopt(&fd, sockopt::RcvBuf, &(1 << 20));
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        match recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(n) => {
                if let Some(ev) = buf.get(..n).and_then(parse) {
                    if ev.is_scsi_disk() && tx.send(ev).is_err() {
                        break;
                    }
                }
            }
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
            // Events were dropped (the buffer overflowed): keep going; the
            // checker still sees dead paths.
            Err(nix::errno::Errno::ENOBUFS) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_events() {
        let msg = b"add@/devices/pci0000:00/0000:00:04.0/virtio1/host1/target1:0:0/1:0:0:0/block/sdb\0ACTION=add\0DEVPATH=/devices/x/block/sdb\0SUBSYSTEM=block\0MAJOR=8\0MINOR=16\0DEVNAME=sdb\0DEVTYPE=disk\0SEQNUM=1234\0";
        let ev = parse(msg).unwrap();
        assert_eq!(
            ev,
            Uevent {
                action: "add".into(),
                subsystem: "block".into(),
                devtype: "disk".into(),
                devname: "sdb".into()
            }
        );
        assert!(ev.is_scsi_disk());
        let part = parse(b"remove@/x/sdb/sdb1\0ACTION=remove\0SUBSYSTEM=block\0DEVNAME=sdb1\0DEVTYPE=partition\0").unwrap();
        assert!(!part.is_scsi_disk());
        let other = parse(
            b"change@/x/loop0\0ACTION=change\0SUBSYSTEM=block\0DEVNAME=loop0\0DEVTYPE=disk\0",
        )
        .unwrap();
        assert!(!other.is_scsi_disk());
    }

    #[test]
    fn rejects_junk_and_udev_messages() {
        assert_eq!(parse(b""), None);
        assert_eq!(parse(b"libudev\0\xfe\xed\xca\xfe"), None);
        assert_eq!(parse(b"\xff\xfe@x"), None);
        assert_eq!(parse(b"noat\0SUBSYSTEM=block"), None);
    }
}
