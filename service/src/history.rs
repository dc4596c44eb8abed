//! Message history in the service: offsets in deliveries, subscriptions from a position
//! or the last N, and (with `--cluster`) recovery from Redis on any node.
//!
//! Every topic of pub/sub mode, and the broadcast stream of broadcast mode, is a stream
//! of the server library's history (`ringcast::Broadcaster::publish`): each message gets
//! an offset and the stream has an epoch. The protocol (README "Message history"):
//!
//! - pub/sub deliveries are `{"topic":T,"offset":N,"epoch":E,"data":D}`; a subscribe may
//!   carry `"since":{"offset":N,"epoch":E}` (the last message received) or `"last":K`,
//!   and its reply says where live messages start and whether recovery was complete;
//! - broadcast subscribers opt in on the URL (`/?offsets=1`, `/?since=N&epoch=E`,
//!   `/?last=K`): they get the same reply first, then each message in an envelope — text
//!   as `{"offset":N,"epoch":E,"data":"<the text>"}`, binary with 16 bytes in front
//!   (offset and epoch, big-endian u64s). Other subscribers get raw messages as before.
//!
//! The epoch is in every delivery, so a client always knows the exact position to
//! resume from, and sees it when a stream restarted (a new epoch) while it listened.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ringcast::{
    Broadcaster, Connection, Epoch, HistoryConfig, NotRecovered, Position, PreparedMessage, Recovery, Request, Since,
    Split,
};
use simd_json::prelude::*;

use crate::cluster::{Cluster, Fetched, RecoverRequest, Scope};
use crate::service::{Peer, Role};
use crate::topics::TopicCounts;

/// The stream of broadcast mode (a name no other mode's topic meets: broadcast mode has
/// no topics).
pub const BROADCAST_STREAM: &str = "broadcast";

/// The service's history: its bounds and who listens to raw broadcasts.
#[derive(Debug)]
pub struct StreamHistory {
    pub config: HistoryConfig,
    /// Broadcast mode: subscribers without the offset envelope (none: no raw fan-out).
    pub raw_subscribers: Arc<AtomicUsize>,
    /// Cluster: streams whose missed offsets are being read from Redis; their messages
    /// from the subscription wait for that read (it has them), so that they go out in
    /// order behind what was missed.
    filling: Arc<Mutex<HashSet<String>>>,
}

impl StreamHistory {
    pub fn new(config: HistoryConfig) -> Self {
        StreamHistory { config, raw_subscribers: Arc::default(), filling: Arc::default() }
    }
}

/// Where a subscription starts, as a client asked for it.
pub fn since_from_json(request: &simd_json::BorrowedValue<'_>) -> Result<Since, String> {
    match (request.get("since"), request.get("last")) {
        (Some(_), Some(_)) => Err("\"since\" and \"last\" exclude each other".into()),
        (Some(since), None) => {
            let offset = since.get("offset").and_then(|v| v.as_u64());
            let epoch = since.get("epoch").and_then(|v| v.as_str()).and_then(|e| e.parse::<Epoch>().ok());
            match (offset, epoch) {
                (Some(offset), Some(epoch)) => Ok(Since::Position(Position { epoch, offset })),
                _ => Err("\"since\" is {\"offset\": <the last offset received>, \"epoch\": \"<its epoch>\"}".into()),
            }
        }
        (None, Some(last)) => {
            last.as_u64().map(|n| Since::Last(n as usize)).ok_or_else(|| "\"last\" is a number of messages".into())
        }
        (None, None) => Ok(Since::Now),
    }
}

