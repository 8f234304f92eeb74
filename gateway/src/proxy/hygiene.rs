//! Request hygiene, checked first in `request_filter` because it is the cheapest rejection:
//! it reads only the request head pingora already parsed, and refuses what nginx refuses (and
//! some of what nginx lets through) before routing, auth or any upstream work.
//!
//! Every refusal closes the connection (except 405/417, which are well-formed requests): a
//! request we could not make sense of leaves the byte stream in an unknown state.

use super::answer::{self, Verdict};
use super::ctx::Ctx;
use crate::runtime::Limits;
use http::{Method, Version};
use pingora_http::RequestHeader;
use pingora_proxy::Session;

/// Why a request head is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Header block, one header, or header count over the limits → 431.
    HeadersTooLarge,
    /// Request target over `max_uri_bytes` → 414.
    UriTooLong,
    /// Declared body over `max_body_bytes` → 413.
    BodyTooLarge,
    /// Unparseable or conflicting `Content-Length` → 400.
    BadContentLength,
    /// `Transfer-Encoding` other than one `chunked`, or with `Content-Length` → 400.
    BadTransferEncoding,
    /// HTTP/1.1 without `Host`, several `Host`s, or an invalid one → 400.
    BadHost,
    /// Spaces, control bytes, `"`, `<`, `>`, malformed `%` in the target → 400.
    BadTarget,
    /// Header name with `_` (when refused) → 400.
    BadHeaderName,
    /// `TRACE`, `CONNECT` → 405.
    MethodNotAllowed,
    /// `Expect` other than `100-continue` → 417.
    UnknownExpect,
}

impl Rejection {
    /// The status answered.
    pub fn status(self) -> u16 {
        match self {
            Rejection::HeadersTooLarge => 431,
            Rejection::UriTooLong => 414,
            Rejection::BodyTooLarge => 413,
            Rejection::MethodNotAllowed => 405,
            Rejection::UnknownExpect => 417,
            _ => 400,
        }
    }

    /// What was wrong, in a few words (the dry run's report).
    pub fn reason(self) -> &'static str {
        match self {
            Rejection::HeadersTooLarge => "header block or a header over the limits",
            Rejection::UriTooLong => "request target over max_uri_bytes",
            Rejection::BodyTooLarge => "declared body over max_body_bytes",
            Rejection::BadContentLength => "unparseable or conflicting Content-Length",
            Rejection::BadTransferEncoding => "Transfer-Encoding other than one chunked",
            Rejection::BadHost => "missing, repeated or invalid Host",
            Rejection::BadTarget => "byte or escape not allowed in the request target",
            Rejection::BadHeaderName => "header name with _",
            Rejection::MethodNotAllowed => "method not allowed",
            Rejection::UnknownExpect => "Expect other than 100-continue",
        }
    }

    /// Whether the connection must be closed after the answer.
    pub fn closes(self) -> bool {
        !matches!(self, Rejection::MethodNotAllowed | Rejection::UnknownExpect)
    }
}

/// A byte allowed raw in a request target: path characters, plus `/`, `?`, `[`, `]` and `%`
/// (escapes are checked apart).
fn target_byte_ok(b: u8) -> bool {
    crate::path::is_pchar(b) || matches!(b, b'/' | b'?' | b'[' | b']' | b'%')
}

/// Checks the raw request target: allowed bytes and well-formed `%XX` escapes only.
pub fn check_target(raw: &[u8]) -> bool {
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if !target_byte_ok(b) {
            return false;
        }
        if b == b'%' {
            let hex = |c: Option<&u8>| c.is_some_and(u8::is_ascii_hexdigit);
            if !(hex(raw.get(i + 1)) && hex(raw.get(i + 2))) {
                return false;
            }
            i += 3;
            continue;
        }
        i += 1;
    }
    true
}

