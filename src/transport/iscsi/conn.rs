//! One iSCSI connection (one session, error recovery level 0): connect
//! and log in on the calling thread, then two tasks on the runtime run
//! the full feature phase: a reader that decodes the target's PDUs and
//! feeds them to the pure [`Session`], and a writer that sends what the
//! session and the callers queue. Callers are blocking (a path's IO
//! threads, its checker); each waits for its own command on a channel,
//! so a connection costs no thread of its own.
//!
//! The one lock ([`Shared::state`]) is held only while the session
//! computes; never across a syscall or an await.
//!
//! A connection that breaks in any way (the socket, a PDU that does not
//! decode, a target that breaks the protocol, a command past its timeout
//! whose abort is not answered) is closed for good: every command on it
//! fails with the reason, and the transport makes a new one.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::ops::Range;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::config::Portal;
use crate::iscsi::chap::ChapAlgorithm;
use crate::iscsi::digest::{self, Digests, DIGEST_LEN};
use crate::iscsi::login::{
    ChapCredentials, Login, LoginConfig, LoginError, Negotiated, OperationalParams, Step,
    LOGIN_RANDOM_LEN,
};
use crate::iscsi::pdu::{self, Pdu, PduError, BHS_LEN};
use crate::iscsi::session::{self, Command, Event, Send, Session, Status};
use crate::iscsi::text::{self, TargetRecord, TextAccumulator};

/// Login PDUs are small; a target may not send more in one.
const LOGIN_MAX_SEGMENT: u32 = 65_536;
/// Redirections followed in one login.
const MAX_REDIRECTS: u32 = 4;
/// How long an ABORT TASK may take before the connection is dropped.
pub const ABORT_WAIT: Duration = Duration::from_secs(5);
/// How often a connection is pinged (NOP-Out) ...
pub const PING_INTERVAL: Duration = Duration::from_secs(5);
/// ... and how long the target may take to answer before the connection
/// counts as dead (open-iscsi's noop_out_interval and a lenient
/// noop_out_timeout).
pub const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how to log in.
#[derive(Debug, Clone)]
pub struct LoginTarget {
    pub portal: Portal,
    /// `None`: a discovery session.
    pub target: Option<String>,
    pub initiator_name: String,
    pub chap: Option<ChapCredentials>,
    pub params: OperationalParams,
    /// NOP-Out pings: how often, and how long an answer may take
    /// ([`PING_INTERVAL`], [`PING_TIMEOUT`]).
    pub ping: (Duration, Duration),
    /// How long an ABORT TASK, then a LOGICAL UNIT RESET, may take
    /// ([`ABORT_WAIT`]).
    pub abort_wait: Duration,
}

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("iSCSI portal {portal}: cannot resolve: {source}")]
    Resolve { portal: String, source: io::Error },
    #[error("iSCSI portal {portal} is unreachable: {source}")]
    Unreachable { portal: String, source: io::Error },
    #[error("iSCSI login at {portal}: {source}")]
    Io { portal: String, source: io::Error },
    #[error("iSCSI login at {portal}: {source}")]
    Pdu { portal: String, source: PduError },
    #[error("{}", login_message(.portal, .source))]
    Login { portal: String, source: LoginError },
    #[error("iSCSI login at {portal}: more than {MAX_REDIRECTS} redirections")]
    Redirects { portal: String },
    #[error("iSCSI login at {portal}: no tokio runtime to run the connection on")]
    NoRuntime { portal: String },
}

fn login_message(portal: &str, e: &LoginError) -> String {
    match e {
        LoginError::AuthFailed => format!("CHAP authentication failed at {portal}"),
        other => format!("iSCSI login at {portal}: {other}"),
    }
}

impl ConnectError {
    /// True when trying again later may work (the portal is down or busy),
    /// false when the configuration must change (wrong secret, unknown
    /// target).
    pub fn transient(&self) -> bool {
        match self {
            ConnectError::Login { source, .. } => !matches!(
                source,
                LoginError::AuthFailed
                    | LoginError::NotAuthorized
                    | LoginError::ChapRequired
                    | LoginError::MutualChapRefused
                    | LoginError::MutualChapFailed(_)
                    | LoginError::TargetNotFound
                    | LoginError::TargetRemoved
                    | LoginError::Config(_)
            ),
            ConnectError::Resolve { .. } => false,
            _ => true,
        }
    }
}

/// How a command failed on the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmdError {
    /// The connection is gone (or broke while the command ran).
    #[error("iSCSI connection lost: {0}")]
    Closed(String),
    /// No status within the timeout; `aborted`: the target confirmed the
    /// command ended (ABORT TASK), so it will not run later.
    #[error("no answer within {timeout:?}{}", if *aborted { " (the command was aborted)" } else { " (the connection was dropped)" })]
    TimedOut { timeout: Duration, aborted: bool },
    /// The target rejected the command (Reject PDU).
    #[error("the target rejected the command (reason {0:#x})")]
    Rejected(u8),
    /// The command window stayed closed.
    #[error("the target's command window stayed closed for {0:?}")]
    WindowClosed(Duration),
}

/// What a finished command gives back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    pub status: Status,
    /// Read data (the received part of the expected length).
    pub data: Vec<u8>,
}

/// One thing for the writer to send: a header and the payload after it.
struct Out {
    header: [u8; BHS_LEN],
    payload: Payload,
}

