//! The receive side: bytes in, [`Incoming`] events out.
//!
//! The decoder reads frames straight out of the caller's input and copies only what it
//! cannot hand out yet: the part of a frame (or of a fragmented message) that the input
//! ends inside. Between messages it holds no buffer at all, so a connection that is idle
//! costs the size of a [`Decoder`] and nothing on the heap.
//!
//! Soundness note: text is handed out as `&str` over the caller's input only after the
//! whole slice was validated in this call; text gathered across inputs is validated as it
//! is copied into memory this decoder owns, and that memory is never exposed mutably, so
//! no caller can invalidate bytes between their validation and the `&str` built over them.

use bytes::{Bytes, BytesMut};

use crate::deflate::{Direction, InflateError, Inflater};
use crate::error::ProtocolError;
use crate::frame::{FrameHeader, FrameRules, HeaderParse, MAX_HEADER_LEN, RSV1};
use crate::mask::apply_mask;
use crate::message::{Assembly, CloseFrame, Incoming, Payload, Text};
use crate::protocol::{OpCode, Role};
use crate::utf8::{Utf8Bytes, Utf8Validator};

/// Limits and modes of a [`Decoder`], built in the style of a builder.
///
/// Kept in 12 bytes, since every connection's decoder holds one: the size limits are
/// stored as `u32`, so a limit above 4 GiB − 1 is that (no WebSocket endpoint should
/// buffer more in one message anyway).
///
/// ```
/// use ringcast_codec::{DecoderConfig, Role};
/// let config = DecoderConfig::new(Role::Server).max_message_size(1 << 20).max_frame_size(64 << 10);
/// assert_eq!(config.max_message_size_limit(), 1 << 20);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderConfig {
    max_frame_size: u32,
    max_message_size: u32,
    require_mask: Option<bool>,
    allowed_rsv: u8,
    assembly: Assembly,
    /// The negotiated permessage-deflate direction the peer compresses in.
    deflate: Option<Direction>,
}

const fn clamp_u32(bytes: usize) -> u32 {
    if bytes > u32::MAX as usize { u32::MAX } else { bytes as u32 }
}

impl DecoderConfig {
    /// Strict RFC 6455 rules for `role`, with 16 MiB frame and message limits.
    pub const fn new(role: Role) -> Self {
        DecoderConfig {
            max_frame_size: 16 << 20,
            max_message_size: 16 << 20,
            require_mask: Some(role.expects_masked_input()),
            allowed_rsv: 0,
            assembly: Assembly::Messages,
            deflate: None,
        }
    }

    /// Inflate the messages the peer compresses with permessage-deflate (RFC 7692), as
    /// negotiated: `incoming` is [`DeflateParams::incoming`](crate::deflate::DeflateParams::incoming)
    /// for this endpoint's role. RSV1 then marks a compressed message on its first frame
    /// (and is an error anywhere else); inflated messages stay within the message limit.
    pub const fn permessage_deflate(mut self, incoming: Option<Direction>) -> Self {
        self.deflate = incoming;
        self
    }

    /// The permessage-deflate direction this decoder inflates, if negotiated.
    pub const fn deflate(&self) -> Option<Direction> {
        self.deflate
    }

    /// The largest payload one frame may declare (at most 4 GiB − 1).
    pub const fn max_frame_size(mut self, bytes: usize) -> Self {
        self.max_frame_size = clamp_u32(bytes);
        self
    }

    /// The largest message, all fragments together (at most 4 GiB − 1).
    pub const fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = clamp_u32(bytes);
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
        self.require_mask = require;
        self
    }

    /// RSV bits an extension negotiated for this connection may set.
    pub const fn allowed_rsv(mut self, bits: u8) -> Self {
        self.allowed_rsv = bits;
        self
    }

    /// The configured message size limit.
    pub const fn max_message_size_limit(&self) -> usize {
        self.max_message_size as usize
    }

    /// The configured frame size limit.
    pub const fn max_frame_size_limit(&self) -> usize {
        self.max_frame_size as usize
    }

    /// The header rules this configuration applies.
    pub const fn frame_rules(&self) -> FrameRules {
        FrameRules {
            require_mask: self.require_mask,
            allowed_rsv: if self.deflate.is_some() { self.allowed_rsv | RSV1 } else { self.allowed_rsv },
            max_frame_size: self.max_frame_size as usize,
        }
    }

    /// How data frames are delivered.
    pub const fn assembly_mode(&self) -> Assembly {
        self.assembly
    }
}

/// A frame whose header has been read but whose payload the input ended inside.
#[derive(Debug, Clone, Copy)]
struct FrameProgress {
    header: FrameHeader,
    /// Payload bytes already gathered (and unmasked).
    received: usize,
}

/// A data message under way: fragments so far, or a single frame still arriving.
#[derive(Debug)]
struct MessageProgress {
    /// `Text` or `Binary`.
    opcode: OpCode,
    /// Declared payload bytes of every frame admitted so far, the current one included.
    admitted: u64,
    /// Whether a frame of this message ended without FIN (so only a continuation may follow).
    fragmented: bool,
    /// The gathered payload: the whole message so far when assembling messages, only the
    /// current frame's gathered part in frame-by-frame mode.
    data: Vec<u8>,
    /// Validation state over every text byte of the message so far.
    utf8: Utf8Validator,
    /// The message is compressed (permessage-deflate): `data` holds inflated bytes.
    compressed: bool,
}

