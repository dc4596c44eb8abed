//! The event-handler style: implement [`EventHandler`], call [`spawn`], get callbacks.
//!
//! This maps the "connect asynchronously, then *on connect*" flow of component libraries:
//! [`spawn`] returns at once with a [`ClientHandle`]; the connection is opened in a task,
//! [`EventHandler::on_connect`] receives the [`Sender`] once the handshake has completed
//! (sending earlier is impossible: there is no sender before that), every message then
//! reaches its callback, and [`EventHandler::on_disconnect`] always comes last, with the
//! reason — including a failure to connect at all.

use std::future::Future;

use bytes::Bytes;
use ringcast_codec::{CloseFrame, Utf8Bytes};
use tokio::sync::watch;
use tokio::task::{JoinError, JoinHandle};

use crate::config::ClientConfig;
use crate::connect::connect;
use crate::connection::Sender;
use crate::error::Error;
use crate::message::Message;

/// Callbacks for the life of one connection. Every method has a default that does
/// nothing; implement the ones you need, as `async fn` if you like.
///
/// The callbacks run one at a time, in the order of events, on the connection's task:
/// while one runs, no further message is taken from the connection (it waits, up to
/// [`ClientConfig::receive_queue`] messages, then the socket is not read). Pings are
/// answered without waiting for [`on_ping`](EventHandler::on_ping).
///
/// ```
/// use ringcast_client::{EventHandler, Sender, Utf8Bytes};
///
/// struct Chat {
///     sender: Option<Sender>,
/// }
///
/// impl EventHandler for Chat {
///     async fn on_connect(&mut self, sender: Sender) {
///         sender.send_text("hello").await.ok();
///         self.sender = Some(sender);
///     }
///
///     async fn on_text(&mut self, text: Utf8Bytes) {
///         println!("got {text}");
///     }
/// }
/// ```
pub trait EventHandler: Send + 'static {
    /// The opening handshake has completed: from now on `sender` can send.
    fn on_connect(&mut self, sender: Sender) -> impl Future<Output = ()> + Send {
        drop(sender);
        async {}
    }

    /// A text message arrived.
    fn on_text(&mut self, text: Utf8Bytes) -> impl Future<Output = ()> + Send {
        drop(text);
        async {}
    }

    /// A binary message arrived.
    fn on_binary(&mut self, data: Bytes) -> impl Future<Output = ()> + Send {
        drop(data);
        async {}
    }

    /// A ping arrived (it has been answered already).
    fn on_ping(&mut self, payload: Bytes) -> impl Future<Output = ()> + Send {
        drop(payload);
        async {}
    }

    /// A pong arrived.
    fn on_pong(&mut self, payload: Bytes) -> impl Future<Output = ()> + Send {
        drop(payload);
        async {}
    }

    /// The server's close frame arrived (and has been answered): `None` when it carried
    /// no status code. [`on_disconnect`](EventHandler::on_disconnect) follows.
    fn on_close(&mut self, frame: Option<&CloseFrame>) -> impl Future<Output = ()> + Send {
        let _ = frame;
        async {}
    }

    /// The connection has ended, or could not be opened: always the last callback.
    fn on_disconnect(&mut self, reason: &DisconnectReason) -> impl Future<Output = ()> + Send {
        let _ = reason;
        async {}
    }
}

/// How a connection driven by [`spawn`] ended.
#[derive(Debug)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The connection could not be opened; [`EventHandler::on_connect`] was never called.
    ConnectFailed(Error),
    /// The closing handshake completed, started by either side: the server's close frame.
    Closed(Option<CloseFrame>),
    /// The client ended the connection without a close frame (`abort()`), or
    /// cancelled it before it was open.
    Aborted,
    /// The connection failed: lost without a closing handshake, a protocol error, a
    /// closing handshake that timed out.
    Failed(Error),
}

impl DisconnectReason {
    /// The error, for [`DisconnectReason::ConnectFailed`] and [`DisconnectReason::Failed`].
    pub fn error(&self) -> Option<&Error> {
        match self {
            DisconnectReason::ConnectFailed(e) | DisconnectReason::Failed(e) => Some(e),
            _ => None,
        }
    }
}

/// Where a spawned connection stands.
#[derive(Debug, Clone)]
enum State {
    Connecting,
    Connected(Sender),
    Ended,
}

/// The handle [`spawn`] returns: wait for the connection, disconnect it, and get the
/// handler back when it is over. Dropping the handle leaves the connection running.
#[derive(Debug)]
pub struct ClientHandle<H> {
    task: JoinHandle<(H, DisconnectReason)>,
    state: watch::Receiver<State>,
    disconnect: watch::Sender<Option<bool>>,
}

