//! The scaling-decision core of a WebSocket fleet.
//!
//! Every tick the caller hands over what it knows: the clock, the workload's
//! current spec replicas, and the latest heartbeat of every socket node (CPU
//! and memory as fractions of the container limit, active connections,
//! messages per second, p95 latency, Kafka lag, the heartbeat's age and
//! whether the node is draining). The core weighs all of it together and
//! answers **scale out** by 1 to `max_step` nodes, **scale in** by exactly
//! one named node, or **hold**, always with a reason code, the urgency and
//! the aggregates behind it.
//!
//! What it promises:
//! - **Pure and deterministic.** `(policy, state, observation) -> (decision,
//!   state)`. No clock, no I/O, no randomness, no async: time is an
//!   argument, so the same inputs always give the same answer, and tests
//!   step virtual time.
//! - **Missing data is never zero load.** Stale, draining and invalid nodes
//!   (non-finite or negative values, CPU or memory above
//!   [`Policy::max_valid_fraction`]) are left out and counted in
//!   [`Excluded`]; scale-in needs a report from every replica.
//! - **Bounded.** A scale action never moves replicas away from
//!   `[min_replicas, max_replicas]`; scale-out steps are `1..=max_step`;
//!   scale-in is exactly one.
//! - **Explainable.** [`Decision::explain`] yields log lines such as
//!   `CRITICAL: resource overload (CPU 75.0%, Mem 80.0%)`.
//! - **Resumable.** [`State`] is small and serde-serializable, so another
//!   process can pick up the scale-in clock and the scale-out history.
//! - **Cheap.** One pass over the nodes, no allocation per tick except the
//!   victim's id on scale-in.
//!
//! The rules and why they are what they are: `docs/decision-policy.md` in
//! the repository, and the crate's README.
//!
//! # Example
//!
//! ```
//! use rtc_decision::{Action, Engine, NodeSample, Observation, Policy, Reason, State, Urgency};
//!
//! let engine = Engine::new(Policy::default())?;
//! let node = |id: &str, cpu: f64, mem: f64| NodeSample {
//!     id: id.to_string(),
//!     cpu,
//!     mem,
//!     conn: 900.0,
//!     mps: 40.0,
//!     p95_ms: 120.0,
//!     lag_ms: 15.0,
//!     age_ms: 1_000,
//!     draining: false,
//! };
//! let nodes: Vec<NodeSample> = (0..5).map(|i| node(&format!("socket-{i}"), 0.75, 0.80)).collect();
//! let obs = Observation { now_ms: 0, replicas: 5, nodes: &nodes };
//!
//! let (decision, state) = engine.decide(&State::default(), &obs);
//! assert_eq!(decision.action, Action::ScaleOut);
//! assert_eq!((decision.from, decision.to), (5, 8));
//! assert_eq!(decision.urgency, Urgency::Critical);
//! assert_eq!(decision.reason, Reason::ResourceOverload);
//!
//! let lines: Vec<String> = decision.explain().map(|l| l.to_string()).collect();
//! assert_eq!(lines, [
//!     "CRITICAL: resource overload (CPU 75.0%, Mem 80.0%)",
//!     "Exponential scale-out: urgency=3, base=3, consecutive=0, growth=n/a, step=3",
//!     "SCALE_OUT nodes=5->8 (+3)",
//! ]);
//! assert_eq!(state.consecutive, 1);
//! # Ok::<(), rtc_decision::PolicyError>(())
//! ```

mod decision;
mod engine;
mod observation;
mod policy;
pub mod replay;

pub use decision::{
    Action, Decision, Indicators, Line, Reason, Rebalance, Shed, StepDetail, Urgency,
};
pub use engine::{Engine, STATE_VERSION, ScaleOutRecord, Snapshot, State};
pub use observation::{Aggregates, Excluded, NodeSample, Observation};
pub use policy::{
    Policy, PolicyError, RebalancePolicy, ScaleInThresholds, StepPolicy, UrgencyThresholds,
};

/// The README's example, compiled and run as a doc test.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
