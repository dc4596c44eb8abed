//! The sans-IO state machine of one connection.
//!
//! [`Conn`] never touches a socket or a clock. The shard feeds it what happened —
//! bytes read ([`Conn::poll_input`]), a write completed ([`Conn::handle_written`]), a
//! deadline passed ([`Conn::handle_timeout`]), the peer hung up ([`Conn::handle_eof`]) —
//! always with the time `now`, and polls it for what to do: frames to write
//! ([`Conn::unsent`]), the next deadline ([`Conn::poll_timeout`]) and whether the
//! connection has ended ([`Conn::poll_end`]). Every close path lives here, so it is
//! tested in memory with a virtual clock (see `tests.rs`).

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;
use ringcast_codec::deflate::{Negotiated, WindowBits};
use ringcast_codec::handshake::{self, Request, RequestParse, UpgradeChecks};
use ringcast_codec::{CloseCode, Decoder, DecoderConfig, Incoming, Payload, PreparedMessage, ProtocolError, Role};

use crate::config::{Config, SlowConsumerPolicy};
use crate::conn::queue::{Delivered, OutFrame, Outbound, SendQueue};
use crate::event::{DisconnectReason, SendError};
use crate::id::ConnectionId;

/// The first byte of a TLS handshake record (a ClientHello), never the first byte of an
/// HTTP request.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// The answer to a TLS ClientHello where a plain request head was expected.
const NOT_TLS_ANSWER: &str = "this port speaks plain HTTP and WebSocket (ws://), not TLS (wss://)\n";

/// Where a connection is in its life.

#[derive(Debug)]
enum Phase {
    /// Reading the request head; what arrived of it in earlier inputs, if any.
    #[expect(clippy::box_collection, reason = "8 bytes in every connection's phase instead of 24; rarely set")]
    Head(Option<Box<Vec<u8>>>),
    /// Reading the body of a plain HTTP request.
    Body(Box<Body>),
    /// A request is with the shard for a decision (upgrade or HTTP answer).
    Deciding,
    /// Upgraded: messages flow.
    Open,
    /// Writing what is queued (a refusal, an HTTP answer, a close frame), then ending.
    Draining(Box<DisconnectReason>),
    /// Finished; the shard has not collected the reason yet.
    Done(Box<DisconnectReason>),
    /// Finished and collected: nothing more happens.
    Ended,
}

/// A plain HTTP request whose body is arriving.
#[derive(Debug)]
pub(crate) struct Body {
    request: Box<Request>,
    body: Vec<u8>,
    len: usize,
}

/// An instant as milliseconds since the server's epoch ([`Config::epoch`]): 8 bytes
/// where an `Instant` takes 16, with [`Millis::NEVER`] for "no deadline" instead of the
/// 16 bytes of an `Option<Instant>`. Every connection holds two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Millis(u64);

impl Millis {
    const NEVER: Millis = Millis(u64::MAX);

    /// `at`, rounded up to the next millisecond so that a deadline never fires early.
    fn at(at: Instant, config: &Config) -> Millis {
        let nanos = at.saturating_duration_since(config.epoch).as_nanos();
        Millis(u64::try_from(nanos.div_ceil(1_000_000)).unwrap_or(u64::MAX - 1).min(u64::MAX - 1))
    }

    fn instant(self, config: &Config) -> Option<Instant> {
        (self != Self::NEVER).then(|| config.epoch + std::time::Duration::from_millis(self.0))
    }
}

/// The address of a connection's peer in 16 bytes (a `SocketAddr` takes 32): IPv4
/// inline, IPv6 boxed.
#[derive(Debug, Clone)]
enum PeerAddr {
    V4([u8; 4], u16),
    V6(Box<std::net::SocketAddrV6>),
}

impl From<SocketAddr> for PeerAddr {
    fn from(addr: SocketAddr) -> Self {
        match addr {
            SocketAddr::V4(v4) => PeerAddr::V4(v4.ip().octets(), v4.port()),
            SocketAddr::V6(v6) => PeerAddr::V6(Box::new(v6)),
        }
    }
}

impl PeerAddr {
    fn get(&self) -> SocketAddr {
        match self {
            PeerAddr::V4(ip, port) => SocketAddr::from((*ip, *port)),
            PeerAddr::V6(v6) => SocketAddr::V6(**v6),
        }
    }
}