enum Payload {
    None,
    Owned(Vec<u8>),
    Shared(Arc<Vec<u8>>, Range<u32>),
}

impl Payload {
    fn bytes(&self) -> &[u8] {
        match self {
            Payload::None => &[],
            Payload::Owned(v) => v,
            Payload::Shared(v, r) => v.get(r.start as usize..r.end as usize).unwrap_or(&[]),
        }
    }
}

/// What a waiting caller gets.
enum Reply {
    Done(Status),
    Rejected(u8),
    Aborted(u8),
    Text {
        ttt: u32,
        final_flag: bool,
        continue_flag: bool,
        data: Vec<u8>,
    },
    Closed(String),
}

/// What runs when a command started with [`Conn::submit`] ends: on the
/// connection's reader task (or the task that closes the connection),
/// never under the connection's lock. It must not block.
pub trait Completion: std::marker::Send + 'static {
    fn done(self: Box<Self>, r: Result<Done, CmdError>);
}

/// Where a command's end goes.
enum ReplyTo {
    /// A caller blocked in [`Conn::command`] (or a ping, a text request).
    Caller(std_mpsc::Sender<Reply>),
    /// A [`Completion`]: past `deadline` the command is aborted (ABORT
    /// TASK); an abort refused or unanswered within the abort wait
    /// escalates to a LOGICAL UNIT RESET, and a reset refused or
    /// unanswered closes the connection.
    Callback {
        c: Box<dyn Completion>,
        deadline: Instant,
        timeout: Duration,
        recovery: Recovery,
    },
}

/// Where a command past its timeout is in being ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recovery {
    /// Within its timeout.
    None,
    /// ABORT TASK sent at this instant.
    Aborting(Instant),
    /// LOGICAL UNIT RESET sent at this instant.
    Resetting(Instant),
}

struct Waiter {
    /// The command's LUN (SAM form; 0 for pings and text).
    lun: u64,
    /// Read data lands here.
    read: Vec<u8>,
    /// Write data comes from here.
    write: Option<Arc<Vec<u8>>>,
    to: ReplyTo,
}

impl Waiter {
    fn caller(tx: std_mpsc::Sender<Reply>) -> Waiter {
        Waiter {
            lun: 0,
            read: Vec::new(),
            write: None,
            to: ReplyTo::Caller(tx),
        }
    }

    /// Tells a blocked caller (callbacks are told by [`finish`]).
    fn tell(&self, r: Reply) {
        if let ReplyTo::Caller(tx) = &self.to {
            let _ = tx.send(r);
        }
    }
}

/// Records the waiter of command `cmd`, which the session just took as
/// `itt` with the PDUs `sends` (under the lock): the PDUs to write.
fn place(
    st: &mut State,
    (itt, sends): (u32, Vec<Send>),
    cmd: Command,
    write: Option<Arc<Vec<u8>>>,
    to: ReplyTo,
) -> Vec<Out> {
    let read = if cmd.dir == session::Direction::Read {
        vec![0u8; cmd.len as usize]
    } else {
        Vec::new()
    };
    let outs = outs(sends, write.as_ref());
    st.waiters.insert(
        itt,
        Waiter {
            lun: cmd.lun,
            read,
            write,
            to,
        },
    );
    outs
}

/// Callbacks to run once the lock is released.
type Finished = Vec<(Box<dyn Completion>, Result<Done, CmdError>)>;

fn finish(finished: Finished) {
    for (c, r) in finished {
        c.done(r);
    }
}

struct State {
    session: Session,
    waiters: HashMap<u32, Waiter>,
    /// Why the connection is closed, once it is.
    closed: Option<String>,
}

struct Shared {
    state: Mutex<State>,
    /// How long an ABORT TASK, then a LOGICAL UNIT RESET, may take.
    abort_wait: Duration,
    digests: Digests,
    /// The largest data segment the target may send us.
    max_recv: u32,
    peer: String,
}

/// A logged-in connection. Dropping it closes it.
pub struct Conn {
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Vec<Out>>,
    negotiated: Negotiated,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("peer", &self.shared.peer)
            .field("closed", &self.shared.state.lock().closed)
            .finish_non_exhaustive()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.close("connection dropped");
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_err()
    {
        // No /dev/urandom: the time is a poor but working ISID/challenge
        // seed (a challenge only has to be unpredictable to a replay).
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
            .to_le_bytes();
        for (i, x) in b.iter_mut().enumerate() {
            *x = t[i % t.len()] ^ (i as u8);
        }
    }
    b
}

/// Reads one PDU from a blocking stream (the login).
fn read_pdu_blocking(s: &mut TcpStream, max: u32) -> Result<Pdu, LoginIoError> {
    let mut bhs = [0u8; BHS_LEN];
    s.read_exact(&mut bhs).map_err(LoginIoError::Io)?;
    let len = pdu::frame_len(&bhs, Digests::default(), max).map_err(LoginIoError::Pdu)?;
    let mut buf = vec![0u8; len];
    buf[..BHS_LEN].copy_from_slice(&bhs);
    s.read_exact(&mut buf[BHS_LEN..])
        .map_err(LoginIoError::Io)?;
    Pdu::decode(&buf, Digests::default()).map_err(LoginIoError::Pdu)
}

enum LoginIoError {
    Io(io::Error),
    Pdu(PduError),
}