/// Broadcast mode: whether a subscriber's URL asks for offsets, and from where.
/// `Ok(None)`: a raw subscriber.
pub fn since_from_query(request: &Request) -> Result<Option<Since>, String> {
    let param = |name| request.query_param(name);
    let since = match (param("since"), param("epoch"), param("last")) {
        (Some(_), _, Some(_)) => return Err("since and last exclude each other".into()),
        (Some(offset), Some(epoch), None) => {
            let offset = offset.parse().map_err(|_| "since= is the last offset received".to_owned())?;
            let epoch = epoch.parse().map_err(|_| "epoch= is 16 hex digits".to_owned())?;
            Some(Since::Position(Position { epoch, offset }))
        }
        (Some(_), None, None) => return Err("since= needs epoch= too".into()),
        (None, _, Some(last)) => Some(Since::Last(last.parse().map_err(|_| "last= is a number".to_owned())?)),
        (None, _, None) => None,
    };
    match param("offsets") {
        Some("1" | "true") => Ok(Some(since.unwrap_or(Since::Now))),
        Some("0" | "false") if since.is_some() => Err("since= and last= need offsets".into()),
        Some("0" | "false") | None => Ok(since),
        Some(_) => Err("offsets= is 1 or 0".into()),
    }
}

/// What pub/sub subscribers of `topic` receive.
pub fn topic_delivery(topic: &str, at: Position, data_json: &str) -> String {
    format!(
        "{{\"topic\":{},\"offset\":{},\"epoch\":\"{}\",\"data\":{data_json}}}",
        json_string(topic),
        at.offset,
        at.epoch
    )
}

/// What broadcast subscribers with offsets receive.
pub fn envelope(at: Position, binary: bool, body: &[u8], split: Split) -> PreparedMessage {
    if binary {
        let mut framed = Vec::with_capacity(16 + body.len());
        framed.extend_from_slice(&at.offset.to_be_bytes());
        framed.extend_from_slice(&at.epoch.as_u64().to_be_bytes());
        framed.extend_from_slice(body);
        PreparedMessage::binary(&framed, split)
    } else {
        let text = String::from_utf8_lossy(body);
        let json = format!("{{\"offset\":{},\"epoch\":\"{}\",\"data\":{}}}", at.offset, at.epoch, json_string(&text));
        PreparedMessage::text(&json, split)
    }
}

/// The bytes of a stream's message at `at`: what its subscribers receive. `body` is the
/// topic message's data JSON in pub/sub mode, the publisher's message in broadcast mode.
pub fn encode(scope: &Scope, at: Position, binary: bool, body: &[u8], split: Split) -> PreparedMessage {
    match scope {
        Scope::Topic(topic) => PreparedMessage::text(&topic_delivery(topic, at, &String::from_utf8_lossy(body)), split),
        _ => envelope(at, binary, body, split),
    }
}

/// The library stream (a topic of the server library) of a scope: the topic itself in
/// pub/sub mode, [`BROADCAST_STREAM`] in broadcast mode (the modes exclude each other).
pub fn stream_of(scope: &Scope) -> Option<&str> {
    match scope {
        Scope::Broadcast => Some(BROADCAST_STREAM),
        Scope::Topic(topic) => Some(topic),
        Scope::Relay => None,
    }
}

/// The reply to a subscription: where live messages start and what was replayed.
pub fn subscribed_event(topic: Option<&str>, since: Since, recovery: &Recovery) -> String {
    let mut out = String::from("{\"event\":\"subscribed\"");
    if let Some(topic) = topic {
        out.push_str(&format!(",\"topic\":{}", json_string(topic)));
    }
    out.push_str(&format!(
        ",\"epoch\":\"{}\",\"offset\":{},\"replayed\":{}",
        recovery.position.epoch, recovery.position.offset, recovery.replayed
    ));
    if let Since::Position(_) = since {
        match &recovery.outcome {
            Ok(()) => out.push_str(",\"recovered\":true"),
            Err(why) => {
                out.push_str(&format!(",\"recovered\":false,\"reason\":{}", json_string(&why.to_string())));
                if let NotRecovered::HistoryTooShort { missed } = why {
                    out.push_str(&format!(",\"missed\":{missed}"));
                }
            }
        }
    }
    out.push('}');
    out
}

fn json_string(text: &str) -> String {
    simd_json::BorrowedValue::from(text).encode()
}

