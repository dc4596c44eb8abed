//! Control frames and connection ends: automatic and manual pongs, automatic and manual
//! close replies, idle pings and timeouts, the handshake timeout.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ringcast::{CloseCode, CloseFrame, Connection, DisconnectReason, Handler, IoBackend, OpCode, SendError};
use testkit::{ConnectOpts, Event, Peer, PeerKind};

fn pongs(peer: &mut Peer) -> Vec<Vec<u8>> {
    peer.take_events()
        .into_iter()
        .filter_map(|e| if let Event::Pong { data, .. } = e { Some(data) } else { None })
        .collect()
}

/// A ping from either peer is answered with a pong carrying the same payload, and the
/// handler sees the ping; an unsolicited pong reaches `on_pong`.
fn auto_pong(backend: IoBackend) {
    let rec = Recorder::echo();
    let server = Running::start(builder(backend), rec.clone());
    for (n, kind) in PeerKind::ALL.into_iter().enumerate() {
        let mut peer = Peer::spawn(kind);
        peer.connect("a", &server.url("/"), &ConnectOpts::new());
        let id = rec.log.wait_opened(n + 1)[n];
        peer.ping("a", b"are you there?");
        assert_eq!(peer.expect_pong("a"), b"are you there?", "{kind}");
        peer.ping("a", b"");
        assert_eq!(peer.expect_pong("a"), b"", "{kind}");
        peer.pong("a", b"unsolicited");
        rec.log.wait("the unsolicited pong", |evs| evs.contains(&Ev::Pong(id, b"unsolicited".to_vec())));
        let events = rec.log.events();
        let pings: Vec<&Ev> = events.iter().filter(|e| e.id() == id && matches!(e, Ev::Ping(..))).collect();
        assert_eq!(pings, [&Ev::Ping(id, b"are you there?".to_vec()), &Ev::Ping(id, vec![])], "{kind}");
        // Exactly one pong per ping: after an echo round trip nothing else came.
        peer.send_text("a", "sync");
        assert_eq!(peer.expect_text("a"), "sync");
        assert_eq!(pongs(&mut peer), Vec::<Vec<u8>>::new(), "{kind}: extra pongs");
        peer.close("a", 1000, "");
        assert_eq!(peer.expect_close("a").0, 1000);
    }
    server.stop();
}

/// Answers pings itself, with a payload of its own.
#[derive(Clone, Default)]
struct ManualPong {
    log: Log,
}

impl Handler for ManualPong {
    type Data = ();

    fn on_handshake_response_sent(&self, conn: &mut Connection<'_, Self::Data>) {
        self.log.push(Ev::Open(conn.id(), String::new()));
    }

    fn on_text(&self, conn: &mut Connection<'_, Self::Data>, text: &str) {
        conn.send(text).unwrap();
    }

    fn on_ping(&self, conn: &mut Connection<'_, Self::Data>, payload: &[u8]) {
        self.log.push(Ev::Ping(conn.id(), payload.to_vec()));
        if payload != b"ignore me" {
            let mut reply = b"manual:".to_vec();
            reply.extend_from_slice(payload);
            conn.pong(&reply).unwrap();
        }
    }
}

/// With manual_pong the server sends no pong of its own: the peer sees only the pong
/// the handler sent (a different payload), and nothing for a ping the handler ignores.
fn manual_pong(backend: IoBackend) {
    let handler = ManualPong::default();
    let server = Running::start(builder(backend).manual_pong(true), handler.clone());
    for (n, kind) in PeerKind::ALL.into_iter().enumerate() {
        let mut peer = Peer::spawn(kind);
        peer.connect("a", &server.url("/"), &ConnectOpts::new());
        let id = handler.log.wait_opened(n + 1)[n];
        peer.ping("a", b"abc");
        // An automatic pong would have been queued before on_ping ran, so it would come first.
        assert_eq!(peer.expect_pong("a"), b"manual:abc", "{kind}");
        peer.ping("a", b"ignore me");
        handler.log.wait("the ignored ping", |evs| evs.contains(&Ev::Ping(id, b"ignore me".to_vec())));
        peer.send_text("a", "sync");
        assert_eq!(peer.expect_text("a"), "sync");
        assert_eq!(pongs(&mut peer), Vec::<Vec<u8>>::new(), "{kind}: pongs the handler did not send");
        peer.close("a", 1000, "");
        assert_eq!(peer.expect_close("a").0, 1000);
    }
    server.stop();
}

