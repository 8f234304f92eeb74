//! File types: what an operator writes in `gateway.toml`.
//!
//! Every struct denies unknown keys so a typo is an error, not a silently ignored setting.
//! Values that later checks must point at (paths, names, addresses) are `Spanned` so a problem
//! is reported at its `file:line:column`. Defaults live here, next to the field they belong to,
//! and are repeated in the comments of `conf/gateway.toml`.

use serde::Deserialize;
use serde_spanned::Spanned;
use std::collections::BTreeMap;

pub use crate::auth::{JwtProviderConf, ScopeRuleConf};
pub use crate::cors::CorsConf;
pub use crate::rate_limit::{
    OnStoreErrorConf, PerConf, RateLimitHeadersConf, RatePolicyConf, StoreConf,
};
pub use crate::split::{PinConf, StickyConf, WeightedPoolConf};
pub use crate::upstream::{BalanceConf, UpstreamConf};

/// The whole configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConf {
    /// Worker threads of the proxy service; 0 = one per CPU core. Default 0.
    #[serde(default)]
    pub threads: usize,
    /// `json`: one JSON line per request on stdout, written off the request path; `off`.
    /// Default `json`.
    #[serde(default)]
    pub access_log: AccessLogConf,
    /// Process lifecycle: shutdown grace, upgrade socket.
    #[serde(default)]
    pub process: ProcessConf,
    /// Listening sockets.
    #[serde(default)]
    pub listeners: ListenersConf,
    /// Admin endpoint protection.
    #[serde(default)]
    pub admin: AdminConf,
    /// TLS settings and certificates.
    pub tls: TlsConf,
    /// Request size limits.
    #[serde(default)]
    pub limits: LimitsConf,
    /// Client address resolution.
    #[serde(default)]
    pub client_ip: ClientIpConf,
    /// Maintenance mode.
    #[serde(default)]
    pub maintenance: MaintenanceConf,
    /// Security headers on gateway responses.
    #[serde(default)]
    pub security_headers: SecurityHeadersConf,
    /// JWT providers by name (referenced by routes' `auth_provider`).
    #[serde(default)]
    pub jwt_providers: BTreeMap<String, Spanned<JwtProviderConf>>,
    /// Identity headers sent to upstreams.
    #[serde(default)]
    pub identity: IdentityConf,
    /// Rate-limit policies by name (referenced by routes' `rate_limits`).
    #[serde(default)]
    pub rate_limits: BTreeMap<String, Spanned<RatePolicyConf>>,
    /// Rate-limit response headers.
    #[serde(default)]
    pub rate_limit_headers: RateLimitHeadersConf,
    /// Upstream pools by name.
    #[serde(default)]
    pub upstreams: BTreeMap<String, Spanned<UpstreamConf>>,
    /// Routes, matched in order; the first match wins.
    #[serde(default)]
    pub routes: Vec<Spanned<RouteConf>>,
    /// HTML pages by status (`"404" = "errors/404.html"`) for navigations on static routes;
    /// loaded into memory at config load. Default: a built-in page per status.
    #[serde(default)]
    pub error_pages: BTreeMap<String, Spanned<String>>,
}

/// Header rules for one side of a route: `remove`, then `set`, then `add`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HeaderRulesConf {
    /// Header names removed. Default `[]`.
    #[serde(default)]
    pub remove: Vec<String>,
    /// Name → value replacing any existing value. Default `{}`.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Name → value appended. Default `{}`.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
}

/// Maintenance mode.
#[derive(Debug, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceConf {
    /// Every route answers 503. Default false (routes can opt in with `maintenance = true`).
    #[serde(default)]
    pub enabled: bool,
    /// Client CIDRs/addresses still served. Default `[]`.
    #[serde(default)]
    pub allow: Vec<Spanned<String>>,
    /// `Retry-After` seconds. Default 300.
    #[serde(default)]
    pub retry_after: Option<u64>,
    /// HTML page for navigations (loaded into memory); default a built-in page.
    #[serde(default)]
    pub page: Option<Spanned<String>>,
}

/// Access log format.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogConf {
    /// JSON lines on stdout.
    #[default]
    Json,
    /// No access log.
    Off,
}

