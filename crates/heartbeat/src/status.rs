//! How a Redis user (publisher or ingestor) is doing, published on a watch
//! channel so health checks and metrics can read it without blocking.

use tokio::time::Instant;

/// The state of one side's link to Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkStatus {
    /// Nothing tried yet.
    Starting,
    /// The last operation succeeded.
    Connected {
        /// Since when operations have succeeded without a failure.
        since: Instant,
        /// When the last one succeeded.
        last: Instant,
    },
    /// Operations fail; retrying with backoff.
    Failing {
        /// When the first failure of this run happened.
        since: Instant,
        /// Failed attempts in a row.
        attempts: u32,
        /// The last error, as text.
        last_error: String,
    },
    /// Stopped for good (a publisher after `deregister`, an ingestor after
    /// `shutdown`).
    Stopped,
}

impl LinkStatus {
    /// True when the last operation succeeded.
    pub fn is_connected(&self) -> bool {
        matches!(self, Self::Connected { .. })
    }

    /// The status after a success at `now`.
    pub(crate) fn succeeded(&self, now: Instant) -> Self {
        match self {
            Self::Connected { since, .. } => Self::Connected {
                since: *since,
                last: now,
            },
            _ => Self::Connected {
                since: now,
                last: now,
            },
        }
    }

    /// The status after a failure at `now`.
    pub(crate) fn failed(&self, now: Instant, error: String) -> Self {
        match self {
            Self::Failing {
                since, attempts, ..
            } => Self::Failing {
                since: *since,
                attempts: attempts.saturating_add(1),
                last_error: error,
            },
            _ => Self::Failing {
                since: now,
                attempts: 1,
                last_error: error,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn failing_keeps_its_start_and_counts() {
        let t0 = Instant::now();
        let s = LinkStatus::Starting.failed(t0, "a".into());
        tokio::time::advance(Duration::from_secs(1)).await;
        let s = s.failed(Instant::now(), "b".into());
        assert_eq!(
            s,
            LinkStatus::Failing {
                since: t0,
                attempts: 2,
                last_error: "b".into()
            }
        );
        let s = s.succeeded(Instant::now());
        assert!(s.is_connected());
    }
}
