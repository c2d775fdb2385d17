//! A pure codec for generic netlink and the kernel's `nbd` family
//! (`include/uapi/linux/nbd-netlink.h`): message building and parsing of
//! `nlmsghdr` / `genlmsghdr` / `nlattr`, `CTRL_CMD_GETFAMILY` to resolve
//! the family id, and the nbd commands CONNECT, RECONFIGURE, DISCONNECT and
//! STATUS. No IO: [`super::genl`] sends and receives the bytes.
//!
//! Layout (all integers in host byte order, as netlink wants):
//!
//! ```text
//! nlmsghdr   len u32 | type u16 | flags u16 | seq u32 | pid u32   (16 bytes)
//! genlmsghdr cmd u8  | version u8 | reserved u16                  (4 bytes)
//! nlattr     len u16 | type u16 | payload, padded to 4 bytes      (len excludes padding)
//! ```

// --- netlink (linux/netlink.h) ---
pub const NLMSG_HDRLEN: usize = 16;
pub const GENL_HDRLEN: usize = 4;
pub const NLA_HDRLEN: usize = 4;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLMSG_NOOP: u16 = 0x1;
pub const NLMSG_ERROR: u16 = 0x2;
pub const NLMSG_DONE: u16 = 0x3;
/// An attribute whose payload is more attributes.
pub const NLA_F_NESTED: u16 = 1 << 15;
pub const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | (1 << 14));

// --- generic netlink controller (linux/genetlink.h) ---
pub const GENL_ID_CTRL: u16 = 0x10;
pub const CTRL_CMD_GETFAMILY: u8 = 3;
pub const CTRL_ATTR_FAMILY_ID: u16 = 1;
pub const CTRL_ATTR_FAMILY_NAME: u16 = 2;

// --- nbd (linux/nbd-netlink.h) ---
pub const NBD_GENL_FAMILY_NAME: &str = "nbd";
pub const NBD_GENL_VERSION: u8 = 1;

pub const NBD_ATTR_INDEX: u16 = 1; // u32
pub const NBD_ATTR_SIZE_BYTES: u16 = 2; // u64
pub const NBD_ATTR_BLOCK_SIZE_BYTES: u16 = 3; // u64
pub const NBD_ATTR_TIMEOUT: u16 = 4; // u64, seconds
pub const NBD_ATTR_SERVER_FLAGS: u16 = 5; // u64, NBD transmission flags
pub const NBD_ATTR_CLIENT_FLAGS: u16 = 6; // u64, NBD_CFLAG_*
pub const NBD_ATTR_SOCKETS: u16 = 7; // nested NBD_SOCK_ITEMs
pub const NBD_ATTR_DEAD_CONN_TIMEOUT: u16 = 8; // u64, seconds
pub const NBD_ATTR_DEVICE_LIST: u16 = 9; // nested NBD_DEVICE_ITEMs
pub const NBD_ATTR_BACKEND_IDENTIFIER: u16 = 10; // string (Linux 5.19+)

pub const NBD_DEVICE_ITEM: u16 = 1;
pub const NBD_DEVICE_INDEX: u16 = 1; // u32
pub const NBD_DEVICE_CONNECTED: u16 = 2; // u8

pub const NBD_SOCK_ITEM: u16 = 1;
pub const NBD_SOCK_FD: u16 = 1; // u32

pub const NBD_CMD_CONNECT: u8 = 1;
pub const NBD_CMD_DISCONNECT: u8 = 2;
pub const NBD_CMD_RECONFIGURE: u8 = 3;
pub const NBD_CMD_LINK_DEAD: u8 = 4;
pub const NBD_CMD_STATUS: u8 = 5;

// --- linux/nbd.h client flags ---
/// Delete the device when it is disconnected (umpath does not set it:
/// /dev/nbdN stays for the next attach).
pub const NBD_CFLAG_DESTROY_ON_DISCONNECT: u64 = 1 << 0;
/// Disconnect when the last opener of the device closes it.
pub const NBD_CFLAG_DISCONNECT_ON_CLOSE: u64 = 1 << 1;

