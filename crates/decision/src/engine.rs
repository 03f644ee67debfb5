//! The state machine: `(policy, state, observation) -> (decision, state)`.

use crate::decision::{Action, Decision, Indicators, Reason, Rebalance, Shed, StepDetail, Urgency};
use crate::observation::{Aggregates, Excluded, NodeSample, Observation};
use crate::policy::{Policy, PolicyError};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

/// Format version of [`State`], stored beside it so a reader can tell an
/// older layout from a newer one.
pub const STATE_VERSION: u32 = 1;

/// What the core remembers between ticks. Small, plain data and
/// serializable, so a new leader can resume where the old one stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct State {
    /// Layout version; see [`STATE_VERSION`].
    pub version: u32,
    /// The last scale-out, if any.
    pub last_scale_out: Option<ScaleOutRecord>,
    /// When the last scale-in was decided, if ever.
    pub last_scale_in_ms: Option<u64>,
    /// Scale-outs in a row, each within the scale-out window of the one
    /// before; reset by a scale-in.
    pub consecutive: u32,
    /// Since when the fleet has been continuously under-loaded with complete
    /// data, if it is.
    pub low_since_ms: Option<u64>,
    /// When the fleet was last seen under-loaded with complete data: the
    /// time of the latest observation while the low clock runs. A state
    /// stored before this field existed lacks it; then `low_since_ms`
    /// stands in, the last time that state proves the fleet was seen low.
    pub low_seen_ms: Option<u64>,
    /// The replica count this state last decided on: the target of its
    /// last scale, or the count a hold saw. More replicas than this at the
    /// next observation means a scale-out the state does not know of (a
    /// write that landed without being recorded, or another writer): it is
    /// treated as a scale-out at that moment, so the fleet settles instead
    /// of being scaled again on top. `None` in a state stored before the
    /// field existed.
    pub replicas_seen: Option<u32>,
    /// When the last rebalance was decided, if ever (absent while the rule
    /// is off, so states stay as they were).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_rebalance_ms: Option<u64>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            version: STATE_VERSION,
            last_scale_out: None,
            last_scale_in_ms: None,
            consecutive: 0,
            low_since_ms: None,
            low_seen_ms: None,
            replicas_seen: None,
            last_rebalance_ms: None,
        }
    }
}

/// What the core records at a scale-out, to size the next one.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScaleOutRecord {
    /// When it was decided.
    pub at_ms: u64,
    /// The urgency that caused it.
    pub urgency: Urgency,
    /// The aggregates at that moment.
    pub snapshot: Snapshot,
}

/// The load at a scale-out, for the growth factor of the next one.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Mean CPU fraction.
    pub cpu: f64,
    /// Mean memory fraction.
    pub mem: f64,
    /// Mean messages per second.
    pub mps: f64,
    /// Mean connections.
    pub conn: f64,
    /// Mean p95 latency, ms.
    pub p95: f64,
}

impl From<&Aggregates> for Snapshot {
    fn from(a: &Aggregates) -> Self {
        Self {
            cpu: a.avg_cpu,
            mem: a.avg_mem,
            mps: a.avg_mps,
            conn: a.avg_conn,
            p95: a.avg_p95,
        }
    }
}

impl Snapshot {
    /// The weighted load growth of `now` over `self`:
    /// `0.3·cpu/(cpu₀+0.01) + 0.3·mem/(mem₀+0.01) + 0.2·mps/(mps₀+1) + 0.1·conn/(conn₀+1) + 0.1·p95/(p95₀+1)`.
    ///
    /// About 1.0 when nothing changed (slightly less, from the smoothing
    /// terms), above 1 when load grew.
    pub fn growth_to(&self, now: &Snapshot) -> f64 {
        0.3 * now.cpu / (self.cpu + 0.01)
            + 0.3 * now.mem / (self.mem + 0.01)
            + 0.2 * now.mps / (self.mps + 1.0)
            + 0.1 * now.conn / (self.conn + 1.0)
            + 0.1 * now.p95 / (self.p95 + 1.0)
    }
}

