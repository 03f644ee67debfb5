//! The public port: `/ws?client_id=…`, one task per connection, tracked by
//! the drain.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use rtc_drain::{Connection, Drain, Instruction};
use serde::Deserialize;
use tokio::time::Instant;

use rtc_relay::core::limit::TokenBucket;
use rtc_relay::protocol::{self, Control, close};
use rtc_relay::{KickReason, Routed};

use crate::NodeRelay;

/// Per-connection limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections this node holds at most.
    pub max_connections: usize,
    /// Largest text frame accepted, bytes.
    pub max_frame_bytes: usize,
    /// Sustained messages per second per connection.
    pub rate_per_second: u32,
    /// Burst allowance per connection.
    pub burst: u32,
    /// Presence claims are renewed this often.
    pub presence_refresh: Duration,
}

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct Public {
    /// The relay.
    pub relay: Arc<NodeRelay>,
    /// The drain.
    pub drain: Drain,
    /// The limits.
    pub limits: Limits,
}

/// The public router.
pub fn router(state: Public) -> Router {
    Router::new().route("/ws", get(upgrade)).with_state(state)
}

#[derive(Debug, Deserialize)]
struct Params {
    client_id: Option<String>,
}

fn closing(code: u16, reason: &'static str) -> Message {
    metrics::counter!("rtc_socket_closes_total", "code" => code.to_string()).increment(1);
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }))
}

/// The replies (acks or errors) of a connection's messages whose produce is
/// still under way, in the order the messages came.
type Replies = FuturesOrdered<Pin<Box<dyn Future<Output = String> + Send>>>;

/// Messages of one connection whose produce may be under way at once; the
/// connection reads its next frame only once fewer are.
const MAX_UNSETTLED: usize = 1_024;

/// Read buffer of a connection, allocated with it and held while it is
/// idle; larger frames grow it. It is also the most one read from the
/// socket takes, so a burst of small frames costs a few more reads.
const READ_BUFFER_BYTES: usize = 256;
/// Outgoing frames are written at once: every send is flushed anyway, so a
/// gathering buffer would only cost memory on idle connections.
const WRITE_BUFFER_BYTES: usize = 0;

async fn upgrade(
    State(state): State<Public>,
    Query(params): Query<Params>,
    ws: WebSocketUpgrade,
) -> Response {
    // Refused before the upgrade, so a load balancer retries elsewhere.
    let conn = match state.drain.register() {
        Ok(conn) => conn,
        Err(_) => {
            metrics::counter!("rtc_socket_refused_total", "reason" => "draining").increment(1);
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [("retry-after", "1")],
                "draining: connect to another node",
            )
                .into_response();
        }
    };
    let client_id = params.client_id;
    // Frames up to 4x the limit reach the handler, which closes with a
    // clear 1009; beyond that the WebSocket layer stops reading.
    let ceiling = state.limits.max_frame_bytes.saturating_mul(4).max(1024);
    // The WebSocket layer preallocates its read buffer per connection (128
    // KiB by default): most connections are idle, so a small one, grown on
    // demand by larger frames, keeps memory per connection low.
    ws.max_message_size(ceiling)
        .max_frame_size(ceiling)
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .on_upgrade(move |socket| {
            // A task of its own, so the upgrade's task ends here: it would
            // otherwise hold the connection's future inside its own, next
            // to a copy of everything moved into it, for the connection's
            // whole life.
            let span = tracing::debug_span!(
                "session",
                client = client_id.as_deref().unwrap_or(""),
                conn = conn.id()
            );
            tokio::spawn(tracing::Instrument::instrument(
                session(state, socket, client_id, conn),
                span,
            ));
            std::future::ready(())
        })
}

/// After sending a close frame: read (and drop) what the client still sends
/// until its close arrives, for at most a second, so the connection ends with
/// a closing handshake rather than a reset that could destroy the frames
/// sent just before the close.
async fn linger(socket: &mut WebSocket) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

async fn reject(mut socket: WebSocket, code: u16, reason: &'static str, error_code: &str) {
    let _ = socket
        .send(Message::Text(
            Control::Error {
                code: error_code,
                message: reason,
                reference: None,
            }
            .encode()
            .into(),
        ))
        .await;
    if socket.send(closing(code, reason)).await.is_ok() {
        linger(&mut socket).await;
    }
}

