//! The command line: every flag, with the environment key that can set it.
//! Definitions, and their hand-over to `rtc-balancer`, which validates them.

use clap::{Args, Parser, Subcommand, ValueEnum};
use rtc_balancer::{PolicyInput, RawSettings};
use rtc_telemetry::LogFormat;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "load-balancer", version, about, long_about = None)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the load-balancer: ingest heartbeats and, as the Lease holder,
    /// scale the socket workload.
    Run(Box<RunArgs>),
    /// Replay JSON lines of observations through the decision core and print
    /// each decision (offline; no cluster needed).
    Decide(Box<DecideArgs>),
}

/// The load-balancer's settings. Each flag can also be set through the
/// environment key shown.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// This replica's identity in the Lease (the pod name).
    #[arg(long, env = "POD_NAME", value_name = "NAME")]
    pub(crate) identity: Option<String>,

    /// Namespace of the socket workload and of the Lease.
    #[arg(
        long,
        env = "KUBERNETES_NAMESPACE",
        default_value = "rtc",
        value_name = "NS"
    )]
    pub(crate) namespace: String,

    /// Name of the socket Deployment or StatefulSet (the kind is detected).
    #[arg(
        long,
        env = "SOCKET_WORKLOAD_NAME",
        default_value = "socket",
        value_name = "NAME"
    )]
    pub(crate) workload: String,

    /// Redis holding heartbeats and the decision state.
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        value_name = "URL"
    )]
    pub(crate) redis_url: String,

    /// Kafka bootstrap servers (comma-separated) for scaling signals on
    /// `rtc.control.scale`; empty disables them.
    #[arg(
        long,
        env = "KAFKA_BOOTSTRAP",
        default_value = "",
        value_name = "HOST:PORT,..."
    )]
    pub(crate) kafka_bootstrap: String,

    /// Key prefix of the heartbeats in Redis.
    #[arg(
        long,
        env = "HEARTBEAT_PREFIX",
        default_value = "rtc:hb:",
        value_name = "PREFIX"
    )]
    pub(crate) heartbeat_prefix: String,

    /// Redis key of the stored decision state.
    #[arg(
        long,
        env = "DECISION_STATE_KEY",
        default_value = "rtc:lb:decision-state",
        value_name = "KEY"
    )]
    pub(crate) state_key: String,

    /// Time between two scaling ticks of the leader, ms (or with a unit: 5s, 1m).
    #[arg(
        long,
        env = "TICK_INTERVAL_MS",
        default_value = "5000",
        value_name = "MS"
    )]
    pub(crate) tick_interval_ms: String,

    /// Name of the Lease the replicas compete for.
    #[arg(
        long,
        env = "LEASE_NAME",
        default_value = "rtc-load-balancer",
        value_name = "NAME"
    )]
    pub(crate) lease_name: String,

    /// How long others wait on an unrenewed Lease before taking it, ms (or with a unit: 5s, 1m).
    #[arg(
        long,
        env = "LEASE_DURATION_MS",
        default_value = "15000",
        value_name = "MS"
    )]
    pub(crate) lease_duration_ms: String,

    /// How long a leader keeps trying to renew before stepping down, ms (or with a unit: 5s, 1m).
    #[arg(
        long,
        env = "RENEW_DEADLINE_MS",
        default_value = "10000",
        value_name = "MS"
    )]
    pub(crate) renew_deadline_ms: String,

    /// Time between two acquire or renew attempts, ms (or with a unit: 5s, 1m).
    #[arg(
        long,
        env = "RETRY_PERIOD_MS",
        default_value = "2000",
        value_name = "MS"
    )]
    pub(crate) retry_period_ms: String,

    /// Lease time that must be left before a write, ms (or with a unit: 5s, 1m).
    #[arg(
        long,
        env = "LEADER_SAFETY_MARGIN_MS",
        default_value = "2000",
        value_name = "MS"
    )]
    pub(crate) safety_margin_ms: String,

    /// Address of the admin HTTP port (/healthz, /readyz, /metrics, /decisions).
    #[arg(
        long,
        env = "ADMIN_ADDR",
        default_value = "0.0.0.0:8080",
        value_name = "ADDR"
    )]
    pub(crate) admin_addr: String,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub(crate) log_format: LogFormat,

    /// Decisions kept for the /decisions endpoint.
    #[arg(
        long,
        env = "DECISION_HISTORY",
        default_value_t = 100,
        value_name = "N"
    )]
    pub(crate) decision_history: usize,

    /// How long shutdown may take (finishing a tick, releasing the Lease), ms (or with a unit: 5s, 1m).
    #[arg(
        long,
        env = "SHUTDOWN_TIMEOUT_MS",
        default_value = "10000",
        value_name = "MS"
    )]
    pub(crate) shutdown_timeout_ms: String,

    /// The socket pods' admin port, where rebalances send their sheds.
    #[arg(
        long,
        env = "SOCKET_ADMIN_PORT",
        default_value_t = 8080,
        value_name = "PORT"
    )]
    pub(crate) socket_admin_port: u16,

    /// The socket nodes' ADMIN_TOKEN, sent with each shed; needed when rebalancing is on.
    #[arg(
        long,
        env = "SOCKET_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub(crate) socket_admin_token: Option<String>,

    /// The time each hot node spreads a rebalance's moves over, ms (or with a unit: 20s).
    #[arg(
        long,
        env = "REBALANCE_SHED_WINDOW_MS",
        default_value = "20000",
        value_name = "MS"
    )]
    pub(crate) shed_window_ms: String,

    #[command(flatten)]
    pub(crate) policy: PolicyArgs,
}

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

    /// A scale-out this soon after the previous one may grow the step, ms or with a unit [default: 180000].
    #[arg(
        long,
        env = "SCALE_OUT_WINDOW_MS",
        value_name = "MS",
        allow_negative_numbers = true
    )]
    pub(crate) scale_out_window_ms: Option<String>,

    /// Minimum time between a scale-in and the previous scaling, ms or with a unit [default: 300000].
    #[arg(
        long,
        env = "SCALE_IN_WINDOW_MS",
        value_name = "MS",
        allow_negative_numbers = true
    )]
    pub(crate) scale_in_window_ms: Option<String>,

    /// How long the fleet must stay under-loaded before a scale-in, ms or with a unit [default: 180000].
    #[arg(
        long,
        env = "SCALE_IN_STABILIZATION_MS",
        value_name = "MS",
        allow_negative_numbers = true
    )]
    pub(crate) scale_in_stabilization_ms: Option<String>,

    /// Hold after a scale-out while new pods join, ms or with a unit [default: 60000].
    #[arg(
        long,
        env = "SETTLE_MS",
        value_name = "MS",
        allow_negative_numbers = true
    )]
    pub(crate) settle_ms: Option<String>,

    /// A heartbeat older than this is stale, ms or with a unit [default: 15000].
    #[arg(
        long,
        env = "STALE_AFTER_MS",
        value_name = "MS",
        allow_negative_numbers = true
    )]
    pub(crate) stale_after_ms: Option<String>,

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

    /// Moves clients from hot nodes to the others after a scale-out (true or false) [default: false].
    #[arg(
        long,
        env = "REBALANCE",
        value_name = "BOOL",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub(crate) rebalance: Option<bool>,

    /// No rebalance within this long of the last one, so no client moves twice in it, ms or with a unit [default: 60000].
    #[arg(
        long,
        env = "REBALANCE_WINDOW_MS",
        value_name = "MS",
        allow_negative_numbers = true
    )]
    pub(crate) rebalance_window_ms: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// One JSON object per input line, in the replay format.
    Json,
    /// A readable timeline: every scaling decision with its explanation,
    /// and every change of hold reason.
    Timeline,
}

