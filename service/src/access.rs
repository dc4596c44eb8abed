//! The service's access layer: who a connection is ([`crate::auth`]), what it may
//! subscribe to and publish on, who is subscribed where ([`crate::presence`]), and the
//! pub/sub messages for them.
//!
//! Pub/sub messages added here (client → server, then the answer):
//!
//! | message | answer |
//! | --- | --- |
//! | `{"op":"auth","token":T}` (first message, without a token at the upgrade) | `{"event":"authenticated","user":U,"client":C,"expires_at":S}`, or close 4002 (4003 if expired) |
//! | `{"op":"refresh","token":T}` (same user, later `exp`) | `{"event":"refreshed","user":U,"expires_at":S}`; subscriptions the new claims no longer allow end with `{"event":"unsubscribed","topic":..,"reason":..}` |
//! | `{"op":"subscribe","topic":X,"token":T}` (`token`: a subscription token, for `subscribe = "token"` channels) | `{"event":"subscribed","topic":X}` or `{"event":"error","op":"subscribe","topic":X,"reason":R,"error":..}` |
//! | `{"op":"publish","topic":X,"data":..}` | as before, or `{"event":"error","op":"publish","topic":X,"reason":R,"error":..}` |
//! | `{"op":"presence","topic":X}` | `{"event":"presence","topic":X,"clients":{C:{"user":U,"info":I},..}}` |
//! | `{"op":"presence_stats","topic":X}` | `{"event":"presence_stats","topic":X,"clients":N,"users":M}` |
//!
//! Subscribers of a `join_leave` channel also receive `{"event":"join","topic":X,
//! "client":C,"user":U,"info":I}` (the joiner too, right after its `subscribed`) and
//! `{"event":"leave",...}` (not the leaver). Reasons:
//! `authentication_required`, `subscription_token_required`,
//! `invalid_subscription_token`, `forbidden`, and for presence `presence_disabled`.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::Ordering;

use ringcast::{
    Access, Allow, CloseCode, Connection, ConnectionId, ConnectionRef, Denied, HttpRequest, HttpResponse,
    PreparedMessage, Request, ServerHandle, Target,
};
use simd_json::prelude::*;

use crate::auth::rules::{Options, Refusal};
use crate::auth::token::{Identity, TokenError};
use crate::auth::{Admission, Auth, CLOSE_AUTH_REQUIRED, CLOSE_INVALID_TOKEN, CLOSE_TOKEN_EXPIRED, Due};
use crate::cluster::Scope;
use crate::presence::{Member, Presence, PresenceBackbone, Query, Reply, UNAVAILABLE};
use crate::service::{Peer, Role, Service, TokenCheck, check_token};
use crate::settings::Mode;

/// The access state of the service.
pub struct AccessControl {
    /// Tokens, rules and sessions.
    pub auth: Auth,
    /// Who is subscribed where.
    pub presence: Presence,
    /// Pub/sub topic publishers (the publish path with `?topic=`): their topic.
    publishers: Mutex<foldhash::HashMap<ConnectionId, Box<str>>>,
    /// Guards the HTTP presence queries.
    admin_token: Option<String>,
}

/// Started with the server: the deadline thread, and the presence backbone.
pub struct Pending {
    presence: Option<PresenceBackbone>,
}

impl AccessControl {
    /// The access layer; `presence` comes with its backbone in cluster mode.
    pub fn new(
        auth: Auth,
        presence: (Presence, Option<PresenceBackbone>),
        admin_token: Option<String>,
    ) -> (Self, Pending) {
        let (presence, backbone) = presence;
        let access = AccessControl { auth, presence, publishers: Mutex::default(), admin_token };
        (access, Pending { presence: backbone })
    }

