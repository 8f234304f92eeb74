//! Static files for `static` routes: an in-memory [`AssetBundle`] built at config load and the
//! `request_filter` step that answers from it.
//!
//! At load every file under the root is read once: bytes, content type, a strong ETag from a
//! SHA-256 of the content, `Last-Modified`, the cache policy, and brotli/gzip variants (taken
//! from `.br`/`.gz` siblings when present, else compressed once here and kept only if
//! smaller). Files above `max_memory_file_bytes` stay on disk and are streamed. Serving is
//! then a hash lookup plus header assembly — no filesystem access on the hot path.
//!
//! The lookup works on the normalised path ([`crate::path`]); dot-files, dot-directories
//! (except `/.well-known/`) and symlinks leaving the root are never part of the bundle, so
//! nothing outside the root can be named, whatever the encoding of the request.

use crate::http::conneg::Encoding;
use bytes::Bytes;
use http::header::HeaderValue;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

/// Why a bundle could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("fingerprint_pattern is not a valid regex: {0}")]
    Pattern(String),
    #[error("cache_control glob `{0}` is invalid: {1}")]
    Glob(String, String),
    #[error("cache_control value for `{0}` is not a valid header value")]
    HeaderValue(String),
    #[error("fallback file `{0}` is not in the bundle")]
    MissingFallback(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BundleError + '_ {
    move |source| BundleError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Compiled options of a static route.
#[derive(Debug, Clone)]
pub struct StaticOptions {
    /// File (relative to root) served for navigations with no matching file.
    pub fallback: Option<String>,
    /// Prefixes that never fall back.
    pub fallback_exclude: Vec<String>,
    /// Fingerprinted-name pattern.
    pub fingerprint: regex::Regex,
    /// Cache-Control for other files.
    pub default_cache_control: String,
    /// Per-glob overrides, first match wins.
    pub rules: Vec<(String, String)>,
    /// In-memory size limit per file.
    pub max_memory_file_bytes: u64,
}

/// Default of a static route's `previous_assets_grace_seconds`.
pub const DEFAULT_PREVIOUS_ASSETS_GRACE_SECONDS: u64 = 600;

/// The default fingerprint pattern: a hash segment of 8+ hex digits before the extension.
pub const DEFAULT_FINGERPRINT: &str = r"[.-][0-9a-fA-F]{8,}\.[A-Za-z0-9]+$";

const IMMUTABLE: &str = "public, max-age=31536000, immutable";
const NO_CACHE: &str = "no-cache";

/// Where a variant's bytes live.
#[derive(Debug, Clone)]
pub enum Stored {
    /// Read at load, served from memory.
    Memory(Bytes),
    /// Above `max_memory_file_bytes`: streamed from disk.
    Disk(PathBuf),
}

/// One encoding of a file.
#[derive(Debug, Clone)]
pub struct Variant {
    /// Its bytes.
    pub body: Stored,
    /// Its length.
    pub len: u64,
    /// Strong entity tag.
    pub etag: HeaderValue,
    /// `Content-Length` of the whole variant, preformatted.
    pub len_header: HeaderValue,
}

/// One file with its precomputed headers.
#[derive(Debug, Clone)]
pub struct Asset {
    /// `Content-Type`.
    pub content_type: HeaderValue,
    /// `Last-Modified`.
    pub last_modified: HeaderValue,
    /// The same instant in Unix seconds (for `If-Modified-Since`).
    pub modified_secs: u64,
    /// `Cache-Control` (immutable for fingerprinted names).
    pub cache_control: HeaderValue,
    identity: Variant,
    /// Gzip variant, when smaller.
    pub gzip: Option<Variant>,
    /// Brotli variant, when smaller.
    pub br: Option<Variant>,
}

impl Asset {
    /// Whether the answer varies by `Accept-Encoding`.
    pub fn has_variants(&self) -> bool {
        self.gzip.is_some() || self.br.is_some()
    }

    /// The variant served for encoding `e`.
    pub fn variant(&self, e: Encoding) -> &Variant {
        match e {
            Encoding::Identity => &self.identity,
            Encoding::Gzip => self.gzip.as_ref().unwrap_or(&self.identity),
            Encoding::Brotli => self.br.as_ref().unwrap_or(&self.identity),
            Encoding::Zstd => &self.identity,
        }
    }
}

/// Every file of a static root, ready to serve.
#[derive(Debug)]
pub struct AssetBundle {
    /// The root directory it was built from.
    pub root: PathBuf,
    assets: HashMap<Box<str>, Arc<Asset>>,
    /// The SPA shell served for navigations that name no file.
    pub fallback: Option<Arc<Asset>>,
    /// Path prefixes that never get the shell (API prefixes).
    pub fallback_exclude: Vec<String>,
    /// SHA-256 over all paths and contents: equal digests mean identical bundles.
    pub digest: [u8; 32],
    /// Fingerprinted files of the bundle this one replaced, servable until a deadline.
    previous: Option<PreviousAssets>,
}

/// Fingerprinted assets of a replaced bundle (one level only: no chain of old deploys).
#[derive(Debug)]
struct PreviousAssets {
    assets: HashMap<Box<str>, Arc<Asset>>,
    until: std::time::Instant,
}

fn is_compressible(mime: &str) -> bool {
    mime.starts_with("text/")
        || matches!(
            mime,
            "application/javascript"
                | "application/json"
                | "application/manifest+json"
                | "application/xml"
                | "application/wasm"
                | "image/svg+xml"
                | "image/x-icon"
                | "font/ttf"
                | "font/otf"
                | "application/vnd.ms-fontobject"
        )
}

fn content_type(path: &Path) -> (String, bool) {
    let mime = mime_guess::from_path(path)
        .first_raw()
        .unwrap_or("application/octet-stream");
    let mime = if mime == "text/javascript" {
        "application/javascript"
    } else {
        mime
    };
    let textual = mime.starts_with("text/")
        || matches!(
            mime,
            "application/javascript" | "application/json" | "image/svg+xml" | "application/xml"
        );
    let full = if textual {
        format!("{mime}; charset=utf-8")
    } else {
        mime.to_string()
    };
    (full, is_compressible(mime))
}

fn gzip(data: &[u8]) -> Option<Vec<u8>> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(data).ok()?;
    enc.finish().ok()
}