/// Subscribes `conn` to library stream `stream` from `since` and answers it; `topic` is
/// the pub/sub topic (its name goes into the reply and into the topic counts). With a
/// cluster, a position this node's history cannot serve is fetched from Redis first, and
/// the subscription and its reply happen once it is here.
pub fn subscribe(
    conn: &mut Connection<'_, Peer>,
    scope: &Scope,
    since: Since,
    cluster: Option<&Cluster>,
    topics: &Arc<TopicCounts>,
    raw_subscribers: &Arc<AtomicUsize>,
) {
    let Some(stream) = stream_of(scope) else { return };
    let topic = match scope {
        Scope::Topic(topic) => Some(topic.as_str()),
        _ => None,
    };
    let local = conn.broadcaster().check_since(stream, since);
    if let (Since::Position(asked), Err(_), Some(cluster)) = (since, &local, cluster) {
        let id = conn.id();
        let broadcaster = conn.broadcaster().clone();
        let (scope, topic) = (scope.clone(), topic.map(str::to_owned));
        let (cluster_for_interest, topics) = (cluster.clone(), topics.clone());
        let raw_subscribers = raw_subscribers.clone();
        cluster.recover(RecoverRequest {
            scope: scope.clone(),
            from: asked.offset,
            finish: Box::new(move |fetched| {
                let unavailable = merge(&broadcaster, &scope, fetched, &raw_subscribers);
                broadcaster.with_connection(id, move |conn| {
                    let stream = stream_of(&scope).unwrap_or(BROADCAST_STREAM);
                    let mut recovery = match conn.subscribe_from(stream, since) {
                        Ok(recovery) => recovery,
                        Err(denied) => {
                            let refusal =
                                crate::access::refusal_json("subscribe", topic.as_deref().unwrap_or(stream), &denied);
                            let _ = conn.send(refusal.as_str());
                            return;
                        }
                    };
                    if let (Some(why), Err(_)) = (unavailable, &recovery.outcome) {
                        recovery.outcome = Err(NotRecovered::Unavailable(why));
                    }
                    if let Some(topic) = &topic {
                        topics.subscribed(topic, || cluster_for_interest.topic_interest_started(topic));
                    }
                    let _ = conn.send(subscribed_event(topic.as_deref(), since, &recovery).as_str());
                });
            }),
        });
        return;
    }
    let recovery = match conn.subscribe_from(stream, since) {
        Ok(recovery) => recovery,
        Err(denied) => {
            let _ = conn.send(crate::access::refusal_json("subscribe", topic.unwrap_or(stream), &denied).as_str());
            return;
        }
    };
    if let Some(topic) = topic {
        topics.subscribed(topic, || {
            if let Some(cluster) = cluster {
                cluster.topic_interest_started(topic);
            }
        });
    }
    let _ = conn.send(subscribed_event(topic, since, &recovery).as_str());
}

/// Merges what Redis returned into this node's history of `stream` (on the cluster
/// thread, in order with the messages arriving from Redis): older messages fill in
/// before what is kept, newer ones are delivered now (their copies from pub/sub are then
/// dropped as duplicates), another epoch moves the stream to Redis's. Returns why Redis
/// could not help, if it could not.
fn merge(
    broadcaster: &Broadcaster<Peer>,
    scope: &Scope,
    fetched: Result<Fetched, String>,
    raw_subscribers: &AtomicUsize,
) -> Option<String> {
    let stream = stream_of(scope)?;
    let fetched = match fetched {
        Ok(Some(fetched)) => fetched,
        Ok(None) => return None, // Redis does not know the stream: the epoch changed.
        Err(why) => return Some(why),
    };
    let split = broadcaster.split();
    let now_ms = unix_ms();
    let local = broadcaster.stream_position(stream);
    if local.is_none_or(|p| p.epoch != fetched.epoch) {
        broadcaster.align(stream, Position { epoch: fetched.epoch, offset: fetched.last });
    }
    let next = broadcaster.stream_position(stream).map_or(1, |p| p.offset + 1);
    let mut older = Vec::new();
    for entry in fetched.entries {
        let at = Position { epoch: fetched.epoch, offset: entry.offset };
        let message = encode(scope, at, entry.binary, &entry.body, split);
        if entry.offset >= next {
            // New here: delivered now, raw subscribers included (the copy from the
            // subscription will be a duplicate).
            if broadcaster.publish_at(stream, at, &message).delivered() && *scope == Scope::Broadcast {
                send_raw(broadcaster, raw_subscribers, entry.binary, &entry.body);
            }
        } else {
            older.push((entry.offset, message, Duration::from_millis(now_ms.saturating_sub(entry.at_ms))));
        }
    }
    broadcaster.backfill(stream, fetched.epoch, older);
    None
}

