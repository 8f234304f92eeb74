//! `[security_headers]` and HSTS: header values checked at load.

use super::super::file::{GatewayConf, SecurityHeadersConf};
use super::super::source::{Problem, Source};
use crate::http::security_headers::SecurityHeaders;

/// The compiled security headers.
pub fn security_headers(
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

/// The `Strict-Transport-Security` value, if enabled.
pub fn hsts(conf: &GatewayConf) -> Option<http::HeaderValue> {
    let hsts = (conf.tls.hsts_max_age > 0).then(|| {
        let mut v = format!("max-age={}", conf.tls.hsts_max_age);
        if conf.tls.hsts_include_subdomains {
            v.push_str("; includeSubDomains");
        }
        http::HeaderValue::from_str(&v)
            .unwrap_or_else(|_| http::HeaderValue::from_static("max-age=31536000"))
    });

    hsts
}
