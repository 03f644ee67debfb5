//! The socket side: one heartbeat per interval, whatever Redis is doing.

use std::sync::Arc;
use std::time::Duration;

use rtc_time::{Backoff, WallClock};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::ConfigError;
use crate::record::{Heartbeat, Load, encode, encode_base, validate_node_id};
use crate::status::LinkStatus;
use crate::store::{HeartbeatStore, PublishOptions, StoreError};

/// What a publisher needs to know. Build with [`PublisherConfig::new`] and
/// adjust the fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublisherConfig {
    /// The node id: the pod name.
    pub node_id: String,
    /// A value that differs on every process start (for example the start
    /// time in ms and the process id).
    pub boot_id: String,
    /// Time between heartbeats (HEARTBEAT_INTERVAL, default 5 s).
    pub interval: Duration,
    /// Lifetime of the liveness entry (STALE_AFTER, default 15 s): a node
    /// silent for this long is gone. Must exceed `interval`.
    pub stale_after: Duration,
    /// Approximate length of the node's history in Redis (default 120: ten
    /// minutes at 5 s).
    pub history_len: u64,
    /// How long the history outlives the last heartbeat (default 1 h).
    pub history_ttl: Duration,
    /// Pauses between failed attempts; the largest pause is capped at
    /// `interval`.
    pub backoff: Backoff,
    /// Write `cpu_of` and `mem_of` when they differ (default false: every
    /// record is [`encode_base`]'s, which readers built before those fields
    /// existed accept). Turn on once every reader is of a build that knows
    /// them; see [`encode`].
    pub per_resource_limits: bool,
}

impl PublisherConfig {
    /// Defaults for `node_id` and `boot_id`.
    pub fn new(node_id: impl Into<String>, boot_id: impl Into<String>) -> Self {
        Self {
            node_id: node_id.into(),
            boot_id: boot_id.into(),
            interval: Duration::from_secs(5),
            stale_after: Duration::from_secs(15),
            history_len: 120,
            history_ttl: Duration::from_secs(3600),
            backoff: Backoff {
                min: Duration::from_millis(200),
                max: Duration::from_secs(5),
            },
            per_resource_limits: false,
        }
    }

    /// Checks the ids and timings.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the first field that is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_node_id(&self.node_id).map_err(|_| ConfigError::NodeId(self.node_id.clone()))?;
        if crate::record::validate_boot_id(&self.boot_id).is_err() {
            return Err(ConfigError::BootId(self.boot_id.clone()));
        }
        if self.interval.is_zero() {
            return Err(ConfigError::ZeroInterval("interval"));
        }
        if self.stale_after <= self.interval {
            return Err(ConfigError::StaleNotAboveInterval {
                stale_after: self.stale_after,
                interval: self.interval,
            });
        }
        if self.backoff.min.is_zero() {
            return Err(ConfigError::ZeroInterval("backoff.min"));
        }
        Ok(())
    }

    fn options(&self) -> PublishOptions {
        PublishOptions {
            stale_after: self.stale_after,
            history_len: self.history_len,
            history_ttl: self.history_ttl.max(self.stale_after),
        }
    }
}

/// A running publisher. Dropping the handle stops publishing without
/// deregistering (the liveness entry then expires after STALE_AFTER).
#[derive(Debug)]
pub struct PublisherHandle<S> {
    status: watch::Receiver<LinkStatus>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    store: Arc<S>,
    node_id: String,
}

/// Starts publishing `node`'s heartbeats to `store` on the current tokio
/// runtime. Each heartbeat carries the latest value of `load`; a change of
/// its draining flag is published at once rather than at the next tick.
///
/// # Errors
///
/// [`ConfigError`] when `config` does not validate.
pub fn spawn<S, C>(
    config: PublisherConfig,
    store: S,
    clock: C,
    load: watch::Receiver<Load>,
) -> Result<PublisherHandle<S>, ConfigError>
where
    S: HeartbeatStore,
    C: WallClock,
{
    config.validate()?;
    let store = Arc::new(store);
    let (status_tx, status) = watch::channel(LinkStatus::Starting);
    let (stop, stop_rx) = watch::channel(false);
    let node_id = config.node_id.clone();
    let task = tokio::spawn(run(
        config,
        Arc::clone(&store),
        clock,
        load,
        status_tx,
        stop_rx,
    ));
    Ok(PublisherHandle {
        status,
        stop,
        task: Some(task),
        store,
        node_id,
    })
}

