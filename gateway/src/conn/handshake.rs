//! The TLS handshake of an accepted connection, run by the gateway rather than pingora's
//! listener: bounded by `tls_handshake_timeout_ms` (pingora gives every handshake a fixed
//! 60 s), a failure counted by reason from the rustls error itself, a success counted by
//! protocol version and the connection as open until it closes.

use super::tls::version_label;
use pingora_core::listeners::tls::Acceptor;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::tls::TlsStream;
use pingora_core::protocols::Stream;
use std::time::Duration;

/// The handshake bound when `tls_handshake_timeout_ms = 0` (pingora's own fixed value).
const FALLBACK_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs the handshake of a freshly accepted connection under `limit`; a failure is counted by
/// reason and logged at debug level (a scanner or a client hanging up is not an error here).
///
/// The handshake's state (≈ 4 KiB: the connection being built, rustls' handshake, the timer)
/// lives in its own allocation, freed when it ends: awaited inline, it would stay reserved in
/// the connection's future for as long as the connection idles.
pub async fn handshake(
    acceptor: &Acceptor,
    stream: Stream,
    limit: Option<Duration>,
) -> Option<Box<TlsStream<L4Stream>>> {
    Box::pin(run(acceptor, stream, limit)).await
}

async fn run(
    acceptor: &Acceptor,
    stream: Stream,
    limit: Option<Duration>,
) -> Option<Box<TlsStream<L4Stream>>> {
    let Ok(l4) = stream.into_any().downcast::<L4Stream>() else {
        debug_assert!(false, "the HTTPS listener hands over plain TCP streams");
        return None;
    };
    // `0` in the config turns our deadline off, not the bound: pingora's 60 s remains.
    let limit = limit.unwrap_or(FALLBACK_HANDSHAKE_TIMEOUT);
    let reason = match tokio::time::timeout(limit, acceptor.tls_handshake(*l4)).await {
        Ok(Ok(tls)) => return Some(Box::new(tls)),
        Ok(Err(e)) => {
            let reason = handshake_failure_reason(&e.to_string());
            tracing::debug!(reason, error = %e, "TLS handshake failed");
            reason
        }
        Err(_) => {
            tracing::debug!("TLS handshake deadline passed: connection closed");
            "timeout"
        }
    };
    crate::metrics::TLS_HANDSHAKE_FAILURES
        .with_label_values(&[reason])
        .inc();
    None
}

/// Counts an open HTTPS connection for as long as it lives.
pub struct OpenConnection;

impl OpenConnection {
    /// A completed handshake: counted by protocol version, and the connection as open.
    pub fn handshake_done(version: &str) -> Self {
        crate::metrics::TLS_HANDSHAKES
            .with_label_values(&[version_label(version)])
            .inc();
        crate::metrics::OPEN_CONNECTIONS
            .with_label_values(&["https"])
            .inc();
        Self
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        crate::metrics::OPEN_CONNECTIONS
            .with_label_values(&["https"])
            .dec();
    }
}

/// The reason label (`gateway_tls_handshake_failures_total`) of a failed handshake's error.
pub fn handshake_failure_reason(error: &str) -> &'static str {
    let m = error.to_ascii_lowercase();
    if m.contains("eof") || m.contains("reset by peer") || m.contains("broken pipe") {
        "client_closed"
    } else if m.contains("received fatal alert") {
        // The client refused us (e.g. it does not trust the certificate).
        "client_alert"
    } else if m.contains("nociphersuitesincommon") {
        "no_shared_cipher"
    } else if m.contains("version") {
        "protocol_version"
    } else if m.contains("peer is incompatible") {
        "incompatible"
    } else if m.contains("corrupt message")
        || m.contains("peer misbehaved")
        || m.contains("invalid")
    {
        "malformed"
    } else {
        "other"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_established_tls_stream_reserves_no_handshake_state() {
        // Every idle connection holds one of these. Without pingora-core patch 1
        // (third_party/PATCHES.md) it is ≈ 4.7 KiB; a pingora upgrade that loses the patch
        // fails here, not only in the S6 benchmark.
        let size = std::mem::size_of::<TlsStream<L4Stream>>();
        assert!(size < 2048, "TlsStream is {size} bytes");
    }

    #[tokio::test]
    async fn the_handshake_state_is_not_part_of_the_connection_future() {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![ck.cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into()),
            )
            .expect("config");
        let acceptor = Acceptor::from_server_config(std::sync::Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let tcp = tokio::net::TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let future = handshake(&acceptor, Box::new(L4Stream::from(tcp)), None);
        // Awaited inline, the handshake's state (≈ 4–7 KiB) would sit in every connection's
        // future for its whole life; boxed, the connection keeps a pointer.
        let size = std::mem::size_of_val(&future);
        assert!(size < 256, "the handshake future is {size} bytes");
    }

    #[test]
    fn handshake_failure_messages_are_classified() {
        let base = "TLSHandshakeFailure context: TLS accept() failed cause: ";
        for (tail, want) in [
            ("tls handshake eof", "client_closed"),
            ("Connection reset by peer (os error 104)", "client_closed"),
            ("received fatal alert: UnknownCA", "client_alert"),
            (
                "peer is incompatible: NoCipherSuitesInCommon",
                "no_shared_cipher",
            ),
            (
                "peer is incompatible: SupportedVersionsExtensionRequired",
                "protocol_version",
            ),
            (
                "received corrupt message of type InvalidContentType",
                "malformed",
            ),
            ("something new", "other"),
        ] {
            assert_eq!(
                handshake_failure_reason(&format!("{base}{tail}")),
                want,
                "{tail}"
            );
        }
    }
}
