//! The driver of a run: follows the schedule, opens and retires clients,
//! hands out messages, feeds every client event into the ledger, waits out
//! the grace period, and builds the summary. It owns all the run's state in
//! one task; clients talk to it through one channel.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};

use crate::client::{self, Command, Event, Shared};
use crate::discovery::{self, Discovered, Discovery};
use crate::frames::{Reason, valid_run_id};
use crate::ledger::{Ledger, MsgId};
use crate::profile::Profile;
use crate::progress::{Progress, Snapshot};
use crate::schedule::Schedule;
use crate::summary::{Connections, Summary};
use crate::target::{Balancer, Strategy, TargetError};
use crate::traffic::Traffic;

/// The settings of a run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Prefix of every client and message id (1 to 32 of `[A-Za-z0-9]`).
    pub run_id: String,
    /// What to do over time.
    pub profile: Profile,
    /// How long to wait after the profile for messages still on their way.
    pub grace: Duration,
    /// How new connections are spread.
    pub strategy: Strategy,
    /// Seed of the recipients' draw.
    pub seed: u64,
    /// Limit on a connect and on its welcome.
    pub connect_timeout: Duration,
    /// How long to wait for a first Ready target.
    pub wait_for_targets: Duration,
}

impl RunConfig {
    /// A configuration with the defaults: 10 s grace, least connections,
    /// 5 s connect timeout, 60 s for a first target.
    #[must_use]
    pub fn new(run_id: impl Into<String>, profile: Profile) -> Self {
        Self {
            run_id: run_id.into(),
            profile,
            grace: Duration::from_secs(10),
            strategy: Strategy::LeastConnections,
            seed: 0,
            connect_timeout: Duration::from_secs(5),
            wait_for_targets: Duration::from_secs(60),
        }
    }
}

/// A run that could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The run id cannot name clients.
    #[error("bad run id {0:?}: 1 to 32 characters from [A-Za-z0-9]")]
    RunId(String),
    /// No target became Ready in time.
    #[error("no Ready target after {0:?}")]
    NoTargets(Duration),
    /// Discovery found a target that is not allowed.
    #[error(transparent)]
    Target(#[from] TargetError),
}

impl RunError {
    /// A short, bounded label for metrics and logs.
    #[must_use]
    pub fn label(&self) -> &'static str {
        match self {
            Self::RunId(_) => "run_id",
            Self::NoTargets(_) => "no_targets",
            Self::Target(e) => e.label(),
        }
    }
}

/// Most messages handed out in one tick, so a stalled driver catches up in
/// steps rather than in one burst.
const MAX_PER_TICK: u64 = 20_000;
const TICK: Duration = Duration::from_millis(10);
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// How long closing clients get to say goodbye.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

struct Slot {
    commands: mpsc::UnboundedSender<Command>,
    next_seq: u64,
    retiring_since: Option<Duration>,
    finished: bool,
    /// Whether the client has had a welcome yet.
    welcomed: bool,
}

struct Driver {
    config: RunConfig,
    schedule: Schedule,
    shared: Arc<Shared>,
    ledger: Ledger,
    balancer: Balancer,
    traffic: Traffic,
    slots: Vec<Slot>,
    active: Vec<u32>,
    connected: HashMap<u32, SocketAddr>,
    /// The targets Ready when the run started.
    first_targets: Vec<SocketAddr>,
    connections: Connections,
    reconnects: BTreeMap<Reason, u64>,
    refusals: BTreeMap<String, u64>,
    issued: u64,
    refused: Option<TargetError>,
    /// When the run was cut short.
    stopped_at: Option<Duration>,
}

/// Runs the profile against the targets of `discovery` and returns what it
/// measured.
///
/// # Errors
///
/// [`RunError`] when the run id is bad, no target is Ready within
/// `wait_for_targets`, or discovery finds a target off this machine.
pub async fn run(
    config: RunConfig,
    discovery: Discovery,
    progress: &mut dyn Progress,
) -> Result<Summary, RunError> {
    run_until(config, discovery, progress, std::future::pending()).await
}

