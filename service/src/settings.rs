//! Command-line flags and the TOML config file: the same keys, flags win.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use serde::Deserialize;

use crate::auth::mint::TokenArgs;
use crate::auth::rules::ChannelRule;
use crate::auth::settings::{AuthArgs, PresenceArgs};

/// ringcast: a WebSocket fan-out server on io_uring.
#[derive(Debug, Parser)]
#[command(name = "ringcast", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server. With no options: port 8888, one worker per core, plain ws,
    /// broadcast mode (publish on /publish, subscribe on /).
    Serve(Box<ServeArgs>),
    /// Print a signed JWT for `--jwt-secret` (or a private key): a connection token, or
    /// with --channel a subscription token. For trying the service out; real tokens
    /// come from your own login service.
    Token(Box<TokenArgs>),
}

/// What the service does with messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Publishers (publish path, or POST /publish) fan out to every subscriber (main path).
    #[default]
    Broadcast,
    /// Every client message goes to all other clients (a chat relay).
    Relay,
    /// Topics: clients send JSON {"op":"subscribe"|"unsubscribe"|"publish","topic":..,"data":..}.
    Pubsub,
    /// Every message comes back to its sender (for echo benchmarks and conformance).
    Echo,
}

impl Mode {
    /// The mode's name as the flag spells it.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Broadcast => "broadcast",
            Mode::Relay => "relay",
            Mode::Pubsub => "pubsub",
            Mode::Echo => "echo",
        }
    }
}

/// What to do with a client whose send queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SlowConsumer {
    /// Drop new messages for that client until it catches up (counted in /metrics).
    #[default]
    Drop,
    /// Close the client with 1008 (counted in /metrics).
    Disconnect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// io_uring where available, else epoll (RINGCAST_IO=epoll forces epoll).
    #[default]
    Auto,
    /// io_uring or fail.
    #[value(name = "io_uring")]
    IoUring,
    /// epoll.
    Epoll,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `ringcast serve` settings. Every flag can also be set in the TOML file given with
