//! Prometheus metrics: the only global state of the gateway.
//!
//! Labels are configured names (route, pool) and status classes — never raw paths or user
//! data — so cardinality is bounded by the config.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};
use std::sync::LazyLock;
use std::time::Duration;

/// The registry served on the admin listener.
pub static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

/// Process RSS, CPU, open fds (from /proc).
static PROCESS: LazyLock<()> = LazyLock::new(|| {
    let _ = REGISTRY.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ));
});

fn register<C: prometheus::core::Collector + Clone + 'static>(c: C) -> C {
    // Registration fails only on a duplicate name, which is a programming error caught in tests.
    let _ = REGISTRY.register(Box::new(c.clone()));
    c
}

/// Requests by route and status class.
pub static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "gateway_requests_total",
                "Requests handled, by route, method and status class",
            ),
            &["route", "method", "status"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
    )
});

/// Request duration by route.
pub static DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(
        HistogramVec::new(
            HistogramOpts::new(
                "gateway_request_duration_seconds",
                "Time from request start to logging, by route",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["route"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
    )
});

/// Upstream errors by pool and kind (`connect`, `timeout`, `bad_gateway`, `no_healthy_peer`,
/// `pinned_no_peer`).
pub static UPSTREAM_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "gateway_upstream_errors_total",
                "Upstream failures by pool and kind",
            ),
            &["pool", "kind"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
    )
});

/// Token rejections by provider and reason class.
pub static AUTH_REJECTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "gateway_auth_rejections_total",
                "JWT rejections by provider and reason",
            ),
            &["provider", "reason"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
    )
});

/// Rate-limit decisions by policy and result (`allowed`, `limited`, `dry_run_limited`).
pub static RATE_DECISIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "gateway_rate_limit_decisions_total",
                "Rate-limit decisions by policy and result",
            ),
            &["policy", "result"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
    )
});

/// Keys tracked per policy (updated by the cleanup task).
pub static RATE_TRACKED_KEYS: LazyLock<prometheus::IntGaugeVec> = LazyLock::new(|| {
    register(
        prometheus::IntGaugeVec::new(
            Opts::new(
                "gateway_rate_limit_tracked_keys",
                "Keys tracked per rate-limit policy",
            ),
            &["policy"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
    )
});

/// Shared-store (Redis) failures per policy (the fallback was used).
pub static RATE_STORE_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "gateway_rate_limit_store_errors_total",
                "Rate-limit store failures (fallback used)",
            ),
            &["policy"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
    )
});

/// Replicas a local policy's quota is divided by (1 without `replicas`).
pub static RATE_REPLICAS: LazyLock<prometheus::IntGaugeVec> = LazyLock::new(|| {
    register(
        prometheus::IntGaugeVec::new(
            Opts::new(
                "gateway_rate_limit_replicas",
                "Replicas a rate-limit policy's quota is divided by",
            ),
            &["policy"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
    )
});

/// Failed re-reads of a policy's replica count (the last count stayed in force).
pub static RATE_REPLICAS_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "gateway_rate_limit_replicas_errors_total",
                "Failed re-reads of a rate-limit policy's replica count (last count kept)",
            ),
            &["policy"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
    )
});

/// Requests counted in a policy's shared overflow bucket (key cap reached).
pub static RATE_OVERFLOW: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "gateway_rate_limit_overflow_total",
                "Requests counted in the shared overflow bucket because the key cap was reached",
            ),
            &["policy"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
    )
});

/// Static responses by route, status class and encoding.
pub static STATIC_RESPONSES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "gateway_static_responses_total",
                "Static responses by route, status class and encoding",
            ),
            &["route", "status", "encoding"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
    )
});

