//! The per-connection flood guard.

/// A token bucket: `rate` messages a second, bursts of up to `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last_ms: u64,
}

impl TokenBucket {
    /// A full bucket at `now_ms`.
    pub fn new(rate_per_second: u32, burst: u32, now_ms: u64) -> Self {
        Self {
            rate: f64::from(rate_per_second),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last_ms: now_ms,
        }
    }

    /// Takes one token at `now_ms`; `false` when the bucket is empty.
    pub fn take(&mut self, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.last_ms = self.last_ms.max(now_ms);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_bursts_then_the_rate() {
        let mut b = TokenBucket::new(10, 5, 0);
        assert!((0..5).all(|_| b.take(0)));
        assert!(!b.take(0));
        assert!(b.take(100));
        assert!(!b.take(100));
        // A long pause refills only up to the burst.
        let allowed = (0..20).filter(|_| b.take(60_000)).count();
        assert_eq!(allowed, 5);
        // Time going backwards is ignored.
        assert!(!b.take(0));
    }
}
