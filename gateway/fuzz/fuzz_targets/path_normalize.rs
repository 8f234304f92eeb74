//! The one normalised path: never panics, and what it returns is canonical (normalising it
//! again changes nothing) and can't climb above `/`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let _ = gateway::proxy::hygiene::check_target(data);
    for merge in [true, false] {
        if let Ok(p) = gateway::path::normalize(raw, merge) {
            let p = p.into_owned();
            assert!(p.starts_with('/'), "{raw:?} -> {p:?}");
            assert!(!p.split('/').any(|s| s == ".."), "{raw:?} -> {p:?}");
            let again = gateway::path::normalize(&p, merge).expect("a normalised path stays valid");
            assert_eq!(again, p, "normalisation is idempotent");
            let _ = gateway::path::decode_fully(&p);
        }
    }
});
