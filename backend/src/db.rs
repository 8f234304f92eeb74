//! Database: SQLite (default, embedded file) or PostgreSQL, through sqlx's `Any` driver so one
//! set of queries serves both. Migrations are per engine, embedded in the binary.

use sqlx::any::AnyPoolOptions;
use sqlx::AnyPool;
use sqlx::Executor;
use std::time::Duration;

/// Which engine a URL selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// Why the database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("unsupported database URL (use sqlite:// or postgres://): {0}")]
    Unsupported(String),
    #[error("cannot create directory for {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// The URL for a SQLite file path (created when missing).
pub fn sqlite_url(path: &str) -> String {
    format!("sqlite://{path}?mode=rwc")
}

fn engine(url: &str) -> Result<Engine, DbError> {
    if url.starts_with("sqlite:") {
        Ok(Engine::Sqlite)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Engine::Postgres)
    } else {
        Err(DbError::Unsupported(
            url.split(':').next().unwrap_or("").to_string(),
        ))
    }
}

/// Opens the pool and runs the engine's migrations.
pub async fn connect(url: &str) -> Result<(AnyPool, Engine), DbError> {
    sqlx::any::install_default_drivers();
    let engine = engine(url)?;
    if engine == Engine::Sqlite {
        // Create the parent directory of the file so a fresh clone starts with no setup.
        let path = url
            .trim_start_matches("sqlite://")
            .trim_start_matches("sqlite:")
            .split('?')
            .next()
            .unwrap_or("");
        if let Some(parent) = std::path::Path::new(path).parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).map_err(|source| DbError::Dir {
                    path: path.to_string(),
                    source,
                })?;
            }
        }
    }
    let mut opts = AnyPoolOptions::new()
        .max_connections(if engine == Engine::Sqlite { 4 } else { 16 })
        .acquire_timeout(Duration::from_secs(5));
    if engine == Engine::Sqlite {
        opts = opts.after_connect(|conn, _| {
            Box::pin(async move {
                // WAL lets readers proceed during a write; busy_timeout queues writers.
                conn.execute("PRAGMA journal_mode = WAL").await?;
                conn.execute("PRAGMA busy_timeout = 5000").await?;
                conn.execute("PRAGMA foreign_keys = ON").await?;
                conn.execute("PRAGMA synchronous = NORMAL").await?;
                Ok(())
            })
        });
    }
    let pool = opts.connect(url).await?;
    let mut migrator = match engine {
        Engine::Sqlite => sqlx::migrate!("./migrations/sqlite"),
        Engine::Postgres => sqlx::migrate!("./migrations/postgres"),
    };
    // Blue-green: the other colour may already have applied newer migrations (expand-only,
    // docs/kubernetes.md); an older binary restarting in the rollback window must still start
    // rather than refuse a version it does not know.
    migrator.set_ignore_missing(true);
    migrator.run(&pool).await?;
    Ok((pool, engine))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_database_migrated_by_a_newer_colour_still_opens() {
        let dir = tempfile::tempdir().expect("tmp");
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("db.sqlite").display()
        );
        let (pool, _) = connect(&url).await.expect("first open");
        // What a newer release leaves behind: a migration this binary does not ship.
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (99990101000000, 'from the future', TRUE, X'00', 0)",
        )
        .execute(&pool)
        .await
        .expect("insert");
        pool.close().await;
        connect(&url).await.expect("reopened by the older binary");
    }
}
