//! The compiled `[security_headers]`: added to every answer the gateway writes, and the
//! baseline (`nosniff`, `Referrer-Policy`) to proxied answers that lack them.

use super::edge_response::PutHeader;
use http::{HeaderName, HeaderValue};

/// Compiled security headers.
#[derive(Debug, Clone, Default)]
pub struct SecurityHeaders {
    /// Name/value pairs added to gateway responses.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl SecurityHeaders {
    /// Adds every header to `resp`.
    pub fn apply(&self, resp: &mut impl PutHeader) {
        for (n, v) in &self.headers {
            resp.put(n.clone(), v.clone());
        }
    }
}
