//! One test per rule and per hold reason, with the edges of each.

mod common;

use common::*;
use rtc_decision::{Action, NodeSample, Policy, Reason, State, Urgency};

fn assert_hold(d: &rtc_decision::Decision, reason: Reason, urgency: Urgency) {
    assert_eq!(d.action, Action::Hold, "{d:?}");
    assert_eq!(d.reason, reason, "{d:?}");
    assert_eq!(d.urgency, urgency, "{d:?}");
    assert_eq!(d.to, d.from);
    assert_eq!(d.delta(), 0);
    assert_eq!(d.victim, None);
}

fn assert_out(d: &rtc_decision::Decision, reason: Reason, urgency: Urgency, from: u32, to: u32) {
    assert_eq!(d.action, Action::ScaleOut, "{d:?}");
    assert_eq!((d.reason, d.urgency), (reason, urgency), "{d:?}");
    assert_eq!((d.from, d.to), (from, to), "{d:?}");
}

// ---- urgency rules -------------------------------------------------------

#[test]
fn rule1_resource_overload_on_cpu_and_on_mem() {
    let e = engine();
    assert_out(
        &once(&e, 4, &loaded(4, 0.71, 0.40)),
        Reason::ResourceOverload,
        Urgency::Critical,
        4,
        7,
    );
    assert_out(
        &once(&e, 4, &loaded(4, 0.40, 0.76)),
        Reason::ResourceOverload,
        Urgency::Critical,
        4,
        7,
    );
}

#[test]
fn rule1_exactly_at_the_threshold_does_not_fire() {
    let e = engine();
    // 0.70 and 0.75 are not above the thresholds; nothing else fires.
    let d = once(&e, 2, &loaded(2, 0.70, 0.75));
    assert_ne!(d.trigger, Some(Reason::ResourceOverload), "{d:?}");
    assert_ne!(d.urgency, Urgency::Critical);
}

#[test]
fn rule2_hotspot_on_one_node() {
    let e = engine();
    let nodes = fleet(4, |i, n| NodeSample {
        cpu: if i == 2 { 0.86 } else { 0.30 },
        ..n
    });
    assert_out(
        &once(&e, 4, &nodes),
        Reason::HotspotDetected,
        Urgency::Critical,
        4,
        7,
    );
    let nodes = fleet(4, |i, n| NodeSample {
        mem: if i == 0 { 0.91 } else { 0.30 },
        ..n
    });
    assert_out(
        &once(&e, 4, &nodes),
        Reason::HotspotDetected,
        Urgency::Critical,
        4,
        7,
    );
    let nodes = fleet(4, |i, n| NodeSample {
        cpu: if i == 2 { 0.85 } else { 0.30 },
        mem: if i == 1 { 0.90 } else { 0.3 },
        ..n
    });
    assert_eq!(
        once(&e, 4, &nodes).urgency,
        Urgency::None,
        "exactly at the hotspot thresholds"
    );
}

#[test]
fn rule3_capacity_needs_a_configured_capacity() {
    let busy = fleet(3, |_, n| NodeSample {
        conn: 950.0,
        mps: 10.0,
        ..n
    });
    assert_eq!(
        once(&engine(), 3, &busy).urgency,
        Urgency::None,
        "no capacity, no rule"
    );
    let e = engine_with(Policy {
        conn_capacity: Some(1_000.0),
        ..Policy::default()
    });
    let d = once(&e, 3, &busy);
    assert_out(&d, Reason::CapacityExhausted, Urgency::Critical, 3, 6);
    assert_eq!(d.aggregates.conn_util, Some(0.95));
    let e = engine_with(Policy {
        mps_capacity: Some(100.0),
        ..Policy::default()
    });
    let hot = fleet(3, |_, n| NodeSample { mps: 91.0, ..n });
    assert_out(
        &once(&e, 3, &hot),
        Reason::CapacityExhausted,
        Urgency::Critical,
        3,
        6,
    );
    let at = fleet(2, |_, n| NodeSample { mps: 90.0, ..n });
    assert_eq!(
        once(&e, 2, &at).urgency,
        Urgency::None,
        "exactly 0.90 does not fire"
    );
}

#[test]
fn rule4_high_latency_needs_resource_pressure() {
    let e = engine();
    let slow = |cpu: f64, p95: f64| {
        fleet(2, |_, n| NodeSample {
            cpu,
            mem: 0.30,
            p95_ms: p95,
            ..n
        })
    };
    assert_out(
        &once(&e, 2, &slow(0.55, 600.0)),
        Reason::HighLatency,
        Urgency::High,
        2,
        4,
    );
    assert_eq!(
        once(&e, 2, &slow(0.45, 600.0)).urgency,
        Urgency::None,
        "latency without pressure"
    );
    assert_eq!(
        once(&e, 2, &slow(0.50, 600.0)).urgency,
        Urgency::None,
        "gate exactly at 0.5"
    );
    assert_eq!(
        once(&e, 2, &slow(0.55, 500.0)).urgency,
        Urgency::None,
        "p95 exactly 500"
    );
}

