//! JWT at the edge: providers, key sets (JWKS file/URL, PEM, HMAC secret), verification with
//! every claim check, a verified-token cache, and the `request_filter` step of routes with
//! `auth = "jwt"`.
//!
//! What the token says never chooses how it is verified: the algorithm must be allowed by the
//! provider *and* match the key's type, the key comes from config (a `kid` picks among
//! configured keys; `jku`, `x5u`, `jwk`, `x5c` are ignored), `none` is never accepted, and an
//! HS* token can only meet an HMAC secret. `exp`, `iss` and `aud` are required and type-checked
//! (jsonwebtoken only checks them when present), `nbf` is validated, `iat` may not be in the
//! future, any `crit` header is refused (we implement no extension), and oversized tokens are
//! rejected before decoding. Rejection reasons are classes, never claim values or key bytes.

use arc_swap::ArcSwap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::{HeaderName, HeaderValue, Method};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;
use serde_spanned::Spanned;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Why a token was refused. The `as_str` names are the only detail clients see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthRejection {
    /// No token at all → 401 without an error code (RFC 6750 §3.1).
    Missing,
    Expired,
    NotYetValid,
    BadSignature,
    BadIssuer,
    BadAudience,
    UnknownKey,
    Malformed,
    TooLarge,
    AlgNotAllowed,
}

impl AuthRejection {
    /// The `error_description` class.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthRejection::Missing => "missing_token",
            AuthRejection::Expired => "expired",
            AuthRejection::NotYetValid => "not_yet_valid",
            AuthRejection::BadSignature => "bad_signature",
            AuthRejection::BadIssuer => "bad_issuer",
            AuthRejection::BadAudience => "bad_audience",
            AuthRejection::UnknownKey => "unknown_key",
            AuthRejection::Malformed => "malformed",
            AuthRejection::TooLarge => "too_large",
            AuthRejection::AlgNotAllowed => "alg_not_allowed",
        }
    }
}

/// Key type, matched against the token's `alg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFamily {
    Hmac,
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

fn family_of(alg: Algorithm) -> KeyFamily {
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => KeyFamily::Hmac,
        Algorithm::ES256 => KeyFamily::EcP256,
        Algorithm::ES384 => KeyFamily::EcP384,
        Algorithm::EdDSA => KeyFamily::Ed25519,
        _ => KeyFamily::Rsa,
    }
}

/// Parses an algorithm name from config or a token header (exact spelling only).
pub fn parse_alg(name: &str) -> Option<Algorithm> {
    Some(match name {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

/// One verification key.
#[derive(Clone)]
pub struct VerifyKey {
    kid: Option<String>,
    family: KeyFamily,
    /// `alg` the JWK pins, if any.
    alg: Option<Algorithm>,
    key: DecodingKey,
}

/// The keys of a provider at one point in time.
pub struct KeySet {
    keys: Vec<VerifyKey>,
    /// Bumped on every change; cached verdicts of older generations are ignored.
    pub generation: u64,
}

impl KeySet {
    /// Keys read from a JWKS document (unusable keys skipped, as a fetch does).
    pub fn from_jwks(text: &[u8]) -> Result<Self, KeyError> {
        Ok(Self {
            keys: parse_jwks(text, false)?,
            generation: 1,
        })
    }
}

/// Why key material was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{0}")]
    Io(String),
    #[error("JWKS is not valid JSON with a `keys` array: {0}")]
    BadJwks(String),
    #[error("no usable key found")]
    NoKeys,
    #[error("HMAC secret is {0} bytes; at least 32 are required")]
    WeakSecret(usize),
    #[error("RSA key is {0} bits; at least 2048 are required")]
    WeakRsa(usize),
    #[error("PEM is not an EdDSA, EC or RSA public key")]
    BadPem,
}

fn rsa_bits_from_n(n_b64: &str) -> usize {
    URL_SAFE_NO_PAD
        .decode(n_b64.trim_end_matches('='))
        .map(|n| {
            let lead = n.iter().take_while(|b| **b == 0).count();
            let n = &n[lead..];
            n.first()
                .map_or(0, |f| (n.len() - 1) * 8 + (8 - f.leading_zeros() as usize))
        })
        .unwrap_or(0)
}

/// Parses a JWKS document; weak and unsupported keys are skipped (strict: refused).
pub fn parse_jwks(text: &[u8], strict: bool) -> Result<Vec<VerifyKey>, KeyError> {
    let doc: Value = serde_json::from_slice(text).map_err(|e| KeyError::BadJwks(e.to_string()))?;
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| KeyError::BadJwks("missing `keys`".into()))?;
    let mut out = Vec::new();
    for k in keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(k.clone()) else {
            continue; // a key type we do not support: not an error for the others
        };
        let family = match &jwk.algorithm {
            AlgorithmParameters::RSA(p) => {
                let bits = rsa_bits_from_n(&p.n);
                if bits < 2048 {
                    if strict {
                        return Err(KeyError::WeakRsa(bits));
                    }
                    tracing::warn!(bits, "JWKS: RSA key under 2048 bits skipped");
                    continue;
                }
                KeyFamily::Rsa
            }
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => KeyFamily::EcP256,
                EllipticCurve::P384 => KeyFamily::EcP384,
                _ => continue,
            },
            AlgorithmParameters::OctetKeyPair(_) => KeyFamily::Ed25519,
            AlgorithmParameters::OctetKey(p) => {
                let len = URL_SAFE_NO_PAD
                    .decode(p.value.trim_end_matches('='))
                    .map_or(0, |v| v.len());
                if len < 32 {
                    if strict {
                        return Err(KeyError::WeakSecret(len));
                    }
                    tracing::warn!(len, "JWKS: HMAC key under 32 bytes skipped");
                    continue;
                }
                KeyFamily::Hmac
            }
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        let alg = jwk
            .common
            .key_algorithm
            .and_then(|a| parse_alg(&format!("{a:?}")));
        out.push(VerifyKey {
            kid: jwk.common.key_id.clone(),
            family,
            alg,
            key,
        });
    }
    if out.is_empty() {
        return Err(KeyError::NoKeys);
    }
    Ok(out)
}

