//! RFC 6455 §5.2 frames, sans IO: what the relay needs to know of a frame to pass it on
//! faithfully (DESIGN.md invariant 12).
//!
//! A frame is cut out of the bytes read so far as it arrived — header, mask and payload
//! untouched — so that data frames are forwarded byte for byte: the RSV bits and the
//! compressed payload of permessage-deflate (RFC 7692), and the client's masking key, reach the
//! other side exactly as they were sent. Only the header is interpreted: the opcode (control
//! frames are the relay's to act on), FIN (a drain stops client frames at a message boundary)
//! and the length. Payloads are unmasked only for cutover's own inspection of a close frame.
//!
//! What this module refuses is what no WebSocket peer may send: a reserved opcode (no
//! extension cutover relays defines one), a control frame that is fragmented or longer than
//! 125 bytes, a 64-bit length with its top bit set, a continuation without a message or a new
//! message inside one — and a frame longer than the relay's limit.

use bytes::{Bytes, BytesMut};

/// The largest frame the relay holds in memory: tungstenite's default, which the relay used
/// before it parsed frames itself. A longer message is still relayed when it is fragmented.
pub(crate) const MAX_FRAME: u64 = 16 << 20;

/// Frame opcodes (RFC 6455 §5.2).
pub(crate) mod opcode {
    pub(crate) const CONTINUATION: u8 = 0x0;
    pub(crate) const TEXT: u8 = 0x1;
    pub(crate) const BINARY: u8 = 0x2;
    pub(crate) const CLOSE: u8 = 0x8;
    pub(crate) const PING: u8 = 0x9;
    pub(crate) const PONG: u8 = 0xA;
}

/// A frame header as it was on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) fin: bool,
    /// RSV1, RSV2, RSV3 as the three low bits (RSV1 = `0b100`, permessage-deflate's bit).
    pub(crate) rsv: u8,
    pub(crate) opcode: u8,
    pub(crate) mask: Option<[u8; 4]>,
    pub(crate) len: u64,
}

impl Header {
    /// Close, ping, pong: never fragmented, never compressed.
    pub(crate) fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }

    /// The bytes this header takes on the wire (minimal length encoding).
    pub(crate) fn encoded_len(&self) -> usize {
        let len = match self.len {
            0..=125 => 0,
            126..=0xFFFF => 2,
            _ => 8,
        };
        2 + len + if self.mask.is_some() { 4 } else { 0 }
    }

    /// Writes the header with the minimal length encoding.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.push(u8::from(self.fin) << 7 | (self.rsv & 0b111) << 4 | (self.opcode & 0xF));
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        match self.len {
            len @ 0..=125 => out.push(mask_bit | len as u8),
            len @ 126..=0xFFFF => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&len.to_be_bytes());
            }
        }
        if let Some(mask) = self.mask {
            out.extend_from_slice(&mask);
        }
    }
}

/// What no peer may send (RFC 6455 §5), or what the relay will not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("reserved opcode {0:#x} (no extension cutover relays defines one)")]
    ReservedOpcode(u8),
    #[error("control frame (opcode {opcode:#x}) with a {len}-byte payload; at most 125 allowed")]
    ControlTooLong { opcode: u8, len: u64 },
    #[error("fragmented control frame (opcode {0:#x})")]
    FragmentedControl(u8),
    #[error("64-bit payload length with its most significant bit set")]
    LengthTooLong,
    #[error(
        "a {len}-byte frame; the relay holds frames up to {max} bytes (fragment larger messages)"
    )]
    TooLarge { len: u64, max: u64 },
    #[error("continuation frame outside a fragmented message")]
    UnexpectedContinuation,
    #[error("new data frame (opcode {0:#x}) inside a fragmented message")]
    UnfinishedMessage(u8),
}