#[test]
fn rule5_kafka_backlog_needs_resource_pressure() {
    let e = engine();
    let lagging = |mem: f64, lag: f64| {
        fleet(2, |_, n| NodeSample {
            cpu: 0.30,
            mem,
            lag_ms: lag,
            ..n
        })
    };
    assert_out(
        &once(&e, 2, &lagging(0.55, 800.0)),
        Reason::KafkaBacklog,
        Urgency::High,
        2,
        4,
    );
    assert_eq!(once(&e, 2, &lagging(0.40, 800.0)).urgency, Urgency::None);
    assert_eq!(
        once(&e, 2, &lagging(0.55, 500.0)).urgency,
        Urgency::None,
        "lag exactly 500"
    );
}

#[test]
fn rule6_multiple_indicators_needs_four() {
    let e = engine();
    let four = fleet(2, |_, n| NodeSample {
        cpu: 0.61,
        mem: 0.66,
        p95_ms: 301.0,
        lag_ms: 301.0,
        ..n
    });
    let d = once(&e, 2, &four);
    assert_out(
        &d,
        Reason::MultiplePressureIndicators,
        Urgency::Moderate,
        2,
        3,
    );
    assert_eq!(
        d.indicators.names().collect::<Vec<_>>(),
        ["cpu", "mem", "p95", "lag"]
    );
    let three = fleet(2, |_, n| NodeSample {
        cpu: 0.61,
        mem: 0.66,
        p95_ms: 301.0,
        lag_ms: 300.0,
        ..n
    });
    let d = once(&e, 2, &three);
    assert_eq!(d.urgency, Urgency::None);
    assert_eq!(d.indicators.count(), 3);
    // Utilisation indicators count only with capacities configured.
    let e = engine_with(Policy {
        conn_capacity: Some(1_000.0),
        mps_capacity: Some(100.0),
        ..Policy::default()
    });
    let utils = fleet(2, |_, n| NodeSample {
        cpu: 0.61,
        mem: 0.66,
        conn: 800.0,
        mps: 80.0,
        ..n
    });
    assert_out(
        &once(&e, 2, &utils),
        Reason::MultiplePressureIndicators,
        Urgency::Moderate,
        2,
        3,
    );
}

#[test]
fn urgency_is_the_highest_and_reason_the_first_rule() {
    let e = engine();
    // Overload and slow at once: both critical and high fire.
    let nodes = fleet(2, |_, n| NodeSample {
        cpu: 0.80,
        p95_ms: 900.0,
        lag_ms: 900.0,
        ..n
    });
    let d = once(&e, 2, &nodes);
    assert_eq!(
        (d.urgency, d.reason),
        (Urgency::Critical, Reason::ResourceOverload)
    );
    // A hotspot alongside high latency: critical from rule 2 wins.
    let nodes = fleet(2, |i, n| NodeSample {
        cpu: if i == 0 { 0.9 } else { 0.3 },
        p95_ms: 900.0,
        ..n
    });
    let d = once(&e, 2, &nodes);
    assert_eq!(
        (d.urgency, d.reason),
        (Urgency::Critical, Reason::HotspotDetected)
    );
}

// ---- data quality ----------------------------------------------------------

#[test]
fn no_data_when_no_node_is_fresh() {
    let e = engine();
    assert_hold(&once(&e, 3, &[]), Reason::NoData, Urgency::None);
    let stale = fleet(3, |_, n| NodeSample {
        age_ms: 15_001,
        cpu: 0.99,
        ..n
    });
    let d = once(&e, 3, &stale);
    assert_hold(&d, Reason::NoData, Urgency::None);
    assert_eq!(d.excluded.stale, 3);
    let draining = fleet(2, |_, n| NodeSample {
        draining: true,
        ..n
    });
    assert_eq!(once(&e, 2, &draining).excluded.draining, 2);
    let bad = fleet(2, |_, n| NodeSample { cpu: f64::NAN, ..n });
    let d = once(&e, 2, &bad);
    assert_hold(&d, Reason::NoData, Urgency::None);
    assert_eq!(d.excluded.invalid, 2);
}

#[test]
fn stale_is_strictly_older_than_stale_after() {
    let e = engine();
    let at_limit = fleet(2, |_, n| NodeSample {
        age_ms: 15_000,
        cpu: 0.9,
        ..n
    });
    assert_eq!(once(&e, 2, &at_limit).aggregates.n, 2);
    let past = fleet(2, |_, n| NodeSample {
        age_ms: 15_001,
        cpu: 0.9,
        ..n
    });
    assert_eq!(once(&e, 2, &past).aggregates.n, 0);
}

