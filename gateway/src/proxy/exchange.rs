//! The proxied exchange of an ordinary request, written on pingora-core's upstream pool and
//! HTTP/1.1 client session instead of pingora-proxy's `proxy_1to1` (#23): one straight async
//! function — take a pooled connection, write the head, stream the request body, read the
//! response, run the same response phase, stream the body down, return the connection.
//!
//! Why: `proxy_1to1` joins a downstream and an upstream task through channels and re-polls
//! the idle client read on every wake; measured on the spike (`benches/counts.py`, S3), the
//! same exchange done here costs ≈ 20 % fewer instructions and allocations a request than
//! through `proxy_1to1` (RESULTS.md, session 13).
//!
//! What stays on `proxy_1to1` ([`eligible`] says no): protocol upgrades (WebSocket),
//! `Expect: 100-continue`, targets that are not origin-form, and HTTP/2 requests whose `Host`
//! and `:authority` disagree — the cases where pingora-proxy's concurrency or authority
//! reconciliation is the behaviour we want. Everything else keeps the behaviour the
//! `ProxyHttp` phases give: the same peer choice and retries on connect failure, the same
//! upstream head ([`super::upstream::request`]), body limit, response phase
//! ([`super::response::filter`]) and body module, and errors through `fail_to_proxy`.
//!
//! Not done here, deliberately: watching the client for an abort while the backend thinks
//! (pingora-proxy polls the client read for it, and that poll is much of what this path
//! saves); the backend's read timeout bounds such a request instead.

use super::ctx::Ctx;
use http::header;
use pingora_core::connectors::TransportConnector;
use pingora_core::protocols::http::authority::validate_request_authority;
use pingora_core::protocols::http::v1::client::HttpSession as Upstream;
use pingora_core::upstreams::peer::{HttpPeer, Peer as _};
use pingora_core::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;

/// Whether this request may take the straight path (see the module docs for what may not).
pub fn eligible(session: &Session) -> bool {
    let req = session.req_header();
    let h = &req.headers;
    if h.contains_key(header::UPGRADE) || h.contains_key(header::EXPECT) || !plain_connection(h) {
        return false;
    }
    if req.raw_path().first() != Some(&b'/') {
        return false;
    }
    // pingora-proxy sends an HTTP/2 request's `:authority` as `Host`; we send the `Host` the
    // route was chosen by. Same value or no `Host`: the same request either way.
    match (req.uri.authority(), h.get(header::HOST)) {
        (Some(a), Some(host)) => host.as_bytes() == a.as_str().as_bytes(),
        (Some(a), None) => !a.as_str().contains('@'),
        (None, _) => true,
    }
}

/// Whether `Connection` names nothing but `close`/`keep-alive`: the fields a client nominates
/// (and pingora-proxy's refusal to let it nominate `Host` or `X-Forwarded-*`, its bound on
/// the count, its token check) stay with pingora-proxy's sanitizer.
fn plain_connection(h: &http::HeaderMap) -> bool {
    h.get_all(header::CONNECTION).iter().all(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .map(<[u8]>::trim_ascii)
            .all(|t| {
                t.is_empty()
                    || t.eq_ignore_ascii_case(b"close")
                    || t.eq_ignore_ascii_case(b"keep-alive")
            })
    })
}

/// Proxies the request; `Ok` once the whole response is written. An error carries its side
/// (`into_up`/`into_down`) or its status (`HTTPStatus`) for `fail_to_proxy`.
pub async fn forward(
    pool: &TransportConnector,
    session: &mut Session,
    ctx: &mut Ctx,
) -> Result<()> {
    let body_empty = session.is_body_empty();
    let (mut up, mut reused, mut peer) = connect(pool, session, ctx).await?;
    loop {
        match send_request(&mut up, session, ctx, body_empty, &peer).await {
            Ok(()) => break,
            // A pooled connection the backend closed while it sat idle: once more on a new
            // connection to the same peer (not another peer: this one is not at fault).
            Err(e) if may_retry_stale(&e, reused, body_empty, session) => {
                (up, reused) = match open(pool, &peer, true).await {
                    Ok(u) => u,
                    Err(e) => {
                        connect_error(ctx, e)?;
                        let (u, r, p) = connect(pool, session, ctx).await?;
                        peer = p;
                        (u, r)
                    }
                };
            }
            Err(e) => return Err(e),
        }
    }
    relay_response(&mut up, session, ctx).await?;
    up.respect_keepalive();
    if let Some(stream) = up.reuse().await {
        pool.release_stream(stream, peer.reuse_hash(), peer.idle_timeout());
    }
    Ok(())
}

/// Head, body, and the response head read.
async fn send_request(
    up: &mut Upstream,
    session: &mut Session,
    ctx: &mut Ctx,
    body_empty: bool,
    peer: &HttpPeer,
) -> Result<()> {
    send_head(up, session, ctx, body_empty, peer).await?;
    if !body_empty {
        send_body(up, session, ctx).await?;
    }
    up.read_response().await.map_err(|e| e.into_up())?;
    Ok(())
}

/// A connection to the peer: pooled unless `fresh`; `true` with it when it was pooled.
async fn open(pool: &TransportConnector, peer: &HttpPeer, fresh: bool) -> Result<(Upstream, bool)> {
    let (stream, reused) = if fresh {
        (pool.new_stream(peer).await?, false)
    } else {
        pool.get_stream(peer).await?
    };
    let mut up = Upstream::new_with_options(stream, peer);
    up.read_timeout = peer.options.read_timeout;
    up.write_timeout = peer.options.write_timeout;
    Ok((up, reused))
}

