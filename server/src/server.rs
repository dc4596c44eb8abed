//! Starting and stopping a server: one worker thread per shard, each running its I/O
//! driver over its own `SO_REUSEPORT` listener.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;

use crate::api::broadcaster::{Broadcaster, Mailbox, Router};
use crate::config::ServerBuilder;
use crate::handler::Handler;
use crate::io;
use crate::io::tls::TlsError;
use crate::shard::ShardSetup;
use crate::stats::ShardStats;

/// Which backend a worker actually runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// io_uring: completions drive the loop.
    IoUring,
    /// epoll: readiness drives the same loop.
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
    /// A worker thread or its event loop could not be created.
    #[error("cannot start worker: {0}")]
    Worker(std::io::Error),
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
///
/// It dereferences to the server's [`Broadcaster`], so `server.send(...)` and
/// `server.broadcast(...)` work on it directly.
pub struct ServerHandle<H: Handler> {
    broadcaster: Broadcaster<H::Data>,
    handler: Arc<H>,
    workers: Vec<JoinHandle<()>>,
    local_addr: SocketAddr,
    backends: Vec<Backend>,
}

impl<H: Handler> std::ops::Deref for ServerHandle<H> {
    type Target = Broadcaster<H::Data>;
    fn deref(&self) -> &Broadcaster<H::Data> {
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
    pub fn broadcaster(&self) -> Broadcaster<H::Data> {
        self.broadcaster.clone()
    }

    /// The server's handler, e.g. to reach application state.
    pub fn handler(&self) -> &Arc<H> {
        &self.handler
    }

    /// Asks every worker to stop without waiting: see [`ServerHandle::stop`].
    pub fn request_stop(&self) {
        self.broadcaster.stop_all();
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

impl ServerBuilder {
    /// Binds the listeners, starts one worker per configured shard and returns once
    /// every worker is accepting.
    pub fn start<H: Handler>(self, handler: H) -> Result<ServerHandle<H>, StartError> {
        let config = Arc::new(self.config);
        let tls = config.tls.as_ref().map(io::tls::server_config).transpose()?;
        let mut listeners = Vec::with_capacity(config.workers);
        let mut addr = config.addr;
        if !config.share_port && addr.port() != 0 {
            io::check_port_free(addr).map_err(|source| StartError::Bind { addr, source })?;
        }
        for _ in 0..config.workers {
            let listener = io::listen(addr, config.backlog, config.socket_send_buffer)
                .map_err(|source| StartError::Bind { addr, source })?;
            // Port 0 picks a port once; the other workers join that port.
            addr = listener.local_addr().map_err(|source| StartError::Bind { addr, source })?;
            listeners.push(listener);
        }
        let mailboxes = (0..config.workers)
            .map(|_| Mailbox::new().map(Arc::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(StartError::Worker)?;
        let stats: Vec<Arc<ShardStats>> = (0..config.workers).map(|_| Arc::default()).collect();
        let history = Arc::new(crate::history::History::new(config.history));
        let router = Router {
            shards: mailboxes.clone(),
            stats: stats.clone(),
            split: config.split,
            deflate: config.deflate.is_enabled(),
            history,
        };
        let broadcaster = Broadcaster { router: Arc::new(router) };
        let handler = Arc::new(handler);
        let open_connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let buffered_input = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (ready_tx, ready_rx) = mpsc::channel();
        let mut workers = Vec::with_capacity(config.workers);
        for (index, listener) in listeners.into_iter().enumerate() {
            let setup = ShardSetup {
                index,
                config: config.clone(),
                handler: handler.clone(),
                broadcaster: broadcaster.clone(),
                mailbox: mailboxes[index].clone(),
                stats: stats[index].clone(),
                open_connections: open_connections.clone(),
                buffered_input: buffered_input.clone(),
            };
            let (ready, tls) = (ready_tx.clone(), tls.clone());
            let thread = std::thread::Builder::new()
                .name(format!("ringcast-{index}"))
                .spawn(move || io::run_worker(setup, listener, tls, ready))
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
        let handle = ServerHandle { broadcaster, handler, workers, local_addr: addr, backends };
        if let Some(e) = failure {
            handle.stop();
            return Err(e);
        }
        tracing::info!(addr = %handle.local_addr, workers = config.workers, backends = ?handle.backends, "ringcast listening");
        Ok(handle)
    }
}
