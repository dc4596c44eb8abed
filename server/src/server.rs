//! Starting and stopping a server, and sending to its connections from anywhere.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::Instant;

use bytes::Bytes;
use ringcast_codec::{PreparedMessage, Split};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::config::{IoBackend, ServerBuilder};
use crate::connection::{ConnectionId, ConnectionRef};
use crate::handler::Handler;
use crate::io::Listener;
use crate::shard::{Shard, ShardSetup};
use crate::stats::{ShardStats, Stats};
use crate::tls::TlsError;

/// Which backend a worker actually runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// io_uring through tokio-uring.
    IoUring,
    /// epoll through tokio's current-thread runtime.
    Epoll,
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A listening socket could not be created or bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A TLS file was missing or invalid.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// io_uring was required but is unavailable.
    #[error("io_uring is unavailable: {0}")]
    IoUringUnavailable(std::io::Error),
    /// A worker thread or runtime could not be created.
    #[error("cannot start worker: {0}")]
    Worker(std::io::Error),
}

/// A selector over connections, run by each shard over its own table.
pub type Selector<H> = Arc<dyn Fn(&ConnectionRef<'_, H>) -> bool + Send + Sync>;

/// Which connections a send reaches.
pub(crate) enum Target<H: Handler> {
    All,
    AllExcept(ConnectionId),
    One(ConnectionId),
    Topic(Arc<str>),
    Select(Selector<H>),
}

impl<H: Handler> Clone for Target<H> {
    fn clone(&self) -> Self {
        match self {
            Target::All => Target::All,
            Target::AllExcept(id) => Target::AllExcept(*id),
            Target::One(id) => Target::One(*id),
            Target::Topic(topic) => Target::Topic(topic.clone()),
            Target::Select(selector) => Target::Select(selector.clone()),
        }
    }
}

impl<H: Handler> Target<H> {
    pub(crate) fn matches(&self, conn: &ConnectionRef<'_, H>) -> bool {
        match self {
            Target::All => true,
            Target::AllExcept(id) => conn.id() != *id,
            Target::One(id) => conn.id() == *id,
            Target::Topic(topic) => conn.conn.topics.iter().any(|t| **t == **topic),
            Target::Select(selector) => selector(conn),
        }
    }
}

/// What shards receive from the rest of the server.
pub(crate) enum Command<H: Handler> {
    /// Queue `bytes` (encoded frames) on the targeted connections.
    Send { bytes: Bytes, published: Instant, target: Target<H> },
    /// Close everything and stop.
    Stop,
}

struct Router<H: Handler> {
    handler: Arc<H>,
    shards: Vec<UnboundedSender<Command<H>>>,
    stats: Vec<Arc<ShardStats>>,
    split: Split,
}

/// Sends messages to connections from any thread: one command per shard, never one per
/// connection. Cheap to clone.
pub struct Broadcaster<H: Handler> {
    router: Arc<Router<H>>,
}

impl<H: Handler> Clone for Broadcaster<H> {
    fn clone(&self) -> Self {
        Broadcaster { router: self.router.clone() }
    }
}

impl<H: Handler> Broadcaster<H> {
    /// Sends a text message to every open connection.
    pub fn broadcast_text(&self, text: &str) {
        self.send(PreparedMessage::text(text, self.router.split).into_bytes(), Target::All);
    }

    /// Sends a binary message to every open connection.
    pub fn broadcast_binary(&self, data: &[u8]) {
        self.send(PreparedMessage::binary(data, self.router.split).into_bytes(), Target::All);
    }

    /// Sends an encoded message to every open connection.
    pub fn broadcast_prepared(&self, message: &PreparedMessage) {
        self.send(message.as_bytes().clone(), Target::All);
    }

    /// Sends a text message to the connections `selector` picks.
    pub fn send_text_to<F>(&self, text: &str, selector: F)
    where
        F: Fn(&ConnectionRef<'_, H>) -> bool + Send + Sync + 'static,
    {
        self.send(PreparedMessage::text(text, self.router.split).into_bytes(), Target::Select(Arc::new(selector)));
    }

    /// Sends a binary message to the connections `selector` picks.
    pub fn send_binary_to<F>(&self, data: &[u8], selector: F)
    where
        F: Fn(&ConnectionRef<'_, H>) -> bool + Send + Sync + 'static,
    {
        self.send(PreparedMessage::binary(data, self.router.split).into_bytes(), Target::Select(Arc::new(selector)));
    }

    /// Sends an encoded message to the connections `selector` picks.
    pub fn send_prepared_to(&self, message: &PreparedMessage, selector: Selector<H>) {
        self.send(message.as_bytes().clone(), Target::Select(selector));
    }

    /// Publishes a text message to every subscriber of `topic`
    /// (see [`Connection::subscribe`](crate::Connection::subscribe)).
    pub fn publish_text(&self, topic: &str, text: &str) {
        self.send(PreparedMessage::text(text, self.router.split).into_bytes(), Target::Topic(topic.into()));
    }

    /// Publishes a binary message to every subscriber of `topic`.
    pub fn publish_binary(&self, topic: &str, data: &[u8]) {
        self.send(PreparedMessage::binary(data, self.router.split).into_bytes(), Target::Topic(topic.into()));
    }

    /// Publishes an encoded message to every subscriber of `topic`.
    pub fn publish_prepared(&self, topic: &str, message: &PreparedMessage) {
        self.send(message.as_bytes().clone(), Target::Topic(topic.into()));
    }

    /// Sends an encoded message to one connection.
    pub fn send_to_connection(&self, id: ConnectionId, message: &PreparedMessage) {
        if let Some(shard) = self.router.shards.get(id.shard()) {
            let _ = shard.send(Command::Send {
                bytes: message.as_bytes().clone(),
                published: Instant::now(),
                target: Target::One(id),
            });
        }
    }

    /// The server's handler, e.g. to reach application state from another thread.
    pub fn handler(&self) -> &H {
        &self.router.handler
    }

    /// How outgoing messages are split into frames.
    pub fn split(&self) -> Split {
        self.router.split
    }

    /// The current counters of every shard.
    pub fn stats(&self) -> Stats {
        Stats::collect(&self.router.stats)
    }

    fn send(&self, bytes: Bytes, target: Target<H>) {
        let published = Instant::now();
        for shard in &self.router.shards {
            let _ = shard.send(Command::Send { bytes: bytes.clone(), published, target: target.clone() });
        }
    }

    /// Forwards a send made inside shard `from` to every other shard.
    pub(crate) fn send_to_others(&self, from: usize, bytes: &Bytes, published: Instant, target: &Target<H>) {
        for (index, shard) in self.router.shards.iter().enumerate() {
            if index != from {
                let _ = shard.send(Command::Send { bytes: bytes.clone(), published, target: target.clone() });
            }
        }
    }
}

/// Entry point: `Server::builder()`.
#[derive(Debug)]
pub struct Server;

impl Server {
    /// A builder with the default configuration (port 8888).
    pub fn builder() -> ServerBuilder {
        ServerBuilder::new()
    }
}

/// A running server. Dropping it leaves the server running; call [`ServerHandle::stop`].
pub struct ServerHandle<H: Handler> {
    broadcaster: Broadcaster<H>,
    workers: Vec<JoinHandle<()>>,
    local_addr: SocketAddr,
    backends: Vec<Backend>,
}

impl<H: Handler> std::ops::Deref for ServerHandle<H> {
    type Target = Broadcaster<H>;
    fn deref(&self) -> &Broadcaster<H> {
        &self.broadcaster
    }
}

impl<H: Handler> ServerHandle<H> {
    /// The address the server listens on (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The backend each worker runs.
    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// A handle for sending from other threads.
    pub fn broadcaster(&self) -> Broadcaster<H> {
        self.broadcaster.clone()
    }

    /// Asks every worker to stop without waiting: see [`ServerHandle::stop`].
    pub fn request_stop(&self) {
        for shard in &self.broadcaster.router.shards {
            let _ = shard.send(Command::Stop);
        }
    }

    /// Stops gracefully and waits: no new connections, close 1001 sent to every client,
    /// a bounded wait (the close timeout) for their replies, then the rest are dropped
    /// and every worker thread has exited. Do not call from inside a handler (it would
    /// wait for its own thread); use [`ServerHandle::request_stop`] there.
    pub fn stop(self) {
        self.request_stop();
        self.wait();
    }

    /// Waits until every worker has exited (after a stop request).
    pub fn wait(self) {
        for worker in self.workers {
            let _ = worker.join();
        }
    }
}

/// Creates a listening socket that shares its port with the other workers.
/// Fails if something already listens on `addr`, even with `SO_REUSEPORT`: binding
/// without that option is refused by any listener on the port. A process that just
/// exited can hold its listeners for a moment (io_uring tears down asynchronously), so a
/// busy port is retried for up to a second before it counts as taken.
fn check_port_free(addr: SocketAddr) -> std::io::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        let probe = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
        probe.set_reuse_address(true)?;
        match probe.bind(&addr.into()) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            result => return result,
        }
    }
}

