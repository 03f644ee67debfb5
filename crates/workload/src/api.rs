//! The narrow boundary between the scaler and the Kubernetes API.

use std::future::Future;

/// The two kinds of workload the socket fleet can run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkloadKind {
    /// `apps/v1` Deployment: its ReplicaSet honours pod deletion cost.
    Deployment,
    /// `apps/v1` StatefulSet: always removes the highest ordinal.
    StatefulSet,
}

impl WorkloadKind {
    /// Both kinds, in the order detection looks for them.
    pub const ALL: [Self; 2] = [Self::Deployment, Self::StatefulSet];

    /// The kind as Kubernetes spells it (`Deployment`), for log lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deployment => "Deployment",
            Self::StatefulSet => "StatefulSet",
        }
    }

    /// A bounded metric label (`deployment`, `statefulset`).
    pub fn label(self) -> &'static str {
        match self {
            Self::Deployment => "deployment",
            Self::StatefulSet => "statefulset",
        }
    }

    /// The resource's plural name, as RBAC rules name it.
    pub fn resource(self) -> &'static str {
        match self {
            Self::Deployment => "deployments",
            Self::StatefulSet => "statefulsets",
        }
    }
}

impl std::fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the scaler reads of a workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadState {
    /// Deployment or StatefulSet.
    pub kind: WorkloadKind,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.uid`: changes when the workload is deleted and created again.
    pub uid: String,
    /// `metadata.resourceVersion`, the precondition of the next /scale write.
    pub resource_version: String,
    /// `spec.replicas` (1 when unset, as the API server defaults it).
    pub spec_replicas: u32,
    /// `status.readyReplicas` (0 when unset).
    pub ready_replicas: u32,
    /// `spec.selector` as a label-selector string, to list the workload's pods.
    pub selector: String,
    /// The fencing token of the last leader that claimed the workload
    /// ([`FENCING_TOKEN_ANNOTATION`](crate::FENCING_TOKEN_ANNOTATION)), when
    /// one has and it is a number.
    pub fencing_token: Option<u64>,
}

/// What the scaler reads of a pod, enough to predict which pod a ReplicaSet
/// removes first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodState {
    /// `metadata.name`.
    pub name: String,
    /// `spec.nodeName`: `None` while the pod is unscheduled.
    pub node_name: Option<String>,
    /// `status.phase` (`Pending`, `Running`, ...), `None` when unset.
    pub phase: Option<String>,
    /// The `Ready` condition is `True`.
    pub ready: bool,
    /// `metadata.deletionTimestamp` is set: the pod is already going.
    pub terminating: bool,
    /// The `controller.kubernetes.io/pod-deletion-cost` annotation as written.
    pub deletion_cost: Option<String>,
    /// `metadata.resourceVersion`: the precondition of a deletion-cost patch.
    pub resource_version: String,
}

/// One kind of request the scaler makes, with the RBAC rule it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `get` on `deployments` or `statefulsets`.
    GetWorkload(WorkloadKind),
    /// `update` on `deployments/scale` or `statefulsets/scale`.
    UpdateScale(WorkloadKind),
    /// `list` on `pods`.
    ListPods,
    /// `patch` on `pods`.
    PatchPod,
    /// `patch` on `deployments` or `statefulsets`: the leader's claim.
    PatchWorkload(WorkloadKind),
}

impl Operation {
    /// The RBAC verb.
    pub fn verb(self) -> &'static str {
        match self {
            Self::GetWorkload(_) => "get",
            Self::UpdateScale(_) => "update",
            Self::ListPods => "list",
            Self::PatchPod | Self::PatchWorkload(_) => "patch",
        }
    }

    /// The RBAC resource (with subresource).
    pub fn resource(self) -> &'static str {
        match self {
            Self::GetWorkload(kind) | Self::PatchWorkload(kind) => kind.resource(),
            Self::UpdateScale(WorkloadKind::Deployment) => "deployments/scale",
            Self::UpdateScale(WorkloadKind::StatefulSet) => "statefulsets/scale",
            Self::ListPods | Self::PatchPod => "pods",
        }
    }

    /// The RBAC API group (`""` is the core group).
    pub fn api_group(self) -> &'static str {
        match self {
            Self::GetWorkload(_) | Self::UpdateScale(_) | Self::PatchWorkload(_) => "apps",
            Self::ListPods | Self::PatchPod => "",
        }
    }

    /// A bounded metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::GetWorkload(_) => "get_workload",
            Self::UpdateScale(_) => "update_scale",
            Self::ListPods => "list_pods",
            Self::PatchPod => "patch_pod",
            Self::PatchWorkload(_) => "patch_workload",
        }
    }
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = match self.api_group() {
            "" => "core".to_owned(),
            group => group.to_owned(),
        };
        write!(
            f,
            "verb {:?} on resource {:?} (apiGroup {group})",
            self.verb(),
            self.resource()
        )
    }
}

/// A failed request, classified by what the scaler does about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 404: the object does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// 409: the resourceVersion precondition failed; someone else wrote.
    #[error("conflict: {0}")]
    Conflict(String),
    /// 403: RBAC forbids the request. Never retried.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// No answer within the request timeout. Retried.
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
    /// 5xx or 429: the server could not serve the request now. Retried.
    #[error("server error {code}: {message}")]
    Server {
        /// The HTTP status code.
        code: u16,
        /// The server's message.
        message: String,
    },
    /// The connection failed or broke. Retried.
    #[error("transport: {0}")]
    Transport(String),
    /// Any other refusal (400, 422, ...). Not retried.
    #[error("rejected with {code}: {message}")]
    Rejected {
        /// The HTTP status code.
        code: u16,
        /// The server's message.
        message: String,
    },
}

impl ApiError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Timeout(_) | Self::Server { .. } | Self::Transport(_)
        )
    }

    /// A bounded metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "not_found",
            Self::Conflict(_) => "conflict",
            Self::Forbidden(_) => "forbidden",
            Self::Timeout(_) => "timeout",
            Self::Server { .. } => "server",
            Self::Transport(_) => "transport",
            Self::Rejected { .. } => "rejected",
        }
    }

    /// Classifies an HTTP status code and message.
    pub fn from_status(code: u16, message: impl Into<String>) -> Self {
        let message = message.into();
        match code {
            404 => Self::NotFound(message),
            409 => Self::Conflict(message),
            403 => Self::Forbidden(message),
            429 | 500..=599 => Self::Server { code, message },
            _ => Self::Rejected { code, message },
        }
    }
}

/// The requests the scaler makes, in one namespace.
///
/// [`KubeWorkloadApi`](crate::KubeWorkloadApi) sends them to the API server;
/// `FakeWorkloadApi` (feature `test-util`) keeps objects in memory and
/// injects faults. Implementations make one attempt per call: retries,
/// timeouts and the fence are the scaler's business.
pub trait WorkloadApi: Send + Sync {
    /// The namespace every request goes to.
    fn namespace(&self) -> &str;

    /// Reads a workload; [`ApiError::NotFound`] when there is none of that
    /// kind and name.
    fn get_workload(
        &self,
        kind: WorkloadKind,
        name: &str,
    ) -> impl Future<Output = Result<WorkloadState, ApiError>> + Send;

    /// Replaces the workload's /scale with `replicas`, on the condition that
    /// the workload is still at `resource_version` ([`ApiError::Conflict`]
    /// otherwise). Returns the replicas the server now has.
    fn replace_scale(
        &self,
        kind: WorkloadKind,
        name: &str,
        replicas: u32,
        resource_version: &str,
    ) -> impl Future<Output = Result<u32, ApiError>> + Send;

    /// Lists the pods matching a label selector.
    fn list_pods(
        &self,
        selector: &str,
    ) -> impl Future<Output = Result<Vec<PodState>, ApiError>> + Send;

    /// Sets one annotation on a pod with a merge patch, leaving every other
    /// annotation and field as it is, on the condition that the pod is
    /// still at `resource_version` ([`ApiError::Conflict`] otherwise).
    fn patch_pod_annotation(
        &self,
        pod: &str,
        key: &str,
        value: &str,
        resource_version: &str,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;

    /// Sets one annotation on the workload with a merge patch, on the
    /// condition that it is still at `resource_version`
    /// ([`ApiError::Conflict`] otherwise). Any write moves the workload's
    /// resourceVersion, so every /scale write prepared against the old one
    /// fails with 409 from then on. Returns the new resourceVersion.
    fn annotate_workload(
        &self,
        kind: WorkloadKind,
        name: &str,
        key: &str,
        value: &str,
        resource_version: &str,
    ) -> impl Future<Output = Result<String, ApiError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_are_classified() {
        assert_eq!(ApiError::from_status(404, "x").label(), "not_found");
        assert_eq!(ApiError::from_status(409, "x").label(), "conflict");
        assert_eq!(ApiError::from_status(403, "x").label(), "forbidden");
        assert!(ApiError::from_status(500, "x").is_transient());
        assert!(ApiError::from_status(503, "x").is_transient());
        assert!(ApiError::from_status(429, "x").is_transient());
        assert!(!ApiError::from_status(422, "x").is_transient());
        assert!(!ApiError::from_status(403, "x").is_transient());
        assert!(!ApiError::from_status(409, "x").is_transient());
    }

    #[test]
    fn operations_name_their_rbac_rule() {
        let op = Operation::UpdateScale(WorkloadKind::StatefulSet);
        assert_eq!(
            op.to_string(),
            "verb \"update\" on resource \"statefulsets/scale\" (apiGroup apps)"
        );
        assert_eq!(
            Operation::PatchPod.to_string(),
            "verb \"patch\" on resource \"pods\" (apiGroup core)"
        );
    }
}
