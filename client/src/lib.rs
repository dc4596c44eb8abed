//! An async WebSocket client (RFC 6455) on plain tokio, for `ws://` and `wss://`.
//!
//! - **Connecting is asynchronous, and sending before the handshake is impossible by
//!   construction**: [`connect`] resolves once the server has accepted the upgrade, and
//!   only then hands out a [`Sender`].
//! - Two styles: the async one — a cloneable [`Sender`] and a [`Receiver`] that is a
//!   [`Stream`](futures_core::Stream) of [`Message`]s — and an event-handler one for people
//!   coming from component libraries: implement [`EventHandler`] (`on_connect`, `on_text`,
//!   `on_binary`, `on_ping`, `on_pong`, `on_close`, `on_disconnect`) and call [`spawn`].
//! - Protocol duties are done for you: every frame is masked with a fresh random key
//!   (SIMD masking from `ringcast-codec`), pings are answered, fragments reassembled, text
//!   validated as UTF-8 (across fragments, failing fast), close frames answered, and a
//!   misbehaving server gets the right close code (1002, 1007, 1009).
//! - Disconnect with or without a close frame: [`Sender::disconnect`] sends code
//!   1000 and waits (bounded) for the answer; [`Sender::abort`] just ends the TCP
//!   connection.
//! - Clear errors, never a hang: every step is bounded by a timeout, and each failure is
//!   its own [`Error`] variant — [`Error::ConnectionRefused`], [`Error::Dns`],
//!   [`Error::HandshakeRefused`] with the HTTP status, [`Error::BadAcceptKey`],
//!   [`Error::ServerSpeaksTls`] (a `ws://` client at a TLS port),
//!   [`Error::ServerNotTls`] (a `wss://` client at a plain port), [`Error::Timeout`] with
//!   the [`Stage`] that took too long.
//! - TLS by `rustls` with the `ring` provider: the platform's roots plus optional extra
//!   ones ([`ClientConfig::extra_root_file`]), SNI from the host name, and a loudly named
//!   opt-out for self-signed test servers ([`ClientConfig::danger_accept_invalid_certs`]).
//!
//! # Example
//!
//! Against a small echo server started in the example itself:
//!
//! ```
//! # use ringcast_codec::handshake::{self, Request, RequestParse, UpgradeChecks};
//! # use ringcast_codec::{Decoder, DecoderConfig, Incoming, OpCode, PreparedMessage, Role, Split};
//! # use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! # /// Accepts one connection and echoes its text messages until it closes.
//! # async fn echo_server() -> std::io::Result<u16> {
//! #     let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! #     let port = listener.local_addr()?.port();
//! #     tokio::spawn(async move {
//! #         let (mut socket, _) = listener.accept().await.unwrap();
//! #         let mut buf = bytes::BytesMut::with_capacity(4096);
//! #         loop {
//! #             socket.read_buf(&mut buf).await.unwrap();
//! #             if let RequestParse::Complete { request, head_len } = Request::parse(&buf).unwrap() {
//! #                 let accept = handshake::validate_upgrade(&request, UpgradeChecks::default()).unwrap();
//! #                 socket.write_all(&handshake::accept_response(&accept, None, "")).await.unwrap();
//! #                 let _ = buf.split_to(head_len);
//! #                 break;
//! #             }
//! #         }
//! #         let mut decoder = Decoder::new(DecoderConfig::new(Role::Server));
//! #         loop {
//! #             while let Some(incoming) = decoder.decode_buf(&mut buf).unwrap() {
//! #                 let reply = match incoming {
//! #                     Incoming::Text(text) => PreparedMessage::text(&text, Split::Whole),
//! #                     Incoming::Close(_) => PreparedMessage::close(CloseCode::Normal, ""),
//! #                     _ => continue,
//! #                 };
//! #                 socket.write_all(reply.as_bytes()).await.unwrap();
//! #                 if reply.opcode() == OpCode::Close {
//! #                     return;
//! #                 }
//! #             }
//! #             if socket.read_buf(&mut buf).await.unwrap() == 0 {
//! #                 return;
//! #             }
//! #         }
//! #     });
//! #     Ok(port)
//! # }
//! use ringcast_client::{ClientConfig, CloseCode, Message};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let port = echo_server().await?;
//! let config = ClientConfig::new("127.0.0.1", port).path("/echo");
//! let (sender, mut receiver) = ringcast_client::connect(&config).await?;
//!
//! sender.send_text("hello").await?;
//! assert_eq!(receiver.next().await.transpose()?, Some(Message::text("hello")));
//!
//! // Close with code 1000; the stream ends with the server's answer.
//! sender.disconnect().await;
//! let Some(Ok(Message::Close(Some(frame)))) = receiver.next().await else { panic!("no close") };
//! assert_eq!(frame.code, CloseCode::Normal);
//! assert!(receiver.next().await.is_none());
//! # Ok(())
//! # }
//! ```
//!
//! For `wss://`, parse the URL or turn TLS on: `ClientConfig::from_url("wss://host/path")`,
//! or `ClientConfig::new(host, 443).tls(true)`.
//!
//! # Cost per connection
//!
//! One task per connection owns the socket; the [`Sender`] masks frames in the calling
//! task and queues them, and the task writes everything queued with one vectored write.
//! A connection holds a read buffer ([`ClientConfig::read_buffer_size`], 4 KiB by default)
//! and two bounded queues; no lock is taken per message.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod config;
mod connect;
mod connection;
mod error;
mod handler;
mod message;
mod tls;

pub use config::{ClientConfig, DEFAULT_MAX_MESSAGE_SIZE};
pub use connect::connect;
pub use connection::{Receiver, Sender};
pub use error::{Error, Stage};
pub use handler::{ClientHandle, DisconnectReason, EventHandler, spawn};
pub use message::{MAX_CONTROL_PAYLOAD, Message};

pub use bytes::Bytes;
pub use ringcast_codec::deflate::{
    ClientDeflateConfig, CompressionLevel, DeflateParams, ExtensionResponseError, WindowBits,
};
pub use ringcast_codec::{CloseCode, CloseFrame, ProtocolError, Utf8Bytes};
pub use rustls;

/// The README's examples, compiled (and where they can, run) as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
