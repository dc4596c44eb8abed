//! Shared pieces of the `ringcast-codec` fuzz targets: how an input is split into a
//! decoder configuration, a chunking and the wire bytes, and the checks every target runs.
//!
//! # Input layout of `frame_parser` and `message_assembler`
//!
//! Read with [`arbitrary::Unstructured`] one `u8` at a time (a `u8` is exactly one input
//! byte), so that seeds can be written by hand (see `fuzz/seeds.py`):
//!
//! | byte | meaning |
//! | --- | --- |
//! | 0 | bit 0: role (0 server, 1 client); bits 1–2: `require_mask` (0 the role's default, 1 `None`, 2 `Some(true)`, 3 `Some(false)`); bits 3–7: `allowed_rsv` (5 bits, so stray high bits are tried too) |
//! | 1 | max frame size, see [`size_limit`] |
//! | 2 | max message size, see [`size_limit`] |
//! | 3 | low 4 bits: number `n` of chunk sizes that follow (0: the whole input in one read) |
//! | 4 .. 4+n | chunk sizes minus one (1..=256 bytes), used in turn, cycling |
//! | rest | the wire bytes |
#![forbid(unsafe_code)]

use arbitrary::Unstructured;
use ringcast_codec::bytes::BytesMut;
use ringcast_codec::{Decoder, DecoderConfig, Incoming, ProtocolError, Role};

/// Everything a decoder target needs, parsed from the front of the fuzz input.
#[derive(Debug, Clone)]
pub struct DecoderInput<'a> {
    /// The endpoint the decoder plays.
    pub role: Role,
    /// The masking rule: `None` accepts both.
    pub require_mask: Option<bool>,
    /// RSV bits the decoder accepts (may hold bits above the three RSV bits).
    pub allowed_rsv: u8,
    /// Per-frame payload limit.
    pub max_frame_size: usize,
    /// Per-message limit.
    pub max_message_size: usize,
    /// Sizes of the successive reads (cycled); empty means one read of everything.
    pub chunks: Vec<usize>,
    /// The bytes the peer sent.
    pub wire: &'a [u8],
}

/// Maps a selector byte to a size limit: bytes below 0xF0 give small limits
/// (`2 * byte`: 0, 2, 4, .. 478) so limits are hit often; 0xF0 and above pick from the
/// length-encoding boundaries and the extremes.
pub fn size_limit(selector: u8) -> usize {
    const LARGE: [usize; 16] = [
        1,
        125,
        126,
        127,
        0xffff,
        0x1_0000,
        1 << 20,
        16 << 20,
        u32::MAX as usize,
        (1 << 63) - 1,
        1 << 63,
        usize::MAX,
        3,
        5,
        7,
        9,
    ];
    if selector < 0xF0 { 2 * selector as usize } else { LARGE[(selector - 0xF0) as usize] }
}

impl<'a> DecoderInput<'a> {
    /// Splits a fuzz input; never fails (missing bytes read as zero).
    pub fn parse(data: &'a [u8]) -> Self {
        let mut u = Unstructured::new(data);
        let mut byte = || u8_or_zero(&mut u);
        let flags = byte();
        let max_frame_size = size_limit(byte());
        let max_message_size = size_limit(byte());
        let chunk_count = byte() & 0x0f;
        let chunks = (0..chunk_count).map(|_| usize::from(u8_or_zero(&mut u)) + 1).collect();
        let role = if flags & 1 == 0 { Role::Server } else { Role::Client };
        let require_mask = match (flags >> 1) & 0b11 {
            0 => Some(role.expects_masked_input()),
            1 => None,
            2 => Some(true),
            _ => Some(false),
        };
        DecoderInput {
            role,
            require_mask,
            allowed_rsv: flags >> 3,
            max_frame_size,
            max_message_size,
            chunks,
            wire: u.take_rest(),
        }
    }

    /// The decoder configuration this input describes.
    pub fn config(&self) -> DecoderConfig {
        DecoderConfig::new(self.role)
            .require_mask(self.require_mask)
            .allowed_rsv(self.allowed_rsv)
            .max_frame_size(self.max_frame_size)
            .max_message_size(self.max_message_size)
    }
}

fn u8_or_zero(u: &mut Unstructured<'_>) -> u8 {
    u.arbitrary::<u8>().unwrap_or(0)
}

/// What a decoder made of a whole input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// Events in order (made owned).
    pub events: Vec<Incoming<'static>>,
    /// The error that stopped decoding, if any.
    pub error: Option<ProtocolError>,
    /// Whether, after the last read, part of a frame or message was still pending
    /// (unset after an error).
    pub pending: Option<bool>,
}

fn chunk_len(chunks: &[usize], read: usize, left: usize) -> usize {
    if chunks.is_empty() { left } else { chunks[read % chunks.len()].min(left) }
}

