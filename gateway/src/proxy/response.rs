//! The proxied response on its way down: upstream timing, the upstream's software hidden,
//! the edge headers (HSTS, request id, rate-limit state, baseline security headers), CORS,
//! then either the gateway's own page for an upstream 5xx (`replace_upstream_errors`) or
//! compression, and last the route's response header rules.

use super::answer;
use super::ctx::Ctx;
use crate::http::edge_response::{error_body, error_name, HTML, JSON};
use http::HeaderName;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

/// A new sticky assignment is told to the client (appended: the upstream's own cookies stay)
/// — not on a 5xx, which would keep a browser on a failing colour for the cookie's lifetime,
/// nor on a protocol switch.
fn sticky_cookie(resp: &mut ResponseHeader, ctx: &Ctx) {
    let Some(choice) = ctx.upstream.choice.filter(|c| c.set_cookie) else {
        return;
    };
    let status = resp.status.as_u16();
    if status >= 500 || status == 101 {
        return;
    }
    if let Some(v) = ctx.split().and_then(|s| s.sticky_cookie(choice.index)) {
        let _ = resp.append_header(http::header::SET_COOKIE, v.clone());
    }
}

/// A `101` the client did not ask for is refused (a 502): a backend must not switch a
/// connection the client did not ask to switch. pingora-proxy only refuses a `101` whose
/// upgrade status differs between the two sides, and passes one on when neither asked.
pub fn refuse_unasked_upgrade(
    session: &Session,
    resp: &ResponseHeader,
) -> pingora_core::Result<()> {
    if resp.status == http::StatusCode::SWITCHING_PROTOCOLS && !session.is_upgrade_req() {
        return Err(pingora_core::Error::explain(
            pingora_core::ErrorType::InvalidHTTPHeader,
            "101 without an upgrade request",
        )
        .into_up());
    }
    Ok(())
}

/// `response_filter` of proxied responses.
pub fn filter(session: &mut Session, resp: &mut ResponseHeader, ctx: &mut Ctx) {
    if let Some(t) = ctx.upstream.started {
        let secs = t.elapsed().as_secs_f64();
        ctx.upstream.ms = Some(secs * 1000.0);
        if let Some(pool) = ctx.pool() {
            pool.observe_upstream(secs);
        }
    }
    edge_headers(resp, ctx);
    sticky_cookie(resp, ctx);
    ctx.acct.status = resp.status.as_u16();
    let Some(route) = ctx.route() else {
        return;
    };
    super::cors::response(session, ctx, resp);
    if route.replace_upstream_errors && resp.status.as_u16() >= 500 {
        replace_upstream_error(session, resp, ctx);
    } else if let Some(c) = &route.compress {
        if c.applies(resp) {
            crate::compress::add_vary(resp);
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
                crate::compress::start(session, resp, enc, c.level);
            }
        }
    }
    answer::route_rules(resp, ctx);
}

/// Hides upstream software, adds our headers, and the baseline security headers the upstream
/// did not set.
fn edge_headers(resp: &mut ResponseHeader, ctx: &Ctx) {
    const X_POWERED_BY: HeaderName = HeaderName::from_static("x-powered-by");
    rewrite_response_head(resp, |h| {
        h.remove(http::header::SERVER);
        h.remove(X_POWERED_BY);
        answer::common_headers(h, ctx);
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
}

/// Rewrites an upstream 5xx into the gateway's own error (route `replace_upstream_errors`):
/// same status, our JSON or HTML body, none of the upstream's body or entity headers.
fn replace_upstream_error(session: &mut Session, resp: &mut ResponseHeader, ctx: &mut Ctx) {
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
    let (body, content_type) = if answer::is_navigation(session.req_header()) {
        (answer::error_page(ctx, status), HTML)
    } else {
        (error_body(error_name(status), &ctx.request_id), JSON)
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
        ctx.acct.body_sent += body.len() as u64;
        crate::compress::replace_body(session, body);
    }
}

/// Edits an upstream response head through its plain `http` parts and puts it back without
/// a header-case map, for the reason [`super::upstream::rewrite_request_head`] gives: header
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
}