/// [`run`], cut short when `stop` completes: no more messages are handed
/// out, and the grace period starts then.
///
/// # Errors
///
/// As [`run`].
pub async fn run_until(
    config: RunConfig,
    discovery: Discovery,
    progress: &mut dyn Progress,
    stop: impl std::future::Future<Output = ()>,
) -> Result<Summary, RunError> {
    if !valid_run_id(&config.run_id) {
        return Err(RunError::RunId(config.run_id));
    }
    let mut targets = discovery::start(discovery);
    wait_for_targets(&mut targets, config.wait_for_targets).await?;
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        run: config.run_id.clone(),
        start: Instant::now(),
        events: events_tx,
        connect_timeout: config.connect_timeout,
    });
    let mut driver = Driver {
        schedule: Schedule::new(&config.profile),
        balancer: Balancer::new(config.strategy),
        traffic: Traffic::new(config.seed),
        config,
        shared,
        ledger: Ledger::new(),
        slots: Vec::new(),
        active: Vec::new(),
        connected: HashMap::new(),
        first_targets: Vec::new(),
        connections: Connections::default(),
        reconnects: BTreeMap::new(),
        refusals: BTreeMap::new(),
        issued: 0,
        refused: None,
        stopped_at: None,
    };
    driver.on_discovered(&targets.borrow_and_update().clone());
    driver.first_targets = driver.balancer.ready().to_vec();
    let span = tracing::info_span!("run", run = %driver.config.run_id);
    let _entered = span.enter();
    tracing::info!(targets = ?driver.balancer.ready(), "run started");

    let mut total = driver.schedule.duration();
    let mut stop = std::pin::pin!(stop);
    let mut stopped = false;
    let grace = driver.config.grace;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut next_report = Duration::ZERO;
    let mut discovery_open = true;
    let mut grace_started = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = driver.shared.start.elapsed();
                if now < total {
                    driver.step(now);
                } else {
                    let since = *grace_started.get_or_insert_with(|| {
                        // The last of the profile's messages, due at its end.
                        driver.send_due(total);
                        driver.retire_all(now);
                        now
                    });
                    driver.close_retired(now);
                    let all_written = driver.ledger.in_hand() == 0;
                    if (all_written && driver.ledger.pending() == 0) || now.saturating_sub(since) >= grace {
                        break;
                    }
                }
                if now >= next_report {
                    next_report = now + REPORT_EVERY;
                    progress.update(&driver.snapshot(now));
                }
            }
            Some(event) = events.recv() => driver.on_event(event),
            () = &mut stop, if !stopped => {
                stopped = true;
                let now = driver.shared.start.elapsed();
                if now < total {
                    tracing::info!(?now, "stopped early: waiting for messages on their way");
                    total = now;
                    driver.cut_short(now);
                }
            }
            changed = targets.changed(), if discovery_open => {
                if changed.is_ok() {
                    let view = targets.borrow_and_update().clone();
                    driver.on_discovered(&view);
                } else {
                    discovery_open = false;
                }
            }
        }
        if let Some(refused) = driver.refused.take() {
            driver.close_everything(&mut events).await;
            return Err(refused.into());
        }
    }
    let end = driver.shared.start.elapsed();
    progress.update(&driver.snapshot(end));
    progress.finish();
    driver.connections.open_at_end_by_target = by_target(driver.connected.values().copied());
    driver.close_everything(&mut events).await;
    let run_ms = u64::try_from(total.as_millis()).unwrap_or(u64::MAX);
    let grace_used = end.saturating_sub(total);
    tracing::info!(pending = driver.ledger.pending(), "run finished");
    Ok(Summary {
        run: driver.config.run_id.clone(),
        profile: driver.config.profile.clone(),
        run_ms,
        grace_used_ms: u64::try_from(grace_used.as_millis()).unwrap_or(u64::MAX),
        connections: driver.connections.clone(),
        messages: driver.ledger.counts(),
        reconnects: driver.reconnects.clone(),
        refusals: driver.refusals.clone(),
        latency: driver.ledger.latency(),
        latency_by_ack: driver.ledger.latency_by_ack(),
        latency_from_schedule: driver.ledger.latency_from_schedule(),
        first_targets: driver
            .first_targets
            .iter()
            .map(ToString::to_string)
            .collect(),
        latency_from_schedule_first_targets: driver.ledger.latency_from_schedule_first(),
        never_received: driver.ledger.missing(&driver.config.run_id),
    })
}

async fn wait_for_targets(
    targets: &mut watch::Receiver<Discovered>,
    limit: Duration,
) -> Result<(), RunError> {
    let wait = async {
        loop {
            match &*targets.borrow_and_update() {
                Discovered::Ready(ready) if !ready.is_empty() => return Ok(()),
                Discovered::Refused(refused) => return Err(RunError::from(refused.clone())),
                _ => {}
            }
            if targets.changed().await.is_err() {
                // A fixed list that is empty never fills.
                return Err(RunError::NoTargets(Duration::ZERO));
            }
        }
    };
    tokio::time::timeout(limit, wait)
        .await
        .unwrap_or(Err(RunError::NoTargets(limit)))
}

fn by_target(targets: impl Iterator<Item = SocketAddr>) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for target in targets {
        *counts.entry(target.to_string()).or_default() += 1;
    }
    counts
}

impl Driver {
    fn step(&mut self, now: Duration) {
        let wanted = self.schedule.connections_at(now) as usize;
        while self.active.len() < wanted {
            self.open_client();
        }
        while self.active.len() > wanted {
            if let Some(index) = self.active.pop()
                && let Some(slot) = self.slots.get_mut(index as usize)
            {
                slot.retiring_since = Some(now);
            }
        }
        self.close_retired(now);
        self.send_due(now);
    }