    /// The Prometheus text of auth and presence.
    pub fn render_metrics(&self) -> String {
        let mut out = String::with_capacity(2048);
        let metrics = &self.auth.metrics;
        let labelled =
            |out: &mut String, name: &str, help: &str, labels: &[&str], values: &[std::sync::atomic::AtomicU64]| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
                for (label, value) in labels.iter().zip(values) {
                    let _ = writeln!(out, "{name}{{reason=\"{label}\"}} {}", value.load(Ordering::Relaxed));
                }
            };
        labelled(
            &mut out,
            "ringcast_auth_failures_total",
            "Tokens refused, by reason (timeout: none sent in time).",
            &crate::auth::token::TokenError::REASONS,
            &metrics.failures,
        );
        let refusals: Vec<&str> = Refusal::ALL.iter().map(|r| r.reason()).collect();
        labelled(
            &mut out,
            "ringcast_subscriptions_refused_total",
            "Subscriptions refused, by reason.",
            &refusals,
            &metrics.refused_subscriptions,
        );
        labelled(
            &mut out,
            "ringcast_publishes_refused_total",
            "Client publishes refused, by reason.",
            &refusals,
            &metrics.refused_publishes,
        );
        let (sessions, deadlines) = self.auth.sizes();
        let (topics, clients) = self.presence.sizes();
        let pm = &self.presence.metrics;
        for (name, kind, help, value) in [
            (
                "ringcast_auth_enabled",
                "gauge",
                "1 when connections must present a token.",
                u64::from(self.auth.is_on()),
            ),
            (
                "ringcast_auth_authenticated_total",
                "counter",
                "Tokens accepted.",
                metrics.authenticated.load(Ordering::Relaxed),
            ),
            (
                "ringcast_auth_expired_total",
                "counter",
                "Connections closed because their token expired.",
                metrics.expired.load(Ordering::Relaxed),
            ),
            (
                "ringcast_auth_refreshed_total",
                "counter",
                "Tokens refreshed over a connection.",
                metrics.refreshed.load(Ordering::Relaxed),
            ),
            ("ringcast_auth_sessions", "gauge", "Connections with an identity or a pending token.", sessions as u64),
            (
                "ringcast_auth_deadlines",
                "gauge",
                "Pending token deadlines (first message or expiry).",
                deadlines as u64,
            ),
            ("ringcast_presence_topics", "gauge", "Topics with presence entries on this node.", topics as u64),
            ("ringcast_presence_clients", "gauge", "Presence entries on this node (client × topic).", clients as u64),
            ("ringcast_presence_joins_total", "counter", "Presence joins recorded.", pm.joins.load(Ordering::Relaxed)),
            (
                "ringcast_presence_leaves_total",
                "counter",
                "Presence leaves recorded.",
                pm.leaves.load(Ordering::Relaxed),
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        }
        if self.presence.is_clustered() {
            let up = u64::from(pm.backbone_up.load(Ordering::Relaxed));
            let _ = writeln!(
                out,
                "# HELP ringcast_presence_backbone_up 1 while presence reaches Redis.\n# TYPE ringcast_presence_backbone_up gauge\nringcast_presence_backbone_up {up}"
            );
        }
        out
    }
}

impl Pending {
    /// Starts the thread that closes connections at their deadlines (and re-reads the
    /// JWKS file), and the presence backbone.
    pub fn start(self, server: &ServerHandle<Service>) -> std::io::Result<()> {
        let service = server.handler().clone();
        if service.access.auth.is_on() {
            let broadcaster = server.broadcaster();
            let visitor = service.clone();
            std::thread::Builder::new().name("ringcast-auth".into()).spawn(move || {
                let auth = &visitor.access.auth;
                auth.run_deadlines(|id| {
                    let service = visitor.clone();
                    broadcaster.visit(Target::Connection(id), move |conn| service.enforce_deadline(conn));
                })
            })?;
        }
        if let Some(backbone) = self.presence {
            backbone.start(server.broadcaster(), presence_event)?;
        }
        Ok(())
    }
}

/// A presence answer as the WebSocket protocol sends it.
fn presence_event(query: Query, json: &str) -> String {
    if json == UNAVAILABLE {
        return error_json(query_op(query), None, "unavailable", "presence is unavailable: Redis is unreachable");
    }
    format!("{{\"event\":\"{}\",{}", query_op(query), json.strip_prefix('{').unwrap_or(json))
}

fn query_op(query: Query) -> &'static str {
    match query {
        Query::Members => "presence",
        Query::Stats => "presence_stats",
    }
}

