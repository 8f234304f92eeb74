//! Background services over the live runtime: active health checks of every pool, JWKS
//! fetch and refresh of every provider, rate-limit cleanup, shared-store probes and replica
//! counts. Each reads the current generation at every tick, so a reload needs no restart of
//! these tasks; each stops on shutdown (pingora `BackgroundService`, no detached loops).

use crate::runtime::Runtime;
use crate::state::{every, SharedRuntime};
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::time::{Duration, Instant};

/// Background service running active health checks of every pool of the current runtime.
///
/// One task for all pools, driven by the live runtime, so pools added by a reload are checked
/// without starting anything, and pools dropped by a reload stop being checked.
pub struct HealthService {
    runtime: SharedRuntime,
}

impl HealthService {
    /// A health checker over the shared runtime.
    pub fn new(runtime: SharedRuntime) -> Self {
        Self { runtime }
    }
}

#[async_trait]
impl BackgroundService for HealthService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use futures_util::StreamExt as _;
        // Each pool's pass runs on its own: a pool whose peers hang until the read timeout
        // delays neither another pool's checks nor its own next tick's bookkeeping.
        let mut running = futures_util::stream::FuturesUnordered::new();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {
                    let rt = self.runtime.load();
                    let now = Instant::now();
                    for pool in rt.pools.values() {
                        if pool.claim_check(now) {
                            running.push(pool.clone().run_check());
                        }
                    }
                }
                Some(()) = running.next(), if !running.is_empty() => {}
            }
        }
    }
}

/// Background service: initial JWKS fetch (retried every second until it succeeds) and
/// periodic refresh for every provider of the current runtime.
pub struct JwksService {
    runtime: SharedRuntime,
}

impl JwksService {
    /// Over the shared runtime.
    pub fn new(runtime: SharedRuntime) -> Self {
        Self { runtime }
    }
}

#[async_trait]
impl BackgroundService for JwksService {
    async fn start(&self, shutdown: ShutdownWatch) {
        let period = Duration::from_millis(250);
        every(&self.runtime, shutdown, period, |rt| async move {
            for p in rt.jwt_providers.values() {
                if p.needs_refresh() {
                    match p.fetch_jwks().await {
                        Ok(()) => describe_runtime(&rt),
                        Err(e) => {
                            tracing::warn!(provider = %p.name, error = %e, "JWKS fetch failed; keeping the last good keys")
                        }
                    }
                }
            }
        })
        .await;
    }
}

/// Background service: periodic cleanup of every policy's state, and the tracked-keys gauge.
pub struct RateLimitService {
    runtime: SharedRuntime,
}

impl RateLimitService {
    /// Over the shared runtime.
    pub fn new(runtime: SharedRuntime) -> Self {
        Self { runtime }
    }
}

#[async_trait]
impl BackgroundService for RateLimitService {
    async fn start(&self, shutdown: ShutdownWatch) {
        let cleanup = every(
            &self.runtime,
            shutdown.clone(),
            Duration::from_secs(10),
            |rt| async move {
                for p in rt.rate_policies.values() {
                    p.cleanup();
                    crate::metrics::RATE_TRACKED_KEYS
                        .with_label_values(&[p.name.as_str()])
                        .set(p.tracked_keys() as i64);
                }
            },
        );
        // Shared stores with an open breaker (or never connected) are probed off the request
        // path: requests never wait on a reconnect.
        let probe = every(
            &self.runtime,
            shutdown.clone(),
            crate::rate_limit::store::PROBE_PERIOD,
            |rt| async move {
                for p in rt.rate_policies.values() {
                    if let Some(store) = &p.shared {
                        store.probe().await;
                    }
                }
            },
        );
        // `dns:` replica counts: the lookup blocks, so it runs on the blocking pool; a request
        // only ever reads the count in force.
        let replicas = every(
            &self.runtime,
            shutdown,
            crate::rate_limit::replicas::REFRESH,
            |rt| async move {
                for p in rt.rate_policies.values() {
                    if p.resolves_replicas() {
                        let p = p.clone();
                        let _ = tokio::task::spawn_blocking(move || p.refresh_replicas()).await;
                    }
                }
            },
        );
        tokio::join!(cleanup, probe, replicas);
    }
}

/// Sets the gauges that describe a runtime (certificates, providers).
pub fn describe_runtime(rt: &Runtime) {
    for c in &rt.certs.certs {
        crate::metrics::CERT_NOT_AFTER
            .with_label_values(&[c.name.as_str()])
            .set(c.not_after);
    }
    for p in rt.jwt_providers.values() {
        let t = p.last_success.load(std::sync::atomic::Ordering::Relaxed);
        if t > 0 {
            crate::metrics::JWKS_LAST_SUCCESS
                .with_label_values(&[p.name.as_str()])
                .set(t as i64);
        }
    }
}