/// A PEM public key (EdDSA, EC P-256/P-384, RSA ≥ 2048).
pub fn parse_pem_key(pem: &[u8]) -> Result<VerifyKey, KeyError> {
    let text = std::str::from_utf8(pem).map_err(|_| KeyError::BadPem)?;
    let der = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<String>();
    let der = base64::engine::general_purpose::STANDARD
        .decode(der.trim())
        .map_err(|_| KeyError::BadPem)?;
    let (_, spki) = <x509_parser::x509::SubjectPublicKeyInfo as x509_parser::prelude::FromDer<
        x509_parser::error::X509Error,
    >>::from_der(&der)
    .map_err(|_| KeyError::BadPem)?;
    use x509_parser::public_key::PublicKey;
    let family = match spki.parsed().map_err(|_| KeyError::BadPem)? {
        PublicKey::RSA(r) => {
            let bits = r.key_size();
            if bits < 2048 {
                return Err(KeyError::WeakRsa(bits));
            }
            KeyFamily::Rsa
        }
        PublicKey::EC(p) => match p.key_size() {
            256 => KeyFamily::EcP256,
            384 => KeyFamily::EcP384,
            _ => return Err(KeyError::BadPem),
        },
        _ if spki.algorithm.algorithm.to_id_string() == "1.3.101.112" => KeyFamily::Ed25519,
        _ => return Err(KeyError::BadPem),
    };
    let key = match family {
        KeyFamily::Rsa => DecodingKey::from_rsa_pem(pem),
        KeyFamily::EcP256 | KeyFamily::EcP384 => DecodingKey::from_ec_pem(pem),
        KeyFamily::Ed25519 => DecodingKey::from_ed_pem(pem),
        KeyFamily::Hmac => return Err(KeyError::BadPem),
    }
    .map_err(|_| KeyError::BadPem)?;
    Ok(VerifyKey {
        kid: None,
        family,
        alg: None,
        key,
    })
}

/// An HMAC secret (raw bytes; one trailing newline ignored).
pub fn parse_secret(bytes: &[u8]) -> Result<VerifyKey, KeyError> {
    let s = bytes
        .strip_suffix(b"\n")
        .map(|s| s.strip_suffix(b"\r").unwrap_or(s))
        .unwrap_or(bytes);
    if s.len() < 32 {
        return Err(KeyError::WeakSecret(s.len()));
    }
    Ok(VerifyKey {
        kid: None,
        family: KeyFamily::Hmac,
        alg: None,
        key: DecodingKey::from_secret(s),
    })
}

/// What a verified token grants.
#[derive(Debug)]
pub struct Identity {
    /// `sub`, if present.
    pub sub: Option<String>,
    /// Scopes from `scope` (space separated) or `scp` (array).
    pub scopes: Vec<String>,
    /// Headers to set upstream (from `claim_headers`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// `exp`, Unix seconds.
    pub exp: u64,
}

#[derive(Clone)]
struct CacheEntry {
    identity: Arc<Identity>,
    until: u64,
    generation: u64,
}

/// Bounded map from a token to its verdict. A full cache evicts what is least likely to be
/// asked again (quick_cache's CLOCK-Pro: one-off tokens of a storm leave first, the hot tokens
/// of signed-in users stay), so a storm of new tokens never empties it.
struct TokenCache {
    /// `None` when caching is off (`cache_ttl_seconds = 0` or `cache_max_entries = 0`).
    map: Option<quick_cache::sync::Cache<Box<str>, CacheEntry>>,
    ttl: u64,
}

impl TokenCache {
    fn new(max: usize, ttl: u64) -> Self {
        Self {
            map: (max > 0 && ttl > 0).then(|| quick_cache::sync::Cache::new(max)),
            ttl,
        }
    }

    fn get(&self, token: &str, now: u64, generation: u64) -> Option<Arc<Identity>> {
        let e = self.map.as_ref()?.get(token)?;
        (now < e.until && e.generation == generation).then_some(e.identity)
    }

    fn put(&self, token: &str, identity: Arc<Identity>, now: u64, generation: u64) {
        let Some(map) = &self.map else {
            return;
        };
        let until = identity.exp.min(now + self.ttl);
        map.insert(
            token.into(),
            CacheEntry {
                identity,
                until,
                generation,
            },
        );
    }

    fn len(&self) -> usize {
        self.map.as_ref().map_or(0, |m| m.len())
    }
}

/// A configured issuer with its keys and cache. Kept across reloads while its config is
/// unchanged, so the JWKS and the cache survive.
pub struct JwtProvider {
    /// Configured name.
    pub name: String,
    /// The config it was built from.
    pub conf: JwtProviderConf,
    algorithms: Vec<Algorithm>,
    claim_headers: Vec<(String, HeaderName)>,
    keys: ArcSwap<KeySet>,
    loaded: std::sync::atomic::AtomicBool,
    generation: AtomicU64,
    cache: TokenCache,
    fetch_lock: tokio::sync::Mutex<()>,
    last_fetch: std::sync::Mutex<Option<Instant>>,
    /// Unix seconds of the last successful JWKS fetch (0 = never).
    pub last_success: AtomicU64,
    /// Where remote keys come from, and the client that fetches them (`None`: file keys).
    remote: Option<Remote>,
    /// Why the last fetch failed (cleared by a success): shown on `/readyz`.
    last_error: std::sync::Mutex<Option<String>>,
}

/// A remote key source and its HTTPS client (trust roots fixed when the provider is built).
struct Remote {
    /// The JWKS URL, or the OIDC discovery document's URL.
    source: RemoteSource,
    client: reqwest::Client,
    allow_insecure_http: bool,
    /// The `ca_file` bytes the client trusts (compared on reload), `None`: platform roots.
    ca_pem: Option<Vec<u8>>,
}

enum RemoteSource {
    Jwks(reqwest::Url),
    Discovery(reqwest::Url),
}

