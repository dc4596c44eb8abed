//! Several ringcast nodes behaving as one service, through Redis pub/sub.
//!
//! Every message published on a node is delivered locally as usual and also PUBLISHed
//! to a Redis channel (`ringcast:broadcast`, `ringcast:relay`, `ringcast:topic:<name>`).
//! Each node subscribes to the channels it has local interest in, ignores its own echo
//! (a node id in every message) and hands the rest to its local fan-out, which encodes
//! each message once per node.
//!
//! Publishes are batched: the backbone drains whatever queued up while the previous
//! pipeline was in flight and sends it as one pipeline. Redis outages are survived:
//! local traffic continues, the backbone reconnects with backoff and resubscribes, and
//! what could not be sent or was never received is counted (per-channel sequence
//! numbers reveal gaps), never hidden.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::topics::TopicCounts;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

const PREFIX: &str = "ringcast:";
const MAGIC: u8 = b'R';
const VERSION: u8 = 1;
const HEADER_LEN: usize = 3 + 8 + 8;
const MAX_BATCH: usize = 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Where a cluster message goes on the receiving node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Every subscriber (broadcast mode).
    Broadcast,
    /// Every client (relay mode).
    Relay,
    /// Subscribers of one topic (pubsub mode).
    Topic(String),
}

impl Scope {
    fn channel(&self) -> String {
        match self {
            Scope::Broadcast => format!("{PREFIX}broadcast"),
            Scope::Relay => format!("{PREFIX}relay"),
            Scope::Topic(topic) => format!("{PREFIX}topic:{topic}"),
        }
    }

    fn from_channel(channel: &str) -> Option<Scope> {
        match channel.strip_prefix(PREFIX)? {
            "broadcast" => Some(Scope::Broadcast),
            "relay" => Some(Scope::Relay),
            other => other.strip_prefix("topic:").map(|t| Scope::Topic(t.to_owned())),
        }
    }
}

/// A message received from another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    pub scope: Scope,
    pub binary: bool,
    pub body: Vec<u8>,
}

/// Backbone counters, for `/metrics`.
#[derive(Debug, Default)]
pub struct ClusterMetrics {
    /// Whether the subscription connection to Redis is up.
    pub up: AtomicBool,
    /// Messages sent to Redis.
    pub published: AtomicU64,
    /// Messages that could not be sent to Redis (outage): other nodes never see them.
    pub publish_failures: AtomicU64,
    /// Messages received from other nodes.
    pub received: AtomicU64,
    /// Messages from other nodes that never arrived (sequence gaps, e.g. during an outage).
    pub gaps: AtomicU64,
    /// Reconnections to Redis after a failure.
    pub reconnects: AtomicU64,
    /// Redis channels this node is subscribed to (follows local interest).
    pub channels: AtomicU64,
}

struct Publish {
    channel: String,
    binary: bool,
    body: Vec<u8>,
}

enum Interest {
    Subscribe(String),
    Unsubscribe(String),
}

/// The handle the service uses on its worker threads: non-blocking sends to the backbone.
pub struct Cluster {
    publishes: UnboundedSender<Publish>,
    interests: UnboundedSender<Interest>,
    pub metrics: Arc<ClusterMetrics>,
}

/// The Redis side, started once the server (and so the local fan-out) exists.
pub struct Backbone {
    client: redis::Client,
    node: u64,
    static_channels: Vec<String>,
    publishes: UnboundedReceiver<Publish>,
    interests: UnboundedReceiver<Interest>,
    /// The service's topic counts: a node subscribes to a topic's channel only while it
    /// has local subscribers.
    topics: Arc<TopicCounts>,
    metrics: Arc<ClusterMetrics>,
    runtime: tokio::runtime::Runtime,
}

/// Connects to Redis (failing clearly if it cannot be reached) and returns the
/// service's handle plus the backbone to start later. `always` are the scopes this
/// node listens to whatever its clients do (broadcast or relay); `topics` are the
/// service's subscriber counts, read again at every resubscription.
pub fn connect(url: &str, always: &[Scope], topics: Arc<TopicCounts>) -> Result<(Cluster, Backbone), String> {
    let client = redis::Client::open(url).map_err(|e| format!("--cluster {url}: {e}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cluster runtime: {e}"))?;
    runtime.block_on(async {
        let mut connection = tokio::time::timeout(CONNECT_TIMEOUT, client.get_multiplexed_async_connection())
            .await
            .map_err(|_| format!("cannot reach Redis at {url}: timed out"))?
            .map_err(|e| format!("cannot reach Redis at {url}: {e}"))?;
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await
            .map_err(|e| format!("Redis at {url} does not answer PING: {e}"))
    })?;
    let node = rand::random::<u64>();
    let (publish_tx, publish_rx) = unbounded_channel();
    let (interest_tx, interest_rx) = unbounded_channel();
    let metrics = Arc::new(ClusterMetrics::default());
    let cluster = Cluster { publishes: publish_tx, interests: interest_tx, metrics: metrics.clone() };
    let backbone = Backbone {
        client,
        node,
        static_channels: always.iter().map(Scope::channel).collect(),
        publishes: publish_rx,
        interests: interest_rx,
        topics,
        metrics,
        runtime,
    };
    Ok((cluster, backbone))
}

