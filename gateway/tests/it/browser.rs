//! The demo SPA in a real headless Chromium, through the gateway over HTTPS.
//!
//! Chromium is driven over WebDriver (chromedriver) with plain HTTP calls. It trusts exactly
//! the test server's public key (`--ignore-certificate-errors-spki-list`), nothing broader.

use crate::harness::*;
use base64::Engine as _;
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Driver {
    child: Child,
    base: String,
    session: String,
    http: reqwest::Client,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // End the WebDriver session first: killing chromedriver alone orphans Chromium.
        // Blocking is fine here (a test's end, also on panic).
        use std::io::{Read, Write};
        let addr = self.base.trim_start_matches("http://").to_string();
        if let Ok(mut s) = std::net::TcpStream::connect(&addr) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = write!(
                s,
                "DELETE /session/{} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.session
            );
            let _ = s.read_to_end(&mut Vec::new());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spki_pin(cert_pem: &str) -> String {
    use sha2::Digest;
    let der = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .next()
        .expect("cert")
        .expect("pem");
    let (_, x509) = x509_parser::parse_x509_certificate(der.as_ref()).expect("x509");
    let spki = x509.tbs_certificate.subject_pki.raw;
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(spki))
}

impl Driver {
    async fn start(profile: &Path, pin: &str) -> Self {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian package chromium-driver) must be installed");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && http.get(format!("{base}/status")).send().await.is_err()
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--disable-quic",
                    format!("--user-data-dir={}", profile.display()),
                    format!("--ignore-certificate-errors-spki-list={pin}"),
                    "--window-size=1100,900",
                ]
            }
        }}});
        let v: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("session json");
        let session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_string();
        Self {
            child,
            base,
            session,
            http,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{}", self.base, self.session, path);
        let mut req = self.http.request(method, url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req
            .send()
            .await
            .expect("webdriver")
            .json()
            .await
            .expect("json");
        v["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    /// The element matching `css` now, if any.
    async fn try_find(&self, css: &str) -> Option<String> {
        let v = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v[ELEMENT].as_str().map(String::from)
    }

    /// Waits for an element matching `css` (10 s).
    async fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(id) = self.try_find(css).await {
                return id;
            }
            if Instant::now() > deadline {
                let msg = self.text("#message").await.unwrap_or_default();
                panic!("element {css} never appeared (page message: {msg:?})");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn text(&self, css: &str) -> Option<String> {
        let id = self.try_find(css).await?;
        self.call(reqwest::Method::GET, &format!("/element/{id}/text"), None)
            .await
            .as_str()
            .map(String::from)
    }

    async fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/clear"),
            Some(json!({})),
        )
        .await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    async fn click(&self, css: &str) {
        let id = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        )
        .await;
    }

    async fn eval(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    async fn screenshot(&self, to: &Path) {
        let v = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("png base64"))
            .expect("decode");
        std::fs::create_dir_all(to.parent().expect("dir")).expect("mkdir");
        std::fs::write(to, png).expect("write screenshot");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spa_register_login_add_and_deep_link_in_chromium() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    let (backend, seen) = expense_backend(dir.path()).await;
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("../web");
    let ports = Ports::new();
    let conf = format!(
        "{}{}{}\n[[routes]]\nname = \"api\"\nprefix = \"/api\"\nkind = \"proxy\"\nupstream = \"backend\"\n\n\
         [[routes]]\nname = \"web\"\nprefix = \"/\"\nkind = \"static\"\nroot = \"{}\"\n",
        ports.sections(dir.path()),
        tls_section(&certs),
        pool("backend", &[backend.to_string()], ""),
        web.display()
    );
    let gw = start_gateway(dir.path(), &ports, &conf, &certs.ca_pem);
    gw.wait_ready().await;
    let pin = spki_pin(&std::fs::read_to_string(&certs.cert).expect("cert"));
    let d = Driver::start(&dir.path().join("chrome-profile"), &pin).await;

    // Unauthenticated: the app routes to /login on the client.
    d.goto(&gw.url("/")).await;
    d.find("#auth-form").await;
    d.type_into("#email", "browser@example.com").await;
    d.type_into("#password", "a long enough password").await;
    d.click("#register").await;
    d.find("#add-form").await;

    d.type_into("#amount", "1234").await;
    d.type_into("#category", "coffee").await;
    d.type_into("#note", "flat white").await;
    d.click("#add").await;
    let item = d.find("li.expense").await;
    let id = d
        .call(
            reqwest::Method::GET,
            &format!("/element/{item}/attribute/data-id"),
            None,
        )
        .await
        .as_str()
        .expect("data-id")
        .to_string();
    let listed = d.text("li.expense").await.unwrap_or_default();
    assert!(
        listed.contains("coffee") && listed.contains("12.34"),
        "{listed}"
    );

    // A deep link loaded fresh (the fallback serves the shell, the lazy chunk renders it).
    d.goto(&gw.url(&format!("/expenses/{id}"))).await;
    d.find("#detail-amount").await;
    let amount = d.text("#detail-amount").await.unwrap_or_default();
    assert!(amount.contains("12.34"), "{amount}");
    assert_eq!(
        d.eval("return location.pathname").await,
        json!(format!("/expenses/{id}"))
    );
    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/e2e-spa.png");
    d.screenshot(&shot).await;
    assert!(std::fs::metadata(&shot).expect("screenshot").len() > 1000);

    // Everything the browser did went through the gateway to the backend.
    let seen = seen.lock().expect("log").clone();
    assert!(seen
        .iter()
        .any(|s| s.method == "POST" && s.uri == "/api/expenses"));
    assert!(seen.iter().any(|s| s.uri == format!("/api/expenses/{id}")));
    assert!(seen
        .iter()
        .all(|s| s.header("x-forwarded-proto") == Some("https")));
}

#[test]
fn web_asset_names_carry_their_content_hash() {
    use sha2::Digest;
    let assets = Path::new(env!("CARGO_MANIFEST_DIR")).join("../web/assets");
    let re = regex::Regex::new(r"^[a-z]+\.([0-9a-f]{8})\.(js|css)$").expect("re");
    let mut n = 0;
    for e in std::fs::read_dir(&assets).expect("assets") {
        let name = e.expect("entry").file_name().to_string_lossy().into_owned();
        let caps = re
            .captures(&name)
            .unwrap_or_else(|| panic!("{name} is not fingerprinted"));
        let data = std::fs::read(assets.join(&name)).expect("read");
        let hash = hex::encode(sha2::Sha256::digest(&data));
        assert_eq!(
            &hash[..8],
            &caps[1],
            "{name}: rename to its sha256 prefix after editing"
        );
        n += 1;
    }
    assert!(n >= 4);
    // Every asset referenced from the shell and the modules exists.
    let index = std::fs::read_to_string(assets.join("../index.html")).expect("index");
    let refs = regex::Regex::new(r"(?:/assets/|\./)([a-z]+\.[0-9a-f]{8}\.(?:js|css))").expect("re");
    let mut texts = vec![index];
    for e in std::fs::read_dir(&assets).expect("assets") {
        texts.push(std::fs::read_to_string(e.expect("e").path()).expect("read"));
    }
    for t in &texts {
        for c in refs.captures_iter(t) {
            assert!(assets.join(&c[1]).is_file(), "missing {}", &c[1]);
        }
    }
}
