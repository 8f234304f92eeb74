//! What a backend's HTTP/1.1 wire can send, relayed to clients over HTTP/1.1 and HTTP/2:
//! close-delimited HTTP/1.0 answers, informational heads, an unasked `101`, a body cut
//! short, a pooled connection closed under a request, no answer while the client leaves;
//! how request bodies are framed going up, and the `Host` a route rule sets. A
//! scripted backend (raw TCP, one answer per path) records every request it reads.

use crate::harness::*;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Request heads and bodies the scripted backend read, in order.
type Seen = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// What the scripted backend does with a request.
enum Act {
    /// Writes the bytes; closes the connection after them when `true`.
    Answer(&'static [u8], bool),
    /// Closes the connection without answering.
    Close,
    /// Never answers; records `EOF <path>` when the gateway closes the connection.
    Hang,
}

/// The answer for `path`, the `nth` request (from 0) on its connection.
fn script(path: &str, nth: usize) -> Act {
    let (bytes, close): (&'static [u8], bool) = match path {
        // A keep-alive connection that is closed, unanswered, when it is used again: what a
        // backend's idle timeout does to a pooled connection at the wrong moment.
        "/api/stale" if nth > 0 => return Act::Close,
        "/api/hang" => return Act::Hang,
        "/api/short" => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
            true,
        ),
        // HTTP/1.0 without a length: the body ends when the connection does.
        "/api/http10" => (
            b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nold-style body",
            true,
        ),
        "/api/hints" => (
            b"HTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload\r\n\r\n\
              HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhints",
            false,
        ),
        "/api/switch" => (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            false,
        ),
        // Keep-alive by HTTP/1.1's default, then closed anyway.
        "/api/drop" => (b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndrop", true),
        _ => (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false),
    };
    Act::Answer(bytes, close)
}

/// Reads from `sock` into `buf` until `buf` holds `n` bytes; false on EOF.
async fn fill(sock: &mut tokio::net::TcpStream, buf: &mut Vec<u8>, n: usize) -> bool {
    let mut chunk = [0u8; 4096];
    while buf.len() < n {
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
    }
    true
}

/// Reads until `buf` contains `pat`; its end offset, or `None` on EOF.
async fn fill_until(
    sock: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
    pat: &[u8],
) -> Option<usize> {
    loop {
        if let Some(i) = buf.windows(pat.len()).position(|w| w == pat) {
            return Some(i + pat.len());
        }
        let len = buf.len();
        if !fill(sock, buf, len + 1).await {
            return None;
        }
    }
}

/// One request from `buf`/`sock`: its head and de-chunked body.
async fn read_request(
    sock: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
) -> Option<(String, Vec<u8>)> {
    let end = fill_until(sock, buf, b"\r\n\r\n").await?;
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    buf.drain(..end);
    let lower = head.to_ascii_lowercase();
    let mut body = Vec::new();
    if lower.contains("transfer-encoding: chunked") {
        loop {
            let line_end = fill_until(sock, buf, b"\r\n").await?;
            let size_text = String::from_utf8_lossy(&buf[..line_end - 2]).to_string();
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            buf.drain(..line_end);
            if size == 0 {
                let end = fill_until(sock, buf, b"\r\n").await?;
                buf.drain(..end);
                break;
            }
            if !fill(sock, buf, size + 2).await {
                return None;
            }
            body.extend_from_slice(&buf[..size]);
            buf.drain(..size + 2);
        }
    } else if let Some(n) = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        if !fill(sock, buf, n).await {
            return None;
        }
        body = buf.drain(..n).collect();
    }
    Some((head, body))
}

/// A backend answering each path from [`script`] on a free loopback port.
async fn scripted_backend() -> (SocketAddr, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen: Seen = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut nth = 0;
                while let Some((head, body)) = read_request(&mut sock, &mut buf).await {
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                    let path = path.split('?').next().unwrap_or("").to_string();
                    if path != "/healthz" {
                        record.lock().expect("seen").push((head, body));
                    }
                    match script(&path, nth) {
                        Act::Answer(bytes, close) => {
                            if sock.write_all(bytes).await.is_err() || close {
                                return;
                            }
                        }
                        Act::Close => return,
                        Act::Hang => {
                            let mut b = [0u8; 64];
                            while matches!(sock.read(&mut b).await, Ok(n) if n > 0) {}
                            record
                                .lock()
                                .expect("seen")
                                .push((format!("EOF {path}"), Vec::new()));
                            return;
                        }
                    }
                    nth += 1;
                }
            });
        }
    });
    (addr, seen)
}

