//! Tests of permessage-deflate: RFC 7692 §7.2.3 byte for byte, negotiation tables, round
//! trips, bombs and interop with Python's zlib.

use proptest::prelude::*;

use super::negotiate::parse_all;
use super::*;
use crate::frame::{FrameHeader, FrameRules, HeaderParse, RSV1};
use crate::handshake::{Request, RequestParse};
use crate::prepared::{PreparedMessage, Split};
use crate::protocol::{CloseCode, OpCode, Role};

const HELLO: [u8; 7] = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];

fn bits(n: u8) -> WindowBits {
    WindowBits::new(n).unwrap()
}

fn no_takeover(n: u8) -> Direction {
    Direction { window_bits: bits(n), context_takeover: false }
}

fn takeover(n: u8) -> Direction {
    Direction { window_bits: bits(n), context_takeover: true }
}

fn inflate_all(inflater: &mut Inflater, payload: &[u8]) -> Result<Vec<u8>, InflateError> {
    let mut out = Vec::new();
    inflater.inflate(payload, true, &mut out, usize::MAX).map(|()| out)
}

fn compress(compressor: &mut Compressor, message: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    compressor.compress(message, &mut out).unwrap();
    out
}

/// A JSON-like text, as a fan-out server carries: repetitive keys, varying numbers.
fn json_like(len: usize) -> String {
    let mut out = String::with_capacity(len + 64);
    let mut i = 0u64;
    while out.len() < len {
        let price = (i * 7919) % 100_000;
        out.push_str(&format!(
            r#"{{"seq":{i},"symbol":"SYM{}","price":{}.{:02},"side":"buy"}},"#,
            i % 17,
            price / 100,
            price % 100
        ));
        i += 1;
    }
    out.truncate(len);
    out
}

// ---------------------------------------------------------------------------------------
// RFC 7692 §7.2.3, byte for byte.

#[test]
fn rfc_7_2_3_1_one_compressed_block() {
    assert_eq!(compress(&mut Compressor::new(CompressionLevel::DEFAULT, WindowBits::MAX), b"Hello"), HELLO);
    assert_eq!(inflate_all(&mut Inflater::new(no_takeover(15)), &HELLO).unwrap(), b"Hello");
    // The same message in two frames: 0x41 0x03 f2 48 cd, 0x80 0x04 c9 c9 07 00.
    // Split into frames of 5 bytes: RSV1 on the first only.
    let message = PreparedMessage::deflated_text(&HELLO, Split::frame_size(5).unwrap());
    assert_eq!(
        message.as_bytes().as_ref(),
        [0x41, 0x03, 0xf2, 0x48, 0xcd, 0x00, 0x03, 0xc9, 0xc9, 0x07, 0x80, 0x01, 0x00]
    );
    let mut inflater = Inflater::new(no_takeover(15));
    let mut out = Vec::new();
    inflater.inflate(&[0xf2, 0x48, 0xcd], false, &mut out, 5).unwrap();
    assert!(inflater.is_mid_message());
    inflater.inflate(&[0xc9, 0xc9, 0x07, 0x00], true, &mut out, 5).unwrap();
    assert!(!inflater.is_mid_message());
    assert_eq!(out, b"Hello");
}

#[test]
fn rfc_7_2_3_2_sharing_the_window() {
    let second = [0xf2, 0x00, 0x11, 0x00, 0x00];
    let mut compressor = Compressor::for_direction(CompressionLevel::DEFAULT, takeover(15));
    assert_eq!(compress(&mut compressor, b"Hello"), HELLO);
    assert_eq!(compress(&mut compressor, b"Hello"), second);
    let mut inflater = Inflater::new(takeover(15));
    assert_eq!(inflate_all(&mut inflater, &HELLO).unwrap(), b"Hello");
    assert_eq!(inflate_all(&mut inflater, &second).unwrap(), b"Hello");
    // Without context takeover the second message is self-contained again.
    let mut compressor = Compressor::new(CompressionLevel::DEFAULT, WindowBits::MAX);
    assert_eq!(compress(&mut compressor, b"Hello"), HELLO);
    assert_eq!(compress(&mut compressor, b"Hello"), HELLO);
    let mut inflater = Inflater::new(no_takeover(15));
    assert_eq!(inflate_all(&mut inflater, &HELLO).unwrap(), b"Hello");
    assert!(inflate_all(&mut inflater, &second).is_err(), "a back reference into a forgotten window");
}

#[test]
fn rfc_7_2_3_3_stored_block() {
    let stored = [0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00];
    assert_eq!(inflate_all(&mut Inflater::new(no_takeover(15)), &stored).unwrap(), b"Hello");
    assert_eq!(compress(&mut Compressor::new(CompressionLevel::NONE, WindowBits::MAX), b"Hello"), stored);
}

#[test]
fn rfc_7_2_3_4_bfinal_block_then_the_next_message() {
    let final_block = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00];
    for direction in [no_takeover(15), takeover(15)] {
        let mut inflater = Inflater::new(direction);
        assert_eq!(inflate_all(&mut inflater, &final_block).unwrap(), b"Hello");
        // The ended stream is not continued: the next message starts a new one.
        assert_eq!(inflate_all(&mut inflater, &HELLO).unwrap(), b"Hello");
    }
}

