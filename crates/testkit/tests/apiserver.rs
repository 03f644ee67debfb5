//! Smoke test against the stack's Kubernetes API server: the /scale
//! subresource of Deployments and StatefulSets, and optimistic concurrency on
//! coordination.k8s.io/v1 Leases, the two things the load balancer relies on.

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v1::Scale;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Resource};
use rtc_testkit::{Error, TestNamespace, fixtures};
use serde_json::json;

const NAME: &str = "socket";

fn scale_replicas(scale: &Scale) -> Option<i32> {
    scale.spec.as_ref().and_then(|spec| spec.replicas)
}

fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.is_conflict())
}

/// Creates `workload` with one replica, then scales it through /scale with a
/// merge patch, a replace carrying the read resourceVersion, and a replace
/// carrying a stale one, which must conflict. `spec_replicas` reads the
/// workload's own spec.replicas to see each change land.
async fn exercise_scale<K>(
    api: Api<K>,
    workload: K,
    spec_replicas: fn(&K) -> Option<i32>,
) -> Result<(), Error>
where
    K: Resource<Scope = NamespaceResourceScope>
        + Clone
        + Debug
        + serde::Serialize
        + serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    api.create(&PostParams::default(), &workload).await?;
    fixtures::settled(&api, NAME).await?;

    let initial = api.get_scale(NAME).await?;
    assert_eq!(scale_replicas(&initial), Some(1));

    let patch = Patch::Merge(json!({ "spec": { "replicas": 3 } }));
    let patched = api
        .patch_scale(NAME, &PatchParams::default(), &patch)
        .await?;
    assert_eq!(scale_replicas(&patched), Some(3));
    assert_eq!(spec_replicas(&api.get(NAME).await?), Some(3));

    // The controller writes the status after each change of the spec, which
    // moves the resourceVersion the replace below is conditional on. Past
    // the observed generation it may still write it (a StatefulSet's once
    // per pod it creates and per pod that becomes Ready): a replace that
    // meets such a write is a conflict that leaves the spec alone, and the
    // next read carries the newer version, as a leader's next tick does.
    fixtures::settled(&api, NAME).await?;
    let mut attempts = 0;
    let (wanted, replaced) = loop {
        attempts += 1;
        let mut wanted = api.get_scale(NAME).await?;
        wanted.spec.get_or_insert_with(Default::default).replicas = Some(5);
        match api
            .replace_scale(NAME, &PostParams::default(), &wanted)
            .await
        {
            Ok(replaced) => break (wanted, replaced),
            Err(error) if is_conflict(&error) && attempts < 5 => {
                assert_eq!(spec_replicas(&api.get(NAME).await?), Some(3));
            }
            Err(error) => return Err(error.into()),
        }
    };
    assert_eq!(scale_replicas(&replaced), Some(5), "after {attempts} reads");
    assert_eq!(spec_replicas(&api.get(NAME).await?), Some(5));

    // `wanted` still carries the resourceVersion from before the replace.
    let mut stale = wanted;
    stale.spec.get_or_insert_with(Default::default).replicas = Some(2);
    match api
        .replace_scale(NAME, &PostParams::default(), &stale)
        .await
    {
        Err(error) if is_conflict(&error) => {}
        other => panic!("a stale /scale replace must conflict with 409, got {other:?}"),
    }
    assert_eq!(spec_replicas(&api.get(NAME).await?), Some(5));
    Ok(())
}

#[tokio::test]
async fn deployment_scale_subresource_reads_patches_and_replaces() -> Result<(), Error> {
    let namespace = rtc_testkit::kubernetes().await?;
    exercise_scale(
        namespace.api::<Deployment>(),
        fixtures::deployment(NAME, 1),
        |d| d.spec.as_ref().and_then(|spec| spec.replicas),
    )
    .await?;
    namespace.cleanup().await
}

#[tokio::test]
async fn stateful_set_scale_subresource_reads_patches_and_replaces() -> Result<(), Error> {
    let namespace = rtc_testkit::kubernetes().await?;
    exercise_scale(
        namespace.api::<StatefulSet>(),
        fixtures::stateful_set(NAME, 1),
        |s| s.spec.as_ref().and_then(|spec| spec.replicas),
    )
    .await?;
    namespace.cleanup().await
}

fn lease(holder: &str) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some("rtc-load-balancer".to_owned()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.to_owned()),
            lease_duration_seconds: Some(15),
            ..LeaseSpec::default()
        }),
    }
}

#[tokio::test]
async fn lease_replace_with_a_stale_resource_version_conflicts() -> Result<(), Error> {
    let namespace: TestNamespace = rtc_testkit::kubernetes().await?;
    let leases = namespace.api::<Lease>();
    let created = leases
        .create(&PostParams::default(), &lease("node-a"))
        .await?;
    let stale_version = created.metadata.resource_version.clone();
    assert!(
        stale_version.is_some(),
        "a created lease carries a resourceVersion"
    );

    let mut taken = created.clone();
    taken.spec = lease("node-b").spec;
    let taken = leases
        .replace("rtc-load-balancer", &PostParams::default(), &taken)
        .await?;
    assert_ne!(taken.metadata.resource_version, stale_version);

    let mut late = lease("node-c");
    late.metadata.resource_version = stale_version;
    match leases
        .replace("rtc-load-balancer", &PostParams::default(), &late)
        .await
    {
        Err(error) if is_conflict(&error) => {}
        other => panic!("a stale lease replace must conflict with 409, got {other:?}"),
    }

    let holder = leases
        .get("rtc-load-balancer")
        .await?
        .spec
        .and_then(|spec| spec.holder_identity);
    assert_eq!(holder.as_deref(), Some("node-b"));
    namespace.cleanup().await
}

/// The namespace goes away (or starts terminating) when the test kit's handle
/// is dropped, even inside a single-threaded test runtime.
#[tokio::test]
async fn dropping_the_test_namespace_deletes_it() -> Result<(), Error> {
    let namespace = rtc_testkit::kubernetes().await?;
    let name = namespace.name().to_owned();
    let namespaces: Api<Namespace> = Api::all(namespace.client().clone());
    assert!(namespaces.get_opt(&name).await?.is_some());

    drop(namespace);

    let after = namespaces.get_opt(&name).await?;
    let terminating = after
        .as_ref()
        .is_some_and(|ns| ns.metadata.deletion_timestamp.is_some());
    assert!(
        after.is_none() || terminating,
        "namespace {name} is still there: {after:?}"
    );
    Ok(())
}
