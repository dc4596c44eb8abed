//! [`Peer`]: one running `peers/ws_peer.py` or `peers/ws_peer.js` process.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value, json};

use crate::event::{Accepted, ConnStatus, CrowdOpen, Drained, Event, Listening, Opened, PeerError, Rejected};
use crate::{Error, paths, scaled};

/// Which peer implementation to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerKind {
    /// `peers/ws_peer.py`: Python `websockets` (asyncio API).
    Python,
    /// `peers/ws_peer.js`: Node `ws`.
    Node,
}

impl PeerKind {
    /// Both kinds, to run one test body against each.
    pub const ALL: [PeerKind; 2] = [PeerKind::Python, PeerKind::Node];

    /// `"python"` or `"node"` (as in the `ready` event).
    pub fn name(self) -> &'static str {
        match self {
            PeerKind::Python => "python",
            PeerKind::Node => "node",
        }
    }
}

impl fmt::Display for PeerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a peer said about itself in its `ready` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// Which implementation.
    pub kind: PeerKind,
    /// `"websockets"` or `"ws"`.
    pub library: String,
    /// Library version.
    pub version: String,
    /// Process id.
    pub pid: u32,
}

/// Options of a client connection (`connect`, `crowd`). All default to off / the
/// peer's default; see `peers/README.md`.
#[derive(Debug, Clone, Default)]
pub struct ConnectOpts {
    /// `Origin` header.
    pub origin: Option<String>,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// Subprotocols to offer (`Sec-WebSocket-Protocol`).
    pub subprotocols: Vec<String>,
    /// PEM file of a root certificate to trust for `wss://`.
    pub ca_file: Option<PathBuf>,
    /// Skip TLS certificate verification.
    pub insecure: bool,
    /// Largest message accepted (bytes); `None`: 64 MiB; `Some(0)`: unlimited.
    pub max_size: Option<u64>,
    /// Offer permessage-deflate.
    pub compression: bool,
    /// Collect messages silently for `drain` instead of reporting each one.
    /// ([`Peer::crowd`] always collects.)
    pub collect: bool,
    /// Do not report `open`/`close`/`ping`/`pong` events. ([`Peer::crowd`] is always quiet.)
    pub quiet: bool,
    /// Report messages as length + SHA-256 ([`Event::Digest`]) instead of data.
    pub digest: bool,
    /// Handshake timeout (peer default 10 s).
    pub open_timeout: Option<Duration>,
    /// `User-Agent` header (Python sends its own by default, Node none).
    pub user_agent: Option<String>,
    /// Crowd only: handshakes in flight at once (peer default 64).
    pub concurrency: Option<usize>,
}

impl ConnectOpts {
    /// Default options.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the `Origin` header.
    pub fn origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = Some(origin.into());
        self
    }
    /// Adds a request header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
    /// Adds an offered subprotocol.
    pub fn subprotocol(mut self, p: impl Into<String>) -> Self {
        self.subprotocols.push(p.into());
        self
    }
    /// Trusts this PEM root for `wss://`.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }
    /// Skips certificate verification.
    pub fn insecure(mut self) -> Self {
        self.insecure = true;
        self
    }
    /// Sets the largest accepted message (`0`: unlimited).
    pub fn max_size(mut self, bytes: u64) -> Self {
        self.max_size = Some(bytes);
        self
    }
    /// Offers permessage-deflate.
    pub fn compression(mut self) -> Self {
        self.compression = true;
        self
    }
    /// Collects messages for [`Peer::drain`].
    pub fn collect(mut self) -> Self {
        self.collect = true;
        self
    }
    /// Suppresses open/close/ping/pong events.
    pub fn quiet(mut self) -> Self {
        self.quiet = true;
        self
    }
    /// Reports messages as digests.
    pub fn digest(mut self) -> Self {
        self.digest = true;
        self
    }

    fn to_json(&self, cmd: &mut Map<String, Value>) {
        if let Some(o) = &self.origin {
            cmd.insert("origin".into(), json!(o));
        }
        if !self.headers.is_empty() {
            cmd.insert("headers".into(), json!(self.headers));
        }
        if !self.subprotocols.is_empty() {
            cmd.insert("subprotocols".into(), json!(self.subprotocols));
        }
        if let Some(f) = &self.ca_file {
            cmd.insert("ca_file".into(), json!(f.to_string_lossy()));
        }
        if self.insecure {
            cmd.insert("insecure".into(), json!(true));
        }
        match self.max_size {
            Some(0) => {
                cmd.insert("max_size".into(), Value::Null);
            }
            Some(n) => {
                cmd.insert("max_size".into(), json!(n));
            }
            None => {}
        }
        if self.compression {
            cmd.insert("compression".into(), json!(true));
        }
        if self.collect {
            cmd.insert("collect".into(), json!(true));
        }
        if self.quiet {
            cmd.insert("quiet".into(), json!(true));
        }
        if self.digest {
            cmd.insert("digest".into(), json!(true));
        }
        if let Some(t) = self.open_timeout {
            cmd.insert("open_timeout".into(), json!(t.as_secs_f64()));
        }
        if let Some(ua) = &self.user_agent {
            cmd.insert("user_agent".into(), json!(ua));
        }
        if let Some(c) = self.concurrency {
            cmd.insert("concurrency".into(), json!(c));
        }
    }
}

