//! A run's report: the human table, JSON, CSV and Markdown; and the `report` subcommand
//! that merges many runs into comparison tables and plots.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::cli::format_size;
use crate::group::Scenario;
use crate::stats::Hist;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest value.
    pub max: f64,
    /// Mean.
    pub mean: f64,
    /// Samples.
    pub count: u64,
}

impl Percentiles {
    /// From a histogram of microseconds.
    pub fn of(h: &Hist) -> Percentiles {
        let ms = |q| h.ms(q).unwrap_or(0.0);
        Percentiles {
            p50: ms(0.5),
            p90: ms(0.9),
            p99: ms(0.99),
            p999: ms(0.999),
            max: h.0.max() as f64 / 1000.0,
            mean: h.0.mean() / 1000.0,
            count: h.0.len(),
        }
    }
}

/// Connection set-up.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConnectSummary {
    /// Attempts.
    pub attempted: u64,
    /// Upgrades completed.
    pub connected: u64,
    /// Attempts failed.
    pub failed: u64,
    /// From the first attempt to the last upgrade, seconds.
    pub elapsed_s: f64,
    /// Connections per second achieved.
    pub per_s: f64,
    /// Time from TCP connect to the `101`, per connection, ms.
    pub time_ms: Percentiles,
}

/// The server's resource use, from /proc/PID.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServerMetrics {
    /// The PID.
    pub pid: u32,
    /// CPU seconds (user + system, all threads) in the measured window.
    pub cpu_s: f64,
    /// Length of that window, seconds.
    pub cpu_window_s: f64,
    /// `cpu_s` per million deliveries (echo: per million echoes).
    pub cpu_s_per_million: Option<f64>,
    /// Average cores busy in the window (100 = one core).
    pub cpu_pct: f64,
    /// RSS before the clients connected, MB (10^6 bytes).
    pub rss_before_mb: f64,
    /// RSS with every client connected, MB.
    pub rss_connected_mb: f64,
    /// (connected − before) / clients, bytes.
    pub rss_per_connection: Option<f64>,
}

/// Everything one run measured. Written as result.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    /// The tool and its version.
    pub tool: String,
    /// broadcast, echo or idle.
    pub scenario: Scenario,
    /// Subscriber / client URL.
    pub url: String,
    /// The server's name (`--server-name`).
    pub server: String,
    /// The server's setting under test (`--server-setting`).
    pub setting: String,
    /// Clients asked for.
    pub clients: u64,
    /// Message size, bytes.
    pub payload: u64,
    /// What the messages looked like (binary, json).
    #[serde(default)]
    pub payload_kind: crate::wire::PayloadKind,
    /// Whether the clients offered permessage-deflate.
    #[serde(default)]
    pub deflate: bool,
    /// Connections on which the server accepted it.
    #[serde(default)]
    pub deflate_connections: u64,
    /// Measured payload bytes on the wire per delivery (compressed ones as compressed).
    #[serde(default)]
    pub wire_bytes_per_delivery: f64,
    /// Broadcast: publisher messages/s; echo: per-client messages/s (0: unpaced).
    pub rate: f64,
    /// How the rate was chosen.
    pub rate_rule: String,
    /// Warm-up, seconds.
    pub warmup_s: f64,
    /// Measured window as configured, seconds.
    pub duration_s: f64,
    /// Drain bound, seconds.
    pub drain_s: f64,
    /// Processes holding clients (1: this process).
    pub procs: u64,
    /// Client threads per process.
    pub threads: u64,
    /// Source addresses clients were bound to (empty: the kernel's choice).
    pub sources: Vec<String>,
    /// Open-file limit per process after raising the soft limit.
    pub open_files: u64,
    /// Connecting.
    pub connect: ConnectSummary,
    /// Messages sent (by the publisher, or by the echo clients).
    pub sent: u64,
    /// Deliveries that should have happened (broadcast: sent × connected clients).
    pub expected: u64,
    /// Distinct deliveries that happened.
    pub delivered: u64,
    /// expected − delivered.
    pub lost: u64,
    /// Messages received twice or more.
    pub duplicates: u64,
    /// Messages received after a later one.
    pub reordered: u64,
    /// Clients that missed at least one message.
    pub clients_with_loss: u64,
    /// Deliveries in the measured window.
    pub measured: u64,
    /// The measured window as it happened: first measured send to last measured delivery, s.
    pub window_s: f64,
    /// Measured deliveries per second.
    pub deliveries_per_s: f64,
    /// Deliveries per second the configuration asks for (rate × clients).
    pub offered_per_s: f64,
    /// Measured payload megabytes (10^6) per second.
    pub mb_per_s: f64,
    /// Delivery latency, ms.
    pub latency: Percentiles,
    /// How latency is measured.
    pub latency_method: String,
    /// (percentile, ms) points of the latency distribution.
    pub latency_curve: Vec<[f64; 2]>,
    /// The latency histogram (µs), HdrHistogram V2, base64.
    pub latency_hdr: Hist,
    /// Broadcast: how late the publisher's sends started, ms.
    pub publisher_lag: Option<Percentiles>,
    /// From /proc/PID when --server-pid was given.
    pub server_metrics: Option<ServerMetrics>,
    /// CPU seconds of the load generator's processes in the measured window.
    pub loadgen_cpu_s: f64,
    /// Share of the whole machine's CPU time busy in the measured window, %.
    pub machine_busy_pct: f64,
    /// CPU time in the measured window of everything but the server and the load
    /// generator (other processes, interrupt time), in % of one core: how much the run
    /// had to share the machine.
    #[serde(default)]
    pub other_cpu_pct: f64,
    /// Errors by kind (connect failures, disconnects, protocol errors).
    pub errors: BTreeMap<String, u64>,
    /// Sum of `errors`.
    pub error_count: u64,
    /// No loss, no errors.
    pub passed: bool,
    /// One line: PASS, or what failed.
    pub verdict: String,
    /// Remarks made during the run (limits raised, addresses used).
    pub notes: Vec<String>,
    /// CPU model and cores of the machine the run was on.
    #[serde(default)]
    pub machine: String,
    /// The reconnect scenario's own counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconnect: Option<ReconnectReport>,
}

