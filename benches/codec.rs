//! Micro-benchmarks of `ringcast-codec`: masking, header parsing, decoding, the opening
//! handshake and prepared-message encoding.
//!
//! `benches/codec-report.sh` (`make bench-codec`) runs these and turns criterion's output
//! into `results/codec.md`; the group and function names below are what it reads.
//! Settings are kept short (0.5 s warm-up, 1.5 s measurement, 50 samples per bench) so the
//! whole run takes about two minutes; criterion's command-line flags override them.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ringcast_benches::{AlignedBuf, BROWSER_REQUEST, KEY, masked_frame, payload, size_label};
use ringcast_codec::handshake::{Request, RequestParse, UpgradeChecks, validate_upgrade};
use ringcast_codec::{
    Decoder, DecoderConfig, FrameHeader, FrameRules, HeaderParse, MaskKernel, OpCode, PreparedMessage, Role, Split,
    apply_mask,
};

const UNMASK_SIZES: [usize; 4] = [64, 1 << 10, 64 << 10, 1 << 20];
const KERNEL_SIZE: usize = 64 << 10;

/// The obvious implementation `apply_mask` must beat.
fn byte_loop(buf: &mut [u8], key: [u8; 4], phase: usize) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= key[(i + phase) & 3];
    }
}

/// `apply_mask` beside a plain byte loop and beside `copy_from_slice` of the same size.
/// All buffers start on a cache line; inputs and outputs pass through `black_box`.
fn unmask(c: &mut Criterion) {
    eprintln!(
        "ringcast-bench: MaskKernel::best() = {:?}; available = {:?}",
        MaskKernel::best(),
        MaskKernel::available()
    );
    let mut group = c.benchmark_group("unmask");
    for size in UNMASK_SIZES {
        let label = size_label(size);
        let fill = payload(size);
        group.throughput(Throughput::Bytes(size as u64));
        let mut buf = AlignedBuf::new(size, 0, &fill);
        group.bench_function(BenchmarkId::new("apply_mask", &label), |b| {
            b.iter(|| {
                let data = black_box(buf.as_mut_slice());
                apply_mask(data, black_box(KEY), black_box(0));
                black_box(data);
            })
        });
        group.bench_function(BenchmarkId::new("byte_loop", &label), |b| {
            b.iter(|| {
                let data = black_box(buf.as_mut_slice());
                byte_loop(data, black_box(KEY), black_box(0));
                black_box(data);
            })
        });
        let src = AlignedBuf::new(size, 0, &fill);
        let mut dst = AlignedBuf::new(size, 0, &fill);
        group.bench_function(BenchmarkId::new("memcpy", &label), |b| {
            b.iter(|| {
                let out = black_box(dst.as_mut_slice());
                out.copy_from_slice(black_box(src.as_slice()));
                black_box(out);
            })
        });
    }
    group.finish();
}

/// Every kernel this CPU runs, pinned, at 64 KiB.
fn mask_kernels(c: &mut Criterion) {
    let mut group = c.benchmark_group("mask_kernel");
    group.throughput(Throughput::Bytes(KERNEL_SIZE as u64));
    let mut buf = AlignedBuf::new(KERNEL_SIZE, 0, &payload(KERNEL_SIZE));
    for kernel in MaskKernel::available() {
        group.bench_function(BenchmarkId::new(format!("{kernel:?}"), size_label(KERNEL_SIZE)), |b| {
            b.iter(|| {
                let data = black_box(buf.as_mut_slice());
                kernel.apply(data, black_box(KEY), black_box(0));
                black_box(data);
            })
        });
    }
    group.finish();
}

