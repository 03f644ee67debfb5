//! The wall clock, passed in so tests can hold it still, move it or skew it.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time.
///
/// Only for values that must mean the same on every machine: a
/// heartbeat's `sent_ms`, the Lease's informational timestamps, the
/// decision state's times. Ages, intervals and deadlines use
/// `tokio::time`, which is monotonic and pausable.
pub trait WallClock: Send + Sync + fmt::Debug + 'static {
    /// The current wall-clock time.
    fn now(&self) -> SystemTime;

    /// The current time in milliseconds since the Unix epoch: 0 before the
    /// epoch, `u64::MAX` past what fits.
    fn now_ms(&self) -> u64 {
        self.now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
    }
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl WallClock for SystemClock {
    #[expect(
        clippy::disallowed_methods,
        reason = "this is the one place the wall clock is read"
    )]
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that only moves when told to; clones share the same time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock showing `now_ms` (milliseconds since the Unix epoch).
    pub fn new(now_ms: u64) -> Self {
        Self(Arc::new(AtomicU64::new(now_ms)))
    }

    /// Sets the time.
    pub fn set(&self, now_ms: u64) {
        self.0.store(now_ms, Ordering::Relaxed);
    }

    /// Moves the time forward by `ms`.
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::Relaxed);
    }
}

impl WallClock for ManualClock {
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.now_ms())
    }

    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The system clock shifted by a fixed offset, as on a pod whose node's
/// clock is wrong.
#[derive(Debug, Clone, Copy)]
pub struct SkewedClock {
    offset: Duration,
    ahead: bool,
}

impl SkewedClock {
    /// A clock `offset` ahead of the system clock.
    pub fn ahead(offset: Duration) -> Self {
        Self {
            offset,
            ahead: true,
        }
    }

    /// A clock `offset` behind the system clock.
    pub fn behind(offset: Duration) -> Self {
        Self {
            offset,
            ahead: false,
        }
    }
}

impl WallClock for SkewedClock {
    fn now(&self) -> SystemTime {
        let now = SystemClock.now();
        let shifted = if self.ahead {
            now.checked_add(self.offset)
        } else {
            now.checked_sub(self.offset)
        };
        shifted.unwrap_or(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told_and_clones_share_it() {
        let clock = ManualClock::new(1_000);
        let other = clock.clone();
        clock.advance(250);
        assert_eq!(other.now_ms(), 1_250);
        other.set(7);
        assert_eq!(clock.now_ms(), 7);
        assert_eq!(clock.now(), UNIX_EPOCH + Duration::from_millis(7));
    }

    #[test]
    fn milliseconds_are_derived_from_the_time() {
        #[derive(Debug)]
        struct Before;
        impl WallClock for Before {
            fn now(&self) -> SystemTime {
                UNIX_EPOCH - Duration::from_secs(1)
            }
        }
        assert_eq!(Before.now_ms(), 0);
        let hour = Duration::from_secs(3_600);
        let ahead = SkewedClock::ahead(hour).now_ms();
        let behind = SkewedClock::behind(hour).now_ms();
        let gap = ahead.saturating_sub(behind);
        assert!((7_199_000..=7_201_000).contains(&gap), "{gap}");
    }
}
