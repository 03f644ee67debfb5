//! Committed offsets on the broker, a restart that resumes from them, and a
//! node killed without a drain whose topic another node forwards.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use common::{Client, Cluster, Result, Seen};
use rtc_heartbeat::KeyLayout;
use rtc_kafka_wire::OffsetClient;
use rtc_relay::core::group_of;
use rtc_relay::{BufferLimits, Bus, KafkaBus, RedisStore, Registry, SystemClock, WallClock};
use serde_json::json;
use tokio::time::Instant;

const TIMEOUT: Duration = Duration::from_secs(5);

async fn test_bus(cluster: &Cluster) -> Result<KafkaBus> {
    Ok(KafkaBus::connect(
        vec![cluster.endpoints.kafka_bootstrap.clone()],
        cluster.topic_prefix.clone(),
        "forward-test",
        Duration::from_secs(10),
        TIMEOUT,
    )
    .await?)
}

fn offsets(cluster: &Cluster, node: &str) -> OffsetClient {
    OffsetClient::new(
        vec![cluster.endpoints.kafka_bootstrap.clone()],
        "forward-test",
        group_of(node),
        TIMEOUT,
    )
}

/// Publishes `count` message frames for `to` straight into `node`'s topic,
/// as a sender on another node would; returns their ids.
async fn publish(
    bus: &KafkaBus,
    node: &str,
    to: &str,
    tag: &str,
    count: usize,
) -> Result<Vec<String>> {
    let mut ids = Vec::new();
    for n in 0..count {
        let id = format!("sender/{tag}/{n}");
        let sent_ms = SystemClock.now_ms();
        let frame = json!({"type": "message", "id": id, "from": "sender", "to": to, "sent_ms": sent_ms, "body": n});
        bus.publish(node, to, &frame.to_string(), sent_ms).await?;
        ids.push(id);
    }
    Ok(ids)
}

/// Message ids `client` receives until it has `want` of them or nothing
/// arrives for 5 s (a few extra seconds let duplicates or strays show).
async fn collect(client: &mut Client, want: &BTreeSet<String>) -> Result<BTreeSet<String>> {
    let mut ids = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        match client.next().await {
            Ok(Seen::Json(v)) if v["type"] == "message" => {
                ids.insert(v["id"].as_str().unwrap_or_default().to_owned());
                if want.is_subset(&ids) {
                    // Anything more (a message that should not come) shows
                    // up within a short quiet time.
                    if let Ok(Ok(Seen::Json(v))) =
                        tokio::time::timeout(Duration::from_millis(700), client.next()).await
                        && v["type"] == "message"
                    {
                        ids.insert(v["id"].as_str().unwrap_or_default().to_owned());
                    }
                    break;
                }
            }
            Ok(Seen::Json(_)) => {}
            Ok(Seen::Closed(c)) => return Err(format!("closed {c:?}").into()),
            Err(_) => {}
        }
    }
    Ok(ids)
}

