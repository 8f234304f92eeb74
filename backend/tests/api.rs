//! The backend binary on a free port with a real SQLite file.

use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Backend {
    child: Child,
    base: String,
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

async fn start(dir: &Path) -> Backend {
    start_with(dir, &[]).await
}

/// The backend with extra environment variables.
async fn start_with(dir: &Path, env: &[(&str, &str)]) -> Backend {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_backend"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--db")
        .arg(dir.join("db/expenses.db"))
        .arg("--keys-dir")
        .arg(dir.join("keys"))
        .env("RUST_LOG", "warn")
        .env_remove("DATABASE_URL")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn backend");
    let b = Backend {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(r) = reqwest::get(format!("{}/readyz", b.base)).await {
            if r.status() == 200 {
                return b;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("backend did not become ready");
}

async fn register_login(c: &Client, base: &str, email: &str) -> String {
    let r = c
        .post(format!("{base}/api/auth/register"))
        .json(&json!({"email": email, "password": "s3cret-pass"}))
        .send()
        .await
        .expect("register");
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = c
        .post(format!("{base}/api/auth/login"))
        .json(&json!({"email": email, "password": "s3cret-pass"}))
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["expires_in"], 900);
    v["access_token"].as_str().expect("token").to_string()
}

fn expense(amount: i64, date: &str) -> Value {
    json!({"amount_cents": amount, "currency": "EUR", "category": "food", "date": date})
}

#[tokio::test]
async fn crud_pagination_isolation_and_persistence() {
    let dir = tempfile::tempdir().expect("tmp");
    let c = Client::new();
    let (ann, bob, first_id) = {
        let b = start(dir.path()).await;
        let ann = register_login(&c, &b.base, "ann@example.com").await;
        let bob = register_login(&c, &b.base, "bob@example.com").await;

        let mut ids = Vec::new();
        for day in 1..=5 {
            let r = c
                .post(format!("{}/api/expenses", b.base))
                .bearer_auth(&ann)
                .json(&expense(100 * day, &format!("2026-01-0{day}")))
                .send()
                .await
                .expect("create");
            assert_eq!(r.status(), StatusCode::CREATED);
            let v: Value = r.json().await.expect("json");
            ids.push(v["id"].as_i64().expect("id"));
        }
        // Newest date first, two per page.
        let v: Value = c
            .get(format!("{}/api/expenses?limit=2&offset=2", b.base))
            .bearer_auth(&ann)
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("json");
        assert_eq!(v["total"], 5);
        let dates: Vec<&str> = v["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|e| e["date"].as_str().expect("d"))
            .collect();
        assert_eq!(dates, ["2026-01-03", "2026-01-02"]);

        // Bob sees none of Ann's, and gets 404 for her expense on every verb.
        let v: Value = c
            .get(format!("{}/api/expenses", b.base))
            .bearer_auth(&bob)
            .send()
            .await
            .expect("l")
            .json()
            .await
            .expect("j");
        assert_eq!(v["total"], 0);
        let url = format!("{}/api/expenses/{}", b.base, ids[0]);
        assert_eq!(
            c.get(&url)
                .bearer_auth(&bob)
                .send()
                .await
                .expect("g")
                .status(),
            404
        );
        assert_eq!(
            c.put(&url)
                .bearer_auth(&bob)
                .json(&expense(1, "2026-01-01"))
                .send()
                .await
                .expect("p")
                .status(),
            404
        );
        assert_eq!(
            c.delete(&url)
                .bearer_auth(&bob)
                .send()
                .await
                .expect("d")
                .status(),
            404
        );

        // Ann updates and deletes.
        let r = c.put(&url).bearer_auth(&ann).json(&json!({"amount_cents": 999, "currency": "USD", "category": "travel", "note": "taxi", "date": "2026-02-01"})).send().await.expect("put");
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["amount_cents"], 999);
        assert_eq!(v["note"], "taxi");
        let url2 = format!("{}/api/expenses/{}", b.base, ids[1]);
        assert_eq!(
            c.delete(&url2)
                .bearer_auth(&ann)
                .send()
                .await
                .expect("d")
                .status(),
            204
        );
        assert_eq!(
            c.get(&url2)
                .bearer_auth(&ann)
                .send()
                .await
                .expect("g")
                .status(),
            404
        );
        (ann, bob, ids[0])
    };
    // Restart on the same file and keys: data and tokens survive.
    let b = start(dir.path()).await;
    let r = c
        .get(format!("{}/api/expenses/{first_id}", b.base))
        .bearer_auth(&ann)
        .send()
        .await
        .expect("g");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["amount_cents"], 999);
    let v: Value = c
        .get(format!("{}/api/expenses", b.base))
        .bearer_auth(&ann)
        .send()
        .await
        .expect("l")
        .json()
        .await
        .expect("j");
    assert_eq!(v["total"], 4);
    let me: Value = c
        .get(format!("{}/api/me", b.base))
        .bearer_auth(&bob)
        .send()
        .await
        .expect("me")
        .json()
        .await
        .expect("j");
    assert_eq!(me["email"], "bob@example.com");
}

#[tokio::test]
async fn bad_input_gets_precise_errors() {
    let dir = tempfile::tempdir().expect("tmp");
    let b = start(dir.path()).await;
    let c = Client::new();
    let token = register_login(&c, &b.base, "cy@example.com").await;

    // Duplicate email (case-insensitive) → 409.
    let r = c
        .post(format!("{}/api/auth/register", b.base))
        .json(&json!({"email": "CY@example.com", "password": "another-pass"}))
        .send()
        .await
        .expect("r");
    assert_eq!(r.status(), 409);
    // Weak password and bad email → 422 naming both.
    let r = c
        .post(format!("{}/api/auth/register", b.base))
        .json(&json!({"email": "nope", "password": "short"}))
        .send()
        .await
        .expect("r");
    assert_eq!(r.status(), 422);
    let v: Value = r.json().await.expect("json");
    assert!(
        v["fields"]["email"].is_string() && v["fields"]["password"].is_string(),
        "{v}"
    );
    // Malformed JSON → 400 JSON.
    let r = c
        .post(format!("{}/api/auth/register", b.base))
        .header("content-type", "application/json")
        .body("{oops")
        .send()
        .await
        .expect("r");
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"], "bad_request");

    // Unknown email and wrong password: the same 401.
    let wrong = c
        .post(format!("{}/api/auth/login", b.base))
        .json(&json!({"email": "cy@example.com", "password": "wrong-password"}))
        .send()
        .await
        .expect("l");
    let unknown = c
        .post(format!("{}/api/auth/login", b.base))
        .json(&json!({"email": "zz@example.com", "password": "wrong-password"}))
        .send()
        .await
        .expect("l");
    assert_eq!(wrong.status(), 401);
    assert_eq!(unknown.status(), 401);
    assert_eq!(
        wrong.text().await.expect("t"),
        unknown.text().await.expect("t")
    );

    // Expense validation.
    let r = c
        .post(format!("{}/api/expenses", b.base))
        .bearer_auth(&token)
        .json(&json!({"amount_cents": "12", "currency": "euro", "date": "2026-13-01"}))
        .send()
        .await
        .expect("e");
    assert_eq!(r.status(), 422);
    let v: Value = r.json().await.expect("json");
    for f in ["amount_cents", "currency", "category", "date"] {
        assert!(v["fields"][f].is_string(), "{f}: {v}");
    }
    // Bad pagination.
    let r = c
        .get(format!("{}/api/expenses?limit=1000", b.base))
        .bearer_auth(&token)
        .send()
        .await
        .expect("p");
    assert_eq!(r.status(), 422);
    // No token / garbage token / tampered token.
    assert_eq!(
        c.get(format!("{}/api/expenses", b.base))
            .send()
            .await
            .expect("n")
            .status(),
        401
    );
    let r = c
        .get(format!("{}/api/expenses", b.base))
        .bearer_auth("garbage")
        .send()
        .await
        .expect("g");
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .expect("h")
        .starts_with("Bearer"));
    let mut parts: Vec<String> = token.split('.').map(String::from).collect();
    parts[1] = parts[1].chars().rev().collect();
    let r = c
        .get(format!("{}/api/expenses", b.base))
        .bearer_auth(parts.join("."))
        .send()
        .await
        .expect("t");
    assert_eq!(r.status(), 401);
    // Non-numeric id → 404, not 500.
    let r = c
        .get(format!("{}/api/expenses/abc", b.base))
        .bearer_auth(&token)
        .send()
        .await
        .expect("a");
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn jwks_publishes_the_signing_key() {
    let dir = tempfile::tempdir().expect("tmp");
    let b = start(dir.path()).await;
    let c = Client::new();
    let token = register_login(&c, &b.base, "dee@example.com").await;
    let jwks: Value = c
        .get(format!("{}/.well-known/jwks.json", b.base))
        .send()
        .await
        .expect("j")
        .json()
        .await
        .expect("json");
    let header = jsonwebtoken::decode_header(&token).expect("header");
    assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
    let key = &jwks["keys"][0];
    assert_eq!(key["kid"], header.kid.expect("kid").as_str());
    assert_eq!(key["kty"], "OKP");
    assert_eq!(key["crv"], "Ed25519");
    let dk =
        jsonwebtoken::DecodingKey::from_ed_components(key["x"].as_str().expect("x")).expect("dk");
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    v.set_audience(&["expenses-api"]);
    let data = jsonwebtoken::decode::<Value>(&token, &dk, &v).expect("verifies");
    for claim in ["iss", "aud", "sub", "exp", "iat", "scope"] {
        assert!(!data.claims[claim].is_null(), "{claim}");
    }
}

#[tokio::test]
async fn metrics_count_requests_by_route_template() {
    let dir = tempfile::tempdir().expect("tmp");
    let b = start(dir.path()).await;
    let c = Client::new();
    for id in [1, 2, 3] {
        let r = c
            .get(format!("{}/api/expenses/{id}", b.base))
            .send()
            .await
            .expect("r");
        assert_eq!(r.status(), 401);
    }
    let text = c
        .get(format!("{}/metrics", b.base))
        .send()
        .await
        .expect("m")
        .text()
        .await
        .expect("t");
    assert!(
        text.contains(
            "backend_requests_total{method=\"GET\",route=\"/api/expenses/{id}\",status=\"401\"} 3"
        ),
        "{text}"
    );
    assert!(
        !text.contains("/api/expenses/1\""),
        "raw paths never become labels"
    );
    assert!(text.contains("backend_db_pool_connections"));
}

#[tokio::test]
async fn minted_tokens_are_distinct_and_accepted_by_the_api() {
    let dir = tempfile::tempdir().expect("tmp");
    let b = start(dir.path()).await;
    let c = Client::new();
    // The first registered user gets id 1.
    register_login(&c, &b.base, "mint@example.com").await;
    let out = Command::new(env!("CARGO_BIN_EXE_backend"))
        .arg("--keys-dir")
        .arg(dir.path().join("keys"))
        .args(["mint-tokens", "--count", "3", "--first", "1"])
        .env("RUST_LOG", "warn")
        .output()
        .expect("mint");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf8");
    let tokens: Vec<&str> = text.lines().collect();
    assert_eq!(tokens.len(), 3);
    let distinct: std::collections::HashSet<_> = tokens.iter().collect();
    assert_eq!(distinct.len(), 3);
    let get = |t: String| {
        c.get(format!("{}/api/expenses", b.base))
            .bearer_auth(t)
            .send()
    };
    let r = get(tokens[0].to_string()).await.expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    let mut forged = tokens[0].to_string();
    forged.truncate(forged.len() - 4);
    forged.push_str("AAAA");
    let r = get(forged).await.expect("get");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

const IDENTITY_KEY: &str = "a-shared-identity-key-for-the-backend-tests-0123456789";

/// What the gateway sends: identity headers and their signature at time `t` with `nonce`,
/// made with `key`, over `subject` (sent as `sent_subject`, normally the same).
struct Signed<'a> {
    t: i64,
    nonce: &'a str,
    key: &'a [u8],
    subject: &'a str,
    sent_subject: &'a str,
}

impl Signed<'_> {
    fn of(t: i64, nonce: &str) -> Signed<'_> {
        Signed {
            t,
            nonce,
            key: IDENTITY_KEY.as_bytes(),
            subject: "1",
            sent_subject: "1",
        }
    }

    fn apply(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        let input = backend::identity::mac_input(
            self.t,
            self.nonce,
            "GET",
            "/api/me",
            "rid-42",
            &[("x-auth-subject", self.subject)],
        );
        let sig = hex::encode(backend::identity::sign(self.key, &input));
        req.header("x-request-id", "rid-42")
            .header("x-auth-subject", self.sent_subject)
            .header(
                "x-auth-signature",
                format!("v1 t={} n={} h=x-auth-subject s={sig}", self.t, self.nonce),
            )
    }
}

