//! The service's handler: broadcast, relay, pub/sub and echo modes, plus its HTTP
//! endpoints (POST /publish, /metrics, /healthz, the dashboard).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use ringcast::{
    Access, Allow, Connection, ConnectionId, ConnectionRef, Denied, Handler, HttpRequest, HttpResponse,
    PreparedMessage, Request, Target,
};
use simd_json::prelude::*;

use crate::access::AccessControl;
use crate::cluster::{Cluster, Scope};
use crate::dashboard::{self, Dashboard};
use crate::history::{self, StreamHistory};
use crate::metrics::{self, ServiceCounters};
use crate::presence::Query;
use crate::settings::Mode;
use crate::topics::TopicCounts;

/// What a connection is to the service.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A client of the relay, pub/sub or echo modes.
    #[default]
    Client,
    /// Broadcast mode: receives what publishers send.
    Subscriber,
    /// Broadcast mode, with offsets (`/?offsets=1`, `?since=`, `?last=`): receives the
    /// broadcast stream's messages in their envelope.
    StreamSubscriber,
    /// Broadcast mode: sends what subscribers receive.
    Publisher,
    /// The dashboard's live feed.
    StatusFeed,
    /// Pub/sub mode with auth: connected without a token, which must be its first message.
    Pending,
}

/// Per-connection state.
#[derive(Debug, Default)]
pub struct Peer {
    pub role: Role,
}

pub struct Service {
    pub mode: Mode,
    pub path: String,
    pub publish_path: String,
    pub token: Option<String>,
    /// The page at `GET /`, unless `--status-page false`.
    pub dashboard: Option<Dashboard>,
    pub counters: ServiceCounters,
    /// Subscribers per topic (pub/sub mode).
    pub topics: Arc<TopicCounts>,
    /// Other nodes, when running with `--cluster`.
    pub cluster: Option<Cluster>,
    /// Message history (offsets, recovery), unless `--history-size 0`.
    pub history: Option<StreamHistory>,
    /// Who may connect, subscribe and publish; presence.
    pub access: AccessControl,
}

/// Whether a request carries the token (`?token=` or `Authorization: Bearer`).
pub enum TokenCheck {
    Ok,
    Missing,
    Wrong,
}

/// Checks `request` for `expected` (no token configured: anyone may).
pub fn check_token(request: &Request, expected: Option<&str>) -> TokenCheck {
    let Some(expected) = expected else { return TokenCheck::Ok };
    let offered = request
        .query_param("token")
        .or_else(|| request.header("authorization").and_then(|h| h.strip_prefix("Bearer ")).map(str::trim));
    match offered {
        None => TokenCheck::Missing,
        Some(token) if same_secret(token.as_bytes(), expected.as_bytes()) => TokenCheck::Ok,
        Some(_) => TokenCheck::Wrong,
    }
}

/// Compares without stopping at the first difference, so the time taken does not tell
/// how much of a guess was right.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |diff, (x, y)| diff | (x ^ y)) == 0
}

impl Service {
    fn check_token(&self, request: &Request) -> TokenCheck {
        check_token(request, self.token.as_deref())
    }

    fn is_status_feed(&self, path: &str) -> bool {
        self.dashboard.is_some() && path == dashboard::FEED_PATH
    }

    pub(crate) fn topic_subscribed(&self, topic: &str) {
        self.topics.subscribed(topic, || {
            if let Some(cluster) = &self.cluster {
                cluster.topic_interest_started(topic);
            }
        });
    }

    pub(crate) fn topic_unsubscribed(&self, topic: &str) {
        self.topics.unsubscribed(topic, || {
            if let Some(cluster) = &self.cluster {
                cluster.topic_interest_ended(topic);
            }
        });
    }