/// What a connection rarely needs: kept behind one pointer, allocated while any of it
/// is set, so that an idle connection pays 8 bytes for all of it.
#[derive(Debug, Default)]
struct Cold {
    /// The upgrade request, while it is kept.
    request: Option<Box<Request>>,
    /// Set by whoever decides the connection must end, before it actually does.
    end_reason: Option<DisconnectReason>,
    /// The code of the peer's close frame, once received.
    peer_close: Option<CloseCode>,
    /// The topics this connection subscribed to (the shard's index has the reverse map).
    topics: Vec<Rc<str>>,
}

impl Cold {
    fn is_empty(&self) -> bool {
        self.request.is_none() && self.end_reason.is_none() && self.peer_close.is_none() && self.topics.is_empty()
    }
}

/// What the shard must act on after feeding input: the upgrade and HTTP decisions belong
/// to the handler, the rest is reported for dispatch and statistics.
#[derive(Debug)]
pub(crate) enum Event<'a> {
    /// A valid upgrade request; answer with [`Conn::accept`] or [`Conn::refuse`].
    Upgrade {
        /// The request.
        request: Box<Request>,
        /// The `Sec-WebSocket-Accept` value to answer with.
        accept: String,
        /// permessage-deflate, if the client offered it and the server accepts.
        deflate: Option<Box<Negotiated>>,
    },
    /// A whole plain HTTP request; answer with [`Conn::respond`].
    Http {
        /// The request head.
        request: Box<Request>,
        /// Its body.
        body: Payload<'a>,
    },
    /// A message or control frame from the peer. Automatic answers (a pong) are already
    /// queued; after a close frame call [`Conn::after_close_frame`].
    Message(Incoming<'a>),
    /// The upgrade request was refused with this status; the answer is queued.
    Refused(u16),
    /// A plain HTTP request was refused with this status (unsupported or too large a
    /// body); the answer is queued.
    HttpRefused(u16),
    /// The peer broke the protocol; the close frame is queued.
    ProtocolError(ProtocolError),
}

/// The result of queuing a data message on a full queue, for the shard's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Overflow {
    /// The message was dropped; the connection stays.
    Dropped,
    /// The connection is being closed with 1008.
    Disconnecting,
}

/// Why a send failed, with what the slow-consumer policy did about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Not open, or a control payload too long.
    Error(SendError),
    /// The queue is full.
    Full(Overflow),
}

impl From<Refused> for SendError {
    fn from(refused: Refused) -> Self {
        match refused {
            Refused::Error(e) => e,
            Refused::Full(_) => SendError::QueueFull,
        }
    }
}

/// The sans-IO state machine of one connection: protocol phase, decoder, send queue,
/// deadlines and the application's data `D`.
pub(crate) struct Conn<D> {
    id: ConnectionId,
    peer: PeerAddr,
    phase: Phase,
    decoder: Decoder,
    queue: SendQueue,
    /// A write of the front of the queue is with the driver.
    writing: bool,
    /// The connection is on the shard's list of connections to write.
    listed: bool,
    /// The upgrade was accepted (the connection counts as a WebSocket).
    opened: bool,
    /// The window this connection's compressed variants use, if it negotiated
    /// permessage-deflate.
    deflate_out: Option<WindowBits>,
    close_sent: bool,
    close_received: bool,
    ping_outstanding: bool,
    /// When the handshake, close reply, pong or drain must have finished.
    deadline: Millis,
    /// The deadline the shard's timer queue holds this connection at.
    scheduled: Millis,
    last_read: Millis,
    cold: Option<Box<Cold>>,
    /// The application's per-connection data.
    pub(crate) data: D,
}

impl<D> std::fmt::Debug for Conn<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("id", &self.id)
            .field("phase", &self.phase)
            .field("queued", &self.queue.queued_bytes())
            .field("writing", &self.writing)
            .field("close_sent", &self.close_sent)
            .field("close_received", &self.close_received)
            .field("deadline", &self.deadline)
            .finish()
    }
}

/// The decoder configuration a server's connections use.
pub(crate) fn decoder_config(config: &Config) -> DecoderConfig {
    DecoderConfig::new(ringcast_codec::Role::Server)
        .max_frame_size(config.max_frame_size)
        .max_message_size(config.max_message_size)
        .assembly(if config.options.frame_by_frame {
            ringcast_codec::Assembly::Frames
        } else {
            ringcast_codec::Assembly::Messages
        })
}

