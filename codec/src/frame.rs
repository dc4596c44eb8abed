//! Frame headers (RFC 6455 §5.2): parsing from a byte slice and encoding.

use crate::error::ProtocolError;
use crate::protocol::{OpCode, Role};

/// The longest possible header: 2 fixed bytes, an 8-byte length and a 4-byte mask key.
pub const MAX_HEADER_LEN: usize = 14;

/// The largest payload a control frame may carry.
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// RSV1, the bit permessage-deflate would claim.
pub const RSV1: u8 = 0b100;
/// RSV2.
pub const RSV2: u8 = 0b010;
/// RSV3.
pub const RSV3: u8 = 0b001;

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Whether this is the final fragment of its message.
    pub fin: bool,
    /// The three reserved bits, RSV1 as `0b100` down to RSV3 as `0b001`.
    pub rsv: u8,
    /// The frame's opcode.
    pub opcode: OpCode,
    /// The masking key, present on frames sent by a client.
    pub mask: Option<[u8; 4]>,
    /// The number of payload bytes that follow the header.
    pub payload_len: u64,
}

/// What [`FrameHeader::parse`] found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderParse {
    /// A whole header, `header_len` bytes long.
    Complete {
        /// The parsed header.
        header: FrameHeader,
        /// How many bytes of the buffer the header occupies.
        header_len: usize,
    },
    /// The buffer ends inside the header: at least `needed` more bytes are required.
    Incomplete {
        /// The minimum number of further bytes before parsing can progress.
        needed: usize,
    },
}

/// The checks applied to every incoming header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRules {
    /// Whether incoming frames must be masked (`true` for a server). When `None`, any
    /// masking is accepted.
    pub require_mask: Option<bool>,
    /// The RSV bits a negotiated extension allows; any other set bit is an error.
    pub allowed_rsv: u8,
    /// The largest payload a single frame may declare.
    pub max_frame_size: usize,
}

impl FrameRules {
    /// The strict rules for an endpoint in `role` with the given frame size limit.
    pub const fn for_role(role: Role, max_frame_size: usize) -> Self {
        FrameRules { require_mask: Some(role.expects_masked_input()), allowed_rsv: 0, max_frame_size }
    }
}

impl FrameHeader {
    /// A header for a final, unmasked frame of `opcode` carrying `payload_len` bytes.
    pub const fn new(opcode: OpCode, payload_len: u64) -> Self {
        FrameHeader { fin: true, rsv: 0, opcode, mask: None, payload_len }
    }

