//! A group of clients in one process.
//!
//! The group's clients are spread over `threads` shard threads, each running a
//! current-thread tokio runtime, so that a shard's clients share its histograms and
//! counters without locks. Every client is one task owning its socket, a read buffer
//! and a [`Decoder`]; nothing else is allocated per message. The coordinator (in this
//! process, or in the parent when this is a worker process) moves the group through
//! [`Phase`]s and collects one [`GroupResult`] at the end.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::BytesMut;
use hdrhistogram::Histogram;
use ringcast_codec::frame::{FrameHeader, FrameRules, HeaderParse};
use ringcast_codec::{Assembly, Decoder, DecoderConfig, Incoming, OpCode, Role, encode_masked_frame};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, watch};

use crate::clock::{instant_at, now_ns};
use crate::conn::{self, Stream, Target, TlsOptions, describe};
use crate::stats::{GroupResult, Hist, SeqSet, latency_histogram};
use crate::wire::{self, CompressedStamp, StampInflater, StampReader};

mod resume;
pub use resume::{ClientRecovery, ReconnectPlan};

/// What the clients do once connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Receive what one publisher sends at a fixed rate.
    Broadcast,
    /// Send, await the echo, repeat.
    Echo,
    /// Hold the connection.
    Idle,
    /// Receive a broadcast stream with offsets; a fraction of the clients drops its
    /// connection now and then and resumes from its last offset.
    Reconnect,
}

impl Scenario {
    /// The scenario's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Broadcast => "broadcast",
            Scenario::Echo => "echo",
            Scenario::Idle => "idle",
            Scenario::Reconnect => "reconnect",
        }
    }
}

/// Everything a group needs; sent as JSON to worker processes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupConfig {
    /// The scenario.
    pub scenario: Scenario,
    /// The server (subscriber / echo URL).
    pub target: Target,
    /// TLS verification.
    pub tls: TlsOptions,
    /// Clients in this group.
    pub clients: usize,
    /// Global index of this group's first client.
    pub first_client: usize,
    /// Clients in all groups together.
    pub total_clients: usize,
    /// Source addresses; client `i` uses `sources[i % len]`. Empty: the kernel picks.
    pub sources: Vec<IpAddr>,
    /// New connections per second for this group (0: no pacing).
    pub connect_rate: f64,
    /// Connection attempts in flight at most, for this group.
    pub max_pending: usize,
    /// Bound on TCP connect + TLS + upgrade, ms.
    pub connect_timeout_ms: u64,
    /// Shard threads.
    pub threads: usize,
    /// Message size, bytes.
    pub payload: usize,
    /// Echo: messages per second per client (0: as fast as the echoes come back).
    pub echo_rate: f64,
    /// Warm-up, ns (not measured).
    pub warmup_ns: u64,
    /// Measured time, ns.
    pub duration_ns: u64,
    /// Longest wait for the last messages after the last send, ns.
    pub drain_ns: u64,
    /// Broadcast: messages the publisher will send.
    pub planned_messages: u64,
    /// Broadcast: the first `warmup_messages` are not measured.
    pub warmup_messages: u64,
    /// Offer permessage-deflate.
    #[serde(default)]
    pub deflate: bool,
    /// What the messages look like.
    #[serde(default)]
    pub payload_kind: wire::PayloadKind,
    /// Reconnect: who reconnects, how often and where to.
    #[serde(default)]
    pub reconnect: Option<ReconnectPlan>,
    /// A text message each client sends after its upgrade, awaiting a text reply.
    #[serde(default)]
    pub subscribe: Option<String>,
}

/// Where the run is. Every group goes Connect → Run → (Drain) → done; Stop ends early.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Connecting.
    Connect,
    /// Measuring; `t0` is the start (CLOCK_MONOTONIC ns).
    Run {
        /// Start of the run.
        t0: u64,
    },
    /// Broadcast: the publisher sent `sent` messages; wait for them until `deadline`.
    Drain {
        /// Messages the publisher sent.
        sent: u64,
        /// CLOCK_MONOTONIC ns.
        deadline: u64,
    },
    /// Give up now.
    Stop,
}

