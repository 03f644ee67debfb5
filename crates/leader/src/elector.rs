//! The election loop: drives a [`Candidate`] against a [`LeaseStore`] on
//! `tokio::time`, publishes its leadership and releases on shutdown.

use std::future::Future;
use std::sync::Arc;

use rtc_time::{SystemClock, WallClock};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

use crate::config::{ConfigError, ElectionConfig};
use crate::core::{Candidate, Change, Leadership, Plan};
use crate::guard::LeaderGuard;
use crate::store::{LeaseStore, StoreError, Versioned};

/// Gauge: 1 while this replica leads, else 0.
pub const METRIC_IS_LEADER: &str = "rtc_lb_is_leader";
/// Counter: leadership changes of this replica, by `reason`
/// (`acquired`, `deadline`, `lost`, `released`).
pub const METRIC_TRANSITIONS: &str = "rtc_lb_leader_transitions_total";
/// Histogram: how long successful renewals took, in seconds.
pub const METRIC_RENEW_DURATION: &str = "rtc_lb_leader_renew_duration_seconds";
/// Counter: renewals that failed while leading, by `reason` (a store error label).
pub const METRIC_RENEW_FAILURES: &str = "rtc_lb_leader_renew_failures_total";

/// Registers the descriptions of this crate's metrics with the installed recorder.
pub fn describe_metrics() {
    metrics::describe_gauge!(
        METRIC_IS_LEADER,
        "1 while this replica holds the lease and may act, else 0"
    );
    metrics::describe_counter!(
        METRIC_TRANSITIONS,
        "leadership changes of this replica, by reason (acquired, deadline, lost, released)"
    );
    metrics::describe_histogram!(
        METRIC_RENEW_DURATION,
        metrics::Unit::Seconds,
        "duration of successful lease renewals"
    );
    metrics::describe_counter!(
        METRIC_RENEW_FAILURES,
        "lease renewals that failed while leading, by reason"
    );
}

/// One candidate in the election for one Lease.
///
/// Create it, hand out [`guard`](Self::guard)s and
/// [`subscribe`](Self::subscribe)rs, then spawn [`run`](Self::run). Dropping
/// or aborting `run` without its shutdown signal releases nothing: the
/// others take over once the Lease expires, as after a crash.
#[derive(Debug)]
pub struct Elector<S> {
    store: S,
    config: ElectionConfig,
    wall: Arc<dyn WallClock>,
    candidate: Candidate,
    leadership: watch::Sender<Leadership>,
}

impl<S: LeaseStore> Elector<S> {
    /// A candidate for the Lease behind `store`, after checking `config`.
    ///
    /// # Errors
    ///
    /// The [`ConfigError`] of [`ElectionConfig::validate`].
    pub fn new(store: S, config: ElectionConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let (leadership, _) = watch::channel(Leadership::Follower { holder: None });
        Ok(Self {
            store,
            candidate: Candidate::new(&config),
            config,
            wall: Arc::new(SystemClock),
            leadership,
        })
    }

    /// Uses `clock` for the Lease's informational timestamps instead of the
    /// system clock. The election itself never reads the wall clock.
    #[must_use]
    pub fn with_wall_clock(mut self, clock: impl WallClock) -> Self {
        self.wall = Arc::new(clock);
        self
    }

    /// The leadership, updated on every change and every renewal (a renewal
    /// moves [`Leadership::Leader::until`]).
    pub fn subscribe(&self) -> watch::Receiver<Leadership> {
        self.leadership.subscribe()
    }

    /// A guard to check right before every write only the leader may make.
    pub fn guard(&self) -> LeaderGuard {
        LeaderGuard::new(self.leadership.subscribe())
    }