/// What a decoder keeps between inputs. Boxed, and dropped on every message boundary.
#[derive(Debug, Default)]
struct Partial {
    /// The first bytes of a header the input ended inside.
    header: [u8; MAX_HEADER_LEN],
    header_len: u8,
    frame: Option<FrameProgress>,
    message: Option<MessageProgress>,
    /// The gathered payload of a control frame (at most 125 bytes).
    control: Vec<u8>,
    /// [`Decoder::decode_buf`]'s fail-fast progress over a text frame waiting in the
    /// caller's buffer: how many of its bytes were checked, and the validator after them.
    /// A hint for failing early only: once whole, the frame is parsed and validated anew.
    waiting: Option<(usize, Utf8Validator)>,
    /// The permessage-deflate state: while a compressed message arrives, or for the
    /// connection's life when the peer keeps its window between messages.
    inflater: Option<Box<Inflater>>,
}

impl Partial {
    fn is_empty(&self) -> bool {
        self.header_len == 0 && self.frame.is_none() && self.message.is_none() && self.inflater.is_none()
    }
}

/// An incremental, sans-IO WebSocket decoder.
///
/// Pass whatever the socket produced to [`Decoder::decode`] until it returns `Ok(None)`.
/// Frames that lie wholly inside the input are unmasked in place and handed out as
/// borrowed slices of it ([`Payload::Borrowed`]); the rest is copied into the decoder,
/// which hands it out owned once complete.
///
/// ```
/// use ringcast_codec::{Decoder, DecoderConfig, Incoming, Role};
/// let mut decoder = Decoder::new(DecoderConfig::new(Role::Server));
/// // RFC 6455 §5.7: a masked "Hello", arriving in two reads.
/// let mut wire = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
/// let (first, second) = wire.split_at_mut(8);
/// assert_eq!(decoder.decode(&mut &mut first[..]).unwrap(), None);
/// assert!(decoder.is_mid_message());
/// let mut input = &mut second[..];
/// assert_eq!(decoder.decode(&mut input).unwrap(), Some(Incoming::Text("Hello".into())));
/// assert!(input.is_empty() && !decoder.is_mid_message());
/// ```
#[derive(Debug)]
pub struct Decoder {
    config: DecoderConfig,
    partial: Option<Box<Partial>>,
    /// The error that failed the connection: every later call returns it again. Boxed:
    /// every idle connection holds a decoder, and almost none of them ever fail.
    failed: Option<Box<ProtocolError>>,
}

impl Decoder {
    /// A decoder at the start of a connection.
    pub const fn new(config: DecoderConfig) -> Self {
        Decoder { config, partial: None, failed: None }
    }

