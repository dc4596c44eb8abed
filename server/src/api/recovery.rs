//! Publishing into a stream's history and subscribing from a point of it.
//!
//! # Why the switch from history to live messages has no gap and no duplicate
//!
//! Two things happen under the history's lock, and only there:
//!
//! 1. **A publish** takes the stream's next offset, records the message and posts it to
//!    *every* shard's mailbox, the publishing shard's own included (a handler's publish
//!    does not take the shortcut of [`Connection::send_to`], which applies local sends
//!    before the mailbox). So each shard's mailbox holds a stream's messages in offset
//!    order, and each shard fans them out in that order.
//! 2. **A subscription from a position** (on the connection's own shard, in a handler)
//!    reads the history after that position up to the stream's last offset `X`, and posts
//!    a *join* command — those messages, and "add this connection to the topic now" — to
//!    its own shard's mailbox.
//!
//! Every message up to `X` was posted before the join, and every message after `X` is
//! posted after it, since both need the lock. The shard applies its mailbox in order: the
//! messages up to `X` are fanned out while the connection is not yet a subscriber (it
//! gets them from the replay instead), then the join queues the replay and adds the
//! connection, then every message after `X` reaches it. Nothing before `X` comes twice,
//! nothing after `X` is missed — and no connection carries a watermark: the only
//! per-subscription state is the join command while it waits in the mailbox.
//!
//! `server/tests/history.rs` checks this with a publisher at full speed and subscribers
//! that reconnect in a loop.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringcast_codec::PreparedMessage;

use crate::access::{Access, Denied};
use crate::api::broadcaster::{Broadcast, Broadcaster, Command};
use crate::api::connection::Connection;
use crate::api::target::Target;
use crate::history::{Appended, Epoch, HistoryConfig, Position, Recovery, Since};
use crate::id::ConnectionId;

/// Work for a connection's own shard, run by [`Broadcaster::with_connection`].
pub type ConnectionTask<D> = Box<dyn FnOnce(&mut Connection<'_, D>) + Send>;

/// What the history holds now, over all streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HistoryUsage {
    /// Messages kept.
    pub messages: usize,
    /// Their bytes, with [`HistoryConfig::ENTRY_OVERHEAD`] per message.
    pub bytes: usize,
    /// Streams (topics ever published or subscribed from a position).
    pub streams: usize,
}

impl<D> Broadcaster<D> {
    /// Publishes into `topic`'s stream: the message gets the stream's next offset, is
    /// kept in its history (if the server keeps one, see
    /// [`ServerBuilder::history`](crate::ServerBuilder::history)) and goes to the topic's
    /// subscribers on every shard. `message` builds the bytes from the position, so that
    /// they can carry it (e.g. `{"offset": 7, ...}`); it runs under the history's lock, so
    /// it must not publish itself. Returns the position.
    ///
    /// ```no_run
    /// # fn demo(server: &ringcast::Broadcaster<()>) {
    /// use ringcast::PreparedMessage;
    /// let split = server.split();
    /// let position = server.publish("prices", |at| {
    ///     PreparedMessage::text(&format!(r#"{{"offset":{},"price":1.0871}}"#, at.offset), split)
    /// });
    /// assert!(position.offset >= 1);
    /// # }
    /// ```
    pub fn publish(&self, topic: &str, message: impl FnOnce(Position) -> PreparedMessage) -> Position {
        let now = Instant::now();
        let mut history = self.router.history.lock();
        let position = history.next_position(topic);
        let prepared = message(position);
        history.append(topic, position, prepared.as_bytes().clone(), now);
        self.post_to_all(topic, prepared, now);
        position
    }

    /// Publishes a message whose position was assigned elsewhere (e.g. by a cluster's
    /// shared store): a position the stream already had is dropped as a duplicate;
    /// skipped offsets or another epoch reset the stream's history (which may not span
    /// them) and the message is delivered. Returns what happened.
    pub fn publish_at(&self, topic: &str, position: Position, message: &PreparedMessage) -> Appended {
        let now = Instant::now();
        let mut history = self.router.history.lock();
        let appended = history.append(topic, position, message.as_bytes().clone(), now);
        if appended.delivered() {
            self.post_to_all(topic, message.clone(), now);
        }
        appended
    }

    /// Fills in `topic`'s history with messages older than everything it keeps, in
    /// epoch `epoch` (`(offset, message, age)`, oldest first; they are not delivered to
    /// anyone now). Only the run that ends right before the oldest kept message is taken.
    /// Returns how many were added.
    pub fn backfill(&self, topic: &str, epoch: Epoch, older: Vec<(u64, PreparedMessage, Duration)>) -> usize {
        let now = Instant::now();
        let older = older
            .into_iter()
            .map(|(offset, message, age)| (offset, message.as_bytes().clone(), now.checked_sub(age).unwrap_or(now)))
            .collect();
        self.router.history.lock().prepend(topic, epoch, older)
    }

    /// Moves `topic`'s stream to `position` without delivering anything, e.g. to the
    /// position a cluster's shared store reports before [`Broadcaster::backfill`]ing it:
    /// another epoch resets the stream, a later offset of the same epoch clears what it
    /// keeps; later messages up to that offset are then dropped as duplicates by
    /// [`Broadcaster::publish_at`].
    pub fn align(&self, topic: &str, position: Position) {
        self.router.history.lock().align(topic, position);
    }

