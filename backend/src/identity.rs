//! Identity headers from the gateway, proven by a signature (`AUTH_MODE=gateway`).
//!
//! Network position is not proof: NetworkPolicies are not enforced by every CNI, and anything
//! that reaches the API port could send `X-Auth-Subject: 1`. The gateway signs the identity
//! headers it sets with a key shared through a Secret, over the request's method, path and
//! query, request id and a timestamp:
//!
//! ```text
//! X-Auth-Signature: v1 t=1764700000 n=<32 hex, random> h=x-auth-scopes,x-auth-subject s=<hex>
//! s = HMAC-SHA256(key, "v1\n{t}\n{n}\n{METHOD}\n{path?query}\n{x-request-id}\n"
//!                      + "{name}:{value}\n" per name in h)
//! ```
//!
//! A signature is accepted within [`WINDOW_SECS`] of its timestamp and once only by this
//! process: a replayed (or forged, stale, or partial) identity is refused with 401. The random
//! nonce keeps two identical requests in one second apart. Limits, by design: the seen set is
//! per replica (a captured request could be replayed once on another replica within the
//! window) and the body is not signed; the threat is anything that can reach the API port but
//! cannot read pod-to-pod traffic — for more, use mTLS (a service mesh).
//!
//! The key file holds one key per line; any of them verifies, so a key is rotated by adding the
//! new one here first, then switching the gateway, then removing the old one.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Mutex;

/// How far a signature's timestamp may be from this clock, seconds (each way): the gateway
/// signs just before sending, and pods' clocks are NTP-synchronised.
pub const WINDOW_SECS: i64 = 15;

/// Shortest key accepted, bytes.
const MIN_KEY: usize = 32;

/// Why the identity key file was refused.
#[derive(Debug, thiserror::Error)]
pub enum IdentityKeyError {
    #[error("AUTH_MODE=gateway needs IDENTITY_KEY_FILE (the key the gateway signs identity headers with)")]
    Missing,
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0}: no key, or a key shorter than {MIN_KEY} bytes")]
    Weak(String),
}

/// Why a request's identity was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("no identity signature")]
    Missing,
    #[error("malformed identity signature")]
    Malformed,
    #[error("identity signature outside its validity window")]
    Stale,
    #[error("identity signature does not match")]
    Forged,
    #[error("identity signature already used")]
    Replayed,
}

/// Verifies identity signatures; keeps the signatures seen within the window.
pub struct Verifier {
    keys: Mutex<Vec<Vec<u8>>>,
    /// Signatures seen, by their timestamp second: whole seconds are dropped once outside the
    /// window, so a check costs a lookup, never a scan of everything seen.
    seen: Mutex<BTreeMap<i64, HashSet<[u8; 32]>>>,
}

fn read_keys(path: &Path) -> Result<Vec<Vec<u8>>, IdentityKeyError> {
    let text =
        std::fs::read(path).map_err(|e| IdentityKeyError::Io(path.display().to_string(), e))?;
    let keys: Vec<Vec<u8>> = text
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l).to_vec())
        .filter(|l| !l.is_empty())
        .collect();
    if keys.is_empty() || keys.iter().any(|k| k.len() < MIN_KEY) {
        return Err(IdentityKeyError::Weak(path.display().to_string()));
    }
    Ok(keys)
}

/// The MAC input of a signature (shared format with the gateway's signer).
pub fn mac_input(
    t: i64,
    nonce: &str,
    method: &str,
    path_and_query: &str,
    request_id: &str,
    headers: &[(&str, &str)],
) -> Vec<u8> {
    let mut m =
        format!("v1\n{t}\n{nonce}\n{method}\n{path_and_query}\n{request_id}\n").into_bytes();
    for (n, v) in headers {
        m.extend_from_slice(n.as_bytes());
        m.push(b':');
        m.extend_from_slice(v.as_bytes());
        m.push(b'\n');
    }
    m
}

