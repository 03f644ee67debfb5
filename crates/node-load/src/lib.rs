//! A socket node's own load, as its heartbeat and `/metrics` report it.
//!
//! - [`resources`]: CPU and memory as fractions of the limits of the cgroup
//!   the process is in (v1 or v2), or of the host when there is none.
//! - [`window`]: delivered messages per second and end-to-end latency
//!   percentiles (HDR histograms) over sliding windows.
//! - [`Meter`]: both windows and the delivery-topic lag, read together as
//!   [`Measured`]; [`load`] assembles the heartbeat's [`Load`].
//!
//! # What it promises
//!
//! - **Time is passed in.** Everything but [`resources::Sampler`] is pure:
//!   the caller hands over milliseconds on its own monotonic clock (and the
//!   wall clock where send times from other nodes are compared), so tests
//!   step time.
//! - **Bounded memory.** A window has a fixed number of slots, whatever the
//!   traffic; latencies beyond an hour are clamped, not lost.
//! - **Missing data is not zero load.** A sampler that finds no cgroup limit
//!   for a resource says so for that resource
//!   ([`rtc_heartbeat::LimitSource::Host`]) rather than reporting fractions
//!   of nothing.
//! - **Files only.** [`resources::Sampler`] reads files under roots it is
//!   given; it never reads the environment.

pub mod resources;
pub mod window;

pub use resources::{Sampler, Usage};
pub use rtc_heartbeat::Load;
pub use window::{LatencyWindow, RateWindow};

/// Longest window accepted, seconds.
pub const MAX_WINDOW_SECS: usize = 3_600;

/// A [`Meter`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// The window is empty or longer than [`MAX_WINDOW_SECS`].
    #[error("a load window of {secs} s is not allowed; allowed: 1 to {MAX_WINDOW_SECS}")]
    Window {
        /// The window asked for.
        secs: usize,
    },
}

impl LoadError {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Window { .. } => "window",
        }
    }
}

/// A snapshot of what a [`Meter`] measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measured {
    /// Delivered messages per second over the window.
    pub mps: f64,
    /// p95 end-to-end latency over the window, ms (0 without samples).
    pub p95_ms: f64,
    /// Delivery-topic lag in records.
    pub lag_records: u64,
    /// Delivery-topic lag in ms behind.
    pub lag_ms: f64,
}

/// How far a topic consumer is behind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lag {
    /// Records between the consumer's position and the high watermark.
    pub records: u64,
    /// How long ago the oldest record not yet handled was sent, ms; 0 when
    /// nothing is left.
    pub ms: u64,
}

impl Lag {
    /// The lag after a batch: `position` is the next offset to read,
    /// `oldest_unhandled_ms` the send time (wall clock, ms) of the first
    /// record of the batch, `wall_now_ms` the wall clock now.
    pub fn after_batch(
        high_watermark: i64,
        position: i64,
        oldest_unhandled_ms: Option<u64>,
        wall_now_ms: u64,
    ) -> Self {
        let records = u64::try_from(high_watermark.saturating_sub(position)).unwrap_or(0);
        let ms = match (records, oldest_unhandled_ms) {
            (0, _) | (_, None) => 0,
            (_, Some(sent)) => wall_now_ms.saturating_sub(sent),
        };
        Self { records, ms }
    }
}

/// Delivered messages, their latency and the consumer lag of one node.
#[derive(Debug, Clone)]
pub struct Meter {
    delivered: RateWindow,
    latency: LatencyWindow,
    lag: Lag,
}

impl Meter {
    /// Windows of `window_secs` one-second slots.
    ///
    /// # Errors
    ///
    /// [`LoadError::Window`] unless `window_secs` is 1 to [`MAX_WINDOW_SECS`].
    pub fn new(window_secs: usize) -> Result<Self, LoadError> {
        if !(1..=MAX_WINDOW_SECS).contains(&window_secs) {
            return Err(LoadError::Window { secs: window_secs });
        }
        Ok(Self {
            delivered: RateWindow::new(window_secs, 1000),
            latency: LatencyWindow::new(window_secs, 1000),
            lag: Lag::default(),
        })
    }

