//! Configuration: file types → validation → the compiled [`Runtime`].
//!
//! [`load`] is the single entry point used by `gateway check`, `gateway run` and (later) hot
//! reload, so all three accept and refuse exactly the same files. Validation never stops at the
//! first problem: every problem is collected with its `file:line:column` and reported together.

pub mod file;

use crate::http::security_headers::SecurityHeaders;
use crate::path::resolve;
use crate::route::{Route, RouteKind};
use crate::runtime::{Limits, Listeners, Process, Runtime};
use crate::static_files::{AssetBundle, StaticOptions};
use crate::tls::{CertSet, LoadedCert};
use crate::upstream::Pool;
use file::{GatewayConf, RouteConf, RouteKindConf, SecurityHeadersConf};
use serde_spanned::Spanned;
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One thing wrong with a config file, located as precisely as the file allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `file:line:column`, or just the file when no position is known.
    pub location: String,
    /// What is wrong, in words.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file itself could not be read.
    #[error("{path}: cannot read config: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The file was read but has problems; all of them are listed.
    #[error("{}", display_problems(.0))]
    Invalid(Vec<Problem>),
}

fn display_problems(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
    format!(
        "{} problem(s) in config:\n{}",
        problems.len(),
        lines.join("\n")
    )
}

impl ConfigError {
    /// The problems, for callers that report them one by one.
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            ConfigError::Read { path, source } => vec![Problem {
                location: path.clone(),
                message: format!("cannot read config: {source}"),
            }],
            ConfigError::Invalid(p) => p.clone(),
        }
    }
}

/// Maps byte offsets of the source text to `file:line:column`.
struct Source<'a> {
    file: &'a str,
    text: &'a str,
}

impl Source<'_> {
    fn at(&self, offset: usize) -> String {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        format!("{}:{}:{}", self.file, line, col)
    }

    /// A problem at `span`'s start, or at the file when the value was defaulted (empty span).
    fn problem<T>(&self, spanned: &Spanned<T>, message: impl Into<String>) -> Problem {
        let span = spanned.span();
        let location = if span.is_empty() && span.start == 0 {
            self.file.to_string()
        } else {
            self.at(span.start)
        };
        Problem {
            location,
            message: message.into(),
        }
    }
}

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
    let mut problems = Vec::new();
    let rt = build(&conf, &src, base, previous, &mut problems);
    match rt {
        Some(rt) if problems.is_empty() => Ok(rt),
        _ => Err(ConfigError::Invalid(problems)),
    }
}

fn check_addr(src: &Source, addr: &Spanned<String>, what: &str, problems: &mut Vec<Problem>) {
    if let Err(e) = addr.get_ref().parse::<SocketAddr>() {
        problems.push(src.problem(
            addr,
            format!(
                "{what} listener `{}` is not an ip:port address: {e}",
                addr.get_ref()
            ),
        ));
    }
}

