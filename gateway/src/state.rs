//! The one [`SharedRuntime`]: the `ArcSwap` every request, listener and background task
//! reads its config generation from. A reload ([`crate::reload`]) builds the next
//! [`Runtime`] aside and swaps it in here; nothing else is global but metrics.

use crate::runtime::Runtime;
use arc_swap::ArcSwap;
use std::sync::Arc;

/// The one swappable pointer to the current runtime.
pub type SharedRuntime = Arc<ArcSwap<Runtime>>;

/// Runs `f` with the current runtime every `period` until shutdown: the loop shared by the
/// background services (health checks, JWKS refresh, rate-limit cleanup). Reading the runtime
/// at each tick means a reload needs no restart of these tasks.
pub async fn every<F, Fut>(
    runtime: &SharedRuntime,
    mut shutdown: pingora_core::server::ShutdownWatch,
    period: std::time::Duration,
    mut f: F,
) where
    F: FnMut(Arc<Runtime>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        f(runtime.load_full()).await;
    }
}