/// `--config`, under the same name with underscores (e.g. `send_queue_limit = 1048576`);
/// a flag on the command line overrides the file.
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (flags override it).
    #[arg(short, long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Address to bind [default: 0.0.0.0].
    #[arg(long, value_name = "IP")]
    pub bind: Option<IpAddr>,

    /// Port to listen on [default: 8888].
    #[arg(short, long)]
    pub port: Option<u16>,

    /// Let several ringcast processes listen on this port together (SO_REUSEPORT across
    /// processes; the kernel spreads connections over them), e.g. nodes of one --cluster.
    /// Without it, a port already in use is an error [default: false].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub share_port: Option<bool>,

    /// Worker threads, each with its own io_uring, listener and connection table
    /// [default: one per core].
    #[arg(short, long)]
    pub workers: Option<usize>,

    /// What the service does with messages [default: broadcast].
    #[arg(short, long, value_enum)]
    pub mode: Option<Mode>,

    /// WebSocket path for clients/subscribers; other paths get 404 [default: /].
    #[arg(long, value_name = "PATH")]
    pub path: Option<String>,

    /// Broadcast mode: WebSocket path for publishers, also `POST <path>` over HTTP
    /// [default: /publish].
    #[arg(long, value_name = "PATH")]
    pub publish_path: Option<String>,

    /// Require this token from publishers: `?token=...` or `Authorization: Bearer ...`.
    /// Missing → 401, wrong → 403. Without it anyone may publish.
    #[arg(long, value_name = "TOKEN", env = "RINGCAST_PUBLISH_TOKEN", hide_env_values = true)]
    pub publish_token: Option<String>,

    /// Split every outgoing message into frames of at most this many bytes, frame header
    /// included (minimum 3). Without it each message is one frame.
    #[arg(long, value_name = "BYTES")]
    pub split_frame_size: Option<usize>,

    /// Negotiate permessage-deflate (RFC 7692) with clients that offer it, as every
    /// browser does. Each broadcast is compressed once, whatever the number of subscribers
    /// [default: true].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub permessage_deflate: Option<bool>,

    /// Compression level of permessage-deflate, 1 (fastest) to 9 (smallest) [default: 6].
    #[arg(long, value_name = "LEVEL", value_parser = clap::value_parser!(u8).range(1..=9))]
    pub deflate_level: Option<u8>,

    /// Messages shorter than this go uncompressed even to clients that negotiated
    /// permessage-deflate [default: 256].
    #[arg(long, value_name = "BYTES")]
    pub deflate_min_size: Option<usize>,

    /// Largest frame accepted from a client; larger closes it with 1009 [default: 1048576].
    #[arg(long, value_name = "BYTES")]
    pub max_frame_size: Option<usize>,

    /// Largest message accepted from a client; larger closes it with 1009 [default: 1048576:
    /// subscribers send little, and publishers of larger messages raise it].
    #[arg(long, value_name = "BYTES")]
    pub max_message_size: Option<usize>,

    /// Budget for incomplete input on the whole server: bytes held for messages, frames
    /// and request heads still arriving. Past it, the connections holding the most are
    /// closed with 1009 (counted in ringcast_input_budget_closes_total) [default: 268435456].
    #[arg(long, value_name = "BYTES")]
    pub max_buffered_input: Option<usize>,

    /// Unsent bytes allowed per client before the slow-consumer policy applies
    /// [default: 1048576].
    #[arg(long, value_name = "BYTES")]
    pub send_queue_limit: Option<usize>,

    /// Cap on each connection's kernel send buffer (SO_SNDBUF). A client that never reads
    /// holds this in the kernel besides --send-queue-limit in the server, and the
    /// slow-consumer policy engages only once both are full [default: the kernel's
    /// autotuning, up to net.ipv4.tcp_wmem's maximum].
    #[arg(long, value_name = "BYTES")]
    pub send_buffer: Option<usize>,

    /// Slow-consumer policy: drop new messages for that client, or disconnect it with
    /// close 1008 [default: drop].
    #[arg(long, value_enum)]
    pub slow_consumer: Option<SlowConsumer>,

    /// Most simultaneous connections; more are refused [default: unlimited, bounded by
    /// the open-file limit].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,

    /// Time allowed from TCP accept to a complete upgrade request [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub handshake_timeout: Option<Duration>,

    /// Ping clients silent this long; drop them if silent for another period [default: off].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub idle_timeout: Option<Duration>,

    /// Time to wait for close replies (and, at shutdown, for clients to drain) [default: 2s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub close_timeout: Option<Duration>,

    /// TLS certificate chain (PEM). With --tls-key, serves wss://.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM: PKCS#8, RSA or EC).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Root/intermediate CA certificates (PEM) appended to the served chain.
    #[arg(long, value_name = "FILE")]
    pub tls_root: Option<PathBuf>,

    /// I/O backend [default: auto].
    #[arg(long, value_enum)]
    pub io: Option<Backend>,

    /// Serve the operator's dashboard at GET /: live charts of connections, messages,
    /// bytes, publish-to-write latency and slow consumers, the workers, the busiest topics
    /// and the cluster backbone, fed every second over the WebSocket /_status [default: true].
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set)]
    pub status_page: Option<bool>,

    /// Protect the dashboard (GET / and its feed /_status) with this token: open it as
    /// /?token=TOKEN, or send `Authorization: Bearer TOKEN`. Missing → 401, wrong → 403.
    /// /metrics and /healthz stay open. Without it anyone who reaches the port can see
    /// the dashboard.
    #[arg(long, value_name = "TOKEN", env = "RINGCAST_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Log format [default: text]. The level comes from RUST_LOG (default info).
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,

    /// Join a cluster of ringcast nodes through Redis pub/sub, e.g. redis://127.0.0.1:6379.
    /// With history on, the history lives in Redis (Streams) and offsets are assigned
    /// there, so a client recovers on any node.
    #[arg(long, value_name = "URL")]
    pub cluster: Option<String>,

    /// Messages of history kept per stream (each pub/sub topic, the broadcast stream) for
    /// clients that reconnect; 0 turns history off (no offsets in deliveries) [default: 1000].
    #[arg(long, value_name = "N")]
    pub history_size: Option<usize>,

    /// Forget history older than this [default: 5m].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub history_ttl: Option<Duration>,

    /// Memory cap of the history over all streams, per node [default: 67108864].
    #[arg(long, value_name = "BYTES")]
    pub history_memory: Option<usize>,

    /// Connection tokens (`[auth]` in the config file).
    #[command(flatten)]
    #[serde(default)]
    pub auth: AuthArgs,

    /// Presence (`[presence]` in the config file).
    #[command(flatten)]
    #[serde(default)]
    pub presence: PresenceArgs,

    /// Channel rules: `[[channels]]` tables in the config file only (pattern, subscribe,
    /// publish, presence, join_leave; see the README).
    #[arg(skip)]
    #[serde(default)]
    pub channels: Vec<ChannelRule>,
}

