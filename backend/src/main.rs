//! `backend` command line: `serve` (default) and `rotate-key`.

use backend::auth::AuthMode;
use clap::{Parser, Subcommand};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "backend", version, about = "Expense-tracker API")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(clap::Args, Clone)]
struct ServeArgs {
    /// Listen address.
    #[arg(long, env = "BACKEND_LISTEN", default_value = "127.0.0.1:8000")]
    listen: String,
    /// SQLite file (used unless DATABASE_URL is set).
    #[arg(long, env = "BACKEND_DB", default_value = "data/backend.db")]
    db: String,
    /// Full database URL (`sqlite://…` or `postgres://…`); overrides --db.
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    /// Directory of Ed25519 signing keys (the first is created when empty).
    #[arg(long, env = "BACKEND_KEYS_DIR", default_value = "data/keys")]
    keys_dir: PathBuf,
    /// Token issuer (`iss`).
    #[arg(long, env = "JWT_ISSUER", default_value = "https://localhost:8443")]
    issuer: String,
    /// Token audience (`aud`).
    #[arg(long, env = "JWT_AUDIENCE", default_value = "expenses-api")]
    audience: String,
    /// Token lifetime in seconds.
    #[arg(long, env = "TOKEN_TTL_SECS", default_value_t = 900)]
    token_ttl_secs: i64,
    /// Who verifies bearer tokens: this service, or the gateway (trusting X-Auth-Subject).
    #[arg(long, env = "AUTH_MODE", value_enum, default_value = "token")]
    auth_mode: AuthMode,
    /// Seconds between rescans of the key directory (picks up `rotate-key`); 0 = never.
    #[arg(long, env = "KEYS_RELOAD_SECS", default_value_t = 10)]
    keys_reload_secs: u64,
}

#[derive(Subcommand)]
enum Command {
    /// Add a new signing key; new tokens use it, the previous one stays in the JWKS.
    RotateKey,
    /// Print COUNT valid access tokens, one per line, for users FIRST.. (load tests: a
    /// verified-token cache-miss storm needs every token distinct).
    MintTokens {
        #[arg(long, default_value_t = 1)]
        count: u32,
        #[arg(long, default_value_t = 1)]
        first: i64,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .init();
    let cli = Cli::parse();
    let a = cli.serve;
    if let Some(Command::MintTokens { count, first }) = cli.command {
        return mint_tokens(&a, count, first);
    }
    if let Some(Command::RotateKey) = cli.command {
        return match backend::keys::create_key(&a.keys_dir) {
            Ok(p) => {
                println!("new signing key {}", p.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("rotate-key: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let config = backend::Config {
        database_url: a
            .database_url
            .unwrap_or_else(|| backend::db::sqlite_url(&a.db)),
        keys_dir: a.keys_dir,
        issuer: a.issuer,
        audience: a.audience,
        token_ttl_secs: a.token_ttl_secs,
        auth_mode: a.auth_mode,
    };
    if let Err(e) = serve(config, &a.listen, a.keys_reload_secs).await {
        eprintln!("backend: {e:#}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn mint_tokens(a: &ServeArgs, count: u32, first: i64) -> ExitCode {
    let keys = match backend::keys::KeyStore::load_or_create(&a.keys_dir, a.token_ttl_secs) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("mint-tokens: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for user in first..first + i64::from(count) {
        let token = backend::auth::sign(
            keys.current(),
            &a.issuer,
            &a.audience,
            a.token_ttl_secs,
            user,
        );
        let written = match token {
            Ok(t) => writeln!(out, "{t}"),
            Err(e) => {
                eprintln!("mint-tokens: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Err(e) = written {
            eprintln!("mint-tokens: {e}");
            return ExitCode::FAILURE;
        }
    }
    if let Err(e) = out.flush() {
        eprintln!("mint-tokens: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

async fn serve(config: backend::Config, listen: &str, reload_secs: u64) -> anyhow::Result<()> {
    let state = backend::try_state(config).await?;
    if reload_secs > 0 {
        let st = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(reload_secs));
            loop {
                tick.tick().await;
                if let Err(e) = st.reload_keys() {
                    tracing::warn!(error = %e, "key reload failed; keeping current keys");
                }
            }
        });
    }
    let app = backend::api::router(state);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "backend listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
        })
        .await?;
    Ok(())
}