#[derive(Debug, Args)]
pub(crate) struct DecideArgs {
    /// JSON-lines file to replay; `-` or nothing reads standard input.
    #[arg(value_name = "FILE")]
    pub(crate) input: Option<PathBuf>,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub(crate) format: Format,

    #[command(flatten)]
    pub(crate) policy: PolicyArgs,
}

impl RunArgs {
    /// The settings as given, with `hostname` (HOSTNAME) as the fallback
    /// identity.
    pub(crate) fn raw(&self, hostname: Option<String>) -> RawSettings {
        RawSettings {
            identity: self.identity.clone(),
            hostname,
            namespace: self.namespace.clone(),
            workload: self.workload.clone(),
            redis_url: self.redis_url.clone(),
            kafka_bootstrap: self.kafka_bootstrap.clone(),
            heartbeat_prefix: self.heartbeat_prefix.clone(),
            state_key: self.state_key.clone(),
            lease_name: self.lease_name.clone(),
            tick_interval: self.tick_interval_ms.clone(),
            lease_duration: self.lease_duration_ms.clone(),
            renew_deadline: self.renew_deadline_ms.clone(),
            retry_period: self.retry_period_ms.clone(),
            safety_margin: self.safety_margin_ms.clone(),
            shutdown_timeout: self.shutdown_timeout_ms.clone(),
            admin_addr: self.admin_addr.clone(),
            decision_history: self.decision_history,
            socket_admin_port: self.socket_admin_port,
            socket_admin_token: self.socket_admin_token.clone(),
            shed_window: self.shed_window_ms.clone(),
            policy: self.policy.input(),
        }
    }
}

