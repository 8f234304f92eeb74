//! Compression of proxied responses (gzip, brotli, zstd), as our own pingora downstream module.
//!
//! pingora 0.9.1's `ResponseCompression` module ignores q-values (`gzip;q=0` still gets gzip)
//! and never finishes its brotli stream (it flushes instead of closing, so decoders fail at
//! the end). This module replaces it: `response_filter` negotiates with q-values and rewrites
//! the head ([`start`]), the module encodes the body chunks and finishes the stream when the
//! response ends — even when the upstream's last chunk carried no end flag
//! (`response_done_filter`). The same module also swaps an upstream error body for the
//! gateway's own page when a route asks for it ([`replace_body`]).
//!
//! For every other response the module is one idle enum per request: no parsing, no buffers.

use crate::http::conneg::Encoding;
use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::modules::http::{HttpModule, HttpModuleBuilder, Module};
use pingora_core::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;
use std::io::Write;

/// A streaming encoder writing into its own buffer, drained after each chunk.
enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl Encoder {
    fn new(encoding: Encoding, level: u32) -> Option<Self> {
        Some(match encoding {
            Encoding::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(level.clamp(1, 9)),
            )),
            // 4 KiB internal buffer, 2^19 window: nginx's brotli module defaults.
            Encoding::Brotli => Encoder::Brotli(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                4096,
                level.clamp(1, 11),
                19,
            ))),
            Encoding::Zstd => Encoder::Zstd(
                zstd::stream::write::Encoder::new(Vec::new(), level.clamp(1, 19) as i32).ok()?,
            ),
            Encoding::Identity => return None,
        })
    }

    /// Feeds `data`; returns what the encoder produced so far.
    fn write(&mut self, data: &[u8]) -> std::io::Result<Vec<u8>> {
        Ok(match self {
            Encoder::Gzip(e) => {
                e.write_all(data)?;
                std::mem::take(e.get_mut())
            }
            Encoder::Brotli(e) => {
                e.write_all(data)?;
                std::mem::take(e.get_mut())
            }
            Encoder::Zstd(e) => {
                e.write_all(data)?;
                std::mem::take(e.get_mut())
            }
        })
    }

    /// Ends the stream (brotli's final block, gzip's trailer, zstd's epilogue).
    fn finish(self) -> std::io::Result<Vec<u8>> {
        match self {
            Encoder::Gzip(e) => e.finish(),
            Encoder::Brotli(e) => Ok(e.into_inner()),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

/// What the module does with the current response's body.
#[derive(Default)]
enum State {
    /// Pass the body through (every response unless armed).
    #[default]
    Idle,
    /// Encode each chunk.
    Encoding(Encoder),
    /// Drop the upstream body and send this instead, once.
    Replacing(Option<Bytes>),
}

/// The per-request module context.
#[derive(Default)]
pub struct EdgeBody {
    state: State,
}

fn compression_error(e: std::io::Error) -> Box<Error> {
    Error::because(ErrorType::InternalError, "response compression", e)
}

impl EdgeBody {
    fn on_body(&mut self, body: &mut Option<Bytes>, end: bool) -> Result<()> {
        match &mut self.state {
            State::Idle => {}
            State::Encoding(enc) => {
                let mut out = match body {
                    Some(b) if !b.is_empty() => enc.write(b).map_err(compression_error)?,
                    _ => Vec::new(),
                };
                if end {
                    if let State::Encoding(enc) = std::mem::take(&mut self.state) {
                        out.extend_from_slice(&enc.finish().map_err(compression_error)?);
                    }
                }
                // Nothing produced yet (the encoder is buffering): send nothing this round.
                *body = (!out.is_empty()).then(|| Bytes::from(out));
            }
            State::Replacing(page) => {
                *body = if end { page.take() } else { None };
            }
        }
        Ok(())
    }

    fn on_done(&mut self) -> Result<Option<Bytes>> {
        Ok(match std::mem::take(&mut self.state) {
            State::Idle => None,
            State::Encoding(enc) => Some(Bytes::from(enc.finish().map_err(compression_error)?)),
            State::Replacing(page) => page,
        })
    }
}

#[async_trait]
impl HttpModule for EdgeBody {
    fn response_body_filter(&mut self, body: &mut Option<Bytes>, end: bool) -> Result<()> {
        self.on_body(body, end)
    }

    fn response_done_filter(&mut self) -> Result<Option<Bytes>> {
        self.on_done()
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

/// Registers [`EdgeBody`] with the proxy service (in place of pingora's compression module).
pub struct EdgeBodyBuilder;

impl HttpModuleBuilder for EdgeBodyBuilder {
    fn init(&self) -> Module {
        Box::new(EdgeBody::default())
    }
    fn order(&self) -> i16 {
        // Last among response filters: it sees the final bytes.
        i16::MIN / 2
    }
}

/// Chooses the coding of a compressible response from `Accept-Encoding` (q-values honoured;
/// on equal q: zstd, then brotli, then gzip — cheapest CPU for the ratio first). `None`:
/// send identity (no header, `identity` preferred, or nothing acceptable).
pub fn negotiate(accept: Option<&str>) -> Option<Encoding> {
    let accept = accept?;
    crate::http::conneg::negotiate_among(
        accept,
        &[Encoding::Zstd, Encoding::Brotli, Encoding::Gzip],
    )
    .filter(|e| *e != Encoding::Identity)
}

/// Arms compression of this response: rewrites its head for `encoding` and installs the
/// encoder. The caller has checked that the response qualifies.
pub fn start(
    session: &mut pingora_proxy::Session,
    resp: &mut ResponseHeader,
    encoding: Encoding,
    level: u32,
) {
    let Some(m) = session.downstream_modules_ctx.get_mut::<EdgeBody>() else {
        return;
    };
    let Some(enc) = Encoder::new(encoding, level) else {
        return;
    };
    let _ = resp.insert_header(
        http::header::CONTENT_ENCODING,
        http::HeaderValue::from_static(encoding.as_str()),
    );
    resp.remove_header(&http::header::CONTENT_LENGTH);
    // Ranges of the identity bytes mean nothing for the encoded stream.
    resp.remove_header(&http::header::ACCEPT_RANGES);
    // pingora turns this into chunked framing on HTTP/1.1 and drops it on HTTP/2.
    let _ = resp.insert_header(
        http::header::TRANSFER_ENCODING,
        http::HeaderValue::from_static("chunked"),
    );
    // Different bytes: a strong validator becomes weak (as nginx's gzip filter does).
    if let Some(etag) = resp.headers.get(http::header::ETAG).cloned() {
        let b = etag.as_bytes();
        if b.starts_with(b"\"") {
            if let Ok(weak) = http::HeaderValue::from_bytes(&[b"W/", b].concat()) {
                let _ = resp.insert_header(http::header::ETAG, weak);
            }
        } else if !b.starts_with(b"W/") {
            resp.remove_header(&http::header::ETAG);
        }
    }
    m.state = State::Encoding(enc);
}

/// Adds `Vary: Accept-Encoding` unless the response already varies on it (or on `*`).
pub fn add_vary(resp: &mut ResponseHeader) {
    let varies = resp.headers.get_all(http::header::VARY).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',').any(|t| {
                let t = t.trim();
                t == "*" || t.eq_ignore_ascii_case("accept-encoding")
            })
        })
    });
    if !varies {
        let _ = resp.append_header(
            http::header::VARY,
            http::HeaderValue::from_static("Accept-Encoding"),
        );
    }
}