async fn wait_committed(client: &OffsetClient, topic: &str, at: i64) -> Result {
    let started = Instant::now();
    let mut last = None;
    while started.elapsed() < Duration::from_secs(20) {
        last = client.fetch(topic, 0).await?;
        if last == Some(at) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("committed offset {last:?}, {at} expected").into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_commit_and_fetch_on_the_broker_and_a_restarted_node_resumes_from_them() -> Result {
    let cluster = Cluster::new();
    let bus = test_bus(&cluster).await?;
    let node = cluster.start("node-x").await?;
    let topic = bus.topic_name("node-x");
    let group = offsets(&cluster, "node-x");

    // The client itself: commit then fetch; a group without commits has none.
    let other = offsets(&cluster, "nobody-here");
    assert_eq!(other.fetch(&topic, 0).await?, None);
    other.commit(&topic, 0, 5).await?;
    assert_eq!(other.fetch(&topic, 0).await?, Some(5));
    other.commit(&topic, 0, 7).await?;
    assert_eq!(other.fetch(&topic, 0).await?, Some(7));

    // The node commits its position as it reads its topic.
    let mut rx = Client::connect(node.public_addr(), "rx").await?;
    let first: BTreeSet<String> = publish(&bus, "node-x", "rx", "first", 3)
        .await?
        .into_iter()
        .collect();
    assert_eq!(collect(&mut rx, &first).await?, first);
    wait_committed(&group, &topic, 3).await?;
    drop(rx);
    tokio::time::sleep(Duration::from_millis(300)).await;
    node.shutdown().await;

    // While it is down, more arrive; restarted under the same name, it
    // resumes from the committed offset: the first three are not sent again.
    let second: BTreeSet<String> = publish(&bus, "node-x", "rx", "second", 3)
        .await?
        .into_iter()
        .collect();
    let mut settings = cluster.settings("node-x");
    settings.boot_id = "b2".to_owned();
    let node = rtc_socket::start(settings, None)
        .await
        .map_err(|e| format!("{e:#}"))?;
    wait_committed(&group, &topic, 6).await?;
    let mut rx = Client::connect(node.public_addr(), "rx").await?;
    assert_eq!(collect(&mut rx, &second).await?, second);
    node.shutdown().await;
    Ok(())
}

/// A node on a runtime of its own, so that it can be killed as a crash
/// would: every task dropped at once, no drain, no final commit, no
/// deregistration.
struct Doomed {
    addr: SocketAddr,
    kill: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

fn start_doomed(cluster: &Cluster, node: &str) -> Result<Doomed> {
    let settings = cluster.settings(node);
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (kill, kill_rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = addr_tx.send(Err(e.to_string()));
                return;
            }
        };
        let node = match rt.block_on(rtc_socket::start(settings, None)) {
            Ok(n) => n,
            Err(e) => {
                let _ = addr_tx.send(Err(format!("{e:#}")));
                return;
            }
        };
        let _ = addr_tx.send(Ok(node.public_addr()));
        let _ = kill_rx.recv();
        rt.shutdown_background();
        drop(node);
    });
    let addr = addr_rx.recv_timeout(Duration::from_secs(30))??;
    Ok(Doomed { addr, kill, thread })
}

impl Doomed {
    fn kill(self) {
        let _ = self.kill.send(());
        let _ = self.thread.join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_without_a_drain_loses_nothing_already_in_its_topic() -> Result {
    let cluster = Cluster::new();
    let bus = test_bus(&cluster).await?;
    let a = start_doomed(&cluster, "node-a")?;
    let b = cluster.start("node-b").await?;
    let topic = bus.topic_name("node-a");
    let group = offsets(&cluster, "node-a");

    let mut bob = Client::connect(a.addr, "bob").await?;
    let carol = Client::connect(a.addr, "carol").await?;
    // One message read and committed by node-a before it dies: not sent
    // again.
    let before: BTreeSet<String> = publish(&bus, "node-a", "bob", "before", 1)
        .await?
        .into_iter()
        .collect();
    assert_eq!(collect(&mut bob, &before).await?, before);
    wait_committed(&group, &topic, 1).await?;

    a.kill();
    // Published after the crash, as senders that still see bob's and
    // carol's presence on node-a do.
    let for_bob: BTreeSet<String> = publish(&bus, "node-a", "bob", "bob", 5)
        .await?
        .into_iter()
        .collect();
    let for_carol: BTreeSet<String> = publish(&bus, "node-a", "carol", "carol", 5)
        .await?
        .into_iter()
        .collect();
    drop(bob);
    drop(carol);

    // Bob reconnects at once (to node-b: the load balancer's choice); node-b
    // forwards node-a's topic once node-a's heartbeat has expired.
    let mut bob = Client::connect(b.public_addr(), "bob").await?;
    assert_eq!(collect(&mut bob, &for_bob).await?, for_bob);
    wait_committed(&group, &topic, 11).await?;

    // Carol was offline meanwhile: hers are in her buffer.
    let mut carol = Client::connect(b.public_addr(), "carol").await?;
    assert_eq!(collect(&mut carol, &for_carol).await?, for_carol);

    // Read to the end and gone for longer than retire_after: node-a leaves
    // the registry; node-b stays.
    let redis = rtc_testkit::redis().await?;
    let store = RedisStore::new(
        redis.client().clone(),
        cluster.relay_prefix.clone(),
        "test",
        Duration::from_secs(1),
        BufferLimits {
            max: 1,
            ttl: Duration::from_secs(1),
        },
        KeyLayout::new(cluster.heartbeat_prefix.clone()),
    );
    let started = Instant::now();
    let mut registered = store.registered().await?;
    while registered.iter().any(|n| n == "node-a") && started.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        registered = store.registered().await?;
    }
    assert_eq!(registered, vec!["node-b".to_owned()]);
    b.shutdown().await;
    Ok(())
}
