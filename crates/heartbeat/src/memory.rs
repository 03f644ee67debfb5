//! An in-memory [`HeartbeatStore`] with fault injection, for tests.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::store::{HeartbeatStore, PublishOptions, StoreError};

#[derive(Debug, Default)]
struct Data {
    /// node -> (payload, expires at)
    live: BTreeMap<String, (Vec<u8>, Instant)>,
    /// node -> last publish
    index: BTreeMap<String, Instant>,
    history: BTreeMap<String, VecDeque<Vec<u8>>>,
    epoch: Option<String>,
}

/// A [`HeartbeatStore`] in memory, on `tokio::time` (so paused-time tests
/// see entries expire), that can be switched off to fail every call and
/// wiped to act like a restarted Redis. Clones share the same data.
///
/// The lock is never held across an `.await`.
#[derive(Debug, Clone, Default)]
#[expect(
    clippy::disallowed_types,
    reason = "the data is locked only in sync code, never across an .await"
)]
pub struct MemoryStore {
    data: Arc<std::sync::Mutex<Data>>,
    down: Arc<AtomicBool>,
    calls: Arc<AtomicU64>,
}

impl MemoryStore {
    /// An empty, available store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every call fail with [`StoreError::Unavailable`] (`true`) or
    /// succeed again (`false`).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Forgets everything, like a Redis restarted without persistence.
    pub fn wipe(&self) {
        *self.lock() = Data::default();
    }

    /// Calls made so far, failed ones included.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// Writes `payload` as `node`'s latest heartbeat without any check, as a
    /// hostile or broken writer would.
    pub fn put_raw(&self, node: &str, payload: &[u8], ttl: Duration) {
        let now = Instant::now();
        let mut data = self.lock();
        data.live
            .insert(node.to_owned(), (payload.to_vec(), now + ttl));
        data.index.insert(node.to_owned(), now);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn enter(&self) -> Result<std::sync::MutexGuard<'_, Data>, StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable);
        }
        let mut data = self.lock();
        let now = Instant::now();
        data.live.retain(|_, (_, expires)| *expires > now);
        Ok(data)
    }
}

impl HeartbeatStore for MemoryStore {
    async fn publish(
        &self,
        node: &str,
        payload: &[u8],
        options: &PublishOptions,
    ) -> Result<(), StoreError> {
        let now = Instant::now();
        let mut data = self.enter()?;
        data.live.insert(
            node.to_owned(),
            (payload.to_vec(), now + options.stale_after),
        );
        data.index.insert(node.to_owned(), now);
        let history = data.history.entry(node.to_owned()).or_default();
        history.push_front(payload.to_vec());
        history.truncate(usize::try_from(options.history_len).unwrap_or(usize::MAX));
        Ok(())
    }

    async fn deregister(&self, node: &str) -> Result<(), StoreError> {
        let mut data = self.enter()?;
        data.live.remove(node);
        data.index.remove(node);
        Ok(())
    }

    async fn epoch(&self, candidate: &str) -> Result<String, StoreError> {
        let mut data = self.enter()?;
        Ok(data
            .epoch
            .get_or_insert_with(|| candidate.to_owned())
            .clone())
    }

    async fn node_ids(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.enter()?.index.keys().cloned().collect())
    }

    async fn latest(&self, nodes: &[String]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let data = self.enter()?;
        Ok(nodes
            .iter()
            .map(|n| data.live.get(n).map(|(payload, _)| payload.clone()))
            .collect())
    }

    async fn prune(&self, idle_for: Duration) -> Result<u64, StoreError> {
        let now = Instant::now();
        let mut data = self.enter()?;
        let before = data.index.len();
        data.index
            .retain(|_, seen| now.duration_since(*seen) <= idle_for);
        Ok(u64::try_from(before - data.index.len()).unwrap_or(0))
    }

    async fn history(&self, node: &str, count: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        let data = self.enter()?;
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        Ok(data
            .history
            .get(node)
            .map(|h| h.iter().take(count).cloned().collect())
            .unwrap_or_default())
    }
}
