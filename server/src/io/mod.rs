//! The I/O drivers: each runs a shard's loop on one backend and turns completions
//! (io_uring) or readiness (epoll) into the shard's inputs. Nothing above this module
//! touches a socket.

mod epoll;
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
/// sockets inherit `TCP_NODELAY` from it, so no accept needs a `setsockopt`.
pub(crate) fn listen(addr: SocketAddr, backlog: i32) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
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
