//! One generator client: a WebSocket connection under one client id that
//! sends what the driver hands it, reports acks and arrivals, and reconnects
//! (same id, a target the driver picks) after a drain, a refusal or a drop,
//! resending whatever was not acked (at least once).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::frames::{Reason, ServerFrame, client_id, send_frame};
use crate::ledger::{AckStatus, MsgId};

/// What the driver tells a client.
#[derive(Debug)]
pub(crate) enum Command {
    /// Send message `id` to client `to`.
    Send { id: MsgId, to: u32 },
    /// Close the connection and stop.
    Close,
}

/// What a client tells the driver.
#[derive(Debug)]
pub(crate) enum Event {
    /// Where should `client` connect? `None`: nowhere yet.
    NeedTarget {
        reply: oneshot::Sender<Option<SocketAddr>>,
    },
    /// `client` got its welcome on `target`.
    Connected { client: u32, target: SocketAddr },
    /// `client`'s connection to `target` ended (or was never made);
    /// `reason` is `None` when the generator closed it.
    Disconnected {
        client: u32,
        target: SocketAddr,
        reason: Option<Reason>,
    },
    /// About to write `id` (first send or resend).
    Sent { id: MsgId, to: u32, at: Duration },
    /// The node acked `id`.
    Acked { id: MsgId, status: AckStatus },
    /// `by` read `id` at `at`.
    Received { id: MsgId, by: u32, at: Duration },
    /// The node refused a frame with `code`.
    Refused { code: String },
    /// `client` stopped for good.
    Finished { client: u32 },
}

/// What every client shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) run: String,
    pub(crate) start: Instant,
    pub(crate) events: mpsc::UnboundedSender<Event>,
    pub(crate) connect_timeout: Duration,
}

/// Pause after a failure the node gave no advice for.
const BACKOFF: Duration = Duration::from_millis(500);
/// Pause when no target is Ready.
const NO_TARGET_WAIT: Duration = Duration::from_millis(200);

/// Small buffers: frames are a few hundred bytes, and tungstenite's
/// defaults (128 KiB each way) would cost a quarter of a megabyte per
/// connection, the generator's limit long before its CPU.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Client {
    index: u32,
    id: String,
    shared: Arc<Shared>,
    commands: mpsc::UnboundedReceiver<Command>,
    /// Messages handed to this client and not acked, by sequence.
    outbox: BTreeMap<u64, (MsgId, u32)>,
    closing: bool,
}

/// How one connection ended.
enum Ended {
    /// Reconnect after this pause.
    Retry(Reason, Duration),
    /// Stop for good.
    Stop(Option<Reason>),
}

/// Runs client `index` until it is told to close or is replaced.
pub(crate) async fn run(
    index: u32,
    shared: Arc<Shared>,
    commands: mpsc::UnboundedReceiver<Command>,
) {
    let mut client = Client {
        index,
        id: client_id(&shared.run, index),
        shared,
        commands,
        outbox: BTreeMap::new(),
        closing: false,
    };
    client.main().await;
    let _ = client.shared.events.send(Event::Finished { client: index });
}

impl Client {
    fn emit(&self, event: Event) {
        // The driver outlives every client; a send fails only at shutdown.
        let _ = self.shared.events.send(event);
    }

    async fn main(&mut self) {
        loop {
            let Some(target) = self.target().await else {
                if self.closing {
                    return;
                }
                if self.pause(NO_TARGET_WAIT).await {
                    return;
                }
                continue;
            };
            let ended = self.connection(target).await;
            match ended {
                Ended::Stop(reason) => {
                    self.emit(Event::Disconnected {
                        client: self.index,
                        target,
                        reason,
                    });
                    return;
                }
                Ended::Retry(reason, wait) => {
                    self.emit(Event::Disconnected {
                        client: self.index,
                        target,
                        reason: Some(reason),
                    });
                    if self.closing || self.pause(wait).await {
                        return;
                    }
                }
            }
        }
    }

    async fn target(&self) -> Option<SocketAddr> {
        let (reply, answer) = oneshot::channel();
        self.emit(Event::NeedTarget { reply });
        answer.await.ok().flatten()
    }

