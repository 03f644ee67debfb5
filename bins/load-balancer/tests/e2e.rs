//! The load-balancer binary end to end on the local stack: real Redis, real
//! Kubernetes API server, socket nodes simulated by heartbeat publishers.
//! Windows are shortened through configuration, never by changing defaults.

mod common;

use common::*;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use rtc_testkit::Endpoints;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_scales_out_both_kinds_by_the_critical_step() -> Result {
    for kind in [Kind::Deployment, Kind::StatefulSet] {
        let ns = rtc_testkit::kubernetes().await?;
        let mut fleet = Fleet::new(&prefix(&ns))?;
        let identity = format!("lb-{}", ns.name());
        let bootstrap = Endpoints::from_env().kafka_bootstrap;
        // The replica leads on a calm fleet first, so the measured time is
        // heartbeat-to-write, not process start.
        let extra = [("KAFKA_BOOTSTRAP", bootstrap.as_str())];
        let lb = start_balanced(
            &ns,
            kind,
            &mut fleet,
            &identity,
            &extra,
            Duration::from_secs(20),
        )
        .await?;
        let overloaded = Instant::now();
        fleet.set_all(load(0.8, 900));
        let took = eventually(Duration::from_secs(20), || async {
            (replicas(&ns, kind).await.ok() == Some(8)).then(|| overloaded.elapsed())
        })
        .await
        .ok_or_else(|| format!("{kind:?}: no scale-out to 8:\n{}", lb.log()))?;
        println!("{kind:?}: first overloaded heartbeat to /scale write seen: {took:?}");

        // The write is visible on the API server a moment before the
        // load-balancer has read its answer and logged it.
        let log = eventually(Duration::from_secs(5), || async {
            let log = lb.log();
            log.contains("Successfully scaled").then_some(log)
        })
        .await
        .unwrap_or_else(|| lb.log());
        assert!(
            log.contains("CRITICAL: resource overload (CPU 80.0%, Mem 80.0%)"),
            "{log}"
        );
        assert!(
            log.contains(
                "Exponential scale-out: urgency=3, base=3, consecutive=0, growth=n/a, step=3"
            ),
            "{log}"
        );
        assert!(log.contains("SCALE_OUT nodes=5->8 (+3)"), "{log}");
        assert!(log.contains("Successfully scaled"), "{log}");
        let signal = eventually(Duration::from_secs(15), || scale_signal(&identity))
            .await
            .ok_or_else(|| {
                format!(
                    "{kind:?}: no scaling signal on {SIGNAL_TOPIC}:\n{}",
                    lb.log()
                )
            })?;
        assert_eq!(signal["action"], "scale_out", "{signal}");
        assert_eq!(
            (
                signal["from"].as_u64(),
                signal["to"].as_u64(),
                signal["delta"].as_i64()
            ),
            (Some(5), Some(8), Some(3))
        );
        assert_eq!(signal["urgency"], "critical");
        assert_eq!(signal["reason"], "resource-overload");
        assert!(
            signal["fencing_token"].is_u64() && signal["timestamp_ms"].is_u64(),
            "{signal}"
        );
        assert_eq!(signal["aggregates"]["n"], 5);
        // The new pods never report: the leader settles instead of compounding.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(replicas(&ns, kind).await?, 8, "{}", lb.log());
        assert!(lb.log().contains("reason=settling"), "{}", lb.log());
        drop(lb);
        ns.cleanup().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calm_scales_in_by_one_with_the_least_loaded_pod_cheapest() -> Result {
    let ns = rtc_testkit::kubernetes().await?;
    create_workload(&ns, Kind::Deployment, 4).await?;
    let mut fleet = Fleet::new(&prefix(&ns))?;
    let conns = [40, 3, 25, 9];
    for (i, c) in conns.iter().enumerate() {
        create_pod(&ns, &format!("socket-{i}")).await?;
        fleet.add(&format!("socket-{i}"), load(0.05, *c))?;
    }
    let lb = Lb::start(
        "lb-0",
        &ns,
        &prefix(&ns),
        &[
            ("SCALE_IN_WINDOW_MS", "1000"),
            ("SCALE_IN_STABILIZATION_MS", "2000"),
        ],
    )?;
    eventually(Duration::from_secs(30), || async {
        (replicas(&ns, Kind::Deployment).await.ok() == Some(3)).then_some(())
    })
    .await
    .ok_or_else(|| format!("no scale-in:\n{}", lb.log()))?;
    let log = lb.log();
    assert!(
        log.contains("SCALE_IN nodes=4->3 (-1) victim=socket-1"),
        "{log}"
    );
    let pods = ns.api::<Pod>();
    let mut costs = BTreeMap::new();
    for i in 0..4 {
        let name = format!("socket-{i}");
        let cost: i64 = pods
            .get(&name)
            .await?
            .metadata
            .annotations
            .and_then(|a| a.get("controller.kubernetes.io/pod-deletion-cost").cloned())
            .ok_or("pod not annotated")?
            .parse()?;
        costs.insert(name, cost);
    }
    let victim = costs["socket-1"];
    assert!(
        costs.iter().all(|(n, c)| n == "socket-1" || *c > victim),
        "{costs:?}"
    );
    // One node at a time: it stays at 3 while the window runs.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(replicas(&ns, Kind::Deployment).await?, 3);
    drop(lb);
    ns.cleanup().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_is_not_read_as_idle() -> Result {
    let ns = rtc_testkit::kubernetes().await?;
    create_workload(&ns, Kind::Deployment, 4).await?;
    let mut fleet = Fleet::new(&prefix(&ns))?;
    for i in 0..4 {
        create_pod(&ns, &format!("socket-{i}")).await?;
        fleet.add(&format!("socket-{i}"), load(0.05, 10))?;
    }
    let lb = Lb::start(
        "lb-0",
        &ns,
        &prefix(&ns),
        &[
            ("SCALE_IN_WINDOW_MS", "1000"),
            ("SCALE_IN_STABILIZATION_MS", "4000"),
        ],
    )?;
    eventually(Duration::from_secs(20), || async {
        lb.log().contains("reason=stabilizing").then_some(())
    })
    .await
    .ok_or_else(|| format!("never stabilizing:\n{}", lb.log()))?;
    fleet.silence("socket-2");
    eventually(Duration::from_secs(10), || async {
        lb.log().contains("reason=incomplete-data").then_some(())
    })
    .await
    .ok_or_else(|| format!("the silent node was not noticed:\n{}", lb.log()))?;
    // Well past the stabilization time: still no scale-in.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(replicas(&ns, Kind::Deployment).await?, 4, "{}", lb.log());
    assert!(!lb.log().contains("SCALE_IN"), "{}", lb.log());
    drop(lb);
    ns.cleanup().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_never_both_scale_and_a_successor_resumes_the_state() -> Result {
    let ns = rtc_testkit::kubernetes().await?;
    create_workload(&ns, Kind::Deployment, 5).await?;
    let mut fleet = Fleet::new(&prefix(&ns))?;
    for i in 0..5 {
        fleet.add(&format!("socket-{i}"), load(0.8, 900))?;
    }
    let mut lbs = vec![
        Lb::start("lb-a", &ns, &prefix(&ns), &[])?,
        Lb::start("lb-b", &ns, &prefix(&ns), &[])?,
    ];
    eventually(Duration::from_secs(20), || async {
        (replicas(&ns, Kind::Deployment).await.ok() == Some(8)).then_some(())
    })
    .await
    .ok_or("no scale-out")?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        replicas(&ns, Kind::Deployment).await?,
        8,
        "exactly one +3 step"
    );
    let scaled: usize = lbs
        .iter()
        .map(|l| l.log().matches("Successfully scaled").count())
        .sum();
    assert_eq!(
        scaled,
        1,
        "only the leader scales:\n{}\n---\n{}",
        lbs[0].log(),
        lbs[1].log()
    );

    // Kill the leader without a release.
    let holder = ns
        .api::<Lease>()
        .get("rtc-load-balancer")
        .await?
        .spec
        .and_then(|s| s.holder_identity)
        .ok_or("no lease holder")?;
    let leader = lbs
        .iter()
        .position(|l| l.log().contains("SCALE_OUT"))
        .ok_or("no leader log")?;
    assert!(
        lbs[leader].log().contains(&format!("identity={holder}"))
            || lbs[leader].log().contains(&holder)
    );
    let killed_at = Instant::now();
    lbs.remove(leader);
    let successor = lbs.pop().ok_or("no successor")?;
    let took = eventually(Duration::from_secs(15), || async {
        successor
            .log()
            .contains("resumed the decision state")
            .then(|| killed_at.elapsed())
    })
    .await
    .ok_or_else(|| format!("no takeover:\n{}", successor.log()))?;
    println!("takeover after a crash: {took:?} (lease 3 s, renew deadline 2 s, retry 0.5 s)");
    // Only 5 of 8 replicas report: the successor settles rather than repeating the step.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        replicas(&ns, Kind::Deployment).await?,
        8,
        "{}",
        successor.log()
    );
    assert!(
        successor.log().contains("reason=settling"),
        "{}",
        successor.log()
    );
    // The three new pods join, still overloaded: the next step continues the
    // resumed run of scale-outs (consecutive=1), it does not start over.
    for i in 5..8 {
        fleet.add(&format!("socket-{i}"), load(0.8, 900))?;
    }
    eventually(Duration::from_secs(20), || async {
        (replicas(&ns, Kind::Deployment).await.ok() == Some(11)).then_some(())
    })
    .await
    .ok_or_else(|| format!("no second step:\n{}", successor.log()))?;
    assert!(
        successor
            .log()
            .contains("Exponential scale-out: urgency=3, base=3, consecutive=1"),
        "{}",
        successor.log()
    );
    drop(successor);
    ns.cleanup().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_releases_the_lease_and_exits_zero() -> Result {
    let ns = rtc_testkit::kubernetes().await?;
    let mut fleet = Fleet::new(&prefix(&ns))?;
    let mut a = start_balanced(
        &ns,
        Kind::Deployment,
        &mut fleet,
        "lb-a",
        &[],
        Duration::from_secs(20),
    )
    .await?;
    let b = Lb::start("lb-b", &ns, &prefix(&ns), &[])?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let stopped = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &a.child.id().to_string()])
        .status()?;
    assert!(status.success());
    let exit = eventually(Duration::from_secs(10), || {
        let done = a.child.try_wait().ok().flatten();
        async move { done }
    })
    .await
    .ok_or("did not exit after SIGTERM")?;
    assert!(exit.success(), "exit status {exit}:\n{}", a.log());
    assert!(a.log().contains("released the lease"), "{}", a.log());
    let took = eventually(Duration::from_secs(10), || async {
        b.log()
            .contains("acquired leadership")
            .then(|| stopped.elapsed())
    })
    .await
    .ok_or_else(|| format!("no handover:\n{}", b.log()))?;
    println!("handover after SIGTERM: {took:?} (retry period 0.5 s)");
    assert!(
        took < Duration::from_secs(3),
        "handover took {took:?}, well over one retry period"
    );
    drop(b);
    ns.cleanup().await?;
    Ok(())
}
