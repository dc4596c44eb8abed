//! `abuse`: clients a server must survive.
//!
//! - **Slow consumers** (`--slow-consumers`): they upgrade with a small receive buffer and
//!   never read again, so everything sent to them piles up in the server, which must bound
//!   it (its slow-consumer policy). They leave with a reset at the end.
//! - **Misbehaving clients**, a trickle of them (`--rate` per second), each doing one thing
//!   wrong, in turn, and checking the server's answer:
//!
//! | kind | what it does | what the server must do |
//! | --- | --- | --- |
//! | `unmasked-frame` | sends a frame without a mask | close 1002 |
//! | `reserved-opcode` | sends opcode 0x3 | close 1002 |
//! | `long-ping` | a ping with 200 bytes of payload (control frames hold ≤ 125) | close 1002 |
//! | `invalid-utf8` | a text message that is not UTF-8 | close 1007 |
//! | `oversized-frame` | announces a 1 TiB frame | close 1009 |
//! | `partial-frame` | announces 64 KiB, sends 1 KiB, stalls for `--partial-hold`, resets | keep serving, no close |
//! | `unfinished-message` | a first fragment without FIN, stalls, resets | keep serving, no close |
//! | `slowloris` | sends the upgrade request one byte per `--slowloris-interval` | drop it near the handshake timeout |
//! | `silent` | connects and sends nothing | drop it near the handshake timeout |
//! | `huge-header` | a request head over 16 KiB | answer 431 |
//! | `garbage` | bytes that are not HTTP | answer 400 |
//!
//! Closes must come as a close frame with the code, then the end of the TCP connection.

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::clock::{instant_at, now_ns, secs};
use crate::conn::{Target, describe};
use crate::raw::{self, Counts, Next};

/// `abuse`
#[derive(Debug, Clone, clap::Args)]
pub struct AbuseArgs {
    /// Server URL: ws://HOST:PORT/PATH (plain ws).
    pub url: String,

    /// Clients that upgrade and then never read.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub slow_consumers: usize,

    /// The slow consumers' receive buffer (SO_RCVBUF, before connecting).
    #[arg(long, value_name = "BYTES", default_value_t = 4096)]
    pub slow_rcvbuf: u32,

    /// Misbehaving clients per second (0: none).
    #[arg(short, long, value_name = "PER_SECOND", default_value_t = 4.0)]
    pub rate: f64,

    /// How long to run: slow consumers stay this long, misbehaving clients start during it.
    #[arg(short, long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,

    /// The server's handshake timeout, to judge slowloris and silent clients by.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,

    /// How long partial frames and unfinished messages stall before resetting.
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = humantime::parse_duration)]
    pub partial_hold: Duration,

    /// Slowloris: the pause between two bytes of its request.
    #[arg(long, value_name = "DURATION", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub slowloris_interval: Duration,

    /// Only these kinds, comma-separated (default: all; see --help of the crate docs).
    #[arg(long, value_name = "LIST")]
    pub kinds: Option<String>,

    /// Source addresses, round-robin (addresses and ranges); "auto": the kernel's choice.
    #[arg(long, value_name = "LIST", default_value = "auto")]
    pub source_addrs: String,

    /// Write the JSON report here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// One way of misbehaving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A frame without a mask.
    UnmaskedFrame,
    /// Opcode 0x3.
    ReservedOpcode,
    /// A ping longer than 125 bytes.
    LongPing,
    /// A text message that is not UTF-8.
    InvalidUtf8,
    /// A frame header announcing 1 TiB.
    OversizedFrame,
    /// Part of a frame, then silence.
    PartialFrame,
    /// A first fragment without FIN, then silence.
    UnfinishedMessage,
    /// The request one byte at a time.
    Slowloris,
    /// Nothing at all after connecting.
    Silent,
    /// A request head over the server's limit.
    HugeHeader,
    /// Bytes that are not HTTP.
    Garbage,
}

