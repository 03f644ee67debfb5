//! A rebalance's shed on the local stack's Redis and broker: the newest
//! clients of a node move to another node while it stays ready, and no
//! message is lost.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{Client, Cluster, Result, Seen, assert_got_all, http};
use rtc_testkit::http_with;
use serde_json::{Value, json};

const TOKEN: &str = "a-token-of-the-test-0123456789";

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shed_moves_the_newest_clients_while_the_node_stays_ready_and_loses_nothing() -> Result {
    const CLIENTS: usize = 10;
    const SHED: usize = 4;
    let cluster = Cluster::new();
    let mut hot = cluster.settings("node-hot");
    hot.admin_token = Some(TOKEN.to_owned());
    let n1 = rtc_socket::start(hot, None)
        .await
        .map_err(|e| format!("{e:#}"))?;
    let n2 = cluster.start("node-cold").await?;
    let (a1, a2, admin) = (n1.public_addr(), n2.public_addr(), n1.admin_addr());

    // Receivers on the hot node, connected one after the other (r9 is the
    // newest). Moved ones follow the reconnect frame to n2 (the test plays
    // the load balancer); all read until five quiet seconds.
    let mut receivers = Vec::new();
    for i in 0..CLIENTS {
        let id = format!("r{i}");
        let mut c = Client::connect(a1, &id).await?;
        receivers.push(tokio::spawn(async move {
            let mut ids = BTreeSet::new();
            let mut moved = None;
            loop {
                match c.next().await {
                    Ok(Seen::Json(v)) if v["type"] == "message" => {
                        ids.insert(v["id"].as_str().unwrap_or_default().to_owned());
                    }
                    Ok(Seen::Json(v)) if v["type"] == "reconnect" => {
                        moved = Some(v["retry_after_ms"].as_u64());
                    }
                    Ok(Seen::Json(_)) => {}
                    Ok(Seen::Closed(close)) => {
                        let mut c2 = Client::connect(a2, &id).await.map_err(|e| e.to_string())?;
                        while let Ok(Seen::Json(v)) = c2.next().await {
                            if v["type"] == "message" {
                                ids.insert(v["id"].as_str().unwrap_or_default().to_owned());
                            }
                        }
                        return Ok::<_, String>((id, moved, close, c2.node, ids));
                    }
                    // Quiet for 5 s: the load is over and this client stayed.
                    Err(_) => return Ok((id, moved, None, c.node, ids)),
                }
            }
        }));
    }

    let mut sender = Client::connect(a2, "sender").await?;
    let mut acked: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let send =
        async |sender: &mut Client, acked: &mut BTreeMap<String, BTreeSet<String>>| -> Result {
            for i in 0..CLIENTS {
                let to = format!("r{i}");
                sender.send_to(&to, json!("x")).await?;
                let ack = sender.expect("ack").await?;
                acked
                    .entry(to)
                    .or_default()
                    .insert(ack["id"].as_str().unwrap_or_default().to_owned());
            }
            Ok(())
        };
    send(&mut sender, &mut acked).await?;

    // Refusals: no token, a wrong one, a bad body; a node without a token
    // refuses every shed.
    let body = json!({"connections": SHED, "window_ms": 600}).to_string();
    let (status, text) = http_with(admin, "POST", "/shed", &[], &body).await?;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("Authorization: Bearer"), "{text}");
    let wrong = bearer("a-token-of-the-test-0123456780");
    let (status, _) =
        http_with(admin, "POST", "/shed", &[("Authorization", &wrong)], &body).await?;
    assert_eq!(status, 401);
    let auth = bearer(TOKEN);
    let bad = json!({"connections": 2, "window": 5}).to_string();
    let (status, text) =
        http_with(admin, "POST", "/shed", &[("Authorization", &auth)], &bad).await?;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("window_ms"), "{text}");
    let zero = json!({"connections": 0, "window_ms": 5}).to_string();
    let (status, text) =
        http_with(admin, "POST", "/shed", &[("Authorization", &auth)], &zero).await?;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("at least 1"), "{text}");
    let (status, text) = http_with(
        n2.admin_addr(),
        "POST",
        "/shed",
        &[("Authorization", &auth)],
        &body,
    )
    .await?;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("ADMIN_TOKEN"), "{text}");
    assert_eq!(n1.core().drain().active(), CLIENTS, "refusals moved nobody");

    let (status, text) =
        http_with(admin, "POST", "/shed", &[("Authorization", &auth)], &body).await?;
    assert_eq!(status, 202, "{text}");
    let started: Value = serde_json::from_str(&text)?;
    assert_eq!(started["selected"], SHED);
    assert_eq!(started["open"], CLIENTS);
    // A second one while the first runs is refused.
    let (status, text) =
        http_with(admin, "POST", "/shed", &[("Authorization", &auth)], &body).await?;
    assert_eq!(status, 409, "{text}");

    // The node stays ready and takes new clients while it sheds.
    assert_eq!(http(admin, "GET", "/readyz").await?.0, 200);
    let late = Client::connect(a1, "late").await?;
    assert_eq!(late.node, "node-hot");

    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        send(&mut sender, &mut acked).await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(http(admin, "GET", "/readyz").await?.0, 200);

    let mut total = 0;
    for r in receivers {
        let (id, moved, close, node, ids) = r.await??;
        let index: usize = id[1..].parse()?;
        if index >= CLIENTS - SHED {
            assert!(matches!(moved, Some(Some(_))), "{id}: no reconnect frame");
            assert_eq!(close.as_ref().map(|(code, _)| *code), Some(1012), "{id}");
            let reason = close.map(|(_, r)| r).unwrap_or_default();
            assert!(reason.contains("rebalancing"), "{id}: {reason}");
            assert_eq!(node, "node-cold", "{id}");
        } else {
            assert_eq!(moved, None, "{id} is older than the shed ones");
            assert_eq!(node, "node-hot", "{id}");
        }
        total += assert_got_all(&id, &acked[&id], &ids);
    }
    assert!(total >= CLIENTS * 5, "{total}");
    drop(late);
    n1.shutdown().await;
    n2.shutdown().await;
    Ok(())
}
