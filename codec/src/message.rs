//! Message assembly: fragments into whole messages, with control frames interleaved.

use bytes::{Bytes, BytesMut};

use crate::error::ProtocolError;
use crate::frame::FrameHeader;
use crate::protocol::{CloseCode, OpCode};
use crate::utf8::{Utf8Bytes, Utf8Validator};

/// A close frame's status code and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    /// The status code.
    pub code: CloseCode,
    /// The reason, at most 123 bytes of UTF-8.
    pub reason: Utf8Bytes,
}

impl CloseFrame {
    /// Parses a close frame's payload (RFC 6455 §5.5.1): empty, or a valid status code
    /// followed by a UTF-8 reason.
    pub fn parse(payload: &[u8]) -> Result<Option<CloseFrame>, ProtocolError> {
        match payload {
            [] => Ok(None),
            [_] => Err(ProtocolError::CloseFrameTooShort),
            [hi, lo, reason @ ..] => {
                let raw = u16::from_be_bytes([*hi, *lo]);
                let code = CloseCode::from(raw);
                if !code.is_allowed_on_wire() {
                    return Err(ProtocolError::InvalidCloseCode(raw));
                }
                let reason = Utf8Bytes::try_from_bytes(Bytes::copy_from_slice(reason))
                    .map_err(|_| ProtocolError::InvalidCloseReason)?;
                Ok(Some(CloseFrame { code, reason }))
            }
        }
    }
}

/// Something the peer sent, as the application sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A whole text message, validated as UTF-8.
    Text(Utf8Bytes),
    /// A whole binary message.
    Binary(Bytes),
    /// One data frame, delivered as it arrived when assembly is off
    /// ([`Assembly::Frames`]). Text fragments are validated as UTF-8 across boundaries.
    Fragment {
        /// `Text` or `Binary` for the first frame of a message, `Continuation` after.
        opcode: OpCode,
        /// Whether this frame ends its message.
        fin: bool,
        /// The unmasked payload.
        payload: Bytes,
    },
    /// A ping with its payload (at most 125 bytes).
    Ping(Bytes),
    /// A pong with its payload (at most 125 bytes).
    Pong(Bytes),
    /// A close frame; `None` when it carried no status code.
    Close(Option<CloseFrame>),
}

/// Whether data frames are joined into messages or handed over one by one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Assembly {
    /// Join fragments and deliver whole messages.
    #[default]
    Messages,
    /// Deliver every data frame as [`Incoming::Fragment`].
    Frames,
}

#[derive(Debug)]
struct Partial {
    opcode: OpCode,
    len: u64,
    data: BytesMut,
}

/// Joins data frames into messages and checks fragmentation, UTF-8 and size rules.
///
/// Fed one whole (unmasked) frame at a time. Control frames may arrive between the
/// fragments of a message and are passed through at once.
#[derive(Debug)]
pub struct MessageAssembler {
    assembly: Assembly,
    max_message_size: usize,
    partial: Option<Partial>,
    utf8: Utf8Validator,
}

impl MessageAssembler {
    /// An assembler with the given mode and message size limit.
    pub fn new(assembly: Assembly, max_message_size: usize) -> Self {
        MessageAssembler { assembly, max_message_size, partial: None, utf8: Utf8Validator::new() }
    }

    /// Checks a header before its payload is read, so that sequencing errors and
    /// oversized messages are refused without buffering the payload.
    pub fn admit(&self, header: &FrameHeader) -> Result<(), ProtocolError> {
        let so_far = match (header.opcode, &self.partial) {
            (op, _) if op.is_control() => return Ok(()),
            (OpCode::Continuation, None) => return Err(ProtocolError::UnexpectedContinuation),
            (OpCode::Continuation, Some(partial)) => partial.len,
            (op, Some(_)) => return Err(ProtocolError::ExpectedContinuation(op)),
            (_, None) => 0,
        };
        let len = so_far.saturating_add(header.payload_len);
        if len > self.max_message_size as u64 {
            return Err(ProtocolError::MessageTooLarge { len, max: self.max_message_size });
        }
        Ok(())
    }

    /// Whether a fragmented message is in progress.
    pub fn in_message(&self) -> bool {
        self.partial.is_some()
    }

    /// Whether the frame `header` announces carries text (a text frame, or a continuation
    /// of a text message).
    pub fn carries_text(&self, header: &FrameHeader) -> bool {
        match header.opcode {
            OpCode::Text => true,
            OpCode::Continuation => self.partial.as_ref().is_some_and(|p| p.opcode == OpCode::Text),
            _ => false,
        }
    }

    /// Validates the first bytes of a text frame that is still arriving, so that invalid
    /// UTF-8 fails the connection before the rest of a long frame is read (RFC 6455 §8.1).
    /// Pass the count of bytes checked this way to [`MessageAssembler::push_checked`].
    pub fn check_partial(&mut self, header: &FrameHeader, bytes: &[u8]) -> Result<(), ProtocolError> {
        if self.carries_text(header) {
            self.utf8.feed(bytes, false).map_err(|_| ProtocolError::InvalidUtf8)?;
        }
        Ok(())
    }

