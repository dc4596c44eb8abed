//! An open connection: the [`Sender`] and [`Receiver`] handed to the application, and
//! the task that drives the socket between them.
//!
//! One task per connection owns the socket (plain or TLS, never split, so no lock is
//! taken per read or write). It gathers queued frames into one vectored write, reads into
//! a buffer that frames are split out of without copying, answers pings and runs the
//! closing handshake. Frames are masked by the sending task, before they are queued;
//! on a connection with permessage-deflate, data messages are compressed (then masked)
//! by the connection task instead, since compression with context takeover must follow
//! the order in which messages go out.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_core::Stream;
use ringcast_codec::deflate::{Compressor, DeflateParams};
use ringcast_codec::{CloseCode, CloseFrame, Decoder, Incoming, OpCode, close_payload, encode_masked_frame_with_rsv};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::PollSender;

use crate::error::{Error, Stage, from_stream_io};
use crate::message::{Message, close_frame, control_frame, masked_frame};

/// Frames gathered into one vectored write.
const MAX_IOVECS: usize = 64;
/// Stop taking queued frames once this many bytes wait for the socket.
const OUT_HIGH_WATER: usize = 256 << 10;
/// Rounds of the driver loop before it yields to other tasks.
const MAX_ROUNDS: usize = 32;

/// What a [`Sender`] asks of the connection task.
#[derive(Debug)]
pub(crate) enum Command {
    /// A masked data, ping or pong frame.
    Frame(Bytes),
    /// A data message to compress (if it pays), mask and queue: with permessage-deflate.
    Data(OpCode, Bytes),
    /// A masked close frame: starts the closing handshake.
    Close(Bytes),
    /// Close the connection, with a close frame (code 1000) or abruptly.
    Disconnect { send_close: bool },
}

/// What travels to the receiver; errors are boxed to keep the queue's slots small.
type Item = Result<Message, Box<Error>>;

/// The sending half of a connection. Cheap to clone; every clone feeds the same queue.
///
/// Messages are masked with a fresh random key by the calling task and queued; the
/// connection task writes whatever is queued in one system call. `send` waits only when
/// the queue ([`ClientConfig::send_queue`](crate::ClientConfig::send_queue)) is full.
/// Once the connection has closed, sending fails with [`Error::Closed`].
#[derive(Debug, Clone)]
pub struct Sender {
    tx: mpsc::Sender<Command>,
    deflate: Option<DeflateParams>,
}

impl Sender {
    /// Queues a message. A [`Message::Close`] starts the closing handshake; messages
    /// queued after it are dropped.
    pub async fn send(&self, message: Message) -> Result<(), Error> {
        let command = self.command_for(message)?;
        self.command(command).await
    }

