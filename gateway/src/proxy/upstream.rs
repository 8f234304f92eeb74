//! The proxied request: a healthy peer of the route's pool (another one on retry), passive
//! failure marking, and the request head sent upstream — hop-by-hop headers stripped, the
//! `X-Forwarded-*` family, the request id, the identity headers and their signature, the
//! forwarded path (prefix stripped), then the route's request header rules.

use super::ctx::Ctx;
use crate::split::{By, Choice};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorType, Result};
use pingora_http::RequestHeader;
use std::time::Instant;

/// Chooses the peer of this attempt; on the first, the pool of the route's split
/// ([`crate::split`]), moving to another pool in rotation when the chosen one has no healthy
/// peer (pinned requests stay where they were pinned: a tester must not land elsewhere).
pub fn peer(req: &RequestHeader, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
    let Some(split) = ctx.split() else {
        return Error::e_explain(ErrorType::InternalError, "no proxy route");
    };
    let mut choice = match ctx.upstream.choice {
        Some(c) => c,
        None => split.choose(&req.headers),
    };
    // Only consistent hashing needs a key; round robin ignores it. On the stack: no
    // allocation per request.
    let mut key_bytes = [0u8; 16];
    let key_len = match ctx.client.ip {
        Some(std::net::IpAddr::V4(ip)) => {
            key_bytes[..4].copy_from_slice(&ip.octets());
            4
        }
        Some(std::net::IpAddr::V6(ip)) => {
            key_bytes = ip.octets();
            16
        }
        None => 0,
    };
    let hash_key = |pool: &crate::upstream::Pool| {
        if pool.hashes() {
            &key_bytes[..key_len]
        } else {
            &[][..]
        }
    };
    let mut pool = split.pool(choice.index).clone();
    let mut selected = pool.select(hash_key(&pool), ctx.upstream.peer.as_ref());
    if selected.is_none() {
        // A pin any client can send must not page anyone about a standby pool (weight 0,
        // maybe scaled to 0): that is counted apart from a pool in rotation going dark.
        let standby = choice.by == By::Pin && split.members()[choice.index].weight == 0;
        let kind = if standby {
            "pinned_no_peer"
        } else {
            "no_healthy_peer"
        };
        crate::metrics::UPSTREAM_ERRORS
            .with_label_values(&[pool.name.as_str(), kind])
            .inc();
    }
    // Also on a retry: a connect failure may just have taken the pool's last peer down.
    if selected.is_none() && choice.by != By::Pin {
        for index in split.fallbacks(choice.index) {
            let other = split.pool(index);
            if let Some(addr) = other.select(hash_key(other), None) {
                pool = other.clone();
                selected = Some(addr);
                // Not sticky to the fallback: the next request tries its own colour again.
                choice = Choice {
                    index,
                    by: By::Failover,
                    set_cookie: false,
                };
                break;
            }
        }
    }
    ctx.upstream.attempts += 1;
    ctx.upstream.choice = Some(choice);
    let Some(addr) = selected else {
        return Error::e_explain(
            ErrorType::HTTPStatus(502),
            format!("pool {} has no healthy peer", pool.name),
        );
    };
    let peer = pool
        .peer(&addr)
        .ok_or_else(|| Error::explain(ErrorType::InternalError, "peer is not an inet address"))?;
    ctx.upstream.peer = Some(addr);
    ctx.upstream.started = Some(Instant::now());
    Ok(peer)
}

/// A connect failure: the peer is marked failed, and the request retried on another peer
/// while the pool's retries last (nothing was sent yet, so any method may be retried).
pub fn connect_failed(ctx: &Ctx, mut e: Box<Error>) -> Box<Error> {
    let Some(pool) = ctx.pool() else {
        return e;
    };
    if let Some(addr) = &ctx.upstream.peer {
        pool.mark_failed(addr);
        crate::metrics::UPSTREAM_ERRORS
            .with_label_values(&[pool.name.as_str(), "connect"])
            .inc();
    }
    if ctx.upstream.attempts <= pool.conf.retries {
        e.set_retry(true);
    }
    e
}