/// Live counters of one shard, read by the progress display.
#[derive(Debug, Default)]
pub struct ShardProgress {
    launched: AtomicU64,
    connected: AtomicU64,
    failed: AtomicU64,
    received: AtomicU64,
    bytes: AtomicU64,
    settled: AtomicU64,
}

/// A reading of the live counters.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct ProgressSnapshot {
    /// Connection attempts started.
    pub launched: u64,
    /// Upgrades completed.
    pub connected: u64,
    /// Connection attempts failed.
    pub failed: u64,
    /// Distinct messages received.
    pub received: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Clients done (all received, failed or disconnected).
    pub settled: u64,
}

impl ProgressSnapshot {
    /// Adds another reading.
    pub fn add(&mut self, o: &ProgressSnapshot) {
        self.launched += o.launched;
        self.connected += o.connected;
        self.failed += o.failed;
        self.received += o.received;
        self.bytes += o.bytes;
        self.settled += o.settled;
    }
}

/// Sums the counters of several shards.
pub fn read_progress(shards: &[Arc<ShardProgress>]) -> ProgressSnapshot {
    let mut s = ProgressSnapshot::default();
    for p in shards {
        s.add(&ProgressSnapshot {
            launched: p.launched.load(Relaxed),
            connected: p.connected.load(Relaxed),
            failed: p.failed.load(Relaxed),
            received: p.received.load(Relaxed),
            bytes: p.bytes.load(Relaxed),
            settled: p.settled.load(Relaxed),
        });
    }
    s
}

/// A group running on threads of this process.
pub struct LocalGroup {
    phase: Arc<watch::Sender<Phase>>,
    progress: Vec<Arc<ShardProgress>>,
    threads: Vec<JoinHandle<GroupResult>>,
}

impl LocalGroup {
    /// Starts connecting right away.
    pub fn start(config: GroupConfig) -> Result<LocalGroup, String> {
        let tls =
            if config.target.tls { Some(tokio_rustls::TlsConnector::from(config.tls.client_config()?)) } else { None };
        let threads = config.threads.clamp(1, config.clients.max(1));
        let config = Arc::new(GroupConfig { threads, ..config });
        let (phase, _) = watch::channel(Phase::Connect);
        let phase = Arc::new(phase);
        let mut group = LocalGroup { phase: phase.clone(), progress: Vec::new(), threads: Vec::new() };
        for shard in 0..threads {
            let progress = Arc::new(ShardProgress::default());
            group.progress.push(progress.clone());
            let (config, phase, tls) = (config.clone(), phase.subscribe(), tls.clone());
            let thread = std::thread::Builder::new()
                .name(format!("loadgen-{shard}"))
                .spawn(move || run_shard(config, shard, progress, phase, tls))
                .map_err(|e| format!("cannot start a thread: {e}"))?;
            group.threads.push(thread);
        }
        Ok(group)
    }

    /// The live counters, summed over shards.
    pub fn progress(&self) -> ProgressSnapshot {
        read_progress(&self.progress)
    }

    /// The shards' live counters, readable after the group is handed to [`LocalGroup::wait`].
    pub fn progress_handle(&self) -> Vec<Arc<ShardProgress>> {
        self.progress.clone()
    }

    /// Moves every shard to `phase`.
    pub fn set_phase(&self, phase: Phase) {
        self.phase.send_replace(phase);
    }

    /// A handle that can move the group from another thread.
    pub fn phase_sender(&self) -> Arc<watch::Sender<Phase>> {
        self.phase.clone()
    }

    /// Whether every shard has finished.
    pub fn is_finished(&self) -> bool {
        self.threads.iter().all(JoinHandle::is_finished)
    }

    /// Waits for the shards and merges their results.
    pub fn wait(self) -> GroupResult {
        let mut total = GroupResult::default();
        for thread in self.threads {
            match thread.join() {
                Ok(r) => total.merge(&r),
                Err(_) => total.error("loadgen: a client thread panicked".into()),
            }
        }
        total
    }
}

