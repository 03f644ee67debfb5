//! The presence/offline store and the registry of delivery topics, as the
//! relay sees them: two narrow traits. [`crate::redis::RedisStore`] is the
//! real one; `MemoryStore` (feature `test-util`) the double.

use std::future::Future;
use std::time::Duration;

pub use crate::core::presence::BufferLimits;
pub use crate::core::routing::Lookup;

/// The presence/offline store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A Redis command failed.
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    /// The store could not be reached (a test double's injected fault).
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Redis(_) => "redis",
            Self::Unavailable(_) => "unavailable",
        }
    }
}

/// Presence claims and offline buffers of one node's clients, with the
/// rules of [`crate::core::presence`]. Each implementation knows the node it
/// acts for.
pub trait PresenceStore: Send + Sync + 'static {
    /// Claims `client` for this node and takes the frames buffered for it,
    /// in one atomic step.
    fn connect(&self, client: &str)
    -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// Finds the node serving `client` when it is another node; else
    /// buffers `frame` for it, in one atomic step.
    fn route(
        &self,
        client: &str,
        frame: &str,
    ) -> impl Future<Output = Result<Lookup, StoreError>> + Send;

    /// Buffers `frame` for `client` whatever its presence says (its node's
    /// topic could not be reached).
    fn buffer(
        &self,
        client: &str,
        frame: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Renews this node's claim on `client` and takes the frames buffered
    /// for it meanwhile (a claim that lapsed and was taken again, or a frame
    /// buffered while the claim looked absent): `None` when another node
    /// has taken the client over.
    fn refresh(
        &self,
        client: &str,
    ) -> impl Future<Output = Result<Option<Vec<String>>, StoreError>> + Send;

    /// Releases this node's claim on `client`, if it still holds it.
    fn leave(&self, client: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The registry of delivery topics that may hold records, and the claims
/// of forwarders on the topics of nodes that are gone.
pub trait Registry: Send + Sync + 'static {
    /// Adds this node to the registry, scored `now_ms`, and clears a dead
    /// mark left from an earlier life.
    fn register(&self, now_ms: u64) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Every registered node.
    fn registered(&self) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// Whether `node`'s heartbeat liveness entry exists.
    fn is_live(&self, node: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Claims the forwarding of `node`'s topic for `ttl`; `false` when
    /// another node holds the claim.
    fn claim_forward(
        &self,
        node: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Extends the claim on `node`'s topic; `false` when it is no longer
    /// ours.
    fn renew_forward(
        &self,
        node: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Releases the claim on `node`'s topic if it is still ours.
    fn release_forward(&self, node: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// When `node` was first found dead (marking it `now_ms` if it was not).
    fn dead_since(
        &self,
        node: &str,
        now_ms: u64,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Removes `node` from the registry.
    fn retire(&self, node: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
}