/// Parses the header at the start of `buf`: `None` while it is incomplete, else the header
/// and how many bytes it took.
pub(crate) fn parse_header(buf: &[u8]) -> Result<Option<(Header, usize)>, FrameError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    let fin = b0 & 0x80 != 0;
    let rsv = (b0 >> 4) & 0b111;
    let opcode = b0 & 0xF;
    if !matches!(
        opcode,
        opcode::CONTINUATION
            | opcode::TEXT
            | opcode::BINARY
            | opcode::CLOSE
            | opcode::PING
            | opcode::PONG
    ) {
        return Err(FrameError::ReservedOpcode(opcode));
    }
    let masked = b1 & 0x80 != 0;
    let (len, mut at) = match b1 & 0x7F {
        126 => {
            let Some(b) = buf.get(2..4) else {
                return Ok(None);
            };
            (u64::from(u16::from_be_bytes([b[0], b[1]])), 4)
        }
        127 => {
            let Some(b) = buf.get(2..10) else {
                return Ok(None);
            };
            let mut raw = [0u8; 8];
            raw.copy_from_slice(b);
            let len = u64::from_be_bytes(raw);
            if len >> 63 != 0 {
                return Err(FrameError::LengthTooLong);
            }
            (len, 10)
        }
        len => (u64::from(len), 2),
    };
    let header = Header {
        fin,
        rsv,
        opcode,
        mask: None,
        len,
    };
    if header.is_control() {
        if !fin {
            return Err(FrameError::FragmentedControl(opcode));
        }
        if len > 125 {
            return Err(FrameError::ControlTooLong { opcode, len });
        }
    }
    let mask = if masked {
        let Some(b) = buf.get(at..at + 4) else {
            return Ok(None);
        };
        at += 4;
        Some([b[0], b[1], b[2], b[3]])
    } else {
        None
    };
    Ok(Some((Header { mask, ..header }, at)))
}

/// One whole frame: its header and the bytes it came in, header included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frame {
    pub(crate) header: Header,
    /// The frame exactly as received.
    pub(crate) raw: Bytes,
    /// Where the payload starts in `raw`.
    payload_at: usize,
}

impl Frame {
    /// The payload, unmasked.
    pub(crate) fn payload(&self) -> Vec<u8> {
        let mut p = self.raw[self.payload_at..].to_vec();
        if let Some(mask) = self.header.mask {
            apply_mask(&mut p, mask);
        }
        p
    }

    /// A close frame's status code, when it carries one.
    pub(crate) fn close_code(&self) -> Option<u16> {
        if self.header.opcode != opcode::CLOSE {
            return None;
        }
        match *self.payload() {
            [a, b, ..] => Some(u16::from_be_bytes([a, b])),
            _ => None,
        }
    }
}

/// Cuts the next whole frame off the front of `buf`; `None` until one is complete (what is
/// there stays in `buf`, so reading more and calling again is all a caller does).
pub(crate) fn decode(buf: &mut BytesMut, max: u64) -> Result<Option<Frame>, FrameError> {
    let Some((header, header_len)) = parse_header(buf)? else {
        return Ok(None);
    };
    if header.len > max {
        return Err(FrameError::TooLarge {
            len: header.len,
            max,
        });
    }
    // Fits in usize: at most `max`, which is far below it.
    let total = header_len + header.len as usize;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let raw = buf.split_to(total).freeze();
    Ok(Some(Frame {
        header,
        raw,
        payload_at: header_len,
    }))
}

/// Where a data frame stands in its message; tracks fragmentation in one direction.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Messages {
    inside: bool,
}

impl Messages {
    /// Whether the last data frame seen ended its message (nothing is half-sent).
    pub(crate) fn at_boundary(&self) -> bool {
        !self.inside
    }

    /// Takes the next frame's header into account: control frames may come between the
    /// fragments of a message and change nothing.
    pub(crate) fn observe(&mut self, h: &Header) -> Result<(), FrameError> {
        if h.is_control() {
            return Ok(());
        }
        match (h.opcode == opcode::CONTINUATION, self.inside) {
            (true, false) => return Err(FrameError::UnexpectedContinuation),
            (false, true) => return Err(FrameError::UnfinishedMessage(h.opcode)),
            _ => {}
        }
        self.inside = !h.fin;
        Ok(())
    }
}

/// XORs `data` with the masking key (RFC 6455 §5.3); its own inverse.
pub(crate) fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

