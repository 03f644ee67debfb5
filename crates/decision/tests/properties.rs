//! Properties that hold for every policy, state and observation.

use proptest::prelude::*;
use rtc_decision::{
    Action, Engine, NodeSample, Observation, Policy, ScaleOutRecord, Snapshot, State, Urgency,
};

/// Any f64 a caller might hand over, corrupt ones included.
fn any_value() -> impl Strategy<Value = f64> {
    prop_oneof![
        6 => 0.0..1.0f64,
        2 => 0.0..2000.0f64,
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => -10.0..0.0f64,
        1 => Just(2.0f64),
        1 => any::<f64>(),
    ]
}

fn any_node() -> impl Strategy<Value = NodeSample> {
    (
        0u8..40,
        any_value(),
        any_value(),
        any_value(),
        any_value(),
        any_value(),
        any_value(),
        prop_oneof![4 => 0u64..20_000, 1 => any::<u64>()],
        prop::bool::weighted(0.1),
    )
        .prop_map(
            |(id, cpu, mem, conn, mps, p95_ms, lag_ms, age_ms, draining)| NodeSample {
                id: format!("socket-{id}"),
                cpu,
                mem,
                conn,
                mps,
                p95_ms,
                lag_ms,
                age_ms,
                draining,
            },
        )
}

fn any_policy() -> impl Strategy<Value = Policy> {
    (
        1u32..10,
        0u32..60,
        1u32..8,
        prop::option::of(1.0..5000.0f64),
        prop::option::of(1.0..500.0f64),
        0i64..400_000,
        0i64..400_000,
        1i64..60_000,
    )
        .prop_map(
            |(min, span, max_step, conn, mps, in_window, stab, gap)| Policy {
                min_replicas: min,
                max_replicas: min + span,
                max_step,
                conn_capacity: conn,
                mps_capacity: mps,
                scale_in_window_ms: in_window,
                scale_in_stabilization_ms: stab,
                max_observation_gap_ms: gap,
                ..Policy::default()
            },
        )
}

fn any_state() -> impl Strategy<Value = State> {
    (
        prop::option::of((0u64..2_000_000, 0u8..4, any_value(), any_value())),
        prop::option::of(0u64..2_000_000),
        0u32..10,
        prop::option::of(0u64..2_000_000),
        prop::option::of(0u64..2_000_000),
    )
        .prop_map(|(out, last_in, consecutive, low_since, low_seen)| State {
            last_scale_out: out.map(|(at_ms, u, cpu, mem)| ScaleOutRecord {
                at_ms,
                urgency: [
                    Urgency::None,
                    Urgency::Moderate,
                    Urgency::High,
                    Urgency::Critical,
                ][usize::from(u)],
                snapshot: Snapshot {
                    cpu,
                    mem,
                    mps: 10.0,
                    conn: 100.0,
                    p95: 50.0,
                },
            }),
            last_scale_in_ms: last_in,
            consecutive,
            low_since_ms: low_since,
            low_seen_ms: low_seen,
            ..State::default()
        })
}

/// What the fleet looks like on one tick of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Load {
    /// Under-loaded, every replica reporting.
    Low,
    /// Neither pressed nor under-loaded.
    Balanced,
    /// Overloaded: scales out.
    Hot,
    /// Under-loaded, one replica missing.
    Incomplete,
    /// No node reporting.
    NoData,
}

fn any_load() -> impl Strategy<Value = Load> {
    prop_oneof![
        12 => Just(Load::Low),
        1 => Just(Load::Balanced),
        1 => Just(Load::Hot),
        1 => Just(Load::Incomplete),
        1 => Just(Load::NoData),
    ]
}

/// `n` nodes under the given load.
fn nodes_for(load: Load, n: u32) -> Vec<NodeSample> {
    let node = |i: u32, cpu: f64, mem: f64| NodeSample {
        id: format!("socket-{i}"),
        cpu,
        mem,
        conn: 10.0 + f64::from(i),
        mps: 1.0,
        p95_ms: 40.0,
        lag_ms: 5.0,
        age_ms: 1_000,
        draining: false,
    };
    match load {
        Load::Low => (0..n).map(|i| node(i, 0.05, 0.10)).collect(),
        Load::Balanced => (0..n).map(|i| node(i, 0.40, 0.40)).collect(),
        Load::Hot => (0..n).map(|i| node(i, 0.80, 0.40)).collect(),
        Load::Incomplete => (0..n.saturating_sub(1))
            .map(|i| node(i, 0.05, 0.10))
            .collect(),
        Load::NoData => Vec::new(),
    }
}

