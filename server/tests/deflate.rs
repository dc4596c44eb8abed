//! permessage-deflate (RFC 7692) end to end: negotiation and compressed round trips with
//! Python `websockets` and Node `ws`, the compressed frames checked on the wire (and
//! inflated by zlib through flate2, not by ringcast's own inflater), one compression per
//! broadcast however many subscribers take it, and the close codes for compressed input
//! that breaks the rules.

mod common;

use common::*;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use ringcast::{IoBackend, OpCode, ServerBuilder, ServerDeflateConfig};
use testkit::{ConnectOpts, Peer, PeerKind};

const RSV1: u8 = 0b100;
/// The offer browsers make.
const BROWSER_OFFER: (&str, &str) = ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits");

fn deflating(backend: IoBackend) -> ServerBuilder {
    builder(backend).permessage_deflate(ServerDeflateConfig::new().min_message_size(64))
}

/// A JSON-like feed update: the kind of text fan-out servers carry, and compressible.
fn json_update(n: usize, len: usize) -> String {
    let mut out = String::from("[");
    let mut i = 0;
    while out.len() < len {
        out.push_str(&format!(
            r#"{{"symbol":"SYM{}","price":{}.{:02},"volume":{},"side":"buy"}},"#,
            i % 50,
            100 + (i * 7 + n) % 900,
            i % 100,
            i * 13
        ));
        i += 1;
    }
    out.truncate(len - 1);
    out.push(']');
    out
}

/// Raw DEFLATE with a sync flush and the trailing `00 00 ff ff` removed (RFC 7692 §7.2.1).
fn deflate(data: &[u8]) -> Vec<u8> {
    let mut compress = Compress::new(Compression::default(), false);
    // Room for the worst case (stored blocks) in one call.
    let mut out = Vec::with_capacity(data.len() + data.len() / 100 + 1024);
    compress.compress_vec(data, &mut out, FlushCompress::Sync).unwrap();
    assert_eq!(compress.total_in(), data.len() as u64);
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]), "a sync flush ends with an empty stored block");
    out.truncate(out.len() - 4);
    out
}

/// Inflates one permessage-deflate payload (the tail appended back), bounded.
fn inflate(payload: &[u8]) -> Vec<u8> {
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut inflater = Decompress::new(false);
    let mut out = Vec::with_capacity(1 << 16);
    loop {
        let consumed = inflater.total_in() as usize;
        let status = inflater.decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync).unwrap();
        assert!(out.len() < 64 << 20, "inflated past 64 MiB");
        if inflater.total_in() as usize == input.len() && out.len() < out.capacity() {
            return out;
        }
        assert!(status != Status::StreamEnd, "a final block inside a message");
        out.reserve(1 << 16);
    }
}

/// A raw client that offered permessage-deflate the way browsers do; checks the answer.
#[track_caller]
fn open_deflating(addr: std::net::SocketAddr) -> RawClient {
    let (raw, headers) = RawClient::open_with(addr, "/", &[BROWSER_OFFER]);
    let answer = extension_answer(&headers).expect("permessage-deflate accepted");
    assert!(answer.starts_with("permessage-deflate") && answer.contains("server_no_context_takeover"), "{answer}");
    raw
}

fn extension_answer(headers: &[(String, String)]) -> Option<String> {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-extensions")).map(|(_, v)| v.clone())
}

/// Reads one message; returns its opcode, whether RSV1 was set, the bytes on the wire
/// (payload only) and the payload once inflated.
#[track_caller]
fn read_deflated(raw: &mut RawClient) -> (OpCode, bool, usize, Vec<u8>) {
    let (opcode, payload, frames) = raw.read_message();
    for later in &frames[1..] {
        assert_eq!(later.header.rsv, 0, "RSV1 only on the first frame of a message");
    }
    let compressed = frames[0].header.rsv == RSV1;
    let data = if compressed { inflate(&payload) } else { payload.clone() };
    (opcode, compressed, payload.len(), data)
}