/// What the reconnecting clients of the `reconnect` scenario went through.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReconnectReport {
    /// Share of the clients that reconnected.
    pub fraction: f64,
    /// Time connected between disconnections, s.
    pub every_s: f64,
    /// Time away, s.
    pub away_s: f64,
    /// Where reconnections went (empty: the first URL).
    pub reconnect_urls: Vec<String>,
    /// Clients that reconnected.
    pub clients_reconnecting: u64,
    /// Reconnections made.
    pub reconnects: u64,
    /// Of `reconnects`: resumptions of a failed connection (--failover).
    #[serde(default)]
    pub failovers: u64,
    /// Reconnections the server answered `recovered: true`.
    pub recoveries_complete: u64,
    /// Reconnections answered otherwise.
    pub recoveries_incomplete: u64,
    /// Messages replayed from the history (recovered).
    pub recovered_messages: u64,
    /// Deliveries whose offset did not follow the previous one in the same epoch.
    pub offset_gaps: u64,
    /// Deliveries in another epoch than the previous one.
    pub epoch_changes: u64,
    /// From the start of the reconnection (after the time away) to having every message
    /// up to the position the server's answer named: the recovery latency, ms.
    pub recovery_ms: Percentiles,
    /// The most messages one reconnecting client lost / received twice / recovered.
    pub max_client_lost: u64,
    /// See `max_client_lost`.
    pub max_client_duplicated: u64,
    /// See `max_client_lost`.
    pub max_client_recovered: u64,
    /// Each reconnecting client: reconnections, recovered, lost and duplicated messages.
    pub per_client: Vec<crate::group::ClientRecovery>,
}

impl RunReport {
    /// "ringcast split 4 KiB".
    pub fn setting_label(&self) -> String {
        if self.setting.is_empty() { self.server.clone() } else { format!("{} {}", self.server, self.setting) }
    }

    /// Server CPU seconds per million deliveries, if measured.
    pub fn cpu_per_million(&self) -> Option<f64> {
        self.server_metrics.as_ref().and_then(|m| m.cpu_s_per_million)
    }
}

/// Percentiles at which the latency curve is sampled: 0, then 1 − 10^(−k/10) up to 99.999%.
pub fn curve(h: &Hist) -> Vec<[f64; 2]> {
    if h.0.is_empty() {
        return Vec::new();
    }
    let mut points: Vec<[f64; 2]> =
        (0..=50).map(|k| 1.0 - 10f64.powf(-(k as f64) / 10.0)).map(|q| [q * 100.0, h.ms(q).unwrap_or(0.0)]).collect();
    points.push([100.0, h.0.max() as f64 / 1000.0]);
    points
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn thousands(v: f64) -> String {
    let n = v.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "–".into(), f)
}