    /// Queues a message without waiting: fails with [`Error::QueueFull`] when the send
    /// queue is full.
    pub fn try_send(&self, message: Message) -> Result<(), Error> {
        let command = self.command_for(message)?;
        self.tx.try_send(command).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Error::QueueFull,
            mpsc::error::TrySendError::Closed(_) => Error::Closed,
        })
    }

    /// Sends a text message.
    pub async fn send_text(&self, text: impl AsRef<str>) -> Result<(), Error> {
        let command = match self.deflate {
            Some(_) => Command::Data(OpCode::Text, Bytes::copy_from_slice(text.as_ref().as_bytes())),
            None => Command::Frame(masked_frame(OpCode::Text, text.as_ref().as_bytes())),
        };
        self.command(command).await
    }

    /// Sends a binary message.
    pub async fn send_binary(&self, data: impl AsRef<[u8]>) -> Result<(), Error> {
        let command = match self.deflate {
            Some(_) => Command::Data(OpCode::Binary, Bytes::copy_from_slice(data.as_ref())),
            None => Command::Frame(masked_frame(OpCode::Binary, data.as_ref())),
        };
        self.command(command).await
    }

    /// The permessage-deflate parameters agreed with the server, or `None` when the
    /// connection is uncompressed (not offered, or declined).
    pub fn permessage_deflate(&self) -> Option<DeflateParams> {
        self.deflate
    }

    fn command_for(&self, message: Message) -> Result<Command, Error> {
        Ok(match message {
            Message::Close(_) => Command::Close(message.encode()?),
            Message::Text(text) if self.deflate.is_some() => Command::Data(OpCode::Text, text.into_bytes()),
            Message::Binary(data) if self.deflate.is_some() => Command::Data(OpCode::Binary, data),
            _ => Command::Frame(message.encode()?),
        })
    }

    /// Sends a ping (at most 125 bytes of payload); the server's pong arrives as
    /// [`Message::Pong`].
    pub async fn ping(&self, payload: impl AsRef<[u8]>) -> Result<(), Error> {
        self.command(Command::Frame(control_frame(OpCode::Ping, payload.as_ref())?)).await
    }

    /// Sends an unsolicited pong (at most 125 bytes), e.g. as a heartbeat.
    pub async fn pong(&self, payload: impl AsRef<[u8]>) -> Result<(), Error> {
        self.command(Command::Frame(control_frame(OpCode::Pong, payload.as_ref())?)).await
    }

    /// Starts the closing handshake with `code` and `reason`. The [`Receiver`] goes on
    /// yielding messages until the server's close frame, then ends.
    pub async fn close(&self, code: CloseCode, reason: &str) -> Result<(), Error> {
        let frame = close_frame(Some(&CloseFrame { code, reason: reason.into() }));
        self.command(Command::Close(frame)).await
    }

    /// Ends the connection with a closing handshake once the messages queued before
    /// this call are written: the server is sent a close frame with code 1000 and its
    /// answer is awaited (at most
    /// [`ClientConfig::close_timeout`](crate::ClientConfig::close_timeout)).
    ///
    /// Returns once the request is queued; [`Sender::closed`] waits for the end. Does
    /// nothing on a connection that is already closed.
    pub async fn disconnect(&self) {
        let _ = self.tx.send(Command::Disconnect { send_close: true }).await;
    }

    /// Ends the connection without a closing handshake once the messages queued before
    /// this call are written: the TCP connection just ends and the server sees no close
    /// frame (1006).
    pub async fn abort(&self) {
        let _ = self.tx.send(Command::Disconnect { send_close: false }).await;
    }

    /// Waits until the connection has ended and its socket is closed.
    pub async fn closed(&self) {
        self.tx.closed().await;
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    async fn command(&self, command: Command) -> Result<(), Error> {
        self.tx.send(command).await.map_err(|_| Error::Closed)
    }
}

/// The receiving half of a connection: a [`Stream`] of messages, also usable without
/// any stream combinators through [`Receiver::next`].
///
/// It yields `Ok` messages (pings included, already answered) until the connection ends,
/// then, unless the client itself ended it without a close frame, one last item that says
/// how: `Ok(Message::Close(..))` for a closing handshake, `Err(..)` for a failure
/// ([`Error::ConnectionLost`], [`Error::Protocol`], a [`Stage::Close`] timeout). Then `None`.
///
/// The client stops reading from the socket while
/// [`ClientConfig::receive_queue`](crate::ClientConfig::receive_queue) messages wait here.
/// Dropping the receiver discards whatever arrives later (pings are still answered).
#[derive(Debug)]
pub struct Receiver {
    rx: mpsc::Receiver<Item>,
    /// Keeps the connection open while the receiver lives, even with every `Sender` gone;
    /// also carries the close frame that fails the connection after a protocol error.
    _alive: mpsc::Sender<Command>,
}

impl Receiver {
    /// The next message, or `None` once the connection has ended.
    pub async fn next(&mut self) -> Option<Result<Message, Error>> {
        poll_fn(|cx| self.poll_item(cx)).await
    }

    fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, Error>>> {
        let item = ready!(self.rx.poll_recv(cx)).map(|item| item.map_err(|e| *e));
        if let Some(Err(Error::Protocol(e))) = &item {
            // The connection task found the error while reading ahead and waits for the
            // application to reach it before failing the connection: whatever the
            // application sent in answer to the earlier messages is queued before this
            // close frame. (Should the queue be full, the task sends it after a while.)
            let frame = masked_frame(OpCode::Close, &close_payload(e.close_code(), ""));
            let _ = self._alive.try_send(Command::Close(frame));
        }
        Poll::Ready(item)
    }
}

impl Stream for Receiver {
    type Item = Result<Message, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_item(cx)
    }
}

/// Settings the connection task needs.
pub(crate) struct DriverConfig {
    pub(crate) decoder: Decoder,
    /// With permessage-deflate: the agreed parameters, the compressor of outgoing
    /// messages and the size below which messages go uncompressed.
    pub(crate) deflate: Option<(DeflateParams, Compressor, usize)>,
    pub(crate) read_buffer_size: usize,
    pub(crate) close_timeout: Duration,
    pub(crate) send_queue: usize,
    pub(crate) receive_queue: usize,
}

