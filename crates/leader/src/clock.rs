//! The wall clock, used only to fill the Lease's informational timestamps.

use std::fmt;
use std::time::{Duration, SystemTime};

/// A source of wall-clock time.
///
/// The election never compares wall-clock times: they are written into
/// `spec.acquireTime` and `spec.renewTime` for people to read. Passing the
/// clock in lets tests give candidates skewed clocks.
pub trait WallClock: Send + Sync + fmt::Debug + 'static {
    /// The current wall-clock time.
    fn now(&self) -> SystemTime;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
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
        let now = SystemTime::now();
        let shifted = if self.ahead {
            now.checked_add(self.offset)
        } else {
            now.checked_sub(self.offset)
        };
        shifted.unwrap_or(now)
    }
}