/// Time to the next observation, around the gap bound: mostly within it,
/// sometimes exactly at it, just over it, far over it, or no time at all.
fn any_pause(bound: u64) -> impl Strategy<Value = u64> {
    prop_oneof![
        8 => 1..=bound,
        1 => Just(bound),
        1 => Just(bound + 1),
        1 => bound + 1..bound * 10,
        1 => Just(0u64),
    ]
}

/// A policy for runs of ticks (short windows, so scale-ins happen), and the
/// run: start time, then each tick's pause since the one before and load.
fn any_run() -> impl Strategy<Value = (Policy, u64, Vec<(u64, Load)>)> {
    (1_000u64..30_000, 0i64..120_000, 0i64..60_000).prop_flat_map(|(bound, stab, window)| {
        let policy = Policy {
            max_observation_gap_ms: bound as i64,
            scale_in_stabilization_ms: stab,
            scale_in_window_ms: window,
            ..Policy::default()
        };
        (
            Just(policy),
            0u64..1_000_000,
            prop::collection::vec((any_pause(bound), any_load()), 1..150),
        )
    })
}

/// Distance of `r` from the range `[lo, hi]`.
fn distance(r: u32, lo: u32, hi: u32) -> u32 {
    if r < lo { lo - r } else { r.saturating_sub(hi) }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn decisions_respect_bounds_steps_and_data(
        policy in any_policy(),
        state in any_state(),
        nodes in prop::collection::vec(any_node(), 0..24),
        replicas in 0u32..80,
        now_ms in 0u64..3_000_000,
    ) {
        let engine = Engine::new(policy.clone()).expect("strategy builds valid policies");
        let obs = Observation { now_ms, replicas, nodes: &nodes };
        let (d, next) = engine.decide(&state, &obs);
        let (min, max) = (policy.min_replicas, policy.max_replicas);

        prop_assert_eq!(d.from, replicas);
        match d.action {
            Action::Hold => {
                prop_assert_eq!(d.to, d.from);
                prop_assert!(d.victim.is_none());
            }
            Action::Rebalance => {
                prop_assert!(policy.rebalance.enabled, "a rebalance with the rule off");
                prop_assert_eq!(d.to, d.from);
            }
            Action::ScaleOut if d.reason == rtc_decision::Reason::BelowMin => {
                // Back to the minimum, whatever the load; history untouched.
                prop_assert!(replicas < min);
                prop_assert_eq!(d.to, min);
                prop_assert_eq!(next.last_scale_out.map(|l| l.at_ms), state.last_scale_out.map(|l| l.at_ms));
                prop_assert_eq!(next.consecutive, state.consecutive);
            }
            Action::ScaleOut => {
                prop_assert!(d.urgency > Urgency::None);
                let step = d.to - d.from;
                prop_assert!((1..=policy.max_step).contains(&step), "step {}", step);
                prop_assert!(d.to <= max);
                prop_assert!(d.to >= min.min(max));
                prop_assert_eq!(next.last_scale_out.map(|l| l.at_ms), Some(now_ms));
            }
            Action::ScaleIn => {
                prop_assert_eq!(d.urgency, Urgency::None);
                prop_assert_eq!(d.to + 1, d.from, "scale-in is exactly one");
                prop_assert_eq!(d.aggregates.n, replicas, "only with complete data");
                prop_assert_eq!(d.excluded.total(), 0, "no node left out");
                prop_assert!(d.from > min);
                let victim = d.victim.as_deref().expect("scale-in names a victim");
                prop_assert!(nodes.iter().any(|n| n.id == victim && !n.draining));
            }
        }
        if d.action != Action::Hold {
            prop_assert!(distance(d.to, min, max) <= distance(d.from, min, max),
                "moved away from [{}, {}]: {} -> {}", min, max, d.from, d.to);
            if (min..=max).contains(&d.from) {
                prop_assert!((min..=max).contains(&d.to));
            }
        }
    }

    /// A scale-in only happens when the fleet was low with complete data on
    /// every observation of a run reaching back at least the stabilization
    /// period, with no two observations of that run further apart than the
    /// gap bound and no scale-in inside it. The state goes through JSON
    /// between ticks, as it does when a new leader resumes it.
    #[test]
    fn scale_in_needs_every_tick_low_and_no_gap_over_the_stabilization_period(
        (policy, start, run) in any_run(),
    ) {
        let engine = Engine::new(policy.clone()).expect("valid");
        let bound = u64::try_from(policy.max_observation_gap_ms).expect("positive");
        let stab = u64::try_from(policy.scale_in_stabilization_ms).expect("not negative");
        let mut state = State::default();
        let mut replicas = 6u32;
        let mut now = start;
        // (time, load, scaled in) of every observation so far.
        let mut seen: Vec<(u64, Load, bool)> = Vec::new();
        for (pause, load) in run {
            now += pause;
            let nodes = nodes_for(load, replicas);
            let obs = Observation { now_ms: now, replicas, nodes: &nodes };
            let (d, next) = engine.decide(&state, &obs);
            let scaled_in = d.action == Action::ScaleIn;
            seen.push((now, load, scaled_in));
            if scaled_in {
                prop_assert_eq!(load, Load::Low);
                // The longest run of low observations ending here, each
                // within the bound of the one before, with no scale-in.
                let mut first = seen.len() - 1;
                while first > 0 {
                    let (t_prev, load_prev, scaled_prev) = seen[first - 1];
                    if load_prev != Load::Low || scaled_prev || seen[first].0 - t_prev > bound {
                        break;
                    }
                    first -= 1;
                }
                prop_assert!(
                    now - seen[first].0 >= stab,
                    "scale-in at {} after a run of {} ms from {} (stabilization {} ms, gap bound {} ms): {:?}",
                    now, now - seen[first].0, seen[first].0, stab, bound, &seen[first.saturating_sub(3)..]
                );
            }
            replicas = d.to;
            let text = serde_json::to_string(&next).expect("serialize");
            state = serde_json::from_str(&text).expect("deserialize");
            prop_assert_eq!(&state, &next);
        }
    }

    #[test]
    fn the_same_inputs_give_the_same_outputs(
        policy in any_policy(),
        state in any_state(),
        nodes in prop::collection::vec(any_node(), 0..24),
        replicas in 0u32..80,
        now_ms in 0u64..3_000_000,
    ) {
        let engine = Engine::new(policy).expect("valid");
        let obs = Observation { now_ms, replicas, nodes: &nodes };
        let a = engine.decide(&state, &obs);
        let b = engine.decide(&state.clone(), &obs);
        // Debug text compares NaN equal to NaN, unlike PartialEq.
        prop_assert_eq!(format!("{a:?}"), format!("{b:?}"));
    }

    #[test]
    fn no_panic_on_any_input(
        nodes in prop::collection::vec(
            (any::<f64>(), any::<f64>(), any::<f64>(), any::<f64>(), any::<f64>(), any::<f64>(), any::<u64>(), any::<bool>()),
            0..12),
        replicas in any::<u32>(),
        now_ms in any::<u64>(),
        last_out in prop::option::of((any::<u64>(), any::<f64>(), any::<f64>())),
        last_in in prop::option::of(any::<u64>()),
        consecutive in any::<u32>(),
        low_since in prop::option::of(any::<u64>()),
        low_seen in prop::option::of(any::<u64>()),
    ) {
        let nodes: Vec<NodeSample> = nodes.into_iter().enumerate().map(
            |(i, (cpu, mem, conn, mps, p95_ms, lag_ms, age_ms, draining))| NodeSample {
                id: i.to_string(), cpu, mem, conn, mps, p95_ms, lag_ms, age_ms, draining,
            }).collect();
        let state = State {
            last_scale_out: last_out.map(|(at_ms, cpu, mem)| ScaleOutRecord {
                at_ms, urgency: Urgency::High,
                snapshot: Snapshot { cpu, mem, mps: f64::NAN, conn: -1.0, p95: f64::INFINITY },
            }),
            last_scale_in_ms: last_in,
            consecutive,
            low_since_ms: low_since,
            low_seen_ms: low_seen,
            ..State::default()
        };
        let engine = Engine::new(Policy { max_replicas: u32::MAX, ..Policy::default() }).expect("valid");
        let (d, _) = engine.decide(&state, &Observation { now_ms, replicas, nodes: &nodes });
        for line in d.explain() {
            let _ = line.to_string();
        }
        prop_assert!(d.to >= d.from.saturating_sub(1));
    }
}
