//! Test harness: real servers on free loopback ports, a client that trusts only the test CA.

use axum::extract::Request;
use axum::response::IntoResponse;
use gateway::certs::{DevCa, IssuedCert};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A port nobody listens on right now, handed out once per test run. Taken below the
/// kernel's ephemeral range: fake backends bind port 0 and keep it, so an ephemeral port
/// written into a gateway config could be taken by one of them before the gateway binds it
/// — the gateway then exits with "address in use" while the backend accepts on its port,
/// and the test's TLS client meets a plain HTTP server ("tls handshake eof").
pub fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let (eph_lo, eph_hi) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|v| v.parse::<u32>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    // Below the ephemeral range when there is room (10100 up: 10080 is a port browsers
    // refuse), else above it.
    let (lo, hi) = if eph_lo >= 10_100 + 2_000 {
        (10_100, eph_lo)
    } else {
        (eph_hi + 1, 65_536)
    };
    assert!(
        hi > lo + 1_000,
        "no port range outside the ephemeral one ({eph_lo}-{eph_hi})"
    );
    let span = hi - lo;
    // A different starting point per run, so runs back to back start apart.
    let start = std::process::id().wrapping_mul(7919) % span;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // Never wrap: a port handed out twice could reach two gateways.
        assert!(n < span, "ran out of test ports in {lo}..{hi}");
        let Ok(port) = u16::try_from(lo + (start + n) % span) else {
            continue;
        };
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Whether something accepts TCP on `addr`.
pub fn accepts(addr: &str) -> bool {
    std::net::TcpStream::connect_timeout(&addr.parse().expect("addr"), Duration::from_millis(200))
        .is_ok()
}

/// Certificates for one test: a CA and a `localhost` leaf, written into `dir`.
pub struct TestCerts {
    pub ca: DevCa,
    pub ca_pem: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCerts {
    pub fn new(dir: &Path) -> Self {
        let ca = DevCa::generate("test CA").expect("ca");
        let leaf = ca
            .issue_for_days(&["localhost", "127.0.0.1", "::1"], 30)
            .expect("leaf");
        let (cert, key) = write_pair(dir, "server", &leaf);
        Self {
            ca_pem: ca.cert_pem(),
            ca,
            cert,
            key,
        }
    }
}

/// Writes `name.crt` / `name.key` into `dir`.
pub fn write_pair(dir: &Path, name: &str, c: &IssuedCert) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, &c.cert_pem).expect("write cert");
    std::fs::write(&key, &c.key_pem).expect("write key");
    (cert, key)
}

/// What a recording backend saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub body_len: usize,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Every request a backend received.
pub type Log = Arc<Mutex<Vec<Seen>>>;

async fn record(log: Log, req: Request) -> Request {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    log.lock().expect("log").push(Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
        body_len: bytes.len(),
    });
    Request::from_parts(parts, axum::body::Body::from(bytes))
}

/// Serves `router` on a free port, recording every request (health checks excluded).
pub async fn serve_recorded(router: axum::Router) -> (SocketAddr, Log) {
    serve_recorded_at(router, "127.0.0.1:0").await
}

/// [`serve_recorded`] on a given address.
pub async fn serve_recorded_at(router: axum::Router, addr: &str) -> (SocketAddr, Log) {
    let log: Log = Arc::default();
    let l2 = log.clone();
    let app = router.layer(axum::middleware::from_fn(
        move |req: Request, next: axum::middleware::Next| {
            let log = l2.clone();
            async move {
                let req = if req.uri().path() == "/healthz" {
                    req
                } else {
                    record(log, req).await
                };
                next.run(req).await
            }
        },
    ));
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, log)
}

/// A backend that answers everything with 200 JSON, `/api/slow` after 5 s, `/healthz` 200.
pub async fn recording_backend() -> (SocketAddr, Log) {
    serve_recorded(recording_router()).await
}

/// The router of [`recording_backend`].
pub fn recording_router() -> axum::Router {
    use axum::routing::{any, get};
    axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/api/slow",
            any(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        )
        .fallback(any(|req: Request| async move {
            (
                [
                    ("Content-Type", "application/json"),
                    ("Server", "backend/1.0"),
                ],
                format!("{{\"path\":\"{}\"}}", req.uri().path()),
            )
                .into_response()
        }))
}

/// The real expense backend (library) on a free port, with a SQLite file in `dir`.
pub async fn expense_backend(dir: &Path) -> (SocketAddr, Log) {
    let config = backend::Config {
        database_url: backend::db::sqlite_url(&dir.join("api.db").display().to_string()),
        keys_dir: dir.join("keys"),
        issuer: "https://localhost".into(),
        audience: "expenses-api".into(),
        token_ttl_secs: 900,
        auth_mode: backend::auth::AuthMode::Token,
        key_policy: backend::keys::KeyPolicy::local(900),
        identity_key_file: None,
    };
    let router = backend::try_build(config).await.expect("backend");
    serve_recorded(router).await
}

