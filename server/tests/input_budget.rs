//! The server-wide input budget under attack: 1,000 clients each send all but the last
//! byte of a message at the size limit (1 MiB), 1 GB in all, against a 32 MiB budget.
//! The server closes the biggest holders with 1009, its memory stays within the budget,
//! and 500 ordinary subscribers receive every broadcast meanwhile.
//!
//! The server runs in this process, so the process's RSS is the server's (the attackers
//! write from one shared buffer and the subscribers' reads wait in kernel buffers). The
//! attackers stop sending once RSS passes twice the budget over the baseline, so a
//! regression fails the test instead of exhausting the machine.

mod common;

use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use ringcast::{IoBackend, OpCode};

const BUDGET: usize = 32 << 20;
const MESSAGE_LIMIT: usize = 1 << 20;
const ATTACKERS: usize = 1000;
const SUBSCRIBERS: usize = 500;
const BROADCASTS: usize = 40;

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// An upgraded attacker that sends one frame header announcing a message at the limit,
/// then its payload but for the last byte.
struct Attacker {
    stream: TcpStream,
    /// Payload bytes still to send (the last byte never is).
    left: usize,
    closed: bool,
}

fn attack(backend: IoBackend) {
    let server = Running::start(
        builder(backend).max_message_size(MESSAGE_LIMIT).max_frame_size(MESSAGE_LIMIT).max_buffered_input(BUDGET),
        Recorder::silent(),
    );
    let mut subscribers: Vec<RawClient> = (0..SUBSCRIBERS).map(|_| RawClient::open(server.addr(), "/")).collect();
    let mut attackers: Vec<Attacker> = (0..ATTACKERS)
        .map(|_| {
            let raw = RawClient::open(server.addr(), "/");
            let mut header = vec![0x82, 0x80 | 127];
            header.extend_from_slice(&(MESSAGE_LIMIT as u64).to_be_bytes());
            header.extend_from_slice(&mask_key());
            let mut stream = raw.stream;
            stream.write_all(&header).unwrap();
            stream.set_nonblocking(true).unwrap();
            Attacker { stream, left: MESSAGE_LIMIT - 1, closed: false }
        })
        .collect();
    wait_until("every client connected", WAIT, || {
        server.stats().connections.iter().sum::<u64>() == (SUBSCRIBERS + ATTACKERS) as u64
    });
    let baseline = rss_bytes();
    let guard = baseline + 2 * BUDGET;
    // Masked zeros are the key itself: the server sees arbitrary bytes either way.
    let chunk = vec![0x5au8; 64 << 10];
    let mut peak = baseline;
    let mut sent_total = 0usize;
    let mut broadcasts = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last_broadcast = Instant::now();
    loop {
        let mut progress = false;
        for attacker in attackers.iter_mut().filter(|a| !a.closed && a.left > 0) {
            let take = attacker.left.min(chunk.len());
            match attacker.stream.write(&chunk[..take]) {
                Ok(n) => {
                    attacker.left -= n;
                    sent_total += n;
                    progress = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => attacker.closed = true,
            }
        }
        let rss = rss_bytes();
        peak = peak.max(rss);
        assert!(
            rss < guard,
            "server RSS {} MB passed twice the budget over the baseline {} MB",
            rss >> 20,
            baseline >> 20
        );
        if broadcasts < BROADCASTS && last_broadcast.elapsed() >= Duration::from_millis(20) {
            server.broadcast(&*format!("update {broadcasts}"));
            broadcasts += 1;
            last_broadcast = Instant::now();
        }
        let all_sent = attackers.iter().all(|a| a.closed || a.left == 0);
        if all_sent && broadcasts == BROADCASTS {
            break;
        }
        assert!(Instant::now() < deadline, "the attack did not finish in time ({sent_total} bytes sent)");
        if !progress {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    // What the attackers sent may still wait in kernel buffers: let the server read it.
    let wanted = ATTACKERS - 2 * BUDGET / MESSAGE_LIMIT;
    let settle = Instant::now() + Duration::from_secs(20);
    while (server.stats().input_budget_closes as usize) < wanted && Instant::now() < settle {
        let rss = rss_bytes();
        peak = peak.max(rss);
        assert!(
            rss < guard,
            "server RSS {} MB passed twice the budget over the baseline {} MB",
            rss >> 20,
            baseline >> 20
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let stats = server.stats();
    assert!(stats.buffered_input <= BUDGET as u64, "holds {} bytes of input, over the budget", stats.buffered_input);
    assert!(
        stats.input_budget_closes as usize >= wanted,
        "only {} connections closed for the budget",
        stats.input_budget_closes
    );
    // RSS: under the baseline plus the budget (and room for allocator rounding).
    assert!(
        peak < baseline + BUDGET + (16 << 20),
        "peak RSS {} MB over a baseline of {} MB with a {} MB budget",
        peak >> 20,
        baseline >> 20,
        BUDGET >> 20
    );
    // Every attacker that was shed is disconnected, most with a 1009 close frame (for
    // some, the reset that answers their further sending discards it first).
    let shed = stats.input_budget_closes as usize;
    let mut readers: Vec<(RawClient, Option<bool>)> =
        attackers.iter().map(|a| (RawClient::upgraded(a.stream.try_clone().unwrap()), None)).collect();
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        for (raw, outcome) in readers.iter_mut().filter(|(_, o)| o.is_none()) {
            *outcome = poll_end(raw);
        }
        let ended = readers.iter().filter(|(_, o)| o.is_some()).count();
        if ended >= shed || Instant::now() > until {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let ended = readers.iter().filter(|(_, o)| o.is_some()).count();
    let closed_1009 = readers.iter().filter(|(_, o)| *o == Some(true)).count();
    assert!(ended >= shed, "{ended} attackers disconnected, {shed} shed");
    assert!(closed_1009 * 2 >= shed, "only {closed_1009} of {shed} shed attackers saw the 1009");
    // Every subscriber got every broadcast, in order.
    for (i, subscriber) in subscribers.iter_mut().enumerate() {
        for n in 0..BROADCASTS {
            assert_eq!(subscriber.read_text(), format!("update {n}"), "subscriber {i}");
        }
    }
    eprintln!(
        "{backend:?}: {} MB sent by attackers, peak RSS {} MB over a {} MB baseline, {} closed for the budget",
        sent_total >> 20,
        (peak - baseline) >> 20,
        baseline >> 20,
        stats.input_budget_closes
    );
    drop(attackers);
    server.stop();
}

/// Reads what an attacker has been sent, without waiting: `Some(true)` after a 1009
/// close frame, `Some(false)` when the connection ended otherwise, `None` while it is open.
fn poll_end(raw: &mut RawClient) -> Option<bool> {
    loop {
        match raw.poll_frame() {
            Ok(Some(frame)) if frame.header.opcode == OpCode::Close => {
                assert_eq!(u16::from_be_bytes([frame.payload[0], frame.payload[1]]), 1009);
                return Some(true);
            }
            Ok(Some(_)) => {}
            Ok(None) => return None,
            Err(()) => return Some(false),
        }
    }
}

backends!(attack);
