//! [`LeaseStore`] on a real API server: `coordination.k8s.io/v1` Leases
//! through kube's `Api<Lease>`.

use std::time::{Duration, SystemTime};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use crate::store::{LeaseRecord, LeaseStore, StoreError, Versioned};

/// One Lease in one namespace on a Kubernetes API server.
///
/// Writes are JSON merge patches of `spec` that carry
/// `metadata.resourceVersion`, so the server refuses them with 409 when the
/// Lease changed since it was read, and fields this crate does not manage
/// (labels, annotations, `spec.strategy`) are left alone.
#[derive(Debug, Clone)]
pub struct KubeLeaseStore {
    api: Api<Lease>,
    name: String,
}

impl KubeLeaseStore {
    /// The Lease `name` in `namespace`.
    pub fn new(client: Client, namespace: &str, name: impl Into<String>) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.into(),
        }
    }

    /// The Lease's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl LeaseStore for KubeLeaseStore {
    async fn get(&self) -> Result<Option<Versioned>, StoreError> {
        let lease = self.api.get_opt(&self.name).await.map_err(from_kube)?;
        lease.map(versioned).transpose()
    }

    async fn create(&self, record: &LeaseRecord) -> Result<Versioned, StoreError> {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(spec(record)?),
        };
        let created = self
            .api
            .create(&PostParams::default(), &lease)
            .await
            .map_err(from_kube)?;
        versioned(created)
    }

    async fn replace(&self, record: &LeaseRecord, version: &str) -> Result<Versioned, StoreError> {
        let patch = json!({
            "metadata": { "resourceVersion": version },
            "spec": spec_patch(record)?,
        });
        let patched = self
            .api
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(from_kube)?;
        versioned(patched)
    }
}

fn from_kube(error: kube::Error) -> StoreError {
    match error {
        kube::Error::Api(status) if status.is_conflict() || status.is_already_exists() => {
            StoreError::Conflict
        }
        kube::Error::Api(status) => StoreError::Api {
            code: status.code,
            message: status.message,
        },
        other => StoreError::Client(Box::new(other)),
    }
}

fn versioned(lease: Lease) -> Result<Versioned, StoreError> {
    let version = lease
        .metadata
        .resource_version
        .ok_or_else(|| StoreError::Invalid("lease has no resourceVersion".to_owned()))?;
    let spec = lease.spec.unwrap_or_default();
    let seconds = spec.lease_duration_seconds.unwrap_or(0);
    let record = LeaseRecord {
        holder: spec.holder_identity.filter(|h| !h.is_empty()),
        lease_duration: Duration::from_secs(u64::try_from(seconds).unwrap_or(0)),
        acquire_time: spec.acquire_time.map(|t| SystemTime::from(t.0)),
        renew_time: spec.renew_time.map(|t| SystemTime::from(t.0)),
        transitions: u64::try_from(spec.lease_transitions.unwrap_or(0)).unwrap_or(0),
    };
    Ok(Versioned { record, version })
}

fn spec(record: &LeaseRecord) -> Result<LeaseSpec, StoreError> {
    Ok(LeaseSpec {
        holder_identity: record.holder.clone(),
        lease_duration_seconds: Some(
            i32::try_from(record.lease_duration.as_secs())
                .map_err(|_| invalid("lease duration", record.lease_duration.as_secs()))?,
        ),
        acquire_time: record.acquire_time.map(micro_time).transpose()?,
        renew_time: record.renew_time.map(micro_time).transpose()?,
        lease_transitions: Some(
            i32::try_from(record.transitions)
                .map_err(|_| invalid("lease transitions", record.transitions))?,
        ),
        ..LeaseSpec::default()
    })
}

/// Like [`spec`], but with explicit nulls so a merge patch clears what the
/// record leaves empty (a released Lease has no holder).
fn spec_patch(record: &LeaseRecord) -> Result<Value, StoreError> {
    let spec = spec(record)?;
    let encode = |value: Option<MicroTime>| {
        value.map_or(Ok(Value::Null), |t| {
            serde_json::to_value(t).map_err(|e| StoreError::Invalid(e.to_string()))
        })
    };
    Ok(json!({
        "holderIdentity": spec.holder_identity,
        "leaseDurationSeconds": spec.lease_duration_seconds,
        "acquireTime": encode(spec.acquire_time)?,
        "renewTime": encode(spec.renew_time)?,
        "leaseTransitions": spec.lease_transitions,
    }))
}

fn micro_time(time: SystemTime) -> Result<MicroTime, StoreError> {
    Timestamp::try_from(time)
        .map(MicroTime)
        .map_err(|e| StoreError::Invalid(format!("time {time:?}: {e}")))
}

fn invalid(field: &str, value: u64) -> StoreError {
    StoreError::Invalid(format!("{field} {value} does not fit in an i32"))
}
