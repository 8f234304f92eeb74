//! HTTP API: auth, expenses CRUD, JWKS, probes.

use crate::auth::{self, AuthUser};
use crate::error::ApiError;
use crate::AppState;
use axum::extract::{FromRequest, Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sqlx::Row;
use std::collections::BTreeMap;

/// `Json` whose rejections are our JSON errors.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// The router with every route, `/metrics` included.
pub fn router(state: AppState) -> Router {
    routes(true).layer_and_state(state)
}

/// The API without `/metrics` (served on its own listener, `BACKEND_METRICS_LISTEN`, so a
/// network policy can open metrics to monitoring without opening the API).
pub fn api_router(state: AppState) -> Router {
    routes(false).layer_and_state(state)
}

/// Only `/metrics`.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(crate::observe::metrics))
        .fallback(|| async { ApiError::NotFound })
        .with_state(state)
}

trait Finish {
    fn layer_and_state(self, state: AppState) -> Router;
}

impl Finish for Router<AppState> {
    fn layer_and_state(self, state: AppState) -> Router {
        self.fallback(|| async { ApiError::NotFound })
            .layer(axum::middleware::from_fn(crate::observe::track))
            .with_state(state)
    }
}

fn routes(with_metrics: bool) -> Router<AppState> {
    let r = Router::new()
        .route("/api/auth/register", post(register))
        .route("/api/auth/login", post(login))
        .route("/api/me", get(me))
        .route("/api/expenses", get(list_expenses).post(create_expense))
        .route(
            "/api/expenses/{id}",
            get(get_expense).put(update_expense).delete(delete_expense),
        )
        .route("/.well-known/jwks.json", get(jwks))
        .route("/healthz", get(healthz))
        .route("/api/healthz", get(healthz))
        .route("/readyz", get(readyz));
    if with_metrics {
        r.route("/metrics", get(crate::observe::metrics))
    } else {
        r
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn obj(v: Value) -> Result<Map<String, Value>, ApiError> {
    match v {
        Value::Object(m) => Ok(m),
        _ => Err(ApiError::BadRequest("expected a JSON object".into())),
    }
}

fn string_field(
    m: &Map<String, Value>,
    name: &'static str,
    errors: &mut BTreeMap<&'static str, String>,
) -> Option<String> {
    match m.get(name) {
        Some(Value::String(s)) => Some(s.clone()),
        None | Some(Value::Null) => {
            errors.insert(name, "is required".into());
            None
        }
        Some(_) => {
            errors.insert(name, "must be a string".into());
            None
        }
    }
}

fn credentials(v: Value) -> Result<(String, String), ApiError> {
    let m = obj(v)?;
    let mut errors = BTreeMap::new();
    let email = string_field(&m, "email", &mut errors).map(|e| e.trim().to_ascii_lowercase());
    let password = string_field(&m, "password", &mut errors);
    if let Some(e) = &email {
        let valid = e.len() <= 254
            && e.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty()
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
            })
            && !e.chars().any(|c| c.is_whitespace() || c.is_control());
        if !valid {
            errors.insert("email", "must be a valid email address".into());
        }
    }
    if let Some(p) = &password {
        let n = p.chars().count();
        if !(8..=128).contains(&n) {
            errors.insert("password", "must be 8 to 128 characters".into());
        }
    }
    match (email, password) {
        (Some(e), Some(p)) if errors.is_empty() => Ok((e, p)),
        _ => Err(ApiError::Validation(errors)),
    }
}

async fn register(
    State(st): State<AppState>,
    ApiJson(body): ApiJson<Value>,
) -> Result<impl IntoResponse, ApiError> {
    let (email, password) = credentials(body)?;
    let hash = auth::hash_password(password).await?;
    let res = sqlx::query(
        "INSERT INTO users (email, password_hash, created_at) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(&email)
    .bind(&hash)
    .bind(now())
    .fetch_one(&st.db)
    .await;
    match res {
        Ok(row) => {
            let id: i64 = row.try_get("id")?;
            Ok((StatusCode::CREATED, Json(json!({"id": id, "email": email}))))
        }
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            Err(ApiError::Conflict("email_taken"))
        }
        Err(e) => Err(e.into()),
    }
}

async fn login(
    State(st): State<AppState>,
    ApiJson(body): ApiJson<Value>,
) -> Result<impl IntoResponse, ApiError> {
    let m = obj(body)?;
    let mut errors = BTreeMap::new();
    let email = string_field(&m, "email", &mut errors).map(|e| e.trim().to_ascii_lowercase());
    let password = string_field(&m, "password", &mut errors);
    let (Some(email), Some(password)) = (email, password) else {
        return Err(ApiError::Validation(errors));
    };
    let row = sqlx::query("SELECT id, password_hash FROM users WHERE email = $1")
        .bind(&email)
        .fetch_optional(&st.db)
        .await?;
    let (id, hash) = match row {
        Some(r) => (
            Some(r.try_get::<i64, _>("id")?),
            Some(r.try_get::<String, _>("password_hash")?),
        ),
        None => (None, None),
    };
    if !auth::verify_password(password, hash).await? {
        return Err(ApiError::Unauthorized("invalid_credentials"));
    }
    let id = id.ok_or(ApiError::Unauthorized("invalid_credentials"))?;
    let token = auth::issue_token(&st, id)?;
    Ok(Json(json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": st.config.token_ttl_secs,
    })))
}

