//! The `reconnect` scenario's client: a broadcast subscriber with offsets
//! (`ringcast serve`'s envelope, `/?offsets=1`) that, if it is one of the chosen
//! fraction, drops its connection now and then, stays away for a while, and comes back
//! (to another node, given several URLs) with `?since=<offset>&epoch=<epoch>`.
//!
//! Each delivery is `u64 offset | u64 epoch` (big-endian) in front of the publisher's
//! stamped message. The client counts, besides the broadcast scenario's loss and
//! duplicates by the publisher's sequence numbers: its reconnections, the messages
//! replayed to it, recoveries the server said were incomplete, gaps in the offsets and
//! epoch changes, and the recovery latency — from starting to reconnect to holding every
//! message up to the position the server's answer named.

use std::cell::RefCell;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::BytesMut;
use ringcast_codec::{Incoming, OpCode, encode_masked_frame};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{ClientState, Ctx, READ_CHUNK, Reader};
use crate::clock::{instant_at, now_ns};
use crate::conn::{self, Stream, Target, describe};
use crate::wire::{self, STAMP_LEN, read_stamp};

/// Bytes of offset and epoch in front of each message.
pub const ENVELOPE_LEN: usize = 16;

/// Who reconnects, how often, for how long and where to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReconnectPlan {
    /// Share of the clients that reconnect (spread evenly over client indices).
    pub fraction: f64,
    /// Time connected between two disconnections, ns (each client's first one is
    /// staggered over this period).
    pub every_ns: u64,
    /// Time away, ns.
    pub away_ns: u64,
    /// Where reconnections go, in turn (empty: the first URL).
    pub urls: Vec<Target>,
    /// Further URLs for the first connections: client `i` starts on the `i`-th of the
    /// group's target and these, in turn.
    #[serde(default)]
    pub spread: Vec<Target>,
    /// Resume a connection that fails or that the server ends, on `urls` in turn.
    #[serde(default)]
    pub failover: bool,
}

impl ReconnectPlan {
    /// Whether client `index` is one of those that reconnect.
    pub fn reconnects(&self, index: usize) -> bool {
        let f = self.fraction.clamp(0.0, 1.0);
        ((index + 1) as f64 * f).floor() > (index as f64 * f).floor()
    }
}

/// One reconnecting client's record, for the report.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClientRecovery {
    /// Client index.
    pub client: usize,
    /// Reconnections made.
    pub reconnects: u64,
    /// Messages replayed from the history.
    pub recovered: u64,
    /// Messages never received.
    pub lost: u64,
    /// Messages received twice or more.
    pub duplicated: u64,
}

/// What the server sent: its answer to a subscription, or a message in its envelope.
enum Received {
    Subscribed { offset: u64, epoch: u64, replayed: u64, recovered: Option<bool> },
    Message { offset: u64, epoch: u64, seq: u64, sent_ns: u64, len: usize },
}

/// Collects the first bytes and the length of a message that may arrive in frames.
#[derive(Default)]
struct Assembler {
    opcode: Option<OpCode>,
    head: Vec<u8>,
    len: usize,
}

const HEAD_KEEP: usize = 4096;

impl Reader {
    /// The next text answer or enveloped message.
    async fn next_received(&mut self, stream: &mut Stream, assembler: &mut Assembler) -> Result<Received, String> {
        loop {
            while let Some(event) = self.decoder.decode_buf(&mut self.buf).map_err(|e| format!("protocol: {e}"))? {
                match event {
                    Incoming::Fragment { opcode, fin, payload } => {
                        if opcode != OpCode::Continuation {
                            assembler.opcode = Some(opcode);
                        }
                        let keep = HEAD_KEEP.saturating_sub(assembler.head.len()).min(payload.len());
                        assembler.head.extend_from_slice(&payload[..keep]);
                        assembler.len += payload.len();
                        if fin {
                            let done = std::mem::take(assembler);
                            return parse(done);
                        }
                    }
                    Incoming::Ping(payload) => {
                        let mut out = BytesMut::new();
                        encode_masked_frame(&mut out, OpCode::Pong, true, &payload, rand::random());
                        stream.write_all(&out).await.map_err(|e| describe("write", &e))?;
                    }
                    Incoming::Close(frame) => {
                        return Err(match frame {
                            Some(f) => format!("closed by the server with code {}", u16::from(f.code)),
                            None => "closed by the server".into(),
                        });
                    }
                    _ => {}
                }
            }
            self.buf.reserve(READ_CHUNK);
            if stream.read_buf(&mut self.buf).await.map_err(|e| describe("read", &e))? == 0 {
                return Err("read: connection closed by the server".into());
            }
        }
    }
}

