//! Rate limits of the matched route: the policies keyed by IP or header run before any token
//! work, the ones keyed by the verified subject right after auth. A 429 carries `Retry-After`
//! and, even with the rate-limit headers off, which policy refused.

use super::answer::{self, Verdict};
use super::ctx::Ctx;
use crate::rate_limit::{Decision, LimitKey, RatePolicy, RouteRule};
use crate::route::Route;
use http::Method;
use pingora_http::RequestHeader;

/// Which of a route's rules a step applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Rules keyed by IP or header (before auth: cheapest first).
    BeforeAuth,
    /// Rules keyed by the verified subject.
    Subject,
}

/// The rules of `route` that `stage` applies to `method path`, in order.
pub fn rules<'a>(
    route: &'a Route,
    method: &'a Method,
    path: &'a str,
    stage: Stage,
) -> impl Iterator<Item = &'a RouteRule> + 'a {
    let subject_stage = stage == Stage::Subject;
    route.rate_rules.iter().filter(move |rule| {
        rule.policy.needs_subject() == subject_stage && rule.applies(method, path)
    })
}

/// The key `policy` counts this request under (the verified subject, once auth ran).
pub fn key(policy: &RatePolicy, req: &RequestHeader, ctx: &Ctx) -> LimitKey {
    let subject = ctx.identity.as_ref().and_then(|i| i.sub.as_deref());
    policy.key(ctx.client.ip, ctx.rt.ipv6_prefix, subject, req)
}

/// Applies the route's rules of `stage`; the first policy over its quota answers 429.
pub async fn check(req: &RequestHeader, ctx: &mut Ctx, stage: Stage) -> Verdict {
    let rt = ctx.rt.clone();
    let Some(route) = ctx.routing.index.map(|i| &rt.routes[i]) else {
        return Verdict::Continue;
    };
    for rule in rules(route, &req.method, &ctx.routing.path, stage) {
        let p = &rule.policy;
        let key = key(p, req, ctx);
        let decisions = &crate::metrics::RATE_DECISIONS;
        match p.check_shared(&key).await {
            Decision::Allowed { remaining } => {
                decisions
                    .with_label_values(&[p.name.as_str(), "allowed"])
                    .inc();
                // Report the tightest policy.
                if ctx
                    .rate
                    .tightest
                    .as_ref()
                    .is_none_or(|(_, r)| remaining < *r)
                {
                    ctx.rate.tightest = Some((p.clone(), remaining));
                }
            }
            Decision::Limited { retry_after } if p.conf.dry_run => {
                decisions
                    .with_label_values(&[p.name.as_str(), "dry_run_limited"])
                    .inc();
                tracing::info!(policy = %p.name, retry_after, "rate limit exceeded (dry run, not enforced)");
            }
            Decision::Limited { retry_after } => {
                decisions
                    .with_label_values(&[p.name.as_str(), "limited"])
                    .inc();
                ctx.rate.tightest = Some((p.clone(), 0));
                ctx.rate.reset_override = Some(retry_after);
                let body = serde_json::json!({
                    "error": "rate_limited",
                    "retry_after": retry_after,
                    "request_id": ctx.request_id,
                });
                let mut r = answer::json(ctx, 429, bytes::Bytes::from(body.to_string()));
                r.put(
                    http::header::RETRY_AFTER,
                    http::HeaderValue::from(retry_after),
                );
                if !rt.rate_limit_headers.ratelimit {
                    // Still tell the client which policy and when, even with headers off.
                    r.put(
                        http::HeaderName::from_static("ratelimit-policy"),
                        p.policy_header(),
                    );
                }
                return Verdict::Respond(r);
            }
        }
    }
    Verdict::Continue
}
