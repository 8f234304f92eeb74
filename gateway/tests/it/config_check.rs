//! `gateway check` and `gateway run` refusing bad configs with file:line:column.

use crate::harness::*;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn good_conf(dir: &Path, ports: &Ports, certs: &TestCerts) -> String {
    format!(
        "{}{}\n[upstreams.backend]\npeers = [\"127.0.0.1:9\"]\n\n[[routes]]\nname = \"api\"\nprefix = \"/api\"\nkind = \"proxy\"\nupstream = \"backend\"\n",
        ports.sections(dir),
        tls_section(certs)
    )
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

/// 1-based line of the first occurrence of `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .expect("needle")
        + 1
}

#[test]
fn shipped_configs_pass_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    gateway::certs::ensure_dev(&root.join("certs/dev")).expect("dev certs");
    let mut n = 0;
    for entry in std::fs::read_dir(root.join("conf")).expect("conf dir") {
        let p = entry.expect("entry").path();
        if p.extension().is_some_and(|e| e == "toml") {
            let (ok, out) = check(&p);
            assert!(ok, "{}: {out}", p.display());
            n += 1;
        }
    }
    assert!(n >= 1, "no config checked");
}

#[test]
fn good_config_passes() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    let f = write(
        dir.path(),
        "g.toml",
        &good_conf(dir.path(), &Ports::new(), &certs),
    );
    let (ok, out) = check(&f);
    assert!(ok, "{out}");
    assert!(out.contains("ok"), "{out}");
}

#[test]
fn unknown_key_and_type_error_are_located() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    let base = good_conf(dir.path(), &Ports::new(), &certs);

    let text = base
        .replace("[limits]", "")
        .replace("[upstreams.backend]\n", "[upstreams.backend]\nretrys = 3\n");
    let f = write(dir.path(), "unknown.toml", &text);
    let (ok, out) = check(&f);
    assert!(!ok);
    let line = line_of(&text, "retrys");
    assert!(out.contains(&format!("{}:{line}:1", f.display())), "{out}");
    assert!(out.contains("retrys"), "{out}");

    let text = base.replace("threads = 2", "threads = \"many\"");
    let f = write(dir.path(), "type.toml", &text);
    let (ok, out) = check(&f);
    assert!(!ok);
    assert!(out.contains(&format!("{}:1:11", f.display())), "{out}");
}

#[test]
fn every_certificate_problem_is_reported_at_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    let now = time::OffsetDateTime::now_utc();
    let expired = certs
        .ca
        .issue(
            &["localhost"],
            now - time::Duration::days(30),
            now - time::Duration::days(1),
        )
        .expect("expired");
    let (exp_cert, exp_key) = write_pair(dir.path(), "expired", &expired);
    let other = certs.ca.issue_for_days(&["localhost"], 30).expect("other");
    let (_, other_key) = write_pair(dir.path(), "other", &other);
    let ports = Ports::new();
    let text = format!(
        r#"{}
[tls]
[[tls.certificates]]
name = "missing"
cert = "{d}/nope.crt"
key = "{key}"

[[tls.certificates]]
name = "mismatch"
cert = "{cert}"
key = "{other_key}"

[[tls.certificates]]
name = "expired"
cert = "{exp_cert}"
key = "{exp_key}"
default = true

[upstreams.backend]
peers = ["127.0.0.1:9"]

[[routes]]
name = "api"
prefix = "/api"
kind = "proxy"
upstream = "nopool"
"#,
        ports.sections(dir.path()),
        d = dir.path().display(),
        key = certs.key.display(),
        cert = certs.cert.display(),
        other_key = other_key.display(),
        exp_cert = exp_cert.display(),
        exp_key = exp_key.display(),
    );
    let f = write(dir.path(), "certs.toml", &text);
    let (ok, out) = check(&f);
    assert!(!ok);
    let at = |needle: &str| format!("{}:{}:", f.display(), line_of(&text, needle));
    assert!(
        out.contains(&at("nope.crt")) && out.contains("nope.crt"),
        "missing cert: {out}"
    );
    assert!(
        out.contains(&at(&format!("key = \"{}\"", other_key.display())))
            && out.contains("does not match"),
        "mismatch: {out}"
    );
    assert!(
        out.contains(&at(&format!("cert = \"{}\"", exp_cert.display()))) && out.contains("expired"),
        "expired: {out}"
    );
    assert!(
        out.contains(&at("upstream = \"nopool\"")) && out.contains("nopool"),
        "missing pool: {out}"
    );
    assert!(out.contains("4 problem(s)"), "{out}");

    // `run` refuses the same file without binding its ports.
    let t = Instant::now();
    let status = Command::new(gateway_bin())
        .args(["run", "-c"])
        .arg(&f)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run");
    assert!(!status.success());
    assert!(t.elapsed() < Duration::from_secs(10));
    for port in [ports.https, ports.http, ports.admin] {
        assert!(
            !accepts(&format!("127.0.0.1:{port}")),
            "port {port} was bound"
        );
        std::net::TcpListener::bind(("127.0.0.1", port)).expect("port still free");
    }
}

