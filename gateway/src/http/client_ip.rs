//! Who the client is: the TCP peer, or the first untrusted address of `X-Forwarded-For` when
//! the peer is a trusted proxy; and the key an address counts under (IPv6 by prefix).

use pingora_http::RequestHeader;
use std::net::IpAddr;

/// The client's address: the TCP peer, unless the peer is a trusted proxy, in which case
/// `X-Forwarded-For` is walked from the right to the first untrusted address.
pub fn client_ip(
    peer: Option<std::net::IpAddr>,
    req: &RequestHeader,
    trusted: &[ipnet::IpNet],
) -> (Option<std::net::IpAddr>, bool) {
    let Some(peer) = peer else {
        return (None, false);
    };
    let is_trusted = |ip: &std::net::IpAddr| trusted.iter().any(|n| n.contains(ip));
    if trusted.is_empty() || !is_trusted(&peer) {
        return (Some(peer), false);
    }
    let mut client = peer;
    for v in req.headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(v) = v.to_str() else { break };
        for part in v.rsplit(',') {
            match part.trim().parse::<std::net::IpAddr>() {
                Ok(ip) if is_trusted(&ip) => client = ip,
                Ok(ip) => return (Some(ip), true),
                Err(_) => return (Some(client), true),
            }
        }
    }
    (Some(client), true)
}

/// Masks an IPv6 address to `prefix` bits (clients get whole /64s from their ISP).
pub fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        // An IPv4 client on a dual-stack listener (`::ffff:a.b.c.d`) is one IPv4 address, not
        // a member of the one /64 every such client shares.
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => IpAddr::V4(
            v6.to_ipv4_mapped()
                .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
        ),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let p = u32::from(prefix.min(128));
            let m = if p == 0 { 0 } else { u128::MAX << (128 - p) };
            IpAddr::V6((bits & m).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &[u8], headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, path, None).expect("req");
        for (n, v) in headers {
            r.append_header(n.to_string(), *v).expect("h");
        }
        r
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_peers() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        let r = req("GET", b"/", &[("X-Forwarded-For", "203.0.113.9, 10.1.1.1")]);
        let peer = |s: &str| Some(s.parse().expect("ip"));
        assert_eq!(
            client_ip(peer("10.2.2.2"), &r, &trusted),
            (peer("203.0.113.9"), true)
        );
        assert_eq!(
            client_ip(peer("192.0.2.1"), &r, &trusted),
            (peer("192.0.2.1"), false)
        );
        assert_eq!(
            client_ip(peer("10.2.2.2"), &r, &[]),
            (peer("10.2.2.2"), false)
        );
        let spoof = req("GET", b"/", &[("X-Forwarded-For", "garbage, 10.1.1.1")]);
        assert_eq!(
            client_ip(peer("10.2.2.2"), &spoof, &trusted),
            (peer("10.1.1.1"), true)
        );
    }
}
