//! Small builders for the Kubernetes objects tests create: a socket
//! workload of either kind, and pods standing in for the ones its
//! controller would make.
//!
//! The local stack runs the real controllers. These fixtures are for tests
//! of API semantics (detection, /scale compare-and-swap, deletion-cost
//! patches) that need pods in an exact, test-chosen state, so they keep the
//! controllers from making pods of their own: [`deployment`] is created
//! paused (the deployment controller makes no ReplicaSet for a paused
//! Deployment, so nothing adopts or deletes the test's pods, while /scale
//! still writes `spec.replicas`), and the pods of [`stateful_set`] select a
//! node that does not exist, so the StatefulSet controller's pods stay
//! Pending and unscheduled. Tests of what the controllers really do run real
//! pods on the stack's node agents instead.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, PodTemplateSpec};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};

use crate::{Error, TestNamespace};

/// The labels of workload `name`'s pods: `app=<name>`.
pub fn labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("app".to_owned(), name.to_owned())])
}

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        labels: Some(labels(name)),
        ..ObjectMeta::default()
    }
}

fn selector(name: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels(name)),
        ..LabelSelector::default()
    }
}

/// The node that [`scheduled_pod`]s are bound to: no node agent serves it,
/// so no kubelet overwrites the status a test gives its pods. The test
/// namespace's cleanup deletes them at once.
pub const UNSERVED_NODE: &str = "node-a";

/// The node label no node of the stack carries: pods selecting it are never
/// scheduled.
pub const NO_NODE_LABEL: &str = "rtc.example/no-such-node";

/// The pod spec of workload `name`: one container, never scheduled (it
/// selects [`NO_NODE_LABEL`]).
pub fn pod_spec(name: &str) -> PodSpec {
    PodSpec {
        containers: vec![Container {
            name: name.to_owned(),
            image: Some("socket-node:test".to_owned()),
            ..Container::default()
        }],
        node_selector: Some(BTreeMap::from([(
            NO_NODE_LABEL.to_owned(),
            "true".to_owned(),
        )])),
        ..PodSpec::default()
    }
}

fn template(name: &str) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels(name)),
            ..ObjectMeta::default()
        }),
        spec: Some(pod_spec(name)),
    }
}

/// A paused Deployment `name` with `replicas`, selecting `app=<name>`: its
/// controller makes no ReplicaSet and no pod (see the module docs).
pub fn deployment(name: &str, replicas: i32) -> Deployment {
    Deployment {
        metadata: meta(name),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            paused: Some(true),
            selector: selector(name),
            template: template(name),
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// A StatefulSet `name` with `replicas`, selecting `app=<name>`; its
/// controller creates its pods at once, and they stay Pending (see the
/// module docs).
pub fn stateful_set(name: &str, replicas: i32) -> StatefulSet {
    StatefulSet {
        metadata: meta(name),
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            selector: selector(name),
            service_name: Some(name.to_owned()),
            // All pods at once: they never get Ready, so OrderedReady would
            // stop at the first.
            pod_management_policy: Some("Parallel".to_owned()),
            template: template(name),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

/// Pod `pod` of workload `workload`, bound to a node no agent runs (so no
/// kubelet overwrites the status a test gives it); adjust its metadata
/// before [`create_ready_pod`] as needed.
pub fn scheduled_pod(workload: &str, pod: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(pod.to_owned()),
            labels: Some(labels(workload)),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(UNSERVED_NODE.to_owned()),
            ..pod_spec(workload)
        }),
        ..Pod::default()
    }
}

/// Creates `pod`, then marks it Running and Ready through its status, as a
/// kubelet would.
///
/// # Errors
///
/// The API server's error when it refuses either write.
pub async fn create_ready_pod(pods: &Api<Pod>, pod: &Pod) -> Result<(), kube::Error> {
    let created = pods.create(&PostParams::default(), pod).await?;
    let name = created.metadata.name.unwrap_or_default();
    let status = Patch::Merge(serde_json::json!({ "status": {
        "phase": "Running",
        "conditions": [{ "type": "Ready", "status": "True" }],
    }}));
    pods.patch_status(&name, &PatchParams::default(), &status)
        .await?;
    Ok(())
}

/// The load-balancer's identity of deploy/k8s/base/01-rbac.yaml (its
/// ServiceAccount, Role and RoleBinding) created in the test's namespace,
/// so a client of [`TestNamespace::service_account_client`] for
/// `load-balancer` has exactly the permissions it has in a cluster.
///
/// # Errors
///
/// [`Error::Manifest`] when the manifest cannot be read or holds another
/// kind, [`Error::Kube`] when the API server refuses an object.
pub async fn grant_load_balancer(ns: &TestNamespace) -> Result<(), Error> {
    let path = crate::manifests::path_of("01-rbac.yaml");
    let manifest = |reason: String| Error::Manifest {
        path: path.clone(),
        reason,
    };
    let docs = crate::manifests::documents("01-rbac.yaml")?;
    let pp = PostParams::default();
    for mut doc in docs {
        doc["metadata"]["namespace"] = ns.name().into();
        if let Some(subjects) = doc["subjects"].as_array_mut() {
            for subject in subjects {
                subject["namespace"] = ns.name().into();
            }
        }
        let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
        let parse = |e: serde_json::Error| manifest(format!("{kind}: {e}"));
        match kind.as_str() {
            "ServiceAccount" => {
                let sa: ServiceAccount = serde_json::from_value(doc).map_err(parse)?;
                ns.api::<ServiceAccount>().create(&pp, &sa).await?;
            }
            "Role" => {
                let role: Role = serde_json::from_value(doc).map_err(parse)?;
                ns.api::<Role>().create(&pp, &role).await?;
            }
            "RoleBinding" => {
                let binding: RoleBinding = serde_json::from_value(doc).map_err(parse)?;
                ns.api::<RoleBinding>().create(&pp, &binding).await?;
            }
            other => {
                return Err(manifest(format!(
                    "holds a {other:?}; only ServiceAccount, Role and RoleBinding are expected"
                )));
            }
        }
    }
    Ok(())
}

/// How long a controller may take to observe a workload's latest spec.
const OBSERVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Waits until the workload's controller has observed its latest spec
/// (`status.observedGeneration` equals `metadata.generation`).
///
/// The real controllers write a workload's status after every change of its
/// spec, and each such write changes its resourceVersion; a test that reads
/// the workload and then writes with that resourceVersion as precondition
/// waits here first, or its write may meet a 409 that says nothing about the
/// code under test.
///
/// # Errors
///
/// [`Error::Kube`] when the workload cannot be read, [`Error::NotObserved`]
/// when its controller does not catch up in time.
pub async fn settled<K>(api: &Api<K>, name: &str) -> Result<(), Error>
where
    K: Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    settled_within(api, name, OBSERVE_TIMEOUT).await
}

/// [`settled`] with its own bound on the wait.
///
/// After an API server restart the controllers' informers list again only
/// when their watch backoff (up to half a minute in client-go) runs out; a
/// test that restarts it waits here with a longer bound, so the next test
/// does not meet a controller still catching up.
///
/// # Errors
///
/// As [`settled`].
pub async fn settled_within<K>(
    api: &Api<K>,
    name: &str,
    timeout: std::time::Duration,
) -> Result<(), Error>
where
    K: Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let object = serde_json::to_value(api.get(name).await?).unwrap_or_default();
        let generation = object["metadata"]["generation"].as_i64();
        if generation.is_some() && object["status"]["observedGeneration"].as_i64() == generation {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::NotObserved {
                name: name.to_owned(),
                waited: timeout,
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
