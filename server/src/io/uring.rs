//! The io_uring driver: one ring per shard, driven by an explicit completion loop.
//!
//! - One multishot accept on the shard's `SO_REUSEPORT` listener.
//! - One multishot recv per connection, into the shard's provided-buffer ring: the kernel
//!   picks a free buffer per receive, the shard consumes the bytes in place, and the
//!   buffer goes back to the ring before the next wait. A connection holds no buffer.
//! - Every write of a turn is one `sendmsg` SQE per connection, gathering its queued
//!   frames; all of them are submitted together with the wait for completions, in one
//!   `io_uring_enter` per turn.
//! - Other threads wake the loop through an eventfd read kept armed on the ring.
//!
//! This is the crate's only `unsafe` code: pushing SQEs that point at memory the kernel
//! reads or writes later, and the buffer ring the kernel fills. Each block states which
//! owner keeps that memory alive until the completion arrives.

use std::alloc::Layout;
use std::io;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use io_uring::types::{BufRingEntry, Fd, SubmitArgs, Timespec};
use io_uring::{IoUring, cqueue, opcode, squeue};

use crate::config::Config;
use crate::conn::OutFrame;
use crate::handler::Handler;
use crate::io::tls::TlsState;
use crate::io::{BUSY_RESPONSE, MAX_IOV, describe, memory};
use crate::shard::{Shard, ShardSetup};

const SQ_ENTRIES: u32 = 2048;
/// How often the receive buffers' working set is reconsidered.
const DECAY_PERIOD: Duration = Duration::from_secs(1);
const CQ_ENTRIES: u32 = 8192;
/// The buffer group of the shard's receive buffers.
const BUFFER_GROUP: u16 = 0;

/// What a completion is for: the top byte of its `user_data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Accept = 1,
    Recv = 2,
    Send = 3,
    Wake = 4,
}

fn user_data(op: Op, key: usize) -> u64 {
    ((op as u64) << 56) | (key as u64 & 0xffff_ffff)
}

fn decode_user_data(data: u64) -> (Option<Op>, usize) {
    let op = match data >> 56 {
        1 => Some(Op::Accept),
        2 => Some(Op::Recv),
        3 => Some(Op::Send),
        4 => Some(Op::Wake),
        _ => None,
    };
    (op, (data & 0xffff_ffff) as usize)
}

// ---------------------------------------------------------------------- the ring

/// A shard's ring, set up with the best flags the kernel accepts.
pub(crate) struct Ring {
    ring: IoUring,
    setup: &'static str,
}

impl Ring {
    /// Creates the ring on the calling (shard) thread — `SINGLE_ISSUER` ties it to the
    /// thread — probing `DEFER_TASKRUN`, then `COOP_TASKRUN`, then no flags, and checks
    /// that multishot recv from a buffer ring works (Linux 6.0).
    pub(crate) fn new(config: &Config) -> io::Result<Ring> {
        type Setup = fn(&mut io_uring::Builder);
        let attempts: [(&'static str, Setup); 3] = [
            ("SINGLE_ISSUER|DEFER_TASKRUN", |b| {
                b.setup_single_issuer().setup_defer_taskrun();
            }),
            ("COOP_TASKRUN|TASKRUN_FLAG", |b| {
                b.setup_coop_taskrun().setup_taskrun_flag();
            }),
            ("no setup flags", |_| {}),
        ];
        let mut last_error = io::Error::other("no io_uring setup tried");
        // A diagnostic knob: start the probe further down the list.
        let skip = match std::env::var("RINGCAST_URING_SETUP").as_deref() {
            Ok("coop") => 1,
            Ok("none") => 2,
            _ => 0,
        };
        for (setup, apply) in attempts.into_iter().skip(skip) {
            let mut builder = IoUring::builder();
            builder.setup_cqsize(CQ_ENTRIES).setup_clamp();
            apply(&mut builder);
            match builder.build(SQ_ENTRIES) {
                Ok(ring) => {
                    let mut ring = Ring { ring, setup };
                    ring.self_test(config)?;
                    return Ok(ring);
                }
                Err(e) => last_error = e,
            }
        }
        Err(last_error)
    }

    /// The setup flags in use, for the log.
    pub(crate) fn describe(&self) -> &'static str {
        self.setup
    }

    /// Receives one byte through a multishot recv from a registered buffer ring over a
    /// socket pair: a kernel (or seccomp filter) that lacks any part fails here, at
    /// start, rather than on the first client.
    fn self_test(&mut self, config: &Config) -> io::Result<()> {
        let (a, b) = std::os::unix::net::UnixStream::pair()?;
        let mut buffers = BufRing::new(&self.ring, 2, 4096, BUFFER_GROUP + 1)?;
        let _ = config;
        buffers.replenish();
        let _keep_alive = &b;
        let recv = opcode::RecvMulti::new(Fd(a.as_raw_fd()), BUFFER_GROUP + 1).build().user_data(1);
        // SAFETY: the recv writes only into the buffer ring `buffers`, which is
        // registered and outlives the operation: it is unregistered (dropped) after the
        // socket pair is closed and the completion reaped below.
        unsafe { self.ring.submission().push(&recv) }.map_err(|_| io::Error::other("submission queue full"))?;
        std::io::Write::write_all(&mut &b, b"x")?;
        self.ring.submit_and_wait(1)?;
        let cqe = self.ring.completion().next().ok_or_else(|| io::Error::other("no completion"))?;
        if cqe.result() != 1 || cqueue::buffer_select(cqe.flags()).is_none() {
            return Err(io::Error::other(format!("multishot recv self-test returned {}", cqe.result())));
        }
        drop((a, b));
        // Reap the final completion of the multishot recv (end of stream) before the
        // buffer ring goes away.
        let _ = self.ring.submit_and_wait(1);
        self.ring.completion().for_each(drop);
        buffers.unregister(&self.ring);
        Ok(())
    }
}

