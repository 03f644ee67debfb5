//! The load-balancer side: a warm view of the fleet, kept by polling the
//! store in full.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rtc_time::{Backoff, WallClock};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::ConfigError;
use crate::fleet::{ApplyReport, FleetEvent, FleetSnapshot, FleetView, StoreRead};
use crate::record::{DecodeLimits, Resource};
use crate::status::LinkStatus;
use crate::store::{HeartbeatStore, StoreError};

/// What an ingestor needs to know.
#[derive(Debug, Clone, PartialEq)]
pub struct IngestorConfig {
    /// Time between full reads of the store (default 1 s). Departures and
    /// deregistrations are seen within one poll.
    pub poll_interval: Duration,
    /// STALE_AFTER (default 15 s): after the store lost its data, nodes are
    /// kept (aging) this long to give them time to publish again.
    pub stale_after: Duration,
    /// Index entries of nodes silent this long are pruned (default 10 min).
    pub prune_after: Duration,
    /// Heartbeats kept per node for trends (default 12: one minute at 5 s).
    pub history_len: usize,
    /// The decoder's bounds.
    pub limits: DecodeLimits,
    /// Pauses between failed polls; capped at `poll_interval`.
    pub backoff: Backoff,
}

impl Default for IngestorConfig {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(1),
            stale_after: Duration::from_secs(15),
            prune_after: Duration::from_secs(600),
            history_len: 12,
            limits: DecodeLimits::default(),
            backoff: Backoff {
                min: Duration::from_millis(100),
                max: Duration::from_secs(1),
            },
        }
    }
}

impl IngestorConfig {
    /// Checks the timings.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the first field that is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.poll_interval.is_zero() {
            return Err(ConfigError::ZeroInterval("poll_interval"));
        }
        if self.stale_after.is_zero() {
            return Err(ConfigError::ZeroInterval("stale_after"));
        }
        if self.backoff.min.is_zero() {
            return Err(ConfigError::ZeroInterval("backoff.min"));
        }
        if self.prune_after <= self.stale_after {
            return Err(ConfigError::PruneNotAboveStale {
                prune_after: self.prune_after,
                stale_after: self.stale_after,
            });
        }
        Ok(())
    }
}

/// Polls a [`HeartbeatStore`] and keeps a [`FleetView`].
///
/// Use [`poll_once`](Self::poll_once) to drive it by hand, or
/// [`spawn`](Self::spawn) to run it on its own task.
#[derive(Debug)]
pub struct Ingestor<S, C> {
    store: S,
    clock: C,
    config: IngestorConfig,
    view: FleetView,
    epoch_candidate: String,
    last_prune: Option<Instant>,
}

static EPOCH_COUNTER: AtomicU64 = AtomicU64::new(0);

impl<S: HeartbeatStore, C: WallClock> Ingestor<S, C> {
    /// An ingestor with an empty view.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when `config` does not validate.
    pub fn new(store: S, clock: C, config: IngestorConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        // Unique enough among readers: only used to notice that the store
        // lost its data, by seeing the value change.
        let epoch_candidate = format!(
            "{}-{}-{}",
            clock.now_ms(),
            std::process::id(),
            EPOCH_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        Ok(Self {
            view: FleetView::new(config.history_len, config.stale_after),
            store,
            clock,
            config,
            epoch_candidate,
            last_prune: None,
        })
    }

    /// The view as of the last successful poll.
    pub fn snapshot(&self) -> FleetSnapshot {
        self.view.snapshot()
    }

    /// Reads the whole store once and folds it into the view: epoch, index,
    /// every liveness entry. Prunes long-silent index entries now and then.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when any read fails; the view is then left as it was,
    /// and its ages keep growing.
    pub async fn poll_once(&mut self) -> Result<ApplyReport, StoreError> {
        let epoch = self.store.epoch(&self.epoch_candidate).await?;
        let ids = self.store.node_ids().await?;
        let payloads = self.store.latest(&ids).await?;
        let read = StoreRead {
            epoch,
            entries: ids.into_iter().zip(payloads).collect(),
        };
        let now = Instant::now();
        let report = self
            .view
            .apply(read, now, self.clock.now_ms(), &self.config.limits);
        record(&report, self.view.nodes().len());
        self.record_host_fractions(now);

        let prune_every = self.config.prune_after / 4;
        if self
            .last_prune
            .is_none_or(|at| now.duration_since(at) >= prune_every)
        {
            self.last_prune = Some(now);
            match self.store.prune(self.config.prune_after).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(pruned = n, "pruned silent heartbeat index entries"),
                Err(error) => tracing::debug!(%error, "heartbeat index prune failed"),
            }
        }
        Ok(report)
    }

