//! Time for the pool: the monotonic system clock, or a manual one that tests move by hand so
//! cooldowns are tested without sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::Error;

#[derive(Debug)]
pub enum Clock {
    /// Monotonic time since the clock was made.
    System(Instant),
    /// Nanoseconds since the start, moved only by `advance`.
    Manual(AtomicU64),
}

impl Clock {
    pub fn system() -> Self {
        Self::System(Instant::now())
    }

    pub fn manual() -> Self {
        Self::Manual(AtomicU64::new(0))
    }

    pub fn now_ns(&self) -> u64 {
        match self {
            Self::System(start) => saturating_ns(start.elapsed()),
            Self::Manual(ns) => ns.load(Ordering::Acquire),
        }
    }

    pub fn advance(&self, by: Duration) -> Result<(), Error> {
        let Self::Manual(ns) = self else {
            return Err(Error::ClockNotManual);
        };
        let by = saturating_ns(by);
        // `fetch_update` so that the clock saturates instead of wrapping back to the start.
        let _ = ns.fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
            Some(now.saturating_add(by))
        });
        Ok(())
    }
}

/// u64 nanoseconds last 584 years; saturating keeps absurd cooldowns at "forever".
pub fn saturating_ns(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_starts_at_zero_and_advances() {
        let clock = Clock::manual();
        assert_eq!(clock.now_ns(), 0);
        clock.advance(Duration::from_millis(1500)).unwrap();
        assert_eq!(clock.now_ns(), 1_500_000_000);
        clock.advance(Duration::MAX).unwrap();
        assert_eq!(clock.now_ns(), u64::MAX);
    }

    #[test]
    fn system_clock_is_monotonic_and_cannot_be_advanced() {
        let clock = Clock::system();
        let a = clock.now_ns();
        assert!(clock.now_ns() >= a);
        assert_eq!(
            clock.advance(Duration::from_secs(1)),
            Err(Error::ClockNotManual)
        );
    }
}
