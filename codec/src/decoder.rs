//! The receive side: bytes in, [`Incoming`] events out.

use bytes::{Buf, BytesMut};

use crate::error::ProtocolError;
use crate::frame::{FrameHeader, FrameRules, HeaderParse};
use crate::mask::apply_mask;
use crate::message::{Assembly, Incoming, MessageAssembler};
use crate::protocol::Role;

/// Limits and modes of a [`Decoder`], built in the style of a builder.
///
/// ```
/// use ringcast_codec::{DecoderConfig, Role};
/// let config = DecoderConfig::new(Role::Server).max_message_size(1 << 20).max_frame_size(64 << 10);
/// assert_eq!(config.max_message_size_limit(), 1 << 20);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderConfig {
    rules: FrameRules,
    max_message_size: usize,
    assembly: Assembly,
}

impl DecoderConfig {
    /// Strict RFC 6455 rules for `role`, with 16 MiB frame and message limits.
    pub const fn new(role: Role) -> Self {
        DecoderConfig {
            rules: FrameRules::for_role(role, 16 << 20),
            max_message_size: 16 << 20,
            assembly: Assembly::Messages,
        }
    }

    /// The largest payload one frame may declare.
    pub const fn max_frame_size(mut self, bytes: usize) -> Self {
        self.rules.max_frame_size = bytes;
        self
    }

    /// The largest message, all fragments together.
    pub const fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Deliver every data frame as it arrives instead of whole messages.
    pub const fn assembly(mut self, assembly: Assembly) -> Self {
        self.assembly = assembly;
        self
    }

    /// Whether input frames must be masked (`Some(true)`), must not be (`Some(false)`),
    /// or either is accepted (`None`). The role sets the strict default.
    pub const fn require_mask(mut self, require: Option<bool>) -> Self {
        self.rules.require_mask = require;
        self
    }

    /// RSV bits an extension negotiated for this connection may set.
    pub const fn allowed_rsv(mut self, bits: u8) -> Self {
        self.rules.allowed_rsv = bits;
        self
    }

    /// The configured message size limit.
    pub const fn max_message_size_limit(&self) -> usize {
        self.max_message_size
    }

    /// The configured frame size limit.
    pub const fn max_frame_size_limit(&self) -> usize {
        self.rules.max_frame_size
    }

    /// The header rules this configuration applies.
    pub const fn frame_rules(&self) -> &FrameRules {
        &self.rules
    }
}

/// A frame whose header has been read but whose payload is still arriving.
#[derive(Debug, Clone, Copy)]
struct PendingFrame {
    header: FrameHeader,
    header_len: usize,
    /// Payload bytes already unmasked in place in the buffer.
    unmasked: usize,
    /// Payload bytes already checked as UTF-8 (text frames arriving in pieces).
    checked: usize,
}

/// An incremental, sans-IO WebSocket decoder.
///
/// Append whatever the socket produced to a [`BytesMut`] and call [`Decoder::decode`]
/// until it returns `Ok(None)`. Payloads are unmasked in place as they arrive (so the
/// bytes are still in cache) and handed out as zero-copy splits of the buffer.
///
/// ```
/// use bytes::BytesMut;
/// use ringcast_codec::{Decoder, DecoderConfig, Incoming, Role};
/// let mut decoder = Decoder::new(DecoderConfig::new(Role::Server));
/// // RFC 6455 §5.7: a masked "Hello", arriving in two reads.
/// let wire = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
/// let mut buf = BytesMut::from(&wire[..8]);
/// assert_eq!(decoder.decode(&mut buf).unwrap(), None);
/// assert_eq!(decoder.needed(), 3);
/// buf.extend_from_slice(&wire[8..]);
/// assert_eq!(decoder.decode(&mut buf).unwrap(), Some(Incoming::Text("Hello".into())));
/// ```
#[derive(Debug)]
pub struct Decoder {
    config: DecoderConfig,
    assembler: MessageAssembler,
    pending: Option<PendingFrame>,
    needed: usize,
}

impl Decoder {
    /// A decoder at the start of a connection.
    pub fn new(config: DecoderConfig) -> Self {
        Decoder {
            config,
            assembler: MessageAssembler::new(config.assembly, config.max_message_size),
            pending: None,
            needed: 2,
        }
    }

