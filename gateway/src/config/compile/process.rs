//! `[admin]` and the settings that apply to the process: the admin token (read at load).

use super::super::file::GatewayConf;
use super::super::source::{Problem, Source};
use crate::path::resolve;
use std::path::{Path, PathBuf};

/// Bearer token for admin `/config` and `/reload` (watched for rotation).
pub fn admin_token(
    conf: &GatewayConf,
    base: &Path,
    watch_files: &mut Vec<PathBuf>,
    src: &Source,
    problems: &mut Vec<Problem>,
) -> Option<String> {
    let admin_token = match &conf.admin.token_file {
        None => None,
        Some(f) => {
            let p = resolve(base, f.get_ref());
            watch_files.push(p.clone());
            match std::fs::read_to_string(&p) {
                Ok(t) if t.trim().len() >= 16 => Some(t.trim().to_string()),
                Ok(_) => {
                    problems.push(
                        src.problem(f, "[admin] token_file: token shorter than 16 characters"),
                    );
                    None
                }
                Err(e) => {
                    problems
                        .push(src.problem(f, format!("[admin] token_file {}: {e}", p.display())));
                    None
                }
            }
        }
    };
    admin_token
}
