//! `churn`: connections that come and go at a fixed rate. Each one connects, upgrades,
//! stays for a moment (reading and discarding what the server sends) and leaves in one
//! of three ways, chosen per connection:
//!
//! - **reset**: `SO_LINGER` 0 and close, so the kernel sends a RST and the server learns
//!   of it only from a failed read or write;
//! - **FIN**: the write side is shut down without a close frame, and the server must close
//!   its side (it sees end of file);
//! - **close handshake**: a close frame with 1000; the server must answer with its own
//!   close frame echoing 1000 (RFC 6455 §5.5.1) and then close the TCP connection.
//!
//! Every connection's fate is counted; anything but the expected answer is a failure.

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use crate::clock::{instant_at, now_ns, secs};
use crate::conn::Target;
use crate::raw::{self, Counts, Next, Timeline};
use crate::report::Percentiles;
use crate::stats::Hist;

/// `churn`
#[derive(Debug, Clone, clap::Args)]
pub struct ChurnArgs {
    /// Server URL: ws://HOST:PORT/PATH (plain ws).
    pub url: String,

    /// New connections per second; each is closed again after --hold.
    #[arg(short, long, value_name = "PER_SECOND", default_value_t = 600.0)]
    pub rate: f64,

    /// How long to keep opening connections.
    #[arg(short, long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,

    /// Longest time a connection stays open once upgraded (uniformly from 0).
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub hold: Duration,

    /// Share of connections that leave with a reset (SO_LINGER 0).
    #[arg(long, value_name = "FRACTION", default_value_t = 0.45)]
    pub reset_share: f64,

    /// Share of connections that leave with a bare FIN (no close frame); the rest leave
    /// with a close handshake.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.10)]
    pub fin_share: f64,

    /// Connections in flight at most (connecting, held or closing).
    #[arg(long, value_name = "N", default_value_t = 2000)]
    pub max_pending: usize,

    /// Bound on one connection's TCP connect and upgrade.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,

    /// Bound on the server's answer to a close frame or a FIN.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub close_timeout: Duration,

    /// Source addresses, round-robin (addresses and ranges such as 127.0.1.1-127.0.1.8);
    /// "auto": the kernel's choice.
    #[arg(long, value_name = "LIST", default_value = "auto")]
    pub source_addrs: String,

    /// Client threads, each with its own event loop.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub threads: usize,

    /// Write the JSON report here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Print a progress line every this many seconds on stderr (0: none).
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub progress_every: u64,
}

/// How a connection is to leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leave {
    Reset,
    Fin,
    CloseHandshake,
}

/// What one thread counted.
#[derive(Debug, Default)]
struct ThreadStats {
    launched: u64,
    connected: u64,
    /// Connections that left as expected, by way of leaving.
    ok: Counts,
    /// Everything that went wrong, by kind.
    failures: Counts,
    connects: Timeline,
    closes: Timeline,
    connect_us: Hist,
}

/// The `churn` report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChurnReport {
    /// The tool and version.
    pub tool: String,
    /// Server URL.
    pub url: String,
    /// Connections per second asked for.
    pub rate: f64,
    /// Seconds of opening connections.
    pub duration_s: f64,
    /// From the first attempt to the last connection's end, seconds.
    pub elapsed_s: f64,
    /// Connection attempts.
    pub launched: u64,
    /// Upgrades completed.
    pub connected: u64,
    /// Connections that left as expected.
    pub completed: u64,
    /// Upgraded connections per second over the opening window.
    pub connects_per_s: f64,
    /// Connections ended (any way) per second over the opening window.
    pub closes_per_s: f64,
    /// Connections that left as expected, by way.
    pub ok: Counts,
    /// Failures by kind.
    pub failures: Counts,
    /// Failures in all.
    pub failure_count: u64,
    /// Upgrades completed in each second.
    pub connects_timeline: Vec<u64>,
    /// Connections ended in each second.
    pub closes_timeline: Vec<u64>,
    /// TCP connect + upgrade, ms.
    pub connect_ms: Percentiles,
    /// No failure.
    pub passed: bool,
    /// PASS or FAIL with the reasons.
    pub verdict: String,
}

