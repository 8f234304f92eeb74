//! Static files and the SPA fallback through the real gateway.

use crate::harness::*;
use reqwest::header;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

const SENTINEL: &str = "SENTINEL-7f3a-outside-the-root";

/// A web root with the cases the tests need, and a sentinel file next to it.
pub(crate) fn make_root(dir: &Path) -> std::path::PathBuf {
    let root = dir.join("site");
    std::fs::create_dir_all(root.join("assets")).expect("mkdir");
    std::fs::create_dir_all(root.join(".git")).expect("mkdir");
    std::fs::create_dir_all(root.join(".well-known")).expect("mkdir");
    std::fs::write(dir.join("secret.txt"), SENTINEL).expect("sentinel");
    std::fs::write(root.join(".git/config"), SENTINEL).expect("dotdir");
    std::fs::write(root.join(".env"), SENTINEL).expect("dotfile");
    std::fs::write(
        root.join(".well-known/security.txt"),
        "Contact: mailto:sec@example.com\n",
    )
    .expect("wk");
    std::os::unix::fs::symlink(dir.join("secret.txt"), root.join("leak.txt")).expect("symlink");
    std::os::unix::fs::symlink(root.join("index.html"), root.join("home.html"))
        .expect("symlink in");
    std::fs::write(
        root.join("index.html"),
        "<!doctype html><title>shell</title><script src=\"/assets/app.0123abcd.js\"></script>",
    )
    .expect("index");
    let js: String = (0..200)
        .map(|i| format!("export const v{i} = {i};\n"))
        .collect();
    std::fs::write(root.join("assets/app.0123abcd.js"), &js).expect("js");
    std::fs::write(
        root.join("assets/logo.png"),
        [0x89u8, b'P', b'N', b'G', 1, 2, 3, 4],
    )
    .expect("png");
    // A precompressed sibling is served as the gzip variant.
    let json = "{\"k\":\"".to_string() + &"v".repeat(3000) + "\"}";
    std::fs::write(root.join("data.json"), &json).expect("json");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, json.as_bytes()).expect("gz");
    std::fs::write(root.join("data.json.gz"), gz.finish().expect("gz")).expect("gz");
    // Bigger than max_memory_file_bytes: streamed from disk.
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(root.join("big.bin"), big).expect("big");
    root
}

fn start(dir: &Path) -> (Gateway, std::path::PathBuf) {
    let root = make_root(dir);
    let certs = TestCerts::new(dir);
    let ports = Ports::new();
    let conf = format!(
        "{}{}\n[upstreams.backend]\npeers = [\"127.0.0.1:{}\"]\nhealth_check_path = \"\"\n\n\
         [[routes]]\nname = \"api\"\nprefix = \"/api\"\nkind = \"proxy\"\nupstream = \"backend\"\n\n\
         [[routes]]\nname = \"web\"\nprefix = \"/\"\nkind = \"static\"\nroot = \"{}\"\nmax_memory_file_bytes = 65536\n\
         cache_control = [{{ glob = \"*.png\", value = \"public, max-age=60\" }}]\n",
        ports.sections(dir),
        tls_section(&certs),
        free_port(),
        root.display()
    );
    (start_gateway(dir, &ports, &conf, &certs.ca_pem), root)
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b)
        .read_to_end(&mut out)
        .expect("gunzip");
    out
}

