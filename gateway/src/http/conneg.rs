//! Content negotiation: `Accept-Encoding` (q-values, `*`, identity), `Accept` for HTML,
//! entity-tag lists (`If-None-Match`) and single byte ranges (`Range`). Pure functions over
//! header values, shared by static answers and proxied compression.

use http::HeaderValue;

/// Content encodings we serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    Brotli,
    /// Proxied responses only (static bundles carry br and gzip siblings).
    Zstd,
}

/// Parsed `Accept-Encoding` preferences.
#[derive(Debug, Clone, Copy, PartialEq)]
struct AcceptEncoding {
    br: Option<f32>,
    gzip: Option<f32>,
    zstd: Option<f32>,
    identity: Option<f32>,
    star: Option<f32>,
}

fn parse_q(params: &str) -> f32 {
    for p in params.split(';') {
        let p = p.trim();
        if let Some(v) = p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")) {
            return v.trim().parse::<f32>().map_or(0.0, |q| q.clamp(0.0, 1.0));
        }
    }
    1.0
}

fn parse_accept_encoding(v: &str) -> AcceptEncoding {
    let mut ae = AcceptEncoding {
        br: None,
        gzip: None,
        zstd: None,
        identity: None,
        star: None,
    };
    for item in v.split(',') {
        let (name, params) = item.split_once(';').unwrap_or((item, ""));
        let q = parse_q(params);
        match name.trim().to_ascii_lowercase().as_str() {
            "br" => ae.br = Some(q),
            "gzip" | "x-gzip" => ae.gzip = Some(q),
            "zstd" => ae.zstd = Some(q),
            "identity" => ae.identity = Some(q),
            "*" => ae.star = Some(q),
            _ => {}
        }
    }
    ae
}

/// Chooses the encoding to send, or `None` for 406.
pub fn negotiate(accept: Option<&str>, has_br: bool, has_gzip: bool) -> Option<Encoding> {
    let Some(accept) = accept else {
        return Some(Encoding::Identity);
    };
    match (has_br, has_gzip) {
        (true, true) => negotiate_among(accept, &[Encoding::Brotli, Encoding::Gzip]),
        (true, false) => negotiate_among(accept, &[Encoding::Brotli]),
        (false, true) => negotiate_among(accept, &[Encoding::Gzip]),
        (false, false) => negotiate_among(accept, &[]),
    }
}

/// The best of `offers` (preferred first on equal q) or identity for an `Accept-Encoding`
/// value; `None` when nothing offered is acceptable (identity refused too).
pub fn negotiate_among(accept: &str, offers: &[Encoding]) -> Option<Encoding> {
    let ae = parse_accept_encoding(accept);
    let q = |explicit: Option<f32>| explicit.or(ae.star).unwrap_or(0.0);
    // Identity is acceptable unless refused explicitly (or by `*;q=0` without naming it),
    // but ranks below any encoding the client asked for.
    let q_id = ae
        .identity
        .or(ae.star.filter(|s| *s == 0.0))
        .unwrap_or(0.001);
    let mut best: Option<(Encoding, f32)> = None;
    for &enc in offers.iter().chain(std::iter::once(&Encoding::Identity)) {
        let qv = match enc {
            Encoding::Brotli => q(ae.br),
            Encoding::Gzip => q(ae.gzip),
            Encoding::Zstd => q(ae.zstd),
            Encoding::Identity => q_id,
        };
        if qv > 0.0 && best.is_none_or(|(_, b)| qv > b) {
            best = Some((enc, qv));
        }
    }
    best.map(|(e, _)| e)
}

/// Whether `Accept` admits `text/html` (absent = anything).
pub fn accepts_html(accept: Option<&str>) -> bool {
    let Some(accept) = accept else {
        return true;
    };
    accept.split(',').any(|item| {
        let (range, params) = item.split_once(';').unwrap_or((item, ""));
        let range = range.trim().to_ascii_lowercase();
        matches!(range.as_str(), "text/html" | "text/*" | "*/*") && parse_q(params) > 0.0
    })
}

/// Weak comparison of an `If-None-Match` list against `etag`.
pub fn none_match(header: &str, etag: &HeaderValue) -> bool {
    let tag = etag.as_bytes();
    header.split(',').any(|t| {
        let t = t.trim();
        t == "*" || t.strip_prefix("W/").unwrap_or(t).as_bytes() == tag
    })
}

/// A single byte range resolved against a length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// No (usable) range: send everything.
    Full,
    /// Inclusive `start..=end`.
    Part(u64, u64),
    /// 416.
    Unsatisfiable,
}