/// The decision core, holding a validated policy.
#[derive(Debug, Clone)]
pub struct Engine {
    policy: Policy,
}

/// What the rebalance rules ask of a tick: whether every replica reports,
/// and which windows are still open.
#[derive(Debug, Clone, Copy)]
struct Recent {
    /// Every spec replica reports fresh, none draining, stale or invalid.
    complete: bool,
    /// The last scale-out is within `settle_ms`.
    settling: bool,
    /// The last rebalance is within `rebalance.window_ms`.
    rebalanced: bool,
    /// The last scale-in is within `rebalance.window_ms`.
    scaled_in: bool,
}

/// One pass over the nodes.
struct Scan<'a> {
    aggregates: Aggregates,
    excluded: Excluded,
    victim: Option<&'a NodeSample>,
}

impl Engine {
    /// Validates `policy` and builds an engine around it.
    pub fn new(policy: Policy) -> Result<Self, PolicyError> {
        policy.validate()?;
        Ok(Self { policy })
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Decides one tick. Pure: the same policy, state and observation always
    /// give the same decision and next state. Never panics.
    pub fn decide(&self, state: &State, obs: &Observation<'_>) -> (Decision, State) {
        let scan = self.scan(obs.nodes);
        let known;
        let state = match state.replicas_seen {
            Some(seen) if obs.replicas > seen => {
                known = self.unrecorded_scale_out(state, obs, &scan.aggregates);
                &known
            }
            Some(seen) if obs.replicas < seen => {
                // Scaled in by someone else: nothing to settle, but a later
                // scale-out back up must be noticed.
                known = State {
                    replicas_seen: Some(obs.replicas),
                    ..state.clone()
                };
                &known
            }
            _ => state,
        };
        let (d, mut next) = self.decide_on_load(state, obs, &scan);
        if d.action != Action::Hold {
            next.replicas_seen = Some(d.to);
        }
        let (d, next) = self.below_min(state, obs, d, next);
        self.rebalance(state, obs, &scan, d, next)
    }

    /// The rebalance rule, on a hold: see [`RebalancePolicy`](crate::policy::RebalancePolicy).
    fn rebalance(
        &self,
        state: &State,
        obs: &Observation<'_>,
        scan: &Scan<'_>,
        d: Decision,
        next: State,
    ) -> (Decision, State) {
        let r = &self.policy.rebalance;
        let holding = d.action == Action::Hold
            && matches!(
                d.reason,
                Reason::Balanced
                    | Reason::AtMax
                    | Reason::AtMin
                    | Reason::Cooldown
                    | Reason::Stabilizing
            );
        let a = &scan.aggregates;
        let complete = a.n > 0 && a.n == obs.replicas && scan.excluded.total() == 0;
        let since = |at: Option<u64>| at.map(|t| obs.now_ms.saturating_sub(t));
        let within = |at: Option<u64>, window: i64| {
            since(at).is_some_and(|s| i128::from(s) < i128::from(window))
        };
        let recent = Recent {
            complete,
            settling: within(state.last_scale_out.map(|s| s.at_ms), self.policy.settle_ms),
            rebalanced: within(state.last_rebalance_ms, r.window_ms),
            scaled_in: within(state.last_scale_in_ms, r.window_ms),
        };
        if r.enabled && self.only_hotspot(&d) {
            return self.hotspot_spread(state, obs, scan, d, next, recent);
        }
        if !r.enabled
            || !holding
            || !complete
            || recent.settling
            || recent.rebalanced
            || recent.scaled_in
        {
            return (d, next);
        }
        let Some(plan) = self.plan_rebalance(obs.nodes, a.avg_conn, r.min_spread_conns) else {
            return (d, next);
        };
        let d = Decision {
            action: Action::Rebalance,
            reason: Reason::ConnectionSpread,
            rebalance: Some(plan),
            ..d
        };
        let next = State {
            last_rebalance_ms: Some(obs.now_ms),
            ..next
        };
        (d, next)
    }

    /// Whether `d` scales out on a hotspot while the fleet as a whole has
    /// room: rule 2 fires, and neither rule 1 (average CPU or memory) nor
    /// rule 3 (connections or throughput per pod) does. Rules 4 to 6 may:
    /// their averages of latency and lag are what the hot nodes' own
    /// clients feel, and moving clients off those nodes is what lowers
    /// them.
    fn only_hotspot(&self, d: &Decision) -> bool {
        if d.action != Action::ScaleOut || d.trigger != Some(Reason::HotspotDetected) {
            return false;
        }
        let (rules, _) = self.rules(&d.aggregates);
        rules.iter().all(|(reason, _, fired)| {
            !fired || !matches!(reason, Reason::ResourceOverload | Reason::CapacityExhausted)
        })
    }

    /// A scale-out on rule 2 alone, with rebalancing on: when the hot nodes
    /// are hot because they hold more than their share of the connections,
    /// moving connections is the fix, and more pods would receive only new
    /// clients while the hot ones stay hot. Within the window of a
    /// rebalance it holds (`rebalancing`) while the moved clients land, and
    /// within `settle_ms` of a scale-out (`settling`) while its pods start
    /// taking clients. Then it becomes a rebalance (reason
    /// `hotspot-spread`) when the data is complete (every replica reports),
    /// no scale-in or rebalance is within the window, the spread is over
    /// `max_spread` times the mean (not `min_spread_conns`: the hot node is
    /// the reason to move), and every hot node is one that sheds. Otherwise the
    /// scale-out stands.
    fn hotspot_spread(
        &self,
        state: &State,
        obs: &Observation<'_>,
        scan: &Scan<'_>,
        d: Decision,
        next: State,
        recent: Recent,
    ) -> (Decision, State) {
        let now = obs.now_ms;
        // The scale-out is replaced: the state moves on as for a hold.
        let held = State {
            version: STATE_VERSION,
            low_since_ms: None,
            low_seen_ms: None,
            replicas_seen: Some(obs.replicas),
            ..state.clone()
        };
        let keep = |reason| Decision {
            action: Action::Hold,
            to: d.from,
            reason,
            step: None,
            ..d.clone()
        };
        if recent.rebalanced {
            return (keep(Reason::Rebalancing), held);
        }
        // The last scale-out's pods may report before they take clients;
        // a client moved now would come back to the hot nodes.
        if recent.settling {
            return (keep(Reason::Settling), held);
        }
        if !recent.complete || recent.scaled_in {
            return (d, next);
        }
        // A hot node is reason enough to move: no floor in connections.
        let Some(plan) = self.plan_rebalance(obs.nodes, scan.aggregates.avg_conn, 0.0) else {
            return (d, next);
        };
        let t = &self.policy.urgency;
        let every_hot_node_sheds = self
            .fresh(obs.nodes)
            .filter(|n| n.cpu > t.hotspot_cpu || n.mem > t.hotspot_mem)
            .all(|n| plan.sheds.iter().any(|s| s.node == n.id));
        if !every_hot_node_sheds {
            return (d, next);
        }
        let d = Decision {
            action: Action::Rebalance,
            reason: Reason::HotspotSpread,
            rebalance: Some(plan),
            ..keep(Reason::HotspotSpread)
        };
        let next = State {
            last_rebalance_ms: Some(now),
            ..held
        };
        (d, next)
    }

    /// The nodes a rebalance may name: fresh, not draining, valid.
    fn fresh<'a>(&'a self, nodes: &'a [NodeSample]) -> impl Iterator<Item = &'a NodeSample> {
        let stale_after = u64::try_from(self.policy.stale_after_ms).unwrap_or(0);
        nodes
            .iter()
            .filter(move |n| n.age_ms <= stale_after && !n.draining && self.is_valid(n))
    }

    /// Who sheds how many connections, when the spread is over `max_spread`
    /// times `mean` and over `floor` connections: each node above `mean`
    /// its excess, all scaled down together so that at most `max_share` of
    /// the connections move.
    fn plan_rebalance(&self, nodes: &[NodeSample], mean: f64, floor: f64) -> Option<Rebalance> {
        let r = &self.policy.rebalance;
        let fresh: Vec<&NodeSample> = self.fresh(nodes).collect();
        let most = fresh.iter().map(|n| n.conn).fold(f64::MIN, f64::max);
        let fewest = fresh.iter().map(|n| n.conn).fold(f64::MAX, f64::min);
        let spread = most - fewest;
        if fresh.is_empty() || spread <= (r.max_spread * mean).max(floor) {
            return None;
        }
        let total: f64 = fresh.iter().map(|n| n.conn).sum();
        let excess: f64 = fresh.iter().map(|n| (n.conn - mean).max(0.0)).sum();
        let scale = if excess > 0.0 {
            (r.max_share * total / excess).min(1.0)
        } else {
            0.0
        };
        let mut sheds: Vec<Shed> = fresh
            .iter()
            .filter(|n| n.conn > mean)
            .map(|n| Shed {
                node: n.id.clone(),
                // Truncated, so the sum stays within the share.
                connections: ((n.conn - mean) * scale).floor() as u64,
            })
            .filter(|s| s.connections > 0)
            .collect();
        sheds.sort_by(|a, b| b.connections.cmp(&a.connections).then(a.node.cmp(&b.node)));
        (!sheds.is_empty()).then_some(Rebalance {
            mean_conn: mean,
            spread,
            sheds,
        })
    }

    /// `state` with the scale-out it does not know of recorded at `now`,
    /// with the urgency and load of now: the settling rule then holds while
    /// the new pods join, unless the urgency rises.
    fn unrecorded_scale_out(
        &self,
        state: &State,
        obs: &Observation<'_>,
        aggregates: &Aggregates,
    ) -> State {
        let (urgency, _, _) = self.assess(aggregates);
        State {
            last_scale_out: Some(ScaleOutRecord {
                at_ms: obs.now_ms,
                urgency,
                snapshot: Snapshot::from(aggregates),
            }),
            replicas_seen: Some(obs.replicas),
            ..state.clone()
        }
    }

    fn below_min(
        &self,
        state: &State,
        obs: &Observation<'_>,
        d: Decision,
        next: State,
    ) -> (Decision, State) {
        let min = self.policy.min_replicas;
        if obs.replicas < min && d.to < min {
            // Below the minimum (a workload created without replicas, or
            // scaled down by hand): back to the minimum whatever the load,
            // without touching the scale-out history, which is about load.
            let d = Decision {
                action: Action::ScaleOut,
                to: min,
                reason: Reason::BelowMin,
                victim: None,
                step: None,
                ..d
            };
            let next = State {
                last_scale_out: state.last_scale_out,
                consecutive: state.consecutive,
                replicas_seen: Some(min),
                ..next
            };
            return (d, next);
        }
        (d, next)
    }

    fn decide_on_load(
        &self,
        state: &State,
        obs: &Observation<'_>,
        scan: &Scan<'_>,
    ) -> (Decision, State) {
        let mut next = state.clone();
        next.version = STATE_VERSION;
        let mut d = Decision {
            now_ms: obs.now_ms,
            action: Action::Hold,
            from: obs.replicas,
            to: obs.replicas,
            urgency: Urgency::None,
            reason: Reason::NoData,
            trigger: None,
            indicators: Indicators::default(),
            victim: None,
            aggregates: scan.aggregates,
            excluded: scan.excluded,
            step: None,
            low_for_ms: None,
            observation_gap_ms: None,
            rebalance: None,
        };
        if scan.aggregates.n == 0 {
            next.low_since_ms = None;
            next.low_seen_ms = None;
            return (d, next);
        }
        let (urgency, trigger, indicators) = self.assess(&scan.aggregates);
        d.urgency = urgency;
        d.trigger = trigger;
        d.indicators = indicators;
        if urgency > Urgency::None {
            next.low_since_ms = None;
            next.low_seen_ms = None;
            self.scale_out(state, obs, d, next)
        } else {
            self.scale_in(state, obs, scan, d, next)
        }
    }

    fn is_valid(&self, n: &NodeSample) -> bool {
        let limit = self.policy.max_valid_fraction;
        let fraction_ok = |v: f64| v.is_finite() && (0.0..=limit).contains(&v);
        let amount_ok = |v: f64| v.is_finite() && v >= 0.0;
        fraction_ok(n.cpu)
            && fraction_ok(n.mem)
            && amount_ok(n.conn)
            && amount_ok(n.mps)
            && amount_ok(n.p95_ms)
            && amount_ok(n.lag_ms)
    }

    fn scan<'a>(&self, nodes: &'a [NodeSample]) -> Scan<'a> {
        let stale_after = u64::try_from(self.policy.stale_after_ms).unwrap_or(0);
        let mut ex = Excluded::default();
        let mut n: u64 = 0;
        let (mut cpu, mut mem, mut mps, mut conn, mut p95, mut lag) =
            (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
        let (mut max_cpu, mut max_mem) = (0.0f64, 0.0f64);
        let mut victim: Option<&NodeSample> = None;
        for node in nodes {
            if node.age_ms > stale_after {
                ex.stale = ex.stale.saturating_add(1);
                continue;
            }
            if node.draining {
                ex.draining = ex.draining.saturating_add(1);
                continue;
            }
            if !self.is_valid(node) {
                ex.invalid = ex.invalid.saturating_add(1);
                continue;
            }
            n += 1;
            cpu += node.cpu;
            mem += node.mem;
            mps += node.mps;
            conn += node.conn;
            p95 += node.p95_ms;
            lag += node.lag_ms;
            max_cpu = max_cpu.max(node.cpu);
            max_mem = max_mem.max(node.mem);
            if victim.is_none_or(|v| victim_order(node, v) == Ordering::Less) {
                victim = Some(node);
            }
        }
        let mut agg = Aggregates {
            n: u32::try_from(n).unwrap_or(u32::MAX),
            ..Aggregates::default()
        };
        if n > 0 {
            let nf = n as f64;
            agg.avg_cpu = cpu / nf;
            agg.avg_mem = mem / nf;
            agg.avg_mps = mps / nf;
            agg.avg_conn = conn / nf;
            agg.avg_p95 = p95 / nf;
            agg.avg_lag = lag / nf;
            agg.max_cpu = max_cpu;
            agg.max_mem = max_mem;
            agg.conn_util = self.policy.conn_capacity.map(|c| agg.avg_conn / c);
            agg.mps_util = self.policy.mps_capacity.map(|c| agg.avg_mps / c);
        }
        Scan {
            aggregates: agg,
            excluded: ex,
            victim,
        }
    }

