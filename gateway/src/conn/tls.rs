//! The HTTPS listener's rustls configuration: TLS 1.2/1.3 with the server's cipher order,
//! ALPN h2 + http/1.1, and certificates chosen by SNI from the live runtime at each handshake
//! (so a reload rotates them without touching the listener).

use crate::state::SharedRuntime;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::fmt;
use std::sync::Arc;

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
/// [`EdgeApp`](super::EdgeApp)) rather than through pingora's `TlsSettings`, whose
/// builder offers no way to set the server's cipher order.
pub fn acceptor(runtime: SharedRuntime) -> pingora_core::listeners::tls::Acceptor {
    pingora_core::listeners::tls::Acceptor::from_server_config(Arc::new(server_config(runtime)))
}
