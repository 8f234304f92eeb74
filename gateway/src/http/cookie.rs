//! Reading one cookie out of a request's `Cookie` headers (HTTP/2 clients send one header per
//! cookie, HTTP/1.1 clients one header for all).

/// The first non-empty value of cookie `name`, if any.
pub fn value<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .find_map(|h| {
            cookie::Cookie::split_parse(h)
                .filter_map(Result::ok)
                .filter(|c| c.name_raw() == Some(name))
                .find_map(|c| c.value_raw().filter(|v| !v.is_empty()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_cookie_in_any_cookie_header() {
        let mut h = http::HeaderMap::new();
        assert_eq!(value(&h, "a"), None);
        h.append(http::header::COOKIE, "x=1; a=; b=2".parse().expect("v"));
        h.append(http::header::COOKIE, "a=3".parse().expect("v"));
        assert_eq!(value(&h, "b"), Some("2"));
        // An empty value is no value: the next header's counts.
        assert_eq!(value(&h, "a"), Some("3"));
        assert_eq!(value(&h, "c"), None);
    }
}
