//! What applies to a downstream connection as a whole, before pingora's HTTP code sees it: the
//! deadline for a request's header block and the cap on concurrent connections per client IP.
//!
//! pingora 0.9.1 bounds each *read* of a request head, not the head as a whole, so a client
//! trickling one byte every few seconds keeps a connection (and its buffers) forever. This
//! app wraps pingora's: each HTTP/1 connection's stream is wrapped in [`HeadDeadline`], which
//! notices where a request head starts and ends in the bytes it reads and fails the read once
//! a head has taken longer than `header_timeout_ms` (the connection closes; a head that never
//! completed has nothing to answer). HTTP/2 connections are not wrapped (their headers come in
//! frames the h2 library bounds).
//!
//! Between HTTP/1 requests the connection waits here, not inside pingora: pingora's
//! per-request state (a boxed future of the whole proxy phase machine and a 4 KiB header
//! buffer) is only built once the next request's first byte has arrived, so an idle keep-alive
//! connection holds the TLS session and little else, as in nginx. The wait ends at the
//! keep-alive timeout (60 s, pingora's), on shutdown, or when the client closes.
//!
//! The TLS handshake runs here too, not in pingora's listener: the per-IP cap is checked
//! before any handshake work, the handshake is bounded by `tls_handshake_timeout_ms` (pingora
//! gives every handshake a fixed 60 s), a failure is counted by reason from the rustls error
//! itself, and the rustls configuration is ours ([`crate::tls::server_config`]).

use crate::state::SharedRuntime;
use async_trait::async_trait;
use dashmap::DashMap;
use pingora_core::apps::{HttpServerApp, ServerApp};
use pingora_core::listeners::tls::Acceptor;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::tls::TlsStream;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID, ALPN,
};
use pingora_core::server::ShutdownWatch;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The HTTPS listener's app: guards, then hands the connection to pingora's proxy app.
pub struct EdgeApp<A> {
    inner: Arc<A>,
    runtime: SharedRuntime,
    per_ip: DashMap<IpAddr, u32>,
    acceptor: Acceptor,
}

impl<A> EdgeApp<A> {
    /// Wraps `inner` (pingora's `HttpProxy`); `acceptor` runs the TLS handshakes.
    pub fn new(inner: A, runtime: SharedRuntime, acceptor: Acceptor) -> Self {
        Self {
            inner: Arc::new(inner),
            runtime,
            per_ip: DashMap::new(),
            acceptor,
        }
    }
}

/// The handshake bound when `tls_handshake_timeout_ms = 0` (pingora's own fixed value).
const FALLBACK_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs the handshake of a freshly accepted connection under `limit`; a failure is counted by
/// reason and logged at debug level (a scanner or a client hanging up is not an error here).
async fn handshake(
    acceptor: &Acceptor,
    stream: Stream,
    limit: Option<Duration>,
) -> Option<TlsStream<L4Stream>> {
    let Ok(l4) = stream.into_any().downcast::<L4Stream>() else {
        debug_assert!(false, "the HTTPS listener hands over plain TCP streams");
        return None;
    };
    // `0` in the config turns our deadline off, not the bound: pingora's 60 s remains.
    let limit = limit.unwrap_or(FALLBACK_HANDSHAKE_TIMEOUT);
    let reason = match tokio::time::timeout(limit, acceptor.tls_handshake(*l4)).await {
        Ok(Ok(tls)) => return Some(tls),
        Ok(Err(e)) => {
            let reason = crate::tls::handshake_failure_reason(&e.to_string());
            tracing::debug!(reason, error = %e, "TLS handshake failed");
            reason
        }
        Err(_) => {
            tracing::debug!("TLS handshake deadline passed: connection closed");
            "timeout"
        }
    };
    crate::metrics::TLS_HANDSHAKE_FAILURES
        .with_label_values(&[reason])
        .inc();
    None
}

/// One counted connection of a client IP; released on drop.
struct Slot<'a> {
    map: &'a DashMap<IpAddr, u32>,
    ip: IpAddr,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        // Remove emptied entries so the map holds only IPs with open connections.
        self.map.remove_if_mut(&self.ip, |_, n| {
            *n -= 1;
            *n == 0
        });
    }
}

/// Takes a slot for `ip` unless it already holds `max` connections (`max == 0`: no cap).
fn acquire(map: &DashMap<IpAddr, u32>, ip: IpAddr, max: u32) -> Option<Slot<'_>> {
    let mut n = map.entry(ip).or_insert(0);
    if max > 0 && *n >= max {
        return None;
    }
    *n += 1;
    drop(n);
    Some(Slot { map, ip })
}

