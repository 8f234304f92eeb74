//! Configuration: file types → validation → the compiled [`Runtime`].
//!
//! [`load`] is the single entry point used by `gateway check`, `gateway run` and (later) hot
//! reload, so all three accept and refuse exactly the same files. Validation never stops at the
//! first problem: every problem is collected with its `file:line:column` and reported together.

mod compile;
pub mod diff;
pub mod file;
mod reuse;
pub mod source;

pub use source::{ConfigError, Problem};

use crate::path::resolve;
use crate::route::{Route, RouteKind};
use crate::runtime::{Limits, Process, Runtime};
use crate::static_files::DEFAULT_PREVIOUS_ASSETS_GRACE_SECONDS;
use crate::tls::CertSet;
use diff::Summary;
use file::GatewayConf;
use source::Source;
use std::path::{Path, PathBuf};

/// Reads, validates and compiles the config at `path`.
///
/// `previous` is the runtime currently serving, if any: pools whose definition did not change are
/// reused from it so their health state survives a reload.
pub fn load(path: &Path, previous: Option<&Runtime>) -> Result<Runtime, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: file.clone(),
        source,
    })?;
    let base = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    compile(&file, &text, &base, previous)
}

/// Validates and compiles config `text` (named `file` in messages; relative paths resolve
/// against `base`).
pub fn compile(
    file: &str,
    text: &str,
    base: &Path,
    previous: Option<&Runtime>,
) -> Result<Runtime, ConfigError> {
    let src = Source { file, text };
    let conf: GatewayConf = match toml::from_str(text) {
        Ok(c) => c,
        Err(e) => {
            let location = e
                .span()
                .map_or_else(|| file.to_string(), |s| src.at(s.start));
            return Err(ConfigError::Invalid(vec![Problem {
                location,
                message: e.message().trim().to_string(),
            }]));
        }
    };
    // The same text as a generic tree, for diffs between generations; it parsed above.
    let tree: toml::Table = toml::from_str(text).unwrap_or_default();
    let mut problems = Vec::new();
    let rt = build(&conf, tree, &src, base, previous, &mut problems);
    match rt {
        Some(rt) if problems.is_empty() => Ok(rt),
        _ => Err(ConfigError::Invalid(problems)),
    }
}

fn build(
    conf: &GatewayConf,
    tree: toml::Table,
    src: &Source,
    base: &Path,
    previous: Option<&Runtime>,
    problems: &mut Vec<Problem>,
) -> Option<Runtime> {
    // One compiler per section, in dependency order: routes refer to pools, providers and
    // policies by name; identity stripping depends on the providers' claim headers.
    let listeners = compile::listeners::listeners(conf, src, problems);
    let cert_set = compile::tls::certificates(conf, base, src, problems);
    let pools = compile::upstreams::pools(conf, previous, src, problems);
    let providers = compile::auth::providers(conf, base, previous, src, problems);
    let strip_headers = compile::identity::strip_headers(conf, &providers, src, problems);
    let rate_policies = compile::rate_limit::policies(conf, previous, src, problems);
    let maintenance = compile::pages::maintenance(conf, base, src, problems);
    let error_pages = compile::pages::error_pages(conf, base, src, problems);
    let trusted_proxies = compile::client_ip::trusted_proxies(conf, src, problems);
    let routes = compile::routes::routes(
        conf,
        base,
        previous,
        compile::routes::Referenced {
            pools: &pools,
            providers: &providers,
            rate_policies: &rate_policies,
            strip_headers: &strip_headers,
        },
        src,
        problems,
    );
    let threads = if conf.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        conf.threads
    };
    let hsts = compile::security::hsts(conf);
    let security_headers =
        compile::security::security_headers(&conf.security_headers, src, problems);
    // Everything the runtime was built from, for the reload watcher.
    let mut watch_files = vec![src_path(src, base)];
    for c in &conf.tls.certificates {
        watch_files.push(resolve(base, c.get_ref().cert.get_ref()));
        watch_files.push(resolve(base, c.get_ref().key.get_ref()));
    }
    for p in conf.jwt_providers.values() {
        let p = p.get_ref();
        for f in [&p.jwks_file, &p.key_file, &p.secret_file, &p.ca_file]
            .into_iter()
            .flatten()
        {
            watch_files.push(resolve(base, f.get_ref()));
        }
    }
    for r in &conf.routes {
        if let Some(s) = &r.get_ref().sticky {
            watch_files.push(resolve(base, s.get_ref().key_file.get_ref()));
        }
    }
    for page in conf
        .maintenance
        .page
        .iter()
        .chain(conf.error_pages.values())
    {
        watch_files.push(resolve(base, page.get_ref()));
    }
    let watch_dirs: Vec<PathBuf> = conf
        .routes
        .iter()
        .filter_map(|r| r.get_ref().root.as_ref())
        .map(|r| resolve(base, r.get_ref()))
        .collect();
    let admin_token = compile::process::admin_token(conf, base, &mut watch_files, src, problems);
    let identity_signer = compile::identity::signer(conf, base, &mut watch_files, src, problems);
    let certs = cert_set?;
    if !problems.is_empty() {
        return None;
    }
    let summary = summary(conf, tree, &certs, &routes, base, &watch_files);
    Some(Runtime {
        generation: previous.map_or(1, |p| p.generation + 1),
        routes,
        pools,
        certs,
        hsts,
        security_headers,
        jwt_providers: providers,
        strip_headers,
        identity_signer,
        limits: Limits {
            max_body_bytes: conf.limits.max_body_bytes,
            max_header_bytes: conf.limits.max_header_bytes,
            max_one_header_bytes: conf.limits.max_one_header_bytes,
            max_headers: conf.limits.max_headers,
            max_uri_bytes: conf.limits.max_uri_bytes,
            reject_underscore_headers: conf.limits.reject_underscore_headers,
            merge_slashes: conf.limits.merge_slashes,
            header_timeout: (conf.limits.header_timeout_ms > 0)
                .then(|| std::time::Duration::from_millis(conf.limits.header_timeout_ms)),
            max_connections_per_ip: conf.limits.max_connections_per_ip,
            tls_handshake_timeout: (conf.limits.tls_handshake_timeout_ms > 0)
                .then(|| std::time::Duration::from_millis(conf.limits.tls_handshake_timeout_ms)),
            discard_body_max_bytes: conf.limits.discard_body_max_bytes,
            discard_body_timeout: std::time::Duration::from_millis(
                conf.limits.discard_body_timeout_ms,
            ),
        },
        trusted_proxies,
        rate_policies,
        maintenance,
        error_pages,
        rate_limit_headers: conf.rate_limit_headers,
        ipv6_prefix: conf.client_ip.ipv6_prefix,
        listeners,
        threads,
        access_log: conf.access_log == file::AccessLogConf::Json,
        watch_files,
        watch_dirs,
        admin_token,
        process: Process {
            readiness_drain_seconds: conf.process.readiness_drain_seconds,
            shutdown_grace_seconds: conf.process.shutdown_grace_seconds,
            shutdown_timeout_seconds: conf.process.shutdown_timeout_seconds,
            upgrade_sock: conf.process.upgrade_sock.clone(),
            pid_file: conf.process.pid_file.clone(),
            upstream_keepalive_pool_size: conf.process.upstream_keepalive_pool_size,
            work_stealing: conf.process.work_stealing,
        },
        summary,
    })
}

