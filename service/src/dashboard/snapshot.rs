//! One second of the service as the dashboard shows it: rates from the difference of two
//! [`Stats`], latency percentiles from the difference of their histograms.

use std::sync::atomic::Ordering;

use ringcast::{LATENCY_BUCKETS, Stats};
use serde::Serialize;

use crate::cluster::ClusterMetrics;
use crate::topics::TopicCounts;

/// Topics listed on the page.
pub const BUSIEST_TOPICS: usize = 10;

/// What the page receives every second (JSON).
#[derive(Debug, Serialize)]
pub struct Snapshot {
    /// When it was taken, Unix milliseconds.
    pub time_ms: u64,
    /// Seconds since the service started.
    pub uptime_s: u64,
    /// The service's mode (broadcast, relay, pubsub, echo).
    pub mode: &'static str,
    /// The binary's version.
    pub version: &'static str,
    /// Upgraded WebSocket connections.
    pub websockets: u64,
    /// Open TCP connections (WebSocket, handshaking and plain HTTP).
    pub connections: u64,
    /// One entry per worker.
    pub workers: Vec<Worker>,
    /// Messages received from clients per second.
    pub messages_in_per_s: f64,
    /// Messages queued to clients per second (one per recipient).
    pub messages_out_per_s: f64,
    /// Payload bytes received per second.
    pub bytes_in_per_s: f64,
    /// Bytes written to clients per second.
    pub bytes_out_per_s: f64,
    /// Median publish-to-write latency over the interval, ms (`null` without deliveries).
    pub latency_p50_ms: Option<f64>,
    /// 99th percentile of the same.
    pub latency_p99_ms: Option<f64>,
    /// Messages dropped for full send queues, per second.
    pub dropped_per_s: f64,
    /// Clients disconnected by the slow-consumer policy, per second.
    pub disconnects_per_s: f64,
    /// Counters since start.
    pub totals: Totals,
    /// The busiest topics, most subscribers first.
    pub topics: Vec<Topic>,
    /// Topics with at least one subscriber.
    pub topic_count: usize,
    /// The Redis backbone, with `--cluster`.
    pub cluster: Option<Backbone>,
}

/// One worker (shard).
#[derive(Debug, Serialize, PartialEq)]
pub struct Worker {
    /// `io_uring` or `epoll`.
    pub backend: &'static str,
    /// Open TCP connections.
    pub connections: u64,
    /// Bytes queued on its connections and not yet written.
    pub queued_bytes: u64,
}

/// Counters since the service started.
#[derive(Debug, Serialize)]
pub struct Totals {
    /// Messages received.
    pub messages_in: u64,
    /// Messages queued to clients.
    pub messages_out: u64,
    /// Bytes written.
    pub bytes_out: u64,
    /// Messages accepted for fan-out.
    pub published: u64,
    /// Upgrades refused.
    pub handshakes_refused: u64,
    /// Slow-consumer drops.
    pub dropped_messages: u64,
    /// Slow-consumer disconnects.
    pub slow_consumer_disconnects: u64,
}

/// A topic and its subscribers on this node.
#[derive(Debug, Serialize, PartialEq)]
pub struct Topic {
    /// The topic.
    pub topic: String,
    /// Local subscribers.
    pub subscribers: u64,
}

/// The cluster backbone's state.
#[derive(Debug, Serialize)]
pub struct Backbone {
    /// Connected to Redis.
    pub up: bool,
    /// Redis channels subscribed.
    pub channels: u64,
    /// Messages sent to other nodes.
    pub published: u64,
    /// Messages that could not be sent (outage).
    pub publish_failures: u64,
    /// Messages received from other nodes.
    pub received: u64,
    /// Messages from other nodes that never arrived.
    pub gaps: u64,
    /// Reconnections to Redis.
    pub reconnects: u64,
}

