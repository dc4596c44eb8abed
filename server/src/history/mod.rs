//! Message history: a bounded record of every topic's recent messages, so that a client
//! that reconnects can ask for what it missed.
//!
//! Each topic published with [`Broadcaster::publish`](crate::Broadcaster::publish) is a
//! *stream*: every message gets an **offset** (1, 2, 3, … per stream) and the stream has an
//! **epoch**, a random id that changes whenever the stream's history may have been lost
//! (a new server process, a stream that aged out and was forgotten, or — set from outside
//! with [`Broadcaster::publish_at`](crate::Broadcaster::publish_at) — another epoch chosen
//! by a cluster). A [`Position`] is an epoch and an offset.
//!
//! The history keeps the same encoded bytes the fan-out sends (one reference-counted copy
//! per message, not per subscriber), bounded by [`HistoryConfig`]: at most N messages per
//! stream, at most T old, and a memory cap over all streams together.
//!
//! A subscriber asks for a start with [`Since`] through
//! [`Connection::subscribe_from`](crate::Connection::subscribe_from), and learns what it
//! got in a [`Recovery`]. See `api/recovery.rs` for why the switch from history to live
//! messages has no gap and no duplicate.

mod store;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

pub use store::Appended;
pub(crate) use store::History;

/// How much history each stream keeps. The library keeps none unless configured
/// ([`ServerBuilder::history`](crate::ServerBuilder::history)); offsets are assigned
/// either way.
///
/// ```
/// use std::time::Duration;
/// use ringcast::HistoryConfig;
/// let history = HistoryConfig::new().max_messages(500).max_age(Duration::from_secs(60)).max_bytes(32 << 20);
/// assert!(history.is_enabled());
/// assert!(!HistoryConfig::off().is_enabled());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryConfig {
    pub(crate) max_messages: usize,
    pub(crate) max_age: Duration,
    pub(crate) max_bytes: usize,
}

impl Default for HistoryConfig {
    /// The library's default: no history kept.
    fn default() -> Self {
        Self::off()
    }
}

impl HistoryConfig {
    /// Keep nothing (offsets and epochs are still assigned).
    pub const fn off() -> Self {
        HistoryConfig { max_messages: 0, max_age: Duration::ZERO, max_bytes: 0 }
    }

    /// Modest bounds: 1,000 messages per stream, 5 minutes, 64 MiB over all streams.
    pub const fn new() -> Self {
        HistoryConfig { max_messages: 1000, max_age: Duration::from_secs(300), max_bytes: 64 << 20 }
    }

    /// At most this many messages per stream (0 keeps none).
    pub const fn max_messages(mut self, messages: usize) -> Self {
        self.max_messages = messages;
        self
    }

    /// Forget messages older than this.
    pub const fn max_age(mut self, age: Duration) -> Self {
        self.max_age = age;
        self
    }

    /// At most this many bytes over all streams: the encoded messages plus
    /// [`HistoryConfig::ENTRY_OVERHEAD`] per message. Past it the oldest messages of any
    /// stream go first.
    pub const fn max_bytes(mut self, bytes: usize) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// The bookkeeping bytes counted per kept message on top of its encoded bytes.
    pub const ENTRY_OVERHEAD: usize = 64;

    /// Whether any message is kept.
    pub const fn is_enabled(&self) -> bool {
        self.max_messages > 0 && !self.max_age.is_zero() && self.max_bytes > 0
    }

    /// The per-stream message bound.
    pub const fn messages(&self) -> usize {
        self.max_messages
    }

    /// The age bound.
    pub const fn age(&self) -> Duration {
        self.max_age
    }

    /// The memory bound.
    pub const fn bytes(&self) -> usize {
        self.max_bytes
    }
}

/// A stream's epoch: a random id that changes whenever its history may have been lost.
/// Written as 16 lowercase hex digits.
///
/// ```
/// use ringcast::Epoch;
/// let epoch = Epoch::from_u64(0xfeed);
/// assert_eq!(epoch.to_string(), "000000000000feed");
/// assert_eq!("000000000000feed".parse::<Epoch>(), Ok(epoch));
/// assert!("xyz".parse::<Epoch>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Epoch(u64);

impl Epoch {
    /// The epoch with this value.
    pub const fn from_u64(value: u64) -> Self {
        Epoch(value)
    }

    /// Its value.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// A new random epoch.
    pub fn random() -> Self {
        use std::hash::{BuildHasher, Hasher};
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNT: AtomicU64 = AtomicU64::new(0);
        // RandomState is seeded from the OS once per thread and varies per instance.
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(COUNT.fetch_add(1, Ordering::Relaxed));
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        hasher.write_u128(nanos.as_nanos());
        hasher.write_u32(std::process::id());
        Epoch(hasher.finish())
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// An epoch that is not 1 to 16 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an epoch is 1 to 16 hex digits")]
pub struct EpochParseError;

impl FromStr for Epoch {
    type Err = EpochParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.is_empty() || text.len() > 16 {
            return Err(EpochParseError);
        }
        u64::from_str_radix(text, 16).map(Epoch).map_err(|_| EpochParseError)
    }
}

/// A place in a stream: an epoch and an offset. Offsets start at 1; offset 0 is the
/// position of a stream before its first message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Position {
    /// The stream's epoch.
    pub epoch: Epoch,
    /// The offset of a message (the last one received, in a [`Since::Position`]).
    pub offset: u64,
}

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Since {
    /// With the next message published.
    Now,
    /// With (at most) the last `n` messages the history holds, then live ones.
    Last(usize),
    /// Right after this position: the messages missed since, then live ones — the
    /// position is the last message the subscriber received.
    Position(Position),
}

/// Why a subscription from a [`Since::Position`] could not start exactly there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NotRecovered {
    /// The stream's epoch is not the one asked for: its history was lost (a restart, a
    /// stream forgotten after its messages aged out, a cluster's store reset).
    #[error("epoch changed")]
    EpochChanged,
    /// The oldest messages asked for were already dropped by the history's bounds; what
    /// is still kept was sent.
    #[error("history too short")]
    HistoryTooShort {
        /// How many messages could not be sent.
        missed: u64,
    },
    /// The offset asked for is beyond the stream's last one.
    #[error("offset ahead of the stream")]
    AheadOfStream,
    /// The history is not available: the reason (e.g. a cluster's store is unreachable).
    #[error("history unavailable: {0}")]
    Unavailable(String),
}

impl NotRecovered {
    /// A short stable name for protocols: `epoch_changed`, `history_too_short`,
    /// `ahead_of_stream`, `unavailable`.
    pub fn code(&self) -> &'static str {
        match self {
            NotRecovered::EpochChanged => "epoch_changed",
            NotRecovered::HistoryTooShort { .. } => "history_too_short",
            NotRecovered::AheadOfStream => "ahead_of_stream",
            NotRecovered::Unavailable(_) => "unavailable",
        }
    }
}

/// What a subscription from a [`Since`] got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// The stream's position when the subscription took hold: the messages replayed end
    /// at its offset and live messages start after it.
    pub position: Position,
    /// How many messages were replayed from the history.
    pub replayed: usize,
    /// For [`Since::Position`]: `Ok(())` if every missed message was replayed, else why
    /// not. Always `Ok(())` for [`Since::Now`] and [`Since::Last`].
    pub outcome: Result<(), NotRecovered>,
}

impl Recovery {
    /// Whether every missed message was replayed.
    pub fn recovered(&self) -> bool {
        self.outcome.is_ok()
    }
}