/// Finds the end of a request head (`\r\n\r\n`) in `input`, given the last bytes that
/// arrived before it; returns the offset just past the blank line.
fn head_end(held: &[u8], input: &[u8]) -> Option<usize> {
    const BLANK_LINE: &[u8] = b"\r\n\r\n";
    // A blank line that began in what was held ends within the first three bytes of
    // `input`, before any that lies wholly in `input`.
    let carry = &held[held.len().saturating_sub(3)..];
    let start = &input[..input.len().min(3)];
    let mut seam = [0u8; 6];
    seam[..carry.len()].copy_from_slice(carry);
    seam[carry.len()..carry.len() + start.len()].copy_from_slice(start);
    if let Some(at) = memchr::memmem::find(&seam[..carry.len() + start.len()], BLANK_LINE) {
        return Some(at + BLANK_LINE.len() - carry.len());
    }
    memchr::memmem::find(input, BLANK_LINE).map(|at| at + BLANK_LINE.len())
}

impl<D> Conn<D> {
    /// A connection just accepted at `now`: it must send its request head within the
    /// handshake timeout.
    pub(crate) fn new(id: ConnectionId, peer: SocketAddr, data: D, config: &Config, now: Instant) -> Self {
        Conn {
            id,
            peer: peer.into(),
            phase: Phase::Head(None),
            decoder: Decoder::new(decoder_config(config)),
            queue: SendQueue::default(),
            writing: false,
            listed: false,
            opened: false,
            deflate_out: None,
            close_sent: false,
            close_received: false,
            ping_outstanding: false,
            deadline: Millis::at(now + config.handshake_timeout, config),
            scheduled: Millis::NEVER,
            last_read: Millis::at(now, config),
            cold: None,
            data,
        }
    }

    /// The connection's server-wide id.
    pub(crate) fn id(&self) -> ConnectionId {
        self.id
    }

    /// The peer's address.
    pub(crate) fn peer(&self) -> SocketAddr {
        self.peer.get()
    }

    fn set_deadline(&mut self, at: Instant, config: &Config) {
        self.deadline = Millis::at(at, config);
    }

    fn clear_deadline(&mut self) {
        self.deadline = Millis::NEVER;
    }

    fn cold(&mut self) -> &mut Cold {
        self.cold.get_or_insert_with(Box::default)
    }

    /// Frees the cold part once nothing in it is set.
    fn trim_cold(&mut self) {
        if self.cold.as_ref().is_some_and(|cold| cold.is_empty()) {
            self.cold = None;
        }
    }

    /// Records why the connection will end, unless a reason is recorded already.
    fn record_end(&mut self, reason: DisconnectReason) {
        self.cold().end_reason.get_or_insert(reason);
    }

    fn take_end(&mut self) -> Option<DisconnectReason> {
        let reason = self.cold.as_mut().and_then(|cold| cold.end_reason.take());
        self.trim_cold();
        reason
    }

    fn peer_close(&self) -> Option<CloseCode> {
        self.cold.as_ref().and_then(|cold| cold.peer_close)
    }

    /// The upgrade request, while it is kept.
    pub(crate) fn request(&self) -> Option<&Request> {
        self.cold.as_ref().and_then(|cold| cold.request.as_deref())
    }

    /// Forgets the upgrade request (it is kept only as long as the server is asked to).
    pub(crate) fn drop_request(&mut self) {
        if let Some(cold) = self.cold.as_mut() {
            cold.request = None;
        }
        self.trim_cold();
    }

    /// The topics this connection subscribed to.
    pub(crate) fn topics(&self) -> impl Iterator<Item = &str> {
        self.cold.iter().flat_map(|cold| cold.topics.iter().map(|t| &**t))
    }

    pub(crate) fn is_subscribed(&self, topic: &str) -> bool {
        self.topics().any(|t| t == topic)
    }

    /// Records a subscription (the name shared with the shard's index).
    pub(crate) fn add_topic(&mut self, topic: Rc<str>) {
        self.cold().topics.push(topic);
    }

    /// Forgets a subscription; `false` if there was none.
    pub(crate) fn remove_topic(&mut self, topic: &str) -> bool {
        let Some(cold) = self.cold.as_mut() else { return false };
        let Some(position) = cold.topics.iter().position(|t| &**t == topic) else { return false };
        cold.topics.swap_remove(position);
        self.trim_cold();
        true
    }

    /// Every subscription, taken (when the connection ends).
    pub(crate) fn take_topics(&mut self) -> Vec<Rc<str>> {
        let topics = self.cold.as_mut().map(|cold| std::mem::take(&mut cold.topics)).unwrap_or_default();
        self.trim_cold();
        topics
    }