/// The human summary: (label, value) rows.
pub fn rows(r: &RunReport) -> Vec<(String, String)> {
    let mut rows = Vec::new();
    let mut row = |k: &str, v: String| rows.push((k.to_owned(), v));
    row("server", format!("{} at {}", r.setting_label(), r.url));
    let what = match r.scenario {
        Scenario::Broadcast => format!(
            "broadcast: 1 publisher × {:.2} msg/s ({}) × {} → {} clients",
            r.rate,
            r.rate_rule,
            format_size(r.payload),
            r.clients
        ),
        Scenario::Echo if r.rate > 0.0 => {
            format!("echo: {} clients × {:.1} msg/s each × {}", r.clients, r.rate, format_size(r.payload))
        }
        Scenario::Echo => format!("echo: {} clients, unpaced closed loop × {}", r.clients, format_size(r.payload)),
        Scenario::Idle => format!("idle: {} clients", r.clients),
        Scenario::Reconnect => format!(
            "reconnect: 1 publisher × {:.2} msg/s × {} → {} clients with offsets",
            r.rate,
            format_size(r.payload),
            r.clients
        ),
    };
    row("scenario", what);
    row("timing", format!("warm-up {:.1} s, measured {:.1} s, drain ≤ {:.1} s", r.warmup_s, r.duration_s, r.drain_s));
    row(
        "load generator",
        format!(
            "{} process(es) × {} thread(s), open-file limit {}, source addresses: {}",
            r.procs,
            r.threads,
            r.open_files,
            if r.sources.is_empty() { "kernel's choice".to_owned() } else { r.sources.join(", ") }
        ),
    );
    let c = &r.connect;
    row(
        "connect",
        format!(
            "{} connected, {} failed in {:.2} s ({}/s); upgrade time p50 {} ms, p99 {} ms, max {} ms",
            c.connected,
            c.failed,
            c.elapsed_s,
            thousands(c.per_s),
            ms(c.time_ms.p50),
            ms(c.time_ms.p99),
            ms(c.time_ms.max)
        ),
    );
    if let Some(x) = &r.reconnect {
        row(
            "reconnecting",
            format!(
                "{} clients ({:.0}%), each every {:.1} s for {:.1} s{}: {} reconnects ({} failovers), {} recovered in full, {} not",
                x.clients_reconnecting,
                x.fraction * 100.0,
                x.every_s,
                x.away_s,
                if x.reconnect_urls.is_empty() {
                    String::new()
                } else {
                    format!(" to {}", x.reconnect_urls.join(", "))
                },
                x.reconnects,
                x.failovers,
                x.recoveries_complete,
                x.recoveries_incomplete
            ),
        );
        row(
            "recovery",
            format!(
                "{} messages replayed; per client at most {} recovered, {} lost, {} duplicated; {} offset gaps, {} epoch changes",
                x.recovered_messages,
                x.max_client_recovered,
                x.max_client_lost,
                x.max_client_duplicated,
                x.offset_gaps,
                x.epoch_changes
            ),
        );
        row(
            "recovery latency",
            format!(
                "p50 {} ms, p90 {} ms, p99 {} ms, max {} ms ({} recoveries; reconnect to caught up, time away excluded)",
                ms(x.recovery_ms.p50),
                ms(x.recovery_ms.p90),
                ms(x.recovery_ms.p99),
                ms(x.recovery_ms.max),
                x.recovery_ms.count
            ),
        );
    }
    if r.scenario != Scenario::Idle {
        row(
            "deliveries",
            format!(
                "{} sent, {} expected, {} delivered: {} lost, {} duplicates, {} reordered",
                r.sent, r.expected, r.delivered, r.lost, r.duplicates, r.reordered
            ),
        );
        row(
            "throughput",
            format!(
                "{} deliveries/s, {:.1} MB/s over {:.2} s{}",
                thousands(r.deliveries_per_s),
                r.mb_per_s,
                r.window_s,
                if r.offered_per_s > 0.0 {
                    format!(" (offered {}/s)", thousands(r.offered_per_s))
                } else {
                    String::new()
                }
            ),
        );
        let l = &r.latency;
        row(
            "latency ms",
            format!(
                "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  ({} samples)",
                ms(l.p50),
                ms(l.p90),
                ms(l.p99),
                ms(l.p999),
                ms(l.max),
                l.count
            ),
        );
        row("measured from", r.latency_method.clone());
    }
    if let Some(lag) = &r.publisher_lag {
        row("publisher lag", format!("p99 {} ms, max {} ms behind schedule", ms(lag.p99), ms(lag.max)));
    }
    if let Some(m) = &r.server_metrics {
        row(
            "server CPU",
            format!(
                "pid {}: {:.2} CPU s in {:.2} s ({:.0}% of a core){}",
                m.pid,
                m.cpu_s,
                m.cpu_window_s,
                m.cpu_pct,
                m.cpu_s_per_million.map(|v| format!(" = {v:.3} CPU s per million deliveries")).unwrap_or_default()
            ),
        );
        row(
            "server memory",
            format!(
                "RSS {:.1} MB before, {:.1} MB connected{}",
                m.rss_before_mb,
                m.rss_connected_mb,
                m.rss_per_connection.map(|v| format!(" = {:.1} KiB per connection", v / 1024.0)).unwrap_or_default()
            ),
        );
    }
    row(
        "machine",
        format!(
            "load generator {:.2} CPU s; all cores {:.0}% busy; other processes and interrupts {:.0}% of a core",
            r.loadgen_cpu_s, r.machine_busy_pct, r.other_cpu_pct
        ),
    );
    if r.errors.is_empty() {
        row("errors", "none".into());
    } else {
        let list: Vec<String> = r.errors.iter().map(|(k, v)| format!("{v} × {k}")).collect();
        row("errors", list.join("; "));
    }
    for note in &r.notes {
        row("note", note.clone());
    }
    row("result", r.verdict.clone());
    rows
}

