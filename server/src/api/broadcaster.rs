//! Sending from anywhere: [`Broadcaster`] encodes a message once and hands each shard one
//! command through its [`Mailbox`], which wakes the shard's loop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use nix::sys::eventfd::{EfdFlags, EventFd};
use ringcast_codec::deflate::CompressedVariants;
use ringcast_codec::{OpCode, PreparedMessage, Split};

use crate::api::connection::{Connection, ConnectionRef};
use crate::api::recovery::ConnectionTask;
use crate::api::target::{Message, Target};
use crate::history::History;
use crate::id::ConnectionId;
use crate::stats::{ShardStats, Stats};

/// One encoded message on its way to the shards; each shard shares these bytes between
/// all of its recipients.
#[derive(Debug)]
pub(crate) struct Broadcast {
    pub(crate) bytes: Bytes,
    /// When it was handed to the server (publish-to-write latency starts here).
    pub(crate) published: Instant,
    /// For subscribers that negotiated permessage-deflate: what to compress, and the
    /// compressed variants built so far (at most one per window size, by whichever shard
    /// needs it first, shared by every shard).
    pub(crate) deflatable: Option<Deflatable>,
}

/// A broadcast as it may be compressed, and its compressed variants.
#[derive(Debug)]
pub(crate) struct Deflatable {
    /// The plain frames (sharing the broadcast's bytes); their payload is read out only
    /// when a first subscriber needs the compressed variant.
    pub(crate) plain: PreparedMessage,
    pub(crate) variants: CompressedVariants,
}

impl Broadcast {
    /// Encodes `message` once; `deflate`: some connections may take a compressed variant.
    pub(crate) fn new(message: Message<'_>, split: Split, deflate: bool, published: Instant) -> Self {
        Self::prepared(message.prepare(split), deflate, published)
    }

    /// A message already encoded; `deflate` as in [`Broadcast::new`].
    pub(crate) fn prepared(prepared: PreparedMessage, deflate: bool, published: Instant) -> Self {
        let compressible = !prepared.is_compressed() && matches!(prepared.opcode(), OpCode::Text | OpCode::Binary);
        let deflatable = (deflate && compressible)
            .then(|| Deflatable { plain: prepared.clone(), variants: CompressedVariants::new() });
        Broadcast { bytes: prepared.into_bytes(), published, deflatable }
    }
}

/// What shards receive from the rest of the server.
pub(crate) enum Command<D> {
    /// Queue a message on the targeted connections.
    Send { message: Arc<Broadcast>, target: Target<D> },
    /// Run a closure on the targeted open connections.
    Visit { target: Target<D>, visit: Visitor<D> },
    /// The first step of a stop: hold all input from now on (so this shard sends no more
    /// messages), then arrive at the barrier.
    Quiesce(Arc<StopBarrier<D>>),
    /// Close every connection and stop.
    Stop,
    /// Queue `replay` on a connection and add it to `topic`'s subscribers, at this point
    /// of the stream's order (see `api/recovery.rs`).
    Join { id: ConnectionId, topic: Arc<str>, replay: Vec<Bytes> },
    /// Run a task on a connection (see [`Broadcaster::with_connection`]).
    Run { id: ConnectionId, task: ConnectionTask<D> },
}

/// A stop in two steps. Every shard first holds its input and arrives here; the last to
/// arrive posts [`Command::Stop`] to every shard. So every message a shard read before it
/// held its input is in every mailbox ahead of the Stop, and reaches every subscriber
/// before its 1001; what is read after that is not delivered anywhere (and a publish over
/// HTTP is answered 503), never to some subscribers only.
pub(crate) struct StopBarrier<D> {
    remaining: std::sync::atomic::AtomicUsize,
    shards: Vec<Arc<Mailbox<D>>>,
}

impl<D> StopBarrier<D> {
    /// A shard holds its input from now on.
    pub(crate) fn arrive(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            for shard in &self.shards {
                shard.post(Command::Stop);
            }
        }
    }
}

