//! The send side: messages encoded once into shareable bytes, and single frames.

use bytes::{BufMut, Bytes, BytesMut};

use crate::frame::{FrameHeader, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN, RSV1, header_len_for};
use crate::mask::apply_mask;
use crate::protocol::{CloseCode, OpCode};

/// The smallest frame size that can carry payload: a 2-byte header plus one byte.
pub const MIN_FRAME_SIZE: usize = 3;

/// How a message is cut into frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Split {
    /// The whole message in one frame.
    #[default]
    Whole,
    /// Frames of at most this many bytes, *header included* (at least
    /// [`MIN_FRAME_SIZE`]): the first frame carries the opcode, the rest are
    /// continuations, the last has FIN.
    FrameSize(usize),
}

/// A frame size below [`MIN_FRAME_SIZE`] was requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("frame size {0} is too small: a frame needs at least {MIN_FRAME_SIZE} bytes (2-byte header + payload)")]
pub struct FrameSizeError(pub usize);

impl Split {
    /// Frames of at most `frame_size` bytes, header included.
    pub const fn frame_size(frame_size: usize) -> Result<Split, FrameSizeError> {
        if frame_size < MIN_FRAME_SIZE { Err(FrameSizeError(frame_size)) } else { Ok(Split::FrameSize(frame_size)) }
    }

    /// The largest payload per frame so that an unmasked header plus payload fits.
    fn payload_per_frame(self, message_len: usize) -> usize {
        match self {
            Split::Whole => message_len.max(1),
            Split::FrameSize(size) => max_payload_within(size.max(MIN_FRAME_SIZE)),
        }
    }
}

/// The most payload bytes an unmasked frame of at most `frame_size` bytes can carry.
const fn max_payload_within(frame_size: usize) -> usize {
    if frame_size >= 10 + 0x1_0000 {
        frame_size - 10
    } else if frame_size >= 4 + 126 {
        let p = frame_size - 4;
        if p > 0xffff { 0xffff } else { p }
    } else {
        let p = frame_size - 2;
        if p > 125 { 125 } else { p }
    }
}

/// A message encoded once into contiguous, reference-counted frame bytes.
///
/// This is the unit of fan-out: clone it (a reference count) and hand the same bytes to
/// every subscriber. Server-to-client frames are unmasked, so the bytes are identical for
/// every recipient.
///
/// A permessage-deflate connection can be sent the compressed variant of the same message,
/// built once with [`deflate::BroadcastCompressor`](crate::deflate::BroadcastCompressor)
/// (or [`PreparedMessage::deflated_text`] from a payload compressed elsewhere) and kept
/// beside the plain one.
///
/// ```
/// use ringcast_codec::{OpCode, PreparedMessage, Split};
/// let whole = PreparedMessage::text("Hello", Split::Whole);
/// assert_eq!(whole.as_bytes().as_ref(), b"\x81\x05Hello"); // RFC 6455 §5.7
/// let split = PreparedMessage::text("Hello", Split::frame_size(5).unwrap());
/// assert_eq!(split.as_bytes().as_ref(), b"\x01\x03Hel\x80\x02lo");
/// assert_eq!(split.frame_count(), 2);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedMessage {
    opcode: OpCode,
    payload_len: usize,
    frame_count: usize,
    compressed: bool,
    bytes: Bytes,
}

impl PreparedMessage {
    /// Encodes a text message.
    pub fn text(text: &str, split: Split) -> Self {
        Self::data(OpCode::Text, 0, text.as_bytes(), split)
    }

    /// Encodes a binary message.
    pub fn binary(data: &[u8], split: Split) -> Self {
        Self::data(OpCode::Binary, 0, data, split)
    }

    /// Encodes a text message whose payload is already compressed for permessage-deflate
    /// (RFC 7692 §6): RSV1 on the first frame only, continuations without it, split like
    /// [`PreparedMessage::text`] with `split` applying to the compressed bytes.
    pub fn deflated_text(compressed: &[u8], split: Split) -> Self {
        Self::data(OpCode::Text, RSV1, compressed, split)
    }