/// A peer's close is answered automatically with its own code; the handler sees the code
/// and reason in `on_close`, then `on_disconnect(Closed(code))`.
fn auto_close_reply(backend: IoBackend) {
    let rec = Recorder::echo();
    let server = Running::start(builder(backend), rec.clone());
    let mut opened = 0;
    for kind in PeerKind::ALL {
        let mut peer = Peer::spawn(kind);
        // One at a time: the server's open events of two connections may come in any order.
        peer.connect("a", &server.url("/"), &ConnectOpts::new());
        let a = rec.log.wait_opened(opened + 1)[opened];
        peer.connect("b", &server.url("/"), &ConnectOpts::new());
        let b = rec.log.wait_opened(opened + 2)[opened + 1];
        opened += 2;
        peer.close("a", 4001, "bye ✓");
        assert_eq!(peer.expect_close("a").0, 4001, "{kind}: close code echoed");
        assert_eq!(rec.log.wait_disconnect(a), DisconnectReason::Closed(CloseCode::Library(4001)), "{kind}");
        assert!(rec.log.events().contains(&Ev::Close(a, Some((4001, "bye ✓".into())))), "{kind}");
        // A close frame without a status code is answered with an empty one too.
        peer.close_without_status("b");
        assert_eq!(peer.expect_close("b").0, 1005, "{kind}");
        assert_eq!(rec.log.wait_disconnect(b), DisconnectReason::Closed(CloseCode::Status), "{kind}");
        assert!(rec.log.events().contains(&Ev::Close(b, None)), "{kind}");
    }
    // Raw client: the reply is a well-formed close frame carrying the code.
    let mut raw = RawClient::open(server.addr(), "/");
    raw.send_close(3003, "raw");
    assert_eq!(raw.expect_close(), 3003);
    server.stop();
}

/// With manual_close the handler decides: code 4001 is answered with 4100 and a reason
/// of its own; code 4002 is not answered at all, and the server drops the connection
/// after the close timeout.
#[derive(Clone, Default)]
struct ManualClose {
    log: Log,
}

impl Handler for ManualClose {
    type Data = ();

    fn on_handshake_response_sent(&self, conn: &mut Connection<'_, Self::Data>) {
        self.log.push(Ev::Open(conn.id(), String::new()));
    }

    fn on_close(&self, conn: &mut Connection<'_, Self::Data>, frame: Option<&CloseFrame>) {
        self.log.push(Ev::Close(conn.id(), close_of(frame)));
        if frame.is_some_and(|f| f.code == CloseCode::Library(4001)) {
            conn.close(CloseCode::Library(4100), "handled by the app").unwrap();
        }
    }

    fn on_disconnect(&self, conn: &mut Connection<'_, Self::Data>, reason: &DisconnectReason) {
        self.log.push(Ev::Disconnect(conn.id(), reason.clone()));
    }
}

fn manual_close(backend: IoBackend) {
    const CLOSE_TIMEOUT: Duration = Duration::from_millis(300);
    let handler = ManualClose::default();
    let server = Running::start(builder(backend).manual_close(true).close_timeout(CLOSE_TIMEOUT), handler.clone());
    let mut opened = 0;
    for kind in PeerKind::ALL {
        let mut peer = Peer::spawn(kind);
        // One at a time: the server's open events of two connections may come in any order.
        peer.connect("a", &server.url("/"), &ConnectOpts::new());
        let a = handler.log.wait_opened(opened + 1)[opened];
        peer.connect("b", &server.url("/"), &ConnectOpts::new());
        let b = handler.log.wait_opened(opened + 2)[opened + 1];
        opened += 2;

        peer.close("a", 4001, "please");
        assert_eq!(peer.expect_close("a"), (4100, "handled by the app".into()), "{kind}");
        assert_eq!(handler.log.wait_disconnect(a), DisconnectReason::Closed(CloseCode::Library(4001)), "{kind}");

        let start = Instant::now();
        peer.close("b", 4002, "no answer expected");
        let (code, _) = peer.expect_close("b");
        let elapsed = start.elapsed();
        assert_eq!(code, 1006, "{kind}: the server must not have sent a close frame");
        assert_eq!(handler.log.wait_disconnect(b), DisconnectReason::Timeout, "{kind}");
        assert!(
            elapsed >= CLOSE_TIMEOUT - Duration::from_millis(20) && elapsed < Duration::from_secs(3),
            "{kind}: dropped after {elapsed:?}, close timeout {CLOSE_TIMEOUT:?}"
        );
        assert!(handler.log.events().contains(&Ev::Close(b, Some((4002, "no answer expected".into())))));
    }
    server.stop();
}

