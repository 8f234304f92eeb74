//! The `ProxyHttp` implementation: a dispatcher over one module per concern.
//!
//! | phase | what runs | module |
//! |---|---|---|
//! | `new_ctx` | take the runtime snapshot (one per request) | here |
//! | `request_filter` | request id, client IP (trusted proxies) → hygiene (400/405/413/414/417/431) → one normalised path → route match (404) → strip identity headers → IP/header rate limits (429) → JWT (401/403) → subject rate limits (429) → static answer, or fall through to the proxy | [`hygiene`](crate::hygiene), [`path`](crate::path), [`route`](crate::route), [`rate_limit`](crate::rate_limit), [`auth_filter`](crate::auth_filter), [`static_files`](crate::static_files) |
//! | `request_body_filter` | count body bytes against the limit (413 for chunked bodies) | here |
//! | `upstream_peer` | pick a healthy peer of the route's pool; on retry, another one | [`upstream`](crate::upstream) |
//! | `upstream_request_filter` | hop-by-hop stripping, `X-Forwarded-*`, request id, prefix strip, then the route's request header rules | [`upstream`](crate::upstream), [`headers`](crate::headers) |
//! | `fail_to_connect` | passive failure marking, one retry on another peer | [`upstream`](crate::upstream) |
//! | `response_filter` | HSTS, request id echo, hide upstream `Server`, CORS, compression or 5xx replacement, then the route's response header rules | [`response`](crate::response), [`compress`](crate::compress), [`headers`](crate::headers) |
//! | body module | encode / replace the body | [`compress`](crate::compress) |
//! | `fail_to_proxy` | JSON 502/504/413 | [`response`](crate::response) |
//! | `logging` | metrics | [`metrics`](crate::metrics) |
//!
//! Cheapest rejection first; a 4xx written by the gateway returns `Ok(true)` — it is traffic,
//! not an error.

use crate::route::RouteKind;
use crate::runtime::{Runtime, SharedRuntime};
use crate::{hygiene, metrics, request_id, response, static_files, upstream};
use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::sync::Arc;
use std::time::Instant;

/// Per-request state. Holds the runtime snapshot taken when the request started.
pub struct Ctx {
    /// The config generation this request runs under, start to finish.
    pub rt: Arc<Runtime>,
    /// Sent upstream and echoed as `X-Request-Id`.
    pub request_id: String,
    /// Index of the matched route in `rt.routes`.
    pub route: Option<usize>,
    /// Client IP (formatted only when a header needs it): the TCP peer, or from
    /// `X-Forwarded-For` when the peer is a trusted proxy.
    pub client_ip: Option<std::net::IpAddr>,
    /// The TCP peer's IP.
    pub peer_ip: Option<std::net::IpAddr>,
    /// Whether the peer is a trusted proxy (its `X-Forwarded-For` is appended to).
    pub via_trusted_proxy: bool,
    /// Peer of the last attempt (excluded on retry).
    pub peer: Option<PeerAddr>,
    /// Connect attempts so far.
    pub attempts: u8,
    /// Request body bytes seen.
    pub body_bytes: u64,
    /// Status sent downstream (0 until known).
    pub status: u16,
    /// The normalised request path every decision uses ([`crate::path`]).
    pub path: String,
    /// Body bytes the gateway wrote itself (static files, errors).
    pub body_sent: u64,
    /// Encoding chosen for a static response.
    pub encoding: Option<crate::static_files::Encoding>,
    /// What the verified token grants (routes with `auth = "jwt"`).
    pub identity: Option<Arc<crate::auth::Identity>>,
    /// The tightest rate-limit policy that applied, with the requests it has left.
    pub rate: Option<(Arc<crate::rate_limit::RatePolicy>, u32)>,
    /// `RateLimit: t=` of a 429 (the retry delay).
    pub rate_reset_override: Option<u64>,
    /// When the upstream peer was chosen (for upstream timing).
    pub upstream_started: Option<Instant>,
    /// Milliseconds from peer choice to the upstream response head.
    pub upstream_ms: Option<f64>,
    /// When the request started.
    pub started: Instant,
    /// The request's body framing was refused (conflicting or malformed `Content-Length` /
    /// `Transfer-Encoding`): its bytes are never parsed, the connection just closes.
    pub unframed: bool,
}

/// The gateway's proxy service logic.
pub struct Gateway {
    runtime: SharedRuntime,
}

impl Gateway {
    /// Proxy logic over the shared runtime.
    pub fn new(runtime: SharedRuntime) -> Self {
        Self { runtime }
    }
}

/// Host the client asked for: `Host` (HTTP/1.1) or the URI authority (HTTP/2).
fn request_host(req: &RequestHeader) -> &str {
    req.headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
        .unwrap_or("")
}

