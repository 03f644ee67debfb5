//! The rebalance rule: after a scale-out has settled, nodes far above the
//! mean shed part of their connections; never below the mean, never more
//! than the bound, never during a drain or while settling, never twice in a
//! window; a hotspot the spread explains is rebalanced instead of scaled
//! out; and switched off, nothing differs.

mod common;

use common::*;
use proptest::prelude::*;
use rtc_decision::{Action, NodeSample, Policy, Reason, State};

fn on() -> Policy {
    let mut p = Policy::default();
    p.rebalance.enabled = true;
    p
}

/// Two old nodes holding the clients, three new ones nearly empty; calm
/// otherwise (CPU and memory in the balanced band).
fn after_scale_out() -> Vec<NodeSample> {
    fleet(5, |i, n| NodeSample {
        conn: if i < 2 { 300.0 } else { 5.0 },
        ..n
    })
}

#[test]
fn a_settled_fleet_with_hot_nodes_sheds_from_them_toward_the_mean() {
    let e = engine_with(on());
    let (d, next) = decide(&e, &State::default(), 100_000, 5, &after_scale_out());
    assert_eq!(
        (d.action, d.reason),
        (Action::Rebalance, Reason::ConnectionSpread),
        "{d:?}"
    );
    assert_eq!((d.from, d.to), (5, 5), "a rebalance keeps the replicas");
    assert!(!d.is_scaling());
    let r = d.rebalance.as_ref().expect("a plan");
    assert_eq!(r.mean_conn, 123.0);
    assert_eq!(r.spread, 295.0);
    // Excess 177 each, 354 in all; a quarter of 615 connections is 153.75,
    // so each sheds 153.75/354 of its excess: 76.875, truncated.
    let sheds: Vec<(&str, u64)> = r
        .sheds
        .iter()
        .map(|s| (s.node.as_str(), s.connections))
        .collect();
    assert_eq!(sheds, [("socket-0", 76), ("socket-1", 76)]);
    assert_eq!(next.last_rebalance_ms, Some(100_000));
    let text: Vec<String> = d.explain().map(|l| l.to_string()).collect();
    assert_eq!(
        text.last().map(String::as_str),
        Some("REBALANCE nodes=5 spread=295 mean=123.0: socket-0 sheds 76 socket-1 sheds 76")
    );

    // Within the window: no second move of the same clients.
    let (again, _) = decide(&e, &next, 100_000 + 59_999, 5, &after_scale_out());
    assert_eq!(again.action, Action::Hold, "{again:?}");
    let (later, _) = decide(&e, &next, 100_000 + 60_000, 5, &after_scale_out());
    assert_eq!(later.action, Action::Rebalance);
}

#[test]
fn off_by_default_the_same_fleet_holds() {
    let (d, next) = decide(&engine(), &State::default(), 100_000, 5, &after_scale_out());
    assert_eq!(
        (d.action, d.reason),
        (Action::Hold, Reason::Balanced),
        "{d:?}"
    );
    assert_eq!(d.rebalance, None);
    assert_eq!(next.last_rebalance_ms, None);
}

#[test]
fn not_while_settling_draining_or_missing_a_node() {
    let e = engine_with(on());
    // A scale-out 10 s ago (settle_ms is 60 s): the new pods are joining.
    let (_, settling) = decide(&e, &State::default(), 90_000, 2, &loaded(2, 0.9, 0.5));
    assert!(settling.last_scale_out.is_some());
    let (d, _) = decide(&e, &settling, 100_000, 5, &after_scale_out());
    assert_ne!(d.action, Action::Rebalance, "{d:?}");

    let mut draining = after_scale_out();
    draining[4].draining = true;
    let (d, _) = decide(&e, &State::default(), 100_000, 5, &draining);
    assert_ne!(d.action, Action::Rebalance, "{d:?}");

    let (d, _) = decide(&e, &State::default(), 100_000, 6, &after_scale_out());
    assert_ne!(
        d.action,
        Action::Rebalance,
        "a replica is not reporting: {d:?}"
    );
}

