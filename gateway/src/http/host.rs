//! The host a request names: read from `Host` or the HTTP/2 authority, stripped of its port
//! for matching, and validated before it is echoed into a `Location`.

use pingora_http::RequestHeader;

/// Host the client asked for: `Host` (HTTP/1.1) or the URI authority (HTTP/2).
pub fn request_host(req: &RequestHeader) -> &str {
    req.headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
        .unwrap_or("")
}

/// `host` without its port, for matching (IPv6 literals keep their brackets).
pub fn without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// A `Host` value we are willing to echo into `Location`: a DNS name, IPv4 or bracketed IPv6,
/// optionally with a port. Anything else (userinfo, paths, spaces) is refused.
pub fn valid_host(host: &str) -> Option<&str> {
    let name = if host.starts_with('[') {
        let end = host.find(']')?;
        let (name, rest) = host.split_at(end + 1);
        if !(rest.is_empty() || rest[1..].parse::<u16>().is_ok() && rest.starts_with(':')) {
            return None;
        }
        name[1..name.len() - 1].parse::<std::net::Ipv6Addr>().ok()?;
        name
    } else {
        let (name, port) = match host.rsplit_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (host, None),
        };
        if let Some(p) = port {
            p.parse::<u16>().ok()?;
        }
        if name.is_empty()
            || name.len() > 253
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return None;
        }
        name
    };
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_is_removed() {
        assert_eq!(without_port("example.com:8443"), "example.com");
        assert_eq!(without_port("example.com"), "example.com");
        assert_eq!(without_port("[::1]:8443"), "[::1]");
        assert_eq!(without_port("[::1]"), "[::1]");
    }
}
