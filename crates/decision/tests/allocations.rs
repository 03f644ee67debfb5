//! A tick allocates nothing that grows with the fleet: no allocation at all
//! on holds and scale-outs, and only the victim's id on scale-in.

mod common;

use common::*;
use rtc_decision::{Action, Engine, Observation, Policy, State};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn blocks_during(f: impl FnOnce()) -> u64 {
    let before = dhat::HeapStats::get().total_blocks;
    f();
    dhat::HeapStats::get().total_blocks - before
}

// One test function: dhat's testing profiler is process-wide.
#[test]
fn decisions_allocate_nothing_per_node() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let engine = Engine::new(Policy {
        max_replicas: 20_000,
        scale_in_stabilization_ms: 0,
        ..Policy::default()
    })
    .expect("policy");
    for n in [50usize, 10_000] {
        let hot = loaded(n, 0.8, 0.5);
        let calm = idle(n);
        let steady = loaded(n, 0.4, 0.4);
        let state = State::default();
        let obs = |nodes| Observation {
            now_ms: 1_000_000,
            replicas: n as u32,
            nodes,
        };

        let blocks = blocks_during(|| {
            let (d, _) = engine.decide(&state, &obs(&hot));
            assert_eq!(d.action, Action::ScaleOut);
        });
        assert_eq!(blocks, 0, "scale-out over {n} nodes allocated");

        let blocks = blocks_during(|| {
            let (d, _) = engine.decide(&state, &obs(&steady));
            assert_eq!(d.action, Action::Hold);
        });
        assert_eq!(blocks, 0, "hold over {n} nodes allocated");

        let blocks = blocks_during(|| {
            let (d, _) = engine.decide(&state, &obs(&calm));
            assert_eq!(d.action, Action::ScaleIn);
        });
        assert_eq!(blocks, 1, "scale-in over {n} nodes: only the victim id");
    }
}
