//! Rate limiting through the real gateway: burst, 429 headers, recovery, keys, reload.

use crate::harness::*;
use std::net::IpAddr;
use std::time::Duration;

fn conf(
    dir: &std::path::Path,
    ports: &Ports,
    certs: &TestCerts,
    backend: &str,
    extra: &str,
    route_extra: &str,
) -> String {
    format!(
        "{}{}{}\n[rate_limits.per_ip]\nkey = \"client_ip\"\nquota = 1\nper = \"second\"\nburst = 2\n{extra}\n\
         [[routes]]\nname = \"api\"\nprefix = \"/api\"\nkind = \"proxy\"\nupstream = \"backend\"\n{route_extra}\n",
        ports.sections(dir),
        tls_section(certs),
        pool("backend", &[backend.to_string()], "")
    )
}

/// A gateway with [`conf`] over a recording backend. Fields drop in order: the gateway stops
/// before its directory goes.
struct Started {
    gw: Gateway,
    seen: Log,
    text: String,
    dir: tempfile::TempDir,
}

async fn start(extra: &str, route_extra: &str) -> Started {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    let (backend, seen) = recording_backend().await;
    let ports = Ports::new();
    let text = conf(
        dir.path(),
        &ports,
        &certs,
        &backend.to_string(),
        extra,
        route_extra,
    );
    let gw = start_gateway(dir.path(), &ports, &text, &certs.ca_pem);
    Started {
        gw,
        seen,
        text,
        dir,
    }
}

