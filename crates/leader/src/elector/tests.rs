//! The election loop against the in-memory store, in paused virtual time.

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};

use crate::{ElectionConfig, Elector, Fault, LeaderGuard, MemoryLeaseStore};

const LEASE: Duration = Duration::from_secs(3);
const RENEW: Duration = Duration::from_secs(2);
const RETRY: Duration = Duration::from_millis(500);

fn config(identity: &str) -> ElectionConfig {
    ElectionConfig::new(identity).with_timing(LEASE, RENEW, RETRY)
}

struct Running {
    guard: LeaderGuard,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Running {
    fn start(store: &MemoryLeaseStore, identity: &str) -> Self {
        let elector = Elector::new(store.clone(), config(identity)).expect("valid config");
        let guard = elector.guard();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(elector.run(async move {
            let _ = stopped.await;
        }));
        Self {
            guard,
            stop: Some(stop),
            task,
        }
    }

    async fn shut_down(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = self.task.await;
    }

    fn crash(self) {
        self.task.abort();
    }
}

/// Waits until one of `guards` leads, checking every 10 ms; returns its index.
async fn leader_among(guards: &[LeaderGuard], limit: Duration) -> Option<usize> {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if let Some(i) = guards.iter().position(LeaderGuard::is_leader) {
            return Some(i);
        }
        sleep(Duration::from_millis(10)).await;
    }
    None
}

/// Checks every 10 ms that at most one guard says "leader"; returns the
/// number of violations seen. Stops when `stop` fires.
fn recorder(guards: Vec<LeaderGuard>, mut stop: oneshot::Receiver<()>) -> JoinHandle<usize> {
    tokio::spawn(async move {
        let mut violations = 0;
        loop {
            let leaders = guards.iter().filter(|g| g.is_leader()).count();
            if leaders > 1 {
                violations += 1;
            }
            tokio::select! {
                _ = &mut stop => return violations,
                () = sleep(Duration::from_millis(10)) => {}
            }
        }
    })
}

#[tokio::test(start_paused = true)]
async fn a_lone_candidate_creates_the_lease_and_leads_with_a_token_from_the_clock() {
    let store = MemoryLeaseStore::new();
    let a = Running::start(&store, "a");
    assert_eq!(
        leader_among(std::slice::from_ref(&a.guard), RETRY).await,
        Some(0)
    );
    let first = token(&a.guard);
    assert!(first > 0, "a created Lease starts at the clock's token");
    assert_eq!(a.guard.check(Duration::ZERO).map(|f| f.token), Ok(first));
    a.shut_down().await;
    let released = store.peek().map(|l| l.record);
    assert_eq!(released.and_then(|r| r.holder), None);
}

#[tokio::test(start_paused = true)]
async fn after_a_crash_the_other_takes_over_once_the_lease_expires() {
    let store = MemoryLeaseStore::new();
    let a = Running::start(&store, "a");
    assert_eq!(
        leader_among(std::slice::from_ref(&a.guard), RETRY).await,
        Some(0)
    );
    let first = token(&a.guard);
    assert!(first > 0, "a created Lease starts at the clock's token");
    let b = Running::start(&store, "b");
    sleep(Duration::from_secs(5)).await;
    assert!(a.guard.is_leader() && !b.guard.is_leader());

    let a_guard = a.guard.clone();
    let crashed = Instant::now();
    a.crash();
    assert_eq!(
        leader_among(std::slice::from_ref(&b.guard), LEASE * 2).await,
        Some(0)
    );
    let failover = crashed.elapsed();
    assert!(failover >= LEASE - RETRY, "took over after {failover:?}");
    assert!(
        failover <= LEASE + RETRY * 2,
        "took over after {failover:?}"
    );
    // The crashed leader's own guard ran out before that.
    assert!(!a_guard.is_leader());
    assert_eq!(
        b.guard.check(Duration::ZERO).map(|f| f.token),
        Ok(first + 1)
    );
    b.shut_down().await;
}