fn unbrotli(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    brotli::Decompressor::new(b, 4096)
        .read_to_end(&mut out)
        .expect("unbrotli");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assets_headers_encodings_and_cache_policy() {
    let dir = tempfile::tempdir().expect("tmp");
    let (gw, root) = start(dir.path());
    let c = gw.raw_client();
    let js = std::fs::read(root.join("assets/app.0123abcd.js")).expect("js");

    let r = c
        .get(gw.url("/assets/app.0123abcd.js?v=1"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(
        h[header::CACHE_CONTROL],
        "public, max-age=31536000, immutable"
    );
    assert_eq!(
        h[header::CONTENT_TYPE],
        "application/javascript; charset=utf-8"
    );
    assert_eq!(h[header::VARY], "Accept-Encoding");
    assert_eq!(h[header::ACCEPT_RANGES], "bytes");
    assert!(h.get(header::CONTENT_ENCODING).is_none());
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "strict-origin-when-cross-origin"),
        ("strict-transport-security", "max-age=31536000"),
    ] {
        assert_eq!(h[name], value, "{name}");
    }
    assert!(h["content-security-policy"]
        .to_str()
        .expect("csp")
        .contains("default-src 'self'"));
    assert!(h.get("permissions-policy").is_some());
    assert!(h.get("server").is_none());
    let id_etag = h[header::ETAG].to_str().expect("etag").to_string();
    assert_eq!(r.bytes().await.expect("body").as_ref(), js.as_slice());

    let r = c
        .get(gw.url("/assets/app.0123abcd.js"))
        .header(header::ACCEPT_ENCODING, "gzip, br")
        .send()
        .await
        .expect("br");
    assert_eq!(r.headers()[header::CONTENT_ENCODING], "br");
    let br_etag = r.headers()[header::ETAG]
        .to_str()
        .expect("etag")
        .to_string();
    assert_eq!(unbrotli(&r.bytes().await.expect("body")), js);
    let r = c
        .get(gw.url("/assets/app.0123abcd.js"))
        .header(header::ACCEPT_ENCODING, "gzip;q=1, br;q=0")
        .send()
        .await
        .expect("gz");
    assert_eq!(r.headers()[header::CONTENT_ENCODING], "gzip");
    let gz_etag = r.headers()[header::ETAG]
        .to_str()
        .expect("etag")
        .to_string();
    assert_eq!(gunzip(&r.bytes().await.expect("body")), js);
    assert!(id_etag != br_etag && br_etag != gz_etag && id_etag != gz_etag);

    // Precompressed sibling used as is; the .gz is not a separate file.
    let r = c
        .get(gw.url("/data.json"))
        .header(header::ACCEPT_ENCODING, "gzip")
        .send()
        .await
        .expect("json");
    assert_eq!(r.headers()[header::CONTENT_ENCODING], "gzip");
    let body = r.bytes().await.expect("body");
    assert_eq!(
        body.as_ref(),
        std::fs::read(root.join("data.json.gz"))
            .expect("gz")
            .as_slice()
    );
    assert_eq!(
        gunzip(&body),
        std::fs::read(root.join("data.json")).expect("json")
    );
    assert_eq!(
        c.get(gw.url("/data.json.gz"))
            .send()
            .await
            .expect("gz")
            .status(),
        404
    );

    // Shell: no-cache. Binary with a glob override, never compressed.
    let r = c
        .get(gw.url("/"))
        .header(header::ACCEPT_ENCODING, "br")
        .send()
        .await
        .expect("index");
    assert_eq!(r.headers()[header::CACHE_CONTROL], "no-cache");
    assert_eq!(
        r.headers()[header::CONTENT_TYPE],
        "text/html; charset=utf-8"
    );
    let r = c
        .get(gw.url("/assets/logo.png"))
        .header(header::ACCEPT_ENCODING, "gzip, br")
        .send()
        .await
        .expect("png");
    assert_eq!(r.headers()[header::CACHE_CONTROL], "public, max-age=60");
    assert!(r.headers().get(header::CONTENT_ENCODING).is_none());
    assert!(r.headers().get(header::VARY).is_none());
    // Nothing acceptable → 406.
    let r = c
        .get(gw.url("/assets/logo.png"))
        .header(header::ACCEPT_ENCODING, "identity;q=0")
        .send()
        .await
        .expect("406");
    assert_eq!(r.status(), 406);
    // A symlink inside the root is served; .well-known is reachable.
    assert_eq!(
        c.get(gw.url("/home.html"))
            .send()
            .await
            .expect("link")
            .status(),
        200
    );
    assert_eq!(
        c.get(gw.url("/.well-known/security.txt"))
            .send()
            .await
            .expect("wk")
            .status(),
        200
    );
    // Methods.
    let r = c
        .post(gw.url("/index.html"))
        .body("x")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()[header::ALLOW], "GET, HEAD");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_head_and_range_requests() {
    let dir = tempfile::tempdir().expect("tmp");
    let (gw, root) = start(dir.path());
    let c = gw.raw_client();
    let url = gw.url("/assets/app.0123abcd.js");
    let js = std::fs::read(root.join("assets/app.0123abcd.js")).expect("js");
    let r = c.get(&url).send().await.expect("get");
    let etag = r.headers()[header::ETAG]
        .to_str()
        .expect("etag")
        .to_string();
    let lm = r.headers()[header::LAST_MODIFIED]
        .to_str()
        .expect("lm")
        .to_string();

    for inm in [
        etag.clone(),
        format!("W/{etag}"),
        format!("\"nope\", {etag}"),
        "*".to_string(),
    ] {
        let r = c
            .get(&url)
            .header(header::IF_NONE_MATCH, &inm)
            .send()
            .await
            .expect("inm");
        assert_eq!(r.status(), 304, "{inm}");
        assert_eq!(r.headers()[header::ETAG], etag.as_str());
        assert!(r
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_none_or(|v| v == "0"));
        assert!(r.bytes().await.expect("body").is_empty());
    }
    let r = c
        .get(&url)
        .header(header::IF_NONE_MATCH, "\"other\"")
        .header(header::IF_MODIFIED_SINCE, &lm)
        .send()
        .await
        .expect("inm wins");
    assert_eq!(
        r.status(),
        200,
        "If-None-Match takes precedence over If-Modified-Since"
    );
    let r = c
        .get(&url)
        .header(header::IF_MODIFIED_SINCE, &lm)
        .send()
        .await
        .expect("ims");
    assert_eq!(r.status(), 304);
    let r = c
        .get(&url)
        .header(header::IF_MODIFIED_SINCE, "Thu, 01 Jan 1998 00:00:00 GMT")
        .send()
        .await
        .expect("ims old");
    assert_eq!(r.status(), 200);

    // HEAD = GET without a body.
    let g = c.get(&url).send().await.expect("get");
    let h = c.head(&url).send().await.expect("head");
    assert_eq!(h.status(), 200);
    for name in [
        header::CONTENT_LENGTH,
        header::ETAG,
        header::CONTENT_TYPE,
        header::CACHE_CONTROL,
    ] {
        assert_eq!(g.headers()[&name], h.headers()[&name], "{name}");
    }
    assert!(h.bytes().await.expect("body").is_empty());

    // Ranges.
    let r = c
        .get(&url)
        .header(header::RANGE, "bytes=10-19")
        .send()
        .await
        .expect("range");
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()[header::CONTENT_RANGE],
        format!("bytes 10-19/{}", js.len()).as_str()
    );
    assert_eq!(r.bytes().await.expect("b").as_ref(), &js[10..20]);
    let r = c
        .get(&url)
        .header(header::RANGE, "bytes=-7")
        .send()
        .await
        .expect("suffix");
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.expect("b").as_ref(), &js[js.len() - 7..]);
    let r = c
        .get(&url)
        .header(header::RANGE, format!("bytes={}-", js.len()))
        .send()
        .await
        .expect("416");
    assert_eq!(r.status(), 416);
    assert_eq!(
        r.headers()[header::CONTENT_RANGE],
        format!("bytes */{}", js.len()).as_str()
    );
    let r = c
        .get(&url)
        .header(header::RANGE, "bytes=0-1,4-5")
        .send()
        .await
        .expect("multi");
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.expect("b").len(), js.len());
    let r = c
        .get(&url)
        .header(header::RANGE, "bytes=0-3")
        .header(header::IF_RANGE, &etag)
        .send()
        .await
        .expect("if-range ok");
    assert_eq!(r.status(), 206);
    let r = c
        .get(&url)
        .header(header::RANGE, "bytes=0-3")
        .header(header::IF_RANGE, "\"stale\"")
        .send()
        .await
        .expect("if-range stale");
    assert_eq!(r.status(), 200);

    // A file streamed from disk, whole and ranged.
    let big = std::fs::read(root.join("big.bin")).expect("big");
    let r = c.get(gw.url("/big.bin")).send().await.expect("big");
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.expect("b").as_ref(), big.as_slice());
    let r = c
        .get(gw.url("/big.bin"))
        .header(header::RANGE, "bytes=100000-100099")
        .send()
        .await
        .expect("big range");
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.expect("b").as_ref(), &big[100_000..100_100]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spa_fallback_is_deploy_safe() {
    let dir = tempfile::tempdir().expect("tmp");
    let (gw, root) = start(dir.path());
    let c = gw.client();
    let index = std::fs::read_to_string(root.join("index.html")).expect("index");
    for path in ["/expenses/42", "/login", "/deep/link/here"] {
        let r = c
            .get(gw.url(path))
            .header(header::ACCEPT, "text/html,*/*;q=0.8")
            .send()
            .await
            .expect("nav");
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-cache");
        assert_eq!(r.text().await.expect("t"), index);
    }
    // Missing assets and chunks are 404 and never HTML.
    for path in [
        "/assets/missing.0123abcd.js",
        "/assets/app.js",
        "/favicon.ico",
    ] {
        let r = c
            .get(gw.url(path))
            .header(header::ACCEPT, "*/*")
            .send()
            .await
            .expect("asset");
        assert_eq!(r.status(), 404, "{path}");
        assert!(!r.headers()[header::CONTENT_TYPE]
            .to_str()
            .expect("ct")
            .contains("html"));
    }
    // Not a navigation (JSON wanted) → 404.
    let r = c
        .get(gw.url("/reports"))
        .header(header::ACCEPT, "application/json")
        .send()
        .await
        .expect("json");
    assert_eq!(r.status(), 404);
    // /api never falls back, even for navigations: the proxy answers (here 502, no peer).
    let r = c
        .get(gw.url("/api/nothing"))
        .header(header::ACCEPT, "text/html")
        .send()
        .await
        .expect("api");
    assert_eq!(r.status(), 502);
    assert!(!r.text().await.expect("t").contains("shell"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etags_are_stable_across_restarts() {
    let dir = tempfile::tempdir().expect("tmp");
    let root = make_root(dir.path());
    let certs = TestCerts::new(dir.path());
    let mut etags = Vec::new();
    for _ in 0..2 {
        let ports = Ports::new();
        let conf = static_site_conf(dir.path(), &ports, &certs, &root, "");
        let gw = start_gateway(dir.path(), &ports, &conf, &certs.ca_pem);
        let c = gw.raw_client();
        let mut tags = Vec::new();
        for enc in ["identity", "gzip", "br"] {
            let r = c
                .get(gw.url("/assets/app.0123abcd.js"))
                .header(header::ACCEPT_ENCODING, enc)
                .send()
                .await
                .expect("get");
            tags.push(
                r.headers()[header::ETAG]
                    .to_str()
                    .expect("etag")
                    .to_string(),
            );
        }
        etags.push(tags);
    }
    assert_eq!(etags[0], etags[1]);
}

/// Hostile paths sent raw, never normalised by a client library.
const HOSTILE: &[&str] = &[
    "/../secret.txt",
    "/../../secret.txt",
    "/%2e%2e/secret.txt",
    "/%2E%2E/secret.txt",
    "/%2e%2E/secret.txt",
    "/.%2e/secret.txt",
    "/%2e./secret.txt",
    "/..%2fsecret.txt",
    "/..%2Fsecret.txt",
    "/%2e%2e%2fsecret.txt",
    "/%2e%2e%2Fsecret.txt",
    "/assets/../../secret.txt",
    "/assets/%2e%2e/%2e%2e/secret.txt",
    "/assets/..%2f..%2fsecret.txt",
    "/%252e%252e/secret.txt",
    "/%252e%252e%252fsecret.txt",
    "/..%252fsecret.txt",
    "/..\\secret.txt",
    "/..%5csecret.txt",
    "/..%5Csecret.txt",
    "/%5c..%5csecret.txt",
    "/assets\\..\\..\\secret.txt",
    "/%2e%2e%5csecret.txt",
    "/secret.txt%00.html",
    "/index.html%00",
    "/%00",
    "/..%00/secret.txt",
    "/%c0%ae%c0%ae/secret.txt",
    "/%c0%afsecret.txt",
    "/%e0%80%ae%e0%80%ae/secret.txt",
    "/%ff%fe",
    "/.env",
    "/.git/config",
    "/%2egit/config",
    "/%2eenv",
    "/assets/../.env",
    "/.%65nv",
    "/leak.txt",
    "/./../secret.txt",
    "//../secret.txt",
    "/assets/./../../secret.txt",
    "/....//secret.txt",
    "/..;/secret.txt",
    "/%u002e%u002e/secret.txt",
    "/.well-known/../../secret.txt",
    "/.well-known/%2e%2e/%2e%2e/secret.txt",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_table_never_leaks_the_sentinel() {
    let dir = tempfile::tempdir().expect("tmp");
    let (gw, _root) = start(dir.path());
    assert!(HOSTILE.len() >= 40);
    for path in HOSTILE {
        for accept in ["*/*", "text/html"] {
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
            );
            let resp =
                raw_https(gw.https, &gw.ca_pem, req.as_bytes(), Duration::from_secs(5)).await;
            let status = raw_status(&resp);
            let text = String::from_utf8_lossy(&resp);
            assert!(!text.contains(SENTINEL), "{path}: sentinel leaked:\n{text}");
            assert!(
                status == 400 || status == 404,
                "{path} ({accept}): status {status}\n{text}"
            );
        }
    }
}
