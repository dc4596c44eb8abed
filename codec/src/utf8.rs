//! UTF-8 validation that works across fragment boundaries, and validated text payloads.
#![allow(unsafe_code)]

use bytes::Bytes;
use std::fmt;
use std::ops::Deref;

/// Validates a text message fed in arbitrary pieces, failing as soon as the bytes seen so
/// far cannot begin any valid UTF-8 string (the "fail fast" of RFC 6455 §8.1).
///
/// A code point may straddle two pieces; up to three bytes of it are carried over.
#[derive(Debug, Default, Clone)]
pub struct Utf8Validator {
    carry: [u8; 4],
    carry_len: u8,
}

/// The bytes seen so far are not, and cannot become, valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid UTF-8")]
pub struct Utf8Error;

impl Utf8Validator {
    /// A validator at the start of a message.
    pub const fn new() -> Self {
        Utf8Validator { carry: [0; 4], carry_len: 0 }
    }

    /// Feeds the next piece; `last` marks the end of the message, where an unfinished
    /// code point is an error.
    pub fn feed(&mut self, mut piece: &[u8], last: bool) -> Result<(), Utf8Error> {
        if self.carry_len > 0 {
            let have = self.carry_len as usize;
            let want = sequence_len(self.carry[0]).ok_or(Utf8Error)?;
            let take = (want - have).min(piece.len());
            self.carry[have..have + take].copy_from_slice(&piece[..take]);
            piece = &piece[take..];
            let filled = have + take;
            match std::str::from_utf8(&self.carry[..filled]) {
                Ok(_) => self.carry_len = 0,
                Err(e) if e.error_len().is_none() && filled < want => {
                    // Still a valid prefix; the piece ran out before the code point ended.
                    self.carry_len = filled as u8;
                    return if last { Err(Utf8Error) } else { Ok(()) };
                }
                Err(_) => return Err(Utf8Error),
            }
        }
        match simdutf8::compat::from_utf8(piece) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() && !last => {
                let tail = &piece[e.valid_up_to()..];
                self.carry[..tail.len()].copy_from_slice(tail);
                self.carry_len = tail.len() as u8;
                Ok(())
            }
            Err(_) => Err(Utf8Error),
        }
    }

    /// Forgets any carried bytes, ready for the next message.
    pub fn reset(&mut self) {
        self.carry_len = 0;
    }
}

/// The length of the UTF-8 sequence a lead byte starts, if it can start one.
const fn sequence_len(lead: u8) -> Option<usize> {
    match lead {
        0x00..=0x7f => Some(1),
        0xc2..=0xdf => Some(2),
        0xe0..=0xef => Some(3),
        0xf0..=0xf4 => Some(4),
        _ => None,
    }
}

/// An immutable, reference-counted payload known to be valid UTF-8.
///
/// Text messages arrive as [`Bytes`] split straight out of the read buffer; this wrapper
/// records that they were validated so they can be read as `&str` without a second pass.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Utf8Bytes(Bytes);

impl Utf8Bytes {
    /// Validates `bytes` (SIMD-accelerated) and wraps them.
    pub fn try_from_bytes(bytes: Bytes) -> Result<Self, Utf8Error> {
        simdutf8::basic::from_utf8(&bytes).map_err(|_| Utf8Error)?;
        Ok(Utf8Bytes(bytes))
    }

    /// Wraps bytes this crate has validated itself, so they are not validated twice:
    /// either gathered into memory the decoder owns and fed, in order, to a
    /// [`Utf8Validator`] to the end with `last = true`, or a slice validated as a `&str`
    /// and frozen into `Bytes` without any write in between. Crate-private on purpose: no
    /// caller can claim validation on the crate's behalf.
    pub(crate) fn from_validated(bytes: Bytes) -> Self {
        debug_assert!(simdutf8::basic::from_utf8(&bytes).is_ok());
        Utf8Bytes(bytes)
    }

    /// Wraps a string without validation (it is UTF-8 already).
    pub fn from_static(text: &'static str) -> Self {
        Utf8Bytes(Bytes::from_static(text.as_bytes()))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor either validates the bytes, takes them from a `str`, or
        // (`from_validated`, crate-private) receives bytes this crate validated in memory
        // no caller could write to in between (see `from_validated`); `Bytes` is
        // immutable, so the contents are still valid UTF-8.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    /// The underlying bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// Unwraps the underlying bytes.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl Deref for Utf8Bytes {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl From<String> for Utf8Bytes {
    fn from(text: String) -> Self {
        Utf8Bytes(Bytes::from(text))
    }
}

impl From<&str> for Utf8Bytes {
    fn from(text: &str) -> Self {
        Utf8Bytes(Bytes::copy_from_slice(text.as_bytes()))
    }
}

impl fmt::Debug for Utf8Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Utf8Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_in_pieces(bytes: &[u8], cuts: &[usize]) -> Result<(), Utf8Error> {
        let mut v = Utf8Validator::new();
        let mut start = 0;
        for &cut in cuts {
            v.feed(&bytes[start..cut], false)?;
            start = cut;
        }
        v.feed(&bytes[start..], true)
    }

    #[test]
    fn valid_text_passes_at_every_split() {
        let text = "κόσμε 😀 ok ✓ \u{10ffff}".as_bytes();
        for a in 0..=text.len() {
            for b in a..=text.len() {
                assert_eq!(feed_in_pieces(text, &[a, b]), Ok(()), "cuts {a} {b}");
            }
        }
    }

    #[test]
    fn invalid_text_fails_at_every_split() {
        let samples: [&[u8]; 6] = [
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited", // surrogate
            b"abc\xff",
            b"\xc0\xaf",         // overlong
            b"\xf4\x90\x80\x80", // above U+10FFFF
            b"hello \xe2\x82",   // truncated at the end
            b"\xf0\x9f\x98",     // truncated emoji
        ];
        for sample in samples {
            for a in 0..=sample.len() {
                assert_eq!(feed_in_pieces(sample, &[a]), Err(Utf8Error), "{sample:?} cut {a}");
            }
        }
    }

    #[test]
    fn fails_fast_before_the_message_ends() {
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5", false), Ok(()));
        // 0xF4 0x90 can never continue to a valid code point: reject without waiting.
        assert_eq!(v.feed(b"\xf4\x90", false), Err(Utf8Error));
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(b"\xf4", false), Ok(()));
        assert_eq!(v.feed(b"\x90", false), Err(Utf8Error));
    }

    #[test]
    fn utf8_bytes_reads_back_as_str() {
        let text = Utf8Bytes::try_from_bytes(Bytes::from_static("héllo".as_bytes())).unwrap();
        assert_eq!(text.as_str(), "héllo");
        assert_eq!(&*text, "héllo");
        assert!(Utf8Bytes::try_from_bytes(Bytes::from_static(b"\xff")).is_err());
        assert_eq!(Utf8Bytes::from("x").to_string(), "x");
    }
}
