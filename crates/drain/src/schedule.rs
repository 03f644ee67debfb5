//! The reconnect schedule: which connection is asked to move when, and how
//! long it is told to wait before reconnecting. Pure: no clock, no I/O, the
//! randomness comes from the caller's [`SplitMix64`].

use std::time::Duration;

/// A small, seedable pseudo-random generator (SplitMix64). Good enough to
/// spread reconnects; not for anything secret.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator starting from `seed`; the same seed gives the same values.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..=max`, uniform enough for jitter.
    pub fn up_to(&mut self, max: u64) -> u64 {
        if max == u64::MAX {
            return self.next_u64();
        }
        self.next_u64() % (max + 1)
    }
}

/// How reconnects are spread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpreadConfig {
    /// The time over which batches are sent (the first batch goes at once,
    /// the last no later than this).
    pub window: Duration,
    /// Batches are at least this far apart, so a small node does not send
    /// one batch per connection over five minutes.
    pub min_batch_interval: Duration,
    /// The most `retry_after` a client is told; each client gets a value in
    /// `0..=min(max_retry_after, batch interval)`, so the reconnects of one
    /// batch land spread over the gap before the next batch.
    pub max_retry_after: Duration,
}

/// One batch of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// When to send it, from the start of the schedule.
    pub at: Duration,
    /// Indexes into the connection list given to [`plan`], with the
    /// `retry_after` each is told.
    pub members: Vec<(usize, Duration)>,
}

/// Splits `connections` connections into batches spread evenly over
/// `config.window`, each member with a jittered `retry_after`.
///
/// Guarantees (tested): every index in `0..connections` appears exactly once;
/// batches are in time order, the first at zero, none after the window;
/// batch sizes differ by at most one; consecutive batches are at least
/// `min_batch_interval` apart (unless the window is shorter, then there is one
/// batch); every `retry_after` is at most `max_retry_after` and at most the
/// batch interval.
pub fn plan(connections: usize, config: &SpreadConfig, rng: &mut SplitMix64) -> Vec<Batch> {
    if connections == 0 {
        return Vec::new();
    }
    let window_ms = millis(config.window);
    let min_gap_ms = millis(config.min_batch_interval).max(1);
    // Batches at 0, gap, 2*gap, ..., (n-1)*gap <= window.
    let max_batches = window_ms / min_gap_ms + 1;
    let count = u64::try_from(connections)
        .unwrap_or(u64::MAX)
        .min(max_batches)
        .max(1);
    let gap_ms = window_ms.checked_div(count - 1).unwrap_or(0);
    let jitter_cap_ms = if count == 1 {
        window_ms.max(min_gap_ms)
    } else {
        gap_ms
    }
    .min(millis(config.max_retry_after));
    let count_usize = usize::try_from(count).unwrap_or(usize::MAX);
    let base = connections / count_usize;
    let extra = connections % count_usize;
    let mut batches = Vec::with_capacity(count_usize);
    let mut next = 0;
    for i in 0..count_usize {
        let size = base + usize::from(i < extra);
        let members = (next..next + size)
            .map(|index| (index, Duration::from_millis(rng.up_to(jitter_cap_ms))))
            .collect();
        next += size;
        let at = gap_ms.saturating_mul(u64::try_from(i).unwrap_or(u64::MAX));
        batches.push(Batch {
            at: Duration::from_millis(at),
            members,
        });
    }
    batches
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(window_s: u64) -> SpreadConfig {
        SpreadConfig {
            window: Duration::from_secs(window_s),
            min_batch_interval: Duration::from_secs(1),
            max_retry_after: Duration::from_secs(10),
        }
    }

    fn check(connections: usize, config: &SpreadConfig, seed: u64) {
        let batches = plan(connections, config, &mut SplitMix64::new(seed));
        let mut seen = vec![false; connections];
        let mut last_at = None;
        let sizes: Vec<usize> = batches.iter().map(|b| b.members.len()).collect();
        for batch in &batches {
            assert!(batch.at <= config.window, "{connections}: {batch:?}");
            if let Some(last) = last_at {
                assert!(batch.at >= last, "time order");
                if config.window >= config.min_batch_interval {
                    assert!(batch.at - last >= config.min_batch_interval);
                }
            } else {
                assert_eq!(batch.at, Duration::ZERO);
            }
            last_at = Some(batch.at);
            for &(index, retry) in &batch.members {
                assert!(!seen[index], "index {index} twice");
                seen[index] = true;
                assert!(retry <= config.max_retry_after);
            }
        }
        assert!(seen.iter().all(|s| *s), "every connection planned");
        if let (Some(min), Some(max)) = (sizes.iter().min(), sizes.iter().max()) {
            assert!(max - min <= 1, "{sizes:?}");
        }
    }

    #[test]
    fn no_connections_no_batches() {
        assert!(plan(0, &config(300), &mut SplitMix64::new(1)).is_empty());
    }

    #[test]
    fn every_connection_exactly_once_for_many_shapes() {
        for connections in [1, 2, 3, 7, 100, 299, 300, 301, 10_000] {
            for window in [0, 1, 5, 300] {
                for seed in [0, 1, 42] {
                    check(connections, &config(window), seed);
                }
            }
        }
    }

    #[test]
    fn ten_thousand_connections_over_five_minutes_make_small_even_batches() {
        let batches = plan(10_000, &config(300), &mut SplitMix64::new(7));
        assert_eq!(batches.len(), 301);
        assert_eq!(batches[0].at, Duration::ZERO);
        assert_eq!(batches[300].at, Duration::from_secs(300));
        assert!(batches.iter().all(|b| b.members.len() <= 34));
        // The retry delays fill the one-second gap rather than all being 0.
        let retries: Vec<u64> = batches[0].members.iter().map(|(_, r)| millis(*r)).collect();
        assert!(retries.iter().all(|r| *r <= 1_000));
        assert!(retries.iter().any(|r| *r > 500) && retries.iter().any(|r| *r < 500));
    }

    #[test]
    fn few_connections_are_spread_over_the_whole_window() {
        let batches = plan(3, &config(60), &mut SplitMix64::new(7));
        let at: Vec<u64> = batches.iter().map(|b| b.at.as_secs()).collect();
        assert_eq!(at, [0, 30, 60]);
    }

    #[test]
    fn a_zero_window_sends_one_batch_at_once() {
        let batches = plan(50, &config(0), &mut SplitMix64::new(7));
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].at, Duration::ZERO);
        assert_eq!(batches[0].members.len(), 50);
    }

    #[test]
    fn the_same_seed_gives_the_same_plan() {
        let a = plan(500, &config(30), &mut SplitMix64::new(9));
        let b = plan(500, &config(30), &mut SplitMix64::new(9));
        let c = plan(500, &config(30), &mut SplitMix64::new(10));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn up_to_stays_in_range() {
        let mut rng = SplitMix64::new(3);
        for max in [0, 1, 2, 1_000, u64::MAX] {
            for _ in 0..100 {
                assert!(rng.up_to(max) <= max);
            }
        }
    }
}
