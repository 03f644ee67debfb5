//! Metrics, set up once at start (logs: rtc-telemetry).

use anyhow::Context;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Installs the Prometheus recorder with a `node_id` label on every series.
///
/// # Errors
///
/// When a recorder is already installed.
pub(crate) fn metrics(node_id: &str) -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .add_global_label("node_id", node_id)
        .install_recorder()
        .context("installing the metrics recorder")?;
    metrics::describe_gauge!("rtc_socket_connections", "Open WebSocket connections.");
    metrics::describe_gauge!(
        "rtc_socket_messages_per_second",
        "Messages delivered to local clients per second, over the sliding window."
    );
    metrics::describe_gauge!(
        "rtc_socket_delivery_p95_seconds",
        metrics::Unit::Seconds,
        "p95 end-to-end delivery latency over the sliding window."
    );
    metrics::describe_gauge!(
        "rtc_socket_kafka_lag_records",
        "Records in this node's delivery topic not yet handled."
    );
    metrics::describe_gauge!(
        "rtc_socket_kafka_lag_seconds",
        metrics::Unit::Seconds,
        "How far behind the delivery-topic consumer is."
    );
    metrics::describe_gauge!(
        "rtc_socket_cpu_ratio",
        "CPU use as a fraction of the limit."
    );
    metrics::describe_gauge!(
        "rtc_socket_memory_ratio",
        "Memory use as a fraction of the limit."
    );
    metrics::describe_gauge!("rtc_socket_draining", "1 while the node drains.");
    metrics::describe_counter!(
        "rtc_socket_messages_total",
        "Messages accepted from clients, by where they went."
    );
    metrics::describe_counter!(
        "rtc_socket_delivered_total",
        "Message frames written to local clients."
    );
    metrics::describe_counter!(
        "rtc_socket_rejected_total",
        "Client frames refused, by reason."
    );
    metrics::describe_counter!(
        "rtc_socket_refused_total",
        "Connections refused, by reason."
    );
    metrics::describe_counter!("rtc_socket_closes_total", "Closes sent, by close code.");
    Ok(handle)
}