    /// Whether a subscription to `topic` from `since` would replay every missed message
    /// now: `Ok(())`, or why not (nothing is subscribed or replayed).
    pub fn check_since(&self, topic: &str, since: Since) -> Result<(), crate::history::NotRecovered> {
        self.router.history.lock().replay(topic, since, Instant::now()).outcome
    }

    /// The position of `topic`'s last message, if the stream exists.
    pub fn stream_position(&self, topic: &str) -> Option<Position> {
        self.router.history.lock().position(topic)
    }

    /// What the history holds now.
    pub fn history_usage(&self) -> HistoryUsage {
        let (messages, bytes, streams) = self.router.history.lock().usage();
        HistoryUsage { messages, bytes, streams }
    }

    /// The history's bounds.
    pub fn history_config(&self) -> HistoryConfig {
        *self.router.history.config()
    }

    /// Runs `task` on connection `id` on its own shard, as soon as the shard gets to it
    /// (after what was posted to that shard before). Nothing runs if the connection has
    /// ended by then. Sends from the task behave as in a handler.
    pub fn with_connection(&self, id: ConnectionId, task: impl FnOnce(&mut Connection<'_, D>) + Send + 'static) {
        if let Some(shard) = self.router.shards.get(id.shard()) {
            shard.post(Command::Run { id, task: Box::new(task) });
        }
    }

    /// Posts a stream's message to every shard. Called under the history's lock.
    /// (Replays from the history go uncompressed: permessage-deflate leaves that to the
    /// sender, message by message.)
    fn post_to_all(&self, topic: &str, prepared: PreparedMessage, now: Instant) {
        let message = Arc::new(Broadcast::prepared(prepared, self.router.deflate, now));
        let target = Target::Topic(Arc::from(topic));
        for shard in &self.router.shards {
            shard.post(Command::Send { message: message.clone(), target: target.clone() });
        }
    }
}

impl<D> Connection<'_, D> {
    /// Publishes into `topic`'s stream on behalf of this connection's client, if
    /// [`Handler::check`](crate::Handler::check) allows [`Access::Publish`]: then it is
    /// [`Broadcaster::publish`]. This shard's subscribers get it through the mailbox like
    /// every other shard's, which keeps the stream in offset order everywhere.
    pub fn publish_stream(
        &mut self,
        topic: &str,
        message: impl FnOnce(Position) -> PreparedMessage,
    ) -> Result<Position, Denied> {
        self.check(Access::Publish(topic))?;
        Ok(self.shard.broadcaster.publish(topic, message))
    }

    /// Subscribes this connection to `topic` starting from `since`: the messages the
    /// history has after that point are queued first, then live messages follow, with no
    /// gap and no duplicate between them. The subscription takes hold when this shard
    /// reaches the stream's current position, right after this handler; it is listed by
    /// [`Connection::topics`] at once. A connection that is already subscribed (or not
    /// open) gets nothing replayed. [`Handler::check`](crate::Handler::check) decides
    /// [`Access::Subscribe`] first: `Err` carries its reason, and nothing is subscribed.
    ///
    /// For [`Since::Position`], [`Recovery::outcome`] says whether every missed message
    /// was replayed (and if not, why: the epoch changed, or the history is too short, in
    /// which case what it still holds is replayed).
    ///
    /// ```no_run
    /// use ringcast::{Connection, Epoch, Handler, Position, Since};
    /// struct Feed;
    /// impl Handler for Feed {
    ///     type Data = ();
    ///     fn on_text(&self, conn: &mut Connection<'_, ()>, text: &str) {
    ///         // "resume <epoch> <offset>": the client's last message
    ///         let mut words = text.split(' ').skip(1);
    ///         let epoch = words.next().and_then(|e| e.parse::<Epoch>().ok());
    ///         let offset = words.next().and_then(|o| o.parse().ok());
    ///         let since = match (epoch, offset) {
    ///             (Some(epoch), Some(offset)) => Since::Position(Position { epoch, offset }),
    ///             _ => Since::Last(10),
    ///         };
    ///         if let Ok(recovery) = conn.subscribe_from("news", since) {
    ///             let _ = conn.send(format!("recovered {}", recovery.recovered()).as_str());
    ///         }
    ///     }
    /// }
    /// ```
    pub fn subscribe_from(&mut self, topic: &str, since: Since) -> Result<Recovery, Denied> {
        self.check(Access::Subscribe(topic))?;
        let history = self.shard.broadcaster.router.history.clone();
        let mut guard = history.lock();
        let replay = guard.replay(topic, since, self.shard.now);
        if !self.conn.is_open() || self.conn.is_subscribed(topic) {
            return Ok(Recovery { position: replay.position, replayed: 0, outcome: replay.outcome });
        }
        let replayed = replay.messages.len();
        self.conn.add_topic(Rc::from(topic));
        let own = &self.shard.broadcaster.router.shards[self.shard.index];
        own.post(Command::Join { id: self.conn.id(), topic: Arc::from(topic), replay: replay.messages });
        drop(guard);
        Ok(Recovery { position: replay.position, replayed, outcome: replay.outcome })
    }
}
