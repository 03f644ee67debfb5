//! The command line: every flag, with the environment key that can set it.
//! Definitions only; [`crate::settings`] validates them.

use clap::{Args, Parser, Subcommand, ValueEnum};
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
    Decide(DecideArgs),
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

    /// Time between two scaling ticks of the leader, in ms.
    #[arg(
        long,
        env = "TICK_INTERVAL_MS",
        default_value_t = 5_000,
        value_name = "MS"
    )]
    pub(crate) tick_interval_ms: u64,

    /// Name of the Lease the replicas compete for.
    #[arg(
        long,
        env = "LEASE_NAME",
        default_value = "rtc-load-balancer",
        value_name = "NAME"
    )]
    pub(crate) lease_name: String,

    /// How long others wait on an unrenewed Lease before taking it, in ms.
    #[arg(
        long,
        env = "LEASE_DURATION_MS",
        default_value_t = 15_000,
        value_name = "MS"
    )]
    pub(crate) lease_duration_ms: u64,

    /// How long a leader keeps trying to renew before stepping down, in ms.
    #[arg(
        long,
        env = "RENEW_DEADLINE_MS",
        default_value_t = 10_000,
        value_name = "MS"
    )]
    pub(crate) renew_deadline_ms: u64,

    /// Time between two acquire or renew attempts, in ms.
    #[arg(
        long,
        env = "RETRY_PERIOD_MS",
        default_value_t = 2_000,
        value_name = "MS"
    )]
    pub(crate) retry_period_ms: u64,

    /// Lease time that must be left before a write, in ms.
    #[arg(
        long,
        env = "LEADER_SAFETY_MARGIN_MS",
        default_value_t = 2_000,
        value_name = "MS"
    )]
    pub(crate) safety_margin_ms: u64,

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

    /// How long shutdown may take (finishing a tick, releasing the Lease), in ms.
    #[arg(
        long,
        env = "SHUTDOWN_TIMEOUT_MS",
        default_value_t = 10_000,
        value_name = "MS"
    )]
    pub(crate) shutdown_timeout_ms: u64,

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
