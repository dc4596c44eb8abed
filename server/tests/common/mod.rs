//! Shared helpers of the server's end-to-end tests: servers on 127.0.0.1 under both I/O
//! backends, a recording handler, and a raw TCP WebSocket client that speaks (and
//! breaks) the protocol byte by byte with the codec's own primitives.
#![allow(dead_code)] // every test binary uses a different subset

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use ringcast::codec::frame::{FrameHeader, FrameRules, HeaderParse};
use ringcast::codec::handshake::{ClientHandshake, ClientRequest};
use ringcast::codec::{Role, apply_mask, bytes::BytesMut, encode_masked_frame};
use ringcast::{
    CloseCode, CloseFrame, Connection, ConnectionId, DisconnectReason, Frame, Handler, IoBackend, OpCode, Server,
    ServerBuilder, ServerHandle,
};

/// The bound of every single wait in these tests.
pub const WAIT: Duration = Duration::from_secs(10);

/// Generates `mod $name { fn io_uring(); fn epoll(); }`: the test body `$name(backend)`
/// runs once on each I/O backend.
#[macro_export]
macro_rules! backends {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[test]
            fn io_uring() {
                super::$name(ringcast::IoBackend::IoUring);
            }
            #[test]
            fn epoll() {
                super::$name(ringcast::IoBackend::Epoll);
            }
        }
    )+};
}

/// A builder for a test server: 127.0.0.1, any free port, two workers (so that
/// broadcasts cross shards), the given backend.
pub fn builder(backend: IoBackend) -> ServerBuilder {
    Server::builder().bind(Ipv4Addr::LOCALHOST.into()).port(0).workers(2).io_backend(backend)
}

/// A running server that is asked to stop even if the test panics.
pub struct Running<H: Handler> {
    handle: Option<ServerHandle<H>>,
}

impl<H: Handler> Running<H> {
    /// Starts `builder` with `handler`, checking that every worker runs the backend asked for.
    #[track_caller]
    pub fn start(builder: ServerBuilder, handler: H) -> Self {
        let wanted = builder.config().clone();
        let backend = wanted_backend(&builder);
        let handle = builder.start(handler).unwrap_or_else(|e| panic!("server start failed: {e}"));
        assert_eq!(handle.backends().len(), wanted.workers());
        if let Some(b) = backend {
            assert!(handle.backends().iter().all(|x| *x == b), "asked for {b:?}, got {:?}", handle.backends());
        }
        Running { handle: Some(handle) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.handle.as_ref().expect("running").local_addr()
    }

    /// `ws://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr())
    }

    /// Graceful stop, waiting for every worker to exit (bounded: see `stop_within`).
    #[track_caller]
    pub fn stop(mut self) {
        let handle = self.handle.take().expect("running");
        stop_within(handle, Duration::from_secs(15));
    }
}

/// Stops `handle` and fails if the workers have not exited within `bound`.
#[track_caller]
pub fn stop_within<H: Handler>(handle: ServerHandle<H>, bound: Duration) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        handle.stop();
        let _ = tx.send(());
    });
    rx.recv_timeout(bound).unwrap_or_else(|_| panic!("ServerHandle::stop did not return within {bound:?}"));
}

fn wanted_backend(builder: &ServerBuilder) -> Option<ringcast::Backend> {
    // The config does not expose the backend; the Debug form does.
    let shown = format!("{:?}", builder.config());
    if shown.contains("backend: IoUring") {
        Some(ringcast::Backend::IoUring)
    } else if shown.contains("backend: Epoll") {
        Some(ringcast::Backend::Epoll)
    } else {
        None
    }
}

impl<H: Handler> std::ops::Deref for Running<H> {
    type Target = ServerHandle<H>;
    fn deref(&self) -> &ServerHandle<H> {
        self.handle.as_ref().expect("running")
    }
}

impl<H: Handler> Drop for Running<H> {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            // A test failed before stopping: do not wait for the workers.
            handle.request_stop();
        }
    }
}

/// Polls `cond` every few milliseconds; panics naming `what` after `timeout`.
#[track_caller]
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ------------------------------------------------------------------ recording handler

/// One handler event, as recorded by [`Log`].
#[derive(Debug, Clone, PartialEq)]
pub enum Ev {
    Connect(ConnectionId),
    Open(ConnectionId, String),
    Text(ConnectionId, String),
    Binary(ConnectionId, Vec<u8>),
    Frame(ConnectionId, OpCode, bool, Vec<u8>),
    Ping(ConnectionId, Vec<u8>),
    Pong(ConnectionId, Vec<u8>),
    /// Close code and reason received (`None`: close frame without a code).
    Close(ConnectionId, Option<(u16, String)>),
    Disconnect(ConnectionId, DisconnectReason),
}

