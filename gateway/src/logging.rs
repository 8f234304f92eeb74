//! Logging: process events as JSON through `tracing` (pingora's `log` records included) on
//! stderr, and the access log — one JSON line per request on stdout.
//!
//! Access lines are written straight into one of a few shared buffers (a request thread keeps
//! to its own shard, so the lock is uncontended): no allocation, no channel, no wake-up per
//! line. A writer thread swaps the buffers out every 50 ms and writes them to stdout in one
//! go, so a slow stdout never blocks a request; a shard that grows past 4 MiB (stdout stuck)
//! drops lines and counts them (`gateway_access_log_dropped_total`).

use crate::proxy::ctx::Ctx;
use crate::text::{push_ip, push_u64};
use pingora_core::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora_proxy::Session;
use std::io::Write as _;
use std::sync::LazyLock;
use std::sync::Mutex;

/// Installs the global subscriber once; later calls are no-ops. Level from `RUST_LOG`
/// (default `info`).
pub fn init() {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .json()
        .with_writer(std::io::stderr)
        .with_filter(filter);
    let _ = tracing_subscriber::registry().with(fmt).try_init();
}

const SHARDS: usize = 16;
const SHARD_CAP: usize = 4 << 20;

/// The access-log buffers, and the writer thread started on first use.
static BUFFERS: LazyLock<[Mutex<Vec<u8>>; SHARDS]> = LazyLock::new(|| {
    let spawned = std::thread::Builder::new()
        .name("access-log".into())
        .spawn(|| {
            let stdout = std::io::stdout();
            let mut spare = Vec::with_capacity(64 * 1024);
            loop {
                std::thread::sleep(std::time::Duration::from_millis(50));
                let mut out = stdout.lock();
                for shard in BUFFERS.iter() {
                    // Swap under the lock, write outside it.
                    std::mem::swap(
                        &mut *shard.lock().unwrap_or_else(|p| p.into_inner()),
                        &mut spare,
                    );
                    if !spare.is_empty() {
                        let _ = out.write_all(&spare);
                        spare.clear();
                    }
                }
                let _ = out.flush();
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the access log writer; lines will pile up");
    }
    std::array::from_fn(|_| Mutex::new(Vec::with_capacity(64 * 1024)))
});

thread_local! {
    /// This thread's shard (threads are spread over the shards as they first log).
    static SHARD: usize = {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % SHARDS
    };
}

thread_local! {
    /// The second this thread last formatted, as `YYYY-MM-DDTHH:MM:SS.`: lines within one
    /// second share it and add only their milliseconds.
    static LAST_SECOND: std::cell::Cell<(u64, [u8; 20])> = const { std::cell::Cell::new((u64::MAX, [0; 20])) };
}

/// [`rfc3339`] of the current time; the date and time of day are formatted once per second
/// per thread.
fn now_rfc3339(out: &mut Vec<u8>) {
    rfc3339_cached(out, std::time::SystemTime::now());
}

fn rfc3339_cached(out: &mut Vec<u8>, now: std::time::SystemTime) {
    let d = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let (secs, ms) = (d.as_secs(), d.subsec_millis());
    let (last, mut text) = LAST_SECOND.with(|c| c.get());
    if last != secs {
        let mut full = Vec::with_capacity(24);
        rfc3339(&mut full, now);
        text.copy_from_slice(&full[..20]);
        LAST_SECOND.with(|c| c.set((secs, text)));
    }
    let mut line = [0u8; 24];
    line[..20].copy_from_slice(&text);
    line[20] = b'0' + (ms / 100) as u8;
    line[21] = b'0' + (ms / 10 % 10) as u8;
    line[22] = b'0' + (ms % 10) as u8;
    line[23] = b'Z';
    out.extend_from_slice(&line);
}

/// Appends a duration as milliseconds with three decimals (`12.345`).
fn push_ms(out: &mut Vec<u8>, d: std::time::Duration) {
    let micros = d.as_micros() as u64;
    push_u64(out, micros / 1000);
    out.push(b'.');
    let frac = micros % 1000;
    if frac < 100 {
        out.push(b'0');
    }
    if frac < 10 {
        out.push(b'0');
    }
    push_u64(out, frac);
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` (RFC 3339, UTC) for `now`. Runs once a second per thread
/// ([`rfc3339_cached`] reuses the text within a second), so the `time` crate's formatter is
/// off the per-request path.
fn rfc3339(out: &mut Vec<u8>, now: std::time::SystemTime) {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    let t = time::OffsetDateTime::from(now);
    if t.format_into(out, FORMAT).is_err() {
        out.extend_from_slice(b"1970-01-01T00:00:00.000Z");
    }
}

fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    // Almost every value needs no escaping: one block scan, then one copy.
    if is_clean(bytes) {
        out.extend_from_slice(bytes);
    } else {
        for &b in bytes {
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b if needs_escape(b) => {
                    out.extend_from_slice(b"\\u00");
                    out.push(crate::request_id::HEX[usize::from(b >> 4)]);
                    out.push(crate::request_id::HEX[usize::from(b & 0xf)]);
                }
                b => out.push(b),
            }
        }
    }
    out.push(b'"');
}

/// Whether no byte of `bytes` needs escaping: sixteen bytes at a time, branch-free inside a
/// block.
fn is_clean(bytes: &[u8]) -> bool {
    /// SWAR over two 8-byte words (the compiler would not vectorise the byte loop): a byte
    /// below 0x20, or equal to `"`, `\` or DEL, sets a high bit in the result. Exact for
    /// "any", which is all that is asked.
    fn block_is_clean(block: &[u8; 16]) -> bool {
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGH: u64 = 0x8080_8080_8080_8080;
        let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
        let bad = |x: u64| {
            (x.wrapping_sub(ONES * 0x20) & !x & HIGH)
                | has_zero(x ^ (ONES * u64::from(b'"')))
                | has_zero(x ^ (ONES * u64::from(b'\\')))
                | has_zero(x ^ (ONES * 0x7f))
        };
        let (a, b) = block.split_at(8);
        let a = u64::from_le_bytes(a.try_into().unwrap_or([0; 8]));
        let b = u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
        bad(a) | bad(b) == 0
    }
    let mut blocks = bytes.chunks_exact(16);
    for block in &mut blocks {
        if !block_is_clean(block.try_into().unwrap_or(&[0; 16])) {
            return false;
        }
    }
    // The tail too as one block (padded with a byte that needs no escaping): a byte-by-byte
    // loop over short strings cost more than all the full blocks.
    let tail = blocks.remainder();
    let mut last = [b'a'; 16];
    last[..tail.len()].copy_from_slice(tail);
    block_is_clean(&last)
}

/// Bytes a JSON string can't hold as they are (DEL escaped too: log viewers choke on it).
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\' || b == 0x7f
}

/// Appends `"key":"value",` (string value, escaped). Inlined so that the key is a constant
/// copy rather than a call to `memcpy`.
#[inline(always)]
fn field(out: &mut Vec<u8>, key: &str, value: &str) {
    out.push(b'"');
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
    json_str(out, value);
    out.push(b',');
}

/// Appends `"key":"value",` for a value known to need no escaping (our own constants, values
/// checked on the way in).
#[inline(always)]
fn field_raw(out: &mut Vec<u8>, key: &str, value: &str) {
    debug_assert!(is_clean(value.as_bytes()), "{value:?} needs escaping");
    out.push(b'"');
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":\"");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\",");
}