    /// Encodes a binary message whose payload is already compressed; see
    /// [`PreparedMessage::deflated_text`].
    pub fn deflated_binary(compressed: &[u8], split: Split) -> Self {
        Self::data(OpCode::Binary, RSV1, compressed, split)
    }

    /// `first_rsv` goes on the first frame only, as the per-message compressed bit does.
    fn data(opcode: OpCode, first_rsv: u8, payload: &[u8], split: Split) -> Self {
        let per_frame = split.payload_per_frame(payload.len());
        let frame_count = payload.len().div_ceil(per_frame).max(1);
        let full_frames = payload.len() / per_frame;
        let tail = payload.len() % per_frame;
        let mut wire_len = full_frames * (header_len_for(per_frame as u64, false) + per_frame);
        if tail > 0 || payload.is_empty() {
            wire_len += header_len_for(tail as u64, false) + tail;
        }
        let mut out = BytesMut::with_capacity(wire_len);
        if payload.is_empty() {
            put_frame(&mut out, FrameHeader { rsv: first_rsv, ..FrameHeader::new(opcode, 0) }, &[]);
        }
        for (index, chunk) in payload.chunks(per_frame).enumerate() {
            let header = FrameHeader {
                fin: index + 1 == frame_count,
                rsv: if index == 0 { first_rsv } else { 0 },
                opcode: if index == 0 { opcode } else { OpCode::Continuation },
                mask: None,
                payload_len: chunk.len() as u64,
            };
            put_frame(&mut out, header, chunk);
        }
        debug_assert_eq!(out.len(), wire_len);
        PreparedMessage {
            opcode,
            payload_len: payload.len(),
            frame_count,
            compressed: first_rsv != 0,
            bytes: out.freeze(),
        }
    }

    /// A ping; `None` if `payload` exceeds 125 bytes.
    pub fn ping(payload: &[u8]) -> Option<Self> {
        Self::control(OpCode::Ping, payload)
    }

    /// A pong; `None` if `payload` exceeds 125 bytes.
    pub fn pong(payload: &[u8]) -> Option<Self> {
        Self::control(OpCode::Pong, payload)
    }

    /// A close frame with `code` and `reason`. The reason is cut (at a character
    /// boundary) to the 123 bytes that fit. Codes that may not appear on the wire
    /// (1005, 1006, 1015) produce an empty close frame, which means "no status".
    pub fn close(code: CloseCode, reason: &str) -> Self {
        if !code.is_allowed_on_wire() {
            return Self::close_empty();
        }
        let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
        payload[..2].copy_from_slice(&u16::from(code).to_be_bytes());
        let reason = truncate_at_char(reason, MAX_CONTROL_PAYLOAD - 2);
        payload[2..2 + reason.len()].copy_from_slice(reason.as_bytes());
        Self::control_unchecked(OpCode::Close, &payload[..2 + reason.len()])
    }

    /// A close frame without a status code.
    pub fn close_empty() -> Self {
        Self::control_unchecked(OpCode::Close, &[])
    }

    fn control(opcode: OpCode, payload: &[u8]) -> Option<Self> {
        (payload.len() <= MAX_CONTROL_PAYLOAD).then(|| Self::control_unchecked(opcode, payload))
    }

    fn control_unchecked(opcode: OpCode, payload: &[u8]) -> Self {
        let mut out = BytesMut::with_capacity(2 + payload.len());
        put_frame(&mut out, FrameHeader::new(opcode, payload.len() as u64), payload);
        PreparedMessage { opcode, payload_len: payload.len(), frame_count: 1, compressed: false, bytes: out.freeze() }
    }

    /// A single raw frame (any opcode, FIN as given), for frame-by-frame senders.
    pub fn frame(opcode: OpCode, fin: bool, payload: &[u8]) -> Self {
        let mut out = BytesMut::with_capacity(MAX_HEADER_LEN + payload.len());
        let header = FrameHeader { fin, ..FrameHeader::new(opcode, payload.len() as u64) };
        put_frame(&mut out, header, payload);
        PreparedMessage { opcode, payload_len: payload.len(), frame_count: 1, compressed: false, bytes: out.freeze() }
    }

