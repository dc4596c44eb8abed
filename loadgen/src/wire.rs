//! The benchmark message, in one of two forms ([`PayloadKind`]):
//! - binary: `u64 seq | u64 send time (ns, CLOCK_MONOTONIC) | filler`, both little-endian;
//! - JSON: a text message `{"seq":"<16 hex>","sent":"<16 hex>","updates":[...]}`, a feed
//!   of quote updates such as fan-out servers carry, which compresses as such text does
//!   (used with `--deflate`).
//!
//! Either way the stamp sits at the start of the message, so a compressed message needs
//! only its first bytes inflated to be read ([`StampInflater`]).

use serde::{Deserialize, Serialize};

/// Bytes of the sequence number and timestamp at the start of a binary message.
pub const STAMP_LEN: usize = 16;
/// `{"seq":"` + 16 hex digits + `","sent":"` + 16 hex digits.
pub const JSON_STAMP_LEN: usize = 8 + 16 + 10 + 16;
const JSON_SEQ_AT: usize = 8;
const JSON_SENT_AT: usize = 8 + 16 + 10;
/// The smallest JSON message: the stamp, `","updates":[` and `]}`.
pub const JSON_MIN_LEN: usize = JSON_STAMP_LEN + 13 + 2;

/// What the benchmark messages look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PayloadKind {
    /// A binary message: stamp and a repeating filler.
    #[default]
    Binary,
    /// A text message of JSON quote updates (compressible like real feed data).
    Json,
}

impl PayloadKind {
    /// The name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            PayloadKind::Binary => "binary",
            PayloadKind::Json => "json",
        }
    }

    /// The WebSocket opcode the messages travel in.
    pub fn opcode(self) -> ringcast_codec::OpCode {
        match self {
            PayloadKind::Binary => ringcast_codec::OpCode::Binary,
            PayloadKind::Json => ringcast_codec::OpCode::Text,
        }
    }

    /// Bytes at the start of a message that hold the stamp.
    pub fn stamp_len(self) -> usize {
        match self {
            PayloadKind::Binary => STAMP_LEN,
            PayloadKind::Json => JSON_STAMP_LEN,
        }
    }

    /// The smallest message of this kind.
    pub fn min_len(self) -> usize {
        match self {
            PayloadKind::Binary => STAMP_LEN,
            PayloadKind::Json => JSON_MIN_LEN,
        }
    }
}

/// Writes `seq` and `sent_ns` at the start of `payload` (made by [`payload`]).
pub fn stamp(payload: &mut [u8], kind: PayloadKind, seq: u64, sent_ns: u64) {
    match kind {
        PayloadKind::Binary => {
            payload[..8].copy_from_slice(&seq.to_le_bytes());
            payload[8..16].copy_from_slice(&sent_ns.to_le_bytes());
        }
        PayloadKind::Json => {
            payload[JSON_SEQ_AT..JSON_SEQ_AT + 16].copy_from_slice(format!("{seq:016x}").as_bytes());
            payload[JSON_SENT_AT..JSON_SENT_AT + 16].copy_from_slice(format!("{sent_ns:016x}").as_bytes());
        }
    }
}

/// Reads what [`stamp`] wrote, if the message is long enough and well formed.
pub fn read_stamp(payload: &[u8], kind: PayloadKind) -> Option<(u64, u64)> {
    match kind {
        PayloadKind::Binary => {
            let seq = u64::from_le_bytes(payload.get(..8)?.try_into().ok()?);
            let sent = u64::from_le_bytes(payload.get(8..16)?.try_into().ok()?);
            Some((seq, sent))
        }
        PayloadKind::Json => {
            let hex = |at: usize| {
                let digits = std::str::from_utf8(payload.get(at..at + 16)?).ok()?;
                u64::from_str_radix(digits, 16).ok()
            };
            Some((hex(JSON_SEQ_AT)?, hex(JSON_SENT_AT)?))
        }
    }
}

/// A message of `len` bytes (at least `kind.min_len()`) with a zeroed stamp.
pub fn payload(len: usize, kind: PayloadKind) -> Vec<u8> {
    let mut p = match kind {
        PayloadKind::Binary => (0..len.max(STAMP_LEN)).map(|i| b'a' + (i % 26) as u8).collect(),
        PayloadKind::Json => json_payload(len.max(JSON_MIN_LEN)),
    };
    stamp(&mut p, kind, 0, 0);
    p
}