/// Opens a connection in a new task and drives `handler` with its events; returns at once.
///
/// Must be called within a tokio runtime. Connect failures reach
/// [`EventHandler::on_disconnect`] as [`DisconnectReason::ConnectFailed`], and
/// [`ClientHandle::join`] returns the same reason.
///
/// ```no_run
/// use ringcast_client::{ClientConfig, DisconnectReason, EventHandler, Sender, Utf8Bytes};
///
/// struct Printer;
///
/// impl EventHandler for Printer {
///     async fn on_connect(&mut self, sender: Sender) {
///         let _ = sender.send_text("subscribe").await;
///     }
///     async fn on_text(&mut self, text: Utf8Bytes) {
///         println!("{text}");
///     }
///     async fn on_disconnect(&mut self, reason: &DisconnectReason) {
///         println!("gone: {reason:?}");
///     }
/// }
///
/// # async fn run() {
/// let handle = ringcast_client::spawn(ClientConfig::new("localhost", 5050), Printer);
/// // ... later:
/// handle.disconnect();
/// let (_printer, reason) = handle.join().await.unwrap();
/// # }
/// ```
pub fn spawn<H: EventHandler>(config: ClientConfig, handler: H) -> ClientHandle<H> {
    let (state_tx, state) = watch::channel(State::Connecting);
    let (disconnect, disconnect_rx) = watch::channel(None);
    let task = tokio::spawn(run(config, handler, state_tx, disconnect_rx));
    ClientHandle { task, state, disconnect }
}

async fn run<H: EventHandler>(
    config: ClientConfig,
    mut handler: H,
    state: watch::Sender<State>,
    mut disconnect: watch::Receiver<Option<bool>>,
) -> (H, DisconnectReason) {
    let connected = tokio::select! {
        result = connect(&config) => Some(result),
        Ok(_) = disconnect.wait_for(Option::is_some) => None,
    };
    let (sender, mut receiver) = match connected {
        Some(Ok(pair)) => pair,
        Some(Err(e)) => return finish(handler, &state, DisconnectReason::ConnectFailed(e)).await,
        None => return finish(handler, &state, DisconnectReason::Aborted).await,
    };
    state.send_replace(State::Connected(sender.clone()));
    handler.on_connect(sender.clone()).await;
    let mut reason = DisconnectReason::Aborted;
    let mut asked = false;
    loop {
        let item = tokio::select! {
            biased;
            item = receiver.next() => item,
            Ok(send_close) = async { disconnect.wait_for(Option::is_some).await.map(|asked| *asked) }, if !asked => {
                asked = true;
                if send_close.unwrap_or(true) {
                    sender.disconnect().await;
                } else {
                    sender.abort().await;
                }
                continue;
            }
        };
        match item {
            None => break,
            Some(Ok(Message::Text(text))) => handler.on_text(text).await,
            Some(Ok(Message::Binary(data))) => handler.on_binary(data).await,
            Some(Ok(Message::Ping(payload))) => handler.on_ping(payload).await,
            Some(Ok(Message::Pong(payload))) => handler.on_pong(payload).await,
            Some(Ok(Message::Close(frame))) => {
                handler.on_close(frame.as_ref()).await;
                reason = DisconnectReason::Closed(frame);
            }
            Some(Err(e)) => reason = DisconnectReason::Failed(e),
        }
    }
    finish(handler, &state, reason).await
}

async fn finish<H: EventHandler>(
    mut handler: H,
    state: &watch::Sender<State>,
    reason: DisconnectReason,
) -> (H, DisconnectReason) {
    state.send_replace(State::Ended);
    handler.on_disconnect(&reason).await;
    (handler, reason)
}

impl<H> ClientHandle<H> {
    /// Waits for the opening handshake: the connection's [`Sender`], or `None` if it could
    /// not be opened (the reason comes with [`ClientHandle::join`]) or has already ended.
    pub async fn connected(&mut self) -> Option<Sender> {
        let state = self.state.wait_for(|s| !matches!(s, State::Connecting)).await.ok()?;
        match &*state {
            State::Connected(sender) => Some(sender.clone()),
            _ => None,
        }
    }

    /// The connection's [`Sender`], if it is open now.
    pub fn sender(&self) -> Option<Sender> {
        match &*self.state.borrow() {
            State::Connected(sender) => Some(sender.clone()),
            _ => None,
        }
    }

    /// Ends the connection with a close frame (code 1000, see [`Sender::disconnect`]);
    /// while still connecting, gives up connecting ([`DisconnectReason::Aborted`]).
    /// Returns at once; [`ClientHandle::join`] waits.
    pub fn disconnect(&self) {
        self.end(true);
    }

    /// Ends the connection without a close frame (see [`Sender::abort`]); while still
    /// connecting, gives up connecting. Returns at once; [`ClientHandle::join`] waits.
    pub fn abort(&self) {
        self.end(false);
    }

    fn end(&self, send_close: bool) {
        self.disconnect.send_if_modified(|asked| {
            if asked.is_none() {
                *asked = Some(send_close);
                true
            } else {
                false
            }
        });
    }

    /// Whether the connection task has finished.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits for the end of the connection and returns the handler with the reason.
    /// Fails only if the task panicked or the runtime is shutting down.
    pub async fn join(self) -> Result<(H, DisconnectReason), JoinError> {
        self.task.await
    }
}
