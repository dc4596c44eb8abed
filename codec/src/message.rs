//! What the receive side hands out: [`Incoming`] events whose payloads are either
//! borrowed from the caller's input or owned by the event.

use std::fmt;
use std::ops::Deref;

use bytes::Bytes;

use crate::error::ProtocolError;
use crate::protocol::{CloseCode, OpCode};
use crate::utf8::Utf8Bytes;

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

/// The bytes of a payload: borrowed from the decoder's input when the whole frame was in
/// it (no copy at all), or owned when the decoder had to gather them across inputs.
#[derive(Clone)]
pub enum Payload<'a> {
    /// A slice of the input passed to [`Decoder::decode`](crate::Decoder::decode).
    Borrowed(&'a [u8]),
    /// Bytes the decoder gathered; moving them out leaves the decoder without a buffer.
    Owned(Bytes),
}

impl<'a> Payload<'a> {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Payload::Borrowed(bytes) => bytes,
            Payload::Owned(bytes) => bytes,
        }
    }

    /// The bytes as an owned [`Bytes`] (a copy only when borrowed).
    pub fn into_bytes(self) -> Bytes {
        match self {
            Payload::Borrowed(bytes) => Bytes::copy_from_slice(bytes),
            Payload::Owned(bytes) => bytes,
        }
    }

    /// The same payload, no longer tied to the input.
    pub fn into_owned(self) -> Payload<'static> {
        Payload::Owned(self.into_bytes())
    }
}

impl Deref for Payload<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsRef<[u8]> for Payload<'_> {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

/// Payloads compare by content, whoever holds the bytes.
impl PartialEq for Payload<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Payload<'_> {}

impl fmt::Debug for Payload<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b\"{}\"", self.as_slice().escape_ascii())
    }
}

impl<'a> From<&'a [u8]> for Payload<'a> {
    fn from(bytes: &'a [u8]) -> Self {
        Payload::Borrowed(bytes)
    }
}

impl From<Bytes> for Payload<'_> {
    fn from(bytes: Bytes) -> Self {
        Payload::Owned(bytes)
    }
}

impl From<Vec<u8>> for Payload<'_> {
    fn from(bytes: Vec<u8>) -> Self {
        Payload::Owned(bytes.into())
    }
}

/// Text known to be valid UTF-8: borrowed from the input, or owned.
///
/// Both variants are valid by construction: a `&str` is a checked string, and a
/// [`Utf8Bytes`] can only be built from validated bytes.
#[derive(Clone)]
pub enum Text<'a> {
    /// A string slice of the decoder's input.
    Borrowed(&'a str),
    /// Text the decoder gathered and validated.
    Owned(Utf8Bytes),
}

impl Text<'_> {
    /// The text.
    pub fn as_str(&self) -> &str {
        match self {
            Text::Borrowed(text) => text,
            Text::Owned(text) => text.as_str(),
        }
    }

    /// The text as owned, shareable bytes (a copy only when borrowed).
    pub fn into_utf8_bytes(self) -> Utf8Bytes {
        match self {
            Text::Borrowed(text) => Utf8Bytes::from(text),
            Text::Owned(text) => text,
        }
    }

    /// The same text, no longer tied to the input.
    pub fn into_owned(self) -> Text<'static> {
        Text::Owned(self.into_utf8_bytes())
    }
}

impl Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

/// Texts compare by content, whoever holds the bytes.
impl PartialEq for Text<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Text<'_> {}

impl fmt::Debug for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl<'a> From<&'a str> for Text<'a> {
    fn from(text: &'a str) -> Self {
        Text::Borrowed(text)
    }
}

/// Something the peer sent, as the application sees it.
///
/// `'a` is the lifetime of the input the event was decoded from; see [`Payload`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// A whole text message, validated as UTF-8.
    Text(Text<'a>),
    /// A whole binary message.
    Binary(Payload<'a>),
    /// One data frame, delivered as it arrived when assembly is off
    /// ([`Assembly::Frames`]). Text fragments are validated as UTF-8 across boundaries.
    Fragment {
        /// `Text` or `Binary` for the first frame of a message, `Continuation` after.
        opcode: OpCode,
        /// Whether this frame ends its message.
        fin: bool,
        /// The unmasked payload.
        payload: Payload<'a>,
    },
    /// A ping with its payload (at most 125 bytes).
    Ping(Payload<'a>),
    /// A pong with its payload (at most 125 bytes).
    Pong(Payload<'a>),
    /// A close frame; `None` when it carried no status code.
    Close(Option<CloseFrame>),
}

impl Incoming<'_> {
    /// The same event, no longer tied to the input (borrowed payloads are copied).
    pub fn into_owned(self) -> Incoming<'static> {
        match self {
            Incoming::Text(text) => Incoming::Text(text.into_owned()),
            Incoming::Binary(data) => Incoming::Binary(data.into_owned()),
            Incoming::Fragment { opcode, fin, payload } => {
                Incoming::Fragment { opcode, fin, payload: payload.into_owned() }
            }
            Incoming::Ping(payload) => Incoming::Ping(payload.into_owned()),
            Incoming::Pong(payload) => Incoming::Pong(payload.into_owned()),
            Incoming::Close(close) => Incoming::Close(close),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn payloads_compare_by_content_and_outlive_their_input() {
        let input = b"abc".to_vec();
        let borrowed = Payload::Borrowed(&input);
        let owned = borrowed.clone().into_owned();
        drop(input);
        assert_eq!(owned, Payload::Owned(Bytes::from_static(b"abc")));
        assert_eq!(&*owned, b"abc");
        let text = Text::Borrowed("héllo").into_owned();
        assert_eq!(text.as_str(), "héllo");
        assert_eq!(Text::Borrowed("x"), Text::Owned(Utf8Bytes::from("x")));
    }
}
