//! JWT of routes with `auth = "jwt"`: token → identity, or an RFC 6750 rejection (401
//! `invalid_token`, 403 `insufficient_scope`) with its `WWW-Authenticate` challenge.
//! Rejections are answers, not errors; each is counted by provider and reason.

use super::answer::{self, Verdict};
use super::ctx::Ctx;
use crate::auth::{extract_token, AuthRejection, Identity, RoutePolicy};
use crate::runtime::Runtime;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora_http::RequestHeader;
use std::sync::Arc;

/// Verifies the request's token against the route's policy; sets `ctx.identity`.
pub async fn check(req: &RequestHeader, ctx: &mut Ctx) -> Verdict {
    let rt = ctx.rt.clone();
    let Some(policy) = required(req, ctx, &rt) else {
        return Verdict::Continue;
    };
    let provider = &policy.provider;
    let verdict = match extract_token(req, provider.conf.cookie.as_deref()) {
        Ok(t) => provider.verify(t).await,
        Err(r) => Err(r),
    };
    if let Err(r) = &verdict {
        // Counted by reason: a spike of tokenless calls is a broken client or a probe.
        let reason = match r {
            AuthRejection::Missing => "missing",
            r => r.as_str(),
        };
        crate::metrics::AUTH_REJECTIONS
            .with_label_values(&[provider.name.as_str(), reason])
            .inc();
    }
    settle(req, ctx, policy, verdict)
}

/// The policy the request must satisfy: `None` when the route has no auth or the request
/// is public.
pub fn required<'a>(req: &RequestHeader, ctx: &Ctx, rt: &'a Runtime) -> Option<&'a RoutePolicy> {
    let policy = ctx.routing.index.and_then(|i| rt.routes[i].auth.as_ref())?;
    (!policy.is_public(&req.method, &ctx.routing.path)).then_some(policy)
}

/// The answer to a verification verdict: the identity set (or 403 for a missing scope), or
/// the 401 with its challenge. Plain inputs, so the dry run answers as the proxy does.
pub fn settle(
    req: &RequestHeader,
    ctx: &mut Ctx,
    policy: &RoutePolicy,
    verdict: Result<Arc<Identity>, AuthRejection>,
) -> Verdict {
    let realm = policy.provider.conf.realm.as_str();
    let (status, challenge, body) = match verdict {
        Ok(id) => match policy.missing_scope(&req.method, &id) {
            None => {
                ctx.identity = Some(id);
                return Verdict::Continue;
            }
            Some(scope) => (
                403,
                format!(
                    "Bearer realm=\"{realm}\", error=\"insufficient_scope\", scope=\"{scope}\""
                ),
                serde_json::json!({
                    "error": "insufficient_scope",
                    "error_description": format!("requires scope {scope}"),
                    "request_id": ctx.request_id,
                }),
            ),
        },
        Err(AuthRejection::Missing) => (
            401,
            format!("Bearer realm=\"{realm}\""),
            serde_json::json!({
                "error": "unauthorized",
                "error_description": "missing bearer token",
                "request_id": ctx.request_id,
            }),
        ),
        Err(r) => {
            let reason = r.as_str();
            (
                401,
                format!(
                    "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{reason}\""
                ),
                serde_json::json!({
                    "error": "invalid_token",
                    "error_description": reason,
                    "request_id": ctx.request_id,
                }),
            )
        }
    };
    let mut r = answer::json(ctx, status, Bytes::from(body.to_string()));
    let value =
        HeaderValue::from_str(&challenge).unwrap_or_else(|_| HeaderValue::from_static("Bearer"));
    r.put(HeaderName::from_static("www-authenticate"), value);
    // The body of a rejected request was not read: close so it cannot be taken as a request.
    r.close = req.headers.contains_key(http::header::CONTENT_LENGTH)
        || req.headers.contains_key(http::header::TRANSFER_ENCODING);
    Verdict::Respond(r)
}