/// Python `websockets` (compression on) and Node `ws` (`perMessageDeflate`) negotiate
/// the extension with the server and round-trip compressed text and binary messages
/// through it, unicast (the echo) and broadcast from the test thread.
fn peers_round_trip(backend: IoBackend) {
    let rec = Recorder::echo();
    let server = Running::start(deflating(backend), rec.clone());
    let text = json_update(1, 16 << 10);
    let binary: Vec<u8> = text.bytes().rev().collect();
    for (n, kind) in PeerKind::ALL.into_iter().enumerate() {
        let mut peer = Peer::spawn(kind);
        let opened = peer.connect("a", &server.url("/"), &ConnectOpts::new().compression());
        let answer = opened.extensions.unwrap_or_default();
        assert!(answer.starts_with("permessage-deflate"), "{kind}: answered {answer:?}");
        assert!(answer.contains("server_no_context_takeover"), "{kind}: answered {answer:?}");
        for message in [&text[..], "héllo ✓ short", ""] {
            peer.send_text("a", message);
            assert_eq!(peer.expect_text("a"), message, "{kind}");
        }
        peer.send_binary("a", &binary);
        assert!(peer.expect_binary("a") == binary, "{kind}: binary differs");
        let before = server.stats().compressions;
        server.broadcast(&*text);
        assert_eq!(peer.expect_text("a"), text, "{kind}: broadcast");
        assert_eq!(server.stats().compressions, before + 1, "{kind}: one compression per broadcast");
        peer.close("a", 1000, "");
        assert_eq!(peer.expect_close("a").0, 1000, "{kind}");
        let id = rec.log.wait_opened(n + 1)[n];
        rec.log.wait_disconnect(id);
        // The handler saw the messages inflated.
        let events = rec.log.events();
        assert!(events.contains(&Ev::Text(id, text.clone())), "{kind}: handler did not see the text");
        assert!(events.contains(&Ev::Binary(id, binary.clone())), "{kind}: handler did not see the binary");
    }
    server.stop();
}

/// On the wire: the server's frames carry RSV1 on the first frame only, inflate (with
/// zlib) to the message, and are split by the configured frame size like plain ones;
/// short messages and ones that do not shrink go plain; compressed and fragmented
/// compressed messages from the client are inflated.
fn wire_format(backend: IoBackend) {
    let rec = Recorder::echo();
    let server = Running::start(deflating(backend).split_messages(Some(4096)).unwrap(), rec.clone());
    let mut raw = open_deflating(server.addr());
    let text = json_update(2, 64 << 10);

    // Compressed by the client in one frame.
    raw.send_raw(&raw_frame(0x80 | (RSV1 << 4) | 0x1, true, &deflate(text.as_bytes())));
    let (opcode, frames_compressed, wire, data) = {
        let (opcode, payload, frames) = raw.read_message();
        assert!(frames.len() > 1, "64 KiB compressed to more than 4 KiB is split");
        assert!(frames.iter().all(|f| f.wire_len <= 4096), "frames over the frame size");
        assert_eq!(frames[0].header.rsv, RSV1);
        assert!(frames[1..].iter().all(|f| f.header.rsv == 0));
        (opcode, true, payload.len(), inflate(&payload))
    };
    assert!(opcode == OpCode::Text && frames_compressed && data == text.as_bytes());
    assert!(wire * 3 < text.len(), "JSON compresses at least 3x: {wire} bytes for {}", text.len());

    // Compressed by the client and sent in three fragments: RSV1 on the first only.
    let compressed = deflate(text.as_bytes());
    let (a, rest) = compressed.split_at(compressed.len() / 3);
    let (b, c) = rest.split_at(rest.len() / 2);
    raw.send_raw(&raw_frame((RSV1 << 4) | 0x1, true, a));
    raw.send_raw(&raw_frame(0x0, true, b));
    raw.send_raw(&raw_frame(0x80, true, c));
    let (_, compressed_echo, _, data) = read_deflated(&mut raw);
    assert!(compressed_echo && data == text.as_bytes(), "fragmented compressed message");

    // Below the minimum size: plain, even though the client compressed it.
    raw.send_raw(&raw_frame(0x80 | (RSV1 << 4) | 0x1, true, &deflate(b"tiny")));
    let (_, compressed, _, data) = read_deflated(&mut raw);
    assert!(!compressed && data == b"tiny");

    // Incompressible: the compressed variant is not smaller, so the plain frames go.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..8192)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect();
    raw.send_frame(OpCode::Binary, true, &noise);
    let (opcode, compressed, _, data) = read_deflated(&mut raw);
    assert!(opcode == OpCode::Binary && !compressed && data == noise);

    // An uncompressed message from the client is fine too, and gets a compressed echo.
    raw.send_text(&text);
    let (_, compressed, _, data) = read_deflated(&mut raw);
    assert!(compressed && data == text.as_bytes());

    raw.send_close(1000, "");
    assert_eq!(raw.expect_close(), 1000);
    let id = rec.log.wait_opened(1)[0];
    assert_eq!(rec.log.events().iter().filter(|e| matches!(e, Ev::Text(i, t) if *i == id && *t == text)).count(), 3);
    server.stop();
}

