//! API traffic at the edge: response compression, CORS preflights, maintenance mode.

use crate::harness::*;
use axum::routing::get;
use std::io::Read;

fn json_of(len: usize) -> String {
    let mut s = String::from("{\"items\":[");
    while s.len() < len {
        s.push_str("{\"id\":1,\"note\":\"lunch with the team\"},");
    }
    s.push_str("{}]}");
    s
}

async fn api_backend() -> (std::net::SocketAddr, Log) {
    let big = json_of(10 * 1024);
    let router = axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/api/big",
            get(move || {
                let b = big.clone();
                async move { ([("content-type", "application/json")], b) }
            }),
        )
        .route(
            "/api/small",
            get(|| async { ([("content-type", "application/json")], json_of(150)) }),
        )
        .route(
            "/api/png",
            get(|| async { ([("content-type", "image/png")], vec![7u8; 4096]) }),
        )
        .route(
            "/api/encoded",
            get(|| async {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                std::io::Write::write_all(&mut gz, json_of(4096).as_bytes()).expect("gz");
                (
                    [
                        ("content-type", "application/json"),
                        ("content-encoding", "gzip"),
                    ],
                    gz.finish().expect("gz"),
                )
            }),
        )
        .route(
            "/api/notransform",
            get(|| async {
                (
                    [
                        ("content-type", "application/json"),
                        ("cache-control", "no-transform"),
                    ],
                    json_of(4096),
                )
            }),
        )
        .fallback(get(|| async {
            ([("content-type", "application/json")], "{}")
        }));
    serve_recorded(router).await
}

