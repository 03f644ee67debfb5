//! The decision policy from flags and the environment keys operators use.

use anyhow::{Context, bail};
use clap::Args;
use rtc_decision::{Policy, PolicyError};
use std::path::PathBuf;

/// Decision-policy settings. Each flag can also be set through the
/// environment key shown; unset values keep the policy's defaults.
#[derive(Debug, Clone, Args)]
pub(crate) struct PolicyArgs {
    /// A JSON file with a full or partial policy (every threshold); the
    /// flags below override it.
    #[arg(long, env = "DECISION_POLICY_FILE", value_name = "FILE")]
    pub(crate) policy_file: Option<PathBuf>,

    /// Fewest replicas the fleet is scaled in to [default: 2].
    #[arg(long, env = "SOCKET_MIN_REPLICAS", value_name = "N")]
    pub(crate) min_replicas: Option<u32>,

    /// Most replicas the fleet is scaled out to [default: 50].
    #[arg(long, env = "SOCKET_MAX_REPLICAS", value_name = "N")]
    pub(crate) max_replicas: Option<u32>,

    /// Largest scale-out step [default: 5].
    #[arg(long, env = "MAX_SCALE_STEP", value_name = "N")]
    pub(crate) max_step: Option<u32>,

    /// A scale-out this soon after the previous one may grow the step, in ms [default: 180000].
    #[arg(
        long,
        env = "SCALE_OUT_WINDOW_MS",
        value_name = "MS",
        allow_negative_numbers = true
    )]
    pub(crate) scale_out_window_ms: Option<i64>,

    /// Minimum time between a scale-in and the previous scaling, in ms [default: 300000].
    #[arg(
        long,
        env = "SCALE_IN_WINDOW_MS",
        value_name = "MS",
        allow_negative_numbers = true
    )]
    pub(crate) scale_in_window_ms: Option<i64>,

    /// How long the fleet must stay under-loaded before a scale-in, in ms [default: 180000].
    #[arg(
        long,
        env = "SCALE_IN_STABILIZATION_MS",
        value_name = "MS",
        allow_negative_numbers = true
    )]
    pub(crate) scale_in_stabilization_ms: Option<i64>,

    /// Hold after a scale-out while new pods join, in ms [default: 60000].
    #[arg(
        long,
        env = "SETTLE_MS",
        value_name = "MS",
        allow_negative_numbers = true
    )]
    pub(crate) settle_ms: Option<i64>,

    /// A heartbeat older than this is stale, in ms [default: 15000].
    #[arg(
        long,
        env = "STALE_AFTER_MS",
        value_name = "MS",
        allow_negative_numbers = true
    )]
    pub(crate) stale_after_ms: Option<i64>,

    /// Connections one pod is sized for; enables the connection-utilisation rules [default: unset].
    #[arg(
        long,
        env = "CONN_PER_POD",
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub(crate) conn_per_pod: Option<f64>,

    /// Messages per second one pod is sized for; enables the throughput-utilisation rules [default: unset].
    #[arg(
        long,
        env = "MPS_PER_POD",
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub(crate) mps_per_pod: Option<f64>,
}

/// Where each policy field comes from, for error messages.
const SOURCES: &[(&str, &str)] = &[
    ("min_replicas", "SOCKET_MIN_REPLICAS / --min-replicas"),
    ("max_replicas", "SOCKET_MAX_REPLICAS / --max-replicas"),
    ("max_step", "MAX_SCALE_STEP / --max-step"),
    (
        "scale_out_window_ms",
        "SCALE_OUT_WINDOW_MS / --scale-out-window-ms",
    ),
    (
        "scale_in_window_ms",
        "SCALE_IN_WINDOW_MS / --scale-in-window-ms",
    ),
    (
        "scale_in_stabilization_ms",
        "SCALE_IN_STABILIZATION_MS / --scale-in-stabilization-ms",
    ),
    ("settle_ms", "SETTLE_MS / --settle-ms"),
    ("stale_after_ms", "STALE_AFTER_MS / --stale-after-ms"),
    ("conn_capacity", "CONN_PER_POD / --conn-per-pod"),
    ("mps_capacity", "MPS_PER_POD / --mps-per-pod"),
];

/// Names the setting behind a policy error, so the operator knows what to fix.
pub(crate) fn describe(err: &PolicyError, file: Option<&PathBuf>) -> String {
    let source = SOURCES
        .iter()
        .find(|(field, _)| *field == err.field)
        .map(|(_, key)| (*key).to_string())
        .or_else(|| file.map(|f| format!("field `{}` of {}", err.field, f.display())))
        .unwrap_or_else(|| format!("policy field `{}`", err.field));
    format!(
        "bad decision policy setting {source}: value {} is not allowed; allowed: {}",
        err.value, err.allowed
    )
}

impl PolicyArgs {
    /// Builds and validates the policy.
    pub(crate) fn policy(&self) -> anyhow::Result<Policy> {
        let mut p = match &self.policy_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading policy file {}", path.display()))?;
                serde_json::from_str::<Policy>(&text).with_context(|| {
                    format!(
                        "policy file {} is not a valid policy (JSON object with the fields of the decision policy)",
                        path.display()
                    )
                })?
            }
            None => Policy::default(),
        };
        if let Some(v) = self.min_replicas {
            p.min_replicas = v;
        }
        if let Some(v) = self.max_replicas {
            p.max_replicas = v;
        }
        if let Some(v) = self.max_step {
            p.max_step = v;
        }
        if let Some(v) = self.scale_out_window_ms {
            p.scale_out_window_ms = v;
        }
        if let Some(v) = self.scale_in_window_ms {
            p.scale_in_window_ms = v;
        }
        if let Some(v) = self.scale_in_stabilization_ms {
            p.scale_in_stabilization_ms = v;
        }
        if let Some(v) = self.settle_ms {
            p.settle_ms = v;
        }
        if let Some(v) = self.stale_after_ms {
            p.stale_after_ms = v;
        }
        if self.conn_per_pod.is_some() {
            p.conn_capacity = self.conn_per_pod;
        }
        if self.mps_per_pod.is_some() {
            p.mps_capacity = self.mps_per_pod;
        }
        if let Err(e) = p.validate() {
            bail!(describe(&e, self.policy_file.as_ref()));
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        policy: PolicyArgs,
    }

    fn parse(args: &[&str]) -> anyhow::Result<Policy> {
        let cli = Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied()))?;
        cli.policy.policy()
    }

    #[test]
    fn flags_override_defaults() {
        let p = parse(&[
            "--min-replicas",
            "3",
            "--max-replicas",
            "7",
            "--conn-per-pod",
            "1000",
        ])
        .expect("valid policy");
        assert_eq!((p.min_replicas, p.max_replicas), (3, 7));
        assert_eq!(p.conn_capacity, Some(1000.0));
        assert_eq!(p.max_step, 5);
    }

    #[test]
    fn negative_window_is_refused_naming_the_key() {
        let err = parse(&["--scale-in-window-ms", "-5"]).expect_err("negative window");
        let msg = err.to_string();
        assert!(msg.contains("SCALE_IN_WINDOW_MS"), "{msg}");
        assert!(msg.contains("-5"), "{msg}");
        assert!(msg.contains("0 or more"), "{msg}");
    }

    #[test]
    fn min_above_max_is_refused_naming_the_key() {
        let err = parse(&["--min-replicas", "9", "--max-replicas", "4"]).expect_err("min > max");
        let msg = err.to_string();
        assert!(msg.contains("SOCKET_MAX_REPLICAS"), "{msg}");
        assert!(msg.contains("at least min_replicas (9)"), "{msg}");
    }
}