impl Ev {
    pub fn id(&self) -> ConnectionId {
        match self {
            Ev::Connect(id)
            | Ev::Open(id, _)
            | Ev::Text(id, _)
            | Ev::Binary(id, _)
            | Ev::Frame(id, ..)
            | Ev::Ping(id, _)
            | Ev::Pong(id, _)
            | Ev::Close(id, _)
            | Ev::Disconnect(id, _) => *id,
        }
    }
}

/// Handler events shared between the server's threads and the test.
#[derive(Clone, Default)]
pub struct Log(Arc<(Mutex<Vec<Ev>>, Condvar)>);

impl Log {
    pub fn push(&self, ev: Ev) {
        let (events, cond) = &*self.0;
        events.lock().unwrap_or_else(|e| e.into_inner()).push(ev);
        cond.notify_all();
    }

    pub fn events(&self) -> Vec<Ev> {
        self.0.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until `cond` holds over all events so far; returns them.
    #[track_caller]
    pub fn wait(&self, what: &str, cond: impl Fn(&[Ev]) -> bool) -> Vec<Ev> {
        self.wait_within(what, WAIT, cond)
    }

    #[track_caller]
    pub fn wait_within(&self, what: &str, timeout: Duration, cond: impl Fn(&[Ev]) -> bool) -> Vec<Ev> {
        let (events, cvar) = &*self.0;
        let deadline = Instant::now() + timeout;
        let mut guard = events.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if cond(&guard) {
                return guard.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out after {timeout:?} waiting for {what}; handler events: {:#?}", *guard);
            guard = cvar.wait_timeout(guard, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Waits for the first event matching `pred`; returns it.
    #[track_caller]
    pub fn wait_for(&self, what: &str, pred: impl Fn(&Ev) -> bool) -> Ev {
        let events = self.wait(what, |evs| evs.iter().any(&pred));
        events.into_iter().find(pred).expect("found")
    }

    /// The disconnect reason of `id`, waiting for it.
    #[track_caller]
    pub fn wait_disconnect(&self, id: ConnectionId) -> DisconnectReason {
        match self.wait_for(&format!("on_disconnect of {id}"), |e| matches!(e, Ev::Disconnect(i, _) if *i == id)) {
            Ev::Disconnect(_, reason) => reason,
            _ => unreachable!(),
        }
    }

    /// The ids of opened connections, in order.
    pub fn opened(&self) -> Vec<ConnectionId> {
        self.events().iter().filter_map(|e| if let Ev::Open(id, _) = e { Some(*id) } else { None }).collect()
    }

    /// Waits until `n` connections have opened; returns their ids in order.
    #[track_caller]
    pub fn wait_opened(&self, n: usize) -> Vec<ConnectionId> {
        self.wait(&format!("{n} open connections"), |evs| {
            evs.iter().filter(|e| matches!(e, Ev::Open(..))).count() >= n
        });
        self.opened()
    }
}

pub fn close_of(frame: Option<&CloseFrame>) -> Option<(u16, String)> {
    frame.map(|f| (u16::from(f.code), f.reason.as_str().to_owned()))
}

/// Records every event; echoes text and binary messages unless `echo` is false.
#[derive(Clone, Default)]
pub struct Recorder {
    pub log: Log,
    pub echo: bool,
}

impl Recorder {
    pub fn echo() -> Self {
        Recorder { log: Log::default(), echo: true }
    }

    pub fn silent() -> Self {
        Recorder { log: Log::default(), echo: false }
    }
}

impl Handler for Recorder {
    type Data = ();

    fn on_connect(&self, id: ConnectionId, _peer: SocketAddr) {
        self.log.push(Ev::Connect(id));
    }

    fn on_handshake_response_sent(&self, conn: &mut Connection<'_, Self::Data>) {
        let path = conn.request().map(|r| r.target().to_owned()).unwrap_or_default();
        self.log.push(Ev::Open(conn.id(), path));
    }

    fn on_text(&self, conn: &mut Connection<'_, Self::Data>, text: &str) {
        self.log.push(Ev::Text(conn.id(), text.to_owned()));
        if self.echo {
            conn.send(text).expect("echo text");
        }
    }

    fn on_binary(&self, conn: &mut Connection<'_, Self::Data>, data: &[u8]) {
        self.log.push(Ev::Binary(conn.id(), data.to_vec()));
        if self.echo {
            conn.send(data).expect("echo binary");
        }
    }

    fn on_frame(&self, conn: &mut Connection<'_, Self::Data>, frame: Frame<'_>) {
        self.log.push(Ev::Frame(conn.id(), frame.opcode, frame.fin, frame.payload.to_vec()));
    }

    fn on_ping(&self, conn: &mut Connection<'_, Self::Data>, payload: &[u8]) {
        self.log.push(Ev::Ping(conn.id(), payload.to_vec()));
    }

    fn on_pong(&self, conn: &mut Connection<'_, Self::Data>, payload: &[u8]) {
        self.log.push(Ev::Pong(conn.id(), payload.to_vec()));
    }

    fn on_close(&self, conn: &mut Connection<'_, Self::Data>, frame: Option<&CloseFrame>) {
        self.log.push(Ev::Close(conn.id(), close_of(frame)));
    }

    fn on_disconnect(&self, conn: &mut Connection<'_, Self::Data>, reason: &DisconnectReason) {
        self.log.push(Ev::Disconnect(conn.id(), reason.clone()));
    }
}

// ------------------------------------------------------------------ raw TCP client

static NONCE: AtomicU32 = AtomicU32::new(1);

/// A fresh 16-byte handshake nonce and 4-byte mask key source (tests need no real randomness,
/// only distinct values).
fn nonce() -> [u8; 16] {
    let n = NONCE.fetch_add(1, Ordering::Relaxed);
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = (n.wrapping_mul(2_654_435_761).rotate_left(i as u32 * 3) >> 7) as u8 ^ i as u8;
    }
    out
}

pub fn mask_key() -> [u8; 4] {
    let n = NONCE.fetch_add(1, Ordering::Relaxed).wrapping_mul(2_654_435_761);
    n.to_be_bytes()
}

/// A TCP connection to 127.0.0.1 with bounded reads and writes.
#[track_caller]
pub fn tcp(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, WAIT).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.set_write_timeout(Some(WAIT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// The bytes of an upgrade request for `path` with extra header lines (each ending in `\r\n`).
pub fn upgrade_request(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> ClientHandshake {
    let host = addr.ip().to_string();
    ClientHandshake::new(
        &ClientRequest { host: &host, port: addr.port(), path, headers, ..ClientRequest::default() },
        nonce(),
    )
    .expect("a valid upgrade request")
}

/// One frame as read from the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireFrame {
    pub header: FrameHeader,
    /// Header plus payload length on the wire.
    pub wire_len: usize,
    pub payload: Vec<u8>,
}

/// A WebSocket client on a plain std socket: it frames (and misframes) by hand and
/// checks what the server puts on the wire.
pub struct RawClient {
    pub stream: TcpStream,
    /// Bytes read; those before `pos` are consumed.
    buf: Vec<u8>,
    pos: usize,
    /// The RSV bits the server may set (RSV1 once permessage-deflate is agreed).
    pub allowed_rsv: u8,
}

impl RawClient {
    /// Connects and completes the opening handshake on `path`.
    #[track_caller]
    pub fn open(addr: SocketAddr, path: &str) -> Self {
        Self::open_on(tcp(addr), addr, path)
    }

    /// Completes the opening handshake over an already connected `stream`.
    #[track_caller]
    pub fn open_on(stream: TcpStream, addr: SocketAddr, path: &str) -> Self {
        Self::handshake(stream, addr, path, &[]).0
    }

    /// Connects with extra request headers (e.g. `Sec-WebSocket-Extensions`); returns the
    /// client and the `101`'s headers. RSV1 is allowed from the server when the answer
    /// agreed to permessage-deflate.
    #[track_caller]
    pub fn open_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (Self, Vec<(String, String)>) {
        Self::handshake(tcp(addr), addr, path, headers)
    }

    #[track_caller]
    fn handshake(
        mut stream: TcpStream,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (Self, Vec<(String, String)>) {
        let hs = upgrade_request(addr, path, headers);
        stream.write_all(hs.request()).expect("send upgrade request");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some((response, head_len)) = hs.parse_response(&buf).unwrap_or_else(|e| panic!("handshake: {e}")) {
                let deflate = response.headers.iter().any(|(name, value)| {
                    name.eq_ignore_ascii_case("sec-websocket-extensions") && value.contains("permessage-deflate")
                });
                let allowed_rsv = if deflate { 0b100 } else { 0 };
                return (RawClient { stream, buf, pos: head_len, allowed_rsv }, response.headers);
            }
            let n = stream.read(&mut chunk).expect("read handshake response");
            assert!(n > 0, "EOF during the handshake; got {:?}", String::from_utf8_lossy(&buf));
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Wraps a stream whose handshake the caller completed.
    pub fn upgraded(stream: TcpStream) -> Self {
        RawClient { stream, buf: Vec::new(), pos: 0, allowed_rsv: 0 }
    }

    /// Sends raw bytes.
    #[track_caller]
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// Sends one masked frame with the given opcode and FIN bit.
    #[track_caller]
    pub fn send_frame(&mut self, opcode: OpCode, fin: bool, payload: &[u8]) {
        let mut out = BytesMut::new();
        encode_masked_frame(&mut out, opcode, fin, payload, mask_key());
        self.send_raw(&out);
    }

    #[track_caller]
    pub fn send_text(&mut self, text: &str) {
        self.send_frame(OpCode::Text, true, text.as_bytes());
    }

    /// Sends a close frame with `code` and `reason`.
    #[track_caller]
    pub fn send_close(&mut self, code: u16, reason: &str) {
        let payload = ringcast::codec::close_payload(CloseCode::from(code), reason);
        self.send_frame(OpCode::Close, true, &payload);
    }

    /// The next frame, or `None` at EOF, on a reset, or when the stream's read timeout
    /// passes first.
    #[track_caller]
    pub fn read_frame_within(&mut self) -> Option<WireFrame> {
        let rules = FrameRules { allowed_rsv: self.allowed_rsv, ..FrameRules::for_role(Role::Client, usize::MAX >> 1) };
        loop {
            let pending = &self.buf[self.pos..];
            if let Ok(HeaderParse::Complete { header, header_len }) = FrameHeader::parse(pending, &rules) {
                let total = header_len + header.payload_len as usize;
                if pending.len() >= total {
                    let payload = pending[header_len..total].to_vec();
                    self.pos += total;
                    return Some(WireFrame { header, wire_len: total, payload });
                }
            }
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next frame if it has arrived, on a non-blocking stream: `Ok(None)` when more
    /// must arrive first, `Err(())` at EOF or on an error.
    pub fn poll_frame(&mut self) -> Result<Option<WireFrame>, ()> {
        let rules = FrameRules { allowed_rsv: self.allowed_rsv, ..FrameRules::for_role(Role::Client, usize::MAX >> 1) };
        loop {
            let pending = &self.buf[self.pos..];
            if let Ok(HeaderParse::Complete { header, header_len }) = FrameHeader::parse(pending, &rules) {
                let total = header_len + header.payload_len as usize;
                if pending.len() >= total {
                    let payload = pending[header_len..total].to_vec();
                    self.pos += total;
                    return Ok(Some(WireFrame { header, wire_len: total, payload }));
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(None),
                Err(_) => return Err(()),
            }
        }
    }

    /// Reads more bytes into the buffer; `false` at EOF or on a reset.
    #[track_caller]
    fn fill(&mut self) -> bool {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let mut chunk = [0u8; 64 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => false,
            Err(e) => panic!("raw client read failed (nothing from the server within {WAIT:?}?): {e}"),
        }
    }

    /// The next frame from the server, checked against the client rules (unmasked, no
    /// RSV bits but those agreed); `None` at EOF.
    #[track_caller]
    pub fn read_frame(&mut self) -> Option<WireFrame> {
        let rules = FrameRules { allowed_rsv: self.allowed_rsv, ..FrameRules::for_role(Role::Client, usize::MAX >> 1) };
        loop {
            let pending = &self.buf[self.pos..];
            match FrameHeader::parse(pending, &rules) {
                Ok(HeaderParse::Complete { header, header_len }) => {
                    let total = header_len + header.payload_len as usize;
                    if pending.len() >= total {
                        let payload = pending[header_len..total].to_vec();
                        self.pos += total;
                        return Some(WireFrame { header, wire_len: total, payload });
                    }
                }
                Ok(HeaderParse::Incomplete { .. }) => {}
                Err(e) => panic!("the server sent an invalid frame: {e}"),
            }
            if !self.fill() {
                assert!(self.buf.is_empty(), "EOF inside a frame ({} bytes left)", self.buf.len());
                return None;
            }
        }
    }

    /// The next frame; panics at EOF.
    #[track_caller]
    pub fn expect_frame(&mut self) -> WireFrame {
        self.read_frame().expect("a frame from the server, got EOF")
    }

    /// The next data message, reassembled (control frames are skipped); the frames it
    /// was made of are returned too.
    #[track_caller]
    pub fn read_message(&mut self) -> (OpCode, Vec<u8>, Vec<WireFrame>) {
        let mut frames = Vec::new();
        let mut data = Vec::new();
        loop {
            let frame = self.expect_frame();
            if frame.header.opcode.is_control() {
                assert_ne!(frame.header.opcode, OpCode::Close, "close frame instead of a message: {frame:?}");
                continue;
            }
            data.extend_from_slice(&frame.payload);
            let fin = frame.header.fin;
            frames.push(frame);
            if fin {
                return (frames[0].header.opcode, data, frames);
            }
        }
    }

    #[track_caller]
    pub fn read_text(&mut self) -> String {
        let (opcode, data, _) = self.read_message();
        assert_eq!(opcode, OpCode::Text);
        String::from_utf8(data).expect("UTF-8")
    }

    /// Reads until a close frame and returns its code (1005 when empty), then checks that
    /// the server ends the TCP connection.
    #[track_caller]
    pub fn expect_close(&mut self) -> u16 {
        loop {
            let frame = self.expect_frame();
            if frame.header.opcode == OpCode::Close {
                let code = match frame.payload.as_slice() {
                    [] => 1005,
                    [a, b, ..] => u16::from_be_bytes([*a, *b]),
                    [_] => panic!("one-byte close payload"),
                };
                self.expect_eof();
                return code;
            }
        }
    }

    /// Asserts that the server closes the connection (after whatever it still sends).
    #[track_caller]
    pub fn expect_eof(&mut self) {
        while let Some(frame) = self.read_frame() {
            assert!(frame.header.opcode != OpCode::Text && frame.header.opcode != OpCode::Binary, "{frame:?}");
        }
    }
}

/// A masked frame with a raw first byte (FIN, RSV and opcode bits as given), for
/// protocol violations the codec's encoder refuses to produce.
pub fn raw_frame(first_byte: u8, masked: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![first_byte];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => out.push(mask_bit | n as u8),
        n @ 126..=0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mut body = payload.to_vec();
    if masked {
        let key = mask_key();
        out.extend_from_slice(&key);
        apply_mask(&mut body, key, 0);
    }
    out.extend_from_slice(&body);
    out
}

// ------------------------------------------------------------------ raw HTTP

/// An HTTP response read to the end of the connection.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    /// Lower-cased names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Sends `request` and reads the answer until the server closes the connection.
#[track_caller]
pub fn http_exchange(addr: SocketAddr, request: &[u8]) -> HttpReply {
    let mut stream = tcp(addr);
    stream.write_all(request).expect("send request");
    read_http_reply(&mut stream)
}

/// Reads an HTTP response until EOF (a reset after the response counts as EOF).
#[track_caller]
pub fn read_http_reply(stream: &mut TcpStream) -> HttpReply {
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset && !raw.is_empty() => break,
            Err(e) => panic!("reading the HTTP response: {e}; got so far: {:?}", String::from_utf8_lossy(&raw)),
        }
    }
    parse_http_reply(&raw)
}

#[track_caller]
pub fn parse_http_reply(raw: &[u8]) -> HttpReply {
    let text = String::from_utf8_lossy(raw);
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        panic!("no complete HTTP response head in {text:?}");
    };
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    assert_eq!(parts.next(), Some("HTTP/1.1"), "status line {status_line:?}");
    let status = parts.next().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("status line {status_line:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    HttpReply { status, headers, body: raw[end + 4..].to_vec() }
}

/// A valid upgrade request head with these header lines replacing the defaults
/// (`None` value: leave the header out).
pub fn handcrafted_upgrade(path: &str, overrides: &[(&str, Option<&str>)]) -> Vec<u8> {
    let mut fields: Vec<(&str, Option<&str>)> = vec![
        ("Host", Some("127.0.0.1")),
        ("Upgrade", Some("websocket")),
        ("Connection", Some("Upgrade")),
        ("Sec-WebSocket-Key", Some("dGhlIHNhbXBsZSBub25jZQ==")),
        ("Sec-WebSocket-Version", Some("13")),
    ];
    for (name, value) in overrides {
        match fields.iter_mut().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
            Some(field) => field.1 = *value,
            None => fields.push((name, *value)),
        }
    }
    let mut out = format!("GET {path} HTTP/1.1\r\n");
    for (name, value) in fields {
        if let Some(value) = value {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// Checks that the server still upgrades and echoes: a new raw client sends a text and
/// reads it back.
#[track_caller]
pub fn assert_echo_works(addr: SocketAddr) {
    let mut client = RawClient::open(addr, "/");
    client.send_text("still alive?");
    assert_eq!(client.read_text(), "still alive?");
    client.send_close(1000, "");
    assert_eq!(client.expect_close(), 1000);
}

/// A payload whose bytes depend on their position (so that reordering or loss shows).
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| ((i * 31 + i / 251) as u8).wrapping_add(seed)).collect()
}
