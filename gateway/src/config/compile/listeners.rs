//! `[listeners]`: addresses checked, the redirect port defaulted to the HTTPS one.

use super::super::file::GatewayConf;
use super::super::source::{Problem, Source};
use crate::runtime::Listeners;
use serde_spanned::Spanned;
use std::net::SocketAddr;

/// The listener addresses (restart required to change).
pub fn listeners(conf: &GatewayConf, src: &Source, problems: &mut Vec<Problem>) -> Listeners {
    // Listeners.
    let l = &conf.listeners;
    check_addr(src, &l.https, "https", problems);
    check_addr(src, &l.admin, "admin", problems);
    if !l.http.get_ref().is_empty() {
        check_addr(src, &l.http, "http", problems);
    }
    let https_port = l
        .https
        .get_ref()
        .parse::<SocketAddr>()
        .map(|a| a.port())
        .unwrap_or(443);
    let listeners = Listeners {
        https: l.https.get_ref().clone(),
        http: Some(l.http.get_ref().clone()).filter(|s| !s.is_empty()),
        admin: l.admin.get_ref().clone(),
        redirect_https_port: l.redirect_https_port.unwrap_or(https_port),
        write_buffer_bytes: l.write_buffer_bytes,
        read_buffer_bytes: l.read_buffer_bytes,
    };

    listeners
}

fn check_addr(src: &Source, addr: &Spanned<String>, what: &str, problems: &mut Vec<Problem>) {
    if let Err(e) = addr.get_ref().parse::<SocketAddr>() {
        problems.push(src.problem(
            addr,
            format!(
                "{what} listener `{}` is not an ip:port address: {e}",
                addr.get_ref()
            ),
        ));
    }
}
