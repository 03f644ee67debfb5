//! The Redis store and the Kafka bus against the local stack's real
//! servers, each test under its own key prefix and topic names. The Redis
//! scripts must answer exactly as the pure presence rules do.

use std::time::Duration;

use rtc_heartbeat::KeyLayout;
use rtc_relay::core::presence::PresenceBook;
use rtc_relay::{BufferLimits, Bus, KafkaBus, Lookup, PresenceStore, RedisStore, Registry, Topic};
use rtc_testkit::{Endpoints, unique_name};

type Result<T = (), E = Box<dyn std::error::Error + Send + Sync>> = std::result::Result<T, E>;

const TTL: Duration = Duration::from_secs(60);
const LIMITS: BufferLimits = BufferLimits {
    max: 3,
    ttl: Duration::from_secs(60),
};

fn store(redis: &rtc_testkit::TestRedis, node: &str) -> RedisStore {
    RedisStore::new(
        redis.client().clone(),
        redis.prefix().to_owned(),
        node,
        TTL,
        LIMITS,
        KeyLayout::new(redis.key("hb:")),
    )
}

#[tokio::test]
async fn the_redis_scripts_follow_the_presence_rules() -> Result {
    let redis = rtc_testkit::redis().await?;
    let nodes = ["a", "b"];
    let stores = [store(&redis, "a"), store(&redis, "b")];
    let mut model = PresenceBook::default();
    // A fixed walk through every rule: (op, client, node).
    let ops = [
        ("route", "bob", 0),
        ("route", "bob", 1),
        ("buffer", "bob", 0),
        ("route", "bob", 0),
        ("connect", "bob", 1),
        ("route", "bob", 0),
        ("route", "bob", 1),
        ("refresh", "bob", 0),
        ("refresh", "bob", 1),
        ("leave", "bob", 0),
        ("route", "bob", 0),
        ("leave", "bob", 1),
        ("route", "bob", 0),
        ("connect", "bob", 0),
        ("connect", "carol", 0),
        ("refresh", "dave", 1),
        ("route", "dave", 0),
        // Buffered while no claim was seen; the next refresh of the node
        // that serves erin takes it, so it is not stranded until a
        // reconnect.
        ("route", "erin", 0),
        ("route", "erin", 1),
        ("refresh", "erin", 0),
        ("refresh", "erin", 0),
    ];
    for (i, (op, client, n)) in ops.iter().enumerate() {
        let (store, node) = (&stores[*n], nodes[*n]);
        let frame = format!("f{i}");
        match *op {
            "route" => {
                let real = store.route(client, &frame).await?;
                let want = model.route(0, client, node, &frame, LIMITS);
                assert_eq!(real, want, "step {i}: {op} {client} on {node}");
            }
            "buffer" => {
                store.buffer(client, &frame).await?;
                model.buffer(0, client, &frame, LIMITS);
            }
            "connect" => {
                let real = store.connect(client).await?;
                let want = model.connect(0, client, node, TTL);
                assert_eq!(real, want, "step {i}: {op} {client} on {node}");
            }
            "refresh" => {
                let real = store.refresh(client).await?;
                let want = model.refresh(0, client, node, TTL);
                assert_eq!(real, want, "step {i}: {op} {client} on {node}");
            }
            "leave" => {
                store.leave(client).await?;
                model.leave(0, client, node);
            }
            _ => unreachable!("no such op"),
        }
    }
    assert_eq!(
        stores[1].route("bob", "last").await?,
        Lookup::Node("a".to_owned())
    );
    Ok(())
}

#[tokio::test]
async fn the_registry_claims_and_retires() -> Result {
    let redis = rtc_testkit::redis().await?;
    let (a, b) = (store(&redis, "a"), store(&redis, "b"));
    a.register(1).await?;
    b.register(2).await?;
    assert_eq!(a.registered().await?, ["a", "b"]);
    assert!(!a.is_live("b").await?);
    fred::interfaces::KeysInterface::set::<(), _, _>(
        redis.client(),
        redis.key("hb:live:b"),
        "x",
        None,
        None,
        false,
    )
    .await?;
    assert!(a.is_live("b").await?);

    let ttl = Duration::from_secs(5);
    assert!(a.claim_forward("x", ttl).await?);
    assert!(!b.claim_forward("x", ttl).await?);
    assert!(!b.renew_forward("x", ttl).await?);
    assert!(a.renew_forward("x", ttl).await?);
    b.release_forward("x").await?;
    assert!(
        !b.claim_forward("x", ttl).await?,
        "only the holder releases"
    );
    a.release_forward("x").await?;
    assert!(b.claim_forward("x", ttl).await?);

    assert_eq!(a.dead_since("b", 10).await?, 10);
    assert_eq!(a.dead_since("b", 20).await?, 10, "the first mark stays");
    a.retire("b").await?;
    assert_eq!(a.registered().await?, ["a"]);
    assert_eq!(a.dead_since("b", 30).await?, 30, "retiring clears the mark");
    b.register(40).await?;
    assert_eq!(
        a.dead_since("b", 50).await?,
        50,
        "registering clears it too"
    );
    Ok(())
}

#[tokio::test]
async fn the_kafka_bus_publishes_reads_and_commits() -> Result {
    let endpoints = Endpoints::from_env();
    let prefix = format!("{}.", unique_name("relay-bus"));
    let bus = KafkaBus::connect(
        vec![endpoints.kafka_bootstrap.clone()],
        prefix.clone(),
        "relay-bus-test",
        Duration::from_secs(10),
        Duration::from_secs(5),
    )
    .await?;
    assert_eq!(bus.topic_name("n1"), format!("{prefix}n1"));
    let topic = bus.own_topic("n1").await?;
    assert_eq!(topic.group(), "rtc-node-n1");
    assert_eq!(topic.committed().await?, None);
    for n in 0..3u64 {
        bus.publish("n1", &format!("c{n}"), &format!("{{\"n\":{n}}}"), 1_000 + n)
            .await?;
    }
    let mut position = 0;
    let mut seen = Vec::new();
    let started = tokio::time::Instant::now();
    while seen.len() < 3 && started.elapsed() < Duration::from_secs(10) {
        let batch = topic.fetch(position, 250).await?;
        seen.extend(batch.deliveries.iter().map(|d| (d.to.clone(), d.sent_ms)));
        position = batch.next;
    }
    assert_eq!(
        seen,
        [
            ("c0".to_owned(), 1_000),
            ("c1".to_owned(), 1_001),
            ("c2".to_owned(), 1_002)
        ]
    );
    assert_eq!(position, 3);
    topic.commit(position).await?;
    assert_eq!(bus.open("n1").await?.committed().await?, Some(3));
    // A second call finds the topic there.
    assert_eq!(bus.own_topic("n1").await?.name(), bus.topic_name("n1"));
    Ok(())
}