/// Admin listener settings.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AdminConf {
    /// File holding a bearer token required by `GET /config` and `POST /reload`; none = open
    /// (the admin listener is on loopback by default). Default none.
    #[serde(default)]
    pub token_file: Option<Spanned<String>>,
}

/// Process lifecycle settings (restart required to change).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessConf {
    /// Seconds after SIGTERM during which `/readyz` answers 503 while traffic is still served,
    /// so load balancers stop sending before listeners close. Default 5.
    pub readiness_drain_seconds: u64,
    /// Seconds in-flight requests get after the listeners closed, before runtimes stop.
    /// Default 5.
    pub shutdown_grace_seconds: u64,
    /// Seconds in-flight requests get to finish after listeners close. Default 10.
    pub shutdown_timeout_seconds: u64,
    /// Unix socket handing listeners to a new binary on graceful upgrade.
    /// Default `/tmp/gateway_upgrade.sock`.
    pub upgrade_sock: String,
    /// PID file. Default `/tmp/gateway.pid`.
    pub pid_file: String,
    /// Idle upstream keep-alive connections kept per worker thread. Default 128.
    pub upstream_keepalive_pool_size: usize,
    /// Let idle worker threads steal connections queued on busy ones (one multi-threaded
    /// runtime). Default false: each thread runs its own single-threaded runtime and keeps the
    /// connections it accepted, like nginx workers, which costs less CPU per request.
    pub work_stealing: bool,
}

impl Default for ProcessConf {
    fn default() -> Self {
        Self {
            readiness_drain_seconds: 5,
            shutdown_grace_seconds: 5,
            shutdown_timeout_seconds: 10,
            upgrade_sock: "/tmp/gateway_upgrade.sock".into(),
            pid_file: "/tmp/gateway.pid".into(),
            upstream_keepalive_pool_size: 128,
            work_stealing: false,
        }
    }
}

/// Listener addresses.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenersConf {
    /// HTTPS listener. Default `0.0.0.0:8443`.
    pub https: Spanned<String>,
    /// Plain-HTTP listener that redirects to HTTPS; empty string disables it. Default `0.0.0.0:8080`.
    pub http: Spanned<String>,
    /// Admin listener (metrics, probes). Default `127.0.0.1:9901`.
    pub admin: Spanned<String>,
    /// Port written into the HTTPS redirect; default: the port of `https`.
    pub redirect_https_port: Option<u16>,
    /// Per-connection write buffer under TLS, bytes. Default 0: a small response already
    /// leaves as one TLS record in one write (the head is held for the first body write) and
    /// larger ones as one `writev` of their records, so a buffer only costs memory on every
    /// idle connection (≈ 4 KB).
    pub write_buffer_bytes: usize,
    /// Per-connection read buffer under TLS, bytes. Default 0: rustls reads records into its
    /// own buffer; a separate buffer costs ≈ 7 KB on every idle connection. Upload-heavy
    /// sites may set 16384 for fewer read syscalls on large request bodies.
    pub read_buffer_bytes: usize,
}

impl Default for ListenersConf {
    fn default() -> Self {
        Self {
            https: Spanned::new(0..0, "0.0.0.0:8443".into()),
            http: Spanned::new(0..0, "0.0.0.0:8080".into()),
            admin: Spanned::new(0..0, "127.0.0.1:9901".into()),
            redirect_https_port: None,
            write_buffer_bytes: 0,
            read_buffer_bytes: 0,
        }
    }
}

/// TLS termination.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConf {
    /// `Strict-Transport-Security` max-age in seconds; 0 disables the header. Default 31536000.
    #[serde(default = "default_hsts")]
    pub hsts_max_age: u64,
    /// Add `includeSubDomains` to HSTS. Default false.
    #[serde(default)]
    pub hsts_include_subdomains: bool,
    /// Certificate/key pairs; exactly one is the default.
    pub certificates: Vec<Spanned<CertificateConf>>,
}

fn default_hsts() -> u64 {
    31_536_000
}

/// One certificate chain and its private key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConf {
    /// Name used in logs and metrics.
    pub name: String,
    /// PEM certificate chain, leaf first; relative to the config file's directory.
    pub cert: Spanned<String>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1); relative to the config file's directory.
    pub key: Spanned<String>,
    /// SNI names served (exact or `*.example.com`); default: the certificate's DNS SANs.
    #[serde(default)]
    pub server_names: Vec<String>,
    /// Served when SNI is absent or matches no certificate. Default false (the first one if none is).
    #[serde(default)]
    pub default: bool,
}

