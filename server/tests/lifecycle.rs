//! The server's own life and its connections' user data: graceful stop (close 1001 to
//! every client, bounded by the close timeout), restarting on the same port, and
//! `Handler::Data` dropped when its connection ends.

mod common;

use std::net::TcpStream;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use ringcast::{CloseCode, Connection, DisconnectReason, Handler, IoBackend, StartError};
use testkit::{ConnectOpts, Peer, PeerKind, free_port};

/// Stop sends 1001 to every client, waits for their replies (returning long before the
/// close timeout when everyone answers), tells the handler, and the port is closed after.
fn graceful_stop_closes_with_1001(backend: IoBackend) {
    let rec = Recorder::echo();
    let server = Running::start(builder(backend).close_timeout(Duration::from_secs(5)), rec.clone());
    let addr = server.addr();
    let mut peers = [Peer::python(), Peer::node()];
    for peer in &mut peers {
        for id in ["a", "b", "c"] {
            peer.connect(id, &server.url("/"), &ConnectOpts::new());
        }
    }
    // A raw client that answers the close frame itself.
    let mut raw = RawClient::open(addr, "/");
    rec.log.wait_opened(7);
    // A connection still in its handshake is just closed.
    let mut handshaking = tcp(addr);
    wait_until("8 connections", WAIT, || server.stats().total_connections() == 8);
    let answer = std::thread::spawn(move || {
        let frame = raw.expect_frame();
        assert_eq!(frame.header.opcode, ringcast::OpCode::Close);
        raw.send_raw(&raw_frame(0x88, true, &frame.payload));
        raw.expect_eof();
        u16::from_be_bytes([frame.payload[0], frame.payload[1]])
    });

    let start = Instant::now();
    server.stop();
    let took = start.elapsed();
    assert!(took < Duration::from_secs(2), "stop took {took:?} though every client answered");
    for peer in &mut peers {
        for id in ["a", "b", "c"] {
            assert_eq!(peer.expect_close(id), (1001, "server stopping".into()), "{} {id}", peer.kind());
        }
    }
    assert_eq!(answer.join().unwrap(), 1001);
    assert_eq!(std::io::Read::read(&mut handshaking, &mut [0u8; 64]).unwrap_or(0), 0);
    let events = rec.log.events();
    let mut disconnects: Vec<&DisconnectReason> =
        events.iter().filter_map(|e| if let Ev::Disconnect(_, r) = e { Some(r) } else { None }).collect();
    assert_eq!(disconnects.len(), 8, "on_disconnect once per client before stop returns: {events:#?}");
    let at = disconnects.iter().position(|r| **r == DisconnectReason::ServerStopping);
    disconnects.remove(at.expect("the handshaking connection ends with ServerStopping"));
    // The upgraded ones answered the close: the server reports Closed(1001) for them,
    // though ServerStopping would describe it as well (see the report).
    for reason in disconnects {
        assert!(
            matches!(reason, DisconnectReason::ServerStopping | DisconnectReason::Closed(CloseCode::Away)),
            "{reason:?}"
        );
    }
    assert!(TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err(), "still accepting after stop");
}

/// A client that never answers the close frame holds stop up for the close timeout, no
/// longer; it still finds the 1001 close frame when it finally reads.
fn stop_is_bounded_by_the_close_timeout(backend: IoBackend) {
    const CLOSE_TIMEOUT: Duration = Duration::from_millis(400);
    let rec = Recorder::echo();
    let server = Running::start(builder(backend).close_timeout(CLOSE_TIMEOUT), rec.clone());
    let mut deaf = RawClient::open(server.addr(), "/");
    let mut peer = Peer::node();
    peer.connect("a", &server.url("/"), &ConnectOpts::new());
    rec.log.wait_opened(2);
    let start = Instant::now();
    server.stop();
    let took = start.elapsed();
    assert!(
        took >= CLOSE_TIMEOUT - Duration::from_millis(20) && took < CLOSE_TIMEOUT + Duration::from_millis(1500),
        "stop took {took:?} with a client that never answers (close timeout {CLOSE_TIMEOUT:?})"
    );
    assert_eq!(peer.expect_close("a").0, 1001);
    assert_eq!(deaf.expect_close(), 1001);
    assert_eq!(rec.log.events().iter().filter(|e| matches!(e, Ev::Disconnect(..))).count(), 2);
}

