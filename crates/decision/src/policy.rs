//! The policy: every threshold and window the decision core uses, typed and
//! validated once, before the first decision.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Every knob of the decision core. [`Policy::default`] is the documented
/// default policy; change fields, then hand the policy to
/// [`Engine::new`](crate::Engine::new), which validates it.
///
/// Durations are signed milliseconds so that a negative value coming from
/// configuration is reported as such instead of wrapping around.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// A heartbeat older than this is stale and its node is left out.
    pub stale_after_ms: i64,
    /// After a scale-out, hold while the new pods have not joined yet.
    pub settle_ms: i64,
    /// A scale-out within this window of the previous one is "recent" and
    /// may grow the step (`SCALE_OUT_WINDOW_MS`).
    pub scale_out_window_ms: i64,
    /// Minimum time between a scale-in and the previous scale-in or
    /// scale-out (`SCALE_IN_WINDOW_MS`).
    pub scale_in_window_ms: i64,
    /// How long the fleet must stay under-loaded, tick after tick, before it
    /// shrinks.
    pub scale_in_stabilization_ms: i64,
    /// Longest time between two observations that still counts as seeing
    /// the fleet on every tick. When the fleet was last seen low longer ago
    /// than this (ticks failed, no process was leading, or a resumed state
    /// is behind), the low clock restarts. Keep it above the caller's tick
    /// interval, with room for jitter: below it every tick is a gap and the
    /// fleet never scales in.
    pub max_observation_gap_ms: i64,
    /// Largest scale-out step (`MAX_SCALE_STEP`).
    pub max_step: u32,
    /// Fewest replicas the core will scale in to (`SOCKET_MIN_REPLICAS`).
    pub min_replicas: u32,
    /// Most replicas the core will scale out to (`SOCKET_MAX_REPLICAS`).
    pub max_replicas: u32,
    /// Connections one pod is sized for (`CONN_PER_POD`); unset disables the
    /// connection-utilisation terms.
    pub conn_capacity: Option<f64>,
    /// Messages per second one pod is sized for (`MPS_PER_POD`); unset
    /// disables the throughput-utilisation terms.
    pub mps_capacity: Option<f64>,
    /// CPU or memory fractions above this are treated as corrupt readings.
    pub max_valid_fraction: f64,
    /// Thresholds of the urgency rules.
    pub urgency: UrgencyThresholds,
    /// Thresholds of the scale-in rule.
    pub scale_in: ScaleInThresholds,
    /// Sizes of scale-out steps.
    pub step: StepPolicy,
    /// Moving connections off hot nodes once the fleet has settled; off by
    /// default.
    pub rebalance: RebalancePolicy,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            stale_after_ms: 15_000,
            settle_ms: 60_000,
            scale_out_window_ms: 180_000,
            scale_in_window_ms: 300_000,
            scale_in_stabilization_ms: 180_000,
            max_observation_gap_ms: 15_000,
            max_step: 5,
            min_replicas: 2,
            max_replicas: 50,
            conn_capacity: None,
            mps_capacity: None,
            max_valid_fraction: 2.0,
            urgency: UrgencyThresholds::default(),
            scale_in: ScaleInThresholds::default(),
            step: StepPolicy::default(),
            rebalance: RebalancePolicy::default(),
        }
    }
}

/// The rebalance rule (see the crate docs): when the fleet holds with every
/// replica reporting, nothing draining and no scaling settling, and the
/// connections of its nodes spread too far apart, the nodes above the mean
/// shed part of their excess.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RebalancePolicy {
    /// Whether the rule runs at all. Off, no decision differs from a core
    /// without it.
    pub enabled: bool,
    /// The spread (most minus fewest connections among fresh nodes) must be
    /// above this share of the mean...
    pub max_spread: f64,
    /// ...and above this many connections.
    pub min_spread_conns: f64,
    /// At most this share of the fleet's connections moves in one
    /// rebalance.
    pub max_share: f64,
    /// No rebalance within this long of the last one or of a scale-in, so
    /// no client is moved twice within it.
    pub window_ms: i64,
}

impl Default for RebalancePolicy {
    fn default() -> Self {
        Self {
            enabled: false,
            max_spread: 0.5,
            min_spread_conns: 50.0,
            max_share: 0.25,
            window_ms: 60_000,
        }
    }
}