/// Parses a `Range` header for a representation of `len` bytes. Several ranges, other units
/// and malformed values fall back to the full body, as RFC 9110 §14.2 allows.
pub fn parse_range(v: &str, len: u64) -> RangeSpec {
    let Some(spec) = v.trim().strip_prefix("bytes=") else {
        return RangeSpec::Full;
    };
    if spec.contains(',') {
        return RangeSpec::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeSpec::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    if a.is_empty() {
        // Suffix range: the last N bytes.
        if !digits(b) {
            return RangeSpec::Full;
        }
        let n: u64 = b.parse().unwrap_or(u64::MAX);
        if n == 0 || len == 0 {
            return RangeSpec::Unsatisfiable;
        }
        return RangeSpec::Part(len.saturating_sub(n), len - 1);
    }
    if !digits(a) || !(b.is_empty() || digits(b)) {
        return RangeSpec::Full;
    }
    let start: u64 = a.parse().unwrap_or(u64::MAX);
    let end: u64 = if b.is_empty() {
        u64::MAX
    } else {
        b.parse().unwrap_or(u64::MAX)
    };
    if end < start {
        return RangeSpec::Full;
    }
    if start >= len {
        return RangeSpec::Unsatisfiable;
    }
    RangeSpec::Part(start, end.min(len - 1))
}

impl Encoding {
    /// Label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Identity => "identity",
            Encoding::Gzip => "gzip",
            Encoding::Brotli => "br",
            Encoding::Zstd => "zstd",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_negotiation_follows_q_values() {
        use Encoding::*;
        assert_eq!(negotiate(None, true, true), Some(Identity));
        assert_eq!(
            negotiate(Some("gzip, deflate, br"), true, true),
            Some(Brotli)
        );
        assert_eq!(negotiate(Some("gzip, br;q=0"), true, true), Some(Gzip));
        assert_eq!(
            negotiate(Some("br;q=0.5, gzip;q=0.8"), true, true),
            Some(Gzip)
        );
        assert_eq!(negotiate(Some("br"), false, true), Some(Identity));
        assert_eq!(negotiate(Some("*"), true, true), Some(Brotli));
        assert_eq!(negotiate(Some("identity"), true, true), Some(Identity));
        assert_eq!(negotiate(Some("identity;q=0"), false, false), None);
        assert_eq!(
            negotiate(Some("identity;q=0, gzip"), true, true),
            Some(Gzip)
        );
        assert_eq!(negotiate(Some("*;q=0"), true, true), None);
        assert_eq!(
            negotiate(Some("*;q=0, identity"), true, true),
            Some(Identity)
        );
        assert_eq!(negotiate(Some(""), true, true), Some(Identity));
        assert_eq!(negotiate(Some("GZIP;Q=1"), false, true), Some(Gzip));
    }

    #[test]
    fn ranges() {
        use RangeSpec::*;
        assert_eq!(parse_range("bytes=0-9", 100), Part(0, 9));
        assert_eq!(parse_range("bytes=90-", 100), Part(90, 99));
        assert_eq!(parse_range("bytes=-10", 100), Part(90, 99));
        assert_eq!(parse_range("bytes=-1000", 100), Part(0, 99));
        assert_eq!(parse_range("bytes=50-1000", 100), Part(50, 99));
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Full);
        assert_eq!(parse_range("items=0-1", 100), Full);
        assert_eq!(parse_range("bytes=5-1", 100), Full);
        assert_eq!(parse_range("bytes=a-b", 100), Full);
        assert_eq!(parse_range("bytes=--1", 100), Full);
    }

    #[test]
    fn accept_html() {
        assert!(accepts_html(None));
        assert!(accepts_html(Some(
            "text/html,application/xhtml+xml,*/*;q=0.8"
        )));
        assert!(accepts_html(Some("*/*")));
        assert!(!accepts_html(Some("application/json")));
        assert!(!accepts_html(Some("text/html;q=0")));
        assert!(!accepts_html(Some("image/avif,image/webp")));
    }

    #[test]
    fn if_none_match_is_weak_and_lists() {
        let e = HeaderValue::from_static("\"abc\"");
        assert!(none_match("\"abc\"", &e));
        assert!(none_match("W/\"abc\"", &e));
        assert!(none_match("\"x\", W/\"abc\"", &e));
        assert!(none_match("*", &e));
        assert!(!none_match("\"abcd\"", &e));
    }
}
