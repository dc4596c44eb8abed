//! Plain-TCP WebSocket clients for the `churn` and `abuse` scenarios: a socket bound to a
//! chosen source address, the upgrade, frames read one at a time with a deadline, and the
//! ways of leaving (close handshake, FIN, reset). These clients misbehave on purpose, so
//! they work on the raw stream rather than through the measuring clients of `group`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use ringcast_codec::{Assembly, Decoder, DecoderConfig, Incoming, Role};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::conn::{Target, describe};

/// Each read asks for at least this much room.
const READ_CHUNK: usize = 16 * 1024;

/// Opens a TCP connection to `target` from `source` (if given), with a small receive
/// buffer if `rcvbuf` is given (set before connecting, so the window starts small).
pub async fn connect(target: &Target, source: Option<IpAddr>, rcvbuf: Option<u32>) -> Result<TcpStream, String> {
    let socket = crate::conn::socket(target.addr, source).map_err(|e| describe("socket", &e))?;
    if let Some(bytes) = rcvbuf {
        socket.set_recv_buffer_size(bytes).map_err(|e| describe("socket", &e))?;
    }
    let stream = socket.connect(target.addr).await.map_err(|e| describe("connect", &e))?;
    stream.set_nodelay(true).map_err(|e| describe("connect", &e))?;
    Ok(stream)
}

/// Sends the upgrade request and reads the `101`; returns what followed its head.
pub async fn upgrade(stream: &mut TcpStream, target: &Target) -> Result<BytesMut, String> {
    let handshake = target.handshake(false)?;
    stream.write_all(handshake.request()).await.map_err(|e| describe("handshake", &e))?;
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if stream.read_buf(&mut buf).await.map_err(|e| describe("handshake", &e))? == 0 {
            return Err("handshake: connection closed by the server".into());
        }
        if let Some((_, head_len)) = handshake.parse_response(&buf).map_err(|e| format!("handshake: {e}"))? {
            buf.advance(head_len);
            return Ok(buf);
        }
    }
}

/// What the server sent next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// A data frame (its payload is not kept).
    Data,
    /// A ping, pong or other control frame but a close.
    Control,
    /// A close frame with its code, if it had one.
    Close(Option<u16>),
    /// The server closed the TCP connection (FIN) without a close frame first.
    Eof,
    /// The connection was reset.
    Reset,
    /// Nothing before the deadline.
    Timeout,
}

/// Reads the server's frames off a raw connection, one at a time, into a buffer that
/// never keeps more than the frame being read.
pub struct Frames {
    buf: BytesMut,
    decoder: Decoder,
}

impl Frames {
    /// Starts with `leftover`, the bytes that came after the `101`.
    pub fn new(leftover: BytesMut) -> Frames {
        let config = DecoderConfig::new(Role::Client)
            .assembly(Assembly::Frames)
            .max_message_size(1 << 30)
            .max_frame_size(1 << 30);
        Frames { buf: leftover, decoder: Decoder::new(config) }
    }

    /// The next frame (or the end of the connection), waiting at most until `deadline`.
    pub async fn next(&mut self, stream: &mut TcpStream, deadline: Instant) -> Result<Next, String> {
        loop {
            if let Some(event) = self.decoder.decode_buf(&mut self.buf).map_err(|e| format!("protocol: {e}"))? {
                return Ok(match event {
                    Incoming::Fragment { .. } | Incoming::Text(_) | Incoming::Binary(_) => Next::Data,
                    Incoming::Close(frame) => Next::Close(frame.map(|f| u16::from(f.code))),
                    Incoming::Ping(_) | Incoming::Pong(_) => Next::Control,
                });
            }
            self.buf.reserve(READ_CHUNK);
            match tokio::time::timeout_at(deadline, stream.read_buf(&mut self.buf)).await {
                Err(_) => return Ok(Next::Timeout),
                Ok(Ok(0)) => return Ok(Next::Eof),
                Ok(Ok(_)) => {}
                Ok(Err(e)) if is_reset(&e) => return Ok(Next::Reset),
                Ok(Err(e)) => return Err(describe("read", &e)),
            }
        }
    }

    /// Reads frames until a close frame or the end of the connection (data frames are
    /// skipped), waiting at most until `deadline`.
    pub async fn until_close(&mut self, stream: &mut TcpStream, deadline: Instant) -> Result<Next, String> {
        loop {
            match self.next(stream, deadline).await? {
                Next::Data | Next::Control => {}
                other => return Ok(other),
            }
        }
    }
}

