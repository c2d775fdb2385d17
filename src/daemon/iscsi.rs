//! `iscsi` paths at planning time: log in, ask the LUN what it is, and
//! keep the logged-in transport for the path (blocking work: callers run
//! it off the runtime's threads). A path whose portal cannot be reached
//! yet is retried every polling interval by [`retry`] until it logs in.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{info, warn};

use super::assemble::{decl_keys, IscsiLogin, IscsiLun};
use super::supervisor::Msg;
use crate::config::{Config, PathDecl};
use crate::iscsi::chap::Secret;
use crate::iscsi::login::{ChapCredentials, MutualChap, OperationalParams};
use crate::transport::iscsi::conn::{LoginTarget, ABORT_WAIT, PING_INTERVAL, PING_TIMEOUT};
use crate::transport::iscsi::local::{self, MACHINE_ID_FILE, OPEN_ISCSI_NAME_FILE};
use crate::transport::iscsi::IscsiTransport;

/// The timeout of each command on an iSCSI path when io_timeout is off.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = crate::engine::DEFAULT_IO_TIMEOUT;

/// The transport a declared `iscsi` path describes (secrets read now).
pub fn transport_for(
    d: &PathDecl,
    rt: &tokio::runtime::Handle,
    io_timeout: Option<Duration>,
) -> Result<IscsiTransport, String> {
    let Some(i) = d.iscsi() else {
        return Err(format!("path {} is not a valid iscsi path", d.name));
    };
    let secret = |s| {
        local::secret(s)
            .map(|s| Secret::new(s.into_bytes()))
            .map_err(|e| e.to_string())
    };
    let chap = match &i.chap {
        None => None,
        Some(c) => Some(ChapCredentials {
            user: c.user.clone(),
            secret: secret(&c.secret)?,
            mutual: match &i.mutual {
                None => None,
                Some(m) => Some(MutualChap {
                    user: m.user.clone(),
                    secret: secret(&m.secret)?,
                }),
            },
        }),
    };
    let initiator_name = i.initiator_name.clone().unwrap_or_else(|| {
        local::initiator_name(Path::new(OPEN_ISCSI_NAME_FILE), Path::new(MACHINE_ID_FILE))
    });
    let lun = u16::try_from(i.lun).map_err(|_| format!("LUN {} is out of range", i.lun))?;
    Ok(IscsiTransport::new(
        LoginTarget {
            portal: i.portal,
            target: Some(i.target),
            initiator_name,
            chap,
            params: OperationalParams {
                header_digest: i.digests,
                data_digest: i.digests,
                ..OperationalParams::default()
            },
            ping: (PING_INTERVAL, PING_TIMEOUT),
            abort_wait: ABORT_WAIT,
        },
        lun,
        rt.clone(),
        io_timeout.unwrap_or(DEFAULT_COMMAND_TIMEOUT),
    ))
}

/// Logs `d` in and asks its LUN what it is.
pub fn login(
    d: &PathDecl,
    rt: &tokio::runtime::Handle,
    io_timeout: Option<Duration>,
) -> IscsiLogin {
    let lun = transport_for(d, rt, io_timeout).and_then(|t| {
        let info = t.identify().map_err(|e| e.source.to_string())?;
        Ok(IscsiLun {
            vendor: info.vendor,
            product: info.product,
            revision: info.revision,
            serial: info.serial,
            wwid: info.wwid,
            transport: Arc::new(t),
        })
    });
    IscsiLogin {
        name: d.name.clone(),
        keys: decl_keys(d),
        lun,
    }
}

fn io_timeout(cfg: &Config) -> Option<Duration> {
    match cfg.io_timeout() {
        0 => None,
        s => Some(Duration::from_secs(u64::from(s))),
    }
}

/// Logins for every `iscsi` path of `cfg`, in parallel: those in `known`
/// (running paths, declared the same way) are kept as they are.
pub fn login_all(
    cfg: &Config,
    rt: &tokio::runtime::Handle,
    known: &[IscsiLogin],
) -> Vec<IscsiLogin> {
    let timeout = io_timeout(cfg);
    std::thread::scope(|s| {
        let handles: Vec<_> = cfg
            .paths()
            .iter()
            .filter(|d| d.transport == "iscsi")
            .map(|d| {
                let kept = known
                    .iter()
                    .find(|k| k.name == d.name && k.keys == decl_keys(d) && k.lun.is_ok())
                    .cloned();
                s.spawn(move || {
                    kept.unwrap_or_else(|| {
                        let l = login(d, rt, timeout);
                        match &l.lun {
                            Ok(lun) => info!(
                                path = %l.name,
                                wwid = %lun.wwid,
                                session = %lun.transport.session_text(),
                                "iSCSI path logged in"
                            ),
                            Err(e) => warn!(path = %l.name, "iSCSI path not logged in: {e}"),
                        }
                        l
                    })
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    })
}

/// Tries the named paths' logins every polling interval until each has
/// logged in, and hands each success to the supervisor.
pub async fn retry(
    mut names: Vec<String>,
    cfg: Arc<Config>,
    tx: mpsc::UnboundedSender<Msg>,
    polling: Arc<arc_swap::ArcSwap<crate::daemon::lifecycle::Polling>>,
) {
    let rt = tokio::runtime::Handle::current();
    while !names.is_empty() {
        tokio::time::sleep(polling.load().min.max(Duration::from_secs(1))).await;
        let mut still = Vec::new();
        for name in names {
            let Some(d) = cfg.path(&name).cloned() else {
                continue;
            };
            let rt = rt.clone();
            let timeout = io_timeout(&cfg);
            let l = tokio::task::spawn_blocking(move || login(&d, &rt, timeout)).await;
            match l {
                Ok(l) if l.lun.is_ok() => {
                    if tx.send(Msg::IscsiUp(l)).is_err() {
                        return;
                    }
                }
                _ => still.push(name),
            }
        }
        names = still;
    }
}