/// Start, stop and start again on the same fixed port: the second server accepts and
/// serves (SO_REUSEADDR; no lingering listener).
fn restart_on_the_same_port(backend: IoBackend) {
    let port = free_port();
    let mut peers = [Peer::python(), Peer::node()];
    for round in 0..3 {
        let server = Running::start(builder(backend).port(port), Recorder::echo());
        assert_eq!(server.addr().port(), port);
        let id = format!("r{round}");
        for peer in &mut peers {
            peer.connect(&id, &format!("ws://127.0.0.1:{port}/"), &ConnectOpts::new());
            peer.send_text(&id, &format!("round {round}"));
            assert_eq!(peer.expect_text(&id), format!("round {round}"), "{}", peer.kind());
        }
        assert_echo_works(server.addr());
        // Left open: stop closes them.
        server.stop();
        for peer in &mut peers {
            assert_eq!(peer.expect_close(&id).0, 1001, "{}", peer.kind());
        }
    }
}

/// User data that counts live instances. The two backend variants of the test share
/// the counter, so they take turns.
static LIVE: AtomicUsize = AtomicUsize::new(0);
static CREATED: AtomicUsize = AtomicUsize::new(0);
static SERIAL: Mutex<()> = Mutex::new(());

struct Tracked {
    name: String,
}

impl Default for Tracked {
    fn default() -> Self {
        LIVE.fetch_add(1, Ordering::SeqCst);
        CREATED.fetch_add(1, Ordering::SeqCst);
        Tracked { name: String::new() }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Clone, Default)]
struct Named {
    log: Log,
}

impl Handler for Named {
    type Data = Tracked;

    fn on_handshake_response_sent(&self, conn: &mut Connection<'_, Self::Data>) {
        conn.data_mut().name = format!("conn-{}", conn.id());
        self.log.push(Ev::Open(conn.id(), String::new()));
    }

    fn on_text(&self, conn: &mut Connection<'_, Self::Data>, text: &str) {
        let reply = format!("{} says {text}", conn.data().name);
        conn.send(&reply).unwrap();
    }

    fn on_disconnect(&self, conn: &mut Connection<'_, Self::Data>, reason: &DisconnectReason) {
        // The data is still there during on_disconnect.
        let intact = conn.request().is_none() || conn.data().name == format!("conn-{}", conn.id());
        assert!(intact, "user data changed before on_disconnect");
        self.log.push(Ev::Disconnect(conn.id(), reason.clone()));
    }
}