#[test]
fn invalid_values_are_left_out_never_read_as_zero() {
    let e = engine();
    let cases = [
        NodeSample {
            cpu: f64::NAN,
            ..node("x")
        },
        NodeSample {
            mem: -0.1,
            ..node("x")
        },
        NodeSample {
            conn: -1.0,
            ..node("x")
        },
        NodeSample {
            mps: f64::INFINITY,
            ..node("x")
        },
        NodeSample {
            p95_ms: f64::NEG_INFINITY,
            ..node("x")
        },
        NodeSample {
            lag_ms: f64::NAN,
            ..node("x")
        },
        NodeSample {
            cpu: 2.01,
            ..node("x")
        },
    ];
    for bad in cases {
        // One real overloaded node and one corrupt one: the average is the
        // real node's, not halved by a zero.
        let nodes = vec![
            NodeSample {
                cpu: 0.80,
                ..node("a")
            },
            bad.clone(),
        ];
        let d = once(&e, 2, &nodes);
        assert_eq!(d.excluded.invalid, 1, "{bad:?}");
        assert_eq!(d.aggregates.n, 1);
        assert_eq!(d.aggregates.avg_cpu, 0.80);
        assert_eq!(d.reason, Reason::ResourceOverload);
    }
    // 2.0 itself is still a valid (bursting) reading.
    let d = once(
        &e,
        1,
        &[NodeSample {
            cpu: 2.0,
            ..node("a")
        }],
    );
    assert_eq!(d.excluded.invalid, 0);
}

#[test]
fn exclusion_counts_each_node_once_in_order_stale_draining_invalid() {
    let e = engine();
    let n = NodeSample {
        age_ms: 99_000,
        draining: true,
        cpu: f64::NAN,
        ..node("x")
    };
    let d = once(&e, 1, &[n]);
    assert_eq!(
        (d.excluded.stale, d.excluded.draining, d.excluded.invalid),
        (1, 0, 0)
    );
    let n = NodeSample {
        draining: true,
        cpu: f64::NAN,
        ..node("x")
    };
    let d = once(&e, 1, &[n]);
    assert_eq!(
        (d.excluded.stale, d.excluded.draining, d.excluded.invalid),
        (0, 1, 0)
    );
}

// ---- scale out ---------------------------------------------------------------

#[test]
fn base_step_follows_urgency() {
    let e = engine();
    assert_eq!(once(&e, 5, &loaded(5, 0.8, 0.4)).delta(), 3);
    let high = fleet(5, |_, n| NodeSample {
        cpu: 0.55,
        p95_ms: 600.0,
        ..n
    });
    assert_eq!(once(&e, 5, &high).delta(), 2);
    let moderate = fleet(5, |_, n| NodeSample {
        cpu: 0.61,
        mem: 0.66,
        p95_ms: 301.0,
        lag_ms: 301.0,
        ..n
    });
    assert_eq!(once(&e, 5, &moderate).delta(), 1);
}

#[test]
fn max_step_caps_the_base() {
    let e = engine_with(Policy {
        max_step: 2,
        ..Policy::default()
    });
    let d = once(&e, 5, &loaded(5, 0.8, 0.4));
    assert_eq!(d.delta(), 2);
    assert_eq!(d.step.expect("step").step, 2);
}

#[test]
fn scale_out_is_clamped_to_max_and_at_max_holds_without_state_change() {
    let e = engine();
    let d = once(&e, 48, &loaded(48, 0.8, 0.4));
    assert_out(&d, Reason::ResourceOverload, Urgency::Critical, 48, 50);
    let prior = State {
        consecutive: 3,
        last_scale_in_ms: Some(7),
        ..State::default()
    };
    let (d, next) = decide(&e, &prior, 1_000_000, 50, &loaded(50, 0.8, 0.4));
    assert_hold(&d, Reason::AtMax, Urgency::Critical);
    assert_eq!(next, prior);
    // Above max (max lowered under a running fleet): never scale further out.
    let (d, _) = decide(&e, &State::default(), 0, 60, &loaded(60, 0.8, 0.4));
    assert_hold(&d, Reason::AtMax, Urgency::Critical);
}

#[test]
fn growth_adds_one_or_two_when_recent() {
    let e = engine();
    let (d1, s1) = decide(&e, &State::default(), 0, 4, &loaded(4, 0.72, 0.40));
    assert_eq!(d1.delta(), 3);
    // Same load a minute later, all 7 reporting: growth about 1, base step.
    let (d2, _) = decide(&e, &s1, 61_000, 7, &loaded(7, 0.72, 0.40));
    let step = d2.step.expect("step");
    assert!(step.growth.expect("recent") < 1.2, "{step:?}");
    assert_eq!(d2.delta(), 3);
    // Load up enough to cross each growth bound.
    let (d3, _) = decide(&e, &s1, 61_000, 7, &loaded(7, 1.0, 0.6));
    let g = d3.step.expect("step").growth.expect("recent");
    assert!(g > 1.2 && g <= 1.5, "growth {g}");
    assert_eq!(d3.delta(), 4);
    let (d4, _) = decide(
        &e,
        &s1,
        61_000,
        7,
        &fleet(7, |_, n| NodeSample {
            cpu: 1.5,
            mem: 0.9,
            ..n
        }),
    );
    let g = d4.step.expect("step").growth.expect("recent");
    assert!(g > 1.5, "growth {g}");
    assert_eq!(d4.delta(), 5);
}