/// `request_filter` step: checks the head against `limits`.
pub fn check_head(req: &RequestHeader, limits: &Limits) -> Result<(), Rejection> {
    let raw = req.raw_path();
    if raw.len() > limits.max_uri_bytes {
        return Err(Rejection::UriTooLong);
    }
    if !check_target(raw) {
        return Err(Rejection::BadTarget);
    }
    if req.headers.len() > limits.max_headers {
        return Err(Rejection::HeadersTooLarge);
    }
    let mut total = 0usize;
    for (n, v) in &req.headers {
        let one = n.as_str().len() + v.len() + 4;
        // Credentials are bounded by the whole-block limit and by the JWT provider's own
        // token cap, which answers an oversized token with a 401 the client understands.
        let credential = n == http::header::AUTHORIZATION || n == http::header::COOKIE;
        if one > limits.max_one_header_bytes && !credential {
            return Err(Rejection::HeadersTooLarge);
        }
        total += one;
        if limits.reject_underscore_headers && n.as_str().contains('_') {
            return Err(Rejection::BadHeaderName);
        }
    }
    if total > limits.max_header_bytes {
        return Err(Rejection::HeadersTooLarge);
    }
    if req.method == Method::TRACE || req.method == Method::CONNECT {
        return Err(Rejection::MethodNotAllowed);
    }
    // Host: required and single on HTTP/1.1; valid wherever present.
    let mut hosts = req.headers.get_all(http::header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (_, Some(_)) => return Err(Rejection::BadHost),
        (None, None) if req.version == Version::HTTP_11 => return Err(Rejection::BadHost),
        (Some(h), None) => {
            let ok = h
                .to_str()
                .ok()
                .and_then(crate::http::host::valid_host)
                .is_some();
            if !ok {
                return Err(Rejection::BadHost);
            }
            // An absolute-form target must name the same host.
            if let Some(auth) = req.uri.authority() {
                if !auth.as_str().eq_ignore_ascii_case(h.to_str().unwrap_or("")) {
                    return Err(Rejection::BadHost);
                }
            }
        }
        (None, None) => {}
    }
    // Framing: one unambiguous body length, or none.
    let mut te = req.headers.get_all(http::header::TRANSFER_ENCODING).iter();
    let has_te = match (te.next(), te.next()) {
        (None, _) => false,
        (Some(v), None) if v.as_bytes().eq_ignore_ascii_case(b"chunked") => true,
        _ => return Err(Rejection::BadTransferEncoding),
    };
    // Exactly one Content-Length of plain digits. Repeats are refused even when equal (as
    // nginx does): forwarding two would leave the backend to pick, and a list is never valid.
    let mut lengths = req.headers.get_all(http::header::CONTENT_LENGTH).iter();
    let declared: Option<u64> = match (lengths.next(), lengths.next()) {
        (None, _) => None,
        (Some(v), None) => {
            let text = v.as_bytes().trim_ascii();
            if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
                return Err(Rejection::BadContentLength);
            }
            let n = std::str::from_utf8(text)
                .ok()
                .and_then(|t| t.parse().ok())
                .ok_or(Rejection::BadContentLength)?;
            Some(n)
        }
        _ => return Err(Rejection::BadContentLength),
    };
    if has_te && (declared.is_some() || req.version == Version::HTTP_10) {
        return Err(Rejection::BadTransferEncoding);
    }
    if declared.is_some_and(|n| n > limits.max_body_bytes) {
        return Err(Rejection::BodyTooLarge);
    }
    if let Some(e) = req.headers.get(http::header::EXPECT) {
        if !e.as_bytes().eq_ignore_ascii_case(b"100-continue") {
            return Err(Rejection::UnknownExpect);
        }
    }
    Ok(())
}

/// Whether a raw HTTP/1 head has a header line named `name` (ASCII case-insensitive).
///
/// pingora drops `Content-Length` when `Transfer-Encoding` is present (RFC 9112 §6.3) before
/// our filters run; the raw head is the only place left to see that both were sent.
pub fn raw_has_header(raw: &[u8], name: &str) -> bool {
    raw.split(|b| *b == b'\n').skip(1).any(|line| {
        line.len() > name.len()
            && line[..name.len()].eq_ignore_ascii_case(name.as_bytes())
            && matches!(line[name.len()], b':' | b' ' | b'\t')
    })
}