#[test]
fn a_small_or_even_spread_is_left_alone() {
    let e = engine_with(on());
    // Spread 40: below the 50-connection floor.
    let small = fleet(4, |i, n| NodeSample {
        conn: 100.0 + 10.0 * i as f64,
        ..n
    });
    assert_eq!(
        decide(&e, &State::default(), 1, 4, &small).0.action,
        Action::Hold
    );
    // Spread 100 on a mean of 1 050: below half the mean.
    let even = fleet(3, |i, n| NodeSample {
        conn: 1000.0 + 50.0 * i as f64,
        ..n
    });
    assert_eq!(
        decide(&e, &State::default(), 1, 3, &even).0.action,
        Action::Hold
    );
}

/// The same fleet after a scale-out, but the old nodes' clients send so
/// much that both are hot: rule 2 fires, nothing else does (average CPU
/// 0.44).
fn hot_after_scale_out() -> Vec<NodeSample> {
    after_scale_out_with_cpu(|i| if i < 2 { 0.95 } else { 0.10 })
}

/// [`after_scale_out`] with node `i`'s CPU at `cpu(i)`.
fn after_scale_out_with_cpu(cpu: impl Fn(usize) -> f64) -> Vec<NodeSample> {
    after_scale_out()
        .into_iter()
        .enumerate()
        .map(|(i, n)| NodeSample { cpu: cpu(i), ..n })
        .collect()
}

#[test]
fn a_hotspot_the_spread_explains_is_rebalanced_instead_of_scaled_out() {
    let e = engine_with(on());
    let (d, next) = decide(&e, &State::default(), 100_000, 5, &hot_after_scale_out());
    assert_eq!(
        (d.action, d.reason, d.trigger),
        (
            Action::Rebalance,
            Reason::HotspotSpread,
            Some(Reason::HotspotDetected)
        ),
        "{d:?}"
    );
    assert_eq!((d.from, d.to, d.step), (5, 5, None));
    let sheds: Vec<(&str, u64)> = d
        .rebalance
        .as_ref()
        .expect("a plan")
        .sheds
        .iter()
        .map(|s| (s.node.as_str(), s.connections))
        .collect();
    assert_eq!(sheds, [("socket-0", 76), ("socket-1", 76)]);
    assert_eq!(next.last_rebalance_ms, Some(100_000));
    assert_eq!(
        next.last_scale_out, None,
        "no scale-out recorded: none happened"
    );

    // Still hot while the moved clients land: hold, do not scale out.
    let (held, after) = decide(&e, &next, 110_000, 5, &hot_after_scale_out());
    assert_eq!(
        (held.action, held.reason, held.to),
        (Action::Hold, Reason::Rebalancing, 5),
        "{held:?}"
    );
    assert_eq!(after.last_rebalance_ms, Some(100_000));
    // Past the window and still spread and hot: move again.
    let (again, _) = decide(&e, &after, 160_000, 5, &hot_after_scale_out());
    assert_eq!(again.action, Action::Rebalance, "{again:?}");

    // Off, the same fleet scales out, as it always did.
    let (off, _) = decide(
        &engine(),
        &State::default(),
        100_000,
        5,
        &hot_after_scale_out(),
    );
    assert_eq!(
        (off.action, off.reason),
        (Action::ScaleOut, Reason::HotspotDetected)
    );
}

#[test]
fn after_a_scale_out_its_pods_get_settle_ms_before_clients_move_to_them() {
    let e = engine_with(on());
    // Two hot pods scale out by 3 at 90 s; settle_ms is 60 s.
    let (_, scaled) = decide(&e, &State::default(), 90_000, 2, &loaded(2, 0.95, 0.5));
    assert!(scaled.last_scale_out.is_some());
    let (d, next) = decide(&e, &scaled, 95_000, 5, &hot_after_scale_out());
    assert_eq!(
        (d.action, d.reason, d.to),
        (Action::Hold, Reason::Settling, 5),
        "every pod reports, but the new ones may not take clients yet: {d:?}"
    );
    let (d, _) = decide(&e, &next, 150_000, 5, &hot_after_scale_out());
    assert_eq!(
        (d.action, d.reason),
        (Action::Rebalance, Reason::HotspotSpread),
        "{d:?}"
    );
}

