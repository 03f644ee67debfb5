//! Small fixture builders shared by the decision tests.
#![allow(dead_code, unreachable_pub)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test support: a fixture that cannot be built should fail the test that uses it, at once"
)]

use rtc_decision::{Decision, Engine, NodeSample, Observation, Policy, State};

/// A calm, fresh node; adjust with struct update syntax or the helpers.
pub fn node(id: &str) -> NodeSample {
    NodeSample {
        id: id.to_string(),
        cpu: 0.40,
        mem: 0.40,
        conn: 500.0,
        mps: 50.0,
        p95_ms: 100.0,
        lag_ms: 20.0,
        age_ms: 1_000,
        draining: false,
    }
}

/// `n` nodes `socket-0..n` built by `f(i)` from a calm node.
pub fn fleet(n: usize, f: impl Fn(usize, NodeSample) -> NodeSample) -> Vec<NodeSample> {
    (0..n).map(|i| f(i, node(&format!("socket-{i}")))).collect()
}

/// `n` identical nodes with the given CPU and memory.
pub fn loaded(n: usize, cpu: f64, mem: f64) -> Vec<NodeSample> {
    fleet(n, |_, nd| NodeSample { cpu, mem, ..nd })
}

/// `n` idle nodes: well inside the scale-in thresholds.
pub fn idle(n: usize) -> Vec<NodeSample> {
    fleet(n, |i, nd| NodeSample {
        cpu: 0.05,
        mem: 0.10,
        conn: 10.0 + i as f64,
        mps: 1.0,
        p95_ms: 40.0,
        lag_ms: 5.0,
        ..nd
    })
}

pub fn engine() -> Engine {
    Engine::new(Policy::default()).expect("default policy")
}

pub fn engine_with(p: Policy) -> Engine {
    Engine::new(p).expect("valid policy")
}

/// One decision from `state`.
pub fn decide(
    e: &Engine,
    state: &State,
    now_ms: u64,
    replicas: u32,
    nodes: &[NodeSample],
) -> (Decision, State) {
    e.decide(
        state,
        &Observation {
            now_ms,
            replicas,
            nodes,
        },
    )
}

/// One decision from an empty state.
pub fn once(e: &Engine, replicas: u32, nodes: &[NodeSample]) -> Decision {
    decide(e, &State::default(), 0, replicas, nodes).0
}
