//! The `ProxyHttp` implementation: a dispatcher over one module per phase concern, and the
//! only code that writes to the session.
//!
//! | phase | what runs | module |
//! |---|---|---|
//! | `new_ctx` | take the runtime snapshot (one per request) | [`ctx`] |
//! | `request_filter` | request id, client IP (trusted proxies) → hygiene (400/405/413/414/417/431) → one normalised path → route match (404) → strip identity headers → maintenance (503) → IP/header rate limits (429) → CORS preflight (204/403) → JWT (401/403) → subject rate limits (429) → static answer; or an ordinary proxied request exchanged on pingora-core's pool (the phases below, run by it), or fall through to pingora-proxy (upgrades, `Expect`, nominated `Connection` fields) | [`hygiene`], [`routing`], [`rate_limit`], [`cors`], [`auth`], [`static_files`], [`exchange`] |
//! | `request_body_filter` | count body bytes against the limit (413 for chunked bodies) | here |
//! | `upstream_peer` | pick a healthy peer of the route's pool; on retry, another one | [`upstream`] |
//! | `upstream_request_filter` | hop-by-hop stripping, `X-Forwarded-*`, request id, identity and its signature, prefix strip, then the route's request header rules | [`upstream`] |
//! | `fail_to_connect` | passive failure marking, one retry on another peer | [`upstream`] |
//! | `response_filter` | HSTS, request id echo, hide upstream `Server`, CORS, compression or 5xx replacement, then the route's response header rules | [`response`] |
//! | body module | encode / replace the body | [`crate::compress`] |
//! | `fail_to_proxy` | JSON 502/504/413 | here, with [`answer`] |
//! | `logging` | metrics, access line | [`crate::metrics`], [`crate::logging`] |
//!
//! Every step returns one [`Verdict`]: continue, or an [`EdgeResponse`] the dispatcher writes
//! ([`respond`]) the same way on HTTP/1.1 and HTTP/2. Cheapest rejection first; a 4xx written
//! by the gateway returns `Ok(true)` — it is traffic, not an error.

pub mod answer;
pub mod auth;
pub mod cors;
pub mod ctx;
pub mod exchange;
pub mod hygiene;
pub mod rate_limit;
pub mod response;
pub mod routing;
pub mod static_files;
pub mod upstream;

use crate::http::edge_response::{Body, EdgeResponse};
use crate::runtime::Limits;
use crate::state::SharedRuntime;
use answer::Verdict;
use async_trait::async_trait;
use bytes::Bytes;
use ctx::Ctx;
use pingora_core::connectors::{ConnectorOptions, TransportConnector};
use pingora_core::server::configuration::ServerConf;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorSource, ErrorType, OrErr as _, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use rate_limit::Stage;

/// The gateway's proxy service logic.
pub struct Gateway {
    runtime: SharedRuntime,
    /// The upstream connection pool of [`exchange`] (upgrades keep pingora-proxy's own).
    pool: TransportConnector,
}

impl Gateway {
    /// Proxy logic over the shared runtime; the pool sized as the server configures it.
    pub fn new(runtime: SharedRuntime, conf: &ServerConf) -> Self {
        Self {
            runtime,
            pool: TransportConnector::new(Some(ConnectorOptions::from_server_conf(conf))),
        }
    }
}

/// Returns from the enclosing pipeline with the answer when a step gives one.
macro_rules! step {
    ($verdict:expr) => {
        if let Verdict::Respond(r) = $verdict {
            return Verdict::Respond(r);
        }
    };
}

/// The `request_filter` steps in order, cheapest rejection first. `dryrun::eval` takes the
/// same steps for `check --requests`; the config_check drift test keeps the two in step.
async fn request_pipeline(session: &mut Session, ctx: &mut Ctx) -> Verdict {
    hygiene::identify(session, ctx);
    step!(hygiene::check(session, ctx));
    step!(routing::route(session.req_header_mut(), ctx));
    let req = session.req_header();
    step!(routing::maintenance(req, ctx));
    // Cheapest first: IP/header quotas before any token work, subject quotas right after.
    step!(rate_limit::check(req, ctx, Stage::BeforeAuth).await);
    // CORS preflights are answered before auth: they never carry a token.
    step!(cors::preflight(req, ctx));
    step!(auth::check(req, ctx).await);
    step!(rate_limit::check(req, ctx, Stage::Subject).await);
    static_files::serve(req, ctx)
}

