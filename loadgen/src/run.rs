//! The coordinator of one run: plans processes and source addresses, connects the
//! clients, drives the publisher and the phases, samples /proc, and builds the report.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::mpsc;
use std::time::Duration;

use crate::cli::{BroadcastArgs, CommonArgs, EchoArgs, IdleArgs, ReconnectArgs};
use crate::clock::{now_ns, secs, sleep_until};
use crate::conn::{Target, TlsOptions};
use crate::group::{GroupConfig, Phase, ProgressSnapshot, ReconnectPlan, Scenario};
use crate::procfs::{self, BoxCpu};
use crate::progress::Progress;
use crate::publisher::{Publisher, PublisherResult};
use crate::report::{ConnectSummary, Percentiles, ReconnectReport, RunReport, ServerMetrics, curve};
use crate::stats::GroupResult;
use crate::worker::{Group, ProgressReader};

/// Descriptors kept free in every process for everything but client sockets.
const FD_RESERVE: u64 = 256;
/// Ephemeral ports of one source address left unused by `--source-addrs auto`
/// (for the publisher, TIME_WAIT leftovers of earlier runs, other programs).
const PORT_MARGIN: u64 = 3_000;

/// What a scenario asks of the coordinator.
struct Spec {
    scenario: Scenario,
    /// Broadcast: messages of the warm-up (set once the rate is known).
    warmup_messages: u64,
    payload: usize,
    /// Broadcast: publisher messages/s; echo: per-client messages/s.
    rate: f64,
    rate_rule: String,
    warmup: Duration,
    duration: Duration,
    drain: Duration,
    publish_path: Option<String>,
    reconnect: Option<ReconnectPlan>,
}

/// `reconnect`
pub fn reconnect(args: &ReconnectArgs) -> Result<RunReport, String> {
    if !(0.0..=1.0).contains(&args.fraction) {
        return Err(format!("--fraction {}: a share from 0 to 1", args.fraction));
    }
    let with_offsets = |url: &str| if url.contains('?') { url.to_owned() } else { format!("{url}?offsets=1") };
    let urls = args.reconnect_urls.iter().map(|u| Target::parse(&with_offsets(u))).collect::<Result<Vec<_>, _>>()?;
    let spread = args.spread_urls.iter().map(|u| Target::parse(&with_offsets(u))).collect::<Result<Vec<_>, _>>()?;
    let plan = ReconnectPlan {
        fraction: args.fraction,
        every_ns: args.every.as_nanos().max(1) as u64,
        away_ns: args.away.as_nanos() as u64,
        urls,
        spread,
        failover: args.failover,
    };
    if args.broadcast.common.deflate || args.broadcast.common.payload_kind != crate::wire::PayloadKind::Binary {
        return Err(
            "reconnect reads the binary history envelope: --deflate and --payload-kind json do not apply".into()
        );
    }
    let mut broadcast = args.broadcast.clone();
    broadcast.common.url = with_offsets(&broadcast.common.url);
    let (scenario, reconnect) = (Scenario::Reconnect, Some(plan));
    broadcast_like(&broadcast, scenario, reconnect)
}

/// `broadcast`
pub fn broadcast(args: &BroadcastArgs) -> Result<RunReport, String> {
    broadcast_like(args, Scenario::Broadcast, None)
}

