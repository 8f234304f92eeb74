//! Routing: one normalised path for every later decision (400 when it can't be made), the
//! first route matching host and path (404), the client's copies of identity headers removed,
//! then maintenance (503 unless the client is allowed through).

use super::answer::{self, Verdict};
use super::ctx::Ctx;
use crate::http::host;
use pingora_http::RequestHeader;

/// Normalises the path and matches the route.
pub fn route(req: &mut RequestHeader, ctx: &mut Ctx) -> Verdict {
    ctx.routing.path = match crate::path::normalize(req.uri.path(), ctx.rt.limits.merge_slashes) {
        Ok(p) => p.into_owned(),
        Err(e) => {
            tracing::debug!(reason = e.reason(), "refused request path");
            return Verdict::Respond(answer::error(req, ctx, 400).closing());
        }
    };
    let host = host::without_port(host::request_host(req));
    let path = ctx.routing.path.as_str();
    let Some(index) = ctx.rt.routes.iter().position(|r| r.matches(host, path)) else {
        return Verdict::Respond(answer::error(req, ctx, 404));
    };
    ctx.routing.index = Some(index);
    // Identity headers come only from the gateway: drop client copies on every request.
    for h in &ctx.rt.strip_headers {
        req.remove_header(h);
    }
    Verdict::Continue
}

/// Maintenance: the whole site or this route, unless the client is on the allow list.
pub fn maintenance(req: &RequestHeader, ctx: &Ctx) -> Verdict {
    let rt = &ctx.rt;
    let on = rt.maintenance.enabled || ctx.route().is_some_and(|r| r.maintenance);
    let allowed = ctx
        .client
        .ip
        .is_some_and(|ip| rt.maintenance.allow.iter().any(|n| n.contains(&ip)));
    if on && !allowed {
        return Verdict::Respond(answer::maintenance(req, ctx));
    }
    Verdict::Continue
}
