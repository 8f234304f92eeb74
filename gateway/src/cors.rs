//! CORS at the edge: preflights answered here (204, or 403 for a disallowed origin) before
//! any token check or upstream work; simple responses get `Access-Control-Allow-Origin`
//! echoing the allowed origin, with `Vary: Origin`.

use http::{HeaderName, HeaderValue, Method};
use pingora_http::{RequestHeader, ResponseHeader};
use serde::Deserialize;

/// Why a CORS policy was refused.
#[derive(Debug, thiserror::Error)]
pub enum CorsError {
    #[error("allow_origins = [\"*\"] cannot be combined with allow_credentials = true")]
    WildcardWithCredentials,
    #[error("`{0}` is not an origin (scheme://host[:port], optionally with *. before the host)")]
    BadOrigin(String),
    #[error("`{0}` is not a method")]
    BadMethod(String),
    #[error("`{0}` is not a header name")]
    BadHeader(String),
}

#[derive(Debug, Clone)]
enum OriginRule {
    Any,
    Exact(String),
    /// scheme + "://" and the domain suffix (".example.com"), optional ":port" kept in suffix.
    Subdomain {
        scheme: String,
        suffix: String,
    },
}

/// A compiled CORS policy.
#[derive(Debug, Clone)]
pub struct Cors {
    origins: Vec<OriginRule>,
    methods: Vec<Method>,
    methods_header: HeaderValue,
    headers: Vec<String>,
    any_header: bool,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: HeaderValue,
}

impl Cors {
    /// Compiles a policy.
    pub fn try_from_conf(c: &CorsConf) -> Result<Self, CorsError> {
        let mut origins = Vec::new();
        for o in &c.allow_origins {
            let o = o.trim().trim_end_matches('/').to_ascii_lowercase();
            if o == "*" {
                if c.allow_credentials {
                    return Err(CorsError::WildcardWithCredentials);
                }
                origins.push(OriginRule::Any);
                continue;
            }
            let (scheme, rest) = o
                .split_once("://")
                .ok_or_else(|| CorsError::BadOrigin(o.clone()))?;
            if !(scheme == "http" || scheme == "https") || rest.is_empty() || rest.contains('/') {
                return Err(CorsError::BadOrigin(o.clone()));
            }
            match rest.strip_prefix("*.") {
                Some(suffix) if !suffix.is_empty() => origins.push(OriginRule::Subdomain {
                    scheme: scheme.to_string(),
                    suffix: format!(".{suffix}"),
                }),
                Some(_) => return Err(CorsError::BadOrigin(o.clone())),
                None => origins.push(OriginRule::Exact(o.clone())),
            }
        }
        let mut methods = Vec::new();
        for m in &c.allow_methods {
            methods.push(
                Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes())
                    .map_err(|_| CorsError::BadMethod(m.clone()))?,
            );
        }
        let mut headers = Vec::new();
        let mut any_header = false;
        for h in &c.allow_headers {
            if h.trim() == "*" && !c.allow_credentials {
                any_header = true;
                continue;
            }
            HeaderName::from_bytes(h.trim().as_bytes())
                .map_err(|_| CorsError::BadHeader(h.clone()))?;
            headers.push(h.trim().to_ascii_lowercase());
        }
        let join = |v: Vec<String>| HeaderValue::from_str(&v.join(", ")).ok();
        Ok(Self {
            origins,
            methods_header: join(methods.iter().map(|m| m.to_string()).collect())
                .unwrap_or_else(|| HeaderValue::from_static("GET")),
            methods,
            headers,
            any_header,
            expose: (!c.expose_headers.is_empty())
                .then(|| join(c.expose_headers.clone()))
                .flatten(),
            credentials: c.allow_credentials,
            max_age: HeaderValue::from(c.max_age),
        })
    }

    /// Whether `origin` (as sent) is allowed.
    pub fn allows(&self, origin: &str) -> bool {
        let o = origin.to_ascii_lowercase();
        self.origins.iter().any(|r| match r {
            OriginRule::Any => true,
            OriginRule::Exact(e) => *e == o,
            OriginRule::Subdomain { scheme, suffix } => o
                .strip_prefix(scheme.as_str())
                .and_then(|rest| rest.strip_prefix("://"))
                .is_some_and(|host| host.len() > suffix.len() && host.ends_with(suffix.as_str())),
        })
    }
}

/// The outcome of looking at a request.
#[derive(Debug)]
pub enum Preflight {
    /// Not a preflight: continue.
    NotPreflight,
    /// Answer 204 with these headers.
    Allowed(Vec<(HeaderName, HeaderValue)>),
    /// Answer 403, no CORS headers.
    Refused,
}