/// A closure run on connections by their own shards ([`Broadcaster::visit`]).
pub(crate) type Visitor<D> = Arc<dyn Fn(&mut Connection<'_, D>) + Send + Sync>;

/// A shard's inbox: commands from other threads, and the eventfd that wakes the shard's
/// loop when it is waiting. A sender writes the eventfd only when the shard said it is
/// about to wait, so a busy shard costs its senders no system call.
pub(crate) struct Mailbox<D> {
    commands: Mutex<Vec<Command<D>>>,
    parked: AtomicBool,
    wake: EventFd,
}

impl<D> Mailbox<D> {
    pub(crate) fn new() -> std::io::Result<Self> {
        let wake = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        Ok(Mailbox { commands: Mutex::new(Vec::new()), parked: AtomicBool::new(false), wake })
    }

    /// Delivers a command and wakes the shard if it waits.
    pub(crate) fn post(&self, command: Command<D>) {
        self.commands.lock().unwrap_or_else(|e| e.into_inner()).push(command);
        if self.parked.swap(false, Ordering::SeqCst) {
            let _ = self.wake.write(1);
        }
    }

    /// Moves every pending command into `into` (which should be empty, to reuse its
    /// allocation).
    pub(crate) fn take(&self, into: &mut Vec<Command<D>>) {
        let mut commands = self.commands.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::swap(&mut *commands, into);
    }

    /// The shard is about to wait: returns `false` (do not wait) if commands arrived
    /// meanwhile. Otherwise the next [`Mailbox::post`] writes the eventfd.
    pub(crate) fn park(&self) -> bool {
        self.parked.store(true, Ordering::SeqCst);
        if self.commands.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
            return true;
        }
        self.parked.store(false, Ordering::SeqCst);
        false
    }

    /// The shard is running again.
    pub(crate) fn unpark(&self) {
        self.parked.store(false, Ordering::SeqCst);
    }

    /// The eventfd the shard's loop waits on.
    pub(crate) fn wake_fd(&self) -> &EventFd {
        &self.wake
    }

    /// Resets the eventfd after it woke the loop.
    pub(crate) fn clear_wake(&self) {
        let _ = self.wake.read();
    }
}

pub(crate) struct Router<D> {
    pub(crate) shards: Vec<Arc<Mailbox<D>>>,
    pub(crate) stats: Vec<Arc<ShardStats>>,
    pub(crate) split: Split,
    /// permessage-deflate is enabled: broadcasts keep what compression needs.
    pub(crate) deflate: bool,
    /// Every stream's offsets and kept messages.
    pub(crate) history: Arc<History>,
}

/// Sends messages to connections from any thread: one encode and one command per shard
/// per message, never one per connection. Cheap to clone.
///
/// The reference component's sends map onto [`Broadcaster::send`]:
///
/// | reference | ringcast |
/// | --- | --- |
/// | `BroadcastMessage(text)` / `BroadcastData(bytes)` | `broadcast(text)` / `broadcast(bytes)` |
/// | `SendMessageTo(text, selector)` / `SendDataTo(bytes, selector)` | `send_where(selector, message)` |
pub struct Broadcaster<D> {
    pub(crate) router: Arc<Router<D>>,
}

impl<D> Clone for Broadcaster<D> {
    fn clone(&self) -> Self {
        Broadcaster { router: self.router.clone() }
    }
}

