//! Process lifecycle: the shutdown signal pingora waits on, with a readiness drain first.
//!
//! On SIGTERM (or SIGQUIT for a graceful upgrade) `/readyz` turns 503 at once while traffic is
//! still served for `readiness_drain_seconds`, so load balancers take the instance out before
//! its listeners close; then pingora's graceful shutdown lets in-flight requests finish.

use async_trait::async_trait;
use pingora_core::server::{ShutdownSignal, ShutdownSignalWatch};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Shared "we are draining" flag.
#[derive(Debug, Default)]
pub struct Lifecycle {
    draining: AtomicBool,
}

impl Lifecycle {
    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }
}

/// Unix signals → pingora shutdown, with the drain delay.
pub struct DrainingSignal {
    /// Shared flag read by `/readyz`.
    pub lifecycle: Arc<Lifecycle>,
    /// Seconds of 503-but-serving before listeners close.
    pub drain: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for DrainingSignal {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut quit), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::quit()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers; shutting down");
            return ShutdownSignal::FastShutdown;
        };
        let kind = tokio::select! {
            _ = quit.recv() => ShutdownSignal::GracefulUpgrade,
            _ = term.recv() => ShutdownSignal::GracefulTerminate,
            _ = int.recv() => return ShutdownSignal::FastShutdown,
        };
        self.lifecycle.start_draining();
        tracing::info!(
            drain_seconds = self.drain.as_secs(),
            "shutdown requested: readiness is 503, draining"
        );
        tokio::time::sleep(self.drain).await;
        kind
    }
}
