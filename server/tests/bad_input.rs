//! Bad input from raw TCP clients: every protocol violation is answered with the close
//! code RFC 6455 asks for (and HTTP garbage with the right status), the handler hears of
//! it once, and the server goes on serving new clients.

mod common;

use std::io::Write;

use common::*;
use ringcast::codec::ProtocolError;
use ringcast::{DisconnectReason, IoBackend, OpCode};

/// Opens a raw client, lets `misbehave` send something invalid, and checks that the
/// server answers with a close frame carrying `code`, ends the connection with a
/// protocol error of that code, counts it, and still serves a new client.
#[track_caller]
fn violation(backend: IoBackend, code: u16, misbehave: impl FnOnce(&mut RawClient)) -> ProtocolError {
    violation_with(builder(backend), code, misbehave)
}

#[track_caller]
fn violation_with(
    builder: ringcast::ServerBuilder,
    code: u16,
    misbehave: impl FnOnce(&mut RawClient),
) -> ProtocolError {
    let rec = Recorder::echo();
    let server = Running::start(builder, rec.clone());
    let mut client = RawClient::open(server.addr(), "/");
    let id = rec.log.wait_opened(1)[0];
    // The connection works before the violation.
    client.send_text("before");
    assert_eq!(client.read_text(), "before");
    misbehave(&mut client);
    assert_eq!(client.expect_close(), code, "close code sent for the violation");
    let error = match rec.log.wait_disconnect(id) {
        DisconnectReason::Protocol(e) => e,
        other => panic!("expected a protocol error, got {other:?}"),
    };
    assert_eq!(u16::from(error.close_code()), code, "{error}");
    assert_eq!(server.stats().protocol_errors, 1);
    assert_echo_works(server.addr());
    server.stop();
    error
}

fn unmasked_frame(backend: IoBackend) {
    let e = violation(backend, 1002, |c| c.send_raw(&raw_frame(0x81, false, b"unmasked")));
    assert_eq!(e, ProtocolError::UnmaskedFrame);
}

fn reserved_opcode(backend: IoBackend) {
    // 0x3 is a reserved data opcode, 0xB a reserved control opcode.
    let e = violation(backend, 1002, |c| c.send_raw(&raw_frame(0x83, true, b"")));
    assert_eq!(e, ProtocolError::ReservedOpCode(3));
    let e = violation(backend, 1002, |c| c.send_raw(&raw_frame(0x8b, true, b"")));
    assert_eq!(e, ProtocolError::ReservedOpCode(0xb));
}

fn rsv_bits(backend: IoBackend) {
    // RSV1 (what permessage-deflate would use; not negotiated) and RSV3.
    let e = violation(backend, 1002, |c| c.send_raw(&raw_frame(0x80 | 0x40 | 0x1, true, b"hi")));
    assert!(matches!(e, ProtocolError::ReservedBits(_)), "{e:?}");
    let e = violation(backend, 1002, |c| c.send_raw(&raw_frame(0x80 | 0x10 | 0x2, true, b"hi")));
    assert!(matches!(e, ProtocolError::ReservedBits(_)), "{e:?}");
}

fn invalid_utf8(backend: IoBackend) {
    // In one frame.
    let e = violation(backend, 1007, |c| c.send_frame(OpCode::Text, true, &[b'o', b'k', 0xff, 0xfe]));
    assert_eq!(e, ProtocolError::InvalidUtf8);
    // Across fragments: a sequence that starts valid and turns invalid in the next one.
    let e = violation(backend, 1007, |c| {
        c.send_frame(OpCode::Text, false, &[b'a', 0xe2, 0x9c]);
        c.send_frame(OpCode::Continuation, true, b"(");
    });
    assert_eq!(e, ProtocolError::InvalidUtf8);
    // A message that ends inside a character.
    let e = violation(backend, 1007, |c| {
        c.send_frame(OpCode::Text, false, b"a");
        c.send_frame(OpCode::Continuation, true, &[0xe2, 0x9c]);
    });
    assert_eq!(e, ProtocolError::InvalidUtf8);
    // A close reason that is not UTF-8.
    let e = violation(backend, 1007, |c| c.send_frame(OpCode::Close, true, &[0x03, 0xe8, 0xc3]));
    assert_eq!(e, ProtocolError::InvalidCloseReason);
}

