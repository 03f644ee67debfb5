//! The relay shared by every connection and the consumer: the local
//! connection table, the driver of [`crate::core::routing`] over the store
//! and the bus, the node's own topic consumer, and the load figures it
//! measures as it goes.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use rtc_node_load::{Lag, Measured, Meter};
use rtc_time::{SystemClock, WallClock};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::batch::Receipt;
use crate::bus::{Bus, Delivery, SHORT_WAIT_MS, Topic};
use crate::core::cursor::{Cursor, Held, commit_point, resume_at};
use crate::core::message_id;
use crate::core::protocol::Status;
use crate::core::routes::{self, RouteCache};
use crate::core::routing::{Event, Lookup, Offer, Origin, Routing, Step};
use crate::store::{PresenceStore, StoreError};

/// A frame on its way to a local connection.
///
/// A frame read from a delivery topic holds its record's offset until the
/// frame is written ([`Relay::written`]), handed on ([`Relay::hand_back`])
/// or dropped, so the topic's committed position never passes a frame that
/// is only in memory.
#[derive(Debug)]
pub struct Outbound {
    /// The message frame.
    pub frame: Arc<str>,
    /// Its send time, for the latency figure.
    pub sent_ms: u64,
    hold: Option<Hold>,
}

impl Outbound {
    /// A frame that holds no topic record (taken from the offline buffer).
    pub fn new(frame: Arc<str>, sent_ms: u64) -> Self {
        Self {
            frame,
            sent_ms,
            hold: None,
        }
    }
}

/// The records of each delivery topic held in memory.
#[derive(Debug, Default)]
#[expect(
    clippy::disallowed_types,
    reason = "taken only in sync code, never across an .await"
)]
struct Holds(std::sync::Mutex<HashMap<Arc<str>, Held>>);

impl Holds {
    fn first(&self, topic: &str) -> Option<i64> {
        lock(&self.0).get(topic).and_then(Held::first)
    }
}

/// One topic record held in memory; released when dropped.
#[derive(Debug)]
struct Hold {
    holds: Arc<Holds>,
    topic: Arc<str>,
    offset: i64,
}

impl Hold {
    fn new(holds: &Arc<Holds>, topic: &str, offset: i64) -> Self {
        let topic: Arc<str> = Arc::from(topic);
        lock(&holds.0)
            .entry(Arc::clone(&topic))
            .or_default()
            .hold(offset);
        Self {
            holds: Arc::clone(holds),
            topic,
            offset,
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut holds = lock(&self.holds.0);
        if let Some(held) = holds.get_mut(&self.topic) {
            held.release(self.offset);
            if held.is_empty() {
                holds.remove(&self.topic);
            }
        }
    }
}

/// A connection's mailbox, as the relay sees it.
#[derive(Debug)]
struct Local {
    conn: u64,
    /// Its queue; the connection's [`Inbox`] ends when this is dropped.
    tx: Outlet,
}

/// The relay's end of a connection's queue, beside the connection's kick.
#[derive(Debug)]
struct Outlet {
    /// Told when the connection cannot keep up or is replaced; holds the
    /// queue too.
    kick: Arc<Kick>,
    /// Frames the queue holds at most.
    room: usize,
}

/// Why a frame was not queued.
enum Refused {
    /// The queue holds `room` frames.
    Full(Outbound),
    /// The connection closed its inbox.
    Closed(Outbound),
}

impl Outlet {
    fn try_send(&self, out: Outbound) -> Result<(), Refused> {
        {
            let mut queue = lock(&self.kick.queue);
            if queue.closed {
                return Err(Refused::Closed(out));
            }
            if queue.frames.len() >= self.room {
                return Err(Refused::Full(out));
            }
            queue.frames.push_back(out);
        }
        self.kick.ready.notify_one();
        Ok(())
    }
}

impl Drop for Outlet {
    fn drop(&mut self) {
        lock(&self.kick.queue).ended = true;
        self.kick.ready.notify_one();
    }
}

/// The frames queued for a connection: a plain deque that holds no memory
/// while it is empty, as most connections' are most of the time (a bounded
/// channel would keep a block of slots and cache-padded counters for each).
#[derive(Debug, Default)]
struct Queue {
    frames: VecDeque<Outbound>,
    /// The inbox is closed: nothing more is queued.
    closed: bool,
    /// The relay forgot the connection: nothing more will come.
    ended: bool,
}

impl Queue {
    fn pop(&mut self) -> Option<Outbound> {
        let out = self.frames.pop_front();
        // The room a burst grew is given back once it has been written.
        if self.frames.is_empty() && self.frames.capacity() > 16 {
            self.frames = VecDeque::new();
        }
        out
    }
}

/// A connection's end of its queue: frames for its client, in order.
#[derive(Debug)]
pub struct Inbox {
    kick: Arc<Kick>,
}

/// [`Inbox::try_recv`] found no frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TryRecvError {
    /// None is queued now.
    #[error("no frame queued")]
    Empty,
    /// None is queued and none will come: the relay forgot the connection.
    #[error("no frame queued, and the connection is detached")]
    Disconnected,
}

