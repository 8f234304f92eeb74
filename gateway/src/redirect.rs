//! Plain-HTTP listener: every request gets `308 Permanent Redirect` to the same host, path and
//! query on HTTPS. 308 (not 301) so a POST stays a POST.

use crate::state::SharedRuntime;
use async_trait::async_trait;
use http::{Response, StatusCode};
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
        let built = match location(host, pq, port) {
            Some(loc) => Response::builder()
                .status(StatusCode::PERMANENT_REDIRECT)
                .header("Location", loc)
                .header("Content-Length", 0)
                .body(Vec::new()),
            None => {
                let body = br#"{"error":"bad_request"}"#.to_vec();
                Response::builder()
                    .status(StatusCode::BAD_REQUEST)
                    .header("Content-Type", "application/json")
                    .header("Content-Length", body.len())
                    .header("Connection", "close")
                    .body(body)
            }
        };
        built.unwrap_or_else(|_| Response::new(Vec::new()))
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
