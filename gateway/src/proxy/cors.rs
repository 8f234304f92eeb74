//! CORS of the matched route: preflights are answered here (204, or 403 for an origin,
//! method or header not allowed) — they never need a token nor reach the backend; actual
//! responses get their CORS headers in `response_filter`.

use super::answer::{self, Verdict};
use super::ctx::Ctx;
use crate::cors::Preflight;
use crate::http::edge_response::EdgeResponse;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;

/// Answers a preflight on a route with CORS.
pub fn preflight(req: &RequestHeader, ctx: &Ctx) -> Verdict {
    let Some(cors) = ctx.route().and_then(|r| r.cors.as_ref()) else {
        return Verdict::Continue;
    };
    match crate::cors::preflight(cors, req) {
        Preflight::NotPreflight => Verdict::Continue,
        Preflight::Allowed(headers) => {
            let mut r = EdgeResponse::new(http::StatusCode::NO_CONTENT, headers.len() + 4);
            for (n, v) in headers {
                r.put(n, v);
            }
            r.put(
                http::header::CONTENT_LENGTH,
                http::HeaderValue::from_static("0"),
            );
            answer::common_headers(&mut r, ctx);
            Verdict::Respond(r)
        }
        Preflight::Refused => Verdict::Respond(answer::error(req, ctx, 403)),
    }
}

/// The CORS headers of a proxied response.
pub fn response(session: &Session, ctx: &Ctx, resp: &mut ResponseHeader) {
    if let Some(cors) = ctx.route().and_then(|r| r.cors.as_ref()) {
        let origin = session.req_header().headers.get(http::header::ORIGIN);
        crate::cors::response_filter(cors, origin, resp);
    }
}
