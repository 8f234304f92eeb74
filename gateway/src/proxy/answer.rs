//! The one verdict every request phase returns, and the answers phases build from the context:
//! errors (JSON for APIs, HTML pages for navigations), maintenance, and the headers every
//! answer carries (HSTS, request id, rate-limit state).
//!
//! Expected rejections (404, 413, 431, 502, 504…) are ordinary answers: a small JSON body
//! `{"error":"…","request_id":"…"}`, the request id echoed, HSTS, `Cache-Control: no-store`.
//! Navigations (`GET`/`HEAD` accepting `text/html`) on static routes, or matching no route,
//! get an HTML page instead: the file configured for the status in `[error_pages]`, or a small
//! built-in page naming the status and the request id.

use super::ctx::Ctx;
use crate::http::edge_response::{error_body, error_name, EdgeResponse, PutHeader, HTML, JSON};
use crate::route::RouteKind;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use pingora_http::RequestHeader;

/// What a phase decided.
#[derive(Debug)]
pub enum Verdict {
    /// Go on with the next phase.
    Continue,
    /// Answer now with this (the dispatcher writes it; no later phase runs).
    Respond(EdgeResponse),
}

/// Built-in maintenance page (navigations on static routes).
pub const MAINTENANCE_PAGE: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Maintenance</title></head><body><h1>Back soon</h1><p>We are doing some maintenance. Please try again in a few minutes.</p></body></html>\n";

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Adds the headers every HTTPS answer carries: HSTS, the request id, the rate-limit state.
pub fn common_headers(h: &mut impl PutHeader, ctx: &Ctx) {
    if let Some(hsts) = &ctx.rt.hsts {
        h.put(http::header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
    if let Ok(id) = HeaderValue::from_str(&ctx.request_id) {
        h.put(X_REQUEST_ID, id);
    }
    rate_headers(h, ctx);
}

/// Adds the rate-limit headers for the tightest policy that applied.
fn rate_headers(resp: &mut impl PutHeader, ctx: &Ctx) {
    const POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
    const STATE: HeaderName = HeaderName::from_static("ratelimit");
    const LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
    const REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
    const RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
    let Some((p, remaining)) = &ctx.rate.tightest else {
        return;
    };
    let h = ctx.rt.rate_limit_headers;
    let values = p.headers(*remaining);
    let reset = ctx.rate.reset_override.unwrap_or(values.reset_secs);
    if h.ratelimit {
        resp.put(POLICY, values.policy);
        // A policy name that is no valid header value leaves this header out.
        if let Ok(v) = HeaderValue::try_from(format!("\"{}\";r={remaining};t={reset}", p.name)) {
            resp.put(STATE, v);
        }
    }
    if h.x_ratelimit {
        resp.put(LIMIT, HeaderValue::from(values.limit));
        resp.put(REMAINING, HeaderValue::from(*remaining));
        resp.put(RESET, HeaderValue::from(reset));
    }
}

/// An answer the gateway composed (JSON error or HTML page) with the common and security
/// headers (CSP included) and `Cache-Control: no-store`.
pub fn page(ctx: &Ctx, status: u16, content_type: &'static str, body: Bytes) -> EdgeResponse {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = EdgeResponse::new(status, 12);
    ctx.rt.security_headers.apply(&mut r.head.headers);
    let mut r = r.with_body(content_type, body);
    r.put(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    common_headers(&mut r, ctx);
    r
}

/// A JSON answer (`body` already serialised).
pub fn json(ctx: &Ctx, status: u16, body: Bytes) -> EdgeResponse {
    page(ctx, status, JSON, body)
}

/// The error answer for `status`: an HTML page for navigations on static routes (or no
/// route), JSON otherwise.
pub fn error(req: &RequestHeader, ctx: &Ctx, status: u16) -> EdgeResponse {
    if wants_html(req, ctx) {
        return page(ctx, status, HTML, error_page(ctx, status));
    }
    json(ctx, status, error_body(error_name(status), &ctx.request_id))
}

/// The maintenance answer: 503 with `Retry-After`, HTML for navigations on static routes,
/// JSON otherwise.
pub fn maintenance(req: &RequestHeader, ctx: &Ctx) -> EdgeResponse {
    let mut r = if wants_html(req, ctx) {
        page(ctx, 503, HTML, ctx.rt.maintenance.page.clone())
    } else {
        json(ctx, 503, error_body("maintenance", &ctx.request_id))
    };
    r.put(
        http::header::RETRY_AFTER,
        HeaderValue::from(ctx.rt.maintenance.retry_after),
    );
    r
}

/// Whether an error for this request should be an HTML page: a navigation (`GET`/`HEAD`
/// accepting `text/html`) on a static route or on no route at all. API routes always get JSON.
pub fn wants_html(req: &RequestHeader, ctx: &Ctx) -> bool {
    let static_or_none = match ctx.route().map(|r| &r.kind) {
        None | Some(RouteKind::Static { .. }) => true,
        Some(RouteKind::Proxy { .. }) => false,
    };
    static_or_none && is_navigation(req)
}

/// `GET`/`HEAD` whose `Accept` names `text/html`.
pub fn is_navigation(req: &RequestHeader) -> bool {
    (req.method == http::Method::GET || req.method == http::Method::HEAD)
        && req
            .headers
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/html"))
}

/// The HTML page for `status`: the configured file, or the built-in page.
pub fn error_page(ctx: &Ctx, status: u16) -> Bytes {
    if let Some(page) = ctx.rt.error_pages.get(&status) {
        return page.clone();
    }
    let reason = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    // Request ids are `[A-Za-z0-9._-]` tokens: nothing to escape.
    Bytes::from(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>{status} {reason}</title></head><body><h1>{status} {reason}</h1><p>Request id: <code>{}</code></p></body></html>\n",
        ctx.request_id
    ))
}

/// Applies the matched route's `response_headers` rules: the last step before a proxied or
/// static response head is sent (gateway errors are left as the gateway wrote them).
pub fn route_rules(h: &mut impl crate::headers::Head, ctx: &Ctx) {
    if let Some(route) = ctx.route() {
        if !route.response_rules.is_empty() {
            route.response_rules.apply_response(h, &ctx.vars(route));
        }
    }
}