    /// Whether the connection is upgraded and has not sent a close frame: data may be queued.
    pub(crate) fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open) && !self.close_sent
    }

    /// The window of the compressed variant this connection takes, if it negotiated
    /// permessage-deflate.
    pub(crate) fn deflate_window(&self) -> Option<WindowBits> {
        self.deflate_out
    }

    /// Whether the upgrade was accepted (whatever happened since).
    pub(crate) fn was_opened(&self) -> bool {
        self.opened
    }

    /// Whether the connection has ended (its reason may still be uncollected).
    pub(crate) fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Done(_) | Phase::Ended)
    }

    /// Bytes queued and not yet written.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.queue.queued_bytes()
    }

    /// Heap bytes held for incomplete input (request heads, bodies, frames, messages).
    pub(crate) fn buffered_input(&self) -> usize {
        let phase = match &self.phase {
            Phase::Head(Some(held)) => held.capacity(),
            Phase::Body(body) => body.body.capacity(),
            _ => 0,
        };
        phase + self.decoder.buffered_bytes()
    }

    // ------------------------------------------------------------------ input

    /// Feeds bytes that arrived at `now` and returns the next event, advancing `input`
    /// past what was consumed; `None` once `input` is exhausted (an incomplete tail is
    /// kept). Call again until it returns `None`; handle each event before the next call.
    pub(crate) fn poll_input<'a>(
        &mut self,
        input: &mut &'a mut [u8],
        config: &Config,
        now: Instant,
    ) -> Option<Event<'a>> {
        if input.is_empty() {
            return None;
        }
        self.last_read = Millis::at(now, config);
        if self.ping_outstanding {
            // Any sign of life answers an idle ping.
            self.ping_outstanding = false;
            if !self.close_sent && !self.close_received {
                self.clear_deadline();
            }
        }
        match &self.phase {
            Phase::Head(_) => self.read_head(input, config, now),
            Phase::Body(_) => self.read_body(input),
            Phase::Open if !self.close_received => self.read_frames(input, config, now),
            // Input waits for the decision, which the shard makes before reading on.
            Phase::Deciding => None,
            // After a close frame, and while draining, the peer has nothing more to say.
            _ => {
                *input = &mut [];
                None
            }
        }
    }

    fn read_head<'a>(&mut self, input: &mut &'a mut [u8], config: &Config, now: Instant) -> Option<Event<'a>> {
        let Phase::Head(held) = &mut self.phase else { return None };
        let held_len = held.as_ref().map_or(0, |h| h.len());
        // A TLS record (a `wss://` client at a plain port) never ends the way a request
        // head does: say so at once instead of waiting for the handshake timeout.
        if held_len == 0 && input.first() == Some(&TLS_HANDSHAKE_RECORD) {
            let answer = handshake::error_response(400, "", NOT_TLS_ANSWER);
            return Some(self.refuse_with(answer, 400, now, config));
        }
        let Some(end) = head_end(held.as_deref().map_or(&[], |h| &h[..]), input) else {
            if held_len + input.len() >= handshake::MAX_HEAD_LEN {
                return Some(self.refuse_with(handshake::HandshakeError::HeadTooLarge.response(), 431, now, config));
            }
            held.get_or_insert_with(Box::default).extend_from_slice(input);
            *input = &mut [];
            return None;
        };
        let (head, rest) = std::mem::take(input).split_at_mut(end);
        *input = rest;
        let parsed = match held {
            None => Request::parse(head),
            Some(held) => {
                held.extend_from_slice(head);
                Request::parse(held)
            }
        };
        let request = match parsed {
            Ok(RequestParse::Complete { request, .. }) => Box::new(request),
            // A terminator without a complete head cannot happen with httparse; refuse.
            Ok(RequestParse::Incomplete) => {
                return Some(self.refuse_with(handshake::error_response(400, "", "bad request\n"), 400, now, config));
            }
            Err(e) => return Some(self.refuse_with(e.response(), e.status(), now, config)),
        };
        if !request.wants_upgrade() {
            let len = match content_length(&request) {
                Err(()) => {
                    let answer = handshake::error_response(411, "", "a Content-Length body is required\n");
                    self.respond(answer, config, now);
                    return Some(Event::HttpRefused(411));
                }
                Ok(len) if len > config.max_http_body => {
                    let answer = handshake::error_response(413, "", "request body too large\n");
                    self.respond(answer, config, now);
                    return Some(Event::HttpRefused(413));
                }
                Ok(len) => len,
            };
            self.phase = Phase::Body(Box::new(Body { request, body: Vec::new(), len }));
            return self.read_body(input);
        }
        if let Some(path) = &config.path
            && request.path() != path
        {
            let answer = handshake::error_response(404, "", "no WebSocket endpoint at this path\n");
            return Some(self.refuse_with(answer, 404, now, config));
        }
        let checks = UpgradeChecks {
            skip_upgrade_check: config.options.skip_upgrade_check,
            skip_version_check: config.options.skip_version_check,
        };
        match handshake::validate_upgrade(&request, checks) {
            Ok(accept) => {
                self.phase = Phase::Deciding;
                let deflate = if config.deflate.is_enabled() {
                    config.deflate.negotiate_request(&request).map(Box::new)
                } else {
                    None
                };
                Some(Event::Upgrade { request, accept, deflate })
            }
            Err(e) => Some(self.refuse_with(e.response(), e.status(), now, config)),
        }
    }

    fn read_body<'a>(&mut self, input: &mut &'a mut [u8]) -> Option<Event<'a>> {
        let Phase::Body(state) = &mut self.phase else { return None };
        let missing = state.len - state.body.len();
        if state.body.is_empty() && input.len() >= missing {
            // The whole body is in this input: hand it over without a copy.
            let (whole, rest) = std::mem::take(input).split_at_mut(missing);
            *input = rest;
            let Phase::Body(state) = std::mem::replace(&mut self.phase, Phase::Deciding) else { return None };
            let body: &'a [u8] = whole;
            return Some(Event::Http { request: state.request, body: Payload::Borrowed(body) });
        }
        let take = missing.min(input.len());
        state.body.extend_from_slice(&input[..take]);
        let rest = std::mem::take(input);
        *input = &mut rest[take..];
        if state.body.len() < state.len {
            return None;
        }
        let Phase::Body(state) = std::mem::replace(&mut self.phase, Phase::Deciding) else { return None };
        let Body { request, body, .. } = *state;
        Some(Event::Http { request, body: Payload::Owned(Bytes::from(body)) })
    }

    fn read_frames<'a>(&mut self, input: &mut &'a mut [u8], config: &Config, now: Instant) -> Option<Event<'a>> {
        match self.decoder.decode(input) {
            Ok(None) => None,
            Ok(Some(Incoming::Ping(payload))) => {
                if !config.options.manual_pong {
                    let _ = self.send_pong(&payload, config, now);
                }
                Some(Event::Message(Incoming::Ping(payload)))
            }
            Ok(Some(Incoming::Close(frame))) => {
                self.close_received = true;
                let code = frame.as_ref().map_or(CloseCode::Status, |f| f.code);
                self.cold().peer_close = Some(code);
                *input = &mut [];
                if self.close_sent {
                    // The reply to our close: the handshake is complete. A close the
                    // server started (stop, slow consumer) keeps its reason.
                    let reason = self.take_end().unwrap_or(DisconnectReason::Closed(code));
                    self.finish(reason);
                }
                Some(Event::Message(Incoming::Close(frame)))
            }
            Ok(Some(incoming)) => Some(Event::Message(incoming)),
            Err(error) => {
                *input = &mut [];
                let close = PreparedMessage::close(error.close_code(), &error.to_string()).into_bytes();
                self.cold().end_reason = Some(DisconnectReason::Protocol(error.clone()));
                self.push_close(close, now, config);
                self.drain(DisconnectReason::Protocol(error.clone()), now, config);
                Some(Event::ProtocolError(error))
            }
        }
    }

    // ------------------------------------------------------------------ decisions

    /// Accepts the upgrade: queues the `101` (so anything sent afterwards is written
    /// after it, in order) and opens the connection, with permessage-deflate if it was
    /// negotiated.
    pub(crate) fn accept(
        &mut self,
        request: Box<Request>,
        accept: &str,
        deflate: Option<&Negotiated>,
        config: &Config,
    ) {
        let extension = deflate.map(|n| n.response_header_line()).unwrap_or_default();
        let response = handshake::accept_response(accept, None, &extension);
        if let Some(negotiated) = deflate {
            let params = negotiated.params();
            self.decoder = Decoder::new(decoder_config(config).permessage_deflate(Some(params.incoming(Role::Server))));
            self.deflate_out = Some(params.outgoing(Role::Server).window_bits);
        }
        self.queue.push(OutFrame::untimed(response.into()), Outbound::Control);
        self.phase = Phase::Open;
        self.opened = true;
        self.clear_deadline();
        self.cold().request = Some(request);
    }

    /// Refuses the upgrade with `status`; the connection ends once the answer is written.
    pub(crate) fn refuse(&mut self, status: u16, config: &Config, now: Instant) {
        let answer = handshake::error_response(status, "", "connection refused\n");
        self.refuse_with(answer, status, now, config);
    }

    fn refuse_with(&mut self, answer: Vec<u8>, status: u16, now: Instant, config: &Config) -> Event<'static> {
        self.queue.push(OutFrame::untimed(answer.into()), Outbound::Control);
        self.drain(DisconnectReason::HandshakeRefused(status), now, config);
        Event::Refused(status)
    }

    /// Answers a plain HTTP request; the connection ends once the answer is written.
    pub(crate) fn respond(&mut self, answer: Vec<u8>, config: &Config, now: Instant) {
        self.queue.push(OutFrame::untimed(answer.into()), Outbound::Control);
        self.drain(DisconnectReason::HttpServed, now, config);
    }

    /// After the handler saw the peer's close frame: answer it (echoing the code, RFC
    /// 6455 §5.5.1) unless the handler did or closes manually, and end once it is written.
    pub(crate) fn after_close_frame(&mut self, config: &Config, now: Instant) {
        if self.is_finished() || !self.close_received {
            return;
        }
        let code = self.peer_close().unwrap_or(CloseCode::Status);
        if !self.close_sent && !config.options.manual_close {
            let reply = PreparedMessage::close(code, "").into_bytes();
            self.push_close(reply, now, config);
        }
        if self.close_sent {
            self.drain(DisconnectReason::Closed(code), now, config);
        } else {
            // Manual close: the handler has the close timeout to answer.
            self.set_deadline(now + config.close_timeout, config);
        }
    }

    // ------------------------------------------------------------------ sends

    fn check_open(&self) -> Result<(), Refused> {
        if self.is_open() { Ok(()) } else { Err(Refused::Error(SendError::NotOpen)) }
    }

    /// Queues a data message (or a streamed fragment), applying the send-queue bound.
    pub(crate) fn send_data(
        &mut self,
        frame: OutFrame,
        kind: Outbound,
        config: &Config,
        now: Instant,
    ) -> Result<(), Refused> {
        self.check_open()?;
        self.bounded_push(frame, kind, config, now)
    }

    fn bounded_push(&mut self, frame: OutFrame, kind: Outbound, config: &Config, now: Instant) -> Result<(), Refused> {
        if self.queue.would_exceed(frame.len(), config.send_queue_limit) {
            return Err(Refused::Full(match config.slow_consumer {
                SlowConsumerPolicy::DropNew => Overflow::Dropped,
                SlowConsumerPolicy::Disconnect => {
                    self.record_end(DisconnectReason::SlowConsumer);
                    let close = PreparedMessage::close(CloseCode::Policy, "send queue limit exceeded").into_bytes();
                    self.push_close(close, now, config);
                    Overflow::Disconnecting
                }
            }));
        }
        self.queue.push(frame, kind);
        Ok(())
    }

    /// Queues a message replayed from the history. It is exempt from the send-queue
    /// bound, which would otherwise cut a recovery short (a gap): the history's own
    /// bounds limit it, and its bytes are shared with the history.
    pub(crate) fn push_replay(&mut self, frame: OutFrame) -> Result<(), Refused> {
        self.check_open()?;
        self.queue.push(frame, Outbound::Message);
        Ok(())
    }

    /// Queues a ping.
    pub(crate) fn send_ping(&mut self, payload: &[u8], config: &Config, now: Instant) -> Result<(), Refused> {
        self.check_open()?;
        let ping = PreparedMessage::ping(payload).ok_or(Refused::Error(SendError::ControlTooLong))?;
        self.bounded_push(OutFrame::single(ping.into_bytes(), now), Outbound::Control, config, now)
    }

    /// Queues a pong.
    pub(crate) fn send_pong(&mut self, payload: &[u8], config: &Config, now: Instant) -> Result<(), Refused> {
        self.check_open()?;
        let pong = PreparedMessage::pong(payload).ok_or(Refused::Error(SendError::ControlTooLong))?;
        self.bounded_push(OutFrame::single(pong.into_bytes(), now), Outbound::Control, config, now)
    }

    /// Starts (or, after the peer's close, completes) the closing handshake with an
    /// encoded close frame.
    pub(crate) fn close(&mut self, frame: Bytes, config: &Config, now: Instant) -> Result<(), SendError> {
        if !self.is_open() {
            return Err(SendError::NotOpen);
        }
        self.push_close(frame, now, config);
        if self.close_received {
            let code = self.peer_close().unwrap_or(CloseCode::Status);
            self.drain(DisconnectReason::Closed(code), now, config);
        }
        Ok(())
    }

    /// Closes on the server's behalf (stop, policy), keeping `reason` as the end reason.
    pub(crate) fn close_for(
        &mut self,
        reason: DisconnectReason,
        code: CloseCode,
        text: &str,
        config: &Config,
        now: Instant,
    ) {
        match self.phase {
            Phase::Head(_) | Phase::Body(_) | Phase::Deciding => self.finish(reason),
            Phase::Open => {
                self.record_end(reason);
                if !self.close_sent {
                    self.push_close(PreparedMessage::close(code, text).into_bytes(), now, config);
                }
            }
            _ => {}
        }
    }

    /// Queues a close frame (exempt from the queue bound) and starts the close deadline.
    fn push_close(&mut self, frame: Bytes, now: Instant, config: &Config) {
        if self.close_sent {
            return;
        }
        self.close_sent = true;
        self.set_deadline(now + config.close_timeout, config);
        self.queue.push(OutFrame::single(frame, now), Outbound::Control);
    }

    /// The server is over its input budget and this connection holds the most: what it
    /// holds is dropped now, an upgraded connection is closed with 1009 (its further
    /// input ignored), a handshaking one ends at once.
    pub(crate) fn shed_input(&mut self, config: &Config, now: Instant) {
        let reason = DisconnectReason::InputBudget;
        match self.phase {
            Phase::Head(_) | Phase::Body(_) => self.finish(reason),
            Phase::Open => {
                self.decoder.reset();
                self.record_end(reason.clone());
                let close = PreparedMessage::close(CloseCode::Size, "server input budget exceeded").into_bytes();
                self.push_close(close, now, config);
                self.drain(reason, now, config);
            }
            _ => {}
        }
    }

    /// Drops the connection at once, without a closing handshake.
    pub(crate) fn abort(&mut self) {
        self.force_end(DisconnectReason::Aborted);
    }

    /// Ends the connection now with the reason already recorded, else `reason`.
    pub(crate) fn force_end(&mut self, reason: DisconnectReason) {
        let reason = self.take_end().unwrap_or(reason);
        self.finish(reason);
    }

    /// Ends with `reason` once what is queued is written (bounded by the close timeout).
    fn drain(&mut self, reason: DisconnectReason, now: Instant, config: &Config) {
        if self.is_finished() {
            return;
        }
        if self.queue.has_unsent() || self.writing {
            self.set_deadline(now + config.close_timeout, config);
            self.phase = Phase::Draining(Box::new(reason));
        } else {
            self.finish(reason);
        }
    }

    fn finish(&mut self, reason: DisconnectReason) {
        if !self.is_finished() {
            self.phase = Phase::Done(Box::new(reason));
            self.clear_deadline();
            self.queue.clear();
            self.decoder.reset();
        }
    }

    // ------------------------------------------------------------------ output

    /// For the shard's timer queue: whether the connection must be queued at `at`
    /// because that is earlier than where it is queued (if anywhere), recording it.
    pub(crate) fn schedule(&mut self, at: Instant, config: &Config) -> bool {
        let at = Millis::at(at, config);
        if at < self.scheduled {
            self.scheduled = at;
            return true;
        }
        false
    }

    /// For the shard's timer queue: the connection has no deadline any more; `true` if it
    /// was queued somewhere (that entry is now garbage).
    pub(crate) fn unschedule(&mut self) -> bool {
        std::mem::replace(&mut self.scheduled, Millis::NEVER) != Millis::NEVER
    }

    /// For the shard's timer queue: whether an entry for `at` is the one the connection
    /// is queued at.
    pub(crate) fn is_scheduled_at(&self, at: Instant, config: &Config) -> bool {
        Millis::at(at, config) == self.scheduled
    }

    /// For the shard's timer queue: an entry for `at` came due; `true` if it is the one
    /// the connection is queued at (older entries are stale), which it no longer is.
    pub(crate) fn take_scheduled(&mut self, at: Instant, config: &Config) -> bool {
        if Millis::at(at, config) == self.scheduled {
            self.scheduled = Millis::NEVER;
            return true;
        }
        false
    }

    /// Whether the shard should put the connection on its list of connections to write:
    /// true once per stretch of unsent frames.
    pub(crate) fn needs_listing(&mut self) -> bool {
        if !self.listed && !self.writing && self.queue.has_unsent() && !self.is_finished() {
            self.listed = true;
            return true;
        }
        false
    }

    /// Taken off the shard's list (a flush is starting).
    pub(crate) fn unlist(&mut self) {
        self.listed = false;
    }

    /// The frames to write now, or `None` while a write is in flight or nothing is
    /// queued. Marks a write as started: report it with [`Conn::handle_written`].
    pub(crate) fn poll_transmit(&mut self) -> Option<impl Iterator<Item = &OutFrame>> {
        if self.writing || !self.queue.has_unsent() || self.is_finished() {
            return None;
        }
        self.writing = true;
        Some(self.queue.unsent())
    }

    /// The write started by [`Conn::poll_transmit`] took `written` bytes.
    pub(crate) fn handle_written(&mut self, written: usize) -> Delivered {
        if !std::mem::take(&mut self.writing) || self.is_finished() {
            return Delivered::default();
        }
        let delivered = self.queue.written(written);
        if let Phase::Draining(reason) = &self.phase
            && !self.queue.has_unsent()
        {
            let reason = (**reason).clone();
            self.finish(reason);
        }
        delivered
    }

    // ------------------------------------------------------------------ time and failures

    /// The next instant [`Conn::handle_timeout`] must be called at.
    pub(crate) fn poll_timeout(&self, config: &Config) -> Option<Instant> {
        if let Some(deadline) = self.deadline.instant(config) {
            return Some(deadline);
        }
        match (config.idle_timeout, &self.phase) {
            (Some(idle), Phase::Open) if !self.close_sent && !self.close_received => {
                self.last_read.instant(config).map(|last| last + idle)
            }
            _ => None,
        }
    }

    /// Time passed: enforce the deadline, or ping a connection that has been silent for
    /// the idle timeout.
    pub(crate) fn handle_timeout(&mut self, config: &Config, now: Instant) {
        if self.is_finished() {
            return;
        }
        if let Some(deadline) = self.deadline.instant(config) {
            if now >= deadline {
                let reason = match &self.phase {
                    Phase::Draining(reason) => (**reason).clone(),
                    _ => self.take_end().unwrap_or(DisconnectReason::Timeout),
                };
                self.finish(reason);
            }
            return;
        }
        if let (Some(idle), Phase::Open) = (config.idle_timeout, &self.phase)
            && !self.close_sent
            && !self.close_received
            && self.last_read.instant(config).is_some_and(|last| now >= last + idle)
        {
            self.ping_outstanding = true;
            self.set_deadline(now + idle, config);
            let ping = PreparedMessage::ping(b"").map(PreparedMessage::into_bytes).unwrap_or_default();
            self.queue.push(OutFrame::single(ping, now), Outbound::Control);
        }
    }

    /// The peer closed its side of the TCP connection.
    pub(crate) fn handle_eof(&mut self) {
        match self.phase {
            // What is queued may still reach the peer, which closed only its side.
            Phase::Draining(_) | Phase::Done(_) | Phase::Ended => {}
            _ => self.force_end(DisconnectReason::Eof),
        }
    }

    /// Reading or writing failed: the connection cannot go on.
    pub(crate) fn handle_io_error(&mut self, error: String) {
        self.writing = false;
        let reason = match &self.phase {
            Phase::Draining(reason) => (**reason).clone(),
            _ => self.take_end().unwrap_or(DisconnectReason::Io(error)),
        };
        self.finish(reason);
    }

    /// Once the connection has ended: why, exactly once.
    pub(crate) fn poll_end(&mut self) -> Option<DisconnectReason> {
        if let Phase::Done(_) = self.phase
            && let Phase::Done(reason) = std::mem::replace(&mut self.phase, Phase::Ended)
        {
            return Some(*reason);
        }
        None
    }
}

