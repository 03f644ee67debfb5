//! What the core says, and how it explains itself.

use crate::observation::{Aggregates, Excluded};
use serde::{Deserialize, Serialize};
use std::fmt;

/// What to do with the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Add `to - from` replicas.
    ScaleOut,
    /// Remove exactly one replica, the `victim`.
    ScaleIn,
    /// Change nothing.
    Hold,
    /// Keep the replicas; the nodes named in `rebalance` shed connections
    /// to the others.
    Rebalance,
}

impl Action {
    /// Stable label, as used in the replay format and in metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::ScaleOut => "scale_out",
            Action::ScaleIn => "scale_in",
            Action::Hold => "hold",
            Action::Rebalance => "rebalance",
        }
    }
}

/// How pressing the load is. Ordered: `None < Moderate < High < Critical`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Urgency {
    /// No pressure.
    #[default]
    None,
    /// Several indicators at once (level 1).
    Moderate,
    /// Latency or backlog under resource pressure (level 2).
    High,
    /// Overload, a hotspot or exhausted capacity (level 3).
    Critical,
}

impl Urgency {
    /// Numeric level, 0..=3.
    pub fn level(&self) -> u8 {
        match self {
            Urgency::None => 0,
            Urgency::Moderate => 1,
            Urgency::High => 2,
            Urgency::Critical => 3,
        }
    }

    /// Stable label, as used in the replay format and in metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Urgency::None => "none",
            Urgency::Moderate => "moderate",
            Urgency::High => "high",
            Urgency::Critical => "critical",
        }
    }
}

/// Why the core decided what it did. The label set is closed and small, so
/// it is safe as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// Rule 1: average CPU or memory over the overload threshold.
    ResourceOverload,
    /// Rule 2: one node's CPU or memory over the hotspot threshold.
    HotspotDetected,
    /// Rule 3: connection or throughput utilisation near capacity.
    CapacityExhausted,
    /// Rule 4: high p95 latency under resource pressure.
    HighLatency,
    /// Rule 5: Kafka backlog under resource pressure.
    KafkaBacklog,
    /// Rule 6: several moderate indicators at once.
    MultiplePressureIndicators,
    /// Scale-in: the fleet has been under-loaded long enough.
    ExcessCapacity,
    /// Scale-out to the minimum: the workload has fewer replicas than
    /// `min_replicas`, whatever the load.
    BelowMin,
    /// Hold: no fresh node reports.
    NoData,
    /// Hold: a recent scale-out's pods have not joined yet.
    Settling,
    /// Hold: under pressure but already at the maximum.
    AtMax,
    /// Hold: under-loaded but already at the minimum.
    AtMin,
    /// Hold: under-loaded, but some node is missing, stale, draining or
    /// invalid, so the picture is incomplete.
    IncompleteData,
    /// Hold: the scale-in window since the last scaling has not passed.
    Cooldown,
    /// Hold: under-loaded, but not yet for long enough.
    Stabilizing,
    /// Hold: neither under pressure nor under-loaded.
    Balanced,
    /// Rebalance: the connections of the fresh nodes spread too far apart.
    ConnectionSpread,
    /// Rebalance instead of a scale-out: the only rule that fires is the
    /// hotspot, and the hot nodes are those holding more than their share
    /// of the connections.
    HotspotSpread,
    /// Hold: a hotspot persists, but a rebalance's moved clients are still
    /// landing (its window has not passed).
    Rebalancing,
}

impl Reason {
    /// Stable kebab-case label, as used in the replay format and in metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::ResourceOverload => "resource-overload",
            Reason::HotspotDetected => "hotspot-detected",
            Reason::CapacityExhausted => "capacity-exhausted",
            Reason::HighLatency => "high-latency",
            Reason::KafkaBacklog => "kafka-backlog",
            Reason::MultiplePressureIndicators => "multiple-pressure-indicators",
            Reason::ExcessCapacity => "excess-capacity",
            Reason::NoData => "no-data",
            Reason::Settling => "settling",
            Reason::AtMax => "at-max",
            Reason::AtMin => "at-min",
            Reason::IncompleteData => "incomplete-data",
            Reason::Cooldown => "cooldown",
            Reason::Stabilizing => "stabilizing",
            Reason::Balanced => "balanced",
            Reason::BelowMin => "below-min",
            Reason::ConnectionSpread => "connection-spread",
            Reason::HotspotSpread => "hotspot-spread",
            Reason::Rebalancing => "rebalancing",
        }
    }

    /// Every reason, for pre-registering metric series.
    pub const ALL: [Reason; 19] = [
        Reason::ResourceOverload,
        Reason::HotspotDetected,
        Reason::CapacityExhausted,
        Reason::HighLatency,
        Reason::KafkaBacklog,
        Reason::MultiplePressureIndicators,
        Reason::ExcessCapacity,
        Reason::NoData,
        Reason::Settling,
        Reason::AtMax,
        Reason::AtMin,
        Reason::IncompleteData,
        Reason::Cooldown,
        Reason::Stabilizing,
        Reason::Balanced,
        Reason::BelowMin,
        Reason::ConnectionSpread,
        Reason::HotspotSpread,
        Reason::Rebalancing,
    ];
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which rule-6 indicators held, as a small bit set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Indicators(pub u8);

