//! Rate limits of the matched route: the policies keyed by IP or header run before any token
//! work, the ones keyed by the verified subject right after auth. A 429 carries `Retry-After`
//! and, even with the rate-limit headers off, which policy refused.

use super::answer::{self, Verdict};
use super::ctx::Ctx;
use crate::rate_limit::Decision;
use pingora_proxy::Session;

/// Which of a route's rules a step applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Rules keyed by IP or header (before auth: cheapest first).
    BeforeAuth,
    /// Rules keyed by the verified subject.
    Subject,
}

/// Applies the route's rules of `stage`; the first policy over its quota answers 429.
pub async fn check(session: &Session, ctx: &mut Ctx, stage: Stage) -> Verdict {
    let rt = ctx.rt.clone();
    let Some(route) = ctx.routing.index.map(|i| &rt.routes[i]) else {
        return Verdict::Continue;
    };
    let subject_stage = stage == Stage::Subject;
    if route.rate_rules.is_empty()
        || (subject_stage && !route.rate_rules.iter().any(|r| r.policy.needs_subject()))
    {
        return Verdict::Continue;
    }
    let req = session.req_header();
    let subject = ctx.identity.as_ref().and_then(|i| i.sub.clone());
    for rule in &route.rate_rules {
        if rule.policy.needs_subject() != subject_stage
            || !rule.applies(&req.method, &ctx.routing.path)
        {
            continue;
        }
        let p = &rule.policy;
        let key = p.key(ctx.client.ip, rt.ipv6_prefix, subject.as_deref(), req);
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
