//! `[[routes]]`: each route compiled with its kind (pool or asset bundle), auth policy, rate
//! rules, CORS, compression and header rules; every problem of every route reported.

use super::super::file::{self as file, AuthModeConf, GatewayConf, RouteConf, RouteKindConf};
use super::super::source::{Problem, Source};
use crate::auth::JwtProvider;
use crate::path::resolve;
use crate::rate_limit::RatePolicy;
use crate::route::{Route, RouteKind};
use crate::runtime::Runtime;
use crate::static_files::{AssetBundle, StaticOptions};
use crate::upstream::Pool;
use serde_spanned::Spanned;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// What routes refer to by name, compiled before them.
pub struct Referenced<'a> {
    /// Upstream pools.
    pub pools: &'a HashMap<String, Arc<Pool>>,
    /// JWT providers.
    pub providers: &'a HashMap<String, Arc<JwtProvider>>,
    /// Rate-limit policies.
    pub rate_policies: &'a HashMap<String, Arc<RatePolicy>>,
    /// Identity headers no request rule may touch.
    pub strip_headers: &'a [http::HeaderName],
}

/// Routes in match order.
pub fn routes(
    conf: &GatewayConf,
    base: &Path,
    previous: Option<&Runtime>,
    refs: Referenced<'_>,
    src: &Source,
    problems: &mut Vec<Problem>,
) -> Vec<Route> {
    let Referenced {
        pools,
        providers,
        rate_policies,
        strip_headers,
    } = refs;
    // Routes. Proxy prefixes never fall back to a static shell.
    let proxy_prefixes: Vec<String> = conf
        .routes
        .iter()
        .filter(|r| r.get_ref().kind == RouteKindConf::Proxy)
        .map(|r| r.get_ref().prefix.clone())
        .collect();
    let mut routes = Vec::new();
    let mut names = std::collections::HashSet::new();
    for r in &conf.routes {
        let rc = r.get_ref();
        if !names.insert(rc.name.clone()) {
            problems.push(src.problem(r, format!("route name `{}` is used twice", rc.name)));
        }
        if !rc.prefix.starts_with('/') {
            problems.push(src.problem(
                r,
                format!(
                    "route `{}`: prefix `{}` must start with `/`",
                    rc.name, rc.prefix
                ),
            ));
        }
        let kind = match rc.kind {
            RouteKindConf::Proxy => {
                if rc.root.is_some() {
                    problems.push(src.problem(
                        r,
                        format!("route `{}`: `root` is only for static routes", rc.name),
                    ));
                }
                super::split::split(r, conf, base, pools, strip_headers, src, problems).map(
                    |split| RouteKind::Proxy {
                        split,
                        strip_prefix: rc.strip_prefix,
                    },
                )
            }
            RouteKindConf::Static => match &rc.root {
                None => {
                    problems.push(src.problem(
                        r,
                        format!("route `{}`: a static route needs `root`", rc.name),
                    ));
                    None
                }
                Some(root) => {
                    let dir = resolve(base, root.get_ref());
                    if !dir.is_dir() {
                        problems.push(src.problem(
                            root,
                            format!(
                                "route `{}`: root directory {} does not exist",
                                rc.name,
                                dir.display()
                            ),
                        ));
                        None
                    } else {
                        static_bundle(rc, &dir, &proxy_prefixes, src, previous, problems)
                            .map(|bundle| RouteKind::Static { bundle })
                    }
                }
            },
        };
        if rc.kind != RouteKindConf::Proxy {
            super::split::refuse_on_static(rc, src, problems);
        }
        let auth = route_auth(rc, providers, src, problems);
        let rules = route_rate_rules(rc, rate_policies, src, r, problems);
        let cors = match &rc.cors {
            None => Ok(None),
            Some(c) => crate::cors::Cors::try_from_conf(c.get_ref())
                .map(Some)
                .map_err(|e| {
                    problems.push(src.problem(c, format!("route `{}`: cors: {e}", rc.name)));
                }),
        };
        let compress = rc.compress.then(|| crate::route::Compress {
            level: rc.compress_level.unwrap_or(4).clamp(1, 11),
            min_bytes: rc.compress_min_bytes.unwrap_or(1024),
            types: rc.compress_types.clone().unwrap_or_else(|| {
                [
                    "text/",
                    "application/json",
                    "application/javascript",
                    "application/xml",
                    "application/problem+json",
                    "image/svg+xml",
                ]
                .map(String::from)
                .to_vec()
            }),
        });
        let mut header_rules = |spec: &Option<serde_spanned::Spanned<file::HeaderRulesConf>>,
                                side: crate::headers::Side| {
            let Some(spec) = spec else {
                return Some(crate::headers::Rules::default());
            };
            let what = match side {
                crate::headers::Side::Request => "request_headers",
                crate::headers::Side::Response => "response_headers",
            };
            if side == crate::headers::Side::Request && rc.kind != RouteKindConf::Proxy {
                problems.push(src.problem(
                    spec,
                    format!("route `{}`: {what} is only for proxy routes", rc.name),
                ));
                return None;
            }
            let h = spec.get_ref();
            let protected: &[http::HeaderName] = match side {
                crate::headers::Side::Request => strip_headers,
                crate::headers::Side::Response => &[],
            };
            crate::headers::Rules::compile(
                &crate::headers::RulesSpec {
                    remove: &h.remove,
                    set: &h.set,
                    add: &h.add,
                },
                side,
                protected,
            )
            .map_err(|errors| {
                for e in errors {
                    problems.push(src.problem(spec, format!("route `{}`: {what}: {e}", rc.name)));
                }
            })
            .ok()
        };
        let request_rules = header_rules(&rc.request_headers, crate::headers::Side::Request);
        let response_rules = header_rules(&rc.response_headers, crate::headers::Side::Response);
        if rc.replace_upstream_errors && rc.kind != RouteKindConf::Proxy {
            problems.push(src.problem(
                r,
                format!(
                    "route `{}`: replace_upstream_errors is only for proxy routes",
                    rc.name
                ),
            ));
        }
        if let (Some(kind), Ok(auth), Some(rules), Ok(cors), Some(req_rules), Some(resp_rules)) =
            (kind, auth, rules, cors, request_rules, response_rules)
        {
            let mut route = Route::new(&rc.name, &rc.prefix, rc.host.as_deref(), kind);
            route.auth = auth;
            route.rate_rules = rules;
            route.cors = cors;
            route.compress = compress;
            route.maintenance = rc.maintenance;
            route.request_rules = req_rules;
            route.response_rules = resp_rules;
            route.replace_upstream_errors = rc.replace_upstream_errors;
            routes.push(route);
        }
    }

    routes
}