impl<S: HeartbeatStore> PublisherHandle<S> {
    /// The publisher's link to Redis: connected, or failing since when and
    /// with which error.
    pub fn status(&self) -> watch::Receiver<LinkStatus> {
        self.status.clone()
    }

    /// Stops publishing and waits for the loop to end, leaving the liveness
    /// entry to expire after STALE_AFTER.
    pub async fn stop(mut self) {
        self.halt().await;
    }

    /// Stops publishing, then removes the node's liveness entry so readers
    /// learn at their next poll that it has gone. Call at the end of a drain.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when Redis could not be reached within its command
    /// timeout; the entry then expires after STALE_AFTER anyway.
    pub async fn deregister(mut self) -> Result<(), StoreError> {
        self.halt().await;
        let result = self.store.deregister(&self.node_id).await;
        match &result {
            Ok(()) => tracing::info!("heartbeat deregistered"),
            Err(e) => {
                tracing::warn!(error = %e, "heartbeat deregister failed; the entry will expire")
            }
        }
        result
    }

    async fn halt(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            // A panicked or cancelled loop has stopped too.
            let _ = task.await;
        }
    }
}

impl<S> Drop for PublisherHandle<S> {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn run<S: HeartbeatStore, C: WallClock>(
    config: PublisherConfig,
    store: Arc<S>,
    clock: C,
    mut load: watch::Receiver<Load>,
    status: watch::Sender<LinkStatus>,
    mut stop: watch::Receiver<bool>,
) {
    let span = tracing::info_span!("heartbeat_publisher", node = %config.node_id);
    let _entered = span.enter();
    let options = config.options();
    let backoff = config.backoff.capped(config.interval);
    let mut seq: u64 = 0;
    let mut next = Instant::now();
    let mut published_draining: Option<bool> = None;
    let mut load_open = true;
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            () = tokio::time::sleep_until(next) => {}
            changed = load.changed(), if load_open => {
                match changed {
                    Ok(()) if Some(load.borrow().draining) != published_draining => {}
                    Ok(()) => continue,
                    Err(_) => { load_open = false; continue; }
                }
            }
        }
        let current = *load.borrow_and_update();
        seq = seq.saturating_add(1);
        let heartbeat = Heartbeat::new(
            &config.node_id,
            &config.boot_id,
            seq,
            clock.now_ms(),
            &current,
        );
        let payload = if config.per_resource_limits {
            encode(&heartbeat)
        } else {
            encode_base(&heartbeat)
        };
        let result = tokio::select! {
            biased;
            _ = stop.changed() => break,
            result = store.publish(&config.node_id, &payload, &options) => result,
        };
        let now = Instant::now();
        match result {
            Ok(()) => {
                published_draining = Some(current.draining);
                metrics::counter!("rtc_heartbeat_published_total").increment(1);
                status.send_modify(|s| *s = s.succeeded(now));
                next = now + config.interval;
            }
            Err(error) => {
                metrics::counter!("rtc_heartbeat_publish_failures_total", "error" => error.label())
                    .increment(1);
                let mut attempts = 1;
                status.send_modify(|s| {
                    *s = s.failed(now, error.to_string());
                    if let LinkStatus::Failing { attempts: a, .. } = s {
                        attempts = *a;
                    }
                });
                tracing::warn!(%error, attempts, "heartbeat publish failed");
                next = now + backoff.delay(attempts);
            }
        }
    }
    status.send_replace(LinkStatus::Stopped);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryStore;
    use crate::record::{DecodeLimits, decode};
    use rtc_time::ManualClock;

    fn config() -> PublisherConfig {
        PublisherConfig {
            interval: Duration::from_secs(5),
            stale_after: Duration::from_secs(15),
            ..PublisherConfig::new("socket-0", "boot-1")
        }
    }

    async fn latest(store: &MemoryStore) -> Option<Heartbeat> {
        let payload = store.latest(&["socket-0".to_owned()]).await.ok()?.pop()??;
        decode(&payload, u64::MAX / 2, &DecodeLimits::default()).ok()
    }

    #[test]
    fn config_is_validated() {
        assert!(config().validate().is_ok());
        let bad = PublisherConfig {
            stale_after: Duration::from_secs(5),
            ..config()
        };
        assert!(matches!(
            bad.validate(),
            Err(ConfigError::StaleNotAboveInterval { .. })
        ));
        let bad = PublisherConfig::new("no spaces", "b");
        assert!(matches!(bad.validate(), Err(ConfigError::NodeId(_))));
        let bad = PublisherConfig::new("n", "");
        assert!(matches!(bad.validate(), Err(ConfigError::BootId(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn publishes_every_interval_with_increasing_sequence() {
        let store = MemoryStore::new();
        let (_load_tx, load) = watch::channel(Load::IDLE);
        let handle =
            spawn(config(), store.clone(), ManualClock::new(1_000), load).expect("valid config");
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(latest(&store).await.map(|h| h.seq), Some(1));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(latest(&store).await.map(|h| h.seq), Some(2));
        assert!(handle.status().borrow().is_connected());
        handle.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_down_store_is_retried_with_backoff_and_reported() {
        let store = MemoryStore::new();
        store.set_down(true);
        let (_load_tx, load) = watch::channel(Load::IDLE);
        let handle =
            spawn(config(), store.clone(), ManualClock::new(1_000), load).expect("valid config");
        let status = handle.status();
        // Attempts at 0, 0.2, 0.6, 1.4, 3.0 s, then every 5 s (the interval).
        tokio::time::sleep(Duration::from_millis(3_100)).await;
        assert_eq!(store.calls(), 5);
        let LinkStatus::Failing {
            attempts,
            last_error,
            ..
        } = status.borrow().clone()
        else {
            panic!("expected failing, got {:?}", *status.borrow());
        };
        assert_eq!(attempts, 5);
        assert_eq!(last_error, "store unavailable");
        store.set_down(false);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(status.borrow().is_connected());
        assert!(latest(&store).await.is_some());
        handle.stop().await;
        assert_eq!(*status.borrow(), LinkStatus::Stopped);
    }

    #[tokio::test(start_paused = true)]
    async fn per_resource_sources_are_written_only_when_switched_on() {
        use crate::record::LimitSource;
        let one_limit = Load {
            mem_of: LimitSource::Host,
            ..Load::IDLE
        };
        for (on, expected) in [
            (false, (LimitSource::Host, LimitSource::Host)),
            (true, (LimitSource::Cgroup, LimitSource::Host)),
        ] {
            let store = MemoryStore::new();
            let (_load_tx, load) = watch::channel(one_limit);
            let config = PublisherConfig {
                per_resource_limits: on,
                ..config()
            };
            let handle =
                spawn(config, store.clone(), ManualClock::new(1_000), load).expect("valid config");
            tokio::time::sleep(Duration::from_millis(10)).await;
            let payload = store
                .latest(&["socket-0".to_owned()])
                .await
                .ok()
                .and_then(|mut p| p.pop().flatten())
                .expect("published");
            let text = String::from_utf8_lossy(&payload);
            assert_eq!(text.contains("cpu_of"), on, "{text}");
            let hb = latest(&store).await.expect("decodes");
            assert_eq!((hb.cpu_of, hb.mem_of), expected, "{text}");
            assert_eq!(hb.limit, LimitSource::Host);
            handle.stop().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn starting_to_drain_is_published_at_once() {
        let store = MemoryStore::new();
        let (load_tx, load) = watch::channel(Load::IDLE);
        let handle =
            spawn(config(), store.clone(), ManualClock::new(1_000), load).expect("valid config");
        tokio::time::sleep(Duration::from_millis(10)).await;
        // A load change that is not a drain waits for the next tick.
        load_tx.send_modify(|l| l.conn = 5);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(latest(&store).await.map(|h| h.conn), Some(0));
        load_tx.send_modify(|l| l.draining = true);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let latest = latest(&store).await.expect("published");
        assert!(latest.draining);
        assert_eq!((latest.seq, latest.conn), (2, 5));
        handle.deregister().await.expect("store is up");
        assert_eq!(
            store.latest(&["socket-0".to_owned()]).await.ok(),
            Some(vec![None])
        );
    }
}