/// Who the client is, behind load balancers.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct ClientIpConf {
    /// CIDRs of proxies in front of the gateway. Only when the TCP peer is one of them is
    /// `X-Forwarded-For` read (from the right, first untrusted address) and appended to;
    /// otherwise it is replaced. Default `[]`.
    pub trusted_proxies: Vec<Spanned<String>>,
    /// IPv6 clients are keyed by this prefix length for rate limiting. Default 64.
    pub ipv6_prefix: u8,
}

impl Default for ClientIpConf {
    fn default() -> Self {
        Self {
            trusted_proxies: Vec::new(),
            ipv6_prefix: 64,
        }
    }
}

/// A policy applied by a route, optionally only to some methods and paths.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum RouteRateConf {
    /// Just a policy name: every request of the route.
    Name(String),
    /// A policy for some requests.
    Rule {
        /// Policy name.
        policy: String,
        /// Methods; empty = all.
        #[serde(default)]
        methods: Vec<String>,
        /// Exact paths, or prefixes ending in `/*`; empty = all.
        #[serde(default)]
        paths: Vec<String>,
    },
}

/// Request size limits and strictness.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConf {
    /// Largest request body in bytes (413 above). Default 10485760 (10 MiB).
    pub max_body_bytes: u64,
    /// Largest request header block in bytes, names + values (431 above). Default 32768.
    pub max_header_bytes: usize,
    /// Largest single header (name + value) in bytes (431 above); `Authorization` and `Cookie`
    /// are bounded by `max_header_bytes` and the JWT `max_token_bytes` instead. Default 8192.
    pub max_one_header_bytes: usize,
    /// Most request headers (431 above). Default 100.
    pub max_headers: usize,
    /// Longest request target in bytes (414 above). Default 8192.
    pub max_uri_bytes: usize,
    /// Refuse header names containing `_` (they alias `-` in many stacks). Default true.
    pub reject_underscore_headers: bool,
    /// Merge `//` in paths before routing. Default true.
    pub merge_slashes: bool,
    /// Deadline for a whole HTTP/1 request head (from the connection's start or its first
    /// byte), ms; the connection is closed when it passes. 0 = off. Default 10000.
    pub header_timeout_ms: u64,
    /// Concurrent connections one client IP may hold; more are closed at once. 0 = no cap.
    /// Default 1024.
    pub max_connections_per_ip: u32,
    /// Deadline for a TLS handshake, from accept to the handshake's end, ms; the connection is
    /// closed when it passes. 0 = off (pingora's own 60 s remains). Default 10000.
    pub tls_handshake_timeout_ms: u64,
    /// After an answer written before the request body was read (401, 403, 413, 429…), read
    /// and drop at most this many more body bytes so a client still uploading sees a normal
    /// end: on HTTP/2 past it (or `discard_body_timeout_ms`) the stream is reset with NO_ERROR
    /// after the answer; on HTTP/1.1 the connection closes after the discard (a lingering
    /// close). 0 = no discard (HTTP/2: reset at once; HTTP/1.1: close at once, and unread bytes
    /// may make the kernel reset the answer away). Default 67108864 (64 MiB).
    pub discard_body_max_bytes: u64,
    /// Time bound of that discarding, ms. Default 10000.
    pub discard_body_timeout_ms: u64,
}

impl Default for LimitsConf {
    fn default() -> Self {
        Self {
            max_body_bytes: 10 * 1024 * 1024,
            max_header_bytes: 32 * 1024,
            max_one_header_bytes: 8192,
            max_headers: 100,
            max_uri_bytes: 8192,
            reject_underscore_headers: true,
            merge_slashes: true,
            header_timeout_ms: 10_000,
            max_connections_per_ip: 1024,
            tls_handshake_timeout_ms: 10_000,
            discard_body_max_bytes: 64 * 1024 * 1024,
            discard_body_timeout_ms: 10_000,
        }
    }
}

