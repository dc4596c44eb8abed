//! The I/O drivers: each runs a shard's loop on one backend and turns completions
//! (io_uring) or readiness (epoll) into the shard's inputs. Nothing above this module
//! touches a socket.

mod epoll;
#[allow(unsafe_code)]
mod memory;
pub(crate) mod tls;
#[allow(unsafe_code)]
mod uring;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::config::IoBackend;
use crate::handler::Handler;
use crate::server::{Backend, StartError};
use crate::shard::ShardSetup;

/// Linux limits one `writev` to this many buffers (IOV_MAX); a write gathers at most
/// this many queued frames, the rest go in the next.
pub(crate) const MAX_IOV: usize = 64;

/// The shared receive buffer of an epoll shard.
pub(crate) const READ_BUFFER: usize = 64 << 10;

/// What a plain connection over the connection limit is told.
pub(crate) const BUSY_RESPONSE: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 25\r\n\
      Connection: close\r\nRetry-After: 1\r\n\r\nconnection limit reached\n";

/// Returns freed heap memory to the kernel once a shard goes quiet after heavy traffic:
/// frames and gathered messages of a burst are freed when written, but the allocator
/// keeps their pages.
#[derive(Debug)]
pub(crate) struct Quieting {
    /// Bytes in and out when last checked, and since the last trim.
    last_moved: u64,
    moved_since_trim: u64,
    next_check: Instant,
}

impl Quieting {
    /// Traffic since the last trim above which a trim is worth it, and traffic per
    /// second below which the shard counts as quiet.
    const BURST: u64 = 16 << 20;
    const QUIET: u64 = 64 << 10;

    pub(crate) fn new(now: Instant) -> Self {
        Quieting { last_moved: 0, moved_since_trim: 0, next_check: now + Duration::from_secs(1) }
    }

    /// Called every turn with the bytes the shard has moved so far (in and out) and the
    /// bytes it holds now (queued and incomplete input).
    pub(crate) fn observe(&mut self, moved: u64, held: u64, now: Instant) {
        if now < self.next_check {
            return;
        }
        self.next_check = now + Duration::from_secs(1);
        let recent = moved.saturating_sub(self.last_moved);
        self.last_moved = moved;
        self.moved_since_trim += recent;
        tracing::trace!(recent, held, since_trim = self.moved_since_trim, "quieting check");
        if self.moved_since_trim >= Self::BURST && recent <= Self::QUIET && held <= Self::QUIET {
            tracing::debug!(moved = self.moved_since_trim, "quiet after heavy traffic: returning free heap memory");
            memory::release_free_memory();
            self.moved_since_trim = 0;
        }
    }

    /// When `observe` next wants to look, if heavy traffic may still need a trim.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        (self.moved_since_trim > 0).then_some(self.next_check)
    }
}

/// An I/O error as a disconnect reason's text.
pub(crate) fn describe(error: &std::io::Error) -> String {
    error.to_string()
}

/// Whether `backend` asks for io_uring (`Auto` does unless `RINGCAST_IO=epoll`).
fn wants_io_uring(backend: IoBackend) -> bool {
    match backend {
        IoBackend::IoUring => true,
        IoBackend::Epoll => false,
        IoBackend::Auto => !matches!(std::env::var("RINGCAST_IO").as_deref(), Ok("epoll")),
    }
}

/// How a worker reports that it is accepting (or why it could not start).
pub(crate) type Ready = mpsc::Sender<(usize, Result<Backend, StartError>)>;

/// Runs one worker thread's shard on the backend the configuration asks for, falling
/// back from io_uring to epoll where io_uring cannot be set up (old kernel, seccomp).
pub(crate) fn run_worker<H: Handler>(
    setup: ShardSetup<H>,
    listener: std::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    ready: Ready,
) {
    let index = setup.index;
    let backend = setup.config.backend;
    if wants_io_uring(backend) {
        match uring::Ring::new(&setup.config) {
            Ok(ring) => {
                tracing::info!(shard = index, setup = ring.describe(), "I/O backend: io_uring");
                setup.stats.io_uring.add(1);
                match uring::UringDriver::new(setup, ring, listener, tls) {
                    Ok(driver) => {
                        let _ = ready.send((index, Ok(Backend::IoUring)));
                        driver.run();
                    }
                    Err(e) => {
                        let _ = ready.send((index, Err(StartError::Worker(e))));
                    }
                }
                return;
            }
            Err(e) if backend == IoBackend::IoUring => {
                let _ = ready.send((index, Err(StartError::IoUringUnavailable(e))));
                return;
            }
            Err(e) => tracing::warn!(shard = index, error = %e, "io_uring unavailable, falling back to epoll"),
        }
    }
    tracing::info!(shard = index, "I/O backend: epoll");
    match epoll::EpollDriver::new(setup, listener, tls) {
        Ok(driver) => {
            let _ = ready.send((index, Ok(Backend::Epoll)));
            driver.run();
        }
        Err(e) => {
            let _ = ready.send((index, Err(StartError::Worker(e))));
        }
    }
}

/// Creates a listening socket that shares its port with the other workers. Accepted
/// sockets inherit `TCP_NODELAY` and `SO_SNDBUF` from it, so no accept needs a
/// `setsockopt`.
pub(crate) fn listen(
    addr: SocketAddr,
    backlog: i32,
    send_buffer: Option<usize>,
) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    if let Some(bytes) = send_buffer {
        socket.set_send_buffer_size(bytes)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

/// Fails if something already listens on `addr`, even with `SO_REUSEPORT`: binding
/// without that option is refused by any listener on the port. A process that just
/// exited can hold its listeners for a moment (io_uring tears down asynchronously), so a
/// busy port is retried for up to a second before it counts as taken.
pub(crate) fn check_port_free(addr: SocketAddr) -> std::io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let probe = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
        probe.set_reuse_address(true)?;
        match probe.bind(&addr.into()) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            result => return result,
        }
    }
}
