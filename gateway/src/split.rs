//! Traffic split between upstream pools: blue-green and canary at the edge.
//!
//! A proxy route names one pool (`upstream = "api"`) or several with weights
//! (`upstreams = [{ pool = "blue", weight = 90 }, { pool = "green", weight = 10 }]`). Each
//! request's pool is decided once, before its first peer is chosen, in this order:
//!
//! 1. **pins** — `{ header = "x-canary", value = "1", pool = "green" }` or `{ cookie = … }`:
//!    testers and internal users reach a pool whatever its weight, even 0 (how green is tried
//!    before it takes traffic);
//! 2. **sticky cookie** — with `sticky`, a browser keeps the pool it was first given while that
//!    pool still has weight: the gateway sets `name=<pool>.<HMAC>`; a cookie whose MAC does not
//!    verify (forged, or signed with another key) is ignored, so no unsigned client state
//!    chooses a pool;
//! 3. **weights** — a low-discrepancy sequence over the weights: each pool's share within
//!    ±1 request over any window (the sequence restarts with each generation), no RNG on the
//!    request path, and a weight of 0 never chosen.
//!
//! Weights change with a reload: the pools themselves are kept (their health and keep-alive
//! connections survive), only the split is rebuilt, and requests in flight finish on the
//! generation they started with — a 0 → 100 shift drops nothing.

use crate::upstream::Pool;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_spanned::Spanned;
use sha2::Sha256;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// One pool of a route's `upstreams`.
#[derive(Debug, Deserialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WeightedPoolConf {
    /// Pool name from `[upstreams]`.
    pub pool: Spanned<String>,
    /// Share of the requests not pinned or sticky, relative to the other pools' weights.
    /// 0 = only pinned requests. Default 1.
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// A rule sending matching requests to one pool whatever the weights.
#[derive(Debug, Deserialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PinConf {
    /// Request header to look at (exactly one of `header` and `cookie`).
    #[serde(default)]
    pub header: Option<String>,
    /// Cookie to look at.
    #[serde(default)]
    pub cookie: Option<String>,
    /// The value that pins (exact match); default: any non-empty value.
    #[serde(default)]
    pub value: Option<String>,
    /// The pool, one of the route's `upstreams`.
    pub pool: Spanned<String>,
}

/// Stickiness: a signed cookie keeps a client on the pool it was given.
#[derive(Debug, Deserialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StickyConf {
    /// Cookie name. Default `gw_pool`.
    #[serde(default = "default_cookie")]
    pub cookie: String,
    /// Key file (first line: the key, ≥ 32 bytes) signing the cookie; the same Secret on every
    /// replica, so a cookie set by one is honoured by all. Relative to the config file.
    pub key_file: Spanned<String>,
    /// Cookie lifetime, seconds. Default 86400 (one day).
    #[serde(default = "default_max_age")]
    pub max_age_seconds: u64,
}

fn default_cookie() -> String {
    "gw_pool".into()
}

fn default_max_age() -> u64 {
    86_400
}

/// A pool of a split and its weight.
#[derive(Debug)]
pub struct Member {
    /// The pool.
    pub pool: Arc<Pool>,
    /// Its weight (0: pinned requests only).
    pub weight: u32,
    /// Requests and decisions of this pool on this route.
    pub metrics: crate::metrics::PoolMetrics,
}

impl Member {
    /// `pool` at `weight` within route `route`.
    pub fn new(route: &str, pool: Arc<Pool>, weight: u32) -> Self {
        let metrics = crate::metrics::PoolMetrics::new(route, &pool.name, &By::LABELS);
        Self {
            pool,
            weight,
            metrics,
        }
    }
}

/// What a pin looks at.
#[derive(Debug)]
pub enum PinOn {
    /// A request header.
    Header(http::HeaderName),
    /// A cookie.
    Cookie(String),
}

/// A compiled pin.
#[derive(Debug)]
pub struct Pin {
    /// Where the value is read.
    pub on: PinOn,
    /// Required value; `None`: any non-empty value.
    pub value: Option<String>,
    /// Index of the pool in the split.
    pub index: usize,
}

/// A compiled sticky-cookie policy.
pub struct Sticky {
    cookie: String,
    mac: Hmac<Sha256>,
    max_age: u64,
    path: String,
    route: String,
}

impl std::fmt::Debug for Sticky {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sticky")
            .field("cookie", &self.cookie)
            .field("max_age", &self.max_age)
            .finish()
    }
}