fn tcp_connect(portal: &Portal, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let name = portal.to_string();
    let addrs: Vec<SocketAddr> = (portal.host.as_str(), portal.port)
        .to_socket_addrs()
        .map_err(|source| ConnectError::Resolve {
            portal: name.clone(),
            source,
        })?
        .collect();
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(ConnectError::Unreachable {
        portal: name,
        source: last,
    })
}

/// Logs in at `t.portal` (following redirections) within `timeout` per
/// step; the logged-in socket and what was negotiated.
fn login(t: &LoginTarget, timeout: Duration) -> Result<(TcpStream, Negotiated), ConnectError> {
    let mut algs = ChapAlgorithm::PREFERENCE.to_vec();
    loop {
        match login_with(t, timeout, &algs) {
            // A target that chose a strong CHAP algorithm and then refused
            // the answer may not compute it right (tgtd 1.0.85 offers
            // SHA-256 and checks with a 20-byte buffer): the weaker ones
            // are tried before the refusal stands. Offering them at first
            // would let the target choose them anyway, so nothing is lost.
            Err((e, Some(alg))) if refused(&e) && !alg.weaker().is_empty() => {
                warn!(portal = %t.portal, "the target refused CHAP with {alg:?}; trying {:?}", alg.weaker());
                algs = alg.weaker();
            }
            Err((e, _)) => return Err(e),
            Ok(x) => return Ok(x),
        }
    }
}

/// A refused login that a weaker CHAP algorithm may get through.
fn refused(e: &ConnectError) -> bool {
    matches!(
        e,
        ConnectError::Login {
            source: LoginError::AuthFailed | LoginError::Rejected { status: 0x0200, .. },
            ..
        }
    )
}

/// One login offering `algs`, redirections followed; on failure, also
/// the CHAP algorithm the target had chosen.
fn login_with(
    t: &LoginTarget,
    timeout: Duration,
    algs: &[ChapAlgorithm],
) -> Result<(TcpStream, Negotiated), (ConnectError, Option<ChapAlgorithm>)> {
    let mut portal = t.portal.clone();
    for _ in 0..=MAX_REDIRECTS {
        let mut chosen = None;
        match login_once(t, &portal, timeout, algs, &mut chosen) {
            Ok(Ok(done)) => return Ok(done),
            Ok(Err(to)) => {
                debug!(from = %portal, to = %to, "iSCSI login redirected");
                portal = to;
            }
            Err(e) => return Err((e, chosen)),
        }
    }
    Err((
        ConnectError::Redirects {
            portal: t.portal.to_string(),
        },
        None,
    ))
}

/// A login at `portal`: logged in, or redirected elsewhere.
fn login_once(
    t: &LoginTarget,
    portal: &Portal,
    timeout: Duration,
    algs: &[ChapAlgorithm],
    chosen: &mut Option<ChapAlgorithm>,
) -> Result<Result<(TcpStream, Negotiated), Portal>, ConnectError> {
    let name = portal.to_string();
    let io = |source| ConnectError::Io {
        portal: name.clone(),
        source,
    };
    let login_err = |source| ConnectError::Login {
        portal: name.clone(),
        source,
    };
    let mut s = tcp_connect(portal, timeout)?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    let cfg = LoginConfig {
        initiator_name: t.initiator_name.clone(),
        target_name: t.target.clone(),
        isid: pdu::random_isid(random::<3>()),
        tsih: 0,
        cid: 0,
        itt: 0,
        cmd_sn: 1,
        exp_stat_sn: 0,
        chap: t.chap.clone(),
        chap_algorithms: algs.to_vec(),
        params: t.params.clone(),
    };
    let (mut login, mut req) =
        Login::start(cfg, random::<LOGIN_RANDOM_LEN>()).map_err(login_err)?;
    loop {
        let bytes = Pdu::LoginRequest(req).encode(Digests::default());
        s.write_all(&bytes).map_err(io)?;
        let resp = match read_pdu_blocking(&mut s, LOGIN_MAX_SEGMENT) {
            Ok(Pdu::LoginResponse(r)) => r,
            Ok(other) => {
                return Err(login_err(LoginError::Protocol(format!(
                    "a {:?} PDU during login",
                    other.opcode()
                ))))
            }
            Err(LoginIoError::Io(e)) => return Err(io(e)),
            Err(LoginIoError::Pdu(source)) => {
                return Err(ConnectError::Pdu {
                    portal: name.clone(),
                    source,
                })
            }
        };
        let step = login.on_response(&resp);
        *chosen = login.chap_algorithm();
        match step {
            Ok(Step::Send(next)) => req = next,
            Ok(Step::Done(n)) => {
                s.set_read_timeout(None).map_err(io)?;
                s.set_write_timeout(None).map_err(io)?;
                return Ok(Ok((s, n)));
            }
            Err(LoginError::Redirect { portal: to, .. }) => {
                return Ok(Err(Portal {
                    host: to.address,
                    port: to.port,
                }))
            }
            Err(e) => return Err(login_err(e)),
        }
    }
}

