//! A sans-IO implementation of the WebSocket protocol (RFC 6455).
//!
//! This crate never touches a socket: it turns bytes into events and messages into
//! bytes, so every rule is tested byte for byte and the same code serves the io_uring
//! server, the epoll fallback, the tokio client and the fuzzers.
//!
//! - [`handshake`]: the HTTP/1.1 upgrade, for servers ([`handshake::Request`],
//!   [`handshake::validate_upgrade`]) and clients ([`handshake::ClientHandshake`]).
//! - [`Decoder`]: incremental frame parsing straight out of the caller's input, in-place
//!   SIMD unmasking ([`apply_mask`]) and message assembly with UTF-8 validation across
//!   fragments. Whole frames are handed out as borrowed slices of the input; only a frame
//!   or message the input ends inside is copied, into memory the decoder owns.
//! - [`PreparedMessage`]: a message encoded once — optionally [split](Split) into
//!   frames no larger than a given size, header included — into shareable [`bytes::Bytes`].
//! - [`deflate`]: permessage-deflate (RFC 7692): negotiation, compression once per
//!   broadcast, and inflation under a size limit.
//!
//! # Example: a server's view of one connection
//!
//! ```
//! use ringcast_codec::handshake::{self, Request, RequestParse, UpgradeChecks};
//! use ringcast_codec::{Decoder, DecoderConfig, Incoming, PreparedMessage, Role, Split};
//!
//! // 1. The upgrade request (RFC 6455 §1.3).
//! let head = b"GET /chat HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\
//!     Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
//!     Sec-WebSocket-Version: 13\r\n\r\n";
//! let RequestParse::Complete { request, .. } = Request::parse(head)? else { unreachable!() };
//! let accept = handshake::validate_upgrade(&request, UpgradeChecks::default())?;
//! let response = handshake::accept_response(&accept, None, "");
//! assert!(response.starts_with(b"HTTP/1.1 101"));
//!
//! // 2. Frames from the client: a masked "Hello" (RFC 6455 §5.7).
//! let mut decoder = Decoder::new(DecoderConfig::new(Role::Server));
//! let mut read = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
//! let mut input = &mut read[..]; // e.g. a receive buffer the kernel filled
//! assert_eq!(decoder.decode(&mut input)?, Some(Incoming::Text("Hello".into())));
//! assert_eq!(decoder.decode(&mut input)?, None); // all consumed; nothing held
//! assert!(!decoder.is_mid_message());
//!
//! // 3. A reply, encoded once and shareable between any number of connections.
//! let reply = PreparedMessage::text("Hello back", Split::Whole);
//! assert_eq!(&reply.as_bytes()[..2], &[0x81, 10]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Unsafe code
//!
//! The crate denies `unsafe` except in two modules, and no invariant of an `unsafe`
//! block rests on what a caller of a safe function does (audited for the issue that
//! removed the last one):
//!
//! | where | what | why no safe caller can break it |
//! | --- | --- | --- |
//! | `mask.rs`, the SIMD kernels | unaligned loads and stores of 16/32-byte lanes | each lane is a chunk of exactly that size from `chunks_exact_mut` of the caller's slice; the CPU feature is the x86_64/aarch64 baseline (SSE2, NEON) or detected at run time (AVX2) before the call, and [`MaskKernel::apply`] asserts it, panicking instead |
//! | `utf8.rs`, [`Utf8Bytes::as_str`] | `from_utf8_unchecked` | every constructor validates, takes a `str`, or is crate-private (`from_validated`), whose two callers hand it bytes the crate validated itself in memory no caller can write to in between: a message the [`Decoder`] gathered into its own buffer, or a slice [`Decoder::decode_buf`] validated as `&str` and froze without writing to it |
//!
//! Until that audit, `MessageAssembler::push_checked` was public and safe and trusted its
//! caller's claim that a prefix was validated, and the decoder leaned on the same claim
//! across calls over a buffer the caller owned: a sequence of safe calls could build a
//! `&str` over invalid UTF-8. The assembler is gone (the [`Decoder`] assembles messages
//! in memory it owns), and the `utf8_soundness` fuzz target checks every text the public
//! API hands out while the caller scribbles over its own buffer between calls.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod decoder;
pub mod deflate;
mod error;
pub mod frame;
pub mod handshake;
mod mask;
mod message;
mod prepared;
mod protocol;
mod utf8;

pub use decoder::{Decoder, DecoderConfig};
pub use error::ProtocolError;
pub use frame::{FrameHeader, FrameRules, HeaderParse};
pub use mask::{MaskKernel, apply_mask};
pub use message::{Assembly, CloseFrame, Incoming, Payload, Text};
pub use prepared::{
    FrameSizeError, MIN_FRAME_SIZE, PreparedMessage, Split, close_payload, encode_masked_frame,
    encode_masked_frame_with_rsv,
};
pub use protocol::{CloseCode, OpCode, Role};
pub use utf8::{Utf8Bytes, Utf8Error, Utf8Validator};

pub use bytes;
