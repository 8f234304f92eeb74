//! Rate limiting at the edge: governor GCRA limiters, one keyed limiter per policy, with a
//! state store of our own so memory is bounded (a hard cap on tracked keys; past it, new keys
//! share one overflow bucket) and state survives reloads of unchanged policies.
//!
//! Order (see [`crate::proxy`]): policies keyed by IP or header run right after routing, before
//! any JWT work; policies keyed by `subject` run right after the token is verified. Both come
//! before static or proxy work. A 429 carries `Retry-After` (whole seconds, rounded up) and the
//! IETF `RateLimit-Policy` / `RateLimit` headers.
//!
//! A local policy with `replicas` ([`replicas`]) enforces its share of the quota on this
//! replica; its headers state that share, since that is the limit this replica applies.

pub mod key;
pub mod replicas;
pub mod store;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::StateStore;
use governor::{Quota, RateLimiter};
use http::Method;
pub use key::{Decision, LimitKey};
use replicas::{ReplicaSource, ReplicasConf, ReplicasError, Resolver};
use serde::Deserialize;
use serde_spanned::Spanned;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A keyed GCRA state store with a hard cap on keys.
#[derive(Debug)]
pub struct CappedStore {
    map: DashMap<LimitKey, AtomicU64>,
    max_keys: usize,
    overflowed: prometheus::IntCounter,
}

impl CappedStore {
    fn new(name: &str, max_keys: usize) -> Self {
        Self {
            map: DashMap::new(),
            max_keys,
            overflowed: crate::metrics::RATE_OVERFLOW.with_label_values(&[name]),
        }
    }
}

impl StateStore for CappedStore {
    type Key = LimitKey;

    fn measure_and_replace<T, F, E>(&self, key: &LimitKey, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let key = if self.map.contains_key(key) || self.map.len() < self.max_keys {
            key
        } else {
            self.overflowed.inc();
            &LimitKey::Overflow
        };
        let cell = match self.map.get(key) {
            Some(c) => c,
            None => {
                self.map
                    .entry(key.clone())
                    .or_insert_with(|| AtomicU64::new(0));
                match self.map.get(key) {
                    Some(c) => c,
                    // Removed between insert and get by a concurrent cleanup: treat as fresh.
                    None => return f(None).map(|(t, _)| t),
                }
            }
        };
        // The same compare-and-swap loop as governor's in-memory state (0 = no state yet).
        let mut prev = cell.load(Ordering::Acquire);
        loop {
            let (t, next) = f((prev != 0).then(|| Nanos::from(prev)))?;
            match cell.compare_exchange_weak(
                prev,
                next.as_u64(),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(t),
                Err(actual) => prev = actual,
            }
        }
    }
}

