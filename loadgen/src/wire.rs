//! The benchmark message: `u64 seq | u64 send time (ns, CLOCK_MONOTONIC) | filler`, both
//! little-endian, as a binary WebSocket message of the requested size (at least 16 bytes).

/// Bytes of the sequence number and timestamp at the start of every message.
pub const STAMP_LEN: usize = 16;

/// Writes `seq` and `sent_ns` at the start of `payload` (at least [`STAMP_LEN`] bytes).
pub fn stamp(payload: &mut [u8], seq: u64, sent_ns: u64) {
    payload[..8].copy_from_slice(&seq.to_le_bytes());
    payload[8..16].copy_from_slice(&sent_ns.to_le_bytes());
}

/// Reads what [`stamp`] wrote, if the message is long enough.
pub fn read_stamp(payload: &[u8]) -> Option<(u64, u64)> {
    let seq = u64::from_le_bytes(payload.get(..8)?.try_into().ok()?);
    let sent = u64::from_le_bytes(payload.get(8..16)?.try_into().ok()?);
    Some((seq, sent))
}

/// A payload of `len` bytes: a zeroed stamp and a repeating filler pattern.
pub fn payload(len: usize) -> Vec<u8> {
    let mut p: Vec<u8> = (0..len.max(STAMP_LEN)).map(|i| b'a' + (i % 26) as u8).collect();
    stamp(&mut p, 0, 0);
    p
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
}

impl MaskedMessage {
    /// A binary message of `len` bytes (see [`payload`]) masked with `key`.
    pub fn new(len: usize, key: [u8; 4]) -> Self {
        let mut frame = bytes::BytesMut::new();
        let payload = payload(len);
        ringcast_codec::encode_masked_frame(&mut frame, ringcast_codec::OpCode::Binary, true, &payload, key);
        let payload_at = frame.len() - payload.len();
        MaskedMessage { frame: frame.to_vec(), key, payload_at }
    }

    /// Writes `seq` and `sent_ns` into the message (masked); returns the frame to send.
    pub fn stamped(&mut self, seq: u64, sent_ns: u64) -> &[u8] {
        let mut stamp_bytes = [0u8; STAMP_LEN];
        stamp(&mut stamp_bytes, seq, sent_ns);
        ringcast_codec::apply_mask(&mut stamp_bytes, self.key, 0);
        self.frame[self.payload_at..self.payload_at + STAMP_LEN].copy_from_slice(&stamp_bytes);
        &self.frame
    }
}

/// Collects the stamp of a message that may arrive in several frames.
#[derive(Debug, Default)]
pub struct StampReader {
    prefix: [u8; STAMP_LEN],
    have: usize,
    len: usize,
}

impl StampReader {
    /// Feeds one frame's payload; returns `(seq, sent_ns, message_len)` on the final one.
    pub fn push(&mut self, fragment: &[u8], fin: bool) -> Option<(u64, u64, usize)> {
        if self.have < STAMP_LEN {
            let take = (STAMP_LEN - self.have).min(fragment.len());
            self.prefix[self.have..self.have + take].copy_from_slice(&fragment[..take]);
            self.have += take;
        }
        self.len += fragment.len();
        if !fin {
            return None;
        }
        let result = read_stamp(&self.prefix[..self.have]).map(|(seq, sent)| (seq, sent, self.len));
        *self = StampReader::default();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_masked_message_unmasks_to_its_stamp_and_filler() {
        let mut message = MaskedMessage::new(100, [9, 8, 7, 6]);
        let frame = message.stamped(42, 7).to_vec();
        let mut decoder =
            ringcast_codec::Decoder::new(ringcast_codec::DecoderConfig::new(ringcast_codec::Role::Server));
        let mut input = frame.clone();
        let event = decoder.decode(&mut &mut input[..]).unwrap().unwrap();
        let ringcast_codec::Incoming::Binary(data) = event else { panic!("{event:?}") };
        assert_eq!(read_stamp(&data), Some((42, 7)));
        assert_eq!(&data[STAMP_LEN..], &payload(100)[STAMP_LEN..]);
    }

    #[test]
    fn stamps_survive_any_fragmentation() {
        let mut p = payload(100);
        stamp(&mut p, 42, 123_456_789);
        assert_eq!(read_stamp(&p), Some((42, 123_456_789)));
        for cut in [1, 5, 15, 16, 17, 60] {
            let mut r = StampReader::default();
            let mut out = None;
            for (i, chunk) in p.chunks(cut).enumerate() {
                let fin = (i + 1) * cut >= p.len();
                out = r.push(chunk, fin);
            }
            assert_eq!(out, Some((42, 123_456_789, 100)), "chunk {cut}");
        }
        assert_eq!(StampReader::default().push(b"short", true), None);
    }
}
