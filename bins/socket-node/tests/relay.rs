//! Two nodes on the local stack's Redis and broker, real WebSocket clients.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{Client, Cluster, Result, Seen, assert_got_all, close_code, http, raw};
use futures_util::{SinkExt, StreamExt};
use rtc_heartbeat::{DecodeLimits, decode};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_relay_both_ways_and_keep_messages_for_offline_clients() -> Result {
    let cluster = Cluster::new();
    let n1 = cluster.start("node-a").await?;
    let n2 = cluster.start("node-b").await?;
    let mut alice = Client::connect(n1.public_addr(), "alice").await?;
    let mut bob = Client::connect(n2.public_addr(), "bob").await?;
    let mut carol = Client::connect(n1.public_addr(), "carol").await?;
    assert_eq!(
        (alice.node.as_str(), bob.node.as_str()),
        ("node-a", "node-b")
    );

    // Cross-node, both ways.
    alice.send_to("bob", json!({"n": 1})).await?;
    let ack = alice.expect("ack").await?;
    assert_eq!(ack["status"], "relayed");
    let got = bob.expect("message").await?;
    assert_eq!(got["from"], "alice");
    assert_eq!(got["body"], json!({"n": 1}));
    assert_eq!(got["id"], ack["id"]);
    assert!(got["sent_ms"].as_u64().is_some_and(|t| t > 0));

    bob.send_to("alice", json!("hi")).await?;
    assert_eq!(bob.expect("ack").await?["status"], "relayed");
    assert_eq!(alice.expect("message").await?["body"], "hi");

    // Local.
    carol
        .send(&json!({"to": "alice", "body": [1, 2], "ref": "c1"}))
        .await?;
    let ack = carol.expect("ack").await?;
    assert_eq!(
        (ack["status"].as_str(), ack["ref"].as_str()),
        (Some("delivered"), Some("c1"))
    );
    assert_eq!(alice.expect("message").await?["body"], json!([1, 2]));

    // Offline: buffered, then handed over on connect, in order.
    for i in 0..3 {
        alice.send_to("dave", json!(i)).await?;
        assert_eq!(alice.expect("ack").await?["status"], "buffered");
    }
    let mut dave = Client::connect(n2.public_addr(), "dave").await?;
    for i in 0..3 {
        assert_eq!(dave.expect("message").await?["body"], json!(i));
    }

    // Metrics move: the heartbeat in Redis carries real figures.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let redis = rtc_testkit::redis().await?;
    let key = format!("{}live:node-a", cluster.heartbeat_prefix);
    let bytes: Vec<u8> = fred::interfaces::KeysInterface::get(redis.client(), key).await?;
    let hb = decode(&bytes, u64::MAX / 2, &DecodeLimits::default())?;
    assert_eq!(hb.conn, 2, "{hb:?}");
    assert!(hb.mps > 0.0, "{hb:?}");
    assert!(hb.p95_ms >= 1.0, "{hb:?}");
    assert!(!hb.draining);

    n1.shutdown().await;
    n2.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_the_node_stays_up() -> Result {
    let cluster = Cluster::new();
    let node = cluster.start("node-bad").await?;
    let addr = node.public_addr();

    // Missing and malformed ids: 1008.
    assert_eq!(close_code(&mut raw(addr, "").await?).await?, Some(1008));
    assert_eq!(
        close_code(&mut raw(addr, "?client_id=a%20b").await?).await?,
        Some(1008)
    );

    let mut c = Client::connect(addr, "eve").await?;
    // Malformed JSON and unknown shapes: an error frame, the connection stays.
    c.ws.send(Message::text("{not json")).await?;
    assert_eq!(c.expect("error").await?["code"], "malformed");
    c.send(&json!({"body": 1})).await?;
    assert_eq!(c.expect("error").await?["code"], "missing_field");
    c.send(&json!({"to": "no such/id", "body": 1})).await?;
    assert_eq!(c.expect("error").await?["code"], "bad_recipient");
    c.send_to("eve", json!("still here")).await?;
    assert_eq!(c.expect("ack").await?["status"], "delivered");

    // Binary: 1003.
    c.ws.send(Message::binary(vec![1, 2, 3])).await?;
    assert_eq!(close_code(&mut c.ws).await?, Some(1003));

    // Too big: 1009, whether just over the limit or far over it.
    let mut c = Client::connect(addr, "eve").await?;
    c.send_to("x", json!("y".repeat(5_000))).await?;
    assert_eq!(close_code(&mut c.ws).await?, Some(1009));
    let mut c = Client::connect(addr, "eve").await?;
    let _ = c.send_to("x", json!("y".repeat(100_000))).await;
    let code = close_code(&mut c.ws).await.ok().flatten();
    assert!(matches!(code, Some(1009) | None), "{code:?}");

    // A flood: 10 000 messages as fast as possible gets rate_limited and 1008.
    let c = Client::connect(addr, "flood").await?;
    let (mut sink, mut stream) = c.ws.split();
    let reader = tokio::spawn(async move {
        let mut saw_rate_limited = false;
        while let Some(Ok(message)) = stream.next().await {
            match message {
                Message::Text(t) if t.contains("rate_limited") => saw_rate_limited = true,
                Message::Close(frame) => {
                    return (saw_rate_limited, frame.map(|f| u16::from(f.code)));
                }
                _ => {}
            }
        }
        (saw_rate_limited, None)
    });
    let mut sent = 0;
    for i in 0..10_000 {
        if sink
            .send(Message::text(json!({"to": "sink", "body": i}).to_string()))
            .await
            .is_err()
        {
            break;
        }
        sent += 1;
    }
    let (saw_rate_limited, code) = reader.await?;
    assert!(sent > 0);
    assert!(saw_rate_limited);
    assert_eq!(code, Some(1008));

    // Still up.
    let mut c = Client::connect(addr, "after").await?;
    c.send_to("after", json!(1)).await?;
    assert_eq!(c.expect("ack").await?["status"], "delivered");
    assert_eq!(http(node.admin_addr(), "GET", "/healthz").await?.0, 200);
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_moves_every_client_to_the_other_node_and_loses_nothing() -> Result {
    const CLIENTS: usize = 8;
    let cluster = Cluster::new();
    let n1 = cluster.start("node-old").await?;
    let n2 = cluster.start("node-new").await?;
    let (a1, a2) = (n1.public_addr(), n2.public_addr());
    assert_eq!(http(n1.admin_addr(), "GET", "/readyz").await?.0, 200);

    // Receivers on the draining node; they follow the reconnect frame to n2
    // (the test plays the load balancer) and count what they get.
    let mut receivers = Vec::new();
    for i in 0..CLIENTS {
        let id = format!("r{i}");
        let mut c = Client::connect(a1, &id).await?;
        receivers.push(tokio::spawn(async move {
            let mut ids = BTreeSet::new();
            let mut saw_reconnect = false;
            let close;
            loop {
                match c.next().await {
                    Ok(Seen::Json(v)) if v["type"] == "message" => {
                        ids.insert(v["id"].as_str().unwrap_or_default().to_owned());
                    }
                    Ok(Seen::Json(v)) if v["type"] == "reconnect" => {
                        saw_reconnect = v["retry_after_ms"].as_u64().is_some();
                    }
                    Ok(Seen::Json(_)) => {}
                    Ok(Seen::Closed(c)) => {
                        close = c.map(|(code, _)| code);
                        break;
                    }
                    Err(e) => return Err(format!("{id}: {e}")),
                }
            }
            let mut c = Client::connect(a2, &id).await.map_err(|e| e.to_string())?;
            // Everything sent is in within a few quiet seconds.
            while let Ok(Seen::Json(v)) = c.next().await {
                if v["type"] == "message" {
                    ids.insert(v["id"].as_str().unwrap_or_default().to_owned());
                }
            }
            Ok::<_, String>((id, saw_reconnect, close, c.node, ids))
        }));
    }

    // A sender on the other node, sending to every receiver before, during
    // and after the drain.
    let mut sender = Client::connect(a2, "sender").await?;
    let mut acked: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut round = 0;
    let mut send =
        async |sender: &mut Client, acked: &mut BTreeMap<String, BTreeSet<String>>| -> Result {
            for i in 0..CLIENTS {
                let to = format!("r{i}");
                sender.send_to(&to, json!(round)).await?;
                let ack = sender.expect("ack").await?;
                acked
                    .entry(to)
                    .or_default()
                    .insert(ack["id"].as_str().unwrap_or_default().to_owned());
            }
            round += 1;
            Ok(())
        };
    for _ in 0..3 {
        send(&mut sender, &mut acked).await?;
    }

    let admin = n1.admin_addr();
    let drain = tokio::spawn(async move { http(admin, "GET", "/drain").await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Readiness flips at once; liveness does not; new upgrades are refused.
    assert_eq!(http(admin, "GET", "/readyz").await?.0, 503);
    assert_eq!(http(admin, "GET", "/healthz").await?.0, 200);
    assert!(raw(a1, "?client_id=late").await.is_err());
    // A second /drain (POST) waits on the same drain.
    let second = tokio::spawn(async move { http(admin, "POST", "/drain").await });

    let started = tokio::time::Instant::now();
    while !drain.is_finished() && started.elapsed() < Duration::from_secs(15) {
        send(&mut sender, &mut acked).await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = drain.await??;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        n1.core().drain().active(),
        0,
        "/drain answered before the node was empty"
    );
    let summary: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(summary["connections_at_start"], CLIENTS);
    assert_eq!(summary["forced"], 0);
    assert_eq!(summary["finish"]["committed"], true);
    assert_eq!(summary["finish"]["deregistered"], true);
    let (status2, body2) = second.await??;
    assert_eq!((status2, &body2), (200, &body));
    for _ in 0..3 {
        send(&mut sender, &mut acked).await?;
    }

    let mut total = 0;
    for r in receivers {
        let (id, saw_reconnect, close, node, ids) = r.await??;
        assert!(saw_reconnect, "{id} got no reconnect frame");
        assert_eq!(close, Some(1012), "{id}");
        assert_eq!(node, "node-new");
        total += assert_got_all(&id, &acked[&id], &ids);
    }
    assert!(total >= CLIENTS * 6, "{total}");

    // The heartbeat entry is gone.
    let redis = rtc_testkit::redis().await?;
    let key = format!("{}live:node-old", cluster.heartbeat_prefix);
    let gone: Option<String> = fred::interfaces::KeysInterface::get(redis.client(), key).await?;
    assert!(gone.is_none());

    n1.shutdown().await;
    n2.shutdown().await;
    Ok(())
}
