//! JWT at the edge: every rejection class, identity headers, scopes, JWKS rotation.

use crate::harness::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An Ed25519 signing key with its JWK.
struct TestKey {
    kid: String,
    encoding: EncodingKey,
    jwk: Value,
    public_raw: Vec<u8>,
}

impl TestKey {
    fn new(kid: &str) -> Self {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519");
        let encoding = EncodingKey::from_ed_pem(kp.serialize_pem().as_bytes()).expect("enc");
        let public_raw = kp.public_key_raw().to_vec();
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig",
                         "kid": kid, "x": URL_SAFE_NO_PAD.encode(&public_raw)});
        Self {
            kid: kid.into(),
            encoding,
            jwk,
            public_raw,
        }
    }

    fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&h, claims, &self.encoding).expect("sign")
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn claims(extra: Value) -> Value {
    let mut c = json!({"iss": "https://issuer.test", "aud": "expenses-api", "sub": "user-42",
                       "exp": now() + 300, "iat": now(), "scope": "expenses:read expenses:write"});
    if let (Some(m), Value::Object(e)) = (c.as_object_mut(), extra) {
        for (k, v) in e {
            if v.is_null() {
                m.remove(&k);
            } else {
                m.insert(k, v);
            }
        }
    }
    c
}

fn api_route(provider: &str) -> String {
    format!(
        r#"
[[routes]]
name = "api"
prefix = "/api"
kind = "proxy"
upstream = "backend"
auth = "jwt"
auth_provider = "{provider}"
auth_public = ["POST /api/auth/login", "POST /api/auth/register", "GET /api/public/*"]
auth_scopes = [{{ methods = ["POST", "PUT", "DELETE"], scopes = ["expenses:write"] }}, {{ scopes = ["expenses:read"] }}]
"#
    )
}

async fn start_with_jwks_file(
    dir: &Path,
    keys: &[&TestKey],
    extra_provider: &str,
) -> (Gateway, Log) {
    let certs = TestCerts::new(dir);
    let (backend, seen) = recording_backend().await;
    let jwks = json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()});
    std::fs::write(dir.join("jwks.json"), jwks.to_string()).expect("jwks");
    let ports = Ports::new();
    let conf = format!(
        "{}{}{}\n[jwt_providers.main]\nissuer = \"https://issuer.test\"\naudiences = [\"expenses-api\"]\n\
         jwks_file = \"{}\"\n{extra_provider}\n{}",
        ports.sections(dir),
        tls_section(&certs),
        pool("backend", &[backend.to_string()], ""),
        dir.join("jwks.json").display(),
        api_route("main")
    );
    (start_gateway(dir, &ports, &conf, &certs.ca_pem), seen)
}

