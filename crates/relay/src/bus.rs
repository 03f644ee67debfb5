//! The message bus, as the relay sees it: one delivery topic of one
//! partition per node, whose record key is the recipient, value the message
//! frame and timestamp its send time; and the committed position of each
//! topic's reader. [`crate::kafka::KafkaBus`] is the real one; `MemoryBus`
//! (feature `test-util`) the double.

use std::future::Future;

use std::sync::Arc;

use rtc_kafka_wire::WireError;

use crate::batch::Receipt;

/// A bus call failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The broker failed or refused.
    #[error("kafka: {0}")]
    Kafka(#[from] rskafka::client::error::Error),
    /// A record or a committed offset could not be read or written.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The offset asked for is outside the topic.
    #[error("offset {position} is out of range")]
    OutOfRange {
        /// The offset asked for.
        position: i64,
    },
    /// The bus could not be reached (a test double's injected fault, or a
    /// topic's producer that stopped).
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    /// The produce of the batch a record was in failed: every record of
    /// that batch gets this error.
    #[error("producing a batch of {records} records failed: {message}")]
    Produce {
        /// Records in the failed batch.
        records: usize,
        /// Why it failed.
        message: String,
    },
}

impl BusError {
    /// The offset asked for is outside the partition (the topic was
    /// recreated, or records were deleted by retention).
    pub fn is_out_of_range(&self) -> bool {
        match self {
            Self::OutOfRange { .. } => true,
            Self::Wire(e) => matches!(
                e,
                WireError::Broker {
                    error: rtc_kafka_wire::ResponseError::OffsetOutOfRange,
                    ..
                }
            ),
            Self::Kafka(e) => matches!(
                e,
                rskafka::client::error::Error::ServerError {
                    protocol_error: rskafka::client::error::ProtocolError::OffsetOutOfRange,
                    ..
                }
            ),
            _ => false,
        }
    }

    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Kafka(_) => "kafka",
            Self::Wire(e) => e.label(),
            Self::OutOfRange { .. } => "out_of_range",
            Self::Unavailable(_) => "unavailable",
            Self::Produce { .. } => "produce",
        }
    }
}

/// One record read from a delivery topic.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// What one fetch read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// The records from the position asked for, in order (records that are
    /// not deliveries are passed over).
    pub deliveries: Vec<Delivery>,
    /// The position after them.
    pub next: i64,
    /// The topic's high watermark.
    pub high_watermark: i64,
}

/// The wait of a fetch that should not block: some brokers answer a fetch
/// with no wait at all with an empty topic list, which reads as an error.
pub const SHORT_WAIT_MS: i32 = 50;

/// One node's delivery topic, to read, and its reader's committed position.
pub trait Topic: Send + Sync + 'static {
    /// The topic's name.
    fn name(&self) -> &str;

    /// The consumer group its position is committed under.
    fn group(&self) -> &str;

    /// Reads records from `position`, waiting up to `max_wait_ms` when there
    /// are none.
    fn fetch(
        &self,
        position: i64,
        max_wait_ms: i32,
    ) -> impl Future<Output = Result<Batch, BusError>> + Send;

    /// The first offset still kept.
    fn earliest(&self) -> impl Future<Output = Result<i64, BusError>> + Send;

    /// The committed position, `None` when there is none.
    fn committed(&self) -> impl Future<Output = Result<Option<i64>, BusError>> + Send;

    /// Commits `position` (the next offset to read).
    fn commit(&self, position: i64) -> impl Future<Output = Result<(), BusError>> + Send;
}

/// The delivery topics of every node.
pub trait Bus: Send + Sync + 'static {
    /// A delivery topic.
    type Topic: Topic;

    /// The delivery topic of `node`'s name.
    fn topic_name(&self, node: &str) -> String;

    /// Creates `node`'s delivery topic unless it exists, and opens it.
    fn own_topic(&self, node: &str) -> impl Future<Output = Result<Self::Topic, BusError>> + Send;

    /// Opens `node`'s delivery topic, which must exist.
    fn open(&self, node: &str) -> impl Future<Output = Result<Self::Topic, BusError>> + Send;

    /// Queues a frame for `to` to `node`'s delivery topic, after every
    /// frame queued for that topic before it, and returns once it is
    /// queued; the [`Receipt`] resolves once the broker took it (or its
    /// produce failed). Frames queued for one topic are produced in order.
    fn send(
        &self,
        node: &str,
        to: &str,
        frame: Arc<str>,
        sent_ms: u64,
    ) -> impl Future<Output = Receipt> + Send;

    /// Publishes a frame for `to` to `node`'s delivery topic: [`Bus::send`],
    /// then waits for its receipt.
    fn publish(
        &self,
        node: &str,
        to: &str,
        frame: &str,
        sent_ms: u64,
    ) -> impl Future<Output = Result<(), BusError>> + Send {
        let frame: Arc<str> = Arc::from(frame);
        async move { self.send(node, to, frame, sent_ms).await.wait().await }
    }
}

#[cfg(test)]
mod tests {
    use rtc_kafka_wire::{ResponseError, WireError};

    use super::BusError;

    fn refused(error: ResponseError) -> BusError {
        BusError::Wire(WireError::Broker {
            api: "Fetch",
            subject: "partition t/0".to_owned(),
            code: error.code(),
            error,
        })
    }

    #[test]
    fn only_an_offset_out_of_range_answer_is_out_of_range() {
        assert!(refused(ResponseError::OffsetOutOfRange).is_out_of_range());
        assert!(BusError::OutOfRange { position: 3 }.is_out_of_range());
        assert!(!refused(ResponseError::NotLeaderOrFollower).is_out_of_range());
        assert!(!BusError::Unavailable("down".to_owned()).is_out_of_range());
    }
}