/// How long an HTTP/1 connection may sit idle between requests (pingora's default, which
/// its own reads of a reused connection also apply).
const KEEPALIVE_SECS: u64 = 60;
const KEEPALIVE: Duration = Duration::from_secs(KEEPALIVE_SECS);

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
            Some(ip) => match acquire(&self.per_ip, ip, max) {
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
        let tls = handshake(&self.acceptor, stream, tls_timeout).await?;
        let version = tls.get_ssl_digest();
        let _open = crate::tls::OpenConnection::handshake_done(
            version.as_ref().map_or("", |d| d.version.as_ref()),
        );
        let stream: Stream = Box::new(tls);
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return self.inner.process_new(stream, shutdown).await;
        }
        // HTTP/1.x: pingora's keep-alive loop (`ServerApp for HttpServerApp`), with the waits
        // for a request moved out of its per-request state. The connection stays typed here
        // (pingora hands back the same box), so the wait costs no allocation or new timer.
        let mut conn = Box::new(HeadDeadline::new(stream, head_timeout));
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
                    Some(s) => pingora_core::apps::HttpPersistentSettings::apply_to_session(
                        s,
                        &mut session,
                    ),
                    None => {
                        session.set_keepalive(Some(KEEPALIVE_SECS));
                        session.set_keepalive_reuses_remaining(
                            self.inner
                                .server_options()
                                .and_then(|o| o.keepalive_request_limit),
                        );
                    }
                }
                self.inner.process_new_http(session, shutdown)
            };
            let (next, s) = request.await?.consume();
            let Ok(next) = next.into_any().downcast::<HeadDeadline>() else {
                debug_assert!(false, "pingora returned another stream");
                return None;
            };
            conn = next;
            settings = s;
        }
    }

    async fn cleanup(&self) {
        self.inner.http_cleanup().await;
    }
}

/// Where the connection is in its request/response cycle, as seen from its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a request head (the deadline runs).
    Head,
    /// The head is complete: body, response, or pipelined data (no deadline).
    Body,
    /// A response was written: the next bytes read may start a new head.
    Idle,
}

/// A stream that fails its reads once a request head takes longer than `timeout`.
#[derive(Debug)]
pub struct HeadDeadline {
    inner: Stream,
    /// None: no header deadline (`limits.header_timeout_ms = 0`).
    timeout: Option<Duration>,
    phase: Phase,
    /// How many bytes of `\r\n\r\n` the head read so far ends with.
    matched: u8,
    /// The head deadline while a head is read (with `timeout`); otherwise the keep-alive
    /// wait's timer. One timer per connection, re-armed lazily.
    deadline: Pin<Box<tokio::time::Sleep>>,
    /// Bytes read by [`Peek::try_peek`], handed out by the next reads (`peeked[pos..len]`).
    peeked: [u8; PEEK_MAX],
    peeked_pos: u8,
    peeked_len: u8,
    /// A response head held back to go out with the first body write (see [`MERGE_MAX`]).
    pending: Vec<u8>,
    /// Whether a body write has joined `pending` (only one does).
    merged: bool,
    /// The request line of the head being read, checked as its bytes pass.
    line: RequestLine,
}

/// What the bytes of one request line showed. pingora 0.9.1 re-parses a request line that
/// httparse refused after percent-encoding spaces, controls and `"<>` in it
/// (`escape_illegal_request_line`), so `GET /a b HTTP/1.1` reaches the phases as `/a%20b`;
/// only the raw bytes still tell such a line from a well-formed one (nginx answers 400).
#[derive(Debug, Clone, Copy, Default)]
struct RequestLine {
    /// The line's end has been seen.
    done: bool,
    /// A byte other than CR/LF has been seen (empty lines may precede a request line).
    started: bool,
    /// Spaces seen (a request line has exactly two).
    spaces: u8,
    /// A byte no request line may hold raw, or a third space.
    bad: bool,
}

impl RequestLine {
    /// Advances over `bytes`, which continue the head from where the last call stopped.
    fn scan(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.done {
                return;
            }
            match b {
                b'\n' if self.started => self.done = true,
                b'\r' | b'\n' => {}
                b' ' => {
                    self.started = true;
                    self.spaces += 1;
                    self.bad |= self.spaces > 2;
                }
                0..=0x1f | 0x7f..=0xff | b'"' | b'<' | b'>' => {
                    self.started = true;
                    self.bad = true;
                }
                _ => self.started = true,
            }
        }
    }
}

/// Whether a write is an interim (1xx) response head: the final response is still to come, so
/// the request (and its body, e.g. after `100 Continue`) is not over.
fn is_interim_head(data: &[u8]) -> bool {
    data.len() > 9 && data.starts_with(b"HTTP/1.") && data[9] == b'1'
}

