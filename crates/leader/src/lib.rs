//! Leader election on a Kubernetes `coordination.k8s.io/v1` Lease, so that
//! of several load-balancer replicas exactly one scales at a time.
//!
//! What it promises:
//! - **client-go's protocol and defaults**: acquire, renew and release the
//!   Lease with lease duration 15 s, renew deadline 10 s and retry period
//!   2 s, configurable, and `lease > renew deadline > 1.2 × retry` checked
//!   at start ([`ElectionConfig::validate`]).
//! - **Compare-and-swap only**: every write carries the resourceVersion it
//!   was based on; a 409 means re-read, never overwrite.
//! - **No wall clock in the decision**: another holder's claim expires when
//!   this candidate has seen the Lease unchanged for the claimed duration on
//!   its own monotonic clock. The timestamps in the Lease are written for
//!   people and never compared, so clock skew between pods cannot make two
//!   leaders.
//! - **The leader steps down first**: a leader counts from when it sent its
//!   last successful renewal and stops acting `renew_deadline` later, before
//!   anyone else can see the Lease expire.
//! - **A fencing token and a guard**: leadership is published on a watch
//!   channel as [`Leadership`], with the Lease's transition count at
//!   acquisition as the token. [`LeaderGuard::check`] answers "am I still
//!   leader, with how much time left?" from the clock at the moment of the
//!   call and refuses with less than the caller's margin left.
//! - **Graceful release** on shutdown, so failover is immediate.
//! - **Metrics**: `rtc_lb_is_leader`, `rtc_lb_leader_transitions_total`,
//!   `rtc_lb_leader_renew_duration_seconds`,
//!   `rtc_lb_leader_renew_failures_total`.
//!
//! The rules live in the pure [`Candidate`] (time passed in); the Kubernetes
//! calls sit behind the narrow [`LeaseStore`] trait ([`KubeLeaseStore`]; an
//! in-memory double with fault injection, `MemoryLeaseStore`, comes with the
//! `test-util` feature). The algorithm and the reasoning behind it:
//! `docs/leader-election.md` in the repository.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use rtc_leader::{ElectionConfig, Elector, KubeLeaseStore};
//!
//! # async fn example(client: kube::Client) -> Result<(), Box<dyn std::error::Error>> {
//! let store = KubeLeaseStore::new(client, "rtc", "rtc-load-balancer");
//! let elector = Elector::new(store, ElectionConfig::new("load-balancer-0"))?;
//! let guard = elector.guard();
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let election = tokio::spawn(elector.run(async move {
//!     let _ = stopped.await;
//! }));
//!
//! // Right before every scale write:
//! match guard.check(Duration::from_secs(2)) {
//!     Ok(fence) => println!("may write, token {} with {:?} left", fence.token, fence.remaining),
//!     Err(not_leader) => println!("must not write: {not_leader}"),
//! }
//!
//! // On shutdown: step down and release, so another replica takes over at once.
//! let _ = stop.send(());
//! election.await?;
//! # Ok(())
//! # }
//! ```

mod config;
mod core;
mod elector;
mod guard;
mod kube;
#[cfg(any(test, feature = "test-util"))]
mod memory;
mod store;

pub use crate::config::{
    ConfigError, DEFAULT_LEASE_DURATION, DEFAULT_RENEW_DEADLINE, DEFAULT_RETRY_PERIOD,
    ElectionConfig,
};
pub use crate::core::{Candidate, Change, Leadership, Plan, StepDown};
pub use crate::elector::{
    Elector, METRIC_IS_LEADER, METRIC_RENEW_DURATION, METRIC_RENEW_FAILURES, METRIC_TRANSITIONS,
    describe_metrics,
};
pub use crate::guard::{Fence, LeaderGuard, NotLeader};
pub use crate::kube::KubeLeaseStore;
#[cfg(any(test, feature = "test-util"))]
pub use crate::memory::{Fault, MemoryLeaseStore};
pub use crate::store::{LeaseRecord, LeaseStore, StoreError, Versioned};
// The clock `Elector::with_wall_clock` takes, so callers need not name
// rtc-time themselves.
pub use rtc_time::{SkewedClock, SystemClock, WallClock};
