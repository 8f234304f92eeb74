//! JWT of routes with `auth = "jwt"`: token → identity, or an RFC 6750 rejection (401
//! `invalid_token`, 403 `insufficient_scope`) with its `WWW-Authenticate` challenge.
//! Rejections are answers, not errors; each is counted by provider and reason.

use super::answer::{self, Verdict};
use super::ctx::Ctx;
use crate::auth::{extract_token, AuthRejection};
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora_proxy::Session;

/// Verifies the request's token against the route's policy; sets `ctx.identity`.
pub async fn check(session: &Session, ctx: &mut Ctx) -> Verdict {
    let rt = ctx.rt.clone();
    let Some(policy) = ctx.routing.index.and_then(|i| rt.routes[i].auth.as_ref()) else {
        return Verdict::Continue;
    };
    let req = session.req_header();
    if policy.is_public(&req.method, &ctx.routing.path) {
        return Verdict::Continue;
    }
    let provider = &policy.provider;
    let realm = provider.conf.realm.as_str();
    let verdict = match extract_token(req, provider.conf.cookie.as_deref()) {
        Ok(t) => provider.verify(t).await,
        Err(r) => Err(r),
    };
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
        Err(AuthRejection::Missing) => {
            // Counted like the others: a spike of tokenless calls is a broken client or a probe.
            crate::metrics::AUTH_REJECTIONS
                .with_label_values(&[provider.name.as_str(), "missing"])
                .inc();
            (
                401,
                format!("Bearer realm=\"{realm}\""),
                serde_json::json!({
                    "error": "unauthorized",
                    "error_description": "missing bearer token",
                    "request_id": ctx.request_id,
                }),
            )
        }
        Err(r) => {
            let reason = r.as_str();
            crate::metrics::AUTH_REJECTIONS
                .with_label_values(&[provider.name.as_str(), reason])
                .inc();
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
