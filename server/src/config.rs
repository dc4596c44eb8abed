//! Server configuration, assembled with [`ServerBuilder`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ringcast_codec::Split;
use ringcast_codec::deflate::ServerDeflateConfig;

/// The port a server listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 8888;

/// The default server-wide budget for incomplete input (see
/// [`ServerBuilder::max_buffered_input`]): 256 MiB.
pub const DEFAULT_MAX_BUFFERED_INPUT: usize = 256 << 20;

/// Per-connection behaviour switches, the five options of the reference component.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// Deliver every data frame to [`Handler::on_frame`](crate::Handler::on_frame)
    /// instead of assembling whole messages.
    pub frame_by_frame: bool,
    /// Accept upgrade requests without `Upgrade: websocket` / `Connection: Upgrade`.
    pub skip_upgrade_check: bool,
    /// Accept any `Sec-WebSocket-Version`.
    pub skip_version_check: bool,
    /// Do not answer pings automatically; the handler may call
    /// [`Connection::pong`](crate::Connection::pong) itself.
    pub manual_pong: bool,
    /// Do not answer a close frame automatically; the handler decides when to call
    /// [`Connection::close`](crate::Connection::close).
    pub manual_close: bool,
}

/// What happens to a connection whose unsent data reached the send-queue limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlowConsumerPolicy {
    /// Drop new messages for that connection (counted in
    /// [`Stats::dropped_messages`](crate::Stats::dropped_messages)); it keeps receiving
    /// once it catches up.
    #[default]
    DropNew,
    /// Close the connection with 1008 (policy violation) and drop it if it does not
    /// drain within the close timeout.
    Disconnect,
}

/// Which I/O backend the shards run on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum IoBackend {
    /// io_uring where the kernel allows it, else epoll. `RINGCAST_IO=epoll` forces epoll.
    #[default]
    Auto,
    /// io_uring only: starting fails where it is unavailable.
    IoUring,
    /// The same loop driven by epoll readiness.
    Epoll,
}

/// Certificate files for TLS (wss), all PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub certificate: PathBuf,
    /// The private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub private_key: PathBuf,
    /// Optional root/intermediate CA certificates appended to the served chain, so
    /// clients that know only the root can build the path.
    pub root_certificate: Option<PathBuf>,
}

/// The full configuration of a server. Build it with [`ServerBuilder`].
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) addr: SocketAddr,
    pub(crate) path: Option<String>,
    pub(crate) workers: usize,
    pub(crate) options: Options,
    pub(crate) split: Split,
    pub(crate) max_frame_size: usize,
    pub(crate) max_message_size: usize,
    pub(crate) max_buffered_input: usize,
    pub(crate) send_queue_limit: usize,
    pub(crate) socket_send_buffer: Option<usize>,
    pub(crate) slow_consumer: SlowConsumerPolicy,
    pub(crate) handshake_timeout: Duration,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) close_timeout: Duration,
    pub(crate) tls: Option<TlsFiles>,
    pub(crate) backlog: i32,
    pub(crate) backend: IoBackend,
    pub(crate) max_connections: usize,
    pub(crate) max_http_body: usize,
    pub(crate) share_port: bool,
    pub(crate) keep_request: bool,
    pub(crate) recv_buffers: u16,
    pub(crate) recv_buffer_size: usize,
    pub(crate) history: crate::history::HistoryConfig,
    /// The origin of the connections' compact timestamps (milliseconds since it).
    pub(crate) epoch: std::time::Instant,
    pub(crate) deflate: ServerDeflateConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), DEFAULT_PORT),
            path: None,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            options: Options::default(),
            split: Split::Whole,
            max_frame_size: 16 << 20,
            max_message_size: 16 << 20,
            max_buffered_input: DEFAULT_MAX_BUFFERED_INPUT,
            send_queue_limit: 1 << 20,
            socket_send_buffer: None,
            slow_consumer: SlowConsumerPolicy::DropNew,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: None,
            close_timeout: Duration::from_secs(2),
            tls: None,
            backlog: 4096,
            backend: IoBackend::Auto,
            max_connections: usize::MAX,
            max_http_body: 1 << 20,
            share_port: false,
            keep_request: false,
            recv_buffers: 64,
            recv_buffer_size: 64 << 10,
            history: crate::history::HistoryConfig::off(),
            epoch: std::time::Instant::now(),
            deflate: ServerDeflateConfig::new().enabled(false),
        }
    }
}

impl Config {
    /// The address the server binds (port 0 picks a free port).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How outgoing data messages are cut into frames.
    pub fn split(&self) -> Split {
        self.split
    }

    /// The per-connection options.
    pub fn options(&self) -> Options {
        self.options
    }

    /// The number of worker threads (shards).
    pub fn workers(&self) -> usize {
        self.workers
    }
}

