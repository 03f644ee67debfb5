//! The load-balancer binary through outages of the stack's Redis and API
//! server. These stop shared servers, so they live in their own test binary
//! (cargo runs test binaries one after another) and run one at a time.

mod common;

use common::*;
use std::time::Duration;
use tokio::sync::Mutex;

/// The two tests stop different servers; never both at once.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_stops_scaling_without_a_crash_and_recovery_follows() -> Result {
    let _one = ONE_AT_A_TIME.lock().await;
    let ns = rtc_testkit::kubernetes().await?;
    let mut fleet = Fleet::new(&prefix(&ns))?;
    let port = free_port()?;
    let admin = format!("127.0.0.1:{port}");
    let extra = [("ADMIN_ADDR", admin.as_str())];
    let mut lb = start_balanced(
        &ns,
        Kind::Deployment,
        &mut fleet,
        "lb-0",
        &extra,
        Duration::from_secs(20),
    )
    .await?;

    let restart = Restart("redis");
    service("redis", "stop")?;
    // The fleet turns hot, but no heartbeat can say so.
    fleet.set_all(load(0.9, 900));
    eventually(Duration::from_secs(10), || async {
        lb.log().contains("reason=no-data").then_some(())
    })
    .await
    .ok_or_else(|| format!("old heartbeats were served as fresh:\n{}", lb.log()))?;
    eventually(Duration::from_secs(10), || async {
        admin_get(port, "/readyz").await.filter(|r| r.0 == 503)
    })
    .await
    .ok_or("still ready without Redis")?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        replicas(&ns, Kind::Deployment).await?,
        5,
        "no scaling without data"
    );
    assert!(
        lb.child.try_wait()?.is_none(),
        "the load-balancer exited:\n{}",
        lb.log()
    );

    drop(restart);
    eventually(Duration::from_secs(30), || async {
        (replicas(&ns, Kind::Deployment).await.ok() == Some(8)).then_some(())
    })
    .await
    .ok_or_else(|| format!("no recovery after Redis returned:\n{}", lb.log()))?;
    let ready = admin_get(port, "/readyz").await.ok_or("admin port down")?;
    assert_eq!(ready.0, 200, "{}", ready.1);
    drop(lb);
    ns.cleanup().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_down_fails_ticks_cleanly_and_recovery_follows() -> Result {
    let _one = ONE_AT_A_TIME.lock().await;
    let ns = rtc_testkit::kubernetes().await?;
    let mut fleet = Fleet::new(&prefix(&ns))?;
    let mut lb = start_balanced(
        &ns,
        Kind::Deployment,
        &mut fleet,
        "lb-0",
        &[],
        Duration::from_secs(20),
    )
    .await?;

    let restart = Restart("apiserver");
    service("apiserver", "stop")?;
    fleet.set_all(load(0.9, 900));
    // Ticks fail while the leader still holds its lease, then it steps down.
    eventually(Duration::from_secs(15), || async {
        lb.log().contains("stepped down").then_some(())
    })
    .await
    .ok_or_else(|| format!("the leader did not step down:\n{}", lb.log()))?;
    assert!(lb.log().contains("tick failed"), "{}", lb.log());
    assert!(
        lb.child.try_wait()?.is_none(),
        "the load-balancer exited:\n{}",
        lb.log()
    );

    drop(restart);
    eventually(Duration::from_secs(40), || async {
        (replicas(&ns, Kind::Deployment).await.ok() == Some(8)).then_some(())
    })
    .await
    .ok_or_else(|| format!("no recovery after the API server returned:\n{}", lb.log()))?;
    // The controller-manager's watches come back on their own backoff; the
    // next test's fresh workload must not wait for that.
    rtc_testkit::fixtures::settled_within(
        &ns.api::<k8s_openapi::api::apps::v1::Deployment>(),
        NAME,
        Duration::from_secs(120),
    )
    .await?;
    drop(lb);
    ns.cleanup().await?;
    Ok(())
}
