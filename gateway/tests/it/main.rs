//! Integration tests: real gateway processes, real backends, real TLS on loopback.

mod api_edge;
mod browser;
mod config_check;
mod early_answers;
mod harness;
mod http2;
mod jwt;
mod observability;
mod probe;
mod proxy;
mod rate_limit;
mod reload;
mod split;
mod static_files;
mod tls;
mod upstream_wire;
