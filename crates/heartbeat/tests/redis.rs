//! The publisher and the ingestor against the local stack's Redis
//! (`deploy/local/stack up redis`).

mod common;

use std::time::Duration;

use common::{STALE_AFTER, eventually, ingestor, publisher_config, setup};
use fred::interfaces::{KeysInterface, SortedSetsInterface};
use rtc_heartbeat::{
    DepartReason, FleetEvent, Heartbeat, HeartbeatStore, LimitSource, LinkStatus, Load,
    PublishOptions, RedisOptions, RedisStore, SystemClock, WallClock, connect, decode, encode,
    publisher,
};
use tokio::sync::watch;
use tokio::time::Instant;

fn busy() -> Load {
    Load {
        cpu: 0.42,
        mem: 0.61,
        cpu_of: LimitSource::Cgroup,
        mem_of: LimitSource::Cgroup,
        conn: 1_234,
        mps: 56.5,
        p95_ms: 88.0,
        lag_records: 7,
        lag_ms: 12.5,
        draining: false,
    }
}

#[tokio::test]
async fn published_heartbeats_reach_the_ingestor_with_their_history() {
    let s = setup().await;
    let (_load, load_rx) = watch::channel(busy());
    let node = publisher::spawn(
        publisher_config("socket-0"),
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
                .node("socket-0")
                .is_some_and(|n| n.history.len() >= 3)
        })
        .await,
        "three heartbeats within 3 s"
    );
    assert_eq!(
        events.try_recv().ok(),
        Some(FleetEvent::Joined {
            node: "socket-0".into(),
            boot: "boot-1".into()
        })
    );
    let snapshot = fleet.snapshot();
    let entry = snapshot.node("socket-0").expect("known");
    let seqs: Vec<u64> = entry.history.iter().map(|r| r.heartbeat.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(entry.latest.heartbeat.load(), busy());

    let samples = snapshot.samples(Instant::now());
    assert_eq!(samples.len(), 1);
    let sample = &samples[0];
    assert_eq!(
        (sample.id.as_str(), sample.cpu, sample.mem),
        ("socket-0", 0.42, 0.61)
    );
    assert_eq!(
        (sample.conn, sample.mps, sample.p95_ms, sample.lag_ms),
        (1_234.0, 56.5, 88.0, 12.5)
    );
    assert!(sample.age_ms < 1_000, "{}", sample.age_ms);
    assert!(node.status().borrow().is_connected());

    // Redis keeps the recent history too, newest first.
    let history = s.store.history("socket-0", 5).await.expect("redis is up");
    assert!(history.len() >= 3);
    let limits = rtc_heartbeat::DecodeLimits::default();
    let newest: Vec<u64> = history
        .iter()
        .map(|p| decode(p, SystemClock.now_ms(), &limits).expect("valid").seq)
        .collect();
    assert!(newest.windows(2).all(|w| w[0] > w[1]), "{newest:?}");

    node.stop().await;
    fleet.shutdown().await;
    s.redis.cleanup().await.expect("cleanup");
}

fn options() -> PublishOptions {
    PublishOptions {
        stale_after: STALE_AFTER,
        history_len: 20,
        history_ttl: Duration::from_secs(60),
    }
}

fn payload(node: &str, seq: u64, load: &Load) -> Vec<u8> {
    encode(&Heartbeat::new(
        node,
        "boot-1",
        seq,
        SystemClock.now_ms(),
        load,
    ))
}