/// What a diff against a later generation needs: the file as a tree, certificate leaves,
/// bundle file lists, and digests of the other referenced files (the config file itself and
/// certificate files excluded: the tree and the leaves already say what they hold).
fn summary(
    conf: &GatewayConf,
    file: toml::Table,
    certs: &CertSet,
    routes: &[Route],
    base: &Path,
    watch_files: &[PathBuf],
) -> Summary {
    use sha2::Digest;
    let certificates = certs
        .certs
        .iter()
        .map(|c| {
            let expires = time::OffsetDateTime::from_unix_timestamp(c.not_after)
                .ok()
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_default();
            let facts = diff::CertFacts {
                serial: c.serial.clone(),
                expires,
            };
            (c.name.clone(), facts)
        })
        .collect();
    let bundles = routes
        .iter()
        .filter_map(|r| match &r.kind {
            RouteKind::Static { bundle } => Some((r.name.as_str(), bundle)),
            RouteKind::Proxy { .. } => None,
        })
        .map(|(name, bundle)| {
            let grace_seconds = conf
                .routes
                .iter()
                .find(|rc| rc.get_ref().name == name)
                .and_then(|rc| rc.get_ref().previous_assets_grace_seconds)
                .unwrap_or(DEFAULT_PREVIOUS_ASSETS_GRACE_SECONDS);
            let files = bundle
                .files()
                .map(|(path, etag)| {
                    let tag = String::from_utf8_lossy(etag.as_bytes()).into_owned();
                    (path.to_string(), tag)
                })
                .collect();
            let facts = diff::BundleFacts {
                files,
                grace_seconds,
            };
            (name.to_string(), facts)
        })
        .collect();
    let cert_files: Vec<PathBuf> = conf
        .tls
        .certificates
        .iter()
        .flat_map(|c| [&c.get_ref().cert, &c.get_ref().key])
        .map(|f| resolve(base, f.get_ref()))
        .collect();
    let inputs = watch_files
        .iter()
        .skip(1) // the config file
        .filter(|f| !cert_files.contains(f))
        .filter_map(|f| {
            let digest = sha2::Sha256::digest(std::fs::read(f).ok()?);
            Some((f.display().to_string(), hex::encode(&digest[..16])))
        })
        .collect();
    Summary {
        file,
        certificates,
        bundles,
        inputs,
    }
}

/// The config file's own path (as given), for the watcher.
fn src_path(src: &Source, base: &Path) -> PathBuf {
    let p = Path::new(src.file);
    if p.is_absolute() || p.exists() {
        p.to_path_buf()
    } else {
        base.join(p.file_name().unwrap_or_default())
    }
}
