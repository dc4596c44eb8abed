//! Payload masking (RFC 6455 §5.3) with runtime-selected SIMD.
//!
//! Masking XORs payload byte `i` with `key[i % 4]`. A payload may arrive in several
//! reads, so every entry point takes the *phase*: how many payload bytes were masked
//! before this slice. The key is rotated by the phase once, after which every kernel
//! works on 4-byte-aligned lanes of the slice and never needs to know its position.
//!
//! Kernels, fastest first: AVX2 (32-byte lanes, detected at run time), SSE2 (16-byte
//! lanes, always present on x86_64), NEON (16-byte lanes, always present on aarch64),
//! and a portable 8-byte word loop. The `unsafe` here is the SIMD loads and stores, each on
//! a slice whose length `chunks_exact` guarantees (the crate's only other `unsafe` is in
//! `utf8.rs`, reading bytes validated on construction as `str`).
#![allow(unsafe_code)]

/// A masking kernel, for tests and benchmarks that pin one implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskKernel {
    /// One byte at a time: the reference every other kernel is checked against.
    Scalar,
    /// Eight bytes at a time in a `u64`, portable.
    Word,
    /// 16-byte SSE2 lanes (x86_64).
    Sse2,
    /// 32-byte AVX2 lanes (x86_64 with AVX2).
    Avx2,
    /// 16-byte NEON lanes (aarch64).
    Neon,
}

impl MaskKernel {
    /// The kernels this CPU can run, from slowest to fastest.
    pub fn available() -> Vec<MaskKernel> {
        let mut kernels = vec![MaskKernel::Scalar, MaskKernel::Word];
        #[cfg(target_arch = "x86_64")]
        {
            kernels.push(MaskKernel::Sse2);
            if std::arch::is_x86_feature_detected!("avx2") {
                kernels.push(MaskKernel::Avx2);
            }
        }
        #[cfg(target_arch = "aarch64")]
        kernels.push(MaskKernel::Neon);
        kernels
    }

    /// The kernel [`apply_mask`] picks for large slices on this CPU.
    pub fn best() -> MaskKernel {
        *Self::available().last().unwrap_or(&MaskKernel::Word)
    }

    /// Masks `buf` with this kernel.
    ///
    /// # Panics
    /// If this CPU cannot run the kernel (see [`MaskKernel::available`]).
    pub fn apply(self, buf: &mut [u8], key: [u8; 4], phase: usize) {
        let key = rotate(key, phase);
        match self {
            MaskKernel::Scalar => mask_bytes(buf, key),
            MaskKernel::Word => mask_words(buf, key),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: SSE2 is part of the x86_64 baseline, so every x86_64 CPU runs it.
            MaskKernel::Sse2 => unsafe { x86::mask_sse2(buf, key) },
            #[cfg(target_arch = "x86_64")]
            MaskKernel::Avx2 => {
                assert!(std::arch::is_x86_feature_detected!("avx2"), "AVX2 is not available on this CPU");
                // SAFETY: the assertion above proves the CPU supports AVX2, the only
                // requirement of this `#[target_feature]` function.
                unsafe { x86::mask_avx2(buf, key) }
            }
            #[cfg(target_arch = "aarch64")]
            // SAFETY: NEON is part of the aarch64 baseline, so every aarch64 CPU runs it.
            MaskKernel::Neon => unsafe { arm::mask_neon(buf, key) },
            #[allow(unreachable_patterns)]
            other => panic!("{other:?} masking is not available on this architecture"),
        }
    }
}