/// `host` without its port, for matching (IPv6 literals keep their brackets).
fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            rt: self.runtime.load_full(),
            request_id: String::new(),
            route: None,
            client_ip: None,
            peer_ip: None,
            via_trusted_proxy: false,
            peer: None,
            attempts: 0,
            body_bytes: 0,
            status: 0,
            path: String::new(),
            body_sent: 0,
            encoding: None,
            identity: None,
            rate: None,
            rate_reset_override: None,
            upstream_started: None,
            upstream_ms: None,
            started: Instant::now(),
            unframed: false,
        }
    }

    fn init_downstream_modules(&self, modules: &mut pingora_core::modules::http::HttpModules) {
        // Our body module instead of pingora's compression module (see `compress`).
        modules.add_module(Box::new(crate::compress::EdgeBodyBuilder));
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let req = session.req_header();
        ctx.request_id =
            request_id::from_client(req.headers.get("x-request-id").map(|v| v.as_bytes()));
        ctx.peer_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        (ctx.client_ip, ctx.via_trusted_proxy) =
            hygiene::client_ip(ctx.peer_ip, req, &ctx.rt.trusted_proxies);

        let both_te_and_cl = req.headers.contains_key(http::header::TRANSFER_ENCODING)
            && session.as_http1().is_some_and(|h1| {
                hygiene::raw_has_header(&h1.get_headers_raw_bytes(), "content-length")
            });
        // A request line pingora had to escape before parsing (`GET /a b HTTP/1.1`).
        let escaped_line = session.as_http1().is_some_and(|h1| {
            (**h1.stream())
                .as_any()
                .downcast_ref::<crate::conn_guard::HeadDeadline>()
                .is_some_and(|s| s.request_line_refused())
        });
        let verdict = if both_te_and_cl {
            Err(hygiene::Rejection::BadTransferEncoding)
        } else if escaped_line {
            Err(hygiene::Rejection::BadTarget)
        } else {
            hygiene::request_filter(req, &ctx.rt.limits)
        };
        if let Err(rejection) = verdict {
            ctx.unframed = matches!(
                rejection,
                hygiene::Rejection::BadContentLength | hygiene::Rejection::BadTransferEncoding
            );
            let allow = [(
                http::header::ALLOW,
                http::HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
            )];
            let extra: &[_] = if rejection.status() == 405 {
                &allow
            } else {
                &[]
            };
            response::write_error_with(session, ctx, rejection.status(), rejection.closes(), extra)
                .await?;
            return Ok(true);
        }

        let req = session.req_header();
        ctx.path = match crate::path::normalize(req.uri.path(), ctx.rt.limits.merge_slashes) {
            Ok(p) => p.into_owned(),
            Err(e) => {
                tracing::debug!(reason = e.reason(), "refused request path");
                response::write_error(session, ctx, 400, true).await?;
                return Ok(true);
            }
        };
        let host = host_without_port(request_host(req));
        let rt = ctx.rt.clone();
        let Some(idx) = rt.routes.iter().position(|r| r.matches(host, &ctx.path)) else {
            response::write_error(session, ctx, 404, false).await?;
            return Ok(true);
        };
        ctx.route = Some(idx);
        // Identity headers come only from the gateway: drop client copies on every request.
        let req = session.req_header_mut();
        for h in &rt.strip_headers {
            req.remove_header(h);
        }
        let route = &rt.routes[idx];
        if (rt.maintenance.enabled || route.maintenance)
            && !ctx
                .client_ip
                .is_some_and(|ip| rt.maintenance.allow.iter().any(|n| n.contains(&ip)))
        {
            response::write_maintenance(session, ctx).await?;
            return Ok(true);
        }
        // Cheapest first: IP/header quotas before any token work, subject quotas right after.
        if !route.rate_rules.is_empty()
            && !crate::rate_limit::request_filter(session, ctx, route, false).await?
        {
            return Ok(true);
        }
        // CORS preflights are answered here: they never need a token nor reach the backend.
        if let Some(cors) = &route.cors {
            match crate::cors::preflight(cors, session.req_header()) {
                crate::cors::Preflight::NotPreflight => {}
                crate::cors::Preflight::Allowed(headers) => {
                    let mut resp = ResponseHeader::build_no_case(204, Some(headers.len() + 4))?;
                    for (n, v) in headers {
                        resp.insert_header(n, v)?;
                    }
                    resp.insert_header(http::header::CONTENT_LENGTH, "0")?;
                    response::add_common_headers(&mut resp, ctx);
                    ctx.status = 204;
                    session.write_response_header(Box::new(resp), true).await?;
                    return Ok(true);
                }
                crate::cors::Preflight::Refused => {
                    response::write_error(session, ctx, 403, false).await?;
                    return Ok(true);
                }
            }
        }
        if let Some(policy) = &route.auth {
            if !crate::auth_filter::request_filter(session, ctx, policy).await? {
                return Ok(true);
            }
        }
        if route.rate_rules.iter().any(|r| r.policy.needs_subject())
            && !crate::rate_limit::request_filter(session, ctx, route, true).await?
        {
            return Ok(true);
        }
        match &rt.routes[idx].kind {
            RouteKind::Proxy { .. } => Ok(false),
            RouteKind::Static { bundle } => {
                let path = std::mem::take(&mut ctx.path);
                static_files::request_filter(session, ctx, bundle, &path).await?;
                ctx.path = path;
                Ok(true)
            }
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(b) = body {
            ctx.body_bytes += b.len() as u64;
            if ctx.body_bytes > ctx.rt.limits.max_body_bytes {
                return Error::e_explain(ErrorType::HTTPStatus(413), "request body over limit");
            }
        }
        Ok(())
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let rt = ctx.rt.clone();
        let pool = match ctx.route.map(|i| &rt.routes[i].kind) {
            Some(RouteKind::Proxy { pool, .. }) => pool,
            _ => return Error::e_explain(ErrorType::InternalError, "no proxy route"),
        };
        ctx.attempts += 1;
        // Only consistent hashing needs a key; round robin ignores it.
        let key = match (pool.hashes(), ctx.client_ip) {
            (true, Some(std::net::IpAddr::V4(ip))) => ip.octets().to_vec(),
            (true, Some(std::net::IpAddr::V6(ip))) => ip.octets().to_vec(),
            _ => Vec::new(),
        };
        let Some(addr) = pool.select(&key, ctx.peer.as_ref()) else {
            metrics::UPSTREAM_ERRORS
                .with_label_values(&[pool.name.as_str(), "no_healthy_peer"])
                .inc();
            return Error::e_explain(
                ErrorType::HTTPStatus(502),
                format!("pool {} has no healthy peer", pool.name),
            );
        };
        let peer = pool.peer(&addr).ok_or_else(|| {
            Error::explain(ErrorType::InternalError, "peer is not an inet address")
        })?;
        ctx.peer = Some(addr);
        ctx.upstream_started = Some(Instant::now());
        Ok(peer)
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let rt = ctx.rt.clone();
        let strip = match ctx.route.map(|i| &rt.routes[i]) {
            Some(route) => match &route.kind {
                RouteKind::Proxy {
                    strip_prefix: true, ..
                } => Some(route),
                _ => None,
            },
            None => None,
        };
        // Forward the path the decisions were made on, not the client's spelling of it.
        let new_path = if strip.is_some() || ctx.path != upstream_request.uri.path() {
            let path = strip.map_or(ctx.path.as_str(), |r| r.strip(&ctx.path));
            Some(match upstream_request.uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path.to_string(),
            })
        } else {
            None
        };
        let host = request_host(session.req_header());
        let client_ip = crate::text::ip_string(ctx.client_ip);
        // Only a trusted peer is named in `X-Forwarded-For`.
        let peer_ip = if ctx.via_trusted_proxy {
            crate::text::ip_string(ctx.peer_ip)
        } else {
            String::new()
        };
        let route = ctx.route.map(|i| &rt.routes[i]);
        let drop_authorization = route
            .and_then(|r| r.auth.as_ref())
            .is_some_and(|policy| !policy.provider.conf.forward_authorization);
        let fwd = upstream::Forwarding {
            client_ip: &client_ip,
            peer_ip: &peer_ip,
            append_forwarded_for: ctx.via_trusted_proxy,
            host,
            request_id: &ctx.request_id,
            upgrade: session.is_upgrade_req(),
        };
        upstream::rewrite_request_head(upstream_request, new_path.as_deref(), |h| {
            if let Some(id) = &ctx.identity {
                for (name, value) in &id.headers {
                    h.insert(name.clone(), value.clone());
                }
            }
            if drop_authorization {
                h.remove(http::header::AUTHORIZATION);
            }
            upstream::upstream_request_filter(h, &fwd);
            // Route rules last: they see (and may adjust) what the gateway set.
            if let Some(route) = route.filter(|r| !r.request_rules.is_empty()) {
                route
                    .request_rules
                    .apply_request(h, &response::vars(ctx, route));
            }
        });
        // Last: the signature covers the identity headers as they finally go out.
        if let (Some(signer), Some(id)) = (&rt.identity_signer, &ctx.identity) {
            let value = {
                let mut names: Vec<&http::HeaderName> = id.headers.iter().map(|(n, _)| n).collect();
                names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
                names.dedup();
                let h = &upstream_request.headers;
                let signed: Vec<(&str, &[u8])> = names
                    .iter()
                    .filter_map(|n| h.get(*n).map(|v| (n.as_str(), v.as_bytes())))
                    .collect();
                let rid = h
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                let pq = upstream_request
                    .uri
                    .path_and_query()
                    .map_or("/", |p| p.as_str());
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                signer.signature(now, upstream_request.method.as_str(), pq, rid, &signed)
            };
            upstream_request.insert_header(crate::identity::SIGNATURE, value)?;
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let Some(RouteKind::Proxy { pool, .. }) = ctx.route.map(|i| &ctx.rt.routes[i].kind) else {
            return e;
        };
        if let Some(addr) = &ctx.peer {
            pool.mark_failed(addr);
            metrics::UPSTREAM_ERRORS
                .with_label_values(&[pool.name.as_str(), "connect"])
                .inc();
        }
        // Nothing was sent yet, so a retry on another peer is safe for any method.
        if ctx.attempts <= pool.conf.retries {
            e.set_retry(true);
        }
        e
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(t) = ctx.upstream_started {
            let secs = t.elapsed().as_secs_f64();
            ctx.upstream_ms = Some(secs * 1000.0);
            if let Some(RouteKind::Proxy { pool, .. }) = ctx.route.map(|i| &ctx.rt.routes[i].kind) {
                pool.observe_upstream(secs);
            }
        }
        response::response_filter(upstream_response, ctx);
        let rt = ctx.rt.clone();
        let Some(route) = ctx.route.map(|i| &rt.routes[i]) else {
            return Ok(());
        };
        if let Some(cors) = &route.cors {
            let origin = session.req_header().headers.get(http::header::ORIGIN);
            crate::cors::response_filter(cors, origin, upstream_response);
        }
        if route.replace_upstream_errors && upstream_response.status.as_u16() >= 500 {
            response::replace_upstream_error(session, upstream_response, ctx);
        } else if let Some(c) = &route.compress {
            if c.applies(upstream_response) {
                crate::compress::add_vary(upstream_response);
                let req = session.req_header();
                // HTTP/1.0 has no chunked framing; HEAD has no body to encode.
                let eligible = req.method != http::Method::HEAD
                    && req.version != http::Version::HTTP_10
                    && req.version != http::Version::HTTP_09;
                let enc = crate::compress::negotiate(
                    req.headers
                        .get(http::header::ACCEPT_ENCODING)
                        .and_then(|v| v.to_str().ok()),
                );
                if let (true, Some(enc)) = (eligible, enc) {
                    crate::compress::start(session, upstream_response, enc, c.level);
                }
            }
        }
        response::apply_route_rules(upstream_response, ctx);
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            ErrorType::ReadTimedout | ErrorType::WriteTimedout
                if e.esource() == &ErrorSource::Upstream =>
            {
                504
            }
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    ErrorType::ReadTimedout => 408,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        let ours = matches!(e.etype(), ErrorType::HTTPStatus(_));
        if (code == 504 || code == 502) && !ours {
            if let Some(RouteKind::Proxy { pool, .. }) = ctx.route.map(|i| &ctx.rt.routes[i].kind) {
                let kind = if code == 504 {
                    "timeout"
                } else {
                    "bad_gateway"
                };
                metrics::UPSTREAM_ERRORS
                    .with_label_values(&[pool.name.as_str(), kind])
                    .inc();
            }
        }
        // Only an interim head (a relayed `100 Continue`) may have gone out: the answer follows.
        let answered = session
            .response_written()
            .is_some_and(|r| !r.status.is_informational());
        if code > 0 && !answered {
            if ctx.request_id.is_empty() {
                ctx.request_id = request_id::from_client(None);
            }
            if let Err(we) = response::write_error(session, ctx, code, true).await {
                tracing::debug!(error = %we, "could not write error response");
            }
        }
        ctx.status = code;
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        let status = session
            .response_written()
            .map_or(ctx.status, |r| r.status.as_u16());
        let m = ctx
            .route
            .map_or(&*metrics::NO_ROUTE, |i| &ctx.rt.routes[i].metrics);
        let elapsed = ctx.started.elapsed();
        m.record(&session.req_header().method, status, elapsed);
        if let Some(enc) = ctx.encoding {
            m.record_static(status, enc);
        }
        if ctx.rt.access_log {
            crate::logging::write(session, ctx, status, elapsed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_is_removed() {
        assert_eq!(host_without_port("example.com:8443"), "example.com");
        assert_eq!(host_without_port("example.com"), "example.com");
        assert_eq!(host_without_port("[::1]:8443"), "[::1]");
        assert_eq!(host_without_port("[::1]"), "[::1]");
    }
}
