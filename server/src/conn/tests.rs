//! The connection state machine in memory: no socket, a virtual clock. Every close path
//! and every [`DisconnectReason`] is driven here byte by byte.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ringcast_codec::{CloseCode, Decoder, DecoderConfig, Incoming, OpCode, PreparedMessage, Role, encode_masked_frame};

use super::machine::{Conn, Event, Overflow, Refused};
use super::queue::{OutFrame, Outbound};
use crate::config::{Config, ServerBuilder, SlowConsumerPolicy};
use crate::event::{DisconnectReason, SendError};
use crate::id::ConnectionId;

const REQUEST: &[u8] = b"GET /chat HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// What the shard would have seen, owned so that tests can compare it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Upgrade(String),
    Http(String, Vec<u8>),
    Text(String),
    Binary(Vec<u8>),
    Fragment(OpCode, bool, Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>),
    Refused(u16),
    HttpRefused(u16),
    ProtocolError(CloseCode),
}

/// One connection, its configuration and a virtual clock.
struct Harness {
    conn: Conn<()>,
    config: Config,
    now: Instant,
    /// What the "socket" received from the server, unparsed.
    wire: Vec<u8>,
}

impl Harness {
    fn new(config: Config) -> Self {
        // The virtual clock starts at the epoch, so that whole-millisecond steps land
        // exactly on the connection's millisecond deadlines.
        let now = config.epoch;
        let peer = SocketAddr::from((Ipv4Addr::LOCALHOST, 40000));
        let conn = Conn::new(ConnectionId::new(0, 1, 1), peer, (), &config, now);
        Harness { conn, config, now, wire: Vec::new() }
    }

    fn with(build: impl FnOnce(ServerBuilder) -> ServerBuilder) -> Self {
        Self::new(build(ServerBuilder::new()).config().clone())
    }

    /// An upgraded connection (the 101 already written).
    fn open(build: impl FnOnce(ServerBuilder) -> ServerBuilder) -> Self {
        let mut h = Self::with(build);
        let seen = h.feed(REQUEST);
        assert_eq!(seen, vec![Seen::Upgrade("/chat".into())]);
        h.flush();
        assert!(h.take_wire().starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
        h
    }

    /// Feeds `bytes` as one read, answers upgrades as the shard would (accept), and
    /// after a close frame lets the machine do its automatic part.
    fn feed(&mut self, bytes: &[u8]) -> Vec<Seen> {
        let mut owned = bytes.to_vec();
        let mut input = &mut owned[..];
        let mut seen = Vec::new();
        while let Some(event) = self.conn.poll_input(&mut input, &self.config, self.now) {
            let item = match event {
                Event::Upgrade { request, accept, deflate } => {
                    let path = request.path().to_owned();
                    self.conn.accept(request, &accept, deflate.as_deref(), &self.config);
                    Seen::Upgrade(path)
                }
                Event::Http { request, body } => {
                    let item = Seen::Http(request.path().to_owned(), body.to_vec());
                    self.conn.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec(), &self.config, self.now);
                    item
                }
                Event::Message(Incoming::Text(text)) => Seen::Text(text.to_string()),
                Event::Message(Incoming::Binary(data)) => Seen::Binary(data.to_vec()),
                Event::Message(Incoming::Fragment { opcode, fin, payload }) => {
                    Seen::Fragment(opcode, fin, payload.to_vec())
                }
                Event::Message(Incoming::Ping(payload)) => Seen::Ping(payload.to_vec()),
                Event::Message(Incoming::Pong(payload)) => Seen::Pong(payload.to_vec()),
                Event::Message(Incoming::Close(frame)) => {
                    self.conn.after_close_frame(&self.config, self.now);
                    Seen::Close(frame.map(|f| u16::from(f.code)))
                }
                Event::Refused(status) => Seen::Refused(status),
                Event::HttpRefused(status) => Seen::HttpRefused(status),
                Event::ProtocolError(e) => Seen::ProtocolError(e.close_code()),
            };
            seen.push(item);
        }
        assert!(input.is_empty(), "poll_input returned None with input left");
        seen
    }

    /// A masked client frame.
    fn frame(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode_masked_frame(&mut out, opcode, fin, payload, [1, 2, 3, 4]);
        out.to_vec()
    }