/// Runs `churn` and prints its report; exit status 0 when nothing failed.
pub fn main(args: &ChurnArgs) -> std::process::ExitCode {
    raw::finish(run(args), args.json.as_deref(), human, |report| report.passed)
}

/// Opens and closes connections for `--duration` at `--rate`.
pub fn run(args: &ChurnArgs) -> Result<ChurnReport, String> {
    let target = Target::parse(&args.url)?;
    if target.tls {
        return Err("churn speaks plain ws:// only".into());
    }
    if !(args.rate > 0.0 && args.rate.is_finite()) {
        return Err(format!("--rate {} must be positive", args.rate));
    }
    if !(0.0..=1.0).contains(&args.reset_share)
        || !(0.0..=1.0).contains(&args.fin_share)
        || args.reset_share + args.fin_share > 1.0
    {
        return Err("--reset-share and --fin-share must be fractions adding up to at most 1".into());
    }
    let sources = if args.source_addrs == "auto" { Vec::new() } else { crate::run::parse_sources(&args.source_addrs)? };
    crate::run::raise_file_limit(&mut Vec::new());
    let threads = args.threads.max(1);
    let start = now_ns() + 50_000_000;
    let live = Arc::new(LiveCounts::default());
    let mut handles = Vec::new();
    for index in 0..threads {
        let job = Job {
            target: target.clone(),
            sources: sources.clone(),
            args: args.clone(),
            index,
            threads,
            start,
            live: live.clone(),
        };
        handles.push(
            std::thread::Builder::new()
                .name(format!("churn-{index}"))
                .spawn(move || job.run())
                .map_err(|e| format!("cannot start a thread: {e}"))?,
        );
    }
    let mut last_print = now_ns();
    while !handles.iter().all(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(100));
        if args.progress_every > 0 && secs(last_print, now_ns()) >= args.progress_every as f64 {
            last_print = now_ns();
            eprintln!(
                "churn: {:.0}s: {} launched, {} upgraded, {} ended, {} failed",
                secs(start, now_ns()),
                live.launched.load(Relaxed),
                live.connected.load(Relaxed),
                live.ended.load(Relaxed),
                live.failed.load(Relaxed)
            );
        }
    }
    let mut total = ThreadStats::default();
    for handle in handles {
        let stats = handle.join().map_err(|_| "a churn thread panicked".to_owned())?;
        total.launched += stats.launched;
        total.connected += stats.connected;
        raw::merge_counts(&mut total.ok, &stats.ok);
        raw::merge_counts(&mut total.failures, &stats.failures);
        total.connects.merge(&stats.connects);
        total.closes.merge(&stats.closes);
        total.connect_us.merge(&stats.connect_us);
    }
    let elapsed_s = secs(start, now_ns());
    let window = args.duration.as_secs_f64().max(1e-3);
    let in_window = |t: &Timeline| t.0.iter().take(args.duration.as_secs().max(1) as usize).sum::<u64>() as f64;
    let completed: u64 = total.ok.values().sum();
    let failure_count: u64 = total.failures.values().sum();
    let mut reasons = Vec::new();
    if failure_count > 0 {
        let list: Vec<String> = total.failures.iter().map(|(k, v)| format!("{v} × {k}")).collect();
        reasons.push(format!("{failure_count} connections failed: {}", list.join("; ")));
    }
    if total.connected == 0 {
        reasons.push("no connection was upgraded".into());
    }
    let passed = reasons.is_empty();
    Ok(ChurnReport {
        tool: format!("ringcast-loadgen {}", env!("CARGO_PKG_VERSION")),
        url: target.url(),
        rate: args.rate,
        duration_s: args.duration.as_secs_f64(),
        elapsed_s,
        launched: total.launched,
        connected: total.connected,
        completed,
        connects_per_s: in_window(&total.connects) / window,
        closes_per_s: in_window(&total.closes) / window,
        ok: total.ok,
        failures: total.failures,
        failure_count,
        connects_timeline: total.connects.0,
        closes_timeline: total.closes.0,
        connect_ms: Percentiles::of(&total.connect_us),
        passed,
        verdict: if passed { "PASS".into() } else { format!("FAIL: {}", reasons.join("; ")) },
    })
}

