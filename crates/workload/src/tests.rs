//! The scaler against the in-memory API: behaviour that needs faults or
//! virtual time. The same behaviour against the real API server is in
//! `tests/apiserver.rs`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::*;

const NAME: &str = "socket";

fn scaler(api: FakeWorkloadApi) -> WorkloadScaler<FakeWorkloadApi> {
    let config = ScalerConfig::with_default_bounds(NAME).expect("valid config");
    WorkloadScaler::new(api, config)
}

fn with(kind: WorkloadKind, replicas: u32) -> WorkloadScaler<FakeWorkloadApi> {
    let api = FakeWorkloadApi::new("rtc");
    api.put_workload(kind, NAME, replicas);
    scaler(api)
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

fn replicas(scaler: &WorkloadScaler<FakeWorkloadApi>, kind: WorkloadKind) -> Option<u32> {
    scaler.api().workload(kind, NAME).map(|w| w.spec_replicas)
}

#[tokio::test]
async fn detects_each_kind_and_refuses_neither_or_both() {
    for kind in WorkloadKind::ALL {
        assert_eq!(with(kind, 3).detect().await, Ok(kind));
    }

    let neither = scaler(FakeWorkloadApi::new("rtc"));
    let error = neither.detect().await.expect_err("nothing to find");
    assert_eq!(error.label(), "not_found");
    assert!(error.to_string().contains("\"socket\""), "{error}");
    assert!(error.to_string().contains("\"rtc\""), "{error}");

    let both = with(WorkloadKind::Deployment, 3);
    both.api().put_workload(WorkloadKind::StatefulSet, NAME, 3);
    let error = both.detect().await.expect_err("ambiguous");
    assert_eq!(error.label(), "ambiguous");
}

#[tokio::test]
async fn scales_up_and_down_and_reports_unchanged() {
    for kind in WorkloadKind::ALL {
        let scaler = with(kind, 5);
        let read = scaler.current().await.expect("read");
        let outcome = scaler.scale_to(&read, 8, "test", &AlwaysValid).await;
        assert!(
            matches!(
                outcome,
                Ok(ScaleOutcome::Scaled {
                    from: 5,
                    to: 8,
                    clamped: None,
                    ..
                })
            ),
            "{outcome:?}"
        );
        assert_eq!(replicas(&scaler, kind), Some(8));

        let read = scaler.current().await.expect("read");
        let outcome = scaler.scale_to(&read, 7, "test", &FixedToken(4)).await;
        assert!(
            matches!(
                outcome,
                Ok(ScaleOutcome::Scaled {
                    from: 8,
                    to: 7,
                    token: 4,
                    ..
                })
            ),
            "{outcome:?}"
        );

        let read = scaler.current().await.expect("read");
        let outcome = scaler.scale_to(&read, 7, "test", &AlwaysValid).await;
        assert!(matches!(
            outcome,
            Ok(ScaleOutcome::Unchanged { replicas: 7, .. })
        ));
        assert_eq!(scaler.api().calls(Method::ReplaceScale), 2);
    }
}

#[tokio::test]
async fn clamps_at_both_bounds() {
    let scaler = with(WorkloadKind::Deployment, 5);
    let read = scaler.current().await.expect("read");
    let outcome = scaler.scale_to(&read, 500, "test", &AlwaysValid).await;
    let Ok(ScaleOutcome::Scaled {
        to: 50,
        clamped: Some(clamped),
        ..
    }) = outcome
    else {
        panic!("expected a clamp to 50, got {outcome:?}");
    };
    assert_eq!((clamped.bound, clamped.requested), (Bound::Max, 500));

    let read = scaler.current().await.expect("read");
    let outcome = scaler.scale_to(&read, 0, "test", &AlwaysValid).await;
    assert!(
        matches!(
            outcome,
            Ok(ScaleOutcome::Scaled {
                to: 2,
                clamped: Some(Clamped {
                    bound: Bound::Min,
                    ..
                }),
                ..
            })
        ),
        "{outcome:?}"
    );

    let read = scaler.current().await.expect("read");
    let outcome = scaler.scale_to(&read, 1, "test", &AlwaysValid).await;
    assert!(
        matches!(
            outcome,
            Ok(ScaleOutcome::Unchanged {
                replicas: 2,
                clamped: Some(_),
                ..
            })
        ),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn a_concurrent_writer_makes_a_conflict_not_an_overwrite() {
    let scaler = with(WorkloadKind::StatefulSet, 5);
    let read = scaler.current().await.expect("read");
    scaler
        .api()
        .set_replicas(WorkloadKind::StatefulSet, NAME, 9);

    let outcome = scaler.scale_to(&read, 6, "test", &AlwaysValid).await;
    assert_eq!(
        outcome,
        Ok(ScaleOutcome::Conflict {
            kind: WorkloadKind::StatefulSet,
            from: 5,
            to: 6
        })
    );
    assert_eq!(replicas(&scaler, WorkloadKind::StatefulSet), Some(9));
    assert_eq!(
        scaler.api().calls(Method::ReplaceScale),
        1,
        "409 is never retried"
    );
}

#[tokio::test(start_paused = true)]
async fn timeouts_and_server_errors_are_retried_with_backoff() {
    let scaler = with(WorkloadKind::Deployment, 5);
    let read = scaler.current().await.expect("read");
    let api = scaler.api();
    api.inject(Method::ReplaceScale, Fault::Hang);
    api.inject(Method::ReplaceScale, Fault::status(500));
    api.inject(Method::ReplaceScale, Fault::status(503));

    let started = tokio::time::Instant::now();
    let outcome = scaler.scale_to(&read, 6, "test", &AlwaysValid).await;
    assert!(
        matches!(outcome, Ok(ScaleOutcome::Scaled { to: 6, .. })),
        "{outcome:?}"
    );
    assert_eq!(api.calls(Method::ReplaceScale), 4);

    let policy = RetryPolicy::default();
    let expected =
        policy.request_timeout + (1..=3).map(|n| policy.backoff.delay(n)).sum::<Duration>();
    assert_eq!(started.elapsed(), expected);
}

#[tokio::test(start_paused = true)]
async fn retries_stop_at_the_bound() {
    let scaler = with(WorkloadKind::Deployment, 5);
    let read = scaler.current().await.expect("read");
    let policy = scaler.config().retry;
    for _ in 0..10 {
        scaler
            .api()
            .inject(Method::ReplaceScale, Fault::status(500));
    }
    let started = tokio::time::Instant::now();
    let error = scaler
        .scale_to(&read, 6, "test", &AlwaysValid)
        .await
        .expect_err("server keeps failing");
    assert!(
        matches!(error, ScaleError::Unavailable { attempts, .. } if attempts == policy.max_attempts),
        "{error:?}"
    );
    assert_eq!(
        scaler.api().calls(Method::ReplaceScale),
        policy.max_attempts as usize
    );
    let waited: Duration = (1..policy.max_attempts)
        .map(|n| policy.backoff.delay(n))
        .sum();
    assert_eq!(started.elapsed(), waited);
    assert_eq!(replicas(&scaler, WorkloadKind::Deployment), Some(5));
}

#[tokio::test(start_paused = true)]
async fn forbidden_is_reported_once_with_the_missing_permission() {
    let api = FakeWorkloadApi::new("rtc");
    api.put_workload(WorkloadKind::StatefulSet, NAME, 3);
    api.inject(Method::GetWorkload, Fault::status(403));
    let scaler = scaler(api);
    let error = scaler.detect().await.expect_err("forbidden");
    let ScaleError::Forbidden { operation, .. } = &error else {
        panic!("expected forbidden, got {error:?}");
    };
    assert_eq!(*operation, Operation::GetWorkload(WorkloadKind::Deployment));
    let message = error.to_string();
    assert!(
        message.contains("\"get\"") && message.contains("\"deployments\""),
        "{message}"
    );
    assert_eq!(
        scaler.api().calls(Method::GetWorkload),
        1,
        "403 is not retried"
    );

    let read = scaler.current().await.expect("read once allowed");
    scaler
        .api()
        .inject(Method::ReplaceScale, Fault::status(403));
    let error = scaler
        .scale_to(&read, 4, "test", &AlwaysValid)
        .await
        .expect_err("forbidden");
    assert!(
        error
            .to_string()
            .contains("\"update\" on resource \"statefulsets/scale\""),
        "{error}"
    );
    assert_eq!(scaler.api().calls(Method::ReplaceScale), 1);
}

/// Allows `allowed` checks, then refuses.
struct Expiring(AtomicU32);

impl Fence for Expiring {
    fn check(&self) -> Result<Permit, FenceError> {
        let left = self.0.load(Ordering::SeqCst);
        if left == 0 {
            return Err(FenceError::new("lease lost"));
        }
        self.0.store(left - 1, Ordering::SeqCst);
        Ok(Permit::unbounded(u64::from(left)))
    }
}

#[tokio::test(start_paused = true)]
async fn the_fence_is_checked_before_every_write_and_retry() {
    let scaler = with(WorkloadKind::Deployment, 5);
    let read = scaler.current().await.expect("read");
    let error = scaler
        .scale_to(&read, 6, "test", &Expiring(AtomicU32::new(0)))
        .await
        .expect_err("fenced");
    assert_eq!(error.label(), "fenced");
    assert_eq!(scaler.api().calls(Method::ReplaceScale), 0);

    scaler
        .api()
        .inject(Method::ReplaceScale, Fault::status(500));
    let error = scaler
        .scale_to(&read, 6, "test", &Expiring(AtomicU32::new(1)))
        .await
        .expect_err("fenced on retry");
    assert_eq!(error.label(), "fenced");
    assert_eq!(scaler.api().calls(Method::ReplaceScale), 1);
    assert_eq!(replicas(&scaler, WorkloadKind::Deployment), Some(5));
}

#[tokio::test]
async fn deployment_scale_in_gives_the_victim_the_lowest_cost() {
    let scaler = with(WorkloadKind::Deployment, 3);
    let api = scaler.api();
    for name in ["socket-a", "socket-b", "socket-c"] {
        api.put_pod(pod(name));
    }
    let mut already = pod("socket-c");
    already.deletion_cost = Some("70".to_owned());
    api.put_pod(already);
    let loads = BTreeMap::from([
        ("socket-a".to_owned(), 40),
        ("socket-b".to_owned(), 3),
        ("socket-c".to_owned(), 70),
    ]);
    let read = scaler.current().await.expect("read");
    let plan = scaler
        .prepare_scale_in(&read, "socket-b", &loads, &AlwaysValid)
        .await
        .expect("plan");
    assert_eq!(plan.victim, "socket-b");
    assert_eq!(plan.overridden, None);
    assert_eq!(plan.patched, 2, "socket-c already had the right cost");
    assert_eq!(api.calls(Method::PatchPod), 2);
    let cost = |name: &str| api.pod(name).and_then(|p| p.deletion_cost);
    assert_eq!(cost("socket-b").as_deref(), Some("-1"));
    assert_eq!(cost("socket-a").as_deref(), Some("40"));

    let outcome = scaler.scale_to(&read, 2, "low-load", &AlwaysValid).await;
    assert!(
        matches!(outcome, Ok(ScaleOutcome::Scaled { to: 2, .. })),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn a_not_ready_pod_goes_first_whatever_the_costs() {
    let scaler = with(WorkloadKind::Deployment, 2);
    let mut starting = pod("socket-b");
    starting.ready = false;
    scaler.api().put_pod(pod("socket-a"));
    scaler.api().put_pod(starting);
    let read = scaler.current().await.expect("read");
    let plan = scaler
        .prepare_scale_in(&read, "socket-a", &BTreeMap::new(), &AlwaysValid)
        .await
        .expect("plan");
    assert_eq!(plan.victim, "socket-b");
    assert_eq!(plan.overridden, Some(Override::NotReady));

    let error = scaler
        .prepare_scale_in(&read, "socket-x", &BTreeMap::new(), &AlwaysValid)
        .await
        .expect_err("unknown pod");
    assert_eq!(error.label(), "unknown_victim");
}

#[tokio::test]
async fn stateful_set_scale_in_names_the_top_ordinal_and_patches_nothing() {
    let scaler = with(WorkloadKind::StatefulSet, 4);
    for i in 0..4 {
        scaler.api().put_pod(pod(&format!("socket-{i}")));
    }
    let read = scaler.current().await.expect("read");
    let plan = scaler
        .prepare_scale_in(&read, "socket-1", &BTreeMap::new(), &AlwaysValid)
        .await
        .expect("plan");
    assert_eq!(plan.victim, "socket-3");
    assert_eq!(plan.overridden, Some(Override::TopOrdinal));
    assert_eq!(scaler.api().calls(Method::PatchPod), 0);
    assert_eq!(scaler.api().calls(Method::ListPods), 0);
}

#[tokio::test]
async fn a_deleted_workload_is_a_clear_error_and_is_found_again() {
    let scaler = with(WorkloadKind::Deployment, 3);
    let read = scaler.current().await.expect("read");

    scaler.api().delete_workload(WorkloadKind::Deployment, NAME);
    let error = scaler
        .scale_to(&read, 4, "test", &AlwaysValid)
        .await
        .expect_err("gone");
    assert_eq!(error.label(), "gone");
    assert_eq!(
        scaler.current().await.map_err(|e| e.label()),
        Err("not_found")
    );

    // Back as the other kind: detected again without a restart.
    scaler
        .api()
        .put_workload(WorkloadKind::StatefulSet, NAME, 2);
    let read = scaler.current().await.expect("found again");
    assert_eq!(read.kind, WorkloadKind::StatefulSet);
    let outcome = scaler.scale_to(&read, 3, "test", &AlwaysValid).await;
    assert!(
        matches!(outcome, Ok(ScaleOutcome::Scaled { to: 3, .. })),
        "{outcome:?}"
    );
}

#[test]
fn the_real_scalers_futures_can_be_spawned() {
    fn is_send<T: Send>(_: &T) {}
    fn check(scaler: &WorkloadScaler<KubeWorkloadApi>, read: &WorkloadState) {
        is_send(&scaler.current());
        is_send(&scaler.detect());
        is_send(&scaler.scale_to(read, 3, "x", &AlwaysValid));
        is_send(&scaler.prepare_scale_in(read, "p", &BTreeMap::new(), &AlwaysValid));
    }
    let _ = check;
}

/// Grants `remaining` on every check.
struct TimeLeft(Duration);

impl Fence for TimeLeft {
    fn check(&self) -> Result<Permit, FenceError> {
        Ok(Permit {
            token: 1,
            remaining: self.0,
        })
    }
}

#[tokio::test(start_paused = true)]
async fn each_attempt_ends_within_the_time_the_fence_has_left() {
    let scaler = with(WorkloadKind::Deployment, 5);
    let read = scaler.current().await.expect("read");
    let policy = scaler.config().retry;
    for _ in 0..policy.max_attempts {
        scaler.api().inject(Method::ReplaceScale, Fault::Hang);
    }
    let left = Duration::from_millis(300);
    let started = tokio::time::Instant::now();
    let error = scaler
        .scale_to(&read, 6, "test", &TimeLeft(left))
        .await
        .expect_err("every attempt hangs");
    assert_eq!(error.label(), "unavailable", "{error}");
    // Each attempt is cut off at the fence's 300 ms, not the 10 s request
    // timeout; the waits between attempts are the backoff's.
    let backoffs: Duration = (1..policy.max_attempts)
        .map(|n| policy.backoff.delay(n))
        .sum();
    assert_eq!(
        started.elapsed(),
        left * policy.max_attempts + backoffs,
        "virtual time"
    );
}

#[tokio::test(start_paused = true)]
async fn a_write_that_landed_without_its_answer_is_recorded_as_scaled() {
    for first in [
        Fault::LandThenFail(ApiError::Timeout(Duration::from_secs(10))),
        Fault::LandThenFail(ApiError::from_status(503, "answer lost")),
    ] {
        let scaler = with(WorkloadKind::Deployment, 3);
        let read = scaler.current().await.expect("read");
        // The write lands, its answer is lost, and the retry meets 409
        // because the first attempt moved the resourceVersion.
        scaler.api().inject(Method::ReplaceScale, first);
        let outcome = scaler.scale_to(&read, 6, "test", &FixedToken(4)).await;
        assert!(
            matches!(
                outcome,
                Ok(ScaleOutcome::Scaled {
                    from: 3,
                    to: 6,
                    token: 4,
                    ..
                })
            ),
            "{outcome:?}"
        );
        assert_eq!(replicas(&scaler, WorkloadKind::Deployment), Some(6));
    }

    // A real conflict (someone else wrote another count) stays a conflict.
    let scaler = with(WorkloadKind::Deployment, 3);
    let read = scaler.current().await.expect("read");
    scaler.api().set_replicas(WorkloadKind::Deployment, NAME, 4);
    let outcome = scaler.scale_to(&read, 6, "test", &FixedToken(4)).await;
    assert!(
        matches!(outcome, Ok(ScaleOutcome::Conflict { .. })),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn a_claim_makes_every_write_an_earlier_leader_prepared_fail() {
    for kind in WorkloadKind::ALL {
        let scaler = with(kind, 3);
        let before_claim = scaler.current().await.expect("read");

        let claimed = scaler.claim(&FixedToken(2)).await.expect("claim");
        assert_eq!(claimed.fencing_token, Some(2));
        assert_ne!(claimed.resource_version, before_claim.resource_version);
        assert_eq!(scaler.api().calls(Method::AnnotateWorkload), 1);
        // Claiming the same token again writes nothing.
        scaler.claim(&FixedToken(2)).await.expect("claim again");
        assert_eq!(scaler.api().calls(Method::AnnotateWorkload), 1);

        // The earlier leader's write, prepared against the old version,
        // arrives late: 409, nothing written.
        let late = scaler
            .scale_to(&before_claim, 6, "late", &FixedToken(1))
            .await;
        assert!(
            matches!(late, Ok(ScaleOutcome::Conflict { .. })),
            "{late:?}"
        );
        assert_eq!(replicas(&scaler, kind), Some(3));

        // An older token can neither claim nor write over a newer claim.
        let error = scaler.claim(&FixedToken(1)).await.expect_err("older claim");
        assert_eq!(error.label(), "fenced", "{error}");
        let fresh = scaler.current().await.expect("read");
        let error = scaler
            .scale_to(&fresh, 6, "stale leader", &FixedToken(1))
            .await
            .expect_err("older token");
        assert_eq!(error.label(), "fenced", "{error}");

        // The claimant itself writes.
        let outcome = scaler.scale_to(&fresh, 6, "leader", &FixedToken(2)).await;
        assert!(
            matches!(outcome, Ok(ScaleOutcome::Scaled { to: 6, .. })),
            "{outcome:?}"
        );
    }
}

#[tokio::test]
async fn a_deletion_cost_patch_on_a_pod_that_changed_is_retried_on_a_fresh_list() {
    let scaler = with(WorkloadKind::Deployment, 2);
    let api = scaler.api();
    for name in ["socket-a", "socket-b"] {
        api.put_pod(pod(name));
    }
    let read = scaler.current().await.expect("read");
    let loads = BTreeMap::from([("socket-a".to_owned(), 5), ("socket-b".to_owned(), 9)]);
    // The first patch finds the pod changed since it was listed.
    api.inject(
        Method::PatchPod,
        Fault::Fail(ApiError::Conflict("pod changed".to_owned())),
    );
    let plan = scaler
        .prepare_scale_in(&read, "socket-a", &loads, &AlwaysValid)
        .await
        .expect("plan");
    assert_eq!(plan.victim, "socket-a");
    assert_eq!(
        api.calls(Method::PatchPod),
        3,
        "one refused, then both written"
    );
    let cost = |name: &str| api.pod(name).and_then(|p| p.deletion_cost);
    assert_eq!(cost("socket-a").as_deref(), Some("-1"));
    assert_eq!(cost("socket-b").as_deref(), Some("9"));
}
