//! Who a connection is and what it may do: `Handler::authenticate` keeps an identity in
//! the connection's data, `Handler::check` decides subscriptions and publishes from it,
//! and `Broadcaster::visit` acts on connections from another thread. Driven by Python
//! `websockets` on both I/O backends.

mod common;

use std::net::SocketAddr;

use common::*;
use ringcast::{
    Access, Allow, CloseCode, Connection, ConnectionId, ConnectionRef, Denied, Handler, HistoryConfig, IoBackend,
    PreparedMessage, Request, Since, Split, Target,
};
use testkit::{ConnectOpts, Peer};

#[derive(Default)]
struct Member {
    user: Option<Box<str>>,
}

/// Identity from `?user=`; `user:<name>` is readable and writable by that user only,
/// `open:*` by anyone; anything else is refused.
struct Owners;

impl Handler for Owners {
    type Data = Member;

    fn authenticate(&self, request: &Request, _: SocketAddr, _: ConnectionId, data: &mut Member) -> Allow {
        match request.query_param("user").filter(|u| !u.is_empty()) {
            Some(user) => {
                data.user = Some(user.into());
                Allow::Yes
            }
            None => Allow::Status(401),
        }
    }

    fn check(&self, conn: &ConnectionRef<'_, Member>, access: Access<'_>) -> Result<(), Denied> {
        let user = conn.data().user.as_deref().unwrap_or_default();
        let topic = access.topic();
        if topic.starts_with("open:") {
            return Ok(());
        }
        match topic.strip_prefix("user:") {
            Some(owner) if owner == user => Ok(()),
            Some(_) => Err(Denied::new(if access.is_subscribe() { "not your inbox" } else { "not your outbox" })),
            None => Err(Denied::new("unknown namespace")),
        }
    }

    /// `sub TOPIC`, `pub TOPIC TEXT`, and their stream forms `resume TOPIC` (the last 10
    /// messages) and `stream TOPIC TEXT`, answered with what happened.
    fn on_text(&self, conn: &mut Connection<'_, Member>, text: &str) {
        let reply = match text.split_once(' ') {
            Some(("sub", topic)) => match conn.try_subscribe(topic) {
                Ok(true) => format!("subscribed {topic}"),
                Ok(false) => format!("already {topic}"),
                Err(denied) => format!("refused {topic}: {denied}"),
            },
            Some(("pub", rest)) => {
                let (topic, body) = rest.split_once(' ').unwrap_or((rest, ""));
                match conn.publish(topic, body) {
                    Ok(()) => format!("published {topic}"),
                    Err(denied) => format!("refused {topic}: {denied}"),
                }
            }
            Some(("resume", topic)) => match conn.subscribe_from(topic, Since::Last(10)) {
                Ok(recovery) => format!("resumed {topic} {}", recovery.replayed),
                Err(denied) => format!("refused {topic}: {denied}"),
            },
            Some(("stream", rest)) => {
                let (topic, body) = rest.split_once(' ').unwrap_or((rest, ""));
                match conn.publish_stream(topic, |_| PreparedMessage::text(body, Split::Whole)) {
                    Ok(at) => format!("streamed {topic} {}", at.offset),
                    Err(denied) => format!("refused {topic}: {denied}"),
                }
            }
            _ => "?".to_owned(),
        };
        let _ = conn.send(&reply);
    }
}

fn identity_check_and_visit(backend: IoBackend) {
    let server = Running::start(builder(backend).history(HistoryConfig::new()), Owners);
    let mut peer = Peer::python();
    let refused = peer.try_connect("anon", &server.url("/"), &ConnectOpts::new()).unwrap_err();
    assert_eq!(refused.status, Some(401), "authenticate refused the upgrade");
    for user in ["alice", "bob"] {
        peer.connect(user, &server.url(&format!("/?user={user}")), &ConnectOpts::new());
    }
    let ask = |peer: &mut Peer, id: &str, text: &str| {
        peer.send_text(id, text);
        peer.expect_text(id)
    };
    assert_eq!(ask(&mut peer, "alice", "sub user:alice"), "subscribed user:alice");
    assert_eq!(ask(&mut peer, "alice", "sub user:alice"), "already user:alice");
    assert_eq!(ask(&mut peer, "alice", "sub user:bob"), "refused user:bob: not your inbox");
    assert_eq!(ask(&mut peer, "alice", "sub other"), "refused other: unknown namespace");
    assert_eq!(ask(&mut peer, "bob", "sub user:bob"), "subscribed user:bob");
    assert_eq!(ask(&mut peer, "bob", "sub open:news"), "subscribed open:news");
    // A refused publish sends nothing; an allowed one reaches the subscribers.
    assert_eq!(ask(&mut peer, "alice", "pub user:bob forged"), "refused user:bob: not your outbox");
    assert_eq!(ask(&mut peer, "alice", "pub open:news hello"), "published open:news");
    assert_eq!(peer.expect_text("bob"), "hello");
    assert_eq!(ask(&mut peer, "bob", "pub user:bob note to self"), "published user:bob");
    assert_eq!(peer.expect_text("bob"), "note to self");
    // The application's own sends are not checked; alice's refused subscription holds nothing.
    server.send(Target::topic("user:bob"), "from the server");
    assert_eq!(peer.expect_text("bob"), "from the server");
    // Streams (history) are checked the same way.
    assert_eq!(ask(&mut peer, "alice", "stream user:bob forged"), "refused user:bob: not your outbox");
    assert_eq!(ask(&mut peer, "bob", "stream user:bob kept"), "streamed user:bob 1");
    assert_eq!(peer.expect_text("bob"), "kept");
    assert_eq!(ask(&mut peer, "alice", "resume user:bob"), "refused user:bob: not your inbox");
    assert_eq!(ask(&mut peer, "alice", "resume open:feed"), "resumed open:feed 0");
    peer.expect_no_event(|e| matches!(e, testkit::Event::Text { id, .. } if id == "alice"), WAIT / 20);

    // visit: from this thread, on the worker that owns each connection, with its data.
    server.visit(Target::select(|c: &ConnectionRef<'_, Member>| c.data().user.as_deref() == Some("alice")), |conn| {
        let _ = conn.close(CloseCode::from(4003), "token expired");
    });
    assert_eq!(peer.expect_close("alice"), (4003, "token expired".to_owned()));
    server.visit(Target::topic("user:bob"), |conn| {
        let user = conn.data().user.clone().unwrap_or_default();
        let _ = conn.send(&format!("visited {user}"));
    });
    assert_eq!(peer.expect_text("bob"), "visited bob");
    server.stop();
}

backends!(identity_check_and_visit);
