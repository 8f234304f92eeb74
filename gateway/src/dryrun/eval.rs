//! One request through the proxy's own phase functions, in the dispatcher's order
//! ([`crate::proxy`]'s `request_pipeline`), with two differences: rate limits are listed with
//! their keys but never counted, and tokens are verified offline (the provider's file keys,
//! or a `--jwks` file for a provider that fetches its keys) — no network, no cache.

use super::parse::{Expect, ExpectKey, RequestLine, Scheme};
use crate::auth::{extract_token, KeySet};
use crate::proxy::answer::Verdict;
use crate::proxy::ctx::Ctx;
use crate::proxy::rate_limit::Stage;
use crate::proxy::static_files::Lookup;
use crate::proxy::{auth, cors, hygiene, rate_limit, routing, static_files, upstream};
use crate::route::{Route, RouteKind};
use crate::runtime::Runtime;
use crate::static_files::AssetBundle;
use http::HeaderMap;
use serde::Serialize;
use std::sync::Arc;

/// A pool a proxied request may go to.
#[derive(Debug, Clone, Serialize)]
pub struct PoolChoice {
    /// Pool name.
    pub name: String,
    /// Share of traffic, when the weights decide between pools.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// What decides: `single`, `pin`, `sticky` or `weight` ([`crate::split::By`]).
    pub by: &'static str,
}

/// The pools a proxy route sends this request to: the one its headers decide (one pool, a
/// pin, a valid sticky cookie), else every pool in rotation with its weight — the same
/// [`crate::split::Split`] the proxy asks, without moving its weighted sequence.
pub fn pools(route: &Route, headers: &HeaderMap) -> Vec<PoolChoice> {
    let RouteKind::Proxy { split, .. } = &route.kind else {
        return Vec::new();
    };
    match split.decided(headers) {
        Some(c) => vec![PoolChoice {
            name: split.pool(c.index).name.clone(),
            weight: None,
            by: c.by.as_str(),
        }],
        None => split
            .members()
            .iter()
            .filter(|m| m.weight > 0)
            .map(|m| PoolChoice {
                name: m.pool.name.clone(),
                weight: Some(m.weight),
                by: crate::split::By::Weight.as_str(),
            })
            .collect(),
    }
}

/// One rate-limit policy that applies, and what it would count under.
#[derive(Debug, Clone, Serialize)]
pub struct RateApplied {
    /// Policy name.
    pub policy: String,
    /// `before_auth` (IP/header keys) or `subject`.
    pub stage: &'static str,
    /// The counter's key, e.g. `ip:203.0.113.9`.
    pub key: String,
    /// Counted but never enforced.
    pub dry_run: bool,
}

/// The auth decision.
#[derive(Debug, Clone, Serialize)]
pub struct AuthOutcome {
    /// `none`, `public`, `verified`, `unverifiable`, `insufficient_scope`, or the rejection
    /// (`missing_token`, `expired`, `bad_signature`, …).
    pub state: String,
    /// The provider, when the route has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Verified `sub`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Verified scopes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Why, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The static answer.
#[derive(Debug, Clone, Serialize)]
pub struct StaticOutcome {
    /// The decoded path of the file, or `fallback` for the SPA shell.
    pub file: String,
    /// `Cache-Control` of the answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<String>,
    /// `Content-Type` of the answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
}

/// The proxied request.
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamOutcome {
    /// Where it may go.
    pub pools: Vec<PoolChoice>,
    /// Path and query sent upstream (prefix stripped when configured).
    pub path: String,
    /// The head's headers as sent upstream.
    pub headers: Vec<(String, String)>,
}

/// One `expect` checked.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was asserted.
    pub key: ExpectKey,
    /// The value wanted.
    pub want: String,
    /// The value found.
    pub got: String,
    /// Whether they agree.
    pub pass: bool,
}

/// Everything the gateway would do with one request.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Outcome {
    /// Line in the requests file.
    pub line: usize,
    /// Method.
    pub method: String,
    /// URL as written.
    pub url: String,
    /// The request target as sent (path and query, before normalisation).
    pub target: String,
    /// The normalised path every decision uses (`None` when it could not be made).
    pub path: Option<String>,
    /// The status the gateway answers itself; `None` when the request is proxied.
    pub status: Option<u16>,
    /// The matched route.
    pub route: Option<String>,
    /// One line: what happens.
    pub summary: String,
    /// The client IP the decisions use.
    pub client_ip: Option<String>,
    /// Hygiene rejection, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected: Option<String>,
    /// Maintenance answered.
    pub maintenance: bool,
    /// The CORS preflight answer's headers (when it is a preflight on a CORS route).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preflight: Option<Vec<(String, String)>>,
    /// Rate-limit policies that apply (not counted).
    pub rate_limits: Vec<RateApplied>,
    /// Auth decision (once routing ran).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthOutcome>,
    /// Static answer.
    #[serde(rename = "static", skip_serializing_if = "Option::is_none")]
    pub static_file: Option<StaticOutcome>,
    /// Proxied request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamOutcome>,
    /// Headers of the gateway's own answer.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub response_headers: Vec<(String, String)>,
    /// The `expect`s, checked.
    pub checks: Vec<Check>,
}