/// XORs `buf` with the masking `key`, where `buf` starts `phase` bytes into the payload.
///
/// Applying the same key and phase twice restores the input. Correct for every length,
/// alignment and phase; picks the fastest kernel the CPU supports.
///
/// ```
/// use ringcast_codec::apply_mask;
/// let key = [0x37, 0xfa, 0x21, 0x3d];
/// let mut payload = *b"Hello";
/// apply_mask(&mut payload, key, 0);
/// assert_eq!(payload, [0x7f, 0x9f, 0x4d, 0x51, 0x58]); // RFC 6455 §5.7
/// // Unmasking in two pieces: the second piece starts 2 bytes into the payload.
/// let (head, tail) = payload.split_at_mut(2);
/// apply_mask(head, key, 0);
/// apply_mask(tail, key, 2);
/// assert_eq!(&payload, b"Hello");
/// ```
#[inline]
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], phase: usize) {
    let key = rotate(key, phase);
    #[cfg(target_arch = "x86_64")]
    {
        if buf.len() >= 64 && std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 support was just detected, the only requirement of this
            // `#[target_feature]` function.
            unsafe { x86::mask_avx2(buf, key) };
            return;
        }
        if buf.len() >= 16 {
            // SAFETY: SSE2 is part of the x86_64 baseline, so every x86_64 CPU runs it.
            unsafe { x86::mask_sse2(buf, key) };
            return;
        }
    }
    #[cfg(target_arch = "aarch64")]
    if buf.len() >= 16 {
        // SAFETY: NEON is part of the aarch64 baseline, so every aarch64 CPU runs it.
        unsafe { arm::mask_neon(buf, key) };
        return;
    }
    mask_words(buf, key);
}

/// The key as seen by a slice that starts `phase` bytes into the payload.
#[inline]
const fn rotate(key: [u8; 4], phase: usize) -> [u8; 4] {
    let s = phase & 3;
    [key[s], key[(s + 1) & 3], key[(s + 2) & 3], key[(s + 3) & 3]]
}

fn mask_bytes(buf: &mut [u8], key: [u8; 4]) {
    for (i, byte) in buf.iter_mut().enumerate() {
        *byte ^= key[i & 3];
    }
}