impl PolicyArgs {
    /// The policy settings as given.
    pub(crate) fn input(&self) -> PolicyInput {
        PolicyInput {
            policy_file: self.policy_file.clone(),
            min_replicas: self.min_replicas,
            max_replicas: self.max_replicas,
            max_step: self.max_step,
            scale_out_window: self.scale_out_window_ms.clone(),
            scale_in_window: self.scale_in_window_ms.clone(),
            scale_in_stabilization: self.scale_in_stabilization_ms.clone(),
            settle: self.settle_ms.clone(),
            stale_after: self.stale_after_ms.clone(),
            conn_per_pod: self.conn_per_pod,
            mps_per_pod: self.mps_per_pod,
            rebalance: self.rebalance,
            rebalance_window: self.rebalance_window_ms.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use rtc_autoscaler::LoopConfig;
    use rtc_balancer::Settings;
    use rtc_decision::Policy;
    use std::time::Duration;

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
        Ok(cli.run.raw(None).validate()?)
    }

    fn parse(args: &[&str]) -> anyhow::Result<Policy> {
        let cli = Decide::try_parse_from(std::iter::once("x").chain(args.iter().copied()))?;
        Ok(cli.policy.input().policy()?)
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
        assert!(msg.contains("whole number of milliseconds"), "{msg}");
    }

    #[test]
    fn windows_and_lease_timing_take_units() {
        let p = parse(&["--scale-in-window-ms", "10m", "--settle-ms", "30000"]).expect("valid");
        assert_eq!((p.scale_in_window_ms, p.settle_ms), (600_000, 30_000));
        let s = run_settings(&["--lease-duration-ms", "20s", "--renew-deadline-ms", "12s"])
            .expect("valid");
        assert_eq!(s.election.lease_duration, Duration::from_secs(20));
        assert_eq!(s.election.renew_deadline, Duration::from_secs(12));
    }

    #[test]
    fn min_above_max_is_refused_naming_the_key() {
        let err = parse(&["--min-replicas", "9", "--max-replicas", "4"]).expect_err("min > max");
        let msg = err.to_string();
        assert!(msg.contains("SOCKET_MAX_REPLICAS"), "{msg}");
        assert!(msg.contains("at least min_replicas (9)"), "{msg}");
    }
}
