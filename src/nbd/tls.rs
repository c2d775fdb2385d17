//! NBD over TLS (`NBD_OPT_STARTTLS`) and who may open which export.
//!
//! - [`TlsMode`]: what a TCP connection must do. `require` is proto.md's
//!   FORCEDTLS (every option but STARTTLS and ABORT is answered
//!   `NBD_REP_ERR_TLS_REQD`, `NBD_OPT_EXPORT_NAME` closes the connection);
//!   `optional` lets the client choose; `off` answers STARTTLS with an
//!   error. Unix-socket connections are always `off`: the socket's
//!   credentials decide who reaches it.
//! - [`Security`]: the loaded server certificate and key, the CA that
//!   client certificates must chain to (when set, every TLS client must
//!   present one), the handshake deadline, the requested mode and the
//!   per-export [`AllowList`]. Files are read once, by [`Security::load`].
//!   No key material is ever formatted into an error or a log line.
//! - [`Security::tcp_mode`] applies the rule: TLS is required on any TCP
//!   address but loopback; on loopback it defaults to optional when a
//!   certificate is configured, off otherwise.
//! - [`AllowList`]: `EXPORT=RULE,RULE...`; a rule is conditions joined by
//!   `+`, all of which must hold: `cn:NAME` (the verified client
//!   certificate's subject CN, or a SAN DNS name or URI, ASCII
//!   case-insensitive) and `addr:CIDR` (the TCP peer address). An export
//!   with rules is visible to a TCP client that matches one of them;
//!   an export without rules to every TCP client that got this far.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tracing::warn;

/// How long a client has to finish the TLS handshake after STARTTLS.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a TCP connection must do about TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// No TLS: STARTTLS is refused.
    Off,
    /// STARTTLS is accepted; plain negotiation is allowed too.
    Optional,
    /// Nothing but STARTTLS and ABORT before TLS (proto.md's FORCEDTLS).
    Require,
}

impl FromStr for TlsMode {
    type Err = TlsError;
    fn from_str(s: &str) -> Result<Self, TlsError> {
        match s {
            "off" | "no" => Ok(TlsMode::Off),
            "optional" => Ok(TlsMode::Optional),
            "require" | "required" | "yes" => Ok(TlsMode::Require),
            _ => Err(TlsError(format!(
                "TLS mode {s:?}: expected off, optional or require"
            ))),
        }
    }
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsMode::Off => "off",
            TlsMode::Optional => "optional",
            TlsMode::Require => "require",
        })
    }
}

/// A TLS or access-policy setting that cannot be used; the text says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(pub String);

fn err(s: impl Into<String>) -> TlsError {
    TlsError(s.into())
}

/// The settings as given (daemon flags); [`Security::load`] reads the files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// `None`: require on non-loopback TCP, optional on loopback with a
    /// certificate, off on loopback without.
    pub mode: Option<TlsMode>,
    /// The server's certificate chain (PEM, leaf first).
    pub cert: Option<PathBuf>,
    /// The server's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates must chain to; when
    /// set, a client certificate is required.
    pub ca: Option<PathBuf>,
    /// The TLS handshake deadline; `None`: [`DEFAULT_HANDSHAKE_TIMEOUT`].
    pub handshake_timeout: Option<Duration>,
    /// `EXPORT=RULE,RULE...` entries (see [`AllowList`]).
    pub allow: Vec<String>,
}

/// The loaded TLS server side.
pub(crate) struct TlsServer {
    acceptor: TlsAcceptor,
    pub(crate) timeout: Duration,
    /// Client certificates are required and verified against the CA.
    pub(crate) verifies_clients: bool,
}

/// Everything the NBD server needs to decide about TLS and access.
#[derive(Clone, Default)]
pub struct Security {
    pub(crate) tls: Option<Arc<TlsServer>>,
    mode: Option<TlsMode>,
    pub(crate) allow: AllowList,
}

impl fmt::Debug for Security {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key: only whether TLS is loaded.
        f.debug_struct("Security")
            .field("tls", &self.tls.is_some())
            .field(
                "client_certs",
                &self.tls.as_ref().is_some_and(|t| t.verifies_clients),
            )
            .field("mode", &self.mode)
            .field("allow", &self.allow)
            .finish()
    }
}