impl Backbone {
    /// The backbone's counters now.
    pub fn of(metrics: &ClusterMetrics) -> Backbone {
        let get = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        Backbone {
            up: metrics.up.load(Ordering::Relaxed),
            channels: get(&metrics.channels),
            published: get(&metrics.published),
            publish_failures: get(&metrics.publish_failures),
            received: get(&metrics.received),
            gaps: get(&metrics.gaps),
            reconnects: get(&metrics.reconnects),
        }
    }
}

/// What a snapshot needs besides the two [`Stats`].
pub struct Context<'a> {
    /// Unix milliseconds now.
    pub time_ms: u64,
    /// Seconds since start.
    pub uptime_s: u64,
    /// The mode's name.
    pub mode: &'static str,
    /// Messages accepted for fan-out since start.
    pub published: u64,
    /// Topic subscriber counts.
    pub topics: &'a TopicCounts,
    /// The backbone, in cluster mode.
    pub cluster: Option<&'a ClusterMetrics>,
}

impl Snapshot {
    /// The interval from `before` to `now`, `elapsed_s` seconds long.
    pub fn between(before: &Stats, now: &Stats, elapsed_s: f64, context: &Context<'_>) -> Snapshot {
        let elapsed_s = elapsed_s.max(1e-3);
        let rate = |now: u64, then: u64| now.saturating_sub(then) as f64 / elapsed_s;
        let mut interval = [0u64; LATENCY_BUCKETS];
        for (delta, (now, then)) in interval.iter_mut().zip(now.latency_us.iter().zip(&before.latency_us)) {
            *delta = now.saturating_sub(*then);
        }
        let ms = |q| quantile_us(&interval, q).map(|us| us / 1000.0);
        let workers = now
            .connections
            .iter()
            .zip(&now.io_uring)
            .zip(now.queued_bytes.iter().chain(std::iter::repeat(&0)))
            .map(|((&connections, &uring), &queued_bytes)| Worker {
                backend: if uring { "io_uring" } else { "epoll" },
                connections,
                queued_bytes,
            })
            .collect();
        let (topic_count, busiest) = context.topics.busiest(BUSIEST_TOPICS);
        Snapshot {
            time_ms: context.time_ms,
            uptime_s: context.uptime_s,
            mode: context.mode,
            version: env!("CARGO_PKG_VERSION"),
            websockets: now.websockets,
            connections: now.total_connections(),
            workers,
            messages_in_per_s: rate(now.messages_in, before.messages_in),
            messages_out_per_s: rate(now.messages_out, before.messages_out),
            bytes_in_per_s: rate(now.bytes_in, before.bytes_in),
            bytes_out_per_s: rate(now.bytes_out, before.bytes_out),
            latency_p50_ms: ms(0.5),
            latency_p99_ms: ms(0.99),
            dropped_per_s: rate(now.dropped_messages, before.dropped_messages),
            disconnects_per_s: rate(now.slow_consumer_disconnects, before.slow_consumer_disconnects),
            totals: Totals {
                messages_in: now.messages_in,
                messages_out: now.messages_out,
                bytes_out: now.bytes_out,
                published: context.published,
                handshakes_refused: now.handshakes_refused,
                dropped_messages: now.dropped_messages,
                slow_consumer_disconnects: now.slow_consumer_disconnects,
            },
            topics: busiest.into_iter().map(|(topic, subscribers)| Topic { topic, subscribers }).collect(),
            topic_count,
            cluster: context.cluster.map(Backbone::of),
        }
    }

    /// The snapshot as one JSON object.
    pub fn to_json(&self) -> String {
        simd_json::serde::to_string(self).expect("a snapshot is plain data")
    }
}

