//! Shared rate-limit quotas in Redis: the same GCRA as the local limiter, run atomically in a
//! Lua script (one round trip, Redis' own clock so replicas agree), over a reconnecting
//! connection manager. A failing store never takes the gateway down: the policy's
//! `on_store_error` decides (`local` limiter, `allow`, or `deny`), counted in metrics.

use crate::rate_limit::{Decision, LimitKey};
use redis::aio::ConnectionManager;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// A policy's Redis store.
pub struct RedisStore {
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<ConnectionManager>>,
    last_attempt: Mutex<Option<Instant>>,
    script: redis::Script,
    prefix: String,
    emission_us: u64,
    tolerance_us: u64,
    /// Fallback behaviour.
    pub on_error: OnStoreError,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl RedisStore {
    /// A store for policy `name` with `quota` per `window` and `burst`.
    pub fn try_new(
        name: &str,
        url: &str,
        quota: u32,
        window: Duration,
        burst: u32,
        on_error: OnStoreError,
    ) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        let emission_us = (window.as_micros() as u64 / u64::from(quota.max(1))).max(1);
        Ok(Self {
            client,
            conn: tokio::sync::Mutex::new(None),
            last_attempt: Mutex::new(None),
            script: redis::Script::new(GCRA),
            prefix: format!("gw:rl:{name}:"),
            emission_us,
            tolerance_us: emission_us * u64::from(burst.max(1)),
            on_error,
        })
    }

    async fn connection(&self) -> Result<ConnectionManager, String> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        // While Redis is down, try to connect at most once a second, not once per request.
        {
            let mut last = self
                .last_attempt
                .lock()
                .map_err(|_| "poisoned".to_string())?;
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                return Err("redis unavailable (reconnect pending)".into());
            }
            *last = Some(Instant::now());
        }
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_millis(200))
            .set_response_timeout(Duration::from_millis(200))
            .set_number_of_retries(1);
        let c = ConnectionManager::new_with_config(self.client.clone(), cfg)
            .await
            .map_err(|e| e.to_string())?;
        *guard = Some(c.clone());
        Ok(c)
    }

    /// Counts one request under `key` in Redis.
    pub async fn check(&self, key: &LimitKey) -> Result<Decision, String> {
        let mut conn = self.connection().await?;
        let k = match key {
            LimitKey::Ip(ip) => format!("{}{ip}", self.prefix),
            LimitKey::Text(t) => format!("{}{t}", self.prefix),
            LimitKey::Overflow => format!("{}~overflow", self.prefix),
        };
        let (allowed, remaining, retry_us): (i64, i64, i64) = self
            .script
            .key(k)
            .arg(self.emission_us)
            .arg(self.tolerance_us)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
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