    /// Urgency is the highest rule that fires; the trigger is the first.
    fn assess(&self, a: &Aggregates) -> (Urgency, Option<Reason>, Indicators) {
        let (rules, indicators) = self.rules(a);
        let mut urgency = Urgency::None;
        let mut trigger = None;
        for (reason, level, fired) in rules {
            if fired {
                urgency = urgency.max(level);
                trigger = trigger.or(Some(reason));
            }
        }
        (urgency, trigger, indicators)
    }

    /// The six urgency rules, in order, each with whether it fires on `a`,
    /// and the rule-6 indicators that held.
    fn rules(&self, a: &Aggregates) -> ([(Reason, Urgency, bool); 6], Indicators) {
        let t = &self.policy.urgency;
        let above = |v: Option<f64>, limit: f64| v.is_some_and(|v| v > limit);
        let pressured = a.avg_cpu > t.pressure_gate_cpu || a.avg_mem > t.pressure_gate_mem;

        let mut indicators = 0u8;
        for (i, held) in [
            a.avg_cpu > t.pressure_cpu,
            a.avg_mem > t.pressure_mem,
            a.avg_p95 > t.pressure_p95_ms,
            a.avg_lag > t.pressure_lag_ms,
            above(a.conn_util, t.pressure_util),
            above(a.mps_util, t.pressure_util),
        ]
        .into_iter()
        .enumerate()
        {
            if held {
                indicators |= 1 << i;
            }
        }
        let indicators = Indicators(indicators);

        let rules = [
            (
                Reason::ResourceOverload,
                Urgency::Critical,
                a.avg_cpu > t.overload_cpu || a.avg_mem > t.overload_mem,
            ),
            (
                Reason::HotspotDetected,
                Urgency::Critical,
                a.max_cpu > t.hotspot_cpu || a.max_mem > t.hotspot_mem,
            ),
            (
                Reason::CapacityExhausted,
                Urgency::Critical,
                above(a.conn_util, t.capacity_util) || above(a.mps_util, t.capacity_util),
            ),
            (
                Reason::HighLatency,
                Urgency::High,
                a.avg_p95 > t.latency_p95_ms && pressured,
            ),
            (
                Reason::KafkaBacklog,
                Urgency::High,
                a.avg_lag > t.backlog_lag_ms && pressured,
            ),
            (
                Reason::MultiplePressureIndicators,
                Urgency::Moderate,
                indicators.count() >= t.pressure_min_indicators,
            ),
        ];
        (rules, indicators)
    }

