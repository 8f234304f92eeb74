//! `[identity]`: identity headers stripped from clients, and the key that signs them.

use super::super::file::GatewayConf;
use super::super::source::{Problem, Source};
use crate::auth::JwtProvider;
use crate::identity::IdentitySigner;
use crate::path::resolve;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Identity headers removed from every client request: the configured ones, the signature, and every header a provider sets.
pub fn strip_headers(
    conf: &GatewayConf,
    providers: &HashMap<String, Arc<JwtProvider>>,
    src: &Source,
    problems: &mut Vec<Problem>,
) -> Vec<http::HeaderName> {
    let mut strip_headers = Vec::new();
    for h in &conf.identity.strip_headers {
        match http::HeaderName::from_bytes(h.as_bytes()) {
            Ok(n) => strip_headers.push(n),
            Err(_) => problems.push(Problem {
                location: src.file.to_string(),
                message: format!("[identity] strip_headers: `{h}` is not a header name"),
            }),
        }
    }
    // A client's signature is never passed on (only the gateway signs).
    strip_headers.push(crate::identity::SIGNATURE);
    // Identity headers a provider sets are always stripped from clients too.
    for p in providers.values() {
        for h in p.conf.claim_headers.values() {
            if let Ok(n) = http::HeaderName::from_bytes(h.as_bytes()) {
                if !strip_headers.contains(&n) {
                    strip_headers.push(n);
                }
            }
        }
    }

    strip_headers
}

/// The identity signer, if a key file is configured (watched for rotation).
pub fn signer(
    conf: &GatewayConf,
    base: &Path,
    watch_files: &mut Vec<PathBuf>,
    src: &Source,
    problems: &mut Vec<Problem>,
) -> Option<Arc<IdentitySigner>> {
    let identity_signer = match &conf.identity.signing_key_file {
        None => None,
        Some(f) => {
            let p = resolve(base, f.get_ref());
            watch_files.push(p.clone());
            match crate::identity::IdentitySigner::try_from_file(&p) {
                Ok(s) => Some(Arc::new(s)),
                Err(e) => {
                    problems.push(src.problem(
                        f,
                        format!("[identity] signing_key_file {}: {e}", p.display()),
                    ));
                    None
                }
            }
        }
    };
    identity_signer
}
