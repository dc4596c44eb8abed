//! The heap an `Inflater` or `Compressor` holds, counted by an instrumented allocator, against
//! what their `heap_bytes` report. Alone in its binary (and one test) so that nothing else
//! allocates meanwhile.

use std::alloc::System;

use ringcast_codec::deflate::{CompressionLevel, Compressor, Direction, Inflater, WindowBits};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes allocated and not freed while `f` ran, and what it returned.
fn live_after<T>(f: impl FnOnce() -> T) -> (T, isize) {
    let region = Region::new(GLOBAL);
    let value = f();
    let change = region.change();
    (value, change.bytes_allocated as isize - change.bytes_deallocated as isize + change.bytes_reallocated)
}

fn close(reported: usize, measured: isize, what: &str) {
    eprintln!("{what}: measured {measured} bytes, heap_bytes() {reported}");
    let ratio = reported as f64 / measured as f64;
    assert!((0.98..=1.02).contains(&ratio), "{what}: heap_bytes() {reported} vs measured {measured}");
}

#[test]
fn heap_bytes_match_what_is_allocated() {
    // What a connection holds inline: a boxed, dropped-when-idle inflater costs a pointer.
    eprintln!("size_of::<Inflater>() = {} bytes", std::mem::size_of::<Inflater>());
    assert_eq!(std::mem::size_of::<Option<Box<Inflater>>>(), std::mem::size_of::<usize>());
    let text: Vec<u8> = (0..20_000u32).flat_map(|i| format!("{{\"n\":{}}},", i % 977).into_bytes()).collect();
    for bits in [8, 9, 12, 15] {
        let window_bits = WindowBits::new(bits).unwrap();
        for context_takeover in [false, true] {
            let direction = Direction { window_bits, context_takeover };
            let (mut compressor, live) = live_after(|| Compressor::for_direction(CompressionLevel::DEFAULT, direction));
            close(compressor.heap_bytes(), live, &format!("Compressor::new({bits})"));
            let mut payload = Vec::with_capacity(2 * text.len());
            let ((), live) = live_after(|| compressor.compress(&text, &mut payload).unwrap());
            assert_eq!(live, 0, "compressing allocates nothing beyond the output");

            let (mut inflater, live) = live_after(|| Inflater::new(direction));
            close(inflater.heap_bytes(), live, &format!("Inflater::new({bits})"));
            let mut out = Vec::with_capacity(2 * text.len());
            let ((), live) = live_after(|| inflater.inflate(&payload, true, &mut out, usize::MAX).unwrap());
            assert_eq!(out, text);
            assert_eq!(live, 0, "inflating and resetting allocate nothing lasting (window {bits})");
            let ((), live) = live_after(|| drop(inflater));
            assert!(live < 0, "dropping frees");
        }
    }
}
