//! One timer queue per shard, whatever the number of connections.
//!
//! A connection has at most one deadline at a time (handshake, close reply, pong, idle
//! ping), and it often moves later (every read pushes the idle ping back). Entries are
//! therefore lazy: a connection is pushed when its deadline becomes earlier than the one
//! it is queued at, and an entry that fires early is simply re-queued at the current
//! deadline. No read touches the queue.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// A min-queue of `(deadline, slot key, connection sequence)`.
#[derive(Debug, Default)]
pub(crate) struct TimerQueue {
    heap: BinaryHeap<Reverse<(Instant, usize, u64)>>,
}

impl TimerQueue {
    /// Queues `key` (whose connection has id `id`) at `at`.
    pub(crate) fn push(&mut self, at: Instant, key: usize, id: u64) {
        self.heap.push(Reverse((at, key, id)));
    }

    /// The earliest queued deadline.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, ..))| *at)
    }

    /// Takes the next entry due at `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(Instant, usize, u64)> {
        match self.heap.peek() {
            Some(Reverse((at, ..))) if *at <= now => self.heap.pop().map(|Reverse(entry)| entry),
            _ => None,
        }
    }

    /// Gives memory back after a burst of deadlines (e.g. many handshakes).
    pub(crate) fn shrink(&mut self) {
        if self.heap.capacity() > 64 && self.heap.len() < self.heap.capacity() / 4 {
            self.heap.shrink_to(self.heap.len() * 2);
        }
    }

    /// Drops every entry `live` says is garbage (a handshake deadline whose connection
    /// opened long before it would fire, say), so that they do not sit in memory until
    /// they come due.
    pub(crate) fn retain(&mut self, mut live: impl FnMut(Instant, usize, u64) -> bool) {
        self.heap.retain(|Reverse((at, key, id))| live(*at, *key, *id));
        self.shrink();
    }

    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn entries_come_out_in_deadline_order_only_when_due() {
        let t0 = Instant::now();
        let mut timers = TimerQueue::default();
        timers.push(t0 + Duration::from_millis(30), 3, 30);
        timers.push(t0 + Duration::from_millis(10), 1, 10);
        timers.push(t0 + Duration::from_millis(20), 2, 20);
        assert_eq!(timers.next(), Some(t0 + Duration::from_millis(10)));
        assert_eq!(timers.pop_due(t0), None);
        let due: Vec<usize> =
            std::iter::from_fn(|| timers.pop_due(t0 + Duration::from_millis(25))).map(|(_, key, _)| key).collect();
        assert_eq!(due, vec![1, 2]);
        assert_eq!(timers.len(), 1);
    }
}
