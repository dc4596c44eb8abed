//! The event interface: one [`Handler`] shared by every shard.

use std::net::SocketAddr;

use ringcast_codec::CloseFrame;
use ringcast_codec::handshake::Request;

use crate::access::{Access, Denied};
use crate::api::{Connection, ConnectionRef, HttpRequest, HttpResponse};
use crate::event::{Allow, DisconnectReason, Frame};
use crate::id::ConnectionId;

/// Connection events, called on the worker thread that owns the connection.
///
/// Every method has a default, so a handler implements only what it needs. Methods take
/// `&self` because one handler serves all workers; keep per-connection state in
/// [`Handler::Data`] (owned by the connection, dropped with it) and shared state behind
/// atomics or locks of your choice. Handlers run on the I/O thread: keep them short.
///
/// Event order for one connection: `on_connect`, then `authenticate` (which calls
/// `allow` unless overridden), then `on_handshake_response_sent`, then any number of
/// message events, then `on_disconnect` exactly once.
///
/// # Who a connection is, and what it may do
///
/// [`Handler::authenticate`] sees the upgrade request together with the connection's id
/// and data: verify the credentials there (refusing with 401 answers the handshake) and
/// keep the identity they establish in [`Handler::Data`], boxed so that connections
/// without one stay small, or in a table of your own keyed by the id.
/// [`Handler::check`] then decides every [`Connection::subscribe`] and
/// [`Connection::publish`] from that identity:
///
/// ```
/// use std::net::SocketAddr;
/// use ringcast::{Access, Allow, Connection, ConnectionId, ConnectionRef, Denied, Handler, Request};
///
/// #[derive(Default)]
/// struct Member {
///     user: Option<Box<str>>, // 16 bytes per connection; box a larger identity
/// }
///
/// struct Rooms;
///
/// impl Handler for Rooms {
///     type Data = Member;
///
///     fn authenticate(&self, request: &Request, _: SocketAddr, _: ConnectionId, data: &mut Member) -> Allow {
///         match request.query_param("user") { // a real server verifies a signed token here
///             Some(user) => {
///                 data.user = Some(user.into());
///                 Allow::Yes
///             }
///             None => Allow::Status(401),
///         }
///     }
///
///     fn check(&self, conn: &ConnectionRef<'_, Member>, access: Access<'_>) -> Result<(), Denied> {
///         let user = conn.data().user.as_deref().unwrap_or_default();
///         match access.topic().strip_prefix("user:") {
///             Some(owner) if owner != user => Err(Denied::new("another user's channel")),
///             _ => Ok(()),
///         }
///     }
///
///     fn on_text(&self, conn: &mut Connection<'_, Member>, topic: &str) {
///         if let Err(denied) = conn.try_subscribe(topic) {
///             let _ = conn.send(&format!("refused: {denied}"));
///         }
///     }
/// }
/// ```
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

    /// Decides whether to accept a valid upgrade request, like [`Handler::allow`] (which
    /// it calls unless overridden), with the connection's `id` and `data` at hand: the
    /// place to verify credentials and keep the identity they establish (see the
    /// trait's documentation). Refusing answers with 403 or the given status, e.g. 401
    /// for a missing or bad token.
    fn authenticate(&self, request: &Request, peer: SocketAddr, id: ConnectionId, data: &mut Self::Data) -> Allow {
        self.allow(request, peer)
    }

    /// Decides whether the connection may do `access`: consulted by
    /// [`Connection::subscribe`], [`Connection::try_subscribe`] and
    /// [`Connection::publish`] (and by [`Connection::check`], for a handler that asks
    /// itself). Sends the application makes itself ([`Connection::send_to`],
    /// [`Broadcaster::send`](crate::Broadcaster::send)) are not checked. Allows
    /// everything by default. Keep it short: it runs on the I/O thread, once per
    /// subscription or publish.
    fn check(&self, conn: &ConnectionRef<'_, Self::Data>, access: Access<'_>) -> Result<(), Denied> {
        Ok(())
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