    /// Broadcast mode: a publisher's message goes to every subscriber, encoded once.
    fn fan_out(&self, conn: &mut Connection<'_, Peer>, message: PreparedMessage, binary: bool, payload: &[u8]) {
        self.counters.published.fetch_add(1, Ordering::Relaxed);
        if self.history.is_some() {
            return self.publish_stream(conn.broadcaster(), &Scope::Broadcast, binary, payload);
        }
        conn.send_where(|c| c.data().role == Role::Subscriber, &message);
        self.to_cluster(&Scope::Broadcast, binary, payload);
    }

    /// Relay mode: to every other client, here and on the other nodes.
    fn relay(&self, conn: &mut Connection<'_, Peer>, message: PreparedMessage, binary: bool, payload: &[u8]) {
        self.counters.published.fetch_add(1, Ordering::Relaxed);
        let sender = conn.id();
        conn.send_where(move |c| c.id() != sender && c.data().role == Role::Client, &message);
        self.to_cluster(&Scope::Relay, binary, payload);
    }

    /// A stream's message (history on): through Redis with a cluster, else here.
    pub(crate) fn publish_stream(
        &self,
        broadcaster: &ringcast::Broadcaster<Peer>,
        scope: &Scope,
        binary: bool,
        payload: &[u8],
    ) {
        let Some(history) = &self.history else { return };
        match &self.cluster {
            Some(cluster) => cluster.publish_stream(scope, binary, payload),
            None => history::publish_local(broadcaster, history, scope, binary, payload),
        }
    }

    fn to_cluster(&self, scope: &Scope, binary: bool, payload: &[u8]) {
        if let Some(cluster) = &self.cluster {
            cluster.publish(scope, binary, payload);
        }
    }

    /// Delivers a message that another node published, encoded once for this node.
    pub fn deliver_from_cluster(&self, broadcaster: &ringcast::Broadcaster<Peer>, inbound: crate::cluster::Inbound) {
        if let (Some(at), Some(history)) = (inbound.position, &self.history) {
            let cluster = self.cluster.as_ref();
            return history::deliver(broadcaster, history, cluster, &inbound.scope, at, inbound.binary, &inbound.body);
        }
        let split = broadcaster.split();
        let message = if inbound.binary {
            PreparedMessage::binary(&inbound.body, split)
        } else {
            PreparedMessage::text(&as_text(&inbound.body), split)
        };
        let role = match inbound.scope {
            Scope::Topic(topic) => return broadcaster.send(Target::topic(&topic), &message),
            Scope::Broadcast => Role::Subscriber,
            Scope::Relay => Role::Client,
        };
        broadcaster.send_where(move |c| c.data().role == role, &message);
    }

    fn pubsub(&self, conn: &mut Connection<'_, Peer>, text: &str) {
        let mut bytes = text.as_bytes().to_vec();
        let reply = match simd_json::to_borrowed_value(&mut bytes) {
            Err(e) => Err(format!("malformed JSON: {e}")),
            Ok(request) => {
                let op = request.get("op").and_then(|v| v.as_str());
                let topic = request.get("topic").and_then(|v| v.as_str());
                let token = request.get("token").and_then(|v| v.as_str());
                match (op, topic) {
                    (Some(op @ ("auth" | "refresh")), _) => return self.token_op(conn, op, token),
                    (_, Some(topic)) if topic.is_empty() || topic.len() > 256 => {
                        Err("topic must be 1 to 256 bytes".to_owned())
                    }
                    (Some("subscribe"), Some(topic)) => match history::since_from_json(&request) {
                        Ok(since) => return self.subscribe_op(conn, topic, token, since),
                        Err(error) => Err(error),
                    },
                    (Some("unsubscribe"), Some(topic)) => return self.unsubscribe_op(conn, topic, true),
                    (Some("publish"), Some(topic)) => {
                        let data = request.get("data").map_or_else(|| "null".to_owned(), |d| d.encode());
                        if self.history.is_some() {
                            if let Err(denied) = conn.check(Access::Publish(topic)) {
                                let _ = conn.send(&publish_refused(topic, &denied));
                                return;
                            }
                            self.counters.published.fetch_add(1, Ordering::Relaxed);
                            let scope = Scope::Topic(topic.to_owned());
                            return self.publish_stream(conn.broadcaster(), &scope, false, data.as_bytes());
                        }
                        let message = topic_message(topic, &data);
                        if let Err(denied) = conn.publish(topic, &message) {
                            let _ = conn.send(&publish_refused(topic, &denied));
                            return;
                        }
                        self.counters.published.fetch_add(1, Ordering::Relaxed);
                        self.to_cluster(&Scope::Topic(topic.to_owned()), false, message.as_bytes());
                        return;
                    }
                    (Some(op @ ("presence" | "presence_stats")), Some(topic)) => {
                        return self.presence_op(conn, op, topic);
                    }
                    (Some(op), _) if !OPS.contains(&op) => Err(format!(
                        "unknown op {op:?}; expected subscribe, unsubscribe, publish, presence, presence_stats, auth or refresh"
                    )),
                    _ => Err("expected {\"op\": ..., \"topic\": ...}".to_owned()),
                }
            }
        };
        let reply = reply.unwrap_or_else(|error| {
            self.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
            format!("{{\"event\":\"error\",\"error\":{}}}", json_string(&error))
        });
        let _ = conn.send(&reply);
    }

