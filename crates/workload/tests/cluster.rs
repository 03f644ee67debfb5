//! What only a real control plane shows: socket nodes of deploy/k8s run as
//! real pods on the stack's node agents, and on scale-in the real
//! ReplicaSet and StatefulSet controllers remove the pod the scaler chose,
//! after its preStop `/drain`, while the scaler acts as the load-balancer's
//! own service account under the RBAC of deploy/k8s/base/01-rbac.yaml.
//!
//! Timings are printed (`--nocapture`) for the figures in
//! docs/local-cluster.md, never asserted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::PostParams;
use kube::{Api, Client};
use rtc_testkit::{Endpoints, TestNamespace, manifests, unique_name};
use rtc_workload::{AlwaysValid, KubeWorkloadApi, ScaleOutcome, ScalerConfig, WorkloadScaler};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

type Result<T = (), E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

const NAME: &str = "socket";
/// Generous: a cold machine starts three socket nodes in a few seconds.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// The drain of an empty node takes DRAIN_ENDPOINT_DELAY_MS plus the hand-off.
const GONE_TIMEOUT: Duration = Duration::from_secs(90);

/// The same pod template as a StatefulSet, as an operator would run it.
fn socket_stateful_set(namespace: &str, replicas: i32) -> Result<StatefulSet> {
    let deployment = manifests::socket_deployment(namespace, replicas)?;
    let spec = &deployment["spec"];
    let doc = serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": deployment["metadata"],
        "spec": {
            "replicas": replicas,
            "serviceName": NAME,
            "podManagementPolicy": "Parallel",
            "selector": spec["selector"],
            "template": spec["template"],
        },
    });
    Ok(serde_json::from_value(doc)?)
}

/// The load-balancer's identity of deploy/k8s/base/01-rbac.yaml in the test's
/// namespace, and a client that acts as it.
async fn load_balancer_client(ns: &TestNamespace) -> Result<Client> {
    rtc_testkit::fixtures::grant_load_balancer(ns).await?;
    Ok(ns.service_account_client("load-balancer").await?)
}

/// The workload's pods, exactly `count` and all Ready, sorted by name.
async fn wait_ready(pods: &Api<Pod>, count: usize, timeout: Duration) -> Result<Vec<Pod>> {
    Ok(manifests::wait_ready(pods, &format!("app={NAME}"), count, timeout).await?)
}