/// Starts the connection task on an upgraded stream; `leftover` holds bytes that arrived
/// after the handshake response.
pub(crate) fn spawn<S>(io: S, leftover: BytesMut, config: DriverConfig) -> (Sender, Receiver)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (command_tx, command_rx) = mpsc::channel(config.send_queue);
    let (item_tx, item_rx) = mpsc::channel(config.receive_queue);
    let mut rbuf = leftover;
    rbuf.reserve(config.read_buffer_size);
    let params = config.deflate.as_ref().map(|(params, ..)| *params);
    let driver = Driver {
        deflate: config.deflate.map(|(_, compressor, min_size)| OutgoingDeflate { compressor, min_size }),
        io,
        rbuf,
        read_size: config.read_buffer_size,
        decoder: config.decoder,
        commands: Some(command_rx),
        out: VecDeque::new(),
        out_len: 0,
        needs_flush: false,
        inbound: Some(PollSender::new(item_tx)),
        parked: VecDeque::new(),
        close_timeout: config.close_timeout,
        close_sent: false,
        close_received: false,
        failed: false,
        fail_frame: None,
        abort: false,
        read_eof: false,
        reported: false,
        deadline: None,
    };
    tokio::spawn(driver.run());
    (Sender { tx: command_tx.clone(), deflate: params }, Receiver { rx: item_rx, _alive: command_tx })
}

/// How the socket is let go of.
enum Finish {
    /// After a closing handshake: shut the write side down properly (TLS `close_notify`).
    Graceful,
    /// Just drop it.
    Abort,
}

/// How a connection with permessage-deflate compresses what it sends.
struct OutgoingDeflate {
    compressor: Compressor,
    /// Messages shorter than this go uncompressed.
    min_size: usize,
}

impl OutgoingDeflate {
    /// One masked frame carrying `payload`, compressed when that pays.
    fn frame(&mut self, opcode: OpCode, payload: &[u8]) -> Bytes {
        if payload.len() >= self.min_size {
            let mut compressed = Vec::new();
            if self.compressor.compress(payload, &mut compressed).is_ok()
                // With context takeover the server's window already holds this message
                // once it is compressed, so it must go out compressed.
                && (compressed.len() < payload.len() || self.compressor.context_takeover())
            {
                let mut out = BytesMut::with_capacity(14 + compressed.len());
                encode_masked_frame_with_rsv(&mut out, opcode, true, 0b100, &compressed, rand::random());
                return out.freeze();
            }
        }
        masked_frame(opcode, payload)
    }
}

