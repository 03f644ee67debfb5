//! The command line and the environment, validated once at start into the
//! typed configurations the crates take. A bad value stops the binary with
//! a message naming the key, the value and what is allowed.

use crate::args::{PolicyArgs, RunArgs};
use anyhow::{Context, anyhow, bail};
use rtc_autoscaler::LoopConfig;
use rtc_decision::{Engine, Policy};
use rtc_heartbeat::IngestorConfig;
use rtc_leader::ElectionConfig;
use rtc_workload::ScalerConfig;
use std::net::SocketAddr;
use std::time::Duration;

/// Everything validated, before anything connects.
pub(crate) struct Settings {
    pub(crate) identity: String,
    pub(crate) admin: SocketAddr,
    pub(crate) kafka: Vec<String>,
    pub(crate) election: ElectionConfig,
    pub(crate) scaler: ScalerConfig,
    pub(crate) engine: Engine,
    pub(crate) ingest: IngestorConfig,
    pub(crate) looping: LoopConfig,
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn positive(key: &str, v: u64) -> anyhow::Result<()> {
    if v == 0 {
        bail!(
            "bad setting {key}: value 0 is not allowed; allowed: a whole number of milliseconds, 1 or more"
        );
    }
    Ok(())
}

pub(crate) fn settings(a: &RunArgs) -> anyhow::Result<Settings> {
    let policy = policy(&a.policy)?;
    let identity = match &a.identity {
        Some(id) if !id.trim().is_empty() => id.clone(),
        _ => std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).context(
            "bad setting POD_NAME: it is unset and so is HOSTNAME; allowed: this replica's unique name (the pod name)",
        )?,
    };
    let admin: SocketAddr = a.admin_addr.parse().map_err(|e| {
        anyhow!(
            "bad setting ADMIN_ADDR: value {:?} is not allowed ({e}); allowed: IP:PORT, e.g. 0.0.0.0:8080",
            a.admin_addr
        )
    })?;
    positive("TICK_INTERVAL_MS", a.tick_interval_ms)?;
    positive("RETRY_PERIOD_MS", a.retry_period_ms)?;
    let kafka = rtc_signal_kafka::parse_bootstrap(&a.kafka_bootstrap)
        .map_err(|e| anyhow!("bad setting KAFKA_BOOTSTRAP: {e}"))?;
    let election = ElectionConfig::new(identity.clone()).with_timing(
        ms(a.lease_duration_ms),
        ms(a.renew_deadline_ms),
        ms(a.retry_period_ms),
    );
    election.validate().map_err(|e| {
        anyhow!(
            "bad setting LEASE_DURATION_MS / RENEW_DEADLINE_MS / RETRY_PERIOD_MS ({} / {} / {}): {e}",
            a.lease_duration_ms,
            a.renew_deadline_ms,
            a.retry_period_ms
        )
    })?;
    let scaler = ScalerConfig::new(a.workload.clone(), policy.min_replicas, policy.max_replicas)
        .map_err(|e| anyhow!("{e}"))?;
    let ingest = IngestorConfig {
        stale_after: ms(u64::try_from(policy.stale_after_ms).unwrap_or(0)),
        ..IngestorConfig::default()
    };
    ingest
        .validate()
        .map_err(|e| anyhow!("bad heartbeat setting: {e}"))?;
    let looping = LoopConfig {
        tick_interval: ms(a.tick_interval_ms),
        safety_margin: ms(a.safety_margin_ms),
        shutdown_timeout: ms(a.shutdown_timeout_ms),
    };
    let engine = Engine::new(policy).map_err(|e| anyhow!("{e}"))?;
    Ok(Settings {
        identity,
        admin,
        kafka,
        election,
        scaler,
        engine,
        ingest,
        looping,
    })
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

/// The decision policy: the file's (or the defaults), then the flags.
pub(crate) fn policy(a: &PolicyArgs) -> anyhow::Result<Policy> {
    let mut p = match &a.policy_file {
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
    p.min_replicas = a.min_replicas.unwrap_or(p.min_replicas);
    p.max_replicas = a.max_replicas.unwrap_or(p.max_replicas);
    p.max_step = a.max_step.unwrap_or(p.max_step);
    p.scale_out_window_ms = a.scale_out_window_ms.unwrap_or(p.scale_out_window_ms);
    p.scale_in_window_ms = a.scale_in_window_ms.unwrap_or(p.scale_in_window_ms);
    p.scale_in_stabilization_ms = a
        .scale_in_stabilization_ms
        .unwrap_or(p.scale_in_stabilization_ms);
    p.settle_ms = a.settle_ms.unwrap_or(p.settle_ms);
    p.stale_after_ms = a.stale_after_ms.unwrap_or(p.stale_after_ms);
    p.conn_capacity = a.conn_per_pod.or(p.conn_capacity);
    p.mps_capacity = a.mps_per_pod.or(p.mps_capacity);
    if let Err(e) = p.validate() {
        let source = SOURCES
            .iter()
            .find(|(field, _)| *field == e.field)
            .map(|(_, key)| (*key).to_string())
            .or_else(|| {
                a.policy_file
                    .as_ref()
                    .map(|f| format!("field `{}` of {}", e.field, f.display()))
            })
            .unwrap_or_else(|| format!("policy field `{}`", e.field));
        bail!(
            "bad decision policy setting {source}: value {} is not allowed; allowed: {}",
            e.value,
            e.allowed
        );
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Run {
        #[command(flatten)]
        run: RunArgs,
    }

    #[derive(Debug, Parser)]
    struct Decide {
        #[command(flatten)]
        policy: PolicyArgs,
    }

    fn run_settings(args: &[&str]) -> anyhow::Result<Settings> {
        let cli = Run::try_parse_from(
            ["x", "--identity", "lb-0"]
                .into_iter()
                .chain(args.iter().copied()),
        )?;
        settings(&cli.run)
    }

    fn parse(args: &[&str]) -> anyhow::Result<Policy> {
        let cli = Decide::try_parse_from(std::iter::once("x").chain(args.iter().copied()))?;
        policy(&cli.policy)
    }

    #[test]
    fn defaults_are_valid() {
        let s = run_settings(&[]).expect("defaults");
        assert_eq!(s.identity, "lb-0");
        assert!(s.kafka.is_empty());
        assert_eq!(s.election.lease_duration, Duration::from_secs(15));
        assert_eq!(s.looping, LoopConfig::default());
    }

    #[test]
    fn bad_values_name_the_key() {
        for (args, key) in [
            (vec!["--tick-interval-ms", "0"], "TICK_INTERVAL_MS"),
            (vec!["--admin-addr", "nowhere"], "ADMIN_ADDR"),
            (vec!["--kafka-bootstrap", "broker"], "KAFKA_BOOTSTRAP"),
            (vec!["--renew-deadline-ms", "20000"], "RENEW_DEADLINE_MS"),
            (vec!["--min-replicas", "0"], "SOCKET_MIN_REPLICAS"),
        ] {
            let err = run_settings(&args)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(key), "{args:?}: {err}");
        }
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
