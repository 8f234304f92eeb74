//! The floor under the benchmarks: pingora 0.9 + rustls answering every request with a fixed
//! `200 ok`, with none of the gateway's code (no routing, headers, metrics or stream wrapper).
//! `benches/` runs it as the reference row `REF-pingora-fixed`, so the gap between S1 and
//! this floor is ours and the gap between this floor and nginx is pingora's.
//!
//! `fixed_response LISTEN CERT KEY THREADS`

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::{ProxyHttp, Session};

mod common;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Fixed;

#[async_trait]
impl ProxyHttp for Fixed {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
        let mut resp = ResponseHeader::build(200, Some(2))?;
        resp.insert_header(http::header::CONTENT_TYPE, "text/plain")?;
        resp.insert_header(http::header::CONTENT_LENGTH, "3")?;
        session.write_response_header(Box::new(resp), false).await?;
        session
            .write_response_body(Some(Bytes::from_static(b"ok\n")), true)
            .await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _s: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Error::e_explain(ErrorType::InternalError, "fixed responses only")
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, cert, key, threads] = args.as_slice() else {
        eprintln!("usage: fixed_response LISTEN CERT KEY THREADS");
        std::process::exit(2);
    };
    let threads: usize = threads.parse().unwrap_or_else(|_| {
        eprintln!("THREADS must be a number");
        std::process::exit(2);
    });
    let mut server = common::server(threads);
    let mut svc = pingora_proxy::http_proxy_service(&server.configuration, Fixed);
    let mut tls = common::tls(cert, key);
    tls.enable_h2();
    svc.add_tls_with_settings(listen, None, tls);
    server.add_service(svc);
    server.run_forever();
}