/// A connect failure marked as `fail_to_connect` marks it: `Ok` when another peer may be tried.
fn connect_error(ctx: &Ctx, mut e: Box<Error>) -> Result<()> {
    e.as_up();
    let mut e = super::upstream::connect_failed(ctx, e);
    e.retry.decide_reuse(false);
    if e.retry() {
        Ok(())
    } else {
        Err(e.into_up())
    }
}

/// A connection to a healthy peer of the route, retrying connect failures on another peer
/// as pingora-proxy does with `fail_to_connect`.
async fn connect(
    pool: &TransportConnector,
    session: &Session,
    ctx: &mut Ctx,
) -> Result<(Upstream, bool, Box<HttpPeer>)> {
    loop {
        let peer = super::upstream::peer(session.req_header(), ctx)?;
        match open(pool, &peer, false).await {
            Ok((up, reused)) => return Ok((up, reused, peer)),
            Err(e) => connect_error(ctx, e)?,
        }
    }
}

/// A failure on a reused connection before anything of the request body was read: the
/// backend closed it while pooled; pingora-proxy retries such an idempotent request too.
fn may_retry_stale(e: &Error, reused: bool, body_empty: bool, session: &Session) -> bool {
    let mut retry = e.retry;
    retry.decide_reuse(reused);
    reused && body_empty && retry.retry() && session.req_header().method.is_idempotent()
}

/// The upstream head: the downstream head rewritten by [`super::upstream::request`], framed
/// for HTTP/1.1 (a body without a length goes chunked, as pingora-proxy frames it).
async fn send_head(
    up: &mut Upstream,
    session: &Session,
    ctx: &Ctx,
    body_empty: bool,
    peer: &HttpPeer,
) -> Result<()> {
    let mut req: RequestHeader = session.req_header().clone();
    req.set_version(http::Version::HTTP_11);
    super::upstream::request(session.req_header(), false, &mut req, ctx)?;
    if !body_empty
        && !req.headers.contains_key(header::CONTENT_LENGTH)
        && !req.headers.contains_key(header::TRANSFER_ENCODING)
    {
        req.insert_header(header::TRANSFER_ENCODING, "chunked")?;
    }
    // The check pingora-proxy makes of the head its filters produced.
    validate_request_authority(&req).map_err(|e| e.into_in())?;
    up.write_request_header(Box::new(req))
        .await
        .map(|_| ())
        .map_err(|e| e.into_up().more_context(format!("Peer: {peer}")))
}

/// Streams the request body up, counted against the body limit (413) as
/// `request_body_filter` counts it.
async fn send_body(up: &mut Upstream, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
    while let Some(chunk) = session
        .read_request_body()
        .await
        .map_err(|e| e.into_down())?
    {
        // An empty chunk (an HTTP/2 END_STREAM frame without data) written to a chunked
        // body would be its terminator.
        if chunk.is_empty() {
            continue;
        }
        super::count_body(ctx, chunk.len())?;
        up.write_body(&chunk).await.map_err(|e| e.into_up())?;
    }
    up.finish_body().await.map_err(|e| e.into_up())?;
    Ok(())
}

/// The response: informational heads passed on, the final head through the response phase
/// and the body module, the body streamed down.
async fn relay_response(up: &mut Upstream, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
    loop {
        let Some(head) = up.resp_header() else {
            return Error::e_explain(ErrorType::InvalidHTTPHeader, "no response head")
                .map_err(|e: Box<Error>| e.into_up());
        };
        let mut head: Box<ResponseHeader> = Box::new(head.clone());
        if head.status == http::StatusCode::SWITCHING_PROTOCOLS {
            // Never asked for: an upgrade request does not take this path.
            return Err(Error::explain(
                ErrorType::InvalidHTTPHeader,
                "101 without an upgrade request",
            )
            .into_up());
        }
        let informational = head.status.is_informational();
        let end = !informational && up.is_body_done();
        if !informational {
            chunk_unframed(session, &mut head, end)?;
        }
        super::response::filter(session, &mut head, ctx);
        session
            .write_response_header(head, end)
            .await
            .map_err(|e| e.into_down())?;
        if !informational {
            break;
        }
        up.read_response().await.map_err(|e| e.into_up())?;
    }
    if !up.is_body_done() {
        loop {
            let chunk = up.read_body_bytes().await.map_err(|e| e.into_up())?;
            let end = chunk.is_none() || up.is_body_done();
            session
                .write_response_body(chunk, end)
                .await
                .map_err(|e| e.into_down())?;
            if end {
                break;
            }
        }
    }
    Ok(())
}

/// An HTTP/1.0-style response delimited by close goes down chunked, so the client's
/// connection survives it (what pingora-proxy does).
fn chunk_unframed(session: &Session, head: &mut ResponseHeader, end: bool) -> Result<()> {
    let no_body = session.req_header().method == http::Method::HEAD
        || matches!(head.status.as_u16(), 204 | 304);
    if !no_body
        && !end
        && !head.headers.contains_key(header::TRANSFER_ENCODING)
        && !head.headers.contains_key(header::CONTENT_LENGTH)
    {
        head.set_version(http::Version::HTTP_11);
        head.insert_header(header::TRANSFER_ENCODING, "chunked")?;
    }
    Ok(())
}
