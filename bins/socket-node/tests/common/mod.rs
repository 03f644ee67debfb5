//! Nodes started in-process against the local stack's Redis and broker,
//! each test under its own key prefixes and topic names, and a real
//! WebSocket client.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rtc_drain::DrainConfig;
use rtc_relay::{BufferLimits, ForwardConfig};
use rtc_socket::ws::Limits;
use rtc_socket::{Node, Settings};
use rtc_testkit::{Endpoints, unique_name};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Result<T = (), E = Box<dyn std::error::Error + Send + Sync>> = std::result::Result<T, E>;

/// Names shared by the nodes of one test.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub relay_prefix: String,
    pub heartbeat_prefix: String,
    pub topic_prefix: String,
    pub endpoints: Endpoints,
}

impl Cluster {
    pub fn new() -> Self {
        Self {
            relay_prefix: format!("{}:", unique_name("relay")),
            heartbeat_prefix: format!("{}:", unique_name("hb")),
            topic_prefix: format!("{}.", unique_name("dl")),
            endpoints: Endpoints::from_env(),
        }
    }

    pub fn settings(&self, node: &str) -> Settings {
        Settings {
            node_id: node.to_owned(),
            boot_id: "b1".to_owned(),
            public_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_token: None,
            redis_url: self.endpoints.redis_url.clone(),
            kafka_bootstrap: vec![self.endpoints.kafka_bootstrap.clone()],
            relay_prefix: self.relay_prefix.clone(),
            heartbeat_prefix: self.heartbeat_prefix.clone(),
            topic_prefix: self.topic_prefix.clone(),
            heartbeat_interval: Duration::from_millis(200),
            stale_after: Duration::from_secs(2),
            heartbeat_limit_per_resource: false,
            presence_ttl: Duration::from_secs(3),
            limits: Limits {
                max_connections: 100,
                max_frame_bytes: 4096,
                rate_per_second: 1_000,
                burst: 1_000,
                presence_refresh: Duration::from_secs(1),
            },
            buffer: BufferLimits {
                max: 10_000,
                ttl: Duration::from_secs(600),
            },
            send_queue: 1024,
            window_secs: 10,
            drain: DrainConfig {
                endpoint_delay: Duration::from_millis(300),
                timeout: Duration::from_secs(6),
                tail: Some(Duration::from_secs(2)),
                min_batch_interval: Duration::from_millis(300),
                max_retry_after: Duration::from_millis(200),
                force_grace: Duration::from_secs(1),
                seed: 7,
            },
            handoff_grace: Duration::from_millis(500),
            offset_commit_interval: Duration::from_millis(100),
            forward: ForwardConfig {
                scan_interval: Duration::from_millis(300),
                claim_ttl: Duration::from_secs(5),
                retire_after: Duration::from_secs(4),
            },
            offset_timeout: Duration::from_secs(5),
            batch: rtc_relay::BatchBounds::DEFAULT,
            fetch_wait: rtc_relay::DEFAULT_FETCH_WAIT,
            fetch_max_bytes: rtc_relay::DEFAULT_FETCH_MAX_BYTES,
            // Below FORWARD_RETIRE_AFTER minus PRESENCE_TTL, as the settings
            // require.
            route_cache: Duration::from_millis(500),
        }
    }

    pub async fn start(&self, node: &str) -> Result<Node> {
        Ok(rtc_socket::start(self.settings(node), None)
            .await
            .map_err(|e| format!("{e:#}"))?)
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A test client.
pub struct Client {
    pub ws: Ws,
    pub node: String,
}

/// What the client saw.
#[derive(Debug)]
pub enum Seen {
    Json(Value),
    Closed(Option<(u16, String)>),
}

pub async fn raw(addr: SocketAddr, query: &str) -> Result<Ws> {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws{query}")).await?;
    Ok(ws)
}

impl Client {
    /// Connects and reads the welcome frame.
    pub async fn connect(addr: SocketAddr, id: &str) -> Result<Self> {
        let ws = raw(addr, &format!("?client_id={id}")).await?;
        let mut client = Self {
            ws,
            node: String::new(),
        };
        match client.next().await? {
            Seen::Json(v) if v["type"] == "welcome" => {
                client.node = v["node"].as_str().unwrap_or_default().to_owned();
                Ok(client)
            }
            other => Err(format!("expected a welcome, got {other:?}").into()),
        }
    }

    pub async fn send(&mut self, value: &Value) -> Result {
        self.ws.send(Message::text(value.to_string())).await?;
        Ok(())
    }

    pub async fn send_to(&mut self, to: &str, body: Value) -> Result {
        self.send(&serde_json::json!({"to": to, "body": body}))
            .await
    }

    /// The next frame within 5 s.
    pub async fn next(&mut self) -> Result<Seen> {
        next(&mut self.ws).await
    }

    /// Frames until one of `kind`, within 5 s each.
    pub async fn expect(&mut self, kind: &str) -> Result<Value> {
        loop {
            match self.next().await? {
                Seen::Json(v) if v["type"] == kind => return Ok(v),
                Seen::Json(_) => {}
                Seen::Closed(c) => return Err(format!("closed {c:?} waiting for {kind}").into()),
            }
        }
    }
}

pub async fn next(ws: &mut Ws) -> Result<Seen> {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .map_err(|_| "no frame within 5 s")?;
        match message {
            None => return Ok(Seen::Closed(None)),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(Message::Text(t))) => return Ok(Seen::Json(serde_json::from_str(&t)?)),
            Some(Ok(Message::Close(frame))) => {
                return Ok(Seen::Closed(
                    frame.map(|f| (u16::from(f.code), f.reason.to_string())),
                ));
            }
            Some(Ok(_)) => {}
        }
    }
}

/// Reads frames until the close; returns its code.
pub async fn close_code(ws: &mut Ws) -> Result<Option<u16>> {
    loop {
        match next(ws).await? {
            Seen::Closed(c) => return Ok(c.map(|(code, _)| code)),
            Seen::Json(_) => {}
        }
    }
}

pub fn normal() -> CloseCode {
    CloseCode::Normal
}

/// Checks `received` holds every id in `acked` for client `id`; how many
/// that was.
pub fn assert_got_all(
    id: &str,
    acked: &std::collections::BTreeSet<String>,
    received: &std::collections::BTreeSet<String>,
) -> usize {
    let missing: Vec<_> = acked.difference(received).collect();
    assert!(
        missing.is_empty(),
        "{id} lost {} of {}: {missing:?}",
        missing.len(),
        acked.len()
    );
    acked.len()
}

/// A plain HTTP/1.1 request to the admin port; returns status and body.
#[allow(unused_imports, reason = "each test binary uses a part")]
pub use rtc_testkit::http;