impl Security {
    /// Check the settings and read the certificate, key and CA files.
    pub fn load(o: &TlsOptions) -> Result<Security, TlsError> {
        let allow = AllowList::parse(&o.allow)?;
        let tls = match (&o.cert, &o.key) {
            (Some(cert), Some(key)) => Some(Arc::new(TlsServer::load(
                cert,
                key,
                o.ca.as_deref(),
                o.handshake_timeout.unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT),
            )?)),
            (None, None) => {
                if o.ca.is_some() {
                    return Err(err(
                        "--nbd-tls-ca needs a server certificate and key (--nbd-tls-cert, --nbd-tls-key)",
                    ));
                }
                None
            }
            (Some(_), None) => return Err(err("--nbd-tls-cert needs --nbd-tls-key")),
            (None, Some(_)) => return Err(err("--nbd-tls-key needs --nbd-tls-cert")),
        };
        if tls.is_none() && matches!(o.mode, Some(TlsMode::Optional | TlsMode::Require)) {
            return Err(err(format!(
                "--nbd-tls {} needs a server certificate and key (--nbd-tls-cert, --nbd-tls-key)",
                o.mode.unwrap_or(TlsMode::Off)
            )));
        }
        if allow.has_names() && !tls.as_ref().is_some_and(|t| t.verifies_clients) {
            return Err(err(
                "an --nbd-allow cn: rule needs verified client certificates (--nbd-tls-ca)",
            ));
        }
        Ok(Security {
            tls,
            mode: o.mode,
            allow,
        })
    }

    /// Whether a server certificate is loaded.
    pub fn has_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The mode for connections to the TCP listener bound at `bound`:
    /// TLS is required unless the address is loopback.
    pub fn tcp_mode(&self, bound: SocketAddr) -> Result<TlsMode, TlsError> {
        let loopback = bound.ip().to_canonical().is_loopback();
        let mode = match self.mode {
            Some(m) => m,
            None if self.tls.is_some() && loopback => TlsMode::Optional,
            None if self.tls.is_some() => TlsMode::Require,
            None => TlsMode::Off,
        };
        if !loopback && mode != TlsMode::Require {
            return Err(err(if self.tls.is_none() {
                format!(
                    "NBD on TCP {bound} (not loopback) requires TLS: give --nbd-tls-cert and --nbd-tls-key (and --nbd-tls-ca for client certificates), or listen on 127.0.0.1"
                )
            } else {
                format!("NBD on TCP {bound} (not loopback) requires --nbd-tls require, not {mode}")
            }));
        }
        Ok(mode)
    }
}

fn read_file(what: &str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| err(format!("cannot read {what} {}: {e}", path.display())))
}

fn read_certs(what: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("{what} {}: bad PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(err(format!(
            "{what} {}: no PEM certificate in the file",
            path.display()
        )));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_file("TLS key", path)?;
    if let Ok(m) = std::fs::metadata(path) {
        use std::os::unix::fs::PermissionsExt;
        if m.permissions().mode() & 0o077 != 0 {
            warn!(
                file = %path.display(),
                "the NBD TLS key file is readable by group or others; chmod 600 it"
            );
        }
    }
    // The parser's own error can quote lines of the file: say only what
    // was expected.
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| {
        err(format!(
            "TLS key {}: no usable PEM private key (PKCS#8, PKCS#1 or SEC1) in the file",
            path.display()
        ))
    })
}

impl TlsServer {
    fn load(
        cert: &Path,
        key: &Path,
        ca: Option<&Path>,
        timeout: Duration,
    ) -> Result<TlsServer, TlsError> {
        let chain = read_certs("TLS certificate", cert)?;
        let key = read_key(key)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| err(format!("TLS: {e}")))?;
        let builder = match ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in read_certs("TLS CA", ca)? {
                    roots
                        .add(c)
                        .map_err(|e| err(format!("TLS CA {}: {e}", ca.display())))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| err(format!("TLS CA {}: {e}", ca.display())))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder.with_single_cert(chain, key).map_err(|e| {
            err(format!(
                "TLS certificate {} with its key: {e}",
                cert.display()
            ))
        })?;
        Ok(TlsServer {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            timeout,
            verifies_clients: ca.is_some(),
        })
    }

    /// Run the server side of the handshake, bounded by the deadline.
    pub(crate) async fn accept<S>(&self, s: S) -> Result<(TlsStream<S>, Identity), HandshakeError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let t = match tokio::time::timeout(self.timeout, self.acceptor.accept(s)).await {
            Err(_) => return Err(HandshakeError::Timeout(self.timeout)),
            Ok(Err(e)) => return Err(HandshakeError::Failed(e)),
            Ok(Ok(t)) => t,
        };
        let (_, conn) = t.get_ref();
        let id = Identity {
            names: conn
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| cert_names(c))
                .unwrap_or_default(),
            version: conn
                .protocol_version()
                .and_then(|v| v.as_str())
                .unwrap_or("?"),
        };
        Ok((t, id))
    }
}

/// Why a TLS handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    #[error("TLS handshake not finished within {0:?}")]
    Timeout(Duration),
    #[error("TLS handshake failed: {0}")]
    Failed(io::Error),
}

/// Who the client proved to be.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Identity {
    /// Subject CNs, then SAN DNS names and URIs, of the verified client
    /// certificate (empty without one).
    pub names: Vec<String>,
    pub version: &'static str,
}

