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
//! # History and recovery
//!
//! [`Broadcaster::publish`] sends to a topic's subscribers as a *stream*: each message gets
//! an offset and is kept in a bounded history ([`ServerBuilder::history`], off by
//! default), and [`Connection::subscribe_from`] subscribes from a [`Since`] — the last
//! message a reconnecting client received, or the last N — replaying what it missed and
//! then switching to live messages with no gap and no duplicate (the argument is in
//! `api/recovery.rs`). [`Broadcaster::publish_at`] and [`Broadcaster::backfill`] take
//! positions assigned elsewhere, e.g. by a cluster's shared store.
//!
//! # Who may connect, subscribe and publish
//!
//! [`Handler::authenticate`] decides the upgrade with the connection's id and data at
//! hand, so the identity a token establishes is kept with the connection;
//! [`Handler::check`] then decides each [`Connection::subscribe`] and
//! [`Connection::publish`] ([`Access`], refused with a [`Denied`] reason), and
//! [`Broadcaster::visit`] acts on connections from any thread, e.g. to close those whose
//! credentials expired. The `ringcast` service's token and channel rules are one
//! implementation of these hooks.
//!
//! Events, per-connection user data ([`Handler::Data`]), the five reference options
//! ([`Options`]) and frame splitting ([`ServerBuilder::split_messages`]) are described on
//! their items.
//!
//! # Layout
//!
//! The modules form layers, each importing only from those below it:
//!
//! | layer | modules | what |
//! | --- | --- | --- |
//! | vocabulary | `id`, `event`, `access`, `config`, `stats`, `topics` | ids, reasons, decisions, errors, settings, counters: no logic |
//! | history | `history` | every stream's offsets, epoch and kept messages (one lock), bounded by count, age and memory: no I/O, no shards |
//! | connection | `conn` | the sans-IO state machine of one connection and its send queue: bytes, time and write completions in; events, frames to write, deadlines and the end out; tested in memory with a virtual clock |
//! | handles | `api` | what handlers and other threads hold: [`Connection`], [`ConnectionRef`], [`Target`], [`Message`], [`Broadcaster`] (and the shards' mailboxes), [`HttpRequest`] |
//! | events | `handler` | the [`Handler`] trait |
//! | shard | `shard` | the backend-independent half of a worker: the connection table, handler calls, fan-out, timers, stop |
//! | drivers | `io` | the two loops that own the sockets: `io::uring` (completions) and `io::epoll` (readiness), plus TLS |
//! | start | `server` | threads, listeners, [`ServerHandle`] |
//!
//! The handles are generic over the handler's `Data`, not the handler, which is what
//! lets the connection layer and the handles sit below the handler and the shard.
//!
//! # Unsafe code
//!
//! Only the io_uring driver (`io::uring`) and the heap trim (`io::memory`) use it; each
//! block says which owner keeps the memory alive or why the call is sound:
//! - pushing SQEs whose buffers, headers and descriptors the kernel uses later (kept by
//!   the connection's slot, or the driver, until the completion);
//! - the provided-buffer ring: allocating and registering it, publishing its tail,
//!   making slices of buffers the kernel handed back, and handing cold buffers' pages
//!   back with `madvise`;
//! - taking ownership of a descriptor returned by accept, and a zeroed `msghdr`;
//! - `malloc_trim` (glibc) when a shard goes quiet after heavy traffic.
//!
//! Every test of the suite runs on the io_uring backend as well as on epoll, and
//! `io::uring`'s unit tests cover the buffer ring's bookkeeping.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod access;
mod api;
mod config;
mod conn;
mod event;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod handler;
mod history;
mod id;
mod io;
mod server;
mod shard;
mod stats;
mod topics;

pub use access::{Access, Denied};
pub use api::{
    Broadcaster, Connection, ConnectionRef, ConnectionTask, HistoryUsage, HttpRequest, HttpResponse, Message, Selector,
    Target,
};
pub use config::{Config, DEFAULT_PORT, IoBackend, Options, ServerBuilder, SlowConsumerPolicy, TlsFiles};
pub use event::{Allow, DisconnectReason, Frame, SendError};
pub use handler::Handler;
pub use history::{Appended, Epoch, EpochParseError, HistoryConfig, NotRecovered, Position, Recovery, Since};
pub use id::ConnectionId;
pub use io::tls::TlsError;
pub use server::{Backend, Server, ServerHandle, StartError};
pub use stats::{Counter, LATENCY_BUCKETS, ShardStats, Stats};

pub use ringcast_codec as codec;
pub use ringcast_codec::deflate::{CompressionLevel, ServerDeflateConfig};
pub use ringcast_codec::handshake::Request;
pub use ringcast_codec::{CloseCode, CloseFrame, OpCode, PreparedMessage, Split};