async fn status_and_reason(c: &reqwest::Client, url: &str, token: &str) -> (u16, String, String) {
    let r = c.get(url).bearer_auth(token).send().await.expect("req");
    let status = r.status().as_u16();
    let www = r
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().expect("h").to_string())
        .unwrap_or_default();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    (
        status,
        v["error_description"].as_str().unwrap_or("").to_string(),
        www,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_tokens_pass_with_identity_and_bad_ones_get_401() {
    let dir = tempfile::tempdir().expect("tmp");
    let key = TestKey::new("k1");
    let (gw, seen) = start_with_jwks_file(dir.path(), &[&key], "").await;
    let c = gw.client_builder().http1_only().build().expect("client");
    let url = gw.url("/api/expenses");

    // Valid: passes; the backend sees X-Auth-Subject from the token, never the client's.
    let good = key.sign(&claims(json!({})));
    let r = c
        .get(&url)
        .bearer_auth(&good)
        .header("X-Auth-Subject", "admin")
        .send()
        .await
        .expect("ok");
    assert_eq!(r.status(), 200);
    // Without a token on a public path, a forged identity is still removed.
    let r = c
        .get(gw.url("/api/public/info"))
        .header("X-Auth-Subject", "admin")
        .header("X-Auth-Scopes", "all")
        .send()
        .await
        .expect("pub");
    assert_eq!(r.status(), 200);
    {
        let seen = seen.lock().expect("log");
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].header("x-auth-subject"), Some("user-42"));
        assert_eq!(
            seen[0].header("x-auth-scopes"),
            Some("expenses:read expenses:write")
        );
        assert!(
            seen[0]
                .headers
                .iter()
                .filter(|(n, _)| n == "x-auth-subject")
                .count()
                == 1
        );
        assert_eq!(seen[1].header("x-auth-subject"), None);
        assert_eq!(seen[1].header("x-auth-scopes"), None);
    }

    // Missing token: 401 with a bare challenge.
    let r = c
        .get(&url)
        .header("X-Auth-Subject", "admin")
        .send()
        .await
        .expect("missing");
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"api\"");

    let other = TestKey::new("k1"); // same kid, different key
    let mut tampered: Vec<String> = good.split('.').map(String::from).collect();
    tampered[1] = URL_SAFE_NO_PAD.encode(claims(json!({"sub": "admin"})).to_string());
    let hs_with_public = {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("k1".into());
        jsonwebtoken::encode(
            &h,
            &claims(json!({})),
            &EncodingKey::from_secret(&key.public_raw),
        )
        .expect("hs")
    };
    let none_token = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims(json!({})).to_string())
    );
    let none_token_sig = format!("{none_token}c2ln");
    let huge = key.sign(&claims(json!({"pad": "x".repeat(9 * 1024)})));
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired beyond leeway",
            key.sign(&claims(json!({"exp": now() - 120}))),
            "expired",
        ),
        (
            "nbf in the future",
            key.sign(&claims(json!({"nbf": now() + 300}))),
            "not_yet_valid",
        ),
        (
            "iat in the future",
            key.sign(&claims(json!({"iat": now() + 300}))),
            "not_yet_valid",
        ),
        (
            "wrong iss",
            key.sign(&claims(json!({"iss": "https://evil.test"}))),
            "bad_issuer",
        ),
        (
            "wrong aud",
            key.sign(&claims(json!({"aud": "other-api"}))),
            "bad_audience",
        ),
        (
            "iss missing",
            key.sign(&claims(json!({"iss": null}))),
            "bad_issuer",
        ),
        (
            "aud missing",
            key.sign(&claims(json!({"aud": null}))),
            "bad_audience",
        ),
        (
            "iss not a string",
            key.sign(&claims(json!({"iss": ["https://issuer.test"]}))),
            "bad_issuer",
        ),
        (
            "exp missing",
            key.sign(&claims(json!({"exp": null}))),
            "malformed",
        ),
        (
            "exp as a string",
            key.sign(&claims(json!({"exp": (now() + 300).to_string()}))),
            "malformed",
        ),
        ("alg none", none_token.clone(), "malformed"),
        (
            "alg none with a signature",
            none_token_sig,
            "alg_not_allowed",
        ),
        (
            "HS256 with the public key bytes",
            hs_with_public,
            "alg_not_allowed",
        ),
        ("payload altered", tampered.join("."), "bad_signature"),
        (
            "other key, same kid",
            other.sign(&claims(json!({}))),
            "bad_signature",
        ),
        (
            "unknown kid",
            TestKey::new("k-unknown").sign(&claims(json!({}))),
            "unknown_key",
        ),
        ("9 KiB token", huge, "too_large"),
        ("garbage", "garbage".into(), "malformed"),
        ("four parts", format!("{good}.x"), "malformed"),
    ];
    for (what, token, reason) in &cases {
        let (status, got, www) = status_and_reason(&c, &url, token).await;
        assert_eq!(status, 401, "{what}");
        assert_eq!(got, *reason, "{what}");
        assert_eq!(
            www,
            format!(
                "Bearer realm=\"api\", error=\"invalid_token\", error_description=\"{reason}\""
            ),
            "{what}"
        );
    }
    // Within leeway: accepted.
    let (status, _, _) =
        status_and_reason(&c, &url, &key.sign(&claims(json!({"exp": now() - 10})))).await;
    assert_eq!(status, 200);

    // "Bearer" with nothing, and two Authorization headers.
    let r = c
        .get(&url)
        .header("Authorization", "Bearer")
        .send()
        .await
        .expect("empty");
    assert_eq!(r.status(), 401);
    let r = c
        .get(&url)
        .header("Authorization", format!("Bearer {good}"))
        .header("Authorization", format!("Bearer {good}"))
        .send()
        .await
        .expect("two");
    assert_eq!(r.status(), 401);
    let r = c
        .get(&url)
        .header("Authorization", format!("Basic {good}"))
        .send()
        .await
        .expect("basic");
    assert_eq!(r.status(), 401);

    // Read-only token on a write → 403 insufficient_scope; on a read → 200.
    let ro = key.sign(&claims(json!({"scope": "expenses:read"})));
    let r = c
        .post(&url)
        .bearer_auth(&ro)
        .json(&json!({}))
        .send()
        .await
        .expect("write");
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer realm=\"api\", error=\"insufficient_scope\", scope=\"expenses:write\""
    );
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"], "insufficient_scope");
    assert_eq!(
        c.get(&url)
            .bearer_auth(&ro)
            .send()
            .await
            .expect("read")
            .status(),
        200
    );

    // Nothing rejected reached the backend: 2 earlier + leeway + read-only read.
    assert_eq!(seen.lock().expect("log").len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc7515_a1_hs256_verifies_and_is_expired() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    let (backend, seen) = recording_backend().await;
    // RFC 7515 Appendix A.1: the symmetric key and the example JWS.
    let jwks = json!({"keys": [{"kty": "oct", "k": "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow"}]});
    std::fs::write(dir.path().join("jwks.json"), jwks.to_string()).expect("jwks");
    let token = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    let ports = Ports::new();
    let conf = format!(
        "{}{}{}\n[jwt_providers.rfc]\nissuer = \"joe\"\naudiences = [\"x\"]\nalgorithms = [\"HS256\"]\n\
         jwks_file = \"{}\"\n{}",
        ports.sections(dir.path()),
        tls_section(&certs),
        pool("backend", &[backend.to_string()], ""),
        dir.path().join("jwks.json").display(),
        api_route("rfc")
    );
    let gw = start_gateway(dir.path(), &ports, &conf, &certs.ca_pem);
    let (status, reason, _) = status_and_reason(&gw.client(), &gw.url("/api/x"), token).await;
    assert_eq!((status, reason.as_str()), (401, "expired"));
    // One flipped signature byte: now the signature itself fails, proving the first verified.
    let sig_at = token.rfind('.').expect("dot") + 1;
    let mut bad = token.to_string();
    bad.replace_range(sig_at..sig_at + 1, "e"); // "dBjf…" → "eBjf…"
    let (status, reason, _) = status_and_reason(&gw.client(), &gw.url("/api/x"), &bad).await;
    assert_eq!((status, reason.as_str()), (401, "bad_signature"));
    assert!(seen.lock().expect("log").is_empty());
}