/// Builds one generic netlink request.
#[derive(Debug)]
pub struct MsgBuilder {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl MsgBuilder {
    /// A request to `family` (`GENL_ID_CTRL` or a resolved family id) with
    /// `NLM_F_REQUEST | NLM_F_ACK`.
    pub fn new(family: u16, seq: u32, cmd: u8, version: u8) -> MsgBuilder {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by finish
        buf.extend_from_slice(&family.to_ne_bytes());
        buf.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
        buf.extend_from_slice(&[cmd, version, 0, 0]);
        MsgBuilder {
            buf,
            nests: Vec::new(),
        }
    }

    fn pad(&mut self) {
        while self.buf.len() % 4 != 0 {
            self.buf.push(0);
        }
    }

    /// Appends an attribute with a raw payload.
    pub fn attr(&mut self, ty: u16, payload: &[u8]) -> &mut Self {
        let len = (NLA_HDRLEN + payload.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.pad();
        self
    }

    pub fn u8(&mut self, ty: u16, v: u8) -> &mut Self {
        self.attr(ty, &[v])
    }

    pub fn u32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.attr(ty, &v.to_ne_bytes())
    }

    pub fn u64(&mut self, ty: u16, v: u64) -> &mut Self {
        self.attr(ty, &v.to_ne_bytes())
    }

    /// A NUL-terminated string attribute.
    pub fn str(&mut self, ty: u16, v: &str) -> &mut Self {
        let mut p = Vec::with_capacity(v.len() + 1);
        p.extend_from_slice(v.as_bytes());
        p.push(0);
        self.attr(ty, &p)
    }

    /// Opens a nested attribute; close it with [`MsgBuilder::nest_end`].
    pub fn nest_start(&mut self, ty: u16) -> &mut Self {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        self
    }

    pub fn nest_end(&mut self) -> &mut Self {
        if let Some(start) = self.nests.pop() {
            let len = (self.buf.len() - start) as u16;
            self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        }
        self
    }

