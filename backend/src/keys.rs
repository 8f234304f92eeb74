//! Token signing keys: Ed25519, one PKCS#8 PEM file per key in a directory.
//!
//! The newest key signs; the JWKS publishes the newest and the previous one so tokens signed
//! just before a rotation keep verifying until they expire. A key file is named
//! `<kid>.pem` where the kid starts with the creation time, so names sort by age.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::SigningKey;
use jsonwebtoken::{DecodingKey, EncodingKey};
use std::path::{Path, PathBuf};

/// Why keys could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not an Ed25519 PKCS#8 key: {reason}")]
    BadKey { path: String, reason: String },
}

/// One signing key.
pub struct Key {
    /// Key id, in the JWT header and the JWKS.
    pub kid: String,
    /// For signing.
    pub encoding: EncodingKey,
    /// For verifying (backend-side verification).
    pub decoding: DecodingKey,
    /// Public key, base64url (JWK `x`).
    pub x: String,
}

/// The keys in use, newest first.
pub struct KeyStore {
    /// Newest first; at least one.
    pub keys: Vec<Key>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn load_key(path: &Path) -> Result<Key, KeyError> {
    let pem = std::fs::read_to_string(path).map_err(io(path))?;
    let bad = |reason: String| KeyError::BadKey {
        path: path.display().to_string(),
        reason,
    };
    let sk = SigningKey::from_pkcs8_pem(&pem).map_err(|e| bad(e.to_string()))?;
    let encoding = EncodingKey::from_ed_pem(pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
    let public = sk.verifying_key().to_bytes();
    let kid = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(Key {
        kid,
        encoding,
        decoding: DecodingKey::from_ed_der(&public),
        x: URL_SAFE_NO_PAD.encode(public),
    })
}

/// Writes a new key into `dir` and returns its path.
pub fn create_key(dir: &Path) -> Result<PathBuf, KeyError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let sk = SigningKey::generate(&mut rand::rngs::OsRng);
    let pem = sk
        .to_pkcs8_pem(Default::default())
        .map_err(|e| KeyError::BadKey {
            path: dir.display().to_string(),
            reason: e.to_string(),
        })?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let kid = format!("k{now:012}-{:08x}", rand::random::<u32>());
    let path = dir.join(format!("{kid}.pem"));
    let tmp = dir.join(format!(".{kid}.tmp"));
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(pem.as_bytes()).map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    Ok(path)
}

/// Creation time encoded in a kid (`k<unix seconds>-…`).
fn created_at(path: &Path) -> i64 {
    path.file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.strip_prefix('k'))
        .and_then(|s| s.split('-').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

impl KeyStore {
    /// Loads the keys in `dir`, creating the first one when there is none.
    ///
    /// The newest key signs. An older key stays published while tokens it signed may still be
    /// valid: until `token_ttl_secs` (+ 60 s of clock skew) after the next key replaced it.
    pub fn load_or_create(dir: &Path, token_ttl_secs: i64) -> Result<Self, KeyError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut paths = list(dir)?;
        if paths.is_empty() {
            create_key(dir)?;
            paths = list(dir)?;
        }
        paths.sort();
        paths.reverse();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut keep = vec![paths[0].clone()];
        for pair in paths.windows(2).take(4) {
            let replaced_at = created_at(&pair[0]);
            if replaced_at + token_ttl_secs + 60 > now {
                keep.push(pair[1].clone());
            } else {
                break;
            }
        }
        let keys = keep
            .iter()
            .map(|p| load_key(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { keys })
    }

    /// Key ids, newest first.
    pub fn kids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.kid.as_str()).collect()
    }

    /// The signing key.
    pub fn current(&self) -> &Key {
        &self.keys[0]
    }

    /// A published key by id.
    pub fn get(&self, kid: &str) -> Option<&Key> {
        self.keys.iter().find(|k| k.kid == kid)
    }

    /// The JWKS document.
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<_> = self
            .keys
            .iter()
            .map(|k| {
                serde_json::json!({
                    "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig",
                    "kid": k.kid, "x": k.x,
                })
            })
            .collect();
        serde_json::json!({ "keys": keys })
    }
}

fn list(dir: &Path) -> Result<Vec<PathBuf>, KeyError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let p = entry.map_err(io(dir))?.path();
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with('k') && name.ends_with(".pem") {
            out.push(p);
        }
    }
    Ok(out)
}
