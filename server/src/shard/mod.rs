//! One shard: the connection table, the handler calls, fan-out, timers and the stop.
//!
//! A shard knows nothing about sockets. Its I/O driver (io_uring or epoll, see `io/`)
//! owns the loop and reports what happened — a connection accepted, bytes read, a write
//! done, time passed — and the shard turns that into state-machine inputs and handler
//! calls. After each report the driver collects what the shard wants: connections to
//! write ([`Shard::take_dirty`]) and connections that ended and must be closed
//! ([`Shard::take_ended`]). `I` is the driver's own per-connection state, kept in the same
//! slot so that one lookup finds both.

mod recovery;
mod timers;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ringcast_codec::deflate::{BroadcastCompressor, WindowBits, variant_window_bits};
use ringcast_codec::{CloseCode, Incoming, OpCode};
use slab::Slab;

use crate::access::Access;
use crate::api::broadcaster::{Broadcast, Broadcaster, Command, Mailbox, Visitor};
use crate::api::connection::{ConnectionRef, ShardView, compress_payload};
use crate::api::{Connection, HttpRequest, HttpResponse, Target};
use crate::config::Config;
use crate::conn::{Conn, Delivered, Event, OutFrame, Outbound, Outgoing, Overflow, Refused};
use crate::event::{Allow, DisconnectReason, Frame};
use crate::handler::Handler;
use crate::id::ConnectionId;
use crate::stats::ShardStats;
use timers::TimerQueue;

/// One connection's entry in the shard's table.
pub(crate) struct Slot<D, I> {
    pub(crate) conn: Conn<D>,
    /// The driver's per-connection state.
    pub(crate) io: I,
    /// The queued bytes counted in the shard's gauge for this connection.
    accounted: u32,
    /// The incomplete-input bytes counted in the shard's gauge for this connection.
    buffered: u32,
}

/// What a shard is given to start (built on the caller's thread; the shard itself is
/// not `Send`).
pub(crate) struct ShardSetup<H: Handler> {
    pub(crate) index: usize,
    pub(crate) config: Arc<Config>,
    pub(crate) handler: Arc<H>,
    pub(crate) broadcaster: Broadcaster<H::Data>,
    pub(crate) mailbox: Arc<Mailbox<H::Data>>,
    pub(crate) stats: Arc<ShardStats>,
    /// Connections open on all shards, counted only when a limit is configured.
    pub(crate) open_connections: Arc<AtomicUsize>,
    /// Bytes of incomplete input held on all shards (the input budget's gauge).
    pub(crate) buffered_input: Arc<AtomicUsize>,
}

/// The backend-independent half of a worker.
pub(crate) struct Shard<H: Handler, I> {
    index: usize,
    handler: Arc<H>,
    conns: Slab<Slot<H::Data, I>>,
    view: ShardView<H::Data>,
    mailbox: Arc<Mailbox<H::Data>>,
    timers: TimerQueue,
    /// Entries in `timers` known to be garbage (their connection's deadline went away).
    stale_timers: usize,
    /// Connections with frames to write, in the order they got them.
    dirty: Vec<usize>,
    /// Connections that ended and whose sockets the driver must close.
    ended: Vec<usize>,
    sequence: u32,
    open_connections: Arc<AtomicUsize>,
    /// See [`ShardSetup::buffered_input`].
    buffered_input: Arc<AtomicUsize>,
    /// Input grew past the budget during this input: shed before reading on.
    over_budget: bool,
    /// Input was shed: the driver should hand the freed memory back to the kernel.
    trim_wanted: bool,
    commands: Vec<Command<H::Data>>,
    /// Set once a stop was requested: when every connection must be gone.
    stop_deadline: Option<Instant>,
    /// Between the two steps of a stop (see `StopBarrier`): the input that arrived,
    /// per connection (slot and id), read once the closes are queued.
    held_input: Option<Vec<(usize, ConnectionId, Vec<u8>)>>,
}

