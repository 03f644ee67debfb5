//! Scaling signals on a Kafka topic, published off the scaling path: the
//! Kafka side of rtc-autoscaler's [`SignalSink`].
//!
//! What it promises:
//! - **Scaling never waits for the broker.** [`KafkaSignalSink::offer`]
//!   only enqueues; a slow, absent or failing broker delays nothing, and
//!   signals beyond the queue are dropped and counted.
//! - **One JSON record per scaling action** on partition 0 of
//!   [`SIGNAL_TOPIC`], keyed by the leader's identity, timestamped with the
//!   decision's time.
//! - **It heals.** The publishing task connects lazily, creates the topic
//!   if it is missing, and reconnects with backoff after failures; a signal
//!   is tried three times before it is dropped.
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use rtc_autoscaler::SignalSink;
//! use rtc_signal_kafka::{KafkaSignalSink, SIGNAL_TOPIC};
//!
//! # async fn example() {
//! let sink: Arc<dyn SignalSink> =
//!     Arc::new(KafkaSignalSink::spawn(vec!["127.0.0.1:9092".to_owned()], SIGNAL_TOPIC));
//! # let _ = sink;
//! # }
//! ```

use rskafka::BackoffConfig;
use rskafka::chrono::{TimeZone, Utc};
use rskafka::client::ClientBuilder;
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::record::Record;
use rtc_autoscaler::{ScaleSignal, SignalSink};
use rtc_time::Backoff;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// The topic scaling signals go to.
pub const SIGNAL_TOPIC: &str = "rtc.control.scale";

/// Signals waiting for the broker beyond this are dropped (and counted).
const QUEUE: usize = 256;

/// Pauses between attempts, reset by a successful connection.
const RETRY: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));

/// Attempts per signal before it is dropped.
const ATTEMPTS: u32 = 3;

/// Publishes [`ScaleSignal`]s as JSON records (key: the leader identity) to
/// partition 0 of a topic, from its own task. [`offer`](SignalSink::offer)
/// only enqueues: a slow or absent broker never delays scaling; signals
/// beyond the queue are dropped and counted in
/// `rtc_lb_signals_dropped_total`. The task connects lazily, creates the
/// topic if it is missing, and reconnects with backoff after failures.
#[derive(Debug, Clone)]
pub struct KafkaSignalSink {
    tx: mpsc::Sender<ScaleSignal>,
}

/// A bootstrap list that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BootstrapError {
    /// An entry has no port.
    #[error("value {0:?} is not allowed; allowed: comma-separated HOST:PORT entries, or empty")]
    NoPort(String),
}

/// The brokers of a comma-separated `HOST:PORT` list (KAFKA_BOOTSTRAP),
/// blanks ignored; empty when the list is (no signals then).
///
/// # Errors
///
/// [`BootstrapError::NoPort`] naming the first entry without a port.
pub fn parse_bootstrap(list: &str) -> Result<Vec<String>, BootstrapError> {
    let brokers: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    match brokers.iter().find(|s| !s.contains(':')) {
        Some(bad) => Err(BootstrapError::NoPort(bad.clone())),
        None => Ok(brokers),
    }
}

impl KafkaSignalSink {
    /// Starts the publishing task (needs a tokio runtime).
    pub fn spawn(bootstrap: Vec<String>, topic: impl Into<String>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(bootstrap, topic.into(), rx));
        Self { tx }
    }
}

impl SignalSink for KafkaSignalSink {
    fn offer(&self, signal: &ScaleSignal) -> bool {
        self.tx.try_send(signal.clone()).is_ok()
    }
}

async fn connect(
    bootstrap: &[String],
    topic: &str,
) -> Result<PartitionClient, rskafka::client::error::Error> {
    let client = ClientBuilder::new(bootstrap.to_vec())
        .client_id("rtc-load-balancer")
        .backoff_config(BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
            deadline: Some(Duration::from_secs(10)),
        })
        .build()
        .await?;
    let topics = client.list_topics().await?;
    if !topics.iter().any(|t| t.name == topic) {
        match client
            .controller_client()?
            .create_topic(topic, 1, 1, 5_000)
            .await
        {
            Ok(()) => info!(topic, "created the scaling-signal topic"),
            // Another replica may have created it meanwhile.
            Err(e) => debug!(topic, error = %e, "creating the scaling-signal topic"),
        }
    }
    client
        .partition_client(topic.to_owned(), 0, UnknownTopicHandling::Retry)
        .await
}

fn record(signal: &ScaleSignal) -> Option<Record> {
    let value = serde_json::to_vec(signal).ok()?;
    let ts = i64::try_from(signal.timestamp_ms).unwrap_or(0);
    Some(Record {
        key: Some(signal.leader.as_bytes().to_vec()),
        value: Some(value),
        headers: BTreeMap::new(),
        timestamp: Utc.timestamp_millis_opt(ts).single().unwrap_or_default(),
    })
}

async fn run(bootstrap: Vec<String>, topic: String, mut rx: mpsc::Receiver<ScaleSignal>) {
    let mut partition: Option<PartitionClient> = None;
    // Failed attempts since the last successful connection.
    let mut failures = 0;
    while let Some(signal) = rx.recv().await {
        let Some(rec) = record(&signal) else {
            continue;
        };
        let mut attempts = 0;
        loop {
            attempts += 1;
            if partition.is_none() {
                match connect(&bootstrap, &topic).await {
                    Ok(p) => {
                        partition = Some(p);
                        failures = 0;
                    }
                    Err(e) => warn!(error = %e, "scaling-signal broker unreachable"),
                }
            }
            if let Some(p) = &partition {
                match p
                    .produce(vec![rec.clone()], Compression::NoCompression)
                    .await
                {
                    Ok(_) => {
                        metrics::counter!("rtc_lb_signals_published_total").increment(1);
                        break;
                    }
                    Err(e) => {
                        warn!(error = %e, "publishing a scaling signal failed");
                        partition = None;
                    }
                }
            }
            if attempts >= ATTEMPTS {
                metrics::counter!("rtc_lb_signals_dropped_total").increment(1);
                break;
            }
            failures += 1;
            tokio::time::sleep(RETRY.delay(failures)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_lists_are_trimmed_and_need_ports() {
        assert_eq!(parse_bootstrap(""), Ok(vec![]));
        assert_eq!(
            parse_bootstrap(" a:9092, ,b:9093 "),
            Ok(vec!["a:9092".to_owned(), "b:9093".to_owned()])
        );
        let err = parse_bootstrap("a:9092,broker").expect_err("no port");
        assert_eq!(err, BootstrapError::NoPort("broker".to_owned()));
        assert!(err.to_string().contains("HOST:PORT"), "{err}");
    }
}