    /// Counts one message delivered at `now_ms` (monotonic) that took
    /// `latency_ms` from its send.
    pub fn delivered(&mut self, now_ms: u64, latency_ms: u64) {
        self.delivered.record(now_ms, 1);
        self.latency.record(now_ms, latency_ms);
    }

    /// Sets the consumer lag.
    pub fn set_lag(&mut self, lag: Lag) {
        self.lag = lag;
    }

    /// The figures over the window ending at `now_ms` (monotonic).
    pub fn measured(&mut self, now_ms: u64) -> Measured {
        Measured {
            mps: self.delivered.per_second(now_ms),
            p95_ms: self.latency.quantile(now_ms, 0.95).unwrap_or(0) as f64,
            lag_records: self.lag.records,
            lag_ms: self.lag.ms as f64,
        }
    }
}

/// The heartbeat's load from one resource reading, the relay's figures, the
/// open connections and the drain flag.
pub fn load(usage: Usage, measured: Measured, conn: u64, draining: bool) -> Load {
    Load {
        cpu: usage.cpu,
        mem: usage.mem,
        cpu_of: usage.cpu_of,
        mem_of: usage.mem_of,
        conn,
        mps: measured.mps,
        p95_ms: measured.p95_ms,
        lag_records: measured.lag_records,
        lag_ms: measured.lag_ms,
        draining,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn windows_outside_the_allowed_range_are_refused() {
        assert_eq!(Meter::new(0).err(), Some(LoadError::Window { secs: 0 }));
        assert!(Meter::new(3_601).is_err());
        assert!(Meter::new(1).is_ok());
        assert_eq!(
            LoadError::Window { secs: 0 }.to_string(),
            "a load window of 0 s is not allowed; allowed: 1 to 3600"
        );
    }

    #[test]
    fn a_meter_reports_rate_latency_and_lag_together() -> Result<(), LoadError> {
        let mut m = Meter::new(10)?;
        assert_eq!(
            m.measured(0),
            Measured {
                mps: 0.0,
                p95_ms: 0.0,
                lag_records: 0,
                lag_ms: 0.0
            }
        );
        for i in 0..100 {
            m.delivered(500, i + 1);
        }
        m.set_lag(Lag::after_batch(10, 4, Some(1_000), 1_250));
        let got = m.measured(900);
        assert!((got.mps - 10.0).abs() < 1e-9, "{got:?}");
        assert!((94.0..=96.0).contains(&got.p95_ms), "{got:?}");
        assert_eq!((got.lag_records, got.lag_ms), (6, 250.0));
        Ok(())
    }

    #[test]
    fn no_lag_when_caught_up_or_without_a_send_time() {
        assert_eq!(Lag::after_batch(5, 5, Some(0), 9_999), Lag::default());
        assert_eq!(
            Lag::after_batch(9, 5, None, 9_999),
            Lag { records: 4, ms: 0 }
        );
        // A position past the high watermark (a stale answer) is no lag.
        assert_eq!(Lag::after_batch(3, 5, Some(0), 1), Lag::default());
    }

    proptest! {
        #[test]
        fn lag_is_never_negative_and_zero_when_caught_up(
            hw in -10i64..1_000, pos in -10i64..1_000,
            sent in proptest::option::of(0u64..10_000), now in 0u64..10_000,
        ) {
            let lag = Lag::after_batch(hw, pos, sent, now);
            prop_assert_eq!(lag.records, u64::try_from(hw - pos).unwrap_or(0));
            if lag.records == 0 {
                prop_assert_eq!(lag.ms, 0);
            }
            prop_assert!(lag.ms <= now);
        }

        #[test]
        fn the_rate_never_exceeds_what_was_recorded(
            events in proptest::collection::vec((0u64..60_000, 1u64..100), 0..50),
            at in 0u64..120_000,
        ) {
            let mut w = RateWindow::new(10, 1000);
            let mut sorted = events.clone();
            sorted.sort_unstable();
            for (t, n) in &sorted {
                w.record(*t, *n);
            }
            let total: u64 = sorted.iter().map(|(_, n)| n).sum();
            let rate = w.per_second(at);
            prop_assert!(rate >= 0.0);
            prop_assert!(rate <= total as f64 / 10.0 + 1e-9);
        }
    }
}
