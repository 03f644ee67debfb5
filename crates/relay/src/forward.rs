//! The forwarder: hands on what is left in the delivery topic of a node
//! that is gone, so a node killed without a drain loses nothing that was
//! already published to its topic.
//!
//! Every node runs one. Each `scan_interval` it lists the registry of
//! delivery topics (`<relay prefix>nodes`, where every node adds itself on
//! start) and, for each other node whose heartbeat liveness entry
//! (`<heartbeat prefix>live:<node>`, TTL STALE_AFTER, removed at the end of a
//! drain) is gone:
//!
//! 1. claims it with `SET <relay prefix>forward:<node> <self> NX PX
//!    claim_ttl`, so one forwarder at a time reads a topic;
//! 2. reads the dead node's committed offset (OffsetFetch, group
//!    `rtc-node-<node>`), then its topic from there to the high watermark,
//!    handing each record to its recipient here, on the recipient's current
//!    node, or into its offline buffer (a presence still naming the dead
//!    node counts as none), and commits under the dead node's group after
//!    each batch, renewing the claim;
//! 3. stops early when the node's heartbeat comes back (it restarted under
//!    the same name and reads its topic itself) or the claim is lost;
//! 4. once the topic is read to the end and the node has been gone for
//!    `retire_after` (longer than PRESENCE_TTL, so no presence can still
//!    send messages there), removes it from the registry.
//!
//! At least once: a record is committed only after it was handed on, and a
//! record handed to a connection here only once that connection wrote it,
//! so a forwarder that dies mid-way leaves the rest (and perhaps a few
//! records again) to the next. A pass whose records are still queued here
//! after half a claim's lifetime stops without retiring the node; the next
//! scan reads them again.

use std::sync::Arc;
use std::time::Duration;

use rtc_time::Backoff;
use tokio::sync::watch;

use crate::bus::{Bus, BusError, SHORT_WAIT_MS, Topic};
use crate::core::cursor::resume_at;
use crate::core::forwarding::{gone, retire_due};
use crate::relay::Relay;
use crate::store::{PresenceStore, Registry, StoreError};

/// How the forwarder runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardConfig {
    /// Time between scans of the registry.
    pub scan_interval: Duration,
    /// Lifetime of a claim; renewed after every batch.
    pub claim_ttl: Duration,
    /// How long a node must have been gone, its topic read to the end,
    /// before it leaves the registry.
    pub retire_after: Duration,
}

/// A forwarding pass failed; the next scan tries again from the last
/// committed offset.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The store failed.
    #[error("forwarding {node}: {source}")]
    Store {
        /// The dead node.
        node: String,
        /// Why.
        source: StoreError,
    },
    /// The committed offset could not be read or written.
    #[error("forwarding {node}: {source}")]
    Offsets {
        /// The dead node.
        node: String,
        /// Why.
        source: BusError,
    },
    /// The topic could not be read.
    #[error("forwarding {node}: reading its delivery topic: {source}")]
    Bus {
        /// The dead node.
        node: String,
        /// Why.
        source: BusError,
    },
}

impl ForwardError {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Store { .. } => "store",
            Self::Offsets { .. } => "offsets",
            Self::Bus { .. } => "bus",
        }
    }
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pass {
    /// Records handed on.
    pub forwarded: u64,
    /// The topic was read to the end.
    pub caught_up: bool,
    /// The node left the registry.
    pub retired: bool,
    /// Stopped early: the node came back, the claim was lost, or records
    /// handed to connections here were not written in time.
    pub interrupted: bool,
}

/// Registers this node's topic, then scans every `scan_interval` until
/// `stop` is set.
pub async fn run<S, B>(
    relay: Arc<Relay<S, B>>,
    config: ForwardConfig,
    mut stop: watch::Receiver<bool>,
) where
    S: PresenceStore + Registry,
    B: Bus,
{
    // In the registry first, so that a forwarder finds this topic if this
    // node dies; retried 200 ms after a failure, doubling, at most the scan
    // interval.
    let backoff = Backoff::new(Duration::from_millis(200), config.scan_interval);
    let mut failures: u32 = 0;
    while let Err(e) = relay.store().register(relay.wall_ms()).await {
        tracing::warn!(error = %e, "registering the delivery topic; retrying");
        failures = failures.saturating_add(1);
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(backoff.delay(failures)) => {}
        }
    }
    let mut tick = tokio::time::interval(config.scan_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            _ = tick.tick() => {}
        }
        if let Err(e) = scan(&relay, &config).await {
            tracing::warn!(error = %e, "scanning for nodes that are gone failed");
        }
    }
}

