//! The control socket server (tokio, Unix socket).
//!
//! Who may do what: read-only commands for every local user who can reach
//! the socket (mode 0666), changes for root, the daemon's user and the
//! admin group, decided from the peer's credentials ([`crate::access`]).
//!
//! Bounds, so that no client can hurt another: a client has
//! [`Bounds::timeout`] to send its command and again to read its reply,
//! then it is dropped; the request line is at most [`MAX_REQUEST`] bytes
//! and a reply at most [`Bounds::max_reply`] (a larger one becomes an
//! error reply); replies waiting to be read share [`Bounds::reply_budget`];
//! at most [`Bounds::max_connections`] connections from unprivileged users,
//! at most [`Bounds::max_per_uid`] of them from one uid, and apart from
//! these at most `max_connections` from root and the daemon's user, so
//! that a flood from one user never locks out the administrator.
//! Refusals are logged with the peer's uid and pid, at most a few lines
//! per [`LOG_INTERVAL`].

use std::collections::HashMap;
use std::future::Future;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, Semaphore};
use tracing::{debug, info, warn};

use super::proto::{Command, Response, MAX_REPLY, MAX_REQUEST};
use crate::access::{Cred, Need, Policy, Throttle};

/// Mode of the control socket: everyone may connect (and `show`); the
/// credentials decide about changes.
pub const SOCKET_MODE: u32 = 0o666;

/// Refusal log lines: at most [`LOG_BURST`] per interval and kind.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);
pub const LOG_BURST: u32 = 5;

/// What answers control commands (the daemon).
pub trait Handler: Send + Sync + 'static {
    fn handle(self: Arc<Self>, cmd: Command) -> impl Future<Output = Response> + Send;
}

/// Resource bounds of the control socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Time a client has to send its command, and again to read its
    /// reply (`--control-timeout`).
    pub timeout: Duration,
    /// Connections at once from unprivileged users (and again from root
    /// and the daemon's user).
    pub max_connections: usize,
    /// Connections at once from one unprivileged uid.
    pub max_per_uid: usize,
    /// Longest reply; a larger one is replaced by an error reply.
    pub max_reply: usize,
    /// Bytes of replies being written at once, over all connections.
    pub reply_budget: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            timeout: Duration::from_secs(10),
            max_connections: 64,
            max_per_uid: 16,
            max_reply: MAX_REPLY,
            reply_budget: 64 * 1024 * 1024,
        }
    }
}

/// How the server decides and bounds.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub policy: Policy,
    pub bounds: Bounds,
}

/// Binds the control socket with mode [`SOCKET_MODE`] whatever the umask:
/// a stale socket file is replaced, a live one (another daemon) is an
/// error.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    let l = crate::unixsock::bind_listener(path, SOCKET_MODE, None)?;
    l.set_nonblocking(true)?;
    UnixListener::from_std(l)
}

/// Budget unit for replies in flight.
const BUDGET_UNIT: usize = 4096;

/// Commands of unprivileged peers that run at once.
pub const UNPRIVILEGED_WORKERS: usize = 2;

/// Shared by the connections of one server.
struct Shared {
    opts: ServeOptions,
    slots: Mutex<Slots>,
    budget: Arc<Semaphore>,
    budget_units: u32,
    work: Arc<Semaphore>,
    refused_log: Mutex<Throttle>,
    denied_log: Mutex<Throttle>,
    slow_log: Mutex<Throttle>,
}

impl Shared {
    fn new(opts: ServeOptions) -> Shared {
        let budget_units = (opts.bounds.reply_budget / BUDGET_UNIT).clamp(1, u32::MAX as usize / 2);
        Shared {
            slots: Mutex::new(Slots::default()),
            budget: Arc::new(Semaphore::new(budget_units)),
            budget_units: budget_units as u32,
            work: Arc::new(Semaphore::new(UNPRIVILEGED_WORKERS)),
            refused_log: Mutex::new(Throttle::new(LOG_INTERVAL, LOG_BURST)),
            denied_log: Mutex::new(Throttle::new(LOG_INTERVAL, LOG_BURST)),
            slow_log: Mutex::new(Throttle::new(LOG_INTERVAL, LOG_BURST)),
            opts,
        }
    }

