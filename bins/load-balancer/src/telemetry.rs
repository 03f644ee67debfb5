//! Logs and metrics set up once at start.

use anyhow::Context;
use clap::ValueEnum;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// Logs to standard error, filtered by `RUST_LOG` (default `info`).
pub(crate) fn init(format: LogFormat) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let result = match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("setting up logging: {e}"))
}

/// Installs the Prometheus recorder; `/metrics` renders from the handle.
pub(crate) fn metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets(&[
            0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
        ])
        .context("histogram buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    rtc_leader::describe_metrics();
    metrics::describe_counter!(
        "rtc_lb_scale_signals_total",
        "Decisions of the scaling loop, by direction, urgency and reason."
    );
    metrics::describe_gauge!("rtc_lb_ring_nodes", "Live socket nodes seen in heartbeats.");
    metrics::describe_gauge!(
        "rtc_lb_desired_replicas",
        "Replicas the last decision asked for."
    );
    metrics::describe_histogram!(
        "rtc_lb_decision_seconds",
        metrics::Unit::Seconds,
        "Time to compute one decision."
    );
    Ok(handle)
}