/// One scan: forwards the topic of every registered node without a
/// heartbeat that no other node is forwarding.
///
/// # Errors
///
/// [`StoreError`] when the registry cannot be read; a failed pass is logged
/// and counted, and does not stop the scan.
pub async fn scan<S, B>(relay: &Relay<S, B>, config: &ForwardConfig) -> Result<(), StoreError>
where
    S: PresenceStore + Registry,
    B: Bus,
{
    let store = relay.store();
    for node in store.registered().await? {
        if node == relay.node() || !gone(&node, relay.node(), store.is_live(&node).await?) {
            continue;
        }
        if !store.claim_forward(&node, config.claim_ttl).await? {
            continue;
        }
        match forward(relay, &node, config).await {
            Ok(pass) if pass.forwarded > 0 || pass.retired => {
                tracing::info!(%node, forwarded = pass.forwarded, retired = pass.retired, "forwarded the topic of a node that is gone");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "forwarding failed; the next scan resumes from the committed offset");
                metrics::counter!("rtc_socket_forward_errors_total").increment(1);
            }
        }
        if let Err(e) = store.release_forward(&node).await {
            tracing::debug!(error = %e, %node, "releasing the forward claim; it expires");
        }
    }
    Ok(())
}

/// Forwards `dead`'s topic from its committed offset to the high watermark.
/// The caller holds the claim.
///
/// # Errors
///
/// [`ForwardError`] when the store, the offsets or the topic fail.
pub async fn forward<S, B>(
    relay: &Relay<S, B>,
    dead: &str,
    config: &ForwardConfig,
) -> Result<Pass, ForwardError>
where
    S: PresenceStore + Registry,
    B: Bus,
{
    let store = relay.store();
    let store_err = |source| ForwardError::Store {
        node: dead.to_owned(),
        source,
    };
    let offsets_err = |source| ForwardError::Offsets {
        node: dead.to_owned(),
        source,
    };
    let bus_err = |source| ForwardError::Bus {
        node: dead.to_owned(),
        source,
    };
    let since = store
        .dead_since(dead, relay.wall_ms())
        .await
        .map_err(store_err)?;
    let mut pass = Pass::default();
    let topic = match relay.bus().open(dead).await {
        Ok(t) => t,
        Err(e) => {
            // No topic: nothing was ever sent there, or it was deleted.
            tracing::info!(error = %e, dead, "the delivery topic of a node that is gone cannot be read");
            pass.caught_up = true;
            return retire(relay, dead, since, config, pass).await;
        }
    };
    let mut position = resume_at(topic.committed().await.map_err(offsets_err)?);
    let mut committed = position;
    loop {
        let batch = match topic.fetch(position, SHORT_WAIT_MS).await {
            Ok(b) => b,
            Err(e) if e.is_out_of_range() => {
                position = topic.earliest().await.map_err(bus_err)?;
                continue;
            }
            Err(e) => return Err(bus_err(e)),
        };
        relay.forward_all(dead, &batch.deliveries).await;
        let count = batch.deliveries.len() as u64;
        pass.forwarded += count;
        metrics::counter!("rtc_socket_forwarded_total").increment(count);
        position = batch.next;
        let at = relay.commit_point(topic.name(), position);
        if at != committed {
            topic.commit(at).await.map_err(offsets_err)?;
            committed = at;
        }
        if position >= batch.high_watermark {
            pass.caught_up = true;
            break;
        }
        let back = store.is_live(dead).await.map_err(store_err)?;
        let ours = store
            .renew_forward(dead, config.claim_ttl)
            .await
            .map_err(store_err)?;
        if back || !ours {
            pass.interrupted = true;
            return Ok(pass);
        }
    }
    if committed < position {
        // Records queued for connections here: committed once written.
        let deadline = tokio::time::Instant::now() + config.claim_ttl / 2;
        while relay.holds_records_of(topic.name()) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(HELD_POLL).await;
        }
        let at = relay.commit_point(topic.name(), position);
        if at != committed {
            topic.commit(at).await.map_err(offsets_err)?;
        }
        if at < position {
            pass.interrupted = true;
            return Ok(pass);
        }
    }
    retire(relay, dead, since, config, pass).await
}

/// How often a caught-up pass looks whether the records it queued here were
/// written.
const HELD_POLL: Duration = Duration::from_millis(20);

async fn retire<S, B>(
    relay: &Relay<S, B>,
    dead: &str,
    since: u64,
    config: &ForwardConfig,
    mut pass: Pass,
) -> Result<Pass, ForwardError>
where
    S: PresenceStore + Registry,
    B: Bus,
{
    if retire_due(since, relay.wall_ms(), config.retire_after) {
        relay
            .store()
            .retire(dead)
            .await
            .map_err(|source| ForwardError::Store {
                node: dead.to_owned(),
                source,
            })?;
        pass.retired = true;
    }
    Ok(pass)
}
