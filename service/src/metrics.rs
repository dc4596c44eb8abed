//! `GET /metrics` in the Prometheus text exposition format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use ringcast::{LATENCY_BUCKETS, Stats};

use crate::cluster::ClusterMetrics;

/// Counters of the service itself (the server keeps the transport's).
#[derive(Debug, Default)]
pub struct ServiceCounters {
    /// Messages accepted for fan-out (WebSocket publishers, POST /publish, relay, topics).
    pub published: AtomicU64,
    /// Pub/sub control messages that were not understood.
    pub bad_requests: AtomicU64,
}

pub fn render(stats: &Stats, service: &ServiceCounters, cluster: Option<&ClusterMetrics>) -> String {
    let mut out = String::with_capacity(4096);
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let per_shard: Vec<(String, u64)> =
        stats.connections.iter().enumerate().map(|(i, n)| (format!("{{shard=\"{i}\"}}"), *n)).collect();
    metric("ringcast_connections", "gauge", "Open TCP connections per worker.", &per_shard);
    metric("ringcast_websockets", "gauge", "Upgraded WebSocket connections.", &[(String::new(), stats.websockets)]);
    let queued: Vec<(String, u64)> =
        stats.queued_bytes.iter().enumerate().map(|(i, n)| (format!("{{shard=\"{i}\"}}"), *n)).collect();
    metric(
        "ringcast_queued_bytes",
        "gauge",
        "Bytes queued to clients and not yet written, per worker (the slow-consumer bound applies per client).",
        &queued,
    );
    metric(
        "ringcast_handshakes_total",
        "counter",
        "Upgrade requests by outcome.",
        &[
            ("{result=\"accepted\"}".into(), stats.handshakes_accepted),
            ("{result=\"refused\"}".into(), stats.handshakes_refused),
        ],
    );
    metric(
        "ringcast_http_requests_total",
        "counter",
        "Plain HTTP requests served.",
        &[(String::new(), stats.http_requests)],
    );
    metric(
        "ringcast_messages_received_total",
        "counter",
        "Messages received from clients.",
        &[(String::new(), stats.messages_in)],
    );
    metric(
        "ringcast_bytes_received_total",
        "counter",
        "Payload bytes received from clients.",
        &[(String::new(), stats.bytes_in)],
    );
    metric(
        "ringcast_messages_sent_total",
        "counter",
        "Messages queued to clients (one per recipient).",
        &[(String::new(), stats.messages_out)],
    );
    metric("ringcast_bytes_sent_total", "counter", "Bytes written to clients.", &[(String::new(), stats.bytes_out)]);
    metric(
        "ringcast_slow_consumer_dropped_messages_total",
        "counter",
        "Messages dropped because a client's send queue was full.",
        &[(String::new(), stats.dropped_messages)],
    );
    metric(
        "ringcast_slow_consumer_disconnects_total",
        "counter",
        "Clients disconnected because their send queue was full.",
        &[(String::new(), stats.slow_consumer_disconnects)],
    );
    metric(
        "ringcast_protocol_errors_total",
        "counter",
        "Connections failed for protocol violations.",
        &[(String::new(), stats.protocol_errors)],
    );
    metric(
        "ringcast_buffered_input_bytes",
        "gauge",
        "Bytes held for incomplete input (messages, frames, request heads still arriving).",
        &[(String::new(), stats.buffered_input)],
    );
    metric(
        "ringcast_input_budget_closes_total",
        "counter",
        "Connections closed with 1009 because the server held more incomplete input than --max-buffered-input.",
        &[(String::new(), stats.input_budget_closes)],
    );
    metric(
        "ringcast_compressions_total",
        "counter",
        "Messages compressed for permessage-deflate: once per broadcast (and window size), however many subscribers take it.",
        &[(String::new(), stats.compressions)],
    );
    metric(
        "ringcast_published_messages_total",
        "counter",
        "Messages accepted for fan-out.",
        &[(String::new(), service.published.load(Ordering::Relaxed))],
    );
    metric(
        "ringcast_bad_requests_total",
        "counter",
        "Control messages that were not understood.",
        &[(String::new(), service.bad_requests.load(Ordering::Relaxed))],
    );
    if let Some(cluster) = cluster {
        let get = |counter: &AtomicU64| vec![(String::new(), counter.load(Ordering::Relaxed))];
        metric(
            "ringcast_cluster_up",
            "gauge",
            "1 while this node is connected to the Redis backbone.",
            &[(String::new(), u64::from(cluster.up.load(Ordering::Relaxed)))],
        );
        metric(
            "ringcast_cluster_published_total",
            "counter",
            "Messages sent to other nodes.",
            &get(&cluster.published),
        );
        metric(
            "ringcast_cluster_publish_failures_total",
            "counter",
            "Messages that could not be sent to other nodes (backbone outage).",
            &get(&cluster.publish_failures),
        );
        metric(
            "ringcast_cluster_received_total",
            "counter",
            "Messages received from other nodes.",
            &get(&cluster.received),
        );
        metric(
            "ringcast_cluster_gaps_total",
            "counter",
            "Messages from other nodes that never arrived (sequence gaps).",
            &get(&cluster.gaps),
        );
        metric("ringcast_cluster_reconnects_total", "counter", "Reconnections to Redis.", &get(&cluster.reconnects));
        metric(
            "ringcast_cluster_channels",
            "gauge",
            "Redis channels subscribed (follows local interest).",
            &get(&cluster.channels),
        );
    }
    let backends: Vec<(String, u64)> = stats
        .io_uring
        .iter()
        .enumerate()
        .map(|(i, uring)| (format!("{{shard=\"{i}\",backend=\"{}\"}}", if *uring { "io_uring" } else { "epoll" }), 1))
        .collect();
    metric("ringcast_io_backend", "gauge", "The I/O backend each worker runs.", &backends);

    let name = "ringcast_publish_to_write_seconds";
    let _ = writeln!(out, "# HELP {name} Time from publish to the completed socket write, per delivery.");
    let _ = writeln!(out, "# TYPE {name} histogram");
    let mut cumulative = 0;
    for (i, count) in stats.latency_us.iter().enumerate() {
        cumulative += count;
        if i + 1 < LATENCY_BUCKETS {
            let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {cumulative}", (1u64 << i) as f64 / 1e6);
        }
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
    let _ = writeln!(out, "{name}_sum {}", stats.latency_sum_us as f64 / 1e6);
    let _ = writeln!(out, "{name}_count {cumulative}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_help_and_type() {
        let stats = Stats {
            connections: vec![3, 4],
            io_uring: vec![true, false],
            queued_bytes: vec![100, 0],
            buffered_input: 7,
            messages_out: 10,
            latency_us: {
                let mut buckets = [0; LATENCY_BUCKETS];
                buckets[0] = 2;
                buckets[3] = 5;
                buckets
            },
            ..Stats::default()
        };
        let text = render(&stats, &ServiceCounters::default(), None);
        assert!(text.contains("ringcast_connections{shard=\"1\"} 4\n"));
        assert!(text.contains("ringcast_messages_sent_total 10\n"));
        assert!(text.contains("ringcast_queued_bytes{shard=\"0\"} 100\n"));
        assert!(text.contains("ringcast_buffered_input_bytes 7\n"));
        assert!(text.contains("ringcast_io_backend{shard=\"1\",backend=\"epoll\"} 1\n"));
        assert!(text.contains("ringcast_publish_to_write_seconds_bucket{le=\"0.000001\"} 2\n"));
        assert!(text.contains("ringcast_publish_to_write_seconds_bucket{le=\"0.000008\"} 7\n"));
        assert!(text.contains("ringcast_publish_to_write_seconds_bucket{le=\"+Inf\"} 7\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
