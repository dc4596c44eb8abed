//! Typed view of the events a peer prints (see `peers/README.md` for the wire format).

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use serde_json::Value;

/// Lower-cased HTTP header name → value (repeated headers joined with `", "`).
pub type Headers = BTreeMap<String, String>;

/// One event line from a peer, parsed.
///
/// Unknown or malformed lines become [`Event::Other`] holding the raw JSON (or the raw
/// line as a JSON string), so a new event kind never breaks an older harness.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// First line of every peer: who it is.
    Ready {
        /// `"python"` or `"node"`.
        peer: String,
        /// `"websockets"` or `"ws"`.
        library: String,
        /// Library version.
        version: String,
    },
    /// A client connection finished its opening handshake.
    Open(Opened),
    /// A server-mode listener accepted a WebSocket connection.
    Accepted(Accepted),
    /// A server-mode listener with `reject_status` refused a handshake.
    Rejected(Rejected),
    /// A text message arrived on connection `id` (not collected, not digested).
    Text {
        /// Connection id.
        id: String,
        /// The message.
        data: String,
    },
    /// A binary message arrived on connection `id` (not collected, not digested).
    Binary {
        /// Connection id.
        id: String,
        /// The message.
        data: Vec<u8>,
    },
    /// A message arrived on a connection opened with `digest`: length and SHA-256 only.
    Digest {
        /// Connection id.
        id: String,
        /// `true` for a binary message, `false` for text.
        binary: bool,
        /// Payload length in bytes (UTF-8 bytes for text).
        len: usize,
        /// Lower-case hex SHA-256 of the payload bytes.
        sha256: String,
    },
    /// A Ping frame arrived (the library answers it with a Pong by itself).
    Ping {
        /// Connection id.
        id: String,
        /// Ping payload.
        data: Vec<u8>,
    },
    /// A Pong frame arrived (solicited or not).
    Pong {
        /// Connection id.
        id: String,
        /// Pong payload.
        data: Vec<u8>,
    },
    /// The connection is closed. `code` is the close code the peer *received*
    /// (1005: close frame without a code, 1006: no close frame / TCP dropped).
    Close {
        /// Connection id.
        id: String,
        /// Close code received from the other side.
        code: u16,
        /// Close reason received from the other side.
        reason: String,
    },
    /// A command failed, or a connection reported an error.
    Error(PeerError),
    /// Result of a `crowd` command.
    CrowdOpen(CrowdOpen),
    /// Result of a `drain` command.
    Drained(Drained),
    /// Result of a `status` command: connection id → state.
    Status(BTreeMap<String, ConnStatus>),
    /// Result of a `listen` command.
    Listening(Listening),
    /// Acknowledgement of a command that carried `req`; `extra` holds any result
    /// fields (e.g. `conns` for `publish`).
    Ok {
        /// The `req` of the command.
        req: u64,
        /// The command name.
        cmd: String,
        /// The whole event object.
        extra: Value,
    },
    /// Anything else (unknown event kind, or a line that is not a JSON object).
    Other(Value),
}

/// Details of an opened client connection.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
pub struct Opened {
    /// Connection id.
    pub id: String,
    /// Subprotocol chosen by the server, if any.
    #[serde(default)]
    pub subprotocol: Option<String>,
    /// The server's `Sec-WebSocket-Extensions` response header, if any.
    #[serde(default)]
    pub extensions: Option<String>,
    /// All response headers of the 101 answer.
    #[serde(default)]
    pub headers: Headers,
}

/// What a server-mode peer saw of an accepted handshake.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Accepted {
    /// Generated connection id, `"<server>.<n>"` (n from 1).
    pub id: String,
    /// Listener name.
    pub server: String,
    /// Request target: path and query, e.g. `"/chat?room=1"`.
    pub path: String,
    /// `Origin` request header, if sent.
    #[serde(default)]
    pub origin: Option<String>,
    /// All request headers.
    #[serde(default)]
    pub headers: Headers,
    /// Subprotocol the server chose, if any.
    #[serde(default)]
    pub subprotocol: Option<String>,
    /// Client address `ip:port`.
    #[serde(default)]
    pub remote: Option<String>,
}

