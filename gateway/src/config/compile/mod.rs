//! One compiler per config section: file types in, runtime objects out, every problem
//! reported with its position. [`super::build`] calls them in dependency order.

pub mod auth;
pub mod client_ip;
pub mod identity;
pub mod listeners;
pub mod pages;
pub mod process;
pub mod rate_limit;
pub mod routes;
pub mod security;
pub mod split;
pub mod tls;
pub mod upstreams;