impl ShrinkableKeyedStateStore<LimitKey> for CappedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        let below = drop_below.as_u64();
        self.map.retain(|_, v| v.load(Ordering::Relaxed) > below);
    }

    fn shrink_to_fit(&self) {
        self.map.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// One limiter's view of its policy's store. governor keeps a bucket as nanoseconds since the
/// limiter was built, and its quota is fixed at construction; a limiter rebuilt for a new
/// replica count therefore sees the same buckets shifted by `offset` (its start minus the
/// policy's first), so every bucket carries over as the same instant: a scale event is neither
/// a fresh burst nor a penalty.
#[derive(Debug)]
struct StoreView {
    store: Arc<CappedStore>,
    offset: u64,
}

impl StateStore for StoreView {
    type Key = LimitKey;

    fn measure_and_replace<T, F, E>(&self, key: &LimitKey, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let off = self.offset;
        self.store.measure_and_replace(key, |prev| {
            // A bucket older than this limiter reads as its start: already full either way.
            let (t, next) = f(prev.map(|p| Nanos::from(p.as_u64().saturating_sub(off))))?;
            Ok((t, Nanos::from(next.as_u64() + off)))
        })
    }
}

impl ShrinkableKeyedStateStore<LimitKey> for StoreView {
    fn retain_recent(&self, drop_below: Nanos) {
        self.store
            .retain_recent(Nanos::from(drop_below.as_u64() + self.offset));
    }

    fn shrink_to_fit(&self) {
        self.store.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.store.len()
    }

    fn is_empty(&self) -> bool {
        self.store.is_empty()
    }
}

type Limiter = RateLimiter<LimitKey, StoreView, DefaultClock, StateInformationMiddleware>;

/// What this replica enforces: the policy's quota and burst divided by the replica count, and
/// the limiter built for them. Swapped whole when the count changes, so a request never pairs
/// one count with another count's limiter; the hot path pays one `ArcSwap` load.
/// The rate-limit header values of one response ([`RatePolicy::headers`]).
#[derive(Debug, Clone)]
pub struct RateHeaders {
    /// `RateLimit-Policy`.
    pub policy: http::HeaderValue,
    /// `X-RateLimit-Limit`: this replica's quota.
    pub limit: u32,
    /// Seconds until the bucket is full again.
    pub reset_secs: u64,
}

/// Seconds until a bucket of `share` with `remaining` left is full again.
fn reset_secs(share: &Share, window_secs: u64, remaining: u32) -> u64 {
    let used = u64::from(share.burst.saturating_sub(remaining));
    let per_unit = window_secs as f64 / f64::from(share.quota.max(1));
    (used as f64 * per_unit).ceil() as u64
}

struct Share {
    replicas: u32,
    quota: u32,
    burst: u32,
    limiter: Limiter,
    /// `RateLimit-Policy` value (this replica's quota).
    policy_header: http::HeaderValue,
}

/// What a policy's limiters are built from: the configured (cluster-wide) numbers and the one
/// store every limiter generation shares.
struct Limits {
    name: String,
    per: PerConf,
    quota: u32,
    burst: u32,
    window_secs: u64,
    store: Arc<CappedStore>,
    clock: DefaultClock,
    /// When the policy was built: the zero of the store's times.
    origin: <DefaultClock as Clock>::Instant,
}

impl Limits {
    /// The limiter and numbers for `replicas` replicas, over the one store.
    fn share(&self, replicas: u32) -> Share {
        let quota = replicas::per_replica(self.quota, replicas);
        let burst = replicas::per_replica(self.burst, replicas);
        let n = |v: u32| NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN);
        let rate = match self.per {
            PerConf::Second => Quota::per_second(n(quota)),
            PerConf::Minute => Quota::per_minute(n(quota)),
            PerConf::Hour => Quota::per_hour(n(quota)),
        }
        .allow_burst(n(burst));
        // governor takes its start inside `new`; measured just before, the view's times are
        // off by the nanoseconds `new` takes, on the strict side.
        let offset = self.clock.now().duration_since(self.origin).as_u64();
        let limiter = RateLimiter::new(
            rate,
            StoreView {
                store: self.store.clone(),
                offset,
            },
            self.clock.clone(),
        );
        let policy_header = http::HeaderValue::from_str(&format!(
            "\"{}\";q={quota};w={}",
            self.name, self.window_secs
        ))
        .unwrap_or_else(|_| http::HeaderValue::from_static("\"policy\""));
        Share {
            replicas,
            quota,
            burst,
            limiter,
            policy_header,
        }
    }
}

/// Where a policy's replica count comes from, and how a name is resolved.
struct ReplicaCount {
    source: ReplicaSource,
    resolve: Resolver,
}

/// One part of a policy key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyPart {
    ClientIp,
    Subject,
    Header(http::HeaderName),
}

/// Why a policy was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("key `{0}`: expected client_ip, subject, header:<name>, or several joined with +")]
    BadKey(String),
    #[error("quota and burst must be at least 1")]
    Zero,
    #[error("store = \"redis\" needs a valid redis_url: {0}")]
    Redis(String),
    /// Located at the `replicas` value.
    #[error(transparent)]
    Replicas(#[from] ReplicasError),
}

