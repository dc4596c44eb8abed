//! The only place where the two backends differ: reading and writing a TCP socket,
//! with or without TLS on top.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, BorrowedFd};

use bytes::BytesMut;
use tokio_uring::buf::BoundedBuf;

use crate::out_frame::OutFrame;

/// Linux limits one `writev` to this many buffers (IOV_MAX).
pub(crate) const MAX_IOV: usize = 1024;

/// How many queued frames one inline write gathers (an array on the stack).
const INLINE_IOV: usize = 64;

/// The descriptor of an io_uring socket, for a plain system call on it.
#[allow(unsafe_code)]
fn uring_fd(stream: &tokio_uring::net::TcpStream) -> BorrowedFd<'_> {
    // SAFETY: `stream` owns the descriptor and closes it only when dropped (tokio-uring
    // defers the close until no operation uses it); the returned borrow cannot outlive
    // `stream`, so the descriptor stays open and refers to this socket while borrowed.
    unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) }
}

/// A connected TCP socket on one of the two backends.
pub(crate) enum Socket {
    Uring(tokio_uring::net::TcpStream),
    Epoll(tokio::net::TcpStream),
}

impl Socket {
    /// Reads into the spare capacity of `buf` after reserving `reserve` bytes. On epoll
    /// the reservation waits for readiness, so an idle connection holds no buffer.
    /// (An `async move` block rather than an `async fn`, which would store its arguments
    /// twice: every idle connection holds this future.)
    #[expect(clippy::manual_async_fn, reason = "an async fn stores its arguments twice")]
    fn read<'a>(&'a self, buf: &'a mut BytesMut, reserve: usize) -> impl Future<Output = io::Result<usize>> + 'a {
        async move {
            match self {
                Socket::Uring(stream) => {
                    buf.reserve(reserve);
                    let owned = std::mem::take(buf);
                    let start = owned.len();
                    let (result, slice) = stream.read(owned.slice(start..)).await;
                    *buf = slice.into_inner();
                    result
                }
                Socket::Epoll(stream) => loop {
                    stream.readable().await?;
                    buf.reserve(reserve);
                    match stream.try_read_buf(buf) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        result => return result,
                    }
                },
            }
        }
    }

    /// One vectored write of `frames`; returns how many bytes went out.
    async fn writev(&self, frames: Vec<OutFrame>) -> (io::Result<usize>, Vec<OutFrame>) {
        match self {
            Socket::Uring(stream) => stream.writev(frames).await,
            Socket::Epoll(stream) => {
                let result = loop {
                    if let Err(e) = stream.writable().await {
                        break Err(e);
                    }
                    let slices: Vec<IoSlice<'_>> = frames.iter().map(|f| IoSlice::new(f.as_slice())).collect();
                    match stream.try_write_vectored(&slices) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        result => break result,
                    }
                };
                (result, frames)
            }
        }
    }

    /// One non-blocking vectored write, done at once in the caller (no submission, no
    /// task): `WouldBlock` when the socket buffer is full.
    fn try_writev(&self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Socket::Uring(stream) => socket2::SockRef::from(&uring_fd(stream))
                .send_vectored_with_flags(slices, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL),
            Socket::Epoll(stream) => stream.try_write_vectored(slices),
        }
    }

    async fn write_all(&self, data: Vec<u8>) -> io::Result<()> {
        match self {
            Socket::Uring(stream) => stream.write_all(data).await.0,
            Socket::Epoll(stream) => {
                let mut written = 0;
                while written < data.len() {
                    stream.writable().await?;
                    match stream.try_write(&data[written..]) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(n) => written += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            }
        }
    }

    /// Shuts both directions down, which also completes a read pending in io_uring
    /// (dropping the read future would not: tokio-uring does not cancel it).
    fn shutdown(&self) {
        let _ = match self {
            Socket::Uring(stream) => stream.shutdown(Shutdown::Both),
            Socket::Epoll(stream) => socket2::SockRef::from(stream).shutdown(Shutdown::Both),
        };
    }
}

/// rustls state of one wss connection.
struct Tls {
    session: rustls::ServerConnection,
    /// Ciphertext read from the socket but not yet fed to rustls.
    incoming: BytesMut,
}