#[test]
fn rfc_7_2_3_5_two_blocks_in_one_message() {
    let two = [0xf2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xff, 0xff, 0xca, 0xc9, 0xc9, 0x07, 0x00];
    assert_eq!(inflate_all(&mut Inflater::new(no_takeover(15)), &two).unwrap(), b"Hello");
}

#[test]
fn empty_messages_compress_to_one_byte_and_back() {
    for direction in [no_takeover(15), takeover(15)] {
        let mut compressor = Compressor::for_direction(CompressionLevel::DEFAULT, direction);
        let mut inflater = Inflater::new(direction);
        for message in [&b""[..], b"Hello", b"", b"", b"Hello"] {
            let payload = compress(&mut compressor, message);
            if message.is_empty() {
                assert_eq!(payload, [0x00]);
            }
            assert_eq!(inflate_all(&mut inflater, &payload).unwrap(), message, "{direction:?}");
        }
    }
    // An empty payload with RSV1 set inflates to an empty message.
    assert_eq!(inflate_all(&mut Inflater::new(no_takeover(15)), &[]).unwrap(), b"");
}

// ---------------------------------------------------------------------------------------
// Prepared messages.

/// Walks the frames of `bytes` and returns each header and payload.
fn frames(bytes: &[u8]) -> Vec<(FrameHeader, Vec<u8>)> {
    let rules = FrameRules { require_mask: Some(false), allowed_rsv: RSV1, max_frame_size: usize::MAX };
    let mut at = 0;
    let mut out = Vec::new();
    while at < bytes.len() {
        let HeaderParse::Complete { header, header_len } = FrameHeader::parse(&bytes[at..], &rules).unwrap() else {
            panic!("truncated frame at {at}");
        };
        let end = at + header_len + header.payload_len as usize;
        out.push((header, bytes[at + header_len..end].to_vec()));
        at = end;
    }
    out
}

#[test]
fn compressed_variants_split_like_plain_ones_with_rsv1_on_the_first_frame_only() {
    let text = json_like(20_000);
    let mut compressor = BroadcastCompressor::new(&ServerDeflateConfig::new());
    for split in
        [Split::Whole, Split::frame_size(3).unwrap(), Split::frame_size(200).unwrap(), Split::frame_size(4096).unwrap()]
    {
        let message = compressor.prepare_text(&text, split, WindowBits::MAX).unwrap();
        assert!(message.is_compressed());
        assert_eq!(message.opcode(), OpCode::Text);
        let frames = frames(message.as_bytes());
        assert_eq!(frames.len(), message.frame_count());
        let mut payload = Vec::new();
        for (i, (header, chunk)) in frames.iter().enumerate() {
            assert_eq!(header.rsv, if i == 0 { RSV1 } else { 0 }, "frame {i} of {split:?}");
            assert_eq!(header.opcode, if i == 0 { OpCode::Text } else { OpCode::Continuation });
            assert_eq!(header.fin, i + 1 == frames.len());
            if let Split::FrameSize(size) = split {
                assert!(header.encoded_len() + chunk.len() <= size);
            }
            payload.extend_from_slice(chunk);
        }
        assert_eq!(payload.len(), message.payload_len());
        // The same split of the compressed bytes as a plain message of the same length.
        let plain_of_same_len = PreparedMessage::binary(&payload, split);
        assert_eq!(plain_of_same_len.frame_count(), message.frame_count());
        assert_eq!(inflate_all(&mut Inflater::new(no_takeover(15)), &payload).unwrap(), text.as_bytes());
    }
    // The plain path is untouched.
    let plain = PreparedMessage::text(&text, Split::Whole);
    assert!(!plain.is_compressed());
    assert_eq!(plain.as_bytes()[0], 0x81);
}

#[test]
fn plain_is_kept_when_compression_does_not_pay() {
    let config = ServerDeflateConfig::new().min_message_size(100);
    let mut compressor = BroadcastCompressor::new(&config);
    // Below the minimum size.
    assert!(compressor.prepare_text(&"a".repeat(99), Split::Whole, WindowBits::MAX).is_none());
    assert!(compressor.prepare_text(&"a".repeat(100), Split::Whole, WindowBits::MAX).is_some());
    // Incompressible: pseudo-random bytes come out larger.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    assert!(compressor.prepare_binary(&noise, Split::Whole, WindowBits::MAX).is_none());
    // Disabled.
    let mut off = BroadcastCompressor::new(&config.enabled(false));
    assert!(off.prepare_text(&"a".repeat(1000), Split::Whole, WindowBits::MAX).is_none());
}

#[test]
fn variants_are_shared_by_every_window_the_message_fits() {
    let text = json_like(3000);
    let mut compressor = BroadcastCompressor::new(&ServerDeflateConfig::new());
    let variants = CompressedVariants::new();
    let mut builds = Vec::new();
    for peer in 8..=15 {
        let key = variant_window_bits(bits(peer), text.len());
        let message = variants
            .get_or_compress(key, || {
                builds.push(key.get());
                compressor.prepare_text(&text, Split::Whole, key)
            })
            .unwrap()
            .clone();
        // Whatever the key, the peer's own window inflates it.
        let payload = &frames(message.as_bytes())[0].1;
        assert_eq!(inflate_all(&mut Inflater::new(no_takeover(peer)), payload).unwrap(), text.as_bytes());
        assert!(max_distance(payload) <= bits(peer).window_size(), "peer window {peer}");
    }
    // 3000 bytes fit 12 bits and up; 8 shares 9's compression.
    assert_eq!(builds, [9, 10, 11, 15]);
    assert!(variants.get(bits(15)).is_some() && variants.get(bits(8)).is_none());
}