fn broadcast_like(
    args: &BroadcastArgs,
    scenario: Scenario,
    reconnect: Option<ReconnectPlan>,
) -> Result<RunReport, String> {
    let clients = args.common.clients.max(1) as f64;
    let (rate, rate_rule) = if args.rate == "auto" {
        let by_deliveries = args.max_deliveries / clients;
        let by_bytes = args.max_mbps * 1e6 / (clients * args.payload as f64);
        let rule = format!(
            "auto: min({} deliveries/s ÷ clients, {} MB/s ÷ (clients × payload))",
            args.max_deliveries, args.max_mbps
        );
        (by_deliveries.min(by_bytes), rule)
    } else {
        let rate: f64 = args.rate.parse().map_err(|_| format!("--rate {:?}: a number or auto", args.rate))?;
        (rate, "--rate".to_owned())
    };
    if !(rate > 0.0 && rate.is_finite()) {
        return Err(format!("publish rate {rate} must be positive"));
    }
    run(
        &args.common,
        Spec {
            scenario,
            warmup_messages: (args.warmup.as_secs_f64() * rate).ceil() as u64,
            payload: args.payload,
            rate,
            rate_rule,
            warmup: args.warmup,
            duration: args.duration,
            drain: args.drain,
            publish_path: Some(args.publish_path.clone()),
            reconnect,
        },
    )
}

/// `echo`
pub fn echo(args: &EchoArgs) -> Result<RunReport, String> {
    let rule = if args.rate > 0.0 { "--rate per client".into() } else { "unpaced closed loop".into() };
    run(
        &args.common,
        Spec {
            scenario: Scenario::Echo,
            warmup_messages: 0,
            payload: args.payload,
            rate: args.rate.max(0.0),
            rate_rule: rule,
            warmup: args.warmup,
            duration: args.duration,
            drain: args.drain,
            publish_path: None,
            reconnect: None,
        },
    )
}

/// `idle`
pub fn idle(args: &IdleArgs) -> Result<RunReport, String> {
    run(
        &args.common,
        Spec {
            scenario: Scenario::Idle,
            warmup_messages: 0,
            payload: crate::wire::STAMP_LEN,
            rate: 0.0,
            rate_rule: String::new(),
            warmup: Duration::ZERO,
            duration: args.duration,
            drain: Duration::ZERO,
            publish_path: None,
            reconnect: None,
        },
    )
}

/// Parses `--source-addrs`: addresses and inclusive IPv4 ranges, comma-separated.
pub fn parse_sources(text: &str) -> Result<Vec<IpAddr>, String> {
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if let Some((a, b)) = item.split_once('-') {
            let bad = || format!("--source-addrs: bad range {item:?}");
            let a: Ipv4Addr = a.trim().parse().map_err(|_| bad())?;
            let b: Ipv4Addr = b.trim().parse().map_err(|_| bad())?;
            if u32::from(b) < u32::from(a) || u32::from(b) - u32::from(a) > 65_535 {
                return Err(bad());
            }
            out.extend((u32::from(a)..=u32::from(b)).map(|n| IpAddr::V4(Ipv4Addr::from(n))));
        } else {
            out.push(item.parse().map_err(|_| format!("--source-addrs: bad address {item:?}"))?);
        }
    }
    Ok(out)
}

/// The source addresses for `clients` connections to `target`.
fn plan_sources(text: &str, clients: u64, target: &Target, notes: &mut Vec<String>) -> Result<Vec<IpAddr>, String> {
    let ports = procfs::ephemeral_ports();
    let per_address = ports.saturating_sub(PORT_MARGIN).max(1000);
    if text != "auto" {
        let sources = parse_sources(text)?;
        if clients > per_address * sources.len().max(1) as u64 {
            notes.push(format!(
                "warning: {clients} clients over {} source address(es) with {ports} ephemeral ports each may run out of ports",
                sources.len().max(1)
            ));
        }
        return Ok(sources);
    }
    if clients <= per_address {
        return Ok(Vec::new());
    }
    let needed = clients.div_ceil(per_address);
    match target.addr.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => {
            let sources: Vec<IpAddr> =
                (1..=needed as u32).map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i as u8))).collect();
            notes.push(format!(
                "{clients} clients need more than one source address's {ports} ephemeral ports: binding them to 127.0.0.1–127.0.0.{needed} with IP_BIND_ADDRESS_NO_PORT"
            ));
            Ok(sources)
        }
        _ => {
            notes.push(format!(
                "warning: {clients} clients exceed one source address's {ports} ephemeral ports; give --source-addrs with addresses of this machine"
            ));
            Ok(Vec::new())
        }
    }
}

