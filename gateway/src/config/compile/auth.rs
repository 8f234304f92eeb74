//! `[jwt_providers]`: each provider built (keys, remote JWKS, trust), the live one kept while
//! its definition and trust files are unchanged so JWKS and token cache survive a reload.

use super::super::file::GatewayConf;
use super::super::reuse::reuse;
use super::super::source::{Problem, Source};
use crate::auth::JwtProvider;
use crate::runtime::Runtime;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// JWT providers by name.
pub fn providers(
    conf: &GatewayConf,
    base: &Path,
    previous: Option<&Runtime>,
    src: &Source,
    problems: &mut Vec<Problem>,
) -> HashMap<String, Arc<JwtProvider>> {
    let mut providers: HashMap<String, Arc<crate::auth::JwtProvider>> = HashMap::new();
    for (name, pc) in &conf.jwt_providers {
        let file_based = !pc.get_ref().is_remote();
        let reused = reuse(previous.map(|p| &p.jwt_providers), name, |p| {
            !file_based && p.conf == *pc.get_ref() && p.trust_unchanged(base)
        });
        match reused {
            Some(p) => {
                providers.insert(name.clone(), p);
            }
            None => match crate::auth::JwtProvider::try_from_conf(name, pc.get_ref(), base) {
                Ok(p) => {
                    if let Some(prev) = previous.and_then(|r| r.jwt_providers.get(name)) {
                        p.adopt_keys_from(prev);
                    }
                    providers.insert(name.clone(), Arc::new(p));
                }
                Err(e) => {
                    let at = pc
                        .get_ref()
                        .jwks_file
                        .as_ref()
                        .or(pc.get_ref().key_file.as_ref())
                        .or(pc.get_ref().secret_file.as_ref())
                        .or(pc.get_ref().ca_file.as_ref())
                        .filter(|_| {
                            matches!(
                                e,
                                crate::auth::ProviderError::Key(_)
                                    | crate::auth::ProviderError::CaFile(_)
                            )
                        })
                        .map_or_else(|| src.problem(pc, ""), |f| src.problem(f, ""))
                        .location;
                    problems.push(Problem {
                        location: at,
                        message: format!("jwt provider `{name}`: {e}"),
                    });
                }
            },
        }
    }
    providers
}
