//! What the fuzz targets share: a response fed to the codec as reads off a socket would be.
//!
//! Each target checks more than "no panic": the answer must not depend on where the bytes
//! were cut into reads, which is what a connection's reads do to a response.

use bytes::BytesMut;
use cutover_proxy::h1_codec::{parse_response_head, CodecError, Decoder, Step};

/// What a whole response decoded to: the head's debug form, the body, and the trailers'.
#[derive(Debug, PartialEq)]
pub struct Decoded {
    pub head: String,
    pub body: Vec<u8>,
    pub trailers: Option<String>,
}

/// Feeds `pieces` in order, parsing a head first unless `decoder` is given, then the body
/// to its end or to the close after the last piece.
pub fn drive(
    pieces: &[&[u8]],
    head_only: bool,
    decoder: Option<Decoder>,
) -> Result<Option<Decoded>, CodecError> {
    let mut buf = BytesMut::new();
    let mut pieces = pieces.iter();
    let (head, mut dec) = match decoder {
        Some(dec) => (String::new(), dec),
        None => loop {
            if let Some(h) = parse_response_head(&mut buf, head_only)? {
                break (format!("{:?} {}", h.parts, h.keep_alive), h.body);
            }
            match pieces.next() {
                Some(p) => buf.extend_from_slice(p),
                // Closed before a whole head.
                None => return Ok(None),
            }
        },
    };
    let mut body = Vec::new();
    let trailers = loop {
        match dec.decode(&mut buf)? {
            Step::Data(d) => {
                assert!(!d.is_empty(), "the decoder returned an empty piece");
                body.extend_from_slice(&d);
            }
            Step::End(t) => break t.map(|t| format!("{t:?}")),
            Step::More => match pieces.next() {
                Some(p) => buf.extend_from_slice(p),
                None => {
                    dec.at_eof()?;
                    break None;
                }
            },
        }
    };
    Ok(Some(Decoded {
        head,
        body,
        trailers,
    }))
}

/// `data` whole, and cut in two at the position its first two bytes give (the rest is the
/// input): both must decode the same.
pub fn check_cuts(data: &[u8], head_only: bool, decoder: Option<Decoder>) {
    let [a, b, input @ ..] = data else {
        return;
    };
    let at = usize::from(u16::from_le_bytes([*a, *b])) % (input.len() + 1);
    let whole = drive(&[input], head_only, decoder);
    let cut = drive(&[&input[..at], &input[at..]], head_only, decoder);
    assert_eq!(whole, cut, "cutting the input at {at} changed the answer");
}
