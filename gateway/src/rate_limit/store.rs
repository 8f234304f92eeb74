//! Shared rate-limit quotas in Redis: the same GCRA as the local limiter, run atomically in a
//! Lua script (one round trip, Redis' own clock so replicas agree), over a reconnecting
//! connection manager. A failing store never takes the gateway down: the policy's
//! `on_store_error` decides (`local` limiter, `allow`, or `deny`), counted in metrics.

use super::key::{Decision, LimitKey};
use redis::aio::ConnectionManager;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// GCRA: KEYS[1] bucket; ARGV[1] emission interval µs; ARGV[2] burst tolerance µs.
/// Returns {allowed, remaining, retry_after_µs}.
const GCRA: &str = r#"
local t = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + t
local allow_at = new_tat - tau
if now < allow_at then
  return {0, 0, allow_at - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, math.floor((now + tau - new_tat) / t), 0}
"#;

/// What to do when Redis cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStoreError {
    /// Use the in-process limiter (default).
    Local,
    /// Let the request through.
    Allow,
    /// Refuse the request (429).
    Deny,
}

/// How long one Redis call may take before the request falls back (and the breaker opens).
pub const STORE_TIMEOUT: Duration = Duration::from_millis(250);

/// A policy's Redis store, behind a circuit breaker: while Redis is unreachable, slow or frozen,
/// requests take the fallback at once instead of each waiting for a timeout; a background
/// probe ([`RedisStore::probe`]) reconnects and closes the breaker when Redis answers again.
pub struct RedisStore {
    client: redis::Client,
    /// The live connection (cloned out under a short lock; never held across an await).
    conn: Mutex<Option<ConnectionManager>>,
    /// Breaker closed: requests go to Redis. Opened by any failure, closed only by the probe.
    up: AtomicBool,
    script: redis::Script,
    prefix: String,
    emission_us: u64,
    tolerance_us: u64,
    /// Fallback behaviour.
    pub on_error: OnStoreError,
}

/// Why the store gave no decision.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The breaker is open: a recent call failed and the probe has not seen Redis back yet.
    #[error("redis unavailable (breaker open, probing in the background)")]
    Unavailable,
    /// The call failed now (and opened the breaker).
    #[error("redis call failed: {0}")]
    Failed(String),
    /// The call took longer than [`STORE_TIMEOUT`] (and opened the breaker).
    #[error("redis call timed out")]
    Timeout,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl RedisStore {
    /// A store for policy `name` with `quota` per `window` and `burst`. Not connected yet:
    /// the first [`RedisStore::probe`] connects (until then requests take the fallback).
    pub fn try_new(
        name: &str,
        url: &str,
        quota: u32,
        window: Duration,
        burst: u32,
        on_error: OnStoreError,
    ) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let emission_us = (window.as_micros() as u64 / u64::from(quota.max(1))).max(1);
        Ok(Self {
            client,
            conn: Mutex::new(None),
            up: AtomicBool::new(false),
            script: redis::Script::new(GCRA),
            prefix: format!("gw:rl:{name}:"),
            emission_us,
            tolerance_us: emission_us * u64::from(burst.max(1)),
            on_error,
        })
    }

    /// Whether requests currently go to Redis (the breaker is closed).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Opens the breaker after a failed call; logs only the transition, not every request.
    fn trip(&self, why: &StoreError) {
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(store = %self.prefix, error = %why, "rate-limit store unavailable; using the fallback until Redis answers again");
        }
        // A fresh connection for the probe: a manager stuck on a frozen peer is not reused.
        if let Ok(mut c) = self.conn.lock() {
            *c = None;
        }
    }

    /// Background step (every [`PROBE_PERIOD`]): while the breaker is open, connect if needed
    /// and `PING`; close the breaker when Redis answers within [`STORE_TIMEOUT`].
    pub async fn probe(&self) {
        if self.is_up() {
            return;
        }
        let existing = self.conn.lock().ok().and_then(|c| c.clone());
        let attempt = async {
            let mut conn = match existing {
                Some(c) => c,
                None => {
                    let cfg = redis::aio::ConnectionManagerConfig::new()
                        .set_connection_timeout(STORE_TIMEOUT)
                        .set_response_timeout(STORE_TIMEOUT)
                        .set_number_of_retries(1);
                    ConnectionManager::new_with_config(self.client.clone(), cfg).await?
                }
            };
            redis::cmd("PING").query_async::<()>(&mut conn).await?;
            Ok::<_, redis::RedisError>(conn)
        };
        match tokio::time::timeout(STORE_TIMEOUT, attempt).await {
            Ok(Ok(conn)) => {
                if let Ok(mut c) = self.conn.lock() {
                    *c = Some(conn);
                }
                self.up.store(true, Ordering::Release);
                tracing::info!(store = %self.prefix, "rate-limit store reachable: shared quotas in force");
            }
            Ok(Err(e)) => {
                tracing::debug!(store = %self.prefix, error = %e, "rate-limit store probe failed")
            }
            Err(_) => tracing::debug!(store = %self.prefix, "rate-limit store probe timed out"),
        }
    }

    /// Counts one request under `key` in Redis; fails at once while the breaker is open.
    pub async fn check(&self, key: &LimitKey) -> Result<Decision, StoreError> {
        if !self.is_up() {
            return Err(StoreError::Unavailable);
        }
        let Some(mut conn) = self.conn.lock().ok().and_then(|c| c.clone()) else {
            return Err(StoreError::Unavailable);
        };
        let k = match key {
            LimitKey::Ip(ip) => format!("{}{ip}", self.prefix),
            LimitKey::Text(t) => format!("{}{t}", self.prefix),
            LimitKey::Overflow => format!("{}~overflow", self.prefix),
        };
        let mut call = self.script.key(k);
        call.arg(self.emission_us).arg(self.tolerance_us);
        let answer = tokio::time::timeout(
            STORE_TIMEOUT,
            call.invoke_async::<(i64, i64, i64)>(&mut conn),
        )
        .await;
        let (allowed, remaining, retry_us) = match answer {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                let e = StoreError::Failed(e.to_string());
                self.trip(&e);
                return Err(e);
            }
            Err(_) => {
                self.trip(&StoreError::Timeout);
                return Err(StoreError::Timeout);
            }
        };
        Ok(if allowed == 1 {
            Decision::Allowed {
                remaining: remaining.max(0) as u32,
            }
        } else {
            let secs = (retry_us.max(1) as u64).div_ceil(1_000_000);
            Decision::Limited {
                retry_after: secs.max(1),
            }
        })
    }
}

/// How often an open breaker probes Redis.
pub const PROBE_PERIOD: Duration = Duration::from_millis(250);