/// A shard's shared state; its tasks all run on one thread.
struct Ctx {
    config: Arc<GroupConfig>,
    progress: Arc<ShardProgress>,
    phase: watch::Receiver<Phase>,
    tls: Option<tokio_rustls::TlsConnector>,
    latency: RefCell<Histogram<u64>>,
    connect: RefCell<Histogram<u64>>,
    /// Reconnect: from starting to reconnect to having caught up, µs.
    recovery: RefCell<Histogram<u64>>,
    errors: RefCell<BTreeMap<String, u64>>,
    clients: RefCell<Vec<Rc<RefCell<ClientState>>>>,
    pending: Cell<usize>,
    pending_done: Notify,
    settled: Cell<usize>,
    settle_event: Notify,
    /// Broadcast: a client is complete once it has this many distinct messages.
    target: Cell<u64>,
    connect_first: Cell<u64>,
    connect_last: Cell<u64>,
    disconnects: Cell<u64>,
    /// Connections that agreed on permessage-deflate.
    deflate_connections: Cell<u64>,
    /// Reads the stamps of compressed messages, for every client of the shard.
    stamp_inflater: RefCell<StampInflater>,
}

impl Ctx {
    fn error(&self, what: String) {
        *self.errors.borrow_mut().entry(what).or_default() += 1;
    }

    fn settle(&self, state: &mut ClientState) {
        if !state.settled {
            state.settled = true;
            self.settled.set(self.settled.get() + 1);
            self.progress.settled.fetch_add(1, Relaxed);
            self.settle_event.notify_one();
        }
    }

    fn stopping(&self) -> bool {
        *self.phase.borrow() == Phase::Stop
    }
}

#[derive(Debug, Default)]
struct ClientState {
    index: usize,
    connected: bool,
    seen: SeqSet,
    distinct: u64,
    max_seq: Option<u64>,
    received: u64,
    duplicates: u64,
    reordered: u64,
    measured: u64,
    measured_bytes: u64,
    sent: u64,
    last_recv_ns: u64,
    settled: bool,
    /// Reconnect scenario.
    reconnects: u64,
    /// Of `reconnects`: after the connection failed (--failover).
    failovers: u64,
    replayed: u64,
    recoveries_incomplete: u64,
    offset_gaps: u64,
    epoch_changes: u64,
}

impl ClientState {
    /// Counts the arrival of message `seq`; `false` for a duplicate (nothing else counted).
    fn arrive(&mut self, seq: u64) -> bool {
        self.received += 1;
        if !self.seen.insert(seq) {
            self.duplicates += 1;
            return false;
        }
        self.distinct += 1;
        match self.max_seq {
            Some(max) if seq < max => self.reordered += 1,
            _ => self.max_seq = Some(seq),
        }
        true
    }
}

fn run_shard(
    config: Arc<GroupConfig>,
    shard: usize,
    progress: Arc<ShardProgress>,
    phase: watch::Receiver<Phase>,
    tls: Option<tokio_rustls::TlsConnector>,
) -> GroupResult {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let ctx = Rc::new(Ctx {
        target: Cell::new(if matches!(config.scenario, Scenario::Broadcast | Scenario::Reconnect) {
            config.planned_messages
        } else {
            u64::MAX
        }),
        config,
        progress,
        phase,
        tls,
        latency: RefCell::new(latency_histogram()),
        connect: RefCell::new(latency_histogram()),
        recovery: RefCell::new(latency_histogram()),
        errors: RefCell::default(),
        clients: RefCell::default(),
        pending: Cell::new(0),
        pending_done: Notify::new(),
        settled: Cell::new(0),
        settle_event: Notify::new(),
        connect_first: Cell::new(0),
        connect_last: Cell::new(0),
        disconnects: Cell::new(0),
        deflate_connections: Cell::new(0),
        stamp_inflater: RefCell::default(),
    });
    let local = tokio::task::LocalSet::new();
    let sent = local.block_on(&runtime, shard_main(ctx.clone(), shard));
    // Dropping the tasks closes every socket.
    drop(local);
    collect(&ctx, sent)
}

