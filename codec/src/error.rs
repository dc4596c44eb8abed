//! Errors of the frame and message layers, each mapped to the close code that reports it.

use crate::protocol::{CloseCode, OpCode};

/// A violation of RFC 6455 (or of a configured limit) found in incoming frames.
///
/// Every variant names the close code the endpoint must send before dropping the
/// connection: see [`ProtocolError::close_code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The opcode nibble holds one of the reserved values 0x3–0x7 or 0xB–0xF.
    #[error("reserved opcode {0:#x}")]
    ReservedOpCode(u8),
    /// An RSV bit is set but no extension that defines it was negotiated.
    #[error("reserved header bits {0:#05b} set without a negotiated extension")]
    ReservedBits(u8),
    /// A close, ping or pong frame arrived without FIN.
    #[error("fragmented {0} frame")]
    FragmentedControl(OpCode),
    /// A control frame declared more than 125 payload bytes.
    #[error("{opcode} frame of {len} bytes exceeds the 125-byte control frame limit")]
    ControlFrameTooLong {
        /// The control frame's opcode.
        opcode: OpCode,
        /// The declared payload length.
        len: u64,
    },
    /// A frame from a client was not masked.
    #[error("frame from the client is not masked")]
    UnmaskedFrame,
    /// A frame from a server was masked.
    #[error("frame from the server is masked")]
    MaskedFrame,
    /// The most significant bit of a 64-bit payload length was set.
    #[error("64-bit payload length has its most significant bit set")]
    LengthOverflow,
    /// A single frame declared more payload than the configured maximum.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// The declared payload length.
        len: u64,
        /// The configured limit.
        max: usize,
    },
    /// A message (all of its fragments together) exceeded the configured maximum.
    #[error("message of at least {len} bytes exceeds the limit of {max} bytes")]
    MessageTooLarge {
        /// The message length that crossed the limit.
        len: u64,
        /// The configured limit.
        max: usize,
    },
    /// A continuation frame arrived with no fragmented message in progress.
    #[error("continuation frame without a message to continue")]
    UnexpectedContinuation,
    /// A new text or binary frame arrived while a fragmented message was unfinished.
    #[error("{0} frame while a fragmented message is unfinished")]
    ExpectedContinuation(OpCode),
    /// A text message, or a close reason, was not valid UTF-8.
    #[error("invalid UTF-8 in a text message")]
    InvalidUtf8,
    /// A close frame carried a one-byte payload, too short for a status code.
    #[error("close frame with a one-byte payload")]
    CloseFrameTooShort,
    /// A close frame carried a status code that may not be sent on the wire.
    #[error("invalid close code {0}")]
    InvalidCloseCode(u16),
    /// A close frame's reason was not valid UTF-8.
    #[error("close reason is not valid UTF-8")]
    InvalidCloseReason,
    /// A permessage-deflate message did not inflate (RFC 7692 §8.2.3.4: the connection
    /// must fail); closed with 1007, the payload being inconsistent with its type.
    #[error("invalid compressed data: {0}")]
    InvalidCompressedData(String),
    /// RSV1 on a frame permessage-deflate does not allow it on: a control frame or a
    /// continuation (RFC 7692 §6.1).
    #[error("RSV1 set on a {0} frame")]
    CompressedBitMisplaced(OpCode),
}

impl ProtocolError {
    /// The close code to send when failing the connection for this error
    /// (RFC 6455 §7.4.1): 1007 for bad UTF-8, 1009 for size limits, 1002 otherwise.
    pub const fn close_code(&self) -> CloseCode {
        match self {
            ProtocolError::InvalidUtf8
            | ProtocolError::InvalidCloseReason
            | ProtocolError::InvalidCompressedData(_) => CloseCode::Invalid,
            ProtocolError::FrameTooLarge { .. } | ProtocolError::MessageTooLarge { .. } => CloseCode::Size,
            _ => CloseCode::Protocol,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_rfc_close_codes() {
        assert_eq!(ProtocolError::InvalidUtf8.close_code(), CloseCode::Invalid);
        assert_eq!(ProtocolError::InvalidCloseReason.close_code(), CloseCode::Invalid);
        assert_eq!(ProtocolError::FrameTooLarge { len: 10, max: 5 }.close_code(), CloseCode::Size);
        assert_eq!(ProtocolError::MessageTooLarge { len: 10, max: 5 }.close_code(), CloseCode::Size);
        assert_eq!(ProtocolError::ReservedOpCode(3).close_code(), CloseCode::Protocol);
        assert_eq!(ProtocolError::UnmaskedFrame.close_code(), CloseCode::Protocol);
        assert_eq!(
            ProtocolError::ReservedBits(4).to_string(),
            "reserved header bits 0b100 set without a negotiated extension"
        );
    }
}
