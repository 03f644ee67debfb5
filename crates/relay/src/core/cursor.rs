//! A delivery-topic reader's position and when to commit it, with time
//! passed in.
//!
//! The position is the next offset to read. It is committed to the broker
//! at most every commit interval while it moves, and at the end; a failed
//! commit is tried again at the next one. A record is handled before the
//! position passes it, so a reader that dies leaves at most the records
//! since the last commit to be read again (at least once).
//!
//! A record handed to a connection's queue is handled, but it is still only
//! in memory until the connection writes it. Such records are [`Held`],
//! and the committed position never passes the first of them
//! ([`commit_point`]): a node that dies with frames queued reads them again
//! when it comes back, or its forwarder does.

use std::collections::BTreeMap;
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

    /// `at` was committed (the position, or a held record before it).
    pub fn committed(&mut self, at: i64) {
        self.committed = at;
    }

    /// Whether everything up to `high_watermark` has been read.
    pub fn caught_up(&self, high_watermark: i64) -> bool {
        self.position >= high_watermark
    }
}

/// The offsets of one topic's records that are still only in memory,
/// counted per offset (a record may be queued more than once after a
/// reconnect).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Held(BTreeMap<i64, u32>);

impl Held {
    /// The record at `offset` is queued in memory.
    pub fn hold(&mut self, offset: i64) {
        *self.0.entry(offset).or_insert(0) += 1;
    }

    /// The record at `offset` was written, handed on or dropped.
    pub fn release(&mut self, offset: i64) {
        if let Some(n) = self.0.get_mut(&offset) {
            *n -= 1;
            if *n == 0 {
                self.0.remove(&offset);
            }
        }
    }

    /// The first offset still held.
    pub fn first(&self) -> Option<i64> {
        self.0.keys().next().copied()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The position that may be committed: `position`, or the first record
/// still held in memory when it is before it.
pub fn commit_point(position: i64, first_held: Option<i64>) -> i64 {
    first_held.map_or(position, |held| held.min(position))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_commit_stops_at_the_first_record_still_in_memory() {
        let mut held = Held::default();
        assert_eq!(commit_point(9, held.first()), 9);
        held.hold(4);
        held.hold(6);
        held.hold(4);
        assert_eq!(commit_point(9, held.first()), 4);
        held.release(4);
        assert_eq!(
            commit_point(9, held.first()),
            4,
            "queued twice, released once"
        );
        held.release(4);
        assert_eq!(commit_point(9, held.first()), 6);
        held.release(6);
        held.release(6);
        assert!(held.is_empty());
        assert_eq!(commit_point(3, Some(7)), 3, "never beyond the position");

        let mut c = Cursor::new(0, 0);
        c.handled(9);
        c.committed(commit_point(c.position(), Some(4)));
        assert!(c.uncommitted(), "the rest is committed once it is written");
    }

    proptest! {
        #[test]
        fn no_commit_passes_a_held_record(
            ops in proptest::collection::vec((any::<bool>(), 0i64..20), 1..100),
        ) {
            let mut held = Held::default();
            let mut model: Vec<i64> = Vec::new();
            for (hold, offset) in ops {
                if hold {
                    held.hold(offset);
                    model.push(offset);
                } else if let Some(i) = model.iter().position(|o| *o == offset) {
                    model.swap_remove(i);
                    held.release(offset);
                }
                let point = commit_point(20, held.first());
                prop_assert!(model.iter().all(|o| *o >= point));
                prop_assert_eq!(point, model.iter().copied().min().unwrap_or(20));
            }
        }
    }

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
        c.committed(c.position());
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
                    c.committed(c.position());
                }
            }
        }
    }
}
