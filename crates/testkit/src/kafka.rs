use std::time::Duration;

use rskafka::BackoffConfig;
use rskafka::client::partition::{PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use tokio::net::TcpStream;

use crate::error::NoAnswer;
use crate::{Endpoints, Error, Service, unique_name};

/// How long reaching the broker may take before the test is told to start the stack.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the broker may take to create or delete a topic.
const TOPIC_TIMEOUT_MS: i32 = 5_000;

/// A connected broker client and a topic created for one test.
///
/// The stack's broker keeps everything in memory and every test gets a topic
/// of its own, so tests share one broker safely. The topic is left in place on
/// drop; [`cleanup`](Self::cleanup) deletes it.
///
/// The stack's broker (tansu 0.6.0) answers ListOffsets(Latest) wrongly after
/// a multi-record batch: read the high watermark from
/// [`PartitionClient::fetch_records`] instead of `get_offset`.
#[derive(Debug)]
pub struct TestKafka {
    client: Client,
    topic: String,
}

impl TestKafka {
    /// Connects to `endpoints.kafka_bootstrap` and creates a fresh topic with
    /// `partitions` partitions (replication factor 1).
    ///
    /// The client gives up on a request after retrying for a few seconds, so
    /// a broker that goes away fails the test instead of hanging it.
    ///
    /// # Errors
    ///
    /// [`Error::Unreachable`] when the broker does not answer, [`Error::Kafka`]
    /// when it refuses to create the topic.
    pub async fn connect(endpoints: &Endpoints, partitions: i32) -> Result<Self, Error> {
        let address = endpoints.kafka_bootstrap.as_str();
        // rskafka retries a refused connection until its deadline; a plain
        // connect first makes a stopped broker fail the test at once.
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await {
            Ok(Ok(_probe)) => {}
            Ok(Err(source)) => return Err(Error::unreachable(Service::Kafka, address, source)),
            Err(_elapsed) => {
                return Err(Error::unreachable(
                    Service::Kafka,
                    address,
                    NoAnswer(CONNECT_TIMEOUT),
                ));
            }
        }
        let builder = ClientBuilder::new(vec![address.to_owned()])
            .client_id("rtc-testkit")
            .backoff_config(BackoffConfig {
                init_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_millis(500),
                base: 2.0,
                deadline: Some(CONNECT_TIMEOUT),
            });
        let client = match tokio::time::timeout(CONNECT_TIMEOUT * 2, builder.build()).await {
            Ok(Ok(client)) => client,
            Ok(Err(source)) => return Err(Error::unreachable(Service::Kafka, address, source)),
            Err(_elapsed) => {
                return Err(Error::unreachable(
                    Service::Kafka,
                    address,
                    NoAnswer(CONNECT_TIMEOUT * 2),
                ));
            }
        };
        let topic = unique_name("topic");
        client
            .controller_client()?
            .create_topic(topic.as_str(), partitions, 1, TOPIC_TIMEOUT_MS)
            .await?;
        Ok(Self { client, topic })
    }

    /// The connected client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The name of this test's topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// A client for one partition of this test's topic.
    ///
    /// # Errors
    ///
    /// [`Error::Kafka`] when the broker does not know the partition.
    pub async fn partition_client(&self, partition: i32) -> Result<PartitionClient, Error> {
        Ok(self
            .client
            .partition_client(self.topic.as_str(), partition, UnknownTopicHandling::Retry)
            .await?)
    }

    /// Deletes this test's topic.
    ///
    /// # Errors
    ///
    /// [`Error::Kafka`] when the broker refuses.
    pub async fn cleanup(self) -> Result<(), Error> {
        self.client
            .controller_client()?
            .delete_topic(self.topic.as_str(), TOPIC_TIMEOUT_MS)
            .await?;
        Ok(())
    }
}
