//! Counters kept by each shard and read from anywhere.
//!
//! Each counter has exactly one writer, the shard thread that owns it, which updates it
//! with a relaxed load and store: no read-modify-write, no lock, no contention on the
//! message path. Readers on other threads see a value at most a moment old.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A counter written by one thread and read by any.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the owning shard calls this.
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        self.0.store(self.0.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }

    /// Subtracts `n` (for gauges).
    #[inline]
    pub(crate) fn sub(&self, n: u64) {
        self.0.store(self.0.load(Ordering::Relaxed).wrapping_sub(n), Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The number of latency buckets: bucket `i` counts writes that completed within
/// `2^i` microseconds of publication (the last bucket holds everything slower).
pub const LATENCY_BUCKETS: usize = 24;

/// One shard's counters.
#[derive(Debug, Default)]
pub struct ShardStats {
    /// Open TCP connections (handshaking or upgraded).
    pub connections: Counter,
    /// Upgraded WebSocket connections.
    pub websockets: Counter,
    /// Upgrades completed.
    pub handshakes_accepted: Counter,
    /// Upgrade requests refused (bad request, wrong path, version, `allow` said no).
    pub handshakes_refused: Counter,
    /// Plain HTTP requests served.
    pub http_requests: Counter,
    /// Whole messages (or frames in frame-by-frame mode) received.
    pub messages_in: Counter,
    /// Payload bytes received.
    pub bytes_in: Counter,
    /// Messages queued for delivery (one per recipient).
    pub messages_out: Counter,
    /// Bytes written to sockets (frames with headers, before TLS).
    pub bytes_out: Counter,
    /// Messages dropped for a full send queue.
    pub dropped_messages: Counter,
    /// Connections closed by the slow-consumer policy.
    pub slow_consumer_disconnects: Counter,
    /// Connections failed for a protocol violation.
    pub protocol_errors: Counter,
    /// Publish-to-write latency histogram (see [`LATENCY_BUCKETS`]).
    pub latency_us: [Counter; LATENCY_BUCKETS],
    /// Sum of all recorded publish-to-write latencies, in microseconds.
    pub latency_sum_us: Counter,
    /// 1 when the shard runs on io_uring, 0 on epoll.
    pub io_uring: Counter,
    /// Bytes queued on this shard's connections and not yet written (a gauge).
    pub queued_bytes: Counter,
    /// Bytes held for incomplete input: request heads, bodies, frames and messages still
    /// arriving (a gauge).
    pub buffered_input: Counter,
    /// Messages compressed for permessage-deflate (a broadcast counts once, however many
    /// subscribers take the compressed variant).
    pub compressions: Counter,
    /// Connections closed because the server-wide input budget was exceeded.
    pub input_budget_closes: Counter,
}

impl ShardStats {
    /// Records one write completion `latency` after its message was published.
    pub(crate) fn record_latency(&self, latency: Duration, messages: u64) {
        let micros = latency.as_micros().max(1) as u64;
        let bucket = (64 - (micros - 1).leading_zeros() as usize).min(LATENCY_BUCKETS - 1);
        self.latency_us[bucket].add(messages);
        self.latency_sum_us.add(micros * messages);
    }
}

/// A point-in-time copy of every shard's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Per shard: open connections.
    pub connections: Vec<u64>,
    /// Per shard: whether it runs on io_uring.
    pub io_uring: Vec<bool>,
    /// Per shard: bytes queued on its connections and not yet written.
    pub queued_bytes: Vec<u64>,
    /// Bytes held for incomplete input on all shards.
    pub buffered_input: u64,
    /// Messages compressed for permessage-deflate.
    pub compressions: u64,
    /// Connections closed because the server-wide input budget was exceeded (see
    /// [`ServerBuilder::max_buffered_input`](crate::ServerBuilder::max_buffered_input)).
    pub input_budget_closes: u64,
    /// Upgraded WebSocket connections.
    pub websockets: u64,
    /// Upgrades completed.
    pub handshakes_accepted: u64,
    /// Upgrade requests refused.
    pub handshakes_refused: u64,
    /// Plain HTTP requests served.
    pub http_requests: u64,
    /// Messages received.
    pub messages_in: u64,
    /// Payload bytes received.
    pub bytes_in: u64,
    /// Messages queued for delivery (one per recipient).
    pub messages_out: u64,
    /// Bytes written.
    pub bytes_out: u64,
    /// Messages dropped for a full send queue.
    pub dropped_messages: u64,
    /// Connections closed by the slow-consumer policy.
    pub slow_consumer_disconnects: u64,
    /// Connections failed for a protocol violation.
    pub protocol_errors: u64,
    /// Publish-to-write latency histogram, bucket `i` = within `2^i` µs.
    pub latency_us: [u64; LATENCY_BUCKETS],
    /// Sum of the recorded latencies in microseconds.
    pub latency_sum_us: u64,
}

impl Stats {
    pub(crate) fn collect(shards: &[std::sync::Arc<ShardStats>]) -> Stats {
        let mut stats = Stats::default();
        for shard in shards {
            stats.connections.push(shard.connections.get());
            stats.io_uring.push(shard.io_uring.get() == 1);
            stats.queued_bytes.push(shard.queued_bytes.get());
            stats.buffered_input += shard.buffered_input.get();
            stats.compressions += shard.compressions.get();
            stats.input_budget_closes += shard.input_budget_closes.get();
            stats.websockets += shard.websockets.get();
            stats.handshakes_accepted += shard.handshakes_accepted.get();
            stats.handshakes_refused += shard.handshakes_refused.get();
            stats.http_requests += shard.http_requests.get();
            stats.messages_in += shard.messages_in.get();
            stats.bytes_in += shard.bytes_in.get();
            stats.messages_out += shard.messages_out.get();
            stats.bytes_out += shard.bytes_out.get();
            stats.dropped_messages += shard.dropped_messages.get();
            stats.slow_consumer_disconnects += shard.slow_consumer_disconnects.get();
            stats.protocol_errors += shard.protocol_errors.get();
            stats.latency_sum_us += shard.latency_sum_us.get();
            for (total, bucket) in stats.latency_us.iter_mut().zip(&shard.latency_us) {
                *total += bucket.get();
            }
        }
        stats
    }

    /// Total open connections over all shards.
    pub fn total_connections(&self) -> u64 {
        self.connections.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_are_powers_of_two_microseconds() {
        let stats = ShardStats::default();
        for (micros, bucket) in [(0, 0), (1, 0), (2, 1), (3, 2), (4, 2), (5, 3), (1000, 10), (1024, 10), (1025, 11)] {
            stats.record_latency(Duration::from_micros(micros), 1);
            assert_eq!(stats.latency_us[bucket].get(), 1, "{micros} µs");
            stats.latency_us[bucket].sub(1);
        }
        stats.record_latency(Duration::from_secs(1 << 30), 2);
        assert_eq!(stats.latency_us[LATENCY_BUCKETS - 1].get(), 2);
    }
}
