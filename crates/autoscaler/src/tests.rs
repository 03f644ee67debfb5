//! The controller against the workload scaler's in-memory API.

use crate::*;
use rtc_decision::{Action, Engine, NodeSample, Policy, Reason, State};
use rtc_workload::{
    DELETION_COST_ANNOTATION, FakeWorkloadApi, FixedToken, PodState, ScaleOutcome, ScalerConfig,
    WorkloadKind, WorkloadScaler,
};
use std::sync::Arc;

const NAME: &str = "socket";

fn node(id: &str, cpu: f64, conn: f64) -> NodeSample {
    NodeSample {
        id: id.to_owned(),
        cpu,
        mem: cpu,
        conn,
        mps: 1.0,
        p95_ms: 20.0,
        lag_ms: 1.0,
        age_ms: 500,
        draining: false,
    }
}

fn pod(name: &str) -> PodState {
    PodState {
        name: name.to_owned(),
        node_name: Some("node-a".to_owned()),
        phase: Some("Running".to_owned()),
        ready: true,
        ..PodState::default()
    }
}

struct Setup {
    controller: Controller<FakeWorkloadApi, Arc<MemoryStateRepo>>,
    repo: Arc<MemoryStateRepo>,
    sink: Arc<RecordingSink>,
}

fn setup(kind: WorkloadKind, replicas: u32, policy: Policy) -> Setup {
    let api = FakeWorkloadApi::new("rtc");
    api.put_workload(kind, NAME, replicas);
    for i in 0..replicas {
        api.put_pod(pod(&format!("socket-{i}")));
    }
    let scaler = WorkloadScaler::new(
        api,
        ScalerConfig::with_default_bounds(NAME).expect("config"),
    );
    let repo = Arc::new(MemoryStateRepo::default());
    let sink = Arc::new(RecordingSink::default());
    let controller = Controller::new(
        Engine::new(policy).expect("policy"),
        scaler,
        repo.clone(),
        sink.clone(),
        "lb-0",
        10,
    );
    Setup {
        controller,
        repo,
        sink,
    }
}

fn replicas(s: &Setup, kind: WorkloadKind) -> u32 {
    s.controller
        .scaler()
        .api()
        .workload(kind, NAME)
        .map(|w| w.spec_replicas)
        .unwrap_or(0)
}

#[tokio::test]
async fn overload_scales_out_publishes_and_saves_state() {
    for kind in WorkloadKind::ALL {
        let mut s = setup(kind, 5, Policy::default());
        let nodes: Vec<NodeSample> = (0..5)
            .map(|i| node(&format!("socket-{i}"), 0.8, 100.0))
            .collect();
        let report = s
            .controller
            .tick(1_000, &nodes, &FixedToken(7))
            .await
            .expect("tick");
        assert_eq!(report.decision.action, Action::ScaleOut);
        assert!(
            matches!(
                report.outcome,
                Some(ScaleOutcome::Scaled { from: 5, to: 8, .. })
            ),
            "{report:?}"
        );
        assert_eq!(replicas(&s, kind), 8);
        let signals = s.sink.signals();
        assert_eq!(signals.len(), 1);
        assert_eq!(
            (signals[0].from, signals[0].to, signals[0].fencing_token),
            (5, 8, 7)
        );
        assert_eq!(signals[0].leader, "lb-0");
        let stored = s.repo.stored().expect("saved");
        assert_eq!(stored.token, 7);
        assert_eq!(stored.state.consecutive, 1);
        assert_eq!(s.controller.decisions().borrow().len(), 1);
    }
}