/// A handshake refused by a listener started with `reject_status`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Rejected {
    /// Listener name.
    pub server: String,
    /// Request target.
    pub path: String,
    /// `Origin` request header, if sent.
    #[serde(default)]
    pub origin: Option<String>,
    /// All request headers.
    #[serde(default)]
    pub headers: Headers,
    /// HTTP status sent back.
    pub status: u16,
}

/// A failed command or a connection error reported by a peer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
pub struct PeerError {
    /// Connection id, when the error concerns one.
    #[serde(default)]
    pub id: Option<String>,
    /// `req` of the failed command, if it had one.
    #[serde(default)]
    pub req: Option<u64>,
    /// Name of the failed command.
    #[serde(default)]
    pub cmd: Option<String>,
    /// HTTP status, when a client handshake was answered with a non-101 status.
    #[serde(default)]
    pub status: Option<u16>,
    /// Response body of a refused handshake.
    #[serde(default)]
    pub body: Option<String>,
    /// Response headers of a refused handshake.
    #[serde(default)]
    pub headers: Option<Headers>,
    /// Human-readable description.
    #[serde(default)]
    pub message: String,
}

impl std::fmt::Display for PeerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(cmd) = &self.cmd {
            write!(f, "{cmd}: ")?;
        }
        if let Some(id) = &self.id {
            write!(f, "[{id}] ")?;
        }
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for PeerError {}

/// One connection of a crowd that failed to open.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CrowdError {
    /// Connection id.
    pub id: String,
    /// Why it failed.
    pub message: String,
    /// HTTP status, when the handshake was refused.
    #[serde(default)]
    pub status: Option<u16>,
}

/// Result of [`crate::Peer::crowd`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CrowdOpen {
    /// Id prefix of the crowd.
    pub prefix: String,
    /// Connections asked for.
    pub count: usize,
    /// Connections opened.
    pub opened: usize,
    /// Connections that failed.
    pub failed: usize,
    /// The first (at most 10) failures.
    #[serde(default)]
    pub errors: Vec<CrowdError>,
    /// Wall time of the whole crowd, in milliseconds.
    #[serde(default)]
    pub ms: u64,
}

/// A collected message's payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// Text message.
    Text(String),
    /// Binary message.
    Binary(Vec<u8>),
    /// Only length and SHA-256 (drain with `digest`).
    Digest {
        /// `true` for binary.
        binary: bool,
        /// Length in bytes.
        len: usize,
        /// Lower-case hex SHA-256.
        sha256: String,
    },
}

/// One collected message returned by a `drain` with `list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Connection id it arrived on.
    pub id: String,
    /// Its payload.
    pub payload: Payload,
}

/// Result of [`crate::Peer::drain`]: counts of collected messages, which are removed
/// from the peer's buffers unless the drain had `keep`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Drained {
    /// Number of connections matched.
    pub conns: usize,
    /// Messages in all (`text + binary`).
    pub total: usize,
    /// Text messages.
    pub text: usize,
    /// Binary messages.
    pub binary: usize,
    /// Payload bytes in all.
    pub bytes: u64,
    /// Fewest messages on one matched connection.
    pub min: usize,
    /// Most messages on one matched connection.
    pub max: usize,
    /// Messages per connection id.
    pub per_conn: BTreeMap<String, usize>,
    /// Matched connections that are closed → the close code they received.
    pub closed: BTreeMap<String, u16>,
    /// The wait condition (`wait_count` / `wait_total`) was met (true when none was given).
    pub satisfied: bool,
    /// The wait ended by timeout.
    pub timed_out: bool,
    /// The messages, in arrival order per connection, when the drain had `list`.
    pub messages: Vec<Message>,
}

/// State of one connection, from [`crate::Peer::status`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ConnStatus {
    /// `"client"` or `"server"`.
    pub role: String,
    /// `"connecting"`, `"open"` or `"closed"`.
    pub state: String,
    /// Reading is paused.
    #[serde(default)]
    pub paused: bool,
    /// Messages collected and not yet drained.
    #[serde(default)]
    pub collected: usize,
    /// Messages received in all.
    #[serde(default)]
    pub received: usize,
    /// Close code received, once closed.
    #[serde(default)]
    pub close_code: Option<u16>,
    /// Close reason received, once closed.
    #[serde(default)]
    pub close_reason: Option<String>,
    /// Listener name, for server-side connections.
    #[serde(default)]
    pub server: Option<String>,
}

