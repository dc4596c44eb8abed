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
