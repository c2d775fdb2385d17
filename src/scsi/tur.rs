//! The TEST UNIT READY verdict, decided like multipath-tools' `tur`
//! checker decides it (facts from its `tur.c`):
//!
//! * the SG_IO ioctl itself failed: down (ENOTTY: the device does not
//!   take SCSI commands at all; also down here, saying so);
//! * status RESERVATION CONFLICT (SCSI-3 arrays may answer TUR so): up;
//! * SG_IO reports nothing wrong (status, host and driver bytes clear):
//!   up;
//! * a host byte other than DID_OK, DID_NO_CONNECT, DID_BAD_TARGET,
//!   DID_ABORT or DID_TRANSPORT_FAILFAST: retried;
//! * sense key UNIT ATTENTION: retried;
//! * NOT READY with ASC/ASCQ 04/0B (target port in standby state): ghost;
//! * NOT READY with 04/0A (asymmetric access state transition): pending;
//! * ILLEGAL REQUEST with 25/00 (LUN not supported: unmapped at the
//!   target): down, "disconnected";
//! * anything else: down.
//!
//! At most [`MAX_TRIES`] commands are sent; when the last one would be
//! retried, the decision falls through to the rules after the retry (so a
//! unit attention that never clears ends as down).

use super::sense::{Sense, SenseKey};
use super::{host, status};
use crate::model::path::CheckState;

/// Commands sent at most per check (the first and four retries).
pub const MAX_TRIES: u32 = 5;

/// `SG_INFO_OK_MASK` / `SG_INFO_CHECK`: set by the kernel when the status,
/// host or driver byte is not zero.
pub const SG_INFO_CHECK: u32 = 0x1;

/// What one TEST UNIT READY came back with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TurOutcome {
    /// The SG_IO ioctl failed; `not_supported` for ENOTTY.
    IoctlFailed { not_supported: bool, error: String },
    /// The command completed (well or not).
    Completed {
        status: u8,
        host_status: u16,
        driver_status: u16,
        /// SG_IO's `info` field.
        info: u32,
        /// The `sb_len_wr` bytes of sense data.
        sense: Vec<u8>,
    },
}

impl TurOutcome {
    /// A clean completion (GOOD, no errors).
    pub fn good() -> TurOutcome {
        TurOutcome::Completed {
            status: status::GOOD,
            host_status: host::DID_OK,
            driver_status: 0,
            info: 0,
            sense: Vec::new(),
        }
    }

    /// CHECK CONDITION with `sense`.
    pub fn check_condition(sense: Vec<u8>) -> TurOutcome {
        TurOutcome::Completed {
            status: status::CHECK_CONDITION,
            host_status: host::DID_OK,
            driver_status: 0,
            info: SG_INFO_CHECK,
            sense,
        }
    }

    /// A transport (host byte) failure without sense data.
    pub fn host_error(host_status: u16) -> TurOutcome {
        TurOutcome::Completed {
            status: status::GOOD,
            host_status,
            driver_status: 0,
            info: SG_INFO_CHECK,
            sense: Vec::new(),
        }
    }
}

/// What a TEST UNIT READY check concluded: the path's state and why (for
/// the admin). The `scsi` transport answers it; the checker turns it into
/// its own result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurResult {
    pub state: CheckState,
    pub message: String,
}

/// What to do after one TEST UNIT READY.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TurVerdict {
    /// Send another TEST UNIT READY (the reason is for logs).
    Retry(String),
    /// The check's result and the reason for the admin.
    Done(CheckState, String),
}