/// The table printed on stdout.
pub fn human(r: &RunReport) -> String {
    let rows = rows(r);
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in rows {
        let _ = writeln!(out, "  {k:<width$}  {v}");
    }
    out
}

/// A Markdown table of one run.
pub fn markdown(r: &RunReport) -> String {
    let mut out = format!("# ringcast-loadgen {}: {}\n\n| | |\n| --- | --- |\n", r.scenario.name(), r.setting_label());
    for (k, v) in rows(r) {
        let _ = writeln!(out, "| {k} | {} |", v.replace('|', "\\|"));
    }
    out.push_str("\n![latency percentiles](latency.svg)\n");
    out
}

/// CSV columns, one row per run.
pub const CSV_HEADER: &str = "server,setting,scenario,clients,payload,rate,connected,connect_failed,connect_p50_ms,\
connect_p99_ms,sent,expected,delivered,lost,duplicates,reordered,deliveries_per_s,offered_per_s,mb_per_s,p50_ms,\
p90_ms,p99_ms,p999_ms,max_ms,server_cpu_s,server_cpu_s_per_million,server_rss_per_connection,loadgen_cpu_s,\
machine_busy_pct,other_cpu_pct,errors,passed";

/// One CSV row.
pub fn csv_row(r: &RunReport) -> String {
    let m = r.server_metrics.as_ref();
    let o = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.4}"));
    let q = |s: &str| if s.contains([',', '"']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_owned() };
    format!(
        "{},{},{},{},{},{:.3},{},{},{:.3},{:.3},{},{},{},{},{},{},{:.1},{:.1},{:.2},{:.3},{:.3},{:.3},{:.3},{:.3},{},{},{},{:.3},{:.1},{:.1},{},{}",
        q(&r.server),
        q(&r.setting),
        r.scenario.name(),
        r.clients,
        r.payload,
        r.rate,
        r.connect.connected,
        r.connect.failed,
        r.connect.time_ms.p50,
        r.connect.time_ms.p99,
        r.sent,
        r.expected,
        r.delivered,
        r.lost,
        r.duplicates,
        r.reordered,
        r.deliveries_per_s,
        r.offered_per_s,
        r.mb_per_s,
        r.latency.p50,
        r.latency.p90,
        r.latency.p99,
        r.latency.p999,
        r.latency.max,
        o(m.map(|m| m.cpu_s)),
        o(m.and_then(|m| m.cpu_s_per_million)),
        o(m.and_then(|m| m.rss_per_connection)),
        r.loadgen_cpu_s,
        r.machine_busy_pct,
        r.other_cpu_pct,
        r.error_count,
        r.passed
    )
}

/// Writes the outputs asked for.
pub fn write_outputs(r: &RunReport, common: &crate::cli::CommonArgs) -> Result<Vec<String>, String> {
    let mut written = Vec::new();
    let mut write = |path: &Path, text: &str| -> Result<(), String> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        written.push(path.display().to_string());
        Ok(())
    };
    let json = serde_json::to_string_pretty(r).expect("report serialises");
    let csv = format!("{CSV_HEADER}\n{}\n", csv_row(r));
    let md = markdown(r);
    let svg = crate::plot::latency_svg(&format!("{} — latency", r.setting_label()), &[(r.setting_label(), r)])?;
    if let Some(dir) = &common.out {
        write(&dir.join("result.json"), &json)?;
        write(&dir.join("result.csv"), &csv)?;
        write(&dir.join("result.md"), &md)?;
        write(&dir.join("latency.svg"), &svg)?;
    }
    for (path, text) in [(&common.json, &json), (&common.csv, &csv), (&common.md, &md), (&common.svg, &svg)] {
        if let Some(path) = path {
            write(path, text)?;
        }
    }
    Ok(written)
}

/// "1k", "10k", "500".
fn clients_label(n: u64) -> String {
    if n >= 1000 && n % 1000 == 0 { format!("{}k", n / 1000) } else { n.to_string() }
}

