//! The one normalised request path used for routing, auth, rate-limit keys, static lookup and
//! the path forwarded upstream — so `/static/%2e%2e/api/x` is `/api/x` for every decision.
//!
//! Rules: percent-decode *unreserved* characters once (RFC 3986 §6.2.2.2), upper-case the
//! remaining escapes, resolve `.` and `..` (climbing above `/` is refused), merge duplicate
//! slashes, and refuse what has no business in a path: encoded `/` or `\`, raw `\`, NUL and
//! other control bytes, spaces, malformed escapes. Reserved characters stay encoded so the
//! upstream sees the same resource the gateway decided on.

use std::borrow::Cow;

/// Why a path was refused (→ 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// Not starting with `/`.
    NotAbsolute,
    /// `%` not followed by two hex digits.
    BadEscape,
    /// `%2f` or `%5c` inside a segment.
    EncodedSlash,
    /// Raw backslash.
    Backslash,
    /// NUL, control byte, space or other byte not allowed in a path.
    BadByte,
    /// `..` above the root.
    AboveRoot,
}

impl PathError {
    /// Short reason for logs and error bodies.
    pub fn reason(self) -> &'static str {
        match self {
            PathError::NotAbsolute => "path must start with /",
            PathError::BadEscape => "malformed percent-escape",
            PathError::EncodedSlash => "encoded slash or backslash in path",
            PathError::Backslash => "backslash in path",
            PathError::BadByte => "control character or space in path",
            PathError::AboveRoot => "path climbs above the root",
        }
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Bytes allowed raw in a path segment (RFC 3986 pchar minus `%`, which is handled apart).
pub fn is_pchar(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        )
}

/// Normalises `raw` (the path part of the request target, without the query).
///
/// Returns the input unchanged (borrowed) when it is already normal — the common case costs
/// one scan and no allocation.
pub fn normalize(raw: &str, merge_slashes: bool) -> Result<Cow<'_, str>, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // Fast path: nothing to decode, no dot segments, no empty segments.
    let mut simple = true;
    let mut prev = 0u8;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'%' => simple = false,
            b'\\' => return Err(PathError::Backslash),
            b'/' if prev == b'/' && merge_slashes => simple = false,
            b'.' if prev == b'/' => {
                let next = bytes.get(i + 1).copied();
                let next2 = bytes.get(i + 2).copied();
                if matches!(next, None | Some(b'/'))
                    || (next == Some(b'.') && matches!(next2, None | Some(b'/')))
                {
                    simple = false;
                }
            }
            b'/' => {}
            _ if is_pchar(b) => {}
            _ => return Err(PathError::BadByte),
        }
        prev = b;
    }
    if simple {
        return Ok(Cow::Borrowed(raw));
    }

    let mut segments: Vec<String> = Vec::new();
    let trailing = bytes.len() > 1 && bytes.ends_with(b"/");
    for seg in raw[1..].split('/') {
        let mut out = String::with_capacity(seg.len());
        let sb = seg.as_bytes();
        let mut i = 0;
        while i < sb.len() {
            let b = sb[i];
            if b == b'%' {
                let (Some(h), Some(l)) = (
                    sb.get(i + 1).copied().and_then(hex),
                    sb.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let v = h * 16 + l;
                match v {
                    b'/' | b'\\' => return Err(PathError::EncodedSlash),
                    0..=0x1f | 0x7f => return Err(PathError::BadByte),
                    _ if is_unreserved(v) => out.push(v as char),
                    _ => {
                        out.push('%');
                        out.push(char::from(b"0123456789ABCDEF"[(v >> 4) as usize]));
                        out.push(char::from(b"0123456789ABCDEF"[(v & 15) as usize]));
                    }
                }
                i += 3;
            } else {
                out.push(b as char);
                i += 1;
            }
        }
        match out.as_str() {
            "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
            }
            "" if merge_slashes => {}
            _ => segments.push(out),
        }
    }
    let mut path = String::with_capacity(raw.len());
    for s in &segments {
        path.push('/');
        path.push_str(s);
    }
    if path.is_empty() || (trailing && !path.ends_with('/')) {
        path.push('/');
    }
    Ok(Cow::Owned(path))
}

/// Fully percent-decodes a normalised path into UTF-8 (for file lookup). `None` when the
/// result is not UTF-8 or contains NUL.
pub fn decode_fully(path: &str) -> Option<Cow<'_, str>> {
    if !path.contains('%') {
        return Some(Cow::Borrowed(path));
    }
    let decoded: Vec<u8> = percent_encoding::percent_decode_str(path).collect();
    if decoded.contains(&0) {
        return None;
    }
    String::from_utf8(decoded).ok().map(Cow::Owned)
}

/// Whether `path` is `prefix` or below it, on whole segments (`prefix` without trailing `/`).
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// A file named in the config: `p` relative to `base` (the config's directory) unless absolute.
pub fn resolve(base: &std::path::Path, p: &str) -> std::path::PathBuf {
    let p = std::path::Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalize(p, true).map(|c| c.into_owned())
    }

    #[test]
    fn normal_paths_are_borrowed() {
        assert!(matches!(
            normalize("/api/expenses/12", true),
            Ok(Cow::Borrowed(_))
        ));
        assert!(matches!(
            normalize("/a.b/c..d/.e", true),
            Ok(Cow::Borrowed(_))
        ));
    }

    #[test]
    fn dot_segments_resolve_in_every_encoding() {
        for p in [
            "/public/../api/x",
            "/public/%2e%2e/api/x",
            "/public/%2E%2e/api/x",
            "/public/.%2E/api/x",
            "//api/x",
            "/./api/x",
            "/api/./x",
            "/api//x",
            "/a/b/../../api/x",
        ] {
            assert_eq!(n(p).as_deref(), Ok("/api/x"), "{p}");
        }
        assert_eq!(n("/a/b/").as_deref(), Ok("/a/b/"));
        assert_eq!(n("/a/..").as_deref(), Ok("/"));
        assert_eq!(n("/%7Euser/%41").as_deref(), Ok("/~user/A"));
        assert_eq!(n("/a%20b/%c3%a9").as_deref(), Ok("/a%20b/%C3%A9"));
    }

    #[test]
    fn hostile_paths_are_refused() {
        assert_eq!(n("/.."), Err(PathError::AboveRoot));
        assert_eq!(n("/%2e%2e/etc/passwd"), Err(PathError::AboveRoot));
        assert_eq!(n("/a/../../etc"), Err(PathError::AboveRoot));
        assert_eq!(n("/..%2fetc"), Err(PathError::EncodedSlash));
        assert_eq!(n("/a%2Fb"), Err(PathError::EncodedSlash));
        assert_eq!(n("/a%5cb"), Err(PathError::EncodedSlash));
        assert_eq!(n("/a\\b"), Err(PathError::Backslash));
        assert_eq!(n("/a%00b"), Err(PathError::BadByte));
        assert_eq!(n("/a%0ab"), Err(PathError::BadByte));
        assert_eq!(n("/a b"), Err(PathError::BadByte));
        assert_eq!(n("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(n("/a%2"), Err(PathError::BadEscape));
        assert_eq!(n("a"), Err(PathError::NotAbsolute));
        // Double encoding decodes once: a literal "%2e%2e" name, not a parent reference.
        assert_eq!(n("/%252e%252e/x").as_deref(), Ok("/%252e%252e/x"));
    }

    #[test]
    fn full_decode_rejects_non_utf8() {
        assert_eq!(decode_fully("/a%20b").as_deref(), Some("/a b"));
        assert_eq!(decode_fully("/%FF"), None);
    }
}