    /// The finished message (open nests are closed).
    pub fn finish(mut self) -> Vec<u8> {
        while !self.nests.is_empty() {
            self.nest_end();
        }
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

/// `CTRL_CMD_GETFAMILY` for `name`.
pub fn get_family(seq: u32, name: &str) -> Vec<u8> {
    let mut b = MsgBuilder::new(GENL_ID_CTRL, seq, CTRL_CMD_GETFAMILY, 1);
    b.str(CTRL_ATTR_FAMILY_NAME, name);
    b.finish()
}

/// What `NBD_CMD_CONNECT` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// `None`: the first free device (the kernel makes one if none is).
    pub index: Option<u32>,
    pub size_bytes: u64,
    /// Logical block size: a power of two, 512..=page size.
    pub block_size: u64,
    /// NBD transmission flags (`NBD_FLAG_*`: HAS_FLAGS, READ_ONLY,
    /// SEND_FLUSH, SEND_FUA, SEND_TRIM, SEND_WRITE_ZEROES, CAN_MULTI_CONN).
    pub server_flags: u64,
    pub client_flags: u64,
    /// Request timeout in seconds (`None`: the kernel's default).
    pub timeout: Option<u64>,
    /// How long IO waits for a reconfigure when every connection is dead.
    pub dead_conn_timeout: Option<u64>,
    /// Connected sockets, one per kernel connection.
    pub fds: Vec<i32>,
    /// Shown in /sys/block/nbdN/backend (Linux 5.19+).
    pub backend: Option<String>,
}

fn sockets(b: &mut MsgBuilder, fds: &[i32]) {
    b.nest_start(NBD_ATTR_SOCKETS);
    for fd in fds {
        b.nest_start(NBD_SOCK_ITEM);
        b.u32(NBD_SOCK_FD, *fd as u32);
        b.nest_end();
    }
    b.nest_end();
}

/// `NBD_CMD_CONNECT`.
pub fn connect(family: u16, seq: u32, c: &Connect) -> Vec<u8> {
    let mut b = MsgBuilder::new(family, seq, NBD_CMD_CONNECT, NBD_GENL_VERSION);
    if let Some(i) = c.index {
        b.u32(NBD_ATTR_INDEX, i);
    }
    b.u64(NBD_ATTR_SIZE_BYTES, c.size_bytes);
    b.u64(NBD_ATTR_BLOCK_SIZE_BYTES, c.block_size);
    b.u64(NBD_ATTR_SERVER_FLAGS, c.server_flags);
    b.u64(NBD_ATTR_CLIENT_FLAGS, c.client_flags);
    if let Some(t) = c.timeout {
        b.u64(NBD_ATTR_TIMEOUT, t);
    }
    if let Some(t) = c.dead_conn_timeout {
        b.u64(NBD_ATTR_DEAD_CONN_TIMEOUT, t);
    }
    if let Some(id) = &c.backend {
        b.str(NBD_ATTR_BACKEND_IDENTIFIER, id);
    }
    sockets(&mut b, &c.fds);
    b.finish()
}

/// `NBD_CMD_RECONFIGURE`: each socket replaces one dead connection of a
/// live device.
pub fn reconfigure(
    family: u16,
    seq: u32,
    index: u32,
    fds: &[i32],
    dead_conn_timeout: Option<u64>,
    backend: Option<&str>,
) -> Vec<u8> {
    let mut b = MsgBuilder::new(family, seq, NBD_CMD_RECONFIGURE, NBD_GENL_VERSION);
    b.u32(NBD_ATTR_INDEX, index);
    if let Some(t) = dead_conn_timeout {
        b.u64(NBD_ATTR_DEAD_CONN_TIMEOUT, t);
    }
    // A device connected with a backend identifier is only reconfigured
    // by a request naming the same one (Linux 5.19+).
    if let Some(id) = backend {
        b.str(NBD_ATTR_BACKEND_IDENTIFIER, id);
    }
    sockets(&mut b, fds);
    b.finish()
}

/// `NBD_CMD_RECONFIGURE` with only a new size (`NBD_ATTR_SIZE_BYTES`):
/// the kernel sets the device's capacity (Linux 5.13+; older kernels
/// ignore the attribute).
pub fn resize(family: u16, seq: u32, index: u32, size: u64, backend: Option<&str>) -> Vec<u8> {
    let mut b = MsgBuilder::new(family, seq, NBD_CMD_RECONFIGURE, NBD_GENL_VERSION);
    b.u32(NBD_ATTR_INDEX, index);
    if let Some(id) = backend {
        b.str(NBD_ATTR_BACKEND_IDENTIFIER, id);
    }
    b.u64(NBD_ATTR_SIZE_BYTES, size);
    b.finish()
}

/// `NBD_CMD_DISCONNECT`.
pub fn disconnect(family: u16, seq: u32, index: u32) -> Vec<u8> {
    let mut b = MsgBuilder::new(family, seq, NBD_CMD_DISCONNECT, NBD_GENL_VERSION);
    b.u32(NBD_ATTR_INDEX, index);
    b.finish()
}

/// `NBD_CMD_STATUS` for one device, or all (`None`).
pub fn status(family: u16, seq: u32, index: Option<u32>) -> Vec<u8> {
    let mut b = MsgBuilder::new(family, seq, NBD_CMD_STATUS, NBD_GENL_VERSION);
    if let Some(i) = index {
        b.u32(NBD_ATTR_INDEX, i);
    }
    b.finish()
}

/// A malformed netlink message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed netlink message: {0}")]
pub struct Malformed(pub &'static str);

/// One message of a netlink datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply<'a> {
    /// `NLMSG_ERROR` with error 0.
    Ack {
        seq: u32,
    },
    /// `NLMSG_ERROR` with a negative errno; `errno` is positive here.
    Error {
        seq: u32,
        errno: i32,
    },
    Done {
        seq: u32,
    },
    /// A generic netlink message: its command and attributes.
    Genl {
        seq: u32,
        cmd: u8,
        attrs: &'a [u8],
    },
    /// Anything else (NOOP, other types).
    Other {
        seq: u32,
    },
}

impl Reply<'_> {
    pub fn seq(&self) -> u32 {
        match self {
            Reply::Ack { seq }
            | Reply::Error { seq, .. }
            | Reply::Done { seq }
            | Reply::Genl { seq, .. }
            | Reply::Other { seq } => *seq,
        }
    }
}

fn ne_u16(b: &[u8]) -> u16 {
    u16::from_ne_bytes([b[0], b[1]])
}

fn ne_u32(b: &[u8]) -> u32 {
    u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Splits a received datagram into its messages.
pub fn parse_replies(mut buf: &[u8]) -> Result<Vec<Reply<'_>>, Malformed> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        if buf.len() < NLMSG_HDRLEN {
            return Err(Malformed("short nlmsghdr"));
        }
        let len = ne_u32(&buf[0..4]) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return Err(Malformed("bad nlmsg length"));
        }
        let ty = ne_u16(&buf[4..6]);
        let seq = ne_u32(&buf[8..12]);
        let payload = &buf[NLMSG_HDRLEN..len];
        let r = match ty {
            NLMSG_ERROR => {
                if payload.len() < 4 {
                    return Err(Malformed("short nlmsgerr"));
                }
                let e = ne_u32(&payload[0..4]) as i32;
                if e == 0 {
                    Reply::Ack { seq }
                } else {
                    Reply::Error {
                        seq,
                        errno: e.saturating_neg(),
                    }
                }
            }
            NLMSG_DONE => Reply::Done { seq },
            NLMSG_NOOP => Reply::Other { seq },
            t if t >= GENL_ID_CTRL => {
                if payload.len() < GENL_HDRLEN {
                    return Err(Malformed("short genlmsghdr"));
                }
                Reply::Genl {
                    seq,
                    cmd: payload[0],
                    attrs: &payload[GENL_HDRLEN..],
                }
            }
            _ => Reply::Other { seq },
        };
        out.push(r);
        buf = &buf[align4(len).min(buf.len())..];
    }
    Ok(out)
}

