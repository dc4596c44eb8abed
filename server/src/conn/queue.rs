//! A connection's send queue: shared frames, the slow-consumer bound, and the messages
//! that wait while the application streams a fragmented one.

use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;

/// One encoded message (possibly several frames) as a shard holds it: every subscriber
/// on the shard queues a reference to this one value.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) bytes: Bytes,
    /// When the message was handed to the server, for publish-to-write latency; `None`
    /// for bytes that are not a delivery (the handshake response).
    pub(crate) published: Option<Instant>,
}

/// A queued reference to an [`Outgoing`] message, with how much of it was already written.
#[derive(Debug, Clone)]
pub(crate) struct OutFrame {
    message: Rc<Outgoing>,
    start: usize,
}

impl OutFrame {
    pub(crate) fn new(message: Rc<Outgoing>) -> Self {
        OutFrame { message, start: 0 }
    }

    /// Bytes for this connection alone that count as a delivery (a reply, a unicast).
    pub(crate) fn single(bytes: Bytes, now: Instant) -> Self {
        Self::new(Rc::new(Outgoing { bytes, published: Some(now) }))
    }

    /// Bytes that are not a message (the handshake response, an HTTP answer): written in
    /// order with the frames, left out of the delivery latency.
    pub(crate) fn untimed(bytes: Bytes) -> Self {
        Self::new(Rc::new(Outgoing { bytes, published: None }))
    }

    /// The bytes still to be written.
    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.message.bytes[self.start..]
    }

    /// The number of bytes still to be written.
    pub(crate) fn len(&self) -> usize {
        self.message.bytes.len() - self.start
    }

    pub(crate) fn published(&self) -> Option<Instant> {
        self.message.published
    }

    /// Whether two frames share one encoded message (the zero-copy property).
    #[cfg(test)]
    pub(crate) fn shares_bytes_with(&self, other: &OutFrame) -> bool {
        Rc::ptr_eq(&self.message, &other.message)
    }
}

/// What kind of frame is being queued, which decides whether it may go out now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outbound {
    /// A whole data message: waits while a fragmented message is being streamed.
    Message,
    /// One fragment of a message the application streams frame by frame.
    Fragment {
        /// Whether it is the last one.
        fin: bool,
    },
    /// Ping, pong or close: may go between fragments.
    Control,
}

/// What a completed write delivered, for the latency statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Delivered {
    /// Messages written in full (not counting untimed bytes).
    pub(crate) messages: u64,
    /// When the oldest of them was published.
    pub(crate) oldest: Option<Instant>,
}

/// The frames waiting to be written to one connection, oldest first.
#[derive(Debug, Default)]
pub(crate) struct SendQueue {
    frames: VecDeque<OutFrame>,
    /// Bytes queued or held, for the slow-consumer bound.
    queued: usize,
    /// While the application streams a fragmented message: the data messages that must
    /// wait for its last fragment (RFC 6455 §5.4 allows only control frames between).
    #[expect(clippy::box_collection, reason = "8 bytes in every connection instead of 32; rarely used")]
    held: Option<Box<VecDeque<OutFrame>>>,
}