#[test]
fn weak_or_inconsistent_key_config_is_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    std::fs::write(dir.path().join("short.secret"), "too-short-secret\n").expect("secret");
    let key = TestKey::new("k");
    std::fs::write(
        dir.path().join("jwks.json"),
        json!({"keys": [key.jwk]}).to_string(),
    )
    .expect("jwks");
    let text = format!(
        "{}{}\n[upstreams.backend]\npeers = [\"127.0.0.1:9\"]\n\
         [jwt_providers.weak]\nissuer = \"i\"\naudiences = [\"a\"]\nalgorithms = [\"HS256\"]\nsecret_file = \"{d}/short.secret\"\n\
         [jwt_providers.mixed]\nissuer = \"i\"\naudiences = [\"a\"]\nalgorithms = [\"EdDSA\", \"HS256\"]\njwks_file = \"{d}/jwks.json\"\n\
         [jwt_providers.none]\nissuer = \"i\"\naudiences = [\"a\"]\nalgorithms = [\"none\"]\njwks_file = \"{d}/jwks.json\"\n{}",
        Ports::new().sections(dir.path()),
        tls_section(&certs),
        api_route("weak"),
        d = dir.path().display()
    );
    let f = dir.path().join("weak.toml");
    std::fs::write(&f, &text).expect("write");
    let (ok, out) = check(&f);
    assert!(!ok);
    assert!(out.contains("at least 32"), "{out}");
    assert!(out.contains("HS256 has no key of its type"), "{out}");
    assert!(
        out.contains("`none` is not supported") || out.contains("algorithm `none`"),
        "{out}"
    );
}