/// Rewrites the head sent upstream, from the downstream head and whether it asks for a
/// protocol upgrade (plain inputs: the dry run shows the same head).
pub fn request(
    downstream: &RequestHeader,
    upgrade: bool,
    upstream_request: &mut RequestHeader,
    ctx: &Ctx,
) -> Result<()> {
    let route = ctx.route();
    let strip = route.filter(|r| {
        matches!(
            r.kind,
            crate::route::RouteKind::Proxy {
                strip_prefix: true,
                ..
            }
        )
    });
    let path = &ctx.routing.path;
    // Forward the path the decisions were made on, not the client's spelling of it.
    let new_path = if strip.is_some() || *path != upstream_request.uri.path() {
        let path = strip.map_or(path.as_str(), |r| r.strip(path));
        Some(match upstream_request.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        })
    } else {
        None
    };
    let host = crate::http::host::request_host(downstream);
    let client_ip = crate::text::ip_string(ctx.client.ip);
    // Only a trusted peer is named in `X-Forwarded-For`.
    let peer_ip = if ctx.client.via_trusted_proxy {
        crate::text::ip_string(ctx.client.peer_ip)
    } else {
        String::new()
    };
    let drop_authorization = route
        .and_then(|r| r.auth.as_ref())
        .is_some_and(|policy| !policy.provider.conf.forward_authorization);
    let fwd = Forwarding {
        client_ip: &client_ip,
        peer_ip: &peer_ip,
        append_forwarded_for: ctx.client.via_trusted_proxy,
        host,
        request_id: &ctx.request_id,
        upgrade,
    };
    rewrite_request_head(upstream_request, new_path.as_deref(), |h| {
        if let Some(id) = &ctx.identity {
            for (name, value) in &id.headers {
                h.insert(name.clone(), value.clone());
            }
        }
        if drop_authorization {
            h.remove(http::header::AUTHORIZATION);
        }
        upstream_request_filter(h, &fwd);
        // Route rules last: they see (and may adjust) what the gateway set.
        if let Some(route) = route.filter(|r| !r.request_rules.is_empty()) {
            route.request_rules.apply_request(h, &ctx.vars(route));
        }
    });
    // Last: the signature covers the identity headers as they finally go out.
    if let (Some(signer), Some(id)) = (&ctx.rt.identity_signer, &ctx.identity) {
        let mut names: Vec<&http::HeaderName> = id.headers.iter().map(|(n, _)| n).collect();
        names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        names.dedup();
        let h = &upstream_request.headers;
        let signed: Vec<(&str, &[u8])> = names
            .iter()
            .filter_map(|n| h.get(*n).map(|v| (n.as_str(), v.as_bytes())))
            .collect();
        let rid = h
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let pq = upstream_request
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let value = signer.signature(now, upstream_request.method.as_str(), pq, rid, &signed);
        upstream_request.insert_header(crate::identity::SIGNATURE, value)?;
    }
    Ok(())
}

/// Headers that describe one hop only and must not be forwarded (RFC 9110 §7.6.1).
/// Names, not strings: a `&str` is parsed into a header name on every removal.
const HOP_BY_HOP: [http::HeaderName; 8] = [
    http::HeaderName::from_static("keep-alive"),
    http::HeaderName::from_static("proxy-connection"),
    // Only meaningful with an `h2c` upgrade, which is never passed on.
    http::HeaderName::from_static("http2-settings"),
    http::header::TE,
    http::header::TRAILER,
    http::header::TRANSFER_ENCODING,
    http::header::PROXY_AUTHENTICATE,
    http::header::PROXY_AUTHORIZATION,
];

/// Facts about the downstream request the upstream request is rewritten with.
pub struct Forwarding<'a> {
    /// Client address (resolved through trusted proxies).
    pub client_ip: &'a str,
    /// The TCP peer (a trusted proxy when `append_forwarded_for`).
    pub peer_ip: &'a str,
    /// Append the peer to the client's `X-Forwarded-For` (trusted peer) instead of replacing it.
    pub append_forwarded_for: bool,
    /// Host the client asked for (with port if any).
    pub host: &'a str,
    /// The request id sent upstream and echoed downstream.
    pub request_id: &'a str,
    /// Whether the client asked for a protocol upgrade; only `Upgrade: websocket` is kept.
    pub upgrade: bool,
}

/// Removes hop-by-hop headers, those named in `Connection` and `Forwarded`; keeps `Upgrade`
/// for a protocol upgrade.
fn strip_hop_by_hop(h: &mut http::HeaderMap, upgrade: bool) {
    // Headers named in Connection are hop-by-hop too; collect before removing.
    let named: Vec<String> = h
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty() && t != "upgrade" && t != "close" && t != "keep-alive")
        .collect();
    for n in &named {
        // Never let a client strip the identity headers we are about to set.
        if !n.starts_with("x-forwarded") && n != "x-real-ip" && n != "x-request-id" {
            h.remove(n.as_str());
        }
    }
    for name in &HOP_BY_HOP {
        h.remove(name);
    }
    h.remove(http::header::CONNECTION);
    if !upgrade {
        h.remove(http::header::UPGRADE);
    }
    h.remove(http::header::FORWARDED);
}

