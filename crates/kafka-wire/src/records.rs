//! Produce and Fetch of one topic partition, on a connection to its leader.
//!
//! [`RecordClient`] speaks three requests:
//!
//! - **Metadata** (v4) on a bootstrap server names the partition's leader;
//!   the connection then goes there. Topics are never created by it.
//! - **Produce** (v3: record batch v2, uncompressed, `acks` all): one batch
//!   per call, in the order given; the answer is the batch's base offset.
//! - **Fetch** (v4, read uncommitted): the records from an offset, up to a
//!   byte bound, waiting at most a given time for the first. Only complete
//!   batches are returned (a broker may cut the last one at the bound);
//!   control records are left out.
//!
//! Each request is a single write on a socket with `TCP_NODELAY`, and a
//! client has one request in flight at a time: give a reader and a writer
//! of the same partition a client each.

use std::time::Duration;

use crate::{Conn, Link, WireError};
use bytes::{Bytes, BytesMut};
use kafka_protocol::ResponseError;
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, MetadataRequest, MetadataResponse,
    ProduceRequest, ProduceResponse, TopicName, fetch_request, metadata_request, produce_request,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, NO_PARTITION_LEADER_EPOCH, NO_PRODUCER_EPOCH, NO_PRODUCER_ID, NO_SEQUENCE, Record,
    RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

const METADATA_VERSION: i16 = 4;
const PRODUCE_VERSION: i16 = 3;
const FETCH_VERSION: i16 = 4;
/// Answers after which the partition's leader is looked up again.
const LEADER_MOVED: &[ResponseError] = &[
    ResponseError::NotLeaderOrFollower,
    ResponseError::LeaderNotAvailable,
    ResponseError::UnknownTopicOrPartition,
    ResponseError::FencedLeaderEpoch,
];
/// A batch's base offset (8 bytes) and length (4 bytes) come first.
const BATCH_HEADER: usize = 12;

/// A record to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecord {
    /// The key.
    pub key: Bytes,
    /// The value.
    pub value: Bytes,
    /// The create time, in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
}

/// A record read by a fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedRecord {
    /// Its offset in the partition.
    pub offset: i64,
    /// The key, if any.
    pub key: Option<Bytes>,
    /// The value, if any.
    pub value: Option<Bytes>,
    /// Its timestamp, in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
}

/// What one fetch read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The records of the complete batches returned, in offset order. A
    /// batch may start before the offset asked for.
    pub records: Vec<FetchedRecord>,
    /// The partition's high watermark: the offset the next record will get.
    pub high_watermark: i64,
}

/// Produces to and fetches from one partition of one topic.
#[derive(Debug)]
pub struct RecordClient {
    topic: String,
    partition: i32,
    link: Link,
}

