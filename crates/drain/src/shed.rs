//! Moving part of a node's connections elsewhere while it keeps serving: a
//! rebalance after a scale-out, when the new pods have few clients and the
//! old ones many.
//!
//! A shed is a partial drain without the drain's other half: readiness
//! stays up and new connections are still registered. The connections
//! chosen are the newest ones (highest [`Connection::id`](crate::Connection::id)):
//! a client that connected last has the least session to lose, and the
//! longest-lived clients, which a rebalance would otherwise move again and
//! again as the fleet changes, stay put. They are told
//! [`Instruction::Shed`] in batches spread over the shed's window, with a
//! jittered `retry_after` as a drain's reconnects
//! ([`schedule::plan`](crate::schedule::plan)) but of at most
//! [`SHED_MAX_RETRY_AFTER`], so the moved clients do not arrive at the other
//! nodes at once and their messages do not wait long for them.
//!
//! One shed runs at a time; a drain that starts during a shed takes over
//! and the shed sends no further batch.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::schedule::{self, SplitMix64, SpreadConfig};
use crate::{Drain, Inner, Instruction, Signal};

/// How often the end of a shed looks whether the connections told have
/// closed.
const GONE_POLL: Duration = Duration::from_millis(20);

/// The longest `retry_after` a shed tells a client. A drain's clients
/// all leave and are told to wait up to `max_retry_after`; a shed moves a
/// few, already spread over its window in batches, and every moment a moved
/// client waits, the messages sent to it wait in its buffer.
pub const SHED_MAX_RETRY_AFTER: Duration = Duration::from_millis(200);

/// The longest window a shed may be spread over.
pub const MAX_SHED_WINDOW: Duration = Duration::from_secs(600);

/// What a shed is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShedOrder {
    /// How many connections should leave.
    pub connections: usize,
    /// The time their reconnects are spread over.
    pub window: Duration,
}

/// A shed that was not started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ShedRefused {
    /// Nothing to move.
    #[error("connections must be at least 1")]
    Nothing,
    /// The window is longer than [`MAX_SHED_WINDOW`].
    #[error("window {window:?} is too long: at most {MAX_SHED_WINDOW:?} is allowed")]
    WindowTooLong {
        /// The window asked for.
        window: Duration,
    },
    /// The node is draining: every connection is leaving already.
    #[error("the node is draining: every connection is leaving already")]
    Draining,
    /// Another shed is under way.
    #[error("a shed of {selected} connections is under way; ask again when it has finished")]
    Busy {
        /// The connections the running shed moves.
        selected: usize,
    },
}

impl ShedRefused {
    /// A short, fixed label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Nothing => "nothing",
            Self::WindowTooLong { .. } => "window_too_long",
            Self::Draining => "draining",
            Self::Busy { .. } => "busy",
        }
    }
}

/// What a shed set out to do, known when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ShedStarted {
    /// Connections asked for.
    pub asked: usize,
    /// Connections chosen: `asked`, or fewer when fewer are open.
    pub selected: usize,
    /// Connections open when they were chosen.
    pub open: usize,
    /// Batches planned.
    pub batches: usize,
    /// The window, in ms.
    pub window_ms: u64,
}

/// How a shed ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ShedSummary {
    /// What it set out to do.
    pub started: ShedStarted,
    /// Connections told to move (the chosen ones still open at their batch).
    pub told: usize,
    /// Of those, the ones that had closed by the end.
    pub moved: usize,
    /// A drain started before the last batch, which then was not sent.
    pub stopped_by_drain: bool,
    /// Connections open at the end.
    pub open_after: usize,
    /// From the first batch to the end, in ms.
    pub duration_ms: u64,
}

/// A running shed.
#[derive(Debug)]
pub struct ShedHandle {
    started: ShedStarted,
    done: watch::Receiver<Option<ShedSummary>>,
}

impl ShedHandle {
    /// What the shed set out to do.
    pub fn started(&self) -> ShedStarted {
        self.started
    }

