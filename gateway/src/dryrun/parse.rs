//! The requests file: one request a line, `#` comments and blank lines ignored.
//!
//! ```text
//! GET https://shop.example.com/api/expenses?x=1 authorization="Bearer eyJ…" client=10.0.0.7 expect status=401 route=api
//! ```
//!
//! `METHOD URL`, then `name=value` header tokens (quote a value with spaces: `name="a b"`),
//! the pseudo-token `client=IP` (the TCP peer; default 127.0.0.1), and optionally `expect`
//! followed by `key=value` assertions. A line starting with `expect` adds assertions to the
//! request above it. Anything else is refused with its line number, before anything runs.

use http::{HeaderName, HeaderValue, Method};
use pingora_http::RequestHeader;
use std::net::IpAddr;

/// Methods a line may use (the two the gateway refuses included, to show the 405).
const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT",
];

/// What an `expect` asserts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpectKey {
    /// The status the gateway answers itself (`proxy` for a proxied request).
    Status,
    /// The matched route's name (`none`).
    Route,
    /// The upstream pool (`none`).
    Pool,
    /// The static file served (`fallback` for the SPA shell, `none`).
    File,
    /// The rate-limit policies applied, comma-separated (`none`).
    RateLimits,
    /// The auth decision: `none`, `public`, `verified`, `unverifiable`, or the rejection.
    Auth,
}

impl ExpectKey {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "status" => Self::Status,
            "route" => Self::Route,
            "pool" => Self::Pool,
            "file" => Self::File,
            "policy" | "rate_limits" => Self::RateLimits,
            "auth" => Self::Auth,
            _ => return None,
        })
    }

    /// The key as written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Route => "route",
            Self::Pool => "pool",
            Self::File => "file",
            Self::RateLimits => "rate_limits",
            Self::Auth => "auth",
        }
    }
}

/// One `key=value` assertion.
#[derive(Debug, Clone)]
pub struct Expect {
    /// What is asserted.
    pub key: ExpectKey,
    /// The value wanted, as written.
    pub want: String,
}

/// Whether the URL asked for TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `https://`: the proxy listener.
    Https,
    /// `http://`: the plain-HTTP listener (redirects).
    Http,
}

/// One request of the file.
#[derive(Debug, Clone)]
pub struct RequestLine {
    /// 1-based line number.
    pub line: usize,
    /// The URL as written.
    pub url: String,
    /// Its scheme.
    pub scheme: Scheme,
    /// The head the client would send (Host from the URL unless a `host=` token is given).
    pub head: RequestHeader,
    /// The TCP peer (`client=`).
    pub peer: IpAddr,
    /// Assertions, in order.
    pub expects: Vec<Expect>,
}

/// A refused line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{line}: {message}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Splits a line into tokens on whitespace; `"…"` quotes keep spaces (`\"` and `\\` escape).
fn tokens(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_token = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                in_token = true;
                loop {
                    match chars.next() {
                        None => return Err("unterminated quote".into()),
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(e @ ('"' | '\\')) => cur.push(e),
                            _ => return Err("only \\\" and \\\\ may be escaped in quotes".into()),
                        },
                        Some(c) => cur.push(c),
                    }
                }
            }
            c if c.is_whitespace() => {
                if in_token {
                    out.push(std::mem::take(&mut cur));
                    in_token = false;
                }
            }
            c => {
                in_token = true;
                cur.push(c);
            }
        }
    }
    if in_token {
        out.push(cur);
    }
    Ok(out)
}

/// `(scheme, authority, target)` of an absolute http(s) URL, the target verbatim.
fn split_url(url: &str) -> Option<(Scheme, &str, String)> {
    let (scheme, rest) = if let Some(r) = url.strip_prefix("https://") {
        (Scheme::Https, r)
    } else {
        (Scheme::Http, url.strip_prefix("http://")?)
    };
    let cut = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, target) = rest.split_at(cut);
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let target = match target.chars().next() {
        None => "/".to_string(),
        Some('?') => format!("/{target}"),
        _ => target.to_string(),
    };
    Some((scheme, authority, target))
}

fn expects(tokens: &[String]) -> Result<Vec<Expect>, String> {
    if tokens.is_empty() {
        return Err("`expect` needs at least one key=value".into());
    }
    tokens
        .iter()
        .map(|t| {
            let (k, v) = t
                .split_once('=')
                .ok_or_else(|| format!("expect `{t}`: expected key=value"))?;
            let key = ExpectKey::parse(k).ok_or_else(|| {
                format!(
                    "unknown expect key `{k}` (status, route, pool, file, policy, rate_limits, auth)"
                )
            })?;
            if key == ExpectKey::Status && v != "proxy" && v.parse::<u16>().is_err() {
                return Err(format!("expect status=`{v}`: a status code or `proxy`"));
            }
            Ok(Expect {
                key,
                want: v.to_string(),
            })
        })
        .collect()
}

