//! HTTP/2 limits probed with raw frames: the stream cap is enforced by the server (a client
//! library would politely queue the 101st stream instead of sending it), and a rapid-reset
//! burst and a CONTINUATION flood leave the gateway's memory bounded and the gateway serving.

use crate::harness::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub(crate) fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A GET header block in HPACK without touching the dynamic table: `:method GET`, `:scheme
/// https` from the static table, `:path` and `:authority` as literals without indexing.
fn get_headers(path: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0x87];
    b.push(0x04);
    b.push(path.len() as u8);
    b.extend_from_slice(path.as_bytes());
    b.push(0x01);
    b.push(9);
    b.extend_from_slice(b"localhost");
    b
}

/// Reads frames for `window`: (type, flags, stream, payload) of each.
pub(crate) async fn read_frames<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    window: Duration,
) -> Vec<(u8, u8, u32, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let mut frames = Vec::new();
    let mut i = 0;
    while i + 9 <= buf.len() {
        let len =
            (usize::from(buf[i]) << 16) | (usize::from(buf[i + 1]) << 8) | usize::from(buf[i + 2]);
        if i + 9 + len > buf.len() {
            break;
        }
        let stream =
            u32::from_be_bytes([buf[i + 5], buf[i + 6], buf[i + 7], buf[i + 8]]) & 0x7fff_ffff;
        frames.push((
            buf[i + 3],
            buf[i + 4],
            stream,
            buf[i + 9..i + 9 + len].to_vec(),
        ));
        i += 9 + len;
    }
    frames
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

async fn start(dir: &std::path::Path) -> (Gateway, Log, TestCerts) {
    let certs = TestCerts::new(dir);
    let (backend, seen) = recording_backend().await;
    let ports = Ports::new();
    let conf = format!(
        "{}{}{}\n[[routes]]\nname = \"api\"\nprefix = \"/api\"\nkind = \"proxy\"\nupstream = \"backend\"\n",
        ports.sections(dir),
        tls_section(&certs),
        pool("backend", &[backend.to_string()], "health_check_path = \"\""),
    );
    let gw = start_gateway(dir, &ports, &conf, &certs.ca_pem);
    (gw, seen, certs)
}

/// Opens an h2 connection and exchanges SETTINGS (ours empty, theirs acknowledged).
pub(crate) async fn h2_connect(
    gw: &Gateway,
    ca: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut s = tls_connect_alpn(gw.https, ca, b"h2").await;
    assert_eq!(
        s.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "h2 negotiated"
    );
    s.write_all(PREFACE).await.expect("preface");
    s.write_all(&frame(0x4, 0, 0, &[])).await.expect("settings");
    let frames = read_frames(&mut s, Duration::from_millis(300)).await;
    let settings = frames
        .iter()
        .find(|f| f.0 == 0x4 && f.1 & 1 == 0)
        .expect("server SETTINGS");
    // SETTINGS_MAX_CONCURRENT_STREAMS (0x3) is advertised as 100.
    let max_streams = settings.3.chunks(6).find_map(|p| {
        (u16::from_be_bytes([p[0], p[1]]) == 0x3)
            .then(|| u32::from_be_bytes([p[2], p[3], p[4], p[5]]))
    });
    assert_eq!(max_streams, Some(100));
    s.write_all(&frame(0x4, 0x1, 0, &[])).await.expect("ack");
    s
}

/// An HTTP/2 (prior knowledge) client trusting the test CA.
fn h2_client(gw: &Gateway) -> reqwest::Client {
    gw.client_builder()
        .http2_prior_knowledge()
        .build()
        .expect("h2 client")
}

/// The status of a GET of `path` over `c`.
async fn h2_get(gw: &Gateway, c: &reqwest::Client, path: &str) -> u16 {
    c.get(gw.url(path))
        .send()
        .await
        .expect("h2 request")
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_101st_concurrent_stream_is_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let (gw, _seen, certs) = start(dir.path()).await;
    let mut s = h2_connect(&gw, &certs.ca_pem).await;
    // 101 requests to an endpoint that answers after 5 s: all open at once.
    let block = get_headers("/api/slow");
    let mut out = Vec::new();
    for i in 0..101u32 {
        out.extend(frame(0x1, 0x5, 1 + 2 * i, &block));
    }
    s.write_all(&out).await.expect("headers");
    let frames = read_frames(&mut s, Duration::from_millis(1500)).await;
    let resets: Vec<(u32, u32)> = frames
        .iter()
        .filter(|f| f.0 == 0x3)
        .map(|f| (f.2, u32::from_be_bytes([f.3[0], f.3[1], f.3[2], f.3[3]])))
        .collect();
    // Stream 201 is the 101st: REFUSED_STREAM (0x7); none of the first 100 is touched.
    assert_eq!(
        resets,
        [(201, 0x7)],
        "frames: {:?}",
        frames.iter().map(|f| (f.0, f.2)).collect::<Vec<_>>()
    );
    assert!(
        !frames.iter().any(|f| f.0 == 0x7),
        "the connection itself stays up (no GOAWAY)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rapid_reset_burst_leaves_memory_bounded() {
    let dir = tempfile::tempdir().expect("tmp");
    let (gw, seen, certs) = start(dir.path()).await;
    // Warm up so the baseline includes the runtime's steady-state allocations.
    let c = h2_client(&gw);
    for _ in 0..20 {
        assert_eq!(h2_get(&gw, &c, "/api/warm").await, 200);
    }
    let pid = gw.child.id();
    let before = rss_kib(pid);

    // 10,000 streams opened and reset at once (CVE-2023-44487), over a few connections.
    let block = get_headers("/api/slow");
    let mut goaways = 0;
    let mut sent = 0u32;
    for _conn in 0..4 {
        let mut s = h2_connect(&gw, &certs.ca_pem).await;
        let mut out = Vec::with_capacity(64 * 1024);
        for i in 0..2500u32 {
            let id = 1 + 2 * i;
            out.extend(frame(0x1, 0x5, id, &block));
            out.extend(frame(0x3, 0, id, &0x8u32.to_be_bytes())); // RST_STREAM CANCEL
        }
        // The server may hang up mid-burst; that is a fine answer too.
        if s.write_all(&out).await.is_ok() {
            sent += 2500;
        }
        let frames = read_frames(&mut s, Duration::from_millis(500)).await;
        goaways += frames.iter().filter(|f| f.0 == 0x7).count();
    }
    assert!(sent > 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib(pid);
    assert!(
        after < before + 64 * 1024,
        "RSS grew from {before} KiB to {after} KiB (GOAWAYs: {goaways})"
    );
    // Still serving, and the reset streams did not pile up at the backend.
    assert_eq!(h2_get(&gw, &c, "/api/after").await, 200);
    let slow = seen
        .lock()
        .expect("log")
        .iter()
        .filter(|s| s.uri == "/api/slow")
        .count();
    assert!(slow < 10_000, "{slow} reset streams reached the backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_flood_is_cut_off_with_memory_bounded() {
    let dir = tempfile::tempdir().expect("tmp");
    let (gw, seen, certs) = start(dir.path()).await;
    let pid = gw.child.id();
    let c = h2_client(&gw);
    assert_eq!(h2_get(&gw, &c, "/api/warm").await, 200);
    let before = rss_kib(pid);

    // One header block that never ends (CVE-2024-27316 style): HEADERS without END_HEADERS,
    // then up to 4,000 CONTINUATION frames of one 4,000-byte `x-pad` field each (16 MB).
    let mut s = h2_connect(&gw, &certs.ca_pem).await;
    s.write_all(&frame(0x1, 0x1, 1, &get_headers("/api/continuation")))
        .await
        .expect("headers");
    let mut field = vec![0x00, 5];
    field.extend_from_slice(b"x-pad");
    field.extend_from_slice(&[0x7f, 0xa1, 0x1e]); // HPACK integer 4000 (7-bit prefix)
    field.extend(std::iter::repeat_n(b'a', 4000));
    let continuation = frame(0x9, 0, 1, &field);
    let mut sent = 0;
    for _ in 0..4000 {
        let write = s.write_all(&continuation);
        match tokio::time::timeout(Duration::from_secs(2), write).await {
            Ok(Ok(())) => sent += 1,
            // Hung up on, or no longer read: the flood is cut off.
            _ => break,
        }
    }
    let frames = read_frames(&mut s, Duration::from_millis(1000)).await;
    let refused = frames
        .iter()
        .any(|f| f.0 == 0x7 || (f.0 == 0x3 && f.2 == 1));
    assert!(
        sent < 4000 || refused,
        "the endless header block was accepted: {sent} frames, answer {:?}",
        frames.iter().map(|f| (f.0, f.2)).collect::<Vec<_>>()
    );
    drop(s);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = rss_kib(pid);
    assert!(
        after < before + 32 * 1024,
        "RSS grew from {before} KiB to {after} KiB ({sent} frames sent)"
    );
    assert!(
        !seen
            .lock()
            .expect("log")
            .iter()
            .any(|r| r.uri == "/api/continuation"),
        "the flooded request reached the backend"
    );
    // Still serving.
    assert_eq!(h2_get(&gw, &c, "/api/after").await, 200);
}
