//! `gateway` command line: `run`, `check [--diff OLD]`, `certs dev`. Thin by design; see the
//! library.

use clap::{Parser, Subcommand};

// glibc malloc's arena locks showed up as futex waits under load; mimalloc's per-thread
// heaps remove that contention on the request path.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "gateway", version, about = "Edge gateway on pingora")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with a config file (refused before any port is bound if invalid).
    Run {
        /// Config file.
        #[arg(short, long, default_value = "conf/gateway.toml")]
        config: PathBuf,
        /// Take the listening sockets over from a running instance (graceful upgrade).
        #[arg(short, long)]
        upgrade: bool,
        /// Run in the background.
        #[arg(short, long)]
        daemon: bool,
    },
    /// Validate a config file exactly as `run` would; print every problem. With
    /// `--requests`, also show what the gateway would do with each request of a file
    /// (offline: nothing is sent or counted); `expect` lines make it exit 1 when they fail.
    Check {
        /// Config file.
        #[arg(short, long, default_value = "conf/gateway.toml")]
        config: PathBuf,
        /// Requests file: `METHOD URL [name=value…] [client=IP] [expect key=value…]` a line.
        #[arg(long)]
        requests: Option<PathBuf>,
        /// Print the dry run as JSON.
        #[arg(long, requires = "requests")]
        json: bool,
        /// JWKS file for providers that fetch their keys (jwks_url, discovery).
        #[arg(long, requires = "requests")]
        jwks: Option<PathBuf>,
        /// Also print what changes from this (running) config, one line per change, as a
        /// reload would report it.
        #[arg(long, value_name = "OLD", conflicts_with = "requests")]
        diff: Option<PathBuf>,
    },
    /// Certificate tooling.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Create a local CA and a server certificate for localhost, 127.0.0.1 and ::1.
    Dev {
        /// Output directory.
        #[arg(long, default_value = "certs/dev")]
        dir: PathBuf,
    },
}

/// `gateway check`: exit 2 when either file is invalid (every problem of both printed).
fn check(config: &Path, old: Option<&Path>) -> ExitCode {
    let new = gateway::config::load(config, None);
    let old = old.map(|p| gateway::config::load(p, None));
    let mut invalid = false;
    for e in [Some(&new), old.as_ref()].into_iter().flatten() {
        if let Err(e) = e {
            eprintln!("{e}");
            invalid = true;
        }
    }
    let (Ok(rt), false) = (new, invalid) else {
        return ExitCode::from(2);
    };
    println!(
        "{}: ok ({} routes, {} pools, {} certificates)",
        config.display(),
        rt.routes.len(),
        rt.pools.len(),
        rt.certs.certs.len()
    );
    if let Some(Ok(old)) = old {
        println!(
            "{}",
            gateway::config::diff::ConfigDiff::between(&old.summary, &rt.summary)
        );
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check {
            config,
            requests: Some(requests),
            json,
            jwks,
            ..
        } => {
            let opts = gateway::dryrun::Options {
                config: &config,
                requests: &requests,
                jwks: jwks.as_deref(),
                json,
            };
            let code = gateway::dryrun::run(&opts, &mut std::io::stdout(), &mut std::io::stderr());
            ExitCode::from(code)
        }
        Command::Check { config, diff, .. } => check(&config, diff.as_deref()),
        Command::Run {
            config,
            upgrade,
            daemon,
        } => {
            gateway::server::prefer_small_pages();
            gateway::logging::init();
            let rt = match gateway::config::load(&config, None) {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            let flags = gateway::server::RunFlags { upgrade, daemon };
            gateway::server::run(&config, rt, &flags);
            ExitCode::SUCCESS
        }
        Command::Certs {
            command: CertsCommand::Dev { dir },
        } => match gateway::certs::ensure_dev(&dir) {
            Ok(out) => {
                let what = if out.changed {
                    "written"
                } else {
                    "already present"
                };
                println!("dev certificates {what} in {}", dir.display());
                println!("  CA (trust this): {}", out.ca.display());
                println!(
                    "  server:          {} + {}",
                    out.cert.display(),
                    out.key.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("gateway certs dev: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