impl Indicators {
    /// Names of the indicators, in bit order.
    pub const NAMES: [&'static str; 6] = ["cpu", "mem", "p95", "lag", "conn", "mps"];

    /// How many indicators held.
    pub fn count(&self) -> u32 {
        self.0.count_ones()
    }

    /// Names of the indicators that held.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        Self::NAMES
            .iter()
            .enumerate()
            .filter(|(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, n)| *n)
    }
}

/// How a scale-out step was sized.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepDetail {
    /// Base step for the urgency.
    pub base: u32,
    /// Scale-outs in a row before this one (0 when the last is not recent).
    pub consecutive: u32,
    /// Load growth since the last scale-out, when it was recent.
    pub growth: Option<f64>,
    /// Final step, before clamping to the maximum replicas.
    pub step: u32,
}

/// The core's answer for one tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// When it was decided (the observation's `now_ms`).
    pub now_ms: u64,
    /// What to do.
    pub action: Action,
    /// Spec replicas before.
    pub from: u32,
    /// Spec replicas wanted (equal to `from` on hold).
    pub to: u32,
    /// Urgency computed this tick, also on holds.
    pub urgency: Urgency,
    /// Why.
    pub reason: Reason,
    /// The urgency rule that fired first, also when the decision is a hold
    /// such as `settling` or `at-max`.
    pub trigger: Option<Reason>,
    /// Rule-6 indicators that held.
    pub indicators: Indicators,
    /// The node to remove on scale-in.
    pub victim: Option<String>,
    /// Aggregates over the fresh nodes.
    pub aggregates: Aggregates,
    /// Nodes left out, by cause.
    pub excluded: Excluded,
    /// How the scale-out step was sized, when one was computed.
    pub step: Option<StepDetail>,
    /// How long the fleet has been continuously under-loaded, when it is.
    pub low_for_ms: Option<u64>,
    /// Set when the fleet is under-loaded but its low clock restarted on
    /// this tick because it was last seen low longer ago than the policy's
    /// `max_observation_gap_ms`: how long ago that was.
    pub observation_gap_ms: Option<u64>,
    /// On rebalance, who sheds how many connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebalance: Option<Rebalance>,
}

/// A rebalance: the nodes above the mean and the connections each sheds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rebalance {
    /// Mean connections of the fresh nodes.
    pub mean_conn: f64,
    /// Most minus fewest connections among them, before the move.
    pub spread: f64,
    /// Who sheds how many, most first.
    pub sheds: Vec<Shed>,
}

/// One node's part of a rebalance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shed {
    /// The node.
    pub node: String,
    /// Connections it moves to other nodes.
    pub connections: u64,
}

impl Decision {
    /// Signed change in replicas.
    pub fn delta(&self) -> i64 {
        i64::from(self.to) - i64::from(self.from)
    }

    /// Whether this decision changes the replicas.
    pub fn is_scaling(&self) -> bool {
        matches!(self.action, Action::ScaleOut | Action::ScaleIn)
    }

    /// Human-readable lines explaining the decision, most important last:
    /// the pressure seen (if any), how a scale-out step was sized (if one
    /// was), then the outcome. Nothing is formatted until displayed.
    pub fn explain(&self) -> impl Iterator<Item = Line<'_>> {
        let pressure = self.trigger.map(|_| Line::Pressure(self));
        let step = self.step.map(|_| Line::Step(self));
        pressure
            .into_iter()
            .chain(step)
            .chain(std::iter::once(Line::Outcome(self)))
    }
}

/// One line of a decision's explanation; see [`Decision::explain`].
#[derive(Debug, Clone, Copy)]
pub enum Line<'a> {
    /// The pressure that fired, e.g.
    /// `CRITICAL: resource overload (CPU 75.0%, Mem 80.0%)`.
    Pressure(&'a Decision),
    /// The step sizing, e.g.
    /// `Exponential scale-out: urgency=3, base=3, consecutive=1, growth=1.20x, step=3`.
    Step(&'a Decision),
    /// The outcome, e.g. `SCALE_OUT nodes=5->8 (+3)`.
    Outcome(&'a Decision),
}

fn pct(v: f64) -> Pct {
    Pct(v)
}

struct Pct(f64);

impl fmt::Display for Pct {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.1}%", self.0 * 100.0)
    }
}

struct OptPct(Option<f64>);

impl fmt::Display for OptPct {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(v) => Pct(v).fmt(f),
            None => f.write_str("n/a"),
        }
    }
}

