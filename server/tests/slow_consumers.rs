//! Slow consumers: a raw client that completes the handshake and then never reads, while
//! the server broadcasts 200 × 64 KiB with a 256 KiB send-queue limit. Under DropNew its
//! messages are dropped (and it resumes once it catches up); under Disconnect it is
//! closed with 1008. Either way, normal clients connected at the same time get every
//! message, and what the slow one is sent stays within the bound.

mod common;

use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpStream};

use common::*;
use ringcast::codec::Role;
use ringcast::codec::frame::{FrameHeader, FrameRules, HeaderParse};
use ringcast::{DisconnectReason, IoBackend, OpCode, SlowConsumerPolicy};
use testkit::{ConnectOpts, Drain, Payload, Peer};

/// At least this many messages are broadcast (more if the kernel buffers a lot).
const MIN_MESSAGES: usize = 200;
const MESSAGE_LEN: usize = 64 << 10;
const QUEUE_LIMIT: usize = 256 << 10;

/// Message `i`: its number, then filler, 64 KiB in all.
fn message(i: usize) -> String {
    let mut m = format!("{i:05}:");
    m.extend(std::iter::repeat_n((b'a' + (i % 26) as u8) as char, MESSAGE_LEN - m.len()));
    m
}

fn number_of(data: &[u8]) -> usize {
    assert_eq!(data.len(), MESSAGE_LEN);
    let i: usize = std::str::from_utf8(&data[..5]).unwrap().parse().unwrap();
    assert!(data == message(i).as_bytes(), "message {i} corrupted");
    i
}

/// A client with a tiny receive buffer that completes the handshake and then reads
/// nothing until told to.
fn slow_client(addr: SocketAddr) -> RawClient {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect_timeout(&addr.into(), WAIT).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.set_write_timeout(Some(WAIT)).unwrap();
    RawClient::open_on(stream, addr, "/")
}

/// The most bytes that can have gone to the slow client without being limited by the
/// send queue: the queue limit, one message let through an empty queue, and what the
/// kernel buffers on both ends (the send buffer can autotune up to `tcp_wmem`'s max).
fn bound_for_slow_client(slow: &TcpStream) -> usize {
    let wmem_max: usize = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(4 << 20);
    let rcvbuf = socket2::SockRef::from(slow).recv_buffer_size().unwrap();
    QUEUE_LIMIT + MESSAGE_LEN + 16 + wmem_max + rcvbuf
}

/// How many 64 KiB messages to broadcast: 200, or more where the kernel could buffer
/// that much for the slow client (so that its queue always overflows).
fn message_count(slow: &TcpStream) -> usize {
    (2 * bound_for_slow_client(slow) / MESSAGE_LEN).max(MIN_MESSAGES)
}

/// Broadcasts the messages, two at a time, each pair once both fast clients have
/// the previous one (so that they never fall behind by more than the queue holds);
/// checks that they get every message, in order.
fn flood(server: &Running<Recorder>, fast: &mut [Peer; 2], count: usize) {
    for pair in (0..count).collect::<Vec<_>>().chunks(2) {
        for &i in pair {
            server.broadcast(&message(i));
        }
        for peer in fast.iter_mut() {
            let drained = peer.drain(&Drain::id("fast").wait_count(pair.len()).list());
            assert!(drained.satisfied && drained.total == pair.len(), "{}: {drained:?}", peer.kind());
            for (m, &i) in drained.messages.iter().zip(pair) {
                assert!(m.payload == Payload::Text(message(i)), "{}: message {i} missing or wrong", peer.kind());
            }
        }
    }
}

fn fast_clients(server: &Running<Recorder>) -> [Peer; 2] {
    let mut fast = [Peer::python(), Peer::node()];
    for peer in &mut fast {
        peer.connect("fast", &server.url("/"), &ConnectOpts::new().collect());
    }
    fast
}

