//! Who may do what on umpath's Unix sockets. Pure: the caller reads the
//! peer's credentials (SO_PEERCRED, see [`crate::unixsock::peer_cred`])
//! and passes them in, with a function that reads the peer's
//! supplementary groups only when uid and gid alone do not decide.
//!
//! * The control socket: read-only commands (`show ...`) for any local
//!   user who can reach the socket; every command that changes something
//!   ([`crate::control::Command::is_read_only`] is false) for root, the
//!   daemon's own user, and members of the admin group
//!   (`--admin-group`, `umpath_admin_group`).
//! * The NBD Unix socket: sessions for root, the daemon's own user and
//!   members of the NBD group (`--nbd-group`, `umpath_nbd_group`; by
//!   default the admin group).
//!
//! A peer whose credentials cannot be read is refused. A peer whose
//! supplementary groups cannot be read is judged by its uid and primary
//! gid, and the refusal says so.
//!
//! [`Throttle`] rate-limits the log lines refusals cause.

use std::fmt;
use std::time::{Duration, Instant};

/// A group named in the configuration, resolved to its gid at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub gid: u32,
}

/// The groups named by flags or keywords, before resolution.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessOptions {
    /// `--admin-group`: members may run commands that change something.
    pub admin_group: Option<String>,
    /// `--nbd-group`: members may open NBD sessions on the Unix socket
    /// (default: the admin group).
    pub nbd_group: Option<String>,
}

/// The peer of a Unix socket connection, as SO_PEERCRED tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cred {
    pub uid: u32,
    pub gid: u32,
    /// The peer's pid in our pid namespace (`None`: not known, e.g. the
    /// peer lives in a pid namespace we cannot see).
    pub pid: Option<i32>,
}

impl fmt::Display for Cred {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "uid {} gid {}", self.uid, self.gid)?;
        match self.pid {
            Some(p) => write!(f, " pid {p}"),
            None => write!(f, " pid unknown"),
        }
    }
}

/// What a peer asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need<'a> {
    /// A control command that only reads (`show ...`).
    Read,
    /// A control command that changes something; the text is the
    /// command line, quoted in the refusal.
    Change(&'a str),
    /// An NBD session on the Unix socket.
    Nbd,
}

/// Who may do what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The daemon's effective uid: it may always do everything (as root).
    pub owner: u32,
    /// Members may run commands that change something.
    pub admin: Option<Group>,
    /// Members may open NBD sessions on the Unix socket.
    pub nbd: Option<Group>,
}

impl Policy {
    /// Only root and `owner` may change things or open NBD sessions.
    pub fn owner_only(owner: u32) -> Policy {
        Policy {
            owner,
            admin: None,
            nbd: None,
        }
    }

    /// Decides whether `cred` may do `need`. `groups` is called (at most
    /// once, and only when uid and gid do not decide) with the peer's pid
    /// and returns its supplementary groups, or `None` if they cannot be
    /// read. `Err` is the refusal, worded for the peer.
    pub fn check(
        &self,
        need: Need<'_>,
        cred: Option<Cred>,
        groups: impl FnOnce(Option<i32>) -> Option<Vec<u32>>,
    ) -> Result<(), String> {
        let (what, group) = match need {
            Need::Read => return Ok(()),
            Need::Change(line) => (format!("`{}`", line.trim()), self.admin.as_ref()),
            Need::Nbd => (
                "an NBD session on this socket".to_string(),
                self.nbd.as_ref(),
            ),
        };
        let who = self.who(group);
        let Some(c) = cred else {
            return Err(format!(
                "permission denied: {what} needs {who}, and the daemon could not read \
                 your credentials (SO_PEERCRED)"
            ));
        };
        if c.uid == 0 || c.uid == self.owner {
            return Ok(());
        }
        let Some(g) = group else {
            return Err(format!(
                "permission denied: {what} needs {who}; you are uid {}",
                c.uid
            ));
        };
        if c.gid == g.gid {
            return Ok(());
        }
        match groups(c.pid) {
            Some(list) if list.contains(&g.gid) => Ok(()),
            Some(_) => Err(format!(
                "permission denied: {what} needs {who}; you are uid {}",
                c.uid
            )),
            None => Err(format!(
                "permission denied: {what} needs {who}; you are uid {} (your supplementary \
                 groups could not be read, so only your uid and gid {} were checked)",
                c.uid, c.gid
            )),
        }
    }

    fn who(&self, group: Option<&Group>) -> String {
        let mut who = "root".to_string();
        if self.owner != 0 {
            who.push_str(&format!(" or uid {} (the daemon's user)", self.owner));
        }
        if let Some(g) = group {
            who.push_str(&format!(" or group {}", g.name));
        }
        who
    }
}

/// The supplementary groups in the text of `/proc/PID/status` (its
/// `Groups:` line); `None` if there is no such line or it does not parse.
pub fn groups_from_status(status: &str) -> Option<Vec<u32>> {
    let line = status.lines().find_map(|l| l.strip_prefix("Groups:"))?;
    line.split_whitespace().map(|g| g.parse().ok()).collect()
}

/// Rate limit for log lines: at most `burst` lines per `interval`; the
/// next line after a quiet spell tells how many were left out.
#[derive(Debug, Clone)]
pub struct Throttle {
    interval: Duration,
    burst: u32,
    window: Option<Instant>,
    in_window: u32,
    suppressed: u64,
}

