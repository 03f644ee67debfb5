//! The election against the local stack's real Kubernetes API server.
//!
//! Timings: lease 3 s, renew deadline 2 s, retry period 0.5 s. Every test
//! has its own namespace, so they run in parallel.

mod common;

use std::time::{Duration, SystemTime};

use common::{Candidate, LEASE, RETRY, Recorder, leader_among};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Patch, PatchParams};
use rtc_leader::{
    KubeLeaseStore, LeaseRecord, LeaseStore, SkewedClock, StoreError, SystemClock, WallClock,
};
use tokio::time::{Instant, sleep};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Candidates race on one Lease for several rounds; each round the leader
/// leaves (gracefully or by crashing) and comes back as a new process.
async fn race(names: &[&str], rounds: usize) -> TestResult {
    let ns = rtc_testkit::kubernetes().await?;
    let lease = "race";
    let recorder = Recorder::default();
    let mut running: Vec<Candidate> = names
        .iter()
        .map(|n| Candidate::start(ns.client(), ns.name(), lease, n))
        .collect();
    running.iter().for_each(|c| recorder.watch(c));
    let recording = recorder.start();
    let mut tokens = Vec::new();
    for round in 0..rounds {
        let guards: Vec<_> = running.iter().map(|c| c.guard.clone()).collect();
        let Some(i) = leader_among(&guards, LEASE * 3).await else {
            panic!("round {round}: no leader");
        };
        tokens.push(running[i].guard.check(Duration::ZERO).map(|f| f.token)?);
        sleep(RETRY * 2).await;
        let leaving = running.remove(i);
        let name = leaving.identity.clone();
        if round % 2 == 0 {
            leaving.shut_down().await;
        } else {
            leaving.crash().await;
        }
        let next = Candidate::start(ns.client(), ns.name(), lease, &name);
        recorder.watch(&next);
        running.insert(i, next);
    }
    let samples = recording.assert_single_leader().await;
    assert!(samples > 100, "only {samples} samples");
    // Every leadership had a greater token than the one before.
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "tokens {tokens:?}");
    for c in running {
        c.shut_down().await;
    }
    ns.cleanup().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_candidates_never_lead_at_once() -> TestResult {
    race(&["lb-0", "lb-1"], 6).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_candidates_never_lead_at_once() -> TestResult {
    race(&["lb-0", "lb-1", "lb-2"], 6).await
}

/// Starts `a`, waits until it leads, then starts `b` and lets it observe.
async fn leader_and_follower(
    ns: &rtc_testkit::TestNamespace,
    lease: &str,
) -> Result<(Candidate, Candidate), Box<dyn std::error::Error>> {
    let a = Candidate::start(ns.client(), ns.name(), lease, "lb-a");
    assert_eq!(
        leader_among(std::slice::from_ref(&a.guard), LEASE).await,
        Some(0)
    );
    let b = Candidate::start(ns.client(), ns.name(), lease, "lb-b");
    sleep(LEASE).await;
    assert!(a.guard.is_leader() && !b.guard.is_leader());
    Ok((a, b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_crash_the_follower_takes_over_once_the_lease_expires() -> TestResult {
    let ns = rtc_testkit::kubernetes().await?;
    let (a, b) = leader_and_follower(&ns, "crash").await?;
    let recorder = Recorder::default();
    recorder.watch(&a);
    recorder.watch(&b);
    let recording = recorder.start();
    let crashed = Instant::now();
    a.crash().await;
    assert_eq!(
        leader_among(std::slice::from_ref(&b.guard), LEASE * 3).await,
        Some(0)
    );
    let failover = crashed.elapsed();
    eprintln!("failover after a crash: {failover:?} (lease 3 s, renew deadline 2 s, retry 0.5 s)");
    // The follower counts from when it last saw a renewal, at most one
    // retry period (and a request) before the crash.
    let earliest = LEASE - RETRY - Duration::from_millis(100);
    assert!(
        failover >= earliest,
        "took over after {failover:?}, before the lease expired"
    );
    recording.assert_single_leader().await;
    b.shut_down().await;
    ns.cleanup().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_release_hands_over_within_one_retry_period() -> TestResult {
    let ns = rtc_testkit::kubernetes().await?;
    let (a, b) = leader_and_follower(&ns, "release").await?;
    let released = Instant::now();
    a.shut_down().await;
    let stepped_down = released.elapsed();
    assert_eq!(
        leader_among(std::slice::from_ref(&b.guard), LEASE * 2).await,
        Some(0)
    );
    let handover = released.elapsed();
    eprintln!(
        "handover after a graceful release: {handover:?} ({stepped_down:?} of it to release; lease 3 s, renew deadline 2 s, retry 0.5 s)"
    );
    // One retry period, plus the requests of the release and the takeover.
    assert!(
        handover < RETRY + Duration::from_millis(400),
        "handover took {handover:?}"
    );
    b.shut_down().await;
    ns.cleanup().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_resource_version_is_refused() -> TestResult {
    let ns = rtc_testkit::kubernetes().await?;
    let store = KubeLeaseStore::new(ns.client().clone(), ns.name(), "cas");
    let record = |holder: &str| LeaseRecord {
        holder: Some(holder.to_owned()),
        lease_duration: LEASE,
        acquire_time: Some(SystemClock.now()),
        renew_time: Some(SystemClock.now()),
        transitions: 0,
    };
    assert_eq!(store.get().await?, None);
    let first = store.create(&record("a")).await?;
    assert!(matches!(
        store.create(&record("b")).await,
        Err(StoreError::Conflict)
    ));
    let second = store.replace(&record("a"), &first.version).await?;
    assert_ne!(first.version, second.version);
    assert!(matches!(
        store.replace(&record("b"), &first.version).await,
        Err(StoreError::Conflict)
    ));
    let read = store.get().await?.map(|l| l.record.holder);
    assert_eq!(read, Some(Some("a".to_owned())));
    // A release clears the holder.
    let released = LeaseRecord {
        holder: None,
        ..record("a")
    };
    let third = store.replace(&released, &second.version).await?;
    assert_eq!(third.record.holder, None);
    assert_eq!(store.get().await?.map(|l| l.record.holder), Some(None));
    ns.cleanup().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_lease_was_changed_rereads_and_overwrites_nothing() -> TestResult {
    let ns = rtc_testkit::kubernetes().await?;
    let a = Candidate::start(ns.client(), ns.name(), "edited", "lb-a");
    assert_eq!(
        leader_among(std::slice::from_ref(&a.guard), LEASE).await,
        Some(0)
    );
    let token = a.guard.check(Duration::ZERO)?.token;
    // Someone else writes the Lease: every renewal after this read carries
    // a stale resourceVersion until the leader re-reads.
    let leases = ns.api::<Lease>();
    let patch =
        serde_json::json!({ "metadata": { "annotations": { "example.com/owner": "ops" } } });
    leases
        .patch("edited", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    for _ in 0..4 {
        sleep(RETRY).await;
        assert_eq!(a.guard.check(Duration::ZERO).map(|f| f.token), Ok(token));
    }
    let lease = leases.get("edited").await?;
    let annotation = lease
        .metadata
        .annotations
        .and_then(|a| a.get("example.com/owner").cloned());
    assert_eq!(annotation.as_deref(), Some("ops"));
    let renewed = lease.spec.and_then(|s| s.holder_identity);
    assert_eq!(renewed.as_deref(), Some("lb-a"));
    a.shut_down().await;
    ns.cleanup().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skewed_clocks_do_not_make_two_leaders() -> TestResult {
    const HOUR: Duration = Duration::from_secs(3_600);
    let ns = rtc_testkit::kubernetes().await?;
    let lease = "skew";
    let start = |name: &str| -> Candidate {
        match name {
            "ahead" => Candidate::start_with_clock(
                ns.client(),
                ns.name(),
                lease,
                name,
                SkewedClock::ahead(HOUR),
            ),
            "behind" => Candidate::start_with_clock(
                ns.client(),
                ns.name(),
                lease,
                name,
                SkewedClock::behind(HOUR),
            ),
            _ => Candidate::start(ns.client(), ns.name(), lease, name),
        }
    };
    let recorder = Recorder::default();
    let mut running: Vec<Candidate> = ["behind", "true", "ahead"]
        .iter()
        .map(|n| start(n))
        .collect();
    running.iter().for_each(|c| recorder.watch(c));
    let recording = recorder.start();
    let leases = ns.api::<Lease>();
    let mut naive_would_take_over = 0;
    for round in 0..4 {
        let guards: Vec<_> = running.iter().map(|c| c.guard.clone()).collect();
        let Some(i) = leader_among(&guards, LEASE * 3).await else {
            panic!("round {round}: no leader");
        };
        sleep(RETRY * 3).await;
        // Judged by another candidate's wall clock, the renewTime of a
        // skewed leader is an hour off: a wall-clock comparison would call
        // a live Lease expired (or a dead one fresh).
        if let Some(renewed) = leases.get(lease).await?.spec.and_then(|s| s.renew_time) {
            let renewed = SystemTime::from(renewed.0);
            let gap = SystemClock
                .now()
                .duration_since(renewed)
                .unwrap_or_default();
            if gap > LEASE {
                naive_would_take_over += 1;
            }
        }
        let leaving = running.remove(i);
        let name = leaving.identity.clone();
        leaving.crash().await;
        let next = start(&name);
        recorder.watch(&next);
        running.insert(i, next);
    }
    recording.assert_single_leader().await;
    eprintln!(
        "rounds whose live lease a wall-clock check would have taken over: {naive_would_take_over}"
    );
    for c in running {
        c.shut_down().await;
    }
    ns.cleanup().await?;
    Ok(())
}

/// A Lease deleted and created again does not start its tokens over: the
/// decision state and the workload's claim refuse tokens below the highest
/// seen, so a reset would shut every later leader out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_created_again_gives_a_greater_token() -> TestResult {
    let ns = rtc_testkit::kubernetes().await?;
    let a = Candidate::start(ns.client(), ns.name(), "recreated", "lb-a");
    assert_eq!(
        leader_among(std::slice::from_ref(&a.guard), LEASE).await,
        Some(0)
    );
    let before = a.guard.check(Duration::ZERO)?.token;
    a.shut_down().await;
    ns.api::<Lease>()
        .delete("recreated", &kube::api::DeleteParams::default())
        .await?;
    // At least a second later, as any deletion and re-creation is.
    sleep(Duration::from_millis(1_100)).await;
    let b = Candidate::start(ns.client(), ns.name(), "recreated", "lb-b");
    assert_eq!(
        leader_among(std::slice::from_ref(&b.guard), LEASE).await,
        Some(0)
    );
    let after = b.guard.check(Duration::ZERO)?.token;
    assert!(after > before, "{after} <= {before}");
    b.shut_down().await;
    ns.cleanup().await?;
    Ok(())
}