async fn me(
    State(st): State<AppState>,
    AuthUser(uid): AuthUser,
) -> Result<impl IntoResponse, ApiError> {
    let row = sqlx::query("SELECT id, email, created_at FROM users WHERE id = $1")
        .bind(uid)
        .fetch_optional(&st.db)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(json!({
        "id": row.try_get::<i64, _>("id")?,
        "email": row.try_get::<String, _>("email")?,
        "created_at": row.try_get::<i64, _>("created_at")?,
    })))
}

/// An expense as returned by the API.
#[derive(Debug, Serialize)]
pub struct Expense {
    pub id: i64,
    pub amount_cents: i64,
    pub currency: String,
    pub category: String,
    pub note: String,
    pub date: String,
    pub created_at: i64,
    pub updated_at: i64,
}

fn expense_from(row: &sqlx::any::AnyRow) -> Result<Expense, ApiError> {
    Ok(Expense {
        id: row.try_get("id")?,
        amount_cents: row.try_get("amount_cents")?,
        currency: row.try_get("currency")?,
        category: row.try_get("category")?,
        note: row.try_get("note")?,
        date: row.try_get("spent_on")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// A validated expense body.
#[derive(Debug, PartialEq)]
pub struct ExpenseInput {
    pub amount_cents: i64,
    pub currency: String,
    pub category: String,
    pub note: String,
    pub date: String,
}

/// Validates an expense body, naming every bad field.
pub fn validate_expense(v: Value) -> Result<ExpenseInput, ApiError> {
    let m = obj(v)?;
    let mut errors = BTreeMap::new();
    for k in m.keys() {
        if !["amount_cents", "currency", "category", "note", "date"].contains(&k.as_str()) {
            // Unknown fields are refused so a typo ("ammount_cents") is not silently ignored.
            errors.insert(
                "body",
                format!("unknown field `{}`", k.chars().take(64).collect::<String>()),
            );
        }
    }
    let amount = match m.get("amount_cents") {
        Some(Value::Number(n)) => match n.as_i64() {
            Some(a) if a > 0 && a <= 1_000_000_000_000 => Some(a),
            Some(_) => {
                errors.insert("amount_cents", "must be between 1 and 1000000000000".into());
                None
            }
            None => {
                errors.insert("amount_cents", "must be an integer number of cents".into());
                None
            }
        },
        None | Some(Value::Null) => {
            errors.insert("amount_cents", "is required".into());
            None
        }
        Some(_) => {
            errors.insert("amount_cents", "must be an integer number of cents".into());
            None
        }
    };
    let currency = string_field(&m, "currency", &mut errors);
    if let Some(c) = &currency {
        if c.len() != 3 || !c.bytes().all(|b| b.is_ascii_uppercase()) {
            errors.insert(
                "currency",
                "must be a 3-letter ISO 4217 code like EUR".into(),
            );
        }
    }
    let category = string_field(&m, "category", &mut errors).map(|c| c.trim().to_string());
    if let Some(c) = &category {
        let n = c.chars().count();
        if n == 0 || n > 64 || c.chars().any(char::is_control) {
            errors.insert("category", "must be 1 to 64 printable characters".into());
        }
    }
    let note = match m.get("note") {
        None | Some(Value::Null) => Some(String::new()),
        Some(Value::String(s)) if s.chars().count() <= 1000 => Some(s.clone()),
        Some(Value::String(_)) => {
            errors.insert("note", "must be at most 1000 characters".into());
            None
        }
        Some(_) => {
            errors.insert("note", "must be a string".into());
            None
        }
    };
    let date = string_field(&m, "date", &mut errors);
    if let Some(d) = &date {
        let fmt = time::macros::format_description!("[year]-[month]-[day]");
        if d.len() != 10 || time::Date::parse(d, &fmt).is_err() {
            errors.insert("date", "must be a calendar date YYYY-MM-DD".into());
        }
    }
    match (amount, currency, category, note, date) {
        (Some(amount_cents), Some(currency), Some(category), Some(note), Some(date))
            if errors.is_empty() =>
        {
            Ok(ExpenseInput {
                amount_cents,
                currency,
                category,
                note,
                date,
            })
        }
        _ => Err(ApiError::Validation(errors)),
    }
}

/// Pagination query.
#[derive(Debug, Deserialize)]
pub struct Page {
    limit: Option<i64>,
    offset: Option<i64>,
}

async fn list_expenses(
    State(st): State<AppState>,
    AuthUser(uid): AuthUser,
    q: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Query(page) = q?;
    let limit = page.limit.unwrap_or(20);
    let offset = page.offset.unwrap_or(0);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::field("limit", "must be between 1 and 100"));
    }
    if offset < 0 {
        return Err(ApiError::field("offset", "must be 0 or more"));
    }
    let rows = sqlx::query(
        "SELECT id, amount_cents, currency, category, note, spent_on, created_at, updated_at \
         FROM expenses WHERE user_id = $1 ORDER BY spent_on DESC, id DESC LIMIT $2 OFFSET $3",
    )
    .bind(uid)
    .bind(limit)
    .bind(offset)
    .fetch_all(&st.db)
    .await?;
    let total: i64 = sqlx::query("SELECT COUNT(*) AS n FROM expenses WHERE user_id = $1")
        .bind(uid)
        .fetch_one(&st.db)
        .await?
        .try_get("n")?;
    let items = rows
        .iter()
        .map(expense_from)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(
        json!({"items": items, "total": total, "limit": limit, "offset": offset}),
    ))
}

