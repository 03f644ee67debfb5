//! Routing: local recipients directly, others through their node's delivery
//! topic, offline ones into their buffer; the node's own topic consumer; and
//! the load figures the relay measures as it goes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rskafka::client::partition::PartitionClient;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

use crate::bus::{self, Bus};
use crate::offsets::OffsetClient;
use crate::protocol::Status;
use crate::stats::{LatencyWindow, RateWindow};
use crate::store::{RelayStore, Route, StoreError};

/// Wall-clock ms since the Unix epoch: message send times are compared
/// across nodes, so they cannot be monotonic.
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A frame on its way to a local connection.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// The message frame.
    pub frame: Arc<str>,
    /// Its send time, for the latency figure.
    pub sent_ms: u64,
}

/// A connection's mailbox, as the relay sees it.
#[derive(Debug)]
struct Local {
    conn: u64,
    tx: mpsc::Sender<Outbound>,
    /// Told when the connection cannot keep up or is replaced.
    kick: Arc<Kick>,
}

/// Why a connection is asked to close by the relay.
#[derive(Debug, Default)]
pub struct Kick {
    notify: Notify,
    reason: Mutex<Option<KickReason>>,
}

/// See [`Kick`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KickReason {
    /// Its outbound queue is full.
    Slow,
    /// A newer connection with the same client id arrived here.
    Superseded,
}

impl Kick {
    fn fire(&self, reason: KickReason) {
        *lock(&self.reason) = Some(reason);
        self.notify.notify_one();
    }

