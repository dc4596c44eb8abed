//! The handles a handler sees: [`Connection`] during an event, [`ConnectionRef`] in a
//! selector. Both are thin views over the shard's connection state.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use ringcast_codec::handshake::Request;
use ringcast_codec::{CloseCode, OpCode, PreparedMessage};

use crate::access::{Access, Denied};
use crate::api::broadcaster::{Broadcast, Broadcaster};
use crate::api::target::{Message, Target};
use crate::config::Config;
use crate::conn::{Conn, OutFrame, Outbound, Overflow, Refused};
use crate::event::SendError;
use crate::id::ConnectionId;
use crate::stats::ShardStats;
use crate::topics::TopicIndex;
use ringcast_codec::deflate::{BroadcastCompressor, WindowBits, variant_window_bits};

/// The parts of a shard a handler reaches through its [`Connection`].
pub(crate) struct ShardView<D> {
    pub(crate) config: Arc<Config>,
    pub(crate) broadcaster: Broadcaster<D>,
    pub(crate) topics: TopicIndex,
    pub(crate) stats: Arc<ShardStats>,
    /// The time of the event being handled.
    pub(crate) now: Instant,
    /// This shard's index.
    pub(crate) index: usize,
    /// Compresses once per message for this shard (created on first use).
    pub(crate) compressor: Option<BroadcastCompressor>,
    /// Sends a handler made to this shard's own connections, applied as soon as the
    /// handler returns (before anything else the shard does).
    pub(crate) deferred: Vec<(Arc<Broadcast>, Target<D>)>,
    /// The handler's [`Handler::check`](crate::Handler::check).
    pub(crate) check: Checker<D>,
}

/// [`Handler::check`](crate::Handler::check) of the shard's handler, callable where only
/// the data type is known.
pub(crate) type Checker<D> = Box<dyn Fn(&ConnectionRef<'_, D>, Access<'_>) -> Result<(), Denied>>;

impl<D> ShardView<D> {
    /// Runs `f` on `conn` with the configuration and the event's time. (The shard's
    /// gauges follow the connection when the handler returns; see `Shard::settle`.)
    pub(crate) fn tracked<R>(&self, conn: &mut Conn<D>, f: impl FnOnce(&mut Conn<D>, &Config, Instant) -> R) -> R {
        f(conn, &self.config, self.now)
    }

    /// The compressed variant of `message` for a connection with `window`, if it pays.
    pub(crate) fn compress(&mut self, message: &PreparedMessage, window: WindowBits) -> Option<PreparedMessage> {
        if message.is_compressed() || !matches!(message.opcode(), OpCode::Text | OpCode::Binary) {
            return None;
        }
        let payload = message.payload();
        let window = variant_window_bits(window, payload.len());
        let compressor = self.compressor.get_or_insert_with(|| BroadcastCompressor::new(&self.config.deflate));
        let split = self.config.split;
        self.stats.compressions.add(1);
        compress_payload(compressor, message.opcode() == OpCode::Text, &payload, split, window)
    }

    /// Counts the outcome of queuing one delivery.
    pub(crate) fn count(&self, result: Result<(), Refused>) -> Result<(), SendError> {
        match result {
            Ok(()) => self.stats.messages_out.add(1),
            Err(Refused::Full(Overflow::Dropped)) => self.stats.dropped_messages.add(1),
            Err(Refused::Full(Overflow::Disconnecting)) => self.stats.slow_consumer_disconnects.add(1),
            Err(Refused::Error(_)) => {}
        }
        result.map_err(SendError::from)
    }
}

/// The compressed variant of a message's payload, or `None` to send it plain (not worth
/// it, or a text payload that is not UTF-8, which only a raw frame could carry).
pub(crate) fn compress_payload(
    compressor: &mut BroadcastCompressor,
    text: bool,
    payload: &[u8],
    split: ringcast_codec::Split,
    window: WindowBits,
) -> Option<PreparedMessage> {
    if text {
        compressor.prepare_text(std::str::from_utf8(payload).ok()?, split, window)
    } else {
        compressor.prepare_binary(payload, split, window)
    }
}

/// A connection, as handlers see it during an event.
///
/// Sends queue bytes on the connection; they are written when the event returns,
/// batched with everything else the shard queued in the same turn of its loop.
pub struct Connection<'a, D> {
    pub(crate) conn: &'a mut Conn<D>,
    pub(crate) shard: &'a mut ShardView<D>,
}