impl Inbox {
    /// The next frame; `None` once the relay has forgotten the connection
    /// (a newer one of its client replaced it) and the queue is empty.
    /// Cancel-safe: a frame is taken only when it is returned.
    pub async fn recv(&mut self) -> Option<Outbound> {
        loop {
            {
                let mut queue = lock(&self.kick.queue);
                if let Some(out) = queue.pop() {
                    return Some(out);
                }
                if queue.ended {
                    return None;
                }
            }
            // A frame queued since the lock was released left a permit.
            self.kick.ready.notified().await;
        }
    }

    /// The next frame if one is queued.
    ///
    /// # Errors
    ///
    /// [`TryRecvError`] when none is.
    pub fn try_recv(&mut self) -> Result<Outbound, TryRecvError> {
        let mut queue = lock(&self.kick.queue);
        match queue.pop() {
            Some(out) => Ok(out),
            None if queue.ended => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    /// Stops further frames from being queued; those queued stay readable.
    pub fn close(&mut self) {
        lock(&self.kick.queue).closed = true;
    }
}

/// What the relay tells a connection: to close, and why; or to take its
/// offline buffer now, because a frame for it was buffered while it is
/// connected here. It also holds the connection's queue, so that a
/// connection costs the relay one allocation.
#[derive(Debug, Default)]
#[expect(
    clippy::disallowed_types,
    reason = "the reason and the queue are locked only in sync code, never across an .await"
)]
pub struct Kick {
    notify: Notify,
    reason: std::sync::Mutex<Option<KickReason>>,
    buffered: Notify,
    buffered_pending: AtomicBool,
    /// The connection's queue, read through its [`Inbox`].
    queue: std::sync::Mutex<Queue>,
    /// Told when a frame is queued or the queue ends.
    ready: Notify,
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

    /// Why the connection was kicked, if it was.
    pub fn reason(&self) -> Option<KickReason> {
        *lock(&self.reason)
    }

    fn buffered(&self) {
        self.buffered_pending.store(true, Ordering::Release);
        self.buffered.notify_one();
    }

    /// Waits until a frame was buffered for the connection's client while
    /// it is connected here; the connection then takes its buffer
    /// ([`Relay::refresh`]). Returns at once when that happened since the
    /// last call.
    pub async fn buffered_for_me(&self) {
        loop {
            if self.buffered_pending.swap(false, Ordering::AcqRel) {
                return;
            }
            self.buffered.notified().await;
        }
    }

    /// Whether a frame was buffered for the connection's client since the
    /// last [`Kick::buffered_for_me`].
    pub fn is_buffered_pending(&self) -> bool {
        self.buffered_pending.load(Ordering::Acquire)
    }
}

#[expect(
    clippy::disallowed_types,
    reason = "the relay's locks are taken only through here, in sync code, and the guard is never held across an .await"
)]
fn lock<T>(m: &std::sync::Mutex<T>) -> MutexGuard<'_, T> {
    // Never held across an await; a poisoned lock only means a panic mid-way
    // through a plain update.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Where [`Relay::submit`] left a frame.
#[derive(Debug)]
pub enum Routed {
    /// Finished: the ack status.
    Done(Status),
    /// Queued for another node's delivery topic; [`Relay::settle`] waits
    /// for its produce.
    Publishing(Publishing),
}