/// Launches this shard's clients at the shard's share of the connect rate, then follows
/// the phases. Returns how many messages each client should have received (broadcast).
async fn shard_main(ctx: Rc<Ctx>, shard: usize) -> u64 {
    let config = ctx.config.clone();
    let mine: Vec<usize> =
        (0..config.clients).filter(|k| k % config.threads == shard).map(|k| config.first_client + k).collect();
    let rate = config.connect_rate / config.threads as f64;
    let max_pending = (config.max_pending / config.threads).max(1);
    let start = now_ns();
    for (n, client) in mine.iter().copied().enumerate() {
        if rate > 0.0 {
            let due = start + (n as f64 * 1e9 / rate) as u64;
            if due > now_ns() {
                tokio::time::sleep_until(instant_at(due)).await;
            }
        }
        while ctx.pending.get() >= max_pending {
            ctx.pending_done.notified().await;
        }
        if ctx.stopping() {
            break;
        }
        ctx.pending.set(ctx.pending.get() + 1);
        ctx.progress.launched.fetch_add(1, Relaxed);
        let state = Rc::new(RefCell::new(ClientState { index: client, ..ClientState::default() }));
        ctx.clients.borrow_mut().push(state.clone());
        tokio::task::spawn_local(client_task(ctx.clone(), client, state));
    }
    let mut phase = ctx.phase.clone();
    let launched = ctx.clients.borrow().len();
    let all_settled = || ctx.settled.get() >= launched;
    match config.scenario {
        Scenario::Broadcast | Scenario::Reconnect => {
            let Ok(now) = phase.wait_for(|p| matches!(p, Phase::Drain { .. } | Phase::Stop)).await.map(|p| *p) else {
                return ctx.target.get();
            };
            let Phase::Drain { sent, deadline } = now else { return ctx.target.get() };
            ctx.target.set(sent);
            for client in ctx.clients.borrow().iter() {
                let mut state = client.borrow_mut();
                if state.distinct >= sent {
                    ctx.settle(&mut state);
                }
            }
            wait_settled(&ctx, &all_settled, deadline).await;
            sent
        }
        Scenario::Echo | Scenario::Idle => {
            let Ok(Phase::Run { t0 }) =
                phase.wait_for(|p| matches!(p, Phase::Run { .. } | Phase::Stop)).await.map(|p| *p)
            else {
                return 0;
            };
            if config.scenario == Scenario::Echo {
                let deadline = t0 + config.warmup_ns + config.duration_ns + config.drain_ns;
                wait_settled(&ctx, &all_settled, deadline).await;
            } else {
                let deadline = t0 + config.duration_ns;
                tokio::select! {
                    _ = tokio::time::sleep_until(instant_at(deadline)) => {}
                    _ = phase.wait_for(|p| *p == Phase::Stop) => {}
                }
            }
            0
        }
    }
}

async fn wait_settled(ctx: &Ctx, all_settled: &dyn Fn() -> bool, deadline: u64) {
    let mut phase = ctx.phase.clone();
    let sleep = tokio::time::sleep_until(instant_at(deadline));
    tokio::pin!(sleep);
    while !all_settled() {
        tokio::select! {
            _ = ctx.settle_event.notified() => {}
            _ = &mut sleep => break,
            _ = phase.wait_for(|p| *p == Phase::Stop) => break,
        }
    }
}

