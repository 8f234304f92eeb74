//! TLS termination: certificates checked at load, chosen by SNI at handshake.
//!
//! Certificates are loaded and verified here *before* pingora sees them (pingora's own
//! `TlsSettings::build` panics on bad files). The listener gets one [`CertResolver`] that reads
//! the current [`Runtime`](crate::runtime::Runtime) through the shared `ArcSwap`, so a reload that
//! swaps the runtime rotates certificates for every new handshake without touching the listener.

use crate::state::SharedRuntime;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

/// Why a certificate/key pair was refused.
#[derive(Debug, thiserror::Error)]
pub enum CertProblem {
    #[error("cannot read certificate file {path}: {source}")]
    CertUnreadable {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot read key file {path}: {source}")]
    KeyUnreadable {
        path: String,
        source: std::io::Error,
    },
    #[error("no PEM certificate found in {0}")]
    NoCertificate(String),
    #[error("no PEM private key found in {0}")]
    NoKey(String),
    #[error("certificate in {path} does not parse: {reason}")]
    BadCertificate { path: String, reason: String },
    #[error("private key in {path} is not usable: {reason}")]
    BadKey { path: String, reason: String },
    #[error("private key {key} does not match certificate {cert}")]
    KeyMismatch { cert: String, key: String },
    #[error("certificate {path} expired at {not_after}")]
    Expired { path: String, not_after: String },
    #[error("certificate {path} is not valid before {not_before}")]
    NotYetValid { path: String, not_before: String },
}

impl CertProblem {
    /// Whether the problem is best reported at the `key` setting rather than `cert`.
    pub fn is_about_key(&self) -> bool {
        matches!(
            self,
            CertProblem::KeyUnreadable { .. }
                | CertProblem::NoKey(_)
                | CertProblem::BadKey { .. }
                | CertProblem::KeyMismatch { .. }
        )
    }
}

/// A verified certificate chain with its signing key.
#[derive(Clone)]
pub struct LoadedCert {
    /// Configured name (logs, metrics).
    pub name: String,
    /// Lower-cased SNI names: exact, or `*.suffix` wildcards.
    pub server_names: Vec<String>,
    /// Leaf `notAfter` as Unix seconds.
    pub not_after: i64,
    /// Leaf serial number, hex.
    pub serial: String,
    /// What rustls hands out.
    pub key: Arc<CertifiedKey>,
}

impl fmt::Debug for LoadedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedCert")
            .field("name", &self.name)
            .field("server_names", &self.server_names)
            .field("serial", &self.serial)
            .finish()
    }
}

impl LoadedCert {
    /// Loads a PEM chain and key, and checks that they parse, match, and are valid now.
    pub fn try_load(
        name: &str,
        cert_path: &Path,
        key_path: &Path,
        server_names: &[String],
    ) -> Result<Self, CertProblem> {
        let cp = cert_path.display().to_string();
        let kp = key_path.display().to_string();
        let cert_pem = std::fs::read(cert_path).map_err(|source| CertProblem::CertUnreadable {
            path: cp.clone(),
            source,
        })?;
        let key_pem = std::fs::read(key_path).map_err(|source| CertProblem::KeyUnreadable {
            path: kp.clone(),
            source,
        })?;
        Self::try_from_pem(name, &cp, &cert_pem, &kp, &key_pem, server_names)
    }