    /// Takes a whole frame (already admitted, payload unmasked) and returns what the
    /// application should see now, if anything.
    pub fn push(&mut self, header: &FrameHeader, payload: BytesMut) -> Result<Option<Incoming>, ProtocolError> {
        self.push_checked(header, payload, 0)
    }

    /// Like [`MessageAssembler::push`], for a frame whose first `checked` payload bytes
    /// already went through [`MessageAssembler::check_partial`].
    pub fn push_checked(
        &mut self,
        header: &FrameHeader,
        payload: BytesMut,
        checked: usize,
    ) -> Result<Option<Incoming>, ProtocolError> {
        self.admit(header)?;
        let unchecked = payload.get(checked..).unwrap_or_default();
        let incoming = match header.opcode {
            OpCode::Ping => Incoming::Ping(payload.freeze()),
            OpCode::Pong => Incoming::Pong(payload.freeze()),
            OpCode::Close => Incoming::Close(CloseFrame::parse(&payload)?),
            _ if self.assembly == Assembly::Frames => self.push_fragment(header, payload, checked)?,
            OpCode::Text | OpCode::Binary if header.fin => {
                if header.opcode == OpCode::Text && checked > 0 {
                    // Started validating while the frame arrived: finish that pass, which
                    // then covers the whole message.
                    let result = self.utf8.feed(unchecked, true);
                    self.utf8.reset();
                    result.map_err(|_| ProtocolError::InvalidUtf8)?;
                    Incoming::Text(Utf8Bytes::from_validated(payload.freeze()))
                } else {
                    whole_message(header.opcode, payload.freeze())?
                }
            }
            OpCode::Text | OpCode::Binary => {
                if header.opcode == OpCode::Text {
                    self.utf8.feed(unchecked, false).map_err(|_| ProtocolError::InvalidUtf8)?;
                }
                let len = payload.len() as u64;
                self.partial = Some(Partial { opcode: header.opcode, len, data: payload });
                return Ok(None);
            }
            OpCode::Continuation => {
                let Some(partial) = self.partial.as_mut() else {
                    return Err(ProtocolError::UnexpectedContinuation);
                };
                if partial.opcode == OpCode::Text {
                    self.utf8.feed(unchecked, header.fin).map_err(|_| ProtocolError::InvalidUtf8)?;
                }
                partial.len += payload.len() as u64;
                partial.data.extend_from_slice(&payload);
                if !header.fin {
                    return Ok(None);
                }
                let done = self.partial.take().map(|p| (p.opcode, p.data.freeze()));
                self.utf8.reset();
                match done {
                    // Validated fragment by fragment above, the last one with `last = true`.
                    Some((OpCode::Text, data)) => Incoming::Text(Utf8Bytes::from_validated(data)),
                    Some((_, data)) => Incoming::Binary(data),
                    None => return Err(ProtocolError::UnexpectedContinuation),
                }
            }
        };
        Ok(Some(incoming))
    }

    fn push_fragment(
        &mut self,
        header: &FrameHeader,
        payload: BytesMut,
        checked: usize,
    ) -> Result<Incoming, ProtocolError> {
        let message_opcode = match header.opcode {
            OpCode::Continuation => self.partial.as_ref().map_or(OpCode::Binary, |p| p.opcode),
            op => op,
        };
        if message_opcode == OpCode::Text {
            let unchecked = payload.get(checked..).unwrap_or_default();
            self.utf8.feed(unchecked, header.fin).map_err(|_| ProtocolError::InvalidUtf8)?;
        }
        let so_far = self.partial.as_ref().map_or(0, |p| p.len);
        if header.fin {
            self.partial = None;
            self.utf8.reset();
        } else {
            // Only the running length is kept: in frame mode nothing is buffered.
            let len = so_far + payload.len() as u64;
            self.partial = Some(Partial { opcode: message_opcode, len, data: BytesMut::new() });
        }
        Ok(Incoming::Fragment { opcode: header.opcode, fin: header.fin, payload: payload.freeze() })
    }
}

