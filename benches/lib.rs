//! Shared helpers for the benchmarks.
#![forbid(unsafe_code)]

use ringcast_codec::bytes::BytesMut;
use ringcast_codec::{OpCode, encode_masked_frame};

/// The masking key the benchmarks use (RFC 6455 §5.7's).
pub const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A typical browser upgrade request: Chrome on Linux opening `ws://localhost:8080/ws`.
pub const BROWSER_REQUEST: &[u8] = b"GET /ws?room=lobby HTTP/1.1\r\n\
Host: localhost:8080\r\n\
Connection: Upgrade\r\n\
Pragma: no-cache\r\n\
Cache-Control: no-cache\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36\r\n\
Upgrade: websocket\r\n\
Origin: http://localhost:8080\r\n\
Sec-WebSocket-Version: 13\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Accept-Language: en-US,en;q=0.9\r\n\
Cookie: session=4f2a9c1e7b3d; theme=dark\r\n\
Sec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
\r\n";

/// A deterministic ASCII payload of `len` bytes (valid as text and as binary).
pub fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

/// A deterministic JSON-like text of `len` bytes, as a fan-out server carries: an array of
/// records with repeating keys and varying numbers (compresses about 5x at level 6).
pub fn json_payload(len: usize) -> String {
    let mut out = String::with_capacity(len + 96);
    out.push('[');
    let mut seq = 0u64;
    while out.len() < len {
        let price = (seq * 7919) % 100_000;
        let qty = (seq * 104_729) % 5000;
        out.push_str(&format!(
            r#"{{"seq":{seq},"symbol":"SYM{}","price":{}.{:02},"qty":{qty},"side":"{}","ts":{}}},"#,
            seq % 17,
            price / 100,
            price % 100,
            if seq % 3 == 0 { "sell" } else { "buy" },
            1_700_000_000_000u64 + seq * 37,
        ));
        seq += 1;
    }
    out.truncate(len);
    out
}

/// One final, masked frame as a client sends it.
pub fn masked_frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_masked_frame(&mut out, opcode, true, payload, KEY);
    out.to_vec()
}

/// A size as a short label: `64 B`, `1 KiB`, `64 KiB`, `1 MiB`.
pub fn size_label(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

/// A zeroed buffer with a `len`-byte window that starts `offset` bytes past a 64-byte
/// (cache line) boundary, so results do not depend on where the allocator put it.
#[derive(Debug)]
pub struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// A window of `len` bytes at `offset` (0..64) past a cache line boundary, filled
    /// from `fill`.
    pub fn new(len: usize, offset: usize, fill: &[u8]) -> Self {
        assert!(offset < 64 && fill.len() >= len);
        let mut storage = vec![0u8; len + 128];
        let start = storage.as_ptr().align_offset(64) + offset;
        storage[start..start + len].copy_from_slice(&fill[..len]);
        AlignedBuf { storage, start, len }
    }

    /// The window.
    pub fn as_slice(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }

    /// The window, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers_build_what_they_say() {
        assert_eq!(size_label(64), "64 B");
        assert_eq!(size_label(1024), "1 KiB");
        assert_eq!(size_label(1 << 20), "1 MiB");
        let buf = AlignedBuf::new(100, 16, &payload(100));
        assert_eq!(buf.as_slice().as_ptr() as usize % 64, 16);
        assert_eq!(buf.as_slice(), &payload(100)[..]);
        let frame = masked_frame(OpCode::Binary, &payload(20));
        assert_eq!(frame.len(), 2 + 4 + 20);
        assert!(std::str::from_utf8(BROWSER_REQUEST).is_ok());
    }
}
