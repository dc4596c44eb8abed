//! permessage-deflate (RFC 7692): negotiation, compression and inflation, sans IO.
//!
//! The pieces a connection needs, each usable on its own:
//!
//! - Negotiation: a server picks the first acceptable offer from the request's
//!   `Sec-WebSocket-Extensions` ([`ServerDeflateConfig::negotiate`]) and answers with the
//!   [`Negotiated::response_header_value`]; a client builds its offer
//!   ([`ClientDeflateConfig::offer`]) and checks the server's answer
//!   ([`ClientDeflateConfig::accept_response`]). Both end in the agreed [`DeflateParams`].
//! - Compression: [`Compressor`] turns one whole message into a permessage-deflate payload
//!   (raw DEFLATE, sync flush, trailing `00 00 ff ff` removed). A server compresses once per
//!   broadcast with a [`BroadcastCompressor`], which frames the result into a
//!   [`PreparedMessage`](crate::PreparedMessage) with RSV1 set, shareable by every subscriber
//!   that negotiated the same window ([`variant_window_bits`], [`CompressedVariants`]).
//! - Inflation: [`Inflater`] takes the compressed payload frame by frame and stops as soon as
//!   the message passes the size limit, so a deflate bomb costs no more than the limit.
//!
//! The server always answers with `server_no_context_takeover`: every message it sends is a
//! self-contained DEFLATE stream, which is what lets one compression serve every subscriber.
//!
//! ```
//! use ringcast_codec::deflate::{BroadcastCompressor, Inflater, ServerDeflateConfig, variant_window_bits};
//! use ringcast_codec::{Role, Split};
//!
//! // The handshake: Chrome's offer, the server's answer.
//! let config = ServerDeflateConfig::new().min_message_size(0);
//! let negotiated = config.negotiate(["permessage-deflate; client_max_window_bits"]).unwrap();
//! assert_eq!(negotiated.response_header_value(), "permessage-deflate; server_no_context_takeover; client_no_context_takeover");
//! let params = negotiated.params();
//!
//! // A broadcast: compressed once for every subscriber with these parameters.
//! let text = r#"{"price":101.25,"symbol":"ABC"},"#.repeat(20);
//! let mut compressor = BroadcastCompressor::new(&config);
//! let bits = variant_window_bits(params.outgoing(Role::Server).window_bits, text.len());
//! let message = compressor.prepare_text(&text, Split::Whole, bits).expect("repetitive text compresses");
//! assert!(message.is_compressed() && message.as_bytes().len() < text.len());
//!
//! // The subscriber's side: inflate the payload (after the 2-byte header) under a limit.
//! let mut inflater = Inflater::new(params.incoming(Role::Client));
//! let mut out = Vec::new();
//! inflater.inflate(&message.as_bytes()[2..], true, &mut out, 1 << 20)?;
//! assert_eq!(out, text.as_bytes());
//! # Ok::<(), ringcast_codec::deflate::InflateError>(())
//! ```

mod compress;
mod inflate;
mod negotiate;

use std::fmt;

pub use compress::{BroadcastCompressor, CompressError, CompressedVariants, Compressor, variant_window_bits};
pub use inflate::{INFLATE_HEAP_BYTES, InflateError, Inflater};
pub use negotiate::{
    ClientDeflateConfig, DeflateParams, Direction, EXTENSION_NAME, ExtensionResponseError, Negotiated,
    ServerDeflateConfig,
};

/// The four bytes a sync flush ends with (an empty stored block), removed by the sender and
/// appended again by the receiver (RFC 7692 §7.2.1, §7.2.2).
pub const DEFLATE_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The base-2 logarithm of an LZ77 sliding window, 8 to 15 as RFC 7692 §7.1.2 allows.
///
/// ```
/// use ringcast_codec::deflate::WindowBits;
/// assert_eq!(WindowBits::new(10).unwrap().window_size(), 1024);
/// assert_eq!(WindowBits::new(16), None);
/// assert_eq!(WindowBits::default(), WindowBits::MAX);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WindowBits(u8);