/// Upstream response time by pool.
pub static UPSTREAM_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(
        HistogramVec::new(
            HistogramOpts::new(
                "gateway_upstream_duration_seconds",
                "Time from peer choice to the upstream response head, by pool",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
            &["pool"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
    )
});

/// 1 when a peer passes its active health check.
pub static PEER_HEALTHY: LazyLock<prometheus::IntGaugeVec> = LazyLock::new(|| {
    register(
        prometheus::IntGaugeVec::new(
            Opts::new(
                "gateway_upstream_peer_healthy",
                "1 if the peer passes its health check",
            ),
            &["pool", "peer"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
    )
});

/// Certificate expiry, Unix seconds.
pub static CERT_NOT_AFTER: LazyLock<prometheus::IntGaugeVec> = LazyLock::new(|| {
    register(
        prometheus::IntGaugeVec::new(
            Opts::new(
                "gateway_certificate_not_after_seconds",
                "Certificate notAfter as a Unix timestamp",
            ),
            &["name"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
    )
});

/// Last successful JWKS fetch, Unix seconds.
pub static JWKS_LAST_SUCCESS: LazyLock<prometheus::IntGaugeVec> = LazyLock::new(|| {
    register(
        prometheus::IntGaugeVec::new(
            Opts::new(
                "gateway_jwks_last_success_seconds",
                "Last successful JWKS load, Unix timestamp",
            ),
            &["provider"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
    )
});

/// TLS handshakes completed, by protocol version.
pub static TLS_HANDSHAKES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "gateway_tls_handshakes_total",
                "Completed TLS handshakes by version",
            ),
            &["version"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
    )
});

/// Failed TLS handshakes by reason (see [`crate::conn::handshake::handshake_failure_reason`]).
pub static TLS_HANDSHAKE_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "gateway_tls_handshake_failures_total",
                "Failed TLS handshakes by reason",
            ),
            &["reason"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
    )
});

/// Open downstream connections by listener.
pub static OPEN_CONNECTIONS: LazyLock<prometheus::IntGaugeVec> = LazyLock::new(|| {
    register(
        prometheus::IntGaugeVec::new(
            Opts::new(
                "gateway_open_connections",
                "Open downstream connections by listener",
            ),
            &["listener"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
    )
});

/// Downstream connections closed by the gateway's connection guard, by reason
/// (`per_ip_limit`, `header_timeout`).
pub static CONNECTIONS_REFUSED: LazyLock<prometheus::IntCounterVec> = LazyLock::new(|| {
    register(
        prometheus::IntCounterVec::new(
            Opts::new(
                "gateway_connections_refused_total",
                "Downstream connections closed by the connection guard, by reason",
            ),
            &["reason"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
    )
});

/// Access log lines dropped because the writer could not keep up.
pub static ACCESS_LOG_DROPPED: LazyLock<prometheus::IntCounter> = LazyLock::new(|| {
    register(
        prometheus::IntCounter::new(
            "gateway_access_log_dropped_total",
            "Access log lines dropped under backpressure",
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
    )
});

/// Generation of the config in force.
pub static CONFIG_GENERATION: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "gateway_config_generation",
            "Generation of the config in force",
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
    )
});

/// Config reloads by result. Both series exist at 0 from the start: `increase()` over a
/// counter that appears only with its first reload would miss that reload.
pub static RELOADS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let v = register(
        IntCounterVec::new(
            Opts::new(
                "gateway_config_reloads_total",
                "Config reload attempts by result",
            ),
            &["result"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
    );
    for result in ["success", "failure"] {
        v.with_label_values(&[result]);
    }
    v
});

/// 1 when the last reload attempt succeeded.
pub static LAST_RELOAD_SUCCESS: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "gateway_config_last_reload_success",
            "1 if the last config reload succeeded, 0 if it was refused",
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
    )
});

/// Sections changed by successful reloads, once per section and reload. The named sections
/// exist at 0 from the start, for the same reason as [`RELOADS`]; other settings sections
/// (`limits`, `tls`, …) appear with their first change.
pub static CONFIG_CHANGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let v = register(
        IntCounterVec::new(
            Opts::new(
                "gateway_config_changes_total",
                "Config sections changed by successful reloads",
            ),
            &["section"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
    );
    for section in crate::config::diff::NAMED_SECTIONS {
        v.with_label_values(&[section]);
    }
    v
});

/// Counts the sections a reload changed.
pub fn config_changed<'a>(sections: impl IntoIterator<Item = &'a str>) {
    for s in sections {
        CONFIG_CHANGES.with_label_values(&[s]).inc();
    }
}

/// Records a reload attempt.
pub fn reloaded(ok: bool, generation: u64) {
    RELOADS
        .with_label_values(&[if ok { "success" } else { "failure" }])
        .inc();
    LAST_RELOAD_SUCCESS.set(i64::from(ok));
    CONFIG_GENERATION.set(generation as i64);
}

const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];
const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "OTHER",
];

/// A route's metric handles, resolved once when the route is compiled so the `logging` phase
/// does no label hashing or registry locking.
#[derive(Clone)]
pub struct RouteMetrics {
    by_method_class: Vec<prometheus::IntCounter>,
    duration: prometheus::Histogram,
    /// Static responses by class × encoding, resolved on first use: a route that serves no
    /// static files exports no such series, and a hit costs no label lookup.
    by_class_encoding: [std::sync::OnceLock<prometheus::IntCounter>; CLASSES.len() * ENCODINGS],
    name: String,
}

/// Number of `conneg::Encoding` variants.
const ENCODINGS: usize = crate::http::conneg::Encoding::Zstd as usize + 1;

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RouteMetrics")
    }
}

fn class_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        500..=599 => 4,
        _ => 5,
    }
}

