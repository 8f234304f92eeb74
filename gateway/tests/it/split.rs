//! Traffic split between pools: weights, pins, the signed sticky cookie (curl over HTTP/1.1
//! and HTTP/2), failover, a live 0 → 100 shift under load, metrics by pool, and every bad
//! split refused by `gateway check` at its position.

use crate::harness::*;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEY: &str = "0123456789abcdef0123456789abcdef-sticky\n";

/// A config with pools `blue` and `green` and route `api` over them, `split` being the
/// route's extra keys (`upstreams`, `pin`, `sticky`).
fn conf(
    dir: &Path,
    ports: &Ports,
    certs: &TestCerts,
    blue: SocketAddr,
    green: SocketAddr,
    split: &str,
) -> String {
    format!(
        "{}{}{}{}\n[[routes]]\nname = \"api\"\nprefix = \"/api\"\nkind = \"proxy\"\n{split}\n",
        ports.sections(dir),
        tls_section(certs),
        pool("blue", &[blue.to_string()], ""),
        pool("green", &[green.to_string()], ""),
    )
}

fn weights(blue: u32, green: u32) -> String {
    format!(
        "upstreams = [{{ pool = \"blue\", weight = {blue} }}, {{ pool = \"green\", weight = {green} }}]"
    )
}

fn count(log: &Log) -> usize {
    log.lock().expect("log").len()
}

struct Setup {
    dir: tempfile::TempDir,
    certs: TestCerts,
    ports: Ports,
    blue: (SocketAddr, Log),
    green: (SocketAddr, Log),
}