    /// Waits for a kick.
    pub async fn wait(&self) -> KickReason {
        loop {
            if let Some(reason) = *lock(&self.reason) {
                return reason;
            }
            self.notify.notified().await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Never held across an await; a poisoned lock only means a panic mid-way
    // through a plain update.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

enum Attempt {
    Sent,
    Full(Arc<Kick>),
    NotHere,
}

/// Why a message could not be routed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Redis failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The node's live figures.
#[derive(Debug)]
struct Figures {
    delivered: RateWindow,
    latency: LatencyWindow,
}

/// A snapshot of what the relay measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measured {
    /// Delivered messages per second over the window.
    pub mps: f64,
    /// p95 end-to-end latency over the window, ms (0 without samples).
    pub p95_ms: f64,
    /// Delivery-topic lag in records.
    pub lag_records: u64,
    /// Delivery-topic lag in ms behind.
    pub lag_ms: f64,
}

/// The relay shared by every connection and the consumer.
#[derive(Debug)]
pub struct Relay {
    node: String,
    boot: String,
    store: RelayStore,
    bus: Bus,
    local: Mutex<HashMap<String, Local>>,
    seq: AtomicU64,
    queue: usize,
    origin: Instant,
    figures: Mutex<Figures>,
    lag_records: AtomicU64,
    lag_ms: AtomicU64,
    handed_off: AtomicU64,
    position: AtomicU64,
}

impl Relay {
    /// A relay for `node` (boot `boot`), with `queue` frames of room per
    /// connection and figures over `window_secs` seconds.
    pub fn new(
        node: String,
        boot: String,
        store: RelayStore,
        bus: Bus,
        queue: usize,
        window_secs: usize,
    ) -> Self {
        Self {
            node,
            boot,
            store,
            bus,
            local: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(0),
            queue: queue.max(1),
            origin: Instant::now(),
            figures: Mutex::new(Figures {
                delivered: RateWindow::new(window_secs, 1000),
                latency: LatencyWindow::new(window_secs, 1000),
            }),
            lag_records: AtomicU64::new(0),
            lag_ms: AtomicU64::new(0),
            handed_off: AtomicU64::new(0),
            position: AtomicU64::new(0),
        }
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The Redis side.
    pub fn store(&self) -> &RelayStore {
        &self.store
    }

    /// The broker side.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    fn mono_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A new message id, unique across nodes and restarts.
    pub fn next_id(&self) -> String {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        format!("{}/{}/{n}", self.node, self.boot)
    }

    /// Registers a local connection for `client`; a previous connection of
    /// the same client on this node is kicked.
    pub fn attach(&self, client: &str, conn: u64) -> (mpsc::Receiver<Outbound>, Arc<Kick>) {
        let (tx, rx) = mpsc::channel(self.queue);
        let kick = Arc::new(Kick::default());
        let previous = lock(&self.local).insert(
            client.to_owned(),
            Local {
                conn,
                tx,
                kick: Arc::clone(&kick),
            },
        );
        if let Some(previous) = previous {
            previous.kick.fire(KickReason::Superseded);
        }
        (rx, kick)
    }

    /// Unregisters `client`'s connection `conn` (not a newer one) and hands
    /// on whatever is still queued for it. Call after the socket is done.
    pub async fn detach(&self, client: &str, conn: u64, mut rx: mpsc::Receiver<Outbound>) {
        let ours = {
            let mut local = lock(&self.local);
            if local.get(client).is_some_and(|l| l.conn == conn) {
                local.remove(client);
                true
            } else {
                false
            }
        };
        // Closed first, so nothing arrives after the last frame is taken:
        // senders then route through Redis instead.
        rx.close();
        while let Ok(out) = rx.try_recv() {
            self.handed_off.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = self
                .route_remote(client, &out.frame, out.sent_ms, None)
                .await
            {
                tracing::warn!(error = %e, client, "a queued frame could not be handed on");
                metrics::counter!("rtc_socket_lost_total", "reason" => "redis").increment(1);
            }
        }
        if ours && let Err(e) = self.store.leave(client).await {
            tracing::warn!(error = %e, client, "presence not released; it will expire");
        }
    }

    /// Routes a message frame for `to`.
    ///
    /// # Errors
    ///
    /// [`RelayError`] when the recipient is not local and Redis fails.
    pub async fn route(
        &self,
        to: &str,
        frame: Arc<str>,
        sent_ms: u64,
    ) -> Result<Status, RelayError> {
        let out = Outbound {
            frame: Arc::clone(&frame),
            sent_ms,
        };
        let attempt = {
            let local = lock(&self.local);
            match local.get(to) {
                None => Attempt::NotHere,
                Some(l) => match l.tx.try_send(out) {
                    Ok(()) => Attempt::Sent,
                    Err(mpsc::error::TrySendError::Full(_)) => Attempt::Full(Arc::clone(&l.kick)),
                    Err(mpsc::error::TrySendError::Closed(_)) => Attempt::NotHere,
                },
            }
        };
        match attempt {
            Attempt::Sent => return Ok(Status::Delivered),
            // A reader this slow is closed and gets the rest on reconnect.
            Attempt::Full(kick) => kick.fire(KickReason::Slow),
            Attempt::NotHere => {}
        }
        Ok(self.route_remote(to, &frame, sent_ms, None).await?)
    }

    /// Routes through Redis: the recipient's node, or its buffer.
    /// A presence naming `avoid` (a node that is gone) counts as none.
    async fn route_remote(
        &self,
        to: &str,
        frame: &str,
        sent_ms: u64,
        avoid: Option<&str>,
    ) -> Result<Status, StoreError> {
        match self.store.route(to, frame).await? {
            Route::Buffered => Ok(Status::Buffered),
            Route::Node(node) if Some(node.as_str()) == avoid => {
                self.store.buffer(to, frame).await?;
                Ok(Status::Buffered)
            }
            Route::Node(node) => match self.bus.publish(&node, to, frame, sent_ms).await {
                Ok(()) => Ok(Status::Relayed),
                Err(e) => {
                    tracing::warn!(error = %e, %node, "relay failed; buffering");
                    self.store.buffer(to, frame).await?;
                    Ok(Status::Buffered)
                }
            },
        }
    }

    /// Counts a frame written to a client's socket.
    pub fn delivered(&self, sent_ms: u64) {
        let now = self.mono_ms();
        let latency = wall_ms().saturating_sub(sent_ms);
        let mut figures = lock(&self.figures);
        figures.delivered.record(now, 1);
        figures.latency.record(now, latency);
        drop(figures);
        metrics::counter!("rtc_socket_delivered_total").increment(1);
    }

    /// The figures now.
    pub fn measured(&self) -> Measured {
        let now = self.mono_ms();
        let mut figures = lock(&self.figures);
        let mps = figures.delivered.per_second(now);
        let p95 = figures.latency.quantile(now, 0.95).unwrap_or(0);
        drop(figures);
        Measured {
            mps,
            p95_ms: p95 as f64,
            lag_records: self.lag_records.load(Ordering::Relaxed),
            lag_ms: self.lag_ms.load(Ordering::Relaxed) as f64,
        }
    }

    /// Frames handed on to other nodes or buffers because their recipient
    /// had left this node.
    pub fn handed_off(&self) -> u64 {
        self.handed_off.load(Ordering::Relaxed)
    }

    /// The next offset of the delivery topic to read.
    pub fn position(&self) -> u64 {
        self.position.load(Ordering::Relaxed)
    }

    /// Consumes this node's delivery topic from the committed offset of its
    /// consumer group (or the start) until `stop` is set and everything up to
    /// the high watermark has been handled. Commits the position to the
    /// broker at most every `commit_interval` while it moves, and at the end;
    /// a failed commit is logged, counted and tried again at the next one.
    /// Returns whether the last commit succeeded.
    pub async fn consume(
        self: Arc<Self>,
        partition: PartitionClient,
        offsets: OffsetClient,
        commit_interval: Duration,
        mut stop: watch::Receiver<bool>,
    ) -> bool {
        let topic = self.bus.topic(&self.node);
        let mut position = loop {
            match offsets.fetch(&topic, 0).await {
                Ok(p) => {
                    let p = p.unwrap_or(0).max(0);
                    tracing::info!(
                        position = p,
                        group = offsets.group(),
                        "resuming the delivery topic"
                    );
                    break p;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading the committed offset; retrying");
                    metrics::counter!("rtc_socket_offset_errors_total", "op" => "fetch", "reason" => e.label())
                        .increment(1);
                    if *stop.borrow() {
                        return false;
                    }
                    tokio::select! {
                        _ = stop.changed() => {}
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
        };
        self.position
            .store(u64::try_from(position).unwrap_or(0), Ordering::Relaxed);
        let mut committed = position;
        let mut last_commit = Instant::now();
        let mut failures: u32 = 0;
        loop {
            let stopping = *stop.borrow();
            let fetched = tokio::select! {
                biased;
                _ = stop.changed(), if !stopping => continue,
                r = bus::fetch(&partition, position, if stopping { bus::SHORT_WAIT_MS } else { 250 }) => r,
            };
            let (deliveries, next, high_watermark) = match fetched {
                Ok(r) => {
                    failures = 0;
                    r
                }
                Err(e) if e.is_out_of_range() => {
                    // The topic was recreated or trimmed: go on from what it has.
                    let earliest = bus::earliest(&partition).await.unwrap_or(0);
                    tracing::warn!(
                        position,
                        earliest,
                        "the committed offset is not in the topic; going on from its first record"
                    );
                    position = earliest;
                    continue;
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, position, "fetching the delivery topic failed");
                    if stopping && failures >= 5 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let mut oldest_unhandled: Option<u64> = None;
            for d in &deliveries {
                oldest_unhandled.get_or_insert(d.sent_ms);
                self.deliver_from_topic(d).await;
            }
            position = next;
            self.position
                .store(u64::try_from(position).unwrap_or(0), Ordering::Relaxed);
            let lag = u64::try_from(high_watermark.saturating_sub(position)).unwrap_or(0);
            self.lag_records.store(lag, Ordering::Relaxed);
            let behind = match (lag, oldest_unhandled) {
                (0, _) | (_, None) => 0,
                (_, Some(sent)) => wall_ms().saturating_sub(sent),
            };
            self.lag_ms.store(behind, Ordering::Relaxed);
            if position != committed && last_commit.elapsed() >= commit_interval {
                last_commit = Instant::now();
                if commit(&offsets, &topic, position).await {
                    committed = position;
                }
            }
            if stopping && position >= high_watermark {
                break;
            }
        }
        let committed_ok = position == committed || commit(&offsets, &topic, position).await;
        tracing::info!(position, committed_ok, "delivery-topic consumer stopped");
        committed_ok
    }

    /// Hands on a record read from `dead`'s delivery topic: to the
    /// recipient here, on its node, or into its buffer, never back into
    /// `dead`'s topic. Retries until Redis takes it.
    pub async fn forward(&self, dead: &str, d: &bus::Delivery) {
        let frame: Arc<str> = Arc::from(d.frame.as_str());
        let out = Outbound {
            frame: Arc::clone(&frame),
            sent_ms: d.sent_ms,
        };
        let sent = {
            let local = lock(&self.local);
            local.get(&d.to).is_some_and(|l| l.tx.try_send(out).is_ok())
        };
        if sent {
            return;
        }
        let mut delay = Duration::from_millis(100);
        while let Err(e) = self
            .route_remote(&d.to, &frame, d.sent_ms, Some(dead))
            .await
        {
            tracing::warn!(error = %e, dead, "forwarding a record failed; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    async fn deliver_from_topic(&self, d: &bus::Delivery) {
        let frame: Arc<str> = Arc::from(d.frame.as_str());
        let out = Outbound {
            frame: Arc::clone(&frame),
            sent_ms: d.sent_ms,
        };
        let sent = {
            let local = lock(&self.local);
            local.get(&d.to).is_some_and(|l| l.tx.try_send(out).is_ok())
        };
        if sent {
            return;
        }
        // The recipient left this node since the sender looked it up.
        self.handed_off.fetch_add(1, Ordering::Relaxed);
        let mut delay = Duration::from_millis(100);
        loop {
            match self.route_remote(&d.to, &frame, d.sent_ms, None).await {
                Ok(_) => return,
                Err(e) => {
                    // Never skip a record: the position must not pass a
                    // message that is neither delivered nor stored.
                    tracing::warn!(error = %e, "handing on a topic record failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

/// Commits `position` of `topic`; logs and counts a failure.
pub(crate) async fn commit(offsets: &OffsetClient, topic: &str, position: i64) -> bool {
    match offsets.commit(topic, 0, position).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, position, group = offsets.group(), "committing the offset failed; it is tried again at the next commit");
            metrics::counter!("rtc_socket_offset_errors_total", "op" => "commit", "reason" => e.label())
                .increment(1);
            false
        }
    }
}
