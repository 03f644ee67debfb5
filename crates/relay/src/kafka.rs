//! The Kafka-protocol bus: one delivery topic of one partition per node
//! (`<topic prefix><node id>`). Records are produced and fetched with
//! `rtc-kafka-wire`'s [`RecordClient`] (one request per write, on sockets
//! with `TCP_NODELAY`); rskafka lists, creates and measures topics. The
//! readers' positions are the committed offsets of the consumer group
//! `rtc-node-<node>` ([`crate::core::group_of`]), through `rtc-kafka-wire`'s
//! [`OffsetClient`].
//!
//! Records for another node's topic are produced in batches
//! ([`crate::batch`]): one [`Batcher`] per topic, within the
//! [`BatchBounds`] given to [`KafkaBus::with_batching`]. A fetch reads up
//! to [`KafkaBus::with_fetch_max_bytes`] of records at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rskafka::BackoffConfig;
use rskafka::client::partition::{OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rtc_kafka_wire::{NewRecord, OffsetClient, RecordClient};
use tokio::sync::Mutex;

use crate::batch::{BatchBounds, Batcher, Outgoing, Produce, Receipt};
use crate::bus::{Batch, Bus, BusError, Delivery, Topic};
use crate::core::group_of;

/// The broker client and cached producers for other nodes' topics.
#[derive(Debug)]
pub struct KafkaBus {
    client: Client,
    bootstrap: Vec<String>,
    client_id: String,
    topic_prefix: String,
    request_timeout: Duration,
    bounds: BatchBounds,
    fetch_max_bytes: i32,
    producers: Mutex<HashMap<String, Batcher>>,
}

/// The default of [`KafkaBus::with_fetch_max_bytes`]: 1 MiB.
pub const DEFAULT_FETCH_MAX_BYTES: i32 = 1_048_576;

/// One node's delivery topic on the broker.
#[derive(Debug)]
pub struct KafkaTopic {
    name: String,
    partition: PartitionClient,
    records: RecordClient,
    offsets: OffsetClient,
    fetch_max_bytes: i32,
}

/// Produces a batch to one partition in one request.
#[derive(Debug)]
struct PartitionProducer(RecordClient);

impl Produce for PartitionProducer {
    async fn produce(&self, records: Vec<Outgoing>) -> Result<(), BusError> {
        let records: Vec<NewRecord> = records
            .into_iter()
            .map(|r| NewRecord {
                key: Bytes::copy_from_slice(r.to.as_bytes()),
                value: Bytes::copy_from_slice(r.frame.as_bytes()),
                timestamp_ms: i64::try_from(r.sent_ms).unwrap_or(0),
            })
            .collect();
        self.0.produce(&records).await?;
        Ok(())
    }
}

impl KafkaBus {
    /// Connects to `bootstrap`. Topic requests are retried for at most
    /// `deadline`; each offset, produce and fetch request fails after
    /// `request_timeout` (a fetch may wait its own wait on top).
    ///
    /// # Errors
    ///
    /// [`BusError`] when the broker cannot be reached.
    pub async fn connect(
        bootstrap: Vec<String>,
        topic_prefix: impl Into<String>,
        client_id: &str,
        deadline: Duration,
        request_timeout: Duration,
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
            request_timeout,
            bounds: BatchBounds::DEFAULT,
            fetch_max_bytes: DEFAULT_FETCH_MAX_BYTES,
            producers: Mutex::new(HashMap::new()),
        })
    }

    /// The same bus producing within `bounds` ([`BatchBounds::DEFAULT`]
    /// unless set).
    #[must_use]
    pub fn with_batching(mut self, bounds: BatchBounds) -> Self {
        self.bounds = bounds;
        self
    }

    /// The same bus fetching at most `bytes` per fetch (at least 1; the
    /// broker still returns a first record larger than that whole).
    #[must_use]
    pub fn with_fetch_max_bytes(mut self, bytes: i32) -> Self {
        self.fetch_max_bytes = bytes.max(1);
        self
    }

    /// A client for the committed offsets of `node`'s group.
    pub fn offsets(&self, node: &str) -> OffsetClient {
        OffsetClient::new(
            self.bootstrap.clone(),
            self.client_id.clone(),
            group_of(node),
            self.request_timeout,
        )
    }

    /// A produce and fetch client of `node`'s topic.
    fn records(&self, node: &str) -> RecordClient {
        RecordClient::new(
            self.bootstrap.clone(),
            self.client_id.clone(),
            self.topic_name(node),
            0,
            self.request_timeout,
        )
    }

    fn topic(&self, node: &str, partition: PartitionClient) -> KafkaTopic {
        KafkaTopic {
            name: self.topic_name(node),
            partition,
            records: self.records(node),
            offsets: self.offsets(node),
            fetch_max_bytes: self.fetch_max_bytes,
        }
    }
}

