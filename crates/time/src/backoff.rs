//! Exponential backoff between retries.

use std::time::Duration;

/// Exponential backoff: `min` before the first retry, doubling after each
/// further failure, never more than `max` (nor less than `min`).
///
/// It holds no state: the caller counts its failed attempts and asks for
/// the delay after attempt `n`, so a success resets it by resetting the
/// count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay.
    pub min: Duration,
    /// The largest delay.
    pub max: Duration,
}

impl Backoff {
    /// Delays from `min`, doubling, up to `max`.
    pub const fn new(min: Duration, max: Duration) -> Self {
        Self { min, max }
    }

    /// The same delays, but never above `cap` (for example the interval of
    /// the loop that retries).
    #[must_use]
    pub fn capped(self, cap: Duration) -> Self {
        Self {
            min: self.min,
            max: self.max.min(cap),
        }
    }

    /// The delay after failed attempt number `attempt` (1-based; 0 counts
    /// as 1): `min × 2^(attempt − 1)`, at most `max`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max).max(self.min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<_> = (1..=6).map(|a| b.delay(a).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.delay(0), Duration::from_millis(100));
        assert_eq!(b.delay(31), Duration::from_secs(1));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn a_cap_lowers_the_largest_delay_but_not_the_first() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        assert_eq!(
            b.capped(Duration::from_secs(1)).delay(9),
            Duration::from_secs(1)
        );
        let below = b.capped(Duration::from_millis(50));
        assert_eq!(below.delay(1), Duration::from_millis(100));
        assert_eq!(below.delay(4), Duration::from_millis(100));
    }
}
