//! Zero copy: a broadcast's bytes are encoded once and shared by every connection, not
//! copied per connection.
//!
//! This test binary installs a counting global allocator: the server runs in-process,
//! so every byte it allocates on any thread is counted. 100 raw clients (reading into
//! buffers allocated beforehand, so the clients themselves allocate nothing) receive one
//! 4 MiB broadcast; the bytes allocated from the broadcast call until the last client
//! has the whole message must stay below 3 × 4 MiB — one encode plus small per-shard and
//! per-connection bookkeeping (queue entries, writer tasks, iovecs).
//!
//! Why this fails if the payload were copied per connection: any per-connection copy
//! (a `to_vec`, a `Bytes::copy_from_slice`, re-encoding the frame, a per-connection
//! write buffer) allocates at least 4 MiB per client, 400 MiB for 100 clients, which
//! the counter sees whichever thread allocates it. A control phase proves the counter
//! does see such copies: the handler answers each client with `Connection::send_binary`
//! (which encodes per connection), and 100 × 1 MiB of allocation must show up.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};

use common::*;
use ringcast::codec::bytes::BytesMut;
use ringcast::codec::encode_masked_frame;
use ringcast::{Connection, Handler, IoBackend, OpCode};

/// Counts every byte allocated (growth only, for `realloc`).
struct Counting;

static ALLOCATED: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the counter is a
// relaxed atomic and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.fetch_add(new_size.saturating_sub(layout.size()) as u64, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The two backend variants share the counter: they take turns.
static SERIAL: Mutex<()> = Mutex::new(());

const CLIENTS: usize = 100;
const BROADCAST_LEN: usize = 4 << 20;
const CONTROL_LEN: usize = 1 << 20;

fn byte_at(i: usize, seed: u8) -> u8 {
    ((i * 31 + i / 251) as u8).wrapping_add(seed)
}

/// Answers `copy` with a per-connection `send_binary` of its payload (the control).
struct Copier {
    payload: Arc<Vec<u8>>,
}

impl Handler for Copier {
    type Data = ();

    fn on_text(&self, conn: &mut Connection<'_, Self::Data>, text: &str) {
        if text == "copy" {
            conn.send(&self.payload[..]).unwrap();
        }
    }
}

/// Reads one unfragmented binary message of `len` bytes with pattern `seed` into the
/// preallocated `buf`, checking its bytes, without allocating.
fn read_binary(stream: &mut TcpStream, buf: &mut [u8], len: usize, seed: u8) {
    let mut header = [0u8; 10];
    stream.read_exact(&mut header).expect("frame header");
    assert_eq!(header[0], 0x80 | OpCode::Binary.as_u8());
    assert_eq!(header[1], 127);
    assert_eq!(u64::from_be_bytes(header[2..10].try_into().unwrap()), len as u64);
    let mut at = 0;
    while at < len {
        let want = (len - at).min(buf.len());
        let n = stream.read(&mut buf[..want]).expect("payload");
        assert!(n > 0, "EOF after {at} of {len} bytes");
        // Sampled (the test binary is unoptimized): both ends of every read and every
        // 1021st byte, which lands on every offset modulo a page across the message.
        for k in (0..n).step_by(1021).chain([n - 1]) {
            assert!(buf[k] == byte_at(at + k, seed), "byte {} differs", at + k);
        }
        at += n;
    }
}

fn broadcast_is_not_copied_per_connection(backend: IoBackend) {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let control: Vec<u8> = (0..CONTROL_LEN).map(|i| byte_at(i, 2)).collect();
    let server = Running::start(builder(backend).send_queue_limit(64 << 20), Copier { payload: Arc::new(control) });
    let addr = server.addr();
    let payload: Vec<u8> = (0..BROADCAST_LEN).map(|i| byte_at(i, 1)).collect();

    let received = Arc::new(AtomicUsize::new(0));
    let go = Arc::new(Barrier::new(CLIENTS + 1));
    let mut threads = Vec::new();
    for _ in 0..CLIENTS {
        let client = RawClient::open(addr, "/");
        let mut stream = client.stream.try_clone().unwrap();
        let (received, go) = (received.clone(), go.clone());
        let mut copy_request = BytesMut::new();
        encode_masked_frame(&mut copy_request, OpCode::Text, true, b"copy", mask_key());
        threads.push(std::thread::spawn(move || {
            let _client = client;
            let mut buf = vec![0u8; 256 << 10];
            go.wait();
            read_binary(&mut stream, &mut buf, BROADCAST_LEN, 1);
            received.fetch_add(1, Ordering::SeqCst);
            go.wait();
            stream.write_all(&copy_request).unwrap();
            read_binary(&mut stream, &mut buf, CONTROL_LEN, 2);
            received.fetch_add(1, Ordering::SeqCst);
        }));
    }
    wait_until("all clients open", WAIT, || server.stats().websockets == CLIENTS as u64);
    go.wait();

    // The measured window: one 4 MiB broadcast until every client has all of it.
    let before = ALLOCATED.load(Ordering::SeqCst);
    server.broadcast(&payload);
    wait_until("every client to receive the broadcast", WAIT, || received.load(Ordering::SeqCst) == CLIENTS);
    let broadcast_allocated = ALLOCATED.load(Ordering::SeqCst) - before;

    // Control: 100 per-connection sends of 1 MiB.
    let before = ALLOCATED.load(Ordering::SeqCst);
    go.wait();
    wait_until("every client to receive its copy", WAIT, || received.load(Ordering::SeqCst) == 2 * CLIENTS);
    let control_allocated = ALLOCATED.load(Ordering::SeqCst) - before;
    for t in threads {
        t.join().expect("client thread");
    }
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    eprintln!(
        "{backend:?}: one 4 MiB broadcast to {CLIENTS} clients allocated {:.2} MiB; \
         {CLIENTS} per-connection 1 MiB sends allocated {:.2} MiB",
        mib(broadcast_allocated),
        mib(control_allocated)
    );
    assert!(
        control_allocated >= (CLIENTS * CONTROL_LEN) as u64,
        "the counter missed per-connection copies: {control_allocated} bytes for {CLIENTS} × {CONTROL_LEN}"
    );
    assert!(
        broadcast_allocated < 3 * BROADCAST_LEN as u64,
        "a 4 MiB broadcast to {CLIENTS} clients allocated {:.1} MiB: the payload is copied per connection",
        mib(broadcast_allocated)
    );
    server.stop();
}

backends!(broadcast_is_not_copied_per_connection);