impl<D> Connection<'_, D> {
    /// This connection's server-wide id.
    pub fn id(&self) -> ConnectionId {
        self.conn.id()
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.conn.peer()
    }

    /// The upgrade request. Available in [`Handler::on_handshake_response_sent`]; after
    /// that only if the server keeps requests
    /// ([`ServerBuilder::keep_request`](crate::ServerBuilder::keep_request)), since a
    /// request head costs hundreds of bytes per idle connection. Copy what you need into
    /// [`Connection::data_mut`] instead.
    ///
    /// [`Handler::on_handshake_response_sent`]: crate::Handler::on_handshake_response_sent
    pub fn request(&self) -> Option<&Request> {
        self.conn.request()
    }

    /// The connection's user data.
    pub fn data(&self) -> &D {
        &self.conn.data
    }

    /// The connection's user data, mutably.
    pub fn data_mut(&mut self) -> &mut D {
        &mut self.conn.data
    }

    /// Whether the connection is open for data (upgraded, no close sent).
    pub fn is_open(&self) -> bool {
        self.conn.is_open()
    }

    /// Queues a message on this connection (split into frames if the server is
    /// configured to). Text is encoded only if the connection can take it.
    pub fn send<'m>(&mut self, message: impl Into<Message<'m>>) -> Result<(), SendError> {
        if !self.conn.is_open() {
            return Err(SendError::NotOpen);
        }
        let prepared = message.into().prepare(self.shard.config.split);
        let bytes = match self.conn.deflate_window() {
            // One message for one connection: compressed for it, if that pays.
            Some(window) => self.shard.compress(&prepared, window).unwrap_or(prepared).into_bytes(),
            None => prepared.into_bytes(),
        };
        let frame = OutFrame::single(bytes, self.shard.now);
        let result =
            self.shard.tracked(self.conn, |conn, config, now| conn.send_data(frame, Outbound::Message, config, now));
        self.shard.count(result)
    }

    /// Sends `message` to the connections `target` picks, on every shard (this
    /// connection included if the target includes it): e.g.
    /// `conn.send_to(Target::AllExcept(conn.id()), text)` relays to everyone else.
    ///
    /// This shard's own connections get it as soon as the handler returns, before the
    /// shard handles anything else; other shards get it through their mailboxes.
    pub fn send_to<'m>(&mut self, target: Target<D>, message: impl Into<Message<'m>>) {
        let deflate = self.shard.config.deflate.is_enabled();
        let message = Arc::new(Broadcast::new(message.into(), self.shard.config.split, deflate, self.shard.now));
        if let Some(local) = self.shard.broadcaster.route(Some(self.shard.index), message, target) {
            self.shard.deferred.push(local);
        }
    }

    /// Sends `message` to the connections `selector` picks, on every shard:
    /// `send_to(Target::select(selector), message)`.
    pub fn send_where<'m>(
        &mut self,
        selector: impl Fn(&ConnectionRef<'_, D>) -> bool + Send + Sync + 'static,
        message: impl Into<Message<'m>>,
    ) {
        self.send_to(Target::select(selector), message);
    }

    /// Queues one raw frame with the given opcode and FIN bit, for applications that
    /// stream fragments themselves (e.g. in frame-by-frame mode). Other messages queued
    /// meanwhile wait for the last fragment; control frames may go between.
    pub fn send_frame(&mut self, opcode: OpCode, fin: bool, payload: &[u8]) -> Result<(), SendError> {
        if opcode.is_control() && (payload.len() > 125 || !fin) {
            return Err(SendError::ControlTooLong);
        }
        match opcode {
            OpCode::Close => {
                let frame = PreparedMessage::frame(OpCode::Close, true, payload).into_bytes();
                self.shard.tracked(self.conn, |conn, config, now| conn.close(frame, config, now))
            }
            OpCode::Ping => self.ping(payload),
            OpCode::Pong => self.pong(payload),
            _ => {
                if !self.conn.is_open() {
                    return Err(SendError::NotOpen);
                }
                let frame = OutFrame::single(PreparedMessage::frame(opcode, fin, payload).into_bytes(), self.shard.now);
                let result = self.shard.tracked(self.conn, |conn, config, now| {
                    conn.send_data(frame, Outbound::Fragment { fin }, config, now)
                });
                self.shard.count(result)
            }
        }
    }

    /// Queues a ping.
    pub fn ping(&mut self, payload: &[u8]) -> Result<(), SendError> {
        let result = self.shard.tracked(self.conn, |conn, config, now| conn.send_ping(payload, config, now));
        result.map_err(SendError::from)
    }

    /// Queues a pong (needed only with [`Options::manual_pong`](crate::Options::manual_pong)).
    pub fn pong(&mut self, payload: &[u8]) -> Result<(), SendError> {
        let result = self.shard.tracked(self.conn, |conn, config, now| conn.send_pong(payload, config, now));
        result.map_err(SendError::from)
    }

    /// Starts the closing handshake with `code` and `reason` (cut to 123 bytes), or
    /// answers the peer's close with them. The connection ends when the peer replies, or
    /// after the close timeout.
    pub fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), SendError> {
        let frame = PreparedMessage::close(code, reason).into_bytes();
        self.shard.tracked(self.conn, |conn, config, now| conn.close(frame, config, now))
    }

    /// Drops the TCP connection at once, without a closing handshake.
    pub fn abort(&mut self) {
        self.shard.tracked(self.conn, |conn, _, _| conn.abort());
    }

    /// Subscribes this connection to `topic`: messages sent to
    /// [`Target::Topic`] (from any shard) reach it. Returns `false` if it was already
    /// subscribed, is not open, or [`Handler::check`](crate::Handler::check) refused it
    /// ([`Connection::try_subscribe`] says why).
    pub fn subscribe(&mut self, topic: &str) -> bool {
        self.try_subscribe(topic).unwrap_or(false)
    }

    /// Subscribes this connection to `topic` if [`Handler::check`](crate::Handler::check)
    /// allows [`Access::Subscribe`]; `Err` carries the handler's reason, and nothing is
    /// subscribed. `Ok(false)`: it was already subscribed or is not open.
    pub fn try_subscribe(&mut self, topic: &str) -> Result<bool, Denied> {
        if !self.conn.is_open() || self.conn.is_subscribed(topic) {
            return Ok(false);
        }
        self.check(Access::Subscribe(topic))?;
        let name = self.shard.topics.insert(topic, self.conn.id());
        self.conn.add_topic(name);
        Ok(true)
    }

    /// Publishes `message` to the subscribers of `topic` on behalf of this connection's
    /// client, if [`Handler::check`](crate::Handler::check) allows [`Access::Publish`]:
    /// then it is `send_to(Target::topic(topic), message)`. `Err` carries the handler's
    /// reason, and nothing is sent.
    pub fn publish<'m>(&mut self, topic: &str, message: impl Into<Message<'m>>) -> Result<(), Denied> {
        self.check(Access::Publish(topic))?;
        self.send_to(Target::topic(topic), message);
        Ok(())
    }

    /// Asks [`Handler::check`](crate::Handler::check) whether this connection may do
    /// `access`, without doing it.
    pub fn check(&self, access: Access<'_>) -> Result<(), Denied> {
        (self.shard.check)(&ConnectionRef { conn: self.conn }, access)
    }

    /// Unsubscribes this connection from `topic`. Returns `false` if it was not subscribed.
    pub fn unsubscribe(&mut self, topic: &str) -> bool {
        if !self.conn.remove_topic(topic) {
            return false;
        }
        self.shard.topics.remove(topic, self.conn.id());
        true
    }

    /// The topics this connection is subscribed to.
    pub fn topics(&self) -> impl Iterator<Item = &str> {
        self.conn.topics()
    }

    /// A handle for sending to any connection from anywhere, e.g. another thread.
    pub fn broadcaster(&self) -> &Broadcaster<D> {
        &self.shard.broadcaster
    }
}

/// A read-only view of a connection, given to selectors.
pub struct ConnectionRef<'a, D> {
    pub(crate) conn: &'a Conn<D>,
}

impl<D> ConnectionRef<'_, D> {
    /// The connection's id.
    pub fn id(&self) -> ConnectionId {
        self.conn.id()
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.conn.peer()
    }

    /// The upgrade request, if the server keeps requests (see [`Connection::request`]).
    pub fn request(&self) -> Option<&Request> {
        self.conn.request()
    }

    /// The connection's user data.
    pub fn data(&self) -> &D {
        &self.conn.data
    }

    /// The topics the connection is subscribed to.
    pub fn topics(&self) -> impl Iterator<Item = &str> {
        self.conn.topics()
    }
}