/// Waits until pod `name` (of `uid`) no longer exists.
async fn wait_gone(pods: &Api<Pod>, name: &str, uid: &str) -> Result {
    let deadline = Instant::now() + GONE_TIMEOUT;
    loop {
        match pods.get_opt(name).await? {
            None => return Ok(()),
            Some(p) if p.metadata.uid.as_deref() != Some(uid) => return Ok(()),
            Some(_) if Instant::now() >= deadline => {
                return Err(format!("pod {name} still there after {GONE_TIMEOUT:?}").into());
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The log file the node agent keeps for the pod's container.
fn pod_log(pod: &Pod) -> Result<PathBuf> {
    let run = Endpoints::from_env()
        .kubeconfig
        .parent()
        .ok_or("the kubeconfig has no directory")?
        .to_owned();
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .ok_or("the pod is not bound to a node")?;
    let meta = &pod.metadata;
    let dir = format!(
        "{}_{}_{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default(),
        meta.uid.as_deref().unwrap_or_default()
    );
    Ok(run
        .join("nodes")
        .join(node)
        .join("pods")
        .join(dir)
        .join(format!("{NAME}.log")))
}

/// The removed pod drained through its preStop `/drain` before the
/// kubelet's SIGTERM: its log has "drain started", then "drain finished",
/// then the signal, in that order.
fn assert_drained_before_sigterm(log: &Path) -> Result {
    let text = std::fs::read_to_string(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let at = |needle: &str| {
        text.find(needle)
            .ok_or_else(|| format!("{}: no {needle:?} in\n{text}", log.display()))
    };
    let (started, finished) = (at("drain started")?, at("drain finished")?);
    assert!(started < finished, "{}:\n{text}", log.display());
    if let Ok(signal) = at("signal received") {
        assert!(finished < signal, "drained only on SIGTERM:\n{text}");
    }
    Ok(())
}

/// Clients connected to a socket pod, each reading until the node tells it
/// to reconnect (a `reconnect` frame, then close 1012) and leaving then.
/// The handle answers how many were told.
fn connect_clients(
    pod: &Pod,
    count: usize,
) -> impl std::future::Future<Output = Result<tokio::task::JoinHandle<usize>>> {
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_default();
    let pod_name = name(pod);
    async move {
        let mut clients = Vec::new();
        for i in 0..count {
            let url = format!("ws://{ip}:8000/ws?client_id={pod_name}-c{i}");
            let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
            let welcome = ws.next().await.ok_or("closed before the welcome")??;
            assert!(welcome.to_text()?.contains("welcome"), "{welcome:?}");
            clients.push(ws);
        }
        Ok(tokio::spawn(async move {
            let mut told = 0;
            for mut ws in clients {
                while let Some(Ok(frame)) = ws.next().await {
                    let reconnect = frame.to_text().is_ok_and(|t| t.contains("\"reconnect\""));
                    let close_1012 =
                        matches!(&frame, Message::Close(Some(c)) if u16::from(c.code) == 1012);
                    if reconnect || close_1012 {
                        told += 1;
                        break;
                    }
                }
                let _ = ws.close(None).await;
            }
            told
        }))
    }
}

fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

fn name(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

fn scaler(client: Client, ns: &TestNamespace) -> Result<WorkloadScaler<KubeWorkloadApi>> {
    let config = ScalerConfig::new(NAME, 2, 50)?;
    Ok(WorkloadScaler::new(
        KubeWorkloadApi::new(client, ns.name()),
        config,
    ))
}

/// A fresh namespace holding the socket nodes' ConfigMap.
async fn namespace_with_config() -> Result<TestNamespace> {
    let ns = rtc_testkit::kubernetes().await?;
    let config =
        manifests::socket_config(ns.name(), &Endpoints::from_env(), &unique_name("cluster"))?;
    ns.api::<ConfigMap>()
        .create(&PostParams::default(), &config)
        .await?;
    Ok(ns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replica_set_controller_removes_the_pod_the_scaler_chose_after_its_drain() -> Result {
    let ns = namespace_with_config().await?;
    let pp = PostParams::default();
    let deployment: Deployment =
        serde_json::from_value(manifests::socket_deployment(ns.name(), 3)?)?;
    let created = Instant::now();
    ns.api::<Deployment>().create(&pp, &deployment).await?;
    let pods = ns.api::<Pod>();
    let ready = wait_ready(&pods, 3, READY_TIMEOUT).await?;
    println!(
        "3-replica Deployment created -> 3 Ready pods: {:?}",
        created.elapsed()
    );
    let ips: std::collections::BTreeSet<_> = ready
        .iter()
        .filter_map(|p| p.status.as_ref().and_then(|s| s.pod_ip.clone()))
        .collect();
    assert_eq!(ips.len(), 3, "each pod has its own address: {ips:?}");

    // Neither the oldest nor the newest: the controller's own preference
    // (newest first, among equals) would not pick it by chance.
    let chosen = &ready[1];
    let others: Vec<String> = [&ready[0], &ready[2]].iter().map(|p| uid(p)).collect();
    let scaler = scaler(load_balancer_client(&ns).await?, &ns)?;
    let read = scaler.current().await?;
    assert_eq!(read.spec_replicas, 3);
    const CLIENTS: usize = 20;
    let clients = connect_clients(chosen, CLIENTS).await?;
    let loads: BTreeMap<String, u64> = ready.iter().map(|p| (name(p), 10)).collect();
    let plan = scaler
        .prepare_scale_in(&read, &name(chosen), &loads, &AlwaysValid)
        .await?;
    assert_eq!(plan.victim, name(chosen), "{plan:?}");
    let written = Instant::now();
    let outcome = scaler
        .scale_to(&read, 2, "test scale-in", &AlwaysValid)
        .await?;
    assert!(
        matches!(outcome, ScaleOutcome::Scaled { to: 2, .. }),
        "{outcome:?}"
    );

    wait_gone(&pods, &name(chosen), &uid(chosen)).await?;
    println!(
        "/scale 3 -> 2 written -> chosen pod drained {CLIENTS} clients, its process exited and the pod was deleted: {:?}",
        written.elapsed()
    );
    assert_eq!(
        clients.await?,
        CLIENTS,
        "every client was told to reconnect"
    );
    let left = wait_ready(&pods, 2, READY_TIMEOUT).await?;
    let mut left_uids: Vec<String> = left.iter().map(uid).collect();
    left_uids.sort();
    let mut expected = others;
    expected.sort();
    assert_eq!(left_uids, expected, "exactly the chosen pod went");
    assert_drained_before_sigterm(&pod_log(chosen)?)?;

    let settled = ns.api::<Deployment>().get(NAME).await?;
    assert_eq!(settled.spec.and_then(|s| s.replicas), Some(2));
    ns.cleanup().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stateful_set_controller_removes_the_top_ordinal_after_its_drain() -> Result {
    let ns = namespace_with_config().await?;
    let pp = PostParams::default();
    ns.api::<StatefulSet>()
        .create(&pp, &socket_stateful_set(ns.name(), 3)?)
        .await?;
    let pods = ns.api::<Pod>();
    let ready = wait_ready(&pods, 3, READY_TIMEOUT).await?;
    let names: Vec<String> = ready.iter().map(name).collect();
    assert_eq!(names, ["socket-0", "socket-1", "socket-2"]);

    let scaler = scaler(load_balancer_client(&ns).await?, &ns)?;
    let read = scaler.current().await?;
    let plan = scaler
        .prepare_scale_in(&read, "socket-0", &BTreeMap::new(), &AlwaysValid)
        .await?;
    assert_eq!(plan.victim, "socket-2", "{plan:?}");
    let written = Instant::now();
    scaler
        .scale_to(&read, 2, "test scale-in", &AlwaysValid)
        .await?;
    wait_gone(&pods, "socket-2", &uid(&ready[2])).await?;
    println!(
        "StatefulSet /scale 3 -> 2 -> socket-2 gone: {:?}",
        written.elapsed()
    );
    let left = wait_ready(&pods, 2, READY_TIMEOUT).await?;
    assert_eq!(
        left.iter().map(uid).collect::<Vec<_>>(),
        [uid(&ready[0]), uid(&ready[1])]
    );
    assert_drained_before_sigterm(&pod_log(&ready[2])?)?;
    ns.cleanup().await?;
    Ok(())
}