/// The furthest back reference in a permessage-deflate payload (tail appended), found
/// by walking its DEFLATE blocks (RFC 1951, decoding as puff.c does): the window a
/// receiver needs. zlib-rs's own inflater keeps 32 KiB whatever its window bits, so it
/// cannot tell.
fn max_distance(payload: &[u8]) -> usize {
    let input = [payload, &DEFLATE_TAIL[..]].concat();
    let mut bits = BitReader { data: &input, at: 0 };
    let mut furthest = 0usize;
    while bits.at < input.len() * 8 {
        let _final_block = bits.take(1);
        match bits.take(2) {
            0 => {
                bits.at = bits.at.next_multiple_of(8);
                let len = bits.take(16) as usize;
                let nlen = bits.take(16) as usize;
                assert_eq!(len ^ 0xffff, nlen, "stored block length check");
                bits.at += 8 * len;
            }
            kind @ (1 | 2) => {
                let (literals, distances) = if kind == 1 { fixed_codes() } else { bits.dynamic_codes() };
                loop {
                    let symbol = bits.decode(&literals) as usize;
                    if symbol < 256 {
                        continue;
                    }
                    if symbol == 256 {
                        break;
                    }
                    let (_, extra) = LENGTHS[symbol - 257];
                    bits.take(extra);
                    let code = bits.decode(&distances) as usize;
                    let (base, extra) = DISTANCES[code];
                    let distance = base + bits.take(extra) as usize;
                    furthest = furthest.max(distance);
                }
            }
            _ => panic!("reserved block type"),
        }
    }
    furthest
}

/// (base, extra bits) of each length code; only the extra bits matter here.
const LENGTHS: [(usize, u32); 29] = [
    (3, 0),
    (4, 0),
    (5, 0),
    (6, 0),
    (7, 0),
    (8, 0),
    (9, 0),
    (10, 0),
    (11, 1),
    (13, 1),
    (15, 1),
    (17, 1),
    (19, 2),
    (23, 2),
    (27, 2),
    (31, 2),
    (35, 3),
    (43, 3),
    (51, 3),
    (59, 3),
    (67, 4),
    (83, 4),
    (99, 4),
    (115, 4),
    (131, 5),
    (163, 5),
    (195, 5),
    (227, 5),
    (258, 0),
];
const DISTANCES: [(usize, u32); 30] = [
    (1, 0),
    (2, 0),
    (3, 0),
    (4, 0),
    (5, 1),
    (7, 1),
    (9, 2),
    (13, 2),
    (17, 3),
    (25, 3),
    (33, 4),
    (49, 4),
    (65, 5),
    (97, 5),
    (129, 6),
    (193, 6),
    (257, 7),
    (385, 7),
    (513, 8),
    (769, 8),
    (1025, 9),
    (1537, 9),
    (2049, 10),
    (3073, 10),
    (4097, 11),
    (6145, 11),
    (8193, 12),
    (12289, 12),
    (16385, 13),
    (24577, 13),
];

/// A canonical Huffman code: how many codes of each length, and the symbols in code order.
struct Huffman {
    counts: [u16; 16],
    symbols: Vec<u16>,
}

impl Huffman {
    fn new(lengths: &[u8]) -> Huffman {
        let mut counts = [0u16; 16];
        for &len in lengths {
            counts[len as usize] += 1;
        }
        counts[0] = 0;
        let mut symbols = Vec::new();
        for len in 1..16 {
            symbols.extend((0..lengths.len() as u16).filter(|&s| lengths[s as usize] == len));
        }
        Huffman { counts, symbols }
    }
}

fn fixed_codes() -> (Huffman, Huffman) {
    let mut lengths = [8u8; 288];
    lengths[144..256].fill(9);
    lengths[256..280].fill(7);
    (Huffman::new(&lengths), Huffman::new(&[5; 30]))
}

struct BitReader<'a> {
    data: &'a [u8],
    at: usize,
}

impl BitReader<'_> {
    fn take(&mut self, count: u32) -> u32 {
        let mut value = 0;
        for i in 0..count {
            let bit = (self.data[self.at / 8] >> (self.at % 8)) & 1;
            value |= u32::from(bit) << i;
            self.at += 1;
        }
        value
    }

    fn decode(&mut self, code: &Huffman) -> u16 {
        let (mut value, mut first, mut index) = (0i32, 0i32, 0i32);
        for len in 1..16 {
            value |= self.take(1) as i32;
            let count = i32::from(code.counts[len]);
            if value - count < first {
                return code.symbols[(index + value - first) as usize];
            }
            index += count;
            first = (first + count) << 1;
            value <<= 1;
        }
        panic!("invalid Huffman code");
    }

    fn dynamic_codes(&mut self) -> (Huffman, Huffman) {
        const ORDER: [usize; 19] = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15];
        let literals = self.take(5) as usize + 257;
        let distances = self.take(5) as usize + 1;
        let code_lengths = self.take(4) as usize + 4;
        let mut lengths = [0u8; 19];
        for &symbol in &ORDER[..code_lengths] {
            lengths[symbol] = self.take(3) as u8;
        }
        let lengths_code = Huffman::new(&lengths);
        let mut all = Vec::with_capacity(literals + distances);
        while all.len() < literals + distances {
            match self.decode(&lengths_code) {
                len @ 0..=15 => all.push(len as u8),
                16 => {
                    let previous = *all.last().unwrap();
                    all.extend(std::iter::repeat_n(previous, 3 + self.take(2) as usize));
                }
                17 => all.extend(std::iter::repeat_n(0, 3 + self.take(3) as usize)),
                _ => all.extend(std::iter::repeat_n(0, 11 + self.take(7) as usize)),
            }
        }
        (Huffman::new(&all[..literals]), Huffman::new(&all[literals..]))
    }
}