fn pairs(h: &HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

fn value_of(pairs: &[(String, String)], name: &str) -> Option<String> {
    pairs
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
}

/// Records the gateway's answer; returns the outcome finished.
fn answered(mut out: Outcome, verdict: Verdict, summary: impl Into<String>) -> Outcome {
    if let Verdict::Respond(r) = verdict {
        out.status = Some(r.status());
        out.response_headers = pairs(&r.head.headers);
    }
    out.summary = summary.into();
    out
}

fn list_rates(out: &mut Outcome, ctx: &Ctx, req: &pingora_http::RequestHeader, stage: Stage) {
    let Some(route) = ctx.route() else { return };
    for rule in rate_limit::rules(route, &req.method, &ctx.routing.path, stage) {
        out.rate_limits.push(RateApplied {
            policy: rule.policy.name.clone(),
            stage: match stage {
                Stage::BeforeAuth => "before_auth",
                Stage::Subject => "subject",
            },
            key: rate_limit::key(&rule.policy, req, ctx).to_string(),
            dry_run: rule.policy.conf.dry_run,
        });
    }
}

/// The auth step offline: `Some(verdict)` when it answers, `None` to go on.
fn offline_auth(
    out: &mut Outcome,
    req: &pingora_http::RequestHeader,
    ctx: &mut Ctx,
    jwks: Option<&KeySet>,
) -> Option<Verdict> {
    let rt = ctx.rt.clone();
    let route_auth = ctx.route().and_then(|r| r.auth.as_ref());
    let provider = route_auth.map(|p| p.provider.name.clone());
    let mut outcome = AuthOutcome {
        state: String::new(),
        provider,
        subject: None,
        scopes: Vec::new(),
        detail: None,
    };
    let Some(policy) = auth::required(req, ctx, &rt) else {
        outcome.state = if route_auth.is_some() {
            "public"
        } else {
            "none"
        }
        .into();
        out.auth = Some(outcome);
        return None;
    };
    let p = &policy.provider;
    let held;
    let keys = if p.fetches_keys() {
        jwks
    } else {
        held = p.keys();
        Some(&*held)
    };
    let verdict = match (extract_token(req, p.conf.cookie.as_deref()), keys) {
        (Err(r), _) => Err(r),
        (Ok(_), None) => {
            outcome.state = "unverifiable".into();
            outcome.detail = Some(format!(
                "{} fetches its keys (jwks_url/discovery): unverifiable offline without --jwks FILE",
                p.name
            ));
            out.auth = Some(outcome);
            return None;
        }
        (Ok(t), Some(keys)) => p
            .verify_with(keys, t, crate::auth::now_secs())
            .map(Arc::new),
    };
    let (state, detail) = match &verdict {
        Err(r) => (r.as_str().to_string(), None),
        Ok(id) => {
            outcome.subject = id.sub.clone();
            outcome.scopes = id.scopes.clone();
            match policy.missing_scope(&req.method, id) {
                Some(s) => (
                    "insufficient_scope".to_string(),
                    Some(format!("requires scope {s}")),
                ),
                None => ("verified".to_string(), None),
            }
        }
    };
    outcome.state = state;
    outcome.detail = detail;
    out.auth = Some(outcome);
    match auth::settle(req, ctx, policy, verdict) {
        Verdict::Continue => None,
        v => Some(v),
    }
}

/// What the gateway would do with `line` under `rt`: no network, nothing counted.
pub fn evaluate(rt: &Arc<Runtime>, line: &RequestLine, jwks: Option<&KeySet>) -> Outcome {
    let mut req = line.head.clone();
    let mut out = Outcome {
        line: line.line,
        method: req.method.to_string(),
        url: line.url.clone(),
        target: String::from_utf8_lossy(req.raw_path()).into_owned(),
        ..Outcome::default()
    };
    if line.scheme == Scheme::Http {
        return plain_http(out, rt, &req);
    }
    let mut ctx = Ctx::new(rt.clone());
    hygiene::identify_peer(&req, Some(line.peer), &mut ctx);
    if !req.headers.contains_key("x-request-id") {
        // A fixed id instead of a random one keeps the report diffable.
        ctx.request_id = format!("dry-run-{}", line.line);
    }
    out.client_ip = ctx.client.ip.map(|ip| ip.to_string());

    // The dispatcher's `request_pipeline`, step by step.
    if let Err(r) = hygiene::check_head(&req, &rt.limits) {
        out.rejected = Some(r.reason().into());
        let v = hygiene::judge(&req, &mut ctx, None);
        return answered(out, v, format!("refused: {}", r.reason()));
    }
    let v = routing::route(&mut req, &mut ctx);
    if !ctx.routing.path.is_empty() {
        out.path = Some(ctx.routing.path.clone());
    }
    out.route = ctx.route().map(|r| r.name.clone());
    if let Verdict::Respond(_) = v {
        let why = match crate::path::normalize(req.uri.path(), rt.limits.merge_slashes) {
            Err(e) => {
                out.rejected = Some(e.reason().into());
                format!("refused: {}", e.reason())
            }
            Ok(_) => "no route".into(),
        };
        return answered(out, v, why);
    }
    if let v @ Verdict::Respond(_) = routing::maintenance(&req, &ctx) {
        out.maintenance = true;
        return answered(out, v, "maintenance");
    }
    list_rates(&mut out, &ctx, &req, Stage::BeforeAuth);
    if let v @ Verdict::Respond(_) = cors::preflight(&req, &ctx) {
        let allowed = matches!(&v, Verdict::Respond(r) if r.status() == 204);
        let word = if allowed { "allowed" } else { "refused" };
        let mut out = answered(out, v, format!("CORS preflight {word}"));
        out.preflight = Some(out.response_headers.clone());
        return out;
    }
    if let Some(v) = offline_auth(&mut out, &req, &mut ctx, jwks) {
        let state = out.auth.as_ref().map_or("", |a| a.state.as_str());
        let summary = format!("auth: {state}");
        return answered(out, v, summary);
    }
    list_rates(&mut out, &ctx, &req, Stage::Subject);
    let Some(route) = ctx.route() else {
        return out;
    };
    if let RouteKind::Static { bundle } = &route.kind {
        let (file, summary) = match static_files::lookup(&req, &ctx.routing.path, bundle) {
            Lookup::File(path, _) => {
                let name = AssetBundle::file_name(&path).into_owned();
                let summary = format!("file {name}");
                (Some(name), summary)
            }
            Lookup::Fallback(_) => (Some("fallback".into()), "SPA fallback".into()),
            Lookup::MethodNotAllowed => (None, "static: GET and HEAD only".into()),
            Lookup::BadPath => (None, "static: path does not decode".into()),
            Lookup::NotFound => (None, "static: no file".into()),
        };
        let v = static_files::serve(&req, &mut ctx);
        let mut out = answered(out, v, summary);
        if let Some(file) = file {
            let h = &out.response_headers;
            out.static_file = Some(StaticOutcome {
                file,
                cache_control: value_of(h, "cache-control"),
                content_type: value_of(h, "content-type"),
            });
        }
        return out;
    }
    // Proxied: the head pingora would send upstream is the downstream one after the filter.
    let mut up = req.clone();
    let upgrade = pingora_core::protocols::http::v1::common::is_upgrade_req(&req);
    if let Err(e) = upstream::request(&req, upgrade, &mut up, &ctx) {
        out.summary = format!("upstream head could not be built: {e}");
        return out;
    }
    let path = String::from_utf8_lossy(up.raw_path()).into_owned();
    let pools = pools(route, &req.headers);
    let names: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
    out.summary = format!("proxy → {} {path}", names.join(","));
    out.upstream = Some(UpstreamOutcome {
        pools,
        path,
        headers: pairs(&up.headers),
    });
    out
}

/// `http://`: the plain listener redirects everything to HTTPS (or is off).
fn plain_http(mut out: Outcome, rt: &Runtime, req: &pingora_http::RequestHeader) -> Outcome {
    if rt.listeners.http.is_none() {
        out.summary = "no plain-HTTP listener".into();
        return out;
    }
    let host = crate::http::host::request_host(req);
    let pq = req.uri.path_and_query().map_or("/", |p| p.as_str());
    match crate::redirect::location(host, pq, rt.listeners.redirect_https_port) {
        Some(loc) => {
            out.status = Some(308);
            out.summary = format!("redirect {loc}");
            out.response_headers = vec![("location".into(), loc)];
        }
        None => {
            out.status = Some(400);
            out.summary = "refused: invalid Host".into();
        }
    }
    out
}

/// What `key` found in `out`, spelled as an `expect` value.
fn found(out: &Outcome, key: ExpectKey) -> String {
    let none = || "none".to_string();
    match key {
        ExpectKey::Status => out.status.map_or_else(|| "proxy".into(), |s| s.to_string()),
        ExpectKey::Route => out.route.clone().unwrap_or_else(none),
        ExpectKey::Pool => out.upstream.as_ref().map_or_else(none, |u| {
            let names: Vec<&str> = u.pools.iter().map(|p| p.name.as_str()).collect();
            names.join(",")
        }),
        ExpectKey::File => out
            .static_file
            .as_ref()
            .map_or_else(none, |s| s.file.clone()),
        ExpectKey::RateLimits if out.rate_limits.is_empty() => none(),
        ExpectKey::RateLimits => {
            let names: Vec<&str> = out.rate_limits.iter().map(|r| r.policy.as_str()).collect();
            names.join(",")
        }
        ExpectKey::Auth => out.auth.as_ref().map_or_else(none, |a| a.state.clone()),
    }
}

/// Checks the `expect`s against the outcome.
pub fn check(out: &mut Outcome, expects: &[Expect]) {
    for e in expects {
        let got = found(out, e.key);
        let pass = got == e.want;
        out.checks.push(Check {
            key: e.key,
            want: e.want.clone(),
            got,
            pass,
        });
    }
}