impl Sticky {
    /// A policy for route `route` (cookie scoped to `path`) signing with `mac`.
    pub fn new(conf: &StickyConf, mac: Hmac<Sha256>, route: &str, path: &str) -> Self {
        Self {
            cookie: conf.cookie.clone(),
            mac,
            max_age: conf.max_age_seconds,
            path: if path.is_empty() { "/" } else { path }.to_string(),
            route: route.to_string(),
        }
    }

    /// The MAC of `pool` for this route, base64url without padding. The route is signed too,
    /// so a cookie earned on one route chooses nothing on another.
    fn mac_of(&self, pool: &str) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        mac.update(b"gw-sticky-v1\n");
        mac.update(self.route.as_bytes());
        mac.update(b"\n");
        mac.update(pool.as_bytes());
        mac
    }

    fn tag(&self, pool: &str) -> String {
        use base64::Engine;
        let tag = self.mac_of(pool).finalize().into_bytes();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag)
    }

    /// The pool named by a cookie value `<pool>.<tag>` whose tag verifies.
    fn verify<'a>(&self, value: &'a str) -> Option<&'a str> {
        use base64::Engine;
        let (pool, tag) = value.rsplit_once('.')?;
        let tag = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(tag)
            .ok()?;
        // Constant time: the comparison must not tell a forger how much of a tag was right.
        self.mac_of(pool).verify_slice(&tag).ok()?;
        Some(pool)
    }

    /// The `Set-Cookie` giving `pool`.
    pub fn set_cookie(&self, pool: &str) -> Option<http::HeaderValue> {
        let v = format!(
            "{}={}.{}; Path={}; Max-Age={}; Secure; HttpOnly; SameSite=Lax",
            self.cookie,
            pool,
            self.tag(pool),
            self.path,
            self.max_age
        );
        http::HeaderValue::from_str(&v).ok()
    }
}

/// Why a request went to its pool (the `by` label of `gateway_split_requests_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    /// The route has one pool.
    Single,
    /// A pin matched.
    Pin,
    /// A valid sticky cookie named a pool still in rotation.
    Sticky,
    /// The weights.
    Weight,
    /// The chosen pool had no healthy peer; another pool with weight took the request.
    Failover,
}

impl By {
    /// Labels, in discriminant order.
    pub const LABELS: [&'static str; 5] = ["single", "pin", "sticky", "weight", "failover"];

    /// Metric and log label.
    pub fn as_str(self) -> &'static str {
        Self::LABELS[self as usize]
    }
}

/// The decision for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    /// Index of the pool in the split.
    pub index: usize,
    /// Why.
    pub by: By,
    /// A sticky cookie must be set on the response (a new assignment).
    pub set_cookie: bool,
}

/// A route's pools and how a request picks one.
#[derive(Debug)]
pub struct Split {
    members: Vec<Member>,
    /// Sum of the weights (> 0 for more than one pool; validation refuses 0).
    total: u64,
    pins: Vec<Pin>,
    /// Boxed: the keyed MAC is large and most routes have none.
    sticky: Option<Box<Sticky>>,
    /// Each member's `Set-Cookie`, built once: the value is the same for every client, so a
    /// new assignment costs no MAC and no allocation on the response path.
    cookies: Vec<Option<http::HeaderValue>>,
    /// Requests decided by weight so far: the position in the sequence.
    counter: AtomicU64,
}

impl Split {
    /// All requests of route `route` to one pool.
    pub fn single(route: &str, pool: Arc<Pool>) -> Self {
        Self::new(vec![Member::new(route, pool, 1)], Vec::new(), None)
    }

    /// Records a finished proxied request (from the `logging` phase).
    pub fn record(&self, choice: Choice, status: u16) {
        if let Some(m) = self.members.get(choice.index) {
            m.metrics.record(status, choice.by as usize);
        }
    }

    /// A split over `members` (non-empty; weights summing to more than 0).
    pub fn new(members: Vec<Member>, pins: Vec<Pin>, sticky: Option<Sticky>) -> Self {
        let total = members.iter().map(|m| u64::from(m.weight)).sum();
        let cookies = members
            .iter()
            .map(|m| sticky.as_ref().and_then(|s| s.set_cookie(&m.pool.name)))
            .collect();
        Self {
            cookies,
            members,
            total,
            pins,
            sticky: sticky.map(Box::new),
            counter: AtomicU64::new(0),
        }
    }

    /// The pools and their weights, in configured order.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The pool at `index`.
    pub fn pool(&self, index: usize) -> &Arc<Pool> {
        &self.members[index].pool
    }

    /// The `Set-Cookie` assigning the pool at `index`, with `sticky` (`None` without, or when
    /// the value could not be a header — which validation refuses).
    pub fn sticky_cookie(&self, index: usize) -> Option<&http::HeaderValue> {
        self.cookies.get(index).and_then(Option::as_ref)
    }