#[test]
fn growth_is_not_used_after_the_window() {
    let e = engine();
    let (_, s1) = decide(&e, &State::default(), 0, 4, &loaded(4, 0.72, 0.40));
    let (d, s2) = decide(
        &e,
        &s1,
        180_000,
        7,
        &fleet(7, |_, n| NodeSample {
            cpu: 1.3,
            mem: 0.8,
            ..n
        }),
    );
    let step = d.step.expect("step");
    assert_eq!(
        step.growth, None,
        "exactly at the window is no longer recent"
    );
    assert_eq!(d.delta(), 3);
    assert_eq!(s2.consecutive, 1, "a new run of scale-outs starts");
}

#[test]
fn consecutive_adds_itself_from_two_on() {
    let e = engine();
    let s = State {
        consecutive: 2,
        ..State::default()
    };
    let (_, mut s) = decide(&e, &s, 0, 4, &loaded(4, 0.72, 0.40));
    assert_eq!(s.consecutive, 1, "not recent: restarts at 1");
    s.consecutive = 2;
    let (d, s2) = decide(&e, &s, 61_000, 7, &loaded(7, 0.72, 0.40));
    let step = d.step.expect("step");
    assert_eq!(step.consecutive, 2);
    assert_eq!(step.step, 5, "3 + 2");
    assert_eq!(s2.consecutive, 3);
    let e = engine_with(Policy {
        max_step: 4,
        ..Policy::default()
    });
    let (d, _) = decide(&e, &s, 61_000, 7, &loaded(7, 0.72, 0.40));
    assert_eq!(d.delta(), 4, "capped at max_step");
}

#[test]
fn settling_holds_while_new_pods_join() {
    let e = engine();
    let (_, s1) = decide(&e, &State::default(), 0, 4, &loaded(4, 0.80, 0.40));
    // 7 replicas wanted, only the 4 old ones report, same urgency.
    let (d, s2) = decide(&e, &s1, 20_000, 7, &loaded(4, 0.85, 0.40));
    assert_hold(&d, Reason::Settling, Urgency::Critical);
    assert_eq!(d.trigger, Some(Reason::ResourceOverload));
    assert_eq!(s2, s1);
    // Once settle_ms has passed, a still-missing pod no longer blocks.
    let (d, _) = decide(&e, &s1, 60_000, 7, &loaded(4, 0.85, 0.40));
    assert_eq!(d.action, Action::ScaleOut);
    // All reporting: no settling.
    let (d, _) = decide(&e, &s1, 20_000, 7, &loaded(7, 0.85, 0.40));
    assert_eq!(d.action, Action::ScaleOut);
}

#[test]
fn higher_urgency_breaks_through_settling() {
    let e = engine();
    let moderate = fleet(4, |_, n| NodeSample {
        cpu: 0.61,
        mem: 0.66,
        p95_ms: 301.0,
        lag_ms: 301.0,
        ..n
    });
    let (d, s1) = decide(&e, &State::default(), 0, 4, &moderate);
    assert_eq!(d.urgency, Urgency::Moderate);
    let (d, _) = decide(&e, &s1, 10_000, 5, &loaded(4, 0.80, 0.40));
    assert_eq!(d.action, Action::ScaleOut, "{d:?}");
}

// ---- scale in ----------------------------------------------------------------

#[test]
fn scale_in_after_stabilization_removes_the_least_loaded() {
    let e = engine();
    let (d, mut s1) = decide(&e, &State::default(), 1_000_000, 4, &idle(4));
    assert_hold(&d, Reason::Stabilizing, Urgency::None);
    assert_eq!(s1.low_since_ms, Some(1_000_000));
    // Seen low on every tick, 5 s apart, up to just before 3 minutes.
    for t in (1_005_000..1_180_000).step_by(5_000) {
        let (d, next) = decide(&e, &s1, t, 4, &idle(4));
        assert_hold(&d, Reason::Stabilizing, Urgency::None);
        s1 = next;
    }
    let (d, _) = decide(&e, &s1, 1_179_999, 4, &idle(4));
    assert_hold(&d, Reason::Stabilizing, Urgency::None);
    let (d, s2) = decide(&e, &s1, 1_180_000, 4, &idle(4));
    assert_eq!(d.action, Action::ScaleIn);
    assert_eq!((d.from, d.to, d.reason), (4, 3, Reason::ExcessCapacity));
    assert_eq!(d.victim.as_deref(), Some("socket-0"), "fewest connections");
    assert_eq!(s2.last_scale_in_ms, Some(1_180_000));
    assert_eq!(s2.low_since_ms, None);
    assert_eq!(s2.consecutive, 0);
}

