//! Responses the gateway writes itself, and `response_filter` for proxied ones.
//!
//! Expected rejections (404, 413, 431, 502, 504…) are ordinary responses: a small JSON body
//! `{"error":"…","request_id":"…"}`, the request id echoed, HSTS, `Cache-Control: no-store`.
//! Navigations (`GET`/`HEAD` accepting `text/html`) on static routes, or matching no route,
//! get an HTML page instead: the file configured for the status in `[error_pages]`, or a small
//! built-in page naming the status and the request id.

use crate::proxy::Ctx;
use bytes::Bytes;
use http::HeaderName;
use pingora_core::{OrErr as _, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

/// Built-in maintenance page (navigations on static routes).
pub const MAINTENANCE_PAGE: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Maintenance</title></head><body><h1>Back soon</h1><p>We are doing some maintenance. Please try again in a few minutes.</p></body></html>\n";

/// The machine-readable error name for a status the gateway produces.
pub fn error_name(status: u16) -> &'static str {
    match status {
        400 => "bad_request",
        404 => "not_found",
        405 => "method_not_allowed",
        406 => "not_acceptable",
        416 => "range_not_satisfiable",
        408 => "request_timeout",
        413 => "payload_too_large",
        417 => "expectation_failed",
        414 => "uri_too_long",
        431 => "request_header_fields_too_large",
        502 => "bad_gateway",
        503 => "service_unavailable",
        504 => "gateway_timeout",
        _ if status >= 500 => "internal_error",
        _ => "error",
    }
}

/// Builds the JSON body of an error. Request ids are validated tokens, so no escaping needed.
pub fn error_body(error: &str, request_id: &str) -> Bytes {
    Bytes::from(format!(
        "{{\"error\":\"{error}\",\"request_id\":\"{request_id}\"}}"
    ))
}

/// Adds the headers every HTTPS response carries: HSTS and the request id.
pub fn add_common_headers(resp: &mut ResponseHeader, ctx: &Ctx) {
    add_common(resp, ctx);
}

/// [`add_common_headers`] for a head the gateway builds itself ([`Head`]).
pub fn add_common_headers_to(head: &mut Head, ctx: &Ctx) {
    add_common(&mut head.parts.headers, ctx);
}

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

