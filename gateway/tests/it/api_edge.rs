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
            "/api/stream",
            get(|| async {
                // Chunked, no Content-Length: the encoder must finish when the stream ends.
                let chunks = (0..10)
                    .map(|_| Ok::<_, std::io::Error>(axum::body::Bytes::from(json_of(1500))));
                (
                    [("content-type", "application/json")],
                    axum::body::Body::from_stream(futures_util::stream::iter(chunks)),
                )
            }),
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
        .route(
            "/api/fail",
            get(|| async {
                (
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    [("content-type", "text/plain"), ("etag", "\"x\"")],
                    "stack trace: db password secret",
                )
            }),
        )
        .route(
            "/api/headers",
            get(|| async {
                (
                    [
                        ("content-type", "application/json"),
                        ("x-upstream", "internal"),
                        ("x-powered-by", "php/5"),
                        ("server", "apache/2.2"),
                    ],
                    "{}",
                )
            }),
        )
        .fallback(get(|| async {
            ([("content-type", "application/json")], "{}")
        }));
    serve_recorded(router).await
}

fn seen_len(log: &Log) -> usize {
    log.lock().expect("log").len()
}

/// Config with one proxy route `api` → `backend`, plus `extra` keys on the route.
fn api_conf(
    dir: &std::path::Path,
    certs: &TestCerts,
    ports: &Ports,
    backend: std::net::SocketAddr,
    extra: &str,
) -> String {
    format!(
        "{}{}{}{}",
        ports.sections(dir),
        tls_section(certs),
        pool("backend", &[backend.to_string()], ""),
        route(extra)
    )
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
    let conf = api_conf(
        dir.path(),
        &certs,
        &ports,
        backend,
        "compress = true\ncompress_level = 4",
    );
    let gw = start_gateway(dir.path(), &ports, &conf, &certs.ca_pem);
    let c = gw.raw_client();
    let big = json_of(10 * 1024).into_bytes();
    let stream = json_of(1500).repeat(10).into_bytes();
    // q-values decide; on a tie zstd, then br, then gzip. Over HTTP/1.1 and HTTP/2, for a
    // sized body and a chunked stream.
    let h2 = gw
        .raw_client_builder()
        .http2_prior_knowledge()
        .build()
        .expect("h2");
    for (client, path, original) in [
        (&c, "/api/big", &big),
        (&c, "/api/stream", &stream),
        (&h2, "/api/big", &big),
        (&h2, "/api/stream", &stream),
    ] {
        for (ae, want) in [
            ("gzip", "gzip"),
            ("zstd", "zstd"),
            ("br", "br"),
            ("gzip, br", "br"),
            ("gzip, br, zstd", "zstd"),
            ("gzip;q=0, br", "br"),
            ("br;q=0.5, gzip", "gzip"),
            ("deflate, gzip;q=0.5", "gzip"),
        ] {
            let r = client
                .get(gw.url(path))
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
                    if let Err(e) = brotli::Decompressor::new(&body[..], 4096).read_to_end(&mut out)
                    {
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
            assert_eq!(&out, original, "{path} {ae}: decodes to the same bytes");
        }
    }
    for (path, ae) in [
        ("/api/small", "gzip, br"),   // under 1 KiB
        ("/api/png", "gzip, br"),     // not a compressible type
        ("/api/big", "identity"),     // client wants none
        ("/api/big", "gzip;q=0"),     // refused explicitly
        ("/api/big", "deflate"),      // nothing we offer
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
    let base = api_conf(dir.path(), &certs, &ports, backend, "");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_rules_apply_in_order_after_the_gateway_headers() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    let (backend, seen_log) = api_backend().await;
    let ports = Ports::new();
    let conf = api_conf(dir.path(), &certs, &ports, backend, "request_headers = { remove = [\"x-drop\", \"x-order\"], set = { x-env = \"prod\", x-order = \"set\" }, add = { x-order = \"added\", x-trace = \"{request_id}|{client_ip}|{route}\" } }\n\
             response_headers = { remove = [\"x-upstream\"], set = { x-frame-options = \"DENY\", x-order = \"set\" }, add = { x-order = \"added\", x-served-by = \"{route} {{edge}}\" } }");
    let _gw = start_gateway(dir.path(), &ports, &conf, &certs.ca_pem);
    // The client names the gateway's headers (and a rule-set one) in Connection, and sends
    // its own copies: none of that survives.
    let req = b"GET /api/headers HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: trace-42\r\n\
X-Drop: 1\r\nX-Order: client\r\nX-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n\
Connection: close, X-Request-Id, X-Real-IP, X-Env, X-Trace\r\n\r\n";
    let resp = raw_https(
        ports.https,
        &certs.ca_pem,
        req,
        std::time::Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        raw_status(&resp),
        200,
        "{}\n{}",
        String::from_utf8_lossy(&resp),
        std::fs::read_to_string(dir.path().join("gateway.log")).unwrap_or_default()
    );
    let got = seen_log
        .lock()
        .expect("log")
        .last()
        .expect("proxied")
        .clone();
    let all = |name: &str| -> Vec<&str> {
        got.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert!(all("x-drop").is_empty());
    assert_eq!(
        all("x-order"),
        ["set", "added"],
        "remove, then set, then add"
    );
    assert_eq!(all("x-env"), ["prod"]);
    assert_eq!(all("x-trace"), ["trace-42|127.0.0.1|api"]);
    assert_eq!(all("x-request-id"), ["trace-42"]);
    assert_eq!(all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(all("x-real-ip"), ["127.0.0.1"]);
    assert_eq!(all("x-forwarded-proto"), ["https"]);
    let proxied = seen_len(&seen_log);
    // Naming X-Forwarded-* or Host in Connection is refused outright (pingora, as Envoy does).
    for nominated in ["X-Forwarded-For", "x-forwarded-proto", "Host"] {
        let req = format!(
            "GET /api/headers HTTP/1.1\r\nHost: localhost\r\nConnection: {nominated}\r\n\r\n"
        );
        let r = raw_https(
            ports.https,
            &certs.ca_pem,
            req.as_bytes(),
            std::time::Duration::from_secs(5),
        )
        .await;
        assert_eq!(raw_status(&r), 400, "{nominated}");
    }
    assert_eq!(
        seen_len(&seen_log),
        proxied,
        "refused requests never reach the backend"
    );

    let text = String::from_utf8_lossy(&resp).to_ascii_lowercase();
    let head: Vec<&str> = text
        .split("\r\n\r\n")
        .next()
        .expect("head")
        .lines()
        .collect();
    let values = |name: &str| -> Vec<String> {
        head.iter()
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.trim() == name)
            .map(|(_, v)| v.trim().to_string())
            .collect()
    };
    assert!(values("x-upstream").is_empty(), "{text}");
    assert!(values("server").is_empty(), "upstream Server hidden");
    assert!(
        values("x-powered-by").is_empty(),
        "upstream X-Powered-By hidden"
    );
    assert_eq!(values("x-frame-options"), ["deny"]);
    assert_eq!(values("x-order"), ["set", "added"]);
    assert_eq!(values("x-served-by"), ["api {edge}"]);
    assert_eq!(values("x-request-id"), ["trace-42"]);
    assert_eq!(values("x-content-type-options"), ["nosniff"]);
    assert_eq!(values("referrer-policy").len(), 1);
    assert_eq!(values("strict-transport-security").len(), 1);

    // Rules may not touch framing or identity headers, nor use unknown variables.
    for (bad, want) in [
        (
            "request_headers = { remove = [\"transfer-encoding\"] }",
            "managed by the gateway",
        ),
        (
            "request_headers = { set = { x-auth-subject = \"1\" } }",
            "managed by the gateway",
        ),
        (
            "response_headers = { set = { x-a = \"{nope}\" } }",
            "unknown variable",
        ),
        (
            "response_headers = { set = { content-length = \"1\" } }",
            "managed by the gateway",
        ),
    ] {
        let text = api_conf(dir.path(), &certs, &ports, backend, bad);
        std::fs::write(dir.path().join("bad.toml"), text).expect("write");
        let (ok, out) = check(&dir.path().join("bad.toml"));
        assert!(
            !ok && out.contains(want) && out.contains("bad.toml:"),
            "{bad}: {out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_pages_for_navigations_and_upstream_errors_replaced_on_request() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    let (backend, _) = api_backend().await;
    let site = dir.path().join("site");
    std::fs::create_dir(&site).expect("site");
    std::fs::write(site.join("index.html"), "<h1>app</h1>").expect("index");
    std::fs::write(dir.path().join("404.html"), "<h1>custom not found v1</h1>").expect("404");
    let ports = Ports::new();
    let conf = format!(
        "{}{}{}{}\n[[routes]]\nname = \"pass\"\nprefix = \"/pass\"\nkind = \"proxy\"\nupstream = \"backend\"\nstrip_prefix = true\n\
         \n[[routes]]\nname = \"web\"\nprefix = \"/\"\nkind = \"static\"\nroot = \"{}\"\nfallback = \"\"\n\
         \n[error_pages]\n404 = \"{}\"\n",
        ports.sections(dir.path()),
        tls_section(&certs),
        pool("backend", &[backend.to_string()], ""),
        route("replace_upstream_errors = true"),
        site.display(),
        dir.path().join("404.html").display()
    );
    let gw = start_gateway(dir.path(), &ports, &conf, &certs.ca_pem);
    let c = gw.client();
    let get =
        |path: &str, accept: &'static str| c.get(gw.url(path)).header("accept", accept).send();

    // A navigation on the static route: the configured page, as HTML, with security headers.
    let r = get("/missing/page", "text/html,application/xhtml+xml")
        .await
        .expect("r");
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert!(r.headers().contains_key("content-security-policy"));
    assert_eq!(r.text().await.expect("t"), "<h1>custom not found v1</h1>");
    // Not a navigation: JSON.
    let r = get("/missing.js", "*/*").await.expect("r");
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "application/json");
    // A status without a configured page: the built-in one, naming the request id.
    let r = c
        .get(gw.url("/index.html"))
        .header("accept", "text/html")
        .header("accept-encoding", "*;q=0")
        .header("x-request-id", "nav-406")
        .send()
        .await
        .expect("r");
    assert_eq!(r.status(), 406);
    let body = r.text().await.expect("t");
    assert!(
        body.contains("<h1>406 Not Acceptable</h1>") && body.contains("nav-406"),
        "{body}"
    );

    // Upstream 5xx: replaced on the opted-in route (JSON for API clients, HTML for
    // navigations), passed through on the other.
    let r = get("/api/fail", "application/json").await.expect("r");
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert!(r.headers().get("etag").is_none());
    let id = r.headers()["x-request-id"]
        .to_str()
        .expect("id")
        .to_string();
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["error"], "service_unavailable");
    assert_eq!(v["request_id"], id.as_str());
    let r = get("/api/fail", "text/html").await.expect("r");
    assert_eq!(r.status(), 503);
    let body = r.text().await.expect("t");
    assert!(
        body.contains("503 Service Unavailable") && !body.contains("secret"),
        "{body}"
    );
    let r = get("/pass/api/fail", "text/html").await.expect("r");
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.text().await.expect("t"),
        "stack trace: db password secret"
    );

    // The page file is watched: a deploy of a new page is live without a restart.
    write_atomic(&dir.path().join("404.html"), "<h1>custom not found v2</h1>");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let body = get("/missing/page", "text/html")
            .await
            .expect("r")
            .text()
            .await
            .expect("t");
        if body.contains("v2") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "page not reloaded: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // Statuses outside 400..=599 and missing files are refused by the check.
    let bad = conf.replace("404 = ", "200 = ");
    std::fs::write(dir.path().join("bad.toml"), bad).expect("w");
    let (ok, out) = check(&dir.path().join("bad.toml"));
    assert!(!ok && out.contains("not an error status"), "{out}");
    let bad = conf.replace("404.html", "nope.html");
    std::fs::write(dir.path().join("bad.toml"), bad).expect("w");
    let (ok, out) = check(&dir.path().join("bad.toml"));
    assert!(!ok && out.contains("[error_pages] 404"), "{out}");
}
