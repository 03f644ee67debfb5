//! Socket pods of deploy/k8s in a fresh namespace of the local stack, for
//! the tests and the ceiling bench (each uses a part of this).
#![allow(dead_code)]

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::Api;
use kube::api::PostParams;
use rtc_loadgen::Discovery;
use rtc_testkit::{Endpoints, TestNamespace, manifests, unique_name};

pub(crate) type Result<T = (), E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// The socket Deployment's pods, exactly `count` and all Ready.
pub(crate) async fn wait_ready(pods: &Api<Pod>, count: usize) -> Result<Vec<Pod>> {
    Ok(manifests::wait_ready(pods, "app=socket", count, READY_TIMEOUT).await?)
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
        .create(
            &pp,
            &manifests::socket_config(ns.name(), &endpoints, &unique_name("loadgen"))?,
        )
        .await?;
    let count = i32::try_from(replicas)?;
    ns.api::<Deployment>()
        .create(
            &pp,
            &serde_json::from_value(manifests::socket_deployment(ns.name(), count)?)?,
        )
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