impl Bus for KafkaBus {
    type Topic = KafkaTopic;

    fn topic_name(&self, node: &str) -> String {
        format!("{}{node}", self.topic_prefix)
    }

    async fn own_topic(&self, node: &str) -> Result<KafkaTopic, BusError> {
        let topic = self.topic_name(node);
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
        let partition = self
            .client
            .partition_client(topic, 0, UnknownTopicHandling::Retry)
            .await?;
        Ok(self.topic(node, partition))
    }

    async fn open(&self, node: &str) -> Result<KafkaTopic, BusError> {
        // A node whose topic is gone fails at once rather than after retries.
        let partition = self
            .client
            .partition_client(self.topic_name(node), 0, UnknownTopicHandling::Error)
            .await?;
        Ok(self.topic(node, partition))
    }

    /// The topic's batcher is built on first use and again after a failed
    /// produce ended it; its client connects at the first produce. A node
    /// whose topic is gone fails that produce, and its frames are buffered.
    async fn send(&self, node: &str, to: &str, frame: Arc<str>, sent_ms: u64) -> Receipt {
        let mut producers = self.producers.lock().await;
        if producers.get(node).is_some_and(Batcher::is_closed) {
            producers.remove(node);
        }
        let batcher = producers.entry(node.to_owned()).or_insert_with(|| {
            Batcher::spawn(PartitionProducer(self.records(node)), self.bounds)
        });
        batcher.submit(Outgoing {
            to: Arc::from(to),
            frame,
            sent_ms,
        })
    }
}

impl Topic for KafkaTopic {
    fn name(&self) -> &str {
        &self.name
    }

    fn group(&self) -> &str {
        self.offsets.group()
    }

    /// Records before `position` (a fetch may return the start of a batch)
    /// are skipped; the position after them counts records that are not
    /// deliveries too.
    async fn fetch(&self, position: i64, max_wait_ms: i32) -> Result<Batch, BusError> {
        let fetched = self
            .records
            .fetch(
                position,
                self.fetch_max_bytes,
                Duration::from_millis(u64::try_from(max_wait_ms).unwrap_or(0)),
            )
            .await?;
        let (records, high_watermark) = (fetched.records, fetched.high_watermark);
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
                let to = String::from_utf8(r.key?.to_vec()).ok()?;
                let frame = String::from_utf8(r.value?.to_vec()).ok()?;
                let sent_ms = u64::try_from(r.timestamp_ms).unwrap_or(0);
                Some(Delivery {
                    offset: r.offset,
                    to,
                    frame,
                    sent_ms,
                })
            })
            .collect();
        Ok(Batch {
            deliveries,
            next,
            high_watermark,
        })
    }

    async fn earliest(&self) -> Result<i64, BusError> {
        Ok(self.partition.get_offset(OffsetAt::Earliest).await?)
    }

    async fn committed(&self) -> Result<Option<i64>, BusError> {
        Ok(self.offsets.fetch(&self.name, 0).await?)
    }

    async fn commit(&self, position: i64) -> Result<(), BusError> {
        Ok(self.offsets.commit(&self.name, 0, position).await?)
    }
}