    /// Waits `wait` while keeping commands; true when told to close.
    async fn pause(&mut self, wait: Duration) -> bool {
        let until = Instant::now() + wait;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(until) => return false,
                command = self.commands.recv() => match command {
                    Some(Command::Send { id, to }) => { self.outbox.insert(id.seq, (id, to)); }
                    Some(Command::Close) | None => { self.closing = true; return true; }
                },
            }
        }
    }

    async fn connection(&mut self, target: SocketAddr) -> Ended {
        let url = format!("ws://{target}/ws?client_id={}", self.id);
        let timeout = self.shared.connect_timeout;
        let connect =
            tokio_tungstenite::connect_async_with_config(url.as_str(), Some(ws_config()), true);
        let mut ws: Ws = match tokio::time::timeout(timeout, connect).await {
            Ok(Ok((ws, _))) => ws,
            Ok(Err(tungstenite::Error::Http(response))) if response.status().as_u16() == 503 => {
                let retry = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(1);
                return Ended::Retry(Reason::Refused503, Duration::from_secs(retry));
            }
            Ok(Err(error)) => {
                tracing::debug!(client = %self.id, %target, %error, "connect failed");
                return Ended::Retry(Reason::ConnectFailed, BACKOFF);
            }
            Err(_) => return Ended::Retry(Reason::ConnectFailed, BACKOFF),
        };
        match tokio::time::timeout(timeout, ws.next()).await {
            Ok(Some(Ok(Message::Text(text))))
                if matches!(
                    ServerFrame::parse(&self.shared.run, &text),
                    ServerFrame::Welcome { .. }
                ) => {}
            Ok(Some(Ok(Message::Close(frame)))) => {
                let reason = frame.map_or(Reason::Dropped, |f| Reason::of_close(u16::from(f.code)));
                return if reason.reconnects() {
                    Ended::Retry(reason, BACKOFF)
                } else {
                    Ended::Stop(Some(reason))
                };
            }
            _ => return Ended::Retry(Reason::NoWelcome, BACKOFF),
        }
        self.emit(Event::Connected {
            client: self.index,
            target,
        });
        let (mut sink, mut stream) = ws.split();
        // Whatever was handed over and not acked goes (again) first.
        let backlog: Vec<(MsgId, u32)> = self.outbox.values().copied().collect();
        for (id, to) in backlog {
            if self.write(&mut sink, id, to).await.is_err() {
                return Ended::Retry(Reason::Dropped, BACKOFF);
            }
        }
        let mut retry_after = None;
        loop {
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(Command::Send { id, to }) => {
                        self.outbox.insert(id.seq, (id, to));
                        if self.write(&mut sink, id, to).await.is_err() {
                            return Ended::Retry(Reason::Dropped, BACKOFF);
                        }
                    }
                    Some(Command::Close) | None => {
                        self.closing = true;
                        let _ = sink.send(Message::Close(None)).await;
                        return Ended::Stop(None);
                    }
                },
                frame = stream.next() => match frame {
                    Some(Ok(Message::Text(text))) => {
                        if let Some(wait) = self.on_frame(&text) {
                            retry_after = Some(wait);
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        let reason = match frame {
                            Some(f) => Reason::of_close(u16::from(f.code)),
                            None if retry_after.is_some() => Reason::Drain,
                            None => Reason::Dropped,
                        };
                        if !reason.reconnects() {
                            return Ended::Stop(Some(reason));
                        }
                        let wait = if reason == Reason::Drain { retry_after.unwrap_or_default() } else { BACKOFF };
                        return Ended::Retry(reason, wait);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => {
                        return match retry_after {
                            Some(wait) => Ended::Retry(Reason::Drain, wait),
                            None => Ended::Retry(Reason::Dropped, BACKOFF),
                        };
                    }
                },
            }
        }
    }

    async fn write<S>(&self, sink: &mut S, id: MsgId, to: u32) -> Result<(), tungstenite::Error>
    where
        S: futures_util::Sink<Message, Error = tungstenite::Error> + Unpin,
    {
        let at = self.shared.start.elapsed();
        // Recorded before the write, so the ledger knows the message before
        // any recipient can report it.
        self.emit(Event::Sent { id, to, at });
        sink.send(Message::Text(
            send_frame(&self.shared.run, id, to, at).into(),
        ))
        .await
    }

    /// Handles a text frame; returns the pause a `reconnect` frame asks for.
    fn on_frame(&mut self, text: &str) -> Option<Duration> {
        match ServerFrame::parse(&self.shared.run, text) {
            ServerFrame::Ack {
                id: Some(id),
                status,
            } => {
                self.outbox.remove(&id.seq);
                if let Some(status) = status {
                    self.emit(Event::Acked { id, status });
                }
            }
            ServerFrame::Message { id: Some(id) } => {
                let at = self.shared.start.elapsed();
                self.emit(Event::Received {
                    id,
                    by: self.index,
                    at,
                });
            }
            ServerFrame::Reconnect { retry_after } => return Some(retry_after),
            ServerFrame::Error { code, .. } => {
                // `unavailable` leaves the message in the outbox: it goes
                // again on the next connection.
                self.emit(Event::Refused { code });
            }
            _ => {}
        }
        None
    }
}