impl WindowBits {
    /// 256 bytes, the smallest window RFC 7692 allows.
    pub const MIN: WindowBits = WindowBits(8);
    /// 32 KiB, the DEFLATE maximum and the default when a parameter is absent.
    pub const MAX: WindowBits = WindowBits(15);

    /// `bits` as a window, if it is within 8..=15.
    pub const fn new(bits: u8) -> Option<WindowBits> {
        if bits >= Self::MIN.0 && bits <= Self::MAX.0 { Some(WindowBits(bits)) } else { None }
    }

    /// The base-2 logarithm.
    pub const fn get(self) -> u8 {
        self.0
    }

    /// The window in bytes.
    pub const fn window_size(self) -> usize {
        1 << self.0
    }

    /// The smaller of two windows.
    pub const fn min(self, other: WindowBits) -> WindowBits {
        if self.0 <= other.0 { self } else { other }
    }

    /// The window zlib works with: zlib cannot run a 256-byte window and uses 512 bytes
    /// instead. That is still a valid window-8 sender, because zlib's deflate never reaches
    /// further back than the window size minus 262 bytes (`MAX_DIST`): 250 bytes at 9 bits.
    /// A receiver may always use a larger window than the sender's.
    pub(crate) const fn zlib_bits(self) -> u8 {
        if self.0 < 9 { 9 } else { self.0 }
    }

    /// Index into per-window tables (8 → 0 … 15 → 7).
    pub(crate) const fn index(self) -> usize {
        (self.0 - Self::MIN.0) as usize
    }

    /// The number of distinct windows.
    pub(crate) const COUNT: usize = (Self::MAX.0 - Self::MIN.0 + 1) as usize;
}

impl Default for WindowBits {
    fn default() -> Self {
        WindowBits::MAX
    }
}

impl fmt::Display for WindowBits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A DEFLATE compression level: 0 (stored, no compression) to 9 (smallest output, slowest).
///
/// ```
/// use ringcast_codec::deflate::CompressionLevel;
/// assert_eq!(CompressionLevel::default(), CompressionLevel::new(6).unwrap());
/// assert_eq!(CompressionLevel::new(10), None);
/// assert_eq!("1".parse(), Ok(CompressionLevel::FAST));
/// assert!("10".parse::<CompressionLevel>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CompressionLevel(u8);

impl CompressionLevel {
    /// Level 0: stored blocks only (framing overhead, no compression).
    pub const NONE: CompressionLevel = CompressionLevel(0);
    /// Level 1: the fastest compression.
    pub const FAST: CompressionLevel = CompressionLevel(1);
    /// Level 6: zlib's default balance of speed and size.
    pub const DEFAULT: CompressionLevel = CompressionLevel(6);
    /// Level 9: the smallest output.
    pub const BEST: CompressionLevel = CompressionLevel(9);

    /// `level` if it is within 0..=9.
    pub const fn new(level: u8) -> Option<CompressionLevel> {
        if level <= 9 { Some(CompressionLevel(level)) } else { None }
    }

    /// The level as a number.
    pub const fn get(self) -> u8 {
        self.0
    }
}

/// A compression level given as text that is not a number from 0 to 9.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a compression level is a number from 0 to 9, not {0:?}")]
pub struct InvalidCompressionLevel(String);

impl std::str::FromStr for CompressionLevel {
    type Err = InvalidCompressionLevel;

    /// `"0"` to `"9"`, as a command line gives it.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.parse().ok().and_then(CompressionLevel::new).ok_or_else(|| InvalidCompressionLevel(text.to_owned()))
    }
}

impl Default for CompressionLevel {
    fn default() -> Self {
        CompressionLevel::DEFAULT
    }
}

#[cfg(test)]
mod tests;