/// Builds a server's [`Config`], then starts it.
///
/// ```no_run
/// use ringcast::{Server, Handler, Connection};
/// struct Echo;
/// impl Handler for Echo {
///     type Data = ();
///     fn on_text(&self, conn: &mut Connection<'_, ()>, text: &str) {
///         let _ = conn.send(text);
///     }
/// }
/// let server = Server::builder().port(9001).path("/echo").workers(2).start(Echo)?;
/// # server.stop();
/// # Ok::<(), ringcast::StartError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct ServerBuilder {
    pub(crate) config: Config,
}

impl ServerBuilder {
    /// A builder with the defaults: all interfaces, port 8888, any path, one worker per
    /// core, whole-message frames, 16 MiB limits, 1 MiB send queue dropping new messages.
    pub fn new() -> Self {
        Self::default()
    }

    /// The IP address to bind (default `0.0.0.0`).
    pub fn bind(mut self, ip: IpAddr) -> Self {
        self.config.addr.set_ip(ip);
        self
    }

    /// The port to listen on (default 8888; 0 picks a free port).
    pub fn port(mut self, port: u16) -> Self {
        self.config.addr.set_port(port);
        self
    }

    /// Only accept upgrades for this path (e.g. `/chat`); other paths get 404. By
    /// default every path is accepted.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        let mut path = path.into();
        if !path.starts_with('/') {
            path.insert(0, '/');
        }
        self.config.path = Some(path);
        self
    }

    /// The number of worker threads, each with its own runtime, listener and connection
    /// table (default: one per core).
    pub fn workers(mut self, workers: usize) -> Self {
        self.config.workers = workers.max(1);
        self
    }

    /// Replaces all five options at once.
    pub fn options(mut self, options: Options) -> Self {
        self.config.options = options;
        self
    }

    /// Deliver raw frames to [`Handler::on_frame`](crate::Handler::on_frame).
    pub fn frame_by_frame(mut self, on: bool) -> Self {
        self.config.options.frame_by_frame = on;
        self
    }

    /// Skip the `Upgrade`/`Connection` header check.
    pub fn skip_upgrade_check(mut self, on: bool) -> Self {
        self.config.options.skip_upgrade_check = on;
        self
    }

    /// Skip the `Sec-WebSocket-Version` check.
    pub fn skip_version_check(mut self, on: bool) -> Self {
        self.config.options.skip_version_check = on;
        self
    }

    /// Leave pongs to the handler.
    pub fn manual_pong(mut self, on: bool) -> Self {
        self.config.options.manual_pong = on;
        self
    }

    /// Leave close replies to the handler.
    pub fn manual_close(mut self, on: bool) -> Self {
        self.config.options.manual_close = on;
        self
    }

    /// Split outgoing messages into frames of at most `frame_size` bytes, *header
    /// included*; `None` sends every message as one frame (the default).
    ///
    /// # Errors
    /// A frame size below 3 bytes cannot carry any payload.
    pub fn split_messages(mut self, frame_size: Option<usize>) -> Result<Self, ringcast_codec::FrameSizeError> {
        self.config.split = match frame_size {
            Some(size) => Split::frame_size(size)?,
            None => Split::Whole,
        };
        Ok(self)
    }

    /// The largest frame payload accepted from a client (default 16 MiB); larger frames
    /// close the connection with 1009.
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.config.max_frame_size = bytes;
        self
    }

    /// The largest message accepted from a client (default 16 MiB); larger messages
    /// close the connection with 1009.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.config.max_message_size = bytes;
        self
    }

    /// The server-wide budget for incomplete input (default 256 MiB): bytes held, on
    /// every shard together, for request heads and bodies, frames and messages still
    /// arriving, and inflate state. `max_message_size` bounds one connection; this bounds
    /// their sum, so that many clients each sending all but the last byte of a large
    /// message cannot exhaust memory.
    ///
    /// Past the budget, the connections holding the most are closed (with 1009 "message
    /// too big" once upgraded; handshaking ones are dropped) until the total is back under
    /// seven eighths of it; the others are served normally. Counted in
    /// [`Stats::input_budget_closes`](crate::Stats::input_budget_closes).
    pub fn max_buffered_input(mut self, bytes: usize) -> Self {
        self.config.max_buffered_input = bytes.max(1);
        self
    }

    /// The most unsent bytes queued for one connection (default 1 MiB) before the
    /// slow-consumer policy applies.
    pub fn send_queue_limit(mut self, bytes: usize) -> Self {
        self.config.send_queue_limit = bytes.max(1);
        self
    }

    /// Caps the kernel's send buffer of every connection (`SO_SNDBUF`; default: the
    /// kernel's autotuning, up to `net.ipv4.tcp_wmem`'s maximum, 4 MiB on most systems).
    ///
    /// A client that stops reading holds [`send_queue_limit`](Self::send_queue_limit)
    /// bytes in the server's queue *plus* a full kernel send buffer, and the slow-consumer
    /// policy only sees the first: with autotuning, a never-reading subscriber of a
    /// slow topic can take minutes to fill its few MiB of kernel buffer before the policy
    /// engages, and all that time it costs kernel memory no server bound covers. A cap
    /// makes both bounded and prompt. The kernel doubles the value for its bookkeeping and
    /// clamps it to `net.core.wmem_max`; it is set once on the listening sockets, which
    /// accepted connections inherit it from. Too small a cap limits the throughput of one
    /// connection to about `bytes` per round trip.
    pub fn socket_send_buffer(mut self, bytes: usize) -> Self {
        self.config.socket_send_buffer = Some(bytes.max(1));
        self
    }

    /// What to do with a connection whose send queue is full.
    pub fn slow_consumer(mut self, policy: SlowConsumerPolicy) -> Self {
        self.config.slow_consumer = policy;
        self
    }

    /// How long a client may take from TCP accept to a complete upgrade request
    /// (default 10 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.config.handshake_timeout = timeout;
        self
    }

    /// Ping connections silent for this long and drop them if still silent after
    /// another period (default off).
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.config.idle_timeout = timeout;
        self
    }

    /// How long to wait for the peer's close reply (and for stop to drain) before
    /// dropping the connection (default 2 s).
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.config.close_timeout = timeout;
        self
    }

    /// Serve wss:// with these PEM files.
    pub fn tls(mut self, files: TlsFiles) -> Self {
        self.config.tls = Some(files);
        self
    }

    /// The listen backlog of each worker's socket (default 4096).
    pub fn backlog(mut self, backlog: i32) -> Self {
        self.config.backlog = backlog;
        self
    }

    /// The I/O backend (default: io_uring, falling back to epoll).
    pub fn io_backend(mut self, backend: IoBackend) -> Self {
        self.config.backend = backend;
        self
    }

    /// Let other processes listen on the same port (`SO_REUSEPORT` across processes), so
    /// that several ringcast nodes on one machine share it — see the `--cluster` option
    /// of the `ringcast` binary. Off by default: a port already in use is a start error.
    pub fn share_port(mut self, share: bool) -> Self {
        self.config.share_port = share;
        self
    }

    /// Refuse TCP connections beyond this many open ones, server-wide, with `503 Service
    /// Unavailable` (default unlimited).
    pub fn max_connections(mut self, max: usize) -> Self {
        self.config.max_connections = max;
        self
    }

    /// The largest body accepted on a plain HTTP request (default 1 MiB).
    pub fn max_http_body(mut self, bytes: usize) -> Self {
        self.config.max_http_body = bytes;
        self
    }

    /// Keep each connection's upgrade request for its whole life, so that
    /// [`Connection::request`](crate::Connection::request) and selectors can read it
    /// after the handshake (default off: a request head costs hundreds of bytes per idle
    /// connection; copy what you need into the connection's data instead).
    pub fn keep_request(mut self, keep: bool) -> Self {
        self.config.keep_request = keep;
        self
    }

    /// The io_uring backend's receive buffers, shared by all connections of a shard:
    /// at most `count` buffers of `size` bytes each (default 64 × 64 KiB). Only as many
    /// as the traffic needs are handed to the kernel, so an idle shard touches few of
    /// them; receives fill each buffer one after another (Linux 6.12 and later), and a
    /// frame split across two receives is gathered into its connection.
    pub fn recv_buffers(mut self, count: u16, size: usize) -> Self {
        self.config.recv_buffers = count.clamp(2, 32768);
        self.config.recv_buffer_size = size.clamp(256, u32::MAX as usize);
        self
    }

    /// Negotiate permessage-deflate (RFC 7692) with clients that offer it (every browser
    /// does), with these settings: level, the size below which messages go uncompressed,
    /// window limits (see [`ServerDeflateConfig`]). Off by default.
    ///
    /// The server always answers with `server_no_context_takeover`, so every message it
    /// sends is self-contained: a broadcast is compressed at most once per window size
    /// actually in use (one, with default settings) and the same bytes go to every
    /// subscriber that negotiated it; a compressed variant that is not smaller is not
    /// used. By default clients are also asked for `client_no_context_takeover`, so a
    /// connection holds inflate state (47 KiB) only while a compressed message arrives.
    ///
    /// ```
    /// use ringcast::{Server, ServerDeflateConfig};
    /// let builder = Server::builder().permessage_deflate(ServerDeflateConfig::new().min_message_size(128));
    /// # let _ = builder;
    /// ```
    pub fn permessage_deflate(mut self, deflate: ServerDeflateConfig) -> Self {
        self.config.deflate = deflate;
        self
    }

    /// Keep a bounded history of every topic published with
    /// [`Broadcaster::publish`](crate::Broadcaster::publish), so that subscribers can
    /// recover what they missed ([`Connection::subscribe_from`](crate::Connection::subscribe_from)).
    /// Off by default (offsets are assigned either way).
    pub fn history(mut self, history: crate::history::HistoryConfig) -> Self {
        self.config.history = history;
        self
    }

    /// The configuration built so far.
    pub fn config(&self) -> &Config {
        &self.config
    }
}