fn column_label(clients: u64, payload: u64) -> String {
    format!("{} × {}", clients_label(clients), format_size(payload))
}

/// Runs arranged by setting (rows) and (clients, payload) (columns).
struct Grid<'a> {
    settings: Vec<String>,
    columns: Vec<(u64, u64)>,
    cells: BTreeMap<(String, (u64, u64)), &'a RunReport>,
}

impl<'a> Grid<'a> {
    fn new(runs: &'a [RunReport]) -> Grid<'a> {
        let mut settings: Vec<String> = Vec::new();
        let mut columns: Vec<(u64, u64)> = Vec::new();
        let mut cells = BTreeMap::new();
        for r in runs {
            let label = r.setting_label();
            if !settings.contains(&label) {
                settings.push(label.clone());
            }
            if !columns.contains(&(r.clients, r.payload)) {
                columns.push((r.clients, r.payload));
            }
            cells.insert((label, (r.clients, r.payload)), r);
        }
        columns.sort();
        Grid { settings, columns, cells }
    }

    fn get(&self, setting: &str, column: (u64, u64)) -> Option<&'a RunReport> {
        self.cells.get(&(setting.to_owned(), column)).copied()
    }

    fn table(&self, out: &mut String, corner: &str, cell: impl Fn(&RunReport) -> String) {
        let _ = write!(out, "| {corner} |");
        for &(c, p) in &self.columns {
            let _ = write!(out, " {} |", column_label(c, p));
        }
        out.push_str("\n| --- |");
        out.push_str(&" ---: |".repeat(self.columns.len()));
        out.push('\n');
        for s in &self.settings {
            let _ = write!(out, "| {s} |");
            for &col in &self.columns {
                match self.get(s, col) {
                    Some(r) => {
                        let mark = if r.passed { "" } else { " ⚠" };
                        let _ = write!(out, " {}{mark} |", cell(r));
                    }
                    None => out.push_str(" – |"),
                }
            }
            out.push('\n');
        }
        out.push('\n');
    }
}

fn ratio(a: f64, b: f64) -> String {
    if a > 0.0 && b > 0.0 { format!("{:.2}×", a / b) } else { "–".into() }
}

