//! Expense-tracker API behind the gateway: register/login issuing EdDSA JWTs, expenses CRUD,
//! JWKS, probes. SQLite by default (one file, created and migrated on start), PostgreSQL when
//! `DATABASE_URL` is a `postgres://` URL.

pub mod api;
pub mod auth;
pub mod db;
pub mod error;
pub mod identity;
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
    /// Key directory use: read-only (a mounted Secret) and the activation delay of new keys.
    pub key_policy: keys::KeyPolicy,
    /// `AUTH_MODE=gateway`: the file of shared keys the gateway signs identity headers with
    /// (one per line; any verifies, so keys rotate without downtime). Required in that mode.
    pub identity_key_file: Option<PathBuf>,
}

/// Shared handler state.
#[derive(Clone)]
pub struct AppState {
    pub db: sqlx::AnyPool,
    pub keys: Arc<ArcSwap<keys::KeyStore>>,
    pub config: Arc<Config>,
    /// Verifies the gateway's identity signatures (`AUTH_MODE=gateway`).
    pub identity: Arc<identity::Verifier>,
}

/// Why the backend could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error(transparent)]
    Keys(#[from] keys::KeyError),
    #[error(transparent)]
    Identity(#[from] identity::IdentityKeyError),
}

/// Opens the database and keys and builds the router.
pub async fn try_build(config: Config) -> Result<axum::Router, StartError> {
    Ok(api::router(try_state(config).await?))
}

/// Opens the database and keys.
pub async fn try_state(config: Config) -> Result<AppState, StartError> {
    let (db, _engine) = db::connect(&config.database_url).await?;
    let keys = keys::KeyStore::load(&config.keys_dir, &config.key_policy)?;
    let identity = match (&config.auth_mode, &config.identity_key_file) {
        (auth::AuthMode::Gateway, None) => return Err(identity::IdentityKeyError::Missing.into()),
        (auth::AuthMode::Gateway, Some(f)) => identity::Verifier::from_file(f)?,
        (auth::AuthMode::Token, _) => identity::Verifier::none(),
    };
    Ok(AppState {
        db,
        keys: Arc::new(ArcSwap::from_pointee(keys)),
        config: Arc::new(config),
        identity: Arc::new(identity),
    })
}

impl AppState {
    /// Re-reads the key directory (after `backend rotate-key`); returns whether the published
    /// set changed.
    pub fn reload_keys(&self) -> Result<bool, keys::KeyError> {
        if let Some(f) = &self.config.identity_key_file {
            if let Err(e) = self.identity.reload(f) {
                tracing::warn!(error = %e, "identity keys not reloaded; keeping the current ones");
            }
        }
        let fresh = keys::KeyStore::load(&self.config.keys_dir, &self.config.key_policy)?;
        let current = self.keys.load();
        let changed =
            fresh.kids() != current.kids() || fresh.current().kid != current.current().kid;
        if changed {
            tracing::info!(kids = ?fresh.kids(), "signing keys reloaded");
            self.keys.store(Arc::new(fresh));
        }
        Ok(changed)
    }
}
