//! One worker: a runtime, a listener, a connection table, and the tasks that drive them.
//!
//! Everything here runs on one thread. The table is a `RefCell<Slab>` borrowed only
//! between awaits, so no lock or atomic read-modify-write sits on the message path; other
//! shards reach this one through its command channel, one message per broadcast.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use ringcast_codec::handshake::{self, Request, RequestParse, UpgradeChecks};
use ringcast_codec::{Assembly, CloseCode, Decoder, DecoderConfig, Incoming, PreparedMessage, Role};
use slab::Slab;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::config::{Config, SlowConsumerPolicy};
use crate::connection::{ConnState, Connection, ConnectionId, ConnectionRef, Phase, SendError};
use crate::handler::{Allow, DisconnectReason, Frame, Handler};
use crate::http::{HttpRequest, HttpResponse, content_length};
use crate::io::{Link, Listener, MAX_IOV};
use crate::out_frame::{OutFrame, Outgoing};
use crate::server::{Broadcaster, Command, Target};
use crate::stats::ShardStats;

/// The largest read reserved at once, even while a bigger frame is arriving.
const MAX_READ: usize = 1 << 20;
/// Reads grow up to this size while traffic fills them.
const MAX_STEADY_READ: usize = 64 << 10;

/// Answers a plain connection over the limit with 503, without giving it a slot.
async fn refuse_busy(socket: crate::io::Socket) {
    let response = handshake::error_response(503, "Retry-After: 1\r\n", "connection limit reached\n");
    let link = Link::new(socket, None);
    let _ = tokio::time::timeout(Duration::from_secs(1), link.write_all(response)).await;
    link.shutdown();
}

/// What kind of frame is being queued, which decides whether it may go out now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outbound {
    /// A whole data message: waits while a fragmented message is being streamed.
    Message,
    /// One fragment of a message the application streams with `send_frame`.
    Fragment { fin: bool },
    /// Ping, pong or close: may go between fragments.
    Control,
}

/// How a connection's message loop ends.
enum Ending {
    /// Drop the connection now.
    Now(DisconnectReason),
    /// Let the writer flush what is queued (a close frame), bounded, then drop it.
    AfterDrain(DisconnectReason),
}

/// A shard's connection table.
pub(crate) struct Table<D> {
    conns: Slab<ConnState<D>>,
    sequence: u32,
}

impl<D> Table<D> {
    fn get_mut(&mut self, id: ConnectionId) -> Option<&mut ConnState<D>> {
        self.conns.get_mut(id.slot()).filter(|c| c.id == id)
    }

    fn remove(&mut self, id: ConnectionId) -> Option<ConnState<D>> {
        self.get_mut(id)?;
        Some(self.conns.remove(id.slot()))
    }
}

/// One worker's state, shared by its tasks through `Rc`.
pub(crate) struct Shard<H: Handler> {
    pub(crate) index: usize,
    pub(crate) config: Arc<Config>,
    handler: Arc<H>,
    table: RefCell<Table<H::Data>>,
    pub(crate) stats: Arc<ShardStats>,
    pub(crate) broadcaster: Broadcaster<H>,
    tls: Option<Arc<rustls::ServerConfig>>,
    decoder: DecoderConfig,
    /// Broadcasts requested by handlers, applied once the handler returns.
    deferred: RefCell<Vec<(Bytes, Target<H>)>>,
    stopping: Cell<bool>,
    open_connections: Arc<AtomicUsize>,
    /// Topic → subscribed connections of this shard.
    topics: RefCell<HashMap<Rc<str>, HashSet<ConnectionId>>>,
    /// Connections with newly queued frames, written inline by one flush per batch.
    dirty: RefCell<Vec<ConnectionId>>,
    flush_scheduled: Cell<bool>,
}

/// What a worker thread is given to build its shard (the shard itself is `!Send`).
pub(crate) struct ShardSetup<H: Handler> {
    pub(crate) index: usize,
    pub(crate) config: Arc<Config>,
    pub(crate) handler: Arc<H>,
    pub(crate) broadcaster: Broadcaster<H>,
    pub(crate) stats: Arc<ShardStats>,
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    /// Connections open on all shards, counted only when a limit is configured.
    pub(crate) open_connections: Arc<AtomicUsize>,
}