/// The most a JWKS or discovery document may weigh.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// The platform's trust store, read once (rustls-native-certs: `/etc/ssl/certs` on Debian and
/// distroless, `SSL_CERT_FILE` / `SSL_CERT_DIR` when set). Chosen over a compiled-in Mozilla
/// list so operators trust an identity provider the way every other program on the host or
/// image does, and CA updates ship with the OS image, not with a gateway rebuild.
static PLATFORM_ROOTS: std::sync::LazyLock<Vec<rustls::pki_types::CertificateDer<'static>>> =
    std::sync::LazyLock::new(|| match rustls_native_certs::load_native_certs() {
        Ok(certs) => certs,
        Err(e) => {
            tracing::warn!(error = %e, "could not read the platform's trust store");
            Vec::new()
        }
    });

/// Whether `url` names this host (plain http is then no exposure).
fn is_loopback(url: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or("");
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Parses a key-source URL: https, or http on loopback or when explicitly allowed.
fn check_url(
    what: &'static str,
    text: &str,
    allow_insecure_http: bool,
) -> Result<reqwest::Url, ProviderError> {
    let url = reqwest::Url::parse(text).map_err(|_| ProviderError::BadUrl(what, text.into()))?;
    match url.scheme() {
        "https" if url.host_str().is_some() => Ok(url),
        "http" if url.host_str().is_some() && (allow_insecure_http || is_loopback(&url)) => Ok(url),
        "http" => Err(ProviderError::InsecureUrl(what, text.into())),
        _ => Err(ProviderError::BadUrl(what, text.into())),
    }
}

/// An error with its causes (reqwest's own text hides the TLS reason, e.g. `UnknownIssuer`).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// Why a JWKS (or discovery) fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("GET {0}: {1}")]
    Http(String, String),
    #[error("GET {0}: status {1}")]
    Status(String, u16),
    #[error("GET {0}: larger than 1 MiB")]
    TooLarge(String),
    #[error("discovery document {0}: {1}")]
    Discovery(String, String),
    #[error("discovery document says issuer `{got}`, configured issuer is `{want}`: refused")]
    IssuerMismatch { got: String, want: String },
    #[error("discovery jwks_uri: {0}")]
    JwksUri(ProviderError),
    #[error("JWKS: {0}")]
    Keys(#[from] KeyError),
}

impl Remote {
    fn try_new(
        conf: &JwtProviderConf,
        base: &std::path::Path,
    ) -> Result<Option<Self>, ProviderError> {
        let insecure = conf.allow_insecure_http;
        let source = match (&conf.jwks_url, conf.discovery) {
            (Some(url), false) => RemoteSource::Jwks(check_url("jwks_url", url, insecure)?),
            (None, true) => {
                let issuer = check_url("issuer", &conf.issuer, insecure)?;
                let doc = format!(
                    "{}/.well-known/openid-configuration",
                    issuer.as_str().trim_end_matches('/')
                );
                RemoteSource::Discovery(check_url("issuer", &doc, insecure)?)
            }
            _ => {
                if conf.ca_file.is_some() {
                    return Err(ProviderError::CaWithoutRemote);
                }
                return Ok(None);
            }
        };
        let mut roots = rustls::RootCertStore::empty();
        let ca_pem = match &conf.ca_file {
            Some(f) => {
                let path = crate::path::resolve(base, f.get_ref());
                let pem = std::fs::read(&path)
                    .map_err(|e| ProviderError::CaFile(format!("{}: {e}", path.display())))?;
                for c in rustls_pemfile::certs(&mut pem.as_slice()) {
                    let c =
                        c.map_err(|e| ProviderError::CaFile(format!("{}: {e}", path.display())))?;
                    roots
                        .add(c)
                        .map_err(|e| ProviderError::CaFile(format!("{}: {e}", path.display())))?;
                }
                if roots.is_empty() {
                    return Err(ProviderError::CaFile(format!(
                        "{}: no PEM certificate in it",
                        path.display()
                    )));
                }
                Some(pem)
            }
            None => {
                roots.add_parsable_certificates(PLATFORM_ROOTS.iter().cloned());
                // A plain-http source (loopback, or allowed) needs no trust store.
                let https = match &source {
                    RemoteSource::Jwks(u) | RemoteSource::Discovery(u) => u.scheme() == "https",
                };
                if roots.is_empty() && https {
                    return Err(ProviderError::NoRoots);
                }
                None
            }
        };
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| ProviderError::Client(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        // A redirect may not downgrade to plain http where the URL itself could not be.
        let redirects = reqwest::redirect::Policy::custom(move |a| {
            if a.previous().len() >= 5 {
                a.error("more than 5 redirects")
            } else if a.url().scheme() != "https" && !insecure && !is_loopback(a.url()) {
                a.error("redirect to plain http refused")
            } else {
                a.follow()
            }
        });
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .redirect(redirects)
            .timeout(Duration::from_millis(conf.jwks_timeout_ms))
            .user_agent(concat!("gateway/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ProviderError::Client(error_chain(&e)))?;
        Ok(Some(Self {
            source,
            client,
            allow_insecure_http: insecure,
            ca_pem,
        }))
    }

    /// GET `url`, at most [`MAX_DOCUMENT_BYTES`].
    async fn get(&self, url: &reqwest::Url) -> Result<Vec<u8>, FetchError> {
        let http = |e: reqwest::Error| FetchError::Http(url.to_string(), error_chain(&e));
        let mut resp = self.client.get(url.clone()).send().await.map_err(http)?;
        if !resp.status().is_success() {
            return Err(FetchError::Status(url.to_string(), resp.status().as_u16()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(http)? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(FetchError::TooLarge(url.to_string()));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// The keys: via the discovery document's `jwks_uri` (its `issuer` checked) or directly.
    async fn fetch(&self, issuer: &str) -> Result<Vec<VerifyKey>, FetchError> {
        let jwks_url = match &self.source {
            RemoteSource::Jwks(url) => url.clone(),
            RemoteSource::Discovery(doc_url) => {
                #[derive(serde::Deserialize)]
                struct Doc {
                    issuer: String,
                    jwks_uri: String,
                }
                let text = self.get(doc_url).await?;
                let doc: Doc = serde_json::from_slice(&text)
                    .map_err(|e| FetchError::Discovery(doc_url.to_string(), e.to_string()))?;
                // OpenID Connect Discovery §4.3: exactly the issuer asked for.
                if doc.issuer != issuer {
                    return Err(FetchError::IssuerMismatch {
                        got: doc.issuer,
                        want: issuer.to_string(),
                    });
                }
                check_url("jwks_uri", &doc.jwks_uri, self.allow_insecure_http)
                    .map_err(FetchError::JwksUri)?
            }
        };
        let body = self.get(&jwks_url).await?;
        Ok(parse_jwks(&body, false)?)
    }
}

impl std::fmt::Debug for JwtProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtProvider")
            .field("name", &self.name)
            .finish()
    }
}

/// Why a provider definition was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("exactly one of jwks_url, discovery, jwks_file, key_file, secret_file is required")]
    KeySource,
    #[error("algorithm `{0}` is not supported (none is never allowed)")]
    BadAlgorithm(String),
    #[error("no algorithm allowed")]
    NoAlgorithms,
    #[error("audiences must not be empty")]
    NoAudience,
    #[error("`{0}` is not a valid header name")]
    BadHeader(String),
    #[error("{0} `{1}` is not an https:// (or http://) URL with a host")]
    BadUrl(&'static str, String),
    #[error("{0} `{1}` is plain http to another host: anyone on the path could swap the keys the gateway trusts; use https, or set allow_insecure_http = true")]
    InsecureUrl(&'static str, String),
    #[error("ca_file: {0}")]
    CaFile(String),
    #[error("ca_file applies only to jwks_url or discovery")]
    CaWithoutRemote,
    #[error("no trust roots: the platform's store is empty or unreadable; set ca_file")]
    NoRoots,
    #[error("JWKS client: {0}")]
    Client(String),
    #[error("key material: {0}")]
    Key(#[from] KeyError),
    #[error("algorithm {0} has no key of its type")]
    NoKeyForAlg(String),
}

/// Unix seconds now (0 before the epoch).
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl JwtProvider {
    /// Builds a provider; file-based keys are loaded now (relative to `base`).
    pub fn try_from_conf(
        name: &str,
        conf: &JwtProviderConf,
        base: &std::path::Path,
    ) -> Result<Self, ProviderError> {
        let sources = [
            conf.jwks_url.is_some(),
            conf.discovery,
            conf.jwks_file.is_some(),
            conf.key_file.is_some(),
            conf.secret_file.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            return Err(ProviderError::KeySource);
        }
        if conf.ca_file.is_some() && !conf.is_remote() {
            return Err(ProviderError::CaWithoutRemote);
        }
        if conf.audiences.is_empty() {
            return Err(ProviderError::NoAudience);
        }
        let mut algorithms = Vec::new();
        for a in &conf.algorithms {
            match a {
                AlgorithmConf::Known(a) => algorithms.push(*a),
                AlgorithmConf::Unknown(a) => return Err(ProviderError::BadAlgorithm(a.clone())),
            }
        }
        if algorithms.is_empty() {
            return Err(ProviderError::NoAlgorithms);
        }
        let mut claim_headers = Vec::new();
        for (claim, h) in &conf.claim_headers {
            let hn = HeaderName::from_bytes(h.as_bytes())
                .map_err(|_| ProviderError::BadHeader(h.clone()))?;
            claim_headers.push((claim.clone(), hn));
        }
        let read = |p: &serde_spanned::Spanned<String>| {
            let path = crate::path::resolve(base, p.get_ref());
            std::fs::read(&path).map_err(|e| KeyError::Io(format!("{}: {e}", path.display())))
        };
        let (keys, loaded) = if let Some(f) = &conf.jwks_file {
            (parse_jwks(&read(f)?, true)?, true)
        } else if let Some(f) = &conf.key_file {
            (vec![parse_pem_key(&read(f)?)?], true)
        } else if let Some(f) = &conf.secret_file {
            (vec![parse_secret(&read(f)?)?], true)
        } else {
            (Vec::new(), false)
        };
        let remote = Remote::try_new(conf, base)?;
        if loaded {
            // Every allowed algorithm must be able to meet a key; a config allowing HS256 next
            // to an RSA key is a mistake, not a feature.
            for a in &algorithms {
                if !keys.iter().any(|k| k.family == family_of(*a)) {
                    return Err(ProviderError::NoKeyForAlg(format!("{a:?}")));
                }
            }
        }
        Ok(Self {
            name: name.to_string(),
            conf: conf.clone(),
            algorithms,
            claim_headers,
            keys: ArcSwap::from_pointee(KeySet {
                keys,
                generation: 1,
            }),
            loaded: std::sync::atomic::AtomicBool::new(loaded),
            generation: AtomicU64::new(1),
            cache: TokenCache::new(conf.cache_max_entries, conf.cache_ttl_seconds),
            fetch_lock: tokio::sync::Mutex::new(()),
            last_fetch: std::sync::Mutex::new(None),
            last_success: AtomicU64::new(if loaded { now_secs() } else { 0 }),
            remote,
            last_error: std::sync::Mutex::new(None),
        })
    }

    /// Whether the trust this provider was built with still matches `ca_file` on disk (a
    /// rotated private CA makes a reload build a new client).
    pub fn trust_unchanged(&self, base: &std::path::Path) -> bool {
        let on_disk = self
            .conf
            .ca_file
            .as_ref()
            .map(|f| std::fs::read(crate::path::resolve(base, f.get_ref())).ok());
        let held = self.remote.as_ref().map(|r| r.ca_pem.clone());
        match (on_disk, held) {
            (None, _) => true,
            (Some(disk), Some(held)) => disk.is_some() && disk == held,
            (Some(_), None) => false,
        }
    }

    /// A rebuilt provider (its config changed, or its `ca_file` rotated) starts with the keys
    /// its predecessor fetched when both fetch from the same place for the same issuer: a
    /// reload must not make the gateway unready, nor refuse tokens, until the next fetch.
    pub fn adopt_keys_from(&self, previous: &JwtProvider) {
        let same_source = self.remote.is_some()
            && previous.is_ready()
            && previous.conf.issuer == self.conf.issuer
            && previous.conf.jwks_url == self.conf.jwks_url
            && previous.conf.discovery == self.conf.discovery;
        if same_source && !self.is_ready() {
            let keys = previous.keys.load_full();
            self.generation.store(keys.generation, Ordering::Release);
            self.keys.store(keys);
            self.loaded.store(true, Ordering::Release);
            self.last_success.store(
                previous.last_success.load(Ordering::Relaxed),
                Ordering::Relaxed,
            );
        }
    }

    /// Why the last JWKS fetch failed, until one succeeds.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// Whether keys are loaded (a JWKS URL answered at least once).
    pub fn is_ready(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Tokens currently cached.
    pub fn cached_tokens(&self) -> usize {
        self.cache.len()
    }

    fn install(&self, keys: Vec<VerifyKey>) {
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.keys.store(Arc::new(KeySet { keys, generation }));
        self.loaded.store(true, Ordering::Release);
        self.last_success.store(now_secs(), Ordering::Relaxed);
    }

    /// Fetches the JWKS now (single flight). Keeps the last good set on failure.
    pub async fn fetch_jwks(&self) -> Result<(), FetchError> {
        let _guard = self.fetch_lock.lock().await;
        self.fetch_locked().await
    }

    /// The fetch itself; the caller holds `fetch_lock`.
    async fn fetch_locked(&self) -> Result<(), FetchError> {
        let Some(remote) = &self.remote else {
            return Ok(());
        };
        if let Ok(mut l) = self.last_fetch.lock() {
            *l = Some(Instant::now());
        }
        let result = remote.fetch(&self.conf.issuer).await;
        if let Ok(mut last) = self.last_error.lock() {
            *last = result.as_ref().err().map(|e| e.to_string());
        }
        self.install(result?);
        Ok(())
    }

    /// On an unknown `kid`: refetch unless a fetch happened within the cooldown. Concurrent
    /// callers queue on the lock and find the fresh fetch done (single flight).
    async fn refetch_for_unknown_kid(&self) {
        if self.remote.is_none() {
            return;
        }
        let cooldown = Duration::from_secs(self.conf.jwks_refetch_cooldown_seconds);
        let _ = tokio::time::timeout(Duration::from_millis(self.conf.jwks_timeout_ms), async {
            let _guard = self.fetch_lock.lock().await;
            let last = self.last_fetch.lock().ok().and_then(|l| *l);
            if last.is_some_and(|t| t.elapsed() < cooldown) {
                return;
            }
            if let Err(e) = self.fetch_locked().await {
                tracing::warn!(provider = %self.name, error = %e, "JWKS refetch failed");
            }
        })
        .await;
    }

    /// Whether the keys are due for a fetch (first load, or the refresh period passed).
    pub fn needs_refresh(&self) -> bool {
        if self.remote.is_none() {
            return false;
        }
        let last = self.last_fetch.lock().ok().and_then(|l| *l);
        match last {
            None => true,
            // Not loaded yet: retry every second. Loaded: every refresh interval.
            Some(t) if !self.is_ready() => t.elapsed() >= Duration::from_secs(1),
            Some(t) => t.elapsed() >= Duration::from_secs(self.conf.jwks_refresh_seconds.max(1)),
        }
    }

    /// Verifies `token` and returns the identity it grants.
    pub async fn verify(&self, token: &str) -> Result<Arc<Identity>, AuthRejection> {
        let now = now_secs();
        let generation = self.keys.load().generation;
        if let Some(id) = self.cache.get(token, now, generation) {
            return Ok(id);
        }
        let mut keys = self.keys.load_full();
        let mut verdict = self.verify_with(&keys, token, now);
        if verdict
            .as_ref()
            .is_err_and(|r| *r == AuthRejection::UnknownKey)
            && parse_header(token).is_ok_and(|h| h.kid.is_some())
        {
            self.refetch_for_unknown_kid().await;
            keys = self.keys.load_full();
            verdict = self.verify_with(&keys, token, now);
        }
        let id = Arc::new(verdict?);
        self.cache.put(token, id.clone(), now, keys.generation);
        Ok(id)
    }

    /// The keys held now (file keys, or the last JWKS fetched).
    pub fn keys(&self) -> Arc<KeySet> {
        self.keys.load_full()
    }

    /// Whether keys come from the network (`jwks_url` or discovery) rather than files.
    pub fn fetches_keys(&self) -> bool {
        self.remote.is_some()
    }

    /// Verifies `token` against `keys` at Unix time `now`: no cache, no fetch. The whole
    /// verdict of [`verify`](Self::verify) but for the refetch on an unknown `kid`.
    pub fn verify_with(
        &self,
        keys: &KeySet,
        token: &str,
        now: u64,
    ) -> Result<Identity, AuthRejection> {
        if token.len() > self.conf.max_token_bytes {
            return Err(AuthRejection::TooLarge);
        }
        let header = parse_header(token)?;
        let alg = parse_alg(&header.alg).ok_or(AuthRejection::AlgNotAllowed)?;
        if !self.algorithms.contains(&alg) {
            return Err(AuthRejection::AlgNotAllowed);
        }
        let candidates = select_keys(keys, header.kid.as_deref(), alg);
        if candidates.is_empty() {
            return Err(AuthRejection::UnknownKey);
        }
        let mut v = Validation::new(alg);
        v.leeway = self.conf.leeway_seconds;
        v.validate_nbf = true;
        v.validate_exp = true;
        // Only `exp` is required here so that expiry is judged right after the signature (an
        // expired token says "expired"); `iss`/`aud` presence and types are checked below.
        v.set_required_spec_claims(&["exp"]);
        v.set_issuer(&[&self.conf.issuer]);
        v.set_audience(&self.conf.audiences);
        let mut last = AuthRejection::BadSignature;
        for key in candidates {
            match jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &key.key, &v) {
                Ok(data) => return self.identity(&data.claims, now),
                Err(e) => {
                    last = map_error(e.kind());
                    if last != AuthRejection::BadSignature {
                        break;
                    }
                }
            }
        }
        Err(last)
    }

    /// Type checks jsonwebtoken does not do, then the identity.
    fn identity(
        &self,
        claims: &serde_json::Map<String, Value>,
        now: u64,
    ) -> Result<Identity, AuthRejection> {
        let exp = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or(AuthRejection::Malformed)?;
        if !claims.get("iss").is_some_and(Value::is_string) {
            return Err(AuthRejection::BadIssuer);
        }
        let aud_ok = match claims.get("aud") {
            Some(Value::String(_)) => true,
            Some(Value::Array(a)) => !a.is_empty() && a.iter().all(Value::is_string),
            _ => false,
        };
        if !aud_ok {
            return Err(AuthRejection::BadAudience);
        }
        for c in ["nbf", "iat"] {
            if claims.get(c).is_some_and(|v| !v.is_u64()) {
                return Err(AuthRejection::Malformed);
            }
        }
        if let Some(iat) = claims.get("iat").and_then(Value::as_u64) {
            if iat > now + self.conf.leeway_seconds {
                return Err(AuthRejection::NotYetValid);
            }
        }
        let sub = match claims.get("sub") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(AuthRejection::Malformed),
        };
        let scopes: Vec<String> = match (claims.get("scope"), claims.get("scp")) {
            (Some(Value::String(s)), _) => s.split_whitespace().map(String::from).collect(),
            (_, Some(Value::Array(a))) => a
                .iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect(),
            _ => Vec::new(),
        };
        let mut headers = Vec::new();
        for (claim, name) in &self.claim_headers {
            let text = match claims.get(claim) {
                None | Some(Value::Null) => continue,
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|v| v.as_str().map_or_else(|| v.to_string(), String::from))
                    .collect::<Vec<_>>()
                    .join(" "),
                Some(v) => v.to_string(),
            };
            if let Ok(hv) = HeaderValue::from_str(&text) {
                headers.push((name.clone(), hv));
            }
        }
        Ok(Identity {
            sub,
            scopes,
            headers,
            exp,
        })
    }
}

fn select_keys<'a>(keys: &'a KeySet, kid: Option<&str>, alg: Algorithm) -> Vec<&'a VerifyKey> {
    let family = family_of(alg);
    let fits = |k: &&VerifyKey| k.family == family && k.alg.is_none_or(|a| a == alg);
    match kid {
        // A kid names one key; an unknown kid is never answered by trying the others.
        Some(kid) => keys
            .keys
            .iter()
            .filter(|k| k.kid.as_deref() == Some(kid))
            .filter(fits)
            .take(1)
            .collect(),
        None => keys.keys.iter().filter(fits).take(4).collect(),
    }
}

fn map_error(kind: &jsonwebtoken::errors::ErrorKind) -> AuthRejection {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::ExpiredSignature => AuthRejection::Expired,
        K::ImmatureSignature => AuthRejection::NotYetValid,
        K::InvalidIssuer => AuthRejection::BadIssuer,
        K::InvalidAudience => AuthRejection::BadAudience,
        K::InvalidSignature => AuthRejection::BadSignature,
        K::InvalidAlgorithm | K::InvalidAlgorithmName | K::MissingAlgorithm => {
            AuthRejection::AlgNotAllowed
        }
        K::MissingRequiredClaim(c) if c == "iss" => AuthRejection::BadIssuer,
        K::MissingRequiredClaim(c) if c == "aud" => AuthRejection::BadAudience,
        _ => AuthRejection::Malformed,
    }
}

/// The parts of the JOSE header we look at.
#[derive(Debug, serde::Deserialize)]
struct JoseHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
}

fn is_b64url(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn parse_header(token: &str) -> Result<JoseHeader, AuthRejection> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthRejection::Malformed);
    };
    if !is_b64url(h) || !is_b64url(p) || !is_b64url(s) {
        return Err(AuthRejection::Malformed);
    }
    let raw = URL_SAFE_NO_PAD
        .decode(h)
        .map_err(|_| AuthRejection::Malformed)?;
    let header: JoseHeader = serde_json::from_slice(&raw).map_err(|_| AuthRejection::Malformed)?;
    if header.alg.eq_ignore_ascii_case("none") {
        return Err(AuthRejection::AlgNotAllowed);
    }
    if header.crit.is_some() {
        // RFC 7515 §4.1.11: we understand no extension, so any `crit` is unsupported.
        return Err(AuthRejection::Malformed);
    }
    Ok(header)
}

