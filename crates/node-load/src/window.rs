//! Sliding windows for the node's own load figures. Pure: time is passed in
//! as milliseconds on the caller's monotonic clock.

use hdrhistogram::Histogram;

/// Counts events per slot and reports the rate over the last `slots` slots.
#[derive(Debug, Clone)]
pub struct RateWindow {
    slot_ms: u64,
    /// (slot number, count), indexed by slot number modulo the length.
    slots: Vec<(u64, u64)>,
}

impl RateWindow {
    /// A window of `slots` slots of `slot_ms` each (for example 10 × 1000).
    pub fn new(slots: usize, slot_ms: u64) -> Self {
        Self {
            slot_ms: slot_ms.max(1),
            slots: vec![(u64::MAX, 0); slots.max(1)],
        }
    }

    fn index(&self, slot: u64) -> usize {
        let len = u64::try_from(self.slots.len()).unwrap_or(u64::MAX);
        usize::try_from(slot % len).unwrap_or(0)
    }

    /// Records `n` events at `now_ms`.
    pub fn record(&mut self, now_ms: u64, n: u64) {
        let slot = now_ms / self.slot_ms;
        let i = self.index(slot);
        let entry = &mut self.slots[i];
        if entry.0 != slot {
            *entry = (slot, 0);
        }
        entry.1 = entry.1.saturating_add(n);
    }

    /// Events per second over the window ending at `now_ms` (the current,
    /// partial slot included, the window's full length as the divisor, so a
    /// burst reads low at first rather than high).
    pub fn per_second(&self, now_ms: u64) -> f64 {
        let current = now_ms / self.slot_ms;
        let len = u64::try_from(self.slots.len()).unwrap_or(u64::MAX);
        let oldest = current.saturating_sub(len - 1);
        let total: u64 = self
            .slots
            .iter()
            .filter(|(slot, _)| *slot != u64::MAX && *slot >= oldest && *slot <= current)
            .map(|(_, n)| *n)
            .sum();
        let seconds = (len * self.slot_ms) as f64 / 1000.0;
        total as f64 / seconds
    }
}

/// Latency samples in an HDR histogram per slot; percentiles over the last
/// `slots` slots.
#[derive(Debug, Clone)]
pub struct LatencyWindow {
    slot_ms: u64,
    slots: Vec<(u64, Histogram<u64>)>,
    merged: Histogram<u64>,
}

/// Highest latency tracked, in ms (an hour); larger values are clamped.
const MAX_LATENCY_MS: u64 = 3_600_000;

fn histogram() -> Histogram<u64> {
    // Bounds are constants that `new_with_bounds` accepts (low >= 1,
    // high >= 2 * low, sigfig <= 5); the fallback is never taken.
    Histogram::new_with_bounds(1, MAX_LATENCY_MS, 2).unwrap_or_else(|_| {
        Histogram::new(2).unwrap_or_else(|_| unreachable!("2 significant figures are valid"))
    })
}

impl LatencyWindow {
    /// A window of `slots` slots of `slot_ms` each.
    pub fn new(slots: usize, slot_ms: u64) -> Self {
        Self {
            slot_ms: slot_ms.max(1),
            slots: (0..slots.max(1)).map(|_| (u64::MAX, histogram())).collect(),
            merged: histogram(),
        }
    }

    fn index(&self, slot: u64) -> usize {
        let len = u64::try_from(self.slots.len()).unwrap_or(u64::MAX);
        usize::try_from(slot % len).unwrap_or(0)
    }

    /// Records one latency of `latency_ms` at `now_ms` (0 counts as 1 ms:
    /// below the clock's resolution between nodes anyway).
    pub fn record(&mut self, now_ms: u64, latency_ms: u64) {
        let slot = now_ms / self.slot_ms;
        let i = self.index(slot);
        let entry = &mut self.slots[i];
        if entry.0 != slot {
            entry.0 = slot;
            entry.1.reset();
        }
        entry
            .1
            .saturating_record(latency_ms.clamp(1, MAX_LATENCY_MS));
    }

    /// The `quantile` (0..1) over the window ending at `now_ms`, in ms;
    /// `None` when there were no samples.
    pub fn quantile(&mut self, now_ms: u64, quantile: f64) -> Option<u64> {
        let current = now_ms / self.slot_ms;
        let len = u64::try_from(self.slots.len()).unwrap_or(u64::MAX);
        let oldest = current.saturating_sub(len - 1);
        self.merged.reset();
        for (slot, h) in &self.slots {
            if *slot != u64::MAX && *slot >= oldest && *slot <= current {
                // Same bounds everywhere, so adding cannot fail.
                let _ = self.merged.add(h);
            }
        }
        if self.merged.is_empty() {
            None
        } else {
            Some(self.merged.value_at_quantile(quantile))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_counts_only_the_window() {
        let mut w = RateWindow::new(10, 1000);
        for t in 0..10 {
            w.record(t * 1000 + 500, 100);
        }
        assert!((w.per_second(9_999) - 100.0).abs() < 1e-9);
        // Five seconds later, half the slots have aged out.
        assert!((w.per_second(14_999) - 50.0).abs() < 1e-9);
        assert!(w.per_second(100_000).abs() < 1e-9);
        // A slot reused after wrapping starts from zero.
        w.record(20_000, 7);
        assert!((w.per_second(20_000) - 0.7).abs() < 1e-9);
    }

    #[test]
    fn p95_over_the_window() {
        let mut w = LatencyWindow::new(10, 1000);
        assert_eq!(w.quantile(0, 0.95), None);
        for i in 1..=100 {
            w.record(500, i);
        }
        let p95 = w.quantile(900, 0.95).expect("samples");
        assert!((94..=96).contains(&p95), "{p95}");
        // Old samples leave the window; new ones dominate.
        for _ in 0..10 {
            w.record(12_000, 1_000);
        }
        let p95 = w.quantile(12_000, 0.95).expect("samples");
        assert!((995..=1_005).contains(&p95), "{p95}");
        assert_eq!(w.quantile(60_000, 0.95), None);
        // Out-of-range values are clamped, not lost or panicking.
        w.record(60_000, u64::MAX);
        w.record(60_000, 0);
        assert!(w.quantile(60_000, 1.0).is_some());
    }
}
