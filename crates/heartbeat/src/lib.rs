//! Socket-node heartbeats through Redis.
//!
//! - [`Heartbeat`], [`encode`] and [`decode`]: the versioned record a socket
//!   node writes once per interval, and the validating decoder every reader
//!   goes through.
//! - [`publisher::spawn`] (socket side): publishes every `interval`
//!   (HEARTBEAT_INTERVAL, 5 s) and removes the node at the end of a drain
//!   with [`PublisherHandle::deregister`].
//! - [`Ingestor`] (load-balancer side): a warm in-memory view of every
//!   node, whose [`FleetSnapshot::samples`] are the decision core's
//!   [`NodeSample`](rtc_decision::NodeSample)s with their age filled in.
//!
//! # What it promises
//!
//! - **Nothing unchecked is passed on.** A payload that is too large, not
//!   JSON, of an unknown schema version, missing a field, with a negative or
//!   out-of-range number, a bad id, a `sent_ms` too far in the future, a
//!   node id other than its key's, or a sequence going back within one boot
//!   is rejected with a [`DecodeError`], counted under its
//!   [`label`](DecodeError::label) in `rtc_heartbeat_rejected_total{reason}`
//!   and in [`FleetSnapshot::rejected_total`], and dropped. The node keeps
//!   its last valid heartbeat, which keeps aging.
//! - **Ages are the reader's.** A heartbeat's age is measured from when
//!   this reader first read it, by its own monotonic clock, never from the
//!   writer's `sent_ms`, so clock skew between pods cannot make old data
//!   look fresh. Ages are computed when asked ([`FleetSnapshot::samples`]
//!   takes `now`), so while Redis is unreachable they keep growing and the
//!   decision core counts those nodes as stale rather than as load.
//! - **Nodes without a limit are flagged, not dropped.** Fresh nodes whose
//!   latest heartbeat has a fraction of the host for CPU or memory are
//!   counted in `rtc_lb_nodes_without_limit{resource}`, and each is logged
//!   once per boot and resource ([`ApplyReport::host_fractions`]). They
//!   stay in the decision input: their connections and traffic are real
//!   load.
//! - **Redis down never stops a node.** The publisher runs on its own task;
//!   every command fails after the client's command timeout; failures are
//!   retried with backoff (capped at the interval) and reported on a watch
//!   channel as [`LinkStatus`].
//!
//! # Wire format
//!
//! JSON, about 250 bytes a record: cheap enough at fleet sizes (a thousand
//! nodes every five seconds is 50 KB/s), readable with `redis-cli`, and
//! decodable by other teams' tools without a schema compiler. Field names
//! are short but whole words. The decoder refuses unknown fields within a
//! version; a new field means a new version, and readers are upgraded
//! before writers.
//!
//! One exception: `cpu_of` and `mem_of` (what
//! each fraction is of, [`LimitSource`]) are optional within version 1. A
//! record without them reads as both equal to `limit`, which writers keep
//! (`cgroup` only when both are). [`encode`] writes them only when they
//! differ, so a node with both limits or none writes what every version-1
//! reader accepts; [`encode_base`] never writes them, for fleets whose
//! readers predate them ([`PublisherConfig::per_resource_limits`]).
//!
//! # Redis layout
//!
//! Under a prefix (default `rtc:hb:`, see [`KeyLayout`]):
//!
//! | key | type | content |
//! |---|---|---|
//! | `nodes` | sorted set | node id, scored by its last publish time (ms, Redis's clock) |
//! | `live:<node>` | string, TTL STALE_AFTER | the node's latest heartbeat |
//! | `hist:<node>` | stream, `MAXLEN ~ history_len`, TTL 1 h | the node's recent heartbeats (field `hb`) |
//! | `epoch` | string | a token set by the first reader to find it missing |
//!
//! A publish is one Lua script (SET with PX, ZADD, XADD, PEXPIRE), so the
//! liveness entry, the index and the history never disagree. Deregistering
//! is one script too (DEL the liveness entry, ZREM the node).
//!
//! Readers poll: each poll reads the epoch, the whole index (ZRANGE) and
//! every liveness entry (MGET in chunks of 500), so every poll is a full
//! resynchronisation and nothing depends on having seen an earlier message,
//! unlike pub/sub or keyspace notifications, which lose whatever happens
//! while a reader is disconnected. A thousand nodes cost three round trips
//! a second per reader. Index entries of nodes silent for `prune_after`
//! (10 min) are pruned by a script using Redis's own clock.
//!
//! # Failure behaviour
//!
//! - **A node stops heartbeating:** its liveness entry expires STALE_AFTER
//!   after its last publish (Redis's clock); the next poll reports it
//!   [`Departed`](FleetEvent::Departed) with [`DepartReason::Expired`].
//!   Before that it stays in the view, aging.
//! - **A node deregisters:** its entries are gone at once; the next poll
//!   (polls start every `poll_interval`, 1 s, so within one interval plus
//!   one poll) reports [`DepartReason::Removed`].
//! - **A reader loses Redis:** polls fail and are retried with backoff; the
//!   view is kept as it was and its ages keep growing; the status watch says
//!   since when it fails. On reconnection the next poll resynchronises
//!   everything, including departures that happened meanwhile.
//! - **Redis restarts empty (or is flushed):** the reader finds the epoch
//!   gone and sets a new one; seeing it change, it keeps the nodes it knew
//!   (aging) for STALE_AFTER so they can publish again, and only then
//!   reports those still missing as departed. Publishers simply write again
//!   at their next tick.
//! - **A publisher loses Redis:** its attempts fail after the command
//!   timeout and are retried with backoff; readers see its entry expire
//!   after STALE_AFTER, as for any silent node.
//!
//! Redis Cluster: the scripts touch several keys, so the prefix must carry
//! a hash tag (`{rtc-hb}:`) that keeps them in one slot.
//!
//! # Example
//!
//! ```no_run
//! use rtc_heartbeat::{
//!     Ingestor, IngestorConfig, KeyLayout, Load, PublisherConfig, RedisOptions, RedisStore,
//!     SystemClock, connect, publisher,
//! };
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let client = connect(&RedisOptions::new("redis://127.0.0.1:6379"))?;
//! let store = RedisStore::new(client, KeyLayout::default());
//!
//! // Socket side.
//! let (load, load_rx) = tokio::sync::watch::channel(Load::IDLE);
//! let node = publisher::spawn(
//!     PublisherConfig::new("socket-0", "boot-1"),
//!     store.clone(),
//!     SystemClock,
//!     load_rx,
//! )?;
//! load.send_modify(|l| l.conn = 900);
//!
//! // Load-balancer side.
//! let fleet = Ingestor::new(store, SystemClock, IngestorConfig::default())?.spawn();
//! let samples = fleet.snapshot().samples(tokio::time::Instant::now());
//! # let _ = samples;
//!
//! // End of drain.
//! node.deregister().await?;
//! # Ok(())
//! # }
//! ```

