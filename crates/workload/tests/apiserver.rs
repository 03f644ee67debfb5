//! The scaler against the local stack's real Kubernetes API server: detection,
//! /scale writes with compare-and-swap, clamping, deletion cost, a
//! workload that disappears and comes back, and the server-side fencing of
//! a leader's claim.
//!
//! The workloads come from `rtc_testkit::fixtures`, which keep the real
//! controllers from making pods, so tests create pods in the exact states
//! they need, with the workload's labels. What the controllers do with real
//! pods is in `cluster.rs`.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use rtc_testkit::{TestNamespace, fixtures};
use rtc_workload::{
    AlwaysValid, ApiError, Bound, DELETION_COST_ANNOTATION, FENCING_TOKEN_ANNOTATION, FixedToken,
    KubeWorkloadApi, Override, ScaleError, ScaleOutcome, ScalerConfig, WorkloadApi, WorkloadKind,
    WorkloadScaler, WorkloadState,
};
use serde_json::json;

type Result<T = (), E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

const NAME: &str = "socket";
const OTHER_ANNOTATION: &str = "example.com/owner";

async fn create(namespace: &TestNamespace, kind: WorkloadKind, replicas: i32) -> Result {
    let params = PostParams::default();
    match kind {
        WorkloadKind::Deployment => {
            let deployment = fixtures::deployment(NAME, replicas);
            let api = namespace.api::<Deployment>();
            api.create(&params, &deployment).await?;
            fixtures::settled(&api, NAME).await?;
        }
        WorkloadKind::StatefulSet => {
            let stateful_set = fixtures::stateful_set(NAME, replicas);
            let api = namespace.api::<StatefulSet>();
            api.create(&params, &stateful_set).await?;
            fixtures::settled(&api, NAME).await?;
        }
    }
    Ok(())
}

async fn delete(namespace: &TestNamespace, kind: WorkloadKind) -> Result {
    let params = DeleteParams::default();
    match kind {
        WorkloadKind::Deployment => {
            namespace.api::<Deployment>().delete(NAME, &params).await?;
        }
        WorkloadKind::StatefulSet => {
            namespace.api::<StatefulSet>().delete(NAME, &params).await?;
        }
    }
    Ok(())
}

/// The scaler's read of the workload once its controller has observed the
/// latest spec: the controller's own status write would otherwise move the
/// resourceVersion between this read and the write the test makes with it.
async fn current(
    scaler: &WorkloadScaler<KubeWorkloadApi>,
    namespace: &TestNamespace,
) -> Result<WorkloadState> {
    let kind = scaler.current().await?.kind;
    match kind {
        WorkloadKind::Deployment => {
            fixtures::settled(&namespace.api::<Deployment>(), NAME).await?;
        }
        WorkloadKind::StatefulSet => {
            fixtures::settled(&namespace.api::<StatefulSet>(), NAME).await?;
        }
    }
    Ok(scaler.current().await?)
}

/// The parent's own spec.replicas, to see a /scale write land.
async fn spec_replicas(namespace: &TestNamespace, kind: WorkloadKind) -> Result<Option<i32>> {
    Ok(match kind {
        WorkloadKind::Deployment => namespace
            .api::<Deployment>()
            .get(NAME)
            .await?
            .spec
            .and_then(|s| s.replicas),
        WorkloadKind::StatefulSet => namespace
            .api::<StatefulSet>()
            .get(NAME)
            .await?
            .spec
            .and_then(|s| s.replicas),
    })
}

/// Creates a running, ready pod with the workload's labels and an
/// annotation of someone else's, standing in for a controller's pod.
async fn create_pod(pods: &Api<Pod>, name: &str) -> Result {
    let mut pod = fixtures::scheduled_pod(NAME, name);
    pod.metadata.annotations = Some(BTreeMap::from([(
        OTHER_ANNOTATION.to_owned(),
        "team-rtc".to_owned(),
    )]));
    fixtures::create_ready_pod(pods, &pod).await?;
    Ok(())
}

fn scaler(
    client: &Client,
    namespace: &TestNamespace,
    min: u32,
    max: u32,
) -> Result<WorkloadScaler<KubeWorkloadApi>> {
    let config = ScalerConfig::new(NAME, min, max)?;
    Ok(WorkloadScaler::new(
        KubeWorkloadApi::new(client.clone(), namespace.name()),
        config,
    ))
}