/// The gateway's config: one `/api` proxy route (with `route_extra` keys) to `backend`.
fn conf(
    dir: &std::path::Path,
    ports: &Ports,
    certs: &TestCerts,
    backend: SocketAddr,
    route_extra: &str,
) -> String {
    format!(
        "{}{}{}\n[[routes]]\nname = \"api\"\nprefix = \"/api\"\nkind = \"proxy\"\nupstream = \"backend\"\n{route_extra}\n",
        ports.sections(dir),
        tls_section(certs),
        pool("backend", &[backend.to_string()], "")
    )
}

async fn start(dir: &std::path::Path) -> (Gateway, Seen, TestCerts) {
    start_with(dir, "").await
}

async fn start_with(dir: &std::path::Path, route_extra: &str) -> (Gateway, Seen, TestCerts) {
    let certs = TestCerts::new(dir);
    let (backend, seen) = scripted_backend().await;
    let ports = Ports::new();
    let text = conf(dir, &ports, &certs, backend, route_extra);
    let gw = start_gateway(dir, &ports, &text, &certs.ca_pem);
    (gw, seen, certs)
}

/// Waits up to `limit` for the backend to have recorded a request whose head starts `prefix`.
async fn seen_within(seen: &Seen, prefix: &str, limit: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if seen
            .lock()
            .expect("seen")
            .iter()
            .any(|(h, _)| h.starts_with(prefix))
        {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    false
}

/// One client per HTTP version, each keeping its connection.
fn clients(gw: &Gateway) -> [(&'static str, reqwest::Client); 2] {
    [
        (
            "h1",
            gw.raw_client_builder().http1_only().build().expect("h1"),
        ),
        (
            "h2",
            gw.raw_client_builder()
                .http2_prior_knowledge()
                .build()
                .expect("h2"),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_delimited_and_informational_answers_reach_clients_whole() {
    let dir = tempfile::tempdir().expect("tmp");
    let (gw, _seen, _certs) = start(dir.path()).await;
    for (version, c) in clients(&gw) {
        for _ in 0..3 {
            // The same client connection serves the next request: an HTTP/1.0 body
            // delimited by close goes down chunked, not by closing the client.
            let r = c.get(gw.url("/api/http10")).send().await.expect("http10");
            assert_eq!(r.status(), 200, "{version}");
            if version == "h1" {
                assert_eq!(r.headers()["transfer-encoding"], "chunked", "{version}");
            }
            assert_eq!(r.text().await.expect("body"), "old-style body", "{version}");
            let r = c.get(gw.url("/api/hints")).send().await.expect("hints");
            assert_eq!(r.status(), 200, "{version}");
            assert_eq!(r.text().await.expect("body"), "hints", "{version}");
        }
    }
    // On the wire: the 103 is passed on before the final answer.
    let resp = raw_https(
        gw.https,
        &gw.ca_pem,
        b"GET /api/hints HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        std::time::Duration::from_secs(5),
    )
    .await;
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 103"), "{text}");
    assert!(text.contains("\r\n\r\nHTTP/1.1 200"), "{text}");
    assert!(text.ends_with("hints"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unasked_switch_of_protocols_is_a_502_on_both_versions() {
    let dir = tempfile::tempdir().expect("tmp");
    let (gw, seen, _certs) = start(dir.path()).await;
    for (version, c) in clients(&gw) {
        for body in [None, Some("{\"a\":1}")] {
            let req = match body {
                Some(b) => c.post(gw.url("/api/switch")).body(b),
                None => c.get(gw.url("/api/switch")),
            };
            let r = req.send().await.expect("switch");
            assert_eq!(r.status(), 502, "{version} {body:?}");
            assert_eq!(
                r.headers()["content-type"],
                "application/json",
                "{version} {body:?}"
            );
            let v: serde_json::Value = r.json().await.expect("json");
            assert_eq!(v["error"], "bad_gateway", "{version} {body:?}");
            assert!(v["request_id"].as_str().is_some_and(|s| !s.is_empty()));
        }
    }
    // The backend saw each request once: a 101 is not retried.
    assert_eq!(seen.lock().expect("seen").len(), 4);
    // And the client's HTTP/1.1 connection is closed after the 502, keep-alive asked or not.
    let (resp, closed) = raw_https_closed(
        gw.https,
        &gw.ca_pem,
        b"GET /api/switch HTTP/1.1\r\nHost: localhost\r\n\r\n",
        std::time::Duration::from_secs(5),
    )
    .await;
    assert_eq!(raw_status(&resp), 502);
    assert!(closed, "{}", String::from_utf8_lossy(&resp));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_closed_under_a_request_is_retried_only_when_safe() {
    let dir = tempfile::tempdir().expect("tmp");
    let (gw, seen, _certs) = start(dir.path()).await;
    let log = || std::fs::read_to_string(dir.path().join("gateway.log")).unwrap_or_default();
    for (version, c) in clients(&gw) {
        for i in 0..5 {
            // From the second on, the pooled connection is closed under the request: a
            // GET is sent again on a new connection and answered.
            let r = c.get(gw.url("/api/stale")).send().await.expect("stale");
            assert_eq!(r.status(), 200, "{version} GET {i}: {}", log());
            assert_eq!(r.text().await.expect("body"), "ok", "{version} GET {i}");
        }
    }
    let gets = |seen: &Seen| {
        seen.lock()
            .expect("seen")
            .iter()
            .filter(|(h, _)| h.starts_with("GET /api/stale "))
            .count()
    };
    // Ten GETs: the first on a new connection, each later one twice (closed, then again) —
    // unless pingora's pool lost the race to take a pooled connection back from its idle
    // watcher ("failed to acquire reusable stream") and opened a new one instead.
    let n = gets(&seen);
    assert!((11..=19).contains(&n), "{n} GETs seen: {}", log());
    // A POST may have been acted on: closed under it, it is a 502, sent once, not again.
    for (version, c) in clients(&gw) {
        let mut refused = false;
        // A POST that found no pooled connection (the race above, or the connection of the
        // previous round already used) is answered on a new one: try again.
        for _ in 0..4 {
            let before = seen.lock().expect("seen").len();
            let r = c
                .post(gw.url("/api/stale"))
                .body("")
                .send()
                .await
                .expect("post");
            let after: Vec<String> = seen.lock().expect("seen")[before..]
                .iter()
                .map(|(h, _)| h.lines().next().unwrap_or("").to_string())
                .collect();
            assert_eq!(after, ["POST /api/stale HTTP/1.1"], "{version}: sent once");
            if r.status() == 502 {
                let v: serde_json::Value = r.json().await.expect("json");
                assert_eq!(v["error"], "bad_gateway", "{version}");
                refused = true;
                break;
            }
            assert_eq!(r.status(), 200, "{version}: {}", log());
        }
        assert!(refused, "{version}: no POST met a closed pooled connection");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_while_the_backend_thinks_frees_the_backend() {
    let dir = tempfile::tempdir().expect("tmp");
    let (gw, seen, _certs) = start(dir.path()).await;
    let limit = std::time::Duration::from_secs(5);
    // HTTP/1.1: the client closes its connection.
    {
        use tokio::io::AsyncWriteExt;
        let mut tls = tls_connect(gw.https, &gw.ca_pem).await;
        tls.write_all(b"GET /api/hang?v=1 HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .expect("write");
        assert!(
            seen_within(&seen, "GET /api/hang?v=1 ", limit).await,
            "proxied"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        drop(tls);
    }
    // Well before the pool's 30 s read timeout, the backend's connection is closed.
    assert!(
        seen_within(&seen, "EOF /api/hang", limit).await,
        "h1 abort not passed on"
    );
    // HTTP/2: the client resets its stream (a request given up after 300 ms).
    let [_, (_, h2)] = clients(&gw);
    let r = h2
        .get(gw.url("/api/hang?v=2"))
        .timeout(std::time::Duration::from_millis(300))
        .send()
        .await;
    assert!(r.is_err(), "the backend never answers");
    let eofs = || {
        seen.lock()
            .expect("seen")
            .iter()
            .filter(|(h, _)| h.starts_with("EOF /api/hang"))
            .count()
    };
    let deadline = std::time::Instant::now() + limit;
    while eofs() < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(eofs(), 2, "h2 reset not passed on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_upstream_body_is_never_passed_on_as_complete() {
    let dir = tempfile::tempdir().expect("tmp");
    let (gw, _seen, _certs) = start(dir.path()).await;
    for (version, c) in clients(&gw) {
        let r = c.get(gw.url("/api/short")).send().await;
        // The head may already be on its way; the body must then end in an error.
        if let Ok(r) = r {
            assert_eq!(r.status(), 200, "{version}");
            assert!(
                r.bytes().await.is_err(),
                "{version}: 10 of 100 bytes taken as whole"
            );
        }
    }
    // HTTP/1.1 on the wire: the connection closes after the 10 bytes.
    let (resp, closed) = raw_https_closed(
        gw.https,
        &gw.ca_pem,
        b"GET /api/short HTTP/1.1\r\nHost: localhost\r\n\r\n",
        std::time::Duration::from_secs(5),
    )
    .await;
    assert!(closed, "connection kept after a short body");
    assert!(
        String::from_utf8_lossy(&resp).ends_with("\r\n\r\n0123456789"),
        "{}",
        String::from_utf8_lossy(&resp)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_set_by_a_route_rule_goes_up_on_both_versions() {
    let dir = tempfile::tempdir().expect("tmp");
    let (gw, seen, _certs) = start_with(
        dir.path(),
        "request_headers = { set = { host = \"backend.internal\" } }",
    )
    .await;
    for (version, c) in clients(&gw) {
        let r = c
            .get(gw.url(&format!("/api/host-{version}")))
            .send()
            .await
            .expect("req");
        assert_eq!(r.status(), 200, "{version}");
    }
    for version in ["h1", "h2"] {
        let head = seen
            .lock()
            .expect("seen")
            .iter()
            .find(|(h, _)| h.starts_with(&format!("GET /api/host-{version} ")))
            .map(|(h, _)| h.to_ascii_lowercase())
            .unwrap_or_default();
        assert!(
            head.contains("\r\nhost: backend.internal\r\n"),
            "{version}: {head}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_go_up_framed_on_both_versions() {
    let dir = tempfile::tempdir().expect("tmp");
    let (gw, seen, _certs) = start(dir.path()).await;
    // HTTP/1.1 chunked from the client: de-chunked by the gateway, chunked again going up.
    let resp = raw_https(
        gw.https,
        &gw.ca_pem,
        b"POST /api/chunked HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\
          Connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        std::time::Duration::from_secs(5),
    )
    .await;
    assert_eq!(raw_status(&resp), 200, "{}", String::from_utf8_lossy(&resp));
    // HTTP/2 without a length (a streamed body): chunked going up.
    let [_, (_, h2)] = clients(&gw);
    let parts: Vec<Result<&'static [u8], std::io::Error>> = vec![Ok(b"stream"), Ok(b"ed")];
    let r = h2
        .post(gw.url("/api/streamed"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            parts,
        )))
        .send()
        .await
        .expect("h2 streamed");
    assert_eq!(r.status(), 200);
    // HTTP/2 with a length: the length goes up.
    let r = h2
        .post(gw.url("/api/sized"))
        .body("sized")
        .send()
        .await
        .expect("h2 sized");
    assert_eq!(r.status(), 200);
    let seen = seen.lock().expect("seen").clone();
    let find = |path: &str| {
        seen.iter()
            .find(|(h, _)| h.starts_with(&format!("POST {path} ")))
            .unwrap_or_else(|| panic!("{path} not proxied: {seen:?}"))
            .clone()
    };
    for (path, body) in [
        ("/api/chunked", "hello world"),
        ("/api/streamed", "streamed"),
    ] {
        let (head, got) = find(path);
        let lower = head.to_ascii_lowercase();
        assert!(lower.contains("transfer-encoding: chunked\r\n"), "{head}");
        assert!(!lower.contains("content-length"), "{head}");
        assert_eq!(got, body.as_bytes(), "{path}");
    }
    let (head, got) = find("/api/sized");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("content-length: 5\r\n"), "{head}");
    assert!(!lower.contains("transfer-encoding"), "{head}");
    assert_eq!(got, b"sized");
    // Every upstream request names the host the client asked for.
    for (head, _) in &seen {
        assert!(
            head.to_ascii_lowercase().contains("\r\nhost: localhost"),
            "{head}"
        );
    }
}
