//! Outgoing frames shared between connections without copying.
//!
//! A broadcast is encoded once into [`Bytes`]; each shard wraps it in one [`Rc`] and
//! every selected connection queues a clone of that `Rc` — a non-atomic increment, not
//! a copy. The io_uring backend hands these buffers to the kernel directly, which is why
//! this module implements tokio-uring's `IoBuf` (an `unsafe` trait).
#![allow(unsafe_code)]

use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;

/// One encoded message (possibly several frames) as received by a shard.
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

    /// A frame owned by one connection (a reply, a unicast send).
    pub(crate) fn single(bytes: Bytes) -> Self {
        Self::new(Rc::new(Outgoing { bytes, published: Some(Instant::now()) }))
    }

    /// Bytes for one connection that are not a message (the handshake response): written
    /// in order with the frames, left out of the delivery latency.
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

    /// Marks `n` more bytes as written.
    pub(crate) fn advance(&mut self, n: usize) {
        self.start = (self.start + n).min(self.message.bytes.len());
    }

    pub(crate) fn published(&self) -> Option<Instant> {
        self.message.published
    }
}

// SAFETY: `stable_ptr` points into the heap buffer of a `Bytes` that is immutable and
// kept alive by the `Rc` this value holds; moving an `OutFrame` moves only the `Rc`, not
// the buffer, so the pointer stays valid and unchanged for as long as tokio-uring holds
// the value (it keeps it until the operation completes). `bytes_init` and `bytes_total`
// both equal the remaining length, all of it initialised. The kernel only reads from
// these buffers (writev), so sharing them between in-flight writes is sound.
unsafe impl tokio_uring::buf::IoBuf for OutFrame {
    fn stable_ptr(&self) -> *const u8 {
        self.as_slice().as_ptr()
    }

    fn bytes_init(&self) -> usize {
        self.len()
    }

    fn bytes_total(&self) -> usize {
        self.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_uring::buf::IoBuf;

    #[test]
    fn clones_share_one_buffer_and_advance_independently() {
        let message = Rc::new(Outgoing { bytes: Bytes::from_static(b"0123456789"), published: None });
        let a = OutFrame::new(message.clone());
        let mut b = a.clone();
        assert_eq!(a.stable_ptr(), b.stable_ptr(), "no per-connection copy");
        assert_eq!(a.stable_ptr(), message.bytes.as_ptr());
        b.advance(4);
        assert_eq!(b.as_slice(), b"456789");
        assert_eq!((b.bytes_init(), b.bytes_total()), (6, 6));
        assert_eq!(b.stable_ptr(), message.bytes[4..].as_ptr());
        assert_eq!(a.len(), 10);
        b.advance(100);
        assert_eq!(b.len(), 0);
        assert_eq!(Rc::strong_count(&message), 3);
    }
}
