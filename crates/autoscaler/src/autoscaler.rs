//! The leader's loop: a tick every interval while this replica leads.

use crate::controller::{Controller, DecisionRecord};
use crate::state::StateRepo;
use rtc_heartbeat::FleetSnapshot;
use rtc_leader::ElectionConfig;
use rtc_leader::LeaderGuard;
use rtc_time::{SystemClock, WallClock};
use rtc_workload::{Fence, FenceError, Permit, WorkloadApi};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{error, info, warn};

/// How the leader's loop runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoopConfig {
    /// Time between two ticks (TICK_INTERVAL_MS, 5 s).
    pub tick_interval: Duration,
    /// Lease time that must be left before a write (LEADER_SAFETY_MARGIN_MS, 2 s).
    pub safety_margin: Duration,
    /// How long shutdown may take (SHUTDOWN_TIMEOUT_MS, 10 s); a tick may
    /// take as long, or one tick interval if that is longer.
    pub shutdown_timeout: Duration,
}

impl Default for LoopConfig {
    fn default() -> Self {
        Self {
            tick_interval: Duration::from_secs(5),
            safety_margin: Duration::from_secs(2),
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

impl LoopConfig {
    /// How long one tick may run before it is abandoned: the longer of the
    /// tick interval and the shutdown timeout, so that a tick under way when
    /// shutdown starts can still finish within the shutdown timeout.
    pub fn tick_deadline(&self) -> Duration {
        self.tick_interval.max(self.shutdown_timeout)
    }

    /// Checks the timings.
    ///
    /// # Errors
    ///
    /// [`ConfigError::ZeroTickInterval`] when the tick interval is zero.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.tick_interval.is_zero() {
            return Err(ConfigError::ZeroTickInterval);
        }
        Ok(())
    }

    /// Checks the safety margin against the election's timing: right after
    /// a renewal the leader has `renew_deadline` left, and just before the
    /// next one `renew_deadline - retry_period`; the margin must be below
    /// that, or the leader would refuse its own writes for part of every
    /// renewal cycle (or for all of it).
    ///
    /// # Errors
    ///
    /// [`ConfigError::MarginTooLarge`].
    pub fn validate_against(&self, election: &ElectionConfig) -> Result<(), ConfigError> {
        let window = election
            .renew_deadline
            .saturating_sub(election.retry_period);
        if self.safety_margin >= window {
            return Err(ConfigError::MarginTooLarge {
                margin: self.safety_margin,
                renew_deadline: election.renew_deadline,
                retry_period: election.retry_period,
            });
        }
        Ok(())
    }
}

/// A loop configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Ticks must be some time apart.
    #[error("the tick interval must be greater than zero")]
    ZeroTickInterval,
    /// The safety margin leaves no time to write between renewals.
    #[error(
        "the safety margin {margin:?} must be less than the renew deadline {renew_deadline:?} \
         minus the retry period {retry_period:?}, the least lease time a leader has between renewals"
    )]
    MarginTooLarge {
        /// LEADER_SAFETY_MARGIN_MS.
        margin: Duration,
        /// RENEW_DEADLINE_MS.
        renew_deadline: Duration,
        /// RETRY_PERIOD_MS.
        retry_period: Duration,
    },
}

/// The leader guard as the workload scaler's [`Fence`]: refuses writes
/// with less than `margin` of lease time left.
#[derive(Debug, Clone)]
pub struct LeaseFence {
    guard: LeaderGuard,
    margin: Duration,
}

impl LeaseFence {
    /// A fence that allows writes while `guard` leads with at least
    /// `margin` left.
    pub fn new(guard: LeaderGuard, margin: Duration) -> Self {
        Self { guard, margin }
    }
}

impl Fence for LeaseFence {
    /// The lease's token and the time until this replica's own renew
    /// deadline. Another replica can take the lease only a full lease
    /// duration after it last saw a renewal, which is at least
    /// `lease_duration - renew_deadline` later, so a request that ends
    /// within the permit ends while no one else can lead.
    fn check(&self) -> Result<Permit, FenceError> {
        self.guard
            .check(self.margin)
            .map(|f| Permit {
                token: f.token,
                remaining: f.remaining,
            })
            .map_err(|e| FenceError::new(e.to_string()))
    }
}