fn whole_message(opcode: OpCode, payload: Bytes) -> Result<Incoming, ProtocolError> {
    Ok(if opcode == OpCode::Text {
        Incoming::Text(Utf8Bytes::try_from_bytes(payload).map_err(|_| ProtocolError::InvalidUtf8)?)
    } else {
        Incoming::Binary(payload)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(opcode: OpCode, fin: bool, len: usize) -> FrameHeader {
        FrameHeader { fin, rsv: 0, opcode, mask: None, payload_len: len as u64 }
    }

    fn push(
        a: &mut MessageAssembler,
        opcode: OpCode,
        fin: bool,
        data: &[u8],
    ) -> Result<Option<Incoming>, ProtocolError> {
        a.push(&header(opcode, fin, data.len()), BytesMut::from(data))
    }

    #[test]
    fn joins_fragments_with_interleaved_control_frames() {
        let mut a = MessageAssembler::new(Assembly::Messages, 1024);
        assert_eq!(push(&mut a, OpCode::Text, false, b"Hel"), Ok(None));
        assert_eq!(push(&mut a, OpCode::Ping, true, b"p"), Ok(Some(Incoming::Ping(Bytes::from_static(b"p")))));
        assert_eq!(push(&mut a, OpCode::Continuation, false, b""), Ok(None));
        assert_eq!(push(&mut a, OpCode::Continuation, true, b"lo"), Ok(Some(Incoming::Text("Hello".into()))));
        assert!(!a.in_message());
        assert_eq!(
            push(&mut a, OpCode::Binary, true, &[1, 2]),
            Ok(Some(Incoming::Binary(Bytes::from_static(&[1, 2]))))
        );
    }

    #[test]
    fn sequencing_errors() {
        let mut a = MessageAssembler::new(Assembly::Messages, 1024);
        assert_eq!(push(&mut a, OpCode::Continuation, true, b"x"), Err(ProtocolError::UnexpectedContinuation));
        push(&mut a, OpCode::Binary, false, b"x").unwrap();
        assert_eq!(push(&mut a, OpCode::Text, true, b"x"), Err(ProtocolError::ExpectedContinuation(OpCode::Text)));
    }

    #[test]
    fn utf8_is_checked_per_fragment_and_fails_fast() {
        let mut a = MessageAssembler::new(Assembly::Messages, 1024);
        // "€" split across fragments is fine.
        push(&mut a, OpCode::Text, false, b"\xe2\x82").unwrap();
        assert_eq!(push(&mut a, OpCode::Continuation, true, b"\xac"), Ok(Some(Incoming::Text("€".into()))));
        // An impossible byte fails on the fragment that carries it, before FIN.
        push(&mut a, OpCode::Text, false, b"ok").unwrap();
        assert_eq!(push(&mut a, OpCode::Continuation, false, b"\xff"), Err(ProtocolError::InvalidUtf8));
        let mut a = MessageAssembler::new(Assembly::Messages, 1024);
        assert_eq!(push(&mut a, OpCode::Text, true, b"\xe2\x82"), Err(ProtocolError::InvalidUtf8));
    }

    #[test]
    fn message_size_is_enforced_before_payload_is_read() {
        let a = MessageAssembler::new(Assembly::Messages, 10);
        assert_eq!(
            a.admit(&header(OpCode::Binary, true, 11)),
            Err(ProtocolError::MessageTooLarge { len: 11, max: 10 })
        );
        let mut a = MessageAssembler::new(Assembly::Messages, 10);
        push(&mut a, OpCode::Binary, false, &[0; 6]).unwrap();
        assert_eq!(
            a.admit(&header(OpCode::Continuation, true, 5)),
            Err(ProtocolError::MessageTooLarge { len: 11, max: 10 })
        );
        assert!(a.admit(&header(OpCode::Ping, true, 100)).is_ok());
    }

    #[test]
    fn frame_mode_passes_fragments_through_and_still_validates() {
        let mut a = MessageAssembler::new(Assembly::Frames, 1024);
        let first = push(&mut a, OpCode::Text, false, b"\xe2").unwrap().unwrap();
        assert_eq!(
            first,
            Incoming::Fragment { opcode: OpCode::Text, fin: false, payload: Bytes::from_static(b"\xe2") }
        );
        assert!(push(&mut a, OpCode::Continuation, false, b"\x82").is_ok());
        assert!(push(&mut a, OpCode::Continuation, true, b"\xac").is_ok());
        assert_eq!(push(&mut a, OpCode::Continuation, true, b""), Err(ProtocolError::UnexpectedContinuation));
        push(&mut a, OpCode::Text, false, b"a").unwrap();
        assert_eq!(push(&mut a, OpCode::Continuation, true, b"\xc3"), Err(ProtocolError::InvalidUtf8));
    }

    #[test]
    fn close_payloads() {
        assert_eq!(CloseFrame::parse(b""), Ok(None));
        assert_eq!(CloseFrame::parse(b"\x03"), Err(ProtocolError::CloseFrameTooShort));
        assert_eq!(CloseFrame::parse(b"\x03\xed"), Err(ProtocolError::InvalidCloseCode(1005)));
        assert_eq!(CloseFrame::parse(b"\x03\xe8\xff"), Err(ProtocolError::InvalidCloseReason));
        let close = CloseFrame::parse(b"\x03\xe8bye").unwrap().unwrap();
        assert_eq!((close.code, close.reason.as_str()), (CloseCode::Normal, "bye"));
        assert_eq!(CloseFrame::parse(b"\x0f\xa0").unwrap().unwrap().code, CloseCode::Library(4000));
    }
}