/// The Markdown of a multi-run report. `subject` is the server compared with the others.
/// `sweep` are the offered-load runs (see [`crate::cli::ReportArgs::offered_load`]);
/// `figures` the (file, caption) of every figure written beside it.
pub fn merged_markdown(
    title: &str,
    runs: &[RunReport],
    sweep: &[RunReport],
    subject: &str,
    figures: &[(&str, &str)],
) -> String {
    let grid = Grid::new(runs);
    let mut out = format!("# {title}\n\n");
    let failed: Vec<&RunReport> = runs.iter().filter(|r| !r.passed).collect();
    let mut rules: Vec<(String, Vec<u64>)> = Vec::new();
    for r in runs {
        match rules.iter_mut().find(|(rule, _)| *rule == r.rate_rule) {
            Some((_, clients)) if clients.contains(&r.clients) => {}
            Some((_, clients)) => clients.push(r.clients),
            None => rules.push((r.rate_rule.clone(), vec![r.clients])),
        }
    }
    let rules: Vec<String> = rules
        .iter()
        .map(|(rule, clients)| {
            let clients: Vec<String> = clients.iter().map(|&c| clients_label(c)).collect();
            format!("{rule} for {} clients", clients.join(", "))
        })
        .collect();
    let _ = writeln!(
        out,
        "{} runs. Cells marked ⚠ lost messages or had errors (see *All runs*). Publish rates: {}.\n",
        runs.len(),
        rules.join("; ")
    );
    out.push_str("## Delivered messages per second\n\n");
    grid.table(&mut out, "setting", |r| thousands(r.deliveries_per_s));
    out.push_str("## p99 latency, ms\n\n");
    grid.table(&mut out, "setting", |r| ms(r.latency.p99));
    out.push_str("## Server CPU seconds per million deliveries\n\n");
    grid.table(&mut out, "setting", |r| opt(r.cpu_per_million(), |v| format!("{v:.2}")));
    out.push_str(
        "## Server RSS per connection, KiB\n\nRSS growth while the clients connected, per client. A server that served an \
         earlier run reuses the memory it freed, so only a fresh server's figure is the full cost (the idle runs of \
         `make bench` measure that).\n\n",
    );
    grid.table(&mut out, "setting", |r| {
        opt(r.server_metrics.as_ref().and_then(|m| m.rss_per_connection), |v| format!("{:.1}", v / 1024.0))
    });

    let subjects: Vec<&String> = grid.settings.iter().filter(|s| grid_server(&grid, s) == subject).collect();
    let baselines: Vec<&String> = grid.settings.iter().filter(|s| grid_server(&grid, s) != subject).collect();
    if !subjects.is_empty() && !baselines.is_empty() {
        let _ = writeln!(
            out,
            "## {subject} ÷ baseline\n\nEach cell: **throughput** ratio (above 1: {subject} delivers more) · **p99** ratio \
             (below 1: {subject} is faster) · **server CPU per delivery** ratio (below 1: {subject} is cheaper). \
             Same clients, payload and publish rate on both sides.\n"
        );
        for base in &baselines {
            let _ = writeln!(out, "### vs {base}\n");
            let _ = write!(out, "| {subject} setting |");
            for &(c, p) in &grid.columns {
                let _ = write!(out, " {} |", column_label(c, p));
            }
            out.push_str("\n| --- |");
            out.push_str(&" ---: |".repeat(grid.columns.len()));
            out.push('\n');
            for s in &subjects {
                let _ = write!(out, "| {s} |");
                for &col in &grid.columns {
                    match (grid.get(s, col), grid.get(base, col)) {
                        (Some(a), Some(b)) => {
                            let cpu = match (a.cpu_per_million(), b.cpu_per_million()) {
                                (Some(x), Some(y)) => ratio(x, y),
                                _ => "–".into(),
                            };
                            let _ = write!(
                                out,
                                " {} · {} · {} |",
                                ratio(a.deliveries_per_s, b.deliveries_per_s),
                                ratio(a.latency.p99, b.latency.p99),
                                cpu
                            );
                        }
                        _ => out.push_str(" – |"),
                    }
                }
                out.push('\n');
            }
            out.push('\n');
        }
    }

    if !sweep.is_empty() {
        offered_load_markdown(&mut out, sweep);
    }
    out.push_str("## Plots\n\n");
    for (file, caption) in figures {
        let _ = writeln!(out, "**{caption}** ([{file}]({file}))\n\n![{caption}]({file})\n");
    }
    out.push_str("## All runs\n\n");
    out.push_str(
        "| server | setting | clients | payload | rate msg/s | deliveries/s | MB/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms \
         | lost | dup | reord | errors | connect p99 ms | server CPU s/M | server CPU % | RSS/conn KiB | loadgen CPU s | machine busy % | other CPU % | result |\n",
    );
    out.push_str(&format!("| --- | --- |{}\n", " ---: |".repeat(21) + " --- |"));
    for r in runs.iter().chain(sweep) {
        let m = r.server_metrics.as_ref();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.2} | {} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.0} | {:.0} | {} |",
            r.server,
            if r.setting.is_empty() { "–" } else { &r.setting },
            r.clients,
            format_size(r.payload),
            r.rate,
            thousands(r.deliveries_per_s),
            r.mb_per_s,
            ms(r.latency.p50),
            ms(r.latency.p90),
            ms(r.latency.p99),
            ms(r.latency.p999),
            ms(r.latency.max),
            r.lost,
            r.duplicates,
            r.reordered,
            r.error_count,
            ms(r.connect.time_ms.p99),
            opt(r.cpu_per_million(), |v| format!("{v:.2}")),
            opt(m.map(|m| m.cpu_pct), |v| format!("{v:.0}")),
            opt(m.and_then(|m| m.rss_per_connection), |v| format!("{:.1}", v / 1024.0)),
            r.loadgen_cpu_s,
            r.machine_busy_pct,
            r.other_cpu_pct,
            r.verdict.replace('|', "/")
        );
    }
    let failed: Vec<&RunReport> = failed.into_iter().chain(sweep.iter().filter(|r| !r.passed)).collect();
    if !failed.is_empty() {
        out.push_str("\n### Failed runs\n\n");
        for r in failed {
            let errors: Vec<String> = r.errors.iter().map(|(k, v)| format!("{v} × {k}")).collect();
            let _ = writeln!(
                out,
                "- {} × {} × {}: {}{}",
                r.setting_label(),
                clients_label(r.clients),
                format_size(r.payload),
                r.verdict,
                if errors.is_empty() { String::new() } else { format!(" — errors: {}", errors.join("; ")) }
            );
        }
    }
    out
}

/// The runs of the offered-load sweep with one (clients, payload).
struct SweepGroup {
    column: (u64, u64),
    settings: Vec<String>,
    /// Offered deliveries/s, ascending.
    offered: Vec<f64>,
}