#[test]
fn the_distance_scanner_reads_known_streams() {
    assert_eq!(max_distance(&HELLO), 0);
    // RFC 7692 §7.2.3.2: the second "Hello" is one reference 5 bytes back, into the first.
    assert_eq!(max_distance(&[0xf2, 0x00, 0x11, 0x00, 0x00]), 5);
    let mut compressor = Compressor::new(CompressionLevel::DEFAULT, WindowBits::MAX);
    assert_eq!(max_distance(&compress(&mut compressor, b"abcabcabc")), 3);
    let far = [&b"0123456789abcdef"[..], &[b'-'; 1000], b"0123456789abcdef"].concat();
    assert_eq!(max_distance(&compress(&mut compressor, &far)), 1016);
    let text = json_like(20_000);
    let payload = compress(&mut compressor, text.as_bytes());
    assert!(max_distance(&payload) > 4096, "dynamic blocks with far references");
    assert_eq!(inflate_all(&mut Inflater::new(no_takeover(15)), &payload).unwrap(), text.as_bytes());
}

#[test]
fn compressors_stay_within_their_window_even_at_8_bits() {
    // Repeats at every distance: the compressor's window alone limits how far back it looks.
    let text = json_like(50_000);
    for window in 8..=15 {
        for level in [1, 6, 9] {
            let mut compressor = Compressor::new(CompressionLevel::new(level).unwrap(), bits(window));
            let payload = compress(&mut compressor, text.as_bytes());
            let furthest = max_distance(&payload);
            assert!(furthest <= bits(window).window_size(), "window {window} level {level}: {furthest}");
        }
    }
}

#[test]
fn masked_client_frames_carry_rsv1_on_the_first_frame() {
    let mut out = crate::bytes::BytesMut::new();
    crate::encode_masked_frame_with_rsv(&mut out, OpCode::Text, false, RSV1, &HELLO[..3], [1, 2, 3, 4]);
    crate::encode_masked_frame_with_rsv(&mut out, OpCode::Continuation, true, 0, &HELLO[3..], [5, 6, 7, 8]);
    let rules = FrameRules { require_mask: Some(true), allowed_rsv: RSV1, max_frame_size: 100 };
    let Ok(HeaderParse::Complete { header, header_len }) = FrameHeader::parse(&out, &rules) else { panic!() };
    assert_eq!((header.rsv, header.opcode, header.fin, header_len), (RSV1, OpCode::Text, false, 6));
    let Ok(HeaderParse::Complete { header, .. }) = FrameHeader::parse(&out[9..], &rules) else { panic!() };
    assert_eq!((header.rsv, header.opcode, header.fin), (0, OpCode::Continuation, true));
}

// ---------------------------------------------------------------------------------------
// Inflation limits and errors.

#[test]
fn a_deflate_bomb_stops_at_the_limit() {
    let zeros = vec![0u8; 10 << 20];
    let payload = compress(&mut Compressor::new(CompressionLevel::DEFAULT, WindowBits::MAX), &zeros);
    eprintln!("10 MiB of zeros compress to {} bytes", payload.len());
    assert!(payload.len() < 20_000);
    for limit in [0, 1, 1000, 64 << 10, 1 << 20] {
        let mut inflater = Inflater::new(no_takeover(15));
        let mut out = Vec::new();
        let error = inflater.inflate(&payload, true, &mut out, limit).unwrap_err();
        assert_eq!(error, InflateError::MessageTooLarge { max: limit });
        assert_eq!(error.close_code(), CloseCode::Size);
        assert!(out.len() <= limit + 1, "inflated {} bytes for a limit of {limit}", out.len());
        assert!(out.capacity() <= 2 * (limit + (64 << 10)), "reserved {} bytes for a limit of {limit}", out.capacity());
    }
    // Fed frame by frame, the limit spans the message.
    let mut inflater = Inflater::new(no_takeover(15));
    let mut out = Vec::new();
    let mut error = None;
    for chunk in payload.chunks(100) {
        if let Err(e) = inflater.inflate(chunk, false, &mut out, 100_000) {
            error = Some(e);
            break;
        }
    }
    assert_eq!(error, Some(InflateError::MessageTooLarge { max: 100_000 }));
    assert!(out.len() <= 100_001);
    // A message exactly at the limit is fine.
    let mut inflater = Inflater::new(no_takeover(15));
    let mut out = Vec::new();
    inflater.inflate(&payload, true, &mut out, zeros.len()).unwrap();
    assert_eq!(out.len(), zeros.len());
}

