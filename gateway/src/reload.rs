//! Hot reload: one path for every trigger — the file watcher, `SIGHUP`, admin `POST /reload`.
//!
//! A reload builds a complete new [`Runtime`] aside (parse, validate, certificates, keys,
//! bundles, pools), then swaps it in with one `ArcSwap` store. In-flight requests keep the
//! snapshot they started with; connections are never touched. An invalid change applies
//! nothing: the old runtime keeps serving and the error (with `file:line:column`) is kept for
//! `/config` and counted in metrics. Settings that cannot change live (listeners, threads,
//! process) keep their running values and are reported as "restart required".
//!
//! A successful reload logs one `config reloaded` line with what changed against the
//! generation before ([`ConfigDiff`]: `changed_sections`, `changes`), keeps it for `/config`
//! and counts each changed section in `gateway_config_changes_total`. A forced reload of the
//! same config, or one that only touched comments, says `no changes`.
//!
//! The watcher watches *directories* (the config's, each certificate's, each static root) so
//! editors' write-then-rename, `cp` over a file and Kubernetes' `..data` symlink swap are all
//! seen; events are debounced (~200 ms) and a reload only happens when the content
//! fingerprint of the inputs changed.

use crate::config;
use crate::config::diff::ConfigDiff;
use crate::runtime::Runtime;
use crate::state::SharedRuntime;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// What `/config` shows.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadStatus {
    /// Generation in force.
    pub generation: u64,
    /// Fingerprint of the inputs of the runtime in force.
    pub content_hash: String,
    /// When it was loaded (RFC 3339).
    pub loaded_at: String,
    /// The last failed reload's error, cleared by a success.
    pub last_error: Option<String>,
    /// Whether the last attempt succeeded.
    pub last_reload_success: bool,
    /// Changed settings that only apply after a restart.
    pub restart_required: Vec<String>,
    /// Reloads attempted (inputs found changed, or forced).
    pub attempts: u64,
    /// Times the inputs were fingerprinted, by any trigger: with nothing changing on disk
    /// this only moves with the 5 s safety-net poll, SIGHUP and `POST /reload`.
    pub checks: u64,
    /// What the last successful reload changed; none before the first.
    pub changes: Option<ReloadChanges>,
}

/// The diff a reload applied, as `/config` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadChanges {
    /// The generation replaced.
    pub from_generation: u64,
    /// The generation it became.
    pub generation: u64,
    /// One line per change, or just `no changes`.
    pub lines: Vec<String>,
    /// The same, structured.
    #[serde(flatten)]
    pub diff: ConfigDiff,
}

/// The result of one reload attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A new generation is serving; what changed from the one before.
    Applied(u64, ConfigDiff),
    /// Inputs unchanged; nothing done.
    Unchanged,
}

/// Performs reloads; shared by the watcher, the signal handler and the admin endpoint.
pub struct Reloader {
    path: PathBuf,
    runtime: SharedRuntime,
    status: Mutex<ReloadStatus>,
    /// One reload at a time.
    busy: Mutex<()>,
}

fn rfc3339_now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A fingerprint of everything a runtime is built from: file contents, and for static roots
/// the names, sizes and modification times of their files.
pub fn fingerprint(rt: &Runtime) -> String {
    let mut h = sha2::Sha256::new();
    for f in &rt.watch_files {
        h.update(f.as_os_str().as_encoded_bytes());
        match std::fs::read(f) {
            Ok(b) => h.update(&b),
            Err(_) => h.update(b"<missing>"),
        }
    }
    for d in &rt.watch_dirs {
        let mut entries = Vec::new();
        walk_meta(d, &mut entries);
        entries.sort();
        for e in entries {
            h.update(e.as_bytes());
        }
    }
    hex::encode(&h.finalize()[..16])
}

/// `path|size|mtime` of every file under `dir` (links followed, as the bundle does).
fn walk_meta(dir: &Path, out: &mut Vec<String>) {
    let files = walkdir::WalkDir::new(dir)
        .follow_links(true)
        .max_depth(32)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| !e.file_type().is_dir());
    for e in files {
        let Ok(m) = e.metadata() else {
            continue;
        };
        let mtime = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        out.push(format!("{}|{}|{}", e.path().display(), m.len(), mtime));
    }
}