impl Kind {
    /// Every kind, in the order they take turns.
    pub const ALL: [Kind; 11] = [
        Kind::UnmaskedFrame,
        Kind::PartialFrame,
        Kind::ReservedOpcode,
        Kind::Slowloris,
        Kind::InvalidUtf8,
        Kind::HugeHeader,
        Kind::OversizedFrame,
        Kind::UnfinishedMessage,
        Kind::LongPing,
        Kind::Silent,
        Kind::Garbage,
    ];

    /// The kind's name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Kind::UnmaskedFrame => "unmasked-frame",
            Kind::ReservedOpcode => "reserved-opcode",
            Kind::LongPing => "long-ping",
            Kind::InvalidUtf8 => "invalid-utf8",
            Kind::OversizedFrame => "oversized-frame",
            Kind::PartialFrame => "partial-frame",
            Kind::UnfinishedMessage => "unfinished-message",
            Kind::Slowloris => "slowloris",
            Kind::Silent => "silent",
            Kind::HugeHeader => "huge-header",
            Kind::Garbage => "garbage",
        }
    }

    fn parse_list(text: &str) -> Result<Vec<Kind>, String> {
        text.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|name| {
                Kind::ALL.into_iter().find(|k| k.name() == name).ok_or_else(|| {
                    let names: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
                    format!("--kinds: unknown kind {name:?} (known: {})", names.join(", "))
                })
            })
            .collect()
    }
}

/// What the clients of one kind met.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KindReport {
    /// Clients of this kind started.
    pub launched: u64,
    /// Clients that got the answer they should.
    pub ok: u64,
    /// Everything else, by what happened.
    pub failures: Counts,
    /// Slowloris and silent clients: seconds from connect until the server dropped them
    /// (the largest seen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_drop_s: Option<f64>,
}

/// The `abuse` report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AbuseReport {
    /// The tool and version.
    pub tool: String,
    /// Server URL.
    pub url: String,
    /// Seconds.
    pub duration_s: f64,
    /// Slow consumers asked for.
    pub slow_consumers: u64,
    /// Slow consumers upgraded.
    pub slow_connected: u64,
    /// Slow consumers that failed to connect, by why.
    pub slow_failures: Counts,
    /// Misbehaving clients per kind.
    pub kinds: std::collections::BTreeMap<String, KindReport>,
    /// Misbehaving clients started.
    pub launched: u64,
    /// Misbehaving clients that got the wrong answer (or none).
    pub failure_count: u64,
    /// Everything as expected.
    pub passed: bool,
    /// PASS or FAIL with the reasons.
    pub verdict: String,
}

/// Runs `abuse` and prints its report; exit status 0 when every answer was right.
pub fn main(args: &AbuseArgs) -> std::process::ExitCode {
    raw::finish(run(args), args.json.as_deref(), human, |report| report.passed)
}

#[derive(Debug, Default)]
struct State {
    slow_connected: u64,
    slow_failures: Counts,
    kinds: std::collections::BTreeMap<String, KindReport>,
}

