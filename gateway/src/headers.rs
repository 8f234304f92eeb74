//! Per-route header rules: `request_headers` (before proxying) and `response_headers` (before
//! sending), each `remove`, then `set`, then `add`.
//!
//! Rules run after the gateway's own headers, so an operator can see and adjust the final
//! result. A request's own headers have been processed by then: hop-by-hop headers and every
//! header the client named in `Connection` were stripped *before* the gateway added its own,
//! so a client can never remove `X-Forwarded-For`, `X-Request-Id` or an identity header by
//! naming it in `Connection`.
//!
//! Values may use `{request_id}`, `{client_ip}` and `{route}` (`{{`/`}}` for literal braces);
//! values without variables are compiled into header values once, at config load.

use http::{HeaderName, HeaderValue};
use pingora_http::ResponseHeader;
use std::collections::BTreeMap;

/// Headers whose framing or hop-by-hop meaning the gateway owns: no rule may touch them.
const FRAMING: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Var {
    RequestId,
    ClientIp,
    Route,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Var(Var),
}

/// A compiled header value.
#[derive(Debug, Clone)]
enum Value {
    Fixed(HeaderValue),
    Template(Vec<Part>),
}

/// The values variables take for one request.
pub struct Vars<'a> {
    /// The request id sent upstream and echoed.
    pub request_id: &'a str,
    /// The client IP (after trusted-proxy resolution).
    pub client_ip: Option<std::net::IpAddr>,
    /// The matched route's name.
    pub route: &'a str,
}

/// Why a header rule's value template is refused.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    /// A `}` without its `{`.
    #[error("`{0}`: unmatched `}}` (write `}}}}`)")]
    Unmatched(String),
    /// A `{` without its `}`.
    #[error("`{0}`: unclosed `{{`")]
    Unclosed(String),
    /// A `{name}` that is not a variable.
    #[error("`{0}`: unknown variable `{{{1}}}` (known: {{request_id}}, {{client_ip}}, {{route}})")]
    UnknownVariable(String, String),
    /// Bytes no header value may hold.
    #[error("`{0}` is not a valid header value")]
    Invalid(String),
}

/// Why a header rule is refused.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    /// Not a header name.
    #[error("`{0}` is not a valid header name")]
    BadName(String),
    /// Framing, identity or encoding headers belong to the gateway.
    #[error("`{0}` is managed by the gateway and can't be changed by rules")]
    Managed(String),
    /// The value template of header `.0`.
    #[error("`{0}`: {1}")]
    Value(String, ValueError),
    /// A request without `Host` can't be forwarded.
    #[error("`host` can be set but not removed")]
    HostRemoved,
}

impl Value {
    fn parse(text: &str) -> Result<Self, ValueError> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = text;
        while let Some(i) = rest.find(['{', '}']) {
            lit.push_str(&rest[..i]);
            let tail = &rest[i..];
            if tail.starts_with("{{") || tail.starts_with("}}") {
                lit.push_str(&tail[..1]);
                rest = &tail[2..];
                continue;
            }
            if tail.starts_with('}') {
                return Err(ValueError::Unmatched(text.into()));
            }
            let end = tail
                .find('}')
                .ok_or_else(|| ValueError::Unclosed(text.into()))?;
            let var = match &tail[1..end] {
                "request_id" => Var::RequestId,
                "client_ip" => Var::ClientIp,
                "route" => Var::Route,
                other => return Err(ValueError::UnknownVariable(text.into(), other.into())),
            };
            if !lit.is_empty() {
                parts.push(Part::Lit(std::mem::take(&mut lit)));
            }
            parts.push(Part::Var(var));
            rest = &tail[end + 1..];
        }
        lit.push_str(rest);
        if parts.is_empty() {
            return HeaderValue::from_str(&lit)
                .map(Value::Fixed)
                .map_err(|_| ValueError::Invalid(text.into()));
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        for p in &parts {
            if let Part::Lit(l) = p {
                if HeaderValue::from_str(l).is_err() {
                    return Err(ValueError::Invalid(text.into()));
                }
            }
        }
        Ok(Value::Template(parts))
    }