#[test]
fn victim_ties_break_on_mps_then_id_bytes() {
    let e = engine_with(Policy {
        scale_in_stabilization_ms: 0,
        ..Policy::default()
    });
    let nodes = fleet(3, |i, n| NodeSample {
        cpu: 0.05,
        mem: 0.1,
        conn: 5.0,
        mps: [2.0, 1.0, 1.0][i],
        ..n
    });
    let d = once(&e, 3, &nodes);
    assert_eq!(d.victim.as_deref(), Some("socket-1"));
    let mut nodes = idle(3);
    for n in &mut nodes {
        n.conn = 1.0;
        n.mps = 1.0;
    }
    nodes[0].id = "b".into();
    nodes[1].id = "a-2".into();
    nodes[2].id = "B".into();
    assert_eq!(
        once(&e, 3, &nodes).victim.as_deref(),
        Some("B"),
        "byte order: uppercase first"
    );
}

#[test]
fn at_min_holds() {
    let e = engine_with(Policy {
        scale_in_stabilization_ms: 0,
        ..Policy::default()
    });
    assert_hold(&once(&e, 2, &idle(2)), Reason::AtMin, Urgency::None);
    assert_eq!(once(&e, 3, &idle(3)).action, Action::ScaleIn);
}

#[test]
fn a_missing_stale_draining_or_invalid_node_blocks_scale_in() {
    let e = engine_with(Policy {
        scale_in_stabilization_ms: 0,
        ..Policy::default()
    });
    let missing = idle(3);
    assert_hold(
        &once(&e, 4, &missing),
        Reason::IncompleteData,
        Urgency::None,
    );
    for spoil in [
        |n: &mut NodeSample| n.age_ms = 20_000,
        |n: &mut NodeSample| n.draining = true,
        |n: &mut NodeSample| n.cpu = f64::NAN,
        |n: &mut NodeSample| n.p95_ms = -1.0,
    ] {
        let mut nodes = idle(4);
        spoil(&mut nodes[3]);
        let (d, s) = decide(&e, &State::default(), 0, 4, &nodes);
        assert_hold(&d, Reason::IncompleteData, Urgency::None);
        assert_eq!(
            s.low_since_ms, None,
            "incomplete data restarts the low clock"
        );
    }
}

#[test]
fn cooldown_after_scale_out_and_after_scale_in() {
    let e = engine_with(Policy {
        scale_in_stabilization_ms: 0,
        ..Policy::default()
    });
    let after_out = State {
        last_scale_out: Some(rtc_decision::ScaleOutRecord {
            at_ms: 0,
            urgency: Urgency::Critical,
            snapshot: rtc_decision::Snapshot {
                cpu: 0.8,
                mem: 0.4,
                mps: 1.0,
                conn: 1.0,
                p95: 1.0,
            },
        }),
        ..State::default()
    };
    let (d, _) = decide(&e, &after_out, 299_999, 4, &idle(4));
    assert_hold(&d, Reason::Cooldown, Urgency::None);
    let (d, _) = decide(&e, &after_out, 300_000, 4, &idle(4));
    assert_eq!(d.action, Action::ScaleIn);
    let after_in = State {
        last_scale_in_ms: Some(0),
        ..State::default()
    };
    let (d, _) = decide(&e, &after_in, 299_999, 4, &idle(4));
    assert_hold(&d, Reason::Cooldown, Urgency::None);
}

#[test]
fn balanced_when_neither_pressed_nor_low() {
    let e = engine();
    let (d, s) = decide(
        &e,
        &State {
            low_since_ms: Some(5),
            ..State::default()
        },
        10,
        4,
        &loaded(4, 0.4, 0.4),
    );
    assert_hold(&d, Reason::Balanced, Urgency::None);
    assert_eq!(
        s.low_since_ms, None,
        "a tick that is not low restarts the clock"
    );
}

#[test]
fn one_node_is_never_low() {
    let e = engine_with(Policy {
        min_replicas: 1,
        scale_in_stabilization_ms: 0,
        ..Policy::default()
    });
    assert_hold(&once(&e, 1, &idle(1)), Reason::Balanced, Urgency::None);
    assert_eq!(once(&e, 2, &idle(2)).action, Action::ScaleIn);
}