    /// The configuration this decoder applies.
    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }

    /// Whether part of a frame or of a fragmented message is held (the input ended
    /// inside it).
    pub fn is_mid_message(&self) -> bool {
        self.partial.as_ref().is_some_and(|p| !p.is_empty())
    }

    /// Forgets any incomplete frame or message (and a recorded failure): the decoder is
    /// as new, and holds no buffer.
    pub fn reset(&mut self) {
        self.partial = None;
        self.failed = None;
    }

    /// Heap bytes this decoder holds for incomplete frames and messages; 0 between
    /// messages.
    pub fn buffered_bytes(&self) -> usize {
        self.partial.as_ref().map_or(0, |p| {
            std::mem::size_of::<Partial>()
                + p.control.capacity()
                + p.message.as_ref().map_or(0, |m| m.data.capacity())
                + p.inflater.as_ref().map_or(0, |i| i.heap_bytes())
        })
    }

    /// Decodes the next event from the front of `input`, advancing `input` past every
    /// byte consumed. Returns `Ok(None)` once `input` is exhausted (its tail, if it ended
    /// inside a frame, is now held by the decoder).
    ///
    /// The event may borrow from `input` (never from the decoder), so the decoder can be
    /// used again while the event is alive.
    ///
    /// After an error the connection must be failed with [`ProtocolError::close_code`];
    /// every later call returns the same error.
    pub fn decode<'a>(&mut self, input: &mut &'a mut [u8]) -> Result<Option<Incoming<'a>>, ProtocolError> {
        if let Some(error) = &self.failed {
            return Err((**error).clone());
        }
        let result = self.decode_inner(input);
        if let Err(error) = &result {
            self.failed = Some(Box::new(error.clone()));
            self.partial = None;
        } else if self.partial.as_ref().is_some_and(|p| p.is_empty()) {
            // A message boundary: give the buffers back.
            self.partial = None;
        }
        result
    }

    /// Like [`Decoder::decode`] over a [`BytesMut`] the caller keeps appending to, for a
    /// reader that owns its buffer (a client): consumed bytes are split off the front and
    /// the event's payload is a zero-copy [`Bytes`] slice of them. A frame the buffer ends
    /// inside stays in the buffer (nothing is copied) until more bytes arrive, unless it
    /// belongs to a fragmented message being assembled, which is gathered as usual.
    pub fn decode_buf(&mut self, buf: &mut BytesMut) -> Result<Option<Incoming<'static>>, ProtocolError> {
        if let Some(error) = &self.failed {
            return Err((**error).clone());
        }
        if self.wait_in_buffer(buf)? {
            return Ok(None);
        }
        // The frame that waited (if one did) is decoded now: its fail-fast progress
        // must not carry over to the next frame.
        if let Some(partial) = self.partial.as_mut() {
            partial.waiting = None;
        }
        let base = buf.as_ptr() as usize;
        let total = buf.len();
        let mut input: &mut [u8] = &mut buf[..];
        let event = self.decode(&mut input)?;
        let consumed = total - input.len();
        // Where a borrowed payload lies in the buffer, as a range (address arithmetic
        // only): the consumed bytes are frozen below and the range sliced out of them.
        let range_of = |bytes: &[u8]| {
            let start = bytes.as_ptr() as usize - base;
            start..start + bytes.len()
        };
        let event = event.map(|event| match event {
            Incoming::Text(Text::Borrowed(text)) => Located::Text(range_of(text.as_bytes())),
            Incoming::Binary(Payload::Borrowed(data)) => Located::Binary(range_of(data)),
            Incoming::Fragment { opcode, fin, payload: Payload::Borrowed(data) } => {
                Located::Fragment(opcode, fin, range_of(data))
            }
            Incoming::Ping(Payload::Borrowed(data)) => Located::Ping(range_of(data)),
            Incoming::Pong(Payload::Borrowed(data)) => Located::Pong(range_of(data)),
            owned => Located::Owned(owned.into_owned()),
        });
        let consumed = buf.split_to(consumed).freeze();
        Ok(event.map(|located| match located {
            // The bytes are the ones validated as a `&str` above: `split_to` and `freeze`
            // neither copy nor change them, and `Bytes` is immutable from here on.
            Located::Text(range) => Incoming::Text(Text::Owned(Utf8Bytes::from_validated(consumed.slice(range)))),
            Located::Binary(range) => Incoming::Binary(Payload::Owned(consumed.slice(range))),
            Located::Fragment(opcode, fin, range) => {
                Incoming::Fragment { opcode, fin, payload: Payload::Owned(consumed.slice(range)) }
            }
            Located::Ping(range) => Incoming::Ping(Payload::Owned(consumed.slice(range))),
            Located::Pong(range) => Incoming::Pong(Payload::Owned(consumed.slice(range))),
            Located::Owned(event) => event,
        }))
    }

    /// For [`Decoder::decode_buf`]: whether the buffer ends inside the next frame and that
    /// frame can wait there. Nothing is consumed or trusted across calls: the frame is
    /// parsed and checked again once it is whole. Meanwhile the header's rules are applied
    /// at once, and an unmasked text frame's arrived prefix is checked for UTF-8 that can
    /// never become valid (fail fast), re-checking only when the prefix has doubled.
    fn wait_in_buffer(&mut self, buf: &BytesMut) -> Result<bool, ProtocolError> {
        let gathering = self.partial.as_ref().is_some_and(|p| {
            p.header_len > 0 || p.frame.is_some() || (p.message.is_some() && self.config.assembly == Assembly::Messages)
        });
        if gathering {
            return Ok(false);
        }
        let header = match FrameHeader::parse(buf, &self.config.frame_rules()) {
            Ok(HeaderParse::Incomplete { .. }) => return Ok(true),
            Ok(HeaderParse::Complete { header, header_len }) => {
                let available = buf.len() - header_len;
                if available as u64 >= header.payload_len {
                    return Ok(false);
                }
                (header, header_len, available)
            }
            // Reported by `decode`, which also records the failure.
            Err(_) => return Ok(false),
        };
        let (header, header_len, available) = header;
        if self.is_compressed(&header).unwrap_or(true) {
            // Inflated as it arrives (an error is reported by `decode`).
            return Ok(false);
        }
        let check = |decoder: &mut Decoder| -> Result<(), ProtocolError> {
            decoder.admit_check(&header)?;
            let text = match (header.opcode, decoder.message()) {
                (OpCode::Text, _) => Some(Utf8Validator::new()),
                (OpCode::Continuation, Some(m)) if m.opcode == OpCode::Text => Some(m.utf8.clone()),
                _ => None,
            };
            let Some(fresh) = text.filter(|_| available > 0) else { return Ok(()) };
            let partial = decoder.partial.get_or_insert_with(Box::default);
            // Resume where the last look stopped (the bytes before it are not looked at
            // again: a caller that changed them only loses the early failure).
            let (checked, mut utf8) =
                partial.waiting.take().filter(|(checked, _)| *checked <= available).unwrap_or((0, fresh));
            let arrived = &buf[header_len + checked..header_len + available];
            let fed = match header.mask {
                None => utf8.feed(arrived, false),
                // The buffer stays masked (the frame is unmasked once whole): check an
                // unmasked copy of what arrived since the last look, as `decode` would.
                Some(key) => {
                    let mut unmasked = arrived.to_vec();
                    apply_mask(&mut unmasked, key, checked);
                    utf8.feed(&unmasked, false)
                }
            };
            fed.map_err(|_| ProtocolError::InvalidUtf8)?;
            partial.waiting = Some((available, utf8));
            Ok(())
        };
        if let Err(error) = check(self) {
            self.failed = Some(Box::new(error.clone()));
            return Err(error);
        }
        Ok(true)
    }

    fn decode_inner<'a>(&mut self, input: &mut &'a mut [u8]) -> Result<Option<Incoming<'a>>, ProtocolError> {
        loop {
            let frame = match self.partial.as_mut().and_then(|p| p.frame.take()) {
                Some(frame) => frame,
                None => {
                    let Some(header) = self.next_header(input)? else { return Ok(None) };
                    self.admit(&header)?;
                    let payload_len = header.payload_len as usize;
                    // A compressed frame is inflated into the decoder's own buffer.
                    if input.len() >= payload_len && !self.is_compressed(&header)? {
                        let (payload, rest) = std::mem::take(input).split_at_mut(payload_len);
                        *input = rest;
                        if let Some(key) = header.mask {
                            apply_mask(payload, key, 0);
                        }
                        match self.whole_frame(&header, payload)? {
                            Some(event) => return Ok(Some(event)),
                            None => continue,
                        }
                    }
                    FrameProgress { header, received: 0 }
                }
            };
            match self.gather(frame, input)? {
                Some(frame) => {
                    if let Some(event) = self.gathered_frame(&frame.header)? {
                        return Ok(Some(event));
                    }
                }
                None => return Ok(None),
            }
        }
    }

    /// The next header, from the bytes held from the last input and the front of this
    /// one; `None` (with the bytes kept) when the input ends inside it.
    fn next_header(&mut self, input: &mut &mut [u8]) -> Result<Option<FrameHeader>, ProtocolError> {
        let rules = &self.config.frame_rules();
        if let Some(partial) = self.partial.as_mut().filter(|p| p.header_len > 0) {
            loop {
                let held = partial.header_len as usize;
                match FrameHeader::parse(&partial.header[..held], rules)? {
                    HeaderParse::Complete { header, .. } => {
                        partial.header_len = 0;
                        return Ok(Some(header));
                    }
                    HeaderParse::Incomplete { needed } => {
                        // Exactly the bytes the next parsing stage needs: never payload.
                        let take = needed.min(input.len());
                        if take == 0 {
                            return Ok(None);
                        }
                        partial.header[held..held + take].copy_from_slice(&input[..take]);
                        partial.header_len += take as u8;
                        advance(input, take);
                    }
                }
            }
        }
        match FrameHeader::parse(input, rules)? {
            HeaderParse::Complete { header, header_len } => {
                advance(input, header_len);
                Ok(Some(header))
            }
            HeaderParse::Incomplete { .. } => {
                if !input.is_empty() {
                    let partial = self.partial.get_or_insert_with(Box::default);
                    partial.header[..input.len()].copy_from_slice(input);
                    partial.header_len = input.len() as u8;
                    advance(input, input.len());
                }
                Ok(None)
            }
        }
    }

    /// Whether `header` belongs to a compressed message: RSV1 on a message's first frame,
    /// or a continuation of a compressed message. RSV1 anywhere else is an error.
    fn is_compressed(&self, header: &FrameHeader) -> Result<bool, ProtocolError> {
        if self.config.deflate.is_none() {
            return Ok(false);
        }
        let rsv1 = header.rsv & RSV1 != 0;
        match header.opcode {
            OpCode::Continuation if rsv1 => Err(ProtocolError::CompressedBitMisplaced(OpCode::Continuation)),
            OpCode::Continuation => Ok(self.message().is_some_and(|m| m.compressed)),
            opcode if opcode.is_control() && rsv1 => Err(ProtocolError::CompressedBitMisplaced(opcode)),
            _ => Ok(rsv1),
        }
    }

    fn message(&self) -> Option<&MessageProgress> {
        self.partial.as_ref().and_then(|p| p.message.as_ref())
    }

    fn message_mut(&mut self) -> Option<&mut MessageProgress> {
        self.partial.as_mut().and_then(|p| p.message.as_mut())
    }

    /// Checks a header against the message under way before any payload is read, so that
    /// sequencing errors and oversized messages are refused without buffering anything;
    /// returns the message's declared length with this frame.
    fn admit_check(&self, header: &FrameHeader) -> Result<u64, ProtocolError> {
        let max = self.config.max_message_size_limit();
        let so_far = match (header.opcode, self.message()) {
            (opcode, _) if opcode.is_control() => return Ok(0),
            (OpCode::Continuation, None) => return Err(ProtocolError::UnexpectedContinuation),
            (OpCode::Continuation, Some(message)) => message.admitted,
            (opcode, Some(_)) => return Err(ProtocolError::ExpectedContinuation(opcode)),
            (_, None) => 0,
        };
        let len = so_far.saturating_add(header.payload_len);
        if len > max as u64 {
            return Err(ProtocolError::MessageTooLarge { len, max });
        }
        Ok(len)
    }

    /// [`Decoder::admit_check`], recording the frame as part of the message under way.
    fn admit(&mut self, header: &FrameHeader) -> Result<(), ProtocolError> {
        let len = self.admit_check(header)?;
        if !header.opcode.is_control()
            && let Some(message) = self.message_mut()
        {
            message.admitted = len;
        }
        Ok(())
    }

    /// A frame that lay wholly in the input: its payload is unmasked in place. Returns
    /// the event it completes, if any (a first fragment is copied and waits).
    fn whole_frame<'a>(
        &mut self,
        header: &FrameHeader,
        payload: &'a mut [u8],
    ) -> Result<Option<Incoming<'a>>, ProtocolError> {
        let payload: &'a [u8] = payload;
        if header.opcode.is_control() {
            return control_event(header.opcode, Payload::Borrowed(payload)).map(Some);
        }
        let assembly = self.config.assembly;
        match self.partial.as_mut().and_then(|p| p.message.take()) {
            // A message in a single frame: nothing is copied.
            None if header.fin => {
                let event = match (assembly, header.opcode) {
                    (Assembly::Frames, opcode) => {
                        if opcode == OpCode::Text {
                            simdutf8::basic::from_utf8(payload).map_err(|_| ProtocolError::InvalidUtf8)?;
                        }
                        Incoming::Fragment { opcode, fin: true, payload: Payload::Borrowed(payload) }
                    }
                    (Assembly::Messages, OpCode::Text) => Incoming::Text(Text::Borrowed(
                        simdutf8::basic::from_utf8(payload).map_err(|_| ProtocolError::InvalidUtf8)?,
                    )),
                    (Assembly::Messages, _) => Incoming::Binary(Payload::Borrowed(payload)),
                };
                Ok(Some(event))
            }
            None => {
                // The first fragment of a message.
                let mut message = MessageProgress {
                    opcode: header.opcode,
                    admitted: header.payload_len,
                    fragmented: true,
                    data: Vec::new(),
                    utf8: Utf8Validator::new(),
                    compressed: false,
                };
                if message.opcode == OpCode::Text {
                    message.utf8.feed(payload, false).map_err(|_| ProtocolError::InvalidUtf8)?;
                }
                let event = match assembly {
                    Assembly::Messages => {
                        append_bounded(&mut message.data, payload, message.admitted);
                        None
                    }
                    Assembly::Frames => Some(Incoming::Fragment {
                        opcode: header.opcode,
                        fin: false,
                        payload: Payload::Borrowed(payload),
                    }),
                };
                self.partial.get_or_insert_with(Box::default).message = Some(message);
                Ok(event)
            }
            Some(mut message) => {
                if message.opcode == OpCode::Text {
                    message.utf8.feed(payload, header.fin).map_err(|_| ProtocolError::InvalidUtf8)?;
                }
                match assembly {
                    Assembly::Frames => {
                        if !header.fin {
                            self.put_message(message);
                        }
                        Ok(Some(Incoming::Fragment {
                            opcode: OpCode::Continuation,
                            fin: header.fin,
                            payload: Payload::Borrowed(payload),
                        }))
                    }
                    Assembly::Messages => {
                        append_bounded(&mut message.data, payload, message.admitted);
                        if header.fin {
                            Ok(Some(finished_message(message)))
                        } else {
                            self.put_message(message);
                            Ok(None)
                        }
                    }
                }
            }
        }
    }

    fn put_message(&mut self, message: MessageProgress) {
        self.partial.get_or_insert_with(Box::default).message = Some(message);
    }

    /// Copies as much of `frame`'s payload as `input` holds into the decoder, unmasking
    /// and (for text) validating it on the way. Returns the frame once its payload is
    /// complete; `None` when the input ran out first (the progress is kept).
    fn gather(
        &mut self,
        mut frame: FrameProgress,
        input: &mut &mut [u8],
    ) -> Result<Option<FrameProgress>, ProtocolError> {
        let header = frame.header;
        let payload_len = header.payload_len as usize;
        let take = (payload_len - frame.received).min(input.len());
        if let Some(direction) = self.config.deflate
            && self.is_compressed(&header)?
        {
            let max = self.config.max_message_size_limit();
            let partial = self.partial.get_or_insert_with(Box::default);
            let chunk = &mut input[..take];
            if let Some(key) = header.mask {
                apply_mask(chunk, key, frame.received);
            }
            let message = partial.message.get_or_insert_with(|| MessageProgress {
                opcode: header.opcode,
                admitted: header.payload_len,
                fragmented: false,
                data: Vec::new(),
                utf8: Utf8Validator::new(),
                compressed: true,
            });
            let inflater = partial.inflater.get_or_insert_with(|| Box::new(Inflater::new(direction)));
            let last = header.fin && frame.received + take == payload_len;
            let start = message.data.len();
            inflater.inflate(chunk, last, &mut message.data, max).map_err(|e| match e {
                InflateError::MessageTooLarge { max } => ProtocolError::MessageTooLarge { len: max as u64 + 1, max },
                other => ProtocolError::InvalidCompressedData(other.to_string()),
            })?;
            if message.opcode == OpCode::Text {
                message.utf8.feed(&message.data[start..], false).map_err(|_| ProtocolError::InvalidUtf8)?;
            }
            if last && !inflater.context_takeover() {
                // Nothing survives the message: the next one starts a new stream.
                partial.inflater = None;
            }
            advance(input, take);
            frame.received += take;
            if frame.received < payload_len {
                partial.frame = Some(frame);
                return Ok(None);
            }
            return Ok(Some(frame));
        }
        let partial = self.partial.get_or_insert_with(Box::default);
        let chunk = &input[..take];
        if header.opcode.is_control() {
            let start = partial.control.len();
            partial.control.extend_from_slice(chunk);
            if let Some(key) = header.mask {
                apply_mask(&mut partial.control[start..], key, frame.received);
            }
        } else {
            let message = partial.message.get_or_insert_with(|| MessageProgress {
                opcode: header.opcode,
                admitted: header.payload_len,
                fragmented: false,
                data: Vec::new(),
                utf8: Utf8Validator::new(),
                compressed: false,
            });
            let cap = match self.config.assembly {
                Assembly::Messages => message.admitted,
                Assembly::Frames => header.payload_len,
            };
            let start = message.data.len();
            append_bounded(&mut message.data, chunk, cap);
            if let Some(key) = header.mask {
                apply_mask(&mut message.data[start..], key, frame.received);
            }
            if message.opcode == OpCode::Text {
                // Fail fast: bytes that can never become UTF-8 end the connection now,
                // not when the rest of a long frame has arrived (RFC 6455 §8.1).
                message.utf8.feed(&message.data[start..], false).map_err(|_| ProtocolError::InvalidUtf8)?;
            }
        }
        advance(input, take);
        frame.received += take;
        if frame.received < payload_len {
            partial.frame = Some(frame);
            return Ok(None);
        }
        Ok(Some(frame))
    }

    /// A frame whose payload was gathered into the decoder is complete.
    fn gathered_frame(&mut self, header: &FrameHeader) -> Result<Option<Incoming<'static>>, ProtocolError> {
        let Some(partial) = self.partial.as_mut() else { return Ok(None) };
        if header.opcode.is_control() {
            let payload = Bytes::from(std::mem::take(&mut partial.control));
            return control_event(header.opcode, Payload::Owned(payload)).map(Some);
        }
        let Some(mut message) = partial.message.take() else { return Ok(None) };
        if header.fin && message.opcode == OpCode::Text {
            // The end of the message: an unfinished code point is an error now.
            message.utf8.feed(&[], true).map_err(|_| ProtocolError::InvalidUtf8)?;
        }
        match self.config.assembly {
            Assembly::Frames => {
                let payload = Payload::Owned(Bytes::from(std::mem::take(&mut message.data)));
                let opcode = if message.fragmented { OpCode::Continuation } else { message.opcode };
                if !header.fin {
                    message.fragmented = true;
                    partial.message = Some(message);
                }
                Ok(Some(Incoming::Fragment { opcode, fin: header.fin, payload }))
            }
            Assembly::Messages if header.fin => Ok(Some(finished_message(message))),
            Assembly::Messages => {
                message.fragmented = true;
                partial.message = Some(message);
                Ok(None)
            }
        }
    }
}