    /// The summary, once the shed has ended. Never returns if the shed's
    /// runtime shut down first.
    pub async fn wait(mut self) -> ShedSummary {
        loop {
            if let Some(summary) = *self.done.borrow_and_update() {
                return summary;
            }
            if self.done.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

impl Drain {
    /// Asks `order.connections` of the newest connections to reconnect
    /// elsewhere over `order.window`, without failing readiness or refusing
    /// new connections. Spawns the shed on the current tokio runtime.
    ///
    /// # Errors
    ///
    /// [`ShedRefused`] when the order is empty or its window too long, the
    /// node is draining, or another shed is under way.
    pub fn shed(&self, order: ShedOrder) -> Result<ShedHandle, ShedRefused> {
        if order.connections == 0 {
            return Err(ShedRefused::Nothing);
        }
        if order.window > MAX_SHED_WINDOW {
            return Err(ShedRefused::WindowTooLong {
                window: order.window,
            });
        }
        let (targets, open, seed) = {
            let mut registry = self.inner.registry();
            if registry.draining {
                return Err(ShedRefused::Draining);
            }
            if let Some(selected) = registry.shedding {
                return Err(ShedRefused::Busy { selected });
            }
            let targets: Vec<Arc<Signal>> = registry
                .connections
                .values()
                .rev()
                .filter(|signal| signal.current().is_none())
                .take(order.connections)
                .cloned()
                .collect();
            registry.shedding = Some(targets.len());
            registry.sheds += 1;
            (
                targets,
                registry.connections.len(),
                self.inner.config.seed ^ registry.sheds,
            )
        };
        let config = &self.inner.config;
        let spread = SpreadConfig {
            window: order.window,
            min_batch_interval: config.min_batch_interval,
            max_retry_after: config.max_retry_after.min(SHED_MAX_RETRY_AFTER),
        };
        let batches = schedule::plan(targets.len(), &spread, &mut SplitMix64::new(seed));
        let started = ShedStarted {
            asked: order.connections,
            selected: targets.len(),
            open,
            batches: batches.len(),
            window_ms: millis(order.window),
        };
        tracing::info!(
            asked = started.asked,
            selected = started.selected,
            open,
            window = ?order.window,
            "shed started"
        );
        let (done_tx, done) = watch::channel(None);
        tokio::spawn(run(
            Arc::clone(&self.inner),
            started,
            targets,
            batches,
            done_tx,
        ));
        Ok(ShedHandle { started, done })
    }
}

async fn run(
    inner: Arc<Inner>,
    started: ShedStarted,
    targets: Vec<Arc<Signal>>,
    batches: Vec<schedule::Batch>,
    done: watch::Sender<Option<ShedSummary>>,
) {
    let since = Instant::now();
    let mut told = Vec::with_capacity(targets.len());
    let mut stopped_by_drain = false;
    for batch in batches {
        tokio::time::sleep_until(since + batch.at).await;
        if inner.registry().draining {
            stopped_by_drain = true;
            break;
        }
        for (index, retry_after) in batch.members {
            let Some(signal) = targets.get(index) else {
                continue;
            };
            // Gone already, or told something by the drain: leave it be.
            if signal.is_gone() || signal.current().is_some() {
                continue;
            }
            if signal.send(Instruction::Shed { retry_after }) {
                told.push(signal);
            }
        }
    }
    // The connections close right after their reconnect frame; give the
    // last batch the drain's grace to do so.
    let until = Instant::now() + inner.config.force_grace;
    while told.iter().any(|signal| !signal.is_gone()) && Instant::now() < until {
        tokio::time::sleep(GONE_POLL).await;
    }
    let moved = told.iter().filter(|signal| signal.is_gone()).count();
    let open_after = {
        let mut registry = inner.registry();
        registry.shedding = None;
        registry.connections.len()
    };
    let summary = ShedSummary {
        started,
        told: told.len(),
        moved,
        stopped_by_drain,
        open_after,
        duration_ms: millis(Instant::now().saturating_duration_since(since)),
    };
    tracing::info!(?summary, "shed finished");
    done.send_replace(Some(summary));
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
