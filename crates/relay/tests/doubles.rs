//! The relay over the in-memory store and bus: the routing rules end to end
//! without servers, with paused time.

use std::sync::Arc;
use std::time::Duration;

use rtc_node_load::Meter;
use rtc_relay::memory::{MemoryBus, MemoryRedis, MemoryStore};
use rtc_relay::{
    BufferLimits, Bus, ForwardConfig, KickReason, ManualClock, PresenceStore, Registry, Relay,
    RelayError, Status, StoreError, Topic, forward,
};
use tokio::sync::watch;

type Result<T = (), E = Box<dyn std::error::Error + Send + Sync>> = std::result::Result<T, E>;
type TestRelay = Relay<MemoryStore, MemoryBus>;

const TTL: Duration = Duration::from_secs(30);
const LIMITS: BufferLimits = BufferLimits {
    max: 100,
    ttl: Duration::from_secs(600),
};

fn relay(redis: &MemoryRedis, bus: &MemoryBus, node: &str, queue: usize) -> Result<Arc<TestRelay>> {
    Ok(Arc::new(Relay::new(
        node.to_owned(),
        "boot".to_owned(),
        redis.store(node, TTL, LIMITS),
        bus.clone(),
        queue,
        Meter::new(10)?,
    )))
}

fn frame(n: u32) -> Arc<str> {
    Arc::from(format!("{{\"n\":{n}}}"))
}

