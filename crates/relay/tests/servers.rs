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
    // A new Apache Kafka cluster has no group coordinator until it has
    // made its offsets topic, and says so (as the node's reader does, ask
    // again).
    let started = tokio::time::Instant::now();
    let committed = loop {
        match topic.committed().await {
            Err(rtc_relay::BusError::Wire(e))
                if e.coordinator_moved() && started.elapsed() < Duration::from_secs(10) =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => break other?,
        }
    };
    assert_eq!(committed, None);
    for n in 0..3u64 {
        bus.publish("n1", &format!("c{n}"), &format!("{{\"n\":{n}}}"), 1_000 + n)
            .await?;
    }
    let mut position = 0;
    let mut seen = Vec::new();
    let started = tokio::time::Instant::now();
    while seen.len() < 3 && started.elapsed() < Duration::from_secs(10) {
        let batch = match topic.fetch(position, 250).await {
            Ok(batch) => batch,
            // As the node's reader does: a position the broker says is not
            // in the topic goes on from its first record. A new Apache Kafka
            // cluster has answered a fresh topic's first fetch so; a reader
            // sent back over records it had read would see them twice, and
            // the assertion below would fail.
            Err(e) if e.is_out_of_range() => {
                position = topic.earliest().await?;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
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

/// Polls `check` every 50 ms for up to 20 s.
async fn eventually<F, Fut>(what: &str, mut check: F) -> Result
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        if check().await? {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("not within 20 s: {what}").into())
}

#[tokio::test]
async fn a_node_that_dies_with_frames_queued_reads_them_again_from_the_broker() -> Result {
    use std::sync::Arc;

    use rtc_node_load::Meter;
    use rtc_relay::{Relay, Status};
    use tokio::sync::watch;

    let endpoints = Endpoints::from_env();
    let redis = rtc_testkit::redis().await?;
    let prefix = format!("{}.", unique_name("relay-crash"));
    let bus = || {
        KafkaBus::connect(
            vec![endpoints.kafka_bootstrap.clone()],
            prefix.clone(),
            "relay-crash-test",
            Duration::from_secs(10),
            Duration::from_secs(5),
        )
    };
    let relay =
        |node: &str, boot: &str, bus: KafkaBus| -> Result<Arc<Relay<RedisStore, KafkaBus>>> {
            Ok(Arc::new(Relay::new(
                node.to_owned(),
                boot.to_owned(),
                store(&redis, node),
                bus,
                8,
                Meter::new(10)?,
            )))
        };
    let a = relay("a", "first", bus().await?)?;
    let b = relay("b", "first", bus().await?)?;
    let topic = a.bus().own_topic("a").await?;
    let (mut rx, _kick) = a.attach("bob", 1);
    a.claim("bob").await?;
    let frames: Vec<String> = (0..3).map(|n| format!("{{\"n\":{n}}}")).collect();
    for (n, f) in (0u64..).zip(&frames) {
        assert_eq!(
            b.route("bob", Arc::from(f.as_str()), n).await?,
            Status::Relayed
        );
    }
    let (_stop, stop_rx) = watch::channel(false);
    let consumer = tokio::spawn(Arc::clone(&a).consume(
        a.bus().open("a").await?,
        Duration::from_millis(100),
        stop_rx,
    ));
    eventually("the three records read", || async { Ok(a.position() == 3) }).await?;
    // Queued, not written: the broker's committed offset stays before them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(topic.committed().await?.unwrap_or(0), 0);
    let first = rx.recv().await.ok_or("no frame queued")?;
    assert_eq!(first.frame.as_ref(), frames[0]);
    a.written(first);
    eventually("the written frame committed", || async {
        Ok(topic.committed().await? == Some(1))
    })
    .await?;

    // The node dies: its queue is lost, no detach, no last commit.
    consumer.abort();
    let _ = consumer.await;
    drop(rx);
    drop(a);
    let again = relay("a", "second", bus().await?)?;
    let (stop, stop_rx) = watch::channel(false);
    let consumer = tokio::spawn(Arc::clone(&again).consume(
        again.bus().open("a").await?,
        Duration::from_millis(100),
        stop_rx,
    ));
    eventually("the two unwritten records read again", || async {
        Ok(again.position() == 3)
    })
    .await?;
    // Bob's presence still names the node, and he is not connected to its
    // new life: the two wait in his buffer, taken on his next connect.
    let (_rx, _kick) = again.attach("bob", 2);
    assert_eq!(again.claim("bob").await?, frames[1..]);
    stop.send(true)?;
    assert!(consumer.await?);
    assert_eq!(topic.committed().await?, Some(3));
    Ok(())
}

#[tokio::test]
async fn a_reconnect_to_the_same_node_gets_the_old_queue_and_a_full_queue_is_told_to_take_its_buffer()
-> Result {
    use std::sync::Arc;

    use rtc_node_load::Meter;
    use rtc_relay::{KickReason, Relay, Status};

    let endpoints = Endpoints::from_env();
    let redis = rtc_testkit::redis().await?;
    let prefix = format!("{}.", unique_name("relay-reconnect"));
    let bus = KafkaBus::connect(
        vec![endpoints.kafka_bootstrap.clone()],
        prefix,
        "relay-reconnect-test",
        Duration::from_secs(10),
        Duration::from_secs(5),
    )
    .await?;
    let a = Relay::new(
        "a".to_owned(),
        "boot".to_owned(),
        store(&redis, "a"),
        bus,
        1,
        Meter::new(10)?,
    );
    let (old_rx, _old) = a.attach("bob", 1);
    a.claim("bob").await?;
    assert_eq!(
        a.route("bob", Arc::from("{\"n\":1}"), 1).await?,
        Status::Delivered
    );
    // Bob reconnects here before the old connection wrote it.
    let (mut new_rx, kick) = a.attach("bob", 2);
    a.claim("bob").await?;
    a.detach("bob", 1, old_rx).await;
    assert_eq!(new_rx.try_recv().map(|o| o.sent_ms).ok(), Some(1));
    assert_eq!(
        a.refresh("bob").await?,
        Some(Vec::new()),
        "nothing buffered"
    );

    // The new queue (room for one) fills; the next frame finds it full:
    // the real script buffers it (the presence names this very node) and
    // the connection is told, both to take its buffer and to close.
    assert_eq!(
        a.route("bob", Arc::from("{\"n\":2}"), 2).await?,
        Status::Delivered
    );
    assert_eq!(
        a.route("bob", Arc::from("{\"n\":3}"), 3).await?,
        Status::Buffered
    );
    assert!(kick.is_buffered_pending());
    assert_eq!(kick.reason(), Some(KickReason::Slow));
    assert_eq!(a.refresh("bob").await?, Some(vec!["{\"n\":3}".to_owned()]));
    Ok(())
}

/// A delivery topic whose commits fail: the node it belongs to reads and
/// writes, but never gets its position to the broker.
struct CommitFails<T>(T);

impl<T: Topic> Topic for CommitFails<T> {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn group(&self) -> &str {
        self.0.group()
    }

    async fn fetch(
        &self,
        position: i64,
        max_wait_ms: i32,
    ) -> Result<rtc_relay::Batch, rtc_relay::BusError> {
        self.0.fetch(position, max_wait_ms).await
    }

    async fn earliest(&self) -> Result<i64, rtc_relay::BusError> {
        self.0.earliest().await
    }

    async fn committed(&self) -> Result<Option<i64>, rtc_relay::BusError> {
        self.0.committed().await
    }

    async fn commit(&self, _position: i64) -> Result<(), rtc_relay::BusError> {
        Err(rtc_relay::BusError::Unavailable(
            "commit refused by the test".to_owned(),
        ))
    }
}

#[tokio::test]
async fn a_node_killed_between_a_batchs_produce_and_its_commit_loses_nothing() -> Result {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use rtc_node_load::Meter;
    use rtc_relay::{BatchBounds, Relay, Routed, Status};
    use tokio::sync::watch;

    const N: u64 = 300;
    let endpoints = Endpoints::from_env();
    let redis = rtc_testkit::redis().await?;
    let prefix = format!("{}.", unique_name("relay-batch-crash"));
    let bounds = BatchBounds {
        linger: Duration::from_millis(20),
        max_records: 64,
        max_bytes: 1 << 20,
    };
    let bus = || async {
        Ok::<_, rtc_relay::BusError>(
            KafkaBus::connect(
                vec![endpoints.kafka_bootstrap.clone()],
                prefix.clone(),
                "relay-batch-crash-test",
                Duration::from_secs(10),
                Duration::from_secs(5),
            )
            .await?
            .with_batching(bounds),
        )
    };
    let relay =
        |node: &str, boot: &str, bus: KafkaBus| -> Result<Arc<Relay<RedisStore, KafkaBus>>> {
            Ok(Arc::new(
                Relay::new(
                    node.to_owned(),
                    boot.to_owned(),
                    store(&redis, node),
                    bus,
                    1_024,
                    Meter::new(10)?,
                )
                .with_fetch_wait(Duration::from_millis(20)),
            ))
        };
    let a = relay("a", "first", bus().await?)?;
    let b = relay("b", "first", bus().await?)?;
    let topic = a.bus().own_topic("a").await?;
    let (mut rx, _kick) = a.attach("bob", 1);
    a.claim("bob").await?;

    // Alice on b sends N messages to bob on a without waiting for each
    // ack: they go to a's topic in batches. Every one is acked relayed.
    let frames: Vec<String> = (0..N).map(|n| format!("{{\"n\":{n}}}")).collect();
    let mut publishing = Vec::new();
    for (n, f) in (0u64..).zip(&frames) {
        match b.submit("bob", Arc::from(f.as_str()), n).await? {
            Routed::Publishing(p) => publishing.push(p),
            Routed::Done(status) => return Err(format!("message {n} was {status:?}").into()),
        }
    }
    for p in publishing {
        assert_eq!(b.settle(p).await?, Status::Relayed);
    }
    let records = topic.fetch(0, 250).await?.high_watermark;
    assert_eq!(
        records,
        i64::try_from(N)?,
        "every acked message is in a's topic"
    );

    // a reads the whole topic and writes part of it to bob; its commits
    // fail, so when it is killed nothing of the batch is committed.
    let (_stop, stop_rx) = watch::channel(false);
    let consumer = tokio::spawn(Arc::clone(&a).consume(
        CommitFails(a.bus().open("a").await?),
        Duration::from_millis(10),
        stop_rx,
    ));
    eventually("the whole topic read", || async { Ok(a.position() == N) }).await?;
    let mut got: BTreeSet<String> = BTreeSet::new();
    for _ in 0..N / 2 {
        let out = rx.recv().await.ok_or("no frame queued")?;
        got.insert(out.frame.to_string());
        a.written(out);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(topic.committed().await?, None, "killed before any commit");
    consumer.abort();
    let _ = consumer.await;
    drop(rx);
    drop(a);

    // a comes back under the same name; bob connects to its new life and
    // gets the rest (and the written half again: at least once).
    let again = relay("a", "second", bus().await?)?;
    let (mut rx, _kick) = again.attach("bob", 2);
    let buffered = again.claim("bob").await?;
    got.extend(buffered);
    let (stop, stop_rx) = watch::channel(false);
    let consumer = tokio::spawn(Arc::clone(&again).consume(
        again.bus().open("a").await?,
        Duration::from_millis(10),
        stop_rx,
    ));
    eventually("the topic read again", || async {
        Ok(again.position() == N)
    })
    .await?;
    while let Ok(out) = rx.try_recv() {
        got.insert(out.frame.to_string());
        again.written(out);
    }
    let lost: Vec<&String> = frames.iter().filter(|f| !got.contains(*f)).collect();
    assert!(lost.is_empty(), "{} of {N} lost: {lost:?}", lost.len());
    stop.send(true)?;
    assert!(consumer.await?);
    assert_eq!(topic.committed().await?, Some(i64::try_from(N)?));
    Ok(())
}

/// Five nodes' buses write one node's topic at once, in batches of one to
/// three records, while its reader reads with the relay's cursor (from
/// `next` to `next`): the reader gets every record exactly once. The
/// stack's broker may show a later batch before an earlier one is
/// readable; reading on over that gap would lose the earlier batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_topic_written_by_many_nodes_at_once_is_read_whole() -> Result {
    const WRITERS: usize = 5;
    const PER_WRITER: usize = 1_200;
    let endpoints = Endpoints::from_env();
    let prefix = format!("{}.", unique_name("relay-gaps"));
    let connect = |id: String| {
        let bootstrap = vec![endpoints.kafka_bootstrap.clone()];
        let prefix = prefix.clone();
        async move {
            KafkaBus::connect(
                bootstrap,
                prefix,
                &id,
                Duration::from_secs(10),
                Duration::from_secs(5),
            )
            .await
        }
    };
    let reader_bus = connect("relay-gaps-reader".to_owned()).await?;
    let topic = reader_bus.own_topic("n").await?;
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        // Batches of at most three records, produced as soon as the one
        // before is done: the writers' produces overlap all the time.
        let bus = connect(format!("relay-gaps-writer-{w}"))
            .await?
            .with_batching(rtc_relay::BatchBounds {
                linger: Duration::ZERO,
                max_records: 3,
                ..rtc_relay::BatchBounds::DEFAULT
            });
        writers.push(tokio::spawn(async move {
            let mut receipts = Vec::new();
            for i in 0..PER_WRITER {
                let frame: std::sync::Arc<str> = format!("{{\"w\":{w},\"i\":{i}}}").into();
                receipts.push(bus.send("n", &format!("c{w}"), frame, 1).await);
                if i % 150 == 149 {
                    // Spread the writes over many of the reader's fetches.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            for r in receipts {
                r.wait().await?;
            }
            Ok::<(), rtc_relay::BusError>(())
        }));
    }
    let mut seen = std::collections::BTreeMap::new();
    let mut position = 0;
    let started = tokio::time::Instant::now();
    while seen.len() < WRITERS * PER_WRITER && started.elapsed() < Duration::from_secs(20) {
        let batch = topic.fetch(position, 20).await?;
        for d in batch.deliveries {
            *seen.entry(d.frame).or_insert(0) += 1;
        }
        position = batch.next;
    }
    for w in writers {
        w.await??;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "read twice: {twice:?}");
    let missing: Vec<String> = (0..WRITERS)
        .flat_map(|w| (0..PER_WRITER).map(move |i| format!("{{\"w\":{w},\"i\":{i}}}")))
        .filter(|f| !seen.contains_key(f))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} records never read, e.g. {:?}",
        missing.len(),
        WRITERS * PER_WRITER,
        missing.first()
    );
    Ok(())
}
