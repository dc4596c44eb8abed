//! What receivers count, how it is merged across threads and worker processes, and
//! how histograms travel between processes (HdrHistogram V2 encoding, base64 in JSON).

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2Serializer};
use serde::{Deserialize, Serialize, Serializer};

/// Latencies are recorded in microseconds, from 1 µs to 10 minutes, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// A histogram that serialises as a base64 HdrHistogram V2 blob.
#[derive(Debug, Clone)]
pub struct Hist(pub Histogram<u64>);

impl Default for Hist {
    fn default() -> Self {
        Hist(latency_histogram())
    }
}

impl Hist {
    /// Adds another histogram's counts (values beyond the range are clamped, not lost).
    pub fn merge(&mut self, other: &Hist) {
        if self.0.add(&other.0).is_err() {
            for v in other.0.iter_recorded() {
                self.0.saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
    }

    /// The V2 encoding in base64.
    pub fn encode(&self) -> String {
        let mut bytes = Vec::new();
        V2Serializer::new().serialize(&self.0, &mut bytes).expect("serialising to memory cannot fail");
        BASE64.encode(bytes)
    }

    /// Decodes [`Hist::encode`]'s output.
    pub fn decode(text: &str) -> Result<Hist, String> {
        let bytes = BASE64.decode(text).map_err(|e| format!("histogram: {e}"))?;
        let h: Histogram<u64> =
            Deserializer::new().deserialize(&mut bytes.as_slice()).map_err(|e| format!("histogram: {e:?}"))?;
        Ok(Hist(h))
    }

    /// Value at quantile `q` (0..=1) in milliseconds, `None` when empty.
    pub fn ms(&self, q: f64) -> Option<f64> {
        (!self.0.is_empty()).then(|| self.0.value_at_quantile(q) as f64 / 1000.0)
    }
}

impl Serialize for Hist {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.encode())
    }
}

impl<'de> Deserialize<'de> for Hist {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Hist::decode(&text).map_err(serde::de::Error::custom)
    }
}

/// Everything one group of receivers (a thread, a worker process) measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GroupResult {
    /// Connection attempts made.
    pub attempted: u64,
    /// Connections that completed the upgrade.
    pub connected: u64,
    /// Connection attempts that failed.
    pub connect_failed: u64,
    /// Connections lost after the upgrade (read error, EOF, close frame).
    pub disconnects: u64,
    /// First connection attempt and last completed upgrade (CLOCK_MONOTONIC ns).
    pub connect_first_ns: u64,
    /// See `connect_first_ns`.
    pub connect_last_ns: u64,
    /// Data messages received, duplicates included.
    pub received: u64,
    /// Distinct sequence numbers below `sent` received, summed over clients.
    pub distinct: u64,
    /// Messages received again.
    pub duplicates: u64,
    /// Messages received after one with a higher sequence number.
    pub reordered: u64,
    /// Distinct messages of the measured window (after warm-up) received.
    pub measured: u64,
    /// Their payload bytes.
    pub measured_bytes: u64,
    /// Echo: messages the clients sent (broadcast: 0, the publisher counts).
    pub sent_by_clients: u64,
    /// Clients that missed at least one message.
    pub clients_with_loss: u64,
    /// The most messages one client missed.
    pub max_client_loss: u64,
    /// Last measured delivery (CLOCK_MONOTONIC ns), 0 if none.
    pub last_recv_ns: u64,
    /// Delivery latency, µs.
    pub latency: Hist,
    /// Connect + upgrade time, µs.
    pub connect: Hist,
    /// Errors by kind.
    pub errors: BTreeMap<String, u64>,
    /// Worker processes: their CPU seconds when they sent this result (summed when merged).
    #[serde(default)]
    pub process_cpu_s: f64,
    /// Connections on which the server accepted permessage-deflate.
    #[serde(default)]
    pub deflate_connections: u64,
    /// Reconnect: reconnections made.
    #[serde(default)]
    pub reconnects: u64,
    /// Reconnect: of `reconnects`, those after a failed connection (--failover).
    #[serde(default)]
    pub failovers: u64,
    /// Reconnect: messages the server replayed from its history.
    #[serde(default)]
    pub replayed: u64,
    /// Reconnect: resumptions the server answered with `recovered` other than true.
    #[serde(default)]
    pub recoveries_incomplete: u64,
    /// Reconnect: deliveries whose offset did not follow the previous one (same epoch).
    #[serde(default)]
    pub offset_gaps: u64,
    /// Reconnect: deliveries in another epoch than the previous one.
    #[serde(default)]
    pub epoch_changes: u64,
    /// Reconnect: from starting to reconnect to having caught up, µs.
    #[serde(default)]
    pub recovery: Hist,
    /// Reconnect: each reconnecting client's record.
    #[serde(default)]
    pub per_client: Vec<crate::group::ClientRecovery>,
}