/// Appends `"upstream":"<addr>",` for a peer address (IP and port need no escaping).
fn field_peer(out: &mut Vec<u8>, peer: &PeerAddr) {
    out.extend_from_slice(b"\"upstream\":\"");
    match peer.as_inet() {
        Some(std::net::SocketAddr::V4(a)) => {
            push_ip(out, std::net::IpAddr::V4(*a.ip()));
            out.push(b':');
            push_u64(out, u64::from(a.port()));
        }
        _ => {
            let _ = write!(out, "{peer}");
        }
    }
    out.extend_from_slice(b"\",");
}

/// Appends the access line of a finished request to `s`.
/// `elapsed` is the request's duration (measured once, for the metrics too).
fn access_line(
    s: &mut Vec<u8>,
    session: &Session,
    ctx: &Ctx,
    status: u16,
    elapsed: std::time::Duration,
) {
    let req = session.req_header();
    // One line is ~350 bytes: grow once, not per field.
    s.reserve(512);
    s.extend_from_slice(b"{\"ts\":\"");
    now_rfc3339(s);
    s.extend_from_slice(b"\",");
    // Sane client ids and our hex ids need no escaping (`request_id::is_sane`).
    field_raw(s, "request_id", &ctx.request_id);
    s.extend_from_slice(b"\"client_ip\":\"");
    if let Some(ip) = ctx.client.ip {
        push_ip(s, ip);
    }
    s.extend_from_slice(b"\",");
    // A method is an HTTP token (the `http` crate checks): nothing to escape.
    field_raw(s, "method", req.method.as_str());
    let host = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| std::str::from_utf8(h.as_bytes()).ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    field(s, "host", host);
    // The normalised path when known, never the query string.
    let path = if ctx.routing.path.is_empty() {
        req.uri.path()
    } else {
        &ctx.routing.path
    };
    field(s, "path", path);
    let route = ctx.route().map_or("", |r| r.name.as_str());
    field(s, "route", route);
    if let Some(pool) = ctx.pool() {
        field(s, "pool", &pool.name);
    }
    if let Some(p) = &ctx.upstream.peer {
        field_peer(s, p);
    }
    if let Some(sub) = ctx.identity.as_ref().and_then(|i| i.sub.as_deref()) {
        field(s, "sub", sub);
    }
    if let Some(d) = session.digest().and_then(|d| d.ssl_digest.as_ref()) {
        field_raw(
            s,
            "tls_version",
            crate::conn::tls::version_label(&d.version),
        );
    }
    let version = match req.version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "",
    };
    field_raw(s, "http_version", version);
    // Any UTF-8 is kept (JSON carries it as is; `to_str` would drop non-ASCII agents and
    // costs a second scan); bytes that are not UTF-8 leave the field out.
    if let Some(ua) = req
        .headers
        .get(http::header::USER_AGENT)
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
    {
        field(s, "user_agent", ua);
    }
    let sent = ctx.acct.body_sent.max(session.body_bytes_sent() as u64);
    s.extend_from_slice(b"\"status\":");
    push_u64(s, u64::from(status));
    s.extend_from_slice(b",\"bytes_sent\":");
    push_u64(s, sent);
    s.extend_from_slice(b",\"duration_ms\":");
    push_ms(s, elapsed);
    if let Some(ms) = ctx.upstream.ms {
        s.extend_from_slice(b",\"upstream_ms\":");
        push_ms(s, std::time::Duration::from_secs_f64(ms / 1000.0));
    }
    s.extend_from_slice(b"}\n");
}