/// Where the event of [`Decoder::decode_buf`] lies in the consumed bytes.
enum Located {
    Text(std::ops::Range<usize>),
    Binary(std::ops::Range<usize>),
    Fragment(OpCode, bool, std::ops::Range<usize>),
    Ping(std::ops::Range<usize>),
    Pong(std::ops::Range<usize>),
    Owned(Incoming<'static>),
}

fn advance(input: &mut &mut [u8], n: usize) {
    let rest = std::mem::take(input);
    *input = &mut rest[n..];
}

/// Appends `bytes`, growing geometrically but never past `cap` (the declared size of what
/// is being gathered, itself within the configured limits): a peer that announces a huge
/// frame and sends little makes the decoder hold about what it sent, not what it announced.
fn append_bounded(data: &mut Vec<u8>, bytes: &[u8], cap: u64) {
    let needed = data.len() + bytes.len();
    if data.capacity() < needed {
        let cap = usize::try_from(cap).unwrap_or(usize::MAX).max(needed);
        let target = (data.len() * 2).max(needed).min(cap);
        data.reserve_exact(target - data.len());
    }
    data.extend_from_slice(bytes);
}

/// The whole message a last fragment completed; its text was validated fragment by
/// fragment as it was gathered, the last piece with `last = true`.
fn finished_message(message: MessageProgress) -> Incoming<'static> {
    let data = Bytes::from(message.data);
    if message.opcode == OpCode::Text {
        Incoming::Text(Text::Owned(Utf8Bytes::from_validated(data)))
    } else {
        Incoming::Binary(Payload::Owned(data))
    }
}