fn json_string(text: &str) -> String {
    simd_json::BorrowedValue::from(text).encode()
}

/// `{"event":"error","op":..,"topic":..,"reason":..,"error":..}`.
fn error_json(op: &str, topic: Option<&str>, reason: &str, error: &str) -> String {
    let mut out = format!("{{\"event\":\"error\",\"op\":{}", json_string(op));
    if let Some(topic) = topic {
        let _ = write!(out, ",\"topic\":{}", json_string(topic));
    }
    let _ = write!(out, ",\"reason\":{},\"error\":{}}}", json_string(reason), json_string(error));
    out
}

pub(crate) fn refusal_json(op: &str, topic: &str, denied: &Denied) -> String {
    let explained = Refusal::from_reason(denied.reason()).map_or(denied.reason(), |r| r.explain(op == "subscribe"));
    error_json(op, Some(topic), denied.reason(), explained)
}

fn expires_json(identity: &Identity) -> String {
    identity.expires.map_or_else(|| "null".to_owned(), |e| e.to_string())
}

impl Service {
    /// [`ringcast::Handler::authenticate`] for client connections (`allow` said yes).
    pub fn admit(&self, request: &Request, id: ConnectionId, data: &mut Peer) -> Allow {
        let path = request.path();
        if path == self.publish_path && matches!(self.mode, Mode::Broadcast | Mode::Pubsub) {
            return self.admit_publisher(request, id);
        }
        if path != self.path {
            return Allow::Yes; // the dashboard feed: its own admin token
        }
        match self.access.auth.admit(request, id, self.mode == Mode::Pubsub) {
            Admission::Open => Allow::Yes,
            Admission::Pending => {
                data.role = Role::Pending;
                Allow::Yes
            }
            Admission::Refused(status) => Allow::Status(status),
        }
    }

    /// Publishers present the publish token, which with auth on must be configured.
    fn admit_publisher(&self, request: &Request, id: ConnectionId) -> Allow {
        if self.access.auth.is_on() && self.token.is_none() {
            return Allow::Status(403);
        }
        if self.mode == Mode::Pubsub {
            let Some(topic) = request.query_param("topic").filter(|t| !t.is_empty() && t.len() <= 256) else {
                return Allow::Status(400);
            };
            self.access.publishers.lock().unwrap_or_else(|e| e.into_inner()).insert(id, topic.into());
        }
        Allow::Yes
    }

    /// Whether an HTTP publisher may publish: with auth on, only with the publish token.
    pub fn http_publisher_allowed(&self) -> bool {
        !self.access.auth.is_on() || self.token.is_some()
    }

    /// [`ringcast::Handler::check`].
    pub fn check_access(&self, conn: &ConnectionRef<'_, Peer>, access: Access<'_>) -> Result<(), Denied> {
        if conn.data().role == Role::Publisher {
            // Topic publishers hold the publish token and publish only on their topic.
            let publishers = self.access.publishers.lock().unwrap_or_else(|e| e.into_inner());
            return match publishers.get(&conn.id()) {
                Some(topic) if !access.is_subscribe() && **topic == *access.topic() => Ok(()),
                _ => Err(Denied::new(Refusal::Forbidden.reason())),
            };
        }
        self.access.auth.check(conn.id(), access).map_err(|refusal| Denied::new(refusal.reason()))
    }

    /// A pub/sub topic publisher's message: to its topic's subscribers (binary as it
    /// is, text as `{"topic":..,"data":..}` like `POST /publish`).
    pub fn topic_publisher_message(&self, conn: &mut Connection<'_, Peer>, text: Option<&str>, binary: &[u8]) {
        let topic = self.access.publishers.lock().unwrap_or_else(|e| e.into_inner()).get(&conn.id()).cloned();
        let Some(topic) = topic else { return };
        self.counters.published.fetch_add(1, Ordering::Relaxed);
        let split = conn.broadcaster().split();
        match text {
            Some(text) => {
                let mut json = text.as_bytes().to_vec();
                let data = match simd_json::to_borrowed_value(&mut json) {
                    Ok(value) => value.encode(),
                    Err(_) => json_string(text),
                };
                if self.history.is_some() {
                    // Into the topic's stream: offsets, history, and the cluster's order.
                    if conn.check(Access::Publish(&topic)).is_ok() {
                        self.publish_stream(
                            conn.broadcaster(),
                            &Scope::Topic(topic.to_string()),
                            false,
                            data.as_bytes(),
                        );
                    }
                    return;
                }
                let message = format!("{{\"topic\":{},\"data\":{data}}}", json_string(&topic));
                let _ = conn.publish(&topic, &message);
                self.to_cluster_topic(&topic, false, message.as_bytes());
            }
            None => {
                let _ = conn.publish(&topic, &PreparedMessage::binary(binary, split));
                self.to_cluster_topic(&topic, true, binary);
            }
        }
    }

