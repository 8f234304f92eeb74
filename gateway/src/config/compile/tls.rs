//! `[tls]`: every certificate loaded and checked (key match, names, dates) before pingora
//! sees it; at most one default.

use super::super::file::GatewayConf;
use super::super::source::{Problem, Source};
use crate::path::resolve;
use crate::tls::{CertSet, LoadedCert};
use std::path::Path;

/// The certificate set for SNI selection (`None` when it cannot be built).
pub fn certificates(
    conf: &GatewayConf,
    base: &Path,
    src: &Source,
    problems: &mut Vec<Problem>,
) -> Option<CertSet> {
    // Certificates.
    let mut certs = Vec::new();
    if conf.tls.certificates.is_empty() {
        problems.push(Problem {
            location: src.file.to_string(),
            message: "[tls] needs at least one [[tls.certificates]] entry".into(),
        });
    }
    let defaults = conf
        .tls
        .certificates
        .iter()
        .filter(|c| c.get_ref().default)
        .count();
    if defaults > 1 {
        problems.push(Problem {
            location: src.file.to_string(),
            message: format!(
                "{defaults} certificates are marked `default = true`; at most one may be"
            ),
        });
    }
    for c in &conf.tls.certificates {
        let cc = c.get_ref();
        let cert_path = resolve(base, cc.cert.get_ref());
        let key_path = resolve(base, cc.key.get_ref());
        match LoadedCert::try_load(&cc.name, &cert_path, &key_path, &cc.server_names) {
            Ok(loaded) => certs.push((loaded, cc.default)),
            Err(e) => {
                let at = if e.is_about_key() { &cc.key } else { &cc.cert };
                problems.push(src.problem(at, format!("certificate `{}`: {e}", cc.name)));
            }
        }
    }
    CertSet::new(certs)
}
