//! The generator against real socket pods: the ConfigMap and the socket
//! Deployment of deploy/k8s in a fresh namespace of the local stack's
//! Kubernetes, pointed at the stack's Redis and broker with per-test
//! prefixes; discovery through the real API server, the real ReplicaSet
//! controller removing a pod on scale-in.
//!
//! Figures are printed (`--nocapture`), never asserted beyond correctness.

mod support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use rtc_loadgen::frames::Reason;
use rtc_loadgen::progress::Silent;
use rtc_loadgen::{PhaseKind, Profile, Rate, RunConfig, Summary};
use support::{Result, address, discovery, socket_pods, wait_ready};

fn config(profile: Profile) -> RunConfig {
    let mut config = RunConfig::new(support::run_id(), profile);
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