#[tokio::test(start_paused = true)]
async fn local_remote_and_offline_recipients() -> Result {
    let (redis, bus) = (MemoryRedis::default(), MemoryBus::default());
    let a = relay(&redis, &bus, "a", 8)?;
    bus.own_topic("b").await?;
    redis.store("b", TTL, LIMITS).connect("bob").await?;

    let (mut rx, _kick) = a.attach("alice", 1);
    assert_eq!(a.route("alice", frame(1), 5).await?, Status::Delivered);
    assert_eq!(rx.recv().await.map(|o| o.sent_ms), Some(5));

    assert_eq!(a.route("bob", frame(2), 6).await?, Status::Relayed);
    let records = bus.records("b");
    assert_eq!(records.len(), 1);
    assert_eq!((records[0].to.as_str(), records[0].sent_ms), ("bob", 6));

    assert_eq!(a.route("carol", frame(3), 7).await?, Status::Buffered);
    assert_eq!(redis.inbox("carol"), [frame(3).to_string()]);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_topic_that_cannot_be_reached_means_the_buffer_and_a_store_that_is_down_an_error()
-> Result {
    let (redis, bus) = (MemoryRedis::default(), MemoryBus::default());
    let a = relay(&redis, &bus, "a", 8)?;
    // Bob's presence names a node whose topic does not exist.
    redis.store("b", TTL, LIMITS).connect("bob").await?;
    assert_eq!(a.route("bob", frame(1), 1).await?, Status::Buffered);
    assert_eq!(redis.inbox("bob").len(), 1);

    redis.set_down(true);
    let err = a.route("bob", frame(2), 2).await.err();
    assert!(
        matches!(err, Some(RelayError::Store(StoreError::Unavailable(_)))),
        "{err:?}"
    );
    // A local recipient does not need the store.
    let (_rx, _kick) = a.attach("alice", 1);
    assert_eq!(a.route("alice", frame(3), 3).await?, Status::Delivered);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_slow_reader_is_kicked_and_what_it_left_is_handed_on() -> Result {
    let (redis, bus) = (MemoryRedis::default(), MemoryBus::default());
    let a = relay(&redis, &bus, "a", 1)?;
    let (rx, kick) = a.attach("bob", 7);
    a.claim("bob").await?;
    assert_eq!(a.route("bob", frame(1), 1).await?, Status::Delivered);
    // The queue is full: the reader is kicked, the frame kept for it.
    assert_eq!(a.route("bob", frame(2), 2).await?, Status::Buffered);
    assert_eq!(kick.wait().await, KickReason::Slow);

    // The queued frame is handed on at detach, and the claim released.
    a.detach("bob", 7, rx).await;
    assert_eq!(a.handed_off(), 1);
    assert_eq!(
        redis.inbox("bob"),
        [frame(2).to_string(), frame(1).to_string()]
    );
    assert_eq!(redis.holder("bob"), None);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_newer_connection_supersedes_and_an_old_detach_leaves_it_alone() -> Result {
    let (redis, bus) = (MemoryRedis::default(), MemoryBus::default());
    let a = relay(&redis, &bus, "a", 4)?;
    let (old_rx, old_kick) = a.attach("bob", 1);
    a.claim("bob").await?;
    let (mut new_rx, _new_kick) = a.attach("bob", 2);
    assert_eq!(old_kick.wait().await, KickReason::Superseded);
    a.detach("bob", 1, old_rx).await;
    assert_eq!(redis.holder("bob").as_deref(), Some("a"));
    assert_eq!(a.route("bob", frame(1), 1).await?, Status::Delivered);
    assert!(new_rx.recv().await.is_some());
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_replaced_connection_reads_what_was_queued_then_its_inbox_ends() -> Result {
    let (redis, bus) = (MemoryRedis::default(), MemoryBus::default());
    let a = relay(&redis, &bus, "a", 2)?;
    let (mut old_rx, _old_kick) = a.attach("bob", 1);
    a.claim("bob").await?;
    assert_eq!(a.route("bob", frame(1), 1).await?, Status::Delivered);
    assert_eq!(a.route("bob", frame(2), 2).await?, Status::Delivered);
    assert!(matches!(old_rx.try_recv(), Ok(o) if o.sent_ms == 1));
    let (mut new_rx, _new_kick) = a.attach("bob", 2);
    assert_eq!(a.route("bob", frame(3), 3).await?, Status::Delivered);
    assert_eq!(old_rx.recv().await.map(|o| o.sent_ms), Some(2));
    assert!(old_rx.recv().await.is_none(), "the replaced inbox ends");
    assert_eq!(
        old_rx.try_recv().err(),
        Some(rtc_relay::TryRecvError::Disconnected)
    );
    assert_eq!(new_rx.try_recv().map(|o| o.sent_ms).ok(), Some(3));
    assert_eq!(
        new_rx.try_recv().err(),
        Some(rtc_relay::TryRecvError::Empty)
    );
    // A frame queued while the reader waits wakes it.
    let reader = tokio::spawn(async move { new_rx.recv().await.map(|o| o.sent_ms) });
    tokio::task::yield_now().await;
    assert_eq!(a.route("bob", frame(4), 4).await?, Status::Delivered);
    assert_eq!(reader.await?, Some(4));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn the_consumer_hands_on_every_record_retrying_while_the_store_is_down_and_commits() -> Result
{
    let (redis, bus) = (MemoryRedis::default(), MemoryBus::default());
    let a = relay(&redis, &bus, "a", 8)?;
    let topic = bus.own_topic("a").await?;
    bus.publish("a", "bob", &frame(1), 1).await?;
    bus.publish("a", "carol", &frame(2), 2).await?;
    bus.publish("a", "bob", &frame(3), 3).await?;
    let (mut bob, _kick) = a.attach("bob", 1);

    redis.set_down(true);
    let (stop, stop_rx) = watch::channel(false);
    let consumer = tokio::spawn(Arc::clone(&a).consume(
        bus.open("a").await?,
        Duration::from_millis(100),
        stop_rx,
    ));
    assert_eq!(bob.recv().await.map(|o| o.sent_ms), Some(1));
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Carol's record waits for the store: the position does not pass it.
    assert_eq!(a.position(), 0);
    assert!(bob.try_recv().is_err());
    redis.set_down(false);
    assert_eq!(bob.recv().await.map(|o| o.sent_ms), Some(3));
    assert_eq!(redis.inbox("carol"), [frame(2).to_string()]);

    stop.send(true)?;
    assert!(consumer.await?, "the last commit succeeded");
    assert_eq!(topic.committed().await?, Some(3));
    assert_eq!(a.position(), 3);
    assert_eq!(a.handed_off(), 1);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn submitted_frames_keep_their_order_and_a_failed_produce_is_buffered_never_acked_relayed()
-> Result {
    use rtc_relay::Routed;

    let (redis, bus) = (MemoryRedis::default(), MemoryBus::default());
    let a = relay(&redis, &bus, "a", 8)?;
    bus.own_topic("b").await?;
    redis.store("b", TTL, LIMITS).connect("bob").await?;
    let mut publishing = Vec::new();
    for n in 1..=3 {
        match a.submit("bob", frame(n), u64::from(n)).await? {
            Routed::Publishing(p) => publishing.push(p),
            Routed::Done(status) => return Err(format!("frame {n} was {status:?}").into()),
        }
    }
    for p in publishing {
        assert_eq!(a.settle(p).await?, Status::Relayed);
    }
    let order: Vec<u64> = bus.records("b").iter().map(|d| d.sent_ms).collect();
    assert_eq!(order, [1, 2, 3]);

    // The produce fails: the frame is kept in the recipient's buffer and
    // acked as buffered, not as handed to the broker.
    bus.set_down(true);
    let Routed::Publishing(p) = a.submit("bob", frame(4), 4).await? else {
        return Err("a frame for another node is produced".into());
    };
    assert_eq!(a.settle(p).await?, Status::Buffered);
    assert_eq!(redis.inbox("bob"), [frame(4).to_string()]);
    bus.set_down(false);
    assert_eq!(bus.records("b").len(), 3);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_remembered_node_skips_the_store_and_a_stale_one_costs_a_hop_not_the_message() -> Result {
    let (redis, bus) = (MemoryRedis::default(), MemoryBus::default());
    let a = Arc::new(
        Relay::new(
            "a".to_owned(),
            "boot".to_owned(),
            redis.store("a", TTL, LIMITS),
            bus.clone(),
            8,
            Meter::new(10)?,
        )
        .with_route_cache(Duration::from_secs(1)),
    );
    let b = relay(&redis, &bus, "b", 8)?;
    bus.own_topic("b").await?;
    bus.own_topic("c").await?;
    redis.store("b", TTL, LIMITS).connect("bob").await?;
    assert_eq!(a.route("bob", frame(1), 1).await?, Status::Relayed);

    // Within the ttl the store is not asked: it could be down.
    redis.set_down(true);
    assert_eq!(a.route("bob", frame(2), 2).await?, Status::Relayed);
    redis.set_down(false);
    assert_eq!(bus.records("b").len(), 2);

    // Bob moves to c; a still sends to b, which hands the record on.
    redis.store("c", TTL, LIMITS).connect("bob").await?;
    assert_eq!(a.route("bob", frame(3), 3).await?, Status::Relayed);
    assert_eq!(bus.records("b").len(), 3);
    let (stop, stop_rx) = watch::channel(false);
    let consumer = tokio::spawn(Arc::clone(&b).consume(
        bus.open("b").await?,
        Duration::from_millis(100),
        stop_rx,
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let on_c: Vec<u64> = bus.records("c").iter().map(|d| d.sent_ms).collect();
    assert_eq!(on_c, [1, 2, 3], "b found bob gone and relayed to c");
    assert_eq!(b.handed_off(), 3);

    // Past the ttl, a asks the store again and sends to c itself.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(a.route("bob", frame(4), 4).await?, Status::Relayed);
    assert_eq!(bus.records("b").len(), 3);
    assert_eq!(bus.records("c").len(), 4);

    // Bob connects to a itself: the remembered node is forgotten.
    let (rx, _kick) = a.attach("bob", 1);
    a.claim("bob").await?;
    a.detach("bob", 1, rx).await;
    redis.set_down(true);
    let err = a.route("bob", frame(5), 5).await.err();
    assert!(matches!(err, Some(RelayError::Store(_))), "{err:?}");
    stop.send(true)?;
    consumer.await?;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn with_the_route_cache_off_every_message_asks_the_store() -> Result {
    let (redis, bus) = (MemoryRedis::default(), MemoryBus::default());
    let a = Relay::new(
        "a".to_owned(),
        "boot".to_owned(),
        redis.store("a", TTL, LIMITS),
        bus.clone(),
        8,
        Meter::new(10)?,
    )
    .with_route_cache(Duration::ZERO);
    bus.own_topic("b").await?;
    redis.store("b", TTL, LIMITS).connect("bob").await?;
    assert_eq!(a.route("bob", frame(1), 1).await?, Status::Relayed);
    redis.set_down(true);
    let err = a.route("bob", frame(2), 2).await.err();
    assert!(matches!(err, Some(RelayError::Store(_))), "{err:?}");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_restarted_consumer_resumes_from_the_committed_offset() -> Result {
    let (redis, bus) = (MemoryRedis::default(), MemoryBus::default());
    let a = relay(&redis, &bus, "a", 8)?;
    let topic = bus.own_topic("a").await?;
    for n in 0..3 {
        bus.publish("a", "bob", &frame(n), u64::from(n)).await?;
    }
    topic.commit(2).await?;
    let (mut bob, _kick) = a.attach("bob", 1);
    let (stop, stop_rx) = watch::channel(false);
    let consumer = tokio::spawn(Arc::clone(&a).consume(topic, Duration::ZERO, stop_rx));
    assert_eq!(bob.recv().await.map(|o| o.sent_ms), Some(2));
    stop.send(true)?;
    assert!(consumer.await?);
    assert!(bob.try_recv().is_err());
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_reconnect_to_the_same_node_gets_what_the_old_connection_left() -> Result {
    let (redis, bus) = (MemoryRedis::default(), MemoryBus::default());
    let a = relay(&redis, &bus, "a", 4)?;
    let (old_rx, _old_kick) = a.attach("bob", 1);
    a.claim("bob").await?;
    assert_eq!(a.route("bob", frame(1), 1).await?, Status::Delivered);
    assert_eq!(a.route("bob", frame(2), 2).await?, Status::Delivered);
    // Bob reconnects here before the old connection wrote them.
    let (mut new_rx, new_kick) = a.attach("bob", 2);
    a.claim("bob").await?;
    a.detach("bob", 1, old_rx).await;
    let moved: Vec<u64> = std::iter::from_fn(|| new_rx.try_recv().ok())
        .map(|o| o.sent_ms)
        .collect();
    assert_eq!(moved, [1, 2], "handed to the new connection, in order");
    assert!(redis.inbox("bob").is_empty());
    assert!(!new_kick.is_buffered_pending());
    assert_eq!(a.handed_off(), 0);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_topic_record_for_a_full_queue_kicks_the_reader_and_waits_in_its_buffer() -> Result {
    let (redis, bus) = (MemoryRedis::default(), MemoryBus::default());
    let a = relay(&redis, &bus, "a", 1)?;
    let b = relay(&redis, &bus, "b", 1)?;
    let topic = bus.own_topic("a").await?;
    let (mut rx, kick) = a.attach("bob", 1);
    a.claim("bob").await?;
    assert_eq!(b.route("bob", frame(1), 1).await?, Status::Relayed);
    assert_eq!(b.route("bob", frame(2), 2).await?, Status::Relayed);
    let (stop, stop_rx) = watch::channel(false);
    let consumer = tokio::spawn(Arc::clone(&a).consume(topic, Duration::ZERO, stop_rx));
    // The first fills the queue; the second finds it full.
    let kicked = tokio::time::timeout(Duration::from_secs(5), kick.wait()).await;
    assert_eq!(kicked.ok(), Some(KickReason::Slow));
    assert_eq!(redis.inbox("bob"), [frame(2).to_string()]);
    assert!(kick.is_buffered_pending(), "told to take its buffer");
    assert_eq!(a.handed_off(), 0, "the reader had not left");
    assert_eq!(rx.recv().await.map(|o| o.sent_ms), Some(1));
    stop.send(true)?;
    assert!(consumer.await?);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_frame_buffered_as_its_recipient_connects_here_wakes_the_connection() -> Result {
    let (redis, bus) = (MemoryRedis::default(), MemoryBus::default());
    let a = relay(&redis, &bus, "a", 8)?;
    let topic = bus.own_topic("a").await?;
    bus.publish("a", "bob", &frame(1), 1).await?;
    // The record finds no connection and the store down: it waits, then
    // retries while bob connects here. The store then buffers it (bob's
    // presence names this very node) after bob took his buffer.
    redis.set_down(true);
    let (stop, stop_rx) = watch::channel(false);
    let consumer = tokio::spawn(Arc::clone(&a).consume(topic, Duration::ZERO, stop_rx));
    tokio::time::sleep(Duration::from_millis(50)).await;
    redis.set_down(false);
    let (mut rx, kick) = a.attach("bob", 1);
    assert!(a.claim("bob").await?.is_empty());
    tokio::time::timeout(Duration::from_secs(5), kick.buffered_for_me()).await?;
    assert_eq!(a.refresh("bob").await?, Some(vec![frame(1).to_string()]));
    assert!(rx.try_recv().is_err());
    stop.send(true)?;
    assert!(consumer.await?);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn the_commit_never_passes_a_queued_frame_and_a_crashed_node_reads_it_again() -> Result {
    let (redis, bus) = (MemoryRedis::default(), MemoryBus::default());
    let a = relay(&redis, &bus, "a", 8)?;
    let b = relay(&redis, &bus, "b", 8)?;
    let topic = bus.own_topic("a").await?;
    let (mut rx, _kick) = a.attach("bob", 1);
    a.claim("bob").await?;
    for n in 0..3 {
        assert_eq!(
            b.route("bob", frame(n), u64::from(n)).await?,
            Status::Relayed
        );
    }
    let (_stop, stop_rx) = watch::channel(false);
    let consumer = tokio::spawn(Arc::clone(&a).consume(
        bus.open("a").await?,
        Duration::from_millis(100),
        stop_rx,
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(a.position(), 3, "all three read and queued");
    assert_eq!(topic.committed().await?, Some(0), "none written yet");
    // The connection writes the first.
    let first = rx.recv().await.ok_or("no frame")?;
    a.written(first);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(topic.committed().await?, Some(1));

    // The node dies with two frames queued: no detach, no last commit.
    consumer.abort();
    let _ = consumer.await;
    drop(rx);
    drop(a);
    let again = relay(&redis, &bus, "a", 8)?;
    let (stop, stop_rx) = watch::channel(false);
    let consumer = tokio::spawn(Arc::clone(&again).consume(
        bus.open("a").await?,
        Duration::from_millis(100),
        stop_rx,
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Bob is not connected to the new life of the node: his presence
    // still names it, so the two wait in his buffer for his next connect.
    assert_eq!(
        redis.inbox("bob"),
        [frame(1).to_string(), frame(2).to_string()]
    );
    stop.send(true)?;
    assert!(consumer.await?);
    assert_eq!(topic.committed().await?, Some(3));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_dead_nodes_topic_is_forwarded_never_back_to_it_and_then_retired() -> Result {
    let (redis, bus) = (MemoryRedis::default(), MemoryBus::default());
    let a = relay(&redis, &bus, "a", 8)?;
    let b = relay(&redis, &bus, "b", 8)?;
    let dead = redis.store("x", TTL, LIMITS);
    dead.register(0).await?;
    a.store().register(0).await?;
    b.store().register(0).await?;
    redis.set_live("a", true);
    redis.set_live("b", true);
    bus.own_topic("x").await?;
    bus.own_topic("b").await?;
    // Bob's presence still names the dead node; carol is on b.
    dead.connect("bob").await?;
    b.claim("carol").await?;
    bus.publish("x", "bob", &frame(1), 1).await?;
    bus.publish("x", "carol", &frame(2), 2).await?;

    let config = ForwardConfig {
        scan_interval: Duration::from_secs(1),
        claim_ttl: Duration::from_secs(5),
        retire_after: Duration::ZERO,
    };
    // Another forwarder holds the claim: nothing happens.
    assert!(b.store().claim_forward("x", config.claim_ttl).await?);
    forward::scan(&a, &config).await?;
    assert!(redis.inbox("bob").is_empty());
    b.store().release_forward("x").await?;

    forward::scan(&a, &config).await?;
    assert_eq!(redis.inbox("bob"), [frame(1).to_string()]);
    assert_eq!(
        bus.records("x").len(),
        2,
        "nothing went back to the dead node"
    );
    assert_eq!(bus.records("b").len(), 1);
    assert_eq!(bus.open("x").await?.committed().await?, Some(2));
    assert_eq!(a.store().registered().await?, ["a", "b"]);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_node_that_comes_back_is_not_forwarded() -> Result {
    let (redis, bus) = (MemoryRedis::default(), MemoryBus::default());
    let a = relay(&redis, &bus, "a", 8)?;
    let x = redis.store("x", TTL, LIMITS);
    x.register(0).await?;
    redis.set_live("x", true);
    bus.own_topic("x").await?;
    bus.publish("x", "bob", &frame(1), 1).await?;
    let config = ForwardConfig {
        scan_interval: Duration::from_secs(1),
        claim_ttl: Duration::from_secs(5),
        retire_after: Duration::from_secs(600),
    };
    forward::scan(&a, &config).await?;
    assert!(redis.inbox("bob").is_empty());
    redis.set_live("x", false);
    let pass = forward::forward(&a, "x", &config).await?;
    assert_eq!(
        (pass.forwarded, pass.caught_up, pass.retired),
        (1, true, false)
    );
    assert_eq!(a.store().registered().await?, ["x"]);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_gone_node_is_retired_by_the_relays_wall_clock() -> Result {
    let (redis, bus) = (MemoryRedis::default(), MemoryBus::default());
    let clock = ManualClock::new(1_700_000_000_000);
    let a = Relay::new(
        "a".to_owned(),
        "boot".to_owned(),
        redis.store("a", TTL, LIMITS),
        bus.clone(),
        8,
        Meter::new(10)?,
    )
    .with_wall_clock(clock.clone());
    redis.store("x", TTL, LIMITS).register(0).await?;
    bus.own_topic("x").await?;
    let config = ForwardConfig {
        scan_interval: Duration::from_secs(1),
        claim_ttl: Duration::from_secs(5),
        retire_after: Duration::from_secs(600),
    };
    let first = forward::forward(&a, "x", &config).await?;
    assert_eq!((first.caught_up, first.retired), (true, false));
    clock.advance(599_999);
    assert!(!forward::forward(&a, "x", &config).await?.retired);
    clock.advance(1);
    assert!(forward::forward(&a, "x", &config).await?.retired);
    assert!(a.store().registered().await?.is_empty());
    Ok(())
}

mod simulation {
    //! Random traffic over two nodes, clients connecting, moving and
    //! leaving, and nodes crashing (their connections' queues lost, no
    //! detach, no last commit) and starting again: every frame acked is, at
    //! the end, received by a connection, in an inbox, or in a delivery
    //! topic past its reader's position. Frames acked `delivered` into a
    //! connection of a node that crashed before it wrote them are the one
    //! exception: that ack means handed to that connection. And no frame
    //! waits in the inbox of a client connected here unless its connection
    //! was told (to take its buffer, or to close). The store goes down and
    //! comes back between steps; clients neither connect nor leave while it
    //! is down (a hand-off the store refuses is lost by design, and
    //! counted).

    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    #[derive(Debug, Clone)]
    enum Op {
        Connect { client: u8, node: u8 },
        Leave { client: u8 },
        Send { node: u8, to: u8 },
        Crash { node: u8 },
        Outage,
        Pause { ms: u16 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            2 => (0u8..3, 0u8..2).prop_map(|(client, node)| Op::Connect { client, node }),
            1 => (0u8..3).prop_map(|client| Op::Leave { client }),
            5 => (0u8..2, 0u8..4).prop_map(|(node, to)| Op::Send { node, to }),
            1 => (0u8..2).prop_map(|node| Op::Crash { node }),
            1 => Just(Op::Outage),
            1 => (0u16..600).prop_map(|ms| Op::Pause { ms }),
        ]
    }

    struct Conn {
        node: usize,
        id: u64,
        rx: rtc_relay::Inbox,
        kick: Arc<rtc_relay::Kick>,
    }

    struct Node {
        relay: Arc<TestRelay>,
        consumer: tokio::task::JoinHandle<bool>,
    }

    async fn start(
        redis: &MemoryRedis,
        bus: &MemoryBus,
        name: &str,
        stop: &watch::Receiver<bool>,
    ) -> Result<Node> {
        let relay = relay(redis, bus, name, 4)?;
        let topic = bus.own_topic(name).await?;
        let consumer = tokio::spawn(Arc::clone(&relay).consume(
            topic,
            Duration::from_millis(100),
            stop.clone(),
        ));
        Ok(Node { relay, consumer })
    }

    struct Outcome {
        acked: BTreeSet<String>,
        found: BTreeSet<String>,
        stranded: Vec<String>,
    }

    async fn run(ops: Vec<Op>) -> Result<Outcome> {
        let (redis, bus) = (MemoryRedis::default(), MemoryBus::default());
        let names = ["a", "b"];
        let (stop, stop_rx) = watch::channel(false);
        let mut nodes = Vec::new();
        for name in names {
            nodes.push(start(&redis, &bus, name, &stop_rx).await?);
        }
        let mut conns: BTreeMap<String, Conn> = BTreeMap::new();
        let mut received = BTreeSet::new();
        let mut acked = BTreeSet::new();
        // Frames acked `delivered`, by the connection they were queued for.
        let mut queued_for: BTreeMap<String, u64> = BTreeMap::new();
        let mut crashed = BTreeSet::new();
        let mut next_conn = 0u64;
        let mut down = false;
        for (i, op) in ops.into_iter().enumerate() {
            match op {
                Op::Connect { .. } | Op::Leave { .. } if down => {}
                Op::Outage => {
                    down = !down;
                    redis.set_down(down);
                }
                Op::Connect { client, node } => {
                    let client = format!("c{client}");
                    let n = usize::from(node);
                    if let Some(old) = conns.remove(&client) {
                        nodes[old.node].relay.detach(&client, old.id, old.rx).await;
                    }
                    next_conn += 1;
                    let (rx, kick) = nodes[n].relay.attach(&client, next_conn);
                    for f in nodes[n].relay.claim(&client).await? {
                        received.insert(f);
                    }
                    let conn = Conn {
                        node: n,
                        id: next_conn,
                        rx,
                        kick,
                    };
                    conns.insert(client, conn);
                }
                Op::Leave { client } => {
                    let client = format!("c{client}");
                    if let Some(mut conn) = conns.remove(&client) {
                        // Some frames were read, the rest are handed on.
                        if let Ok(out) = conn.rx.try_recv() {
                            received.insert(out.frame.to_string());
                            nodes[conn.node].relay.written(out);
                        }
                        nodes[conn.node]
                            .relay
                            .detach(&client, conn.id, conn.rx)
                            .await;
                    }
                }
                Op::Send { node, to } => {
                    let frame = format!("{{\"n\":{i}}}");
                    let to = format!("c{to}");
                    let Ok(status) = nodes[usize::from(node)]
                        .relay
                        .route(&to, Arc::from(frame.as_str()), 0)
                        .await
                    else {
                        // Refused with an error: not acked.
                        continue;
                    };
                    if status == Status::Delivered
                        && let Some(conn) = conns.get(&to)
                    {
                        queued_for.insert(frame.clone(), conn.id);
                    }
                    acked.insert(frame);
                }
                Op::Crash { node } => {
                    let n = usize::from(node);
                    nodes[n].consumer.abort();
                    let _ = (&mut nodes[n].consumer).await;
                    let gone: Vec<String> = conns
                        .iter()
                        .filter(|(_, c)| c.node == n)
                        .map(|(client, _)| client.clone())
                        .collect();
                    for client in gone {
                        if let Some(conn) = conns.remove(&client) {
                            crashed.insert(conn.id);
                            drop(conn.rx);
                        }
                    }
                    nodes[n] = start(&redis, &bus, names[n], &stop_rx).await?;
                }
                Op::Pause { ms } => {
                    tokio::time::sleep(Duration::from_millis(u64::from(ms))).await;
                }
            }
        }
        redis.set_down(false);
        stop.send(true)?;
        for node in &mut nodes {
            (&mut node.consumer).await?;
        }
        let mut kept = BTreeSet::new();
        let mut stranded = Vec::new();
        for (client, mut conn) in conns {
            while let Ok(out) = conn.rx.try_recv() {
                received.insert(out.frame.to_string());
            }
            let inbox = redis.inbox(&client);
            let told = conn.kick.is_buffered_pending() || conn.kick.reason().is_some();
            let here = redis.holder(&client).as_deref() == Some(names[conn.node]);
            if here && !told && !inbox.is_empty() {
                stranded.push(format!("{client}: {inbox:?}"));
            }
            kept.extend(inbox);
        }
        for c in 0..4 {
            kept.extend(redis.inbox(&format!("c{c}")));
        }
        for (node, name) in nodes.iter().zip(names) {
            let position = i64::try_from(node.relay.position()).unwrap_or(i64::MAX);
            kept.extend(
                bus.records(name)
                    .into_iter()
                    .filter(|d| d.offset >= position)
                    .map(|d| d.frame),
            );
        }
        let found: BTreeSet<String> = received.union(&kept).cloned().collect();
        let acked = acked
            .into_iter()
            .filter(|f| queued_for.get(f).is_none_or(|id| !crashed.contains(id)))
            .collect();
        Ok(Outcome {
            acked,
            found,
            stranded,
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn no_acked_frame_is_lost(ops in proptest::collection::vec(op(), 1..60)) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let outcome = runtime
                .block_on(run(ops))
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let lost: Vec<_> = outcome.acked.difference(&outcome.found).collect();
            prop_assert!(lost.is_empty(), "lost {lost:?}");
            prop_assert!(outcome.stranded.is_empty(), "stranded {:?}", outcome.stranded);
        }
    }
}