#[test]
fn the_hot_nodes_own_latency_does_not_stop_the_move_but_a_fleet_short_of_capacity_does() {
    let e = engine_with(on());
    // The hot nodes' p95 lifts the average over rule 4's 500 ms, with the
    // average CPU over its 0.5 gate: still theirs to fix by moving clients.
    let slow: Vec<NodeSample> = hot_after_scale_out()
        .into_iter()
        .enumerate()
        .map(|(i, n)| NodeSample {
            cpu: if i < 2 { 0.99 } else { 0.3 },
            p95_ms: if i < 2 { 2_000.0 } else { 20.0 },
            ..n
        })
        .collect();
    let (d, _) = decide(&e, &State::default(), 100_000, 5, &slow);
    assert_eq!(d.reason, Reason::HotspotSpread, "{d:?}");
    // Throughput per pod over rule 3's bound: more pods, whatever the spread.
    let mut p = on();
    p.mps_capacity = Some(50.0);
    let (d, _) = decide(
        &engine_with(p),
        &State::default(),
        100_000,
        5,
        &hot_after_scale_out(),
    );
    assert_eq!(
        (d.action, d.reason),
        (Action::ScaleOut, Reason::HotspotDetected),
        "{d:?}"
    );
}

#[test]
fn once_the_connections_are_even_a_hotspot_scales_out_again() {
    let e = engine_with(on());
    let (_, next) = decide(&e, &State::default(), 100_000, 5, &hot_after_scale_out());
    // Moved, and still hot everywhere it matters: past the window, no plan
    // (the spread is within the bounds), so more pods.
    let even = fleet(5, |i, n| NodeSample {
        cpu: if i == 0 { 0.95 } else { 0.5 },
        conn: 120.0,
        ..n
    });
    let (d, _) = decide(&e, &next, 160_000, 5, &even);
    assert_eq!(
        (d.action, d.reason),
        (Action::ScaleOut, Reason::HotspotDetected),
        "{d:?}"
    );
}

#[test]
fn a_hot_node_needs_no_floor_of_connections_to_shed() {
    let e = engine_with(on());
    // 45 and 45 against 10, 10 and 10: a spread of 35, under the 50
    // connections a calm fleet needs, but 1.5 times the mean of 24.
    let few = fleet(5, |i, n| NodeSample {
        conn: if i < 2 { 45.0 } else { 10.0 },
        cpu: if i < 2 { 0.94 } else { 0.4 },
        ..n
    });
    let (d, _) = decide(&e, &State::default(), 100_000, 5, &few);
    assert_eq!(
        (d.action, d.reason),
        (Action::Rebalance, Reason::HotspotSpread),
        "{d:?}"
    );
    // The same spread on a calm fleet is left alone.
    let calm = fleet(5, |i, n| NodeSample {
        conn: if i < 2 { 45.0 } else { 10.0 },
        ..n
    });
    assert_eq!(
        decide(&e, &State::default(), 100_000, 5, &calm).0.action,
        Action::Hold
    );
}

#[test]
fn a_hotspot_the_spread_does_not_explain_still_scales_out() {
    let e = engine_with(on());
    // The hot node is one of the nearly empty ones: its load is not its
    // share of the connections, and moving others' clients onto it would
    // not help.
    let odd = after_scale_out_with_cpu(|i| if i == 4 { 0.95 } else { 0.3 });
    let (d, _) = decide(&e, &State::default(), 100_000, 5, &odd);
    assert_eq!(
        (d.action, d.reason),
        (Action::ScaleOut, Reason::HotspotDetected),
        "{d:?}"
    );
}

#[test]
fn an_overloaded_or_incomplete_fleet_scales_out_whatever_the_spread() {
    let e = engine_with(on());
    // Average CPU 0.78: rule 1 fires, the fleet as a whole is short.
    let overloaded = after_scale_out_with_cpu(|i| if i < 2 { 0.95 } else { 0.66 });
    let (d, _) = decide(&e, &State::default(), 100_000, 5, &overloaded);
    assert_eq!(
        (d.action, d.reason),
        (Action::ScaleOut, Reason::ResourceOverload),
        "{d:?}"
    );
    // A sixth replica has not reported yet: not a settled picture.
    let (d, _) = decide(&e, &State::default(), 100_000, 6, &hot_after_scale_out());
    assert_eq!(d.action, Action::ScaleOut, "{d:?}");
    // A node draining: never during a drain.
    let mut draining = hot_after_scale_out();
    draining[4].draining = true;
    let (d, _) = decide(&e, &State::default(), 100_000, 5, &draining);
    assert_ne!(d.action, Action::Rebalance, "{d:?}");
}