fn brotli(data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let params = brotli::enc::BrotliEncoderParams {
        quality: 11,
        lgwin: 22,
        ..Default::default()
    };
    brotli::BrotliCompress(&mut &data[..], &mut out, &params).ok()?;
    Some(out)
}

fn etag(hash: &[u8], suffix: &str) -> HeaderValue {
    let v = format!("\"{}{}\"", hex::encode(&hash[..12]), suffix);
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
}

fn sha256_file(path: &Path) -> std::io::Result<[u8; 32]> {
    use sha2::Digest;
    let mut f = std::fs::File::open(path)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

/// Loads one variant of `path` (a sibling `.gz`/`.br` or the file itself).
fn load_variant(path: &Path, len: u64, max_mem: u64, suffix: &str) -> Result<Variant, BundleError> {
    if len <= max_mem {
        let data = std::fs::read(path).map_err(io_err(path))?;
        let h = sha256(&data);
        Ok(Variant {
            len: data.len() as u64,
            etag: etag(&h, suffix),
            len_header: HeaderValue::from(data.len()),
            body: Stored::Memory(Bytes::from(data)),
        })
    } else {
        let h = sha256_file(path).map_err(io_err(path))?;
        Ok(Variant {
            len,
            etag: etag(&h, suffix),
            len_header: HeaderValue::from(len),
            body: Stored::Disk(path.to_path_buf()),
        })
    }
}

fn header(v: &str) -> Result<HeaderValue, BundleError> {
    HeaderValue::from_str(v).map_err(|_| BundleError::HeaderValue(v.to_string()))
}

impl AssetBundle {
    /// Reads `root` into a bundle.
    pub fn try_load(root: &Path, opts: &StaticOptions) -> Result<Self, BundleError> {
        let canon_root = root.canonicalize().map_err(io_err(root))?;
        let mut files = Vec::new();
        walk(&canon_root, &mut files)?;
        files.sort();
        let globs = opts
            .rules
            .iter()
            .map(|(g, v)| {
                let m = globset::Glob::new(g)
                    .map_err(|e| BundleError::Glob(g.clone(), e.to_string()))?
                    .compile_matcher();
                Ok((m, header(v)?))
            })
            .collect::<Result<Vec<_>, BundleError>>()?;
        let immutable = HeaderValue::from_static(IMMUTABLE);
        let no_cache = HeaderValue::from_static(NO_CACHE);
        let default_cc = header(&opts.default_cache_control)?;
        let names: std::collections::HashSet<&String> = files.iter().map(|(k, _)| k).collect();

        let mut digest = {
            use sha2::Digest;
            sha2::Sha256::new()
        };
        let mut assets = HashMap::new();
        for (key, path) in &files {
            // A `.gz`/`.br` next to its original is a variant, not a file of its own.
            if let Some(base) = key.strip_suffix(".gz").or_else(|| key.strip_suffix(".br")) {
                if names.contains(&base.to_string()) {
                    continue;
                }
            }
            let meta = std::fs::metadata(path).map_err(io_err(path))?;
            let len = meta.len();
            let modified_secs = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            let (ctype, compressible) = content_type(path);
            let max_mem = opts.max_memory_file_bytes;
            let identity = load_variant(path, len, max_mem, "")?;

            let sibling = |ext: &str| -> Option<PathBuf> {
                let mut s = path.clone().into_os_string();
                s.push(ext);
                let p = PathBuf::from(s);
                p.is_file().then_some(p)
            };
            let mut gz = match sibling(".gz") {
                Some(p) => {
                    let l = std::fs::metadata(&p).map_err(io_err(&p))?.len();
                    Some(load_variant(&p, l, max_mem, "-gz")?)
                }
                None => None,
            };
            let mut br = match sibling(".br") {
                Some(p) => {
                    let l = std::fs::metadata(&p).map_err(io_err(&p))?.len();
                    Some(load_variant(&p, l, max_mem, "-br")?)
                }
                None => None,
            };
            if let Stored::Memory(data) = &identity.body {
                if compressible && data.len() > 1024 {
                    let id_hash = sha256(data);
                    let make = |bytes: Option<Vec<u8>>, suffix: &str| {
                        bytes.filter(|c| c.len() < data.len()).map(|c| Variant {
                            len: c.len() as u64,
                            etag: etag(&id_hash, suffix),
                            len_header: HeaderValue::from(c.len()),
                            body: Stored::Memory(Bytes::from(c)),
                        })
                    };
                    if gz.is_none() {
                        gz = make(gzip(data), "-gz");
                    }
                    if br.is_none() {
                        br = make(brotli(data), "-br");
                    }
                }
            }
            let file_name = key.rsplit('/').next().unwrap_or("");
            let cache_control = globs
                .iter()
                .find(|(m, _)| m.is_match(key.as_str()))
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| {
                    if opts.fingerprint.is_match(file_name) {
                        immutable.clone()
                    } else if ctype.starts_with("text/html") {
                        no_cache.clone()
                    } else {
                        default_cc.clone()
                    }
                });
            {
                use sha2::Digest;
                digest.update(key.as_bytes());
                digest.update(identity.etag.as_bytes());
            }
            let asset = Asset {
                content_type: header(&ctype)?,
                last_modified: header(&httpdate::fmt_http_date(
                    SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(modified_secs),
                ))?,
                modified_secs,
                cache_control,
                identity,
                gzip: gz,
                br,
            };
            assets.insert(key.clone().into_boxed_str(), Arc::new(asset));
        }
        let fallback = match &opts.fallback {
            Some(f) => {
                let key = format!("/{}", f.trim_start_matches('/'));
                let a = assets
                    .get(key.as_str())
                    .ok_or_else(|| BundleError::MissingFallback(f.clone()))?;
                // The shell must always be revalidated, whatever rule matched it.
                let mut a = (**a).clone();
                a.cache_control = no_cache;
                Some(Arc::new(a))
            }
            None => None,
        };
        Ok(Self {
            root: canon_root,
            assets,
            fallback,
            fallback_exclude: opts.fallback_exclude.clone(),
            digest: {
                use sha2::Digest;
                digest.finalize().into()
            },
            previous: None,
        })
    }

    /// Whether serving from `other` would answer exactly like `self` (same files, same cache
    /// policy, same fallback rules).
    pub fn same_options(&self, other: &AssetBundle) -> bool {
        self.root == other.root
            && self.fallback_exclude == other.fallback_exclude
            && self.fallback.is_some() == other.fallback.is_some()
            && self.assets.len() == other.assets.len()
            && self.assets.iter().all(|(k, a)| {
                other
                    .assets
                    .get(k)
                    .is_some_and(|b| a.cache_control == b.cache_control)
            })
    }

    /// Number of files.
    pub fn len(&self) -> usize {
        self.assets.len()
    }

    /// Every file's URL path with its ETag (a digest of its contents), in no order.
    pub fn files(&self) -> impl Iterator<Item = (&str, &HeaderValue)> {
        self.assets.iter().map(|(k, a)| (&**k, &a.identity.etag))
    }

    /// Whether the bundle has no file.
    pub fn is_empty(&self) -> bool {
        self.assets.is_empty()
    }

    /// The file a decoded path names: `/dir/` is `/dir/index.html`.
    pub fn file_name(decoded: &str) -> std::borrow::Cow<'_, str> {
        if decoded.ends_with('/') {
            format!("{decoded}index.html").into()
        } else {
            decoded.into()
        }
    }

    /// The asset for a decoded path, if any (`/dir/` → `/dir/index.html`); then the previous
    /// deploy's fingerprinted assets while their grace period lasts.
    pub fn get(&self, decoded: &str) -> Option<&Arc<Asset>> {
        if decoded.ends_with('/') {
            return self.assets.get(Self::file_name(decoded).as_ref());
        }
        self.assets.get(decoded).or_else(|| {
            self.previous
                .as_ref()
                .filter(|p| std::time::Instant::now() < p.until)
                .and_then(|p| p.assets.get(decoded))
        })
    }

    /// Keeps `old`'s fingerprinted (immutable) assets servable for `grace`.
    pub fn keep_previous(&mut self, old: &AssetBundle, grace: std::time::Duration) {
        if grace.is_zero() {
            return;
        }
        let assets = old
            .assets
            .iter()
            .filter(|(k, a)| a.cache_control == IMMUTABLE && !self.assets.contains_key(*k))
            .map(|(k, a)| (k.clone(), a.clone()))
            .collect();
        self.previous = Some(PreviousAssets {
            assets,
            until: std::time::Instant::now() + grace,
        });
    }
}