    /// The opcode of the first frame.
    pub fn opcode(&self) -> OpCode {
        self.opcode
    }

    /// The message length without frame headers (for a compressed message, the
    /// compressed length).
    pub fn payload_len(&self) -> usize {
        self.payload_len
    }

    /// Whether this is the permessage-deflate variant (RSV1 on the first frame).
    pub fn is_compressed(&self) -> bool {
        self.compressed
    }

    /// How many frames the message was split into.
    pub fn frame_count(&self) -> usize {
        self.frame_count
    }

    /// The encoded frames, ready to write.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Unwraps the encoded frames.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// The payload without frame headers: a zero-copy slice of the frames when the
    /// message is one frame, the frames' payloads joined (a copy) when it is split.
    pub fn payload(&self) -> Bytes {
        let mut at = 0;
        let mut joined = Vec::new();
        let rules =
            crate::frame::FrameRules { require_mask: Some(false), allowed_rsv: 0b111, max_frame_size: usize::MAX };
        while at < self.bytes.len() {
            let Ok(crate::frame::HeaderParse::Complete { header, header_len }) =
                FrameHeader::parse(&self.bytes[at..], &rules)
            else {
                break;
            };
            let (start, end) = (at + header_len, at + header_len + header.payload_len as usize);
            if self.frame_count == 1 {
                return self.bytes.slice(start..end);
            }
            joined.extend_from_slice(&self.bytes[start..end]);
            at = end;
        }
        Bytes::from(joined)
    }
}

fn put_frame(out: &mut BytesMut, header: FrameHeader, payload: &[u8]) {
    let mut head = [0u8; MAX_HEADER_LEN];
    let n = header.encode(&mut head);
    out.put_slice(&head[..n]);
    out.put_slice(payload);
}

