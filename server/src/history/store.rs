//! The history store: every stream's position and its recent messages, under one lock.
//!
//! One lock for all streams, not one per stream: a publish holds it for an offset, an
//! append and a post to each shard's mailbox (a few hundred nanoseconds, once per message
//! and not per subscriber), and the global memory cap then needs no second lock to find
//! the oldest message over all streams. Callers post to the mailboxes *while* holding it,
//! which is what orders every shard's view of a stream (see `api/recovery.rs`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;

use super::{Epoch, HistoryConfig, NotRecovered, Position, Since};

/// One kept message.
#[derive(Debug)]
struct Entry {
    offset: u64,
    bytes: Bytes,
    at: Instant,
}

impl Entry {
    fn cost(&self) -> usize {
        self.bytes.len() + HistoryConfig::ENTRY_OVERHEAD
    }
}

#[derive(Debug)]
struct Stream {
    epoch: Epoch,
    /// The offset the next message gets.
    next: u64,
    /// Contiguous offsets, oldest first, all below `next`.
    entries: VecDeque<Entry>,
}

impl Stream {
    fn new(epoch: Epoch) -> Self {
        Stream { epoch, next: 1, entries: VecDeque::new() }
    }

    fn last(&self) -> Position {
        Position { epoch: self.epoch, offset: self.next - 1 }
    }

    /// The oldest offset still kept (`next` when none is).
    fn first(&self) -> u64 {
        self.entries.front().map_or(self.next, |e| e.offset)
    }

    fn holds(&self, offset: u64) -> bool {
        offset >= self.first() && offset < self.next && !self.entries.is_empty()
    }
}

#[derive(Debug, Default)]
struct Inner {
    streams: HashMap<Arc<str>, Stream>,
    /// One token per kept message, oldest first over all streams: what the memory cap
    /// and the age bound evict from. Tokens of messages already gone (dropped by a
    /// stream's own bound) are skipped when met and swept out once they outnumber the rest.
    order: VecDeque<(Arc<str>, u64)>,
    bytes: usize,
    entries: usize,
}

/// What [`Broadcaster::publish_at`](crate::Broadcaster::publish_at) did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Appended {
    /// The next offset: kept (if the history keeps anything) and to be delivered.
    Fresh,
    /// An offset the stream already had: dropped, not to be delivered again.
    Duplicate,
    /// Offsets were skipped: the history before it was cleared (it may not span the
    /// gap); to be delivered.
    Gap {
        /// How many offsets were skipped.
        missed: u64,
    },
    /// Another epoch: the stream was reset to it; to be delivered.
    NewEpoch,
}

impl Appended {
    /// Whether the message was fanned out.
    pub fn delivered(self) -> bool {
        self != Appended::Duplicate
    }
}

/// What a subscription from a [`Since`] is to be sent first.
#[derive(Debug)]
pub(crate) struct Replay {
    pub(crate) position: Position,
    pub(crate) messages: Vec<Bytes>,
    pub(crate) outcome: Result<(), NotRecovered>,
}

/// Every stream's position and kept messages.
#[derive(Debug)]
pub(crate) struct History {
    config: HistoryConfig,
    inner: Mutex<Inner>,
}

impl History {
    pub(crate) fn new(config: HistoryConfig) -> Self {
        History { config, inner: Mutex::default() }
    }

    pub(crate) fn config(&self) -> &HistoryConfig {
        &self.config
    }

    /// Takes the lock; everything that must be ordered with a stream's messages happens
    /// while the guard lives.
    pub(crate) fn lock(&self) -> Guard<'_> {
        Guard { inner: self.inner.lock().unwrap_or_else(|e| e.into_inner()), config: &self.config }
    }
}

/// The locked store.
pub(crate) struct Guard<'a> {
    inner: MutexGuard<'a, Inner>,
    config: &'a HistoryConfig,
}