/// Thresholds of the six urgency rules (see the crate docs for the rules).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UrgencyThresholds {
    /// Rule 1, critical: average CPU above this.
    pub overload_cpu: f64,
    /// Rule 1, critical: average memory above this.
    pub overload_mem: f64,
    /// Rule 2, critical: any one node's CPU above this.
    pub hotspot_cpu: f64,
    /// Rule 2, critical: any one node's memory above this.
    pub hotspot_mem: f64,
    /// Rule 3, critical: connection or throughput utilisation above this.
    pub capacity_util: f64,
    /// Rule 4, high: average p95 latency (ms) above this, under pressure.
    pub latency_p95_ms: f64,
    /// Rule 5, high: average Kafka lag (ms) above this, under pressure.
    pub backlog_lag_ms: f64,
    /// Rules 4 and 5 need average CPU above this (or memory above
    /// `pressure_gate_mem`): latency without resource pressure is not
    /// something more pods fix.
    pub pressure_gate_cpu: f64,
    /// See `pressure_gate_cpu`.
    pub pressure_gate_mem: f64,
    /// Rule 6 indicator: average CPU above this.
    pub pressure_cpu: f64,
    /// Rule 6 indicator: average memory above this.
    pub pressure_mem: f64,
    /// Rule 6 indicator: average p95 latency (ms) above this.
    pub pressure_p95_ms: f64,
    /// Rule 6 indicator: average Kafka lag (ms) above this.
    pub pressure_lag_ms: f64,
    /// Rule 6 indicator: connection or throughput utilisation above this.
    pub pressure_util: f64,
    /// Rule 6 fires when at least this many indicators hold (1..=6).
    pub pressure_min_indicators: u32,
}

impl Default for UrgencyThresholds {
    fn default() -> Self {
        Self {
            overload_cpu: 0.70,
            overload_mem: 0.75,
            hotspot_cpu: 0.85,
            hotspot_mem: 0.90,
            capacity_util: 0.90,
            latency_p95_ms: 500.0,
            backlog_lag_ms: 500.0,
            pressure_gate_cpu: 0.5,
            pressure_gate_mem: 0.5,
            pressure_cpu: 0.6,
            pressure_mem: 0.65,
            pressure_p95_ms: 300.0,
            pressure_lag_ms: 300.0,
            pressure_util: 0.75,
            pressure_min_indicators: 4,
        }
    }
}

/// Thresholds that make the fleet "low" (a candidate for scale-in).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScaleInThresholds {
    /// Average CPU below this.
    pub cpu: f64,
    /// Average memory below this.
    pub mem: f64,
    /// Average p95 latency (ms) below this.
    pub p95_ms: f64,
    /// Average Kafka lag (ms) below this.
    pub lag_ms: f64,
    /// CPU projected onto one node fewer stays below this.
    pub projected_cpu: f64,
    /// Memory projected onto one node fewer stays below this.
    pub projected_mem: f64,
    /// Connection and throughput utilisation projected onto one node fewer
    /// stay below this (where capacities are configured).
    pub projected_util: f64,
}

impl Default for ScaleInThresholds {
    fn default() -> Self {
        Self {
            cpu: 0.20,
            mem: 0.25,
            p95_ms: 250.0,
            lag_ms: 250.0,
            projected_cpu: 0.50,
            projected_mem: 0.55,
            projected_util: 0.50,
        }
    }
}

/// Scale-out step sizes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StepPolicy {
    /// Base step at critical urgency.
    pub base_critical: u32,
    /// Base step at high urgency.
    pub base_high: u32,
    /// Base step at moderate urgency.
    pub base_moderate: u32,
    /// Load growth since the last recent scale-out above this adds 2.
    pub strong_growth: f64,
    /// Load growth since the last recent scale-out above this adds 1.
    pub mild_growth: f64,
}

impl Default for StepPolicy {
    fn default() -> Self {
        Self {
            base_critical: 3,
            base_high: 2,
            base_moderate: 1,
            strong_growth: 1.5,
            mild_growth: 1.2,
        }
    }
}

/// A policy that cannot be used, with the field at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid policy: {field} = {value} ({allowed})")]
pub struct PolicyError {
    /// Dotted path of the offending field, e.g. `urgency.overload_cpu`.
    pub field: &'static str,
    /// The value that was given, as text.
    pub value: String,
    /// What the field accepts.
    pub allowed: String,
}

impl PolicyError {
    fn new(field: &'static str, value: impl fmt::Display, allowed: impl Into<String>) -> Self {
        Self {
            field,
            value: value.to_string(),
            allowed: allowed.into(),
        }
    }

    /// A short, bounded label for metrics.
    pub fn label(&self) -> &'static str {
        "invalid_policy"
    }
}

fn positive_duration(field: &'static str, v: i64) -> Result<(), PolicyError> {
    if v <= 0 {
        return Err(PolicyError::new(
            field,
            v,
            "a duration in milliseconds, more than 0",
        ));
    }
    Ok(())
}

fn duration(field: &'static str, v: i64) -> Result<(), PolicyError> {
    if v < 0 {
        return Err(PolicyError::new(
            field,
            v,
            "a duration in milliseconds, 0 or more",
        ));
    }
    Ok(())
}