/// A backend answering 200, and 500 on `/api/boom`.
fn colour_router() -> axum::Router {
    recording_router().route(
        "/api/boom",
        axum::routing::any(|| async { (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
    )
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    std::fs::write(dir.path().join("sticky.key"), KEY).expect("key");
    Setup {
        blue: serve_recorded(colour_router()).await,
        green: serve_recorded(colour_router()).await,
        ports: Ports::new(),
        certs,
        dir,
    }
}

impl Setup {
    fn conf(&self, split: &str) -> String {
        conf(
            self.dir.path(),
            &self.ports,
            &self.certs,
            self.blue.0,
            self.green.0,
            split,
        )
    }

    async fn start(&self, split: &str) -> Gateway {
        let gw = start_gateway(
            self.dir.path(),
            &self.ports,
            &self.conf(split),
            &self.certs.ca_pem,
        );
        gw.wait_ready().await;
        gw
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_split_requests_exactly_and_are_counted_by_pool() {
    let s = setup().await;
    let gw = s.start(&weights(3, 1)).await;
    let c = gw.client();
    for _ in 0..40 {
        let r = c.get(gw.url("/api/x")).send().await.expect("get");
        assert_eq!(r.status(), 200);
        assert!(
            r.headers().get("set-cookie").is_none(),
            "no sticky: no cookie"
        );
    }
    let (b, g) = (count(&s.blue.1), count(&s.green.1));
    assert_eq!(b + g, 40);
    // A low-discrepancy sequence: 3:1 over 40 requests is 30/10, give or take one.
    assert!((29..=31).contains(&b), "blue {b}, green {g}");
    // Prometheus writes labels in name order.
    let green_2xx = "gateway_pool_requests_total{pool=\"green\",route=\"api\",status=\"2xx\"}";
    assert_eq!(metric(&gw, green_2xx).await, g as f64);
    let blue_by_weight = "gateway_split_decisions_total{by=\"weight\",pool=\"blue\",route=\"api\"}";
    assert_eq!(metric(&gw, blue_by_weight).await, b as f64);
    // The access log is flushed off the request path: wait for it.
    let t = Instant::now();
    loop {
        let access = std::fs::read_to_string(s.dir.path().join("access.log")).unwrap_or_default();
        if access.contains("\"route\":\"api\",\"pool\":\"green\"") {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "{access}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_reaches_a_pool_at_weight_zero_and_only_it() {
    let s = setup().await;
    let split = format!(
        "{}\npin = [{{ header = \"x-canary\", value = \"1\", pool = \"green\" }}, {{ cookie = \"canary\", pool = \"green\" }}]",
        weights(1, 0)
    );
    let gw = s.start(&split).await;
    let c = gw.client();
    for _ in 0..5 {
        assert_eq!(
            c.get(gw.url("/api/a")).send().await.expect("get").status(),
            200
        );
    }
    assert_eq!((count(&s.blue.1), count(&s.green.1)), (5, 0));
    for (name, value) in [("x-canary", "1"), ("cookie", "theme=dark; canary=yes")] {
        let r = c
            .get(gw.url("/api/b"))
            .header(name, value)
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 200);
    }
    // A pin is not an assignment: nothing sticky is set, and x-canary: 0 is no pin.
    let r = c
        .get(gw.url("/api/c"))
        .header("x-canary", "0")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    assert_eq!((count(&s.blue.1), count(&s.green.1)), (6, 2));
    assert_eq!(
        metric(
            &gw,
            "gateway_split_decisions_total{by=\"pin\",pool=\"green\",route=\"api\"}"
        )
        .await,
        2.0
    );
}

/// curl over `version` with `args`; returns (status, the `gw_pool=…` pair of Set-Cookie).
fn curl(
    gw: &Gateway,
    ca: &Path,
    version: &str,
    args: &[&str],
    path: &str,
) -> (String, Option<String>) {
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-D", "-", version, "--cacert"])
        .arg(ca)
        .args(["--resolve", &format!("localhost:{}:127.0.0.1", gw.https)])
        .args(args)
        .arg(gw.url(path))
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let head = String::from_utf8_lossy(&out.stdout).to_string();
    let status = head.split_whitespace().nth(1).unwrap_or("").to_string();
    let cookie = head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case("set-cookie")
            .then(|| v.trim().split(';').next().unwrap_or("").to_string())
    });
    if let Some(line) = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie"))
    {
        assert!(
            line.contains("Path=/api; Max-Age=600; Secure; HttpOnly; SameSite=Lax"),
            "{line}"
        );
    }
    (status, cookie)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_sticky_cookie_keeps_a_browser_on_its_colour_over_h1_and_h2() {
    let s = setup().await;
    let split = format!(
        "{}\nsticky = {{ key_file = \"{}\", max_age_seconds = 600 }}",
        weights(1, 1),
        s.dir.path().join("sticky.key").display()
    );
    let gw = s.start(&split).await;
    let ca = s.dir.path().join("ca.pem");
    std::fs::write(&ca, &s.certs.ca_pem).expect("ca");
    for version in ["--http1.1", "--http2"] {
        // A first answer that is a 5xx assigns nothing: no browser is kept on a failing colour.
        let (status, cookie) = curl(&gw, &ca, version, &[], "/api/boom");
        assert_eq!((status.as_str(), cookie), ("500", None));
        // Two fresh clients: the weights give them one colour each.
        let mut pairs = Vec::new();
        for _ in 0..2 {
            let (status, cookie) = curl(&gw, &ca, version, &[], "/api/sticky");
            assert_eq!(status, "200");
            pairs.push(cookie.expect("a new client is assigned with a cookie"));
        }
        assert_ne!(pairs[0], pairs[1], "1:1 weights: one client per colour");
        for pair in &pairs {
            let (blue, green) = (count(&s.blue.1), count(&s.green.1));
            for _ in 0..4 {
                let (status, cookie) = curl(
                    &gw,
                    &ca,
                    version,
                    &["-H", &format!("cookie: {pair}")],
                    "/api/sticky",
                );
                assert_eq!((status.as_str(), cookie), ("200", None), "kept, not re-set");
            }
            let on_green = pair.starts_with("gw_pool=green.");
            let moved = if on_green {
                (count(&s.blue.1) - blue, count(&s.green.1) - green)
            } else {
                (count(&s.green.1) - green, count(&s.blue.1) - blue)
            };
            assert_eq!(moved, (0, 4), "{pair}: every request on its colour");
        }
        // A forged cookie (green's name with blue's tag) chooses nothing: a new assignment.
        let blue_tag = pairs
            .iter()
            .find(|p| p.starts_with("gw_pool=blue."))
            .and_then(|p| p.rsplit_once('.'))
            .map(|(_, t)| t.to_string())
            .expect("blue tag");
        let forged = format!("cookie: gw_pool=green.{blue_tag}");
        let (status, cookie) = curl(&gw, &ca, version, &["-H", &forged], "/api/sticky");
        assert_eq!(status, "200");
        assert!(
            cookie.is_some(),
            "forged cookie ignored, client re-assigned"
        );
    }
    assert!(
        metric(
            &gw,
            "gateway_split_decisions_total{by=\"sticky\",pool=\"blue\",route=\"api\"}"
        )
        .await
            >= 8.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_without_a_healthy_peer_fails_over_to_the_other_colour() {
    let s = setup().await;
    // Blue's only peer refuses connections.
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let split = format!(
        "{}\npin = [{{ header = \"x-canary\", value = \"blue\", pool = \"blue\" }}]",
        weights(1, 1)
    );
    let text = conf(s.dir.path(), &s.ports, &s.certs, dead, s.green.0, &split)
        .replace("[upstreams.blue]", "[upstreams.blue]\nretries = 1");
    let gw = start_gateway(s.dir.path(), &s.ports, &text, &s.certs.ca_pem);
    let c = gw.client();
    for _ in 0..10 {
        let r = c.get(gw.url("/api/f")).send().await.expect("get");
        assert_eq!(r.status(), 200);
    }
    assert_eq!(count(&s.green.1), 10);
    // A pinned request stays pinned: a tester of blue sees blue's failure, not green's answer.
    let r = c
        .get(gw.url("/api/f"))
        .header("x-canary", "blue")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 502);
    assert_eq!(count(&s.green.1), 10);
    assert!(
        metric(
            &gw,
            "gateway_split_decisions_total{by=\"failover\",pool=\"green\",route=\"api\"}"
        )
        .await
            >= 4.0
    );
    // One colour is healthy: the route can be served, so the gateway stays ready.
    let r = reqwest::get(gw.admin_url("/readyz")).await.expect("readyz");
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shifting_weights_from_blue_to_green_under_load_fails_no_request() {
    let s = setup().await;
    let file = s.dir.path().join("gateway.toml");
    let gw = s.start(&weights(100, 0)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let tasks = load(&gw, stop.clone(), ok.clone(), failed.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut generation = admin_config(&gw).await["generation"].as_u64().expect("gen");
    for green in [0u32, 25, 50, 75, 100] {
        write_atomic(&file, &s.conf(&weights(100 - green, green)));
        let (status, body) = admin_reload(&gw).await;
        assert_eq!(status, 200, "{body}");
        let t = Instant::now();
        while admin_config(&gw).await["generation"].as_u64().expect("gen") <= generation {
            assert!(
                t.elapsed() < Duration::from_secs(2),
                "weights {green} not applied"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let cfg = admin_config(&gw).await;
        generation = cfg["generation"].as_u64().expect("gen");
        // The reload says what moved (the first step rewrites the same weights).
        let want = if green == 0 {
            "no changes".to_string()
        } else {
            let prev = green - 25;
            format!(
                "route api: weights blue {} → {}, green {prev} → {green}",
                100 - prev,
                100 - green
            )
        };
        let lines = cfg["changes"]["lines"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            lines.iter().any(|l| l == want.as_str()),
            "{want} not in {cfg}"
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("task");
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "failed requests");
    assert!(
        ok.load(Ordering::Relaxed) > 100,
        "load ran: {}",
        ok.load(Ordering::Relaxed)
    );
    // At 100 % green, blue takes nothing more.
    let blue = count(&s.blue.1);
    let c = gw.client();
    for _ in 0..20 {
        assert_eq!(
            c.get(gw.url("/api/after"))
                .send()
                .await
                .expect("get")
                .status(),
            200
        );
    }
    assert_eq!(count(&s.blue.1), blue);
    assert!(blue > 0 && count(&s.green.1) > 20);
}

#[test]
fn bad_splits_are_refused_at_their_position() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    let ports = Ports::new();
    let a: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let key = dir.path().join("sticky.key");
    std::fs::write(&key, "short\n").expect("key");
    let cases = [
        (
            weights(0, 0),
            "the weights of `upstreams` sum to 0; give at least one pool a weight above 0",
        ),
        (
            "upstreams = [{ pool = \"blue\" }, { pool = \"purple\", weight = 1 }]".to_string(),
            "upstream `purple` is not defined in [upstreams]",
        ),
        (
            format!("upstream = \"blue\"\n{}", weights(1, 1)),
            "`upstream` and `upstreams` exclude each other",
        ),
        (
            "upstreams = []".to_string(),
            "`upstreams` is empty; name at least one pool",
        ),
        (
            "upstreams = [{ pool = \"blue\" }, { pool = \"blue\" }]".to_string(),
            "pool `blue` is listed twice in `upstreams`",
        ),
        (
            format!(
                "{}\npin = [{{ header = \"x-canary\", pool = \"red\" }}]",
                weights(1, 1)
            ),
            "pin pool `red` is not one of the route's `upstreams`",
        ),
        (
            format!(
                "{}\npin = [{{ header = \"x-c\", cookie = \"c\", pool = \"green\" }}]",
                weights(1, 1)
            ),
            "a pin needs exactly one of `header` and `cookie`",
        ),
        (
            format!(
                "{}\npin = [{{ header = \"bad header\", pool = \"green\" }}]",
                weights(1, 1)
            ),
            "pin header `bad header` is not a valid header name",
        ),
        (
            "upstream = \"blue\"\npin = [{ header = \"x-canary\", pool = \"blue\" }]".to_string(),
            "`pin` needs several pools in `upstreams`",
        ),
        (
            format!(
                "{}\nsticky = {{ key_file = \"{}\" }}",
                weights(1, 1),
                key.display()
            ),
            "the first line must be a key of at least 32 bytes",
        ),
        (
            format!(
                "{}\nsticky = {{ key_file = \"missing.key\" }}",
                weights(1, 1)
            ),
            "missing.key: No such file or directory",
        ),
        (
            format!(
                "{}\nsticky = {{ key_file = \"{}\", cookie = \"a b\" }}",
                weights(1, 1),
                key.display()
            ),
            "sticky cookie `a b` is not a valid cookie name",
        ),
        (
            format!("{}\nsticky = {{ key_file = \"{}\", max_age_seconds = 0 }}", weights(1, 1), key.display()),
            "sticky max_age_seconds must be above 0",
        ),
        (
            format!("{}\npin = [{{ header = \"x-canary\", value = \" \", pool = \"green\" }}]", weights(1, 1)),
            "pin `value` is empty; leave it out to match any value",
        ),
        (
            format!("{}\npin = [{{ header = \"X-Auth-Subject\", pool = \"green\" }}]", weights(1, 1)),
            "pin header `x-auth-subject` is an identity header, stripped from every request: it can never match",
        ),
        (
            String::new(),
            "a proxy route needs `upstream` or `upstreams`",
        ),
    ];
    for (split, want) in cases {
        let text = conf(dir.path(), &ports, &certs, a, a, &split);
        let file = dir.path().join("gateway.toml");
        std::fs::write(&file, &text).expect("write");
        let (ok, out) = check(&file);
        assert!(!ok, "{split}: accepted");
        let line = out
            .lines()
            .find(|l| l.contains(want))
            .unwrap_or_else(|| panic!("{split}: no `{want}` in\n{out}"));
        // file:line:column of the key that is wrong, on the route's lines.
        let at = line.split(": ").next().expect("position");
        let mut parts = at.rsplitn(3, ':');
        let (col, row) = (parts.next().expect("col"), parts.next().expect("line"));
        let row: usize = row.parse().unwrap_or_else(|_| panic!("{line}"));
        let col: usize = col.parse().unwrap_or_else(|_| panic!("{line}"));
        assert_eq!(parts.next(), Some(file.to_str().expect("utf-8")), "{line}");
        assert!(line.contains("route `api`: "), "{line}");
        let lines: Vec<&str> = text.lines().collect();
        let route_line = lines
            .iter()
            .position(|l| *l == "name = \"api\"")
            .expect("route")
            + 1;
        if split.is_empty() {
            // No pool key at all: the route itself, from its `[[routes]]` header.
            assert!((route_line - 1..=route_line).contains(&row), "{line}");
            continue;
        }
        // The line of the key at fault, and the column of its value (or of the element in it).
        let key =
            if want.contains("sticky") || want.contains("32 bytes") || want.contains("missing.key")
            {
                "sticky ="
            } else if want.contains("pin") {
                "pin ="
            } else {
                "upstreams ="
            };
        let want_row = route_line
            + lines[route_line..]
                .iter()
                .position(|l| l.starts_with(key))
                .expect("key")
            + 1;
        assert_eq!(row, want_row, "{line}: not on `{key}`");
        let at = lines[row - 1].as_bytes()[col - 1];
        assert!(
            matches!(at, b'[' | b'{' | b'"'),
            "{line}: column {col} is not a value's start"
        );
    }
}

#[test]
fn the_dry_run_shows_the_pool_a_pin_or_the_weights_decide() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    let a: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let split = format!(
        "{}\npin = [{{ header = \"x-canary\", value = \"1\", pool = \"green\" }}]",
        weights(90, 10)
    );
    let file = dir.path().join("gateway.toml");
    std::fs::write(&file, conf(dir.path(), &Ports::new(), &certs, a, a, &split)).expect("conf");
    let requests = dir.path().join("requests.txt");
    std::fs::write(
        &requests,
        "GET https://localhost/api/x x-canary=1 expect pool=green\n\
         GET https://localhost/api/x expect pool=blue,green\n",
    )
    .expect("requests");
    let run = |extra: &[&str]| {
        Command::new(gateway_bin())
            .args(["check", "-c"])
            .arg(&file)
            .arg("--requests")
            .arg(&requests)
            .args(extra)
            .output()
            .expect("gateway check --requests")
    };
    let out = run(&["--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let pools = |i: usize| v[i]["upstream"]["pools"].clone();
    assert_eq!(
        pools(0),
        serde_json::json!([{ "name": "green", "by": "pin" }])
    );
    assert_eq!(
        pools(1),
        serde_json::json!([
            { "name": "blue", "weight": 90, "by": "weight" },
            { "name": "green", "weight": 10, "by": "weight" }
        ])
    );
    let table = String::from_utf8_lossy(&run(&[]).stdout).into_owned();
    assert!(
        table.contains("pool blue (weight 90), green (weight 10) by weight"),
        "{table}"
    );
    assert!(table.contains("pool green by pin"), "{table}");
}