fn parse(message: Assembler) -> Result<Received, String> {
    match message.opcode {
        Some(OpCode::Text) => {
            let value: serde_json::Value = serde_json::from_slice(&message.head)
                .map_err(|e| format!("protocol: a text message that is not the subscription's answer: {e}"))?;
            if value["event"] != "subscribed" {
                return Err(format!("protocol: unexpected text message {value}"));
            }
            let epoch = value["epoch"].as_str().and_then(|e| u64::from_str_radix(e, 16).ok());
            let offset = value["offset"].as_u64();
            let (Some(epoch), Some(offset)) = (epoch, offset) else {
                return Err(format!("protocol: an answer without offset and epoch: {value}"));
            };
            Ok(Received::Subscribed {
                offset,
                epoch,
                replayed: value["replayed"].as_u64().unwrap_or(0),
                recovered: value["recovered"].as_bool(),
            })
        }
        Some(OpCode::Binary) => {
            let head = &message.head;
            if head.len() < ENVELOPE_LEN + STAMP_LEN {
                return Err("protocol: a message shorter than its envelope and stamp".into());
            }
            let offset = u64::from_be_bytes(head[..8].try_into().expect("8 bytes"));
            let epoch = u64::from_be_bytes(head[8..16].try_into().expect("8 bytes"));
            let (seq, sent_ns) = read_stamp(&head[ENVELOPE_LEN..], wire::PayloadKind::Binary).expect("checked length");
            Ok(Received::Message { offset, epoch, seq, sent_ns, len: message.len - ENVELOPE_LEN })
        }
        _ => Err("protocol: a message of neither text nor binary".into()),
    }
}

/// Runs one client of the `reconnect` scenario on its first connection.
pub(super) async fn run(
    ctx: &Ctx,
    state: &RefCell<ClientState>,
    index: usize,
    mut stream: Stream,
    mut reader: Reader,
) -> Result<(), String> {
    let config = &ctx.config;
    let Some(plan) = config.reconnect.clone() else { return Err("reconnect: no plan".into()) };
    let reconnects = plan.reconnects(index);
    let mut assembler = Assembler::default();
    let mut position = match reader.next_received(&mut stream, &mut assembler).await? {
        Received::Subscribed { offset, epoch, .. } => (offset, epoch),
        Received::Message { .. } => return Err("protocol: a message before the subscription's answer".into()),
    };
    // Disconnections happen in the run phase only, staggered over one period.
    let mut phase = ctx.phase.clone();
    let t0 = loop {
        if let super::Phase::Run { t0 } = *phase.borrow() {
            break Some(t0);
        }
        if matches!(*phase.borrow(), super::Phase::Stop | super::Phase::Drain { .. }) {
            break None;
        }
        // Deliveries before the run (there are none: the publisher starts at t0).
        tokio::select! {
            changed = phase.changed() => if changed.is_err() { return Ok(()) },
            received = reader.next_received(&mut stream, &mut assembler) => {
                record(ctx, state, received?, &mut position, None);
            }
        }
    };
    let run_end = t0.map_or(0, |t0| t0 + config.warmup_ns + config.duration_ns);
    let stagger = (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) % plan.every_ns.max(1);
    let mut next_drop = t0.map(|t0| t0 + stagger + plan.every_ns / 2).filter(|_| reconnects);
    // While catching up after a reconnection: (started, the answer's offset).
    let mut catching_up: Option<(u64, u64)> = None;
    let mut resumes = 0usize;
    loop {
        let due = next_drop.filter(|&due| due < run_end);
        let received = match due {
            Some(due) => tokio::select! {
                received = reader.next_received(&mut stream, &mut assembler) => Some(received),
                () = tokio::time::sleep_until(instant_at(due)) => None,
            },
            None => Some(reader.next_received(&mut stream, &mut assembler).await),
        };
        // With --failover a failed connection is resumed after --away (a client's back-off),
        // elsewhere; without, it ends the client (and counts as a disconnection).
        let received = match received {
            Some(Ok(received)) => Some(received),
            Some(Err(e)) if !plan.failover || ctx.stopping() || now_ns() >= run_end => return Err(e),
            Some(Err(_)) => {
                state.borrow_mut().failovers += 1;
                None
            }
            None => None,
        };
        if let Some(received) = received {
            record(ctx, state, received, &mut position, catching_up.as_mut());
            if let Some((started, until)) = catching_up
                && position.0 >= until
            {
                ctx.recovery.borrow_mut().saturating_record(((now_ns() - started) / 1000).max(1));
                catching_up = None;
            }
            continue;
        }
        // Drop the connection without a closing handshake, stay away, come back.
        drop(stream);
        tokio::time::sleep(Duration::from_nanos(plan.away_ns)).await;
        let started = now_ns();
        let source = (!config.sources.is_empty()).then(|| config.sources[index % config.sources.len()]);
        let timeout = Duration::from_millis(config.connect_timeout_ms);
        // With --failover, a node that refuses is skipped for the next (each URL once).
        let attempts = if plan.failover { plan.urls.len().max(1) } else { 1 };
        let mut opened = Err(String::new());
        for _ in 0..attempts {
            let base =
                if plan.urls.is_empty() { &config.target } else { &plan.urls[(index + resumes) % plan.urls.len()] };
            resumes += 1;
            let path = base.path.split('?').next().unwrap_or("/");
            let target = base.with_path(&format!("{path}?since={}&epoch={:016x}", position.0, position.1));
            opened = tokio::time::timeout(timeout, conn::open(&target, source, ctx.tls.as_ref(), false))
                .await
                .unwrap_or_else(|_| Err(format!("reconnect: no upgrade within {timeout:?}")));
            if opened.is_ok() {
                break;
            }
        }
        let opened = opened?;
        stream = opened.0;
        reader = Reader::new(opened.1, wire::PayloadKind::Binary, false);
        assembler = Assembler::default();
        let (offset, replayed, recovered) = match reader.next_received(&mut stream, &mut assembler).await? {
            Received::Subscribed { offset, replayed, recovered, .. } => (offset, replayed, recovered),
            Received::Message { .. } => return Err("protocol: a message before the subscription's answer".into()),
        };
        {
            let mut st = state.borrow_mut();
            st.reconnects += 1;
            st.replayed += replayed;
            if recovered != Some(true) {
                st.recoveries_incomplete += 1;
            }
        }
        if position.0 >= offset {
            ctx.recovery.borrow_mut().saturating_record(((now_ns() - started) / 1000).max(1));
        } else {
            catching_up = Some((started, offset));
        }
        // The next planned drop: only for the clients that reconnect by plan (a failover
        // of one that does not must not make it start dropping).
        next_drop = Some(now_ns() + plan.every_ns).filter(|_| reconnects);
    }
}

