//! The send side: one whole message into a permessage-deflate payload (RFC 7692 §7.2.1).

use std::sync::OnceLock;

use flate2::{Compress, Compression, FlushCompress};

use super::negotiate::{Direction, ServerDeflateConfig};
use super::{CompressionLevel, DEFLATE_TAIL, WindowBits};
use crate::prepared::{PreparedMessage, Split};

/// zlib-rs's deflate state: one allocation holding the state (3 200 bytes with zlib-rs
/// 0.6.8, alignment included), a double window, the hash chains, a 64 Ki-entry hash table
/// and the pending and symbol buffers (memLevel 8). `tests/deflate_memory.rs` checks it.
const fn deflate_heap_bytes(window_bits: u8) -> usize {
    const STATE: usize = 3_200;
    const HEAD: usize = 65536 * 2;
    const LIT_BUFS: usize = (1 << (8 + 6)) * (4 + 3);
    let window = 1usize << window_bits;
    STATE + 2 * window + 2 * window + HEAD + LIT_BUFS
}

/// The compression backend failed, which zlib only does when it is misused: send the
/// message uncompressed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("deflate failed: {0}")]
pub struct CompressError(String);

/// Raw DEFLATE for one direction of one connection, or for every connection that shares
/// its parameters when there is no context takeover.
///
/// Each [`compress`](Self::compress) takes one whole message, ends it with a sync flush
/// and drops the flush's trailing `00 00 ff ff`, as RFC 7692 §7.2.1 describes. Without
/// context takeover every message is a self-contained DEFLATE stream, so the output does
/// not depend on which connection it is for. With context takeover (a client whose server
/// allows it) later messages refer back to earlier ones, and the compressor belongs to one
/// connection. The peer's window then follows the messages it inflates, so a message once
/// compressed must be sent compressed: decide to send one plain (too short, say) before
/// compressing it, never after.
///
/// ```
/// use ringcast_codec::deflate::{CompressionLevel, Compressor, WindowBits};
/// let mut compressor = Compressor::new(CompressionLevel::DEFAULT, WindowBits::MAX);
/// let mut payload = Vec::new();
/// compressor.compress(b"Hello", &mut payload)?;
/// assert_eq!(payload, [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]); // RFC 7692 §7.2.3.1
/// # Ok::<(), ringcast_codec::deflate::CompressError>(())
/// ```
pub struct Compressor {
    deflate: Compress,
    level: CompressionLevel,
    window_bits: WindowBits,
    context_takeover: bool,
    /// Something was compressed since the last reset: the next message without context
    /// takeover needs one (a reset clears a 128 KiB hash table, so it is skipped if it
    /// would change nothing).
    used: bool,
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compressor")
            .field("level", &self.level)
            .field("window_bits", &self.window_bits)
            .field("context_takeover", &self.context_takeover)
            .finish_non_exhaustive()
    }
}

impl Compressor {
    /// A compressor without context takeover: every message on its own.
    pub fn new(level: CompressionLevel, window_bits: WindowBits) -> Self {
        Self::for_direction(level, Direction { window_bits, context_takeover: false })
    }

    /// A compressor for the negotiated outgoing direction
    /// ([`DeflateParams::outgoing`](super::DeflateParams::outgoing)).
    pub fn for_direction(level: CompressionLevel, direction: Direction) -> Self {
        let deflate = Compress::new_with_window_bits(
            Compression::new(level.get().into()),
            false,
            direction.window_bits.zlib_bits(),
        );
        Compressor {
            deflate,
            level,
            window_bits: direction.window_bits,
            context_takeover: direction.context_takeover,
            used: false,
        }
    }

    /// The window this compressor stays within.
    pub const fn window_bits(&self) -> WindowBits {
        self.window_bits
    }

    /// Whether messages refer back to earlier ones.
    pub const fn context_takeover(&self) -> bool {
        self.context_takeover
    }

    /// The compression level.
    pub const fn level(&self) -> CompressionLevel {
        self.level
    }

