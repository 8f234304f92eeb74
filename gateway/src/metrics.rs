//! Prometheus metrics: the only global state of the gateway.
//!
//! Labels are configured names (route, pool) and status classes — never raw paths or user
//! data — so cardinality is bounded by the config.

use once_cell::sync::Lazy;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};
use std::time::Duration;

/// The registry served on the admin listener.
pub static REGISTRY: Lazy<Registry> = Lazy::new(Registry::new);

fn register<C: prometheus::core::Collector + Clone + 'static>(c: C) -> C {
    // Registration fails only on a duplicate name, which is a programming error caught in tests.
    let _ = REGISTRY.register(Box::new(c.clone()));
    c
}

/// Requests by route and status class.
pub static REQUESTS: Lazy<IntCounterVec> = Lazy::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "gateway_requests_total",
                "Requests handled, by route and status class",
            ),
            &["route", "status"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
    )
});

/// Request duration by route.
pub static DURATION: Lazy<HistogramVec> = Lazy::new(|| {
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

/// Upstream errors by pool and kind (`connect`, `timeout`, `bad_gateway`).
pub static UPSTREAM_ERRORS: Lazy<IntCounterVec> = Lazy::new(|| {
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
pub static AUTH_REJECTIONS: Lazy<IntCounterVec> = Lazy::new(|| {
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
pub static RATE_DECISIONS: Lazy<IntCounterVec> = Lazy::new(|| {
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
pub static RATE_TRACKED_KEYS: Lazy<prometheus::IntGaugeVec> = Lazy::new(|| {
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

/// Requests counted in a policy's shared overflow bucket (key cap reached).
pub static RATE_OVERFLOW: Lazy<IntCounterVec> = Lazy::new(|| {
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

/// Generation of the config in force.
pub static CONFIG_GENERATION: Lazy<IntGauge> = Lazy::new(|| {
    register(
        IntGauge::new(
            "gateway_config_generation",
            "Generation of the config in force",
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
    )
});

/// Config reloads by result.
pub static RELOADS: Lazy<IntCounterVec> = Lazy::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "gateway_config_reloads_total",
                "Config reload attempts by result",
            ),
            &["result"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
    )
});

/// 1 when the last reload attempt succeeded.
pub static LAST_RELOAD_SUCCESS: Lazy<IntGauge> = Lazy::new(|| {
    register(
        IntGauge::new(
            "gateway_config_last_reload_success",
            "1 if the last config reload succeeded, 0 if it was refused",
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
    )
});

/// Records a reload attempt.
pub fn reloaded(ok: bool, generation: u64) {
    RELOADS
        .with_label_values(&[if ok { "success" } else { "failure" }])
        .inc();
    LAST_RELOAD_SUCCESS.set(i64::from(ok));
    CONFIG_GENERATION.set(generation as i64);
}

const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

/// A route's metric handles, resolved once when the route is compiled so the `logging` phase
/// does no label hashing or registry locking.
#[derive(Clone)]
pub struct RouteMetrics {
    by_class: [prometheus::IntCounter; 6],
    duration: prometheus::Histogram,
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RouteMetrics")
    }
}

impl RouteMetrics {
    /// Handles for `route`.
    pub fn new(route: &str) -> Self {
        Self {
            by_class: CLASSES.map(|c| REQUESTS.with_label_values(&[route, c])),
            duration: DURATION.with_label_values(&[route]),
        }
    }

    /// Records one finished request (called from the `logging` phase).
    pub fn record(&self, status: u16, elapsed: Duration) {
        let i = match status {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            500..=599 => 4,
            _ => 5,
        };
        self.by_class[i].inc();
        self.duration.observe(elapsed.as_secs_f64());
    }
}

/// Metrics of requests that matched no route.
pub static NO_ROUTE: Lazy<RouteMetrics> = Lazy::new(|| RouteMetrics::new("none"));

/// The registry in Prometheus text format.
pub fn render() -> Vec<u8> {
    Lazy::force(&REQUESTS);
    Lazy::force(&DURATION);
    Lazy::force(&UPSTREAM_ERRORS);
    Lazy::force(&CONFIG_GENERATION);
    Lazy::force(&AUTH_REJECTIONS);
    Lazy::force(&RELOADS);
    Lazy::force(&RATE_DECISIONS);
    Lazy::force(&RATE_TRACKED_KEYS);
    Lazy::force(&RATE_OVERFLOW);
    Lazy::force(&LAST_RELOAD_SUCCESS);
    let mut out = Vec::new();
    let _ = TextEncoder::new().encode(&REGISTRY.gather(), &mut out);
    out
}