/// Turns the clients' states into the shard's result.
fn collect(ctx: &Ctx, sent: u64) -> GroupResult {
    let mut r = GroupResult {
        attempted: ctx.clients.borrow().len() as u64,
        connected: ctx.progress.connected.load(Relaxed),
        connect_failed: ctx.progress.failed.load(Relaxed),
        disconnects: ctx.disconnects.get(),
        connect_first_ns: ctx.connect_first.get(),
        connect_last_ns: ctx.connect_last.get(),
        latency: Hist(ctx.latency.borrow().clone()),
        connect: Hist(ctx.connect.borrow().clone()),
        recovery: Hist(ctx.recovery.borrow().clone()),
        errors: ctx.errors.borrow().clone(),
        deflate_connections: ctx.deflate_connections.get(),
        ..Default::default()
    };
    for client in ctx.clients.borrow().iter() {
        let st = client.borrow();
        if !st.connected {
            continue;
        }
        let (expected, distinct) = match ctx.config.scenario {
            Scenario::Broadcast | Scenario::Reconnect => (sent, st.seen.count_in(0, sent)),
            Scenario::Echo => (st.sent, st.distinct),
            Scenario::Idle => (0, 0),
        };
        r.received += st.received;
        r.distinct += distinct;
        r.duplicates += st.duplicates;
        r.reordered += st.reordered;
        r.measured += st.measured;
        r.measured_bytes += st.measured_bytes;
        r.sent_by_clients += st.sent;
        r.last_recv_ns = r.last_recv_ns.max(st.last_recv_ns);
        let lost = expected.saturating_sub(distinct);
        if lost > 0 {
            r.clients_with_loss += 1;
            r.max_client_loss = r.max_client_loss.max(lost);
        }
        r.reconnects += st.reconnects;
        r.failovers += st.failovers;
        r.replayed += st.replayed;
        r.recoveries_incomplete += st.recoveries_incomplete;
        r.offset_gaps += st.offset_gaps;
        r.epoch_changes += st.epoch_changes;
        if ctx.config.reconnect.as_ref().is_some_and(|plan| plan.reconnects(st.index)) {
            r.per_client.push(ClientRecovery {
                client: st.index,
                reconnects: st.reconnects,
                recovered: st.replayed,
                lost,
                duplicated: st.duplicates,
            });
        }
    }
    r
}

async fn client_task(ctx: Rc<Ctx>, index: usize, state: Rc<RefCell<ClientState>>) {
    let config = ctx.config.clone();
    let source = (!config.sources.is_empty()).then(|| config.sources[index % config.sources.len()]);
    let started = now_ns();
    if ctx.connect_first.get() == 0 {
        ctx.connect_first.set(started);
    }
    let timeout = Duration::from_millis(config.connect_timeout_ms);
    let target = match config.reconnect.as_ref().filter(|plan| !plan.spread.is_empty()) {
        Some(plan) => match index % (plan.spread.len() + 1) {
            0 => &config.target,
            k => &plan.spread[k - 1],
        },
        None => &config.target,
    };
    let opened = tokio::time::timeout(timeout, conn::open(target, source, ctx.tls.as_ref(), config.deflate)).await;
    ctx.pending.set(ctx.pending.get() - 1);
    ctx.pending_done.notify_one();
    let opened = opened.unwrap_or_else(|_| Err(format!("connect: no upgrade within {timeout:?}")));
    let (mut stream, buf, deflate) = match opened {
        Ok(opened) => opened,
        Err(e) => {
            ctx.progress.failed.fetch_add(1, Relaxed);
            ctx.error(e);
            ctx.settle(&mut state.borrow_mut());
            return;
        }
    };
    let mut reader = Reader::new(buf, config.payload_kind, deflate);
    if let Some(text) = &config.subscribe {
        let exchanged = tokio::time::timeout(timeout, exchange_text(&ctx, &mut stream, &mut reader, text)).await;
        if let Err(e) = exchanged.unwrap_or_else(|_| Err(format!("subscribe: no reply within {timeout:?}"))) {
            ctx.progress.failed.fetch_add(1, Relaxed);
            ctx.error(e);
            ctx.settle(&mut state.borrow_mut());
            return;
        }
    }
    let done = now_ns();
    ctx.connect.borrow_mut().saturating_record(((done - started) / 1000).max(1));
    ctx.connect_last.set(ctx.connect_last.get().max(done));
    ctx.progress.connected.fetch_add(1, Relaxed);
    state.borrow_mut().connected = true;
    if deflate {
        ctx.deflate_connections.set(ctx.deflate_connections.get() + 1);
    }
    let outcome = match config.scenario {
        Scenario::Reconnect => resume::run(&ctx, &state, index, stream, reader).await,
        Scenario::Broadcast => subscribe(&ctx, &state, &mut stream, &mut reader).await,
        Scenario::Echo => echo(&ctx, &state, &mut stream, &mut reader, index).await,
        Scenario::Idle => loop {
            if let Err(e) = reader.next(&ctx, &mut stream).await {
                break Err(e);
            }
        },
    };
    if let Err(e) = outcome
        && !ctx.stopping()
    {
        ctx.disconnects.set(ctx.disconnects.get() + 1);
        ctx.error(e);
    }
    ctx.settle(&mut state.borrow_mut());
}

