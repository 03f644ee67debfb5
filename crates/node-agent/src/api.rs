//! The agent's requests to the API server, each one a node is allowed under
//! the Node authorizer and the NodeRestriction admission plugin: its own
//! Node and Lease, the status and deletion of pods bound to it, and the
//! ConfigMaps and Secrets those pods refer to.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, NodeStatus, Pod, PodStatus, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Api, Client};
use serde_json::{Value, json};

use crate::node;

/// An API request that failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The server refused or failed the request.
    #[error("{action}: {source}")]
    Kube {
        /// What the agent was doing.
        action: String,
        /// The client's error.
        source: kube::Error,
    },
    /// An object came back without a field the agent needs.
    #[error("{action}: the answer has no {field}")]
    Missing {
        /// What the agent was doing.
        action: String,
        /// The missing field.
        field: &'static str,
    },
    /// The server did not answer in time.
    #[error("{action}: no answer within {after:?}")]
    Timeout {
        /// What the agent was doing.
        action: &'static str,
        /// How long it waited.
        after: Duration,
    },
    /// An object could not be encoded.
    #[error("encoding {what}: {source}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// The encoder's error.
        source: serde_json::Error,
    },
}

impl ApiError {
    /// A short, fixed label for this kind of error, for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Kube { .. } => "kube",
            Self::Missing { .. } => "missing",
            Self::Timeout { .. } => "timeout",
            Self::Encode { .. } => "encode",
        }
    }

    fn kube(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let action = action.into();
        move |source| Self::Kube { action, source }
    }

    /// Whether the server said the object does not exist (or no longer has
    /// the UID the request named).
    pub fn is_gone(&self) -> bool {
        matches!(self, Self::Kube { source: kube::Error::Api(status), .. } if status.is_not_found() || status.is_conflict())
    }
}

/// How long one call here may take, so a worker or the heartbeat never
/// hangs on an API server that stopped answering.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

async fn bounded<T>(
    action: &'static str,
    work: impl Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    tokio::time::timeout(REQUEST_TIMEOUT, work)
        .await
        .unwrap_or(Err(ApiError::Timeout {
            action,
            after: REQUEST_TIMEOUT,
        }))
}

/// Creates the Node, or takes over an existing one of the same name (its
/// labels and status are made the agent's); returns the Node's UID.
///
/// # Errors
///
/// [`ApiError`] when the server refuses.
pub async fn register_node(client: &Client, wanted: &Node) -> Result<String, ApiError> {
    bounded("registering the node", async move {
        let nodes: Api<Node> = Api::all(client.clone());
        let name = wanted.metadata.name.clone().unwrap_or_default();
        let action = format!("registering node {name}");
        let registered = match nodes.create(&PostParams::default(), wanted).await {
            Ok(created) => {
                tracing::info!(node = %name, "registered a new node");
                created
            }
            Err(kube::Error::Api(status)) if status.is_already_exists() => {
                let labels = json!({ "metadata": { "labels": wanted.metadata.labels } });
                nodes
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&labels))
                    .await
                    .map_err(ApiError::kube(action.clone()))?;
                if let Some(status) = &wanted.status {
                    patch_node_status(client, &name, status).await?;
                }
                tracing::info!(node = %name, "took over an existing node");
                nodes
                    .get(&name)
                    .await
                    .map_err(ApiError::kube(action.clone()))?
            }
            Err(source) => return Err(ApiError::Kube { action, source }),
        };
        registered.metadata.uid.ok_or(ApiError::Missing {
            action: format!("registering node {name}"),
            field: "metadata.uid",
        })
    })
    .await
}

/// Patches the Node's status (a strategic merge: conditions and addresses
/// merge by type).
///
/// # Errors
///
/// [`ApiError`] when the server refuses.
pub async fn patch_node_status(
    client: &Client,
    name: &str,
    status: &NodeStatus,
) -> Result<(), ApiError> {
    bounded("updating the node status", async move {
        let nodes: Api<Node> = Api::all(client.clone());
        let body = json!({ "status": status });
        nodes
            .patch_status(name, &PatchParams::default(), &Patch::Strategic(&body))
            .await
            .map_err(ApiError::kube(format!(
                "updating the status of node {name}"
            )))?;
        Ok(())
    })
    .await
}

/// Renews the node's Lease, creating it when missing; `cached` is the Lease
/// as last written, so a renewal is one write unless someone else changed
/// it (then it is read again).
///
/// # Errors
///
/// [`ApiError`] when the server refuses; `cached` is cleared on a conflict
/// so the next call starts from a fresh read.
pub async fn renew_lease(
    client: &Client,
    node_name: &str,
    node_uid: &str,
    cached: &mut Option<Lease>,
    now: MicroTime,
) -> Result<(), ApiError> {
    bounded("renewing the lease", async move {
        let leases: Api<Lease> = Api::namespaced(client.clone(), node::LEASE_NAMESPACE);
        let action = || format!("renewing lease {}/{node_name}", node::LEASE_NAMESPACE);
        let wanted = node::lease(node_name, node_uid, &now);
        let current = match cached.take() {
            Some(lease) => Some(lease),
            None => leases
                .get_opt(node_name)
                .await
                .map_err(ApiError::kube(action()))?,
        };
        let written = match current {
            None => leases
                .create(&PostParams::default(), &wanted)
                .await
                .map_err(ApiError::kube(action()))?,
            Some(mut lease) => {
                lease.spec = wanted.spec;
                let owned = lease
                    .metadata
                    .owner_references
                    .as_ref()
                    .is_some_and(|refs| refs.iter().any(|r| r.kind == "Node" && r.uid == node_uid));
                if !owned {
                    lease.metadata.owner_references = wanted.metadata.owner_references;
                }
                leases
                    .replace(node_name, &PostParams::default(), &lease)
                    .await
                    .map_err(ApiError::kube(action()))?
            }
        };
        *cached = Some(written);
        Ok(())
    })
    .await
}