/// Counts one thing the server sent.
fn record(
    ctx: &Ctx,
    state: &RefCell<ClientState>,
    received: Received,
    at: &mut (u64, u64),
    replay: Option<&mut (u64, u64)>,
) {
    let Received::Message { offset, epoch, seq, sent_ns, len } = received else {
        return; // a second answer: not sent by ringcast
    };
    let now = now_ns();
    let mut st = state.borrow_mut();
    if epoch != at.1 {
        st.epoch_changes += 1;
    } else if offset != at.0 + 1 {
        st.offset_gaps += 1;
    }
    *at = (offset, epoch);
    if !st.arrive(seq) {
        return;
    }
    ctx.progress.received.fetch_add(1, Relaxed);
    ctx.progress.bytes.fetch_add(len as u64, Relaxed);
    // Replayed messages count for loss, not for delivery latency (that is the recovery
    // latency's business); so do all deliveries to a client once it failed over: the
    // delivery latency is that of the clients whose node stayed up.
    if seq >= ctx.config.warmup_messages && replay.is_none() && st.failovers == 0 {
        st.measured += 1;
        st.measured_bytes += len as u64;
        st.last_recv_ns = now;
        ctx.latency.borrow_mut().saturating_record((now.saturating_sub(sent_ns) / 1000).max(1));
    }
    if st.distinct >= ctx.target.get() {
        ctx.settle(&mut st);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fraction_picks_evenly_spread_clients() {
        let plan = ReconnectPlan {
            fraction: 0.1,
            every_ns: 1,
            away_ns: 1,
            urls: Vec::new(),
            spread: Vec::new(),
            failover: false,
        };
        let chosen: Vec<usize> = (0..100).filter(|&i| plan.reconnects(i)).collect();
        assert_eq!(chosen.len(), 10);
        assert_eq!(chosen[..3], [9, 19, 29]);
        let none = ReconnectPlan { fraction: 0.0, ..plan.clone() };
        assert!((0..100).all(|i| !none.reconnects(i)));
    }

    #[test]
    fn envelopes_and_answers_parse() {
        let mut head = Vec::new();
        head.extend_from_slice(&7u64.to_be_bytes());
        head.extend_from_slice(&0xabu64.to_be_bytes());
        head.extend_from_slice(&crate::wire::payload(32, wire::PayloadKind::Binary));
        crate::wire::stamp(&mut head[16..], wire::PayloadKind::Binary, 3, 99);
        let Received::Message { offset, epoch, seq, sent_ns, len } =
            parse(Assembler { opcode: Some(OpCode::Binary), len: head.len(), head }).unwrap()
        else {
            panic!("a message")
        };
        assert_eq!((offset, epoch, seq, sent_ns, len), (7, 0xab, 3, 99, 32));
        let answer = br#"{"event":"subscribed","epoch":"00000000000000ab","offset":7,"replayed":2,"recovered":true}"#;
        let Received::Subscribed { offset, epoch, replayed, recovered } =
            parse(Assembler { opcode: Some(OpCode::Text), len: answer.len(), head: answer.to_vec() }).unwrap()
        else {
            panic!("an answer")
        };
        assert_eq!((offset, epoch, replayed, recovered), (7, 0xab, 2, Some(true)));
        assert!(parse(Assembler { opcode: Some(OpCode::Text), len: 2, head: b"{}".to_vec() }).is_err());
    }
}
