//! Committed consumer positions in the broker's consumer-group offsets.
//!
//! [`OffsetClient`] is a small client over one TCP connection per group,
//! speaking three requests with the `kafka-protocol` crate's messages:
//!
//! - **FindCoordinator** (v1, key type group) on a bootstrap server finds
//!   the broker that owns the group; the connection then goes there.
//! - **OffsetCommit** (v2) as a standalone consumer: generation `-1`, empty
//!   member id, the broker's default retention. No group is joined, so no
//!   rebalance ever waits on a session timeout.
//! - **OffsetFetch** (v1): the committed offset, `None` when there is none.
//!
//! The committed offset is, as Kafka's tools expect, the next offset to
//! read.

use std::time::Duration;

use crate::{Conn, Link, WireError};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::{
    ApiKey, FindCoordinatorRequest, FindCoordinatorResponse, GroupId, OffsetCommitRequest,
    OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, TopicName,
    offset_commit_request, offset_fetch_request,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

const FIND_COORDINATOR_VERSION: i16 = 1;
const OFFSET_COMMIT_VERSION: i16 = 2;
const OFFSET_FETCH_VERSION: i16 = 1;
/// Answers after which the coordinator is looked up again.
pub(crate) const COORDINATOR_MOVED: &[ResponseError] = &[
    ResponseError::NotCoordinator,
    ResponseError::CoordinatorNotAvailable,
    ResponseError::CoordinatorLoadInProgress,
];

/// Commits and fetches one group's offsets.
#[derive(Debug)]
pub struct OffsetClient {
    group: String,
    link: Link,
}

impl OffsetClient {
    /// A client for `group`; connects on first use. Every request (and each
    /// connect) fails after `timeout`.
    pub fn new(
        bootstrap: Vec<String>,
        client_id: impl Into<String>,
        group: impl Into<String>,
        timeout: Duration,
    ) -> Self {
        let group = group.into();
        Self {
            link: Link::new(
                bootstrap,
                client_id.into(),
                format!("group {group}"),
                timeout,
            ),
            group,
        }
    }

    /// The group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Commits `offset` (the next one to read) for `topic`/`partition`.
    ///
    /// # Errors
    ///
    /// [`WireError`] when the broker cannot be reached or refuses.
    pub async fn commit(&self, topic: &str, partition: i32, offset: i64) -> Result<(), WireError> {
        const API: &str = "OffsetCommit";
        let request = OffsetCommitRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(self.group.clone())))
            .with_generation_id_or_member_epoch(-1)
            .with_member_id(StrBytes::default())
            .with_retention_time_ms(-1)
            .with_topics(vec![
                offset_commit_request::OffsetCommitRequestTopic::default()
                    .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                    .with_partitions(vec![
                        offset_commit_request::OffsetCommitRequestPartition::default()
                            .with_partition_index(partition)
                            .with_committed_offset(offset)
                            .with_committed_leader_epoch(-1),
                    ]),
            ]);
        let response: OffsetCommitResponse = self
            .call(ApiKey::OffsetCommit, API, OFFSET_COMMIT_VERSION, &request)
            .await?;
        let code = response
            .topics
            .iter()
            .filter(|t| t.name.as_str() == topic)
            .flat_map(|t| t.partitions.iter())
            .find(|p| p.partition_index == partition)
            .map(|p| p.error_code)
            .ok_or_else(|| self.missing(API, topic, partition))?;
        self.check(API, code).await
    }

    /// The committed offset of `topic`/`partition`, `None` when there is
    /// none.
    ///
    /// # Errors
    ///
    /// [`WireError`] when the broker cannot be reached or refuses.
    pub async fn fetch(&self, topic: &str, partition: i32) -> Result<Option<i64>, WireError> {
        const API: &str = "OffsetFetch";
        let request = OffsetFetchRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(self.group.clone())))
            .with_topics(Some(vec![
                offset_fetch_request::OffsetFetchRequestTopic::default()
                    .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                    .with_partition_indexes(vec![partition]),
            ]));
        let response: OffsetFetchResponse = self
            .call(ApiKey::OffsetFetch, API, OFFSET_FETCH_VERSION, &request)
            .await?;
        self.check(API, response.error_code).await?;
        let entry = response
            .topics
            .iter()
            .filter(|t| t.name.as_str() == topic)
            .flat_map(|t| t.partitions.iter())
            .find(|p| p.partition_index == partition);
        match entry {
            // A group or partition without a commit may be left out.
            None => Ok(None),
            Some(p) => {
                self.check(API, p.error_code).await?;
                Ok((p.committed_offset >= 0).then_some(p.committed_offset))
            }
        }
    }

    fn missing(&self, api: &'static str, topic: &str, partition: i32) -> WireError {
        WireError::Missing {
            api,
            subject: self.link.subject.clone(),
            topic: topic.to_owned(),
            partition,
        }
    }

    async fn check(&self, api: &'static str, code: i16) -> Result<(), WireError> {
        self.link.check(api, code, COORDINATOR_MOVED).await
    }

    /// Sends `request` to the group's coordinator.
    async fn call<Q: Encodable, R: Decodable>(
        &self,
        key: ApiKey,
        api: &'static str,
        version: i16,
        request: &Q,
    ) -> Result<R, WireError> {
        self.link
            .call((key, api, version), request, self.link.timeout, || {
                self.coordinator()
            })
            .await
    }

    /// Asks a bootstrap server for the group's coordinator and connects
    /// there.
    async fn coordinator(&self) -> Result<Conn, WireError> {
        let request = FindCoordinatorRequest::default()
            .with_key(StrBytes::from_string(self.group.clone()))
            .with_key_type(0);
        self.link
            .locate(
                (
                    ApiKey::FindCoordinator,
                    "FindCoordinator",
                    FIND_COORDINATOR_VERSION,
                ),
                &request,
                |response: &FindCoordinatorResponse| match self
                    .link
                    .refusal("FindCoordinator", response.error_code)
                {
                    Some(refusal) => Err(refusal),
                    None => Ok(format!("{}:{}", response.host.as_str(), response.port)),
                },
            )
            .await
    }
}
