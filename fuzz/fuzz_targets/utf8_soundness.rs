//! The codec's UTF-8 promise, whatever the call sequence: every text the public API hands
//! out is valid UTF-8, even when the caller overwrites bytes of its own buffer between
//! `decode_buf` calls (which a caller that owns the buffer may do) or decodes arbitrary
//! chunks. `Text::as_str` builds a `&str` without checking, so a violation here would be
//! undefined behaviour; the check below validates independently.
#![no_main]
#![forbid(unsafe_code)]

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use ringcast_codec::{Assembly, Incoming};
use ringcast_codec_fuzz::{DecoderInput, decode_all, decode_buffered};

fuzz_target!(|data: &[u8]| {
    let (head, tail) = data.split_at(data.len() / 2);
    let input = DecoderInput::parse(head);
    let mut writes = Unstructured::new(tail);
    for assembly in [Assembly::Messages, Assembly::Frames] {
        let config = input.config().assembly(assembly);
        let scribbled = decode_buffered(config, input.wire, &input.chunks, |buf| {
            // Overwrite one byte of what is still buffered, as the fuzzer chooses.
            if let (Ok(at), Ok(byte)) = (writes.arbitrary::<u16>(), writes.arbitrary::<u8>())
                && !buf.is_empty()
            {
                let at = at as usize % buf.len();
                buf[at] = byte;
            }
        });
        for run in [scribbled, decode_all(config, input.wire, &input.chunks)] {
            for event in &run.events {
                let text = match event {
                    Incoming::Text(text) => text.as_str(),
                    Incoming::Close(Some(close)) => close.reason.as_str(),
                    _ => continue,
                };
                assert!(std::str::from_utf8(text.as_bytes()).is_ok(), "invalid UTF-8 handed out as text");
            }
        }
    }
});