fn ms(v: u64) -> String {
    if v.is_multiple_of(1000) {
        format!("{}s", v / 1000)
    } else {
        format!("{:.1}s", v as f64 / 1000.0)
    }
}

impl fmt::Display for Line<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Line::Pressure(d) => {
                let a = &d.aggregates;
                let level = match d.urgency {
                    Urgency::Critical => "CRITICAL",
                    Urgency::High => "HIGH",
                    Urgency::Moderate => "MODERATE",
                    Urgency::None => "NONE",
                };
                match d.trigger {
                    Some(Reason::ResourceOverload) => write!(
                        f,
                        "{level}: resource overload (CPU {}, Mem {})",
                        pct(a.avg_cpu),
                        pct(a.avg_mem)
                    ),
                    Some(Reason::HotspotDetected) => write!(
                        f,
                        "{level}: hotspot detected (max CPU {}, max Mem {})",
                        pct(a.max_cpu),
                        pct(a.max_mem)
                    ),
                    Some(Reason::CapacityExhausted) => write!(
                        f,
                        "{level}: capacity exhausted (connections {} of capacity, throughput {} of capacity)",
                        OptPct(a.conn_util),
                        OptPct(a.mps_util)
                    ),
                    Some(Reason::HighLatency) => write!(
                        f,
                        "{level}: high latency (p95 {:.0} ms, CPU {}, Mem {})",
                        a.avg_p95,
                        pct(a.avg_cpu),
                        pct(a.avg_mem)
                    ),
                    Some(Reason::KafkaBacklog) => write!(
                        f,
                        "{level}: kafka backlog (lag {:.0} ms, CPU {}, Mem {})",
                        a.avg_lag,
                        pct(a.avg_cpu),
                        pct(a.avg_mem)
                    ),
                    Some(Reason::MultiplePressureIndicators) => {
                        write!(
                            f,
                            "{level}: multiple pressure indicators ({} of 6:",
                            d.indicators.count()
                        )?;
                        for name in d.indicators.names() {
                            write!(f, " {name}")?;
                        }
                        f.write_str(")")
                    }
                    Some(other) => write!(f, "{level}: {other}"),
                    None => write!(f, "{level}: no pressure"),
                }
            }
            Line::Step(d) => {
                let Some(s) = d.step else {
                    return f.write_str("no scale-out step");
                };
                write!(
                    f,
                    "Exponential scale-out: urgency={}, base={}, consecutive={}, ",
                    d.urgency.level(),
                    s.base,
                    s.consecutive
                )?;
                match s.growth {
                    Some(g) => write!(f, "growth={g:.2}x, ")?,
                    None => f.write_str("growth=n/a, ")?,
                }
                write!(f, "step={}", s.step)
            }
            Line::Outcome(d) => match d.action {
                Action::Rebalance => {
                    write!(f, "REBALANCE nodes={}", d.from)?;
                    if let Some(r) = &d.rebalance {
                        write!(f, " spread={:.0} mean={:.1}:", r.spread, r.mean_conn)?;
                        for s in &r.sheds {
                            write!(f, " {} sheds {}", s.node, s.connections)?;
                        }
                    }
                    Ok(())
                }
                Action::ScaleOut => {
                    write!(f, "SCALE_OUT nodes={}->{} (+{})", d.from, d.to, d.delta())
                }
                Action::ScaleIn => {
                    write!(f, "SCALE_IN nodes={}->{} ({})", d.from, d.to, d.delta())?;
                    if let Some(v) = &d.victim {
                        write!(f, " victim={v}")?;
                    }
                    write!(f, " ({})", d.aggregates)
                }
                Action::Hold => {
                    write!(f, "HOLD nodes={} reason={}", d.from, d.reason)?;
                    match d.reason {
                        Reason::NoData => write!(
                            f,
                            " (no fresh node; stale={} draining={} invalid={})",
                            d.excluded.stale, d.excluded.draining, d.excluded.invalid
                        ),
                        Reason::IncompleteData => write!(
                            f,
                            " ({} of {} replicas fresh; stale={} draining={} invalid={})",
                            d.aggregates.n,
                            d.from,
                            d.excluded.stale,
                            d.excluded.draining,
                            d.excluded.invalid
                        ),
                        Reason::Settling => write!(
                            f,
                            " ({} of {} replicas reporting after the last scale-out)",
                            d.aggregates.n, d.from
                        ),
                        Reason::Stabilizing => match (d.low_for_ms, d.observation_gap_ms) {
                            (Some(low), Some(gap)) => write!(
                                f,
                                " (under-loaded for {}; restarted, last seen low {} ago)",
                                ms(low),
                                ms(gap)
                            ),
                            (Some(low), None) => write!(f, " (under-loaded for {})", ms(low)),
                            (None, _) => Ok(()),
                        },
                        _ => write!(f, " ({})", d.aggregates),
                    }
                }
            },
        }
    }
}
