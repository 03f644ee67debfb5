//! Scaling signals on a Kafka topic, published off the scaling path.

use crate::signal::{ScaleSignal, SignalSink};
use rskafka::BackoffConfig;
use rskafka::chrono::{TimeZone, Utc};
use rskafka::client::ClientBuilder;
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::record::Record;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// The topic scaling signals go to.
pub const SIGNAL_TOPIC: &str = "rtc.control.scale";

/// Signals waiting for the broker beyond this are dropped (and counted).
const QUEUE: usize = 256;

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
    let mut backoff = Duration::from_millis(200);
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
                        backoff = Duration::from_millis(200);
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
            if attempts >= 3 {
                metrics::counter!("rtc_lb_signals_dropped_total").increment(1);
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}
