//! NBD URIs (the subset umpath's `nbd` transport takes). Pure.
//!
//! * `nbd+unix:///EXPORT?socket=PATH` — a Unix socket;
//! * `nbd://HOST[:PORT]/EXPORT` — TCP, port 10809 by default; an IPv6 host
//!   goes in brackets (`nbd://[::1]:10809/lun0`).
//!
//! The export name is the path after the first `/` (it may be empty: the
//! server's default export). Percent-escapes are decoded.

use std::fmt;

/// The NBD port IANA assigned.
pub const DEFAULT_PORT: u16 = 10809;

/// Where an NBD server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(String),
    Tcp { host: String, port: u16 },
}

/// A parsed NBD URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdUri {
    pub endpoint: Endpoint,
    pub export: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad NBD URI {uri:?}: {why} (expected nbd+unix:///EXPORT?socket=PATH or nbd://HOST[:PORT]/EXPORT)")]
pub struct UriError {
    pub uri: String,
    pub why: &'static str,
}

fn decode_percent(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl NbdUri {
    pub fn parse(uri: &str) -> Result<NbdUri, UriError> {
        let err = |why| UriError {
            uri: uri.to_string(),
            why,
        };
        let (scheme, rest) = uri.split_once("://").ok_or_else(|| err("no scheme"))?;
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, export) = match rest.split_once('/') {
            Some((a, e)) => (a, e),
            None => (rest, ""),
        };
        let export =
            decode_percent(export).ok_or_else(|| err("bad percent-escape in the export name"))?;
        match scheme {
            "nbd+unix" => {
                if !authority.is_empty() {
                    return Err(err("nbd+unix takes no host"));
                }
                let socket = query
                    .into_iter()
                    .flat_map(|q| q.split('&'))
                    .find_map(|kv| kv.strip_prefix("socket="))
                    .ok_or_else(|| err("nbd+unix needs ?socket=PATH"))?;
                let socket = decode_percent(socket)
                    .ok_or_else(|| err("bad percent-escape in the socket path"))?;
                if socket.is_empty() {
                    return Err(err("empty socket path"));
                }
                Ok(NbdUri {
                    endpoint: Endpoint::Unix(socket),
                    export,
                })
            }
            "nbd" => {
                if query.is_some() {
                    return Err(err("nbd:// takes no query"));
                }
                let (host, port) = if let Some(h) = authority.strip_prefix('[') {
                    let (h, after) = h.split_once(']').ok_or_else(|| err("unclosed [ in host"))?;
                    (h, after.strip_prefix(':'))
                } else {
                    match authority.rsplit_once(':') {
                        Some((h, p)) => (h, Some(p)),
                        None => (authority, None),
                    }
                };
                if host.is_empty() {
                    return Err(err("no host"));
                }
                let port = match port {
                    None => DEFAULT_PORT,
                    Some(p) => p.parse().map_err(|_| err("bad port"))?,
                };
                Ok(NbdUri {
                    endpoint: Endpoint::Tcp {
                        host: host.to_string(),
                        port,
                    },
                    export,
                })
            }
            _ => Err(err("unknown scheme")),
        }
    }
}

impl fmt::Display for NbdUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.endpoint {
            Endpoint::Unix(s) => write!(f, "nbd+unix:///{}?socket={s}", self.export),
            Endpoint::Tcp { host, port } if host.contains(':') => {
                write!(f, "nbd://[{host}]:{port}/{}", self.export)
            }
            Endpoint::Tcp { host, port } => write!(f, "nbd://{host}:{port}/{}", self.export),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_forms() {
        assert_eq!(
            NbdUri::parse("nbd+unix:///lun0?socket=/run/x.sock").unwrap(),
            NbdUri {
                endpoint: Endpoint::Unix("/run/x.sock".into()),
                export: "lun0".into()
            }
        );
        assert_eq!(
            NbdUri::parse("nbd://127.0.0.1:10810/lun%200").unwrap(),
            NbdUri {
                endpoint: Endpoint::Tcp {
                    host: "127.0.0.1".into(),
                    port: 10810
                },
                export: "lun 0".into()
            }
        );
        assert_eq!(
            NbdUri::parse("nbd://[::1]/x").unwrap().endpoint,
            Endpoint::Tcp {
                host: "::1".into(),
                port: DEFAULT_PORT
            }
        );
        assert_eq!(NbdUri::parse("nbd://host").unwrap().export, "");
    }

    #[test]
    fn rejects_junk_with_a_reason() {
        for bad in [
            "",
            "lun0",
            "http://x/y",
            "nbd+unix:///lun0",
            "nbd+unix://host/lun0?socket=/x",
            "nbd://:10809/x",
            "nbd://h:port/x",
            "nbd://[::1/x",
            "nbd://h/x%zz",
        ] {
            let e = NbdUri::parse(bad).unwrap_err();
            assert!(e.to_string().contains("expected nbd+unix"), "{bad}: {e}");
        }
    }

    #[test]
    fn displays_back() {
        for u in [
            "nbd+unix:///lun0?socket=/run/x.sock",
            "nbd://127.0.0.1:10809/lun0",
            "nbd://[::1]:1/e",
        ] {
            assert_eq!(NbdUri::parse(u).unwrap().to_string(), u);
        }
    }
}
