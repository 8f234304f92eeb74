//! Admin listener (default `127.0.0.1:9901`): metrics and probes, never exposed publicly.
//!
//! `GET /healthz` — the process answers; `GET /readyz` — every pool a route uses has a healthy
//! peer (503 with a JSON reason otherwise); `GET /metrics` — Prometheus text.

use crate::route::RouteKind;
use crate::runtime::{Runtime, SharedRuntime};
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;

/// The admin HTTP app.
pub struct Admin {
    runtime: SharedRuntime,
}

impl Admin {
    /// Admin app over the shared runtime.
    pub fn new(runtime: SharedRuntime) -> Self {
        Self { runtime }
    }
}

fn respond(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("Content-Type", content_type)
        .header("Content-Length", body.len())
        .header("Cache-Control", "no-store")
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

/// Names of pools used by a route that have no healthy peer.
pub fn unready_pools(rt: &Runtime) -> Vec<String> {
    let mut out: Vec<String> = rt
        .routes
        .iter()
        .filter_map(|r| match &r.kind {
            RouteKind::Proxy { pool, .. } if pool.healthy_peers() == 0 => Some(pool.name.clone()),
            _ => None,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        if req.method != http::Method::GET && req.method != http::Method::HEAD {
            return respond(
                StatusCode::METHOD_NOT_ALLOWED,
                "application/json",
                br#"{"error":"method_not_allowed"}"#.to_vec(),
            );
        }
        match req.uri.path() {
            "/healthz" => respond(
                StatusCode::OK,
                "application/json",
                br#"{"status":"ok"}"#.to_vec(),
            ),
            "/readyz" => {
                let rt = self.runtime.load();
                let down = unready_pools(&rt);
                let mut no_keys: Vec<&str> = rt
                    .jwt_providers
                    .values()
                    .filter(|p| !p.is_ready())
                    .map(|p| p.name.as_str())
                    .collect();
                no_keys.sort();
                if down.is_empty() && no_keys.is_empty() {
                    respond(
                        StatusCode::OK,
                        "application/json",
                        br#"{"status":"ready"}"#.to_vec(),
                    )
                } else {
                    let reason = if down.is_empty() {
                        "jwks not loaded"
                    } else {
                        "no healthy peer"
                    };
                    let body = serde_json::json!({
                        "status": "not_ready",
                        "reason": reason,
                        "pools": down,
                        "jwt_providers": no_keys,
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