/// Sends `text` and waits for a text message in reply (`--subscribe`).
async fn exchange_text(ctx: &Ctx, stream: &mut Stream, reader: &mut Reader, text: &str) -> Result<(), String> {
    let mut out = BytesMut::new();
    encode_masked_frame(&mut out, OpCode::Text, true, text.as_bytes(), rand::random());
    stream.write_all(&out).await.map_err(|e| describe("subscribe", &e))?;
    loop {
        if let Read::ReplyEnded = reader.read(ctx, stream, true).await? {
            return Ok(());
        }
    }
}

/// What one step of [`Reader::read`] found.
enum Read {
    /// A whole message's `(seq, sent_ns, len)`.
    Stamp((u64, u64, usize)),
    /// The text message awaited as a reply ended.
    ReplyEnded,
    /// Nothing to report yet.
    Nothing,
}

/// Reads whole messages' stamps off one connection, answering pings. With binary
/// payloads, text messages (pub/sub events) are skipped.
struct Reader {
    buf: BytesMut,
    kind: wire::PayloadKind,
    /// Inside a text message that is not a stamped one.
    in_text: bool,
    /// Without permessage-deflate: the codec's decoder, frame by frame.
    decoder: Decoder,
    stamp: StampReader,
    /// With permessage-deflate: frames are split here, and compressed messages' stamps
    /// read from their first bytes.
    deflate: Option<DeflateFrames>,
}

struct DeflateFrames {
    /// The message being received is compressed (RSV1 on its first frame).
    compressed: bool,
    stamp: CompressedStamp,
}

/// Each read asks for at least this much room.
const READ_CHUNK: usize = 8 * 1024;
const RSV1: u8 = 0b100;

impl Reader {
    fn new(buf: BytesMut, kind: wire::PayloadKind, deflate: bool) -> Reader {
        let config = DecoderConfig::new(Role::Client).assembly(Assembly::Frames).max_message_size(1 << 30);
        Reader {
            buf,
            kind,
            in_text: false,
            decoder: Decoder::new(config.max_frame_size(1 << 30)),
            stamp: StampReader::new(kind),
            deflate: deflate.then(|| DeflateFrames { compressed: false, stamp: CompressedStamp::default() }),
        }
    }

    /// The next message's `(seq, sent_ns, len)`, `len` being its payload bytes on the wire
    /// (compressed, if it was); messages without a stamp are errors.
    async fn next(&mut self, ctx: &Ctx, stream: &mut Stream) -> Result<(u64, u64, usize), String> {
        loop {
            if let Read::Stamp(stamped) = self.read(ctx, stream, false).await? {
                return Ok(stamped);
            }
        }
    }

    /// Whether a frame with this opcode belongs to a text message that carries no stamp:
    /// the reply awaited (`reply`), or any text message when payloads are binary.
    fn unstamped_text(&self, opcode: OpCode, reply: bool) -> bool {
        match opcode {
            OpCode::Text => reply || self.kind == wire::PayloadKind::Binary,
            OpCode::Continuation => self.in_text,
            _ => false,
        }
    }