/// `upstream_request_filter`: hop-by-hop stripping and the `X-Forwarded-*` family, on the
/// request's plain header map (see [`rewrite_request_head`]).
pub fn upstream_request_filter(h: &mut http::HeaderMap, fwd: &Forwarding<'_>) {
    // One pass over the (few) names instead of a hash probe per hop-by-hop header: most
    // requests carry none of them.
    let strip = h.keys().any(|k| {
        k == http::header::CONNECTION
            || k == http::header::UPGRADE
            || k == http::header::FORWARDED
            || HOP_BY_HOP.contains(k)
    });
    // Only a WebSocket upgrade is passed on: `h2c` and other upgrades would let a backend
    // switch the connection to a protocol the gateway no longer inspects (h2c smuggling).
    let upgrade = fwd.upgrade
        && h.get(http::header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if strip {
        strip_hop_by_hop(h, upgrade);
    }
    if upgrade {
        h.insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("upgrade"),
        );
    }

    // From an untrusted peer, whatever the client claims is replaced, never passed on.
    let prev: Vec<&str> = if fwd.append_forwarded_for {
        h.get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect()
    } else {
        Vec::new()
    };
    let xff = if prev.is_empty() {
        value(fwd.client_ip)
    } else {
        value(&format!("{}, {}", prev.join(", "), fwd.peer_ip))
    };
    // Room for the five below (and a few route rules) in one grow, not one rehash per insert.
    h.reserve(8);
    let set = [
        (X_FORWARDED_FOR, xff),
        (
            X_FORWARDED_PROTO,
            Some(http::HeaderValue::from_static("https")),
        ),
        (X_FORWARDED_HOST, value(fwd.host)),
        (X_REAL_IP, value(fwd.client_ip)),
        (X_REQUEST_ID, value(fwd.request_id)),
    ];
    for (name, v) in set {
        match v {
            Some(v) => {
                h.insert(name, v);
            }
            // Never forward a client's copy of a header we could not set.
            None => {
                h.remove(name);
            }
        }
    }
    if !h.contains_key(http::header::HOST) && !fwd.host.is_empty() {
        // HTTP/2 clients send :authority instead of Host; HTTP/1.1 peers need Host.
        if let Some(v) = value(fwd.host) {
            h.insert(http::header::HOST, v);
        }
    }
}

const X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");

const X_FORWARDED_PROTO: http::HeaderName = http::HeaderName::from_static("x-forwarded-proto");

const X_FORWARDED_HOST: http::HeaderName = http::HeaderName::from_static("x-forwarded-host");

const X_REAL_IP: http::HeaderName = http::HeaderName::from_static("x-real-ip");

const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

fn value(s: &str) -> Option<http::HeaderValue> {
    http::HeaderValue::from_str(s).ok()
}