/// Security headers; an empty string leaves a header out.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityHeadersConf {
    /// Default: `default-src 'self'; base-uri 'self'; object-src 'none'; frame-ancestors 'none'; form-action 'self'`.
    pub content_security_policy: String,
    /// Default `DENY`.
    pub frame_options: String,
    /// Default `strict-origin-when-cross-origin`.
    pub referrer_policy: String,
    /// Default `camera=(), microphone=(), geolocation=(), payment=()`.
    pub permissions_policy: String,
    /// `X-Content-Type-Options: nosniff`. Default true.
    pub nosniff: bool,
}

impl Default for SecurityHeadersConf {
    fn default() -> Self {
        Self {
            content_security_policy: "default-src 'self'; base-uri 'self'; object-src 'none'; frame-ancestors 'none'; form-action 'self'".into(),
            frame_options: "DENY".into(),
            referrer_policy: "strict-origin-when-cross-origin".into(),
            permissions_policy: "camera=(), microphone=(), geolocation=(), payment=()".into(),
            nosniff: true,
        }
    }
}

/// Identity headers: removed from every client request, whatever the route.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConf {
    /// Default `["X-Auth-Subject", "X-Auth-Scopes", "X-Auth-Claims"]`.
    pub strip_headers: Vec<String>,
    /// Key file (first line: the key, ≥ 32 bytes) to sign the identity headers sent upstream
    /// with `X-Auth-Signature` (HMAC-SHA256 over method, path, request id, time and the
    /// headers), for a backend that must not trust a bare `X-Auth-Subject`. Default: none.
    pub signing_key_file: Option<Spanned<String>>,
}

fn default_strip() -> Vec<String> {
    vec![
        "X-Auth-Subject".into(),
        "X-Auth-Scopes".into(),
        "X-Auth-Claims".into(),
    ]
}

impl Default for IdentityConf {
    fn default() -> Self {
        Self {
            strip_headers: default_strip(),
            signing_key_file: None,
        }
    }
}

/// A route's `auth`: a token required or not; anything else is kept as written so validation
/// reports it with the file's other problems (serde would stop at the first).
#[derive(Debug, Deserialize, Clone, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuthModeConf {
    /// A valid JWT of the route's provider.
    Jwt,
    /// No check.
    None,
    /// Neither: refused by validation.
    #[serde(untagged)]
    Unknown(String),
}

/// What a route does with a matching request.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RouteKindConf {
    /// Reverse-proxy to `upstream`.
    Proxy,
    /// Serve files from `root`.
    Static,
}

