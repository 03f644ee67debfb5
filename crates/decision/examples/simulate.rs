//! A small, deterministic fleet simulator driven by the decision core.
//!
//! Offered load (connections and messages) follows a curve: quiet, a spike,
//! then calm. Load spreads evenly over the pods that are up; new pods join
//! 30 s after a scale-out, and a scale-in victim reports `draining` for one
//! tick, then leaves. Each tick's observation is printed as one line of the
//! replay format, so the output is a realistic trace for `load-balancer
//! decide`:
//!
//! ```text
//! cargo run -p rtc-decision --example simulate > crates/decision/examples/spike-then-calm.jsonl
//! ```

use rtc_decision::replay::ReplayInput;
use rtc_decision::{Action, Engine, NodeSample, Observation, Policy, PolicyError, State};

const TICK_MS: u64 = 15_000;
const JOIN_DELAY_MS: u64 = 30_000;
const CONN_PER_POD: f64 = 1_000.0;

/// Offered connections at `t` seconds: quiet, ramp up, plateau, fall, calm.
fn offered_connections(t: u64) -> f64 {
    let t = t as f64;
    let (quiet, peak, calm) = (1_400.0, 9_000.0, 500.0);
    if t < 120.0 {
        quiet
    } else if t < 420.0 {
        quiet + (peak - quiet) * (t - 120.0) / 300.0
    } else if t < 720.0 {
        peak
    } else if t < 900.0 {
        peak + (calm - peak) * (t - 720.0) / 180.0
    } else {
        calm
    }
}

/// A small deterministic wobble in [-1, 1], so pods are not identical.
fn wobble(tick: u64, pod: u64) -> f64 {
    let x = (tick.wrapping_mul(2_654_435_761) ^ pod.wrapping_mul(40_503)) % 1_000;
    x as f64 / 500.0 - 1.0
}

fn round3(v: f64) -> f64 {
    (v * 1_000.0).round() / 1_000.0
}

struct Pod {
    ordinal: u64,
    ready_at_ms: u64,
    draining: bool,
}

/// Runs the simulation and returns the observations, one per tick.
///
/// # Errors
///
/// [`PolicyError`] if the default policy is not valid.
pub fn trace() -> Result<Vec<ReplayInput>, PolicyError> {
    let engine = Engine::new(Policy::default())?;
    let mut state = State::default();
    let mut pods: Vec<Pod> = (0..3)
        .map(|ordinal| Pod {
            ordinal,
            ready_at_ms: 0,
            draining: false,
        })
        .collect();
    let mut next_ordinal = 3;
    let mut replicas: u32 = 3;
    let mut out = Vec::new();
    let end_ms = 40 * 60 * 1_000;
    let mut now = 0;
    while now <= end_ms {
        let tick = now / TICK_MS;
        let up: Vec<&Pod> = pods
            .iter()
            .filter(|p| p.ready_at_ms <= now && !p.draining)
            .collect();
        let per_pod = offered_connections(now / 1_000) / up.len().max(1) as f64;
        let nodes: Vec<NodeSample> = pods
            .iter()
            .filter(|p| p.ready_at_ms <= now)
            .map(|p| {
                let w = wobble(tick, p.ordinal);
                let conn = if p.draining {
                    0.0
                } else {
                    (per_pod * (1.0 + 0.03 * w)).round()
                };
                let load = conn / CONN_PER_POD;
                let cpu = (0.04 + 0.72 * load).min(1.0);
                NodeSample {
                    id: format!("socket-{}", p.ordinal),
                    cpu: round3(cpu),
                    mem: round3(0.10 + 0.60 * load),
                    conn,
                    mps: round3(conn * 0.05),
                    p95_ms: round3(45.0 + 900.0 * (cpu - 0.55).max(0.0) + 5.0 * w),
                    lag_ms: round3(8.0 + 1_200.0 * (cpu - 0.6).max(0.0)),
                    age_ms: 1_000 + (tick + p.ordinal) % 4 * 1_000,
                    draining: p.draining,
                }
            })
            .collect();
        let input = ReplayInput {
            now_ms: now,
            replicas,
            nodes,
        };
        let obs = Observation {
            now_ms: now,
            replicas,
            nodes: &input.nodes,
        };
        let (decision, next) = engine.decide(&state, &obs);
        state = next;
        out.push(input);

        // A draining pod has had its tick; it is gone now.
        pods.retain(|p| !p.draining);
        match decision.action {
            Action::ScaleOut => {
                for _ in decision.from..decision.to {
                    pods.push(Pod {
                        ordinal: next_ordinal,
                        ready_at_ms: now + JOIN_DELAY_MS,
                        draining: false,
                    });
                    next_ordinal += 1;
                }
            }
            Action::ScaleIn => {
                if let Some(victim) = &decision.victim
                    && let Some(p) = pods
                        .iter_mut()
                        .find(|p| &format!("socket-{}", p.ordinal) == victim)
                {
                    p.draining = true;
                }
            }
            // The simulator's pods have no clients to move.
            Action::Hold | Action::Rebalance => {}
        }
        replicas = decision.to;
        now += TICK_MS;
    }
    Ok(out)
}

#[allow(dead_code)]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    for line in trace()? {
        println!("{}", serde_json::to_string(&line)?);
    }
    Ok(())
}
