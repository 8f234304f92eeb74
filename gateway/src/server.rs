//! Assembles the pingora server: the HTTPS proxy service, the plain-HTTP redirect, the admin
//! listener and the health checker, all reading one [`SharedRuntime`].

use crate::admin::Admin;
use crate::lifecycle::{DrainingSignal, Lifecycle};
use crate::proxy::Gateway;
use crate::redirect::Redirect;
use crate::reload::{ReloadService, Reloader};
use crate::runtime::Runtime;
use crate::services::{HealthService, JwksService, RateLimitService};
use crate::state::SharedRuntime;
use arc_swap::ArcSwap;
use pingora_core::listeners::ListenerConfig;
use pingora_core::protocols::l4::stream::L4BufferSettings;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{RunArgs, Server};
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;
use std::sync::Arc;

/// Command-line switches that reach pingora.
#[derive(Debug, Default, Clone)]
pub struct RunFlags {
    /// Take listening sockets over from a running instance (graceful upgrade).
    pub upgrade: bool,
    /// Detach into the background.
    pub daemon: bool,
}

/// Turns transparent huge pages off for this process. mimalloc advises huge pages on its
/// arena, so every touched 2 MiB of heap became resident whole: an idle gateway held 43 MiB
/// instead of 18, and each idle connection 66 KB instead of 60. A proxy's heap is many small
/// per-connection objects; the TLB savings don't show in its CPU per request. Call it before
/// the config (and its in-memory assets) is loaded.
#[allow(unsafe_code)]
pub fn prefer_small_pages() {
    // SAFETY: prctl with PR_SET_THP_DISABLE takes plain integers and touches no memory of ours.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot disable transparent huge pages");
    }
}

/// Builds the server for the config at `path` (already loaded into `runtime`) and serves until
/// shutdown.
pub fn run(path: &std::path::Path, runtime: Runtime, flags: &RunFlags) {
    let drain = std::time::Duration::from_secs(runtime.process.readiness_drain_seconds);
    let lifecycle = Arc::new(Lifecycle::default());
    let server = build(path, runtime, flags, lifecycle.clone());
    server.run(RunArgs {
        shutdown_signal: Box::new(DrainingSignal { lifecycle, drain }),
    });
}

/// Builds the pingora server for `runtime`.
pub fn build(
    path: &std::path::Path,
    runtime: Runtime,
    flags: &RunFlags,
    lifecycle: Arc<Lifecycle>,
) -> Server {
    let p = runtime.process.clone();
    let conf = ServerConf {
        threads: runtime.threads,
        grace_period_seconds: Some(p.shutdown_grace_seconds),
        graceful_shutdown_timeout_seconds: Some(p.shutdown_timeout_seconds),
        upgrade_sock: p.upgrade_sock,
        pid_file: p.pid_file,
        upstream_keepalive_pool_size: p.upstream_keepalive_pool_size,
        work_stealing: p.work_stealing,
        daemon: flags.daemon,
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: flags.upgrade,
        daemon: flags.daemon,
        ..Opt::default()
    };
    let listeners = runtime.listeners.clone();
    crate::metrics::CONFIG_GENERATION.set(runtime.generation as i64);
    crate::services::describe_runtime(&runtime);
    let shared: SharedRuntime = Arc::new(ArcSwap::from_pointee(runtime));

    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let edge = crate::conn::EdgeApp::new(
        pingora_proxy::http_proxy(
            &server.configuration,
            Gateway::new(shared.clone(), &server.configuration),
        ),
        shared.clone(),
        crate::conn::tls::acceptor(shared.clone()),
    );
    // Plain TCP for pingora: the edge app runs the TLS handshake itself.
    let mut proxy = Service::new("gateway https".into(), edge);
    proxy.add_listener(ListenerConfig::tcp(listeners.https.clone()).l4_buffer(
        L4BufferSettings::new(listeners.read_buffer_bytes, listeners.write_buffer_bytes),
    ));
    server.add_service(proxy);

    if let Some(http) = &listeners.http {
        let mut redirect = Service::new(
            "gateway http redirect".into(),
            Redirect::new(shared.clone()),
        );
        redirect.add_tcp(http);
        server.add_service(redirect);
    }

    let reloader = Arc::new(Reloader::new(path, shared.clone()));
    let mut admin = Service::new(
        "gateway admin".into(),
        Admin::new(shared.clone(), reloader.clone(), lifecycle),
    );
    admin.add_tcp(&listeners.admin);
    server.add_service(admin);

    server.add_service(background_service(
        "upstream health",
        HealthService::new(shared.clone()),
    ));
    server.add_service(background_service(
        "jwks refresh",
        JwksService::new(shared.clone()),
    ));
    server.add_service(background_service(
        "rate limit cleanup",
        RateLimitService::new(shared.clone()),
    ));
    server.add_service(background_service(
        "config reload",
        ReloadService::new(reloader),
    ));
    server
}
