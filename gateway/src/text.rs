//! Text the request path writes often (IP addresses, decimal numbers), without the `fmt`
//! machinery. Numbers go through `itoa`; IPv4 addresses are written by hand because no crate
//! does it and `Display` costs ≈ 1,000 instructions against ≈ 50 here (benches/RESULTS.md,
//! session 5: the access line's 8.3 k instructions were mostly `fmt`).

/// Appends `n` in decimal (what `write!` does, without the formatting machinery).
pub fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Appends an IP address the way `Display` writes it; IPv4 without the formatting machinery.
pub fn push_ip(out: &mut Vec<u8>, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_u64(out, u64::from(o));
            }
        }
        std::net::IpAddr::V6(v6) => {
            use std::io::Write as _;
            let _ = write!(out, "{v6}");
        }
    }
}

/// An optional address as text (empty when unknown), for forwarding headers.
pub fn ip_string(ip: Option<std::net::IpAddr>) -> String {
    let mut out = Vec::with_capacity(15);
    if let Some(ip) = ip {
        push_ip(&mut out, ip);
    }
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_strings_are_written_like_display() {
        for ip in ["127.0.0.1", "203.0.113.255", "::1", "2001:db8::7"] {
            let ip: std::net::IpAddr = ip.parse().expect("ip");
            assert_eq!(ip_string(Some(ip)), ip.to_string());
        }
        assert_eq!(ip_string(None), "");
    }
}