/// Feeds `wire` to a fresh decoder the way the server does: each read a fresh slice
/// (as a receive buffer is), in reads of the given sizes (cycled; all at once when
/// `chunks` is empty), draining events after every read.
pub fn decode_all(config: DecoderConfig, wire: &[u8], chunks: &[usize]) -> Run {
    let mut decoder = Decoder::new(config);
    let mut events = Vec::new();
    let mut at = 0;
    let mut read = 0;
    loop {
        let n = chunk_len(chunks, read, wire.len() - at);
        let mut piece = wire[at..at + n].to_vec();
        at += n;
        read += 1;
        let mut input = &mut piece[..];
        loop {
            match decoder.decode(&mut input) {
                Ok(Some(event)) => events.push(event.into_owned()),
                Ok(None) => break,
                Err(error) => return Run { events, error: Some(error), pending: None },
            }
        }
        assert!(input.is_empty(), "Ok(None) with input left");
        if at == wire.len() {
            return Run { events, error: None, pending: Some(decoder.is_mid_message()) };
        }
    }
}

/// The same through [`Decoder::decode_buf`], appending each read to one `BytesMut` as a
/// client does. `scribble` may overwrite bytes still in the buffer between calls (a
/// caller that owns the buffer can): a decoder must never trust earlier checks of them.
pub fn decode_buffered(
    config: DecoderConfig,
    wire: &[u8],
    chunks: &[usize],
    mut scribble: impl FnMut(&mut BytesMut),
) -> Run {
    let mut decoder = Decoder::new(config);
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    let mut at = 0;
    let mut read = 0;
    loop {
        let n = chunk_len(chunks, read, wire.len() - at);
        buf.extend_from_slice(&wire[at..at + n]);
        at += n;
        read += 1;
        loop {
            match decoder.decode_buf(&mut buf) {
                Ok(Some(event)) => events.push(event),
                Ok(None) => break,
                Err(error) => return Run { events, error: Some(error), pending: None },
            }
            scribble(&mut buf);
        }
        scribble(&mut buf);
        if at == wire.len() {
            let pending = decoder.is_mid_message() || !buf.is_empty();
            return Run { events, error: None, pending: Some(pending) };
        }
    }
}

/// Checks that hold for any event in any mode.
pub fn check_event(event: &Incoming<'_>, config: &DecoderConfig) {
    match event {
        Incoming::Text(text) => {
            assert!(std::str::from_utf8(text.as_bytes()).is_ok(), "Text event is not UTF-8");
            assert_eq!(text.as_str().len(), text.as_bytes().len());
            assert!(text.len() <= config.max_message_size_limit(), "Text over the message limit");
        }
        Incoming::Binary(data) => {
            assert!(data.len() <= config.max_message_size_limit(), "Binary over the message limit");
        }
        Incoming::Fragment { payload, .. } => {
            assert!(payload.len() <= config.max_frame_size_limit(), "fragment over the frame limit");
            assert!(payload.len() <= config.max_message_size_limit(), "fragment over the message limit");
        }
        Incoming::Ping(payload) | Incoming::Pong(payload) => {
            assert!(payload.len() <= 125, "control payload of {} bytes", payload.len());
        }
        Incoming::Close(close) => {
            if let Some(close) = close {
                assert!(close.code.is_allowed_on_wire(), "close code {} not allowed on the wire", close.code);
                assert!(close.reason.len() <= 123, "close reason of {} bytes", close.reason.len());
                assert!(std::str::from_utf8(close.reason.as_bytes()).is_ok());
            }
        }
    }
}

/// One frame of the original wire, read by a deliberately naive parser and unmasked a
/// byte at a time: the reference for frames the decoder accepted.
#[derive(Debug)]
pub struct ReferenceFrame {
    /// FIN bit.
    pub fin: bool,
    /// Opcode nibble.
    pub opcode: u8,
    /// The unmasked payload.
    pub payload: Vec<u8>,
}

/// Reads the frame at `wire[*at..]` (which the decoder already accepted, so it is whole)
/// and advances `at` past it.
pub fn reference_frame(wire: &[u8], at: &mut usize) -> ReferenceFrame {
    let w = &wire[*at..];
    let (fin, opcode, masked) = (w[0] & 0x80 != 0, w[0] & 0x0f, w[1] & 0x80 != 0);
    let (len, mut pos) = match w[1] & 0x7f {
        126 => (u64::from(u16::from_be_bytes([w[2], w[3]])), 4),
        127 => (u64::from_be_bytes(w[2..10].try_into().unwrap()), 10),
        n => (u64::from(n), 2),
    };
    let key = if masked {
        pos += 4;
        [w[pos - 4], w[pos - 3], w[pos - 2], w[pos - 1]]
    } else {
        [0; 4]
    };
    let len = usize::try_from(len).unwrap();
    let payload: Vec<u8> = w[pos..pos + len].iter().enumerate().map(|(i, b)| b ^ key[i % 4]).collect();
    *at += pos + len;
    ReferenceFrame { fin, opcode, payload }
}