/// Decides about one outcome; `tries_left` counts this try (so 1 means no
/// retry is allowed any more).
pub fn decide(outcome: &TurOutcome, tries_left: u32) -> TurVerdict {
    let can_retry = tries_left > 1;
    let (status, host_status, driver_status, info, sense) = match outcome {
        TurOutcome::IoctlFailed {
            not_supported: true,
            error,
        } => {
            return TurVerdict::Done(
                CheckState::Down,
                format!("tur: device does not support SG_IO: {error}"),
            )
        }
        TurOutcome::IoctlFailed { error, .. } => {
            return TurVerdict::Done(CheckState::Down, format!("tur: SG_IO failed: {error}"))
        }
        TurOutcome::Completed {
            status,
            host_status,
            driver_status,
            info,
            sense,
        } => (*status, *host_status, *driver_status, *info, sense),
    };
    if status & 0x7e == status::RESERVATION_CONFLICT {
        return TurVerdict::Done(
            CheckState::Up,
            "tur: path up (reservation conflict)".to_string(),
        );
    }
    if info & SG_INFO_CHECK == 0 {
        return TurVerdict::Done(CheckState::Up, "tur: path up".to_string());
    }
    let host_ok = matches!(
        host_status,
        host::DID_OK
            | host::DID_NO_CONNECT
            | host::DID_BAD_TARGET
            | host::DID_ABORT
            | host::DID_TRANSPORT_FAILFAST
    );
    if !host_ok && can_retry {
        return TurVerdict::Retry(format!(
            "host byte {} (0x{host_status:02x})",
            host::name(host_status)
        ));
    }
    // multipath-tools looks at sense data only when more than 3 bytes
    // came back, and at fixed format only with more than 13.
    let parsed = if sense.len() > 3 {
        Sense::parse(sense)
            .ok()
            .filter(|s| s.is_descriptor() || sense.len() > 13)
    } else {
        None
    };
    if let Some(s) = parsed {
        match (s.key, s.asc, s.ascq) {
            (SenseKey::UNIT_ATTENTION, _, _) if can_retry => {
                return TurVerdict::Retry(format!("{s}"));
            }
            (SenseKey::NOT_READY, 0x04, 0x0b) => {
                return TurVerdict::Done(
                    CheckState::Ghost,
                    format!("tur: path is in standby state ({s})"),
                );
            }
            (SenseKey::NOT_READY, 0x04, 0x0a) => {
                return TurVerdict::Done(
                    CheckState::Pending,
                    format!("tur: path is transitioning ({s})"),
                );
            }
            (SenseKey::ILLEGAL_REQUEST, 0x25, 0x00) => {
                return TurVerdict::Done(
                    CheckState::Down,
                    format!("tur: path disconnected: LUN not mapped at the target ({s})"),
                );
            }
            _ => {
                return TurVerdict::Done(CheckState::Down, format!("tur: path down: {s}"));
            }
        }
    }
    let mut why = format!("tur: path down: status 0x{status:02x}");
    if host_status != host::DID_OK {
        why.push_str(&format!(
            ", host byte {} (0x{host_status:02x})",
            host::name(host_status)
        ));
    }
    if driver_status != 0 {
        why.push_str(&format!(", driver byte 0x{driver_status:02x}"));
    }
    TurVerdict::Done(CheckState::Down, why)
}