fn add_common(h: &mut impl PutHeader, ctx: &Ctx) {
    if let Some(hsts) = &ctx.rt.hsts {
        h.put(http::header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
    if let Ok(id) = http::HeaderValue::from_str(&ctx.request_id) {
        h.put(X_REQUEST_ID, id);
    }
    crate::rate_limit::add_headers(h, ctx);
}

/// Setting a header on a response head: pingora's head or the plain `http` map.
pub trait PutHeader {
    /// Sets `name` to `value`, replacing any earlier value.
    fn put(&mut self, name: HeaderName, value: http::HeaderValue);
}

impl PutHeader for ResponseHeader {
    fn put(&mut self, name: HeaderName, value: http::HeaderValue) {
        let _ = self.insert_header(name, value);
    }
}

impl PutHeader for http::HeaderMap {
    fn put(&mut self, name: HeaderName, value: http::HeaderValue) {
        self.insert(name, value);
    }
}

/// A response head the gateway builds itself. Headers go straight into the `http` map:
/// pingora's `insert_header` title-cases each name into a fresh buffer and parses it back
/// (≈ 300 instructions a header, ≈ 15 headers a static response); the head has no header
/// case to keep, so none of that is needed.
pub struct Head {
    /// Status, version and headers.
    pub parts: http::response::Parts,
}

impl Head {
    /// A head with `status` and room for `headers` headers.
    pub fn new(status: http::StatusCode, headers: usize) -> Self {
        let mut parts = http::Response::new(()).into_parts().0;
        parts.status = status;
        parts.headers.reserve(headers);
        Self { parts }
    }
    /// Sets a header.
    pub fn put(&mut self, name: HeaderName, value: http::HeaderValue) {
        self.parts.headers.insert(name, value);
    }
    /// The pingora head to send (no header case map: names go out in their canonical form).
    pub fn finish(self) -> ResponseHeader {
        ResponseHeader::from(self.parts)
    }
}

/// Writes a JSON error response. `close` drops the connection afterwards (used when the
/// request body was not read, so the connection can't be reused safely).
pub async fn write_error(
    session: &mut Session,
    ctx: &mut Ctx,
    status: u16,
    close: bool,
) -> Result<()> {
    write_error_with(session, ctx, status, close, &[]).await
}

/// [`write_error`] with extra headers (e.g. `Allow` on 405).
pub async fn write_error_with(
    session: &mut Session,
    ctx: &mut Ctx,
    status: u16,
    close: bool,
    extra: &[(http::HeaderName, http::HeaderValue)],
) -> Result<()> {
    if wants_html(session, ctx) {
        let page = error_page(ctx, status);
        return write_body(session, ctx, status, page, HTML, close, extra).await;
    }
    let body = error_body(error_name(status), &ctx.request_id);
    write_json(session, ctx, status, body, close, extra).await
}

/// Whether an error for this request should be an HTML page: a navigation (`GET`/`HEAD`
/// accepting `text/html`) on a static route or on no route at all. API routes always get JSON.
pub fn wants_html(session: &Session, ctx: &Ctx) -> bool {
    let req = session.req_header();
    let static_or_none = match ctx.route.map(|i| &ctx.rt.routes[i].kind) {
        None | Some(crate::route::RouteKind::Static { .. }) => true,
        Some(crate::route::RouteKind::Proxy { .. }) => false,
    };
    static_or_none && is_navigation(req)
}

/// `GET`/`HEAD` whose `Accept` names `text/html`.
fn is_navigation(req: &pingora_http::RequestHeader) -> bool {
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
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    // Request ids are `[A-Za-z0-9._-]` tokens: nothing to escape.
    Bytes::from(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>{status} {reason}</title></head><body><h1>{status} {reason}</h1><p>Request id: <code>{}</code></p></body></html>\n",
        ctx.request_id
    ))
}

/// Variables of header rules for this request.
pub fn vars<'a>(ctx: &'a Ctx, route: &'a crate::route::Route) -> crate::headers::Vars<'a> {
    crate::headers::Vars {
        request_id: &ctx.request_id,
        client_ip: ctx.client_ip,
        route: &route.name,
    }
}

/// Rewrites an upstream 5xx into the gateway's own error (route `replace_upstream_errors`):
/// same status, our JSON or HTML body, none of the upstream's body or entity headers.
pub fn replace_upstream_error(session: &mut Session, resp: &mut ResponseHeader, ctx: &mut Ctx) {
    let head = session.req_header().method == http::Method::HEAD;
    let empty = resp
        .headers
        .get(http::header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() == b"0");
    if empty && !head {
        // No body will follow the head, so there is nothing to swap the page in for.
        return;
    }
    let status = resp.status.as_u16();
    // A browser that followed a link to a proxied page gets the page, API clients JSON.
    let (body, content_type) = if is_navigation(session.req_header()) {
        (error_page(ctx, status), HTML)
    } else {
        (
            error_body(error_name(status), &ctx.request_id),
            "application/json",
        )
    };
    for h in [
        http::header::CONTENT_ENCODING,
        http::header::TRANSFER_ENCODING,
        http::header::ETAG,
        http::header::LAST_MODIFIED,
        http::header::CONTENT_RANGE,
        http::header::ACCEPT_RANGES,
        http::header::CONTENT_LANGUAGE,
    ] {
        resp.remove_header(&h);
    }
    let _ = resp.insert_header(http::header::CONTENT_TYPE, content_type);
    let _ = resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string());
    let _ = resp.insert_header(http::header::CACHE_CONTROL, "no-store");
    ctx.rt.security_headers.apply(resp);
    if !head {
        ctx.body_sent += body.len() as u64;
        crate::compress::replace_body(session, body);
    }
}

/// Applies the matched route's `response_headers` rules: the last step before a proxied or
/// static response head is sent (gateway errors are left as the gateway wrote them).
pub fn apply_route_rules(resp: &mut ResponseHeader, ctx: &Ctx) {
    if let Some(route) = ctx.route.map(|i| &ctx.rt.routes[i]) {
        if !route.response_rules.is_empty() {
            route.response_rules.apply_response(resp, &vars(ctx, route));
        }
    }
}