impl RecordClient {
    /// A client for `topic`/`partition`; connects on first use. Every
    /// request (and each connect) fails after `timeout`; a fetch may take
    /// its wait on top.
    pub fn new(
        bootstrap: Vec<String>,
        client_id: impl Into<String>,
        topic: impl Into<String>,
        partition: i32,
        timeout: Duration,
    ) -> Self {
        let topic = topic.into();
        Self {
            link: Link::new(
                bootstrap,
                client_id.into(),
                format!("partition {topic}/{partition}"),
                timeout,
            ),
            topic,
            partition,
        }
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Produces `records` as one batch, in order, and returns the offset
    /// of the first. An empty slice produces nothing and returns `None`.
    ///
    /// # Errors
    ///
    /// [`WireError`] when the leader cannot be reached or refuses.
    pub async fn produce(&self, records: &[NewRecord]) -> Result<Option<i64>, WireError> {
        const API: &str = "Produce";
        if records.is_empty() {
            return Ok(None);
        }
        let batch =
            encode_batch(records).map_err(|message| WireError::Codec { api: API, message })?;
        let request = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(millis(self.link.timeout))
            .with_topic_data(vec![
                produce_request::TopicProduceData::default()
                    .with_name(self.topic_name())
                    .with_partition_data(vec![
                        produce_request::PartitionProduceData::default()
                            .with_index(self.partition)
                            .with_records(Some(batch)),
                    ]),
            ]);
        let response: ProduceResponse = self
            .call(
                ApiKey::Produce,
                API,
                PRODUCE_VERSION,
                &request,
                self.link.timeout,
            )
            .await?;
        let partition = response
            .responses
            .iter()
            .filter(|t| t.name.as_str() == self.topic)
            .flat_map(|t| t.partition_responses.iter())
            .find(|p| p.index == self.partition)
            .ok_or_else(|| self.missing(API))?;
        self.check(API, partition.error_code).await?;
        Ok(Some(partition.base_offset))
    }

    /// Fetches the records from `offset`, at most about `max_bytes` of
    /// them (a first batch larger than that comes whole), waiting at most
    /// `max_wait` for one to arrive.
    ///
    /// # Errors
    ///
    /// [`WireError`] when the leader cannot be reached or refuses; an
    /// offset outside the partition is [`ResponseError::OffsetOutOfRange`].
    pub async fn fetch(
        &self,
        offset: i64,
        max_bytes: i32,
        max_wait: Duration,
    ) -> Result<Fetched, WireError> {
        const API: &str = "Fetch";
        let max_bytes = max_bytes.max(1);
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(millis(max_wait))
            .with_min_bytes(1)
            .with_max_bytes(max_bytes)
            .with_isolation_level(0)
            .with_topics(vec![
                fetch_request::FetchTopic::default()
                    .with_topic(self.topic_name())
                    .with_partitions(vec![
                        fetch_request::FetchPartition::default()
                            .with_partition(self.partition)
                            .with_fetch_offset(offset)
                            .with_partition_max_bytes(max_bytes),
                    ]),
            ]);
        let response: FetchResponse = self
            .call(
                ApiKey::Fetch,
                API,
                FETCH_VERSION,
                &request,
                self.link.timeout + max_wait,
            )
            .await?;
        let partition = response
            .responses
            .into_iter()
            .filter(|t| t.topic.as_str() == self.topic)
            .flat_map(|t| t.partitions)
            .find(|p| p.partition_index == self.partition)
            .ok_or_else(|| self.missing(API))?;
        self.check(API, partition.error_code).await?;
        let records = match partition.records {
            Some(bytes) => {
                decode_batches(bytes).map_err(|message| WireError::Codec { api: API, message })?
            }
            None => Vec::new(),
        };
        Ok(Fetched {
            records,
            high_watermark: partition.high_watermark,
        })
    }

    fn topic_name(&self) -> TopicName {
        TopicName(StrBytes::from_string(self.topic.clone()))
    }

    fn missing(&self, api: &'static str) -> WireError {
        WireError::Missing {
            api,
            subject: self.link.subject.clone(),
            topic: self.topic.clone(),
            partition: self.partition,
        }
    }

    async fn check(&self, api: &'static str, code: i16) -> Result<(), WireError> {
        self.link.check(api, code, LEADER_MOVED).await
    }

    /// Sends `request` to the partition's leader, waiting at most
    /// `timeout` for its response.
    async fn call<Q: Encodable, R: Decodable>(
        &self,
        key: ApiKey,
        api: &'static str,
        version: i16,
        request: &Q,
        timeout: Duration,
    ) -> Result<R, WireError> {
        self.link
            .call((key, api, version), request, timeout, || self.leader())
            .await
    }

    /// Asks a bootstrap server for the partition's leader and connects
    /// there. Topics are never created by it.
    async fn leader(&self) -> Result<Conn, WireError> {
        let request = MetadataRequest::default()
            .with_topics(Some(vec![
                metadata_request::MetadataRequestTopic::default()
                    .with_name(Some(self.topic_name())),
            ]))
            .with_allow_auto_topic_creation(false);
        self.link
            .locate(
                (ApiKey::Metadata, "Metadata", METADATA_VERSION),
                &request,
                |response: &MetadataResponse| self.leader_of(response),
            )
            .await
    }

    /// The address of the partition's leader in a Metadata response.
    fn leader_of(&self, response: &MetadataResponse) -> Result<String, WireError> {
        const API: &str = "Metadata";
        let topic = response
            .topics
            .iter()
            .find(|t| t.name.as_ref().is_some_and(|n| n.as_str() == self.topic))
            .ok_or_else(|| self.missing(API))?;
        if let Some(refusal) = self.link.refusal(API, topic.error_code) {
            return Err(refusal);
        }
        let partition = topic
            .partitions
            .iter()
            .find(|p| p.partition_index == self.partition)
            .ok_or_else(|| self.missing(API))?;
        if let Some(refusal) = self.link.refusal(API, partition.error_code) {
            return Err(refusal);
        }
        response
            .brokers
            .iter()
            .find(|b| b.node_id == partition.leader_id)
            .map(|b| format!("{}:{}", b.host.as_str(), b.port))
            .ok_or_else(|| WireError::Broker {
                api: API,
                subject: self.link.subject.clone(),
                code: ResponseError::LeaderNotAvailable.code(),
                error: ResponseError::LeaderNotAvailable,
            })
    }
}

/// A request's timeout in whole milliseconds, as the protocol carries it.
fn millis(d: Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}

/// `records` as one uncompressed record batch (v2).
fn encode_batch(records: &[NewRecord]) -> Result<Bytes, String> {
    let records: Vec<Record> = records
        .iter()
        .zip(0i64..)
        .map(|(r, offset)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            timestamp_type: TimestampType::Creation,
            offset,
            // The encoder keeps records in one batch while offset minus
            // sequence stays the same; the batch's base sequence is then
            // the first record's: -1, as for a producer without ids.
            sequence: NO_SEQUENCE.wrapping_add(i32::try_from(offset).unwrap_or(i32::MAX)),
            timestamp: r.timestamp_ms,
            key: Some(r.key.clone()),
            value: Some(r.value.clone()),
            headers: IndexMap::new(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .map_err(|e| format!("{e:#}"))?;
    Ok(buf.freeze())
}

/// The records of the complete batches in a fetch's `bytes`; a cut last
/// batch is left for the next fetch.
fn decode_batches(mut bytes: Bytes) -> Result<Vec<FetchedRecord>, String> {
    let mut out = Vec::new();
    while bytes.len() >= BATCH_HEADER {
        let mut length = [0u8; 4];
        length.copy_from_slice(&bytes[8..BATCH_HEADER]);
        let length = usize::try_from(i32::from_be_bytes(length))
            .map_err(|_| "a record batch with a negative length".to_owned())?;
        let Some(total) = BATCH_HEADER
            .checked_add(length)
            .filter(|t| *t <= bytes.len())
        else {
            break;
        };
        let mut batch = bytes.split_to(total);
        let set = RecordBatchDecoder::decode(&mut batch).map_err(|e| format!("{e:#}"))?;
        out.extend(
            set.records
                .into_iter()
                .filter(|r| !r.control)
                .map(|r| FetchedRecord {
                    offset: r.offset,
                    key: r.key,
                    value: r.value,
                    timestamp_ms: r.timestamp,
                }),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str, value: &str, timestamp_ms: i64) -> NewRecord {
        NewRecord {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
            timestamp_ms,
        }
    }

    #[test]
    fn a_batch_decodes_to_its_records_in_order() {
        let sent = [
            record("a", "one", 10),
            record("b", "two", 11),
            record("c", "", 12),
        ];
        let batch = encode_batch(&sent).expect("encodes");
        assert_eq!(
            RecordBatchDecoder::decode_batch_info(&mut batch.clone())
                .expect("a header")
                .iter()
                .map(|b| (b.record_count, b.base_sequence, b.producer_id))
                .collect::<Vec<_>>(),
            vec![(3, NO_SEQUENCE, NO_PRODUCER_ID)],
            "one batch, without producer id or sequence"
        );
        let got = decode_batches(batch).expect("decodes");
        let got: Vec<_> = got
            .iter()
            .map(|r| (r.offset, r.key.clone(), r.value.clone(), r.timestamp_ms))
            .collect();
        let want: Vec<_> = sent
            .iter()
            .zip(0i64..)
            .map(|(r, o)| {
                (
                    o,
                    Some(r.key.clone()),
                    Some(r.value.clone()),
                    r.timestamp_ms,
                )
            })
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_cut_last_batch_is_left_for_the_next_fetch() {
        let first = encode_batch(&[record("a", "one", 1)]).expect("encodes");
        let second =
            encode_batch(&[record("b", "two", 2), record("c", "three", 3)]).expect("encodes");
        let mut both = BytesMut::new();
        both.extend_from_slice(&first);
        both.extend_from_slice(&second);
        let whole = both.len();
        for cut in [whole - 1, first.len() + BATCH_HEADER, first.len() + 3] {
            let got = decode_batches(Bytes::copy_from_slice(&both[..cut])).expect("decodes");
            assert_eq!(got.len(), 1, "cut at {cut} of {whole}");
            assert_eq!(got[0].value.as_deref(), Some(&b"one"[..]));
        }
        let got = decode_batches(both.freeze()).expect("decodes");
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn a_malformed_batch_is_an_error_not_a_panic() {
        let mut batch =
            BytesMut::from(&encode_batch(&[record("a", "one", 1)]).expect("encodes")[..]);
        // Flip a byte of the record data: the CRC no longer matches.
        let last = batch.len() - 1;
        batch[last] ^= 0xff;
        assert!(decode_batches(batch.freeze()).is_err());
        let mut negative = vec![0u8; 20];
        negative[8..12].copy_from_slice(&(-5i32).to_be_bytes());
        let err = decode_batches(Bytes::from(negative)).expect_err("refused");
        assert!(err.contains("negative length"), "{err}");
    }

    #[tokio::test]
    async fn a_broker_that_is_down_is_a_typed_error_naming_the_partition() {
        let addr = crate::closed_port();
        let client = RecordClient::new(vec![addr.clone()], "t", "topic", 0, Duration::from_secs(1));
        let err = client.produce(&[record("a", "b", 1)]).await.err();
        assert!(
            matches!(&err, Some(WireError::Connect { addr: a, .. }) if *a == addr),
            "{err:?}"
        );
        let err = RecordClient::new(vec![], "t", "topic", 0, Duration::from_secs(1))
            .fetch(0, 1024, Duration::from_millis(1))
            .await
            .err();
        assert!(
            matches!(&err, Some(WireError::NoBootstrap { subject }) if subject == "partition topic/0"),
            "{err:?}"
        );
        assert_eq!(
            client.produce(&[]).await.ok(),
            Some(None),
            "an empty produce sends nothing"
        );
    }
}