/// DropNew: the slow client's messages are dropped once its queue is full; the fast
/// clients get all 200; every message was either queued or dropped per recipient; what
/// the slow client is eventually sent is a gap-free-in-order subset within the bound;
/// once it has caught up it receives new broadcasts again.
fn drop_new(backend: IoBackend) {
    let rec = Recorder::silent();
    let builder = builder(backend).send_queue_limit(QUEUE_LIMIT).slow_consumer(SlowConsumerPolicy::DropNew);
    let server = Running::start(builder, rec.clone());
    let mut slow = slow_client(server.addr());
    let mut fast = fast_clients(&server);
    wait_until("3 open connections", WAIT, || server.stats().websockets == 3);
    let count = message_count(&slow.stream);

    flood(&server, &mut fast, count);
    // Per recipient, each message was queued or dropped (the fast ones got all 200).
    // The slow client's worker may still be a few broadcasts behind the fast ones'.
    let total = 3 * count as u64;
    wait_until("every message queued or dropped", WAIT, || {
        let stats = server.stats();
        stats.messages_out + stats.dropped_messages == total
    });
    let stats = server.stats();
    assert!(stats.dropped_messages > 0, "nothing was dropped for the slow consumer: {stats:?}");
    assert_eq!(stats.slow_consumer_disconnects, 0);
    let slow_queued = stats.messages_out - 2 * count as u64;

    // The slow client now reads: exactly the queued messages, in order.
    let bound = bound_for_slow_client(&slow.stream);
    let mut last = None;
    for _ in 0..slow_queued {
        let (op, data, _) = slow.read_message();
        assert_eq!(op, OpCode::Text);
        let i = number_of(&data);
        assert!(last.is_none_or(|l| i > l), "message {i} after {last:?}");
        last = Some(i);
    }
    let received = slow_queued as usize * (MESSAGE_LEN + 10);
    assert!(received <= bound, "the slow client was sent {received} bytes, more than the bound {bound}");
    // Caught up: it receives again, like everyone.
    server.broadcast("after the flood");
    assert_eq!(slow.read_text(), "after the flood");
    for peer in &mut fast {
        let drained = peer.drain(&Drain::id("fast").wait_count(1).list());
        assert_eq!(drained.messages.len(), 1);
        assert_eq!(drained.messages[0].payload, Payload::Text("after the flood".into()));
    }
    assert_eq!(server.stats().dropped_messages, stats.dropped_messages);
    assert!(!rec.log.events().iter().any(|e| matches!(e, Ev::Disconnect(..))));
    slow.send_close(1000, "");
    assert_eq!(slow.expect_close(), 1000);
    server.stop();
}

/// Reads whatever the server sent until it ends the connection; returns the numbers of
/// the whole data messages and the close code if a close frame arrived. A final frame
/// cut short by the server dropping the connection is ignored.
fn read_until_end(stream: &mut TcpStream) -> (Vec<usize>, Option<u16>) {
    let mut bytes = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the slow client was never disconnected: {e}"),
        }
    }
    let rules = FrameRules::for_role(Role::Client, usize::MAX >> 1);
    let (mut at, mut numbers, mut close) = (0, Vec::new(), None);
    while let Ok(HeaderParse::Complete { header, header_len }) = FrameHeader::parse(&bytes[at..], &rules) {
        let end = at + header_len + header.payload_len as usize;
        if end > bytes.len() {
            break;
        }
        let payload = &bytes[at + header_len..end];
        match header.opcode {
            OpCode::Text => numbers.push(number_of(payload)),
            OpCode::Close => close = Some(u16::from_be_bytes([payload[0], payload[1]])),
            other => panic!("unexpected {other:?} frame"),
        }
        assert!(close.is_none() || header.opcode == OpCode::Close, "data after the close frame");
        at = end;
    }
    (numbers, close)
}