fn client_from(gw: &Gateway, ip: &str) -> reqwest::Client {
    gw.client_builder()
        .local_address(ip.parse::<IpAddr>().expect("ip"))
        .build()
        .expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_then_429_with_headers_then_recovery_and_per_source_buckets() {
    let t = start("", "rate_limits = [\"per_ip\"]").await;
    let gw = &t.gw;
    let a = client_from(gw, "127.0.0.2");
    for left in [1, 0] {
        let r = a.get(gw.url("/api/x")).send().await.expect("req");
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["ratelimit-policy"], "\"per_ip\";q=1;w=1");
        assert!(r.headers()["ratelimit"]
            .to_str()
            .expect("h")
            .starts_with(&format!("\"per_ip\";r={left};t=")));
    }
    let r = a.get(gw.url("/api/x")).send().await.expect("req");
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(r.headers()["ratelimit"], "\"per_ip\";r=0;t=1");
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["error"], "rate_limited");
    assert_eq!(v["retry_after"], 1);
    assert_eq!(
        t.seen.lock().expect("log").len(),
        2,
        "the limited request never reached the backend"
    );

    // Another source address has its own bucket; a forged X-Forwarded-For from an untrusted
    // peer changes nothing.
    let b = client_from(gw, "127.0.0.3");
    assert_eq!(
        b.get(gw.url("/api/x")).send().await.expect("b").status(),
        200
    );
    let r = a
        .get(gw.url("/api/x"))
        .header("X-Forwarded-For", "198.51.100.1")
        .send()
        .await
        .expect("forged");
    assert_eq!(r.status(), 429);

    // After Retry-After, requests pass again.
    tokio::time::sleep(Duration::from_millis(1050)).await;
    assert_eq!(
        a.get(gw.url("/api/x"))
            .send()
            .await
            .expect("again")
            .status(),
        200
    );
    assert!(
        metric(
            gw,
            "gateway_rate_limit_decisions_total{policy=\"per_ip\",result=\"limited\"}"
        )
        .await
            >= 2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxy_forwarded_for_picks_the_bucket() {
    let t = start(
        "[client_ip]\ntrusted_proxies = [\"127.0.0.0/8\"]\n",
        "rate_limits = [\"per_ip\"]",
    )
    .await;
    let gw = &t.gw;
    let c = gw.client();
    for _ in 0..2 {
        let r = c
            .get(gw.url("/api/x"))
            .header("X-Forwarded-For", "198.51.100.1")
            .send()
            .await
            .expect("r");
        assert_eq!(r.status(), 200);
    }
    let r = c
        .get(gw.url("/api/x"))
        .header("X-Forwarded-For", "198.51.100.1")
        .send()
        .await
        .expect("r");
    assert_eq!(r.status(), 429);
    let r = c
        .get(gw.url("/api/x"))
        .header("X-Forwarded-For", "198.51.100.2")
        .send()
        .await
        .expect("r");
    assert_eq!(
        r.status(),
        200,
        "a different client behind the trusted proxy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_divide_the_quota_and_the_headers_say_this_replicas_share() {
    let t = start(
        "[rate_limits.split]\nkey = \"client_ip\"\nquota = 4\nper = \"minute\"\nreplicas = 2\n",
        "rate_limits = [\"split\"]",
    )
    .await;
    let gw = &t.gw;
    let c = gw.client();
    for _ in 0..2 {
        let r = c.get(gw.url("/api/x")).send().await.expect("r");
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["ratelimit-policy"], "\"split\";q=2;w=60");
    }
    let r = c.get(gw.url("/api/x")).send().await.expect("r");
    assert_eq!(r.status(), 429, "4 a minute over 2 replicas is 2 here");
    assert_eq!(r.headers()["ratelimit-policy"], "\"split\";q=2;w=60");
    assert_eq!(
        metric(gw, "gateway_rate_limit_replicas{policy=\"split\"}").await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_with_an_unrelated_change_keeps_counters() {
    let t = start("", "rate_limits = [\"per_ip\"]").await;
    let gw = &t.gw;
    let c = gw.client();
    for _ in 0..2 {
        assert_eq!(
            c.get(gw.url("/api/x")).send().await.expect("r").status(),
            200
        );
    }
    write_atomic(
        &t.dir.path().join("gateway.toml"),
        &t.text.replace("[tls]", "[tls]\nhsts_max_age = 77"),
    );
    let (status, body) = admin_reload(gw).await;
    assert_eq!(status, 200, "{body}");
    let r = c.get(gw.url("/api/x")).send().await.expect("r");
    assert_eq!(
        r.headers()["strict-transport-security"],
        "max-age=77",
        "reload applied"
    );
    assert_eq!(r.status(), 429, "the bucket survived the reload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_behind_one_address_have_separate_subject_quotas() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    let (backend, _) = recording_backend().await;
    let secret = [9u8; 32];
    std::fs::write(dir.path().join("secret"), secret).expect("secret");
    let ports = Ports::new();
    let extra = format!(
        "[rate_limits.per_user]\nkey = \"subject\"\nquota = 1\nper = \"minute\"\nburst = 1\n\
         [jwt_providers.p]\nissuer = \"i\"\naudiences = [\"a\"]\nalgorithms = [\"HS256\"]\nsecret_file = \"{}\"\n",
        dir.path().join("secret").display()
    );
    let text = conf(
        dir.path(),
        &ports,
        &certs,
        &backend.to_string(),
        &extra,
        "auth = \"jwt\"\nauth_provider = \"p\"\nrate_limits = [\"per_user\"]",
    );
    let gw = start_gateway(dir.path(), &ports, &text, &certs.ca_pem);
    let token = |sub: &str| {
        let exp = time::OffsetDateTime::now_utc().unix_timestamp() + 300;
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"iss": "i", "aud": "a", "sub": sub, "exp": exp}),
            &EncodingKey::from_secret(&secret),
        )
        .expect("sign")
    };
    let c = gw.client();
    let (ann, bob) = (token("ann"), token("bob"));
    assert_eq!(
        c.get(gw.url("/api/x"))
            .bearer_auth(&ann)
            .send()
            .await
            .expect("r")
            .status(),
        200
    );
    assert_eq!(
        c.get(gw.url("/api/x"))
            .bearer_auth(&ann)
            .send()
            .await
            .expect("r")
            .status(),
        429
    );
    assert_eq!(
        c.get(gw.url("/api/x"))
            .bearer_auth(&bob)
            .send()
            .await
            .expect("r")
            .status(),
        200
    );
}

/// Policy `shared`: `quota` a minute with `burst`, counted in the Redis on `rport`, local
/// fallback.
fn shared_policy(rport: u16, quota: u32, burst: u32) -> String {
    format!(
        "[rate_limits.shared]\nkey = \"client_ip\"\nquota = {quota}\nper = \"minute\"\nburst = {burst}\n\
         store = \"redis\"\nredis_url = \"redis://127.0.0.1:{rport}\"\non_store_error = \"local\"\n"
    )
}

/// A throwaway redis-server on a given port (no persistence), killed on drop.
struct Redis(std::process::Child);

impl Redis {
    fn start(port: u16) -> Self {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server) must be installed");
        let t = std::time::Instant::now();
        while !accepts(&format!("127.0.0.1:{port}")) {
            assert!(t.elapsed() < Duration::from_secs(10), "redis did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Redis(child)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_one_quota_in_redis_and_fall_back_when_it_is_down() {
    let rport = free_port();
    let redis = Redis::start(rport);
    let (backend, _) = recording_backend().await;
    let policy = shared_policy(rport, 1, 3);
    let mut gws = Vec::new();
    let mut dirs = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().expect("tmp");
        let certs = TestCerts::new(dir.path());
        let ports = Ports::new();
        let text = conf(
            dir.path(),
            &ports,
            &certs,
            &backend.to_string(),
            &policy,
            "rate_limits = [\"shared\"]",
        );
        gws.push(start_gateway(dir.path(), &ports, &text, &certs.ca_pem));
        dirs.push(dir);
    }
    let status = |i: usize| {
        let gw = &gws[i];
        let (c, url) = (gw.client(), gw.url("/api/x"));
        async move { c.get(url).send().await.expect("req").status().as_u16() }
    };
    // One quota of 3 across both replicas.
    assert_eq!(status(0).await, 200);
    assert_eq!(status(1).await, 200);
    assert_eq!(status(0).await, 200);
    assert_eq!(status(1).await, 429);
    assert_eq!(status(0).await, 429);

    // Redis down: each gateway falls back to its own (fresh) in-process bucket.
    drop(redis);
    assert_eq!(status(0).await, 200, "local fallback");
    assert!(
        metric(
            &gws[0],
            "gateway_rate_limit_store_errors_total{policy=\"shared\"}"
        )
        .await
            >= 1.0
    );

    // Redis back (empty): shared limiting again, across replicas.
    let _redis = Redis::start(rport);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let t = std::time::Instant::now();
    loop {
        // Requests that still hit the fallback while reconnecting are fine; wait for Redis.
        let before = metric(
            &gws[1],
            "gateway_rate_limit_store_errors_total{policy=\"shared\"}",
        )
        .await;
        let s = status(1).await;
        let after = metric(
            &gws[1],
            "gateway_rate_limit_store_errors_total{policy=\"shared\"}",
        )
        .await;
        if s == 200 && before == after {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "never reconnected to redis"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(status(0).await, 200);
    assert_eq!(status(0).await, 200);
    assert_eq!(status(1).await, 429, "shared quota restored");
}

/// Sequential requests through `gw`: how many took longer than `limit`.
async fn slower_than(gw: &Gateway, n: usize, limit: Duration) -> usize {
    let c = gw.client();
    let mut slow = 0;
    for _ in 0..n {
        let t = std::time::Instant::now();
        let s = c.get(gw.url("/api/x")).send().await.expect("req").status();
        assert_eq!(s, 200, "the local fallback serves");
        if t.elapsed() > limit {
            slow += 1;
        }
    }
    slow
}

/// Waits until a request is decided by Redis again (no store error counted for it).
async fn wait_store_back(gw: &Gateway) {
    let series = "gateway_rate_limit_store_errors_total{policy=\"shared\"}";
    let t = std::time::Instant::now();
    loop {
        let before = metric(gw, series).await;
        let s = gw.get_status("/api/x").await;
        if s == 200 && metric(gw, series).await == before {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "Redis never used again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Rate-limit script calls this Redis process has answered.
fn redis_script_calls(port: u16) -> u64 {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "INFO", "commandstats"])
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_or_stopped_redis_costs_at_most_one_timeout_then_sharing_resumes() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let rport = free_port();
    let redis = Redis::start(rport);
    let (backend, _) = recording_backend().await;
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    let ports = Ports::new();
    let policy = shared_policy(rport, 100_000, 100_000);
    let text = conf(
        dir.path(),
        &ports,
        &certs,
        &backend.to_string(),
        &policy,
        "rate_limits = [\"shared\"]",
    );
    let gw = Arc::new(start_gateway(dir.path(), &ports, &text, &certs.ca_pem));
    wait_store_back(&gw).await;
    assert!(redis_script_calls(rport) > 0, "decided in Redis");
    // Background load on other connections for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..3 {
        let (gw, stop) = (gw.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let c = gw.client();
            while !stop.load(Ordering::Relaxed) {
                let _ = c.get(gw.url("/api/load")).send().await;
            }
        }));
    }
    // The store's own bound (rate_limit::store::STORE_TIMEOUT) plus room for a slow debug build.
    let limit = Duration::from_millis(250);

    // Frozen: the connection stays open, nothing answers.
    let pid = redis.0.id().to_string();
    let signal = |sig: &str| {
        std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill");
    };
    signal("-STOP");
    // Before the breaker every request waited the store timeout (50 of 50); now only a request
    // in flight when Redis froze may (a little room for a loaded CI machine).
    let slow = slower_than(&gw, 50, limit).await;
    assert!(slow <= 3, "{slow} of 50 requests waited on a frozen Redis");
    signal("-CONT");
    wait_store_back(&gw).await;

    // Stopped: connections refused.
    drop(redis);
    let slow = slower_than(&gw, 50, limit).await;
    assert!(slow <= 3, "{slow} of 50 requests waited on a stopped Redis");

    // Restarted (empty): the probe reconnects and quotas are shared again.
    let _redis = Redis::start(rport);
    wait_store_back(&gw).await;
    assert!(redis_script_calls(rport) > 0, "decided in the new Redis");
    stop.store(true, Ordering::Relaxed);
    for l in load {
        let _ = l.await;
    }
    let log = std::fs::read_to_string(dir.path().join("gateway.log")).expect("log");
    assert!(
        log.matches("rate-limit store unavailable").count() <= 4,
        "one warning per outage, not one per request:\n{log}"
    );
}
