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
    /// Who verifies bearer tokens: this service, or the gateway (X-Auth-Subject accepted only
    /// with the gateway's signature, see IDENTITY_KEY_FILE).
    #[arg(long, env = "AUTH_MODE", value_enum, default_value = "token")]
    auth_mode: AuthMode,
    /// Seconds between rescans of the key directory (picks up `rotate-key`); 0 = never.
    #[arg(long, env = "KEYS_RELOAD_SECS", default_value_t = 10)]
    keys_reload_secs: u64,
    /// The key directory is a mounted Secret shared by every replica: never create a key
    /// there; refuse to start without one.
    #[arg(long, env = "BACKEND_KEYS_READ_ONLY", default_value_t = false)]
    keys_read_only: bool,
    /// A new key signs only once it is this many seconds old, so every replica publishes it
    /// first (several replicas: Secret propagation + KEYS_RELOAD_SECS, e.g. 180).
    #[arg(long, env = "KEY_ACTIVATION_SECS", default_value_t = 0)]
    key_activation_secs: i64,
    /// AUTH_MODE=gateway: file of keys (one per line, ≥ 32 bytes) the gateway signs identity
    /// headers with (its `[identity] signing_key_file`). Required in that mode.
    #[arg(long, env = "IDENTITY_KEY_FILE")]
    identity_key_file: Option<PathBuf>,
    /// Serve `/metrics` on this address only (not on the API listener). Default: on the API.
    #[arg(long, env = "BACKEND_METRICS_LISTEN")]
    metrics_listen: Option<String>,
}

impl ServeArgs {
    fn key_policy(&self) -> backend::keys::KeyPolicy {
        backend::keys::KeyPolicy {
            token_ttl_secs: self.token_ttl_secs,
            read_only: self.keys_read_only,
            activation_secs: self.key_activation_secs,
        }
    }
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
    let key_policy = a.key_policy();
    let (listen, metrics_listen) = (a.listen.clone(), a.metrics_listen.clone());
    let config = backend::Config {
        database_url: a
            .database_url
            .unwrap_or_else(|| backend::db::sqlite_url(&a.db)),
        keys_dir: a.keys_dir,
        issuer: a.issuer,
        audience: a.audience,
        token_ttl_secs: a.token_ttl_secs,
        auth_mode: a.auth_mode,
        key_policy,
        identity_key_file: a.identity_key_file,
    };
    if let Err(e) = serve(
        config,
        &listen,
        metrics_listen.as_deref(),
        a.keys_reload_secs,
    )
    .await
    {
        eprintln!("backend: {e:#}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn mint_tokens(a: &ServeArgs, count: u32, first: i64) -> ExitCode {
    let keys = match backend::keys::KeyStore::load(&a.keys_dir, &a.key_policy()) {
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

async fn serve(
    config: backend::Config,
    listen: &str,
    metrics_listen: Option<&str>,
    reload_secs: u64,
) -> anyhow::Result<()> {
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
    let app = match metrics_listen {
        Some(addr) => {
            let metrics = backend::api::metrics_router(state.clone());
            let l = tokio::net::TcpListener::bind(addr).await?;
            tracing::info!(addr = %l.local_addr()?, "metrics listening");
            tokio::spawn(async move {
                if let Err(e) = axum::serve(l, metrics).await {
                    tracing::error!(error = %e, "metrics listener failed");
                }
            });
            backend::api::api_router(state)
        }
        None => backend::api::router(state),
    };
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
