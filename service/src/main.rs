//! `ringcast serve`: the fan-out service. See `ringcast serve --help`.
#![forbid(unsafe_code)]

mod access;
mod auth;
mod cluster;
mod dashboard;
mod metrics;
mod presence;
mod service;
mod settings;
mod topics;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use ringcast::{IoBackend, Server, ServerHandle, SlowConsumerPolicy, TlsFiles};
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
    let (cluster, backbone) = match &args.cluster {
        Some(url) => {
            let always = match mode {
                Mode::Broadcast => vec![Scope::Broadcast],
                Mode::Relay => vec![Scope::Relay],
                Mode::Pubsub | Mode::Echo => vec![],
            };
            let (cluster, backbone) = cluster::connect(url, &always, topics.clone())?;
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
        access,
    };
    let server = builder(&args)?.start(service)?;
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

fn normalize(path: &str) -> String {
    if path.starts_with('/') { path.to_owned() } else { format!("/{path}") }
}

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
    if let Some(bytes) = args.max_frame_size {
        builder = builder.max_frame_size(bytes);
    }
    if let Some(bytes) = args.max_message_size {
        builder = builder.max_message_size(bytes);
    }
    if let Some(bytes) = args.send_queue_limit {
        builder = builder.send_queue_limit(bytes);
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
