//! `gateway check --requests FILE`: what the gateway would do with each request of a file —
//! hygiene, route, maintenance, CORS preflight, rate-limit keys, auth, static file or
//! upstream head — under a config, without network and without counting anything.
//!
//! [`parse`] reads the file (refused whole, with its line, when a line is wrong), [`eval`]
//! runs each request through the proxy's own phase functions, [`output`] prints the report.
//! Exit codes: 0 every `expect` passed, 1 one failed, 2 the config, requests or JWKS file
//! is invalid.

pub mod eval;
pub mod output;
pub mod parse;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

/// What to check.
#[derive(Debug, Clone, Copy)]
pub struct Options<'a> {
    /// The gateway config.
    pub config: &'a Path,
    /// The requests file.
    pub requests: &'a Path,
    /// Keys for providers that fetch theirs (`jwks_url`, discovery).
    pub jwks: Option<&'a Path>,
    /// JSON instead of the table.
    pub json: bool,
}

/// Runs the dry run; returns the exit code. The report goes to `out`, refusals to `err`.
pub fn run(opts: &Options<'_>, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let rt = match crate::config::load(opts.config, None) {
        Ok(rt) => Arc::new(rt),
        Err(e) => {
            let _ = writeln!(err, "{e}");
            return 2;
        }
    };
    let name = opts.requests.display();
    let text = match std::fs::read_to_string(opts.requests) {
        Ok(t) => t,
        Err(e) => {
            let _ = writeln!(err, "{name}: {e}");
            return 2;
        }
    };
    let requests = match parse::parse(&text) {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(err, "{name}:{e}");
            return 2;
        }
    };
    let jwks = match opts.jwks.map(read_jwks).transpose() {
        Ok(k) => k,
        Err(e) => {
            let _ = writeln!(err, "{e}");
            return 2;
        }
    };
    let outcomes: Vec<eval::Outcome> = requests
        .iter()
        .map(|r| {
            let mut o = eval::evaluate(&rt, r, jwks.as_ref());
            eval::check(&mut o, &r.expects);
            o
        })
        .collect();
    let report = if opts.json {
        output::json(&outcomes) + "\n"
    } else {
        output::table(&outcomes)
    };
    let _ = out.write_all(report.as_bytes());
    let failed = outcomes.iter().flat_map(|o| &o.checks).any(|c| !c.pass);
    u8::from(failed)
}

fn read_jwks(path: &Path) -> Result<crate::auth::KeySet, String> {
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    crate::auth::KeySet::from_jwks(&text).map_err(|e| format!("{}: {e}", path.display()))
}