#[tokio::test]
async fn detects_each_kind_and_refuses_neither_or_both() -> Result {
    for kind in WorkloadKind::ALL {
        let namespace = rtc_testkit::kubernetes().await?;
        create(&namespace, kind, 2).await?;
        let scaler = scaler(namespace.client(), &namespace, 2, 50)?;
        assert_eq!(scaler.detect().await?, kind);
        namespace.cleanup().await?;
    }

    let namespace = rtc_testkit::kubernetes().await?;
    let scaler = scaler(namespace.client(), &namespace, 2, 50)?;
    let error = scaler.detect().await.expect_err("nothing there");
    assert!(matches!(error, ScaleError::NotFound { .. }), "{error:?}");
    assert!(error.to_string().contains(namespace.name()), "{error}");

    create(&namespace, WorkloadKind::Deployment, 2).await?;
    create(&namespace, WorkloadKind::StatefulSet, 2).await?;
    let error = scaler.detect().await.expect_err("both there");
    assert!(matches!(error, ScaleError::Ambiguous { .. }), "{error:?}");
    namespace.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn scales_up_and_down_through_the_scale_subresource() -> Result {
    for kind in WorkloadKind::ALL {
        let namespace = rtc_testkit::kubernetes().await?;
        create(&namespace, kind, 5).await?;
        let scaler = scaler(namespace.client(), &namespace, 2, 50)?;

        let read = current(&scaler, &namespace).await?;
        assert_eq!(
            (read.kind, read.spec_replicas, read.ready_replicas),
            (kind, 5, 0)
        );
        assert!(!read.resource_version.is_empty());
        let outcome = scaler
            .scale_to(
                &read,
                8,
                "resource-overload (urgency=3, adding 3 nodes)",
                &AlwaysValid,
            )
            .await?;
        assert!(
            matches!(outcome, ScaleOutcome::Scaled { from: 5, to: 8, .. }),
            "{outcome:?}"
        );
        assert_eq!(spec_replicas(&namespace, kind).await?, Some(8));

        let read = current(&scaler, &namespace).await?;
        assert_eq!(read.spec_replicas, 8);
        let outcome = scaler.scale_to(&read, 7, "low-load", &AlwaysValid).await?;
        assert!(
            matches!(outcome, ScaleOutcome::Scaled { from: 8, to: 7, .. }),
            "{outcome:?}"
        );
        assert_eq!(spec_replicas(&namespace, kind).await?, Some(7));
        namespace.cleanup().await?;
    }
    Ok(())
}

#[tokio::test]
async fn clamps_at_both_bounds() -> Result {
    let namespace = rtc_testkit::kubernetes().await?;
    create(&namespace, WorkloadKind::StatefulSet, 4).await?;
    let scaler = scaler(namespace.client(), &namespace, 3, 6)?;

    let read = current(&scaler, &namespace).await?;
    let outcome = scaler.scale_to(&read, 20, "test", &AlwaysValid).await?;
    let ScaleOutcome::Scaled {
        to: 6,
        clamped: Some(clamped),
        ..
    } = outcome
    else {
        panic!("expected a clamp to 6, got {outcome:?}");
    };
    assert_eq!(clamped.bound, Bound::Max);
    assert_eq!(
        spec_replicas(&namespace, WorkloadKind::StatefulSet).await?,
        Some(6)
    );

    let read = current(&scaler, &namespace).await?;
    let outcome = scaler.scale_to(&read, 1, "test", &AlwaysValid).await?;
    let ScaleOutcome::Scaled {
        to: 3,
        clamped: Some(clamped),
        ..
    } = outcome
    else {
        panic!("expected a clamp to 3, got {outcome:?}");
    };
    assert_eq!(clamped.bound, Bound::Min);
    assert_eq!(
        spec_replicas(&namespace, WorkloadKind::StatefulSet).await?,
        Some(3)
    );
    namespace.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn a_concurrent_writer_makes_a_conflict_not_an_overwrite() -> Result {
    for kind in WorkloadKind::ALL {
        let namespace = rtc_testkit::kubernetes().await?;
        create(&namespace, kind, 5).await?;
        let scaler = scaler(namespace.client(), &namespace, 2, 50)?;
        let read = current(&scaler, &namespace).await?;

        // Another writer (an operator, KEDA) changes replicas in between.
        let patch = Patch::Merge(json!({ "spec": { "replicas": 9 } }));
        match kind {
            WorkloadKind::Deployment => {
                let api = namespace.api::<Deployment>();
                api.patch_scale(NAME, &PatchParams::default(), &patch)
                    .await?;
            }
            WorkloadKind::StatefulSet => {
                let api = namespace.api::<StatefulSet>();
                api.patch_scale(NAME, &PatchParams::default(), &patch)
                    .await?;
            }
        }

        let outcome = scaler.scale_to(&read, 6, "test", &AlwaysValid).await?;
        assert_eq!(
            outcome,
            ScaleOutcome::Conflict {
                kind,
                from: 5,
                to: 6
            }
        );
        assert_eq!(spec_replicas(&namespace, kind).await?, Some(9));

        // Re-read and decide again: now the write goes through. The
        // controller may still be writing the workload's status after the
        // other writer's change (a StatefulSet's once per pod it creates),
        // and each such write moves the resourceVersion; a write that meets
        // one is a conflict too, leaves the other writer's 9 in place, and
        // the next re-read sees the newer version, as the leader's next tick
        // does.
        let mut attempts = 0;
        let outcome = loop {
            attempts += 1;
            let read = current(&scaler, &namespace).await?;
            assert_eq!(read.spec_replicas, 9);
            let outcome = scaler.scale_to(&read, 10, "test", &AlwaysValid).await?;
            let conflict = ScaleOutcome::Conflict {
                kind,
                from: 9,
                to: 10,
            };
            if outcome != conflict || attempts == 5 {
                break outcome;
            }
            assert_eq!(spec_replicas(&namespace, kind).await?, Some(9));
        };
        assert!(
            matches!(
                outcome,
                ScaleOutcome::Scaled {
                    from: 9,
                    to: 10,
                    ..
                }
            ),
            "{kind:?} after {attempts} re-reads: {outcome:?}"
        );
        assert_eq!(spec_replicas(&namespace, kind).await?, Some(10));
        namespace.cleanup().await?;
    }
    Ok(())
}

#[tokio::test]
async fn deployment_pods_get_deletion_costs_with_the_victim_lowest() -> Result {
    let namespace = rtc_testkit::kubernetes().await?;
    create(&namespace, WorkloadKind::Deployment, 3).await?;
    let pods = namespace.api::<Pod>();
    let names = ["socket-7d9f-a", "socket-7d9f-b", "socket-7d9f-c"];
    for name in names {
        create_pod(&pods, name).await?;
    }
    let scaler = scaler(namespace.client(), &namespace, 2, 50)?;
    let read = current(&scaler, &namespace).await?;
    let loads = BTreeMap::from([
        (names[0].to_owned(), 120),
        (names[1].to_owned(), 4),
        (names[2].to_owned(), 75),
    ]);

    let plan = scaler
        .prepare_scale_in(&read, names[1], &loads, &AlwaysValid)
        .await?;
    assert_eq!((plan.victim.as_str(), plan.overridden), (names[1], None));
    assert_eq!(plan.patched, 3);

    let mut costs = BTreeMap::new();
    for name in names {
        let annotations = pods
            .get(name)
            .await?
            .metadata
            .annotations
            .unwrap_or_default();
        assert_eq!(
            annotations.get(OTHER_ANNOTATION).map(String::as_str),
            Some("team-rtc"),
            "other annotations on {name} are left intact"
        );
        let cost: i32 = annotations
            .get(DELETION_COST_ANNOTATION)
            .ok_or("no deletion cost")?
            .parse()?;
        costs.insert(name, cost);
    }
    assert_eq!(costs[names[0]], 120);
    assert_eq!(costs[names[2]], 75);
    let lowest = costs.iter().min_by_key(|(_, c)| **c).map(|(n, _)| *n);
    assert_eq!(lowest, Some(names[1]));

    // Writing again changes nothing that is already right.
    let again = scaler
        .prepare_scale_in(&read, names[1], &loads, &AlwaysValid)
        .await?;
    assert_eq!(again.patched, 0);

    let outcome = scaler.scale_to(&read, 2, "low-load", &AlwaysValid).await?;
    assert!(
        matches!(outcome, ScaleOutcome::Scaled { from: 3, to: 2, .. }),
        "{outcome:?}"
    );
    assert_eq!(
        spec_replicas(&namespace, WorkloadKind::Deployment).await?,
        Some(2)
    );
    namespace.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn stateful_set_pods_are_not_annotated_and_the_top_ordinal_is_named() -> Result {
    let namespace = rtc_testkit::kubernetes().await?;
    create(&namespace, WorkloadKind::StatefulSet, 3).await?;
    let pods = namespace.api::<Pod>();
    // The StatefulSet controller's own pods, with someone else's annotation.
    let mark = Patch::Merge(json!({"metadata": {"annotations": {OTHER_ANNOTATION: "team-rtc"}}}));
    for ordinal in 0..3 {
        let name = format!("{NAME}-{ordinal}");
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while pods.get_opt(&name).await?.is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} never created"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        pods.patch(&name, &PatchParams::default(), &mark).await?;
    }
    let scaler = scaler(namespace.client(), &namespace, 2, 50)?;
    let read = current(&scaler, &namespace).await?;
    let loads = BTreeMap::from([("socket-0".to_owned(), 1), ("socket-2".to_owned(), 900)]);

    let plan = scaler
        .prepare_scale_in(&read, "socket-0", &loads, &AlwaysValid)
        .await?;
    assert_eq!(plan.victim, "socket-2");
    assert_eq!(plan.overridden, Some(Override::TopOrdinal));
    assert_eq!(plan.patched, 0);
    for ordinal in 0..3 {
        let annotations = pods
            .get(&format!("{NAME}-{ordinal}"))
            .await?
            .metadata
            .annotations
            .unwrap_or_default();
        assert!(!annotations.contains_key(DELETION_COST_ANNOTATION));
        assert!(annotations.contains_key(OTHER_ANNOTATION));
    }
    namespace.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn a_workload_deleted_mid_run_is_a_clear_error_and_recovers() -> Result {
    let namespace = rtc_testkit::kubernetes().await?;
    create(&namespace, WorkloadKind::Deployment, 3).await?;
    let scaler = scaler(namespace.client(), &namespace, 2, 50)?;
    let read = current(&scaler, &namespace).await?;

    delete(&namespace, WorkloadKind::Deployment).await?;
    let error = scaler
        .scale_to(&read, 4, "test", &AlwaysValid)
        .await
        .expect_err("the workload is gone");
    assert!(matches!(error, ScaleError::Gone { .. }), "{error:?}");
    let error = scaler.current().await.expect_err("still gone");
    assert!(matches!(error, ScaleError::NotFound { .. }), "{error:?}");

    // Back, as a StatefulSet this time: found again without a restart.
    create(&namespace, WorkloadKind::StatefulSet, 3).await?;
    let read = current(&scaler, &namespace).await?;
    assert_eq!(read.kind, WorkloadKind::StatefulSet);
    let outcome = scaler.scale_to(&read, 4, "test", &AlwaysValid).await?;
    assert!(
        matches!(outcome, ScaleOutcome::Scaled { to: 4, .. }),
        "{outcome:?}"
    );

    // Replaced by a new object of the same kind: the old read conflicts.
    delete(&namespace, WorkloadKind::StatefulSet).await?;
    create(&namespace, WorkloadKind::StatefulSet, 3).await?;
    let outcome = scaler.scale_to(&read, 5, "test", &AlwaysValid).await?;
    assert!(
        matches!(outcome, ScaleOutcome::Conflict { .. }),
        "{outcome:?}"
    );
    let fresh = current(&scaler, &namespace).await?;
    assert_ne!(fresh.uid, read.uid);
    assert_eq!(fresh.spec_replicas, 3);
    namespace.cleanup().await?;
    Ok(())
}

// Server-side fencing: once a new leader has claimed the workload, a /scale
// write an earlier leader prepared is refused with 409 however late it
// arrives, and a deletion-cost patch prepared against an older pod is
// refused likewise. A late write is the request itself, sent now with what
// the earlier leader read then: exactly what the API server sees when a
// request held in transit is finally delivered.

#[tokio::test]
async fn a_write_prepared_before_a_claim_is_refused_by_the_api_server() -> Result {
    for kind in WorkloadKind::ALL {
        let namespace = rtc_testkit::kubernetes().await?;
        create(&namespace, kind, 3).await?;
        let earlier = scaler(namespace.client(), &namespace, 2, 50)?;
        let later = scaler(namespace.client(), &namespace, 2, 50)?;

        // The control: without a claim in between, a write prepared against
        // the version read is accepted.
        let api = KubeWorkloadApi::new(namespace.client().clone(), namespace.name());
        let control = current(&earlier, &namespace).await?;
        assert_eq!(
            api.replace_scale(kind, NAME, 4, &control.resource_version)
                .await,
            Ok(4),
            "{kind}: an unclaimed workload takes the write"
        );

        // The earlier leader (token 1) reads and prepares 4 -> 6.
        let prepared = current(&earlier, &namespace).await?;
        assert_ne!(prepared.resource_version, control.resource_version);

        // The next leader (token 2) claims the workload.
        let claimed = later.claim(&FixedToken(2)).await?;
        assert_eq!(claimed.fencing_token, Some(2));
        assert_eq!(later.current().await?.fencing_token, Some(2));

        // The earlier leader's write is delivered now: 409, nothing written.
        let late = api
            .replace_scale(kind, NAME, 6, &prepared.resource_version)
            .await;
        assert!(
            matches!(late, Err(ApiError::Conflict(_))),
            "{kind}: {late:?}"
        );
        let outcome = earlier
            .scale_to(&prepared, 6, "late", &FixedToken(1))
            .await?;
        assert!(
            matches!(outcome, ScaleOutcome::Conflict { .. }),
            "{kind}: {outcome:?}"
        );
        assert_eq!(later.current().await?.spec_replicas, 4, "{kind}");

        // An older token can neither claim again nor write over the claim.
        let refused = earlier.claim(&FixedToken(1)).await;
        assert_eq!(refused.err().map(|e| e.label()), Some("fenced"), "{kind}");
        let fresh = current(&earlier, &namespace).await?;
        let refused = earlier.scale_to(&fresh, 6, "stale", &FixedToken(1)).await;
        assert_eq!(refused.err().map(|e| e.label()), Some("fenced"), "{kind}");

        // The claimant writes.
        let fresh = current(&later, &namespace).await?;
        let outcome = later.scale_to(&fresh, 6, "leader", &FixedToken(2)).await?;
        assert!(
            matches!(outcome, ScaleOutcome::Scaled { to: 6, .. }),
            "{kind}: {outcome:?}"
        );
        namespace.cleanup().await?;
    }
    Ok(())
}

#[tokio::test]
async fn the_claim_annotation_is_the_only_change() -> Result {
    let namespace = rtc_testkit::kubernetes().await?;
    create(&namespace, WorkloadKind::Deployment, 3).await?;
    let scaler = scaler(namespace.client(), &namespace, 2, 50)?;
    scaler.claim(&FixedToken(7)).await?;
    let deployment = namespace.api::<Deployment>().get(NAME).await?;
    let annotations = deployment.metadata.annotations.unwrap_or_default();
    assert_eq!(
        annotations
            .get(FENCING_TOKEN_ANNOTATION)
            .map(String::as_str),
        Some("7")
    );
    assert_eq!(deployment.spec.and_then(|s| s.replicas), Some(3));
    namespace.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn a_deletion_cost_patch_prepared_against_an_older_pod_is_refused() -> Result {
    let namespace = rtc_testkit::kubernetes().await?;
    let pods = namespace.api::<Pod>();
    let pod = fixtures::scheduled_pod(NAME, "socket-a");
    pods.create(&PostParams::default(), &pod).await?;
    let listed = pods.get("socket-a").await?;
    let listed_version = listed.metadata.resource_version.clone().unwrap_or_default();

    // Something else (a kubelet status update, another writer) changes it.
    let touch = Patch::Merge(json!({ "metadata": { "labels": { "touched": "yes" } } }));
    pods.patch("socket-a", &PatchParams::default(), &touch)
        .await?;

    let api = KubeWorkloadApi::new(namespace.client().clone(), namespace.name());
    let late = api
        .patch_pod_annotation("socket-a", DELETION_COST_ANNOTATION, "-1", &listed_version)
        .await;
    assert!(matches!(late, Err(ApiError::Conflict(_))), "{late:?}");
    let now = pods.get("socket-a").await?;
    let cost = now
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DELETION_COST_ANNOTATION));
    assert_eq!(cost, None, "nothing was written");

    // With the current version it is written.
    let current = now.metadata.resource_version.unwrap_or_default();
    api.patch_pod_annotation("socket-a", DELETION_COST_ANNOTATION, "-1", &current)
        .await?;
    let cost = pods
        .get("socket-a")
        .await?
        .metadata
        .annotations
        .and_then(|a| a.get(DELETION_COST_ANNOTATION).cloned());
    assert_eq!(cost.as_deref(), Some("-1"));
    namespace.cleanup().await?;
    Ok(())
}