/// A compiled `auth = "jwt"` policy of a route.
#[derive(Debug)]
pub struct RoutePolicy {
    /// The provider.
    pub provider: Arc<JwtProvider>,
    /// Requests needing no token.
    pub public: Vec<(Option<Method>, String)>,
    /// Scope rules: (methods, scopes); empty methods = any.
    pub scopes: Vec<(Vec<Method>, Vec<String>)>,
}

/// Why a route policy was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("auth_public entry `{0}`: expected \"METHOD /path\" or \"/path\"")]
    BadPublic(String),
    #[error("`{0}` is not an HTTP method")]
    BadMethod(String),
}

impl RoutePolicy {
    /// Compiles a route's auth settings.
    pub fn try_new(
        provider: Arc<JwtProvider>,
        public: &[String],
        scopes: &[ScopeRuleConf],
    ) -> Result<Self, PolicyError> {
        let method = |m: &str| {
            Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes())
                .map_err(|_| PolicyError::BadMethod(m.to_string()))
        };
        let mut pubs = Vec::new();
        for p in public {
            let (m, path) = match p.trim().split_once(' ') {
                Some((m, path)) if m != "*" => (Some(method(m)?), path.trim()),
                Some((_, path)) => (None, path.trim()),
                None => (None, p.trim()),
            };
            if !path.starts_with('/') {
                return Err(PolicyError::BadPublic(p.clone()));
            }
            pubs.push((m, path.to_string()));
        }
        let mut rules = Vec::new();
        for r in scopes {
            let ms = r
                .methods
                .iter()
                .map(|m| method(m))
                .collect::<Result<Vec<_>, _>>()?;
            rules.push((ms, r.scopes.clone()));
        }
        Ok(Self {
            provider,
            public: pubs,
            scopes: rules,
        })
    }

    /// Whether `method path` needs no token.
    pub fn is_public(&self, method: &Method, path: &str) -> bool {
        self.public.iter().any(|(m, p)| {
            m.as_ref().is_none_or(|m| m == method)
                && match p.strip_suffix("/*") {
                    Some(prefix) => crate::path::prefix_matches(prefix, path),
                    None => p == path,
                }
        })
    }

    /// The first scope the identity lacks for `method`, if any.
    pub fn missing_scope<'a>(&'a self, method: &Method, id: &Identity) -> Option<&'a str> {
        self.scopes
            .iter()
            .filter(|(ms, _)| ms.is_empty() || ms.contains(method))
            .flat_map(|(_, scopes)| scopes.iter())
            .find(|s| !id.scopes.iter().any(|have| have == *s))
            .map(String::as_str)
    }
}