    fn privileged(&self, cred: Option<Cred>) -> bool {
        cred.is_some_and(|c| c.uid == 0 || c.uid == self.opts.policy.owner)
    }
}

/// Connections at once, by class and uid.
#[derive(Debug, Default)]
struct Slots {
    privileged: usize,
    unprivileged: usize,
    /// Unprivileged connections per uid (`None`: credentials unknown).
    per_uid: HashMap<Option<u32>, usize>,
}

/// Why a connection was not admitted.
#[derive(Debug, PartialEq, Eq)]
enum Full {
    Total(usize),
    Uid(usize),
}

impl Slots {
    fn take(&mut self, b: &Bounds, privileged: bool, uid: Option<u32>) -> Result<(), Full> {
        if privileged {
            if self.privileged >= b.max_connections {
                return Err(Full::Total(b.max_connections));
            }
            self.privileged += 1;
            return Ok(());
        }
        if self.unprivileged >= b.max_connections {
            return Err(Full::Total(b.max_connections));
        }
        let n = self.per_uid.entry(uid).or_insert(0);
        if *n >= b.max_per_uid {
            return Err(Full::Uid(b.max_per_uid));
        }
        *n += 1;
        self.unprivileged += 1;
        Ok(())
    }

    fn give(&mut self, privileged: bool, uid: Option<u32>) {
        if privileged {
            self.privileged = self.privileged.saturating_sub(1);
            return;
        }
        self.unprivileged = self.unprivileged.saturating_sub(1);
        if let Some(n) = self.per_uid.get_mut(&uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_uid.remove(&uid);
            }
        }
    }
}

/// Gives a connection's slot back when it ends.
struct Slot {
    shared: Arc<Shared>,
    privileged: bool,
    uid: Option<u32>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.slots.lock().give(self.privileged, self.uid);
    }
}

/// Logs through `throttle`: at most a few lines per interval, the next
/// one says how many were left out.
fn throttled(throttle: &Mutex<Throttle>, line: impl FnOnce(u64)) {
    let admitted = throttle.lock().admit(Instant::now());
    if let Some(skipped) = admitted {
        line(skipped);
    }
}

fn uid_pid(cred: Option<Cred>) -> (String, String) {
    match cred {
        Some(c) => (
            c.uid.to_string(),
            c.pid.map_or_else(|| "unknown".into(), |p| p.to_string()),
        ),
        None => ("unknown".into(), "unknown".into()),
    }
}