fn build(
    conf: &GatewayConf,
    src: &Source,
    base: &Path,
    previous: Option<&Runtime>,
    problems: &mut Vec<Problem>,
) -> Option<Runtime> {
    // Listeners.
    let l = &conf.listeners;
    check_addr(src, &l.https, "https", problems);
    check_addr(src, &l.admin, "admin", problems);
    if !l.http.get_ref().is_empty() {
        check_addr(src, &l.http, "http", problems);
    }
    let https_port = l
        .https
        .get_ref()
        .parse::<SocketAddr>()
        .map(|a| a.port())
        .unwrap_or(443);
    let listeners = Listeners {
        https: l.https.get_ref().clone(),
        http: Some(l.http.get_ref().clone()).filter(|s| !s.is_empty()),
        admin: l.admin.get_ref().clone(),
        redirect_https_port: l.redirect_https_port.unwrap_or(https_port),
        write_buffer_bytes: l.write_buffer_bytes,
        read_buffer_bytes: l.read_buffer_bytes,
    };

    // Certificates.
    let mut certs = Vec::new();
    if conf.tls.certificates.is_empty() {
        problems.push(Problem {
            location: src.file.to_string(),
            message: "[tls] needs at least one [[tls.certificates]] entry".into(),
        });
    }
    let defaults = conf
        .tls
        .certificates
        .iter()
        .filter(|c| c.get_ref().default)
        .count();
    if defaults > 1 {
        problems.push(Problem {
            location: src.file.to_string(),
            message: format!(
                "{defaults} certificates are marked `default = true`; at most one may be"
            ),
        });
    }
    for c in &conf.tls.certificates {
        let cc = c.get_ref();
        let cert_path = resolve(base, cc.cert.get_ref());
        let key_path = resolve(base, cc.key.get_ref());
        match LoadedCert::try_load(&cc.name, &cert_path, &key_path, &cc.server_names) {
            Ok(loaded) => certs.push((loaded, cc.default)),
            Err(e) => {
                let at = if e.is_about_key() { &cc.key } else { &cc.cert };
                problems.push(src.problem(at, format!("certificate `{}`: {e}", cc.name)));
            }
        }
    }
    let cert_set = CertSet::new(certs);

    // Pools.
    let mut pools: HashMap<String, Arc<Pool>> = HashMap::new();
    for (name, up) in &conf.upstreams {
        let reused = previous
            .and_then(|p| p.pools.get(name))
            .filter(|p| p.conf == *up.get_ref())
            .cloned();
        match reused {
            Some(pool) => {
                pools.insert(name.clone(), pool);
            }
            None => match Pool::try_from_conf(name, up.get_ref()) {
                Ok(pool) => {
                    pools.insert(name.clone(), Arc::new(pool));
                }
                Err(e) => problems.push(src.problem(up, format!("upstream `{name}`: {e}"))),
            },
        }
    }

    // JWT providers: reused while unchanged so JWKS and token cache survive a reload.
    let mut providers: HashMap<String, Arc<crate::auth::JwtProvider>> = HashMap::new();
    for (name, pc) in &conf.jwt_providers {
        let file_based = !pc.get_ref().is_remote();
        let reused = previous
            .and_then(|p| p.jwt_providers.get(name))
            .filter(|p| !file_based && p.conf == *pc.get_ref() && p.trust_unchanged(base))
            .cloned();
        match reused {
            Some(p) => {
                providers.insert(name.clone(), p);
            }
            None => match crate::auth::JwtProvider::try_from_conf(name, pc.get_ref(), base) {
                Ok(p) => {
                    if let Some(prev) = previous.and_then(|r| r.jwt_providers.get(name)) {
                        p.adopt_keys_from(prev);
                    }
                    providers.insert(name.clone(), Arc::new(p));
                }
                Err(e) => {
                    let at = pc
                        .get_ref()
                        .jwks_file
                        .as_ref()
                        .or(pc.get_ref().key_file.as_ref())
                        .or(pc.get_ref().secret_file.as_ref())
                        .or(pc.get_ref().ca_file.as_ref())
                        .filter(|_| {
                            matches!(
                                e,
                                crate::auth::ProviderError::Key(_)
                                    | crate::auth::ProviderError::CaFile(_)
                            )
                        })
                        .map_or_else(|| src.problem(pc, ""), |f| src.problem(f, ""))
                        .location;
                    problems.push(Problem {
                        location: at,
                        message: format!("jwt provider `{name}`: {e}"),
                    });
                }
            },
        }
    }
    let mut strip_headers = Vec::new();
    for h in &conf.identity.strip_headers {
        match http::HeaderName::from_bytes(h.as_bytes()) {
            Ok(n) => strip_headers.push(n),
            Err(_) => problems.push(Problem {
                location: src.file.to_string(),
                message: format!("[identity] strip_headers: `{h}` is not a header name"),
            }),
        }
    }
    // A client's signature is never passed on (only the gateway signs).
    strip_headers.push(crate::identity::SIGNATURE);
    // Identity headers a provider sets are always stripped from clients too.
    for p in providers.values() {
        for h in p.conf.claim_headers.values() {
            if let Ok(n) = http::HeaderName::from_bytes(h.as_bytes()) {
                if !strip_headers.contains(&n) {
                    strip_headers.push(n);
                }
            }
        }
    }

    // Rate policies: reused while unchanged so a reload keeps their counters.
    let mut rate_policies: HashMap<String, Arc<crate::rate_limit::RatePolicy>> = HashMap::new();
    for (name, pc) in &conf.rate_limits {
        let reused = previous
            .and_then(|p| p.rate_policies.get(name))
            .filter(|p| p.conf == *pc.get_ref())
            .cloned();
        match reused {
            Some(p) => {
                rate_policies.insert(name.clone(), p);
            }
            None => match crate::rate_limit::RatePolicy::try_from_conf(name, pc.get_ref()) {
                Ok(p) => {
                    rate_policies.insert(name.clone(), Arc::new(p));
                }
                Err(e) => problems.push(src.problem(pc, format!("rate limit `{name}`: {e}"))),
            },
        }
    }
    let mut maintenance_allow = Vec::new();
    for c in &conf.maintenance.allow {
        let text = c.get_ref();
        match text
            .parse::<ipnet::IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        {
            Ok(n) => maintenance_allow.push(n),
            Err(_) => problems.push(src.problem(
                c,
                format!("[maintenance] `{text}` is not a CIDR or IP address"),
            )),
        }
    }
    let maintenance_page = match &conf.maintenance.page {
        None => bytes::Bytes::from_static(crate::proxy::answer::MAINTENANCE_PAGE.as_bytes()),
        Some(p) => {
            let path = resolve(base, p.get_ref());
            match std::fs::read(&path) {
                Ok(b) => bytes::Bytes::from(b),
                Err(e) => {
                    problems.push(
                        src.problem(p, format!("[maintenance] page {}: {e}", path.display())),
                    );
                    bytes::Bytes::new()
                }
            }
        }
    };
    let mut error_pages = std::collections::HashMap::new();
    for (status, file) in &conf.error_pages {
        let code = status
            .parse::<u16>()
            .ok()
            .filter(|c| (400..=599).contains(c));
        let Some(code) = code else {
            problems.push(src.problem(
                file,
                format!("[error_pages] `{status}` is not an error status (400..=599)"),
            ));
            continue;
        };
        let path = resolve(base, file.get_ref());
        match std::fs::read(&path) {
            Ok(b) => {
                error_pages.insert(code, bytes::Bytes::from(b));
            }
            Err(e) => problems.push(src.problem(
                file,
                format!("[error_pages] {status}: {}: {e}", path.display()),
            )),
        }
    }
    if conf.client_ip.ipv6_prefix > 128 {
        problems.push(Problem {
            location: src.file.to_string(),
            message: "[client_ip] ipv6_prefix must be 0..=128".into(),
        });
    }

    // Routes. Proxy prefixes never fall back to a static shell.
    let proxy_prefixes: Vec<String> = conf
        .routes
        .iter()
        .filter(|r| r.get_ref().kind == RouteKindConf::Proxy)
        .map(|r| r.get_ref().prefix.clone())
        .collect();
    let mut routes = Vec::new();
    let mut names = std::collections::HashSet::new();
    for r in &conf.routes {
        let rc = r.get_ref();
        if !names.insert(rc.name.clone()) {
            problems.push(src.problem(r, format!("route name `{}` is used twice", rc.name)));
        }
        if !rc.prefix.starts_with('/') {
            problems.push(src.problem(
                r,
                format!(
                    "route `{}`: prefix `{}` must start with `/`",
                    rc.name, rc.prefix
                ),
            ));
        }
        let kind = match rc.kind {
            RouteKindConf::Proxy => {
                if rc.root.is_some() {
                    problems.push(src.problem(
                        r,
                        format!("route `{}`: `root` is only for static routes", rc.name),
                    ));
                }
                match &rc.upstream {
                    None => {
                        problems.push(src.problem(
                            r,
                            format!("route `{}`: a proxy route needs `upstream`", rc.name),
                        ));
                        None
                    }
                    Some(up) => match pools.get(up.get_ref()) {
                        Some(pool) => Some(RouteKind::Proxy {
                            pool: pool.clone(),
                            strip_prefix: rc.strip_prefix,
                        }),
                        None if conf.upstreams.contains_key(up.get_ref()) => None,
                        None => {
                            problems.push(src.problem(
                                up,
                                format!(
                                    "route `{}`: upstream `{}` is not defined in [upstreams]",
                                    rc.name,
                                    up.get_ref()
                                ),
                            ));
                            None
                        }
                    },
                }
            }
            RouteKindConf::Static => match &rc.root {
                None => {
                    problems.push(src.problem(
                        r,
                        format!("route `{}`: a static route needs `root`", rc.name),
                    ));
                    None
                }
                Some(root) => {
                    let dir = resolve(base, root.get_ref());
                    if !dir.is_dir() {
                        problems.push(src.problem(
                            root,
                            format!(
                                "route `{}`: root directory {} does not exist",
                                rc.name,
                                dir.display()
                            ),
                        ));
                        None
                    } else {
                        static_bundle(rc, &dir, &proxy_prefixes, src, previous, problems)
                            .map(|bundle| RouteKind::Static { bundle })
                    }
                }
            },
        };
        let auth = route_auth(rc, &providers, src, problems);
        let rules = route_rate_rules(rc, &rate_policies, src, r, problems);
        let cors = match &rc.cors {
            None => Ok(None),
            Some(c) => crate::cors::Cors::try_from_conf(c.get_ref())
                .map(Some)
                .map_err(|e| {
                    problems.push(src.problem(c, format!("route `{}`: cors: {e}", rc.name)));
                }),
        };
        let compress = rc.compress.then(|| crate::route::Compress {
            level: rc.compress_level.unwrap_or(4).clamp(1, 11),
            min_bytes: rc.compress_min_bytes.unwrap_or(1024),
            types: rc.compress_types.clone().unwrap_or_else(|| {
                [
                    "text/",
                    "application/json",
                    "application/javascript",
                    "application/xml",
                    "application/problem+json",
                    "image/svg+xml",
                ]
                .map(String::from)
                .to_vec()
            }),
        });
        let mut header_rules = |spec: &Option<serde_spanned::Spanned<file::HeaderRulesConf>>,
                                side: crate::headers::Side| {
            let Some(spec) = spec else {
                return Some(crate::headers::Rules::default());
            };
            let what = match side {
                crate::headers::Side::Request => "request_headers",
                crate::headers::Side::Response => "response_headers",
            };
            if side == crate::headers::Side::Request && rc.kind != RouteKindConf::Proxy {
                problems.push(src.problem(
                    spec,
                    format!("route `{}`: {what} is only for proxy routes", rc.name),
                ));
                return None;
            }
            let h = spec.get_ref();
            let protected: &[http::HeaderName] = match side {
                crate::headers::Side::Request => &strip_headers,
                crate::headers::Side::Response => &[],
            };
            crate::headers::Rules::compile(
                &crate::headers::RulesSpec {
                    remove: &h.remove,
                    set: &h.set,
                    add: &h.add,
                },
                side,
                protected,
            )
            .map_err(|errors| {
                for e in errors {
                    problems.push(src.problem(spec, format!("route `{}`: {what}: {e}", rc.name)));
                }
            })
            .ok()
        };
        let request_rules = header_rules(&rc.request_headers, crate::headers::Side::Request);
        let response_rules = header_rules(&rc.response_headers, crate::headers::Side::Response);
        if rc.replace_upstream_errors && rc.kind != RouteKindConf::Proxy {
            problems.push(src.problem(
                r,
                format!(
                    "route `{}`: replace_upstream_errors is only for proxy routes",
                    rc.name
                ),
            ));
        }
        if let (Some(kind), Ok(auth), Some(rules), Ok(cors), Some(req_rules), Some(resp_rules)) =
            (kind, auth, rules, cors, request_rules, response_rules)
        {
            let mut route = Route::new(&rc.name, &rc.prefix, rc.host.as_deref(), kind);
            route.auth = auth;
            route.rate_rules = rules;
            route.cors = cors;
            route.compress = compress;
            route.maintenance = rc.maintenance;
            route.request_rules = req_rules;
            route.response_rules = resp_rules;
            route.replace_upstream_errors = rc.replace_upstream_errors;
            routes.push(route);
        }
    }

    let threads = if conf.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        conf.threads
    };
    let hsts = (conf.tls.hsts_max_age > 0).then(|| {
        let mut v = format!("max-age={}", conf.tls.hsts_max_age);
        if conf.tls.hsts_include_subdomains {
            v.push_str("; includeSubDomains");
        }
        http::HeaderValue::from_str(&v)
            .unwrap_or_else(|_| http::HeaderValue::from_static("max-age=31536000"))
    });

    let security_headers = compile_security_headers(&conf.security_headers, src, problems);
    let mut trusted_proxies = Vec::new();
    for c in &conf.client_ip.trusted_proxies {
        let text = c.get_ref();
        // A bare address means that one host.
        let parsed = text
            .parse::<ipnet::IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match parsed {
            Ok(n) => trusted_proxies.push(n),
            Err(_) => problems.push(src.problem(
                c,
                format!("[client_ip] `{text}` is not a CIDR or IP address"),
            )),
        }
    }
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
    let admin_token = match &conf.admin.token_file {
        None => None,
        Some(f) => {
            let p = resolve(base, f.get_ref());
            watch_files.push(p.clone());
            match std::fs::read_to_string(&p) {
                Ok(t) if t.trim().len() >= 16 => Some(t.trim().to_string()),
                Ok(_) => {
                    problems.push(
                        src.problem(f, "[admin] token_file: token shorter than 16 characters"),
                    );
                    None
                }
                Err(e) => {
                    problems
                        .push(src.problem(f, format!("[admin] token_file {}: {e}", p.display())));
                    None
                }
            }
        }
    };
    let identity_signer = match &conf.identity.signing_key_file {
        None => None,
        Some(f) => {
            let p = resolve(base, f.get_ref());
            watch_files.push(p.clone());
            match crate::identity::IdentitySigner::try_from_file(&p) {
                Ok(s) => Some(Arc::new(s)),
                Err(e) => {
                    problems.push(src.problem(
                        f,
                        format!("[identity] signing_key_file {}: {e}", p.display()),
                    ));
                    None
                }
            }
        }
    };
    let certs = cert_set?;
    if !problems.is_empty() {
        return None;
    }
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
        maintenance: crate::runtime::Maintenance {
            enabled: conf.maintenance.enabled,
            allow: maintenance_allow,
            retry_after: conf.maintenance.retry_after.unwrap_or(300),
            page: maintenance_page,
        },
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
    })
}

