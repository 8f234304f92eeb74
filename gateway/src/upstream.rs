//! Upstream pools: peer selection (`upstream_peer`), request rewriting
//! (`upstream_request_filter`), active and passive health.
//!
//! Selection uses pingora-load-balancing (round robin or Ketama) over peers that pass both
//! the active HTTP health check and our passive marking: a peer that refused a connection is
//! skipped for `fail_timeout_ms`, the way nginx's `max_fails=1 fail_timeout` does, so one dead
//! peer costs at most one retried request per window instead of one per request.

use pingora_core::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::RequestHeader;
use pingora_load_balancing::health_check::{HttpHealthCheck, TcpHealthCheck};
use pingora_load_balancing::selection::{Consistent, RoundRobin};
use pingora_load_balancing::{Backend, LoadBalancer};
use serde::Deserialize;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Why a pool definition was refused.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("no peers")]
    NoPeers,
    #[error("peer `{0}` does not resolve to an address: {1}")]
    BadPeer(String, String),
    #[error("health_check_path `{0}` must start with `/`")]
    BadHealthPath(String),
}

enum Balancer {
    RoundRobin(LoadBalancer<RoundRobin>),
    Consistent(LoadBalancer<Consistent>),
}

impl Balancer {
    fn select_with<F: Fn(&Backend, bool) -> bool>(&self, key: &[u8], accept: F) -> Option<Backend> {
        match self {
            Balancer::RoundRobin(lb) => lb.select_with(key, 256, accept),
            Balancer::Consistent(lb) => lb.select_with(key, 256, accept),
        }
    }

    fn backends(&self) -> &pingora_load_balancing::Backends {
        match self {
            Balancer::RoundRobin(lb) => lb.backends(),
            Balancer::Consistent(lb) => lb.backends(),
        }
    }
}

/// A compiled upstream pool. Kept across reloads while its definition is unchanged.
pub struct Pool {
    /// Configured name.
    pub name: String,
    /// The definition it was built from (compared on reload).
    pub conf: UpstreamConf,
    balancer: Balancer,
    /// Per peer: passive "down until" in ms since `epoch` (0 = up).
    down_until: Vec<(PeerAddr, AtomicU64)>,
    epoch: Instant,
    last_check: Mutex<Option<Instant>>,
    /// A health-check pass of this pool is running (never two at once).
    checking: std::sync::atomic::AtomicBool,
    timeouts: Timeouts,
    upstream_duration: prometheus::Histogram,
}

#[derive(Debug, Clone, Copy)]
struct Timeouts {
    connect: Duration,
    total_connect: Duration,
    read: Duration,
    write: Duration,
    idle: Duration,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.name)
            .field("peers", &self.conf.peers)
            .finish()
    }
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