impl<D> Broadcaster<D> {
    /// Sends `message` to the connections `target` picks, on every shard.
    ///
    /// ```no_run
    /// # fn demo(server: &ringcast::Broadcaster<()>, id: ringcast::ConnectionId) {
    /// use ringcast::Target;
    /// server.send(Target::All, "to everyone");
    /// server.send(Target::topic("prices"), &b"\x01\x02"[..]);
    /// server.send(Target::Connection(id), "just you");
    /// server.send(Target::select(|conn| conn.peer_addr().ip().is_loopback()), "locals");
    /// # }
    /// ```
    pub fn send<'a>(&self, target: Target<D>, message: impl Into<Message<'a>>) {
        let message = Broadcast::new(message.into(), self.router.split, self.router.deflate, Instant::now());
        self.route(None, Arc::new(message), target);
    }

    /// Posts `message` to the shards `target` may reach, except `local`, whose part is
    /// returned for the caller (that shard's own loop) to apply at once.
    pub(crate) fn route(
        &self,
        local: Option<usize>,
        message: Arc<Broadcast>,
        target: Target<D>,
    ) -> Option<(Arc<Broadcast>, Target<D>)> {
        let reaches = |index: usize| match &target {
            Target::Connection(id) => id.shard() == index,
            _ => true,
        };
        let mut own = None;
        for (index, shard) in self.router.shards.iter().enumerate() {
            if !reaches(index) {
                continue;
            }
            if Some(index) == local {
                own = Some((message.clone(), target.clone()));
            } else {
                shard.post(Command::Send { message: message.clone(), target: target.clone() });
            }
        }
        own
    }

    /// Sends `message` to the connections `selector` picks (the reference's
    /// `SendMessageTo`/`SendDataTo`): `send(Target::select(selector), message)`, with the
    /// selector's argument type known from the broadcaster.
    ///
    /// ```no_run
    /// # struct Member { room: String }
    /// # fn demo(server: &ringcast::Broadcaster<Member>) {
    /// server.send_where(|conn| conn.data().room == "lobby", "hello, lobby");
    /// # }
    /// ```
    pub fn send_where<'a>(
        &self,
        selector: impl Fn(&ConnectionRef<'_, D>) -> bool + Send + Sync + 'static,
        message: impl Into<Message<'a>>,
    ) {
        self.send(Target::select(selector), message);
    }

    /// Runs `visit` on each open connection `target` picks, on the worker that owns it,
    /// with the same [`Connection`] handle events get: to close connections whose
    /// credentials expired, unsubscribe them, or send to them after looking at their
    /// data. A connection that ended before its worker got there is skipped.
    ///
    /// ```no_run
    /// # fn demo(server: &ringcast::Broadcaster<()>, id: ringcast::ConnectionId) {
    /// use ringcast::{CloseCode, Target};
    /// server.visit(Target::Connection(id), |conn| {
    ///     let _ = conn.close(CloseCode::from(4003), "token expired");
    /// });
    /// # }
    /// ```
    pub fn visit(&self, target: Target<D>, visit: impl Fn(&mut Connection<'_, D>) + Send + Sync + 'static) {
        let visit: Visitor<D> = Arc::new(visit);
        let reaches = |index: usize| match &target {
            Target::Connection(id) => id.shard() == index,
            _ => true,
        };
        for (index, shard) in self.router.shards.iter().enumerate() {
            if reaches(index) {
                shard.post(Command::Visit { target: target.clone(), visit: visit.clone() });
            }
        }
    }

    /// Sends `message` to every open connection: `send(Target::All, message)`.
    pub fn broadcast<'a>(&self, message: impl Into<Message<'a>>) {
        self.send(Target::All, message);
    }

    /// How outgoing messages are split into frames.
    pub fn split(&self) -> Split {
        self.router.split
    }

    /// The current counters of every shard.
    pub fn stats(&self) -> Stats {
        Stats::collect(&self.router.stats)
    }

    /// The number of shards (worker threads).
    pub fn shards(&self) -> usize {
        self.router.shards.len()
    }

    pub(crate) fn stop_all(&self) {
        let barrier = Arc::new(StopBarrier {
            remaining: std::sync::atomic::AtomicUsize::new(self.router.shards.len()),
            shards: self.router.shards.clone(),
        });
        for shard in &self.router.shards {
            shard.post(Command::Quiesce(barrier.clone()));
        }
    }
}