/// With manual_close, the handler has the close timeout to answer a peer's close, also
/// when idle pings are on: an idle period passing meanwhile must neither cut that wait
/// short nor matter otherwise (the peer has said goodbye; it is not idle, it is closing).
fn manual_close_wait_is_not_cut_short_by_idle_pings(backend: IoBackend) {
    const IDLE: Duration = Duration::from_millis(100);
    const CLOSE_TIMEOUT: Duration = Duration::from_millis(700);
    let handler = ManualClose::default();
    let builder = builder(backend).manual_close(true).idle_timeout(Some(IDLE)).close_timeout(CLOSE_TIMEOUT);
    let server = Running::start(builder, handler.clone());
    let mut raw = RawClient::open(server.addr(), "/");
    let id = handler.log.wait_opened(1)[0];
    raw.send_close(4002, "the handler will not answer");
    let start = Instant::now();
    let mut after_close = Vec::new();
    while let Some(frame) = raw.read_frame() {
        after_close.push((frame.header.opcode, start.elapsed()));
    }
    let ended = start.elapsed();
    assert_eq!(handler.log.wait_disconnect(id), DisconnectReason::Timeout);
    assert!(
        ended >= CLOSE_TIMEOUT - Duration::from_millis(20),
        "the connection was dropped {ended:?} after the peer's close, before the close timeout \
         {CLOSE_TIMEOUT:?} (idle timeout {IDLE:?}); frames sent after the peer's close: {after_close:?}"
    );
    server.stop();
}

/// With idle_timeout, a silent connection is pinged; one that answers (both peers answer
/// pings by themselves) stays open across several periods, one that does not (a raw
/// client) is dropped after about two periods with reason Timeout.
fn idle_timeout_pings_and_drops(backend: IoBackend) {
    const IDLE: Duration = Duration::from_millis(300);
    let rec = Recorder::echo();
    let server = Running::start(builder(backend).idle_timeout(Some(IDLE)), rec.clone());
    let mut raw = RawClient::open(server.addr(), "/");
    let raw_opened = Instant::now();
    let raw_id = rec.log.wait_opened(1)[0];
    let mut peers = [Peer::node(), Peer::python()];
    for peer in &mut peers {
        peer.connect("a", &server.url("/"), &ConnectOpts::new());
    }
    // The raw client gets a ping and does not answer.
    let ping = raw.expect_frame();
    assert_eq!((ping.header.opcode, ping.payload.len()), (OpCode::Ping, 0));
    raw.expect_eof();
    let dropped_after = raw_opened.elapsed();
    assert_eq!(rec.log.wait_disconnect(raw_id), DisconnectReason::Timeout);
    assert!(
        dropped_after >= 2 * IDLE - Duration::from_millis(20) && dropped_after < 8 * IDLE,
        "a client that never answers was dropped after {dropped_after:?} (idle timeout {IDLE:?})"
    );
    // Meanwhile the peers got pings and answered them: a second ping means they
    // outlived the first deadline.
    for peer in &mut peers {
        let kind = peer.kind();
        assert_eq!(peer.expect_ping("a"), b"", "{kind}");
        assert_eq!(peer.expect_ping("a"), b"", "{kind}");
        peer.send_text("a", "still here");
        assert_eq!(peer.expect_text("a"), "still here", "{kind}");
    }
    let ids = rec.log.opened();
    for id in &ids[1..] {
        assert!(
            rec.log.events().iter().any(|e| matches!(e, Ev::Pong(i, _) if i == id)),
            "the handler saw no pong from {id}"
        );
        assert!(!rec.log.events().iter().any(|e| matches!(e, Ev::Disconnect(i, _) if i == id)));
    }
    server.stop();
}