    /// The sticky-cookie policy, if any.
    pub fn sticky(&self) -> Option<&Sticky> {
        self.sticky.as_deref()
    }

    /// Which pool serves a request with these headers.
    pub fn choose(&self, headers: &http::HeaderMap) -> Choice {
        self.decided(headers).unwrap_or_else(|| Choice {
            index: self.by_weight(self.counter.fetch_add(1, Ordering::Relaxed)),
            by: By::Weight,
            set_cookie: self.sticky.is_some(),
        })
    }

    /// The pool these headers decide by themselves — one pool, a pin, a valid sticky cookie —
    /// or `None` when the weights decide. Counts nothing: `check --requests` shows it as is.
    pub fn decided(&self, headers: &http::HeaderMap) -> Option<Choice> {
        if self.members.len() == 1 {
            return Some(Choice {
                index: 0,
                by: By::Single,
                set_cookie: false,
            });
        }
        for pin in &self.pins {
            let got = match &pin.on {
                PinOn::Header(name) => headers.get(name).and_then(|v| v.to_str().ok()),
                PinOn::Cookie(name) => crate::http::cookie::value(headers, name),
            };
            let hit = match (got, &pin.value) {
                (Some(v), Some(want)) => v.trim() == want,
                (Some(v), None) => !v.trim().is_empty(),
                (None, _) => false,
            };
            if hit {
                return Some(Choice {
                    index: pin.index,
                    by: By::Pin,
                    set_cookie: false,
                });
            }
        }
        if let Some(sticky) = &self.sticky {
            let kept = crate::http::cookie::value(headers, &sticky.cookie)
                .and_then(|v| sticky.verify(v))
                .and_then(|name| {
                    self.members
                        .iter()
                        .position(|m| m.weight > 0 && m.pool.name == name)
                });
            if let Some(index) = kept {
                return Some(Choice {
                    index,
                    by: By::Sticky,
                    set_cookie: false,
                });
            }
        }
        None
    }

    /// The `n`th pick of the weighted sequence: `n × (golden ratio)` mod 1 spreads any window
    /// of picks evenly over [0, 1) (a Weyl sequence), scaled onto the cumulative weights.
    fn by_weight(&self, n: u64) -> usize {
        let x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let at = ((u128::from(x) * u128::from(self.total)) >> 64) as u64;
        let mut acc = 0u64;
        for (i, m) in self.members.iter().enumerate() {
            acc += u64::from(m.weight);
            if at < acc {
                return i;
            }
        }
        self.members.len() - 1
    }

    /// Other pools with weight, in configured order: where a request goes when its pool has
    /// no healthy peer.
    pub fn fallbacks(&self, except: usize) -> impl Iterator<Item = usize> + '_ {
        self.members
            .iter()
            .enumerate()
            .filter(move |(i, m)| *i != except && m.weight > 0)
            .map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(name: &str) -> Arc<Pool> {
        let conf: crate::upstream::UpstreamConf =
            toml::from_str("peers = [\"127.0.0.1:9\"]").expect("conf");
        Arc::new(Pool::try_from_conf(name, &conf).expect("pool"))
    }

    fn split(weights: &[(&str, u32)], pins: Vec<Pin>, sticky: bool) -> Split {
        let members = weights
            .iter()
            .map(|(n, w)| Member::new("api", pool(n), *w))
            .collect();
        let sticky = sticky.then(|| {
            let conf: StickyConf = toml::from_str("key_file = \"k\"").expect("conf");
            let mac = crate::identity::hmac_from_file_text(b"0123456789abcdef0123456789abcdef")
                .expect("key");
            Sticky::new(&conf, mac, "api", "/api")
        });
        Split::new(members, pins, sticky)
    }

    /// The `name=value` a browser sends back for the cookie set for `pool`.
    fn cookie_pair(sticky: &Sticky, pool: &str) -> String {
        let v = sticky.set_cookie(pool).expect("value");
        let v = v.to_str().expect("ascii");
        v.split(';').next().expect("pair").to_string()
    }

    fn counts(s: &Split, n: usize) -> Vec<usize> {
        let mut c = vec![0; s.members().len()];
        let h = http::HeaderMap::new();
        for _ in 0..n {
            c[s.choose(&h).index] += 1;
        }
        c
    }