    fn http_publish(&self, http: &HttpRequest<'_, Peer>) -> HttpResponse {
        let head = http.head();
        if !self.http_publisher_allowed() {
            return HttpResponse::text(403, "auth is on: publishing over HTTP needs --publish-token\n");
        }
        match self.check_token(head) {
            TokenCheck::Ok => {}
            TokenCheck::Missing => return HttpResponse::text(401, "publish token required\n"),
            TokenCheck::Wrong => return HttpResponse::text(403, "wrong publish token\n"),
        }
        let body = http.body();
        let binary = matches!(head.query_param("binary"), Some("1" | "true"));
        let text = std::str::from_utf8(body);
        if !binary && text.is_err() {
            return HttpResponse::text(400, "body is not UTF-8; add ?binary=1 to publish binary\n");
        }
        let broadcaster = http.broadcaster();
        let split = broadcaster.split();
        let encode = || match text {
            Ok(text) if !binary => PreparedMessage::text(text, split),
            _ => PreparedMessage::binary(body, split),
        };
        match self.mode {
            Mode::Broadcast if self.history.is_some() => {
                self.publish_stream(broadcaster, &Scope::Broadcast, binary, body);
            }
            Mode::Broadcast => {
                broadcaster.send_where(|c| c.data().role == Role::Subscriber, &encode());
                self.to_cluster(&Scope::Broadcast, binary, body);
            }
            Mode::Pubsub => {
                let Some(topic) = head.query_param("topic").filter(|t| !t.is_empty()) else {
                    return HttpResponse::text(400, "?topic= is required in pubsub mode\n");
                };
                let mut json = body.to_vec();
                let data = match simd_json::to_borrowed_value(&mut json) {
                    Ok(value) => value.encode(),
                    Err(_) => json_string(&String::from_utf8_lossy(body)),
                };
                if self.history.is_some() && !binary {
                    self.publish_stream(broadcaster, &Scope::Topic(topic.to_owned()), false, data.as_bytes());
                    self.counters.published.fetch_add(1, Ordering::Relaxed);
                    return HttpResponse::json(202, format!("{{\"accepted\":true,\"bytes\":{}}}", body.len()));
                }
                if binary {
                    broadcaster.send(Target::topic(topic), &encode());
                    self.to_cluster(&Scope::Topic(topic.to_owned()), true, body);
                } else {
                    let message = topic_message(topic, &data);
                    broadcaster.send(Target::topic(topic), &message);
                    self.to_cluster(&Scope::Topic(topic.to_owned()), false, message.as_bytes());
                }
            }
            Mode::Relay | Mode::Echo => {
                broadcaster.send_where(|c| c.data().role == Role::Client, &encode());
                if self.mode == Mode::Relay {
                    self.to_cluster(&Scope::Relay, binary, body);
                }
            }
        }
        self.counters.published.fetch_add(1, Ordering::Relaxed);
        HttpResponse::json(202, format!("{{\"accepted\":true,\"bytes\":{}}}", body.len()))
    }
}