fn sweep_groups(sweep: &[RunReport]) -> Vec<SweepGroup> {
    let mut groups: Vec<SweepGroup> = Vec::new();
    for r in sweep {
        let column = (r.clients, r.payload);
        let at = match groups.iter().position(|g| g.column == column) {
            Some(i) => i,
            None => {
                groups.push(SweepGroup { column, settings: Vec::new(), offered: Vec::new() });
                groups.len() - 1
            }
        };
        let group = &mut groups[at];
        if !group.settings.contains(&r.setting_label()) {
            group.settings.push(r.setting_label());
        }
        if !group.offered.contains(&r.offered_per_s) {
            group.offered.push(r.offered_per_s);
        }
    }
    for group in &mut groups {
        group.offered.sort_by(f64::total_cmp);
    }
    groups
}

fn offered_load_markdown(out: &mut String, sweep: &[RunReport]) {
    out.push_str(
        "## Throughput against offered load\n\nThe same clients and payload at rising publish rates: each cell is \
         delivered messages/s · p99 latency. Where a server keeps up, delivered equals offered; past its \
         capacity (or the load generator's: it shares the cores) delivered flattens and latency climbs.\n\n",
    );
    for SweepGroup { column: (clients, payload), settings, offered } in sweep_groups(sweep) {
        let _ = writeln!(out, "### {}\n", column_label(clients, payload));
        out.push_str("| offered deliveries/s |");
        for o in &offered {
            let _ = write!(out, " {} |", thousands(*o));
        }
        out.push_str("\n| --- |");
        out.push_str(&" ---: |".repeat(offered.len()));
        out.push('\n');
        for setting in &settings {
            let _ = write!(out, "| {setting} |");
            for o in &offered {
                let run = sweep.iter().find(|r| {
                    (r.clients, r.payload) == (clients, payload)
                        && r.setting_label() == *setting
                        && r.offered_per_s == *o
                });
                match run {
                    Some(r) => {
                        let mark = if r.passed { "" } else { " ⚠" };
                        let _ = write!(out, " {} · {} ms{mark} |", thousands(r.deliveries_per_s), ms(r.latency.p99));
                    }
                    None => out.push_str(" – |"),
                }
            }
            out.push('\n');
        }
        out.push('\n');
    }
}

/// One line per setting over the payloads of `clients`: `value` of each run.
fn per_payload(
    grid: &Grid<'_>,
    settings: &[String],
    clients: u64,
    value: impl Fn(&RunReport) -> Option<f64>,
) -> Series {
    settings
        .iter()
        .map(|s| {
            let pts = grid
                .columns
                .iter()
                .filter(|c| c.0 == clients)
                .filter_map(|&c| grid.get(s, c))
                .filter_map(|r| value(r).map(|v| (r.payload as f64, v)))
                .collect();
            (s.clone(), pts)
        })
        .collect()
}

type Series = Vec<(String, Vec<(f64, f64)>)>;

fn payload_panel(title: String, y_desc: &str, series: Series) -> crate::plot::Panel {
    crate::plot::Panel {
        title,
        x_desc: "payload".into(),
        y_desc: y_desc.into(),
        series,
        ideal: false,
        payload_axis: true,
    }
}

fn grid_server<'a>(grid: &'a Grid<'_>, setting: &str) -> &'a str {
    grid.cells.iter().find(|((s, _), _)| s == setting).map_or("", |(_, r)| r.server.as_str())
}