#[tokio::test(start_paused = true)]
async fn a_graceful_release_hands_over_within_one_retry_period() {
    let store = MemoryLeaseStore::new();
    let a = Running::start(&store, "a");
    assert_eq!(
        leader_among(std::slice::from_ref(&a.guard), RETRY).await,
        Some(0)
    );
    let b = Running::start(&store, "b");
    sleep(Duration::from_secs(2)).await;

    let released = Instant::now();
    a.shut_down().await;
    assert_eq!(
        leader_among(std::slice::from_ref(&b.guard), LEASE).await,
        Some(0)
    );
    // Within one retry period, give or take the 10 ms between two looks.
    let handover = released.elapsed();
    assert!(
        handover <= RETRY + Duration::from_millis(10),
        "handover took {handover:?}"
    );
    b.shut_down().await;
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_store_makes_the_leader_step_down_before_anyone_may_take_over() {
    let store = MemoryLeaseStore::new();
    let a = Running::start(&store, "a");
    assert_eq!(
        leader_among(std::slice::from_ref(&a.guard), RETRY).await,
        Some(0)
    );
    let b = Running::start(&store, "b");
    sleep(Duration::from_secs(2)).await;

    let (stop, stopped) = oneshot::channel();
    let record = recorder(vec![a.guard.clone(), b.guard.clone()], stopped);
    let down = Instant::now();
    store.set_down(Some(Fault::Hang));
    while a.guard.is_leader() {
        sleep(Duration::from_millis(10)).await;
    }
    assert!(
        down.elapsed() <= RENEW,
        "stepped down after {:?}",
        down.elapsed()
    );
    sleep(Duration::from_secs(10)).await;
    assert!(!a.guard.is_leader() && !b.guard.is_leader());

    store.set_down(None);
    assert!(
        leader_among(&[a.guard.clone(), b.guard.clone()], LEASE * 2)
            .await
            .is_some()
    );
    let _ = stop.send(());
    assert_eq!(record.await.ok(), Some(0));
    a.shut_down().await;
    b.shut_down().await;
}

#[tokio::test(start_paused = true)]
async fn short_storms_of_conflicts_and_server_errors_do_not_cost_leadership() {
    let store = MemoryLeaseStore::new();
    let a = Running::start(&store, "a");
    assert_eq!(
        leader_among(std::slice::from_ref(&a.guard), RETRY).await,
        Some(0)
    );
    let first = token(&a.guard);
    assert!(first > 0, "a created Lease starts at the clock's token");
    // Each storm is over well within the renew deadline: a hung request
    // costs half of it, a refused one a retry period.
    store.inject([Fault::Conflict, Fault::Status(500)]);
    sleep(Duration::from_secs(2)).await;
    store.inject([Fault::Hang]);
    sleep(Duration::from_secs(2)).await;
    store.inject([Fault::Status(503), Fault::Conflict, Fault::Conflict]);
    for _ in 0..300 {
        assert!(a.guard.is_leader());
        sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(a.guard.check(Duration::ZERO).map(|f| f.token), Ok(first));
    a.shut_down().await;
}

#[tokio::test(start_paused = true)]
async fn an_endless_conflict_storm_makes_the_leader_step_down_on_time() {
    let store = MemoryLeaseStore::new();
    let a = Running::start(&store, "a");
    assert_eq!(
        leader_among(std::slice::from_ref(&a.guard), RETRY).await,
        Some(0)
    );
    let first = token(&a.guard);
    assert!(first > 0, "a created Lease starts at the clock's token");
    let storm = Instant::now();
    store.set_down(Some(Fault::Conflict));
    while a.guard.is_leader() {
        sleep(Duration::from_millis(10)).await;
    }
    assert!(storm.elapsed() <= RENEW);
    store.set_down(None);
    assert_eq!(
        leader_among(std::slice::from_ref(&a.guard), LEASE).await,
        Some(0)
    );
    // Re-acquired as a new leadership: a new token.
    assert_eq!(
        a.guard.check(Duration::ZERO).map(|f| f.token),
        Ok(first + 1)
    );
    a.shut_down().await;
}

#[tokio::test(start_paused = true)]
async fn a_lost_reply_is_recovered_without_two_leaders() {
    let store = MemoryLeaseStore::new();
    let a = Running::start(&store, "a");
    let b = Running::start(&store, "b");
    let guards = vec![a.guard.clone(), b.guard.clone()];
    let (stop, stopped) = oneshot::channel();
    let record = recorder(guards.clone(), stopped);
    for _ in 0..5 {
        store.inject([Fault::LostReply]);
        sleep(Duration::from_secs(4)).await;
    }
    assert!(leader_among(&guards, LEASE * 2).await.is_some());
    let _ = stop.send(());
    assert_eq!(record.await.ok(), Some(0));
    a.shut_down().await;
    b.shut_down().await;
}

/// A small deterministic generator, so failures can be replayed by seed.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Three candidates, random latency, random faults, random crashes,
/// releases and restarts: never two leaders at once, and always a leader
/// again once the faults stop.
#[tokio::test(start_paused = true)]
async fn random_schedules_never_have_two_leaders() {
    for seed in 1..=40_u64 {
        let mut rng = XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let store = MemoryLeaseStore::new();
        let names = ["a", "b", "c"];
        let mut running: Vec<Running> = names.iter().map(|n| Running::start(&store, n)).collect();
        let (stop, stopped) = oneshot::channel();
        // The recorder needs fixed guards: it watches every generation's.
        let (guards_tx, mut guards_rx) = tokio::sync::mpsc::unbounded_channel::<LeaderGuard>();
        for r in &running {
            let _ = guards_tx.send(r.guard.clone());
        }
        let violations = tokio::spawn(async move {
            let mut guards = Vec::new();
            let mut violations = 0;
            let mut stopped = stopped;
            loop {
                while let Ok(g) = guards_rx.try_recv() {
                    guards.push(g);
                }
                if guards.iter().filter(|g| g.is_leader()).count() > 1 {
                    violations += 1;
                }
                tokio::select! {
                    _ = &mut stopped => return violations,
                    () = sleep(Duration::from_millis(10)) => {}
                }
            }
        });
        for _ in 0..30 {
            store.set_latency(Duration::from_millis(rng.below(400)));
            match rng.below(6) {
                0 => store.inject([Fault::Hang]),
                1 => store.inject([Fault::Status(500), Fault::Conflict]),
                2 => store.inject([Fault::LostReply]),
                3 => {
                    let i = usize::try_from(rng.below(3)).unwrap_or(0);
                    let next = Running::start(&store, names[i]);
                    let _ = guards_tx.send(next.guard.clone());
                    std::mem::replace(&mut running[i], next).crash();
                }
                4 => {
                    let i = usize::try_from(rng.below(3)).unwrap_or(0);
                    // Start the successor only after the release, as a restarted pod would.
                    running.remove(i).shut_down().await;
                    let next = Running::start(&store, names[i]);
                    let _ = guards_tx.send(next.guard.clone());
                    running.insert(i, next);
                }
                _ => {}
            }
            sleep(Duration::from_millis(200 + rng.below(3_000))).await;
        }
        store.set_latency(Duration::ZERO);
        let guards: Vec<LeaderGuard> = running.iter().map(|r| r.guard.clone()).collect();
        assert!(
            leader_among(&guards, LEASE * 3).await.is_some(),
            "seed {seed}: no leader after the faults stopped"
        );
        let _ = stop.send(());
        assert_eq!(violations.await.ok(), Some(0), "seed {seed}");
        for r in running {
            r.shut_down().await;
        }
    }
}

fn token(guard: &LeaderGuard) -> u64 {
    guard.check(Duration::ZERO).map(|f| f.token).unwrap_or(0)
}
