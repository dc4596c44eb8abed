//! The decoder in `Assembly::Messages` mode (joining fragments), both roles, small size
//! limits, arbitrary chunking.
//!
//! Checks: no panics; Text events are valid UTF-8; control payloads are at most 125
//! bytes; close frames carry allowed codes and UTF-8 reasons; messages respect the
//! limit; chunked, whole and buffered (`decode_buf`) decoding agree; and the result
//! equals the frame-mode decoder's fragments joined by a naive assembler (same
//! messages, same error).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast_codec::bytes::Bytes;
use ringcast_codec::{Assembly, Incoming, OpCode, Payload, Text, Utf8Bytes};
use ringcast_codec_fuzz::{DecoderInput, check_event, decode_all, decode_buffered};

fuzz_target!(|data: &[u8]| {
    let input = DecoderInput::parse(data);
    let config = input.config().assembly(Assembly::Messages);
    let whole = decode_all(config, input.wire, &[]);
    let chunked = decode_all(config, input.wire, &input.chunks);
    assert_eq!(whole, chunked, "chunking {:?} changed the outcome", input.chunks);
    assert_eq!(decode_buffered(config, input.wire, &input.chunks, |_| {}), whole, "decode_buf disagrees");
    for event in &whole.events {
        check_event(event, &config);
        assert!(!matches!(event, Incoming::Fragment { .. }), "fragment in message mode: {event:?}");
    }

    let frames = decode_all(config.assembly(Assembly::Frames), input.wire, &input.chunks);
    assert_eq!(join(&frames.events), whole.events, "message mode and joined frames differ");
    assert_eq!(frames.error, whole.error, "message mode and frame mode fail differently");
    assert_eq!(frames.pending, whole.pending);
});

/// A naive assembler over frame-mode events.
fn join(events: &[Incoming<'static>]) -> Vec<Incoming<'static>> {
    let mut out = Vec::new();
    let mut message: Option<(OpCode, Vec<u8>)> = None;
    for event in events {
        let Incoming::Fragment { opcode, fin, payload } = event else {
            out.push(event.clone());
            continue;
        };
        match opcode {
            OpCode::Continuation => message.as_mut().expect("continuation outside a message").1.extend_from_slice(payload),
            op => message = Some((*op, payload.to_vec())),
        }
        if *fin {
            let (opcode, data) = message.take().expect("message in progress");
            out.push(match opcode {
                OpCode::Text => Incoming::Text(Text::Owned(
                    Utf8Bytes::try_from_bytes(Bytes::from(data)).expect("frame mode passed invalid UTF-8"),
                )),
                _ => Incoming::Binary(Payload::Owned(Bytes::from(data))),
            });
        }
    }
    out
}