/// Result of [`crate::Peer::listen`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Listening {
    /// Listener name (ids of its connections start with `"<server>."`).
    pub server: String,
    /// Bound port on the listen host (127.0.0.1 unless given).
    pub port: u16,
}

fn s(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_str).map(str::to_owned)
}

fn b64(v: &Value, k: &str) -> Option<Vec<u8>> {
    B64.decode(v.get(k).and_then(Value::as_str).unwrap_or("")).ok()
}

fn parse_message(v: &Value) -> Option<Message> {
    let id = s(v, "id")?;
    let binary = v.get("type").and_then(Value::as_str) == Some("binary");
    let payload = if let Some(sha) = s(v, "sha256") {
        Payload::Digest { binary, len: v.get("len")?.as_u64()? as usize, sha256: sha }
    } else if binary {
        Payload::Binary(b64(v, "data_b64")?)
    } else {
        Payload::Text(s(v, "data")?)
    };
    Some(Message { id, payload })
}

fn parse_drained(v: &Value) -> Option<Drained> {
    #[derive(Deserialize)]
    struct Raw {
        conns: usize,
        total: usize,
        text: usize,
        binary: usize,
        bytes: u64,
        min: usize,
        max: usize,
        #[serde(default)]
        per_conn: BTreeMap<String, usize>,
        #[serde(default)]
        closed: BTreeMap<String, u16>,
        #[serde(default = "yes")]
        satisfied: bool,
        #[serde(default)]
        timed_out: bool,
    }
    fn yes() -> bool {
        true
    }
    let r: Raw = serde_json::from_value(v.clone()).ok()?;
    let messages = match v.get("messages").and_then(Value::as_array) {
        Some(a) => a.iter().map(parse_message).collect::<Option<Vec<_>>>()?,
        None => Vec::new(),
    };
    Some(Drained {
        conns: r.conns,
        total: r.total,
        text: r.text,
        binary: r.binary,
        bytes: r.bytes,
        min: r.min,
        max: r.max,
        per_conn: r.per_conn,
        closed: r.closed,
        satisfied: r.satisfied,
        timed_out: r.timed_out,
        messages,
    })
}

impl Event {
    /// Parses one stdout line of a peer. Never fails: see [`Event::Other`].
    pub fn parse(line: &str) -> Event {
        match serde_json::from_str::<Value>(line) {
            Ok(v) => Event::from_value(v),
            Err(_) => Event::Other(Value::String(line.to_owned())),
        }
    }

    /// Converts a parsed JSON event object.
    pub fn from_value(v: Value) -> Event {
        Self::try_from_value(&v).unwrap_or(Event::Other(v))
    }

    fn try_from_value(v: &Value) -> Option<Event> {
        fn de<T: serde::de::DeserializeOwned>(v: &Value) -> Option<T> {
            serde_json::from_value(v.clone()).ok()
        }
        let kind = v.get("event")?.as_str()?;
        let id = || s(v, "id");
        Some(match kind {
            "ready" => Event::Ready { peer: s(v, "peer")?, library: s(v, "library")?, version: s(v, "version")? },
            "open" => Event::Open(de(v)?),
            "accepted" => Event::Accepted(de(v)?),
            "rejected" => Event::Rejected(de(v)?),
            "text" | "binary" if v.get("sha256").is_some() => Event::Digest {
                id: id()?,
                binary: kind == "binary",
                len: v.get("len")?.as_u64()? as usize,
                sha256: s(v, "sha256")?,
            },
            "text" => Event::Text { id: id()?, data: s(v, "data")? },
            "binary" => Event::Binary { id: id()?, data: b64(v, "data_b64")? },
            "ping" => Event::Ping { id: id()?, data: b64(v, "data_b64")? },
            "pong" => Event::Pong { id: id()?, data: b64(v, "data_b64")? },
            "close" => Event::Close {
                id: id()?,
                code: u16::try_from(v.get("code")?.as_u64()?).ok()?,
                reason: s(v, "reason").unwrap_or_default(),
            },
            "error" => Event::Error(de(v)?),
            "crowd_open" => Event::CrowdOpen(de(v)?),
            "drained" => Event::Drained(parse_drained(v)?),
            "status" => Event::Status(de(v.get("conns")?)?),
            "listening" => Event::Listening(de(v)?),
            "ok" => Event::Ok { req: v.get("req")?.as_u64()?, cmd: s(v, "cmd").unwrap_or_default(), extra: v.clone() },
            _ => return None,
        })
    }