/// Delivers a stream message whose position Redis assigned (or, during an outage, this
/// node's fallback) to this node's subscribers: raw subscribers of broadcast mode too.
///
/// A message that skips offsets of the same epoch (this node was not subscribed for a
/// moment: its connection to Redis dropped) is not delivered at once: the missed ones are
/// read from Redis first, then everything goes out in order (the read has this message and
/// those arriving meanwhile too; their copies from the subscription are then duplicates).
pub fn deliver(
    broadcaster: &Broadcaster<Peer>,
    history: &StreamHistory,
    cluster: Option<&Cluster>,
    scope: &Scope,
    at: Position,
    binary: bool,
    body: &[u8],
) {
    let Some(stream) = stream_of(scope) else { return };
    if let Some(cluster) = cluster {
        let mut filling = history.filling.lock().unwrap_or_else(|e| e.into_inner());
        if filling.contains(stream) {
            return;
        }
        if let Some(local) = broadcaster.stream_position(stream)
            && local.epoch == at.epoch
            && local.offset > 0
            && at.offset > local.offset + 1
        {
            filling.insert(stream.to_owned());
            let (broadcaster, filling, scope) = (broadcaster.clone(), history.filling.clone(), scope.clone());
            let raw_subscribers = history.raw_subscribers.clone();
            cluster.recover(RecoverRequest {
                scope: scope.clone(),
                from: local.offset + 1,
                finish: Box::new(move |fetched| {
                    if let Some(why) = merge(&broadcaster, &scope, fetched, &raw_subscribers) {
                        tracing::warn!(%why, "cluster: could not read missed messages from Redis");
                    }
                    if let Some(stream) = stream_of(&scope) {
                        filling.lock().unwrap_or_else(|e| e.into_inner()).remove(stream);
                    }
                }),
            });
            return;
        }
    }
    let split = broadcaster.split();
    let appended = broadcaster.publish_at(stream, at, &encode(scope, at, binary, body, split));
    if appended.delivered() && *scope == Scope::Broadcast {
        send_raw(broadcaster, &history.raw_subscribers, binary, body);
    }
}

/// Broadcast mode: the raw message to subscribers without the envelope, if there are any.
pub fn send_raw(broadcaster: &Broadcaster<Peer>, raw_subscribers: &AtomicUsize, binary: bool, body: &[u8]) {
    if raw_subscribers.load(Ordering::Relaxed) == 0 {
        return;
    }
    let split = broadcaster.split();
    let raw = if binary {
        PreparedMessage::binary(body, split)
    } else {
        PreparedMessage::text(&String::from_utf8_lossy(body), split)
    };
    broadcaster.send_where(|c| c.data().role == Role::Subscriber, &raw);
}

/// Publishes into a stream on this node alone (no cluster): offset, history, delivery.
pub fn publish_local(
    broadcaster: &Broadcaster<Peer>,
    history: &StreamHistory,
    scope: &Scope,
    binary: bool,
    body: &[u8],
) {
    let Some(stream) = stream_of(scope) else { return };
    let split = broadcaster.split();
    broadcaster.publish(stream, |at| encode(scope, at, binary, body, split));
    if *scope == Scope::Broadcast {
        send_raw(broadcaster, &history.raw_subscribers, binary, body);
    }
}

