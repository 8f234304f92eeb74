//! Replica-aware local quotas: a `store = "local"` policy with `replicas` divides its quota and
//! burst by the number of ready gateway replicas (ceil, never below 1), so the cluster-wide
//! limit stays what the config says without Redis. The count is a fixed number or the distinct
//! addresses of a DNS name (a headless Service: ready pods only, or every pod with an address with
//! `publishNotReadyAddresses`, as `k8s/` ships it so a first pod can count itself), re-read every
//! [`REFRESH`] off the request path by [`crate::services::RateLimitService`].
//!
//! The bound is approximate by design: per-replica limit = ceil(Q/N); a client whose requests
//! all land on one replica gets Q/N, one spread evenly gets about Q; after a scale event the
//! count lags by up to [`REFRESH`] plus the DNS TTL.

use serde::Deserialize;
use std::collections::HashSet;
use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::time::Duration;

/// How often a `dns:` replica count is re-read. Fixed: short enough that a scale event is
/// followed within one typical HPA sync period (15 s), long enough to be free.
pub const REFRESH: Duration = Duration::from_secs(10);

/// `replicas` as written: an integer, or a string naming where the count comes from.
#[derive(Debug, Deserialize, Clone, PartialEq, Eq)]
#[serde(untagged)]
pub enum ReplicasConf {
    /// A fixed count, e.g. `replicas = 3` (signed so 0 and negatives get our message, with
    /// their position, rather than a serde type error).
    Count(i64),
    /// `"dns:<name>"`, e.g. `"dns:gateway-headless.edge.svc.cluster.local"`.
    Source(String),
}

/// Where a policy's replica count comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaSource {
    /// A fixed count.
    Fixed(u32),
    /// The distinct addresses (A and AAAA) of this name.
    Dns(String),
}

/// Counts the distinct addresses of a name. Blocking: called at config load (which is off the
/// request path already) and from a blocking task by the refresh service. Injectable so tests
/// can scale a fake cluster.
pub type Resolver = Arc<dyn Fn(&str) -> std::io::Result<u32> + Send + Sync>;

/// Why a `replicas` value was refused or could not be counted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplicasError {
    #[error("replicas must be at least 1, not {0}")]
    NotPositive(i64),
    #[error("replicas = {0} is more than any cluster runs")]
    TooMany(i64),
    #[error(
        "replicas = \"dns:\" needs a name, e.g. \"dns:gateway-headless.edge.svc.cluster.local\""
    )]
    EmptyName,
    #[error("replicas = \"{0}\": expected a number or \"dns:<name>\"")]
    UnknownSource(String),
    #[error("replicas: cannot resolve `{name}`: {error}")]
    Resolve { name: String, error: String },
}

impl ReplicasConf {
    /// The source this value names.
    pub fn try_source(&self) -> Result<ReplicaSource, ReplicasError> {
        match self {
            Self::Count(n) if *n < 1 => Err(ReplicasError::NotPositive(*n)),
            Self::Count(n) => u32::try_from(*n)
                .map(ReplicaSource::Fixed)
                .map_err(|_| ReplicasError::TooMany(*n)),
            Self::Source(s) => match s.strip_prefix("dns:").map(str::trim) {
                Some("") => Err(ReplicasError::EmptyName),
                Some(name) => Ok(ReplicaSource::Dns(name.to_string())),
                None => Err(ReplicasError::UnknownSource(s.clone())),
            },
        }
    }
}

impl ReplicaSource {
    /// The count now (at least 1).
    pub fn count(&self, resolve: &Resolver) -> Result<u32, ReplicasError> {
        match self {
            Self::Fixed(n) => Ok(*n),
            Self::Dns(name) => match resolve(name) {
                Ok(0) => Err(ReplicasError::Resolve {
                    name: name.clone(),
                    error: "no addresses".into(),
                }),
                Ok(n) => Ok(n),
                Err(e) => Err(ReplicasError::Resolve {
                    name: name.clone(),
                    error: e.to_string(),
                }),
            },
        }
    }
}

/// The system resolver (getaddrinfo on `name:0`): distinct addresses of the more numerous
/// family — a dual-stack pod publishes one A and one AAAA record and is one replica.
pub fn system_resolver() -> Resolver {
    Arc::new(|name: &str| {
        let addrs: HashSet<_> = (name, 0).to_socket_addrs()?.map(|a| a.ip()).collect();
        Ok(u32::try_from(replicas_of(&addrs)).unwrap_or(u32::MAX))
    })
}

/// Replicas behind a set of addresses: the larger of the IPv4 and IPv6 counts.
fn replicas_of(addrs: &HashSet<std::net::IpAddr>) -> usize {
    let v4 = addrs.iter().filter(|a| a.is_ipv4()).count();
    v4.max(addrs.len() - v4)
}

/// `n` divided over `replicas`, rounded up, at least 1: no replica refuses everything.
pub fn per_replica(n: u32, replicas: u32) -> u32 {
    n.div_ceil(replicas.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dual_stack_pod_is_one_replica() {
        let set = |a: &[&str]| -> HashSet<std::net::IpAddr> {
            a.iter().map(|s| s.parse().expect("ip")).collect()
        };
        assert_eq!(replicas_of(&set(&["10.0.0.1", "fd00::1"])), 1);
        assert_eq!(
            replicas_of(&set(&["10.0.0.1", "10.0.0.2", "fd00::1", "fd00::2"])),
            2
        );
        // During a rollout one family may lag: the larger count is the replica count.
        assert_eq!(replicas_of(&set(&["10.0.0.1", "10.0.0.2", "fd00::1"])), 2);
        assert_eq!(replicas_of(&set(&["fd00::1", "fd00::2", "fd00::3"])), 3);
        assert_eq!(replicas_of(&set(&[])), 0);
    }

    #[test]
    fn values_name_their_source_or_their_problem() {
        let src = |v: ReplicasConf| v.try_source();
        assert_eq!(src(ReplicasConf::Count(3)), Ok(ReplicaSource::Fixed(3)));
        assert_eq!(
            src(ReplicasConf::Count(0)),
            Err(ReplicasError::NotPositive(0))
        );
        assert_eq!(
            src(ReplicasConf::Count(-2)),
            Err(ReplicasError::NotPositive(-2))
        );
        assert_eq!(
            src(ReplicasConf::Source("dns:gw.example".into())),
            Ok(ReplicaSource::Dns("gw.example".into()))
        );
        assert_eq!(
            src(ReplicasConf::Source("dns: ".into())),
            Err(ReplicasError::EmptyName)
        );
        assert_eq!(
            src(ReplicasConf::Source("srv:x".into())),
            Err(ReplicasError::UnknownSource("srv:x".into()))
        );
    }

    #[test]
    fn division_rounds_up_and_never_reaches_zero() {
        assert_eq!(per_replica(100, 2), 50);
        assert_eq!(per_replica(100, 3), 34);
        assert_eq!(per_replica(100, 5), 20);
        assert_eq!(per_replica(2, 5), 1);
        assert_eq!(per_replica(7, 1), 7);
    }

    #[test]
    fn the_system_resolver_counts_distinct_addresses() {
        // An IP literal needs no DNS and is one address however often it is listed.
        assert_eq!(system_resolver()("127.0.0.1").expect("literal"), 1);
        assert!(system_resolver()("no-such-host.invalid").is_err());
    }
}
