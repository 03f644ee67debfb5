//! The scaling signal other consumers read, and where it goes.

use rtc_decision::{Action, Aggregates, Reason, Urgency};
use serde::Serialize;

/// One scaling action as published on `rtc.control.scale`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScaleSignal {
    /// `scale_out` or `scale_in`.
    pub action: Action,
    /// Replicas before.
    pub from: u32,
    /// Replicas written.
    pub to: u32,
    /// `to - from`.
    pub delta: i64,
    /// Urgency of the decision.
    pub urgency: Urgency,
    /// Reason code of the decision.
    pub reason: Reason,
    /// The pod expected to go on scale-in.
    pub victim: Option<String>,
    /// Aggregates over the fresh nodes behind the decision.
    pub aggregates: Aggregates,
    /// The leader that wrote it.
    pub leader: String,
    /// The leader's fencing token at the write.
    pub fencing_token: u64,
    /// Wall-clock time of the decision, ms since the Unix epoch.
    pub timestamp_ms: u64,
}

/// Where scaling signals go. `offer` must never block or fail the tick: a
/// sink that cannot keep up drops the signal and counts it.
pub trait SignalSink: Send + Sync {
    /// Hands a signal over; returns `false` when it was dropped.
    fn offer(&self, signal: &ScaleSignal) -> bool;
}

/// Drops every signal: for setups with no consumer.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSignals;

impl SignalSink for NoSignals {
    fn offer(&self, _: &ScaleSignal) -> bool {
        true
    }
}

/// Keeps every signal in memory, for tests.
#[cfg(any(test, feature = "test-util"))]
#[derive(Debug, Default)]
#[expect(
    clippy::disallowed_types,
    reason = "signals are recorded and read in sync code, never across an .await"
)]
pub struct RecordingSink {
    signals: std::sync::Mutex<Vec<ScaleSignal>>,
}

#[cfg(any(test, feature = "test-util"))]
impl RecordingSink {
    /// Everything offered so far.
    pub fn signals(&self) -> Vec<ScaleSignal> {
        self.signals.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

#[cfg(any(test, feature = "test-util"))]
impl SignalSink for RecordingSink {
    fn offer(&self, signal: &ScaleSignal) -> bool {
        match self.signals.lock() {
            Ok(mut s) => {
                s.push(signal.clone());
                true
            }
            Err(_) => false,
        }
    }
}