impl Throttle {
    pub const fn new(interval: Duration, burst: u32) -> Throttle {
        Throttle {
            interval,
            burst,
            window: None,
            in_window: 0,
            suppressed: 0,
        }
    }

    /// `Some(n)`: log this event now, and say that `n` earlier ones were
    /// not logged. `None`: do not log it (it is counted).
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        let fresh = match self.window {
            None => true,
            Some(start) => now.saturating_duration_since(start) >= self.interval,
        };
        if fresh {
            self.window = Some(now);
            self.in_window = 0;
        }
        if self.in_window < self.burst {
            self.in_window += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin() -> Policy {
        Policy {
            owner: 0,
            admin: Some(Group {
                name: "umpath".into(),
                gid: 990,
            }),
            nbd: Some(Group {
                name: "disk".into(),
                gid: 6,
            }),
        }
    }

    fn nobody(gid: u32) -> Option<Cred> {
        Some(Cred {
            uid: 65534,
            gid,
            pid: Some(42),
        })
    }

    fn no_groups(_: Option<i32>) -> Option<Vec<u32>> {
        Some(vec![])
    }

    #[test]
    fn show_is_for_everyone_even_without_credentials() {
        let p = Policy::owner_only(0);
        assert!(p.check(Need::Read, None, |_| None).is_ok());
        assert!(p.check(Need::Read, nobody(65534), no_groups).is_ok());
    }

    #[test]
    fn changes_need_root_owner_or_the_admin_group() {
        let p = admin();
        let root = Some(Cred {
            uid: 0,
            gid: 0,
            pid: Some(1),
        });
        assert!(p
            .check(Need::Change("fail path p0"), root, |_| unreachable!())
            .is_ok());
        // Primary gid decides without reading groups.
        assert!(p
            .check(
                Need::Change("fail path p0"),
                nobody(990),
                |_| unreachable!()
            )
            .is_ok());
        // A supplementary group.
        assert!(p
            .check(Need::Change("shutdown"), nobody(65534), |pid| {
                assert_eq!(pid, Some(42));
                Some(vec![4, 990])
            })
            .is_ok());
        let e = p
            .check(Need::Change("fail path p0\n"), nobody(65534), no_groups)
            .unwrap_err();
        assert_eq!(
            e,
            "permission denied: `fail path p0` needs root or group umpath; you are uid 65534"
        );
        // Being in the NBD group is not enough to change things.
        assert!(p
            .check(Need::Change("shutdown"), nobody(6), no_groups)
            .is_err());
    }

    #[test]
    fn without_an_admin_group_only_root_and_the_owner() {
        let p = Policy::owner_only(1000);
        let user = |uid| {
            Some(Cred {
                uid,
                gid: 1000,
                pid: None,
            })
        };
        assert!(p
            .check(Need::Change("reconfigure"), user(1000), no_groups)
            .is_ok());
        let e = p
            .check(Need::Change("reconfigure"), user(1001), no_groups)
            .unwrap_err();
        assert!(e.contains("needs root or uid 1000 (the daemon's user); you are uid 1001"));
        assert!(p.check(Need::Nbd, user(1001), no_groups).is_err());
        assert!(p.check(Need::Nbd, user(1000), no_groups).is_ok());
    }

    #[test]
    fn unreadable_credentials_and_groups() {
        let p = admin();
        let e = p
            .check(Need::Change("shutdown"), None, no_groups)
            .unwrap_err();
        assert!(e.contains("could not read your credentials"), "{e}");
        assert!(p.check(Need::Nbd, None, no_groups).is_err());
        let e = p
            .check(Need::Change("shutdown"), nobody(65534), |_| None)
            .unwrap_err();
        assert!(
            e.contains("supplementary groups could not be read, so only your uid and gid 65534"),
            "{e}"
        );
    }

    #[test]
    fn nbd_uses_its_own_group() {
        let p = admin();
        assert!(p.check(Need::Nbd, nobody(6), |_| unreachable!()).is_ok());
        let e = p.check(Need::Nbd, nobody(990), no_groups).unwrap_err();
        assert!(
            e.contains("an NBD session on this socket needs root or group disk"),
            "{e}"
        );
    }

    #[test]
    fn parses_proc_status_groups() {
        let s = "Name:\tcat\nUid:\t0\t0\t0\t0\nGroups:\t4 24 27 \nNgid:\t0\n";
        assert_eq!(groups_from_status(s), Some(vec![4, 24, 27]));
        assert_eq!(groups_from_status("Groups:\t\n"), Some(vec![]));
        assert_eq!(groups_from_status("Name:\tx\n"), None);
        assert_eq!(groups_from_status("Groups:\t4 x\n"), None);
    }

    #[test]
    fn throttle_allows_a_burst_then_counts() {
        let t0 = Instant::now();
        let mut t = Throttle::new(Duration::from_secs(10), 2);
        assert_eq!(t.admit(t0), Some(0));
        assert_eq!(t.admit(t0), Some(0));
        assert_eq!(t.admit(t0 + Duration::from_secs(1)), None);
        assert_eq!(t.admit(t0 + Duration::from_secs(2)), None);
        assert_eq!(t.admit(t0 + Duration::from_secs(10)), Some(2));
        assert_eq!(t.admit(t0 + Duration::from_secs(11)), Some(0));
        assert_eq!(t.admit(t0 + Duration::from_secs(12)), None);
    }
}