#[test]
fn missing_static_root_and_bad_listener_are_reported() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    let text = good_conf(dir.path(), &Ports::new(), &certs)
        .replace("https = \"127.0.0.1:", "https = \"nohost:")
        + "\n[[routes]]\nname = \"web\"\nprefix = \"/\"\nkind = \"static\"\nroot = \"does/not/exist\"\n";
    let f = write(dir.path(), "root.toml", &text);
    let (ok, out) = check(&f);
    assert!(!ok);
    assert!(
        out.contains(&format!(
            "{}:{}:",
            f.display(),
            line_of(&text, "does/not/exist")
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("{}:{}:", f.display(), line_of(&text, "nohost"))),
        "{out}"
    );
}

#[test]
fn unknown_auth_modes_and_algorithms_are_reported_together_with_positions() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    std::fs::write(dir.path().join("hmac.secret"), [7u8; 40]).expect("secret");
    let text = format!(
        "{}\n[jwt_providers.p]\nissuer = \"i\"\naudiences = [\"a\"]\nalgorithms = [\"HS256\", \"HS257\"]\nsecret_file = \"hmac.secret\"\n\n\
         [[routes]]\nname = \"api\"\nprefix = \"/api\"\nkind = \"static\"\nroot = \".\"\nauth = \"jwtt\"\n",
        good_conf(dir.path(), &Ports::new(), &certs)
    );
    let f = write(dir.path(), "g.toml", &text);
    let (ok, out) = check(&f);
    assert!(!ok, "{out}");
    let at = format!("g.toml:{}:", line_of(&text, "auth = \"jwtt\""));
    assert!(
        out.lines()
            .any(|l| l.contains(&at) && l.contains("auth must be \"jwt\" or \"none\", not `jwtt`")),
        "{out}"
    );
    assert!(out.contains("algorithm `HS257` is not supported"), "{out}");
}

#[test]
fn bad_replicas_values_are_refused_at_their_position() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    let base = good_conf(dir.path(), &Ports::new(), &certs);
    for (value, message) in [
        ("0", "rate limit `p`: replicas must be at least 1, not 0"),
        ("-3", "rate limit `p`: replicas must be at least 1, not -3"),
        (
            "\"dns:\"",
            "rate limit `p`: replicas = \"dns:\" needs a name, e.g. \"dns:gateway-headless.edge.svc.cluster.local\"",
        ),
        (
            "\"srv:x\"",
            "rate limit `p`: replicas = \"srv:x\": expected a number or \"dns:<name>\"",
        ),
        (
            "\"dns:no-such-gateway.invalid\"",
            "rate limit `p`: replicas: cannot resolve `no-such-gateway.invalid`: ",
        ),
    ] {
        let text = format!(
            "{base}\n[rate_limits.p]\nkey = \"client_ip\"\nquota = 10\nper = \"second\"\nreplicas = {value}\n"
        );
        let f = write(dir.path(), "g.toml", &text);
        let (ok, out) = check(&f);
        assert!(!ok, "{value}: {out}");
        // `replicas = ` is 11 characters: the value starts at column 12.
        let at = format!("{}:{}:12: {message}", f.display(), line_of(&text, "replicas ="));
        assert!(out.contains(&at), "{value}: expected `{at}` in {out}");
    }
}

