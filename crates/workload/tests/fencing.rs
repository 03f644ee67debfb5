//! Server-side fencing against the local stack's real API server: once a
//! new leader has claimed the workload, a /scale write an earlier leader
//! prepared is refused with 409 however late it arrives, and a
//! deletion-cost patch prepared against an older pod is refused likewise.
//!
//! A late write is the request itself, sent now with what the earlier
//! leader read then: exactly what the API server sees when a request held
//! in transit is finally delivered.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams, PostParams};
use rtc_testkit::{TestNamespace, fixtures};
use rtc_workload::{
    ApiError, DELETION_COST_ANNOTATION, FENCING_TOKEN_ANNOTATION, FixedToken, KubeWorkloadApi,
    ScaleOutcome, ScalerConfig, WorkloadApi, WorkloadKind, WorkloadScaler, WorkloadState,
};
use serde_json::json;

type Result<T = (), E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

const NAME: &str = "socket";

async fn create(namespace: &TestNamespace, kind: WorkloadKind) -> Result {
    let params = PostParams::default();
    match kind {
        WorkloadKind::Deployment => {
            let api = namespace.api::<Deployment>();
            api.create(&params, &fixtures::deployment(NAME, 3)).await?;
            fixtures::settled(&api, NAME).await?;
        }
        WorkloadKind::StatefulSet => {
            let api = namespace.api::<StatefulSet>();
            api.create(&params, &fixtures::stateful_set(NAME, 3))
                .await?;
            fixtures::settled(&api, NAME).await?;
        }
    }
    Ok(())
}

fn scaler(namespace: &TestNamespace) -> Result<WorkloadScaler<KubeWorkloadApi>> {
    Ok(WorkloadScaler::new(
        KubeWorkloadApi::new(namespace.client().clone(), namespace.name()),
        ScalerConfig::new(NAME, 2, 50)?,
    ))
}

async fn settled_read(
    scaler: &WorkloadScaler<KubeWorkloadApi>,
    namespace: &TestNamespace,
    kind: WorkloadKind,
) -> Result<WorkloadState> {
    match kind {
        WorkloadKind::Deployment => fixtures::settled(&namespace.api::<Deployment>(), NAME).await?,
        WorkloadKind::StatefulSet => {
            fixtures::settled(&namespace.api::<StatefulSet>(), NAME).await?;
        }
    }
    Ok(scaler.current().await?)
}

#[tokio::test]
async fn a_write_prepared_before_a_claim_is_refused_by_the_api_server() -> Result {
    for kind in WorkloadKind::ALL {
        let namespace = rtc_testkit::kubernetes().await?;
        create(&namespace, kind).await?;
        let earlier = scaler(&namespace)?;
        let later = scaler(&namespace)?;

        // The control: without a claim in between, a write prepared against
        // the version read is accepted.
        let api = KubeWorkloadApi::new(namespace.client().clone(), namespace.name());
        let control = settled_read(&earlier, &namespace, kind).await?;
        assert_eq!(
            api.replace_scale(kind, NAME, 4, &control.resource_version)
                .await,
            Ok(4),
            "{kind}: an unclaimed workload takes the write"
        );

        // The earlier leader (token 1) reads and prepares 4 -> 6.
        let prepared = settled_read(&earlier, &namespace, kind).await?;
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
        let fresh = settled_read(&earlier, &namespace, kind).await?;
        let refused = earlier.scale_to(&fresh, 6, "stale", &FixedToken(1)).await;
        assert_eq!(refused.err().map(|e| e.label()), Some("fenced"), "{kind}");

        // The claimant writes.
        let fresh = settled_read(&later, &namespace, kind).await?;
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
    create(&namespace, WorkloadKind::Deployment).await?;
    let scaler = scaler(&namespace)?;
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
