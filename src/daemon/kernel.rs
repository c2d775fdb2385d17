//! Kernel NBD devices for the daemon's maps: attach (socketpairs served
//! as sessions already in transmission, the kernel's ends handed over
//! with `NBD_CMD_CONNECT`), restore after a restart (`NBD_CMD_RECONFIGURE`
//! with fresh sockets), detach (flush, `NBD_CMD_DISCONNECT`). The
//! supervisor owns the [`Devices`]; the netlink calls run on the blocking
//! pool.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, info_span, warn, Instrument};

use crate::config::Config;
use crate::export::Export;
use crate::kernel::{self, links, state, Connect, KernelNbdError, Nbd};
use crate::nbd::{proto, serve_negotiated, Limits};

/// Where device nodes and sysfs are.
const DEV: &str = "/dev";
const SYS: &str = "/sys";

/// Settings from `defaults` (read at each attach).
#[derive(Debug, Clone, Copy)]
pub struct KernelSettings {
    pub connections: usize,
    pub timeout: u64,
    pub dead_conn_timeout: u64,
}

impl KernelSettings {
    pub fn from_config(cfg: &Config) -> KernelSettings {
        let connections = match cfg.nbd_connections() {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n as usize,
        };
        KernelSettings {
            connections: connections.clamp(1, 64),
            timeout: u64::from(cfg.nbd_timeout()),
            dead_conn_timeout: u64::from(cfg.nbd_dead_conn_timeout()),
        }
    }
}

/// Told `(map, generation)` when a connection of an attached device ends
/// while the device is neither detached nor the daemon stopping (the
/// kernel dropped it, or the session failed): the supervisor then hands
/// the device a fresh one.
pub type OnLost = Arc<dyn Fn(String, u64) + Send + Sync>;

/// One attached device.
pub struct Attached {
    pub record: state::Record,
    /// Dropped (or set) to stop its connections.
    _stop: watch::Sender<bool>,
    stopped: watch::Receiver<bool>,
    gen: u64,
    /// Connections replaced recently (a connection that keeps failing is
    /// not replaced forever).
    replaced: Vec<std::time::Instant>,
}

/// Who to tell when a connection is lost.
#[derive(Clone)]
struct Lost {
    notify: OnLost,
    gen: u64,
}

/// The devices this daemon serves, by map name.
pub struct Devices {
    pub attached: BTreeMap<String, Attached>,
    on_lost: OnLost,
    next_gen: u64,
    /// Records of devices whose map is not running (yet): kept in the
    /// state file for the next start.
    pub orphans: Vec<state::Record>,
    state_path: PathBuf,
}

fn err(e: KernelNbdError) -> String {
    e.to_string()
}

/// `n` socketpairs: our ends (served) and the kernel's.
fn socketpairs(n: usize) -> std::io::Result<(Vec<StdUnixStream>, Vec<StdUnixStream>)> {
    let mut ours = Vec::with_capacity(n);
    let mut theirs = Vec::with_capacity(n);
    for _ in 0..n {
        let (a, b) = StdUnixStream::pair()?;
        a.set_nonblocking(true)?;
        ours.push(a);
        theirs.push(b);
    }
    Ok((ours, theirs))
}

/// Hands device `r.index` one fresh connection (`NBD_CMD_RECONFIGURE`
/// replaces one dead one) and serves it.
async fn replace_one(
    r: &state::Record,
    export: &Arc<dyn Export>,
    settings: KernelSettings,
    stopped: &watch::Receiver<bool>,
    lost: &Lost,
) -> Result<(), String> {
    let index = r.index;
    let (ours, theirs) = socketpairs(1).map_err(|e| format!("socketpair: {e}"))?;
    let dead = settings.dead_conn_timeout;
    let backend = backend_id(&r.map);
    blocking(move || {
        let fds: Vec<i32> = theirs.iter().map(|s| s.as_raw_fd()).collect();
        let res = Nbd::open()
            .and_then(|mut n| n.reconfigure(index, &fds, Some(dead), Some(&backend)))
            .map_err(err);
        drop(theirs);
        res
    })
    .await?;
    serve(&r.map, Some(index), export, ours, stopped, lost).map_err(|e| e.to_string())
}

/// How long a detach waits for the device's flush.
const FLUSH_WAIT: Duration = Duration::from_secs(30);

/// How long a connection may take to answer what the kernel had already
/// sent when it was told to stop.
const STOP_DRAIN: Duration = Duration::from_secs(5);

