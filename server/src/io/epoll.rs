//! The epoll driver: the shard's loop driven by readiness (mio), for kernels or
//! sandboxes without io_uring, or when asked for.
//!
//! One receive buffer serves every connection of the shard: a readable socket is read
//! into it until it would block, and the shard consumes what it can; only bytes of an
//! incomplete frame are copied into the connection. Writes gather a connection's queued
//! frames into one `writev` at the end of each turn; a socket that is full waits for its
//! writable event.

use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use crate::event::DisconnectReason;
use crate::handler::Handler;
use crate::io::tls::TlsState;
use crate::io::{BUSY_RESPONSE, MAX_IOV, READ_BUFFER, describe, memory};
use crate::shard::{Shard, ShardSetup};

const LISTENER: Token = Token(usize::MAX);
const WAKE: Token = Token(usize::MAX - 1);
/// Reads of one connection per readiness event before others get a turn.
const READS_PER_EVENT: usize = 8;

/// The driver's state of one connection.
pub(crate) struct EpollIo {
    stream: TcpStream,
    tls: Option<Box<TlsState>>,
    /// The last write found the socket full: wait for its writable event.
    blocked: bool,
}

/// A shard on epoll.
pub(crate) struct EpollDriver<H: Handler> {
    poll: Poll,
    events: Events,
    listener: Option<TcpListener>,
    shard: Shard<H, EpollIo>,
    tls: Option<Arc<rustls::ServerConfig>>,
    read_buf: Box<[u8]>,
    plaintext: Vec<u8>,
    dirty: Vec<usize>,
    ended: Vec<usize>,
    /// Connections whose socket still had data after their share of reads.
    read_again: Vec<usize>,
    /// After accept failed for lack of descriptors: when to try again.
    accept_retry: Option<Instant>,
    quieting: crate::io::Quieting,
}

impl<H: Handler> EpollDriver<H> {
    pub(crate) fn new(
        setup: ShardSetup<H>,
        listener: std::net::TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> io::Result<Self> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::from_std(listener);
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let wake_fd = std::os::fd::AsRawFd::as_raw_fd(setup.mailbox.wake_fd());
        poll.registry().register(&mut SourceFd(&wake_fd), WAKE, Interest::READABLE)?;
        Ok(EpollDriver {
            poll,
            events: Events::with_capacity(1024),
            listener: Some(listener),
            shard: Shard::new(setup, Instant::now()),
            tls,
            read_buf: vec![0; READ_BUFFER].into_boxed_slice(),
            plaintext: Vec::new(),
            dirty: Vec::new(),
            ended: Vec::new(),
            read_again: Vec::new(),
            accept_retry: None,
            quieting: crate::io::Quieting::new(Instant::now()),
        })
    }