/// What a server-mode listener does with incoming messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServerMode {
    /// Echo every message back (text as text, binary as binary).
    #[default]
    Echo,
    /// Send nothing by itself; [`Peer::publish_text`] / [`Peer::publish_binary`] send to
    /// every open connection of the listener.
    BroadcastFromPublish,
    /// Send nothing by itself; the test drives each connection by id.
    Manual,
}

impl ServerMode {
    fn wire(self) -> &'static str {
        match self {
            ServerMode::Echo => "echo",
            ServerMode::BroadcastFromPublish => "broadcast_from_publish",
            ServerMode::Manual => "manual",
        }
    }
}

/// Options of a server-mode listener ([`Peer::listen`]).
#[derive(Debug, Clone, Default)]
pub struct ListenOpts {
    /// Listener name (default `s1`, `s2`, ...); connection ids are `"<name>.<n>"`.
    pub name: Option<String>,
    /// Port (default 0: any free port, reported back).
    pub port: u16,
    /// Bind address (default 127.0.0.1).
    pub host: Option<String>,
    /// Behaviour.
    pub mode: ServerMode,
    /// Serve `wss://` with this certificate chain and key (PEM files).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Supported subprotocols, in preference order; the first one the client offers is chosen.
    pub subprotocols: Vec<String>,
    /// Largest message accepted; `None`: 64 MiB; `Some(0)`: unlimited.
    pub max_size: Option<u64>,
    /// Accept permessage-deflate.
    pub compression: bool,
    /// Collect messages of accepted connections for [`Peer::drain`].
    pub collect: bool,
    /// Do not report `accepted`/`close`/`ping`/`pong` for accepted connections.
    pub quiet: bool,
    /// Refuse every handshake with this HTTP status (reported as [`Event::Rejected`]).
    pub reject_status: Option<u16>,
    /// Body of the refusal.
    pub reject_body: Option<String>,
    /// Extra headers on the 101 response.
    pub response_headers: Vec<(String, String)>,
}

impl ListenOpts {
    /// An echo listener on any port.
    pub fn echo() -> Self {
        Self::default()
    }
    /// A [`ServerMode::BroadcastFromPublish`] listener on any port.
    pub fn broadcast() -> Self {
        ListenOpts { mode: ServerMode::BroadcastFromPublish, ..Self::default() }
    }
    /// A [`ServerMode::Manual`] listener on any port.
    pub fn manual() -> Self {
        ListenOpts { mode: ServerMode::Manual, ..Self::default() }
    }
    /// Names the listener.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
    /// Serves TLS with these PEM files.
    pub fn tls(mut self, cert_file: impl Into<PathBuf>, key_file: impl Into<PathBuf>) -> Self {
        self.tls = Some((cert_file.into(), key_file.into()));
        self
    }
    /// Adds a supported subprotocol.
    pub fn subprotocol(mut self, p: impl Into<String>) -> Self {
        self.subprotocols.push(p.into());
        self
    }
    /// Collects messages for [`Peer::drain`].
    pub fn collect(mut self) -> Self {
        self.collect = true;
        self
    }
    /// Suppresses per-connection events.
    pub fn quiet(mut self) -> Self {
        self.quiet = true;
        self
    }
    /// Refuses every handshake with `status`.
    pub fn reject(mut self, status: u16) -> Self {
        self.reject_status = Some(status);
        self
    }

    fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("cmd".into(), json!("listen"));
        if let Some(n) = &self.name {
            m.insert("name".into(), json!(n));
        }
        m.insert("port".into(), json!(self.port));
        if let Some(h) = &self.host {
            m.insert("host".into(), json!(h));
        }
        m.insert("mode".into(), json!(self.mode.wire()));
        if let Some((c, k)) = &self.tls {
            m.insert("tls".into(), json!({"cert_file": c.to_string_lossy(), "key_file": k.to_string_lossy()}));
        }
        if !self.subprotocols.is_empty() {
            m.insert("subprotocols".into(), json!(self.subprotocols));
        }
        match self.max_size {
            Some(0) => {
                m.insert("max_size".into(), Value::Null);
            }
            Some(n) => {
                m.insert("max_size".into(), json!(n));
            }
            None => {}
        }
        if self.compression {
            m.insert("compression".into(), json!(true));
        }
        if self.collect {
            m.insert("collect".into(), json!(true));
        }
        if self.quiet {
            m.insert("quiet".into(), json!(true));
        }
        if let Some(s) = self.reject_status {
            m.insert("reject_status".into(), json!(s));
        }
        if let Some(b) = &self.reject_body {
            m.insert("reject_body".into(), json!(b));
        }
        if !self.response_headers.is_empty() {
            m.insert("response_headers".into(), json!(self.response_headers));
        }
        m
    }
}