    /// Parses the header at the start of `buf` and checks it against `rules`.
    ///
    /// Never panics: any byte sequence yields a header, a request for more bytes, or an
    /// error that names the violated rule.
    pub fn parse(buf: &[u8], rules: &FrameRules) -> Result<HeaderParse, ProtocolError> {
        let [b0, b1, ..] = *buf else {
            return Ok(HeaderParse::Incomplete { needed: 2 - buf.len() });
        };
        let fin = b0 & 0x80 != 0;
        let rsv = (b0 >> 4) & 0b111;
        let opcode = OpCode::from_u8(b0 & 0x0f).ok_or(ProtocolError::ReservedOpCode(b0 & 0x0f))?;
        if rsv & !rules.allowed_rsv != 0 {
            return Err(ProtocolError::ReservedBits(rsv & !rules.allowed_rsv));
        }
        let masked = b1 & 0x80 != 0;
        match rules.require_mask {
            Some(true) if !masked => return Err(ProtocolError::UnmaskedFrame),
            Some(false) if masked => return Err(ProtocolError::MaskedFrame),
            _ => {}
        }
        let short_len = b1 & 0x7f;
        if opcode.is_control() {
            if !fin {
                return Err(ProtocolError::FragmentedControl(opcode));
            }
            if short_len as usize > MAX_CONTROL_PAYLOAD {
                // 126 and 127 announce extended lengths, which exceed 125 whatever follows.
                return Err(ProtocolError::ControlFrameTooLong { opcode, len: u64::from(short_len) });
            }
        }
        let length_bytes = match short_len {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let header_len = 2 + length_bytes + if masked { 4 } else { 0 };
        if buf.len() < header_len {
            return Ok(HeaderParse::Incomplete { needed: header_len - buf.len() });
        }
        let payload_len = match length_bytes {
            2 => u64::from(u16::from_be_bytes([buf[2], buf[3]])),
            8 => {
                let mut be = [0u8; 8];
                be.copy_from_slice(&buf[2..10]);
                let len = u64::from_be_bytes(be);
                if len >> 63 != 0 {
                    return Err(ProtocolError::LengthOverflow);
                }
                len
            }
            _ => u64::from(short_len),
        };
        if payload_len > rules.max_frame_size as u64 {
            return Err(ProtocolError::FrameTooLarge { len: payload_len, max: rules.max_frame_size });
        }
        let mask = masked.then(|| {
            let at = 2 + length_bytes;
            [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]
        });
        Ok(HeaderParse::Complete { header: FrameHeader { fin, rsv, opcode, mask, payload_len }, header_len })
    }

    /// The number of bytes [`FrameHeader::encode`] writes for this header.
    pub const fn encoded_len(&self) -> usize {
        header_len_for(self.payload_len, self.mask.is_some())
    }

    /// Writes the header into `out` and returns its length (at most [`MAX_HEADER_LEN`]).
    pub fn encode(&self, out: &mut [u8; MAX_HEADER_LEN]) -> usize {
        out[0] = (u8::from(self.fin) << 7) | ((self.rsv & 0b111) << 4) | self.opcode.as_u8();
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let mut len = match self.payload_len {
            0..=125 => {
                out[1] = mask_bit | self.payload_len as u8;
                2
            }
            126..=0xffff => {
                out[1] = mask_bit | 126;
                out[2..4].copy_from_slice(&(self.payload_len as u16).to_be_bytes());
                4
            }
            _ => {
                out[1] = mask_bit | 127;
                out[2..10].copy_from_slice(&self.payload_len.to_be_bytes());
                10
            }
        };
        if let Some(key) = self.mask {
            out[len..len + 4].copy_from_slice(&key);
            len += 4;
        }
        len
    }
}

/// The header length for a payload of `payload_len` bytes.
pub const fn header_len_for(payload_len: u64, masked: bool) -> usize {
    let base = match payload_len {
        0..=125 => 2,
        126..=0xffff => 4,
        _ => 10,
    };
    if masked { base + 4 } else { base }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: FrameRules = FrameRules::for_role(Role::Server, 1 << 20);
    const CLIENT: FrameRules = FrameRules::for_role(Role::Client, 1 << 20);

    fn complete(buf: &[u8], rules: &FrameRules) -> (FrameHeader, usize) {
        match FrameHeader::parse(buf, rules).unwrap() {
            HeaderParse::Complete { header, header_len } => (header, header_len),
            other => panic!("expected a header, got {other:?}"),
        }
    }

    #[test]
    fn rfc_examples_parse() {
        // §5.7: a single-frame unmasked text message "Hello".
        let (h, n) = complete(&[0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f], &CLIENT);
        assert_eq!((h.fin, h.opcode, h.mask, h.payload_len, n), (true, OpCode::Text, None, 5, 2));
        // §5.7: a single-frame masked text message "Hello".
        let (h, n) = complete(&[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58], &SERVER);
        assert_eq!((h.mask, h.payload_len, n), (Some([0x37, 0xfa, 0x21, 0x3d]), 5, 6));
        // §5.7: 256 bytes binary message in a single unmasked frame.
        let (h, n) = complete(&[0x82, 0x7E, 0x01, 0x00], &CLIENT);
        assert_eq!((h.opcode, h.payload_len, n), (OpCode::Binary, 256, 4));
        // §5.7: 64KiB binary message in a single unmasked frame.
        let (h, n) = complete(&[0x82, 0x7F, 0, 0, 0, 0, 0, 0x01, 0, 0], &CLIENT);
        assert_eq!((h.payload_len, n), (65536, 10));
        // §5.7: unmasked ping with "Hello".
        let (h, _) = complete(&[0x89, 0x05], &CLIENT);
        assert_eq!(h.opcode, OpCode::Ping);
        // §5.7: fragmented unmasked text message: "Hel" then "lo".
        let (h, _) = complete(&[0x01, 0x03], &CLIENT);
        assert_eq!((h.fin, h.opcode), (false, OpCode::Text));
        let (h, _) = complete(&[0x80, 0x02], &CLIENT);
        assert_eq!((h.fin, h.opcode), (true, OpCode::Continuation));
    }

    #[test]
    fn incomplete_headers_report_how_many_bytes_are_missing() {
        let full = [0x82, 0xFF, 0, 0, 0, 0, 0, 0x01, 0, 0, 1, 2, 3, 4];
        for cut in 0..full.len() {
            match FrameHeader::parse(&full[..cut], &SERVER).unwrap() {
                HeaderParse::Incomplete { needed } => assert!(needed >= 1 && cut + needed <= full.len(), "cut {cut}"),
                other => panic!("cut {cut}: {other:?}"),
            }
        }
        assert_eq!(complete(&full, &SERVER).1, 14);
    }

    #[test]
    fn rule_violations_are_typed_errors() {
        let parse = |b: &[u8], r: &FrameRules| FrameHeader::parse(b, r).unwrap_err();
        assert_eq!(parse(&[0x83, 0x80], &SERVER), ProtocolError::ReservedOpCode(3));
        assert_eq!(parse(&[0x8B, 0x80], &SERVER), ProtocolError::ReservedOpCode(0xB));
        assert_eq!(parse(&[0xC1, 0x80], &SERVER), ProtocolError::ReservedBits(RSV1));
        assert_eq!(parse(&[0x91, 0x80], &SERVER), ProtocolError::ReservedBits(RSV3));
        assert_eq!(parse(&[0x81, 0x05], &SERVER), ProtocolError::UnmaskedFrame);
        assert_eq!(parse(&[0x81, 0x85], &CLIENT), ProtocolError::MaskedFrame);
        assert_eq!(parse(&[0x09, 0x80], &SERVER), ProtocolError::FragmentedControl(OpCode::Ping));
        assert_eq!(
            parse(&[0x89, 0xFE], &SERVER),
            ProtocolError::ControlFrameTooLong { opcode: OpCode::Ping, len: 126 }
        );
        assert_eq!(parse(&[0x82, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 0], &CLIENT), ProtocolError::LengthOverflow);
        assert_eq!(
            parse(&[0x82, 0x7F, 0, 0, 0, 0, 0, 0x20, 0, 1], &CLIENT),
            ProtocolError::FrameTooLarge { len: (1 << 21) + 1, max: 1 << 20 }
        );
        let lenient = FrameRules { allowed_rsv: RSV1, require_mask: None, max_frame_size: 10 };
        assert_eq!(complete(&[0xC1, 0x00], &lenient).0.rsv, RSV1);
    }

    #[test]
    fn encode_then_parse_round_trips_every_length_class() {
        for len in [0u64, 1, 125, 126, 127, 0xffff, 0x1_0000, 1 << 40] {
            for mask in [None, Some([9, 8, 7, 6])] {
                let header = FrameHeader { fin: len % 2 == 0, rsv: 0, opcode: OpCode::Binary, mask, payload_len: len };
                let mut out = [0u8; MAX_HEADER_LEN];
                let n = header.encode(&mut out);
                assert_eq!(n, header.encoded_len());
                let rules = FrameRules { require_mask: None, allowed_rsv: 0, max_frame_size: usize::MAX };
                assert_eq!(complete(&out[..n], &rules), (header, n));
            }
        }
    }
}