    /// Runs until a stop command arrives and every connection has ended.
    pub(crate) fn run(mut self) {
        loop {
            let now = Instant::now();
            self.shard.on_commands(now);
            self.shard.on_timers(now);
            self.flush(now);
            self.quieting.observe(self.shard.moved_bytes(), self.shard.held_bytes(), now);
            if self.shard.take_trim_request() {
                memory::release_free_memory();
            }
            if self.shard.is_stopping() {
                if let Some(mut listener) = self.listener.take() {
                    let _ = self.poll.registry().deregister(&mut listener);
                }
                if self.shard.is_stopped() || self.shard.stop_limit().is_some_and(|limit| now >= limit) {
                    if !self.shard.is_stopped() {
                        tracing::warn!(shard = self.shard.index(), left = self.shard.len(), "connections did not end");
                    }
                    return;
                }
            }
            let deadline =
                [self.shard.next_deadline(), self.accept_retry, self.quieting.deadline()].into_iter().flatten().min();
            let mut timeout = deadline.map(|d| d.saturating_duration_since(now));
            if !self.read_again.is_empty() || !self.shard.mailbox().park() {
                timeout = Some(Duration::ZERO);
            }
            if let Err(e) = self.poll.poll(&mut self.events, timeout.map(round_up_to_millis))
                && e.kind() != io::ErrorKind::Interrupted
            {
                tracing::error!(shard = self.shard.index(), error = %e, "epoll_wait failed");
                return;
            }
            self.shard.mailbox().unpark();
            let now = Instant::now();
            // Commands first: one posted before a connection's input arrived (a send
            // from another thread, then a client reacting to it) is applied before it.
            self.shard.on_commands(now);
            let ready: Vec<(Token, bool, bool)> = self
                .events
                .iter()
                .map(|e| (e.token(), e.is_readable() || e.is_read_closed() || e.is_error(), e.is_writable()))
                .collect();
            for (token, readable, writable) in ready {
                match token {
                    LISTENER => self.accept(now),
                    WAKE => self.shard.mailbox().clear_wake(),
                    Token(key) => {
                        if writable && let Some(slot) = self.shard.slot_mut(key) {
                            slot.io.blocked = false;
                            self.write(key, now);
                        }
                        if readable {
                            self.read(key, now);
                        }
                    }
                }
            }
            for key in std::mem::take(&mut self.read_again) {
                self.read(key, now);
            }
            if self.accept_retry.is_some_and(|at| now >= at) {
                self.accept_retry = None;
                self.accept(now);
            }
        }
    }

    fn accept(&mut self, now: Instant) {
        loop {
            let Some(listener) = &self.listener else { return };
            match listener.accept() {
                Ok((stream, peer)) => {
                    if !self.shard.admit() {
                        tracing::debug!(shard = self.shard.index(), %peer, "connection refused: limit reached");
                        refuse_busy(stream, self.tls.is_some());
                        continue;
                    }
                    let tls = match self.tls.as_ref().map(TlsState::new).transpose() {
                        Ok(tls) => tls,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot create a TLS session");
                            continue;
                        }
                    };
                    let key = self.shard.accept(EpollIo { stream, tls, blocked: false }, peer, now);
                    if let Some(slot) = self.shard.slot_mut(key)
                        && let Err(e) = self.poll.registry().register(
                            &mut slot.io.stream,
                            Token(key),
                            Interest::READABLE | Interest::WRITABLE,
                        )
                    {
                        self.shard.abort(key, DisconnectReason::Io(format!("epoll registration: {e}")));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!(shard = self.shard.index(), error = %e, "accept failed");
                    // Out of descriptors: try again shortly instead of spinning.
                    self.accept_retry = Some(now + Duration::from_millis(50));
                    return;
                }
            }
        }
    }

