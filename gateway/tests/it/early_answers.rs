//! Answers the gateway writes before reading a request's body (401, 403, 429, 413, 400), with
//! the clients users have: over HTTP/2 the whole answer must arrive before the stream is reset
//! (RFC 9113 §8.1), and the connection must stay usable; over HTTP/1.1 too. Nothing rejected
//! may reach the backend, and each rejection is counted by reason.

use crate::harness::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const SECRET: &str = "an-hmac-secret-for-the-early-answer-tests-0123456789";
const MAX_BODY: usize = 1024 * 1024;

fn token(scope: &str) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = json!({"iss": "https://issuer.test", "aud": "api", "sub": "u1",
                        "exp": now + 600, "iat": now, "scope": scope});
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

async fn start(dir: &Path) -> (Gateway, Log, TestCerts) {
    start_with(dir, "").await
}

async fn start_with(dir: &Path, limits: &str) -> (Gateway, Log, TestCerts) {
    let certs = TestCerts::new(dir);
    let (backend, seen) = recording_backend().await;
    std::fs::write(dir.join("hmac.secret"), SECRET).expect("secret");
    let ports = Ports::new();
    let conf = format!(
        "{}{}{}\n[limits]\nmax_body_bytes = {MAX_BODY}\n{limits}\n\
         [jwt_providers.p]\nissuer = \"https://issuer.test\"\naudiences = [\"api\"]\nalgorithms = [\"HS256\"]\nsecret_file = \"hmac.secret\"\n\
         [rate_limits.login]\nkey = \"client_ip\"\nquota = 1\nper = \"hour\"\nburst = 1\n\
         [[routes]]\nname = \"login\"\nprefix = \"/api/auth/login\"\nkind = \"proxy\"\nupstream = \"backend\"\nrate_limits = [\"login\"]\n\
         [[routes]]\nname = \"api\"\nprefix = \"/api\"\nkind = \"proxy\"\nupstream = \"backend\"\nauth = \"jwt\"\nauth_provider = \"p\"\n\
         auth_public = [\"/api/public/*\"]\nauth_scopes = [{{ methods = [\"POST\"], scopes = [\"expenses:write\"] }}]\n",
        ports.sections(dir),
        tls_section(&certs),
        pool("backend", &[backend.to_string()], ""),
    );
    let gw = start_gateway(dir, &ports, &conf, &certs.ca_pem);
    gw.wait_ready().await;
    (gw, seen, certs)
}

/// One early-answered request: (method, path, bearer token, body size, status, error).
struct Case {
    path: &'static str,
    token: Option<String>,
    body: usize,
    status: u16,
    error: &'static str,
}

fn cases(body: usize) -> Vec<Case> {
    vec![
        Case {
            path: "/api/expenses",
            token: None,
            body,
            status: 401,
            error: "unauthorized",
        },
        Case {
            path: "/api/expenses",
            token: Some("not.a.token".into()),
            body,
            status: 401,
            error: "invalid_token",
        },
        Case {
            path: "/api/expenses",
            token: Some(token("expenses:read")),
            body,
            status: 403,
            error: "insufficient_scope",
        },
        Case {
            path: "/api/auth/login",
            token: None,
            body,
            status: 429,
            error: "rate_limited",
        },
        Case {
            path: "/api/%zz",
            token: None,
            body,
            status: 400,
            error: "bad_request",
        },
    ]
}