/// Runs the slow consumers and the misbehaving clients for `--duration`.
pub fn run(args: &AbuseArgs) -> Result<AbuseReport, String> {
    let target = Target::parse(&args.url)?;
    if target.tls {
        return Err("abuse speaks plain ws:// only".into());
    }
    let kinds = match &args.kinds {
        Some(list) => Kind::parse_list(list)?,
        None => Kind::ALL.to_vec(),
    };
    if kinds.is_empty() && args.rate > 0.0 {
        return Err("--kinds: no kind given".into());
    }
    let sources = if args.source_addrs == "auto" { Vec::new() } else { crate::run::parse_sources(&args.source_addrs)? };
    crate::run::raise_file_limit(&mut Vec::new());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let local = tokio::task::LocalSet::new();
    let state = Rc::new(RefCell::new(State::default()));
    let ctx = Rc::new(Ctx { target: target.clone(), sources, args: args.clone(), start: now_ns() });
    local.block_on(&runtime, run_all(ctx, kinds, state.clone()));
    drop(local);
    let state = Rc::try_unwrap(state).map(RefCell::into_inner).unwrap_or_default();
    let launched = state.kinds.values().map(|k| k.launched).sum();
    let failure_count: u64 = state.kinds.values().map(|k| k.failures.values().sum::<u64>()).sum();
    let slow_failed: u64 = state.slow_failures.values().sum();
    let mut reasons = Vec::new();
    for (name, kind) in &state.kinds {
        for (what, n) in &kind.failures {
            reasons.push(format!("{n} × {name}: {what}"));
        }
    }
    if slow_failed > 0 {
        let list: Vec<String> = state.slow_failures.iter().map(|(k, v)| format!("{v} × {k}")).collect();
        reasons.push(format!("slow consumers not connected: {}", list.join("; ")));
    }
    let passed = reasons.is_empty();
    Ok(AbuseReport {
        tool: format!("ringcast-loadgen {}", env!("CARGO_PKG_VERSION")),
        url: target.url(),
        duration_s: args.duration.as_secs_f64(),
        slow_consumers: args.slow_consumers as u64,
        slow_connected: state.slow_connected,
        slow_failures: state.slow_failures,
        kinds: state.kinds,
        launched,
        failure_count,
        passed,
        verdict: if passed { "PASS".into() } else { format!("FAIL: {}", reasons.join("; ")) },
    })
}

struct Ctx {
    target: Target,
    sources: Vec<std::net::IpAddr>,
    args: AbuseArgs,
    start: u64,
}

impl Ctx {
    fn source(&self, n: usize) -> Option<std::net::IpAddr> {
        (!self.sources.is_empty()).then(|| self.sources[n % self.sources.len()])
    }

    fn end(&self) -> u64 {
        self.start + self.args.duration.as_nanos() as u64
    }
}

async fn run_all(ctx: Rc<Ctx>, kinds: Vec<Kind>, state: Rc<RefCell<State>>) {
    let mut tasks = Vec::new();
    for n in 0..ctx.args.slow_consumers {
        let (ctx, state) = (ctx.clone(), state.clone());
        tasks.push(tokio::task::spawn_local(async move { slow_consumer(&ctx, n, &state).await }));
    }
    if ctx.args.rate > 0.0 {
        for n in 0u64.. {
            let due = ctx.start + (n as f64 * 1e9 / ctx.args.rate) as u64;
            if due >= ctx.end() {
                break;
            }
            tokio::time::sleep_until(instant_at(due)).await;
            let kind = kinds[n as usize % kinds.len()];
            state.borrow_mut().kinds.entry(kind.name().into()).or_default().launched += 1;
            let (ctx, state) = (ctx.clone(), state.clone());
            tasks.push(tokio::task::spawn_local(async move {
                let outcome = misbehave(&ctx, n as usize, kind).await;
                let mut st = state.borrow_mut();
                let entry = st.kinds.entry(kind.name().into()).or_default();
                match outcome {
                    Ok(dropped_after) => {
                        entry.ok += 1;
                        if let Some(s) = dropped_after {
                            entry.max_drop_s = Some(entry.max_drop_s.unwrap_or(0.0).max(s));
                        }
                    }
                    Err(what) => raw::count(&mut entry.failures, what),
                }
            }));
        }
    }
    for task in tasks {
        let _ = task.await;
    }
}

async fn slow_consumer(ctx: &Ctx, n: usize, state: &RefCell<State>) {
    let open = async {
        let mut stream = raw::connect(&ctx.target, ctx.source(n), Some(ctx.args.slow_rcvbuf)).await?;
        raw::upgrade(&mut stream, &ctx.target).await?;
        Ok::<_, String>(stream)
    };
    match tokio::time::timeout(Duration::from_secs(20), open).await {
        Ok(Ok(stream)) => {
            state.borrow_mut().slow_connected += 1;
            // Never read: whatever the server sends piles up.
            tokio::time::sleep_until(instant_at(ctx.end())).await;
            raw::reset(stream);
        }
        Ok(Err(e)) => raw::count(&mut state.borrow_mut().slow_failures, e),
        Err(_) => raw::count(&mut state.borrow_mut().slow_failures, "no upgrade within 20 s"),
    }
}