mod fleet;
mod ingestor;
#[cfg(any(test, feature = "test-util"))]
mod memory;
pub mod publisher;
mod record;
mod status;
mod store;

use std::time::Duration;

pub use fleet::{
    ApplyReport, DepartReason, FleetEvent, FleetSnapshot, FleetView, HostFractionSeen,
    HostFractions, NodeEntry, Received, Rejection, StoreRead, host_fractions, observation,
};
pub use ingestor::{Ingestor, IngestorConfig, IngestorHandle};
#[cfg(any(test, feature = "test-util"))]
pub use memory::MemoryStore;
pub use publisher::{PublisherConfig, PublisherHandle};
pub use record::{
    DecodeError, DecodeLimits, Heartbeat, LimitSource, Load, MAX_BOOT_ID_LEN, MAX_NODE_ID_LEN,
    Resource, SCHEMA_VERSION, decode, encode, encode_base, validate_boot_id, validate_node_id,
};
pub use status::LinkStatus;
// The clock and the backoff the publisher and the ingestor take, so their
// callers need not name rtc-time themselves.
pub use rtc_time::{Backoff, ManualClock, SystemClock, WallClock};
// The client setup lives in rtc-redis; named here too so that callers of
// this crate need not depend on it.
pub use rtc_redis::{RedisOptions, connect};
pub use store::{HeartbeatStore, KeyLayout, PublishOptions, RedisStore, StoreError};

/// Registers the descriptions of this crate's metrics with the installed
/// recorder.
pub fn describe_metrics() {
    metrics::describe_gauge!(
        "rtc_lb_nodes_without_limit",
        "Fresh socket nodes whose latest heartbeat reports the resource (cpu, memory) as a fraction of the host, not of a container limit."
    );
}

/// A publisher or ingestor configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The node id is not a valid id.
    #[error("node id {0:?} is not valid: use 1 to 253 characters from [A-Za-z0-9._-]")]
    NodeId(String),
    /// The boot id is not a valid id.
    #[error("boot id {0:?} is not valid: use 1 to 64 characters from [A-Za-z0-9._-]")]
    BootId(String),
    /// A duration that must be positive is zero.
    #[error("{0} must be greater than zero")]
    ZeroInterval(&'static str),
    /// STALE_AFTER must leave room for at least one missed heartbeat.
    #[error("stale_after ({stale_after:?}) must be greater than the interval ({interval:?})")]
    StaleNotAboveInterval {
        /// STALE_AFTER.
        stale_after: Duration,
        /// The heartbeat interval.
        interval: Duration,
    },
    /// Pruning must not remove nodes that may still be alive.
    #[error("prune_after ({prune_after:?}) must be greater than stale_after ({stale_after:?})")]
    PruneNotAboveStale {
        /// The prune age.
        prune_after: Duration,
        /// STALE_AFTER.
        stale_after: Duration,
    },
}

impl ConfigError {
    /// A short, fixed label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NodeId(_) => "node_id",
            Self::BootId(_) => "boot_id",
            Self::ZeroInterval(_) => "zero_interval",
            Self::StaleNotAboveInterval { .. } => "stale_not_above_interval",
            Self::PruneNotAboveStale { .. } => "prune_not_above_stale",
        }
    }
}
