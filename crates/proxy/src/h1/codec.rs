//! The HTTP/1.1 response codec, over a buffer: no socket, no clock, no task.
//!
//! [`parse_response_head`] takes a complete response head off the front of a buffer, and a
//! [`Decoder`] takes a response body off it piece by piece, as bytes arrive. `h1::Conn` only
//! reads from its socket into the buffer and hands over what these return, so everything a
//! misbehaving instance can send is decided here, with plain values, and is property-tested
//! (any split of the input gives the same result, random bytes never panic) and fuzzed
//! (`fuzz/`, run for a bounded time by `scripts/test`).
//!
//! It must never panic on what an instance sends, never accept a body framed two ways (the
//! response-smuggling shape), and never copy a body: data is split off the buffer as shared
//! [`Bytes`], and header values share the head's bytes.

use bytes::{Buf, Bytes, BytesMut};
use http::header::TRANSFER_ENCODING;
use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH};
use http::{StatusCode, Version};
use http_body::SizeHint;
use std::mem::MaybeUninit;

/// The longest response head taken from an instance.
pub const MAX_HEAD: usize = 64 * 1024;
/// The most header fields in a response head (hyper's client default).
pub const MAX_HEADERS: usize = 100;
/// The longest chunk-size line (with its extensions).
pub const MAX_CHUNK_LINE: usize = 4096;

/// What an instance sent that cannot be passed on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("the instance sent an invalid response head: {0}")]
    Head(httparse::Error),
    #[error("the instance sent a response head over {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("the instance switched protocols on a request that did not ask to")]
    UnexpectedSwitch,
    #[error("the instance framed its response body badly: {0}")]
    Framing(&'static str),
    #[error("the instance closed the connection {0} bytes before the end of the body")]
    Truncated(u64),
    #[error("the instance closed the connection in the middle of a chunked body")]
    TruncatedChunked,
    #[error("the instance sent an invalid chunk: {0}")]
    Chunk(&'static str),
}

/// A final response head, and how its body is read.
#[derive(Debug)]
pub struct ResponseHead {
    pub parts: http::response::Parts,
    pub body: Decoder,
    /// Whether the connection can carry another request once the body is read.
    pub keep_alive: bool,
}

/// How much of a response body is left, and how it is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoder {
    /// `Content-Length`: bytes left.
    Length(u64),
    Chunked(Chunk),
    /// Neither: the body ends when the instance closes the connection.
    UntilClose,
    Done,
}

/// Where a chunked body's decoding stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Bytes left of the current chunk.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    End,
    /// After the last chunk: trailer fields up to an empty line.
    Trailers,
}

/// What decoding the buffered bytes of a body gave.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// The next piece of the body (never empty).
    Data(Bytes),
    /// The body ended, with its trailers if it had any.
    End(Option<HeaderMap>),
    /// Nothing can be decided before more bytes arrive.
    More,
}

