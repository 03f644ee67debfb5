//! The loop against the in-memory lease store, workload API, state repo and
//! signal sink, in paused virtual time.

use super::*;
use crate::{MemoryStateRepo, RecordingSink, StoredState};
use rtc_decision::{Action, Engine, NodeSample, Observation, Policy, Reason, State};
use rtc_heartbeat::{Heartbeat, Load, NodeEntry, Received};
use rtc_leader::{ElectionConfig, Elector, MemoryLeaseStore};
use rtc_time::ManualClock;
use rtc_workload::{FakeWorkloadApi, Method, PodState, ScalerConfig, WorkloadKind, WorkloadScaler};
use std::collections::{BTreeMap, VecDeque};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::sleep;

const NAME: &str = "socket";
const TICK: Duration = Duration::from_secs(1);
/// One tick plus the time a lease store takes to elect someone.
const SETTLE: Duration = Duration::from_secs(3);

type Loop = Autoscaler<FakeWorkloadApi, Arc<MemoryStateRepo>>;
type Handed = Controller<FakeWorkloadApi, Arc<MemoryStateRepo>>;

fn loop_config() -> LoopConfig {
    LoopConfig {
        tick_interval: TICK,
        safety_margin: Duration::from_millis(500),
        shutdown_timeout: Duration::from_secs(2),
    }
}

fn load(cpu: f64) -> Load {
    Load {
        cpu,
        mem: cpu,
        conn: 100,
        mps: 5.0,
        p95_ms: 20.0,
        lag_ms: 1.0,
        ..Load::IDLE
    }
}

/// `n` nodes at `cpu`, received just now.
fn snapshot(n: u32, cpu: f64) -> FleetSnapshot {
    let at = Instant::now();
    let nodes = (0..n)
        .map(|i| {
            let received = Received {
                heartbeat: Heartbeat::new(&format!("socket-{i}"), "boot", 1, 0, &load(cpu)),
                at,
            };
            Arc::new(NodeEntry {
                latest: received.clone(),
                history: VecDeque::from([received]),
            })
        })
        .collect();
    FleetSnapshot {
        nodes,
        rejected_total: BTreeMap::new(),
    }
}

/// A heartbeat view that stays fresh, as the ingestor keeps it: 5 nodes
/// at the CPU last sent on the returned sender.
fn fleet(cpu: f64) -> (watch::Sender<f64>, watch::Receiver<Arc<FleetSnapshot>>) {
    let (cpu_tx, cpu_rx) = watch::channel(cpu);
    let (tx, rx) = watch::channel(Arc::new(snapshot(5, cpu)));
    tokio::spawn(async move {
        while !tx.is_closed() {
            tx.send_replace(Arc::new(snapshot(5, *cpu_rx.borrow())));
            sleep(Duration::from_millis(500)).await;
        }
    });
    (cpu_tx, rx)
}

fn workload(replicas: u32) -> FakeWorkloadApi {
    let api = FakeWorkloadApi::new("rtc");
    api.put_workload(WorkloadKind::Deployment, NAME, replicas);
    for i in 0..replicas {
        api.put_pod(PodState {
            name: format!("socket-{i}"),
            node_name: Some("node-a".to_owned()),
            phase: Some("Running".to_owned()),
            ready: true,
            ..PodState::default()
        });
    }
    api
}

fn controller(
    api: FakeWorkloadApi,
    repo: &Arc<MemoryStateRepo>,
    sink: &Arc<RecordingSink>,
    identity: &str,
) -> Handed {
    Controller::new(
        Engine::new(Policy::default()).expect("policy"),
        WorkloadScaler::new(
            api,
            ScalerConfig::with_default_bounds(NAME).expect("config"),
        ),
        repo.clone(),
        sink.clone(),
        identity,
        100,
    )
}

/// One replica: its election and its loop, stopped in that order.
struct Replica {
    decisions: watch::Receiver<Arc<Vec<DecisionRecord>>>,
    guard: LeaderGuard,
    stop: Option<(oneshot::Sender<()>, oneshot::Sender<()>)>,
    election: JoinHandle<()>,
    task: JoinHandle<Handed>,
}

