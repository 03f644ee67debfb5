//! [`WorkloadApi`] on a kube client.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v1::{Scale, ScaleSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::core::Selector;
use kube::{Api, Client};
use serde_json::json;

use crate::api::{ApiError, PodState, WorkloadApi, WorkloadKind, WorkloadState};
use crate::{DELETION_COST_ANNOTATION, FENCING_TOKEN_ANNOTATION};

/// The field manager recorded on every write.
const FIELD_MANAGER: &str = "rtc-load-balancer";

/// The scaler's requests, sent to the API server with a kube client.
///
/// Requests: `get` deployments and statefulsets, `update`
/// deployments/scale and statefulsets/scale, `list` and `patch` pods; the
/// rules in `deploy/k8s/base/01-rbac.yaml` grant exactly these.
#[derive(Clone)]
pub struct KubeWorkloadApi {
    namespace: String,
    deployments: Api<Deployment>,
    stateful_sets: Api<StatefulSet>,
    pods: Api<Pod>,
}

impl KubeWorkloadApi {
    /// Requests go to `namespace` (`KUBERNETES_NAMESPACE`) through `client`.
    pub fn new(client: Client, namespace: impl Into<String>) -> Self {
        let namespace = namespace.into();
        Self {
            deployments: Api::namespaced(client.clone(), &namespace),
            stateful_sets: Api::namespaced(client.clone(), &namespace),
            pods: Api::namespaced(client, &namespace),
            namespace,
        }
    }
}

impl std::fmt::Debug for KubeWorkloadApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeWorkloadApi")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl WorkloadApi for KubeWorkloadApi {
    fn namespace(&self) -> &str {
        &self.namespace
    }

    async fn get_workload(
        &self,
        kind: WorkloadKind,
        name: &str,
    ) -> Result<WorkloadState, ApiError> {
        match kind {
            WorkloadKind::Deployment => {
                let d = self.deployments.get(name).await.map_err(classify)?;
                let spec = d.spec.as_ref();
                let ready = d.status.as_ref().and_then(|s| s.ready_replicas);
                state(
                    kind,
                    &d.metadata,
                    spec.and_then(|s| s.replicas),
                    ready,
                    spec.map(|s| &s.selector),
                )
            }
            WorkloadKind::StatefulSet => {
                let s = self.stateful_sets.get(name).await.map_err(classify)?;
                let spec = s.spec.as_ref();
                let ready = s.status.as_ref().and_then(|s| s.ready_replicas);
                state(
                    kind,
                    &s.metadata,
                    spec.and_then(|s| s.replicas),
                    ready,
                    spec.map(|s| &s.selector),
                )
            }
        }
    }

    async fn replace_scale(
        &self,
        kind: WorkloadKind,
        name: &str,
        replicas: u32,
        resource_version: &str,
    ) -> Result<u32, ApiError> {
        let replicas = i32::try_from(replicas).map_err(|_| ApiError::Rejected {
            code: 422,
            message: format!("{replicas} replicas do not fit in int32"),
        })?;
        // A PUT of the whole Scale carrying the resourceVersion that was
        // read: the server refuses it with 409 if the workload changed since.
        let scale = Scale {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(self.namespace.clone()),
                resource_version: Some(resource_version.to_owned()),
                ..ObjectMeta::default()
            },
            spec: Some(ScaleSpec {
                replicas: Some(replicas),
            }),
            status: None,
        };
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PostParams::default()
        };
        let written = match kind {
            WorkloadKind::Deployment => self.deployments.replace_scale(name, &params, &scale).await,
            WorkloadKind::StatefulSet => {
                self.stateful_sets
                    .replace_scale(name, &params, &scale)
                    .await
            }
        }
        .map_err(classify)?;
        let now = written.spec.and_then(|s| s.replicas).unwrap_or(replicas);
        Ok(u32::try_from(now).unwrap_or(0))
    }

    async fn annotate_workload(
        &self,
        kind: WorkloadKind,
        name: &str,
        key: &str,
        value: &str,
        resource_version: &str,
    ) -> Result<String, ApiError> {
        let patch = Patch::Merge(json!({ "metadata": {
            "resourceVersion": resource_version,
            "annotations": { key: value },
        } }));
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        let meta = match kind {
            WorkloadKind::Deployment => self
                .deployments
                .patch(name, &params, &patch)
                .await
                .map(|d| d.metadata),
            WorkloadKind::StatefulSet => self
                .stateful_sets
                .patch(name, &params, &patch)
                .await
                .map(|s| s.metadata),
        }
        .map_err(classify)?;
        Ok(meta.resource_version.unwrap_or_default())
    }

    async fn list_pods(&self, selector: &str) -> Result<Vec<PodState>, ApiError> {
        let params = ListParams::default().labels(selector);
        let pods = self.pods.list(&params).await.map_err(classify)?;
        Ok(pods.items.iter().map(pod_state).collect())
    }

    async fn patch_pod_annotation(
        &self,
        pod: &str,
        key: &str,
        value: &str,
        resource_version: &str,
    ) -> Result<(), ApiError> {
        // A JSON merge patch of one annotation: the pod's other annotations,
        // labels and spec are left untouched. The resourceVersion in the
        // patch is a precondition: the server answers 409 if the pod changed
        // since it was listed, so a patch held up in transit cannot land on
        // a pod that has moved on.
        let patch = Patch::Merge(json!({ "metadata": {
            "resourceVersion": resource_version,
            "annotations": { key: value },
        } }));
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        self.pods
            .patch(pod, &params, &patch)
            .await
            .map(drop)
            .map_err(classify)
    }
}

