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
