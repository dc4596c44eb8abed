//! Messages in both directions: echo with real peers (Python `websockets`, Node `ws`),
//! fragmented and large input, frame-by-frame delivery, and outgoing messages split
//! into frames of a configured size — reassembled by the peers and checked on the wire
//! by a raw client.

mod common;

use common::*;
use ringcast::codec::frame::header_len_for;
use ringcast::{Connection, ConnectionId, Handler, IoBackend, OpCode, Split};
use testkit::{ConnectOpts, Peer, PeerKind};

/// Text (non-ASCII and empty), binary (empty and 1 MiB) and fragmented messages come
/// back intact to both peers; the handler saw every message once, whole, in order.
fn echo(backend: IoBackend) {
    let rec = Recorder::echo();
    let server = Running::start(builder(backend), rec.clone());
    let big = pattern(1 << 20, 7);
    for kind in PeerKind::ALL {
        let mut peer = Peer::spawn(kind);
        peer.connect("a", &server.url("/echo"), &ConnectOpts::new());
        for text in ["héllo ✓ 🚀", ""] {
            peer.send_text("a", text);
            assert_eq!(peer.expect_text("a"), text, "{kind}");
        }
        for bin in [&[0u8, 1, 2, 0x80, 0xfe, 0xff][..], &[]] {
            peer.send_binary("a", bin);
            assert_eq!(peer.expect_binary("a"), bin, "{kind}");
        }
        peer.send_binary("a", &big);
        assert!(peer.expect_binary("a") == big, "{kind}: the 1 MiB binary came back different");
        // "✓" is cut between the second and third fragment: UTF-8 is checked across them.
        peer.send_text_fragments("a", &["frag", "men", "ted ✓"]);
        assert_eq!(peer.expect_text("a"), "fragmented ✓", "{kind}");
        peer.send_binary_fragments("a", &[&[1, 2], &[3], &[4, 5, 6]]);
        assert_eq!(peer.expect_binary("a"), [1, 2, 3, 4, 5, 6], "{kind}");
        peer.close("a", 1000, "done");
        assert_eq!(peer.expect_close("a").0, 1000, "{kind}");
        // permessage-deflate offered: not negotiated (the server has no extensions), and
        // the connection works uncompressed.
        let opened = peer.connect("z", &server.url("/"), &ConnectOpts::new().compression());
        assert_eq!(opened.extensions, None, "{kind}");
        peer.send_text("z", &"compressible ".repeat(100));
        assert_eq!(peer.expect_text("z"), "compressible ".repeat(100), "{kind}");
        peer.close("z", 1000, "");
        assert_eq!(peer.expect_close("z").0, 1000, "{kind}");
    }
    let events =
        rec.log.wait("four disconnects", |evs| evs.iter().filter(|e| matches!(e, Ev::Disconnect(..))).count() == 4);
    // Opened in turn: python a, python z, node a, node z.
    let ids = rec.log.opened();
    assert_eq!(ids.len(), 4);
    for id in [ids[0], ids[2]] {
        let messages: Vec<&Ev> =
            events.iter().filter(|e| e.id() == id && matches!(e, Ev::Text(..) | Ev::Binary(..))).collect();
        let expected = [
            Ev::Text(id, "héllo ✓ 🚀".into()),
            Ev::Text(id, String::new()),
            Ev::Binary(id, vec![0, 1, 2, 0x80, 0xfe, 0xff]),
            Ev::Binary(id, vec![]),
            Ev::Binary(id, big.clone()),
            Ev::Text(id, "fragmented ✓".into()),
            Ev::Binary(id, vec![1, 2, 3, 4, 5, 6]),
        ];
        assert!(messages.len() == expected.len(), "handler saw {} messages on {id}", messages.len());
        for (got, want) in messages.iter().zip(&expected) {
            assert!(*got == want, "on {id}: handler saw {got:?}, expected {want:?}");
        }
    }
    // A 6 MiB message from a raw client: more than one maximal read on the server.
    let mut raw = RawClient::open(server.addr(), "/");
    let huge = pattern(6 << 20, 13);
    raw.send_frame(OpCode::Binary, true, &huge);
    let (op, data, _) = raw.read_message();
    assert!(op == OpCode::Binary && data == huge, "6 MiB echo differs");
    raw.send_close(1000, "");
    assert_eq!(raw.expect_close(), 1000);
    server.stop();
}