fn compile_security_headers(
    conf: &SecurityHeadersConf,
    src: &Source,
    problems: &mut Vec<Problem>,
) -> SecurityHeaders {
    let mut headers = Vec::new();
    let mut add = |name: &'static str, value: &str| {
        if value.is_empty() {
            return;
        }
        match http::HeaderValue::from_str(value) {
            Ok(v) => headers.push((http::HeaderName::from_static(name), v)),
            Err(_) => problems.push(Problem {
                location: src.file.to_string(),
                message: format!("[security_headers] {name}: not a valid header value"),
            }),
        }
    };
    add("content-security-policy", &conf.content_security_policy);
    add("x-frame-options", &conf.frame_options);
    add("referrer-policy", &conf.referrer_policy);
    add("permissions-policy", &conf.permissions_policy);
    if conf.nosniff {
        add("x-content-type-options", "nosniff");
    }
    SecurityHeaders { headers }
}

/// Builds (or reuses, when the files are unchanged) the asset bundle of a static route.
fn static_bundle(
    rc: &RouteConf,
    dir: &Path,
    proxy_prefixes: &[String],
    src: &Source,
    previous: Option<&Runtime>,
    problems: &mut Vec<Problem>,
) -> Option<Arc<AssetBundle>> {
    let pattern = rc
        .fingerprint_pattern
        .as_ref()
        .map_or(crate::static_files::DEFAULT_FINGERPRINT, |p| {
            p.get_ref().as_str()
        });
    let fingerprint = match regex::Regex::new(pattern) {
        Ok(r) => r,
        Err(e) => {
            let at = rc
                .fingerprint_pattern
                .as_ref()
                .map_or_else(|| src.file.to_string(), |p| src.problem(p, "").location);
            problems.push(Problem {
                location: at,
                message: format!("route `{}`: fingerprint_pattern: {e}", rc.name),
            });
            return None;
        }
    };
    let mut fallback_exclude = rc.fallback_exclude.clone();
    fallback_exclude.extend(proxy_prefixes.iter().cloned());
    let opts = StaticOptions {
        fallback: match rc.fallback.as_deref() {
            None => Some("index.html".to_string()),
            Some("") => None,
            Some(f) => Some(f.to_string()),
        },
        fallback_exclude,
        fingerprint,
        default_cache_control: rc
            .default_cache_control
            .clone()
            .unwrap_or_else(|| "public, max-age=300".into()),
        rules: rc
            .cache_control
            .iter()
            .map(|r| (r.glob.clone(), r.value.clone()))
            .collect(),
        max_memory_file_bytes: rc.max_memory_file_bytes.unwrap_or(1024 * 1024),
    };
    match AssetBundle::try_load(dir, &opts) {
        Ok(mut bundle) => {
            let old = previous.and_then(|p| {
                p.routes.iter().find_map(|r| match &r.kind {
                    crate::route::RouteKind::Static { bundle } if r.name == rc.name => {
                        Some(bundle.clone())
                    }
                    _ => None,
                })
            });
            match old {
                // Unchanged files and options: keep the previous bundle (and its memory) as is.
                Some(old) if old.digest == bundle.digest && old.same_options(&bundle) => Some(old),
                Some(old) => {
                    let grace = rc.previous_assets_grace_seconds.unwrap_or(600);
                    bundle.keep_previous(&old, std::time::Duration::from_secs(grace));
                    Some(Arc::new(bundle))
                }
                None => Some(Arc::new(bundle)),
            }
        }
        Err(e) => {
            let at = rc
                .root
                .as_ref()
                .map_or_else(|| src.file.to_string(), |r| src.problem(r, "").location);
            problems.push(Problem {
                location: at,
                message: format!("route `{}`: {e}", rc.name),
            });
            None
        }
    }
}

