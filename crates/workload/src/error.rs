//! What can go wrong when finding, reading or scaling the workload.

use std::time::Duration;

use crate::api::{ApiError, Operation, WorkloadKind};
use crate::fence::FenceError;

/// A failure of the scaler, saying what failed and with which value.
///
/// A 409 on the /scale write is not an error: it is
/// [`ScaleOutcome::Conflict`](crate::ScaleOutcome::Conflict).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScaleError {
    /// Neither a Deployment nor a StatefulSet has the configured name.
    #[error(
        "no Deployment or StatefulSet named {name:?} in namespace {namespace:?}: \
         create the socket workload, or set SOCKET_WORKLOAD_NAME to its name"
    )]
    NotFound {
        /// The namespace searched.
        namespace: String,
        /// `SOCKET_WORKLOAD_NAME`.
        name: String,
    },
    /// Both a Deployment and a StatefulSet have the configured name.
    #[error(
        "both a Deployment and a StatefulSet are named {name:?} in namespace {namespace:?}: \
         the scaler will not guess; delete the one not in use"
    )]
    Ambiguous {
        /// The namespace searched.
        namespace: String,
        /// `SOCKET_WORKLOAD_NAME`.
        name: String,
    },
    /// The workload disappeared between the read and the write (deleted or
    /// replaced); the next read detects it again.
    #[error(
        "{kind} {name:?} in namespace {namespace:?} disappeared before the write; \
         it is detected again on the next read"
    )]
    Gone {
        /// The kind it had.
        kind: WorkloadKind,
        /// The namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// RBAC forbids a request; never retried.
    #[error(
        "forbidden: the load balancer's service account lacks {operation} in namespace \
         {namespace:?} (see deploy/k8s/base/01-rbac.yaml); the server said: {message}"
    )]
    Forbidden {
        /// The request, naming the missing verb, resource and API group.
        operation: Operation,
        /// The namespace.
        namespace: String,
        /// The server's message.
        message: String,
    },
    /// Transient failures went on for every allowed attempt.
    #[error("{operation} in namespace {namespace:?} failed {attempts} times, giving up: {last}")]
    Unavailable {
        /// The request.
        operation: Operation,
        /// The namespace.
        namespace: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: ApiError,
    },
    /// The server refused a request for a reason retrying does not fix.
    #[error("{operation} in namespace {namespace:?} was refused: {error}")]
    Rejected {
        /// The request.
        operation: Operation,
        /// The namespace.
        namespace: String,
        /// The refusal.
        error: ApiError,
    },
    /// The fence refused the write: this process is no longer the leader.
    #[error(transparent)]
    Fenced(#[from] FenceError),
    /// The chosen pod is not an active pod of the workload.
    #[error("pod {pod:?} is not an active pod of {kind} {name:?}; re-read and re-decide")]
    UnknownVictim {
        /// The chosen pod.
        pod: String,
        /// The workload's kind.
        kind: WorkloadKind,
        /// The workload's name.
        name: String,
    },
    /// A deletion-cost annotation did not show in reads in time, so the
    /// scale-in was not made.
    #[error(
        "deletion cost {cost} on pod {pod:?} still not visible after {waited:?}; not scaling in"
    )]
    AnnotationNotVisible {
        /// The pod.
        pod: String,
        /// The cost written.
        cost: i32,
        /// How long the scaler waited.
        waited: Duration,
    },
    /// Scale-in was asked of a workload with no replicas.
    #[error("{kind} {name:?} has no replicas to remove")]
    NothingToRemove {
        /// The workload's kind.
        kind: WorkloadKind,
        /// The workload's name.
        name: String,
    },
}

impl ScaleError {
    /// A short, bounded label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "not_found",
            Self::Ambiguous { .. } => "ambiguous",
            Self::Gone { .. } => "gone",
            Self::Forbidden { .. } => "forbidden",
            Self::Unavailable { .. } => "unavailable",
            Self::Rejected { .. } => "rejected",
            Self::Fenced(_) => "fenced",
            Self::UnknownVictim { .. } => "unknown_victim",
            Self::AnnotationNotVisible { .. } => "annotation_not_visible",
            Self::NothingToRemove { .. } => "nothing_to_remove",
        }
    }
}