#[tokio::test]
async fn a_silent_node_is_gone_after_stale_after_and_not_before() {
    let s = setup().await;
    let mut reader = ingestor(&s.store);

    // A node that keeps publishing stays, well past STALE_AFTER.
    let (_load, load_rx) = watch::channel(busy());
    let steady = publisher::spawn(
        publisher_config("steady"),
        s.store.clone(),
        SystemClock,
        load_rx,
    )
    .expect("valid config");
    let steady_status = steady.status();
    assert!(
        eventually(Duration::from_secs(2), || steady_status
            .borrow()
            .is_connected())
        .await
    );

    // A node that publishes once and falls silent.
    let before = Instant::now();
    s.store
        .publish("silent", &payload("silent", 1, &busy()), &options())
        .await
        .expect("redis is up");
    let after = Instant::now();
    assert!(
        after - before < Duration::from_millis(100),
        "publish took {:?}",
        after - before
    );

    let report = reader.poll_once().await.expect("redis is up");
    assert!(report.events.contains(&FleetEvent::Joined {
        node: "silent".into(),
        boot: "boot-1".into()
    }));

    // Not before: 3/4 of STALE_AFTER after the publish it is still there.
    tokio::time::sleep_until(before + STALE_AFTER * 3 / 4).await;
    let report = reader.poll_once().await.expect("redis is up");
    assert!(report.events.is_empty(), "{:?}", report.events);
    let samples = reader.snapshot().samples(Instant::now());
    let silent = samples
        .iter()
        .find(|n| n.id == "silent")
        .expect("still known");
    assert!(silent.age_ms >= 400, "{}", silent.age_ms);

    // After: gone, as expired, and never counted again.
    tokio::time::sleep_until(after + STALE_AFTER + Duration::from_millis(50)).await;
    let report = reader.poll_once().await.expect("redis is up");
    assert_eq!(
        report.events,
        [FleetEvent::Departed {
            node: "silent".into(),
            reason: DepartReason::Expired
        }]
    );
    tokio::time::sleep(STALE_AFTER).await;
    let report = reader.poll_once().await.expect("redis is up");
    assert!(report.events.is_empty(), "{:?}", report.events);
    let ids: Vec<String> = reader
        .snapshot()
        .samples(Instant::now())
        .into_iter()
        .map(|n| n.id)
        .collect();
    assert_eq!(ids, ["steady"]);
    assert!(steady.status().borrow().is_connected());

    steady.stop().await;
    s.redis.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn deregister_removes_the_node_at_once() {
    let s = setup().await;
    let (_load, load_rx) = watch::channel(busy());
    let node = publisher::spawn(
        publisher_config("leaving"),
        s.store.clone(),
        SystemClock,
        load_rx,
    )
    .expect("valid config");
    let mut reader = ingestor(&s.store);
    let status = node.status();
    assert!(eventually(Duration::from_secs(2), || status.borrow().is_connected()).await);
    reader.poll_once().await.expect("redis is up");
    assert!(reader.snapshot().node("leaving").is_some());

    node.deregister().await.expect("redis is up");
    assert_eq!(*status.borrow(), LinkStatus::Stopped);
    let report = reader.poll_once().await.expect("redis is up");
    assert_eq!(
        report.events,
        [FleetEvent::Departed {
            node: "leaving".into(),
            reason: DepartReason::Removed
        }]
    );
    let live: Option<String> = s
        .redis
        .client()
        .get(s.store.keys().live("leaving"))
        .await
        .expect("get");
    assert_eq!(live, None);
    s.redis.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn hostile_payloads_written_into_redis_are_rejected_and_counted() {
    let s = setup().await;
    let client = s.redis.client();
    let keys = s.store.keys().clone();
    let now_ms = SystemClock.now_ms();
    let good = payload("good", 1, &busy());
    let with = |field: &str, value: serde_json::Value| -> Vec<u8> {
        let mut json: serde_json::Value = serde_json::from_slice(&good).expect("json");
        json["node"] = "x".into();
        json[field] = value;
        serde_json::to_vec(&json).expect("json")
    };
    let hostile: Vec<(&str, Vec<u8>, &str)> = vec![
        ("garbage", b"\xff\x00not json".to_vec(), "malformed"),
        ("huge", vec![b'{'; 1 << 20], "too_large"),
        (
            "deep",
            format!("{{\"v\":1,\"node\":{}}}", "[".repeat(2_000)).into_bytes(),
            "malformed",
        ),
        ("future-v", with("v", 2.into()), "unknown_version"),
        (
            "no-cpu",
            {
                let mut json: serde_json::Value =
                    serde_json::from_slice(&with("cpu", 0.into())).expect("json");
                json.as_object_mut().expect("object").remove("cpu");
                serde_json::to_vec(&json).expect("json")
            },
            "missing_field",
        ),
        ("negative", with("mem", (-0.5).into()), "invalid_value"),
        ("absurd", with("cpu", 1e300.into()), "invalid_value"),
        (
            "skewed",
            with("sent_ms", (now_ms + 3_600_000).into()),
            "clock_skew",
        ),
        ("impostor", payload("good", 1, &busy()), "node_mismatch"),
    ];
    for (node, bytes, _) in &hostile {
        // The record names "x" (or "good"); fix the `node` field to the key
        // where the test is not about mismatches.
        let bytes = match serde_json::from_slice::<serde_json::Value>(bytes) {
            Ok(mut json) if *node != "impostor" => {
                json["node"] = (*node).into();
                serde_json::to_vec(&json).expect("json")
            }
            _ => bytes.clone(),
        };
        let _: () = client
            .set(keys.live(node), bytes.as_slice(), None, None, false)
            .await
            .expect("set");
        let _: () = client
            .zadd(keys.index(), None, None, false, false, (1.0, *node))
            .await
            .expect("zadd");
    }
    // Index entries that are no valid ids, and a liveness key of the wrong type.
    let _: () = client
        .zadd(
            keys.index(),
            None,
            None,
            false,
            false,
            vec![(1.0, "bad id"), (1.0, "../../etc"), (1.0, "")],
        )
        .await
        .expect("zadd");
    let _: () = client
        .zadd(keys.index(), None, None, false, false, (1.0, "wrongtype"))
        .await
        .expect("zadd");
    let _: () = client
        .zadd(keys.live("wrongtype"), None, None, false, false, (1.0, "x"))
        .await
        .expect("zadd");
    s.store
        .publish("good", &good, &options())
        .await
        .expect("redis is up");

    let mut reader = ingestor(&s.store);
    let report = reader.poll_once().await.expect("redis is up");
    let snapshot = reader.snapshot();
    let ids: Vec<&str> = snapshot
        .nodes
        .iter()
        .map(|n| n.latest.heartbeat.node.as_str())
        .collect();
    assert_eq!(ids, ["good"]);
    for (node, _, label) in &hostile {
        let rejection = report.rejected.iter().find(|r| r.node == *node);
        assert_eq!(rejection.map(|r| r.error.label()), Some(*label), "{node}");
    }
    let total = |label: &str| snapshot.rejected_total.get(label).copied().unwrap_or(0);
    assert_eq!(total("invalid_id"), 3);
    assert_eq!(total("malformed"), 2);
    assert_eq!(total("invalid_value"), 2);
    assert_eq!(
        snapshot.rejected(),
        u64::try_from(hostile.len()).unwrap_or(0) + 3
    );

    // The same bad payloads are not counted again on the next poll.
    reader.poll_once().await.expect("redis is up");
    assert_eq!(reader.snapshot().rejected_total, snapshot.rejected_total);
    s.redis.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn a_thousand_nodes_join_and_half_of_them_leave() {
    let s = setup().await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..1_000 {
        let store = s.store.clone();
        tasks.spawn(async move {
            let node = format!("socket-{i}");
            let load = Load { conn: i, ..busy() };
            store
                .publish(&node, &payload(&node, 1, &load), &options())
                .await
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.expect("task").expect("redis is up");
    }

    let mut reader = ingestor(&s.store);
    let report = reader.poll_once().await.expect("redis is up");
    assert_eq!(report.events.len(), 1_000);
    assert!(report.rejected.is_empty());
    let samples = reader.snapshot().samples(Instant::now());
    assert_eq!(samples.len(), 1_000);
    assert!(samples.iter().all(|n| n.age_ms < 1_000));
    let conns: u64 = reader
        .snapshot()
        .nodes
        .iter()
        .map(|n| n.latest.heartbeat.conn)
        .sum();
    assert_eq!(conns, 999 * 1_000 / 2);

    for i in (0..1_000).step_by(2) {
        s.store
            .deregister(&format!("socket-{i}"))
            .await
            .expect("redis is up");
    }
    let report = reader.poll_once().await.expect("redis is up");
    assert_eq!(report.events.len(), 500);
    assert!(report.events.iter().all(|e| matches!(
        e,
        FleetEvent::Departed {
            reason: DepartReason::Removed,
            ..
        }
    )));
    assert_eq!(reader.snapshot().nodes.len(), 500);
    s.redis.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn an_unreachable_redis_does_not_stop_the_publisher() {
    // Port 1 on loopback: nothing listens there.
    let options = RedisOptions {
        command_timeout: Duration::from_millis(200),
        max_reconnect_delay: Duration::from_millis(200),
        ..RedisOptions::new("redis://127.0.0.1:1")
    };
    let store = RedisStore::new(connect(&options).expect("valid url"), Default::default());
    let (_load, load_rx) = watch::channel(busy());
    let started = Instant::now();
    let node = publisher::spawn(publisher_config("lonely"), store, SystemClock, load_rx)
        .expect("valid config");
    let status = node.status();
    assert!(
        eventually(Duration::from_secs(3), || matches!(
            *status.borrow(),
            LinkStatus::Failing { attempts: 2.., .. }
        ))
        .await,
        "{:?}",
        *status.borrow()
    );
    let LinkStatus::Failing { since, .. } = *status.borrow() else {
        unreachable!()
    };
    assert!(since >= started);
    // Deregistering fails, within the command timeout, and does not hang.
    let result = tokio::time::timeout(Duration::from_secs(2), node.deregister()).await;
    assert!(matches!(result, Ok(Err(_))), "{result:?}");
}

#[tokio::test]
async fn long_silent_index_entries_are_pruned_by_redis_time() {
    let s = setup().await;
    s.store
        .publish("old", &payload("old", 1, &busy()), &options())
        .await
        .expect("redis is up");
    assert_eq!(
        s.store
            .prune(Duration::from_secs(60))
            .await
            .expect("redis is up"),
        0
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.store
        .publish("new", &payload("new", 1, &busy()), &options())
        .await
        .expect("redis is up");
    assert_eq!(
        s.store
            .prune(Duration::from_millis(25))
            .await
            .expect("redis is up"),
        1
    );
    assert_eq!(s.store.node_ids().await.expect("redis is up"), ["new"]);
    s.redis.cleanup().await.expect("cleanup");
}
