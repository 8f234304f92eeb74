//! The compiled runtime snapshot every request reads.
//!
//! A [`Runtime`] is immutable once built by [`crate::config::load`]; a reload builds a new one
//! aside and swaps it into the one [`SharedRuntime`]. A request takes its snapshot once, when
//! its context is created, so it never sees two config generations.

use crate::route::Route;
use crate::tls::CertSet;
use crate::upstream::Pool;
use std::collections::HashMap;
use std::sync::Arc;

/// Request size limits and strictness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted request body (413 above).
    pub max_body_bytes: u64,
    /// Largest accepted header block, names + values (431 above).
    pub max_header_bytes: usize,
    /// Largest single header (431 above).
    pub max_one_header_bytes: usize,
    /// Most headers (431 above).
    pub max_headers: usize,
    /// Longest request target (414 above).
    pub max_uri_bytes: usize,
    /// Refuse `_` in header names.
    pub reject_underscore_headers: bool,
    /// Merge `//` in paths.
    pub merge_slashes: bool,
    /// Deadline for a whole HTTP/1 request head (`None`: off).
    pub header_timeout: Option<std::time::Duration>,
    /// Concurrent connections per client IP (0: no cap).
    pub max_connections_per_ip: u32,
    /// Deadline for a TLS handshake (`None`: pingora's 60 s).
    pub tls_handshake_timeout: Option<std::time::Duration>,
    /// Body bytes read and dropped after an early answer (HTTP/2: before the stream is reset;
    /// HTTP/1.1: before the connection closes).
    pub discard_body_max_bytes: u64,
    /// Time bound of that discarding.
    pub discard_body_timeout: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 10 * 1024 * 1024,
            max_header_bytes: 32 * 1024,
            max_one_header_bytes: 8192,
            max_headers: 100,
            max_uri_bytes: 8192,
            reject_underscore_headers: true,
            merge_slashes: true,
            header_timeout: Some(std::time::Duration::from_secs(10)),
            max_connections_per_ip: 1024,
            tls_handshake_timeout: Some(std::time::Duration::from_secs(10)),
            discard_body_max_bytes: 64 * 1024 * 1024,
            discard_body_timeout: std::time::Duration::from_secs(10),
        }
    }
}

/// Listener addresses; these only change with a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listeners {
    /// HTTPS `ip:port`.
    pub https: String,
    /// Plain-HTTP redirect `ip:port`, if enabled.
    pub http: Option<String>,
    /// Admin `ip:port`.
    pub admin: String,
    /// Port written into HTTPS redirects.
    pub redirect_https_port: u16,
    /// HTTPS connection write buffer.
    pub write_buffer_bytes: usize,
    /// HTTPS connection read buffer.
    pub read_buffer_bytes: usize,
}

/// Process settings (restart required to change).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    /// Seconds `/readyz` is 503 after SIGTERM before listeners close.
    pub readiness_drain_seconds: u64,
    /// Seconds between closing listeners and stopping runtimes.
    pub shutdown_grace_seconds: u64,
    /// Seconds in-flight requests get after listeners close.
    pub shutdown_timeout_seconds: u64,
    /// Upgrade socket path.
    pub upgrade_sock: String,
    /// PID file path.
    pub pid_file: String,
    /// Idle upstream connections kept per thread.
    pub upstream_keepalive_pool_size: usize,
    /// One work-stealing runtime instead of one runtime per thread.
    pub work_stealing: bool,
}

/// Maintenance mode settings.
#[derive(Debug, Clone)]
pub struct Maintenance {
    /// All routes in maintenance.
    pub enabled: bool,
    /// Clients still served.
    pub allow: Vec<ipnet::IpNet>,
    /// `Retry-After` seconds.
    pub retry_after: u64,
    /// HTML page for navigations.
    pub page: bytes::Bytes,
}

/// Everything a request needs, compiled from one config generation.
#[derive(Debug)]
pub struct Runtime {
    /// 1 for the first config, +1 per successful reload.
    pub generation: u64,
    /// Routes in match order.
    pub routes: Vec<Route>,
    /// Upstream pools by name.
    pub pools: HashMap<String, Arc<Pool>>,
    /// Certificates for SNI selection.
    pub certs: CertSet,
    /// `Strict-Transport-Security` value, if enabled.
    pub hsts: Option<http::HeaderValue>,
    /// Request limits.
    pub limits: Limits,
    /// Maintenance mode.
    pub maintenance: Maintenance,
    /// Configured HTML error pages by status (navigations on static routes).
    pub error_pages: HashMap<u16, bytes::Bytes>,
    /// Rate-limit policies by name.
    pub rate_policies: HashMap<String, Arc<crate::rate_limit::RatePolicy>>,
    /// Which rate-limit headers to send.
    pub rate_limit_headers: crate::rate_limit::RateLimitHeadersConf,
    /// IPv6 prefix length for rate-limit keys.
    pub ipv6_prefix: u8,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// JWT providers by name.
    pub jwt_providers: HashMap<String, Arc<crate::auth::JwtProvider>>,
    /// Identity headers removed from every client request.
    pub strip_headers: Vec<http::HeaderName>,
    /// Signs the identity headers sent upstream (`[identity] signing_key_file`).
    pub identity_signer: Option<Arc<crate::identity::IdentitySigner>>,
    /// Security headers for gateway-written responses.
    pub security_headers: crate::http::security_headers::SecurityHeaders,
    /// Listener addresses (restart required to change).
    pub listeners: Listeners,
    /// Proxy worker threads (restart required to change).
    pub threads: usize,
    /// Process settings (restart required to change).
    pub process: Process,
    /// Files this runtime was built from (config, certificates, keys): watched for reload.
    pub watch_files: Vec<std::path::PathBuf>,
    /// Directories served (static roots): watched recursively.
    pub watch_dirs: Vec<std::path::PathBuf>,
    /// Write JSON access lines.
    pub access_log: bool,
    /// Bearer token for admin `/config` and `/reload`.
    pub admin_token: Option<String>,
    /// What the next reload diffs against.
    pub summary: crate::config::diff::Summary,
}

impl Runtime {
    /// First route matching `host` (without port, lower-case) and `path`.
    pub fn match_route(&self, host: &str, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.matches(host, path))
    }
}
