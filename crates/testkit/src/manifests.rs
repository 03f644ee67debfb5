//! The socket fleet of deploy/k8s as test fixtures: the manifests' own
//! ConfigMap and Deployment, pointed at the local stack, and a wait for
//! their pods to be Ready on the stack's node agents.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::Api;
use kube::api::ListParams;
use serde_json::Value;

use crate::{Endpoints, Error};

/// Where `deploy/k8s/base/<file>` is.
pub(crate) fn path_of(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/k8s/base")
        .join(file)
}

/// The documents of `deploy/k8s/base/<file>`, empty documents left out.
///
/// # Errors
///
/// [`Error::Manifest`] when the file cannot be read or is not YAML.
pub fn documents(file: &str) -> Result<Vec<Value>, Error> {
    let path = path_of(file);
    let failed = |reason: String| Error::Manifest {
        path: path.clone(),
        reason,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| failed(e.to_string()))?;
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).map_err(|e| failed(e.to_string()))?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// The one document of `kind` in `deploy/k8s/base/<file>`.
///
/// # Errors
///
/// [`Error::Manifest`] when the file cannot be read or holds no `kind`.
pub fn document(file: &str, kind: &str) -> Result<Value, Error> {
    documents(file)?
        .into_iter()
        .find(|d| d["kind"] == kind)
        .ok_or_else(|| Error::Manifest {
            path: path_of(file),
            reason: format!("holds no {kind}"),
        })
}

/// The shared ConfigMap of deploy/k8s/base/02-config.yaml in `namespace`, pointed
/// at the stack's Redis and broker, with key prefixes and delivery topics
/// under `prefix`, plain logs, 1 s heartbeats and a 5 s drain: 2 s for the
/// endpoints to drop the pod, then the clients are told to reconnect in
/// batches over the remaining 3 s.
///
/// # Errors
///
/// [`Error::Manifest`] when the manifest cannot be read or used.
pub fn socket_config(
    namespace: &str,
    endpoints: &Endpoints,
    prefix: &str,
) -> Result<ConfigMap, Error> {
    let mut doc = document("02-config.yaml", "ConfigMap")?;
    doc["metadata"]["namespace"] = namespace.into();
    let data = &mut doc["data"];
    data["REDIS_URL"] = endpoints.redis_url.clone().into();
    data["KAFKA_BOOTSTRAP"] = endpoints.kafka_bootstrap.clone().into();
    data["LOG_FORMAT"] = "plain".into();
    data["HEARTBEAT_PREFIX"] = format!("{prefix}:hb:").into();
    data["RELAY_PREFIX"] = format!("{prefix}:relay:").into();
    data["DELIVERY_TOPIC_PREFIX"] = format!("{prefix}.deliver.").into();
    data["HEARTBEAT_INTERVAL"] = "1s".into();
    data["DRAIN_TIMEOUT"] = "5s".into();
    data["DRAIN_ENDPOINT_DELAY_MS"] = "2000".into();
    serde_json::from_value(doc).map_err(|e| Error::Manifest {
        path: path_of("02-config.yaml"),
        reason: e.to_string(),
    })
}

/// The socket Deployment of deploy/k8s/base/04-socket.yaml in `namespace` with
/// `replicas`, and a grace period that fits [`socket_config`]'s drain; as
/// JSON, so a test can also turn its template into a StatefulSet.
///
/// # Errors
///
/// [`Error::Manifest`] when the manifest cannot be read.
pub fn socket_deployment(namespace: &str, replicas: i32) -> Result<Value, Error> {
    let mut doc = document("04-socket.yaml", "Deployment")?;
    doc["metadata"]["namespace"] = namespace.into();
    doc["spec"]["replicas"] = replicas.into();
    doc["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 40.into();
    Ok(doc)
}

/// The pod is not being deleted and its Ready condition is True.
pub fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Waits until the pods matching `selector` are exactly `count`, all
/// Ready; returns them sorted by name.
///
/// # Errors
///
/// [`Error::Kube`] when the pods cannot be listed, [`Error::NotReady`]
/// (with each pod's phase and container state) after `timeout`.
pub async fn wait_ready(
    pods: &Api<Pod>,
    selector: &str,
    count: usize,
    timeout: Duration,
) -> Result<Vec<Pod>, Error> {
    let deadline = tokio::time::Instant::now() + timeout;
    let params = ListParams::default().labels(selector);
    loop {
        let mut list = pods.list(&params).await?.items;
        if list.len() == count && list.iter().all(is_ready) {
            list.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
            return Ok(list);
        }
        if tokio::time::Instant::now() >= deadline {
            let seen: Vec<_> = list
                .iter()
                .map(|p| {
                    let status = p.status.as_ref();
                    (
                        p.metadata.name.clone().unwrap_or_default(),
                        status.and_then(|s| s.phase.clone()),
                        status
                            .and_then(|s| s.container_statuses.as_ref())
                            .map(|c| format!("{:?}", c.first().and_then(|c| c.state.clone()))),
                        is_ready(p),
                    )
                })
                .collect();
            return Err(Error::NotReady {
                selector: selector.to_owned(),
                count,
                waited: timeout,
                seen: format!("{seen:?}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
