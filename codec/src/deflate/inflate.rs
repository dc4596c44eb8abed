//! The receive side: permessage-deflate payloads back into messages (RFC 7692 §7.2.2),
//! under a size limit.

use flate2::{Decompress, FlushDecompress, Status};

use super::negotiate::Direction;
use super::{DEFLATE_TAIL, WindowBits};
use crate::protocol::CloseCode;

/// zlib-rs's inflate state: one allocation of the state with its code tables (14 720 bytes
/// with zlib-rs 0.6.8, alignment included) and a 32 KiB window plus 64 bytes of SIMD
/// padding, whatever the window bits. `tests/deflate_memory.rs` checks it.
pub const INFLATE_HEAP_BYTES: usize = 14_720 + (1 << 15) + 64;

/// The most output produced per call into the backend: bounds the zeroed space handed to
/// it beyond what the message needs.
const MAX_CHUNK: usize = 64 << 10;
const MIN_CHUNK: usize = 1 << 10;

/// Why a compressed message could not be inflated; either way the connection fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InflateError {
    /// The inflated message passed the limit; inflation stopped there.
    #[error("inflated message of more than {max} bytes exceeds the limit")]
    MessageTooLarge {
        /// The configured limit.
        max: usize,
    },
    /// The payload is not valid DEFLATE data (RFC 7692 §8.2.3.4 requires failing the
    /// connection).
    #[error("invalid compressed data: {0}")]
    Corrupt(String),
}

impl InflateError {
    /// The close code to fail the connection with: 1009 for the size limit, 1007 for
    /// corrupt data. RFC 7692 names no code for the latter; 1007 is RFC 6455's "data
    /// inconsistent with the type of the message", which is what a payload that does not
    /// decompress is.
    pub const fn close_code(&self) -> CloseCode {
        match self {
            InflateError::MessageTooLarge { .. } => CloseCode::Size,
            InflateError::Corrupt(_) => CloseCode::Invalid,
        }
    }
}

/// Raw inflate for the messages one peer compresses, fed frame by frame.
///
/// A compressed message arrives as the payloads of its frames; hand each to
/// [`inflate`](Self::inflate) as it comes and mark the last, which appends the
/// `00 00 ff ff` the sender removed. Output is appended to the caller's buffer and stops
/// as soon as the message would pass the limit, so a deflate bomb costs no more than the
/// limit in output and time.
///
/// Memory: one allocation of 46.4 KiB ([`heap_bytes`](Self::heap_bytes)), the same
/// for every window size with zlib-rs. Without context takeover nothing needs to survive
/// between messages: hold an `Option<Inflater>` and drop it after each message (or when
/// the connection goes idle), creating it again on the next compressed message; creating
/// one costs that allocation, under a microsecond (`benches/deflate.rs`). With context takeover the inflater keeps the
/// peer's window between messages and must live as long as the connection.
///
/// ```
/// use ringcast_codec::deflate::{Direction, Inflater, WindowBits};
/// let mut inflater = Inflater::new(Direction { window_bits: WindowBits::MAX, context_takeover: false });
/// let mut out = Vec::new();
/// // RFC 7692 §7.2.3.1: "Hello" in two frames.
/// inflater.inflate(&[0xf2, 0x48, 0xcd], false, &mut out, 1024)?;
/// inflater.inflate(&[0xc9, 0xc9, 0x07, 0x00], true, &mut out, 1024)?;
/// assert_eq!(out, b"Hello");
/// # Ok::<(), ringcast_codec::deflate::InflateError>(())
/// ```
pub struct Inflater {
    inflate: Decompress,
    window_bits: WindowBits,
    context_takeover: bool,
    /// Bytes produced for the current message.
    message_len: usize,
    /// The sender ended its DEFLATE stream (a block with BFINAL set, RFC 7692 §7.2.3.4):
    /// the rest of the message carries nothing.
    stream_ended: bool,
    /// Part of a message has been fed and its end not yet.
    in_message: bool,
    /// Nothing fed since creation or the last reset: a reset can be skipped.
    pristine: bool,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater")
            .field("window_bits", &self.window_bits)
            .field("context_takeover", &self.context_takeover)
            .field("message_len", &self.message_len)
            .finish_non_exhaustive()
    }
}