/// Patches a pod's status (a strategic merge, so conditions that others own
/// stay), naming the pod's UID so a new pod of the same name is not touched.
///
/// # Errors
///
/// [`ApiError`] when the server refuses; [`ApiError::is_gone`] tells a pod
/// that was deleted or replaced.
pub async fn patch_pod_status(
    client: &Client,
    namespace: &str,
    name: &str,
    uid: &str,
    status: &PodStatus,
) -> Result<(), ApiError> {
    bounded("updating a pod status", async move {
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let body = pod_status_patch(uid, status)?;
        pods.patch_status(name, &PatchParams::default(), &Patch::Strategic(&body))
            .await
            .map_err(ApiError::kube(format!(
                "updating the status of pod {namespace}/{name}"
            )))?;
        Ok(())
    })
    .await
}

/// The strategic merge patch of a pod status: conditions merge by type (so
/// the scheduler's stay), while the address lists are replaced whole, since
/// a pod has exactly the addresses the agent gives it.
pub fn pod_status_patch(uid: &str, status: &PodStatus) -> Result<Value, ApiError> {
    let mut status = serde_json::to_value(status).map_err(|source| ApiError::Encode {
        what: "a pod status",
        source,
    })?;
    // A merged condition keeps fields the patch leaves out, so a reason and
    // message that no longer apply must be removed explicitly.
    if let Some(Value::Array(conditions)) = status.get_mut("conditions") {
        for condition in conditions.iter_mut() {
            if let Value::Object(fields) = condition {
                for field in ["reason", "message"] {
                    fields.entry(field).or_insert(Value::Null);
                }
            }
        }
    }
    for list in ["podIPs", "hostIPs"] {
        if let Some(Value::Array(items)) = status.get_mut(list) {
            items.push(json!({ "$patch": "replace" }));
        }
    }
    Ok(json!({ "metadata": { "uid": uid }, "status": status }))
}

/// Deletes a pod at once (grace 0), only if it still has `uid`; a pod that
/// is already gone is not an error.
///
/// # Errors
///
/// [`ApiError`] when the server refuses for another reason.
pub async fn delete_pod(
    client: &Client,
    namespace: &str,
    name: &str,
    uid: &str,
) -> Result<(), ApiError> {
    bounded("deleting a pod", async move {
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid.to_owned()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match pods.delete(name, &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.is_not_found() || status.is_conflict() => {
                Ok(())
            }
            Err(source) => Err(ApiError::Kube {
                action: format!("deleting pod {namespace}/{name}"),
                source,
            }),
        }
    })
    .await
}

/// The `data` of the named ConfigMaps and Secrets that exist; the missing
/// are left out (the caller decides whether they were optional).
pub type EnvSources = (
    BTreeMap<String, BTreeMap<String, String>>,
    BTreeMap<String, BTreeMap<String, Vec<u8>>>,
);

/// Reads the ConfigMaps and Secrets a pod's environment refers to.
///
/// # Errors
///
/// [`ApiError`] when a read fails other than with "not found".
pub async fn env_sources(
    client: &Client,
    namespace: &str,
    config_maps: &BTreeSet<String>,
    secrets: &BTreeSet<String>,
) -> Result<EnvSources, ApiError> {
    bounded("reading configmaps and secrets", async move {
        let maps_api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        let secrets_api: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let mut maps = BTreeMap::new();
        for name in config_maps {
            let found = maps_api
                .get_opt(name)
                .await
                .map_err(ApiError::kube(format!(
                    "reading configmap {namespace}/{name}"
                )))?;
            if let Some(map) = found {
                maps.insert(name.clone(), map.data.unwrap_or_default());
            }
        }
        let mut values = BTreeMap::new();
        for name in secrets {
            let found = secrets_api
                .get_opt(name)
                .await
                .map_err(ApiError::kube(format!("reading secret {namespace}/{name}")))?;
            if let Some(secret) = found {
                let data: BTreeMap<String, Vec<u8>> = secret
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect();
                values.insert(name.clone(), data);
            }
        }
        Ok((maps, values))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{HostIP, PodIP};

    #[test]
    fn status_patches_replace_the_address_lists_and_name_the_uid() {
        let status = PodStatus {
            phase: Some("Running".into()),
            conditions: Some(vec![k8s_openapi::api::core::v1::PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            pod_ips: Some(vec![PodIP {
                ip: "127.10.0.2".into(),
            }]),
            host_ips: Some(vec![HostIP {
                ip: "127.0.0.1".into(),
            }]),
            ..PodStatus::default()
        };
        let patch = pod_status_patch("u-1", &status).expect("patch");
        assert_eq!(patch["metadata"]["uid"], "u-1");
        assert_eq!(patch["status"]["phase"], "Running");
        let ready = &patch["status"]["conditions"][0];
        assert_eq!(ready["status"], "True");
        assert!(ready.get("reason").is_some_and(Value::is_null), "{ready}");
        assert!(ready.get("message").is_some_and(Value::is_null), "{ready}");
        assert_eq!(
            patch["status"]["podIPs"],
            json!([{ "ip": "127.10.0.2" }, { "$patch": "replace" }])
        );
        assert_eq!(
            patch["status"]["hostIPs"],
            json!([{ "ip": "127.0.0.1" }, { "$patch": "replace" }])
        );
    }
}