/// Takes the bearer token from `Authorization` (exactly one header, `Bearer` scheme) or the
/// provider's cookie.
pub fn extract_token<'a>(
    req: &'a pingora_http::RequestHeader,
    cookie: Option<&str>,
) -> Result<&'a str, AuthRejection> {
    let mut auth = req.headers.get_all(http::header::AUTHORIZATION).iter();
    match (auth.next(), auth.next()) {
        (Some(_), Some(_)) => return Err(AuthRejection::Malformed),
        (Some(v), None) => {
            let v = v.to_str().map_err(|_| AuthRejection::Malformed)?;
            let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
            if !scheme.eq_ignore_ascii_case("bearer") {
                return Err(AuthRejection::Malformed);
            }
            let token = rest.trim();
            if token.is_empty() {
                return Err(AuthRejection::Malformed);
            }
            return Ok(token);
        }
        _ => {}
    }
    if let Some(v) = cookie.and_then(|name| crate::http::cookie::value(&req.headers, name)) {
        return Ok(v);
    }
    Err(AuthRejection::Missing)
}

/// A JWT issuer the gateway trusts. Exactly one key source: `jwks_url`, `discovery` (OIDC),
/// `jwks_file`, `key_file` (PEM public key) or `secret_file` (HMAC secret, ≥ 32 bytes).
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JwtProviderConf {
    /// Required `iss`.
    pub issuer: String,
    /// Accepted `aud` values (one must match).
    pub audiences: Vec<String>,
    /// Allowed `alg` values. Default `["EdDSA"]`. Choices: EdDSA, ES256, ES384, RS256, RS384,
    /// RS512, PS256, PS384, PS512, HS256, HS384, HS512.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<AlgorithmConf>,
    /// Clock skew allowed on `exp`, `nbf`, `iat`, seconds. Default 30.
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    /// JWKS over HTTP(S): fetched at start (not ready until it succeeds), refreshed, refetched on
    /// an unknown `kid`.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// OIDC discovery: read `{issuer}/.well-known/openid-configuration`, require its `issuer`
    /// to equal `issuer` exactly, and use its `jwks_uri` (re-read at every JWKS refresh).
    /// Default false.
    #[serde(default)]
    pub discovery: bool,
    /// PEM CA bundle trusted for `jwks_url` / `discovery` instead of the platform's trust
    /// store (a private CA). Default: the platform's roots (`/etc/ssl/certs` and the like).
    #[serde(default)]
    pub ca_file: Option<Spanned<String>>,
    /// Allow a plain `http://` JWKS or issuer URL on a non-loopback host. Anyone on the path
    /// could then swap the keys the gateway trusts. Default false (loopback is always allowed).
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// JWKS from a file.
    #[serde(default)]
    pub jwks_file: Option<Spanned<String>>,
    /// PEM public key (EdDSA, EC or RSA ≥ 2048 bits).
    #[serde(default)]
    pub key_file: Option<Spanned<String>>,
    /// HMAC secret file (raw bytes, trailing newline ignored), ≥ 32 bytes.
    #[serde(default)]
    pub secret_file: Option<Spanned<String>>,
    /// Seconds between JWKS refreshes. Default 300.
    #[serde(default = "default_refresh")]
    pub jwks_refresh_seconds: u64,
    /// Least seconds between refetches triggered by unknown `kid`s. Default 30.
    #[serde(default = "default_cooldown")]
    pub jwks_refetch_cooldown_seconds: u64,
    /// JWKS fetch timeout, ms. Default 3000.
    #[serde(default = "default_jwks_timeout")]
    pub jwks_timeout_ms: u64,
    /// Also take the token from this cookie when there is no `Authorization`. Default none.
    #[serde(default)]
    pub cookie: Option<String>,
    /// Tokens longer than this are rejected before any decoding. Default 8192.
    #[serde(default = "default_max_token")]
    pub max_token_bytes: usize,
    /// Verified tokens are cached this long at most (and never past `exp`), seconds; 0 = no cache.
    /// Default 300.
    #[serde(default = "default_cache_ttl")]
    pub cache_ttl_seconds: u64,
    /// Most tokens cached. Default 10000.
    #[serde(default = "default_cache_entries")]
    pub cache_max_entries: usize,
    /// Claim → upstream header. Default `{ sub = "X-Auth-Subject", scope = "X-Auth-Scopes" }`.
    #[serde(default = "default_claim_headers")]
    pub claim_headers: BTreeMap<String, String>,
    /// Forward the client's `Authorization` header upstream. Default true.
    #[serde(default = "default_true")]
    pub forward_authorization: bool,
    /// `realm` in `WWW-Authenticate`. Default `api`.
    #[serde(default = "default_realm")]
    pub realm: String,
}

