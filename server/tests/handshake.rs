//! The opening handshake and plain HTTP on the WebSocket port: refusing with `allow`,
//! the path filter, the version and upgrade checks (and the options that skip them),
//! `on_http`, and the lifecycle events every connection gets exactly once.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use common::*;
use ringcast::codec::handshake::accept_key;
use ringcast::{
    Allow, CloseCode, Connection, ConnectionId, DisconnectReason, Handler, HttpRequest, HttpResponse, IoBackend,
    Request,
};
use testkit::{ConnectOpts, Peer, PeerKind};

/// Refuses `?token=no` with 403 and `?token=bad` with 401; records the lifecycle.
#[derive(Clone, Default)]
struct Gate {
    log: Log,
}

impl Handler for Gate {
    type Data = ();

    fn on_connect(&self, id: ConnectionId, _peer: SocketAddr) {
        self.log.push(Ev::Connect(id));
    }

    fn allow(&self, request: &Request, _peer: SocketAddr) -> Allow {
        match request.query_param("token") {
            Some("no") => Allow::No,
            Some("bad") => Allow::Status(401),
            _ => Allow::Yes,
        }
    }

    fn on_handshake_response_sent(&self, conn: &mut Connection<'_, Self::Data>) {
        self.log.push(Ev::Open(conn.id(), conn.request().unwrap().target().to_owned()));
    }

    fn on_text(&self, conn: &mut Connection<'_, Self::Data>, text: &str) {
        conn.send(text).unwrap();
    }

    fn on_disconnect(&self, conn: &mut Connection<'_, Self::Data>, reason: &DisconnectReason) {
        self.log.push(Ev::Disconnect(conn.id(), reason.clone()));
    }
}

/// `Allow::No` is answered 403, `Allow::Status(401)` 401, as both peers see it; accepted
/// connections work.
fn allow_refuses(backend: IoBackend) {
    let gate = Gate::default();
    let server = Running::start(builder(backend), gate.clone());
    for kind in PeerKind::ALL {
        let mut peer = Peer::spawn(kind);
        let err = peer.try_connect("no", &server.url("/ws?token=no"), &ConnectOpts::new()).unwrap_err();
        assert_eq!(err.status, Some(403), "{kind}: {err}");
        let err = peer.try_connect("bad", &server.url("/ws?token=bad"), &ConnectOpts::new()).unwrap_err();
        assert_eq!(err.status, Some(401), "{kind}: {err}");
        peer.connect("ok", &server.url("/ws?token=good"), &ConnectOpts::new());
        peer.send_text("ok", "in");
        assert_eq!(peer.expect_text("ok"), "in");
        peer.close("ok", 1000, "");
        assert_eq!(peer.expect_close("ok").0, 1000);
    }
    let reasons: Vec<DisconnectReason> = gate
        .log
        .wait("six disconnects", |evs| evs.iter().filter(|e| matches!(e, Ev::Disconnect(..))).count() == 6)
        .into_iter()
        .filter_map(|e| if let Ev::Disconnect(_, r) = e { Some(r) } else { None })
        .collect();
    for status in [403, 401] {
        let n = reasons.iter().filter(|r| **r == DisconnectReason::HandshakeRefused(status)).count();
        assert_eq!(n, 2, "HandshakeRefused({status}) in {reasons:?}");
    }
    assert_eq!(server.stats().handshakes_refused, 4);
    assert_eq!(server.stats().handshakes_accepted, 2);
    server.stop();
}

/// With `path("/chat")`, other paths get 404 and `/chat` (with any query) opens.
fn wrong_path_is_404(backend: IoBackend) {
    let server = Running::start(builder(backend).path("/chat"), Recorder::echo());
    for kind in PeerKind::ALL {
        let mut peer = Peer::spawn(kind);
        for path in ["/other", "/", "/chat/more", "/cha"] {
            let err = peer.try_connect("x", &server.url(path), &ConnectOpts::new()).unwrap_err();
            assert_eq!(err.status, Some(404), "{kind} {path}: {err}");
        }
        peer.connect("a", &server.url("/chat"), &ConnectOpts::new());
        peer.connect("b", &server.url("/chat?room=1"), &ConnectOpts::new());
        peer.send_text("b", "ok");
        assert_eq!(peer.expect_text("b"), "ok");
    }
    server.stop();
}

