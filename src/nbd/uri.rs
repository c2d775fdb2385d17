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
                    let port = match after {
                        "" => None,
                        a => Some(a.strip_prefix(':').ok_or_else(|| err("junk after ]"))?),
                    };
                    if h.contains(['[', ']']) {
                        return Err(err("bad IPv6 host"));
                    }
                    (h, port)
                } else {
                    let (h, p) = match authority.rsplit_once(':') {
                        Some((h, p)) => (h, Some(p)),
                        None => (authority, None),
                    };
                    if h.contains([':', '[', ']']) {
                        return Err(err("an IPv6 host goes in brackets"));
                    }
                    (h, p)
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

/// Percent-encodes what a URI path or query value cannot carry as is.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        let keep = b.is_ascii_alphanumeric() || b"-._~/:@!$'()*+,;=".contains(&b);
        if keep {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl fmt::Display for NbdUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let export = encode(&self.export);
        match &self.endpoint {
            Endpoint::Unix(s) => write!(f, "nbd+unix:///{export}?socket={}", encode(s)),
            Endpoint::Tcp { host, port } if host.contains(':') => {
                write!(f, "nbd://[{host}]:{port}/{export}")
            }
            Endpoint::Tcp { host, port } => write!(f, "nbd://{host}:{port}/{export}"),
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
            "nbd://b[n]f::12",
            "nbd://::1:10809/x",
            "nbd://[::1]x/y",
            "nbd://[a[b]]/y",
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
        // Names that need escapes print back to the same URI.
        for u in [
            "nbd://h:1/x%25y",
            "nbd+unix:///a%20b?socket=/tmp/s%26t",
            "nbd://h:1/%C3%A9",
        ] {
            let p = NbdUri::parse(u).unwrap();
            assert_eq!(NbdUri::parse(&p.to_string()).unwrap(), p, "{u}");
        }
    }
}
