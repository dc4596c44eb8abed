//! `FrameHeader::parse` under arbitrary rules, and the decoder in `Assembly::Frames` mode
//! fed the same bytes whole and in arbitrary chunks.
//!
//! Checks: the parser never panics and agrees with a naive reading of the header bytes;
//! every prefix of a complete header is `Incomplete`; the canonical re-encoding parses
//! back to the same header; chunked and whole decoding, from fresh slices (the server's
//! receive buffers) and through one growing buffer (`decode_buf`, the client's), give
//! identical events and errors; every fragment's payload equals a byte-at-a-time
//! unmasking of the wire; what is pending at the end is exactly the undecoded tail.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast_codec::frame::MAX_HEADER_LEN;
use ringcast_codec::{Assembly, FrameHeader, FrameRules, HeaderParse, Incoming, OpCode};
use ringcast_codec_fuzz::{DecoderInput, check_event, decode_all, decode_buffered, reference_frame};

fuzz_target!(|data: &[u8]| {
    let input = DecoderInput::parse(data);
    let rules = FrameRules {
        require_mask: input.require_mask,
        allowed_rsv: input.allowed_rsv,
        max_frame_size: input.max_frame_size,
    };
    check_header_parse(input.wire, &rules);
    // The frame rules alone, at every offset a frame could start at.
    for start in 1..input.wire.len().min(16) {
        check_header_parse(&input.wire[start..], &rules);
    }

    let config = input.config().assembly(Assembly::Frames);
    let whole = decode_all(config, input.wire, &[]);
    let chunked = decode_all(config, input.wire, &input.chunks);
    assert_eq!(whole, chunked, "chunking {:?} changed the outcome", input.chunks);
    let buffered = decode_buffered(config, input.wire, &input.chunks, |_| {});
    assert_eq!(whole, buffered, "decode_buf disagrees with decode");

    // Every event is one accepted frame of the wire, in order.
    let mut at = 0;
    let mut message: Option<(bool, Vec<u8>)> = None;
    for event in &whole.events {
        check_event(event, &config);
        let frame = reference_frame(input.wire, &mut at);
        match event {
            Incoming::Fragment { opcode, fin, payload } => {
                assert_eq!((opcode.as_u8(), *fin), (frame.opcode, frame.fin));
                assert_eq!(payload[..], frame.payload[..], "payload differs from the reference unmasking");
                match opcode {
                    OpCode::Continuation => message.as_mut().expect("continuation outside a message").1.extend_from_slice(payload),
                    OpCode::Text | OpCode::Binary => {
                        assert!(message.is_none(), "new message while one is unfinished");
                        message = Some((*opcode == OpCode::Text, payload.to_vec()));
                    }
                    other => panic!("fragment with control opcode {other}"),
                }
                if *fin {
                    let (text, bytes) = message.take().expect("message in progress");
                    assert!(!text || std::str::from_utf8(&bytes).is_ok(), "text message passed as invalid UTF-8");
                }
            }
            Incoming::Ping(payload) => assert_eq!((frame.opcode, &payload[..]), (0x9, &frame.payload[..])),
            Incoming::Pong(payload) => assert_eq!((frame.opcode, &payload[..]), (0xA, &frame.payload[..])),
            Incoming::Close(close) => {
                assert_eq!(frame.opcode, 0x8);
                match close {
                    None => assert!(frame.payload.is_empty()),
                    Some(close) => {
                        assert_eq!(u16::from(close.code).to_be_bytes()[..], frame.payload[..2]);
                        assert_eq!(close.reason.as_bytes()[..], frame.payload[2..]);
                    }
                }
            }
            Incoming::Text(_) | Incoming::Binary(_) => panic!("whole message in frame mode: {event:?}"),
        }
    }
    if let Some(pending) = whole.pending {
        // Pending: an undecoded tail, or a fragmented message whose last frame is yet to come.
        assert_eq!(pending, at < input.wire.len() || message.is_some(), "pending state disagrees with the wire");
        if at < input.wire.len() {
            // The tail is the start of one frame (or of its header), never a whole one.
            match FrameHeader::parse(&input.wire[at..], &rules) {
                Ok(HeaderParse::Complete { header, header_len }) => {
                    let rest = input.wire.len() - at - header_len;
                    assert!((rest as u64) < header.payload_len, "a whole frame was left undecoded");
                }
                Ok(HeaderParse::Incomplete { .. }) => {}
                Err(e) => panic!("the tail starts with a frame the decoder should have refused: {e}"),
            }
        }
    }
});