impl Conn {
    /// Connects and logs in (blocking, on the calling thread, at most
    /// `timeout` per step), then runs the connection on `rt`.
    pub fn connect(
        t: &LoginTarget,
        rt: &tokio::runtime::Handle,
        timeout: Duration,
    ) -> Result<Conn, ConnectError> {
        let (sock, negotiated) = login(t, timeout)?;
        let peer = sock
            .peer_addr()
            .map_or_else(|_| t.portal.to_string(), |a| a.to_string());
        let io = |source| ConnectError::Io {
            portal: peer.clone(),
            source,
        };
        sock.set_nonblocking(true).map_err(io)?;
        let sock = {
            let _guard = rt.enter();
            tokio::net::TcpStream::from_std(sock).map_err(io)?
        };
        let (rd, wr) = sock.into_split();
        let p = &negotiated.params;
        let digests = Digests {
            header: p.header_digest,
            data: p.data_digest,
        };
        let session = Session::new(
            session::SessionParams {
                max_send_segment: p.max_send_data_segment_length,
                max_burst: p.max_burst_length,
                first_burst: p.first_burst_length,
                immediate_data: p.immediate_data,
                initial_r2t: p.initial_r2t,
            },
            negotiated.cmd_sn,
            negotiated.exp_stat_sn,
            negotiated.max_cmd_sn,
        );
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                session,
                waiters: HashMap::new(),
                closed: None,
            }),
            abort_wait: t.abort_wait,
            digests,
            max_recv: p.max_recv_data_segment_length,
            peer,
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let reader = rt.spawn(read_loop(shared.clone(), rd, tx.clone()));
        let writer = rt.spawn(write_loop(shared.clone(), wr, rx));
        let (every, within) = t.ping;
        let pinger = rt.spawn(ping_loop(shared.clone(), tx.clone(), every, within));
        let watcher = rt.spawn(watch_loop(shared.clone(), tx.clone()));
        Ok(Conn {
            shared,
            tx,
            negotiated,
            tasks: vec![reader, writer, pinger, watcher],
        })
    }

    /// What the login negotiated.
    pub fn negotiated(&self) -> &Negotiated {
        &self.negotiated
    }

    /// The target's address.
    pub fn peer(&self) -> &str {
        &self.shared.peer
    }

    /// Why the connection is closed, if it is.
    pub fn closed(&self) -> Option<String> {
        self.shared.state.lock().closed.clone()
    }

    /// Closes the connection: every waiting command fails with `why`.
    pub fn close(&self, why: &str) {
        close(&self.shared, why);
    }

    /// Runs a SCSI command and waits for it at most `timeout`; past it,
    /// the command is aborted (ABORT TASK), and if the abort is not
    /// answered within [`ABORT_WAIT`] the connection is closed.
    pub fn command(
        &self,
        cmd: Command,
        write: Option<Arc<Vec<u8>>>,
        timeout: Duration,
    ) -> Result<Done, CmdError> {
        let start = Instant::now();
        let (tx, rx) = std_mpsc::channel();
        let itt = loop {
            let mut st = self.shared.state.lock();
            if let Some(why) = &st.closed {
                return Err(CmdError::Closed(why.clone()));
            }
            if let Some(taken) = st.session.submit(cmd) {
                let itt = taken.0;
                let outs = place(&mut st, taken, cmd, write, ReplyTo::Caller(tx));
                drop(st);
                self.send(outs);
                break itt;
            }
            drop(st);
            if start.elapsed() >= timeout {
                return Err(CmdError::WindowClosed(timeout));
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let left = timeout.saturating_sub(start.elapsed());
        match rx.recv_timeout(left) {
            Ok(r) => self.finish(itt, r),
            Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                Err(CmdError::Closed(self.closed().unwrap_or_default()))
            }
            Err(std_mpsc::RecvTimeoutError::Timeout) => self.abort(itt, &rx, timeout),
        }
    }

    /// Starts a SCSI command without waiting: `c` gets its end (see
    /// [`Completion`]). Past `timeout` the command is aborted, and if the
    /// abort is not answered within [`ABORT_WAIT`] the connection is
    /// closed. Gives `c` back when the command cannot start now (the
    /// connection is closed, or the target's command window is full).
    pub fn submit<C: Completion>(
        &self,
        cmd: Command,
        write: Option<Arc<Vec<u8>>>,
        timeout: Duration,
        c: C,
    ) -> Result<(), C> {
        let mut st = self.shared.state.lock();
        if st.closed.is_some() {
            return Err(c);
        }
        let Some(taken) = st.session.submit(cmd) else {
            return Err(c);
        };
        let to = ReplyTo::Callback {
            c: Box::new(c),
            deadline: Instant::now() + timeout,
            timeout,
            recovery: Recovery::None,
        };
        let outs = place(&mut st, taken, cmd, write, to);
        drop(st);
        self.send(outs);
        Ok(())
    }

    fn finish(&self, itt: u32, r: Reply) -> Result<Done, CmdError> {
        match r {
            Reply::Done(status) => {
                let data = self.take_read(itt);
                Ok(Done { status, data })
            }
            Reply::Rejected(reason) => Err(CmdError::Rejected(reason)),
            Reply::Closed(why) => Err(CmdError::Closed(why)),
            Reply::Aborted(_) | Reply::Text { .. } => {
                Err(CmdError::Closed("unexpected reply".to_string()))
            }
        }
    }

    /// The read buffer of a finished command (the reader parks it in the
    /// waiter's place).
    fn take_read(&self, itt: u32) -> Vec<u8> {
        self.shared
            .state
            .lock()
            .waiters
            .remove(&itt)
            .map(|w| w.read)
            .unwrap_or_default()
    }

    fn abort(
        &self,
        itt: u32,
        rx: &std_mpsc::Receiver<Reply>,
        timeout: Duration,
    ) -> Result<Done, CmdError> {
        let send = self.shared.state.lock().session.abort(itt);
        match send {
            Some(s) => self.send(outs(vec![s], None)),
            // Ended just now: its reply is on the way.
            None => {
                if let Ok(r) = rx.recv_timeout(ABORT_WAIT) {
                    return self.finish(itt, r);
                }
            }
        }
        match rx.recv_timeout(ABORT_WAIT) {
            // It completed after all: its result stands.
            Ok(Reply::Done(status)) => {
                let data = self.take_read(itt);
                Ok(Done { status, data })
            }
            Ok(Reply::Aborted(response)) if response <= 1 => {
                self.shared.state.lock().waiters.remove(&itt);
                warn!(peer = %self.shared.peer, itt, "iSCSI command aborted after {timeout:?}");
                Err(CmdError::TimedOut {
                    timeout,
                    aborted: true,
                })
            }
            Ok(Reply::Rejected(reason)) => Err(CmdError::Rejected(reason)),
            Ok(Reply::Closed(why)) => Err(CmdError::Closed(why)),
            Ok(_) | Err(_) => {
                self.close(&format!(
                    "command {itt:#x} unanswered after {timeout:?} and its abort within {ABORT_WAIT:?}"
                ));
                Err(CmdError::TimedOut {
                    timeout,
                    aborted: false,
                })
            }
        }
    }

    fn send(&self, outs: Vec<Out>) {
        if !outs.is_empty() && self.tx.send(outs).is_err() {
            self.close("the writer stopped");
        }
    }

    /// A NOP-Out ping; true if the target answered within `timeout`.
    pub fn ping(&self, timeout: Duration) -> bool {
        let (tx, rx) = std_mpsc::channel();
        let s = {
            let mut st = self.shared.state.lock();
            if st.closed.is_some() {
                return false;
            }
            let (itt, s) = st.session.ping();
            st.waiters.insert(itt, Waiter::caller(tx));
            s
        };
        self.send(outs(vec![s], None));
        matches!(rx.recv_timeout(timeout), Ok(Reply::Done(_)))
    }

    /// SendTargets=All on a discovery session: the targets and portals.
    pub fn send_targets(&self, timeout: Duration) -> Result<Vec<TargetRecord>, String> {
        let (tx, rx) = std_mpsc::channel();
        let mut acc = TextAccumulator::new(1 << 20);
        let mut ttt = pdu::RESERVED_TAG;
        let mut itt = None;
        let mut data = text::encode(&[("SendTargets", "All")]);
        loop {
            let s = {
                let mut st = self.shared.state.lock();
                if let Some(why) = &st.closed {
                    return Err(why.clone());
                }
                let Some((i, s)) = st.session.text(std::mem::take(&mut data), ttt, itt) else {
                    return Err("the target's command window is closed".to_string());
                };
                st.waiters.insert(i, Waiter::caller(tx.clone()));
                itt = Some(i);
                s
            };
            self.send(outs(vec![s], None));
            match rx.recv_timeout(timeout) {
                Ok(Reply::Text {
                    ttt: t,
                    final_flag,
                    continue_flag,
                    data: d,
                }) => {
                    let pairs = acc
                        .push(&d, continue_flag)
                        .map_err(|e| format!("SendTargets: {e}"))?;
                    if let Some(pairs) = pairs {
                        if final_flag {
                            return text::parse_send_targets(&pairs)
                                .map_err(|e| format!("SendTargets: {e}"));
                        }
                    }
                    if final_flag && !continue_flag {
                        return Ok(Vec::new());
                    }
                    ttt = t;
                }
                Ok(Reply::Closed(why)) => return Err(why),
                Ok(_) => return Err("SendTargets: unexpected reply".to_string()),
                Err(_) => return Err(format!("SendTargets: no answer within {timeout:?}")),
            }
        }
    }
}