/// Reads and discards until the server closes the connection: `Eof` or `Reset`, or
/// `Timeout` at `deadline`.
pub async fn until_eof(stream: &mut TcpStream, deadline: Instant) -> Next {
    let mut sink = vec![0u8; READ_CHUNK];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut sink)).await {
            Err(_) => return Next::Timeout,
            Ok(Ok(0)) => return Next::Eof,
            Ok(Ok(_)) => {}
            Ok(Err(e)) if is_reset(&e) => return Next::Reset,
            Ok(Err(_)) => return Next::Reset,
        }
    }
}

/// Whether an I/O error means the peer reset the connection.
pub fn is_reset(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::BrokenPipe
    )
}

/// Leaves with a reset: `SO_LINGER` 0, then the descriptor is closed.
pub fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// A masked client frame with any first byte (FIN, RSV bits, opcode) and payload.
pub fn masked_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let key: [u8; 4] = rand::random();
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(first);
    push_length(&mut out, 0x80, payload.len() as u64);
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

/// A frame header announcing `len` payload bytes (masked), without the payload.
pub fn masked_header(first: u8, len: u64) -> Vec<u8> {
    let mut out = vec![first];
    push_length(&mut out, 0x80, len);
    out.extend_from_slice(&rand::random::<[u8; 4]>());
    out
}

fn push_length(out: &mut Vec<u8>, mask_bit: u8, len: u64) {
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= u64::from(u16::MAX) {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
}

/// A close frame from the client with `code`.
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_bytes());
    masked_frame(0x88, &payload)
}

/// Counts per second since a start: slot `i` holds what happened in second `i`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Timeline(pub Vec<u64>);

impl Timeline {
    /// Counts one event at `at` (seconds since the start).
    pub fn add(&mut self, at: Duration) {
        let slot = at.as_secs() as usize;
        if self.0.len() <= slot {
            self.0.resize(slot + 1, 0);
        }
        self.0[slot] += 1;
    }

    /// Adds another timeline, slot by slot.
    pub fn merge(&mut self, other: &Timeline) {
        if self.0.len() < other.0.len() {
            self.0.resize(other.0.len(), 0);
        }
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a += b;
        }
    }
}

/// Counts by name (error kinds, outcomes).
pub type Counts = BTreeMap<String, u64>;

/// Adds one to `counts[key]`.
pub fn count(counts: &mut Counts, key: impl Into<String>) {
    *counts.entry(key.into()).or_default() += 1;
}

/// Adds every count of `other` to `into`.
pub fn merge_counts(into: &mut Counts, other: &Counts) {
    for (k, v) in other {
        *into.entry(k.clone()).or_default() += v;
    }
}

/// Ends a `churn` or `abuse` run: prints the report, writes it as JSON to `json` if asked,
/// and gives the exit status (0 when `passed`, 1 when not, 2 when the run or the file
/// could not be done).
pub fn finish<R: Serialize>(
    outcome: Result<R, String>,
    json: Option<&std::path::Path>,
    human: impl Fn(&R) -> String,
    passed: impl Fn(&R) -> bool,
) -> std::process::ExitCode {
    let report = match outcome {
        Ok(report) => report,
        Err(e) => {
            eprintln!("ringcast-loadgen: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    print!("{}", human(&report));
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&report).expect("report serialises");
        if let Err(e) = write_file(path, &text) {
            eprintln!("ringcast-loadgen: {e}");
            return std::process::ExitCode::from(2);
        }
    }
    if passed(&report) { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::FAILURE }
}

/// Writes `text` to `path`, creating its directory.
pub fn write_file(path: &std::path::Path, text: &str) -> Result<(), String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_masked_and_sized() {
        let f = masked_frame(0x81, b"hello");
        assert_eq!((f[0], f[1]), (0x81, 0x80 | 5));
        let key = &f[2..6];
        let unmasked: Vec<u8> = f[6..].iter().enumerate().map(|(i, b)| b ^ key[i % 4]).collect();
        assert_eq!(unmasked, b"hello");
        assert_eq!(masked_header(0x82, 1 << 40)[1], 0x80 | 127);
        assert_eq!(masked_header(0x82, 1000)[1..4], [0x80 | 126, 0x03, 0xe8]);
        let close = close_frame(1000, "");
        assert_eq!((close[0], close[1]), (0x88, 0x82));
    }

    #[test]
    fn timelines_merge_by_second() {
        let mut a = Timeline::default();
        a.add(Duration::from_millis(1500));
        a.add(Duration::from_millis(1999));
        let mut b = Timeline::default();
        b.add(Duration::from_millis(10));
        b.add(Duration::from_secs(3));
        a.merge(&b);
        assert_eq!(a.0, vec![1, 2, 0, 1]);
    }
}