#[test]
fn corrupt_data_fails_with_1007() {
    // BTYPE 11 is reserved.
    let error = inflate_all(&mut Inflater::new(no_takeover(15)), &[0xff, 0xff, 0xff]).unwrap_err();
    assert!(matches!(error, InflateError::Corrupt(_)), "{error:?}");
    assert_eq!(error.close_code(), CloseCode::Invalid);
    // A stored block whose length check fails.
    let error = inflate_all(&mut Inflater::new(no_takeover(15)), &[0x00, 0x05, 0x00, 0x00, 0x00]).unwrap_err();
    assert_eq!(error.close_code(), CloseCode::Invalid);
    // A reset inflater is usable again.
    let mut inflater = Inflater::new(no_takeover(15));
    assert!(inflate_all(&mut inflater, &[0xff]).is_err());
    inflater.reset();
    assert_eq!(inflate_all(&mut inflater, &HELLO).unwrap(), b"Hello");
}

#[test]
fn inflate_error_messages_read_well() {
    assert_eq!(
        InflateError::MessageTooLarge { max: 10 }.to_string(),
        "inflated message of more than 10 bytes exceeds the limit"
    );
}

// ---------------------------------------------------------------------------------------
// Interop with Python's zlib (fixtures made by `tests/fixtures/make_deflate_fixtures.py`).

const PY_INPUT: &str = include_str!("../../tests/fixtures/deflate-input.json");
const PY_WBITS15_LEVEL6: &[u8] = include_bytes!("../../tests/fixtures/deflate-python-wbits15-level6.bin");
const PY_WBITS9_LEVEL9: &[u8] = include_bytes!("../../tests/fixtures/deflate-python-wbits9-level9.bin");
const PY_TAKEOVER: &[u8] = include_bytes!("../../tests/fixtures/deflate-python-takeover-3x.bin");

#[test]
fn python_zlib_output_inflates() {
    for (fixture, window) in [(PY_WBITS15_LEVEL6, 15), (PY_WBITS9_LEVEL9, 9)] {
        assert!(!fixture.ends_with(&DEFLATE_TAIL));
        assert_eq!(inflate_all(&mut Inflater::new(no_takeover(window)), fixture).unwrap(), PY_INPUT.as_bytes());
    }
    // Three messages from one compressobj, each a u32 length then the payload.
    let mut inflater = Inflater::new(takeover(15));
    let mut rest = PY_TAKEOVER;
    let mut sizes = Vec::new();
    while !rest.is_empty() {
        let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        let payload = &rest[4..4 + len];
        rest = &rest[4 + len..];
        sizes.push(len);
        assert_eq!(inflate_all(&mut inflater, payload).unwrap(), PY_INPUT.as_bytes());
    }
    assert_eq!(sizes.len(), 3);
    assert!(sizes[1] < sizes[0] / 10, "later messages refer back to the first: {sizes:?}");
}

#[test]
fn our_output_is_about_as_small_as_python_zlibs() {
    let mut compressor = Compressor::new(CompressionLevel::DEFAULT, WindowBits::MAX);
    let ours = compress(&mut compressor, PY_INPUT.as_bytes());
    assert_eq!(inflate_all(&mut Inflater::new(no_takeover(15)), &ours).unwrap(), PY_INPUT.as_bytes());
    // Sizes within a few percent of zlib's; bytes may differ (zlib-rs is zlib-ng's port).
    let (a, b) = (ours.len() as f64, PY_WBITS15_LEVEL6.len() as f64);
    assert!((a / b - 1.0).abs() < 0.10, "ours {a} bytes, zlib {b}");
}

// ---------------------------------------------------------------------------------------
// Round trips.