    /// Appends the permessage-deflate payload of `message` to `out`.
    ///
    /// # Errors
    /// Only if the backend reports misuse, which zlib-rs does not for this sequence of
    /// calls. The compressor is then reset and the message should go uncompressed; with
    /// context takeover the peer's window is out of step, so the connection should close.
    pub fn compress(&mut self, message: &[u8], out: &mut Vec<u8>) -> Result<(), CompressError> {
        if message.is_empty() {
            // An empty stored block header: with the receiver's tail it is an empty stored
            // block, which leaves the stream byte-aligned. zlib would emit nothing for a
            // second flush in a row, leaving no tail to strip.
            out.push(0x00);
            return Ok(());
        }
        if self.used && !self.context_takeover {
            self.deflate.reset();
        }
        self.used = true;
        let start = out.len();
        // Stored blocks cost 5 bytes per 64 KiB; the flush at most 10 more.
        out.reserve(message.len() + (message.len() >> 12) + 16);
        let mut input = message;
        loop {
            let before = self.deflate.total_in();
            let status = self.deflate.compress_vec(input, out, FlushCompress::Sync);
            let consumed = (self.deflate.total_in() - before) as usize;
            input = &input[consumed..];
            if let Err(error) = status {
                return Err(self.failed(out, start, error.to_string()));
            }
            // The flush is complete once a call returns with output space left over.
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
            out.reserve(out.capacity() - start + 64);
        }
        if !out[start..].ends_with(&DEFLATE_TAIL) {
            return Err(self.failed(out, start, "sync flush did not end with 00 00 ff ff".to_owned()));
        }
        out.truncate(out.len() - DEFLATE_TAIL.len());
        Ok(())
    }

    fn failed(&mut self, out: &mut Vec<u8>, start: usize, reason: String) -> CompressError {
        out.truncate(start);
        self.deflate.reset();
        self.used = false;
        CompressError(reason)
    }

    /// The heap this compressor holds, in bytes: 371 KiB at 15 bits, 245 KiB at 8 or 9
    /// (zlib-rs's state, double window, hash chains and table, and symbol buffers).
    pub const fn heap_bytes(&self) -> usize {
        deflate_heap_bytes(self.window_bits.zlib_bits())
    }
}

/// The window to compress a broadcast of `message_len` bytes with, for a subscriber whose
/// negotiated outgoing window is `peer_window_bits`; use it as the key of the compressed
/// variant ([`CompressedVariants`]).
///
/// Without context takeover a message can only refer back into itself, so a message no
/// longer than the peer's window fits it whatever window compressed it: all such peers
/// share the 15-bit variant. Only longer messages need their own, and a window of 8 shares
/// the 9-bit one (see [`WindowBits`]: zlib at 9 bits reaches back at most 250 bytes).
///
/// ```
/// use ringcast_codec::deflate::{WindowBits, variant_window_bits};
/// let ten = WindowBits::new(10).unwrap();
/// assert_eq!(variant_window_bits(ten, 1000), WindowBits::MAX);
/// assert_eq!(variant_window_bits(ten, 5000), ten);
/// ```
pub const fn variant_window_bits(peer_window_bits: WindowBits, message_len: usize) -> WindowBits {
    if message_len <= peer_window_bits.window_size() {
        WindowBits::MAX
    } else {
        match WindowBits::new(peer_window_bits.zlib_bits()) {
            Some(bits) => bits,
            None => WindowBits::MAX,
        }
    }
}

/// Per-thread compression of broadcasts for a server: one lazily created [`Compressor`]
/// per window, no context takeover, and the configured level and minimum size.
///
/// Holds no per-connection state: compress a broadcast once per distinct
/// [`variant_window_bits`], then hand the same [`PreparedMessage`] to every subscriber that
/// negotiated it.
///
/// ```
/// use ringcast_codec::deflate::{BroadcastCompressor, ServerDeflateConfig, WindowBits};
/// use ringcast_codec::Split;
/// let mut compressor = BroadcastCompressor::new(&ServerDeflateConfig::new());
/// let text = "ringcast ".repeat(100);
/// let message = compressor.prepare_text(&text, Split::Whole, WindowBits::MAX).unwrap();
/// assert_eq!(message.as_bytes()[0], 0xc1); // FIN, RSV1, text
/// assert!(compressor.prepare_text("too short", Split::Whole, WindowBits::MAX).is_none());
/// ```
#[derive(Debug)]
pub struct BroadcastCompressor {
    enabled: bool,
    level: CompressionLevel,
    min_message_size: usize,
    compressors: [Option<Compressor>; WindowBits::COUNT],
    scratch: Vec<u8>,
}