    fn render(&self, vars: &Vars<'_>) -> Option<HeaderValue> {
        match self {
            Value::Fixed(v) => Some(v.clone()),
            Value::Template(parts) => {
                let mut s = Vec::with_capacity(64);
                for p in parts {
                    match p {
                        Part::Lit(l) => s.extend_from_slice(l.as_bytes()),
                        Part::Var(Var::RequestId) => {
                            s.extend_from_slice(vars.request_id.as_bytes())
                        }
                        Part::Var(Var::Route) => s.extend_from_slice(vars.route.as_bytes()),
                        Part::Var(Var::ClientIp) => {
                            if let Some(ip) = vars.client_ip {
                                crate::text::push_ip(&mut s, ip);
                            }
                        }
                    }
                }
                HeaderValue::from_str(std::str::from_utf8(&s).ok()?).ok()
            }
        }
    }
}

/// Which side a rule set applies to (they refuse different names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Request headers sent upstream.
    Request,
    /// Response headers sent to the client.
    Response,
}

/// One route's rules for one side, in application order.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, Value)>,
    add: Vec<(HeaderName, Value)>,
}

/// What the config file holds for one side.
pub struct RulesSpec<'a> {
    /// Header names to remove.
    pub remove: &'a [String],
    /// Name → value, replacing any existing value.
    pub set: &'a BTreeMap<String, String>,
    /// Name → value, appended.
    pub add: &'a BTreeMap<String, String>,
}

impl Rules {
    /// Compiles rules; every problem is reported. `protected` are names no rule may touch on
    /// this side besides the framing headers (identity headers on requests).
    pub fn compile(
        spec: &RulesSpec<'_>,
        side: Side,
        protected: &[HeaderName],
    ) -> Result<Self, Vec<RuleError>> {
        let mut errors = Vec::new();
        let mut name = |n: &str| -> Option<HeaderName> {
            let Ok(h) = HeaderName::from_bytes(n.as_bytes()) else {
                errors.push(RuleError::BadName(n.into()));
                return None;
            };
            let owned = FRAMING.contains(&h.as_str())
                || protected.contains(&h)
                || (side == Side::Response && h == http::header::CONTENT_ENCODING);
            if owned {
                errors.push(RuleError::Managed(n.into()));
                return None;
            }
            Some(h)
        };
        let remove: Vec<HeaderName> = spec.remove.iter().filter_map(|n| name(n)).collect();
        let mut pairs = |map: &BTreeMap<String, String>| -> Vec<(HeaderName, String, String)> {
            map.iter()
                .filter_map(|(n, v)| name(n).map(|h| (h, n.clone(), v.clone())))
                .collect()
        };
        let set_raw = pairs(spec.set);
        let add_raw = pairs(spec.add);
        let mut values = |raw: Vec<(HeaderName, String, String)>| -> Vec<(HeaderName, Value)> {
            raw.into_iter()
                .filter_map(|(h, n, v)| match Value::parse(&v) {
                    Ok(v) => Some((h, v)),
                    Err(e) => {
                        errors.push(RuleError::Value(n, e));
                        None
                    }
                })
                .collect()
        };
        let set = values(set_raw);
        let add = values(add_raw);
        if side == Side::Request && remove.contains(&http::header::HOST) {
            errors.push(RuleError::HostRemoved);
        }
        if errors.is_empty() {
            Ok(Rules { remove, set, add })
        } else {
            Err(errors)
        }
    }

    /// Whether there is nothing to do (checked before building variables).
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    /// Applies the rules to a request going upstream.
    pub fn apply_request(&self, req: &mut http::HeaderMap, vars: &Vars<'_>) {
        self.apply(req, vars);
    }

    /// Applies the rules to a response going to the client.
    pub fn apply_response(&self, resp: &mut impl Head, vars: &Vars<'_>) {
        self.apply(resp, vars);
    }

