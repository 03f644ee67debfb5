//! The generator against real socket pods: the ConfigMap and the socket
//! Deployment of deploy/k8s in a fresh namespace of the local stack's
//! Kubernetes, pointed at the stack's Redis and broker with per-test
//! prefixes; discovery through the real API server, the real ReplicaSet
//! controller removing a pod on scale-in.
//!
//! Figures are printed (`--nocapture`), never asserted beyond correctness.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use rtc_loadgen::discovery::is_ready;
use rtc_loadgen::frames::Reason;
use rtc_loadgen::progress::Silent;
use rtc_loadgen::{Discovery, PhaseKind, Profile, Rate, RunConfig, Summary};
use rtc_testkit::{Endpoints, TestNamespace, unique_name};
use serde_json::Value;

type Result<T = (), E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

const READY_TIMEOUT: Duration = Duration::from_secs(90);

fn k8s_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/k8s")
}

fn document(file: &str, kind: &str) -> Result<Value> {
    let text = std::fs::read_to_string(k8s_dir().join(file))?;
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text)?;
    docs.into_iter()
        .find(|d| d["kind"] == kind)
        .ok_or_else(|| format!("no {kind} in deploy/k8s/{file}").into())
}

/// deploy/k8s's ConfigMap with the stack's servers, this test's prefixes
/// and a 5 s drain (2 s for the endpoints, then reconnect batches).
fn config_map(namespace: &str, endpoints: &Endpoints) -> Result<ConfigMap> {
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

fn socket_deployment(namespace: &str, replicas: i32) -> Result<Deployment> {
    let mut doc = document("04-socket.yaml", "Deployment")?;
    doc["metadata"]["namespace"] = namespace.into();
    doc["spec"]["replicas"] = replicas.into();
    doc["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 40.into();
    Ok(serde_json::from_value(doc)?)
}

async fn wait_ready(pods: &Api<Pod>, count: usize) -> Result<Vec<Pod>> {
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

fn address(pod: &Pod) -> String {
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_default();
    format!("{ip}:8000")
}

/// A namespace with the ConfigMap and a socket Deployment of `replicas`
/// Ready pods.
async fn socket_pods(replicas: usize) -> Result<(TestNamespace, Vec<Pod>)> {
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

fn discovery(ns: &TestNamespace) -> Discovery {
    Discovery::Kubernetes {
        client: ns.client().clone(),
        namespace: ns.name().to_owned(),
        selector: "app=socket".into(),
        port: 8000,
    }
}

fn config(profile: Profile) -> RunConfig {
    let run = unique_name("lg").replace(|c: char| !c.is_ascii_alphanumeric(), "");
    let run: String = run
        .chars()
        .rev()
        .take(24)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let mut config = RunConfig::new(run, profile);
    config.grace = Duration::from_secs(15);
    config
}

fn assert_nothing_lost(summary: &Summary) {
    let m = &summary.messages;
    assert!(m.sent > 0, "{m:?}");
    assert_eq!(m.lost, 0, "lost: {:?}", summary.never_received);
    assert_eq!(
        m.received, m.sent,
        "never received: {:?}",
        summary.never_received
    );
    assert!(summary.never_received.is_empty());
    assert_eq!(m.misdelivered, 0, "{m:?}");
    assert_eq!(summary.latency.count, m.received);
    assert!(summary.latency.p50_ms > 0.0 && summary.latency.max_ms >= summary.latency.p99_ms);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_load_on_two_pods_arrives_whole() -> Result {
    let (ns, pods) = socket_pods(2).await?;
    let profile = Profile::single(
        PhaseKind::Steady,
        Duration::from_secs(10),
        20,
        Rate::Overall(50.0),
    )?;
    let summary = rtc_loadgen::run(config(profile), discovery(&ns), &mut Silent).await?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    assert_nothing_lost(&summary);
    assert!(summary.messages.sent >= 450, "{:?}", summary.messages);
    // Least connections over two Ready pods: ten each.
    for pod in &pods {
        assert_eq!(
            summary.connections.opened_by_target.get(&address(pod)),
            Some(&10),
            "{:?}",
            summary.connections
        );
    }
    let acked: u64 = summary.messages.acked.values().sum();
    assert_eq!(acked, summary.messages.sent, "{:?}", summary.messages);
    // Counted, whatever the number: at least once allows them.
    println!("duplicates: {}", summary.messages.duplicates);
    ns.cleanup().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_two_pods_to_one_mid_run_moves_clients_and_loses_nothing() -> Result {
    let (ns, pods) = socket_pods(2).await?;
    let profile = Profile::single(
        PhaseKind::Steady,
        Duration::from_secs(20),
        20,
        Rate::Overall(40.0),
    )?;
    let (config, discovery) = (config(profile), discovery(&ns));
    let run = tokio::spawn(async move { rtc_loadgen::run(config, discovery, &mut Silent).await });
    tokio::time::sleep(Duration::from_secs(5)).await;
    ns.api::<Deployment>()
        .patch(
            "socket",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": 1}})),
        )
        .await?;
    let summary = run.await??;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    assert_nothing_lost(&summary);
    let left = wait_ready(&ns.api::<Pod>(), 1).await?;
    let remaining = address(&left[0]);
    let gone: Vec<String> = pods
        .iter()
        .map(address)
        .filter(|a| *a != remaining)
        .collect();
    assert_eq!(gone.len(), 1, "one of the two pods went");
    assert!(
        summary.reconnects.get(&Reason::Drain).copied().unwrap_or(0) > 0,
        "clients were told to reconnect: {:?}",
        summary.reconnects
    );
    // Every client ends on the remaining pod; the drained pod's ten came over.
    assert_eq!(
        summary.connections.open_at_end_by_target,
        [(remaining.clone(), 20)].into_iter().collect(),
        "{:?}",
        summary.connections
    );
    let moved = summary
        .connections
        .opened_by_target
        .get(&remaining)
        .copied()
        .unwrap_or(0);
    assert!(moved >= 20, "{:?}", summary.connections);
    ns.cleanup().await?;
    Ok(())
}