/// `Handler::Data` is created per TCP connection and dropped when it ends — after a
/// close, an abort, a dropped socket, a refused handshake or a plain HTTP request —
/// not later at server stop.
fn user_data_dropped_on_disconnect(backend: IoBackend) {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let handler = Named::default();
    let server = Running::start(builder(backend).path("/ws"), handler.clone());
    let created_before = CREATED.load(Ordering::SeqCst);
    assert_eq!(LIVE.load(Ordering::SeqCst), 0);
    let (mut connections, mut opened) = (0, 0);
    for kind in PeerKind::ALL {
        let mut peer = Peer::spawn(kind);
        peer.connect("closes", &server.url("/ws"), &ConnectOpts::new());
        peer.connect("aborts", &server.url("/ws"), &ConnectOpts::new());
        connections += 2;
        opened += 2;
        handler.log.wait_opened(opened);
        assert!(LIVE.load(Ordering::SeqCst) >= 2);
        peer.send_text("closes", "hi");
        assert!(peer.expect_text("closes").ends_with(" says hi"));
        peer.close("closes", 1000, "");
        assert_eq!(peer.expect_close("closes").0, 1000);
        peer.abort("aborts");
        peer.try_connect("refused", &server.url("/elsewhere"), &ConnectOpts::new()).unwrap_err();
        connections += 1;
    }
    let raw = RawClient::open(server.addr(), "/ws");
    drop(raw);
    assert_eq!(http_exchange(server.addr(), b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n").status, 426);
    connections += 2;

    handler.log.wait(&format!("{connections} disconnects"), |evs| {
        evs.iter().filter(|e| matches!(e, Ev::Disconnect(..))).count() == connections
    });
    wait_until("every connection's user data to be dropped", WAIT, || LIVE.load(Ordering::SeqCst) == 0);
    assert_eq!(CREATED.load(Ordering::SeqCst) - created_before, connections, "one Data per TCP connection");
    server.stop();
    assert_eq!(LIVE.load(Ordering::SeqCst), 0);
}

/// Whether the server completes an upgrade on a new connection (it refuses one over the
/// connection limit by closing it right after accepting).
fn upgrade_accepted(addr: std::net::SocketAddr) -> Option<RawClient> {
    let mut stream = tcp(addr);
    let hs = upgrade_request(addr, "/", &[]);
    std::io::Write::write_all(&mut stream, hs.request()).ok()?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match std::io::Read::read(&mut stream, &mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    hs.parse_response(&head).ok().flatten()?;
    Some(RawClient::upgraded(stream))
}

/// `max_connections(n)` refuses connections beyond n open ones — server-wide, whichever
/// worker the kernel hands each connection to. With n = 2 on two workers, two clients
/// must always get in (the kernel may give both to the same worker) and a third must not.
fn max_connections_is_a_server_wide_limit(backend: IoBackend) {
    for round in 0..8 {
        let rec = Recorder::echo();
        let server =
            Running::start(builder(backend).max_connections(2).close_timeout(Duration::from_millis(300)), rec.clone());
        let first = upgrade_accepted(server.addr()).expect("the first connection must be accepted");
        rec.log.wait_opened(1);
        let second = upgrade_accepted(server.addr());
        let per_worker = server.stats().connections;
        assert!(
            second.is_some(),
            "round {round}: the 2nd connection was refused with max_connections(2); open per worker: {per_worker:?}"
        );
        rec.log.wait_opened(2);
        assert!(upgrade_accepted(server.addr()).is_none(), "round {round}: a 3rd connection got in");
        if round == 0 {
            // A real client is told why: 503 Service Unavailable.
            let mut peer = Peer::node();
            let refused = peer.try_connect("third", &server.url("/"), &ConnectOpts::new()).unwrap_err();
            assert_eq!(refused.status, Some(503), "{refused:?}");
        }
        drop((first, second));
        wait_until("the clients to be gone", WAIT, || server.stats().total_connections() == 0);
        // Room again once they left.
        assert!(upgrade_accepted(server.addr()).is_some(), "round {round}: refused after the others left");
        server.stop();
    }
}

/// Starting on a port that is already listened on fails with `StartError::Bind` —
/// also when the listener is another ringcast server (whose sockets, like the new
/// one's, use SO_REUSEPORT, so a plain bind does not notice it). Otherwise two servers
/// silently split the port's connections between them.
fn a_port_in_use_is_a_start_error(backend: IoBackend) {
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = plain.local_addr().unwrap().port();
    match builder(backend).port(port).start(Recorder::echo()) {
        Err(StartError::Bind { addr, .. }) => assert_eq!(addr.port(), port),
        Err(e) => panic!("expected a bind error, got {e}"),
        Ok(server) => {
            server.stop();
            panic!("started on a port a plain listener holds");
        }
    }
    let first = Running::start(builder(backend), Recorder::echo());
    let port = first.addr().port();
    match builder(backend).port(port).start(Recorder::echo()) {
        Err(StartError::Bind { addr, .. }) => assert_eq!(addr.port(), port),
        Err(e) => panic!("expected a bind error, got {e}"),
        Ok(second) => {
            stop_within(second, Duration::from_secs(5));
            panic!("a second server started on port {port}, which a running server listens on");
        }
    }
    assert_echo_works(first.addr());
    // Sharing is explicit: with share_port both servers listen, and both get connections.
    let second = builder(backend).port(port).share_port(true).start(Recorder::echo()).expect("shared port");
    assert_eq!(second.local_addr().port(), port);
    for _ in 0..40 {
        assert_echo_works(first.addr());
        if second.stats().handshakes_accepted > 0 {
            break;
        }
    }
    assert!(second.stats().handshakes_accepted > 0, "the kernel spreads a shared port's connections over both");
    stop_within(second, Duration::from_secs(5));
    first.stop();
}

/// Publishes over HTTP after asking the server to stop, from inside the handler: the
/// worst case of a publish racing a stop (before the two-step stop, the other worker could
/// take its Stop before this message and close its subscribers without it, though the
/// publisher was answered 202; found by service/tests/faults.rs under SIGTERM).
struct StopThenPublish {
    handle: std::sync::Arc<std::sync::OnceLock<ringcast::ServerHandle<StopThenPublish>>>,
}

impl Handler for StopThenPublish {
    type Data = ();

    fn on_http(&self, request: &ringcast::HttpRequest<'_, ()>) -> Option<ringcast::HttpResponse> {
        self.handle.get().expect("started").request_stop();
        request.broadcaster().broadcast("accepted before the close");
        Some(ringcast::HttpResponse::text(202, "published\n"))
    }
}

/// A message the server acknowledged reaches every subscriber on every worker before
/// their 1001, however close to the stop it was published.
fn a_publish_acknowledged_as_the_stop_begins_reaches_every_subscriber(backend: IoBackend) {
    let handle = std::sync::Arc::new(std::sync::OnceLock::new());
    let server =
        builder(backend).close_timeout(Duration::from_secs(5)).start(StopThenPublish { handle: handle.clone() });
    let server = server.unwrap_or_else(|e| panic!("start: {e}"));
    let addr = server.local_addr();
    let broadcaster = server.broadcaster();
    assert!(handle.set(server).is_ok());
    // Subscribers on both workers.
    let mut subscribers: Vec<RawClient> = (0..16).map(|_| RawClient::open(addr, "/")).collect();
    wait_until("16 subscribers", WAIT, || broadcaster.stats().websockets == 16);
    assert!(broadcaster.stats().connections.iter().all(|&n| n > 0), "{:?}", broadcaster.stats().connections);
    let mut http = tcp(addr);
    std::io::Write::write_all(&mut http, b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").unwrap();
    let mut answer = String::new();
    let _ = std::io::Read::read_to_string(&mut http, &mut answer);
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer:?}");
    for (i, subscriber) in subscribers.iter_mut().enumerate() {
        let frame = subscriber.expect_frame();
        assert_eq!(
            (frame.header.opcode, frame.payload.as_slice()),
            (ringcast::OpCode::Text, &b"accepted before the close"[..]),
            "subscriber {i} got no acknowledged message before its close"
        );
        let close = subscriber.expect_frame();
        assert_eq!(close.header.opcode, ringcast::OpCode::Close, "subscriber {i}");
        assert_eq!(u16::from_be_bytes([close.payload[0], close.payload[1]]), 1001, "subscriber {i}");
    }
}

backends!(
    a_publish_acknowledged_as_the_stop_begins_reaches_every_subscriber,
    a_port_in_use_is_a_start_error,
    max_connections_is_a_server_wide_limit,
    graceful_stop_closes_with_1001,
    stop_is_bounded_by_the_close_timeout,
    restart_on_the_same_port,
    user_data_dropped_on_disconnect
);