/// A close frame of cutover's own: a control frame, so never compressed (RSV bits clear).
/// `mask` is required toward an instance (cutover is its client) and absent toward a client.
/// The reason is cut (at a character boundary) to fit the 125-byte control payload.
pub(crate) fn close_frame(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Bytes {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    let header = Header {
        fin: true,
        rsv: 0,
        opcode: opcode::CLOSE,
        mask,
        len: payload.len() as u64,
    };
    let mut out = Vec::with_capacity(header.encoded_len() + payload.len());
    header.encode(&mut out);
    if let Some(mask) = mask {
        apply_mask(&mut payload, mask);
    }
    out.extend_from_slice(&payload);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame_bytes(h: Header, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        h.encode(&mut out);
        let mut p = payload.to_vec();
        if let Some(m) = h.mask {
            apply_mask(&mut p, m);
        }
        out.extend_from_slice(&p);
        out
    }

    #[test]
    fn a_compressed_masked_text_frame_is_cut_out_untouched() {
        // "Hello" compressed by permessage-deflate (RFC 7692 §7.2.3.1), as a client sends it:
        // RSV1 set, masked.
        let wire = [
            0xc1, 0x87, 0x37, 0xfa, 0x21, 0x3d, 0xc5, 0xb2, 0xec, 0xf4, 0xfe, 0xfd, 0x21,
        ];
        let mut buf = BytesMut::from(&wire[..]);
        buf.extend_from_slice(&[0x89]); // the start of the next frame stays
        let f = decode(&mut buf, MAX_FRAME).unwrap().unwrap();
        assert_eq!(&f.raw[..], &wire[..]);
        assert_eq!(&buf[..], &[0x89]);
        assert!(f.header.fin);
        assert_eq!(f.header.rsv, 0b100);
        assert_eq!(f.header.opcode, opcode::TEXT);
        assert_eq!(f.header.mask, Some([0x37, 0xfa, 0x21, 0x3d]));
        assert_eq!(f.payload(), [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]);
    }

    #[test]
    fn incomplete_input_asks_for_more_and_keeps_what_it_has() {
        let wire = frame_bytes(
            Header {
                fin: true,
                rsv: 0,
                opcode: opcode::BINARY,
                mask: Some([1, 2, 3, 4]),
                len: 70_000,
            },
            &vec![7u8; 70_000],
        );
        let mut buf = BytesMut::new();
        for chunk in wire.chunks(4096) {
            assert_eq!(decode(&mut buf, MAX_FRAME).unwrap(), None);
            buf.extend_from_slice(chunk);
        }
        let f = decode(&mut buf, MAX_FRAME).unwrap().unwrap();
        assert_eq!(f.header.len, 70_000);
        assert_eq!(f.payload(), vec![7u8; 70_000]);
        assert!(buf.is_empty());
    }

    #[test]
    fn what_no_peer_may_send_is_an_error() {
        let cases: [(&[u8], FrameError); 5] = [
            (&[0x83, 0x00], FrameError::ReservedOpcode(3)),
            (&[0x8b, 0x00], FrameError::ReservedOpcode(0xb)),
            (&[0x09, 0x00], FrameError::FragmentedControl(opcode::PING)),
            (
                &[0x88, 0x7e, 0x00, 0x7e],
                FrameError::ControlTooLong {
                    opcode: opcode::CLOSE,
                    len: 126,
                },
            ),
            (
                &[0x82, 0x7f, 0x80, 0, 0, 0, 0, 0, 0, 0],
                FrameError::LengthTooLong,
            ),
        ];
        for (wire, err) in cases {
            assert_eq!(parse_header(wire), Err(err.clone()), "{wire:x?}");
        }
        let mut big = BytesMut::from(&[0x82, 0x7f, 0, 0, 0, 0, 0x01, 0, 0, 1][..]);
        assert_eq!(
            decode(&mut big, MAX_FRAME),
            Err(FrameError::TooLarge {
                len: (16 << 20) + 1,
                max: MAX_FRAME
            })
        );
    }

    #[test]
    fn messages_track_fragments_around_control_frames() {
        let h = |fin, opcode| Header {
            fin,
            rsv: 0,
            opcode,
            mask: None,
            len: 0,
        };
        let mut m = Messages::default();
        assert!(m.at_boundary());
        m.observe(&h(false, opcode::TEXT)).unwrap();
        assert!(!m.at_boundary());
        m.observe(&h(true, opcode::PING)).unwrap();
        assert!(!m.at_boundary());
        assert_eq!(
            m.observe(&h(true, opcode::BINARY)),
            Err(FrameError::UnfinishedMessage(opcode::BINARY))
        );
        m.observe(&h(false, opcode::CONTINUATION)).unwrap();
        m.observe(&h(true, opcode::CONTINUATION)).unwrap();
        assert!(m.at_boundary());
        assert_eq!(
            m.observe(&h(true, opcode::CONTINUATION)),
            Err(FrameError::UnexpectedContinuation)
        );
    }

    #[test]
    fn cutovers_close_frames_are_plain_control_frames() {
        let to_client = close_frame(1012, "cutover: instance draining", None);
        let mut buf = BytesMut::from(&to_client[..]);
        let f = decode(&mut buf, MAX_FRAME).unwrap().unwrap();
        assert_eq!((f.header.fin, f.header.rsv), (true, 0));
        assert_eq!(f.header.mask, None);
        assert_eq!(f.close_code(), Some(1012));
        assert_eq!(&f.payload()[2..], b"cutover: instance draining");

        let to_app = close_frame(1001, &"é".repeat(100), Some([9, 8, 7, 6]));
        let mut buf = BytesMut::from(&to_app[..]);
        let f = decode(&mut buf, MAX_FRAME).unwrap().unwrap();
        assert_eq!(f.header.mask, Some([9, 8, 7, 6]));
        assert_eq!(f.close_code(), Some(1001));
        let reason = String::from_utf8(f.payload()[2..].to_vec()).expect("cut at a boundary");
        assert_eq!(reason.len(), 122);
        assert!(f.header.len <= 125);
    }

    fn header() -> impl Strategy<Value = Header> {
        let data = (
            any::<bool>(),
            0u8..8,
            prop::sample::select(vec![opcode::CONTINUATION, opcode::TEXT, opcode::BINARY]),
            prop_oneof![0u64..126, 126u64..=0xFFFF, 0x1_0000u64..0x2_0000],
        );
        let control = (
            Just(true),
            0u8..8,
            prop::sample::select(vec![opcode::CLOSE, opcode::PING, opcode::PONG]),
            0u64..126,
        );
        (prop_oneof![data, control], any::<Option<[u8; 4]>>()).prop_map(
            |((fin, rsv, opcode, len), mask)| Header {
                fin,
                rsv,
                opcode,
                mask,
                len,
            },
        )
    }

    proptest! {
        /// Any sequence of valid frames, split anywhere across reads, comes out as the same
        /// frames with the same bytes: the relay forwards what it was sent, nothing else.
        #[test]
        fn frames_survive_any_split_byte_for_byte(
            headers in prop::collection::vec(header(), 1..6),
            cuts in prop::collection::vec(1usize..5000, 0..20),
            seed in any::<u8>(),
        ) {
            let frames: Vec<Vec<u8>> = headers
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    let payload: Vec<u8> = (0..h.len).map(|j| seed ^ (i as u8) ^ (j as u8)).collect();
                    frame_bytes(*h, &payload)
                })
                .collect();
            let wire: Vec<u8> = frames.concat();
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            let mut at = 0;
            let mut cuts = cuts.into_iter();
            while at < wire.len() {
                let n = cuts.next().unwrap_or(wire.len()).min(wire.len() - at);
                buf.extend_from_slice(&wire[at..at + n]);
                at += n;
                while let Some(f) = decode(&mut buf, MAX_FRAME).unwrap() {
                    out.push(f);
                }
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(out.len(), frames.len());
            for ((f, bytes), h) in out.iter().zip(&frames).zip(&headers) {
                prop_assert_eq!(&f.raw[..], &bytes[..]);
                prop_assert_eq!(f.header, *h);
                prop_assert_eq!(f.header.encoded_len() + h.len as usize, bytes.len());
            }
        }

        /// Garbage never panics the parser: it is a frame, a wait for more, or an error.
        #[test]
        fn arbitrary_bytes_never_panic(wire in prop::collection::vec(any::<u8>(), 0..300)) {
            let mut buf = BytesMut::from(&wire[..]);
            while let Ok(Some(f)) = decode(&mut buf, 1 << 10) {
                let _ = f.payload();
                let _ = f.close_code();
            }
        }
    }
}
