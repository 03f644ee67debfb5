//! Shared helpers of the integration tests: candidates on the real API
//! server, and a recorder that checks there is never more than one leader.

#![allow(dead_code, unreachable_pub, reason = "each test binary uses a part")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test support: a fixture that cannot be built should fail the test that uses it, at once"
)]

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use rtc_leader::{ElectionConfig, Elector, KubeLeaseStore, LeaderGuard, SystemClock, WallClock};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};

/// Short timings for tests: lease 3 s, renew deadline 2 s, retry 0.5 s.
pub const LEASE: Duration = Duration::from_secs(3);
pub const RENEW: Duration = Duration::from_secs(2);
pub const RETRY: Duration = Duration::from_millis(500);

pub fn config(identity: &str) -> ElectionConfig {
    ElectionConfig::new(identity).with_timing(LEASE, RENEW, RETRY)
}

/// One running candidate.
pub struct Candidate {
    pub identity: String,
    pub guard: LeaderGuard,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Candidate {
    pub fn start(client: &kube::Client, namespace: &str, lease: &str, identity: &str) -> Self {
        Self::start_with_clock(client, namespace, lease, identity, SystemClock)
    }

    /// A candidate whose Lease timestamps come from `clock`.
    pub fn start_with_clock(
        client: &kube::Client,
        namespace: &str,
        lease: &str,
        identity: &str,
        clock: impl WallClock,
    ) -> Self {
        let store = KubeLeaseStore::new(client.clone(), namespace, lease);
        let elector = Elector::new(store, config(identity))
            .expect("valid config")
            .with_wall_clock(clock);
        let guard = elector.guard();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(elector.run(async move {
            let _ = stopped.await;
        }));
        Self {
            identity: identity.to_owned(),
            guard,
            stop: Some(stop),
            task,
        }
    }

    /// Graceful: steps down and releases the Lease.
    pub async fn shut_down(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = self.task.await;
    }

    /// A crash: the task is gone without releasing anything.
    pub async fn crash(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Waits until one of `guards` leads; returns its index.
pub async fn leader_among(guards: &[LeaderGuard], limit: Duration) -> Option<usize> {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if let Some(i) = guards.iter().position(LeaderGuard::is_leader) {
            return Some(i);
        }
        sleep(Duration::from_millis(5)).await;
    }
    None
}

/// Looks at every guard ever registered every 5 ms and counts the moments
/// when more than one said "leader".
#[derive(Clone, Default)]
#[expect(
    clippy::disallowed_types,
    reason = "`watch` is sync, and the sampler copies the list out before it sleeps"
)]
pub struct Recorder {
    guards: Arc<std::sync::Mutex<Vec<(String, LeaderGuard)>>>,
}

pub struct Recording {
    stop: oneshot::Sender<()>,
    task: JoinHandle<(u64, u64, Vec<String>)>,
}

impl Recorder {
    pub fn watch(&self, candidate: &Candidate) {
        self.guards
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((candidate.identity.clone(), candidate.guard.clone()));
    }

    pub fn start(&self) -> Recording {
        let guards = Arc::clone(&self.guards);
        let (stop, mut stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let (mut samples, mut violations, mut seen) = (0, 0, Vec::new());
            loop {
                let leaders: Vec<String> = guards
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .iter()
                    .filter(|(_, g)| g.is_leader())
                    .map(|(name, _)| name.clone())
                    .collect();
                samples += 1;
                if leaders.len() > 1 {
                    violations += 1;
                    seen.push(leaders.join("+"));
                }
                tokio::select! {
                    _ = &mut stopped => return (samples, violations, seen),
                    () = sleep(Duration::from_millis(5)) => {}
                }
            }
        });
        Recording { stop, task }
    }
}

impl Recording {
    /// Stops the recorder and asserts there was never more than one leader.
    pub async fn assert_single_leader(self) -> u64 {
        let _ = self.stop.send(());
        let (samples, violations, seen) = self.task.await.expect("recorder ran");
        assert_eq!(
            violations, 0,
            "two leaders at once in {violations} of {samples} samples: {seen:?}"
        );
        samples
    }
}