/// A compiled policy with its limiter. Kept across reloads while its definition is unchanged,
/// so a reload is never a free burst.
pub struct RatePolicy {
    /// Configured name.
    pub name: String,
    /// The definition (compared on reload).
    pub conf: RatePolicyConf,
    key: Vec<KeyPart>,
    share: ArcSwap<Share>,
    limits: Limits,
    /// Set for a local policy with `replicas`.
    replicas: Option<ReplicaCount>,
    /// The Redis store of a `store = "redis"` policy.
    pub shared: Option<crate::rate_limit::store::RedisStore>,
}

impl std::fmt::Debug for RatePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RatePolicy")
            .field("name", &self.name)
            .finish()
    }
}

impl RatePolicy {
    /// Compiles a policy; a `dns:` replica count is resolved now, by the system resolver.
    pub fn try_from_conf(name: &str, conf: &RatePolicyConf) -> Result<Self, PolicyError> {
        Self::try_from_conf_with(name, conf, replicas::system_resolver())
    }

    /// [`RatePolicy::try_from_conf`] with the resolver of `dns:` replica counts.
    pub fn try_from_conf_with(
        name: &str,
        conf: &RatePolicyConf,
        resolve: Resolver,
    ) -> Result<Self, PolicyError> {
        let mut key = Vec::new();
        for part in conf.key.split('+').map(str::trim) {
            key.push(match part {
                "client_ip" => KeyPart::ClientIp,
                "subject" => KeyPart::Subject,
                p => match p.strip_prefix("header:") {
                    Some(h) => KeyPart::Header(
                        http::HeaderName::from_bytes(h.trim().as_bytes())
                            .map_err(|_| PolicyError::BadKey(conf.key.clone()))?,
                    ),
                    None => return Err(PolicyError::BadKey(conf.key.clone())),
                },
            });
        }
        if conf.quota == 0 || conf.burst == Some(0) {
            return Err(PolicyError::Zero);
        }
        let burst = conf.burst.unwrap_or(conf.quota);
        let window_secs = match conf.per {
            PerConf::Second => 1,
            PerConf::Minute => 60,
            PerConf::Hour => 3600,
        };
        let source = conf
            .replicas
            .as_ref()
            .map(|r| r.get_ref().try_source())
            .transpose()?;
        let (replicas, count) = match (source, conf.store) {
            (None, _) => (None, 1),
            // Redis already holds one quota for every replica: dividing would make it stricter.
            (Some(_), StoreConf::Redis) => {
                tracing::warn!(policy = %name, "replicas is ignored with store = \"redis\": the Redis quota is already cluster-wide");
                (None, 1)
            }
            (Some(source), StoreConf::Local) => {
                let count = source.count(&resolve)?;
                (Some(ReplicaCount { source, resolve }), count)
            }
        };
        let shared = match conf.store {
            StoreConf::Local => None,
            StoreConf::Redis => {
                use crate::rate_limit::store::OnStoreError;
                use OnStoreErrorConf as O;
                let url = conf
                    .redis_url
                    .as_deref()
                    .ok_or_else(|| PolicyError::Redis("missing".into()))?;
                let on_error = match conf.on_store_error {
                    O::Local => OnStoreError::Local,
                    O::Allow => OnStoreError::Allow,
                    O::Deny => OnStoreError::Deny,
                };
                Some(
                    crate::rate_limit::store::RedisStore::try_new(
                        name,
                        url,
                        conf.quota,
                        Duration::from_secs(window_secs),
                        burst,
                        on_error,
                    )
                    .map_err(|e| PolicyError::Redis(e.to_string()))?,
                )
            }
        };
        let clock = DefaultClock::default();
        let limits = Limits {
            name: name.to_string(),
            per: conf.per,
            quota: conf.quota,
            burst,
            window_secs,
            store: Arc::new(CappedStore::new(name, conf.max_keys.max(1))),
            origin: clock.now(),
            clock,
        };
        crate::metrics::RATE_REPLICAS
            .with_label_values(&[name])
            .set(i64::from(count));
        Ok(Self {
            name: name.to_string(),
            conf: conf.clone(),
            key,
            share: ArcSwap::from_pointee(limits.share(count)),
            limits,
            replicas,
            shared,
        })
    }