/// Subject CNs and SAN DNS names and URIs of a DER certificate.
pub(crate) fn cert_names(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|a| a.as_str().ok())
        .map(str::to_string)
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for g in &san.value.general_names {
            match g {
                GeneralName::DNSName(s) | GeneralName::URI(s) => names.push(s.to_string()),
                _ => {}
            }
        }
    }
    names
}

// ---------------------------------------------------------------------------
// Allow-lists
// ---------------------------------------------------------------------------

/// One condition of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Cond {
    /// A certificate name (CN, SAN DNS or URI).
    Name(String),
    /// The peer address is in this network.
    Net { net: IpAddr, prefix: u8 },
}

/// Conditions that must all hold.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule(Vec<Cond>);

/// Per-export rules; an export with none is open to every TCP client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    exports: HashMap<String, Vec<Rule>>,
}

/// What the policy knows about a connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer<'a> {
    /// The TCP peer; `None` for a Unix-socket client (not subject to the
    /// allow-list).
    pub addr: Option<IpAddr>,
    /// Names from the verified client certificate.
    pub names: &'a [String],
}

impl AllowList {
    /// Parse `EXPORT=RULE,RULE...` entries; entries for one export add up.
    pub fn parse(entries: &[String]) -> Result<AllowList, TlsError> {
        let mut exports: HashMap<String, Vec<Rule>> = HashMap::new();
        for e in entries {
            let (export, rules) = e.split_once('=').ok_or_else(|| {
                err(format!(
                    "--nbd-allow {e:?}: expected EXPORT=RULE[,RULE...], e.g. lun0=cn:client1,addr:10.0.0.0/8"
                ))
            })?;
            let export = export.trim();
            if export.is_empty() {
                return Err(err(format!("--nbd-allow {e:?}: no export name")));
            }
            let list = exports.entry(export.to_string()).or_default();
            for r in rules.split(',').map(str::trim) {
                let conds = r
                    .split('+')
                    .map(|c| parse_cond(c.trim()))
                    .collect::<Result<Vec<_>, String>>()
                    .map_err(|m| err(format!("--nbd-allow {e:?}: {m}")))?;
                list.push(Rule(conds));
            }
        }
        Ok(AllowList { exports })
    }

    /// Whether any rule names a certificate.
    fn has_names(&self) -> bool {
        self.exports
            .values()
            .flatten()
            .any(|r| r.0.iter().any(|c| matches!(c, Cond::Name(_))))
    }

    /// Whether the export has rules at all.
    pub fn restricts(&self, export: &str) -> bool {
        self.exports.contains_key(export)
    }

    /// May `peer` see and open `export`?
    pub(crate) fn allows(&self, export: &str, peer: Peer<'_>) -> bool {
        let Some(addr) = peer.addr else {
            return true;
        };
        let Some(rules) = self.exports.get(export) else {
            return true;
        };
        rules.iter().any(|r| {
            r.0.iter().all(|c| match c {
                Cond::Name(n) => peer.names.iter().any(|p| p.eq_ignore_ascii_case(n)),
                Cond::Net { net, prefix } => in_net(addr, *net, *prefix),
            })
        })
    }
}

fn parse_cond(c: &str) -> Result<Cond, String> {
    if let Some(name) = c.strip_prefix("cn:") {
        if name.is_empty() {
            return Err("cn: needs a name".into());
        }
        return Ok(Cond::Name(name.to_string()));
    }
    if let Some(a) = c.strip_prefix("addr:") {
        let (ip, prefix) = match a.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (a, None),
        };
        let net: IpAddr = ip
            .parse()
            .map_err(|_| format!("addr:{a}: not an IP address or CIDR"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(format!("addr:{a}: prefix must be 0..={max}")),
            },
        };
        return Ok(Cond::Net {
            net: net.to_canonical(),
            prefix,
        });
    }
    Err(format!(
        "rule {c:?}: expected cn:NAME or addr:CIDR (joined by + when all must hold)"
    ))
}

