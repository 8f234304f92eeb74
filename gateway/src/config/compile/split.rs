//! A proxy route's pools: `upstream` (one) or `upstreams` (weighted), with `pin` rules and a
//! `sticky` cookie ([`crate::split`]). Every problem is reported at the key that has it.

use super::super::file::{GatewayConf, RouteConf};
use super::super::source::{Problem, Source};
use crate::path::resolve;
use crate::split::{Member, Pin, PinOn, Split, Sticky};
use crate::upstream::Pool;
use serde_spanned::Spanned;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// The split of proxy route `r`, or `None` with its problems recorded. `stripped` are the
/// identity headers removed from every request before a pool is chosen.
pub fn split(
    r: &Spanned<RouteConf>,
    conf: &GatewayConf,
    base: &Path,
    pools: &HashMap<String, Arc<Pool>>,
    stripped: &[http::HeaderName],
    src: &Source,
    problems: &mut Vec<Problem>,
) -> Option<Split> {
    let rc = r.get_ref();
    let name = rc.name.as_str();
    let before = problems.len();
    // A pool that is defined but failed to build has its own problem already.
    let lookup = |pool: &Spanned<String>, problems: &mut Vec<Problem>| {
        let found = pools.get(pool.get_ref()).cloned();
        if found.is_none() && !conf.upstreams.contains_key(pool.get_ref()) {
            problems.push(src.problem(
                pool,
                format!(
                    "route `{name}`: upstream `{}` is not defined in [upstreams]",
                    pool.get_ref()
                ),
            ));
        }
        found
    };
    let many = match (&rc.upstream, &rc.upstreams) {
        (None, None) => {
            problems.push(src.problem(
                r,
                format!("route `{name}`: a proxy route needs `upstream` or `upstreams`"),
            ));
            return None;
        }
        (Some(_), Some(list)) => {
            problems.push(src.problem(
                list,
                format!("route `{name}`: `upstream` and `upstreams` exclude each other"),
            ));
            return None;
        }
        (Some(one), None) => {
            for p in &rc.pin {
                problems.push(src.problem(
                    p,
                    format!("route `{name}`: `pin` needs several pools in `upstreams`"),
                ));
            }
            if let Some(s) = &rc.sticky {
                problems.push(src.problem(
                    s,
                    format!("route `{name}`: `sticky` needs several pools in `upstreams`"),
                ));
            }
            let pool = lookup(one, problems)?;
            return (problems.len() == before).then(|| Split::single(name, pool));
        }
        (None, Some(list)) => list,
    };
    let list = many.get_ref();
    if list.is_empty() {
        problems.push(src.problem(
            many,
            format!("route `{name}`: `upstreams` is empty; name at least one pool"),
        ));
        return None;
    }
    let mut members = Vec::new();
    for (i, w) in list.iter().enumerate() {
        if list[..i]
            .iter()
            .any(|o| o.pool.get_ref() == w.pool.get_ref())
        {
            problems.push(src.problem(
                &w.pool,
                format!(
                    "route `{name}`: pool `{}` is listed twice in `upstreams`",
                    w.pool.get_ref()
                ),
            ));
        }
        if let Some(pool) = lookup(&w.pool, problems) {
            members.push(Member::new(name, pool, w.weight));
        }
    }
    let total: u64 = list.iter().map(|w| u64::from(w.weight)).sum();
    if total == 0 {
        problems.push(src.problem(
            many,
            format!(
                "route `{name}`: the weights of `upstreams` sum to 0; give at least one pool a weight above 0"
            ),
        ));
    }
    let index_of =
        |pool: &Spanned<String>| list.iter().position(|w| w.pool.get_ref() == pool.get_ref());
    let mut pins = Vec::new();
    for p in &rc.pin {
        let pc = p.get_ref();
        let on = match (&pc.header, &pc.cookie) {
            (Some(h), None) => match http::HeaderName::from_bytes(h.as_bytes()) {
                Ok(h) if stripped.contains(&h) => {
                    problems.push(src.problem(
                        p,
                        format!(
                            "route `{name}`: pin header `{h}` is an identity header, stripped from every request: it can never match"
                        ),
                    ));
                    None
                }
                Ok(h) => Some(PinOn::Header(h)),
                Err(_) => {
                    problems.push(src.problem(
                        p,
                        format!("route `{name}`: pin header `{h}` is not a valid header name"),
                    ));
                    None
                }
            },
            (None, Some(c)) if is_token(c) => Some(PinOn::Cookie(c.clone())),
            (None, Some(c)) => {
                problems.push(src.problem(
                    p,
                    format!("route `{name}`: pin cookie `{c}` is not a valid cookie name"),
                ));
                None
            }
            _ => {
                problems.push(src.problem(
                    p,
                    format!("route `{name}`: a pin needs exactly one of `header` and `cookie`"),
                ));
                None
            }
        };
        if pc.value.as_deref().is_some_and(|v| v.trim().is_empty()) {
            problems.push(src.problem(
                p,
                format!("route `{name}`: pin `value` is empty; leave it out to match any value"),
            ));
        }
        let index = index_of(&pc.pool);
        if index.is_none() {
            problems.push(src.problem(
                &pc.pool,
                format!(
                    "route `{name}`: pin pool `{}` is not one of the route's `upstreams`",
                    pc.pool.get_ref()
                ),
            ));
        }
        if let (Some(on), Some(index)) = (on, index) {
            pins.push(Pin {
                on,
                value: pc.value.as_ref().map(|v| v.trim().to_string()),
                index,
            });
        }
    }
    let sticky = rc.sticky.as_ref().and_then(|s| {
        let sc = s.get_ref();
        if !is_token(&sc.cookie) {
            problems.push(src.problem(
                s,
                format!(
                    "route `{name}`: sticky cookie `{}` is not a valid cookie name",
                    sc.cookie
                ),
            ));
        }
        if sc.max_age_seconds == 0 {
            problems.push(src.problem(
                s,
                format!("route `{name}`: sticky max_age_seconds must be above 0"),
            ));
        }
        // The pool name is the cookie's value: it must need no quoting.
        for w in list.iter().filter(|w| !is_token(w.pool.get_ref())) {
            problems.push(src.problem(
                &w.pool,
                format!(
                    "route `{name}`: with `sticky`, pool names must be letters, digits, `-`, `_` or `.`; `{}` is not",
                    w.pool.get_ref()
                ),
            ));
        }
        let path = resolve(base, sc.key_file.get_ref());
        let text = std::fs::read(&path).map_err(crate::identity::SignerError::Io);
        match text.and_then(|t| crate::identity::hmac_from_file_text(&t)) {
            Ok(mac) => Some(Sticky::new(sc, mac, name, rc.prefix.trim_end_matches('/'))),
            Err(e) => {
                problems.push(src.problem(
                    &sc.key_file,
                    format!(
                        "route `{name}`: sticky key_file {}: {e}",
                        path.display()
                    ),
                ));
                None
            }
        }
    });
    if problems.len() > before {
        return None;
    }
    let split = Split::new(members, pins, sticky);
    if split.sticky().is_some()
        && (0..split.members().len()).any(|i| split.sticky_cookie(i).is_none())
    {
        problems.push(src.problem(
            r,
            format!("route `{name}`: the sticky cookie's Path (the prefix) must be visible ASCII"),
        ));
        return None;
    }
    Some(split)
}

/// `upstreams`, `pin` and `sticky` on a static route.
pub fn refuse_on_static(rc: &RouteConf, src: &Source, problems: &mut Vec<Problem>) {
    let name = &rc.name;
    let mut refuse = |what: &str, p: Problem| {
        problems.push(Problem {
            location: p.location,
            message: format!("route `{name}`: `{what}` is only for proxy routes"),
        });
    };
    if let Some(u) = &rc.upstream {
        refuse("upstream", src.problem(u, ""));
    }
    if let Some(u) = &rc.upstreams {
        refuse("upstreams", src.problem(u, ""));
    }
    if let Some(p) = rc.pin.first() {
        refuse("pin", src.problem(p, ""));
    }
    if let Some(s) = &rc.sticky {
        refuse("sticky", src.problem(s, ""));
    }
}

/// Letters, digits, `-`, `_`, `.`: safe as a cookie name and value without quoting.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}