    /// The connection id the event concerns, if any.
    pub fn id(&self) -> Option<&str> {
        match self {
            Event::Open(o) => Some(&o.id),
            Event::Accepted(a) => Some(&a.id),
            Event::Text { id, .. }
            | Event::Binary { id, .. }
            | Event::Digest { id, .. }
            | Event::Ping { id, .. }
            | Event::Pong { id, .. }
            | Event::Close { id, .. } => Some(id),
            Event::Error(e) => e.id.as_deref(),
            _ => None,
        }
    }

    /// The event kind as on the wire (`"text"`, `"close"`, ...; `"other"` for unknown).
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Ready { .. } => "ready",
            Event::Open(_) => "open",
            Event::Accepted(_) => "accepted",
            Event::Rejected(_) => "rejected",
            Event::Text { .. } => "text",
            Event::Binary { .. } => "binary",
            Event::Digest { binary: false, .. } => "text",
            Event::Digest { binary: true, .. } => "binary",
            Event::Ping { .. } => "ping",
            Event::Pong { .. } => "pong",
            Event::Close { .. } => "close",
            Event::Error(_) => "error",
            Event::CrowdOpen(_) => "crowd_open",
            Event::Drained(_) => "drained",
            Event::Status(_) => "status",
            Event::Listening(_) => "listening",
            Event::Ok { .. } => "ok",
            Event::Other(_) => "other",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_message_events() {
        assert_eq!(
            Event::parse(r#"{"event":"text","id":"a","data":"hé"}"#),
            Event::Text { id: "a".into(), data: "hé".into() }
        );
        assert_eq!(
            Event::parse(r#"{"event":"binary","id":"a","data_b64":"AAH/"}"#),
            Event::Binary { id: "a".into(), data: vec![0, 1, 255] }
        );
        assert_eq!(
            Event::parse(r#"{"event":"text","id":"a","len":3,"sha256":"ab"}"#),
            Event::Digest { id: "a".into(), binary: false, len: 3, sha256: "ab".into() }
        );
        assert_eq!(
            Event::parse(r#"{"event":"close","id":"s1.1","code":4001,"reason":"bye"}"#),
            Event::Close { id: "s1.1".into(), code: 4001, reason: "bye".into() }
        );
    }

    #[test]
    fn parses_results_and_errors() {
        let e = Event::parse(
            r#"{"event":"error","cmd":"connect","message":"handshake refused: HTTP 403","id":"d","status":403,"headers":{"server":"x"},"body":"no\n","req":4}"#,
        );
        let Event::Error(err) = e else { panic!("{e:?}") };
        assert_eq!(err.status, Some(403));
        assert_eq!(err.req, Some(4));
        assert_eq!(err.id.as_deref(), Some("d"));
        let d = Event::parse(
            r#"{"event":"drained","conns":1,"total":2,"text":1,"binary":1,"bytes":4,"min":2,"max":2,"per_conn":{"a":2},"closed":{},"satisfied":true,"timed_out":false,"messages":[{"id":"a","type":"text","data":"hi"},{"id":"a","type":"binary","data_b64":"AAE="}]}"#,
        );
        let Event::Drained(d) = d else { panic!("{d:?}") };
        assert_eq!(d.messages[0].payload, Payload::Text("hi".into()));
        assert_eq!(d.messages[1].payload, Payload::Binary(vec![0, 1]));
        assert!(matches!(Event::parse("not json"), Event::Other(Value::String(_))));
        assert!(matches!(Event::parse(r#"{"event":"future"}"#), Event::Other(_)));
        assert!(matches!(
            Event::parse(r#"{"event":"ok","req":7,"cmd":"publish","conns":3}"#),
            Event::Ok { req: 7, .. }
        ));
    }
}
