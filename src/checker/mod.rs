//! Path checkers: probes that tell whether a path can reach its LUN.
//!
//! [`check_blocking`] runs one check on a [`PathDev`] and returns a
//! [`CheckResult`] (a [`CheckState`] and a message for the admin). Checks
//! go through the path's fault hook with the `checks` target, on a handle
//! of their own (never the IO handle), and never touch the page cache when
//! the platform allows it.
//!
//! * `directio`: an O_DIRECT read of the first 4096 bytes. If the
//!   filesystem refuses O_DIRECT (EINVAL), a buffered read is used instead
//!   and the first check that does says so in its message.
//! * `readsector0`: the same with the first 512-byte sector (rounded up to
//!   the logical block size on a block device).
//! * `tur`: SCSI TEST UNIT READY over SG_IO on a `scsi` path, retried and
//!   decided like multipath-tools' `tur` checker ([`crate::scsi::tur`]:
//!   standby → ghost, state transition → i/o pending, reservation conflict
//!   → ready). A path without a SCSI target (`file`, `nbd`: see
//!   [`crate::transport::TransportCaps::scsi_target`]) is checked the way
//!   `directio` checks it.
//! * `none`: always up, without touching the device (so faults don't apply).
//!
//! The path's capabilities choose the probe and each check runs exactly
//! one, so a `check` fault (e.g. `delay 300 check`) is applied once per
//! check on every transport.
//!
//! A check that finds the path healthy also revalidates the transport's IO
//! handle ([`crate::transport::Transport::revalidate`]): it opens it if it
//! was not open, and reopens it if IO failed on it or the file was
//! replaced. If that fails, the path is down.
//!
//! The daemon uses [`PathChecker`], which runs the blocking check on
//! tokio's blocking pool with a timeout and never has more than one check
//! of a path in flight: a hung device costs one blocking thread, not one
//! per polling interval, and never delays other paths' checks.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::model::path::CheckState;
use crate::policy::CheckerKind;
use crate::transport::{PathDev, Revalidated, TurResult};

/// Bytes the `directio` (and, on `file` paths, `tur`) checker reads.
pub const DIRECTIO_LEN: usize = 4096;
/// Bytes the `readsector0` checker reads.
pub const SECTOR0_LEN: usize = 512;

/// What a check concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    pub state: CheckState,
    /// For the admin: what was checked, or why the path is down.
    pub message: String,
}

impl CheckResult {
    pub fn new(state: CheckState, message: impl Into<String>) -> Self {
        CheckResult {
            state,
            message: message.into(),
        }
    }
}

impl From<TurResult> for CheckResult {
    fn from(r: TurResult) -> Self {
        CheckResult::new(r.state, r.message)
    }
}

impl fmt::Display for CheckResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.state, self.message)
    }
}

/// SG_IO timeout of a TEST UNIT READY when the caller gives none.
pub const DEFAULT_TUR_TIMEOUT: Duration = Duration::from_secs(30);

/// Run one check of `dev` now, on the calling thread. It blocks as long as
/// the device (or an injected delay or hang) does.
pub fn check_blocking(kind: CheckerKind, dev: &PathDev) -> CheckResult {
    check_blocking_timeout(kind, dev, DEFAULT_TUR_TIMEOUT)
}

/// Like [`check_blocking`], with the timeout SCSI commands are sent with.
///
/// The path's capabilities decide the probe: `tur` sends TEST UNIT READY
/// only where there is a SCSI target
/// ([`crate::transport::TransportCaps::scsi_target`]),
/// else it reads like `directio`. Each check runs one probe, so a `check`
/// fault is applied exactly once per check, whatever the transport.
pub fn check_blocking_timeout(kind: CheckerKind, dev: &PathDev, timeout: Duration) -> CheckResult {
    let (len, how) = match kind {
        CheckerKind::None => return CheckResult::new(CheckState::Up, "none: not checked"),
        CheckerKind::Tur if dev.caps().scsi_target => return tur_check(dev, timeout),
        CheckerKind::Tur => (
            DIRECTIO_LEN,
            " (no SCSI target on this path; checked by a read)",
        ),
        CheckerKind::Directio => (DIRECTIO_LEN, ""),
        CheckerKind::Readsector0 => (SECTOR0_LEN, ""),
    };
    let probe = match dev.probe(len) {
        Ok(p) => p,
        Err(e) => return CheckResult::new(CheckState::Down, format!("{kind}: {e}")),
    };
    let mut message = format!(
        "{kind}{how}: read {} bytes at offset 0 ({})",
        probe.bytes,
        if probe.direct { "direct" } else { "buffered" }
    );
    if let Some(note) = probe.note {
        message.push_str("; ");
        message.push_str(&note);
    }
    revalidated(kind, dev, CheckState::Up, message)
}

