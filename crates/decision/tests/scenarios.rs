//! Multi-tick scenarios, one per rule family, stepping virtual time.

mod common;

use common::*;
use rtc_decision::{Action, Decision, Engine, NodeSample, Policy, Reason, State, Urgency};

const TICK: u64 = 5_000;

/// A virtual fleet: pods report `join_delay` after they are added; the
/// scale-in victim leaves at once.
struct Sim {
    engine: Engine,
    state: State,
    now: u64,
    replicas: u32,
    ready_at: Vec<u64>,
    join_delay: u64,
    log: Vec<Decision>,
}

impl Sim {
    fn new(engine: Engine, replicas: u32, join_delay: u64) -> Self {
        Self {
            engine,
            state: State::default(),
            now: 0,
            replicas,
            ready_at: vec![0; replicas as usize],
            join_delay,
            log: Vec::new(),
        }
    }

    /// One tick where every reporting pod shows `per_pod(reporting)`.
    fn tick(&mut self, per_pod: impl Fn(usize) -> (f64, f64)) -> Decision {
        let reporting = self.ready_at.iter().filter(|&&t| t <= self.now).count();
        let (cpu, mem) = per_pod(reporting);
        let nodes: Vec<NodeSample> = loaded(reporting, cpu, mem);
        let (d, next) = decide(&self.engine, &self.state, self.now, self.replicas, &nodes);
        self.state = next;
        match d.action {
            Action::ScaleOut => {
                for _ in d.from..d.to {
                    self.ready_at.push(self.now + self.join_delay);
                }
            }
            Action::ScaleIn => {
                self.ready_at.pop();
            }
            Action::Hold | Action::Rebalance => {}
        }
        self.replicas = d.to;
        self.now += TICK;
        self.log.push(d.clone());
        d
    }

    fn scale_outs(&self) -> Vec<(u64, u32)> {
        self.log
            .iter()
            .filter(|d| d.action == Action::ScaleOut)
            .map(|d| (d.now_ms, d.to - d.from))
            .collect()
    }
}

#[test]
fn sustained_overload_grows_steps_exponentially_up_to_max_step() {
    // Offered load keeps rising faster than the fleet grows: a CPU total
    // that doubles every 30 s, spread over the pods that report.
    let mut sim = Sim::new(engine(), 4, 0);
    let mut total = 3.2;
    // 80 s: the fleet stays under max_replicas, so no step is clamped.
    for _ in 0..16 {
        sim.tick(|n| ((total / n as f64).min(2.0), 0.5));
        total *= 2f64.powf(TICK as f64 / 30_000.0);
    }
    let steps: Vec<u32> = sim.scale_outs().iter().map(|&(_, s)| s).collect();
    assert!(steps.len() >= 3, "{steps:?}");
    assert_eq!(steps[0], 3, "first critical step is the base");
    assert!(
        steps.windows(2).all(|w| w[1] >= w[0]),
        "steps never shrink under sustained overload: {steps:?}"
    );
    assert_eq!(
        *steps.last().expect("steps"),
        5,
        "reaches max_step: {steps:?}"
    );
    assert!(steps.iter().all(|&s| (1..=5).contains(&s)));
    let consecutive: Vec<u32> = sim
        .log
        .iter()
        .filter_map(|d| d.step.map(|s| s.consecutive))
        .collect();
    assert!(consecutive.iter().any(|&c| c >= 2), "{consecutive:?}");
}

#[test]
fn settling_while_new_pods_start_prevents_compounding() {
    // New pods take 40 s to report; the overload persists meanwhile.
    let mut sim = Sim::new(engine(), 4, 40_000);
    let mut first_settling = None;
    for _ in 0..8 {
        let d = sim.tick(|_| (0.85, 0.5));
        if d.reason == Reason::Settling && first_settling.is_none() {
            first_settling = Some(d.now_ms);
        }
    }
    let outs = sim.scale_outs();
    assert_eq!(
        outs,
        vec![(0, 3)],
        "only one step while the new pods start: {:?}",
        sim.log
    );
    assert_eq!(first_settling, Some(TICK));
    assert!(
        sim.log[1..]
            .iter()
            .all(|d| d.reason == Reason::Settling && d.urgency == Urgency::Critical)
    );
    // Once they report (at 40 s), the still-overloaded fleet steps again.
    for _ in 0..2 {
        sim.tick(|_| (0.85, 0.5));
    }
    let outs = sim.scale_outs();
    assert_eq!(outs.len(), 2, "{:?}", sim.log);
    assert_eq!(outs[1].0, 40_000);
}

#[test]
fn scale_in_waits_five_minutes_after_load_stops_then_steps_one_at_a_time() {
    let mut sim = Sim::new(engine(), 4, 0);
    // Overload at t=0 scales to 7; load stops right away.
    let d = sim.tick(|_| (0.9, 0.5));
    assert_eq!((d.action, d.to), (Action::ScaleOut, 7));
    let mut scale_ins = Vec::new();
    while sim.now < 20 * 60_000 {
        let d = sim.tick(|_| (0.05, 0.10));
        if d.action == Action::ScaleIn {
            scale_ins.push((d.now_ms, d.from, d.to));
        }
        if d.now_ms < 300_000 {
            assert_ne!(
                d.action,
                Action::ScaleIn,
                "no scale-in within 5 minutes of a scale-out"
            );
        }
    }
    // Low since t=5 s; stabilization (3 min) is shorter than the 5-minute
    // window after the scale-out, so the window decides: exactly t=300 s.
    assert_eq!(scale_ins.first(), Some(&(300_000, 7, 6)), "{scale_ins:?}");
    let gaps: Vec<u64> = scale_ins.windows(2).map(|w| w[1].0 - w[0].0).collect();
    assert!(
        gaps.iter().all(|&g| g == 300_000),
        "one node every 5 minutes: {gaps:?}"
    );
    assert_eq!(sim.replicas, 4, "7 -> 6 -> 5 -> 4 in 20 minutes");
    let mut sim2 = Sim::new(
        engine_with(Policy {
            scale_in_window_ms: 0,
            ..Policy::default()
        }),
        6,
        0,
    );
    while sim2.now < 60 * 60_000 {
        sim2.tick(|_| (0.02, 0.05));
    }
    assert_eq!(sim2.replicas, 2, "stops at min_replicas");
    assert_eq!(sim2.log.last().map(|d| d.reason), Some(Reason::AtMin));
}