/// One misbehaving client. `Ok(Some(s))`: dropped by the server `s` seconds after connecting.
async fn misbehave(ctx: &Ctx, n: usize, kind: Kind) -> Result<Option<f64>, String> {
    let mut stream = tokio::time::timeout(Duration::from_secs(10), raw::connect(&ctx.target, ctx.source(n), None))
        .await
        .map_err(|_| "connect: timed out".to_owned())??;
    let connected = now_ns();
    let answer_by = Instant::now() + Duration::from_secs(10);
    match kind {
        Kind::UnmaskedFrame => expect_close(&ctx.target, stream, &[0x81, 0x02, b'h', b'i'], 1002).await,
        Kind::ReservedOpcode => expect_close(&ctx.target, stream, &raw::masked_frame(0x83, b"x"), 1002).await,
        Kind::LongPing => expect_close(&ctx.target, stream, &raw::masked_frame(0x89, &[7; 200]), 1002).await,
        Kind::InvalidUtf8 => {
            expect_close(&ctx.target, stream, &raw::masked_frame(0x81, &[b'a', 0xce, 0xff]), 1007).await
        }
        Kind::OversizedFrame => expect_close(&ctx.target, stream, &raw::masked_header(0x82, 1 << 40), 1009).await,
        Kind::PartialFrame | Kind::UnfinishedMessage => {
            let leftover = raw::upgrade(&mut stream, &ctx.target).await?;
            let bytes = if kind == Kind::PartialFrame {
                let mut b = raw::masked_header(0x82, 64 << 10);
                b.extend(std::iter::repeat_n(0x5a, 1024));
                b
            } else {
                raw::masked_frame(0x02, &[0x5a; 1024])
            };
            stream.write_all(&bytes).await.map_err(|e| describe("write", &e))?;
            let mut frames = raw::Frames::new(leftover);
            let hold_end = Instant::now() + ctx.args.partial_hold;
            loop {
                match frames.next(&mut stream, hold_end).await? {
                    Next::Data | Next::Control => {}
                    Next::Timeout => break,
                    other => return Err(format!("dropped while a message was incomplete: {other:?}")),
                }
            }
            raw::reset(stream);
            Ok(None)
        }
        Kind::Slowloris => {
            let request = ctx.target.handshake(false)?.request().to_vec();
            for &byte in &request {
                if stream.write_all(&[byte]).await.is_err() {
                    return judge_drop(ctx, connected);
                }
                let pause = Instant::now() + ctx.args.slowloris_interval;
                if matches!(raw::until_eof(&mut stream, pause).await, Next::Eof | Next::Reset) {
                    return judge_drop(ctx, connected);
                }
            }
            Err(format!("the server took the whole request, sent over {:.0} s", secs(connected, now_ns())))
        }
        Kind::Silent => {
            let limit = Instant::now() + ctx.args.handshake_timeout + Duration::from_secs(10);
            match raw::until_eof(&mut stream, limit).await {
                Next::Eof | Next::Reset => judge_drop(ctx, connected),
                _ => Err("not dropped within the handshake timeout + 10 s".into()),
            }
        }
        Kind::HugeHeader => {
            let head = format!(
                "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nX-Pad: {}\r\n\r\n",
                ctx.target.path,
                ctx.target.host,
                "p".repeat(16 << 10)
            );
            // The server may answer and close before reading it all.
            let _ = stream.write_all(head.as_bytes()).await;
            expect_status(stream, &[431], answer_by).await
        }
        Kind::Garbage => {
            let mut junk = vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03];
            junk.extend((0..500).map(|_| rand::random::<u8>()));
            junk.extend_from_slice(b"\r\n\r\n");
            let _ = stream.write_all(&junk).await;
            expect_status(stream, &[400], answer_by).await
        }
    }
}