impl<H: Handler> Shard<H> {
    pub(crate) fn new(setup: ShardSetup<H>) -> Self {
        let ShardSetup { index, config, handler, broadcaster, stats, tls, open_connections } = setup;
        let decoder = DecoderConfig::new(Role::Server)
            .max_frame_size(config.max_frame_size)
            .max_message_size(config.max_message_size)
            .assembly(if config.options.frame_by_frame { Assembly::Frames } else { Assembly::Messages });
        Shard {
            index,
            config,
            handler,
            table: RefCell::new(Table { conns: Slab::new(), sequence: 0 }),
            stats,
            broadcaster,
            tls,
            decoder,
            deferred: RefCell::new(Vec::new()),
            stopping: Cell::new(false),
            open_connections,
            topics: RefCell::new(HashMap::new()),
            dirty: RefCell::new(Vec::new()),
            flush_scheduled: Cell::new(false),
        }
    }

    /// Runs the shard until a stop command arrives and every connection has ended.
    pub(crate) async fn run(
        self: Rc<Self>,
        listener: Listener,
        control: std::net::TcpListener,
        mut commands: UnboundedReceiver<Command<H>>,
    ) {
        let accept = tokio::task::spawn_local(self.clone().accept_loop(listener));
        let timer = tokio::task::spawn_local(self.clone().timer_loop());
        while let Some(command) = commands.recv().await {
            match command {
                Command::Send { bytes, published, target } => {
                    let message = Rc::new(Outgoing { bytes, published: Some(published) });
                    self.fan_out(&message, &target);
                }
                Command::Stop => break,
            }
        }
        self.stop(&control).await;
        let _ = accept.await;
        timer.abort();
    }