impl<H: Handler, I> Shard<H, I> {
    pub(crate) fn new(setup: ShardSetup<H>, now: Instant) -> Self {
        let ShardSetup { index, config, handler, broadcaster, mailbox, stats, open_connections, buffered_input } =
            setup;
        let check = {
            let handler = handler.clone();
            Box::new(move |conn: &ConnectionRef<'_, H::Data>, access: Access<'_>| handler.check(conn, access))
        };
        Shard {
            index,
            handler,
            conns: Slab::new(),
            view: ShardView {
                config,
                broadcaster,
                topics: Default::default(),
                stats,
                now,
                index,
                deferred: Vec::new(),
                compressor: None,
                check,
            },
            mailbox,
            timers: TimerQueue::default(),
            stale_timers: 0,
            dirty: Vec::new(),
            ended: Vec::new(),
            sequence: 0,
            open_connections,
            buffered_input,
            over_budget: false,
            trim_wanted: false,
            commands: Vec::new(),
            stop_deadline: None,
            held_input: None,
        }
    }

    pub(crate) fn index(&self) -> usize {
        self.index
    }

    pub(crate) fn config(&self) -> &Config {
        &self.view.config
    }

    pub(crate) fn mailbox(&self) -> &Mailbox<H::Data> {
        &self.mailbox
    }

    // ------------------------------------------------------------------ admission