#[test]
fn projected_load_must_stay_safe() {
    let e = engine_with(Policy {
        scale_in_stabilization_ms: 0,
        conn_capacity: Some(100.0),
        ..Policy::default()
    });
    // 35 connections of 100 on 3 nodes project to 52.5% on 2: unsafe.
    let nodes = fleet(3, |_, n| NodeSample {
        cpu: 0.05,
        mem: 0.1,
        conn: 35.0,
        p95_ms: 10.0,
        lag_ms: 1.0,
        ..n
    });
    assert_hold(&once(&e, 3, &nodes), Reason::Balanced, Urgency::None);
    let nodes = fleet(3, |_, n| NodeSample {
        cpu: 0.05,
        mem: 0.1,
        conn: 20.0,
        p95_ms: 10.0,
        lag_ms: 1.0,
        ..n
    });
    assert_eq!(once(&e, 3, &nodes).action, Action::ScaleIn);
    // CPU 0.19 on 2 nodes projects to 0.38 < 0.5: low. Memory 0.24 on 2 projects to 0.48 < 0.55.
    let e = engine_with(Policy {
        scale_in_stabilization_ms: 0,
        min_replicas: 1,
        ..Policy::default()
    });
    let nodes = fleet(2, |_, n| NodeSample {
        cpu: 0.19,
        mem: 0.24,
        p95_ms: 10.0,
        lag_ms: 1.0,
        ..n
    });
    assert_eq!(once(&e, 2, &nodes).action, Action::ScaleIn);
}

#[test]
fn no_data_restarts_the_low_clock() {
    let e = engine();
    let (_, s1) = decide(&e, &State::default(), 0, 4, &idle(4));
    assert_eq!(s1.low_since_ms, Some(0));
    let (_, s2) = decide(&e, &s1, 5_000, 4, &[]);
    assert_eq!(s2.low_since_ms, None);
}

#[test]
fn a_gap_in_observations_restarts_the_low_clock() {
    let e = engine();
    // Low every 5 s for a minute, then 40 s without an observation (failed
    // ticks, or no leader), then low again every 5 s.
    let mut s = State::default();
    let mut t = 0;
    while t <= 60_000 {
        let (d, next) = decide(&e, &s, t, 4, &idle(4));
        assert_hold(&d, Reason::Stabilizing, Urgency::None);
        s = next;
        t += 5_000;
    }
    let mut t = 100_000;
    let mut first_scale_in = None;
    while t <= 400_000 && first_scale_in.is_none() {
        let (d, next) = decide(&e, &s, t, 4, &idle(4));
        if d.action == Action::ScaleIn {
            first_scale_in = Some(t);
        } else {
            assert_hold(&d, Reason::Stabilizing, Urgency::None);
        }
        s = next;
        t += 5_000;
    }
    // Not at 180 s (3 minutes after the first low tick, but with a gap in
    // between): 3 minutes after the first low tick past the gap.
    assert_eq!(first_scale_in, Some(280_000));
}

#[test]
fn a_pause_exactly_at_the_gap_bound_keeps_the_low_clock() {
    let e = engine();
    let mut s = State::default();
    let mut t = 0;
    while t < 180_000 {
        let (d, next) = decide(&e, &s, t, 4, &idle(4));
        assert_hold(&d, Reason::Stabilizing, Urgency::None);
        assert_eq!(d.observation_gap_ms, None);
        s = next;
        t += 15_000;
    }
    let (d, _) = decide(&e, &s, 180_000, 4, &idle(4));
    assert_eq!(d.action, Action::ScaleIn, "15 s apart is not a gap: {d:?}");
    let (d, s2) = decide(&e, &s, 165_001 + 15_000, 4, &idle(4));
    assert_hold(&d, Reason::Stabilizing, Urgency::None);
    assert_eq!(d.observation_gap_ms, Some(15_001));
    assert_eq!(d.low_for_ms, Some(0));
    assert_eq!(
        (s2.low_since_ms, s2.low_seen_ms),
        (Some(180_001), Some(180_001))
    );
}

#[test]
fn a_resumed_state_that_is_behind_restarts_the_low_clock() {
    let e = engine();
    // The old leader saved its state after the tick at 60 s; the new one
    // resumes it and first decides at 100 s.
    let mut saved = State::default();
    for t in (0..=60_000).step_by(5_000) {
        saved = decide(&e, &saved, t, 4, &idle(4)).1;
    }
    assert_eq!(
        (saved.low_since_ms, saved.low_seen_ms),
        (Some(0), Some(60_000))
    );
    let text = serde_json::to_string(&saved).expect("serialize");
    let resumed: State = serde_json::from_str(&text).expect("deserialize");
    let (d, s) = decide(&e, &resumed, 100_000, 4, &idle(4));
    assert_hold(&d, Reason::Stabilizing, Urgency::None);
    assert_eq!(d.observation_gap_ms, Some(40_000));
    assert_eq!(s.low_since_ms, Some(100_000));
    let (d, _) = decide(&e, &s, 180_000, 4, &idle(4));
    assert_hold(&d, Reason::Stabilizing, Urgency::None);
}

