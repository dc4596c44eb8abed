//! permessage-deflate backends compared on what a fan-out server compresses: JSON-like text
//! of 1 KiB and 16 KiB at the default level (6; level 1 beside it), one whole message per
//! call, no context kept between messages.
//!
//! - `zlib-rs` (or `zlib` with `--features c-zlib`): ringcast's `Compressor`, flate2 with a
//!   sync flush and the tail stripped, exactly what the server sends; `Inflater` likewise,
//!   created for each message as a connection without context takeover does.
//! - `libdeflater`: libdeflate's whole-buffer API (no streaming and no sync flush, so it
//!   could only serve the server's whole-message compression, ending in a BFINAL block).
//! - `miniz_oxide`: one-shot `compress_to_vec` (a 32 KiB window only).
//!
//! `cargo bench -p ringcast-benches --bench deflate`; compressed sizes go to stderr.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ringcast_benches::{json_payload, size_label};
use ringcast_codec::deflate::{CompressionLevel, Compressor, Direction, Inflater, WindowBits};

const SIZES: [usize; 2] = [1 << 10, 16 << 10];
const LEVELS: [u8; 2] = [6, 1];

const BACKEND: &str = if cfg!(feature = "c-zlib") { "zlib" } else { "zlib-rs" };

fn compress(c: &mut Criterion) {
    for size in SIZES {
        let text = json_payload(size);
        let data = text.as_bytes();
        let mut group = c.benchmark_group(format!("deflate_compress_{}", size_label(size)));
        group.throughput(Throughput::Bytes(size as u64));
        for level in LEVELS {
            let mut compressor = Compressor::new(CompressionLevel::new(level).unwrap(), WindowBits::MAX);
            let mut out = Vec::with_capacity(2 * size);
            compressor.compress(data, &mut out).unwrap();
            eprintln!("ringcast-bench: {BACKEND} level {level}, {size} B -> {} B", out.len());
            group.bench_function(BenchmarkId::new(BACKEND, format!("level {level}")), |b| {
                b.iter(|| {
                    out.clear();
                    compressor.compress(black_box(data), &mut out).unwrap();
                    black_box(out.len())
                })
            });

            let mut libdeflate = libdeflater::Compressor::new(libdeflater::CompressionLvl::new(level.into()).unwrap());
            let mut buf = vec![0u8; libdeflate.deflate_compress_bound(size)];
            let n = libdeflate.deflate_compress(data, &mut buf).unwrap();
            eprintln!("ringcast-bench: libdeflater level {level}, {size} B -> {n} B");
            group.bench_function(BenchmarkId::new("libdeflater", format!("level {level}")), |b| {
                b.iter(|| libdeflate.deflate_compress(black_box(data), &mut buf).unwrap())
            });

            let n = miniz_oxide::deflate::compress_to_vec(data, level).len();
            eprintln!("ringcast-bench: miniz_oxide level {level}, {size} B -> {n} B");
            group.bench_function(BenchmarkId::new("miniz_oxide", format!("level {level}")), |b| {
                b.iter(|| miniz_oxide::deflate::compress_to_vec(black_box(data), level))
            });
        }
        group.finish();
    }
}

fn inflate(c: &mut Criterion) {
    let direction = Direction { window_bits: WindowBits::MAX, context_takeover: false };
    for size in SIZES {
        let text = json_payload(size);
        let mut payload = Vec::new();
        Compressor::new(CompressionLevel::DEFAULT, WindowBits::MAX).compress(text.as_bytes(), &mut payload).unwrap();
        let mut group = c.benchmark_group(format!("deflate_inflate_{}", size_label(size)));
        group.throughput(Throughput::Bytes(size as u64));
        let mut out = Vec::with_capacity(2 * size);
        group.bench_function(BenchmarkId::new(BACKEND, "new Inflater per message"), |b| {
            b.iter(|| {
                out.clear();
                let mut inflater = Inflater::new(direction);
                inflater.inflate(black_box(&payload), true, &mut out, 1 << 20).unwrap();
                black_box(out.len())
            })
        });
        let mut inflater = Inflater::new(direction);
        group.bench_function(BenchmarkId::new(BACKEND, "reused Inflater"), |b| {
            b.iter(|| {
                out.clear();
                inflater.inflate(black_box(&payload), true, &mut out, 1 << 20).unwrap();
                black_box(out.len())
            })
        });
        // libdeflate wants a whole stream: the sender's BFINAL block.
        let mut libdeflate = libdeflater::Compressor::new(libdeflater::CompressionLvl::new(6).unwrap());
        let mut whole = vec![0u8; libdeflate.deflate_compress_bound(size)];
        let n = libdeflate.deflate_compress(text.as_bytes(), &mut whole).unwrap();
        whole.truncate(n);
        let mut decompressor = libdeflater::Decompressor::new();
        let mut buf = vec![0u8; size];
        group.bench_function(BenchmarkId::new("libdeflater", "whole buffer"), |b| {
            b.iter(|| decompressor.deflate_decompress(black_box(&whole), &mut buf).unwrap())
        });
        group.finish();
    }
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1500))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = config();
    targets = compress, inflate
}
criterion_main!(benches);