impl Replica {
    fn start(
        leases: &MemoryLeaseStore,
        identity: &str,
        config: LoopConfig,
        controller: Handed,
        fleet: watch::Receiver<Arc<FleetSnapshot>>,
        clock: Option<ManualClock>,
    ) -> Self {
        let election = ElectionConfig::new(identity).with_timing(
            Duration::from_secs(3),
            Duration::from_secs(2),
            Duration::from_millis(500),
        );
        let elector = Elector::new(leases.clone(), election).expect("election config");
        let guard = elector.guard();
        let (stop_election, election_stopped) = oneshot::channel::<()>();
        let election = tokio::spawn(elector.run(async move {
            let _ = election_stopped.await;
        }));
        let mut autoscaler: Loop =
            Autoscaler::new(config, controller, guard.clone(), fleet).expect("loop config");
        if let Some(clock) = clock {
            autoscaler = autoscaler.with_wall_clock(clock);
        }
        let decisions = autoscaler.decisions();
        let (stop_loop, loop_stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(autoscaler.run(async move {
            let _ = loop_stopped.await;
        }));
        Self {
            decisions,
            guard,
            stop: Some((stop_loop, stop_election)),
            election,
            task,
        }
    }

    fn decided(&self) -> usize {
        self.decisions.borrow().len()
    }

    /// Stops the loop, then the election; hands the controller back.
    async fn stop(mut self) -> Handed {
        let (stop_loop, stop_election) = self.stop.take().expect("running");
        let _ = stop_loop.send(());
        let controller = (&mut self.task).await.expect("the loop ends");
        let _ = stop_election.send(());
        let _ = (&mut self.election).await;
        controller
    }
}

fn replicas(controller: &Handed) -> Option<u32> {
    controller
        .scaler()
        .api()
        .workload(WorkloadKind::Deployment, NAME)
        .map(|w| w.spec_replicas)
}

#[tokio::test(start_paused = true)]
async fn only_the_lease_holder_scales() {
    let leases = MemoryLeaseStore::new();
    let repo = Arc::new(MemoryStateRepo::default());
    let sink = Arc::new(RecordingSink::default());
    let (_cpu, view) = fleet(0.8);
    let a = Replica::start(
        &leases,
        "lb-0",
        loop_config(),
        controller(workload(5), &repo, &sink, "lb-0"),
        view.clone(),
        None,
    );
    let b = Replica::start(
        &leases,
        "lb-1",
        loop_config(),
        controller(workload(5), &repo, &sink, "lb-1"),
        view,
        None,
    );
    sleep(SETTLE).await;

    let (leader, follower) = if a.guard.is_leader() { (a, b) } else { (b, a) };
    assert!(leader.guard.is_leader(), "someone leads");
    assert!(leader.decided() >= 2, "the leader ticks every interval");
    assert_eq!(follower.decided(), 0, "a follower never decides");
    let first = leader.decisions.borrow()[0].clone();
    assert_eq!(first.decision.action, Action::ScaleOut);
    assert_eq!(first.outcome, "scaled");
    let signals = sink.signals();
    assert_eq!(signals.len(), 1, "{signals:?}");
    assert_eq!((signals[0].from, signals[0].to), (5, 8));
    assert!(
        repo.stored().is_some(),
        "the state is saved for a successor"
    );

    let led = leader.stop().await;
    let followed = follower.stop().await;
    assert_eq!(replicas(&led), Some(8));
    assert_eq!(replicas(&followed), Some(5));
    assert_eq!(followed.scaler().api().calls(Method::GetWorkload), 0);
}

#[tokio::test(start_paused = true)]
async fn a_new_leader_resumes_the_stored_state() {
    // The previous leader scaled 5 -> 8 at 1 s and saved its state.
    let engine = Engine::new(Policy::default()).expect("policy");
    let hot: Vec<NodeSample> = snapshot(5, 0.8).samples(Instant::now());
    let (decision, state) = engine.decide(
        &State::default(),
        &Observation {
            now_ms: 1_000,
            replicas: 5,
            nodes: &hot,
        },
    );
    assert_eq!(decision.action, Action::ScaleOut);
    let repo = Arc::new(MemoryStateRepo::default());
    repo.save(1, &state).await.expect("saved");

    // The successor leads 5 s later while only the 5 old pods report.
    let leases = MemoryLeaseStore::new();
    let sink = Arc::new(RecordingSink::default());
    let (_cpu, view) = fleet(0.8);
    let replica = Replica::start(
        &leases,
        "lb-1",
        loop_config(),
        controller(workload(8), &repo, &sink, "lb-1"),
        view,
        Some(ManualClock::new(6_000)),
    );
    sleep(SETTLE).await;
    let first = replica.decisions.borrow()[0].clone();
    assert_eq!(first.decision.reason, Reason::Settling, "{first:?}");
    assert!(sink.signals().is_empty());
    let controller = replica.stop().await;
    assert_eq!(replicas(&controller), Some(8), "the step is not repeated");
    assert_eq!(
        repo.stored().map(|s: StoredState| s.state.consecutive),
        Some(1)
    );
}

#[tokio::test(start_paused = true)]
async fn losing_the_lease_stops_scaling_and_regaining_it_resumes() {
    let leases = MemoryLeaseStore::new();
    let repo = Arc::new(MemoryStateRepo::default());
    let sink = Arc::new(RecordingSink::default());
    let (_cpu, view) = fleet(0.4);
    let replica = Replica::start(
        &leases,
        "lb-0",
        loop_config(),
        controller(workload(5), &repo, &sink, "lb-0"),
        view,
        None,
    );
    sleep(SETTLE).await;
    assert!(replica.guard.is_leader());
    let before = replica.decided();
    assert!(before >= 2);

    // The API server stops answering: the leader steps down at its renew
    // deadline and no tick runs after that.
    leases.set_down(Some(rtc_leader::Fault::Status(500)));
    sleep(Duration::from_secs(3)).await;
    assert!(!replica.guard.is_leader());
    let stepped_down = replica.decided();
    assert!(stepped_down <= before + 2, "{before} -> {stepped_down}");
    sleep(Duration::from_secs(10)).await;
    assert_eq!(replica.decided(), stepped_down, "a follower does not tick");

    leases.set_down(None);
    sleep(Duration::from_secs(6)).await;
    assert!(replica.guard.is_leader());
    assert!(replica.decided() > stepped_down, "leading again, it ticks");
    let controller = replica.stop().await;
    assert_eq!(replicas(&controller), Some(5), "a balanced fleet holds");
}

#[tokio::test(start_paused = true)]
async fn a_hung_read_ends_within_the_lease_time_left() {
    let leases = MemoryLeaseStore::new();
    let repo = Arc::new(MemoryStateRepo::default());
    let sink = Arc::new(RecordingSink::default());
    let api = workload(5);
    // The first read never answers; the request timeout alone would wait
    // 10 s for it, but a leader's requests end within its lease time left.
    api.inject(Method::GetWorkload, rtc_workload::Fault::Hang);
    let (_cpu, view) = fleet(0.8);
    let started = Instant::now();
    let replica = Replica::start(
        &leases,
        "lb-0",
        loop_config(),
        controller(api, &repo, &sink, "lb-0"),
        view,
        None,
    );
    let mut decisions = replica.decisions.clone();
    decisions
        .wait_for(|d| !d.is_empty())
        .await
        .expect("a decision");
    let waited = started.elapsed();
    // The hung read started within a tick of leading and was cut off at
    // the renew deadline (2 s) at most; the retry went through.
    assert!(waited >= loop_config().tick_deadline(), "{waited:?}");
    assert!(waited < Duration::from_secs(6), "{waited:?}");
    assert_eq!(sink.signals().len(), 1);
    let controller = replica.stop().await;
    assert_eq!(replicas(&controller), Some(8));
}

#[tokio::test(start_paused = true)]
async fn no_write_without_the_safety_margin_of_lease_time() {
    let leases = MemoryLeaseStore::new();
    let repo = Arc::new(MemoryStateRepo::default());
    let sink = Arc::new(RecordingSink::default());
    let (_cpu, view) = fleet(0.8);
    // More margin than a leader ever has left (its renew deadline is 2 s).
    let config = LoopConfig {
        safety_margin: Duration::from_secs(5),
        ..loop_config()
    };
    let replica = Replica::start(
        &leases,
        "lb-0",
        config,
        controller(workload(5), &repo, &sink, "lb-0"),
        view,
        None,
    );
    sleep(SETTLE * 2).await;
    assert!(replica.guard.is_leader());
    assert_eq!(replica.decided(), 0);
    let controller = replica.stop().await;
    assert_eq!(controller.scaler().api().calls(Method::GetWorkload), 0);
    assert_eq!(replicas(&controller), Some(5));
    assert!(repo.stored().is_none());
}

#[tokio::test(start_paused = true)]
async fn shutdown_lets_the_tick_under_way_finish() {
    let leases = MemoryLeaseStore::new();
    let repo = Arc::new(MemoryStateRepo::default());
    let sink = Arc::new(RecordingSink::default());
    let (_cpu, view) = fleet(0.8);
    let replica = Replica::start(
        &leases,
        "lb-0",
        loop_config(),
        controller(workload(5), &repo, &sink, "lb-0"),
        view,
        None,
    );
    sleep(SETTLE).await;
    let started = Instant::now();
    let controller = replica.stop().await;
    assert!(started.elapsed() <= loop_config().tick_deadline());
    assert_eq!(replicas(&controller), Some(8));
}

#[test]
fn a_zero_tick_interval_is_refused() {
    let config = LoopConfig {
        tick_interval: Duration::ZERO,
        ..LoopConfig::default()
    };
    assert_eq!(config.validate(), Err(ConfigError::ZeroTickInterval));
    assert_eq!(
        LoopConfig::default().tick_deadline(),
        Duration::from_secs(10)
    );
}

#[tokio::test(start_paused = true)]
async fn a_leader_claims_the_workload_before_its_first_write() {
    let leases = MemoryLeaseStore::new();
    let repo = Arc::new(MemoryStateRepo::default());
    let sink = Arc::new(RecordingSink::default());
    let (_cpu, view) = fleet(0.8);
    let api = workload(5);
    // A write an earlier leader prepared: read before this leader's claim.
    let earlier = api
        .workload(WorkloadKind::Deployment, NAME)
        .expect("workload");
    let replica = Replica::start(
        &leases,
        "lb-0",
        loop_config(),
        controller(api, &repo, &sink, "lb-0"),
        view,
        None,
    );
    sleep(SETTLE).await;
    let token = replica.guard.check(Duration::ZERO).expect("leads").token;
    let controller = replica.stop().await;
    let api = controller.scaler().api();
    let now = api
        .workload(WorkloadKind::Deployment, NAME)
        .expect("workload");
    assert_eq!(now.fencing_token, Some(token), "claimed under its token");
    assert_eq!(
        api.calls(Method::AnnotateWorkload),
        1,
        "one claim per token"
    );
    assert_eq!(now.spec_replicas, 8, "then it scaled");
    // The earlier leader's write arrives now: refused.
    let late = api
        .replace_scale(WorkloadKind::Deployment, NAME, 6, &earlier.resource_version)
        .await;
    assert!(
        matches!(late, Err(rtc_workload::ApiError::Conflict(_))),
        "{late:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn no_write_before_the_claim_succeeds() {
    let leases = MemoryLeaseStore::new();
    let repo = Arc::new(MemoryStateRepo::default());
    let sink = Arc::new(RecordingSink::default());
    let (_cpu, view) = fleet(0.8);
    let api = workload(5);
    for _ in 0..3 {
        api.inject(Method::AnnotateWorkload, rtc_workload::Fault::status(403));
    }
    let replica = Replica::start(
        &leases,
        "lb-0",
        loop_config(),
        controller(api, &repo, &sink, "lb-0"),
        view,
        None,
    );
    sleep(TICK * 2).await;
    assert!(replica.guard.is_leader());
    assert_eq!(replica.decided(), 0, "no tick while unclaimed");
    sleep(SETTLE).await;
    let controller = replica.stop().await;
    let api = controller.scaler().api();
    assert_eq!(
        api.calls(Method::AnnotateWorkload),
        4,
        "claimed once the refusals stop"
    );
    assert_eq!(api.calls(Method::ReplaceScale), 1);
    assert_eq!(replicas(&controller), Some(8));
}

#[test]
fn the_safety_margin_must_leave_time_between_renewals() {
    let election = ElectionConfig::new("lb-0").with_timing(
        Duration::from_secs(15),
        Duration::from_secs(10),
        Duration::from_secs(2),
    );
    assert_eq!(LoopConfig::default().validate_against(&election), Ok(()));
    let config = LoopConfig {
        safety_margin: Duration::from_secs(8),
        ..LoopConfig::default()
    };
    let error = config
        .validate_against(&election)
        .expect_err("8 s >= 10 s - 2 s");
    assert!(
        matches!(error, ConfigError::MarginTooLarge { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("renew deadline"), "{error}");
}