/// Control frames between the fragments of a message are answered at once, and the
/// message is delivered whole.
fn control_frames_between_fragments(backend: IoBackend) {
    let rec = Recorder::echo();
    let server = Running::start(builder(backend), rec.clone());
    let mut raw = RawClient::open(server.addr(), "/");
    raw.send_frame(OpCode::Text, false, "frag ✓".as_bytes());
    raw.send_frame(OpCode::Ping, true, b"mid-message");
    let pong = raw.expect_frame();
    assert_eq!((pong.header.opcode, pong.payload.as_slice()), (OpCode::Pong, &b"mid-message"[..]));
    raw.send_frame(OpCode::Pong, true, b"unsolicited");
    raw.send_frame(OpCode::Continuation, true, b"ment");
    assert_eq!(raw.read_text(), "frag ✓ment");
    let id = rec.log.wait_opened(1)[0];
    let events = rec.log.events();
    let mine: Vec<&Ev> = events.iter().filter(|e| matches!(e, Ev::Ping(..) | Ev::Pong(..) | Ev::Text(..))).collect();
    assert_eq!(
        mine,
        [
            &Ev::Ping(id, b"mid-message".to_vec()),
            &Ev::Pong(id, b"unsolicited".to_vec()),
            &Ev::Text(id, "frag ✓ment".into())
        ]
    );
    raw.send_close(1000, "");
    assert_eq!(raw.expect_close(), 1000);
    server.stop();
}

/// The frames a peer puts on the wire for a message sent as `fragments`: Node `ws`
/// sends one frame per fragment, FIN on the last; Python `websockets` sends every
/// fragment without FIN, then an empty FIN continuation.
fn peer_frames(kind: PeerKind, id: ConnectionId, opcode: OpCode, fragments: &[&[u8]]) -> Vec<Ev> {
    let mut frames: Vec<Ev> = fragments
        .iter()
        .enumerate()
        .map(|(i, f)| Ev::Frame(id, if i == 0 { opcode } else { OpCode::Continuation }, false, f.to_vec()))
        .collect();
    match kind {
        PeerKind::Node => {
            if let Some(Ev::Frame(_, _, fin, _)) = frames.last_mut() {
                *fin = true;
            }
        }
        PeerKind::Python => frames.push(Ev::Frame(id, OpCode::Continuation, true, vec![])),
    }
    frames
}

fn frames_of(events: &[Ev], id: ConnectionId) -> Vec<Ev> {
    events.iter().filter(|e| e.id() == id && matches!(e, Ev::Frame(..))).cloned().collect()
}

