//! One tick of the leader's scaling loop.

use crate::shed::{NoShedding, ShedSink, connection_spread};
use crate::signal::{ScaleSignal, SignalSink};
use crate::state::StateRepo;
use rtc_decision::{Action, Decision, Engine, NodeSample, Observation, Reason, State, Urgency};
use rtc_workload::{
    Fence, FenceError, ScaleError, ScaleInPlan, ScaleOutcome, WorkloadApi, WorkloadScaler,
};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, warn};

/// Why a tick did not complete.
#[derive(Debug, thiserror::Error)]
pub enum TickError {
    /// This process may not write: it is not (or no longer) the leader.
    #[error("not the leader: {0}")]
    NotLeader(#[from] FenceError),
    /// The workload could not be read, so nothing was decided.
    #[error("reading the workload failed: {0}")]
    Read(#[source] ScaleError),
    /// The decision was made but the scaling write failed; the decision
    /// state was not advanced, so the next tick decides again.
    #[error("scaling failed: {0}")]
    Scale(#[source] ScaleError),
    /// The workload could not be claimed for this leader's token.
    #[error("claiming the workload failed: {0}")]
    Claim(#[source] ScaleError),
}

impl TickError {
    /// A short, bounded label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            TickError::NotLeader(_) => "not_leader",
            TickError::Read(_) => "read_failed",
            TickError::Scale(_) => "scale_failed",
            TickError::Claim(_) => "claim_failed",
        }
    }
}

/// One decision as operators and the dashboard see it.
#[derive(Debug, Clone, Serialize)]
pub struct DecisionRecord {
    /// Wall-clock time, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// The decision, with its aggregates.
    pub decision: Decision,
    /// The explanation lines.
    pub explanation: Vec<String>,
    /// What the scaler did: `scaled`, `unchanged`, `conflict`, an error
    /// label, or `none` for a hold.
    pub outcome: String,
    /// The pod expected to go on scale-in (may differ from the decision's
    /// victim; see the scaler's plan).
    pub expected_victim: Option<String>,
}

/// What one tick did.
#[derive(Debug, Clone)]
pub struct TickReport {
    /// The decision.
    pub decision: Decision,
    /// What the scaler did, for scaling decisions.
    pub outcome: Option<ScaleOutcome>,
    /// The scale-in plan, on scale-in.
    pub plan: Option<ScaleInPlan>,
    /// Whether the decision state was saved for a successor.
    pub state_saved: bool,
}

/// The leader's scaling loop, one tick at a time: read the workload,
/// decide, prepare a scale-in, write `/scale`, publish the signal, save the
/// One read-decide-act pass of a tick.
struct Attempt {
    decision: Decision,
    next: State,
    outcome: Option<Result<ScaleOutcome, ScaleError>>,
    plan: Option<ScaleInPlan>,
}

/// How long saving the decision state may take before the tick goes on.
pub(crate) const SAVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The leader's scaling loop, one tick at a time: read the workload,
/// decide, prepare a scale-in, write `/scale`, publish the signal, save the
/// state. Ticks take `&mut self`, so they never overlap.
pub struct Controller<A, R> {
    engine: Engine,
    scaler: WorkloadScaler<A>,
    repo: R,
    sink: Arc<dyn SignalSink>,
    identity: String,
    state: State,
    last_logged: Option<(Reason, Urgency)>,
    history: VecDeque<DecisionRecord>,
    history_len: usize,
    history_tx: watch::Sender<Arc<Vec<DecisionRecord>>>,
    shed: Arc<dyn ShedSink>,
    /// How long after a rebalance its spread is measured again.
    shed_window_ms: u64,
    /// The last rebalance not yet measured again: when, and its spread.
    pending_rebalance: Option<(u64, f64)>,
}

impl<A, R> std::fmt::Debug for Controller<A, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("identity", &self.identity)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl<A: WorkloadApi, R: StateRepo> Controller<A, R> {
    /// A controller starting from an empty state; call
    /// [`resume`](Self::resume) when leadership is acquired.
    pub fn new(
        engine: Engine,
        scaler: WorkloadScaler<A>,
        repo: R,
        sink: Arc<dyn SignalSink>,
        identity: impl Into<String>,
        history_len: usize,
    ) -> Self {
        let (history_tx, _) = watch::channel(Arc::new(Vec::new()));
        Self {
            engine,
            scaler,
            repo,
            sink,
            identity: identity.into(),
            state: State::default(),
            last_logged: None,
            history: VecDeque::new(),
            history_len: history_len.max(1),
            history_tx,
            shed: Arc::new(NoShedding),
            shed_window_ms: 0,
            pending_rebalance: None,
        }
    }

    /// Hands every rebalance the engine decides to `sink`, whose nodes
    /// spread their moves over `window`; the spread is measured again that
    /// long after each one. Without this, rebalances are only recorded.
    #[must_use]
    pub fn with_shedding(mut self, sink: Arc<dyn ShedSink>, window: std::time::Duration) -> Self {
        self.shed = sink;
        self.shed_window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// The last decisions, newest last, as they change.
    pub fn decisions(&self) -> watch::Receiver<Arc<Vec<DecisionRecord>>> {
        self.history_tx.subscribe()
    }

    /// The decision state in force.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The workload scaler.
    pub fn scaler(&self) -> &WorkloadScaler<A> {
        &self.scaler
    }

    /// Loads the stored decision state, so a new leader keeps the scale-in
    /// clock and the scale-out history. A missing or unreadable state
    /// starts from empty, which only makes the next scale-in wait longer.
    pub async fn resume(&mut self) {
        match self.repo.load().await {
            Ok(Some(stored)) => {
                info!(
                    token = stored.token,
                    "resumed the decision state of the previous leader"
                );
                self.state = stored.state;
            }
            Ok(None) => info!("no stored decision state; starting fresh"),
            Err(e) => {
                warn!(error = %e, "stored decision state unusable; keeping the one in memory");
                metrics::counter!("rtc_lb_state_errors_total", "op" => "load", "error" => e.label())
                    .increment(1);
            }
        }
    }

    /// Runs one tick at `now_ms` (wall clock, ms since the Unix epoch: the
    /// state's times must mean the same on every replica) over the fleet's
    /// latest samples, writing only while `fence` allows it.
    /// Claims the workload for the token `fence` grants
    /// ([`WorkloadScaler::claim`]): call it on becoming leader, before the
    /// first tick, so that every write an earlier leader still has in flight
    /// fails at the API server.
    ///
    /// # Errors
    ///
    /// [`TickError::Claim`] when the claim fails or a newer leader has
    /// claimed the workload.
    pub async fn claim(&self, fence: &dyn Fence) -> Result<(), TickError> {
        let result = self.scaler.claim(fence).await;
        let label = match &result {
            Ok(_) => "ok",
            Err(e) => e.label(),
        };
        metrics::counter!("rtc_lb_workload_claims_total", "result" => label).increment(1);
        result.map(drop).map_err(TickError::Claim)
    }

    pub async fn tick(
        &mut self,
        now_ms: u64,
        samples: &[NodeSample],
        fence: &dyn Fence,
    ) -> Result<TickReport, TickError> {
        let span = tracing::info_span!("tick", now_ms, nodes = samples.len());
        let result = self
            .tick_inner(now_ms, samples, fence)
            .instrument(span)
            .await;
        let label = match &result {
            Ok(_) => "ok",
            Err(e) => e.label(),
        };
        metrics::counter!("rtc_lb_ticks_total", "result" => label).increment(1);
        result
    }

    async fn tick_inner(
        &mut self,
        now_ms: u64,
        samples: &[NodeSample],
        fence: &dyn Fence,
    ) -> Result<TickReport, TickError> {
        let token = fence.check()?.token;
        let mut attempt = self.decide_and_act(now_ms, samples, fence).await?;
        if matches!(attempt.outcome, Some(Ok(ScaleOutcome::Conflict { .. }))) {
            // Someone wrote in between (often the workload's own controller
            // updating status after this leader's claim): re-read and decide
            // again at once rather than a tick later.
            info!("re-reading the workload after the conflict and deciding again");
            attempt = self.decide_and_act(now_ms, samples, fence).await?;
        }
        let Attempt {
            decision,
            next,
            outcome,
            plan,
        } = attempt;
        self.measure_rebalance(now_ms, samples);
        let outcome = match outcome {
            None => {
                self.state = next;
                if let Some(r) = &decision.rebalance {
                    self.send_rebalance(now_ms, r);
                }
                None
            }
            Some(Ok(o)) => {
                match &o {
                    ScaleOutcome::Scaled { .. } => {
                        self.state = next;
                        self.publish(&decision, plan.as_ref(), token, now_ms);
                    }
                    ScaleOutcome::Conflict { from, to, .. } => warn!(
                        from,
                        to,
                        "replicas changed by another writer since they were read; deciding again next tick"
                    ),
                    ScaleOutcome::Unchanged { replicas, .. } => {
                        info!(replicas, "the scaler's bounds left replicas unchanged")
                    }
                }
                Some(o)
            }
            Some(Err(e)) => {
                self.remember(now_ms, &decision, e.label(), None);
                return Err(TickError::Scale(e));
            }
        };

        // Bounded, so that a stalled Redis cannot hold the loop; the state is
        // already updated in memory and the next tick saves it again.
        let save = tokio::time::timeout(SAVE_TIMEOUT, self.repo.save(token, &self.state)).await;
        let state_saved = match save {
            Ok(Ok(())) => true,
            Err(_) => {
                warn!(timeout = ?SAVE_TIMEOUT, "saving the decision state timed out");
                metrics::counter!("rtc_lb_state_errors_total", "op" => "save", "error" => "timeout")
                    .increment(1);
                false
            }
            Ok(Err(e)) => {
                warn!(error = %e, "saving the decision state failed");
                metrics::counter!("rtc_lb_state_errors_total", "op" => "save", "error" => e.label())
                    .increment(1);
                false
            }
        };
        let label = outcome.as_ref().map_or("none", ScaleOutcome::label);
        self.remember(
            now_ms,
            &decision,
            label,
            plan.as_ref().map(|p| p.victim.clone()),
        );
        Ok(TickReport {
            decision,
            outcome,
            plan,
            state_saved,
        })
    }

    /// Reads the workload, decides, and acts on the decision: one attempt.
    async fn decide_and_act(
        &mut self,
        now_ms: u64,
        samples: &[NodeSample],
        fence: &dyn Fence,
    ) -> Result<Attempt, TickError> {
        let read = self
            .scaler
            .current_under(fence)
            .await
            .map_err(TickError::Read)?;

        let started = Instant::now();
        let obs = Observation {
            now_ms,
            replicas: read.spec_replicas,
            nodes: samples,
        };
        let (decision, next) = self.engine.decide(&self.state, &obs);
        metrics::histogram!("rtc_lb_decision_seconds").record(started.elapsed().as_secs_f64());
        metrics::counter!(
            "rtc_lb_scale_signals_total",
            "direction" => direction(decision.action),
            "urgency" => decision.urgency.as_str(),
            "reason" => decision.reason.as_str(),
        )
        .increment(1);
        metrics::gauge!("rtc_lb_desired_replicas").set(f64::from(decision.to));
        let ex = decision.excluded;
        for (cause, count) in [
            ("stale", ex.stale),
            ("draining", ex.draining),
            ("invalid", ex.invalid),
        ] {
            metrics::gauge!("rtc_lb_excluded_nodes", "cause" => cause).set(f64::from(count));
        }
        self.log(&decision);

        let mut plan = None;
        let outcome = match decision.action {
            // A rebalance changes no replica; its sheds are sent after the
            // state is advanced (`send_rebalance`).
            Action::Hold | Action::Rebalance => None,
            Action::ScaleOut => {
                let why = format!(
                    "{} (urgency={}, adding {} nodes)",
                    decision.reason,
                    decision.urgency.level(),
                    decision.delta()
                );
                Some(self.scaler.scale_to(&read, decision.to, &why, fence).await)
            }
            Action::ScaleIn => {
                let chosen = decision.victim.clone().unwrap_or_default();
                let loads: BTreeMap<String, u64> = samples
                    .iter()
                    .filter(|s| s.conn.is_finite() && s.conn >= 0.0)
                    .map(|s| (s.id.clone(), s.conn.round() as u64))
                    .collect();
                match self
                    .scaler
                    .prepare_scale_in(&read, &chosen, &loads, fence)
                    .await
                {
                    Ok(p) => {
                        if p.overridden.is_some() {
                            warn!(
                                chosen = %p.chosen,
                                victim = %p.victim,
                                why = ?p.overridden,
                                "the controller will remove another pod than the least loaded"
                            );
                        }
                        let why = format!("{} (urgency=0, removing {})", decision.reason, p.victim);
                        plan = Some(p);
                        Some(self.scaler.scale_to(&read, decision.to, &why, fence).await)
                    }
                    Err(e) => Some(Err(e)),
                }
            }
        };

        Ok(Attempt {
            decision,
            next,
            outcome,
            plan,
        })
    }

    /// Hands a decided rebalance to the shed sink, with its log line and
    /// metrics.
    fn send_rebalance(&mut self, now_ms: u64, r: &rtc_decision::Rebalance) {
        let asked: u64 = r.sheds.iter().map(|s| s.connections).sum();
        let sent = self.shed.offer(r);
        let label = if sent { "sent" } else { "dropped" };
        metrics::counter!("rtc_lb_rebalances_total", "result" => label).increment(1);
        metrics::gauge!("rtc_lb_connection_spread", "when" => "before").set(r.spread);
        if sent {
            metrics::counter!("rtc_lb_rebalance_connections_total").increment(asked);
            self.pending_rebalance = Some((now_ms, r.spread));
        }
        let nodes: Vec<String> = r
            .sheds
            .iter()
            .map(|s| format!("{}:{}", s.node, s.connections))
            .collect();
        info!(
            nodes = %nodes.join(","),
            asked,
            spread = r.spread,
            mean = r.mean_conn,
            sent,
            "rebalance: hot nodes asked to shed connections"
        );
    }

    /// One shed window (plus a tick) after a rebalance, logs the spread
    /// it left.
    fn measure_rebalance(&mut self, now_ms: u64, samples: &[NodeSample]) {
        let Some((at, before)) = self.pending_rebalance else {
            return;
        };
        if now_ms.saturating_sub(at) < self.shed_window_ms {
            return;
        }
        self.pending_rebalance = None;
        let stale = u64::try_from(self.engine.policy().stale_after_ms).unwrap_or(0);
        if let Some(after) = connection_spread(samples, stale) {
            metrics::gauge!("rtc_lb_connection_spread", "when" => "after").set(after);
            info!(
                before,
                after,
                after_ms = now_ms.saturating_sub(at),
                "rebalance: connection spread measured again"
            );
        }
    }

    fn log(&mut self, d: &Decision) {
        let key = (d.reason, d.urgency);
        if d.action == Action::Hold && self.last_logged == Some(key) {
            for line in d.explain() {
                debug!("{line}");
            }
            return;
        }
        self.last_logged = Some(key);
        for line in d.explain() {
            info!("{line}");
        }
    }

    fn publish(&self, d: &Decision, plan: Option<&ScaleInPlan>, token: u64, now_ms: u64) {
        let signal = ScaleSignal {
            action: d.action,
            from: d.from,
            to: d.to,
            delta: d.delta(),
            urgency: d.urgency,
            reason: d.reason,
            victim: plan.map(|p| p.victim.clone()).or_else(|| d.victim.clone()),
            aggregates: d.aggregates,
            leader: self.identity.clone(),
            fencing_token: token,
            timestamp_ms: now_ms,
        };
        if !self.sink.offer(&signal) {
            metrics::counter!("rtc_lb_signals_dropped_total").increment(1);
        }
    }

    fn remember(&mut self, now_ms: u64, d: &Decision, outcome: &str, victim: Option<String>) {
        if self.history.len() == self.history_len {
            self.history.pop_front();
        }
        self.history.push_back(DecisionRecord {
            timestamp_ms: now_ms,
            decision: d.clone(),
            explanation: d.explain().map(|l| l.to_string()).collect(),
            outcome: outcome.to_owned(),
            expected_victim: victim,
        });
        let snapshot: Vec<DecisionRecord> = self.history.iter().cloned().collect();
        self.history_tx.send_replace(Arc::new(snapshot));
    }
}

fn direction(a: Action) -> &'static str {
    match a {
        Action::ScaleOut => "out",
        Action::ScaleIn => "in",
        Action::Hold => "hold",
        Action::Rebalance => "rebalance",
    }
}
