//! Presence: who is subscribed to a topic (client id, user id, `info` from the token),
//! for the topics whose channel rule says `presence = true`.
//!
//! Each node keeps its own subscribers here. With `--cluster`, it also writes them to
//! Redis, where every node's entries of a topic live in one hash
//! (`ringcast:presence:<topic>`: client id → `{"user":...,"info":...}`) beside a sorted set
//! of their expiry times (`ringcast:presence-expiry:<topic>`). A node rewrites its own
//! entries every third of `--presence-ttl` and removes them when clients leave; entries
//! whose expiry passed are dropped by the next query, so a node that crashed takes its
//! clients with it within one TTL. Queries then read Redis: over the WebSocket protocol
//! the answer arrives as a message once Redis replied; over HTTP the request waits for
//! it (one round trip; at most [`HTTP_WAIT`], and 503 when Redis is unreachable).
//! Writes and queries go through one connection in order, so a client sees its own join.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ringcast::{Broadcaster, ConnectionId, Target};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::service::Peer;

/// The longest an HTTP presence query waits for Redis.
pub const HTTP_WAIT: Duration = Duration::from_secs(1);
/// Default of `--presence-ttl`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Entries per pipeline when a node rewrites its own.
const REFRESH_BATCH: usize = 512;

/// One subscriber as presence shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The user id (`None`: anonymous), shared with the connection's identity.
    pub user: Option<Arc<str>>,
    /// `info` from the token, as JSON text.
    pub info: Option<Arc<str>>,
}

impl Member {
    /// `{"user":...,"info":...}`.
    pub fn to_json(&self) -> String {
        let user = self.user.as_deref().map_or_else(|| "null".to_owned(), json_string);
        format!("{{\"user\":{user},\"info\":{}}}", self.info.as_deref().unwrap_or("null"))
    }
}

/// Topic names come from clients, so that map keeps std's DoS-resistant hasher; connection
/// ids are the server's own, so theirs is the fast one.
type Local = HashMap<Box<str>, foldhash::HashMap<ConnectionId, Member>>;

/// Where a query's answer goes.
pub enum Reply {
    /// A message to this connection.
    Connection(ConnectionId),
    /// The waiting HTTP request (`None`: Redis did not answer).
    Http(mpsc::SyncSender<Option<String>>),
}

/// A query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    /// Every member.
    Members,
    /// How many clients and distinct users.
    Stats,
}

enum Op {
    Join { topic: Box<str>, client: String, member: String },
    Leave { topic: Box<str>, client: String },
    Query { topic: Box<str>, query: Query, reply: Reply },
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct PresenceMetrics {
    /// Joins recorded.
    pub joins: AtomicU64,
    /// Leaves recorded.
    pub leaves: AtomicU64,
    /// Whether this node's presence connection to Redis is up (cluster mode).
    pub backbone_up: AtomicBool,
}

/// This node's presence, and its link to the others.
pub struct Presence {
    node: u64,
    local: Arc<Mutex<Local>>,
    backbone: Option<UnboundedSender<Op>>,
    /// Counters.
    pub metrics: Arc<PresenceMetrics>,
}

/// The Redis side, started once the server exists.
pub struct PresenceBackbone {
    client: redis::Client,
    node: u64,
    ttl: Duration,
    ops: UnboundedReceiver<Op>,
    local: Arc<Mutex<Local>>,
    metrics: Arc<PresenceMetrics>,
}

impl Presence {
    /// Presence of this node alone.
    pub fn local() -> Presence {
        Presence { node: rand::random(), local: Arc::default(), backbone: None, metrics: Arc::default() }
    }

    /// Presence shared through the Redis at `url`, entries living `ttl` past their last
    /// refresh.
    pub fn clustered(url: &str, ttl: Duration) -> Result<(Presence, PresenceBackbone), String> {
        let client = redis::Client::open(url).map_err(|e| format!("--cluster {url}: {e}"))?;
        let (tx, rx) = unbounded_channel();
        let mut presence = Presence::local();
        presence.backbone = Some(tx);
        let backbone = PresenceBackbone {
            client,
            node: presence.node,
            ttl: ttl.max(Duration::from_millis(300)),
            ops: rx,
            local: presence.local.clone(),
            metrics: presence.metrics.clone(),
        };
        Ok((presence, backbone))
    }

