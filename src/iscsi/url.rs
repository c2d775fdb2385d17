//! `iscsi://` URLs in libiscsi's form (the one qemu users know):
//! `iscsi://[USER[%SECRET]@]HOST[:PORT][/IQN[/LUN]]`.
//!
//! The user name ends at the first `%`, the secret at the last `@` (so a
//! secret may contain `%`, `@` and `/`; an IQN never contains `@`). HOST
//! is a name, an IPv4 address or an IPv6 address in brackets. Without an
//! IQN the URL names a portal to discover targets on; without a LUN, a
//! target whose LUNs to list.
//!
//! The secret never shows: [`IscsiUrl`]'s Display and Debug print
//! `<hidden>` in its place.

use std::fmt;

use crate::config::paths::{check_iscsi_name, Portal, MASKED, MAX_LUN};

/// A parsed `iscsi://` URL.
#[derive(Clone, PartialEq, Eq)]
pub struct IscsiUrl {
    pub user: Option<String>,
    pub secret: Option<String>,
    pub portal: Portal,
    pub target: Option<String>,
    pub lun: Option<u64>,
}

/// Why a URL is not an `iscsi://` URL; never quotes the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("not an iscsi:// URL (iscsi://[USER[%SECRET]@]HOST[:PORT][/IQN[/LUN]])")]
    Scheme,
    #[error("iscsi URL: {0}")]
    Portal(String),
    #[error("iscsi URL: a secret without a user (USER%SECRET@)")]
    SecretWithoutUser,
    #[error("iscsi URL: the target {0}")]
    Target(String),
    #[error("iscsi URL: LUN {0:?} is not 0 to {MAX_LUN}")]
    Lun(String),
    #[error("iscsi URL: {0:?} after the LUN")]
    Trailing(String),
}

impl IscsiUrl {
    pub fn parse(url: &str) -> Result<IscsiUrl, UrlError> {
        let rest = url
            .get(..8)
            .filter(|s| s.eq_ignore_ascii_case("iscsi://"))
            .and_then(|_| url.get(8..))
            .ok_or(UrlError::Scheme)?;
        let (userinfo, location) = match rest.rfind('@') {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        let (user, secret) = match userinfo {
            None => (None, None),
            Some(u) => match u.split_once('%') {
                Some(("", _)) => return Err(UrlError::SecretWithoutUser),
                Some((user, secret)) => (Some(user.to_string()), Some(secret.to_string())),
                None if u.is_empty() => (None, None),
                None => (Some(u.to_string()), None),
            },
        };
        let mut parts = location.splitn(3, '/');
        let host = parts.next().unwrap_or("");
        if host.is_empty() {
            return Err(UrlError::Portal("no host".to_string()));
        }
        let portal = Portal::parse(host).map_err(UrlError::Portal)?;
        let target = match parts.next() {
            None | Some("") => None,
            Some(t) => {
                check_iscsi_name(t).map_err(UrlError::Target)?;
                Some(t.to_string())
            }
        };
        let lun = match parts.next() {
            None | Some("") => None,
            Some(l) => {
                let (l, trailing) = l.split_once('/').unwrap_or((l, ""));
                if !trailing.is_empty() {
                    return Err(UrlError::Trailing(trailing.to_string()));
                }
                Some(
                    l.parse::<u64>()
                        .ok()
                        .filter(|n| *n <= MAX_LUN)
                        .ok_or_else(|| UrlError::Lun(l.to_string()))?,
                )
            }
        };
        if lun.is_some() && target.is_none() {
            return Err(UrlError::Target("is missing before the LUN".to_string()));
        }
        Ok(IscsiUrl {
            user,
            secret,
            portal,
            target,
            lun,
        })
    }
}

impl fmt::Display for IscsiUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("iscsi://")?;
        if let Some(u) = &self.user {
            f.write_str(u)?;
            if self.secret.is_some() {
                write!(f, "%{MASKED}")?;
            }
            f.write_str("@")?;
        }
        write!(f, "{}", self.portal)?;
        if let Some(t) = &self.target {
            write!(f, "/{t}")?;
            if let Some(l) = self.lun {
                write!(f, "/{l}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for IscsiUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IscsiUrl({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IQN: &str = "iqn.2026-11.com.example:lun0";

    #[test]
    fn the_forms_libiscsi_takes() {
        let u = IscsiUrl::parse("iscsi://127.0.0.1").unwrap();
        assert_eq!(u.portal.to_string(), "127.0.0.1:3260");
        assert_eq!((u.user, u.target, u.lun), (None, None, None));

        let u = IscsiUrl::parse(&format!(
            "iscsi://tecmint%tecmint_chap12@10.0.0.5:3261/{IQN}/1"
        ))
        .unwrap();
        assert_eq!(u.user.as_deref(), Some("tecmint"));
        assert_eq!(u.secret.as_deref(), Some("tecmint_chap12"));
        assert_eq!(u.portal.to_string(), "10.0.0.5:3261");
        assert_eq!(u.target.as_deref(), Some(IQN));
        assert_eq!(u.lun, Some(1));

        let u = IscsiUrl::parse(&format!("iscsi://[::1]/{IQN}")).unwrap();
        assert_eq!(u.portal.to_string(), "[::1]:3260");
        assert_eq!(u.lun, None);

        // A secret may hold '%', '@' and '/'.
        let u = IscsiUrl::parse(&format!("iscsi://u%a%b@c/d@host/{IQN}/0")).unwrap();
        assert_eq!(u.secret.as_deref(), Some("a%b@c/d"));
        assert_eq!(u.portal.host, "host");
        assert_eq!(u.lun, Some(0));

        // A user without a secret (asked for, or read from a file).
        let u = IscsiUrl::parse("ISCSI://admin@host/").unwrap();
        assert_eq!(
            (u.user.as_deref(), u.secret.as_deref()),
            (Some("admin"), None)
        );
    }

    #[test]
    fn the_secret_never_shows() {
        let u = IscsiUrl::parse(&format!("iscsi://tecmint%tecmint_chap12@h/{IQN}/1")).unwrap();
        let shown = format!("{u} {u:?}");
        assert!(!shown.contains("tecmint_chap12"), "{shown}");
        assert!(shown.contains("tecmint%<hidden>@h:3260"), "{shown}");
    }

    #[test]
    fn mistakes_say_what_is_wrong() {
        let e = |s: &str| IscsiUrl::parse(s).unwrap_err();
        assert_eq!(e("nbd://host"), UrlError::Scheme);
        assert_eq!(e("iscsi:/host"), UrlError::Scheme);
        assert!(matches!(e("iscsi://"), UrlError::Portal(_)));
        assert!(matches!(e("iscsi://h:0"), UrlError::Portal(_)));
        assert_eq!(e("iscsi://%pw@h"), UrlError::SecretWithoutUser);
        assert!(matches!(e("iscsi://h/notaname"), UrlError::Target(_)));
        assert!(matches!(e(&format!("iscsi://h/{IQN}/x")), UrlError::Lun(_)));
        assert!(matches!(
            e(&format!("iscsi://h/{IQN}/16384")),
            UrlError::Lun(_)
        ));
        assert!(matches!(
            e(&format!("iscsi://h/{IQN}/1/2")),
            UrlError::Trailing(_)
        ));
        // No error message quotes a secret.
        for bad in [
            "iscsi://u%s3cret@",
            "iscsi://u%s3cret@h/bad",
            "iscsi://u%s3cret@h:x",
        ] {
            assert!(!e(bad).to_string().contains("s3cret"), "{bad}");
        }
    }
}
