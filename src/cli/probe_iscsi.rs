//! `umpath probe iscsi://[USER[%SECRET]@]HOST[:PORT][/IQN[/LUN]]`: what
//! `xe sr-probe type=lvmoiscsi` tells an admin, from umpath's own
//! initiator. Without an IQN, the targets and portals SendTargets
//! reports; with one, each LUN's number, vendor, product, revision,
//! size, serial and SCSIid, and the device rule and map the configuration
//! puts it in.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;

use crate::config::{Config, PathIdentity, SecretSource};
use crate::daemon::assemble::map_name;
use crate::iscsi::chap::Secret;
use crate::iscsi::login::{ChapCredentials, MutualChap, OperationalParams};
use crate::iscsi::text::TargetRecord;
use crate::iscsi::url::IscsiUrl;
use crate::transport::iscsi::conn::{Conn, LoginTarget, ABORT_WAIT, PING_INTERVAL, PING_TIMEOUT};
use crate::transport::iscsi::local::{self, MACHINE_ID_FILE, OPEN_ISCSI_NAME_FILE};
use crate::transport::iscsi::{IscsiTransport, LunInfo, LOGIN_TIMEOUT};

/// What `umpath probe` takes for an iSCSI probe.
#[derive(Debug, Clone, Default)]
pub struct IscsiProbeArgs {
    pub url: String,
    /// The CHAP secret, from a file readable by root only (instead of
    /// `USER%SECRET@` in the URL).
    pub chap_secret_file: Option<PathBuf>,
    /// Mutual CHAP: the target's user name and secret file.
    pub mutual_user: Option<String>,
    pub mutual_secret_file: Option<PathBuf>,
    /// Our initiator name (default: open-iscsi's, else generated).
    pub initiator_name: Option<String>,
    pub json: bool,
}

/// One LUN of a target and what the configuration makes of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LunRow {
    pub lun: u16,
    pub vendor: String,
    pub product: String,
    pub revision: String,
    pub size: u64,
    pub serial: String,
    /// scsi_id's WWID: XenServer's SCSIid.
    pub scsi_id: String,
    pub device_rule: Option<String>,
    pub map: Option<String>,
    pub blacklisted: Option<String>,
    /// Why this LUN could not be read (then the rest is empty).
    pub error: Option<String>,
}

fn lun_row(cfg: &Config, lun: u16, info: Result<LunInfo, String>) -> LunRow {
    let info = match info {
        Ok(i) => i,
        Err(e) => {
            return LunRow {
                lun,
                vendor: String::new(),
                product: String::new(),
                revision: String::new(),
                size: 0,
                serial: String::new(),
                scsi_id: String::new(),
                device_rule: None,
                map: None,
                blacklisted: None,
                error: Some(e),
            }
        }
    };
    let id = PathIdentity {
        vendor: &info.vendor,
        product: &info.product,
        revision: &info.revision,
        wwid: &info.wwid,
    };
    let device_rule = cfg.matching_devices(&id).first().map(|e| {
        if e.builtin {
            format!("built-in hwtable {}", e.describe())
        } else {
            format!("{} {}", e.span, e.describe())
        }
    });
    let blacklisted = cfg.blacklisted(&id);
    let map = blacklisted.is_none().then(|| map_name(cfg, &id));
    LunRow {
        lun,
        vendor: info.vendor.clone(),
        product: info.product.clone(),
        revision: info.revision.clone(),
        size: info.size(),
        serial: info.serial.clone(),
        scsi_id: info.wwid.clone(),
        device_rule,
        map,
        blacklisted,
        error: None,
    }
}

fn table(head: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut lines: Vec<Vec<String>> = vec![head.iter().map(|s| s.to_string()).collect()];
    lines.extend(rows);
    crate::daemon::show::columns(&lines, 2)
}

/// The targets table.
pub fn targets_table(targets: &[TargetRecord]) -> String {
    let rows = targets
        .iter()
        .flat_map(|t| {
            let portals: Vec<String> = if t.portals.is_empty() {
                vec!["-".to_string()]
            } else {
                t.portals
                    .iter()
                    .map(|p| {
                        if p.address.contains(':') {
                            format!("[{}]:{},{}", p.address, p.port, p.tpgt)
                        } else {
                            format!("{}:{},{}", p.address, p.port, p.tpgt)
                        }
                    })
                    .collect()
            };
            portals
                .into_iter()
                .map(|p| vec![t.name.clone(), p])
                .collect::<Vec<_>>()
        })
        .collect();
    let mut out = table(&["TARGET", "PORTAL,TPGT"], rows);
    if targets.is_empty() {
        out.push_str("(no targets)\n");
    }
    out
}