    fn lock(&self) -> MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The id presence shows for connection `id`: unique across the nodes of a cluster.
    pub fn client_id(&self, id: ConnectionId) -> String {
        client_id(self.node, id)
    }

    /// `id` subscribed to `topic`. Returns `false` if it was there already.
    pub fn join(&self, topic: &str, id: ConnectionId, member: Member) -> bool {
        let json = self.backbone.as_ref().map(|_| member.to_json());
        let replaced = {
            let mut local = self.lock();
            // The topic's key is allocated only by its first member.
            match local.get_mut(topic) {
                Some(members) => members.insert(id, member),
                None => local.entry(topic.into()).or_default().insert(id, member),
            }
        };
        if replaced.is_some() {
            return false;
        }
        self.metrics.joins.fetch_add(1, Ordering::Relaxed);
        if let (Some(backbone), Some(member)) = (&self.backbone, json) {
            let _ = backbone.send(Op::Join { topic: topic.into(), client: self.client_id(id), member });
        }
        true
    }

    /// `id` left `topic`; returns what presence showed for it, if it was there.
    pub fn leave(&self, topic: &str, id: ConnectionId) -> Option<Member> {
        let member = {
            let mut local = self.lock();
            let members = local.get_mut(topic)?;
            let member = members.remove(&id)?;
            if members.is_empty() {
                local.remove(topic);
            }
            member
        };
        self.metrics.leaves.fetch_add(1, Ordering::Relaxed);
        if let Some(backbone) = &self.backbone {
            let _ = backbone.send(Op::Leave { topic: topic.into(), client: self.client_id(id) });
        }
        Some(member)
    }

    /// Whether presence is shared through Redis.
    pub fn is_clustered(&self) -> bool {
        self.backbone.is_some()
    }

    /// Answers `query` about `topic` on this node at once; `None` in cluster mode, where
    /// the answer goes to `reply` once Redis has it.
    pub fn query(&self, topic: &str, query: Query, reply: Reply) -> Option<String> {
        match &self.backbone {
            None => {
                let local = self.lock();
                let members = local.get(topic).into_iter().flatten().map(|(id, m)| (self.client_id(*id), m.to_json()));
                Some(render(topic, query, members))
            }
            Some(backbone) => {
                let unavailable = !self.metrics.backbone_up.load(Ordering::Relaxed);
                if unavailable || backbone.send(Op::Query { topic: topic.into(), query, reply }).is_err() {
                    return Some(UNAVAILABLE.to_owned());
                }
                None
            }
        }
    }

    /// An HTTP query: answered here, or waited for from Redis (bounded).
    pub fn query_blocking(&self, topic: &str, query: Query) -> Result<String, &'static str> {
        let (tx, rx) = mpsc::sync_channel(1);
        match self.query(topic, query, Reply::Http(tx)) {
            Some(answer) if answer == UNAVAILABLE => Err("presence is unavailable: the Redis backbone is down"),
            Some(answer) => Ok(answer),
            None => {
                rx.recv_timeout(HTTP_WAIT).ok().flatten().ok_or("presence is unavailable: Redis did not answer in time")
            }
        }
    }

    /// Topics with presence on this node, and their entries.
    pub fn sizes(&self) -> (usize, usize) {
        let local = self.lock();
        (local.len(), local.values().map(foldhash::HashMap::len).sum())
    }
}

/// What an unreachable backbone answers (never valid presence JSON).
pub const UNAVAILABLE: &str = "unavailable";

