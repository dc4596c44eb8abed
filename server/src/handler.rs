//! The event interface: one [`Handler`] shared by every shard.

use std::net::SocketAddr;

use ringcast_codec::CloseFrame;
use ringcast_codec::handshake::Request;

use crate::api::{Connection, HttpRequest, HttpResponse};
use crate::event::{Allow, DisconnectReason, Frame};
use crate::id::ConnectionId;

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
    /// accepted and dropped when the connection ends. Use `()` if not needed. It lives
    /// inline in the shard's connection table, so keep it small: a large value costs
    /// every idle connection (box it if it is rarely set).
    type Data: Default + 'static;

    /// A TCP connection was accepted; the WebSocket handshake has not happened yet.
    fn on_connect(&self, id: ConnectionId, peer: SocketAddr) {}

    /// Decides whether to accept a valid upgrade request (after path and protocol
    /// checks). Refusing answers with 403 or the given status.
    fn allow(&self, request: &Request, peer: SocketAddr) -> Allow {
        Allow::Yes
    }

    /// The `101 Switching Protocols` response was queued; the connection is open. A good
    /// place to initialise [`Connection::data_mut`] from [`Connection::request`].
    fn on_handshake_response_sent(&self, conn: &mut Connection<'_, Self::Data>) {}

    /// A whole text message arrived (not called in frame-by-frame mode).
    fn on_text(&self, conn: &mut Connection<'_, Self::Data>, text: &str) {}

    /// A whole binary message arrived (not called in frame-by-frame mode).
    fn on_binary(&self, conn: &mut Connection<'_, Self::Data>, data: &[u8]) {}

    /// A data frame arrived, in frame-by-frame mode.
    fn on_frame(&self, conn: &mut Connection<'_, Self::Data>, frame: Frame<'_>) {}

    /// A ping arrived. A pong with the same payload has already been queued unless
    /// [`Options::manual_pong`](crate::Options::manual_pong) is set.
    fn on_ping(&self, conn: &mut Connection<'_, Self::Data>, payload: &[u8]) {}

    /// A pong arrived.
    fn on_pong(&self, conn: &mut Connection<'_, Self::Data>, payload: &[u8]) {}

    /// A close frame arrived (`None`: no status code). The reply is sent automatically
    /// after this returns unless [`Options::manual_close`](crate::Options::manual_close) is set.
    fn on_close(&self, conn: &mut Connection<'_, Self::Data>, frame: Option<&CloseFrame>) {}

    /// The connection ended. Called exactly once for every connection that got
    /// `on_connect`, whatever happened in between.
    fn on_disconnect(&self, conn: &mut Connection<'_, Self::Data>, reason: &DisconnectReason) {}

    /// A plain HTTP request (no upgrade headers) arrived. Return a response to serve it,
    /// or `None` to answer `426 Upgrade Required`. The connection closes afterwards.
    fn on_http(&self, request: &HttpRequest<'_, Self::Data>) -> Option<HttpResponse> {
        None
    }
}