// ---------------------------------------------------------------------- the buffer ring

/// The shard's receive buffers, provided to the kernel through a registered ring.
///
/// Not every buffer is posted at once: the ring holds `target` of them, taken from a
/// LIFO stack of returned buffers, so a quiet shard keeps touching the same few pages
/// and an idle server does not grow its resident memory by the whole pool. When the
/// kernel runs out (`ENOBUFS`) the target doubles, up to the pool size.
///
/// After a burst the working set shrinks back: once a second without `ENOBUFS` the
/// target halves, and buffers that fall out of the working set are handed back to the
/// kernel (`MADV_DONTNEED`), so the server's resident memory returns to what the
/// traffic now needs.
///
/// Where the kernel has it (Linux 6.12), buffers are consumed incrementally
/// (`IOU_PBUF_RING_INC`): receives fill a buffer one after another instead of taking a
/// whole buffer each, so small reads (handshakes, chat messages) pack densely and a
/// large message lands in one piece.
struct BufRing {
    /// The ring entries (page-aligned, `ring_entries` of them) shared with the kernel.
    entries: NonNull<BufRingEntry>,
    ring_entries: u16,
    /// The buffers, `count` × `size` bytes, written by the kernel. Never referenced as a
    /// whole from Rust: slices are made only of buffers the kernel handed back.
    memory: NonNull<u8>,
    count: u16,
    size: usize,
    /// The next ring index to fill (published to the kernel by `replenish`).
    tail: u16,
    /// Buffers the kernel handed back and that are not posted, most recently used last.
    free: Vec<u16>,
    /// Buffers posted and not yet consumed.
    posted: usize,
    target: usize,
    group: u16,
    /// Incremental consumption: where the next receive into each buffer starts.
    incremental: bool,
    offsets: Vec<u32>,
    /// Buffers whose pages may be resident (touched since last handed back).
    warm: Vec<bool>,
    /// The kernel ran out of buffers since the last `decay`.
    short: bool,
    /// Receives since the last `decay`.
    received: usize,
    /// Registration flags, to register the ring again when taking buffers back.
    flags: u16,
}

/// The working set a quiet shard keeps posted.
const MIN_POSTED: usize = 4;

/// `IOU_PBUF_RING_INC`, which the io-uring crate does not re-export.
const PBUF_RING_INC: u16 = 2;

fn page_layout(bytes: usize) -> Layout {
    // 4096 divides every page size Linux uses; the kernel requires the ring entries to
    // be page aligned (and maps nothing itself: this memory is ours).
    Layout::from_size_align(bytes.max(1), 4096).expect("a valid layout")
}

impl BufRing {
    fn new(ring: &IoUring, count: u16, size: usize, group: u16) -> io::Result<BufRing> {
        // Whole pages, so that a buffer's pages can be handed back on their own.
        let size = size.min(u32::MAX as usize).next_multiple_of(4096);
        let ring_entries = count.next_power_of_two();
        let entries_layout = page_layout(ring_entries as usize * std::mem::size_of::<BufRingEntry>());
        let memory_layout = page_layout(count as usize * size);
        // SAFETY: both layouts have a non-zero size.
        let (entries, memory) = unsafe { (std::alloc::alloc_zeroed(entries_layout), std::alloc::alloc(memory_layout)) };
        let (Some(entries), Some(memory)) = (NonNull::new(entries.cast::<BufRingEntry>()), NonNull::new(memory)) else {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        };
        let mut buffers = BufRing {
            entries,
            ring_entries,
            memory,
            count,
            size,
            tail: 0,
            free: (0..count).rev().collect(),
            posted: 0,
            target: (count as usize).min(MIN_POSTED),
            group,
            incremental: true,
            offsets: vec![0; count as usize],
            warm: vec![false; count as usize],
            short: false,
            received: 0,
            flags: PBUF_RING_INC,
        };
        let register = |flags| {
            // SAFETY: `entries` points to `ring_entries` zeroed, page-aligned entries that
            // stay allocated until `Drop` runs, after the ring is unregistered (the
            // driver's `Drop` unregisters it).
            unsafe {
                ring.submitter().register_buf_ring_with_flags(entries.as_ptr() as u64, ring_entries, group, flags)
            }
        };
        if register(PBUF_RING_INC).is_err() {
            buffers.incremental = false;
            buffers.flags = 0;
            register(0)?;
        }
        Ok(buffers)
    }

    /// The tail index the kernel reads, shared with it.
    fn shared_tail(&self) -> &AtomicU16 {
        // SAFETY: `BufRingEntry::tail` computes the address of the ring's tail field (in
        // the first entry, per the kernel ABI) from the valid, aligned `entries`; a u16
        // there is 2-aligned and lives as long as `self`; the kernel only reads it.
        unsafe { &*BufRingEntry::tail(self.entries.as_ptr()).cast::<AtomicU16>() }
    }

