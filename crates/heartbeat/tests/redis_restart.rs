//! Redis stopped and started again under a running publisher and ingestor,
//! with the local stack's service script. Its own test binary, so no other
//! test of this crate runs while Redis is down.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{STALE_AFTER, eventually, ingestor, publisher_config, setup};
use rtc_heartbeat::{FleetEvent, LinkStatus, Load, SystemClock, publisher};
use tokio::sync::watch;
use tokio::time::Instant;

fn redis_script(action: &'static str) -> std::io::Result<()> {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/local/services/redis.sh");
    let status = Command::new(&script).arg(action).status()?;
    assert!(status.success(), "{} {action}: {status}", script.display());
    Ok(())
}

/// Starts Redis again however the test ends, so later tests find it up.
struct StartOnDrop;

impl Drop for StartOnDrop {
    fn drop(&mut self) {
        let _ = Command::new(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/local/services/redis.sh"),
        )
        .arg("start")
        .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingestion_recovers_from_a_redis_restart_without_serving_stale_data_as_fresh() {
    let s = setup().await;
    let (_load, load_rx) = watch::channel(Load {
        conn: 10,
        ..Load::IDLE
    });
    let node = publisher::spawn(
        publisher_config("socket-r"),
        s.store.clone(),
        SystemClock,
        load_rx,
    )
    .expect("valid config");
    let fleet = ingestor(&s.store).spawn();
    let mut events = fleet.events();
    assert!(
        eventually(Duration::from_secs(3), || {
            fleet
                .snapshot()
                .node("socket-r")
                .is_some_and(|n| n.latest.heartbeat.seq >= 2)
        })
        .await
    );

    let _guard = StartOnDrop;
    tokio::task::spawn_blocking(|| redis_script("stop"))
        .await
        .expect("stop")
        .expect("run the redis service script");
    let stopped = Instant::now();
    let seq_at_stop = fleet
        .snapshot()
        .node("socket-r")
        .map_or(0, |n| n.latest.heartbeat.seq);

    // Down: both sides say so; the node is still known, but as stale.
    let publisher_status = node.status();
    let fleet_status = fleet.status();
    assert!(
        eventually(Duration::from_secs(3), || {
            matches!(*publisher_status.borrow(), LinkStatus::Failing { .. })
                && matches!(*fleet_status.borrow(), LinkStatus::Failing { .. })
        })
        .await,
        "publisher {:?}, ingestor {:?}",
        *publisher_status.borrow(),
        *fleet_status.borrow()
    );
    tokio::time::sleep_until(stopped + STALE_AFTER + Duration::from_millis(200)).await;
    let samples = fleet.snapshot().samples(Instant::now());
    assert_eq!(samples.len(), 1);
    assert!(
        samples[0].age_ms > u64::try_from(STALE_AFTER.as_millis()).unwrap_or(0),
        "age {} ms while redis is down",
        samples[0].age_ms
    );

    tokio::task::spawn_blocking(|| redis_script("start"))
        .await
        .expect("start")
        .expect("run the redis service script");

    // Back: reconnected, resynchronised, fresh data from after the restart.
    assert!(
        eventually(Duration::from_secs(5), || {
            fleet_status.borrow().is_connected()
                && publisher_status.borrow().is_connected()
                && fleet.snapshot().node("socket-r").is_some_and(|n| {
                    n.latest.heartbeat.seq > seq_at_stop && n.age(Instant::now()) < STALE_AFTER
                })
        })
        .await,
        "publisher {:?}, ingestor {:?}",
        *publisher_status.borrow(),
        *fleet_status.borrow()
    );
    // The node was kept through the restart, not reported gone and back.
    let mut seen = Vec::new();
    while let Ok(event) = events.try_recv() {
        seen.push(event);
    }
    assert!(
        !seen
            .iter()
            .any(|e| matches!(e, FleetEvent::Departed { .. })),
        "{seen:?}"
    );

    node.deregister().await.expect("redis is up again");
    fleet.shutdown().await;
}