    fn scale_out(
        &self,
        state: &State,
        obs: &Observation<'_>,
        mut d: Decision,
        mut next: State,
    ) -> (Decision, State) {
        let p = &self.policy;
        let now = obs.now_ms;
        let fresh = d.aggregates.n;
        let since = |at: u64| now.saturating_sub(at);
        let within = |at: u64, window: i64| i128::from(since(at)) < i128::from(window);

        if let Some(last) = &state.last_scale_out
            && within(last.at_ms, p.settle_ms)
            && fresh < obs.replicas
            && d.urgency <= last.urgency
        {
            d.reason = Reason::Settling;
            return (d, next);
        }

        let base = match d.urgency {
            Urgency::Critical => p.step.base_critical,
            Urgency::High => p.step.base_high,
            _ => p.step.base_moderate,
        };
        let recent = state
            .last_scale_out
            .filter(|last| within(last.at_ms, p.scale_out_window_ms));
        let mut step = base;
        let mut growth = None;
        let mut consecutive = 0;
        if let Some(last) = &recent {
            let g = last.snapshot.growth_to(&Snapshot::from(&d.aggregates));
            growth = Some(g);
            if g > p.step.strong_growth {
                step = step.saturating_add(2).min(p.max_step);
            } else if g > p.step.mild_growth {
                step = step.saturating_add(1).min(p.max_step);
            }
            consecutive = state.consecutive;
            if consecutive >= 2 {
                step = step.saturating_add(consecutive).min(p.max_step);
            }
        }
        let step = step.min(p.max_step);
        d.step = Some(StepDetail {
            base,
            consecutive,
            growth,
            step,
        });

        let to = obs.replicas.saturating_add(step).min(p.max_replicas);
        if to <= obs.replicas {
            d.reason = Reason::AtMax;
            return (d, next);
        }
        d.action = Action::ScaleOut;
        d.to = to;
        d.reason = d.trigger.unwrap_or(Reason::ResourceOverload);
        next.last_scale_out = Some(ScaleOutRecord {
            at_ms: now,
            urgency: d.urgency,
            snapshot: Snapshot::from(&d.aggregates),
        });
        next.consecutive = if recent.is_some() {
            state.consecutive.saturating_add(1)
        } else {
            1
        };
        (d, next)
    }

