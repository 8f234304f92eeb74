//! `X-Request-Id`: kept from the client when it is a sane token, generated otherwise.

/// Whether a client-supplied id is safe to log and forward: 1–128 chars of `[A-Za-z0-9._-]`.
pub fn is_sane(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The id for a request: the client's when sane, else 128 random bits in hex.
pub fn from_client(client: Option<&[u8]>) -> String {
    match client {
        Some(id) if is_sane(id) => String::from_utf8_lossy(id).into_owned(),
        _ => format!("{:032x}", rand::random::<u128>()),
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
        assert!(is_sane(&[b'a'; 128]));
    }
}