#[tokio::test]
async fn a_conflict_is_decided_again_at_once_and_a_second_keeps_the_state() {
    let nodes: Vec<NodeSample> = (0..5)
        .map(|i| node(&format!("socket-{i}"), 0.8, 100.0))
        .collect();
    // One conflict: the tick re-reads and decides again, and scales.
    let mut s = setup(WorkloadKind::Deployment, 5, Policy::default());
    s.controller.scaler().api().inject(
        rtc_workload::Method::ReplaceScale,
        rtc_workload::Fault::status(409),
    );
    let report = s
        .controller
        .tick(1_000, &nodes, &FixedToken(1))
        .await
        .expect("tick");
    assert!(
        matches!(report.outcome, Some(ScaleOutcome::Scaled { to: 8, .. })),
        "{report:?}"
    );
    assert_eq!(
        s.controller
            .scaler()
            .api()
            .calls(rtc_workload::Method::ReplaceScale),
        2
    );

    // Another writer keeps changing replicas between our reads and writes:
    // nothing is recorded, and the next tick decides again.
    let mut s = setup(WorkloadKind::Deployment, 5, Policy::default());
    for _ in 0..2 {
        s.controller.scaler().api().inject(
            rtc_workload::Method::ReplaceScale,
            rtc_workload::Fault::status(409),
        );
    }
    let report = s
        .controller
        .tick(1_000, &nodes, &FixedToken(1))
        .await
        .expect("tick");
    assert!(
        matches!(report.outcome, Some(ScaleOutcome::Conflict { .. })),
        "{report:?}"
    );
    assert_eq!(
        s.controller.state(),
        &State::default(),
        "no scale-out recorded"
    );
    assert!(s.sink.signals().is_empty());
    let report = s
        .controller
        .tick(6_000, &nodes, &FixedToken(1))
        .await
        .expect("tick");
    assert!(
        matches!(report.outcome, Some(ScaleOutcome::Scaled { .. })),
        "{report:?}"
    );
}

#[tokio::test]
async fn scale_in_marks_the_least_loaded_pod_cheapest() {
    let policy = Policy {
        scale_in_stabilization_ms: 0,
        ..Policy::default()
    };
    let mut s = setup(WorkloadKind::Deployment, 4, policy);
    let nodes: Vec<NodeSample> = (0..4)
        .map(|i| node(&format!("socket-{i}"), 0.05, [40.0, 3.0, 25.0, 9.0][i]))
        .collect();
    let report = s
        .controller
        .tick(1_000, &nodes, &FixedToken(1))
        .await
        .expect("tick");
    assert_eq!(report.decision.action, Action::ScaleIn);
    assert_eq!(report.decision.reason, Reason::ExcessCapacity);
    assert_eq!(
        report.plan.as_ref().map(|p| p.victim.as_str()),
        Some("socket-1")
    );
    assert_eq!(replicas(&s, WorkloadKind::Deployment), 3);
    let api = s.controller.scaler().api();
    let cost = |p: &str| {
        api.pod(p)
            .and_then(|p| p.deletion_cost)
            .and_then(|c| c.parse::<i64>().ok())
    };
    let victim = cost("socket-1").expect("victim annotated");
    for other in ["socket-0", "socket-2", "socket-3"] {
        assert!(cost(other).expect("annotated") > victim, "{other}");
    }
    assert_eq!(
        DELETION_COST_ANNOTATION,
        "controller.kubernetes.io/pod-deletion-cost"
    );
}

#[tokio::test]
async fn a_refused_fence_writes_nothing() {
    struct Lost;
    impl rtc_workload::Fence for Lost {
        fn check(&self) -> Result<rtc_workload::Permit, rtc_workload::FenceError> {
            Err(rtc_workload::FenceError::new("lease held by lb-1"))
        }
    }
    let mut s = setup(WorkloadKind::Deployment, 5, Policy::default());
    let nodes: Vec<NodeSample> = (0..5)
        .map(|i| node(&format!("socket-{i}"), 0.8, 100.0))
        .collect();
    let err = s
        .controller
        .tick(1_000, &nodes, &Lost)
        .await
        .expect_err("not leader");
    assert_eq!(err.label(), "not_leader");
    assert_eq!(replicas(&s, WorkloadKind::Deployment), 5);
    assert!(s.repo.stored().is_none());
}

#[tokio::test]
async fn a_new_leader_resumes_and_does_not_repeat_the_step() {
    let mut first = setup(WorkloadKind::Deployment, 5, Policy::default());
    let hot: Vec<NodeSample> = (0..5)
        .map(|i| node(&format!("socket-{i}"), 0.8, 100.0))
        .collect();
    first
        .controller
        .tick(1_000, &hot, &FixedToken(1))
        .await
        .expect("tick");
    assert_eq!(replicas(&first, WorkloadKind::Deployment), 8);

    // A successor on the same workload and state store, 5 s later, while
    // only the 5 old pods report: the saved state makes it settle.
    let api = FakeWorkloadApi::new("rtc");
    api.put_workload(WorkloadKind::Deployment, NAME, 8);
    let mut second = Controller::new(
        Engine::new(Policy::default()).expect("policy"),
        WorkloadScaler::new(
            api,
            ScalerConfig::with_default_bounds(NAME).expect("config"),
        ),
        first.repo.clone(),
        Arc::new(NoSignals),
        "lb-1",
        10,
    );
    second.resume().await;
    let report = second
        .tick(6_000, &hot, &FixedToken(2))
        .await
        .expect("tick");
    assert_eq!(
        report.decision.reason,
        Reason::Settling,
        "{:?}",
        report.decision
    );
    assert_eq!(
        second
            .scaler()
            .api()
            .workload(WorkloadKind::Deployment, NAME)
            .map(|w| w.spec_replicas),
        Some(8)
    );
    // The old leader's later save is fenced off.
    let err = first
        .repo
        .save(1, &State::default())
        .await
        .expect_err("fenced");
    assert_eq!(err.label(), "fenced");
}

