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
//!
//! With history (`redis_history.rs`), a stream's messages are not delivered locally at
//! publish time: a Lua script assigns the offset, keeps the message in Redis and
//! publishes it, and every node — the publisher's too — delivers it from its
//! subscription, in offset order. During an outage a node delivers its own publishes
//! locally in an epoch of its own, so that nobody mistakes them for the cluster's.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::redis_history::{self, RedisHistory};
pub use crate::redis_history::{Fetched, RecoverRequest};
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
    /// A stream's message (history on): the position Redis (or, during an outage, this
    /// node) assigned.
    pub position: Option<ringcast::Position>,
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
    /// Stream messages delivered only locally, in an epoch of this node's, because
    /// Redis could not take them (history on).
    pub history_fallbacks: AtomicU64,
    /// Subscriptions whose position was fetched from Redis's history.
    pub history_fetches: AtomicU64,
    /// Fetches that failed (Redis unreachable): answered "not recovered".
    pub history_fetch_failures: AtomicU64,
}

struct Publish {
    channel: String,
    binary: bool,
    body: Vec<u8>,
    /// A stream's message: through the history script, not a plain PUBLISH.
    stream: bool,
}

enum Interest {
    Subscribe(String),
    Unsubscribe(String),
    Recover(RecoverRequest),
}

/// The handle the service uses on its worker threads: non-blocking sends to the backbone.
#[derive(Clone)]
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
    /// Redis-backed history, when on.
    history: Option<RedisHistory>,
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
pub fn connect(
    url: &str,
    always: &[Scope],
    topics: Arc<TopicCounts>,
    history: Option<RedisHistory>,
) -> Result<(Cluster, Backbone), String> {
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
        history,
        topics,
        metrics,
        runtime,
    };
    Ok((cluster, backbone))
}

impl Cluster {
    /// Hands a locally published message to the other nodes.
    pub fn publish(&self, scope: &Scope, binary: bool, body: &[u8]) {
        let _ = self.publishes.send(Publish { channel: scope.channel(), binary, body: body.to_vec(), stream: false });
    }

    /// Publishes a stream's message through Redis's history: every node, this one
    /// included, delivers it when Redis hands it back with its offset.
    pub fn publish_stream(&self, scope: &Scope, binary: bool, body: &[u8]) {
        let _ = self.publishes.send(Publish { channel: scope.channel(), binary, body: body.to_vec(), stream: true });
    }

