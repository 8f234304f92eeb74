//! Static answers of `static` routes, from the route's in-memory [`AssetBundle`]: method
//! check (405), the decoded path (hidden names refused), the file or the SPA shell for
//! navigations (404 otherwise), encoding (406 when nothing acceptable), conditional requests
//! (304) and single ranges (206/416). No filesystem access unless a file is too big to keep.

use super::answer::{self, Verdict};
use super::ctx::Ctx;
use crate::http::conneg::{self, Encoding, RangeSpec};
use crate::http::edge_response::{Body, EdgeResponse};
use crate::route::RouteKind;
use crate::static_files::{Asset, AssetBundle, Stored};
use http::header::{self, HeaderName, HeaderValue};
use pingora_http::RequestHeader;
use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

fn str_header(req: &RequestHeader, name: HeaderName) -> Option<&str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

/// The answer of a static route; proxy routes continue to the upstream.
pub fn serve(req: &RequestHeader, ctx: &mut Ctx) -> Verdict {
    let rt = ctx.rt.clone();
    match ctx.routing.index.map(|i| &rt.routes[i].kind) {
        Some(RouteKind::Static { bundle }) => Verdict::Respond(answer_from(req, ctx, bundle)),
        _ => Verdict::Continue,
    }
}

/// What a static route finds for a request, before encoding and conditionals.
#[derive(Debug)]
pub enum Lookup<'a> {
    /// Neither GET nor HEAD → 405.
    MethodNotAllowed,
    /// The path does not decode → 400.
    BadPath,
    /// No file, and no SPA fallback for it → 404.
    NotFound,
    /// The file at this decoded path (see [`AssetBundle::file_name`]).
    File(Cow<'a, str>, Arc<Asset>),
    /// The SPA shell, for a navigation naming no file.
    Fallback(Arc<Asset>),
}

/// Finds the asset `req` asks of `bundle` at the normalised `path` (plain inputs: the dry run
/// looks up files the same way).
pub fn lookup<'a>(req: &RequestHeader, path: &'a str, bundle: &AssetBundle) -> Lookup<'a> {
    if req.method != http::Method::GET && req.method != http::Method::HEAD {
        return Lookup::MethodNotAllowed;
    }
    let Some(decoded) = crate::path::decode_fully(path) else {
        return Lookup::BadPath;
    };
    // Dot segments were resolved by normalisation; hidden names are not in the bundle, but
    // refuse them outright so the answer does not depend on the bundle's contents.
    let hidden = decoded
        .split('/')
        .enumerate()
        .any(|(i, s)| s.starts_with('.') && !(i == 1 && s == ".well-known"));
    let found = if hidden { None } else { bundle.get(&decoded) };
    if let Some(a) = found {
        return Lookup::File(decoded, a.clone());
    }
    let last = decoded.rsplit('/').next().unwrap_or("");
    let navigation = !last.contains('.')
        && !hidden
        && conneg::accepts_html(str_header(req, header::ACCEPT))
        && !bundle
            .fallback_exclude
            .iter()
            .any(|p| crate::path::prefix_matches(p, &decoded));
    match (&bundle.fallback, navigation) {
        (Some(f), true) => Lookup::Fallback(f.clone()),
        _ => Lookup::NotFound,
    }
}

fn answer_from(req: &RequestHeader, ctx: &mut Ctx, bundle: &AssetBundle) -> EdgeResponse {
    let head = req.method == http::Method::HEAD;
    let asset = match lookup(req, &ctx.routing.path, bundle) {
        Lookup::File(_, a) | Lookup::Fallback(a) => a,
        Lookup::MethodNotAllowed => {
            let mut r = answer::error(req, ctx, 405);
            r.put(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        Lookup::BadPath => return answer::error(req, ctx, 400),
        Lookup::NotFound => return answer::error(req, ctx, 404),
    };

    let Some(enc) = conneg::negotiate(
        str_header(req, header::ACCEPT_ENCODING),
        asset.br.is_some(),
        asset.gzip.is_some(),
    ) else {
        return answer::error(req, ctx, 406);
    };
    let variant = asset.variant(enc);
    ctx.acct.encoding = Some(enc);

    let not_modified = match str_header(req, header::IF_NONE_MATCH) {
        Some(inm) => conneg::none_match(inm, &variant.etag),
        None => str_header(req, header::IF_MODIFIED_SINCE)
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .is_some_and(|ims| asset.modified_secs <= ims.as_secs()),
    };

    let mut range = RangeSpec::Full;
    if !not_modified && !head {
        if let Some(r) = str_header(req, header::RANGE) {
            let if_range_ok = match str_header(req, header::IF_RANGE) {
                None => true,
                // Strong comparison for entity tags; an exact date match otherwise.
                Some(ir) if ir.starts_with('"') => ir.as_bytes() == variant.etag.as_bytes(),
                Some(ir) => ir.as_bytes() == asset.last_modified.as_bytes(),
            };
            if if_range_ok {
                range = conneg::parse_range(r, variant.len);
            }
        }
    }

    let status = match (not_modified, range) {
        (true, _) => http::StatusCode::NOT_MODIFIED,
        (false, RangeSpec::Full) => http::StatusCode::OK,
        (false, RangeSpec::Part(..)) => http::StatusCode::PARTIAL_CONTENT,
        (false, RangeSpec::Unsatisfiable) => http::StatusCode::RANGE_NOT_SATISFIABLE,
    };
    let mut r = EdgeResponse::new(status, 16);
    r.put(header::ETAG, variant.etag.clone());
    r.put(header::LAST_MODIFIED, asset.last_modified.clone());
    r.put(header::CACHE_CONTROL, asset.cache_control.clone());
    if asset.has_variants() {
        r.put(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
    answer::common_headers(&mut r, ctx);
    ctx.rt.security_headers.apply(&mut r.head.headers);
    if not_modified {
        answer::route_rules(&mut r.head.headers, ctx);
        return r;
    }
    r.put(header::CONTENT_TYPE, asset.content_type.clone());
    r.put(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if enc != Encoding::Identity {
        r.put(
            header::CONTENT_ENCODING,
            HeaderValue::from_static(enc.as_str()),
        );
    }
    let (start, end) = match range {
        RangeSpec::Unsatisfiable => {
            r.put(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{}", variant.len))
                    .expect("digits are a valid header value"),
            );
            r.put(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
            answer::route_rules(&mut r.head.headers, ctx);
            return r;
        }
        RangeSpec::Part(s, e) => {
            r.put(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {s}-{e}/{}", variant.len))
                    .expect("digits are a valid header value"),
            );
            (s, e + 1)
        }
        RangeSpec::Full => (0, variant.len),
    };
    if end - start == variant.len {
        r.put(header::CONTENT_LENGTH, variant.len_header.clone());
    } else {
        r.put(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    }
    answer::route_rules(&mut r.head.headers, ctx);
    if !head && start < end {
        r.body = match &variant.body {
            Stored::Memory(b) => Body::Bytes(b.slice(start as usize..end as usize)),
            Stored::Disk(p) => Body::File {
                path: p.clone(),
                start,
                end,
            },
        };
    }
    r
}
