//! [`EdgeResponse`]: an answer the gateway writes itself — status, headers, body, and whether
//! the connection closes after it. The request phases return one; the proxy dispatcher, the
//! admin listener and the redirect listener are the only code that writes it out.
//!
//! Headers go straight into an `http` map: pingora's `insert_header` title-cases each name
//! into a fresh buffer and parses it back (≈ 300 instructions a header, ≈ 15 headers a static
//! response); a head the gateway builds has no header case to keep.

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use pingora_http::ResponseHeader;
use std::path::PathBuf;

/// Content type of the gateway's HTML pages (errors, maintenance).
pub const HTML: &str = "text/html; charset=utf-8";
/// Content type of the gateway's JSON answers.
pub const JSON: &str = "application/json";

/// What follows the head.
#[derive(Debug, Clone)]
pub enum Body {
    /// No body (204, 304, HEAD, a zero-length range).
    Empty,
    /// Bytes in memory.
    Bytes(Bytes),
    /// `[start, end)` of a file, streamed (large static files).
    File {
        /// The file.
        path: PathBuf,
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
}

impl Body {
    /// Body bytes that will be sent.
    pub fn len(&self) -> u64 {
        match self {
            Body::Empty => 0,
            Body::Bytes(b) => b.len() as u64,
            Body::File { start, end, .. } => end - start,
        }
    }

    /// Whether no body byte will be sent.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An answer written by the gateway.
#[derive(Debug)]
pub struct EdgeResponse {
    /// Status, version and headers.
    pub head: http::response::Parts,
    /// What follows the head.
    pub body: Body,
    /// Close the connection after this answer (HTTP/1.1) — the request's bytes could not be
    /// trusted to frame a next request.
    pub close: bool,
}

impl EdgeResponse {
    /// An empty answer with `status` and room for `headers` headers.
    pub fn new(status: StatusCode, headers: usize) -> Self {
        let mut head = http::Response::new(()).into_parts().0;
        head.status = status;
        head.headers.reserve(headers);
        Self {
            head,
            body: Body::Empty,
            close: false,
        }
    }

    /// The status as a number.
    pub fn status(&self) -> u16 {
        self.head.status.as_u16()
    }

    /// Sets a header, replacing an earlier value.
    pub fn put(&mut self, name: HeaderName, value: HeaderValue) {
        self.head.headers.insert(name, value);
    }

    /// `body` with its `Content-Type` and `Content-Length`.
    pub fn with_body(mut self, content_type: &'static str, body: Bytes) -> Self {
        self.put(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static(content_type),
        );
        self.put(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        self.body = Body::Bytes(body);
        self
    }

    /// The same answer, closing the connection after it.
    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    /// The pingora head to send (no header case map: names go out in their canonical form).
    pub fn take_head(&mut self) -> ResponseHeader {
        let placeholder = http::Response::new(()).into_parts().0;
        ResponseHeader::from(std::mem::replace(&mut self.head, placeholder))
    }

    /// The answer as a plain `http` response, for pingora's `ServeHttp` apps (admin, redirect),
    /// which own the connection handling themselves. A file body is read whole.
    pub fn into_http(self) -> http::Response<Vec<u8>> {
        let body = match self.body {
            Body::Empty => Vec::new(),
            Body::Bytes(b) => b.to_vec(),
            Body::File { path, start, end } => match std::fs::read(&path) {
                Ok(data) => data
                    .get(start as usize..end as usize)
                    .map(<[u8]>::to_vec)
                    .unwrap_or_default(),
                Err(_) => Vec::new(),
            },
        };
        http::Response::from_parts(self.head, body)
    }
}

/// The machine-readable error name for a status the gateway produces.
pub fn error_name(status: u16) -> &'static str {
    match status {
        400 => "bad_request",
        404 => "not_found",
        405 => "method_not_allowed",
        406 => "not_acceptable",
        416 => "range_not_satisfiable",
        408 => "request_timeout",
        413 => "payload_too_large",
        417 => "expectation_failed",
        414 => "uri_too_long",
        431 => "request_header_fields_too_large",
        502 => "bad_gateway",
        503 => "service_unavailable",
        504 => "gateway_timeout",
        _ if status >= 500 => "internal_error",
        _ => "error",
    }
}

/// Builds the JSON body of an error. Request ids are validated tokens, so no escaping needed.
pub fn error_body(error: &str, request_id: &str) -> Bytes {
    Bytes::from(format!(
        "{{\"error\":\"{error}\",\"request_id\":\"{request_id}\"}}"
    ))
}

/// Setting a header on a response head: pingora's head, the plain `http` map, or an answer.
pub trait PutHeader {
    /// Sets `name` to `value`, replacing any earlier value.
    fn put(&mut self, name: HeaderName, value: HeaderValue);
}

impl PutHeader for ResponseHeader {
    fn put(&mut self, name: HeaderName, value: HeaderValue) {
        let _ = self.insert_header(name, value);
    }
}

impl PutHeader for http::HeaderMap {
    fn put(&mut self, name: HeaderName, value: HeaderValue) {
        self.insert(name, value);
    }
}

impl PutHeader for EdgeResponse {
    fn put(&mut self, name: HeaderName, value: HeaderValue) {
        self.head.headers.insert(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_is_json() {
        let b = error_body("not_found", "abc");
        let v: serde_json::Value = serde_json::from_slice(&b).expect("json");
        assert_eq!(v["error"], "not_found");
        assert_eq!(v["request_id"], "abc");
    }

    #[test]
    fn a_body_sets_its_length_and_type() {
        let r = EdgeResponse::new(StatusCode::NOT_FOUND, 4).with_body(JSON, Bytes::from("{}"));
        assert_eq!(r.head.headers["content-length"], "2");
        assert_eq!(r.head.headers["content-type"], JSON);
        assert_eq!(r.body.len(), 2);
        assert!(!r.close);
        assert!(r.closing().close);
    }
}