pub(crate) fn raise_file_limit(notes: &mut Vec<String>) -> u64 {
    let before = rlimit::getrlimit(rlimit::Resource::NOFILE).map(|(soft, _)| soft).unwrap_or(1024);
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(now) if now > before => {
            notes.push(format!("open-file limit: soft limit raised from {before} to the hard limit {now}"));
            now
        }
        Ok(now) => now,
        Err(e) => {
            notes.push(format!("warning: cannot raise the open-file limit ({e}); it stays at {before}"));
            before
        }
    }
}

/// Reads /proc/PID of the server (if any) and of the load generator's processes.
struct Sample {
    at: u64,
    server: Option<procfs::ProcSample>,
    loadgen_cpu: f64,
    machine: BoxCpu,
}

fn sample(server: Option<u32>, workers: &[u32]) -> Sample {
    let own = procfs::sample(std::process::id()).map(|s| s.cpu_s).unwrap_or(0.0);
    let workers: f64 = workers.iter().filter_map(|&pid| procfs::sample(pid).ok()).map(|s| s.cpu_s).sum();
    Sample {
        at: now_ns(),
        server: server.and_then(|pid| procfs::sample(pid).ok()),
        loadgen_cpu: own + workers,
        machine: BoxCpu::now(),
    }
}

fn run(common: &CommonArgs, spec: Spec) -> Result<RunReport, String> {
    let mut notes = Vec::new();
    let kind = common.payload_kind;
    if spec.scenario != Scenario::Idle && spec.payload < kind.min_len() {
        return Err(format!(
            "--payload {}: {} messages are at least {} bytes",
            spec.payload,
            kind.name(),
            kind.min_len()
        ));
    }
    let target = Target::parse(&common.url)?;
    let tls_options = TlsOptions { ca_file: common.ca_file.clone(), insecure: common.insecure };
    let clients = common.clients.max(1);
    let open_files = raise_file_limit(&mut notes);
    let per_process = common.clients_per_proc.unwrap_or(open_files.saturating_sub(FD_RESERVE) as usize).max(1);
    let procs = common.procs.unwrap_or(clients.div_ceil(per_process)).max(1);
    if clients.div_ceil(procs) > per_process {
        return Err(format!(
            "{clients} clients in {procs} process(es) exceed {per_process} clients per process (open-file limit {open_files}); use more --procs"
        ));
    }
    let in_process = procs == 1;
    if !in_process {
        notes.push(format!(
            "{clients} clients spread over {procs} worker processes (at most {per_process} per process; open-file limit {open_files})"
        ));
    }
    let sources = plan_sources(&common.source_addrs, clients as u64, &target, &mut notes)?;
    let threads = common.threads.unwrap_or(1).max(1);
    let mut progress = Progress::new(common.progress);
    for note in &notes {
        progress.note(note);
    }

    let server_before =
        common.server_pid.map(|pid| procfs::sample(pid).map_err(|e| format!("--server-pid {pid}: {e}")));
    let server_before = server_before.transpose()?;

    // Broadcast: connect the publisher first, so that a wrong URL fails fast.
    let (planned, warmup_messages) = match spec.scenario {
        Scenario::Broadcast | Scenario::Reconnect => {
            (((spec.warmup + spec.duration).as_secs_f64() * spec.rate).ceil().max(1.0) as u64, spec.warmup_messages)
        }
        _ => (0, 0),
    };
    let publisher = match &spec.publish_path {
        Some(path) => {
            let tls = if target.tls { Some(tls_options.client_config()?) } else { None };
            let publish = target.with_path(path);
            Some(Publisher::connect(&publish, tls).map_err(|e| format!("publisher {}: {e}", publish.url()))?)
        }
        None => None,
    };

    let base = GroupConfig {
        scenario: spec.scenario,
        target: target.clone(),
        tls: tls_options,
        clients: 0,
        first_client: 0,
        total_clients: clients,
        sources: sources.clone(),
        connect_rate: common.connect_rate / procs as f64,
        max_pending: (common.max_pending / procs).max(1),
        connect_timeout_ms: common.connect_timeout.as_millis() as u64,
        threads,
        payload: spec.payload,
        echo_rate: if spec.scenario == Scenario::Echo { spec.rate } else { 0.0 },
        warmup_ns: spec.warmup.as_nanos() as u64,
        duration_ns: spec.duration.as_nanos() as u64,
        drain_ns: spec.drain.as_nanos() as u64,
        planned_messages: planned,
        warmup_messages,
        deflate: common.deflate,
        payload_kind: common.payload_kind,
        reconnect: spec.reconnect.clone(),
        subscribe: common.subscribe.clone(),
    };
    let mut groups = Vec::new();
    let mut first = 0;
    for p in 0..procs {
        let count = clients / procs + usize::from(p < clients % procs);
        let config = GroupConfig { clients: count, first_client: first, ..base.clone() };
        first += count;
        groups.push(Group::start(config, in_process)?);
    }
    let worker_pids: Vec<u32> = groups.iter().filter_map(Group::pid).collect();
    let total = |groups: &[Group]| {
        let mut s = ProgressSnapshot::default();
        for g in groups {
            s.add(&g.progress());
        }
        s
    };

    // Connect.
    progress.phase("connect", clients as u64, "clients");
    let connect_start = now_ns();
    let connect_bound = connect_start
        + ((clients as f64 / common.connect_rate.max(1.0)) * 1e9) as u64
        + common.connect_timeout.as_nanos() as u64 * 2
        + 10_000_000_000;
    loop {
        let s = total(&groups);
        let rate = s.connected as f64 / secs(connect_start, now_ns()).max(1e-3);
        progress.update(s.connected + s.failed, format!("{:.0}/s, {} failed", rate, s.failed));
        if s.connected + s.failed >= clients as u64 {
            break;
        }
        if now_ns() > connect_bound {
            progress.note("connecting takes too long: going on with the clients connected so far");
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    progress.finish();
    let connected_now = total(&groups).connected;
    let server_connected = common.server_pid.and_then(|pid| procfs::sample(pid).ok());
    if connected_now == 0 {
        for g in &groups {
            g.set_phase(Phase::Stop);
        }
        let mut merged = GroupResult::default();
        for g in groups {
            merged.merge(&g.wait());
        }
        let errors: Vec<String> = merged.errors.iter().map(|(k, v)| format!("{v} × {k}")).collect();
        return Err(format!("no client could connect to {}: {}", target.url(), errors.join("; ")));
    }

    // Run.
    let t0 = now_ns() + 100_000_000;
    for g in &groups {
        g.set_phase(Phase::Run { t0 });
    }
    let publisher_thread = publisher.map(|p| p.start(t0, spec.rate, planned, spec.payload, common.payload_kind));
    // Broadcast: the measured window starts at the first measured message's scheduled time.
    let window_start = match spec.scenario {
        Scenario::Broadcast | Scenario::Reconnect => t0 + (warmup_messages as f64 * 1e9 / spec.rate) as u64,
        _ => t0 + spec.warmup.as_nanos() as u64,
    };
    let run_len = spec.warmup + spec.duration;
    progress.phase("run", run_len.as_millis() as u64, "ms");
    let mut start_sample = None;
    let mut publisher_result = None;
    let mut kept_publisher = None;
    let run_end = t0 + run_len.as_nanos() as u64;
    loop {
        let now = now_ns();
        if start_sample.is_none() && now >= window_start {
            start_sample = Some(sample(common.server_pid, &worker_pids));
        }
        let s = total(&groups);
        progress.update(
            secs(t0, now).clamp(0.0, run_len.as_secs_f64()) as u64 * 1000 + (secs(t0, now).fract() * 1000.0) as u64,
            format!("{} delivered, {:.1} MB", s.received, s.bytes as f64 / 1e6),
        );
        let publisher_done = publisher_thread.as_ref().is_none_or(|t| t.is_finished());
        if now >= run_end && publisher_done && start_sample.is_some() {
            break;
        }
        let next = if start_sample.is_none() { window_start.min(now + 50_000_000) } else { now + 50_000_000 };
        sleep_until(next);
    }
    if let Some(thread) = publisher_thread {
        let (result, publisher) = thread.join().map_err(|_| "the publisher thread panicked".to_owned())?;
        kept_publisher = Some(publisher);
        publisher_result = Some(result);
    }
    let sent = publisher_result.as_ref().map_or(0, |r| r.sent);
    if matches!(spec.scenario, Scenario::Broadcast | Scenario::Reconnect) {
        let deadline = now_ns() + spec.drain.as_nanos() as u64;
        for g in &groups {
            g.set_phase(Phase::Drain { sent, deadline });
        }
    }
    progress.phase("drain", clients as u64, "clients done");

    // Results.
    let readers: Vec<ProgressReader> = groups.iter().map(Group::progress_reader).collect();
    let (tx, rx) = mpsc::channel();
    let group_count = groups.len();
    for g in groups {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let _ = tx.send(g.wait());
        });
    }
    drop(tx);
    let mut merged = GroupResult::default();
    let mut received = 0;
    while received < group_count {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(r) => {
                merged.merge(&r);
                received += 1;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let mut s = ProgressSnapshot::default();
                for r in &readers {
                    s.add(&r.read());
                }
                progress.update(s.settled, format!("{} delivered", s.received));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    // Worker processes have exited by now: their CPU time comes with their results.
    let mut end_sample = sample(common.server_pid, &[]);
    end_sample.loadgen_cpu += merged.process_cpu_s;
    progress.finish();
    drop(kept_publisher);
    let start_sample = start_sample.unwrap_or_else(|| sample(common.server_pid, &[]));
    Ok(build_report(
        common,
        &spec,
        Built {
            target,
            sources,
            procs,
            threads,
            open_files,
            merged,
            publisher: publisher_result,
            sent,
            window_start,
            start_sample,
            end_sample,
            server_before,
            server_connected,
            notes,
        },
    ))
}

struct Built {
    target: Target,
    sources: Vec<IpAddr>,
    procs: usize,
    threads: usize,
    open_files: u64,
    merged: GroupResult,
    publisher: Option<PublisherResult>,
    sent: u64,
    window_start: u64,
    start_sample: Sample,
    end_sample: Sample,
    server_before: Option<procfs::ProcSample>,
    server_connected: Option<procfs::ProcSample>,
    notes: Vec<String>,
}

fn build_report(common: &CommonArgs, spec: &Spec, b: Built) -> RunReport {
    let m = &b.merged;
    let clients = common.clients.max(1) as u64;
    let (sent, expected) = match spec.scenario {
        Scenario::Broadcast | Scenario::Reconnect => (b.sent, b.sent * m.connected),
        Scenario::Echo => (m.sent_by_clients, m.sent_by_clients),
        Scenario::Idle => (0, 0),
    };
    let delivered = m.distinct;
    let lost = expected.saturating_sub(delivered);
    let window_s = match spec.scenario {
        // The measured messages' send span, or longer if the deliveries took longer.
        Scenario::Broadcast | Scenario::Reconnect => {
            let span = b.sent.saturating_sub(spec.warmup_messages) as f64 / spec.rate;
            span.max(secs(b.window_start, m.last_recv_ns))
        }
        Scenario::Echo => spec.duration.as_secs_f64(),
        Scenario::Idle => 0.0,
    };
    let per_s = |v: u64| if window_s > 0.0 { v as f64 / window_s } else { 0.0 };
    let offered_per_s = match spec.scenario {
        Scenario::Broadcast | Scenario::Reconnect => spec.rate * m.connected as f64,
        Scenario::Echo => spec.rate * m.connected as f64,
        Scenario::Idle => 0.0,
    };
    let cpu_window_s = secs(b.start_sample.at, b.end_sample.at);
    let server_metrics = common.server_pid.map(|pid| {
        let cpu_s = match (b.start_sample.server, b.end_sample.server) {
            (Some(a), Some(z)) => (z.cpu_s - a.cpu_s).max(0.0),
            _ => 0.0,
        };
        let rss_before = b.server_before.map_or(0, |s| s.rss);
        let rss_connected = b.server_connected.map_or(0, |s| s.rss);
        ServerMetrics {
            pid,
            cpu_s,
            cpu_window_s,
            cpu_s_per_million: (m.measured > 0 && spec.scenario != Scenario::Idle)
                .then(|| cpu_s / m.measured as f64 * 1e6),
            cpu_pct: if cpu_window_s > 0.0 { 100.0 * cpu_s / cpu_window_s } else { 0.0 },
            rss_before_mb: rss_before as f64 / 1e6,
            rss_connected_mb: rss_connected as f64 / 1e6,
            rss_per_connection: (m.connected > 0 && rss_connected > 0)
                .then(|| (rss_connected as f64 - rss_before as f64) / m.connected as f64),
        }
    });
    let error_count: u64 = m.errors.values().sum();
    let mut failures = Vec::new();
    if lost > 0 {
        failures.push(format!(
            "{lost} messages lost ({} clients affected, up to {} each)",
            m.clients_with_loss, m.max_client_loss
        ));
    }
    if m.connect_failed > 0 || m.connected < clients {
        failures.push(format!("{} of {clients} clients not connected", clients - m.connected.min(clients)));
    }
    if m.disconnects > 0 {
        failures.push(format!("{} clients disconnected", m.disconnects));
    }
    if let Some(e) = b.publisher.as_ref().and_then(|p| p.error.clone()) {
        failures.push(format!("publisher: {e}"));
    }
    if let Some(plan) = &spec.reconnect {
        if m.duplicates > 0 {
            failures.push(format!("{} messages duplicated", m.duplicates));
        }
        if m.recoveries_incomplete > 0 {
            failures
                .push(format!("{} of {} reconnections not recovered in full", m.recoveries_incomplete, m.reconnects));
        }
        if m.offset_gaps > 0 {
            failures.push(format!("{} gaps in the offsets", m.offset_gaps));
        }
        if plan.fraction > 0.0 && m.reconnects == 0 {
            failures.push("no client reconnected (is the run longer than --every?)".into());
        }
    }
    if error_count > 0 && failures.is_empty() {
        failures.push(format!("{error_count} errors"));
    }
    let passed = failures.is_empty();
    let latency_method = match spec.scenario {
        Scenario::Broadcast | Scenario::Reconnect => {
            "each message's scheduled send time (open loop, corrected for coordinated omission) to its last byte's arrival".into()
        }
        Scenario::Echo if spec.rate > 0.0 => {
            "send to echo, closed loop paced per client; HdrHistogram record_correct with the pacing interval".into()
        }
        Scenario::Echo => "send to echo, unpaced closed loop (not corrected: there is no intended rate)".into(),
        Scenario::Idle => "–".into(),
    };
    let connect_elapsed = secs(m.connect_first_ns, m.connect_last_ns);
    let loadgen_cpu_s = (b.end_sample.loadgen_cpu - b.start_sample.loadgen_cpu).max(0.0);
    let other_cpu_pct = if cpu_window_s > 0.0 {
        let ours = loadgen_cpu_s + server_metrics.as_ref().map_or(0.0, |m| m.cpu_s);
        (100.0 * (b.start_sample.machine.busy_s_until(&b.end_sample.machine) - ours) / cpu_window_s).max(0.0)
    } else {
        0.0
    };
    let mut notes = b.notes;
    if let Some(m) = &server_metrics
        && m.cpu_s == 0.0
        && spec.scenario != Scenario::Idle
    {
        notes.push(format!("warning: process {} used no CPU time in the window: is it the server's PID?", m.pid));
    }
    let reconnect = spec.reconnect.as_ref().map(|plan| ReconnectReport {
        fraction: plan.fraction,
        every_s: plan.every_ns as f64 / 1e9,
        away_s: plan.away_ns as f64 / 1e9,
        reconnect_urls: plan.urls.iter().map(Target::url).collect(),
        clients_reconnecting: m.per_client.len() as u64,
        reconnects: m.reconnects,
        failovers: m.failovers,
        recoveries_complete: m.reconnects - m.recoveries_incomplete.min(m.reconnects),
        recoveries_incomplete: m.recoveries_incomplete,
        recovered_messages: m.replayed,
        offset_gaps: m.offset_gaps,
        epoch_changes: m.epoch_changes,
        recovery_ms: Percentiles::of(&m.recovery),
        max_client_lost: m.per_client.iter().map(|c| c.lost).max().unwrap_or(0),
        max_client_duplicated: m.per_client.iter().map(|c| c.duplicated).max().unwrap_or(0),
        max_client_recovered: m.per_client.iter().map(|c| c.recovered).max().unwrap_or(0),
        per_client: {
            let mut per_client = m.per_client.clone();
            per_client.sort_by_key(|c| c.client);
            per_client
        },
    });
    RunReport {
        reconnect,
        tool: format!("ringcast-loadgen {}", env!("CARGO_PKG_VERSION")),
        scenario: spec.scenario,
        url: b.target.url(),
        server: common.server_name.clone(),
        setting: common.server_setting.clone(),
        clients,
        payload: spec.payload as u64,
        payload_kind: common.payload_kind,
        deflate: common.deflate,
        deflate_connections: m.deflate_connections,
        wire_bytes_per_delivery: if m.measured > 0 { m.measured_bytes as f64 / m.measured as f64 } else { 0.0 },
        rate: spec.rate,
        rate_rule: spec.rate_rule.clone(),
        warmup_s: spec.warmup.as_secs_f64(),
        duration_s: spec.duration.as_secs_f64(),
        drain_s: spec.drain.as_secs_f64(),
        procs: b.procs as u64,
        threads: b.threads as u64,
        sources: b.sources.iter().map(ToString::to_string).collect(),
        open_files: b.open_files,
        connect: ConnectSummary {
            attempted: m.attempted,
            connected: m.connected,
            failed: m.connect_failed,
            elapsed_s: connect_elapsed,
            per_s: if connect_elapsed > 0.0 { m.connected as f64 / connect_elapsed } else { 0.0 },
            time_ms: Percentiles::of(&m.connect),
        },
        sent,
        expected,
        delivered,
        lost,
        duplicates: m.duplicates,
        reordered: m.reordered,
        clients_with_loss: m.clients_with_loss,
        measured: m.measured,
        window_s,
        deliveries_per_s: per_s(m.measured),
        offered_per_s,
        mb_per_s: per_s(m.measured_bytes) / 1e6,
        latency: Percentiles::of(&m.latency),
        latency_method,
        latency_curve: curve(&m.latency),
        latency_hdr: m.latency.clone(),
        publisher_lag: b.publisher.as_ref().map(|p| Percentiles::of(&p.lag)),
        server_metrics,
        loadgen_cpu_s,
        machine_busy_pct: b.start_sample.machine.busy_pct_until(&b.end_sample.machine),
        other_cpu_pct,
        errors: m.errors.clone(),
        error_count,
        passed,
        verdict: if passed { "PASS".into() } else { format!("FAIL: {}", failures.join("; ")) },
        notes,
        machine: procfs::cpu_model(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_lists() {
        let v = parse_sources("127.0.0.2-127.0.0.4, ::1").unwrap();
        assert_eq!(v.len(), 4);
        assert_eq!(v[0].to_string(), "127.0.0.2");
        assert_eq!(v[3].to_string(), "::1");
        assert!(parse_sources("127.0.0.4-127.0.0.2").is_err());
        assert!(parse_sources("x").is_err());
    }
}