/// Compiles `auth`, `auth_provider`, `auth_public`, `auth_scopes` of a route.
fn route_auth(
    rc: &RouteConf,
    providers: &HashMap<String, Arc<crate::auth::JwtProvider>>,
    src: &Source,
    problems: &mut Vec<Problem>,
) -> Result<Option<crate::auth::RoutePolicy>, ()> {
    let mode = rc.auth.as_ref().map_or("none", |a| a.get_ref().as_str());
    match mode {
        "none" => {
            if let Some(p) = &rc.auth_provider {
                problems.push(src.problem(
                    p,
                    format!("route `{}`: auth_provider needs auth = \"jwt\"", rc.name),
                ));
                return Err(());
            }
            Ok(None)
        }
        "jwt" => {
            let Some(pname) = &rc.auth_provider else {
                let at = rc
                    .auth
                    .as_ref()
                    .map_or_else(|| src.file.to_string(), |a| src.problem(a, "").location);
                problems.push(Problem {
                    location: at,
                    message: format!("route `{}`: auth = \"jwt\" needs auth_provider", rc.name),
                });
                return Err(());
            };
            let Some(provider) = providers.get(pname.get_ref()) else {
                problems.push(src.problem(
                    pname,
                    format!(
                        "route `{}`: jwt provider `{}` is not defined (or is invalid)",
                        rc.name,
                        pname.get_ref()
                    ),
                ));
                return Err(());
            };
            match crate::auth::RoutePolicy::try_new(
                provider.clone(),
                &rc.auth_public,
                &rc.auth_scopes,
            ) {
                Ok(p) => Ok(Some(p)),
                Err(e) => {
                    problems.push(src.problem(pname, format!("route `{}`: {e}", rc.name)));
                    Err(())
                }
            }
        }
        other => {
            if let Some(a) = &rc.auth {
                problems.push(src.problem(
                    a,
                    format!(
                        "route `{}`: auth must be \"jwt\" or \"none\", not `{other}`",
                        rc.name
                    ),
                ));
            }
            Err(())
        }
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

/// Compiles a route's `rate_limits`.
fn route_rate_rules(
    rc: &RouteConf,
    policies: &HashMap<String, Arc<crate::rate_limit::RatePolicy>>,
    src: &Source,
    at: &Spanned<RouteConf>,
    problems: &mut Vec<Problem>,
) -> Option<Vec<crate::rate_limit::RouteRule>> {
    use crate::config::file::RouteRateConf;
    let mut out = Vec::new();
    let mut ok = true;
    for r in &rc.rate_limits {
        let (name, methods, paths) = match r {
            RouteRateConf::Name(n) => (n, &[][..], &[][..]),
            RouteRateConf::Rule {
                policy,
                methods,
                paths,
            } => (policy, &methods[..], &paths[..]),
        };
        let Some(policy) = policies.get(name) else {
            if !problems
                .iter()
                .any(|p| p.message.contains(&format!("rate limit `{name}`")))
            {
                problems.push(src.problem(
                    at,
                    format!(
                        "route `{}`: rate limit policy `{name}` is not defined in [rate_limits]",
                        rc.name
                    ),
                ));
            }
            ok = false;
            continue;
        };
        let mut ms = Vec::new();
        for m in methods {
            match http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                Ok(m) => ms.push(m),
                Err(_) => {
                    problems.push(
                        src.problem(at, format!("route `{}`: `{m}` is not a method", rc.name)),
                    );
                    ok = false;
                }
            }
        }
        out.push(crate::rate_limit::RouteRule {
            policy: policy.clone(),
            methods: ms,
            paths: paths.to_vec(),
        });
    }
    ok.then_some(out)
}