/// Turns the session's sends into writer items; Data-Out payloads come
/// from `write` (the command's buffer).
fn outs(sends: Vec<Send>, write: Option<&Arc<Vec<u8>>>) -> Vec<Out> {
    sends
        .into_iter()
        .map(|s| {
            let (pdu, range) = s.parts();
            let payload = match (&s, write) {
                (Send::Pdu(p), _) => {
                    let d = p.data().to_vec();
                    if d.is_empty() {
                        Payload::None
                    } else {
                        Payload::Owned(d)
                    }
                }
                (_, Some(w)) if !range.is_empty() => Payload::Shared(w.clone(), range),
                _ => Payload::None,
            };
            let len = payload.bytes().len() as u32;
            Out {
                header: pdu.encode_header(len),
                payload,
            }
        })
        .collect()
}

fn close(shared: &Shared, why: &str) {
    let waiters = {
        let mut st = shared.state.lock();
        if st.closed.is_some() {
            return;
        }
        st.closed = Some(why.to_string());
        std::mem::take(&mut st.waiters)
    };
    if !waiters.is_empty() {
        debug!(peer = %shared.peer, why, commands = waiters.len(), "iSCSI connection closed");
    }
    let mut finished: Finished = Vec::new();
    for (_, w) in waiters {
        match w.to {
            ReplyTo::Caller(tx) => {
                let _ = tx.send(Reply::Closed(why.to_string()));
            }
            ReplyTo::Callback { c, .. } => {
                finished.push((c, Err(CmdError::Closed(why.to_string()))))
            }
        }
    }
    finish(finished);
}