    fn to_cluster_topic(&self, topic: &str, binary: bool, payload: &[u8]) {
        if let Some(cluster) = &self.cluster {
            cluster.publish(&Scope::Topic(topic.to_owned()), binary, payload);
        }
    }

    /// A connection that has to send its token first sent `text`.
    pub fn pending_message(&self, conn: &mut Connection<'_, Peer>, text: Option<&str>) {
        let request = text.and_then(|t| {
            let mut bytes = t.as_bytes().to_vec();
            let value = simd_json::to_owned_value(&mut bytes).ok()?;
            let op = value.get("op").and_then(|v| v.as_str()).map(str::to_owned)?;
            let token = value.get("token").and_then(|v| v.as_str()).map(str::to_owned)?;
            (op == "auth").then_some(token)
        });
        let Some(token) = request else {
            self.access.auth.metrics_fail_missing();
            let _ = conn.close(
                CloseCode::from(CLOSE_AUTH_REQUIRED),
                "authentication required: send {\"op\":\"auth\",\"token\":...} first",
            );
            return;
        };
        match self.access.auth.authenticate(conn.id(), &token) {
            Ok(identity) => {
                conn.data_mut().role = Role::Client;
                let reply = format!(
                    "{{\"event\":\"authenticated\",\"user\":{},\"client\":{},\"expires_at\":{}}}",
                    json_string(&identity.user),
                    json_string(&self.access.presence.client_id(conn.id())),
                    expires_json(&identity)
                );
                let _ = conn.send(&reply);
            }
            Err(error) => {
                let code = if error == TokenError::Expired { CLOSE_TOKEN_EXPIRED } else { CLOSE_INVALID_TOKEN };
                let _ = conn.close(CloseCode::from(code), &error.to_string());
            }
        }
    }

