//! Fan-out: broadcasts from the test thread to a crowd, the chat relay (everyone but the
//! sender) and selectors over per-connection user data, across two workers.

mod common;

use std::net::SocketAddr;

use common::*;
use ringcast::{Connection, ConnectionId, DisconnectReason, Handler, IoBackend, PreparedMessage, Target};
use testkit::{ConnectOpts, Drain, Payload, Peer};

/// Per peer kind: a crowd of this many clients (both kinds together: twice as many).
const CROWD: usize = 200;
const MESSAGES: usize = 50;

fn numbered(i: usize) -> Payload {
    if i % 2 == 0 { Payload::Text(format!("message {i:03} ✓")) } else { Payload::Binary(pattern(i * 10, i as u8)) }
}

/// Every member of a 200-client crowd of each peer receives each of 50 broadcasts
/// (text and binary) exactly once and in order; the server queued exactly one copy per
/// recipient and dropped nothing.
fn crowd_receives_every_broadcast_once_in_order(backend: IoBackend) {
    let server = Running::start(builder(backend), Recorder::silent());
    let mut peers = [Peer::python(), Peer::node()];
    for peer in &mut peers {
        let opened = peer.crowd("c", CROWD, &server.url("/feed"), &ConnectOpts::new());
        assert_eq!(opened.opened, CROWD);
    }
    let total = 2 * CROWD as u64;
    wait_until("every crowd member to be open on the server", WAIT, || server.stats().websockets == total);
    let stats = server.stats();
    assert!(stats.connections.iter().all(|&n| n > 0), "both workers should hold connections: {:?}", stats.connections);
    for i in 0..MESSAGES {
        match numbered(i) {
            Payload::Text(t) => server.broadcast(&t),
            Payload::Binary(b) => server.broadcast(&b),
            Payload::Digest { .. } => unreachable!(),
        }
    }
    let expected: Vec<Payload> = (0..MESSAGES).map(numbered).collect();
    for peer in &mut peers {
        let kind = peer.kind();
        let drained = peer.drain(&Drain::prefix("c").wait_count(MESSAGES).list().timeout(WAIT * 2));
        assert!(drained.satisfied, "{kind}: not every member got {MESSAGES} messages: {:?}", drained.per_conn);
        assert_eq!(drained.conns, CROWD, "{kind}");
        assert_eq!((drained.min, drained.max), (MESSAGES, MESSAGES), "{kind}: per-connection counts");
        assert!(drained.closed.is_empty(), "{kind}: closed members {:?}", drained.closed);
        for n in 0..CROWD {
            let id = format!("c{n}");
            let got: Vec<&Payload> = drained.messages.iter().filter(|m| m.id == id).map(|m| &m.payload).collect();
            assert!(
                got.len() == MESSAGES && got.iter().zip(&expected).all(|(g, e)| *g == e),
                "{kind}: {id} received {} messages, not the 50 broadcasts in order",
                got.len()
            );
        }
    }
    // Exactly once: after one more broadcast, each member holds exactly that one.
    server.broadcast("end");
    for peer in &mut peers {
        let drained = peer.drain(&Drain::prefix("c").wait_count(1).list());
        assert_eq!((drained.min, drained.max, drained.total), (1, 1, CROWD), "{}", peer.kind());
        assert!(drained.messages.iter().all(|m| m.payload == Payload::Text("end".into())));
    }
    let stats = server.stats();
    assert_eq!(stats.messages_out, total * (MESSAGES as u64 + 1), "one queued copy per recipient");
    assert_eq!(stats.dropped_messages, 0);
    server.stop();
}

/// The chat relay: `relay_text` / `relay_binary` from a handler, meant for every other
/// connection on every worker, never the sender.
#[derive(Clone, Default)]
struct Chat {
    log: Log,
}

impl Handler for Chat {
    type Data = ();

    fn on_handshake_response_sent(&self, conn: &mut Connection<'_, Self::Data>) {
        self.log.push(Ev::Open(conn.id(), String::new()));
    }

    fn on_text(&self, conn: &mut Connection<'_, Self::Data>, text: &str) {
        conn.send_to(Target::AllExcept(conn.id()), text);
    }

    fn on_binary(&self, conn: &mut Connection<'_, Self::Data>, data: &[u8]) {
        conn.send_to(Target::AllExcept(conn.id()), data);
    }
}

