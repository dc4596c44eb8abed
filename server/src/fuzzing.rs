//! A handle on the sans-IO connection for the cargo-fuzz target `connection_machine`
//! (feature `fuzzing`; not part of the API). It plays the shard: feeds bytes, moves a
//! virtual clock, completes writes of chosen sizes and makes the handler's decisions, and
//! checks after every step that the connection's memory stays within its bounds.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use ringcast_codec::deflate::ServerDeflateConfig;
use ringcast_codec::{CloseCode, Incoming, PreparedMessage};

use crate::config::{Config, ServerBuilder, SlowConsumerPolicy};
use crate::conn::{Conn, Event, OutFrame, Outbound};
use crate::event::DisconnectReason;
use crate::id::ConnectionId;

/// One connection driven by a fuzzer.
pub struct FuzzConn {
    conn: Conn<()>,
    config: Config,
    now: Instant,
    ended: Option<DisconnectReason>,
}

/// What the fuzzer can do to a connection, one step at a time.
#[derive(Debug, Clone, Copy)]
pub enum Step<'a> {
    /// Bytes arrive from the peer.
    Input(&'a [u8]),
    /// The clock moves on by this many milliseconds (and due deadlines fire).
    Advance(u16),
    /// The socket takes at most this many queued bytes in one write.
    Write(u32),
    /// The application sends a text message of this many bytes.
    SendText(u16),
    /// The application closes with this code.
    Close(u16),
    /// The peer hangs up.
    Eof,
    /// The server stops.
    Stop,
    /// The application aborts.
    Abort,
}

impl FuzzConn {
    /// A connection under a configuration chosen by `selector` (limits, options,
    /// timeouts, slow-consumer policy, permessage-deflate).
    pub fn new(selector: u8) -> Self {
        let mut builder = ServerBuilder::new()
            .max_message_size(if selector & 1 == 0 { 1 << 10 } else { 64 << 10 })
            .max_frame_size(if selector & 2 == 0 { 512 } else { 64 << 10 })
            .send_queue_limit(if selector & 4 == 0 { 256 } else { 1 << 20 })
            .slow_consumer(if selector & 8 == 0 { SlowConsumerPolicy::DropNew } else { SlowConsumerPolicy::Disconnect })
            .frame_by_frame(selector & 16 != 0)
            .manual_close(selector & 32 != 0)
            .manual_pong(selector & 64 != 0)
            .idle_timeout((selector & 128 != 0).then_some(Duration::from_millis(100)))
            .handshake_timeout(Duration::from_millis(1000))
            .close_timeout(Duration::from_millis(500))
            .max_http_body(1 << 10)
            .permessage_deflate(ServerDeflateConfig::new().min_message_size(16).enabled(selector & 4 != 0));
        builder = builder.path(if selector & 1 == 0 { "/" } else { "/chat" });
        let config = builder.config().clone();
        let now = config.epoch;
        let peer = SocketAddr::from((Ipv4Addr::LOCALHOST, 1));
        let conn = Conn::new(ConnectionId::new(0, 0, 1), peer, (), &config, now);
        FuzzConn { conn, config, now, ended: None }
    }

    /// Applies one step, then checks the invariants; panics on a violation.
    pub fn step(&mut self, step: Step<'_>) {
        let (config, now) = (&self.config, self.now);
        match step {
            Step::Input(bytes) => {
                let mut owned = bytes.to_vec();
                let mut input = &mut owned[..];
                while let Some(event) = self.conn.poll_input(&mut input, config, now) {
                    match event {
                        Event::Upgrade { request, accept, deflate } => {
                            // Refuse some requests, as a handler would.
                            if request.path().len() % 3 == 2 {
                                self.conn.refuse(403, config, now);
                            } else {
                                self.conn.accept(request, &accept, deflate.as_deref(), &self.config);
                            }
                        }
                        Event::Http { body, .. } => {
                            let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                            self.conn.respond(answer.into_bytes(), config, now);
                        }
                        Event::Message(Incoming::Close(_)) => self.conn.after_close_frame(config, now),
                        Event::Message(Incoming::Text(text)) => {
                            assert!(std::str::from_utf8(text.as_bytes()).is_ok());
                            assert!(text.len() <= config.max_message_size);
                        }
                        Event::Message(Incoming::Binary(data)) => assert!(data.len() <= config.max_message_size),
                        Event::Message(Incoming::Fragment { payload, .. }) => {
                            // A fragment of a compressed message carries what its frame
                            // inflated to, which the message limit bounds.
                            let bound = if config.deflate.is_enabled() {
                                config.max_frame_size.max(config.max_message_size)
                            } else {
                                config.max_frame_size
                            };
                            assert!(payload.len() <= bound, "a fragment of {} bytes", payload.len());
                        }
                        Event::Message(_) | Event::Refused(_) | Event::HttpRefused(_) | Event::ProtocolError(_) => {}
                    }
                }
                assert!(input.is_empty(), "input left unconsumed");
            }
            Step::Advance(ms) => {
                self.now += Duration::from_millis(u64::from(ms));
                if self.conn.poll_timeout(config).is_some_and(|at| at <= self.now) {
                    self.conn.handle_timeout(config, self.now);
                }
            }
            Step::Write(limit) => {
                let available: Option<usize> = self.conn.poll_transmit().map(|frames| frames.map(OutFrame::len).sum());
                if let Some(available) = available {
                    self.conn.handle_written(available.min(limit as usize));
                }
            }
            Step::SendText(len) => {
                let text = "x".repeat(len as usize);
                let frame = OutFrame::single(PreparedMessage::text(&text, config.split).into_bytes(), now);
                let _ = self.conn.send_data(frame, Outbound::Message, config, now);
            }
            Step::Close(code) => {
                let frame = PreparedMessage::close(CloseCode::from(code), "bye").into_bytes();
                let _ = self.conn.close(frame, config, now);
            }
            Step::Eof => self.conn.handle_eof(),
            Step::Stop => self.conn.close_for(DisconnectReason::ServerStopping, CloseCode::Away, "", config, now),
            Step::Abort => self.conn.abort(),
        }
        self.check();
    }

    fn check(&mut self) {
        let config = &self.config;
        // Incomplete input is bounded by the largest thing the configuration admits.
        // With permessage-deflate, the inflater's state too while a compressed message arrives.
        let inflater = if config.deflate.is_enabled() { ringcast_codec::deflate::INFLATE_HEAP_BYTES } else { 0 };
        let input_bound =
            config.max_message_size.max(ringcast_codec::handshake::MAX_HEAD_LEN).max(config.max_http_body) * 2
                + 4096
                + inflater;
        assert!(self.conn.buffered_input() <= input_bound, "holds {} bytes of input", self.conn.buffered_input());
        // The queue: the bound, one message over it, an upgrade answer and control frames.
        let queue_bound = config.send_queue_limit + (64 << 10) + 4096;
        assert!(self.conn.queued_bytes() <= queue_bound, "queues {} bytes", self.conn.queued_bytes());
        if let Some(reason) = self.conn.poll_end() {
            assert!(self.ended.is_none(), "ended twice: {:?} then {reason:?}", self.ended);
            self.ended = Some(reason);
        }
        if self.ended.is_some() {
            assert!(self.conn.is_finished());
            assert_eq!(self.conn.queued_bytes(), 0, "an ended connection keeps nothing queued");
            assert_eq!(self.conn.buffered_input(), 0, "an ended connection keeps no input");
        }
    }

    /// Whether the connection has ended.
    pub fn ended(&self) -> bool {
        self.ended.is_some()
    }
}