/// `{"topic":...,"clients":{client: member, ...}}` or
/// `{"topic":...,"clients":N,"users":M}`.
pub fn render(topic: &str, query: Query, members: impl Iterator<Item = (String, String)>) -> String {
    let mut out = format!("{{\"topic\":{},\"clients\":", json_string(topic));
    match query {
        Query::Members => {
            out.push('{');
            for (i, (client, member)) in members.enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&json_string(&client));
                out.push(':');
                out.push_str(&member);
            }
            out.push_str("}}");
        }
        Query::Stats => {
            let mut clients = 0;
            let mut users = HashSet::new();
            for (_, member) in members {
                clients += 1;
                let mut bytes = member.into_bytes();
                if let Ok(value) = simd_json::to_owned_value(&mut bytes) {
                    use simd_json::prelude::*;
                    if let Some(user) = value.get("user").and_then(|u| u.as_str()) {
                        users.insert(user.to_owned());
                    }
                }
            }
            out.push_str(&format!("{clients},\"users\":{}}}", users.len()));
        }
    }
    out
}

fn json_string(text: &str) -> String {
    use simd_json::prelude::*;
    simd_json::BorrowedValue::from(text).encode()
}

fn client_id(node: u64, id: ConnectionId) -> String {
    format!("{node:016x}-{:x}", id.as_u64())
}

fn hash_key(topic: &str) -> String {
    format!("ringcast:presence:{topic}")
}

fn expiry_key(topic: &str) -> String {
    format!("ringcast:presence-expiry:{topic}")
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl PresenceBackbone {
    /// Runs the Redis side on its own thread; WebSocket answers go out through
    /// `broadcaster`, wrapped by `answer(topic, query, json)`.
    pub fn start(
        self,
        broadcaster: Broadcaster<Peer>,
        answer: impl Fn(Query, &str) -> String + Send + 'static,
    ) -> std::io::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        std::thread::Builder::new().name("ringcast-presence".into()).spawn(move || {
            runtime.block_on(self.run(broadcaster, answer));
        })?;
        Ok(())
    }

    async fn run(mut self, broadcaster: Broadcaster<Peer>, answer: impl Fn(Query, &str) -> String) {
        let mut link = Link { client: self.client.clone(), connection: None, retry_at: Instant::now() };
        let mut refresh = tokio::time::interval(self.ttl / 3);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::new();
        loop {
            tokio::select! {
                count = self.ops.recv_many(&mut batch, REFRESH_BATCH) => {
                    if count == 0 {
                        return;
                    }
                    self.apply(&mut link, &mut batch, &broadcaster, &answer).await;
                }
                _ = refresh.tick() => self.refresh(&mut link).await,
            }
            self.metrics.backbone_up.store(link.connection.is_some(), Ordering::Relaxed);
        }
    }

    /// Applies a batch of operations in order: the joins and leaves between two queries
    /// go to Redis as one pipeline, before the query that follows them.
    async fn apply(
        &self,
        link: &mut Link,
        batch: &mut Vec<Op>,
        broadcaster: &Broadcaster<Peer>,
        answer: &impl Fn(Query, &str) -> String,
    ) {
        let ttl_ms = self.ttl.as_millis() as u64;
        let mut writes = redis::pipe();
        let mut pending = false;
        for op in batch.drain(..) {
            match op {
                Op::Join { topic, client, member } => {
                    writes.cmd("HSET").arg(hash_key(&topic)).arg(&client).arg(member).ignore();
                    writes.cmd("ZADD").arg(expiry_key(&topic)).arg(unix_ms() + ttl_ms).arg(&client).ignore();
                    writes.cmd("PEXPIRE").arg(hash_key(&topic)).arg(ttl_ms).ignore();
                    writes.cmd("PEXPIRE").arg(expiry_key(&topic)).arg(ttl_ms).ignore();
                    pending = true;
                }
                Op::Leave { topic, client } => {
                    writes.cmd("HDEL").arg(hash_key(&topic)).arg(&client).ignore();
                    writes.cmd("ZREM").arg(expiry_key(&topic)).arg(&client).ignore();
                    pending = true;
                }
                Op::Query { topic, query, reply } => {
                    if std::mem::take(&mut pending) {
                        link.exec(&std::mem::take(&mut writes)).await;
                    }
                    let result = link.members(&topic).await;
                    let json = result.map(|members| render(&topic, query, members.into_iter()));
                    match reply {
                        Reply::Http(tx) => {
                            let _ = tx.try_send(json);
                        }
                        Reply::Connection(id) => {
                            let text = answer(query, json.as_deref().unwrap_or(UNAVAILABLE));
                            broadcaster.send(Target::Connection(id), &text);
                        }
                    }
                }
            }
        }
        if pending {
            link.exec(&writes).await;
        }
    }

    /// Rewrites this node's entries with a later expiry (and, after a Redis restart, at
    /// all); with none, checks that Redis answers.
    async fn refresh(&self, link: &mut Link) {
        let entries: Vec<(Box<str>, String, String)> = {
            let local = self.local.lock().unwrap_or_else(|e| e.into_inner());
            local
                .iter()
                .flat_map(|(topic, members)| {
                    members.iter().map(|(id, m)| (topic.clone(), client_id(self.node, *id), m.to_json()))
                })
                .collect()
        };
        if entries.is_empty() {
            let mut ping = redis::pipe();
            ping.cmd("PING").ignore();
            link.exec(&ping).await;
            return;
        }
        let ttl_ms = self.ttl.as_millis() as u64;
        let expires = unix_ms() + ttl_ms;
        for chunk in entries.chunks(REFRESH_BATCH) {
            let mut pipe = redis::pipe();
            let mut topics = HashSet::new();
            for (topic, client, member) in chunk {
                pipe.cmd("HSET").arg(hash_key(topic)).arg(client).arg(member).ignore();
                pipe.cmd("ZADD").arg(expiry_key(topic)).arg(expires).arg(client).ignore();
                topics.insert(&**topic);
            }
            for topic in topics {
                pipe.cmd("PEXPIRE").arg(hash_key(topic)).arg(ttl_ms).ignore();
                pipe.cmd("PEXPIRE").arg(expiry_key(topic)).arg(ttl_ms).ignore();
            }
            if !link.exec(&pipe).await {
                return;
            }
        }
    }
}