/// A scratch buffer larger than this is released after use rather than kept per thread.
const SCRATCH_KEEP: usize = 1 << 20;

impl BroadcastCompressor {
    /// Compression as `config` says (level, minimum size, on or off).
    pub fn new(config: &ServerDeflateConfig) -> Self {
        BroadcastCompressor {
            enabled: config.is_enabled(),
            level: config.compression_level(),
            min_message_size: config.min_message_size_limit(),
            compressors: Default::default(),
            scratch: Vec::new(),
        }
    }

    /// The compressed variant of a text message, split like
    /// [`PreparedMessage::text`]; `None` when the plain message should be sent instead
    /// (compression off, message below the minimum size, or not made smaller).
    pub fn prepare_text(&mut self, text: &str, split: Split, window_bits: WindowBits) -> Option<PreparedMessage> {
        let payload = self.compress(text.as_bytes(), window_bits)?;
        let message = PreparedMessage::deflated_text(payload, split);
        self.release_scratch();
        Some(message)
    }

    /// The compressed variant of a binary message; see [`prepare_text`](Self::prepare_text).
    pub fn prepare_binary(&mut self, data: &[u8], split: Split, window_bits: WindowBits) -> Option<PreparedMessage> {
        let payload = self.compress(data, window_bits)?;
        let message = PreparedMessage::deflated_binary(payload, split);
        self.release_scratch();
        Some(message)
    }

    /// The permessage-deflate payload of `message` compressed within `window_bits`, or
    /// `None` when it should go uncompressed.
    pub fn compress(&mut self, message: &[u8], window_bits: WindowBits) -> Option<&[u8]> {
        if !self.enabled || message.len() < self.min_message_size {
            return None;
        }
        let level = self.level;
        let bits = WindowBits::new(window_bits.zlib_bits()).unwrap_or(WindowBits::MAX);
        let compressor = self.compressors[bits.index()].get_or_insert_with(|| Compressor::new(level, bits));
        self.scratch.clear();
        compressor.compress(message, &mut self.scratch).ok()?;
        (self.scratch.len() < message.len()).then_some(self.scratch.as_slice())
    }

    fn release_scratch(&mut self) {
        if self.scratch.capacity() > SCRATCH_KEEP {
            self.scratch = Vec::new();
        }
    }

    /// The heap held: the compressors created so far and the scratch buffer.
    pub fn heap_bytes(&self) -> usize {
        self.compressors.iter().flatten().map(Compressor::heap_bytes).sum::<usize>() + self.scratch.capacity()
    }
}

/// The compressed variants of one broadcast, at most one per window, built on first use
/// and shareable between threads (put it in an `Arc` next to the plain message).
///
/// ```
/// use ringcast_codec::deflate::{BroadcastCompressor, CompressedVariants, ServerDeflateConfig, WindowBits};
/// use ringcast_codec::Split;
/// let mut compressor = BroadcastCompressor::new(&ServerDeflateConfig::new());
/// let variants = CompressedVariants::new();
/// let text = "ringcast ".repeat(100);
/// let mut built = 0;
/// for _subscriber in 0..3 {
///     variants.get_or_compress(WindowBits::MAX, || {
///         built += 1;
///         compressor.prepare_text(&text, Split::Whole, WindowBits::MAX)
///     });
/// }
/// assert_eq!(built, 1);
/// ```
#[derive(Debug, Default)]
pub struct CompressedVariants {
    slots: [OnceLock<Option<PreparedMessage>>; WindowBits::COUNT],
}

impl CompressedVariants {
    /// No variant built yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The variant for `window_bits`, built by `compress` if this is its first use. `None`
    /// (from `compress`, remembered) means subscribers with this window get the plain
    /// message. Concurrent callers for the same window wait for the one that builds it.
    pub fn get_or_compress(
        &self,
        window_bits: WindowBits,
        compress: impl FnOnce() -> Option<PreparedMessage>,
    ) -> Option<&PreparedMessage> {
        self.slots[window_bits.index()].get_or_init(compress).as_ref()
    }

    /// The variant for `window_bits` if it has been built: `Some(None)` when compression
    /// was not worth it.
    pub fn get(&self, window_bits: WindowBits) -> Option<Option<&PreparedMessage>> {
        self.slots[window_bits.index()].get().map(Option::as_ref)
    }
}
