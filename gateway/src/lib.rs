//! Edge gateway on pingora: TLS termination with SNI certificates, `/api` reverse proxy with
//! health-checked pools, static files, admin metrics and probes.
//!
//! The binary (`main.rs`) only parses the command line; everything else is here so tests and
//! benches link the same code. Start at [`proxy`] for the request path and [`config`] for how a
//! file becomes a [`runtime::Runtime`].

pub mod admin;
pub mod auth;
pub mod certs;
pub mod compress;
pub mod config;
pub mod conn;
pub mod cors;
pub mod dryrun;
pub mod headers;
pub mod http;
pub mod identity;
pub mod lifecycle;
pub mod logging;
pub mod metrics;
pub mod path;
pub mod proxy;
pub mod rate_limit;
pub mod redirect;
pub mod reload;
pub mod request_id;
pub mod route;
pub mod runtime;
pub mod server;
pub mod services;
pub mod split;
pub mod state;
pub mod static_files;
pub mod text;
pub mod tls;
pub mod upstream;