/// One broadcast to 1,000 compressing subscribers (on two shards) is compressed once;
/// subscribers that asked for a smaller window share a second variant; plain subscribers
/// get the plain frames. Every subscriber inflates the same message.
fn compress_once(backend: IoBackend) {
    let server = Running::start(deflating(backend), Recorder::silent());
    let mut deflating: Vec<RawClient> = (0..1000).map(|_| open_deflating(server.addr())).collect();
    let mut plain: Vec<RawClient> = (0..20).map(|_| RawClient::open(server.addr(), "/")).collect();
    let small_window = ("Sec-WebSocket-Extensions", "permessage-deflate; server_max_window_bits=10");
    let mut narrow: Vec<RawClient> = (0..20)
        .map(|_| {
            let (raw, headers) = RawClient::open_with(server.addr(), "/", &[small_window]);
            let answer = extension_answer(&headers).expect("accepted");
            assert!(answer.contains("server_max_window_bits=10"), "{answer}");
            raw
        })
        .collect();
    wait_until("1040 connections", WAIT, || server.stats().connections.iter().sum::<u64>() == 1040);
    let text = json_update(3, 16 << 10);
    assert_eq!(server.stats().compressions, 0);
    server.broadcast(&*text);

    let mut wire = 0;
    for raw in &mut deflating {
        let (_, compressed, bytes, data) = read_deflated(raw);
        assert!(compressed && data == text.as_bytes());
        wire = bytes;
    }
    for raw in &mut narrow {
        let (_, compressed, _, data) = read_deflated(raw);
        assert!(compressed && data == text.as_bytes());
    }
    for raw in &mut plain {
        assert_eq!(raw.read_text(), text);
    }
    assert_eq!(server.stats().compressions, 2, "one compression per window size in use, for 1020 subscribers");
    assert!(wire * 3 < text.len(), "{wire} bytes on the wire for {} of text", text.len());
    server.stop();
}

/// Expects the server to fail the connection with `code` after `frame`.
#[track_caller]
fn expect_failure(server: &Running<Recorder>, negotiate: bool, frame: &[u8], code: u16, what: &str) {
    let mut raw = if negotiate { open_deflating(server.addr()) } else { RawClient::open(server.addr(), "/") };
    raw.send_raw(frame);
    assert_eq!(raw.expect_close(), code, "{what}");
}