/// Text received over the WebSocket protocol or from another node's text message is
/// UTF-8 already; anything else is replaced rather than trusted.
fn as_text(payload: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(payload)
}

/// Every pub/sub op.
const OPS: [&str; 7] = ["subscribe", "unsubscribe", "publish", "presence", "presence_stats", "auth", "refresh"];

fn publish_refused(topic: &str, denied: &Denied) -> String {
    let explained =
        crate::auth::rules::Refusal::from_reason(denied.reason()).map_or(denied.reason(), |r| r.explain(false));
    format!(
        "{{\"event\":\"error\",\"op\":\"publish\",\"topic\":{},\"reason\":{},\"error\":{}}}",
        json_string(topic),
        json_string(denied.reason()),
        json_string(explained)
    )
}

/// What subscribers of `topic` receive: `{"topic": ..., "data": ...}`, built once per publish.
fn topic_message(topic: &str, data_json: &str) -> String {
    format!("{{\"topic\":{},\"data\":{data_json}}}", json_string(topic))
}

fn json_string(text: &str) -> String {
    simd_json::BorrowedValue::from(text).encode()
}

impl Handler for Service {
    type Data = Peer;

    fn allow(&self, request: &Request, _peer: SocketAddr) -> Allow {
        let path = request.path();
        if path == dashboard::FEED_PATH
            && let Some(dashboard) = &self.dashboard
        {
            return dashboard.allow_feed(request);
        }
        if matches!(self.mode, Mode::Broadcast | Mode::Pubsub) && path == self.publish_path {
            return match self.check_token(request) {
                TokenCheck::Ok => Allow::Yes,
                TokenCheck::Missing => Allow::Status(401),
                TokenCheck::Wrong => Allow::Status(403),
            };
        }
        if path != self.path {
            return Allow::Status(404);
        }
        if self.mode == Mode::Broadcast && history::since_from_query(request).is_err() {
            return Allow::Status(400);
        }
        Allow::Yes
    }

    fn authenticate(&self, request: &Request, peer: SocketAddr, id: ConnectionId, data: &mut Peer) -> Allow {
        match self.allow(request, peer) {
            Allow::Yes => self.admit(request, id, data),
            refused => refused,
        }
    }

    fn check(&self, conn: &ConnectionRef<'_, Peer>, access: Access<'_>) -> Result<(), Denied> {
        self.check_access(conn, access)
    }