fn non_negative(field: &'static str, v: f64) -> Result<(), PolicyError> {
    if !v.is_finite() || v < 0.0 {
        return Err(PolicyError::new(field, v, "a finite number, 0 or more"));
    }
    Ok(())
}

fn positive_count(field: &'static str, v: u32) -> Result<(), PolicyError> {
    if v == 0 {
        return Err(PolicyError::new(field, v, "a whole number, 1 or more"));
    }
    Ok(())
}

impl Policy {
    /// Checks every field; the error names the first field that is wrong.
    pub fn validate(&self) -> Result<(), PolicyError> {
        positive_duration("stale_after_ms", self.stale_after_ms)?;
        duration("settle_ms", self.settle_ms)?;
        duration("scale_out_window_ms", self.scale_out_window_ms)?;
        duration("scale_in_window_ms", self.scale_in_window_ms)?;
        duration("scale_in_stabilization_ms", self.scale_in_stabilization_ms)?;
        positive_duration("max_observation_gap_ms", self.max_observation_gap_ms)?;
        positive_count("max_step", self.max_step)?;
        positive_count("min_replicas", self.min_replicas)?;
        if self.max_replicas < self.min_replicas {
            return Err(PolicyError::new(
                "max_replicas",
                self.max_replicas,
                format!("at least min_replicas ({})", self.min_replicas),
            ));
        }
        for (field, cap) in [
            ("conn_capacity", self.conn_capacity),
            ("mps_capacity", self.mps_capacity),
        ] {
            if let Some(c) = cap
                && (!c.is_finite() || c <= 0.0)
            {
                return Err(PolicyError::new(
                    field,
                    c,
                    "unset, or a finite number more than 0",
                ));
            }
        }
        if !self.max_valid_fraction.is_finite() || self.max_valid_fraction <= 0.0 {
            return Err(PolicyError::new(
                "max_valid_fraction",
                self.max_valid_fraction,
                "a finite number more than 0",
            ));
        }

        let r = &self.rebalance;
        non_negative("rebalance.max_spread", r.max_spread)?;
        non_negative("rebalance.min_spread_conns", r.min_spread_conns)?;
        if !r.max_share.is_finite() || r.max_share <= 0.0 || r.max_share > 1.0 {
            return Err(PolicyError::new(
                "rebalance.max_share",
                r.max_share,
                "a share of the connections, more than 0 and at most 1",
            ));
        }
        positive_duration("rebalance.window_ms", r.window_ms)?;

        let u = &self.urgency;
        for (field, v) in [
            ("urgency.overload_cpu", u.overload_cpu),
            ("urgency.overload_mem", u.overload_mem),
            ("urgency.hotspot_cpu", u.hotspot_cpu),
            ("urgency.hotspot_mem", u.hotspot_mem),
            ("urgency.capacity_util", u.capacity_util),
            ("urgency.latency_p95_ms", u.latency_p95_ms),
            ("urgency.backlog_lag_ms", u.backlog_lag_ms),
            ("urgency.pressure_gate_cpu", u.pressure_gate_cpu),
            ("urgency.pressure_gate_mem", u.pressure_gate_mem),
            ("urgency.pressure_cpu", u.pressure_cpu),
            ("urgency.pressure_mem", u.pressure_mem),
            ("urgency.pressure_p95_ms", u.pressure_p95_ms),
            ("urgency.pressure_lag_ms", u.pressure_lag_ms),
            ("urgency.pressure_util", u.pressure_util),
        ] {
            non_negative(field, v)?;
        }
        if !(1..=6).contains(&u.pressure_min_indicators) {
            return Err(PolicyError::new(
                "urgency.pressure_min_indicators",
                u.pressure_min_indicators,
                "a whole number from 1 to 6",
            ));
        }

        let s = &self.scale_in;
        for (field, v) in [
            ("scale_in.cpu", s.cpu),
            ("scale_in.mem", s.mem),
            ("scale_in.p95_ms", s.p95_ms),
            ("scale_in.lag_ms", s.lag_ms),
            ("scale_in.projected_cpu", s.projected_cpu),
            ("scale_in.projected_mem", s.projected_mem),
            ("scale_in.projected_util", s.projected_util),
        ] {
            non_negative(field, v)?;
        }

        let st = &self.step;
        positive_count("step.base_critical", st.base_critical)?;
        positive_count("step.base_high", st.base_high)?;
        positive_count("step.base_moderate", st.base_moderate)?;
        non_negative("step.mild_growth", st.mild_growth)?;
        non_negative("step.strong_growth", st.strong_growth)?;
        if st.strong_growth < st.mild_growth {
            return Err(PolicyError::new(
                "step.strong_growth",
                st.strong_growth,
                format!("at least step.mild_growth ({})", st.mild_growth),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_is_valid() {
        assert_eq!(Policy::default().validate(), Ok(()));
    }

    #[test]
    fn min_above_max_names_the_field() {
        let p = Policy {
            min_replicas: 10,
            max_replicas: 3,
            ..Policy::default()
        };
        let err = p.validate().expect_err("min > max must be refused");
        assert_eq!(err.field, "max_replicas");
        assert_eq!(
            err.to_string(),
            "invalid policy: max_replicas = 3 (at least min_replicas (10))"
        );
    }

    #[test]
    fn a_gap_bound_of_zero_or_less_is_refused() {
        for v in [0, -1] {
            let p = Policy {
                max_observation_gap_ms: v,
                ..Policy::default()
            };
            let err = p.validate().expect_err("no gap bound must be refused");
            assert_eq!(
                err.to_string(),
                format!(
                    "invalid policy: max_observation_gap_ms = {v} (a duration in milliseconds, more than 0)"
                )
            );
        }
    }

    #[test]
    fn negative_window_names_the_field() {
        let p = Policy {
            scale_in_window_ms: -1,
            ..Policy::default()
        };
        let err = p.validate().expect_err("negative window must be refused");
        assert_eq!(err.field, "scale_in_window_ms");
        assert!(err.to_string().contains("0 or more"), "{err}");
    }

    #[test]
    fn every_bad_field_is_named() {
        let cases: Vec<(Policy, &str)> = vec![
            (
                Policy {
                    stale_after_ms: 0,
                    ..Policy::default()
                },
                "stale_after_ms",
            ),
            (
                Policy {
                    settle_ms: -5,
                    ..Policy::default()
                },
                "settle_ms",
            ),
            (
                Policy {
                    scale_out_window_ms: -5,
                    ..Policy::default()
                },
                "scale_out_window_ms",
            ),
            (
                Policy {
                    scale_in_stabilization_ms: -5,
                    ..Policy::default()
                },
                "scale_in_stabilization_ms",
            ),
            (
                Policy {
                    max_observation_gap_ms: 0,
                    ..Policy::default()
                },
                "max_observation_gap_ms",
            ),
            (
                Policy {
                    max_step: 0,
                    ..Policy::default()
                },
                "max_step",
            ),
            (
                Policy {
                    min_replicas: 0,
                    ..Policy::default()
                },
                "min_replicas",
            ),
            (
                Policy {
                    conn_capacity: Some(0.0),
                    ..Policy::default()
                },
                "conn_capacity",
            ),
            (
                Policy {
                    mps_capacity: Some(f64::NAN),
                    ..Policy::default()
                },
                "mps_capacity",
            ),
            (
                Policy {
                    max_valid_fraction: -1.0,
                    ..Policy::default()
                },
                "max_valid_fraction",
            ),
            (
                Policy {
                    urgency: UrgencyThresholds {
                        overload_cpu: f64::INFINITY,
                        ..UrgencyThresholds::default()
                    },
                    ..Policy::default()
                },
                "urgency.overload_cpu",
            ),
            (
                Policy {
                    urgency: UrgencyThresholds {
                        pressure_min_indicators: 7,
                        ..UrgencyThresholds::default()
                    },
                    ..Policy::default()
                },
                "urgency.pressure_min_indicators",
            ),
            (
                Policy {
                    scale_in: ScaleInThresholds {
                        projected_mem: -0.1,
                        ..ScaleInThresholds::default()
                    },
                    ..Policy::default()
                },
                "scale_in.projected_mem",
            ),
            (
                Policy {
                    step: StepPolicy {
                        base_high: 0,
                        ..StepPolicy::default()
                    },
                    ..Policy::default()
                },
                "step.base_high",
            ),
            (
                Policy {
                    step: StepPolicy {
                        strong_growth: 1.0,
                        ..StepPolicy::default()
                    },
                    ..Policy::default()
                },
                "step.strong_growth",
            ),
        ];
        for (p, field) in cases {
            let err = p.validate().expect_err(field);
            assert_eq!(err.field, field);
        }
    }

    #[test]
    fn policy_round_trips_through_serde_and_rejects_unknown_fields() {
        let p = Policy {
            conn_capacity: Some(1000.0),
            ..Policy::default()
        };
        let text = serde_json::to_string(&p).expect("serialize");
        let back: Policy = serde_json::from_str(&text).expect("deserialize");
        assert_eq!(back, p);
        let partial: Policy =
            serde_json::from_str(r#"{"max_step":2,"urgency":{"overload_cpu":0.8}}"#)
                .expect("partial policy");
        assert_eq!(partial.max_step, 2);
        assert_eq!(partial.urgency.overload_cpu, 0.8);
        assert_eq!(partial.urgency.overload_mem, 0.75);
        assert_eq!(partial.max_observation_gap_ms, 15_000);
        assert!(serde_json::from_str::<Policy>(r#"{"max_stpe":2}"#).is_err());
    }
}