/// A slowloris or silent client was dropped: right if it happened near the handshake
/// timeout (not long before it, not long after).
fn judge_drop(ctx: &Ctx, connected: u64) -> Result<Option<f64>, String> {
    let after = secs(connected, now_ns());
    let timeout = ctx.args.handshake_timeout.as_secs_f64();
    if after < timeout * 0.5 {
        Err(format!("dropped after {after:.1} s, well before the {timeout:.0} s handshake timeout"))
    } else if after > timeout + 10.0 {
        Err(format!("dropped only after {after:.1} s (handshake timeout {timeout:.0} s)"))
    } else {
        Ok(Some(after))
    }
}

/// Upgrades, sends `bytes`, and expects a close frame with `code`, then the end of the
/// connection.
async fn expect_close(target: &Target, mut stream: TcpStream, bytes: &[u8], code: u16) -> Result<Option<f64>, String> {
    let leftover = raw::upgrade(&mut stream, target).await?;
    stream.write_all(bytes).await.map_err(|e| describe("write", &e))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut frames = raw::Frames::new(leftover);
    match frames.until_close(&mut stream, deadline).await? {
        Next::Close(Some(got)) if got == code => {}
        Next::Close(got) => return Err(format!("closed with {got:?} instead of {code}")),
        other => return Err(format!("no close frame ({other:?}), {code} expected")),
    }
    match raw::until_eof(&mut stream, deadline).await {
        Next::Eof | Next::Reset => Ok(None),
        _ => Err("close frame, but the TCP connection stayed open".into()),
    }
}

/// Reads the server's HTTP answer (at most 4 KiB are kept) until it closes; expects one
/// of `statuses`.
async fn expect_status(mut stream: TcpStream, statuses: &[u16], deadline: Instant) -> Result<Option<f64>, String> {
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => return Err("no answer and no close in 10 s".into()),
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => {
                if answer.len() < 4096 {
                    answer.extend_from_slice(&chunk[..n]);
                }
            }
            // A reset after the answer (the server closed with our bytes unread).
            Ok(Err(_)) => break,
        }
    }
    let text = String::from_utf8_lossy(&answer);
    let status: Option<u16> =
        text.strip_prefix("HTTP/1.1 ").and_then(|rest| rest.get(..3)).and_then(|s| s.parse().ok());
    match status {
        Some(s) if statuses.contains(&s) => Ok(None),
        Some(s) => Err(format!("answered {s}, expected {statuses:?}")),
        None if answer.is_empty() => Err(format!("closed without an answer, expected {statuses:?}")),
        None => Err(format!("answered something that is not HTTP, expected {statuses:?}")),
    }
}

/// The report as text.
pub fn human(r: &AbuseReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "abuse against {} for {:.0} s", r.url, r.duration_s);
    let _ = writeln!(out, "  slow consumers: {} of {} upgraded and never read", r.slow_connected, r.slow_consumers);
    for (kind, k) in &r.kinds {
        let drop = k.max_drop_s.map(|s| format!(", dropped after ≤ {s:.1} s")).unwrap_or_default();
        let _ = writeln!(out, "  {kind:<20} {:>5} started, {:>5} answered right{drop}", k.launched, k.ok);
        for (what, n) in &k.failures {
            let _ = writeln!(out, "      {n} × FAILED: {what}");
        }
    }
    let _ = writeln!(out, "{}", r.verdict);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_have_unique_names_and_parse() {
        let names: std::collections::BTreeSet<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(names.len(), Kind::ALL.len());
        assert_eq!(Kind::parse_list("slowloris, garbage").unwrap(), [Kind::Slowloris, Kind::Garbage]);
        assert!(Kind::parse_list("nope").is_err());
    }
}