/// With frame_by_frame, every data frame reaches `on_frame` as it arrived (opcode, FIN,
/// payload) and `on_text` / `on_binary` are never called.
fn frame_by_frame(backend: IoBackend) {
    let rec = Recorder::echo();
    let server = Running::start(builder(backend).frame_by_frame(true), rec.clone());
    for (n, kind) in PeerKind::ALL.into_iter().enumerate() {
        let mut peer = Peer::spawn(kind);
        peer.connect("a", &server.url("/"), &ConnectOpts::new());
        let id = rec.log.wait_opened(n + 1)[n];
        peer.send_text_fragments("a", &["frag", "men", "ted ✓"]);
        peer.send_binary_fragments("a", &[&[1, 2], &[3]]);
        peer.send_text("a", "whole");
        let mut expected = peer_frames(kind, id, OpCode::Text, &[b"frag", b"men", "ted ✓".as_bytes()]);
        expected.extend(peer_frames(kind, id, OpCode::Binary, &[&[1, 2], &[3]]));
        expected.push(Ev::Frame(id, OpCode::Text, true, b"whole".to_vec()));
        let events = rec.log.wait("every frame", |evs| frames_of(evs, id).len() >= expected.len());
        assert_eq!(frames_of(&events, id), expected, "{kind}");
        peer.close("a", 1000, "");
        assert_eq!(peer.expect_close("a").0, 1000, "{kind}");
        rec.log.wait_disconnect(id);
    }
    // Exact frames from a raw client, with a ping between two fragments.
    let mut raw = RawClient::open(server.addr(), "/");
    let id = rec.log.wait_opened(3)[2];
    raw.send_frame(OpCode::Binary, false, b"one");
    raw.send_frame(OpCode::Ping, true, b"between");
    raw.send_frame(OpCode::Continuation, false, b"");
    raw.send_frame(OpCode::Continuation, true, b"three");
    let pong = raw.expect_frame();
    assert_eq!((pong.header.opcode, pong.payload.as_slice()), (OpCode::Pong, &b"between"[..]));
    let expected = [
        Ev::Frame(id, OpCode::Binary, false, b"one".to_vec()),
        Ev::Frame(id, OpCode::Continuation, false, vec![]),
        Ev::Frame(id, OpCode::Continuation, true, b"three".to_vec()),
    ];
    let events = rec.log.wait("3 raw frames", |evs| frames_of(evs, id).len() >= 3);
    assert_eq!(frames_of(&events, id), expected);
    assert!(events.contains(&Ev::Ping(id, b"between".to_vec())));
    raw.send_close(1000, "");
    assert_eq!(raw.expect_close(), 1000);
    let events = rec.log.events();
    assert!(
        !events.iter().any(|e| matches!(e, Ev::Text(..) | Ev::Binary(..))),
        "on_text/on_binary called: {events:#?}"
    );
    server.stop();
}

/// Frame sizes (header included) that outgoing messages are split to. 3 is the smallest
/// possible (2-byte header + 1 byte); 129..131 straddle the 2→4-byte header step and
/// 65545..65547 the 4→10-byte step.
const WIRE_FRAME_SIZES: &[usize] = &[3, 4, 64, 127, 129, 130, 131, 1024, 4096, 16384, 65545, 65546, 65547, 200_000];

/// Checks that `frames` form one message of `opcode` split to at most `frame_size`
/// bytes per frame: the first carries the opcode, the rest are continuations, only the
/// last has FIN, and every frame but the last is as full as the size allows.
#[track_caller]
fn check_split(frames: &[WireFrame], opcode: OpCode, frame_size: usize, total: usize, what: &str) {
    assert!(!frames.is_empty());
    for (i, frame) in frames.iter().enumerate() {
        assert!(
            frame.wire_len <= frame_size,
            "{what}: frame {i} is {} bytes on the wire, over the frame size {frame_size}",
            frame.wire_len
        );
        let want = if i == 0 { opcode } else { OpCode::Continuation };
        assert_eq!(frame.header.opcode, want, "{what}: opcode of frame {i}");
        assert_eq!(frame.header.fin, i + 1 == frames.len(), "{what}: FIN of frame {i} of {}", frames.len());
        assert_eq!(frame.header.rsv, 0);
    }
    let payload: usize = frames.iter().map(|f| f.payload.len()).sum();
    assert_eq!(payload, total, "{what}: payload bytes");
    // Not split more than needed: every frame but the last is as full as the size allows
    // (one more payload byte would not fit).
    for (i, frame) in frames[..frames.len() - 1].iter().enumerate() {
        let more = frame.payload.len() + 1;
        assert!(
            header_len_for(more as u64, false) + more > frame_size,
            "{what}: frame {i} carries only {} payload bytes",
            frame.payload.len()
        );
    }
}