#[test]
fn a_bad_rebalance_policy_is_refused_naming_the_field() {
    let mut p = on();
    p.rebalance.max_share = 1.5;
    let err = rtc_decision::Engine::new(p).err().map(|e| e.field);
    assert_eq!(err, Some("rebalance.max_share"));
    let mut p = on();
    p.rebalance.window_ms = 0;
    assert_eq!(
        rtc_decision::Engine::new(p).err().map(|e| e.field),
        Some("rebalance.window_ms")
    );
}

fn any_fleet() -> impl Strategy<Value = Vec<NodeSample>> {
    proptest::collection::vec(
        (
            0.0f64..2_000.0,
            any::<bool>(),
            0u64..30_000,
            prop_oneof![Just(0.4), 0.0f64..1.0],
        ),
        1..12,
    )
    .prop_map(|nodes| {
        nodes
            .into_iter()
            .enumerate()
            .map(|(i, (conn, draining, age_ms, cpu))| NodeSample {
                conn,
                cpu,
                draining: draining && i % 3 == 0,
                age_ms,
                ..node(&format!("socket-{i}"))
            })
            .collect()
    })
}

proptest! {
    #[test]
    fn never_below_the_mean_never_over_the_bound_never_while_draining(
        nodes in any_fleet(),
        extra in 0u32..2,
        share in 0.05f64..1.0,
        now in 0u64..1_000_000,
    ) {
        let mut p = on();
        p.rebalance.max_share = share;
        let e = engine_with(p);
        let replicas = u32::try_from(nodes.len()).unwrap_or(u32::MAX) + extra;
        let (d, _) = decide(&e, &State::default(), now, replicas, &nodes);
        if let Some(r) = &d.rebalance {
            prop_assert_eq!(d.action, Action::Rebalance);
            prop_assert!(!d.is_scaling());
            prop_assert_eq!(d.from, d.to);
            prop_assert!(nodes.iter().all(|n| !n.draining && n.age_ms <= 15_000));
            prop_assert_eq!(replicas as usize, nodes.len());
            let total: f64 = nodes.iter().map(|n| n.conn).sum();
            let moved: u64 = r.sheds.iter().map(|s| s.connections).sum();
            prop_assert!(moved as f64 <= share * total + 1e-6, "{moved} of {total}");
            for s in &r.sheds {
                let n = nodes.iter().find(|n| n.id == s.node).expect("a known node");
                prop_assert!(n.conn > r.mean_conn, "{} is not above the mean", s.node);
                prop_assert!(s.connections as f64 <= n.conn - r.mean_conn + 1e-6);
            }
        } else {
            prop_assert_ne!(d.action, Action::Rebalance);
        }
    }

    /// Switched on, the rule changes a decision only into a rebalance or a
    /// hold of the same replicas, and only a hold it may take over or a
    /// scale-out on the hotspot rule alone.
    #[test]
    fn switched_on_it_only_replaces_holds_and_hotspot_scale_outs(
        nodes in any_fleet(),
        now in 0u64..1_000_000,
        rebalanced_ago in proptest::option::of(0u64..120_000),
    ) {
        let replicas = u32::try_from(nodes.len()).unwrap_or(u32::MAX);
        let state = State {
            last_rebalance_ms: rebalanced_ago.map(|ago| now.saturating_sub(ago)),
            ..State::default()
        };
        let (off, _) = decide(&engine(), &state, now, replicas, &nodes);
        let (on, _) = decide(&engine_with(on()), &state, now, replicas, &nodes);
        if on != off {
            prop_assert!(matches!(on.action, Action::Rebalance | Action::Hold), "{on:?}");
            prop_assert_eq!(on.to, on.from);
            let hotspot_out = off.action == Action::ScaleOut && off.reason == Reason::HotspotDetected;
            prop_assert!(hotspot_out || off.action == Action::Hold, "{off:?} became {on:?}");
        }
    }

    #[test]
    fn switched_off_every_decision_is_what_it_was(nodes in any_fleet(), now in 0u64..1_000_000) {
        let replicas = u32::try_from(nodes.len()).unwrap_or(u32::MAX);
        let mut off = Policy::default();
        off.rebalance.max_share = 0.9;
        off.rebalance.min_spread_conns = 0.0;
        let (a, sa) = decide(&engine(), &State::default(), now, replicas, &nodes);
        let (b, sb) = decide(&engine_with(off), &State::default(), now, replicas, &nodes);
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(&sa, &sb);
        prop_assert_ne!(a.action, Action::Rebalance);
    }
}