/// The `q` quantile, in microseconds, of a histogram whose bucket `i` counts values in
/// (2^(i−1), 2^i] µs (bucket 0: up to 1 µs; the last one: everything slower). Interpolated
/// linearly inside the bucket, as Prometheus' `histogram_quantile` does with the same
/// buckets from `/metrics`; a quantile in the open-ended last bucket is its lower bound.
/// `None` for an empty histogram.
pub fn quantile_us(buckets: &[u64; LATENCY_BUCKETS], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut below = 0u64;
    for (i, &count) in buckets.iter().enumerate() {
        if count > 0 && (below + count) as f64 >= rank {
            let lower = if i == 0 { 0.0 } else { (1u64 << (i - 1)) as f64 };
            if i == LATENCY_BUCKETS - 1 {
                return Some(lower);
            }
            let upper = (1u64 << i) as f64;
            return Some(lower + (upper - lower) * (rank - below as f64).max(0.0) / count as f64);
        }
        below += count;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(entries: &[(usize, u64)]) -> [u64; LATENCY_BUCKETS] {
        let mut buckets = [0; LATENCY_BUCKETS];
        for &(i, n) in entries {
            buckets[i] = n;
        }
        buckets
    }

    #[test]
    fn quantiles_interpolate_inside_power_of_two_buckets() {
        assert_eq!(quantile_us(&[0; LATENCY_BUCKETS], 0.5), None);
        // 100 values in (512, 1024] µs: the median is half-way through the bucket.
        let one_bucket = histogram(&[(10, 100)]);
        assert_eq!(quantile_us(&one_bucket, 0.5), Some(768.0));
        assert_eq!(quantile_us(&one_bucket, 0.99), Some(512.0 + 512.0 * 0.99));
        // 90 fast, 10 slow: p50 among the fast, p99 among the slow.
        let split = histogram(&[(3, 90), (12, 10)]);
        assert_eq!(quantile_us(&split, 0.5), Some(4.0 + 4.0 * 50.0 / 90.0));
        assert_eq!(quantile_us(&split, 0.99), Some(2048.0 + 2048.0 * 9.0 / 10.0));
        // Beyond the last finite bucket only the lower bound is known.
        let open = histogram(&[(LATENCY_BUCKETS - 1, 5)]);
        assert_eq!(quantile_us(&open, 0.99), Some((1u64 << (LATENCY_BUCKETS - 2)) as f64));
        assert_eq!(quantile_us(&histogram(&[(0, 4)]), 0.5), Some(0.5));
    }

    #[test]
    fn a_snapshot_has_rates_per_second_and_the_interval_s_latency() {
        let before = Stats {
            connections: vec![1, 1],
            io_uring: vec![true, false],
            queued_bytes: vec![0, 0],
            messages_out: 1_000,
            bytes_out: 10_000,
            latency_us: histogram(&[(20, 1_000)]),
            ..Stats::default()
        };
        let now = Stats {
            connections: vec![3, 4],
            io_uring: vec![true, false],
            queued_bytes: vec![10, 20],
            websockets: 6,
            messages_out: 5_000,
            bytes_out: 50_000,
            dropped_messages: 4,
            latency_us: histogram(&[(20, 1_000), (10, 4_000)]),
            ..Stats::default()
        };
        let topics = TopicCounts::default();
        topics.subscribed("prices", || {});
        let context = Context { time_ms: 1, uptime_s: 2, mode: "pubsub", published: 7, topics: &topics, cluster: None };
        let snapshot = Snapshot::between(&before, &now, 2.0, &context);
        assert_eq!(snapshot.messages_out_per_s, 2_000.0);
        assert_eq!(snapshot.bytes_out_per_s, 20_000.0);
        assert_eq!(snapshot.dropped_per_s, 2.0);
        assert_eq!(snapshot.connections, 7);
        // Only the interval's 4,000 deliveries in (512, 1024] µs count, not the slow ones before.
        assert_eq!(snapshot.latency_p50_ms, Some(0.768));
        assert_eq!(
            snapshot.workers,
            [
                Worker { backend: "io_uring", connections: 3, queued_bytes: 10 },
                Worker { backend: "epoll", connections: 4, queued_bytes: 20 }
            ]
        );
        assert_eq!(snapshot.topics, [Topic { topic: "prices".into(), subscribers: 1 }]);
        let json = snapshot.to_json();
        assert!(json.contains(r#""latency_p99_ms":"#) && json.contains(r#""cluster":null"#), "{json}");
        let mut bytes = json.into_bytes();
        simd_json::to_borrowed_value(&mut bytes).expect("valid JSON");
    }
}