/// A JWKS endpoint serving the real backend's keys, switchable to 503.
async fn jwks_server(state: backend::AppState, down: Arc<Mutex<bool>>) -> std::net::SocketAddr {
    use axum::routing::get;
    let router = axum::Router::new().route(
        "/jwks.json",
        get(move || {
            let (state, down) = (state.clone(), down.clone());
            async move {
                if *down.lock().expect("flag") {
                    (axum::http::StatusCode::SERVICE_UNAVAILABLE, String::new())
                } else {
                    (
                        axum::http::StatusCode::OK,
                        state.keys.load().jwks().to_string(),
                    )
                }
            }
        }),
    );
    serve_recorded(router).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_url_rotation_outage_and_readiness() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    // The gateway signs the identity headers; the backend (gateway mode) accepts only those.
    let identity_key = dir.path().join("identity.key");
    std::fs::write(
        &identity_key,
        "a-shared-identity-key-for-the-rotation-test-0123\n",
    )
    .expect("identity key");
    let config = backend::Config {
        database_url: backend::db::sqlite_url(&dir.path().join("api.db").display().to_string()),
        keys_dir: dir.path().join("keys"),
        issuer: "https://localhost".into(),
        audience: "expenses-api".into(),
        token_ttl_secs: 900,
        auth_mode: backend::auth::AuthMode::Gateway,
        key_policy: backend::keys::KeyPolicy::local(900),
        identity_key_file: Some(identity_key.clone()),
    };
    let state = backend::try_state(config).await.expect("backend");
    let (backend_addr, seen) = serve_recorded(backend::api::router(state.clone())).await;
    let down = Arc::new(Mutex::new(true));
    let jwks = jwks_server(state.clone(), down.clone()).await;
    let ports = Ports::new();
    let conf = format!(
        "{}{}{}\n[jwt_providers.backend]\nissuer = \"https://localhost\"\naudiences = [\"expenses-api\"]\n\
         jwks_url = \"http://{jwks}/jwks.json\"\njwks_refetch_cooldown_seconds = 1\njwks_refresh_seconds = 3600\n\
         [identity]\nsigning_key_file = \"identity.key\"\n{}",
        ports.sections(dir.path()),
        tls_section(&certs),
        pool("backend", &[backend_addr.to_string()], ""),
        api_route("backend")
    );
    let gw = start_gateway(dir.path(), &ports, &conf, &certs.ca_pem);
    // JWKS unreachable at start: not ready, and says why.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = reqwest::get(gw.admin_url("/readyz")).await.expect("readyz");
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["jwt_providers"][0], "backend");
    *down.lock().expect("flag") = false;
    gw.wait_ready().await;

    let c = gw.client();
    let creds = json!({"email": "rot@example.com", "password": "rotation-pass"});
    assert_eq!(
        c.post(gw.url("/api/auth/register"))
            .json(&creds)
            .send()
            .await
            .expect("reg")
            .status(),
        201
    );
    let login = |c: reqwest::Client, url: String, creds: Value| async move {
        let v: Value = c
            .post(url)
            .json(&creds)
            .send()
            .await
            .expect("login")
            .json()
            .await
            .expect("json");
        v["access_token"].as_str().expect("token").to_string()
    };
    let old = login(c.clone(), gw.url("/api/auth/login"), creds.clone()).await;
    let me = c
        .get(gw.url("/api/me"))
        .bearer_auth(&old)
        .send()
        .await
        .expect("me");
    assert_eq!(me.status(), 200);
    let v: Value = me.json().await.expect("json");
    assert_eq!(v["email"], "rot@example.com");
    // The backend (gateway mode) took the user from X-Auth-Subject.
    assert!(seen.lock().expect("log").iter().any(|s| s.uri == "/api/me"
        && s.header("x-auth-subject").is_some()
        && s.header("x-auth-signature")
            .is_some_and(|v| v.starts_with("v1 t="))));

    // Rotate: the new kid is unknown to the gateway until it refetches on first sight.
    std::thread::sleep(Duration::from_millis(1100)); // kids carry the creation second
    backend::keys::create_key(&dir.path().join("keys")).expect("rotate");
    assert!(state.reload_keys().expect("reload"));
    let new = login(c.clone(), gw.url("/api/auth/login"), creds.clone()).await;
    assert_ne!(
        jsonwebtoken::decode_header(&new).expect("h").kid,
        jsonwebtoken::decode_header(&old).expect("h").kid
    );
    tokio::time::sleep(Duration::from_millis(1100)).await; // past the refetch cooldown
    assert_eq!(
        c.get(gw.url("/api/me"))
            .bearer_auth(&new)
            .send()
            .await
            .expect("new")
            .status(),
        200
    );
    assert_eq!(
        c.get(gw.url("/api/me"))
            .bearer_auth(&old)
            .send()
            .await
            .expect("old")
            .status(),
        200
    );

    // JWKS down: the keys already fetched keep verifying; readiness stays up.
    *down.lock().expect("flag") = true;
    let t = Instant::now();
    for token in [&old, &new] {
        assert_eq!(
            c.get(gw.url("/api/me"))
                .bearer_auth(token)
                .send()
                .await
                .expect("me")
                .status(),
            200
        );
    }
    assert!(t.elapsed() < Duration::from_secs(3));
    assert_eq!(
        reqwest::get(gw.admin_url("/readyz"))
            .await
            .expect("r")
            .status(),
        200
    );
}