/// Iterates the attributes of a buffer: `(type without flags, payload)`.
pub fn attrs(buf: &[u8]) -> Attrs<'_> {
    Attrs { buf }
}

pub struct Attrs<'a> {
    buf: &'a [u8],
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<(u16, &'a [u8]), Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            return None;
        }
        if self.buf.len() < NLA_HDRLEN {
            self.buf = &[];
            return Some(Err(Malformed("short nlattr")));
        }
        let len = ne_u16(&self.buf[0..2]) as usize;
        let ty = ne_u16(&self.buf[2..4]) & NLA_TYPE_MASK;
        if len < NLA_HDRLEN || len > self.buf.len() {
            self.buf = &[];
            return Some(Err(Malformed("bad nlattr length")));
        }
        let payload = &self.buf[NLA_HDRLEN..len];
        self.buf = &self.buf[align4(len).min(self.buf.len())..];
        Some(Ok((ty, payload)))
    }
}

fn find(buf: &[u8], want: u16) -> Result<Option<&[u8]>, Malformed> {
    for a in attrs(buf) {
        let (ty, p) = a?;
        if ty == want {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

fn as_u32(p: &[u8]) -> Result<u32, Malformed> {
    if p.len() < 4 {
        return Err(Malformed("short u32 attribute"));
    }
    Ok(ne_u32(p))
}

/// The family id in a `CTRL_CMD_NEWFAMILY` answer.
pub fn family_id(attrs_buf: &[u8]) -> Result<u16, Malformed> {
    let p = find(attrs_buf, CTRL_ATTR_FAMILY_ID)?.ok_or(Malformed("no CTRL_ATTR_FAMILY_ID"))?;
    if p.len() < 2 {
        return Err(Malformed("short family id"));
    }
    Ok(ne_u16(p))
}

/// The device index in the kernel's answer to `NBD_CMD_CONNECT`.
pub fn connect_index(attrs_buf: &[u8]) -> Result<u32, Malformed> {
    as_u32(find(attrs_buf, NBD_ATTR_INDEX)?.ok_or(Malformed("no NBD_ATTR_INDEX"))?)
}

/// One device in an `NBD_CMD_STATUS` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceStatus {
    pub index: u32,
    /// The device has a configuration (connected, or waiting for a
    /// reconfigure within its dead-connection timeout).
    pub connected: bool,
}

/// The devices in an `NBD_CMD_STATUS` answer.
pub fn status_devices(attrs_buf: &[u8]) -> Result<Vec<DeviceStatus>, Malformed> {
    let mut out = Vec::new();
    let Some(list) = find(attrs_buf, NBD_ATTR_DEVICE_LIST)? else {
        return Ok(out);
    };
    for item in attrs(list) {
        let (ty, p) = item?;
        if ty != NBD_DEVICE_ITEM {
            continue;
        }
        let index = as_u32(find(p, NBD_DEVICE_INDEX)?.ok_or(Malformed("no NBD_DEVICE_INDEX"))?)?;
        let connected = find(p, NBD_DEVICE_CONNECTED)?
            .and_then(|c| c.first().copied())
            .unwrap_or(0)
            != 0;
        out.push(DeviceStatus { index, connected });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(msg: &[u8]) -> (u32, u16, u16, u32, u8, u8) {
        (
            ne_u32(&msg[0..4]),
            ne_u16(&msg[4..6]),
            ne_u16(&msg[6..8]),
            ne_u32(&msg[8..12]),
            msg[16],
            msg[17],
        )
    }

    #[test]
    fn getfamily_layout() {
        let m = get_family(7, "nbd");
        // 16 nlmsghdr + 4 genlmsghdr + 4 nlattr hdr + "nbd\0"
        assert_eq!(m.len(), 28);
        assert_eq!(hdr(&m), (28, GENL_ID_CTRL, 0x5, 7, CTRL_CMD_GETFAMILY, 1));
        assert_eq!(&m[12..16], &[0, 0, 0, 0]);
        assert_eq!(&m[18..20], &[0, 0]);
        assert_eq!(ne_u16(&m[20..22]), 8);
        assert_eq!(ne_u16(&m[22..24]), CTRL_ATTR_FAMILY_NAME);
        assert_eq!(&m[24..28], b"nbd\0");
    }

    #[test]
    fn string_attr_is_padded() {
        let m = get_family(1, "nbd_x");
        // "nbd_x\0" is 6 bytes: nla_len 10, padded to 12.
        assert_eq!(m.len(), 20 + 12);
        assert_eq!(ne_u16(&m[20..22]), 10);
        assert_eq!(&m[24..32], b"nbd_x\0\0\0");
    }

    #[test]
    fn connect_layout() {
        let c = Connect {
            index: Some(3),
            size_bytes: 1 << 30,
            block_size: 512,
            server_flags: 0x10d,
            client_flags: 0,
            timeout: Some(30),
            dead_conn_timeout: Some(60),
            fds: vec![5, 6],
            backend: None,
        };
        let m = connect(0x22, 9, &c);
        assert_eq!(hdr(&m), (m.len() as u32, 0x22, 0x5, 9, NBD_CMD_CONNECT, 1));
        let got: Vec<(u16, Vec<u8>)> = attrs(&m[20..])
            .map(|a| a.map(|(t, p)| (t, p.to_vec())).unwrap())
            .collect();
        let types: Vec<u16> = got.iter().map(|(t, _)| *t).collect();
        assert_eq!(
            types,
            vec![
                NBD_ATTR_INDEX,
                NBD_ATTR_SIZE_BYTES,
                NBD_ATTR_BLOCK_SIZE_BYTES,
                NBD_ATTR_SERVER_FLAGS,
                NBD_ATTR_CLIENT_FLAGS,
                NBD_ATTR_TIMEOUT,
                NBD_ATTR_DEAD_CONN_TIMEOUT,
                NBD_ATTR_SOCKETS
            ]
        );
        assert_eq!(got[0].1, 3u32.to_ne_bytes());
        assert_eq!(got[1].1, (1u64 << 30).to_ne_bytes());
        assert_eq!(got[3].1, 0x10du64.to_ne_bytes());
        // The index attribute is 8 bytes on the wire, a u64 one 12.
        assert_eq!(ne_u16(&m[20..22]), 8);
        assert_eq!(ne_u16(&m[28..30]), 12);
        // SOCKETS: nested flag on the wire, two items of one fd each.
        let sock_off = m.len() - (4 + 2 * (4 + 8));
        assert_eq!(
            ne_u16(&m[sock_off + 2..sock_off + 4]),
            NBD_ATTR_SOCKETS | NLA_F_NESTED
        );
        assert_eq!(ne_u16(&m[sock_off..sock_off + 2]), 28);
        let items: Vec<_> = attrs(&got[7].1).map(|a| a.unwrap()).collect();
        assert_eq!(items.len(), 2);
        for (i, (ty, p)) in items.iter().enumerate() {
            assert_eq!(*ty, NBD_SOCK_ITEM);
            let fd: Vec<_> = attrs(p).map(|a| a.unwrap()).collect();
            assert_eq!(fd, vec![(NBD_SOCK_FD, &(5 + i as u32).to_ne_bytes()[..])]);
        }
    }

    #[test]
    fn connect_any_device_has_no_index() {
        let c = Connect {
            index: None,
            size_bytes: 4096,
            block_size: 4096,
            server_flags: 1,
            client_flags: 0,
            timeout: None,
            dead_conn_timeout: None,
            fds: vec![4],
            backend: Some("umpath/lun0".into()),
        };
        let m = connect(0x22, 1, &c);
        let types: Vec<u16> = attrs(&m[20..]).map(|a| a.unwrap().0).collect();
        assert_eq!(
            types,
            vec![
                NBD_ATTR_SIZE_BYTES,
                NBD_ATTR_BLOCK_SIZE_BYTES,
                NBD_ATTR_SERVER_FLAGS,
                NBD_ATTR_CLIENT_FLAGS,
                NBD_ATTR_BACKEND_IDENTIFIER,
                NBD_ATTR_SOCKETS
            ]
        );
    }

    #[test]
    fn reconfigure_disconnect_status_layout() {
        let m = reconfigure(0x22, 2, 0, &[7], Some(60), Some("umpath/lun0"));
        assert_eq!(m[16], NBD_CMD_RECONFIGURE);
        let types: Vec<u16> = attrs(&m[20..]).map(|a| a.unwrap().0).collect();
        assert_eq!(
            types,
            vec![
                NBD_ATTR_INDEX,
                NBD_ATTR_DEAD_CONN_TIMEOUT,
                NBD_ATTR_BACKEND_IDENTIFIER,
                NBD_ATTR_SOCKETS
            ]
        );
        let m = reconfigure(0x22, 2, 0, &[7], None, None);
        let types: Vec<u16> = attrs(&m[20..]).map(|a| a.unwrap().0).collect();
        assert_eq!(types, vec![NBD_ATTR_INDEX, NBD_ATTR_SOCKETS]);
        let m = resize(0x22, 5, 3, 1 << 30, Some("umpath/lun0"));
        assert_eq!(m[16], NBD_CMD_RECONFIGURE);
        let a: Vec<(u16, Vec<u8>)> = attrs(&m[20..])
            .map(|a| a.unwrap())
            .map(|(t, p)| (t, p.to_vec()))
            .collect();
        assert_eq!(
            a.iter().map(|x| x.0).collect::<Vec<_>>(),
            vec![
                NBD_ATTR_INDEX,
                NBD_ATTR_BACKEND_IDENTIFIER,
                NBD_ATTR_SIZE_BYTES
            ]
        );
        assert_eq!(a[2].1, (1u64 << 30).to_ne_bytes().to_vec());
        let m = disconnect(0x22, 3, 4);
        assert_eq!(m.len(), 28);
        assert_eq!(m[16], NBD_CMD_DISCONNECT);
        assert_eq!(&m[24..28], &4u32.to_ne_bytes());
        let m = status(0x22, 4, None);
        assert_eq!(m.len(), 20);
        assert_eq!(m[16], NBD_CMD_STATUS);
    }

    fn nlmsg(ty: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((NLMSG_HDRLEN + payload.len()) as u32).to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(&0u16.to_ne_bytes());
        v.extend_from_slice(&seq.to_ne_bytes());
        v.extend_from_slice(&1234u32.to_ne_bytes());
        v.extend_from_slice(payload);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    #[test]
    fn parses_ack_error_and_genl() {
        let mut dgram = Vec::new();
        // A genl answer: cmd 1 (NEWFAMILY), FAMILY_ID u16 = 0x1f (padded).
        let mut g = vec![1u8, 2, 0, 0];
        g.extend_from_slice(&6u16.to_ne_bytes());
        g.extend_from_slice(&CTRL_ATTR_FAMILY_ID.to_ne_bytes());
        g.extend_from_slice(&0x1fu16.to_ne_bytes());
        g.extend_from_slice(&[0, 0]);
        dgram.extend(nlmsg(GENL_ID_CTRL, 5, &g));
        // An ack: error 0 followed by the original header.
        let mut ack = 0i32.to_ne_bytes().to_vec();
        ack.extend_from_slice(&[0u8; 16]);
        dgram.extend(nlmsg(NLMSG_ERROR, 5, &ack));
        let r = parse_replies(&dgram).unwrap();
        assert_eq!(r.len(), 2);
        match r[0] {
            Reply::Genl { seq, cmd, attrs } => {
                assert_eq!((seq, cmd), (5, 1));
                assert_eq!(family_id(attrs).unwrap(), 0x1f);
            }
            ref other => panic!("{other:?}"),
        }
        assert_eq!(r[1], Reply::Ack { seq: 5 });

        let mut e = (-16i32).to_ne_bytes().to_vec();
        e.extend_from_slice(&[0u8; 16]);
        let m = nlmsg(NLMSG_ERROR, 6, &e);
        let r = parse_replies(&m).unwrap();
        assert_eq!(r, vec![Reply::Error { seq: 6, errno: 16 }]);
    }

    #[test]
    fn parses_status_device_list() {
        // DEVICE_LIST { ITEM { INDEX 0, CONNECTED 1 }, ITEM { INDEX 1, CONNECTED 0 } }
        let mut b = MsgBuilder::new(0x22, 1, NBD_CMD_STATUS, 1);
        b.nest_start(NBD_ATTR_DEVICE_LIST);
        for (i, c) in [(0u32, 1u8), (1, 0)] {
            b.nest_start(NBD_DEVICE_ITEM);
            b.u32(NBD_DEVICE_INDEX, i);
            b.u8(NBD_DEVICE_CONNECTED, c);
            b.nest_end();
        }
        let m = b.finish();
        let r = parse_replies(&m).unwrap();
        let Reply::Genl { attrs, .. } = r[0] else {
            panic!("{r:?}")
        };
        assert_eq!(
            status_devices(attrs).unwrap(),
            vec![
                DeviceStatus {
                    index: 0,
                    connected: true
                },
                DeviceStatus {
                    index: 1,
                    connected: false
                }
            ]
        );
        let mut c = MsgBuilder::new(0x22, 1, NBD_CMD_CONNECT, 1);
        c.u32(NBD_ATTR_INDEX, 2);
        let m = c.finish();
        let Reply::Genl { attrs, .. } = parse_replies(&m).unwrap()[0] else {
            panic!()
        };
        assert_eq!(connect_index(attrs).unwrap(), 2);
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        assert!(parse_replies(&[1, 2, 3]).is_err());
        let mut m = get_family(1, "nbd");
        m[0] = 200; // length beyond the buffer
        assert!(parse_replies(&m).is_err());
        let bad = [9u8, 0, 1, 0, 1, 2];
        assert!(attrs(&bad).any(|a| a.is_err()));
        assert!(connect_index(&[]).is_err());
        // Truncated inputs of every length never panic.
        let full = connect(
            0x22,
            1,
            &Connect {
                index: Some(1),
                size_bytes: 1,
                block_size: 512,
                server_flags: 1,
                client_flags: 0,
                timeout: None,
                dead_conn_timeout: None,
                fds: vec![3],
                backend: None,
            },
        );
        for n in 0..full.len() {
            let _ = parse_replies(&full[..n]);
            let _ = attrs(&full[20.min(n)..n]).count();
        }
    }
}