/// A body that is not all one byte (compression or padding cannot hide a lost frame).
fn body_of(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

async fn metric_sum(gw: &Gateway, series: &[&str]) -> f64 {
    let mut total = 0.0;
    for s in series {
        total += metric(gw, s).await;
    }
    total
}

const REJECTIONS: [&str; 3] = [
    "gateway_auth_rejections_total{provider=\"p\",reason=\"missing\"}",
    "gateway_auth_rejections_total{provider=\"p\",reason=\"malformed\"}",
    "gateway_rate_limit_decisions_total{policy=\"login\",result=\"limited\"}",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_answers_reach_an_http2_client_whole_and_the_connection_stays_usable() {
    let dir = tempfile::tempdir().expect("tmp");
    let (gw, seen, _certs) = start(dir.path()).await;
    let c = gw
        .client_builder()
        .http2_prior_knowledge()
        .build()
        .expect("h2");
    // Use up the login quota (one request passes to the backend).
    let r = c
        .post(gw.url("/api/auth/login"))
        .body("{}")
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let handshakes_before = metric(&gw, "gateway_tls_handshakes_total{version=\"TLSv1.3\"}").await;
    let counted_before = metric_sum(&gw, &REJECTIONS).await;

    let mut sent = 0;
    let (mut missing, mut malformed, mut limited) = (0.0, 0.0, 0.0);
    // 40 rounds of the five answers: 200 early answers, 1 KB and 64 KB bodies in turn.
    for round in 0..40 {
        let size = if round % 2 == 0 { 1024 } else { 64 * 1024 };
        for case in cases(size) {
            let mut req = c.post(gw.url(case.path)).body(body_of(case.body));
            if let Some(t) = &case.token {
                req = req.bearer_auth(t);
            }
            let r = req
                .send()
                .await
                .unwrap_or_else(|e| panic!("{} {}: {e:?}", case.path, case.status));
            assert_eq!(r.status().as_u16(), case.status, "{}", case.path);
            let rid = r.headers()["x-request-id"]
                .to_str()
                .expect("rid")
                .to_string();
            let v: Value = r.json().await.expect("the whole JSON body");
            assert_eq!(v["error"], case.error, "{v}");
            assert_eq!(v["request_id"], rid.as_str());
            sent += 1;
            match (case.status, case.token.is_some()) {
                (401, false) => missing += 1.0,
                (401, true) => malformed += 1.0,
                (429, _) => limited += 1.0,
                _ => {}
            }
        }
    }
    assert_eq!(sent, 200);

    // Bodies over the limit: 20 MB, declared (413 before any byte is read) and streamed
    // without a length (413 when the count passes the limit).
    for i in 0..3 {
        let req = if i == 2 {
            let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
                (0..320).map(|_| Ok(body_of(64 * 1024))).collect();
            c.post(gw.url("/api/public/upload"))
                .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                    chunks,
                )))
        } else {
            c.post(gw.url("/api/public/upload"))
                .body(body_of(20 * 1024 * 1024))
        };
        let r = req.send().await.expect("20 MB");
        assert_eq!(r.status(), 413);
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["error"], "payload_too_large");
    }

    // The same connection still serves.
    let r = c.get(gw.url("/api/public/ok")).send().await.expect("after");
    assert_eq!(r.status(), 200);
    assert_eq!(
        metric(&gw, "gateway_tls_handshakes_total{version=\"TLSv1.3\"}").await,
        handshakes_before,
        "every request went over the one HTTP/2 connection"
    );
    // Counted per reason, and none reached the backend.
    assert_eq!(
        metric_sum(&gw, &REJECTIONS).await - counted_before,
        missing + malformed + limited
    );
    let seen = seen.lock().expect("log");
    assert!(
        seen.iter()
            .all(|s| s.uri == "/api/auth/login" || s.uri.starts_with("/api/public/")),
        "{seen:?}"
    );
    assert_eq!(
        seen.iter().filter(|s| s.uri == "/api/auth/login").count(),
        1
    );
    // A streamed over-limit body may have started upstream; it never arrived whole.
    assert!(seen
        .iter()
        .filter(|s| s.uri == "/api/public/upload")
        .all(|s| s.body_len <= MAX_BODY));
}