/// A Python client, a Node client and a Node crowd of 20 chat: every message reaches
/// every connection but its sender, in order, across both workers.
fn relay_reaches_all_but_the_sender(backend: IoBackend) {
    const OTHERS: usize = 20;
    let server = Running::start(builder(backend), Chat::default());
    let (mut python, mut node) = (Peer::python(), Peer::node());
    python.connect("a", &server.url("/chat"), &ConnectOpts::new());
    node.connect("b", &server.url("/chat"), &ConnectOpts::new());
    node.crowd("c", OTHERS, &server.url("/chat"), &ConnectOpts::new());
    wait_until("all open", WAIT, || server.stats().websockets == OTHERS as u64 + 2);
    let per_shard = server.stats().connections;
    assert!(per_shard.iter().all(|&n| n > 0), "both workers should hold connections: {per_shard:?}");

    python.send_text("a", "from a ✓");
    assert_eq!(node.expect_text("b"), "from a ✓");
    // `a` would have had its own message queued before anything `b` sends after this
    // point (same connection, FIFO), so `a` getting `b`'s text first proves it got none.
    node.send_text("b", "from b");
    assert_eq!(python.expect_text("a"), "from b");
    python.send_binary("a", &[1, 2, 3]);
    assert_eq!(node.expect_binary("b"), [1, 2, 3]);
    node.send_text("b", "again from b");
    assert_eq!(python.expect_text("a"), "again from b");

    let drained = node.drain(&Drain::prefix("c").wait_count(4).list());
    assert_eq!((drained.conns, drained.min, drained.max), (OTHERS, 4, 4), "{:?}", drained.per_conn);
    let expected = [
        Payload::Text("from a ✓".into()),
        Payload::Text("from b".into()),
        Payload::Binary(vec![1, 2, 3]),
        Payload::Text("again from b".into()),
    ];
    for n in 0..OTHERS {
        let got: Vec<Payload> =
            drained.messages.iter().filter(|m| m.id == format!("c{n}")).map(|m| m.payload.clone()).collect();
        assert_eq!(got, expected, "c{n}");
    }
    // One crowd member talks: the other 19 and a, b get it; it does not.
    node.send_text("c7", "from c7");
    assert_eq!(python.expect_text("a"), "from c7");
    assert_eq!(node.expect_text("b"), "from c7");
    node.send_text("b", "marker");
    assert_eq!(python.expect_text("a"), "marker");
    let drained = node.drain(&Drain::prefix("c").wait_count(1).list());
    for n in 0..OTHERS {
        let got: Vec<Payload> =
            drained.messages.iter().filter(|m| m.id == format!("c{n}")).map(|m| m.payload.clone()).collect();
        let want: Vec<Payload> = if n == 7 {
            vec![Payload::Text("marker".into())]
        } else {
            vec![Payload::Text("from c7".into()), Payload::Text("marker".into())]
        };
        // The marker may still be in flight for some members: wait for it per member.
        if got.len() < want.len() {
            let more = node.drain(&Drain::id(format!("c{n}")).wait_count(want.len() - got.len()).list());
            let all: Vec<Payload> = got.into_iter().chain(more.messages.into_iter().map(|m| m.payload)).collect();
            assert_eq!(all, want, "c{n}");
        } else {
            assert_eq!(got, want, "c{n}");
        }
    }
    server.stop();
}

/// Per-connection user data for rooms.
#[derive(Default)]
struct Member {
    room: String,
}

/// `join:ROOM` sets the connection's room; `tell:ROOM:TEXT` sends TEXT to that room
/// with a selector from inside the handler.
#[derive(Clone, Default)]
struct Rooms {
    log: Log,
}

impl Handler for Rooms {
    type Data = Member;

    fn on_connect(&self, id: ConnectionId, _peer: SocketAddr) {
        self.log.push(Ev::Connect(id));
    }

    fn on_text(&self, conn: &mut Connection<'_, Self::Data>, text: &str) {
        if let Some(room) = text.strip_prefix("join:") {
            conn.data_mut().room = room.to_owned();
            conn.send(&format!("joined:{room}")).unwrap();
        } else if let Some((room, text)) = text.strip_prefix("tell:").and_then(|t| t.split_once(':')) {
            let room = room.to_owned();
            let message = PreparedMessage::text(text, conn.broadcaster().split());
            conn.send_where(move |c| c.data().room == room, &message);
        }
    }

    fn on_disconnect(&self, conn: &mut Connection<'_, Self::Data>, reason: &DisconnectReason) {
        self.log.push(Ev::Disconnect(conn.id(), reason.clone()));
    }
}