fn route(extra: &str) -> String {
    format!("\n[[routes]]\nname = \"api\"\nprefix = \"/api\"\nkind = \"proxy\"\nupstream = \"backend\"\n{extra}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_are_compressed_only_when_they_should_be() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    let (backend, _) = api_backend().await;
    let ports = Ports::new();
    let conf = format!(
        "{}{}{}{}",
        ports.sections(dir.path()),
        tls_section(&certs),
        pool("backend", &[backend.to_string()], ""),
        route("compress = true\ncompress_level = 4")
    );
    let gw = start_gateway(dir.path(), &ports, &conf, &certs.ca_pem);
    let c = gw
        .client_builder()
        .no_gzip()
        .no_brotli()
        .build()
        .expect("client");
    let original = json_of(10 * 1024).into_bytes();
    // Brotli is not offered for proxied responses (see proxy.rs): "br" alone gets identity.
    for (ae, want) in [
        ("gzip", "gzip"),
        ("zstd", "zstd"),
        ("gzip, br", "gzip"),
        ("deflate, gzip;q=0.5", "gzip"),
    ] {
        let r = c
            .get(gw.url("/api/big"))
            .header("accept-encoding", ae)
            .send()
            .await
            .expect("req");
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-encoding"], want, "{ae}");
        assert!(r.headers().get_all("vary").iter().any(|v| v
            .to_str()
            .expect("v")
            .to_ascii_lowercase()
            .contains("accept-encoding")));
        let body = r.bytes().await.expect("body");
        assert!(body.len() < original.len() / 2, "{ae}: actually compressed");
        let mut out = Vec::new();
        match want {
            "br" => {
                if let Err(e) = brotli::Decompressor::new(&body[..], 4096).read_to_end(&mut out) {
                    panic!(
                        "br: {e}: {} bytes, head {:?}, decoded so far {}",
                        body.len(),
                        &body[..16.min(body.len())],
                        out.len()
                    );
                }
            }
            "gzip" => {
                flate2::read::GzDecoder::new(&body[..])
                    .read_to_end(&mut out)
                    .expect("gz");
            }
            _ => {
                out = zstd::decode_all(&body[..]).expect("zstd");
            }
        }
        assert_eq!(out, original, "{ae}: decodes to the same bytes");
    }
    for (path, ae) in [
        ("/api/small", "gzip, br"),   // under 1 KiB
        ("/api/png", "gzip, br"),     // not a compressible type
        ("/api/big", "identity"),     // client wants none
        ("/api/big", "br"),           // brotli not offered for proxied responses
        ("/api/notransform", "gzip"), // Cache-Control: no-transform
    ] {
        let r = c
            .get(gw.url(path))
            .header("accept-encoding", ae)
            .send()
            .await
            .expect("req");
        assert!(
            r.headers().get("content-encoding").is_none(),
            "{path} with {ae}"
        );
    }
    // Already encoded upstream: passed through untouched, never re-encoded.
    let r = c
        .get(gw.url("/api/encoded"))
        .header("accept-encoding", "br, gzip")
        .send()
        .await
        .expect("req");
    assert_eq!(r.headers()["content-encoding"], "gzip");
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&r.bytes().await.expect("b")[..])
        .read_to_end(&mut out)
        .expect("gz");
    assert_eq!(out, json_of(4096).into_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflights_are_answered_at_the_edge() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    let (backend, seen) = api_backend().await;
    std::fs::write(dir.path().join("secret"), [3u8; 40]).expect("secret");
    let ports = Ports::new();
    let conf = format!(
        "{}{}{}\n[jwt_providers.p]\nissuer = \"i\"\naudiences = [\"a\"]\nalgorithms = [\"HS256\"]\nsecret_file = \"{}\"\n{}",
        ports.sections(dir.path()),
        tls_section(&certs),
        pool("backend", &[backend.to_string()], ""),
        dir.path().join("secret").display(),
        route("auth = \"jwt\"\nauth_provider = \"p\"\nauth_public = [\"GET /api/small\"]\n\
               cors = { allow_origins = [\"https://app.example.com\", \"https://*.example.org\"], allow_methods = [\"GET\", \"POST\", \"DELETE\"], allow_headers = [\"content-type\", \"authorization\"], expose_headers = [\"x-request-id\"], allow_credentials = true, max_age = 600 }")
    );
    let gw = start_gateway(dir.path(), &ports, &conf, &certs.ca_pem);
    let c = gw.client();
    let preflight = |origin: &'static str, method: &'static str| {
        c.request(reqwest::Method::OPTIONS, gw.url("/api/expenses"))
            .header("origin", origin)
            .header("access-control-request-method", method)
            .header(
                "access-control-request-headers",
                "content-type, authorization",
            )
            .send()
    };
    let r = preflight("https://app.example.com", "DELETE")
        .await
        .expect("preflight");
    assert_eq!(r.status(), 204);
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(h["access-control-allow-methods"], "GET, POST, DELETE");
    assert_eq!(
        h["access-control-allow-headers"],
        "content-type, authorization"
    );
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-max-age"], "600");
    assert!(h["vary"].to_str().expect("vary").contains("Origin"));
    let r = preflight("https://team.example.org", "POST")
        .await
        .expect("preflight");
    assert_eq!(r.status(), 204);
    for origin in ["https://evil.test", "https://example.org.evil.test", "null"] {
        let r = preflight(origin, "POST").await.expect("preflight");
        assert_eq!(r.status(), 403, "{origin}");
        assert!(r.headers().get("access-control-allow-origin").is_none());
    }
    let r = preflight("https://app.example.com", "PATCH")
        .await
        .expect("method");
    assert_eq!(r.status(), 403, "method not allowed");
    assert!(
        seen.lock().expect("log").is_empty(),
        "no preflight reached the backend"
    );

    // A simple request from an allowed origin: the origin echoed, Vary: Origin.
    let r = c
        .get(gw.url("/api/small"))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .expect("simple");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(r.headers()["access-control-expose-headers"], "x-request-id");
    assert!(r.headers().get_all("vary").iter().any(|v| v == "Origin"));
    let r = c
        .get(gw.url("/api/small"))
        .header("origin", "https://evil.test")
        .send()
        .await
        .expect("simple");
    assert!(r.headers().get("access-control-allow-origin").is_none());

    // The check refuses "*" with credentials.
    let bad = conf.replace(
        "allow_origins = [\"https://app.example.com\", \"https://*.example.org\"]",
        "allow_origins = [\"*\"]",
    );
    std::fs::write(dir.path().join("bad.toml"), bad).expect("write");
    let (ok, out) = check(&dir.path().join("bad.toml"));
    assert!(
        !ok && out.contains("cannot be combined with allow_credentials"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_mode_with_an_allow_list_switched_by_reload() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    let (backend, seen) = api_backend().await;
    let ports = Ports::new();
    let base = format!(
        "{}{}{}{}",
        ports.sections(dir.path()),
        tls_section(&certs),
        pool("backend", &[backend.to_string()], ""),
        route("")
    );
    let on = format!(
        "{base}\n[maintenance]\nenabled = true\nallow = [\"127.0.0.2\"]\nretry_after = 120\n"
    );
    let gw = start_gateway(dir.path(), &ports, &on, &certs.ca_pem);
    let everyone = gw.client();
    let ops = gw
        .client_builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().expect("ip"))
        .build()
        .expect("c");
    let r = everyone.get(gw.url("/api/small")).send().await.expect("r");
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "120");
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["error"], "maintenance");
    assert_eq!(
        ops.get(gw.url("/api/small"))
            .send()
            .await
            .expect("r")
            .status(),
        200
    );
    assert_eq!(
        seen.lock().expect("log").len(),
        1,
        "only the allow-listed request reached the backend"
    );

    write_atomic(&dir.path().join("gateway.toml"), &base);
    let (status, body) = admin_reload(&gw).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        everyone
            .get(gw.url("/api/small"))
            .send()
            .await
            .expect("r")
            .status(),
        200
    );
}