fn listen(addr: SocketAddr, backlog: i32) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

fn wants_io_uring(backend: IoBackend) -> bool {
    match backend {
        IoBackend::IoUring => true,
        IoBackend::Epoll => false,
        IoBackend::Auto => !matches!(std::env::var("RINGCAST_IO").as_deref(), Ok("epoll")),
    }
}

impl ServerBuilder {
    /// Binds the listeners, starts one worker per configured core and returns once
    /// every worker is accepting.
    pub fn start<H: Handler>(self, handler: H) -> Result<ServerHandle<H>, StartError> {
        let config = Arc::new(self.config);
        let tls = config.tls.as_ref().map(crate::tls::server_config).transpose()?;
        let mut listeners = Vec::with_capacity(config.workers);
        let mut addr = config.addr;
        if !config.share_port && addr.port() != 0 {
            check_port_free(addr).map_err(|source| StartError::Bind { addr, source })?;
        }
        for _ in 0..config.workers {
            let listener = listen(addr, config.backlog).map_err(|source| StartError::Bind { addr, source })?;
            // Port 0 picks a port once; the other workers join that port.
            addr = listener.local_addr().map_err(|source| StartError::Bind { addr, source })?;
            listeners.push(listener);
        }
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..config.workers).map(|_| unbounded_channel()).unzip();
        let stats: Vec<Arc<ShardStats>> = (0..config.workers).map(|_| Arc::default()).collect();
        let handler = Arc::new(handler);
        let router = Router { handler: handler.clone(), shards: senders, stats: stats.clone(), split: config.split };
        let broadcaster = Broadcaster { router: Arc::new(router) };
        let open_connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (ready_tx, ready_rx) = std_mpsc::channel();
        let mut workers = Vec::with_capacity(config.workers);
        for (index, (listener, commands)) in listeners.into_iter().zip(receivers).enumerate() {
            let worker = ShardSetup {
                open_connections: open_connections.clone(),
                index,
                config: config.clone(),
                handler: handler.clone(),
                broadcaster: broadcaster.clone(),
                stats: stats[index].clone(),
                tls: tls.clone(),
            };
            let ready = ready_tx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("ringcast-{index}"))
                .spawn(move || worker.run(listener, commands, ready))
                .map_err(StartError::Worker)?;
            workers.push(thread);
        }
        drop(ready_tx);
        let mut backends = vec![Backend::Epoll; config.workers];
        let mut failure = None;
        for _ in 0..config.workers {
            match ready_rx.recv() {
                Ok((index, Ok(backend))) => backends[index] = backend,
                Ok((_, Err(e))) => failure = Some(e),
                Err(_) => failure = Some(StartError::Worker(std::io::Error::other("worker exited during start"))),
            }
        }
        let handle = ServerHandle { broadcaster, workers, local_addr: addr, backends };
        if let Some(e) = failure {
            handle.stop();
            return Err(e);
        }
        tracing::info!(addr = %handle.local_addr, workers = config.workers, backends = ?handle.backends, "ringcast listening");
        Ok(handle)
    }
}

