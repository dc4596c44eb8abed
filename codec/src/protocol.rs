//! RFC 6455 vocabulary: opcodes, close codes and the two roles of an endpoint.

use std::fmt;

/// Which end of the connection this codec speaks for.
///
/// The role decides the masking rule (RFC 6455 §5.1): a client masks every frame it
/// sends and a server never does, so each side expects the opposite on input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The accepting side: expects masked input, sends unmasked frames.
    Server,
    /// The connecting side: expects unmasked input, sends masked frames.
    Client,
}

impl Role {
    /// Whether frames *received* by this role must carry a masking key.
    pub const fn expects_masked_input(self) -> bool {
        matches!(self, Role::Server)
    }
}

/// A frame opcode (RFC 6455 §5.2). Reserved opcodes are rejected by the parser and so
/// never appear here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpCode {
    /// `0x0`: continues a fragmented data message.
    Continuation,
    /// `0x1`: the first (or only) frame of a UTF-8 text message.
    Text,
    /// `0x2`: the first (or only) frame of a binary message.
    Binary,
    /// `0x8`: starts or answers the closing handshake.
    Close,
    /// `0x9`: asks the peer for a pong.
    Ping,
    /// `0xA`: answers a ping, or serves as a unidirectional heartbeat.
    Pong,
}

impl OpCode {
    /// Decodes the low nibble of the first header byte; `None` for reserved opcodes.
    pub const fn from_u8(byte: u8) -> Option<Self> {
        Some(match byte {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    /// The wire value of this opcode.
    pub const fn as_u8(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    /// Control frames (close, ping, pong) may not be fragmented and carry at most 125 bytes.
    pub const fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

impl fmt::Display for OpCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            OpCode::Continuation => "continuation",
            OpCode::Text => "text",
            OpCode::Binary => "binary",
            OpCode::Close => "close",
            OpCode::Ping => "ping",
            OpCode::Pong => "pong",
        };
        f.write_str(name)
    }
}

/// A close status code (RFC 6455 §7.4), named as in `tungstenite`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1000: the purpose of the connection has been fulfilled.
    Normal,
    /// 1001: the endpoint is going away (server shutdown, page navigation).
    Away,
    /// 1002: the peer broke the protocol.
    Protocol,
    /// 1003: the endpoint cannot accept this kind of data.
    Unsupported,
    /// 1005: no status code was present. Never sent on the wire.
    Status,
    /// 1006: the connection dropped without a close frame. Never sent on the wire.
    Abnormal,
    /// 1007: a message's data was inconsistent with its type (invalid UTF-8 in text).
    Invalid,
    /// 1008: a message violated the endpoint's policy (also used for slow consumers).
    Policy,
    /// 1009: a message was too big to process.
    Size,
    /// 1010: the client expected an extension the server did not negotiate.
    Extension,
    /// 1011: the server hit an unexpected condition.
    Error,
    /// 1012: the service is restarting.
    Restart,
    /// 1013: try again later.
    Again,
    /// 1015: the TLS handshake failed. Never sent on the wire.
    Tls,
    /// 1016..=2999 and other codes reserved for future protocol use.
    Reserved(u16),
    /// 3000..=3999: registered with IANA for libraries and frameworks.
    Iana(u16),
    /// 4000..=4999: private use between applications.
    Library(u16),
    /// Anything outside the defined ranges (below 1000 or above 4999).
    Bad(u16),
}

impl CloseCode {
    /// Whether this code may appear in a close frame on the wire (RFC 6455 §7.4.1–2).
    pub const fn is_allowed_on_wire(self) -> bool {
        matches!(
            self,
            CloseCode::Normal
                | CloseCode::Away
                | CloseCode::Protocol
                | CloseCode::Unsupported
                | CloseCode::Invalid
                | CloseCode::Policy
                | CloseCode::Size
                | CloseCode::Extension
                | CloseCode::Error
                | CloseCode::Restart
                | CloseCode::Again
                | CloseCode::Iana(_)
                | CloseCode::Library(_)
        )
    }
}

impl From<u16> for CloseCode {
    fn from(code: u16) -> Self {
        match code {
            1000 => CloseCode::Normal,
            1001 => CloseCode::Away,
            1002 => CloseCode::Protocol,
            1003 => CloseCode::Unsupported,
            1005 => CloseCode::Status,
            1006 => CloseCode::Abnormal,
            1007 => CloseCode::Invalid,
            1008 => CloseCode::Policy,
            1009 => CloseCode::Size,
            1010 => CloseCode::Extension,
            1011 => CloseCode::Error,
            1012 => CloseCode::Restart,
            1013 => CloseCode::Again,
            1015 => CloseCode::Tls,
            1004 | 1014 | 1016..=2999 => CloseCode::Reserved(code),
            3000..=3999 => CloseCode::Iana(code),
            4000..=4999 => CloseCode::Library(code),
            _ => CloseCode::Bad(code),
        }
    }
}

impl From<CloseCode> for u16 {
    fn from(code: CloseCode) -> u16 {
        match code {
            CloseCode::Normal => 1000,
            CloseCode::Away => 1001,
            CloseCode::Protocol => 1002,
            CloseCode::Unsupported => 1003,
            CloseCode::Status => 1005,
            CloseCode::Abnormal => 1006,
            CloseCode::Invalid => 1007,
            CloseCode::Policy => 1008,
            CloseCode::Size => 1009,
            CloseCode::Extension => 1010,
            CloseCode::Error => 1011,
            CloseCode::Restart => 1012,
            CloseCode::Again => 1013,
            CloseCode::Tls => 1015,
            CloseCode::Reserved(c) | CloseCode::Iana(c) | CloseCode::Library(c) | CloseCode::Bad(c) => c,
        }
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", u16::from(*self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opcode_round_trips_and_rejects_reserved() {
        for byte in 0u8..16 {
            match OpCode::from_u8(byte) {
                Some(op) => assert_eq!(op.as_u8(), byte),
                None => assert!(matches!(byte, 3..=7 | 0xB..=0xF), "{byte}"),
            }
        }
        assert!(OpCode::Ping.is_control());
        assert!(!OpCode::Continuation.is_control());
    }

    #[test]
    fn close_codes_round_trip_and_classify() {
        for code in 0u16..=5000 {
            assert_eq!(u16::from(CloseCode::from(code)), code);
        }
        for allowed in [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 3000, 3999, 4000, 4999] {
            assert!(CloseCode::from(allowed).is_allowed_on_wire(), "{allowed}");
        }
        for forbidden in [0, 999, 1004, 1005, 1006, 1014, 1015, 1016, 1100, 2000, 2999, 5000, 65535] {
            assert!(!CloseCode::from(forbidden).is_allowed_on_wire(), "{forbidden}");
        }
    }
}
