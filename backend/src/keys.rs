//! Token signing keys: Ed25519, one PKCS#8 PEM file per key in a directory.
//!
//! The newest active key signs (a new key waits `activation_secs` so every replica publishes
//! it first); the JWKS publishes the keys not active yet, the signing key, and the previous
//! ones whose tokens may still be valid. A key file is named
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
    #[error("{0}: no signing key (read-only key directory: mount the keys Secret)")]
    NoKey(String),
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
    /// Newest first; at least one. All are published in the JWKS.
    pub keys: Vec<Key>,
    /// Index of the signing key in `keys` (keys before it are published, not active yet).
    signer: usize,
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

/// Since when this replica has had the key: its creation time (in the kid) or, if later, when
/// the file was written here. A Secret volume's files are written by the kubelet when the
/// Secret reaches this node (all of them anew at every update), so a key becomes active only
/// once *this* replica has held it for `activation_secs` — whenever the Secret was applied.
fn held_since(path: &Path) -> i64 {
    let written = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs() as i64);
    created_at(path).max(written)
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

/// How the key directory is used.
#[derive(Debug, Clone)]
pub struct KeyPolicy {
    /// Token lifetime: a replaced key stays published this long (+ 60 s of skew).
    pub token_ttl_secs: i64,
    /// The directory is a mounted Secret shared by every replica: never create or write a key
    /// there (a replica minting its own key would sign tokens the others do not publish).
    pub read_only: bool,
    /// A new key signs only once it is this old, so every replica has loaded and published it
    /// in its JWKS before any token carries its kid (Secret propagation plus the reload
    /// interval). 0 = at once (one replica, local use).
    pub activation_secs: i64,
}

impl KeyPolicy {
    /// One replica, keys created on demand, active at once.
    pub fn local(token_ttl_secs: i64) -> Self {
        Self {
            token_ttl_secs,
            read_only: false,
            activation_secs: 0,
        }
    }
}

impl KeyStore {
    /// Loads the keys in `dir` (creating the first one when there is none, unless read-only).
    ///
    /// The newest *active* key signs (see [`KeyPolicy::activation_secs`]); every newer key is
    /// already published. An older key stays published while tokens it signed may still be
    /// valid: until `token_ttl_secs` (+ 60 s of clock skew) after the next key took over.
    pub fn load(dir: &Path, policy: &KeyPolicy) -> Result<Self, KeyError> {
        if !policy.read_only {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let mut paths = list(dir)?;
        if paths.is_empty() {
            if policy.read_only {
                return Err(KeyError::NoKey(dir.display().to_string()));
            }
            create_key(dir)?;
            paths = list(dir)?;
        }
        paths.sort();
        paths.reverse();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let active = |p: &PathBuf| held_since(p) + policy.activation_secs <= now;
        // Newest first: the keys not active yet, then the signing key (the newest active one,
        // or the oldest key when none is active yet: a first deploy, or just after a Secret
        // update rewrote every file — the oldest is the one every replica already publishes),
        // then the retired ones still needed for verification.
        let signer = paths.iter().position(active).unwrap_or(paths.len() - 1);
        let mut keep: Vec<PathBuf> = paths[..=signer].to_vec();
        for pair in paths[signer..].windows(2).take(4) {
            let replaced_at = held_since(&pair[0]) + policy.activation_secs;
            if replaced_at + policy.token_ttl_secs + 60 > now {
                keep.push(pair[1].clone());
            } else {
                break;
            }
        }
        let keys = keep
            .iter()
            .map(|p| load_key(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { keys, signer })
    }

    /// Key ids, newest first.
    pub fn kids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.kid.as_str()).collect()
    }

    /// The signing key.
    pub fn current(&self) -> &Key {
        &self.keys[self.signer]
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A key file named as if created at `at` (Unix seconds), written at `at` too.
    fn key_at(dir: &Path, at: i64, n: u32) -> String {
        let made = create_key(&dir.join("src")).expect("key");
        let kid = format!("k{at:012}-{n:08x}");
        let path = dir.join(format!("{kid}.pem"));
        std::fs::rename(made, &path).expect("rename");
        set_written(&path, at);
        kid
    }

    fn set_written(path: &Path, at: i64) {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(at as u64);
        std::fs::File::options()
            .write(true)
            .open(path)
            .and_then(|f| f.set_modified(t))
            .expect("mtime");
    }

    #[test]
    fn a_new_key_is_published_before_it_signs() {
        let dir = tempfile::tempdir().expect("tmp");
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let old = key_at(dir.path(), now - 1000, 1);
        let new = key_at(dir.path(), now - 10, 2);
        let policy = |activation_secs| KeyPolicy {
            token_ttl_secs: 900,
            read_only: true,
            activation_secs,
        };
        let s = KeyStore::load(dir.path(), &policy(180)).expect("load");
        assert_eq!(s.kids(), [new.as_str(), old.as_str()], "both published");
        assert_eq!(s.current().kid, old, "the new key waits for its activation");
        let s = KeyStore::load(dir.path(), &policy(0)).expect("load");
        assert_eq!(s.current().kid, new, "no delay: the newest signs");
        assert_eq!(
            s.kids(),
            [new.as_str(), old.as_str()],
            "the old one stays while its tokens live"
        );
        // Long after the switch, the retired key leaves the JWKS.
        let older = key_at(dir.path(), now - 5000, 3);
        let s = KeyStore::load(dir.path(), &policy(0)).expect("load");
        assert!(!s.kids().contains(&older.as_str()));
        std::fs::remove_file(dir.path().join(format!("{older}.pem"))).expect("rm");
        // A Secret update rewrites every file: the new key was created long ago (GitOps
        // review), but this replica has only just received it — it must wait, and meanwhile the
        // oldest key (which every replica publishes) signs.
        let late = key_at(dir.path(), now - 3000, 4);
        for kid in [&old, &new, &late] {
            set_written(&dir.path().join(format!("{kid}.pem")), now);
        }
        let s = KeyStore::load(dir.path(), &policy(180)).expect("load");
        assert_eq!(
            s.current().kid,
            late,
            "the oldest key signs while none is held long enough"
        );
        assert!(
            s.kids().contains(&new.as_str()),
            "the newest is published meanwhile"
        );
    }
}
