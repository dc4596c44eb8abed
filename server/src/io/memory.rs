//! Handing freed heap memory back to the kernel after a burst.
//!
//! A burst of large messages allocates and frees megabytes of frames; glibc keeps freed
//! chunks in its arenas, so the server's resident memory stays at the burst's peak.
//! `malloc_trim` returns the free pages (at the top of each heap and whole free pages
//! inside it). Shards call it only when they go quiet after holding a lot.

/// Returns freed heap pages to the kernel where the C library can (glibc); a no-op
/// elsewhere.
pub(crate) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` takes no pointer and only rearranges the allocator's own free
    // memory; glibc makes it safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn trimming_is_harmless_while_memory_is_in_use() {
        let kept: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 64 << 10]).collect();
        drop((0..64).map(|_| vec![0u8; 64 << 10]).collect::<Vec<_>>());
        super::release_free_memory();
        assert!(kept.iter().enumerate().all(|(i, v)| v.iter().all(|&b| b == i as u8)));
    }
}