    /// Reads until something to report: a stamped message or, with `reply`, the end of
    /// the next text message.
    async fn read(&mut self, ctx: &Ctx, stream: &mut Stream, reply: bool) -> Result<Read, String> {
        loop {
            if self.deflate.is_some() {
                match self.next_deflate_frame(ctx, stream, reply).await? {
                    Read::Nothing => continue,
                    found => return Ok(found),
                }
            }
            while let Some(event) = self.decoder.decode_buf(&mut self.buf).map_err(|e| format!("protocol: {e}"))? {
                match event {
                    Incoming::Fragment { opcode, fin, .. } if self.unstamped_text(opcode, reply) => {
                        self.in_text = !fin;
                        if fin && reply {
                            return Ok(Read::ReplyEnded);
                        }
                    }
                    Incoming::Fragment { fin, payload, .. } => {
                        if let Some(stamped) = self.stamp.push(&payload, fin) {
                            return Ok(Read::Stamp(stamped));
                        }
                        if fin {
                            return Err("protocol: a message shorter than its stamp".into());
                        }
                    }
                    Incoming::Ping(payload) => pong(stream, &payload).await?,
                    Incoming::Close(frame) => return Err(closed(frame.map(|f| u16::from(f.code)))),
                    _ => {}
                }
            }
            self.fill(stream).await?;
        }
    }

