//! TLS termination: certificates checked at load, chosen by SNI at handshake.
//!
//! Certificates are loaded and verified here *before* pingora sees them (pingora's own
//! `TlsSettings::build` panics on bad files). The listener's resolver
//! ([`crate::conn::tls`]) reads the current set through the shared `ArcSwap`, so a reload that
//! swaps the runtime rotates certificates for every new handshake without touching the listener.

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
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
