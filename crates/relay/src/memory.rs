//! In-memory doubles of the store and the bus, for tests of code on top of
//! the relay: [`MemoryRedis`] hands out one [`MemoryStore`] per node over
//! shared state, as one Redis would, and [`MemoryBus`] holds every node's
//! delivery topic. Both run the same rules as the real ones (the presence
//! rules are [`crate::core::presence`] itself), take their time from
//! `tokio::time` (so paused-time tests step it), and can be taken down to
//! inject faults.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::batch::Receipt;
use crate::bus::{Batch, Bus, BusError, Delivery, Topic};
use crate::core::group_of;
use crate::core::presence::{BufferLimits, PresenceBook, ttl_ms};
use crate::store::{Lookup, PresenceStore, Registry, StoreError};

#[expect(
    clippy::disallowed_types,
    reason = "the doubles' state is locked only through here, in sync code, and the guard is never held across an .await"
)]
fn lock<T>(m: &std::sync::Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Debug, Default)]
struct RedisState {
    book: PresenceBook,
    nodes: BTreeSet<String>,
    live: BTreeSet<String>,
    claims: BTreeMap<String, (String, u64)>,
    dead: BTreeMap<String, u64>,
}

#[derive(Debug)]
#[expect(
    clippy::disallowed_types,
    reason = "the state is locked only in sync code, never across an .await"
)]
struct Shared<T> {
    state: std::sync::Mutex<T>,
    down: AtomicBool,
    origin: Instant,
}