async fn create_expense(
    State(st): State<AppState>,
    AuthUser(uid): AuthUser,
    ApiJson(body): ApiJson<Value>,
) -> Result<impl IntoResponse, ApiError> {
    let e = validate_expense(body)?;
    let t = now();
    let row = sqlx::query(
        "INSERT INTO expenses (user_id, amount_cents, currency, category, note, spent_on, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         RETURNING id, amount_cents, currency, category, note, spent_on, created_at, updated_at",
    )
    .bind(uid)
    .bind(e.amount_cents)
    .bind(&e.currency)
    .bind(&e.category)
    .bind(&e.note)
    .bind(&e.date)
    .bind(t)
    .bind(t)
    .fetch_one(&st.db)
    .await?;
    Ok((StatusCode::CREATED, Json(expense_from(&row)?)))
}

async fn get_expense(
    State(st): State<AppState>,
    AuthUser(uid): AuthUser,
    id: Result<Path<i64>, axum::extract::rejection::PathRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Path(id) = id?;
    let row = sqlx::query(
        "SELECT id, amount_cents, currency, category, note, spent_on, created_at, updated_at \
         FROM expenses WHERE id = $1 AND user_id = $2",
    )
    .bind(id)
    .bind(uid)
    .fetch_optional(&st.db)
    .await?
    .ok_or(ApiError::NotFound)?;
    Ok(Json(expense_from(&row)?))
}

async fn update_expense(
    State(st): State<AppState>,
    AuthUser(uid): AuthUser,
    id: Result<Path<i64>, axum::extract::rejection::PathRejection>,
    ApiJson(body): ApiJson<Value>,
) -> Result<impl IntoResponse, ApiError> {
    let Path(id) = id?;
    let e = validate_expense(body)?;
    let row = sqlx::query(
        "UPDATE expenses SET amount_cents = $1, currency = $2, category = $3, note = $4, spent_on = $5, updated_at = $6 \
         WHERE id = $7 AND user_id = $8 \
         RETURNING id, amount_cents, currency, category, note, spent_on, created_at, updated_at",
    )
    .bind(e.amount_cents)
    .bind(&e.currency)
    .bind(&e.category)
    .bind(&e.note)
    .bind(&e.date)
    .bind(now())
    .bind(id)
    .bind(uid)
    .fetch_optional(&st.db)
    .await?
    .ok_or(ApiError::NotFound)?;
    Ok(Json(expense_from(&row)?))
}

async fn delete_expense(
    State(st): State<AppState>,
    AuthUser(uid): AuthUser,
    id: Result<Path<i64>, axum::extract::rejection::PathRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Path(id) = id?;
    let res = sqlx::query("DELETE FROM expenses WHERE id = $1 AND user_id = $2")
        .bind(id)
        .bind(uid)
        .execute(&st.db)
        .await?;
    if res.rows_affected() == 0 {
        return Err(ApiError::NotFound);
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn jwks(State(st): State<AppState>) -> impl IntoResponse {
    (
        [("Cache-Control", "public, max-age=60")],
        Json(st.keys.load().jwks()),
    )
}

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(st): State<AppState>) -> impl IntoResponse {
    match sqlx::query("SELECT 1").execute(&st.db).await {
        Ok(_) => (StatusCode::OK, Json(json!({"status": "ready"}))),
        Err(e) => {
            tracing::warn!(error = %e, "readiness: database unreachable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "not_ready", "reason": "database unreachable"})),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expense_validation_names_every_bad_field() {
        let err = validate_expense(
            json!({"amount_cents": -1, "currency": "eur", "category": "", "date": "2024-02-30"}),
        )
        .expect_err("invalid");
        let ApiError::Validation(f) = err else {
            panic!("expected validation error");
        };
        assert_eq!(
            f.keys().copied().collect::<Vec<_>>(),
            vec!["amount_cents", "category", "currency", "date"]
        );
        let ok = validate_expense(json!({"amount_cents": 1250, "currency": "EUR", "category": "food", "date": "2024-02-29"}))
            .expect("valid");
        assert_eq!(ok.note, "");
        assert!(validate_expense(
            json!({"amount_cents": 1.5, "currency": "EUR", "category": "x", "date": "2024-01-01"})
        )
        .is_err());
        assert!(validate_expense(json!([1])).is_err());
    }
}