/// The history's lines of `GET /metrics`.
pub fn render_metrics(
    history: Option<&StreamHistory>,
    broadcaster: &Broadcaster<Peer>,
    cluster: Option<&crate::cluster::ClusterMetrics>,
) -> String {
    let Some(history) = history else { return String::new() };
    let usage = broadcaster.history_usage();
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"));
    };
    metric("ringcast_history_messages", "gauge", "Messages kept in this node's history.", usage.messages as u64);
    metric(
        "ringcast_history_bytes",
        "gauge",
        "Bytes of this node's history (with per-message overhead).",
        usage.bytes as u64,
    );
    metric("ringcast_history_streams", "gauge", "Streams (topics) with a history on this node.", usage.streams as u64);
    metric("ringcast_history_max_bytes", "gauge", "The history's memory cap.", history.config.bytes() as u64);
    if let Some(cluster) = cluster {
        let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        metric(
            "ringcast_history_fetches_total",
            "counter",
            "Subscriptions served from Redis's history.",
            get(&cluster.history_fetches),
        );
        metric(
            "ringcast_history_fetch_failures_total",
            "counter",
            "History fetches that failed (answered not recovered).",
            get(&cluster.history_fetch_failures),
        );
        metric(
            "ringcast_history_fallbacks_total",
            "counter",
            "Stream messages delivered only locally, in an epoch of this node's, while Redis was down.",
            get(&cluster.history_fallbacks),
        );
    }
    out
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Since, String> {
        let mut bytes = json.as_bytes().to_vec();
        since_from_json(&simd_json::to_borrowed_value(&mut bytes).unwrap())
    }

    #[test]
    fn subscribe_requests_parse_and_bad_ones_say_why() {
        let epoch = Epoch::from_u64(0xab);
        assert_eq!(parse(r#"{"op":"subscribe"}"#), Ok(Since::Now));
        assert_eq!(parse(r#"{"last":5}"#), Ok(Since::Last(5)));
        assert_eq!(
            parse(r#"{"since":{"offset":7,"epoch":"00000000000000ab"}}"#),
            Ok(Since::Position(Position { epoch, offset: 7 }))
        );
        assert!(parse(r#"{"since":{"offset":7}}"#).unwrap_err().contains("epoch"));
        assert!(parse(r#"{"since":{"offset":-1,"epoch":"ab"}}"#).is_err());
        assert!(parse(r#"{"last":"x"}"#).is_err());
        assert!(parse(r#"{"last":1,"since":{"offset":1,"epoch":"ab"}}"#).unwrap_err().contains("exclude"));
    }

    #[test]
    fn deliveries_are_valid_json_and_the_binary_envelope_leads_with_offset_and_epoch() {
        let at = Position { epoch: Epoch::from_u64(0x1234), offset: 42 };
        let mut bytes = topic_delivery("a\"b", at, r#"{"x":1}"#).into_bytes();
        let value = simd_json::to_borrowed_value(&mut bytes).unwrap();
        assert_eq!(value.get("offset").and_then(|v| v.as_u64()), Some(42));
        assert_eq!(value.get("epoch").and_then(|v| v.as_str()), Some("0000000000001234"));
        assert_eq!(value.get("data").and_then(|v| v.get("x")).and_then(|v| v.as_i64()), Some(1));
        let framed = envelope(at, true, b"\x00\x01", Split::Whole);
        let payload = &framed.as_bytes()[2..];
        assert_eq!(&payload[..8], &42u64.to_be_bytes());
        assert_eq!(&payload[8..16], &0x1234u64.to_be_bytes());
        assert_eq!(&payload[16..], b"\x00\x01");
        let text = envelope(at, false, b"he said \"hi\"", Split::Whole);
        let mut json = text.as_bytes()[2..].to_vec();
        let value = simd_json::to_borrowed_value(&mut json).unwrap();
        assert_eq!(value.get("data").and_then(|v| v.as_str()), Some("he said \"hi\""));
    }
}