/// A `drain` query: which connections, and what to wait for first.
#[derive(Debug, Clone, Default)]
pub struct Drain {
    id: Option<String>,
    prefix: Option<String>,
    wait_count: Option<usize>,
    wait_total: Option<usize>,
    timeout: Option<Duration>,
    list: bool,
    digest: bool,
    keep: bool,
}

impl Drain {
    /// The connection `id` only.
    pub fn id(id: impl Into<String>) -> Self {
        Drain { id: Some(id.into()), ..Self::default() }
    }
    /// Every connection whose id starts with `prefix` (crowd `"c"` → `c0`..; listener
    /// `"s1"` → use `"s1."`).
    pub fn prefix(prefix: impl Into<String>) -> Self {
        Drain { prefix: Some(prefix.into()), ..Self::default() }
    }
    /// Every connection of the peer.
    pub fn all() -> Self {
        Drain::prefix("")
    }
    /// First wait until every matched connection has collected at least `n` messages
    /// (stops early if a matched connection closes short of it).
    pub fn wait_count(mut self, n: usize) -> Self {
        self.wait_count = Some(n);
        self
    }
    /// First wait until the matched connections have collected `n` messages in all.
    pub fn wait_total(mut self, n: usize) -> Self {
        self.wait_total = Some(n);
        self
    }
    /// Bound of the wait (default 10 s).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }
    /// Return the messages themselves ([`Drained::messages`]).
    pub fn list(mut self) -> Self {
        self.list = true;
        self
    }
    /// With `list`: return length + SHA-256 instead of data.
    pub fn digest(mut self) -> Self {
        self.digest = true;
        self
    }
    /// Leave the messages in the peer's buffers.
    pub fn keep(mut self) -> Self {
        self.keep = true;
        self
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("cmd".into(), json!("drain"));
        if let Some(i) = &self.id {
            m.insert("id".into(), json!(i));
        }
        if let Some(p) = &self.prefix {
            m.insert("prefix".into(), json!(p));
        }
        if let Some(n) = self.wait_count {
            m.insert("wait_count".into(), json!(n));
        }
        if let Some(n) = self.wait_total {
            m.insert("wait_total".into(), json!(n));
        }
        m.insert("timeout".into(), json!(self.timeout.unwrap_or(Duration::from_secs(10)).as_secs_f64()));
        if self.list {
            m.insert("list".into(), json!(true));
        }
        if self.digest {
            m.insert("digest".into(), json!(true));
        }
        if self.keep {
            m.insert("keep".into(), json!(true));
        }
        Value::Object(m)
    }
}

const RECENT_LINES: usize = 40;
const STDERR_LINES: usize = 60;

/// A running peer process (Python `websockets` or Node `ws`) driven over its stdin/stdout
/// JSON-lines protocol (`peers/README.md`).
///
/// Every wait is bounded (default [`Peer::timeout`], 10 s × `$RINGCAST_TIMEOUT_SCALE`);
/// failures panic with the last events, the unconsumed events and the peer's stderr.
/// The process is killed when the `Peer` is dropped. Set `RINGCAST_PEER_TRACE=1` to
/// print every line exchanged to stderr.
///
/// Events that arrive while the harness waits for something else are kept, in order,
/// and returned by later [`Peer::next_event`] / [`Peer::expect_event`] calls.
pub struct Peer {
    info: PeerInfo,
    child: Child,
    stdin: ChildStdin,
    rx: Receiver<String>,
    pending: VecDeque<Event>,
    recent: VecDeque<String>,
    stderr: Arc<Mutex<VecDeque<String>>>,
    next_req: u64,
    timeout: Duration,
    trace: bool,
}

impl fmt::Debug for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Peer").field("info", &self.info).field("pending", &self.pending.len()).finish()
    }
}

fn short(line: &str) -> String {
    const MAX: usize = 400;
    if line.len() <= MAX {
        return line.to_owned();
    }
    let mut end = MAX;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &line[..end], line.len())
}

impl Peer {
    /// Starts the Python `websockets` peer.
    ///
    /// # Panics
    /// If it is not installed ("run peers/setup.sh") or does not start.
    #[track_caller]
    pub fn python() -> Peer {
        Self::spawn(PeerKind::Python)
    }

    /// Starts the Node `ws` peer.
    ///
    /// # Panics
    /// If it is not installed ("run peers/setup.sh") or does not start.
    #[track_caller]
    pub fn node() -> Peer {
        Self::spawn(PeerKind::Node)
    }

