//! Passwords (argon2id), access tokens (EdDSA JWT) and the authenticated-user extractor.
//!
//! The extractor accepts either a bearer token verified here (the default, "token" mode) or
//! the identity headers set by the gateway after it verified the token ("gateway" mode, where
//! the gateway strips any client-sent copy).

use self::once_cell_free::dummy_hash;
use crate::error::ApiError;
use crate::AppState;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, Header, Validation};
use serde::{Deserialize, Serialize};

/// Claims of an access token.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub exp: i64,
    pub iat: i64,
    pub scope: String,
}

/// How the backend learns who is calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// Verify `Authorization: Bearer` here.
    Token,
    /// Trust `X-Auth-Subject` from the gateway (which verified the token).
    Gateway,
}

/// Hashes a password with argon2id and a random salt (off the async threads).
pub async fn hash_password(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| ApiError::Internal(e.to_string()))
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
}

/// Verifies a password. With `hash = None` (unknown email) a dummy hash is verified anyway so
/// both failures take the same time; argon2's comparison itself is constant-time.
pub async fn verify_password(password: String, hash: Option<String>) -> Result<bool, ApiError> {
    tokio::task::spawn_blocking(move || {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| dummy_hash().to_string());
        let ok = PasswordHash::new(&hash)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false);
        known && ok
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))
}

mod once_cell_free {
    use std::sync::OnceLock;

    /// A valid argon2 hash of a random password, computed once.
    pub fn dummy_hash() -> &'static str {
        static H: OnceLock<String> = OnceLock::new();
        H.get_or_init(|| {
            use argon2::password_hash::{PasswordHasher, SaltString};
            let salt = SaltString::generate(&mut rand::rngs::OsRng);
            argon2::Argon2::default()
                .hash_password(&rand::random::<[u8; 16]>(), &salt)
                .map(|h| h.to_string())
                .unwrap_or_default()
        })
    }
}

/// Issues an access token for user `id`.
pub fn issue_token(state: &AppState, user_id: i64) -> Result<String, ApiError> {
    let keys = state.keys.load();
    let c = &state.config;
    sign(
        keys.current(),
        &c.issuer,
        &c.audience,
        c.token_ttl_secs,
        user_id,
    )
    .map_err(|e| ApiError::Internal(e.to_string()))
}

/// Signs an access token for `user_id` with `key` (EdDSA, `kid` in the header).
pub fn sign(
    key: &crate::keys::Key,
    issuer: &str,
    audience: &str,
    ttl_secs: i64,
    user_id: i64,
) -> jsonwebtoken::errors::Result<String> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = Claims {
        iss: issuer.to_string(),
        aud: audience.to_string(),
        sub: user_id.to_string(),
        iat: now,
        exp: now + ttl_secs,
        scope: "expenses:read expenses:write".into(),
    };
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, &claims, &key.encoding)
}

/// Verifies a bearer token and returns its subject.
pub fn verify_token(state: &AppState, token: &str) -> Result<i64, ApiError> {
    let invalid = ApiError::Unauthorized("invalid_token");
    let header =
        jsonwebtoken::decode_header(token).map_err(|_| ApiError::Unauthorized("invalid_token"))?;
    if header.alg != Algorithm::EdDSA {
        return Err(invalid);
    }
    let keys = state.keys.load();
    let key = header
        .kid
        .as_deref()
        .and_then(|kid| keys.get(kid))
        .ok_or(ApiError::Unauthorized("invalid_token"))?;
    let mut v = Validation::new(Algorithm::EdDSA);
    v.set_issuer(&[&state.config.issuer]);
    v.set_audience(&[&state.config.audience]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    v.leeway = 30;
    let data = jsonwebtoken::decode::<Claims>(token, &key.decoding, &v).map_err(|_| invalid)?;
    data.claims
        .sub
        .parse()
        .map_err(|_| ApiError::Unauthorized("invalid_token"))
}

/// The authenticated user's id.
pub struct AuthUser(pub i64);

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match state.config.auth_mode {
            AuthMode::Gateway => {
                // Only an identity the gateway signed (crate::identity); never a bare header.
                let now = time::OffsetDateTime::now_utc().unix_timestamp();
                match state.identity.verify(parts, now) {
                    Ok(subject) => subject
                        .parse()
                        .map(AuthUser)
                        .map_err(|_| ApiError::Unauthorized("invalid_identity")),
                    Err(crate::identity::Refused::Missing)
                        if !parts.headers.contains_key("x-auth-subject") =>
                    {
                        Err(ApiError::Unauthorized("missing_token"))
                    }
                    Err(why) => {
                        tracing::warn!(reason = %why, "identity headers refused");
                        Err(ApiError::Unauthorized("invalid_identity"))
                    }
                }
            }
            AuthMode::Token => {
                let mut values = parts
                    .headers
                    .get_all(axum::http::header::AUTHORIZATION)
                    .iter();
                let (Some(v), None) = (values.next(), values.next()) else {
                    return Err(ApiError::Unauthorized("missing_token"));
                };
                let token = v
                    .to_str()
                    .ok()
                    .and_then(|s| s.strip_prefix("Bearer "))
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .ok_or(ApiError::Unauthorized("missing_token"))?;
                verify_token(state, token).map(AuthUser)
            }
        }
    }
}
