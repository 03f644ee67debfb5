//! Draining a socket node before it goes away.
//!
//! A [`Drain`] is shared by everything on the node: the upgrade handler
//! [`register`](Drain::register)s each connection and gets a [`Connection`]
//! whose [`instruction`](Connection::instruction) it races against the
//! socket; the readiness probe reads [`ready`](Drain::ready); `/drain` and
//! SIGTERM call [`start`](Drain::start) and await the [`Summary`].
//!
//! # What it promises
//!
//! - **Readiness flips at once.** [`start`](Drain::start) clears the
//!   readiness flag before it returns, and from then on
//!   [`register`](Drain::register) refuses new connections. The check and the
//!   flip happen under one lock, so no connection slips in unseen.
//! - **Connections are tracked explicitly.** A [`Connection`] is counted from
//!   `register` until it is dropped, wherever it lives; a web framework's
//!   graceful shutdown, which forgets upgraded sockets, is not relied on.
//! - **No reconnect storm.** After [`DrainConfig::endpoint_delay`] (time for
//!   load balancers to stop sending new clients), connections are asked to
//!   move in batches spread over the drain window ([`schedule::plan`]), each
//!   told a jittered `retry_after`.
//! - **A deadline.** At `started + timeout` connections still open are told
//!   [`Instruction::Close`]; after [`DrainConfig::force_grace`] the drain
//!   finishes whether or not they went.
//! - **One drain.** A second `start` returns a [`DrainWait`] on the same
//!   drain; every waiter gets the same [`Summary`], and the finishing step is
//!   run once, only after the node is empty (or the deadline passed).
//! - **Partial moves.** [`Drain::shed`] asks some of the newest connections
//!   to reconnect elsewhere, spread the same way, while the node stays ready
//!   and keeps accepting (a rebalance); a drain that starts takes over.
//!
//! Time is tokio's, so tests run with paused time.
//!
//! # Example
//!
//! ```
//! use rtc_drain::{Drain, DrainConfig, FinishReport, Instruction};
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let drain = Drain::new(DrainConfig {
//!     endpoint_delay: Duration::ZERO,
//!     timeout: Duration::from_secs(5),
//!     ..DrainConfig::default()
//! });
//! let mut conn = drain.register().expect("not draining yet");
//! tokio::spawn(async move {
//!     // A real connection races this against its socket.
//!     if let Instruction::Reconnect { retry_after } = conn.instruction().await {
//!         let _ = retry_after; // send the reconnect frame, then close 1012
//!     }
//! });
//! let summary = drain.start(async { FinishReport::default() }).wait().await;
//! assert_eq!(summary.connections_at_start, 1);
//! assert_eq!(summary.forced, 0);
//! assert!(!*drain.ready().borrow());
//! # }
//! ```

pub mod schedule;
mod shed;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tracing::Instrument;

pub use schedule::{Batch, SplitMix64, SpreadConfig};
pub use shed::{
    MAX_SHED_WINDOW, SHED_MAX_RETRY_AFTER, ShedHandle, ShedOrder, ShedRefused, ShedStarted,
    ShedSummary,
};

/// How a drain unfolds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainConfig {
    /// Wait after failing readiness before asking anyone to move, so
    /// endpoints are updated and new clients go elsewhere (default 5 s).
    pub endpoint_delay: Duration,
    /// DRAIN_TIMEOUT: from start to the forced close (default 5 min).
    pub timeout: Duration,
    /// Part of `timeout` kept free at the end for the last batch to leave
    /// (default 10 % of `timeout`, see [`DrainConfig::window`]).
    pub tail: Option<Duration>,
    /// Batches are at least this far apart (default 1 s).
    pub min_batch_interval: Duration,
    /// The largest `retry_after` a client is told (default 10 s).
    pub max_retry_after: Duration,
    /// After the deadline, how long connections told to close get before
    /// the drain finishes without them (default 2 s).
    pub force_grace: Duration,
    /// Seed of the jitter; give each node its own (the default is fixed).
    pub seed: u64,
}

impl Default for DrainConfig {
    fn default() -> Self {
        Self {
            endpoint_delay: Duration::from_secs(5),
            timeout: Duration::from_secs(300),
            tail: None,
            min_batch_interval: Duration::from_secs(1),
            max_retry_after: Duration::from_secs(10),
            force_grace: Duration::from_secs(2),
            seed: 0x5EED,
        }
    }
}

impl DrainConfig {
    /// The time batches are spread over: `timeout` minus the endpoint delay
    /// minus the tail, never negative.
    pub fn window(&self) -> Duration {
        let tail = self.tail.unwrap_or(self.timeout / 10);
        self.timeout
            .saturating_sub(self.endpoint_delay)
            .saturating_sub(tail)
    }

    /// Checks that the timings make sense.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the setting that is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.timeout.is_zero() {
            return Err(ConfigError::ZeroTimeout);
        }
        if self.endpoint_delay >= self.timeout {
            return Err(ConfigError::DelayNotBelowTimeout {
                endpoint_delay: self.endpoint_delay,
                timeout: self.timeout,
            });
        }
        if self.min_batch_interval.is_zero() {
            return Err(ConfigError::ZeroBatchInterval);
        }
        Ok(())
    }
}

