//! The proxied exchange of an ordinary request, written on pingora-core's upstream pool and
//! HTTP/1.1 client session instead of pingora-proxy's `proxy_1to1` (#23): one straight async
//! function — take a pooled connection, write the head, read the response, run the same
//! response phase, stream the body down, return the connection.
//!
//! Why: `proxy_1to1` joins a downstream and an upstream task through channels and re-polls
//! the idle client read on every wake; measured on the spike (`benches/counts.py`, S3), the
//! same exchange done here costs ≈ 20 % fewer instructions and allocations a request than
//! through `proxy_1to1` (RESULTS.md, session 13).
//!
//! Only requests without a body take it ([`eligible`]). A request body must go up while the
//! response may already come down — a backend answers 413 or 401 early and closes, or
//! answers while still reading — which is `proxy_1to1`'s two-task design, so bodies stay
//! there, as do protocol upgrades (WebSocket), `Expect: 100-continue`, fields nominated by
//! `Connection`, targets that are not origin-form, and HTTP/2 requests whose `Host` and
//! `:authority` disagree. Everything else keeps the behaviour the `ProxyHttp` phases give:
//! the same peer choice and retries on connect failure, the same upstream head
//! ([`super::upstream::request`]), response phase ([`super::response::filter`]) and body
//! module, and errors through `fail_to_proxy`.
//!
//! A client that goes away while the backend thinks ends the exchange as in pingora-proxy,
//! but is watched only once the backend has taken [`WATCH_CLIENT_AFTER`]: pingora-proxy
//! polls the client's read on every wake, and that poll is much of what this path saves.

use super::ctx::Ctx;
use http::header;
use pingora_core::connectors::TransportConnector;
use pingora_core::protocols::http::authority::validate_request_authority;
use pingora_core::protocols::http::v1::client::HttpSession as Upstream;
use pingora_core::upstreams::peer::{HttpPeer, Peer as _};
use pingora_core::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use pingora_timeout::fast_timeout::fast_sleep;
use std::time::Duration;

/// Whether this request may take the straight path (see the module docs for what may not).
pub fn eligible(session: &mut Session) -> bool {
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
    let same_authority = match (req.uri.authority(), h.get(header::HOST)) {
        (Some(a), Some(host)) => host.as_bytes() == a.as_str().as_bytes(),
        (Some(a), None) => !a.as_str().contains('@'),
        (None, _) => true,
    };
    same_authority && session.is_body_empty()
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
/// (`into_up`/[`down`]) or its status (`HTTPStatus`) for `fail_to_proxy`.
pub async fn forward(
    pool: &TransportConnector,
    session: &mut Session,
    ctx: &mut Ctx,
) -> Result<()> {
    let (mut up, mut reused, mut peer) = connect(pool, session, ctx).await?;
    loop {
        match send_request(&mut up, session, ctx, &peer).await {
            Ok(()) => break,
            // A pooled connection the backend closed while it sat idle: once more on a new
            // connection to the same peer (not another peer: this one is not at fault).
            Err(e) if may_retry_stale(&e, reused, session) => {
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

/// The head, and the response head read.
async fn send_request(
    up: &mut Upstream,
    session: &mut Session,
    ctx: &Ctx,
    peer: &HttpPeer,
) -> Result<()> {
    send_head(up, session, ctx, peer).await?;
    read_head(up, session).await
}

/// How long the backend may think before the client is also watched for an abort. Below it
/// a request pays for a timer only, not for a read on the client's connection per wake.
const WATCH_CLIENT_AFTER: Duration = Duration::from_millis(50);

/// Reads the response head; once it takes longer than [`WATCH_CLIENT_AFTER`], a client that
/// goes away (HTTP/1.1 close, HTTP/2 reset, bytes after its request) ends the exchange, as
/// it does in pingora-proxy, and the upstream connection is dropped, not pooled.
async fn read_head(up: &mut Upstream, session: &mut Session) -> Result<()> {
    let read = up.read_response();
    tokio::pin!(read);
    tokio::select! {
        biased;
        r = &mut read => return r.map(drop).map_err(|e| e.into_up()),
        () = fast_sleep(WATCH_CLIENT_AFTER) => {}
    }
    tokio::select! {
        biased;
        r = &mut read => r.map(drop).map_err(|e| e.into_up()),
        gone = session.downstream_session.read_body_or_idle(true) => match gone {
            Err(e) => Err(down(e)),
            // Not a way it ends once the request is read; wait for the head alone.
            Ok(_) => read.await.map(drop).map_err(|e| e.into_up()),
        },
    }
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

/// A failure on a reused connection before any response byte: the backend closed it while
/// pooled; pingora-proxy retries such an idempotent request too (never a POST: the backend
/// may have acted on it).
fn may_retry_stale(e: &Error, reused: bool, session: &Session) -> bool {
    let mut retry = e.retry;
    retry.decide_reuse(reused);
    reused
        && retry.retry()
        && e.esource == ErrorSource::Upstream
        && session.req_header().method.is_idempotent()
}

/// An error of writing to the client; one our own body module raised keeps its source.
fn down(mut e: Box<Error>) -> Box<Error> {
    if e.esource == ErrorSource::Unset {
        e.esource = ErrorSource::Downstream;
    }
    e
}

/// The upstream head: the downstream head rewritten by [`super::upstream::request`].
async fn send_head(up: &mut Upstream, session: &Session, ctx: &Ctx, peer: &HttpPeer) -> Result<()> {
    let mut req: RequestHeader = session.req_header().clone();
    req.set_version(http::Version::HTTP_11);
    super::upstream::request(session.req_header(), false, &mut req, ctx)?;
    // An HTTP/2 request's URI carries its `:authority`; going up as HTTP/1.1 the `Host`
    // field (which a route rule may have set) is the authority, so the URI keeps only the
    // origin form — as pingora-proxy's reconciliation ends up sending it.
    if req.uri.authority().is_some() {
        if let Some(pq) = req.uri.path_and_query().cloned() {
            req.set_uri(http::Uri::from(pq));
        }
    }
    // The check pingora-proxy makes of the head its filters produced.
    validate_request_authority(&req).map_err(|e| e.into_in())?;
    up.write_request_header(Box::new(req))
        .await
        .map(|_| ())
        .map_err(|e| e.into_up().more_context(format!("Peer: {peer}")))
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
        // An upgrade request never takes this path, so any `101` is one nobody asked for.
        super::response::refuse_unasked_upgrade(session, &head)?;
        let informational = head.status.is_informational();
        let end = !informational && up.is_body_done();
        if !informational {
            chunk_unframed(session, &mut head, end)?;
        }
        super::response::filter(session, &mut head, ctx);
        session
            .write_response_header(head, end)
            .await
            .map_err(down)?;
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
                .map_err(down)?;
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
