//! Between HTTP/1 requests the connection waits here, not inside pingora: pingora's
//! per-request state (a boxed future of the whole proxy phase machine and a 4 KiB header
//! buffer) is only built once the next request's first byte has arrived, so an idle keep-alive
//! connection holds the TLS session and little else, as in nginx. The wait ends at the
//! keep-alive timeout (60 s, pingora's), on shutdown, or when the client closes.

use super::head::Phase;
use super::stream::{EdgeStream, KEEPALIVE, KEEPALIVE_SECS};
use pingora_core::apps::HttpServerApp;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::io::ReadBuf;

/// pingora's keep-alive loop (`ServerApp for HttpServerApp`) for an HTTP/1.x connection,
/// with the waits for a request moved out of its per-request state. The connection stays
/// typed here (pingora hands back the same box), so the wait costs no allocation or new timer.
pub async fn serve_http1<A: HttpServerApp + Send + Sync + 'static>(
    app: &Arc<A>,
    stream: Stream,
    head_timeout: Option<Duration>,
    shutdown: &ShutdownWatch,
) -> Option<Stream> {
    let mut conn = Box::new(EdgeStream::new(stream, head_timeout));
    let mut watch = shutdown.clone();
    let mut settings = None;
    loop {
        if *watch.borrow() || !conn.next_request(KEEPALIVE, &mut watch).await {
            return None;
        }
        // The session lives only in this block: kept in scope across the await, its
        // (moved-out) storage would stay in this connection's future while it idles.
        let request = {
            let mut session = ServerSession::new_http1(conn);
            match settings.take() {
                // Carries the keep-alive timeout and the remaining reuses. We never enable
                // pipelining, so it carries no already-read request bytes to wait behind.
                Some(s) => {
                    pingora_core::apps::HttpPersistentSettings::apply_to_session(s, &mut session)
                }
                None => {
                    session.set_keepalive(Some(KEEPALIVE_SECS));
                    session.set_keepalive_reuses_remaining(
                        app.server_options().and_then(|o| o.keepalive_request_limit),
                    );
                }
            }
            app.process_new_http(session, shutdown)
        };
        let (next, s) = request.await?.consume();
        let Ok(next) = next.into_any().downcast::<EdgeStream>() else {
            debug_assert!(false, "pingora returned another stream");
            return None;
        };
        conn = next;
        settings = s;
    }
}

impl EdgeStream {
    /// Waits until the next request's first byte has arrived (kept for the next read) while
    /// holding nothing per request. False when the connection should close: `keepalive` idle,
    /// shutdown, the client closing, the head deadline, or an error.
    pub async fn next_request(
        &mut self,
        keepalive: Duration,
        shutdown: &mut ShutdownWatch,
    ) -> bool {
        if self.peeked_pos < self.peeked_len {
            return true;
        }
        let idle_until = tokio::time::Instant::now() + keepalive;
        let mut shutdown = std::pin::pin!(shutdown.changed());
        std::future::poll_fn(|cx| {
            let mut byte = [0u8; 1];
            let mut rb = ReadBuf::new(&mut byte);
            match self.poll_read_inner(cx, &mut rb) {
                Poll::Ready(Ok(())) if rb.filled().len() == 1 => {
                    (self.peeked[0], self.peeked_pos, self.peeked_len) = (byte[0], 0, 1);
                    return Poll::Ready(true);
                }
                // End of stream, an error, the head deadline.
                Poll::Ready(_) => return Poll::Ready(false),
                Poll::Pending => {}
            }
            if shutdown.as_mut().poll(cx).is_ready() {
                return Poll::Ready(false);
            }
            // The timer is the head deadline while a head is read under one; otherwise it
            // times the idle wait, re-armed only when it fires early or would fire late.
            if self.phase == Phase::Head && self.timeout.is_some() {
                return Poll::Pending;
            }
            if self.deadline.deadline() > idle_until {
                self.deadline.as_mut().reset(idle_until);
            }
            while self.deadline.as_mut().poll(cx).is_ready() {
                if tokio::time::Instant::now() >= idle_until {
                    return Poll::Ready(false);
                }
                self.deadline.as_mut().reset(idle_until);
            }
            Poll::Pending
        })
        .await
    }
}
