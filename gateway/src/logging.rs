//! Logging: process events as JSON through `tracing` (pingora's `log` records included) on
//! stderr, and the access log — one JSON line per request on stdout.
//!
//! Access lines are formatted in the `logging` phase and handed to a dedicated writer thread
//! through a bounded channel, so a slow stdout never blocks a request: when the channel is
//! full the line is dropped and counted (`gateway_access_log_dropped_total`).

use crate::proxy::Ctx;
use once_cell::sync::Lazy;
use pingora_proxy::Session;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};

/// Installs the global subscriber once; later calls are no-ops. Level from `RUST_LOG`
/// (default `info`).
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

static WRITER: Lazy<SyncSender<String>> = Lazy::new(|| {
    let (tx, rx) = sync_channel::<String>(64 * 1024);
    let spawned = std::thread::Builder::new()
        .name("access-log".into())
        .spawn(move || {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::with_capacity(256 * 1024, stdout.lock());
            // Drain in batches every 50 ms: the request threads never wake this thread, and
            // stdout sees one write per batch instead of one per request.
            loop {
                std::thread::sleep(std::time::Duration::from_millis(50));
                let mut wrote = false;
                loop {
                    match rx.try_recv() {
                        Ok(line) => {
                            let _ = out.write_all(line.as_bytes());
                            wrote = true;
                        }
                        Err(std::sync::mpsc::TryRecvError::Empty) => break,
                        Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                            let _ = out.flush();
                            return;
                        }
                    }
                }
                if wrote {
                    let _ = out.flush();
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the access log writer; lines will be dropped");
    }
    tx
});

fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Appends `"key":"value",` (string value, escaped).
fn field(out: &mut String, key: &str, value: &str) {
    out.push('"');
    out.push_str(key);
    out.push_str("\":");
    json_str(out, value);
    out.push(',');
}

/// Formats the access line of a finished request.
pub fn access_line(session: &Session, ctx: &Ctx, status: u16) -> String {
    let req = session.req_header();
    let mut s = String::with_capacity(512);
    s.push('{');
    let ts = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    field(&mut s, "ts", &ts);
    field(&mut s, "request_id", &ctx.request_id);
    field(
        &mut s,
        "client_ip",
        &ctx.client_ip.map(|i| i.to_string()).unwrap_or_default(),
    );
    field(&mut s, "method", req.method.as_str());
    let host = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    field(&mut s, "host", host);
    // The normalised path when known, never the query string.
    let path = if ctx.path.is_empty() {
        req.uri.path()
    } else {
        &ctx.path
    };
    field(&mut s, "path", path);
    let route = ctx.route.map_or("", |i| ctx.rt.routes[i].name.as_str());
    field(&mut s, "route", route);
    if let Some(p) = &ctx.peer {
        field(&mut s, "upstream", &p.to_string());
    }
    if let Some(sub) = ctx.identity.as_ref().and_then(|i| i.sub.as_deref()) {
        field(&mut s, "sub", sub);
    }
    if let Some(v) = session
        .digest()
        .and_then(|d| d.ssl_digest.as_ref())
        .map(|d| d.version.clone())
    {
        field(&mut s, "tls_version", crate::tls::version_label(&v));
    }
    field(&mut s, "http_version", &format!("{:?}", req.version));
    if let Some(ua) = req
        .headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
    {
        field(&mut s, "user_agent", ua);
    }
    let sent = ctx.body_sent.max(session.body_bytes_sent() as u64);
    let _ = write!(
        s,
        "\"status\":{status},\"bytes_sent\":{sent},\"duration_ms\":{:.3}",
        ctx.started.elapsed().as_secs_f64() * 1000.0
    );
    if let Some(ms) = ctx.upstream_ms {
        let _ = write!(s, ",\"upstream_ms\":{ms:.3}");
    }
    s.push_str("}\n");
    s
}

/// Queues a line for the writer thread; drops it (and counts) rather than block.
pub fn write(line: String) {
    match WRITER.try_send(line) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
            crate::metrics::ACCESS_LOG_DROPPED.inc();
        }
    }
}