/// A running `gateway` process, killed on drop.
pub struct Gateway {
    pub child: Child,
    pub https: u16,
    pub http: u16,
    pub admin: u16,

    pub ca_pem: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Ports and paths a test config is rendered with.
pub struct Ports {
    pub https: u16,
    pub http: u16,
    pub admin: u16,
}

impl Ports {
    pub fn new() -> Self {
        Self {
            https: free_port(),
            http: free_port(),
            admin: free_port(),
        }
    }

    /// The `[process]` and `[listeners]` sections for these ports, with per-test sockets.
    pub fn sections(&self, dir: &Path) -> String {
        format!(
            r#"threads = 2
[process]
readiness_drain_seconds = 0
shutdown_grace_seconds = 0
shutdown_timeout_seconds = 1
upgrade_sock = "{dir}/upgrade.sock"
pid_file = "{dir}/gateway.pid"

[listeners]
https = "127.0.0.1:{}"
http = "127.0.0.1:{}"
admin = "127.0.0.1:{}"
"#,
            self.https,
            self.http,
            self.admin,
            dir = dir.display()
        )
    }
}

/// The `[tls]` section with one certificate.
pub fn tls_section(certs: &TestCerts) -> String {
    format!(
        r#"
[tls]
[[tls.certificates]]
name = "test"
cert = "{}"
key = "{}"
default = true
"#,
        certs.cert.display(),
        certs.key.display()
    )
}

/// A config with the port sections, one certificate and one static route `web` at `/` over
/// `root`, with `extra` keys for that route.
pub fn static_site_conf(
    dir: &Path,
    ports: &Ports,
    certs: &TestCerts,
    root: &Path,
    extra: &str,
) -> String {
    format!(
        "{}{}\n[[routes]]\nname = \"web\"\nprefix = \"/\"\nkind = \"static\"\nroot = \"{}\"\n{extra}\n",
        ports.sections(dir),
        tls_section(certs),
        root.display()
    )
}

/// A proxy pool section named `name` with `peers` and extra keys.
pub fn pool(name: &str, peers: &[String], extra: &str) -> String {
    let peers: Vec<String> = peers.iter().map(|p| format!("\"{p}\"")).collect();
    format!(
        "\n[upstreams.{name}]\npeers = [{}]\nhealth_check_interval_ms = 500\n{extra}\n",
        peers.join(", ")
    )
}

pub fn gateway_bin() -> &'static str {
    env!("CARGO_BIN_EXE_gateway")
}

/// Runs `gateway check -c file`; returns (success, stdout + stderr).
pub fn check(file: &Path) -> (bool, String) {
    let out = Command::new(gateway_bin())
        .args(["check", "-c"])
        .arg(file)
        .output()
        .expect("run gateway check");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Starts the gateway with `conf` (already containing the port sections) and waits until
/// HTTPS and admin accept.
pub fn start_gateway(dir: &Path, ports: &Ports, conf: &str, ca_pem: &str) -> Gateway {
    start_gateway_with_env(dir, ports, conf, ca_pem, &[])
}

/// [`start_gateway`] with extra environment variables for the process.
pub fn start_gateway_with_env(
    dir: &Path,
    ports: &Ports,
    conf: &str,
    ca_pem: &str,
    env: &[(&str, &str)],
) -> Gateway {
    let file = dir.join("gateway.toml");
    std::fs::write(&file, conf).expect("write conf");
    let log = std::fs::File::create(dir.join("gateway.log")).expect("log");
    let access = std::fs::File::create(dir.join("access.log")).expect("access log");
    let child = Command::new(gateway_bin())
        .args(["run", "-c"])
        .arg(&file)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(access)
        .stderr(log)
        .spawn()
        .expect("spawn gateway");
    let mut gw = Gateway {
        child,
        https: ports.https,
        http: ports.http,
        admin: ports.admin,

        ca_pem: ca_pem.to_string(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if accepts(&format!("127.0.0.1:{}", ports.https))
            && accepts(&format!("127.0.0.1:{}", ports.admin))
        {
            // Something accepts; it must be this gateway, not another process on the port.
            if let Ok(Some(status)) = gw.child.try_wait() {
                let log = std::fs::read_to_string(dir.join("gateway.log")).unwrap_or_default();
                panic!("gateway exited ({status}) while its ports accept:\n{log}");
            }
            return gw;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = std::fs::read_to_string(dir.join("gateway.log")).unwrap_or_default();
    panic!("gateway did not start:\n{log}");
}

impl Gateway {
    /// A client trusting only the test CA, resolving `localhost` to this gateway.
    pub fn client(&self) -> reqwest::Client {
        self.client_builder().build().expect("client")
    }

    /// Status of a GET of `path` with the default client.
    pub async fn get_status(&self, path: &str) -> reqwest::StatusCode {
        self.client()
            .get(self.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
            .status()
    }

    /// A client that sees bodies as sent: no transparent decompression.
    pub fn raw_client(&self) -> reqwest::Client {
        self.raw_client_builder().build().expect("client")
    }

    pub fn raw_client_builder(&self) -> reqwest::ClientBuilder {
        self.client_builder().no_gzip().no_brotli()
    }

    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).expect("ca"),
            )
            .resolve("localhost", SocketAddr::from(([127, 0, 0, 1], self.https)))
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(15))
    }

    /// `https://localhost:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{}", self.https, path)
    }

    /// Admin URL.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.admin, path)
    }

    /// Waits until `/readyz` says ready.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(r) = reqwest::get(self.admin_url("/readyz")).await {
                if r.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("gateway never became ready");
    }
}