/// The final response head at the front of `buf`, split off it once it is all there (interim
/// 1xx heads before it are dropped); `None` while it is incomplete. `head_only`: the request
/// was a `HEAD`, so no body follows whatever the fields say.
pub fn parse_response_head(
    buf: &mut BytesMut,
    head_only: bool,
) -> Result<Option<ResponseHead>, CodecError> {
    loop {
        if buf.is_empty() {
            return Ok(None);
        }
        // Where each field's name and value sit in the head, kept so the values can share
        // the head's bytes once it is split off the buffer.
        let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            buf,
            &mut slots,
        ) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                return Err(CodecError::HeadTooLarge)
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(CodecError::Head(e)),
        };
        if len > MAX_HEAD {
            return Err(CodecError::HeadTooLarge);
        }
        let code = parsed.code.unwrap_or(0);
        if (100..200).contains(&code) {
            if code == 101 {
                return Err(CodecError::UnexpectedSwitch);
            }
            // 100 Continue, 103 Early Hints: the final answer is still to come.
            buf.advance(len);
            continue;
        }
        let status =
            StatusCode::from_u16(code).map_err(|_| CodecError::Head(httparse::Error::Status))?;
        let http10 = parsed.version == Some(0);
        let base = buf.as_ptr() as usize;
        // A head is at most MAX_HEAD bytes, so every offset fits.
        let at = |p: *const u8| (p as usize - base) as u32;
        let count = parsed.headers.len();
        for (span, h) in spans.iter_mut().zip(parsed.headers.iter()) {
            *span = (
                at(h.name.as_ptr()),
                h.name.len() as u32,
                at(h.value.as_ptr()),
                h.value.len() as u32,
            );
        }
        let head = buf.split_to(len).freeze();
        let mut headers = HeaderMap::with_capacity(count);
        for &(n, nl, v, vl) in &spans[..count] {
            let (n, nl, v, vl) = (n as usize, nl as usize, v as usize, vl as usize);
            let name = HeaderName::from_bytes(&head[n..n + nl])
                .map_err(|_| CodecError::Head(httparse::Error::HeaderName))?;
            let value = HeaderValue::from_maybe_shared(head.slice(v..v + vl))
                .map_err(|_| CodecError::Head(httparse::Error::HeaderValue))?;
            headers.append(name, value);
        }
        let (body, keep_alive) = framing(&headers, status, http10, head_only)?;
        let (mut parts, ()) = http::Response::new(()).into_parts();
        parts.status = status;
        parts.version = if http10 {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        parts.headers = headers;
        return Ok(Some(ResponseHead {
            parts,
            body,
            keep_alive,
        }));
    }
}

impl Decoder {
    /// Whether the body was read to its end.
    pub fn is_done(self) -> bool {
        matches!(self, Decoder::Done | Decoder::Length(0))
    }

    pub fn size_hint(self) -> SizeHint {
        match self {
            Decoder::Length(n) => SizeHint::with_exact(n),
            Decoder::Done => SizeHint::with_exact(0),
            Decoder::Chunked(_) | Decoder::UntilClose => SizeHint::default(),
        }
    }

    /// How many more bytes of the body are known to be coming (0: not known), so that a read
    /// can make room for them.
    pub fn wants(self) -> u64 {
        match self {
            Decoder::Length(left) | Decoder::Chunked(Chunk::Data(left)) => left,
            _ => 0,
        }
    }

    /// Takes the next piece of the body off the front of `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Step, CodecError> {
        match self {
            Decoder::Done => Ok(Step::End(None)),
            Decoder::Length(0) => {
                *self = Decoder::Done;
                Ok(Step::End(None))
            }
            Decoder::Length(left) => {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                let n = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                *left -= n as u64;
                Ok(Step::Data(buf.split_to(n).freeze()))
            }
            Decoder::UntilClose => {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                Ok(Step::Data(buf.split().freeze()))
            }
            Decoder::Chunked(chunk) => {
                let step = decode_chunked(buf, chunk)?;
                if let Step::End(_) = step {
                    *self = Decoder::Done;
                }
                Ok(step)
            }
        }
    }

    /// The instance closed the connection: whether the body ended properly there.
    pub fn at_eof(&mut self) -> Result<(), CodecError> {
        match *self {
            Decoder::UntilClose | Decoder::Done | Decoder::Length(0) => {
                *self = Decoder::Done;
                Ok(())
            }
            Decoder::Length(left) => Err(CodecError::Truncated(left)),
            Decoder::Chunked(_) => Err(CodecError::TruncatedChunked),
        }
    }
}