/// `curl` with its own HTTP/2 stack (nghttp2): status and JSON body of each answer.
fn curl(gw: &Gateway, ca: &Path, args: &[&str], body_file: &Path, path: &str) -> (i32, String) {
    // `-v`: a failure shows the exchange (frames, resets); a success shows only the answer.
    let out = Command::new("curl")
        .args(["-sS", "-v", "--http2", "--max-time", "30", "--cacert"])
        .arg(ca)
        .args([
            "--resolve",
            &format!("localhost:{}:127.0.0.1", gw.https),
            "-X",
            "POST",
            "--data-binary",
        ])
        .arg(format!("@{}", body_file.display()))
        .args(args)
        .args(["-w", "\n%{http_code} %{http_version}"])
        .arg(gw.url(path))
        .output()
        .expect("curl");
    let code = out.status.code().unwrap_or(-1);
    let stderr = if code == 0 {
        std::borrow::Cow::Borrowed("")
    } else {
        String::from_utf8_lossy(&out.stderr)
    };
    (
        code,
        format!("{}{stderr}", String::from_utf8_lossy(&out.stdout)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_over_http2_and_http1_gets_every_early_answer() {
    let dir = tempfile::tempdir().expect("tmp");
    let (gw, seen, certs) = start(dir.path()).await;
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &certs.ca_pem).expect("ca");
    let small = dir.path().join("small.json");
    std::fs::write(&small, body_of(64 * 1024)).expect("body");
    let huge = dir.path().join("huge.bin");
    std::fs::write(&huge, body_of(20 * 1024 * 1024)).expect("body");
    let first = curl(&gw, &ca, &[], &small, "/api/auth/login");
    assert!(first.1.ends_with("200 2"), "{first:?}");
    let bad_scope = format!("authorization: Bearer {}", token("expenses:read"));
    for _ in 0..8 {
        for (args, path, want, error) in [
            (vec![], "/api/expenses", "401", "unauthorized"),
            (
                vec!["-H", bad_scope.as_str()],
                "/api/expenses",
                "403",
                "insufficient_scope",
            ),
            (vec![], "/api/auth/login", "429", "rate_limited"),
            (vec![], "/api/%zz", "400", "bad_request"),
        ] {
            let (code, out) = curl(&gw, &ca, &args, &small, path);
            assert_eq!(code, 0, "curl failed on {path}: {out}");
            assert!(out.ends_with(&format!("{want} 2")), "{path}: {out}");
            assert!(out.contains(&format!("\"error\":\"{error}\"")), "{out}");
        }
    }
    for http in ["--http2", "--http1.1"] {
        for _ in 0..3 {
            let (code, out) = curl(&gw, &ca, &[http], &huge, "/api/public/upload");
            assert_eq!(code, 0, "curl {http} failed on 20 MB: {out}");
            assert!(out.contains("\"error\":\"payload_too_large\""), "{out}");
            assert!(out.contains("\n413 "), "{out}");
        }
    }
    // HTTP/1.1 with a chunked body over the limit: 413 too.
    let (code, out) = curl(
        &gw,
        &ca,
        &["--http1.1", "-H", "transfer-encoding: chunked"],
        &huge,
        "/api/public/upload",
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\n413 1.1"), "{out}");
    assert!(out.contains("\"error\":\"payload_too_large\""), "{out}");
    let seen = seen.lock().expect("log");
    assert_eq!(
        seen.iter().filter(|s| s.uri == "/api/auth/login").count(),
        1
    );
    assert!(seen.iter().all(|s| s.body_len <= MAX_BODY), "{seen:?}");
}

/// A POST header block (HPACK, no dynamic table) with a `content-length`.
fn post_headers(path: &str, content_length: usize) -> Vec<u8> {
    let mut b = vec![0x83, 0x87, 0x04, path.len() as u8];
    b.extend_from_slice(path.as_bytes());
    b.extend_from_slice(&[0x01, 9]);
    b.extend_from_slice(b"localhost");
    let len = content_length.to_string();
    b.extend_from_slice(&[0x0f, 0x0d, len.len() as u8]);
    b.extend_from_slice(len.as_bytes());
    b
}

/// Frames of one stream as (type, flags, payload).
fn of_stream(frames: &[(u8, u8, u32, Vec<u8>)], id: u32) -> Vec<(u8, u8, Vec<u8>)> {
    frames
        .iter()
        .filter(|f| f.2 == id)
        .map(|f| (f.0, f.1, f.3.clone()))
        .collect()
}

/// Seen on the wire: the complete answer (HEADERS, DATA with END_STREAM), then RST_STREAM with
/// NO_ERROR — never a reset instead of the answer — and the connection keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_wire_the_answer_ends_its_stream_before_a_no_error_reset() {
    use tokio::io::AsyncWriteExt as _;
    for limits in ["discard_body_max_bytes = 0", ""] {
        let dir = tempfile::tempdir().expect("tmp");
        let (gw, seen, certs) = start_with(dir.path(), limits).await;
        let mut s = crate::http2::h2_connect(&gw, &certs.ca_pem).await;
        // A 100 kB upload announced; only 1 kB sent, then the client waits.
        let mut out = crate::http2::frame(0x1, 0x4, 1, &post_headers("/api/expenses", 100_000));
        out.extend(crate::http2::frame(0x0, 0x0, 1, &[b'x'; 1000]));
        s.write_all(&out).await.expect("request");
        let frames = crate::http2::read_frames(&mut s, Duration::from_millis(2500)).await;
        let one = of_stream(&frames, 1);
        let kinds: Vec<u8> = one.iter().map(|f| f.0).collect();
        assert_eq!(
            kinds,
            [0x1, 0x0, 0x3],
            "{limits:?}: HEADERS, DATA, RST_STREAM: {one:?}"
        );
        let data = &one[1];
        assert_eq!(data.1 & 0x1, 0x1, "the DATA frame ends the stream");
        let v: Value = serde_json::from_slice(&data.2).expect("JSON body");
        assert_eq!(v["error"], "unauthorized");
        assert_eq!(one[2].2, 0u32.to_be_bytes(), "RST_STREAM NO_ERROR");
        // The connection goes on: stream 3.
        s.write_all(&crate::http2::frame(
            0x1,
            0x5,
            3,
            &[
                0x82, 0x87, 0x04, 14, b'/', b'a', b'p', b'i', b'/', b'p', b'u', b'b', b'l', b'i',
                b'c', b'/', b'o', b'k', 0x01, 9, b'l', b'o', b'c', b'a', b'l', b'h', b'o', b's',
                b't',
            ],
        ))
        .await
        .expect("stream 3");
        let frames = crate::http2::read_frames(&mut s, Duration::from_millis(1000)).await;
        let three = of_stream(&frames, 3);
        assert_eq!(
            three.first().map(|f| (f.0, f.2[0])),
            Some((0x1, 0x88)),
            "200: {three:?}"
        );
        assert!(!frames.iter().any(|f| f.0 == 0x7), "no GOAWAY");
        assert!(seen
            .lock()
            .expect("log")
            .iter()
            .all(|s| s.uri != "/api/expenses"));
    }
}