#[tokio::test]
async fn a_rebalance_is_handed_to_the_shed_sink_once_per_window_and_scales_nothing() {
    let mut policy = Policy::default();
    policy.rebalance.enabled = true;
    let window_ms = u64::try_from(policy.rebalance.window_ms).expect("positive");
    let mut s = setup(WorkloadKind::Deployment, 5, policy);
    let shed = Arc::new(RecordingShedSink::default());
    s.controller = s
        .controller
        .with_shedding(shed.clone(), std::time::Duration::from_secs(20));
    let conns = [300.0, 300.0, 0.0, 0.0, 0.0];
    let nodes: Vec<NodeSample> = conns
        .iter()
        .enumerate()
        .map(|(i, c)| node(&format!("socket-{i}"), 0.5, *c))
        .collect();
    let report = s
        .controller
        .tick(1_000, &nodes, &FixedToken(3))
        .await
        .expect("tick");
    assert_eq!(report.decision.action, Action::Rebalance, "{report:?}");
    assert!(report.outcome.is_none());
    assert_eq!(replicas(&s, WorkloadKind::Deployment), 5);
    let offered = shed.offered();
    assert_eq!(offered.len(), 1);
    let sheds: Vec<(&str, u64)> = offered[0]
        .sheds
        .iter()
        .map(|x| (x.node.as_str(), x.connections))
        .collect();
    assert_eq!(sheds, [("socket-0", 75), ("socket-1", 75)]);
    assert!(
        s.sink.signals().is_empty(),
        "a rebalance is not a scaling signal"
    );
    assert_eq!(
        s.repo.stored().expect("saved").state.last_rebalance_ms,
        Some(1_000)
    );

    // Within the window: nothing more is sent, even though the spread stays.
    for t in [6_000, 1_000 + window_ms - 1] {
        let report = s
            .controller
            .tick(t, &nodes, &FixedToken(3))
            .await
            .expect("tick");
        assert_ne!(report.decision.action, Action::Rebalance, "at {t}");
    }
    assert_eq!(shed.offered().len(), 1);
    // After it, the next rebalance goes out.
    s.controller
        .tick(1_000 + window_ms, &nodes, &FixedToken(3))
        .await
        .expect("tick");
    assert_eq!(shed.offered().len(), 2);
}

#[tokio::test]
async fn without_a_shed_sink_a_rebalance_is_recorded_only() {
    let mut policy = Policy::default();
    policy.rebalance.enabled = true;
    let mut s = setup(WorkloadKind::Deployment, 3, policy);
    let nodes = [
        node("socket-0", 0.5, 200.0),
        node("socket-1", 0.5, 0.0),
        node("socket-2", 0.5, 0.0),
    ];
    let report = s
        .controller
        .tick(1_000, &nodes, &FixedToken(3))
        .await
        .expect("tick");
    assert_eq!(report.decision.action, Action::Rebalance);
    let history = s.controller.decisions().borrow().clone();
    assert_eq!(history.last().map(|r| r.outcome.as_str()), Some("none"));
    assert_eq!(replicas(&s, WorkloadKind::Deployment), 3);
}

#[test]
fn the_spread_counts_fresh_nodes_that_are_not_draining() {
    let mut draining = node("d", 0.5, 900.0);
    draining.draining = true;
    let mut stale = node("s", 0.5, 0.0);
    stale.age_ms = 10_000;
    let nodes = [node("a", 0.5, 120.0), node("b", 0.5, 20.0), draining, stale];
    assert_eq!(connection_spread(&nodes, 5_000), Some(100.0));
    assert_eq!(connection_spread(&nodes[..1], 5_000), None);
}