const N1: &str = "00000000000000000000000000000001";
const N2: &str = "00000000000000000000000000000002";

#[tokio::test]
async fn gateway_mode_accepts_only_identities_the_gateway_signed_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let key_file = dir.path().join("identity.key");
    std::fs::write(&key_file, format!("{IDENTITY_KEY}\n")).expect("key");
    let b = start_with(
        dir.path(),
        &[
            ("AUTH_MODE", "gateway"),
            ("IDENTITY_KEY_FILE", key_file.to_str().expect("utf-8")),
        ],
    )
    .await;
    let c = Client::new();
    // The first registered user gets id 1 (registration is public).
    let r = c
        .post(format!("{}/api/auth/register", b.base))
        .json(&json!({"email": "gw@example.com", "password": "gateway-mode-pass"}))
        .send()
        .await
        .expect("register");
    assert_eq!(r.status(), StatusCode::CREATED);
    let url = format!("{}/api/me", b.base);
    let status = |s: Signed<'static>| {
        let req = s.apply(c.get(&url));
        async move { req.send().await.expect("request").status() }
    };
    // A bare identity header, as any pod that reaches the port could send it.
    let r = c
        .get(&url)
        .header("x-auth-subject", "1")
        .send()
        .await
        .expect("bare");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    // Signed by the gateway: accepted once.
    let r = Signed::of(now, N1)
        .apply(c.get(&url))
        .send()
        .await
        .expect("signed");
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["email"], "gw@example.com");
    // Replayed as captured: refused. The same call signed anew (another nonce): accepted.
    assert_eq!(status(Signed::of(now, N1)).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status(Signed::of(now, N2)).await, StatusCode::OK);
    // Stale, moved to another user, or signed with another key: refused.
    assert_eq!(
        status(Signed::of(now - 120, "00000000000000000000000000000003")).await,
        StatusCode::UNAUTHORIZED
    );
    let mut moved = Signed::of(now, "00000000000000000000000000000004");
    moved.sent_subject = "2";
    assert_eq!(status(moved).await, StatusCode::UNAUTHORIZED);
    let mut forged = Signed::of(now, "00000000000000000000000000000005");
    forged.key = b"a-key-the-attacker-made-up-0123456789abcdef";
    assert_eq!(status(forged).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn gateway_mode_without_an_identity_key_refuses_to_start() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = Command::new(env!("CARGO_BIN_EXE_backend"))
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--db")
        .arg(dir.path().join("db.sqlite"))
        .arg("--keys-dir")
        .arg(dir.path().join("keys"))
        .env("AUTH_MODE", "gateway")
        .env_remove("IDENTITY_KEY_FILE")
        .env_remove("DATABASE_URL")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("IDENTITY_KEY_FILE"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn metrics_can_live_on_their_own_listener() {
    let dir = tempfile::tempdir().expect("tmp");
    let mport = free_port();
    let b = start_with(
        dir.path(),
        &[("BACKEND_METRICS_LISTEN", &format!("127.0.0.1:{mport}"))],
    )
    .await;
    let c = Client::new();
    let api = c
        .get(format!("{}/metrics", b.base))
        .send()
        .await
        .expect("api");
    assert_eq!(api.status(), StatusCode::NOT_FOUND, "not on the API port");
    let m = c
        .get(format!("http://127.0.0.1:{mport}/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(m.status(), StatusCode::OK);
    assert!(m
        .text()
        .await
        .expect("text")
        .contains("backend_requests_total"));
}

#[tokio::test]
async fn a_read_only_key_directory_is_never_written_and_must_hold_a_key() {
    let dir = tempfile::tempdir().expect("tmp");
    let keys = dir.path().join("keys");
    std::fs::create_dir_all(&keys).expect("dir");
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_backend"))
            .args(["--listen", &format!("127.0.0.1:{}", free_port())])
            .arg("--db")
            .arg(dir.path().join("db.sqlite"))
            .arg("--keys-dir")
            .arg(&keys)
            .env("BACKEND_KEYS_READ_ONLY", "true")
            .env_remove("DATABASE_URL")
            .output()
            .expect("run")
    };
    let out = run();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no signing key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_dir(&keys).expect("ls").count(),
        0,
        "nothing created"
    );
    // With a key (as a mounted Secret holds it), it serves and publishes exactly that key.
    let path = backend::keys::create_key(&keys).expect("key");
    let kid = path
        .file_stem()
        .expect("stem")
        .to_string_lossy()
        .into_owned();
    let b = start_with(
        dir.path(),
        &[
            ("BACKEND_KEYS_READ_ONLY", "true"),
            ("KEY_ACTIVATION_SECS", "180"),
        ],
    )
    .await;
    let jwks: Value = Client::new()
        .get(format!("{}/.well-known/jwks.json", b.base))
        .send()
        .await
        .expect("jwks")
        .json()
        .await
        .expect("json");
    assert_eq!(jwks["keys"][0]["kid"], kid.as_str());
    assert_eq!(std::fs::read_dir(&keys).expect("ls").count(), 1);
}
