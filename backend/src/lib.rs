//! Expense-tracker API behind the gateway: register/login issuing EdDSA JWTs, expenses CRUD,
//! JWKS, probes. SQLite by default (one file, created and migrated on start), PostgreSQL when
//! `DATABASE_URL` is a `postgres://` URL.

pub mod api;
pub mod auth;
pub mod db;
pub mod error;
pub mod keys;
pub mod observe;

use arc_swap::ArcSwap;
use std::path::PathBuf;
use std::sync::Arc;

/// Settings from the command line / environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `sqlite://…` or `postgres://…`.
    pub database_url: String,
    /// Directory of Ed25519 signing keys.
    pub keys_dir: PathBuf,
    /// `iss` of issued tokens.
    pub issuer: String,
    /// `aud` of issued tokens.
    pub audience: String,
    /// Token lifetime.
    pub token_ttl_secs: i64,
    /// Who verifies tokens.
    pub auth_mode: auth::AuthMode,
}

/// Shared handler state.
#[derive(Clone)]
pub struct AppState {
    pub db: sqlx::AnyPool,
    pub keys: Arc<ArcSwap<keys::KeyStore>>,
    pub config: Arc<Config>,
}

/// Why the backend could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error(transparent)]
    Keys(#[from] keys::KeyError),
}

/// Opens the database and keys and builds the router.
pub async fn try_build(config: Config) -> Result<axum::Router, StartError> {
    Ok(api::router(try_state(config).await?))
}

/// Opens the database and keys.
pub async fn try_state(config: Config) -> Result<AppState, StartError> {
    let (db, _engine) = db::connect(&config.database_url).await?;
    let keys = keys::KeyStore::load_or_create(&config.keys_dir, config.token_ttl_secs)?;
    Ok(AppState {
        db,
        keys: Arc::new(ArcSwap::from_pointee(keys)),
        config: Arc::new(config),
    })
}

impl AppState {
    /// Re-reads the key directory (after `backend rotate-key`); returns whether the published
    /// set changed.
    pub fn reload_keys(&self) -> Result<bool, keys::KeyError> {
        let fresh =
            keys::KeyStore::load_or_create(&self.config.keys_dir, self.config.token_ttl_secs)?;
        let changed = fresh.kids() != self.keys.load().kids();
        if changed {
            tracing::info!(kids = ?fresh.kids(), "signing keys reloaded");
            self.keys.store(Arc::new(fresh));
        }
        Ok(changed)
    }
}
