//! TLS termination: versions, ALPN, SNI certificate choice.

use crate::harness::*;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

/// Accepts any certificate: these tests inspect which one was served.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Leaf certificate DER, negotiated ALPN, TLS version.
type Handshake = (Vec<u8>, Option<Vec<u8>>, rustls::ProtocolVersion);

/// Handshakes with `sni` (offering `alpn`, limited to `versions`) and returns the leaf
/// certificate and the negotiated ALPN.
fn handshake(
    port: u16,
    sni: &str,
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<Handshake, String> {
    let conn = connect_with(
        port,
        sni,
        alpn,
        versions,
        rustls::crypto::ring::default_provider(),
    )?;
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .ok_or("no certificate")?;
    let version = conn.protocol_version().ok_or("no version")?;
    Ok((leaf, conn.alpn_protocol().map(|p| p.to_vec()), version))
}

/// A completed client handshake with `provider`'s cipher suites, in its order of preference.
fn connect_with(
    port: u16,
    sni: &str,
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
    provider: rustls::crypto::CryptoProvider,
) -> Result<rustls::ClientConnection, String> {
    let provider = Arc::new(provider);
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).map_err(|e| e.to_string())?;
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(5))).ok();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).map_err(|e| e.to_string())?;
    }
    Ok(conn)
}

fn der_of(pem: &str) -> Vec<u8> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .expect("one cert")
        .expect("pem")
        .as_ref()
        .to_vec()
}

fn start_two_cert_gateway(dir: &std::path::Path) -> (Gateway, String, String) {
    let certs = TestCerts::new(dir);
    let other = certs
        .ca
        .issue_for_days(&["api.example.test"], 30)
        .expect("issue");
    let (ocert, okey) = write_pair(dir, "other", &other);
    let ports = Ports::new();
    let conf = format!(
        r#"{}
[tls]
[[tls.certificates]]
name = "main"
cert = "{}"
key = "{}"
default = true

[[tls.certificates]]
name = "other"
cert = "{}"
key = "{}"
"#,
        ports.sections(dir),
        certs.cert.display(),
        certs.key.display(),
        ocert.display(),
        okey.display()
    );
    let main_pem = std::fs::read_to_string(&certs.cert).expect("read");
    let gw = start_gateway(dir, &ports, &conf, &certs.ca_pem);
    (gw, main_pem, other.cert_pem)
}

#[test]
fn sni_selects_the_certificate_and_unknown_names_get_the_default() {
    let dir = tempfile::tempdir().expect("tmp");
    let (gw, main_pem, other_pem) = start_two_cert_gateway(dir.path());
    let all = rustls::DEFAULT_VERSIONS;
    let (leaf, _, _) = handshake(gw.https, "api.example.test", &[], all).expect("hs");
    assert_eq!(leaf, der_of(&other_pem));
    let (leaf, _, _) = handshake(gw.https, "localhost", &[], all).expect("hs");
    assert_eq!(leaf, der_of(&main_pem));
    let (leaf, _, _) = handshake(gw.https, "unknown.example.org", &[], all).expect("hs");
    assert_eq!(leaf, der_of(&main_pem), "unknown SNI gets the default");
    // An IP address sends no SNI: default certificate.
    let (leaf, _, _) = handshake(gw.https, "127.0.0.1", &[], all).expect("hs");
    assert_eq!(leaf, der_of(&main_pem));
}

#[test]
fn alpn_and_versions() {
    let dir = tempfile::tempdir().expect("tmp");
    let (gw, _, _) = start_two_cert_gateway(dir.path());
    let (_, alpn, v) = handshake(
        gw.https,
        "localhost",
        &[b"h2", b"http/1.1"],
        rustls::DEFAULT_VERSIONS,
    )
    .expect("hs");
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(v, rustls::ProtocolVersion::TLSv1_3);
    let (_, alpn, _) = handshake(
        gw.https,
        "localhost",
        &[b"http/1.1"],
        rustls::DEFAULT_VERSIONS,
    )
    .expect("hs");
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    let (_, _, v) =
        handshake(gw.https, "localhost", &[], &[&rustls::version::TLS12]).expect("tls12");
    assert_eq!(v, rustls::ProtocolVersion::TLSv1_2);
}