    fn on_handshake_response_sent(&self, conn: &mut Connection<'_, Peer>) {
        let path = conn.request().map(|r| r.path().to_owned()).unwrap_or_default();
        conn.data_mut().role = if self.is_status_feed(&path) {
            Role::StatusFeed
        } else if conn.data().role == Role::Pending {
            Role::Pending
        } else if matches!(self.mode, Mode::Broadcast | Mode::Pubsub) && path == self.publish_path {
            Role::Publisher
        } else if self.mode == Mode::Broadcast {
            Role::Subscriber
        } else {
            Role::Client
        };
        if conn.data().role == Role::StatusFeed
            && let Some(dashboard) = &self.dashboard
        {
            let _ = conn.send(&dashboard.history_message());
        }
        if conn.data().role == Role::Subscriber
            && let Some(history) = &self.history
        {
            match conn.request().and_then(|r| history::since_from_query(r).ok()).flatten() {
                Some(since) => {
                    conn.data_mut().role = Role::StreamSubscriber;
                    let raw = history.raw_subscribers.clone();
                    history::subscribe(conn, &Scope::Broadcast, since, self.cluster.as_ref(), &self.topics, &raw);
                }
                None => {
                    history.raw_subscribers.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn on_text(&self, conn: &mut Connection<'_, Peer>, text: &str) {
        match (self.mode, conn.data().role) {
            (_, Role::StatusFeed) => {}
            (_, Role::Pending) => self.pending_message(conn, Some(text)),
            (Mode::Pubsub, Role::Publisher) => self.topic_publisher_message(conn, Some(text), &[]),
            (Mode::Broadcast, Role::Publisher) => {
                self.fan_out(conn, PreparedMessage::text(text, conn.broadcaster().split()), false, text.as_bytes());
            }
            (Mode::Broadcast, _) => {}
            (Mode::Relay, _) => {
                self.relay(conn, PreparedMessage::text(text, conn.broadcaster().split()), false, text.as_bytes());
            }
            (Mode::Pubsub, _) => self.pubsub(conn, text),
            (Mode::Echo, _) => {
                let _ = conn.send(text);
            }
        }
    }

    fn on_binary(&self, conn: &mut Connection<'_, Peer>, data: &[u8]) {
        match (self.mode, conn.data().role) {
            (_, Role::StatusFeed) => {}
            (_, Role::Pending) => self.pending_message(conn, None),
            (Mode::Pubsub, Role::Publisher) => self.topic_publisher_message(conn, None, data),
            (Mode::Broadcast, Role::Publisher) => {
                self.fan_out(conn, PreparedMessage::binary(data, conn.broadcaster().split()), true, data);
            }
            (Mode::Broadcast, _) => {}
            (Mode::Relay, _) => self.relay(conn, PreparedMessage::binary(data, conn.broadcaster().split()), true, data),
            (Mode::Pubsub, _) => {
                self.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
                let _ = conn.send(r#"{"event":"error","error":"pubsub mode takes JSON text messages"}"#);
            }
            (Mode::Echo, _) => {
                let _ = conn.send(data);
            }
        }
    }

    fn on_disconnect(&self, conn: &mut Connection<'_, Peer>, _reason: &ringcast::DisconnectReason) {
        if conn.data().role == Role::Subscriber
            && let Some(history) = &self.history
        {
            history.raw_subscribers.fetch_sub(1, Ordering::Relaxed);
        }
        self.connection_ended(conn);
        for topic in conn.topics() {
            self.topic_unsubscribed(topic);
        }
    }

    fn on_http(&self, http: &HttpRequest<'_, Peer>) -> Option<HttpResponse> {
        let head = http.head();
        if let Some(dashboard) = &self.dashboard
            && (head.method(), head.path()) == ("GET", "/")
        {
            return Some(dashboard.page(head));
        }
        Some(match (head.method(), head.path()) {
            ("POST", path) if path == self.publish_path => self.http_publish(http),
            ("GET", "/metrics") => HttpResponse::new(200).header("Content-Type", "text/plain; version=0.0.4").body(
                (metrics::render(
                    &http.broadcaster().stats(),
                    &self.counters,
                    self.cluster.as_ref().map(|c| &*c.metrics),
                ) + &history::render_metrics(
                    self.history.as_ref(),
                    http.broadcaster(),
                    self.cluster.as_ref().map(|c| &*c.metrics),
                ) + &self.access.render_metrics())
                    .into_bytes(),
            ),
            ("GET", "/presence") => self.http_presence(http, Query::Members),
            ("GET", "/presence_stats") => self.http_presence(http, Query::Stats),
            ("GET", "/healthz") => HttpResponse::text(200, "ok\n"),
            ("GET", path) if path == self.path => return None,
            _ => HttpResponse::text(404, "not found\n"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_messages_are_valid_json() {
        let message = topic_message("a\"b", "{\"x\":1}");
        let mut bytes = message.clone().into_bytes();
        let value = simd_json::to_borrowed_value(&mut bytes).unwrap();
        assert_eq!(value.get("topic").and_then(|v| v.as_str()), Some("a\"b"));
        assert_eq!(value.get("data").and_then(|v| v.get("x")).and_then(|v| v.as_i64()), Some(1));
    }
}
