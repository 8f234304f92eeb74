//! Plain-HTTP listener: every request gets `308 Permanent Redirect` to the same host, path and
//! query on HTTPS. 308 (not 301) so a POST stays a POST.

use crate::http::edge_response::{EdgeResponse, JSON};
use crate::state::SharedRuntime;
use async_trait::async_trait;
use http::{HeaderValue, Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;

/// The redirect app.
pub struct Redirect {
    runtime: SharedRuntime,
}

impl Redirect {
    /// Redirect app over the shared runtime (for the HTTPS port).
    pub fn new(runtime: SharedRuntime) -> Self {
        Self { runtime }
    }
}

/// The `Location` for a request to `host` with `path_and_query`, on HTTPS `port`.
pub fn location(host: &str, path_and_query: &str, port: u16) -> Option<String> {
    let name = crate::http::host::valid_host(host)?;
    Some(if port == 443 {
        format!("https://{name}{path_and_query}")
    } else {
        format!("https://{name}:{port}{path_and_query}")
    })
}

#[async_trait]
impl ServeHttp for Redirect {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let port = self.runtime.load().listeners.redirect_https_port;
        let req = session.req_header();
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let pq = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let answer = match location(host, pq, port).and_then(|l| HeaderValue::from_str(&l).ok()) {
            Some(loc) => {
                let mut r = EdgeResponse::new(StatusCode::PERMANENT_REDIRECT, 2);
                r.put(http::header::LOCATION, loc);
                r.put(http::header::CONTENT_LENGTH, HeaderValue::from_static("0"));
                r
            }
            None => {
                // No request id on this listener: the connection is not the app's yet.
                let body = bytes::Bytes::from_static(br#"{"error":"bad_request"}"#);
                let mut r = EdgeResponse::new(StatusCode::BAD_REQUEST, 3).with_body(JSON, body);
                r.put(http::header::CONNECTION, HeaderValue::from_static("close"));
                r.closing()
            }
        };
        answer.into_http()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_keeps_path_and_query() {
        assert_eq!(
            location("example.com:8080", "/a/b?x=1&y=%20", 8443).as_deref(),
            Some("https://example.com:8443/a/b?x=1&y=%20")
        );
        assert_eq!(
            location("example.com", "/", 443).as_deref(),
            Some("https://example.com/")
        );
        assert_eq!(
            location("[::1]:8080", "/x", 8443).as_deref(),
            Some("https://[::1]:8443/x")
        );
    }

    #[test]
    fn hostile_hosts_are_refused() {
        for h in [
            "",
            "evil.com/path",
            "user@evil.com",
            "a b",
            "[::1",
            "x:99999",
            "evil.com\\x",
        ] {
            assert_eq!(location(h, "/", 443), None, "{h}");
        }
    }
}
