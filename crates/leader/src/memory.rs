//! An in-memory [`LeaseStore`] with fault injection, for tests.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use crate::store::{LeaseRecord, LeaseStore, StoreError, Versioned};

/// A failure to inject into the next call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The call never answers (it sleeps for an hour, on `tokio::time`),
    /// so the caller's own timeout fires.
    Hang,
    /// The server answers with this status, e.g. 500.
    Status(u16),
    /// The write is refused with 409, as if someone else wrote first.
    Conflict,
    /// The write is stored, but the answer is lost: the call fails with
    /// [`StoreError::Timeout`].
    LostReply,
}

#[derive(Debug, Default)]
struct Data {
    lease: Option<(LeaseRecord, u64)>,
    next_version: u64,
    faults: VecDeque<Fault>,
    down: Option<Fault>,
}

/// A [`LeaseStore`] in memory with the API server's compare-and-swap rules.
/// Clones share the same Lease, so several candidates can race on it.
///
/// Faults are queued with [`inject`](Self::inject) (one call each, in
/// order) or set for every call with [`set_down`](Self::set_down). The lock
/// is never held across an `.await`.
#[derive(Debug, Clone, Default)]
#[expect(
    clippy::disallowed_types,
    reason = "the data is locked only in sync code, never across an .await"
)]
pub struct MemoryLeaseStore {
    data: Arc<std::sync::Mutex<Data>>,
    latency: Arc<AtomicU64>,
    calls: Arc<AtomicU64>,
}

impl MemoryLeaseStore {
    /// A store without a Lease.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the next calls fail, one fault per call.
    pub fn inject(&self, faults: impl IntoIterator<Item = Fault>) {
        self.lock().faults.extend(faults);
    }

    /// Makes every call fail with `fault` (`Some`) or work again (`None`).
    pub fn set_down(&self, fault: Option<Fault>) {
        self.lock().down = fault;
    }

    /// Makes every call take `latency` before it takes effect.
    pub fn set_latency(&self, latency: Duration) {
        let millis = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        self.latency.store(millis, Ordering::SeqCst);
    }

    /// Calls made so far, failed ones included.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// The Lease as stored now.
    pub fn peek(&self) -> Option<Versioned> {
        self.lock()
            .lease
            .as_ref()
            .map(|(record, version)| Versioned {
                record: record.clone(),
                version: version.to_string(),
            })
    }

    /// Writes `record` without any check, as another writer (or a person
    /// with kubectl) would; returns the new version.
    pub fn put(&self, record: LeaseRecord) -> String {
        let mut data = self.lock();
        data.next_version += 1;
        let version = data.next_version;
        data.lease = Some((record, version));
        version.to_string()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits the latency, then takes the fault for this call, if any.
    async fn enter(&self) -> Result<Option<Fault>, StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let latency = Duration::from_millis(self.latency.load(Ordering::SeqCst));
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let fault = {
            let mut data = self.lock();
            data.down.clone().or_else(|| data.faults.pop_front())
        };
        match fault {
            Some(Fault::Hang) => {
                tokio::time::sleep(Duration::from_secs(3_600)).await;
                Err(StoreError::Timeout(Duration::from_secs(3_600)))
            }
            Some(Fault::Status(code)) => Err(StoreError::Api {
                code,
                message: "injected".to_owned(),
            }),
            other => Ok(other),
        }
    }

    fn write(
        &self,
        record: &LeaseRecord,
        expect: Option<&str>,
        fault: Option<Fault>,
    ) -> Result<Versioned, StoreError> {
        if fault == Some(Fault::Conflict) {
            return Err(StoreError::Conflict);
        }
        let mut data = self.lock();
        let current = data.lease.as_ref().map(|(_, v)| v.to_string());
        if current.as_deref() != expect {
            return Err(StoreError::Conflict);
        }
        data.next_version += 1;
        let version = data.next_version;
        data.lease = Some((record.clone(), version));
        if fault == Some(Fault::LostReply) {
            return Err(StoreError::Timeout(Duration::ZERO));
        }
        Ok(Versioned {
            record: record.clone(),
            version: version.to_string(),
        })
    }
}

impl LeaseStore for MemoryLeaseStore {
    async fn get(&self) -> Result<Option<Versioned>, StoreError> {
        match self.enter().await? {
            Some(Fault::LostReply) => Err(StoreError::Timeout(Duration::ZERO)),
            Some(Fault::Conflict) | None => Ok(self.peek()),
            Some(_) => Err(StoreError::Timeout(Duration::ZERO)),
        }
    }

    async fn create(&self, record: &LeaseRecord) -> Result<Versioned, StoreError> {
        let fault = self.enter().await?;
        self.write(record, None, fault)
    }

    async fn replace(&self, record: &LeaseRecord, version: &str) -> Result<Versioned, StoreError> {
        let fault = self.enter().await?;
        self.write(record, Some(version), fault)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(holder: &str) -> LeaseRecord {
        LeaseRecord {
            holder: Some(holder.to_owned()),
            lease_duration: Duration::from_secs(3),
            ..LeaseRecord::default()
        }
    }

    #[tokio::test]
    async fn writes_are_compare_and_swap() -> Result<(), StoreError> {
        let store = MemoryLeaseStore::new();
        let created = store.create(&held_by("a")).await?;
        assert!(matches!(
            store.create(&held_by("b")).await,
            Err(StoreError::Conflict)
        ));
        let renewed = store.replace(&held_by("a"), &created.version).await?;
        assert_ne!(renewed.version, created.version);
        assert!(matches!(
            store.replace(&held_by("b"), &created.version).await,
            Err(StoreError::Conflict)
        ));
        assert_eq!(store.get().await?, Some(renewed));
        Ok(())
    }

    #[tokio::test]
    async fn faults_apply_in_order() -> Result<(), StoreError> {
        let store = MemoryLeaseStore::new();
        store.inject([Fault::Status(500), Fault::LostReply]);
        assert_eq!(
            store.get().await.err().map(|e| e.label()),
            Some("server_error")
        );
        assert!(matches!(
            store.create(&held_by("a")).await,
            Err(StoreError::Timeout(_))
        ));
        // The lost reply's write was stored.
        assert_eq!(store.peek().map(|l| l.record), Some(held_by("a")));
        assert_eq!(store.calls(), 2);
        Ok(())
    }
}