struct Driver<S> {
    io: S,
    /// `Some` when permessage-deflate was negotiated.
    deflate: Option<OutgoingDeflate>,
    rbuf: BytesMut,
    read_size: usize,
    decoder: Decoder,
    /// `None` once every sender (the receiver's keep-alive included) is gone.
    commands: Option<mpsc::Receiver<Command>>,
    out: VecDeque<Bytes>,
    out_len: usize,
    needs_flush: bool,
    /// `None` once the receiver is gone: incoming messages are then dropped.
    inbound: Option<PollSender<Item>>,
    /// Items waiting for room in the receiver's queue; nothing is read meanwhile.
    parked: VecDeque<Item>,
    close_timeout: Duration,
    close_sent: bool,
    close_received: bool,
    /// A protocol error was found: input is ignored from now on.
    failed: bool,
    /// The close frame that reports the protocol error, until it is queued.
    fail_frame: Option<Bytes>,
    /// `abort()`: write what is queued, then drop the socket.
    abort: bool,
    read_eof: bool,
    /// The last item (close or error) has been handed to the receiver.
    reported: bool,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Driver<S> {
    async fn run(mut self) {
        let finish = poll_fn(|cx| self.poll_io(cx)).await;
        if let Finish::Graceful = finish {
            let limit = Instant::now() + Duration::from_millis(500).min(self.close_timeout);
            let _ = tokio::time::timeout_at(limit, self.io.shutdown()).await;
        }
        let Driver { io, commands, mut parked, mut inbound, .. } = self;
        drop(io);
        // Senders waiting in `closed()` learn of the end now, not once the receiver has
        // read the last item.
        drop(commands);
        poll_fn(|cx| flush_inbound(&mut inbound, &mut parked, cx)).await;
    }

    /// Runs the connection until the socket can be let go of.
    fn poll_io(&mut self, cx: &mut Context<'_>) -> Poll<Finish> {
        for _ in 0..MAX_ROUNDS {
            let mut progress = !self.parked.is_empty() && {
                let before = self.parked.len();
                let _ = flush_inbound(&mut self.inbound, &mut self.parked, cx);
                self.parked.len() != before
            };
            if let Some(frame) = self.fail_frame.take_if(|_| self.inbound.is_none() || self.close_sent) {
                // No receiver will ask for the close frame that reports a protocol error.
                self.start_close(frame);
            }
            if let Some(deadline) = &mut self.deadline
                && deadline.as_mut().poll(cx).is_ready()
            {
                if let Some(frame) = self.fail_frame.take() {
                    // The application did not reach the error in time: fail without it.
                    self.deadline = None;
                    self.start_close(frame);
                    continue;
                }
                if self.close_sent && !self.close_received && !self.failed && !self.abort {
                    self.report(Err(Box::new(Error::Timeout { stage: Stage::Close })));
                }
                return Poll::Ready(Finish::Abort);
            }
            progress |= self.poll_commands(cx);
            match self.poll_write(cx) {
                Ok(wrote) => progress |= wrote,
                Err(e) => {
                    self.report(Err(Box::new(from_stream_io(e))));
                    return Poll::Ready(Finish::Abort);
                }
            }
            let flushed = self.out.is_empty() && !self.needs_flush;
            if self.abort && flushed {
                return Poll::Ready(Finish::Abort);
            }
            if self.read_eof {
                // The server has closed: after a closing handshake (or a failure we
                // announced) that is the expected end; otherwise the connection was lost.
                if !(self.close_received || self.failed) {
                    self.report(Err(Box::new(Error::ConnectionLost)));
                    return Poll::Ready(Finish::Abort);
                }
                if flushed {
                    return Poll::Ready(Finish::Graceful);
                }
            } else if !self.abort {
                match self.poll_read(cx) {
                    Ok(read) => progress |= read,
                    Err(e) => {
                        // A reset after our close frame went out is how some servers end.
                        if !(self.close_received || self.failed) {
                            self.report(Err(Box::new(from_stream_io(e))));
                        }
                        return Poll::Ready(Finish::Abort);
                    }
                }
            }
            if !progress {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Takes queued commands while there is room in the write queue.
    fn poll_commands(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        while !self.abort && self.out_len < OUT_HIGH_WATER {
            let Some(commands) = &mut self.commands else { break };
            match commands.poll_recv(cx) {
                Poll::Ready(Some(command)) => {
                    progress = true;
                    self.command(command);
                }
                Poll::Ready(None) => {
                    // No sender and no receiver left: nobody can use the connection.
                    progress = true;
                    self.commands = None;
                    self.start_close(close_frame(Some(&CloseFrame { code: CloseCode::Normal, reason: "".into() })));
                }
                Poll::Pending => break,
            }
        }
        progress
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Frame(frame) if !self.close_sent => self.queue(frame),
            Command::Data(opcode, payload) if !self.close_sent => {
                let frame = match &mut self.deflate {
                    Some(deflate) => deflate.frame(opcode, &payload),
                    None => masked_frame(opcode, &payload),
                };
                self.queue(frame);
            }
            Command::Frame(_) | Command::Data(..) => {}
            Command::Close(frame) => self.start_close(frame),
            Command::Disconnect { send_close: true } => {
                self.start_close(close_frame(Some(&CloseFrame { code: CloseCode::Normal, reason: "".into() })))
            }
            Command::Disconnect { send_close: false } => {
                self.abort = true;
                self.arm_deadline();
            }
        }
    }

    fn queue(&mut self, frame: Bytes) {
        self.out_len += frame.len();
        self.out.push_back(frame);
    }

    /// Queues our close frame, unless one went out already.
    fn start_close(&mut self, frame: Bytes) {
        if !self.close_sent {
            self.close_sent = true;
            self.queue(frame);
            self.arm_deadline();
        }
    }

    fn arm_deadline(&mut self) {
        if self.deadline.is_none() {
            self.deadline = Some(Box::pin(tokio::time::sleep(self.close_timeout)));
        }
    }

    /// Writes queued frames, as many per system call as an `iovec` array holds.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> std::io::Result<bool> {
        let mut progress = false;
        while !self.out.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let mut count = 0;
            for (slot, frame) in slices.iter_mut().zip(&self.out) {
                *slot = IoSlice::new(frame);
                count += 1;
            }
            let mut written = match Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..count]) {
                Poll::Ready(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => return Ok(progress),
            };
            progress = true;
            self.needs_flush = true;
            self.out_len -= written;
            while written > 0 {
                let Some(front) = self.out.front_mut() else { break };
                if written >= front.len() {
                    written -= front.len();
                    self.out.pop_front();
                } else {
                    front.advance(written);
                    written = 0;
                }
            }
        }
        if self.needs_flush {
            match Pin::new(&mut self.io).poll_flush(cx) {
                Poll::Ready(Ok(())) => {
                    self.needs_flush = false;
                    progress = true;
                }
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => {}
            }
        }
        Ok(progress)
    }