impl Pool {
    /// Builds a pool; peer host names are resolved once, here.
    pub fn try_from_conf(name: &str, conf: &UpstreamConf) -> Result<Self, PoolError> {
        if conf.peers.is_empty() {
            return Err(PoolError::NoPeers);
        }
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for p in &conf.peers {
            let a = p
                .to_socket_addrs()
                .map_err(|e| PoolError::BadPeer(p.clone(), e.to_string()))?
                .next()
                .ok_or_else(|| PoolError::BadPeer(p.clone(), "no address".into()))?;
            addrs.push(a);
        }
        let hc_path = conf.health_check_path.as_str();
        if !hc_path.is_empty() && !hc_path.starts_with('/') {
            return Err(PoolError::BadHealthPath(hc_path.into()));
        }
        let health: Box<dyn pingora_load_balancing::health_check::HealthCheck + Send + Sync> =
            if hc_path.is_empty() {
                let mut tcp = TcpHealthCheck::new();
                tcp.peer_template.options.connection_timeout = Some(ms(conf.connect_timeout_ms));
                tcp
            } else {
                let mut http = HttpHealthCheck::new("localhost", false);
                let mut req = RequestHeader::build("GET", hc_path.as_bytes(), None)
                    .map_err(|_| PoolError::BadHealthPath(hc_path.into()))?;
                let _ = req.insert_header("Host", "localhost");
                let _ = req.insert_header("User-Agent", "gateway-health-check");
                http.req = req;
                http.peer_template.options.connection_timeout = Some(ms(conf.connect_timeout_ms));
                http.peer_template.options.read_timeout = Some(ms(conf
                    .read_timeout_ms
                    .min(conf.health_check_interval_ms.max(1000))));
                Box::new(http)
            };
        let balancer = match conf.balance {
            BalanceConf::RoundRobin => {
                let mut lb = LoadBalancer::<RoundRobin>::try_from_iter(addrs.iter())
                    .map_err(|e| PoolError::BadPeer(conf.peers.join(","), e.to_string()))?;
                lb.set_health_check(health);
                Balancer::RoundRobin(lb)
            }
            BalanceConf::ConsistentHash => {
                let mut lb = LoadBalancer::<Consistent>::try_from_iter(addrs.iter())
                    .map_err(|e| PoolError::BadPeer(conf.peers.join(","), e.to_string()))?;
                lb.set_health_check(health);
                Balancer::Consistent(lb)
            }
        };
        let down_until = addrs
            .iter()
            .map(|a| (PeerAddr::Inet(*a), AtomicU64::new(0)))
            .collect();
        Ok(Self {
            name: name.to_string(),
            conf: conf.clone(),
            balancer,
            down_until,
            epoch: Instant::now(),
            last_check: Mutex::new(None),
            checking: std::sync::atomic::AtomicBool::new(false),
            upstream_duration: crate::metrics::UPSTREAM_DURATION.with_label_values(&[name]),
            timeouts: Timeouts {
                connect: ms(conf.connect_timeout_ms),
                total_connect: ms(conf.total_connect_timeout_ms),
                read: ms(conf.read_timeout_ms),
                write: ms(conf.write_timeout_ms),
                idle: ms(conf.idle_timeout_ms),
            },
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn passively_down(&self, addr: &PeerAddr, now: u64) -> bool {
        self.down_until
            .iter()
            .find(|(a, _)| a == addr)
            .is_some_and(|(_, until)| until.load(Ordering::Relaxed) > now)
    }

    /// Whether selection uses the key (consistent hashing).
    pub fn hashes(&self) -> bool {
        self.conf.balance == BalanceConf::ConsistentHash
    }

    /// Marks `addr` as failed for `fail_timeout_ms` (passive health).
    pub fn mark_failed(&self, addr: &PeerAddr) {
        let until = self.now_ms() + self.conf.fail_timeout_ms;
        if let Some((_, u)) = self.down_until.iter().find(|(a, _)| a == addr) {
            u.store(until, Ordering::Relaxed);
        }
    }

    /// Picks a peer: healthy, not passively marked, not `exclude`. When every healthy peer is
    /// passively marked, the marks are ignored rather than failing the request.
    pub fn select(&self, key: &[u8], exclude: Option<&PeerAddr>) -> Option<PeerAddr> {
        let now = self.now_ms();
        let not_excluded = |b: &Backend| exclude != Some(&b.addr);
        self.balancer
            .select_with(key, |b, healthy| {
                healthy && not_excluded(b) && !self.passively_down(&b.addr, now)
            })
            .or_else(|| {
                self.balancer
                    .select_with(key, |b, healthy| healthy && not_excluded(b))
            })
            .map(|b| b.addr)
    }

    /// Builds the pingora peer for `addr` with this pool's timeouts.
    pub fn peer(&self, addr: &PeerAddr) -> Option<Box<HttpPeer>> {
        let inet = addr.as_inet()?;
        let mut peer = HttpPeer::new(*inet, false, String::new());
        let o = &mut peer.options;
        o.connection_timeout = Some(self.timeouts.connect);
        o.total_connection_timeout = Some(self.timeouts.total_connect);
        o.read_timeout = Some(self.timeouts.read);
        o.write_timeout = Some(self.timeouts.write);
        o.idle_timeout = Some(self.timeouts.idle);
        Some(Box::new(peer))
    }

    /// Records an upstream response time.
    pub fn observe_upstream(&self, secs: f64) {
        self.upstream_duration.observe(secs);
    }

    /// Publishes each peer's health to the metrics.
    pub fn publish_health(&self) {
        let backends = self.balancer.backends();
        for b in backends.get_backend().iter() {
            crate::metrics::PEER_HEALTHY
                .with_label_values(&[self.name.as_str(), &b.addr.to_string()])
                .set(i64::from(backends.ready(b)));
        }
    }

    /// How many peers pass the active health check.
    pub fn healthy_peers(&self) -> usize {
        let backends = self.balancer.backends();
        backends
            .get_backend()
            .iter()
            .filter(|b| backends.ready(b))
            .count()
    }

    /// Total peers.
    pub fn peer_count(&self) -> usize {
        self.down_until.len()
    }

    /// Claims the next active health-check pass when the interval has elapsed and no pass is
    /// running; the caller then runs [`Pool::run_check`].
    pub fn claim_check(&self, now: Instant) -> bool {
        let Ok(mut last) = self.last_check.lock() else {
            return false;
        };
        let interval = ms(self.conf.health_check_interval_ms);
        if self.checking.load(Ordering::Acquire)
            || last.is_some_and(|t| now.duration_since(t) < interval)
        {
            return false;
        }
        *last = Some(now);
        self.checking.store(true, Ordering::Release);
        true
    }

    /// One active health-check pass (every peer at once), then the health published.
    pub async fn run_check(self: Arc<Self>) {
        self.balancer.backends().run_health_check(true).await;
        self.publish_health();
        self.checking.store(false, Ordering::Release);
    }
}

/// Load-balancing algorithm of a pool.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum BalanceConf {
    /// Rotate over healthy peers.
    #[default]
    RoundRobin,
    /// Ketama hash of the client IP: a client sticks to one peer while it is healthy.
    ConsistentHash,
}

/// An upstream pool.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConf {
    /// Peer addresses `ip:port` (or `host:port`, resolved once at load).
    pub peers: Vec<String>,
    /// Default `round_robin`.
    #[serde(default)]
    pub balance: BalanceConf,
    /// Path probed with GET by the active health check; empty = TCP connect only. Default `/healthz`.
    #[serde(default = "default_hc_path")]
    pub health_check_path: String,
    /// Milliseconds between health checks. Default 5000.
    #[serde(default = "default_hc_interval")]
    pub health_check_interval_ms: u64,
    /// TCP connect timeout, ms. Default 1000.
    #[serde(default = "default_connect")]
    pub connect_timeout_ms: u64,
    /// Timeout waiting for each read from the peer (including the response head), ms → 504. Default 30000.
    #[serde(default = "default_read")]
    pub read_timeout_ms: u64,
    /// Timeout for each write to the peer, ms. Default 30000.
    #[serde(default = "default_read")]
    pub write_timeout_ms: u64,
    /// Connect plus (for TLS peers) handshake, ms. Default 2000.
    #[serde(default = "default_total_connect")]
    pub total_connect_timeout_ms: u64,
    /// How long an idle upstream keep-alive connection is kept, ms. Default 60000.
    #[serde(default = "default_idle")]
    pub idle_timeout_ms: u64,
    /// Extra attempts on another peer after a connect failure. Default 1.
    #[serde(default = "default_retries")]
    pub retries: u8,
    /// After a failed connect the peer is skipped for this long (passive health), ms. Default 10000.
    #[serde(default = "default_fail_timeout")]
    pub fail_timeout_ms: u64,
}

fn default_hc_path() -> String {
    "/healthz".into()
}

fn default_hc_interval() -> u64 {
    5_000
}

fn default_connect() -> u64 {
    1_000
}

fn default_read() -> u64 {
    30_000
}

fn default_total_connect() -> u64 {
    2_000
}

fn default_idle() -> u64 {
    60_000
}

fn default_retries() -> u8 {
    1
}

fn default_fail_timeout() -> u64 {
    10_000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(peers: &[&str]) -> UpstreamConf {
        toml::from_str(&format!(
            "peers = [{}]",
            peers
                .iter()
                .map(|p| format!("\"{p}\""))
                .collect::<Vec<_>>()
                .join(",")
        ))
        .expect("valid pool toml")
    }

    #[test]
    fn passive_marking_skips_a_peer_then_falls_back() {
        let pool = Pool::try_from_conf("p", &conf(&["127.0.0.1:1", "127.0.0.1:2"])).expect("pool");
        let a = PeerAddr::Inet("127.0.0.1:1".parse().expect("addr"));
        pool.mark_failed(&a);
        for _ in 0..10 {
            assert_ne!(pool.select(b"", None), Some(a.clone()));
        }
        let b = PeerAddr::Inet("127.0.0.1:2".parse().expect("addr"));
        pool.mark_failed(&b);
        // Both marked: marks are ignored rather than failing everything.
        assert!(pool.select(b"", None).is_some());
        // Excluding the only other peer leaves the marked one.
        assert_eq!(pool.select(b"", Some(&b)), Some(a));
    }
}
