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

use crate::proxy::Ctx;
use crate::response;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use pingora_core::Result;
use pingora_proxy::Session;
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

/// The default fingerprint pattern: a hash segment of 8+ hex digits before the extension.
pub const DEFAULT_FINGERPRINT: &str = r"[.-][0-9a-fA-F]{8,}\.[A-Za-z0-9]+$";

const IMMUTABLE: &str = "public, max-age=31536000, immutable";
const NO_CACHE: &str = "no-cache";

/// Where a variant's bytes live.
#[derive(Debug, Clone)]
enum Body {
    Memory(Bytes),
    Disk(PathBuf),
}

/// One encoding of a file.
#[derive(Debug, Clone)]
struct Variant {
    body: Body,
    len: u64,
    etag: HeaderValue,
    /// `Content-Length` of the whole variant, preformatted.
    len_header: HeaderValue,
}

/// Content encodings we serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    Brotli,
    /// Proxied responses only (static bundles carry br and gzip siblings).
    Zstd,
}

impl Encoding {
    /// Label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Identity => "identity",
            Encoding::Gzip => "gzip",
            Encoding::Brotli => "br",
            Encoding::Zstd => "zstd",
        }
    }
}

/// One file with its precomputed headers.
#[derive(Debug, Clone)]
pub struct Asset {
    content_type: HeaderValue,
    last_modified: HeaderValue,
    modified_secs: u64,
    cache_control: HeaderValue,
    identity: Variant,
    gzip: Option<Variant>,
    br: Option<Variant>,
}

impl Asset {
    fn has_variants(&self) -> bool {
        self.gzip.is_some() || self.br.is_some()
    }

