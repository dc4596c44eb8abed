//! The server's connection state machine, fed arbitrary bytes in arbitrary chunks with
//! timers, partial write completions, application sends and closes between them. It must
//! never panic, report its end exactly once, and keep its memory within the configured
//! bounds (checked by `FuzzConn::step` after every step).
#![no_main]
#![forbid(unsafe_code)]

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use ringcast::fuzzing::{FuzzConn, Step};

/// A valid upgrade, so that most runs get past the handshake.
const UPGRADE: &[u8] = b"GET / HTTP/1.1\r\nHost: f\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// The same, offering permessage-deflate as browsers do (accepted when the selector
/// enables it).
const UPGRADE_DEFLATE: &[u8] = b"GET / HTTP/1.1\r\nHost: f\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
    Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let selector = u.arbitrary::<u8>().unwrap_or(0);
    let mut conn = FuzzConn::new(selector);
    match u.arbitrary::<u8>().unwrap_or(0) % 3 {
        0 => conn.step(Step::Input(UPGRADE)),
        1 => conn.step(Step::Input(UPGRADE_DEFLATE)),
        _ => {}
    }
    while !u.is_empty() {
        let op = u.arbitrary::<u8>().unwrap_or(0);
        let step = match op % 16 {
            0..=7 => {
                let len = usize::from(u.arbitrary::<u8>().unwrap_or(0)) + 1;
                Step::Input(u.bytes(len.min(u.len())).unwrap_or(&[]))
            }
            8 | 9 => Step::Advance(u.arbitrary().unwrap_or(0)),
            10 | 11 => Step::Write(u.arbitrary::<u16>().map(u32::from).unwrap_or(0)),
            12 => Step::SendText(u.arbitrary::<u16>().unwrap_or(0) % 2048),
            13 => Step::Close(u.arbitrary().unwrap_or(1000)),
            14 => match op >> 4 {
                0 => Step::Eof,
                1 => Step::Stop,
                2 => Step::Abort,
                _ => Step::Write(u32::MAX),
            },
            _ => Step::Advance(600),
        };
        conn.step(step);
    }
});
