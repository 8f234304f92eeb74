//! Shared HTTP vocabulary: pure functions and small types over request and response heads,
//! used by the request phases, the admin listener and the redirect listener alike. Nothing
//! here knows about routes, config or the per-request context.

pub mod client_ip;
pub mod conneg;
pub mod cookie;
pub mod edge_response;
pub mod host;
pub mod security_headers;
