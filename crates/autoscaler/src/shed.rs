//! Where a rebalance's sheds go: the leader hands each decided
//! [`Rebalance`] to a [`ShedSink`], which asks the hot nodes to move part of
//! their clients (the load-balancer's sink calls each node's `POST /shed`).

use rtc_decision::{NodeSample, Rebalance};

/// Where rebalances go. Like [`SignalSink`](crate::SignalSink), `offer`
/// must never block or fail the tick: the requests go out in the
/// background, and a sink that cannot send counts and logs it.
pub trait ShedSink: Send + Sync {
    /// Hands a rebalance over; returns `false` when it was dropped.
    fn offer(&self, rebalance: &Rebalance) -> bool;
}

/// Sends nothing: rebalances are decided and recorded only.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoShedding;

impl ShedSink for NoShedding {
    fn offer(&self, _: &Rebalance) -> bool {
        false
    }
}

/// Most minus fewest connections over the nodes that are not draining and
/// whose heartbeat is at most `stale_after_ms` old; `None` with fewer than
/// two. The same spread the rebalance rule bounds.
pub fn connection_spread(samples: &[NodeSample], stale_after_ms: u64) -> Option<f64> {
    let conns = samples
        .iter()
        .filter(|s| !s.draining && s.age_ms <= stale_after_ms && s.conn.is_finite())
        .map(|s| s.conn);
    let (n, most, fewest) = conns.fold((0usize, f64::MIN, f64::MAX), |(n, hi, lo), c| {
        (n + 1, hi.max(c), lo.min(c))
    });
    (n >= 2).then_some(most - fewest)
}

/// Keeps every rebalance in memory, for tests.
#[cfg(any(test, feature = "test-util"))]
#[derive(Debug, Default)]
#[expect(
    clippy::disallowed_types,
    reason = "rebalances are recorded and read in sync code, never across an .await"
)]
pub struct RecordingShedSink {
    offered: std::sync::Mutex<Vec<Rebalance>>,
}

#[cfg(any(test, feature = "test-util"))]
impl RecordingShedSink {
    /// Everything offered so far.
    pub fn offered(&self) -> Vec<Rebalance> {
        self.offered.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

#[cfg(any(test, feature = "test-util"))]
impl ShedSink for RecordingShedSink {
    fn offer(&self, rebalance: &Rebalance) -> bool {
        match self.offered.lock() {
            Ok(mut s) => {
                s.push(rebalance.clone());
                true
            }
            Err(_) => false,
        }
    }
}