/// A small identity provider over HTTPS (certificate `leaf`): `GET path` answers the JSON in
/// `docs[path]`, anything else 404; one request per connection.
async fn https_idp(
    leaf: &gateway::certs::IssuedCert,
    docs: Arc<Mutex<std::collections::HashMap<String, String>>>,
) -> u16 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let chain: Vec<_> = rustls_pemfile::certs(&mut leaf.cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("certs");
    let key = rustls_pemfile::private_key(&mut leaf.key_pem.as_bytes())
        .expect("key")
        .expect("a key");
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("cert");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, docs) = (acceptor.clone(), docs.clone());
            tokio::spawn(async move {
                // A client that does not trust us ends here.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16384 {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head);
                let path = text.split_whitespace().nth(1).unwrap_or("").to_string();
                let body = docs.lock().expect("docs").get(&path).cloned();
                let resp = match body {
                    Some(b) => format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{b}",
                        b.len()
                    ),
                    None => "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        .to_string(),
                };
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    port
}

/// An HTTPS identity provider at `https://localhost:PORT/realms/x` (a Keycloak-style issuer)
/// with its CA, publishing `key` through OIDC discovery.
struct Idp {
    ca_pem: String,
    issuer: String,
    docs: Arc<Mutex<std::collections::HashMap<String, String>>>,
}

async fn start_idp(key: &TestKey) -> Idp {
    let ca = gateway::certs::DevCa::generate("idp test CA").expect("ca");
    let leaf = ca.issue_for_days(&["localhost"], 30).expect("leaf");
    let docs = Arc::new(Mutex::new(std::collections::HashMap::new()));
    let port = https_idp(&leaf, docs.clone()).await;
    let issuer = format!("https://localhost:{port}/realms/x");
    {
        let mut d = docs.lock().expect("docs");
        d.insert(
            "/realms/x/.well-known/openid-configuration".into(),
            json!({"issuer": issuer, "jwks_uri": format!("{issuer}/protocol/openid-connect/certs"),
                   "id_token_signing_alg_values_supported": ["EdDSA"]})
            .to_string(),
        );
        d.insert(
            "/realms/x/protocol/openid-connect/certs".into(),
            json!({"keys": [key.jwk]}).to_string(),
        );
    }
    Idp {
        ca_pem: ca.cert_pem(),
        issuer,
        docs,
    }
}

/// A gateway whose `/api` route is guarded by provider `idp` with the given key source lines.
async fn start_with_provider(
    dir: &Path,
    issuer: &str,
    source: &str,
    env: &[(&str, &str)],
) -> (Gateway, Log) {
    let certs = TestCerts::new(dir);
    let (backend, seen) = recording_backend().await;
    let ports = Ports::new();
    let conf = format!(
        "{}{}{}\n[jwt_providers.idp]\nissuer = \"{issuer}\"\naudiences = [\"expenses-api\"]\n{source}\n{}",
        ports.sections(dir),
        tls_section(&certs),
        pool("backend", &[backend.to_string()], ""),
        api_route("idp")
    );
    let gw = start_gateway_with_env(dir, &ports, &conf, &certs.ca_pem, env);
    (gw, seen)
}

