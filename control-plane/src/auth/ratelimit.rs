//! Token buckets for the authentication endpoints, kept in memory per replica: each
//! key (a client IP address, an OAuth2 client id) holds up to `burst` requests and
//! regains `per_minute` a minute.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Most keys kept before full buckets are forgotten.
const MAX_KEYS: usize = 50_000;

/// A set of token buckets.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: parking_lot::Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl RateLimiter {
    /// Buckets of `burst` that refill at `per_minute`.
    pub fn new(per_minute: u32, burst: u32) -> Self {
        RateLimiter {
            per_second: f64::from(per_minute.max(1)) / 60.0,
            burst: f64::from(burst.max(1)),
            buckets: parking_lot::Mutex::default(),
        }
    }

    /// Takes one request from `key`'s bucket, or says how long until one is there.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock();
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(key) {
            let (per_second, burst) = (self.per_second, self.burst);
            buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.updated).as_secs_f64() * per_second < burst
            });
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / self.per_second;
            Err(Duration::from_secs_f64(wait.max(0.001)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_applies() {
        let limiter = RateLimiter::new(60, 3);
        let start = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check_at("ip:1", start).is_ok());
        }
        let wait = limiter.check_at("ip:1", start).err();
        assert!(wait.is_some_and(|w| w <= Duration::from_secs(1) && w > Duration::ZERO));
        // Other keys are not affected; a second later one more passes.
        assert!(limiter.check_at("ip:2", start).is_ok());
        assert!(limiter
            .check_at("ip:1", start + Duration::from_secs(1))
            .is_ok());
    }
}
