//! Development certificates: a local CA and a server certificate, made with rcgen.
//!
//! `gateway certs dev` writes `ca.crt`, `ca.key`, `server.crt`, `server.key` into a directory
//! (default `certs/dev/`, git-ignored). It is idempotent: an existing CA is kept (so a browser
//! that trusts it keeps trusting), and the server certificate is only reissued when missing,
//! unreadable, or within 30 days of expiry. Tests use [`DevCa`] to mint certificates freely.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// Why dev certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CertGenError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CertGenError + '_ {
    move |source| CertGenError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A certificate authority able to issue leaf certificates.
pub struct DevCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A PEM certificate and key.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// PEM certificate.
    pub cert_pem: String,
    /// PEM PKCS#8 private key.
    pub key_pem: String,
}

impl DevCa {
    /// A new CA with an ECDSA P-256 key, valid ten years.
    pub fn generate(common_name: &str) -> Result<Self, CertGenError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, "gateway development");
        params.distinguished_name = dn;
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(3650);
        let cert = params.self_signed(&key)?;
        Ok(Self { cert, key })
    }

    /// Loads a CA written by [`DevCa::write`].
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertGenError> {
        let key = KeyPair::from_pem(key_pem)?;
        let params = CertificateParams::from_ca_cert_pem(cert_pem)?;
        // Re-signing the same params with the same key yields an equivalent issuer.
        let cert = params.self_signed(&key)?;
        Ok(Self { cert, key })
    }

    /// The CA certificate in PEM.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// The CA key in PEM.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Issues a server certificate for `names` (DNS names or IP addresses) valid in
    /// `[not_before, not_after]`.
    pub fn issue(
        &self,
        names: &[&str],
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<IssuedCert, CertGenError> {
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("localhost"),
        );
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = not_before;
        params.not_after = not_after;
        // A random serial so every issued certificate is distinguishable (rotation tests).
        params.serial_number = Some(rcgen::SerialNumber::from_slice(
            &rand::random::<[u8; 16]>().map(|b| b & 0x7f),
        ));
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues a certificate valid from yesterday for `days`.
    pub fn issue_for_days(&self, names: &[&str], days: i64) -> Result<IssuedCert, CertGenError> {
        let now = OffsetDateTime::now_utc();
        self.issue(names, now - Duration::days(1), now + Duration::days(days))
    }
}

/// Writes `data` to `path` through a temp file and rename, so readers never see half a file.
pub fn write_atomic(path: &Path, data: &[u8], private: bool) -> Result<(), CertGenError> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, data).map_err(io_err(&tmp))?;
    if private {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .map_err(io_err(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// What [`ensure_dev`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevCerts {
    /// CA certificate path (what clients trust).
    pub ca: PathBuf,
    /// Server certificate path.
    pub cert: PathBuf,
    /// Server key path.
    pub key: PathBuf,
    /// Key the gateway signs identity headers with and the dev backend verifies them with
    /// (`[identity] signing_key_file`, `IDENTITY_KEY_FILE`): 32 random bytes, hex.
    pub identity_key: PathBuf,
    /// Whether anything was (re)written.
    pub changed: bool,
}

fn server_cert_fresh(cert: &Path, key: &Path) -> bool {
    crate::tls::LoadedCert::try_load("dev", cert, key, &[])
        .is_ok_and(|c| c.not_after > OffsetDateTime::now_utc().unix_timestamp() + 30 * 86_400)
}

/// Creates the dev CA and a server certificate for `localhost`, `127.0.0.1` and `::1` in `dir`
/// unless usable ones are already there.
pub fn ensure_dev(dir: &Path) -> Result<DevCerts, CertGenError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let out = DevCerts {
        ca: dir.join("ca.crt"),
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
        identity_key: dir.join("identity.key"),
        changed: false,
    };
    let ca_key = dir.join("ca.key");
    // Several processes (parallel tests, the stack script) may race here: one lock file.
    let lock = dir.join(".lock");
    let _guard = LockFile::acquire(&lock)?;
    if !out.identity_key.exists() {
        let key = format!("{}\n", hex::encode(rand::random::<[u8; 32]>()));
        write_atomic(&out.identity_key, key.as_bytes(), true)?;
    }
    let existing = match (
        std::fs::read_to_string(&out.ca),
        std::fs::read_to_string(&ca_key),
    ) {
        (Ok(c), Ok(k)) => DevCa::from_pem(&c, &k).ok(),
        _ => None,
    };
    let (ca, new_ca) = match existing {
        Some(ca) => (ca, false),
        None => (DevCa::generate("gateway dev CA")?, true),
    };
    if !new_ca && server_cert_fresh(&out.cert, &out.key) {
        return Ok(out);
    }
    if new_ca {
        write_atomic(&ca_key, ca.key_pem().as_bytes(), true)?;
        write_atomic(&out.ca, ca.cert_pem().as_bytes(), false)?;
    }
    let leaf = ca.issue_for_days(&["localhost", "127.0.0.1", "::1"], 365)?;
    write_atomic(&out.key, leaf.key_pem.as_bytes(), true)?;
    write_atomic(&out.cert, leaf.cert_pem.as_bytes(), false)?;
    Ok(DevCerts {
        changed: true,
        ..out
    })
}

/// A crude cross-process lock: exclusive creation of a file, removed on drop. A stale lock
/// (older than 30 s, from a killed process) is broken.
struct LockFile(PathBuf);

impl LockFile {
    fn acquire(path: &Path) -> Result<Self, CertGenError> {
        for _ in 0..600 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
            {
                Ok(_) => return Ok(Self(path.to_path_buf())),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let stale = std::fs::metadata(path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age.as_secs() > 30);
                    if stale {
                        let _ = std::fs::remove_file(path);
                    } else {
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                }
                Err(e) => return Err(io_err(path)(e)),
            }
        }
        Err(io_err(path)(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "timed out waiting for the certificate lock",
        )))
    }
}

impl Drop for LockFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ensure_dev_is_idempotent_and_keeps_the_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = ensure_dev(dir.path()).expect("first");
        assert!(first.changed);
        let ca1 = std::fs::read(&first.ca).expect("ca");
        let second = ensure_dev(dir.path()).expect("second");
        assert!(!second.changed);
        std::fs::remove_file(&second.cert).expect("rm");
        let third = ensure_dev(dir.path()).expect("third");
        assert!(third.changed);
        assert_eq!(std::fs::read(&third.ca).expect("ca"), ca1, "CA kept");
        crate::tls::LoadedCert::try_load("dev", &third.cert, &third.key, &[]).expect("valid");
    }
}