/// Collects `(url path, file path)` of every servable file under `root` (canonical): hidden
/// names are skipped (but `/.well-known/`), non-UTF-8 names too (no URL reaches them), and a
/// symlink is followed only when its target stays inside the root.
fn walk(root: &Path, out: &mut Vec<(String, PathBuf)>) -> Result<(), BundleError> {
    let entries = walkdir::WalkDir::new(root)
        .min_depth(1)
        .follow_links(true)
        .into_iter()
        .filter_entry(|e| {
            let Some(name) = e.file_name().to_str() else {
                return false;
            };
            if name.starts_with('.') && !(e.depth() == 1 && name == ".well-known") {
                return false;
            }
            if !e.path_is_symlink() {
                return true;
            }
            let inside = e.path().canonicalize().is_ok_and(|t| t.starts_with(root));
            if !inside {
                tracing::warn!(path = %e.path().display(), "symlink leaves the static root; skipped");
            }
            inside
        });
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            // A link back to an ancestor: its files are already there under the real path.
            Err(e) if e.loop_ancestor().is_some() => continue,
            Err(e) => {
                let path = e.path().unwrap_or(root).to_path_buf();
                return Err(BundleError::Io {
                    path: path.display().to_string(),
                    source: e
                        .into_io_error()
                        .unwrap_or_else(|| std::io::ErrorKind::Other.into()),
                });
            }
        };
        if !entry.file_type().is_file() {
            continue;
        }
        let rel = entry.path().strip_prefix(root).unwrap_or(entry.path());
        let mut key = String::new();
        for part in rel.components() {
            key.push('/');
            key.push_str(&part.as_os_str().to_string_lossy());
        }
        let real = if entry.path_is_symlink() {
            entry.path().canonicalize().map_err(io_err(entry.path()))?
        } else {
            entry.path().to_path_buf()
        };
        out.push((key, real));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_walk_keeps_servable_files_and_links_inside_the_root() {
        let dir = tempfile::tempdir().expect("tmp");
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("a/b")).expect("mkdir");
        std::fs::create_dir_all(root.join(".git")).expect("mkdir");
        std::fs::create_dir_all(root.join(".well-known")).expect("mkdir");
        std::fs::create_dir_all(root.join("a/.well-known")).expect("mkdir");
        for f in [
            "index.html",
            "a/b/c.js",
            ".env",
            ".git/config",
            ".well-known/x.txt",
        ] {
            std::fs::write(root.join(f), "x").expect("write");
        }
        std::fs::write(root.join("a/.well-known/y"), "x").expect("write");
        std::fs::write(dir.path().join("secret"), "s").expect("write");
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("leak")).expect("ln");
        std::os::unix::fs::symlink(root.join("a"), root.join("alias")).expect("ln");
        std::os::unix::fs::symlink(&root, root.join("a/loop")).expect("ln");
        let root = root.canonicalize().expect("canon");
        let mut files = Vec::new();
        walk(&root, &mut files).expect("walk");
        let mut keys: Vec<&str> = files.iter().map(|(k, _)| k.as_str()).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "/.well-known/x.txt",
                "/a/b/c.js",
                "/alias/b/c.js",
                "/index.html"
            ]
        );
        assert!(files.iter().all(|(_, p)| p.starts_with(&root)));
    }
}