fn truncate_at_char(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Appends one masked frame (the client side of RFC 6455 §5.3) to `out`.
///
/// `key` must come from a strong random source, chosen anew for every frame.
pub fn encode_masked_frame(out: &mut BytesMut, opcode: OpCode, fin: bool, payload: &[u8], key: [u8; 4]) {
    encode_masked_frame_with_rsv(out, opcode, fin, 0, payload, key);
}

/// [`encode_masked_frame`] with reserved bits set: `rsv` is `0b100` (RSV1) on the first
/// frame of a permessage-deflate message and 0 on its continuations.
pub fn encode_masked_frame_with_rsv(
    out: &mut BytesMut,
    opcode: OpCode,
    fin: bool,
    rsv: u8,
    payload: &[u8],
    key: [u8; 4],
) {
    let header = FrameHeader { fin, rsv, opcode, mask: Some(key), payload_len: payload.len() as u64 };
    let mut head = [0u8; MAX_HEADER_LEN];
    let n = header.encode(&mut head);
    out.reserve(n + payload.len());
    out.put_slice(&head[..n]);
    let start = out.len();
    out.put_slice(payload);
    apply_mask(&mut out[start..], key, 0);
}

/// The payload of a close frame with `code` and `reason` (cut to fit 125 bytes), for
/// senders that build frames themselves, such as a masking client.
pub fn close_payload(code: CloseCode, reason: &str) -> Vec<u8> {
    if !code.is_allowed_on_wire() {
        return Vec::new();
    }
    let reason = truncate_at_char(reason, MAX_CONTROL_PAYLOAD - 2);
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&u16::from(code).to_be_bytes());
    payload.extend_from_slice(reason.as_bytes());
    payload
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decoder::{Decoder, DecoderConfig};
    use crate::frame::{FrameRules, HeaderParse};
    use crate::message::{CloseFrame, Incoming};
    use crate::protocol::Role;

    /// Walks the frames of `bytes` and returns (header length + payload length) of each.
    fn frame_sizes(bytes: &[u8]) -> Vec<(OpCode, bool, usize)> {
        let rules = FrameRules { require_mask: Some(false), allowed_rsv: 0, max_frame_size: usize::MAX };
        let mut at = 0;
        let mut out = Vec::new();
        while at < bytes.len() {
            let HeaderParse::Complete { header, header_len } = FrameHeader::parse(&bytes[at..], &rules).unwrap() else {
                panic!("truncated frame at {at}");
            };
            let size = header_len + header.payload_len as usize;
            out.push((header.opcode, header.fin, size));
            at += size;
        }
        assert_eq!(at, bytes.len());
        out
    }

    #[test]
    fn the_payload_comes_back_without_headers() {
        let whole = PreparedMessage::text("Hello", Split::Whole);
        assert_eq!(whole.payload(), "Hello");
        assert_eq!(whole.payload().as_ptr(), whole.as_bytes()[2..].as_ptr(), "a slice of the frame");
        let split = PreparedMessage::binary(&[7; 300], Split::frame_size(64).unwrap());
        assert_eq!(&split.payload()[..], &[7; 300][..]);
    }

    #[test]
    fn rfc_examples_encode_byte_for_byte() {
        assert_eq!(PreparedMessage::text("Hello", Split::Whole).as_bytes().as_ref(), b"\x81\x05Hello");
        assert_eq!(PreparedMessage::ping(b"Hello").unwrap().as_bytes().as_ref(), b"\x89\x05Hello");
        let big = PreparedMessage::binary(&[0; 256], Split::Whole);
        assert_eq!(&big.as_bytes()[..4], &[0x82, 0x7E, 0x01, 0x00]);
        let huge = PreparedMessage::binary(&[0; 65536], Split::Whole);
        assert_eq!(&huge.as_bytes()[..10], &[0x82, 0x7F, 0, 0, 0, 0, 0, 0x01, 0, 0]);
        let mut masked = BytesMut::new();
        encode_masked_frame(&mut masked, OpCode::Text, true, b"Hello", [0x37, 0xfa, 0x21, 0x3d]);
        assert_eq!(masked.as_ref(), &[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]);
    }

    #[test]
    fn split_frames_never_exceed_the_frame_size() {
        for frame_size in [3, 4, 100, 127, 128, 129, 130, 131, 1024, 4096, 65539, 65540, 65545, 65546, 70000] {
            for len in [0, 1, 2, 125, 126, 1000, 65535, 65536, 200_000] {
                let message = PreparedMessage::binary(&vec![0xab; len], Split::frame_size(frame_size).unwrap());
                let frames = frame_sizes(message.as_bytes());
                assert_eq!(frames.len(), message.frame_count());
                for (i, &(opcode, fin, size)) in frames.iter().enumerate() {
                    assert!(size <= frame_size, "frame {i} of {size} bytes > {frame_size} (len {len})");
                    assert_eq!(opcode, if i == 0 { OpCode::Binary } else { OpCode::Continuation });
                    assert_eq!(fin, i + 1 == frames.len());
                }
                // Frames are as full as allowed: all but the last carry the maximum.
                if frames.len() > 1 {
                    let per = max_payload_within(frame_size);
                    assert_eq!(frames.len(), len.div_ceil(per));
                }
            }
        }
        assert_eq!(Split::frame_size(2), Err(FrameSizeError(2)));
    }

    #[test]
    fn close_frames_round_trip_and_truncate_reasons() {
        let long = "é".repeat(100);
        let close = PreparedMessage::close(CloseCode::Away, &long);
        let mut decoder = Decoder::new(DecoderConfig::new(Role::Client));
        let mut buf = BytesMut::from(close.as_bytes().as_ref());
        let Some(Incoming::Close(Some(CloseFrame { code, reason }))) = decoder.decode_buf(&mut buf).unwrap() else {
            panic!("expected a close frame");
        };
        assert_eq!(code, CloseCode::Away);
        assert_eq!(reason.len(), 122, "61 two-byte characters fit in 123 bytes");
        assert_eq!(PreparedMessage::close(CloseCode::Abnormal, "x").as_bytes().as_ref(), b"\x88\x00");
        assert!(PreparedMessage::ping(&[0; 126]).is_none());
        assert_eq!(close_payload(CloseCode::Normal, "ok"), b"\x03\xe8ok");
    }
}