    /// Sets `rtc_lb_nodes_without_limit{resource}`: fresh nodes whose latest
    /// heartbeat has a fraction of the host for the resource. Such nodes
    /// stay in the decision input; the gauge and the log line make them
    /// visible.
    fn record_host_fractions(&self, now: Instant) {
        let counts = crate::fleet::host_fractions(
            self.view.nodes().values().map(Arc::as_ref),
            now,
            self.config.stale_after,
        );
        for resource in Resource::ALL {
            #[allow(clippy::cast_precision_loss, reason = "a gauge of a node count")]
            metrics::gauge!("rtc_lb_nodes_without_limit", "resource" => resource.label())
                .set(counts.get(resource) as f64);
        }
    }

    /// Runs the poll loop on the current tokio runtime.
    pub fn spawn(self) -> IngestorHandle {
        let (snapshot_tx, snapshot) = watch::channel(Arc::new(self.view.snapshot()));
        let (status_tx, status) = watch::channel(LinkStatus::Starting);
        let (events, _) = broadcast::channel(1024);
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(self, snapshot_tx, status_tx, events.clone(), stop_rx));
        IngestorHandle {
            snapshot,
            status,
            events,
            stop,
            task: Some(task),
        }
    }
}

fn record(report: &ApplyReport, nodes: usize) {
    for rejection in &report.rejected {
        metrics::counter!("rtc_heartbeat_rejected_total", "reason" => rejection.error.label())
            .increment(1);
        tracing::warn!(node = %rejection.node, error = %rejection.error, "heartbeat rejected");
    }
    for event in &report.events {
        metrics::counter!("rtc_heartbeat_fleet_events_total", "event" => event.label())
            .increment(1);
        tracing::info!(?event, "fleet membership changed");
    }
    for seen in &report.host_fractions {
        tracing::warn!(
            node = %seen.node,
            boot = %seen.boot,
            resource = seen.resource.label(),
            "fractions are of the host, not the container; set resources.limits"
        );
    }
    if report.epoch_changed {
        metrics::counter!("rtc_heartbeat_store_resets_total").increment(1);
        tracing::warn!("heartbeat store lost its data; keeping known nodes while they republish");
    }
    #[allow(clippy::cast_precision_loss, reason = "a gauge of a node count")]
    metrics::gauge!("rtc_heartbeat_nodes").set(nodes as f64);
}

async fn run<S: HeartbeatStore, C: WallClock>(
    mut ingestor: Ingestor<S, C>,
    snapshot: watch::Sender<Arc<FleetSnapshot>>,
    status: watch::Sender<LinkStatus>,
    events: broadcast::Sender<FleetEvent>,
    mut stop: watch::Receiver<bool>,
) {
    let backoff = ingestor
        .config
        .backoff
        .capped(ingestor.config.poll_interval);
    let mut next = Instant::now();
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            () = tokio::time::sleep_until(next) => {}
        }
        let span = tracing::debug_span!("heartbeat_poll");
        // Polls start at a fixed rate (not a fixed pause after each poll),
        // so a departure is seen within one poll interval plus one poll.
        let started = Instant::now();
        let result = tokio::select! {
            biased;
            _ = stop.changed() => break,
            result = tracing::Instrument::instrument(ingestor.poll_once(), span) => result,
        };
        let now = Instant::now();
        match result {
            Ok(report) => {
                status.send_modify(|s| *s = s.succeeded(now));
                metrics::counter!("rtc_heartbeat_accepted_total").increment(report.accepted);
                snapshot.send_replace(Arc::new(ingestor.snapshot()));
                for event in report.events {
                    // No subscribers is fine.
                    let _ = events.send(event);
                }
                next = started + ingestor.config.poll_interval;
            }
            Err(error) => {
                metrics::counter!("rtc_heartbeat_poll_failures_total", "error" => error.label())
                    .increment(1);
                let mut attempts = 1;
                status.send_modify(|s| {
                    *s = s.failed(now, error.to_string());
                    if let LinkStatus::Failing { attempts: a, .. } = s {
                        attempts = *a;
                    }
                });
                tracing::warn!(%error, attempts, "heartbeat poll failed; ages keep growing");
                // Nodes aging past STALE_AFTER leave the count.
                ingestor.record_host_fractions(now);
                next = now + backoff.delay(attempts);
            }
        }
    }
    status.send_replace(LinkStatus::Stopped);
}