fn request(line: usize, toks: &[String]) -> Result<RequestLine, String> {
    let (method, url) = match toks {
        [m, u, ..] => (m, u),
        _ => return Err("expected METHOD URL".into()),
    };
    if !METHODS.contains(&method.as_str()) {
        return Err(format!("unknown method `{method}`"));
    }
    let (scheme, authority, target) = split_url(url)
        .ok_or_else(|| format!("`{url}` is not an absolute http:// or https:// URL"))?;
    let mut head = RequestHeader::build(
        Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?,
        target.as_bytes(),
        None,
    )
    .map_err(|_| format!("`{target}` is not a valid request target"))?;
    let mut peer: IpAddr = std::net::Ipv4Addr::LOCALHOST.into();
    let mut wanted = Vec::new();
    let mut host_given = false;
    let mut rest = toks[2..].iter();
    while let Some(t) = rest.next() {
        if t == "expect" {
            wanted = expects(rest.as_slice())?;
            break;
        }
        let (name, value) = t
            .split_once('=')
            .ok_or_else(|| format!("`{t}`: expected name=value"))?;
        if name == "client" {
            peer = value
                .parse()
                .map_err(|_| format!("client=`{value}` is not an IP address"))?;
            continue;
        }
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("`{name}` is not a header name"))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| format!("header {name}: value is not a valid header value"))?;
        host_given |= name == http::header::HOST;
        head.append_header(name, value)
            .map_err(|e| format!("header: {e}"))?;
    }
    if !host_given {
        head.insert_header(http::header::HOST, authority)
            .map_err(|_| format!("`{authority}` is not a valid Host"))?;
    }
    Ok(RequestLine {
        line,
        url: url.clone(),
        scheme,
        head,
        peer,
        expects: wanted,
    })
}

/// Parses the whole file; the first bad line refuses it.
pub fn parse(text: &str) -> Result<Vec<RequestLine>, ParseError> {
    let mut out: Vec<RequestLine> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let err = |message: String| ParseError { line, message };
        let body = raw.trim();
        if body.is_empty() || body.starts_with('#') {
            continue;
        }
        let toks = tokens(body).map_err(err)?;
        if toks[0] == "expect" {
            let more = expects(&toks[1..]).map_err(err)?;
            let prev = out
                .last_mut()
                .ok_or_else(|| err("`expect` line before any request".into()))?;
            prev.expects.extend(more);
            continue;
        }
        out.push(request(line, &toks).map_err(err)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_with_headers_client_and_expectations() {
        let r = parse(
            "# c\n\nGET https://Shop.example.com:8443/a/../b?x=1 authorization=\"Bearer a b\" \
             x-forwarded-for=1.2.3.4 client=10.0.0.1 expect status=401 route=api\nexpect pool=p\n",
        )
        .expect("parse");
        assert_eq!(r.len(), 1);
        let r = &r[0];
        assert_eq!(r.line, 3);
        assert_eq!(r.head.raw_path(), b"/a/../b?x=1");
        assert_eq!(r.head.headers["host"], "Shop.example.com:8443");
        assert_eq!(r.head.headers["authorization"], "Bearer a b");
        assert_eq!(r.peer.to_string(), "10.0.0.1");
        let keys: Vec<_> = r.expects.iter().map(|e| e.key).collect();
        assert_eq!(keys, [ExpectKey::Status, ExpectKey::Route, ExpectKey::Pool]);
    }

    #[test]
    fn bad_lines_are_refused_with_their_number() {
        let bad = [
            ("FETCH https://a/", "unknown method `FETCH`"),
            (
                "GET /relative",
                "`/relative` is not an absolute http:// or https:// URL",
            ),
            (
                "GET https://a/ expect colour=red",
                "unknown expect key `colour`",
            ),
            ("GET https://a/ novalue", "`novalue`: expected name=value"),
            ("GET https://a/ x=\"open", "unterminated quote"),
            (
                "GET https://a/ client=nope",
                "client=`nope` is not an IP address",
            ),
            ("expect status=200", "`expect` line before any request"),
            ("GET https://a/ expect status=ok", "expect status=`ok`"),
        ];
        for (line, msg) in bad {
            let e = parse(&format!("\n{line}\n")).expect_err(line);
            assert_eq!(e.line, 2, "{line}");
            assert!(e.message.starts_with(msg), "{line}: {}", e.message);
        }
    }
}
