//! The systemd watchdog (`WatchdogSec=`): WATCHDOG=1 is sent every half
//! interval, but only after the supervisor answered a ping within that
//! half interval. A supervisor loop that is stuck stops the pings being
//! answered, the watchdog starves and systemd restarts the service
//! (`Restart=on-failure`). While the supervisor handles a slow message
//! (a reconfigure preparing many paths) it still answers pings, for at
//! most [`super::supervisor::BUSY_GRACE`].

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::supervisor::Msg;
use super::Daemon;

/// The watchdog interval systemd asked for: `WATCHDOG_USEC` (µs), for this
/// process if `WATCHDOG_PID` is set (sd_watchdog_enabled(3) semantics:
/// without `WATCHDOG_PID` the interval applies to whoever reads it).
pub fn interval(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    match pid {
        Some(p) if p.trim().parse::<u32>().ok() != Some(me) => None,
        _ => Some(Duration::from_micros(usec)),
    }
}

/// The interval from the environment.
pub fn from_env() -> Option<Duration> {
    interval(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

/// Feeds the watchdog every `every / 2` while the supervisor answers.
pub fn spawn(
    daemon: Arc<Daemon>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let half = (every / 2).max(Duration::from_millis(10));
    info!(
        interval_ms = every.as_millis() as u64,
        "systemd watchdog enabled: WATCHDOG=1 every {} ms while the supervisor answers",
        half.as_millis()
    );
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(half);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut starving = false;
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tick.tick() => {}
            }
            let (tx, rx) = oneshot::channel();
            if daemon.tx.send(Msg::Ping(tx)).is_err() {
                break;
            }
            match tokio::time::timeout(half, rx).await {
                Ok(Ok(())) => {
                    if starving {
                        info!("the supervisor answers again; feeding the watchdog");
                        starving = false;
                    }
                    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
                }
                _ if *shutdown.borrow() => break,
                _ => {
                    if !starving {
                        warn!(
                            "the supervisor did not answer within {} ms; not feeding the systemd watchdog",
                            half.as_millis()
                        );
                        starving = true;
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_follows_sd_watchdog_enabled() {
        assert_eq!(interval(None, None, 5), None);
        assert_eq!(
            interval(Some("2000000"), None, 5),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            interval(Some("2000000"), Some("5"), 5),
            Some(Duration::from_secs(2))
        );
        assert_eq!(interval(Some("2000000"), Some("6"), 5), None);
        assert_eq!(interval(Some("0"), None, 5), None);
        assert_eq!(interval(Some("soon"), None, 5), None);
    }
}
