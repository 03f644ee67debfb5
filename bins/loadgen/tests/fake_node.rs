//! The generator against two in-process fake socket nodes that share one
//! relay: a drain (reconnect frames, close 1012, then 503 on the upgrade)
//! moves clients to the other node, unacked messages go again, and the
//! ledger still accounts for every message. No stack needed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rtc_loadgen::frames::Reason;
use rtc_loadgen::progress::Silent;
use rtc_loadgen::{Discovery, PhaseKind, Profile, Rate, RunConfig};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, mpsc, watch};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

type Result<T = (), E = Box<dyn std::error::Error + Send + Sync>> = std::result::Result<T, E>;

/// Who is connected where, and what waits for clients that are away.
#[derive(Default)]
struct Relay {
    online: HashMap<String, mpsc::UnboundedSender<String>>,
    offline: HashMap<String, Vec<String>>,
    next_id: u64,
}

struct FakeNode {
    address: SocketAddr,
    drain: watch::Sender<bool>,
}

async fn fake_node(name: &'static str, relay: Arc<Mutex<Relay>>) -> Result<FakeNode> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let (drain, draining) = watch::channel(false);
    let refusing = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&refusing);
    let mut watch_drain = draining.clone();
    tokio::spawn(async move {
        if watch_drain.wait_for(|d| *d).await.is_ok() {
            flag.store(true, Ordering::SeqCst);
        }
    });
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let relay = Arc::clone(&relay);
            let draining = draining.clone();
            let refusing = Arc::clone(&refusing);
            tokio::spawn(async move {
                let _ = connection(name, stream, relay, draining, refusing).await;
            });
        }
    });
    Ok(FakeNode { address, drain })
}

async fn connection(
    name: &str,
    stream: tokio::net::TcpStream,
    relay: Arc<Mutex<Relay>>,
    mut draining: watch::Receiver<bool>,
    refusing: Arc<AtomicBool>,
) -> Result {
    let mut client = String::new();
    #[allow(
        clippy::result_large_err,
        reason = "the signature of tungstenite's handshake callback"
    )]
    let callback =
        |request: &Request, response: Response| -> std::result::Result<Response, ErrorResponse> {
            if refusing.load(Ordering::SeqCst) {
                let mut refusal = ErrorResponse::new(None);
                *refusal.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                refusal
                    .headers_mut()
                    .insert("retry-after", HeaderValue::from_static("1"));
                return Err(refusal);
            }
            client = request
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("client_id="))
                .unwrap_or_default()
                .to_owned();
            Ok(response)
        };
    let ws = tokio_tungstenite::accept_hdr_async(stream, callback).await?;
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let kept = {
        let mut relay = relay.lock().await;
        relay.online.insert(client.clone(), tx.clone());
        relay.offline.remove(&client).unwrap_or_default()
    };
    let welcome = json!({"type": "welcome", "client_id": client, "node": name});
    sink.send(Message::text(welcome.to_string())).await?;
    for frame in kept {
        sink.send(Message::text(frame)).await?;
    }
    let result: Result = async {
        loop {
            tokio::select! {
                incoming = stream.next() => {
                    let Some(Ok(Message::Text(text))) = incoming else { return Ok(()) };
                    let frame: Value = serde_json::from_str(&text)?;
                    let to = frame["to"].as_str().unwrap_or_default().to_owned();
                    let mut relay = relay.lock().await;
                    relay.next_id += 1;
                    let message = json!({
                        "type": "message", "id": format!("{name}/0/{}", relay.next_id),
                        "from": client, "to": to, "sent_ms": 0, "body": frame["body"],
                    })
                    .to_string();
                    let status = match relay.online.get(&to) {
                        Some(peer) if peer.send(message.clone()).is_ok() => "delivered",
                        _ => {
                            relay.offline.entry(to).or_default().push(message);
                            "buffered"
                        }
                    };
                    drop(relay);
                    let ack = json!({"type": "ack", "id": "x", "ref": frame["ref"], "status": status});
                    sink.send(Message::text(ack.to_string())).await?;
                }
                Some(outgoing) = rx.recv() => sink.send(Message::text(outgoing)).await?,
                Ok(()) = draining.changed() => {
                    // The flag only ever goes from false to true: a change is the drain.
                    sink.send(Message::text(json!({"type": "reconnect", "retry_after_ms": 100}).to_string())).await?;
                    let close = CloseFrame { code: CloseCode::from(1012), reason: Utf8Bytes::from_static("draining") };
                    sink.send(Message::Close(Some(close))).await?;
                    return Ok(());
                }
            }
        }
    }
    .await;
    // Whatever was on its way to this connection waits for the client.
    let mut relay = relay.lock().await;
    if relay
        .online
        .get(&client)
        .is_some_and(|t| t.same_channel(&tx))
    {
        relay.online.remove(&client);
    }
    rx.close();
    while let Ok(frame) = rx.try_recv() {
        relay.offline.entry(client.clone()).or_default().push(frame);
    }
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_nodes_clients_move_to_the_other_and_every_message_is_accounted_for() -> Result {
    let relay = Arc::new(Mutex::new(Relay::default()));
    let a = fake_node("fake-a", Arc::clone(&relay)).await?;
    let b = fake_node("fake-b", Arc::clone(&relay)).await?;
    let profile = Profile::single(
        PhaseKind::Steady,
        Duration::from_secs(4),
        10,
        Rate::Overall(200.0),
    )?;
    let mut config = RunConfig::new("fake1", profile);
    config.grace = Duration::from_secs(5);
    let discovery = Discovery::Static(vec![a.address, b.address]);
    let run = tokio::spawn(async move { rtc_loadgen::run(config, discovery, &mut Silent).await });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    a.drain.send(true)?;
    let summary = run.await??;
    let m = &summary.messages;
    assert!(m.sent >= 790, "{m:?}");
    assert_eq!(
        m.received, m.sent,
        "never received: {:?}",
        summary.never_received
    );
    assert_eq!(m.lost, 0);
    assert_eq!(summary.latency.count, m.received);
    assert_eq!(
        summary.reconnects.get(&Reason::Drain),
        Some(&5),
        "{:?}",
        summary.reconnects
    );
    assert_eq!(
        summary.connections.open_at_end_by_target,
        [(b.address.to_string(), 10)].into_iter().collect(),
        "{:?}",
        summary.connections
    );
    Ok(())
}

#[tokio::test]
async fn no_ready_target_is_an_error_not_a_hang() {
    let profile = Profile::single(
        PhaseKind::Steady,
        Duration::from_secs(1),
        1,
        Rate::Overall(1.0),
    )
    .expect("valid");
    let result = rtc_loadgen::run(
        RunConfig::new("none", profile),
        Discovery::Static(vec![]),
        &mut Silent,
    )
    .await;
    assert!(
        matches!(result, Err(rtc_loadgen::RunError::NoTargets(_))),
        "{result:?}"
    );
}