/// Serves until `shutdown` turns true.
pub async fn serve<H: Handler>(
    listener: UnixListener,
    path: PathBuf,
    handler: Arc<H>,
    opts: ServeOptions,
    mut shutdown: watch::Receiver<bool>,
) {
    let shared = Arc::new(Shared::new(opts));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => admit(stream, &handler, &shared, &mut conns),
                Err(e) => {
                    warn!("control socket accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    let _ = std::fs::remove_file(&path);
    // Commands still running (a reconfigure the stop abandoned) get to
    // send their answer; a client still silent is dropped with the rest.
    let _ = tokio::time::timeout(STOP_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
}

/// How long a stopping daemon lets control commands in progress answer.
const STOP_GRACE: Duration = Duration::from_secs(1);

fn admit<H: Handler>(
    stream: UnixStream,
    handler: &Arc<H>,
    shared: &Arc<Shared>,
    conns: &mut tokio::task::JoinSet<()>,
) {
    let cred = crate::unixsock::peer_cred(&stream);
    let privileged = shared.privileged(cred);
    let uid = cred.map(|c| c.uid);
    let taken = shared
        .slots
        .lock()
        .take(&shared.opts.bounds, privileged, uid);
    if let Err(full) = taken {
        let (uid, pid) = uid_pid(cred);
        let why = match full {
            Full::Total(n) => format!("{n} control connections are open"),
            Full::Uid(n) => format!("uid {uid} has {n} control connections open"),
        };
        throttled(&shared.refused_log, |skipped| {
            warn!(uid = %uid, pid = %pid, skipped, "control connection refused: {why}");
        });
        // A short note if the socket takes it at once; never waits.
        let msg = format!(
            "{}\n",
            serde_json::json!({"ok": false, "text": format!("busy: {why}; try again")})
        );
        let _ = stream.try_write(msg.as_bytes());
        return;
    }
    let slot = Slot {
        shared: shared.clone(),
        privileged,
        uid,
    };
    let h = handler.clone();
    conns.spawn(async move {
        if let Err(e) = one(stream, h, &slot.shared, cred, privileged).await {
            debug!("control connection: {e}");
        }
        drop(slot);
    });
}

async fn one<H: Handler>(
    stream: UnixStream,
    handler: Arc<H>,
    shared: &Shared,
    cred: Option<Cred>,
    privileged: bool,
) -> io::Result<()> {
    let bounds = shared.opts.bounds;
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    let read = tokio::time::timeout(
        bounds.timeout,
        BufReader::new(rd.take(MAX_REQUEST as u64)).read_line(&mut line),
    )
    .await;
    let cmd = match read {
        Err(_) => Err(Response::error("timed out waiting for a command")),
        Ok(Err(e)) => Err(Response::error(format!("cannot read the command: {e}"))),
        Ok(Ok(_)) if !line.ends_with('\n') && line.len() >= MAX_REQUEST => Err(Response::error(
            format!("command longer than {MAX_REQUEST} bytes"),
        )),
        Ok(Ok(_)) => Command::parse(&line)
            .map_err(Response::error)
            .and_then(|cmd| authorize(shared, &cmd, cred).map(|()| cmd)),
    };
    drop(line);
    let out = match cmd {
        Err(resp) => encode(&resp, bounds.max_reply),
        Ok(cmd) => answer(shared, handler, cmd, privileged).await,
    };

    // The reply must be read within the deadline, budget wait included.
    let deadline = tokio::time::Instant::now() + bounds.timeout;
    let units = (out.len().div_ceil(BUDGET_UNIT) as u32).clamp(1, shared.budget_units);
    let sent = tokio::time::timeout_at(deadline, async {
        let _permit = shared
            .budget
            .clone()
            .acquire_many_owned(units)
            .await
            .map_err(io::Error::other)?;
        wr.write_all(&out).await?;
        wr.shutdown().await
    })
    .await;
    match sent {
        Ok(r) => r,
        Err(_) => {
            let (uid, pid) = uid_pid(cred);
            throttled(&shared.slow_log, |skipped| {
                warn!(
                    uid = %uid, pid = %pid, skipped, bytes = out.len(),
                    "control client did not read its reply within {} s; dropped",
                    bounds.timeout.as_secs_f64()
                );
            });
            Ok(())
        }
    }
}

/// Runs `cmd` and encodes its reply on the blocking pool, so that rendering
/// a large answer (`show config --json` of many paths) never holds up the
/// runtime's workers. Unprivileged peers take turns: at most
/// [`UNPRIVILEGED_WORKERS`] of their commands run at once (and one waits at
/// most the deadline for its turn), so root's commands answer at once
/// however many others are queued.
async fn answer<H: Handler>(
    shared: &Shared,
    handler: Arc<H>,
    cmd: Command,
    privileged: bool,
) -> Vec<u8> {
    let max = shared.opts.bounds.max_reply;
    let _turn = if privileged {
        None
    } else {
        let turn = tokio::time::timeout(
            shared.opts.bounds.timeout,
            shared.work.clone().acquire_owned(),
        )
        .await;
        match turn {
            Ok(Ok(permit)) => Some(permit),
            _ => {
                return encode(
                    &Response::error("busy: too many control commands running; try again"),
                    max,
                )
            }
        }
    };
    let rt = tokio::runtime::Handle::current();
    let job = tokio::task::spawn_blocking(move || encode(&rt.block_on(handler.handle(cmd)), max));
    match job.await {
        Ok(out) => out,
        Err(e) => encode(&Response::error(format!("the command failed: {e}")), max),
    }
}

/// Read-only commands pass; changes need the policy's consent. Refusals
/// and changes are logged with the peer's uid and pid.
fn authorize(shared: &Shared, cmd: &Command, cred: Option<Cred>) -> Result<(), Response> {
    if cmd.is_read_only() {
        return Ok(());
    }
    let line = cmd.to_line();
    let (uid, pid) = uid_pid(cred);
    match shared
        .opts
        .policy
        .check(Need::Change(&line), cred, crate::unixsock::peer_groups)
    {
        Ok(()) => {
            info!(uid = %uid, pid = %pid, "control: {line}");
            Ok(())
        }
        Err(msg) => {
            throttled(&shared.denied_log, |skipped| {
                warn!(uid = %uid, pid = %pid, skipped, "control command refused: {msg}");
            });
            Err(Response::error(msg))
        }
    }
}

/// A writer that refuses to grow past `max` bytes.
struct Capped {
    buf: Vec<u8>,
    max: usize,
}

impl Write for Capped {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        if self.buf.len() + b.len() > self.max {
            return Err(io::Error::other("reply too large"));
        }
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The reply line for `resp`, or an error reply if it would be longer
/// than `max` bytes (the serialization stops there).
fn encode(resp: &Response, max: usize) -> Vec<u8> {
    let mut w = Capped {
        buf: Vec::new(),
        max: max.saturating_sub(1),
    };
    match serde_json::to_writer(&mut w, resp) {
        Ok(()) => {
            w.buf.push(b'\n');
            w.buf
        }
        Err(_) => {
            drop(w);
            let e = Response::error(format!(
                "the reply is longer than the control socket's bound of {} bytes",
                max
            ));
            let mut out = serde_json::to_vec(&e).unwrap_or_default();
            out.push(b'\n');
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_per_class_and_uid() {
        let b = Bounds {
            max_connections: 3,
            max_per_uid: 2,
            ..Bounds::default()
        };
        let mut s = Slots::default();
        assert_eq!(s.take(&b, false, Some(65534)), Ok(()));
        assert_eq!(s.take(&b, false, Some(65534)), Ok(()));
        assert_eq!(s.take(&b, false, Some(65534)), Err(Full::Uid(2)));
        assert_eq!(s.take(&b, false, None), Ok(()));
        assert_eq!(s.take(&b, false, Some(1000)), Err(Full::Total(3)));
        // Root is not locked out by the flood.
        for _ in 0..3 {
            assert_eq!(s.take(&b, true, Some(0)), Ok(()));
        }
        assert_eq!(s.take(&b, true, Some(0)), Err(Full::Total(3)));
        s.give(false, Some(65534));
        assert_eq!(s.take(&b, false, Some(1000)), Ok(()));
        s.give(false, Some(65534));
        s.give(false, Some(1000));
        s.give(false, None);
        assert!(s.per_uid.is_empty());
        assert_eq!(s.unprivileged, 0);
    }

    #[test]
    fn large_replies_become_errors() {
        let small = Response::text("hello");
        let out = encode(&small, 1024);
        assert_eq!(out.last(), Some(&b'\n'));
        let back: Response = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, small);
        let big = Response::text("x".repeat(2000));
        let out = encode(&big, 1024);
        let back: Response = serde_json::from_slice(&out).unwrap();
        assert!(!back.ok);
        assert!(back.text.contains("bound of 1024 bytes"), "{}", back.text);
    }
}