impl SendQueue {
    /// Bytes queued or held and not yet written.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.queued
    }

    /// Whether frames are waiting to be written (held ones do not count: they cannot go).
    pub(crate) fn has_unsent(&self) -> bool {
        !self.frames.is_empty()
    }

    /// Whether `len` more bytes would pass `limit`. One message larger than the limit
    /// still passes through an empty queue, or nothing that large could ever be sent.
    pub(crate) fn would_exceed(&self, len: usize, limit: usize) -> bool {
        self.queued > 0 && self.queued + len > limit
    }

    /// Queues `frame` as `kind`.
    pub(crate) fn push(&mut self, frame: OutFrame, kind: Outbound) {
        self.queued += frame.len();
        match (kind, self.held.as_mut()) {
            (Outbound::Message, Some(held)) => held.push_back(frame),
            (Outbound::Fragment { fin: false }, _) => {
                self.held.get_or_insert_with(Box::default);
                self.frames.push_back(frame);
            }
            (Outbound::Fragment { fin: true }, _) => {
                self.frames.push_back(frame);
                if let Some(held) = self.held.take() {
                    self.frames.extend(*held);
                }
            }
            (Outbound::Message | Outbound::Control, _) => self.frames.push_back(frame),
        }
    }

    /// The frames to write now, oldest first.
    pub(crate) fn unsent(&self) -> impl Iterator<Item = &OutFrame> {
        self.frames.iter()
    }

    /// Takes `written` bytes off the front.
    pub(crate) fn written(&mut self, written: usize) -> Delivered {
        let mut left = written.min(self.queued);
        self.queued -= left;
        let mut delivered = Delivered::default();
        while let Some(frame) = self.frames.front_mut() {
            if left < frame.len() {
                frame.start += left;
                break;
            }
            left -= frame.len();
            if let Some(published) = frame.published() {
                delivered.oldest.get_or_insert(published);
                delivered.messages += 1;
            }
            self.frames.pop_front();
        }
        // Give the slots back when a burst is over, and when the queue only ever carried
        // bytes that are not deliveries (the upgrade's answer): a connection that goes
        // quiet after its handshake then holds no queue memory at all.
        if self.frames.is_empty() && (self.frames.capacity() > 16 || delivered.messages == 0) {
            self.frames = VecDeque::new();
        }
        delivered
    }

    /// Forgets everything queued; returns the bytes dropped.
    pub(crate) fn clear(&mut self) -> usize {
        self.frames = VecDeque::new();
        self.held = None;
        std::mem::take(&mut self.queued)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(bytes: &'static [u8]) -> OutFrame {
        OutFrame::untimed(Bytes::from_static(bytes))
    }

    fn contents(queue: &SendQueue) -> Vec<u8> {
        queue.unsent().flat_map(|f| f.as_slice().to_vec()).collect()
    }

    #[test]
    fn clones_share_one_buffer_and_advance_independently() {
        let message = Rc::new(Outgoing { bytes: Bytes::from_static(b"0123456789"), published: None });
        let (mut a, mut b) = (SendQueue::default(), SendQueue::default());
        a.push(OutFrame::new(message.clone()), Outbound::Message);
        b.push(OutFrame::new(message.clone()), Outbound::Message);
        assert!(a.unsent().next().unwrap().shares_bytes_with(b.unsent().next().unwrap()));
        b.written(4);
        assert_eq!(contents(&b), b"456789");
        assert_eq!(contents(&a), b"0123456789");
        assert_eq!(b.queued_bytes(), 6);
        b.written(6);
        assert!(!b.has_unsent());
        assert_eq!(Rc::strong_count(&message), 2);
    }

    #[test]
    fn partial_writes_resume_where_they_stopped_and_count_deliveries() {
        let t0 = Instant::now();
        let mut q = SendQueue::default();
        q.push(OutFrame::single(Bytes::from_static(b"abc"), t0), Outbound::Message);
        q.push(OutFrame::untimed(Bytes::from_static(b"de")), Outbound::Message);
        q.push(OutFrame::single(Bytes::from_static(b"fgh"), t0), Outbound::Message);
        assert_eq!(q.written(2), Delivered::default());
        assert_eq!(q.written(2), Delivered { messages: 1, oldest: Some(t0) });
        assert_eq!(contents(&q), b"efgh");
        assert_eq!(q.written(4), Delivered { messages: 1, oldest: Some(t0) });
        assert_eq!(q.queued_bytes(), 0);
    }

    #[test]
    fn messages_wait_for_the_last_fragment_of_a_streamed_message() {
        let mut q = SendQueue::default();
        q.push(frame(b"F1"), Outbound::Fragment { fin: false });
        q.push(frame(b"M"), Outbound::Message);
        q.push(frame(b"P"), Outbound::Control);
        q.push(frame(b"F2"), Outbound::Fragment { fin: true });
        assert_eq!(contents(&q), b"F1PF2M");
        assert_eq!(q.queued_bytes(), 6);
    }

    #[test]
    fn the_bound_lets_one_large_message_through_an_empty_queue() {
        let mut q = SendQueue::default();
        assert!(!q.would_exceed(100, 10));
        q.push(frame(b"0123456789ab"), Outbound::Message);
        assert!(q.would_exceed(1, 12));
        assert_eq!(q.clear(), 12);
        assert!(!q.has_unsent());
    }
}
