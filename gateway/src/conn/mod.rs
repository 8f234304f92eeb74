//! What applies to a downstream connection as a whole, before pingora's HTTP code sees it,
//! one job a file:
//!
//! | job | file |
//! |---|---|
//! | cap on concurrent connections per client IP (before any TLS work) | [`cap`] |
//! | the TLS handshake, bounded and counted by outcome | [`handshake`], with the rustls config in [`tls`] |
//! | the HTTP/1 request-head deadline, peeked bytes, request-line check | [`stream`], reading [`head`] |
//! | the idle keep-alive wait between HTTP/1 requests | [`keepalive`] |
//! | write coalescing (response head + first body write in one TLS record) | [`coalesce`] |
//!
//! HTTP/2 connections go to pingora right after the handshake (their headers come in frames
//! the h2 library bounds).

pub mod cap;
pub mod coalesce;
pub mod handshake;
pub mod head;
pub mod keepalive;
pub mod stream;
pub mod tls;

use crate::state::SharedRuntime;
use async_trait::async_trait;
use pingora_core::apps::{HttpServerApp, ServerApp};
use pingora_core::listeners::tls::Acceptor;
use pingora_core::protocols::{Ssl, Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use std::sync::Arc;

/// The HTTPS listener's app: guards, then hands the connection to pingora's proxy app.
pub struct EdgeApp<A> {
    inner: Arc<A>,
    runtime: SharedRuntime,
    per_ip: cap::PerIpCap,
    acceptor: Acceptor,
}

impl<A> EdgeApp<A> {
    /// Wraps `inner` (pingora's `HttpProxy`); `acceptor` runs the TLS handshakes.
    pub fn new(inner: A, runtime: SharedRuntime, acceptor: Acceptor) -> Self {
        Self {
            inner: Arc::new(inner),
            runtime,
            per_ip: cap::PerIpCap::default(),
            acceptor,
        }
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for EdgeApp<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let (max, head_timeout, tls_timeout, v6_prefix) = {
            let rt = self.runtime.load();
            (
                rt.limits.max_connections_per_ip,
                rt.limits.header_timeout,
                rt.limits.tls_handshake_timeout,
                rt.ipv6_prefix,
            )
        };
        // Keyed like the rate limits: one IPv6 client holds a whole prefix (a /64 by default),
        // so counting full addresses would give it `max` × 2^64 connections.
        let ip = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()))
            .map(|ip| crate::http::client_ip::mask(ip, v6_prefix));
        // The cap comes before the handshake: a refused connection costs no key exchange.
        let _slot = match ip {
            Some(ip) => match self.per_ip.acquire(ip, max) {
                Some(slot) => Some(slot),
                None => {
                    crate::metrics::CONNECTIONS_REFUSED
                        .with_label_values(&["per_ip_limit"])
                        .inc();
                    tracing::debug!(%ip, max, "connection refused: per-IP connection cap");
                    return None;
                }
            },
            None => None,
        };
        let tls = handshake::handshake(&self.acceptor, stream, tls_timeout).await?;
        let version = tls.get_ssl_digest();
        let _open = handshake::OpenConnection::handshake_done(
            version.as_ref().map_or("", |d| d.version.as_ref()),
        );
        let stream: Stream = tls;
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return self.inner.process_new(stream, shutdown).await;
        }
        keepalive::serve_http1(&self.inner, stream, head_timeout, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.http_cleanup().await;
    }
}
