//! The cap on concurrent connections per client (IPv6 by prefix, like the rate limits):
//! checked before any TLS work, so a refused connection costs no key exchange.

use dashmap::DashMap;
use std::net::IpAddr;

/// Open connections per client key.
#[derive(Debug, Default)]
pub struct PerIpCap {
    map: DashMap<IpAddr, u32>,
}

impl PerIpCap {
    /// Takes a slot for `ip` unless it already holds `max` connections (`max == 0`: no cap).
    pub fn acquire(&self, ip: IpAddr, max: u32) -> Option<Slot<'_>> {
        acquire(&self.map, ip, max)
    }
}

/// One counted connection of a client IP; released on drop.
pub struct Slot<'a> {
    map: &'a DashMap<IpAddr, u32>,
    ip: IpAddr,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        // Remove emptied entries so the map holds only IPs with open connections.
        self.map.remove_if_mut(&self.ip, |_, n| {
            *n -= 1;
            *n == 0
        });
    }
}

/// Takes a slot for `ip` unless it already holds `max` connections (`max == 0`: no cap).
fn acquire(map: &DashMap<IpAddr, u32>, ip: IpAddr, max: u32) -> Option<Slot<'_>> {
    let mut n = map.entry(ip).or_insert(0);
    if max > 0 && *n >= max {
        return None;
    }
    *n += 1;
    drop(n);
    Some(Slot { map, ip })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_slots_are_capped_and_released() {
        let map = DashMap::new();
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let a = acquire(&map, ip, 2).expect("first");
        let b = acquire(&map, ip, 2).expect("second");
        assert!(acquire(&map, ip, 2).is_none(), "third refused");
        drop(a);
        let c = acquire(&map, ip, 2).expect("after release");
        drop((b, c));
        assert!(
            map.is_empty(),
            "no entry kept for an IP without connections"
        );
        assert!(acquire(&map, ip, 0).is_some(), "0 = no cap");
    }

    #[test]
    fn ipv6_clients_are_capped_by_prefix_like_the_rate_limits() {
        let map = DashMap::new();
        let key = |s: &str| crate::http::client_ip::mask(s.parse().expect("ip"), 64);
        let _a = acquire(&map, key("2001:db8:1:2::1"), 2).expect("first");
        let _b = acquire(&map, key("2001:db8:1:2:ffff::9"), 2).expect("second, same /64");
        assert!(
            acquire(&map, key("2001:db8:1:2:1234::5"), 2).is_none(),
            "a third address of the same /64 is refused"
        );
        assert!(
            acquire(&map, key("2001:db8:1:3::1"), 2).is_some(),
            "another /64 is another client"
        );
    }
}