impl Reloader {
    /// A reloader for the config at `path`, whose current runtime is in `runtime`.
    pub fn new(path: &Path, runtime: SharedRuntime) -> Self {
        let rt = runtime.load();
        let status = ReloadStatus {
            generation: rt.generation,
            content_hash: fingerprint(&rt),
            loaded_at: rfc3339_now(),
            last_error: None,
            last_reload_success: true,
            restart_required: Vec::new(),
            attempts: 0,
            checks: 0,
            changes: None,
        };
        crate::metrics::LAST_RELOAD_SUCCESS.set(1);
        Self {
            path: path.to_path_buf(),
            runtime: runtime.clone(),
            status: Mutex::new(status),
            busy: Mutex::new(()),
        }
    }

    /// The current status.
    pub fn status(&self) -> ReloadStatus {
        self.status
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Reloads when the inputs changed (or always, with `force`). Blocking: call it off the
    /// request path (`spawn_blocking`).
    pub fn reload(&self, trigger: &str, force: bool) -> Result<Outcome, config::ConfigError> {
        let _busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.runtime.load_full();
        if let Ok(mut s) = self.status.lock() {
            s.checks += 1;
        }
        if !force && fingerprint(&current) == self.status().content_hash {
            return Ok(Outcome::Unchanged);
        }
        if let Ok(mut s) = self.status.lock() {
            s.attempts += 1;
        }
        match config::load(&self.path, Some(&current)) {
            Ok(mut next) => {
                let restart = restart_required(&current, &next);
                let diff = ConfigDiff::between(&current.summary, &next.summary);
                // What cannot change live keeps its running value, so the runtime describes
                // the process as it really is.
                next.listeners = current.listeners.clone();
                next.threads = current.threads;
                next.process = current.process.clone();
                let hash = fingerprint(&next);
                let generation = next.generation;
                crate::services::describe_runtime(&next);
                // Swap under the status lock so /config never shows a state older than what
                // requests already see.
                let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
                self.runtime.store(Arc::new(next));
                crate::metrics::reloaded(true, generation);
                for r in &restart {
                    tracing::warn!(setting = %r, "changed setting requires a restart; keeping the running value");
                }
                crate::metrics::config_changed(diff.sections());
                let sections: Vec<&str> = diff.sections().into_iter().collect();
                tracing::info!(
                    trigger,
                    generation,
                    content_hash = %hash,
                    changed_sections = %sections.join(","),
                    changes = %diff.one_line(),
                    "config reloaded"
                );
                status.generation = generation;
                status.content_hash = hash;
                status.loaded_at = rfc3339_now();
                status.last_error = None;
                status.last_reload_success = true;
                status.restart_required = restart;
                status.changes = Some(ReloadChanges {
                    from_generation: current.generation,
                    generation,
                    lines: diff.lines(),
                    diff: diff.clone(),
                });
                Ok(Outcome::Applied(generation, diff))
            }
            Err(e) => {
                let msg = e.to_string();
                crate::metrics::reloaded(false, current.generation);
                for p in e.problems() {
                    tracing::error!(trigger, problem = %p, "config reload refused; old config keeps serving");
                }
                if let Ok(mut s) = self.status.lock() {
                    s.last_error = Some(msg);
                    s.last_reload_success = false;
                }
                Err(e)
            }
        }
    }
}

fn restart_required(old: &Runtime, new: &Runtime) -> Vec<String> {
    let mut out = Vec::new();
    let (a, b) = (&old.listeners, &new.listeners);
    if a.https != b.https {
        out.push("listeners.https".into());
    }
    if a.http != b.http {
        out.push("listeners.http".into());
    }
    if a.admin != b.admin {
        out.push("listeners.admin".into());
    }
    if a.write_buffer_bytes != b.write_buffer_bytes || a.read_buffer_bytes != b.read_buffer_bytes {
        out.push("listeners buffers".into());
    }
    if a.redirect_https_port != b.redirect_https_port {
        out.push("listeners.redirect_https_port".into());
    }
    if old.threads != new.threads {
        out.push("threads".into());
    }
    if old.process != new.process {
        out.push("process".into());
    }
    out
}

/// Background service: file watcher, SIGHUP, and a slow safety-net poll.
pub struct ReloadService {
    reloader: Arc<Reloader>,
}

impl ReloadService {
    /// The service driving `reloader`.
    pub fn new(reloader: Arc<Reloader>) -> Self {
        Self { reloader }
    }
}

/// Directories to watch for a runtime: parents of its files (non-recursive), its static
/// roots (recursive).
fn watch_set(rt: &Runtime) -> Vec<(PathBuf, bool)> {
    let mut set: Vec<(PathBuf, bool)> = Vec::new();
    for f in &rt.watch_files {
        if let Some(dir) = f.parent() {
            let dir = if dir.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                dir.to_path_buf()
            };
            if !set.iter().any(|(d, _)| *d == dir) {
                set.push((dir, false));
            }
        }
    }
    for d in &rt.watch_dirs {
        set.push((d.clone(), true));
    }
    set
}

