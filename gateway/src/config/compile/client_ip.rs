//! `[client_ip]`: trusted proxies and the IPv6 prefix clients are counted by.

use super::super::file::GatewayConf;
use super::super::source::{Problem, Source};

/// Proxies whose `X-Forwarded-For` is believed (the prefix length checked too).
pub fn trusted_proxies(
    conf: &GatewayConf,
    src: &Source,
    problems: &mut Vec<Problem>,
) -> Vec<ipnet::IpNet> {
    if conf.client_ip.ipv6_prefix > 128 {
        problems.push(Problem {
            location: src.file.to_string(),
            message: "[client_ip] ipv6_prefix must be 0..=128".into(),
        });
    }

    let mut trusted_proxies = Vec::new();
    for c in &conf.client_ip.trusted_proxies {
        let text = c.get_ref();
        // A bare address means that one host.
        let parsed = text
            .parse::<ipnet::IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match parsed {
            Ok(n) => trusted_proxies.push(n),
            Err(_) => problems.push(src.problem(
                c,
                format!("[client_ip] `{text}` is not a CIDR or IP address"),
            )),
        }
    }
    trusted_proxies
}
