//! The socket fleet's workload scaler: the only place the load balancer
//! writes to the Kubernetes API to change the number of socket nodes.
//!
//! What it does and promises:
//! - **Finds the workload.** [`WorkloadScaler::detect`] looks for a
//!   Deployment and a StatefulSet named `SOCKET_WORKLOAD_NAME` and refuses to
//!   guess when both or neither exist, or when RBAC forbids the read, with an
//!   error that says which. It detects again when the workload is deleted or
//!   replaced.
//! - **Never fights another writer.** [`WorkloadScaler::current`] reads spec
//!   and ready replicas and the resourceVersion; [`WorkloadScaler::scale_to`]
//!   writes `/scale` conditioned on that resourceVersion. A 409 comes back as
//!   [`ScaleOutcome::Conflict`] for the caller to re-read and re-decide; it is
//!   never retried with the same target.
//! - **Stays in bounds.** Targets are clamped to `[SOCKET_MIN_REPLICAS,
//!   SOCKET_MAX_REPLICAS]`, validated once by [`ScalerConfig::new`].
//! - **Removes the pod it chose, or says which one goes.**
//!   [`WorkloadScaler::prepare_scale_in`] gives the chosen pod the lowest
//!   `controller.kubernetes.io/pod-deletion-cost` on a Deployment's pods and
//!   waits until the values are visible; on a StatefulSet, which always
//!   removes its highest ordinal, it names that pod instead.
//! - **Only writes while allowed.** Every write (pod patches and `/scale`,
//!   retries included) is preceded by a [`Fence`] check, which the leader
//!   election's guard implements.
//! - **Retries what is worth retrying.** Timeouts, 5xx and 429 are retried
//!   with backoff within [`RetryPolicy`]; a 403 is reported once, naming the
//!   missing verb and resource, and not retried.
//!
//! All requests go through the narrow [`WorkloadApi`] trait:
//! [`KubeWorkloadApi`] sends them with a kube client, and `FakeWorkloadApi`
//! (feature `test-util`) keeps objects in memory and injects faults.
//! `docs/workload-scaling.md` explains the Kubernetes behaviour behind all of
//! this, and `deploy/k8s/base/01-rbac.yaml` grants exactly the requests made.
//!
//! # Example
//!
//! ```no_run
//! use std::collections::BTreeMap;
//! use rtc_workload::{AlwaysValid, KubeWorkloadApi, ScaleOutcome, ScalerConfig, WorkloadScaler};
//!
//! # async fn run(client: kube::Client) -> Result<(), Box<dyn std::error::Error>> {
//! let config = ScalerConfig::new("socket", 2, 50)?;
//! let scaler = WorkloadScaler::new(KubeWorkloadApi::new(client, "rtc"), config);
//!
//! let read = scaler.current().await?;
//! // Scale in by one, removing the least-loaded pod where the kind allows it.
//! let loads = BTreeMap::from([("socket-a".to_owned(), 12), ("socket-b".to_owned(), 340)]);
//! let plan = scaler.prepare_scale_in(&read, "socket-a", &loads, &AlwaysValid).await?;
//! println!("draining {}", plan.victim);
//! let target = read.spec_replicas - 1;
//! match scaler.scale_to(&read, target, "low-load", &AlwaysValid).await? {
//!     ScaleOutcome::Conflict { .. } => { /* re-read and decide again */ }
//!     outcome => println!("{outcome:?}"),
//! }
//! # Ok(())
//! # }
//! ```

mod api;
mod config;
mod error;
#[cfg(any(test, feature = "test-util"))]
mod fake;
mod fence;
mod kube_api;
mod scaler;
mod victim;

pub use api::{ApiError, Operation, PodState, WorkloadApi, WorkloadKind, WorkloadState};
pub use config::{
    Bound, Clamped, ConfigError, DEFAULT_MAX_REPLICAS, DEFAULT_MIN_REPLICAS, RetryPolicy,
    ScalerConfig,
};
pub use error::ScaleError;
#[cfg(any(test, feature = "test-util"))]
pub use fake::{FakeWorkloadApi, Fault, Method};
pub use fence::{AlwaysValid, FENCING_TOKEN_ANNOTATION, Fence, FenceError, FixedToken, Permit};
pub use kube_api::KubeWorkloadApi;
pub use scaler::{ScaleOutcome, WorkloadScaler};
pub use victim::{
    DELETION_COST_ANNOTATION, Override, ScaleInPlan, UNKNOWN_LOAD_COST, VICTIM_COST,
    deletion_costs, replica_set_victim, stateful_set_victim,
};

#[cfg(test)]
mod tests;