/// The life of one accepted connection, in one function: each nested async
/// function would keep its own copy of the socket and the rest of its
/// arguments in the connection's future. Rarely taken, large awaits
/// (Redis, the broker, frame handling, rejections) are boxed, so an idle
/// connection's future stays small: most connections are idle most of the
/// time.
///
/// An `async move` block rather than an `async fn`: an async function
/// moves its arguments into locals as it starts and its future keeps room
/// for both (about 470 bytes more per connection here); a block uses what
/// it captured in place.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn's future keeps its arguments twice; see above"
)]
fn session(
    state: Public,
    mut socket: WebSocket,
    client_id: Option<String>,
    mut conn: Connection,
) -> impl Future<Output = ()> + Send {
    async move {
        let client = match client_id {
            Some(id) if protocol::valid_client_id(&id) => id,
            _ => {
                metrics::counter!("rtc_socket_refused_total", "reason" => "bad_client_id")
                    .increment(1);
                Box::pin(reject(
                    socket,
                    close::POLICY,
                    "missing or malformed client_id: 1-128 characters from [A-Za-z0-9._~@-]",
                    "bad_client_id",
                ))
                .await;
                return;
            }
        };
        if state.drain.active() > state.limits.max_connections {
            metrics::counter!("rtc_socket_refused_total", "reason" => "full").increment(1);
            Box::pin(reject(
                socket,
                close::TRY_AGAIN_LATER,
                "node full: try again later",
                "node_full",
            ))
            .await;
            return;
        }
        metrics::counter!("rtc_socket_connections_total").increment(1);
        let relay = Arc::clone(&state.relay);
        let (mut rx, kick) = relay.attach(&client, conn.id());
        let pending = match Box::pin(relay.claim(&client)).await {
            Ok(frames) => frames,
            Err(e) => {
                tracing::warn!(error = %e, "claiming the client failed");
                let _ = socket
                    .send(closing(
                        close::TRY_AGAIN_LATER,
                        "presence store unavailable",
                    ))
                    .await;
                Box::pin(relay.detach(&client, conn.id(), rx)).await;
                return;
            }
        };
        let welcome = Control::Welcome {
            client_id: &client,
            node: relay.node(),
        }
        .encode();
        let welcomed = socket.send(Message::Text(welcome.into())).await.is_ok();
        let open = Box::pin(write_buffered(
            &relay,
            &mut socket,
            &client,
            pending,
            welcomed,
        ))
        .await;

        let origin = Instant::now();
        let now_ms = || u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut bucket = TokenBucket::new(state.limits.rate_per_second, state.limits.burst, 0);
        let mut refresh = tokio::time::interval_at(
            Instant::now() + state.limits.presence_refresh,
            state.limits.presence_refresh,
        );
        if !open {
            Box::pin(relay.detach(&client, conn.id(), rx)).await;
            return;
        }
        let mut replies = Replies::new();
        loop {
            tokio::select! {
                Some(reply) = replies.next(), if !replies.is_empty() => {
                    if socket.send(Message::Text(reply.into())).await.is_err() {
                        break;
                    }
                }
                instruction = conn.instruction() => {
                    Box::pin(flush(&mut socket, &mut replies)).await;
                    let frame = match instruction {
                        Instruction::Reconnect { retry_after } => Control::Reconnect {
                            retry_after_ms: u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX),
                        },
                        Instruction::Shed { retry_after } => Control::Reconnect {
                            retry_after_ms: u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX),
                        },
                        Instruction::Close => Control::Reconnect { retry_after_ms: 0 },
                    };
                    let why = if matches!(instruction, Instruction::Shed { .. }) {
                        "node rebalancing: reconnect to another node"
                    } else {
                        "node draining: reconnect to another node"
                    };
                    let _ = socket.send(Message::Text(frame.encode().into())).await;
                    let _ = socket.send(closing(close::SERVICE_RESTART, why)).await;
                    break;
                }
                () = kick.buffered_for_me() => {
                    // A frame was buffered while this connection is open here.
                    if !Box::pin(take_buffer(&relay, &mut socket, &client)).await {
                        break;
                    }
                }
                reason = kick.wait() => {
                    Box::pin(flush(&mut socket, &mut replies)).await;
                    let (code, text) = match reason {
                        KickReason::Slow => (close::TRY_AGAIN_LATER, "too slow to keep up: reconnect"),
                        KickReason::Superseded => (close::SUPERSEDED, "replaced by a newer connection"),
                    };
                    let _ = socket.send(closing(code, text)).await;
                    break;
                }
                out = rx.recv() => {
                    let Some(out) = out else { break };
                    let text = Utf8Bytes::from(out.frame.as_ref());
                    if socket.send(Message::Text(text)).await.is_err() {
                        // Not written: handed on like the rest at detach.
                        Box::pin(relay.hand_back(&client, out)).await;
                        break;
                    }
                    relay.written(out);
                }
                _ = refresh.tick() => {
                    if !Box::pin(take_buffer(&relay, &mut socket, &client)).await {
                        break;
                    }
                }
                incoming = socket.recv() => {
                    let Some(Ok(message)) = incoming else {
                        if let Some(Err(e)) = incoming {
                            tracing::debug!(error = %e, "socket error");
                            let text = e.to_string();
                            if text.contains("too long") || text.contains("Space limit") || text.contains("size") {
                                metrics::counter!("rtc_socket_rejected_total", "reason" => "too_big").increment(1);
                                let _ = socket.send(closing(close::TOO_BIG, "frame too large")).await;
                            }
                        }
                        break;
                    };
                    match message {
                        Message::Text(text) => {
                            while replies.len() >= MAX_UNSETTLED {
                                let Some(reply) = replies.next().await else { break };
                                let _ = socket.send(Message::Text(reply.into())).await;
                            }
                            if !Box::pin(handle_text(&state, &relay, &mut socket, &client, &mut bucket, now_ms(), text.as_str(), &mut replies)).await {
                                break;
                            }
                        }
                        Message::Binary(_) => {
                            metrics::counter!("rtc_socket_rejected_total", "reason" => "binary").increment(1);
                            Box::pin(flush(&mut socket, &mut replies)).await;
                            Box::pin(reject(socket, close::UNSUPPORTED_DATA, "binary frames are not supported: send JSON text", "binary_not_supported")).await;
                            Box::pin(relay.detach(&client, conn.id(), rx)).await;
                            return;
                        }
                        Message::Close(_) => break,
                        Message::Ping(_) | Message::Pong(_) => {}
                    }
                }
            }
        }
        // Every message taken is settled (relayed, or buffered when its
        // produce failed) before the connection ends; its reply is written if
        // the socket still takes it.
        Box::pin(flush(&mut socket, &mut replies)).await;
        Box::pin(linger(&mut socket)).await;
        drop(socket);
        Box::pin(relay.detach(&client, conn.id(), rx)).await;
        drop(conn);
    }
}