/// Reads an HTTP response head (up to the blank line) without waiting for EOF.
#[track_caller]
fn read_head(stream: &mut TcpStream) -> (HttpReply, Vec<u8>) {
    let mut raw = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = raw.split_off(end + 4);
            return (parse_http_reply(&raw), rest);
        }
        let n = stream.read(&mut chunk).expect("read response head");
        assert!(n > 0, "EOF before a complete response head: {:?}", String::from_utf8_lossy(&raw));
        raw.extend_from_slice(&chunk[..n]);
    }
}

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Sends a handcrafted upgrade request; on 101 also checks the accept key and that the
/// connection then echoes a frame. Returns the response.
#[track_caller]
fn upgrade(addr: SocketAddr, overrides: &[(&str, Option<&str>)]) -> HttpReply {
    let mut stream = tcp(addr);
    stream.write_all(&handcrafted_upgrade("/", overrides)).unwrap();
    let (head, rest) = read_head(&mut stream);
    if head.status != 101 {
        return read_to_end(stream, head, rest);
    }
    assert_eq!(head.header("sec-websocket-accept"), Some(accept_key(KEY.as_bytes()).as_str()));
    assert!(rest.is_empty());
    let mut client = RawClient::upgraded(stream);
    client.send_text("upgraded");
    assert_eq!(client.read_text(), "upgraded");
    client.send_close(1000, "");
    assert_eq!(client.expect_close(), 1000);
    head
}

fn read_to_end(mut stream: TcpStream, mut head: HttpReply, mut body: Vec<u8>) -> HttpReply {
    let _ = stream.read_to_end(&mut body);
    head.body = body;
    head
}

/// `Sec-WebSocket-Version: 8` is answered 426 with `Sec-WebSocket-Version: 13`, unless
/// skip_version_check is set (then 101).
fn version_check(backend: IoBackend) {
    let server = Running::start(builder(backend), Recorder::echo());
    for version in [Some("8"), Some("14"), None] {
        let reply = upgrade(server.addr(), &[("Sec-WebSocket-Version", version)]);
        assert_eq!(reply.status, 426, "version {version:?}");
        assert_eq!(reply.header("sec-websocket-version"), Some("13"), "version {version:?}");
    }
    assert_eq!(upgrade(server.addr(), &[]).status, 101);
    server.stop();

    let server = Running::start(builder(backend).skip_version_check(true), Recorder::echo());
    assert_eq!(upgrade(server.addr(), &[("Sec-WebSocket-Version", Some("8"))]).status, 101);
    assert_eq!(upgrade(server.addr(), &[("Sec-WebSocket-Version", None)]).status, 101);
    // Only the version check is skipped.
    assert_eq!(upgrade(server.addr(), &[("Upgrade", None)]).status, 400);
    server.stop();
}

/// A request without `Upgrade: websocket` (or without `Connection: Upgrade`) is answered
/// 400, unless skip_upgrade_check is set (then 101).
fn upgrade_check(backend: IoBackend) {
    let server = Running::start(builder(backend), Recorder::echo());
    let cases: [&[(&str, Option<&str>)]; 3] = [
        &[("Upgrade", None)],
        &[("Connection", None)],
        &[("Upgrade", Some("h2c")), ("Connection", Some("keep-alive"))],
    ];
    for case in cases {
        let reply = upgrade(server.addr(), case);
        assert_eq!(reply.status, 400, "{case:?}: {:?}", String::from_utf8_lossy(&reply.body));
    }
    // A malformed key and a missing Host are refused too.
    assert_eq!(upgrade(server.addr(), &[("Sec-WebSocket-Key", Some("short"))]).status, 400);
    assert_eq!(upgrade(server.addr(), &[("Host", None)]).status, 400);
    server.stop();

    let server = Running::start(builder(backend).skip_upgrade_check(true), Recorder::echo());
    for case in cases {
        assert_eq!(upgrade(server.addr(), case).status, 101, "{case:?}");
    }
    // Only the upgrade check is skipped.
    assert_eq!(upgrade(server.addr(), &[("Sec-WebSocket-Version", Some("8"))]).status, 426);
    server.stop();
}

/// Serves `GET /healthz` and `POST /publish` (broadcasting the body); anything else
/// falls back to 426.
#[derive(Clone, Default)]
struct Ops {
    log: Log,
}

impl Handler for Ops {
    type Data = ();

    fn on_handshake_response_sent(&self, conn: &mut Connection<'_, Self::Data>) {
        self.log.push(Ev::Open(conn.id(), String::new()));
    }

