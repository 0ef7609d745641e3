//! Exponential backoff with full jitter (the AWS architecture blog's "full jitter": spread
//! reconnecting agents uniformly so a restarted control plane is not hit in waves).

use std::time::Duration;

use rand::Rng;

use crate::config::BackoffConfig;

/// Retry delays for one retry loop.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    attempt: u32,
}

impl Backoff {
    /// A backoff at its first attempt.
    pub fn new(config: BackoffConfig) -> Self {
        Backoff { config, attempt: 0 }
    }

    /// The ceiling of the next delay: `min(max, initial * 2^attempt)`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u64.checked_shl(self.attempt.min(63)).unwrap_or(u64::MAX);
        let ceiling_ms = self
            .config
            .initial_delay_ms
            .saturating_mul(factor)
            .min(self.config.max_delay_ms);
        Duration::from_millis(ceiling_ms)
    }

    /// The next delay, uniform in `[0, ceiling]`; moves to the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_with(&mut rand::thread_rng())
    }

    /// [`Backoff::next_delay`] with a given random source.
    pub fn next_delay_with<R: Rng + ?Sized>(&mut self, rng: &mut R) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        jitter(ceiling, rng)
    }

    /// The delay after the control plane refused us: at least half the maximum, so a
    /// revoked agent does not spin, still jittered so many of them do not retry in step.
    pub fn refused_delay(&mut self) -> Duration {
        let max = Duration::from_millis(self.config.max_delay_ms);
        self.attempt = self.attempt.saturating_add(1);
        max / 2 + jitter(max / 2, &mut rand::thread_rng())
    }

    /// Back to the first attempt, after a healthy session.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// How many delays were handed out since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

fn jitter<R: Rng + ?Sized>(ceiling: Duration, rng: &mut R) -> Duration {
    let ceiling_ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rng.gen_range(0..=ceiling_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_jitter_stays_within_the_exponential_ceiling() {
        let config = BackoffConfig {
            initial_delay_ms: 100,
            max_delay_ms: 5_000,
        };
        let mut backoff = Backoff::new(config);
        let mut rng = rand::thread_rng();
        let expected_ceilings = [100, 200, 400, 800, 1_600, 3_200, 5_000, 5_000, 5_000];
        for expected in expected_ceilings {
            assert_eq!(backoff.ceiling(), Duration::from_millis(expected));
            for _ in 0..200 {
                let mut probe = backoff.clone();
                let delay = probe.next_delay_with(&mut rng);
                assert!(
                    delay <= Duration::from_millis(expected),
                    "{delay:?} > {expected}"
                );
            }
            backoff.next_delay_with(&mut rng);
        }
    }

    #[test]
    fn full_jitter_uses_the_whole_range() {
        let mut rng = rand::thread_rng();
        let config = BackoffConfig {
            initial_delay_ms: 1_000,
            max_delay_ms: 1_000,
        };
        let delays: Vec<Duration> = (0..2_000)
            .map(|_| Backoff::new(config).next_delay_with(&mut rng))
            .collect();
        let below_a_quarter = delays
            .iter()
            .filter(|d| **d < Duration::from_millis(250))
            .count();
        let above_three_quarters = delays
            .iter()
            .filter(|d| **d > Duration::from_millis(750))
            .count();
        // Uniform: about 500 each; far from 0 unless the jitter is not "full".
        assert!(below_a_quarter > 300, "{below_a_quarter}");
        assert!(above_three_quarters > 300, "{above_three_quarters}");
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let mut backoff = Backoff::new(BackoffConfig {
            initial_delay_ms: u64::MAX / 2,
            max_delay_ms: 30_000,
        });
        for _ in 0..100 {
            assert!(backoff.next_delay() <= Duration::from_millis(30_000));
        }
        assert_eq!(backoff.ceiling(), Duration::from_millis(30_000));
    }

    #[test]
    fn reset_starts_over_and_refusals_wait_long() {
        let mut backoff = Backoff::new(BackoffConfig {
            initial_delay_ms: 10,
            max_delay_ms: 1_000,
        });
        for _ in 0..10 {
            backoff.next_delay();
        }
        assert_eq!(backoff.ceiling(), Duration::from_millis(1_000));
        backoff.reset();
        assert_eq!(backoff.ceiling(), Duration::from_millis(10));
        for _ in 0..100 {
            let delay = backoff.refused_delay();
            assert!(delay >= Duration::from_millis(500) && delay <= Duration::from_millis(1_000));
        }
    }
}