impl GroupResult {
    /// Adds another group's results.
    pub fn merge(&mut self, o: &GroupResult) {
        self.attempted += o.attempted;
        self.connected += o.connected;
        self.connect_failed += o.connect_failed;
        self.disconnects += o.disconnects;
        self.connect_first_ns = match (self.connect_first_ns, o.connect_first_ns) {
            (0, b) => b,
            (a, 0) => a,
            (a, b) => a.min(b),
        };
        self.connect_last_ns = self.connect_last_ns.max(o.connect_last_ns);
        self.received += o.received;
        self.distinct += o.distinct;
        self.duplicates += o.duplicates;
        self.reordered += o.reordered;
        self.measured += o.measured;
        self.measured_bytes += o.measured_bytes;
        self.sent_by_clients += o.sent_by_clients;
        self.clients_with_loss += o.clients_with_loss;
        self.max_client_loss = self.max_client_loss.max(o.max_client_loss);
        self.last_recv_ns = self.last_recv_ns.max(o.last_recv_ns);
        self.latency.merge(&o.latency);
        self.connect.merge(&o.connect);
        self.process_cpu_s += o.process_cpu_s;
        self.deflate_connections += o.deflate_connections;
        self.reconnects += o.reconnects;
        self.failovers += o.failovers;
        self.replayed += o.replayed;
        self.recoveries_incomplete += o.recoveries_incomplete;
        self.offset_gaps += o.offset_gaps;
        self.epoch_changes += o.epoch_changes;
        self.recovery.merge(&o.recovery);
        self.per_client.extend(o.per_client.iter().cloned());
        for (k, v) in &o.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
    }

    /// Counts one error of kind `what`.
    pub fn error(&mut self, what: String) {
        *self.errors.entry(what).or_default() += 1;
    }
}

/// Which sequence numbers one client has seen.
#[derive(Debug, Default, Clone)]
pub struct SeqSet {
    bits: Vec<u64>,
}

impl SeqSet {
    /// Marks `seq`; false if it was already there.
    pub fn insert(&mut self, seq: u64) -> bool {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if word >= self.bits.len() {
            self.bits.resize(word + 1, 0);
        }
        let fresh = self.bits[word] & (1 << bit) == 0;
        self.bits[word] |= 1 << bit;
        fresh
    }

    /// How many sequence numbers in `from..to` were seen.
    pub fn count_in(&self, from: u64, to: u64) -> u64 {
        (from..to).filter(|&s| self.bits.get((s / 64) as usize).is_some_and(|w| w & (1 << (s % 64)) != 0)).count()
            as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_round_trip_and_merge() {
        let mut a = Hist::default();
        for v in 1..=1000 {
            a.0.record(v).unwrap();
        }
        let b = Hist::decode(&a.encode()).unwrap();
        assert_eq!(b.0.len(), 1000);
        assert_eq!(b.0.value_at_quantile(0.5), a.0.value_at_quantile(0.5));
        let mut r1 = GroupResult { latency: a, received: 3, ..Default::default() };
        let r2: GroupResult = serde_json::from_str(
            &serde_json::to_string(&GroupResult { latency: b, received: 4, ..Default::default() }).unwrap(),
        )
        .unwrap();
        r1.merge(&r2);
        assert_eq!((r1.latency.0.len(), r1.received), (2000, 7));
    }

    #[test]
    fn seqset_counts() {
        let mut s = SeqSet::default();
        assert!(s.insert(3));
        assert!(!s.insert(3));
        assert!(s.insert(200));
        assert_eq!(s.count_in(0, 201), 2);
        assert_eq!(s.count_in(4, 200), 0);
    }
}