/// Waits for every unsettled message and writes its reply, in order,
/// while the socket takes them.
async fn flush(socket: &mut WebSocket, replies: &mut Replies) {
    let mut open = true;
    while let Some(reply) = replies.next().await {
        if open {
            open = socket.send(Message::Text(reply.into())).await.is_ok();
        }
    }
}

/// Writes frames taken from the client's offline buffer, in order; those
/// that cannot be written (the socket failed) are handed back, so they
/// reach the client's next connection. Whether the socket is still open.
async fn write_buffered(
    relay: &NodeRelay,
    socket: &mut WebSocket,
    client: &str,
    frames: Vec<String>,
    mut open: bool,
) -> bool {
    for frame in frames {
        let sent = protocol::frame_head(&frame).map_or(0, |h| h.sent_ms);
        let frame: Arc<str> = Arc::from(frame);
        if open {
            let text = Utf8Bytes::from(frame.as_ref());
            open = socket.send(Message::Text(text)).await.is_ok();
            if open {
                relay.delivered(sent);
                continue;
            }
        }
        relay
            .hand_back(client, rtc_relay::Outbound::new(frame, sent))
            .await;
    }
    open
}

/// Renews the client's presence and writes what was buffered for it
/// meanwhile; `false` when the connection must close (the socket failed,
/// or another node has taken the client over).
async fn take_buffer(relay: &NodeRelay, socket: &mut WebSocket, client: &str) -> bool {
    match relay.refresh(client).await {
        Ok(Some(frames)) => write_buffered(relay, socket, client, frames, true).await,
        Ok(None) => {
            let _ = socket
                .send(closing(close::SUPERSEDED, "connected on another node"))
                .await;
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, "renewing presence failed");
            true
        }
    }
}