/// Compressed input that breaks the rules gets the close code RFC 7692 and RFC 6455 ask
/// for: RSV1 on a control frame, on a continuation, or without negotiation is a protocol
/// error (1002); data that is not DEFLATE is invalid payload data (1007); a deflate
/// bomb is closed with 1009 once the inflated size passes the limit.
fn bad_compressed_input(backend: IoBackend) {
    let server = Running::start(deflating(backend).max_message_size(64 << 10), Recorder::echo());
    let compressed = deflate(b"hello hello hello hello");
    expect_failure(
        &server,
        true,
        &raw_frame(0x80 | (RSV1 << 4) | 0x9, true, &deflate(b"ping")),
        1002,
        "compressed ping",
    );
    let mut continuation = raw_frame((RSV1 << 4) | 0x1, true, &compressed[..4]);
    continuation.extend(raw_frame(0x80 | (RSV1 << 4), true, &compressed[4..]));
    expect_failure(&server, true, &continuation, 1002, "RSV1 on a continuation");
    expect_failure(&server, false, &raw_frame(0x80 | (RSV1 << 4) | 0x1, true, &compressed), 1002, "RSV1 unnegotiated");
    let garbage = [0xff, 0xff, 0xff, 0xff, 0x12, 0x34];
    expect_failure(&server, true, &raw_frame(0x80 | (RSV1 << 4) | 0x2, true, &garbage), 1007, "not DEFLATE");
    // 32 MiB of zeros compress to ~32 KiB: a 1,000x bomb against a 64 KiB limit.
    let bomb = deflate(&vec![0u8; 32 << 20]);
    assert!(bomb.len() < 64 << 10, "the bomb itself fits the limit ({} bytes)", bomb.len());
    expect_failure(&server, true, &raw_frame(0x80 | (RSV1 << 4) | 0x2, true, &bomb), 1009, "deflate bomb");
    assert!(server.stats().buffered_input < 1 << 20, "inflated input is not held");
    // The server still works for everyone else.
    let mut raw = open_deflating(server.addr());
    raw.send_text("still here");
    assert_eq!(read_deflated(&mut raw).3, b"still here");
    server.stop();
}

/// Offers the server cannot or must not accept are declined (the connection opens
/// uncompressed), and the first acceptable offer of several wins.
fn negotiation(backend: IoBackend) {
    let server = Running::start(deflating(backend), Recorder::echo());
    for (offer, accepted) in [
        ("permessage-deflate; server_max_window_bits=7", false),
        ("permessage-deflate; client_max_window_bits=16", false),
        ("permessage-deflate; server_no_context_takeover; server_no_context_takeover", false),
        ("permessage-deflate; unknown_param", false),
        ("x-webkit-deflate-frame", false),
        ("permessage-deflate; server_max_window_bits=7, permessage-deflate; client_max_window_bits=12", true),
        ("permessage-deflate; client_no_context_takeover; server_max_window_bits=9", true),
    ] {
        let (mut raw, headers) = RawClient::open_with(server.addr(), "/", &[("Sec-WebSocket-Extensions", offer)]);
        let answer = extension_answer(&headers);
        assert_eq!(answer.is_some(), accepted, "offer {offer:?} answered {answer:?}");
        let text = json_update(4, 2048);
        raw.send_text(&text);
        let (_, compressed, _, data) = read_deflated(&mut raw);
        assert!(data == text.as_bytes() && compressed == accepted, "{offer:?}");
        if offer.contains("server_max_window_bits=9") {
            assert!(answer.unwrap().contains("server_max_window_bits=9"));
        }
        raw.send_close(1000, "");
        assert_eq!(raw.expect_close(), 1000);
    }
    server.stop();
}

/// Without `permessage_deflate` on the builder, offers are declined.
fn off_by_default(backend: IoBackend) {
    let server = Running::start(builder(backend), Recorder::echo());
    let (mut raw, headers) = RawClient::open_with(server.addr(), "/", &[BROWSER_OFFER]);
    assert_eq!(extension_answer(&headers), None);
    raw.send_text("plain");
    assert_eq!(raw.read_text(), "plain");
    server.stop();
}

backends!(peers_round_trip, wire_format, compress_once, bad_compressed_input, negotiation, off_by_default);
