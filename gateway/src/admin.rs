//! Admin listener (default `127.0.0.1:9901`): metrics and probes, never exposed publicly.
//!
//! `GET /healthz` — the process answers; `GET /readyz` — the gateway can serve: every JWT
//! provider has had keys once (503 with a JSON reason otherwise, and while draining); pools
//! without a healthy peer are listed (`pools_down`) but do not make it unready;
//! `GET /metrics` — Prometheus text; `GET /config` — generation, content hash, loaded-at, last
//! reload error, and what the last reload changed (`changes`, see [`crate::config::diff`]);
//! `POST /reload` — reload now, even when the inputs look unchanged, answering with the new
//! generation and its change lines. `/config` and `/reload` require the bearer token from
//! `[admin] token_file` when one is configured.

use crate::http::edge_response::EdgeResponse;
use crate::lifecycle::Lifecycle;
use crate::reload::{Outcome, Reloader};
use crate::route::RouteKind;
use crate::runtime::Runtime;
use crate::state::SharedRuntime;
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use std::sync::Arc;

/// The admin HTTP app.
pub struct Admin {
    runtime: SharedRuntime,
    reloader: Arc<Reloader>,
    lifecycle: Arc<Lifecycle>,
}

impl Admin {
    /// Admin app over the shared runtime.
    pub fn new(runtime: SharedRuntime, reloader: Arc<Reloader>, lifecycle: Arc<Lifecycle>) -> Self {
        Self {
            runtime,
            reloader,
            lifecycle,
        }
    }

    fn authorized(&self, session: &ServerSession) -> bool {
        let rt = self.runtime.load();
        let Some(token) = rt.admin_token.as_deref() else {
            return true;
        };
        let given = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        // Constant-time comparison: the token is a secret.
        bool::from(subtle::ConstantTimeEq::ct_eq(
            given.as_bytes(),
            token.as_bytes(),
        ))
    }
}

/// An admin answer: never cached (probes, metrics and config are live state).
fn respond(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut r = EdgeResponse::new(status, 3).with_body(content_type, body.into());
    r.put(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r.into_http()
}

/// Names of the pools of every route that cannot be served: none of its pools in rotation
/// (weight > 0) has a healthy peer. A split route stays ready while one colour is healthy,
/// since its requests fail over to it; a standby pool at weight 0 never counts.
pub fn unready_pools(rt: &Runtime) -> Vec<String> {
    let mut out: Vec<String> = rt
        .routes
        .iter()
        .filter_map(|r| match &r.kind {
            RouteKind::Proxy { split, .. } => Some(split.members()),
            RouteKind::Static { .. } => None,
        })
        .filter(|members| {
            members
                .iter()
                .all(|m| m.weight == 0 || m.pool.healthy_peers() == 0)
        })
        .flatten()
        .filter(|m| m.weight > 0)
        .map(|m| m.pool.name.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let path = req.uri.path().to_string();
        if (path == "/config" || path == "/reload") && !self.authorized(session) {
            return respond(
                StatusCode::UNAUTHORIZED,
                "application/json",
                br#"{"error":"unauthorized"}"#.to_vec(),
            );
        }
        let req = session.req_header();
        if path == "/reload" {
            if req.method != http::Method::POST {
                return respond(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "application/json",
                    br#"{"error":"method_not_allowed"}"#.to_vec(),
                );
            }
            let r = self.reloader.clone();
            let result = tokio::task::spawn_blocking(move || r.reload("admin", true)).await;
            return match result {
                Ok(Ok(Outcome::Applied(g, diff))) => respond(
                    StatusCode::OK,
                    "application/json",
                    serde_json::json!({
                        "status": "reloaded",
                        "generation": g,
                        "changes": diff.lines(),
                    })
                    .to_string()
                    .into_bytes(),
                ),
                Ok(Ok(Outcome::Unchanged)) => respond(
                    StatusCode::OK,
                    "application/json",
                    br#"{"status":"unchanged"}"#.to_vec(),
                ),
                Ok(Err(e)) => respond(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "application/json",
                    serde_json::json!({"error": "invalid_config", "detail": e.to_string()})
                        .to_string()
                        .into_bytes(),
                ),
                Err(_) => respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "application/json",
                    br#"{"error":"reload_panicked"}"#.to_vec(),
                ),
            };
        }
        if req.method != http::Method::GET && req.method != http::Method::HEAD {
            return respond(
                StatusCode::METHOD_NOT_ALLOWED,
                "application/json",
                br#"{"error":"method_not_allowed"}"#.to_vec(),
            );
        }
        match path.as_str() {
            "/config" => respond(
                StatusCode::OK,
                "application/json",
                serde_json::to_vec(&self.reloader.status()).unwrap_or_default(),
            ),
            "/healthz" => respond(
                StatusCode::OK,
                "application/json",
                br#"{"status":"ok"}"#.to_vec(),
            ),
            "/readyz" if self.lifecycle.is_draining() => respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "application/json",
                br#"{"status":"not_ready","reason":"draining"}"#.to_vec(),
            ),
            "/readyz" => {
                // Readiness means "this gateway can serve": the SPA, redirects and error pages
                // do not need the backend, so a down pool keeps the gateway in the load
                // balancer (`/api` answers a JSON 502/503 and `gateway_upstream_peer_healthy`
                // alerts). Only JWT keys never loaded yet hold readiness back.
                let rt = self.runtime.load();
                let down = unready_pools(&rt);
                let mut no_keys: Vec<&str> = rt
                    .jwt_providers
                    .values()
                    .filter(|p| !p.is_ready())
                    .map(|p| p.name.as_str())
                    .collect();
                no_keys.sort();
                if no_keys.is_empty() {
                    let body = serde_json::json!({"status": "ready", "pools_down": down});
                    respond(
                        StatusCode::OK,
                        "application/json",
                        body.to_string().into_bytes(),
                    )
                } else {
                    // Why each provider without keys has none (e.g. an unknown CA).
                    let jwks_errors: serde_json::Map<String, serde_json::Value> = rt
                        .jwt_providers
                        .values()
                        .filter(|p| !p.is_ready())
                        .filter_map(|p| Some((p.name.clone(), p.last_error()?.into())))
                        .collect();
                    let body = serde_json::json!({
                        "status": "not_ready",
                        "reason": "jwks not loaded",
                        "pools_down": down,
                        "jwt_providers": no_keys,
                        "jwks_errors": jwks_errors,
                    });
                    respond(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "application/json",
                        body.to_string().into_bytes(),
                    )
                }
            }
            "/metrics" => respond(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                crate::metrics::render(),
            ),
            _ => respond(
                StatusCode::NOT_FOUND,
                "application/json",
                br#"{"error":"not_found"}"#.to_vec(),
            ),
        }
    }
}
