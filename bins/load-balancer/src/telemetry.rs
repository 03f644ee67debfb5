//! Metrics set up once at start (logs: rtc-telemetry).

use anyhow::Context;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

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
    rtc_autoscaler::describe_metrics();
    rtc_heartbeat::describe_metrics();
    Ok(handle)
}
