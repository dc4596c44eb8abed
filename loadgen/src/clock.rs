//! Time: CLOCK_MONOTONIC nanoseconds, one clock for every process on the machine.
//!
//! The publisher writes its scheduled send time into each message and the receivers,
//! possibly in other worker processes, subtract it from their own reading of the same
//! clock, so no clock synchronisation is needed.

use std::time::Duration;

use nix::time::{ClockId, clock_gettime};

/// Nanoseconds of CLOCK_MONOTONIC.
pub fn now_ns() -> u64 {
    let t = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC is always available on Linux");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// The tokio instant at which CLOCK_MONOTONIC reads `ns` (tokio's clock is the same
/// clock, so this is exact up to the two readings' distance).
pub fn instant_at(ns: u64) -> tokio::time::Instant {
    let (instant, now) = (tokio::time::Instant::now(), now_ns());
    if ns >= now {
        instant + Duration::from_nanos(ns - now)
    } else {
        instant.checked_sub(Duration::from_nanos(now - ns)).unwrap_or(instant)
    }
}

/// Blocks the calling thread until CLOCK_MONOTONIC reaches `ns`.
pub fn sleep_until(ns: u64) {
    loop {
        let now = now_ns();
        if now >= ns {
            return;
        }
        std::thread::sleep(Duration::from_nanos(ns - now));
    }
}

/// Seconds between two readings.
pub fn secs(from: u64, to: u64) -> f64 {
    to.saturating_sub(from) as f64 / 1e9
}
