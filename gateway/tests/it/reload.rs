//! Hot reload: under load, invalid changes, certificate rotation, ConfigMap swaps, asset skew,
//! graceful shutdown and binary upgrade.

use crate::harness::*;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn conf_text(dir: &Path, ports: &Ports, certs: &TestCerts, peer: &str, hsts: u64) -> String {
    format!(
        "{}\n[tls]\nhsts_max_age = {hsts}\n[[tls.certificates]]\nname = \"test\"\ncert = \"{}\"\nkey = \"{}\"\n{}\n\
         [[routes]]\nname = \"api\"\nprefix = \"/api\"\nkind = \"proxy\"\nupstream = \"backend\"\n",
        ports.sections(dir),
        certs.cert.display(),
        certs.key.display(),
        pool("backend", &[peer.to_string()], "")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_reloads_under_load_lose_no_request() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    let (a, seen_a) = recording_backend().await;
    let (b, seen_b) = recording_backend().await;
    let ports = Ports::new();
    let file = dir.path().join("gateway.toml");
    let gw = start_gateway(
        dir.path(),
        &ports,
        &conf_text(dir.path(), &ports, &certs, &a.to_string(), 1000),
        &certs.ca_pem,
    );
    gw.wait_ready().await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let tasks = load(&gw, stop.clone(), ok.clone(), failed.clone());
    let probe = gw.client();
    let started = Instant::now();
    for i in 0..50u64 {
        let (peer, hsts) = if i % 2 == 0 {
            (b, 2000 + i)
        } else {
            (a, 1000 + i)
        };
        write_atomic(
            &file,
            &conf_text(dir.path(), &ports, &certs, &peer.to_string(), hsts),
        );
        // Half through the watcher, half through the admin endpoint: the same path.
        if i % 2 == 1 {
            let (status, body) = admin_reload(&gw).await;
            assert_eq!(status, 200, "{body}");
        }
        let want = format!("max-age={hsts}");
        let t = Instant::now();
        loop {
            let r = probe.get(gw.url("/api/probe")).send().await.expect("probe");
            if r.headers()["strict-transport-security"] == want.as_str() {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(1),
                "change {i} not visible within 1 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    while started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("task");
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "failed requests");
    assert!(
        ok.load(Ordering::Relaxed) > 200,
        "load actually ran: {}",
        ok.load(Ordering::Relaxed)
    );
    // Both pools took traffic: the pool change was live.
    assert!(!seen_a.lock().expect("a").is_empty() && !seen_b.lock().expect("b").is_empty());
    let cfg = admin_config(&gw).await;
    assert!(cfg["generation"].as_u64().expect("gen") >= 51, "{cfg}");
    assert_eq!(cfg["last_reload_success"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_changes_apply_nothing_and_are_reported() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    let (a, _) = recording_backend().await;
    let ports = Ports::new();
    let file = dir.path().join("gateway.toml");
    let good = conf_text(dir.path(), &ports, &certs, &a.to_string(), 1111);
    let gw = start_gateway(dir.path(), &ports, &good, &certs.ca_pem);
    let c = gw.client();
    let gen0 = admin_config(&gw).await["generation"].as_u64().expect("gen");

    let other = certs.ca.issue_for_days(&["localhost"], 30).expect("other");
    let (_, other_key) = write_pair(dir.path(), "other", &other);
    let broken = [
        (
            "syntax",
            good.replace("[[routes]]", "[[routes]\n"),
            "gateway.toml:",
        ),
        (
            "missing cert",
            good.replace(&certs.cert.display().to_string(), "/nonexistent/cert.pem"),
            "/nonexistent/cert.pem",
        ),
        (
            "mismatched key",
            good.replace(
                &certs.key.display().to_string(),
                &other_key.display().to_string(),
            ),
            "does not match",
        ),
    ];
    for (what, text, needle) in broken {
        write_atomic(&file, &text.replace("1111", "2222"));
        let (status, body) = admin_reload(&gw).await;
        assert_eq!(status, 422, "{what}: {body}");
        let cfg = admin_config(&gw).await;
        assert_eq!(cfg["generation"].as_u64(), Some(gen0), "{what}");
        assert_eq!(cfg["last_reload_success"], false);
        let err = cfg["last_error"].as_str().expect("error").to_string();
        assert!(err.contains(needle), "{what}: {err}");
        assert!(
            err.contains(&format!("{}:", file.display())),
            "{what}: location: {err}"
        );
        assert_eq!(metric(&gw, "gateway_config_last_reload_success").await, 0.0);
        // Still serving the old config.
        let r = c.get(gw.url("/api/x")).send().await.expect("req");
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["strict-transport-security"], "max-age=1111");
    }
    assert!(metric(&gw, "gateway_config_reloads_total{result=\"failure\"}").await >= 3.0);
    // Fixing the file applies it (through the watcher).
    write_atomic(&file, &good.replace("1111", "3333"));
    let t = Instant::now();
    loop {
        let r = c.get(gw.url("/api/x")).send().await.expect("req");
        if r.headers()["strict-transport-security"] == "max-age=3333" {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(3), "fix not applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cfg = admin_config(&gw).await;
    assert_eq!(cfg["last_reload_success"], true);
    assert!(cfg["last_error"].is_null());
    assert_eq!(metric(&gw, "gateway_config_last_reload_success").await, 1.0);
}

fn leaf_serial(port: u16, ca_pem: &str) -> (String, rustls::ClientConnection, std::net::TcpStream) {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(c.expect("ca")).expect("add");
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("v")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut conn =
        rustls::ClientConnection::new(Arc::new(cfg), "localhost".try_into().expect("sni"))
            .expect("conn");
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", port)).expect("tcp");
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).expect("handshake");
    }
    let der = conn.peer_certificates().expect("certs")[0].clone();
    let (_, x) = x509_parser::parse_x509_certificate(der.as_ref()).expect("x509");
    (x.raw_serial_as_string(), conn, sock)
}

fn http_over(conn: &mut rustls::ClientConnection, sock: &mut std::net::TcpStream) -> String {
    use std::io::{Read, Write};
    conn.writer()
        .write_all(b"GET /api/old HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("write");
    conn.complete_io(sock).expect("io");
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = vec![0u8; 4096];
    loop {
        conn.complete_io(sock).expect("io");
        match conn.reader().read(&mut buf) {
            Ok(n) if n > 0 => return String::from_utf8_lossy(&buf[..n]).into_owned(),
            _ => continue,
        }
    }
}

/// A gateway over [`conf_text`] (route `api` → pool `backend` → one recording backend).
struct Api {
    // Dropped first: the process stops before its directory goes.
    gw: Gateway,
    certs: TestCerts,
    backend: std::net::SocketAddr,
    /// The config as started.
    text: String,
    dir: tempfile::TempDir,
}

async fn api_gateway(env: &[(&str, &str)]) -> Api {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    let (backend, _) = recording_backend().await;
    let ports = Ports::new();
    let text = conf_text(dir.path(), &ports, &certs, &backend.to_string(), 10);
    let gw = start_gateway_with_env(dir.path(), &ports, &text, &certs.ca_pem, env);
    Api {
        gw,
        certs,
        backend,
        text,
        dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_is_live_and_keeps_open_connections() {
    let api = api_gateway(&[]).await;
    let (gw, certs) = (&api.gw, &api.certs);
    let (port, ca) = (gw.https, gw.ca_pem.clone());
    let (serial1, mut conn, mut sock) = tokio::task::spawn_blocking(move || leaf_serial(port, &ca))
        .await
        .expect("hs");

    // Rotate: new pair written over the old files (cert and key renamed into place).
    let next = certs
        .ca
        .issue_for_days(&["localhost", "127.0.0.1"], 60)
        .expect("next");
    write_atomic(&certs.key, &next.key_pem);
    write_atomic(&certs.cert, &next.cert_pem);
    let t = Instant::now();
    loop {
        let ca = gw.ca_pem.clone();
        let (serial2, _, _) = tokio::task::spawn_blocking(move || leaf_serial(port, &ca))
            .await
            .expect("hs");
        if serial2 != serial1 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(3), "rotation not seen");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The connection opened before still works.
    let resp = tokio::task::spawn_blocking(move || http_over(&mut conn, &mut sock))
        .await
        .expect("io");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_style_symlink_swap_is_applied() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    let (a, _) = recording_backend().await;
    let ports = Ports::new();
    // conf/gateway.toml -> ..data/gateway.toml, ..data -> ..v1 (what the kubelet builds).
    let conf = dir.path().join("conf");
    std::fs::create_dir_all(conf.join("..v1")).expect("v1");
    std::fs::write(
        conf.join("..v1/gateway.toml"),
        conf_text(dir.path(), &ports, &certs, &a.to_string(), 501),
    )
    .expect("v1 conf");
    std::os::unix::fs::symlink("..v1", conf.join("..data")).expect("data");
    std::os::unix::fs::symlink("..data/gateway.toml", conf.join("gateway.toml")).expect("link");
    let file = conf.join("gateway.toml");
    let log = std::fs::File::create(dir.path().join("gw.log")).expect("log");
    let child = std::process::Command::new(gateway_bin())
        .args(["run", "-c"])
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn");
    let gw = Gateway {
        child,
        https: ports.https,
        http: ports.http,
        admin: ports.admin,
        ca_pem: certs.ca_pem.clone(),
    };
    let t = Instant::now();
    while !accepts(&format!("127.0.0.1:{}", ports.https)) {
        assert!(t.elapsed() < Duration::from_secs(20));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let c = gw.client();
    assert_eq!(
        c.get(gw.url("/api/x")).send().await.expect("r").headers()["strict-transport-security"],
        "max-age=501"
    );

    // The kubelet's swap: new timestamped dir, ..data_tmp → it, renamed over ..data.
    std::fs::create_dir_all(conf.join("..v2")).expect("v2");
    std::fs::write(
        conf.join("..v2/gateway.toml"),
        conf_text(dir.path(), &ports, &certs, &a.to_string(), 502),
    )
    .expect("v2 conf");
    std::os::unix::fs::symlink("..v2", conf.join("..data_tmp")).expect("tmp link");
    std::fs::rename(conf.join("..data_tmp"), conf.join("..data")).expect("swap");
    std::fs::remove_dir_all(conf.join("..v1")).expect("rm v1");
    let t = Instant::now();
    loop {
        let r = c.get(gw.url("/api/x")).send().await.expect("r");
        if r.headers()["strict-transport-security"] == "max-age=502" {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(3), "swap not applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previous_assets_stay_servable_for_the_grace_period() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    let root = dir.path().join("site");
    std::fs::create_dir_all(root.join("assets")).expect("mkdir");
    std::fs::write(
        root.join("index.html"),
        "<script src=/assets/app.aaaa1111.js></script>",
    )
    .expect("v1");
    std::fs::write(root.join("assets/app.aaaa1111.js"), "console.log(1)").expect("v1 js");
    let ports = Ports::new();
    let conf = static_site_conf(
        dir.path(),
        &ports,
        &certs,
        &root,
        "previous_assets_grace_seconds = 3",
    );
    let gw = start_gateway(dir.path(), &ports, &conf, &certs.ca_pem);
    let c = gw.client();
    // Deploy v2: new shell and chunk, the old chunk removed from disk.
    std::fs::write(root.join("assets/app.bbbb2222.js"), "console.log(2)").expect("v2 js");
    std::fs::write(
        root.join("index.html"),
        "<script src=/assets/app.bbbb2222.js></script>",
    )
    .expect("v2");
    std::fs::remove_file(root.join("assets/app.aaaa1111.js")).expect("rm");
    let t = Instant::now();
    loop {
        let body = c
            .get(gw.url("/"))
            .send()
            .await
            .expect("r")
            .text()
            .await
            .expect("t");
        if body.contains("bbbb2222") {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(3), "deploy not applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let applied = Instant::now();
    let r = c
        .get(gw.url("/assets/app.aaaa1111.js"))
        .send()
        .await
        .expect("old");
    assert_eq!(r.status(), 200, "old chunk within grace");
    assert_eq!(r.text().await.expect("t"), "console.log(1)");
    assert_eq!(
        c.get(gw.url("/assets/app.bbbb2222.js"))
            .send()
            .await
            .expect("new")
            .status(),
        200
    );
    tokio::time::sleep(
        Duration::from_secs(3).saturating_sub(applied.elapsed()) + Duration::from_millis(300),
    )
    .await;
    assert_eq!(
        c.get(gw.url("/assets/app.aaaa1111.js"))
            .send()
            .await
            .expect("old")
            .status(),
        404,
        "after grace"
    );
}

/// Reading the watched files (as the fingerprint itself does) must not start a check: inotify
/// reports opens, and reacting to them made every check trigger the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_the_watched_files_does_not_trigger_checks() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    let root = dir.path().join("site");
    std::fs::create_dir_all(root.join("assets")).expect("mkdir");
    std::fs::write(root.join("index.html"), "v1").expect("index");
    std::fs::write(root.join("assets/app.aaaa1111.js"), "x").expect("js");
    let ports = Ports::new();
    let conf = static_site_conf(dir.path(), &ports, &certs, &root, "");
    let gw = start_gateway(dir.path(), &ports, &conf, &certs.ca_pem);
    // A forced check reads every input once, as each check does.
    assert_eq!(admin_reload(&gw).await.0, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = admin_config(&gw).await["checks"].as_u64().expect("checks");
    // Bursts of reads with quiet gaps longer than the watcher's 200 ms debounce: each burst
    // used to start a check.
    for _ in 0..5 {
        for f in [
            dir.path().join("gateway.toml"),
            certs.cert.clone(),
            certs.key.clone(),
            root.join("index.html"),
            root.join("assets/app.aaaa1111.js"),
        ] {
            std::fs::read(&f).expect("read");
        }
        std::fs::read_dir(root.join("assets"))
            .expect("ls")
            .for_each(drop);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let after = admin_config(&gw).await["checks"].as_u64().expect("checks");
    // At most one, the 5 s safety-net poll.
    assert!(
        after - before <= 1,
        "checks went {before} -> {after} with nothing written"
    );

    // A write is still seen.
    let gen0 = admin_config(&gw).await["generation"].as_u64().expect("gen");
    std::fs::write(root.join("index.html"), "v2").expect("v2");
    let t = Instant::now();
    while admin_config(&gw).await["generation"].as_u64().expect("gen") == gen0 {
        assert!(t.elapsed() < Duration::from_secs(3), "write not seen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        gw.client()
            .get(gw.url("/"))
            .send()
            .await
            .expect("r")
            .text()
            .await
            .expect("t"),
        "v2"
    );
}

fn signal(pid: u32, sig: &str) {
    let st = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(st.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_readiness_first_and_finishes_in_flight_requests() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    let (a, _) = recording_backend().await;
    let ports = Ports::new();
    let conf = conf_text(dir.path(), &ports, &certs, &a.to_string(), 10)
        .replace("readiness_drain_seconds = 0", "readiness_drain_seconds = 1")
        .replace("shutdown_grace_seconds = 0", "shutdown_grace_seconds = 6");
    let mut gw = start_gateway(dir.path(), &ports, &conf, &certs.ca_pem);
    gw.wait_ready().await;
    let c = gw.client();
    let slow = tokio::spawn({
        let (c, url) = (c.clone(), gw.url("/api/slow"));
        async move { c.get(url).send().await.map(|r| r.status().as_u16()) }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(gw.child.id(), "-TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = reqwest::get(gw.admin_url("/readyz"))
        .await
        .expect("readyz while draining");
    assert_eq!(r.status(), 503);
    // Still serving during the drain.
    assert_eq!(
        c.get(gw.url("/api/during"))
            .send()
            .await
            .expect("during")
            .status(),
        200
    );
    assert_eq!(
        slow.await.expect("task").expect("slow request"),
        200,
        "in-flight request completed"
    );
    let t = Instant::now();
    while gw.child.try_wait().expect("wait").is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "gateway did not exit"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_binary_upgrade_under_load_loses_no_request() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    let (a, _) = recording_backend().await;
    let ports = Ports::new();
    let conf = conf_text(dir.path(), &ports, &certs, &a.to_string(), 10)
        .replace("shutdown_grace_seconds = 0", "shutdown_grace_seconds = 2");
    let old = start_gateway(dir.path(), &ports, &conf, &certs.ca_pem);
    old.wait_ready().await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let tasks = load(&old, stop.clone(), ok.clone(), failed.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    // New binary waits for the sockets; the old one hands them over on SIGQUIT.
    let log = std::fs::File::create(dir.path().join("new.log")).expect("log");
    let new_child = std::process::Command::new(gateway_bin())
        .args(["run", "--upgrade", "-c"])
        .arg(dir.path().join("gateway.toml"))
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn new");
    let new = Gateway {
        child: new_child,
        https: old.https,
        http: old.http,
        admin: old.admin,
        ca_pem: old.ca_pem.clone(),
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    signal(old.child.id(), "-QUIT");
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("task");
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed requests during upgrade"
    );
    assert!(ok.load(Ordering::Relaxed) > 50);
    let mut old = old;
    let t = Instant::now();
    while old.child.try_wait().expect("wait").is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "old process did not exit"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The new process serves alone.
    assert_eq!(new.get_status("/api/after").await, 200);
}

/// `/config` once generation `generation` is in force (within 3 s, through the watcher).
async fn config_at(gw: &Gateway, generation: u64) -> serde_json::Value {
    let t = Instant::now();
    loop {
        let cfg = admin_config(gw).await;
        if cfg["generation"].as_u64() == Some(generation) {
            return cfg;
        }
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "generation {generation} not applied: {cfg}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The change lines `/config` shows for the last reload.
fn change_lines(cfg: &serde_json::Value) -> Vec<String> {
    cfg["changes"]["lines"]
        .as_array()
        .unwrap_or_else(|| panic!("no change lines: {cfg}"))
        .iter()
        .map(|l| l.as_str().expect("line").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_reports_the_route_and_peer_it_added() {
    let api = api_gateway(&[("RUST_LOG", "info")]).await;
    let (gw, a, text, dir) = (&api.gw, api.backend, &api.text, &api.dir);
    let (b, _) = recording_backend().await;
    let file = dir.path().join("gateway.toml");
    let gen0 = admin_config(gw).await["generation"].as_u64().expect("gen");
    let routes = "gateway_config_changes_total{section=\"routes\"}";
    assert_eq!(metric(gw, routes).await, 0.0);

    let next = text.replace(
        &format!("peers = [\"{a}\"]"),
        &format!("peers = [\"{a}\", \"{b}\"]"),
    ) + "\n[[routes]]\nname = \"docs\"\nprefix = \"/docs\"\nkind = \"proxy\"\nupstream = \"backend\"\n";
    write_atomic(&file, &next);
    let cfg = config_at(gw, gen0 + 1).await;
    assert_eq!(
        change_lines(&cfg),
        [
            "route docs: added".to_string(),
            format!("upstream backend: peer added {b}")
        ]
    );
    assert_eq!(cfg["changes"]["from_generation"].as_u64(), Some(gen0));
    assert_eq!(
        cfg["changes"]["changes"][0],
        serde_json::json!({"change": "added", "section": "routes", "name": "docs"})
    );
    assert_eq!(cfg["changes"]["changes"][1]["peer"], b.to_string());
    assert_eq!(metric(gw, routes).await, 1.0);
    assert_eq!(
        metric(gw, "gateway_config_changes_total{section=\"upstreams\"}").await,
        1.0
    );
    assert_eq!(
        metric(gw, "gateway_config_changes_total{section=\"certificates\"}").await,
        0.0
    );
    // The new route serves.
    let r = gw.client().get(gw.url("/docs/x")).send().await.expect("r");
    assert_eq!(r.status(), 200);
    // One structured log line says the same.
    let log = std::fs::read_to_string(dir.path().join("gateway.log")).expect("log");
    let reloaded: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["fields"]["message"] == "config reloaded")
        .collect();
    assert_eq!(reloaded.len(), 1, "{log}");
    let fields = &reloaded[0]["fields"];
    assert_eq!(fields["changed_sections"], "routes,upstreams", "{log}");
    assert_eq!(
        fields["changes"],
        format!("route docs: added; upstream backend: peer added {b}"),
        "{log}"
    );
}

/// Serial (hex, no colons) and `notAfter` date of a PEM certificate.
fn serial_and_expiry(pem: &str) -> (String, String) {
    let der = rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .expect("a certificate")
        .expect("pem");
    let (_, x) = x509_parser::parse_x509_certificate(der.as_ref()).expect("x509");
    let day = time::OffsetDateTime::from_unix_timestamp(x.validity().not_after.timestamp())
        .expect("time")
        .date();
    (x.raw_serial_as_string().replace(':', ""), day.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_rotation_reports_old_and_new_serial() {
    let api = api_gateway(&[]).await;
    let (gw, certs) = (&api.gw, &api.certs);
    let gen0 = admin_config(gw).await["generation"].as_u64().expect("gen");
    let (old_serial, old_day) =
        serial_and_expiry(&std::fs::read_to_string(&certs.cert).expect("cert"));
    let next = certs
        .ca
        .issue_for_days(&["localhost", "127.0.0.1"], 60)
        .expect("next");
    let (new_serial, new_day) = serial_and_expiry(&next.cert_pem);
    // Key first: a reload in between (new key, old certificate) is refused, so the next
    // generation is the whole rotation.
    write_atomic(&certs.key, &next.key_pem);
    write_atomic(&certs.cert, &next.cert_pem);
    let cfg = config_at(gw, gen0 + 1).await;
    assert_eq!(
        change_lines(&cfg),
        [format!(
            "certificate test: rotated serial {old_serial} (expires {old_day}) → {new_serial} (expires {new_day})"
        )]
    );
    let rotated = &cfg["changes"]["changes"][0];
    assert_eq!(rotated["old"]["serial"], old_serial.as_str());
    assert_eq!(rotated["new"]["serial"], new_serial.as_str());
    assert_eq!(
        metric(gw, "gateway_config_changes_total{section=\"certificates\"}").await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_or_comment_only_reload_says_no_changes() {
    let api = api_gateway(&[]).await;
    let (gw, text, dir) = (&api.gw, &api.text, &api.dir);
    let file = dir.path().join("gateway.toml");
    let gen0 = admin_config(gw).await["generation"].as_u64().expect("gen");
    assert!(
        admin_config(gw).await["changes"].is_null(),
        "first generation"
    );

    // `POST /reload` always reloads: same inputs, a new generation, nothing changed.
    let (status, body) = admin_reload(gw).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["generation"].as_u64(), Some(gen0 + 1), "{body}");
    assert_eq!(body["changes"], serde_json::json!(["no changes"]));
    let cfg = admin_config(gw).await;
    assert_eq!(change_lines(&cfg), ["no changes"]);
    assert_eq!(cfg["changes"]["changes"], serde_json::json!([]));

    // A comment is new content for the watcher, but the same config.
    write_atomic(&file, &format!("# reviewed\n{text}"));
    let cfg = config_at(gw, gen0 + 2).await;
    assert_eq!(change_lines(&cfg), ["no changes"]);
    let counted = metrics_text(gw).await;
    assert!(
        counted
            .lines()
            .filter(|l| l.starts_with("gateway_config_changes_total{"))
            .all(|l| l.ends_with(" 0")),
        "{counted}"
    );
}