#[test]
fn the_server_picks_the_cipher_suite() {
    use rustls::crypto::ring::cipher_suite as cs;
    let dir = tempfile::tempdir().expect("tmp");
    let (gw, _, _) = start_two_cert_gateway(dir.path());
    // Clients preferring AES-256 or ChaCha20 (as OpenSSL's defaults do) get AES-128-GCM:
    // testssl's "server cipher order" check, and the cheaper SHA-256 key schedule.
    for (versions, offered, want) in [
        (
            &[&rustls::version::TLS13][..],
            vec![
                cs::TLS13_AES_256_GCM_SHA384,
                cs::TLS13_CHACHA20_POLY1305_SHA256,
                cs::TLS13_AES_128_GCM_SHA256,
            ],
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
        ),
        (
            &[&rustls::version::TLS12][..],
            vec![
                cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            ],
            rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ),
    ] {
        let provider = rustls::crypto::CryptoProvider {
            cipher_suites: offered,
            ..rustls::crypto::ring::default_provider()
        };
        let conn = connect_with(gw.https, "localhost", &[], versions, provider).expect("hs");
        let got = conn.negotiated_cipher_suite().expect("suite").suite();
        assert_eq!(got, want, "{versions:?}");
    }
    // A client offering only ChaCha20 still connects.
    let provider = rustls::crypto::CryptoProvider {
        cipher_suites: vec![cs::TLS13_CHACHA20_POLY1305_SHA256],
        ..rustls::crypto::ring::default_provider()
    };
    let conn = connect_with(
        gw.https,
        "localhost",
        &[],
        &[&rustls::version::TLS13],
        provider,
    )
    .expect("chacha only");
    assert_eq!(
        conn.negotiated_cipher_suite().expect("suite").suite(),
        rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
    );
}

/// A ClientHello offering only `version` (0x0301 = TLS 1.0, 0x0302 = TLS 1.1) and classic
/// cipher suites, without the supported_versions extension, as an old client sends it.
fn legacy_client_hello(version: u16) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&version.to_be_bytes());
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // session id
    let suites: [u16; 5] = [0xc02b, 0xc02f, 0xc013, 0xc009, 0x002f];
    body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend_from_slice(&s.to_be_bytes());
    }
    body.extend_from_slice(&[1, 0]); // compression: null
                                     // Extensions: server_name(localhost), supported_groups(x25519, P-256), ec_point_formats.
    let host = b"localhost";
    let mut ext = Vec::new();
    let sni_list_len = (host.len() + 3) as u16;
    ext.extend_from_slice(&[0, 0]);
    ext.extend_from_slice(&(sni_list_len + 2).to_be_bytes());
    ext.extend_from_slice(&sni_list_len.to_be_bytes());
    ext.push(0);
    ext.extend_from_slice(&(host.len() as u16).to_be_bytes());
    ext.extend_from_slice(host);
    ext.extend_from_slice(&[0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x1d, 0x00, 0x17]);
    ext.extend_from_slice(&[0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]);
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![1u8];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

#[test]
fn tls_1_0_and_1_1_clients_fail_the_handshake() {
    let dir = tempfile::tempdir().expect("tmp");
    let (gw, _, _) = start_two_cert_gateway(dir.path());
    for version in [0x0301u16, 0x0302] {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.https)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s.write_all(&legacy_client_hello(version)).expect("write");
        let mut buf = [0u8; 7];
        let n = s.read(&mut buf).unwrap_or(0);
        // Either an alert record (0x15) or a closed connection; never a ServerHello (0x16).
        assert!(
            n == 0 || buf[0] == 0x15,
            "version {version:#x}: got {:?}",
            &buf[..n]
        );
        if n >= 7 {
            assert_eq!(buf[5], 2, "fatal alert");
            // rustls answers protocol_version (70) or handshake_failure (40) depending on
            // which check trips first; both end the handshake.
            assert!(matches!(buf[6], 40 | 70), "alert {}", buf[6]);
        }
    }
    // Same socket path, modern client: works (the test above is not vacuous).
    let r = handshake(gw.https, "localhost", &[], rustls::DEFAULT_VERSIONS);
    assert!(r.is_ok(), "{r:?}");
}

