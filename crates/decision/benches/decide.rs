//! One decision over 50 and over 10 000 nodes, next to a baseline measured in
//! the same run: a bare pass that only sums CPU over the same nodes. The
//! ratio tells how much the full policy costs over touching every node once.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark whose fixture cannot be built should stop at once; criterion's functions return nothing"
)]

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use rtc_decision::{Engine, NodeSample, Observation, Policy, State};
use std::hint::black_box;

fn fleet(n: usize, cpu: f64) -> Vec<NodeSample> {
    (0..n)
        .map(|i| NodeSample {
            id: format!("socket-{i}"),
            cpu: cpu + (i % 7) as f64 * 0.01,
            mem: 0.30 + (i % 5) as f64 * 0.01,
            conn: 400.0 + (i % 13) as f64,
            mps: 50.0 + (i % 11) as f64,
            p95_ms: 80.0 + (i % 17) as f64,
            lag_ms: 10.0,
            age_ms: 1_000 + (i % 3) as u64 * 1_000,
            draining: false,
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let engine = Engine::new(Policy {
        max_replicas: 20_000,
        ..Policy::default()
    })
    .expect("policy");
    let mut group = c.benchmark_group("decide");
    for n in [50usize, 10_000] {
        // Overloaded (a scale-out is sized) and idle (the scale-in path
        // runs, with victim selection and one id clone).
        for (label, cpu) in [("overload", 0.80), ("idle", 0.05)] {
            let nodes = fleet(n, cpu);
            let obs = Observation {
                now_ms: 10_000_000,
                replicas: n as u32,
                nodes: &nodes,
            };
            // A low clock running since 0 and confirmed on the tick before,
            // not cut short by a gap in observations.
            let state = State {
                low_since_ms: Some(0),
                low_seen_ms: Some(obs.now_ms - 5_000),
                ..State::default()
            };
            group.bench_with_input(BenchmarkId::new(label, n), &obs, |b, obs| {
                b.iter(|| engine.decide(black_box(&state), black_box(obs)))
            });
        }
        let nodes = fleet(n, 0.5);
        group.bench_with_input(
            BenchmarkId::new("baseline-sum-cpu", n),
            &nodes,
            |b, nodes| b.iter(|| black_box(nodes).iter().map(|n| n.cpu).sum::<f64>()),
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
