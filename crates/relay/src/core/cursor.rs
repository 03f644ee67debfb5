//! A delivery-topic reader's position and when to commit it, with time
//! passed in.
//!
//! The position is the next offset to read. It is committed to the broker
//! at most every commit interval while it moves, and at the end; a failed
//! commit is tried again at the next one. A record is handled before the
//! position passes it, so a reader that dies leaves at most the records
//! since the last commit to be read again (at least once).

use std::time::Duration;

/// Fetch failures in a row after which a stopping reader gives up.
pub const MAX_FAILURES_WHEN_STOPPING: u32 = 5;

/// Where to start reading: the committed offset, or the start.
pub fn resume_at(committed: Option<i64>) -> i64 {
    committed.unwrap_or(0).max(0)
}

/// A reader's position. See the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    position: i64,
    committed: i64,
    last_commit_ms: u64,
    failures: u32,
}

impl Cursor {
    /// A reader at `position`, which is committed, at `now_ms`
    /// (monotonic).
    pub fn new(position: i64, now_ms: u64) -> Self {
        Self {
            position,
            committed: position,
            last_commit_ms: now_ms,
            failures: 0,
        }
    }

    /// The next offset to read.
    pub fn position(&self) -> i64 {
        self.position
    }

    /// Whether the position has moved past the last commit.
    pub fn uncommitted(&self) -> bool {
        self.position != self.committed
    }

    /// Moves to `position` (the topic was trimmed or recreated).
    pub fn seek(&mut self, position: i64) {
        self.position = position;
    }

    /// A batch was fetched and handled; `next` is the offset after it.
    pub fn handled(&mut self, next: i64) {
        self.failures = 0;
        self.position = next;
    }

    /// A fetch failed; whether a reader that is `stopping` should give up.
    pub fn fetch_failed(&mut self, stopping: bool) -> bool {
        self.failures = self.failures.saturating_add(1);
        stopping && self.failures >= MAX_FAILURES_WHEN_STOPPING
    }

    /// Whether a commit is due at `now_ms`; if so, the commit interval
    /// starts again now, whatever the commit's outcome.
    pub fn commit_due(&mut self, now_ms: u64, interval: Duration) -> bool {
        let since = Duration::from_millis(now_ms.saturating_sub(self.last_commit_ms));
        if self.uncommitted() && since >= interval {
            self.last_commit_ms = now_ms;
            true
        } else {
            false
        }
    }

    /// The position was committed.
    pub fn committed(&mut self) {
        self.committed = self.position;
    }

    /// Whether everything up to `high_watermark` has been read.
    pub fn caught_up(&self, high_watermark: i64) -> bool {
        self.position >= high_watermark
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn commits_wait_for_the_interval_and_for_movement() {
        let second = Duration::from_secs(1);
        let mut c = Cursor::new(resume_at(Some(4)), 0);
        assert_eq!(c.position(), 4);
        assert!(!c.commit_due(5_000, second), "nothing moved");
        c.handled(7);
        assert!(c.commit_due(5_000, second));
        // The commit failed: tried again only after another interval.
        assert!(!c.commit_due(5_500, second));
        assert!(c.commit_due(6_000, second));
        c.committed();
        assert!(!c.uncommitted());
        assert!(c.caught_up(7) && !c.caught_up(8));
    }

    #[test]
    fn a_stopping_reader_gives_up_after_five_failures_in_a_row() {
        let mut c = Cursor::new(0, 0);
        assert!(!(0..10).any(|_| c.fetch_failed(false)));
        c.handled(1);
        assert!(!(0..4).any(|_| c.fetch_failed(true)));
        assert!(c.fetch_failed(true));
        assert_eq!(resume_at(None), 0);
        assert_eq!(resume_at(Some(-1)), 0);
    }

    proptest! {
        #[test]
        fn commits_are_never_closer_than_the_interval(
            times in proptest::collection::vec(0u64..500, 1..100),
            interval_ms in 1u64..1_000,
        ) {
            let interval = Duration::from_millis(interval_ms);
            let mut c = Cursor::new(0, 0);
            let mut now = 0;
            let mut last = 0;
            for (i, dt) in times.iter().enumerate() {
                now += dt;
                c.handled(i64::try_from(i).unwrap_or(0) + 1);
                if c.commit_due(now, interval) {
                    prop_assert!(now - last >= interval_ms);
                    last = now;
                    c.committed();
                }
            }
        }
    }
}