/// Bytes of which about a third are `a` and a third `b` (runs that compress) and the rest
/// anything. Drawn as plain bytes and mapped, not as one `prop_oneof!` per byte: that tree
/// of strategies made these tests the slowest of the codec (seconds; a minute under qemu).
fn compressible_bytes(a: u8, b: u8, len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<[u8; 2]>(), len).prop_map(move |draws| {
        draws
            .into_iter()
            .map(|[pick, byte]| match pick % 3 {
                0 => a,
                1 => b,
                _ => byte,
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn compress_then_inflate_round_trips(
        data in compressible_bytes(b'a', b'b', 0..5000),
        frame_size in 3usize..300,
        window in 8u8..=15,
        level in 0u8..=9,
        text in any::<bool>(),
    ) {
        let window = bits(window);
        let config = ServerDeflateConfig::new().min_message_size(0).level(CompressionLevel::new(level).unwrap());
        let mut compressor = BroadcastCompressor::new(&config);
        let as_text = String::from_utf8_lossy(&data).into_owned();
        let original = if text { as_text.as_bytes() } else { &data[..] };
        for split in [Split::Whole, Split::frame_size(frame_size).unwrap()] {
            let message = if text {
                compressor.prepare_text(&as_text, split, window)
            } else {
                compressor.prepare_binary(&data, split, window)
            };
            let Some(message) = message else {
                // Only when compression would not make it smaller.
                let mut plain = Compressor::new(CompressionLevel::new(level).unwrap(), window);
                prop_assert!(compress(&mut plain, original).len() >= original.len());
                continue;
            };
            prop_assert_eq!(message.opcode(), if text { OpCode::Text } else { OpCode::Binary });
            let mut inflater = Inflater::new(Direction { window_bits: window, context_takeover: false });
            let frames = frames(message.as_bytes());
            let mut out = Vec::new();
            for (i, (_, chunk)) in frames.iter().enumerate() {
                inflater.inflate(chunk, i + 1 == frames.len(), &mut out, original.len()).unwrap();
            }
            prop_assert_eq!(&out[..], original);
        }
    }

    #[test]
    fn context_takeover_round_trips_a_conversation(
        messages in prop::collection::vec(compressible_bytes(b'x', b'y', 0..800), 1..12),
        window in 8u8..=15,
        chunk in 1usize..50,
    ) {
        let direction = Direction { window_bits: bits(window), context_takeover: true };
        let mut compressor = Compressor::for_direction(CompressionLevel::DEFAULT, direction);
        let mut inflater = Inflater::new(direction);
        for message in &messages {
            let payload = compress(&mut compressor, message);
            let mut out = Vec::new();
            let mut pieces = payload.chunks(chunk).peekable();
            if pieces.peek().is_none() {
                inflater.inflate(&[], true, &mut out, usize::MAX).unwrap();
            }
            while let Some(piece) = pieces.next() {
                inflater.inflate(piece, pieces.peek().is_none(), &mut out, usize::MAX).unwrap();
            }
            prop_assert_eq!(&out, message);
        }
    }

    #[test]
    fn inflating_garbage_never_panics(data in prop::collection::vec(any::<u8>(), 0..200), takeover in any::<bool>()) {
        let mut inflater = Inflater::new(Direction { window_bits: WindowBits::MAX, context_takeover: takeover });
        let mut out = Vec::new();
        let _ = inflater.inflate(&data, true, &mut out, 1 << 16);
        prop_assert!(out.len() <= (1 << 16) + 1);
    }

    #[test]
    fn negotiating_garbage_never_panics(header in "[ -~]{0,80}") {
        let _ = ServerDeflateConfig::new().negotiate([header.as_str()]);
        let _ = ClientDeflateConfig::new().accept_response([header.as_str()]);
    }
}

// ---------------------------------------------------------------------------------------
// Negotiation: the server.

fn server(header: &str) -> Option<String> {
    ServerDeflateConfig::new().negotiate([header]).map(|n| n.response_header_value().to_owned())
}

const BASE: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

#[test]
fn server_accepts_valid_offers() {
    let table: &[(&str, &str)] = &[
        ("permessage-deflate", BASE),
        ("permessage-deflate; client_max_window_bits", BASE),
        ("PerMessage-Deflate; Client_Max_Window_Bits", BASE),
        ("permessage-deflate;client_max_window_bits", BASE),
        ("permessage-deflate ; client_max_window_bits = 15", BASE),
        ("permessage-deflate; server_no_context_takeover", BASE),
        ("permessage-deflate; client_no_context_takeover", BASE),
        (
            "permessage-deflate; client_max_window_bits=10",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; client_max_window_bits=10",
        ),
        (
            "permessage-deflate; client_max_window_bits=\"10\"",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; client_max_window_bits=10",
        ),
        (
            "permessage-deflate; client_max_window_bits=\"1\\0\"",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; client_max_window_bits=10",
        ),
        (
            "permessage-deflate; server_max_window_bits=15",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=15",
        ),
        (
            "permessage-deflate; server_max_window_bits=\"12\"",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=12",
        ),
        (
            "permessage-deflate; server_max_window_bits=8",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=8",
        ),
        (
            "permessage-deflate; client_max_window_bits=8; server_max_window_bits=9",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=9; client_max_window_bits=8",
        ),
        // Other extensions are skipped; empty list elements are ignored.
        ("x-webkit-deflate-frame, permessage-deflate", BASE),
        (" , ,permessage-deflate,", BASE),
    ];
    for &(offer, response) in table {
        assert_eq!(server(offer).as_deref(), Some(response), "offer {offer:?}");
    }
    for window in 8..=15 {
        let offer = format!("permessage-deflate; server_max_window_bits={window}; client_max_window_bits={window}");
        let negotiated = ServerDeflateConfig::new().negotiate([offer.as_str()]).unwrap();
        assert_eq!(negotiated.params().server_max_window_bits(), bits(window));
        assert_eq!(negotiated.params().client_max_window_bits(), bits(window));
        assert_eq!(negotiated.params().outgoing(Role::Server), no_takeover(window));
        assert_eq!(negotiated.params().incoming(Role::Server), no_takeover(window));
    }
}

#[test]
fn server_declines_invalid_offers_and_moves_to_the_next() {
    let invalid = [
        "permessage-deflate; unknown",
        "permessage-deflate; unknown=1",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
        "permessage-deflate; Server_Max_Window_Bits=10; server_max_window_bits=10",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; client_no_context_takeover=\"\"",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; server_max_window_bits=",
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=08",
        "permessage-deflate; server_max_window_bits=0",
        "permessage-deflate; server_max_window_bits=-9",
        "permessage-deflate; server_max_window_bits=9.0",
        "permessage-deflate; server_max_window_bits=\"\"",
        "permessage-deflate; server_max_window_bits=\"1 0\"",
        "permessage-deflate; client_max_window_bits=7",
        "permessage-deflate; client_max_window_bits=150",
        "permessage-deflate; client_max_window_bits=a",
        "permessage-deflate client_max_window_bits",
        "permessage-deflate; ; client_max_window_bits",
        "permessage-deflate; =10",
        "permessage-deflate; client_max_window_bits=\"10",
        "permessage-deflate;; server_no_context_takeover",
        "deflate-frame",
        "",
    ];
    for offer in invalid {
        assert_eq!(server(offer), None, "offer {offer:?}");
        // Followed by a good offer, that one is taken.
        let both = format!("{offer}, permessage-deflate; client_max_window_bits=11");
        let expected = if offer.ends_with("=\"10") {
            // An unterminated quote swallows the rest of the header.
            None
        } else {
            Some(format!("{BASE}; client_max_window_bits=11"))
        };
        assert_eq!(server(&both), expected, "offers {both:?}");
    }
}

#[test]
fn server_reads_several_headers_and_quoted_commas() {
    let config = ServerDeflateConfig::new();
    let negotiated = config
        .negotiate([
            "permessage-deflate; server_max_window_bits=7",
            "foo; bar=\"a,b\", permessage-deflate; server_max_window_bits=10",
        ])
        .unwrap();
    assert_eq!(negotiated.params().server_max_window_bits(), bits(10));
    // A quoted comma does not split the list: the broken offer is skipped whole.
    assert_eq!(
        server("permessage-deflate; client_max_window_bits=\"1,0\", permessage-deflate; server_max_window_bits=11")
            .as_deref(),
        Some(format!("{BASE}; server_max_window_bits=11").as_str())
    );
    // And straight from a request.
    let head = b"GET / HTTP/1.1\r\nHost: h\r\nSec-WebSocket-Extensions: foo\r\n\
        Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";
    let RequestParse::Complete { request, .. } = Request::parse(head).unwrap() else { panic!() };
    let negotiated = config.negotiate_request(&request).unwrap();
    assert_eq!(negotiated.response_header_line(), format!("Sec-WebSocket-Extensions: {BASE}\r\n"));
}

#[test]
fn server_configuration_shapes_the_answer() {
    let offer = "permessage-deflate; client_max_window_bits";
    // Off.
    assert!(ServerDeflateConfig::new().enabled(false).negotiate([offer]).is_none());
    // Context takeover allowed for the client, unless it promised not to.
    let lenient = ServerDeflateConfig::new().client_no_context_takeover(false);
    let negotiated = lenient.negotiate([offer]).unwrap();
    assert_eq!(negotiated.response_header_value(), "permessage-deflate; server_no_context_takeover");
    assert_eq!(negotiated.params().incoming(Role::Server), takeover(15));
    assert_eq!(
        lenient.negotiate(["permessage-deflate; client_no_context_takeover"]).unwrap().response_header_value(),
        BASE
    );
    // A smaller window for the server's own compression is announced unasked.
    let small = ServerDeflateConfig::new().server_max_window_bits(bits(11));
    assert_eq!(small.negotiate([offer]).unwrap().response_header_value(), format!("{BASE}; server_max_window_bits=11"));
    assert_eq!(
        small.negotiate(["permessage-deflate; server_max_window_bits=13"]).unwrap().params().server_max_window_bits(),
        bits(11)
    );
    // A floor under the server's window declines offers below it and takes the next.
    let floor = ServerDeflateConfig::new().min_server_window_bits(WindowBits::MAX);
    assert!(floor.negotiate(["permessage-deflate; server_max_window_bits=14"]).is_none());
    let negotiated = floor.negotiate(["permessage-deflate; server_max_window_bits=14, permessage-deflate"]).unwrap();
    assert_eq!(negotiated.params().server_max_window_bits(), WindowBits::MAX);
    // A limit on the client's window needs an offer that can carry it.
    let tight = ServerDeflateConfig::new().client_max_window_bits(bits(10));
    assert!(tight.negotiate(["permessage-deflate"]).is_none());
    assert_eq!(tight.negotiate([offer]).unwrap().params().client_max_window_bits(), bits(10));
    assert_eq!(
        tight.negotiate(["permessage-deflate; client_max_window_bits=9"]).unwrap().params().client_max_window_bits(),
        bits(9)
    );
}

#[test]
fn the_header_grammar() {
    assert_eq!(
        parse_all("a; b=\"c\\\"d\"; e, f"),
        vec![Err("quoted value \"c\\\"d\" is not a token".to_owned()), Ok(("f".to_owned(), vec![]))]
    );
    assert_eq!(
        parse_all("a;b=c ;d, f ; g = \"h\""),
        vec![
            Ok(("a".to_owned(), vec![("b".to_owned(), Some("c".to_owned())), ("d".to_owned(), None)])),
            Ok(("f".to_owned(), vec![("g".to_owned(), Some("h".to_owned()))])),
        ]
    );
    assert!(parse_all("a=b").first().unwrap().is_err());
    assert!(parse_all("a; b=\"unterminated, c").iter().all(Result::is_err));
    assert_eq!(parse_all("\t,  ,"), vec![]);
}

// ---------------------------------------------------------------------------------------
// Negotiation: the client.

#[test]
fn client_offers_what_it_is_configured_to() {
    assert_eq!(ClientDeflateConfig::new().offer().as_deref(), Some("permessage-deflate; client_max_window_bits"));
    assert_eq!(ClientDeflateConfig::new().enabled(false).offer(), None);
    let all = ClientDeflateConfig::new()
        .request_server_no_context_takeover(true)
        .client_no_context_takeover(true)
        .request_server_max_window_bits(Some(bits(10)))
        .client_max_window_bits(Some(bits(12)));
    let offer = all.offer().unwrap();
    assert_eq!(
        offer,
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10; client_max_window_bits=12"
    );
    // Our server accepts our client's offer, and our client its answer.
    let negotiated = ServerDeflateConfig::new().negotiate([offer.as_str()]).unwrap();
    let params = all.accept_response([negotiated.response_header_value()]).unwrap().unwrap();
    assert_eq!(&params, negotiated.params());
    assert_eq!(params.outgoing(Role::Client), no_takeover(12));
    assert_eq!(params.incoming(Role::Client), no_takeover(10));
}

#[test]
fn client_accepts_valid_answers() {
    let config = ClientDeflateConfig::new();
    let params = |header: &str| config.accept_response([header]).unwrap().unwrap();
    let plain = params("permessage-deflate");
    assert_eq!(plain.incoming(Role::Client), takeover(15));
    assert_eq!(plain.outgoing(Role::Client), takeover(15));
    let ours = params(BASE);
    assert_eq!(ours.incoming(Role::Client), no_takeover(15));
    assert_eq!(ours.outgoing(Role::Client), no_takeover(15));
    let windows = params("permessage-deflate; server_max_window_bits=9; client_max_window_bits=\"8\"");
    assert_eq!(windows.incoming(Role::Client), takeover(9));
    assert_eq!(windows.outgoing(Role::Client), takeover(8));
    // Several header fields: one holds the extension.
    assert!(config.accept_response(["", "permessage-deflate"]).unwrap().is_some());
    // Declined: nothing, or an empty value.
    assert_eq!(config.accept_response(Vec::<String>::new()).unwrap(), None);
    assert_eq!(config.accept_response([""]).unwrap(), None);
    // The promise in the offer holds whatever the answer.
    let promising = ClientDeflateConfig::new().client_no_context_takeover(true).client_max_window_bits(Some(bits(11)));
    let params = promising.accept_response(["permessage-deflate; client_max_window_bits=13"]).unwrap().unwrap();
    assert_eq!(params.outgoing(Role::Client), no_takeover(11));
    // Headers of a parsed response.
    let headers = vec![("Sec-WebSocket-Extensions".to_owned(), "permessage-deflate".to_owned())];
    assert!(config.accept_response_headers(&headers).unwrap().is_some());
}

#[test]
fn client_refuses_invalid_answers() {
    use ExtensionResponseError as E;
    let config = ClientDeflateConfig::new();
    let check = |header: &str| config.accept_response([header]).unwrap_err();
    assert_eq!(check("x-foo"), E::UnexpectedExtension("x-foo".into()));
    assert_eq!(check("permessage-deflate, permessage-deflate"), E::DuplicateExtension);
    assert_eq!(check("permessage-deflate; foo"), E::UnknownParameter("foo".into()));
    assert_eq!(
        check("permessage-deflate; server_no_context_takeover; server_no_context_takeover"),
        E::DuplicateParameter("server_no_context_takeover")
    );
    assert_eq!(
        check("permessage-deflate; client_max_window_bits"),
        E::InvalidValue { parameter: "client_max_window_bits".into(), value: None }
    );
    assert_eq!(
        check("permessage-deflate; server_max_window_bits=16"),
        E::InvalidValue { parameter: "server_max_window_bits".into(), value: Some("16".into()) }
    );
    assert_eq!(
        check("permessage-deflate; client_no_context_takeover=yes"),
        E::InvalidValue { parameter: "client_no_context_takeover".into(), value: Some("yes".into()) }
    );
    assert!(matches!(check("permessage-deflate; ="), E::Malformed(_)));
    assert_eq!(
        ClientDeflateConfig::new().enabled(false).accept_response(["permessage-deflate"]).unwrap_err(),
        E::NotOffered
    );
    // What the client asked for must be confirmed.
    let asking = ClientDeflateConfig::new().request_server_max_window_bits(Some(bits(10)));
    assert_eq!(
        asking.accept_response(["permessage-deflate"]).unwrap_err(),
        E::MissingParameter("server_max_window_bits")
    );
    assert_eq!(
        asking.accept_response(["permessage-deflate; server_max_window_bits=11"]).unwrap_err(),
        E::ServerWindowTooLarge { requested: bits(10), answered: bits(11) }
    );
    assert!(asking.accept_response(["permessage-deflate; server_max_window_bits=9"]).is_ok());
    let reset = ClientDeflateConfig::new().request_server_no_context_takeover(true);
    assert_eq!(
        reset.accept_response(["permessage-deflate"]).unwrap_err(),
        E::MissingParameter("server_no_context_takeover")
    );
    assert_eq!(
        E::ServerWindowTooLarge { requested: bits(10), answered: bits(11) }.to_string(),
        "the server chose server_max_window_bits=11, above the 10 the client asked for"
    );
}