impl<T: Default> Shared<T> {
    #[expect(
        clippy::disallowed_types,
        reason = "makes the state lock, taken only in sync code"
    )]
    fn new() -> Arc<Self> {
        Arc::new(Self {
            state: std::sync::Mutex::new(T::default()),
            down: AtomicBool::new(false),
            origin: Instant::now(),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// One in-memory "Redis" shared by the [`MemoryStore`]s of several nodes.
#[derive(Debug, Clone)]
pub struct MemoryRedis(Arc<Shared<RedisState>>);

impl Default for MemoryRedis {
    fn default() -> Self {
        Self(Shared::new())
    }
}

impl MemoryRedis {
    /// The store of `node`.
    pub fn store(&self, node: &str, presence_ttl: Duration, limits: BufferLimits) -> MemoryStore {
        MemoryStore {
            shared: Arc::clone(&self.0),
            node: node.to_owned(),
            presence_ttl,
            limits,
        }
    }

    /// While `down`, every call fails with [`StoreError::Unavailable`].
    pub fn set_down(&self, down: bool) {
        self.0.down.store(down, Ordering::Relaxed);
    }

    /// Sets whether `node`'s heartbeat liveness entry exists.
    pub fn set_live(&self, node: &str, live: bool) {
        let mut s = lock(&self.0.state);
        if live {
            s.live.insert(node.to_owned());
        } else {
            s.live.remove(node);
        }
    }

    /// The node holding `client` now.
    pub fn holder(&self, client: &str) -> Option<String> {
        let now = self.0.now_ms();
        lock(&self.0.state)
            .book
            .holder(now, client)
            .map(str::to_owned)
    }

    /// The frames buffered for `client` now.
    pub fn inbox(&self, client: &str) -> Vec<String> {
        let now = self.0.now_ms();
        lock(&self.0.state)
            .book
            .inbox(now, client)
            .into_iter()
            .map(str::to_owned)
            .collect()
    }
}

/// One node's view of a [`MemoryRedis`].
#[derive(Debug, Clone)]
pub struct MemoryStore {
    shared: Arc<Shared<RedisState>>,
    node: String,
    presence_ttl: Duration,
    limits: BufferLimits,
}

impl MemoryStore {
    fn with<R>(&self, f: impl FnOnce(&mut RedisState, u64) -> R) -> Result<R, StoreError> {
        if self.shared.down.load(Ordering::Relaxed) {
            return Err(StoreError::Unavailable(
                "the memory store is down".to_owned(),
            ));
        }
        let now = self.shared.now_ms();
        Ok(f(&mut lock(&self.shared.state), now))
    }
}

impl PresenceStore for MemoryStore {
    async fn connect(&self, client: &str) -> Result<Vec<String>, StoreError> {
        self.with(|s, now| s.book.connect(now, client, &self.node, self.presence_ttl))
    }

    async fn route(&self, client: &str, frame: &str) -> Result<Lookup, StoreError> {
        self.with(|s, now| s.book.route(now, client, &self.node, frame, self.limits))
    }

    async fn buffer(&self, client: &str, frame: &str) -> Result<(), StoreError> {
        self.with(|s, now| s.book.buffer(now, client, frame, self.limits))
    }

    async fn refresh(&self, client: &str) -> Result<Option<Vec<String>>, StoreError> {
        self.with(|s, now| s.book.refresh(now, client, &self.node, self.presence_ttl))
    }

    async fn leave(&self, client: &str) -> Result<(), StoreError> {
        self.with(|s, now| s.book.leave(now, client, &self.node))
    }
}

impl Registry for MemoryStore {
    async fn register(&self, _now_ms: u64) -> Result<(), StoreError> {
        self.with(|s, _| {
            s.nodes.insert(self.node.clone());
            s.dead.remove(&self.node);
        })
    }

    async fn registered(&self) -> Result<Vec<String>, StoreError> {
        self.with(|s, _| s.nodes.iter().cloned().collect())
    }

    async fn is_live(&self, node: &str) -> Result<bool, StoreError> {
        self.with(|s, _| s.live.contains(node))
    }

    async fn claim_forward(&self, node: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.with(|s, now| match s.claims.get(node) {
            Some((_, expires)) if *expires > now => false,
            _ => {
                s.claims.insert(
                    node.to_owned(),
                    (self.node.clone(), now.saturating_add(ttl_ms(ttl))),
                );
                true
            }
        })
    }

    async fn renew_forward(&self, node: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.with(|s, now| match s.claims.get_mut(node) {
            Some((holder, expires)) if *holder == self.node && *expires > now => {
                *expires = now.saturating_add(ttl_ms(ttl));
                true
            }
            _ => false,
        })
    }

    async fn release_forward(&self, node: &str) -> Result<(), StoreError> {
        self.with(|s, _| {
            if s.claims.get(node).is_some_and(|(h, _)| *h == self.node) {
                s.claims.remove(node);
            }
        })
    }

    async fn dead_since(&self, node: &str, now_ms: u64) -> Result<u64, StoreError> {
        self.with(|s, _| *s.dead.entry(node.to_owned()).or_insert(now_ms))
    }

    async fn retire(&self, node: &str) -> Result<(), StoreError> {
        self.with(|s, _| {
            s.nodes.remove(node);
            s.dead.remove(node);
        })
    }
}

#[derive(Debug, Default)]
struct BusState {
    topics: BTreeMap<String, Vec<Delivery>>,
    committed: BTreeMap<String, i64>,
}

/// Every node's delivery topic, in memory.
#[derive(Debug, Clone)]
pub struct MemoryBus(Arc<Shared<BusState>>);

impl Default for MemoryBus {
    fn default() -> Self {
        Self(Shared::new())
    }
}

impl MemoryBus {
    /// While `down`, every call fails with [`BusError::Unavailable`].
    pub fn set_down(&self, down: bool) {
        self.0.down.store(down, Ordering::Relaxed);
    }

    /// The records of `node`'s topic.
    pub fn records(&self, node: &str) -> Vec<Delivery> {
        lock(&self.0.state)
            .topics
            .get(node)
            .cloned()
            .unwrap_or_default()
    }

    fn with<R>(&self, f: impl FnOnce(&mut BusState) -> R) -> Result<R, BusError> {
        if self.0.down.load(Ordering::Relaxed) {
            return Err(BusError::Unavailable("the memory bus is down".to_owned()));
        }
        Ok(f(&mut lock(&self.0.state)))
    }
}

/// A delivery topic of a [`MemoryBus`].
#[derive(Debug, Clone)]
pub struct MemoryTopic {
    bus: MemoryBus,
    node: String,
    name: String,
    group: String,
}

impl Bus for MemoryBus {
    type Topic = MemoryTopic;

    fn topic_name(&self, node: &str) -> String {
        format!("memory.{node}")
    }

    async fn own_topic(&self, node: &str) -> Result<MemoryTopic, BusError> {
        self.with(|s| {
            s.topics.entry(node.to_owned()).or_default();
        })?;
        self.open(node).await
    }

    async fn open(&self, node: &str) -> Result<MemoryTopic, BusError> {
        let exists = self.with(|s| s.topics.contains_key(node))?;
        if !exists {
            return Err(BusError::Unavailable(format!("no topic for {node}")));
        }
        Ok(MemoryTopic {
            bus: self.clone(),
            node: node.to_owned(),
            name: self.topic_name(node),
            group: group_of(node),
        })
    }

    async fn send(&self, node: &str, to: &str, frame: Arc<str>, sent_ms: u64) -> Receipt {
        Receipt::ready(self.append(node, to, &frame, sent_ms))
    }
}

impl MemoryBus {
    fn append(&self, node: &str, to: &str, frame: &str, sent_ms: u64) -> Result<(), BusError> {
        self.with(|s| match s.topics.get_mut(node) {
            None => Err(BusError::Unavailable(format!("no topic for {node}"))),
            Some(records) => {
                let offset = i64::try_from(records.len()).unwrap_or(i64::MAX);
                records.push(Delivery {
                    offset,
                    to: to.to_owned(),
                    frame: frame.to_owned(),
                    sent_ms,
                });
                Ok(())
            }
        })?
    }
}

impl Topic for MemoryTopic {
    fn name(&self) -> &str {
        &self.name
    }

    fn group(&self) -> &str {
        &self.group
    }

    async fn fetch(&self, position: i64, max_wait_ms: i32) -> Result<Batch, BusError> {
        let read = |s: &mut BusState| {
            let records = s.topics.get(&self.node).map(Vec::as_slice).unwrap_or(&[]);
            let high_watermark = i64::try_from(records.len()).unwrap_or(i64::MAX);
            if position > high_watermark || position < 0 {
                return Err(BusError::OutOfRange { position });
            }
            let from = usize::try_from(position).unwrap_or(usize::MAX);
            Ok(Batch {
                deliveries: records.get(from..).unwrap_or(&[]).to_vec(),
                next: high_watermark,
                high_watermark,
            })
        };
        let batch = self.bus.with(read)??;
        if batch.deliveries.is_empty() {
            let wait = u64::try_from(max_wait_ms).unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
        Ok(batch)
    }

    async fn earliest(&self) -> Result<i64, BusError> {
        self.bus.with(|_| 0)
    }

    async fn committed(&self) -> Result<Option<i64>, BusError> {
        self.bus.with(|s| s.committed.get(&self.group).copied())
    }

    async fn commit(&self, position: i64) -> Result<(), BusError> {
        self.bus.with(|s| {
            s.committed.insert(self.group.clone(), position);
        })
    }
}