/// How often [`watch_loop`] looks for commands past their timeout.
const WATCH_TICK: Duration = Duration::from_millis(200);

/// Ends [`Conn::submit`] commands past their timeout: ABORT TASK, then
/// (unanswered within the abort wait) LOGICAL UNIT RESET, then (still
/// unanswered) the connection is closed.
async fn watch_loop(shared: Arc<Shared>, tx: mpsc::UnboundedSender<Vec<Out>>) {
    let wait = shared.abort_wait;
    loop {
        tokio::time::sleep(WATCH_TICK).await;
        let now = Instant::now();
        let mut sends = Vec::new();
        let mut unanswered = None;
        {
            let mut st = shared.state.lock();
            if st.closed.is_some() {
                return;
            }
            let State {
                session, waiters, ..
            } = &mut *st;
            let mut reset_luns = Vec::new();
            for (itt, w) in waiters.iter_mut() {
                let ReplyTo::Callback {
                    deadline,
                    recovery,
                    timeout,
                    ..
                } = &mut w.to
                else {
                    continue;
                };
                match *recovery {
                    Recovery::None if now >= *deadline => {
                        if let Some(s) = session.abort(*itt) {
                            warn!(peer = %shared.peer, itt, "iSCSI command unanswered after {timeout:?}: ABORT TASK");
                            sends.push(s);
                        }
                        *recovery = Recovery::Aborting(now);
                    }
                    Recovery::Aborting(t) if now.duration_since(t) >= wait => {
                        if !reset_luns.contains(&w.lun) {
                            warn!(peer = %shared.peer, itt, "ABORT TASK unanswered within {wait:?}: LOGICAL UNIT RESET");
                            sends.push(session.lun_reset(w.lun));
                            reset_luns.push(w.lun);
                        }
                        *recovery = Recovery::Resetting(now);
                    }
                    Recovery::Resetting(t) if now.duration_since(t) >= wait => {
                        unanswered = Some((*itt, *timeout));
                    }
                    _ => {}
                }
            }
        }
        if let Some((itt, timeout)) = unanswered {
            close(
                &shared,
                &format!(
                    "command {itt:#x} unanswered after {timeout:?}, and neither its abort nor a LUN reset within {wait:?} each"
                ),
            );
            return;
        }
        if !sends.is_empty() && tx.send(outs(sends, None)).is_err() {
            return;
        }
    }
}