/// A connection's byte stream: a socket, optionally wrapped in TLS.
///
/// Only one task writes at a time: the handshake code before the connection opens, the
/// connection's writer task afterwards.
pub(crate) struct Link {
    socket: Socket,
    /// Boxed: a rustls session is kilobytes, and most connections are plain.
    tls: Option<Box<RefCell<Tls>>>,
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl Link {
    pub(crate) fn new(socket: Socket, tls: Option<rustls::ServerConnection>) -> Self {
        let tls = tls.map(|mut session| {
            // Our own send queue bounds what is buffered; rustls must not truncate writes.
            session.set_buffer_limit(None);
            Box::new(RefCell::new(Tls { session, incoming: BytesMut::new() }))
        });
        Link { socket, tls }
    }

    /// Runs the TLS handshake (a no-op for plain connections).
    pub(crate) async fn handshake(&self) -> io::Result<()> {
        let Some(tls) = &self.tls else { return Ok(()) };
        loop {
            let result = self.feed_tls(tls);
            self.flush_tls().await?;
            result?;
            if !tls.borrow().session.is_handshaking() {
                return Ok(());
            }
            let mut incoming = std::mem::take(&mut tls.borrow_mut().incoming);
            let n = self.socket.read(&mut incoming, 4096).await;
            tls.borrow_mut().incoming = incoming;
            if n? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Feeds buffered ciphertext to rustls; plaintext stays inside rustls until read.
    fn feed_tls(&self, tls: &RefCell<Tls>) -> io::Result<()> {
        let mut tls = tls.borrow_mut();
        let Tls { session, incoming } = &mut *tls;
        while !incoming.is_empty() {
            let mut cursor: &[u8] = incoming;
            let n = session.read_tls(&mut cursor)?;
            let _ = incoming.split_to(n);
            session.process_new_packets().map_err(tls_error)?;
            if n == 0 {
                break;
            }
        }
        Ok(())
    }

    /// Writes whatever rustls has queued (handshake messages, alerts).
    async fn flush_tls(&self) -> io::Result<()> {
        if let Some(ciphertext) = self.take_ciphertext()? {
            self.socket.write_all(ciphertext).await?;
        }
        Ok(())
    }

    fn take_ciphertext(&self) -> io::Result<Option<Vec<u8>>> {
        let Some(tls) = &self.tls else { return Ok(None) };
        let mut tls = tls.borrow_mut();
        if !tls.session.wants_write() {
            return Ok(None);
        }
        let mut out = Vec::new();
        while tls.session.wants_write() {
            tls.session.write_tls(&mut out)?;
        }
        Ok(Some(out))
    }

    /// Whether TLS output is waiting for the writer (e.g. an alert or key update).
    pub(crate) fn wants_flush(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| tls.borrow().session.wants_write())
    }

    /// Reads application bytes into `buf`, reserving `reserve` bytes first. Returns 0 at
    /// the end of the stream.
    #[expect(clippy::manual_async_fn, reason = "an async fn stores its arguments twice")]
    pub(crate) fn read<'a>(
        &'a self,
        buf: &'a mut BytesMut,
        reserve: usize,
    ) -> impl Future<Output = io::Result<usize>> + 'a {
        async move {
            match &self.tls {
                None => self.socket.read(buf, reserve).await,
                // Boxed: TLS state must not inflate every plain connection's read future.
                Some(tls) => Box::pin(self.read_tls(tls, buf, reserve)).await,
            }
        }
    }

    async fn read_tls(&self, tls: &RefCell<Tls>, buf: &mut BytesMut, reserve: usize) -> io::Result<usize> {
        loop {
            {
                let mut tls = tls.borrow_mut();
                let start = buf.len();
                buf.resize(start + reserve.max(1), 0);
                let result = tls.session.reader().read(&mut buf[start..]);
                let n = *result.as_ref().unwrap_or(&0);
                buf.truncate(start + n);
                match result {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    // A TCP end without close_notify: treat as an ordinary end of stream.
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                    Err(e) => return Err(e),
                }
            }
            let mut incoming = std::mem::take(&mut tls.borrow_mut().incoming);
            let n = self.socket.read(&mut incoming, 4096).await;
            tls.borrow_mut().incoming = incoming;
            if n? == 0 {
                return Ok(0);
            }
            self.feed_tls(tls)?;
        }
    }

    /// Writes the front of `frames` at once, without blocking: returns the bytes written,
    /// or `WouldBlock` (always, for TLS, whose records the writer task encrypts).
    pub(crate) fn try_write(&self, frames: &VecDeque<OutFrame>) -> io::Result<usize> {
        if self.tls.is_some() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut slices = [IoSlice::new(&[]); INLINE_IOV];
        let mut count = 0;
        for (slot, frame) in slices.iter_mut().zip(frames) {
            *slot = IoSlice::new(frame.as_slice());
            count += 1;
        }
        self.socket.try_writev(&slices[..count])
    }

    /// Writes `data` whole; used only before the connection's writer task exists.
    pub(crate) async fn write_all(&self, data: Vec<u8>) -> io::Result<()> {
        let Some(tls) = &self.tls else { return self.socket.write_all(data).await };
        tls.borrow_mut().session.writer().write_all(&data)?;
        self.flush_tls().await
    }

    /// Writes as much of `frames` as one vectored write takes (plain), or all of them
    /// (TLS, where frames are encrypted per connection); returns the plaintext bytes done.
    pub(crate) async fn writev(&self, frames: Vec<OutFrame>) -> (io::Result<usize>, Vec<OutFrame>) {
        let Some(tls) = &self.tls else { return self.socket.writev(frames).await };
        let mut total = 0;
        {
            let mut tls = tls.borrow_mut();
            for frame in &frames {
                if let Err(e) = tls.session.writer().write_all(frame.as_slice()) {
                    return (Err(e), frames);
                }
                total += frame.len();
            }
        }
        match self.flush_tls().await {
            Ok(()) => (Ok(total), frames),
            Err(e) => (Err(e), frames),
        }
    }

    /// Ends the connection: shuts both directions of the socket down.
    pub(crate) fn shutdown(&self) {
        self.socket.shutdown();
    }
}

/// A listening socket on one of the two backends.
pub(crate) enum Listener {
    Uring(tokio_uring::net::TcpListener),
    Epoll(tokio::net::TcpListener),
}

impl Listener {
    pub(crate) async fn accept(&self) -> io::Result<(Socket, std::net::SocketAddr)> {
        match self {
            Listener::Uring(listener) => {
                let (stream, peer) = listener.accept().await?;
                stream.set_nodelay(true)?;
                Ok((Socket::Uring(stream), peer))
            }
            Listener::Epoll(listener) => {
                let (stream, peer) = listener.accept().await?;
                stream.set_nodelay(true)?;
                Ok((Socket::Epoll(stream), peer))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every connection holds a `Link`: keep the plain case small (the TLS state is boxed).
    #[test]
    fn plain_links_stay_small() {
        assert!(std::mem::size_of::<Link>() <= 48, "Link is {} bytes", std::mem::size_of::<Link>());
        assert!(std::mem::size_of::<Tls>() > 256, "the boxed part is the big one");
    }
}
