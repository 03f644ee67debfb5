//! The I/O boundary: what a Lease holds, and a narrow [`LeaseStore`] trait
//! for reading and compare-and-swap writing it.

use std::future::Future;
use std::time::{Duration, SystemTime};

/// The election fields of a Lease's spec.
///
/// The timestamps are for people reading the Lease (`kubectl get lease -o
/// yaml`); the election never compares them with any clock.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaseRecord {
    /// `spec.holderIdentity`; `None` when empty or released.
    pub holder: Option<String>,
    /// `spec.leaseDurationSeconds`; zero when missing or not positive.
    pub lease_duration: Duration,
    /// `spec.acquireTime`, the holder's wall clock when it acquired.
    pub acquire_time: Option<SystemTime>,
    /// `spec.renewTime`, the holder's wall clock when it last renewed.
    pub renew_time: Option<SystemTime>,
    /// `spec.leaseTransitions`: how often the holder changed. The fencing token.
    pub transitions: u64,
}

/// A record together with the `metadata.resourceVersion` it was read or written at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The record.
    pub record: LeaseRecord,
    /// The object's resourceVersion: opaque, changes with every write.
    pub version: String,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The write carried a resourceVersion that is no longer current, or the
    /// Lease to create already exists (HTTP 409): re-read, never overwrite.
    #[error("lease changed since it was read (409 conflict)")]
    Conflict,
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The API server answered with an error status other than 409.
    #[error("api server refused with {code}: {message}")]
    Api {
        /// HTTP status code.
        code: u16,
        /// The server's message.
        message: String,
    },
    /// The request did not reach the server or the answer was unreadable.
    #[error("kubernetes client: {0}")]
    Client(#[source] Box<kube::Error>),
    /// The Lease holds something this crate cannot write back, e.g. a
    /// transition count above `i32::MAX`.
    #[error("lease cannot be written: {0}")]
    Invalid(String),
}

impl StoreError {
    /// A short, fixed label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Conflict => "conflict",
            Self::Timeout(_) => "timeout",
            Self::Api { code, .. } if *code >= 500 => "server_error",
            Self::Api { .. } => "client_error",
            Self::Client(_) => "transport",
            Self::Invalid(_) => "invalid",
        }
    }
}

/// Where the Lease lives: [`KubeLeaseStore`](crate::KubeLeaseStore) for a
/// real API server, `MemoryLeaseStore` (feature `test-util`) for tests.
///
/// One store is bound to one Lease. Writes are compare-and-swap: they
/// succeed only if nobody wrote since `version` was read.
pub trait LeaseStore: Send + Sync + std::fmt::Debug + 'static {
    /// Reads the Lease; `None` when it does not exist.
    fn get(&self) -> impl Future<Output = Result<Option<Versioned>, StoreError>> + Send;

    /// Creates the Lease; [`StoreError::Conflict`] when it already exists.
    fn create(
        &self,
        record: &LeaseRecord,
    ) -> impl Future<Output = Result<Versioned, StoreError>> + Send;

    /// Writes `record` if the Lease is still at `version`, else
    /// [`StoreError::Conflict`]. Other fields of the object are left alone.
    fn replace(
        &self,
        record: &LeaseRecord,
        version: &str,
    ) -> impl Future<Output = Result<Versioned, StoreError>> + Send;
}