/// Signs `input` with `key` (what the gateway does; used by tests here).
pub fn sign(key: &[u8], input: &[u8]) -> [u8; 32] {
    // HMAC takes a key of any length: the error arm cannot happen.
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(key) else {
        return [0; 32];
    };
    mac.update(input);
    mac.finalize().into_bytes().into()
}

impl Verifier {
    /// No keys: every identity is refused (token mode never asks).
    pub fn none() -> Self {
        Self {
            keys: Mutex::new(Vec::new()),
            seen: Mutex::new(BTreeMap::new()),
        }
    }

    /// Keys from `path` (one per line, each ≥ 32 bytes).
    pub fn from_file(path: &Path) -> Result<Self, IdentityKeyError> {
        Ok(Self {
            keys: Mutex::new(read_keys(path)?),
            seen: Mutex::new(BTreeMap::new()),
        })
    }

    /// Re-reads the key file (a rotated Secret); the old keys stay on error.
    pub fn reload(&self, path: &Path) -> Result<(), IdentityKeyError> {
        let keys = read_keys(path)?;
        if let Ok(mut k) = self.keys.lock() {
            *k = keys;
        }
        Ok(())
    }

    /// Checks the `X-Auth-Signature` of a request at `now` and returns the subject it proves.
    pub fn verify(&self, parts: &axum::http::request::Parts, now: i64) -> Result<String, Refused> {
        let header = |name: &str| {
            let mut all = parts.headers.get_all(name).iter();
            match (all.next(), all.next()) {
                (Some(v), None) => v.to_str().ok(),
                _ => None,
            }
        };
        let sig = header("x-auth-signature").ok_or(Refused::Missing)?;
        let mut fields = sig.split(' ');
        if fields.next() != Some("v1") {
            return Err(Refused::Malformed);
        }
        let (mut t, mut nonce, mut names, mut mac) = (None, None, None, None);
        for f in fields {
            match f.split_once('=') {
                Some(("t", v)) => t = v.parse::<i64>().ok(),
                Some(("n", v)) if v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit()) => {
                    nonce = Some(v)
                }
                Some(("h", v)) => names = Some(v),
                Some(("s", v)) => mac = hex::decode(v).ok().filter(|m| m.len() == 32),
                _ => return Err(Refused::Malformed),
            }
        }
        let (Some(t), Some(nonce), Some(names), Some(mac)) = (t, nonce, names, mac) else {
            return Err(Refused::Malformed);
        };
        if now.abs_diff(t) > WINDOW_SECS.unsigned_abs() {
            return Err(Refused::Stale);
        }
        let names: Vec<&str> = names.split(',').collect();
        if !names.contains(&"x-auth-subject") {
            return Err(Refused::Malformed);
        }
        let mut signed = Vec::with_capacity(names.len());
        for n in &names {
            signed.push((*n, header(n).ok_or(Refused::Malformed)?));
        }
        let path = parts
            .uri
            .path_and_query()
            .map_or(parts.uri.path(), |p| p.as_str());
        let input = mac_input(
            t,
            nonce,
            parts.method.as_str(),
            path,
            header("x-request-id").unwrap_or(""),
            &signed,
        );
        let keys = self.keys.lock().map_err(|_| Refused::Forged)?.clone();
        let valid = keys.iter().any(|k| {
            let Ok(mut m) = <Hmac<Sha256> as Mac>::new_from_slice(k) else {
                return false;
            };
            m.update(&input);
            // Constant-time comparison.
            m.verify_slice(&mac).is_ok()
        });
        if !valid {
            return Err(Refused::Forged);
        }
        let mut id = [0u8; 32];
        id.copy_from_slice(&mac);
        let mut seen = self.seen.lock().map_err(|_| Refused::Replayed)?;
        // Seconds before the window can no longer pass the time check: forget them.
        let kept = seen.split_off(&(now - WINDOW_SECS));
        *seen = kept;
        if !seen.entry(t).or_default().insert(id) {
            return Err(Refused::Replayed);
        }
        header("x-auth-subject")
            .map(str::to_string)
            .ok_or(Refused::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef-identity";

    fn verifier() -> Verifier {
        Verifier {
            keys: Mutex::new(vec![
                b"an-older-key-still-accepted-0123456789".to_vec(),
                KEY.to_vec(),
            ]),
            seen: Mutex::new(BTreeMap::new()),
        }
    }

    const NONCE: &str = "0123456789abcdef0123456789abcdef";

    fn request(t: i64, subject: &str, path: &str, key: &[u8]) -> axum::http::request::Parts {
        request_n(t, NONCE, subject, path, key)
    }

    fn request_n(
        t: i64,
        nonce: &str,
        subject: &str,
        path: &str,
        key: &[u8],
    ) -> axum::http::request::Parts {
        let input = mac_input(
            t,
            nonce,
            "GET",
            path,
            "rid-1",
            &[("x-auth-subject", subject)],
        );
        let sig = hex::encode(sign(key, &input));
        axum::http::Request::builder()
            .uri(path)
            .header("x-request-id", "rid-1")
            .header("x-auth-subject", subject)
            .header(
                "x-auth-signature",
                format!("v1 t={t} n={nonce} h=x-auth-subject s={sig}"),
            )
            .body(())
            .expect("request")
            .into_parts()
            .0
    }

    #[test]
    fn signed_identities_pass_once_and_everything_else_is_refused() {
        let v = verifier();
        let now = 1_764_700_000;
        assert_eq!(
            v.verify(&request(now, "7", "/api/me", KEY), now),
            Ok("7".into())
        );
        assert_eq!(
            v.verify(&request(now, "7", "/api/me", KEY), now),
            Err(Refused::Replayed)
        );
        // The same request again in the same second, signed anew (another nonce): accepted.
        let other_nonce = "fedcba9876543210fedcba9876543210";
        assert_eq!(
            v.verify(&request_n(now, other_nonce, "7", "/api/me", KEY), now),
            Ok("7".into())
        );
        assert_eq!(
            v.verify(&request(now - 16, "7", "/api/x", KEY), now),
            Err(Refused::Stale)
        );
        assert_eq!(
            v.verify(&request(i64::MIN, "7", "/api/x", KEY), now),
            Err(Refused::Stale),
            "no overflow on absurd timestamps"
        );
        assert_eq!(
            v.verify(
                &request(now, "7", "/api/y", b"not-the-shared-key-0123456789abcdef"),
                now
            ),
            Err(Refused::Forged)
        );
        // A valid signature moved to another subject or path.
        let mut other = request(now, "7", "/api/z", KEY);
        other
            .headers
            .insert("x-auth-subject", "1".parse().expect("v"));
        assert_eq!(v.verify(&other, now), Err(Refused::Forged));
        let mut moved = request(now, "8", "/api/a", KEY);
        moved.uri = "/api/b".parse().expect("uri");
        assert_eq!(v.verify(&moved, now), Err(Refused::Forged));
        let mut bare = request(now, "9", "/api/c", KEY);
        bare.headers.remove("x-auth-signature");
        assert_eq!(v.verify(&bare, now), Err(Refused::Missing));
        bare.headers
            .insert("x-auth-signature", "v1 t=1 s=zz".parse().expect("v"));
        assert_eq!(v.verify(&bare, now), Err(Refused::Malformed));
        bare.headers.insert(
            "x-auth-signature",
            format!("v1 t={now} h=x-auth-subject s={}", "0".repeat(64))
                .parse()
                .expect("v"),
        );
        assert_eq!(v.verify(&bare, now), Err(Refused::Malformed));
        assert_eq!(
            Verifier::none().verify(&request(now, "7", "/q", KEY), now),
            Err(Refused::Forged)
        );
    }
}