impl RouteMetrics {
    /// Handles for `route`.
    pub fn new(route: &str) -> Self {
        let mut by_method_class = Vec::with_capacity(METHODS.len() * CLASSES.len());
        for m in METHODS {
            for c in CLASSES {
                by_method_class.push(REQUESTS.with_label_values(&[route, m, c]));
            }
        }
        Self {
            by_method_class,
            duration: DURATION.with_label_values(&[route]),
            by_class_encoding: Default::default(),
            name: route.to_string(),
        }
    }

    /// Records one finished request (called from the `logging` phase).
    pub fn record(&self, method: &http::Method, status: u16, elapsed: Duration) {
        let m = METHODS
            .iter()
            .position(|x| *x == method.as_str())
            .unwrap_or(METHODS.len() - 1);
        self.by_method_class[m * CLASSES.len() + class_index(status)].inc();
        self.duration.observe(elapsed.as_secs_f64());
    }

    /// Records a static response by status and encoding.
    pub fn record_static(&self, status: u16, encoding: crate::http::conneg::Encoding) {
        let class = class_index(status);
        self.by_class_encoding[class * ENCODINGS + encoding as usize]
            .get_or_init(|| {
                STATIC_RESPONSES.with_label_values(&[
                    self.name.as_str(),
                    CLASSES[class],
                    encoding.as_str(),
                ])
            })
            .inc();
    }
}

/// Proxied requests by route, pool and status class: the error rate of each colour of a
/// blue-green or canary split, side by side.
pub static POOL_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "gateway_pool_requests_total",
                "Proxied requests by route, pool and status class",
            ),
            &["route", "pool", "status"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
    )
});

/// Why requests of a route went to each pool (`single`, `pin`, `sticky`, `weight`, `failover`).
pub static SPLIT_DECISIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "gateway_split_decisions_total",
                "Pool decisions by route, pool and reason",
            ),
            &["route", "pool", "by"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
    )
});

/// One pool's handles within one route, resolved when the route is compiled.
#[derive(Clone)]
pub struct PoolMetrics {
    by_class: Vec<prometheus::IntCounter>,
    by_reason: Vec<prometheus::IntCounter>,
}

impl std::fmt::Debug for PoolMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PoolMetrics")
    }
}

impl PoolMetrics {
    /// Handles for `pool` of `route`, one decision counter per label of `reasons`.
    pub fn new(route: &str, pool: &str, reasons: &[&str]) -> Self {
        Self {
            by_class: CLASSES
                .iter()
                .map(|c| POOL_REQUESTS.with_label_values(&[route, pool, c]))
                .collect(),
            by_reason: reasons
                .iter()
                .map(|r| SPLIT_DECISIONS.with_label_values(&[route, pool, r]))
                .collect(),
        }
    }

    /// Records one proxied request that went to this pool for reason `reason` (an index into
    /// the labels given to [`PoolMetrics::new`]).
    pub fn record(&self, status: u16, reason: usize) {
        self.by_class[class_index(status)].inc();
        if let Some(c) = self.by_reason.get(reason) {
            c.inc();
        }
    }
}

/// Metrics of requests that matched no route.
pub static NO_ROUTE: LazyLock<RouteMetrics> = LazyLock::new(|| RouteMetrics::new("none"));

/// The registry in Prometheus text format.
pub fn render() -> Vec<u8> {
    LazyLock::force(&REQUESTS);
    LazyLock::force(&DURATION);
    LazyLock::force(&UPSTREAM_ERRORS);
    LazyLock::force(&CONFIG_GENERATION);
    LazyLock::force(&AUTH_REJECTIONS);
    LazyLock::force(&RELOADS);
    LazyLock::force(&CONFIG_CHANGES);
    LazyLock::force(&RATE_DECISIONS);
    LazyLock::force(&RATE_TRACKED_KEYS);
    LazyLock::force(&RATE_OVERFLOW);
    LazyLock::force(&RATE_STORE_ERRORS);
    LazyLock::force(&RATE_REPLICAS);
    LazyLock::force(&RATE_REPLICAS_ERRORS);
    LazyLock::force(&STATIC_RESPONSES);
    LazyLock::force(&UPSTREAM_DURATION);
    LazyLock::force(&PEER_HEALTHY);
    LazyLock::force(&CERT_NOT_AFTER);
    LazyLock::force(&JWKS_LAST_SUCCESS);
    LazyLock::force(&TLS_HANDSHAKES);
    LazyLock::force(&TLS_HANDSHAKE_FAILURES);
    LazyLock::force(&ACCESS_LOG_DROPPED);
    LazyLock::force(&OPEN_CONNECTIONS);
    LazyLock::force(&PROCESS);
    LazyLock::force(&LAST_RELOAD_SUCCESS);
    LazyLock::force(&POOL_REQUESTS);
    LazyLock::force(&SPLIT_DECISIONS);
    let mut out = Vec::new();
    let _ = TextEncoder::new().encode(&REGISTRY.gather(), &mut out);
    out
}