/// `ringcast-loadgen report`.
pub fn merge_main(args: &crate::cli::ReportArgs) -> Result<(), String> {
    let read = |paths: &[std::path::PathBuf]| -> Result<Vec<RunReport>, String> {
        paths
            .iter()
            .map(|path| {
                let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
                serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
            })
            .collect()
    };
    let runs = read(&args.inputs)?;
    let sweep = read(&args.offered_load)?;
    let grid = Grid::new(&runs);
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let write = |name: &str, text: &str| -> Result<(), String> {
        let path = args.out.join(name);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
    };
    let every_run: Vec<&RunReport> = runs.iter().chain(&sweep).collect();
    write("report.json", &serde_json::to_string_pretty(&every_run).expect("reports serialise"))?;
    let mut csv = format!("{CSV_HEADER}\n");
    for r in &every_run {
        csv.push_str(&csv_row(r));
        csv.push('\n');
    }
    write("report.csv", &csv)?;

    let mut figures: Vec<(&str, &str)> = Vec::new();
    let panels: Vec<(String, Vec<(String, &RunReport)>)> = grid
        .columns
        .iter()
        .map(|&col| {
            let series = grid.settings.iter().filter_map(|s| grid.get(s, col).map(|r| (s.clone(), r))).collect();
            (format!("{} clients × {}", clients_label(col.0), format_size(col.1)), series)
        })
        .collect();
    write("latency.svg", &crate::plot::latency_grid_svg(&panels, &grid.settings)?)?;
    figures.push(("latency.svg", "Latency percentiles, one panel per clients × payload"));

    let mut client_counts: Vec<u64> = grid.columns.iter().map(|c| c.0).collect();
    client_counts.dedup();
    let deliveries = |r: &RunReport| Some(r.deliveries_per_s);
    let p99 = |r: &RunReport| Some(r.latency.p99);
    let mut tput = Vec::new();
    for &clients in &client_counts {
        let c = clients_label(clients);
        tput.push(payload_panel(
            format!("{c} clients: throughput"),
            "delivered messages/s",
            per_payload(&grid, &grid.settings, clients, deliveries),
        ));
    }
    for &clients in &client_counts {
        let c = clients_label(clients);
        tput.push(payload_panel(
            format!("{c} clients: p99 latency"),
            "p99 latency, ms",
            per_payload(&grid, &grid.settings, clients, p99),
        ));
    }
    write("throughput.svg", &crate::plot::panels_svg(&tput, &grid.settings)?)?;
    figures.push(("throughput.svg", "Throughput and p99 latency per payload"));

    let cpu_panels: Vec<_> = client_counts
        .iter()
        .map(|&clients| {
            payload_panel(
                format!("{} clients: server CPU per delivery", clients_label(clients)),
                "server CPU s per million deliveries",
                per_payload(&grid, &grid.settings, clients, RunReport::cpu_per_million),
            )
        })
        .collect();
    if cpu_panels.iter().any(|p| p.series.iter().any(|(_, pts)| !pts.is_empty())) {
        write("cpu.svg", &crate::plot::panels_svg(&cpu_panels, &grid.settings)?)?;
        figures.push(("cpu.svg", "Server CPU per delivery, per payload (lower is cheaper)"));
    }

    // The frame-size comparison: the subject's own settings, nothing else in the way.
    let frame_settings: Vec<String> =
        grid.settings.iter().filter(|s| grid_server(&grid, s) == args.subject).cloned().collect();
    if frame_settings.len() > 1 {
        let mut frame_panels = Vec::new();
        for &clients in &client_counts {
            frame_panels.push(payload_panel(
                format!("{} clients: p99 latency by frame size", clients_label(clients)),
                "p99 latency, ms",
                per_payload(&grid, &frame_settings, clients, p99),
            ));
            frame_panels.push(payload_panel(
                format!("{} clients: server CPU by frame size", clients_label(clients)),
                "server CPU s per million deliveries",
                per_payload(&grid, &frame_settings, clients, RunReport::cpu_per_million),
            ));
        }
        write("frame-size.svg", &crate::plot::panels_svg(&frame_panels, &frame_settings)?)?;
        figures.push(("frame-size.svg", "Frame-size settings compared: p99 latency and server CPU per delivery"));
    }

    if !sweep.is_empty() {
        let mut sweep_settings: Vec<String> = Vec::new();
        let mut offered_panels = Vec::new();
        for SweepGroup { column: (clients, payload), settings, .. } in sweep_groups(&sweep) {
            for s in settings {
                if !sweep_settings.contains(&s) {
                    sweep_settings.push(s);
                }
            }
            let line = |value: fn(&RunReport) -> f64| -> Series {
                sweep_settings
                    .iter()
                    .map(|s| {
                        let mut pts: Vec<(f64, f64)> = sweep
                            .iter()
                            .filter(|r| (r.clients, r.payload) == (clients, payload) && r.setting_label() == *s)
                            .map(|r| (r.offered_per_s, value(r)))
                            .collect();
                        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                        (s.clone(), pts)
                    })
                    .collect()
            };
            let column = column_label(clients, payload);
            offered_panels.push(crate::plot::Panel {
                title: format!("{column}: delivered against offered"),
                x_desc: "offered deliveries/s".into(),
                y_desc: "delivered messages/s".into(),
                series: line(|r| r.deliveries_per_s),
                ideal: true,
                payload_axis: false,
            });
            offered_panels.push(crate::plot::Panel {
                title: format!("{column}: p99 latency against offered"),
                x_desc: "offered deliveries/s".into(),
                y_desc: "p99 latency, ms".into(),
                series: line(|r| r.latency.p99),
                ideal: false,
                payload_axis: false,
            });
        }
        write("offered.svg", &crate::plot::panels_svg(&offered_panels, &sweep_settings)?)?;
        figures.insert(0, ("offered.svg", "Throughput against offered load, per server"));
    }
    write("report.md", &merged_markdown(&args.title, &runs, &sweep, &args.subject, &figures))?;
    eprintln!(
        "ringcast-loadgen: wrote report.json, report.csv, report.md, {} to {} ({} runs{})",
        figures.iter().map(|f| f.0).collect::<Vec<_>>().join(", "),
        args.out.display(),
        runs.len(),
        if sweep.is_empty() { String::new() } else { format!(" + {} offered-load runs", sweep.len()) }
    );
    Ok(())
}