async fn failure_counts(gw: &Gateway, reasons: &[&str]) -> Vec<f64> {
    let mut out = Vec::new();
    for r in reasons {
        let series = format!("gateway_tls_handshake_failures_total{{reason=\"{r}\"}}");
        out.push(metric(gw, &series).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_handshakes_are_counted_by_reason() {
    let dir = tempfile::tempdir().expect("tmp");
    let (gw, _, _) = start_two_cert_gateway(dir.path());
    let port = gw.https;
    let reasons = [
        "malformed",
        "client_closed",
        "incompatible",
        "client_alert",
        "other",
    ];
    // The harness's readiness probe (connect, close) counts as one client_closed, recorded
    // when the gateway notices the close (which may be after the probe returned): wait for
    // it, then take deltas.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while failure_counts(&gw, &["client_closed"]).await[0] < 1.0 {
        assert!(std::time::Instant::now() < deadline, "probe never counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = failure_counts(&gw, &reasons).await;
    tokio::task::spawn_blocking(move || {
        // Plain HTTP on the TLS port.
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .expect("w");
        let _ = s.read(&mut [0u8; 64]);
        // Connect and hang up.
        drop(std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect"));
        // A TLS 1.0-only client.
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("t");
        s.write_all(&legacy_client_hello(0x0301)).expect("w");
        let _ = s.read(&mut [0u8; 64]);
        // A client that does not trust our certificate: it aborts with an alert.
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("v")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let mut conn = rustls::ClientConnection::new(
            Arc::new(cfg),
            ServerName::try_from("localhost").expect("sni"),
        )
        .expect("conn");
        let mut sock = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        while conn.is_handshaking() {
            if conn.complete_io(&mut sock).is_err() {
                break;
            }
        }
    })
    .await
    .expect("clients");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = failure_counts(&gw, &reasons).await;
    let delta: Vec<(&str, f64)> = reasons
        .iter()
        .zip(before.iter().zip(&after))
        .map(|(r, (b, a))| (*r, a - b))
        .collect();
    // Plain HTTP → malformed; hang-up → client_closed; a TLS 1.0 hello (no signature
    // algorithms) → incompatible; an untrusting client's alert → client_alert.
    assert_eq!(
        delta,
        [
            ("malformed", 1.0),
            ("client_closed", 1.0),
            ("incompatible", 1.0),
            ("client_alert", 1.0),
            ("other", 0.0)
        ]
    );
    // A good handshake is not a failure.
    let c = gw.client();
    assert_eq!(c.get(gw.url("/x")).send().await.expect("ok").status(), 404);
    assert_eq!(failure_counts(&gw, &reasons).await, after);
}

/// A modern ClientHello (rustls, TLS 1.3 and 1.2) for `localhost`, as bytes on the wire.
fn client_hello() -> (rustls::ClientConnection, Vec<u8>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    let mut conn = rustls::ClientConnection::new(
        Arc::new(cfg),
        ServerName::try_from("localhost").expect("sni"),
    )
    .expect("conn");
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).expect("hello");
    (conn, hello)
}

/// Reads (discarding) until the peer closes; the time it did, or `None` within `limit`.
async fn closed_after(
    s: &mut tokio::net::TcpStream,
    started: tokio::time::Instant,
    limit: Duration,
) -> Option<Duration> {
    let (_, closed) = read_until_closed(s, limit).await;
    closed.then(|| started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_are_closed_at_the_deadline() {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;
    const TIMEOUTS: &str = "gateway_tls_handshake_failures_total{reason=\"timeout\"}";
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    let ports = Ports::new();
    let conf = format!(
        "{}\n[limits]\ntls_handshake_timeout_ms = 1500\n{}",
        ports.sections(dir.path()),
        tls_section(&certs)
    );
    let gw = start_gateway(dir.path(), &ports, &conf, &certs.ca_pem);
    let before = metric(&gw, TIMEOUTS).await;
    let port = gw.https;
    let connect = || async move {
        let s = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        (s, tokio::time::Instant::now())
    };

    // Connects and sends nothing.
    let silent = async {
        let (mut s, t0) = connect().await;
        closed_after(&mut s, t0, Duration::from_secs(5)).await
    };
    // Trickles its ClientHello one byte every 100 ms (it would take ~25 s).
    let trickle = async {
        let (mut s, t0) = connect().await;
        let (_, hello) = client_hello();
        for b in hello {
            if s.write_all(&[b]).await.is_err() {
                break;
            }
            if let Some(t) = closed_after(&mut s, t0, Duration::from_millis(100)).await {
                return Some(t);
            }
            if t0.elapsed() > Duration::from_secs(5) {
                break;
            }
        }
        closed_after(&mut s, t0, Duration::from_millis(500)).await
    };
    // Sends its ClientHello, reads the server's flight, never sends Finished.
    let no_finished = async {
        let (mut s, t0) = connect().await;
        let (_conn, hello) = client_hello();
        s.write_all(&hello).await.expect("hello");
        closed_after(&mut s, t0, Duration::from_secs(5)).await
    };
    // Completes its handshake, then idles past the deadline before its request.
    let done = async {
        let mut s = tls_connect(port, &certs.ca_pem).await;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        s.write_all(b"GET /x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .expect("request after the deadline");
        let (resp, _) = read_until_closed(&mut s, Duration::from_secs(3)).await;
        raw_status(&resp)
    };
    let (silent, trickle, no_finished, done) = tokio::join!(silent, trickle, no_finished, done);
    for (name, t) in [
        ("silent", silent),
        ("trickle", trickle),
        ("no Finished", no_finished),
    ] {
        let t = t.unwrap_or_else(|| panic!("{name}: not closed"));
        assert!(
            t >= Duration::from_millis(1300) && t <= Duration::from_millis(2500),
            "{name}: closed after {t:?}, deadline 1.5 s"
        );
    }
    assert_eq!(done, 404, "a finished handshake is not under the deadline");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(metric(&gw, TIMEOUTS).await - before, 3.0);
}