/// The `Content-Length` of a request: `Ok(0)` without one, `Err(())` if malformed or
/// chunked (unsupported).
fn content_length(request: &Request) -> Result<usize, ()> {
    if request.header_bytes("transfer-encoding").is_some() {
        return Err(());
    }
    match request.header("content-length") {
        None => Ok(0),
        Some(value) => value.trim().parse().map_err(|_| ()),
    }
}

#[cfg(test)]
mod head_tests {
    use super::head_end;

    #[test]
    fn head_end_is_found_across_inputs() {
        assert_eq!(head_end(b"", b"GET / HTTP/1.1\r\n\r\nxx"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n", b"\r\nxx"), Some(2));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r", b"\nxx"), Some(1));
        assert_eq!(head_end(b"GET / HTTP/1.1\r", b"\n\r"), None);
        assert_eq!(head_end(b"", b"\r\n\r"), None);
        assert_eq!(head_end(b"\r\n", b"\r\n"), Some(2));
        assert_eq!(head_end(b"x\r\n\r", b"\n"), Some(1));
        assert_eq!(head_end(b"\r\n\r\n", b"GET"), None, "a blank line wholly held was found before");
        assert_eq!(head_end(b"ab", b"c\r\n\r\nd"), Some(5));
        // Every split of a head, byte by byte: the end is found once, where it is.
        let head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbody";
        for split in 0..head.len() {
            let (held, input) = head.split_at(split);
            let expected = (split < 27).then(|| 27 - split);
            assert_eq!(head_end(held, input), expected, "split at {split}");
        }
    }
}