/// `apply_mask` at 64 KiB starting at various offsets from a cache line: payloads sit
/// after a 6-, 8- or 14-byte header in the read buffer, so they are rarely aligned.
fn mask_alignment(c: &mut Criterion) {
    let mut group = c.benchmark_group("unmask_offset");
    group.throughput(Throughput::Bytes(KERNEL_SIZE as u64));
    let fill = payload(KERNEL_SIZE);
    for offset in [0, 1, 6, 16, 32] {
        let mut buf = AlignedBuf::new(KERNEL_SIZE, offset, &fill);
        group.bench_function(BenchmarkId::new("apply_mask", format!("+{offset}")), |b| {
            b.iter(|| {
                let data = black_box(buf.as_mut_slice());
                apply_mask(data, black_box(KEY), black_box(0));
                black_box(data);
            })
        });
    }
    group.finish();
}

/// `FrameHeader::parse` of a masked header in each length class, with server rules.
fn frame_header(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame_header_parse");
    let rules = FrameRules::for_role(Role::Server, usize::MAX);
    for (class, len) in [("7-bit", 125u64), ("16-bit", 1000), ("64-bit", 1 << 20)] {
        let header = FrameHeader { mask: Some(KEY), ..FrameHeader::new(OpCode::Binary, len) };
        let mut bytes = [0u8; 14];
        let n = header.encode(&mut bytes);
        assert!(matches!(FrameHeader::parse(&bytes[..n], &rules), Ok(HeaderParse::Complete { .. })));
        group.bench_function(class, |b| b.iter(|| FrameHeader::parse(black_box(&bytes[..n]), black_box(&rules))));
    }
    group.finish();
}

/// `Decoder::decode` of one masked message (server role) straight out of a receive
/// buffer (the server's path: unmasked in place, borrowed), from a fresh copy each time.
fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    let config = DecoderConfig::new(Role::Server);
    for size in [20, 512, 16 << 10] {
        group.throughput(Throughput::Bytes(size as u64));
        for (kind, opcode) in [("binary", OpCode::Binary), ("text", OpCode::Text)] {
            let wire = masked_frame(opcode, &payload(size));
            let mut check = wire.to_vec();
            let decoded = Decoder::new(config).decode(&mut &mut check[..]).map(|e| e.is_some());
            assert_eq!(decoded, Ok(true));
            group.bench_function(BenchmarkId::new(kind, size_label(size)), |b| {
                b.iter_batched_ref(
                    || (Decoder::new(config), wire.to_vec()),
                    |(decoder, buf)| decoder.decode(&mut &mut buf[..]).map(|e| e.is_some()),
                    BatchSize::SmallInput,
                )
            });
        }
    }
    group.finish();
}

/// The server's side of the opening handshake on a typical browser request.
fn handshake(c: &mut Criterion) {
    let mut group = c.benchmark_group("handshake");
    let parse = |head: &[u8]| match Request::parse(head) {
        Ok(RequestParse::Complete { request, .. }) => request,
        other => panic!("{other:?}"),
    };
    assert!(validate_upgrade(&parse(BROWSER_REQUEST), UpgradeChecks::default()).is_ok());
    group.bench_function("parse", |b| b.iter(|| parse(black_box(BROWSER_REQUEST))));
    group.bench_function("parse_validate", |b| {
        b.iter(|| validate_upgrade(&parse(black_box(BROWSER_REQUEST)), black_box(UpgradeChecks::default())))
    });
    group.finish();
}

/// `PreparedMessage::binary` of 64 KiB, whole and split into frames of a given size.
fn prepared(c: &mut Criterion) {
    let mut group = c.benchmark_group("prepared_binary_64KiB");
    let data = payload(64 << 10);
    group.throughput(Throughput::Bytes(data.len() as u64));
    let mut splits = vec![("whole".to_owned(), Split::Whole)];
    splits.extend([1 << 10, 4 << 10, 16 << 10].map(|size| (size_label(size), Split::FrameSize(size))));
    for (name, split) in splits {
        let frames = PreparedMessage::binary(&data, split).frame_count();
        group.bench_function(BenchmarkId::new(name, format!("{frames} frames")), |b| {
            b.iter(|| PreparedMessage::binary(black_box(&data), black_box(split)))
        });
    }
    group.finish();
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
    targets = unmask, mask_kernels, mask_alignment, frame_header, decode, handshake, prepared
}
criterion_main!(benches);