    /// `{"op":"auth"}` or `{"op":"refresh"}` from an open connection.
    pub fn token_op(&self, conn: &mut Connection<'_, Peer>, op: &str, token: Option<&str>) {
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            let _ = conn.send(&error_json(op, None, "missing", "expected {\"op\": ..., \"token\": ...}"));
            return;
        };
        if !self.access.auth.is_on() {
            let _ = conn.send(&error_json(op, None, "auth_off", "auth is off on this server"));
            return;
        }
        let current = self.access.auth.identity(conn.id());
        let result = match (op, &current) {
            ("auth", Some(_)) => {
                let _ = conn.send(&error_json(op, None, "authenticated", "already authenticated; send refresh"));
                return;
            }
            ("auth", None) => self.access.auth.authenticate(conn.id(), token),
            (_, _) => self.access.auth.refresh(conn.id(), token),
        };
        match result {
            Ok(identity) => {
                let event = if op == "auth" { "authenticated" } else { "refreshed" };
                let reply = format!(
                    "{{\"event\":\"{event}\",\"user\":{},\"expires_at\":{}}}",
                    json_string(&identity.user),
                    expires_json(&identity)
                );
                let _ = conn.send(&reply);
                self.recheck_subscriptions(conn);
            }
            Err(error) => {
                let _ = conn.send(&error_json(op, None, error.reason(), &error.to_string()));
            }
        }
    }

    /// After new claims: ends the subscriptions they no longer allow.
    fn recheck_subscriptions(&self, conn: &mut Connection<'_, Peer>) {
        let topics: Vec<String> = conn.topics().map(str::to_owned).collect();
        for topic in topics {
            if let Err(denied) = conn.check(Access::Subscribe(&topic)) {
                self.unsubscribe_op(conn, &topic, false);
                let reply = format!(
                    "{{\"event\":\"unsubscribed\",\"topic\":{},\"reason\":{}}}",
                    json_string(&topic),
                    json_string(denied.reason())
                );
                let _ = conn.send(&reply);
            }
        }
    }

    /// `{"op":"subscribe"}`: the rules and claims decide; presence and join events follow.
    /// With history on, `since` says where the subscription starts (the reply then
    /// carries the stream's position, and what was missed is replayed).
    pub fn subscribe_op(
        &self,
        conn: &mut Connection<'_, Peer>,
        topic: &str,
        token: Option<&str>,
        since: ringcast::Since,
    ) {
        if conn.topics().any(|t| t == topic) && self.history.is_none() {
            let _ = conn.send(&subscribed(topic));
            return;
        }
        if let Some(token) = token
            && let Err(refusal) = self.access.auth.grant(conn.id(), topic, token)
        {
            let _ = conn.send(&refusal_json("subscribe", topic, &Denied::new(refusal.reason())));
            return;
        }
        if let Err(denied) = conn.check(Access::Subscribe(topic)) {
            self.access.auth.ungrant(conn.id(), topic);
            let _ = conn.send(&refusal_json("subscribe", topic, &denied));
            return;
        }
        let options = self.access.auth.rules.options(topic);
        let subscribed_now = if let Some(history) = &self.history {
            let was_subscribed = conn.topics().any(|t| t == topic);
            let scope = Scope::Topic(topic.to_owned());
            crate::history::subscribe(
                conn,
                &scope,
                since,
                self.cluster.as_ref(),
                &self.topics,
                &history.raw_subscribers,
            );
            Ok(!was_subscribed)
        } else {
            conn.try_subscribe(topic).inspect(|&now| {
                if now {
                    self.topic_subscribed(topic);
                }
                let _ = conn.send(&subscribed(topic));
            })
        };
        match subscribed_now {
            Ok(true) => {
                if options.presence || options.join_leave {
                    let member = self.member(conn.id(), topic);
                    if options.join_leave {
                        // Reaches this shard's subscribers once the handler returns, so
                        // after the joiner's own `subscribed`.
                        self.announce(conn, "join", topic, &member);
                    }
                    if options.presence {
                        self.access.presence.join(topic, conn.id(), member);
                    }
                }
            }
            Ok(false) => {}
            Err(denied) => {
                let _ = conn.send(&refusal_json("subscribe", topic, &denied));
            }
        }
    }

    /// `{"op":"unsubscribe"}` (and subscriptions ended by a refresh).
    pub fn unsubscribe_op(&self, conn: &mut Connection<'_, Peer>, topic: &str, reply: bool) {
        if conn.unsubscribe(topic) {
            self.topic_unsubscribed(topic);
            self.left(conn, topic);
        }
        if reply {
            let _ = conn.send(&format!("{{\"event\":\"unsubscribed\",\"topic\":{}}}", json_string(topic)));
        }
    }

    /// `topic` lost the subscriber `conn`: presence and the leave event.
    fn left(&self, conn: &mut Connection<'_, Peer>, topic: &str) {
        self.access.auth.ungrant(conn.id(), topic);
        self.announce_leave(conn, topic, self.access.auth.rules.options(topic));
    }

    /// Presence and the leave event of `conn` in `topic`.
    fn announce_leave(&self, conn: &mut Connection<'_, Peer>, topic: &str, options: Options) {
        let member = self.access.presence.leave(topic, conn.id());
        if options.join_leave {
            let member = member.unwrap_or_else(|| self.member(conn.id(), topic));
            self.announce(conn, "leave", topic, &member);
        }
    }

    fn member(&self, id: ConnectionId, topic: &str) -> Member {
        let (user, info) = self.access.auth.member(id, topic);
        Member { user, info }
    }

    /// `{"event":"join"|"leave",...}` to the topic's subscribers, here and on other nodes.
    fn announce(&self, conn: &mut Connection<'_, Peer>, event: &str, topic: &str, member: &Member) {
        let member = member.to_json();
        let text = format!(
            "{{\"event\":\"{event}\",\"topic\":{},\"client\":{},{}",
            json_string(topic),
            json_string(&self.access.presence.client_id(conn.id())),
            member.strip_prefix('{').unwrap_or(&member)
        );
        if self.history.is_some() {
            // Through the mailboxes, behind the subscription from history that this
            // handler posted there, so the joiner sees its own join.
            conn.broadcaster().send(Target::topic(topic), &text);
        } else {
            conn.send_to(Target::topic(topic), &text);
        }
        self.to_cluster_topic(topic, false, text.as_bytes());
    }

    /// `{"op":"presence"}` and `{"op":"presence_stats"}`.
    pub fn presence_op(&self, conn: &mut Connection<'_, Peer>, op: &str, topic: &str) {
        let query = if op == "presence" { Query::Members } else { Query::Stats };
        if !self.access.auth.rules.options(topic).presence {
            let _ = conn.send(&error_json(op, Some(topic), "presence_disabled", "presence is not kept for this topic"));
            return;
        }
        if !conn.topics().any(|t| t == topic)
            && let Err(denied) = conn.check(Access::Subscribe(topic))
        {
            let _ = conn.send(&refusal_json(op, topic, &denied));
            return;
        }
        if let Some(json) = self.access.presence.query(topic, query, Reply::Connection(conn.id())) {
            let _ = conn.send(&presence_event(query, &json));
        }
    }

    /// `on_disconnect`: presence, leave events, the session.
    pub fn connection_ended(&self, conn: &mut Connection<'_, Peer>) {
        if conn.data().role == Role::Publisher {
            self.access.publishers.lock().unwrap_or_else(|e| e.into_inner()).remove(&conn.id());
        }
        let tracked: Vec<(String, Options)> = conn
            .topics()
            .map(|topic| (topic, self.access.auth.rules.options(topic)))
            .filter(|(_, options)| options.presence || options.join_leave)
            .map(|(topic, options)| (topic.to_owned(), options))
            .collect();
        // No `ungrant` per topic: the whole session, grants included, goes below.
        for (topic, options) in tracked {
            self.announce_leave(conn, &topic, options);
        }
        self.access.auth.end(conn.id());
    }

    /// On the connection's worker, when its deadline passed: closes it unless it
    /// authenticated or refreshed meanwhile.
    pub fn enforce_deadline(&self, conn: &mut Connection<'_, Peer>) {
        let Some(due) = self.access.auth.due(conn.id()) else { return };
        self.access.auth.count_due(due);
        let (code, reason) = match due {
            Due::AuthTimeout => (CLOSE_AUTH_REQUIRED, "authentication timeout: no token in time"),
            Due::Expired => (CLOSE_TOKEN_EXPIRED, "token expired"),
        };
        let _ = conn.close(CloseCode::from(code), reason);
    }

    /// `GET /presence?topic=` and `GET /presence_stats?topic=`, behind the admin token.
    pub fn http_presence(&self, http: &HttpRequest<'_, Peer>, query: Query) -> HttpResponse {
        let head = http.head();
        let Some(admin) = self.access.admin_token.as_deref() else {
            return HttpResponse::text(403, "presence over HTTP needs an admin token (--admin-token)\n");
        };
        match check_token(head, Some(admin)) {
            TokenCheck::Ok => {}
            TokenCheck::Missing => return HttpResponse::text(401, "admin token required\n"),
            TokenCheck::Wrong => return HttpResponse::text(403, "wrong admin token\n"),
        }
        let Some(topic) = head.query_param("topic").filter(|t| !t.is_empty()) else {
            return HttpResponse::text(400, "?topic= is required\n");
        };
        if !self.access.auth.rules.options(topic).presence {
            return HttpResponse::text(404, "presence is not kept for this topic\n");
        }
        match self.access.presence.query_blocking(topic, query) {
            Ok(json) => HttpResponse::json(200, json),
            Err(error) => HttpResponse::text(503, format!("{error}\n")),
        }
    }
}

fn subscribed(topic: &str) -> String {
    format!("{{\"event\":\"subscribed\",\"topic\":{}}}", json_string(topic))
}