/// Pings the target every `interval`; a ping not answered within
/// `timeout` closes the connection (a target that stopped answering, or a
/// network that went away without a reset).
async fn ping_loop(
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Vec<Out>>,
    interval: Duration,
    timeout: Duration,
) {
    loop {
        tokio::time::sleep(interval).await;
        let (ptx, prx) = std_mpsc::channel();
        let send = {
            let mut st = shared.state.lock();
            if st.closed.is_some() {
                return;
            }
            let (itt, s) = st.session.ping();
            st.waiters.insert(itt, Waiter::caller(ptx));
            s
        };
        if tx.send(outs(vec![send], None)).is_err() {
            return;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match prx.try_recv() {
                Ok(Reply::Done(_)) => break,
                Ok(_) | Err(std_mpsc::TryRecvError::Disconnected) => return,
                Err(std_mpsc::TryRecvError::Empty) if tokio::time::Instant::now() >= deadline => {
                    warn!(peer = %shared.peer, "no answer to a NOP-Out ping within {timeout:?}: closing the connection");
                    close(
                        &shared,
                        &format!("no answer to a NOP-Out ping within {timeout:?}"),
                    );
                    return;
                }
                Err(std_mpsc::TryRecvError::Empty) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

async fn read_loop(
    shared: Arc<Shared>,
    mut rd: tokio::net::tcp::OwnedReadHalf,
    tx: mpsc::UnboundedSender<Vec<Out>>,
) {
    let why = loop {
        let mut bhs = [0u8; BHS_LEN];
        if let Err(e) = rd.read_exact(&mut bhs).await {
            break format!("reading from {}: {e}", shared.peer);
        }
        if pdu::opcode(&bhs) == Ok(pdu::Opcode::DataIn) && pdu::ahs_length(&bhs) == 0 {
            // Read data goes straight to its command's buffer.
            match data_in(&shared, &mut rd, bhs).await {
                Ok(outs) => {
                    if !outs.is_empty() && tx.send(outs).is_err() {
                        break "the writer stopped".to_string();
                    }
                    continue;
                }
                Err(why) => break why,
            }
        }
        let len = match pdu::frame_len(&bhs, shared.digests, shared.max_recv) {
            Ok(l) => l,
            Err(e) => break format!("{} sent a bad PDU: {e}", shared.peer),
        };
        let mut buf = vec![0u8; len];
        buf[..BHS_LEN].copy_from_slice(&bhs);
        if let Err(e) = rd.read_exact(&mut buf[BHS_LEN..]).await {
            break format!("reading from {}: {e}", shared.peer);
        }
        let pdu = match Pdu::decode(&buf, shared.digests) {
            Ok(p) => p,
            Err(e) => break format!("{} sent a bad PDU: {e}", shared.peer),
        };
        match deliver(&shared, pdu) {
            Ok(outs) => {
                if !outs.is_empty() && tx.send(outs).is_err() {
                    break "the writer stopped".to_string();
                }
            }
            Err(e) => break format!("{} broke the iSCSI protocol: {e}", shared.peer),
        }
    };
    close(&shared, &why);
}

/// A Data-In PDU whose BHS is read: its data segment is read into the
/// command's own buffer (no copy), after the session checked where it
/// goes; the PDUs to send in answer, or why the connection must close.
async fn data_in(
    shared: &Shared,
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    bhs: [u8; BHS_LEN],
) -> Result<Vec<Out>, String> {
    let peer = &shared.peer;
    let io = |e: io::Error| format!("reading from {peer}: {e}");
    let bad = |e: &dyn std::fmt::Display| format!("{peer} sent a bad PDU: {e}");
    let dsl = pdu::data_segment_length(&bhs);
    if dsl > shared.max_recv {
        return Err(bad(&PduError::DataSegmentTooLong {
            len: dsl,
            max: shared.max_recv,
        }));
    }
    let dsl = dsl as usize;
    if shared.digests.header {
        let mut d = [0u8; DIGEST_LEN];
        rd.read_exact(&mut d).await.map_err(io)?;
        if d != digest::header_digest(&bhs, &[]) {
            return Err(bad(&"header digest mismatch"));
        }
    }
    let mut header = bhs;
    header[5..8].copy_from_slice(&[0, 0, 0]);
    let hdr = match Pdu::decode(&header, Digests::default()) {
        Ok(Pdu::DataIn(h)) => h,
        Ok(_) => return Err(bad(&"not a Data-In")),
        Err(e) => return Err(bad(&e)),
    };
    let itt = hdr.itt;
    let off = hdr.buffer_offset as usize;
    // Checked (and counted) first; the buffer is taken out meanwhile.
    let (events, mut buf) = {
        let mut st = shared.state.lock();
        let events = st
            .session
            .data_in(hdr, dsl)
            .map_err(|e| format!("{peer} broke the iSCSI protocol: {e}"))?;
        let buf = st
            .waiters
            .get_mut(&itt)
            .map(|w| std::mem::take(&mut w.read));
        (events, buf)
    };
    let tail = digest::pad_len(dsl)
        + if shared.digests.data && dsl > 0 {
            DIGEST_LEN
        } else {
            0
        };
    let mut rest = [0u8; 3 + DIGEST_LEN];
    match buf.as_mut().and_then(|b| b.get_mut(off..off + dsl)) {
        Some(dst) => {
            rd.read_exact(dst).await.map_err(io)?;
            rd.read_exact(&mut rest[..tail]).await.map_err(io)?;
            if shared.digests.data
                && dsl > 0
                && rest[tail - DIGEST_LEN..tail] != digest::data_digest(dst)
            {
                return Err(bad(&"data digest mismatch"));
            }
        }
        None => {
            // The command is gone (its caller gave up): read and drop.
            let mut sink = vec![0u8; dsl + tail];
            rd.read_exact(&mut sink).await.map_err(io)?;
        }
    }
    let mut st = shared.state.lock();
    if let (Some(b), Some(w)) = (buf, st.waiters.get_mut(&itt)) {
        w.read = b;
    }
    let mut finished: Finished = Vec::new();
    let r = apply(shared, st, events, &mut finished);
    finish(finished);
    r.map_err(|e| format!("{peer} broke the iSCSI protocol: {e}"))
}

/// Feeds one PDU to the session and acts on what it means; the PDUs to
/// send in answer. Callbacks of commands that ended run after the lock
/// is released.
fn deliver(shared: &Shared, pdu: Pdu) -> Result<Vec<Out>, session::ProtocolError> {
    let mut finished: Finished = Vec::new();
    let r = deliver_locked(shared, pdu, &mut finished);
    finish(finished);
    r
}

fn deliver_locked(
    shared: &Shared,
    pdu: Pdu,
    finished: &mut Finished,
) -> Result<Vec<Out>, session::ProtocolError> {
    let mut st = shared.state.lock();
    let events = st.session.receive(pdu)?;
    apply(shared, st, events, finished)
}

/// Acts on what the session made of a PDU, under the lock (`st`).
fn apply(
    shared: &Shared,
    mut st: parking_lot::MutexGuard<'_, State>,
    events: Vec<Event>,
    finished: &mut Finished,
) -> Result<Vec<Out>, session::ProtocolError> {
    let mut out = Vec::new();
    for ev in events {
        match ev {
            Event::Send(s) => {
                let itt = match &s {
                    Send::DataOut { header, .. } => Some(header.itt),
                    _ => None,
                };
                let w = itt
                    .and_then(|i| st.waiters.get(&i))
                    .and_then(|w| w.write.clone());
                out.extend(outs(vec![s], w.as_ref()));
            }
            Event::Data { itt, offset, data } => {
                // The session checked the range against the expected length.
                if let Some(dst) = st.waiters.get_mut(&itt).and_then(|w| {
                    w.read
                        .get_mut(offset as usize..offset as usize + data.len())
                }) {
                    dst.copy_from_slice(&data);
                }
            }
            Event::Done { itt, status } => match st.waiters.get(&itt).map(|w| &w.to) {
                Some(ReplyTo::Caller(tx)) => {
                    let _ = tx.send(Reply::Done(status));
                }
                Some(ReplyTo::Callback { .. }) => {
                    if let Some(Waiter {
                        read,
                        to: ReplyTo::Callback { c, .. },
                        ..
                    }) = st.waiters.remove(&itt)
                    {
                        finished.push((c, Ok(Done { status, data: read })));
                    }
                }
                None => {}
            },
            Event::Rejected { itt, reason } => {
                if let Some(w) = st.waiters.remove(&itt) {
                    match w.to {
                        ReplyTo::Caller(tx) => {
                            let _ = tx.send(Reply::Rejected(reason));
                        }
                        ReplyTo::Callback { c, .. } => {
                            finished.push((c, Err(CmdError::Rejected(reason))))
                        }
                    }
                }
            }
            Event::Aborted { itt, response } => match st.waiters.get(&itt).map(|w| &w.to) {
                Some(ReplyTo::Caller(tx)) => {
                    let _ = tx.send(Reply::Aborted(response));
                }
                Some(ReplyTo::Callback { timeout, .. }) if response <= 1 => {
                    let timeout = *timeout;
                    if let Some(Waiter {
                        to: ReplyTo::Callback { c, .. },
                        ..
                    }) = st.waiters.remove(&itt)
                    {
                        warn!(peer = %shared.peer, itt, "iSCSI command aborted after {timeout:?}");
                        finished.push((
                            c,
                            Err(CmdError::TimedOut {
                                timeout,
                                aborted: true,
                            }),
                        ));
                    }
                }
                // The abort failed: the command may still run. A LOGICAL
                // UNIT RESET ends it (and every task of its LUN).
                Some(ReplyTo::Callback { .. }) => {
                    let lun = st.waiters.get_mut(&itt).map_or(0, |w| {
                        if let ReplyTo::Callback { recovery, .. } = &mut w.to {
                            *recovery = Recovery::Resetting(Instant::now());
                        }
                        w.lun
                    });
                    warn!(peer = %shared.peer, itt, response, "ABORT TASK refused: LOGICAL UNIT RESET");
                    let reset = st.session.lun_reset(lun);
                    out.extend(outs(vec![reset], None));
                }
                None => {}
            },
            Event::LunReset {
                lun,
                response,
                ended,
            } => {
                if response != 0 {
                    drop(st);
                    close(
                        shared,
                        &format!("LOGICAL UNIT RESET of LUN {lun:#x} refused ({response})"),
                    );
                    return Ok(Vec::new());
                }
                let why = "ended by a LOGICAL UNIT RESET".to_string();
                for itt in ended {
                    let Some(w) = st.waiters.remove(&itt) else {
                        continue;
                    };
                    match w.to {
                        ReplyTo::Caller(tx) => {
                            let _ = tx.send(Reply::Closed(why.clone()));
                        }
                        // The command past its timeout: it is known ended.
                        ReplyTo::Callback {
                            c,
                            timeout,
                            recovery,
                            ..
                        } if recovery != Recovery::None => finished.push((
                            c,
                            Err(CmdError::TimedOut {
                                timeout,
                                aborted: true,
                            }),
                        )),
                        ReplyTo::Callback { c, .. } => {
                            finished.push((c, Err(CmdError::Closed(why.clone()))))
                        }
                    }
                }
            }

            Event::Pong { itt } => {
                if let Some(w) = st.waiters.remove(&itt) {
                    w.tell(Reply::Done(Status {
                        response: 0,
                        status: 0,
                        sense: Vec::new(),
                        residual_under: 0,
                        residual_over: 0,
                        received: 0,
                    }));
                }
            }
            Event::Text {
                itt,
                ttt,
                final_flag,
                continue_flag,
                data,
            } => {
                if let Some(w) = st.waiters.remove(&itt) {
                    w.tell(Reply::Text {
                        ttt,
                        final_flag,
                        continue_flag,
                        data,
                    });
                }
            }
            Event::Async { event, .. } => {
                let why = match event {
                    1 => "the target asked to log out",
                    2 => "the target dropped the connection",
                    3 => "the target dropped the session",
                    _ => "the target asked to renegotiate",
                };
                drop(st);
                close(shared, why);
                return Ok(Vec::new());
            }
            Event::LoggedOut { .. } => {}
        }
    }
    Ok(out)
}

async fn write_loop(
    shared: Arc<Shared>,
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Vec<Out>>,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    while let Some(first) = rx.recv().await {
        // Everything queued goes out together.
        let mut batch = first;
        while let Ok(more) = rx.try_recv() {
            batch.extend(more);
        }
        for o in &batch {
            let payload = o.payload.bytes();
            let f = pdu::framing(&o.header, payload, shared.digests);
            buf.extend_from_slice(&o.header);
            if let Some(d) = f.header_digest {
                buf.extend_from_slice(&d);
            }
            // Large payloads are written from where they are.
            if payload.len() > 16 * 1024 {
                if let Err(e) = wr.write_all(&buf).await {
                    close(&shared, &format!("writing to {}: {e}", shared.peer));
                    return;
                }
                buf.clear();
                if let Err(e) = wr.write_all(payload).await {
                    close(&shared, &format!("writing to {}: {e}", shared.peer));
                    return;
                }
            } else {
                buf.extend_from_slice(payload);
            }
            buf.extend_from_slice(f.padding);
            if let Some(d) = f.data_digest {
                buf.extend_from_slice(&d);
            }
        }
        if !buf.is_empty() {
            if let Err(e) = wr.write_all(&buf).await {
                close(&shared, &format!("writing to {}: {e}", shared.peer));
                return;
            }
            buf.clear();
        }
        if shared.state.lock().closed.is_some() {
            break;
        }
    }
    let _ = wr.shutdown().await;
}