    /// As [`try_load`](Self::try_load), from bytes already read (`*_path` name them in errors).
    pub fn try_from_pem(
        name: &str,
        cert_path: &str,
        cert_pem: &[u8],
        key_path: &str,
        key_pem: &[u8],
        server_names: &[String],
    ) -> Result<Self, CertProblem> {
        let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &cert_pem[..])
            .collect::<Result<_, _>>()
            .map_err(|e| CertProblem::BadCertificate {
                path: cert_path.into(),
                reason: e.to_string(),
            })?;
        let leaf = chain
            .first()
            .ok_or_else(|| CertProblem::NoCertificate(cert_path.into()))?;
        let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key_pem[..])
            .map_err(|e| CertProblem::BadKey {
                path: key_path.into(),
                reason: e.to_string(),
            })?
            .ok_or_else(|| CertProblem::NoKey(key_path.into()))?;

        let (_, x509) = x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| {
            CertProblem::BadCertificate {
                path: cert_path.into(),
                reason: e.to_string(),
            }
        })?;
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let validity = x509.validity();
        if validity.not_after.timestamp() < now {
            return Err(CertProblem::Expired {
                path: cert_path.into(),
                not_after: validity.not_after.to_string(),
            });
        }
        if validity.not_before.timestamp() > now {
            return Err(CertProblem::NotYetValid {
                path: cert_path.into(),
                not_before: validity.not_before.to_string(),
            });
        }
        let mut names: Vec<String> = server_names
            .iter()
            .map(|n| n.to_ascii_lowercase())
            .collect();
        if names.is_empty() {
            if let Ok(Some(san)) = x509.subject_alternative_name() {
                for gn in &san.value.general_names {
                    if let x509_parser::extensions::GeneralName::DNSName(d) = gn {
                        names.push(d.to_ascii_lowercase());
                    }
                }
            }
        }
        let serial = x509.raw_serial_as_string().replace(':', "");
        let not_after = validity.not_after.timestamp();

        let signing = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| {
            CertProblem::BadKey {
                path: key_path.into(),
                reason: e.to_string(),
            }
        })?;
        let certified = CertifiedKey::new(chain, signing);
        certified
            .keys_match()
            .map_err(|_| CertProblem::KeyMismatch {
                cert: cert_path.into(),
                key: key_path.into(),
            })?;
        Ok(Self {
            name: name.into(),
            server_names: names,
            not_after,
            serial,
            key: Arc::new(certified),
        })
    }
}

/// All certificates of one runtime generation, indexed for SNI lookup.
#[derive(Debug)]
pub struct CertSet {
    exact: HashMap<String, usize>,
    wildcard: HashMap<String, usize>,
    default: usize,
    /// Every loaded certificate, in config order.
    pub certs: Vec<LoadedCert>,
}

impl CertSet {
    /// Indexes `certs` (each with its `default` flag); `None` when empty.
    pub fn new(certs: Vec<(LoadedCert, bool)>) -> Option<Self> {
        if certs.is_empty() {
            return None;
        }
        let default = certs.iter().position(|(_, d)| *d).unwrap_or(0);
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        let certs: Vec<LoadedCert> = certs.into_iter().map(|(c, _)| c).collect();
        for (i, c) in certs.iter().enumerate() {
            for n in &c.server_names {
                // First certificate naming a host wins, as in config order.
                match n.strip_prefix("*.") {
                    Some(suffix) => wildcard.entry(suffix.to_string()).or_insert(i),
                    None => exact.entry(n.clone()).or_insert(i),
                };
            }
        }
        Some(Self {
            exact,
            wildcard,
            default,
            certs,
        })
    }

    /// The certificate for an SNI name (already lower-case per RFC 6066), or the default one.
    pub fn select(&self, sni: Option<&str>) -> &LoadedCert {
        let idx = sni
            .and_then(|name| {
                self.exact.get(name).copied().or_else(|| {
                    name.split_once('.')
                        .and_then(|(_, suffix)| self.wildcard.get(suffix).copied())
                })
            })
            .unwrap_or(self.default);
        &self.certs[idx]
    }
}

/// rustls certificate resolver over the live runtime.
pub struct CertResolver {
    runtime: SharedRuntime,
}

impl CertResolver {
    /// A resolver reading certificates from whatever runtime is current at each handshake.
    pub fn new(runtime: SharedRuntime) -> Self {
        Self { runtime }
    }
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CertResolver")
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let rt = self.runtime.load();
        Some(rt.certs.select(hello.server_name()).key.clone())
    }
}

