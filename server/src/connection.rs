//! Connections: the state a shard keeps for each, and the handles handlers see.

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::Waker;
use std::time::Instant;

use bytes::Bytes;
use ringcast_codec::handshake::Request;
use ringcast_codec::{CloseCode, OpCode, PreparedMessage, Split};

use crate::handler::{DisconnectReason, Handler};
use crate::io::Link;
use crate::out_frame::OutFrame;
use crate::server::{Broadcaster, Target};
use crate::shard::{Outbound, Shard};

/// Identifies a connection server-wide: the shard that owns it, its slot in that shard's
/// table and a sequence number that makes reused slots distinct.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub(crate) u64);

impl ConnectionId {
    pub(crate) fn new(shard: usize, slot: usize, sequence: u32) -> Self {
        ConnectionId(((shard as u64) << 56) | ((slot as u64 & 0xff_ffff) << 32) | u64::from(sequence))
    }

    /// The index of the worker (shard) that owns the connection.
    pub fn shard(self) -> usize {
        (self.0 >> 56) as usize
    }

    pub(crate) fn slot(self) -> usize {
        ((self.0 >> 32) & 0xff_ffff) as usize
    }

    /// The raw value, unique among the server's live connections.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.shard(), self.slot(), self.0 as u32)
    }
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// TCP accepted, upgrade not complete.
    Handshaking,
    /// Upgraded: messages flow.
    Open,
    /// Removed from the table; sends are ignored.
    Gone,
}

/// What a shard keeps per connection. Kept small: idle connections are the common case.
pub(crate) struct ConnState<D> {
    pub(crate) id: ConnectionId,
    pub(crate) peer: SocketAddr,
    pub(crate) phase: Phase,
    pub(crate) request: Option<Request>,
    pub(crate) data: D,
    pub(crate) link: Rc<Link>,
    pub(crate) queue: VecDeque<OutFrame>,
    /// Bytes queued or in flight, for the slow-consumer bound.
    pub(crate) queued_bytes: usize,
    /// A writer task is running for this connection.
    pub(crate) writing: bool,
    /// The connection is on its shard's list of connections to write inline.
    pub(crate) flush_pending: bool,
    pub(crate) close_sent: bool,
    pub(crate) close_received: bool,
    pub(crate) ping_outstanding: bool,
    /// When the handshake, close reply or pong must have arrived.
    pub(crate) deadline: Option<Instant>,
    pub(crate) last_read: Instant,
    /// Set by whoever decides the connection must end, before shutting the socket.
    pub(crate) end_reason: Option<DisconnectReason>,
    /// Woken when the writer empties the queue (used while closing).
    pub(crate) drain_waker: Option<Waker>,
    /// Topics this connection subscribed to (also indexed by the shard).
    pub(crate) topics: Vec<Rc<str>>,
    /// While the application streams a fragmented message: the data messages that must
    /// wait for its last fragment.
    #[expect(clippy::box_collection, reason = "8 bytes in every connection instead of 32; rarely used")]
    pub(crate) held: Option<Box<VecDeque<OutFrame>>>,
}

impl<D: Default> ConnState<D> {
    pub(crate) fn new(id: ConnectionId, peer: SocketAddr, link: Rc<Link>, deadline: Instant) -> Self {
        ConnState {
            id,
            peer,
            phase: Phase::Handshaking,
            request: None,
            data: D::default(),
            link,
            queue: VecDeque::new(),
            queued_bytes: 0,
            writing: false,
            flush_pending: false,
            close_sent: false,
            close_received: false,
            ping_outstanding: false,
            deadline: Some(deadline),
            last_read: Instant::now(),
            end_reason: None,
            drain_waker: None,
            topics: Vec::new(),
            held: None,
        }
    }
}

impl<D> ConnState<D> {
    /// Whether data messages may still be queued.
    pub(crate) fn accepts_data(&self) -> bool {
        self.phase == Phase::Open && !self.close_sent
    }

    /// Whether queued bytes are still waiting to be written.
    pub(crate) fn has_unsent(&self) -> bool {
        self.writing || !self.queue.is_empty()
    }
}

/// Why a send did not queue anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The connection is not open (still handshaking, closing or gone).
    #[error("the connection is not open")]
    NotOpen,
    /// The send queue is full; the slow-consumer policy dropped the message or is
    /// disconnecting the connection.
    #[error("the connection's send queue is full")]
    QueueFull,
    /// A ping or pong payload exceeded 125 bytes.
    #[error("control frame payload exceeds 125 bytes")]
    ControlTooLong,
}