/// Counters the coordinator prints while the threads run.
#[derive(Debug, Default)]
struct LiveCounts {
    launched: AtomicU64,
    connected: AtomicU64,
    ended: AtomicU64,
    failed: AtomicU64,
}

struct Job {
    target: Target,
    sources: Vec<std::net::IpAddr>,
    args: ChurnArgs,
    index: usize,
    threads: usize,
    start: u64,
    live: Arc<LiveCounts>,
}

impl Job {
    fn run(self) -> ThreadStats {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
        let local = tokio::task::LocalSet::new();
        let stats = Rc::new(RefCell::new(ThreadStats::default()));
        local.block_on(&runtime, self.launch(stats.clone()));
        drop(local);
        Rc::try_unwrap(stats).map(RefCell::into_inner).unwrap_or_default()
    }

    async fn launch(self, stats: Rc<RefCell<ThreadStats>>) {
        let job = Rc::new(self);
        let rate = job.args.rate / job.threads as f64;
        let end = job.start + job.args.duration.as_nanos() as u64;
        let max_pending = (job.args.max_pending / job.threads).max(1);
        let in_flight = Rc::new(std::cell::Cell::new(0usize));
        let done = Rc::new(tokio::sync::Notify::new());
        for n in 0u64.. {
            let due = job.start + (n as f64 * 1e9 / rate) as u64;
            if due >= end {
                break;
            }
            if due > now_ns() {
                tokio::time::sleep_until(instant_at(due)).await;
            }
            while in_flight.get() >= max_pending {
                done.notified().await;
            }
            // Connection `global` of all threads decides its source address and its way out.
            let global = n as usize * job.threads + job.index;
            in_flight.set(in_flight.get() + 1);
            stats.borrow_mut().launched += 1;
            job.live.launched.fetch_add(1, Relaxed);
            let (job2, stats2, in_flight2, done2) = (job.clone(), stats.clone(), in_flight.clone(), done.clone());
            tokio::task::spawn_local(async move {
                job2.one(global, &stats2).await;
                in_flight2.set(in_flight2.get() - 1);
                done2.notify_one();
            });
        }
        while in_flight.get() > 0 {
            done.notified().await;
        }
    }

    fn leave_for(&self, global: usize) -> Leave {
        // A fixed pattern per 100 connections, spread so that neighbours differ.
        let slot = (global.wrapping_mul(37) % 100) as f64 / 100.0;
        if slot < self.args.reset_share {
            Leave::Reset
        } else if slot < self.args.reset_share + self.args.fin_share {
            Leave::Fin
        } else {
            Leave::CloseHandshake
        }
    }

    async fn one(&self, global: usize, stats: &RefCell<ThreadStats>) {
        let source = (!self.sources.is_empty()).then(|| self.sources[global % self.sources.len()]);
        let leave = self.leave_for(global);
        let outcome = self.cycle(source, leave, stats).await;
        let at = Duration::from_nanos(now_ns().saturating_sub(self.start));
        let mut st = stats.borrow_mut();
        match outcome {
            Ok(way) => {
                raw::count(&mut st.ok, way);
                st.closes.add(at);
            }
            Err(failure) => {
                raw::count(&mut st.failures, failure);
                self.live.failed.fetch_add(1, Relaxed);
            }
        }
        self.live.ended.fetch_add(1, Relaxed);
    }