    /// Posts free buffers, most recently used first, until `target` are posted, and
    /// makes them visible to the kernel.
    fn replenish(&mut self) {
        let mask = self.ring_entries - 1;
        let mut added = false;
        while self.posted < self.target {
            let Some(bid) = self.free.pop() else { break };
            let index = (self.tail & mask) as usize;
            // SAFETY: `index` < `ring_entries`, so the entry is inside the allocation;
            // the kernel reads entries only up to the published tail, and this one is
            // past it until the store below.
            let entry = unsafe { &mut *self.entries.as_ptr().add(index) };
            entry.set_addr(self.memory.as_ptr() as u64 + bid as u64 * self.size as u64);
            entry.set_len(self.size as u32);
            entry.set_bid(bid);
            self.warm[bid as usize] = true;
            self.tail = self.tail.wrapping_add(1);
            self.posted += 1;
            added = true;
        }
        if added {
            // Release: the entries written above are visible before the new tail.
            self.shared_tail().store(self.tail, Ordering::Release);
        }
    }

    /// The kernel wrote `len` bytes into buffer `bid` (after what earlier receives put
    /// there, with incremental consumption); `done`: it will not use the buffer again
    /// until it is posted anew. Returns the bytes, valid until the next call.
    fn take(&mut self, bid: u16, len: usize, done: bool) -> Option<&mut [u8]> {
        let offset = *self.offsets.get(bid as usize)? as usize;
        if offset + len > self.size {
            return None;
        }
        self.received += 1;
        if done {
            self.posted = self.posted.saturating_sub(1);
            self.offsets[bid as usize] = 0;
        } else {
            self.offsets[bid as usize] = (offset + len) as u32;
        }
        let start = bid as usize * self.size + offset;
        // SAFETY: the bytes lie inside `memory` (bid < count, offset + len ≤ size). The
        // kernel wrote them before posting this completion and never writes a buffer's
        // bytes below its consumed offset again: with incremental consumption it only
        // appends past `offset + len`, and once `done` it does not touch the buffer
        // until `replenish` posts it anew, which follows `recycle`. No other slice of
        // these bytes exists: each completion's bytes are taken once, and the slice
        // handed out here is dropped before the next completion is handled.
        Some(unsafe { std::slice::from_raw_parts_mut(self.memory.as_ptr().add(start), len) })
    }

    /// Buffer `bid` is free again.
    fn recycle(&mut self, bid: u16) {
        self.free.push(bid);
    }

    /// The kernel ran out of buffers: post more from now on.
    fn grow(&mut self) {
        self.short = true;
        self.target = (self.target * 2).min(self.count as usize);
    }

    /// Whether `decay` has anything to give back.
    fn can_decay(&self) -> bool {
        self.target > MIN_POSTED
            || self.posted > self.target
            || self.free.iter().rev().skip(self.target).any(|&bid| self.warm[bid as usize])
    }

    /// Called about once a second: shrinks the working set when the kernel did not run
    /// short meanwhile, and hands the pages of buffers outside it back to the kernel.
    ///
    /// `reclaim_posted`: the ring defers completion work to this thread's own
    /// `io_uring_enter` (`DEFER_TASKRUN`), so no receive can complete until the next one:
    /// if the shard was quiet, the buffers still posted from a burst are taken back too
    /// (see `reclaim`).
    fn decay(&mut self, ring: &IoUring, reclaim_posted: bool) {
        if std::mem::take(&mut self.short) {
            self.received = 0;
            return;
        }
        self.target = (self.target / 2).max(MIN_POSTED).min(self.count as usize);
        let quiet = std::mem::take(&mut self.received) == 0;
        if reclaim_posted && quiet && self.posted > self.target && self.reclaim(ring).is_err() {
            tracing::warn!("cannot re-register the receive buffers; keeping them posted");
        }
        self.release_cold();
    }

    /// Hands the pages of free buffers outside the working set back to the kernel.
    fn release_cold(&mut self) {
        // The free stack's top is what `replenish` posts next; below it, coldest last.
        let keep = self.free.len().saturating_sub(self.target);
        for &bid in &self.free[..keep] {
            if !std::mem::take(&mut self.warm[bid as usize]) {
                continue;
            }
            let start = bid as usize * self.size;
            // SAFETY: the range is buffer `bid`, inside `memory` and page aligned (the
            // allocation is page aligned and `size` a whole number of pages, see `new`).
            // The buffer is free: not posted, so the kernel does not write it, and no
            // slice of it exists. Its bytes are never read before the kernel writes them
            // again, so the zero pages `MADV_DONTNEED` leaves are never seen as data.
            unsafe {
                libc::madvise(self.memory.as_ptr().add(start).cast(), self.size, libc::MADV_DONTNEED);
            }
        }
    }