fn state(
    kind: WorkloadKind,
    meta: &ObjectMeta,
    replicas: Option<i32>,
    ready: Option<i32>,
    selector: Option<&LabelSelector>,
) -> Result<WorkloadState, ApiError> {
    let name = meta.name.clone().unwrap_or_default();
    let selector = match selector {
        Some(selector) => Selector::try_from(selector.clone())
            .map_err(|error| ApiError::Rejected {
                code: 422,
                message: format!("{kind} {name} has a selector that cannot be used: {error}"),
            })?
            .to_string(),
        None => String::new(),
    };
    if selector.is_empty() {
        // An empty selector would list every pod in the namespace.
        return Err(ApiError::Rejected {
            code: 422,
            message: format!("{kind} {name} has no pod selector"),
        });
    }
    Ok(WorkloadState {
        kind,
        name,
        uid: meta.uid.clone().unwrap_or_default(),
        resource_version: meta.resource_version.clone().unwrap_or_default(),
        spec_replicas: replicas.map_or(1, non_negative),
        fencing_token: meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(FENCING_TOKEN_ANNOTATION))
            .and_then(|v| v.parse().ok()),
        ready_replicas: ready.map_or(0, non_negative),
        selector,
    })
}

fn non_negative(n: i32) -> u32 {
    u32::try_from(n).unwrap_or(0)
}

fn pod_state(pod: &Pod) -> PodState {
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        });
    PodState {
        name: pod.metadata.name.clone().unwrap_or_default(),
        node_name: spec
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty()),
        phase: status.and_then(|s| s.phase.clone()),
        ready,
        terminating: pod.metadata.deletion_timestamp.is_some(),
        deletion_cost: pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(DELETION_COST_ANNOTATION).cloned()),
        resource_version: pod.metadata.resource_version.clone().unwrap_or_default(),
    }
}

fn classify(error: kube::Error) -> ApiError {
    match error {
        kube::Error::Api(status) => ApiError::from_status(status.code, status.message),
        kube::Error::HyperError(error) => ApiError::Transport(error.to_string()),
        kube::Error::Service(error) => ApiError::Transport(error.to_string()),
        other => ApiError::Rejected {
            code: 0,
            message: other.to_string(),
        },
    }
}