/// Handles one text frame; `false` when the connection must close. The
/// reply of a message whose produce is under way joins `replies`.
#[expect(
    clippy::too_many_arguments,
    reason = "the parts of one connection's state, borrowed for one frame"
)]
async fn handle_text(
    state: &Public,
    relay: &Arc<NodeRelay>,
    socket: &mut WebSocket,
    client: &str,
    bucket: &mut TokenBucket,
    now_ms: u64,
    text: &str,
    replies: &mut Replies,
) -> bool {
    if text.len() > state.limits.max_frame_bytes {
        metrics::counter!("rtc_socket_rejected_total", "reason" => "too_big").increment(1);
        let _ = socket
            .send(closing(close::TOO_BIG, "frame larger than MAX_FRAME_BYTES"))
            .await;
        return false;
    }
    if !bucket.take(now_ms) {
        metrics::counter!("rtc_socket_rejected_total", "reason" => "flood").increment(1);
        let _ = socket
            .send(Message::Text(
                Control::Error {
                    code: "rate_limited",
                    message: "more messages than RATE_LIMIT_PER_SEC allows",
                    reference: None,
                }
                .encode()
                .into(),
            ))
            .await;
        let _ = socket
            .send(closing(close::POLICY, "rate limit exceeded"))
            .await;
        return false;
    }
    let outgoing = match protocol::parse_outgoing(text) {
        Ok(o) => o,
        Err(e) => {
            metrics::counter!("rtc_socket_rejected_total", "reason" => e.code()).increment(1);
            let message = e.to_string();
            let reply = Control::Error {
                code: e.code(),
                message: &message,
                reference: None,
            }
            .encode();
            return send_in_order(socket, replies, reply).await;
        }
    };
    let id = relay.next_id();
    let sent_ms = relay.wall_ms();
    let Some(frame) = protocol::message_frame(&id, client, &outgoing.to, sent_ms, &outgoing.body)
    else {
        return true;
    };
    let reference = outgoing.reference;
    let reply = match relay.submit(&outgoing.to, Arc::from(frame), sent_ms).await {
        Ok(Routed::Done(status)) => ack(&id, reference.as_deref(), status),
        Ok(Routed::Publishing(publishing)) => {
            // Acked once its batch's produce succeeded; the connection
            // reads on meanwhile, and replies keep the messages' order.
            let relay = Arc::clone(relay);
            replies.push_back(Box::pin(async move {
                match relay.settle(publishing).await {
                    Ok(status) => ack(&id, reference.as_deref(), status),
                    Err(e) => unavailable(&e, reference.as_deref()),
                }
            }));
            return true;
        }
        Err(e) => unavailable(&e, reference.as_deref()),
    };
    send_in_order(socket, replies, reply).await
}

/// Writes `reply` now, or after the replies still waiting for their
/// produce; `false` when the socket failed.
async fn send_in_order(socket: &mut WebSocket, replies: &mut Replies, reply: String) -> bool {
    if replies.is_empty() {
        socket.send(Message::Text(reply.into())).await.is_ok()
    } else {
        replies.push_back(Box::pin(std::future::ready(reply)));
        true
    }
}

fn ack(id: &str, reference: Option<&str>, status: rtc_relay::Status) -> String {
    metrics::counter!("rtc_socket_messages_total", "status" => status.label()).increment(1);
    Control::Ack {
        id,
        reference,
        status,
    }
    .encode()
}

fn unavailable(e: &rtc_relay::RelayError, reference: Option<&str>) -> String {
    metrics::counter!("rtc_socket_rejected_total", "reason" => "unavailable").increment(1);
    let message = e.to_string();
    Control::Error {
        code: "unavailable",
        message: &message,
        reference,
    }
    .encode()
}