    fn close_frame(code: u16) -> Vec<u8> {
        Self::frame(OpCode::Close, true, &ringcast_codec::close_payload(CloseCode::from(code), ""))
    }

    /// Writes at most `limit` bytes of what is queued, in one transmit, as a socket that
    /// takes only so much would; returns how many.
    fn write_some(&mut self, limit: usize) -> usize {
        let Some(frames) = self.conn.poll_transmit() else { return 0 };
        let mut taken = 0;
        for frame in frames {
            let n = frame.len().min(limit - taken);
            self.wire.extend_from_slice(&frame.as_slice()[..n]);
            taken += n;
            if taken == limit {
                break;
            }
        }
        self.conn.handle_written(taken);
        taken
    }

    /// Writes everything queued.
    fn flush(&mut self) {
        while self.write_some(usize::MAX) > 0 {}
    }

    fn take_wire(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.wire)
    }

    /// The frames the server wrote, decoded as a client would.
    fn server_frames(&mut self) -> Vec<(OpCode, Vec<u8>)> {
        let wire = self.take_wire();
        let mut decoder = Decoder::new(DecoderConfig::new(Role::Client).assembly(ringcast_codec::Assembly::Frames));
        let mut buf = BytesMut::from(&wire[..]);
        let mut out = Vec::new();
        while let Some(event) = decoder.decode_buf(&mut buf).expect("the server's frames are valid") {
            out.push(match event {
                Incoming::Fragment { opcode, payload, .. } => (opcode, payload.to_vec()),
                Incoming::Ping(p) => (OpCode::Ping, p.to_vec()),
                Incoming::Pong(p) => (OpCode::Pong, p.to_vec()),
                Incoming::Close(frame) => {
                    (OpCode::Close, frame.map(|f| u16::from(f.code).to_be_bytes().to_vec()).unwrap_or_default())
                }
                other => panic!("{other:?}"),
            });
        }
        assert!(buf.is_empty(), "a partial frame on the wire");
        out
    }

    /// Moves the clock on and fires the deadline if it passed.
    fn advance(&mut self, by: Duration) {
        self.now += by;
        if self.conn.poll_timeout(&self.config).is_some_and(|at| at <= self.now) {
            self.conn.handle_timeout(&self.config, self.now);
        }
    }

    fn send_text(&mut self, text: &str) -> Result<(), Refused> {
        let bytes = PreparedMessage::text(text, self.config.split).into_bytes();
        self.conn.send_data(OutFrame::single(bytes, self.now), Outbound::Message, &self.config, self.now)
    }

    fn end(&mut self) -> Option<DisconnectReason> {
        self.conn.poll_end()
    }
}

fn close_code(payload: &[u8]) -> u16 {
    u16::from_be_bytes([payload[0], payload[1]])
}

// ---------------------------------------------------------------------- handshake

#[test]
fn an_upgrade_in_pieces_opens_and_frames_right_after_it_are_read() {
    let mut h = Harness::with(|b| b);
    let mut wire = REQUEST.to_vec();
    wire.extend(Harness::frame(OpCode::Text, true, b"hi"));
    let mut seen = Vec::new();
    for piece in wire.chunks(7) {
        seen.extend(h.feed(piece));
    }
    assert_eq!(seen, vec![Seen::Upgrade("/chat".into()), Seen::Text("hi".into())]);
    assert!(h.conn.is_open());
    assert_eq!(h.conn.buffered_input(), 0, "nothing held once the message is out");
}

