//! The backend's one error type: every failure becomes a JSON response.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::collections::BTreeMap;

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Body is not the JSON we expect (syntax, content type).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// Fields failed validation: field → reason.
    #[error("validation failed")]
    Validation(BTreeMap<&'static str, String>),
    /// No or bad credentials. The same answer for unknown email and wrong password.
    #[error("unauthorized")]
    Unauthorized(&'static str),
    /// The resource does not exist for this user.
    #[error("not found")]
    NotFound,
    /// Unique constraint (e.g. email taken).
    #[error("conflict: {0}")]
    Conflict(&'static str),
    /// Anything unexpected; logged, not shown.
    #[error("internal: {0}")]
    Internal(String),
}

impl ApiError {
    /// One-field validation error.
    pub fn field(name: &'static str, reason: impl Into<String>) -> Self {
        let mut m = BTreeMap::new();
        m.insert(name, reason.into());
        ApiError::Validation(m)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(r: axum::extract::rejection::JsonRejection) -> Self {
        ApiError::BadRequest(r.body_text())
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(r: axum::extract::rejection::QueryRejection) -> Self {
        ApiError::BadRequest(r.body_text())
    }
}

impl From<axum::extract::rejection::PathRejection> for ApiError {
    fn from(_: axum::extract::rejection::PathRejection) -> Self {
        ApiError::NotFound
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match &self {
            ApiError::BadRequest(m) => (
                StatusCode::BAD_REQUEST,
                json!({"error": "bad_request", "message": m}),
            ),
            ApiError::Validation(fields) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"error": "validation_failed", "fields": fields}),
            ),
            ApiError::Unauthorized(reason) => (StatusCode::UNAUTHORIZED, json!({"error": reason})),
            ApiError::NotFound => (StatusCode::NOT_FOUND, json!({"error": "not_found"})),
            ApiError::Conflict(what) => (StatusCode::CONFLICT, json!({"error": what})),
            ApiError::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"error": "internal_error"}),
                )
            }
        };
        let mut resp = (status, axum::Json(body)).into_response();
        if matches!(self, ApiError::Unauthorized(_)) {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"api\""),
            );
        }
        resp
    }
}
