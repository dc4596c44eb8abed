//! The event interface: one [`Handler`] shared by every shard.

use std::net::SocketAddr;

use ringcast_codec::handshake::Request;
use ringcast_codec::{CloseFrame, OpCode};

use crate::connection::{Connection, ConnectionId};
use crate::http::{HttpRequest, HttpResponse};

/// Whether to accept an upgrade request, decided by [`Handler::allow`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// Why a connection ended, passed to [`Handler::on_disconnect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The closing handshake completed; the code is the one the peer sent (or 1005).
    Closed(ringcast_codec::CloseCode),
    /// The peer closed TCP without a closing handshake.
    Eof,
    /// The peer broke the protocol; the connection was closed with this code.
    Protocol(ringcast_codec::ProtocolError),
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
    /// The application called [`Connection::abort`].
    Aborted,
    /// A socket or TLS error.
    Io(String),
}

/// Connection events, called on the worker thread that owns the connection.
///
/// Every method has a default, so a handler implements only what it needs. Methods take
/// `&self` because one handler serves all workers; keep per-connection state in
/// [`Handler::Data`] (owned by the connection, dropped with it) and shared state behind
/// atomics or locks of your choice. Handlers run on the I/O thread: keep them short.
///
/// Event order for one connection: `on_connect`, then `allow`, then
/// `on_handshake_response_sent`, then any number of message events, then
/// `on_disconnect` exactly once.
#[allow(unused_variables)]
pub trait Handler: Send + Sync + 'static + Sized {
    /// Per-connection user data, created with `Default` when the TCP connection is
    /// accepted and dropped when the connection ends. Use `()` if not needed.
    type Data: Default + 'static;

    /// A TCP connection was accepted; the WebSocket handshake has not happened yet.
    fn on_connect(&self, id: ConnectionId, peer: SocketAddr) {}

    /// Decides whether to accept a valid upgrade request (after path and protocol
    /// checks). Refusing answers with 403 or the given status.
    fn allow(&self, request: &Request, peer: SocketAddr) -> Allow {
        Allow::Yes
    }

    /// The `101 Switching Protocols` response was sent; the connection is open. A good
    /// place to initialise [`Connection::data_mut`].
    fn on_handshake_response_sent(&self, conn: &mut Connection<'_, Self>) {}

    /// A whole text message arrived (not called in frame-by-frame mode).
    fn on_text(&self, conn: &mut Connection<'_, Self>, text: &str) {}

    /// A whole binary message arrived (not called in frame-by-frame mode).
    fn on_binary(&self, conn: &mut Connection<'_, Self>, data: &[u8]) {}

    /// A data frame arrived, in frame-by-frame mode.
    fn on_frame(&self, conn: &mut Connection<'_, Self>, frame: Frame<'_>) {}

    /// A ping arrived. A pong with the same payload has already been queued unless
    /// [`Options::manual_pong`](crate::Options::manual_pong) is set.
    fn on_ping(&self, conn: &mut Connection<'_, Self>, payload: &[u8]) {}

    /// A pong arrived.
    fn on_pong(&self, conn: &mut Connection<'_, Self>, payload: &[u8]) {}

    /// A close frame arrived (`None`: no status code). The reply is sent automatically
    /// after this returns unless [`Options::manual_close`](crate::Options::manual_close) is set.
    fn on_close(&self, conn: &mut Connection<'_, Self>, frame: Option<&CloseFrame>) {}

    /// The connection ended. Called exactly once for every connection that got
    /// `on_connect`, whatever happened in between.
    fn on_disconnect(&self, conn: &mut Connection<'_, Self>, reason: &DisconnectReason) {}

    /// A plain HTTP request (no upgrade headers) arrived. Return a response to serve it,
    /// or `None` to answer `426 Upgrade Required`. The connection closes afterwards.
    fn on_http(&self, request: &HttpRequest<'_, Self>) -> Option<HttpResponse> {
        None
    }
}
