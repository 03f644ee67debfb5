//! The load-balancer leader's scaling loop.
//!
//! An [`Autoscaler`] runs on every replica and acts only while this replica
//! holds the lease ([`rtc_leader::LeaderGuard`]). Every tick interval it
//! ages the latest heartbeat snapshot ([`rtc_heartbeat::FleetSnapshot`]);
//! on becoming leader it resumes the stored decision state; while leading
//! it runs one [`Controller::tick`], bounded by a deadline and fenced by the
//! lease ([`LeaseFence`]).
//!
//! A [`Controller`] composes the decision core, the workload scaler and the
//! stored decision state. Each [`Controller::tick`]:
//!
//! 1. checks the fence (the leader guard) and reads the workload's spec
//!    replicas and resourceVersion;
//! 2. decides over the fleet's latest heartbeat samples, logging the
//!    explanation (holds at debug level unless their reason changes) and
//!    counting `rtc_lb_scale_signals_total{direction,urgency,reason}`;
//! 3. on scale-in, sets pod deletion costs (Deployment) or names the top
//!    ordinal (StatefulSet), then writes `/scale` with the resourceVersion
//!    read; the fence is checked again before every write;
//! 4. on success, advances the decision state, offers a [`ScaleSignal`] to
//!    the [`SignalSink`] (which never blocks), and saves the state, fenced by
//!    the leader's token, for a successor.
//!
//! A conflict (409) or a failed write leaves the decision state where it
//! was, so the next tick re-reads and decides again instead of repeating a
//! step blindly. Ticks take `&mut self`: they cannot overlap.
//!
//! The I/O it needs sits behind narrow traits: [`StateRepo`] (Redis:
//! `rtc-state-redis`) and [`SignalSink`] (Kafka: `rtc-signal-kafka`), with
//! in-memory doubles, `MemoryStateRepo` and `RecordingSink`, behind the
//! `test-util` feature. Time comes from outside: `tokio::time` for the
//! schedule and deadlines, a [`WallClock`](rtc_time::WallClock) for the
//! decisions' timestamps.

mod autoscaler;
mod controller;
mod shed;
mod signal;
mod state;

pub use autoscaler::{Autoscaler, ConfigError, LeaseFence, LoopConfig};
pub use controller::{Controller, DecisionRecord, TickError, TickReport};
#[cfg(any(test, feature = "test-util"))]
pub use shed::RecordingShedSink;
pub use shed::{NoShedding, ShedSink, connection_spread};
#[cfg(any(test, feature = "test-util"))]
pub use signal::RecordingSink;
pub use signal::{NoSignals, ScaleSignal, SignalSink};
#[cfg(any(test, feature = "test-util"))]
pub use state::MemoryStateRepo;
pub use state::{StateError, StateRepo, StoredState};

/// Registers the descriptions of this crate's metrics with the installed recorder.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "rtc_lb_scale_signals_total",
        "Decisions of the scaling loop, by direction, urgency and reason."
    );
    metrics::describe_gauge!("rtc_lb_ring_nodes", "Live socket nodes seen in heartbeats.");
    metrics::describe_gauge!(
        "rtc_lb_desired_replicas",
        "Replicas the last decision asked for."
    );
    metrics::describe_counter!(
        "rtc_lb_rebalances_total",
        "Rebalances decided, by whether they were handed to the nodes (sent) or only recorded (dropped)."
    );
    metrics::describe_counter!(
        "rtc_lb_rebalance_connections_total",
        "Connections the hot nodes were asked to shed."
    );
    metrics::describe_gauge!(
        "rtc_lb_connection_spread",
        "Most minus fewest connections over fresh, non-draining nodes: at the last rebalance (when=before) and one shed window later (when=after)."
    );
    metrics::describe_histogram!(
        "rtc_lb_decision_seconds",
        metrics::Unit::Seconds,
        "Time to compute one decision."
    );
}

#[cfg(test)]
mod tests;