impl Cluster {
    /// Hands a locally published message to the other nodes.
    pub fn publish(&self, scope: &Scope, binary: bool, body: &[u8]) {
        let _ = self.publishes.send(Publish { channel: scope.channel(), binary, body: body.to_vec() });
    }

    /// `topic` got its first local subscriber (see [`TopicCounts::subscribed`]).
    pub fn topic_interest_started(&self, topic: &str) {
        let _ = self.interests.send(Interest::Subscribe(Scope::Topic(topic.to_owned()).channel()));
    }

    /// `topic` lost its last local subscriber.
    pub fn topic_interest_ended(&self, topic: &str) {
        let _ = self.interests.send(Interest::Unsubscribe(Scope::Topic(topic.to_owned()).channel()));
    }
}

fn encode(node: u64, seq: u64, binary: bool, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&[MAGIC, VERSION, u8::from(binary)]);
    out.extend_from_slice(&node.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// (node, seq, binary, body) of a backbone message; `None` if it is not one of ours.
fn decode(payload: &[u8]) -> Option<(u64, u64, bool, &[u8])> {
    let header = payload.get(..HEADER_LEN)?;
    if header[0] != MAGIC || header[1] != VERSION || header[2] > 1 {
        return None;
    }
    let node = u64::from_be_bytes(header[3..11].try_into().ok()?);
    let seq = u64::from_be_bytes(header[11..19].try_into().ok()?);
    Some((node, seq, header[2] == 1, &payload[HEADER_LEN..]))
}

/// Exponential backoff between reconnection attempts.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Backoff(Duration::from_millis(100))
    }

    fn next(&mut self) -> Duration {
        let wait = self.0;
        self.0 = (self.0 * 2).min(MAX_BACKOFF);
        wait
    }
}

impl Backbone {
    /// Runs the backbone on its own thread; `deliver` hands inbound messages to the
    /// local fan-out.
    pub fn start(self, deliver: impl Fn(Inbound) + Send + 'static) -> std::io::Result<()> {
        std::thread::Builder::new().name("ringcast-cluster".into()).spawn(move || {
            let Backbone { client, node, static_channels, publishes, interests, topics, metrics, runtime } = self;
            runtime.block_on(async move {
                let publisher = tokio::spawn(publish_loop(client.clone(), node, publishes, metrics.clone()));
                let subscribe = SubscribeLoop { client, node, static_channels, topics, metrics };
                subscribe.run(interests, deliver).await;
                publisher.abort();
            });
        })?;
        Ok(())
    }
}

async fn publish_loop(
    client: redis::Client,
    node: u64,
    mut publishes: UnboundedReceiver<Publish>,
    metrics: Arc<ClusterMetrics>,
) {
    let mut connection = None;
    let mut sequences: HashMap<String, u64> = HashMap::new();
    let mut retry_at = Instant::now();
    let mut backoff = Backoff::new();
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while publishes.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut pipe = redis::pipe();
        for message in &batch {
            let seq = sequences.entry(message.channel.clone()).or_insert(0);
            *seq += 1;
            pipe.cmd("PUBLISH").arg(&message.channel).arg(encode(node, *seq, message.binary, &message.body)).ignore();
        }
        if connection.is_none() && Instant::now() >= retry_at {
            match tokio::time::timeout(CONNECT_TIMEOUT, client.get_multiplexed_async_connection()).await {
                Ok(Ok(c)) => {
                    connection = Some(c);
                    backoff = Backoff::new();
                }
                _ => retry_at = Instant::now() + backoff.next(),
            }
        }
        let sent = match connection.as_mut() {
            Some(c) => pipe.exec_async(c).await.is_ok(),
            None => false,
        };
        let count = batch.len() as u64;
        if sent {
            metrics.published.fetch_add(count, Ordering::Relaxed);
        } else {
            if connection.take().is_some() {
                tracing::warn!("cluster: publishing to Redis failed; counting lost messages until it is back");
                retry_at = Instant::now() + backoff.next();
            }
            metrics.publish_failures.fetch_add(count, Ordering::Relaxed);
        }
        batch.clear();
    }
}