    /// Hands out the messages the schedule has due by `now`.
    fn send_due(&mut self, now: Duration) {
        let due = self.schedule.messages_due(now);
        let n = due.saturating_sub(self.issued).min(MAX_PER_TICK);
        for _ in 0..n {
            let Some((sender, to)) = self.traffic.next_pair(&self.active) else {
                break;
            };
            if let Some(slot) = self.slots.get_mut(sender as usize) {
                let id = MsgId {
                    sender,
                    seq: slot.next_seq,
                };
                slot.next_seq += 1;
                // A finished client's channel is closed: the message is never
                // written, so it holds no recipient open.
                if slot.commands.send(Command::Send { id, to }).is_ok() {
                    self.ledger.handed_out(id, to, now);
                }
            }
        }
        // Messages due while no client was active are skipped, not queued.
        self.issued += n;
    }

    /// Ends the profile at `now`: nothing more is due after it.
    fn cut_short(&mut self, now: Duration) {
        self.issued = u64::MAX;
        self.stopped_at = Some(now);
    }

    fn open_client(&mut self) {
        let index = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
        let (commands, rx) = mpsc::unbounded_channel();
        tokio::spawn(client::run(index, Arc::clone(&self.shared), rx));
        self.slots.push(Slot {
            commands,
            next_seq: 0,
            retiring_since: None,
            finished: false,
            welcomed: false,
        });
        self.active.push(index);
    }

    fn retire_all(&mut self, now: Duration) {
        for index in self.active.drain(..) {
            if let Some(slot) = self.slots.get_mut(index as usize) {
                slot.retiring_since = Some(now);
            }
        }
    }

    /// Closes retiring clients once nothing is on its way to them (or after
    /// the grace period), so retiring loses nothing.
    fn close_retired(&mut self, now: Duration) {
        let grace = self.config.grace;
        for (index, slot) in self.slots.iter_mut().enumerate() {
            let Some(since) = slot.retiring_since else {
                continue;
            };
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            // At the end every client stays until the grace period is over:
            // senders may still have to resend.
            let at_end = now >= self.stopped_at.unwrap_or(self.schedule.duration());
            if !at_end && (self.ledger.pending_to(index) == 0 || now.saturating_sub(since) >= grace)
            {
                let _ = slot.commands.send(Command::Close);
                slot.retiring_since = None;
            }
        }
    }

    async fn close_everything(&mut self, events: &mut mpsc::UnboundedReceiver<Event>) {
        for slot in &self.slots {
            let _ = slot.commands.send(Command::Close);
        }
        let deadline = Instant::now() + CLOSE_WAIT;
        while self.slots.iter().any(|s| !s.finished) {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(event)) => self.on_event(event),
                Ok(None) | Err(_) => break,
            }
        }
    }

    fn on_discovered(&mut self, view: &Discovered) {
        match view {
            Discovered::Pending => {}
            Discovered::Ready(ready) => {
                if ready.as_slice() != self.balancer.ready() {
                    tracing::info!(?ready, "Ready targets changed");
                }
                self.balancer.set_ready(ready.clone());
            }
            Discovered::Refused(refused) => self.refused = Some(refused.clone()),
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::NeedTarget { reply } => {
                let now = self.shared.start.elapsed();
                let _ = reply.send(self.balancer.pick(now));
            }
            Event::Connected { client, target } => {
                if let Some(slot) = self.slots.get_mut(client as usize)
                    && !slot.welcomed
                {
                    slot.welcomed = true;
                    if self.first_targets.contains(&target) {
                        self.ledger.joined_first_cohort(client);
                    }
                }
                self.connected.insert(client, target);
                self.connections.opened += 1;
                *self
                    .connections
                    .opened_by_target
                    .entry(target.to_string())
                    .or_default() += 1;
                self.connections.peak_open =
                    self.connections.peak_open.max(self.connected.len() as u64);
            }
            Event::Disconnected {
                client,
                target,
                reason,
            } => {
                self.balancer.release(target);
                self.connected.remove(&client);
                if let Some(cooling) = reason.and_then(Reason::cool_down) {
                    let now = self.shared.start.elapsed();
                    self.balancer.cool_down(target, now + cooling);
                }
                if let Some(reason) = reason {
                    *self.reconnects.entry(reason).or_default() += 1;
                }
            }
            Event::Sent { id, to, at } => self.ledger.record_sent(id, to, at),
            Event::Acked { id, status } => self.ledger.acked(id, status),
            Event::Received { id, by, at } => self.ledger.received(id, by, at),
            Event::Refused { code } => *self.refusals.entry(code).or_default() += 1,
            Event::Finished { client } => {
                if let Some(slot) = self.slots.get_mut(client as usize) {
                    slot.finished = true;
                }
            }
        }
    }

    fn snapshot(&self, now: Duration) -> Snapshot {
        let counts = self.ledger.counts();
        let phase = self
            .schedule
            .phase_at(now)
            .and_then(|i| self.config.profile.phases.get(i))
            .map(|p| p.name.clone());
        Snapshot {
            elapsed: now,
            total: self.schedule.duration(),
            wanted: if phase.is_some() {
                self.schedule.connections_at(now)
            } else {
                0
            },
            phase,
            open: self.connected.len() as u64,
            sent: counts.sent,
            acked: counts.acked.values().sum(),
            received: counts.received,
            pending: self.ledger.pending(),
            reconnects: self.reconnects.values().sum(),
        }
    }
}