    /// The configuration this decoder applies.
    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }

    /// After `decode` returned `Ok(None)`: the minimum number of further bytes before
    /// the next event can be produced. Useful to size the next read.
    pub fn needed(&self) -> usize {
        self.needed
    }

    /// Whether a frame or a fragmented message is partly received.
    pub fn is_mid_message(&self) -> bool {
        self.pending.is_some() || self.assembler.in_message()
    }

    /// Consumes complete frames from the front of `buf` and returns the next event, or
    /// `Ok(None)` when `buf` holds no complete event yet (unconsumed bytes stay in `buf`).
    ///
    /// After an error the connection must be failed with
    /// [`ProtocolError::close_code`]; the decoder's state is unspecified.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Incoming>, ProtocolError> {
        loop {
            let pending = match self.pending {
                Some(pending) => pending,
                None => match FrameHeader::parse(buf, &self.config.rules)? {
                    HeaderParse::Incomplete { needed } => {
                        self.needed = needed;
                        return Ok(None);
                    }
                    HeaderParse::Complete { header, header_len } => {
                        self.assembler.admit(&header)?;
                        PendingFrame { header, header_len, unmasked: 0, checked: 0 }
                    }
                },
            };
            // The frame rules cap payload_len at max_frame_size, a usize.
            let payload_len = pending.header.payload_len as usize;
            let available = buf.len().saturating_sub(pending.header_len).min(payload_len);
            let mut pending = pending;
            if let Some(key) = pending.header.mask
                && available > pending.unmasked
            {
                let start = pending.header_len + pending.unmasked;
                apply_mask(&mut buf[start..pending.header_len + available], key, pending.unmasked);
                pending.unmasked = available;
            }
            if available < payload_len {
                // Fail fast: invalid UTF-8 at the start of a long text frame ends the
                // connection without waiting for the rest.
                if available > pending.checked && self.assembler.carries_text(&pending.header) {
                    let start = pending.header_len + pending.checked;
                    self.assembler.check_partial(&pending.header, &buf[start..pending.header_len + available])?;
                    pending.checked = available;
                }
                self.needed = payload_len - available;
                self.pending = Some(pending);
                return Ok(None);
            }
            self.pending = None;
            buf.advance(pending.header_len);
            let payload = buf.split_to(payload_len);
            if let Some(incoming) = self.assembler.push_checked(&pending.header, payload, pending.checked)? {
                self.needed = 2;
                return Ok(Some(incoming));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::CloseFrame;
    use crate::protocol::{CloseCode, OpCode};
    use bytes::Bytes;

    fn server() -> Decoder {
        Decoder::new(DecoderConfig::new(Role::Server))
    }

    fn client() -> Decoder {
        Decoder::new(DecoderConfig::new(Role::Client))
    }

    fn drain(decoder: &mut Decoder, wire: &[u8]) -> Result<Vec<Incoming>, ProtocolError> {
        let mut buf = BytesMut::from(wire);
        let mut out = Vec::new();
        while let Some(event) = decoder.decode(&mut buf)? {
            out.push(event);
        }
        Ok(out)
    }

    #[test]
    fn rfc_6455_section_5_7_examples() {
        assert_eq!(
            drain(&mut client(), &[0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]),
            Ok(vec![Incoming::Text("Hello".into())])
        );
        assert_eq!(
            drain(&mut server(), &[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]),
            Ok(vec![Incoming::Text("Hello".into())])
        );
        assert_eq!(
            drain(&mut client(), &[0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f]),
            Ok(vec![Incoming::Text("Hello".into())])
        );
        assert_eq!(
            drain(&mut client(), &[0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]),
            Ok(vec![Incoming::Ping(Bytes::from_static(b"Hello"))])
        );
        assert_eq!(
            drain(&mut server(), &[0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]),
            Ok(vec![Incoming::Pong(Bytes::from_static(b"Hello"))])
        );
        let mut big = vec![0x82, 0x7E, 0x01, 0x00];
        big.extend((0..256).map(|i| i as u8));
        assert_eq!(drain(&mut client(), &big), Ok(vec![Incoming::Binary(Bytes::from(big[4..].to_vec()))]));
        let mut huge = vec![0x82, 0x7F, 0, 0, 0, 0, 0, 0x01, 0, 0];
        huge.resize(10 + 65536, 7);
        assert_eq!(drain(&mut client(), &huge), Ok(vec![Incoming::Binary(Bytes::from(vec![7; 65536]))]));
    }

    #[test]
    fn byte_by_byte_arrival_yields_the_same_events() {
        let mut wire = vec![0x01, 0x83, 1, 2, 3, 4];
        let mut hel = *b"Hel";
        apply_mask(&mut hel, [1, 2, 3, 4], 0);
        wire.extend_from_slice(&hel);
        wire.extend_from_slice(&[0x89, 0x80, 9, 9, 9, 9]); // ping between fragments
        let mut lo = *b"lo";
        apply_mask(&mut lo, [5, 6, 7, 8], 0);
        wire.extend_from_slice(&[0x80, 0x82, 5, 6, 7, 8]);
        wire.extend_from_slice(&lo);
        let mut decoder = server();
        let mut buf = BytesMut::new();
        let mut events = Vec::new();
        for byte in wire {
            buf.extend_from_slice(&[byte]);
            while let Some(event) = decoder.decode(&mut buf).unwrap() {
                events.push(event);
            }
        }
        assert_eq!(events, vec![Incoming::Ping(Bytes::new()), Incoming::Text("Hello".into())]);
        assert!(buf.is_empty());
        assert!(!decoder.is_mid_message());
    }

    #[test]
    fn errors_carry_the_right_close_code() {
        let too_big = Decoder::new(DecoderConfig::new(Role::Server).max_message_size(4))
            .decode(&mut BytesMut::from(&[0x82, 0x85, 0, 0, 0, 0, 1, 2, 3, 4, 5][..]));
        assert_eq!(too_big.unwrap_err().close_code(), CloseCode::Size);
        let bad_utf8 = drain(&mut client(), &[0x81, 0x01, 0xff]).unwrap_err();
        assert_eq!(bad_utf8.close_code(), CloseCode::Invalid);
        let unmasked = drain(&mut server(), &[0x81, 0x01, b'a']).unwrap_err();
        assert_eq!(unmasked.close_code(), CloseCode::Protocol);
        let close = drain(&mut client(), &[0x88, 0x02, 0x03, 0xe8]).unwrap();
        assert_eq!(close, vec![Incoming::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() }))]);
    }

    #[test]
    fn invalid_utf8_fails_before_a_long_text_frame_ends() {
        let mut text = vec![b'a'; 1000];
        text[10] = 0xff;
        let mut wire = vec![0x81, 0x7E, 0x03, 0xE8];
        wire.extend_from_slice(&text);
        let mut decoder = client();
        // Only the first 100 payload bytes have arrived: already an error.
        let mut buf = BytesMut::from(&wire[..104]);
        assert_eq!(decoder.decode(&mut buf), Err(ProtocolError::InvalidUtf8));
        // Valid text arriving in pieces (a code point cut between reads) still decodes.
        let euro = "€".repeat(400);
        let message = crate::PreparedMessage::text(&euro, crate::Split::Whole);
        let mut decoder = client();
        let mut buf = BytesMut::new();
        let mut events = Vec::new();
        for chunk in message.as_bytes().chunks(7) {
            buf.extend_from_slice(chunk);
            while let Some(event) = decoder.decode(&mut buf).unwrap() {
                events.push(event);
            }
        }
        assert_eq!(events, vec![Incoming::Text(euro.as_str().into())]);
        // A truncated code point at the very end is still caught.
        let mut decoder = client();
        let mut buf = BytesMut::from(&[0x81, 0x04, b'a', b'b', 0xe2, 0x82][..3]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        buf.extend_from_slice(&[b'b', 0xe2, 0x82]);
        assert_eq!(decoder.decode(&mut buf), Err(ProtocolError::InvalidUtf8));
    }

    #[test]
    fn frame_mode_hands_out_each_fragment() {
        let mut decoder = Decoder::new(DecoderConfig::new(Role::Client).assembly(Assembly::Frames));
        let events = drain(&mut decoder, &[0x02, 0x01, 1, 0x80, 0x01, 2]).unwrap();
        assert_eq!(
            events,
            vec![
                Incoming::Fragment { opcode: OpCode::Binary, fin: false, payload: Bytes::from_static(&[1]) },
                Incoming::Fragment { opcode: OpCode::Continuation, fin: true, payload: Bytes::from_static(&[2]) },
            ]
        );
    }
}
