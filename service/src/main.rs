//! `ringcast serve`: the fan-out service. See `ringcast serve --help`.
#![forbid(unsafe_code)]

mod access;
mod auth;
mod cluster;
mod dashboard;
mod history;
mod metrics;
mod presence;
mod redis_history;
mod service;
mod settings;
mod topics;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use ringcast::{CompressionLevel, IoBackend, Server, ServerDeflateConfig, ServerHandle, SlowConsumerPolicy, TlsFiles};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use cluster::Scope;
use dashboard::Dashboard;
use metrics::ServiceCounters;
use service::Service;
use settings::{Backend, Cli, Command, LogFormat, Mode, ServeArgs, SlowConsumer};
use topics::TopicCounts;

fn main() -> ExitCode {
    let args = match Cli::parse().command {
        Command::Serve(args) => args,
        Command::Token(args) => {
            return match auth::mint::mint(&args) {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ringcast token: {e}");
                    ExitCode::from(2)
                }
            };
        }
    };
    let args = match args.resolve() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("ringcast: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(args.log_format.unwrap_or_default());
    match serve(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn serve(args: ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    raise_file_limit();
    let mode = args.mode.unwrap_or_default();
    let status_page = args.status_page.unwrap_or(true);
    let topics = Arc::new(TopicCounts::default());
    let history = history_config(&args);
    let (cluster, backbone) = match &args.cluster {
        Some(url) => {
            let always = match mode {
                Mode::Broadcast => vec![Scope::Broadcast],
                Mode::Relay => vec![Scope::Relay],
                Mode::Pubsub | Mode::Echo => vec![],
            };
            let in_redis = history.is_enabled().then(|| redis_history::RedisHistory {
                max_messages: history.messages(),
                ttl_ms: history.age().as_millis() as u64,
            });
            let (cluster, backbone) = cluster::connect(url, &always, topics.clone(), in_redis)?;
            (Some(cluster), Some(backbone))
        }
        None => (None, None),
    };
    let auth = auth::Auth::new(&args.auth, args.channels.clone())?;
    auth.log_at_start();
    let presence = match &args.cluster {
        Some(url) => {
            let (presence, backbone) =
                presence::Presence::clustered(url, args.presence.ttl.unwrap_or(presence::DEFAULT_TTL))?;
            (presence, Some(backbone))
        }
        None => (presence::Presence::local(), None),
    };
    let (access, access_start) = access::AccessControl::new(auth, presence, args.admin_token.clone());
    let service = Service {
        mode,
        path: normalize(args.path.as_deref().unwrap_or("/")),
        publish_path: normalize(args.publish_path.as_deref().unwrap_or("/publish")),
        token: args.publish_token.clone(),
        dashboard: status_page.then(|| Dashboard::new(args.admin_token.clone())),
        counters: ServiceCounters::default(),
        topics,
        cluster,
        history: (history.is_enabled() && matches!(mode, Mode::Broadcast | Mode::Pubsub))
            .then(|| history::StreamHistory::new(history)),
        access,
    };
    let server = builder(&args)?.history(history).start(service)?;
    access_start.start(&server)?;
    if let Some(backbone) = backbone {
        let (broadcaster, service) = (server.broadcaster(), server.handler().clone());
        backbone.start(move |inbound| service.deliver_from_cluster(&broadcaster, inbound))?;
    }
    tracing::info!(
        addr = %server.local_addr(),
        ?mode,
        workers = server.backends().len(),
        backends = ?server.backends(),
        "ringcast started"
    );
    if status_page {
        dashboard::start_feed(server.broadcaster(), server.handler().clone())?;
    }
    wait_for_signal(&server)?;
    tracing::info!("stopping: closing every connection with 1001");
    let started = Instant::now();
    server.stop();
    tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "ringcast stopped");
    Ok(())
}

/// `--history-size`, `--history-ttl`, `--history-memory`: on with modest bounds.
fn history_config(args: &ServeArgs) -> ringcast::HistoryConfig {
    let defaults = ringcast::HistoryConfig::new();
    ringcast::HistoryConfig::new()
        .max_messages(args.history_size.unwrap_or(defaults.messages()))
        .max_age(args.history_ttl.unwrap_or(defaults.age()))
        .max_bytes(args.history_memory.unwrap_or(defaults.bytes()))
}

fn normalize(path: &str) -> String {
    if path.starts_with('/') { path.to_owned() } else { format!("/{path}") }
}

/// The service's default limit on one client message (and frame): 1 MiB. A fan-out
/// service's subscribers send little; the library's 16 MiB default suits an echo server.
const DEFAULT_MAX_MESSAGE_SIZE: usize = 1 << 20;

fn builder(args: &ServeArgs) -> Result<ringcast::ServerBuilder, Box<dyn std::error::Error>> {
    let mut builder = Server::builder()
        .port(args.port.unwrap_or(ringcast::DEFAULT_PORT))
        .split_messages(args.split_frame_size)?
        .slow_consumer(match args.slow_consumer.unwrap_or_default() {
            SlowConsumer::Drop => SlowConsumerPolicy::DropNew,
            SlowConsumer::Disconnect => SlowConsumerPolicy::Disconnect,
        })
        .io_backend(match args.io.unwrap_or_default() {
            Backend::Auto => IoBackend::Auto,
            Backend::IoUring => IoBackend::IoUring,
            Backend::Epoll => IoBackend::Epoll,
        })
        .idle_timeout(args.idle_timeout)
        .share_port(args.share_port.unwrap_or(false));
    if let Some(bind) = args.bind {
        builder = builder.bind(bind);
    }
    if let Some(workers) = args.workers {
        builder = builder.workers(workers);
    }
    builder = builder.max_frame_size(args.max_frame_size.unwrap_or(DEFAULT_MAX_MESSAGE_SIZE));
    if args.permessage_deflate.unwrap_or(true) {
        let mut deflate = ServerDeflateConfig::new();
        if let Some(level) = args.deflate_level {
            deflate = deflate.level(CompressionLevel::new(level).ok_or("--deflate-level must be 1 to 9")?);
        }
        if let Some(bytes) = args.deflate_min_size {
            deflate = deflate.min_message_size(bytes);
        }
        builder = builder.permessage_deflate(deflate);
    }
    builder = builder.max_message_size(args.max_message_size.unwrap_or(DEFAULT_MAX_MESSAGE_SIZE));
    if let Some(bytes) = args.max_buffered_input {
        builder = builder.max_buffered_input(bytes);
    }
    if let Some(bytes) = args.send_queue_limit {
        builder = builder.send_queue_limit(bytes);
    }
    if let Some(bytes) = args.send_buffer {
        builder = builder.socket_send_buffer(bytes);
    }
    if let Some(max) = args.max_connections {
        builder = builder.max_connections(max);
    }
    if let Some(timeout) = args.handshake_timeout {
        builder = builder.handshake_timeout(timeout);
    }
    if let Some(timeout) = args.close_timeout {
        builder = builder.close_timeout(timeout);
    }
    if let (Some(certificate), Some(private_key)) = (&args.tls_cert, &args.tls_key) {
        builder = builder.tls(TlsFiles {
            certificate: certificate.clone(),
            private_key: private_key.clone(),
            root_certificate: args.tls_root.clone(),
        });
    }
    Ok(builder)
}

/// Raises the open-file soft limit to the hard limit: each connection is a descriptor.
fn raise_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(
            open_files = limit,
            "open-file limit raised to the hard limit: room for about {} connections",
            limit.saturating_sub(64)
        ),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
}

fn wait_for_signal(server: &ServerHandle<Service>) -> std::io::Result<()> {
    let mut signals = Signals::new([SIGTERM, SIGINT])?;
    if let Some(signal) = signals.forever().next() {
        let name = if signal == SIGTERM { "SIGTERM" } else { "SIGINT" };
        tracing::info!(signal = name, connections = server.stats().total_connections(), "signal received");
    }
    Ok(())
}