/// Runs a whole check: calls `send` for each TEST UNIT READY until the
/// verdict is final or [`MAX_TRIES`] commands were sent. Returns the
/// state, the reason, and how many commands were sent.
pub fn run(mut send: impl FnMut() -> TurOutcome) -> (CheckState, String, u32) {
    let mut tries = 0;
    loop {
        tries += 1;
        let outcome = send();
        match decide(&outcome, MAX_TRIES + 1 - tries) {
            TurVerdict::Retry(_) => continue,
            TurVerdict::Done(state, why) => return (state, why, tries),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::sense::tests::{descriptor, fixed};

    fn once(o: TurOutcome) -> (CheckState, String, u32) {
        let mut o = Some(o);
        run(|| o.take().expect("sent once"))
    }

    #[test]
    fn good_is_up() {
        let (st, why, n) = once(TurOutcome::good());
        assert_eq!((st, n), (CheckState::Up, 1));
        assert_eq!(why, "tur: path up");
    }

    #[test]
    fn reservation_conflict_is_up() {
        let o = TurOutcome::Completed {
            status: status::RESERVATION_CONFLICT,
            host_status: 0,
            driver_status: 0,
            info: SG_INFO_CHECK,
            sense: vec![],
        };
        assert_eq!(once(o).0, CheckState::Up);
    }

    #[test]
    fn standby_is_ghost_transition_is_pending() {
        let (st, why, _) = once(TurOutcome::check_condition(fixed(0x2, 0x04, 0x0b)));
        assert_eq!(st, CheckState::Ghost);
        assert!(why.contains("standby"), "{why}");
        let (st, _, _) = once(TurOutcome::check_condition(descriptor(0x2, 0x04, 0x0b)));
        assert_eq!(st, CheckState::Ghost);
        let (st, why, _) = once(TurOutcome::check_condition(fixed(0x2, 0x04, 0x0a)));
        assert_eq!(st, CheckState::Pending);
        assert!(why.contains("transitioning"), "{why}");
    }

    #[test]
    fn other_not_ready_and_medium_errors_are_down() {
        let (st, why, _) = once(TurOutcome::check_condition(fixed(0x2, 0x04, 0x03)));
        assert_eq!(st, CheckState::Down);
        assert!(why.contains("NOT READY, ASC/ASCQ 04/03"), "{why}");
        assert_eq!(
            once(TurOutcome::check_condition(fixed(0x3, 0x11, 0))).0,
            CheckState::Down
        );
        let (st, why, _) = once(TurOutcome::check_condition(descriptor(0x5, 0x25, 0)));
        assert_eq!(st, CheckState::Down);
        assert!(why.contains("disconnected"), "{why}");
    }

    #[test]
    fn unit_attention_is_retried_then_clears() {
        let mut n = 0;
        let (st, _, tries) = run(|| {
            n += 1;
            if n < 3 {
                TurOutcome::check_condition(fixed(0x6, 0x29, 0))
            } else {
                TurOutcome::good()
            }
        });
        assert_eq!((st, tries), (CheckState::Up, 3));
    }

    #[test]
    fn endless_unit_attention_ends_down_after_five() {
        let (st, why, tries) = run(|| TurOutcome::check_condition(fixed(0x6, 0x29, 0)));
        assert_eq!((st, tries), (CheckState::Down, MAX_TRIES));
        assert!(why.contains("UNIT ATTENTION"), "{why}");
    }

    #[test]
    fn host_errors() {
        // Transport failures that are final are not retried.
        let (st, why, tries) = once(TurOutcome::host_error(host::DID_NO_CONNECT));
        assert_eq!((st, tries), (CheckState::Down, 1));
        assert!(why.contains("DID_NO_CONNECT"), "{why}");
        assert_eq!(
            once(TurOutcome::host_error(host::DID_TRANSPORT_FAILFAST)).0,
            CheckState::Down
        );
        // Others are retried up to five commands.
        let (st, why, tries) = run(|| TurOutcome::host_error(host::DID_ERROR));
        assert_eq!((st, tries), (CheckState::Down, MAX_TRIES));
        assert!(why.contains("DID_ERROR"), "{why}");
        let mut n = 0;
        let (st, _, tries) = run(|| {
            n += 1;
            if n == 1 {
                TurOutcome::host_error(host::DID_RESET)
            } else {
                TurOutcome::good()
            }
        });
        assert_eq!((st, tries), (CheckState::Up, 2));
    }

    #[test]
    fn ioctl_failures_are_down() {
        let (st, why, _) = once(TurOutcome::IoctlFailed {
            not_supported: true,
            error: "Inappropriate ioctl for device".into(),
        });
        assert_eq!(st, CheckState::Down);
        assert!(why.contains("does not support SG_IO"), "{why}");
        let (st, _, _) = once(TurOutcome::IoctlFailed {
            not_supported: false,
            error: "No such device".into(),
        });
        assert_eq!(st, CheckState::Down);
    }

    #[test]
    fn short_or_garbage_sense_is_down() {
        assert_eq!(
            once(TurOutcome::check_condition(vec![0x70, 0, 0x2, 0])).0,
            CheckState::Down
        );
        assert_eq!(
            once(TurOutcome::check_condition(vec![0x12; 20])).0,
            CheckState::Down
        );
        assert_eq!(
            once(TurOutcome::check_condition(vec![])).0,
            CheckState::Down
        );
    }
}