    /// Counts a new connection against the server-wide limit (shared by all shards,
    /// since `SO_REUSEPORT` does not balance connections evenly). `false`: refuse it.
    pub(crate) fn admit(&self) -> bool {
        let max = self.view.config.max_connections;
        if self.stop_deadline.is_some() {
            return false;
        }
        if max == usize::MAX {
            return true;
        }
        if self.open_connections.fetch_add(1, Ordering::Relaxed) >= max {
            self.open_connections.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Gives back an admission whose connection never got a slot.
    pub(crate) fn unadmit(&self) {
        if self.view.config.max_connections != usize::MAX {
            self.open_connections.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Every slot, for a driver that must let go of its in-flight state.
    pub(crate) fn slots_mut(&mut self) -> impl Iterator<Item = &mut Slot<H::Data, I>> {
        self.conns.iter_mut().map(|(_, slot)| slot)
    }

    /// A connection was admitted and accepted: gives it a slot. Returns the slot key.
    pub(crate) fn accept(&mut self, io: I, peer: SocketAddr, now: Instant) -> usize {
        self.sequence = self.sequence.wrapping_add(1);
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        let id = ConnectionId::new(self.index, key, self.sequence);
        let conn = Conn::new(id, peer, H::Data::default(), &self.view.config, now);
        entry.insert(Slot { conn, io, accounted: 0, buffered: 0 });
        self.view.stats.connections.add(1);
        self.handler.on_connect(id, peer);
        self.settle(key);
        key
    }

    // ------------------------------------------------------------------ inputs

    /// Bytes arrived on connection `key`; they may be changed in place (unmasking).
    pub(crate) fn on_input(&mut self, key: usize, mut input: &mut [u8], now: Instant) {
        self.view.now = now;
        if let Some(held) = &mut self.held_input {
            if let Some(slot) = self.conns.get(key) {
                held.push((key, slot.conn.id(), input.to_vec()));
            }
            return;
        }
        loop {
            let Some(slot) = self.conns.get_mut(key) else { return };
            let Some(event) = slot.conn.poll_input(&mut input, &self.view.config, now) else { break };
            self.handle_event(key, event);
        }
        self.settle(key);
        if self.over_budget {
            self.shed_input();
        }
    }

    /// The server holds more incomplete input than its budget: closes this shard's
    /// connections that hold the most until the total is under seven eighths of it (or
    /// this shard holds nothing more). Each shard sheds its own, so the biggest holders
    /// go first wherever they are.
    fn shed_input(&mut self) {
        self.over_budget = false;
        let budget = self.view.config.max_buffered_input;
        let low_water = budget - budget / 8;
        let mut holders: Vec<(u32, usize)> =
            self.conns.iter().filter(|(_, slot)| slot.buffered > 0).map(|(key, slot)| (slot.buffered, key)).collect();
        holders.sort_unstable_by(|a, b| b.cmp(a));
        for (held, key) in holders {
            if self.buffered_input.load(Ordering::Relaxed) <= low_water {
                break;
            }
            let Some(slot) = self.conns.get_mut(key) else { continue };
            tracing::warn!(
                shard = self.index,
                id = %slot.conn.id(),
                peer = %slot.conn.peer(),
                held,
                budget,
                "input budget exceeded: closing the connection holding the most (1009)"
            );
            slot.conn.shed_input(&self.view.config, self.view.now);
            self.view.stats.input_budget_closes.add(1);
            self.trim_wanted = true;
            self.settle(key);
        }
    }

    /// Whether input was shed since the last call: the freed buffers were large, and the
    /// allocator keeps them unless asked to give them back.
    pub(crate) fn take_trim_request(&mut self) -> bool {
        std::mem::take(&mut self.trim_wanted)
    }

    fn handle_event(&mut self, key: usize, event: Event<'_>) {
        let stats = &self.view.stats;
        match event {
            Event::Upgrade { request, accept, deflate } => {
                let Some(slot) = self.conns.get_mut(key) else { return };
                let (peer, id) = (slot.conn.peer(), slot.conn.id());
                match self.handler.authenticate(&request, peer, id, &mut slot.conn.data) {
                    Allow::Yes => {
                        slot.conn.accept(request, &accept, deflate.as_deref(), &self.view.config);
                        stats.handshakes_accepted.add(1);
                        stats.websockets.add(1);
                        self.dispatch(key, |handler, conn| handler.on_handshake_response_sent(conn));
                        if !self.view.config.keep_request
                            && let Some(slot) = self.conns.get_mut(key)
                        {
                            slot.conn.drop_request();
                        }
                    }
                    decision => {
                        let status = match decision {
                            Allow::Status(status) => status,
                            _ => 403,
                        };
                        stats.handshakes_refused.add(1);
                        tracing::debug!(shard = self.index, id = %slot.conn.id(), status, "upgrade refused by the handler");
                        slot.conn.refuse(status, &self.view.config, self.view.now);
                    }
                }
            }
            Event::Http { .. } if self.stop_deadline.is_some() => {
                let Some(slot) = self.conns.get_mut(key) else { return };
                stats.http_requests.add(1);
                let answer = ringcast_codec::handshake::error_response(503, "", "server stopping\n");
                slot.conn.respond(answer, &self.view.config, self.view.now);
            }
            Event::Http { request, body } => {
                let Some(slot) = self.conns.get_mut(key) else { return };
                let http = HttpRequest {
                    request: &request,
                    body: &body,
                    peer: slot.conn.peer(),
                    broadcaster: &self.view.broadcaster,
                };
                let response = self.handler.on_http(&http).unwrap_or_else(HttpResponse::upgrade_required);
                stats.http_requests.add(1);
                slot.conn.respond(response.encode(), &self.view.config, self.view.now);
            }
            Event::Refused(status) => {
                stats.handshakes_refused.add(1);
                tracing::debug!(shard = self.index, status, "handshake refused");
            }
            Event::HttpRefused(status) => {
                stats.http_requests.add(1);
                tracing::debug!(shard = self.index, status, "HTTP request refused");
            }
            Event::ProtocolError(error) => {
                stats.protocol_errors.add(1);
                tracing::debug!(shard = self.index, %error, "protocol error");
            }
            Event::Message(incoming) => self.deliver(key, incoming),
        }
    }

    /// Hands a message or control frame to the handler.
    fn deliver(&mut self, key: usize, incoming: Incoming<'_>) {
        let stats = &self.view.stats;
        match incoming {
            // Once the shard is stopping, messages are read (to get to the close replies)
            // but not handed over: the other shards may have closed their connections
            // already, and a message must reach every subscriber or none.
            Incoming::Text(_) | Incoming::Binary(_) | Incoming::Fragment { .. } if self.stop_deadline.is_some() => {}
            Incoming::Text(text) => {
                stats.messages_in.add(1);
                stats.bytes_in.add(text.len() as u64);
                self.dispatch(key, |handler, conn| handler.on_text(conn, &text));
            }
            Incoming::Binary(data) => {
                stats.messages_in.add(1);
                stats.bytes_in.add(data.len() as u64);
                self.dispatch(key, |handler, conn| handler.on_binary(conn, &data));
            }
            Incoming::Fragment { opcode, fin, payload } => {
                stats.messages_in.add(1);
                stats.bytes_in.add(payload.len() as u64);
                let frame = Frame { opcode, fin, payload: &payload };
                self.dispatch(key, |handler, conn| handler.on_frame(conn, frame));
            }
            Incoming::Ping(payload) => self.dispatch(key, |handler, conn| handler.on_ping(conn, &payload)),
            Incoming::Pong(payload) => self.dispatch(key, |handler, conn| handler.on_pong(conn, &payload)),
            Incoming::Close(frame) => {
                self.dispatch(key, |handler, conn| handler.on_close(conn, frame.as_ref()));
                if let Some(slot) = self.conns.get_mut(key) {
                    slot.conn.after_close_frame(&self.view.config, self.view.now);
                }
            }
        }
    }

    /// Calls the handler with a [`Connection`] view of `key`, then queues what it sent
    /// to this shard's connections.
    fn dispatch(&mut self, key: usize, f: impl FnOnce(&H, &mut Connection<'_, H::Data>)) {
        let Some(slot) = self.conns.get_mut(key) else { return };
        f(&self.handler, &mut Connection { conn: &mut slot.conn, shard: &mut self.view });
        self.apply_deferred();
    }

    fn apply_deferred(&mut self) {
        while !self.view.deferred.is_empty() {
            let deferred = std::mem::take(&mut self.view.deferred);
            for (message, target) in &deferred {
                self.fan_out(message, target);
            }
        }
    }

    /// The peer closed its side.
    pub(crate) fn on_eof(&mut self, key: usize, now: Instant) {
        self.view.now = now;
        if let Some(slot) = self.conns.get_mut(key) {
            slot.conn.handle_eof();
        }
        self.settle(key);
    }

    /// Reading or writing `key` failed.
    pub(crate) fn on_io_error(&mut self, key: usize, error: String, now: Instant) {
        self.view.now = now;
        if let Some(slot) = self.conns.get_mut(key) {
            slot.conn.handle_io_error(error);
        }
        self.settle(key);
    }

    /// A write that [`Conn::poll_transmit`] started took `written` bytes.
    pub(crate) fn on_written(&mut self, key: usize, written: usize, now: Instant) {
        self.view.now = now;
        let Some(slot) = self.conns.get_mut(key) else { return };
        let Delivered { messages, oldest } = slot.conn.handle_written(written);
        let stats = &self.view.stats;
        stats.bytes_out.add(written as u64);
        if let Some(published) = oldest {
            stats.record_latency(now.saturating_duration_since(published), messages);
        }
        self.settle(key);
    }

    /// Applies every deadline that passed by `now`.
    pub(crate) fn on_timers(&mut self, now: Instant) {
        self.view.now = now;
        while let Some((at, key, id)) = self.timers.pop_due(now) {
            let Some(slot) = self.conns.get_mut(key) else { continue };
            if slot.conn.id().as_u64() != id || !slot.conn.take_scheduled(at, &self.view.config) {
                self.stale_timers = self.stale_timers.saturating_sub(1);
                continue;
            }
            slot.conn.handle_timeout(&self.view.config, now);
            self.settle(key);
        }
        self.timers.shrink();
        if let Some(deadline) = self.stop_deadline
            && now >= deadline
        {
            self.force_end_all(now);
        }
    }

    /// Drops the timer entries of connections that are gone or no longer queued there.
    fn compact_timers(&mut self) {
        let (conns, config) = (&self.conns, &self.view.config);
        self.timers.retain(|at, key, id| {
            conns.get(key).is_some_and(|slot| slot.conn.id().as_u64() == id && slot.conn.is_scheduled_at(at, config))
        });
        self.stale_timers = 0;
    }

    /// The next instant [`Shard::on_timers`] must run at.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        match (self.timers.next(), self.stop_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Applies the commands other threads sent; returns `false` if there were none.
    pub(crate) fn on_commands(&mut self, now: Instant) -> bool {
        self.view.now = now;
        let mut commands = std::mem::take(&mut self.commands);
        self.mailbox.take(&mut commands);
        let any = !commands.is_empty();
        for command in commands.drain(..) {
            match command {
                Command::Send { message, target } => self.fan_out(&message, &target),
                Command::Visit { target, visit } => self.visit(&target, &visit),
                Command::Quiesce(barrier) => {
                    if self.stop_deadline.is_none() && self.held_input.is_none() {
                        self.held_input = Some(Vec::new());
                    }
                    barrier.arrive();
                }
                Command::Stop => self.begin_stop(now),
                Command::Join { id, topic, replay } => self.join(id, &topic, replay),
                Command::Run { id, task } => self.run_task(id, task),
            }
        }
        self.commands = commands;
        any
    }

    /// Queues one encoded message on every connection of this shard that `target` picks:
    /// one `Rc` for the shard, a reference to it per connection, no copy.
    fn fan_out(&mut self, message: &Broadcast, target: &Target<H::Data>) {
        let outgoing = Rc::new(Outgoing { bytes: message.bytes.clone(), published: Some(message.published) });
        let mut fan = FanOut {
            outgoing: &outgoing,
            message,
            compressed: Vec::new(),
            compressor: &mut self.view.compressor,
            config: &self.view.config,
            stats: &self.view.stats,
            now: self.view.now,
            dirty: &mut self.dirty,
            timers: &mut self.timers,
            shard: self.index,
        };
        match target {
            Target::Connection(id) => {
                if let Some(slot) = self.conns.get_mut(id.slot()).filter(|s| s.conn.id() == *id) {
                    fan.deliver(id.slot(), slot);
                }
            }
            Target::Topic(topic) => {
                for id in self.view.topics.members(topic) {
                    if let Some(slot) = self.conns.get_mut(id.slot()) {
                        fan.deliver(id.slot(), slot);
                    }
                }
            }
            _ => {
                for (key, slot) in self.conns.iter_mut() {
                    if slot.conn.is_open() && target.matches(&ConnectionRef { conn: &slot.conn }) {
                        fan.deliver(key, slot);
                    }
                }
            }
        }
    }

    /// Runs `visit` on every open connection of this shard that `target` picks, each as
    /// a handler event of its own.
    fn visit(&mut self, target: &Target<H::Data>, visit: &Visitor<H::Data>) {
        let keys: Vec<usize> = match target {
            Target::Connection(id) => {
                self.conns.get(id.slot()).filter(|s| s.conn.id() == *id).map(|_| id.slot()).into_iter().collect()
            }
            Target::Topic(topic) => self.view.topics.members(topic).map(|id| id.slot()).collect(),
            _ => self
                .conns
                .iter()
                .filter(|(_, slot)| slot.conn.is_open() && target.matches(&ConnectionRef { conn: &slot.conn }))
                .map(|(key, _)| key)
                .collect(),
        };
        for key in keys {
            if self.conns.get(key).is_some_and(|slot| slot.conn.is_open()) {
                self.dispatch(key, |_, conn| visit(conn));
                self.settle(key);
            }
        }
    }

    // ------------------------------------------------------------------ bookkeeping

    /// After anything happened to `key`: list it for writing, queue its deadline, keep
    /// the gauge in step, and tell the handler if it ended.
    fn settle(&mut self, key: usize) {
        let Some(slot) = self.conns.get_mut(key) else { return };
        if slot.conn.needs_listing() {
            self.dirty.push(key);
        }
        let stats = &self.view.stats;
        slot.accounted = track(&stats.queued_bytes, slot.accounted, slot.conn.queued_bytes());
        let buffered = track(&stats.buffered_input, slot.buffered, slot.conn.buffered_input());
        if buffered != slot.buffered {
            // The server-wide gauge moves with the shard's, and only when it changes.
            let total = if buffered > slot.buffered {
                let grown = (buffered - slot.buffered) as usize;
                self.buffered_input.fetch_add(grown, Ordering::Relaxed) + grown
            } else {
                let shrunk = (slot.buffered - buffered) as usize;
                self.buffered_input.fetch_sub(shrunk, Ordering::Relaxed) - shrunk
            };
            if buffered > slot.buffered && total > self.view.config.max_buffered_input {
                self.over_budget = true;
            }
            slot.buffered = buffered;
        }
        match slot.conn.poll_timeout(&self.view.config) {
            Some(at) => {
                if slot.conn.schedule(at, &self.view.config) {
                    self.timers.push(at, key, slot.conn.id().as_u64());
                }
            }
            None => {
                if slot.conn.unschedule() {
                    self.stale_timers += 1;
                }
            }
        }
        if let Some(reason) = slot.conn.poll_end() {
            self.end(key, reason);
        }
        if self.stale_timers > 64 && self.stale_timers * 2 > self.timers.len() {
            self.compact_timers();
        }
    }

    /// A connection ended: the handler hears of it exactly once, the topic index forgets
    /// it, and the driver is told to close its socket.
    fn end(&mut self, key: usize, reason: DisconnectReason) {
        let Some(slot) = self.conns.get_mut(key) else { return };
        let id = slot.conn.id();
        let stats = &self.view.stats;
        stats.connections.sub(1);
        if slot.conn.was_opened() {
            stats.websockets.sub(1);
        }
        if self.view.config.max_connections != usize::MAX {
            self.open_connections.fetch_sub(1, Ordering::Relaxed);
        }
        tracing::debug!(shard = self.index, %id, ?reason, "disconnected");
        // The handler still sees the connection's topics; the index forgets them after.
        self.dispatch(key, |handler, conn| handler.on_disconnect(conn, &reason));
        if let Some(slot) = self.conns.get_mut(key) {
            for topic in slot.conn.take_topics() {
                self.view.topics.remove(&topic, id);
            }
        }
        self.ended.push(key);
    }

    /// The connections to write, taken off their list. For each, the driver calls
    /// [`Conn::poll_transmit`] through [`Shard::slot_mut`].
    pub(crate) fn take_dirty(&mut self, into: &mut Vec<usize>) {
        std::mem::swap(&mut self.dirty, into);
        for &key in into.iter() {
            if let Some(slot) = self.conns.get_mut(key) {
                slot.conn.unlist();
            }
        }
    }

    /// The connections that ended; the driver closes their sockets and then calls
    /// [`Shard::release`].
    pub(crate) fn take_ended(&mut self, into: &mut Vec<usize>) {
        std::mem::swap(&mut self.ended, into);
    }

    /// Whether connections wait to be written or closed.
    pub(crate) fn has_work(&self) -> bool {
        !self.dirty.is_empty() || !self.ended.is_empty()
    }

    pub(crate) fn slot_mut(&mut self, key: usize) -> Option<&mut Slot<H::Data, I>> {
        self.conns.get_mut(key)
    }

    /// Frees the slot of an ended connection whose socket the driver has closed.
    pub(crate) fn release(&mut self, key: usize) -> Option<I> {
        if self.conns.get(key).is_some_and(|slot| slot.conn.is_finished()) {
            return Some(self.conns.remove(key).io);
        }
        None
    }

    /// Ends `key` at once (the driver cannot serve it any more).
    pub(crate) fn abort(&mut self, key: usize, reason: DisconnectReason) {
        if let Some(slot) = self.conns.get_mut(key) {
            slot.conn.force_end(reason);
        }
        self.settle(key);
    }

    // ------------------------------------------------------------------ stop

    /// Graceful stop: no new connections, close 1001 to every open one, a bounded wait
    /// for their replies (the close timeout), then whatever is left is dropped.
    fn begin_stop(&mut self, now: Instant) {
        if self.stop_deadline.is_some() {
            return;
        }
        self.stop_deadline = Some(now + self.view.config.close_timeout);
        let keys: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
        for key in keys {
            if let Some(slot) = self.conns.get_mut(key) {
                slot.conn.close_for(
                    DisconnectReason::ServerStopping,
                    CloseCode::Away,
                    "server stopping",
                    &self.view.config,
                    now,
                );
            }
            self.settle(key);
        }
        // What arrived between the two steps: close replies are read, messages are not
        // delivered any more (see `deliver`).
        for (key, id, mut input) in self.held_input.take().unwrap_or_default() {
            if self.conns.get(key).is_some_and(|slot| slot.conn.id() == id) {
                self.on_input(key, &mut input, now);
            }
        }
    }

    fn force_end_all(&mut self, now: Instant) {
        let keys: Vec<usize> = self.conns.iter().filter(|(_, s)| !s.conn.is_finished()).map(|(key, _)| key).collect();
        for key in keys {
            self.abort(key, DisconnectReason::ServerStopping);
        }
        let _ = now;
    }

    /// Whether a stop was requested.
    pub(crate) fn is_stopping(&self) -> bool {
        self.stop_deadline.is_some()
    }

    /// Whether the shard has stopped: a stop was requested and every connection is gone.
    pub(crate) fn is_stopped(&self) -> bool {
        self.stop_deadline.is_some() && self.conns.is_empty()
    }

    /// After the stop deadline plus this grace, the driver gives up on connections whose
    /// sockets did not finish closing.
    pub(crate) fn stop_grace() -> Duration {
        Duration::from_secs(1)
    }

    /// When the stop must be over, grace included.
    pub(crate) fn stop_limit(&self) -> Option<Instant> {
        self.stop_deadline.map(|d| d + Self::stop_grace())
    }

    /// Bytes held for this shard's connections: queued to write and incomplete input.
    pub(crate) fn held_bytes(&self) -> u64 {
        self.view.stats.queued_bytes.get() + self.view.stats.buffered_input.get()
    }

    /// Bytes this shard has read and written so far.
    pub(crate) fn moved_bytes(&self) -> u64 {
        self.view.stats.bytes_in.get() + self.view.stats.bytes_out.get()
    }

    /// The number of connections in the table (including ended ones not yet released).
    pub(crate) fn len(&self) -> usize {
        self.conns.len()
    }
}

/// One message being queued on many connections of a shard. Queuing a delivery calls no
/// handler and cannot end a connection (a slow consumer is only asked to close), so the
/// loop over the table needs none of the shard's other state.
struct FanOut<'a> {
    /// The plain frames, shared by the shard's connections that take them.
    outgoing: &'a Rc<Outgoing>,
    message: &'a Broadcast,
    /// The compressed variants this shard has queued so far, by window.
    compressed: Vec<(WindowBits, Option<Rc<Outgoing>>)>,
    compressor: &'a mut Option<BroadcastCompressor>,
    config: &'a Config,
    stats: &'a ShardStats,
    now: Instant,
    dirty: &'a mut Vec<usize>,
    timers: &'a mut TimerQueue,
    shard: usize,
}

impl FanOut<'_> {
    /// The frames a connection with permessage-deflate `window` takes: the compressed
    /// variant (built once for the whole server, wrapped once for this shard), or the plain
    /// frames when compression does not pay.
    fn variant(&mut self, window: WindowBits) -> Rc<Outgoing> {
        let Some(deflatable) = &self.message.deflatable else { return self.outgoing.clone() };
        let key = variant_window_bits(window, deflatable.plain.payload_len());
        if let Some((_, cached)) = self.compressed.iter().find(|(bits, _)| *bits == key) {
            return cached.clone().unwrap_or_else(|| self.outgoing.clone());
        }
        let (config, stats) = (self.config, self.stats);
        let prepared = deflatable.variants.get_or_compress(key, || {
            stats.compressions.add(1);
            let compressor = self.compressor.get_or_insert_with(|| BroadcastCompressor::new(&config.deflate));
            let plain = &deflatable.plain;
            compress_payload(compressor, plain.opcode() == OpCode::Text, &plain.payload(), config.split, key)
        });
        let outgoing = prepared.map(|prepared| {
            Rc::new(Outgoing { bytes: prepared.as_bytes().clone(), published: Some(self.message.published) })
        });
        self.compressed.push((key, outgoing.clone()));
        outgoing.unwrap_or_else(|| self.outgoing.clone())
    }

    fn deliver<D, I>(&mut self, key: usize, slot: &mut Slot<D, I>) {
        if !slot.conn.is_open() {
            return;
        }
        let frame = match slot.conn.deflate_window() {
            Some(window) => OutFrame::new(self.variant(window)),
            None => OutFrame::new(self.outgoing.clone()),
        };
        match slot.conn.send_data(frame, Outbound::Message, self.config, self.now) {
            Ok(()) => {
                self.stats.messages_out.add(1);
                slot.accounted = track(&self.stats.queued_bytes, slot.accounted, slot.conn.queued_bytes());
            }
            Err(Refused::Full(Overflow::Dropped)) => self.stats.dropped_messages.add(1),
            Err(Refused::Full(Overflow::Disconnecting)) => {
                self.stats.slow_consumer_disconnects.add(1);
                tracing::debug!(shard = self.shard, id = %slot.conn.id(), "slow consumer disconnected");
                // The close frame and its deadline.
                slot.accounted = track(&self.stats.queued_bytes, slot.accounted, slot.conn.queued_bytes());
                if let Some(at) = slot.conn.poll_timeout(self.config)
                    && slot.conn.schedule(at, self.config)
                {
                    self.timers.push(at, key, slot.conn.id().as_u64());
                }
            }
            Err(Refused::Error(_)) => return,
        }
        if slot.conn.needs_listing() {
            self.dirty.push(key);
        }
    }
}

/// Moves a shard gauge from this connection's last contribution to its current one;
/// returns the new contribution (kept in 4 bytes: a gauge is a statistic, and one
/// connection holding more than 4 GiB saturates it rather than wraps).
fn track(gauge: &crate::stats::Counter, counted: u32, now: usize) -> u32 {
    let now = u32::try_from(now).unwrap_or(u32::MAX);
    if now >= counted {
        gauge.add(u64::from(now - counted));
    } else {
        gauge.sub(u64::from(counted - now));
    }
    now
}
