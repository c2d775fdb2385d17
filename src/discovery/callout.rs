//! `getuid_callout`: the deprecated multipath-tools keyword naming a
//! program that prints a path's WWID (XenServer's multipath.conf names
//! `/sbin/scsi_id -g -u -s /block/%n`).
//!
//! A callout that runs `scsi_id` is not run: umpath computes the same
//! identifier itself (see [`crate::scsi::wwid`]). Any other callout runs
//! with `%n` replaced by the kernel device name, under a timeout, and its
//! first output line becomes the WWID.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a callout may run.
pub const CALLOUT_TIMEOUT: Duration = Duration::from_secs(5);

/// The command line with `%n` substituted (split on white space, as
/// multipath-tools does).
pub fn argv(callout: &str, devname: &str) -> Vec<String> {
    callout
        .split_whitespace()
        .map(|w| w.replace("%n", devname))
        .collect()
}

/// True if the callout runs scsi_id (any path to it).
pub fn is_scsi_id(callout: &str) -> bool {
    callout
        .split_whitespace()
        .next()
        .and_then(|p| p.rsplit('/').next())
        .is_some_and(|b| b == "scsi_id")
}

/// The WWID the callout gives for `devname`: `Ok(None)` if it is scsi_id
/// (use the computed WWID), `Ok(Some(id))` from the program's output, or
/// an error saying what went wrong.
pub fn run(callout: &str, devname: &str, timeout: Duration) -> Result<Option<String>, String> {
    if is_scsi_id(callout) {
        return Ok(None);
    }
    let args = argv(callout, devname);
    let Some((prog, rest)) = args.split_first() else {
        return Err("getuid_callout is empty".to_string());
    };
    let mut child = Command::new(prog)
        .args(rest)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("getuid_callout {prog}: {e}"))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "getuid_callout {prog}: no answer within {timeout:?}"
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("getuid_callout {prog}: {e}")),
        }
    };
    let mut out = String::new();
    if let Some(mut so) = child.stdout.take() {
        let _ = so.by_ref().take(4096).read_to_string(&mut out);
    }
    if !status.success() {
        return Err(format!("getuid_callout {prog} failed ({status})"));
    }
    match out.lines().next().map(str::trim) {
        Some(id) if !id.is_empty() => Ok(Some(id.to_string())),
        _ => Err(format!("getuid_callout {prog} printed no identifier")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scsi_id_callouts_are_recognised_and_not_run() {
        let xen = "/sbin/scsi_id -g -u -s /block/%n";
        assert!(is_scsi_id(xen));
        assert!(is_scsi_id("scsi_id --whitelisted --device=/dev/%n"));
        assert!(!is_scsi_id("/usr/local/bin/my_id %n"));
        assert_eq!(run(xen, "sdb", CALLOUT_TIMEOUT), Ok(None));
        assert_eq!(
            argv(xen, "sdb"),
            vec!["/sbin/scsi_id", "-g", "-u", "-s", "/block/sdb"]
        );
    }

    #[test]
    fn other_callouts_run_with_the_device_name() {
        assert_eq!(
            run("/bin/echo 3600abc-%n", "sdc", CALLOUT_TIMEOUT),
            Ok(Some("3600abc-sdc".into()))
        );
        assert!(run("/bin/false", "sdc", CALLOUT_TIMEOUT)
            .unwrap_err()
            .contains("failed"));
        assert!(run("/bin/true", "sdc", CALLOUT_TIMEOUT)
            .unwrap_err()
            .contains("no identifier"));
        assert!(run("/nonexistent/prog %n", "sdc", CALLOUT_TIMEOUT)
            .unwrap_err()
            .contains("/nonexistent/prog"));
        assert!(run("", "sdc", CALLOUT_TIMEOUT)
            .unwrap_err()
            .contains("empty"));
        let e = run("/bin/sleep 5", "sdc", Duration::from_millis(200)).unwrap_err();
        assert!(e.contains("no answer"), "{e}");
    }
}