/// Disconnect: the slow client is closed (1008 if it ever reads that far, else the TCP
/// connection just ends) and counted once; the fast clients are unaffected and nothing
/// is dropped for them.
fn disconnect(backend: IoBackend) {
    let rec = Recorder::silent();
    let builder = builder(backend)
        .send_queue_limit(QUEUE_LIMIT)
        .slow_consumer(SlowConsumerPolicy::Disconnect)
        .close_timeout(std::time::Duration::from_millis(300));
    let server = Running::start(builder, rec.clone());
    let mut slow = slow_client(server.addr());
    let slow_id = rec.log.wait_opened(1)[0];
    let mut fast = fast_clients(&server);
    wait_until("3 open connections", WAIT, || server.stats().websockets == 3);
    let count = message_count(&slow.stream);

    flood(&server, &mut fast, count);
    assert_eq!(rec.log.wait_disconnect(slow_id), DisconnectReason::SlowConsumer);
    let stats = server.stats();
    assert_eq!(stats.slow_consumer_disconnects, 1, "{stats:?}");
    assert_eq!(stats.dropped_messages, 0, "{stats:?}");
    let slow_queued = (stats.messages_out - 2 * count as u64) as usize;
    assert!(slow_queued < count);

    let bound = bound_for_slow_client(&slow.stream);
    let (numbers, close) = read_until_end(&mut slow.stream);
    assert!(numbers.len() <= slow_queued, "got {} messages, {slow_queued} were queued", numbers.len());
    assert!(numbers.windows(2).all(|w| w[0] + 1 == w[1]), "not in order without gaps: {numbers:?}");
    assert!(numbers.first().is_none_or(|&n| n == 0));
    assert!(numbers.len() * MESSAGE_LEN <= bound);
    if let Some(code) = close {
        assert_eq!(code, 1008);
    }
    // Only the slow one went.
    assert_eq!(rec.log.events().iter().filter(|e| matches!(e, Ev::Disconnect(..))).count(), 1);
    assert_eq!(server.stats().websockets, 2);
    server.broadcast("still there?");
    for peer in &mut fast {
        let drained = peer.drain(&Drain::id("fast").wait_count(1).list());
        assert_eq!(drained.messages[0].payload, Payload::Text("still there?".into()));
    }
    server.stop();
}

/// The kernel send buffer the cap test gives each connection.
const SEND_BUFFER: usize = 64 << 10;

/// `socket_send_buffer`: with the kernel's send buffer capped, a client that never reads
/// has its messages dropped after the queue limit plus about the cap, not after the few
/// MiB that autotuning lets the kernel take first (the soak found subscribers needing
/// minutes to reach their bound that way). Broadcasts one message at a time until the
/// first drop and counts what the slow client was given before it.
fn send_buffer_cap(backend: IoBackend) {
    let rec = Recorder::silent();
    let builder = builder(backend)
        .send_queue_limit(QUEUE_LIMIT)
        .socket_send_buffer(SEND_BUFFER)
        .slow_consumer(SlowConsumerPolicy::DropNew);
    let server = Running::start(builder, rec.clone());
    let slow = slow_client(server.addr());
    wait_until("the slow client is open", WAIT, || server.stats().websockets == 1);
    let limit = 4 * bound_for_slow_client(&slow.stream) / MESSAGE_LEN;
    let mut sent = 0u64;
    while server.stats().dropped_messages == 0 {
        assert!((sent as usize) < limit, "no drop after {sent} messages of {MESSAGE_LEN} B");
        server.broadcast(&message(sent as usize));
        sent += 1;
        wait_until("the broadcast queued or dropped", WAIT, || {
            let stats = server.stats();
            stats.messages_out + stats.dropped_messages == sent
        });
    }
    let given = server.stats().messages_out as usize * (MESSAGE_LEN + 10);
    // The kernel doubles SO_SNDBUF; the client's receive buffer holds some too.
    let rcvbuf = socket2::SockRef::from(&slow.stream).recv_buffer_size().unwrap();
    let bound = QUEUE_LIMIT + MESSAGE_LEN + 2 * SEND_BUFFER + rcvbuf + 2 * MESSAGE_LEN;
    assert!(given <= bound, "{given} B went to the slow client before the first drop, more than {bound} B");
    server.stop();
}

backends!(drop_new, disconnect, send_buffer_cap);