    fn variant(&self, e: Encoding) -> &Variant {
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
    fallback: Option<Arc<Asset>>,
    fallback_exclude: Vec<String>,
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
            body: Body::Memory(Bytes::from(data)),
        })
    } else {
        let h = sha256_file(path).map_err(io_err(path))?;
        Ok(Variant {
            len,
            etag: etag(&h, suffix),
            len_header: HeaderValue::from(len),
            body: Body::Disk(path.to_path_buf()),
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
        walk(&canon_root, &canon_root, "", &mut files)?;
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
            if let Body::Memory(data) = &identity.body {
                if compressible && data.len() > 1024 {
                    let id_hash = sha256(data);
                    let make = |bytes: Option<Vec<u8>>, suffix: &str| {
                        bytes.filter(|c| c.len() < data.len()).map(|c| Variant {
                            len: c.len() as u64,
                            etag: etag(&id_hash, suffix),
                            len_header: HeaderValue::from(c.len()),
                            body: Body::Memory(Bytes::from(c)),
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

    /// Whether the bundle has no file.
    pub fn is_empty(&self) -> bool {
        self.assets.is_empty()
    }

    /// The asset for a decoded path, if any (`/dir/` → `/dir/index.html`); then the previous
    /// deploy's fingerprinted assets while their grace period lasts.
    pub fn get(&self, decoded: &str) -> Option<&Arc<Asset>> {
        if decoded.ends_with('/') {
            let key = format!("{decoded}index.html");
            return self.assets.get(key.as_str());
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

/// Collects `(url path, file path)` of every servable file under `dir`.
fn walk(
    root: &Path,
    dir: &Path,
    prefix: &str,
    out: &mut Vec<(String, PathBuf)>,
) -> Result<(), BundleError> {
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue; // not UTF-8: unreachable by URL anyway
        };
        let hidden = name.starts_with('.') && !(prefix.is_empty() && name == ".well-known");
        if hidden {
            continue;
        }
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).map_err(io_err(&path))?;
        let real = if meta.file_type().is_symlink() {
            // A link is followed only when its target stays inside the root.
            match path.canonicalize() {
                Ok(t) if t.starts_with(root) => t,
                _ => {
                    tracing::warn!(path = %path.display(), "symlink leaves the static root; skipped");
                    continue;
                }
            }
        } else {
            path.clone()
        };
        let key = format!("{prefix}/{name}");
        if real.is_dir() {
            walk(root, &real, &key, out)?;
        } else if real.is_file() {
            out.push((key, real));
        }
    }
    Ok(())
}

/// Parsed `Accept-Encoding` preferences.
#[derive(Debug, Clone, Copy, PartialEq)]
struct AcceptEncoding {
    br: Option<f32>,
    gzip: Option<f32>,
    zstd: Option<f32>,
    identity: Option<f32>,
    star: Option<f32>,
}

fn parse_q(params: &str) -> f32 {
    for p in params.split(';') {
        let p = p.trim();
        if let Some(v) = p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")) {
            return v.trim().parse::<f32>().map_or(0.0, |q| q.clamp(0.0, 1.0));
        }
    }
    1.0
}

fn parse_accept_encoding(v: &str) -> AcceptEncoding {
    let mut ae = AcceptEncoding {
        br: None,
        gzip: None,
        zstd: None,
        identity: None,
        star: None,
    };
    for item in v.split(',') {
        let (name, params) = item.split_once(';').unwrap_or((item, ""));
        let q = parse_q(params);
        match name.trim().to_ascii_lowercase().as_str() {
            "br" => ae.br = Some(q),
            "gzip" | "x-gzip" => ae.gzip = Some(q),
            "zstd" => ae.zstd = Some(q),
            "identity" => ae.identity = Some(q),
            "*" => ae.star = Some(q),
            _ => {}
        }
    }
    ae
}

/// Chooses the encoding to send, or `None` for 406.
pub fn negotiate(accept: Option<&str>, has_br: bool, has_gzip: bool) -> Option<Encoding> {
    let Some(accept) = accept else {
        return Some(Encoding::Identity);
    };
    match (has_br, has_gzip) {
        (true, true) => negotiate_among(accept, &[Encoding::Brotli, Encoding::Gzip]),
        (true, false) => negotiate_among(accept, &[Encoding::Brotli]),
        (false, true) => negotiate_among(accept, &[Encoding::Gzip]),
        (false, false) => negotiate_among(accept, &[]),
    }
}

/// The best of `offers` (preferred first on equal q) or identity for an `Accept-Encoding`
/// value; `None` when nothing offered is acceptable (identity refused too).
pub fn negotiate_among(accept: &str, offers: &[Encoding]) -> Option<Encoding> {
    let ae = parse_accept_encoding(accept);
    let q = |explicit: Option<f32>| explicit.or(ae.star).unwrap_or(0.0);
    // Identity is acceptable unless refused explicitly (or by `*;q=0` without naming it),
    // but ranks below any encoding the client asked for.
    let q_id = ae
        .identity
        .or(ae.star.filter(|s| *s == 0.0))
        .unwrap_or(0.001);
    let mut best: Option<(Encoding, f32)> = None;
    for &enc in offers.iter().chain(std::iter::once(&Encoding::Identity)) {
        let qv = match enc {
            Encoding::Brotli => q(ae.br),
            Encoding::Gzip => q(ae.gzip),
            Encoding::Zstd => q(ae.zstd),
            Encoding::Identity => q_id,
        };
        if qv > 0.0 && best.is_none_or(|(_, b)| qv > b) {
            best = Some((enc, qv));
        }
    }
    best.map(|(e, _)| e)
}

/// Whether `Accept` admits `text/html` (absent = anything).
fn accepts_html(accept: Option<&str>) -> bool {
    let Some(accept) = accept else {
        return true;
    };
    accept.split(',').any(|item| {
        let (range, params) = item.split_once(';').unwrap_or((item, ""));
        let range = range.trim().to_ascii_lowercase();
        matches!(range.as_str(), "text/html" | "text/*" | "*/*") && parse_q(params) > 0.0
    })
}

/// Weak comparison of an `If-None-Match` list against `etag`.
fn none_match(header: &str, etag: &HeaderValue) -> bool {
    let tag = etag.as_bytes();
    header.split(',').any(|t| {
        let t = t.trim();
        t == "*" || t.strip_prefix("W/").unwrap_or(t).as_bytes() == tag
    })
}

/// A single byte range resolved against a length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// No (usable) range: send everything.
    Full,
    /// Inclusive `start..=end`.
    Part(u64, u64),
    /// 416.
    Unsatisfiable,
}

/// Parses a `Range` header for a representation of `len` bytes. Several ranges, other units
/// and malformed values fall back to the full body, as RFC 9110 §14.2 allows.
pub fn parse_range(v: &str, len: u64) -> RangeSpec {
    let Some(spec) = v.trim().strip_prefix("bytes=") else {
        return RangeSpec::Full;
    };
    if spec.contains(',') {
        return RangeSpec::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeSpec::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    if a.is_empty() {
        // Suffix range: the last N bytes.
        if !digits(b) {
            return RangeSpec::Full;
        }
        let n: u64 = b.parse().unwrap_or(u64::MAX);
        if n == 0 || len == 0 {
            return RangeSpec::Unsatisfiable;
        }
        return RangeSpec::Part(len.saturating_sub(n), len - 1);
    }
    if !digits(a) || !(b.is_empty() || digits(b)) {
        return RangeSpec::Full;
    }
    let start: u64 = a.parse().unwrap_or(u64::MAX);
    let end: u64 = if b.is_empty() {
        u64::MAX
    } else {
        b.parse().unwrap_or(u64::MAX)
    };
    if end < start {
        return RangeSpec::Full;
    }
    if start >= len {
        return RangeSpec::Unsatisfiable;
    }
    RangeSpec::Part(start, end.min(len - 1))
}

/// Compiled security headers.
#[derive(Debug, Clone, Default)]
pub struct SecurityHeaders {
    /// Name/value pairs added to gateway responses.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl SecurityHeaders {
    /// Adds every header to `resp`.
    pub fn apply(&self, resp: &mut impl response::PutHeader) {
        for (n, v) in &self.headers {
            resp.put(n.clone(), v.clone());
        }
    }
}

fn str_header(session: &Session, name: HeaderName) -> Option<&str> {
    session
        .req_header()
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
}

/// `request_filter` step of static routes: answers the request from `bundle`.
/// `path` is the normalised request path.
pub async fn request_filter(
    session: &mut Session,
    ctx: &mut Ctx,
    bundle: &AssetBundle,
    path: &str,
) -> Result<()> {
    let method = session.req_header().method.clone();
    let head = method == http::Method::HEAD;
    if method != http::Method::GET && !head {
        return response::write_error_with(
            session,
            ctx,
            405,
            false,
            &[(header::ALLOW, HeaderValue::from_static("GET, HEAD"))],
        )
        .await;
    }
    let Some(decoded) = crate::path::decode_fully(path) else {
        return response::write_error(session, ctx, 400, false).await;
    };
    // Dot segments were resolved by normalisation; hidden names are not in the bundle, but
    // refuse them outright so the answer does not depend on the bundle's contents.
    let hidden = decoded
        .split('/')
        .enumerate()
        .any(|(i, s)| s.starts_with('.') && !(i == 1 && s == ".well-known"));
    let found = if hidden { None } else { bundle.get(&decoded) };
    let asset = match found {
        Some(a) => a.clone(),
        None => {
            let last = decoded.rsplit('/').next().unwrap_or("");
            let navigation = !last.contains('.')
                && !hidden
                && accepts_html(str_header(session, header::ACCEPT))
                && !bundle
                    .fallback_exclude
                    .iter()
                    .any(|p| crate::route::prefix_matches(p, &decoded));
            match (&bundle.fallback, navigation) {
                (Some(f), true) => f.clone(),
                _ => return response::write_error(session, ctx, 404, false).await,
            }
        }
    };

    let Some(enc) = negotiate(
        str_header(session, header::ACCEPT_ENCODING),
        asset.br.is_some(),
        asset.gzip.is_some(),
    ) else {
        return response::write_error(session, ctx, 406, false).await;
    };
    let variant = asset.variant(enc);
    ctx.encoding = Some(enc);

    let not_modified = match str_header(session, header::IF_NONE_MATCH) {
        Some(inm) => none_match(inm, &variant.etag),
        None => str_header(session, header::IF_MODIFIED_SINCE)
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .is_some_and(|ims| asset.modified_secs <= ims.as_secs()),
    };

    let mut range = RangeSpec::Full;
    if !not_modified && !head {
        if let Some(r) = str_header(session, header::RANGE) {
            let if_range_ok = match str_header(session, header::IF_RANGE) {
                None => true,
                // Strong comparison for entity tags; an exact date match otherwise.
                Some(ir) if ir.starts_with('"') => ir.as_bytes() == variant.etag.as_bytes(),
                Some(ir) => ir.as_bytes() == asset.last_modified.as_bytes(),
            };
            if if_range_ok {
                range = parse_range(r, variant.len);
            }
        }
    }

    let status = if not_modified {
        304
    } else {
        match range {
            RangeSpec::Full => 200,
            RangeSpec::Part(..) => 206,
            RangeSpec::Unsatisfiable => 416,
        }
    };
    let mut h = response::Head::new(
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK),
        16,
    );
    h.put(header::ETAG, variant.etag.clone());
    h.put(header::LAST_MODIFIED, asset.last_modified.clone());
    h.put(header::CACHE_CONTROL, asset.cache_control.clone());
    if asset.has_variants() {
        h.put(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
    response::add_common_headers_to(&mut h, ctx);
    ctx.rt.security_headers.apply(&mut h.parts.headers);
    ctx.status = status;
    if status == 304 {
        let mut resp = h.finish();
        response::apply_route_rules(&mut resp, ctx);
        session.write_response_header(Box::new(resp), true).await?;
        return Ok(());
    }
    h.put(header::CONTENT_TYPE, asset.content_type.clone());
    h.put(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if enc != Encoding::Identity {
        h.put(
            header::CONTENT_ENCODING,
            HeaderValue::from_static(enc.as_str()),
        );
    }
    let (start, end) = match range {
        RangeSpec::Unsatisfiable => {
            h.put(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{}", variant.len))
                    .expect("digits are a valid header value"),
            );
            h.put(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
            let mut resp = h.finish();
            response::apply_route_rules(&mut resp, ctx);
            session.write_response_header(Box::new(resp), true).await?;
            return Ok(());
        }
        RangeSpec::Part(s, e) => {
            h.put(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {s}-{e}/{}", variant.len))
                    .expect("digits are a valid header value"),
            );
            (s, e + 1)
        }
        RangeSpec::Full => (0, variant.len),
    };
    if end - start == variant.len {
        h.put(header::CONTENT_LENGTH, variant.len_header.clone());
    } else {
        h.put(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    }
    let mut resp = h.finish();
    response::apply_route_rules(&mut resp, ctx);
    if head || start == end {
        session.write_response_header(Box::new(resp), true).await?;
        return Ok(());
    }
    session.write_response_header(Box::new(resp), false).await?;
    match &variant.body {
        Body::Memory(b) => {
            let chunk = b.slice(start as usize..end as usize);
            ctx.body_sent += chunk.len() as u64;
            session.write_response_body(Some(chunk), true).await?;
        }
        Body::Disk(p) => stream_file(session, ctx, p, start, end).await?,
    }
    Ok(())
}

/// Streams `[start, end)` of a file in 64 KiB chunks.
async fn stream_file(
    session: &mut Session,
    ctx: &mut Ctx,
    path: &Path,
    start: u64,
    end: u64,
) -> Result<()> {
    use pingora_core::{Error, ErrorType, OrErr};
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut f = tokio::fs::File::open(path)
        .await
        .or_err(ErrorType::InternalError, "opening static file")?;
    f.seek(std::io::SeekFrom::Start(start))
        .await
        .or_err(ErrorType::InternalError, "seeking static file")?;
    let mut left = end - start;
    while left > 0 {
        let mut buf = vec![0u8; left.min(64 * 1024) as usize];
        let n = f
            .read(&mut buf)
            .await
            .or_err(ErrorType::InternalError, "reading static file")?;
        if n == 0 {
            return Error::e_explain(ErrorType::InternalError, "static file shrank while serving");
        }
        buf.truncate(n);
        left -= n as u64;
        ctx.body_sent += n as u64;
        session
            .write_response_body(Some(Bytes::from(buf)), left == 0)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_negotiation_follows_q_values() {
        use Encoding::*;
        assert_eq!(negotiate(None, true, true), Some(Identity));
        assert_eq!(
            negotiate(Some("gzip, deflate, br"), true, true),
            Some(Brotli)
        );
        assert_eq!(negotiate(Some("gzip, br;q=0"), true, true), Some(Gzip));
        assert_eq!(
            negotiate(Some("br;q=0.5, gzip;q=0.8"), true, true),
            Some(Gzip)
        );
        assert_eq!(negotiate(Some("br"), false, true), Some(Identity));
        assert_eq!(negotiate(Some("*"), true, true), Some(Brotli));
        assert_eq!(negotiate(Some("identity"), true, true), Some(Identity));
        assert_eq!(negotiate(Some("identity;q=0"), false, false), None);
        assert_eq!(
            negotiate(Some("identity;q=0, gzip"), true, true),
            Some(Gzip)
        );
        assert_eq!(negotiate(Some("*;q=0"), true, true), None);
        assert_eq!(
            negotiate(Some("*;q=0, identity"), true, true),
            Some(Identity)
        );
        assert_eq!(negotiate(Some(""), true, true), Some(Identity));
        assert_eq!(negotiate(Some("GZIP;Q=1"), false, true), Some(Gzip));
    }

    #[test]
    fn ranges() {
        use RangeSpec::*;
        assert_eq!(parse_range("bytes=0-9", 100), Part(0, 9));
        assert_eq!(parse_range("bytes=90-", 100), Part(90, 99));
        assert_eq!(parse_range("bytes=-10", 100), Part(90, 99));
        assert_eq!(parse_range("bytes=-1000", 100), Part(0, 99));
        assert_eq!(parse_range("bytes=50-1000", 100), Part(50, 99));
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Full);
        assert_eq!(parse_range("items=0-1", 100), Full);
        assert_eq!(parse_range("bytes=5-1", 100), Full);
        assert_eq!(parse_range("bytes=a-b", 100), Full);
        assert_eq!(parse_range("bytes=--1", 100), Full);
    }

    #[test]
    fn accept_html() {
        assert!(accepts_html(None));
        assert!(accepts_html(Some(
            "text/html,application/xhtml+xml,*/*;q=0.8"
        )));
        assert!(accepts_html(Some("*/*")));
        assert!(!accepts_html(Some("application/json")));
        assert!(!accepts_html(Some("text/html;q=0")));
        assert!(!accepts_html(Some("image/avif,image/webp")));
    }

    #[test]
    fn if_none_match_is_weak_and_lists() {
        let e = HeaderValue::from_static("\"abc\"");
        assert!(none_match("\"abc\"", &e));
        assert!(none_match("W/\"abc\"", &e));
        assert!(none_match("\"x\", W/\"abc\"", &e));
        assert!(none_match("*", &e));
        assert!(!none_match("\"abcd\"", &e));
    }
}
