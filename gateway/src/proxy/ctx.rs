//! The per-request context: the runtime snapshot taken when the request starts, and what each
//! phase learned, grouped by who writes it. Phases read and fill it; only the dispatcher
//! ([`super`]) writes to the session.

use crate::auth::Identity;
use crate::http::conneg::Encoding;
use crate::rate_limit::RatePolicy;
use crate::route::Route;
use crate::runtime::Runtime;
use pingora_core::protocols::l4::socket::SocketAddr as PeerAddr;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

/// Per-request state. Holds the runtime snapshot taken when the request started.
pub struct Ctx {
    /// The config generation this request runs under, start to finish.
    pub rt: Arc<Runtime>,
    /// Sent upstream and echoed as `X-Request-Id`.
    pub request_id: String,
    /// Who sent the request.
    pub client: Client,
    /// Where the request goes.
    pub routing: Routing,
    /// What the verified token grants (routes with `auth = "jwt"`).
    pub identity: Option<Arc<Identity>>,
    /// The rate-limit state reported in the response headers.
    pub rate: Rate,
    /// The upstream attempts of a proxied request.
    pub upstream: Upstream,
    /// What was answered, for metrics and the access log.
    pub acct: Accounting,
}

/// The client, as the hygiene phase resolved it.
#[derive(Debug, Default)]
pub struct Client {
    /// Client IP: the TCP peer, or from `X-Forwarded-For` when the peer is a trusted proxy.
    pub ip: Option<IpAddr>,
    /// The TCP peer's IP.
    pub peer_ip: Option<IpAddr>,
    /// Whether the peer is a trusted proxy (its `X-Forwarded-For` is appended to).
    pub via_trusted_proxy: bool,
}

/// The route decision.
#[derive(Debug, Default)]
pub struct Routing {
    /// Index of the matched route in `rt.routes` (read it through [`Ctx::route`]).
    pub index: Option<usize>,
    /// The normalised request path every decision uses ([`crate::path`]).
    pub path: String,
}

/// The tightest rate-limit policy that applied.
#[derive(Debug, Default)]
pub struct Rate {
    /// The policy, with the requests it has left.
    pub tightest: Option<(Arc<RatePolicy>, u32)>,
    /// `RateLimit: t=` of a 429 (the retry delay).
    pub reset_override: Option<u64>,
}

/// Upstream attempts.
#[derive(Debug, Default)]
pub struct Upstream {
    /// The pool of the route's split this request goes to, decided before the first peer.
    pub choice: Option<crate::split::Choice>,
    /// Peer of the last attempt (excluded on retry).
    pub peer: Option<PeerAddr>,
    /// Connect attempts so far.
    pub attempts: u8,
    /// When the upstream peer was chosen (for upstream timing).
    pub started: Option<Instant>,
    /// Milliseconds from peer choice to the upstream response head.
    pub ms: Option<f64>,
    /// Proxied by [`super::exchange`] (not pingora-proxy): its failures are logged as proxy
    /// failures by `fail_to_proxy`, not as pingora's "Fail to filter request".
    pub direct: bool,
}

/// What the request cost and got.
#[derive(Debug)]
pub struct Accounting {
    /// When the request started.
    pub started: Instant,
    /// Status sent downstream (0 until known).
    pub status: u16,
    /// Request body bytes seen.
    pub body_bytes: u64,
    /// Body bytes the gateway wrote itself (static files, errors).
    pub body_sent: u64,
    /// Encoding chosen for a static response.
    pub encoding: Option<Encoding>,
    /// The request's body framing was refused (conflicting or malformed `Content-Length` /
    /// `Transfer-Encoding`): its bytes are never parsed, the connection just closes.
    pub unframed: bool,
}

impl Ctx {
    /// A context over the runtime snapshot `rt`.
    pub fn new(rt: Arc<Runtime>) -> Self {
        Self {
            rt,
            request_id: String::new(),
            client: Client::default(),
            routing: Routing::default(),
            identity: None,
            rate: Rate::default(),
            upstream: Upstream::default(),
            acct: Accounting {
                started: Instant::now(),
                status: 0,
                body_bytes: 0,
                body_sent: 0,
                encoding: None,
                unframed: false,
            },
        }
    }

    /// The matched route, once routing ran.
    pub fn route(&self) -> Option<&Route> {
        self.routing.index.map(|i| &self.rt.routes[i])
    }

    /// The split of the matched proxy route.
    pub fn split(&self) -> Option<&crate::split::Split> {
        match &self.route()?.kind {
            crate::route::RouteKind::Proxy { split, .. } => Some(split),
            crate::route::RouteKind::Static { .. } => None,
        }
    }

    /// The pool this proxied request went to, once chosen.
    pub fn pool(&self) -> Option<&Arc<crate::upstream::Pool>> {
        let choice = self.upstream.choice?;
        Some(self.split()?.pool(choice.index))
    }

    /// Variables of header rules for this request.
    pub fn vars<'a>(&'a self, route: &'a Route) -> crate::headers::Vars<'a> {
        crate::headers::Vars {
            request_id: &self.request_id,
            client_ip: self.client.ip,
            route: &route.name,
        }
    }
}
