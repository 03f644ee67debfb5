//! What the core sees on one tick, and the aggregates it derives from it.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The latest heartbeat of one socket node, as the caller knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSample {
    /// Node id (the pod name).
    pub id: String,
    /// CPU use as a fraction of the container's limit (0..=1, may briefly
    /// exceed 1 when bursting).
    pub cpu: f64,
    /// Memory use as a fraction of the container's limit.
    pub mem: f64,
    /// Active connections.
    pub conn: f64,
    /// Delivered messages per second over the node's sliding window.
    pub mps: f64,
    /// p95 end-to-end delivery latency in milliseconds.
    pub p95_ms: f64,
    /// Kafka consumer lag in milliseconds behind.
    pub lag_ms: f64,
    /// Age of this heartbeat when the observation was taken, in ms.
    pub age_ms: u64,
    /// The node is draining and about to leave.
    pub draining: bool,
}

/// One tick's input. Borrowing the node list keeps a tick free of
/// allocations proportional to the fleet.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    /// The caller's clock, in milliseconds. Only differences matter.
    pub now_ms: u64,
    /// The workload's current spec replicas.
    pub replicas: u32,
    /// The latest heartbeat of every known node.
    pub nodes: &'a [NodeSample],
}

/// Why nodes were left out of the aggregates. A node counts under the first
/// that applies, in this order: stale, draining, invalid.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Excluded {
    /// Heartbeat older than the policy's `stale_after_ms`.
    pub stale: u32,
    /// Node reported it is draining.
    pub draining: u32,
    /// Values that are not finite, negative, or CPU/memory above the
    /// policy's `max_valid_fraction`.
    pub invalid: u32,
}

impl Excluded {
    /// Total nodes left out.
    pub fn total(&self) -> u32 {
        self.stale
            .saturating_add(self.draining)
            .saturating_add(self.invalid)
    }
}

/// Aggregates over the fresh nodes only. With `n == 0` every value is 0 and
/// meaningless: the core holds with `no-data` and never reads them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Aggregates {
    /// Number of fresh nodes.
    pub n: u32,
    /// Mean CPU fraction.
    pub avg_cpu: f64,
    /// Mean memory fraction.
    pub avg_mem: f64,
    /// Mean messages per second.
    pub avg_mps: f64,
    /// Mean active connections.
    pub avg_conn: f64,
    /// Mean p95 latency, ms.
    pub avg_p95: f64,
    /// Mean Kafka lag, ms.
    pub avg_lag: f64,
    /// Highest CPU fraction of any fresh node.
    pub max_cpu: f64,
    /// Highest memory fraction of any fresh node.
    pub max_mem: f64,
    /// `avg_conn / conn_capacity`, when a capacity is configured.
    pub conn_util: Option<f64>,
    /// `avg_mps / mps_capacity`, when a capacity is configured.
    pub mps_util: Option<f64>,
}

impl fmt::Display for Aggregates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "fresh={} cpu={:.1}% (max {:.1}%) mem={:.1}% (max {:.1}%) conn={:.1} mps={:.1} p95={:.0}ms lag={:.0}ms",
            self.n,
            self.avg_cpu * 100.0,
            self.max_cpu * 100.0,
            self.avg_mem * 100.0,
            self.max_mem * 100.0,
            self.avg_conn,
            self.avg_mps,
            self.avg_p95,
            self.avg_lag,
        )?;
        if let Some(u) = self.conn_util {
            write!(f, " conn_util={:.1}%", u * 100.0)?;
        }
        if let Some(u) = self.mps_util {
            write!(f, " mps_util={:.1}%", u * 100.0)?;
        }
        Ok(())
    }
}
