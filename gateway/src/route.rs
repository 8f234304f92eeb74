//! Routes: ordered prefix (+ optional host) matching.
//!
//! Prefixes match on whole path segments so `/api` never captures `/apix`. The list is short
//! and ordered like the config, so a linear scan beats any index and keeps "first match wins"
//! obvious to operators.

use crate::split::Split;
use crate::static_files::AssetBundle;
use std::sync::Arc;

/// What a matched route does.
#[derive(Debug)]
pub enum RouteKind {
    /// Proxy to a pool.
    Proxy {
        /// The pool, or the pools and how a request picks one.
        split: Split,
        /// Remove the route prefix before forwarding.
        strip_prefix: bool,
    },
    /// Serve files from an in-memory bundle.
    Static {
        /// The bundle.
        bundle: Arc<AssetBundle>,
    },
}

/// When proxied responses are compressed.
#[derive(Debug, Clone)]
pub struct Compress {
    /// Level for br, gzip and zstd.
    pub level: u32,
    /// Smallest `Content-Length` compressed.
    pub min_bytes: u64,
    /// Content-type prefixes compressed.
    pub types: Vec<String>,
}

impl Compress {
    /// Whether a response qualifies: success, not partial, not already encoded, transformable,
    /// not an event stream, a listed type, large enough (or of unknown length).
    pub fn applies(&self, resp: &pingora_http::ResponseHeader) -> bool {
        let h = &resp.headers;
        let status = resp.status.as_u16();
        if !(200..300).contains(&status) || status == 204 || status == 206 {
            return false;
        }
        if h.contains_key(http::header::CONTENT_ENCODING) {
            return false;
        }
        let has = |name: http::header::HeaderName, needle: &str| {
            h.get_all(name).iter().any(|v| {
                v.to_str()
                    .is_ok_and(|s| s.to_ascii_lowercase().contains(needle))
            })
        };
        if has(http::header::CACHE_CONTROL, "no-transform") {
            return false;
        }
        let Some(ct) = h
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        let ct = ct.to_ascii_lowercase();
        if ct.starts_with("text/event-stream")
            || !self.types.iter().any(|t| ct.starts_with(t.as_str()))
        {
            return false;
        }
        match h
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
        {
            Some(len) => len.trim().parse::<u64>().is_ok_and(|n| n >= self.min_bytes),
            None => true,
        }
    }
}

/// One compiled route.
#[derive(Debug)]
pub struct Route {
    /// Configured name; the only route label used in metrics and logs.
    pub name: String,
    /// Prefix without a trailing slash (`""` for `/`).
    prefix: String,
    host: Option<String>,
    /// What to do.
    pub kind: RouteKind,
    /// JWT policy, if the route requires tokens.
    pub auth: Option<crate::auth::RoutePolicy>,
    /// Rate-limit rules, in order.
    pub rate_rules: Vec<crate::rate_limit::RouteRule>,
    /// CORS policy.
    pub cors: Option<crate::cors::Cors>,
    /// Response compression of proxied responses.
    pub compress: Option<Compress>,
    /// This route answers 503 (maintenance).
    pub maintenance: bool,
    /// Header rules for the request sent upstream.
    pub request_rules: crate::headers::Rules,
    /// Header rules for responses (proxied and static).
    pub response_rules: crate::headers::Rules,
    /// Replace upstream 5xx bodies with the gateway's own error.
    pub replace_upstream_errors: bool,
    /// Metric handles labelled with this route's name.
    pub metrics: crate::metrics::RouteMetrics,
}

impl Route {
    /// Compiles a route; `prefix` must start with `/`.
    pub fn new(name: &str, prefix: &str, host: Option<&str>, kind: RouteKind) -> Self {
        Self {
            name: name.to_string(),
            prefix: prefix.trim_end_matches('/').to_string(),
            host: host.map(str::to_ascii_lowercase),
            kind,
            auth: None,
            rate_rules: Vec::new(),
            cors: None,
            compress: None,
            maintenance: false,
            request_rules: crate::headers::Rules::default(),
            response_rules: crate::headers::Rules::default(),
            replace_upstream_errors: false,
            metrics: crate::metrics::RouteMetrics::new(name),
        }
    }

    /// Whether `host` (any case, no port) and `path` fall under this route.
    pub fn matches(&self, host: &str, path: &str) -> bool {
        if let Some(h) = &self.host {
            if !h.eq_ignore_ascii_case(host) {
                return false;
            }
        }
        crate::path::prefix_matches(&self.prefix, path)
    }

    /// The prefix, without trailing slash.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `path` with this route's prefix removed (never empty: at least `/`).
    pub fn strip<'a>(&self, path: &'a str) -> &'a str {
        match path.strip_prefix(self.prefix.as_str()) {
            Some("") => "/",
            Some(rest) => rest,
            None => path,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn r(prefix: &str, host: Option<&str>) -> Route {
        let pool: crate::upstream::UpstreamConf =
            toml::from_str("peers = [\"127.0.0.1:9\"]").expect("conf");
        Route::new(
            "t",
            prefix,
            host,
            RouteKind::Proxy {
                split: Split::single(
                    "t",
                    Arc::new(crate::upstream::Pool::try_from_conf("p", &pool).expect("pool")),
                ),
                strip_prefix: false,
            },
        )
    }

    #[test]
    fn prefix_matches_whole_segments() {
        let api = r("/api", None);
        assert!(api.matches("x", "/api"));
        assert!(api.matches("x", "/api/"));
        assert!(api.matches("x", "/api/expenses"));
        assert!(!api.matches("x", "/apix"));
        assert!(!api.matches("x", "/"));
        let root = r("/", None);
        assert!(root.matches("x", "/"));
        assert!(root.matches("x", "/anything/at/all"));
    }

    #[test]
    fn host_must_match_when_set() {
        let h = r("/", Some("Example.COM"));
        assert!(h.matches("example.com", "/a"));
        assert!(!h.matches("other.com", "/a"));
    }

    #[test]
    fn strip_keeps_a_leading_slash() {
        let api = r("/api/", None);
        assert_eq!(api.strip("/api"), "/");
        assert_eq!(api.strip("/api/x?y"), "/x?y");
    }
}
