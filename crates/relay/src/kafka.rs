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

/// How long a gap in the offsets a fetch returns may stay before the reader
/// goes past it. A delivery topic has no gaps (no compaction, no
/// transactions), but a broker may show a batch before an earlier one is
/// readable: the stack's (tansu 0.6.0) does while several producers write
/// one partition. Reading on over that gap would skip the earlier batch
/// for good.
const GAP_GRACE: Duration = Duration::from_secs(2);

/// The pause before a fetch that found only a gap answers, so that the
/// reader does not spin while the missing batch becomes readable.
const GAP_PAUSE: Duration = Duration::from_millis(2);

/// One node's delivery topic on the broker.
#[derive(Debug)]
pub struct KafkaTopic {
    name: String,
    partition: PartitionClient,
    records: RecordClient,
    offsets: OffsetClient,
    fetch_max_bytes: i32,
    gap: Mutex<GapWatch>,
}

/// The gap a reader is waiting at, and since when.
#[derive(Debug, Default)]
struct GapWatch(Option<(i64, tokio::time::Instant)>);

impl GapWatch {
    /// A fetch at a position found a gap at offset `at` (`None`: no gap):
    /// whether to read on past it now, because it has stayed at least
    /// [`GAP_GRACE`].
    fn pass(&mut self, at: Option<i64>, now: tokio::time::Instant) -> bool {
        match (at, self.0) {
            (None, _) => {
                self.0 = None;
                false
            }
            (Some(at), Some((seen, since))) if seen == at => {
                if now.duration_since(since) >= GAP_GRACE {
                    self.0 = None;
                    true
                } else {
                    false
                }
            }
            (Some(at), _) => {
                self.0 = Some((at, now));
                false
            }
        }
    }
}

/// How many of `offsets` (ascending, none before `position`) follow
/// `position` without a gap.
fn contiguous(position: i64, offsets: impl IntoIterator<Item = i64>) -> usize {
    offsets
        .into_iter()
        .zip(position..)
        .take_while(|(offset, expected)| offset == expected)
        .count()
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
            gap: Mutex::new(GapWatch::default()),
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
        let batcher = producers
            .entry(node.to_owned())
            .or_insert_with(|| Batcher::spawn(PartitionProducer(self.records(node)), self.bounds));
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
    /// deliveries too. Only the records up to the first gap in the offsets
    /// are returned, until that gap has stayed [`GAP_GRACE`].
    async fn fetch(&self, position: i64, max_wait_ms: i32) -> Result<Batch, BusError> {
        let fetched = self
            .records
            .fetch(
                position,
                self.fetch_max_bytes,
                Duration::from_millis(u64::try_from(max_wait_ms).unwrap_or(0)),
            )
            .await?;
        let high_watermark = fetched.high_watermark;
        let mut records: Vec<_> = fetched
            .records
            .into_iter()
            .filter(|r| r.offset >= position)
            .collect();
        records.sort_by_key(|r| r.offset);
        let whole = contiguous(position, records.iter().map(|r| r.offset));
        if whole < records.len() {
            let at = position + i64::try_from(whole).unwrap_or(i64::MAX);
            let pass = self
                .gap
                .lock()
                .await
                .pass(Some(at), tokio::time::Instant::now());
            if pass {
                let to = records.get(whole).map_or(at, |r| r.offset);
                tracing::warn!(topic = %self.name, from = at, to, "reading on past a gap in the topic's offsets");
                metrics::counter!("rtc_socket_offset_gaps_total").increment(1);
            } else {
                records.truncate(whole);
                if whole == 0 {
                    tokio::time::sleep(GAP_PAUSE).await;
                }
            }
        } else {
            self.gap
                .lock()
                .await
                .pass(None, tokio::time::Instant::now());
        }
        let next = records.last().map_or(position, |r| r.offset + 1);
        let deliveries = records
            .into_iter()
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

#[cfg(test)]
mod tests {
    use tokio::time::Instant;

    use super::{GAP_GRACE, GapWatch, contiguous};

    #[test]
    fn the_contiguous_prefix_stops_at_the_first_gap() {
        assert_eq!(contiguous(10, [10, 11, 12]), 3);
        assert_eq!(contiguous(10, [10, 11, 13, 14]), 2);
        assert_eq!(contiguous(10, [12, 13]), 0);
        assert_eq!(contiguous(10, []), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_gap_is_passed_only_after_it_stayed_the_grace() {
        let mut watch = GapWatch::default();
        let start = Instant::now();
        assert!(!watch.pass(Some(7), start), "a new gap is waited at");
        assert!(!watch.pass(Some(7), start + GAP_GRACE / 2));
        assert!(watch.pass(Some(7), start + GAP_GRACE), "it stayed: read on");
        // Once passed, a gap at the same offset is new again.
        assert!(!watch.pass(Some(7), start + GAP_GRACE));
        // A gap that closes, or moves on, starts over.
        assert!(!watch.pass(None, start + GAP_GRACE * 2));
        assert!(!watch.pass(Some(7), start + GAP_GRACE * 3));
        assert!(!watch.pass(Some(9), start + GAP_GRACE * 5));
        assert!(watch.pass(Some(9), start + GAP_GRACE * 6));
    }
}
