//! `[upstreams]`: one pool per entry, the live pool kept while its definition is unchanged
//! (its peer health survives a reload).

use super::super::file::GatewayConf;
use super::super::reuse::reuse;
use super::super::source::{Problem, Source};
use crate::runtime::Runtime;
use crate::upstream::Pool;
use std::collections::HashMap;
use std::sync::Arc;

/// Upstream pools by name.
pub fn pools(
    conf: &GatewayConf,
    previous: Option<&Runtime>,
    src: &Source,
    problems: &mut Vec<Problem>,
) -> HashMap<String, Arc<Pool>> {
    let mut pools: HashMap<String, Arc<Pool>> = HashMap::new();
    for (name, up) in &conf.upstreams {
        let reused = reuse(previous.map(|p| &p.pools), name, |p| {
            p.conf == *up.get_ref()
        });
        match reused {
            Some(pool) => {
                pools.insert(name.clone(), pool);
            }
            None => match Pool::try_from_conf(name, up.get_ref()) {
                Ok(pool) => {
                    pools.insert(name.clone(), Arc::new(pool));
                }
                Err(e) => problems.push(src.problem(up, format!("upstream `{name}`: {e}"))),
            },
        }
    }

    pools
}