/// Serves our ends of the socketpairs until `stop` is set or dropped.
///
/// Stopping does not just stop reading: requests the kernel already put
/// into the socket would be lost until its request timeout. It shuts the
/// socket for reading instead, so the kernel's next send fails at once
/// (it requeues that request for a live or reconnected connection), while
/// the requests already buffered are still read, answered, and then the
/// connection ends at end of file (or after [`STOP_DRAIN`]).
fn serve(
    map: &str,
    index: Option<u32>,
    export: &Arc<dyn Export>,
    ours: Vec<StdUnixStream>,
    stopped: &watch::Receiver<bool>,
    lost: &Lost,
) -> std::io::Result<()> {
    // The kernel is told the size through netlink, not the handshake, and
    // is told a new one on `resize map`: its sessions must not keep the
    // size they started with. The engine bounds IO by the map's size now.
    let export: &Arc<dyn Export> = &(Arc::new(Resizable(export.clone())) as Arc<dyn Export>);
    for (i, s) in ours.into_iter().enumerate() {
        let handle = s.try_clone()?;
        let stream = tokio::net::UnixStream::from_std(s)?;
        let span =
            info_span!("knbd", map = %map, dev = ?index, conn = i, export = tracing::field::Empty);
        // The session's own shutdown signal is never sent: stopping is
        // the half-close below, and the drain bound drops the session.
        let (never, forced) = watch::channel(false);
        let mut stop = stopped.clone();
        let (export, stopped, lost, map) = (
            export.clone(),
            stopped.clone(),
            lost.clone(),
            map.to_string(),
        );
        tokio::spawn(
            async move {
                let _never = never;
                let session = serve_negotiated(stream, export, Limits::default(), forced);
                tokio::pin!(session);
                tokio::select! {
                    () = &mut session => {}
                    () = async { let _ = stop.wait_for(|v| *v).await; } => {
                        let _ = handle.shutdown(std::net::Shutdown::Read);
                        let _ = tokio::time::timeout(STOP_DRAIN, &mut session).await;
                    }
                }
                // Whatever ended the session, the kernel sees the socket
                // close now (the duplicate kept for the half-close would
                // otherwise keep it open).
                let _ = handle.shutdown(std::net::Shutdown::Both);
                drop(handle);
                if !*stopped.borrow() && stopped.has_changed().is_ok() {
                    (lost.notify)(map, lost.gen);
                }
            }
            .instrument(span),
        );
    }
    Ok(())
}

/// An export as a kernel device's connections see it: the device's own
/// size bounds what the kernel sends, so the session is told the largest
/// size (see `serve`); everything else is the export's.
struct Resizable(Arc<dyn Export>);

/// The size a kernel session is told: large, and a multiple of any block
/// size.
const KERNEL_SESSION_SIZE: u64 = 1 << 62;

impl Export for Resizable {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn description(&self) -> String {
        self.0.description()
    }
    fn size(&self) -> u64 {
        KERNEL_SESSION_SIZE
    }
    fn caps(&self) -> crate::export::ExportCaps {
        self.0.caps()
    }
    fn block_sizes(&self) -> crate::export::BlockSizes {
        self.0.block_sizes()
    }
    fn submit(&self, req: crate::export::Request) {
        self.0.submit(req);
    }
    fn closed(&self) -> Option<watch::Receiver<bool>> {
        self.0.closed()
    }
}

/// The backend identifier of a map's device (/sys/block/nbdN/backend):
/// `umpath/MAP`, the device's name under /dev, so that udev/60-umpath.rules
/// can make the link with `SYMLINK+="%s{backend}"`.
fn backend_id(map: &str) -> String {
    format!("umpath/{map}")
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("netlink task failed: {e}"))?
}

/// Opens `/dev/nbdN`, refusing if it is mounted or held (unless `force`),
/// and flushes it (dirty pages, then a FLUSH to umpath).
fn flush_device(index: u32, force: bool) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = format!("{DEV}/nbd{index}");
    let flags = if force { 0 } else { libc::O_EXCL };
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(&path)
    {
        Ok(f) => f
            .sync_all()
            .map_err(|e| format!("flushing {path} failed: {e}")),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Err(format!(
            "{path} is in use (mounted or held open); unmount it, or detach with --force"
        )),
        Err(e) if force => {
            warn!("cannot open {path} to flush it: {e}");
            Ok(())
        }
        Err(e) => Err(format!("cannot open {path}: {e}")),
    }
}