impl Inflater {
    /// An inflater for the negotiated incoming direction
    /// ([`DeflateParams::incoming`](super::DeflateParams::incoming)).
    pub fn new(direction: Direction) -> Self {
        Inflater {
            inflate: Self::backend(direction.window_bits),
            window_bits: direction.window_bits,
            context_takeover: direction.context_takeover,
            message_len: 0,
            stream_ended: false,
            in_message: false,
            pristine: true,
        }
    }

    fn backend(window_bits: WindowBits) -> Decompress {
        // A larger window than the sender's always inflates correctly; zlib's smallest is 9.
        Decompress::new_with_window_bits(false, window_bits.zlib_bits())
    }

    /// The sender's window.
    pub const fn window_bits(&self) -> WindowBits {
        self.window_bits
    }

    /// Whether the window is kept from one message to the next.
    pub const fn context_takeover(&self) -> bool {
        self.context_takeover
    }

    /// Whether a message has begun and not ended. Between messages, an inflater without
    /// context takeover holds nothing the next message needs and can be dropped.
    pub const fn is_mid_message(&self) -> bool {
        self.in_message
    }

    /// The heap this inflater holds, in bytes.
    pub const fn heap_bytes(&self) -> usize {
        INFLATE_HEAP_BYTES
    }

    /// Inflates the payload of one frame of a compressed message, appending the output to
    /// `out`. Pass `end_of_message` with the last frame's payload (which may be empty).
    ///
    /// `max_message_size` bounds the whole message, all frames together: as soon as the
    /// output for this message would pass it, inflation stops with
    /// [`InflateError::MessageTooLarge`], having appended at most one byte more than the
    /// limit allows.
    ///
    /// # Errors
    /// [`InflateError::MessageTooLarge`] or [`InflateError::Corrupt`]; either way the
    /// connection must fail ([`InflateError::close_code`]) and the inflater is not
    /// usable again until [`reset`](Self::reset).
    pub fn inflate(
        &mut self,
        compressed: &[u8],
        end_of_message: bool,
        out: &mut Vec<u8>,
        max_message_size: usize,
    ) -> Result<(), InflateError> {
        self.feed(compressed, out, max_message_size)?;
        if end_of_message {
            self.feed(&DEFLATE_TAIL, out, max_message_size)?;
            self.end_message();
        }
        Ok(())
    }

    /// Forgets the current message and, without context takeover, everything else: the
    /// next payload starts a new DEFLATE stream.
    pub fn reset(&mut self) {
        if !self.pristine {
            // flate2 re-creates the state for windows below 15, otherwise resets it in place.
            self.inflate.reset(false);
            self.pristine = true;
        }
        self.message_len = 0;
        self.stream_ended = false;
        self.in_message = false;
    }

    fn end_message(&mut self) {
        self.message_len = 0;
        self.in_message = false;
        if !self.context_takeover || self.stream_ended {
            // A stream that ended cannot continue; the peer's next message starts anew.
            self.reset();
        }
    }

    fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>, max_message_size: usize) -> Result<(), InflateError> {
        self.in_message = true;
        while !self.stream_ended {
            self.pristine = false;
            let room = max_message_size.saturating_sub(self.message_len);
            // One byte past the room is enough to see the limit crossed; otherwise guess
            // from the input how much output to make room for.
            let chunk = room.saturating_add(1).min(input.len().saturating_mul(4).clamp(MIN_CHUNK, MAX_CHUNK));
            let start = out.len();
            out.resize(start + chunk, 0);
            let (in_before, out_before) = (self.inflate.total_in(), self.inflate.total_out());
            let status = self.inflate.decompress(input, &mut out[start..], FlushDecompress::None);
            let consumed = (self.inflate.total_in() - in_before) as usize;
            let produced = (self.inflate.total_out() - out_before) as usize;
            out.truncate(start + produced);
            input = &input[consumed..];
            self.message_len += produced;
            let status = status.map_err(|error| {
                InflateError::Corrupt(error.message().unwrap_or("invalid deflate stream").to_owned())
            })?;
            if self.message_len > max_message_size {
                return Err(InflateError::MessageTooLarge { max: max_message_size });
            }
            match status {
                Status::StreamEnd => self.stream_ended = true,
                // Output space left over means the backend has all it can make of the input.
                _ if produced < chunk && input.is_empty() => break,
                _ if consumed == 0 && produced == 0 => break,
                _ => {}
            }
        }
        Ok(())
    }
}