    /// With permessage-deflate: handles the next whole frame in the buffer (reading more
    /// first if needed); reports a message's stamp on its final frame.
    async fn next_deflate_frame(&mut self, ctx: &Ctx, stream: &mut Stream, reply: bool) -> Result<Read, String> {
        let rules = FrameRules { allowed_rsv: RSV1, ..FrameRules::for_role(Role::Client, 1 << 30) };
        let (header, header_len) = loop {
            match FrameHeader::parse(&self.buf, &rules).map_err(|e| format!("protocol: {e}"))? {
                HeaderParse::Complete { header, header_len }
                    if self.buf.len() >= header_len + header.payload_len as usize =>
                {
                    break (header, header_len);
                }
                _ => self.fill(stream).await?,
            }
        };
        let frame = self.buf.split_to(header_len + header.payload_len as usize);
        let payload = &frame[header_len..];
        if self.unstamped_text(header.opcode, reply) {
            self.in_text = !header.fin;
            return Ok(if header.fin && reply { Read::ReplyEnded } else { Read::Nothing });
        }
        let Some(deflate) = self.deflate.as_mut() else { return Ok(Read::Nothing) };
        match header.opcode {
            OpCode::Ping => pong(stream, payload).await?,
            OpCode::Close => {
                let code = (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                return Err(closed(code));
            }
            OpCode::Pong => {}
            opcode => {
                if opcode != OpCode::Continuation {
                    deflate.compressed = header.rsv & RSV1 != 0;
                }
                let stamped = if deflate.compressed {
                    let mut inflater = ctx.stamp_inflater.borrow_mut();
                    match deflate.stamp.push(payload, header.fin, self.kind, &mut inflater) {
                        Some(Err(())) => return Err("protocol: a compressed message without a readable stamp".into()),
                        Some(Ok(stamped)) => Some(stamped),
                        None => None,
                    }
                } else {
                    self.stamp.push(payload, header.fin)
                };
                if stamped.is_none() && header.fin {
                    return Err("protocol: a message shorter than its stamp".into());
                }
                return Ok(stamped.map_or(Read::Nothing, Read::Stamp));
            }
        }
        Ok(Read::Nothing)
    }

    async fn fill(&mut self, stream: &mut Stream) -> Result<(), String> {
        self.buf.reserve(READ_CHUNK);
        if stream.read_buf(&mut self.buf).await.map_err(|e| describe("read", &e))? == 0 {
            return Err("read: connection closed by the server".into());
        }
        Ok(())
    }
}

async fn pong(stream: &mut Stream, payload: &[u8]) -> Result<(), String> {
    let mut out = BytesMut::new();
    encode_masked_frame(&mut out, OpCode::Pong, true, payload, rand::random());
    stream.write_all(&out).await.map_err(|e| describe("write", &e))
}

fn closed(code: Option<u16>) -> String {
    match code {
        Some(code) => format!("closed by the server with code {code}"),
        None => "closed by the server".into(),
    }
}

async fn subscribe(
    ctx: &Ctx,
    state: &RefCell<ClientState>,
    stream: &mut Stream,
    reader: &mut Reader,
) -> Result<(), String> {
    let warmup = ctx.config.warmup_messages;
    loop {
        let (seq, sent_ns, len) = reader.next(ctx, stream).await?;
        let now = now_ns();
        let mut st = state.borrow_mut();
        if !st.arrive(seq) {
            continue;
        }
        ctx.progress.received.fetch_add(1, Relaxed);
        ctx.progress.bytes.fetch_add(len as u64, Relaxed);
        if seq >= warmup {
            st.measured += 1;
            st.measured_bytes += len as u64;
            st.last_recv_ns = now;
            ctx.latency.borrow_mut().saturating_record((now.saturating_sub(sent_ns) / 1000).max(1));
        }
        if st.distinct >= ctx.target.get() {
            ctx.settle(&mut st);
        }
    }
}

/// Echo: one message in flight per client. Paced (`echo_rate` > 0) the next send is due
/// one interval after the previous one, and latencies are recorded with
/// `record_correct(latency, interval)`: HdrHistogram adds the samples a client that is not
/// held up by a slow echo would have taken (coordinated-omission correction).
async fn echo(
    ctx: &Ctx,
    state: &RefCell<ClientState>,
    stream: &mut Stream,
    reader: &mut Reader,
    index: usize,
) -> Result<(), String> {
    let config = &ctx.config;
    let mut phase = ctx.phase.clone();
    let Ok(Phase::Run { t0 }) = phase.wait_for(|p| matches!(p, Phase::Run { .. } | Phase::Stop)).await.map(|p| *p)
    else {
        return Ok(());
    };
    let interval = if config.echo_rate > 0.0 { (1e9 / config.echo_rate) as u64 } else { 0 };
    let interval_us = (interval / 1000).max(1);
    let measure_from = t0 + config.warmup_ns;
    let end = measure_from + config.duration_ns;
    // Spread the clients' first sends over one interval.
    let mut next = t0 + (index as u64 % config.total_clients as u64) * interval / config.total_clients as u64;
    let mut message = wire::MaskedMessage::new(config.payload, config.payload_kind, rand::random());
    for seq in 0.. {
        if next > now_ns() {
            tokio::time::sleep_until(instant_at(next)).await;
        }
        let sent = now_ns();
        if sent >= end {
            break;
        }
        stream.write_all(message.stamped(seq, sent)).await.map_err(|e| describe("write", &e))?;
        state.borrow_mut().sent += 1;
        let len = loop {
            let (got, _, len) = reader.next(ctx, stream).await?;
            if got == seq {
                break len;
            }
            state.borrow_mut().duplicates += 1;
        };
        let now = now_ns();
        let mut st = state.borrow_mut();
        st.received += 1;
        st.distinct += 1;
        st.seen.insert(seq);
        ctx.progress.received.fetch_add(1, Relaxed);
        ctx.progress.bytes.fetch_add(len as u64, Relaxed);
        if sent >= measure_from {
            let latency = (now.saturating_sub(sent) / 1000).max(1);
            let mut hist = ctx.latency.borrow_mut();
            if interval > 0 {
                let _ = hist.record_correct(latency, interval_us);
            } else {
                hist.saturating_record(latency);
            }
            st.measured += 1;
            st.measured_bytes += len as u64;
            st.last_recv_ns = now;
        }
        // The next send is due one interval after this one was due; a client held up by
        // a slow echo sends at once (closed loop) and record_correct fills the gap.
        next = (next + interval).max(now);
    }
    Ok(())
}