    /// Takes every posted buffer back from the kernel: unregisters the ring and registers
    /// it again empty, then posts the working set. Only while no receive can complete
    /// (see `decay`): a receive armed meanwhile finds no buffer and reports `ENOBUFS`,
    /// which re-arms it, and none can have written into a buffer unreported.
    fn reclaim(&mut self, ring: &IoUring) -> io::Result<()> {
        ring.submitter().unregister_buf_ring(self.group)?;
        let mut free = vec![false; self.count as usize];
        for &bid in &self.free {
            free[bid as usize] = true;
        }
        // The buffers that were posted go on top of the stack: they are the warm ones.
        self.free.extend((0..self.count).filter(|&bid| !free[bid as usize]));
        self.offsets.iter_mut().for_each(|offset| *offset = 0);
        self.posted = 0;
        self.tail = 0;
        self.shared_tail().store(0, Ordering::Release);
        // SAFETY: as in `new`: the entries stay allocated until `Drop`, which follows the
        // ring's unregistration.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                self.entries.as_ptr() as u64,
                self.ring_entries,
                self.group,
                self.flags,
            )
        }?;
        self.release_cold();
        self.replenish();
        Ok(())
    }

    fn unregister(&self, ring: &IoUring) {
        let _ = ring.submitter().unregister_buf_ring(self.group);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        let entries_layout = page_layout(self.ring_entries as usize * std::mem::size_of::<BufRingEntry>());
        let memory_layout = page_layout(self.count as usize * self.size);
        // SAFETY: allocated in `new` with these layouts; the kernel no longer uses them
        // (unregistered, or the ring was torn down, before this drop).
        unsafe {
            std::alloc::dealloc(self.entries.as_ptr().cast(), entries_layout);
            std::alloc::dealloc(self.memory.as_ptr(), memory_layout);
        }
    }
}

// ---------------------------------------------------------------------- writes

/// One `sendmsg` in flight: it owns references to the frames it writes, so the bytes
/// stay alive (and unchanged: `Bytes` is immutable) until its completion, whatever
/// happens to the connection meanwhile.
struct WriteOp {
    frames: Vec<OutFrame>,
    /// TLS ciphertext (instead of frames), with what was already written skipped.
    ciphertext: Bytes,
    iov: Vec<libc::iovec>,
    msg: libc::msghdr,
}

impl WriteOp {
    fn new() -> Box<WriteOp> {
        // SAFETY: `msghdr` is plain data; all zeroes is a valid, empty header.
        let msg: libc::msghdr = unsafe { std::mem::zeroed() };
        Box::new(WriteOp { frames: Vec::new(), ciphertext: Bytes::new(), iov: Vec::new(), msg })
    }

    /// Points the header at the frames (or the ciphertext).
    fn prepare(&mut self) {
        fn iovec(slice: &[u8]) -> libc::iovec {
            libc::iovec { iov_base: slice.as_ptr() as *mut libc::c_void, iov_len: slice.len() }
        }
        self.iov.clear();
        if self.frames.is_empty() {
            self.iov.push(iovec(&self.ciphertext));
        } else {
            self.iov.extend(self.frames.iter().map(|frame| iovec(frame.as_slice())));
        }
        self.msg.msg_iov = self.iov.as_mut_ptr();
        self.msg.msg_iovlen = self.iov.len() as _;
    }

    /// The SQE that writes what `prepare` pointed at: a plain `send` for one buffer (no
    /// header to copy, no vector to import), `sendmsg` to gather several.
    fn entry(&self, fd: RawFd) -> squeue::Entry {
        match self.iov.as_slice() {
            [one] => opcode::Send::new(Fd(fd), one.iov_base as *const u8, one.iov_len.min(u32::MAX as usize) as u32)
                .flags(libc::MSG_NOSIGNAL)
                .build(),
            _ => opcode::SendMsg::new(Fd(fd), &self.msg).flags(libc::MSG_NOSIGNAL as u32).build(),
        }
    }

    fn reset(&mut self) {
        self.frames.clear();
        self.ciphertext = Bytes::new();
        self.iov.clear();
        self.msg.msg_iov = std::ptr::null_mut();
        self.msg.msg_iovlen = 0;
    }
}

// ---------------------------------------------------------------------- connections

/// The driver's state of one connection (its TLS session, if any, is in the driver's
/// `sessions`: most connections are plain and should not pay for the pointer).
pub(crate) struct UringIo {
    fd: OwnedFd,
    /// The write in flight, if any (at most one per connection).
    write: Option<Box<WriteOp>>,
    /// A multishot recv is armed.
    recv_armed: bool,
    /// The connection ended: its socket is shut down and closes once nothing is in flight.
    closing: bool,
}

impl UringIo {
    fn idle(&self) -> bool {
        !self.recv_armed && self.write.is_none()
    }
}

/// A shard on io_uring.
///
/// Field order matters for teardown: connections (and their in-flight write records)
/// and the buffer ring are dropped before the ring, whose teardown cancels whatever is
/// still in flight.
pub(crate) struct UringDriver<H: Handler> {
    shard: Shard<H, UringIo>,
    buffers: BufRing,
    ring: IoUring,
    listener: Option<std::net::TcpListener>,
    accept_armed: bool,
    accept_retry: Option<Instant>,
    tls: Option<Arc<rustls::ServerConfig>>,
    /// The TLS sessions of wss connections, by slot.
    sessions: std::collections::HashMap<usize, Box<TlsState>>,
    /// The eventfd read's destination. Leaked on purpose (8 bytes per shard): the read
    /// stays armed until the ring is torn down, which the kernel finishes after the
    /// driver is gone, so this memory must never be freed.
    wake_buf: &'static mut [u8; 8],
    completions: Vec<(u64, i32, u32)>,
    rearm: Vec<usize>,
    /// Connections to write that the shard did not list (TLS output, after a completion).
    dirty: Vec<usize>,
    flush_keys: Vec<usize>,
    ended: Vec<usize>,
    /// Ended TLS connections sending their last records, with when to give up.
    lingering: Vec<(Instant, usize)>,
    /// When the buffer ring's working set is next reconsidered.
    next_decay: Instant,
    /// The ring runs completion work only inside this thread's `io_uring_enter`.
    deferred: bool,
    quieting: crate::io::Quieting,
    /// Finished write records, kept for the next writes. Boxed: a connection's slot holds
    /// its in-flight record by pointer, and moving one between the two must not move
    /// the `msghdr` the kernel may still read.
    #[expect(clippy::vec_box, reason = "records move between this pool and slots without moving their msghdr")]
    spare_writes: Vec<Box<WriteOp>>,
    plaintext: Vec<u8>,
}

