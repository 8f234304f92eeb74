//! Reverse proxy behaviour through the real gateway binary.

use crate::harness::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn api_conf(
    dir: &std::path::Path,
    ports: &Ports,
    certs: &TestCerts,
    pool_txt: &str,
    limits: &str,
) -> String {
    format!(
        "{}{}{}{}\n[[routes]]\nname = \"api\"\nprefix = \"/api\"\nkind = \"proxy\"\nupstream = \"backend\"\n",
        ports.sections(dir),
        tls_section(certs),
        limits,
        pool_txt
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expense_flow_through_the_gateway() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    let (backend, seen) = expense_backend(dir.path()).await;
    let ports = Ports::new();
    let conf = api_conf(
        dir.path(),
        &ports,
        &certs,
        &pool("backend", &[backend.to_string()], ""),
        "",
    );
    let gw = start_gateway(dir.path(), &ports, &conf, &certs.ca_pem);
    gw.wait_ready().await;
    let c = gw.client();

    let r = c
        .post(gw.url("/api/auth/register"))
        .json(&json!({"email": "Ann@Example.com", "password": "correct horse"}))
        .send()
        .await
        .expect("register");
    assert_eq!(r.status(), 201);
    assert!(r.headers().get("strict-transport-security").is_some());

    let r = c
        .post(gw.url("/api/auth/login"))
        .header("X-Request-Id", "flow-test-1")
        .json(&json!({"email": "ann@example.com", "password": "correct horse"}))
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "flow-test-1");
    let tok: Value = r.json().await.expect("json");
    assert_eq!(tok["token_type"], "Bearer");
    let token = tok["access_token"].as_str().expect("token").to_string();

    let r = c
        .post(gw.url("/api/expenses"))
        .bearer_auth(&token)
        .json(&json!({"amount_cents": 1250, "currency": "EUR", "category": "food", "date": "2026-11-01", "note": "lunch"}))
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.expect("json");

    let r = c
        .get(gw.url("/api/expenses"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("list");
    assert_eq!(r.status(), 200);
    // A generated request id is a 32-hex token.
    let rid = r.headers()["x-request-id"]
        .to_str()
        .expect("rid")
        .to_string();
    assert_eq!(rid.len(), 32);
    let list: Value = r.json().await.expect("json");
    assert_eq!(list["total"], 1);
    assert_eq!(list["items"][0]["id"], created["id"]);
    assert_eq!(list["items"][0]["note"], "lunch");

    let seen = seen.lock().expect("log").clone();
    let login = seen
        .iter()
        .find(|s| s.uri == "/api/auth/login")
        .expect("backend saw login");
    assert_eq!(login.header("x-forwarded-proto"), Some("https"));
    assert_eq!(login.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(login.header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(login.header("x-request-id"), Some("flow-test-1"));
    assert_eq!(
        login.header("x-forwarded-host"),
        Some(format!("localhost:{}", gw.https).as_str())
    );
    let listed = seen
        .iter()
        .find(|s| s.uri == "/api/expenses" && s.method == "GET")
        .expect("list seen");
    assert_eq!(listed.header("x-request-id"), Some(rid.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_is_negotiated_and_proxied() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    let (backend, seen) = recording_backend().await;
    let ports = Ports::new();
    let conf = api_conf(
        dir.path(),
        &ports,
        &certs,
        &pool("backend", &[backend.to_string()], ""),
        "",
    );
    let gw = start_gateway(dir.path(), &ports, &conf, &certs.ca_pem);
    let r = gw
        .client()
        .get(gw.url("/api/h2?x=1"))
        .send()
        .await
        .expect("h2");
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    assert!(
        r.headers().get("server").is_none(),
        "upstream Server header hidden"
    );
    let seen = seen.lock().expect("log").clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri, "/api/h2?x=1");
    // The HTTP/1.1 upstream request carries a Host built from :authority.
    assert_eq!(
        seen[0].header("host"),
        Some(format!("localhost:{}", gw.https).as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_are_rebuilt_and_hop_by_hop_stripped() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    let (backend, seen) = recording_backend().await;
    let ports = Ports::new();
    let conf = api_conf(
        dir.path(),
        &ports,
        &certs,
        &pool("backend", &[backend.to_string()], ""),
        "",
    );
    let gw = start_gateway(dir.path(), &ports, &conf, &certs.ca_pem);
    let c = gw.client_builder().http1_only().build().expect("client");
    let r = c
        .get(gw.url("/api/x"))
        .header("X-Forwarded-For", "203.0.113.7")
        .header("X-Forwarded-Proto", "http")
        .header("X-Request-Id", "bad id with spaces")
        .header("Connection", "X-Drop-Me")
        .header("X-Drop-Me", "1")
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 200);
    let rid = r.headers()["x-request-id"]
        .to_str()
        .expect("rid")
        .to_string();
    assert_ne!(rid, "bad id with spaces");
    let s = seen.lock().expect("log")[0].clone();
    // The peer is not a trusted proxy: the client's claim is replaced, not passed on.
    assert_eq!(s.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(s.header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(s.header("x-forwarded-proto"), Some("https"));
    assert_eq!(s.header("x-request-id"), Some(rid.as_str()));
    assert_eq!(s.header("x-drop-me"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_peers_down_is_a_fast_json_502() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    let ports = Ports::new();
    let dead = vec![
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    ];
    let conf = api_conf(
        dir.path(),
        &ports,
        &certs,
        &pool("backend", &dead, "connect_timeout_ms = 1000"),
        "",
    );
    let gw = start_gateway(dir.path(), &ports, &conf, &certs.ca_pem);
    let c = gw.client();
    for _ in 0..3 {
        let t = Instant::now();
        let r = c.get(gw.url("/api/expenses")).send().await.expect("req");
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "took {:?}",
            t.elapsed()
        );
        assert_eq!(r.status(), 502);
        assert_eq!(r.headers()["content-type"], "application/json");
        let rid = r.headers()["x-request-id"]
            .to_str()
            .expect("rid")
            .to_string();
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["error"], "bad_gateway");
        assert_eq!(v["request_id"], rid.as_str());
    }
    // Readiness lists the pool once the health check ran, and stays ready (the gateway can
    // still serve everything but this pool).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = reqwest::get(gw.admin_url("/readyz")).await.expect("readyz");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["pools_down"][0], "backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalling_peer_is_a_504_at_the_read_timeout() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    let (backend, _seen) = recording_backend().await;
    let ports = Ports::new();
    let conf = api_conf(
        dir.path(),
        &ports,
        &certs,
        &pool("backend", &[backend.to_string()], "read_timeout_ms = 600"),
        "",
    );
    let gw = start_gateway(dir.path(), &ports, &conf, &certs.ca_pem);
    let t = Instant::now();
    let r = gw
        .client()
        .get(gw.url("/api/slow"))
        .send()
        .await
        .expect("req");
    let took = t.elapsed();
    assert_eq!(r.status(), 504);
    assert!(
        took >= Duration::from_millis(550) && took < Duration::from_millis(3000),
        "{took:?}"
    );
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"], "gateway_timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_dead_peer_of_two_loses_no_request() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    let (backend, seen) = recording_backend().await;
    let ports = Ports::new();
    let peers = vec![format!("127.0.0.1:{}", free_port()), backend.to_string()];
    let conf = api_conf(dir.path(), &ports, &certs, &pool("backend", &peers, ""), "");
    let gw = start_gateway(dir.path(), &ports, &conf, &certs.ca_pem);
    let c = gw.client();
    for i in 0..30 {
        let r = c
            .post(gw.url(&format!("/api/n/{i}")))
            .body("payload")
            .send()
            .await
            .expect("req");
        assert_eq!(r.status(), 200, "request {i}");
    }
    assert_eq!(seen.lock().expect("log").len(), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_and_headers_are_refused_before_the_backend() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    let (backend, seen) = recording_backend().await;
    let ports = Ports::new();
    let conf = api_conf(
        dir.path(),
        &ports,
        &certs,
        &pool("backend", &[backend.to_string()], ""),
        "\n[limits]\nmax_body_bytes = 1024\nmax_header_bytes = 8192\n",
    );
    let gw = start_gateway(dir.path(), &ports, &conf, &certs.ca_pem);
    let c = gw.client_builder().http1_only().build().expect("client");

    let r = c
        .post(gw.url("/api/upload"))
        .body(vec![b'x'; 2048])
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 413);
    assert_eq!(r.headers()["content-type"], "application/json");
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"], "payload_too_large");

    let r = c
        .get(gw.url("/api/x"))
        .header("X-Big", "a".repeat(10_000))
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 431);

    // At the limit exactly, it passes.
    let r = c
        .post(gw.url("/api/upload"))
        .body(vec![b'x'; 1024])
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 200);
    let seen = seen.lock().expect("log").clone();
    assert_eq!(
        seen.len(),
        1,
        "only the in-limit request reached the backend: {seen:?}"
    );
    assert_eq!(seen[0].body_len, 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_path_is_a_json_404_and_http_redirects_with_308() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    let (backend, seen) = recording_backend().await;
    let ports = Ports::new();
    let conf = api_conf(
        dir.path(),
        &ports,
        &certs,
        &pool("backend", &[backend.to_string()], ""),
        "",
    );
    let gw = start_gateway(dir.path(), &ports, &conf, &certs.ca_pem);
    let r = gw.client().get(gw.url("/nope")).send().await.expect("req");
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"], "not_found");
    let r = gw.client().get(gw.url("/apix")).send().await.expect("req");
    assert_eq!(r.status(), 404, "prefix matches whole segments");
    assert!(seen.lock().expect("log").is_empty());

    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    for (path, method) in [
        ("/a/b?x=1&y=two", "GET"),
        ("/api/auth/login?next=%2F", "POST"),
    ] {
        let r = plain
            .request(
                method.parse().expect("method"),
                format!("http://localhost:{}{path}", gw.http),
            )
            .send()
            .await
            .expect("req");
        assert_eq!(r.status(), 308);
        assert_eq!(
            r.headers()["location"],
            format!("https://localhost:{}{path}", gw.https).as_str()
        );
    }
}

/// A WebSocket echo backend on a free port.
async fn websocket_backend() -> std::net::SocketAddr {
    use axum::extract::ws::{Message, WebSocketUpgrade};
    use axum::routing::get;
    let router = axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/api/ws",
            get(|ws: WebSocketUpgrade| async move {
                ws.on_upgrade(|mut socket| async move {
                    while let Some(Ok(Message::Text(t))) = socket.recv().await {
                        if socket
                            .send(Message::Text(format!("echo:{t}").into()))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                })
            }),
        );
    serve_recorded(router).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_is_passed_through() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    let backend = websocket_backend().await;
    let ports = Ports::new();
    let conf = api_conf(
        dir.path(),
        &ports,
        &certs,
        &pool("backend", &[backend.to_string()], ""),
        "",
    );
    let gw = start_gateway(dir.path(), &ports, &conf, &certs.ca_pem);

    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut certs.ca_pem.as_bytes()) {
        roots.add(c.expect("ca")).expect("add");
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", gw.https))
        .await
        .expect("tcp");
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").expect("sni"),
            tcp,
        )
        .await
        .expect("tls");
    tls.write_all(
        format!(
            "GET /api/ws HTTP/1.1\r\nHost: localhost:{}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            gw.https
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tls.read_exact(&mut b).await.expect("read head");
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    // One masked text frame "hi", then read the echo.
    let mask = [1u8, 2, 3, 4];
    let payload: Vec<u8> = b"hi"
        .iter()
        .enumerate()
        .map(|(i, c)| c ^ mask[i % 4])
        .collect();
    let mut frame = vec![0x81, 0x80 | 2];
    frame.extend_from_slice(&mask);
    frame.extend_from_slice(&payload);
    tls.write_all(&frame).await.expect("frame");
    let mut hdr = [0u8; 2];
    tls.read_exact(&mut hdr).await.expect("echo header");
    assert_eq!(hdr[0], 0x81);
    let mut body = vec![0u8; (hdr[1] & 0x7f) as usize];
    tls.read_exact(&mut body).await.expect("echo body");
    assert_eq!(body, b"echo:hi");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxy_forwarded_for_is_appended_and_names_the_client() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    let (backend, seen) = recording_backend().await;
    let ports = Ports::new();
    let conf = api_conf(
        dir.path(),
        &ports,
        &certs,
        &pool("backend", &[backend.to_string()], ""),
        "\n[client_ip]\ntrusted_proxies = [\"127.0.0.0/8\"]\n",
    );
    let gw = start_gateway(dir.path(), &ports, &conf, &certs.ca_pem);
    let r = gw
        .client()
        .get(gw.url("/api/x"))
        .header("X-Forwarded-For", "198.51.100.4, 203.0.113.7")
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 200);
    let s = seen.lock().expect("log")[0].clone();
    assert_eq!(
        s.header("x-forwarded-for"),
        Some("198.51.100.4, 203.0.113.7, 127.0.0.1")
    );
    assert_eq!(s.header("x-real-ip"), Some("203.0.113.7"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_pool_does_not_hold_up_the_health_checks_of_another() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    let ports = Ports::new();
    // A peer that accepts and never answers: each of its checks waits the 8 s read timeout.
    let stuck = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let stuck_addr = stuck.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = stuck.accept().await {
            held.push(s);
        }
    });
    // A peer that counts its health checks.
    let checks = Arc::new(AtomicUsize::new(0));
    let c2 = checks.clone();
    let router = axum::Router::new().route(
        "/healthz",
        axum::routing::get(move || {
            let c = c2.clone();
            async move {
                c.fetch_add(1, Ordering::Relaxed);
                "ok"
            }
        }),
    );
    let (quick, _) = serve_recorded(router).await;
    let conf = format!(
        "{}{}{}{}\n[[routes]]\nname = \"api\"\nprefix = \"/api\"\nkind = \"proxy\"\nupstream = \"quick\"\n\
         \n[[routes]]\nname = \"slow\"\nprefix = \"/slow\"\nkind = \"proxy\"\nupstream = \"stuck\"\n",
        ports.sections(dir.path()),
        tls_section(&certs),
        pool(
            "stuck",
            &[stuck_addr.to_string()],
            "health_check_path = \"/healthz\"\nread_timeout_ms = 8000",
        )
        .replace("health_check_interval_ms = 500", "health_check_interval_ms = 8000"),
        pool(
            "quick",
            &[quick.to_string()],
            "health_check_path = \"/healthz\"",
        )
        .replace("health_check_interval_ms = 500", "health_check_interval_ms = 250"),
    );
    let _gw = start_gateway(dir.path(), &ports, &conf, &certs.ca_pem);
    // Let the first passes start (the stuck pool's hangs from here on).
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let before = checks.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = checks.load(Ordering::Relaxed) - before;
    // Every 250 ms over 3 s is 12 (fewer on a loaded machine); one after another, the stuck
    // pool's 8 s pass allows at most 1.
    assert!(
        during >= 4,
        "the quick pool was checked {during} times in 3 s while the other pool hung"
    );
}
