//! Command-line interface.

use std::path::PathBuf;
use std::time::Duration;

use crate::wire::PayloadKind;
use clap::{Args, Parser, Subcommand, ValueEnum};

const ABOUT: &str = "Load generator for WebSocket fan-out servers: thousands of clients, honest latency.";

const LONG_ABOUT: &str = "\
Load generator for WebSocket fan-out servers: opens thousands of ws:// or wss:// clients and
measures delivery latency, throughput, loss and, given the server's PID, the server's CPU time
per delivery and memory per connection.

Scenarios:
  broadcast  one publisher connection (URL path replaced by --publish-path) sends messages at a
             fixed rate, open loop; every client receives every message. Latency is measured
             from each message's *scheduled* send time, so a stalled server or publisher shows
             up in the latency instead of silently slowing the test (no coordinated omission).
  echo       each client sends a message and waits for its echo (closed loop), optionally paced
             per client with --rate (then HdrHistogram's record_correct fills in the samples a
             stalled client missed).
  idle       clients connect and stay idle; reports the server's RSS per connection.
  churn      connections come and go at a fixed rate: connect, upgrade, hold a moment, then
             leave with a close handshake, a bare FIN or a reset (SO_LINGER 0).
  abuse      slow consumers that never read, plus a trickle of misbehaving clients (bad
             frames, invalid UTF-8, oversized frames and headers, partial messages,
             slowloris, garbage); checks that the server answers each as RFC 6455 asks.
  reconnect  broadcast with offsets (ringcast serve's `/?offsets=1` envelope): a --fraction of the
             clients drops its connection every --every for --away and resumes with
             `?since=<offset>&epoch=<epoch>` (to the --reconnect-url nodes in turn); reports
             recovered, lost and duplicated messages per client and the recovery latency.

Every message is binary: u64 sequence number, u64 send time (CLOCK_MONOTONIC ns), filler.
Receivers count loss, duplicates and reordering per client; the run fails (exit status 1) if
any message was lost or any client failed to connect or was disconnected.

Scale: the open-file soft limit is raised to the hard limit at start. Past the ephemeral port
range of one source address (net.ipv4.ip_local_port_range) clients are bound to several source
addresses (127.0.0.1, 127.0.0.2, ... for a loopback server) with IP_BIND_ADDRESS_NO_PORT; past
the open-file limit they are spread over worker processes whose histograms are merged.

Output: a table on stdout; --out DIR writes result.json, result.csv, result.md and latency.svg
(or pick files with --json/--csv/--md/--svg). `ringcast-loadgen report` merges many result.json
files into tables, ratios and plots.";

const EXAMPLES: &str = "\
Examples:
  # ringcast in broadcast mode, 10,000 subscribers, 1 KiB messages, rate chosen automatically
  ringcast serve --port 8888 &
  ringcast-loadgen broadcast ws://127.0.0.1:8888/ --clients 10000 --payload 1KiB \\
      --server-pid $(pgrep -n ringcast) --out results/try

  # echo: 1,000 clients, each sending 100 messages/s
  ringcast serve --port 8889 --mode echo &
  ringcast-loadgen echo ws://127.0.0.1:8889/ -c 1000 --rate 100 --duration 10s

  # memory per idle connection
  ringcast-loadgen idle ws://127.0.0.1:8888/ -c 10000 --server-pid $(pgrep -n ringcast)

  # 10,000 subscribers at 10 msg/s, 10% dropping every 3 s for 1 s, resuming on another node
  ringcast-loadgen reconnect ws://127.0.0.1:8888/ -c 10000 --rate 10 --fraction 0.1 --every 3s \\
      --away 1s --reconnect-url ws://127.0.0.1:8889/

  # tables and plots from many runs
  ringcast-loadgen report --out results/run results/run/*/result.json";

/// The command line.
#[derive(Debug, Parser)]
#[command(name = "ringcast-loadgen", version, about = ABOUT, long_about = LONG_ABOUT, after_long_help = EXAMPLES)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// A publisher sends at a fixed rate (open loop); every client receives every message.
    Broadcast(BroadcastArgs),
    /// Each client sends and awaits its echo (closed loop, optionally paced).
    Echo(EchoArgs),
    /// Clients connect and stay idle; reports the server's memory per connection.
    Idle(IdleArgs),
    /// Connections come and go at a fixed rate (close handshake, FIN or reset).
    Churn(crate::churn::ChurnArgs),
    /// Slow consumers that never read and a trickle of misbehaving clients.
    Abuse(crate::abuse::AbuseArgs),
    /// Broadcast with offsets; a fraction of the clients reconnects and resumes.
    Reconnect(ReconnectArgs),
    /// Merges result.json files of several runs into tables, ratios and plots.
    Report(ReportArgs),
    /// Internal: a worker process of a multi-process run.
    #[command(name = "__worker", hide = true)]
    Worker,
}

/// How progress is shown on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    /// A progress bar on a terminal, a line per phase otherwise.
    Auto,
    /// Always the progress bar.
    Bar,
    /// A line per phase.
    Plain,
    /// Nothing.
    None,
}

/// Options of every scenario.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Server URL: ws://HOST:PORT/PATH or wss://HOST:PORT/PATH.
    pub url: String,

    /// Number of clients.
    #[arg(short, long, default_value_t = 1000)]
    pub clients: usize,

    /// New connections per second (0: as fast as possible).
    #[arg(long, value_name = "PER_SECOND", default_value_t = 5000.0)]
    pub connect_rate: f64,

    /// Connection attempts in flight at most.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub max_pending: usize,

    /// Bound on one connection's TCP connect, TLS and upgrade.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,

    /// Source addresses to bind clients to, round-robin: "auto", or a list of addresses and
    /// ranges such as 127.0.0.2-127.0.0.9,127.0.1.1. "auto" uses the kernel's choice until one
    /// address's ephemeral ports would run out, then 127.0.0.1, 127.0.0.2, … for a loopback server.
    #[arg(long, value_name = "LIST", default_value = "auto")]
    pub source_addrs: String,

    /// Worker processes [default: as many as the open-file limit requires; 1 runs the
    /// clients in this process].
    #[arg(long, value_name = "N")]
    pub procs: Option<usize>,

    /// Most clients per process [default: the open-file limit less 256].
    #[arg(long, value_name = "N")]
    pub clients_per_proc: Option<usize>,

    /// Client threads per process, each with its own event loop [default: 1].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,

    /// Offer permessage-deflate (RFC 7692) the way browsers do. Compressed deliveries are
    /// counted by their bytes on the wire, and only their first bytes (the stamp) are
    /// inflated, so the load generator spends its CPU on reading, not inflating.
    #[arg(long)]
    pub deflate: bool,

    /// What the messages look like: binary (stamp and a repeating filler) or json (text
    /// quote updates, compressible as real feed data is; use it with --deflate).
    #[arg(long, value_enum, default_value_t = PayloadKind::Binary)]
    pub payload_kind: PayloadKind,

    /// wss://: extra root certificates (PEM).
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,

    /// wss://: accept any server certificate (self-signed test servers).
    #[arg(long)]
    pub insecure: bool,

    /// After its upgrade each client sends this text message (e.g. a pub/sub subscribe,
    /// {"op":"subscribe","topic":"bench"}) and counts as connected once a text message
    /// comes back; the connect time includes that round trip. Text messages are never
    /// taken for stamped ones.
    #[arg(long, value_name = "TEXT")]
    pub subscribe: Option<String>,

    /// The server's PID: reports its CPU seconds per million deliveries and RSS per
    /// connection from /proc.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,

    /// Name of the server, for reports (e.g. ringcast, tokio-tungstenite).
    #[arg(long, value_name = "NAME", default_value = "server")]
    pub server_name: String,

    /// The server's setting under test, for reports (e.g. "split 4 KiB").
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub server_setting: String,

    /// Write result.json, result.csv, result.md and latency.svg into this directory.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// Write the JSON result here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Write a CSV header and row here.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,

    /// Write a Markdown table here.
    #[arg(long, value_name = "FILE")]
    pub md: Option<PathBuf>,

    /// Write the latency percentile plot (SVG) here.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,

    /// Progress display on stderr.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
}

/// `broadcast`
#[derive(Debug, Clone, Args)]
pub struct BroadcastArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Message size in bytes (at least 16), e.g. 64, 1KiB, 64KiB.
    #[arg(short, long, value_name = "SIZE", default_value = "1KiB", value_parser = parse_size)]
    pub payload: usize,

    /// Messages per second from the publisher, or "auto": the lower of
    /// --max-deliveries / clients and --max-mbps / (clients × payload).
    #[arg(short, long, value_name = "PER_SECOND|auto", default_value = "auto")]
    pub rate: String,

    /// For --rate auto: deliveries per second to aim at.
    #[arg(long, value_name = "N", default_value_t = 200_000.0)]
    pub max_deliveries: f64,

    /// For --rate auto: delivered payload megabytes (10^6) per second to aim at.
    #[arg(long, value_name = "MB_PER_S", default_value_t = 400.0)]
    pub max_mbps: f64,

    /// The publisher's path (the URL's host and port are kept).
    #[arg(long, value_name = "PATH", default_value = "/publish")]
    pub publish_path: String,

    /// Sending before the measured window (counted for loss, not for latency).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,

    /// The measured window.
    #[arg(short, long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub duration: Duration,

    /// Longest wait for the last deliveries after the last send; what has not arrived
    /// then is lost.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain: Duration,
}

/// `echo`
#[derive(Debug, Clone, Args)]
pub struct EchoArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Message size in bytes (at least 16).
    #[arg(short, long, value_name = "SIZE", default_value = "64", value_parser = parse_size)]
    pub payload: usize,

    /// Messages per second per client (0: send the next one as soon as the echo arrives).
    #[arg(short, long, value_name = "PER_SECOND", default_value_t = 0.0)]
    pub rate: f64,

    /// Running before the measured window.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,

    /// The measured window.
    #[arg(short, long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub duration: Duration,

    /// Longest wait for outstanding echoes after the window.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain: Duration,
}

/// `reconnect`
#[derive(Debug, Clone, Args)]
pub struct ReconnectArgs {
    /// The publisher, the rate, the payload and the timing, as for `broadcast`. The
    /// subscribers' URL gets `?offsets=1` unless it has a query already.
    #[command(flatten)]
    pub broadcast: BroadcastArgs,

    /// Share of the clients that reconnect (0 to 1).
    #[arg(long, value_name = "SHARE", default_value_t = 0.1)]
    pub fraction: f64,

    /// Time a reconnecting client stays connected between two disconnections.
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = humantime::parse_duration)]
    pub every: Duration,

    /// Time a client stays away before it reconnects.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    pub away: Duration,

    /// Where reconnections go, in turn (repeatable; e.g. another node of a cluster)
    /// [default: the first URL].
    #[arg(long = "reconnect-url", value_name = "URL")]
    pub reconnect_urls: Vec<String>,

    /// More URLs for the first connections (repeatable): client i connects to the i-th of
    /// the URL and these, in turn (e.g. every node of a cluster; the publisher stays on the
    /// first URL's node).
    #[arg(long = "spread-url", value_name = "URL")]
    pub spread_urls: Vec<String>,

    /// A connection the server ends or that fails (a node killed, say) is resumed like a
    /// planned reconnection, after --away, on the --reconnect-url nodes in turn (the next
    /// one if one refuses), instead of counting as a disconnection. From then on the
    /// client's deliveries count for loss but not for the delivery latency, which is then
    /// that of the clients whose node stayed up (their recovery has its own latency).
    #[arg(long)]
    pub failover: bool,
}

/// `idle`
#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// How long to hold the connections once all are open.
    #[arg(short, long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
}

/// `report`
#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// Directory for report.json, report.csv, report.md and the figures: latency.svg,
    /// throughput.svg, cpu.svg, frame-size.svg (the subject's settings), offered.svg.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// Title of report.md.
    #[arg(long, default_value = "Broadcast benchmark")]
    pub title: String,

    /// The server compared with every other (`--server-name` of its runs).
    #[arg(long, default_value = "ringcast")]
    pub subject: String,

    /// result.json files of single runs.
    #[arg(required = true, value_name = "RESULT_JSON")]
    pub inputs: Vec<PathBuf>,

    /// A run of the offered-load sweep (repeatable): the same clients and payload at
    /// several publish rates per server, plotted as delivered against offered deliveries/s
    /// (offered.svg) and tabled in report.md.
    #[arg(long = "offered-load", value_name = "RESULT_JSON")]
    pub offered_load: Vec<PathBuf>,
}

/// Parses `64`, `1KiB`, `1k`, `16KiB`, `1MiB`, `1m` (binary multiples).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim().to_ascii_lowercase();
    let (number, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: usize = number.parse().map_err(|_| format!("{text:?} is not a size (e.g. 64, 1KiB, 64KiB)"))?;
    let multiplier = match unit.trim() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        other => return Err(format!("unknown size unit {other:?} (use B, KiB or MiB)")),
    };
    let size = n * multiplier;
    if size < crate::wire::STAMP_LEN {
        return Err(format!("{size} bytes is too small: messages carry a 16-byte sequence number and timestamp"));
    }
    Ok(size)
}

/// `1024` → "1 KiB", `64` → "64 B".
pub fn format_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64"), Ok(64));
        assert_eq!(parse_size("1KiB"), Ok(1024));
        assert_eq!(parse_size("16k"), Ok(16384));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert!(parse_size("8").is_err());
        assert!(parse_size("1 GB").is_err());
        assert_eq!(format_size(65536), "64 KiB");
        assert_eq!(format_size(64), "64 B");
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