/// Quote updates with pseudo-random symbols, prices and sizes (a fixed sequence), padded
/// with spaces to exactly `len` bytes.
fn json_payload(len: usize) -> Vec<u8> {
    let mut out = String::with_capacity(len);
    out.push_str(r#"{"seq":"0000000000000000","sent":"0000000000000000","updates":["#);
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    const VENUES: [&str; 4] = ["XNAS", "XNYS", "BATS", "ARCX"];
    let mut first = true;
    loop {
        let r = next();
        let symbol: String = (0..4).map(|i| (b'A' + ((r >> (i * 5)) % 26) as u8) as char).collect();
        let bid = 20_000 + (r >> 20) % 80_000;
        let entry = format!(
            r#"{}{{"sym":"{symbol}","bid":{}.{:02},"ask":{}.{:02},"qty":{},"venue":"{}"}}"#,
            if first { "" } else { "," },
            bid / 100,
            bid % 100,
            (bid + 1 + (r >> 40) % 9) / 100,
            (bid + 1 + (r >> 40) % 9) % 100,
            100 * (1 + (r >> 50) % 50),
            VENUES[(r >> 60) as usize % 4],
        );
        if out.len() + entry.len() + 2 > len {
            break;
        }
        out.push_str(&entry);
        first = false;
    }
    while out.len() + 2 < len {
        out.push(' ');
    }
    out.push_str("]}");
    out.into_bytes()
}

/// One client's echo message, encoded and masked once: each send only re-stamps it.
///
/// The masking key is chosen at random once per client instead of once per frame, so
/// that the load generator's CPU per message (masking 16 KiB twice over, on one core)
/// does not bound what it measures of the server; the server unmasks every frame all
/// the same. (RFC 6455 asks for a fresh key per frame against proxy cache poisoning,
/// which does not arise between a load generator and the server it measures.)
pub struct MaskedMessage {
    frame: Vec<u8>,
    key: [u8; 4],
    payload_at: usize,
    kind: PayloadKind,
    /// The unmasked message, whose stamp is rewritten for each send.
    plain: Vec<u8>,
}

impl MaskedMessage {
    /// A message of `len` bytes (see [`payload`]) masked with `key`.
    pub fn new(len: usize, kind: PayloadKind, key: [u8; 4]) -> Self {
        let mut frame = bytes::BytesMut::new();
        let payload = payload(len, kind);
        ringcast_codec::encode_masked_frame(&mut frame, kind.opcode(), true, &payload, key);
        let payload_at = frame.len() - payload.len();
        MaskedMessage { frame: frame.to_vec(), key, payload_at, kind, plain: payload }
    }

    /// Writes `seq` and `sent_ns` into the message (masked); returns the frame to send.
    pub fn stamped(&mut self, seq: u64, sent_ns: u64) -> &[u8] {
        let len = self.kind.stamp_len();
        stamp(&mut self.plain, self.kind, seq, sent_ns);
        let mut stamp_bytes = self.plain[..len].to_vec();
        ringcast_codec::apply_mask(&mut stamp_bytes, self.key, 0);
        self.frame[self.payload_at..self.payload_at + len].copy_from_slice(&stamp_bytes);
        &self.frame
    }
}

/// The longest stamp of any kind.
const MAX_STAMP_LEN: usize = JSON_STAMP_LEN;

/// Collects the stamp of a message that may arrive in several frames.
#[derive(Debug)]
pub struct StampReader {
    kind: PayloadKind,
    prefix: [u8; MAX_STAMP_LEN],
    have: usize,
    len: usize,
}

impl StampReader {
    /// A reader of messages of `kind`.
    pub fn new(kind: PayloadKind) -> Self {
        StampReader { kind, prefix: [0; MAX_STAMP_LEN], have: 0, len: 0 }
    }

    /// Feeds one frame's payload; returns `(seq, sent_ns, message_len)` on the final one.
    pub fn push(&mut self, fragment: &[u8], fin: bool) -> Option<(u64, u64, usize)> {
        let want = self.kind.stamp_len();
        if self.have < want {
            let take = (want - self.have).min(fragment.len());
            self.prefix[self.have..self.have + take].copy_from_slice(&fragment[..take]);
            self.have += take;
        }
        self.len += fragment.len();
        if !fin {
            return None;
        }
        let result = read_stamp(&self.prefix[..self.have], self.kind).map(|(seq, sent)| (seq, sent, self.len));
        *self = StampReader::new(self.kind);
        result
    }
}

/// Reads the stamp of permessage-deflate messages by inflating only their first bytes:
/// the load generator counts a compressed delivery without paying to inflate all of it
/// (the server compresses every message on its own, `server_no_context_takeover`, so
/// each one can be inflated from its start). One inflater serves all the connections of
/// a thread, since a stamp is read in one go.
///
/// A broadcast reaches every subscriber as the same compressed bytes, so the bytes whose
/// stamp was read last are kept: the same bytes have the same stamp, and the other
/// subscribers of the thread only compare them.
pub struct StampInflater {
    inflate: flate2::Decompress,
    last: Vec<u8>,
    last_stamp: (u64, u64),
}

impl Default for StampInflater {
    fn default() -> Self {
        StampInflater { inflate: flate2::Decompress::new(false), last: Vec::new(), last_stamp: (0, 0) }
    }
}

impl StampInflater {
    /// The stamp at the start of the compressed payload `compressed` (the first bytes of
    /// a message; more bytes can only help), or `None` if they do not reach the stamp yet
    /// or are not valid DEFLATE.
    pub fn stamp(&mut self, compressed: &[u8], kind: PayloadKind) -> Option<(u64, u64)> {
        if !self.last.is_empty() && compressed == self.last.as_slice() {
            return Some(self.last_stamp);
        }
        let stamp = self.inflate_stamp(compressed, kind)?;
        self.last.clear();
        self.last.extend_from_slice(compressed);
        self.last_stamp = stamp;
        Some(stamp)
    }

    fn inflate_stamp(&mut self, compressed: &[u8], kind: PayloadKind) -> Option<(u64, u64)> {
        self.inflate.reset(false);
        let mut out = [0u8; MAX_STAMP_LEN];
        let want = kind.stamp_len();
        let _ = self.inflate.decompress(compressed, &mut out[..want], flate2::FlushDecompress::Sync).ok()?;
        let produced = self.inflate.total_out() as usize;
        (produced >= want).then(|| read_stamp(&out[..want], kind)).flatten()
    }
}

/// The stamp of one compressed message that may arrive in several frames.
#[derive(Debug, Default)]
pub struct CompressedStamp {
    /// Compressed bytes kept while the first frames were too short to reach the stamp.
    prefix: Vec<u8>,
    stamp: Option<(u64, u64)>,
    /// Compressed payload bytes so far: what the delivery cost on the wire.
    wire_len: usize,
}

/// Compressed bytes kept, at most, while looking for a stamp.
const MAX_COMPRESSED_PREFIX: usize = 4096;

impl CompressedStamp {
    /// Feeds one frame's (compressed) payload; returns `(seq, sent_ns, wire_len)` on the
    /// final one, `None` before it. A final frame without a readable stamp gives
    /// `Some(Err(()))`.
    pub fn push(
        &mut self,
        fragment: &[u8],
        fin: bool,
        kind: PayloadKind,
        inflater: &mut StampInflater,
    ) -> Option<Result<(u64, u64, usize), ()>> {
        self.wire_len += fragment.len();
        if self.stamp.is_none() {
            if self.prefix.is_empty() {
                self.stamp = inflater.stamp(fragment, kind);
            }
            if self.stamp.is_none() && self.prefix.len() < MAX_COMPRESSED_PREFIX {
                let room = MAX_COMPRESSED_PREFIX - self.prefix.len();
                self.prefix.extend_from_slice(&fragment[..room.min(fragment.len())]);
                self.stamp = inflater.stamp(&self.prefix, kind);
            }
        }
        if !fin {
            return None;
        }
        let done = std::mem::take(self);
        Some(done.stamp.map(|(seq, sent)| (seq, sent, done.wire_len)).ok_or(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_masked_message_unmasks_to_its_stamp_and_filler() {
        let mut message = MaskedMessage::new(100, PayloadKind::Binary, [9, 8, 7, 6]);
        let frame = message.stamped(42, 7).to_vec();
        let mut decoder =
            ringcast_codec::Decoder::new(ringcast_codec::DecoderConfig::new(ringcast_codec::Role::Server));
        let mut input = frame.clone();
        let event = decoder.decode(&mut &mut input[..]).unwrap().unwrap();
        let ringcast_codec::Incoming::Binary(data) = event else { panic!("{event:?}") };
        assert_eq!(read_stamp(&data, PayloadKind::Binary), Some((42, 7)));
        assert_eq!(&data[STAMP_LEN..], &payload(100, PayloadKind::Binary)[STAMP_LEN..]);
    }

    #[test]
    fn stamps_survive_any_fragmentation() {
        let mut p = payload(100, PayloadKind::Binary);
        stamp(&mut p, PayloadKind::Binary, 42, 123_456_789);
        assert_eq!(read_stamp(&p, PayloadKind::Binary), Some((42, 123_456_789)));
        for cut in [1, 5, 15, 16, 17, 60] {
            let mut r = StampReader::new(PayloadKind::Binary);
            let mut out = None;
            for (i, chunk) in p.chunks(cut).enumerate() {
                let fin = (i + 1) * cut >= p.len();
                out = r.push(chunk, fin);
            }
            assert_eq!(out, Some((42, 123_456_789, 100)), "chunk {cut}");
        }
        assert_eq!(StampReader::new(PayloadKind::Binary).push(b"short", true), None);
    }

    #[test]
    fn json_messages_are_valid_compressible_text_of_the_exact_size() {
        for len in [JSON_MIN_LEN, 100, 1024, 16 << 10] {
            let mut p = payload(len, PayloadKind::Json);
            assert_eq!(p.len(), len);
            stamp(&mut p, PayloadKind::Json, 7, u64::MAX - 1);
            assert_eq!(read_stamp(&p, PayloadKind::Json), Some((7, u64::MAX - 1)));
            let text = std::str::from_utf8(&p).unwrap();
            assert!(text.starts_with(r#"{"seq":"0000000000000007","sent":"fffffffffffffffe","updates":["#), "{text}");
            assert!(text.ends_with("]}"));
        }
        // Feed data compresses, but not absurdly (a repeated filler would).
        let p = payload(16 << 10, PayloadKind::Json);
        let mut deflate = flate2::Compress::new(flate2::Compression::default(), false);
        let mut out = Vec::with_capacity(p.len());
        deflate.compress_vec(&p, &mut out, flate2::FlushCompress::Sync).unwrap();
        let ratio = p.len() as f64 / out.len() as f64;
        assert!((2.0..8.0).contains(&ratio), "compression ratio {ratio:.1}");
    }

    #[test]
    fn a_compressed_stamp_is_read_from_the_first_bytes_in_any_fragmentation() {
        let mut p = payload(4096, PayloadKind::Json);
        stamp(&mut p, PayloadKind::Json, 99, 12_345);
        let mut deflate = flate2::Compress::new(flate2::Compression::default(), false);
        let mut compressed = Vec::with_capacity(p.len());
        deflate.compress_vec(&p, &mut compressed, flate2::FlushCompress::Sync).unwrap();
        compressed.truncate(compressed.len() - 4);
        let mut inflater = StampInflater::default();
        for cut in [1, 7, 64, 1000, compressed.len()] {
            let mut reader = CompressedStamp::default();
            let mut out = None;
            let chunks: Vec<&[u8]> = compressed.chunks(cut).collect();
            for (i, chunk) in chunks.iter().enumerate() {
                out = reader.push(chunk, i + 1 == chunks.len(), PayloadKind::Json, &mut inflater);
            }
            assert_eq!(out, Some(Ok((99, 12_345, compressed.len()))), "cut {cut}");
        }
        let mut reader = CompressedStamp::default();
        assert_eq!(reader.push(&[0xff; 10], true, PayloadKind::Json, &mut inflater), Some(Err(())));
        // Another message after the first: not mistaken for it.
        let mut other = payload(4096, PayloadKind::Json);
        stamp(&mut other, PayloadKind::Json, 100, 12_346);
        let mut deflate = flate2::Compress::new(flate2::Compression::default(), false);
        let mut compressed_other = Vec::with_capacity(other.len());
        deflate.compress_vec(&other, &mut compressed_other, flate2::FlushCompress::Sync).unwrap();
        assert_eq!(inflater.stamp(&compressed, PayloadKind::Json), Some((99, 12_345)));
        assert_eq!(inflater.stamp(&compressed_other, PayloadKind::Json), Some((100, 12_346)));
        assert_eq!(inflater.stamp(&compressed, PayloadKind::Json), Some((99, 12_345)));
    }
}
