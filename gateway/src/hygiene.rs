//! Request hygiene checked before any routing work: size limits.
//!
//! Runs first in `request_filter` because it is the cheapest rejection: it reads only the
//! request head pingora has already parsed.

use crate::runtime::Limits;
use pingora_http::RequestHeader;

/// Why a request head is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Header block over `max_header_bytes` → 431.
    HeadersTooLarge,
    /// Declared body over `max_body_bytes` → 413.
    BodyTooLarge,
    /// Unparseable `Content-Length` → 400.
    BadContentLength,
}

impl Rejection {
    /// The status answered.
    pub fn status(self) -> u16 {
        match self {
            Rejection::HeadersTooLarge => 431,
            Rejection::BodyTooLarge => 413,
            Rejection::BadContentLength => 400,
        }
    }
}

/// `request_filter` step: checks the head against `limits`.
pub fn request_filter(req: &RequestHeader, limits: &Limits) -> Result<(), Rejection> {
    // Count like the wire: "name: value\r\n".
    let header_bytes: usize = req
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    if header_bytes > limits.max_header_bytes {
        return Err(Rejection::HeadersTooLarge);
    }
    if let Some(cl) = req.headers.get(http::header::CONTENT_LENGTH) {
        let n: u64 = cl
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or(Rejection::BadContentLength)?;
        if n > limits.max_body_bytes {
            return Err(Rejection::BodyTooLarge);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_body_bytes: 100,
        max_header_bytes: 200,
    };

    #[test]
    fn limits_are_enforced() {
        let mut req = RequestHeader::build("POST", b"/", None).expect("req");
        req.insert_header("Content-Length", "100").expect("h");
        assert_eq!(request_filter(&req, &LIMITS), Ok(()));
        req.insert_header("Content-Length", "101").expect("h");
        assert_eq!(request_filter(&req, &LIMITS), Err(Rejection::BodyTooLarge));
        req.insert_header("Content-Length", "1x").expect("h");
        assert_eq!(
            request_filter(&req, &LIMITS),
            Err(Rejection::BadContentLength)
        );
        req.remove_header("Content-Length");
        req.insert_header("X-Big", "a".repeat(300)).expect("h");
        assert_eq!(
            request_filter(&req, &LIMITS),
            Err(Rejection::HeadersTooLarge)
        );
    }
}