/// Writes a JSON response the gateway produced itself, with the common and security headers.
pub async fn write_json(
    session: &mut Session,
    ctx: &mut Ctx,
    status: u16,
    body: Bytes,
    close: bool,
    extra: &[(http::HeaderName, http::HeaderValue)],
) -> Result<()> {
    write_body(session, ctx, status, body, "application/json", close, extra).await
}

/// Content type of the gateway's HTML pages (errors, maintenance).
const HTML: &str = "text/html; charset=utf-8";

/// Writes a response the gateway produced itself (JSON error or HTML page) with the common and
/// security headers (CSP included) and `Cache-Control: no-store`.
async fn write_body(
    session: &mut Session,
    ctx: &mut Ctx,
    status: u16,
    body: Bytes,
    content_type: &'static str,
    close: bool,
    extra: &[(http::HeaderName, http::HeaderValue)],
) -> Result<()> {
    let status_code = http::StatusCode::from_u16(status)
        .or_err(pingora_core::ErrorType::InternalError, "response status")?;
    let mut h = Head::new(status_code, 12 + extra.len());
    for (n, v) in extra {
        h.put(n.clone(), v.clone());
    }
    ctx.rt.security_headers.apply(&mut h.parts.headers);
    h.put(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    h.put(http::header::CONTENT_LENGTH, body.len().into());
    h.put(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    add_common_headers_to(&mut h, ctx);
    // A body we did not read must not be taken for the next request: close instead.
    let close =
        close || (crate::hygiene::has_body(session.req_header()) && !session.is_body_done());
    if close {
        h.put(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
        session.set_keepalive(None);
    }
    let resp = h.finish();
    ctx.status = status;
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        ctx.body_sent += body.len() as u64;
        session.write_response_body(Some(body), true).await?;
    }
    if !ctx.unframed {
        discard_body(session, &ctx.rt.limits).await;
    }
    Ok(())
}

/// After an early answer (the complete response is already written), reads and drops what is
/// left of the request body, within `discard_body_max_bytes` and `discard_body_timeout` (and
/// one second without a byte), before the stream or connection is let go.
///
/// HTTP/2: RFC 9113 §8.1 lets a server reset the stream with NO_ERROR right after such an
/// answer (h2 does when the stream is dropped), but a client still uploading may then lose the
/// answer: curl 7.88 ends the transfer with "(92) Stream error in the HTTP/2 framing layer"
/// before it shows the response it already received. Reading on until the client's END_STREAM
/// lets the stream end normally; past the bounds the NO_ERROR reset follows.
/// HTTP/1.1: the connection closes after the answer, and closing a socket with unread bytes
/// makes the kernel send a reset that can destroy the answer in the client's buffers (curl:
/// "(56) Connection reset by peer"); this is nginx's lingering close. Never called for a
/// request whose body framing was refused ([`Ctx::unframed`]): those bytes are never parsed.
async fn discard_body(session: &mut Session, limits: &crate::runtime::Limits) {
    const IDLE: std::time::Duration = std::time::Duration::from_secs(1);
    if session.is_body_done() || session.req_header().method == http::Method::HEAD {
        return;
    }
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if limits.discard_body_max_bytes == 0
        || declared.is_some_and(|n| n > limits.discard_body_max_bytes)
    {
        return;
    }
    let deadline = tokio::time::Instant::now() + limits.discard_body_timeout;
    let mut left = limits.discard_body_max_bytes;
    while left > 0 {
        let idle = (tokio::time::Instant::now() + IDLE).min(deadline);
        match tokio::time::timeout_at(idle, session.read_request_body()).await {
            Ok(Ok(Some(chunk))) => left = left.saturating_sub(chunk.len() as u64),
            // The body's end, a client reset or close, or a time bound.
            _ => return,
        }
    }
}

/// `response_filter` for proxied responses: hide upstream software, add our headers, and the
/// baseline security headers the upstream did not set.
pub fn response_filter(resp: &mut ResponseHeader, ctx: &mut Ctx) {
    const X_POWERED_BY: HeaderName = HeaderName::from_static("x-powered-by");
    rewrite_response_head(resp, |h| {
        h.remove(http::header::SERVER);
        h.remove(X_POWERED_BY);
        add_common(h, ctx);
        for name in [
            http::header::X_CONTENT_TYPE_OPTIONS,
            http::header::REFERRER_POLICY,
        ] {
            if !h.contains_key(&name) {
                if let Some((n, v)) = ctx
                    .rt
                    .security_headers
                    .headers
                    .iter()
                    .find(|(n, _)| n == name)
                {
                    h.insert(n.clone(), v.clone());
                }
            }
        }
    });
    ctx.status = resp.status.as_u16();
}

/// Edits an upstream response head through its plain `http` parts and puts it back without
/// a header-case map, for the reason [`crate::upstream::rewrite_request_head`] gives: header
/// names reach the client lower-cased (standard ones title-cased), as on every response the
/// gateway writes itself. A non-standard reason phrase is kept.
pub fn rewrite_response_head(resp: &mut ResponseHeader, edit: impl FnOnce(&mut http::HeaderMap)) {
    let reason = resp
        .get_reason_phrase()
        .filter(|r| Some(*r) != resp.status.canonical_reason())
        .map(str::to_owned);
    let placeholder = ResponseHeader::from(http::Response::new(()).into_parts().0);
    let mut parts = http::response::Parts::from(std::mem::replace(resp, placeholder));
    // The edge headers (HSTS, request id, nosniff, …) go in after one grow, not several.
    parts.headers.reserve(8);
    edit(&mut parts.headers);
    *resp = ResponseHeader::from(parts);
    if let Some(r) = reason {
        let _ = resp.set_reason_phrase(Some(&r));
    }
}

/// Writes the maintenance answer: 503 with `Retry-After`, HTML for navigations on static
/// routes, JSON otherwise.
pub async fn write_maintenance(session: &mut Session, ctx: &mut Ctx) -> Result<()> {
    let retry = [(
        http::header::RETRY_AFTER,
        http::HeaderValue::from(ctx.rt.maintenance.retry_after),
    )];
    if !wants_html(session, ctx) {
        let body = error_body("maintenance", &ctx.request_id);
        return write_json(session, ctx, 503, body, false, &retry).await;
    }
    let page = ctx.rt.maintenance.page.clone();
    write_body(session, ctx, 503, page, HTML, false, &retry).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upstream_head_loses_its_case_map_but_no_header_status_or_reason() {
        let mut resp = ResponseHeader::build(200, None).expect("resp");
        resp.insert_header("X-Custom-Thing", "1").expect("h");
        resp.append_header("Set-Cookie", "a=1").expect("h");
        resp.append_header("Set-Cookie", "b=2").expect("h");
        resp.insert_header("Server", "backend/1.0").expect("h");
        resp.set_reason_phrase(Some("Fine")).expect("reason");
        rewrite_response_head(&mut resp, |h| {
            h.remove(http::header::SERVER);
            h.insert("x-added", http::HeaderValue::from_static("2"));
        });
        assert_eq!(resp.status, 200);
        assert_eq!(resp.get_reason_phrase(), Some("Fine"));
        assert_eq!(resp.headers["x-custom-thing"], "1");
        assert_eq!(resp.headers.get_all("set-cookie").iter().count(), 2);
        assert!(resp.headers.get("server").is_none());
        let mut wire = Vec::new();
        resp.header_to_h1_wire(&mut wire);
        let wire = String::from_utf8(wire).expect("utf8");
        assert!(wire.contains("x-custom-thing: 1\r\n"), "{wire}");
        assert!(
            wire.contains("Set-Cookie: a=1\r\nSet-Cookie: b=2\r\n"),
            "{wire}"
        );
        assert!(wire.contains("x-added: 2\r\n"), "{wire}");
        // The canonical phrase is not turned into a custom one.
        let mut ok = ResponseHeader::build(404, None).expect("resp");
        rewrite_response_head(&mut ok, |_| {});
        assert_eq!(ok.get_reason_phrase(), Some("Not Found"));
    }

    #[test]
    fn error_body_is_json() {
        let b = error_body("bad_gateway", "abc-1");
        let v: serde_json::Value = serde_json::from_slice(&b).expect("json");
        assert_eq!(v["error"], "bad_gateway");
        assert_eq!(v["request_id"], "abc-1");
    }
}