/// `TLSv1_3` (rustls' spelling) → `TLSv1.3` (what operators read everywhere else).
pub fn version_label(v: &str) -> &'static str {
    match v {
        "TLSv1_3" | "TLSv1.3" => "TLSv1.3",
        "TLSv1_2" | "TLSv1.2" => "TLSv1.2",
        _ => "other",
    }
}

/// Counts an open HTTPS connection for as long as it lives.
pub struct OpenConnection;

impl OpenConnection {
    /// A completed handshake: counted by protocol version, and the connection as open.
    pub fn handshake_done(version: &str) -> Self {
        crate::metrics::TLS_HANDSHAKES
            .with_label_values(&[version_label(version)])
            .inc();
        crate::metrics::OPEN_CONNECTIONS
            .with_label_values(&["https"])
            .inc();
        Self
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        crate::metrics::OPEN_CONNECTIONS
            .with_label_values(&["https"])
            .dec();
    }
}

/// Cipher suites in the order the server picks them (`ignore_client_order`): AEAD only, with
/// forward secrecy; AES-128-GCM first (as strong as the 128-bit-secure key exchanges, and its
/// SHA-256 key schedule is cheaper than SHA-384), ChaCha20 for clients without AES hardware.
fn cipher_suites() -> Vec<rustls::SupportedCipherSuite> {
    use rustls::crypto::ring::cipher_suite as cs;
    vec![
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ]
}

/// The rustls configuration of the HTTPS listener: TLS 1.2/1.3, the server's cipher order,
/// ALPN h2 + http/1.1, certificates from the resolver (so reloads rotate them).
pub fn server_config(runtime: SharedRuntime) -> rustls::ServerConfig {
    let provider = rustls::crypto::CryptoProvider {
        cipher_suites: cipher_suites(),
        ..rustls::crypto::ring::default_provider()
    };
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .unwrap_or_else(|_| unreachable!("ring supports TLS 1.2 and 1.3 with these suites"))
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(CertResolver::new(runtime)));
    config.ignore_client_order = true;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

/// The HTTPS listener's acceptor. The gateway runs the handshake itself (in
/// [`EdgeApp`](crate::conn_guard::EdgeApp)) rather than through pingora's `TlsSettings`, whose
/// builder offers no way to set the server's cipher order.
pub fn acceptor(runtime: SharedRuntime) -> pingora_core::listeners::tls::Acceptor {
    pingora_core::listeners::tls::Acceptor::from_server_config(Arc::new(server_config(runtime)))
}

/// The reason label (`gateway_tls_handshake_failures_total`) of a failed handshake's error.
pub fn handshake_failure_reason(error: &str) -> &'static str {
    let m = error.to_ascii_lowercase();
    if m.contains("eof") || m.contains("reset by peer") || m.contains("broken pipe") {
        "client_closed"
    } else if m.contains("received fatal alert") {
        // The client refused us (e.g. it does not trust the certificate).
        "client_alert"
    } else if m.contains("nociphersuitesincommon") {
        "no_shared_cipher"
    } else if m.contains("version") {
        "protocol_version"
    } else if m.contains("peer is incompatible") {
        "incompatible"
    } else if m.contains("corrupt message")
        || m.contains("peer misbehaved")
        || m.contains("invalid")
    {
        "malformed"
    } else {
        "other"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_failure_messages_are_classified() {
        let base = "TLSHandshakeFailure context: TLS accept() failed cause: ";
        for (tail, want) in [
            ("tls handshake eof", "client_closed"),
            ("Connection reset by peer (os error 104)", "client_closed"),
            ("received fatal alert: UnknownCA", "client_alert"),
            (
                "peer is incompatible: NoCipherSuitesInCommon",
                "no_shared_cipher",
            ),
            (
                "peer is incompatible: SupportedVersionsExtensionRequired",
                "protocol_version",
            ),
            (
                "received corrupt message of type InvalidContentType",
                "malformed",
            ),
            ("something new", "other"),
        ] {
            assert_eq!(
                handshake_failure_reason(&format!("{base}{tail}")),
                want,
                "{tail}"
            );
        }
    }
}