/// The leader's loop around a [`Controller`].
///
/// Every replica runs it; only the lease holder acts. Every
/// `tick_interval` it ages the latest heartbeat snapshot, sets
/// `rtc_lb_ring_nodes`, and, while the [`LeaderGuard`] says this replica
/// leads:
///
/// - for every new fencing token (a first acquisition, or leading again
///   after another replica led in between), resumes the stored decision
///   state (so a new leader keeps its predecessor's scale-in clock and
///   scale-out history) and claims the workload
///   ([`Controller::claim`]) before any scaling write, so writes an
///   earlier leader still has in flight fail at the API server;
/// - runs one [`Controller::tick`] at the wall clock's time, fenced by a
///   [`LeaseFence`]. A tick is never cancelled: every request in it ends
///   within the fence's time left, so the tick is bounded, and a write
///   that landed is always recorded in the state.
///
/// A follower only watches; a leader that loses the lease stops scaling at
/// once (the fence refuses its writes even before the loop notices).
/// Ticks never overlap; a tick under way when shutdown is asked for runs
/// to its end (bounded by its deadline) and the loop returns before the
/// next one.
pub struct Autoscaler<A, R> {
    config: LoopConfig,
    controller: Controller<A, R>,
    guard: LeaderGuard,
    fleet: watch::Receiver<Arc<FleetSnapshot>>,
    wall: Arc<dyn WallClock>,
}

impl<A, R> std::fmt::Debug for Autoscaler<A, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Autoscaler")
            .field("config", &self.config)
            .field("controller", &self.controller)
            .finish_non_exhaustive()
    }
}

impl<A: WorkloadApi, R: StateRepo> Autoscaler<A, R> {
    /// The loop of `controller`, acting while `guard` leads, over the
    /// snapshots of `fleet` (the heartbeat ingestor's
    /// [`snapshots`](rtc_heartbeat::IngestorHandle::snapshots)), on the
    /// system clock.
    ///
    /// # Errors
    ///
    /// The [`ConfigError`] of [`LoopConfig::validate`].
    pub fn new(
        config: LoopConfig,
        controller: Controller<A, R>,
        guard: LeaderGuard,
        fleet: watch::Receiver<Arc<FleetSnapshot>>,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            config,
            controller,
            guard,
            fleet,
            wall: Arc::new(SystemClock),
        })
    }

    /// Uses `clock` for the ticks' time instead of the system clock.
    #[must_use]
    pub fn with_wall_clock(mut self, clock: impl WallClock) -> Self {
        self.wall = Arc::new(clock);
        self
    }

    /// The last decisions, newest last, as they change.
    pub fn decisions(&self) -> watch::Receiver<Arc<Vec<DecisionRecord>>> {
        self.controller.decisions()
    }

    /// Runs until `shutdown` completes, then hands the controller back.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Controller<A, R> {
        let Self {
            config,
            mut controller,
            guard,
            fleet,
            wall,
        } = self;
        let fence = LeaseFence::new(guard.clone(), config.safety_margin);
        let deadline = config.tick_deadline();
        let mut ticks = tokio::time::interval(config.tick_interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The token this replica resumed and claimed under; a different
        // token means leadership was lost and regained in between.
        let mut resumed: Option<u64> = None;
        // The token the workload was claimed under.
        let mut claimed: Option<u64> = None;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                _ = ticks.tick() => {}
            }
            let snapshot = Arc::clone(&fleet.borrow());
            let samples = snapshot.samples(Instant::now());
            #[allow(clippy::cast_precision_loss, reason = "a gauge of a node count")]
            metrics::gauge!("rtc_lb_ring_nodes").set(samples.len() as f64);
            let token = match guard.check(Duration::ZERO) {
                Ok(lease) => lease.token,
                Err(_) => {
                    if resumed.take().is_some() {
                        warn!("lost leadership; scaling stops");
                    }
                    claimed = None;
                    continue;
                }
            };
            if resumed != Some(token) {
                info!(token, "leading: resuming the stored decision state");
                controller.resume().await;
                resumed = Some(token);
            }
            if claimed != Some(token) {
                match controller.claim(&fence).await {
                    Ok(()) => claimed = Some(token),
                    Err(e) => {
                        warn!(error = %e, "claiming the workload failed; no scaling until it succeeds");
                        continue;
                    }
                }
            }
            // The tick runs to completion even if shutdown is asked for
            // meanwhile (the loop checks before the next one), and is never
            // cancelled between a write and the state update.
            let started = Instant::now();
            match controller.tick(wall.now_ms(), &samples, &fence).await {
                Ok(_) => {}
                Err(e) => warn!(error = %e, "tick failed"),
            }
            let took = started.elapsed();
            if took > deadline {
                error!(took = ?took, deadline = ?deadline, "tick ran past its deadline");
            }
        }
        controller
    }
}

#[cfg(test)]
mod tests;