/// Writes the access line of a finished request into this thread's buffer.
pub fn write(session: &Session, ctx: &Ctx, status: u16, elapsed: std::time::Duration) {
    let shard = SHARD.with(|s| *s);
    let mut buf = BUFFERS[shard].lock().unwrap_or_else(|p| p.into_inner());
    if buf.len() > SHARD_CAP {
        drop(buf);
        crate::metrics::ACCESS_LOG_DROPPED.inc();
        return;
    }
    access_line(&mut buf, session, ctx, status, elapsed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let mut out = Vec::new();
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_795_329_000_123);
        rfc3339(&mut out, t);
        let text = String::from_utf8(out).expect("utf8");
        let parsed =
            time::OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339)
                .expect("parses as RFC 3339");
        assert_eq!(parsed.unix_timestamp(), 1_795_329_000);
        assert_eq!(parsed.millisecond(), 123);
        for (secs, want) in [
            (0, "1970-01-01T00:00:00.000Z"),
            (951_782_400, "2000-02-29T00:00:00.000Z"),
            (4_107_542_399, "2100-02-28T23:59:59.000Z"),
        ] {
            let mut out = Vec::new();
            rfc3339(
                &mut out,
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
            );
            assert_eq!(String::from_utf8(out).expect("utf8"), want);
        }
    }

    #[test]
    fn numbers_are_written_like_format_would() {
        for n in [0u64, 7, 10, 99, 100, 101, 999, 1000, 1_000_000, u64::MAX] {
            let mut out = Vec::new();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
        for (micros, want) in [
            (0u64, "0.000"),
            (5, "0.005"),
            (1_050, "1.050"),
            (12_345_678, "12345.678"),
        ] {
            let mut out = Vec::new();
            push_ms(&mut out, std::time::Duration::from_micros(micros));
            assert_eq!(String::from_utf8(out).expect("utf8"), want);
        }
        let mut a = Vec::new();
        now_rfc3339(&mut a);
        let mut b = Vec::new();
        now_rfc3339(&mut b);
        assert_eq!(a.len(), 24);
        assert!(b >= a, "cached or newer");
    }

    #[test]
    fn addresses_are_written_like_display() {
        for ip in [
            "127.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "10.20.3.4",
            "::1",
            "2001:db8::7",
        ] {
            let ip: std::net::IpAddr = ip.parse().expect("ip");
            let mut out = Vec::new();
            push_ip(&mut out, ip);
            assert_eq!(out, ip.to_string().as_bytes());
        }
        for addr in ["127.0.0.1:8080", "[::1]:443", "10.0.0.9:1"] {
            let inet: std::net::SocketAddr = addr.parse().expect("addr");
            let mut out = Vec::new();
            field_peer(&mut out, &PeerAddr::Inet(inet));
            assert_eq!(out, format!("\"upstream\":\"{inet}\",").as_bytes());
        }
    }

    #[test]
    fn the_block_scan_finds_every_byte_that_needs_escaping() {
        // Every length around the 16-byte blocks, every position, every byte value.
        for len in 0..40 {
            for pos in 0..len {
                for b in 0..=255u8 {
                    let mut v = vec![b'a'; len];
                    v[pos] = b;
                    assert_eq!(
                        is_clean(&v),
                        !needs_escape(b),
                        "len {len} pos {pos} byte {b}"
                    );
                }
            }
            assert!(is_clean(&vec![b'a'; len]));
        }
        // Mixes of the bytes around each boundary (borrows between bytes must not hide one).
        let edge = [
            0x00u8, 0x01, 0x1f, 0x20, 0x21, 0x22, 0x23, 0x5b, 0x5c, 0x5d, 0x7e, 0x7f, 0x80, 0xa2,
            0xdc, 0xff,
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..200_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 33) as usize;
            let v: Vec<u8> = (0..len)
                .map(|i| edge[((seed >> (i % 16 * 4)) & 0xf) as usize])
                .collect();
            let want = !v.iter().any(|&b| needs_escape(b));
            assert_eq!(is_clean(&v), want, "{v:?}");
        }
    }

    #[test]
    fn the_cached_second_matches_a_fresh_format() {
        // Same second (cache hit), the next second, back again, and a jump of a day.
        for ms in [
            1_795_329_000_123u64,
            1_795_329_000_999,
            1_795_329_001_000,
            1_795_329_000_500,
            1_795_415_400_007,
        ] {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
            let (mut cached, mut fresh) = (Vec::new(), Vec::new());
            rfc3339_cached(&mut cached, t);
            rfc3339(&mut fresh, t);
            assert_eq!(cached, fresh, "{ms}");
        }
    }

    #[test]
    fn strings_are_escaped() {
        let mut out = Vec::new();
        field(&mut out, "k", "a\"b\\c\n\u{7f}é");
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "\"k\":\"a\\\"b\\\\c\\u000a\\u007fé\","
        );
    }
}