    /// Whether the replica count is re-read from DNS (by the background refresh).
    pub fn resolves_replicas(&self) -> bool {
        matches!(
            self.replicas,
            Some(ReplicaCount {
                source: ReplicaSource::Dns(_),
                ..
            })
        )
    }

    /// Replicas this policy's quota is divided by now (1 without `replicas`).
    pub fn replicas(&self) -> u32 {
        self.share.load().replicas
    }

    /// Re-reads the replica count (blocking: DNS) and, when it changed, swaps in a limiter
    /// for the new share over the same buckets. On failure the last count stays in force.
    pub fn refresh_replicas(&self) {
        let Some(rc) = &self.replicas else {
            return;
        };
        match rc.source.count(&rc.resolve) {
            Ok(n) => {
                let before = self.replicas();
                if n != before {
                    self.share.store(Arc::new(self.limits.share(n)));
                    crate::metrics::RATE_REPLICAS
                        .with_label_values(&[self.name.as_str()])
                        .set(i64::from(n));
                    tracing::info!(policy = %self.name, before, replicas = n, quota = replicas::per_replica(self.conf.quota, n), "replica count changed; per-replica quota follows");
                }
            }
            Err(e) => {
                crate::metrics::RATE_REPLICAS_ERRORS
                    .with_label_values(&[self.name.as_str()])
                    .inc();
                tracing::warn!(policy = %self.name, error = %e, replicas = self.replicas(), "replica count unavailable; keeping the last one");
            }
        }
    }

    /// Whether the key needs the verified subject (so the check runs after JWT).
    pub fn needs_subject(&self) -> bool {
        self.key.contains(&KeyPart::Subject)
    }

    /// Builds the key of a request.
    pub fn key(
        &self,
        client: Option<IpAddr>,
        v6_prefix: u8,
        subject: Option<&str>,
        req: &pingora_http::RequestHeader,
    ) -> LimitKey {
        let ip = client.map(|ip| crate::http::client_ip::mask(ip, v6_prefix));
        if let [KeyPart::ClientIp] = self.key.as_slice() {
            return ip.map_or(LimitKey::Text("-".into()), LimitKey::Ip);
        }
        let ip_text = || ip.map_or_else(|| "-".to_string(), |i| i.to_string());
        let mut out = String::new();
        for (i, part) in self.key.iter().enumerate() {
            if i > 0 {
                out.push('\u{1f}');
            }
            match part {
                KeyPart::ClientIp => out.push_str(&ip_text()),
                KeyPart::Subject => match subject {
                    Some(s) => {
                        out.push_str("sub:");
                        out.push_str(s);
                    }
                    None => out.push_str(&ip_text()),
                },
                KeyPart::Header(h) => match req.headers.get(h).and_then(|v| v.to_str().ok()) {
                    Some(v) => {
                        out.push_str("h:");
                        out.push_str(v);
                    }
                    None => out.push_str(&ip_text()),
                },
            }
        }
        LimitKey::Text(out.into_boxed_str())
    }