/// Durations in the TOML file are written like the flags: "10s", "500ms".
mod humantime_serde_opt {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        text.map(|t| humantime::parse_duration(&t).map_err(serde::de::Error::custom)).transpose()
    }
}

impl ServeArgs {
    /// Fills every setting not given on the command line from `file`.
    pub fn or(self, file: ServeArgs) -> ServeArgs {
        ServeArgs {
            config: self.config,
            bind: self.bind.or(file.bind),
            port: self.port.or(file.port),
            share_port: self.share_port.or(file.share_port),
            workers: self.workers.or(file.workers),
            mode: self.mode.or(file.mode),
            path: self.path.or(file.path),
            publish_path: self.publish_path.or(file.publish_path),
            publish_token: self.publish_token.or(file.publish_token),
            split_frame_size: self.split_frame_size.or(file.split_frame_size),
            permessage_deflate: self.permessage_deflate.or(file.permessage_deflate),
            deflate_level: self.deflate_level.or(file.deflate_level),
            deflate_min_size: self.deflate_min_size.or(file.deflate_min_size),
            max_frame_size: self.max_frame_size.or(file.max_frame_size),
            max_message_size: self.max_message_size.or(file.max_message_size),
            max_buffered_input: self.max_buffered_input.or(file.max_buffered_input),
            send_queue_limit: self.send_queue_limit.or(file.send_queue_limit),
            send_buffer: self.send_buffer.or(file.send_buffer),
            slow_consumer: self.slow_consumer.or(file.slow_consumer),
            max_connections: self.max_connections.or(file.max_connections),
            handshake_timeout: self.handshake_timeout.or(file.handshake_timeout),
            idle_timeout: self.idle_timeout.or(file.idle_timeout),
            close_timeout: self.close_timeout.or(file.close_timeout),
            tls_cert: self.tls_cert.or(file.tls_cert),
            tls_key: self.tls_key.or(file.tls_key),
            tls_root: self.tls_root.or(file.tls_root),
            io: self.io.or(file.io),
            status_page: self.status_page.or(file.status_page),
            admin_token: self.admin_token.or(file.admin_token),
            log_format: self.log_format.or(file.log_format),
            cluster: self.cluster.or(file.cluster),
            history_size: self.history_size.or(file.history_size),
            history_ttl: self.history_ttl.or(file.history_ttl),
            history_memory: self.history_memory.or(file.history_memory),
            auth: self.auth.or(file.auth),
            presence: self.presence.or(file.presence),
            channels: if self.channels.is_empty() { file.channels } else { self.channels },
        }
    }

    /// The command-line settings over those of the `--config` file, if any.
    pub fn resolve(self) -> Result<ServeArgs, String> {
        let Some(path) = self.config.clone() else { return Ok(self) };
        Ok(self.or(load_file(&path)?))
    }
}

fn load_file(path: &Path) -> Result<ServeArgs, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("config file {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> ServeArgs {
        let cli = Cli::try_parse_from([&["ringcast", "serve"], args].concat()).unwrap();
        let Command::Serve(serve) = cli.command else { panic!("not serve") };
        *serve
    }

    #[test]
    fn the_sample_config_file_parses() {
        let sample: ServeArgs =
            toml::from_str(include_str!("../../deploy/ringcast.toml")).expect("deploy/ringcast.toml");
        assert_eq!(sample.permessage_deflate, Some(true));
        assert_eq!(sample.deflate_level, Some(6));
    }

    #[test]
    fn flags_override_the_file() {
        let file: ServeArgs = toml::from_str(
            "port = 9000\nmode = \"pubsub\"\nsend_queue_limit = 4096\nidle_timeout = \"30s\"\nsplit_frame_size = 1024\n",
        )
        .unwrap();
        let merged = parse(&["--port", "9100", "--slow-consumer", "disconnect"]).or(file);
        assert_eq!(merged.port, Some(9100));
        assert_eq!(merged.mode, Some(Mode::Pubsub));
        assert_eq!(merged.send_queue_limit, Some(4096));
        assert_eq!(merged.idle_timeout, Some(Duration::from_secs(30)));
        assert_eq!(merged.slow_consumer, Some(SlowConsumer::Disconnect));
        assert_eq!(merged.split_frame_size, Some(1024));
    }

    #[test]
    fn unknown_file_keys_are_errors() {
        assert!(toml::from_str::<ServeArgs>("prot = 1").is_err());
    }

    #[test]
    fn no_arguments_is_valid() {
        let args = parse(&[]);
        assert_eq!(args.port, None);
        assert_eq!(args.mode, None);
    }
}