    /// Asks for a stream's history from Redis (see [`RecoverRequest`]). If the backbone
    /// has stopped, `finish` hears so at once.
    pub fn recover(&self, request: RecoverRequest) {
        if let Err(failed) = self.interests.send(Interest::Recover(request))
            && let Interest::Recover(request) = failed.0
        {
            (request.finish)(Err("the cluster backbone has stopped".into()));
        }
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
    pub fn start(self, deliver: impl Fn(Inbound) + Send + Sync + 'static) -> std::io::Result<()> {
        std::thread::Builder::new().name("ringcast-cluster".into()).spawn(move || {
            let Backbone { client, node, static_channels, publishes, interests, history, topics, metrics, runtime } =
                self;
            let deliver: Arc<dyn Fn(Inbound) + Send + Sync> = Arc::new(deliver);
            runtime.block_on(async move {
                let publisher = PublishLoop { client: client.clone(), node, history, metrics: metrics.clone() };
                let publisher = tokio::spawn(publisher.run(publishes, deliver.clone()));
                let subscribe = SubscribeLoop { client, node, static_channels, topics, metrics, history };
                subscribe.run(interests, &*deliver).await;
                publisher.abort();
            });
        })?;
        Ok(())
    }
}

/// The publishing half of the backbone: plain PUBLISHes, or the history script for
/// streams, pipelined in batches.
struct PublishLoop {
    client: redis::Client,
    node: u64,
    history: Option<RedisHistory>,
    metrics: Arc<ClusterMetrics>,
}

impl PublishLoop {
    async fn run(self, mut publishes: UnboundedReceiver<Publish>, deliver: Arc<dyn Fn(Inbound) + Send + Sync>) {
        let mut connection = None;
        let mut sequences: HashMap<String, u64> = HashMap::new();
        // During an outage, each stream's publishes get offsets of this node's own in an
        // epoch of its own, drawn when the outage began for that stream.
        let mut fallback: HashMap<String, ringcast::Position> = HashMap::new();
        let mut retry_at = Instant::now();
        let mut backoff = Backoff::new();
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while publishes.recv_many(&mut batch, MAX_BATCH).await > 0 {
            let mut pipe = redis::pipe();
            let now_ms = crate::history::unix_ms();
            // Used only where Redis has no epoch for a stream (new, or its data was lost):
            // drawn afresh each time, so that a lost stream never gets its old epoch back.
            let candidate_epoch = ringcast::Epoch::random().to_string();
            for message in &batch {
                match (message.stream, self.history) {
                    (true, Some(history)) => {
                        pipe.cmd("EVAL")
                            .arg(redis_history::PUBLISH_SCRIPT)
                            .arg(2)
                            .arg(redis_history::meta_key(&message.channel))
                            .arg(redis_history::log_key(&message.channel))
                            .arg(&candidate_epoch)
                            .arg(history.max_messages.max(1))
                            .arg(if message.binary { "1" } else { "0" })
                            .arg(&message.body)
                            .arg(&message.channel)
                            .arg(now_ms)
                            .arg(history.ttl_ms.max(1))
                            .ignore();
                    }
                    _ => {
                        let seq = sequences.entry(message.channel.clone()).or_insert(0);
                        *seq += 1;
                        let payload = encode(self.node, *seq, message.binary, &message.body);
                        pipe.cmd("PUBLISH").arg(&message.channel).arg(payload).ignore();
                    }
                }
            }
            if connection.is_none() && Instant::now() >= retry_at {
                match tokio::time::timeout(CONNECT_TIMEOUT, self.client.get_multiplexed_async_connection()).await {
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
                self.metrics.published.fetch_add(count, Ordering::Relaxed);
                fallback.clear();
            } else {
                if connection.take().is_some() {
                    tracing::warn!("cluster: publishing to Redis failed; counting lost messages until it is back");
                    retry_at = Instant::now() + backoff.next();
                }
                self.metrics.publish_failures.fetch_add(count, Ordering::Relaxed);
                for message in batch.iter().filter(|m| m.stream) {
                    // Local traffic continues, in an epoch nobody else has: a client that
                    // resumes from one of these positions elsewhere hears "epoch changed".
                    let Some(scope) = Scope::from_channel(&message.channel) else { continue };
                    let at = fallback
                        .entry(message.channel.clone())
                        .or_insert(ringcast::Position { epoch: ringcast::Epoch::random(), offset: 0 });
                    at.offset += 1;
                    self.metrics.history_fallbacks.fetch_add(1, Ordering::Relaxed);
                    deliver(Inbound { scope, binary: message.binary, body: message.body.clone(), position: Some(*at) });
                }
            }
            batch.clear();
        }
    }
}

struct SubscribeLoop {
    client: redis::Client,
    node: u64,
    static_channels: Vec<String>,
    topics: Arc<TopicCounts>,
    metrics: Arc<ClusterMetrics>,
    history: Option<RedisHistory>,
}

impl SubscribeLoop {
    async fn run(self, mut interests: UnboundedReceiver<Interest>, deliver: &(dyn Fn(Inbound) + Send + Sync)) {
        let mut backoff = Backoff::new();
        let mut last_seq: HashMap<(u64, String), u64> = HashMap::new();
        let mut connected_before = false;
        // The connection history fetches use (the subscription's is in pub/sub mode).
        let mut fetcher = None;
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
                    // Interest changes while down are picked up on resubscription; history
                    // requests are answered now: not recovered, and why.
                    let sleep = tokio::time::sleep(wait);
                    tokio::pin!(sleep);
                    loop {
                        tokio::select! {
                            () = &mut sleep => break,
                            interest = interests.recv() => match interest {
                                Some(Interest::Recover(request)) => {
                                    self.metrics.history_fetch_failures.fetch_add(1, Ordering::Relaxed);
                                    (request.finish)(Err(format!("Redis unreachable: {error}")));
                                }
                                Some(_) => {}
                                None => return,
                            },
                        }
                    }
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
            let mut subscribed: HashSet<String> = channels.iter().cloned().collect();
            self.metrics.channels.store(subscribed.len() as u64, Ordering::Relaxed);
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
                        self.receive(&message, &mut last_seq, deliver);
                    }
                    interest = interests.recv() => {
                        // Subscribing is idempotent: a recovery may have subscribed first.
                        let result = match interest {
                            Some(Interest::Subscribe(channel)) if !subscribed.contains(&channel) => {
                                sink.subscribe(&channel).await.map(|()| { subscribed.insert(channel); })
                            }
                            Some(Interest::Unsubscribe(channel)) if subscribed.contains(&channel) => {
                                sink.unsubscribe(&channel).await.map(|()| { subscribed.remove(&channel); })
                            }
                            Some(Interest::Subscribe(_) | Interest::Unsubscribe(_)) => Ok(()),
                            Some(Interest::Recover(request)) => {
                                // Every recovery waiting now is served by one fetch per
                                // stream, from the lowest offset asked for: a wave of
                                // reconnections costs a few reads, and the messages arriving
                                // meanwhile are not held up behind one read each.
                                let mut waiting = vec![request];
                                while let Ok(next) = interests.try_recv() {
                                    match next {
                                        Interest::Recover(request) => waiting.push(request),
                                        Interest::Subscribe(channel) if !subscribed.contains(&channel) => {
                                            if sink.subscribe(&channel).await.is_ok() {
                                                subscribed.insert(channel);
                                            }
                                        }
                                        Interest::Unsubscribe(channel) if subscribed.contains(&channel) => {
                                            if sink.unsubscribe(&channel).await.is_ok() {
                                                subscribed.remove(&channel);
                                            }
                                        }
                                        Interest::Subscribe(_) | Interest::Unsubscribe(_) => {}
                                    }
                                }
                                let mut by_channel: HashMap<String, Vec<RecoverRequest>> = HashMap::new();
                                for request in waiting {
                                    by_channel.entry(request.scope.channel()).or_default().push(request);
                                }
                                let mut joined = Ok(());
                                for (channel, requests) in by_channel {
                                    joined = self
                                        .recover(&mut sink, &mut subscribed, &mut fetcher, &channel, requests)
                                        .await;
                                }
                                joined
                            }
                            None => return,
                        };
                        self.metrics.channels.store(subscribed.len() as u64, Ordering::Relaxed);
                        if result.is_err() {
                            break;
                        }
                    }
                }
            }
            self.metrics.up.store(false, Ordering::Relaxed);
            tracing::warn!("cluster: lost the Redis connection; local traffic continues, reconnecting");
        }
    }

    /// Serves the recoveries of one stream: receive its channel first, then read what
    /// Redis has from the lowest offset asked for (every message is then in one or the
    /// other, or both: merged by offset). The first request merges the read; the others
    /// find it merged (`Ok(None)`: nothing more to add). Returns the subscription's
    /// outcome (an error means the connection to Redis is gone).
    async fn recover(
        &self,
        sink: &mut redis::aio::PubSubSink,
        subscribed: &mut HashSet<String>,
        fetcher: &mut Option<redis::aio::MultiplexedConnection>,
        channel: &str,
        requests: Vec<RecoverRequest>,
    ) -> Result<(), redis::RedisError> {
        let joined = if subscribed.contains(channel) {
            Ok(())
        } else {
            sink.subscribe(channel).await.map(|()| {
                subscribed.insert(channel.to_owned());
            })
        };
        let from = requests.iter().map(|r| r.from).min().unwrap_or(1);
        let fetched = match &joined {
            Ok(()) => self.fetch(fetcher, channel, from).await,
            Err(e) => Err(format!("Redis: {e}")),
        };
        let counter =
            if fetched.is_ok() { &self.metrics.history_fetches } else { &self.metrics.history_fetch_failures };
        counter.fetch_add(requests.len() as u64, Ordering::Relaxed);
        let failed = fetched.as_ref().err().cloned();
        let mut fetched = Some(fetched);
        for request in requests {
            let this = match (fetched.take(), &failed) {
                (Some(first), _) => first,
                (None, Some(why)) => Err(why.clone()),
                (None, None) => Ok(None),
            };
            (request.finish)(this);
        }
        joined
    }

    /// Reads `channel`'s stream from offset `from` on (see `redis_history.rs`). A kept
    /// connection that fails (Redis restarted since) is replaced once.
    async fn fetch(
        &self,
        connection: &mut Option<redis::aio::MultiplexedConnection>,
        channel: &str,
        from: u64,
    ) -> Result<Fetched, String> {
        let reused = connection.is_some();
        match self.fetch_once(connection, channel, from).await {
            Err(_) if reused => self.fetch_once(connection, channel, from).await,
            result => result,
        }
    }

    async fn fetch_once(
        &self,
        connection: &mut Option<redis::aio::MultiplexedConnection>,
        channel: &str,
        from: u64,
    ) -> Result<Fetched, String> {
        let Some(history) = self.history else { return Err("history is off".into()) };
        if connection.is_none() {
            let c = tokio::time::timeout(CONNECT_TIMEOUT, self.client.get_multiplexed_async_connection())
                .await
                .map_err(|_| "Redis unreachable: timed out".to_owned())?
                .map_err(|e| format!("Redis unreachable: {e}"))?;
            *connection = Some(c);
        }
        let Some(c) = connection.as_mut() else { return Err("Redis unreachable".into()) };
        let mut command = redis::cmd("EVAL");
        command
            .arg(redis_history::FETCH_SCRIPT)
            .arg(2)
            .arg(redis_history::meta_key(channel))
            .arg(redis_history::log_key(channel))
            .arg(from.max(1))
            .arg(history.max_messages + 1);
        let query = command.query_async::<redis::Value>(c);
        let value = match tokio::time::timeout(CONNECT_TIMEOUT, query).await {
            Ok(Ok(value)) => value,
            Ok(Err(e)) => {
                *connection = None;
                return Err(format!("Redis: {e}"));
            }
            Err(_) => {
                *connection = None;
                return Err("Redis: timed out".into());
            }
        };
        redis_history::parse_fetched(value)
    }

    fn receive(
        &self,
        message: &redis::Msg,
        last_seq: &mut HashMap<(u64, String), u64>,
        deliver: &(dyn Fn(Inbound) + Send + Sync),
    ) {
        let channel = message.get_channel_name();
        let Some(scope) = Scope::from_channel(channel) else { return };
        let payload = message.get_payload_bytes();
        if let Some((binary, position, body)) = redis_history::decode_message(payload) {
            // A stream's message: every node delivers it from here, its publisher too.
            self.metrics.received.fetch_add(1, Ordering::Relaxed);
            deliver(Inbound { scope, binary, body: body.to_vec(), position: Some(position) });
            return;
        }
        let Some((node, seq, binary, body)) = decode(payload) else { return };
        if node == self.node {
            return; // our own echo: already delivered locally
        }
        let last = last_seq.entry((node, channel.to_owned())).or_insert(seq - 1);
        if seq > *last + 1 {
            self.metrics.gaps.fetch_add(seq - *last - 1, Ordering::Relaxed);
        }
        *last = (*last).max(seq);
        self.metrics.received.fetch_add(1, Ordering::Relaxed);
        deliver(Inbound { scope, binary, body: body.to_vec(), position: None });
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