/// Writes an answer of the gateway: the one place that decides whether the connection
/// closes after it (the phase asked, or the request body was not read), and that drains
/// what is left of the request body after an early answer.
pub async fn respond(session: &mut Session, ctx: &mut Ctx, mut answer: EdgeResponse) -> Result<()> {
    // A body we did not read must not be taken for the next request: close instead.
    let close = answer.close || (has_body(session.req_header()) && !session.is_body_done());
    if close {
        answer.put(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
        session.set_keepalive(None);
    }
    ctx.acct.status = answer.status();
    let head_only = session.req_header().method == http::Method::HEAD || answer.body.is_empty();
    let head = answer.take_head();
    session
        .write_response_header(Box::new(head), head_only)
        .await?;
    if !head_only {
        match answer.body {
            Body::Empty => {}
            Body::Bytes(b) => {
                ctx.acct.body_sent += b.len() as u64;
                session.write_response_body(Some(b), true).await?;
            }
            Body::File { path, start, end } => {
                stream_file(session, ctx, &path, start, end).await?;
            }
        }
    }
    if !ctx.acct.unframed {
        discard_body(session, &ctx.rt.limits).await;
    }
    Ok(())
}

/// Whether the request announces a body (which the gateway may not have read).
fn has_body(req: &RequestHeader) -> bool {
    req.headers.contains_key(http::header::TRANSFER_ENCODING)
        || req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

/// Streams `[start, end)` of a file in 64 KiB chunks.
async fn stream_file(
    session: &mut Session,
    ctx: &mut Ctx,
    path: &std::path::Path,
    start: u64,
    end: u64,
) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut f = tokio::fs::File::open(path)
        .await
        .or_err(ErrorType::InternalError, "opening static file")?;
    f.seek(std::io::SeekFrom::Start(start))
        .await
        .or_err(ErrorType::InternalError, "seeking static file")?;
    let mut left = end - start;
    while left > 0 {
        let mut buf = vec![0u8; left.min(64 * 1024) as usize];
        let n = f
            .read(&mut buf)
            .await
            .or_err(ErrorType::InternalError, "reading static file")?;
        if n == 0 {
            return Error::e_explain(ErrorType::InternalError, "static file shrank while serving");
        }
        buf.truncate(n);
        left -= n as u64;
        ctx.acct.body_sent += n as u64;
        session
            .write_response_body(Some(Bytes::from(buf)), left == 0)
            .await?;
    }
    Ok(())
}

/// After an early answer (the complete response is already written), reads and drops what is
/// left of the request body, within `discard_body_max_bytes` and `discard_body_timeout` (and
/// one second without a byte), before the stream or connection is let go.
///
/// HTTP/2: RFC 9113 §8.1 lets a server reset the stream with NO_ERROR right after such an
/// answer (h2 does when the stream is dropped), but a client still uploading may then lose the
/// answer: curl 7.88 ends the transfer with "(92) Stream error in the HTTP/2 framing layer"
/// before it shows the response it already received. Reading on until the client's END_STREAM
/// lets the stream end normally; past the bounds the NO_ERROR reset follows.
/// HTTP/1.1: the connection closes after the answer, and closing a socket with unread bytes
/// makes the kernel send a reset that can destroy the answer in the client's buffers (curl:
/// "(56) Connection reset by peer"); this is nginx's lingering close. Never called for a
/// request whose body framing was refused ([`ctx::Accounting::unframed`]): those bytes are
/// never parsed.
async fn discard_body(session: &mut Session, limits: &Limits) {
    const IDLE: std::time::Duration = std::time::Duration::from_secs(1);
    if session.is_body_done() || session.req_header().method == http::Method::HEAD {
        return;
    }
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if limits.discard_body_max_bytes == 0
        || declared.is_some_and(|n| n > limits.discard_body_max_bytes)
    {
        return;
    }
    let deadline = tokio::time::Instant::now() + limits.discard_body_timeout;
    let mut left = limits.discard_body_max_bytes;
    while left > 0 {
        let idle = (tokio::time::Instant::now() + IDLE).min(deadline);
        match tokio::time::timeout_at(idle, session.read_request_body()).await {
            Ok(Ok(Some(chunk))) => left = left.saturating_sub(chunk.len() as u64),
            // The body's end, a client reset or close, or a time bound.
            _ => return,
        }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::new(self.runtime.load_full())
    }

    fn init_downstream_modules(&self, modules: &mut pingora_core::modules::http::HttpModules) {
        // Our body module instead of pingora's compression module (see `compress`).
        modules.add_module(Box::new(crate::compress::EdgeBodyBuilder));
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        match request_pipeline(session, ctx).await {
            Verdict::Continue if exchange::eligible(session) => {
                ctx.upstream.direct = true;
                exchange::forward(&self.pool, session, ctx).await?;
                Ok(true)
            }
            Verdict::Continue => Ok(false),
            Verdict::Respond(answer) => {
                respond(session, ctx, answer).await?;
                Ok(true)
            }
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(b) = body {
            ctx.acct.body_bytes += b.len() as u64;
            if ctx.acct.body_bytes > ctx.rt.limits.max_body_bytes {
                return Error::e_explain(ErrorType::HTTPStatus(413), "request body over limit");
            }
        }
        Ok(())
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        upstream::peer(session.req_header(), ctx)
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        upstream::request(
            session.req_header(),
            session.is_upgrade_req(),
            upstream_request,
            ctx,
        )
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        e: Box<Error>,
    ) -> Box<Error> {
        upstream::connect_failed(ctx, e)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        response::refuse_unasked_upgrade(session, upstream_response)?;
        response::filter(session, upstream_response, ctx);
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            ErrorType::ReadTimedout | ErrorType::WriteTimedout
                if e.esource() == &ErrorSource::Upstream =>
            {
                504
            }
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    ErrorType::ReadTimedout => 408,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        let ours = matches!(e.etype(), ErrorType::HTTPStatus(_));
        if (code == 504 || code == 502) && !ours {
            if let Some(pool) = ctx.pool() {
                let kind = if code == 504 {
                    "timeout"
                } else {
                    "bad_gateway"
                };
                crate::metrics::UPSTREAM_ERRORS
                    .with_label_values(&[pool.name.as_str(), kind])
                    .inc();
            }
        }
        // Only an interim head (a relayed `100 Continue`) may have gone out: the answer follows.
        let answered = session
            .response_written()
            .is_some_and(|r| !r.status.is_informational());
        if code > 0 && !answered {
            if ctx.request_id.is_empty() {
                ctx.request_id = crate::request_id::from_client(None);
            }
            let a = answer::error(session.req_header(), ctx, code).closing();
            if let Err(we) = respond(session, ctx, a).await {
                tracing::debug!(error = %we, "could not write error response");
            }
        }
        if ctx.upstream.direct {
            // What pingora-proxy logs for a failed proxy attempt (its own line is suppressed).
            tracing::error!(
                "Fail to proxy: {e}, status: {code}, {}",
                session.request_summary()
            );
        }
        ctx.acct.status = code;
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &Ctx, _e: &Error) -> bool {
        ctx.upstream.direct
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        let status = session
            .response_written()
            .map_or(ctx.acct.status, |r| r.status.as_u16());
        let m = ctx
            .route()
            .map_or(&*crate::metrics::NO_ROUTE, |r| &r.metrics);
        let elapsed = ctx.acct.started.elapsed();
        m.record(&session.req_header().method, status, elapsed);
        if let (Some(choice), Some(split)) = (ctx.upstream.choice, ctx.split()) {
            split.record(choice, status);
        }
        if let Some(enc) = ctx.acct.encoding {
            m.record_static(status, enc);
        }
        if ctx.rt.access_log {
            crate::logging::write(session, ctx, status, elapsed);
        }
    }
}
