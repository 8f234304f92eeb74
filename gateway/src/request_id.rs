//! `X-Request-Id`: kept from the client when it is a sane token, generated otherwise.

/// Whether a client-supplied id is safe to log and forward: 1–128 chars of `[A-Za-z0-9._-]`.
pub fn is_sane(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Lowercase hex digits, shared by the id generator and the access log's escapes.
pub(crate) const HEX: &[u8; 16] = b"0123456789abcdef";

/// The id for a request: the client's when sane, else 128 random bits in hex.
pub fn from_client(client: Option<&[u8]>) -> String {
    match client {
        Some(id) if is_sane(id) => String::from_utf8_lossy(id).into_owned(),
        _ => {
            // Hex by hand: `format!("{:032x}")` costs several times more on every request.
            let mut n = rand::random::<u128>();
            let mut hex = [0u8; 32];
            for b in hex.iter_mut().rev() {
                *b = HEX[(n & 0xf) as usize];
                n >>= 4;
            }
            hex.iter().map(|&b| char::from(b)).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_sane_ids_and_replaces_others() {
        assert_eq!(from_client(Some(b"abc.DEF_12-3")), "abc.DEF_12-3");
        for bad in [&b""[..], b"a b", b"a\"b", b"<x>", &[b'a'; 129][..], b"\xff"] {
            let id = from_client(Some(bad));
            assert_eq!(id.len(), 32, "{bad:?}");
            assert!(is_sane(id.as_bytes()));
        }
        assert_ne!(from_client(None), from_client(None));
        // Random ids are 32 lowercase hex digits, all positions used.
        let ids: Vec<String> = (0..64).map(|_| from_client(None)).collect();
        for id in &ids {
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
                "{id}"
            );
        }
        for pos in [0, 31] {
            let distinct: std::collections::HashSet<u8> =
                ids.iter().map(|id| id.as_bytes()[pos]).collect();
            assert!(distinct.len() > 4, "position {pos} barely varies");
        }
        assert!(is_sane(&[b'a'; 128]));
    }
}