    #[test]
    fn weights_are_exact_over_any_window_and_zero_is_never_chosen() {
        let s = split(&[("blue", 90), ("green", 10)], Vec::new(), false);
        let c = counts(&s, 1000);
        assert!((99..=101).contains(&c[1]), "{c:?}");
        // Evenly spread: every window of 100 picks has 9..=11 green, not a burst of 10.
        let s = split(&[("blue", 90), ("green", 10)], Vec::new(), false);
        for _ in 0..10 {
            let w = counts(&s, 100);
            assert!((8..=12).contains(&w[1]), "{w:?}");
        }
        let s = split(&[("blue", 0), ("green", 1), ("red", 3)], Vec::new(), false);
        let c = counts(&s, 400);
        assert_eq!(c[0], 0);
        assert!((98..=102).contains(&c[1]), "{c:?}");
        let s = split(&[("blue", 100), ("green", 0)], Vec::new(), false);
        assert_eq!(counts(&s, 500), vec![500, 0]);
    }

    #[test]
    fn a_pin_wins_even_at_weight_zero() {
        let pins = vec![
            Pin {
                on: PinOn::Header(http::HeaderName::from_static("x-canary")),
                value: Some("1".into()),
                index: 1,
            },
            Pin {
                on: PinOn::Cookie("canary".into()),
                value: None,
                index: 1,
            },
        ];
        let s = split(&[("blue", 1), ("green", 0)], pins, true);
        let mut h = http::HeaderMap::new();
        h.insert("x-canary", "1".parse().expect("v"));
        let c = s.choose(&h);
        assert_eq!((c.index, c.by, c.set_cookie), (1, By::Pin, false));
        h.insert("x-canary", "0".parse().expect("v"));
        assert_eq!(s.choose(&h).index, 0);
        let mut h = http::HeaderMap::new();
        h.insert(http::header::COOKIE, "a=b; canary=yes".parse().expect("v"));
        assert_eq!(s.choose(&h).by, By::Pin);
    }

    #[test]
    fn a_signed_cookie_keeps_its_pool_and_a_forged_one_is_ignored() {
        let s = split(&[("blue", 1), ("green", 1)], Vec::new(), true);
        let sticky = s.sticky().expect("sticky");
        let set = sticky.set_cookie("green").expect("value");
        let set = set.to_str().expect("ascii");
        assert!(
            set.starts_with("gw_pool=green.")
                && set.ends_with("; Path=/api; Max-Age=86400; Secure; HttpOnly; SameSite=Lax"),
            "{set}"
        );
        let pair = set.split(';').next().expect("pair").to_string();
        let with = |cookie: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(http::header::COOKIE, cookie.parse().expect("v"));
            s.choose(&h)
        };
        for _ in 0..5 {
            let c = with(&pair);
            assert_eq!((c.index, c.by, c.set_cookie), (1, By::Sticky, false));
        }
        // The tag of green does not verify blue, nor a truncated or unsigned value.
        let tag = pair.rsplit_once('.').expect("tag").1;
        for forged in [
            format!("gw_pool=blue.{tag}"),
            "gw_pool=green".to_string(),
            format!("gw_pool=green.{}", &tag[..10]),
            "gw_pool=green.!!".to_string(),
        ] {
            let c = with(&forged);
            assert_eq!(c.by, By::Weight, "{forged}");
            assert!(c.set_cookie);
        }
        // Another route's cookie for the same pool chooses nothing here.
        let conf: StickyConf = toml::from_str("key_file = \"k\"").expect("conf");
        let mac =
            crate::identity::hmac_from_file_text(b"0123456789abcdef0123456789abcdef").expect("k");
        let other = Sticky::new(&conf, mac, "other", "/");
        let pair = cookie_pair(&other, "green");
        assert_eq!(with(&pair).by, By::Weight);
    }

    #[test]
    fn a_sticky_pool_taken_out_of_rotation_is_left() {
        let s = split(&[("blue", 0), ("green", 1)], Vec::new(), true);
        let pair = cookie_pair(s.sticky().expect("s"), "blue");
        let mut h = http::HeaderMap::new();
        h.insert(http::header::COOKIE, pair.parse().expect("v"));
        let c = s.choose(&h);
        assert_eq!((c.index, c.by, c.set_cookie), (1, By::Weight, true));
    }

    #[test]
    fn one_pool_needs_no_decision() {
        let s = Split::single("api", pool("api"));
        let c = s.choose(&http::HeaderMap::new());
        assert_eq!((c.index, c.by), (0, By::Single));
        assert_eq!(s.fallbacks(0).count(), 0);
        let s = split(&[("a", 1), ("b", 0), ("c", 2)], Vec::new(), false);
        assert_eq!(s.fallbacks(0).collect::<Vec<_>>(), vec![2]);
    }
}