/// Decodes what `buf` holds of a chunked body, from `chunk` on.
fn decode_chunked(buf: &mut BytesMut, chunk: &mut Chunk) -> Result<Step, CodecError> {
    loop {
        match chunk {
            Chunk::Size => match httparse::parse_chunk_size(buf) {
                Ok(httparse::Status::Complete((used, size))) => {
                    buf.advance(used);
                    *chunk = if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    };
                }
                Ok(httparse::Status::Partial) if buf.len() > MAX_CHUNK_LINE => {
                    return Err(CodecError::Chunk("a chunk-size line over 4096 bytes"));
                }
                Ok(httparse::Status::Partial) => return Ok(Step::More),
                Err(_) => return Err(CodecError::Chunk("an invalid chunk size")),
            },
            Chunk::Data(left) => {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                let n = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                *left -= n as u64;
                if *left == 0 {
                    *chunk = Chunk::End;
                }
                return Ok(Step::Data(buf.split_to(n).freeze()));
            }
            Chunk::End => {
                if buf.len() < 2 {
                    return Ok(Step::More);
                }
                if buf[..2] != *b"\r\n" {
                    return Err(CodecError::Chunk("chunk data not followed by CRLF"));
                }
                buf.advance(2);
                *chunk = Chunk::Size;
            }
            Chunk::Trailers => {
                let mut fields = [httparse::EMPTY_HEADER; 32];
                let (used, trailers) = match httparse::parse_headers(buf, &mut fields) {
                    Ok(httparse::Status::Complete((used, fields))) => {
                        let mut trailers = HeaderMap::new();
                        for f in fields {
                            let name = HeaderName::from_bytes(f.name.as_bytes())
                                .map_err(|_| CodecError::Chunk("an invalid trailer name"))?;
                            let value = HeaderValue::from_bytes(f.value)
                                .map_err(|_| CodecError::Chunk("an invalid trailer value"))?;
                            trailers.append(name, value);
                        }
                        (used, trailers)
                    }
                    Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                        return Err(CodecError::Chunk("trailers over 64 KiB"));
                    }
                    Ok(httparse::Status::Partial) => return Ok(Step::More),
                    Err(_) => return Err(CodecError::Chunk("invalid trailer fields")),
                };
                buf.advance(used);
                return Ok(Step::End((!trailers.is_empty()).then_some(trailers)));
            }
        }
    }
}