/// One route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConf {
    /// Name used in logs and metric labels.
    pub name: String,
    /// Path prefix, matched on whole segments (`/api` matches `/api` and `/api/x`, not `/apix`).
    pub prefix: String,
    /// Only for this `Host` (port ignored, case-insensitive); default: any host.
    #[serde(default)]
    pub host: Option<String>,
    /// `proxy` or `static`.
    pub kind: RouteKindConf,
    /// Pool name, for `proxy` routes (or `upstreams`).
    #[serde(default)]
    pub upstream: Option<Spanned<String>>,
    /// Proxy: several pools with weights instead of `upstream` (blue-green, canary), e.g.
    /// `[{ pool = "blue", weight = 90 }, { pool = "green", weight = 10 }]`; weights are
    /// relative, 0 takes only pinned requests, the sum must be above 0. Default none.
    #[serde(default)]
    pub upstreams: Option<Spanned<Vec<WeightedPoolConf>>>,
    /// Proxy with `upstreams`: requests sent to a pool whatever the weights, first match wins,
    /// e.g. `[{ header = "x-canary", value = "1", pool = "green" }]` or `{ cookie = "canary",
    /// pool = "green" }` (no `value`: any non-empty value). Default `[]`.
    #[serde(default)]
    pub pin: Vec<Spanned<PinConf>>,
    /// Proxy with `upstreams`: keep a client on the pool it was first given, with a signed
    /// cookie: `{ key_file = "secrets/sticky.key", cookie = "gw_pool", max_age_seconds =
    /// 86400 }`. Default none (every request decided by pins and weights).
    #[serde(default)]
    pub sticky: Option<Spanned<StickyConf>>,
    /// Remove `prefix` from the path sent upstream. Default false.
    #[serde(default)]
    pub strip_prefix: bool,
    /// Directory served, for `static` routes; relative to the config file's directory.
    #[serde(default)]
    pub root: Option<Spanned<String>>,
    /// Static: file served for navigations that match no file (SPA fallback); "" disables.
    /// Default `index.html`.
    #[serde(default)]
    pub fallback: Option<String>,
    /// Static: path prefixes that never fall back (proxy route prefixes are always added).
    /// Default `[]`.
    #[serde(default)]
    pub fallback_exclude: Vec<String>,
    /// Static: regex on the file name marking fingerprinted files (cached immutable for a year).
    /// Default `[.-][0-9a-fA-F]{8,}\.[A-Za-z0-9]+$`.
    #[serde(default)]
    pub fingerprint_pattern: Option<Spanned<String>>,
    /// Static: `Cache-Control` of files neither fingerprinted nor HTML. Default `public, max-age=300`.
    #[serde(default)]
    pub default_cache_control: Option<String>,
    /// Static: glob (on the path, e.g. `/fonts/*.woff2`) → `Cache-Control`, first match wins.
    #[serde(default)]
    pub cache_control: Vec<CacheRuleConf>,
    /// Static: files up to this size are served from memory; larger ones from disk. Default 1048576.
    #[serde(default)]
    pub max_memory_file_bytes: Option<u64>,
    /// Static: after a deploy changes the files, fingerprinted files of the previous bundle stay
    /// servable this long (browsers holding the old shell still load their chunks). Default 600.
    #[serde(default)]
    pub previous_assets_grace_seconds: Option<u64>,
    /// CORS policy of the route (preflights answered at the edge). Default none.
    #[serde(default)]
    pub cors: Option<Spanned<CorsConf>>,
    /// Proxy: compress responses (br, gzip, zstd by `Accept-Encoding`). Default false.
    #[serde(default)]
    pub compress: bool,
    /// Proxy: compression level (1 fastest … 9). Default 4.
    #[serde(default)]
    pub compress_level: Option<u32>,
    /// Proxy: smallest `Content-Length` compressed, bytes. Default 1024.
    #[serde(default)]
    pub compress_min_bytes: Option<u64>,
    /// Proxy: content types compressed (prefix match, e.g. `text/`). Default: text/*, JSON,
    /// JavaScript, XML, SVG.
    #[serde(default)]
    pub compress_types: Option<Vec<String>>,
    /// Proxy: header rules for the request sent upstream. Default none.
    #[serde(default)]
    pub request_headers: Option<Spanned<HeaderRulesConf>>,
    /// Header rules for responses sent to clients (proxied and static). Default none.
    #[serde(default)]
    pub response_headers: Option<Spanned<HeaderRulesConf>>,
    /// Proxy: replace upstream 5xx bodies with the gateway's error (JSON, or the HTML page
    /// for navigations). Default false: upstream bodies pass through.
    #[serde(default)]
    pub replace_upstream_errors: bool,
    /// Answer 503 (maintenance) on this route, except for `[maintenance] allow`. Default false.
    #[serde(default)]
    pub maintenance: bool,
    /// Rate-limit policies applied, in order: names or `{ policy, methods, paths }`. Default `[]`.
    #[serde(default)]
    pub rate_limits: Vec<RouteRateConf>,
    /// `"jwt"` to require a valid token, `"none"` for no check. Default `"none"`.
    #[serde(default)]
    pub auth: Option<Spanned<AuthModeConf>>,
    /// Provider name from `[jwt_providers]`, with `auth = "jwt"`.
    #[serde(default)]
    pub auth_provider: Option<Spanned<String>>,
    /// Requests that need no token: `"METHOD /path"` or `"/path"` (any method); a path ending
    /// in `/*` matches below it. Default `[]`.
    #[serde(default)]
    pub auth_public: Vec<String>,
    /// Scopes required per method. Default `[]`.
    #[serde(default)]
    pub auth_scopes: Vec<ScopeRuleConf>,
}

/// A per-glob `Cache-Control` override.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct CacheRuleConf {
    /// Glob on the URL path, e.g. `/fonts/*.woff2` or `*.json`.
    pub glob: String,
    /// The `Cache-Control` value.
    pub value: String,
}
