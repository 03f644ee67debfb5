//! Delivery topics on the Kafka-protocol broker: one topic of one partition
//! per node (`<topic prefix><node id>`); the record key is the recipient,
//! the value the message frame, the timestamp its send time.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use rskafka::BackoffConfig;
use rskafka::chrono::{TimeZone, Utc};
use rskafka::client::partition::{Compression, OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;
use tokio::sync::Mutex;

use crate::offsets::OffsetClient;

/// A broker call failed.
#[derive(Debug, thiserror::Error)]
#[error("kafka: {0}")]
pub struct BusError(#[from] rskafka::client::error::Error);

impl BusError {
    /// The offset asked for is outside the partition (the topic was
    /// recreated, or records were deleted by retention).
    pub fn is_out_of_range(&self) -> bool {
        matches!(
            &self.0,
            rskafka::client::error::Error::ServerError {
                protocol_error: rskafka::client::error::ProtocolError::OffsetOutOfRange,
                ..
            }
        )
    }
}

/// One record read from a delivery topic.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Its offset.
    pub offset: i64,
    /// The recipient.
    pub to: String,
    /// The message frame.
    pub frame: String,
    /// When it was sent, ms since the Unix epoch.
    pub sent_ms: u64,
}

/// The broker client and cached producers for other nodes' topics.
#[derive(Debug)]
pub struct Bus {
    client: Client,
    bootstrap: Vec<String>,
    client_id: String,
    topic_prefix: String,
    producers: Mutex<HashMap<String, Arc<PartitionClient>>>,
}

impl Bus {
    /// Connects to `bootstrap`. Requests are retried for at most `deadline`.
    ///
    /// # Errors
    ///
    /// [`BusError`] when the broker cannot be reached.
    pub async fn connect(
        bootstrap: Vec<String>,
        topic_prefix: impl Into<String>,
        client_id: &str,
        deadline: Duration,
    ) -> Result<Self, BusError> {
        let client = ClientBuilder::new(bootstrap.clone())
            .client_id(client_id.to_owned())
            .backoff_config(BackoffConfig {
                init_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_millis(500),
                base: 2.0,
                deadline: Some(deadline),
            })
            .build()
            .await?;
        Ok(Self {
            client,
            bootstrap,
            client_id: client_id.to_owned(),
            topic_prefix: topic_prefix.into(),
            producers: Mutex::new(HashMap::new()),
        })
    }

    /// The delivery topic of `node`.
    pub fn topic(&self, node: &str) -> String {
        format!("{}{node}", self.topic_prefix)
    }

    /// Creates `node`'s delivery topic unless it exists, and returns a
    /// client for its partition.
    ///
    /// # Errors
    ///
    /// [`BusError`] when the broker refuses.
    pub async fn own_topic(&self, node: &str) -> Result<PartitionClient, BusError> {
        let topic = self.topic(node);
        let exists = self
            .client
            .list_topics()
            .await?
            .iter()
            .any(|t| t.name == topic);
        if !exists {
            match self
                .client
                .controller_client()?
                .create_topic(topic.as_str(), 1, 1, 5_000)
                .await
            {
                Ok(()) => tracing::info!(%topic, "created the delivery topic"),
                // A restarted node with the same name finds it there.
                Err(e) => tracing::debug!(%topic, error = %e, "creating the delivery topic"),
            }
        }
        Ok(self
            .client
            .partition_client(topic, 0, UnknownTopicHandling::Retry)
            .await?)
    }

    /// A client for the committed offsets of `group`, on the same brokers.
    pub fn offsets(&self, group: impl Into<String>, timeout: Duration) -> OffsetClient {
        OffsetClient::new(
            self.bootstrap.clone(),
            self.client_id.clone(),
            group,
            timeout,
        )
    }

    /// A client for `node`'s delivery topic, which must exist.
    ///
    /// # Errors
    ///
    /// [`BusError`] when the topic does not exist or the broker fails.
    pub async fn partition(&self, node: &str) -> Result<Arc<PartitionClient>, BusError> {
        self.producer(node).await
    }

    async fn producer(&self, node: &str) -> Result<Arc<PartitionClient>, BusError> {
        let mut producers = self.producers.lock().await;
        if let Some(p) = producers.get(node) {
            return Ok(Arc::clone(p));
        }
        // A node whose topic is gone fails at once rather than after retries:
        // the frame is then buffered.
        let p = Arc::new(
            self.client
                .partition_client(self.topic(node), 0, UnknownTopicHandling::Error)
                .await?,
        );
        producers.insert(node.to_owned(), Arc::clone(&p));
        Ok(p)
    }

    /// Publishes a frame for `to` to `node`'s delivery topic.
    ///
    /// # Errors
    ///
    /// [`BusError`] when the broker refuses or cannot be reached.
    pub async fn publish(
        &self,
        node: &str,
        to: &str,
        frame: &str,
        sent_ms: u64,
    ) -> Result<(), BusError> {
        let producer = self.producer(node).await?;
        let record = Record {
            key: Some(to.as_bytes().to_vec()),
            value: Some(frame.as_bytes().to_vec()),
            headers: BTreeMap::new(),
            timestamp: Utc
                .timestamp_millis_opt(i64::try_from(sent_ms).unwrap_or(0))
                .single()
                .unwrap_or_default(),
        };
        let result = producer
            .produce(vec![record], Compression::NoCompression)
            .await;
        if result.is_err() {
            // Drop a client that failed; the next publish builds a new one.
            self.producers.lock().await.remove(node);
        }
        result?;
        Ok(())
    }
}

/// The wait of a fetch that should not block: some brokers answer a fetch
/// with no wait at all with an empty topic list, which reads as an error.
pub const SHORT_WAIT_MS: i32 = 50;

/// Reads records from `position`, waiting up to `max_wait_ms` when there are
/// none; returns them with the partition's high watermark. Records before
/// `position` (a fetch may return the start of a batch) are skipped.
/// Returns the deliveries, the position after them (records that are not
/// deliveries are passed over too) and the high watermark.
///
/// # Errors
///
/// [`BusError`] when the fetch fails.
pub async fn fetch(
    partition: &PartitionClient,
    position: i64,
    max_wait_ms: i32,
) -> Result<(Vec<Delivery>, i64, i64), BusError> {
    let (records, high_watermark) = partition
        .fetch_records(position, 1..1_048_576, max_wait_ms)
        .await?;
    let next = records
        .iter()
        .map(|r| r.offset + 1)
        .max()
        .unwrap_or(position)
        .max(position);
    let deliveries = records
        .into_iter()
        .filter(|r| r.offset >= position)
        .filter_map(|r| {
            let to = String::from_utf8(r.record.key?).ok()?;
            let frame = String::from_utf8(r.record.value?).ok()?;
            let sent_ms = u64::try_from(r.record.timestamp.timestamp_millis()).unwrap_or(0);
            Some(Delivery {
                offset: r.offset,
                to,
                frame,
                sent_ms,
            })
        })
        .collect();
    Ok((deliveries, next, high_watermark))
}

/// The first offset still kept in `partition`.
///
/// # Errors
///
/// [`BusError`] when the broker fails.
pub async fn earliest(partition: &PartitionClient) -> Result<i64, BusError> {
    Ok(partition.get_offset(OffsetAt::Earliest).await?)
}