    async fn accept_loop(self: Rc<Self>, listener: Listener) {
        loop {
            let accepted = listener.accept().await;
            if self.stopping.get() {
                return;
            }
            match accepted {
                Ok((socket, peer)) => {
                    if !self.admit_connection() {
                        tracing::debug!(shard = self.index, %peer, "connection refused: limit reached");
                        // A plain client is told why; a TLS client cannot read plain HTTP and
                        // just sees the connection close.
                        if self.tls.is_none() {
                            tokio::task::spawn_local(refuse_busy(socket));
                        }
                        continue;
                    }
                    let Some(link) = self.link(socket) else { continue };
                    tokio::task::spawn_local(self.clone().serve(link, peer));
                }
                Err(e) => {
                    tracing::warn!(shard = self.index, error = %e, "accept failed");
                    // Out of descriptors: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Enforces deadlines (handshake, close reply, pong) and sends idle pings.
    async fn timer_loop(self: Rc<Self>) {
        let config = &self.config;
        let shortest = [Some(config.handshake_timeout), Some(config.close_timeout), config.idle_timeout]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(Duration::from_secs(1));
        let mut interval =
            tokio::time::interval((shortest / 4).clamp(Duration::from_millis(10), Duration::from_secs(1)));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let now = Instant::now();
            let mut table = self.table.borrow_mut();
            for (_, conn) in table.conns.iter_mut() {
                if conn.deadline.is_some_and(|deadline| now >= deadline) {
                    conn.deadline = None;
                    conn.end_reason.get_or_insert(DisconnectReason::Timeout);
                    conn.link.shutdown();
                    continue;
                }
                let Some(idle) = config.idle_timeout else { continue };
                // No pings once closing: the close deadline is already running.
                if conn.accepts_data()
                    && !conn.close_received
                    && conn.deadline.is_none()
                    && now.duration_since(conn.last_read) >= idle
                {
                    conn.ping_outstanding = true;
                    conn.deadline = Some(now + idle);
                    let ping = PreparedMessage::ping(b"").map(PreparedMessage::into_bytes).unwrap_or_default();
                    let _ = self.enqueue_as(conn, OutFrame::single(ping), Outbound::Control);
                }
            }
        }
    }

    /// Counts a new connection against the server-wide limit (the count is shared by all
    /// shards, since `SO_REUSEPORT` does not balance connections evenly).
    fn admit_connection(&self) -> bool {
        let max = self.config.max_connections;
        if max == usize::MAX {
            return true;
        }
        if self.open_connections.fetch_add(1, Ordering::Relaxed) >= max {
            self.open_connections.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Wraps an accepted socket, with a TLS session if the server has TLS. Not part of the
    /// connection's future: a rustls session on that future's stack would make every
    /// connection's task as big as the session.
    fn link(&self, socket: crate::io::Socket) -> Option<Rc<Link>> {
        let session = match self.tls.as_ref().map(|config| rustls::ServerConnection::new(config.clone())) {
            None => None,
            Some(Ok(session)) => Some(session),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "cannot create a TLS session");
                return None;
            }
        };
        Some(Rc::new(Link::new(socket, session)))
    }

    /// Serves one accepted connection from start to end. (An `async move` block: an
    /// `async fn` would store its arguments twice in every connection's task.)
    #[expect(clippy::manual_async_fn, reason = "an async fn stores its arguments twice")]
    pub(crate) fn serve(self: Rc<Self>, link: Rc<Link>, peer: SocketAddr) -> impl Future<Output = ()> {
        async move {
            let id = {
                let mut table = self.table.borrow_mut();
                table.sequence = table.sequence.wrapping_add(1);
                let sequence = table.sequence;
                let entry = table.conns.vacant_entry();
                let id = ConnectionId::new(self.index, entry.key(), sequence);
                entry.insert(ConnState::new(id, peer, link.clone(), Instant::now() + self.config.handshake_timeout));
                id
            };
            self.stats.connections.add(1);
            self.handler.on_connect(id, peer);
            // The handshake's state is boxed so that it does not count towards the size of
            // the long-lived message loop: idle connections must stay small.
            let reason = match Box::pin(self.handshake(id, &link, peer)).await {
                Ok(buf) => match self.read_messages(id, &link, buf).await {
                    Ending::Now(reason) => reason,
                    Ending::AfterDrain(reason) => {
                        // Boxed: rare, and its timer must not weigh on every idle connection.
                        Box::pin(self.drain(id)).await;
                        reason
                    }
                },
                Err(reason) => reason,
            };
            self.finish(id, &link, reason);
        }
    }

    /// TLS and HTTP handshakes; returns the bytes that followed the upgrade request.
    async fn handshake(
        self: &Rc<Self>,
        id: ConnectionId,
        link: &Rc<Link>,
        peer: SocketAddr,
    ) -> Result<BytesMut, DisconnectReason> {
        if let Err(e) = link.handshake().await {
            return Err(self.end_reason(id).unwrap_or_else(|| DisconnectReason::Io(format!("TLS handshake: {e}"))));
        }
        let mut buf = BytesMut::new();
        let (request, head_len) = loop {
            match Request::parse(&buf) {
                Ok(RequestParse::Complete { request, head_len }) => break (request, head_len),
                Ok(RequestParse::Incomplete) => {}
                Err(e) => return Err(self.refuse(link, e.status(), e.response()).await),
            }
            self.read(id, link, &mut buf, 1024).await?;
        };
        buf.advance(head_len);
        if !request.wants_upgrade() {
            return Err(Box::pin(self.serve_http(id, link, &request, buf, peer)).await);
        }
        if let Some(path) = &self.config.path
            && request.path() != path
        {
            let response = handshake::error_response(404, "", "no WebSocket endpoint at this path\n");
            return Err(self.refuse(link, 404, response).await);
        }
        let options = self.config.options;
        let checks = UpgradeChecks {
            skip_upgrade_check: options.skip_upgrade_check,
            skip_version_check: options.skip_version_check,
        };
        let accept = match handshake::validate_upgrade(&request, checks) {
            Ok(accept) => accept,
            Err(e) => return Err(self.refuse(link, e.status(), e.response()).await),
        };
        match self.handler.allow(&request, peer) {
            Allow::Yes => {}
            Allow::No => {
                return Err(self.refuse(link, 403, handshake::error_response(403, "", "connection refused\n")).await);
            }
            Allow::Status(status) => {
                return Err(self
                    .refuse(link, status, handshake::error_response(status, "", "connection refused\n"))
                    .await);
            }
        }
        {
            // The 101 goes through the connection's queue: the connection is open from the
            // moment the response is committed, and anything sent to it afterwards (a
            // broadcast racing with the handshake, a welcome from the handler) is written
            // after the response, in order. The client may act as soon as it reads the 101.
            let mut table = self.table.borrow_mut();
            let conn = table.get_mut(id).ok_or(DisconnectReason::Timeout)?;
            conn.phase = Phase::Open;
            conn.request = Some(request);
            conn.deadline = None;
            conn.last_read = Instant::now();
            let response = handshake::accept_response(&accept, None, "");
            self.push(conn, OutFrame::untimed(response.into()));
        }
        self.stats.handshakes_accepted.add(1);
        self.stats.websockets.add(1);
        self.with_connection(id, |handler, conn| handler.on_handshake_response_sent(conn));
        if buf.is_empty() {
            // Drop the handshake's buffer; the message loop starts small.
            buf = BytesMut::new();
        }
        Ok(buf)
    }

    /// The steady state of a connection: read, decode, dispatch. Its future is what every
    /// idle connection holds, so it awaits nothing but the read, and is written as an
    /// `async move` block: an `async fn` would keep a second copy of its arguments.
    #[expect(clippy::manual_async_fn, reason = "an async fn stores its arguments twice")]
    fn read_messages<'a>(
        self: &'a Rc<Self>,
        id: ConnectionId,
        link: &'a Link,
        mut buf: BytesMut,
    ) -> impl Future<Output = Ending> + 'a {
        async move {
            let mut decoder = Decoder::new(self.decoder);
            let min_read = self.config.read_buffer;
            let mut read_size = min_read;
            loop {
                loop {
                    match decoder.decode(&mut buf) {
                        Ok(Some(incoming)) => {
                            if let Err(ending) = self.on_incoming(id, incoming) {
                                return ending;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            self.stats.protocol_errors.add(1);
                            tracing::debug!(shard = self.index, %id, error = %e, "protocol error");
                            let close = PreparedMessage::close(e.close_code(), &e.to_string()).into_bytes();
                            self.with_connection(id, |_, conn| conn.shard.start_close(conn.conn, close));
                            return Ending::AfterDrain(DisconnectReason::Protocol(e));
                        }
                    }
                }
                // Give memory back when a burst is over: idle connections keep a small buffer.
                if buf.is_empty() && buf.capacity() > 4 * read_size.max(min_read) {
                    buf = BytesMut::new();
                }
                let reserve = read_size.max(decoder.needed().min(MAX_READ));
                let n = match self.read_outcome(id, link.read(&mut buf, reserve).await) {
                    Ok(n) => n,
                    Err(reason) => return Ending::Now(reason),
                };
                read_size = if n >= read_size {
                    (read_size * 2).min(MAX_STEADY_READ)
                } else if n < read_size / 4 {
                    (read_size / 2).max(min_read)
                } else {
                    read_size
                };
                if let Some(conn) = self.table.borrow_mut().get_mut(id) {
                    conn.last_read = Instant::now();
                    if conn.ping_outstanding {
                        conn.ping_outstanding = false;
                        if !conn.close_sent && !conn.close_received {
                            conn.deadline = None;
                        }
                    }
                }
                if link.wants_flush() {
                    self.kick_writer(id);
                }
            }
        }
    }

    /// Dispatches one event to the handler and does the protocol's automatic part
    /// (pong, close reply). `Err` ends the connection.
    fn on_incoming(self: &Rc<Self>, id: ConnectionId, incoming: Incoming) -> Result<(), Ending> {
        let stats = &self.stats;
        match incoming {
            Incoming::Text(text) => {
                stats.messages_in.add(1);
                stats.bytes_in.add(text.len() as u64);
                self.with_connection(id, |handler, conn| handler.on_text(conn, &text));
            }
            Incoming::Binary(data) => {
                stats.messages_in.add(1);
                stats.bytes_in.add(data.len() as u64);
                self.with_connection(id, |handler, conn| handler.on_binary(conn, &data));
            }
            Incoming::Fragment { opcode, fin, payload } => {
                stats.messages_in.add(1);
                stats.bytes_in.add(payload.len() as u64);
                let frame = Frame { opcode, fin, payload: &payload };
                self.with_connection(id, |handler, conn| handler.on_frame(conn, frame));
            }
            Incoming::Ping(payload) => {
                let manual = self.config.options.manual_pong;
                self.with_connection(id, |handler, conn| {
                    if !manual {
                        let _ = conn.send_pong(&payload);
                    }
                    handler.on_ping(conn, &payload);
                });
            }
            Incoming::Pong(payload) => {
                self.with_connection(id, |handler, conn| handler.on_pong(conn, &payload));
            }
            Incoming::Close(frame) => {
                let code = frame.as_ref().map_or(CloseCode::Status, |f| f.code);
                let manual = self.config.options.manual_close;
                let close_timeout = self.config.close_timeout;
                let we_closed_first = self.with_connection(id, |handler, conn| {
                    conn.conn.close_received = true;
                    let we_closed_first = conn.conn.close_sent;
                    handler.on_close(conn, frame.as_ref());
                    if !conn.conn.close_sent && !manual {
                        // Echo the peer's code, as RFC 6455 §5.5.1 suggests.
                        let reply = PreparedMessage::close(code, "").into_bytes();
                        conn.shard.start_close(conn.conn, reply);
                    }
                    if !conn.conn.close_sent {
                        conn.conn.deadline = Some(Instant::now() + close_timeout);
                    }
                    // A close the server started (stop, slow consumer) keeps its reason.
                    let initiated = if we_closed_first { conn.conn.end_reason.take() } else { None };
                    (we_closed_first, conn.conn.close_sent, initiated)
                });
                match we_closed_first {
                    Some((true, _, initiated)) => {
                        return Err(Ending::Now(initiated.unwrap_or(DisconnectReason::Closed(code))));
                    }
                    None => return Err(Ending::Now(DisconnectReason::Closed(code))),
                    // Manual close without a reply yet: keep reading until the handler
                    // answers, the peer hangs up or the deadline passes.
                    Some((false, false, _)) => {}
                    Some((false, true, _)) => return Err(Ending::AfterDrain(DisconnectReason::Closed(code))),
                }
            }
        }
        Ok(())
    }

    /// Reads into `buf` (during the handshake); see [`Shard::read_outcome`].
    async fn read(
        &self,
        id: ConnectionId,
        link: &Link,
        buf: &mut BytesMut,
        reserve: usize,
    ) -> Result<usize, DisconnectReason> {
        self.read_outcome(id, link.read(buf, reserve).await)
    }

    /// A read's bytes, or why the connection ends: the reason recorded by whoever shut
    /// it down, if anyone did, else end of stream or the error.
    fn read_outcome(&self, id: ConnectionId, result: io::Result<usize>) -> Result<usize, DisconnectReason> {
        match result {
            Ok(0) => Err(self.end_reason(id).unwrap_or(DisconnectReason::Eof)),
            Ok(n) => Ok(n),
            Err(e) => Err(self.end_reason(id).unwrap_or(DisconnectReason::Io(e.to_string()))),
        }
    }

    fn end_reason(&self, id: ConnectionId) -> Option<DisconnectReason> {
        self.table.borrow_mut().get_mut(id).and_then(|c| c.end_reason.take())
    }

    /// Answers a refused handshake with an HTTP error and ends the connection.
    async fn refuse(&self, link: &Link, status: u16, response: Vec<u8>) -> DisconnectReason {
        self.stats.handshakes_refused.add(1);
        tracing::debug!(shard = self.index, status, "handshake refused");
        let _ = link.write_all(response).await;
        DisconnectReason::HandshakeRefused(status)
    }

    async fn serve_http(
        &self,
        id: ConnectionId,
        link: &Link,
        request: &Request,
        mut buf: BytesMut,
        peer: SocketAddr,
    ) -> DisconnectReason {
        let response = match content_length(request) {
            Err(()) => HttpResponse::text(411, "a Content-Length body is required\n"),
            Ok(len) if len > self.config.max_http_body => HttpResponse::text(413, "request body too large\n"),
            Ok(len) => {
                while buf.len() < len {
                    let missing = len - buf.len();
                    if let Err(reason) = self.read(id, link, &mut buf, missing).await {
                        return reason;
                    }
                }
                let http = HttpRequest { request, body: &buf[..len], peer, broadcaster: &self.broadcaster };
                self.handler.on_http(&http).unwrap_or_else(HttpResponse::upgrade_required)
            }
        };
        self.stats.http_requests.add(1);
        let _ = link.write_all(response.encode()).await;
        DisconnectReason::HttpServed
    }

    /// Calls `f` with a handler view of connection `id`, then applies any broadcasts the
    /// handler asked for. `None` if the connection is gone.
    fn with_connection<R>(
        self: &Rc<Self>,
        id: ConnectionId,
        f: impl FnOnce(&H, &mut Connection<'_, H>) -> R,
    ) -> Option<R> {
        let result = {
            let mut table = self.table.borrow_mut();
            let conn = table.get_mut(id)?;
            f(&self.handler, &mut Connection { shard: self, conn })
        };
        self.apply_deferred();
        Some(result)
    }

    pub(crate) fn defer_broadcast(&self, bytes: Bytes, target: Target<H>) {
        self.deferred.borrow_mut().push((bytes, target));
    }

    fn apply_deferred(self: &Rc<Self>) {
        loop {
            let pending = std::mem::take(&mut *self.deferred.borrow_mut());
            if pending.is_empty() {
                return;
            }
            let published = Instant::now();
            for (bytes, target) in pending {
                self.broadcaster.send_to_others(self.index, &bytes, published, &target);
                self.fan_out(&Rc::new(Outgoing { bytes, published: Some(published) }), &target);
            }
        }
    }

    /// Queues one encoded message on every selected connection of this shard.
    fn fan_out(self: &Rc<Self>, message: &Rc<Outgoing>, target: &Target<H>) {
        let mut table = self.table.borrow_mut();
        match target {
            Target::One(id) => {
                if let Some(conn) = table.get_mut(*id).filter(|c| c.accepts_data()) {
                    let _ = self.enqueue(conn, OutFrame::new(message.clone()));
                }
            }
            Target::Topic(topic) => {
                let topics = self.topics.borrow();
                for id in topics.get(&**topic).into_iter().flatten() {
                    if let Some(conn) = table.get_mut(*id).filter(|c| c.accepts_data()) {
                        let _ = self.enqueue(conn, OutFrame::new(message.clone()));
                    }
                }
            }
            _ => {
                for (_, conn) in table.conns.iter_mut() {
                    if conn.accepts_data() && target.matches(&ConnectionRef { conn }) {
                        let _ = self.enqueue(conn, OutFrame::new(message.clone()));
                    }
                }
            }
        }
    }

    /// Queues a frame on `conn`, applying the send-queue bound, and makes sure a writer
    /// task will write it.
    pub(crate) fn enqueue(self: &Rc<Self>, conn: &mut ConnState<H::Data>, frame: OutFrame) -> Result<(), SendError> {
        self.enqueue_as(conn, frame, Outbound::Message)
    }

    /// Queues a frame on `conn`, applying the send-queue bound, and makes sure a writer
    /// task will write it. While the application streams a fragmented message
    /// ([`Outbound::Fragment`]), other data messages wait until its last fragment: RFC
    /// 6455 §5.4 allows only control frames between fragments.
    pub(crate) fn enqueue_as(
        self: &Rc<Self>,
        conn: &mut ConnState<H::Data>,
        frame: OutFrame,
        kind: Outbound,
    ) -> Result<(), SendError> {
        let len = frame.len();
        // One message larger than the bound is still allowed through an empty queue.
        if conn.queued_bytes > 0 && conn.queued_bytes + len > self.config.send_queue_limit {
            match self.config.slow_consumer {
                SlowConsumerPolicy::DropNew => self.stats.dropped_messages.add(1),
                SlowConsumerPolicy::Disconnect => {
                    self.stats.slow_consumer_disconnects.add(1);
                    tracing::debug!(shard = self.index, id = %conn.id, "slow consumer disconnected");
                    conn.end_reason.get_or_insert(DisconnectReason::SlowConsumer);
                    let close = PreparedMessage::close(CloseCode::Policy, "send queue limit exceeded").into_bytes();
                    self.start_close(conn, close);
                }
            }
            return Err(SendError::QueueFull);
        }
        self.stats.messages_out.add(1);
        match (kind, conn.held.as_mut()) {
            (Outbound::Message, Some(held)) => {
                conn.queued_bytes += len;
                self.stats.queued_bytes.add(len as u64);
                held.push_back(frame);
            }
            (Outbound::Fragment { fin: false }, _) => {
                conn.held.get_or_insert_with(Box::default);
                self.push(conn, frame);
            }
            (Outbound::Fragment { fin: true }, _) => {
                self.push(conn, frame);
                for waiting in conn.held.take().into_iter().flat_map(|held| *held) {
                    conn.queued_bytes -= waiting.len();
                    self.stats.queued_bytes.sub(waiting.len() as u64);
                    self.push(conn, waiting);
                }
            }
            (Outbound::Message | Outbound::Control, _) => self.push(conn, frame),
        }
        Ok(())
    }

    /// Queues a frame and puts the connection on the list that the next flush writes.
    fn push(self: &Rc<Self>, conn: &mut ConnState<H::Data>, frame: OutFrame) {
        conn.queued_bytes += frame.len();
        self.stats.queued_bytes.add(frame.len() as u64);
        conn.queue.push_back(frame);
        if !conn.writing && !conn.flush_pending {
            conn.flush_pending = true;
            self.dirty.borrow_mut().push(conn.id);
            if !self.flush_scheduled.replace(true) {
                tokio::task::spawn_local(self.clone().flush());
            }
        }
    }

    /// Writes the queues of every connection that got frames since the last flush, each
    /// with one non-blocking `writev` made right here: no task and no submission per
    /// connection. Runs once per batch of events (it is spawned when the first frame of a
    /// batch is queued, so everything the batch queued goes out together). Only a socket
    /// that cannot take everything gets a writer task, which waits for it on the backend.
    async fn flush(self: Rc<Self>) {
        self.flush_scheduled.set(false);
        let dirty = std::mem::take(&mut *self.dirty.borrow_mut());
        let now = Instant::now();
        let mut table = self.table.borrow_mut();
        for &id in &dirty {
            let Some(conn) = table.get_mut(id) else { continue };
            conn.flush_pending = false;
            while !conn.writing && !conn.queue.is_empty() {
                match conn.link.try_write(&conn.queue) {
                    Ok(written) if written > 0 => self.account_write(conn, written, now),
                    Err(e) if e.kind() != io::ErrorKind::WouldBlock => {
                        self.fail_write(conn, DisconnectReason::Io(e.to_string()));
                    }
                    // Full socket (or TLS): a writer task finishes the job.
                    _ => {
                        conn.writing = true;
                        tokio::task::spawn_local(self.clone().write_loop(id, conn.link.clone()));
                    }
                }
            }
            if !conn.has_unsent()
                && let Some(waker) = conn.drain_waker.take()
            {
                waker.wake();
            }
        }
        drop(table);
        // Keep the list's allocation for the next batch.
        let mut dirty = dirty;
        dirty.clear();
        let mut slot = self.dirty.borrow_mut();
        if slot.is_empty() {
            *slot = dirty;
        }
    }

    /// Takes `written` bytes off the front of `conn`'s queue and counts them.
    fn account_write(&self, conn: &mut ConnState<H::Data>, written: usize, now: Instant) {
        conn.queued_bytes -= written;
        self.stats.queued_bytes.sub(written as u64);
        self.stats.bytes_out.add(written as u64);
        let mut left = written;
        let mut done = 0;
        let mut oldest = None;
        while let Some(frame) = conn.queue.front_mut() {
            if left < frame.len() {
                frame.advance(left);
                break;
            }
            left -= frame.len();
            if let Some(published) = frame.published() {
                oldest.get_or_insert(published);
                done += 1;
            }
            conn.queue.pop_front();
        }
        if let Some(published) = oldest {
            self.stats.record_latency(now.duration_since(published), done);
        }
    }

    /// A write failed: the connection cannot be written any more, so it ends.
    fn fail_write(&self, conn: &mut ConnState<H::Data>, reason: DisconnectReason) {
        conn.end_reason.get_or_insert(reason);
        conn.writing = false;
        conn.queue.clear();
        self.stats.queued_bytes.sub(conn.queued_bytes as u64);
        conn.queued_bytes = 0;
        if let Some(waker) = conn.drain_waker.take() {
            waker.wake();
        }
        conn.link.shutdown();
    }

    pub(crate) fn subscribe(&self, conn: &mut ConnState<H::Data>, topic: &str) -> bool {
        if conn.topics.iter().any(|t| &**t == topic) {
            return false;
        }
        let mut topics = self.topics.borrow_mut();
        let key = match topics.get_key_value(topic) {
            Some((key, _)) => key.clone(),
            None => Rc::from(topic),
        };
        topics.entry(key.clone()).or_default().insert(conn.id);
        conn.topics.push(key);
        true
    }

    pub(crate) fn unsubscribe(&self, conn: &mut ConnState<H::Data>, topic: &str) -> bool {
        let Some(position) = conn.topics.iter().position(|t| &**t == topic) else { return false };
        conn.topics.swap_remove(position);
        self.remove_member(topic, conn.id);
        true
    }

    fn remove_member(&self, topic: &str, id: ConnectionId) {
        let mut topics = self.topics.borrow_mut();
        if let Some(members) = topics.get_mut(topic) {
            members.remove(&id);
            if members.is_empty() {
                topics.remove(topic);
            }
        }
    }

    /// Queues a close frame (exempt from the queue bound) and starts the close deadline.
    pub(crate) fn start_close(self: &Rc<Self>, conn: &mut ConnState<H::Data>, close: Bytes) {
        if conn.close_sent {
            return;
        }
        conn.close_sent = true;
        conn.deadline = Some(Instant::now() + self.config.close_timeout);
        self.push(conn, OutFrame::single(close));
    }

    fn kick_writer(self: &Rc<Self>, id: ConnectionId) {
        if let Some(conn) = self.table.borrow_mut().get_mut(id)
            && !conn.writing
        {
            conn.writing = true;
            tokio::task::spawn_local(self.clone().write_loop(id, conn.link.clone()));
        }
    }

    /// Drains a connection's queue: one vectored write of everything queued, repeated
    /// until the queue is empty. At most one runs per connection.
    async fn write_loop(self: Rc<Self>, id: ConnectionId, link: Rc<Link>) {
        let mut batch: Vec<OutFrame> = Vec::new();
        loop {
            {
                let mut table = self.table.borrow_mut();
                let Some(conn) = table.get_mut(id) else { return };
                if conn.queue.is_empty() && !link.wants_flush() {
                    conn.writing = false;
                    if let Some(waker) = conn.drain_waker.take() {
                        waker.wake();
                    }
                    return;
                }
                let n = conn.queue.len().min(MAX_IOV);
                batch.extend(conn.queue.drain(..n));
            }
            let (result, mut frames) = link.writev(batch).await;
            let now = Instant::now();
            let mut table = self.table.borrow_mut();
            let Some(conn) = table.get_mut(id) else { return };
            // Back to the front of the queue, in order, ahead of anything queued meanwhile.
            for frame in frames.drain(..).rev() {
                conn.queue.push_front(frame);
            }
            batch = frames;
            match result {
                Ok(written) if written > 0 || conn.queue.is_empty() => self.account_write(conn, written, now),
                Ok(_) => return self.fail_write(conn, DisconnectReason::Io("write returned 0".into())),
                Err(e) => return self.fail_write(conn, DisconnectReason::Io(e.to_string())),
            }
        }
    }

    /// Waits (at most the close timeout) until the connection's queue is written.
    async fn drain(&self, id: ConnectionId) {
        let drained = poll_fn(|cx| {
            let mut table = self.table.borrow_mut();
            match table.get_mut(id) {
                Some(conn) if conn.has_unsent() => {
                    conn.drain_waker = Some(cx.waker().clone());
                    Poll::Pending
                }
                _ => Poll::Ready(()),
            }
        });
        let _ = tokio::time::timeout(self.config.close_timeout, drained).await;
    }

    /// Removes a finished connection and tells the handler, exactly once.
    fn finish(self: &Rc<Self>, id: ConnectionId, link: &Link, reason: DisconnectReason) {
        link.shutdown();
        let Some(mut conn) = self.table.borrow_mut().remove(id) else { return };
        self.stats.connections.sub(1);
        if self.config.max_connections != usize::MAX {
            self.open_connections.fetch_sub(1, Ordering::Relaxed);
        }
        if conn.phase == Phase::Open {
            self.stats.websockets.sub(1);
        }
        conn.phase = Phase::Gone;
        conn.queue.clear();
        self.stats.queued_bytes.sub(conn.queued_bytes as u64);
        conn.queued_bytes = 0;
        tracing::debug!(shard = self.index, %id, ?reason, "disconnected");
        // The handler still sees the connection's topics; the index forgets them after.
        self.handler.on_disconnect(&mut Connection { shard: self, conn: &mut conn }, &reason);
        for topic in std::mem::take(&mut conn.topics) {
            self.remove_member(&topic, id);
        }
        self.apply_deferred();
    }

    /// Graceful stop: no new connections, close 1001 to everyone, a bounded wait for the
    /// replies, then whatever is left is dropped.
    async fn stop(self: &Rc<Self>, control: &std::net::TcpListener) {
        self.stopping.set(true);
        // Shutting the listening socket down completes the pending accept.
        let _ = socket2::SockRef::from(control).shutdown(std::net::Shutdown::Read);
        {
            let mut table = self.table.borrow_mut();
            let close = PreparedMessage::close(CloseCode::Away, "server stopping").into_bytes();
            for (_, conn) in table.conns.iter_mut() {
                conn.end_reason.get_or_insert(DisconnectReason::ServerStopping);
                if conn.phase == Phase::Open {
                    self.start_close(conn, close.clone());
                } else {
                    conn.link.shutdown();
                }
            }
        }
        let deadline = Instant::now() + self.config.close_timeout;
        let mut forced = false;
        while !self.table.borrow().conns.is_empty() {
            if Instant::now() >= deadline && !forced {
                forced = true;
                for (_, conn) in self.table.borrow_mut().conns.iter_mut() {
                    conn.link.shutdown();
                }
            } else if forced && Instant::now() >= deadline + Duration::from_secs(1) {
                tracing::warn!(shard = self.index, left = self.table.borrow().conns.len(), "connections did not end");
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
