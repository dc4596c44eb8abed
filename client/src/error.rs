//! Everything that can go wrong, one variant per cause a caller may want to tell apart.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use ringcast_codec::deflate::ExtensionResponseError;
use ringcast_codec::handshake::ClientHandshakeError;
use ringcast_codec::{CloseCode, ProtocolError};

/// The step of connecting (or closing) that was under way when something failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Resolving the host name.
    Dns,
    /// Opening the TCP connection.
    Connect,
    /// The TLS handshake.
    Tls,
    /// The HTTP/1.1 upgrade (the WebSocket opening handshake).
    Handshake,
    /// The closing handshake: waiting for the server to answer a close frame.
    Close,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Dns => "DNS lookup",
            Stage::Connect => "TCP connect",
            Stage::Tls => "TLS handshake",
            Stage::Handshake => "WebSocket handshake",
            Stage::Close => "closing handshake",
        })
    }
}

/// Why connecting failed, or why an open connection ended other than by a clean close.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration cannot be used: a malformed URL, a header that may not be set, an
    /// unreadable root certificate file.
    #[error("invalid client configuration: {0}")]
    InvalidConfig(String),
    /// The host name could not be resolved (or resolved to no address).
    #[error("DNS lookup of {host:?} failed: {source}")]
    Dns {
        /// The name that was looked up.
        host: String,
        /// What the resolver said.
        #[source]
        source: io::Error,
    },
    /// Every address of the server refused the TCP connection: nothing listens on the port.
    #[error("connection to {addr} refused")]
    ConnectionRefused {
        /// The (last) address tried.
        addr: SocketAddr,
    },
    /// The TCP connection could not be opened for another reason (unreachable network, ...).
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The (last) address tried.
        addr: SocketAddr,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A step took longer than its configured limit.
    #[error("{stage} timed out")]
    Timeout {
        /// The step that timed out.
        stage: Stage,
    },
    /// The client speaks plain `ws://` but the server speaks TLS: use `wss://` (or
    /// [`ClientConfig::tls`](crate::ClientConfig::tls)).
    #[error("the server speaks TLS but the client connected without it: use wss:// / tls(true)")]
    ServerSpeaksTls,
    /// The client speaks TLS (`wss://`) but the server answered in plain HTTP: use `ws://`.
    #[error("the server does not speak TLS (it answered in plain HTTP): use ws:// / tls(false)")]
    ServerNotTls,
    /// The TLS handshake failed: an untrusted or expired certificate, a name mismatch, no
    /// common protocol version, an alert from the server.
    #[error("TLS error: {0}")]
    Tls(#[from] rustls::Error),
    /// The server closed the connection in the middle of a handshake without saying why.
    #[error("the server closed the connection during the {stage}")]
    ClosedDuringHandshake {
        /// The handshake that was under way.
        stage: Stage,
    },
    /// The server answered the upgrade request with an HTTP status other than 101.
    #[error("the server refused the WebSocket upgrade with HTTP {status}")]
    HandshakeRefused {
        /// The HTTP status code, e.g. 403 or 404.
        status: u16,
    },
    /// The server's `Sec-WebSocket-Accept` is missing or does not match the key sent.
    #[error("the server's Sec-WebSocket-Accept does not match the key sent")]
    BadAcceptKey,
    /// The server's answer to the upgrade request was not a valid WebSocket upgrade.
    #[error("invalid handshake response: {0}")]
    Handshake(ClientHandshakeError),
    /// The server's `101` chose an extension or a subprotocol that the client did not
    /// offer (it offers none), which RFC 6455 §4.1 requires the client to refuse.
    #[error("the server chose the {what} {value:?}, which the client did not offer")]
    NotOffered {
        /// `"extension"` or `"subprotocol"`.
        what: &'static str,
        /// The header's value.
        value: String,
    },
    /// The server's answer to the permessage-deflate offer cannot be used: parameters the
    /// client did not offer, a window larger than the one asked for, a repeated or
    /// malformed parameter (RFC 7692 §7.1 makes the client fail the connection).
    #[error("the server's permessage-deflate answer is refused: {0}")]
    Extension(#[from] ExtensionResponseError),
    /// The server broke RFC 6455 (or exceeded the message size limit); the client failed
    /// the connection with [`Error::close_code`].
    #[error("protocol error from the server: {0}")]
    Protocol(#[from] ProtocolError),
    /// The connection ended without a close frame (RFC 6455 reports this as code 1006).
    #[error("the connection was lost without a closing handshake")]
    ConnectionLost,
    /// A message could not be sent as asked: a control frame payload over 125 bytes.
    #[error("invalid message: {0}")]
    InvalidMessage(&'static str),
    /// [`Sender::try_send`](crate::Sender::try_send) found the send queue full.
    #[error("the send queue is full")]
    QueueFull,
    /// The connection is closed: nothing more can be sent.
    #[error("the connection is closed")]
    Closed,
    /// Another I/O error.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

impl Error {
    /// The close code that describes this error: the code sent to the server for
    /// [`Error::Protocol`], 1006 ([`CloseCode::Abnormal`]) for a lost connection, 1015
    /// ([`CloseCode::Tls`]) for TLS failures, `None` otherwise.
    pub fn close_code(&self) -> Option<CloseCode> {
        match self {
            Error::Protocol(e) => Some(e.close_code()),
            Error::ConnectionLost => Some(CloseCode::Abnormal),
            Error::Tls(_) | Error::ServerNotTls => Some(CloseCode::Tls),
            _ => None,
        }
    }

    /// Whether the error happened while connecting, before the handshake completed.
    pub fn is_connect_error(&self) -> bool {
        matches!(
            self,
            Error::InvalidConfig(_)
                | Error::Dns { .. }
                | Error::ConnectionRefused { .. }
                | Error::Connect { .. }
                | Error::ServerSpeaksTls
                | Error::ServerNotTls
                | Error::Tls(_)
                | Error::ClosedDuringHandshake { .. }
                | Error::HandshakeRefused { .. }
                | Error::BadAcceptKey
                | Error::NotOffered { .. }
                | Error::Handshake(_)
        ) || matches!(self, Error::Timeout { stage } if *stage != Stage::Close)
    }
}

impl From<ClientHandshakeError> for Error {
    fn from(e: ClientHandshakeError) -> Self {
        match e {
            ClientHandshakeError::Refused { status } => Error::HandshakeRefused { status },
            ClientHandshakeError::BadAccept => Error::BadAcceptKey,
            other => Error::Handshake(other),
        }
    }
}

/// Maps an error of an established connection's socket: resets and early ends mean the
/// connection was lost.
pub(crate) fn from_stream_io(e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::UnexpectedEof => Error::ConnectionLost,
        _ => Error::Io(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_errors_map_to_distinct_variants() {
        assert!(matches!(
            Error::from(ClientHandshakeError::Refused { status: 403 }),
            Error::HandshakeRefused { status: 403 }
        ));
        assert!(matches!(Error::from(ClientHandshakeError::BadAccept), Error::BadAcceptKey));
        assert!(matches!(Error::from(ClientHandshakeError::NotUpgraded), Error::Handshake(_)));
    }

    #[test]
    fn close_codes_and_messages() {
        assert_eq!(Error::from(ProtocolError::InvalidUtf8).close_code(), Some(CloseCode::Invalid));
        assert_eq!(Error::ConnectionLost.close_code(), Some(CloseCode::Abnormal));
        assert_eq!(Error::Closed.close_code(), None);
        assert_eq!(Error::Timeout { stage: Stage::Tls }.to_string(), "TLS handshake timed out");
        assert_eq!(
            Error::HandshakeRefused { status: 404 }.to_string(),
            "the server refused the WebSocket upgrade with HTTP 404"
        );
        assert!(Error::ServerSpeaksTls.to_string().contains("wss://"));
        assert!(Error::Timeout { stage: Stage::Connect }.is_connect_error());
        assert!(!Error::Timeout { stage: Stage::Close }.is_connect_error());
        assert!(!Error::ConnectionLost.is_connect_error());
    }

    #[test]
    fn stream_io_errors() {
        assert!(matches!(from_stream_io(io::ErrorKind::ConnectionReset.into()), Error::ConnectionLost));
        assert!(matches!(from_stream_io(io::ErrorKind::Other.into()), Error::Io(_)));
    }
}