/// A frame queued for another node's delivery topic, its produce under
/// way. See [`Relay::settle`].
#[derive(Debug)]
pub struct Publishing(Box<Pending>);

#[derive(Debug)]
struct Pending {
    routing: Routing,
    node: String,
    to: String,
    frame: Arc<str>,
    sent_ms: u64,
    hold: Option<Hold>,
    receipt: Receipt,
}

enum Driven {
    Done(Result<Status, StoreError>),
    Publishing(Publishing),
}

/// Why a message could not be routed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The presence store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RelayError {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Store(e) => e.label(),
        }
    }
}

/// The relay shared by every connection and the consumer.
#[derive(Debug)]
#[expect(
    clippy::disallowed_types,
    reason = "the connection table and the meter are locked only in sync code, never across an .await"
)]
pub struct Relay<S, B> {
    node: String,
    boot: String,
    store: S,
    bus: B,
    local: std::sync::Mutex<HashMap<String, Local>>,
    seq: AtomicU64,
    queue: usize,
    origin: Instant,
    wall: Arc<dyn WallClock>,
    meter: std::sync::Mutex<Meter>,
    handed_off: AtomicU64,
    position: AtomicU64,
    holds: Arc<Holds>,
    fetch_wait: Duration,
    routes: std::sync::Mutex<RouteCache>,
}

/// The default of [`Relay::with_route_cache`].
pub const DEFAULT_ROUTE_CACHE: Duration = Duration::from_millis(routes::DEFAULT_TTL_MS);

/// The default of [`Relay::with_fetch_wait`]: short, because some brokers
/// hold a fetch for most of its wait even when records are there.
pub const DEFAULT_FETCH_WAIT: Duration = Duration::from_millis(20);

