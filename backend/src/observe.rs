//! Backend observability: Prometheus metrics on `GET /metrics` and one JSON log line per
//! request carrying the `X-Request-Id` the gateway sent, so a request can be followed from
//! the edge access log to the backend.

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use once_cell::sync::Lazy;
use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};
use std::time::Instant;

/// The backend's registry.
pub static REGISTRY: Lazy<Registry> = Lazy::new(Registry::new);

fn reg<C: prometheus::core::Collector + Clone + 'static>(c: C) -> C {
    let _ = REGISTRY.register(Box::new(c.clone()));
    c
}

static REQUESTS: Lazy<IntCounterVec> = Lazy::new(|| {
    reg(IntCounterVec::new(
        Opts::new(
            "backend_requests_total",
            "Requests by route template, method and status",
        ),
        &["route", "method", "status"],
    )
    .unwrap_or_else(|e| unreachable!("static metric: {e}")))
});

static LATENCY: Lazy<HistogramVec> = Lazy::new(|| {
    reg(HistogramVec::new(
        HistogramOpts::new(
            "backend_request_duration_seconds",
            "Request latency by route template",
        ),
        &["route"],
    )
    .unwrap_or_else(|e| unreachable!("static metric: {e}")))
});

static POOL_SIZE: Lazy<IntGauge> = Lazy::new(|| {
    reg(
        IntGauge::new("backend_db_pool_connections", "Open database connections")
            .unwrap_or_else(|e| unreachable!("static metric: {e}")),
    )
});

static POOL_IDLE: Lazy<IntGauge> = Lazy::new(|| {
    reg(
        IntGauge::new("backend_db_pool_idle", "Idle database connections")
            .unwrap_or_else(|e| unreachable!("static metric: {e}")),
    )
});

/// Middleware: metrics by route template (never the raw path) and a JSON log line.
pub async fn track(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 128)
        .unwrap_or("-")
        .to_string();
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    let secs = started.elapsed().as_secs_f64();
    REQUESTS
        .with_label_values(&[&route, &method, &status.to_string()])
        .inc();
    LATENCY.with_label_values(&[&route]).observe(secs);
    tracing::info!(
        request_id = %request_id,
        method = %method,
        route = %route,
        status,
        duration_ms = secs * 1000.0,
        "request"
    );
    resp
}

/// `GET /metrics`.
pub async fn metrics(State(st): State<crate::AppState>) -> impl IntoResponse {
    POOL_SIZE.set(i64::from(st.db.size()));
    POOL_IDLE.set(st.db.num_idle() as i64);
    Lazy::force(&REQUESTS);
    Lazy::force(&LATENCY);
    let mut out = Vec::new();
    let _ = prometheus::TextEncoder::new().encode(&REGISTRY.gather(), &mut out);
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        out,
    )
}