/// A drain configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// DRAIN_TIMEOUT is zero.
    #[error("drain timeout must be greater than zero")]
    ZeroTimeout,
    /// The endpoint delay leaves no time to move anyone.
    #[error(
        "endpoint delay ({endpoint_delay:?}) must be less than the drain timeout ({timeout:?})"
    )]
    DelayNotBelowTimeout {
        /// The endpoint delay.
        endpoint_delay: Duration,
        /// DRAIN_TIMEOUT.
        timeout: Duration,
    },
    /// Batches must be some time apart.
    #[error("minimum batch interval must be greater than zero")]
    ZeroBatchInterval,
}

impl ConfigError {
    /// A short, fixed label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::ZeroTimeout => "zero_timeout",
            Self::DelayNotBelowTimeout { .. } => "delay_not_below_timeout",
            Self::ZeroBatchInterval => "zero_batch_interval",
        }
    }
}

/// What a connection is told to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Instruction {
    /// Tell the client to reconnect after `retry_after` (the reconnect frame),
    /// then close with 1012 (service restart).
    Reconnect {
        /// The jittered wait the client is told.
        retry_after: Duration,
    },
    /// The deadline passed: close now.
    Close,
    /// A rebalance moves this connection (see [`Drain::shed`]): like
    /// `Reconnect`, while the node keeps serving.
    Shed {
        /// The jittered wait the client is told.
        retry_after: Duration,
    },
}

/// [`register`](Drain::register) was refused because the node is draining.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the node is draining and accepts no new connections")]
pub struct Draining;

/// What the node's own finishing step (hand messages on, commit the
/// position, deregister) reports; carried in the [`Summary`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FinishReport {
    /// Messages handed on to other nodes or buffers.
    pub handed_off: u64,
    /// The consumer position was committed.
    pub committed: bool,
    /// The node was removed from the heartbeat registry.
    pub deregistered: bool,
    /// What went wrong, if anything.
    pub errors: Vec<String>,
}

/// The outcome of a drain, given to every waiter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Connections open when the batches were planned.
    pub connections_at_start: usize,
    /// Batches sent.
    pub batches: usize,
    /// Connections told to reconnect.
    pub told_to_reconnect: usize,
    /// Connections still open at the deadline and told to close.
    pub forced: usize,
    /// Connections still open when the drain finished (0 unless they ignored
    /// the forced close for longer than `force_grace`).
    pub abandoned: usize,
    /// From start to the end of the finishing step, in ms.
    pub duration_ms: u64,
    /// The finishing step's report.
    pub finish: FinishReport,
}

/// Where a drain is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Serving.
    Running,
    /// Draining since the given instant.
    Draining {
        /// When [`Drain::start`] was first called.
        since: Instant,
    },
    /// Done.
    Drained(Arc<Summary>),
}

struct Registry {
    draining: bool,
    /// The connections the shed under way moves, if one is.
    shedding: Option<usize>,
    /// Sheds started, to vary each one's jitter.
    sheds: u64,
    next_id: u64,
    connections: BTreeMap<u64, Arc<Signal>>,
}

/// One connection's instruction: set by the drain, read by the connection.
/// A value and a wake-up, no more: it is held for every open connection
/// (a watch channel would cost several times its size, in wakers it never
/// needs, since one task reads it).
#[derive(Debug, Default)]
#[expect(
    clippy::disallowed_types,
    reason = "the instruction is locked only in sync code, never across an .await"
)]
struct Signal {
    instruction: std::sync::Mutex<Option<Instruction>>,
    changed: Notify,
    /// The connection was dropped: nobody reads the instruction.
    gone: AtomicBool,
}

