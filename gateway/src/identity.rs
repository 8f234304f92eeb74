//! The signature over the identity headers sent to upstreams (`[identity] signing_key_file`).
//!
//! A backend that trusts `X-Auth-Subject` must know the gateway set it: network position is no
//! proof (NetworkPolicies are not enforced by every CNI). With a key shared through a Secret,
//! the gateway adds, after every other header rule:
//!
//! ```text
//! X-Auth-Signature: v1 t=<unix seconds> n=<32 hex, random> h=<signed names, sorted> s=<hex>
//! s = HMAC-SHA256(key, "v1\n{t}\n{n}\n{METHOD}\n{path?query}\n{x-request-id}\n"
//!                      + "{name}:{value}\n"…)
//! ```
//!
//! The backend (`backend/src/identity.rs`) accepts it within 15 s and once only (per replica);
//! the nonce keeps two identical requests in one second apart. A client's own
//! `X-Auth-Signature` is always stripped.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header carrying the signature.
pub const SIGNATURE: http::HeaderName = http::HeaderName::from_static("x-auth-signature");

/// Shortest key accepted, bytes.
pub const MIN_KEY: usize = 32;

/// Signs identity headers with the shared key.
pub struct IdentitySigner {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for IdentitySigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdentitySigner")
    }
}

/// Why a signing key file was refused.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    #[error("{0}")]
    Io(std::io::Error),
    #[error("the first line must be a key of at least {MIN_KEY} bytes")]
    Weak,
}

/// An HMAC-SHA256 keyed with the first non-empty line of a key file's text (at least
/// [`MIN_KEY`] bytes); later lines are left to the verifier (keys still accepted during a
/// rotation). Shared by every key file the gateway signs with.
pub fn hmac_from_file_text(text: &[u8]) -> Result<Hmac<Sha256>, SignerError> {
    let key = text
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .find(|l| !l.is_empty())
        .filter(|k| k.len() >= MIN_KEY)
        .ok_or(SignerError::Weak)?;
    <Hmac<Sha256> as Mac>::new_from_slice(key).map_err(|_| SignerError::Weak)
}

impl IdentitySigner {
    /// The first non-empty line of the file's text is the key (later lines are the keys the
    /// backend still accepts during a rotation).
    pub fn from_file_text(text: &[u8]) -> Result<Self, SignerError> {
        Ok(Self {
            mac: hmac_from_file_text(text)?,
        })
    }

    /// Reads and checks `path`.
    pub fn try_from_file(path: &std::path::Path) -> Result<Self, SignerError> {
        Self::from_file_text(&std::fs::read(path).map_err(SignerError::Io)?)
    }

    /// The `X-Auth-Signature` value over `signed` (name, value) pairs at time `t`, with a
    /// fresh random nonce.
    pub fn signature(
        &self,
        t: u64,
        method: &str,
        path_and_query: &str,
        request_id: &str,
        signed: &[(&str, &[u8])],
    ) -> http::HeaderValue {
        self.signature_with_nonce(
            t,
            &hex::encode(rand::random::<[u8; 16]>()),
            method,
            path_and_query,
            request_id,
            signed,
        )
    }

    fn signature_with_nonce(
        &self,
        t: u64,
        nonce: &str,
        method: &str,
        path_and_query: &str,
        request_id: &str,
        signed: &[(&str, &[u8])],
    ) -> http::HeaderValue {
        let mut mac = self.mac.clone();
        mac.update(
            format!("v1\n{t}\n{nonce}\n{method}\n{path_and_query}\n{request_id}\n").as_bytes(),
        );
        let mut names = String::new();
        for (i, (n, v)) in signed.iter().enumerate() {
            mac.update(n.as_bytes());
            mac.update(b":");
            // As the backend's HTTP parser will see it: surrounding whitespace trimmed.
            mac.update(v.trim_ascii());
            mac.update(b"\n");
            if i > 0 {
                names.push(',');
            }
            names.push_str(n);
        }
        let s = hex::encode(mac.finalize().into_bytes());
        // Names are header names and `s` is hex: always a valid header value.
        http::HeaderValue::from_str(&format!("v1 t={t} n={nonce} h={names} s={s}"))
            .unwrap_or_else(|_| http::HeaderValue::from_static("v1 invalid"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_what_the_backend_verifies() {
        let key = b"0123456789abcdef0123456789abcdef-identity";
        let signer = IdentitySigner::from_file_text(b"\n0123456789abcdef0123456789abcdef-identity\nold-key-still-accepted-by-backends-000\n")
            .expect("signer");
        let nonce = "00112233445566778899aabbccddeeff";
        let v = signer.signature_with_nonce(
            1_764_700_000,
            nonce,
            "GET",
            "/api/me?x=1",
            "rid-1",
            &[("x-auth-scopes", b" a b "), ("x-auth-subject", b"7")],
        );
        let text = v.to_str().expect("ascii");
        assert!(
            text.starts_with(
                "v1 t=1764700000 n=00112233445566778899aabbccddeeff h=x-auth-scopes,x-auth-subject s="
            ),
            "{text}"
        );
        // Recomputed from the format as the backend does (values as its parser trims them).
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("key");
        mac.update(
            b"v1\n1764700000\n00112233445566778899aabbccddeeff\nGET\n/api/me?x=1\nrid-1\nx-auth-scopes:a b\nx-auth-subject:7\n",
        );
        let want = hex::encode(mac.finalize().into_bytes());
        assert!(text.ends_with(&want));
        // Two signatures of the same request differ (fresh nonces).
        let sign = || signer.signature(1, "GET", "/", "r", &[("x-auth-subject", b"7")]);
        assert_ne!(sign(), sign());
        assert!(IdentitySigner::from_file_text(b"short\n").is_err());
        assert!(IdentitySigner::from_file_text(b"\n\n").is_err());
    }
}