    fn apply(&self, head: &mut impl Head, vars: &Vars<'_>) {
        for n in &self.remove {
            head.remove(n);
        }
        for (n, v) in &self.set {
            if let Some(v) = v.render(vars) {
                head.set(n, v);
            }
        }
        for (n, v) in &self.add {
            if let Some(v) = v.render(vars) {
                head.add(n, v);
            }
        }
    }
}

/// The header operations rules need, on request and response heads alike.
pub trait Head {
    /// Removes every value of `name`.
    fn remove(&mut self, name: &HeaderName);
    /// Replaces the values of `name` with `value`.
    fn set(&mut self, name: &HeaderName, value: HeaderValue);
    /// Appends `value` to `name`.
    fn add(&mut self, name: &HeaderName, value: HeaderValue);
}

macro_rules! impl_head {
    ($t:ty) => {
        impl Head for $t {
            fn remove(&mut self, name: &HeaderName) {
                self.remove_header(name);
            }
            fn set(&mut self, name: &HeaderName, value: HeaderValue) {
                let _ = self.insert_header(name.clone(), value);
            }
            fn add(&mut self, name: &HeaderName, value: HeaderValue) {
                let _ = self.append_header(name.clone(), value);
            }
        }
    };
}
impl_head!(ResponseHeader);

impl Head for http::HeaderMap {
    fn remove(&mut self, name: &HeaderName) {
        http::HeaderMap::remove(self, name);
    }
    fn set(&mut self, name: &HeaderName, value: HeaderValue) {
        self.insert(name.clone(), value);
    }
    fn add(&mut self, name: &HeaderName, value: HeaderValue) {
        self.append(name.clone(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars<'static> {
        Vars {
            request_id: "rid-1",
            client_ip: Some("192.0.2.7".parse().expect("ip")),
            route: "api",
        }
    }

    #[test]
    fn templates_render_variables_and_escapes() {
        let v = Value::parse("{request_id}@{client_ip} via {route} {{x}}").expect("parse");
        assert_eq!(
            v.render(&vars()).expect("value"),
            "rid-1@192.0.2.7 via api {x}"
        );
        assert!(matches!(
            Value::parse("plain {{braces}}").expect("p"),
            Value::Fixed(_)
        ));
        assert!(Value::parse("{nope}")
            .expect_err("refused")
            .to_string()
            .contains("unknown variable"));
        assert!(Value::parse("{request_id")
            .expect_err("refused")
            .to_string()
            .contains("unclosed"));
        assert!(Value::parse("a}b")
            .expect_err("refused")
            .to_string()
            .contains("unmatched"));
        assert!(Value::parse("bad\nvalue").is_err());
    }

    #[test]
    fn order_is_remove_set_add_and_framing_is_refused() {
        let set = BTreeMap::from([("x-a".to_string(), "set".to_string())]);
        let add = BTreeMap::from([("x-a".to_string(), "{route}".to_string())]);
        let rules = Rules::compile(
            &RulesSpec {
                remove: &["x-a".into(), "x-b".into()],
                set: &set,
                add: &add,
            },
            Side::Request,
            &[],
        )
        .expect("rules");
        let mut req = http::HeaderMap::new();
        req.insert("x-a", HeaderValue::from_static("client"));
        req.insert("x-b", HeaderValue::from_static("client"));
        rules.apply_request(&mut req, &vars());
        let got: Vec<_> = req.get_all("x-a").iter().collect();
        assert_eq!(got, ["set", "api"]);
        assert!(req.get("x-b").is_none());

        let empty = BTreeMap::new();
        let errs = Rules::compile(
            &RulesSpec {
                remove: &[
                    "transfer-encoding".into(),
                    "x-user-id".into(),
                    "host".into(),
                    "bad name".into(),
                ],
                set: &empty,
                add: &empty,
            },
            Side::Request,
            &[HeaderName::from_static("x-user-id")],
        )
        .expect_err("refused");
        assert_eq!(errs.len(), 4, "{errs:?}");
    }
}
