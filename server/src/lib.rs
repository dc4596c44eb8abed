//! ringcast: a WebSocket fan-out server on io_uring.
//!
//! One worker thread per core, each with its own runtime (tokio-uring, or tokio's epoll
//! reactor where io_uring is unavailable), its own `SO_REUSEPORT` listener and its own
//! connection table. A broadcast is encoded once ([`PreparedMessage`]), sent to each
//! worker as one command, and queued on every selected connection as a shared reference
//! to the same bytes; each connection writes everything queued with one `writev`.
//!
//! # Example: a chat relay
//!
//! ```no_run
//! use ringcast::{Connection, Handler, Server};
//!
//! struct Chat;
//!
//! impl Handler for Chat {
//!     type Data = ();
//!     fn on_text(&self, conn: &mut Connection<'_, Self>, text: &str) {
//!         conn.relay_text(text); // to everyone but the sender, on every worker
//!     }
//! }
//!
//! let server = Server::builder().port(8888).path("/chat").start(Chat)?;
//! server.broadcast_text("welcome"); // from any thread
//! server.stop(); // close 1001 to every client, bounded drain
//! # Ok::<(), ringcast::StartError>(())
//! ```
//!
//! Events, per-connection user data ([`Handler::Data`]), the five reference options
//! ([`Options`]), selectors over connections ([`Broadcaster::send_text_to`]) and
//! frame splitting ([`ServerBuilder::split_messages`]) are described on their items.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod config;
mod connection;
mod handler;
mod http;
mod io;
mod out_frame;
mod server;
mod shard;
mod stats;
mod tls;

pub use config::{Config, DEFAULT_PORT, IoBackend, Options, ServerBuilder, SlowConsumerPolicy, TlsFiles};
pub use connection::{Connection, ConnectionId, ConnectionRef, SendError};
pub use handler::{Allow, DisconnectReason, Frame, Handler};
pub use http::{HttpRequest, HttpResponse};
pub use server::{Backend, Broadcaster, Selector, Server, ServerHandle, StartError};
pub use stats::{Counter, LATENCY_BUCKETS, ShardStats, Stats};
pub use tls::TlsError;

pub use ringcast_codec as codec;
pub use ringcast_codec::handshake::Request;
pub use ringcast_codec::{CloseCode, CloseFrame, OpCode, PreparedMessage, Split};