/// TEST UNIT READY on a path with a SCSI target.
fn tur_check(dev: &PathDev, timeout: Duration) -> CheckResult {
    let kind = CheckerKind::Tur;
    match dev.tur(timeout) {
        Err(e) => CheckResult::new(CheckState::Down, format!("{kind}: {e}")),
        Ok(r) if matches!(r.state, CheckState::Up | CheckState::Ghost) => {
            revalidated(kind, dev, r.state, r.message)
        }
        Ok(r) => r.into(),
    }
}

/// A check found the path usable: reopen its IO handle if needed.
fn revalidated(
    kind: CheckerKind,
    dev: &PathDev,
    state: CheckState,
    mut message: String,
) -> CheckResult {
    match dev.transport.revalidate() {
        Ok(Revalidated::Unchanged) => {}
        Ok(Revalidated::Reopened(reason)) => {
            message.push_str("; reopened for IO: ");
            message.push_str(&reason);
        }
        Err(e) => {
            return CheckResult::new(
                CheckState::Down,
                format!("{kind}: readable, but cannot be opened for IO: {e}"),
            )
        }
    }
    CheckResult::new(state, message)
}

/// Clears the "check in flight" flag when the blocking check ends (or is
/// dropped without running).
struct InFlight(Arc<AtomicBool>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Checks one path from async code. Clones share the in-flight state.
#[derive(Debug, Clone)]
pub struct PathChecker {
    dev: Arc<PathDev>,
    kind: CheckerKind,
    in_flight: Arc<AtomicBool>,
    started: Arc<AtomicU64>,
}

impl PathChecker {
    pub fn new(dev: Arc<PathDev>, kind: CheckerKind) -> Self {
        PathChecker {
            dev,
            kind,
            in_flight: Arc::new(AtomicBool::new(false)),
            started: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn kind(&self) -> CheckerKind {
        self.kind
    }

    pub fn dev(&self) -> &Arc<PathDev> {
        &self.dev
    }

    /// True while a blocking check runs (e.g. one that timed out and is
    /// still stuck in the device).
    pub fn is_outstanding(&self) -> bool {
        self.in_flight.load(Ordering::Acquire)
    }

    /// How many blocking checks have been started.
    pub fn checks_started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// Check the path, giving up after `timeout`.
    ///
    /// The check runs on tokio's blocking pool. If it takes longer than
    /// `timeout`, the result is [`CheckState::Timeout`] and the check is
    /// left to finish on its own; until it does, further calls return
    /// [`CheckState::Timeout`] ("previous check still outstanding") at once
    /// instead of starting another. Must be called within a tokio runtime.
    pub async fn check(&self, timeout: Duration) -> CheckResult {
        let kind = self.kind;
        if kind == CheckerKind::None {
            return check_blocking(kind, &self.dev);
        }
        if self
            .in_flight
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return CheckResult::new(
                CheckState::Timeout,
                format!("{kind}: previous check still outstanding"),
            );
        }
        self.started.fetch_add(1, Ordering::Relaxed);
        let guard = InFlight(Arc::clone(&self.in_flight));
        let dev = Arc::clone(&self.dev);
        let task = tokio::task::spawn_blocking(move || {
            let _guard = guard;
            check_blocking_timeout(kind, &dev, timeout)
        });
        match tokio::time::timeout(timeout, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => CheckResult::new(CheckState::Down, format!("{kind}: check failed: {e}")),
            Err(_) => CheckResult::new(
                CheckState::Timeout,
                format!("{kind}: no answer within {} ms", timeout.as_millis()),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{FaultSpec, Transport};
    use std::path::Path;
    use std::time::Instant;

    fn dev_for(path: &Path) -> Arc<PathDev> {
        PathDev::file(path)
    }

    fn good_image() -> (tempfile::TempDir, Arc<PathDev>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lun0.img");
        std::fs::write(&path, vec![1u8; 64 * 1024]).unwrap();
        let dev = dev_for(&path);
        (dir, dev)
    }

    fn fault(dev: &PathDev, s: &str) {
        dev.faults.apply(FaultSpec::parse(s).unwrap());
    }

    #[test]
    fn up_on_a_good_file() {
        let (_d, dev) = good_image();
        for kind in CheckerKind::ALL {
            let r = check_blocking(kind, &dev);
            assert_eq!(r.state, CheckState::Up, "{kind}: {}", r.message);
            assert!(r.message.starts_with(kind.as_str()), "{}", r.message);
        }
        let r = check_blocking(CheckerKind::Readsector0, &dev);
        assert!(r.message.contains("read 512 bytes"), "{}", r.message);
        let r = check_blocking(CheckerKind::Directio, &dev);
        assert!(r.message.contains("read 4096 bytes"), "{}", r.message);
        let r = check_blocking(CheckerKind::Tur, &dev);
        assert!(r.message.contains("no SCSI target"), "{}", r.message);
    }

    #[test]
    fn down_on_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lun0.img");
        let dev = dev_for(&path);
        for kind in [
            CheckerKind::Directio,
            CheckerKind::Readsector0,
            CheckerKind::Tur,
        ] {
            let r = check_blocking(kind, &dev);
            assert_eq!(r.state, CheckState::Down);
            assert!(
                r.message.contains("No such file or directory"),
                "{}",
                r.message
            );
            assert!(
                r.message.contains(&path.display().to_string()),
                "{}",
                r.message
            );
        }
        assert_eq!(
            check_blocking(CheckerKind::None, &dev).state,
            CheckState::Up
        );
    }

    #[test]
    fn up_again_reopens_the_transport() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lun0.img");
        let dev = dev_for(&path);
        assert!(!dev.transport.is_open());
        let mut buf = [0u8; 8];
        assert!(dev.read_at(&mut buf, 0).is_err());
        std::fs::write(&path, vec![5u8; 4096]).unwrap();
        let r = check_blocking(CheckerKind::Directio, &dev);
        assert_eq!(r.state, CheckState::Up);
        assert!(r.message.contains("reopened"), "{}", r.message);
        dev.read_at(&mut buf, 0).unwrap();
        assert_eq!(buf, [5u8; 8]);
        let r = check_blocking(CheckerKind::Directio, &dev);
        assert!(!r.message.contains("reopened"), "{}", r.message);
    }

    #[test]
    fn down_under_an_error_check_fault() {
        let (_d, dev) = good_image();
        fault(&dev, "error check");
        let r = check_blocking(CheckerKind::Directio, &dev);
        assert_eq!(r.state, CheckState::Down);
        assert!(r.message.contains("injected fault"), "{}", r.message);
        // IO is not affected by a check fault.
        let mut buf = [0u8; 512];
        dev.read_at(&mut buf, 0).unwrap();
        // The `none` checker does not touch the device.
        assert_eq!(
            check_blocking(CheckerKind::None, &dev).state,
            CheckState::Up
        );
        fault(&dev, "clear");
        assert_eq!(
            check_blocking(CheckerKind::Directio, &dev).state,
            CheckState::Up
        );
    }

    #[test]
    fn io_faults_do_not_fail_checks() {
        let (_d, dev) = good_image();
        fault(&dev, "error read,write");
        assert_eq!(
            check_blocking(CheckerKind::Directio, &dev).state,
            CheckState::Up
        );
        let mut buf = [0u8; 512];
        let e = dev.read_at(&mut buf, 0).unwrap_err();
        assert!(e.is_path_failure());
        assert!(dev.write_at(&buf, 0, false).is_err());
        assert!(dev.flush().is_err());
        assert!(dev.trim(0, 512).is_err());
        assert!(dev.write_zeroes(0, 512, true, false).is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn async_check_up_and_down() {
        let (_d, dev) = good_image();
        let c = PathChecker::new(Arc::clone(&dev), CheckerKind::Directio);
        let r = c.check(Duration::from_secs(10)).await;
        assert_eq!(r.state, CheckState::Up, "{}", r.message);
        fault(&dev, "error check");
        assert_eq!(
            c.check(Duration::from_secs(10)).await.state,
            CheckState::Down
        );
        assert_eq!(c.checks_started(), 2);
        assert!(!c.is_outstanding());
        let none = PathChecker::new(dev, CheckerKind::None);
        assert_eq!(
            none.check(Duration::from_secs(1)).await.state,
            CheckState::Up
        );
        assert_eq!(none.checks_started(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hung_check_times_out_without_piling_up() {
        let (_d, dev) = good_image();
        let (_d2, other) = good_image();
        // Release the hang even if an assertion fails, or the runtime's
        // shutdown would wait for the stuck thread forever.
        struct ClearOnDrop(Arc<PathDev>);
        impl Drop for ClearOnDrop {
            fn drop(&mut self) {
                self.0.faults.clear();
            }
        }
        let _release = ClearOnDrop(Arc::clone(&dev));
        fault(&dev, "hang check");
        let c = PathChecker::new(Arc::clone(&dev), CheckerKind::Directio);
        let healthy = PathChecker::new(other, CheckerKind::Directio);

        let r = c.check(Duration::from_millis(100)).await;
        assert_eq!(r.state, CheckState::Timeout, "{}", r.message);
        assert_eq!(c.checks_started(), 1);
        assert!(c.is_outstanding());

        // While stuck: answered at once, no second blocking check.
        let t0 = Instant::now();
        let r = c.check(Duration::from_secs(30)).await;
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        assert_eq!(r.state, CheckState::Timeout);
        assert!(
            r.message.contains("previous check still outstanding"),
            "{}",
            r.message
        );
        assert_eq!(c.checks_started(), 1);

        // Other paths are unaffected.
        assert_eq!(
            healthy.check(Duration::from_secs(10)).await.state,
            CheckState::Up
        );

        // Release the hang; once the stuck check ends, checks resume.
        dev.faults.clear();
        let t0 = Instant::now();
        while c.is_outstanding() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "stuck check never finished"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let r = c.check(Duration::from_secs(10)).await;
        assert_eq!(r.state, CheckState::Up, "{}", r.message);
        assert_eq!(c.checks_started(), 2);
    }

    #[test]
    fn scsi_path_checks() {
        use crate::transport::ScsiTarget;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sdz");
        std::fs::write(&path, vec![1u8; 64 * 1024]).unwrap();
        let dev = PathDev::new(Transport::scsi(ScsiTarget {
            devnode: path,
            hctl: "1:0:0:0".into(),
            block_size: Some(4096),
            timeout: None,
        }));
        let r = check_blocking(CheckerKind::Readsector0, &dev);
        assert_eq!(r.state, CheckState::Up, "{}", r.message);
        assert!(r.message.contains("read 4096 bytes"), "{}", r.message);
        let r = check_blocking(CheckerKind::Directio, &dev);
        assert_eq!(r.state, CheckState::Up, "{}", r.message);
        // tur really sends TEST UNIT READY: a regular file refuses SG_IO.
        let r = check_blocking(CheckerKind::Tur, &dev);
        assert_eq!(r.state, CheckState::Down, "{}", r.message);
        assert!(r.message.contains("SG_IO"), "{}", r.message);
        fault(&dev, "error check");
        let r = check_blocking(CheckerKind::Tur, &dev);
        assert_eq!(r.state, CheckState::Down);
        assert!(r.message.contains("injected"), "{}", r.message);
        assert_eq!(
            check_blocking(CheckerKind::None, &dev).state,
            CheckState::Up
        );
    }

    /// An NBD path to an in-crate server of a 1 MiB in-memory export,
    /// served until the returned runtime is dropped.
    fn nbd_dev() -> (tokio::runtime::Runtime, tempfile::TempDir, Arc<PathDev>) {
        use crate::export::{Export, ExportSet};
        use crate::nbd::memexport::{ExportList, MemExport};
        use crate::nbd::{NbdServer, ServerConfig};
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("nbd.sock");
        let exports: Vec<Arc<dyn Export>> = vec![Arc::new(MemExport::new("lun0", 1 << 20))];
        let set: Arc<dyn ExportSet> = Arc::new(ExportList::new(exports));
        let cfg = ServerConfig {
            unix: Some(sock.clone()),
            tcp: None,
            ..ServerConfig::default()
        };
        let server = rt.block_on(NbdServer::bind(&cfg, set)).unwrap();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        rt.spawn(async move {
            let _stop = stop;
            server.serve(stopped).await
        });
        let uri =
            crate::nbd::uri::NbdUri::parse(&format!("nbd+unix:///lun0?socket={}", sock.display()))
                .unwrap();
        let dev = Arc::new(PathDev::new(Transport::Nbd(
            crate::transport::nbd::NbdTransport::new(uri, Duration::from_secs(10)),
        )));
        (rt, dir, dev)
    }

    fn scsi_on_file(dir: &Path) -> Arc<PathDev> {
        use crate::transport::ScsiTarget;
        let path = dir.join("sdz");
        std::fs::write(&path, vec![1u8; 64 * 1024]).unwrap();
        Arc::new(PathDev::new(Transport::scsi(ScsiTarget {
            devnode: path,
            hctl: "1:0:0:0".into(),
            block_size: Some(512),
            timeout: None,
        })))
    }

    #[test]
    fn nbd_path_checks() {
        let (_rt, _d, dev) = nbd_dev();
        assert!(!dev.caps().scsi_target);
        for kind in CheckerKind::ALL {
            let r = check_blocking(kind, &dev);
            assert_eq!(r.state, CheckState::Up, "{kind}: {}", r.message);
        }
        let r = check_blocking(CheckerKind::Tur, &dev);
        assert!(r.message.contains("no SCSI target"), "{}", r.message);
        fault(&dev, "error check");
        let r = check_blocking(CheckerKind::Tur, &dev);
        assert_eq!(r.state, CheckState::Down);
        assert!(r.message.contains("injected"), "{}", r.message);
    }

    /// A `delay N check` fault makes a check take about N, on every
    /// transport and with every checker that touches the device (it was
    /// applied twice on NBD paths: before asking for a SCSI target, and
    /// again before the read).
    #[test]
    fn a_delay_check_fault_is_applied_once_per_check() {
        // Twice the delay would mean the fault fired twice; the margin
        // below that is wide so a loaded machine cannot fake it.
        let delay = Duration::from_millis(600);
        let (_d, file) = good_image();
        let dir = tempfile::tempdir().unwrap();
        let scsi = scsi_on_file(dir.path());
        let (_rt, _nd, nbd) = nbd_dev();
        for (name, dev) in [("file", &file), ("scsi", &scsi), ("nbd", &nbd)] {
            // Connected and opened before timing.
            assert_eq!(
                check_blocking(CheckerKind::Directio, dev).state,
                CheckState::Up,
                "{name}"
            );
            fault(dev, "delay 600 check");
            for kind in [
                CheckerKind::Directio,
                CheckerKind::Readsector0,
                CheckerKind::Tur,
            ] {
                let t0 = Instant::now();
                let r = check_blocking(kind, dev);
                let took = t0.elapsed();
                assert!(
                    took >= delay && took < delay * 2 - Duration::from_millis(100),
                    "{name} {kind}: a check took {took:?} under a {delay:?} check delay: {}",
                    r.message
                );
            }
        }
    }

    #[test]
    fn path_dev_seeds_differ() {
        let a = PathDev::new(Transport::file("/nonexistent/a"));
        let b = PathDev::new(Transport::file("/nonexistent/a"));
        a.faults.apply(FaultSpec::parse("flaky 50").unwrap());
        b.faults.apply(FaultSpec::parse("flaky 50").unwrap());
        let mut buf = [0u8; 1];
        let run = |d: &PathDev, buf: &mut [u8]| {
            (0..64)
                .map(|_| matches!(d.read_at(buf, 0), Err(e) if e.to_string().contains("injected")))
                .collect::<Vec<_>>()
        };
        assert_ne!(run(&a, &mut buf), run(&b, &mut buf));
    }
}