/// Whether `req` is a preflight, and its answer.
pub fn preflight(cors: &Cors, req: &RequestHeader) -> Preflight {
    if req.method != Method::OPTIONS {
        return Preflight::NotPreflight;
    }
    let (Some(origin), Some(method)) = (
        req.headers.get(http::header::ORIGIN),
        req.headers.get(http::header::ACCESS_CONTROL_REQUEST_METHOD),
    ) else {
        return Preflight::NotPreflight;
    };
    let Ok(origin_s) = origin.to_str() else {
        return Preflight::Refused;
    };
    if !cors.allows(origin_s) {
        return Preflight::Refused;
    }
    let method_ok = Method::from_bytes(method.as_bytes())
        .is_ok_and(|m| cors.methods.contains(&m) || m == Method::GET || m == Method::HEAD);
    if !method_ok {
        return Preflight::Refused;
    }
    let requested: Vec<String> = req
        .headers
        .get_all(http::header::ACCESS_CONTROL_REQUEST_HEADERS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .collect();
    if !cors.any_header && requested.iter().any(|h| !cors.headers.contains(h)) {
        return Preflight::Refused;
    }
    let mut out = vec![
        (http::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone()),
        (
            http::header::ACCESS_CONTROL_ALLOW_METHODS,
            cors.methods_header.clone(),
        ),
        (http::header::ACCESS_CONTROL_MAX_AGE, cors.max_age.clone()),
        (
            http::header::VARY,
            HeaderValue::from_static(
                "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
            ),
        ),
    ];
    if !requested.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&requested.join(", ")) {
            out.push((http::header::ACCESS_CONTROL_ALLOW_HEADERS, v));
        }
    }
    if cors.credentials {
        out.push((
            http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        ));
    }
    Preflight::Allowed(out)
}

/// Adds the CORS headers of an actual (non-preflight) response.
pub fn response_filter(cors: &Cors, origin: Option<&HeaderValue>, resp: &mut ResponseHeader) {
    let _ = resp.append_header(http::header::VARY, "Origin");
    let Some(origin) = origin else { return };
    if !origin.to_str().is_ok_and(|o| cors.allows(o)) {
        return;
    }
    let _ = resp.insert_header(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    if cors.credentials {
        let _ = resp.insert_header(http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true");
    }
    if let Some(e) = &cors.expose {
        let _ = resp.insert_header(http::header::ACCESS_CONTROL_EXPOSE_HEADERS, e.clone());
    }
}

/// CORS policy.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CorsConf {
    /// Allowed origins: exact (`https://app.example.com`), wildcard subdomain
    /// (`https://*.example.com`), or `*` (not with credentials).
    pub allow_origins: Vec<String>,
    /// Allowed methods. Default `["GET", "HEAD", "POST"]`.
    #[serde(default = "default_cors_methods")]
    pub allow_methods: Vec<String>,
    /// Allowed request headers (case-insensitive). Default `["content-type", "authorization"]`.
    #[serde(default = "default_cors_headers")]
    pub allow_headers: Vec<String>,
    /// Response headers exposed to scripts. Default `[]`.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Send `Access-Control-Allow-Credentials: true`. Default false.
    #[serde(default)]
    pub allow_credentials: bool,
    /// Preflight cache lifetime, seconds. Default 600.
    #[serde(default = "default_cors_max_age")]
    pub max_age: u64,
}

fn default_cors_methods() -> Vec<String> {
    vec!["GET".into(), "HEAD".into(), "POST".into()]
}

fn default_cors_headers() -> Vec<String> {
    vec!["content-type".into(), "authorization".into()]
}

fn default_cors_max_age() -> u64 {
    600
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(origins: &[&str], creds: bool) -> CorsConf {
        CorsConf {
            allow_origins: origins.iter().map(|s| s.to_string()).collect(),
            allow_methods: vec!["GET".into(), "POST".into(), "DELETE".into()],
            allow_headers: vec!["content-type".into(), "authorization".into()],
            expose_headers: vec![],
            allow_credentials: creds,
            max_age: 60,
        }
    }

    #[test]
    fn origins_match_exactly_or_by_subdomain() {
        let c = Cors::try_from_conf(&conf(
            &["https://app.example.com", "https://*.example.org"],
            true,
        ))
        .expect("cors");
        assert!(c.allows("https://app.example.com"));
        assert!(c.allows("https://a.b.example.org"));
        assert!(!c.allows("https://example.org"));
        assert!(!c.allows("https://evilexample.org"));
        assert!(!c.allows("http://app.example.com"));
        assert!(!c.allows("https://app.example.com.evil.test"));
        assert!(matches!(
            Cors::try_from_conf(&conf(&["*"], true)),
            Err(CorsError::WildcardWithCredentials)
        ));
    }
}