    /// Counts one request under `key` in this replica's share of the quota.
    pub fn check(&self, key: &LimitKey) -> Decision {
        match self.share.load().limiter.check_key(key) {
            Ok(snapshot) => Decision::Allowed {
                remaining: snapshot.remaining_burst_capacity(),
            },
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.limits.clock.now());
                // Whole seconds, rounded up, at least 1.
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                Decision::Limited {
                    retry_after: secs.max(1),
                }
            }
        }
    }

    /// Counts one request in the policy's store: Redis when configured (one quota for every
    /// replica), with the configured fallback when it cannot answer; else in process.
    pub async fn check_shared(&self, key: &LimitKey) -> Decision {
        use crate::rate_limit::store::OnStoreError;
        let Some(store) = &self.shared else {
            return self.check(key);
        };
        // The store bounds its own call (`STORE_TIMEOUT`) and fails at once while its breaker
        // is open; it logs the transitions, so a Redis outage is one log line, not one a request.
        match store.check(key).await {
            Ok(d) => d,
            Err(_) => {
                crate::metrics::RATE_STORE_ERRORS
                    .with_label_values(&[self.name.as_str()])
                    .inc();
                match store.on_error {
                    OnStoreError::Local => self.check(key),
                    OnStoreError::Allow => Decision::Allowed {
                        remaining: self.limits.burst,
                    },
                    OnStoreError::Deny => Decision::Limited { retry_after: 1 },
                }
            }
        }
    }

    /// The header values of a response that `remaining` requests are left, from one snapshot
    /// of the share: a replica-count swap between two reads cannot pair one share's quota
    /// with another's reset time.
    pub fn headers(&self, remaining: u32) -> RateHeaders {
        let share = self.share.load();
        RateHeaders {
            policy: share.policy_header.clone(),
            limit: share.quota,
            reset_secs: reset_secs(&share, self.limits.window_secs, remaining),
        }
    }

    /// `RateLimit-Policy` value: the quota this replica enforces.
    pub fn policy_header(&self) -> http::HeaderValue {
        self.share.load().policy_header.clone()
    }

    /// Limit for `X-RateLimit-Limit`: the quota this replica enforces.
    pub fn limit(&self) -> u32 {
        self.share.load().quota
    }

    /// Keys currently tracked.
    pub fn tracked_keys(&self) -> usize {
        self.limits.store.len()
    }

    /// Drops keys whose state is back to fresh and returns memory.
    pub fn cleanup(&self) {
        let share = self.share.load();
        share.limiter.retain_recent();
        share.limiter.shrink_to_fit();
    }
}

/// A policy as applied by a route.
#[derive(Debug)]
pub struct RouteRule {
    /// The policy.
    pub policy: Arc<RatePolicy>,
    /// Methods; empty = all.
    pub methods: Vec<Method>,
    /// Exact paths or `/prefix/*`; empty = all.
    pub paths: Vec<String>,
}

impl RouteRule {
    /// Whether the rule applies to `method path`.
    pub fn applies(&self, method: &Method, path: &str) -> bool {
        (self.methods.is_empty() || self.methods.contains(method))
            && (self.paths.is_empty()
                || self.paths.iter().any(|p| match p.strip_suffix("/*") {
                    Some(prefix) => crate::path::prefix_matches(prefix, path),
                    None => p == path,
                }))
    }
}

/// Window of a rate quota.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PerConf {
    Second,
    Minute,
    Hour,
}

/// A rate-limit policy.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RatePolicyConf {
    /// What is counted: `client_ip`, `subject` (verified JWT `sub`, else the client IP),
    /// `header:<name>` (else the client IP), or several joined with `+`.
    pub key: String,
    /// Requests allowed per `per`.
    pub quota: u32,
    /// `second`, `minute` or `hour`.
    pub per: PerConf,
    /// Requests allowed at once above the steady rate. Default: `quota`.
    #[serde(default)]
    pub burst: Option<u32>,
    /// Count and report, but never block. Default false.
    #[serde(default)]
    pub dry_run: bool,
    /// Most keys tracked; past it, new keys share one overflow bucket. Default 100000.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
    /// `local` (in-process) or `redis` (one quota shared by every replica). Default `local`.
    #[serde(default)]
    pub store: StoreConf,
    /// With `store = "redis"`: the server, e.g. `redis://127.0.0.1:6379`.
    #[serde(default)]
    pub redis_url: Option<String>,
    /// With `store = "redis"`, when Redis cannot answer: `local` limiter, `allow`, `deny`.
    /// Default `local`.
    #[serde(default)]
    pub on_store_error: OnStoreErrorConf,
    /// With `store = "local"`: divide `quota` and `burst` by the ready gateway replicas (ceil,
    /// at least 1) so the cluster-wide limit stays `quota`. A count (`3`) or
    /// `"dns:<headless service name>"` (distinct addresses, re-read every 10 s; must resolve
    /// at load). Ignored, with a warning, with `store = "redis"`. Default: none (not divided).
    #[serde(default)]
    pub replicas: Option<Spanned<ReplicasConf>>,
}