fn oversized_message(backend: IoBackend) {
    let limited = || builder(backend).max_message_size(1000);
    // One 2000-byte frame.
    let e = violation_with(limited(), 1009, |c| c.send_frame(OpCode::Binary, true, &pattern(2000, 1)));
    assert!(
        matches!(e, ProtocolError::MessageTooLarge { max: 1000, .. } | ProtocolError::FrameTooLarge { .. }),
        "{e:?}"
    );
    // Two frames that are each small enough but not together.
    let e = violation_with(limited(), 1009, |c| {
        c.send_frame(OpCode::Text, false, &[b'a'; 600]);
        c.send_frame(OpCode::Continuation, true, &[b'b'; 600]);
    });
    assert!(matches!(e, ProtocolError::MessageTooLarge { max: 1000, .. }), "{e:?}");
    // A frame over max_frame_size.
    let e = violation_with(builder(backend).max_frame_size(100), 1009, |c| {
        c.send_frame(OpCode::Binary, true, &[0; 101]);
    });
    assert!(matches!(e, ProtocolError::FrameTooLarge { max: 100, .. }), "{e:?}");
}

fn control_frames(backend: IoBackend) {
    // A ping of 126 bytes: control frames carry at most 125.
    let e = violation(backend, 1002, |c| c.send_raw(&raw_frame(0x89, true, &[7; 126])));
    assert!(matches!(e, ProtocolError::ControlFrameTooLong { .. }), "{e:?}");
    // A fragmented ping.
    let e = violation(backend, 1002, |c| c.send_raw(&raw_frame(0x09, true, b"x")));
    assert!(matches!(e, ProtocolError::FragmentedControl(_)), "{e:?}");
    // Close codes that may not be sent, and a one-byte close payload.
    for payload in [&[0x03, 0xed][..], &[0x03, 0xe7], &[0x03, 0xee], &[0x13, 0x88], &[0x03]] {
        let e = violation(backend, 1002, |c| c.send_frame(OpCode::Close, true, payload));
        assert!(matches!(e, ProtocolError::InvalidCloseCode(_) | ProtocolError::CloseFrameTooShort), "{e:?}");
    }
}

fn bad_fragment_sequence(backend: IoBackend) {
    let e = violation(backend, 1002, |c| c.send_frame(OpCode::Continuation, true, b"nothing to continue"));
    assert_eq!(e, ProtocolError::UnexpectedContinuation);
    let e = violation(backend, 1002, |c| {
        c.send_frame(OpCode::Text, false, b"first");
        c.send_frame(OpCode::Text, true, b"second");
    });
    assert!(matches!(e, ProtocolError::ExpectedContinuation(_)), "{e:?}");
}

/// Frame-by-frame delivery does not lift the limits: a message over max_message_size
/// (counted across its frames) is 1009, invalid UTF-8 across text frames is 1007.
fn frame_by_frame_still_enforces_limits(backend: IoBackend) {
    let rec = Recorder::echo();
    let server = Running::start(builder(backend).frame_by_frame(true).max_message_size(1000), rec.clone());
    let mut big = RawClient::open(server.addr(), "/");
    big.send_frame(OpCode::Binary, false, &[1; 600]);
    big.send_frame(OpCode::Continuation, true, &[2; 600]);
    assert_eq!(big.expect_close(), 1009);
    let mut bad = RawClient::open(server.addr(), "/");
    bad.send_frame(OpCode::Text, false, &[b'a', 0xe2]);
    bad.send_frame(OpCode::Continuation, true, b"(");
    assert_eq!(bad.expect_close(), 1007);
    let events =
        rec.log.wait("two disconnects", |evs| evs.iter().filter(|e| matches!(e, Ev::Disconnect(..))).count() == 2);
    // The first 600 bytes were delivered as a frame before the limit was crossed, nothing after.
    let frames: Vec<&Ev> = events.iter().filter(|e| matches!(e, Ev::Frame(..))).collect();
    assert!(frames.len() <= 2, "{frames:?}");
    assert!(!frames.iter().any(|e| matches!(e, Ev::Frame(_, _, _, p) if p.first() == Some(&2))), "{frames:?}");
    assert_eq!(server.stats().protocol_errors, 2);
    server.stop();
}