    /// Decodes what is buffered, then reads more, until the receiver's queue is full or
    /// the socket has nothing.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> std::io::Result<bool> {
        let mut progress = false;
        loop {
            if !self.parked.is_empty() {
                return Ok(progress);
            }
            if self.discarding() {
                self.rbuf.clear();
            } else {
                match self.decoder.decode_buf(&mut self.rbuf) {
                    Ok(Some(incoming)) => {
                        progress = true;
                        self.incoming(incoming);
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        // The close frame goes out once the receiver has yielded the error
                        // (see `Receiver::poll_item`), after the answers to earlier messages.
                        progress = true;
                        self.failed = true;
                        self.fail_frame = Some(masked_frame(OpCode::Close, &close_payload(e.close_code(), "")));
                        self.arm_deadline();
                        self.report(Err(Box::new(Error::Protocol(e))));
                        continue;
                    }
                }
            }
            let want = self.read_size;
            if self.rbuf.capacity() - self.rbuf.len() < want {
                self.rbuf.reserve(want);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf) {
                Poll::Ready(Ok(0)) => {
                    self.read_eof = true;
                    return Ok(true);
                }
                Poll::Ready(Ok(_)) => progress = true,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => {
                    if self.rbuf.is_empty() {
                        // Idle: give the buffer back rather than hold it per connection;
                        // the next read takes a fresh one.
                        self.rbuf = BytesMut::new();
                    }
                    return Ok(progress);
                }
            }
        }
    }

    /// After the server's close frame or a protocol error, input is only read to notice
    /// the end of the connection.
    fn discarding(&self) -> bool {
        self.close_received || self.failed
    }

    fn incoming(&mut self, incoming: Incoming<'static>) {
        let message = match incoming {
            Incoming::Text(text) => Message::Text(text.into_utf8_bytes()),
            Incoming::Binary(data) => Message::Binary(data.into_bytes()),
            Incoming::Ping(payload) => {
                if !self.close_sent {
                    self.queue(masked_frame(OpCode::Pong, &payload));
                }
                Message::Ping(payload.into_bytes())
            }
            Incoming::Pong(payload) => Message::Pong(payload.into_bytes()),
            Incoming::Close(frame) => {
                self.close_received = true;
                // Echo the code (RFC 6455 §5.5.1), without the reason.
                let echo = frame.as_ref().map(|f| CloseFrame { code: f.code, reason: "".into() });
                self.start_close(close_frame(echo.as_ref()));
                self.arm_deadline();
                self.report(Ok(Message::Close(frame)));
                return;
            }
            // Only produced in frame-by-frame assembly, which the client does not use.
            Incoming::Fragment { .. } => return,
        };
        self.deliver(Ok(message));
    }

    fn deliver(&mut self, item: Item) {
        if self.inbound.is_some() {
            self.parked.push_back(item);
        }
    }

    /// Hands over the item that ends the stream: only the first such is kept.
    fn report(&mut self, item: Item) {
        if !self.reported {
            self.reported = true;
            self.deliver(item);
        }
    }
}

/// Moves parked items into the receiver's queue; `Ready` once none is left (or the
/// receiver is gone).
fn flush_inbound(
    inbound: &mut Option<PollSender<Item>>,
    parked: &mut VecDeque<Item>,
    cx: &mut Context<'_>,
) -> Poll<()> {
    while !parked.is_empty() {
        let Some(sender) = inbound else {
            parked.clear();
            break;
        };
        match ready!(sender.poll_reserve(cx)) {
            Ok(()) => {
                if let Some(item) = parked.pop_front() {
                    let _ = sender.send_item(item);
                }
            }
            Err(_) => {
                *inbound = None;
                parked.clear();
            }
        }
    }
    Poll::Ready(())
}