#[test]
fn a_state_stored_before_low_seen_ms_existed_counts_from_its_low_clock() {
    let e = engine();
    let old: State = serde_json::from_str(r#"{"version":1,"low_since_ms":0}"#).expect("old state");
    assert_eq!(old.low_seen_ms, None);
    // Its clock started 10 s ago, so no observation can be further apart.
    let (d, s) = decide(&e, &old, 10_000, 4, &idle(4));
    assert_eq!((d.low_for_ms, d.observation_gap_ms), (Some(10_000), None));
    assert_eq!(s.low_seen_ms, Some(10_000));
    // Its clock started 100 s ago: nothing proves it was low in between.
    let (d, s) = decide(&e, &old, 100_000, 4, &idle(4));
    assert_eq!(
        (d.low_for_ms, d.observation_gap_ms),
        (Some(0), Some(100_000))
    );
    assert_eq!(s.low_since_ms, Some(100_000));
}

#[test]
fn a_gap_while_not_low_reports_nothing() {
    let e = engine();
    let (_, s1) = decide(&e, &State::default(), 0, 4, &loaded(4, 0.4, 0.4));
    let (d, s2) = decide(&e, &s1, 60_000, 4, &idle(4));
    assert_eq!((d.low_for_ms, d.observation_gap_ms), (Some(0), None));
    let (d, _) = decide(&e, &s2, 120_000, 4, &loaded(4, 0.4, 0.4));
    assert_hold(&d, Reason::Balanced, Urgency::None);
    assert_eq!(d.observation_gap_ms, None);
}

#[test]
fn time_going_backwards_is_handled_without_panic() {
    let e = engine_with(Policy {
        scale_in_stabilization_ms: 0,
        ..Policy::default()
    });
    let s = State {
        last_scale_in_ms: Some(u64::MAX),
        low_since_ms: Some(u64::MAX),
        ..State::default()
    };
    let (d, _) = decide(&e, &s, 0, 4, &idle(4));
    assert_hold(&d, Reason::Cooldown, Urgency::None);
}

// ---- explanation and state -----------------------------------------------------

#[test]
fn explanations_read_like_the_operators_log() {
    let e = engine();
    let (_, s1) = decide(&e, &State::default(), 0, 5, &loaded(5, 0.75, 0.80));
    let nodes = loaded(8, 0.75 * 1.2, 0.80 * 1.2);
    let (d, _) = decide(&e, &s1, 90_000, 8, &nodes);
    let lines: Vec<String> = d.explain().map(|l| l.to_string()).collect();
    assert_eq!(
        lines[0],
        "CRITICAL: resource overload (CPU 90.0%, Mem 96.0%)"
    );
    assert!(
        lines[1].starts_with("Exponential scale-out: urgency=3, base=3, consecutive=1, growth=1."),
        "{lines:?}"
    );
    assert!(lines[2].starts_with("SCALE_OUT nodes=8->"), "{lines:?}");

    let e = engine_with(Policy {
        scale_in_stabilization_ms: 0,
        ..Policy::default()
    });
    let d = once(&e, 4, &idle(4));
    let lines: Vec<String> = d.explain().map(|l| l.to_string()).collect();
    assert_eq!(lines.len(), 1);
    assert!(
        lines[0].starts_with("SCALE_IN nodes=4->3 (-1) victim=socket-0"),
        "{lines:?}"
    );
    let d = once(&e, 4, &idle(3));
    let line = d.explain().last().expect("outcome").to_string();
    assert!(
        line.starts_with("HOLD nodes=4 reason=incomplete-data (3 of 4 replicas fresh"),
        "{line}"
    );

    let e = engine();
    let (_, s1) = decide(&e, &State::default(), 0, 4, &idle(4));
    let (d, s2) = decide(&e, &s1, 5_000, 4, &idle(4));
    let line = d.explain().last().expect("outcome").to_string();
    assert_eq!(
        line,
        "HOLD nodes=4 reason=stabilizing (under-loaded for 5s)"
    );
    let (d, _) = decide(&e, &s2, 45_500, 4, &idle(4));
    let line = d.explain().last().expect("outcome").to_string();
    assert_eq!(
        line,
        "HOLD nodes=4 reason=stabilizing (under-loaded for 0s; restarted, last seen low 40.5s ago)"
    );
}

#[test]
fn state_resumes_after_a_serde_round_trip() {
    let e = engine();
    let ticks: Vec<(u64, u32, Vec<NodeSample>)> = vec![
        (0, 4, loaded(4, 0.8, 0.4)),
        (30_000, 7, loaded(7, 0.9, 0.5)),
        (90_000, 7, loaded(7, 0.95, 0.5)),
        (400_000, 12, idle(12)),
        (700_000, 12, idle(12)),
    ];
    let mut straight = State::default();
    let mut resumed = State::default();
    for (now, replicas, nodes) in &ticks {
        let (a, next_a) = decide(&e, &straight, *now, *replicas, nodes);
        let text = serde_json::to_string(&resumed).expect("serialize");
        let restored: State = serde_json::from_str(&text).expect("deserialize");
        let (b, next_b) = decide(&e, &restored, *now, *replicas, nodes);
        assert_eq!(a, b);
        straight = next_a;
        resumed = next_b;
    }
    assert_eq!(straight, resumed);
    // Older, sparser layouts still load: missing fields take defaults.
    let old: State = serde_json::from_str(r#"{"consecutive":2}"#).expect("sparse state");
    assert_eq!(old.consecutive, 2);
}

#[test]
fn below_the_minimum_the_fleet_goes_back_to_it_whatever_the_load() {
    let e = engine_with(Policy::default());
    // Idle, no data, and settling all scale a fleet below min back to min.
    for (replicas, nodes) in [(1, idle(1)), (0, Vec::new()), (1, Vec::new())] {
        let d = once(&e, replicas, &nodes);
        assert_eq!(d.action, Action::ScaleOut, "{d:?}");
        assert_eq!((d.from, d.to), (replicas, 2), "{d:?}");
        assert_eq!(d.reason, Reason::BelowMin);
        assert_eq!(d.reason.as_str(), "below-min");
    }
    // Under load, the larger step wins: 1 + 3 (critical) is above min.
    let hot = fleet(1, |_, n| NodeSample {
        cpu: 0.95,
        mem: 0.5,
        ..n
    });
    let d = once(&e, 1, &hot);
    assert_eq!(
        (d.action, d.to, d.reason),
        (Action::ScaleOut, 4, Reason::ResourceOverload)
    );
    // At min, the rule does nothing.
    assert_hold(&once(&e, 2, &idle(2)), Reason::AtMin, Urgency::None);
}

#[test]
fn going_back_to_the_minimum_leaves_the_scale_out_history_alone() {
    let e = engine_with(Policy::default());
    let (d, next) = e.decide(
        &State::default(),
        &rtc_decision::Observation {
            now_ms: 1_000,
            replicas: 1,
            nodes: &idle(1),
        },
    );
    assert_eq!(d.reason, Reason::BelowMin);
    assert_eq!(next.last_scale_out, None);
    assert_eq!(next.consecutive, 0);
}

#[test]
fn more_replicas_than_the_state_knows_of_settle_instead_of_scaling_on_top() {
    let e = engine();
    let hot = |n| {
        fleet(n, |_, nd| NodeSample {
            cpu: 0.9,
            mem: 0.5,
            ..nd
        })
    };
    // The state scaled 2 -> 5 long ago; its write of 5 -> 8 landed without
    // being recorded. The next leader sees 8 replicas, 5 of them reporting,
    // under the same overload.
    let (d, state) = decide(&e, &State::default(), 0, 2, &hot(2));
    assert_out(&d, Reason::ResourceOverload, Urgency::Critical, 2, 5);
    assert_eq!(state.replicas_seen, Some(5));
    let later = 10 * 60 * 1_000;
    let (d, next) = decide(&e, &state, later, 8, &hot(5));
    assert_hold(&d, Reason::Settling, Urgency::Critical);
    assert_eq!(next.last_scale_out.map(|s| s.at_ms), Some(later));
    assert_eq!(next.replicas_seen, Some(8));
    // Still settling a tick later, not noticed twice.
    let (d, next) = decide(&e, &next, later + 5_000, 8, &hot(5));
    assert_hold(&d, Reason::Settling, Urgency::Critical);
    assert_eq!(next.last_scale_out.map(|s| s.at_ms), Some(later));
    // Once the settle time has passed, the overload scales again.
    let settled = later + 61_000;
    let (d, _) = decide(&e, &next, settled, 8, &hot(5));
    assert_eq!(d.action, Action::ScaleOut, "{d:?}");

    // Without the knowledge (a state stored before the field existed), the
    // same observation scales on top.
    let old = State {
        replicas_seen: None,
        ..state
    };
    let (d, _) = decide(&e, &old, later, 8, &hot(5));
    assert_eq!(d.action, Action::ScaleOut, "{d:?}");
}

#[test]
fn fewer_replicas_than_the_state_knows_of_are_remembered_without_settling() {
    let e = engine();
    let state = State {
        replicas_seen: Some(8),
        ..State::default()
    };
    let (d, next) = decide(&e, &state, 1_000, 5, &idle(5));
    assert_eq!(d.action, Action::Hold);
    assert_eq!(next.replicas_seen, Some(5));
    assert_eq!(next.last_scale_out, None);
}