impl Devices {
    pub fn new(control_socket: &Path, on_lost: OnLost) -> Devices {
        Devices {
            attached: BTreeMap::new(),
            on_lost,
            next_gen: 1,
            orphans: Vec::new(),
            state_path: state::path_for(control_socket),
        }
    }

    /// Map name → device index, for `show`.
    pub fn indexes(&self) -> BTreeMap<String, u32> {
        self.attached
            .iter()
            .map(|(m, a)| (m.clone(), a.record.index))
            .collect()
    }

    fn save(&self) {
        let mut records: Vec<state::Record> =
            self.attached.values().map(|a| a.record.clone()).collect();
        records.extend(self.orphans.iter().cloned());
        if let Err(e) = state::store(&self.state_path, &records) {
            warn!(file = %self.state_path.display(), "cannot record the kernel NBD devices: {e}");
        }
    }

    /// Attaches map `name` to `/dev/nbd{index}` (`None`: any free device).
    pub async fn attach(
        &mut self,
        name: &str,
        wwid: &str,
        export: Arc<dyn Export>,
        index: Option<u32>,
        settings: KernelSettings,
    ) -> Result<u32, String> {
        if let Some(a) = self.attached.get(name) {
            return Err(format!(
                "map {name} is already attached to /dev/nbd{}",
                a.record.index
            ));
        }
        let size = export.size();
        let n = settings.connections;
        let (ours, theirs) = socketpairs(n).map_err(|e| format!("socketpair: {e}"))?;
        // Serve first: the kernel may read (partition scan) at once.
        let (stop, stopped) = watch::channel(false);
        let lost = self.lost();
        serve(name, index, &export, ours, &stopped, &lost).map_err(|e| e.to_string())?;
        let c = Connect {
            index,
            size_bytes: size,
            block_size: kernel::block_size(export.block_sizes().minimum),
            server_flags: u64::from(proto::transmission_flags(&export.caps(), false)),
            client_flags: 0,
            timeout: (settings.timeout > 0).then_some(settings.timeout),
            dead_conn_timeout: Some(settings.dead_conn_timeout),
            fds: theirs.iter().map(|s| s.as_raw_fd()).collect(),
            backend: Some(backend_id(name)),
        };
        let index = blocking(move || {
            let r = Nbd::open().and_then(|mut nbd| nbd.connect(&c)).map_err(err);
            drop(theirs); // the kernel holds its own references now
            r
        })
        .await?;
        if let Err(e) = links::create(Path::new(DEV), name, wwid, index) {
            warn!(map = %name, "cannot make the links for /dev/nbd{index}: {e}");
        }
        info!(map = %name, device = %format!("/dev/nbd{index}"), connections = n, size, "attached a kernel NBD device");
        self.attached.insert(
            name.to_string(),
            Attached {
                record: state::Record {
                    map: name.to_string(),
                    wwid: wwid.to_string(),
                    index,
                    size,
                    connections: n,
                },
                _stop: stop,
                stopped,
                gen: lost.gen,
                replaced: Vec::new(),
            },
        );
        self.save();
        Ok(index)
    }

    /// Gives map `name`'s device a new size (`resize map`): netlink
    /// `NBD_CMD_RECONFIGURE` with `NBD_ATTR_SIZE_BYTES`, then sysfs is
    /// read back (a kernel that ignores the attribute leaves the old size:
    /// an error). A map with no device: nothing to do.
    pub async fn resize(&mut self, name: &str, size: u64) -> Result<String, String> {
        let Some(a) = self.attached.get_mut(name) else {
            return Ok(String::new());
        };
        let index = a.record.index;
        let backend = backend_id(name);
        blocking(move || {
            Nbd::open()
                .and_then(|mut n| n.resize(index, size, Some(&backend)))
                .map_err(err)
        })
        .await?;
        let now = kernel::sysfs_size(Path::new(SYS), index);
        a.record.size = size;
        self.save();
        match now {
            Some(s) if s != size / 512 * 512 => Err(format!(
                "/dev/nbd{index} still has {s} bytes after NBD_CMD_RECONFIGURE with the size \
                 (this kernel does not resize a device through netlink; detach and attach it again)"
            )),
            _ => {
                info!(map = %name, device = %format!("/dev/nbd{index}"), size, "kernel NBD device resized");
                Ok(format!("ok: /dev/nbd{index} resized to {size} bytes\n"))
            }
        }
    }

