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
