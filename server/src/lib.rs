//! ringcast: a WebSocket fan-out server on io_uring.
//!
//! Each shard is one thread running an explicit event loop over its own io_uring (or,
//! where io_uring is unavailable, the same loop over epoll readiness): multishot accept
//! on its own `SO_REUSEPORT` listener, multishot recv into one shared pool of receive
//! buffers, and every write of a loop turn submitted together with the wait for
//! completions. A connection is a slot in the shard's table holding a sans-IO state
//! machine — decoder, send queue, deadlines, your per-connection data — with no task and
//! no buffer of its own while idle. A broadcast is encoded once and the same bytes are
//! queued on every subscriber.
//!
//! # Example: a chat relay
//!
//! ```no_run
//! use ringcast::{Connection, Handler, Server, Target};
//!
//! struct Chat;
//!
//! impl Handler for Chat {
//!     type Data = ();
//!     fn on_text(&self, conn: &mut Connection<'_, ()>, text: &str) {
//!         // To everyone but the sender, on every shard.
//!         conn.send_to(Target::AllExcept(conn.id()), text);
//!     }
//! }
//!
//! let server = Server::builder().port(8888).path("/chat").start(Chat)?;
//! server.broadcast("welcome"); // from any thread
//! server.stop(); // close 1001 to every client, bounded drain
//! # Ok::<(), ringcast::StartError>(())
//! ```
//!
//! # Sending
//!
//! There is one send path: a [`Message`] (`&str` is text, `&[u8]` binary, or a
//! [`PreparedMessage`] encoded once) and a [`Target`]: [`Broadcaster::send`] from
//! anywhere, [`Connection::send`] to the connection an event is about, and
//! [`Connection::send_to`] to others from inside a handler. The reference component's
//! `BroadcastMessage`/`BroadcastData` are [`Broadcaster::broadcast`], and
//! `SendMessageTo`/`SendDataTo` are [`Broadcaster::send_where`].
//!
//! Events, per-connection user data ([`Handler::Data`]), the five reference options
//! ([`Options`]) and frame splitting ([`ServerBuilder::split_messages`]) are described on
//! their items.
//!
//! # Layout
//!
//! `conn` is the sans-IO connection (tested in memory with a virtual clock), `shard` the
//! backend-independent table, handler calls, fan-out and timers, `io` the two drivers
//! (the only code that touches sockets, and the crate's only `unsafe`, in `io::uring`),
//! and `api` the handles handlers and other threads hold.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod api;
mod config;
mod conn;
mod event;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod handler;
mod id;
mod io;
mod server;
mod shard;
mod stats;
mod topics;

pub use api::{Broadcaster, Connection, ConnectionRef, HttpRequest, HttpResponse, Message, Selector, Target};
pub use config::{Config, DEFAULT_PORT, IoBackend, Options, ServerBuilder, SlowConsumerPolicy, TlsFiles};
pub use event::{Allow, DisconnectReason, Frame, SendError};
pub use handler::Handler;
pub use id::ConnectionId;
pub use io::tls::TlsError;
pub use server::{Backend, Server, ServerHandle, StartError};
pub use stats::{Counter, LATENCY_BUCKETS, ShardStats, Stats};

pub use ringcast_codec as codec;
pub use ringcast_codec::handshake::Request;
pub use ringcast_codec::{CloseCode, CloseFrame, OpCode, PreparedMessage, Split};
