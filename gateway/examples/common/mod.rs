//! What the benchmark floors share: a pingora server with per-thread runtimes, and the
//! listener's TLS settings from PEM files (a bad file ends the process with the reason).

use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora_core::listeners::tls::TlsSettings;

/// A server with `threads` worker threads and no work stealing, as the gateway runs.
pub fn server(threads: usize) -> Server {
    let conf = ServerConf {
        threads,
        work_stealing: false,
        ..ServerConf::default()
    };
    Server::new_with_opt_and_conf(None, conf)
}

/// pingora's intermediate TLS settings for `cert` and `key`.
pub fn tls(cert: &str, key: &str) -> TlsSettings {
    TlsSettings::intermediate(cert, key).unwrap_or_else(|e| {
        eprintln!("TLS settings: {e}");
        std::process::exit(1);
    })
}