/// `/readyz` after the first fetch attempts: (status, body).
async fn readiness_after_fetch(gw: &Gateway) -> (u16, Value) {
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = reqwest::get(gw.admin_url("/readyz")).await.expect("readyz");
    (r.status().as_u16(), r.json().await.expect("json"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_discovery_over_https_with_a_private_ca_verifies_tokens() {
    let dir = tempfile::tempdir().expect("tmp");
    let key = TestKey::new("idp-1");
    let idp = start_idp(&key).await;
    std::fs::write(dir.path().join("idp-ca.pem"), &idp.ca_pem).expect("ca");
    let (gw, seen) = start_with_provider(
        dir.path(),
        &idp.issuer,
        "discovery = true\nca_file = \"idp-ca.pem\"",
        &[],
    )
    .await;
    gw.wait_ready().await;
    let token = key.sign(&claims(json!({"iss": idp.issuer})));
    let (status, _, _) = status_and_reason(&gw.client(), &gw.url("/api/expenses"), &token).await;
    assert_eq!(status, 200);
    assert_eq!(
        seen.lock()
            .expect("log")
            .last()
            .and_then(|s| s.header("x-auth-subject").map(str::to_string)),
        Some("user-42".to_string())
    );
    // A token of another issuer is still refused.
    let other = key.sign(&claims(json!({})));
    let (status, reason, _) = status_and_reason(&gw.client(), &gw.url("/api/x"), &other).await;
    assert_eq!((status, reason.as_str()), (401, "bad_issuer"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_over_https_trusts_the_platform_store_by_default() {
    let dir = tempfile::tempdir().expect("tmp");
    let key = TestKey::new("idp-2");
    let idp = start_idp(&key).await;
    // The platform store of this process: a bundle holding the IdP's CA (as an operator would
    // add a corporate CA to the image's store).
    let bundle = dir.path().join("platform-bundle.pem");
    std::fs::write(&bundle, &idp.ca_pem).expect("bundle");
    let (gw, _) = start_with_provider(
        dir.path(),
        &idp.issuer,
        &format!(
            "jwks_url = \"{}/protocol/openid-connect/certs\"",
            idp.issuer
        ),
        &[("SSL_CERT_FILE", bundle.to_str().expect("utf-8"))],
    )
    .await;
    gw.wait_ready().await;
    let token = key.sign(&claims(json!({"iss": idp.issuer})));
    let (status, _, _) = status_and_reason(&gw.client(), &gw.url("/api/expenses"), &token).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idp_signed_by_an_untrusted_ca_leaves_the_gateway_unready_and_says_why() {
    let dir = tempfile::tempdir().expect("tmp");
    let key = TestKey::new("idp-3");
    let idp = start_idp(&key).await;
    // ca_file names another CA than the one that signed the IdP's certificate.
    let other = gateway::certs::DevCa::generate("not the idp CA").expect("ca");
    std::fs::write(dir.path().join("wrong-ca.pem"), other.cert_pem()).expect("ca");
    let (gw, seen) = start_with_provider(
        dir.path(),
        &idp.issuer,
        "discovery = true\nca_file = \"wrong-ca.pem\"",
        &[],
    )
    .await;
    let (status, v) = readiness_after_fetch(&gw).await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["jwt_providers"][0], "idp");
    let why = v["jwks_errors"]["idp"].as_str().unwrap_or("").to_string();
    assert!(why.contains("UnknownIssuer"), "{why}");
    let log = std::fs::read_to_string(dir.path().join("gateway.log")).expect("log");
    assert!(
        log.contains("JWKS fetch failed") && log.contains("UnknownIssuer"),
        "{log}"
    );
    // Requests are refused, never passed on unverified.
    let token = key.sign(&claims(json!({"iss": idp.issuer})));
    let (status, _, _) = status_and_reason(&gw.client(), &gw.url("/api/expenses"), &token).await;
    assert_eq!(status, 401);
    assert!(seen.lock().expect("log").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discovery_document_naming_another_issuer_is_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let key = TestKey::new("idp-4");
    let idp = start_idp(&key).await;
    // An attacker-controlled (or misconfigured) document claiming another realm.
    idp.docs.lock().expect("docs").insert(
        "/realms/x/.well-known/openid-configuration".into(),
        json!({"issuer": format!("{}-evil", idp.issuer),
               "jwks_uri": format!("{}/protocol/openid-connect/certs", idp.issuer)})
        .to_string(),
    );
    std::fs::write(dir.path().join("idp-ca.pem"), &idp.ca_pem).expect("ca");
    let (gw, _) = start_with_provider(
        dir.path(),
        &idp.issuer,
        "discovery = true\nca_file = \"idp-ca.pem\"",
        &[],
    )
    .await;
    let (status, v) = readiness_after_fetch(&gw).await;
    assert_eq!(status, 503, "{v}");
    let why = v["jwks_errors"]["idp"].as_str().unwrap_or("").to_string();
    assert!(why.contains("-evil") && why.contains("refused"), "{why}");
    let token = key.sign(&claims(json!({"iss": idp.issuer})));
    let (status, _, _) = status_and_reason(&gw.client(), &gw.url("/api/x"), &token).await;
    assert_eq!(status, 401);
}

#[test]
fn plain_http_key_sources_off_loopback_are_refused_unless_allowed() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    let write = |name: &str, source: &str| {
        let text = format!(
            "{}{}\n[upstreams.backend]\npeers = [\"127.0.0.1:9\"]\n\
             [jwt_providers.idp]\nissuer = \"https://idp.example.com\"\naudiences = [\"a\"]\n{source}\n{}",
            Ports::new().sections(dir.path()),
            tls_section(&certs),
            api_route("idp"),
        );
        let f = dir.path().join(name);
        std::fs::write(&f, text).expect("write");
        check(&f)
    };
    let (ok, out) = write("plain.toml", "jwks_url = \"http://idp.example.com/jwks\"");
    assert!(!ok, "{out}");
    assert!(
        out.contains("plain http") && out.contains("allow_insecure_http = true"),
        "{out}"
    );
    let (ok, out) = write(
        "allowed.toml",
        "jwks_url = \"http://idp.example.com/jwks\"\nallow_insecure_http = true",
    );
    assert!(ok, "{out}");
    let (ok, out) = write("loopback.toml", "jwks_url = \"http://127.0.0.1:9/jwks\"");
    assert!(ok, "{out}");
    let (ok, out) = write(
        "two.toml",
        "jwks_url = \"https://idp.example.com/jwks\"\ndiscovery = true",
    );
    assert!(!ok && out.contains("exactly one of"), "{out}");
    let (ok, out) = write(
        "ca-without-remote.toml",
        "key_file = \"missing.pem\"\nca_file = \"ca.pem\"",
    );
    assert!(!ok && out.contains("ca_file applies only"), "{out}");
    let (ok, out) = write(
        "not-pem.toml",
        "discovery = true\nca_file = \"not-pem.toml\"",
    );
    assert!(!ok && out.contains("no PEM certificate"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_rebuilds_a_provider_keeps_its_keys_while_the_idp_is_down() {
    use axum::routing::get;
    let dir = tempfile::tempdir().expect("tmp");
    let key = TestKey::new("kept-1");
    let down = Arc::new(Mutex::new(false));
    let (jwks, d2) = (json!({"keys": [key.jwk]}).to_string(), down.clone());
    let router = axum::Router::new().route(
        "/jwks.json",
        get(move || {
            let (jwks, down) = (jwks.clone(), d2.clone());
            async move {
                if *down.lock().expect("flag") {
                    (axum::http::StatusCode::SERVICE_UNAVAILABLE, String::new())
                } else {
                    (axum::http::StatusCode::OK, jwks)
                }
            }
        }),
    );
    let idp = serve_recorded(router).await.0;
    let source = |timeout: u32| {
        format!("jwks_url = \"http://{idp}/jwks.json\"\njwks_timeout_ms = {timeout}")
    };
    let (gw, _) = start_with_provider(dir.path(), "https://issuer.test", &source(3000), &[]).await;
    gw.wait_ready().await;
    let token = key.sign(&claims(json!({})));
    let (status, _, _) = status_and_reason(&gw.client(), &gw.url("/api/x"), &token).await;
    assert_eq!(status, 200);
    // The identity provider goes down; the provider's section changes (a new timeout), so the
    // reload builds a new provider.
    *down.lock().expect("flag") = true;
    let file = dir.path().join("gateway.toml");
    let text = std::fs::read_to_string(&file).expect("conf");
    write_atomic(&file, &text.replace(&source(3000), &source(2500)));
    let (code, body) = admin_reload(&gw).await;
    assert_eq!(code, 200, "{body}");
    let r = reqwest::get(gw.admin_url("/readyz")).await.expect("readyz");
    assert_eq!(
        r.status(),
        200,
        "a reload must not make the gateway unready"
    );
    let (status, _, _) = status_and_reason(&gw.client(), &gw.url("/api/x"), &token).await;
    assert_eq!(
        status, 200,
        "the keys fetched before the reload still verify"
    );
}