/// Whether the request announces a body (which the gateway may not have read).
pub fn has_body(req: &RequestHeader) -> bool {
    req.headers.contains_key(http::header::TRANSFER_ENCODING)
        || req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

/// First step of every request: the request id and who the client is.
pub fn identify(session: &Session, ctx: &mut Ctx) {
    let peer_ip = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    identify_peer(session.req_header(), peer_ip, ctx);
}

/// [`identify`] on plain inputs: the head and the TCP peer's address (the dry run's entry).
pub fn identify_peer(req: &RequestHeader, peer_ip: Option<std::net::IpAddr>, ctx: &mut Ctx) {
    ctx.request_id =
        crate::request_id::from_client(req.headers.get("x-request-id").map(|v| v.as_bytes()));
    ctx.client.peer_ip = peer_ip;
    (ctx.client.ip, ctx.client.via_trusted_proxy) =
        crate::http::client_ip::client_ip(ctx.client.peer_ip, req, &ctx.rt.trusted_proxies);
}

/// The hygiene phase: the parsed head against the limits, plus what only the raw HTTP/1
/// bytes show (both `Transfer-Encoding` and `Content-Length`; a request line pingora had to
/// escape before parsing, `GET /a b HTTP/1.1`).
pub fn check(session: &Session, ctx: &mut Ctx) -> Verdict {
    let req = session.req_header();
    let both_te_and_cl = req.headers.contains_key(http::header::TRANSFER_ENCODING)
        && session
            .as_http1()
            .is_some_and(|h1| raw_has_header(&h1.get_headers_raw_bytes(), "content-length"));
    let escaped_line = session.as_http1().is_some_and(|h1| {
        (**h1.stream())
            .as_any()
            .downcast_ref::<crate::conn::stream::EdgeStream>()
            .is_some_and(|s| s.request_line_refused())
    });
    let raw = if both_te_and_cl {
        Some(Rejection::BadTransferEncoding)
    } else if escaped_line {
        Some(Rejection::BadTarget)
    } else {
        None
    };
    judge(req, ctx, raw)
}

/// The verdict on a parsed head, given what the raw bytes already refused (`raw`): the
/// rejection's answer, or continue. Plain inputs, so the dry run judges heads the same way.
pub fn judge(req: &RequestHeader, ctx: &mut Ctx, raw: Option<Rejection>) -> Verdict {
    let verdict = raw.map_or_else(|| check_head(req, &ctx.rt.limits), Err);
    let Err(rejection) = verdict else {
        return Verdict::Continue;
    };
    ctx.acct.unframed = matches!(
        rejection,
        Rejection::BadContentLength | Rejection::BadTransferEncoding
    );
    let mut answer = answer::error(req, ctx, rejection.status());
    if rejection.status() == 405 {
        answer.put(
            http::header::ALLOW,
            http::HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
        );
    }
    answer.close = rejection.closes();
    Verdict::Respond(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_body_bytes: 100,
        max_header_bytes: 300,
        max_one_header_bytes: 200,
        max_headers: 10,
        max_uri_bytes: 64,
        reject_underscore_headers: true,
        merge_slashes: true,
        header_timeout: None,
        max_connections_per_ip: 0,
        tls_handshake_timeout: None,
        discard_body_max_bytes: 0,
        discard_body_timeout: std::time::Duration::ZERO,
    };

    fn req(method: &str, path: &[u8], headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, path, None).expect("req");
        for (n, v) in headers {
            r.append_header(n.to_string(), *v).expect("h");
        }
        r
    }

    #[test]
    fn limits_and_framing() {
        let host = ("Host", "example.com");
        let ok = |r: &RequestHeader| check_head(r, &LIMITS);
        assert_eq!(ok(&req("GET", b"/", &[host])), Ok(()));
        assert_eq!(ok(&req("GET", b"/", &[])), Err(Rejection::BadHost));
        assert_eq!(
            ok(&req("GET", b"/", &[host, host])),
            Err(Rejection::BadHost)
        );
        assert_eq!(
            ok(&req("GET", b"/", &[("Host", "a@b")])),
            Err(Rejection::BadHost)
        );
        assert_eq!(
            ok(&req("GET", b"/", &[("Host", "a/b")])),
            Err(Rejection::BadHost)
        );
        assert_eq!(
            ok(&req("GET", b"/", &[("Host", "a:99999")])),
            Err(Rejection::BadHost)
        );
        assert_eq!(
            ok(&req("POST", b"/", &[host, ("Content-Length", "100")])),
            Ok(())
        );
        assert_eq!(
            ok(&req("POST", b"/", &[host, ("Content-Length", "101")])),
            Err(Rejection::BodyTooLarge)
        );
        assert_eq!(
            ok(&req("POST", b"/", &[host, ("Content-Length", "+5")])),
            Err(Rejection::BadContentLength)
        );
        assert_eq!(
            ok(&req("POST", b"/", &[host, ("Content-Length", "5, 6")])),
            Err(Rejection::BadContentLength)
        );
        assert_eq!(
            ok(&req(
                "POST",
                b"/",
                &[host, ("Content-Length", "5"), ("Content-Length", "6")]
            )),
            Err(Rejection::BadContentLength)
        );
        assert_eq!(
            ok(&req(
                "POST",
                b"/",
                &[host, ("Content-Length", "5"), ("Content-Length", "5")]
            )),
            Err(Rejection::BadContentLength)
        );
        assert_eq!(
            ok(&req(
                "POST",
                b"/",
                &[host, ("Transfer-Encoding", "chunked")]
            )),
            Ok(())
        );
        assert_eq!(
            ok(&req(
                "POST",
                b"/",
                &[host, ("Transfer-Encoding", "gzip, chunked")]
            )),
            Err(Rejection::BadTransferEncoding)
        );
        assert_eq!(
            ok(&req(
                "POST",
                b"/",
                &[
                    host,
                    ("Transfer-Encoding", "chunked"),
                    ("Content-Length", "3")
                ]
            )),
            Err(Rejection::BadTransferEncoding)
        );
        assert_eq!(
            ok(&req(
                "POST",
                b"/",
                &[
                    host,
                    ("Transfer-Encoding", "chunked"),
                    ("Transfer-Encoding", "chunked")
                ]
            )),
            Err(Rejection::BadTransferEncoding)
        );
        assert_eq!(
            ok(&req("GET", b"/", &[host, ("X_Forwarded_For", "1")])),
            Err(Rejection::BadHeaderName)
        );
        assert_eq!(
            ok(&req("GET", b"/", &[host, ("Expect", "100-continue")])),
            Ok(())
        );
        assert_eq!(
            ok(&req("GET", b"/", &[host, ("Expect", "200-ok")])),
            Err(Rejection::UnknownExpect)
        );
        assert_eq!(
            ok(&req("TRACE", b"/", &[host])),
            Err(Rejection::MethodNotAllowed)
        );
        assert_eq!(
            ok(&req("GET", &[b'/'; 65], &[host])),
            Err(Rejection::UriTooLong)
        );
        assert_eq!(
            ok(&req("GET", b"/", &[host, ("X-Big", &"a".repeat(250))])),
            Err(Rejection::HeadersTooLarge)
        );
    }

    #[test]
    fn raw_header_lookup() {
        let raw = b"POST / HTTP/1.1\r\nHost: a\r\ncontent-LENGTH: 5\r\n\r\n";
        assert!(raw_has_header(raw, "content-length"));
        assert!(!raw_has_header(
            b"POST /content-length: HTTP/1.1\r\nHost: a\r\n\r\n",
            "content-length"
        ));
        assert!(!raw_has_header(
            b"GET / HTTP/1.1\r\nX-Content-Length: 1\r\n\r\n",
            "content-length"
        ));
    }

    #[test]
    fn targets() {
        assert!(check_target(b"/a/b?c=d&e=%20"));
        for bad in [
            &b"/a b"[..],
            b"/a\"b",
            b"/<x>",
            b"/%zz",
            b"/%2",
            b"/a\x01",
            b"/\x7f",
            b"/a{b}",
            b"/a\\b",
        ] {
            assert!(!check_target(bad), "{bad:?}");
        }
    }
}
