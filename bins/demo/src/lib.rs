//! The project's main job: the whole scaling flow live on one machine.
//!
//! On the local stack (real kube-apiserver, controllers and scheduler, the
//! node agents running pods as processes), a run:
//!
//! 1. removes what an earlier run left, renders the local kustomize overlay
//!    of deploy/k8s with `kubectl kustomize`, points its ConfigMap at the
//!    stack's Redis and broker under a prefix of its own, and applies it
//!    with `kubectl apply --server-side` ([`fleet`]): two load-balancer pods
//!    and the socket workload (a Deployment, or a StatefulSet);
//! 2. drives WebSocket load through the load generator (`rtc-loadgen`), a
//!    spike then calm;
//! 3. watches, once a second, the workload, its pods, the leader and its
//!    decisions, every socket pod's heartbeat and the `/scale` writes the
//!    API server accepted ([`observe`]), shows them live ([`screen`]) and
//!    writes them to the run record ([`record`]);
//! 4. removes the fleet, draws the chart ([`chart`]) and writes the summary
//!    ([`run`]).
//!
//! [`compare`] runs the same load against the same socket Deployment scaled
//! by the load-balancer, by a HorizontalPodAutoscaler and by KEDA, and
//! measures each the same way.

pub mod chart;
pub mod compare;
pub mod fleet;
pub mod observe;
pub mod record;
pub mod run;
pub mod screen;

pub use run::{DemoConfig, DemoError, Outcome, report, run};
