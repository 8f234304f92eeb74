//! `[maintenance]` and `[error_pages]`: allow list, pages read at load.

use super::super::file::GatewayConf;
use super::super::source::{Problem, Source};
use crate::path::resolve;
use crate::runtime::Maintenance;
use std::collections::HashMap;
use std::path::Path;

/// Maintenance mode.
pub fn maintenance(
    conf: &GatewayConf,
    base: &Path,
    src: &Source,
    problems: &mut Vec<Problem>,
) -> Maintenance {
    let mut maintenance_allow = Vec::new();
    for c in &conf.maintenance.allow {
        let text = c.get_ref();
        match text
            .parse::<ipnet::IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        {
            Ok(n) => maintenance_allow.push(n),
            Err(_) => problems.push(src.problem(
                c,
                format!("[maintenance] `{text}` is not a CIDR or IP address"),
            )),
        }
    }
    let maintenance_page = match &conf.maintenance.page {
        None => bytes::Bytes::from_static(crate::proxy::answer::MAINTENANCE_PAGE.as_bytes()),
        Some(p) => {
            let path = resolve(base, p.get_ref());
            match std::fs::read(&path) {
                Ok(b) => bytes::Bytes::from(b),
                Err(e) => {
                    problems.push(
                        src.problem(p, format!("[maintenance] page {}: {e}", path.display())),
                    );
                    bytes::Bytes::new()
                }
            }
        }
    };
    Maintenance {
        enabled: conf.maintenance.enabled,
        allow: maintenance_allow,
        retry_after: conf.maintenance.retry_after.unwrap_or(300),
        page: maintenance_page,
    }
}

/// Configured HTML error pages by status.
pub fn error_pages(
    conf: &GatewayConf,
    base: &Path,
    src: &Source,
    problems: &mut Vec<Problem>,
) -> HashMap<u16, bytes::Bytes> {
    let mut error_pages = std::collections::HashMap::new();
    for (status, file) in &conf.error_pages {
        let code = status
            .parse::<u16>()
            .ok()
            .filter(|c| (400..=599).contains(c));
        let Some(code) = code else {
            problems.push(src.problem(
                file,
                format!("[error_pages] `{status}` is not an error status (400..=599)"),
            ));
            continue;
        };
        let path = resolve(base, file.get_ref());
        match std::fs::read(&path) {
            Ok(b) => {
                error_pages.insert(code, bytes::Bytes::from(b));
            }
            Err(e) => problems.push(src.problem(
                file,
                format!("[error_pages] {status}: {}: {e}", path.display()),
            )),
        }
    }
    error_pages
}