    /// Starts a peer of the given kind; panics like [`Peer::python`].
    #[track_caller]
    pub fn spawn(kind: PeerKind) -> Peer {
        match Self::try_spawn(kind) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        }
    }

    /// Starts a peer of the given kind.
    pub fn try_spawn(kind: PeerKind) -> Result<Peer, Error> {
        let dir = paths::peers_src_dir();
        let (program, script) = match kind {
            PeerKind::Python => (paths::require_python()?, dir.join("ws_peer.py")),
            PeerKind::Node => {
                paths::require_node_package("ws")?;
                (paths::node_bin(), dir.join("ws_peer.js"))
            }
        };
        let mut child = Command::new(&program)
            .arg(&script)
            .current_dir(&dir)
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                Error::new(format!(
                    "cannot start the {kind} peer `{} {}`: {e} (run peers/setup.sh)",
                    program.display(),
                    script.display()
                ))
            })?;
        let trace = std::env::var_os("RINGCAST_PEER_TRACE").is_some_and(|v| !v.is_empty() && v != "0");
        let tag = format!("{kind}#{}", child.id());
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let stdin = child.stdin.take().expect("piped stdin");
        let (tx, rx) = mpsc::channel();
        let out_tag = tag.clone();
        std::thread::Builder::new()
            .name(format!("{tag}-stdout"))
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if trace {
                        eprintln!("[{out_tag} <] {}", short(&line));
                    }
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })
            .expect("spawn reader thread");
        let err_buf = Arc::new(Mutex::new(VecDeque::new()));
        let err_buf2 = Arc::clone(&err_buf);
        let err_tag = tag.clone();
        std::thread::Builder::new()
            .name(format!("{tag}-stderr"))
            .spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if trace {
                        eprintln!("[{err_tag} stderr] {line}");
                    }
                    let mut b = err_buf2.lock().unwrap_or_else(|e| e.into_inner());
                    if b.len() == STDERR_LINES {
                        b.pop_front();
                    }
                    b.push_back(line);
                }
            })
            .expect("spawn stderr thread");

        let mut peer = Peer {
            info: PeerInfo { kind, library: String::new(), version: String::new(), pid: child.id() },
            child,
            stdin,
            rx,
            pending: VecDeque::new(),
            recent: VecDeque::new(),
            stderr: err_buf,
            next_req: 1,
            timeout: scaled(Duration::from_secs(10)),
            trace,
        };
        let deadline = Instant::now() + scaled(Duration::from_secs(30));
        loop {
            match peer.rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    peer.remember(&line);
                    if let Event::Ready { library, version, .. } = Event::parse(&line) {
                        peer.info.library = library;
                        peer.info.version = version;
                        return Ok(peer);
                    }
                }
                Err(e) => {
                    let what = match e {
                        RecvTimeoutError::Timeout => "did not print its `ready` event within 30 s",
                        RecvTimeoutError::Disconnected => "exited before its `ready` event",
                    };
                    std::thread::sleep(Duration::from_millis(100));
                    return Err(Error::new(peer.report(&format!("the {kind} peer {what}"))));
                }
            }
        }
    }

    /// Kind, library version and pid.
    pub fn info(&self) -> &PeerInfo {
        &self.info
    }

    /// Which implementation this is.
    pub fn kind(&self) -> PeerKind {
        self.info.kind
    }

    /// The default bound of every wait.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Changes the default bound of every wait.
    pub fn set_timeout(&mut self, t: Duration) {
        self.timeout = t;
    }

    // ---------------------------------------------------------------- plumbing

    fn remember(&mut self, line: &str) {
        if self.recent.len() == RECENT_LINES {
            self.recent.pop_front();
        }
        self.recent.push_back(short(line));
    }

    fn report(&mut self, what: &str) -> String {
        use fmt::Write as _;
        let mut s = format!(
            "{} peer ({} {}, pid {}): {what}",
            self.info.kind, self.info.library, self.info.version, self.info.pid
        );
        if let Ok(Some(status)) = self.child.try_wait() {
            let _ = write!(s, "\n  the peer process has exited: {status}");
        }
        if !self.pending.is_empty() {
            let _ = write!(s, "\n  unconsumed events ({}):", self.pending.len());
            for e in self.pending.iter().rev().take(15).collect::<Vec<_>>().into_iter().rev() {
                let _ = write!(s, "\n    {}", short(&format!("{e:?}")));
            }
        }
        let _ = write!(s, "\n  last lines from the peer (oldest first):");
        for l in &self.recent {
            let _ = write!(s, "\n    {l}");
        }
        let err = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        if !err.is_empty() {
            let _ = write!(s, "\n  peer stderr (last lines):");
            for l in err.iter() {
                let _ = write!(s, "\n    {l}");
            }
        }
        s
    }

    #[track_caller]
    fn fail(&mut self, what: &str) -> ! {
        // Give a dying process a moment so its exit status and stderr make the report.
        std::thread::sleep(Duration::from_millis(50));
        let r = self.report(what);
        panic!("{r}")
    }

    /// Reads one new line (not from `pending`); `None` at the deadline.
    #[track_caller]
    fn read_event(&mut self, deadline: Instant) -> Option<Event> {
        match self.rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                self.remember(&line);
                Some(Event::parse(&line))
            }
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => self.fail("the peer process closed its stdout (it died?)"),
        }
    }

    /// Writes one command line without waiting for anything. The command gets no `req`
    /// unless you put one in; errors come back as [`Event::Error`].
    #[track_caller]
    pub fn send_command(&mut self, cmd: &Value) {
        let mut line = serde_json::to_string(cmd).expect("serialize command");
        if self.trace {
            eprintln!("[{}#{} >] {}", self.info.kind, self.info.pid, short(&line));
        }
        line.push('\n');
        if let Err(e) = self.stdin.write_all(line.as_bytes()).and_then(|()| self.stdin.flush()) {
            self.fail(&format!("cannot write a command to the peer: {e}"));
        }
    }

    /// Sends `cmd` (a JSON object with `"cmd"`) with a fresh `req` and waits up to
    /// `timeout` for its `ok` (returned as JSON) or its `error`. Other events that arrive
    /// meanwhile are kept for later.
    ///
    /// # Panics
    /// On timeout, or if the peer dies.
    #[track_caller]
    pub fn request_with_timeout(&mut self, mut cmd: Value, timeout: Duration) -> Result<Value, Box<PeerError>> {
        let req = self.next_req;
        self.next_req += 1;
        cmd.as_object_mut().expect("a command is a JSON object").insert("req".into(), json!(req));
        self.send_command(&cmd);
        let deadline = Instant::now() + timeout;
        loop {
            let Some(ev) = self.read_event(deadline) else {
                let c = short(&cmd.to_string());
                self.fail(&format!("no answer within {timeout:?} to command {c}"));
            };
            match ev {
                Event::Ok { req: r, extra, .. } if r == req => return Ok(extra),
                Event::Error(e) if e.req == Some(req) => return Err(Box::new(e)),
                other => self.pending.push_back(other),
            }
        }
    }

    /// [`Peer::request_with_timeout`] with the default timeout.
    #[track_caller]
    pub fn request(&mut self, cmd: Value) -> Result<Value, Box<PeerError>> {
        let t = self.timeout;
        self.request_with_timeout(cmd, t)
    }

    /// Like [`Peer::request`] but panics (with context) when the peer answers `error`.
    #[track_caller]
    fn must(&mut self, cmd: Value) -> Value {
        self.must_within(cmd, self.timeout)
    }

    #[track_caller]
    fn must_within(&mut self, cmd: Value, timeout: Duration) -> Value {
        let shown = short(&cmd.to_string());
        match self.request_with_timeout(cmd, timeout) {
            Ok(v) => v,
            Err(e) => self.fail(&format!("command {shown} failed: {e}")),
        }
    }

    /// Removes and returns the first kept (already received) event matching `pred`.
    fn take_pending(&mut self, pred: impl Fn(&Event) -> bool) -> Option<Event> {
        let i = self.pending.iter().position(pred)?;
        self.pending.remove(i)
    }

    // ---------------------------------------------------------------- events

    /// The next event (kept ones first), or `None` if none arrives within `timeout`.
    #[track_caller]
    pub fn next_event(&mut self, timeout: Duration) -> Option<Event> {
        if let Some(e) = self.pending.pop_front() {
            return Some(e);
        }
        self.read_event(Instant::now() + timeout)
    }

    /// Every event available now (kept ones and lines already received), without waiting.
    #[track_caller]
    pub fn take_events(&mut self) -> Vec<Event> {
        let mut out: Vec<Event> = self.pending.drain(..).collect();
        while let Ok(line) = self.rx.try_recv() {
            self.remember(&line);
            out.push(Event::parse(&line));
        }
        out
    }

    /// Waits for the first event matching `pred` (kept events are searched first);
    /// non-matching events are kept for later, in order.
    ///
    /// # Panics
    /// If none arrives within `timeout` (the message lists recent and unconsumed events
    /// and the peer's stderr).
    #[track_caller]
    pub fn expect_event(&mut self, pred: impl Fn(&Event) -> bool, timeout: Duration) -> Event {
        self.expect_event_desc("an event matching the predicate", pred, timeout)
    }

    /// [`Peer::expect_event`] whose failure message says `what` was expected.
    #[track_caller]
    pub fn expect_event_desc(&mut self, what: &str, pred: impl Fn(&Event) -> bool, timeout: Duration) -> Event {
        self.wait_for(what, &pred, timeout, None)
    }

    /// Core wait; when `conn` is given, fails fast if that connection closes first.
    #[track_caller]
    fn wait_for(&mut self, what: &str, pred: &dyn Fn(&Event) -> bool, timeout: Duration, conn: Option<&str>) -> Event {
        if let Some(e) = self.take_pending(pred) {
            return e;
        }
        let closed_first = |e: &Event| matches!(e, Event::Close { id, .. } if Some(id.as_str()) == conn);
        if let Some(c) = self.pending.iter().find(|e| closed_first(e)).cloned() {
            self.fail(&format!("waiting for {what}, but the connection had already closed: {c:?}"));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let Some(ev) = self.read_event(deadline) else {
                self.fail(&format!("no {what} within {timeout:?}"));
            };
            if pred(&ev) {
                return ev;
            }
            let closed = closed_first(&ev);
            self.pending.push_back(ev);
            if closed {
                let c = format!("{:?}", self.pending.back());
                self.fail(&format!("waiting for {what}, but the connection closed first: {c}"));
            }
        }
    }

    /// Asserts that no event matching `pred` arrives during `period` (kept events
    /// included). Everything received meanwhile is kept.
    #[track_caller]
    pub fn expect_no_event(&mut self, pred: impl Fn(&Event) -> bool, period: Duration) {
        if let Some(e) = self.pending.iter().find(|e| pred(e)).cloned() {
            self.fail(&format!("unexpected event: {e:?}"));
        }
        let deadline = Instant::now() + period;
        while let Some(ev) = self.read_event(deadline) {
            let bad = pred(&ev);
            let shown = format!("{ev:?}");
            self.pending.push_back(ev);
            if bad {
                self.fail(&format!("unexpected event: {shown}"));
            }
        }
    }

    /// Waits for the `open` event of client connection `id` (after a raw `connect`).
    #[track_caller]
    pub fn expect_open(&mut self, id: &str) -> Opened {
        let t = self.timeout;
        match self.wait_for(&format!("`open` of {id}"), &|e| matches!(e, Event::Open(o) if o.id == id), t, Some(id)) {
            Event::Open(o) => o,
            _ => unreachable!(),
        }
    }

    /// Waits for the next connection accepted by listener `server`.
    #[track_caller]
    pub fn expect_accepted(&mut self, server: &str) -> Accepted {
        let t = self.timeout;
        match self.wait_for(
            &format!("`accepted` on listener {server}"),
            &|e| matches!(e, Event::Accepted(a) if a.server == server),
            t,
            None,
        ) {
            Event::Accepted(a) => a,
            _ => unreachable!(),
        }
    }

    /// Waits for the next handshake refused by listener `server`.
    #[track_caller]
    pub fn expect_rejected(&mut self, server: &str) -> Rejected {
        let t = self.timeout;
        match self.wait_for(
            &format!("`rejected` on listener {server}"),
            &|e| matches!(e, Event::Rejected(r) if r.server == server),
            t,
            None,
        ) {
            Event::Rejected(r) => r,
            _ => unreachable!(),
        }
    }

    /// Waits for the next text message on `id`; fails fast if `id` closes first or a
    /// binary message comes first.
    #[track_caller]
    pub fn expect_text(&mut self, id: &str) -> String {
        let t = self.timeout;
        match self.wait_for(
            &format!("text message on {id}"),
            &|e| matches!(e, Event::Text { id: i, .. } | Event::Binary { id: i, .. } if i == id),
            t,
            Some(id),
        ) {
            Event::Text { data, .. } => data,
            other => self.fail(&format!("expected a text message on {id}, got {other:?}")),
        }
    }

    /// Waits for the next binary message on `id`; fails fast if `id` closes first or a
    /// text message comes first.
    #[track_caller]
    pub fn expect_binary(&mut self, id: &str) -> Vec<u8> {
        let t = self.timeout;
        match self.wait_for(
            &format!("binary message on {id}"),
            &|e| matches!(e, Event::Text { id: i, .. } | Event::Binary { id: i, .. } if i == id),
            t,
            Some(id),
        ) {
            Event::Binary { data, .. } => data,
            other => self.fail(&format!("expected a binary message on {id}, got {other:?}")),
        }
    }

    /// Waits for a Ping frame received on `id`; returns its payload.
    #[track_caller]
    pub fn expect_ping(&mut self, id: &str) -> Vec<u8> {
        let t = self.timeout;
        match self.wait_for(
            &format!("ping on {id}"),
            &|e| matches!(e, Event::Ping { id: i, .. } if i == id),
            t,
            Some(id),
        ) {
            Event::Ping { data, .. } => data,
            _ => unreachable!(),
        }
    }

    /// Waits for a Pong frame received on `id`; returns its payload.
    #[track_caller]
    pub fn expect_pong(&mut self, id: &str) -> Vec<u8> {
        let t = self.timeout;
        match self.wait_for(
            &format!("pong on {id}"),
            &|e| matches!(e, Event::Pong { id: i, .. } if i == id),
            t,
            Some(id),
        ) {
            Event::Pong { data, .. } => data,
            _ => unreachable!(),
        }
    }

    /// Waits for connection `id` to close; returns the close code and reason it received
    /// (1005: no status code in the close frame, 1006: no close frame at all).
    #[track_caller]
    pub fn expect_close(&mut self, id: &str) -> (u16, String) {
        let t = self.timeout;
        match self.wait_for(&format!("close of {id}"), &|e| matches!(e, Event::Close { id: i, .. } if i == id), t, None)
        {
            Event::Close { code, reason, .. } => (code, reason),
            _ => unreachable!(),
        }
    }

    // ---------------------------------------------------------------- client commands

    fn connect_cmd(id: &str, url: &str, opts: &ConnectOpts) -> Value {
        let mut m = Map::new();
        m.insert("cmd".into(), json!("connect"));
        m.insert("id".into(), json!(id));
        m.insert("url".into(), json!(url));
        opts.to_json(&mut m);
        Value::Object(m)
    }

    fn open_wait(&self, opts: &ConnectOpts) -> Duration {
        let open = opts.open_timeout.unwrap_or(Duration::from_secs(10));
        self.timeout.max(open + Duration::from_secs(5))
    }

    /// Opens client connection `id` to `url` and waits for the handshake result.
    /// `Err` carries the HTTP `status` when the server refused the upgrade.
    #[track_caller]
    pub fn try_connect(&mut self, id: &str, url: &str, opts: &ConnectOpts) -> Result<Opened, Box<PeerError>> {
        let wait = self.open_wait(opts);
        self.request_with_timeout(Self::connect_cmd(id, url, opts), wait)?;
        Ok(match self.take_pending(|e| matches!(e, Event::Open(o) if o.id == id)) {
            Some(Event::Open(o)) => o,
            _ => Opened { id: id.to_owned(), ..Opened::default() },
        })
    }

    /// Opens client connection `id` to `url`.
    ///
    /// # Panics
    /// If the handshake fails.
    #[track_caller]
    pub fn connect(&mut self, id: &str, url: &str, opts: &ConnectOpts) -> Opened {
        match self.try_connect(id, url, opts) {
            Ok(o) => o,
            Err(e) => self.fail(&format!("connect {id} to {url} failed: {e}")),
        }
    }

    /// Opens `count` connections `"{prefix}0"`..`"{prefix}{count-1}"` to `url`
    /// concurrently. They collect messages and report no per-connection events (use
    /// [`Peer::drain`] and [`Peer::status_prefix`]). Returns even if some failed.
    #[track_caller]
    pub fn try_crowd(&mut self, prefix: &str, count: usize, url: &str, opts: &ConnectOpts) -> CrowdOpen {
        let mut m = Map::new();
        m.insert("cmd".into(), json!("crowd"));
        m.insert("prefix".into(), json!(prefix));
        m.insert("count".into(), json!(count));
        m.insert("url".into(), json!(url));
        opts.to_json(&mut m);
        let wait = self.open_wait(opts) + Duration::from_secs(60);
        self.must_within(Value::Object(m), wait);
        match self.take_pending(|e| matches!(e, Event::CrowdOpen(c) if c.prefix == prefix)) {
            Some(Event::CrowdOpen(c)) => c,
            _ => self.fail("crowd acknowledged without a `crowd_open` event"),
        }
    }

    /// [`Peer::try_crowd`], panicking unless every connection opened.
    #[track_caller]
    pub fn crowd(&mut self, prefix: &str, count: usize, url: &str, opts: &ConnectOpts) -> CrowdOpen {
        let c = self.try_crowd(prefix, count, url, opts);
        if c.failed > 0 {
            self.fail(&format!("crowd {prefix}: {} of {count} connections failed: {:?}", c.failed, c.errors));
        }
        c
    }

    #[track_caller]
    fn send_payload(&mut self, target: (&str, &str), payload: (&str, Value)) {
        let mut m = Map::new();
        m.insert("cmd".into(), json!("send"));
        m.insert(target.0.into(), json!(target.1));
        m.insert(payload.0.into(), payload.1);
        self.must(Value::Object(m));
    }

    /// Sends a text message on `id` (waits until the peer's library accepted it).
    #[track_caller]
    pub fn send_text(&mut self, id: &str, text: &str) {
        self.send_payload(("id", id), ("text", json!(text)));
    }

    /// Sends a binary message on `id`.
    #[track_caller]
    pub fn send_binary(&mut self, id: &str, data: &[u8]) {
        self.send_payload(("id", id), ("data_b64", json!(B64.encode(data))));
    }

    /// Sends one text message split into these fragments (one frame each).
    #[track_caller]
    pub fn send_text_fragments(&mut self, id: &str, fragments: &[&str]) {
        self.send_payload(("id", id), ("fragments", json!(fragments)));
    }

    /// Sends one binary message split into these fragments (one frame each).
    #[track_caller]
    pub fn send_binary_fragments(&mut self, id: &str, fragments: &[&[u8]]) {
        let f: Vec<String> = fragments.iter().map(|f| B64.encode(f)).collect();
        self.send_payload(("id", id), ("fragments_b64", json!(f)));
    }

    /// Sends a text message on every open connection whose id starts with `prefix`.
    #[track_caller]
    pub fn send_text_to_prefix(&mut self, prefix: &str, text: &str) {
        self.send_payload(("prefix", prefix), ("text", json!(text)));
    }

    /// Sends a Ping with `data` on `id`. Any Pong that comes back is reported as [`Event::Pong`].
    #[track_caller]
    pub fn ping(&mut self, id: &str, data: &[u8]) {
        self.must(json!({"cmd": "ping", "id": id, "data_b64": B64.encode(data)}));
    }

    /// Sends an unsolicited Pong with `data` on `id`.
    #[track_caller]
    pub fn pong(&mut self, id: &str, data: &[u8]) {
        self.must(json!({"cmd": "pong", "id": id, "data_b64": B64.encode(data)}));
    }

    /// Starts the closing handshake on `id` with `code` and `reason`; the outcome is
    /// reported by [`Peer::expect_close`].
    #[track_caller]
    pub fn close(&mut self, id: &str, code: u16, reason: &str) {
        self.must(json!({"cmd": "close", "id": id, "code": code, "reason": reason}));
    }

    /// Starts the closing handshake on `id` with an empty close frame (no status code).
    #[track_caller]
    pub fn close_without_status(&mut self, id: &str) {
        self.must(json!({"cmd": "close", "id": id, "code": null}));
    }

    /// Closes every open connection whose id starts with `prefix`.
    #[track_caller]
    pub fn close_prefix(&mut self, prefix: &str, code: u16, reason: &str) {
        self.must(json!({"cmd": "close", "prefix": prefix, "code": code, "reason": reason}));
    }

    /// Drops the TCP connection of `id` without a close frame.
    #[track_caller]
    pub fn abort(&mut self, id: &str) {
        self.must(json!({"cmd": "abort", "id": id}));
    }

    /// Stops reading from `id`'s socket (a slow consumer); the other side's sends back up.
    #[track_caller]
    pub fn pause(&mut self, id: &str) {
        self.must(json!({"cmd": "pause", "id": id}));
    }

    /// Resumes reading after [`Peer::pause`].
    #[track_caller]
    pub fn resume(&mut self, id: &str) {
        self.must(json!({"cmd": "resume", "id": id}));
    }

    /// Collected-message counts (and optionally the messages) of the matched
    /// connections, after the optional wait. Drained messages leave the peer's buffers.
    #[track_caller]
    pub fn drain(&mut self, q: &Drain) -> Drained {
        let wait = self.timeout + q.timeout.unwrap_or(Duration::from_secs(10));
        self.must_within(q.to_json(), wait);
        match self.take_pending(|e| matches!(e, Event::Drained(_))) {
            Some(Event::Drained(d)) => d,
            _ => self.fail("drain acknowledged without a `drained` event"),
        }
    }

    /// States of every connection whose id starts with `prefix` (`""`: all).
    #[track_caller]
    pub fn status_prefix(&mut self, prefix: &str) -> BTreeMap<String, ConnStatus> {
        self.must(json!({"cmd": "status", "prefix": prefix}));
        match self.take_pending(|e| matches!(e, Event::Status(_))) {
            Some(Event::Status(s)) => s,
            _ => self.fail("status acknowledged without a `status` event"),
        }
    }

    /// State of connection `id`, if the peer knows it.
    #[track_caller]
    pub fn status(&mut self, id: &str) -> Option<ConnStatus> {
        self.must(json!({"cmd": "status", "id": id}));
        match self.take_pending(|e| matches!(e, Event::Status(_))) {
            Some(Event::Status(mut s)) => s.remove(id),
            _ => self.fail("status acknowledged without a `status` event"),
        }
    }

    /// Polls until at least `n` connections whose id starts with `prefix` are open;
    /// returns how many are.
    ///
    /// # Panics
    /// After `timeout`.
    #[track_caller]
    pub fn wait_open_conns(&mut self, prefix: &str, n: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let open = self.status_prefix(prefix).values().filter(|s| s.state == "open").count();
            if open >= n {
                return open;
            }
            if Instant::now() >= deadline {
                self.fail(&format!("only {open} of {n} connections `{prefix}*` open after {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    // ---------------------------------------------------------------- server commands

    /// Starts a WebSocket listener in the peer.
    #[track_caller]
    pub fn listen(&mut self, opts: &ListenOpts) -> Listening {
        self.must(Value::Object(opts.to_json()));
        match self.take_pending(|e| matches!(e, Event::Listening(_))) {
            Some(Event::Listening(l)) => l,
            _ => self.fail("listen acknowledged without a `listening` event"),
        }
    }

    #[track_caller]
    fn publish(&mut self, server: &str, payload: (&str, Value), count: usize) -> usize {
        let mut m = Map::new();
        m.insert("cmd".into(), json!("publish"));
        m.insert("server".into(), json!(server));
        m.insert(payload.0.into(), payload.1);
        m.insert("count".into(), json!(count));
        let ok = self.must(Value::Object(m));
        ok.get("conns").and_then(Value::as_u64).unwrap_or(0) as usize
    }

    /// Sends `text` to every open connection of listener `server`; returns how many.
    #[track_caller]
    pub fn publish_text(&mut self, server: &str, text: &str) -> usize {
        self.publish(server, ("text", json!(text)), 1)
    }

    /// Sends `text` `count` times to every open connection of `server`.
    #[track_caller]
    pub fn publish_text_n(&mut self, server: &str, text: &str, count: usize) -> usize {
        self.publish(server, ("text", json!(text)), count)
    }

    /// Sends `data` to every open connection of `server`; returns how many.
    #[track_caller]
    pub fn publish_binary(&mut self, server: &str, data: &[u8]) -> usize {
        self.publish(server, ("data_b64", json!(B64.encode(data))), 1)
    }

    /// Stops listener `server`, closing its connections with 1001.
    #[track_caller]
    pub fn stop(&mut self, server: &str) {
        self.must(json!({"cmd": "stop", "server": server}));
    }

    /// Round trip through the peer's command queue (a barrier for commands without ids).
    #[track_caller]
    pub fn sync(&mut self) {
        self.must(json!({"cmd": "sync"}));
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
