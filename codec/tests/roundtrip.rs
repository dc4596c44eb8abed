//! Property tests: whatever the encoder produces, the decoder reads back unchanged,
//! however the bytes are chunked on the way.

use bytes::BytesMut;
use proptest::prelude::*;
use ringcast_codec::{
    Decoder, DecoderConfig, Incoming, MaskKernel, OpCode, Payload, PreparedMessage, Role, Split, apply_mask,
    encode_masked_frame,
};

/// Payload lengths that cover the 7-bit, 16-bit and 64-bit length encodings.
fn payload_len() -> impl Strategy<Value = usize> {
    prop_oneof![0usize..=125, 126usize..=65535, 65536usize..=200_000]
}

fn split() -> impl Strategy<Value = Split> {
    prop_oneof![Just(Split::Whole), (3usize..70_000).prop_map(|n| Split::frame_size(n).unwrap())]
}

/// Feeds `wire` to `decoder` in chunks of the given sizes (cycled), each chunk a fresh
/// input as a receive buffer would be, and collects the events (made owned).
fn decode_chunked(decoder: &mut Decoder, wire: &[u8], chunks: &[usize]) -> Vec<Incoming<'static>> {
    let mut events = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < wire.len() {
        let n = chunks[i % chunks.len()].clamp(1, wire.len() - at);
        let mut chunk = wire[at..at + n].to_vec();
        at += n;
        i += 1;
        let mut input = &mut chunk[..];
        while let Some(event) = decoder.decode(&mut input).expect("valid input") {
            events.push(event.into_owned());
        }
        assert!(input.is_empty(), "decode returned None with input left");
    }
    assert!(!decoder.is_mid_message(), "{} bytes left over", decoder.buffered_bytes());
    events
}

/// The same through [`Decoder::decode_buf`], appending each chunk to one `BytesMut`.
fn decode_buf_chunked(decoder: &mut Decoder, wire: &[u8], chunks: &[usize]) -> Vec<Incoming<'static>> {
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < wire.len() {
        let n = chunks[i % chunks.len()].clamp(1, wire.len() - at);
        buf.extend_from_slice(&wire[at..at + n]);
        at += n;
        i += 1;
        while let Some(event) = decoder.decode_buf(&mut buf).expect("valid input") {
            events.push(event);
        }
    }
    assert!(buf.is_empty(), "{} bytes left in the buffer", buf.len());
    events
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn prepared_binary_round_trips(len in payload_len(), split in split(), seed: u8, chunks in prop::collection::vec(1usize..5000, 1..8)) {
        let payload: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(seed | 1)).collect();
        let message = PreparedMessage::binary(&payload, split);
        if let Split::FrameSize(size) = split {
            prop_assert!(message.frame_count() == 1 || message.as_bytes().len() <= message.frame_count() * size);
        }
        let mut decoder = Decoder::new(DecoderConfig::new(Role::Client));
        let events = decode_chunked(&mut decoder, message.as_bytes(), &chunks);
        prop_assert_eq!(&events, &vec![Incoming::Binary(payload.clone().into())]);
        let mut decoder = Decoder::new(DecoderConfig::new(Role::Client));
        prop_assert_eq!(decode_buf_chunked(&mut decoder, message.as_bytes(), &chunks), events);
    }

    #[test]
    fn prepared_text_round_trips(text in "\\PC{0,3000}", frame_size in 3usize..600) {
        let message = PreparedMessage::text(&text, Split::frame_size(frame_size).unwrap());
        let mut decoder = Decoder::new(DecoderConfig::new(Role::Client));
        let events = decode_chunked(&mut decoder, message.as_bytes(), &[7, 1, 300]);
        prop_assert_eq!(&events, &vec![Incoming::Text(text.as_str().into())]);
        let mut decoder = Decoder::new(DecoderConfig::new(Role::Client));
        prop_assert_eq!(decode_buf_chunked(&mut decoder, message.as_bytes(), &[300, 7, 1]), events);
    }

    #[test]
    fn masked_frames_round_trip(len in payload_len(), key: [u8; 4], fragments in 1usize..5, chunks in prop::collection::vec(1usize..9000, 1..6)) {
        let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
        let mut wire = BytesMut::new();
        let per = len.div_ceil(fragments).max(1);
        let pieces: Vec<&[u8]> = if payload.is_empty() { vec![&[][..]] } else { payload.chunks(per).collect() };
        for (i, piece) in pieces.iter().enumerate() {
            let opcode = if i == 0 { OpCode::Binary } else { OpCode::Continuation };
            encode_masked_frame(&mut wire, opcode, i + 1 == pieces.len(), piece, key);
            // A ping between fragments must come out first, untouched.
            if i == 0 && pieces.len() > 1 {
                encode_masked_frame(&mut wire, OpCode::Ping, true, b"mid", key);
            }
        }
        let mut decoder = Decoder::new(DecoderConfig::new(Role::Server));
        let events = decode_chunked(&mut decoder, &wire, &chunks);
        let mut expected = Vec::new();
        if pieces.len() > 1 {
            expected.push(Incoming::Ping(Payload::Borrowed(b"mid")));
        }
        expected.push(Incoming::Binary(payload.into()));
        prop_assert_eq!(events, expected);
    }

    #[test]
    fn every_simd_kernel_equals_the_scalar_mask(data in prop::collection::vec(any::<u8>(), 0..4096), key: [u8; 4], phase in 0usize..16, offset in 0usize..64) {
        let offset = offset.min(data.len());
        let mut expected = data.clone();
        MaskKernel::Scalar.apply(&mut expected[offset..], key, phase);
        for kernel in MaskKernel::available() {
            let mut actual = data.clone();
            kernel.apply(&mut actual[offset..], key, phase);
            prop_assert_eq!(&actual, &expected, "{:?}", kernel);
        }
        let mut dispatched = data.clone();
        apply_mask(&mut dispatched[offset..], key, phase);
        prop_assert_eq!(dispatched, expected);
    }
}
