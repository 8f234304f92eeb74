//! Property tests (the bounded, always-run form of fuzzing) over the parsers that face
//! untrusted input: path normalisation, Range, Accept-Encoding, request targets, JWT front
//! end, and the config parser. Any failure found becomes a regression case in the unit tests.

use proptest::prelude::*;

fn cfg() -> ProptestConfig {
    ProptestConfig {
        cases: 3000,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Path-ish strings: slashes, dots, percent escapes and random bytes.
fn pathish() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just("/".to_string()),
            Just(".".to_string()),
            Just("..".to_string()),
            Just("%2e".to_string()),
            Just("%2F".to_string()),
            Just("%5c".to_string()),
            Just("%00".to_string()),
            Just("%".to_string()),
            "[a-zA-Z0-9_~-]{1,4}",
            "%[0-9a-fA-F]{2}",
            any::<char>().prop_map(|c| c.to_string()),
        ],
        0..24,
    )
    .prop_map(|parts| format!("/{}", parts.concat()))
}

proptest! {
    #![proptest_config(cfg())]

    #[test]
    fn normalised_paths_are_canonical_and_stable(p in pathish()) {
        if let Ok(n) = gateway::path::normalize(&p, true) {
            let n = n.into_owned();
            prop_assert!(n.starts_with('/'));
            prop_assert!(!n.contains("//"));
            for seg in n.split('/') {
                prop_assert!(seg != "." && seg != "..", "{n}");
            }
            let lower = n.to_ascii_lowercase();
            prop_assert!(!lower.contains("%2f") && !lower.contains("%5c") && !lower.contains("%00"));
            prop_assert!(!n.contains('\\'));
            // Normalising twice changes nothing.
            let again = gateway::path::normalize(&n, true).map(|c| c.into_owned());
            prop_assert_eq!(again.as_deref(), Ok(n.as_str()));
        }
    }

    #[test]
    fn ranges_stay_inside_the_body(v in "[a-z=0-9,\\- ]{0,24}", len in 0u64..100_000) {
        if let gateway::http::conneg::RangeSpec::Part(s, e) = gateway::http::conneg::parse_range(&v, len) {
            prop_assert!(s <= e && e < len);
        }
    }

    #[test]
    fn accept_encoding_never_panics(v in "[a-z*;=0-9., ]{0,40}", br in any::<bool>(), gz in any::<bool>()) {
        let _ = gateway::http::conneg::negotiate(Some(&v), br, gz);
    }

    #[test]
    fn compression_only_picks_what_the_client_accepts(
        items in proptest::collection::vec(("(gzip|br|zstd|identity|\\*|deflate)", 0u8..=10), 0..5)
    ) {
        use gateway::http::conneg::Encoding;
        let header: Vec<String> = items.iter().map(|(n, q)| format!("{n};q={}", f32::from(*q) / 10.0)).collect();
        let header = header.join(", ");
        if let Some(enc) = gateway::compress::negotiate(Some(&header)) {
            let name = match enc {
                Encoding::Gzip => "gzip",
                Encoding::Brotli => "br",
                Encoding::Zstd => "zstd",
                Encoding::Identity => unreachable!("identity is None"),
            };
            // Chosen only with q > 0, named explicitly or through `*` when not named.
            let named = items.iter().rev().find(|(n, _)| n == name);
            let star = items.iter().rev().find(|(n, _)| n == "*");
            let q = named.or(star).map(|(_, q)| *q).unwrap_or(0);
            prop_assert!(q > 0, "{header} -> {name}");
        }
    }

    #[test]
    fn request_targets_with_forbidden_bytes_are_refused(p in "/[ -~]{0,30}") {
        let ok = gateway::proxy::hygiene::check_target(p.as_bytes());
        let forbidden = p.bytes().any(|b| matches!(b, b' ' | b'"' | b'<' | b'>' | b'\\' | b'{' | b'}' | b'|' | b'^' | b'`'));
        if forbidden {
            prop_assert!(!ok);
        }
    }

    #[test]
    fn config_parser_never_panics(text in "[a-z_=\\[\\]\\.\"0-9 \n]{0,200}") {
        let _ = gateway::config::compile("fuzz.toml", &text, std::path::Path::new("/nonexistent"), None);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn garbage_tokens_are_rejected_not_crashed(token in "[A-Za-z0-9_.=+/-]{0,400}") {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        let verdict = rt.block_on(provider().verify(&token));
        prop_assert!(verdict.is_err());
    }
}

fn provider() -> &'static gateway::auth::JwtProvider {
    use std::sync::OnceLock;
    static P: OnceLock<gateway::auth::JwtProvider> = OnceLock::new();
    P.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("props-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("secret"), [7u8; 48]).expect("secret");
        let conf: gateway::config::file::JwtProviderConf = toml::from_str(&format!(
            "issuer = \"i\"\naudiences = [\"a\"]\nalgorithms = [\"HS256\"]\nsecret_file = \"{}\"\n",
            dir.join("secret").display()
        ))
        .expect("conf");
        gateway::auth::JwtProvider::try_from_conf("fuzz", &conf, &dir).expect("provider")
    })
}