/// A small response head is held until the body's first write and both are encrypted as one
/// TLS record: one AES-GCM seal and one record header fewer per response, one syscall instead
/// of two when the pair outgrows the socket buffer. Only when head and body together fit in
/// this many bytes (above it the copy would cost more than the record saves).
const MERGE_MAX: usize = 8 * 1024;

/// The most a peek can look ahead (an HTTP/2 preface is 24 bytes).
const PEEK_MAX: usize = 24;

thread_local! {
    /// Empty merge buffers (capacity [`MERGE_MAX`]) for the next response on this thread.
    static MERGE_BUFFERS: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl HeadDeadline {
    /// Wraps a freshly accepted stream: the first head's deadline starts now (a connection
    /// that never sends a complete head is closed at the deadline too).
    pub fn new(inner: Stream, timeout: Option<Duration>) -> Self {
        Self {
            inner,
            timeout,
            phase: Phase::Head,
            matched: 0,
            deadline: Box::pin(tokio::time::sleep(timeout.unwrap_or(KEEPALIVE))),
            peeked: [0; PEEK_MAX],
            peeked_pos: 0,
            peeked_len: 0,
            pending: Vec::new(),
            merged: false,
            line: RequestLine::default(),
        }
    }

    /// Whether the current request's line held bytes pingora escaped before parsing it (a
    /// space inside the target, a control byte, `"`, `<`, `>`, non-ASCII): such a request is
    /// refused with 400 before routing.
    pub fn request_line_refused(&self) -> bool {
        self.line.bad
    }

    /// Writes out whatever is held back. Pingora's buffered stream below gives the same
    /// promise (data written is sent at the latest on flush), so holding a head until the
    /// next write or flush changes no timing a caller can rely on.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.pending.is_empty() {
            let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.pending.drain(..n);
        }
        self.release_pending();
        Poll::Ready(Ok(()))
    }

    /// Returns the (written-out) head buffer to the thread's pool.
    fn release_pending(&mut self) {
        // Back to the thread's pool, not kept: 10,000 idle keep-alive connections must not
        // each hold a buffer.
        let mut buf = std::mem::take(&mut self.pending);
        // Emptied here, whatever the caller wrote out of it: a stale head must never be
        // sent again by the next response that takes this buffer.
        buf.clear();
        if buf.capacity() > 0 {
            MERGE_BUFFERS.with(|pool| {
                let mut pool = pool.borrow_mut();
                if pool.len() < 64 {
                    pool.push(buf);
                }
            });
        }
        self.merged = false;
    }

    /// The held head and a body write too large to copy behind it, in one vectored write:
    /// rustls packs them into the same TLS record(s), so a 16 KB response is one record and
    /// one syscall instead of a small record for the head and a second write. `Ready(None)`:
    /// the head went out but none of `data` did (the caller writes it normally).
    fn poll_write_with_head(
        &mut self,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<Option<usize>>> {
        while !self.pending.is_empty() {
            let bufs = [
                std::io::IoSlice::new(&self.pending),
                std::io::IoSlice::new(data),
            ];
            let n = std::task::ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, &bufs))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            let head = self.pending.len();
            if n >= head {
                self.release_pending();
                if n > head {
                    return Poll::Ready(Ok(Some(n - head)));
                }
            } else {
                self.pending.drain(..n);
            }
        }
        Poll::Ready(Ok(None))
    }

    /// Advances the `\r\n\r\n` matcher over `bytes`; true when the head ended in them.
    /// A SIMD substring search does the bulk (this runs on every byte a client sends in a head);
    /// only the few bytes around a read boundary are matched one by one.
    fn scan(&mut self, bytes: &[u8]) -> bool {
        const END: &[u8; 4] = b"\r\n\r\n";
        // A terminator split across reads: finish the partial match first.
        let mut i = 0;
        while self.matched > 0 && i < bytes.len() {
            let b = bytes[i];
            self.matched = if b == END[self.matched as usize] {
                self.matched + 1
            } else {
                u8::from(b == b'\r')
            };
            i += 1;
            if self.matched == 4 {
                self.matched = 0;
                return true;
            }
        }
        let rest = &bytes[i..];
        if memchr::memmem::find(rest, END).is_some() {
            self.matched = 0;
            return true;
        }
        // How much of a terminator the read ends with (when `rest` is shorter than 3 bytes the
        // state carried in above still stands unless `rest` changes it).
        if !rest.is_empty() {
            self.matched = [3usize, 2, 1]
                .into_iter()
                .find(|&n| rest.len() >= n && rest[rest.len() - n..] == END[..n])
                .map_or(0, |n| n as u8);
        }
        false
    }

    fn on_read(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.phase == Phase::Idle {
            // Only the first bytes after a response can start a head: a method token (or the
            // empty lines RFC 9112 lets precede it). Anything else is body data.
            if bytes[0].is_ascii_uppercase() || bytes[0] == b'\r' || bytes[0] == b'\n' {
                self.phase = Phase::Head;
                self.matched = 0;
                self.line = RequestLine::default();
                if let Some(t) = self.timeout {
                    // Later than the armed instant on a busy connection: tokio only moves the
                    // expiry, no timer-wheel work.
                    self.deadline
                        .as_mut()
                        .reset(tokio::time::Instant::now() + t);
                }
            } else {
                self.phase = Phase::Body;
                return;
            }
        }
        if self.phase == Phase::Head {
            if !self.line.done {
                self.line.scan(bytes);
            }
            if self.scan(bytes) {
                self.phase = Phase::Body;
            }
        }
    }
}

