//! Raw-socket probes: malformed and smuggling requests written byte by byte over TLS.
//! Each asserts the status (or the close) and, through a recording backend, that exactly the
//! requests that should reach the backend did — none smuggled.

use crate::harness::*;
use std::time::Duration;

async fn start(dir: &std::path::Path) -> (Gateway, Log) {
    let certs = TestCerts::new(dir);
    let (backend, seen) = recording_backend().await;
    let site = dir.join("site");
    std::fs::create_dir_all(&site).expect("site");
    std::fs::write(site.join("index.html"), "<title>shell</title>").expect("index");
    let ports = Ports::new();
    let conf = format!(
        "{}{}{}\n[[routes]]\nname = \"api\"\nprefix = \"/api\"\nkind = \"proxy\"\nupstream = \"backend\"\n\n\
         [[routes]]\nname = \"web\"\nprefix = \"/\"\nkind = \"static\"\nroot = \"{}\"\n",
        ports.sections(dir),
        tls_section(&certs),
        pool("backend", &[backend.to_string()], "health_check_path = \"\""),
        site.display()
    );
    (start_gateway(dir, &ports, &conf, &certs.ca_pem), seen)
}

/// (name, raw request, expected status, must close)
fn cases() -> Vec<(&'static str, String, u16, bool)> {
    let h = "Host: localhost\r\n";
    let long_target = format!("/api/{}", "a".repeat(9000));
    let many_headers: String = (0..101).map(|i| format!("X-H{i}: v\r\n")).collect();
    vec![
        ("no Host on HTTP/1.1", "GET /api/x HTTP/1.1\r\n\r\n".into(), 400, true),
        ("two Host headers", format!("GET /api/x HTTP/1.1\r\n{h}{h}\r\n"), 400, true),
        ("Host with userinfo", "GET /api/x HTTP/1.1\r\nHost: a@localhost\r\n\r\n".into(), 400, true),
        ("Host with a path", "GET /api/x HTTP/1.1\r\nHost: localhost/x\r\n\r\n".into(), 400, true),
        ("Host with a bad port", "GET /api/x HTTP/1.1\r\nHost: localhost:99999\r\n\r\n".into(), 400, true),
        ("absolute-form naming another host", format!("GET http://evil.test/api/x HTTP/1.1\r\n{h}\r\n"), 400, true),
        ("quote in target", format!("GET /api/a\"b HTTP/1.1\r\n{h}\r\n"), 400, true),
        ("angle brackets in target", format!("GET /api/<script> HTTP/1.1\r\n{h}\r\n"), 400, true),
        ("space inside the target", format!("GET /api/health z HTTP/1.1\r\n{h}\r\n"), 400, true),
        ("tab inside the target", format!("GET /api/a\tb HTTP/1.1\r\n{h}\r\n"), 400, true),
        ("raw non-ASCII in the target", format!("GET /api/caf\u{e9} HTTP/1.1\r\n{h}\r\n"), 400, true),
        ("malformed escape", format!("GET /api/%zz HTTP/1.1\r\n{h}\r\n"), 400, true),
        ("encoded slash", format!("GET /api/a%2fb HTTP/1.1\r\n{h}\r\n"), 400, true),
        ("NUL in path", format!("GET /api/a%00 HTTP/1.1\r\n{h}\r\n"), 400, true),
        ("climbing above root", format!("GET /../api/x HTTP/1.1\r\n{h}\r\n"), 400, true),
        ("underscore header", format!("GET /api/x HTTP/1.1\r\n{h}X_Auth_Subject: admin\r\n\r\n"), 400, true),
        ("TE not chunked", format!("POST /api/x HTTP/1.1\r\n{h}Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"), 400, true),
        ("TE obfuscated", format!("POST /api/x HTTP/1.1\r\n{h}Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"), 400, true),
        ("TE twice", format!("POST /api/x HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), 400, true),
        ("CL.TE", format!("POST /api/x HTTP/1.1\r\n{h}Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG"), 400, true),
        ("TE.CL", format!("POST /api/x HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\nGPOST / HTTP/1.1\r\n\r\n0\r\n\r\n"), 400, true),
        ("conflicting Content-Length", format!("POST /api/x HTTP/1.1\r\n{h}Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"), 400, true),
        ("repeated equal Content-Length", format!("POST /api/x HTTP/1.1\r\n{h}Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc"), 400, true),
        ("Content-Length list", format!("POST /api/x HTTP/1.1\r\n{h}Content-Length: 3, 4\r\n\r\nabcd"), 400, true),
        ("Content-Length +3", format!("POST /api/x HTTP/1.1\r\n{h}Content-Length: +3\r\n\r\nabc"), 400, true),
        ("unknown Expect", format!("GET /api/x HTTP/1.1\r\n{h}Expect: 200-ok\r\n\r\n"), 417, false),
        ("TRACE", format!("TRACE /api/x HTTP/1.1\r\n{h}\r\n"), 405, false),
        ("request line over 8 KiB", format!("GET {long_target} HTTP/1.1\r\n{h}\r\n"), 414, true),
        ("101 headers", format!("GET /api/x HTTP/1.1\r\n{h}{many_headers}\r\n"), 431, true),
        ("one header over 8 KiB", format!("GET /api/x HTTP/1.1\r\n{h}X-Big: {}\r\n\r\n", "b".repeat(9000)), 431, true),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_smuggling_requests_never_reach_the_backend() {
    let dir = tempfile::tempdir().expect("tmp");
    let (gw, seen) = start(dir.path()).await;
    for (name, raw, status, must_close) in cases() {
        let before = seen.lock().expect("log").len();
        let (resp, closed) = raw_https_closed(
            gw.https,
            &gw.ca_pem,
            raw.as_bytes(),
            Duration::from_millis(1500),
        )
        .await;
        let got = raw_status(&resp);
        assert_eq!(got, status, "{name}: {}", String::from_utf8_lossy(&resp));
        if must_close {
            assert!(closed, "{name}: connection left open");
        }
        assert_eq!(
            seen.lock().expect("log").len(),
            before,
            "{name}: reached the backend"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_hidden_in_an_unread_body_is_never_executed() {
    let dir = tempfile::tempdir().expect("tmp");
    let (gw, seen) = start(dir.path()).await;
    let smuggled = "GET /api/smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n";
    for (first, status) in [
        ("GET /nope.js", 404),     // static 404 answered by the gateway
        ("POST /index.html", 405), // static 405
        ("GET /api/%zz", 400),     // hygiene
    ] {
        let raw = format!(
            "{first} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{smuggled}",
            smuggled.len()
        );
        let (resp, closed) = raw_https_closed(
            gw.https,
            &gw.ca_pem,
            raw.as_bytes(),
            Duration::from_millis(1500),
        )
        .await;
        assert_eq!(raw_status(&resp), status, "{first}");
        let text = String::from_utf8_lossy(&resp);
        assert_eq!(
            text.matches("HTTP/1.1 ").count(),
            1,
            "{first}: a second response:\n{text}"
        );
        assert!(
            closed,
            "{first}: connection must close after an unread body"
        );
    }
    assert!(seen
        .lock()
        .expect("log")
        .iter()
        .all(|s| !s.uri.contains("smuggled")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normalised_paths_and_upgrade_attempts_are_forwarded_only_as_checked_requests() {
    let dir = tempfile::tempdir().expect("tmp");
    let (gw, seen) = start(dir.path()).await;
    for (raw_path, forwarded) in [
        ("/public/../api/x", "/api/x"),
        ("/public/%2e%2e/api/x", "/api/x"),
        ("//api/x", "/api/x"),
        ("/./api/x", "/api/x"),
        ("/api/%7Euser?q=%2F", "/api/~user?q=%2F"),
    ] {
        let raw =
            format!("GET {raw_path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let resp = raw_https(gw.https, &gw.ca_pem, raw.as_bytes(), Duration::from_secs(3)).await;
        assert_eq!(raw_status(&resp), 200, "{raw_path}");
        let last = seen.lock().expect("log").last().cloned().expect("seen");
        assert_eq!(last.uri, forwarded, "{raw_path}");
    }
    // An h2c upgrade is forwarded as a plain request: the backend can't switch protocols.
    let raw = "GET /api/h2c HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings, close\r\n\
               Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n";
    let resp = raw_https(gw.https, &gw.ca_pem, raw.as_bytes(), Duration::from_secs(3)).await;
    assert_eq!(raw_status(&resp), 200);
    let last = seen.lock().expect("log").last().cloned().expect("seen");
    assert_eq!(last.uri, "/api/h2c");
    for name in ["upgrade", "connection", "http2-settings"] {
        assert_eq!(last.header(name), None, "{name} reached the backend");
    }
    // An upgrade the backend refuses (200, not 101) must not turn the connection into a tunnel:
    // the next request is parsed and forwarded like any other.
    let raw = "GET /api/ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\
               GET /api/after-upgrade HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let resp = raw_https(gw.https, &gw.ca_pem, raw.as_bytes(), Duration::from_secs(3)).await;
    assert!(raw_status(&resp) == 200);
    let seen = seen.lock().expect("log").clone();
    if let Some(after) = seen.iter().find(|s| s.uri == "/api/after-upgrade") {
        assert_eq!(
            after.header("x-forwarded-proto"),
            Some("https"),
            "went through the gateway"
        );
        assert!(after.header("x-request-id").is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_at_the_deadline_and_connections_per_ip_are_capped() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    let (backend, seen) = recording_backend().await;
    let ports = Ports::new();
    let conf = format!(
        "{}\n[limits]\nheader_timeout_ms = 2000\nmax_connections_per_ip = 3\n{}{}\n[[routes]]\nname = \"api\"\nprefix = \"/api\"\nkind = \"proxy\"\nupstream = \"backend\"\n",
        ports.sections(dir.path()),
        tls_section(&certs),
        pool("backend", &[backend.to_string()], "health_check_path = \"\""),
    );
    let gw = start_gateway(dir.path(), &ports, &conf, &certs.ca_pem);
    let ca = &certs.ca_pem;

    // A head trickled one byte every 300 ms: closed at the 2 s deadline (+1 s), never proxied.
    let trickle = async {
        let mut s = tls_connect(ports.https, ca).await;
        let started = tokio::time::Instant::now();
        let head = b"GET /api/trickle HTTP/1.1\r\nHost: localhost\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        for b in head {
            if s.write_all(&[*b]).await.is_err() || s.flush().await.is_err() {
                break;
            }
            if started.elapsed() > Duration::from_secs(4) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let (_, closed) = read_until_closed(&mut s, Duration::from_secs(1)).await;
        (closed, started.elapsed())
    };
    // A connection that never sends a byte is closed at the deadline as well.
    let silent = async {
        let mut s = tls_connect(ports.https, ca).await;
        let started = tokio::time::Instant::now();
        let (_, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
        (closed, started.elapsed())
    };
    // A keep-alive connection idle between requests longer than the deadline is kept.
    let idle = async {
        let mut s = tls_connect(ports.https, ca).await;
        let req = b"GET /api/one HTTP/1.1\r\nHost: localhost\r\n\r\n";
        s.write_all(req).await.expect("w");
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("\"path\"") {
            let n = tokio::io::AsyncReadExt::read(&mut s, &mut buf)
                .await
                .expect("r");
            assert!(n > 0, "closed early");
            got.extend_from_slice(&buf[..n]);
        }
        tokio::time::sleep(Duration::from_millis(3000)).await;
        s.write_all(b"GET /api/two HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .expect("second request on the idle connection");
        let (resp, _) = read_until_closed(&mut s, Duration::from_secs(3)).await;
        raw_status(&resp)
    };
    let ((trickle_closed, trickle_t), (silent_closed, silent_t), idle_status) =
        tokio::join!(trickle, silent, idle);
    assert!(trickle_closed, "trickling client closed");
    assert!(
        trickle_t >= Duration::from_millis(1800) && trickle_t <= Duration::from_secs(3),
        "closed after {trickle_t:?}"
    );
    assert!(
        silent_closed && silent_t <= Duration::from_secs(3),
        "{silent_t:?}"
    );
    assert_eq!(
        idle_status, 200,
        "idle keep-alive survives the header deadline"
    );
    let paths: Vec<String> = seen
        .lock()
        .expect("log")
        .iter()
        .map(|s| s.uri.clone())
        .collect();
    assert_eq!(
        paths,
        ["/api/one", "/api/two"],
        "the trickled request never reached the backend"
    );

    // Three connections per IP: the fourth is closed before any handshake work, a slot freed
    // is usable again.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tls_connect(ports.https, ca).await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fourth = tokio::time::timeout(
        Duration::from_secs(2),
        try_tls_connect(ports.https, ca, b"http/1.1"),
    )
    .await
    .expect("refused at once, not left hanging");
    assert!(fourth.is_err(), "over the cap: no TLS session");
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let resp = raw_https(
        ports.https,
        ca,
        b"GET /api/five HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(raw_status(&resp), 200);
    assert!(
        metric(
            &gw,
            "gateway_connections_refused_total{reason=\"per_ip_limit\"}"
        )
        .await
            >= 1.0
    );
    assert!(
        metric(
            &gw,
            "gateway_connections_refused_total{reason=\"header_timeout\"}"
        )
        .await
            >= 2.0
    );
}
