//! The rebalance rule: after a scale-out has settled, nodes far above the
//! mean shed part of their connections; never below the mean, never more
//! than the bound, never during a drain or while settling, never twice in a
//! window; and switched off, nothing differs.

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
    proptest::collection::vec((0.0f64..2_000.0, any::<bool>(), 0u64..30_000), 1..12).prop_map(
        |nodes| {
            nodes
                .into_iter()
                .enumerate()
                .map(|(i, (conn, draining, age_ms))| NodeSample {
                    conn,
                    draining: draining && i % 3 == 0,
                    age_ms,
                    ..node(&format!("socket-{i}"))
                })
                .collect()
        },
    )
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