/// A raw client checks the wire: broadcasts (Broadcaster) and replies (Connection)
/// split at each frame size never exceed it, header included, and reassemble intact.
fn split_messages_on_the_wire(backend: IoBackend) {
    // Below 3 bytes a frame cannot carry payload.
    assert!(builder(backend).split_messages(Some(2)).is_err());
    let big = pattern(1 << 20, 3);
    let text = "splitting ✓ ünïcödé 🚀 across frames ".repeat(40);
    for &frame_size in WIRE_FRAME_SIZES {
        // A queue large enough for all four broadcasts at once (1 MiB in 3-byte frames
        // is 3 MiB on the wire): nothing may be dropped as a slow consumer here.
        let builder = builder(backend).split_messages(Some(frame_size)).unwrap().send_queue_limit(64 << 20);
        let server = Running::start(builder, Recorder::echo());
        assert_eq!(server.split(), Split::FrameSize(frame_size));
        let mut client = RawClient::open(server.addr(), "/");
        let what = format!("frame size {frame_size}");
        wait_until("the client to be open", WAIT, || server.stats().websockets == 1);
        // From the test thread, through every shard.
        server.broadcast(&big);
        server.broadcast(&text);
        server.broadcast(b"");
        server.broadcast("x");
        let (op, data, frames) = client.read_message();
        check_split(&frames, OpCode::Binary, frame_size, big.len(), &format!("{what}, 1 MiB broadcast"));
        assert!((op, data == big) == (OpCode::Binary, true), "{what}: 1 MiB broadcast reassembled differently");
        let (op, data, frames) = client.read_message();
        check_split(&frames, OpCode::Text, frame_size, text.len(), &format!("{what}, text broadcast"));
        assert_eq!((op, String::from_utf8(data).unwrap()), (OpCode::Text, text.clone()));
        let (op, data, frames) = client.read_message();
        check_split(&frames, OpCode::Binary, frame_size, 0, &format!("{what}, empty broadcast"));
        assert_eq!((op, data.len()), (OpCode::Binary, 0));
        let (_, data, frames) = client.read_message();
        check_split(&frames, OpCode::Text, frame_size, 1, &format!("{what}, 1-byte broadcast"));
        assert_eq!(data, b"x");
        // The echo goes through Connection::send_text.
        client.send_text("echo ✓");
        let (op, data, frames) = client.read_message();
        check_split(&frames, OpCode::Text, frame_size, "echo ✓".len(), &format!("{what}, echo"));
        assert_eq!((op, data.as_slice()), (OpCode::Text, "echo ✓".as_bytes()));
        client.send_close(1000, "");
        assert_eq!(client.expect_close(), 1000);
        assert_eq!(server.stats().dropped_messages, 0);
        server.stop();
    }
}

/// Both peers reassemble split messages intact: small text (with multi-byte characters
/// cut between frames), small binary and 1 MB binary echoes at several frame sizes.
fn split_messages_reassembled_by_peers(backend: IoBackend) {
    let mut peers = [Peer::python(), Peer::node()];
    // 1 MB (not MiB): in 64-byte frames (62 payload bytes each) that is 16130 frames,
    // under the 16384 fragments per message a Node `ws` client accepts by default.
    let big = pattern(1_000_000, 11);
    let small = pattern(1000, 5);
    let text = "ünïcödé ✓ 🚀 split";
    for frame_size in [3, 64, 1024, 4096, 16384] {
        let server = Running::start(builder(backend).split_messages(Some(frame_size)).unwrap(), Recorder::echo());
        for peer in &mut peers {
            let kind = peer.kind();
            let id = format!("f{frame_size}");
            peer.connect(&id, &server.url("/"), &ConnectOpts::new());
            peer.send_text(&id, text);
            assert_eq!(peer.expect_text(&id), text, "{kind}, frame size {frame_size}");
            peer.send_binary(&id, &small);
            assert!(peer.expect_binary(&id) == small, "{kind}, frame size {frame_size}: 1000 bytes differ");
            // 1 MB in 3-byte frames is a million frames: over Node's fragment cap and too
            // slow for the peers' parsers; the raw client covers that size on the wire.
            if frame_size > 3 {
                peer.send_binary(&id, &big);
                assert!(peer.expect_binary(&id) == big, "{kind}, frame size {frame_size}: 1 MB differs");
            }
            peer.close(&id, 1000, "");
            assert_eq!(peer.expect_close(&id).0, 1000);
        }
        server.stop();
    }
}