    fn on_http(&self, request: &HttpRequest<'_, Self::Data>) -> Option<HttpResponse> {
        let head = request.head();
        match (head.method(), head.path()) {
            ("GET", "/healthz") => Some(HttpResponse::text(200, "ok\n").header("X-Health", "green")),
            ("POST", "/publish") => {
                let body = String::from_utf8_lossy(request.body()).into_owned();
                request.broadcaster().broadcast(&body);
                Some(HttpResponse::json(202, format!("{{\"published\":{}}}", body.len())))
            }
            _ => None,
        }
    }

    fn on_disconnect(&self, conn: &mut Connection<'_, Self::Data>, reason: &DisconnectReason) {
        self.log.push(Ev::Disconnect(conn.id(), reason.clone()));
    }
}

fn http_on_the_websocket_port(backend: IoBackend) {
    let ops = Ops::default();
    let server = Running::start(builder(backend), ops.clone());
    let addr = server.addr();
    let reply = http_exchange(addr, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    assert_eq!((reply.status, reply.body.as_slice()), (200, &b"ok\n"[..]));
    assert_eq!(reply.header("x-health"), Some("green"));
    assert_eq!(reply.header("content-length"), Some("3"));
    assert_eq!(reply.header("connection"), Some("close"));

    // A body published to WebSocket clients, including one of a real peer.
    let mut peer = Peer::node();
    peer.connect("a", &server.url("/"), &ConnectOpts::new());
    ops.log.wait_opened(1);
    let reply =
        http_exchange(addr, b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\nhello ws \xe2\x9c\x93");
    assert_eq!((reply.status, reply.body.as_slice()), (202, &b"{\"published\":12}"[..]));
    assert_eq!(peer.expect_text("a"), "hello ws ✓");

    // Unhandled by on_http: 426 Upgrade Required.
    let reply = http_exchange(addr, b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(reply.status, 426);
    assert_eq!(reply.header("upgrade"), Some("websocket"));
    assert_eq!(reply.header("sec-websocket-version"), Some("13"));
    // A body that arrives after the head, in pieces.
    let mut stream = tcp(addr);
    stream.write_all(b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nlate").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(30));
    stream.write_all(b" body").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(30));
    stream.write_all(b"!").unwrap();
    assert_eq!(read_http_reply(&mut stream).status, 202);
    assert_eq!(peer.expect_text("a"), "late body!");
    // Chunked bodies are not supported (411); bodies over max_http_body are refused (413).
    let chunked = b"POST /publish HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    assert_eq!(http_exchange(addr, chunked).status, 411);
    let reply = http_exchange(addr, b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n");
    assert_eq!(reply.status, 413);
    assert_eq!(server.stats().http_requests, 6);
    ops.log.wait("6 HTTP disconnects", |evs| {
        evs.iter().filter(|e| matches!(e, Ev::Disconnect(_, DisconnectReason::HttpServed))).count() == 6
    });
    // Nothing of the refused requests was published.
    server.broadcast("sync");
    assert_eq!(peer.expect_text("a"), "sync");
    server.stop();

    // A handler without on_http: every plain request is 426.
    let server = Running::start(builder(backend), Recorder::echo());
    let reply = http_exchange(server.addr(), b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(reply.status, 426);
    assert_eq!(reply.header("sec-websocket-version"), Some("13"));
    server.stop();
}

/// A plain HTTP request that carries an `Upgrade` header for some other protocol (as
/// `curl --http2` sends for cleartext URLs: `Upgrade: h2c`) is still plain HTTP to this
/// server: RFC 7230 §6.7 lets a server ignore an upgrade it does not speak, and
/// `on_http` must see the request rather than it being refused as a bad WebSocket
/// upgrade.
fn http_with_a_foreign_upgrade_header_is_plain_http(backend: IoBackend) {
    let ops = Ops::default();
    let server = Running::start(builder(backend), ops.clone());
    let reply = http_exchange(
        server.addr(),
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
          HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    );
    assert_eq!(
        (reply.status, String::from_utf8_lossy(&reply.body).into_owned()),
        (200, "ok\n".to_owned()),
        "GET /healthz with `Upgrade: h2c` was not served by on_http"
    );
    server.stop();
}

/// Whether a connection opened, and a check of its disconnect reason.
type Expected = (bool, fn(&DisconnectReason) -> bool);

/// Every TCP connection gets exactly one `on_connect` first and one `on_disconnect`
/// last, and `on_handshake_response_sent` exactly once in between if it opened —
/// whatever happened: normal close, abort, refusal by `allow`, wrong path, a bad
/// request, plain HTTP, a timeout.
fn lifecycle_events_exactly_once(backend: IoBackend) {
    let gate = Gate::default();
    let server = Running::start(
        builder(backend).path("/ws").handshake_timeout(std::time::Duration::from_millis(300)),
        gate.clone(),
    );
    let mut expected: Vec<Expected> = Vec::new();
    for kind in PeerKind::ALL {
        let mut peer = Peer::spawn(kind);
        peer.connect("closed", &server.url("/ws"), &ConnectOpts::new());
        peer.close("closed", 1000, "");
        assert_eq!(peer.expect_close("closed").0, 1000);
        expected.push((true, |r| *r == DisconnectReason::Closed(CloseCode::Normal)));
        peer.connect("aborted", &server.url("/ws"), &ConnectOpts::new());
        peer.send_text("aborted", "x");
        assert_eq!(peer.expect_text("aborted"), "x");
        peer.abort("aborted");
        expected.push((true, |r| matches!(r, DisconnectReason::Eof | DisconnectReason::Io(_))));
        peer.try_connect("refused", &server.url("/ws?token=no"), &ConnectOpts::new()).unwrap_err();
        expected.push((false, |r| *r == DisconnectReason::HandshakeRefused(403)));
        peer.try_connect("unauthorized", &server.url("/ws?token=bad"), &ConnectOpts::new()).unwrap_err();
        expected.push((false, |r| *r == DisconnectReason::HandshakeRefused(401)));
        peer.try_connect("lost", &server.url("/elsewhere"), &ConnectOpts::new()).unwrap_err();
        expected.push((false, |r| *r == DisconnectReason::HandshakeRefused(404)));
    }
    assert_eq!(http_exchange(server.addr(), b"not http at all\r\n\r\n").status, 400);
    expected.push((false, |r| *r == DisconnectReason::HandshakeRefused(400)));
    assert_eq!(http_exchange(server.addr(), b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").status, 426);
    expected.push((false, |r| *r == DisconnectReason::HttpServed));
    let mut silent = tcp(server.addr());
    assert_eq!(silent.read(&mut [0u8; 16]).unwrap_or(0), 0, "closed after the handshake timeout");
    expected.push((false, |r| *r == DisconnectReason::Timeout));

    let n = expected.len();
    let events = gate
        .log
        .wait(&format!("{n} disconnects"), |evs| evs.iter().filter(|e| matches!(e, Ev::Disconnect(..))).count() >= n);
    let mut ids: Vec<ConnectionId> = Vec::new();
    for e in &events {
        if let Ev::Connect(id) = e {
            assert!(!ids.contains(id), "on_connect twice for {id}");
            ids.push(*id);
        }
    }
    assert_eq!(ids.len(), n, "one on_connect per TCP connection: {events:#?}");
    let mut unmatched = expected.clone();
    for id in ids {
        let mine: Vec<&Ev> = events.iter().filter(|e| e.id() == id).collect();
        let opens = mine.iter().filter(|e| matches!(e, Ev::Open(..))).count();
        assert!(matches!(mine.first(), Some(Ev::Connect(_))), "{id}: {mine:?}");
        let Some(Ev::Disconnect(_, reason)) = mine.last() else {
            panic!("{id}: last event is not on_disconnect: {mine:?}")
        };
        assert_eq!(mine.iter().filter(|e| matches!(e, Ev::Disconnect(..))).count(), 1, "{id}: {mine:?}");
        assert!(opens <= 1, "{id}: {mine:?}");
        if opens == 1 {
            assert!(
                matches!(mine[1], Ev::Open(..)),
                "{id}: on_handshake_response_sent right after on_connect: {mine:?}"
            );
        }
        let Some(at) = unmatched.iter().position(|(open, check)| *open == (opens == 1) && check(reason)) else {
            panic!("{id}: unexpected lifecycle {mine:?}");
        };
        unmatched.remove(at);
    }
    assert!(unmatched.is_empty());
    // Nothing more arrives later.
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(gate.log.events().len(), events.len(), "late events: {:#?}", &gate.log.events()[events.len()..]);
    server.stop();
}

backends!(
    allow_refuses,
    wrong_path_is_404,
    version_check,
    upgrade_check,
    http_on_the_websocket_port,
    http_with_a_foreign_upgrade_header_is_plain_http,
    lifecycle_events_exactly_once
);