impl<H: Handler> UringDriver<H> {
    pub(crate) fn new(
        setup: ShardSetup<H>,
        ring: Ring,
        listener: std::net::TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> io::Result<Self> {
        let (count, size) = (setup.config.recv_buffers, setup.config.recv_buffer_size);
        let buffers = BufRing::new(&ring.ring, count, size, BUFFER_GROUP)?;
        let mut driver = UringDriver {
            shard: Shard::new(setup, Instant::now()),
            buffers,
            ring: ring.ring,
            listener: Some(listener),
            accept_armed: false,
            accept_retry: None,
            tls,
            sessions: std::collections::HashMap::new(),
            wake_buf: Box::leak(Box::new([0; 8])),
            completions: Vec::with_capacity(1024),
            rearm: Vec::new(),
            dirty: Vec::new(),
            flush_keys: Vec::new(),
            lingering: Vec::new(),
            next_decay: Instant::now() + DECAY_PERIOD,
            deferred: ring.setup.contains("DEFER_TASKRUN"),
            quieting: crate::io::Quieting::new(Instant::now()),
            ended: Vec::new(),
            spare_writes: Vec::new(),
            plaintext: Vec::new(),
        };
        driver.buffers.replenish();
        driver.arm_accept();
        driver.arm_wake();
        Ok(driver)
    }

    fn push(&mut self, entry: squeue::Entry) {
        loop {
            // SAFETY: every entry pushed by this driver points only at memory that
            // outlives its operation: the listener and connection descriptors (closed
            // only once their operations completed, see `maybe_release` and `run`),
            // the buffer ring (dropped after the ring), `wake_buf` (owned by the driver
            // for its whole life), and a write's `WriteOp`, which the connection's slot
            // keeps until the write's completion.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
            // The submission queue is full: hand what is queued to the kernel first.
            if let Err(e) = self.ring.submit() {
                tracing::warn!(shard = self.shard.index(), error = %e, "io_uring submit failed");
            }
        }
    }

    fn arm_accept(&mut self) {
        let Some(listener) = &self.listener else { return };
        let entry = opcode::AcceptMulti::new(Fd(listener.as_raw_fd()))
            .flags(libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK)
            .build()
            .user_data(user_data(Op::Accept, 0));
        self.accept_armed = true;
        self.push(entry);
    }

    fn arm_wake(&mut self) {
        let fd = self.shard.mailbox().wake_fd().as_raw_fd();
        let entry = opcode::Read::new(Fd(fd), self.wake_buf.as_mut_ptr(), 8).build().user_data(user_data(Op::Wake, 0));
        self.push(entry);
    }

    fn arm_recv(&mut self, key: usize) {
        let Some(slot) = self.shard.slot_mut(key) else { return };
        if slot.io.recv_armed || slot.io.closing {
            return;
        }
        slot.io.recv_armed = true;
        let fd = slot.io.fd.as_raw_fd();
        self.push(opcode::RecvMulti::new(Fd(fd), BUFFER_GROUP).build().user_data(user_data(Op::Recv, key)));
    }

    /// Runs until a stop command arrives and every connection has ended.
    pub(crate) fn run(mut self) {
        loop {
            let now = Instant::now();
            // Commands first: one posted before a connection's input arrived (a send
            // from another thread, then a client reacting to it) is applied before it.
            self.shard.on_commands(now);
            self.completions.clear();
            self.completions.extend(self.ring.completion().map(|c| (c.user_data(), c.result(), c.flags())));
            let mut completions = std::mem::take(&mut self.completions);
            for &(data, result, flags) in &completions {
                self.complete(data, result, flags, now);
            }
            completions.clear();
            self.completions = completions;
            self.buffers.replenish();
            for key in std::mem::take(&mut self.rearm) {
                self.arm_recv(key);
            }
            self.shard.on_timers(now);
            self.flush(now);
            self.end_lingering(now);
            if now >= self.next_decay {
                self.buffers.decay(&self.ring, self.deferred);
                self.next_decay = now + DECAY_PERIOD;
            }
            self.quieting.observe(self.shard.moved_bytes(), self.shard.held_bytes(), now);
            if self.shard.take_trim_request() {
                memory::release_free_memory();
            }
            if self.accept_retry.is_some_and(|at| now >= at) {
                self.accept_retry = None;
                self.arm_accept();
            }
            if self.shard.is_stopping() {
                if let Some(listener) = &self.listener {
                    // Ends the multishot accept, and no client gets in any more.
                    let _ = socket2::SockRef::from(listener).shutdown(Shutdown::Read);
                    if !self.accept_armed {
                        self.listener = None;
                    }
                }
                if self.shard.is_stopped() && self.listener.is_none() {
                    return;
                }
                if self.shard.stop_limit().is_some_and(|limit| now >= limit) {
                    tracing::warn!(shard = self.shard.index(), left = self.shard.len(), "connections did not end");
                    self.abandon_in_flight();
                    return;
                }
            }
            self.wait(now);
        }
    }

    /// Submits everything queued this turn and waits for completions, in one
    /// `io_uring_enter`.
    fn wait(&mut self, now: Instant) {
        let decay = self.buffers.can_decay().then_some(self.next_decay);
        let deadline =
            [self.shard.next_deadline(), self.accept_retry, self.shard.stop_limit(), decay, self.quieting.deadline()]
                .into_iter()
                .flatten()
                .min();
        let busy = !self.ring.completion().is_empty() || !self.shard.mailbox().park();
        if busy && self.ring.submission().is_empty() {
            // Completions or commands already wait (a handler's broadcast posted to this
            // shard's own mailbox, typically): nothing to submit, so no system call.
            self.shard.mailbox().unpark();
            return;
        }
        let timeout = if busy { Some(Duration::ZERO) } else { deadline.map(|d| d.saturating_duration_since(now)) };
        let result = match timeout {
            Some(timeout) => {
                let ts = Timespec::new().sec(timeout.as_secs()).nsec(timeout.subsec_nanos());
                self.ring.submitter().submit_with_args(1, &SubmitArgs::new().timespec(&ts))
            }
            None => self.ring.submitter().submit_and_wait(1),
        };
        self.shard.mailbox().unpark();
        if let Err(e) = result
            && !matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR | libc::EBUSY))
        {
            tracing::error!(shard = self.shard.index(), error = %e, "io_uring_enter failed");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn complete(&mut self, data: u64, result: i32, flags: u32, now: Instant) {
        match decode_user_data(data) {
            (Some(Op::Recv), key) => self.on_recv(key, result, flags, now),
            (Some(Op::Send), key) => self.on_send(key, result, now),
            (Some(Op::Accept), _) => self.on_accept(result, flags, now),
            (Some(Op::Wake), _) => {
                self.shard.mailbox().unpark();
                if !self.shard.is_stopped() {
                    self.arm_wake();
                }
            }
            (None, _) => {}
        }
    }

    fn on_accept(&mut self, result: i32, flags: u32, now: Instant) {
        if !cqueue::more(flags) {
            self.accept_armed = false;
        }
        if result < 0 {
            if !self.shard.is_stopping() {
                let error = io::Error::from_raw_os_error(-result);
                tracing::warn!(shard = self.shard.index(), %error, "accept failed");
                if !self.accept_armed {
                    // Out of descriptors, typically: try again shortly instead of spinning.
                    self.accept_retry = Some(now + Duration::from_millis(50));
                }
            } else if !self.accept_armed {
                self.listener = None;
            }
            return;
        }
        // SAFETY: a successful accept returns a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(result as RawFd) };
        if !self.accept_armed && !self.shard.is_stopping() {
            self.arm_accept();
        }
        if !self.shard.admit() {
            refuse_busy(&fd, self.tls.is_some());
            return;
        }
        let peer = match socket2::SockRef::from(&fd).peer_addr().ok().and_then(|a| a.as_socket()) {
            Some(peer) => peer,
            // Already reset by the peer; nothing to serve.
            None => return self.shard_release_admission(),
        };
        let tls = match self.tls.as_ref().map(TlsState::new).transpose() {
            Ok(tls) => tls,
            Err(e) => {
                tracing::warn!(error = %e, "cannot create a TLS session");
                return self.shard_release_admission();
            }
        };
        let io = UringIo { fd, write: None, recv_armed: false, closing: false };
        let key = self.shard.accept(io, peer, now);
        if let Some(tls) = tls {
            self.sessions.insert(key, tls);
        }
        self.arm_recv(key);
    }

    /// Gives back the admission of a connection that never got a slot.
    fn shard_release_admission(&mut self) {
        self.shard.unadmit();
    }

    fn on_recv(&mut self, key: usize, result: i32, flags: u32, now: Instant) {
        let more = cqueue::more(flags);
        let bid = cqueue::buffer_select(flags);
        // Incremental consumption: the kernel keeps filling this buffer.
        let done = !cqueue::buffer_more(flags);
        let Some(slot) = self.shard.slot_mut(key) else {
            if let Some(bid) = bid
                && self.buffers.take(bid, result.max(0) as usize, done).is_some()
                && done
            {
                self.buffers.recycle(bid);
            }
            return;
        };
        if !more {
            slot.io.recv_armed = false;
        }
        let closing = slot.io.closing;
        match (result, bid) {
            (n, Some(bid)) if n > 0 => {
                let input = self.buffers.take(bid, n as usize, done);
                if !closing && let Some(input) = input {
                    match self.sessions.get_mut(&key) {
                        None => self.shard.on_input(key, input, now),
                        Some(tls) => {
                            self.plaintext.clear();
                            let decrypted = tls.read(input, &mut self.plaintext);
                            if !self.plaintext.is_empty() {
                                self.shard.on_input(key, &mut self.plaintext, now);
                            }
                            // Handshake messages and alerts go out with this turn's writes.
                            self.dirty.push(key);
                            if let Err(e) = decrypted {
                                self.shard.on_io_error(key, format!("TLS: {e}"), now);
                            }
                        }
                    }
                }
                if done {
                    self.buffers.recycle(bid);
                }
                if !more && !closing {
                    self.rearm.push(key);
                }
            }
            (0, _) => {
                if !closing {
                    self.shard.on_eof(key, now);
                }
            }
            (n, _) if n == -libc::ENOBUFS => {
                self.buffers.grow();
                if !closing {
                    self.rearm.push(key);
                }
            }
            (n, _) => {
                if !closing {
                    self.shard.on_io_error(key, describe(&io::Error::from_raw_os_error(-n)), now);
                }
            }
        }
        self.maybe_release(key);
    }

    fn on_send(&mut self, key: usize, result: i32, now: Instant) {
        let Some(slot) = self.shard.slot_mut(key) else { return };
        let Some(mut op) = slot.io.write.take() else { return };
        let closing = slot.io.closing;
        let was_tls = op.frames.is_empty();
        if result < 0 {
            op.reset();
            self.spare_writes.push(op);
            if !closing {
                if !was_tls {
                    self.shard.on_written(key, 0, now);
                }
                self.shard.on_io_error(key, describe(&io::Error::from_raw_os_error(-result)), now);
            }
            return self.maybe_release(key);
        }
        let written = result as usize;
        if was_tls {
            op.ciphertext.advance(written.min(op.ciphertext.len()));
            if !op.ciphertext.is_empty() {
                // A short write: the rest goes out next.
                op.prepare();
                let fd = slot.io.fd.as_raw_fd();
                let entry = op.entry(fd);
                slot.io.write = Some(op);
                return self.push(entry.user_data(user_data(Op::Send, key)));
            }
        }
        op.reset();
        self.spare_writes.push(op);
        if closing {
            // The last TLS records are out (or this was a write the close interrupted).
            return self.shutdown(key);
        }
        if !was_tls {
            self.shard.on_written(key, written, now);
        }
        // More may have been queued meanwhile (or TLS output is waiting).
        self.dirty.push(key);
    }

    /// Writes the connections that have frames queued, and starts closing the ones that
    /// ended.
    fn flush(&mut self, now: Instant) {
        loop {
            let mut keys = std::mem::take(&mut self.flush_keys);
            self.shard.take_dirty(&mut keys);
            keys.append(&mut self.dirty);
            let mut ended = std::mem::take(&mut self.ended);
            self.shard.take_ended(&mut ended);
            let idle = keys.is_empty() && ended.is_empty();
            for &key in &keys {
                self.write(key, now);
            }
            for &key in &ended {
                self.close(key, now);
            }
            keys.clear();
            ended.clear();
            self.flush_keys = keys;
            self.ended = ended;
            if idle {
                return;
            }
        }
    }

    /// Starts one `sendmsg` of `key`'s queued frames (or TLS records).
    fn write(&mut self, key: usize, now: Instant) {
        let Some(slot) = self.shard.slot_mut(key) else { return };
        if slot.io.write.is_some() || slot.io.closing {
            return;
        }
        let mut op = self.spare_writes.pop().unwrap_or_else(WriteOp::new);
        if let Some(tls) = self.sessions.get_mut(&key) {
            if let Some(encrypted) = tls.encrypt_queued(&mut slot.conn) {
                match encrypted {
                    Ok(n) => self.shard.on_written(key, n, now),
                    Err(e) => {
                        self.spare_writes.push(op);
                        return self.shard.on_io_error(key, format!("TLS: {e}"), now);
                    }
                }
            }
            let Some(tls) = self.sessions.get_mut(&key) else { return };
            match tls.take_output() {
                Ok(true) => {
                    op.ciphertext = Bytes::from(std::mem::take(&mut tls.pending)).slice(tls.pending_sent..);
                    tls.pending_sent = 0;
                }
                Ok(false) => {
                    self.spare_writes.push(op);
                    return;
                }
                Err(e) => {
                    self.spare_writes.push(op);
                    return self.shard.on_io_error(key, format!("TLS: {e}"), now);
                }
            }
        } else {
            let Some(frames) = slot.conn.poll_transmit() else {
                self.spare_writes.push(op);
                return;
            };
            op.frames.extend(frames.take(MAX_IOV).cloned());
        }
        op.prepare();
        let Some(slot) = self.shard.slot_mut(key) else { return };
        let fd = slot.io.fd.as_raw_fd();
        let entry = op.entry(fd);
        slot.io.write = Some(op);
        self.push(entry.user_data(user_data(Op::Send, key)));
    }

    /// `key` ended: shut its socket down (which completes its recv and any write), and
    /// close it once nothing is in flight.
    fn close(&mut self, key: usize, now: Instant) {
        let Some(slot) = self.shard.slot_mut(key) else { return };
        if slot.io.closing {
            return self.maybe_release(key);
        }
        slot.io.closing = true;
        // TLS counts plaintext as written once encrypted: the records holding the last
        // frames (a close frame, an HTTP answer) may still be waiting. Send them first,
        // for at most the close timeout.
        let tls = self.sessions.get_mut(&key);
        if tls.is_some() && slot.io.write.is_some() {
            // Those records are being written: shut down when the write completes.
            self.lingering.push((now + self.shard.config().close_timeout, key));
            return;
        }
        if let Some(tls) = tls
            && tls.take_output().unwrap_or(false)
        {
            let mut op = self.spare_writes.pop().unwrap_or_else(WriteOp::new);
            op.ciphertext = Bytes::from(std::mem::take(&mut tls.pending)).slice(tls.pending_sent..);
            tls.pending_sent = 0;
            op.prepare();
            let entry = op.entry(slot.io.fd.as_raw_fd());
            slot.io.write = Some(op);
            self.push(entry.user_data(user_data(Op::Send, key)));
            self.lingering.push((now + self.shard.config().close_timeout, key));
            return;
        }
        self.shutdown(key);
    }

    /// Shuts `key`'s socket down, which completes its recv and any write.
    fn shutdown(&mut self, key: usize) {
        if let Some(slot) = self.shard.slot_mut(key) {
            let _ = socket2::SockRef::from(&slot.io.fd).shutdown(Shutdown::Both);
        }
        self.maybe_release(key);
    }

    /// Closing connections whose last TLS records did not go out in time.
    fn end_lingering(&mut self, now: Instant) {
        while let Some(&(deadline, key)) = self.lingering.first() {
            if now < deadline {
                return;
            }
            self.lingering.remove(0);
            self.shutdown(key);
        }
    }

    fn maybe_release(&mut self, key: usize) {
        if self.shard.slot_mut(key).is_some_and(|slot| slot.io.closing && slot.io.idle()) {
            // Dropping the io state closes the descriptor.
            drop(self.shard.release(key));
            self.sessions.remove(&key);
        }
    }
}

impl<H: Handler> UringDriver<H> {
    /// Giving up with operations still in flight: their memory must outlive the ring's
    /// teardown, which the kernel finishes asynchronously, so it is leaked rather than
    /// freed (this happens only when connections did not close within the stop's grace).
    fn abandon_in_flight(&mut self) {
        for slot in self.shard.slots_mut() {
            if let Some(op) = slot.io.write.take() {
                Box::leak(op);
            }
        }
    }
}

impl<H: Handler> Drop for UringDriver<H> {
    fn drop(&mut self) {
        // The kernel may still use the buffer ring until the ring is torn down; tell it
        // first, so the memory can go.
        self.buffers.unregister(&self.ring);
    }
}

/// Answers a plain connection over the limit with 503 (a TLS client cannot read plain
/// HTTP: it just sees the connection close). A rare path: one non-blocking send.
fn refuse_busy(fd: &OwnedFd, tls: bool) {
    let socket = socket2::SockRef::from(fd);
    if !tls {
        let _ = socket.send_with_flags(BUSY_RESPONSE, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT);
    }
    let _ = socket.shutdown(Shutdown::Both);
}

// Connections that the driver drops while the loop is still running are closed only
// after their operations complete; at teardown the ring's own drop cancels them.
const _: () = assert!(MAX_IOV <= 1024);

#[cfg(test)]
mod tests {
    use super::*;