struct SubscribeLoop {
    client: redis::Client,
    node: u64,
    static_channels: Vec<String>,
    topics: Arc<TopicCounts>,
    metrics: Arc<ClusterMetrics>,
}

impl SubscribeLoop {
    async fn run(self, mut interests: UnboundedReceiver<Interest>, deliver: impl Fn(Inbound)) {
        let mut backoff = Backoff::new();
        let mut last_seq: HashMap<(u64, String), u64> = HashMap::new();
        let mut connected_before = false;
        loop {
            let pubsub = match tokio::time::timeout(CONNECT_TIMEOUT, self.client.get_async_pubsub()).await {
                Ok(Ok(pubsub)) => pubsub,
                result => {
                    let error = match result {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".to_owned(),
                    };
                    let wait = backoff.next();
                    tracing::warn!(%error, retry_in_ms = wait.as_millis() as u64, "cluster: Redis unreachable");
                    // Interest changes while down are picked up on resubscription.
                    while interests.try_recv().is_ok() {}
                    tokio::time::sleep(wait).await;
                    continue;
                }
            };
            let (mut sink, mut stream) = pubsub.split();
            let mut channels = self.static_channels.clone();
            channels.extend(self.topics.names().into_iter().map(|t| Scope::Topic(t).channel()));
            if !channels.is_empty() && sink.subscribe(&channels).await.is_err() {
                tokio::time::sleep(backoff.next()).await;
                continue;
            }
            backoff = Backoff::new();
            let mut subscribed = channels.len() as u64;
            self.metrics.channels.store(subscribed, Ordering::Relaxed);
            self.metrics.up.store(true, Ordering::Relaxed);
            if connected_before {
                self.metrics.reconnects.fetch_add(1, Ordering::Relaxed);
                tracing::info!(channels = channels.len(), "cluster: reconnected to Redis and resubscribed");
            } else {
                tracing::info!(node = format!("{:016x}", self.node), channels = channels.len(), "cluster: joined");
            }
            connected_before = true;
            loop {
                tokio::select! {
                    message = stream.next() => {
                        let Some(message) = message else { break };
                        self.receive(&message, &mut last_seq, &deliver);
                    }
                    interest = interests.recv() => {
                        let result = match interest {
                            Some(Interest::Subscribe(channel)) => sink.subscribe(channel).await.map(|()| subscribed + 1),
                            Some(Interest::Unsubscribe(channel)) => {
                                sink.unsubscribe(channel).await.map(|()| subscribed.saturating_sub(1))
                            }
                            None => return,
                        };
                        match result {
                            Ok(count) => {
                                subscribed = count;
                                self.metrics.channels.store(count, Ordering::Relaxed);
                            }
                            Err(_) => break,
                        }
                    }
                }
            }
            self.metrics.up.store(false, Ordering::Relaxed);
            tracing::warn!("cluster: lost the Redis connection; local traffic continues, reconnecting");
        }
    }

    fn receive(&self, message: &redis::Msg, last_seq: &mut HashMap<(u64, String), u64>, deliver: &impl Fn(Inbound)) {
        let channel = message.get_channel_name();
        let (Some(scope), Some((node, seq, binary, body))) =
            (Scope::from_channel(channel), decode(message.get_payload_bytes()))
        else {
            return;
        };
        if node == self.node {
            return; // our own echo: already delivered locally
        }
        let last = last_seq.entry((node, channel.to_owned())).or_insert(seq - 1);
        if seq > *last + 1 {
            self.metrics.gaps.fetch_add(seq - *last - 1, Ordering::Relaxed);
        }
        *last = (*last).max(seq);
        self.metrics.received.fetch_add(1, Ordering::Relaxed);
        deliver(Inbound { scope, binary, body: body.to_vec() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_round_trips_and_rejects_foreign_payloads() {
        let bytes = encode(7, 42, true, b"payload");
        assert_eq!(decode(&bytes), Some((7, 42, true, &b"payload"[..])));
        assert_eq!(decode(b"hello from someone else"), None);
        assert_eq!(decode(&bytes[..5]), None);
    }

    #[test]
    fn channels_map_to_scopes() {
        for scope in [Scope::Broadcast, Scope::Relay, Scope::Topic("a:b".into())] {
            assert_eq!(Scope::from_channel(&scope.channel()), Some(scope));
        }
        assert_eq!(Scope::from_channel("other:broadcast"), None);
    }
}