/// Streams one text message in two frames with `Connection::send_frame`: `stream`
/// sends the first (no FIN), `finish` the continuation.
#[derive(Clone, Default)]
struct Streamer {
    log: Log,
}

impl Handler for Streamer {
    type Data = ();

    fn on_handshake_response_sent(&self, conn: &mut Connection<'_, Self::Data>) {
        self.log.push(Ev::Open(conn.id(), String::new()));
    }

    fn on_text(&self, conn: &mut Connection<'_, Self::Data>, text: &str) {
        self.log.push(Ev::Text(conn.id(), text.to_owned()));
        match text {
            "stream" => conn.send_frame(OpCode::Text, false, b"first half, ").unwrap(),
            "finish" => conn.send_frame(OpCode::Continuation, true, b"second half").unwrap(),
            _ => {}
        }
    }
}

/// A message an application streams frame by frame with `send_frame` must not have
/// other data frames (a broadcast from another thread) put between its fragments:
/// RFC 6455 §5.4 forbids interleaving fragments of different messages, and clients fail
/// the connection for it. The broadcast must follow the streamed message.
fn streamed_fragments_are_not_interleaved_with_other_messages(backend: IoBackend) {
    let streamer = Streamer::default();
    let server = Running::start(builder(backend), streamer.clone());
    // On the wire, with a raw client.
    let mut raw = RawClient::open(server.addr(), "/");
    raw.send_text("stream");
    let first = raw.expect_frame();
    assert_eq!((first.header.opcode, first.header.fin), (OpCode::Text, false));
    let queued = server.stats().messages_out;
    server.broadcast("broadcast while streaming");
    wait_until("the broadcast to be handled", WAIT, || {
        server.stats().messages_out + server.stats().dropped_messages > queued
    });
    raw.send_text("finish");
    let frames: Vec<(OpCode, bool, String)> = (0..2)
        .map(|_| raw.expect_frame())
        .map(|f| (f.header.opcode, f.header.fin, String::from_utf8(f.payload).unwrap()))
        .collect();
    assert_eq!(
        frames,
        [
            (OpCode::Continuation, true, "second half".to_owned()),
            (OpCode::Text, true, "broadcast while streaming".to_owned()),
        ],
        "a broadcast was put between the fragments of a streamed message"
    );
    raw.send_close(1000, "");
    assert_eq!(raw.expect_close(), 1000);
    // With real clients too (they fail the connection on an interleaved data frame).
    for (n, kind) in PeerKind::ALL.into_iter().enumerate() {
        let mut peer = Peer::spawn(kind);
        peer.connect("a", &server.url("/"), &ConnectOpts::new());
        streamer.log.wait_opened(n + 2);
        peer.send_text("a", "stream");
        streamer.log.wait("`stream` handled", |evs| {
            evs.iter().filter(|e| matches!(e, Ev::Text(_, t) if t == "stream")).count() == n + 2
        });
        let queued = server.stats().messages_out;
        server.broadcast("broadcast while streaming");
        wait_until("the broadcast to be queued", WAIT, || server.stats().messages_out > queued);
        peer.send_text("a", "finish");
        assert_eq!(peer.expect_text("a"), "first half, second half", "{kind}");
        assert_eq!(peer.expect_text("a"), "broadcast while streaming", "{kind}");
    }
    server.stop();
}

backends!(
    echo,
    control_frames_between_fragments,
    frame_by_frame,
    split_messages_on_the_wire,
    split_messages_reassembled_by_peers,
    streamed_fragments_are_not_interleaved_with_other_messages
);