fn mask_words(buf: &mut [u8], key: [u8; 4]) {
    let wide = u64::from_ne_bytes([key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3]]);
    let mut words = buf.chunks_exact_mut(8);
    for word in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        word.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ wide).to_ne_bytes());
    }
    // 8 is a multiple of 4, so the remainder starts at phase 0 of the rotated key.
    mask_bytes(words.into_remainder(), key);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        __m128i, __m256i, _mm_loadu_si128, _mm_set1_epi32, _mm_storeu_si128, _mm_xor_si128, _mm256_loadu_si256,
        _mm256_set1_epi32, _mm256_storeu_si256, _mm256_xor_si256,
    };

    /// Four 32-byte lanes per iteration keep two load ports and the store port busy.
    #[target_feature(enable = "avx2")]
    pub(super) fn mask_avx2(buf: &mut [u8], key: [u8; 4]) {
        let lane = _mm256_set1_epi32(i32::from_ne_bytes(key));
        let mut blocks = buf.chunks_exact_mut(128);
        for block in &mut blocks {
            let p = block.as_mut_ptr().cast::<__m256i>();
            // SAFETY: `block` is exactly 128 bytes, so `p.add(0..4)` address four whole
            // 32-byte lanes inside it; the unaligned load/store intrinsics have no
            // alignment requirement.
            unsafe {
                let a = _mm256_loadu_si256(p);
                let b = _mm256_loadu_si256(p.add(1));
                let c = _mm256_loadu_si256(p.add(2));
                let d = _mm256_loadu_si256(p.add(3));
                _mm256_storeu_si256(p, _mm256_xor_si256(a, lane));
                _mm256_storeu_si256(p.add(1), _mm256_xor_si256(b, lane));
                _mm256_storeu_si256(p.add(2), _mm256_xor_si256(c, lane));
                _mm256_storeu_si256(p.add(3), _mm256_xor_si256(d, lane));
            }
        }
        let mut lanes = blocks.into_remainder().chunks_exact_mut(32);
        for chunk in &mut lanes {
            let p = chunk.as_mut_ptr().cast::<__m256i>();
            // SAFETY: `chunk` is exactly 32 bytes: one unaligned lane.
            unsafe { _mm256_storeu_si256(p, _mm256_xor_si256(_mm256_loadu_si256(p), lane)) };
        }
        // Lane sizes are multiples of 4, so the key's phase is unchanged for the rest.
        super::mask_words(lanes.into_remainder(), key);
    }

    #[target_feature(enable = "sse2")]
    pub(super) fn mask_sse2(buf: &mut [u8], key: [u8; 4]) {
        let lane = _mm_set1_epi32(i32::from_ne_bytes(key));
        let mut chunks = buf.chunks_exact_mut(16);
        for chunk in &mut chunks {
            let p = chunk.as_mut_ptr().cast::<__m128i>();
            // SAFETY: `chunk` is exactly 16 bytes: one unaligned lane.
            unsafe { _mm_storeu_si128(p, _mm_xor_si128(_mm_loadu_si128(p), lane)) };
        }
        super::mask_words(chunks.into_remainder(), key);
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use std::arch::aarch64::{vdupq_n_u32, veorq_u8, vld1q_u8, vreinterpretq_u8_u32, vst1q_u8};

    #[target_feature(enable = "neon")]
    pub(super) fn mask_neon(buf: &mut [u8], key: [u8; 4]) {
        let lane = vreinterpretq_u8_u32(vdupq_n_u32(u32::from_ne_bytes(key)));
        let mut chunks = buf.chunks_exact_mut(16);
        for chunk in &mut chunks {
            let p = chunk.as_mut_ptr();
            // SAFETY: `chunk` is exactly 16 bytes; vld1q/vst1q need no alignment.
            unsafe { vst1q_u8(p, veorq_u8(vld1q_u8(p), lane)) };
        }
        super::mask_words(chunks.into_remainder(), key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(buf: &mut [u8], key: [u8; 4], phase: usize) {
        for (i, byte) in buf.iter_mut().enumerate() {
            *byte ^= key[(i + phase) % 4];
        }
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i.wrapping_mul(31) ^ (i >> 3)) as u8).collect()
    }

    #[test]
    fn every_kernel_matches_the_reference_for_all_lengths_phases_and_alignments() {
        let key = [0x12, 0x9a, 0xe4, 0x7f];
        let backing = pattern(1024 + 64);
        for kernel in MaskKernel::available() {
            for len in 0..=1024 {
                for phase in 0..4 {
                    // Vary the start address too, so unaligned heads and tails are covered.
                    let start = (len * 7 + phase) % 61;
                    let mut expected = backing[start..start + len].to_vec();
                    reference(&mut expected, key, phase);
                    let mut actual = backing.clone();
                    kernel.apply(&mut actual[start..start + len], key, phase);
                    assert_eq!(&actual[start..start + len], &expected[..], "{kernel:?} len {len} phase {phase}");
                    // Bytes around the slice are untouched.
                    assert_eq!(&actual[..start], &backing[..start]);
                    assert_eq!(&actual[start + len..], &backing[start + len..]);
                }
            }
        }
    }

    #[test]
    fn dispatcher_matches_the_reference_across_split_points() {
        let key = [0xde, 0xad, 0xbe, 0xef];
        let original = pattern(3000);
        let mut expected = original.clone();
        reference(&mut expected, key, 0);
        for split in [0, 1, 2, 3, 5, 15, 16, 17, 63, 64, 65, 127, 129, 1000, 2999, 3000] {
            let mut actual = original.clone();
            let (head, tail) = actual.split_at_mut(split);
            apply_mask(head, key, 0);
            apply_mask(tail, key, split);
            assert_eq!(actual, expected, "split at {split}");
        }
    }

    #[test]
    fn phase_is_taken_modulo_four() {
        let key = [1, 2, 3, 4];
        let mut a = pattern(100);
        let mut b = a.clone();
        apply_mask(&mut a, key, 1);
        apply_mask(&mut b, key, 4 * 1_000_001 + 1);
        assert_eq!(a, b);
    }

    #[test]
    fn best_kernel_is_available() {
        assert!(MaskKernel::available().contains(&MaskKernel::best()));
    }
}