impl Guard<'_> {
    fn stream(&mut self, topic: &str) -> &mut Stream {
        if !self.inner.streams.contains_key(topic) {
            self.inner.streams.insert(Arc::from(topic), Stream::new(Epoch::random()));
        }
        self.inner.streams.get_mut(topic).expect("inserted above")
    }

    fn key(&self, topic: &str) -> Arc<str> {
        self.inner.streams.get_key_value(topic).map_or_else(|| Arc::from(topic), |(k, _)| k.clone())
    }

    /// The position the next message of `topic` gets (the stream is created, with a new
    /// epoch, if it did not exist).
    pub(crate) fn next_position(&mut self, topic: &str) -> Position {
        let stream = self.stream(topic);
        Position { epoch: stream.epoch, offset: stream.next }
    }

    /// The position of `topic`'s last message, if the stream exists.
    pub(crate) fn position(&self, topic: &str) -> Option<Position> {
        self.inner.streams.get(topic).map(Stream::last)
    }

    /// Records `bytes` as `topic`'s message at `position`, then applies the bounds.
    pub(crate) fn append(&mut self, topic: &str, position: Position, bytes: Bytes, now: Instant) -> Appended {
        let key = self.key(topic);
        let (appended, dropped) = {
            let stream = self.stream(topic);
            let mut dropped = Vec::new();
            let appended = if stream.epoch != position.epoch {
                dropped.extend(stream.entries.drain(..));
                *stream = Stream::new(position.epoch);
                stream.next = position.offset;
                Appended::NewEpoch
            } else if position.offset < stream.next {
                return Appended::Duplicate;
            } else if position.offset > stream.next {
                let missed = position.offset - stream.next;
                dropped.extend(stream.entries.drain(..));
                stream.next = position.offset;
                Appended::Gap { missed }
            } else {
                Appended::Fresh
            };
            (appended, dropped)
        };
        self.forget(dropped);
        let keep = self.config.is_enabled();
        let stream = self.stream(topic);
        stream.next = position.offset + 1;
        if keep {
            let entry = Entry { offset: position.offset, bytes, at: now };
            let cost = entry.cost();
            stream.entries.push_back(entry);
            self.inner.bytes += cost;
            self.inner.entries += 1;
            self.inner.order.push_back((key, position.offset));
            self.apply_bounds(topic, now);
        }
        appended
    }

    /// Moves `topic` to `position` without a message (a cluster's store says the stream
    /// is there): another epoch resets it, a later offset clears what is kept (it would
    /// not be contiguous); an earlier or equal offset of the same epoch changes nothing.
    pub(crate) fn align(&mut self, topic: &str, position: Position) {
        let stream = self.stream(topic);
        let mut dropped = Vec::new();
        if stream.epoch != position.epoch {
            dropped.extend(stream.entries.drain(..));
            *stream = Stream::new(position.epoch);
            stream.next = position.offset + 1;
        } else if position.offset >= stream.next {
            dropped.extend(stream.entries.drain(..));
            stream.next = position.offset + 1;
        }
        self.forget(dropped);
    }

    /// Adds messages older than everything `topic` keeps (a cluster's store filling in
    /// what this node never saw), oldest first and contiguous with what is kept. Returns
    /// how many were added.
    pub(crate) fn prepend(&mut self, topic: &str, epoch: Epoch, older: Vec<(u64, Bytes, Instant)>) -> usize {
        if !self.config.is_enabled() {
            return 0;
        }
        let key = self.key(topic);
        let max = self.config.max_messages;
        let stream = self.stream(topic);
        if stream.epoch != epoch {
            return 0;
        }
        let mut added = Vec::new();
        for (offset, bytes, at) in older.into_iter().rev() {
            if offset + 1 != stream.first() {
                continue;
            }
            stream.entries.push_front(Entry { offset, bytes, at });
            added.push(offset);
            if stream.entries.len() >= max {
                break;
            }
        }
        let count = added.len();
        let cost: usize = stream.entries.iter().take(count).map(Entry::cost).sum();
        self.inner.bytes += cost;
        self.inner.entries += count;
        // Oldest first: these go before every token there is.
        for offset in added {
            self.inner.order.push_front((key.clone(), offset));
        }
        let now = Instant::now();
        self.apply_bounds(topic, now);
        count
    }

    /// What a subscription to `topic` from `since` is sent first, and the position it
    /// then continues from.
    pub(crate) fn replay(&mut self, topic: &str, since: Since, now: Instant) -> Replay {
        self.expire(topic, now);
        let stream = self.stream(topic);
        let position = stream.last();
        let take_from = |stream: &Stream, from: u64| -> Vec<Bytes> {
            stream.entries.iter().filter(|e| e.offset >= from).map(|e| e.bytes.clone()).collect()
        };
        let (messages, outcome) = match since {
            Since::Now => (Vec::new(), Ok(())),
            Since::Last(n) => {
                let skip = stream.entries.len().saturating_sub(n);
                (stream.entries.iter().skip(skip).map(|e| e.bytes.clone()).collect(), Ok(()))
            }
            Since::Position(asked) if asked.epoch != stream.epoch => (Vec::new(), Err(NotRecovered::EpochChanged)),
            Since::Position(asked) if asked.offset > position.offset => (Vec::new(), Err(NotRecovered::AheadOfStream)),
            Since::Position(asked) => {
                let first = stream.first();
                let wanted = asked.offset + 1;
                if wanted >= first {
                    (take_from(stream, wanted), Ok(()))
                } else {
                    (take_from(stream, first), Err(NotRecovered::HistoryTooShort { missed: first - wanted }))
                }
            }
        };
        Replay { position, messages, outcome }
    }

    /// Kept messages and their bytes (with the per-message overhead), over all streams.
    pub(crate) fn usage(&self) -> (usize, usize, usize) {
        (self.inner.entries, self.inner.bytes, self.inner.streams.len())
    }

    fn forget(&mut self, dropped: Vec<Entry>) {
        for entry in dropped {
            self.inner.bytes -= entry.cost();
            self.inner.entries -= 1;
        }
    }

    /// Drops `topic`'s messages past its age bound.
    fn expire(&mut self, topic: &str, now: Instant) {
        let max_age = self.config.max_age;
        let Some(stream) = self.inner.streams.get_mut(topic) else { return };
        let mut dropped = Vec::new();
        while stream.entries.front().is_some_and(|e| now.saturating_duration_since(e.at) >= max_age) {
            dropped.extend(stream.entries.pop_front());
        }
        self.forget(dropped);
    }

    /// The stream's count and age bounds, then the global memory cap and (a bounded
    /// amount of) the age bound over all streams.
    fn apply_bounds(&mut self, topic: &str, now: Instant) {
        let max = self.config.max_messages;
        if let Some(stream) = self.inner.streams.get_mut(topic) {
            let mut dropped = Vec::new();
            while stream.entries.len() > max {
                dropped.extend(stream.entries.pop_front());
            }
            self.forget(dropped);
        }
        self.expire(topic, now);
        let mut aged = 0;
        while let Some((key, offset)) = self.inner.order.front().cloned() {
            let over_memory = self.inner.bytes > self.config.max_bytes;
            let Some(stream) = self.inner.streams.get_mut(&key) else {
                self.inner.order.pop_front();
                continue;
            };
            if !stream.holds(offset) {
                self.inner.order.pop_front(); // already gone
                continue;
            }
            let expired =
                stream.entries.front().is_some_and(|e| now.saturating_duration_since(e.at) >= self.config.max_age);
            if !(over_memory || (expired && aged < 64)) {
                break;
            }
            aged += usize::from(!over_memory);
            let dropped: Vec<Entry> = stream.entries.pop_front().into_iter().collect();
            self.inner.order.pop_front();
            self.forget(dropped);
        }
        if self.inner.order.len() > 2 * self.inner.entries + 1024 {
            let Inner { streams, order, .. } = &mut *self.inner;
            order.retain(|(key, offset)| streams.get(key).is_some_and(|s| s.holds(*offset)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn bytes(n: u64) -> Bytes {
        Bytes::from(format!("m{n}"))
    }

    fn publish(guard: &mut Guard<'_>, topic: &str, now: Instant) -> Position {
        let position = guard.next_position(topic);
        assert_eq!(guard.append(topic, position, bytes(position.offset), now), Appended::Fresh);
        position
    }

    fn texts(replay: &Replay) -> Vec<String> {
        replay.messages.iter().map(|b| String::from_utf8(b.to_vec()).unwrap()).collect()
    }

    #[test]
    fn offsets_count_up_and_a_position_replays_what_followed_it() {
        let history = History::new(HistoryConfig::new());
        let mut guard = history.lock();
        let now = Instant::now();
        let first = publish(&mut guard, "t", now);
        assert_eq!(first.offset, 1);
        for _ in 0..4 {
            publish(&mut guard, "t", now);
        }
        let since = Position { epoch: first.epoch, offset: 2 };
        let replay = guard.replay("t", Since::Position(since), now);
        assert_eq!(texts(&replay), ["m3", "m4", "m5"]);
        assert_eq!(replay.position, Position { epoch: first.epoch, offset: 5 });
        assert_eq!(replay.outcome, Ok(()));
        let caught_up = guard.replay("t", Since::Position(replay.position), now);
        assert!(caught_up.messages.is_empty() && caught_up.outcome.is_ok());
        assert_eq!(texts(&guard.replay("t", Since::Last(2), now)), ["m4", "m5"]);
        assert!(guard.replay("t", Since::Now, now).messages.is_empty());
        // Another epoch, an offset from the future.
        let other = Position { epoch: Epoch::from_u64(first.epoch.as_u64() ^ 1), offset: 2 };
        assert_eq!(guard.replay("t", Since::Position(other), now).outcome, Err(NotRecovered::EpochChanged));
        let ahead = Position { epoch: first.epoch, offset: 9 };
        assert_eq!(guard.replay("t", Since::Position(ahead), now).outcome, Err(NotRecovered::AheadOfStream));
        // Streams are independent, each with its own epoch.
        assert_eq!(publish(&mut guard, "u", now).offset, 1);
    }

    #[test]
    fn the_count_bound_makes_history_too_short_and_what_is_left_is_sent() {
        let history = History::new(HistoryConfig::new().max_messages(3));
        let mut guard = history.lock();
        let now = Instant::now();
        let epoch = publish(&mut guard, "t", now).epoch;
        for _ in 0..5 {
            publish(&mut guard, "t", now);
        }
        assert_eq!(guard.usage().0, 3);
        let replay = guard.replay("t", Since::Position(Position { epoch, offset: 1 }), now);
        assert_eq!(texts(&replay), ["m4", "m5", "m6"]);
        assert_eq!(replay.outcome, Err(NotRecovered::HistoryTooShort { missed: 2 }));
        let replay = guard.replay("t", Since::Position(Position { epoch, offset: 3 }), now);
        assert_eq!(replay.outcome, Ok(()));
    }

    #[test]
    fn the_age_bound_drops_old_messages() {
        let history = History::new(HistoryConfig::new().max_age(Duration::from_secs(10)));
        let mut guard = history.lock();
        let t0 = Instant::now();
        let epoch = publish(&mut guard, "t", t0).epoch;
        publish(&mut guard, "t", t0 + Duration::from_secs(6));
        let later = t0 + Duration::from_secs(12);
        let replay = guard.replay("t", Since::Position(Position { epoch, offset: 0 }), later);
        assert_eq!(texts(&replay), ["m2"]);
        assert_eq!(replay.outcome, Err(NotRecovered::HistoryTooShort { missed: 1 }));
        assert_eq!(guard.usage().0, 1);
    }

    #[test]
    fn the_memory_cap_holds_over_all_streams_oldest_first() {
        let cost = 2 + HistoryConfig::ENTRY_OVERHEAD;
        let history = History::new(HistoryConfig::new().max_bytes(10 * cost + 3));
        let mut guard = history.lock();
        let now = Instant::now();
        for i in 0..30 {
            publish(&mut guard, ["a", "b", "c"][i % 3], now);
        }
        let (entries, used, streams) = guard.usage();
        assert_eq!((entries, streams), (10, 3));
        assert!(used <= 10 * cost + 3);
        // The newest ten survive: a keeps offsets 8..=10 (published 22nd, 25th, 28th).
        let epoch = guard.position("a").unwrap().epoch;
        let replay = guard.replay("a", Since::Position(Position { epoch, offset: 0 }), now);
        assert_eq!(texts(&replay), ["m8", "m9", "m10"]);
        // Tokens of messages dropped by the stream's own bound do not pile up.
        drop(guard);
        let history = History::new(HistoryConfig::new().max_messages(1));
        let mut guard = history.lock();
        for _ in 0..10_000 {
            publish(&mut guard, "x", now);
        }
        assert!(guard.inner.order.len() <= 1024 + 3, "{}", guard.inner.order.len());
    }

    #[test]
    fn external_positions_drop_duplicates_and_reset_on_gaps_and_epochs() {
        let history = History::new(HistoryConfig::new());
        let mut guard = history.lock();
        let now = Instant::now();
        let e1 = Epoch::from_u64(1);
        assert_eq!(guard.append("t", Position { epoch: e1, offset: 5 }, bytes(5), now), Appended::NewEpoch);
        assert_eq!(guard.append("t", Position { epoch: e1, offset: 6 }, bytes(6), now), Appended::Fresh);
        assert_eq!(guard.append("t", Position { epoch: e1, offset: 6 }, bytes(6), now), Appended::Duplicate);
        assert_eq!(guard.append("t", Position { epoch: e1, offset: 9 }, bytes(9), now), Appended::Gap { missed: 2 });
        let replay = guard.replay("t", Since::Position(Position { epoch: e1, offset: 5 }), now);
        assert_eq!(replay.outcome, Err(NotRecovered::HistoryTooShort { missed: 3 }));
        // Filling in older messages makes the same request recoverable.
        let older = (6..9).map(|o| (o, bytes(o), now)).collect();
        assert_eq!(guard.prepend("t", e1, older), 3);
        let replay = guard.replay("t", Since::Position(Position { epoch: e1, offset: 5 }), now);
        assert_eq!(
            (texts(&replay), replay.outcome),
            (vec!["m6".into(), "m7".into(), "m8".into(), "m9".into()], Ok(()))
        );
        let e2 = Epoch::from_u64(2);
        assert_eq!(guard.append("t", Position { epoch: e2, offset: 1 }, bytes(1), now), Appended::NewEpoch);
        assert_eq!(guard.usage().0, 1);
    }

    #[test]
    fn aligning_to_another_epoch_or_a_later_offset_resets_and_earlier_positions_change_nothing() {
        let history = History::new(HistoryConfig::new());
        let mut guard = history.lock();
        let now = Instant::now();
        let local = publish(&mut guard, "t", now).epoch;
        let cluster = Epoch::from_u64(local.as_u64() ^ 7);
        guard.align("t", Position { epoch: cluster, offset: 40 });
        assert_eq!(guard.position("t"), Some(Position { epoch: cluster, offset: 40 }));
        assert_eq!(guard.usage().0, 0, "the other epoch's messages are gone");
        // What follows is delivered; what the alignment covered is a duplicate.
        assert_eq!(guard.append("t", Position { epoch: cluster, offset: 40 }, bytes(40), now), Appended::Duplicate);
        assert_eq!(guard.append("t", Position { epoch: cluster, offset: 41 }, bytes(41), now), Appended::Fresh);
        guard.align("t", Position { epoch: cluster, offset: 30 });
        assert_eq!(guard.position("t").unwrap().offset, 41, "an earlier position changes nothing");
        guard.align("t", Position { epoch: cluster, offset: 45 });
        assert_eq!(
            (guard.position("t").unwrap().offset, guard.usage().0),
            (45, 0),
            "kept messages would not be contiguous"
        );
    }

    #[test]
    fn without_history_offsets_are_still_assigned_and_nothing_is_kept() {
        let history = History::new(HistoryConfig::off());
        let mut guard = history.lock();
        let now = Instant::now();
        publish(&mut guard, "t", now);
        let p = publish(&mut guard, "t", now);
        assert_eq!(p.offset, 2);
        assert_eq!(guard.usage().0, 0);
        let replay = guard.replay("t", Since::Position(Position { epoch: p.epoch, offset: 1 }), now);
        assert_eq!(replay.outcome, Err(NotRecovered::HistoryTooShort { missed: 1 }));
    }
}