/// How the body after a response head is framed (RFC 9112 §6.3), and whether the connection
/// can carry another request after it.
fn framing(
    headers: &HeaderMap,
    status: StatusCode,
    http10: bool,
    head_only: bool,
) -> Result<(Decoder, bool), CodecError> {
    let keep_alive = if http10 {
        connection_has(headers, "keep-alive")
    } else {
        !connection_has(headers, "close")
    };
    if head_only || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        // No body, whatever the fields say (a HEAD's `Content-Length` is the GET's).
        return Ok((Decoder::Done, keep_alive));
    }
    if headers.contains_key(TRANSFER_ENCODING) {
        // Either could be the one a cache or the client believes: the smuggling shape.
        if headers.contains_key(CONTENT_LENGTH) {
            return Err(CodecError::Framing(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        if http10 {
            return Err(CodecError::Framing(
                "Transfer-Encoding in an HTTP/1.0 response",
            ));
        }
        let last = headers
            .get_all(TRANSFER_ENCODING)
            .iter()
            .next_back()
            .and_then(|v| v.as_bytes().rsplit(|&b| b == b',').next())
            .map(<[u8]>::trim_ascii);
        return Ok(match last {
            Some(c) if c.eq_ignore_ascii_case(b"chunked") => {
                (Decoder::Chunked(Chunk::Size), keep_alive)
            }
            // Another coding last: the body runs until the instance closes.
            _ => (Decoder::UntilClose, false),
        });
    }
    Ok(match content_length(headers)? {
        Some(n) => (Decoder::Length(n), keep_alive),
        None => (Decoder::UntilClose, false),
    })
}

/// Whether `Connection` lists `token`.
pub(crate) fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// The body length `Content-Length` gives: every value (and list item) the same number.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, CodecError> {
    let mut length = None;
    for item in headers
        .get_all(CONTENT_LENGTH)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
    {
        let digits = item.trim_ascii();
        let n = std::str::from_utf8(digits)
            .ok()
            .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| d.parse::<u64>().ok())
            .ok_or(CodecError::Framing("an invalid Content-Length"))?;
        if length.is_some_and(|l| l != n) {
            return Err(CodecError::Framing("conflicting Content-Length values"));
        }
        length = Some(n);
    }
    Ok(length)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What a whole response decoded to.
    #[derive(Debug, PartialEq)]
    struct Decoded {
        status: StatusCode,
        headers: HeaderMap,
        body: Vec<u8>,
        trailers: Option<HeaderMap>,
        keep_alive: bool,
    }

    /// Feeds `wire` to the codec in pieces cut at `cuts`, as reads off a socket would, and
    /// then closes the connection.
    fn drive(wire: &[u8], cuts: &[usize]) -> Result<Decoded, CodecError> {
        let mut cuts: Vec<usize> = cuts.iter().map(|&c| c.min(wire.len())).collect();
        cuts.sort_unstable();
        cuts.push(wire.len());
        let mut pieces = Vec::new();
        let mut from = 0;
        for c in cuts {
            pieces.push(&wire[from..c]);
            from = c;
        }
        let mut buf = BytesMut::new();
        let mut pieces = pieces.into_iter();
        let head = loop {
            if let Some(head) = parse_response_head(&mut buf, false)? {
                break head;
            }
            match pieces.next() {
                Some(p) => buf.extend_from_slice(p),
                None => return Err(CodecError::Head(httparse::Error::Token)),
            }
        };
        let mut dec = head.body;
        let mut body = Vec::new();
        let trailers = loop {
            match dec.decode(&mut buf)? {
                Step::Data(d) => {
                    assert!(!d.is_empty(), "an empty data step");
                    body.extend_from_slice(&d);
                }
                Step::End(t) => break t,
                Step::More => match pieces.next() {
                    Some(p) => buf.extend_from_slice(p),
                    None => {
                        dec.at_eof()?;
                        break None;
                    }
                },
            }
        };
        Ok(Decoded {
            status: head.parts.status,
            headers: head.parts.headers,
            body,
            trailers,
            keep_alive: head.keep_alive,
        })
    }

    fn chunked(body: &[u8], sizes: &[usize], trailers: &[(String, String)]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = body;
        let mut sizes = sizes.iter().cycle();
        while !rest.is_empty() {
            let n = (*sizes.next().unwrap_or(&1)).clamp(1, rest.len());
            out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
            out.extend_from_slice(&rest[..n]);
            out.extend_from_slice(b"\r\n");
            rest = &rest[n..];
        }
        out.extend_from_slice(b"0\r\n");
        for (k, v) in trailers {
            out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    fn field() -> impl Strategy<Value = (String, String)> {
        ("x-[a-z0-9]{1,12}", "[ -~]{0,20}").prop_map(|(k, v)| (k, v.trim().to_string()))
    }

    /// A valid response: a head (maybe after a 100 Continue), framed by length or chunks.
    fn response() -> impl Strategy<Value = (Vec<u8>, Decoded)> {
        (
            200u16..600,
            prop::collection::vec(field(), 0..8),
            prop::collection::vec(any::<u8>(), 0..600),
            any::<bool>(),
            any::<bool>(),
            prop::collection::vec(1usize..64, 1..6),
            prop::collection::vec(field(), 0..3),
        )
            .prop_filter("no body by status", |(s, ..)| *s != 204 && *s != 304)
            .prop_map(
                |(code, fields, body, chunks, interim, sizes, trailer_fields)| {
                    let mut wire = Vec::new();
                    if interim {
                        wire.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                    }
                    wire.extend_from_slice(format!("HTTP/1.1 {code} Whatever\r\n").as_bytes());
                    let mut headers = HeaderMap::new();
                    for (k, v) in &fields {
                        wire.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
                        headers.append(
                            HeaderName::from_bytes(k.as_bytes()).unwrap(),
                            HeaderValue::from_str(v).unwrap(),
                        );
                    }
                    let framing = if chunks {
                        ("transfer-encoding", "chunked".to_string())
                    } else {
                        ("content-length", body.len().to_string())
                    };
                    wire.extend_from_slice(
                        format!("{}: {}\r\n\r\n", framing.0, framing.1).as_bytes(),
                    );
                    headers.append(framing.0, HeaderValue::from_str(&framing.1).unwrap());
                    let mut trailers = None;
                    if chunks {
                        wire.extend_from_slice(&chunked(&body, &sizes, &trailer_fields));
                        let mut t = HeaderMap::new();
                        for (k, v) in &trailer_fields {
                            t.append(
                                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                                HeaderValue::from_str(v).unwrap(),
                            );
                        }
                        trailers = (!t.is_empty()).then_some(t);
                    } else {
                        wire.extend_from_slice(&body);
                    }
                    let status = StatusCode::from_u16(code).unwrap();
                    let decoded = Decoded {
                        status,
                        headers,
                        body,
                        trailers,
                        keep_alive: true,
                    };
                    (wire, decoded)
                },
            )
    }

    proptest! {
        /// Round trip: what was encoded is what is decoded, whole or cut anywhere.
        #[test]
        fn any_split_of_a_valid_response_decodes_the_same(
            (wire, expected) in response(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let whole = drive(&wire, &[]).unwrap();
            prop_assert_eq!(&whole, &expected);
            let cuts: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
            prop_assert_eq!(drive(&wire, &cuts).unwrap(), expected);
        }

        /// Whatever an instance sends, the codec answers (never panics), and the answer does
        /// not depend on how the bytes were cut into reads.
        #[test]
        fn random_bytes_never_panic_and_cuts_do_not_matter(
            wire in prop::collection::vec(any::<u8>(), 0..400),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let cuts: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
            let whole = drive(&wire, &[]);
            prop_assert_eq!(drive(&wire, &cuts), whole);
        }

        /// Garbage after a valid head, read as a chunked body: no panic, and the same answer
        /// whatever the cuts.
        #[test]
        fn random_chunked_bodies_never_panic(
            body in prop::collection::vec(
                prop_oneof![Just(b'0'), Just(b'a'), Just(b'\r'), Just(b'\n'), Just(b';'), any::<u8>()],
                0..300,
            ),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let mut wire = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
            wire.extend_from_slice(&body);
            let cuts: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
            prop_assert_eq!(drive(&wire, &cuts), drive(&wire, &[]));
        }
    }

    #[test]
    fn bodies_framed_two_ways_are_refused() {
        let wire = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n";
        assert_eq!(
            drive(wire, &[]).unwrap_err(),
            CodecError::Framing("both Content-Length and Transfer-Encoding")
        );
    }

    #[test]
    fn a_head_that_never_ends_is_refused_once_over_the_limit() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\n"[..]);
        while buf.len() <= MAX_HEAD {
            buf.extend_from_slice(b"x-a: b\r\n");
            match parse_response_head(&mut buf, false) {
                Ok(None) if buf.len() <= MAX_HEAD => {}
                Err(CodecError::HeadTooLarge) => {
                    assert!(buf.len() > MAX_HEAD);
                    return;
                }
                // httparse counts fields before bytes: over MAX_HEADERS first.
                Err(CodecError::Head(httparse::Error::TooManyHeaders)) => return,
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn a_close_cuts_a_length_body_short_but_ends_an_until_close_one() {
        let mut dec = Decoder::Length(5);
        assert_eq!(dec.at_eof(), Err(CodecError::Truncated(5)));
        let mut dec = Decoder::UntilClose;
        assert_eq!(dec.at_eof(), Ok(()));
        assert_eq!(dec, Decoder::Done);
        let mut dec = Decoder::Chunked(Chunk::Data(3));
        assert_eq!(dec.at_eof(), Err(CodecError::TruncatedChunked));
    }
}