    /// Flushes and disconnects the device of map `name`.
    pub async fn detach(&mut self, name: &str, force: bool) -> Result<u32, String> {
        let Some(a) = self.attached.get(name) else {
            return Err(format!("map {name} has no kernel NBD device"));
        };
        let index = a.record.index;
        let wwid = a.record.wwid.clone();
        // The flush waits for the map; a map with no usable path may hold
        // it for long. The supervisor does not wait more than FLUSH_WAIT:
        // without --force the detach fails; with it the device is
        // disconnected anyway (the kernel then fails what it still holds,
        // which also ends the flush).
        let flush = tokio::task::spawn_blocking(move || flush_device(index, force));
        match tokio::time::timeout(FLUSH_WAIT, flush).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(e),
            Ok(Err(e)) => return Err(format!("flush task failed: {e}")),
            Err(_) if force => {
                warn!(map = %name, "/dev/nbd{index}: the flush did not finish within {} s; disconnecting anyway (--force)", FLUSH_WAIT.as_secs());
            }
            Err(_) => {
                return Err(format!(
                    "/dev/nbd{index}: the flush did not finish within {} s (does the map have a usable path?); detach --force disconnects anyway",
                    FLUSH_WAIT.as_secs()
                ))
            }
        }
        blocking(move || {
            Nbd::open()
                .and_then(|mut nbd| nbd.disconnect(index))
                .map_err(err)
        })
        .await?;
        // The kernel sent NBD_CMD_DISC and shut its sockets; stop ours too.
        self.attached.remove(name);
        links::remove(Path::new(DEV), name, &wwid, index);
        info!(map = %name, device = %format!("/dev/nbd{index}"), "detached the kernel NBD device");
        self.save();
        Ok(index)
    }

    /// Reads the records a previous daemon left and hands each device
    /// still present, whose map runs with the same WWID and size, fresh
    /// connections. `maps`: running maps by name → (wwid, export).
    pub async fn restore(
        &mut self,
        maps: &BTreeMap<String, (String, Arc<dyn Export>)>,
        settings: KernelSettings,
    ) {
        let records = match state::load(&self.state_path) {
            Ok(r) => r,
            Err(e) => {
                warn!(file = %self.state_path.display(), "cannot read the kernel NBD device records: {e}");
                return;
            }
        };
        if records.is_empty() {
            return;
        }
        for r in records {
            self.restore_one(r, maps, settings).await;
        }
        self.save();
    }

    /// Restores the recorded devices of maps that run now (a map that was
    /// waiting for a path at start-up).
    pub async fn restore_orphans(
        &mut self,
        maps: &BTreeMap<String, (String, Arc<dyn Export>)>,
        settings: KernelSettings,
    ) {
        if !self.orphans.iter().any(|r| maps.contains_key(&r.map)) {
            return;
        }
        let (now, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.orphans)
            .into_iter()
            .partition(|r| maps.contains_key(&r.map));
        self.orphans = later;
        for r in now {
            self.restore_one(r, maps, settings).await;
        }
        self.save();
    }

    async fn restore_one(
        &mut self,
        r: state::Record,
        maps: &BTreeMap<String, (String, Arc<dyn Export>)>,
        settings: KernelSettings,
    ) {
        let Some((wwid, export)) = maps.get(&r.map) else {
            warn!(map = %r.map, "/dev/nbd{} was attached to a map that is not running; kept for later", r.index);
            self.orphans.push(r);
            return;
        };
        if self.attached.contains_key(&r.map) {
            warn!(map = %r.map, "/dev/nbd{}: the map has another device now; not reconnected", r.index);
            return;
        }
        if *wwid != r.wwid || export.size() != r.size {
            warn!(map = %r.map, "/dev/nbd{} was attached to WWID {} of {} bytes, the map now is {wwid} of {} bytes: not reconnected", r.index, r.wwid, r.size, export.size());
            return;
        }
        match kernel::sysfs_size(Path::new(SYS), r.index) {
            Some(s) if s == r.size => {}
            other => {
                info!(map = %r.map, "/dev/nbd{} is gone or changed (size {other:?}); forgetting it", r.index);
                return;
            }
        }
        let lost = self.lost();
        match self.reconnect(&r, export.clone(), settings, &lost).await {
            Ok((stop, stopped)) => {
                info!(map = %r.map, device = %format!("/dev/nbd{}", r.index), connections = r.connections, "reconnected the kernel NBD device");
                if let Err(e) = links::create(Path::new(DEV), &r.map, &r.wwid, r.index) {
                    warn!(map = %r.map, "cannot make the links: {e}");
                }
                self.attached.insert(
                    r.map.clone(),
                    Attached {
                        record: r,
                        _stop: stop,
                        stopped,
                        gen: lost.gen,
                        replaced: Vec::new(),
                    },
                );
            }
            Err(e) => warn!(map = %r.map, "cannot reconnect /dev/nbd{}: {e}", r.index),
        }
    }

    /// `NBD_CMD_RECONFIGURE` with fresh sockets, retried for a few seconds
    /// while the kernel has not yet noticed that the old ones are gone.
    async fn reconnect(
        &self,
        r: &state::Record,
        export: Arc<dyn Export>,
        settings: KernelSettings,
        lost: &Lost,
    ) -> Result<(watch::Sender<bool>, watch::Receiver<bool>), String> {
        let index = r.index;
        let st = blocking(move || {
            Nbd::open()
                .and_then(|mut n| n.status(Some(index)))
                .map_err(err)
        })
        .await?;
        if !st.iter().any(|d| d.index == index && d.connected) {
            return Err("the device is not configured any more".into());
        }
        // One socket per request: each replaces one dead connection.
        let (stop, stopped) = watch::channel(false);
        for conn in 0..r.connections.max(1) {
            let mut attempt = 0;
            loop {
                match replace_one(r, &export, settings, &stopped, lost).await {
                    Ok(()) => break,
                    // The kernel has not noticed yet that an old
                    // connection is gone (or all are live already).
                    Err(e) if attempt < 25 => {
                        attempt += 1;
                        tracing::debug!(conn, "reconfigure: {e}; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(e) if conn > 0 => {
                        warn!(map = %r.map, "/dev/nbd{index}: only {conn} of {} connections replaced: {e}", r.connections);
                        return Ok((stop, stopped));
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok((stop, stopped))
    }

    fn lost(&mut self) -> Lost {
        let gen = self.next_gen;
        self.next_gen += 1;
        Lost {
            notify: self.on_lost.clone(),
            gen,
        }
    }

    /// A connection of map `map`'s device (generation `gen`) ended while
    /// nobody stopped it. If the kernel still has the device, it gets a
    /// fresh connection; if the kernel disconnected it, it is forgotten;
    /// if the map no longer runs (`export` is `None`), its record is kept
    /// for a later start and its connections stop.
    pub async fn conn_lost(
        &mut self,
        map: &str,
        gen: u64,
        export: Option<Arc<dyn Export>>,
        settings: KernelSettings,
    ) {
        let Some(a) = self.attached.get(map) else {
            return;
        };
        if a.gen != gen {
            return;
        }
        let r = a.record.clone();
        let stopped = a.stopped.clone();
        let Some(export) = export else {
            warn!(map = %map, "the map of /dev/nbd{} stopped; the device waits for it (recorded)", r.index);
            self.attached.remove(map);
            self.orphans.push(r);
            self.save();
            return;
        };
        let index = r.index;
        let st = blocking(move || {
            Nbd::open()
                .and_then(|mut n| n.status(Some(index)))
                .map_err(err)
        })
        .await;
        if let Ok(st) = &st {
            if !st.iter().any(|d| d.index == index && d.connected) {
                info!(map = %map, "/dev/nbd{index} was disconnected in the kernel; forgetting it");
                self.attached.remove(map);
                links::remove(Path::new(DEV), map, &r.wwid, index);
                self.save();
                return;
            }
        }
        let now = std::time::Instant::now();
        if let Some(a) = self.attached.get_mut(map) {
            a.replaced
                .retain(|t| now.duration_since(*t) < Duration::from_secs(60));
            if a.replaced.len() >= 10 {
                warn!(map = %map, "/dev/nbd{index}: connections keep failing (10 in a minute); not replacing this one");
                return;
            }
            a.replaced.push(now);
        }
        let lost = Lost {
            notify: self.on_lost.clone(),
            gen,
        };
        let mut last = String::new();
        for _ in 0..10 {
            match replace_one(&r, &export, settings, &stopped, &lost).await {
                Ok(()) => {
                    info!(map = %map, "/dev/nbd{index}: replaced a lost connection");
                    return;
                }
                Err(e) => {
                    last = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        warn!(map = %map, "/dev/nbd{index}: cannot replace a lost connection: {last}");
    }

    /// Detaches every device (`shutdown --detach`); errors are logged.
    pub async fn detach_all(&mut self, force: bool) -> Vec<String> {
        let names: Vec<String> = self.attached.keys().cloned().collect();
        let mut errors = Vec::new();
        for n in names {
            if let Err(e) = self.detach(&n, force).await {
                warn!(map = %n, "detach: {e}");
                errors.push(format!("{n}: {e}"));
            }
        }
        errors
    }
}
