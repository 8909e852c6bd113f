//! Retry pacing: how long the n-th retry of a request waits before it is downloaded again.
//!
//! Exponential backoff with full jitter (a uniform draw between zero and the exponential cap):
//! retries of many requests that failed together spread out instead of coming back in waves.

use std::time::Duration;

use rand::Rng;

/// `HEX_PROXY_RETRY_BACKOFF_BASE` and `HEX_PROXY_RETRY_BACKOFF_MAX`, in seconds; only built
/// when the base is above zero (pacing is off otherwise).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    base: f64,
    max: f64,
}

impl Backoff {
    /// `base > 0` and `max >= 0`, both finite and within `Duration`'s range (`Settings::validate`
    /// checks them).
    pub fn new(base: f64, max: f64) -> Self {
        Self { base, max }
    }

    /// The longest the `n`-th retry may wait: `min(max, base * 2^n)`.
    pub fn cap(&self, n: u32) -> f64 {
        // 2^n overflows to infinity long before n reaches u32::MAX; the min keeps it finite.
        let exponent = i32::try_from(n).unwrap_or(i32::MAX);
        (self.base * 2_f64.powi(exponent)).min(self.max)
    }

    /// The wait of the `n`-th retry (`n` = 1 for the first): uniform in `[0, cap(n))`. A
    /// `retry_after` (seconds the server asked for) replaces the draw, capped by the max; a
    /// NaN one is ignored.
    pub fn wait(&self, n: u32, retry_after: Option<f64>, rng: &mut impl Rng) -> Duration {
        let seconds = match retry_after {
            Some(asked) if !asked.is_nan() => asked.clamp(0.0, self.max),
            _ => rng.random::<f64>() * self.cap(n),
        };
        // In range: 0 <= seconds <= max, and max fits a Duration.
        Duration::from_secs_f64(seconds)
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    use super::*;

    const DRAWS: usize = 2_000;

    fn draws(backoff: Backoff, n: u32, rng: &mut SmallRng) -> Vec<f64> {
        (0..DRAWS)
            .map(|_| backoff.wait(n, None, rng).as_secs_f64())
            .collect()
    }

    #[test]
    fn the_nth_wait_is_spread_over_zero_to_min_of_max_and_base_times_two_to_the_n() {
        let backoff = Backoff::new(0.5, 60.0);
        let mut rng = SmallRng::seed_from_u64(3);
        for n in 1..=10 {
            let cap = (0.5 * f64::from(1_u32 << n)).min(60.0);
            assert_eq!(backoff.cap(n), cap);
            let waits = draws(backoff, n, &mut rng);
            assert!(waits.iter().all(|&w| (0.0..=cap).contains(&w)), "n={n}");
            // Not constant, and spread over the whole range: both ends and the middle are hit.
            let (low, high) = waits
                .iter()
                .fold((f64::MAX, 0.0_f64), |(lo, hi), &w| (lo.min(w), hi.max(w)));
            assert!(
                low < 0.05 * cap && high > 0.95 * cap,
                "n={n}: {low}..{high}"
            );
            let mean = waits.iter().sum::<f64>() / DRAWS as f64;
            assert!(
                (mean / cap - 0.5).abs() < 0.05,
                "n={n}: mean {mean} of cap {cap}"
            );
        }
    }

    #[test]
    fn the_max_caps_every_wait_however_many_retries() {
        let backoff = Backoff::new(1.0, 3.0);
        let mut rng = SmallRng::seed_from_u64(4);
        assert_eq!(backoff.cap(1), 2.0);
        for n in [2, 10, 1_000, u32::MAX] {
            assert_eq!(backoff.cap(n), 3.0);
            assert!(draws(backoff, n, &mut rng).iter().all(|&w| w <= 3.0));
        }
    }

    #[test]
    fn retry_after_sets_the_wait_capped_by_the_max() {
        let backoff = Backoff::new(1.0, 60.0);
        let mut rng = SmallRng::seed_from_u64(5);
        let wait = |asked| backoff.wait(1, Some(asked), &mut SmallRng::seed_from_u64(5));
        assert_eq!(wait(7.0), Duration::from_secs(7));
        assert_eq!(wait(0.25), Duration::from_millis(250));
        assert_eq!(wait(0.0), Duration::ZERO);
        assert_eq!(wait(3600.0), Duration::from_secs(60));
        assert_eq!(wait(f64::INFINITY), Duration::from_secs(60));
        assert_eq!(wait(-5.0), Duration::ZERO);
        // Above the exponential cap of the first retry (2 s): Retry-After wins, no jitter.
        assert_eq!(
            backoff.wait(1, Some(30.0), &mut rng),
            Duration::from_secs(30)
        );
        // NaN is no answer: the backoff is used.
        assert!(backoff.wait(1, Some(f64::NAN), &mut rng) <= Duration::from_secs(2));
    }

    #[test]
    fn a_max_of_zero_means_no_wait() {
        let backoff = Backoff::new(1.0, 0.0);
        let mut rng = SmallRng::seed_from_u64(6);
        assert!(draws(backoff, 3, &mut rng).iter().all(|&w| w == 0.0));
        assert_eq!(backoff.wait(1, Some(10.0), &mut rng), Duration::ZERO);
    }
}