// --- `gateway check --requests`: the dry run -------------------------------------------------

/// Runs `gateway check -c conf ARGS…`; returns (exit code, stdout, stderr).
fn gateway_check(conf: &Path, args: &[&std::ffi::OsStr]) -> (i32, String, String) {
    let out = Command::new(gateway_bin())
        .args(["check", "-c"])
        .arg(conf)
        .args(args)
        .output()
        .expect("run gateway check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `gateway check -c conf --requests FILE [extra…]`.
fn dry_run(conf: &Path, requests: &Path, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec!["--requests".as_ref(), requests.as_os_str()];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    gateway_check(conf, &args)
}

/// A requests file with `text` in a fresh directory (kept while the guard lives).
fn requests_file(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tmp");
    let f = write(dir.path(), "requests.txt", text);
    (dir, f)
}

/// The shipped config, with the dev certificates it names.
fn shipped_conf() -> std::path::PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    gateway::certs::ensure_dev(&root.join("certs/dev")).expect("dev certs");
    root.join("conf/gateway.toml")
}

#[test]
fn shipped_requests_pass_against_the_shipped_config() {
    let conf = shipped_conf();
    let requests = conf.with_file_name("requests.txt");
    let (code, out, err) = dry_run(&conf, &requests, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("FAIL"), "{out}");
    // Every route of the shipped config is exercised: a new route without a line fails here.
    let rt = gateway::config::load(&conf, None).expect("shipped config");
    assert!(rt.routes.len() >= 3);
    for route in rt.routes.iter().map(|r| r.name.as_str()) {
        assert!(
            out.contains(&format!("PASS      route={route}")),
            "{route}: {out}"
        );
    }
}

#[test]
fn a_failing_expectation_exits_1_and_says_what_was_found() {
    let (_dir, requests) =
        requests_file("GET https://localhost/api/expenses expect status=200 route=api\n");
    let (code, out, err) = dry_run(&shipped_conf(), &requests, &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("FAIL      status=200 (got 401)"), "{out}");
    assert!(out.contains("PASS      route=api"), "{out}");
}

#[test]
fn a_malformed_requests_file_is_refused_with_its_line() {
    let dir = tempfile::tempdir().expect("tmp");
    let cases = [
        (
            "# ok\nGET https://localhost/\nFETCH https://localhost/\n",
            3,
            "unknown method `FETCH`",
        ),
        (
            "GET /relative\n",
            1,
            "`/relative` is not an absolute http:// or https:// URL",
        ),
        (
            "\nGET https://localhost/ expect colour=red\n",
            2,
            "unknown expect key `colour` (status, route, pool, file, policy, rate_limits, auth)",
        ),
        (
            "GET https://localhost/ x-a=\"open\n",
            1,
            "unterminated quote",
        ),
    ];
    for (text, line, message) in cases {
        let requests = write(dir.path(), "bad.txt", text);
        let (code, out, err) = dry_run(&shipped_conf(), &requests, &[]);
        assert_eq!(code, 2, "{text}: {out}{err}");
        assert_eq!(err, format!("{}:{line}: {message}\n", requests.display()));
        assert!(out.is_empty(), "nothing evaluated: {out}");
    }
}

#[test]
fn json_carries_every_field() {
    let (_dir, requests) = requests_file(
        "GET https://localhost/api/healthz?x=1 x-forwarded-for=1.2.3.4 client=10.0.0.9 expect pool=backend\n\
         GET https://localhost/assets/app.4eaf1b3d.js\n",
    );
    let (code, out, err) = dry_run(&shipped_conf(), &requests, &["--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let proxied = &v[0];
    assert_eq!(proxied["line"], 1);
    assert_eq!(proxied["path"], "/api/healthz");
    assert_eq!(proxied["status"], serde_json::Value::Null);
    assert_eq!(proxied["route"], "api");
    assert_eq!(proxied["client_ip"], "10.0.0.9");
    assert_eq!(proxied["auth"]["state"], "public");
    assert_eq!(proxied["rate_limits"][0]["policy"], "per_ip");
    assert_eq!(proxied["rate_limits"][0]["key"], "ip:10.0.0.9");
    assert_eq!(proxied["upstream"]["pools"][0]["name"], "backend");
    assert_eq!(proxied["upstream"]["path"], "/api/healthz?x=1");
    let headers = proxied["upstream"]["headers"].as_array().expect("headers");
    // The client's X-Forwarded-For is replaced: the peer is not a trusted proxy.
    assert!(
        headers.contains(&serde_json::json!(["x-forwarded-for", "10.0.0.9"])),
        "{headers:?}"
    );
    assert_eq!(proxied["checks"][0]["pass"], true);
    let file = &v[1];
    assert_eq!(file["status"], 200);
    assert_eq!(file["static"]["file"], "/assets/app.4eaf1b3d.js");
    assert_eq!(
        file["static"]["cache_control"],
        "public, max-age=31536000, immutable"
    );
}

/// An Ed25519 key: its public PEM, its JWK, and a signer.
struct EdKey {
    public_pem: String,
    jwk: serde_json::Value,
    encoding: jsonwebtoken::EncodingKey,
}

impl EdKey {
    fn new() -> Self {
        use base64::Engine as _;
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519");
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(kp.public_key_raw());
        Self {
            public_pem: kp.public_key_pem(),
            jwk: serde_json::json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "x": x}),
            encoding: jsonwebtoken::EncodingKey::from_ed_pem(kp.serialize_pem().as_bytes())
                .expect("encoding key"),
        }
    }

    /// A token for the test issuer expiring `exp_in` seconds from now.
    fn sign(&self, exp_in: i64) -> String {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let claims = serde_json::json!({"iss": "https://issuer.test", "aud": "expenses-api",
            "sub": "user-42", "scope": "expenses:read", "iat": now.min(now + exp_in),
            "exp": now + exp_in});
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        jsonwebtoken::encode(&header, &claims, &self.encoding).expect("sign")
    }
}

/// A config with a `key_file` provider on `/api` and a `jwks_url` provider on `/remote`
/// (both: prefix stripped, `GET /…/public/*` public, scope `expenses:read`, CORS for
/// `https://app.example`, rate limit `per_ip`), the pool `backend` at `backend`, then `extra`.
fn jwt_conf_text(
    dir: &Path,
    key: &EdKey,
    (certs, ports): (&TestCerts, &Ports),
    backend: &str,
    extra: &str,
) -> String {
    std::fs::write(dir.join("ed.pub.pem"), &key.public_pem).expect("pem");
    let provider = |name: &str, source: &str| {
        format!(
            "\n[jwt_providers.{name}]\nissuer = \"https://issuer.test\"\naudiences = [\"expenses-api\"]\n{source}\n"
        )
    };
    let route = |name: &str, provider: &str| {
        format!(
            "\n[[routes]]\nname = \"{name}\"\nprefix = \"/{name}\"\nkind = \"proxy\"\nupstream = \"backend\"\nstrip_prefix = true\n\
             auth = \"jwt\"\nauth_provider = \"{provider}\"\nauth_public = [\"GET /{name}/public/*\"]\n\
             auth_scopes = [{{ scopes = [\"expenses:read\"] }}]\nrate_limits = [\"per_ip\"]\n\
             cors = {{ allow_origins = [\"https://app.example\"] }}\n"
        )
    };
    format!(
        "{}{}{}{}{}\n[rate_limits.per_ip]\nkey = \"client_ip\"\nquota = 1000\nper = \"second\"\n{}{}{extra}",
        ports.sections(dir),
        tls_section(certs),
        pool("backend", &[backend.to_string()], ""),
        provider("local", "key_file = \"ed.pub.pem\""),
        // Never fetched by the dry run: nothing listens there.
        provider("remote", "jwks_url = \"http://127.0.0.1:9/jwks.json\""),
        route("api", "local"),
        route("remote", "remote"),
    )
}

/// [`jwt_conf_text`] written to a file, with a pool nobody listens on.
fn jwt_conf(dir: &Path, key: &EdKey) -> std::path::PathBuf {
    let listen = (&TestCerts::new(dir), &Ports::new());
    let text = jwt_conf_text(dir, key, listen, "127.0.0.1:9", "");
    write(dir, "jwt.toml", &text)
}

#[test]
fn tokens_are_verified_offline_against_key_files() {
    let dir = tempfile::tempdir().expect("tmp");
    let key = EdKey::new();
    let conf = jwt_conf(dir.path(), &key);
    let good = key.sign(300);
    let forged = EdKey::new().sign(300);
    let expired = key.sign(-3600);
    let requests = write(
        dir.path(),
        "r.txt",
        &format!(
            "GET https://localhost/api/expenses authorization=\"Bearer {good}\" expect status=proxy auth=verified pool=backend\n\
             GET https://localhost/api/expenses authorization=\"Bearer {forged}\" expect status=401 auth=bad_signature\n\
             GET https://localhost/api/expenses authorization=\"Bearer {expired}\" expect status=401 auth=expired\n"
        ),
    );
    let (code, out, err) = dry_run(&conf, &requests, &["--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v[0]["auth"]["subject"], "user-42");
    // The prefix is stripped, and the identity headers are sent upstream.
    assert_eq!(v[0]["upstream"]["path"], "/expenses");
    let headers = v[0]["upstream"]["headers"].as_array().expect("headers");
    assert!(
        headers.contains(&serde_json::json!(["x-auth-subject", "user-42"])),
        "{headers:?}"
    );
    assert!(
        v[1]["response_headers"]
            .as_array()
            .expect("answer headers")
            .iter()
            .any(|h| h[0] == "www-authenticate"
                && h[1].as_str().is_some_and(|s| s.contains("bad_signature"))),
        "{}",
        v[1]
    );
}

#[test]
fn jwks_url_providers_are_verified_from_a_jwks_file_or_reported_unverifiable() {
    let dir = tempfile::tempdir().expect("tmp");
    let key = EdKey::new();
    let conf = jwt_conf(dir.path(), &key);
    let token = key.sign(300);
    let line = format!("GET https://localhost/remote/x authorization=\"Bearer {token}\"");
    let jwks = write(
        dir.path(),
        "jwks.json",
        &serde_json::json!({"keys": [key.jwk]}).to_string(),
    );
    let with = write(
        dir.path(),
        "with.txt",
        &format!("{line} expect auth=verified status=proxy\n"),
    );
    let (code, out, err) = dry_run(&conf, &with, &["--jwks", jwks.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("auth      verified provider=remote sub=user-42"),
        "{out}"
    );

    let without = write(
        dir.path(),
        "without.txt",
        &format!("{line} expect auth=unverifiable\n"),
    );
    let (code, out, err) = dry_run(&conf, &without, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("unverifiable offline"), "{out}");
}

/// The drift guard: the same requests sent to a running gateway and given to the dry run get
/// the same status, and a proxied one reaches the backend exactly as the dry run shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dry_run_agrees_with_the_running_gateway() {
    let dir = tempfile::tempdir().expect("tmp");
    // Static routes look files up by the whole path: /app/… lives in web/app/.
    let web = dir.path().join("web");
    std::fs::create_dir_all(web.join("app/assets")).expect("web");
    std::fs::write(
        web.join("app/index.html"),
        "<!doctype html><title>t</title>",
    )
    .expect("index");
    std::fs::write(web.join("app/assets/app.0123abcd.js"), "let a = 1;").expect("asset");
    let key = EdKey::new();
    let (backend, seen) = recording_backend().await;
    let ports = Ports::new();
    let extra = format!(
        "\n[[routes]]\nname = \"down\"\nprefix = \"/down\"\nkind = \"proxy\"\nupstream = \"backend\"\nmaintenance = true\n\
         \n[[routes]]\nname = \"app\"\nprefix = \"/app\"\nkind = \"static\"\nroot = \"{}\"\nfallback = \"app/index.html\"\n",
        web.display()
    );
    let certs = TestCerts::new(dir.path());
    let text = jwt_conf_text(
        dir.path(),
        &key,
        (&certs, &ports),
        &backend.to_string(),
        &extra,
    );
    let gw = start_gateway(dir.path(), &ports, &text, &certs.ca_pem);
    let good = key.sign(300);
    let forged = EdKey::new().sign(300);
    let bearer = |t: &str| format!("authorization=\"Bearer {t}\"");
    // (method, target, header tokens, expected status; "proxy" for proxied).
    let cases: Vec<(&str, &str, String, &str)> = vec![
        ("GET", "/api/x?q=1", String::new(), "401"),
        ("GET", "/api/x?q=1", bearer(&good), "proxy"),
        ("GET", "/api/x", bearer(&forged), "401"),
        ("GET", "/api/x", bearer(&key.sign(-3600)), "401"),
        (
            "GET",
            "/api/public/info",
            "x-forwarded-for=6.6.6.6".into(),
            "proxy",
        ),
        (
            "GET",
            "/api/x",
            "x-auth-subject=admin".to_string() + " " + &bearer(&good),
            "proxy",
        ),
        (
            "OPTIONS",
            "/api/x",
            "origin=https://app.example access-control-request-method=POST".into(),
            "204",
        ),
        (
            "OPTIONS",
            "/api/x",
            "origin=https://evil.example access-control-request-method=POST".into(),
            "403",
        ),
        ("GET", "/down/x", String::new(), "503"),
        ("GET", "/app/", "accept=text/html".into(), "200"),
        ("GET", "/app/assets/app.0123abcd.js", String::new(), "200"),
        ("GET", "/app/deep/link", "accept=text/html".into(), "200"),
        ("GET", "/app/missing.png", String::new(), "404"),
        ("POST", "/app/index.html", String::new(), "405"),
        ("GET", "/elsewhere", String::new(), "404"),
        ("GET", "/app/%2e%2e/api/x", String::new(), "401"),
        ("GET", "/api/a%2fb", String::new(), "400"),
        ("GET", "/app/../../x", String::new(), "400"),
        ("TRACE", "/app/", String::new(), "405"),
    ];
    let mut lines = String::new();
    let mut real = Vec::new();
    for (i, (method, target, tokens, want)) in cases.iter().enumerate() {
        let id = format!("parity-{i}");
        let _ = writeln!(
            lines,
            "{method} https://localhost{target} x-request-id={id} {tokens} expect status={want}"
        );
        let mut head =
            format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: {id}\r\n");
        for (n, v) in header_tokens(tokens) {
            let _ = write!(head, "{n}: {v}\r\n");
        }
        head.push_str("Connection: close\r\n\r\n");
        let before = seen.lock().expect("log").len();
        let resp = raw_https(
            gw.https,
            &gw.ca_pem,
            head.as_bytes(),
            Duration::from_secs(5),
        )
        .await;
        let status = raw_status(&resp);
        let reached = seen.lock().expect("log").get(before).cloned();
        let proxied = reached.is_some();
        let got = if proxied {
            "proxy".to_string()
        } else {
            status.to_string()
        };
        assert_eq!(
            &got, want,
            "{method} {target}: the gateway answered {status}"
        );
        real.push(reached);
    }
    let requests = write(dir.path(), "parity.txt", &lines);
    let conf = dir.path().join("gateway.toml");
    let (code, out, err) = dry_run(&conf, &requests, &["--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    for (i, reached) in real.iter().enumerate() {
        let Some(reached) = reached else { continue };
        let up = &v[i]["upstream"];
        assert_eq!(up["path"], reached.uri.as_str(), "case {i}");
        for h in up["headers"].as_array().expect("headers") {
            let (n, val) = (h[0].as_str().expect("name"), h[1].as_str().expect("value"));
            if n == "x-auth-signature" {
                continue; // carries the time it was made
            }
            assert_eq!(reached.header(n), Some(val), "case {i}: {n}");
        }
    }
}

/// The `name=value` tokens of a requests-file line (values quoted when they hold spaces).
fn header_tokens(tokens: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = tokens.trim();
    while let Some((name, after)) = rest.split_once('=') {
        let (value, next) = match after.strip_prefix('"') {
            Some(q) => q.split_once('"').expect("closing quote"),
            None => after.split_once(' ').unwrap_or((after, "")),
        };
        out.push((name.trim().to_string(), value.to_string()));
        rest = next.trim();
    }
    out
}

/// Runs `gateway check -c new --diff old`.
fn check_diff(new: &Path, old: &Path) -> (i32, String, String) {
    gateway_check(new, &["--diff".as_ref(), old.as_os_str()])
}

#[test]
fn check_diff_prints_one_line_per_change() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    let base = good_conf(dir.path(), &Ports::new(), &certs);
    let old = write(dir.path(), "old.toml", &base);
    let text = base
        .replace(
            "peers = [\"127.0.0.1:9\"]",
            "peers = [\"127.0.0.1:9\", \"127.0.0.1:10\"]\nretries = 2",
        )
        .replace("upstream = \"backend\"\n", "upstream = \"backend\"\nstrip_prefix = true\n")
        + "\n[[routes]]\nname = \"docs\"\nprefix = \"/docs\"\nkind = \"proxy\"\nupstream = \"backend\"\n\
           \n[limits]\nmax_body_bytes = 1024\n";
    let new = write(dir.path(), "new.toml", &text);
    let (code, out, err) = check_diff(&new, &old);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            format!("{}: ok (2 routes, 1 pools, 1 certificates)", new.display()).as_str(),
            "route api: changed keys strip_prefix",
            "route docs: added",
            "upstream backend: changed keys retries",
            "upstream backend: peer added 127.0.0.1:10",
            "limits: changed keys max_body_bytes",
        ]
    );

    // The same config laid out otherwise, with comments: no changes.
    let relaid = write(
        dir.path(),
        "relaid.toml",
        &format!("# reformatted\n{}\n\n", base.replace(" = ", "=")),
    );
    let (code, out, err) = check_diff(&relaid, &old);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().nth(1), Some("no changes"), "{out}");
    assert_eq!(out.lines().count(), 2, "{out}");
}

#[test]
fn check_diff_against_a_missing_or_invalid_file_fails_with_its_location() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    let base = good_conf(dir.path(), &Ports::new(), &certs);
    let good = write(dir.path(), "good.toml", &base);

    let missing = dir.path().join("missing.toml");
    let (code, out, err) = check_diff(&good, &missing);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains(&format!("{}: cannot read config", missing.display())),
        "{err}"
    );
    assert!(out.is_empty(), "no diff printed: {out}");

    let text = base.replace("[upstreams.backend]\n", "[upstreams.backend]\nretrys = 3\n");
    let bad = write(dir.path(), "bad.toml", &text);
    let at = format!("{}:{}:1", bad.display(), line_of(&text, "retrys"));
    // Invalid on either side: exit 2 with the problem located.
    for (new, old) in [(&good, &bad), (&bad, &good)] {
        let (code, out, err) = check_diff(new, old);
        assert_eq!(code, 2, "{out}{err}");
        assert!(err.contains(&at) && err.contains("retrys"), "{err}");
        assert!(out.is_empty(), "no diff printed: {out}");
    }
}