/// A TCP connection that sends nothing (or half a request) is closed after the
/// handshake timeout, with reason Timeout and without ever opening.
fn handshake_timeout(backend: IoBackend) {
    const TIMEOUT: Duration = Duration::from_millis(200);
    let rec = Recorder::echo();
    let server = Running::start(builder(backend).handshake_timeout(TIMEOUT), rec.clone());
    let start = Instant::now();
    let silent = tcp(server.addr());
    let mut partial = tcp(server.addr());
    std::io::Write::write_all(&mut partial, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n").unwrap();
    for mut stream in [silent, partial] {
        let mut buf = [0u8; 256];
        let n = std::io::Read::read(&mut stream, &mut buf).unwrap_or(0);
        let elapsed = start.elapsed();
        assert_eq!(n, 0, "expected the server to close, got {:?}", String::from_utf8_lossy(&buf[..n]));
        assert!(
            elapsed >= TIMEOUT - Duration::from_millis(20) && elapsed < Duration::from_secs(3),
            "closed after {elapsed:?}, handshake timeout {TIMEOUT:?}"
        );
    }
    let events =
        rec.log.wait("two disconnects", |evs| evs.iter().filter(|e| matches!(e, Ev::Disconnect(..))).count() == 2);
    assert!(!events.iter().any(|e| matches!(e, Ev::Open(..))), "{events:?}");
    for e in &events {
        if let Ev::Disconnect(_, reason) = e {
            assert_eq!(*reason, DisconnectReason::Timeout);
        }
    }
    // A prompt client still gets in.
    assert_echo_works(server.addr());
    server.stop();
}

/// `bye` makes the handler start the closing handshake (and try to send after it),
/// `kill` makes it abort the connection.
#[derive(Clone, Default)]
struct Ender {
    log: Log,
}

impl Handler for Ender {
    type Data = ();

    fn on_handshake_response_sent(&self, conn: &mut Connection<'_, Self::Data>) {
        self.log.push(Ev::Open(conn.id(), String::new()));
    }

    fn on_text(&self, conn: &mut Connection<'_, Self::Data>, text: &str) {
        self.log.push(Ev::Text(conn.id(), text.to_owned()));
        match text {
            "bye" => {
                conn.close(CloseCode::Library(4000), "server says bye").unwrap();
                assert!(!conn.is_open());
                // Once the close is sent, nothing more may be sent.
                let after = (conn.send("too late"), conn.ping(b""), conn.close(CloseCode::Normal, ""));
                let ok = after == (Err(SendError::NotOpen), Err(SendError::NotOpen), Err(SendError::NotOpen));
                self.log.push(Ev::Text(conn.id(), format!("sends after close refused: {ok}")));
            }
            "kill" => conn.abort(),
            other => conn.send(other).unwrap(),
        }
    }

    fn on_close(&self, conn: &mut Connection<'_, Self::Data>, frame: Option<&CloseFrame>) {
        self.log.push(Ev::Close(conn.id(), close_of(frame)));
    }

    fn on_disconnect(&self, conn: &mut Connection<'_, Self::Data>, reason: &DisconnectReason) {
        self.log.push(Ev::Disconnect(conn.id(), reason.clone()));
    }
}

/// The handler closes: the peer gets its code and reason, answers, and the connection
/// ends Closed; sends after the close are refused. The handler aborts: the peer sees the
/// TCP connection drop without a close frame (1006), reason Aborted.
fn handler_closes_and_aborts(backend: IoBackend) {
    let ender = Ender::default();
    let server = Running::start(builder(backend), ender.clone());
    let mut opened = 0;
    for kind in PeerKind::ALL {
        let mut peer = Peer::spawn(kind);
        // One at a time: the server's open events of two connections may come in any order.
        peer.connect("a", &server.url("/"), &ConnectOpts::new());
        let a = ender.log.wait_opened(opened + 1)[opened];
        peer.connect("b", &server.url("/"), &ConnectOpts::new());
        let b = ender.log.wait_opened(opened + 2)[opened + 1];
        opened += 2;
        peer.send_text("a", "bye");
        assert_eq!(peer.expect_close("a"), (4000, "server says bye".into()), "{kind}");
        assert_eq!(ender.log.wait_disconnect(a), DisconnectReason::Closed(CloseCode::Library(4000)), "{kind}");
        let events = ender.log.events();
        assert!(events.contains(&Ev::Text(a, "sends after close refused: true".into())), "{kind}: {events:#?}");
        // The peer's reply carries the code (Python echoes the reason too, Node does not).
        let replied = events.iter().any(|e| matches!(e, Ev::Close(i, Some((4000, _))) if *i == a));
        assert!(replied, "{kind}: the peer's reply: {events:#?}");

        peer.send_text("b", "kill");
        assert_eq!(peer.expect_close("b").0, 1006, "{kind}");
        assert_eq!(ender.log.wait_disconnect(b), DisconnectReason::Aborted, "{kind}");
    }
    server.stop();
}

backends!(
    auto_pong,
    manual_pong,
    auto_close_reply,
    manual_close,
    manual_close_wait_is_not_cut_short_by_idle_pings,
    handler_closes_and_aborts,
    idle_timeout_pings_and_drops,
    handshake_timeout
);
