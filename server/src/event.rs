//! The vocabulary of connection events shared by every layer: decisions, reasons, errors.

use ringcast_codec::{CloseCode, OpCode, ProtocolError};

/// Whether to accept an upgrade request, decided by
/// [`Handler::allow`](crate::Handler::allow).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Allow {
    /// Complete the handshake.
    Yes,
    /// Refuse with `403 Forbidden`.
    No,
    /// Refuse with this HTTP status (e.g. 401 for a bad token, 404 for an unknown path).
    Status(u16),
}

impl From<bool> for Allow {
    fn from(allow: bool) -> Self {
        if allow { Allow::Yes } else { Allow::No }
    }
}

/// A data frame delivered as it arrived, when frame-by-frame mode is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// `Text` or `Binary` for a message's first frame, `Continuation` after.
    pub opcode: OpCode,
    /// Whether this frame ends its message.
    pub fin: bool,
    /// The unmasked payload (text fragments are checked as UTF-8 across frames).
    pub payload: &'a [u8],
}

/// Why a connection ended, passed to [`Handler::on_disconnect`](crate::Handler::on_disconnect).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The closing handshake completed; the code is the one the peer sent (or 1005).
    Closed(CloseCode),
    /// The peer closed TCP without a closing handshake.
    Eof,
    /// The peer broke the protocol; the connection was closed with this code.
    Protocol(ProtocolError),
    /// The opening handshake failed or was refused with this HTTP status.
    HandshakeRefused(u16),
    /// A plain HTTP request was answered (no WebSocket was opened).
    HttpServed,
    /// No complete handshake, close reply or pong arrived in time.
    Timeout,
    /// The send queue overflowed under [`SlowConsumerPolicy::Disconnect`](crate::SlowConsumerPolicy).
    SlowConsumer,
    /// The server is stopping.
    ServerStopping,
    /// The server-wide budget for incomplete input was exceeded and this connection held
    /// the most; it was closed with 1009 (see
    /// [`ServerBuilder::max_buffered_input`](crate::ServerBuilder::max_buffered_input)).
    InputBudget,
    /// The application called [`Connection::abort`](crate::Connection::abort).
    Aborted,
    /// A socket or TLS error.
    Io(String),
}

/// Why a send did not queue anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The connection is not open (still handshaking, closing or gone).
    #[error("the connection is not open")]
    NotOpen,
    /// The send queue is full; the slow-consumer policy dropped the message or is
    /// disconnecting the connection.
    #[error("the connection's send queue is full")]
    QueueFull,
    /// A ping or pong payload exceeded 125 bytes, or a control frame was not final.
    #[error("control frame payload exceeds 125 bytes")]
    ControlTooLong,
}