impl<S: PresenceStore, B: Bus> Relay<S, B> {
    /// A relay for `node` (boot `boot`), with `queue` frames of room per
    /// connection and its figures in `meter`.
    #[expect(
        clippy::disallowed_types,
        reason = "makes the connection table and meter locks, taken only in sync code"
    )]
    pub fn new(node: String, boot: String, store: S, bus: B, queue: usize, meter: Meter) -> Self {
        Self {
            node,
            boot,
            store,
            bus,
            local: std::sync::Mutex::new(HashMap::new()),
            seq: AtomicU64::new(0),
            queue: queue.max(1),
            origin: Instant::now(),
            wall: Arc::new(SystemClock),
            meter: std::sync::Mutex::new(meter),
            handed_off: AtomicU64::new(0),
            position: AtomicU64::new(0),
            holds: Arc::default(),
            fetch_wait: DEFAULT_FETCH_WAIT,
            routes: std::sync::Mutex::new(RouteCache::default()),
        }
    }

    /// The same relay remembering the node the store names for a recipient
    /// for `ttl` ([`DEFAULT_ROUTE_CACHE`] unless set; zero: every
    /// message asks the store). See [`routes`] for why a stale entry costs
    /// a hop and never a message, and the bound `ttl` must keep.
    #[must_use]
    pub fn with_route_cache(self, ttl: Duration) -> Self {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        *lock(&self.routes) = RouteCache::new(ttl_ms, routes::DEFAULT_MAX_ENTRIES);
        self
    }

    /// The same relay whose consumer waits up to `wait` for records when
    /// its topic has none ([`DEFAULT_FETCH_WAIT`] unless set; at least
    /// 1 ms). A Kafka broker answers as soon as records are there; some
    /// Kafka-protocol brokers (tansu 0.6.0) answer only near the end of
    /// the wait, so it bounds the cross-node latency too.
    #[must_use]
    pub fn with_fetch_wait(mut self, wait: Duration) -> Self {
        self.fetch_wait = wait.max(Duration::from_millis(1));
        self
    }

    /// The same relay with `clock` as its wall clock (the system clock by
    /// default).
    #[must_use]
    pub fn with_wall_clock(mut self, clock: impl WallClock) -> Self {
        self.wall = Arc::new(clock);
        self
    }

    /// Wall-clock ms since the Unix epoch, from the relay's clock: message
    /// send times are compared across nodes, so they cannot be monotonic.
    pub fn wall_ms(&self) -> u64 {
        self.wall.now_ms()
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The presence store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The bus.
    pub fn bus(&self) -> &B {
        &self.bus
    }

    fn mono_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A new message id, unique across nodes and restarts.
    pub fn next_id(&self) -> String {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        message_id(&self.node, &self.boot, n)
    }

    /// Registers a local connection for `client`; a previous connection of
    /// the same client on this node is kicked.
    pub fn attach(&self, client: &str, conn: u64) -> (Inbox, Arc<Kick>) {
        let kick = Arc::new(Kick::default());
        let tx = Outlet {
            kick: Arc::clone(&kick),
            room: self.queue,
        };
        // Served here now: whatever this node remembered of its node is stale.
        lock(&self.routes).forget(client);
        let previous = lock(&self.local).insert(client.to_owned(), Local { conn, tx });
        if let Some(previous) = previous {
            previous.tx.kick.fire(KickReason::Superseded);
        }
        let inbox = Inbox {
            kick: Arc::clone(&kick),
        };
        (inbox, kick)
    }

    /// Claims `client` for this node in the presence store and takes the
    /// frames buffered for it.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store fails.
    pub async fn claim(&self, client: &str) -> Result<Vec<String>, StoreError> {
        self.store.connect(client).await
    }

    /// Renews this node's claim on `client` and takes the frames buffered
    /// for it meanwhile, for the caller to write to the connection; `None`
    /// when another node has taken the client over.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store fails.
    pub async fn refresh(&self, client: &str) -> Result<Option<Vec<String>>, StoreError> {
        self.store.refresh(client).await
    }

    /// Unregisters `client`'s connection `conn` (not a newer one) and hands
    /// on whatever is still queued for it. Call after the socket is done.
    pub async fn detach(&self, client: &str, conn: u64, mut rx: Inbox) {
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
        // senders then route through the store instead.
        rx.close();
        while let Ok(out) = rx.try_recv() {
            self.hand_back(client, out).await;
        }
        if ours && let Err(e) = self.store.leave(client).await {
            tracing::warn!(error = %e, client, "presence not released; it will expire");
        }
    }

    /// Hands on a frame a connection of `client` did not write (its socket
    /// failed, or it is closing): to a newer connection of the client here,
    /// its node, or its buffer. A topic record stays held until then.
    pub async fn hand_back(&self, client: &str, out: Outbound) {
        let Outbound {
            frame,
            sent_ms,
            hold,
        } = out;
        if let Err(e) = self
            .drive(client, &frame, sent_ms, Origin::HandOff, hold)
            .await
        {
            tracing::warn!(error = %e, client, "a queued frame could not be handed on");
            metrics::counter!("rtc_socket_lost_total", "reason" => e.label()).increment(1);
        }
    }

    /// Counts a frame a connection wrote to its socket, and releases the
    /// topic record it held.
    pub fn written(&self, out: Outbound) {
        self.delivered(out.sent_ms);
    }

    /// Routes a message frame from a client here for `to`, and waits until
    /// it is done: [`Relay::submit`], then [`Relay::settle`].
    ///
    /// # Errors
    ///
    /// [`RelayError`] when the recipient is not local and the store fails.
    pub async fn route(
        &self,
        to: &str,
        frame: Arc<str>,
        sent_ms: u64,
    ) -> Result<Status, RelayError> {
        match self.submit(to, frame, sent_ms).await? {
            Routed::Done(status) => Ok(status),
            Routed::Publishing(p) => self.settle(p).await,
        }
    }

    /// Routes a message frame from a client here for `to` until it is
    /// delivered or buffered, or queued for the delivery topic of the
    /// recipient's node ([`Routed::Publishing`]). Frames a connection
    /// submits one after the other keep their order on the topic, so a
    /// connection may submit its next frame before the last one settled.
    ///
    /// # Errors
    ///
    /// [`RelayError`] when the recipient is not local and the store fails.
    pub async fn submit(
        &self,
        to: &str,
        frame: Arc<str>,
        sent_ms: u64,
    ) -> Result<Routed, RelayError> {
        match self
            .run(Routing::new(Origin::Client), to, &frame, sent_ms, None)
            .await
        {
            Driven::Done(result) => Ok(Routed::Done(result?)),
            Driven::Publishing(p) => Ok(Routed::Publishing(p)),
        }
    }

    /// Waits for the produce of a frame [`Relay::submit`] queued: `relayed`
    /// once the broker took its batch; when the produce failed, the frame
    /// is buffered instead (`buffered`).
    ///
    /// # Errors
    ///
    /// [`RelayError`] when the produce failed and the store could not
    /// buffer the frame either.
    pub async fn settle(&self, publishing: Publishing) -> Result<Status, RelayError> {
        Ok(self.finish(publishing).await?)
    }

    /// Offers a frame to `to`'s local connection; the hold goes with it
    /// when it is queued, else it is given back.
    fn offer(
        &self,
        to: &str,
        frame: &Arc<str>,
        sent_ms: u64,
        hold: &mut Option<Hold>,
    ) -> (Offer, Option<Arc<Kick>>) {
        let out = Outbound {
            frame: Arc::clone(frame),
            sent_ms,
            hold: hold.take(),
        };
        let local = lock(&self.local);
        match local.get(to) {
            None => {
                *hold = out.hold;
                (Offer::Absent, None)
            }
            Some(l) => match l.tx.try_send(out) {
                Ok(()) => (Offer::Accepted, None),
                Err(Refused::Full(out)) => {
                    *hold = out.hold;
                    (Offer::Full, Some(Arc::clone(&l.tx.kick)))
                }
                Err(Refused::Closed(out)) => {
                    *hold = out.hold;
                    (Offer::Absent, None)
                }
            },
        }
    }

    /// A frame for `to` was buffered: a connection of `to` here takes its
    /// buffer now instead of at its next presence renewal. (The presence
    /// names this node while the client is connected here, so the store
    /// buffers instead of relaying.)
    fn buffered(&self, to: &str) {
        if let Some(l) = lock(&self.local).get(to) {
            l.tx.kick.buffered();
        }
    }

    /// Runs [`Routing`] for one frame against the local table, the store
    /// and the bus. `hold` (a topic record) goes with the frame into a
    /// local queue, or is released when the frame is relayed (its produce
    /// succeeded), buffered or lost.
    async fn drive(
        &self,
        to: &str,
        frame: &Arc<str>,
        sent_ms: u64,
        origin: Origin,
        hold: Option<Hold>,
    ) -> Result<Status, StoreError> {
        let routing = Routing::new(origin);
        match self.run(routing, to, frame, sent_ms, hold).await {
            Driven::Done(result) => result,
            Driven::Publishing(p) => self.finish(p).await,
        }
    }

    /// Waits for a frame's produce, then routes it on: done when the broker
    /// took it, else buffered.
    async fn finish(&self, publishing: Publishing) -> Result<Status, StoreError> {
        let mut p = publishing.0;
        loop {
            let event = match p.receipt.wait().await {
                Ok(()) => Event::Published,
                Err(e) => {
                    tracing::warn!(error = %e, node = %p.node, "relay failed; buffering");
                    lock(&self.routes).forget(&p.to);
                    Event::PublishFailed
                }
            };
            p.routing.on(event);
            match self
                .run(p.routing, &p.to, &p.frame, p.sent_ms, p.hold)
                .await
            {
                Driven::Done(result) => return result,
                Driven::Publishing(next) => p = next.0,
            }
        }
    }

    /// Steps `routing` until it is done, or until its frame is queued for
    /// another node's topic (the produce is then still under way).
    async fn run(
        &self,
        mut routing: Routing,
        to: &str,
        frame: &Arc<str>,
        sent_ms: u64,
        mut hold: Option<Hold>,
    ) -> Driven {
        let mut kick = None;
        let mut failure = None;
        loop {
            let event = match routing.step().clone() {
                Step::Offer => {
                    let (offer, k) = self.offer(to, frame, sent_ms, &mut hold);
                    kick = k;
                    Event::Offered(offer)
                }
                Step::KickSlow => {
                    // A reader this slow is closed and gets the rest on
                    // reconnect.
                    if let Some(k) = kick.take() {
                        k.fire(KickReason::Slow);
                    }
                    Event::Kicked
                }
                Step::CountHandOff => {
                    self.handed_off.fetch_add(1, Ordering::Relaxed);
                    Event::Counted
                }
                Step::Lookup => {
                    // Only a client's own frames take the remembered node: a
                    // record reached this node's topic or a closing connection
                    // because its recipient moved, so it asks the store.
                    let cached = (*routing.origin() == Origin::Client)
                        .then(|| lock(&self.routes).get(self.mono_ms(), to))
                        .flatten();
                    if let Some(node) = cached {
                        metrics::counter!("rtc_socket_route_lookups_total", "source" => "cache")
                            .increment(1);
                        Event::Looked(Lookup::Node(node.to_string()))
                    } else {
                        metrics::counter!("rtc_socket_route_lookups_total", "source" => "store")
                            .increment(1);
                        match self.store.route(to, frame).await {
                            Ok(lookup) => {
                                self.remember(to, &lookup);
                                Event::Looked(lookup)
                            }
                            Err(e) => {
                                failure = Some(e);
                                Event::StoreFailed
                            }
                        }
                    }
                }
                Step::Publish(node) => {
                    let receipt = self.bus.send(&node, to, Arc::clone(frame), sent_ms).await;
                    return Driven::Publishing(Publishing(Box::new(Pending {
                        routing,
                        node,
                        to: to.to_owned(),
                        frame: Arc::clone(frame),
                        sent_ms,
                        hold,
                        receipt,
                    })));
                }
                Step::Buffer => match self.store.buffer(to, frame).await {
                    Ok(()) => Event::Buffered,
                    Err(e) => {
                        failure = Some(e);
                        Event::StoreFailed
                    }
                },
                Step::Wait(delay) => {
                    if let Some(e) = failure.take() {
                        tracing::warn!(error = %e, "handing on a topic record failed; retrying");
                    }
                    tokio::time::sleep(delay).await;
                    Event::Waited
                }
                Step::Done(status) => {
                    if status == Status::Buffered {
                        self.buffered(to);
                    }
                    return Driven::Done(Ok(status));
                }
                Step::Failed => {
                    return Driven::Done(Err(
                        failure.unwrap_or_else(|| StoreError::Unavailable("no answer".to_owned()))
                    ));
                }
            };
            routing.on(event);
        }
    }

    /// Keeps what the store answered for `to`: the node serving it, or
    /// that none does.
    fn remember(&self, to: &str, lookup: &Lookup) {
        let mut routes = lock(&self.routes);
        match lookup {
            Lookup::Node(node) => routes.put(self.mono_ms(), to, node),
            Lookup::Buffered => routes.forget(to),
        }
    }

    /// Counts a frame written to a client's socket.
    pub fn delivered(&self, sent_ms: u64) {
        let now = self.mono_ms();
        let latency = self.wall_ms().saturating_sub(sent_ms);
        lock(&self.meter).delivered(now, latency);
        metrics::counter!("rtc_socket_delivered_total").increment(1);
    }

    /// The figures now.
    pub fn measured(&self) -> Measured {
        let now = self.mono_ms();
        lock(&self.meter).measured(now)
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

    fn set_position(&self, position: i64) {
        self.position
            .store(u64::try_from(position).unwrap_or(0), Ordering::Relaxed);
    }

    /// Consumes this node's delivery topic from the committed offset of its
    /// consumer group (or the start) until `stop` is set and everything up to
    /// the high watermark has been handled. Commits the position at most
    /// every `commit_interval` while it moves, and at the end; a failed
    /// commit is logged, counted and tried again at the next one. Returns
    /// whether the last commit succeeded.
    pub async fn consume<T: Topic>(
        self: Arc<Self>,
        topic: T,
        commit_interval: Duration,
        mut stop: watch::Receiver<bool>,
    ) -> bool {
        let position = loop {
            match topic.committed().await {
                Ok(p) => {
                    let p = resume_at(p);
                    tracing::info!(
                        position = p,
                        group = topic.group(),
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
        self.set_position(position);
        let mut cursor = Cursor::new(position, self.mono_ms());
        let wait_ms = i32::try_from(self.fetch_wait.as_millis()).unwrap_or(i32::MAX);
        loop {
            let stopping = *stop.borrow();
            let fetched = tokio::select! {
                biased;
                _ = stop.changed(), if !stopping => continue,
                r = topic.fetch(cursor.position(), if stopping { SHORT_WAIT_MS } else { wait_ms }) => r,
            };
            let batch = match fetched {
                Ok(b) => b,
                Err(e) if e.is_out_of_range() => {
                    // The topic was recreated or trimmed: go on from what it has.
                    let earliest = topic.earliest().await.unwrap_or(0);
                    tracing::warn!(
                        position = cursor.position(),
                        earliest,
                        "the committed offset is not in the topic; going on from its first record"
                    );
                    cursor.seek(earliest);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, position = cursor.position(), "fetching the delivery topic failed");
                    if cursor.fetch_failed(stopping) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let oldest_unhandled = batch.deliveries.first().map(|d| d.sent_ms);
            self.deliver_all(topic.name(), &batch.deliveries, &Origin::Topic)
                .await;
            cursor.handled(batch.next);
            self.set_position(cursor.position());
            let lag = Lag::after_batch(
                batch.high_watermark,
                cursor.position(),
                oldest_unhandled,
                self.wall_ms(),
            );
            lock(&self.meter).set_lag(lag);
            if cursor.commit_due(self.mono_ms(), commit_interval) {
                let at = self.commit_point(topic.name(), cursor.position());
                if commit(&topic, at).await {
                    cursor.committed(at);
                }
            }
            if stopping && cursor.caught_up(batch.high_watermark) {
                break;
            }
        }
        let position = cursor.position();
        let at = self.commit_point(topic.name(), position);
        let committed_ok = !cursor.uncommitted() || commit(&topic, at).await;
        tracing::info!(
            position,
            committed = at,
            committed_ok,
            "delivery-topic consumer stopped"
        );
        committed_ok
    }

    /// The position of `topic` that may be committed: `position`, or the
    /// first of its records still queued in memory.
    pub fn commit_point(&self, topic: &str, position: i64) -> i64 {
        commit_point(position, self.holds.first(topic))
    }

    /// Whether records of `topic` are queued in memory, not yet written.
    pub fn holds_records_of(&self, topic: &str) -> bool {
        self.holds.first(topic).is_some()
    }

    /// Hands on a record read from `dead`'s delivery topic: to the
    /// recipient here, on its node, or into its buffer, never back into
    /// `dead`'s topic. Retries until the store takes it.
    pub async fn forward(&self, dead: &str, d: &Delivery) {
        self.forward_all(dead, std::slice::from_ref(d)).await;
    }

    /// [`Relay::forward`] for a batch of records, in order: each is queued
    /// for its recipient's node before the next is looked at, and the call
    /// returns once every produce has settled.
    pub async fn forward_all(&self, dead: &str, deliveries: &[Delivery]) {
        let topic = self.bus.topic_name(dead);
        let origin = Origin::Forward {
            dead: dead.to_owned(),
        };
        self.deliver_all(&topic, deliveries, &origin).await;
    }

    /// Routes records of `topic` in order. Those relayed to other nodes'
    /// topics are queued one after the other and settled together, each
    /// holding its record until its produce succeeded, so the batch costs
    /// one produce per destination rather than one per record.
    async fn deliver_all(&self, topic: &str, deliveries: &[Delivery], origin: &Origin) {
        let mut publishing = Vec::new();
        for d in deliveries {
            let frame: Arc<str> = Arc::from(d.frame.as_str());
            let hold = Hold::new(&self.holds, topic, d.offset);
            let routing = Routing::new(origin.clone());
            // Topic and forward origins retry until the store takes the
            // frame, so the outcome is not needed here.
            if let Driven::Publishing(p) = self
                .run(routing, &d.to, &frame, d.sent_ms, Some(hold))
                .await
            {
                publishing.push(p);
            }
        }
        // Already queued: waiting for them one by one takes as long as the
        // slowest.
        for p in publishing {
            let _ = self.finish(p).await;
        }
    }
}

/// Commits `position` of `topic`; logs and counts a failure.
pub(crate) async fn commit<T: Topic>(topic: &T, position: i64) -> bool {
    match topic.commit(position).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, position, group = topic.group(), "committing the offset failed; it is tried again at the next commit");
            metrics::counter!("rtc_socket_offset_errors_total", "op" => "commit", "reason" => e.label())
                .increment(1);
            false
        }
    }
}