#[test]
fn refusals_answer_with_a_status_and_end_after_the_answer() {
    let cases: [(&[u8], u16); 3] = [
        (b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", 400),
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /other HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", 404),
    ];
    for (request, status) in cases {
        let mut h = Harness::with(|b| b.path("/chat"));
        assert_eq!(h.feed(request), vec![Seen::Refused(status)], "{}", String::from_utf8_lossy(request));
        assert_eq!(h.end(), None, "the answer is not written yet");
        h.flush();
        assert!(h.take_wire().starts_with(format!("HTTP/1.1 {status}").as_bytes()));
        assert_eq!(h.end(), Some(DisconnectReason::HandshakeRefused(status)));
    }
    // The handler's refusal (allow said no).
    let mut h = Harness::with(|b| b);
    assert_eq!(h.feed(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").len(), 1);
    let mut h2 = Harness::with(|b| b);
    let mut request = REQUEST.to_vec();
    let mut input = &mut request[..];
    let Some(Event::Upgrade { .. }) = h2.conn.poll_input(&mut input, &h2.config, h2.now) else { panic!() };
    h2.conn.refuse(401, &h2.config, h2.now);
    h2.flush();
    assert!(h2.take_wire().starts_with(b"HTTP/1.1 401"));
    assert_eq!(h2.end(), Some(DisconnectReason::HandshakeRefused(401)));
    let _ = h;
}

#[test]
fn a_head_over_the_limit_is_431_without_waiting_for_its_end() {
    let mut h = Harness::with(|b| b);
    let mut seen = h.feed(b"GET / HTTP/1.1\r\n");
    for _ in 0..200 {
        seen.extend(h.feed(&[b'X'; 100]));
        if !seen.is_empty() {
            break;
        }
    }
    assert_eq!(seen, vec![Seen::Refused(431)]);
    assert!(h.conn.buffered_input() <= ringcast_codec::handshake::MAX_HEAD_LEN + 128);
}

#[test]
fn a_tls_client_hello_at_a_plain_connection_is_400_at_once() {
    // The first bytes of a ClientHello record: no head terminator will ever come, so the
    // answer must not wait for the handshake timeout (found by service/tests/faults.rs).
    let mut h = Harness::with(|b| b);
    assert_eq!(h.feed(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc]), vec![Seen::Refused(400)]);
    h.flush();
    let wire = String::from_utf8(h.take_wire()).unwrap();
    assert!(wire.starts_with("HTTP/1.1 400"), "{wire}");
    assert!(wire.contains("not TLS (wss://)"), "{wire}");
    assert_eq!(h.end(), Some(DisconnectReason::HandshakeRefused(400)));
    // Only the first byte counts: 0x16 later in a head is the parser's business.
    let mut h = Harness::with(|b| b);
    assert!(h.feed(b"GET / HTTP/1.1\r\nX: \x16").is_empty());
}

#[test]
fn plain_http_gets_its_body_and_ends_http_served() {
    let mut h = Harness::with(|b| b);
    let seen = h.feed(b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhel");
    assert!(seen.is_empty());
    assert_eq!(h.feed(b"lo"), vec![Seen::Http("/publish".into(), b"hello".to_vec())]);
    h.flush();
    assert_eq!(h.end(), Some(DisconnectReason::HttpServed));
    // Unsupported and oversized bodies are answered and end HttpServed too.
    let mut h = Harness::with(|b| b.max_http_body(4));
    assert_eq!(h.feed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n"), vec![Seen::HttpRefused(413)]);
    h.flush();
    assert_eq!(h.end(), Some(DisconnectReason::HttpServed));
}

#[test]
fn the_handshake_timeout_ends_a_silent_connection() {
    let mut h = Harness::with(|b| b.handshake_timeout(Duration::from_millis(500)));
    h.feed(b"GET / HTTP/1.1\r\n");
    h.advance(Duration::from_millis(499));
    assert_eq!(h.end(), None);
    h.advance(Duration::from_millis(1));
    assert_eq!(h.end(), Some(DisconnectReason::Timeout));
    assert_eq!(h.end(), None, "the reason is reported once");
    assert_eq!(h.conn.buffered_input(), 0, "an ended connection holds nothing");
}

// ---------------------------------------------------------------------- messages

#[test]
fn fragments_and_control_frames_in_arbitrary_pieces() {
    let mut wire = Harness::frame(OpCode::Text, false, "κό".as_bytes());
    wire.extend(Harness::frame(OpCode::Ping, true, b"p"));
    wire.extend(Harness::frame(OpCode::Continuation, true, "σμε".as_bytes()));
    wire.extend(Harness::frame(OpCode::Binary, true, &[9; 300]));
    for chunk in [1, 2, 5, 64, wire.len()] {
        let mut h = Harness::open(|b| b);
        let seen: Vec<Seen> = wire.chunks(chunk).flat_map(|piece| h.feed(piece)).collect();
        assert_eq!(
            seen,
            vec![Seen::Ping(b"p".to_vec()), Seen::Text("κόσμε".into()), Seen::Binary(vec![9; 300])],
            "chunk {chunk}"
        );
        h.flush();
        assert_eq!(h.server_frames(), vec![(OpCode::Pong, b"p".to_vec())], "the automatic pong");
        assert_eq!(h.conn.buffered_input(), 0);
    }
}

/// A client that offers permessage-deflate gets the extension in the 101 (with both
/// no-context-takeover parameters), its compressed messages are inflated whatever the
/// read boundaries, and between messages the connection holds no inflate state.
#[test]
fn permessage_deflate_is_negotiated_and_inflated_with_no_state_between_messages() {
    use ringcast_codec::deflate::{CompressionLevel, Compressor, ServerDeflateConfig, WindowBits};
    let request = String::from_utf8(REQUEST.to_vec())
        .unwrap()
        .replace("\r\n\r\n", "\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n");
    let text = "{\"price\":101.25,\"symbol\":\"ABC\"},".repeat(40);
    let mut compressor = Compressor::new(CompressionLevel::DEFAULT, WindowBits::MAX);
    let mut compressed = Vec::new();
    compressor.compress(text.as_bytes(), &mut compressed).unwrap();
    let mut frame = BytesMut::new();
    ringcast_codec::encode_masked_frame_with_rsv(&mut frame, OpCode::Text, true, 0b100, &compressed, [9, 8, 7, 6]);
    for chunk in [1, 3, 17, frame.len()] {
        let mut h = Harness::with(|b| b.permessage_deflate(ServerDeflateConfig::new()));
        assert_eq!(h.feed(request.as_bytes()), vec![Seen::Upgrade("/chat".into())]);
        h.flush();
        let head = String::from_utf8(h.take_wire()).unwrap();
        assert!(
            head.contains(
                "\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"
            ),
            "{head}"
        );
        assert!(h.conn.deflate_window().is_some());
        for _ in 0..2 {
            let seen: Vec<Seen> = frame.chunks(chunk).flat_map(|piece| h.feed(piece)).collect();
            assert_eq!(seen, vec![Seen::Text(text.clone())], "chunk {chunk}");
            assert_eq!(h.conn.buffered_input(), 0, "inflate state kept after the message");
        }
        // RSV1 on a ping is a protocol error even here.
        let mut ping = BytesMut::new();
        ringcast_codec::encode_masked_frame_with_rsv(&mut ping, OpCode::Ping, true, 0b100, b"x", [1, 1, 1, 1]);
        assert_eq!(h.feed(&ping), vec![Seen::ProtocolError(CloseCode::Protocol)]);
    }
    // Not configured: the same offer is ignored, and RSV1 is a protocol error.
    let mut h = Harness::with(|b| b);
    assert_eq!(h.feed(request.as_bytes()), vec![Seen::Upgrade("/chat".into())]);
    h.flush();
    assert!(!String::from_utf8(h.take_wire()).unwrap().contains("Extensions"));
    assert_eq!(h.conn.deflate_window(), None);
    assert_eq!(h.feed(&frame), vec![Seen::ProtocolError(CloseCode::Protocol)]);
}

/// Shedding for the input budget drops what the connection holds at once, closes an
/// upgraded connection with 1009 (ignoring what it sends after) and ends it with
/// `InputBudget`; a connection still in its handshake just ends.
#[test]
fn shedding_input_drops_what_is_held_and_closes_with_1009() {
    let mut h = Harness::open(|b| b);
    let mut frame = Harness::frame(OpCode::Binary, true, &vec![7u8; 100_000]);
    frame.truncate(60_000);
    assert_eq!(h.feed(&frame), vec![]);
    assert!(h.conn.buffered_input() >= 50_000, "holds {}", h.conn.buffered_input());
    h.conn.shed_input(&h.config, h.now);
    assert_eq!(h.conn.buffered_input(), 0);
    assert_eq!(h.feed(&vec![7u8; 30_000]), vec![], "input after the shed is ignored");
    assert_eq!(h.conn.buffered_input(), 0);
    h.flush();
    let frames = h.server_frames();
    assert_eq!(frames.len(), 1);
    assert_eq!((frames[0].0, close_code(&frames[0].1)), (OpCode::Close, 1009));
    assert_eq!(h.end(), Some(DisconnectReason::InputBudget));

    let mut h = Harness::with(|b| b);
    assert_eq!(h.feed(&REQUEST[..REQUEST.len() - 10]), vec![]);
    assert!(h.conn.buffered_input() > 0);
    h.conn.shed_input(&h.config, h.now);
    assert_eq!(h.conn.buffered_input(), 0);
    assert_eq!(h.end(), Some(DisconnectReason::InputBudget));
}

#[test]
fn frame_by_frame_mode_and_manual_pong() {
    let mut h = Harness::open(|b| b.frame_by_frame(true).manual_pong(true));
    let mut wire = Harness::frame(OpCode::Binary, false, b"ab");
    wire.extend(Harness::frame(OpCode::Ping, true, b""));
    wire.extend(Harness::frame(OpCode::Continuation, true, b"c"));
    assert_eq!(
        h.feed(&wire),
        vec![
            Seen::Fragment(OpCode::Binary, false, b"ab".to_vec()),
            Seen::Ping(vec![]),
            Seen::Fragment(OpCode::Continuation, true, b"c".to_vec())
        ]
    );
    h.flush();
    assert!(h.server_frames().is_empty(), "manual pong: nothing answered");
}

// ---------------------------------------------------------------------- close paths

#[test]
fn the_peer_closes_first_and_gets_its_code_echoed() {
    let mut h = Harness::open(|b| b);
    assert_eq!(h.feed(&Harness::close_frame(4001)), vec![Seen::Close(Some(4001))]);
    assert_eq!(h.end(), None, "the reply is not written yet");
    h.flush();
    let frames = h.server_frames();
    assert_eq!(frames.len(), 1);
    assert_eq!((frames[0].0, close_code(&frames[0].1)), (OpCode::Close, 4001));
    assert_eq!(h.end(), Some(DisconnectReason::Closed(CloseCode::Library(4001))));
    // Without a status code: an empty close back, reason 1005.
    let mut h = Harness::open(|b| b);
    h.feed(&Harness::frame(OpCode::Close, true, b""));
    h.flush();
    assert_eq!(h.server_frames(), vec![(OpCode::Close, vec![])]);
    assert_eq!(h.end(), Some(DisconnectReason::Closed(CloseCode::Status)));
}

#[test]
fn the_server_closes_first_and_waits_for_the_reply_or_the_close_timeout() {
    let mut h = Harness::open(|b| b.close_timeout(Duration::from_secs(2)));
    h.conn.close(PreparedMessage::close(CloseCode::Library(4000), "bye").into_bytes(), &h.config, h.now).unwrap();
    assert!(!h.conn.is_open());
    assert_eq!(h.send_text("late"), Err(Refused::Error(SendError::NotOpen)));
    assert_eq!(h.conn.close(Bytes::new(), &h.config, h.now), Err(SendError::NotOpen));
    h.flush();
    assert_eq!(close_code(&h.server_frames()[0].1), 4000);
    h.feed(&Harness::close_frame(4000));
    assert_eq!(h.end(), Some(DisconnectReason::Closed(CloseCode::Library(4000))));

    let mut h = Harness::open(|b| b.close_timeout(Duration::from_secs(2)));
    h.conn.close(PreparedMessage::close(CloseCode::Normal, "").into_bytes(), &h.config, h.now).unwrap();
    h.flush();
    h.advance(Duration::from_millis(1999));
    assert_eq!(h.end(), None);
    h.advance(Duration::from_millis(1));
    assert_eq!(h.end(), Some(DisconnectReason::Timeout));
}

#[test]
fn manual_close_waits_for_the_handler_within_the_close_timeout() {
    let mut h = Harness::open(|b| b.manual_close(true).close_timeout(Duration::from_secs(1)));
    h.feed(&Harness::close_frame(4001));
    h.flush();
    assert!(h.server_frames().is_empty(), "no automatic reply");
    h.advance(Duration::from_millis(500));
    h.conn.close(PreparedMessage::close(CloseCode::Library(4100), "mine").into_bytes(), &h.config, h.now).unwrap();
    h.flush();
    assert_eq!(close_code(&h.server_frames()[0].1), 4100);
    assert_eq!(h.end(), Some(DisconnectReason::Closed(CloseCode::Library(4001))), "the peer's code");
    // And when the handler never answers.
    let mut h = Harness::open(|b| {
        b.manual_close(true).close_timeout(Duration::from_secs(1)).idle_timeout(Some(Duration::from_millis(100)))
    });
    h.feed(&Harness::close_frame(4002));
    h.advance(Duration::from_millis(600));
    h.flush();
    assert!(h.server_frames().is_empty(), "no ping while the peer is closing");
    h.advance(Duration::from_millis(400));
    assert_eq!(h.end(), Some(DisconnectReason::Timeout));
}

#[test]
fn protocol_errors_close_with_their_code_then_end() {
    let cases: [(Vec<u8>, CloseCode); 4] = [
        (vec![0x81, 0x01, b'a'], CloseCode::Protocol), // unmasked
        (Harness::frame(OpCode::Text, true, b"\xff"), CloseCode::Invalid),
        (Harness::frame(OpCode::Continuation, true, b"x"), CloseCode::Protocol),
        (Harness::frame(OpCode::Binary, true, &[0; 100]), CloseCode::Size),
    ];
    for (wire, code) in cases {
        let mut h = Harness::open(|b| b.max_message_size(50));
        assert_eq!(h.feed(&wire), vec![Seen::ProtocolError(code)]);
        assert!(!h.conn.is_open());
        h.flush();
        let frames = h.server_frames();
        assert_eq!((frames[0].0, close_code(&frames[0].1)), (OpCode::Close, u16::from(code)));
        assert!(matches!(h.end(), Some(DisconnectReason::Protocol(e)) if e.close_code() == code));
    }
}

#[test]
fn stop_closes_open_connections_with_1001_and_drops_handshaking_ones() {
    let mut h = Harness::open(|b| b);
    h.conn.close_for(DisconnectReason::ServerStopping, CloseCode::Away, "server stopping", &h.config, h.now);
    h.flush();
    assert_eq!(close_code(&h.server_frames()[0].1), 1001);
    h.feed(&Harness::close_frame(1001));
    assert_eq!(h.end(), Some(DisconnectReason::ServerStopping));
    let mut h = Harness::with(|b| b);
    h.conn.close_for(DisconnectReason::ServerStopping, CloseCode::Away, "server stopping", &h.config, h.now);
    assert_eq!(h.end(), Some(DisconnectReason::ServerStopping));
    // A peer that does not answer: forced at the stop deadline, still ServerStopping.
    let mut h = Harness::open(|b| b);
    h.conn.close_for(DisconnectReason::ServerStopping, CloseCode::Away, "server stopping", &h.config, h.now);
    h.conn.force_end(DisconnectReason::ServerStopping);
    assert_eq!(h.end(), Some(DisconnectReason::ServerStopping));
}

#[test]
fn eof_io_errors_and_aborts() {
    let mut h = Harness::open(|b| b);
    h.conn.handle_eof();
    assert_eq!(h.end(), Some(DisconnectReason::Eof));
    let mut h = Harness::open(|b| b);
    h.conn.handle_io_error("connection reset".into());
    assert_eq!(h.end(), Some(DisconnectReason::Io("connection reset".into())));
    let mut h = Harness::open(|b| b);
    h.send_text("dropped with the connection").unwrap();
    h.conn.abort();
    assert_eq!(h.end(), Some(DisconnectReason::Aborted));
    assert!(h.conn.poll_transmit().is_none(), "nothing is written after an abort");
    // The peer hanging up after our close keeps our reason.
    let mut h = Harness::open(|b| b);
    h.conn.close_for(DisconnectReason::SlowConsumer, CloseCode::Policy, "", &h.config, h.now);
    h.conn.handle_eof();
    assert_eq!(h.end(), Some(DisconnectReason::SlowConsumer));
    // While an answer drains, the peer closing its half changes nothing.
    let mut h = Harness::open(|b| b);
    h.feed(&Harness::close_frame(1000));
    h.conn.handle_eof();
    assert_eq!(h.end(), None);
    h.flush();
    assert_eq!(h.end(), Some(DisconnectReason::Closed(CloseCode::Normal)));
}

// ---------------------------------------------------------------------- pings and idle

#[test]
fn idle_connections_are_pinged_and_dropped_if_silent() {
    let idle = Duration::from_millis(300);
    let mut h = Harness::open(|b| b.idle_timeout(Some(idle)));
    h.advance(Duration::from_millis(299));
    h.flush();
    assert!(h.server_frames().is_empty());
    h.advance(Duration::from_millis(1));
    h.flush();
    assert_eq!(h.server_frames(), vec![(OpCode::Ping, vec![])]);
    // The pong (any input) answers it: a new idle period starts.
    h.advance(Duration::from_millis(100));
    assert_eq!(h.feed(&Harness::frame(OpCode::Pong, true, b"")), vec![Seen::Pong(vec![])]);
    h.advance(Duration::from_millis(299));
    h.flush();
    assert!(h.server_frames().is_empty());
    assert_eq!(h.end(), None);
    h.advance(Duration::from_millis(1));
    h.flush();
    assert_eq!(h.server_frames(), vec![(OpCode::Ping, vec![])]);
    h.advance(idle);
    assert_eq!(h.end(), Some(DisconnectReason::Timeout));
}

// ---------------------------------------------------------------------- the send queue

#[test]
fn partial_writes_resume_where_they_stopped() {
    let mut h = Harness::open(|b| b);
    for text in ["one", "two", "three"] {
        h.send_text(text).unwrap();
    }
    while h.write_some(3) > 0 {}
    let frames = h.server_frames();
    let texts: Vec<&[u8]> = frames.iter().map(|(_, p)| p.as_slice()).collect();
    assert_eq!(texts, [b"one".as_slice(), b"two", b"three"]);
    assert_eq!(h.conn.queued_bytes(), 0);
}

#[test]
fn one_write_at_a_time_and_frames_queued_meanwhile_follow() {
    let mut h = Harness::open(|b| b);
    h.send_text("first").unwrap();
    assert!(h.conn.needs_listing());
    assert!(!h.conn.needs_listing(), "listed once");
    let frames = h.conn.poll_transmit().map(|f| f.count());
    assert_eq!(frames, Some(1));
    assert!(h.conn.poll_transmit().is_none(), "a write is in flight");
    h.send_text("second").unwrap();
    h.conn.handle_written(7);
    h.conn.unlist();
    h.flush();
    let texts: Vec<Vec<u8>> = h.server_frames().into_iter().map(|(_, p)| p).collect();
    assert_eq!(texts, vec![b"second".to_vec()], "the first was written by the simulated write above");
}

#[test]
fn slow_consumers_drop_new_messages_or_are_disconnected() {
    let mut h = Harness::open(|b| b.send_queue_limit(10));
    h.send_text("0123456789").unwrap();
    assert_eq!(h.send_text("x"), Err(Refused::Full(Overflow::Dropped)));
    assert!(h.conn.is_open());
    h.flush();
    assert!(h.send_text("fits again").is_ok(), "it catches up");

    let mut h = Harness::open(|b| {
        b.send_queue_limit(10).slow_consumer(SlowConsumerPolicy::Disconnect).close_timeout(Duration::from_secs(1))
    });
    h.send_text("0123456789").unwrap();
    assert_eq!(h.send_text("x"), Err(Refused::Full(Overflow::Disconnecting)));
    assert!(!h.conn.is_open());
    h.flush();
    let frames = h.server_frames();
    assert_eq!(close_code(&frames.last().unwrap().1), 1008);
    h.advance(Duration::from_secs(1));
    assert_eq!(h.end(), Some(DisconnectReason::SlowConsumer));
}

#[test]
fn streamed_fragments_hold_other_messages_back() {
    let mut h = Harness::open(|b| b);
    let frame = |op, fin, p: &[u8]| OutFrame::single(PreparedMessage::frame(op, fin, p).into_bytes(), Instant::now());
    h.conn.send_data(frame(OpCode::Text, false, b"a"), Outbound::Fragment { fin: false }, &h.config, h.now).unwrap();
    h.send_text("message").unwrap();
    h.conn
        .send_data(frame(OpCode::Continuation, true, b"b"), Outbound::Fragment { fin: true }, &h.config, h.now)
        .unwrap();
    h.flush();
    let frames: Vec<(OpCode, Vec<u8>)> = h.server_frames();
    assert_eq!(
        frames,
        vec![(OpCode::Text, b"a".to_vec()), (OpCode::Continuation, b"b".to_vec()), (OpCode::Text, b"message".to_vec())]
    );
}

#[test]
fn the_idle_connection_is_small() {
    let size = std::mem::size_of::<Conn<()>>();
    assert!(size <= 256, "Conn<()> is {size} bytes");
}
