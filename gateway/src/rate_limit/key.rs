//! What a policy counts under and what it answers: the key of one counter, and the decision.

use std::net::IpAddr;

/// What a request is counted under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LimitKey {
    /// A client address (IPv6 masked to the configured prefix).
    Ip(IpAddr),
    /// A subject, header value, or a combination.
    Text(Box<str>),
    /// Shared by every key past the cap.
    Overflow,
}

/// The verdict of one policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Allowed; `remaining` requests left in the burst.
    Allowed { remaining: u32 },
    /// Over the limit; retry after this many whole seconds (≥ 1).
    Limited { retry_after: u64 },
}

impl std::fmt::Display for LimitKey {
    /// `ip:203.0.113.9`, `sub:user-42`, `h:value`, parts of a combined key joined with ` + `.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LimitKey::Ip(ip) => write!(f, "ip:{ip}"),
            LimitKey::Text(t) => {
                for (i, part) in t.split('\u{1f}').enumerate() {
                    let sep = if i > 0 { " + " } else { "" };
                    // A bare address inside a combined key is the client IP.
                    match part.parse::<IpAddr>() {
                        Ok(ip) => write!(f, "{sep}ip:{ip}")?,
                        Err(_) => write!(f, "{sep}{part}")?,
                    }
                }
                Ok(())
            }
            LimitKey::Overflow => f.write_str("overflow"),
        }
    }
}
