//! Accept-Encoding negotiation (static and proxied) and Range parsing: no panic, ranges stay
//! inside the body, compression only picks a coding the header names (or `*` admits).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = std::str::from_utf8(data) else {
        return;
    };
    for (br, gz) in [(true, true), (true, false), (false, true), (false, false)] {
        let _ = gateway::http::conneg::negotiate(Some(v), br, gz);
    }
    if let Some(enc) = gateway::compress::negotiate(Some(v)) {
        let lower = v.to_ascii_lowercase();
        assert!(lower.contains(enc.as_str()) || lower.contains('*'), "{v:?} -> {enc:?}");
    }
    for len in [0u64, 1, 1000, u64::MAX] {
        if let gateway::http::conneg::RangeSpec::Part(s, e) = gateway::http::conneg::parse_range(v, len) {
            assert!(s <= e && e < len, "{v:?} len {len} -> {s}-{e}");
        }
    }
});