impl HeadDeadline {
    /// A read from the stream below, under the head deadline, tracking the phase.
    fn poll_read_inner(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.phase == Phase::Head
            && self.timeout.is_some()
            && self.deadline.as_mut().poll(cx).is_ready()
        {
            crate::metrics::CONNECTIONS_REFUSED
                .with_label_values(&["header_timeout"])
                .inc();
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "request header deadline",
            )));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &r {
            self.on_read(&buf.filled()[before..]);
        }
        r
    }
}

impl HeadDeadline {
    /// Waits until the next request's first byte has arrived (kept for the next read) while
    /// holding nothing per request. False when the connection should close: `keepalive` idle,
    /// shutdown, the client closing, the head deadline, or an error.
    async fn next_request(&mut self, keepalive: Duration, shutdown: &mut ShutdownWatch) -> bool {
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

impl AsyncRead for HeadDeadline {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.peeked_pos < this.peeked_len {
            let held = &this.peeked[this.peeked_pos as usize..this.peeked_len as usize];
            let n = held.len().min(buf.remaining());
            buf.put_slice(&held[..n]);
            this.peeked_pos += n as u8;
            if this.peeked_pos == this.peeked_len {
                (this.peeked_pos, this.peeked_len) = (0, 0);
                // The rest of the request usually arrived (and was decrypted) with the peeked
                // byte: hand it over in the same read. An error or nothing yet shows up on
                // the next read.
                if buf.remaining() > 0 {
                    let before = buf.filled().len();
                    if let Poll::Ready(Ok(())) = Pin::new(&mut this.inner).poll_read(cx, buf) {
                        this.on_read(&buf.filled()[before..]);
                    }
                }
            }
            return Poll::Ready(Ok(()));
        }
        this.poll_read_inner(cx, buf)
    }
}

impl AsyncWrite for HeadDeadline {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.phase == Phase::Body && !is_interim_head(data) {
            // The first write of a final response is its head: hold it if small. An interim
            // head (`100 Continue`) goes out at once and the request's body may still follow:
            // its bytes must not be taken for the next request's head.
            this.phase = Phase::Idle;
            if this.pending.is_empty() && data.len() < MERGE_MAX {
                // A pooled buffer: allocating and freeing 8 KiB per response cost more than
                // the merge saved.
                this.pending = MERGE_BUFFERS
                    .with(|pool| pool.borrow_mut().pop())
                    .unwrap_or_else(|| Vec::with_capacity(MERGE_MAX));
                this.pending.extend_from_slice(data);
                return Poll::Ready(Ok(data.len()));
            }
        }
        if !this.pending.is_empty() {
            if !this.merged && this.pending.len() + data.len() <= MERGE_MAX {
                // Accepted once copied; sent now if the socket takes it, else on the next
                // write or flush.
                this.pending.extend_from_slice(data);
                this.merged = true;
                if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
                    return Poll::Ready(Err(e));
                }
                return Poll::Ready(Ok(data.len()));
            }
            if !this.merged && this.inner.is_write_vectored() {
                if let Some(n) = std::task::ready!(this.poll_write_with_head(cx, data))? {
                    return Poll::Ready(Ok(n));
                }
            }
            std::task::ready!(this.poll_drain(cx))?;
        }
        Pin::new(&mut this.inner).poll_write(cx, data)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.phase == Phase::Body && !bufs.first().is_some_and(|b| is_interim_head(b)) {
            this.phase = Phase::Idle;
        }
        std::task::ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for HeadDeadline {
    async fn shutdown(&mut self) {
        // What is held back goes out first (a failure here is the peer gone: nothing to do).
        let _ = std::future::poll_fn(|cx| self.poll_drain(cx)).await;
        self.inner.shutdown().await;
    }
}

impl UniqueID for HeadDeadline {
    fn id(&self) -> pingora_core::protocols::UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeadDeadline {
    fn get_ssl(&self) -> Option<&pingora_core::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora_core::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeadDeadline {
    fn get_timing_digest(&self) -> Vec<Option<pingora_core::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeadDeadline {
    fn get_proxy_digest(&self) -> Option<Arc<pingora_core::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for HeadDeadline {
    fn get_socket_digest(&self) -> Option<Arc<pingora_core::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

/// Waits until `buf.len()` bytes (at most [`PEEK_MAX`]) can be read and copies them without
/// consuming them: the next reads return them first. The bytes count toward the head (phase,
/// deadline) when peeked. An end of stream before that is `UnexpectedEof`.
#[async_trait]
impl Peek for HeadDeadline {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        if buf.len() > PEEK_MAX {
            return Ok(false);
        }
        if self.peeked_pos > 0 {
            self.peeked
                .copy_within(self.peeked_pos as usize..self.peeked_len as usize, 0);
            self.peeked_len -= self.peeked_pos;
            self.peeked_pos = 0;
        }
        while (self.peeked_len as usize) < buf.len() {
            let mut tmp = [0u8; PEEK_MAX];
            let want = buf.len() - self.peeked_len as usize;
            let n = std::future::poll_fn(|cx| {
                let mut rb = ReadBuf::new(&mut tmp[..want]);
                self.poll_read_inner(cx, &mut rb)
                    .map_ok(|()| rb.filled().len())
            })
            .await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let at = self.peeked_len as usize;
            self.peeked[at..at + n].copy_from_slice(&tmp[..n]);
            self.peeked_len += n as u8;
        }
        buf.copy_from_slice(&self.peeked[..buf.len()]);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrapped() -> HeadDeadline {
        let io = tokio_test_stream();
        HeadDeadline::new(io, Some(Duration::from_secs(10)))
    }

    fn tokio_test_stream() -> Stream {
        // A connected pair; only the wrapper's state machine is exercised here.
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("pair");
        a.set_nonblocking(true).expect("nb");
        let s = tokio::net::UnixStream::from_std(a).expect("tokio");
        Box::new(pingora_core::protocols::l4::stream::Stream::from(s))
    }

    #[tokio::test]
    async fn heads_are_found_across_reads_and_rearmed_only_by_request_starts() {
        let mut d = wrapped();
        d.on_read(b"GET / HTTP/1.1\r\nHost: a\r");
        assert_eq!(d.phase, Phase::Head);
        d.on_read(b"\n\r");
        assert_eq!(d.phase, Phase::Head);
        d.on_read(b"\nbody");
        assert_eq!(d.phase, Phase::Body, "\\r\\n\\r\\n split over three reads");
        d.phase = Phase::Idle; // a response was written
        d.on_read(b"{\"json\":\"body after 100-continue\"}");
        assert_eq!(d.phase, Phase::Body, "body bytes never start a head");
        d.phase = Phase::Idle;
        d.on_read(b"POST /x HTTP/1.1\r\n");
        assert_eq!(d.phase, Phase::Head, "the next request's head");
    }

    #[tokio::test]
    async fn a_body_after_100_continue_is_not_taken_for_a_head() {
        use tokio::io::AsyncWriteExt as _;
        let (mut d, mut peer) = wrapped_pair();
        d.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .expect("write");
        assert_eq!(
            read_now(&mut peer).await,
            b"HTTP/1.1 100 Continue\r\n\r\n",
            "an interim head is not held back"
        );
        assert_eq!(d.phase, Phase::Body);
        // A zip upload starts with an upper-case letter, and may hold \r\n\r\n.
        d.on_read(b"PK\x03\x04 GET / HTTP/1.1\r\n\r\n");
        assert_eq!(d.phase, Phase::Body, "body bytes after 100 Continue");
        d.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .expect("write");
        assert_eq!(d.phase, Phase::Idle, "the final head ends the request");
        d.on_read(b"GET /next HTTP/1.1\r\n");
        assert_eq!(d.phase, Phase::Head);
    }

    #[tokio::test]
    async fn request_lines_with_bytes_pingora_would_escape_are_flagged() {
        let bad = |parts: &[&[u8]]| {
            let mut d = wrapped();
            for p in parts {
                d.on_read(p);
            }
            d.request_line_refused()
        };
        assert!(!bad(&[b"GET /api/health HTTP/1.1\r\nHost: a b\r\n\r\n"]));
        assert!(
            !bad(&[b"\r\nGET /a?b=%20 HTTP/1.1\r\n"]),
            "leading empty line"
        );
        assert!(!bad(&[b"GET /a", b"/b HTTP/1.1\r", b"\nX: \"<>\"\r\n\r\n"]));
        assert!(bad(&[b"GET /api/health z HTTP/1.1\r\nHost: a\r\n\r\n"]));
        assert!(
            bad(&[b"GET /api/he", b"alth z HTTP/1.1\r\n"]),
            "split over reads"
        );
        assert!(bad(&[b"GET /a\"b HTTP/1.1\r\n"]));
        assert!(bad(&[b"GET /a<b> HTTP/1.1\r\n"]));
        assert!(bad(&[b"GET /a\tb HTTP/1.1\r\n"]));
        assert!(bad(&[b"GET /\xc3\xa9 HTTP/1.1\r\n"]));
        // The next request starts clean.
        let mut d = wrapped();
        d.on_read(b"GET /a b HTTP/1.1\r\n\r\n");
        assert!(d.request_line_refused());
        d.phase = Phase::Idle;
        d.on_read(b"GET /fine HTTP/1.1\r\n\r\n");
        assert!(!d.request_line_refused());
    }

    /// The byte-at-a-time matcher `scan` replaced: the reference it must agree with.
    fn reference_scan(matched: &mut u8, bytes: &[u8]) -> bool {
        const END: &[u8; 4] = b"\r\n\r\n";
        for &b in bytes {
            *matched = if b == END[*matched as usize] {
                *matched + 1
            } else {
                u8::from(b == b'\r')
            };
            if *matched == 4 {
                *matched = 0;
                return true;
            }
        }
        false
    }

    #[tokio::test]
    async fn the_fast_scan_agrees_with_the_byte_matcher_on_every_split() {
        let mut d = wrapped();
        // Every way of cutting these heads into two or three reads.
        let heads: [&[u8]; 6] = [
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\r\n\r\n",
            b"\r\r\n\r\r\n\r\n",
            b"A\r\n\rB\r\n\r\nC",
            b"\n\r\n\r\r\r\n\r\n",
            b"X: \r\n\r",
        ];
        for head in heads {
            for a in 0..=head.len() {
                for b in a..=head.len() {
                    let (mut want_m, mut got) = (0u8, Vec::new());
                    let mut want = Vec::new();
                    d.matched = 0;
                    for part in [&head[..a], &head[a..b], &head[b..]] {
                        want.push(reference_scan(&mut want_m, part));
                        got.push(d.scan(part));
                        if *want.last().expect("pushed") {
                            want_m = 0;
                        }
                        assert_eq!(got, want, "{head:?} cut at {a},{b}");
                        if *got.last().expect("pushed") {
                            break;
                        }
                        assert_eq!(d.matched, want_m, "{head:?} cut at {a},{b}");
                    }
                }
            }
        }
    }

    /// A wrapper over one end of an in-memory pipe (always writable), and the other end to
    /// read what it sent.
    fn wrapped_pair() -> (HeadDeadline, tokio::io::DuplexStream) {
        let (a, b) = tokio::io::duplex(256 * 1024);
        let mut d = HeadDeadline::new(Box::new(a), Some(Duration::from_secs(10)));
        d.on_read(b"GET / HTTP/1.1\r\n\r\n");
        (d, b)
    }

    /// What the peer can read right now (one read, without waiting).
    async fn read_now(peer: &mut tokio::io::DuplexStream) -> Vec<u8> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut rb = ReadBuf::new(&mut buf);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = Pin::new(&mut *peer).poll_read(cx, &mut rb) {
                r.expect("read");
            }
            Poll::Ready(())
        })
        .await;
        rb.filled().to_vec()
    }

    #[tokio::test]
    async fn a_peek_waits_for_the_next_request_and_loses_no_byte() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (mut d, mut peer) = wrapped_pair();
        d.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .expect("response");
        d.flush().await.expect("flush");
        assert_eq!(d.phase, Phase::Idle);

        // Nothing sent yet: the peek waits.
        let mut probe = [0u8; 1];
        assert!(
            tokio::time::timeout(Duration::from_millis(50), d.try_peek(&mut probe))
                .await
                .is_err(),
            "no byte, no peek"
        );
        peer.write_all(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .expect("next request");
        assert!(d.try_peek(&mut probe).await.expect("peek"));
        assert_eq!(&probe, b"G");
        assert_eq!(d.phase, Phase::Head, "the peeked byte starts the head");
        // Peeking again sees the same byte; a longer peek extends it.
        let mut four = [0u8; 4];
        assert!(d.try_peek(&mut four).await.expect("peek 4"));
        assert_eq!(&four, b"GET ");
        // Reads return the peeked bytes first, then the rest, in order.
        let mut got = vec![0u8; 64];
        let n = d.read(&mut got[..2]).await.expect("read 2");
        assert_eq!(&got[..n], b"GE");
        let mut rest = Vec::new();
        while !rest.ends_with(b"\r\n\r\n") {
            let n = d.read(&mut got).await.expect("read");
            assert!(n > 0);
            rest.extend_from_slice(&got[..n]);
        }
        assert_eq!(rest, b"T /next HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(d.phase, Phase::Body, "the head was seen whole, once");

        // A peek longer than the look-ahead is declined; the end of stream is an error.
        assert!(!d
            .try_peek(&mut [0u8; PEEK_MAX + 1])
            .await
            .expect("too long"));
        drop(peer);
        let e = d.try_peek(&mut probe).await.expect_err("closed");
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn the_idle_wait_ends_on_a_request_the_keepalive_shutdown_or_a_close() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut watch = rx.clone();
        let ka = Duration::from_millis(150);

        // A request arrives: true, and its first byte is read back in order.
        let (mut d, mut peer) = wrapped_pair();
        d.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .expect("w");
        d.flush().await.expect("flush");
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            peer.write_all(b"GET /b HTTP/1.1\r\n\r\n")
                .await
                .expect("req");
            peer
        });
        assert!(d.next_request(ka, &mut watch).await, "request arrived");
        let _peer = writer.await.expect("writer");
        let mut got = [0u8; 64];
        let n = d.read(&mut got).await.expect("read");
        assert_eq!(&got[..n], b"GET /b HTTP/1.1\r\n\r\n");

        // Silence: closed at the keep-alive timeout, not before.
        let (mut d, _peer) = wrapped_pair();
        d.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .expect("w");
        d.flush().await.expect("flush");
        let t = std::time::Instant::now();
        assert!(!d.next_request(ka, &mut watch).await, "idle timeout");
        assert!(t.elapsed() >= ka, "{:?}", t.elapsed());
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());

        // The client closes: false at once.
        let (mut d, peer) = wrapped_pair();
        d.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .expect("w");
        d.flush().await.expect("flush");
        drop(peer);
        assert!(
            !d.next_request(Duration::from_secs(30), &mut watch).await,
            "closed"
        );

        // Shutdown: an idle connection is let go at once.
        let (mut d, _peer) = wrapped_pair();
        d.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .expect("w");
        d.flush().await.expect("flush");
        let stop = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            tx.send(true).expect("send");
            tx
        });
        let t = std::time::Instant::now();
        assert!(
            !d.next_request(Duration::from_secs(30), &mut watch).await,
            "shutdown"
        );
        assert!(t.elapsed() < Duration::from_secs(2));
        drop(stop.await);
    }

    #[tokio::test]
    async fn a_peek_is_under_the_head_deadline() {
        use tokio::io::AsyncWriteExt as _;
        let (a, mut peer) = tokio::io::duplex(1024);
        let mut d = HeadDeadline::new(Box::new(a), Some(Duration::from_millis(100)));
        peer.write_all(b"G").await.expect("one byte");
        let mut two = [0u8; 2];
        // One byte of a head and then silence: the deadline ends the wait.
        let e = d.try_peek(&mut two).await.expect_err("deadline");
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
    }

    /// A stream below that records each write call (vectored ones joined) and can write
    /// vectored, as pingora's TLS stream can.
    #[derive(Debug, Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
    }
    impl AsyncRead for Recorder {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Pending
        }
    }
    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.get_mut().writes.push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let joined = bufs
                .iter()
                .flat_map(|b| b.iter().copied())
                .collect::<Vec<u8>>();
            let n = joined.len();
            self.get_mut().writes.push(joined);
            Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }
    #[async_trait]
    impl Shutdown for Recorder {
        async fn shutdown(&mut self) {}
    }
    impl UniqueID for Recorder {
        fn id(&self) -> pingora_core::protocols::UniqueIDType {
            0
        }
    }
    impl Ssl for Recorder {}
    impl GetTimingDigest for Recorder {
        fn get_timing_digest(&self) -> Vec<Option<pingora_core::protocols::TimingDigest>> {
            vec![]
        }
    }
    impl GetProxyDigest for Recorder {
        fn get_proxy_digest(
            &self,
        ) -> Option<Arc<pingora_core::protocols::raw_connect::ProxyDigest>> {
            None
        }
    }
    impl GetSocketDigest for Recorder {
        fn get_socket_digest(&self) -> Option<Arc<pingora_core::protocols::SocketDigest>> {
            None
        }
    }
    impl Peek for Recorder {}

    #[tokio::test]
    async fn a_large_body_goes_out_with_the_held_head_in_one_vectored_write() {
        use tokio::io::AsyncWriteExt as _;
        let mut d = HeadDeadline::new(Box::new(Recorder::default()), None);
        d.on_read(b"GET / HTTP/1.1\r\n\r\n");
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 16000\r\n\r\n";
        let body = vec![b'x'; 16_000];
        d.write_all(head).await.expect("head");
        d.write_all(&body).await.expect("body");
        d.flush().await.expect("flush");
        let rec = d
            .inner
            .as_any()
            .downcast_ref::<Recorder>()
            .expect("recorder");
        assert_eq!(rec.writes.len(), 1, "head and body in one write");
        assert_eq!(&rec.writes[0][..head.len()], head);
        assert_eq!(&rec.writes[0][head.len()..], &body[..]);
        assert!(d.pending.is_empty());
    }

    #[tokio::test]
    async fn a_small_head_goes_out_with_the_first_body_write_in_one_write() {
        use tokio::io::AsyncWriteExt as _;
        let (mut d, mut peer) = wrapped_pair();
        d.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n")
            .await
            .expect("head");
        assert_eq!(
            read_now(&mut peer).await,
            b"",
            "the head is held for the body"
        );
        assert!(d.pending.starts_with(b"HTTP/1.1 200 OK"));
        d.write_all(b"hello").await.expect("body");
        assert!(
            d.pending.is_empty(),
            "written out with the body, in one write"
        );
        assert_eq!(
            read_now(&mut peer).await,
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
            "head and body in one write"
        );
        d.write_all(b"more").await.expect("a second body write");
        assert_eq!(
            read_now(&mut peer).await,
            b"more",
            "only the first body write joins"
        );

        // The next response: a head alone goes out on flush (HEAD, 304, 204).
        d.on_read(b"HEAD / HTTP/1.1\r\n\r\n");
        d.write_all(b"HTTP/1.1 304 Not Modified\r\n\r\n")
            .await
            .expect("head");
        d.flush().await.expect("flush");
        assert_eq!(
            read_now(&mut peer).await,
            b"HTTP/1.1 304 Not Modified\r\n\r\n"
        );

        // A body too big to merge: the head goes first, then the body, nothing lost.
        d.on_read(b"GET /big HTTP/1.1\r\n\r\n");
        d.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.expect("head");
        let big = vec![b'x'; MERGE_MAX];
        d.write_all(&big).await.expect("body");
        d.flush().await.expect("flush");
        let mut got = Vec::new();
        loop {
            let chunk = read_now(&mut peer).await;
            if chunk.is_empty() {
                break;
            }
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got.len(), 19 + MERGE_MAX);
        assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n\r\nxxx"));

        // A held head is not lost when the connection shuts down.
        d.on_read(b"GET / HTTP/1.1\r\n\r\n");
        d.write_all(b"HTTP/1.1 500 x\r\n\r\n").await.expect("head");
        Shutdown::shutdown(&mut d).await;
        assert_eq!(read_now(&mut peer).await, b"HTTP/1.1 500 x\r\n\r\n");
    }

    #[test]
    fn per_ip_slots_are_capped_and_released() {
        let map = DashMap::new();
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let a = acquire(&map, ip, 2).expect("first");
        let b = acquire(&map, ip, 2).expect("second");
        assert!(acquire(&map, ip, 2).is_none(), "third refused");
        drop(a);
        let c = acquire(&map, ip, 2).expect("after release");
        drop((b, c));
        assert!(
            map.is_empty(),
            "no entry kept for an IP without connections"
        );
        assert!(acquire(&map, ip, 0).is_some(), "0 = no cap");
    }

    #[test]
    fn ipv6_clients_are_capped_by_prefix_like_the_rate_limits() {
        let map = DashMap::new();
        let key = |s: &str| crate::http::client_ip::mask(s.parse().expect("ip"), 64);
        let _a = acquire(&map, key("2001:db8:1:2::1"), 2).expect("first");
        let _b = acquire(&map, key("2001:db8:1:2:ffff::9"), 2).expect("second, same /64");
        assert!(
            acquire(&map, key("2001:db8:1:2:1234::5"), 2).is_none(),
            "a third address of the same /64 is refused"
        );
        assert!(
            acquire(&map, key("2001:db8:1:3::1"), 2).is_some(),
            "another /64 is another client"
        );
    }
}
