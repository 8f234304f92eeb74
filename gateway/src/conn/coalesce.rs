//! Write coalescing: a small response head is held until the body's first write so both go
//! out as one TLS record (one AES-GCM seal and one record header fewer per response, one
//! syscall instead of two when the pair outgrows the socket buffer); a large body goes out
//! with the held head in one vectored write. Buffers come from a per-thread pool, so an idle
//! connection holds none.

use super::head::{is_interim_head, Phase};
use super::stream::EdgeStream;
use async_trait::async_trait;
use pingora_core::protocols::Shutdown;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;

/// A small response head is held until the body's first write and both are encrypted as one
/// TLS record: one AES-GCM seal and one record header fewer per response, one syscall instead
/// of two when the pair outgrows the socket buffer. Only when head and body together fit in
/// this many bytes (above it the copy would cost more than the record saves).
pub const MERGE_MAX: usize = 8 * 1024;

thread_local! {
    /// Empty merge buffers (capacity [`MERGE_MAX`]) for the next response on this thread.
    static MERGE_BUFFERS: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl EdgeStream {
    /// Writes out whatever is held back. Pingora's buffered stream below gives the same
    /// promise (data written is sent at the latest on flush), so holding a head until the
    /// next write or flush changes no timing a caller can rely on.
    pub(super) fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
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
}

impl AsyncWrite for EdgeStream {
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
impl Shutdown for EdgeStream {
    async fn shutdown(&mut self) {
        // What is held back goes out first (a failure here is the peer gone: nothing to do).
        let _ = std::future::poll_fn(|cx| self.poll_drain(cx)).await;
        self.inner.shutdown().await;
    }
}