/// Replaces the body of this response with `page` (the head was rewritten by the caller).
pub fn replace_body(session: &mut pingora_proxy::Session, page: Bytes) {
    if let Some(m) = session.downstream_modules_ctx.get_mut::<EdgeBody>() {
        m.state = State::Replacing(Some(page));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn run(encoding: Encoding, chunks: &[&[u8]], end_in_body: bool) -> Vec<u8> {
        let mut m = EdgeBody {
            state: State::Encoding(Encoder::new(encoding, 4).expect("encoder")),
        };
        let mut out = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            let mut b = Some(Bytes::copy_from_slice(c));
            let end = end_in_body && i + 1 == chunks.len();
            m.on_body(&mut b, end).expect("encode");
            out.extend_from_slice(b.as_deref().unwrap_or_default());
        }
        if let Some(rest) = m.on_done().expect("done") {
            out.extend_from_slice(&rest);
        }
        out
    }

    #[test]
    fn every_coding_round_trips_whether_or_not_the_last_chunk_says_end() {
        let text: Vec<u8> = (0..20_000u32)
            .flat_map(|i| (i % 97).to_le_bytes())
            .collect();
        let chunks: Vec<&[u8]> = text.chunks(3000).collect();
        for end_in_body in [true, false] {
            let mut out = Vec::new();
            let gz = run(Encoding::Gzip, &chunks, end_in_body);
            flate2::read::GzDecoder::new(&gz[..])
                .read_to_end(&mut out)
                .expect("gzip");
            assert_eq!(out, text);
            out.clear();
            let br = run(Encoding::Brotli, &chunks, end_in_body);
            brotli::Decompressor::new(&br[..], 4096)
                .read_to_end(&mut out)
                .expect("brotli ends with a valid final block");
            assert_eq!(out, text);
            let zs = run(Encoding::Zstd, &chunks, end_in_body);
            assert_eq!(zstd::decode_all(&zs[..]).expect("zstd"), text);
        }
    }

    #[test]
    fn negotiation_honours_q_values() {
        assert_eq!(negotiate(None), None);
        assert_eq!(negotiate(Some("gzip")), Some(Encoding::Gzip));
        assert_eq!(negotiate(Some("gzip;q=0, br")), Some(Encoding::Brotli));
        assert_eq!(negotiate(Some("gzip, br;q=0.5")), Some(Encoding::Gzip));
        assert_eq!(negotiate(Some("gzip, br, zstd")), Some(Encoding::Zstd));
        assert_eq!(negotiate(Some("identity")), None);
        assert_eq!(negotiate(Some("gzip;q=0.3, identity")), None);
        assert_eq!(negotiate(Some("*")), Some(Encoding::Zstd));
        assert_eq!(negotiate(Some("deflate")), None);
        assert_eq!(negotiate(Some("gzip;q=0")), None);
    }

    #[test]
    fn replaced_bodies_are_sent_once() {
        let mut m = EdgeBody {
            state: State::Replacing(Some(Bytes::from_static(b"page"))),
        };
        let mut b = Some(Bytes::from_static(b"upstream secret"));
        m.on_body(&mut b, false).expect("ok");
        assert_eq!(b, None);
        let mut b = Some(Bytes::from_static(b"more"));
        m.on_body(&mut b, true).expect("ok");
        assert_eq!(b.as_deref(), Some(&b"page"[..]));
        assert_eq!(m.on_done().expect("ok"), None);
    }
}