fn in_net(addr: IpAddr, net: IpAddr, prefix: u8) -> bool {
    fn masked(bits: u128, prefix: u8, width: u8) -> u128 {
        if prefix == 0 {
            0
        } else {
            bits >> (width - prefix)
        }
    }
    match (addr.to_canonical(), net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            masked(u32::from(a).into(), prefix, 32) == masked(u32::from(n).into(), prefix, 32)
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            masked(u128::from(a), prefix, 128) == masked(u128::from(n), prefix, 128)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(e: &[&str]) -> AllowList {
        AllowList::parse(&e.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn peer<'a>(addr: &str, names: &'a [String]) -> Peer<'a> {
        Peer {
            addr: Some(addr.parse().unwrap()),
            names,
        }
    }

    #[test]
    fn modes_parse() {
        assert_eq!("off".parse(), Ok(TlsMode::Off));
        assert_eq!("optional".parse(), Ok(TlsMode::Optional));
        assert_eq!("require".parse(), Ok(TlsMode::Require));
        assert!("maybe".parse::<TlsMode>().is_err());
        assert_eq!(TlsMode::Require.to_string(), "require");
    }

    #[test]
    fn allow_rules() {
        let a = list(&[
            "lun0=cn:client1,addr:10.0.0.0/8",
            "lun0=addr:::1",
            "lun1=cn:Client2+addr:127.0.0.1",
        ]);
        let c1 = ["client1".to_string()];
        let c2 = ["client2".to_string()];
        let none: [String; 0] = [];
        assert!(a.allows("lun0", peer("192.168.1.1", &c1)));
        assert!(a.allows("lun0", peer("10.1.2.3", &none)));
        assert!(a.allows("lun0", peer("::ffff:10.1.2.3", &none)));
        assert!(a.allows("lun0", peer("::1", &none)));
        assert!(!a.allows("lun0", peer("127.0.0.1", &c2)));
        assert!(!a.allows("lun0", peer("11.0.0.1", &none)));
        // Both conditions must hold; names compare case-insensitively.
        assert!(a.allows("lun1", peer("127.0.0.1", &c2)));
        assert!(!a.allows("lun1", peer("127.0.0.2", &c2)));
        assert!(!a.allows("lun1", peer("127.0.0.1", &c1)));
        // Exports without rules are open; Unix-socket peers are not
        // subject to the list.
        assert!(a.allows("other", peer("8.8.8.8", &none)));
        assert!(a.allows(
            "lun1",
            Peer {
                addr: None,
                names: &none
            }
        ));
        assert!(a.has_names());
        assert!(a.restricts("lun0") && !a.restricts("other"));
    }

    #[test]
    fn allow_cidr_edges() {
        let a = list(&[
            "x=addr:0.0.0.0/0",
            "y=addr:192.168.4.0/22",
            "z=addr:fd00::/8",
        ]);
        let none: [String; 0] = [];
        assert!(a.allows("x", peer("1.2.3.4", &none)));
        assert!(!a.allows("x", peer("fd00::1", &none)));
        assert!(a.allows("y", peer("192.168.7.255", &none)));
        assert!(!a.allows("y", peer("192.168.8.0", &none)));
        assert!(a.allows("z", peer("fdff::1", &none)));
        assert!(!a.allows("z", peer("fe00::1", &none)));
    }

    #[test]
    fn allow_errors() {
        for bad in [
            "lun0",
            "=cn:a",
            "lun0=",
            "lun0=cn:",
            "lun0=addr:10.0.0.0/33",
            "lun0=addr:host",
            "lun0=user:bob",
            "lun0=cn:a+",
        ] {
            assert!(AllowList::parse(&[bad.to_string()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn tcp_mode_rules() {
        let plain = Security::default();
        let lo: SocketAddr = "127.0.0.1:10809".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:10809".parse().unwrap();
        let lo6: SocketAddr = "[::1]:10809".parse().unwrap();
        assert_eq!(plain.tcp_mode(lo), Ok(TlsMode::Off));
        assert_eq!(plain.tcp_mode(lo6), Ok(TlsMode::Off));
        let e = plain.tcp_mode(any).unwrap_err();
        assert!(e.0.contains("requires TLS"), "{e}");
        let forced = Security {
            mode: Some(TlsMode::Require),
            ..Security::default()
        };
        assert_eq!(forced.tcp_mode(any), Ok(TlsMode::Require));
        let off = Security {
            mode: Some(TlsMode::Off),
            ..Security::default()
        };
        assert!(off.tcp_mode("10.0.0.1:1".parse().unwrap()).is_err());
    }

    #[test]
    fn load_checks_settings() {
        let o = |f: &dyn Fn(&mut TlsOptions)| {
            let mut o = TlsOptions::default();
            f(&mut o);
            Security::load(&o)
        };
        assert!(o(&|_| {}).is_ok());
        assert!(o(&|o| o.cert = Some("/nonexistent".into())).is_err());
        assert!(o(&|o| o.ca = Some("/nonexistent".into())).is_err());
        assert!(o(&|o| o.mode = Some(TlsMode::Require)).is_err());
        assert!(o(&|o| o.allow = vec!["a=cn:x".into()]).is_err());
        assert!(o(&|o| o.allow = vec!["a=addr:127.0.0.1".into()]).is_ok());
        let e = o(&|o| {
            o.cert = Some("/nonexistent/c.pem".into());
            o.key = Some("/nonexistent/k.pem".into());
        })
        .unwrap_err();
        assert!(
            e.0.contains("cannot read TLS certificate /nonexistent/c.pem"),
            "{e}"
        );
    }
}