/// Selectors over user data reach exactly the connections they pick, on every worker:
/// from the test thread (`send_where`) and from a handler (`send_where`).
fn selector_over_user_data(backend: IoBackend) {
    let server = Running::start(builder(backend), Rooms::default());
    let (mut python, mut node) = (Peer::python(), Peer::node());
    // Three members per room and peer kind, so both workers hold members of each room.
    let mut members = Vec::new();
    for n in 0..3 {
        for room in ["a", "b"] {
            for peer in [&mut python, &mut node] {
                let id = format!("{room}{n}");
                peer.connect(&id, &server.url("/rooms"), &ConnectOpts::new());
                peer.send_text(&id, &format!("join:{room}"));
                assert_eq!(peer.expect_text(&id), format!("joined:{room}"));
            }
            members.push((format!("{room}{n}"), room));
        }
    }
    server.send_where(|c| c.data().room == "a", "to room a");
    server.send_where(|c| c.data().room == "b", &[0xb]);
    server.broadcast("to all");
    python.send_text("a0", "tell:b:from a0 to b");
    for peer in [&mut python, &mut node] {
        let kind = peer.kind();
        for (id, room) in &members {
            if *room == "a" {
                assert_eq!(peer.expect_text(id), "to room a", "{kind} {id}");
                assert_eq!(peer.expect_text(id), "to all", "{kind} {id}");
            } else {
                assert_eq!(peer.expect_binary(id), [0xb], "{kind} {id}");
                assert_eq!(peer.expect_text(id), "to all", "{kind} {id}");
                assert_eq!(peer.expect_text(id), "from a0 to b", "{kind} {id}");
            }
        }
    }
    // Room a gets nothing more: a last message to room a is the next thing each sees.
    server.send_where(|c| c.data().room == "a", "last for a");
    for peer in [&mut python, &mut node] {
        for (id, room) in &members {
            if *room == "a" {
                assert_eq!(peer.expect_text(id), "last for a", "{} {id}", peer.kind());
            }
        }
    }
    assert_eq!(server.stats().dropped_messages, 0);
    server.stop();
}

/// From the test thread: `Target::Connection` reaches exactly the one connection,
/// prepared messages (encoded once) go out as they are, and a selector over the request
/// path (kept with `keep_request`) reaches only the matching connections.
fn unicast_and_prepared_messages(backend: IoBackend) {
    let rec = Recorder::silent();
    let server = Running::start(builder(backend).keep_request(true), rec.clone());
    let (mut python, mut node) = (Peer::python(), Peer::node());
    python.connect("p", &server.url("/one"), &ConnectOpts::new());
    node.connect("n", &server.url("/two"), &ConnectOpts::new());
    let opened = rec.log.wait("two opens", |evs| evs.iter().filter(|e| matches!(e, Ev::Open(..))).count() == 2);
    let id_of = |path: &str| {
        opened.iter().find_map(|e| if let Ev::Open(id, p) = e { (p == path).then_some(*id) } else { None }).unwrap()
    };
    let (p, n) = (id_of("/one"), id_of("/two"));

    let split = server.split();
    server.send(Target::Connection(n), &PreparedMessage::text("only for n", split));
    server.send(Target::Connection(p), &PreparedMessage::binary(&[1, 2, 3], split));
    let prepared = PreparedMessage::text("prepared for all", split);
    server.broadcast(&prepared);
    let selector: ringcast::Selector<()> = std::sync::Arc::new(|c| c.request().is_some_and(|r| r.path() == "/one"));
    server.send(Target::Select(selector), &PreparedMessage::text("path /one", split));
    server.broadcast("end");

    assert_eq!(python.expect_binary("p"), [1, 2, 3]);
    assert_eq!(python.expect_text("p"), "prepared for all");
    assert_eq!(python.expect_text("p"), "path /one");
    assert_eq!(python.expect_text("p"), "end");
    assert_eq!(node.expect_text("n"), "only for n");
    assert_eq!(node.expect_text("n"), "prepared for all");
    assert_eq!(node.expect_text("n"), "end");
    // A connection id that is gone (or never was) is ignored.
    python.close("p", 1000, "");
    assert_eq!(python.expect_close("p").0, 1000);
    rec.log.wait_disconnect(p);
    server.send(Target::Connection(p), &PreparedMessage::text("to nobody", split));
    server.broadcast("after");
    assert_eq!(node.expect_text("n"), "after");
    server.stop();
}

backends!(
    crowd_receives_every_broadcast_once_in_order,
    relay_reaches_all_but_the_sender,
    selector_over_user_data,
    unicast_and_prepared_messages
);
