//! # cutover-clock: the one place cutover reads a clock
//!
//! Two clocks, for two purposes:
//! - the **wall clock** ([`unix_millis`]): Unix milliseconds, for what is persisted or shown
//!   and must mean the same after a restart (the engine's `Timestamp`s, the store's
//!   `updated_at`, sample timestamps for PromQL and Prometheus);
//! - the **monotonic clock** ([`monotonic`]): `tokio::time::Instant`, for deadlines, timeouts
//!   and latencies. It is tokio's so that a test on paused time (`start_paused = true`)
//!   controls every deadline; outside such a test it is `std::time::Instant::now` and costs
//!   the same (the proxy reads it twice per request).
//!
//! `clippy.toml` at the workspace root disallows `std::time::Instant::now` and
//! `std::time::SystemTime::now` everywhere else, so a new hand-rolled clock is a lint error.
//! Code that wants its clock injected (a driver under test on fake time) takes a [`Clock`];
//! [`SystemClock`] is the real one.
//!
//! What it must never do: hold state, or decide anything with the time it reads.
#![forbid(unsafe_code)]

use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock milliseconds since the Unix epoch; 0 if the system clock is set before 1970
/// (nothing cutover stores is older, so 0 reads as "unknown" rather than as a time).
#[allow(clippy::disallowed_methods)] // The one wall-clock read.
pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Now, on tokio's monotonic clock (paused time in tests moves it).
pub fn monotonic() -> tokio::time::Instant {
    tokio::time::Instant::now()
}

/// Both clocks behind one seam, for code that is tested on a clock of its own.
pub trait Clock: Send + Sync {
    /// See [`unix_millis`].
    fn unix_millis(&self) -> u64;
    /// See [`monotonic`].
    fn monotonic(&self) -> tokio::time::Instant;
}

/// The real clocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn unix_millis(&self) -> u64 {
        unix_millis()
    }
    fn monotonic(&self) -> tokio::time::Instant {
        monotonic()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_wall_clock_is_after_this_code_was_written() {
        // 2026-01-01T00:00:00Z: a wall clock reading before it is a broken conversion.
        assert!(SystemClock.unix_millis() > 1_767_225_600_000);
    }

    #[tokio::test(start_paused = true)]
    async fn the_monotonic_clock_follows_paused_time() {
        let before = SystemClock.monotonic();
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(monotonic() - before, Duration::from_secs(3600));
    }
}