/// A running ingestor.
#[derive(Debug)]
pub struct IngestorHandle {
    snapshot: watch::Receiver<Arc<FleetSnapshot>>,
    status: watch::Receiver<LinkStatus>,
    events: broadcast::Sender<FleetEvent>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl IngestorHandle {
    /// The view as of the last successful poll. Age it with
    /// [`FleetSnapshot::samples`] at the caller's `now`: while polls fail
    /// the snapshot stays as it was and its ages keep growing.
    pub fn snapshot(&self) -> Arc<FleetSnapshot> {
        Arc::clone(&self.snapshot.borrow())
    }

    /// A receiver that changes after every successful poll.
    pub fn snapshots(&self) -> watch::Receiver<Arc<FleetSnapshot>> {
        self.snapshot.clone()
    }

    /// The ingestor's link to the store.
    pub fn status(&self) -> watch::Receiver<LinkStatus> {
        self.status.clone()
    }

    /// Membership changes from now on.
    pub fn events(&self) -> broadcast::Receiver<FleetEvent> {
        self.events.subscribe()
    }

    /// Stops polling and waits for the loop to end.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for IngestorHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryStore;
    use crate::record::{Heartbeat, Load, encode};
    use crate::store::PublishOptions;
    use rtc_time::ManualClock;

    const NOW_MS: u64 = 1_700_000_000_000;

    fn options() -> PublishOptions {
        PublishOptions {
            stale_after: Duration::from_secs(15),
            history_len: 10,
            history_ttl: Duration::from_secs(60),
        }
    }

    async fn publish(store: &MemoryStore, node: &str, seq: u64) {
        let payload = encode(&Heartbeat::new(node, "b", seq, NOW_MS, &Load::IDLE));
        store
            .publish(node, &payload, &options())
            .await
            .expect("store is up");
    }

    #[test]
    fn config_is_validated() {
        assert!(IngestorConfig::default().validate().is_ok());
        let bad = IngestorConfig {
            prune_after: Duration::from_secs(15),
            ..IngestorConfig::default()
        };
        assert!(matches!(
            bad.validate(),
            Err(ConfigError::PruneNotAboveStale { .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn nodes_without_a_limit_are_reported_once_per_boot_and_counted() {
        use crate::record::LimitSource;
        let store = MemoryStore::new();
        let host_memory = |seq, boot: &str| {
            let load = Load {
                mem_of: LimitSource::Host,
                ..Load::IDLE
            };
            encode(&Heartbeat::new("a", boot, seq, NOW_MS, &load))
        };
        let mut ingestor = Ingestor::new(
            store.clone(),
            ManualClock::new(NOW_MS),
            IngestorConfig::default(),
        )
        .expect("valid config");
        let mut seen = Vec::new();
        let polls = [(1, "b1"), (2, "b1"), (3, "b1"), (1, "b2"), (2, "b2")];
        for (i, (seq, boot)) in (1..).zip(polls) {
            store
                .publish("a", &host_memory(seq, boot), &options())
                .await
                .expect("store is up");
            publish(&store, "z", i).await;
            let report = ingestor.poll_once().await.expect("store is up");
            seen.extend(
                report
                    .host_fractions
                    .iter()
                    .map(|s| (s.node.clone(), s.boot.clone(), s.resource.label())),
            );
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert_eq!(
            seen,
            vec![
                ("a".to_owned(), "b1".to_owned(), "memory"),
                ("a".to_owned(), "b2".to_owned(), "memory"),
            ]
        );
        let counts = ingestor
            .snapshot()
            .host_fractions(Instant::now(), Duration::from_secs(15));
        assert_eq!((counts.cpu, counts.memory), (0, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreachable_store_freezes_the_view_while_ages_grow() {
        let store = MemoryStore::new();
        publish(&store, "a", 1).await;
        let ingestor = Ingestor::new(
            store.clone(),
            ManualClock::new(NOW_MS),
            IngestorConfig::default(),
        )
        .expect("valid config");
        let handle = ingestor.spawn();
        let mut events = handle.events();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(
            events.try_recv().ok(),
            Some(FleetEvent::Joined {
                node: "a".into(),
                boot: "b".into()
            })
        );
        store.set_down(true);
        tokio::time::sleep(Duration::from_secs(20)).await;
        let status = handle.status().borrow().clone();
        assert!(matches!(status, LinkStatus::Failing { .. }), "{status:?}");
        let samples = handle.snapshot().samples(Instant::now());
        assert_eq!(samples.len(), 1);
        assert!(samples[0].age_ms >= 20_000, "{}", samples[0].age_ms);

        // Back: the entry expired meanwhile, and the node is reported gone.
        store.set_down(false);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(handle.status().borrow().is_connected());
        assert!(handle.snapshot().nodes.is_empty());
        handle.shutdown().await;
    }
}
