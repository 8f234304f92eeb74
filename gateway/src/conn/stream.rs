//! [`EdgeStream`]: the HTTP/1 connection's stream as pingora sees it. It fails its reads
//! once a request head takes longer than `header_timeout_ms` (pingora 0.9.1 bounds each read
//! of a head, not the head as a whole, so a client trickling one byte every few seconds would
//! keep a connection forever), holds bytes peeked ahead, and flags a request line pingora
//! would escape. Its write side is in [`super::coalesce`], its idle wait in
//! [`super::keepalive`].

use super::head::{end_of_head, Phase, RequestLine};
use async_trait::async_trait;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Ssl, Stream, UniqueID, ALPN,
};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, ReadBuf};

/// How long an HTTP/1 connection may sit idle between requests (pingora's default, which
/// its own reads of a reused connection also apply).
pub const KEEPALIVE_SECS: u64 = 60;
pub const KEEPALIVE: Duration = Duration::from_secs(KEEPALIVE_SECS);

/// The most a peek can look ahead (an HTTP/2 preface is 24 bytes).
const PEEK_MAX: usize = 24;

/// A stream that fails its reads once a request head takes longer than `timeout`.
#[derive(Debug)]
pub struct EdgeStream {
    pub(super) inner: Stream,
    /// None: no header deadline (`limits.header_timeout_ms = 0`).
    pub(super) timeout: Option<Duration>,
    pub(super) phase: Phase,
    /// How many bytes of `\r\n\r\n` the head read so far ends with.
    pub(super) matched: u8,
    /// The head deadline while a head is read (with `timeout`); otherwise the keep-alive
    /// wait's timer. One timer per connection, re-armed lazily.
    pub(super) deadline: Pin<Box<tokio::time::Sleep>>,
    /// Bytes read by [`Peek::try_peek`], handed out by the next reads (`peeked[pos..len]`).
    pub(super) peeked: [u8; PEEK_MAX],
    pub(super) peeked_pos: u8,
    pub(super) peeked_len: u8,
    /// A response head held back to go out with the first body write (see [`MERGE_MAX`]).
    pub(super) pending: Vec<u8>,
    /// Whether a body write has joined `pending` (only one does).
    pub(super) merged: bool,
    /// The request line of the head being read, checked as its bytes pass.
    pub(super) line: RequestLine,
}

impl EdgeStream {
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

    /// Advances the head's `\r\n\r\n` matcher over `bytes`; true when the head ended in them.
    fn scan(&mut self, bytes: &[u8]) -> bool {
        end_of_head(&mut self.matched, bytes)
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

impl EdgeStream {
    /// A read from the stream below, under the head deadline, tracking the phase.
    pub(super) fn poll_read_inner(
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

impl AsyncRead for EdgeStream {
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

impl UniqueID for EdgeStream {
    fn id(&self) -> pingora_core::protocols::UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for EdgeStream {
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

impl GetTimingDigest for EdgeStream {
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

impl GetProxyDigest for EdgeStream {
    fn get_proxy_digest(&self) -> Option<Arc<pingora_core::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for EdgeStream {
    fn get_socket_digest(&self) -> Option<Arc<pingora_core::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

/// Waits until `buf.len()` bytes (at most [`PEEK_MAX`]) can be read and copies them without
/// consuming them: the next reads return them first. The bytes count toward the head (phase,
/// deadline) when peeked. An end of stream before that is `UnexpectedEof`.
#[async_trait]
impl Peek for EdgeStream {
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
    use crate::conn::coalesce::MERGE_MAX;
    use pingora_core::protocols::Shutdown;
    use tokio::io::AsyncWrite;

    fn wrapped() -> EdgeStream {
        let io = tokio_test_stream();
        EdgeStream::new(io, Some(Duration::from_secs(10)))
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
    fn wrapped_pair() -> (EdgeStream, tokio::io::DuplexStream) {
        let (a, b) = tokio::io::duplex(256 * 1024);
        let mut d = EdgeStream::new(Box::new(a), Some(Duration::from_secs(10)));
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
        let mut d = EdgeStream::new(Box::new(a), Some(Duration::from_millis(100)));
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
        let mut d = EdgeStream::new(Box::new(Recorder::default()), None);
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
}