impl Signal {
    /// The connection was dropped.
    fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Acquire)
    }

    fn current(&self) -> Option<Instruction> {
        *self
            .instruction
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sets the instruction (a later one replaces an earlier one); whether
    /// the connection is still open to act on it.
    fn send(&self, instruction: Instruction) -> bool {
        *self
            .instruction
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(instruction);
        // One reader: a wake-up sent while it is not waiting is kept for it.
        self.changed.notify_one();
        !self.gone.load(Ordering::Acquire)
    }
}

#[expect(
    clippy::disallowed_types,
    reason = "the registry is locked only in sync code (and in `Drop`, which cannot await), never across an .await"
)]
struct Inner {
    config: DrainConfig,
    registry: std::sync::Mutex<Registry>,
    active: watch::Sender<usize>,
    ready: watch::Sender<bool>,
    phase: watch::Sender<Phase>,
}

impl Inner {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        // The lock is never held across an await or a user callback, so a
        // poisoned lock only means a panic elsewhere mid-update of plain data.
        self.registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The node's drain: connection tracking, readiness and the drain itself.
/// Cheap to clone; all clones are the same drain.
#[derive(Clone)]
pub struct Drain {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Drain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drain")
            .field("active", &*self.inner.active.borrow())
            .field("phase", &*self.inner.phase.borrow())
            .finish()
    }
}

