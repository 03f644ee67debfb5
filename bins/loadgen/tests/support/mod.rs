//! Socket pods of deploy/k8s in a fresh namespace of the local stack, for
//! the tests and the ceiling bench (each uses a part of this).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::Api;
use kube::api::{ListParams, PostParams};
use rtc_loadgen::Discovery;
use rtc_loadgen::discovery::is_ready;
use rtc_testkit::{Endpoints, TestNamespace, unique_name};
use serde_json::Value;

pub(crate) type Result<T = (), E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(90);

pub(crate) fn k8s_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/k8s")
}

pub(crate) fn document(file: &str, kind: &str) -> Result<Value> {
    let text = std::fs::read_to_string(k8s_dir().join(file))?;
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text)?;
    docs.into_iter()
        .find(|d| d["kind"] == kind)
        .ok_or_else(|| format!("no {kind} in deploy/k8s/{file}").into())
}

/// deploy/k8s's ConfigMap with the stack's servers, this test's prefixes
/// and a 5 s drain (2 s for the endpoints, then reconnect batches).
pub(crate) fn config_map(namespace: &str, endpoints: &Endpoints) -> Result<ConfigMap> {
    let mut doc = document("02-config.yaml", "ConfigMap")?;
    doc["metadata"]["namespace"] = namespace.into();
    let data = &mut doc["data"];
    data["REDIS_URL"] = endpoints.redis_url.clone().into();
    data["KAFKA_BOOTSTRAP"] = endpoints.kafka_bootstrap.clone().into();
    data["LOG_FORMAT"] = "plain".into();
    let prefix = unique_name("loadgen");
    data["HEARTBEAT_PREFIX"] = format!("{prefix}:hb:").into();
    data["RELAY_PREFIX"] = format!("{prefix}:relay:").into();
    data["DELIVERY_TOPIC_PREFIX"] = format!("{prefix}.deliver.").into();
    data["HEARTBEAT_INTERVAL"] = "1s".into();
    data["DRAIN_TIMEOUT"] = "5s".into();
    data["DRAIN_ENDPOINT_DELAY_MS"] = "2000".into();
    Ok(serde_json::from_value(doc)?)
}

pub(crate) fn socket_deployment(namespace: &str, replicas: i32) -> Result<Deployment> {
    let mut doc = document("04-socket.yaml", "Deployment")?;
    doc["metadata"]["namespace"] = namespace.into();
    doc["spec"]["replicas"] = replicas.into();
    doc["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 40.into();
    Ok(serde_json::from_value(doc)?)
}

pub(crate) async fn wait_ready(pods: &Api<Pod>, count: usize) -> Result<Vec<Pod>> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let params = ListParams::default().labels("app=socket");
    loop {
        let list = pods.list(&params).await?.items;
        if list.len() == count && list.iter().all(is_ready) {
            return Ok(list);
        }
        if Instant::now() >= deadline {
            return Err(format!("not {count} Ready socket pods after {READY_TIMEOUT:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(crate) fn address(pod: &Pod) -> String {
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_default();
    format!("{ip}:8000")
}

/// A namespace with the ConfigMap and a socket Deployment of `replicas`
/// Ready pods.
pub(crate) async fn socket_pods(replicas: usize) -> Result<(TestNamespace, Vec<Pod>)> {
    let endpoints = Endpoints::from_env();
    let ns = rtc_testkit::kubernetes().await?;
    let pp = PostParams::default();
    ns.api::<ConfigMap>()
        .create(&pp, &config_map(ns.name(), &endpoints)?)
        .await?;
    let count = i32::try_from(replicas)?;
    ns.api::<Deployment>()
        .create(&pp, &socket_deployment(ns.name(), count)?)
        .await?;
    let ready = wait_ready(&ns.api::<Pod>(), replicas).await?;
    Ok((ns, ready))
}

pub(crate) fn discovery(ns: &TestNamespace) -> Discovery {
    Discovery::Kubernetes {
        client: ns.client().clone(),
        namespace: ns.name().to_owned(),
        selector: "app=socket".into(),
        port: 8000,
    }
}

/// A run id unique to this test run: 1 to 32 of `[A-Za-z0-9]`.
pub(crate) fn run_id() -> String {
    let name: String = unique_name("lg")
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    let skip = name.len().saturating_sub(24);
    name[skip..].to_owned()
}