fn default_algorithms() -> Vec<AlgorithmConf> {
    vec![AlgorithmConf::Known(Algorithm::EdDSA)]
}

/// One entry of `algorithms`: a JOSE `alg` name, or anything else — kept as written so that
/// validation reports it with every other problem of the file (serde would stop at the first).
#[derive(Debug, Deserialize, Clone, PartialEq, Eq)]
#[serde(untagged)]
pub enum AlgorithmConf {
    /// A supported algorithm (exact spelling).
    Known(Algorithm),
    /// Not one (`none`, a typo): refused by validation.
    Unknown(String),
}

fn default_leeway() -> u64 {
    30
}

fn default_refresh() -> u64 {
    300
}

fn default_cooldown() -> u64 {
    30
}

fn default_jwks_timeout() -> u64 {
    3000
}

fn default_max_token() -> usize {
    8192
}

fn default_cache_ttl() -> u64 {
    300
}

fn default_cache_entries() -> usize {
    10_000
}

fn default_claim_headers() -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("sub".into(), "X-Auth-Subject".into());
    m.insert("scope".into(), "X-Auth-Scopes".into());
    m
}

fn default_true() -> bool {
    true
}
fn default_realm() -> String {
    "api".into()
}

/// Scopes required for some methods of a route.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct ScopeRuleConf {
    /// Methods this rule applies to; empty = all.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Every one of these scopes is required.
    pub scopes: Vec<String>,
}