/// Where a policy keeps its counters.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum StoreConf {
    /// In this process.
    #[default]
    Local,
    /// In Redis, shared by replicas.
    Redis,
}

/// Fallback when the shared store fails.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreErrorConf {
    /// Use the in-process limiter.
    #[default]
    Local,
    /// Let requests through.
    Allow,
    /// Refuse requests.
    Deny,
}

fn default_max_keys() -> usize {
    100_000
}

/// Which rate-limit headers responses carry.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitHeadersConf {
    /// IETF `RateLimit` (and `RateLimit-Policy`) on allowed responses too. Default true.
    pub ratelimit: bool,
    /// Legacy `X-RateLimit-Limit/Remaining/Reset`. Default false.
    pub x_ratelimit: bool,
}

impl Default for RateLimitHeadersConf {
    fn default() -> Self {
        Self {
            ratelimit: true,
            x_ratelimit: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::client_ip::mask;

    fn policy(quota: u32, burst: u32, max_keys: usize) -> RatePolicy {
        let conf: RatePolicyConf = toml::from_str(&format!(
            "key = \"client_ip\"\nquota = {quota}\nper = \"second\"\nburst = {burst}\nmax_keys = {max_keys}\n"
        ))
        .expect("conf");
        RatePolicy::try_from_conf("p", &conf).expect("policy")
    }

    fn ip(s: &str) -> LimitKey {
        LimitKey::Ip(s.parse().expect("ip"))
    }

    #[test]
    fn burst_then_limited_with_retry_after() {
        let p = policy(1, 3, 100);
        let k = ip("127.0.0.2");
        for left in [2, 1, 0] {
            assert_eq!(p.check(&k), Decision::Allowed { remaining: left });
        }
        assert_eq!(p.check(&k), Decision::Limited { retry_after: 1 });
        // Another source has its own bucket.
        assert_eq!(
            p.check(&ip("127.0.0.3")),
            Decision::Allowed { remaining: 2 }
        );
    }

    #[test]
    fn minute_quota_rounds_retry_after_up() {
        let conf: RatePolicyConf =
            toml::from_str("key = \"client_ip\"\nquota = 2\nper = \"minute\"\nburst = 1\n")
                .expect("conf");
        let p = RatePolicy::try_from_conf("m", &conf).expect("p");
        let k = ip("10.0.0.1");
        assert!(matches!(p.check(&k), Decision::Allowed { .. }));
        match p.check(&k) {
            Decision::Limited { retry_after } => {
                assert!((29..=30).contains(&retry_after), "{retry_after}")
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn memory_is_bounded_and_released() {
        let p = policy(1000, 1000, 10_000);
        for i in 0..200_000u32 {
            let k = LimitKey::Ip(IpAddr::V4(i.into()));
            let _ = p.check(&k);
        }
        assert!(p.tracked_keys() <= 10_001, "{}", p.tracked_keys());
        // After the buckets refill, cleanup releases them all.
        std::thread::sleep(Duration::from_millis(1100));
        p.cleanup();
        assert_eq!(p.tracked_keys(), 0);
    }

    /// Requests allowed out of `n` tries, back to back.
    fn allowed(p: &RatePolicy, k: &LimitKey, n: u32) -> u32 {
        (0..n)
            .filter(|_| matches!(p.check(k), Decision::Allowed { .. }))
            .count() as u32
    }

    #[test]
    fn quota_follows_the_replica_count() {
        use std::sync::atomic::AtomicU32;
        // A fake cluster: the resolver answers whatever `ready` says.
        let ready = Arc::new(AtomicU32::new(2));
        let seen = ready.clone();
        let resolve: Resolver = Arc::new(move |name: &str| {
            assert_eq!(name, "gw.test");
            match seen.load(Ordering::Relaxed) {
                0 => Err(std::io::Error::other("SERVFAIL")),
                n => Ok(n),
            }
        });
        let conf: RatePolicyConf = toml::from_str(
            "key = \"client_ip\"\nquota = 100\nper = \"minute\"\nreplicas = \"dns:gw.test\"\n",
        )
        .expect("conf");
        let p = RatePolicy::try_from_conf_with("r", &conf, resolve).expect("policy");
        assert!(p.resolves_replicas());
        assert_eq!((p.replicas(), p.limit()), (2, 50));
        assert_eq!(p.policy_header(), "\"r\";q=50;w=60");
        let a = ip("10.0.0.1");
        assert_eq!(allowed(&p, &a, 80), 50, "100/min over 2 replicas");

        ready.store(5, Ordering::Relaxed);
        p.refresh_replicas();
        assert_eq!((p.replicas(), p.limit()), (5, 20));
        assert_eq!(p.policy_header(), "\"r\";q=20;w=60");
        assert_eq!(
            allowed(&p, &ip("10.0.0.2"), 80),
            20,
            "100/min over 5 replicas"
        );
        // The bucket carried over in time units (60 s of debt against the new 60 s burst
        // window): no fresh burst for a client that was already limited.
        assert!(allowed(&p, &a, 80) <= 1);

        // A failed lookup keeps the last count in force.
        ready.store(0, Ordering::Relaxed);
        p.refresh_replicas();
        assert_eq!(p.replicas(), 5);
        assert_eq!(allowed(&p, &ip("10.0.0.3"), 80), 20);
    }

    #[test]
    fn replicas_divide_a_static_count_and_are_ignored_with_redis() {
        let conf: RatePolicyConf = toml::from_str(
            "key = \"client_ip\"\nquota = 4\nburst = 3\nper = \"second\"\nreplicas = 2\n",
        )
        .expect("conf");
        let p = RatePolicy::try_from_conf("s", &conf).expect("policy");
        assert!(!p.resolves_replicas());
        assert_eq!((p.replicas(), p.limit()), (2, 2));
        assert_eq!(allowed(&p, &ip("10.0.0.1"), 10), 2, "burst 3 over 2 = 2");

        let conf: RatePolicyConf = toml::from_str(
            "key = \"client_ip\"\nquota = 4\nper = \"second\"\nreplicas = 2\nstore = \"redis\"\nredis_url = \"redis://127.0.0.1:1\"\n",
        )
        .expect("conf");
        let p = RatePolicy::try_from_conf("s", &conf).expect("policy");
        assert_eq!(
            (p.replicas(), p.limit()),
            (1, 4),
            "Redis already holds the cluster quota"
        );
    }

    #[test]
    fn ipv6_is_keyed_by_prefix() {
        let a = mask("2001:db8:1:2:aaaa::1".parse().expect("ip"), 64);
        let b = mask("2001:db8:1:2:bbbb::9".parse().expect("ip"), 64);
        let c = mask("2001:db8:1:3::1".parse().expect("ip"), 64);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let m1 = mask("::ffff:192.0.2.1".parse().expect("ip"), 64);
        let m2 = mask("::ffff:192.0.2.2".parse().expect("ip"), 64);
        assert_ne!(m1, m2, "IPv4 clients of a dual-stack listener stay apart");
        assert_eq!(m1, "192.0.2.1".parse::<IpAddr>().expect("ip"));
    }
}