type Ready = std_mpsc::Sender<(usize, Result<Backend, StartError>)>;

impl<H: Handler> ShardSetup<H> {
    fn run(self, listener: std::net::TcpListener, commands: UnboundedReceiver<Command<H>>, ready: Ready) {
        let index = self.index;
        let control = match listener.try_clone() {
            Ok(control) => control,
            Err(e) => {
                let _ = ready.send((index, Err(StartError::Worker(e))));
                return;
            }
        };
        if wants_io_uring(self.config.backend) {
            let mut builder = tokio_uring::builder();
            builder.entries(4096);
            match tokio_uring::Runtime::new(&builder) {
                Ok(runtime) => {
                    tracing::info!(shard = index, "I/O backend: io_uring");
                    self.stats.io_uring.add(1);
                    let _ = ready.send((index, Ok(Backend::IoUring)));
                    let shard = self.into_shard();
                    let listener = Listener::Uring(tokio_uring::net::TcpListener::from_std(listener));
                    runtime.block_on(shard.run(listener, control, commands));
                    return;
                }
                Err(e) if self.config.backend == IoBackend::IoUring => {
                    let _ = ready.send((index, Err(StartError::IoUringUnavailable(e))));
                    return;
                }
                Err(e) => tracing::warn!(shard = index, error = %e, "io_uring unavailable, falling back to epoll"),
            }
        }
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(e) => {
                let _ = ready.send((index, Err(StartError::Worker(e))));
                return;
            }
        };
        tracing::info!(shard = index, "I/O backend: epoll");
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, async move {
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => listener,
                Err(e) => {
                    let _ = ready.send((index, Err(StartError::Worker(e))));
                    return;
                }
            };
            let _ = ready.send((index, Ok(Backend::Epoll)));
            self.into_shard().run(Listener::Epoll(listener), control, commands).await;
        });
    }

    fn into_shard(self) -> Rc<Shard<H>> {
        Rc::new(Shard::new(self))
    }
}
