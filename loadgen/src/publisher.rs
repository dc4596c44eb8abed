//! The broadcast publisher: one connection to the publish path, on its own OS thread
//! with a blocking socket, sending message `i` at `t0 + i / rate`.
//!
//! Open loop: the schedule never moves. A message sent late (the thread overslept, or
//! the server pushed back and the write blocked) still carries its *scheduled* time,
//! so the receivers' latency includes the delay: this is what corrects for coordinated
//! omission. How late the publisher itself was is recorded separately.

use std::io::Write;
use std::sync::Arc;

use bytes::BytesMut;
use ringcast_codec::encode_masked_frame;

use crate::clock::{now_ns, sleep_until};
use crate::conn::{BlockingStream, Target, open_blocking};
use crate::stats::Hist;
use crate::wire;

/// What the publisher did.
#[derive(Debug, Default)]
pub struct PublisherResult {
    /// Messages written completely.
    pub sent: u64,
    /// How late each send started relative to its schedule, µs.
    pub lag: Hist,
    /// Why it stopped early, if it did.
    pub error: Option<String>,
}

/// A connected publisher waiting for its start time.
pub struct Publisher {
    stream: BlockingStream,
}

impl Publisher {
    /// Connects and upgrades.
    pub fn connect(target: &Target, tls: Option<Arc<rustls::ClientConfig>>) -> Result<Publisher, String> {
        Ok(Publisher { stream: open_blocking(target, tls)? })
    }

    /// Starts the thread: `count` messages of `payload` bytes, message `i` at
    /// `t0 + i * 1e9 / rate` ns.
    pub fn start(
        mut self,
        t0: u64,
        rate: f64,
        count: u64,
        payload: usize,
        kind: wire::PayloadKind,
    ) -> std::thread::JoinHandle<(PublisherResult, Publisher)> {
        std::thread::Builder::new()
            .name("publisher".into())
            .spawn(move || {
                let mut result = PublisherResult::default();
                let mut message = wire::payload(payload, kind);
                let mut frame = BytesMut::with_capacity(message.len() + 14);
                for seq in 0..count {
                    let due = t0 + (seq as f64 * 1e9 / rate) as u64;
                    sleep_until(due);
                    result.lag.0.saturating_record((now_ns() - due) / 1000);
                    wire::stamp(&mut message, kind, seq, due);
                    frame.clear();
                    encode_masked_frame(&mut frame, kind.opcode(), true, &message, rand::random());
                    if let Err(e) = self.stream.write_all(&frame).and_then(|()| self.stream.flush()) {
                        result.error = Some(crate::conn::describe("publisher write", &e));
                        break;
                    }
                    result.sent += 1;
                }
                // The connection stays open until the caller drops it, after the drain.
                (result, self)
            })
            .expect("cannot start the publisher thread")
    }
}