/// Builds (or reuses, when the files are unchanged) the asset bundle of a static route.
fn static_bundle(
    rc: &RouteConf,
    dir: &Path,
    proxy_prefixes: &[String],
    src: &Source,
    previous: Option<&Runtime>,
    problems: &mut Vec<Problem>,
) -> Option<Arc<AssetBundle>> {
    let pattern = rc
        .fingerprint_pattern
        .as_ref()
        .map_or(crate::static_files::DEFAULT_FINGERPRINT, |p| {
            p.get_ref().as_str()
        });
    let fingerprint = match regex::Regex::new(pattern) {
        Ok(r) => r,
        Err(e) => {
            let at = rc
                .fingerprint_pattern
                .as_ref()
                .map_or_else(|| src.file.to_string(), |p| src.problem(p, "").location);
            problems.push(Problem {
                location: at,
                message: format!("route `{}`: fingerprint_pattern: {e}", rc.name),
            });
            return None;
        }
    };
    let mut fallback_exclude = rc.fallback_exclude.clone();
    fallback_exclude.extend(proxy_prefixes.iter().cloned());
    let opts = StaticOptions {
        fallback: match rc.fallback.as_deref() {
            None => Some("index.html".to_string()),
            Some("") => None,
            Some(f) => Some(f.to_string()),
        },
        fallback_exclude,
        fingerprint,
        default_cache_control: rc
            .default_cache_control
            .clone()
            .unwrap_or_else(|| "public, max-age=300".into()),
        rules: rc
            .cache_control
            .iter()
            .map(|r| (r.glob.clone(), r.value.clone()))
            .collect(),
        max_memory_file_bytes: rc.max_memory_file_bytes.unwrap_or(1024 * 1024),
    };
    match AssetBundle::try_load(dir, &opts) {
        Ok(mut bundle) => {
            let old = previous.and_then(|p| {
                p.routes.iter().find_map(|r| match &r.kind {
                    crate::route::RouteKind::Static { bundle } if r.name == rc.name => {
                        Some(bundle.clone())
                    }
                    _ => None,
                })
            });
            match old {
                // Unchanged files and options: keep the previous bundle (and its memory) as is.
                Some(old) if old.digest == bundle.digest && old.same_options(&bundle) => Some(old),
                Some(old) => {
                    let grace = rc
                        .previous_assets_grace_seconds
                        .unwrap_or(crate::static_files::DEFAULT_PREVIOUS_ASSETS_GRACE_SECONDS);
                    bundle.keep_previous(&old, std::time::Duration::from_secs(grace));
                    Some(Arc::new(bundle))
                }
                None => Some(Arc::new(bundle)),
            }
        }
        Err(e) => {
            let at = rc
                .root
                .as_ref()
                .map_or_else(|| src.file.to_string(), |r| src.problem(r, "").location);
            problems.push(Problem {
                location: at,
                message: format!("route `{}`: {e}", rc.name),
            });
            None
        }
    }
}