fn control_event(opcode: OpCode, payload: Payload<'_>) -> Result<Incoming<'_>, ProtocolError> {
    Ok(match opcode {
        OpCode::Ping => Incoming::Ping(payload),
        OpCode::Pong => Incoming::Pong(payload),
        _ => Incoming::Close(CloseFrame::parse(&payload)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::CloseCode;

    fn server() -> Decoder {
        Decoder::new(DecoderConfig::new(Role::Server))
    }

    fn client() -> Decoder {
        Decoder::new(DecoderConfig::new(Role::Client))
    }

    /// Decodes `wire` in one input; every event made owned.
    fn drain(decoder: &mut Decoder, wire: &[u8]) -> Result<Vec<Incoming<'static>>, ProtocolError> {
        drain_chunked(decoder, wire, wire.len().max(1))
    }

    fn drain_chunked(
        decoder: &mut Decoder,
        wire: &[u8],
        chunk: usize,
    ) -> Result<Vec<Incoming<'static>>, ProtocolError> {
        let mut wire = wire.to_vec();
        let mut out = Vec::new();
        for piece in wire.chunks_mut(chunk) {
            let mut input = piece;
            while let Some(event) = decoder.decode(&mut input)? {
                out.push(event.into_owned());
            }
            assert!(input.is_empty());
        }
        Ok(out)
    }

    fn binary(bytes: &[u8]) -> Incoming<'static> {
        Incoming::Binary(Payload::Owned(Bytes::copy_from_slice(bytes)))
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
            Ok(vec![Incoming::Ping(Payload::Borrowed(b"Hello"))])
        );
        assert_eq!(
            drain(&mut server(), &[0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]),
            Ok(vec![Incoming::Pong(Payload::Borrowed(b"Hello"))])
        );
        let mut big = vec![0x82, 0x7E, 0x01, 0x00];
        big.extend((0..256).map(|i| i as u8));
        assert_eq!(drain(&mut client(), &big), Ok(vec![binary(&big[4..])]));
        let mut huge = vec![0x82, 0x7F, 0, 0, 0, 0, 0, 0x01, 0, 0];
        huge.resize(10 + 65536, 7);
        assert_eq!(drain(&mut client(), &huge), Ok(vec![binary(&[7; 65536])]));
    }

    #[test]
    fn whole_frames_are_borrowed_from_the_input() {
        let mut wire = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
        let start = wire.as_ptr() as usize;
        let mut decoder = server();
        let mut input = &mut wire[..];
        match decoder.decode(&mut input).unwrap() {
            Some(Incoming::Text(Text::Borrowed(text))) => {
                assert_eq!(text, "Hello");
                assert_eq!(text.as_ptr() as usize, start + 6, "unmasked in place, not copied");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(decoder.buffered_bytes(), 0);
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
        for chunk in 1..=wire.len() {
            let mut decoder = server();
            let events = drain_chunked(&mut decoder, &wire, chunk).unwrap();
            assert_eq!(events, vec![Incoming::Ping(Payload::Borrowed(b"")), Incoming::Text("Hello".into())]);
            assert!(!decoder.is_mid_message());
            assert_eq!(decoder.buffered_bytes(), 0, "nothing held between messages");
        }
    }

    #[test]
    fn errors_carry_the_right_close_code_and_stick() {
        let mut too_big = Decoder::new(DecoderConfig::new(Role::Server).max_message_size(4));
        let error = drain(&mut too_big, &[0x82, 0x85, 0, 0, 0, 0, 1, 2, 3, 4, 5]).unwrap_err();
        assert_eq!(error.close_code(), CloseCode::Size);
        assert_eq!(drain(&mut too_big, &[0x89, 0x80, 0, 0, 0, 0]), Err(error), "the same error again");
        let bad_utf8 = drain(&mut client(), &[0x81, 0x01, 0xff]).unwrap_err();
        assert_eq!(bad_utf8.close_code(), CloseCode::Invalid);
        let unmasked = drain(&mut server(), &[0x81, 0x01, b'a']).unwrap_err();
        assert_eq!(unmasked.close_code(), CloseCode::Protocol);
        let close = drain(&mut client(), &[0x88, 0x02, 0x03, 0xe8]).unwrap();
        assert_eq!(close, vec![Incoming::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() }))]);
    }

    #[test]
    fn sequencing_errors() {
        assert_eq!(drain(&mut client(), &[0x80, 0x01, b'x']), Err(ProtocolError::UnexpectedContinuation));
        assert_eq!(
            drain(&mut client(), &[0x02, 0x01, b'x', 0x81, 0x01, b'y']),
            Err(ProtocolError::ExpectedContinuation(OpCode::Text))
        );
        // Also when the first fragment arrived in pieces.
        assert_eq!(
            drain_chunked(&mut client(), &[0x02, 0x02, b'x', b'x', 0x81, 0x01, b'y'], 3),
            Err(ProtocolError::ExpectedContinuation(OpCode::Text))
        );
    }

    #[test]
    fn message_size_is_enforced_before_payload_is_read() {
        let config = DecoderConfig::new(Role::Client).max_message_size(10);
        // 6 bytes, then a continuation announcing 5 more: refused at its header.
        let wire = [0x02, 0x06, 0, 0, 0, 0, 0, 0, 0x80, 0x05];
        assert_eq!(drain(&mut Decoder::new(config), &wire), Err(ProtocolError::MessageTooLarge { len: 11, max: 10 }));
        // A frame announcing far more than it sends holds about what was sent.
        let config = DecoderConfig::new(Role::Client).max_message_size(16 << 20).max_frame_size(16 << 20);
        let mut decoder = Decoder::new(config);
        let mut wire = vec![0x82, 0x7F, 0, 0, 0, 0, 0, 0xF0, 0, 0];
        wire.extend_from_slice(&[1; 1000]);
        assert_eq!(drain(&mut decoder, &wire), Ok(vec![]));
        assert!(decoder.buffered_bytes() < 4096, "holds {} bytes", decoder.buffered_bytes());
    }

    #[test]
    fn invalid_utf8_fails_before_a_long_text_frame_ends() {
        let mut text = vec![b'a'; 1000];
        text[10] = 0xff;
        let mut wire = vec![0x81, 0x7E, 0x03, 0xE8];
        wire.extend_from_slice(&text);
        // Only the first 100 payload bytes have arrived: already an error.
        assert_eq!(drain(&mut client(), &wire[..104]), Err(ProtocolError::InvalidUtf8));
        // Valid text arriving in pieces (a code point cut between reads) still decodes.
        let euro = "€".repeat(400);
        let message = crate::PreparedMessage::text(&euro, crate::Split::Whole);
        for chunk in [1, 7, 100, 1201] {
            let events = drain_chunked(&mut client(), message.as_bytes(), chunk).unwrap();
            assert_eq!(events, vec![Incoming::Text(euro.as_str().into())], "chunk {chunk}");
        }
        // A code point left unfinished by the last fragment is an error.
        assert_eq!(
            drain_chunked(&mut client(), &[0x01, 0x01, b'a', 0x80, 0x03, b'b', 0xe2, 0x82], 4),
            Err(ProtocolError::InvalidUtf8)
        );
    }

    #[test]
    fn frame_mode_hands_out_each_fragment() {
        let config = DecoderConfig::new(Role::Client).assembly(Assembly::Frames);
        for chunk in [1, 2, 6] {
            let events = drain_chunked(&mut Decoder::new(config), &[0x02, 0x01, 1, 0x80, 0x01, 2], chunk).unwrap();
            assert_eq!(
                events,
                vec![
                    Incoming::Fragment { opcode: OpCode::Binary, fin: false, payload: Payload::Borrowed(&[1]) },
                    Incoming::Fragment { opcode: OpCode::Continuation, fin: true, payload: Payload::Borrowed(&[2]) },
                ],
                "chunk {chunk}"
            );
        }
        // Text fragments are validated across boundaries.
        let wire = [0x01, 0x01, 0xe2, 0x00, 0x01, 0x82, 0x80, 0x01, 0xac];
        assert_eq!(drain(&mut Decoder::new(config), &wire).unwrap().len(), 3);
        let wire = [0x01, 0x01, b'a', 0x80, 0x01, 0xc3];
        assert_eq!(drain(&mut Decoder::new(config), &wire), Err(ProtocolError::InvalidUtf8));
    }

    fn deflating_client() -> Decoder {
        let incoming =
            crate::deflate::Direction { window_bits: crate::deflate::WindowBits::MAX, context_takeover: false };
        Decoder::new(DecoderConfig::new(Role::Client).permessage_deflate(Some(incoming)))
    }

    #[test]
    fn rfc_7692_examples_inflate_whole_fragmented_and_in_pieces() {
        // §7.2.3.1: "Hello" compressed in one frame; §7.2.3.2: the same in two fragments.
        let single = [0xc1, 0x07, 0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        let fragmented = [0x41, 0x03, 0xf2, 0x48, 0xcd, 0x80, 0x04, 0xc9, 0xc9, 0x07, 0x00];
        for wire in [&single[..], &fragmented[..]] {
            for chunk in 1..=wire.len() {
                let mut decoder = deflating_client();
                assert_eq!(drain_chunked(&mut decoder, wire, chunk), Ok(vec![Incoming::Text("Hello".into())]));
                assert_eq!(decoder.buffered_bytes(), 0, "no inflate state kept without context takeover");
            }
        }
        // An uncompressed message on the same connection is read as it is.
        assert_eq!(drain(&mut deflating_client(), &[0x81, 0x02, b'h', b'i']), Ok(vec![Incoming::Text("hi".into())]));
    }

    #[test]
    fn rsv1_is_refused_where_permessage_deflate_does_not_put_it() {
        // On a continuation, on a control frame, and anywhere without the extension.
        assert_eq!(
            drain(&mut deflating_client(), &[0x01, 0x01, b'a', 0xc0, 0x01, b'b']),
            Err(ProtocolError::CompressedBitMisplaced(OpCode::Continuation))
        );
        assert_eq!(
            drain(&mut deflating_client(), &[0xc9, 0x00]),
            Err(ProtocolError::CompressedBitMisplaced(OpCode::Ping))
        );
        let error = drain(&mut client(), &[0xc1, 0x07, 0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]).unwrap_err();
        assert_eq!(error, ProtocolError::ReservedBits(RSV1));
        assert_eq!(error.close_code(), CloseCode::Protocol);
    }

    #[test]
    fn a_deflate_bomb_stops_at_the_limit_and_corrupt_data_is_1007() {
        let mut compressor =
            crate::deflate::Compressor::new(crate::deflate::CompressionLevel::BEST, crate::deflate::WindowBits::MAX);
        let mut compressed = Vec::new();
        compressor.compress(&vec![0u8; 10 << 20], &mut compressed).unwrap();
        let mut wire = vec![0xc2, 0x7e];
        wire.extend_from_slice(&(compressed.len() as u16).to_be_bytes());
        wire.extend_from_slice(&compressed);
        let incoming =
            crate::deflate::Direction { window_bits: crate::deflate::WindowBits::MAX, context_takeover: false };
        let config = DecoderConfig::new(Role::Client).max_message_size(1 << 20).permessage_deflate(Some(incoming));
        let error = drain(&mut Decoder::new(config), &wire).unwrap_err();
        assert_eq!(error.close_code(), CloseCode::Size);
        // Garbage that does not inflate.
        let error = drain(&mut deflating_client(), &[0xc1, 0x03, 0xff, 0xff, 0xff]).unwrap_err();
        assert!(matches!(error, ProtocolError::InvalidCompressedData(_)), "{error:?}");
        assert_eq!(error.close_code(), CloseCode::Invalid);
        // Inflated text is validated as UTF-8.
        let mut bad = Vec::new();
        compressor.compress(b"ok \xff", &mut bad).unwrap();
        let mut wire = vec![0xc1, bad.len() as u8];
        wire.extend_from_slice(&bad);
        assert_eq!(drain(&mut deflating_client(), &wire), Err(ProtocolError::InvalidUtf8));
    }

    #[test]
    fn decode_buf_splits_consumed_bytes_without_copying() {
        let mut decoder = client();
        let mut buf = BytesMut::from(&[0x82, 0x03, 1, 2, 3, 0x81, 0x02, b'h'][..]);
        let start = buf.as_ptr() as usize;
        match decoder.decode_buf(&mut buf).unwrap() {
            Some(Incoming::Binary(Payload::Owned(data))) => {
                assert_eq!(&data[..], &[1, 2, 3]);
                assert_eq!(data.as_ptr() as usize, start + 2, "a slice of the buffer, not a copy");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(&buf[..], &[0x81, 0x02, b'h']);
        assert_eq!(decoder.decode_buf(&mut buf).unwrap(), None);
        assert_eq!(&buf[..], &[0x81, 0x02, b'h'], "an incomplete frame waits in the buffer");
        assert!(!decoder.is_mid_message());
        buf.extend_from_slice(b"i");
        assert_eq!(decoder.decode_buf(&mut buf).unwrap(), Some(Incoming::Text("hi".into())));
        // Invalid UTF-8 at the start of a long text frame fails before the frame is whole.
        let mut buf = BytesMut::from(&[0x81, 0x7E, 0x10, 0x00][..]);
        buf.extend_from_slice(&[b'a'; 100]);
        buf.extend_from_slice(b"\xff");
        assert_eq!(client().decode_buf(&mut buf), Err(ProtocolError::InvalidUtf8));
        // The same for a masked frame (a server's input), as `decode` fails it: the waiting
        // prefix is checked unmasked, resuming at the right mask phase.
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let mut payload = vec![b'a'; 101];
        payload.push(0xff);
        apply_mask(&mut payload, key, 0);
        let mut wire = vec![0x81, 0xFE, 0x10, 0x00];
        wire.extend_from_slice(&key);
        wire.extend_from_slice(&payload);
        let server = || Decoder::new(DecoderConfig::new(Role::Server));
        let (mut decoder, mut buf) = (server(), BytesMut::from(&wire[..8 + 51]));
        assert_eq!(decoder.decode_buf(&mut buf), Ok(None), "valid so far");
        buf.extend_from_slice(&wire[8 + 51..]);
        assert_eq!(decoder.decode_buf(&mut buf), Err(ProtocolError::InvalidUtf8));
        assert_eq!(drain(&mut server(), &wire), Err(ProtocolError::InvalidUtf8), "decode agrees");
        // The fail-fast progress over one waiting frame does not carry over to the next: a
        // first fragment ends inside a code point, waits in pieces, and the continuation
        // that follows breaks it (as found by the frame_parser fuzz target).
        let mut decoder = Decoder::new(DecoderConfig::new(Role::Client).assembly(Assembly::Frames));
        let mut buf = BytesMut::new();
        let mut events = Vec::new();
        let wire = [&[0x01, 0x02, 0xe2, 0x8c][..], &[0x80, 0x55, 0x77, 0x80, 0x80]].concat();
        let mut result = Ok(None);
        for piece in wire.chunks(3) {
            buf.extend_from_slice(piece);
            loop {
                result = decoder.decode_buf(&mut buf);
                match &result {
                    Ok(Some(event)) => events.push(event.clone()),
                    _ => break,
                }
            }
            if result.is_err() {
                break;
            }
        }
        assert_eq!(events.len(), 1, "{events:?} {result:?}");
        assert_eq!(result, Err(ProtocolError::InvalidUtf8));
        // Bytes changed by the caller while a frame waits are checked again when it is whole.
        let mut decoder = client();
        let mut buf = BytesMut::from(&[0x81, 0x7E, 0x00, 0x80][..]);
        buf.extend_from_slice(&[b'a'; 100]);
        assert_eq!(decoder.decode_buf(&mut buf), Ok(None));
        buf[10] = 0xff;
        buf.extend_from_slice(&[b'a'; 28]);
        assert_eq!(decoder.decode_buf(&mut buf), Err(ProtocolError::InvalidUtf8));
    }
}