/// Rewrites the request sent upstream through its plain `http` parts, then puts it back as
/// a head without a header-case map. pingora's `insert_header`/`remove_header` on a head that
/// keeps the client's header case title-case each name into a new buffer, parse it back and
/// update two maps (≈ 20 k instructions a proxied request, ≈ 17 %); on the plain map a
/// constant name costs a hash and a probe. Header names reach the backend lower-cased
/// (standard ones title-cased), as Envoy sends them; names are case-insensitive (RFC 9110
/// §5.1). A target the URI does not reproduce (absolute-form) is kept verbatim.
pub fn rewrite_request_head(
    req: &mut RequestHeader,
    new_path: Option<&str>,
    edit: impl FnOnce(&mut http::HeaderMap),
) {
    let placeholder = RequestHeader::from(http::Request::new(()).into_parts().0);
    let old = std::mem::replace(req, placeholder);
    let raw = old.raw_path();
    let verbatim = (new_path.is_none()
        && old.uri.path_and_query().map(|p| p.as_str().as_bytes()) != Some(raw))
    .then(|| raw.to_vec());
    let mut parts = http::request::Parts::from(old);
    edit(&mut parts.headers);
    if let Some(uri) = new_path.and_then(|p| p.parse::<http::Uri>().ok()) {
        parts.uri = uri;
    }
    *req = RequestHeader::from(parts);
    if let Some(raw) = verbatim {
        let _ = req.set_raw_path(&raw);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_headers_are_set_and_hop_by_hop_removed() {
        let mut req = RequestHeader::build("GET", b"/api/x?q=1", None).expect("req");
        req.insert_header("X-Forwarded-For", "10.0.0.1").expect("h");
        req.insert_header("Connection", "close, X-Secret, X-Forwarded-Proto")
            .expect("h");
        req.insert_header("X-Secret", "1").expect("h");
        req.insert_header("Keep-Alive", "timeout=5").expect("h");
        req.insert_header("TE", "trailers").expect("h");
        let fwd = Forwarding {
            client_ip: "127.0.0.9",
            peer_ip: "127.0.0.9",
            append_forwarded_for: true,
            host: "example.com",
            request_id: "abc",
            upgrade: false,
        };
        rewrite_request_head(&mut req, Some("/x?q=1"), |h| {
            upstream_request_filter(h, &fwd)
        });
        let h = |n: &str| {
            req.headers
                .get(n)
                .map(|v| v.to_str().unwrap_or("?").to_string())
        };
        assert_eq!(h("x-forwarded-for").as_deref(), Some("10.0.0.1, 127.0.0.9"));
        // Untrusted peer: replaced.
        let mut req2 = RequestHeader::build("GET", b"/", None).expect("req");
        req2.insert_header("X-Forwarded-For", "6.6.6.6").expect("h");
        req2.insert_header("Forwarded", "for=6.6.6.6").expect("h");
        let untrusted = Forwarding {
            append_forwarded_for: false,
            ..fwd
        };
        rewrite_request_head(&mut req2, None, |h| upstream_request_filter(h, &untrusted));
        assert_eq!(req2.headers["x-forwarded-for"], "127.0.0.9");
        assert!(req2.headers.get("forwarded").is_none());
        assert_eq!(h("x-forwarded-proto").as_deref(), Some("https"));
        assert_eq!(h("x-forwarded-host").as_deref(), Some("example.com"));
        assert_eq!(h("x-real-ip").as_deref(), Some("127.0.0.9"));
        assert_eq!(h("x-request-id").as_deref(), Some("abc"));
        assert_eq!(h("host").as_deref(), Some("example.com"));
        assert!(h("x-secret").is_none());
        assert!(h("keep-alive").is_none());
        assert!(h("te").is_none());
        assert!(h("connection").is_none());
        assert_eq!(req.uri.to_string(), "/x?q=1");
        assert_eq!(req.raw_path(), b"/x?q=1");
        // What goes on the wire: no case map left, standard names title-cased.
        let mut wire = Vec::new();
        req.header_to_h1_wire(&mut wire);
        let wire = String::from_utf8(wire).expect("utf8");
        assert!(
            wire.contains("x-forwarded-for: 10.0.0.1, 127.0.0.9\r\n"),
            "{wire}"
        );
        assert!(wire.contains("Host: example.com\r\n"), "{wire}");
    }

    #[test]
    fn each_hop_by_hop_header_is_stripped_even_alone() {
        let fwd = Forwarding {
            client_ip: "127.0.0.9",
            peer_ip: "127.0.0.9",
            append_forwarded_for: false,
            host: "example.com",
            request_id: "abc",
            upgrade: false,
        };
        let alone = [
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "transfer-encoding",
            "proxy-authenticate",
            "proxy-authorization",
            "upgrade",
            "forwarded",
            "connection",
            "http2-settings",
        ];
        for name in alone {
            let mut h = http::HeaderMap::new();
            h.insert(http::header::ACCEPT, http::HeaderValue::from_static("*/*"));
            h.insert(
                http::HeaderName::from_static(name),
                http::HeaderValue::from_static("x"),
            );
            upstream_request_filter(&mut h, &fwd);
            assert!(h.get(name).is_none(), "{name} kept");
            assert_eq!(h["accept"], "*/*", "{name}");
        }
        // An upgrade keeps Upgrade and says so in Connection.
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::UPGRADE,
            http::HeaderValue::from_static("websocket"),
        );
        h.insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("Upgrade, X-Drop"),
        );
        h.insert("x-drop", http::HeaderValue::from_static("1"));
        upstream_request_filter(
            &mut h,
            &Forwarding {
                upgrade: true,
                ..fwd
            },
        );
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert!(h.get("x-drop").is_none());
        // Any other upgrade (h2c here) loses Upgrade, Connection and what Connection named.
        let mut h = http::HeaderMap::new();
        h.insert(http::header::UPGRADE, http::HeaderValue::from_static("h2c"));
        h.insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("Upgrade, HTTP2-Settings"),
        );
        h.insert("http2-settings", http::HeaderValue::from_static("AAMAAABk"));
        upstream_request_filter(
            &mut h,
            &Forwarding {
                upgrade: true,
                ..fwd
            },
        );
        for name in ["upgrade", "connection", "http2-settings"] {
            assert!(h.get(name).is_none(), "{name} kept on an h2c upgrade");
        }
    }

    #[test]
    fn a_target_the_uri_does_not_reproduce_is_kept_verbatim() {
        let mut req =
            RequestHeader::build("GET", b"http://example.com/a?b=1", None).expect("absolute-form");
        let before = req.raw_path().to_vec();
        rewrite_request_head(&mut req, None, |h| {
            h.insert("x-a", http::HeaderValue::from_static("1"));
        });
        assert_eq!(req.raw_path(), &before[..]);
        assert_eq!(req.headers["x-a"], "1");
        // A rewritten path replaces it.
        rewrite_request_head(&mut req, Some("/b"), |_| {});
        assert_eq!(req.raw_path(), b"/b");
    }
}