/// Compiles `auth`, `auth_provider`, `auth_public`, `auth_scopes` of a route.
fn route_auth(
    rc: &RouteConf,
    providers: &HashMap<String, Arc<crate::auth::JwtProvider>>,
    src: &Source,
    problems: &mut Vec<Problem>,
) -> Result<Option<crate::auth::RoutePolicy>, ()> {
    let mode = rc
        .auth
        .as_ref()
        .map_or(&AuthModeConf::None, |a| a.get_ref());
    match mode {
        AuthModeConf::None => {
            if let Some(p) = &rc.auth_provider {
                problems.push(src.problem(
                    p,
                    format!("route `{}`: auth_provider needs auth = \"jwt\"", rc.name),
                ));
                return Err(());
            }
            Ok(None)
        }
        AuthModeConf::Jwt => {
            let Some(pname) = &rc.auth_provider else {
                let at = rc
                    .auth
                    .as_ref()
                    .map_or_else(|| src.file.to_string(), |a| src.problem(a, "").location);
                problems.push(Problem {
                    location: at,
                    message: format!("route `{}`: auth = \"jwt\" needs auth_provider", rc.name),
                });
                return Err(());
            };
            let Some(provider) = providers.get(pname.get_ref()) else {
                problems.push(src.problem(
                    pname,
                    format!(
                        "route `{}`: jwt provider `{}` is not defined (or is invalid)",
                        rc.name,
                        pname.get_ref()
                    ),
                ));
                return Err(());
            };
            match crate::auth::RoutePolicy::try_new(
                provider.clone(),
                &rc.auth_public,
                &rc.auth_scopes,
            ) {
                Ok(p) => Ok(Some(p)),
                Err(e) => {
                    problems.push(src.problem(pname, format!("route `{}`: {e}", rc.name)));
                    Err(())
                }
            }
        }
        AuthModeConf::Unknown(other) => {
            if let Some(a) = &rc.auth {
                problems.push(src.problem(
                    a,
                    format!(
                        "route `{}`: auth must be \"jwt\" or \"none\", not `{other}`",
                        rc.name
                    ),
                ));
            }
            Err(())
        }
    }
}

/// Compiles a route's `rate_limits`.
fn route_rate_rules(
    rc: &RouteConf,
    policies: &HashMap<String, Arc<crate::rate_limit::RatePolicy>>,
    src: &Source,
    at: &Spanned<RouteConf>,
    problems: &mut Vec<Problem>,
) -> Option<Vec<crate::rate_limit::RouteRule>> {
    use crate::config::file::RouteRateConf;
    let mut out = Vec::new();
    let mut ok = true;
    for r in &rc.rate_limits {
        let (name, methods, paths) = match r {
            RouteRateConf::Name(n) => (n, &[][..], &[][..]),
            RouteRateConf::Rule {
                policy,
                methods,
                paths,
            } => (policy, &methods[..], &paths[..]),
        };
        let Some(policy) = policies.get(name) else {
            if !problems
                .iter()
                .any(|p| p.message.contains(&format!("rate limit `{name}`")))
            {
                problems.push(src.problem(
                    at,
                    format!(
                        "route `{}`: rate limit policy `{name}` is not defined in [rate_limits]",
                        rc.name
                    ),
                ));
            }
            ok = false;
            continue;
        };
        let mut ms = Vec::new();
        for m in methods {
            match http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                Ok(m) => ms.push(m),
                Err(_) => {
                    problems.push(
                        src.problem(at, format!("route `{}`: `{m}` is not a method", rc.name)),
                    );
                    ok = false;
                }
            }
        }
        out.push(crate::rate_limit::RouteRule {
            policy: policy.clone(),
            methods: ms,
            paths: paths.to_vec(),
        });
    }
    ok.then_some(out)
}
