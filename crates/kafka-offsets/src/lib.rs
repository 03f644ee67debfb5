//! Committed consumer positions in a Kafka-protocol broker's consumer-group
//! offsets, for clients (such as rskafka) that have no group APIs, so
//! standard tools (kafka-exporter, `kafka-consumer-groups`) see the lag and
//! whoever reads a partition next resumes from the committed offset.
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
//! # What it promises
//!
//! - **Old, widely served versions.** These are the oldest versions that
//!   Kafka 4 still serves, and every broker since 0.10 serves them.
//! - **Bounded.** Each request (and each connect) has a deadline, and a
//!   response larger than 16 MiB is refused rather than allocated.
//! - **Self-healing.** Any failure drops the connection, and the next call
//!   finds the coordinator again; a "not coordinator" answer does too.
//! - **Typed errors.** Every failure is an [`OffsetError`] naming the
//!   request, the broker or the group, with a short [`OffsetError::label`]
//!   for metrics.
//!
//! The committed offset is, as Kafka's tools expect, the next offset to
//! read.

use std::time::Duration;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::{
    ApiKey, FindCoordinatorRequest, FindCoordinatorResponse, GroupId, OffsetCommitRequest,
    OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, RequestHeader, ResponseHeader,
    TopicName, offset_commit_request, offset_fetch_request,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

const FIND_COORDINATOR_VERSION: i16 = 1;
const OFFSET_COMMIT_VERSION: i16 = 2;
const OFFSET_FETCH_VERSION: i16 = 1;
/// A response larger than this is refused rather than allocated.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// An offset request failed.
#[derive(Debug, thiserror::Error)]
pub enum OffsetError {
    /// No bootstrap server was given.
    #[error("offsets: no bootstrap server to ask for the coordinator of group {group}")]
    NoBootstrap {
        /// The group.
        group: String,
    },
    /// A broker could not be reached.
    #[error("offsets: cannot connect to the broker at {addr}: {source}")]
    Connect {
        /// The broker.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The connection failed mid-request.
    #[error("offsets: {api} to {addr} failed: {source}")]
    Io {
        /// The request.
        api: &'static str,
        /// The broker.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The broker did not answer in time.
    #[error("offsets: {api} to {addr} got no answer within {timeout:?}")]
    Timeout {
        /// The request.
        api: &'static str,
        /// The broker.
        addr: String,
        /// The deadline.
        timeout: Duration,
    },
    /// A request could not be encoded or a response not decoded.
    #[error("offsets: {api}: malformed exchange: {message}")]
    Codec {
        /// The request.
        api: &'static str,
        /// What was wrong.
        message: String,
    },
    /// The broker answered with an error code.
    #[error("offsets: {api} for group {group} refused by the broker: {error} (code {code})")]
    Broker {
        /// The request.
        api: &'static str,
        /// The group.
        group: String,
        /// The Kafka error code.
        code: i16,
        /// Its meaning.
        error: ResponseError,
    },
    /// The response did not mention the partition asked about.
    #[error("offsets: {api} for group {group}: the response has no entry for {topic}/{partition}")]
    Missing {
        /// The request.
        api: &'static str,
        /// The group.
        group: String,
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
    },
}

impl OffsetError {
    /// A short label for the failure counter.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NoBootstrap { .. } | Self::Connect { .. } => "connect",
            Self::Io { .. } => "io",
            Self::Timeout { .. } => "timeout",
            Self::Codec { .. } | Self::Missing { .. } => "protocol",
            Self::Broker { .. } => "broker",
        }
    }
}

#[derive(Debug)]
struct Conn {
    addr: String,
    stream: TcpStream,
    correlation: i32,
}

/// Commits and fetches one group's offsets.
#[derive(Debug)]
pub struct OffsetClient {
    bootstrap: Vec<String>,
    client_id: String,
    group: String,
    timeout: Duration,
    conn: Mutex<Option<Conn>>,
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
        Self {
            bootstrap,
            client_id: client_id.into(),
            group: group.into(),
            timeout,
            conn: Mutex::new(None),
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
    /// [`OffsetError`] when the broker cannot be reached or refuses.
    pub async fn commit(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Result<(), OffsetError> {
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
    /// [`OffsetError`] when the broker cannot be reached or refuses.
    pub async fn fetch(&self, topic: &str, partition: i32) -> Result<Option<i64>, OffsetError> {
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

    fn missing(&self, api: &'static str, topic: &str, partition: i32) -> OffsetError {
        OffsetError::Missing {
            api,
            group: self.group.clone(),
            topic: topic.to_owned(),
            partition,
        }
    }

    async fn check(&self, api: &'static str, code: i16) -> Result<(), OffsetError> {
        let Some(error) = ResponseError::try_from_code(code) else {
            return Ok(());
        };
        if matches!(
            error,
            ResponseError::NotCoordinator
                | ResponseError::CoordinatorNotAvailable
                | ResponseError::CoordinatorLoadInProgress
        ) {
            // Find the coordinator again next time.
            *self.conn.lock().await = None;
        }
        Err(OffsetError::Broker {
            api,
            group: self.group.clone(),
            code,
            error,
        })
    }

    /// Sends `request` on the coordinator connection (made first when there
    /// is none) and reads its response; drops the connection on failure.
    async fn call<Q: Encodable, R: Decodable>(
        &self,
        key: ApiKey,
        api: &'static str,
        version: i16,
        request: &Q,
    ) -> Result<R, OffsetError> {
        let mut guard = self.conn.lock().await;
        let mut conn = match guard.take() {
            Some(c) => c,
            None => self.coordinator().await?,
        };
        let result = exchange(
            &mut conn,
            &self.client_id,
            key,
            api,
            version,
            request,
            self.timeout,
        )
        .await;
        if result.is_ok() {
            *guard = Some(conn);
        }
        result
    }

    /// Connects to a bootstrap server, asks it for the group's coordinator
    /// and connects there (or stays, when it is the same broker).
    async fn coordinator(&self) -> Result<Conn, OffsetError> {
        const API: &str = "FindCoordinator";
        let mut last = OffsetError::NoBootstrap {
            group: self.group.clone(),
        };
        for addr in &self.bootstrap {
            let mut conn = match connect(addr, self.timeout).await {
                Ok(c) => c,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let request = FindCoordinatorRequest::default()
                .with_key(StrBytes::from_string(self.group.clone()))
                .with_key_type(0);
            let response: FindCoordinatorResponse = match exchange(
                &mut conn,
                &self.client_id,
                ApiKey::FindCoordinator,
                API,
                FIND_COORDINATOR_VERSION,
                &request,
                self.timeout,
            )
            .await
            {
                Ok(r) => r,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            if let Some(error) = ResponseError::try_from_code(response.error_code) {
                last = OffsetError::Broker {
                    api: API,
                    group: self.group.clone(),
                    code: response.error_code,
                    error,
                };
                continue;
            }
            let target = format!("{}:{}", response.host.as_str(), response.port);
            if target == conn.addr {
                return Ok(conn);
            }
            match connect(&target, self.timeout).await {
                Ok(c) => return Ok(c),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

async fn connect(addr: &str, timeout: Duration) -> Result<Conn, OffsetError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => {
            return Err(OffsetError::Connect {
                addr: addr.to_owned(),
                source,
            });
        }
        Err(_) => {
            return Err(OffsetError::Connect {
                addr: addr.to_owned(),
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection within {timeout:?}"),
                ),
            });
        }
    };
    let _ = stream.set_nodelay(true);
    Ok(Conn {
        addr: addr.to_owned(),
        stream,
        correlation: 0,
    })
}

/// One request and its response, framed as the Kafka protocol does: a
/// 4-byte big-endian size, the header, the body.
async fn exchange<Q: Encodable, R: Decodable>(
    conn: &mut Conn,
    client_id: &str,
    key: ApiKey,
    api: &'static str,
    version: i16,
    request: &Q,
    timeout: Duration,
) -> Result<R, OffsetError> {
    // kafka-protocol's codec errors are only ever displayed here, with their
    // causes (`{:#}`).
    fn codec<E: std::fmt::Display>(api: &'static str) -> impl Fn(E) -> OffsetError + Copy {
        move |e| OffsetError::Codec {
            api,
            message: format!("{e:#}"),
        }
    }
    let codec = codec(api);
    conn.correlation = conn.correlation.wrapping_add(1);
    let correlation = conn.correlation;
    let header = RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation)
        .with_client_id(Some(StrBytes::from_string(client_id.to_owned())));
    let mut frame = vec![0u8; 4];
    header
        .encode(&mut frame, key.request_header_version(version))
        .map_err(codec)?;
    request.encode(&mut frame, version).map_err(codec)?;
    let size = u32::try_from(frame.len() - 4).map_err(|_| OffsetError::Codec {
        api,
        message: "request too large".to_owned(),
    })?;
    frame[..4].copy_from_slice(&size.to_be_bytes());

    let addr = conn.addr.clone();
    let io = |source| OffsetError::Io {
        api,
        addr: addr.clone(),
        source,
    };
    let body = tokio::time::timeout(timeout, async {
        conn.stream.write_all(&frame).await.map_err(io)?;
        let mut size = [0u8; 4];
        conn.stream.read_exact(&mut size).await.map_err(io)?;
        let size = u32::from_be_bytes(size) as usize;
        if size > MAX_RESPONSE_BYTES {
            return Err(OffsetError::Codec {
                api,
                message: format!("a response of {size} bytes"),
            });
        }
        let mut body = vec![0u8; size];
        conn.stream.read_exact(&mut body).await.map_err(io)?;
        Ok(body)
    })
    .await
    .map_err(|_| OffsetError::Timeout {
        api,
        addr: conn.addr.clone(),
        timeout,
    })??;
    let mut buf: &[u8] = &body;
    let header =
        ResponseHeader::decode(&mut buf, key.response_header_version(version)).map_err(codec)?;
    if header.correlation_id != correlation {
        return Err(OffsetError::Codec {
            api,
            message: format!(
                "correlation id {} in the response, {correlation} expected",
                header.correlation_id
            ),
        });
    }
    R::decode(&mut buf, version).map_err(codec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_broker_that_is_down_is_a_typed_error_naming_it() {
        // A port nobody listens on: bind, then close.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "127.0.0.1:1".to_owned());
        let client = OffsetClient::new(vec![addr.clone()], "t", "g", Duration::from_secs(1));
        let err = client.fetch("t", 0).await.err();
        assert!(
            matches!(&err, Some(OffsetError::Connect { addr: a, .. }) if *a == addr),
            "{err:?}"
        );
        assert_eq!(err.map(|e| e.label()), Some("connect"));
        let err = OffsetClient::new(vec![], "t", "g", Duration::from_secs(1))
            .commit("t", 0, 1)
            .await
            .err();
        assert!(
            matches!(err, Some(OffsetError::NoBootstrap { .. })),
            "{err:?}"
        );
    }
}