    /// Every connection costs one slot: keep the plain, idle case small.
    #[test]
    fn a_connection_slot_stays_small() {
        let size = std::mem::size_of::<crate::shard::Slot<(), UringIo>>();
        assert!(size <= 200, "a slot is {size} bytes");
    }

    #[test]
    fn user_data_round_trips() {
        for op in [Op::Accept, Op::Recv, Op::Send, Op::Wake] {
            assert_eq!(decode_user_data(user_data(op, 123_456)), (Some(op), 123_456));
        }
        assert_eq!(decode_user_data(0).0, None);
    }

    #[test]
    fn the_buffer_ring_posts_a_working_set_and_grows_when_short() {
        let ring = IoUring::new(8).expect("io_uring");
        let mut buffers = BufRing::new(&ring, 64, 128, 7).expect("buffer ring");
        buffers.replenish();
        assert_eq!(buffers.posted, 4, "a small working set first");
        // Incremental: two receives into buffer 0, the second one finishing it.
        let first = buffers.take(0, 100, false).expect("buffer 0").as_ptr() as usize;
        let second = buffers.take(0, 28, true).expect("buffer 0, again").as_ptr() as usize;
        assert_eq!(second, first + 100, "the second receive continues where the first ended");
        buffers.recycle(0);
        assert_eq!(buffers.take(0, 10, true).map(|s| s.as_ptr() as usize), Some(first), "back at the start");
        buffers.recycle(0);
        assert!(buffers.take(64, 1, true).is_none(), "no such buffer");
        assert!(buffers.take(1, 4097, true).is_none(), "longer than a buffer (sizes are whole pages)");
        for _ in 0..4 {
            buffers.grow();
        }
        buffers.replenish();
        assert_eq!(buffers.posted, 64, "the target doubled to the whole pool");
        // A quiet second shrinks the target; a short one does not.
        buffers.decay(&ring, false);
        assert_eq!(buffers.target, 64, "it ran short in this period");
        buffers.decay(&ring, false);
        assert_eq!(buffers.target, 32);
        for bid in 0..40 {
            buffers.take(bid, 1, true).expect("a posted buffer");
            buffers.recycle(bid);
        }
        buffers.decay(&ring, false);
        assert_eq!(buffers.target, 16);
        // 40 free, 16 kept warm for the next posts: the other 24 were handed back.
        assert_eq!(buffers.warm.iter().filter(|w| !**w).count(), 24);
        // Quiet for a period: the 24 still posted are taken back as well.
        buffers.decay(&ring, true);
        assert_eq!((buffers.target, buffers.posted), (8, 8));
        assert_eq!(buffers.warm.iter().filter(|w| **w).count(), 8, "only the working set stays resident");
        buffers.unregister(&ring);
    }
}
