//! Metrics, readiness and access logs after a known mix of requests.

use crate::harness::*;
use serde_json::Value;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Parses Prometheus text format into series → value; panics on a malformed line.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            assert!(
                line.is_empty() || line.starts_with("# HELP ") || line.starts_with("# TYPE "),
                "bad comment: {line}"
            );
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line: {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':'),
            "bad name: {line}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "bad labels: {line}");
        }
        out.insert(series.to_string(), value);
    }
    out
}

async fn scrape(gw: &Gateway) -> HashMap<String, f64> {
    parse_metrics(&metrics_text(gw).await)
}

fn get(m: &HashMap<String, f64>, series: &str) -> f64 {
    m.get(series).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_by_exactly_the_traffic_and_access_lines_match() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    let (backend, _) = recording_backend().await;
    std::fs::write(dir.path().join("secret"), [5u8; 40]).expect("secret");
    let ports = Ports::new();
    let conf = format!(
        "{}{}{}\n[upstreams.dead]\npeers = [\"127.0.0.1:{}\"]\nhealth_check_path = \"\"\n\
         [rate_limits.tight]\nkey = \"client_ip\"\nquota = 1\nper = \"hour\"\nburst = 1\n\
         [jwt_providers.p]\nissuer = \"i\"\naudiences = [\"a\"]\nalgorithms = [\"HS256\"]\nsecret_file = \"{}\"\n\
         [[routes]]\nname = \"api\"\nprefix = \"/api\"\nkind = \"proxy\"\nupstream = \"backend\"\n\
         rate_limits = [{{ policy = \"tight\", paths = [\"/api/limited\"] }}]\n\
         [[routes]]\nname = \"secure\"\nprefix = \"/secure\"\nkind = \"proxy\"\nupstream = \"backend\"\nauth = \"jwt\"\nauth_provider = \"p\"\n\
         [[routes]]\nname = \"dead\"\nprefix = \"/dead\"\nkind = \"proxy\"\nupstream = \"dead\"\n",
        ports.sections(dir.path()),
        tls_section(&certs),
        pool("backend", &[backend.to_string()], ""),
        free_port(),
        dir.path().join("secret").display()
    );
    let gw = start_gateway(dir.path(), &ports, &conf, &certs.ca_pem);
    let before = scrape(&gw).await;
    let c = gw.client();
    let mut ids = Vec::new();
    let send = |path: &'static str, auth: Option<&'static str>| {
        let c = c.clone();
        let url = gw.url(path);
        async move {
            let mut r = c.get(url);
            if let Some(a) = auth {
                r = r.header("Authorization", a);
            }
            let r = r.send().await.expect("req");
            (
                r.status().as_u16(),
                r.headers()["x-request-id"]
                    .to_str()
                    .expect("rid")
                    .to_string(),
            )
        }
    };
    let plan: Vec<(&str, Option<&str>, u16)> = vec![
        ("/api/a", None, 200),
        ("/api/b", None, 200),
        ("/api/limited", None, 200),
        ("/api/limited", None, 429),
        ("/secure/x", None, 401),
        ("/secure/x", Some("Bearer garbage"), 401),
        ("/nowhere", None, 404),
        ("/dead/x", None, 502),
    ];
    for (path, auth, want) in &plan {
        let (status, rid) = send(path, *auth).await;
        assert_eq!(status, *want, "{path}");
        ids.push(rid);
    }
    let after = scrape(&gw).await;
    let delta = |s: &str| get(&after, s) - get(&before, s);
    assert_eq!(
        delta("gateway_requests_total{method=\"GET\",route=\"api\",status=\"2xx\"}"),
        3.0
    );
    assert_eq!(
        delta("gateway_requests_total{method=\"GET\",route=\"api\",status=\"4xx\"}"),
        1.0
    );
    assert_eq!(
        delta("gateway_requests_total{method=\"GET\",route=\"secure\",status=\"4xx\"}"),
        2.0
    );
    assert_eq!(
        delta("gateway_requests_total{method=\"GET\",route=\"none\",status=\"4xx\"}"),
        1.0
    );
    assert_eq!(
        delta("gateway_requests_total{method=\"GET\",route=\"dead\",status=\"5xx\"}"),
        1.0
    );
    assert_eq!(
        delta("gateway_rate_limit_decisions_total{policy=\"tight\",result=\"allowed\"}"),
        1.0
    );
    assert_eq!(
        delta("gateway_rate_limit_decisions_total{policy=\"tight\",result=\"limited\"}"),
        1.0
    );
    assert_eq!(
        delta("gateway_auth_rejections_total{provider=\"p\",reason=\"malformed\"}"),
        1.0
    );
    // The tokenless 401 is counted too.
    assert_eq!(
        delta("gateway_auth_rejections_total{provider=\"p\",reason=\"missing\"}"),
        1.0
    );
    // Either the connect failed, or the health check had already taken the peer out.
    assert!(
        delta("gateway_upstream_errors_total{kind=\"connect\",pool=\"dead\"}")
            + delta("gateway_upstream_errors_total{kind=\"no_healthy_peer\",pool=\"dead\"}")
            >= 1.0
    );
    assert!(
        get(
            &after,
            "gateway_certificate_not_after_seconds{name=\"test\"}"
        ) > 1.7e9
    );
    assert!(get(&after, "gateway_tls_handshakes_total{version=\"TLSv1.3\"}") >= 1.0);
    assert!(get(&after, "process_resident_memory_bytes") > 0.0);
    assert_eq!(get(&after, "gateway_config_generation"), 1.0);
    // Reload counters exist at 0 before any reload (so `increase()` sees the first one).
    for result in ["success", "failure"] {
        let series = format!("gateway_config_reloads_total{{result=\"{result}\"}}");
        assert_eq!(after.get(&series), Some(&0.0), "{series}");
    }
    // Label values come only from config: no path ever becomes a label.
    assert!(after
        .keys()
        .all(|k| !k.contains("/nowhere") && !k.contains("/api/a")));

    // Access log: one valid JSON line per request, with the response's request id.
    let t = Instant::now();
    let lines = loop {
        let text = std::fs::read_to_string(dir.path().join("access.log")).expect("access log");
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        if lines.len() >= plan.len() || t.elapsed() > Duration::from_secs(3) {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for (rid, (path, _, status)) in ids.iter().zip(&plan) {
        let line = lines
            .iter()
            .find(|l| l["request_id"] == rid.as_str())
            .unwrap_or_else(|| panic!("no line for {path}"));
        assert_eq!(line["status"], *status);
        assert_eq!(line["path"], *path);
        assert_eq!(line["method"], "GET");
        assert_eq!(line["tls_version"], "TLSv1.3");
        for key in [
            "ts",
            "client_ip",
            "host",
            "bytes_sent",
            "duration_ms",
            "http_version",
        ] {
            assert!(!line[key].is_null(), "{key} missing: {line}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_pool_is_reported_but_keeps_the_gateway_ready() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    let port = free_port();
    let ports = Ports::new();
    let site = dir.path().join("site");
    std::fs::create_dir_all(&site).expect("site");
    std::fs::write(site.join("index.html"), "<title>app</title>").expect("index");
    let conf = format!(
        "{}{}{}
[[routes]]
name = \"api\"\nprefix = \"/api\"\nkind = \"proxy\"\nupstream = \"backend\"\n\
         [[routes]]\nname = \"web\"\nprefix = \"/\"\nkind = \"static\"\nroot = \"{}\"\n",
        ports.sections(dir.path()),
        tls_section(&certs),
        pool("backend", &[format!("127.0.0.1:{port}")], ""),
        site.display()
    );
    let gw = start_gateway(dir.path(), &ports, &conf, &certs.ca_pem);
    let readiness = || async {
        let r = reqwest::get(gw.admin_url("/readyz")).await.expect("readyz");
        let status = r.status().as_u16();
        (status, r.json::<Value>().await.expect("json"))
    };
    let healthy =
        format!("gateway_upstream_peer_healthy{{peer=\"127.0.0.1:{port}\",pool=\"backend\"}}");
    // The backend is down: the pool is reported (body and metric), the gateway stays ready
    // and keeps serving the SPA while /api answers a JSON 502.
    let t = Instant::now();
    loop {
        let (status, v) = readiness().await;
        assert_eq!(
            status, 200,
            "a down backend must not make the gateway unready: {v}"
        );
        if v["pools_down"][0] == "backend" {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "never reported the dead pool: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get(&scrape(&gw).await, &healthy), 0.0);
    assert_eq!(gw.get_status("/").await, 200);
    assert_eq!(gw.get_status("/api/x").await, 502);
    // The peer comes up: listed no more within a couple of health-check intervals.
    let _backend = serve_recorded_at(recording_router(), &format!("127.0.0.1:{port}")).await;
    let t = Instant::now();
    loop {
        let (status, v) = readiness().await;
        assert_eq!(status, 200);
        if v["pools_down"].as_array().is_some_and(|a| a.is_empty()) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "pool never came back: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get(&scrape(&gw).await, &healthy), 1.0);
    assert_eq!(gw.get_status("/api/x").await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_connections_are_counted_while_they_live() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    let ports = Ports::new();
    let conf = format!("{}{}", ports.sections(dir.path()), tls_section(&certs));
    let gw = start_gateway(dir.path(), &ports, &conf, &certs.ca_pem);
    let open = || async {
        get(
            &scrape(&gw).await,
            "gateway_open_connections{listener=\"https\"}",
        )
    };
    let before = open().await;
    let clients: Vec<reqwest::Client> = (0..3)
        .map(|_| gw.client_builder().http1_only().build().expect("c"))
        .collect();
    for c in &clients {
        let _ = c.get(gw.url("/x")).send().await.expect("req");
    }
    assert_eq!(open().await - before, 3.0);
    drop(clients);
    let t = Instant::now();
    while open().await != before {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "closed connections still counted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The served process has transparent huge pages off (mimalloc would otherwise make every
/// touched 2 MiB of heap resident: 43 MiB idle instead of 18).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_process_runs_without_transparent_huge_pages() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    let root = dir.path().join("site");
    std::fs::create_dir_all(&root).expect("mkdir");
    std::fs::write(root.join("index.html"), "hi").expect("index");
    let ports = Ports::new();
    let conf = static_site_conf(dir.path(), &ports, &certs, &root, "");
    let gw = start_gateway(dir.path(), &ports, &conf, &certs.ca_pem);
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", gw.child.id())).expect("status");
    let line = status
        .lines()
        .find(|l| l.starts_with("THP_enabled:"))
        .expect("THP_enabled line (Linux >= 5.0)");
    assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
    assert_eq!(gw.get_status("/").await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_responses_are_counted_by_status_class_and_encoding() {
    let dir = tempfile::tempdir().expect("tmp");
    let root = crate::static_files::make_root(dir.path());
    let certs = TestCerts::new(dir.path());
    let ports = Ports::new();
    let conf = static_site_conf(dir.path(), &ports, &certs, &root, "");
    let gw = start_gateway(dir.path(), &ports, &conf, &certs.ca_pem);
    let c = gw.raw_client();
    let mut etag = String::new();
    for (enc, want) in [
        ("br", 200),
        ("br", 200),
        ("gzip", 200),
        ("identity", 200),
        ("br", 304),
    ] {
        let mut req = c
            .get(gw.url("/assets/app.0123abcd.js"))
            .header("accept-encoding", enc);
        if want == 304 {
            req = req.header("if-none-match", &etag);
        }
        let r = req.send().await.expect("get");
        assert_eq!(r.status(), want, "{enc}");
        if enc == "br" {
            // Each encoding has its own validator.
            etag = r.headers()["etag"].to_str().expect("etag").to_string();
        }
    }
    // Not a static response: counted with the route's requests, not here.
    let r = c
        .get(gw.url("/assets/missing.0123abcd.js"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 404);
    let m = scrape(&gw).await;
    let series = |status: &str, enc: &str| {
        get(
            &m,
            &format!(
                "gateway_static_responses_total{{encoding=\"{enc}\",route=\"web\",status=\"{status}\"}}"
            ),
        )
    };
    assert_eq!(series("2xx", "br"), 2.0);
    assert_eq!(series("2xx", "gzip"), 1.0);
    assert_eq!(series("2xx", "identity"), 1.0);
    assert_eq!(series("3xx", "br"), 1.0);
    // Series appear on first use only.
    let statics = m
        .keys()
        .filter(|k| k.starts_with("gateway_static_responses_total"))
        .count();
    assert_eq!(statics, 4);
}