    /// Takes part in the election until `shutdown` completes, then steps
    /// down and releases the Lease if it holds it, so another candidate can
    /// take over on its next attempt instead of waiting for expiry.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let span = tracing::info_span!("leader_election", identity = %self.config.identity);
        async move {
            metrics::gauge!(METRIC_IS_LEADER).set(0.0);
            tokio::pin!(shutdown);
            loop {
                // Attempts start every retry period; one that took longer
                // (a request timed out) is followed at once by the next.
                let next = Instant::now() + self.config.retry_period;
                tokio::select! {
                    biased;
                    () = &mut shutdown => break,
                    () = self.attempt() => {}
                }
                let wake = self.candidate.deadline().map_or(next, |d| d.min(next));
                tokio::select! {
                    biased;
                    () = &mut shutdown => break,
                    () = tokio::time::sleep_until(wake) => {}
                }
                let change = self.candidate.expire(Instant::now());
                self.publish(change);
            }
            self.release().await;
        }
        .instrument(span)
        .await;
    }

    /// One try to acquire or renew: at most one write, or two when the
    /// first hits a conflict and a re-read says to try again.
    async fn attempt(&mut self) {
        let change = self.candidate.expire(Instant::now());
        self.publish(change);
        let mut plan = self.candidate.plan(self.wall.now());
        let mut conflicts = 0;
        loop {
            let leading = self.candidate.deadline().is_some();
            let sent = Instant::now();
            let written = match &plan {
                Plan::Idle => return,
                Plan::Read => match self.call(self.store.get()).await {
                    Ok(lease) => {
                        let (next, change) =
                            self.candidate
                                .on_read(Instant::now(), self.wall.now(), lease);
                        self.publish(change);
                        plan = next;
                        continue;
                    }
                    Err(error) => {
                        self.failed(leading, "read", &error);
                        return;
                    }
                },
                Plan::Create(record) => self.call(self.store.create(record)).await,
                Plan::Replace { record, version } => {
                    self.call(self.store.replace(record, version)).await
                }
            };
            match written {
                Ok(written) => {
                    if leading {
                        metrics::histogram!(METRIC_RENEW_DURATION)
                            .record(sent.elapsed().as_secs_f64());
                    }
                    let change = self.candidate.on_written(sent, Instant::now(), written);
                    self.publish(change);
                    return;
                }
                Err(error) => {
                    self.failed(leading, "write", &error);
                    if !matches!(error, StoreError::Conflict) || conflicts > 0 {
                        return;
                    }
                    // Someone wrote since our read: read again, never overwrite.
                    conflicts += 1;
                    plan = Plan::Read;
                }
            }
        }
    }

    /// Runs one store call, bounded by half the renew deadline (so a leader
    /// whose request hangs still has time for another) and, when leading,
    /// by the time left before the leader must step down.
    async fn call<T>(
        &self,
        request: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let mut limit = self.config.renew_deadline / 2;
        if let Some(deadline) = self.candidate.deadline() {
            limit = limit.min(deadline.saturating_duration_since(Instant::now()));
        }
        if limit.is_zero() {
            return Err(StoreError::Timeout(limit));
        }
        tokio::time::timeout(limit, request)
            .await
            .unwrap_or(Err(StoreError::Timeout(limit)))
    }

    fn failed(&self, leading: bool, operation: &'static str, error: &StoreError) {
        if leading {
            metrics::counter!(METRIC_RENEW_FAILURES, "reason" => error.label()).increment(1);
            tracing::warn!(operation, reason = error.label(), %error, "lease renewal failed");
        } else {
            tracing::debug!(operation, reason = error.label(), %error, "lease attempt failed");
        }
    }

    fn publish(&mut self, change: Option<Change>) {
        let leadership = self.candidate.leadership(Instant::now());
        self.leadership.send_if_modified(|current| {
            let modified = *current != leadership;
            *current = leadership;
            modified
        });
        match change {
            Some(Change::Acquired(token)) => {
                metrics::gauge!(METRIC_IS_LEADER).set(1.0);
                metrics::counter!(METRIC_TRANSITIONS, "reason" => "acquired").increment(1);
                tracing::info!(token, "acquired leadership");
            }
            Some(Change::SteppedDown(reason)) => {
                metrics::gauge!(METRIC_IS_LEADER).set(0.0);
                metrics::counter!(METRIC_TRANSITIONS, "reason" => reason.label()).increment(1);
                tracing::warn!(reason = reason.label(), "stepped down");
            }
            None => {}
        }
    }

    /// Steps down first, then clears the holder so others need not wait.
    async fn release(&mut self) {
        let (plan, change) = self.candidate.release(self.wall.now());
        self.publish(change);
        let Some(Plan::Replace { record, version }) = plan else {
            return;
        };
        let result = match self.call(self.store.replace(&record, &version)).await {
            Err(StoreError::Conflict) => {
                // A write of ours may have landed after we last read: re-read
                // and release only if the Lease still names us.
                match self.call(self.store.get()).await {
                    Ok(lease) => {
                        let retry = self.candidate.release_after_read(
                            Instant::now(),
                            self.wall.now(),
                            lease,
                        );
                        match retry {
                            Some(Plan::Replace { record, version }) => self
                                .call(self.store.replace(&record, &version))
                                .await
                                .map(drop),
                            _ => Ok(()),
                        }
                    }
                    Err(error) => Err(error),
                }
            }
            other => other.map(drop::<Versioned>),
        };
        match result {
            Ok(()) => tracing::info!("released the lease"),
            Err(error) => {
                tracing::warn!(reason = error.label(), %error, "could not release the lease; it will expire");
            }
        }
    }
}

#[cfg(test)]
mod tests;