/// The LUNs table (errors after it).
pub fn luns_table(rows: &[LunRow]) -> String {
    let body = rows
        .iter()
        .filter(|r| r.error.is_none())
        .map(|r| {
            vec![
                r.lun.to_string(),
                r.vendor.clone(),
                r.product.clone(),
                r.revision.clone(),
                r.size.to_string(),
                if r.serial.is_empty() {
                    "-".into()
                } else {
                    r.serial.clone()
                },
                r.scsi_id.clone(),
                r.map.clone().unwrap_or_else(|| "-".into()),
                r.device_rule.clone().unwrap_or_else(|| "defaults".into()),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "LUN",
            "VENDOR",
            "PRODUCT",
            "REV",
            "SIZE",
            "SERIAL",
            "SCSIID",
            "MAP",
            "DEVICE RULE",
        ],
        body,
    );
    for r in rows {
        if let Some(why) = &r.blacklisted {
            out.push_str(&format!("LUN {}: not used: {why}\n", r.lun));
        }
        if let Some(e) = &r.error {
            out.push_str(&format!("LUN {}: {e}\n", r.lun));
        }
    }
    out
}

fn secret_file(path: &Path) -> Result<Secret, String> {
    local::secret(&SecretSource::File(path.to_path_buf()))
        .map(|s| Secret::new(s.into_bytes()))
        .map_err(|e| e.to_string())
}

/// The login target the arguments describe.
pub fn login_target(args: &IscsiProbeArgs, url: &IscsiUrl) -> Result<LoginTarget, String> {
    let secret = match (&url.secret, &args.chap_secret_file) {
        (Some(_), Some(_)) => {
            return Err(
                "give the CHAP secret in the URL or with --chap-secret-file, not both".to_string(),
            )
        }
        (Some(s), None) => Some(Secret::new(s.clone().into_bytes())),
        (None, Some(f)) => Some(secret_file(f)?),
        (None, None) => None,
    };
    let mutual = match (&args.mutual_user, &args.mutual_secret_file) {
        (Some(user), Some(f)) => Some(MutualChap {
            user: user.clone(),
            secret: secret_file(f)?,
        }),
        (None, None) => None,
        _ => return Err("--mutual-user and --mutual-secret-file go together".to_string()),
    };
    let chap = match (&url.user, secret) {
        (Some(user), Some(secret)) => Some(ChapCredentials {
            user: user.clone(),
            secret,
            mutual,
        }),
        (None, None) if mutual.is_none() => None,
        (None, None) => return Err("mutual CHAP needs one-way CHAP (USER%SECRET@)".to_string()),
        (Some(u), None) => {
            return Err(format!(
                "CHAP user {u:?} without a secret: iscsi://{u}%SECRET@... or --chap-secret-file"
            ))
        }
        (None, Some(_)) => {
            return Err("a CHAP secret without a user: iscsi://USER@... ".to_string())
        }
    };
    let initiator_name = args.initiator_name.clone().unwrap_or_else(|| {
        local::initiator_name(Path::new(OPEN_ISCSI_NAME_FILE), Path::new(MACHINE_ID_FILE))
    });
    Ok(LoginTarget {
        portal: url.portal.clone(),
        target: url.target.clone(),
        initiator_name,
        chap,
        params: OperationalParams::default(),
        ping: (PING_INTERVAL, PING_TIMEOUT),
        abort_wait: ABORT_WAIT,
    })
}

pub fn run(args: &IscsiProbeArgs, cfg: &Config) -> ExitCode {
    match probe(args, cfg) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("umpath: {e}");
            ExitCode::FAILURE
        }
    }
}

fn probe(args: &IscsiProbeArgs, cfg: &Config) -> Result<String, String> {
    let url = IscsiUrl::parse(&args.url).map_err(|e| e.to_string())?;
    let t = login_target(args, &url)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    let json = |v: serde_json::Value| {
        serde_json::to_string_pretty(&v)
            .map(|s| s + "\n")
            .map_err(|e| e.to_string())
    };
    let Some(_) = &url.target else {
        // Discovery session: SendTargets.
        let conn = Conn::connect(&t, rt.handle(), LOGIN_TIMEOUT).map_err(|e| e.to_string())?;
        let targets = conn
            .send_targets(LOGIN_TIMEOUT)
            .map_err(|e| format!("SendTargets at {}: {e}", url.portal))?;
        drop(conn);
        return if args.json {
            json(serde_json::json!({ "portal": url.portal.to_string(), "targets": targets }))
        } else {
            Ok(targets_table(&targets))
        };
    };
    let io_timeout = Duration::from_secs(30);
    let rows: Vec<LunRow> = match url.lun {
        Some(lun) => {
            let lun = u16::try_from(lun).map_err(|_| format!("LUN {lun} is out of range"))?;
            let tr = IscsiTransport::new(t, lun, rt.handle().clone(), io_timeout);
            let info = tr.identify().map_err(|e| e.source.to_string())?;
            vec![lun_row(cfg, lun, Ok(info))]
        }
        None => {
            let tr = IscsiTransport::new(t, 0, rt.handle().clone(), io_timeout);
            tr.luns()
                .map_err(|e| e.source.to_string())?
                .into_iter()
                // LUN 0 of many targets is a controller, not a disk.
                .filter(|(_, i)| {
                    !matches!(i, Err(e) if e.class == crate::transport::ErrorClass::Unsupported)
                })
                .map(|(l, i)| lun_row(cfg, l, i.map_err(|e| e.source.to_string())))
                .collect()
        }
    };
    if args.json {
        json(serde_json::json!({
            "portal": url.portal.to_string(),
            "target": url.target,
            "luns": rows,
        }))
    } else {
        Ok(luns_table(&rows))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_from_the_url_or_a_file_never_both() {
        let args = IscsiProbeArgs::default();
        let u = IscsiUrl::parse("iscsi://u%s@h/iqn.2026-11.com.example:x").unwrap();
        let t = login_target(&args, &u).unwrap();
        assert_eq!(t.chap.as_ref().map(|c| c.user.as_str()), Some("u"));
        assert!(!format!("{t:?}").contains("%s@"));
        let with_file = IscsiProbeArgs {
            chap_secret_file: Some("/nonexistent".into()),
            ..IscsiProbeArgs::default()
        };
        assert!(login_target(&with_file, &u)
            .unwrap_err()
            .contains("not both"));
        let u = IscsiUrl::parse("iscsi://u@h").unwrap();
        assert!(login_target(&args, &u)
            .unwrap_err()
            .contains("without a secret"));
        let u = IscsiUrl::parse("iscsi://h").unwrap();
        assert!(login_target(&args, &u).unwrap().chap.is_none());
    }
}