impl JwtProviderConf {
    /// Keys come over the network (`jwks_url` or `discovery`), not from a file.
    pub fn is_remote(&self) -> bool {
        self.jwks_url.is_some() || self.discovery
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_taken_from_its_cookie_only() {
        let req = |cookies: &[&str]| {
            let mut r = pingora_http::RequestHeader::build("GET", b"/", None).expect("req");
            for c in cookies {
                r.append_header("cookie", *c).expect("cookie");
            }
            r
        };
        let r = req(&["theme=dark; session=abc.def.ghi; x=1"]);
        assert_eq!(extract_token(&r, Some("session")), Ok("abc.def.ghi"));
        assert_eq!(extract_token(&r, Some("sess")), Err(AuthRejection::Missing));
        assert_eq!(extract_token(&r, None), Err(AuthRejection::Missing));
        // An empty value is no token; a later header may still carry one.
        let r = req(&["session=", "session=t2"]);
        assert_eq!(extract_token(&r, Some("session")), Ok("t2"));
        // `Authorization` wins over the cookie.
        let mut r = req(&["session=fromcookie"]);
        r.append_header("authorization", "Bearer fromheader")
            .expect("auth");
        assert_eq!(extract_token(&r, Some("session")), Ok("fromheader"));
    }

    fn identity_until(exp: u64) -> Arc<Identity> {
        Arc::new(Identity {
            sub: Some("u".into()),
            scopes: Vec::new(),
            headers: Vec::new(),
            exp,
        })
    }

    #[test]
    fn a_token_storm_evicts_one_off_tokens_and_never_empties_the_cache() {
        let cache = TokenCache::new(1000, 300);
        let now = 1_000;
        cache.put("hot", identity_until(now + 900), now, 1);
        let mut smallest_after_full = usize::MAX;
        for i in 0..20_000 {
            cache.put(&format!("storm-{i}"), identity_until(now + 900), now, 1);
            // The signed-in user keeps calling.
            assert!(cache.get("hot", now, 1).is_some(), "hot token lost at {i}");
            if i > 2_000 {
                smallest_after_full = smallest_after_full.min(cache.len());
            }
        }
        assert!(cache.len() <= 1000 + 100, "bounded: {}", cache.len());
        assert!(
            smallest_after_full >= 500,
            "no cliff: the cache never fell to {smallest_after_full} entries"
        );
        // Expiry and key generation still decide.
        assert!(cache.get("hot", now + 1_000, 1).is_none(), "past its ttl");
        assert!(cache.get("hot", now, 2).is_none(), "keys changed since");
        assert!(TokenCache::new(0, 300).get("hot", now, 1).is_none());
    }

    #[test]
    fn header_parsing_refuses_none_crit_and_garbage() {
        let enc = |h: &str| format!("{}.e30.c2ln", URL_SAFE_NO_PAD.encode(h));
        assert_eq!(
            parse_header(&enc(r#"{"alg":"none"}"#)).err(),
            Some(AuthRejection::AlgNotAllowed)
        );
        assert_eq!(
            parse_header(&enc(r#"{"alg":"NoNe"}"#)).err(),
            Some(AuthRejection::AlgNotAllowed)
        );
        assert_eq!(
            parse_header(&enc(r#"{"alg":"EdDSA","crit":["exp"]}"#)).err(),
            Some(AuthRejection::Malformed)
        );
        assert!(parse_header(&enc(r#"{"alg":"EdDSA","kid":"a","jku":"http://evil"}"#)).is_ok());
        for bad in [
            "",
            "a.b",
            "a.b.c.d",
            "!!.e30.c2ln",
            "e30.e30.",
            "bm90anNvbg.e30.c2ln",
        ] {
            assert_eq!(
                parse_header(bad).err(),
                Some(AuthRejection::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn weak_secrets_and_rsa_are_refused() {
        assert!(matches!(
            parse_secret(b"short\n"),
            Err(KeyError::WeakSecret(5))
        ));
        assert!(parse_secret(&[7u8; 32]).is_ok());
        // 1024-bit modulus (128 bytes, top bit set).
        let n = URL_SAFE_NO_PAD.encode([0xC0u8; 128]);
        let jwks = format!(r#"{{"keys":[{{"kty":"RSA","n":"{n}","e":"AQAB","kid":"w"}}]}}"#);
        assert!(matches!(
            parse_jwks(jwks.as_bytes(), true),
            Err(KeyError::WeakRsa(1024))
        ));
        assert!(matches!(
            parse_jwks(jwks.as_bytes(), false),
            Err(KeyError::NoKeys)
        ));
    }
}