fn check_header_parse(buf: &[u8], rules: &FrameRules) {
    let result = FrameHeader::parse(buf, rules);
    match result {
        Ok(HeaderParse::Complete { header, header_len }) => {
            let extended = match buf[1] & 0x7f {
                126 => 2,
                127 => 8,
                _ => 0,
            };
            assert_eq!(header_len, 2 + extended + if buf[1] & 0x80 != 0 { 4 } else { 0 });
            assert!(header_len <= buf.len() && header_len <= MAX_HEADER_LEN);
            assert_eq!(header.fin, buf[0] & 0x80 != 0);
            assert_eq!(header.rsv, (buf[0] >> 4) & 0b111);
            assert_eq!(header.rsv & !rules.allowed_rsv, 0, "disallowed RSV bits accepted");
            assert_eq!(header.opcode.as_u8(), buf[0] & 0x0f);
            assert_eq!(header.mask.is_some(), buf[1] & 0x80 != 0);
            if let Some(required) = rules.require_mask {
                assert_eq!(header.mask.is_some(), required, "masking rule not enforced");
            }
            if let Some(key) = header.mask {
                assert_eq!(key[..], buf[header_len - 4..header_len]);
            }
            assert!(header.payload_len >> 63 == 0);
            assert!(header.payload_len <= rules.max_frame_size as u64, "frame limit not enforced");
            if header.opcode.is_control() {
                assert!(header.fin && header.payload_len <= 125, "bad control frame accepted: {header:?}");
            }
            // The canonical encoding parses back to the same header, and is never longer.
            let mut out = [0u8; MAX_HEADER_LEN];
            let n = header.encode(&mut out);
            assert_eq!(n, header.encoded_len());
            assert!(n <= header_len);
            assert_eq!(FrameHeader::parse(&out[..n], rules), Ok(HeaderParse::Complete { header, header_len: n }));
            // Bytes after the header change nothing; every prefix just asks for more.
            assert_eq!(FrameHeader::parse(&buf[..header_len], rules), result);
            for cut in 0..header_len {
                match FrameHeader::parse(&buf[..cut], rules) {
                    Ok(HeaderParse::Incomplete { needed }) => {
                        assert!(needed >= 1 && cut + needed <= header_len, "cut {cut}: needed {needed}");
                    }
                    other => panic!("prefix of {cut} bytes of a complete header: {other:?}"),
                }
            }
        }
        Ok(HeaderParse::Incomplete { needed }) => {
            assert!(needed >= 1, "Incomplete with needed == 0");
            assert!(buf.len() + needed <= MAX_HEADER_LEN, "needed {needed} with {} bytes", buf.len());
        }
        Err(error) => {
            let _ = (error.close_code(), error.to_string());
            // The error is decided by the header bytes alone: a prefix is at most incomplete.
            for cut in 0..buf.len().min(MAX_HEADER_LEN) {
                match FrameHeader::parse(&buf[..cut], rules) {
                    Ok(HeaderParse::Incomplete { .. }) => {}
                    Err(e) => assert_eq!(e, error, "prefix of {cut} bytes"),
                    Ok(complete) => panic!("prefix of {cut} bytes parsed as {complete:?} but the whole is {error}"),
                }
            }
        }
    }
}
