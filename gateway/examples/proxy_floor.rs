//! The spike behind #23's choice between patching pingora's proxy loop and building the
//! `/api` path on pingora-core's own pieces: two HTTPS → HTTP/1.1 reverse proxies with none
//! of the gateway's phases, measured by `benches/counts.py` (instructions and allocations per
//! request) beside the gateway and nginx.
//!
//! - `proxy`: pingora-proxy's `proxy_1to1` with a `ProxyHttp` that only names the peer — the
//!   least any pingora-proxy gateway can spend per request.
//! - `hybrid`: pingora-proxy's session and phases, the exchange of `core` run from
//!   `request_filter` (what the gateway's `proxy::exchange` does).
//! - `core`: the same exchange on pingora-core's sessions and upstream connection pool, in one
//!   straight async function (read the request, take a pooled upstream session, write the
//!   head, forward the body both ways, return the connection, keep the client's).
//!
//! `proxy_floor proxy|hybrid|core LISTEN CERT KEY UPSTREAM [THREADS]` (default one worker thread).

use async_trait::async_trait;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora_core::connectors::http::v1::Connector;
use pingora_core::protocols::http::v1::client::HttpSession as UpstreamSession;
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::ShutdownWatch;
use pingora_core::upstreams::peer::{HttpPeer, Peer};
use pingora_error::Result;
use pingora_proxy::{ProxyHttp, Session};
use std::sync::Arc;

mod common;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `proxy` mode: pingora-proxy with nothing but the peer (built once, cloned per request).
struct Floor(HttpPeer);

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();
    fn new_ctx(&self) {}
    async fn upstream_peer(&self, _s: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(self.0.clone()))
    }
}

/// The hop-by-hop fields pingora-proxy strips from a request going upstream (it also removes
/// the fields `Connection` names; the bench's requests name none).
const HOP_BY_HOP: [&str; 10] = [
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "connection",
    "upgrade",
    "http2-settings",
];

/// `core` mode: one request's exchange written against pingora-core directly.
struct Core {
    peer: HttpPeer,
    pool: Connector,
}

impl Core {
    /// Sends the request upstream and reads the response head.
    async fn send(&self, http: &mut ServerSession) -> Result<UpstreamSession> {
        // What pingora-proxy does to every upstream request, so all modes do the same work.
        let mut req = Box::new(http.req_header().clone());
        req.set_version(http::Version::HTTP_11);
        for name in HOP_BY_HOP {
            req.remove_header(name);
        }
        let (mut up, _reused) = self.pool.get_http_session(&self.peer).await?;
        up.write_request_header(req).await?;
        while let Some(chunk) = http.read_request_body().await? {
            up.write_body(&chunk).await?;
        }
        up.finish_body().await?;
        up.read_response().await?;
        Ok(up)
    }

    /// Proxies one request; `false` when either side failed (the client connection closes).
    async fn exchange(&self, http: &mut ServerSession) -> Result<bool> {
        let mut up = self.send(http).await?;
        let resp = up.resp_header().cloned().map(Box::new);
        let Some(resp) = resp else { return Ok(false) };
        http.write_response_header(resp).await?;
        while let Some(chunk) = up.read_body_bytes().await? {
            http.write_response_body(chunk, false).await?;
        }
        http.finish_body().await?;
        // As pingora-proxy: the peer's idle timeout (none by default); the pool checks that
        // the exchange left the connection reusable.
        up.respect_keepalive();
        self.pool
            .release_http_session(up, &self.peer, self.peer.idle_timeout())
            .await;
        Ok(true)
    }
}

/// `hybrid` mode: pingora-proxy's session and phases, the exchange done by `request_filter`
/// on pingora-core's pool (what the gateway can do without leaving pingora-proxy).
struct Hybrid(Core);

#[async_trait]
impl ProxyHttp for Hybrid {
    type CTX = ();
    fn new_ctx(&self) {}
    async fn request_filter(&self, s: &mut Session, _ctx: &mut ()) -> Result<bool> {
        let core = &self.0;
        let mut up = core.send(s.as_downstream_mut()).await?;
        let Some(resp) = up.resp_header().cloned().map(Box::new) else {
            return pingora_error::Error::e_explain(
                pingora_error::ErrorType::InvalidHTTPHeader,
                "no head",
            );
        };
        s.write_response_header(resp, false).await?;
        while let Some(chunk) = up.read_body_bytes().await? {
            s.write_response_body(Some(chunk), false).await?;
        }
        s.write_response_body(None, true).await?;
        up.respect_keepalive();
        core.pool
            .release_http_session(up, &core.peer, core.peer.idle_timeout())
            .await;
        Ok(true)
    }
    async fn upstream_peer(&self, _s: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(self.0.peer.clone()))
    }
}

#[async_trait]
impl HttpServerApp for Core {
    async fn process_new_http(
        self: &Arc<Self>,
        mut http: ServerSession,
        _shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        // `read_request` keeps the client's keep-alive choice, as pingora-proxy does.
        if !http.read_request().await.ok()? {
            return None;
        }
        if !self.exchange(&mut http).await.unwrap_or(false) {
            http.respond_error(502).await.ok()?;
            return None;
        }
        let settings = HttpPersistentSettings::for_session(&http);
        let stream = http.finish().await.ok()??;
        Some(ReusedHttpStream::from_reusable_stream(stream, settings))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (mode, listen, cert, key, upstream, threads) = match args.as_slice() {
        [_, m, l, c, k, u] => (m, l, c, k, u, 1),
        [_, m, l, c, k, u, t] => (m, l, c, k, u, t.parse().unwrap_or(0)),
        _ => (&args[0], &args[0], &args[0], &args[0], &args[0], 0),
    };
    if threads == 0 {
        eprintln!("usage: proxy_floor proxy|hybrid|core LISTEN CERT KEY UPSTREAM [THREADS]");
        std::process::exit(2);
    }
    let mut server = common::server(threads);
    let tls = || common::tls(cert, key);
    match mode.as_str() {
        "proxy" => {
            let peer = HttpPeer::new(upstream.as_str(), false, String::new());
            let mut svc = pingora_proxy::http_proxy_service(&server.configuration, Floor(peer));
            svc.add_tls_with_settings(listen, None, tls());
            server.add_service(svc);
        }
        "core" => {
            let app = Core {
                peer: HttpPeer::new(upstream.as_str(), false, String::new()),
                pool: Connector::new(None),
            };
            let mut svc = pingora_core::services::listening::Service::new("core".into(), app);
            svc.add_tls_with_settings(listen, None, tls());
            server.add_service(svc);
        }
        "hybrid" => {
            let app = Hybrid(Core {
                peer: HttpPeer::new(upstream.as_str(), false, String::new()),
                pool: Connector::new(None),
            });
            let mut svc = pingora_proxy::http_proxy_service(&server.configuration, app);
            svc.add_tls_with_settings(listen, None, tls());
            server.add_service(svc);
        }
        other => {
            eprintln!("unknown mode {other}: proxy, hybrid or core");
            std::process::exit(2);
        }
    }
    server.run_forever();
}
