//! `request_filter` step of routes with `auth = "jwt"`: token → identity, or an RFC 6750
//! rejection (401 `invalid_token`, 403 `insufficient_scope`). Rejections are responses, not
//! errors.

use crate::auth::{extract_token, AuthRejection, RoutePolicy};
use crate::proxy::Ctx;
use crate::response;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora_core::Result;
use pingora_proxy::Session;

/// Returns `Ok(true)` when the request may proceed (identity set in `ctx` unless public),
/// `Ok(false)` when a rejection was written.
pub async fn request_filter(
    session: &mut Session,
    ctx: &mut Ctx,
    policy: &RoutePolicy,
) -> Result<bool> {
    let method = session.req_header().method.clone();
    if policy.is_public(&method, &ctx.path) {
        return Ok(true);
    }
    let realm = policy.provider.conf.realm.as_str();
    let token = extract_token(session.req_header(), policy.provider.conf.cookie.as_deref());
    let verdict = match token {
        Ok(t) => policy.provider.verify(t).await,
        Err(r) => Err(r),
    };
    match verdict {
        Ok(id) => {
            if let Some(scope) = policy.missing_scope(&method, &id) {
                let challenge = format!(
                    "Bearer realm=\"{realm}\", error=\"insufficient_scope\", scope=\"{scope}\""
                );
                let body = serde_json::json!({
                    "error": "insufficient_scope",
                    "error_description": format!("requires scope {scope}"),
                    "request_id": ctx.request_id,
                });
                reject(session, ctx, 403, challenge, body).await?;
                return Ok(false);
            }
            ctx.identity = Some(id);
            Ok(true)
        }
        Err(AuthRejection::Missing) => {
            // Counted like the others: a spike of tokenless calls is a broken client or a probe.
            crate::metrics::AUTH_REJECTIONS
                .with_label_values(&[policy.provider.name.as_str(), "missing"])
                .inc();
            let body = serde_json::json!({
                "error": "unauthorized",
                "error_description": "missing bearer token",
                "request_id": ctx.request_id,
            });
            reject(session, ctx, 401, format!("Bearer realm=\"{realm}\""), body).await?;
            Ok(false)
        }
        Err(r) => {
            let reason = r.as_str();
            crate::metrics::AUTH_REJECTIONS
                .with_label_values(&[policy.provider.name.as_str(), reason])
                .inc();
            let challenge = format!(
                "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{reason}\""
            );
            let body = serde_json::json!({
                "error": "invalid_token",
                "error_description": reason,
                "request_id": ctx.request_id,
            });
            reject(session, ctx, 401, challenge, body).await?;
            Ok(false)
        }
    }
}

async fn reject(
    session: &mut Session,
    ctx: &mut Ctx,
    status: u16,
    challenge: String,
    body: serde_json::Value,
) -> Result<()> {
    let value =
        HeaderValue::from_str(&challenge).unwrap_or_else(|_| HeaderValue::from_static("Bearer"));
    let extra = [(HeaderName::from_static("www-authenticate"), value)];
    // The body of a rejected request was not read: close so it cannot be taken as a request.
    let close = session
        .req_header()
        .headers
        .contains_key(http::header::CONTENT_LENGTH)
        || session
            .req_header()
            .headers
            .contains_key(http::header::TRANSFER_ENCODING);
    response::write_json(
        session,
        ctx,
        status,
        Bytes::from(body.to_string()),
        close,
        &extra,
    )
    .await
}
