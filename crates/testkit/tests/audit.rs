//! Against the stack's API server and its audit log: the writes of the
//! audit policy (deploy/local/audit-policy.yaml) are recorded with their
//! user, object and answer as soon as their request returns, and reads and
//! status writes are not.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v1::{Scale, ScaleSpec};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use rtc_testkit::audit::{AuditLog, Event, accepted_writes, count_accepted_writes};
use rtc_testkit::{Endpoints, Error, TestNamespace, fixtures};
use serde_json::json;

/// How long a returned request's event may take to be readable.
const VISIBLE_WITHIN: Duration = Duration::from_secs(1);

const NAME: &str = "socket";

fn audit_of(ns: &TestNamespace) -> Result<AuditLog, Error> {
    Ok(AuditLog::from_end(&Endpoints::from_env().audit_log)?.namespace(ns.name()))
}

fn load_balancer(ns: &TestNamespace) -> String {
    format!("system:serviceaccount:{}:load-balancer", ns.name())
}

fn scale(replicas: i32, resource_version: Option<String>) -> Scale {
    Scale {
        metadata: ObjectMeta {
            name: Some(NAME.to_owned()),
            resource_version,
            ..ObjectMeta::default()
        },
        spec: Some(ScaleSpec {
            replicas: Some(replicas),
        }),
        status: None,
    }
}

#[tokio::test]
async fn a_scale_write_is_recorded_with_its_user_and_answer_and_a_read_is_not() -> Result<(), Error>
{
    let ns = rtc_testkit::kubernetes().await?;
    let mut audit = audit_of(&ns)?;
    fixtures::grant_load_balancer(&ns).await?;
    let admin = ns.api::<Deployment>();
    admin
        .create(&PostParams::default(), &fixtures::deployment(NAME, 1))
        .await?;
    fixtures::settled(&admin, NAME).await?;

    // As the load-balancer does it: read the workload (a GET, not
    // recorded), then PUT its /scale with the resourceVersion read.
    let client = ns.service_account_client("load-balancer").await?;
    let deployments: Api<Deployment> = Api::namespaced(client, ns.name());
    let read = deployments.get(NAME).await?.metadata.resource_version;
    deployments
        .replace_scale(NAME, &PostParams::default(), &scale(3, read.clone()))
        .await?;
    let user = load_balancer(&ns);
    let written = audit
        .wait_for(VISIBLE_WITHIN, |e| {
            e.user.username == user && e.is_about("deployments", Some("scale"))
        })
        .await?;
    assert_eq!(
        (written.verb.as_str(), written.code()),
        ("update", Some(200))
    );
    assert_eq!(written.name(), Some(NAME));
    assert_eq!(written.stage, "ResponseComplete");
    assert!(written.request_received_timestamp <= written.stage_timestamp);

    // The same resourceVersion again is stale now.
    match deployments
        .replace_scale(NAME, &PostParams::default(), &scale(2, read))
        .await
    {
        Err(kube::Error::Api(status)) if status.is_conflict() => {}
        other => panic!("a stale /scale replace must conflict with 409, got {other:?}"),
    }
    let conflict = audit
        .wait_for(VISIBLE_WITHIN, |e| {
            e.user.username == user && e.code() == Some(409)
        })
        .await?;
    assert!(conflict.is_about("deployments", Some("scale")));
    assert!(conflict.request_received_timestamp >= written.stage_timestamp);

    let events = audit.events()?;
    let scale_writes: Vec<(&str, Option<u16>)> = events
        .iter()
        .filter(|e| e.user.username == user)
        .map(|e| (e.verb.as_str(), e.code()))
        .collect();
    assert_eq!(
        scale_writes,
        [("update", Some(200)), ("update", Some(409))],
        "only the two PUTs of /scale, not the GET: {events:#?}"
    );
    assert_eq!(
        count_accepted_writes(events, &user, "deployments", Some("scale")),
        1
    );
    assert!(
        events.iter().all(|e| e.verb != "get"),
        "no read is recorded: {events:#?}"
    );
    assert!(
        events.iter().all(|e| e.namespace() == Some(ns.name())),
        "only this namespace is kept"
    );
    ns.cleanup().await
}

#[tokio::test]
async fn lease_and_pod_patches_are_recorded_and_status_writes_are_not() -> Result<(), Error> {
    let ns = rtc_testkit::kubernetes().await?;
    let mut audit = audit_of(&ns)?;
    fixtures::grant_load_balancer(&ns).await?;
    let pods = ns.api::<Pod>();
    // The admin's create and status patch (pods/status) are not recorded.
    fixtures::create_ready_pod(&pods, &fixtures::scheduled_pod(NAME, "socket-a")).await?;

    let client = ns.service_account_client("load-balancer").await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns.name());
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some("rtc-load-balancer".to_owned()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some("lb-a".to_owned()),
            lease_duration_seconds: Some(15),
            ..LeaseSpec::default()
        }),
    };
    leases.create(&PostParams::default(), &lease).await?;
    let renew = Patch::Merge(json!({ "spec": { "holderIdentity": "lb-b" } }));
    leases
        .patch("rtc-load-balancer", &PatchParams::default(), &renew)
        .await?;
    let cost = Patch::Merge(json!({ "metadata": { "annotations": {
        "controller.kubernetes.io/pod-deletion-cost": "-10",
    }}}));
    let sa_pods: Api<Pod> = Api::namespaced(client, ns.name());
    sa_pods
        .patch("socket-a", &PatchParams::default(), &cost)
        .await?;

    let user = load_balancer(&ns);
    audit
        .wait_for(VISIBLE_WITHIN, |e| {
            e.user.username == user && e.is_about("pods", None)
        })
        .await?;
    let events = audit.events()?;
    let writes = accepted_writes(events);
    let of = |resource: &str| -> Vec<&Event> {
        writes
            .iter()
            .filter(|(key, _)| key.user == user && key.resource == resource)
            .flat_map(|(_, events)| events.iter().copied())
            .collect()
    };
    let lease_writes: Vec<_> = of("leases")
        .iter()
        .map(|e| (e.verb.clone(), e.code()))
        .collect();
    assert_eq!(
        lease_writes,
        [
            ("create".to_owned(), Some(201)),
            ("patch".to_owned(), Some(200))
        ]
    );
    let pod_writes = of("pods");
    assert_eq!(pod_writes.len(), 1, "{events:#?}");
    assert_eq!(pod_writes[0].name(), Some("socket-a"));
    assert!(
        events.iter().all(|e| e.subresource() != Some("status")),
        "status writes are not recorded: {events:#?}"
    );
    assert!(
        events
            .iter()
            .all(|e| !(e.verb == "create" && e.is_about("pods", None))),
        "pod creates are not recorded: {events:#?}"
    );
    ns.cleanup().await
}