/// The presence connection to Redis, reconnected lazily with a pause after a failure.
struct Link {
    client: redis::Client,
    connection: Option<redis::aio::MultiplexedConnection>,
    retry_at: Instant,
}

impl Link {
    async fn connected(&mut self) -> Option<&mut redis::aio::MultiplexedConnection> {
        if self.connection.is_none() && Instant::now() >= self.retry_at {
            match tokio::time::timeout(CONNECT_TIMEOUT, self.client.get_multiplexed_async_connection()).await {
                Ok(Ok(connection)) => self.connection = Some(connection),
                _ => self.retry_at = Instant::now() + Duration::from_millis(500),
            }
        }
        self.connection.as_mut()
    }

    fn failed(&mut self) {
        if self.connection.take().is_some() {
            tracing::warn!("presence: lost the Redis connection; reconnecting");
        }
        self.retry_at = Instant::now() + Duration::from_millis(500);
    }

    async fn exec(&mut self, pipe: &redis::Pipeline) -> bool {
        let Some(connection) = self.connected().await else { return false };
        let ok = tokio::time::timeout(CONNECT_TIMEOUT, pipe.exec_async(connection)).await.is_ok_and(|r| r.is_ok());
        if !ok {
            self.failed();
        }
        ok
    }

    /// The live entries of `topic`, dropping those whose expiry passed.
    async fn members(&mut self, topic: &str) -> Option<Vec<(String, String)>> {
        let now = unix_ms();
        let connection = self.connected().await?;
        let query = async {
            let expired: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                .arg(expiry_key(topic))
                .arg("-inf")
                .arg(format!("({now}"))
                .query_async(connection)
                .await?;
            let mut pipe = redis::pipe();
            if !expired.is_empty() {
                pipe.cmd("HDEL").arg(hash_key(topic)).arg(&expired).ignore();
                pipe.cmd("ZREM").arg(expiry_key(topic)).arg(&expired).ignore();
            }
            pipe.cmd("HGETALL").arg(hash_key(topic));
            let (members,): (HashMap<String, String>,) = pipe.query_async(connection).await?;
            Ok::<_, redis::RedisError>(members)
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, query).await {
            Ok(Ok(members)) => {
                let mut members: Vec<(String, String)> = members.into_iter().collect();
                members.sort();
                Some(members)
            }
            _ => {
                self.failed();
                None
            }
        }
    }
}