/// Whether an event path concerns the runtime: a watched file (by name, in its directory), a
/// Kubernetes `..data`-style entry, or anything under a static root. Other files living next
/// to the config (logs, editors' swap files) do not trigger reloads.
fn relevant(path: &Path, files: &[PathBuf], roots: &[PathBuf]) -> bool {
    if roots.iter().any(|r| path.starts_with(r)) {
        return true;
    }
    let name = path.file_name();
    name.is_some_and(|n| n.to_string_lossy().starts_with(".."))
        || files.iter().any(|f| f.file_name() == name)
}

/// Whether an event kind can mean new content. inotify also reports opens and reads: the
/// fingerprint's own reads of the watched files would otherwise trigger the next check, a
/// loop re-reading every input five times a second. A close after writing still counts.
fn may_change_content(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

fn make_watcher(
    rt: &Runtime,
    set: &[(PathBuf, bool)],
    tx: tokio::sync::mpsc::UnboundedSender<()>,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let files = rt.watch_files.clone();
    let roots = rt.watch_dirs.clone();
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            if may_change_content(&ev.kind) && ev.paths.iter().any(|p| relevant(p, &files, &roots))
            {
                let _ = tx.send(());
            }
        }
    })
    .map_err(|e| tracing::warn!(error = %e, "file watcher unavailable; relying on polling"))
    .ok()?;
    for (dir, recursive) in set {
        let mode = if *recursive {
            notify::RecursiveMode::Recursive
        } else {
            notify::RecursiveMode::NonRecursive
        };
        if let Err(e) = w.watch(dir, mode) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory");
        }
    }
    Some(w)
}

#[async_trait]
impl BackgroundService for ReloadService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let mut set = watch_set(&self.reloader.runtime.load());
        let mut watcher = make_watcher(&self.reloader.runtime.load(), &set, tx.clone());
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut poll = tokio::time::interval(Duration::from_secs(5));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        poll.tick().await;
        loop {
            let (trigger, force) = tokio::select! {
                _ = shutdown.changed() => return,
                Some(()) = rx.recv() => {
                    // Debounce: wait for 200 ms of quiet, but never more than 1 s in all, so a
                    // steady trickle of events cannot starve reloads.
                    let started = tokio::time::Instant::now();
                    while started.elapsed() < Duration::from_secs(1) {
                        match tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
                            Ok(Some(())) => continue,
                            _ => break,
                        }
                    }
                    ("watch", false)
                }
                _ = async {
                    match hup.as_mut() {
                        Some(h) => { h.recv().await; }
                        None => std::future::pending::<()>().await,
                    }
                } => ("sighup", true),
                _ = poll.tick() => ("poll", false),
            };
            let r = self.reloader.clone();
            let _ = tokio::task::spawn_blocking(move || r.reload(trigger, force)).await;
            // Re-aim the watcher when the set of referenced files changed.
            let next = watch_set(&self.reloader.runtime.load());
            if next != set {
                set = next;
                watcher = make_watcher(&self.reloader.runtime.load(), &set, tx.clone());
            }
            let _ = &watcher;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::may_change_content;
    use notify::event::{
        AccessKind, AccessMode, CreateKind, DataChange, EventKind, ModifyKind, RemoveKind,
        RenameMode,
    };

    #[test]
    fn reads_do_not_trigger_a_check_but_writes_and_renames_do() {
        for quiet in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Access(AccessKind::Any),
        ] {
            assert!(!may_change_content(&quiet), "{quiet:?}");
        }
        for change in [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
            EventKind::Remove(RemoveKind::File),
            EventKind::Any,
        ] {
            assert!(may_change_content(&change), "{change:?}");
        }
    }
}