    fn is_low(&self, a: &Aggregates) -> bool {
        let s = &self.policy.scale_in;
        if a.n <= 1 {
            return false;
        }
        let n = f64::from(a.n);
        let grow = n / (n - 1.0);
        let util_ok = |u: Option<f64>| u.is_none_or(|u| u * grow < s.projected_util);
        a.avg_cpu < s.cpu
            && a.avg_mem < s.mem
            && a.avg_p95 < s.p95_ms
            && a.avg_lag < s.lag_ms
            && a.avg_cpu * grow < s.projected_cpu
            && a.avg_mem * grow < s.projected_mem
            && util_ok(a.conn_util)
            && util_ok(a.mps_util)
    }

    fn scale_in(
        &self,
        state: &State,
        obs: &Observation<'_>,
        scan: &Scan<'_>,
        mut d: Decision,
        mut next: State,
    ) -> (Decision, State) {
        let p = &self.policy;
        let now = obs.now_ms;
        let low = self.is_low(&d.aggregates);
        let complete = d.aggregates.n == obs.replicas;

        // "Low on every tick since it was first seen": a clock last
        // confirmed longer ago than the gap bound has not seen every tick.
        let gap = state
            .low_seen_ms
            .or(state.low_since_ms)
            .map(|seen| now.saturating_sub(seen))
            .filter(|&gap| i128::from(gap) > i128::from(p.max_observation_gap_ms));
        let running = state.low_since_ms.filter(|_| gap.is_none());
        if low && complete {
            next.low_since_ms = Some(running.map_or(now, |t| t.min(now)));
            next.low_seen_ms = Some(now);
            d.observation_gap_ms = gap.filter(|_| state.low_since_ms.is_some());
        } else {
            next.low_since_ms = None;
            next.low_seen_ms = None;
        }
        d.low_for_ms = next.low_since_ms.map(|t| now.saturating_sub(t));

        let passed = |at: Option<u64>, window: i64| {
            at.is_none_or(|at| i128::from(now.saturating_sub(at)) >= i128::from(window))
        };
        let cooled = passed(state.last_scale_in_ms, p.scale_in_window_ms)
            && passed(state.last_scale_out.map(|l| l.at_ms), p.scale_in_window_ms);
        let stable = d
            .low_for_ms
            .is_some_and(|low_for| i128::from(low_for) >= i128::from(p.scale_in_stabilization_ms));

        d.reason = if !low {
            Reason::Balanced
        } else if obs.replicas <= p.min_replicas {
            Reason::AtMin
        } else if !complete {
            Reason::IncompleteData
        } else if !cooled {
            Reason::Cooldown
        } else if !stable {
            Reason::Stabilizing
        } else {
            Reason::ExcessCapacity
        };
        if d.reason != Reason::ExcessCapacity {
            return (d, next);
        }

        d.action = Action::ScaleIn;
        d.to = obs.replicas - 1;
        d.victim = scan.victim.map(|v| v.id.clone());
        next.last_scale_in_ms = Some(now);
        next.consecutive = 0;
        next.low_since_ms = None;
        next.low_seen_ms = None;
        (d, next)
    }
}

/// Fewest connections first, then lowest throughput, then smallest id in
/// byte order: the node whose removal disturbs the fewest clients.
fn victim_order(a: &NodeSample, b: &NodeSample) -> Ordering {
    a.conn
        .total_cmp(&b.conn)
        .then(a.mps.total_cmp(&b.mps))
        .then_with(|| a.id.as_bytes().cmp(b.id.as_bytes()))
}