    /// Reads what `key`'s socket has, a bounded number of times.
    fn read(&mut self, key: usize, now: Instant) {
        for _ in 0..READS_PER_EVENT {
            let Some(slot) = self.shard.slot_mut(key) else { return };
            if slot.conn.is_finished() {
                return;
            }
            let result = slot.io.stream.read(&mut self.read_buf);
            match result {
                Ok(0) => return self.shard.on_eof(key, now),
                Ok(n) => {
                    if let Some(tls) = slot.io.tls.as_mut() {
                        self.plaintext.clear();
                        let decrypted = tls.read(&self.read_buf[..n], &mut self.plaintext);
                        if !self.plaintext.is_empty() {
                            self.shard.on_input(key, &mut self.plaintext, now);
                        }
                        // Handshake messages, alerts.
                        self.write(key, now);
                        if let Err(e) = decrypted {
                            return self.shard.on_io_error(key, format!("TLS: {e}"), now);
                        }
                    } else {
                        self.shard.on_input(key, &mut self.read_buf[..n], now);
                    }
                    if n < self.read_buf.len() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.shard.on_io_error(key, describe(&e), now),
            }
        }
        self.read_again.push(key);
    }

    /// Writes the queues of every connection that got frames this turn, and closes the
    /// connections that ended.
    fn flush(&mut self, now: Instant) {
        while self.shard.has_work() {
            let mut dirty = std::mem::take(&mut self.dirty);
            self.shard.take_dirty(&mut dirty);
            for &key in &dirty {
                self.write(key, now);
            }
            dirty.clear();
            self.dirty = dirty;
            let mut ended = std::mem::take(&mut self.ended);
            self.shard.take_ended(&mut ended);
            for key in ended.drain(..) {
                if let Some(mut io) = self.shard.release(key) {
                    // TLS counts plaintext as written once encrypted: send the records
                    // holding the last frames (a close frame, an HTTP answer) first.
                    if let Some(tls) = io.tls.as_mut()
                        && tls.take_output().unwrap_or(false)
                    {
                        let _ = io.stream.write_all(tls.unsent());
                    }
                    let _ = self.poll.registry().deregister(&mut io.stream);
                    let _ = io.stream.shutdown(Shutdown::Both);
                }
            }
            self.ended = ended;
        }
    }

    /// Writes what `key` has queued until done or the socket is full.
    fn write(&mut self, key: usize, now: Instant) {
        loop {
            let Some(slot) = self.shard.slot_mut(key) else { return };
            if slot.io.blocked {
                return;
            }
            let io = &mut slot.io;
            let result = match io.tls.as_mut() {
                Some(tls) => {
                    if tls.unsent().is_empty() {
                        if let Some(encrypted) = tls.encrypt_queued(&mut slot.conn) {
                            match encrypted {
                                Ok(n) => self.shard.on_written(key, n, now),
                                Err(e) => return self.shard.on_io_error(key, format!("TLS: {e}"), now),
                            }
                            continue;
                        }
                        match tls.take_output() {
                            Ok(true) => continue,
                            Ok(false) => return,
                            Err(e) => return self.shard.on_io_error(key, format!("TLS: {e}"), now),
                        }
                    }
                    match io.stream.write(tls.unsent()) {
                        Ok(n) => {
                            tls.sent(n);
                            continue;
                        }
                        Err(e) => Err(e),
                    }
                }
                None => {
                    let Some(frames) = slot.conn.poll_transmit() else { return };
                    let mut slices = [IoSlice::new(&[]); MAX_IOV];
                    let mut count = 0;
                    for (slice, frame) in slices.iter_mut().zip(frames) {
                        *slice = IoSlice::new(frame.as_slice());
                        count += 1;
                    }
                    match io.stream.write_vectored(&slices[..count]) {
                        Ok(n) => {
                            self.shard.on_written(key, n, now);
                            continue;
                        }
                        Err(e) => {
                            // The write did not happen: the frames are still queued.
                            self.shard.on_written(key, 0, now);
                            Err(e)
                        }
                    }
                }
            };
            match result {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Some(slot) = self.shard.slot_mut(key) {
                        slot.io.blocked = true;
                    }
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.shard.on_io_error(key, describe(&e), now),
                Ok(()) => {}
            }
        }
    }
}

/// Answers a plain connection over the limit with 503, without giving it a slot (a TLS
/// client cannot read plain HTTP: it just sees the connection close).
fn refuse_busy(mut stream: TcpStream, tls: bool) {
    if !tls {
        let _ = stream.write(BUSY_RESPONSE);
    }
    let _ = stream.shutdown(Shutdown::Both);
}

/// epoll waits in milliseconds: round up so that a timer is never polled early in a loop.
fn round_up_to_millis(timeout: Duration) -> Duration {
    let millis = timeout.as_nanos().div_ceil(1_000_000);
    Duration::from_millis(millis.min(u64::MAX as u128) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every connection costs one slot: keep the plain, idle case small.
    #[test]
    fn a_connection_slot_stays_small() {
        // mio adds a selector id to each source in debug builds.
        let size = std::mem::size_of::<crate::shard::Slot<(), EpollIo>>();
        assert!(size <= 256, "a slot is {size} bytes");
    }
}