/// Non-HTTP bytes get 400, and the server keeps serving.
fn garbage_instead_of_http(backend: IoBackend) {
    let rec = Recorder::echo();
    let server = Running::start(builder(backend), rec.clone());
    for garbage in
        [&b"this is not http\r\n\r\n"[..], b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", b"GET\r\n\r\n"]
    {
        let reply = http_exchange(server.addr(), garbage);
        assert_eq!(reply.status, 400, "for {garbage:?}");
    }
    assert_eq!(server.stats().handshakes_refused, 3);
    assert_echo_works(server.addr());
    server.stop();
}

/// A request head over 8 KiB (or with too many fields) gets 431, whether it arrives in
/// one piece or in small ones; the server keeps serving.
fn huge_header_block(backend: IoBackend) {
    let server = Running::start(builder(backend), Recorder::echo());
    let big_field = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(9000));
    let many_fields: String = (0..100).map(|i| format!("X-F{i}: v\r\n")).collect();
    let many_fields = format!("GET / HTTP/1.1\r\nHost: x\r\n{many_fields}\r\n");
    for head in [&big_field, &many_fields] {
        let reply = http_exchange(server.addr(), head.as_bytes());
        assert_eq!(reply.status, 431, "head of {} bytes", head.len());
    }
    // Trickled in 1 KiB pieces, without the end of the head ever arriving.
    let mut stream = tcp(server.addr());
    let endless = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}", "b".repeat(16 * 1024));
    for piece in endless.as_bytes().chunks(1024) {
        if stream.write_all(piece).is_err() {
            break; // the server may answer and close before everything is sent
        }
    }
    assert_eq!(read_http_reply(&mut stream).status, 431);
    assert_echo_works(server.addr());
    server.stop();
}

/// Not bad, but unusual: frames trickled in byte by byte (headers, mask keys, an 8-byte
/// length) are decoded like any other.
fn frames_split_into_single_bytes(backend: IoBackend) {
    let server = Running::start(builder(backend), Recorder::echo());
    let mut client = RawClient::open(server.addr(), "/");
    let text = raw_frame(0x81, true, "trickled ✓".as_bytes());
    let binary = raw_frame(0x82, true, &pattern(70_000, 9)); // 8-byte length
    for byte in &text {
        client.send_raw(std::slice::from_ref(byte));
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    assert_eq!(client.read_text(), "trickled ✓");
    let (head, payload) = binary.split_at(14);
    for byte in head {
        client.send_raw(std::slice::from_ref(byte));
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    for piece in payload.chunks(20_000) {
        client.send_raw(piece);
    }
    let (op, data, _) = client.read_message();
    assert!(op == OpCode::Binary && data == pattern(70_000, 9));
    client.send_close(1000, "");
    assert_eq!(client.expect_close(), 1000);
    server.stop();
}

backends!(
    unmasked_frame,
    reserved_opcode,
    rsv_bits,
    invalid_utf8,
    oversized_message,
    control_frames,
    bad_fragment_sequence,
    frame_by_frame_still_enforces_limits,
    garbage_instead_of_http,
    huge_header_block,
    frames_split_into_single_bytes,
);