/// Sends raw bytes over TLS (ALPN http/1.1) and reads until the server closes or `timeout`.
pub async fn raw_https(port: u16, ca_pem: &str, request: &[u8], timeout: Duration) -> Vec<u8> {
    raw_https_closed(port, ca_pem, request, timeout).await.0
}

/// As [`raw_https`], also telling whether the server closed the connection.
pub async fn raw_https_closed(
    port: u16,
    ca_pem: &str,
    request: &[u8],
    timeout: Duration,
) -> (Vec<u8>, bool) {
    use tokio::io::AsyncWriteExt;
    let mut tls = tls_connect(port, ca_pem).await;
    let _ = tls.write_all(request).await;
    read_until_closed(&mut tls, timeout).await
}

/// Reads until the server closes (returns when it does, or after `limit`): (bytes, closed).
pub async fn read_until_closed<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    limit: Duration,
) -> (Vec<u8>, bool) {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (out, false),
        }
    }
}

/// A TLS connection (ALPN http/1.1) to the gateway, trusting only the test CA.
pub async fn tls_connect(
    port: u16,
    ca_pem: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    tls_connect_alpn(port, ca_pem, b"http/1.1").await
}

/// [`tls_connect`] offering one ALPN protocol (`h2`, `http/1.1`).
pub async fn tls_connect_alpn(
    port: u16,
    ca_pem: &str,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    try_tls_connect(port, ca_pem, alpn).await.expect("tls")
}

/// A TLS connection that may fail (e.g. a connection the gateway refuses during the handshake).
pub async fn try_tls_connect(
    port: u16,
    ca_pem: &str,
    alpn: &[u8],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(c.expect("ca")).expect("add ca");
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("tcp");
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").expect("sni"),
            tcp,
        )
        .await
}

/// Status code of a raw HTTP/1.1 response.
pub fn raw_status(resp: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(resp);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Writes `text` to `path` atomically (temp file + rename), as deploy tools do.
pub fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, text).expect("write tmp");
    std::fs::rename(&tmp, path).expect("rename");
}

/// Sends `POST /reload` to the admin listener; returns (status, body).
pub async fn admin_reload(gw: &Gateway) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(gw.admin_url("/reload"))
        .send()
        .await
        .expect("reload");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

/// `GET /config` from the admin listener.
pub async fn admin_config(gw: &Gateway) -> serde_json::Value {
    reqwest::get(gw.admin_url("/config"))
        .await
        .expect("config")
        .json()
        .await
        .expect("json")
}

/// `GET /metrics` from the admin listener.
pub async fn metrics_text(gw: &Gateway) -> String {
    reqwest::get(gw.admin_url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

/// The value of a metric line (exact name with labels) in `/metrics`, 0 when absent.
pub async fn metric(gw: &Gateway, series: &str) -> f64 {
    metrics_text(gw)
        .await
        .lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Client tasks hammering the gateway until `stop`; counts successes and failures.
pub fn load(
    gw: &Gateway,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for i in 0..4 {
        // Half keep-alive, half a fresh connection per request.
        let mut b = gw.client_builder();
        if i % 2 == 1 {
            b = b.pool_max_idle_per_host(0);
        }
        let c = b.build().expect("client");
        let url = gw.url("/api/load");
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match c.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => {
                        eprintln!("failed: status {}", r.status());
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        eprintln!("failed: {e:?}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    tasks
}