/// A connection, as handlers see it during an event.
///
/// Sends queue bytes on the connection; they are written after the event returns,
/// batched with everything else queued meanwhile.
pub struct Connection<'a, H: Handler> {
    pub(crate) shard: &'a Rc<Shard<H>>,
    pub(crate) conn: &'a mut ConnState<H::Data>,
}

impl<H: Handler> Connection<'_, H> {
    /// This connection's server-wide id.
    pub fn id(&self) -> ConnectionId {
        self.conn.id
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.conn.peer
    }

    /// The upgrade request; `None` only in `on_disconnect` of a connection that never
    /// completed its handshake.
    pub fn request(&self) -> Option<&Request> {
        self.conn.request.as_ref()
    }

    /// The connection's user data.
    pub fn data(&self) -> &H::Data {
        &self.conn.data
    }

    /// The connection's user data, mutably.
    pub fn data_mut(&mut self) -> &mut H::Data {
        &mut self.conn.data
    }

    /// Whether the connection is open for data (upgraded, no close sent).
    pub fn is_open(&self) -> bool {
        self.conn.accepts_data()
    }

    /// Queues a text message (split into frames if the server is configured to).
    pub fn send_text(&mut self, text: &str) -> Result<(), SendError> {
        self.send_data(|split| PreparedMessage::text(text, split))
    }

    /// Queues a binary message (split into frames if the server is configured to).
    pub fn send_binary(&mut self, data: &[u8]) -> Result<(), SendError> {
        self.send_data(|split| PreparedMessage::binary(data, split))
    }

    /// Queues an already encoded message: the same bytes may go to many connections.
    pub fn send_prepared(&mut self, message: &PreparedMessage) -> Result<(), SendError> {
        self.send_data(|_| message.clone())
    }

    /// Encodes (only if the connection can take data) and queues a data message; the
    /// encoded bytes move into the queue.
    fn send_data(&mut self, encode: impl FnOnce(Split) -> PreparedMessage) -> Result<(), SendError> {
        if !self.conn.accepts_data() {
            return Err(SendError::NotOpen);
        }
        let message = encode(self.shard.config.split);
        self.shard.enqueue(self.conn, OutFrame::single(message.into_bytes()))
    }

    /// Queues one raw frame with the given opcode and FIN bit, for applications that
    /// stream fragments themselves (e.g. in frame-by-frame mode).
    pub fn send_frame(&mut self, opcode: OpCode, fin: bool, payload: &[u8]) -> Result<(), SendError> {
        if opcode.is_control() && (payload.len() > 125 || !fin) {
            return Err(SendError::ControlTooLong);
        }
        if opcode == OpCode::Close {
            return self.close_with_payload(Bytes::copy_from_slice(payload), CloseCode::Normal);
        }
        if !self.conn.accepts_data() {
            return Err(SendError::NotOpen);
        }
        let frame = OutFrame::single(PreparedMessage::frame(opcode, fin, payload).into_bytes());
        let kind = if opcode.is_control() { Outbound::Control } else { Outbound::Fragment { fin } };
        self.shard.enqueue_as(self.conn, frame, kind)
    }

    /// Queues a ping.
    pub fn send_ping(&mut self, payload: &[u8]) -> Result<(), SendError> {
        let ping = PreparedMessage::ping(payload).ok_or(SendError::ControlTooLong)?;
        self.send_control(ping)
    }

    /// Queues a pong (needed only with [`Options::manual_pong`](crate::Options::manual_pong)).
    pub fn send_pong(&mut self, payload: &[u8]) -> Result<(), SendError> {
        let pong = PreparedMessage::pong(payload).ok_or(SendError::ControlTooLong)?;
        self.send_control(pong)
    }

    fn send_control(&mut self, frame: PreparedMessage) -> Result<(), SendError> {
        if self.conn.phase != Phase::Open || self.conn.close_sent {
            return Err(SendError::NotOpen);
        }
        self.shard.enqueue_as(self.conn, OutFrame::single(frame.into_bytes()), Outbound::Control)
    }

    /// Starts the closing handshake with `code` and `reason` (cut to 123 bytes). The
    /// connection ends when the peer replies, or after the close timeout.
    pub fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), SendError> {
        let frame = PreparedMessage::close(code, reason);
        self.close_with_payload(frame.into_bytes(), code)
    }

    fn close_with_payload(&mut self, frame: Bytes, code: CloseCode) -> Result<(), SendError> {
        if self.conn.phase != Phase::Open || self.conn.close_sent {
            return Err(SendError::NotOpen);
        }
        let frame = if frame.first().is_some_and(|b| b & 0x0f == OpCode::Close.as_u8()) {
            frame
        } else {
            // A raw payload from send_frame: wrap it in a close frame.
            PreparedMessage::frame(OpCode::Close, true, &frame).into_bytes()
        };
        self.shard.start_close(self.conn, frame);
        let _ = code;
        Ok(())
    }

    /// Drops the TCP connection at once, without a closing handshake.
    pub fn abort(&mut self) {
        self.conn.end_reason.get_or_insert(DisconnectReason::Aborted);
        self.conn.link.shutdown();
    }

    /// Sends a text message to every connection on every worker (this one included).
    pub fn broadcast_text(&self, text: &str) {
        self.broadcast(PreparedMessage::text(text, self.shard.config.split), Target::All);
    }

    /// Sends a binary message to every connection on every worker (this one included).
    pub fn broadcast_binary(&self, data: &[u8]) {
        self.broadcast(PreparedMessage::binary(data, self.shard.config.split), Target::All);
    }

    /// Sends a text message to every connection except this one: the chat relay.
    pub fn relay_text(&self, text: &str) {
        self.broadcast(PreparedMessage::text(text, self.shard.config.split), Target::AllExcept(self.conn.id));
    }

    /// Sends a binary message to every connection except this one.
    pub fn relay_binary(&self, data: &[u8]) {
        self.broadcast(PreparedMessage::binary(data, self.shard.config.split), Target::AllExcept(self.conn.id));
    }

    /// Sends an encoded message to the connections `selector` picks, on every worker.
    /// The selector runs on each worker over that worker's own connections.
    pub fn send_to<F>(&self, message: &PreparedMessage, selector: F)
    where
        F: Fn(&ConnectionRef<'_, H>) -> bool + Send + Sync + 'static,
    {
        self.broadcast(message.clone(), Target::Select(std::sync::Arc::new(selector)));
    }

    fn broadcast(&self, message: PreparedMessage, target: Target<H>) {
        self.shard.defer_broadcast(message.into_bytes(), target);
    }

    /// Subscribes this connection to `topic`: messages published to it (from any worker)
    /// reach this connection. Returns `false` if it was already subscribed.
    pub fn subscribe(&mut self, topic: &str) -> bool {
        self.conn.phase == Phase::Open && self.shard.subscribe(self.conn, topic)
    }

    /// Unsubscribes this connection from `topic`. Returns `false` if it was not subscribed.
    pub fn unsubscribe(&mut self, topic: &str) -> bool {
        self.shard.unsubscribe(self.conn, topic)
    }

    /// The topics this connection is subscribed to.
    pub fn topics(&self) -> impl Iterator<Item = &str> {
        self.conn.topics.iter().map(|t| &**t)
    }

    /// Publishes a text message to every subscriber of `topic`, on every worker.
    pub fn publish_text(&self, topic: &str, text: &str) {
        self.broadcast(PreparedMessage::text(text, self.shard.config.split), Target::Topic(topic.into()));
    }

    /// Publishes a binary message to every subscriber of `topic`, on every worker.
    pub fn publish_binary(&self, topic: &str, data: &[u8]) {
        self.broadcast(PreparedMessage::binary(data, self.shard.config.split), Target::Topic(topic.into()));
    }

    /// Publishes an encoded message to every subscriber of `topic`, on every worker.
    pub fn publish_prepared(&self, topic: &str, message: &PreparedMessage) {
        self.broadcast(message.clone(), Target::Topic(topic.into()));
    }

    /// A handle for sending to any connection from anywhere, e.g. another thread.
    pub fn broadcaster(&self) -> &Broadcaster<H> {
        &self.shard.broadcaster
    }
}

/// A read-only view of a connection, given to selectors.
pub struct ConnectionRef<'a, H: Handler> {
    pub(crate) conn: &'a ConnState<H::Data>,
}

impl<H: Handler> ConnectionRef<'_, H> {
    /// The connection's id.
    pub fn id(&self) -> ConnectionId {
        self.conn.id
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.conn.peer
    }

    /// The upgrade request.
    pub fn request(&self) -> Option<&Request> {
        self.conn.request.as_ref()
    }

    /// The connection's user data.
    pub fn data(&self) -> &H::Data {
        &self.conn.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_pack_shard_slot_and_sequence() {
        let id = ConnectionId::new(3, 70_000, 9);
        assert_eq!((id.shard(), id.slot(), id.as_u64() as u32), (3, 70_000, 9));
        assert_eq!(id.to_string(), "3:70000:9");
        assert_ne!(ConnectionId::new(3, 70_000, 10), id);
    }
}
