//! Micro-benchmarks of the request path's pieces: path normalisation, route match, static
//! lookup + negotiation, JWT verification per algorithm (uncached and cached), a rate-limit
//! check (allowed and rejected). Run: `cargo bench -p gateway --bench edge`.

use criterion::{criterion_group, criterion_main, Criterion};
use gateway::auth::JwtProvider;
use gateway::config::file::{JwtProviderConf, RatePolicyConf};
use gateway::rate_limit::{LimitKey, RatePolicy};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use std::hint::black_box;
use std::path::Path;

fn provider(dir: &Path, alg: &str, source: &str, cache_ttl: u64) -> JwtProvider {
    let conf: JwtProviderConf = toml::from_str(&format!(
        "issuer = \"i\"\naudiences = [\"a\"]\nalgorithms = [\"{alg}\"]\n{source}\ncache_ttl_seconds = {cache_ttl}\n"
    ))
    .expect("conf");
    JwtProvider::try_from_conf(alg, &conf, dir).expect("provider")
}

fn claims() -> serde_json::Value {
    let exp = time::OffsetDateTime::now_utc().unix_timestamp() + 3600;
    serde_json::json!({"iss": "i", "aud": "a", "sub": "user-1", "exp": exp, "scope": "expenses:read"})
}

fn bench_jwt(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tmp");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("rt");
    // HS256
    std::fs::write(dir.path().join("secret"), [7u8; 32]).expect("secret");
    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(&[7u8; 32]),
    )
    .expect("hs");
    let hs_src = format!("secret_file = \"{}\"", dir.path().join("secret").display());
    // EdDSA and ES256 with keys made here.
    let mut cases = vec![("HS256", hs, hs_src)];
    for (alg, sig) in [
        ("EdDSA", &rcgen::PKCS_ED25519),
        ("ES256", &rcgen::PKCS_ECDSA_P256_SHA256),
    ] {
        let kp = rcgen::KeyPair::generate_for(sig).expect("key");
        let enc = match alg {
            "EdDSA" => EncodingKey::from_ed_pem(kp.serialize_pem().as_bytes()),
            _ => EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()),
        }
        .expect("enc");
        let pubfile = dir.path().join(format!("{alg}.pub.pem"));
        std::fs::write(&pubfile, kp.public_key_pem()).expect("pub");
        let token = jsonwebtoken::encode(
            &Header::new(if alg == "EdDSA" {
                Algorithm::EdDSA
            } else {
                Algorithm::ES256
            }),
            &claims(),
            &enc,
        )
        .expect("sign");
        cases.push((alg, token, format!("key_file = \"{}\"", pubfile.display())));
    }
    for (alg, token, src) in &cases {
        let uncached = provider(dir.path(), alg, src, 0);
        let cached = provider(dir.path(), alg, src, 300);
        assert!(
            rt.block_on(uncached.verify(token)).is_ok(),
            "{alg} verifies"
        );
        c.bench_function(&format!("jwt/{alg}/uncached"), |b| {
            b.iter(|| rt.block_on(uncached.verify(black_box(token))).is_ok())
        });
        c.bench_function(&format!("jwt/{alg}/cached"), |b| {
            b.iter(|| rt.block_on(cached.verify(black_box(token))).is_ok())
        });
    }
}

fn bench_rate(c: &mut Criterion) {
    let conf: RatePolicyConf =
        toml::from_str("key = \"client_ip\"\nquota = 1000000000\nper = \"second\"\n")
            .expect("conf");
    let open = RatePolicy::try_from_conf("open", &conf).expect("policy");
    let key = LimitKey::Ip("203.0.113.7".parse().expect("ip"));
    c.bench_function("rate_limit/allowed", |b| {
        b.iter(|| open.check(black_box(&key)))
    });
    let conf: RatePolicyConf =
        toml::from_str("key = \"client_ip\"\nquota = 1\nper = \"hour\"\nburst = 1\n")
            .expect("conf");
    let shut = RatePolicy::try_from_conf("shut", &conf).expect("policy");
    let _ = shut.check(&key);
    c.bench_function("rate_limit/rejected", |b| {
        b.iter(|| shut.check(black_box(&key)))
    });
}

fn bench_path_and_negotiation(c: &mut Criterion) {
    c.bench_function("path/normalize/clean", |b| {
        b.iter(|| gateway::path::normalize(black_box("/api/expenses/42"), true).is_ok())
    });
    c.bench_function("path/normalize/dirty", |b| {
        b.iter(|| gateway::path::normalize(black_box("/static/%2e%2e//api/./x%7E"), true).is_ok())
    });
    c.bench_function("static/negotiate", |b| {
        b.iter(|| {
            gateway::http::conneg::negotiate(black_box(Some("gzip, deflate, br, zstd")), true, true)
        })
    });
    c.bench_function("static/range", |b| {
        b.iter(|| gateway::http::conneg::parse_range(black_box("bytes=100-199"), 4096))
    });
    let routes: Vec<gateway::route::Route> = ["/api", "/admin", "/.well-known/jwks.json", "/"]
        .iter()
        .map(|p| {
            let pool: gateway::config::file::UpstreamConf =
                toml::from_str("peers = [\"127.0.0.1:9\"]").expect("pool");
            gateway::route::Route::new(
                p,
                p,
                None,
                gateway::route::RouteKind::Proxy {
                    split: gateway::split::Split::single(
                        p,
                        std::sync::Arc::new(
                            gateway::upstream::Pool::try_from_conf("p", &pool).expect("pool"),
                        ),
                    ),
                    strip_prefix: false,
                },
            )
        })
        .collect();
    c.bench_function("route/match", |b| {
        b.iter(|| {
            routes
                .iter()
                .position(|r| r.matches(black_box("example.com"), black_box("/assets/app.js")))
        })
    });
}

criterion_group!(benches, bench_jwt, bench_rate, bench_path_and_negotiation);
criterion_main!(benches);