impl Drain {
    /// A node that is ready and has no connections. The configuration is
    /// used as given; check it first with [`DrainConfig::validate`].
    #[expect(
        clippy::disallowed_types,
        reason = "makes the registry lock, taken only in sync code"
    )]
    pub fn new(config: DrainConfig) -> Self {
        let (active, _) = watch::channel(0);
        let (ready, _) = watch::channel(true);
        let (phase, _) = watch::channel(Phase::Running);
        Self {
            inner: Arc::new(Inner {
                config,
                registry: std::sync::Mutex::new(Registry {
                    draining: false,
                    shedding: None,
                    sheds: 0,
                    next_id: 0,
                    connections: BTreeMap::new(),
                }),
                active,
                ready,
                phase,
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &DrainConfig {
        &self.inner.config
    }

    /// Tracks a new connection.
    ///
    /// # Errors
    ///
    /// [`Draining`] once a drain has started: refuse the upgrade.
    pub fn register(&self) -> Result<Connection, Draining> {
        let mut registry = self.inner.registry();
        if registry.draining {
            return Err(Draining);
        }
        let id = registry.next_id;
        registry.next_id += 1;
        let signal = Arc::new(Signal::default());
        registry.connections.insert(id, Arc::clone(&signal));
        self.inner.active.send_replace(registry.connections.len());
        Ok(Connection {
            id,
            signal,
            inner: Arc::clone(&self.inner),
        })
    }

    /// Open connections.
    pub fn active(&self) -> usize {
        *self.inner.active.borrow()
    }

    /// Open connections, as a watch.
    pub fn active_watch(&self) -> watch::Receiver<usize> {
        self.inner.active.subscribe()
    }

    /// Readiness: `true` until a drain starts.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.inner.ready.subscribe()
    }

    /// Whether a drain has started (or finished).
    pub fn is_draining(&self) -> bool {
        self.inner.registry().draining
    }

    /// Where the drain is.
    pub fn phase(&self) -> watch::Receiver<Phase> {
        self.inner.phase.subscribe()
    }

    /// Starts the drain, or joins the one already under way.
    ///
    /// Readiness is cleared and new connections refused before this returns.
    /// The first call spawns the drain on the current tokio runtime; `finish`
    /// runs once every connection has gone (or the deadline passed) and
    /// before the [`Summary`] is published. Later calls drop their `finish`
    /// unpolled and wait on the first drain.
    pub fn start<F>(&self, finish: F) -> DrainWait
    where
        F: Future<Output = FinishReport> + Send + 'static,
    {
        let first = {
            let mut registry = self.inner.registry();
            let first = !registry.draining;
            registry.draining = true;
            first
        };
        let wait = DrainWait {
            phase: self.inner.phase.subscribe(),
        };
        if first {
            let since = Instant::now();
            self.inner.ready.send_replace(false);
            self.inner.phase.send_replace(Phase::Draining { since });
            tracing::info!(
                connections = self.active(),
                timeout = ?self.inner.config.timeout,
                "drain started"
            );
            tokio::spawn(
                run(Arc::clone(&self.inner), since, finish)
                    .instrument(tracing::info_span!("drain")),
            );
        }
        wait
    }
}

/// Waits for the end of a drain.
#[derive(Debug)]
pub struct DrainWait {
    phase: watch::Receiver<Phase>,
}

impl DrainWait {
    /// The summary, once the drain has finished.
    ///
    /// If the drain task was lost (its runtime shut down) this never returns;
    /// callers bound it with their own timeout.
    pub async fn wait(mut self) -> Arc<Summary> {
        loop {
            if let Phase::Drained(summary) = &*self.phase.borrow_and_update() {
                return Arc::clone(summary);
            }
            if self.phase.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// A tracked connection. Counted until dropped.
pub struct Connection {
    id: u64,
    signal: Arc<Signal>,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("id", &self.id).finish()
    }
}

impl Connection {
    /// Its number, unique within the node's lifetime.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Resolves when the drain tells this connection to move or to close.
    /// Cancel-safe: race it against the socket in a `select!`; an instruction
    /// not yet acted on is returned again by the next call, and a later,
    /// stronger one ([`Instruction::Close`]) replaces it.
    pub async fn instruction(&mut self) -> Instruction {
        loop {
            if let Some(instruction) = self.signal.current() {
                return instruction;
            }
            self.signal.changed.notified().await;
        }
    }

    /// The instruction received so far, if any, without waiting.
    pub fn current(&self) -> Option<Instruction> {
        self.signal.current()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.signal.gone.store(true, Ordering::Release);
        let mut registry = self.inner.registry();
        registry.connections.remove(&self.id);
        self.inner.active.send_replace(registry.connections.len());
    }
}

async fn wait_empty(active: &mut watch::Receiver<usize>, until: Instant) -> bool {
    tokio::time::timeout_at(until, active.wait_for(|n| *n == 0))
        .await
        .is_ok_and(|r| r.is_ok())
}

async fn run<F>(inner: Arc<Inner>, since: Instant, finish: F)
where
    F: Future<Output = FinishReport> + Send + 'static,
{
    let config = inner.config;
    let deadline = since + config.timeout;
    let mut active = inner.active.subscribe();

    // Endpoints first: clients leaving now would be sent straight back.
    let emptied_early = wait_empty(&mut active, since + config.endpoint_delay).await;
    let start_batches = Instant::now().max(since + config.endpoint_delay);

    let targets: Vec<(u64, Arc<Signal>)> = inner
        .registry()
        .connections
        .iter()
        .map(|(id, signal)| (*id, Arc::clone(signal)))
        .collect();
    let connections_at_start = targets.len();
    let spread = SpreadConfig {
        window: config.window(),
        min_batch_interval: config.min_batch_interval,
        max_retry_after: config.max_retry_after,
    };
    let batches = if emptied_early {
        Vec::new()
    } else {
        schedule::plan(targets.len(), &spread, &mut SplitMix64::new(config.seed))
    };
    let batch_count = batches.len();
    let mut told = 0;
    for batch in batches {
        let at = (start_batches + batch.at).min(deadline);
        // Stop early if everyone has already left on their own.
        if tokio::time::timeout_at(at, active.wait_for(|n| *n == 0))
            .await
            .is_ok()
        {
            break;
        }
        for (index, retry_after) in batch.members {
            if let Some((_, signal)) = targets.get(index) {
                // A connection that has gone is not told; that is fine.
                if signal.send(Instruction::Reconnect { retry_after }) {
                    told += 1;
                }
            }
        }
        tracing::debug!(at = ?batch.at, told, "reconnect batch sent");
    }

    let mut forced = 0;
    if !wait_empty(&mut active, deadline).await {
        let remaining: Vec<Arc<Signal>> = inner.registry().connections.values().cloned().collect();
        forced = remaining.len();
        tracing::warn!(forced, "drain deadline passed: closing what is left");
        for signal in remaining {
            signal.send(Instruction::Close);
        }
        wait_empty(&mut active, deadline + config.force_grace).await;
    }
    let abandoned = *active.borrow();

    let finish = finish.await;
    let elapsed = Instant::now().saturating_duration_since(since);
    let summary = Summary {
        connections_at_start,
        batches: batch_count,
        told_to_reconnect: told,
        forced,
        abandoned,
        duration_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        finish,
    };
    tracing::info!(?summary, "drain finished");
    inner.phase.send_replace(Phase::Drained(Arc::new(summary)));
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod shed_tests;
