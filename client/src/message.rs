//! What travels over a connection, in both directions.

use bytes::{Bytes, BytesMut};
use ringcast_codec::{CloseCode, CloseFrame, OpCode, Utf8Bytes, close_payload, encode_masked_frame};

use crate::error::Error;

/// The largest payload of a ping, pong or close frame (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// A WebSocket message: what [`Receiver`](crate::Receiver) yields and what
/// [`Sender::send`](crate::Sender::send) takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message, valid UTF-8.
    Text(Utf8Bytes),
    /// A binary message.
    Binary(Bytes),
    /// A ping. Received pings are answered with a pong automatically; they are passed on
    /// for information only.
    Ping(Bytes),
    /// A pong.
    Pong(Bytes),
    /// A close frame: received, the server's code and reason (`None` when it sent none);
    /// sent, starts the closing handshake.
    Close(Option<CloseFrame>),
}

impl Message {
    /// A text message.
    pub fn text(text: impl Into<String>) -> Self {
        Message::Text(Utf8Bytes::from(text.into()))
    }

    /// A binary message.
    pub fn binary(data: impl Into<Bytes>) -> Self {
        Message::Binary(data.into())
    }

    /// A close frame with `code` and `reason` (cut to fit the 125-byte limit).
    pub fn close(code: CloseCode, reason: &str) -> Self {
        Message::Close(Some(CloseFrame { code, reason: Utf8Bytes::from(reason) }))
    }

    /// The text of a text message.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Message::Text(text) => Some(text.as_str()),
            _ => None,
        }
    }

    /// The payload: the text's bytes, the binary data, the ping or pong payload, or the
    /// close reason.
    pub fn payload(&self) -> &[u8] {
        match self {
            Message::Text(text) => text.as_bytes(),
            Message::Binary(data) | Message::Ping(data) | Message::Pong(data) => data,
            Message::Close(Some(frame)) => frame.reason.as_bytes(),
            Message::Close(None) => &[],
        }
    }

    /// Whether this is a close frame.
    pub fn is_close(&self) -> bool {
        matches!(self, Message::Close(_))
    }

    /// Encodes the message as one masked frame with a fresh random key.
    pub(crate) fn encode(&self) -> Result<Bytes, Error> {
        Ok(match self {
            Message::Text(text) => masked_frame(OpCode::Text, text.as_bytes()),
            Message::Binary(data) => masked_frame(OpCode::Binary, data),
            Message::Ping(data) => control_frame(OpCode::Ping, data)?,
            Message::Pong(data) => control_frame(OpCode::Pong, data)?,
            Message::Close(frame) => close_frame(frame.as_ref()),
        })
    }
}

impl From<String> for Message {
    fn from(text: String) -> Self {
        Message::Text(text.into())
    }
}

impl From<&str> for Message {
    fn from(text: &str) -> Self {
        Message::Text(text.into())
    }
}

impl From<Utf8Bytes> for Message {
    fn from(text: Utf8Bytes) -> Self {
        Message::Text(text)
    }
}

impl From<Bytes> for Message {
    fn from(data: Bytes) -> Self {
        Message::Binary(data)
    }
}

impl From<Vec<u8>> for Message {
    fn from(data: Vec<u8>) -> Self {
        Message::Binary(data.into())
    }
}

/// One final frame of `opcode`, masked with a key from the thread's CSPRNG (RFC 6455 §5.3
/// asks for an unpredictable key per frame).
pub(crate) fn masked_frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(14 + payload.len());
    encode_masked_frame(&mut out, opcode, true, payload, rand::random());
    out.freeze()
}

pub(crate) fn control_frame(opcode: OpCode, payload: &[u8]) -> Result<Bytes, Error> {
    if payload.len() > MAX_CONTROL_PAYLOAD {
        return Err(Error::InvalidMessage("a control frame payload is limited to 125 bytes"));
    }
    Ok(masked_frame(opcode, payload))
}

/// A close frame; codes that may not appear on the wire (1005, 1006, 1015, ...) send an
/// empty close frame instead.
pub(crate) fn close_frame(frame: Option<&CloseFrame>) -> Bytes {
    match frame {
        Some(frame) => masked_frame(OpCode::Close, &close_payload(frame.code, frame.reason.as_str())),
        None => masked_frame(OpCode::Close, &[]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringcast_codec::{Decoder, DecoderConfig, Incoming, Role};

    fn decode_as_server(frame: &[u8]) -> Incoming<'static> {
        let mut decoder = Decoder::new(DecoderConfig::new(Role::Server));
        let mut buf = BytesMut::from(frame);
        let incoming = decoder.decode_buf(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty());
        incoming
    }

    #[test]
    fn frames_are_masked_and_round_trip() {
        let frame = Message::text("Hello").encode().unwrap();
        assert_eq!(frame[0], 0x81);
        assert_eq!(frame[1], 0x80 | 5, "mask bit and length");
        assert_eq!(decode_as_server(&frame), Incoming::Text("Hello".into()));
        let big = vec![7u8; 70_000];
        let frame = Message::binary(big.clone()).encode().unwrap();
        assert_eq!(decode_as_server(&frame), Incoming::Binary(big.into()));
        let close = Message::close(CloseCode::Away, "bye").encode().unwrap();
        assert_eq!(
            decode_as_server(&close),
            Incoming::Close(Some(CloseFrame { code: CloseCode::Away, reason: "bye".into() }))
        );
        assert_eq!(decode_as_server(&Message::Close(None).encode().unwrap()), Incoming::Close(None));
        // 1006 is never sent: the frame goes out empty.
        assert_eq!(
            decode_as_server(&Message::close(CloseCode::Abnormal, "x").encode().unwrap()),
            Incoming::Close(None)
        );
    }

    #[test]
    fn mask_keys_differ_between_frames() {
        let keys: std::collections::HashSet<[u8; 4]> = (0..64)
            .map(|_| {
                let frame = Message::text("same").encode().unwrap();
                [frame[2], frame[3], frame[4], frame[5]]
            })
            .collect();
        assert!(keys.len() > 60, "mask keys repeat: {}", keys.len());
    }

    #[test]
    fn control_frames_are_limited_to_125_bytes() {
        assert!(Message::Ping(Bytes::from(vec![0; 125])).encode().is_ok());
        assert!(matches!(Message::Ping(Bytes::from(vec![0; 126])).encode(), Err(Error::InvalidMessage(_))));
        assert!(matches!(Message::Pong(Bytes::from(vec![0; 126])).encode(), Err(Error::InvalidMessage(_))));
    }

    #[test]
    fn accessors() {
        assert_eq!(Message::from("hi").as_text(), Some("hi"));
        assert_eq!(Message::from(vec![1, 2]).payload(), &[1, 2]);
        assert!(Message::Close(None).is_close());
        assert_eq!(Message::close(CloseCode::Normal, "r").payload(), b"r");
    }
}