    /// One connection's life; `Ok` names the way it left, `Err` what went wrong.
    async fn cycle(
        &self,
        source: Option<std::net::IpAddr>,
        leave: Leave,
        stats: &RefCell<ThreadStats>,
    ) -> Result<&'static str, String> {
        let started = now_ns();
        let open = async {
            let mut stream = raw::connect(&self.target, source, None).await?;
            let leftover = raw::upgrade(&mut stream, &self.target).await?;
            Ok::<_, String>((stream, leftover))
        };
        let (mut stream, leftover) = tokio::time::timeout(self.args.connect_timeout, open)
            .await
            .unwrap_or_else(|_| Err("connect: no upgrade in time".into()))?;
        let connected = now_ns();
        {
            let mut st = stats.borrow_mut();
            st.connected += 1;
            st.connects.add(Duration::from_nanos(connected.saturating_sub(self.start)));
            st.connect_us.0.saturating_record(((connected - started) / 1000).max(1));
        }
        self.live.connected.fetch_add(1, Relaxed);
        let mut frames = raw::Frames::new(leftover);
        let hold = self.args.hold.mul_f64(rand::random::<f64>());
        let hold_end = Instant::now() + hold;
        loop {
            match frames.next(&mut stream, hold_end).await? {
                Next::Data | Next::Control => {}
                Next::Timeout => break,
                other => return Err(format!("closed by the server while held: {other:?}")),
            }
        }
        let deadline = Instant::now() + self.args.close_timeout;
        match leave {
            Leave::Reset => {
                raw::reset(stream);
                Ok("reset")
            }
            Leave::Fin => {
                stream.shutdown().await.map_err(|e| crate::conn::describe("shutdown", &e))?;
                match raw::until_eof(&mut stream, deadline).await {
                    Next::Eof | Next::Reset => Ok("fin, server closed"),
                    _ => Err("fin: the server did not close its side in time".into()),
                }
            }
            Leave::CloseHandshake => {
                stream
                    .write_all(&raw::close_frame(1000, "churn"))
                    .await
                    .map_err(|e| crate::conn::describe("close", &e))?;
                match frames.until_close(&mut stream, deadline).await? {
                    Next::Close(Some(1000)) => {}
                    Next::Close(code) => return Err(format!("close handshake: the server answered code {code:?}")),
                    Next::Timeout => return Err("close handshake: no close frame in time".into()),
                    other => return Err(format!("close handshake: no close frame ({other:?})")),
                }
                match raw::until_eof(&mut stream, deadline).await {
                    Next::Eof => Ok("close handshake"),
                    Next::Reset => Ok("close handshake, then reset"),
                    _ => Err("close handshake: the server did not close the TCP connection in time".into()),
                }
            }
        }
    }
}

/// The report as text.
pub fn human(r: &ChurnReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "churn against {} for {:.0} s at {:.0}/s", r.url, r.duration_s, r.rate);
    let _ = writeln!(
        out,
        "  {} launched, {} upgraded ({:.0}/s), {} left as expected ({:.0} closes/s), {} failed",
        r.launched, r.connected, r.connects_per_s, r.completed, r.closes_per_s, r.failure_count
    );
    for (way, n) in &r.ok {
        let _ = writeln!(out, "    {n:>8} × {way}");
    }
    for (kind, n) in &r.failures {
        let _ = writeln!(out, "    {n:>8} × FAILED: {kind}");
    }
    let _ = writeln!(
        out,
        "  connect + upgrade: p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms",
        r.connect_ms.p50, r.connect_ms.p99, r.connect_ms.max
    );
    let _ = writeln!(out, "{}", r.verdict);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ways_out_follow_the_shares() {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrap {
            #[command(flatten)]
            args: ChurnArgs,
        }
        let args = Wrap::parse_from(["x", "ws://127.0.0.1:1/", "--reset-share", "0.3", "--fin-share", "0.2"]).args;
        let job = Job {
            target: Target::parse("ws://127.0.0.1:1/").unwrap(),
            sources: Vec::new(),
            args,
            index: 0,
            threads: 1,
            start: 0,
            live: Arc::default(),
        };
        let ways: Vec<Leave> = (0..100).map(|i| job.leave_for(i)).collect();
        assert_eq!(ways.iter().filter(|&&w| w == Leave::Reset).count(), 30);
        assert_eq!(ways.iter().filter(|&&w| w == Leave::Fin).count(), 20);
        assert_eq!(ways.iter().filter(|&&w| w == Leave::CloseHandshake).count(), 50);
        assert_ne!(ways[0..3], [Leave::Reset; 3], "neighbours differ");
    }
}
