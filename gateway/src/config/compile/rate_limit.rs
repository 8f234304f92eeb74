//! `[rate_limits]`: one policy per entry, the live one kept while unchanged so a reload keeps
//! its counters (and its live replica count). A new or changed policy with `replicas =
//! "dns:…"` resolves the name here: a name that does not resolve refuses the file.

use super::super::file::GatewayConf;
use super::super::reuse::reuse;
use super::super::source::{Problem, Source};
use crate::rate_limit::{PolicyError, RatePolicy};
use crate::runtime::Runtime;
use std::collections::HashMap;
use std::sync::Arc;

/// Rate-limit policies by name.
pub fn policies(
    conf: &GatewayConf,
    previous: Option<&Runtime>,
    src: &Source,
    problems: &mut Vec<Problem>,
) -> HashMap<String, Arc<RatePolicy>> {
    let mut rate_policies: HashMap<String, Arc<crate::rate_limit::RatePolicy>> = HashMap::new();
    for (name, pc) in &conf.rate_limits {
        let reused = reuse(previous.map(|p| &p.rate_policies), name, |p| {
            p.conf == *pc.get_ref()
        });
        match reused {
            Some(p) => {
                rate_policies.insert(name.clone(), p);
            }
            None => match crate::rate_limit::RatePolicy::try_from_conf(name, pc.get_ref()) {
                Ok(p) => {
                    rate_policies.insert(name.clone(), Arc::new(p));
                }
                Err(e) => {
                    let message = format!("rate limit `{name}`: {e}");
                    // A replica problem points at the `replicas` value, others at the policy.
                    problems.push(match (&e, &pc.get_ref().replicas) {
                        (PolicyError::Replicas(_), Some(at)) => src.problem(at, message),
                        _ => src.problem(pc, message),
                    });
                }
            },
        }
    }
    rate_policies
}
